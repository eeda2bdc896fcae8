"""Helpers for tests that drive the daemon: tables, job submission, waiting on job state."""

import time

import psycopg

import pgharness


def make_users(db, rows, name="users"):
    """A table with a status column and an empty state column beside it (the rename playbook)."""
    db.sql(f"CREATE TABLE {name} (id bigint PRIMARY KEY, status text NOT NULL, state text, n int NOT NULL DEFAULT 0)")
    db.sql(f"INSERT INTO {name} (id, status) SELECT g, (ARRAY['active','idle','banned'])[1 + g % 3] "
           f"FROM generate_series(1, {int(rows)}) g")
    db.sql(f"ANALYZE {name}")


def submit(db, target, set_sql="state = status", where_sql="state IS DISTINCT FROM status", conn=None,
           fixed=None, **columns):
    """INSERT a job and return its id. Extra COLUMNS are job columns (batch_size=..., name=...).
    FIXED=N pins the batch size (batch_size = min_batch_size = max_batch_size = N), for tests that
    count batches or need a job to last."""
    if fixed is not None:
        columns.update(batch_size=fixed, min_batch_size=fixed, max_batch_size=fixed)
    cols = ["target", "set_sql", "where_sql"] + list(columns)
    vals = [target, set_sql, where_sql] + list(columns.values())
    placeholders = ", ".join(["%s"] * len(cols))
    sql = f"INSERT INTO backfill.jobs ({', '.join(cols)}) VALUES ({placeholders}) RETURNING id"
    if conn is not None:
        return conn.execute(sql, vals).fetchone()[0]
    return db.sql(sql, vals)[0][0]


def job(db, job_id):
    """The job row as a dict."""
    with db.cluster.connect(db.name) as conn:
        cur = conn.execute("SELECT * FROM backfill.jobs WHERE id = %s", [job_id])
        row = cur.fetchone()
        return dict(zip([c.name for c in cur.description], row)) if row else None


def wait_state(db, job_id, states, timeout=60, daemon=None):
    """Wait until the job is in one of STATES (a string or a tuple); return the row."""
    if isinstance(states, str):
        states = (states,)
    last = None

    def reached():
        nonlocal last
        last = job(db, job_id)
        return last is not None and last["state"] in states

    try:
        pgharness.wait_until(reached, timeout=timeout, what=f"job {job_id} in {states}")
    except Exception as e:
        tail = daemon.log_tail(60) if daemon else ""
        raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {last}\n--- daemon log ---\n{tail}") from e
    return last


def wait_batches(db, job_id, at_least, timeout=30):
    """Wait until the job has committed AT_LEAST batches; return the count."""
    count = 0

    def enough():
        nonlocal count
        count = db.one("SELECT batches FROM backfill.jobs WHERE id = %s", [job_id])
        return count >= at_least

    pgharness.wait_until(enough, timeout=timeout, what=f"job {job_id} with {at_least} batches")
    return count


def differing(db, table="users"):
    return db.one(f"SELECT count(*) FROM {table} WHERE state IS DISTINCT FROM status")


def run_to_idle(daemon, timeout=120):
    """Start the daemon with --exit-when-idle and wait for its exit code."""
    daemon.start("--exit-when-idle")
    return daemon.wait(timeout)


def backend_pids(db, like="backfilld%"):
    return [r[0] for r in db.sql("SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s "
                                 "AND datname = %s", [like, db.name])]


def sleep(seconds):
    time.sleep(seconds)


def app_waits_on_a_slow_first_batch(db, daemon, table="users"):
    """Submit a job whose batches take 3 ms a row (400 rows: about 1.2 s, under twice its 2 s
    target, so no overshoot; max_blocked_ms far away, so no cancel), start DAEMON, and once the
    first batch has locked its first rows UPDATE row 2 as the application would: it waits for
    that batch to commit. Returns (job id, seconds the UPDATE took)."""
    job_id = submit(db, table, set_sql="state = status || left(pg_sleep(0.003)::text, 0), n = n + 1",
                    where_sql=None, batch_size=400, target_batch_ms=2000, max_blocked_ms=60000,
                    statement_timeout_ms=120000)
    daemon.start()
    wait_state(db, job_id, "running", daemon=daemon)
    time.sleep(0.3)  # the first rows of the first batch are locked by now
    with psycopg.connect(db.conninfo, autocommit=True) as app:
        t0 = time.monotonic()
        app.execute(f"UPDATE {table} SET status = 'app', state = 'app' WHERE id = 2")
        return job_id, time.monotonic() - t0
