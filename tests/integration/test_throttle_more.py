"""Adaptive throttling beyond test_throttle.py, against real servers: a job held while autovacuum
works on its target (pause_during_autovacuum), logical replication slots on a throwaway
wal_level = logical cluster (byte lag behind a slot nobody consumes, a slot whose WAL is no longer
reserved, and logical_slots = false), a lag-pressure sleep that outlives the lag, and an
application that keeps meeting a job's locks.

Three of these found daemon bugs (autovacuum matched without the database, a lag sleep not
decided again when the lag clears, a lost slot's hold logged with the wrong detail); fixed."""

import contextlib
import os
import random
import re
import subprocess
import sys
import threading
import time

import psycopg
import pytest

import pgharness
from bfhelp import (app_waits_on_a_slow_first_batch, assert_exact, differing, job, make_users, run_to_idle, submit,
                    wait_job, wait_state)
from conftest import Database, daemons, new_database

ROWS = 20000


def assert_copied(db, job_id, daemon=None):
    """The job done (no throttled_reason left), every row of users walked and copied once."""
    return assert_exact(db, "users", job_id, same=("state", "status"), rows=ROWS, changed=ROWS, daemon=daemon)


def assert_held(db, job_id, reason, seconds=1.5, still=None):
    """The job stays held for REASON, with no batch, for SECONDS (STILL() must stay true too)."""
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        row = job(db, job_id)
        assert row["state"] == "running" and row["throttled_reason"] == reason, row
        assert row["batches"] == 0, row
        if still is not None:
            assert still(), "the condition that holds the job went away on its own"
        time.sleep(0.1)


# -- autovacuum ---------------------------------------------------------------------------------

@pytest.fixture
def fast_autovacuum(cluster):
    """autovacuum_naptime = 1s on the shared cluster for one test; the previous value after."""
    (setting, sourcefile), = cluster.sql("SELECT setting, coalesce(sourcefile, '') FROM pg_settings"
                                        " WHERE name = 'autovacuum_naptime'")
    cluster.sql("ALTER SYSTEM SET autovacuum_naptime = '1s'")
    cluster.sql("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        if sourcefile.endswith("postgresql.auto.conf"):  # someone had set it with ALTER SYSTEM
            cluster.sql(f"ALTER SYSTEM SET autovacuum_naptime = '{int(setting)}s'")
        else:
            cluster.sql("ALTER SYSTEM RESET autovacuum_naptime")
        cluster.sql("SELECT pg_reload_conf()")


def make_slow_vacuum_users(db):
    """The users table of bfhelp.make_users, made so that one autovacuum of it takes many seconds
    (every page costs more than the cost limit of 1: a 100 ms nap per page, ~120 pages), and
    with dead tuples for autovacuum to find at once (thresholds 0)."""
    db.sql("CREATE TABLE users (id bigint PRIMARY KEY, status text NOT NULL, state text,"
           " n int NOT NULL DEFAULT 0) WITH (autovacuum_vacuum_threshold = 0,"
           " autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_cost_delay = 100,"
           " autovacuum_vacuum_cost_limit = 1)")
    db.sql("INSERT INTO users (id, status) SELECT g, (ARRAY['active','idle','banned'])[1 + g % 3]"
           f" FROM generate_series(1, {ROWS}) g")
    db.sql("UPDATE users SET n = 1 WHERE id % 10 = 0")


def vacuum_worker(db, table="users"):
    """The pid of the autovacuum worker that pg_stat_progress_vacuum shows on TABLE, or None."""
    rows = db.sql("SELECT p.pid FROM pg_stat_progress_vacuum p JOIN pg_stat_activity a USING (pid)"
                  " WHERE a.backend_type = 'autovacuum worker' AND p.relid = %s::regclass"
                  " AND p.datid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                  [table])
    return rows[0][0] if rows else None


def wait_vacuum_worker(db):
    return pgharness.wait_until(lambda: vacuum_worker(db), timeout=40, interval=0.1,
                                what="an autovacuum worker on users")


def end_autovacuum(db):
    """Stop autovacuum on users for good: cancel the worker, and turn it off on the table (the
    ALTER waits for a worker's lock; the server cancels a worker that blocks it after
    deadlock_timeout, so a worker started in between is ended too)."""
    pid = vacuum_worker(db)
    if pid:
        db.sql("SELECT pg_cancel_backend(%s)", [pid])
    db.sql("ALTER TABLE users SET (autovacuum_enabled = off)")
    pgharness.wait_until(lambda: vacuum_worker(db) is None, timeout=10, what="no autovacuum worker")


def test_pause_during_autovacuum_holds_the_job_while_a_worker_is_on_its_table(
        fast_autovacuum, db, daemon_factory):
    make_slow_vacuum_users(db)
    pid = wait_vacuum_worker(db)
    job_id = submit(db, "users")
    d = daemon_factory(throttle={"pause_during_autovacuum": True, "sample_interval_ms": 100})
    d.start()
    wait_job(db, job_id, lambda r: r["throttled_reason"] == "autovacuum", timeout=60, what="held for autovacuum")
    # Held, not a single batch, for as long as the very same worker is on the table.
    assert_held(db, job_id, "autovacuum", 2.0, still=lambda: vacuum_worker(db) == pid)
    d.wait_for_log(r"held: autovacuum \(autovacuum is processing the table\)", timeout=1)
    assert differing(db) == ROWS

    end_autovacuum(db)
    wait_state(db, job_id, "done", timeout=60, daemon=d)
    assert_copied(db, job_id)
    assert "running freely again (was autovacuum)" in d.log_text()
    assert d.log_text().count("held: autovacuum") == 1  # logged once, not once per decision


def test_autovacuum_does_not_hold_a_job_by_default(fast_autovacuum, db, daemon_factory):
    make_slow_vacuum_users(db)
    pid = wait_vacuum_worker(db)
    job_id = submit(db, "users")
    # pause_during_autovacuum = false; its own VACUUMs off (they would be skipped while autovacuum
    # is on the table, and say so)
    d = daemon_factory(throttle={"sample_interval_ms": 100, "vacuum_after_percent": 0})
    d.start()
    wait_state(db, job_id, "done", timeout=60, daemon=d)
    # The same worker was on the table from before the job started until after it ended.
    assert vacuum_worker(db) == pid
    assert_copied(db, job_id)
    assert db.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s"
                  " AND throttled_reason IS NOT NULL", [job_id]) == 0
    assert "autovacuum" not in d.log_text()
    end_autovacuum(db)



def test_autovacuum_of_a_same_oid_table_in_another_database_does_not_hold(
        fast_autovacuum, cluster, db, tmp_path):
    """A database cloned from another (CREATE DATABASE ... TEMPLATE) has its tables under the same
    OIDs: autovacuum on the original's users must not hold a job on the clone's."""
    make_slow_vacuum_users(db)
    db.sql("ALTER TABLE users SET (autovacuum_enabled = off)")
    db.close()
    clone = f"{db.name}_clone"
    cluster.sql(f'CREATE DATABASE "{clone}" TEMPLATE "{db.name}"')
    try:
        cdb = Database(cluster, clone)
        assert cdb.one("SELECT 'users'::regclass::oid") == db.one("SELECT 'users'::regclass::oid")
        db.sql("ALTER TABLE users SET (autovacuum_enabled = on)")
        wait_vacuum_worker(db)
        job_id = submit(cdb, "users")
        with daemons(cdb, tmp_path) as make:
            d = make(throttle={"pause_during_autovacuum": True, "sample_interval_ms": 100})
            assert run_to_idle(d, timeout=10) == 0, d.log_tail()
        assert_copied(cdb, job_id)
    finally:
        end_autovacuum(db)
        cluster.sql(f'DROP DATABASE IF EXISTS "{clone}" WITH (FORCE)')


# -- a sleep chosen for lag pressure ----------------------------------------------------------

def test_a_lag_pressure_sleep_ends_soon_after_the_lag_clears(cluster, standby, db, daemon_factory):
    """Byte lag at 70% of the limit before the job starts (replay paused, WAL switched on an idle
    primary): the first decision is a sleep of 0.4 x max_sleep_ms = 12 s. Replay resumes at once;
    the lag is gone within a second, so should the sleep be."""
    make_users(db, ROWS)
    pgharness.wait_caught_up(cluster, standby.name, timeout=30)
    standby.sql("SELECT pg_wal_replay_pause()")
    try:
        push_wal(db, 2)
        limit = int(pgharness.standby_lag_bytes(cluster, standby.name) / 0.7)
        job_id = submit(db, "users")
        d = daemon_factory(throttle={"max_replication_lag_bytes": limit, "max_replication_lag_ms": 600000,
                                     "sample_interval_ms": 100, "max_sleep_ms": 30000})
        d.start()
        d.wait_for_log(r"throttled: replication_lag", timeout=60)
        assert job(db, job_id)["batches"] == 0
    finally:
        standby.sql("SELECT pg_wal_replay_resume()")
    pgharness.wait_caught_up(cluster, standby.name, timeout=10)
    t0 = time.monotonic()
    wait_job(db, job_id, lambda r: r["batches"] >= 1, timeout=30, what="the first batch")
    waited = time.monotonic() - t0
    wait_state(db, job_id, "done", timeout=60, daemon=d)
    assert_copied(db, job_id)
    assert waited < 2.0, f"the first batch came {waited:.1f} s after the lag had cleared"
    # That batch still says why it waited, though the lag was gone when the sleep ended.
    assert db.one("SELECT throttled_reason FROM backfill.batches WHERE job_id = %s AND batch = 1",
                  [job_id]) == "replication_lag"


# -- logical slots (a separate wal_level = logical cluster) -------------------------------------

LIMIT = 16 * 1024 * 1024  # max_replication_lag_bytes; the job itself writes well under half


class LogicalCluster(pgharness.Cluster):
    """A cluster with wal_level = logical; no wal_keep_size, so a slot alone keeps WAL."""

    def _conf_lines(self):
        return super()._conf_lines() + ["wal_level = logical", "wal_keep_size = 0"]


@pytest.fixture(scope="module")
def logical_cluster():
    with pgharness.temporary_cluster("logical", cls=LogicalCluster) as c:
        assert c.sql("SHOW wal_level")[0][0] == "logical"
        yield c


@pytest.fixture
def ldb(logical_cluster):
    """db, on the wal_level = logical cluster (its replication slots dropped with it)."""
    with new_database(logical_cluster, "l") as database:
        yield database


@pytest.fixture
def ldaemon_factory(ldb, tmp_path):
    """daemon_factory, for ldb."""
    with daemons(ldb, tmp_path) as make:
        yield make


def push_wal(db, segments):
    """Move the WAL position on by SEGMENTS segments (16 MiB each) cheaply: a small logical
    message, then a segment switch, SEGMENTS times."""
    for _ in range(segments):
        db.sql("SELECT pg_logical_emit_message(false, 'bfl', 'x')")
        db.sql("SELECT pg_switch_wal()")


def slot(db, name):
    """(bytes behind, wal_status) of the slot NAME."""
    rows = db.sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
                  " wal_status FROM pg_replication_slots WHERE slot_name = %s", [name])
    return rows[0] if rows else None


def lagging_slot(db, name, segments=3):
    db.sql("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", [name])
    push_wal(db, segments)
    behind, status = slot(db, name)
    assert behind > LIMIT and status == "reserved", (behind, status)


def test_a_logical_slot_behind_holds_the_job_until_it_is_advanced(ldb, ldaemon_factory):
    make_users(ldb, ROWS)
    lagging_slot(ldb, "bfl_behind")
    job_id = submit(ldb, "users")
    d = ldaemon_factory(throttle={"max_replication_lag_bytes": LIMIT, "max_replication_lag_ms": 600000,
                                  "sample_interval_ms": 100})
    d.start()
    wait_job(ldb, job_id, lambda r: r["throttled_reason"] == "replication_lag", timeout=60,
             what="held for the slot's lag")
    d.wait_for_log(r"held: replication_lag \(logical slot bfl_behind: \d+ bytes behind\)", timeout=1)
    assert_held(ldb, job_id, "replication_lag", 1.5)
    assert differing(ldb) == ROWS

    ldb.sql("SELECT pg_replication_slot_advance('bfl_behind', pg_current_wal_lsn())")
    wait_state(ldb, job_id, "done", timeout=60, daemon=d)
    assert_copied(ldb, job_id)
    assert "running freely again (was replication_lag)" in d.log_text()
    # Nobody consumed the slot since: the job's own WAL is lag again, but under half the limit.
    assert 0 < slot(ldb, "bfl_behind")[0] < LIMIT // 2


def test_with_logical_slots_off_a_slot_behind_does_not_hold(ldb, ldaemon_factory):
    make_users(ldb, ROWS)
    lagging_slot(ldb, "bfl_ignored")
    job_id = submit(ldb, "users")
    # Its own VACUUMs off: they are a throttled_reason (vacuum) of their own.
    d = ldaemon_factory(throttle={"logical_slots": False, "max_replication_lag_bytes": LIMIT,
                                  "max_replication_lag_ms": 600000, "sample_interval_ms": 100,
                                  "vacuum_after_percent": 0})
    assert run_to_idle(d, timeout=60) == 0, d.log_tail()
    assert_copied(ldb, job_id, daemon=d)
    assert ldb.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s"
                   " AND throttled_reason IS NOT NULL", [job_id]) == 0
    assert "throttled" not in d.log_text() and "held" not in d.log_text()
    assert slot(ldb, "bfl_ignored")[0] > LIMIT  # the slot was behind all along


@pytest.fixture
def tiny_slot_wal_keep(logical_cluster):
    """max_slot_wal_keep_size = 1MB for one test: a slot keeps no segment but the current one."""
    logical_cluster.sql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    logical_cluster.sql("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        logical_cluster.sql("ALTER SYSTEM RESET max_slot_wal_keep_size")
        logical_cluster.sql("SELECT pg_reload_conf()")


def test_a_logical_slot_that_lost_its_wal_holds_the_job(logical_cluster, tiny_slot_wal_keep, ldb,
                                                        ldaemon_factory):
    make_users(ldb, ROWS)
    ldb.sql("SELECT pg_create_logical_replication_slot('bfl_lost', 'test_decoding')")
    push_wal(ldb, 2)
    assert slot(ldb, "bfl_lost")[1] == "unreserved"  # past max_slot_wal_keep_size, not yet removed
    logical_cluster.sql("CHECKPOINT")  # removes the segments: the slot is invalidated
    assert slot(ldb, "bfl_lost")[1] == "lost"
    job_id = submit(ldb, "users")
    # Bytes alone would not hold it: only the slot's wal_status does.
    d = ldaemon_factory(throttle={"max_replication_lag_bytes": 1 << 40, "max_replication_lag_ms": 600000,
                                  "sample_interval_ms": 100})
    d.start()
    wait_job(ldb, job_id, lambda r: r["throttled_reason"] == "logical_slot", timeout=60,
             what="held for the lost slot")
    assert_held(ldb, job_id, "logical_slot", 1.5)
    d.wait_for_log(r"held: logical_slot \(", timeout=1)

    ldb.sql("SELECT pg_drop_replication_slot('bfl_lost')")  # what an operator does with a lost slot
    wait_state(ldb, job_id, "done", timeout=60, daemon=d)
    assert_copied(ldb, job_id)



def test_the_lost_slot_hold_is_logged_with_its_wal_status(logical_cluster, tiny_slot_wal_keep, ldb,
                                                         ldaemon_factory):
    make_users(ldb, ROWS)
    ldb.sql("SELECT pg_create_logical_replication_slot('bfl_lost2', 'test_decoding')")
    push_wal(ldb, 2)
    logical_cluster.sql("CHECKPOINT")
    assert slot(ldb, "bfl_lost2")[1] == "lost"
    job_id = submit(ldb, "users")
    d = ldaemon_factory(throttle={"max_replication_lag_bytes": 1 << 40, "sample_interval_ms": 100})
    d.start()
    wait_job(ldb, job_id, lambda r: r["throttled_reason"] == "logical_slot", timeout=60,
             what="held for the lost slot")
    d.wait_for_log(r"held: logical_slot \(logical slot bfl_lost2 has wal_status lost\)", timeout=2)


# -- the lag estimate between samples ----------------------------------------------------------

def make_users_wide(db, rows=ROWS):
    """users with a 200-byte payload, so that a walk writes some MiB of WAL."""
    db.sql("CREATE TABLE users (id bigint PRIMARY KEY, status text NOT NULL, state text,"
           " n int NOT NULL DEFAULT 0, pad text)")
    db.sql("INSERT INTO users (id, status, pad) SELECT g, (ARRAY['active','idle','banned'])[1 + g % 3],"
           f" repeat('x', 200) FROM generate_series(1, {rows}) g")
    db.sql("ANALYZE users")


def test_with_no_standby_and_no_slot_its_own_wal_is_not_lag(ldb, ldaemon_factory):
    """Between two samples the daemon adds the WAL its batches wrote to the lag it last saw. With
    nothing replicating, there is nothing for that WAL to be behind: one sample (20 s apart),
    then a walk writing many times the 1 MiB limit must never wait for replication_lag."""
    make_users_wide(ldb, 40000)
    assert ldb.one("SELECT count(*) FROM pg_replication_slots") == 0
    assert ldb.one("SELECT count(*) FROM pg_stat_replication") == 0
    job_id = submit(ldb, "users", batch_size=2000)
    # Its own VACUUMs off: they are a throttled_reason (vacuum) of their own.
    d = ldaemon_factory(throttle={"max_replication_lag_bytes": 1 << 20, "max_replication_lag_ms": 600000,
                                  "sample_interval_ms": 20000, "vacuum_after_percent": 0})
    assert run_to_idle(d, timeout=60) == 0, d.log_tail()
    row = assert_exact(ldb, "users", job_id, same=("state", "status"), rows=40000)
    assert row["wal_bytes"] > 4 * (1 << 20), row  # it did write well past the limit
    assert ldb.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s"
                   " AND throttled_reason IS NOT NULL", [job_id]) == 0
    assert "replication_lag" not in d.log_text()


def test_a_slot_caught_up_at_the_sample_lags_by_the_wal_written_since(ldb, ldaemon_factory):
    """The converse: a slot nobody consumes, (almost) caught up when the one sample is taken, falls
    behind by every byte the job writes after it; the estimate must count that and hold the job
    before the next sample (20 s later)."""
    make_users_wide(ldb, 40000)
    ldb.sql("SELECT pg_create_logical_replication_slot('bfl_caught_up', 'test_decoding')")
    ldb.sql("SELECT pg_replication_slot_advance('bfl_caught_up', pg_current_wal_lsn())")
    job_id = submit(ldb, "users", batch_size=2000)
    d = ldaemon_factory(throttle={"max_replication_lag_bytes": 1 << 20, "max_replication_lag_ms": 600000,
                                  "sample_interval_ms": 20000, "max_sleep_ms": 60000})
    d.start()
    d.wait_for_log(r"throttled: replication_lag \(logical slot bfl_caught_up: \d+ bytes behind at the last"
                   r" sample, about \d+ more since\)", timeout=15)
    row = job(ldb, job_id)
    assert 0 < row["rows_scanned"] < 40000 and row["state"] == "running", row
    # The estimate is the job's own WAL: the slot really is that far behind.
    assert slot(ldb, "bfl_caught_up")[0] >= (1 << 20) // 2


# -- a wait between two samples ------------------------------------------------------------------

def test_a_wait_the_sampler_never_sees_still_halves_the_next_batch(ldb, ldaemon_factory):
    """The sampler looks for sessions blocked by a batch once a sample interval (20 s here: not
    once during this job). A batch also asks, at its end, who waits on its locks: each session its
    row locks blocked is still waiting then. So an application UPDATE that waited on the first
    batch halves the next one, and that batch's row says so."""
    make_users(ldb, 1000)
    d = ldaemon_factory(throttle={"sample_interval_ms": 20000})
    job_id, waited = app_waits_on_a_slow_first_batch(ldb, d)  # the rate alone would grow it to ~600
    assert waited > 0.2, waited  # it really waited on the batch
    wait_state(ldb, job_id, "done", timeout=120, daemon=d)
    batches = ldb.sql("SELECT batch, batch_size, throttled_reason, blocked_sessions FROM backfill.batches"
                      " WHERE job_id = %s ORDER BY batch", [job_id])
    assert batches[0][1] == 400, batches
    assert batches[1][1] < 400 and batches[1][2] == "blocked_sessions" and batches[1][3] == 1, batches
    assert "cancelling it" not in d.log_text()
    assert_exact(ldb, "users", job_id, once="n", rows=1000)


# -- an application that keeps meeting the job's locks -------------------------------------------

@contextlib.contextmanager
def steady_application(db, rows, per_second, statement="UPDATE users SET n = n + 1 WHERE id = %s"):
    """An application on its own connection: PER_SECOND updates a second, each of one random row
    of users (ids 1..ROWS), until the block ends (or STATEMENT, with the row's id). Yields the list
    of its errors."""
    stop = threading.Event()
    errors = []

    def application():
        try:
            with psycopg.connect(db.conninfo, autocommit=True) as conn:
                due = time.monotonic()
                while not stop.is_set():
                    conn.execute(statement, [random.randint(1, rows)])
                    due += 1.0 / per_second
                    time.sleep(max(0.0, due - time.monotonic()))
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    app = threading.Thread(target=application)
    app.start()
    try:
        yield errors
    finally:
        stop.set()
        app.join()

def test_an_application_that_keeps_meeting_the_locks_is_made_to_wait_rarely_without_idling(ldb, ldaemon_factory):
    """An application locks random rows of the table all along (SELECT ... FOR UPDATE, as before an
    update), ~200 a second over 20,000 rows, and the job's rows are slow (0.5 ms each), so a batch
    of the size the target asks for (500 ms, ~1,000 rows) would make a couple of sessions wait
    every time. The job keeps how often it makes a session wait near one every 5 s
    (THROTTLE_WAITS_PER_S) by the size of its batches (~130 rows in the second half here), not by
    idling: over the second half of its batches sessions waited less than once a second of the
    job's time, and it slept less for them than it ran. (Halving on each wait and idling after it
    alone, the ceiling growing back by a tenth a calm batch, settled where a batch in several met a
    session, and slept more than it ran.) The application writes nothing, so what governs is the
    waits seen alone: with updates the job predicts the waits from the writes (the next test) and,
    on a machine whose CPUs the application fills (this one, 2 CPUs), the CPU share keeps it busy a
    hundredth of the time — 3,200 of the rows in 300 s, not what this test is about. Sleeps for the
    CPU share are left out of the comparison all the same."""
    rows = 20000
    make_users(ldb, rows)
    d = ldaemon_factory()
    with steady_application(ldb, rows, 200, "SELECT 1 FROM users WHERE id = %s FOR UPDATE") as app_errors:
        time.sleep(0.5)
        job_id = submit(ldb, "users", set_sql="state = status || left(pg_sleep(0.0005)::text, 0)")
        d.start()
        wait_state(ldb, job_id, "done", timeout=300, daemon=d)
    assert not app_errors, app_errors
    assert_exact(ldb, "users", job_id, same=("state", "status"), rows=rows)
    batches = ldb.sql("SELECT duration_ms, coalesce(sleep_ms, 0), coalesce(blocked_sessions, 0),"
                      " throttled_reason FROM backfill.batches WHERE job_id = %s ORDER BY batch", [job_id])
    assert sum(b[2] for b in batches) > 0, "the application never met the job: the test shows nothing"
    late = batches[len(batches) // 2:]
    ran = sum(b[0] for b in late) / 1000
    slept = sum(b[1] for b in late) / 1000
    slept_for_waits = sum(b[1] for b in late if b[3] != "cpu_contention") / 1000
    waits = sum(b[2] for b in late)
    assert len(late) >= 50, batches
    assert waits / (ran + slept) < 1.0, (waits, ran, slept, len(late))
    assert slept_for_waits < ran, (waits, ran, slept_for_waits, slept, len(late))


def test_a_job_that_starts_under_an_application_writing_its_table_keeps_its_batches_small(ldb, ldaemon_factory):
    """An application updates random rows of a 300,000-row table, 400 a second, from before the job
    starts. The job reads how fast the application writes the table from its statistics counters
    (less its own writes): it keeps its first batch size (1,000) while it measures (2 s), then
    brings it down to what those writes predict keeps waits near one every 5 s (400/s over 300,000
    rows: ~300 rows, back to back), with the reason application_writes, before anybody waited.
    (On a machine where the application's CPU work is stretched by batches, the CPU share then
    cuts them to ~2 ms and sleeps 99 times as long between them, reason cpu_contention: the job
    would take many minutes, so the test watches its first 60 batches after the measuring and
    cancels it.) The previous binary grew its batches toward the 500 ms target (7,595 rows by its
    sixth batch) and took 14.5 s, the application waiting on it 7 times."""
    rows = 300000
    make_users(ldb, rows)
    d = ldaemon_factory()
    with steady_application(ldb, rows, 400) as app_errors:
        time.sleep(1.5)  # the application's first writes reach the statistics
        job_id = submit(ldb, "users", set_sql="state = status || left(md5(repeat(status, 2000)), 0)")
        d.start()
        pgharness.wait_until(
            lambda: ldb.one("SELECT state FROM backfill.jobs WHERE id = %s", [job_id]) == "done"
            or ldb.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s AND finished_at >="
                       " (SELECT min(finished_at) + interval '2.5 s' FROM backfill.batches WHERE job_id = %s)",
                       [job_id, job_id]) >= 60,
            timeout=240, what="60 batches after the measuring, or the job done")
        ldb.sql("UPDATE backfill.jobs SET state = 'cancelled' WHERE id = %s AND state <> 'done'", [job_id])
        state = wait_state(ldb, job_id, ("done", "cancelled"), timeout=60, daemon=d)["state"]
    assert not app_errors, app_errors
    if state == "done":
        assert_exact(ldb, "users", job_id, same=("state", "status"), rows=rows)
    batches = ldb.sql("SELECT batch_size, throttled_reason, coalesce(blocked_sessions, 0),"
                      " extract(epoch FROM finished_at - min(finished_at) OVER ())::float8"
                      " FROM backfill.batches WHERE job_id = %s ORDER BY batch", [job_id])
    sizes = [b[0] for b in batches]
    assert max(sizes) <= 1000, sizes  # never grew past the first size
    late = [b for b in batches if b[3] >= 2.5]  # measured by then
    assert len(late) >= 20, batches
    late_sizes = sorted(b[0] for b in late)
    assert late_sizes[len(late_sizes) // 2] <= 800, late_sizes  # the median near ~400
    # Where the application's CPU work also stretches while batches run (this 2-CPU machine), the
    # CPU share cuts the batches shorter still (2 ms of rows) and names its own reason.
    reasons = {b[1] for b in late}
    assert reasons & {"application_writes", "cpu_contention"}, sorted(set((b[0], b[1]) for b in late))
    seconds = batches[-1][3] + 0.001
    waits = sum(b[2] for b in batches)
    assert waits / seconds < 1.0, (waits, seconds)
    log = d.log_text()
    assert "throttled: application_writes" in log or "throttled: cpu_contention" in log


# -- the application's share of the CPU ----------------------------------------------------------

@contextlib.contextmanager
def cpu_hogs(count):
    """COUNT processes spinning on a CPU each until the block ends."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def test_a_job_leaves_the_cpu_to_an_application_whose_work_its_batches_slow_down(ldb, ldaemon_factory):
    """All CPUs but one are kept busy; an application writes the table. A batch then takes the last
    CPU, and the sampler's CPU probe (a fixed piece of work timed by the server, also as batches
    begin) takes longer while batches run than at its best: the job sleeps between batches, in
    proportion, with the reason cpu_contention and the stretch in the log, and slept longer than it
    ran. (That nobody's writes means no CPU share is test_cpu_share_needs_the_application, a unit
    test.)"""
    rows = 200000
    make_users(ldb, rows)
    d = ldaemon_factory()
    hogs = max(1, (os.cpu_count() or 2) - 1)
    with cpu_hogs(hogs), steady_application(ldb, rows, 100) as app_errors:
        time.sleep(1.5)
        job_id = submit(ldb, "users", set_sql="state = status || left(md5(repeat(status, 2000)), 0)")
        d.start()
        pgharness.wait_until(
            lambda: ldb.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s"
                            " AND throttled_reason = 'cpu_contention'", [job_id]) >= 20,
            timeout=120, what="20 batches throttled for cpu_contention")
        ldb.sql("UPDATE backfill.jobs SET state = 'cancelled' WHERE id = %s", [job_id])
        wait_state(ldb, job_id, "cancelled", timeout=60, daemon=d)
    assert not app_errors, app_errors
    ran, slept = ldb.sql("SELECT sum(duration_ms), sum(sleep_ms) FROM backfill.batches WHERE job_id = %s"
                         " AND batch > (SELECT min(batch) FROM backfill.batches WHERE job_id = %s"
                         "              AND throttled_reason = 'cpu_contention')", [job_id, job_id])[0]
    assert slept > ran, (ran, slept)
    m = re.search(r"throttled: cpu_contention \(other sessions' CPU work takes (\d+\.\d+)x as long"
                  r" while batches run", d.log_text())
    assert m and float(m.group(1)) > 1.1, d.log_tail()


def test_a_jobs_vacuum_sleeps_like_autovacuum_while_the_application_competes_for_the_cpu(ldb, ldaemon_factory):
    """As above, all CPUs but one busy and an application writing the table: once the job is in the
    CPU share's regime, its VACUUMs (vacuum_after_percent 1 of 200,000 rows: every 2,000; at a
    hundredth of the time the regime walks a few hundred rows a second) run with autovacuum's cost
    delay (2 ms every 200 of cost), seen in pg_stat_activity as the VACUUM's VacuumDelay waits,
    instead of a flat-out burst of a tenth of a second or more that the application's transactions
    would queue behind. (Every 50,000 rows, the first VACUUM could come before the regime, without
    the delay, and the next one minutes later.)"""
    rows = 200000
    make_users(ldb, rows)
    ldb.sql("ALTER TABLE users ADD COLUMN pad text DEFAULT repeat('x', 400)")  # pages for it to vacuum
    d = ldaemon_factory(throttle={"vacuum_after_percent": 1})
    hogs = max(1, (os.cpu_count() or 2) - 1)
    delays = []
    with cpu_hogs(hogs), steady_application(ldb, rows, 100) as app_errors:
        time.sleep(1.5)
        job_id = submit(ldb, "users", set_sql="state = status || left(md5(repeat(status, 2000)), 0)")
        d.start()
        with psycopg.connect(ldb.conninfo, autocommit=True) as watch:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not delays:
                delays += watch.execute(
                    "SELECT wait_event FROM pg_stat_activity WHERE query LIKE 'VACUUM%%users%%'"
                    " AND wait_event = 'VacuumDelay' AND application_name LIKE 'backfilld%%'").fetchall()
                time.sleep(0.002)
        assert delays, d.log_tail()
        pgharness.wait_until(lambda: "cost delay" in d.log_text(), timeout=30, what="the log's word of it")
        ldb.sql("UPDATE backfill.jobs SET state = 'cancelled' WHERE id = %s", [job_id])
        wait_state(ldb, job_id, "cancelled", timeout=60, daemon=d)
    assert not app_errors, app_errors
    assert "with autovacuum's cost delay, as the application competes for the CPU" in d.log_text()
