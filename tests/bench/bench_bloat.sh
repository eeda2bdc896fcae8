#!/usr/bin/env bash
# Bloat benchmark (issue 17, part 1): how big a full-table backfill leaves its table, and how long
# it takes, for one UPDATE, a plain keyset loop, and backfilld with and without its VACUUMs
# (throttle.vacuum_after_percent), on one throwaway PostgreSQL 15 cluster. It prints figures, it
# does not pass or fail: a missed target is printed as NOT MET. See tests/bench/README.md.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: tests/bench/bench_bloat.sh [--rows N] [--runs N] [--batch N]
  --rows N   rows in the table (default 1000000)
  --runs N   rounds of every method, each on a freshly loaded table (default 1)
  --batch N  the batch size of the keyset loop and of backfilld's pinned runs (default 1000)
  BUILD_DIR  environment: build directory (default build under the repository root)
  PG_BINDIR  environment: PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
USAGE
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

rows=1000000
runs=1
batch=1000
for v in rows runs batch; do
    opt_value "--$v" "$v"
done
parse_args "$@"
args_count 0 0
for v in rows runs batch; do
    check_int "--$v" "${!v}"
done

root=$(repo_root)
build=${BUILD_DIR:-$root/build}
bin=$build/backfilld

sql() {
    pg_sql "$port" bench "$@"
}

# calc EXPR [VAR=VALUE...]: awk arithmetic, e.g. calc 'r / t' r=10 t=4
calc() {
    local expr=$1
    shift
    local -a vars=()
    local v
    for v in "$@"; do vars+=(-v "$v"); done
    awk "${vars[@]}" "BEGIN { print ($expr) }"
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

thousands() {
    awk -v n="$1" 'BEGIN {
        s = sprintf("%.0f", n); neg = (s ~ /^-/); if (neg) s = substr(s, 2)
        out = ""; while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
        print (neg ? "-" : "") s out }'
}

work=""
port=""
daemon_pid=""

cleanup() {
    stop_processes "$daemon_pid"
}
pg_cleanup_on_exit cleanup

# -- setup: build, cluster ----------------------------------------------------------------------

pg_workdir backfilld-bloat 700 10
work=$PG_WORK

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
ensure_backfilld_packages
say "building $bin"
{
    cmake -S "$root" -B "$build" &&
        cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" --target backfilld
} >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; die "the build failed"; }

say "starting a throwaway cluster in $work"
port=$(free_port)
pg_start_cluster "$work/data" "$port" "${PG_BENCH_SETTINGS[@]}" 'max_wal_size = 8GB'
pg_sql "$port" postgres -c 'CREATE DATABASE bench'

# The methods that are not backfilld: the keyset loop the usual articles recommend (bench_core.sh's,
# without a VACUUM), and a procedure that waits for a backfilld job in one session.
sql <<'EOF'
CREATE PROCEDURE keyset_backfill(batch_size int)
LANGUAGE plpgsql AS $$
DECLARE
    last_id bigint := (SELECT min(id) - 1 FROM users);
    upto    bigint;
BEGIN
    LOOP
        SELECT max(id) INTO upto
        FROM (SELECT id FROM users WHERE id > last_id ORDER BY id LIMIT batch_size) AS next_keys;
        EXIT WHEN upto IS NULL;
        UPDATE users SET state = status
        WHERE id > last_id AND id <= upto AND state IS DISTINCT FROM status;
        last_id := upto;
        COMMIT;
    END LOOP;
END
$$;

CREATE PROCEDURE wait_job(job bigint, timeout_s int)
LANGUAGE plpgsql AS $$
DECLARE
    s        text;
    deadline timestamptz := clock_timestamp() + make_interval(secs => timeout_s);
BEGIN
    LOOP
        SELECT state INTO s FROM backfill.jobs WHERE id = job;
        EXIT WHEN s IN ('done', 'failed', 'cancelled');
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'job % is still % after % s', job, s, timeout_s;
        END IF;
        COMMIT;
        PERFORM pg_sleep(0.01);
        COMMIT;
    END LOOP;
END
$$;
EOF

# The table of bench_core.sh, about 110 bytes a row, loaded anew before every method: fillfactor
# 100 (the default) and autovacuum off on it, so that the only VACUUMs are the method's own. The
# backfill fills the new column state from status (which makes each row ~7 bytes wider).
fresh_table() {
    sql -c 'DROP TABLE IF EXISTS users' -c "
CREATE TABLE users (id bigint PRIMARY KEY, status text, state text, pad text)
    WITH (fillfactor = 100, autovacuum_enabled = off);
INSERT INTO users (id, status, pad)
SELECT g, (ARRAY['active', 'inactive', 'pending', 'banned'])[1 + g % 4],
       rpad(md5(g::text), 60, md5((-g)::text))
FROM generate_series(1, $rows) AS g" -c 'VACUUM (ANALYZE) users' -c 'CHECKPOINT'
}

sizes() {
    sql -At -F ' ' -c "SELECT pg_relation_size('users'), pg_total_relation_size('users')"
}

install_conf=$work/install.conf
printf 'database: { conninfo = "host=127.0.0.1 port=%s user=postgres dbname=bench"; };\n' "$port" >"$install_conf"
"$bin" -c "$install_conf" --install-schema >>"$work/backfilld.log" 2>&1 ||
    { cat "$work/backfilld.log" >&2; die "--install-schema failed"; }

# start_daemon NAME PERCENT PINNED: one daemon for one method, vacuum_after_percent PERCENT; PINNED
# 1: batches of $batch, no sleep (the keyset loop's work per batch); 0: the throttle's defaults.
start_daemon() {
    local conf=$work/$1.conf throttle="vacuum_after_percent = $2;"
    (($3)) && throttle+=" batch_size = $batch; min_batch_size = $batch; max_batch_size = $batch; sleep_ms = 0;"
    cat >"$conf" <<EOF
database: { conninfo = "host=127.0.0.1 port=$port user=postgres dbname=bench"; schema = "backfill"; };
daemon: { workers = 1; poll_interval_ms = 1000; };
throttle: { $throttle };
http: { listen = ""; };
log: { level = "info"; progress_interval_ms = 60000; };
EOF
    "${AS_DAEMON_USER[@]}" "$bin" -c "$conf" 2>"$work/$1.log" &
    daemon_pid=$!
}

stop_daemon() {
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" || say "warning: backfilld exited with status $? on SIGTERM"
    daemon_pid=""
}

check_table() {
    local differ
    differ=$(sql -Atc 'SELECT count(*) FROM users WHERE state IS DISTINCT FROM status')
    [[ $differ == 0 ]] || die "$1: $differ rows still differ after the run"
}

# The methods, by letter; each prints "SECONDS VACUUMS VACUUM_SECONDS JOB_SECONDS" (- where not
# applicable): wall-clock seconds of one psql session (the statement, the CALL, or the INSERT and
# the wait until the job is done), and backfilld's job's started_at -> finished_at.
method_names=(
    [0]="(a) one UPDATE"
    [1]="(b) keyset loop, $(thousands "$batch")/batch, no VACUUM"
    [2]="(c) backfilld, $(thousands "$batch")/batch, vacuum 10%"
    [3]="(d) backfilld, $(thousands "$batch")/batch, vacuum off"
    [4]="(e) backfilld defaults, vacuum 10%"
    [5]="(f) backfilld defaults, vacuum off"
)

timed_sql() {
    local t0 t1
    t0=$EPOCHREALTIME
    sql "$@" >/dev/null
    t1=$EPOCHREALTIME
    calc 't1 - t0' t0="$t0" t1="$t1"
}

run_backfilld() {
    local name=$1 percent=$2 pinned=$3 i t0 t1 id fields state changed vacuums vacuum_s job_s
    start_daemon "$name" "$percent" "$pinned"
    for ((i = 0; i < 300; i++)); do # connected and listening: the INSERT's NOTIFY wakes it
        grep -qs 'listening on' "$work/$name.log" && break
        sleep 0.1
    done
    sleep 2 # and its sampler has looked (a job waits for its first look)
    t0=$EPOCHREALTIME
    id=$(sql -At <<EOF
INSERT INTO backfill.jobs (target, set_sql, where_sql)
VALUES ('users', 'state = status', 'state IS DISTINCT FROM status') RETURNING id AS job_id \gset
CALL wait_job(:job_id, $((600 + rows / 1000)));
\echo :job_id
EOF
    ) || { tail -n 20 "$work/$name.log" >&2; die "$name: the job did not finish"; }
    t1=$EPOCHREALTIME
    stop_daemon
    fields=$(sql -At -F ' ' -c "SELECT state, rows_changed,
                                       (SELECT count(*) FROM backfill.batches
                                        WHERE job_id = $id AND throttled_reason = 'vacuum'),
                                       extract(epoch FROM finished_at - started_at)
                                FROM backfill.jobs WHERE id = $id")
    read -r state changed vacuums job_s <<<"$fields"
    [[ $state == "done" ]] || die "$name: job $id ended '$state'"
    ((changed == rows)) || die "$name: job $id changed $changed rows, not $rows"
    vacuum_s=$(awk '/vacuumed the table in/ { for (i = 1; i <= NF; i++) if ($i == "in") s += $(i + 1) }
                    END { printf "%.2f", s }' "$work/$name.log")
    echo "$(calc 't1 - t0' t0="$t0" t1="$t1") $vacuums $vacuum_s $job_s"
}

run_method() {
    case $1 in
    0) echo "$(timed_sql -c 'UPDATE users SET state = status WHERE state IS DISTINCT FROM status') - - -" ;;
    1) echo "$(timed_sql -c "CALL keyset_backfill($batch)") - - -" ;;
    2) run_backfilld c 10 1 ;;
    3) run_backfilld d 0 1 ;;
    4) run_backfilld e 10 0 ;;
    5) run_backfilld f 0 0 ;;
    esac
}

declare -a secs=() heap=() total=() nvac=() vac_s=() job_secs=()
table_mib=""
say "$runs round(s) of ${#method_names[@]} methods on $(thousands "$rows") rows, each on a fresh table"
for ((r = 1; r <= runs; r++)); do
    order=(0 1 2 3 4 5)
    ((r % 2)) || order=(5 4 3 2 1 0)
    for m in "${order[@]}"; do
        fresh_table
        read -r h0 t0 <<<"$(sizes)"
        table_mib=$(calc 'h / 1048576' h="$h0")
        read -r s v vs js <<<"$(run_method "$m")"
        check_table "${method_names[m]}"
        read -r h1 t1 <<<"$(sizes)"
        secs[$m]+="$s "
        [[ $js == - ]] || job_secs[$m]+="$js "
        heap[$m]+="$(calc 'b / a' a="$h0" b="$h1") "
        total[$m]+="$(calc 'b / a' a="$t0" b="$t1") "
        nvac[$m]=$v
        vac_s[$m]=$vs
        say "round $r: $(printf '%-42s %7.2f s  heap %.3fx  total %.3fx  VACUUMs %s (%s s)' \
            "${method_names[m]}" "$s" "$(calc 'b / a' a="$h0" b="$h1")" "$(calc 'b / a' a="$t0" b="$t1")" "$v" "$vs")"
    done
done

# -- the figures --------------------------------------------------------------------------------

med() {
    # shellcheck disable=SC2086 # a list of numbers
    median $1
}

cpu=$(awk -F': *' '/^(model name|Model|cpu model|Hardware)[[:space:]]*:/ { print $2; exit }' /proc/cpuinfo)
[[ -n $cpu ]] || cpu=$(uname -m)
mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
line() { printf '%-36s %s\n' "$1" "$2"; }
rule() { printf '%s\n' "----------------------------------------------------------------------------------------------------"; }

d_s=$(med "${secs[3]}")
f_s=$(med "${secs[5]}")
echo
echo "backfilld bloat benchmark"
rule
line "machine" "$(nproc) CPUs, $cpu, $mem RAM"
line "load average (1/5/15 min)" "$load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
line "PostgreSQL" "$(sql -Atc 'SHOW server_version') (shared_buffers 256MB, fsync off, synchronous_commit off)"
line "backfilld" "$("$bin" --version)"
line "table" "$(thousands "$rows") rows, $(printf '%.0f' "$table_mib") MiB heap, fillfactor 100, autovacuum off on it"
line "work" "state = status on every row (a new column filled: each row ~7 bytes wider)"
line "rounds" "$runs; a fresh table before every method; medians"
rule
printf '%-42s %9s %8s %8s %10s %11s %8s %8s\n' "method" "seconds" "job s" "x (d)" "heap x" "w/ indexes" "VACUUMs" "in them"
for m in 0 1 2 3 4 5; do
    ref=$d_s
    ((m >= 4)) && ref=$f_s
    in_them=${vac_s[m]}
    [[ $in_them == - ]] || in_them+=" s"
    job_s=-
    [[ -z ${job_secs[m]:-} ]] || job_s=$(printf '%.2f' "$(med "${job_secs[m]}")")
    printf '%-42s %9.2f %8s %8.2f %10.3f %11.3f %8s %8s\n' "${method_names[m]}" "$(med "${secs[m]}")" "$job_s" \
        "$(calc 's / r' s="$(med "${secs[m]}")" r="$ref")" "$(med "${heap[m]}")" "$(med "${total[m]}")" \
        "${nvac[m]}" "$in_them"
done
rule
line "seconds, job s" "wall clock in one psql session (backfilld: INSERT -> done); a job's started_at -> finished_at"
line "x (d)" "seconds over backfilld's without VACUUM with the same settings ((d); (f) for (e) and (f))"
line "heap x / w/ indexes" "pg_relation_size / pg_total_relation_size after the method over before it"
line "VACUUMs, in them" "backfilld's VACUUMs (batches with throttled_reason vacuum) and their seconds (last round)"
met() { awk -v v="$1" -v t="$2" 'BEGIN { print (v <= t ? "met" : "NOT MET") }'; }
c_heap=$(med "${heap[2]}")
c_ratio=$(calc 'c / d' c="$(med "${secs[2]}")" d="$d_s")
e_heap=$(med "${heap[4]}")
e_ratio=$(calc 'e / f' e="$(med "${secs[4]}")" f="$f_s")
line "target heap <= 1.25x" "(c) $(printf '%.3f' "$c_heap") $(met "$c_heap" 1.25); (e) $(printf '%.3f' "$e_heap") $(met "$e_heap" 1.25)"
# The same ratios round by round (each pair ran in the same round, minutes apart at most).
per_round() {
    local -a x y
    local i out=""
    read -r -a x <<<"$1"
    read -r -a y <<<"$2"
    for ((i = 0; i < ${#x[@]}; i++)); do out+="$(printf '%.2f ' "$(calc 'a / b' a="${x[i]}" b="${y[i]}")")"; done
    printf '%s' "$out"
}
line "target time <= 1.3x without VACUUM" "(c)/(d) $(printf '%.2f' "$c_ratio") $(met "$c_ratio" 1.3); (e)/(f) $(printf '%.2f' "$e_ratio") $(met "$e_ratio" 1.3)"
line "  round by round" "(c)/(d) $(per_round "${secs[2]}" "${secs[3]}"); (e)/(f) $(per_round "${secs[4]}" "${secs[5]}")"
rule
