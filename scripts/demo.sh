#!/usr/bin/env bash
# The README's demo: build backfilld, start a throwaway PostgreSQL 15 cluster, fill a users table,
# submit the status -> state rename backfill with one INSERT, watch the daemon run it in the
# foreground, then prove every row was copied. Everything is removed at exit unless --keep.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/demo.sh [--rows N] [--keep]
  --rows N   rows in the demo table (default 1000000)
  --keep     leave the cluster running at exit and print how to connect to it and stop it
  BUILD_DIR  environment: build directory (default build under the repository root)
  PG_BINDIR  environment: PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
USAGE
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rows=1000000
keep=0
opt_value --rows rows
opt_flag --keep keep
parse_args "$@"
args_count 0 0
check_int --rows "$rows"

root=$(repo_root)
build=${BUILD_DIR:-$root/build}
bin=$build/backfilld

# -- helpers ------------------------------------------------------------------------------------

# A short headed section; bold on a terminal.
if [[ -t 1 ]]; then
    section() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    section() { printf '\n== %s\n' "$*"; }
fi

now() {
    date +%s.%N
}

# Seconds since $1 (a now() value), with one decimal.
since() {
    awk -v t0="$1" -v t1="$(now)" 'BEGIN { printf "%.1f", t1 - t0 }'
}

SUDO_HINT=""
((EUID == 0)) && SUDO_HINT="runuser -u postgres -- "
cluster_dir=""
cluster_up=0
port=""
daemon_pid=""

# A process's state letter (R, S, ... or Z for an exited child not yet reaped); Z when gone.
proc_state() {
    local st
    st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || st=Z
    printf '%s' "${st:-Z}"
}

sql() {
    pg_sql "$port" demo "$@"
}

# At exit, before scripts/lib.sh stops the cluster and removes its directory (pg_cleanup_on_exit).
cleanup() {
    # Interrupted while the daemon runs. A Ctrl-C reached it too and it is stopping gracefully:
    # give it a moment before a SIGTERM of our own (a second stop signal makes it exit at once).
    if [[ -n $daemon_pid ]]; then
        local i=0
        while ((i++ < 30)) && [[ $(proc_state "$daemon_pid") != Z ]]; do sleep 0.1; done
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if ((keep && cluster_up)); then
        section "Cluster kept (--keep)"
        cat <<EOF
connect:  psql -h 127.0.0.1 -p $port -U postgres demo
daemon:   $bin -c $cluster_dir/backfilld.conf --exit-when-idle
stop:     ${SUDO_HINT}$PG_BINDIR/pg_ctl -D $cluster_dir/data -m fast stop && rm -rf $cluster_dir
EOF
        pg_keep
    fi
}
pg_cleanup_on_exit cleanup

# -- 1. packages and build ----------------------------------------------------------------------

# One directory for the build log, the cluster and the daemon's configuration.
pg_workdir backfilld-demo 700
cluster_dir=$PG_WORK

section "Packages and build"
ensure_backfilld_packages
t0=$(now)
build_backfilld "$build" "$cluster_dir/build.log"
[[ -x $bin ]] || die "the build produced no $bin"
echo "built $bin ($("$bin" --version)) in $(since "$t0") s"

# -- 2. a throwaway cluster ---------------------------------------------------------------------

section "Throwaway PostgreSQL cluster"
port=$(free_port)
pg_start_cluster "$cluster_dir/data" "$port" \
    'fsync = off' \
    'synchronous_commit = off' \
    'full_page_writes = off' \
    'shared_buffers = 128MB' \
    'max_wal_size = 2GB'
cluster_up=1
pg_sql "$port" postgres -c 'CREATE DATABASE demo'
echo "PostgreSQL $(sql -Atc 'SHOW server_version') on 127.0.0.1:$port, data in $cluster_dir"

# -- 3. the schema, the roles, the table ------------------------------------------------------

section "Install the queue schema, as a superuser"
cat >"$cluster_dir/install.conf" <<EOF
database: { conninfo = "$(pg_conninfo "$port" demo)"; schema = "backfill"; };
EOF
echo "\$ backfilld -c $cluster_dir/install.conf --install-schema"
"$bin" -c "$cluster_dir/install.conf" --install-schema

section "Roles: the application's, and the daemon's own (not a superuser)"
roles="CREATE ROLE app_owner LOGIN;                      -- owns the table, submits the job
GRANT backfill_submit TO app_owner;
GRANT CREATE ON SCHEMA public TO app_owner;
CREATE ROLE backfilld LOGIN;                      -- the daemon: member of no submitter
GRANT backfill_daemon, pg_monitor TO backfilld;"
printf '%s\n' "$roles" | sed 's/^/    /'
sql -q -c "$roles"
echo "(this throwaway cluster trusts local logins, so the job's session can log in as app_owner;"
echo " in production, let the daemon do so with a pg_ident.conf map: README, Roles)"

section "A users table with $rows rows, owned by app_owner"
t0=$(now)
pg_sql "$port" demo -U app_owner <<EOF
CREATE TABLE users (id bigint PRIMARY KEY, email text, status text NOT NULL, state text);
INSERT INTO users (id, email, status)
SELECT g, 'user' || g || '@example.com',
       (ARRAY['active', 'active', 'active', 'inactive', 'pending', 'banned'])[1 + g % 6]
FROM generate_series(1, $rows) AS g;
ANALYZE users;
EOF
echo "loaded in $(since "$t0") s; the new column state is empty, status holds the data:"
sql -c 'SELECT status, count(*) AS rows, count(state) AS with_state FROM users GROUP BY status ORDER BY 2 DESC'

cat >"$cluster_dir/backfilld.conf" <<EOF
database: { conninfo = "$(pg_conninfo "$port" demo backfilld)"; schema = "backfill"; };
daemon: { workers = 2; poll_interval_ms = 1000; lease_ms = 30000; };
throttle: { batch_size = 5000; sleep_ms = 0; };
http: { listen = ""; };
log: { level = "info"; progress_interval_ms = 1000; };
EOF

section "Submit the backfill as app_owner: one INSERT"
submit="INSERT INTO backfill.jobs (target, set_sql, where_sql)
VALUES ('users', 'state = status', 'state IS DISTINCT FROM status');"
printf '%s\n' "$submit" | sed 's/^/    /'
pg_sql "$port" demo -U app_owner -c "$submit"
job_id=$(sql -Atc 'SELECT max(id) FROM backfill.jobs')
echo "job $job_id is pending"

# -- 5. the daemon, in the foreground -----------------------------------------------------------

section "Run backfilld until the queue is empty"
echo "\$ backfilld -c $cluster_dir/backfilld.conf --exit-when-idle"
# In the background and waited for, so that a signal to this script runs its cleanup at once.
"${AS_DAEMON_USER[@]}" "$bin" -c "$cluster_dir/backfilld.conf" --exit-when-idle &
daemon_pid=$!
daemon_rc=0
wait "$daemon_pid" || daemon_rc=$?
daemon_pid=""
((daemon_rc == 0)) || die "backfilld exited with status $daemon_rc"

# -- 6. summary ---------------------------------------------------------------------------------

section "The job"
sql -x -c "SELECT id, state, rows_scanned, rows_changed, batches, failed_rows,
                  date_trunc('milliseconds', finished_at - started_at) AS elapsed,
                  round(rows_scanned / nullif(extract(epoch FROM finished_at - started_at), 0))
                      AS rows_per_second,
                  last_error
           FROM backfill.jobs WHERE id = $job_id"
state=$(sql -Atc "SELECT state FROM backfill.jobs WHERE id = $job_id")
[[ $state == "done" ]] || die "job $job_id ended in state '$state', not 'done'"

section "Check: every row has state = status"
echo "    SELECT count(*) FROM users WHERE state IS DISTINCT FROM status;"
differ=$(sql -Atc 'SELECT count(*) FROM users WHERE state IS DISTINCT FROM status')
if [[ $differ != 0 ]]; then
    echo "FAIL: $differ rows differ" >&2
    exit 1
fi
echo "OK: 0 rows differ"

section "backfill.batches (first and last)"
sql -c "SELECT batch, rows_scanned, rows_changed, round(duration_ms::numeric, 1) AS duration_ms,
               pg_size_pretty(wal_bytes) AS wal, to_char(finished_at, 'HH24:MI:SS.MS') AS finished_at
        FROM backfill.batches
        WHERE job_id = $job_id
          AND (batch <= 3 OR batch > (SELECT max(batch) - 2 FROM backfill.batches WHERE job_id = $job_id))
        ORDER BY batch"
((keep)) || echo "removing the cluster (--keep leaves it running)"
