"""Fair under hostile or careless load, each done with nothing but backfill_submit (or, for the
stuck queue, by a DBA's lock): a job cannot take the server's connections, lock the daemon out of
its queue, make claims slow by queueing many jobs, keep workers busy with retries or long
statements, block the event loop with a huge SQL text, or flood the log with notices."""

import time

import psycopg
import pytest

import pgharness
from bfhelp import (assert_exact, assert_job, daemon_sessions, healthz, job, make_users, run_to_idle, submit,
                    wait_http, wait_job, wait_state)


def test_parallel_is_capped_and_slices_wait_for_a_free_connection(db, make_role, role_conn, daemon_factory):
    """parallel = 150 is refused at INSERT (daemon.max_parallel, recorded by the daemon); a job of
    6 slices under daemon.max_connections = 5 never has more than 5 connections of the daemon
    open, its slices waiting for one, and finishes exactly."""
    make_users(db, 30000)
    mallory = make_role("backfill_submit")
    db.sql(f'GRANT SELECT, UPDATE ON users TO "{mallory}"')
    d = daemon_factory(daemon={"max_connections": 5, "max_parallel": 6})
    d.start()
    d.wait_for_log(r"listening on backfill_jobs")
    pgharness.wait_until(lambda: db.one("SELECT max_parallel FROM backfill.limits") == 6, timeout=10,
                         what="the daemon's max_parallel recorded")
    m = role_conn(mallory)
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        submit(db, "users", conn=m, parallel=150)
    assert "parallel (150) exceeds daemon.max_parallel (6)" in str(info.value)
    job_id = submit(db, "users", conn=m, set_sql="n = n + 1", where_sql=None, parallel=6, fixed=500, sleep_ms=20)
    most = 0
    while job(db, job_id)["state"] != "done":
        most = max(most, len(daemon_sessions(db)))
        assert d.running(), d.log_tail()
        time.sleep(0.05)
    assert most <= 5, most
    assert db.one("SELECT count(*) FROM backfill.slices WHERE job_id = %s", [job_id]) == 6
    assert "waiting for a free connection" in d.log_text()
    assert_exact(db, "users", job_id, once="n")


def test_locks_a_submitter_can_take_never_freeze_the_queue(db, make_role, role_conn, daemon_factory):
    """Mallory keeps her own job's row locked (SELECT ... FOR UPDATE) and takes the advisory locks
    any role can take on the keys the schema once used: the daemon still claims Alice's job at
    once, renews its lease, finishes it, and /healthz says ok throughout."""
    make_users(db, 20000)
    alice, mallory = make_role("backfill_submit"), make_role("backfill_submit")
    db.sql(f'GRANT SELECT, UPDATE ON users TO "{alice}", "{mallory}"')
    db.sql("CREATE TABLE other (id int PRIMARY KEY, v int)")
    db.sql("INSERT INTO other SELECT g, 0 FROM generate_series(1, 100) g")
    db.sql(f'GRANT SELECT, UPDATE ON other TO "{mallory}"')
    hers = submit(db, "other", conn=role_conn(mallory), set_sql="v = 1", where_sql=None, priority=9)
    locker = psycopg.connect(db.conninfo.replace("user=postgres", f"user={mallory}"))
    locker.execute("SELECT 1 FROM backfill.jobs WHERE id = %s FOR UPDATE", [hers])
    jobs_oid = db.one("SELECT 'backfill.jobs'::regclass::oid")
    locker.execute("SELECT pg_advisory_lock(1650879588, %s), pg_advisory_lock(hashtext('backfilld install-schema'))",
                   [jobs_oid])
    try:
        port = pgharness.free_port()
        d = daemon_factory(http={"listen": f"127.0.0.1:{port}"}, daemon={"lease_ms": 3000, "poll_interval_ms": 300})
        d.start()
        d.wait_for_log(r"listening on backfill_jobs")
        t0 = time.monotonic()
        theirs = submit(db, "users", set_sql="n = n + 1", where_sql=None, fixed=500, sleep_ms=50,
                        conn=role_conn(alice))
        wait_state(db, theirs, "running", timeout=10, daemon=d)
        claimed_after = time.monotonic() - t0
        lease = job(db, theirs)["lease_until"]
        wait_job(db, theirs, lambda r: r["lease_until"] > lease, timeout=10, what="a lease renewal")
        assert healthz(port, timeout=5)[0] == 200
        wait_state(db, theirs, "done", timeout=120, daemon=d)
        assert healthz(port, timeout=5)[0] == 200
        print(f"claimed {claimed_after:.2f} s after the INSERT despite the locks")
        assert claimed_after < 5
        assert job(db, hers)["state"] == "pending"  # locked: skipped, not waited for
    finally:
        locker.close()
    assert_exact(db, "users", theirs, once="n")


def test_healthz_reports_a_queue_that_answers_nothing(db, daemon_factory):
    """A lock that stops every statement of the queue connection (here a DBA's LOCK TABLE): the
    connection is up, but /healthz says 503 with the reason once nothing has been answered for
    max(3 poll intervals, the lease), and 200 again once the lock is gone."""
    port = pgharness.free_port()
    d = daemon_factory(http={"listen": f"127.0.0.1:{port}"}, daemon={"lease_ms": 2000, "poll_interval_ms": 300})
    d.start()
    d.wait_for_log(r"listening on backfill_jobs")
    wait_http(port, status=200, timeout=10)
    with db.connect(autocommit=False) as dba:
        dba.execute("LOCK TABLE backfill.jobs IN ACCESS EXCLUSIVE MODE")
        body = wait_http(port, status=503, timeout=20)
        assert "completed no claim, lease renewal or count" in body, body
        dba.rollback()
    wait_http(port, status=200, timeout=20)
    assert d.running()


def test_a_job_submitted_after_50000_others_is_claimed_at_once(db, daemon_factory):
    """The daemon runs on a nearly empty queue (claiming every poll), then 50,000 jobs arrive at
    once on one table (one runs; the others wait for it), then a job on another table: it is
    claimed within moments. A plan cached on the small queue once made that claim take minutes."""
    db.sql("CREATE TABLE crowded (id int PRIMARY KEY, v int)")
    db.sql("INSERT INTO crowded SELECT g, 0 FROM generate_series(1, 100) g")
    db.sql("CREATE TABLE quiet (id int PRIMARY KEY, v int)")
    db.sql("INSERT INTO quiet SELECT g, 0 FROM generate_series(1, 100) g")
    slow = submit(db, "crowded", set_sql="v = v + (SELECT 1 FROM pg_sleep(0.2))", where_sql=None, fixed=1)
    d = daemon_factory(daemon={"workers": 2, "poll_interval_ms": 100})
    d.start()
    wait_state(db, slow, "running", timeout=30, daemon=d)
    time.sleep(2)  # claims every poll on a small queue: a plan PL/pgSQL may cache
    t0 = time.monotonic()
    db.sql("INSERT INTO backfill.jobs (target, kind, mismatch_sql) SELECT 'crowded', 'verify', 'false'"
           " FROM generate_series(1, 50000)")
    print(f"50,000 jobs inserted in {time.monotonic() - t0:.1f} s")
    time.sleep(1)
    t0 = time.monotonic()
    fresh = submit(db, "quiet", kind="verify", set_sql=None, where_sql=None, mismatch_sql="false")
    wait_state(db, fresh, ("running", "done"), timeout=60, daemon=d)
    claimed = time.monotonic() - t0
    print(f"claimed {claimed:.2f} s after its INSERT, behind 50,000 queued jobs")
    assert claimed < 3, claimed


def test_retries_and_statement_time_are_bounded(db, daemon_factory):
    """Two top-priority jobs whose batches always fail with a retryable SQLSTATE (40001) fail
    after throttle.max_retries, with the last error, instead of holding both workers forever; a
    job may not raise statement_timeout_ms above the configuration's, nor sleep longer than its
    max_sleep_ms; a third job then runs."""
    make_users(db, 2000)
    db.sql("CREATE TABLE t2 (id int PRIMARY KEY, v int); INSERT INTO t2 SELECT g, 0 FROM generate_series(1, 2000) g")
    db.sql("CREATE TABLE t3 (id int PRIMARY KEY, v int); INSERT INTO t3 SELECT g, 0 FROM generate_series(1, 2000) g")
    db.sql("""CREATE FUNCTION always_conflicts() RETURNS int LANGUAGE plpgsql AS $$
              BEGIN RAISE EXCEPTION 'could not serialize' USING ERRCODE = '40001'; END $$""")
    a = submit(db, "users", set_sql="n = always_conflicts()", where_sql=None, priority=9)
    b = submit(db, "t2", set_sql="v = always_conflicts()", where_sql=None, priority=9)
    slow = submit(db, "t3", set_sql="v = v + (SELECT 1 FROM pg_sleep(2))", where_sql=None, fixed=1,
                  statement_timeout_ms=3600000, sleep_ms=3600000, max_sleep_ms=3600000)
    d = daemon_factory(throttle={"max_retries": 3, "statement_timeout_ms": 500, "max_sleep_ms": 200})
    assert run_to_idle(d, timeout=120) == 0
    for j in (a, b):
        row = job(db, j)
        assert row["state"] == "failed", row
        assert row["last_error"].startswith("40001: could not serialize") and "max_retries" in row["last_error"]
    row = job(db, slow)
    assert row["state"] == "failed" and row["last_error"].startswith("57014"), row
    assert "max_retries" in row["last_error"]


def test_a_huge_set_sql_never_blocks_the_loop(db, daemon_factory):
    """A 1 MB set_sql full of dollar-quote tags ($bf0$ ... $bf119999$, which once made the daemon
    search for a free tag quadratically for 36 s): /healthz keeps answering within a second while
    the job is loaded, checked and run, and the job is done."""
    make_users(db, 3000)
    tags = " ".join(f"$bf{i}$" for i in range(120000))
    set_sql = f"n = n + 1 /* {tags} */"
    assert len(set_sql) > 1_000_000
    job_id = submit(db, "users", set_sql=set_sql, where_sql=None)
    port = pgharness.free_port()
    d = daemon_factory(http={"listen": f"127.0.0.1:{port}"})
    d.start()
    # (It binds as it starts: wait for that, then measure.)
    pgharness.wait_until(lambda: healthz(port)[0] is not None, timeout=20, what="/healthz to listen")
    worst = 0.0
    deadline = time.monotonic() + 120
    while job(db, job_id)["state"] != "done":
        assert time.monotonic() < deadline, d.log_tail()
        t0 = time.monotonic()
        assert healthz(port, timeout=5)[0] is not None, "/healthz did not answer"
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.02)
    print(f"/healthz answered within {worst * 1000:.0f} ms at worst")
    assert worst < 1.0, worst
    assert_exact(db, "users", job_id, once="n")


def test_server_notices_of_a_job_are_rate_limited(db, daemon_factory):
    """RAISE WARNING in a job's SQL, 20,000 times: a few warnings reach the log, then one line says
    how many were left out (50,000 lines for one job, before)."""
    make_users(db, 20000)
    db.sql("""CREATE FUNCTION noisy(id bigint) RETURNS text LANGUAGE plpgsql AS $$
              BEGIN RAISE WARNING 'row % says hello', id; RETURN 'x'; END $$""")
    job_id = submit(db, "users", set_sql="state = noisy(id)", where_sql=None, fixed=2000)
    d = daemon_factory(daemon={"lease_ms": 60000})
    assert run_to_idle(d, timeout=120) == 0
    assert_job(db, job_id)
    log = d.log_text()
    warnings = log.count("says hello")
    print(f"{warnings} of 20,000 warnings in the log")
    assert 1 <= warnings <= 100, warnings
    assert "more server notices in 10 s were left out of the log" in log
