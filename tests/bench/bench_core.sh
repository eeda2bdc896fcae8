#!/usr/bin/env bash
# Core throughput benchmark: backfilld against the server-side PL/pgSQL keyset loop the usual
# articles recommend, on one throwaway PostgreSQL 15 cluster. It prints figures, it does not pass
# or fail: a missed target is reported as missed. See tests/bench/README.md.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: tests/bench/bench_core.sh [--rows N] [--runs N]
  --rows N   rows in the benchmark table (default 1000000)
  --runs N   runs of each method, alternating a,b,a,b,... (default 3)
  BUILD_DIR  environment: build directory (default build under the repository root)
  PG_BINDIR  environment: PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
USAGE
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

rows=1000000
runs=3
batch=5000
opt_value --rows rows
opt_value --runs runs
parse_args "$@"
args_count 0 0
check_int --rows "$rows"
check_int --runs "$runs"

root=$(repo_root)
build=${BUILD_DIR:-$root/build}
bin=$build/backfilld

# -- helpers ------------------------------------------------------------------------------------

sql() {
    pg_sql "$port" bench "$@"
}

work=""
port=""
daemon_pid=""

# At exit, before scripts/lib.sh stops the cluster and removes $work (pg_cleanup_on_exit).
cleanup() {
    stop_processes "$daemon_pid"
}
pg_cleanup_on_exit cleanup

# -- setup: build, cluster, table ---------------------------------------------------------------

# One directory for the build log, the cluster, the daemon's configuration and its log.
pg_workdir backfilld-bench 700 10
work=$PG_WORK

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
ensure_backfilld_packages
say "building $bin"
build_backfilld "$build" "$work/build.log"

say "starting a throwaway cluster in $work"
port=$(free_port)
# The brief's settings (shared_buffers 256MB, fsync and synchronous_commit off), and checkpoints
# kept out of the timed runs (each run starts after an explicit CHECKPOINT) so that one method
# does not pay for the other's WAL.
pg_start_cluster "$work/data" "$port" "${PG_BENCH_SETTINGS[@]}" 'max_wal_size = 8GB'
pg_sql "$port" postgres -c 'CREATE DATABASE bench'

say "loading $(thousands "$rows") rows"
# Autovacuum is off on the table for both methods alike: the reset between runs vacuums it, and a
# worker waking in the middle of one run would only add noise.
sql <<EOF
CREATE TABLE users (id bigint PRIMARY KEY, status text, state text, pad text)
    WITH (autovacuum_enabled = off);
INSERT INTO users (id, status, pad)
SELECT g, (ARRAY['active', 'inactive', 'pending', 'banned'])[1 + g % 4],
       rpad(md5(g::text), 60, md5((-g)::text))
FROM generate_series(1, $rows) AS g;
VACUUM (ANALYZE) users;

-- (a) the articles' loop: keyset batches, one COMMIT per batch, all inside the server.
CREATE PROCEDURE keyset_backfill(batch_size int)
LANGUAGE plpgsql AS \$\$
DECLARE
    last_id bigint := (SELECT min(id) - 1 FROM users);
    upto    bigint;
    t0      timestamptz := clock_timestamp();
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
    RAISE NOTICE 'server_seconds=%', extract(epoch FROM clock_timestamp() - t0);
END
\$\$;

-- (b) waits for a backfilld job in one session rather than one psql per poll; a short
-- transaction per poll, so no snapshot is held across the daemon's batches.
CREATE PROCEDURE wait_job(job bigint, timeout_s int)
LANGUAGE plpgsql AS \$\$
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
\$\$;
EOF
table_bytes=$(sql -Atc "SELECT pg_relation_size('users')")
row_bytes=$(calc 'int(b / r + 0.5)' b="$table_bytes" r="$rows")

# -- backfilld: one resident daemon, fixed batches of $batch, no sleep --------------------------

cat >"$work/backfilld.conf" <<EOF
database: { conninfo = "$(pg_conninfo "$port" bench)"; schema = "backfill"; };
daemon: { workers = 2; poll_interval_ms = 1000; lease_ms = 30000; };
throttle: { batch_size = $batch; min_batch_size = $batch; max_batch_size = $batch; sleep_ms = 0; };
http: { listen = ""; };
log: { level = "info"; progress_interval_ms = 10000; };
EOF
backfilld_install_schema "$bin" "$work/backfilld.conf" "$work/backfilld.log"
"${AS_DAEMON_USER[@]}" "$bin" -c "$work/backfilld.conf" 2>>"$work/backfilld.log" &
daemon_pid=$!

# Undo any run: the column back to NULL, dead rows vacuumed, a checkpoint, so every run of either
# method starts from the same table.
reset_table() {
    sql -c 'UPDATE users SET state = NULL' -c 'VACUUM (ANALYZE) users' -c 'CHECKPOINT'
}

# Every row must be done after a run, whichever method ran it.
check_table() {
    local differ
    differ=$(sql -Atc 'SELECT count(*) FROM users WHERE state IS DISTINCT FROM status')
    [[ $differ == 0 ]] || die "$1: $differ rows still differ after the run"
}

declare -a a_rate=() a_server_rate=() a_per_batch=() b_rate=() b_job_rate=() b_insert_rate=() b_in_batch=() b_per_batch=()

run_plpgsql() {
    local t0 t1 out server wall
    t0=$EPOCHREALTIME
    out=$(sql -c "CALL keyset_backfill($batch)" 2>&1) || { echo "$out" >&2; die "CALL keyset_backfill failed"; }
    t1=$EPOCHREALTIME
    server=$(sed -n 's/.*server_seconds=\([0-9.]*\).*/\1/p' <<<"$out")
    [[ -n $server ]] || server=0
    check_table "PL/pgSQL run $1"
    wall=$(calc 't1 - t0' t0="$t0" t1="$t1")
    a_rate+=("$(calc 'r / w' r="$rows" w="$wall")")
    a_server_rate+=("$(calc 's > 0 ? r / s : 0' r="$rows" s="$server")")
    a_per_batch+=("$(calc '1000 * s / n' s="$server" n="$(((rows + batch - 1) / batch))")")
    printf '  run %d  (a) PL/pgSQL   %8.2f s wall  %8.2f s in the procedure            %10s rows/s\n' \
        "$1" "$wall" "$server" "$(thousands "${a_rate[-1]}")"
}

run_backfilld() {
    local t0 t1 id wall fields state changed nbatches job_s insert_s in_batch_s
    kill -0 "$daemon_pid" 2>/dev/null || { tail -n 20 "$work/backfilld.log" >&2; die "backfilld is not running"; }
    # One psql session, like the CALL of (a): submit, then wait for the daemon to finish.
    t0=$EPOCHREALTIME
    id=$(sql -At <<EOF
INSERT INTO backfill.jobs (target, set_sql, where_sql)
VALUES ('users', 'state = status', 'state IS DISTINCT FROM status') RETURNING id AS job_id \gset
CALL wait_job(:job_id, $((600 + rows / 1000)));
\echo :job_id
EOF
    ) || { tail -n 20 "$work/backfilld.log" >&2; die "backfilld run $1: the job did not finish"; }
    t1=$EPOCHREALTIME
    fields=$(sql -At -F ' ' -c "SELECT state, rows_changed, batches,
                                       extract(epoch FROM finished_at - started_at),
                                       extract(epoch FROM finished_at - created_at),
                                       (SELECT coalesce(sum(duration_ms), 0) / 1000
                                        FROM backfill.batches WHERE job_id = $id)
                                FROM backfill.jobs WHERE id = $id")
    read -r state changed nbatches job_s insert_s in_batch_s <<<"$fields"
    [[ $state == "done" ]] ||
        die "backfilld run $1: job $id ended '$state': $(sql -Atc "SELECT last_error FROM backfill.jobs WHERE id = $id")"
    ((changed == rows)) || die "backfilld run $1: job $id changed $changed rows, not $rows"
    check_table "backfilld run $1"
    wall=$(calc 't1 - t0' t0="$t0" t1="$t1")
    b_rate+=("$(calc 'r / w' r="$rows" w="$wall")")
    b_job_rate+=("$(calc 's > 0 ? r / s : 0' r="$rows" s="$job_s")")
    b_insert_rate+=("$(calc 's > 0 ? r / s : 0' r="$rows" s="$insert_s")")
    b_in_batch+=("$(calc 'j > 0 ? 100 * b / j : 0' b="$in_batch_s" j="$job_s")")
    b_per_batch+=("$(calc '1000 * j / n' j="$job_s" n="$(((rows + batch - 1) / batch))")")
    printf '  run %d  (b) backfilld  %8.2f s wall  %8.2f s started->finished, %d batches  %10s rows/s\n' \
        "$1" "$wall" "$job_s" "$nbatches" "$(thousands "${b_rate[-1]}")"
}

say "timing $runs runs of each method, alternating (a) PL/pgSQL and (b) backfilld"
for ((i = 1; i <= runs; i++)); do
    reset_table
    run_plpgsql "$i"
    reset_table
    run_backfilld "$i"
done

# The peak resident set over the daemon's whole life (kernel high-water mark), read while it
# is still running, then a graceful stop.
peak_kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$daemon_pid/status")
kill -TERM "$daemon_pid"
daemon_rc=0
wait "$daemon_pid" || daemon_rc=$?
daemon_pid=""
((daemon_rc == 0)) || say "warning: backfilld exited with status $daemon_rc on SIGTERM"
peak_mib=$(calc 'k / 1024' k="$peak_kib")

# -- the figures --------------------------------------------------------------------------------

a_med=$(median "${a_rate[@]}")
b_med=$(median "${b_rate[@]}")
ratio=$(calc 'b / a' a="$a_med" b="$b_med")
a_srv_med=$(median "${a_server_rate[@]}")
b_job_med=$(median "${b_job_rate[@]}")
b_ins_med=$(median "${b_insert_rate[@]}")
ratio_srv=$(calc 'b / a' a="$a_srv_med" b="$b_ins_med")
ratio_met=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.9 ? "met" : "NOT MET") }')
rss_met=$(awk -v m="$peak_mib" 'BEGIN { print (m < 20 ? "met" : "NOT MET") }')

pg_version=$(sql -Atc 'SHOW server_version')

# Each run's rate, joined: "97,104 / 95,880 / 98,012".
series() {
    local v out=""
    for v in "$@"; do out+="${out:+ / }$(thousands "$v")"; done
    printf '%s' "$out"
}

REPORT_LABEL_WIDTH=36
REPORT_WIDTH=78

echo
echo "backfilld core benchmark"
rule
line "machine" "$(nproc) CPUs, $(cpu_model), $(mem_total) RAM"
line "kernel" "$(uname -sr)"
line "load average (1/5/15 min)" "$load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
line "PostgreSQL" "$pg_version (shared_buffers 256MB, fsync off, synchronous_commit off)"
line "backfilld" "$("$bin" --version)"
line "table" "$(thousands "$rows") rows, $((table_bytes / 1048576)) MiB after load (~$row_bytes bytes/row)"
line "work per run" "UPDATE users SET state = status, every row, batches of $(thousands "$batch"), sleep 0"
line "runs" "$runs of each, alternating a,b; column reset + VACUUM + CHECKPOINT before each"
rule
line "(a) PL/pgSQL keyset CALL, rows/s" "$(series "${a_rate[@]}")   median $(thousands "$a_med")"
line "    inside the procedure, rows/s" "$(series "${a_server_rate[@]}")   median $(thousands "$a_srv_med")"
line "(b) backfilld INSERT->done, rows/s" "$(series "${b_rate[@]}")   median $(thousands "$b_med")"
line "    created_at->finished_at, rows/s" "$(series "${b_insert_rate[@]}")   median $(thousands "$b_ins_med")"
line "    started_at->finished_at, rows/s" "$(series "${b_job_rate[@]}")   median $(thousands "$b_job_med")"
rule
line "ratio backfilld / PL/pgSQL (wall)" "$(printf '%.3f' "$ratio")   target >= 0.9: $ratio_met"
line "  same, server-side clocks" "$(printf '%.3f' "$ratio_srv")"
line "ms per $(thousands "$batch") rows, median" "PL/pgSQL $(printf '%.1f' "$(median "${a_per_batch[@]}")"), backfilld $(printf '%.1f' "$(median "${b_per_batch[@]}")") ($(printf '%.0f' "$(median "${b_in_batch[@]}")")% of it in batches.duration_ms)"
line "backfilld peak RSS (VmHWM)" "$(printf '%.1f MiB' "$peak_mib")   target < 20 MiB: $rss_met"
rule
