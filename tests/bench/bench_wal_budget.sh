#!/usr/bin/env bash
# WAL budget benchmark (issue 17): two jobs on wide rows under throttle.max_wal_bytes_per_s, one of
# them also capped by its own max_wal_bytes_per_s, with a CHECKPOINT half-way (full-page images:
# the WAL a key writes jumps). Prints the worst 4-s window and the average of the WAL they wrote as
# multiples of the budget, from the batches' wal_bytes and from the server's WAL position, and
# draws the uncapped job with scripts/plot-job. It prints figures, it does not pass or fail. See
# tests/bench/README.md.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: tests/bench/bench_wal_budget.sh [--quick] [--budget BYTES_PER_S] [--rows N] [--png FILE]
  --quick        a short check (20,000 rows): about a minute in all
  --budget B     throttle.max_wal_bytes_per_s (default 2000000); the capped job gets a quarter
  --rows N       rows of the uncapped job's table (default 60000, ~1.1 kB of WAL each); the
                 capped job's table has a quarter as many
  --png FILE     where the plot goes (default docs/wal-budget.png; with --quick a file under
                 ${TMPDIR:-/tmp}, so a quick run never replaces the committed one)
  BUILD_DIR      environment: build directory (default build under the repository root)
  PG_BINDIR      environment: PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
USAGE
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

quick=0
budget=2000000
rows=""
png=""
opt_flag --quick quick
for v in budget rows png; do
    opt_value "--$v" "$v"
done
parse_args "$@"
args_count 0 0
rows=${rows:-$((quick ? 20000 : 60000))}
for v in budget rows; do
    check_int "--$v" "${!v}"
done
own=$((budget / 4))
small=$((rows / 4))

root=$(repo_root)
build=${BUILD_DIR:-$root/build}
bin=$build/backfilld
if [[ -z $png ]]; then
    if ((quick)); then png=${TMPDIR:-/tmp}/wal-budget-quick.png; else png=$root/docs/wal-budget.png; fi
fi

sql() {
    pg_sql "$port" bench "$@"
}

# calc EXPR [VAR=VALUE...]: awk arithmetic (epoch times too: no 1.7e+09)
calc() {
    local expr=$1
    shift
    local -a vars=()
    local v
    for v in "$@"; do vars+=(-v "$v"); done
    awk -v OFMT=%.6f "${vars[@]}" "BEGIN { print ($expr) }"
}

thousands() {
    awk -v n="$1" 'BEGIN {
        s = sprintf("%.0f", n); out = ""
        while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
        print s out }'
}

work=""
port=""
daemon_pid=""
sampler_pid=""

cleanup() {
    stop_processes "$sampler_pid" "$daemon_pid"
}
pg_cleanup_on_exit cleanup

# -- setup: packages, build, one primary ---------------------------------------------------------

pg_workdir backfilld-walbench 711 10
work=$PG_WORK
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
ensure_backfilld_packages
ensure_packages gnuplot-nox
say "building $bin"
{
    cmake -S "$root" -B "$build" &&
        cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" --target backfilld
} >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; die "the build failed"; }

say "starting a throwaway primary in $work"
port=$(free_port)
conninfo="host=127.0.0.1 port=$port user=postgres dbname=bench"
# full_page_writes stays on: the CHECKPOINT half-way makes the WAL a key writes jump, as it does in
# production; checkpoints happen only where the script asks.
pg_start_cluster "$work/primary" "$port" "${PG_BENCH_SETTINGS[@]}" 'max_wal_size = 8GB'
pg_sql "$port" postgres -c 'CREATE DATABASE bench'

cat >"$work/backfilld.conf" <<EOF
database: { conninfo = "$conninfo"; };
daemon: { name = "bench"; workers = 2; };
throttle: { max_wal_bytes_per_s = ${budget}L; };
http: { listen = ""; };
log: { level = "info"; };
EOF
"$bin" -c "$work/backfilld.conf" --install-schema >>"$work/backfilld.log" 2>&1 ||
    { cat "$work/backfilld.log" >&2; die "--install-schema failed"; }

# Two tables of 1 kB rows; an update logs each new version whole (it goes to another page). No
# checkpoint after they are loaded: until the one half-way, no update needs a full-page image.
for t in wide wide_capped; do
    n=$rows
    [[ $t == wide ]] || n=$small
    sql -c "CREATE TABLE $t (id bigint PRIMARY KEY, pad text NOT NULL, v int NOT NULL DEFAULT 0)
            WITH (autovacuum_enabled = false)" \
        -c "INSERT INTO $t (id, pad) SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, $n) g" \
        -c "VACUUM ANALYZE $t"
done

# -- the run ------------------------------------------------------------------------------------

/usr/bin/python3 "$root/tests/bench/bench.py" sample "$conninfo" "$work/wal.txt" &
sampler_pid=$!
a=$(sql -Atc "INSERT INTO backfill.jobs (name, target, set_sql) VALUES ('uncapped', 'wide', 'v = v + 1') RETURNING id")
b=$(sql -Atc "INSERT INTO backfill.jobs (name, target, set_sql, max_wal_bytes_per_s)
              VALUES ('capped', 'wide_capped', 'v = v + 1', $own) RETURNING id")
say "jobs $a (uncapped) and $b (its own budget $own bytes/s) under $budget bytes/s"
t_start=$(date +%s.%N)
"${AS_DAEMON_USER[@]}" "$bin" -c "$work/backfilld.conf" 2>>"$work/backfilld.log" &
daemon_pid=$!
checkpointed=""
while :; do
    kill -0 "$daemon_pid" 2>/dev/null || { tail -n 30 "$work/backfilld.log" >&2; die "backfilld exited"; }
    IFS='|' read -r done_jobs a_scanned < <(sql -Atc "SELECT count(*) FILTER (WHERE state = 'done'),
        max(rows_scanned) FILTER (WHERE id = $a) FROM backfill.jobs WHERE id IN ($a, $b)")
    if [[ -z $checkpointed ]] && ((a_scanned * 2 >= rows)); then
        sql -c 'CHECKPOINT'
        checkpointed=$(date +%s.%N)
        say "CHECKPOINT with job $a at $a_scanned rows"
    fi
    ((done_jobs == 2)) && break
    (($(calc "$(date +%s.%N) - $t_start > 1800"))) && die "the jobs did not finish in 30 min"
    sleep 0.5
done
kill -TERM "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
kill -TERM "$daemon_pid" 2>/dev/null || true
wait "$daemon_pid" 2>/dev/null || true
daemon_pid=""

# -- the figures --------------------------------------------------------------------------------

# window JOB_IDS: the worst 4-s window of the batches' WAL (each batch's wal_bytes at its
# finished_at), a second; their average from the first batch's start to the last one's end; that
# start and end (epoch seconds).
window() {
    sql -At -F ' ' -c "WITH b AS (SELECT finished_at, duration_ms, coalesce(wal_bytes, 0) AS wal
                                  FROM backfill.batches WHERE job_id IN ($1)),
                       w AS (SELECT sum(wal) OVER (ORDER BY finished_at
                                                   RANGE BETWEEN interval '4 s' PRECEDING AND CURRENT ROW) AS s
                             FROM b)
                       SELECT (SELECT max(s) FROM w) / 4.0,
                              sum(wal) / extract(epoch FROM max(finished_at) - min(finished_at - duration_ms * interval '1 ms')),
                              extract(epoch FROM min(finished_at - duration_ms * interval '1 ms')),
                              extract(epoch FROM max(finished_at))
                       FROM b"
}

read -r both_worst both_avg busy_from busy_to < <(window "$a, $b")
read -r capped_worst capped_avg capped_from capped_to < <(window "$b")
read -r alone_worst alone_avg _ _ < <(window "$a")
# The server's WAL position, sampled every 100 ms: the most it moved over 4 s or more (from each
# sample to the first one at least 4 s later), a second, and its average, over the busy period.
read -r srv_worst srv_avg < <(awk -v from="$busy_from" -v to="$busy_to" '
    BEGIN { n = 0 }
    $1 >= from && $1 <= to { t[n] = $1; l[n] = $2; n++ }
    END {
        k = 0
        for (i = 0; i < n; i++) {
            while (k < n && t[k] < t[i] + 4) k++
            if (k == n) break
            r = (l[k] - l[i]) / (t[k] - t[i]); if (r > worst) worst = r
        }
        average = n > 1 ? (l[n - 1] - l[0]) / (t[n - 1] - t[0]) : 0
        print worst + 0, average
    }' "$work/wal.txt")
batches=$(sql -Atc "SELECT count(*) || ' batches, ' || count(*) FILTER (WHERE throttled_reason = 'wal_budget')
                    || ' of them wal_budget, ' || round(avg(rows_scanned)) || ' rows on average'
                    FROM backfill.batches WHERE job_id IN ($a, $b)")
# The WAL a key wrote before and after the CHECKPOINT (full-page images).
per_key=$(sql -Atc "SELECT string_agg(round(w / k) || ' ' || p, ', ' ORDER BY p DESC)
                    FROM (SELECT finished_at < to_timestamp($checkpointed) AS before, sum(wal_bytes)::numeric AS w,
                                 nullif(sum(rows_scanned), 0) AS k
                          FROM backfill.batches WHERE job_id IN ($a, $b) GROUP BY 1) s,
                         LATERAL (SELECT CASE WHEN before THEN 'before' ELSE 'after' END AS p) l")

mkdir -p "$(dirname "$png")"
plotted="not drawn (see $work/plot.log)"
if "$root/scripts/plot-job" --conninfo "$conninfo" --wal-budget "$budget" "$a" "$png" >"$work/plot.log" 2>&1; then
    plotted="$png ($(($(stat -c %s "$png") / 1024)) KiB, scripts/plot-job, job $a)"
else
    cat "$work/plot.log" >&2
fi

x() { calc "$1 / $2" | awk '{ printf "%.3fx", $1 }'; }
verdict() {
    awk -v w="$1" -v a="$2" 'BEGIN { print (w <= 1.2 && a >= 0.8 ? "met" : "NOT MET") }'
}
line=$(printf '%.0s-' {1..100})
printf '%s\n' "$line"
printf '%-36s %s\n' "WAL budget" "throttle.max_wal_bytes_per_s = $(thousands "$budget") bytes/s for the instance"
printf '%-36s %s\n' "jobs" "$a: $(thousands "$rows") rows of 1 kB (wide); $b: $(thousands "$small") rows (wide_capped), its own max_wal_bytes_per_s $(thousands "$own")"
printf '%-36s %s\n' "" "v = v + 1 for every row, at once, two workers; a CHECKPOINT when job $a was half done (full-page images)"
printf '%-36s %s\n' "batches" "$batches"
printf '%-36s %s\n' "WAL a key (bytes)" "$per_key the CHECKPOINT"
printf '%-36s %s\n' "busy" "$(calc "$busy_to - $busy_from" | awk '{ printf "%.1f s", $1 }') (job $b: $(calc "$capped_to - $capped_from" | awk '{ printf "%.1f s", $1 }'))"
printf '%s\n' "$line"
printf '%-36s %-18s %-10s %s\n' "multiples of the budget" "worst 4-s window" "average" "target <= 1.2x, >= 0.8x"
printf '%-36s %-18s %-10s %s\n' "both jobs, their batches' wal_bytes" "$(x "$both_worst" "$budget")" "$(x "$both_avg" "$budget")" \
    "$(verdict "$(calc "$both_worst / $budget")" "$(calc "$both_avg / $budget")")"
printf '%-36s %-18s %-10s\n' "both jobs, the server's WAL position" "$(x "$srv_worst" "$budget")" "$(x "$srv_avg" "$budget")"
printf '%-36s %-18s %-10s %s\n' "job $b against its own budget" "$(x "$capped_worst" "$own")" "$(x "$capped_avg" "$own")" \
    "$(verdict "$(calc "$capped_worst / $own")" "$(calc "$capped_avg / $own")")"
printf '%-36s %-18s %-10s %s\n' "job $a against the instance's" "$(x "$alone_worst" "$budget")" "$(x "$alone_avg" "$budget")" \
    "(it shares the budget with job $b until that one is done)"
printf '%s\n' "$line"
printf '%-36s %s\n' "plot" "$plotted"
printf '%-36s %s\n' "machine" "$(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), load $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end, PostgreSQL $(sql -Atc 'SHOW server_version')"
printf '%s\n' "$line"
