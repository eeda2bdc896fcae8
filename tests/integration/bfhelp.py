"""Helpers for tests that drive the daemon: tables, jobs (submit, read, wait, kill loops), the
exactly-once check, HTTP and the daemon's sessions. Fixtures are in conftest.py."""

import os
import re
import time
import urllib.error
import urllib.request

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

import pgharness

# -- tables -------------------------------------------------------------------------------------


def make_users(db, rows, name="users"):
    """A table with a status column and an empty state column beside it (the rename playbook),
    and a counter n at 0 for jobs that add 1 to it."""
    db.sql(f"CREATE TABLE {name} (id bigint PRIMARY KEY, status text NOT NULL, state text, n int NOT NULL DEFAULT 0)")
    db.sql(f"INSERT INTO {name} (id, status) SELECT g, (ARRAY['active','idle','banned'])[1 + g % 3] "
           f"FROM generate_series(1, {int(rows)}) g")
    db.sql(f"ANALYZE {name}")


def differing(db, table="users"):
    """How many rows of TABLE still have state IS DISTINCT FROM status."""
    return db.one(f"SELECT count(*) FROM {table} WHERE state IS DISTINCT FROM status")


# -- jobs ---------------------------------------------------------------------------------------

_UPDATE_DEFAULTS = {"set_sql": "state = status", "where_sql": "state IS DISTINCT FROM status"}
_UNSET = object()  # submit's set_sql and where_sql when not given


def insert_job(where, **columns):
    """INSERT a job of COLUMNS (names are quoted) through WHERE, a psycopg connection (its role,
    its transaction) or a Database (a new session); the new row as a dict."""
    return _insert_job(where, sql.SQL("*"), columns)


def _insert_job(where, returning, columns):
    query = sql.SQL("INSERT INTO backfill.jobs ({}) VALUES ({}) RETURNING {}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)), returning)
    if isinstance(where, psycopg.Connection):
        with where.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, list(columns.values())).fetchone()
    with where.cluster.connect(where.name) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, list(columns.values())).fetchone()


def submit(db, target, set_sql=_UNSET, where_sql=_UNSET, conn=None, fixed=None, **columns):
    """INSERT a job on TARGET and return its id; through CONN (a psycopg connection, e.g. a
    submitter's session) when given. Extra COLUMNS are job columns (batch_size=..., name=...).

    An update job (the default kind) not given SET_SQL and WHERE_SQL is the rename playbook's
    (state = status where they differ); pass where_sql=None explicitly for none. A statement or
    verify job (kind=...) gets no set_sql or where_sql unless given. FIXED=N pins the batch size
    (batch_size = min_batch_size = max_batch_size = N), for tests that count batches or need a job
    to last."""
    given = {k: v for k, v in (("set_sql", set_sql), ("where_sql", where_sql)) if v is not _UNSET}
    if columns.get("kind", "update") == "update":
        given = {**_UPDATE_DEFAULTS, **given}
    if fixed is not None:
        columns.update(batch_size=fixed, min_batch_size=fixed, max_batch_size=fixed)
    # RETURNING id only: a submitter's session may have a DateStyle psycopg cannot read.
    return _insert_job(conn if conn is not None else db, sql.Identifier("id"),
                       {"target": target, **given, **columns})["id"]


def job(where, job_id):
    """The job row as a dict (None if there is none), read through WHERE: a psycopg connection
    (its role and transaction: row-level security applies) or a Database (a new session)."""
    query = "SELECT * FROM backfill.jobs WHERE id = %s"
    if isinstance(where, psycopg.Connection):
        with where.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, [job_id]).fetchone()
    with where.cluster.connect(where.name) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, [job_id]).fetchone()


def wait_for(predicate, timeout=30, what="condition", daemon=None, interval=0.05):
    """pgharness.wait_until(PREDICATE), failing with an AssertionError that carries DAEMON's log
    tail; returns PREDICATE's truthy value."""
    try:
        return pgharness.wait_until(predicate, timeout=timeout, interval=interval, what=what)
    except TimeoutError as e:
        tail = f"\n--- daemon log ---\n{daemon.log_tail(60)}" if daemon is not None else ""
        raise AssertionError(f"{e}{tail}") from e


def wait_job(db, job_id, until, timeout=30, what=None, daemon=None):
    """Wait until UNTIL(row) holds for the job's row; return that row. The last row read is in the
    error."""
    last = None

    def reached():
        nonlocal last
        last = job(db, job_id)
        return last is not None and until(last)

    try:
        wait_for(reached, timeout=timeout, what=what or f"job {job_id}", daemon=daemon)
    except AssertionError as e:
        raise AssertionError(f"{e}\nlast row: {last}") from e
    return last


def wait_state(db, job_id, states, timeout=60, daemon=None):
    """Wait until the job is in one of STATES (a string or a tuple); return the row."""
    if isinstance(states, str):
        states = (states,)
    return wait_job(db, job_id, lambda r: r["state"] in states, timeout=timeout,
                    what=f"job {job_id} in {states}", daemon=daemon)


def wait_batches(db, job_id, at_least, timeout=30, or_done=False):
    """Wait until the job has committed AT_LEAST batches (or, with OR_DONE, is done); return the
    count."""
    row = wait_job(db, job_id, lambda r: r["batches"] >= at_least or (or_done and r["state"] == "done"),
                   timeout=timeout, what=f"job {job_id} with {at_least} batches{' or done' if or_done else ''}")
    return row["batches"]


def assert_job(db, job_id, daemon=None, **expect):
    """The job's row has each column of EXPECT at its value (state = 'done' unless given); a job
    done also has let go of its owner and lease, has finished_at and no throttled_reason. Returns
    the row; the failure carries the row and DAEMON's log tail."""
    expect.setdefault("state", "done")
    row = job(db, job_id)
    tail = f"\n--- daemon log ---\n{daemon.log_tail(40)}" if daemon is not None else ""
    assert row is not None, f"no job {job_id}"
    wrong = {k: row[k] for k, v in expect.items() if row[k] != v}
    assert not wrong, f"job {job_id}: {wrong}, expected {expect}\n{row}{tail}"
    if row["state"] == "done":
        assert row["owner"] is None and row["lease_until"] is None and row["throttled_reason"] is None \
            and row["finished_at"] is not None, f"job {job_id} done but not let go: {row}{tail}"
    return row


def assert_exact(db, table, job_id=None, *, once=(), same=None, rows=None, changed=None, daemon=None,
                 **expect):
    """Every row of TABLE changed exactly once, and the job(s) done with their counters right.

    TABLE       a table name, or {table: counter columns} for several tables (as ONCE each).
    ONCE        counter columns (a name or several) the job(s) add 1 to, from 0: each is 1 on every
                row (a lost row shows as 0, a repeat as 2).
    SAME        (column, expression) that agree on every row, NULLs alike: ("state", "status").
    JOB_ID      a job id, or several: each done (assert_job: EXPECT, DAEMON's log on failure).
    ROWS, CHANGED  the job's rows_scanned and rows_changed (one job).
    The table must have rows. Returns the job's row (the last one's, for several)."""
    tables = table if isinstance(table, dict) else {table: [once] if isinstance(once, str) else list(once)}
    for name, counters in tables.items():
        assert db.one(f"SELECT count(*) FROM {name}") > 0, f"{name} is empty"
        for c in counters:
            bad = db.one(f"SELECT count(*) FROM {name} WHERE {c} IS DISTINCT FROM 1")
            assert bad == 0, f"{name}.{c}: {bad} rows changed other than exactly once " \
                             f"{db.sql(f'SELECT {c}, count(*) FROM {name} GROUP BY 1 ORDER BY 1')}"
        if same is not None:
            bad = db.one(f"SELECT count(*) FROM {name} WHERE {same[0]} IS DISTINCT FROM {same[1]}")
            assert bad == 0, f"{name}: {bad} rows with {same[0]} IS DISTINCT FROM {same[1]}"
    if rows is not None:
        expect["rows_scanned"] = rows
    if changed is not None:
        expect["rows_changed"] = changed
    row = None
    ids = [] if job_id is None else list(job_id) if isinstance(job_id, (list, tuple, set)) else [job_id]
    assert len(ids) == 1 or not expect, "ROWS, CHANGED and job columns are for one job"
    for j in ids:
        row = assert_job(db, j, daemon=daemon, **expect)
    return row


def run_to_idle(daemon, timeout=120):
    """Start the daemon with --exit-when-idle and wait for its exit code."""
    daemon.start("--exit-when-idle")
    return daemon.wait(timeout)


def kill_loop(db, daemon, job_id, kills, rnd, lo=0.05, hi=0.5):
    """Start the daemon, wait until it has committed something new (so every kill lands on a
    job in motion, however busy the machine), let it run a random while more (RND.uniform(LO, HI)),
    SIGKILL it; KILLS times or until the job is done. Returns the batch count after each kill."""
    progress = []
    for _ in range(kills):
        before = job(db, job_id)["batches"]
        daemon.start()
        deadline = time.monotonic() + 30
        while (row := job(db, job_id))["batches"] == before and row["state"] != "done":
            assert row["state"] in ("pending", "running"), (row, daemon.log_tail())
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.01)
        time.sleep(rnd.uniform(lo, hi))
        daemon.kill()
        row = job(db, job_id)
        progress.append(row["batches"])
        if row["state"] == "done":
            break
    return progress


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


# -- the daemon's sessions and HTTP ---------------------------------------------------------------


def daemon_sessions(db, like="backfilld%"):
    """(pid, application_name) of the sessions in the test's database whose application_name is
    LIKE the pattern: the daemon's queue, sampler and job sessions by default."""
    return db.sql("SELECT pid, application_name FROM pg_stat_activity WHERE datname = %s"
                  " AND application_name LIKE %s", [db.name, like])


def http_daemon(daemon_factory, listen=None, **sections):
    """A daemon (of DAEMON_FACTORY, with SECTIONS) serving HTTP on LISTEN, by default a free
    loopback port; returns (daemon, port)."""
    port = pgharness.free_port()
    return daemon_factory(http={"listen": listen or f"127.0.0.1:{port}"}, **sections), port


def http(url, method="GET", timeout=5):
    """(status, headers, body text) of one request; HTTP errors are answers too. Raises OSError
    (urllib's URLError, a timeout) when nothing answers."""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read().decode()


def healthz(port, timeout=2.0):
    """(status, body) of GET /healthz on 127.0.0.1:PORT; (None, the error) when nothing answered
    within TIMEOUT."""
    try:
        status, _, body = http(f"http://127.0.0.1:{port}/healthz", timeout=timeout)
    except OSError as e:
        return None, str(e)
    return status, body


def wait_http(port, path="/healthz", status=200, timeout=20, body=None, request_timeout=5):
    """Wait until PATH on 127.0.0.1:PORT answers STATUS (and BODY, a regex, matches), each request
    given REQUEST_TIMEOUT seconds; return the body. The last answer is in the error."""
    last = None

    def ok():
        nonlocal last
        try:
            last = http(f"http://127.0.0.1:{port}{path}", timeout=request_timeout)
        except OSError as e:
            last = (None, None, str(e))
            return False
        return last[0] == status and (body is None or re.search(body, last[2]))

    try:
        pgharness.wait_until(ok, timeout=timeout, what=f"{path} {status}")
    except TimeoutError as e:
        raise AssertionError(f"{path}: wanted {status} {body or ''}, last answer {last}") from e
    return last[2]


def cpu_seconds(pid):
    """User + system CPU time of process PID on this host (a daemon or a server backend), from
    /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
