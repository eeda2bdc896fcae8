#!/usr/bin/env bash
# Throttle benchmark (issue 3): what a backfill costs the application. One throwaway PostgreSQL 15
# primary with a streaming standby; pgbench drives steady TPC-B-like load on pgbench_accounts while
# that table is backfilled four ways (none, one UPDATE, a fixed keyset loop, backfilld with its
# defaults). Then a backfilld run with the standby's replay paused in the middle, drawn as a PNG.
# It prints figures, it does not pass or fail. See tests/bench/README.md.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: tests/bench/bench_throttle.sh [--quick] [--scale N] [--duration S] [--rate TPS]
                                     [--clients N] [--pause S] [--rounds N] [--png FILE]
  --quick        a short check (scale 2, 15 s per condition): about 3 minutes in all
  --scale N      pgbench scale: 100,000 pgbench_accounts rows per unit (default 10: 1,000,000)
  --duration S   seconds of load per condition (default 45)
  --rate TPS     pgbench's fixed transaction rate, -R (default 400)
  --clients N    pgbench clients, -c (default 4; -j 2)
  --pause S      how long the standby's replay stays paused in the last run (default 10)
  --rounds N     pairs of (no backfill, backfilld defaults) run again after the table, to judge
                 the goal on the median ratio rather than on one pair (default 2; --quick 0)
  --png FILE     where the replay-pause plot goes (default docs/replay-pause.png; with --quick
                 a file under ${TMPDIR:-/tmp}, so a quick run never replaces the committed one)
  BUILD_DIR      environment: build directory (default build under the repository root)
  PG_BINDIR      environment: PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
USAGE
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

quick=0
scale=""
duration=""
rate=400
clients=4
pause=10
rounds=""
png=""
opt_flag --quick quick
for v in scale duration rate clients pause rounds png; do
    opt_value "--$v" "$v"
done
parse_args "$@"
args_count 0 0
if ((quick)); then
    scale=${scale:-2}
    duration=${duration:-15}
    rounds=${rounds:-0}
else
    scale=${scale:-10}
    duration=${duration:-45}
    rounds=${rounds:-2}
fi
for v in scale duration rate clients pause; do
    check_int "--$v" "${!v}"
done
check_int --rounds "$rounds" 0
warmup=$((duration >= 30 ? 5 : 3)) # seconds of load before the backfill starts
rows=$((scale * 100000))

root=$(repo_root)
build=${BUILD_DIR:-$root/build}
bin=$build/backfilld
if [[ -z $png ]]; then
    if ((quick)); then png=${TMPDIR:-/tmp}/replay-pause-quick.png; else png=$root/docs/replay-pause.png; fi
fi

# -- helpers ------------------------------------------------------------------------------------

sql() {
    pg_sql "$port" bench "$@"
}

sql_standby() {
    pg_sql "$sb_port" postgres "$@"
}

work=""
port=""
sb_port=""
daemon_pid=""
load_pid=""
bf_pid=""
poll_pid=""
watch_pid=""
wait_pid=""

# At exit, before scripts/lib.sh stops the clusters and removes $work (pg_cleanup_on_exit).
cleanup() {
    stop_processes "$bf_pid" "$load_pid" "$poll_pid" "$watch_pid" "$wait_pid" "$daemon_pid"
}
pg_cleanup_on_exit cleanup

# -- setup: packages, build, primary + standby --------------------------------------------------

pg_workdir backfilld-bench 711 10
work=$PG_WORK

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
ensure_backfilld_packages
ensure_packages gnuplot-nox
say "building $bin"
build_backfilld "$build" "$work/build.log"

say "starting a throwaway primary and a streaming standby in $work"
port=$(free_port)
conninfo=$(pg_conninfo "$port" bench)
# fsync and synchronous_commit off as in bench_core.sh: what is measured is contention with the
# backfill (row locks, CPU, I/O, replay), not the disk's flush latency. Checkpoints only happen
# where the script asks (between conditions).
pg_start_cluster "$work/primary" "$port" "${PG_BENCH_SETTINGS[@]}" 'max_wal_size = 8GB' \
    "${PG_PRIMARY_SETTINGS[@]}"
pg_sql "$port" postgres -c 'CREATE DATABASE bench'

sb_port=$(free_port)
pg_start_standby "$work/standby" "$port" "$sb_port" "cluster_name = 'standby1'"

# Byte lag of the standby, as the daemon measures it.
standby_lag() {
    pg_standby_lag "$port" standby1
}

standby_up=1 # 0 while the standby is stopped for one condition
wait_caught_up() {
    ((standby_up)) || return 0
    pg_wait_standby "$port" standby1 120
}
wait_caught_up

# -- the daemon (defaults) and the schema -------------------------------------------------------

# Only what it needs to connect: every throttle setting is the default.
cat >"$work/backfilld.conf" <<EOF
database: { conninfo = "$conninfo"; };
daemon: { name = "bench"; };
http: { listen = ""; };
log: { level = "info"; };
EOF
backfilld_install_schema "$bin" "$work/backfilld.conf" "$work/backfilld.log"
# backfilld refuses to run as root: as root it runs as the postgres OS user (scripts/lib.sh).
"${AS_DAEMON_USER[@]}" "$bin" -c "$work/backfilld.conf" 2>>"$work/backfilld.log" &
daemon_pid=$!
sleep 0.5
kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/backfilld.log" >&2; die "backfilld did not start"; }

sql <<'EOF'
-- The fixed keyset loop: batches of batch_size keys, one COMMIT each, then pause_ms asleep (none
-- by default).
CREATE PROCEDURE keyset_backfill(batch_size int, pause_ms int DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
    last_id int := 0;
    upto    int;
BEGIN
    LOOP
        SELECT max(aid) INTO upto
        FROM (SELECT aid FROM pgbench_accounts WHERE aid > last_id ORDER BY aid LIMIT batch_size) AS k;
        EXIT WHEN upto IS NULL;
        UPDATE pgbench_accounts SET abalance2 = abalance
        WHERE aid > last_id AND aid <= upto AND abalance2 IS DISTINCT FROM abalance;
        last_id := upto;
        COMMIT;
        IF pause_ms > 0 THEN
            PERFORM pg_sleep(pause_ms / 1000.0);
        END IF;
    END LOOP;
END
$$;
EOF

# Every condition starts from the same table: pgbench's tables made anew, the new column added
# (a catalog change only), vacuumed, a checkpoint, and the standby caught up.
reset_table() {
    "$PG_BINDIR/pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$port" -U postgres bench >"$work/init.log" 2>&1 ||
        { cat "$work/init.log" >&2; die "pgbench -i failed"; }
    sql -c 'ALTER TABLE pgbench_accounts ADD COLUMN abalance2 int' -c 'VACUUM ANALYZE' -c 'CHECKPOINT'
    wait_caught_up
}

# latency_stats LOGPREFIX FROM TO: "count p50 p99" (ms) of the transactions that ended between the
# epoch times FROM and TO. pgbench's latency under -R counts from the scheduled start, so a
# transaction delayed by an earlier one's wait counts that wait too.
latency_stats() {
    cat "$1".* | awk -v a="$2" -v b="$3" '$3 != "skipped" { t = $5 + $6 / 1e6; if (t >= a && t <= b) print $3 / 1000 }' |
        sort -g | awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "0 NaN NaN"; exit }
            i50 = int(0.50 * NR); if (i50 < 0.50 * NR) i50++
            i99 = int(0.99 * NR); if (i99 < 0.99 * NR) i99++
            printf "%d %.2f %.2f\n", NR, v[i50], v[i99] }'
}

start_load() { # NAME SECONDS
    rm -f "$work/lat_$1".*
    (cd "$work" && exec "$PG_BINDIR/pgbench" -n -b tpcb-like -c "$clients" -j 2 -R "$rate" -T "$2" \
        -l --log-prefix="$work/lat_$1" -h 127.0.0.1 -p "$port" -U postgres bench) >"$work/pgbench_$1.out" 2>&1 &
    load_pid=$!
}

# What the application's sessions wait on, four times a second, in one psql session: the time, how
# many client sessions of the bench database wait on a lock, and how many are active.
start_watch() { # NAME
    printf '%s\n' "SELECT extract(epoch FROM clock_timestamp()),
                          count(*) FILTER (WHERE wait_event_type = 'Lock'),
                          count(*) FILTER (WHERE state = 'active')
                   FROM pg_stat_activity
                   WHERE datname = 'bench' AND backend_type = 'client backend'
                     AND application_name = 'pgbench' \\watch 0.25" |
        sql -At -F ' ' >"$work/watch_$1.txt" 2>/dev/null &
    watch_pid=$!
}

stop_watch() {
    kill -TERM "$watch_pid" 2>/dev/null || true
    wait "$watch_pid" 2>/dev/null || true
    watch_pid=""
}

# watch_stats NAME FROM TO: the mean number of pgbench sessions waiting on a lock, and active.
watch_stats() {
    awk -v a="$2" -v b="$3" 'NF == 3 && $1 >= a && $1 <= b { n++; w += $2; act += $3 }
        END { if (n) printf "%.2f %.2f\n", w / n, act / n; else print "NaN NaN" }' "$work/watch_$1.txt"
}

job_field() { # ID EXPR
    sql -Atc "SELECT $2 FROM backfill.jobs WHERE id = $1"
}

# submit_job AT SQL: INSERT the job at the epoch time AT and print "id state" once it has ended
# (tests/bench/bench.py: one LISTENing connection, no polling load charged to backfilld). Started
# before AT, so Python's start and the login fall in the warm-up, not in the backfill's window.
submit_job() {
    /usr/bin/python3 "$root/tests/bench/bench.py" submit-wait "$conninfo" "$2" 3600 "$1"
}

declare -A r_tps r_p50 r_p99 r_p99bf r_done r_secs r_note r_load r_wait
conditions=()

# run_condition NAME LABEL KIND [job columns...]: the load for $duration s; the backfill starts
# $warmup s in and may run on after the load ends (it is waited for, up to 10 minutes). KIND
# keyset takes the procedure's arguments instead of job columns (default: 10000).
run_condition() {
    local name=$1 label=$2 kind=$3 cols=${4:-} vals=${5:-}
    local t_load t_bf0="" t_bf1="" id="" rc state deadline note=""
    conditions+=("$name")
    r_note[$name]=""
    say "condition: $label"
    reset_table
    t_load=$EPOCHREALTIME
    start_load "$name" "$duration"
    start_watch "$name"
    if [[ $kind == backfilld ]]; then
        submit_job "$(calc "$t_load + $warmup")" \
            "INSERT INTO backfill.jobs (name, target, set_sql, where_sql${cols:+, $cols})
             VALUES ('$name', 'pgbench_accounts', 'abalance2 = abalance',
                     'abalance2 IS DISTINCT FROM abalance'${vals:+, $vals}) RETURNING id" >"$work/wait_$name" &
        wait_pid=$!
    fi
    sleep "$warmup"
    case $kind in
    none | backfilld) ;;
    update)
        t_bf0=$EPOCHREALTIME
        sql -c 'UPDATE pgbench_accounts SET abalance2 = abalance WHERE abalance2 IS DISTINCT FROM abalance' &
        bf_pid=$!
        ;;
    keyset)
        t_bf0=$EPOCHREALTIME
        sql -c "CALL keyset_backfill(${cols:-10000})" &
        bf_pid=$!
        ;;
    esac
    deadline=$(calc "$t_load + $duration + 600")
    while :; do
        if [[ -n $bf_pid ]] && ! kill -0 "$bf_pid" 2>/dev/null; then
            rc=0
            wait "$bf_pid" || rc=$?
            t_bf1=$EPOCHREALTIME
            bf_pid=""
            ((rc == 0)) || die "$label: the backfill failed (psql exit $rc)"
        fi
        if [[ -n $wait_pid ]] && ! kill -0 "$wait_pid" 2>/dev/null; then
            wait "$wait_pid" || die "$label: submitting a job or waiting for it failed"
            wait_pid=""
            read -r id state <"$work/wait_$name"
            case $state in
            done) read -r t_bf0 t_bf1 < <(sql -At -F ' ' -c "SELECT extract(epoch FROM created_at),
                                                 extract(epoch FROM finished_at) FROM backfill.jobs WHERE id = $id") ;;
            failed | cancelled) die "$label: job $id ended $state: $(job_field "$id" last_error)" ;;
            esac
        fi
        if [[ -n $load_pid ]] && ! kill -0 "$load_pid" 2>/dev/null; then
            wait "$load_pid" || { cat "$work/pgbench_$name.out" >&2; die "$label: pgbench failed"; }
            load_pid=""
        fi
        [[ -z $load_pid && -z $bf_pid && ($kind != backfilld || -n $t_bf1) ]] && break
        awk -v n="$EPOCHREALTIME" -v d="$deadline" 'BEGIN { exit !(n > d) }' && die "$label: still running after 10 minutes"
        sleep 0.25
    done
    stop_watch
    r_load[$name]=$(cut -d' ' -f1 /proc/loadavg)
    r_tps[$name]=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench_$name.out" | head -n 1)
    read -r _ "r_p50[$name]" "r_p99[$name]" < <(latency_stats "$work/lat_$name" 0 9e18)
    if [[ $kind == none ]]; then
        r_p99bf[$name]=${r_p99[$name]}
        r_wait[$name]=$(watch_stats "$name" 0 9e18)
        r_done[$name]="-"
        r_secs[$name]=""
    else
        # The transactions that ended while the backfill ran (and 1 s after: those it had blocked).
        read -r _ _ "r_p99bf[$name]" < <(latency_stats "$work/lat_$name" "$t_bf0" "$(calc "$t_bf1 + 1")")
        r_wait[$name]=$(watch_stats "$name" "$t_bf0" "$t_bf1")
        r_secs[$name]=$(calc 't1 - t0' t0="$t_bf0" t1="$t_bf1")
        if [[ $(sql -Atc 'SELECT count(*) FROM pgbench_accounts WHERE abalance2 IS NULL') != 0 ]]; then
            r_done[$name]="INCOMPLETE"
        elif awk -v e="$t_bf1" -v l="$(calc "$t_load + $duration")" 'BEGIN { exit !(e <= l) }'; then
            r_done[$name]="yes"
        else
            r_done[$name]="after the load"
        fi
        if [[ -n $id ]]; then
            note=$(sql -At -F ' ' -c "SELECT batches, (SELECT count(*) FROM backfill.batches b
                                                        WHERE b.job_id = j.id AND throttled_reason IS NOT NULL),
                                             (SELECT max(batch_size) FROM backfill.batches b WHERE b.job_id = j.id),
                                             (SELECT round(avg(duration_ms)) FROM backfill.batches b WHERE b.job_id = j.id)
                                      FROM backfill.jobs j WHERE id = $id")
            read -r nb nthr maxb avgd <<<"$note"
            r_note[$name]="$nb batches (max $(thousands "$maxb") rows, avg ${avgd} ms), $nthr throttled"
        fi
    fi
    printf '    TPS %s, p50 %s ms, p99 %s ms, p99 during the backfill %s ms%s\n' "${r_tps[$name]}" \
        "${r_p50[$name]}" "${r_p99[$name]}" "${r_p99bf[$name]}" \
        "${r_secs[$name]:+, backfill took $(printf '%.1f' "${r_secs[$name]}") s}" >&2
}

run_condition none "no backfill" none
run_condition update "one UPDATE of the whole table" update
run_condition keyset "keyset loop, 10,000 a batch, no sleep" keyset
run_condition backfilld "backfilld, defaults" backfilld
# Not one of issue 3's four: the same daemon with two per-job overrides, to show what a gentler
# duty cycle buys (shorter lock holds, half the time asleep).
run_condition tuned "backfilld, target 100 ms + sleep 100 ms" backfilld "target_batch_ms, sleep_ms" "100, 100"
# And the gentlest setting tried: short fixed batches, a pause after each. What a job can do for
# the application's p99 when its own speed matters less.
run_condition gentle "backfilld, 1,000 a batch + sleep 50 ms" backfilld \
    "batch_size, min_batch_size, max_batch_size, sleep_ms" "1000, 1000, 1000, 50"
# Where the rest of the p99 comes from (not among issue 3's four either): the gentle setting
# without backfilld (the same batches and pauses from a PL/pgSQL loop); the defaults with the
# standby stopped (its replay shares these CPUs); and the baseline once more, for its own scatter.
run_condition keyset_gentle "keyset loop, 1,000 a batch + sleep 50 ms" keyset "1000, 50"
wait_caught_up
pg_stop_standby_keeping_wal "$port" "$work/standby"
standby_up=0
run_condition nostandby "backfilld, defaults, standby stopped" backfilld
pg_restart "$work/standby" standby
standby_up=1
wait_caught_up
run_condition none2 "no backfill, again" none

# -- rounds: the same pair again ----------------------------------------------------------------
# On a shared 2-CPU machine the baseline's own p99 moves by up to 1.5x from one 45-s window to the
# next, so one pair cannot tell 1.4x from 1.7x. Each round runs the baseline and the defaults
# again (their order alternating, against drift); the goal is judged on the median ratio.
for ((r = 1; r <= rounds; r++)); do
    if ((r % 2)); then
        run_condition "round${r}_bf" "round $r: backfilld, defaults" backfilld
        run_condition "round${r}_none" "round $r: no backfill" none
    else
        run_condition "round${r}_none" "round $r: no backfill" none
        run_condition "round${r}_bf" "round $r: backfilld, defaults" backfilld
    fi
done

# -- the replay pause ---------------------------------------------------------------------------

say "replay pause: backfilld (defaults) under the same load, the standby's replay paused for $pause s"
reset_table
start_load pause $((duration * 20))
sleep "$warmup"
pid=$(sql -Atc "INSERT INTO backfill.jobs (name, target, set_sql, where_sql)
                VALUES ('replay-pause', 'pgbench_accounts', 'abalance2 = abalance',
                        'abalance2 IS DISTINCT FROM abalance') RETURNING id")
# Pause once a fifth of the table is done, so that the job is well under way.
for ((i = 0; i < 6000; i++)); do
    state=$(job_field "$pid" "state || ' ' || rows_scanned")
    [[ ${state% *} == running && ${state#* } -ge $((rows / 5)) ]] && break
    [[ ${state% *} == "done" ]] && break
    sleep 0.1
done
[[ ${state% *} == running ]] || say "warning: job $pid was $state before the pause (too fast: try a larger --scale)"
# The standby's real lag, polled twice a second (the batches only see it when one starts).
while :; do
    printf '%s %s\n' "$EPOCHREALTIME" "$(standby_lag)"
    sleep 0.5
done >"$work/lag.txt" 2>/dev/null &
poll_pid=$!
sql_standby -c 'SELECT pg_wal_replay_pause()' >/dev/null
t_pause=$EPOCHREALTIME
sleep "$pause"
sql_standby -c 'SELECT pg_wal_replay_resume()' >/dev/null
t_resume=$EPOCHREALTIME
for ((i = 0; i < 6000; i++)); do
    state=$(job_field "$pid" state)
    [[ $state == "done" ]] && break
    [[ $state == failed || $state == cancelled ]] && die "replay pause: job $pid ended $state"
    sleep 0.1
done
[[ $state == "done" ]] || die "replay pause: job $pid not done after 10 minutes"
# SIGTERM: a background job of a script ignores SIGINT.
kill -TERM "$load_pid" "$poll_pid" 2>/dev/null || true
wait "$load_pid" "$poll_pid" 2>/dev/null || true
load_pid=""
poll_pid=""
read -r p_secs p_batches p_held p_maxlag p_maxlagms p_maxsleep p_first < <(sql -At -F ' ' -c "
    SELECT round(extract(epoch FROM j.finished_at - j.created_at)::numeric, 1), j.batches,
           (SELECT count(*) FROM backfill.batches b WHERE b.job_id = j.id AND b.throttled_reason IS NOT NULL),
           (SELECT max(lag_bytes) FROM backfill.batches b WHERE b.job_id = j.id),
           (SELECT max(lag_ms) FROM backfill.batches b WHERE b.job_id = j.id),
           (SELECT max(sleep_ms) FROM backfill.batches b WHERE b.job_id = j.id),
           (SELECT extract(epoch FROM min(b.finished_at - b.duration_ms * interval '1 ms'))
            FROM backfill.batches b WHERE b.job_id = j.id)
    FROM backfill.jobs j WHERE j.id = $pid")
# The longest stretch between two committed batches: the hold.
p_gap=$(sql -Atc "SELECT round(max(extract(epoch FROM finished_at - prev) - duration_ms / 1000.0)::numeric, 1)
                  FROM (SELECT finished_at, duration_ms, lag(finished_at) OVER (ORDER BY batch) AS prev
                        FROM backfill.batches WHERE job_id = $pid) s")
# The hold: the longest wait between two batches beyond the sleep the second one records.
p_hold=$(sql -Atc "SELECT round(max(gap)::numeric, 1)
                   FROM (SELECT extract(epoch FROM finished_at - duration_ms * interval '1 ms'
                                                   - lag(finished_at) OVER (ORDER BY batch)) - sleep_ms / 1000.0 AS gap
                         FROM backfill.batches WHERE job_id = $pid) s")
p_polled=$(awk '$2 > m { m = $2 } END { printf "%.0f", m / 1048576 }' "$work/lag.txt")
pause_at=$(calc 'a - f' a="$t_pause" f="$p_first")
resume_at=$(calc 'a - f' a="$t_resume" f="$p_first")

mkdir -p "$(dirname "$png")"
plotted=""
if [[ -x $root/scripts/plot-job ]] &&
    "$root/scripts/plot-job" --conninfo "$conninfo" \
        "$pid" "$png" >"$work/plot.log" 2>&1; then
    plotted="scripts/plot-job"
else
    [[ -x $root/scripts/plot-job ]] && { cat "$work/plot.log" >&2; say "scripts/plot-job failed; using the built-in plot"; }
    sql -At -F $'\t' -c "SELECT extract(epoch FROM finished_at) - $p_first, batch_size, sleep_ms,
                                lag_bytes / 1048576.0, lag_ms
                         FROM backfill.batches WHERE job_id = $pid ORDER BY batch" >"$work/batches.tsv"
    gnuplot <<EOF 2>"$work/gnuplot.err" || { cat "$work/gnuplot.err" >&2; die "gnuplot failed"; }
set terminal pngcairo size 1100,800 font "sans,9" noenhanced
set output "$png"
set datafile separator "\t"
set multiplot layout 3,1 title "backfilld defaults under pgbench load; standby replay paused at ${pause_at%.*} s for $pause s"
set grid
set arrow from $pause_at, graph 0 to $pause_at, graph 1 nohead dt 2 lc rgb "black"
set arrow from $resume_at, graph 0 to $resume_at, graph 1 nohead dt 2 lc rgb "black"
set ylabel "batch size (rows)"
plot "$work/batches.tsv" using 1:2 with steps lw 1.5 title "batch size"
set ylabel "sleep (ms)"
plot "$work/batches.tsv" using 1:3 with steps lw 1.5 title "sleep before the batch"
set ylabel "lag (MiB)"
set y2label "lag (ms)"
set y2tics
set xlabel "s since the first batch began"
plot "$work/batches.tsv" using 1:4 with lines lw 1.5 title "lag, MiB", "" using 1:5 axes x1y2 with lines dt 2 title "lag, ms"
unset multiplot
EOF
    plotted="the built-in gnuplot script"
fi
png_kib=$(($(stat -c %s "$png") / 1024))

kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=""

# -- the figures --------------------------------------------------------------------------------

base=${r_p99[none]}
ratio=$(calc 'b > 0 ? p / b : 0' p="${r_p99bf[backfilld]}" b="$base")
ratio_all=$(calc 'b > 0 ? p / b : 0' p="${r_p99[backfilld]}" b="$base")
ratios=("$ratio")
for ((r = 1; r <= rounds; r++)); do
    ratios+=("$(calc 'b > 0 ? p / b : 0' p="${r_p99bf[round${r}_bf]}" b="${r_p99[round${r}_none]}")")
done
median=$(median "${ratios[@]}")
met=$(awk -v r="$median" 'BEGIN { print (r <= 1.5 ? "met" : "NOT MET") }')

REPORT_LABEL_WIDTH=34
REPORT_WIDTH=100
declare -A labels=([none]="no backfill" [update]="one UPDATE of the whole table" [keyset]="keyset loop, 10,000/batch, no sleep"
    [backfilld]="backfilld, defaults" [tuned]="backfilld, target 100 ms, sleep 100 ms"
    [gentle]="backfilld, 1,000 a batch, sleep 50 ms" [keyset_gentle]="keyset loop, 1,000/batch, sleep 50 ms"
    [nostandby]="backfilld, defaults, no standby" [none2]="no backfill, again")

echo
echo "backfilld throttle benchmark (issue 3)$( ((quick)) && echo ', --quick')"
rule
line "machine" "$(nproc) CPUs, $(cpu_model), $(mem_total) RAM"
line "load average (1/5/15 min)" "$load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
line "PostgreSQL" "$(sql -Atc 'SHOW server_version'), primary + 1 streaming standby (fsync off, synchronous_commit off)"
line "backfilld" "$("$bin" --version)"
line "table" "pgbench_accounts, $(thousands "$rows") rows (pgbench -i -s $scale), made anew for each condition"
line "backfill" "abalance2 = abalance for every row (a new int column)"
line "load" "pgbench -b tpcb-like -c $clients -j 2 -R $rate, $duration s per condition; the backfill starts at ${warmup} s"
rule
printf '%-40s %6s %8s %9s %10s %13s  %-14s %7s %5s\n' "condition" "TPS" "p50 ms" "p99 ms" "p99 in bf" "lock/active" \
    "finished" "took" "load"
for n in "${conditions[@]}"; do
    [[ $n == round* ]] && continue
    read -r w a <<<"${r_wait[$n]}"
    printf '%-40s %6.1f %8s %9s %10s %6s/%-6s  %-14s %7s %5s\n' "${labels[$n]}" "${r_tps[$n]}" "${r_p50[$n]}" \
        "${r_p99[$n]}" "${r_p99bf[$n]}" "$w" "$a" "${r_done[$n]}" "${r_secs[$n]:+$(printf '%.1f s' "${r_secs[$n]}")}" \
        "${r_load[$n]}"
done
rule
line "p99 in bf" "p99 of the transactions that ended while the backfill ran (+1 s); p99: whole run"
line "lock/active" "pgbench sessions waiting on a lock / active, mean of samples every 0.25 s while the backfill ran"
line "load" "1-minute load average at the end of the condition (other work on the machine shows here)"
line "backfilld, defaults" "${r_note[backfilld]}"
line "backfilld, target 100, sleep 100" "${r_note[tuned]}"
line "backfilld, 1,000 + sleep 50" "${r_note[gentle]}"
line "p99 ratio backfilld / no backfill" "$(printf '%.2f' "$ratio") while it ran ($(printf '%.2f' "$ratio_all") over the whole run)"
for ((r = 1; r <= rounds; r++)); do
    line "  round $r" "$(printf '%.2f' "${ratios[r]}"): p99 in bf ${r_p99bf[round${r}_bf]} ms (took $(printf '%.1f' "${r_secs[round${r}_bf]}") s), no backfill ${r_p99[round${r}_none]} ms"
done
line "  median of the $((rounds + 1)) pair(s)" "$(printf '%.2f' "$median")   goal <= 1.5: $met"
x_none() { printf '%.2f' "$(calc 'b > 0 ? a / b : 0' a="${r_p99bf[$1]}" b="$base")"; }
line "  the same, other settings" "target 100 + sleep 100: $(x_none tuned); 1,000 a batch + sleep 50: $(x_none gentle)"
line "  without backfilld" "a PL/pgSQL loop, 1,000 a batch + sleep 50: $(x_none keyset_gentle); 10,000 a batch: $(x_none keyset)"
line "  defaults, standby stopped" "$(x_none nostandby) (its replay shares the primary's CPUs)"
line "  no backfill, again" "$(x_none none2) (the baseline's own scatter)"
rule
line "replay pause run" "job $pid, backfilld defaults, same load; replay paused $(printf '%.1f' "$pause_at") s after the first batch began, for $pause s"
line "  job" "done in $p_secs s, $p_batches batches, $p_held of them throttled"
line "  between two batches" "longest gap $p_gap s; longest hold (gap beyond the recorded sleep) $p_hold s"
line "  peak lag seen by the batches" "$(thousands "$p_maxlag") bytes, $(thousands "$p_maxlagms") ms; longest sleep $(thousands "$p_maxsleep") ms"
line "  peak lag, polled every 0.5 s" "$p_polled MiB"
line "  plot" "$png ($png_kib KiB, by $plotted)"
rule
