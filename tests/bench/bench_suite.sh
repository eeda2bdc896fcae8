#!/usr/bin/env bash
# The benchmark suite of issue 7: backfilld side by side with what people use instead (one UPDATE,
# the PL/pgSQL keyset loop, a psycopg client loop), on one throwaway PostgreSQL 15 primary with a
# streaming standby. Throughput, flatness of the keyset walk against OFFSET, what the application
# sees (pgbench), standby lag, cost (CPU, RSS, WAL) and the queue at 10,000 jobs; one table of
# figures and one PNG. It prints figures, it does not pass or fail: a missed target is printed as
# NOT MET with the reason. See tests/bench/README.md, section "Benchmark suite".
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: tests/bench/bench_suite.sh [--quick] [--big] [--rows N] [--big-rows N] [--rounds N]
                                  [--batch N] [--sizes "N ..."] [--rate TPS] [--clients N]
                                  [--png FILE]
  --quick        under five minutes: 200,000 rows, one round, short pgbench windows
  --big          also walk a 10,000,000-row table (quiet runs and OFFSET, one round);
                 about an hour more on 2 busy CPUs
  --rows N       rows in the main table (default 1,000,000; --quick 200,000)
  --big-rows N   rows in the --big table (default 10,000,000)
  --rounds N     quiet runs of every method on the main table, in rounds (default 3; --quick 1)
  --batch N      the batch size of the keyset methods under pgbench (section 3) and of the
                 OFFSET loop (default 5000)
  --sizes "N ..."  the batch sizes tried for each keyset method on the main table; each method
                 then runs sections 1, 2, 4 and 5 at its fastest (default "2000 5000 10000
                 20000 50000"; --quick "5000 20000")
  --rate TPS     pgbench's fixed rate, -R, in the application-impact runs (default 200)
  --clients N    pgbench clients, -c (default 4; -j 2)
  --png FILE     the throughput/p99 plot (default docs/bench-throughput-p99.png; with --quick a
                 file under ${TMPDIR:-/tmp}, so a quick run never replaces the committed one)
  BUILD_DIR      environment: build directory (default build under the repository root)
  PG_BINDIR      environment: PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
USAGE
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

# Progress lines carry the seconds since the start.
t_suite=$EPOCHREALTIME
say() {
    printf '==> [%4.0fs] %s\n' "$(awk -v a="$t_suite" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')" "$*" >&2
}

quick=0
big=0
rows=""
big_rows=10000000
rounds=""
batch=5000
sizes=""
rate=200
clients=4
png=""
opt_flag --quick quick
opt_flag --big big
for v in rows big-rows rounds batch sizes rate clients png; do
    opt_value "--$v" "${v//-/_}"
done
parse_args "$@"
args_count 0 0
if ((quick)); then
    rows=${rows:-200000}
    rounds=${rounds:-1}
    sizes=${sizes:-5000 20000}
    base_secs=8   # pgbench alone, the baseline of the application-impact runs
    warmup=2      # pgbench before each backfill starts
    claim_n=20    # _claim calls timed per condition
    notify_n=5    # INSERT -> start probes
else
    rows=${rows:-1000000}
    rounds=${rounds:-3}
    sizes=${sizes:-2000 5000 10000 20000 50000}
    base_secs=20
    warmup=3
    claim_n=50
    notify_n=10
fi
for v in rows big_rows rounds batch rate clients; do
    check_int "--${v//_/-}" "${!v}"
done
read -r -a size_list <<<"$sizes"
((${#size_list[@]} > 0)) || die_status 64 "--sizes wants at least one batch size"
for v in "${size_list[@]}"; do
    check_int --sizes "$v"
done
queued_jobs=10000 # section 6
small_jobs=100    # section 5: jobs queued at once on small tables

root=$(repo_root)
build=${BUILD_DIR:-$root/build}
bin=$build/backfilld
if [[ -z $png ]]; then
    if ((quick)); then png=${TMPDIR:-/tmp}/bench-throughput-p99-quick.png; else png=$root/docs/bench-throughput-p99.png; fi
fi
py=/usr/bin/python3
tck=$(getconf CLK_TCK)

# -- helpers ------------------------------------------------------------------------------------

sql() {
    pg_sql "$port" bench "$@"
}

# fmt FORMAT VALUE: printf that prints "-" for an empty or NaN value.
fmt() {
    # shellcheck disable=SC2059 # FORMAT is the caller's
    if [[ -z ${2:-} || $2 == NaN || $2 == - ]]; then printf '%s' "-"; else printf "$1" "$2"; fi
}

work=""
port=""
sb_port=""
daemon_pid=""
sampler_pid=""
load_pid=""
bg_pid=""

# At exit, before scripts/lib.sh stops the clusters and removes $work (pg_cleanup_on_exit).
cleanup() {
    stop_processes "$bg_pid" "$load_pid" "$sampler_pid" "$daemon_pid"
}
pg_cleanup_on_exit cleanup

pg_workdir backfilld-bench 711 18
work=$PG_WORK

# The Python side (sampler, client loop, submit-and-wait, /proc, pgbench logs, plot series).
bench_py=$root/tests/bench/bench.py
bpy() { "$py" "$bench_py" "$@"; }

# -- setup: packages, build, primary + standby --------------------------------------------------

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
ensure_backfilld_packages
ensure_packages gnuplot-nox
say "building $bin"
build_backfilld "$build" "$work/build.log"

say "starting a throwaway primary and a streaming standby in $work"
port=$(free_port)
# As bench_throttle.sh: fsync and synchronous_commit off (the disk's flush latency is not what is
# measured), checkpoints only where the script asks (after each reset), a streaming standby.
pg_start_cluster "$work/primary" "$port" "${PG_BENCH_SETTINGS[@]}" 'max_wal_size = 16GB' \
    "${PG_PRIMARY_SETTINGS[@]}"
pm_pid=$(head -n 1 "$work/primary/postmaster.pid")
pg_sql "$port" postgres -c 'CREATE DATABASE bench'
conninfo=$(pg_conninfo "$port" bench)

sb_port=$(free_port)
# replay_lsn reaches the primary with every write/flush reply, and at least once a second (not 10 s).
pg_start_standby "$work/standby" "$port" "$sb_port" "cluster_name = 'standby1'" \
    'wal_receiver_status_interval = 1s'
sb_pm_pid=$(head -n 1 "$work/standby/postmaster.pid")

standby_up=1 # 0 while section 1b runs with the standby stopped
wait_caught_up() {
    ((standby_up)) || return 0
    pg_wait_standby "$port" standby1 600
}
wait_caught_up

# The lag/WAL sampler runs for the whole suite; each run reads its own window.
# (Not through bpy: $! must be the Python process itself.)
"$py" "$bench_py" sample "$conninfo" "$work/samples.txt" 2>"$work/sampler.err" &
sampler_pid=$!

# -- tables and the competitors' procedures -----------------------------------------------------

# make_table NAME ROWS: the bench_core.sh table (~110 bytes a row, autovacuum off on it: the reset
# vacuums it), the PL/pgSQL keyset loop and the OFFSET loop for it.
make_table() {
    local t=$1 n=$2
    sql <<EOF
CREATE TABLE $t (id bigint PRIMARY KEY, status text, state text, pad text)
    WITH (autovacuum_enabled = off);
INSERT INTO $t (id, status, pad)
SELECT g, (ARRAY['active', 'inactive', 'pending', 'banned'])[1 + g % 4],
       rpad(md5(g::text), 60, md5((-g)::text))
FROM generate_series(1, $n) AS g;
VACUUM (ANALYZE) $t;

-- The articles' loop: keyset batches, one COMMIT each, no round trip. Each batch's end time, last
-- key and duration are kept in arrays (no write per batch) and saved to the session's temporary
-- table bench_log at the end.
CREATE PROCEDURE keyset_$t(batch_size int)
LANGUAGE plpgsql AS \$\$
DECLARE
    last_id bigint := (SELECT min(id) - 1 FROM $t);
    upto    bigint;
    b0      timestamptz;
    t0      timestamptz := clock_timestamp();
    ts      float8[] := '{}';
    ks      bigint[] := '{}';
    ds      float8[] := '{}';
BEGIN
    LOOP
        b0 := clock_timestamp();
        SELECT max(id) INTO upto
        FROM (SELECT id FROM $t WHERE id > last_id ORDER BY id LIMIT batch_size) AS next_keys;
        EXIT WHEN upto IS NULL;
        UPDATE $t SET state = status
        WHERE id > last_id AND id <= upto AND state IS DISTINCT FROM status;
        last_id := upto;
        COMMIT;
        ts := ts || extract(epoch FROM clock_timestamp())::float8;
        ks := ks || upto;
        ds := ds || 1000 * extract(epoch FROM clock_timestamp() - b0)::float8;
    END LOOP;
    RAISE NOTICE 'server_seconds=%', extract(epoch FROM clock_timestamp() - t0);
    INSERT INTO bench_log SELECT * FROM unnest(ts, ks, ds);
END
\$\$;

-- OFFSET pagination, what keyset pagination avoids: batch k updates the rows at offsets
-- [k, k + batch_size) in key order; each batch timed with clock_timestamp into bench_log.
CREATE PROCEDURE offset_$t(batch_size int, from_row bigint, to_row bigint)
LANGUAGE plpgsql AS \$\$
DECLARE
    k  bigint := from_row;
    b0 timestamptz;
BEGIN
    WHILE k < to_row LOOP
        b0 := clock_timestamp();
        UPDATE $t SET state = status
        WHERE id IN (SELECT id FROM $t ORDER BY id OFFSET k LIMIT batch_size)
          AND state IS DISTINCT FROM status;
        COMMIT;
        INSERT INTO bench_log VALUES (extract(epoch FROM clock_timestamp()), k,
                                      1000 * extract(epoch FROM clock_timestamp() - b0));
        COMMIT;
        k := k + batch_size;
    END LOOP;
END
\$\$;
EOF
}

say "loading $(thousands "$rows") rows into users"
make_table users "$rows"
if ((big)); then
    say "loading $(thousands "$big_rows") rows into users_big (--big)"
    make_table users_big "$big_rows"
fi
# The application's write (section 3): the dual-write phase of expand/contract, one user's status
# changed and copied to the new column, a random row of the table being backfilled.
cat >"$work/app.sql" <<'EOF'
\set id random(1, :nrows)
\set s random(1, 4)
UPDATE users SET status = (ARRAY['active', 'inactive', 'pending', 'banned'])[:s],
                 state  = (ARRAY['active', 'inactive', 'pending', 'banned'])[:s]
WHERE id = :id;
EOF
wait_caught_up

# -- the daemon: one resident instance, throttle defaults ---------------------------------------

cat >"$work/backfilld.conf" <<EOF
database: { conninfo = "$conninfo"; schema = "backfill"; };
daemon: { name = "bench"; workers = 2; poll_interval_ms = 1000; lease_ms = 30000; };
http: { listen = ""; };
log: { level = "info"; progress_interval_ms = 10000; };
EOF
backfilld_install_schema "$bin" "$work/backfilld.conf" "$work/backfilld.log"
"${AS_DAEMON_USER[@]}" "$bin" -c "$work/backfilld.conf" 2>>"$work/backfilld.log" &
daemon_pid=$!

# -- one run of one method ----------------------------------------------------------------------

methods=(update plpgsql client fixed adaptive par2 par4)
declare -A label=(
    [none]="no backfill (pgbench alone)"
    [update]="one UPDATE"
    [plpgsql]="PL/pgSQL keyset loop, CALL"
    [client]="client loop, Python psycopg"
    [fixed]="backfilld fixed"
    [adaptive]="backfilld adaptive (defaults)"
    [par2]="backfilld parallel=2, fixed"
    [par4]="backfilld parallel=4, fixed"
    [offset]="OFFSET loop, PL/pgSQL")
declare -A job_cols=(
    [fixed]="batch_size, min_batch_size, max_batch_size, sleep_ms|@B@, @B@, @B@, 0"
    [adaptive]="|"
    [par2]="batch_size, min_batch_size, max_batch_size, sleep_ms, parallel|@B@, @B@, @B@, 0, 2"
    [par4]="batch_size, min_batch_size, max_batch_size, sleep_ms, parallel|@B@, @B@, @B@, 0, 4")
# The batch size of each keyset method in the quiet runs: its fastest in the sweep (section 0);
# parallel slices use backfilld fixed's. Under pgbench (section 3) and for OFFSET: --batch.
declare -A best=([plpgsql]=$batch [client]=$batch [fixed]=$batch)
batch_of() { # SET METHOD
    case $1/$2 in
    l1/* | */offset | sw/*) echo "${RUN_BATCH:-$batch}" ;;
    */plpgsql | */client | */fixed) echo "${best[$2]}" ;;
    */par2 | */par4) echo "${best[fixed]}" ;;
    *) echo "-" ;;
    esac
}

# R[key/field]: every figure of every run; key = SET/METHOD/ROUND.
declare -A R
runs_done=()

reset_table() {
    sql -c "UPDATE $1 SET state = NULL" -c "VACUUM (ANALYZE) $1" -c 'CHECKPOINT'
    wait_caught_up
}

check_table() { # TABLE KEY
    local differ
    differ=$(sql -Atc "SELECT count(*) FROM $1 WHERE state IS DISTINCT FROM status")
    [[ $differ == 0 ]] || die "$2: $differ rows still differ after the run"
}

insert_lsn() { sql -Atc "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"; }

start_load() { # NAME
    rm -f "$work/lat_$1".*
    (cd "$work" && exec "$PG_BINDIR/pgbench" -n -f "$work/app.sql" -D nrows="$rows" -c "$clients" -j 2 \
        -R "$rate" -T 100000 -l --log-prefix="$work/lat_$1" -h 127.0.0.1 -p "$port" -U postgres bench) \
        >"$work/pgbench_$1.out" 2>&1 &
    load_pid=$!
}

# pgbench ends a -T run on SIGALRM: in-flight transactions finish, the logs are flushed.
stop_load() {
    kill -ALRM "$load_pid" 2>/dev/null || true
    wait "$load_pid" || { cat "$work/pgbench_$1.out" >&2; die "pgbench failed"; }
    load_pid=""
}

# run SET TABLE NROWS METHOD ROUND LOADED
run() {
    local set=$1 t=$2 n=$3 m=$4 round=$5 loaded=$6
    local key=$set/$m/$round out t0 t1 secs w0 w1 c0 c1 s0 s1 id state cols vals ev=$work/ev_${set}_${m}_$round
    local b
    b=$(batch_of "$set" "$m")
    R[$key/batch]=$b
    say "$set round $round: ${label[$m]}$([[ $b == - ]] || echo " (batch $b)") on $t ($(thousands "$n") rows)$( ((loaded)) && echo ", pgbench -R $rate")"
    reset_table "$t"
    if ((loaded)); then
        start_load "${set}_${m}_$round"
        sleep "$warmup"
    fi
    read -r -a c0 < <(bpy procstat "$pm_pid" "$daemon_pid")
    ((loaded || !standby_up)) || read -r -a s0 < <(bpy procstat "$sb_pm_pid")
    w0=$(insert_lsn)
    t0=$EPOCHREALTIME
    case $m in
    none)
        sleep "$base_secs"
        t1=$EPOCHREALTIME
        secs=$(calc 'b - a' a="$t0" b="$t1")
        : >"$ev"
        ;;
    update)
        out=$(sql -c '\timing on' -c "UPDATE $t SET state = status WHERE state IS DISTINCT FROM status" 2>&1) ||
            { echo "$out" >&2; die "$key: the UPDATE failed"; }
        t1=$EPOCHREALTIME
        secs=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out" | tail -n 1)
        secs=$(calc 's / 1000' s="$secs")
        echo "$t1 $n" >"$ev"
        ;;
    plpgsql)
        out=$(sql -c 'CREATE TEMP TABLE bench_log (t float8, k bigint, ms float8)' -c "CALL keyset_$t($b)" \
            -c "\\copy bench_log TO '$work/log_${set}_${m}_$round' WITH (DELIMITER ' ')" 2>&1) ||
            { echo "$out" >&2; die "$key: CALL keyset_$t failed"; }
        t1=$EPOCHREALTIME
        secs=$(sed -n 's/.*server_seconds=\([0-9.]*\).*/\1/p' <<<"$out")
        awk -v p="$(sql -Atc "SELECT min(id) - 1 FROM $t")" '{ print $1, $2 - p, $3; p = $2 }' \
            "$work/log_${set}_${m}_$round" >"$ev"
        ;;
    client)
        out=$(bpy client "$conninfo" "$t" "$b" "$work/log_${set}_${m}_$round") ||
            die "$key: the client loop failed"
        t1=$EPOCHREALTIME
        read -r secs _ _ "R[$key/client_cpu]" <<<"$out"
        awk -v p="$(sql -Atc "SELECT min(id) - 1 FROM $t")" '{ print $1, $2 - p, $3; p = $2 }' \
            "$work/log_${set}_${m}_$round" >"$ev"
        ;;
    fixed | adaptive | par2 | par4)
        kill -0 "$daemon_pid" 2>/dev/null || { tail -n 20 "$work/backfilld.log" >&2; die "backfilld is not running"; }
        cols=${job_cols[$m]%%|*}
        vals=${job_cols[$m]#*|}
        vals=${vals//@B@/$b}
        out=$(bpy submit-wait "$conninfo" \
            "INSERT INTO backfill.jobs (name, target, set_sql, where_sql${cols:+, $cols})
             VALUES ('$key', '$t', 'state = status', 'state IS DISTINCT FROM status'${vals:+, $vals})
             RETURNING id" $((600 + n / 500))) || die "$key: the job did not finish"
        t1=$EPOCHREALTIME
        read -r id state <<<"$out"
        [[ $state == "done" ]] || die "$key: job $id ended $state: $(sql -Atc "SELECT last_error FROM backfill.jobs WHERE id = $id")"
        R[$key/job]=$id
        read -r secs "R[$key/batches]" "R[$key/throttled]" "R[$key/max_batch]" "R[$key/slept]" < <(sql -At -F ' ' -c "
            SELECT extract(epoch FROM j.finished_at - j.created_at), j.batches,
                   (SELECT count(*) FROM backfill.batches b WHERE b.job_id = j.id AND b.throttled_reason IS NOT NULL),
                   (SELECT max(batch_size) FROM backfill.batches b WHERE b.job_id = j.id),
                   (SELECT coalesce(sum(sleep_ms), 0) / 1000.0 FROM backfill.batches b WHERE b.job_id = j.id)
            FROM backfill.jobs j WHERE j.id = $id")
        sql -At -F ' ' -c "SELECT extract(epoch FROM finished_at), rows_scanned, duration_ms
                           FROM backfill.batches WHERE job_id = $id ORDER BY batch" >"$ev"
        ;;
    offset)
        # --big: the first and the last tenth only (a full OFFSET walk of 10M rows takes hours); the
        # middle is done by one UPDATE, so that the last tenth sees the index and heap a full walk
        # would have left.
        local ranges="0 $n"
        [[ $set == qb ]] && ranges="0 $((n / 10)) $((n - n / 10)) $n"
        local -a rr
        read -r -a rr <<<"$ranges"
        local -a calls=()
        calls+=(-c 'CREATE TEMP TABLE bench_log (t float8, k bigint, ms float8)')
        calls+=(-c "CALL offset_$t($b, ${rr[0]}, ${rr[1]})")
        ((${#rr[@]} == 4)) && calls+=(-c "UPDATE $t SET state = status WHERE id > ${rr[1]} AND id <= ${rr[2]}")
        ((${#rr[@]} == 4)) && calls+=(-c "CALL offset_$t($b, ${rr[2]}, ${rr[3]})")
        calls+=(-c "\\copy bench_log TO '$work/log_${set}_${m}_$round' WITH (DELIMITER ' ')")
        out=$(sql "${calls[@]}" 2>&1) || { echo "$out" >&2; die "$key: the OFFSET loop failed"; }
        t1=$EPOCHREALTIME
        secs=$(calc 'b - a' a="$t0" b="$t1")
        cp "$work/log_${set}_${m}_$round" "$ev"
        ;;
    esac
    w1=$(insert_lsn)
    read -r -a c1 < <(bpy procstat "$pm_pid" "$daemon_pid")
    if ((loaded)); then
        sleep 2
        stop_load "${set}_${m}_$round"
        read -r "R[$key/tps]" "R[$key/p50]" "R[$key/p99]" "R[$key/ntx]" < <(bpy latstats "$work/lat_${set}_${m}_$round" "$t0" "$t1" 1)
    elif ((standby_up)); then
        # What the standby spent on this run's WAL (its startup process replaying, its WAL
        # receiver writing), up to when it has caught up: on this machine it shares the CPUs.
        wait_caught_up
        read -r -a s1 < <(bpy procstat "$sb_pm_pid")
        R[$key/sb_cpu]=$(calc '(b - a) / hz' a="${s0[0]}" b="${s1[0]}" hz="$tck")
    fi
    [[ $m == none ]] || check_table "$t" "$key"
    R[$key/t0]=$t0
    R[$key/t1]=$t1
    R[$key/secs]=$secs
    R[$key/rows]=$n
    R[$key/rate]=$(calc 'r / s' r="$n" s="$secs")
    R[$key/wal]=$((w1 - w0))
    R[$key/srv_cpu]=$(calc '(b - a) / hz' a="${c0[0]}" b="${c1[0]}" hz="$tck")
    R[$key/dmn_cpu]=$(calc '(b - a) / hz' a="${c0[1]}" b="${c1[1]}" hz="$tck")
    [[ -z ${R[$key/sb_cpu]:-} ]] || R[$key/all_cpu]=$(calc 'a + b' a="${R[$key/srv_cpu]}" b="${R[$key/sb_cpu]}")
    R[$key/load]=$(cut -d' ' -f1 /proc/loadavg)
    read -r "R[$key/lag_peak]" "R[$key/lag_mean]" _ < <(bpy lag "$work/samples.txt" "$t0" "$t1")
    R[$key/events]=$ev
    runs_done+=("$key")
    printf '    %.2f s, %s rows/s, WAL %s MiB, server CPU %.1f s, daemon CPU %.2f s, lag peak %s MiB%s\n' \
        "$secs" "$(if [[ $m == none ]]; then echo -; else thousands "${R[$key/rate]}"; fi)" "$(calc 'int(w / 1048576)' w="${R[$key/wal]}")" \
        "${R[$key/srv_cpu]}" "${R[$key/dmn_cpu]}" "$(fmt %.1f "$(calc 'p / 1048576' p="${R[$key/lag_peak]}")")" \
        "${R[$key/tps]:+, pgbench TPS ${R[$key/tps]} p50 ${R[$key/p50]} ms p99 ${R[$key/p99]} ms}" >&2
}

# -- section 0: each keyset method's best batch size ---------------------------------------------

# "Each method at its best batch size" (issue 7): one quiet run of each keyset method at each size,
# sizes interleaved; the fastest size of each is the one it runs at in sections 1, 2, 4 and 5.
sweep_methods=(plpgsql client fixed)
for size in "${size_list[@]}"; do
    for m in "${sweep_methods[@]}"; do
        RUN_BATCH=$size run sw users "$rows" "$m" "$size" 0
    done
done
for m in "${sweep_methods[@]}"; do
    top=0
    for size in "${size_list[@]}"; do
        if awk -v r="${R[sw/$m/$size/rate]}" -v t="$top" 'BEGIN { exit !(r > t) }'; then
            top=${R[sw/$m/$size/rate]}
            best[$m]=$size
        fi
    done
    say "best batch size of ${label[$m]}: ${best[$m]}"
done

# -- sections 1, 2, 4, 5: quiet runs (no application load), in rounds ---------------------------

for ((r = 1; r <= rounds; r++)); do
    for m in "${methods[@]}"; do
        run q1 users "$rows" "$m" "$r" 0
    done
done
run q1 users "$rows" offset 1 0

# -- section 1b: where the parallel speed-up goes: the same runs with the standby stopped --------

# The standby shares the primary's 2 CPUs here (in production it has its own machine): what its
# replay takes from the walkers shows in the same methods run with it stopped. Informational;
# the targets are judged on section 1.
say "section 1b: the standby stopped"
wait_caught_up
pg_stop_standby_keeping_wal "$port" "$work/standby"
standby_up=0
ns_methods=(update fixed par2 par4)
for ((r = 1; r <= rounds; r++)); do
    for m in "${ns_methods[@]}"; do
        run ns users "$rows" "$m" "$r" 0
    done
done
pg_restart "$work/standby" standby
sb_pm_pid=$(head -n 1 "$work/standby/postmaster.pid")
standby_up=1
wait_caught_up

# -- section 3: the same methods under pgbench, once each ----------------------------------------

run l1 users "$rows" none 1 1
for m in "${methods[@]}"; do
    run l1 users "$rows" "$m" 1 1
done

if ((big)); then
    for m in "${methods[@]}"; do
        run qb users_big "$big_rows" "$m" 1 0
    done
    run qb users_big "$big_rows" offset 1 0
fi

# -- section 5: peak RSS, flat with 100 jobs queued ----------------------------------------------

vm() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
hwm_runs=$(vm "$daemon_pid" VmHWM)
say "section 5: $small_jobs jobs queued at once on $small_jobs small tables"
sql <<EOF >/dev/null
DO \$\$
BEGIN
    FOR i IN 1..$small_jobs LOOP
        EXECUTE format('CREATE TABLE small_%s (id bigint PRIMARY KEY, a int, b int)', i);
        EXECUTE format('INSERT INTO small_%s SELECT g, g, NULL FROM generate_series(1, 2000) g', i);
    END LOOP;
END
\$\$;
INSERT INTO backfill.jobs (name, target, set_sql, where_sql)
SELECT 'small-' || i, ('small_' || i)::regclass, 'b = a', 'b IS DISTINCT FROM a'
FROM generate_series(1, $small_jobs) i;
EOF
t_small0=$EPOCHREALTIME
rss_max_queued=0
for ((i = 0; i < 6000; i++)); do
    v=$(vm "$daemon_pid" VmRSS)
    ((v > rss_max_queued)) && rss_max_queued=$v
    left=$(sql -Atc "SELECT count(*) FROM backfill.jobs WHERE name LIKE 'small-%' AND state <> 'done'")
    [[ $left == 0 ]] && break
    bad=$(sql -Atc "SELECT count(*) FROM backfill.jobs WHERE name LIKE 'small-%' AND state IN ('failed', 'cancelled')")
    [[ $bad == 0 ]] || die "section 5: $bad small jobs failed"
    sleep 0.1
done
[[ $left == 0 ]] || die "section 5: $left small jobs not done after 10 minutes"
t_small=$(calc 'b - a' a="$t_small0" b="$EPOCHREALTIME")
hwm_small=$(vm "$daemon_pid" VmHWM)
kill -TERM "$daemon_pid"
daemon_rc=0
wait "$daemon_pid" || daemon_rc=$?
daemon_pid=""
((daemon_rc == 0)) || say "warning: backfilld exited with status $daemon_rc on SIGTERM"

# -- section 6: the queue at 10,000 jobs ---------------------------------------------------------

say "section 6: claim latency, NOTIFY wake-up and INSERT -> first batch with $(thousands "$queued_jobs") queued jobs"
sql <<'EOF'
-- Times backfill._claim on this (daemon-flagged) session; each claim is rolled back, so the
-- queue is the same for every call.
CREATE PROCEDURE claim_probe(n int)
LANGUAGE plpgsql AS $$
DECLARE
    t0 timestamptz;
    ms float8[] := '{}';
    got int;
BEGIN
    FOR i IN 1..n LOOP
        t0 := clock_timestamp();
        SELECT count(*) INTO got FROM backfill._claim('bench-probe', 30000, NULL);
        ms := ms || 1000 * extract(epoch FROM clock_timestamp() - t0)::float8;
        ROLLBACK;
    END LOOP;
    RAISE NOTICE 'claim_ms=% claimed=%', array_to_string(ms, ','), got;
END
$$;
CREATE TABLE q_probe (id bigint PRIMARY KEY, a int, b int);
INSERT INTO q_probe SELECT g, g, NULL FROM generate_series(1, 1000) g;
EOF
# claim_ms CONDITION: median and max of claim_n timed _claim calls.
claim_ms() {
    local out ms
    out=$(sql -c "SELECT set_config('backfilld.daemon', 'on', false)" -o /dev/null -c "CALL claim_probe($claim_n)" 2>&1) ||
        { echo "$out" >&2; die "claim_probe failed"; }
    ms=$(sed -n 's/.*claim_ms=\([0-9.,e+-]*\).*/\1/p' <<<"$out")
    R[claim/$1/claimed]=$(sed -n 's/.* claimed=\([0-9]*\).*/\1/p' <<<"$out")
    # shellcheck disable=SC2086
    R[claim/$1/med]=$(median ${ms//,/ })
    R[claim/$1/max]=$(tr ',' '\n' <<<"$ms" | sort -g | tail -n 1)
}
claim_ms empty
t_q0=$EPOCHREALTIME
sql <<EOF
DO \$\$
BEGIN
    FOR i IN 1..10 LOOP
        EXECUTE format('CREATE TABLE q_%s (id bigint PRIMARY KEY, a int, b int)', i);
        EXECUTE format('INSERT INTO q_%s SELECT g, g, NULL FROM generate_series(1, 1000) g', i);
    END LOOP;
END
\$\$;
INSERT INTO backfill.jobs (name, target, set_sql, where_sql, not_before)
SELECT 'queued-' || i, ('q_' || (1 + i % 10))::regclass, 'b = a', 'b IS DISTINCT FROM a', now() + interval '1 day'
FROM generate_series(1, $queued_jobs) i;
ANALYZE backfill.jobs;
EOF
t_queue=$(calc 'b - a' a="$t_q0" b="$EPOCHREALTIME")
claim_ms queued
probe=$(sql -Atc "INSERT INTO backfill.jobs (name, target, set_sql, where_sql)
                  VALUES ('claim-probe', 'q_probe', 'b = a', 'b IS DISTINCT FROM a') RETURNING id")
claim_ms runnable
sql -c "SELECT backfill.cancel($probe) WHERE (SELECT state FROM backfill.jobs WHERE id = $probe) = 'pending'" -o /dev/null

# A fresh daemon that only a NOTIFY can wake within a minute.
sed 's/poll_interval_ms = 1000/poll_interval_ms = 60000/; s/name = "bench"/name = "bench-queue"/' \
    "$work/backfilld.conf" >"$work/backfilld-queue.conf"
"${AS_DAEMON_USER[@]}" "$bin" -c "$work/backfilld-queue.conf" 2>>"$work/backfilld.log" &
daemon_pid=$!
sleep 3
declare -a wake=() first_start=() first_end=()
for ((i = 1; i <= notify_n; i++)); do
    out=$(bpy submit-wait "$conninfo" "INSERT INTO backfill.jobs (name, target, set_sql, where_sql,
                                          batch_size, min_batch_size, max_batch_size)
                                      VALUES ('notify-$i', 'q_probe', 'b = a', 'b IS DISTINCT FROM a', 1000, 1000, 1000)
                                      RETURNING id" 120) || die "section 6: probe $i did not finish"
    read -r id state <<<"$out"
    [[ $state == "done" ]] || die "section 6: probe job $id ended $state"
    read -r a b c < <(sql -At -F ' ' -c "
        SELECT 1000 * extract(epoch FROM j.started_at - j.created_at),
               1000 * extract(epoch FROM (b.finished_at - b.duration_ms * interval '1 ms') - j.created_at),
               1000 * extract(epoch FROM b.finished_at - j.created_at)
        FROM backfill.jobs j JOIN backfill.batches b ON b.job_id = j.id AND b.batch = 1
        WHERE j.id = $id")
    wake+=("$a")
    first_start+=("$b")
    first_end+=("$c")
    sql -c "UPDATE q_probe SET b = NULL" -o /dev/null
    sleep 0.5
done
hwm_queue=$(vm "$daemon_pid" VmHWM)
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=""
kill -TERM "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""

# -- the plot: throughput and p99 against time, application-impact runs --------------------------

say "plotting $png"
for m in none "${methods[@]}"; do
    k=l1/$m/1
    bpy series "$work/series_$m.tsv" "${R[$k/t0]}" "${R[$k/t1]}" "$rows" "${R[$k/events]}" \
        "$work/lat_l1_${m}_1" "$warmup" 2
done
# One colour per method in every panel; the key names them as the table does.
declare -A colour=([none]="#555555" [update]="#d62728" [plpgsql]="#1f77b4" [client]="#9467bd"
    [fixed]="#2ca02c" [adaptive]="#ff7f0e" [par2]="#17becf" [par4]="#8c564b")
p_progress="" p_rate="" p_p99=""
xmax=0
for m in none "${methods[@]}"; do
    f="'$work/series_$m.tsv'"
    st="lw 1.6 lc rgb '${colour[$m]}' title '${label[$m]}'"
    [[ $m == none ]] || p_progress+="${p_progress:+, }$f using (\$1 + 1):3 with lines $st"
    [[ $m == none || $m == update ]] || p_rate+="${p_rate:+, }$f using 1:2 with steps $st"
    p_p99+="${p_p99:+, }$f using (\$1 + 0.5):4 with linespoints pt 7 ps 0.5 $st"
    [[ $m == none ]] || xmax=$(calc 'x > s ? x : s' x="$xmax" s="${R[l1/$m/1/secs]}")
done
xmax=$(calc 'int(x * 1.05) + 3' x="$xmax")
mkdir -p "$(dirname "$png")"
gnuplot <<EOF 2>"$work/gnuplot.err" || { cat "$work/gnuplot.err" >&2; die "gnuplot failed"; }
set terminal pngcairo size 1100,900 font "sans,9" noenhanced
set output "$png"
set datafile separator "\t"
set datafile missing "?"
set multiplot layout 3,1 title "backfilld benchmark suite: $(thousands "$rows") rows (users: state = status) under pgbench -R $rate (dual-write updates of the same table); $(nproc) CPUs, load average ${R[l1/update/1/load]}"
set grid
set key outside right top
set lmargin 11
set rmargin 34
set xrange [-$warmup:$xmax]
set xlabel "seconds since the backfill started"
set ylabel "rows committed (%)"
set yrange [0:105]
plot $p_progress
set ylabel "committed rows/s (1 s buckets)"
set yrange [0:*]
set label 1 "one UPDATE: nothing committed before its end (top panel)" at graph 0.01, graph 0.93
plot $p_rate
unset label 1
set ylabel "pgbench p99 per second (ms, log)"
set label 2 "a gap: no pgbench transaction completed in that second" at graph 0.01, graph 0.93
set logscale y
set yrange [*:*]
plot $p_p99
unset multiplot
EOF
png_kib=$(($(stat -c %s "$png") / 1024))

# -- the figures --------------------------------------------------------------------------------

load_end=$(cut -d' ' -f1-3 /proc/loadavg)
suite_min=$(calc '(b - a) / 60' a="$t_suite" b="$EPOCHREALTIME")
mib() { fmt %.1f "$(calc 'v / 1048576' v="$1")"; }
kib2mib() { printf '%.1f' "$(calc 'k / 1024' k="$1")"; }
met() { awk -v v="$1" -v t="$3" "BEGIN { if (v == \"NaN\" || v == \"\") print \"-\"; else print (v $2 t) ? \"met\" : \"NOT MET\" }"; }
REPORT_LABEL_WIDTH=34
REPORT_WIDTH=114

# med SET METHOD FIELD: the median over the rounds; ratio SET A B [FIELD]: the median over the
# rounds of FIELD(A) / FIELD(B) taken in the same round (FIELD: rate unless given).
med() {
    local -a v=()
    local k
    for k in "${runs_done[@]}"; do
        [[ $k == "$1/$2/"* && -n ${R[$k/$3]:-} ]] && v+=("${R[$k/$3]}")
    done
    median "${v[@]}"
}
ratio() { # SET A B [FIELD, default rate]
    local -a v=()
    local k r f=${4:-rate}
    for k in "${runs_done[@]}"; do
        [[ $k == "$1/$2/"* ]] || continue
        r=${k##*/}
        [[ -n ${R[$1/$3/$r/$f]:-} ]] && v+=("$(calc 'a / b' a="${R[$k/$f]}" b="${R[$1/$3/$r/$f]}")")
    done
    median "${v[@]}"
}
series_of() { # SET METHOD FIELD [FORMAT]: each round's value, joined by /
    local k out=""
    for k in "${runs_done[@]}"; do
        [[ $k == "$1/$2/"* ]] && out+="${out:+/}$(fmt "${4:-%.1f}" "${R[$k/$3]}")"
    done
    printf '%s' "$out"
}

throughput_table() { # SET TABLE NROWS ROUNDS
    local s=$1 m n=$3
    echo
    echo "1. Throughput: $2, $(thousands "$n") rows, UPDATE $2 SET state = status; no application load; median of $4 round(s)"
    printf '%-34s %6s %26s %10s %9s %10s %9s  %s\n' "method" "batch" "seconds (each round)" "rows/s" "x UPDATE" "x PL/pgSQL" "x client" "throttled batches; sleep"
    for m in "${methods[@]}"; do
        local thr="-"
        [[ $m == fixed || $m == adaptive || $m == par2 || $m == par4 ]] &&
            thr="$(series_of "$s" "$m" throttled %.0f) of $(printf '%.0f' "$(med "$s" "$m" batches)"); slept $(series_of "$s" "$m" slept %.0f) s"
        printf '%-34s %6s %26s %10s %9.3f %10.3f %9.3f  %s\n' "${label[$m]}" "$(batch_of "$s" "$m")" "$(series_of "$s" "$m" secs %.2f)" \
            "$(thousands "$(med "$s" "$m" rate)")" "$(ratio "$s" "$m" update)" "$(ratio "$s" "$m" plpgsql)" \
            "$(ratio "$s" "$m" client)" "$thr"
    done
    local f c p
    f=$(ratio "$s" fixed plpgsql)
    c=$(ratio "$s" fixed client)
    p=$(ratio "$s" par2 update)
    line "x A" "the rate over A's in the same round, median over the rounds"
    line "batch" "each keyset method at its fastest size of section 0 (parallel slices: fixed's); adaptive: its own"
    line "throttled; sleep" "backfilld's batches held back (replication lag, ...) of its batches, and its total sleep, each round"
    line "target fixed >= 0.9x PL/pgSQL" "$(printf '%.3f' "$f")  $(met "$f" '>=' 0.9)"
    line "target fixed >= 1.0x client loop" "$(printf '%.3f' "$c")  $(met "$c" '>=' 1.0)"
    line "target parallel=2 >= 1.3x UPDATE" "$(printf '%.3f' "$p")  $(met "$p" '>=' 1.3)"
    line "parallel=4 / parallel=2" "$(printf '%.3f' "$(ratio "$s" par4 par2)")  (2 CPUs: where the speed-up stops)"
    # The CPU budget: the primary's and the standby's CPU seconds (the standby replays on the same
    # CPUs here). 1.3x the UPDATE's speed at parallel=2's CPU per row needs this share of the CPUs.
    local ncpu u_busy p_busy per_row
    ncpu=$(nproc)
    u_busy=$(calc '100 * c / (t * n)' c="$(med "$s" update all_cpu)" t="$(med "$s" update secs)" n="$ncpu")
    p_busy=$(calc '100 * c / (t * n)' c="$(med "$s" par2 all_cpu)" t="$(med "$s" par2 secs)" n="$ncpu")
    per_row=$(ratio "$s" par2 update all_cpu)
    line "CPU busy: one UPDATE" "$(fmt %.0f "$u_busy")% of $ncpu CPUs (primary $(fmt %.1f "$(med "$s" update srv_cpu)") s + standby $(fmt %.1f "$(med "$s" update sb_cpu)") s of CPU in $(fmt %.2f "$(med "$s" update secs)") s)"
    line "CPU busy: parallel=2" "$(fmt %.0f "$p_busy")% (primary $(fmt %.1f "$(med "$s" par2 srv_cpu)") s + standby $(fmt %.1f "$(med "$s" par2 sb_cpu)") s in $(fmt %.2f "$(med "$s" par2 secs)") s): $(fmt %.2f "$per_row")x the UPDATE's CPU for the same rows"
    line "what 1.3x UPDATE would need" "$(fmt %.0f "$(calc '1.3 * u * r' u="$u_busy" r="$per_row")")% of the CPUs at parallel=2's CPU per row ($(fmt %.0f "$(calc '1.3 * u' u="$u_busy")")% even at the UPDATE's)"
}

sweep_table() {
    local m size
    echo
    echo "0. Batch size: rows/s of each keyset method at each size, one quiet run each on users ($(thousands "$rows") rows)"
    printf '%-34s' "method"
    for size in "${size_list[@]}"; do printf ' %10s' "$(thousands "$size")"; done
    printf '  %s\n' "best"
    for m in "${sweep_methods[@]}"; do
        printf '%-34s' "${label[$m]}"
        for size in "${size_list[@]}"; do printf ' %10s' "$(thousands "${R[sw/$m/$size/rate]}")"; done
        printf '  %s\n' "$(thousands "${best[$m]}")"
    done
}

standby_table() {
    local m
    echo
    echo "1b. The same cluster with its standby stopped: users, $(thousands "$rows") rows; median of $rounds round(s) (informational)"
    printf '%-34s %6s %26s %10s %9s %12s\n' "method" "batch" "seconds (each round)" "rows/s" "x UPDATE" "x section 1"
    for m in "${ns_methods[@]}"; do
        printf '%-34s %6s %26s %10s %9.3f %12.3f\n' "${label[$m]}" "$(batch_of ns "$m")" "$(series_of ns "$m" secs %.2f)" \
            "$(thousands "$(med ns "$m" rate)")" "$(ratio ns "$m" update)" \
            "$(calc 'a / b' a="$(med ns "$m" rate)" b="$(med q1 "$m" rate)")"
    done
    local p
    p=$(ratio ns par2 update)
    line "parallel=2 / UPDATE, no standby" "$(printf '%.3f' "$p")  (the target, 1.3, is judged on section 1: $(met "$p" '>=' 1.3) here)"
}

flat_table() { # SET NROWS
    local s=$1 k r
    echo
    echo "2. Keyset stays flat: median batch duration, last 10% of the walk over the first 10% ($(thousands "$2") rows, section 1's first round)"
    printf '%-34s %6s %12s %12s %8s %8s %s\n' "method" "batch" "first 10% ms" "last 10% ms" "ratio" "batches" "target <= 1.2"
    for m in fixed plpgsql client offset; do
        k=$s/$m/1
        [[ -n ${R[$k/events]:-} ]] || continue
        read -r a b r nb < <(bpy flat "${R[$k/events]}")
        local note
        if [[ $m == offset ]]; then
            note="(comparison, no target)"
            [[ $s == qb ]] && note="(first and last tenth by OFFSET, the middle by one UPDATE)"
        else
            note=$(met "$r" '<=' 1.2)
        fi
        printf '%-34s %6s %12.2f %12.2f %8.3f %8d %s\n' "${label[$m]}" "${R[$k/batch]}" "$a" "$b" "$r" "$nb" "$note"
    done
}

cost_table() { # SET
    local s=$1 m mr
    echo
    echo "4/5. Standby lag and cost per 1,000,000 rows (no application load; medians over the rounds)"
    printf '%-34s %10s %10s %11s %11s %9s %9s %12s %8s\n' "method" "lag peak" "lag mean" "WAL MiB/M" "x UPDATE" "srv CPU" "sby CPU" "client CPU" "share"
    for m in "${methods[@]}"; do
        mr=$(calc 'r / 1e6' r="$(med "$s" "$m" rows)")
        local ccpu="-" share="-"
        if [[ $m == client ]]; then
            ccpu=$(calc 'c / m' c="$(med "$s" client client_cpu)" m="$mr")
            share=$(calc '100 * c / s' c="$(med "$s" client client_cpu)" s="$(med "$s" client srv_cpu)")
        elif [[ $m == fixed || $m == adaptive || $m == par2 || $m == par4 ]]; then
            ccpu=$(calc 'c / m' c="$(med "$s" "$m" dmn_cpu)" m="$mr")
            share=$(calc '100 * c / s' c="$(med "$s" "$m" dmn_cpu)" s="$(med "$s" "$m" srv_cpu)")
        fi
        printf '%-34s %7s MiB %6s MiB %11.1f %11.3f %8.1fs %8ss %11ss %7s%%\n' "${label[$m]}" \
            "$(mib "$(med "$s" "$m" lag_peak)")" "$(mib "$(med "$s" "$m" lag_mean)")" \
            "$(calc 'w / 1048576 / m' w="$(med "$s" "$m" wal)" m="$mr")" \
            "$(ratio "$s" "$m" update wal)" \
            "$(calc 'c / m' c="$(med "$s" "$m" srv_cpu)" m="$mr")" \
            "$(fmt %.1f "$(calc 'c / m' c="$(med "$s" "$m" sb_cpu)" m="$mr")")" \
            "$(fmt %.2f "$ccpu")" "$(fmt %.2f "$share")"
    done
}

{
    echo
    echo "backfilld benchmark suite$( ((quick)) && echo ' (--quick)')$( ((big)) && echo ' (--big)')"
    rule
    line "machine" "$(nproc) CPUs, $(cpu_model), $(mem_total) RAM, $(uname -sr)"
    line "load average (1/5/15 min)" "$load_start at the start, $load_end at the end; suite took $(printf '%.1f' "$suite_min") min"
    line "PostgreSQL" "$(sql -Atc 'SHOW server_version'), primary + 1 streaming standby (shared_buffers 256MB, fsync off, synchronous_commit off)"
    line "backfilld" "$("$bin" --version), one resident daemon (workers 2, throttle defaults)"
    line "table" "users, $(thousands "$rows") rows, ~110 bytes/row; reset (UPDATE state = NULL, VACUUM, CHECKPOINT) before every run"
    line "batch" "quiet runs: each keyset method at its fastest of ${sizes// /, } (section 0); under pgbench and OFFSET: $(thousands "$batch")"
    line "command" "tests/bench/bench_suite.sh$( ((quick)) && echo ' --quick')$( ((big)) && echo ' --big')"
    rule
    sweep_table
    throughput_table q1 users "$rows" "$rounds"
    standby_table
    ((big)) && throughput_table qb users_big "$big_rows" 1
    flat_table q1 "$rows"
    ((big)) && flat_table qb "$big_rows"
    echo
    echo "3. Application impact: pgbench -f (dual-write UPDATE of one random users row) -R $rate -c $clients -j 2, once per method, batches of $(thousands "$batch")"
    printf '%-34s %8s %9s %9s %11s %10s %10s %6s\n' "method" "TPS" "p50 ms" "p99 ms" "p99 x none" "backfill s" "lag peak" "load"
    for m in none "${methods[@]}"; do
        k=l1/$m/1
        printf '%-34s %8.1f %9.2f %9.2f %11.2f %10s %6s MiB %6s\n' "${label[$m]}" "${R[$k/tps]}" "${R[$k/p50]}" \
            "${R[$k/p99]}" "$(calc 'a / b' a="${R[$k/p99]}" b="${R[l1/none/1/p99]}")" \
            "$([[ $m == none ]] && echo - || printf '%.1f' "${R[$k/secs]}")" "$(mib "${R[$k/lag_peak]}")" "${R[$k/load]}"
    done
    line "window" "TPS: transactions ended while the backfill ran; p50/p99: those ended then or within 1 s after"
    line "" "(under -R a transaction's latency counts from its scheduled start, so waiting behind a lock counts)"
    cost_table q1
    ((big)) && cost_table qb
    line "lag" "pg_current_wal_lsn() - replay_lsn of the standby, sampled every 100 ms while the method ran"
    line "srv CPU" "CPU seconds of the primary's postmaster and all its children (reaped ones too) per 1M rows"
    line "sby CPU" "the same for the standby (replay, WAL receiver), counted until it has caught up: it runs on the same CPUs"
    line "client CPU / share" "the Python process's or backfilld's own CPU seconds per 1M rows, and as a % of the server's"
    line "target daemon CPU < 2% of server" "fixed $(printf '%.2f%%' "$(calc '100 * c / s' c="$(med q1 fixed dmn_cpu)" s="$(med q1 fixed srv_cpu)")") $(met "$(calc '100 * c / s' c="$(med q1 fixed dmn_cpu)" s="$(med q1 fixed srv_cpu)")" '<' 2), adaptive $(printf '%.2f%%' "$(calc '100 * c / s' c="$(med q1 adaptive dmn_cpu)" s="$(med q1 adaptive srv_cpu)")") $(met "$(calc '100 * c / s' c="$(med q1 adaptive dmn_cpu)" s="$(med q1 adaptive srv_cpu)")" '<' 2)"
    line "peak RSS (VmHWM)" "$(kib2mib "$hwm_runs") MiB after every run above; $(kib2mib "$hwm_small") MiB after $small_jobs jobs queued at once (done in $(printf '%.1f' "$t_small") s, max VmRSS $(kib2mib "$rss_max_queued") MiB); $(kib2mib "$hwm_queue") MiB for the daemon of section 6 ($(thousands "$queued_jobs") queued)"
    line "target RSS < 20 MiB and flat" "$(met "$(kib2mib "$hwm_small")" '<' 20), growth with $small_jobs jobs: $(kib2mib "$((hwm_small - hwm_runs))") MiB"
    echo
    echo "6. Scale of the queue: $(thousands "$queued_jobs") pending jobs (not_before tomorrow, on 10 tables), inserted in $(printf '%.1f' "$t_queue") s"
    line "_claim, empty queue" "median $(printf '%.2f' "${R[claim/empty/med]}") ms, max $(printf '%.2f' "${R[claim/empty/max]}") ms ($claim_n calls, server clock)"
    line "_claim, 10,000 queued, none due" "median $(printf '%.2f' "${R[claim/queued/med]}") ms, max $(printf '%.2f' "${R[claim/queued/max]}") ms"
    line "_claim, 10,000 queued + 1 due" "median $(printf '%.2f' "${R[claim/runnable/med]}") ms, max $(printf '%.2f' "${R[claim/runnable/max]}") ms (claimed ${R[claim/runnable/claimed]}; rolled back)"
    line "NOTIFY wake-up (INSERT->started)" "median $(printf '%.1f' "$(median "${wake[@]}")") ms, max $(printf '%.1f' "$(printf '%s\n' "${wake[@]}" | sort -g | tail -n 1)") ms over $notify_n jobs (poll_interval_ms 60000)  target < 100 ms: $(met "$(median "${wake[@]}")" '<' 100)"
    line "INSERT -> first batch begins" "median $(printf '%.1f' "$(median "${first_start[@]}")") ms, max $(printf '%.1f' "$(printf '%s\n' "${first_start[@]}" | sort -g | tail -n 1)") ms  target < 100 ms: $(met "$(median "${first_start[@]}")" '<' 100)"
    line "INSERT -> first batch committed" "median $(printf '%.1f' "$(median "${first_end[@]}")") ms"
    rule
    line "plot" "$png ($png_kib KiB): progress, committed rows/s and pgbench p99 per second, section 3's runs"
    rule
} | tee "$work/table.txt"
