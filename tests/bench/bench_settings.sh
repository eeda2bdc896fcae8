#!/usr/bin/env bash
# What a backfill with the contract's defaults costs the application in settings of different
# shapes (issue 17, part 5): with a standby or without, a high or a low transaction rate, a write
# mix or a read-mostly one. For each setting a fresh primary (and standby), pgbench's tables, and
# rounds of pairs (no backfill, backfilld defaults on the very table pgbench writes), their order
# alternating; each setting is judged on the median of its pairs' p99 ratios (goal: <= 1.5).
# With --waits, one more pair per setting samples pgbench's active sessions 200 times a second
# and says where their time went (CPU, lock waits, WAL, I/O ...), with and without the backfill.
# With --floor, one more condition per shape: no backfill, a busy loop at the lowest CPU priority
# (SCHED_IDLE) doing no database work, BUSY ms every PERIOD ms: what any CPU work at all costs the
# application on this machine, the floor under what a throttle can reach here.
# It prints figures, it does not pass or fail. See tests/bench/README.md.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: tests/bench/bench_settings.sh [--quick] [--scale N] [--duration S] [--rounds N]
                                     [--settings LIST] [--waits] [--floor SHAPES]
  --quick          a short check: scale 2, 15 s per condition, 1 pair per setting
  --scale N        pgbench scale: 100,000 pgbench_accounts rows per unit (default 10: 1,000,000)
  --duration S     seconds of load per condition (default 40)
  --rounds N       pairs per setting (default 3)
  --settings LIST  comma-separated names of the settings to run (default: all of them):
                     standby-tpcb-400     a streaming standby, TPC-B at 400 TPS, 4 clients
                     quiet-tpcb-100       no standby, TPC-B at 100 TPS, 2 clients
                     standby-read-800     a standby, 90% point reads, 10% TPC-B, 800 TPS, 4 clients
                     busy-tpcb-800        no standby, TPC-B at 800 TPS, 8 clients
  --waits          one more pair per setting, sampling where pgbench's sessions spend their time
  --floor SHAPES   one more condition per setting and shape BUSY/PERIOD (ms, comma-separated, e.g.
                   2/200,2/28): no backfill, a SCHED_IDLE busy loop BUSY ms every PERIOD ms
  --keep           keep the work directory (pgbench's, each daemon's and each server's logs; not
                   the clusters' data) and say where
  BUILD_DIR        environment: build directory (default build under the repository root)
  PG_BINDIR        environment: PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
USAGE
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

quick=0
waits=0
keep=0
scale=""
duration=""
rounds=""
floor=""
settings="standby-tpcb-400,quiet-tpcb-100,standby-read-800,busy-tpcb-800"
opt_flag --quick quick
opt_flag --waits waits
opt_flag --keep keep
for v in scale duration rounds settings floor; do
    opt_value "--$v" "$v"
done
parse_args "$@"
args_count 0 0
if ((quick)); then
    scale=${scale:-2} duration=${duration:-15} rounds=${rounds:-1}
else
    scale=${scale:-10} duration=${duration:-40} rounds=${rounds:-3}
fi
for v in scale duration rounds; do
    check_int "--$v" "${!v}"
done
warmup=5 # seconds of load before the backfill starts

# name: standby (0/1), rate, clients, pgbench's built-in scripts
declare -A s_standby=([standby-tpcb-400]=1 [quiet-tpcb-100]=0 [standby-read-800]=1 [busy-tpcb-800]=0)
declare -A s_rate=([standby-tpcb-400]=400 [quiet-tpcb-100]=100 [standby-read-800]=800 [busy-tpcb-800]=800)
declare -A s_clients=([standby-tpcb-400]=4 [quiet-tpcb-100]=2 [standby-read-800]=4 [busy-tpcb-800]=8)
declare -A s_mix=([standby-tpcb-400]="-b tpcb-like" [quiet-tpcb-100]="-b tpcb-like"
    [standby-read-800]="-b select-only@9 -b tpcb-like@1" [busy-tpcb-800]="-b tpcb-like")
IFS=, read -r -a chosen <<<"$settings"
for s in "${chosen[@]}"; do
    [[ -n ${s_rate[$s]:-} ]] || usage_error "unknown setting '$s'"
done
shapes=()
[[ -z $floor ]] || IFS=, read -r -a shapes <<<"$floor"
for sh in "${shapes[@]}"; do
    if ! [[ $sh =~ ^([0-9]+(\.[0-9]+)?)/([0-9]+)$ ]] ||
        ! awk -v b="${BASH_REMATCH[1]}" -v p="${BASH_REMATCH[3]}" 'BEGIN { exit !(b > 0 && b < p) }'; then
        usage_error "--floor: '$sh' is not BUSY/PERIOD in ms with 0 < BUSY < PERIOD"
    fi
done

root=$(repo_root)
build=${BUILD_DIR:-$root/build}
bin=$build/backfilld
bench_py=$root/tests/bench/bench.py

work=""
port=""
daemon_pid=""
load_pid=""
wait_pid=""
waits_pid=""
cleanup() {
    stop_processes "$load_pid" "$wait_pid" "$waits_pid" "$daemon_pid"
    if ((keep)) && [[ -n $PG_WORK ]]; then
        pg_cleanup_clusters_only
        say "kept $PG_WORK"
        pg_keep
    fi
}
# Stop every cluster, keeping their files (--keep).
pg_cleanup_clusters_only() {
    local d
    for d in "${PG_CLUSTERS[@]}"; do
        as_pg "$PG_BINDIR/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
    done
}
pg_cleanup_on_exit cleanup

pg_workdir backfilld-settings 711 10
work=$PG_WORK
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
ensure_backfilld_packages
say "building $bin"
build_backfilld "$build" "$work/build.log"

sql() {
    pg_sql "$port" bench "$@"
}

# -- one setting's clusters and daemon ----------------------------------------------------------

start_setting() { # NAME
    local dir=$work/$1
    mkdir -p "$dir"
    chown postgres: "$dir" 2>/dev/null || true
    port=$(free_port)
    pg_start_cluster "$dir/primary" "$port" "${PG_BENCH_SETTINGS[@]}" 'max_wal_size = 8GB' \
        "${PG_PRIMARY_SETTINGS[@]}"
    pg_sql "$port" postgres -c 'CREATE DATABASE bench'
    if ((s_standby[$1])); then
        pg_start_standby "$dir/standby" "$port" "$(free_port)" "cluster_name = 'standby1'"
    fi
    conninfo=$(pg_conninfo "$port" bench)
    cat >"$dir/backfilld.conf" <<EOF
database: { conninfo = "$conninfo"; };
daemon: { name = "bench"; };
http: { listen = ""; };
log: { level = "${BENCH_LOG_LEVEL:-info}"; };
EOF
    backfilld_install_schema "$bin" "$dir/backfilld.conf" "$dir/backfilld.log"
    "${AS_DAEMON_USER[@]}" "$bin" -c "$dir/backfilld.conf" 2>>"$dir/backfilld.log" &
    daemon_pid=$!
    sleep 0.5
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$dir/backfilld.log" >&2; die "backfilld did not start"; }
}

stop_setting() { # NAME
    stop_processes "$daemon_pid"
    daemon_pid=""
    ((s_standby[$1])) && pg_stop "$work/$1/standby" standby
    pg_stop "$work/$1/primary" primary
    # Their data (gigabytes of WAL) goes now, --keep or not: what --keep is for (the logs of
    # pgbench, the daemon, the servers) stays beside it. Kept runs once filled the disk.
    rm -rf "$work/$1/primary" "$work/$1/standby"
}

reset_table() { # NAME
    "$PG_BINDIR/pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$port" -U postgres bench >"$work/init.log" 2>&1 ||
        { cat "$work/init.log" >&2; die "pgbench -i failed"; }
    sql -c 'ALTER TABLE pgbench_accounts ADD COLUMN abalance2 int' -c 'VACUUM ANALYZE' -c 'CHECKPOINT'
    if ((s_standby[$1])); then pg_wait_standby "$port" standby1 120; fi
}

# run NAME SETTING KIND(none|backfilld|burn:BUSY/PERIOD) [waits]: the load for $duration s, a
# backfill (or the busy loop) from $warmup s on (a backfill waited for up to 10 minutes). Prints
# "p99 p99_during seconds" (ms, ms, s).
run() {
    local name=$1 s=$2 kind=$3 sample=${4:-} t_load t_end t0 t1 id state
    local dir=$work/$s
    reset_table "$s"
    t_load=$EPOCHREALTIME
    rm -f "$dir/lat_$name".*
    # shellcheck disable=SC2086 # the mix is a list of options
    (cd "$dir" && exec "$PG_BINDIR/pgbench" -n ${s_mix[$s]} -c "${s_clients[$s]}" -j 2 -R "${s_rate[$s]}" \
        -T "$duration" -l --log-prefix="$dir/lat_$name" -h 127.0.0.1 -p "$port" -U postgres bench) \
        >"$dir/pgbench_$name.out" 2>&1 &
    load_pid=$!
    if [[ -n $sample ]]; then
        /usr/bin/python3 "$bench_py" waits "$conninfo" "$dir/waits_$name.txt" 200 &
        waits_pid=$!
    fi
    if [[ $kind == backfilld ]]; then
        /usr/bin/python3 "$bench_py" submit-wait "$conninfo" \
            "INSERT INTO backfill.jobs (name, target, set_sql, where_sql)
             VALUES ('$name', 'pgbench_accounts', 'abalance2 = abalance', 'abalance2 IS DISTINCT FROM abalance')
             RETURNING id" 600 "$(calc "$t_load + $warmup")" >"$dir/wait_$name" &
        wait_pid=$!
    elif [[ $kind == burn:* ]]; then
        local shape=${kind#burn:}
        chrt -i 0 /usr/bin/python3 "$bench_py" burn "${shape%/*}" "${shape#*/}" "$(calc "$duration - $warmup")" \
            "$(calc "$t_load + $warmup")" &
        wait_pid=$!
    fi
    wait "$load_pid" || { cat "$dir/pgbench_$name.out" >&2; die "$name: pgbench failed"; }
    load_pid=""
    t_end=$(calc "$t_load + $duration")
    t0=$(calc "$t_load + $warmup") t1=$t_end
    if [[ $kind == backfilld ]]; then
        wait "$wait_pid" || die "$name: submitting the job or waiting for it failed"
        wait_pid=""
        read -r id state <"$dir/wait_$name"
        [[ $state == "done" ]] || die "$name: job $id ended $state"
        read -r t0 t1 < <(sql -At -F ' ' -c "SELECT extract(epoch FROM created_at), extract(epoch FROM finished_at)
                                             FROM backfill.jobs WHERE id = $id")
    elif [[ -n $wait_pid ]]; then
        wait "$wait_pid" || die "$name: the busy loop failed"
        wait_pid=""
    fi
    if [[ -n $waits_pid ]]; then
        kill -TERM "$waits_pid" 2>/dev/null || true
        wait "$waits_pid" 2>/dev/null || true
        waits_pid=""
    fi
    local whole during secs
    # The whole run after the warm-up: the window a backfill starts in (the first seconds of a
    # pgbench run, its connections and a cold cache, are not the application's steady state).
    whole=$(/usr/bin/python3 "$bench_py" latstats "$dir/lat_$name" "$(calc "$t_load + $warmup")" "$t_end" 0 | cut -d' ' -f3)
    # The transactions that ended while the backfill ran, within the load (and 1 s after).
    during=$(/usr/bin/python3 "$bench_py" latstats "$dir/lat_$name" "$t0" \
        "$(awk -v a="$t1" -v b="$t_end" 'BEGIN { print (a < b ? a : b) }')" 1 | cut -d' ' -f3)
    secs=$(calc 'b - a' a="$t0" b="$t1")
    if [[ -n $sample ]]; then
        /usr/bin/python3 "$bench_py" waitstats "$dir/waits_$name.txt" "$t0" \
            "$(awk -v a="$t1" -v b="$t_end" 'BEGIN { print (a < b ? a : b) }')" >"$dir/waitstats_$name"
    fi
    echo "$whole $during $secs"
}

# -- the settings --------------------------------------------------------------------------------

declare -A res_median res_ratios res_base res_bf res_secs res_wait_none res_wait_bf res_floor
for s in "${chosen[@]}"; do
    say "setting $s: standby ${s_standby[$s]}, ${s_rate[$s]} TPS, ${s_clients[$s]} clients, ${s_mix[$s]}"
    start_setting "$s"
    ratios=() bases=() bfs=() secs=()
    for ((r = 1; r <= rounds; r++)); do
        if ((r % 2)); then
            read -r _ p_bf t_bf < <(run "bf$r" "$s" backfilld)
            read -r p_none _ _ < <(run "none$r" "$s" none)
        else
            read -r p_none _ _ < <(run "none$r" "$s" none)
            read -r _ p_bf t_bf < <(run "bf$r" "$s" backfilld)
        fi
        ratios+=("$(calc 'b > 0 ? a / b : 0' a="$p_bf" b="$p_none")")
        bases+=("$p_none") bfs+=("$p_bf") secs+=("$(printf '%.0f' "$t_bf")")
        say "  pair $r: p99 $p_none ms without, $p_bf ms while the backfill ran ($(printf '%.0f' "$t_bf") s): $(printf '%.2f' "${ratios[-1]}")x"
    done
    if ((waits)); then
        run waits_none "$s" none sample >/dev/null
        run waits_bf "$s" backfilld sample >/dev/null
        res_wait_none[$s]=$(cat "$work/$s/waitstats_waits_none")
        res_wait_bf[$s]=$(cat "$work/$s/waitstats_waits_bf")
    fi
    res_median[$s]=$(median "${ratios[@]}")
    res_ratios[$s]=$(printf '%.2f ' "${ratios[@]}")
    res_base[$s]=$(median "${bases[@]}")
    res_floor[$s]=""
    for sh in "${shapes[@]}"; do
        read -r p_fl _ _ < <(run "floor_${sh//[^0-9]/_}" "$s" "burn:$sh")
        res_floor[$s]+="$sh ms: p99 $p_fl ms, $(printf '%.2f' "$(calc 'b > 0 ? a / b : 0' a="$p_fl" b="${res_base[$s]}")")x; "
        say "  floor $sh: p99 $p_fl ms with a SCHED_IDLE busy loop ($sh ms), no backfill"
    done
    res_bf[$s]=$(median "${bfs[@]}")
    res_secs[$s]=$(median "${secs[@]}")
    stop_setting "$s"
done

# -- the figures ---------------------------------------------------------------------------------

REPORT_LABEL_WIDTH=22
REPORT_WIDTH=100
echo
echo "backfilld in settings of different shapes (issue 17)$( ((quick)) && echo ', --quick')"
rule
line "machine" "$(nproc) CPUs, $(cpu_model), $(mem_total) RAM"
line "load average (1/5/15 min)" "$load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
line "PostgreSQL" "$("$PG_BINDIR/postgres" --version) (fsync off, synchronous_commit off)"
line "backfilld" "$("$bin" --version), the contract's defaults"
line "table" "pgbench_accounts, $(thousands $((scale * 100000))) rows, made anew for each condition"
line "each condition" "$duration s of pgbench -R; the backfill (abalance2 = abalance) from ${warmup} s on"
rule
printf '%-20s %12s %12s %9s  %-22s %s\n' "setting" "p99 without" "p99 with bf" "bf took" "ratios" "median  goal <= 1.5"
for s in "${chosen[@]}"; do
    printf '%-20s %9s ms %9s ms %7s s  %-22s %.2f    %s\n' "$s" "${res_base[$s]}" "${res_bf[$s]}" "${res_secs[$s]}" \
        "${res_ratios[$s]}" "${res_median[$s]}" "$(awk -v r="${res_median[$s]}" 'BEGIN { print (r <= 1.5 ? "met" : "NOT MET") }')"
done
rule
line "p99 without" "the median over the pairs of the p99 of transactions from ${warmup} s to the end of the load"
line "p99 with bf" "the median over the pairs of the p99 of transactions that ended while the backfill ran"
if ((waits)); then
    for s in "${chosen[@]}"; do
        line "$s" "without: ${res_wait_none[$s]}"
        line "" "with:    ${res_wait_bf[$s]}"
    done
    line "waits" "shares of pgbench's active-session samples, 200 a second (CPU: active, no wait event)"
fi
if ((${#shapes[@]})); then
    for s in "${chosen[@]}"; do
        line "floor $s" "${res_floor[$s]%; }"
    done
    line "floor" "no backfill: a busy loop under chrt -i (SCHED_IDLE), BUSY/PERIOD ms, against p99 without"
fi
rule
