"""Adaptive throttling against a real primary and a streaming standby (pg_basebackup -R, or a copy
taken with the backup API where there is no pg_basebackup): replication lag, row locks, sessions
blocked by a batch, and steady application load."""

import re
import shutil
import signal
import statistics
import subprocess
import time

import psycopg
import pytest

import pgharness
from bfhelp import (app_waits_on_a_slow_first_batch, assert_exact, job, make_users, submit, wait_batches, wait_job,
                    wait_state)


def sampler_trouble(daemon):
    """The sampler's error and warning lines in the daemon's log (priority <3> or <4>, context
    `sampler`): a sample that failed (a query an older server does not know fails every sample,
    and lag, blocked sessions and the CPU share then go unseen) or a standby it cannot read."""
    return re.findall(r"^<[0-4]>sampler\b.*$", daemon.log_text(), re.MULTILINE)


@pytest.mark.versions
def test_replay_paused_holds_the_job_then_it_finishes(cluster, standby, db, daemon_factory):
    make_users(db, 200000)
    pgharness.wait_caught_up(cluster, standby.name)
    limit = 4 * 1024 * 1024
    job_id = submit(db, "users", fixed=2000)
    d = daemon_factory(throttle={"max_replication_lag_bytes": limit, "max_replication_lag_ms": 600000,
                                 "sample_interval_ms": 100, "max_sleep_ms": 2000},
                       daemon={"lease_ms": 3000})
    d.start()
    wait_batches(db, job_id, 3)
    standby.sql("SELECT pg_wal_replay_pause()")
    try:
        watch_the_hold(cluster, standby, db, d, job_id, limit)
    finally:  # a paused standby would hold the next tests' jobs
        standby.sql("SELECT pg_wal_replay_resume()")
    wait_state(db, job_id, "done", timeout=120, daemon=d)
    assert_exact(db, "users", job_id, same=("state", "status"))  # throttled_reason NULL
    # The batch after the hold records the time held (over 2 s here) and why.
    assert db.one("SELECT max(sleep_ms) FROM backfill.batches WHERE job_id = %s"
                  " AND throttled_reason = 'replication_lag'", [job_id]) >= 2000
    assert "running freely again" in d.log_text()
    assert sampler_trouble(d) == []


def watch_the_hold(cluster, standby, db, d, job_id, limit):
    """With the standby's replay paused: the job runs the lag up to LIMIT and holds there."""
    t_pause = time.monotonic()
    peak = 0
    held_at = None
    while time.monotonic() - t_pause < 60:
        peak = max(peak, pgharness.standby_lag_bytes(cluster, standby.name) or 0)
        if held_at is None and "held: replication_lag" in d.log_text():
            held_at = time.monotonic()
            batches_at_hold = job(db, job_id)["batches"]
        if held_at and time.monotonic() - held_at > 2.0:
            break
        time.sleep(0.02)
    assert held_at is not None, d.log_tail()
    assert job(db, job_id)["throttled_reason"] == "replication_lag"
    assert job(db, job_id)["batches"] <= batches_at_hold + 1  # held: no more batches
    assert job(db, job_id)["state"] == "running"
    batch_wal = db.one("SELECT max(wal_bytes) FROM backfill.batches WHERE job_id = %s", [job_id])
    # Byte lag never exceeds the limit by more than what one batch writes.
    assert peak <= limit + batch_wal + 64 * 1024, (peak, limit, batch_wal)
    assert peak >= limit // 2  # it really ran up to the limit before holding
    # Before holding, lag pressure already slowed it down: sleeps grew past half the limit.
    assert db.one("SELECT max(sleep_ms) FROM backfill.batches WHERE job_id = %s", [job_id]) > 0
    assert "throttled: replication_lag" in d.log_text()
    # Logged per change, not per batch: the reason changes to the lag at most three times, and
    # once more after each VACUUM (its own reason) that comes while the lag presses.
    log = d.log_text()
    assert log.count("throttled: replication_lag") <= 3 + log.count("throttled: vacuum"), log


def test_time_lag_on_the_daemons_clock_holds_while_replay_is_paused(cluster, standby, db, daemon_factory):
    """replay_lag freezes while replay is paused; our own clock does not."""
    make_users(db, 100000)
    pgharness.wait_caught_up(cluster, standby.name)
    job_id = submit(db, "users", fixed=500, sleep_ms=20)
    d = daemon_factory(throttle={"max_replication_lag_bytes": 1 << 40, "max_replication_lag_ms": 1500,
                                 "sample_interval_ms": 100})
    d.start()
    wait_batches(db, job_id, 2)
    standby.sql("SELECT pg_wal_replay_pause()")
    try:
        t0 = time.monotonic()
        wait_job(db, job_id, lambda r: r["throttled_reason"] == "replication_lag", timeout=15,
                 what="held on time lag")
        assert time.monotonic() - t0 >= 0.6  # not before half the limit could be reached
        n = job(db, job_id)["batches"]
        time.sleep(2.5)  # the primary is idle now; the lag keeps growing on our clock
        assert job(db, job_id)["batches"] <= n + 1
    finally:
        standby.sql("SELECT pg_wal_replay_resume()")
    wait_state(db, job_id, "done", timeout=120, daemon=d)
    assert_exact(db, "users", job_id, same=("state", "status"))


def test_a_named_standby_that_is_missing_holds_the_job(cluster, standby, db, daemon_factory):
    make_users(db, 2000)
    job_id = submit(db, "users")
    d = daemon_factory(throttle={"standbys": ["no-such-standby"], "sample_interval_ms": 100})
    d.start()
    wait_job(db, job_id, lambda r: r["throttled_reason"] == "standby_missing", timeout=15,
             what="standby_missing")
    assert job(db, job_id)["batches"] <= 1
    assert "standby no-such-standby is not connected" in d.log_text()
    # Naming the real standby (a reload) lets it run.
    path = d.write_config(throttle={"standbys": [standby.name]})
    assert path.exists()
    d.signal(signal.SIGHUP)
    wait_state(db, job_id, "done", timeout=60, daemon=d)
    assert_exact(db, "users", job_id, same=("state", "status"))


def test_a_row_lock_in_range_waits_at_most_lock_timeout_and_retries_smaller(cluster, standby, db, daemon_factory):
    make_users(db, 20000)
    job_id = submit(db, "users", batch_size=1000, lock_timeout_ms=200)
    locker = psycopg.connect(db.conninfo)
    locker.execute("SELECT * FROM users WHERE id = 5000 FOR UPDATE")  # held until commit
    d = daemon_factory(throttle={"sample_interval_ms": 100})
    d.start()
    d.wait_for_log(r"55P03", timeout=20)
    # Watch how long the job's backend waits on the lock each time.
    longest = 0.0
    t_end = time.monotonic() + 2.0
    while time.monotonic() < t_end:
        w = db.one("""SELECT coalesce(max(extract(epoch FROM clock_timestamp() - l.waitstart)), 0)
                      FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                      WHERE NOT l.granted AND a.application_name LIKE 'backfilld job%%'""")
        longest = max(longest, float(w))
        time.sleep(0.01)
    assert job(db, job_id)["state"] == "running"
    locker.commit()
    locker.close()
    wait_state(db, job_id, "done", timeout=60, daemon=d)
    assert longest <= 0.2 + 0.15, longest  # never much more than lock_timeout_ms
    assert_exact(db, "users", job_id, same=("state", "status"), rows=20000)
    sizes = db.one("SELECT min(batch_size) FROM backfill.batches WHERE job_id = %s", [job_id])
    assert sizes < 1000  # it retried smaller
    assert db.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s AND throttled_reason = 'lock_timeout'",
                  [job_id]) >= 1


@pytest.mark.versions
def test_a_long_batch_blocking_the_application_is_cancelled(cluster, standby, db, daemon_factory):
    make_users(db, 3000)
    # 8 ms a row: a batch of 400 takes over 3 s.
    job_id = submit(db, "users", set_sql="state = status || left(pg_sleep(0.008)::text, 0), n = n + 1",
                    where_sql=None, batch_size=400, statement_timeout_ms=120000)
    d = daemon_factory(throttle={"max_blocked_ms": 300, "sample_interval_ms": 100})
    d.start()
    wait_state(db, job_id, "running", daemon=d)
    time.sleep(0.6)  # the first rows of the first batch are updated and locked by now
    with psycopg.connect(db.conninfo, autocommit=True) as app:
        t0 = time.monotonic()
        app.execute("UPDATE users SET status = 'app', state = 'app' WHERE id = 2")
        waited = time.monotonic() - t0
    assert waited < 0.3 + 0.1 + 0.6, waited  # max_blocked_ms + a sample interval + slack (vs > 3 s)
    d.wait_for_log(r"waited \d+ ms on the batch's locks: cancelling it")
    wait_state(db, job_id, "done", timeout=120, daemon=d)
    # n = 1: the cancelled batch rolled back
    assert_exact(db, "users", job_id, once="n", same=("state", "status"), rows=3000)
    assert db.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s AND throttled_reason = 'blocked_sessions'",
                  [job_id]) >= 1
    assert db.one("SELECT min(batch_size) FROM backfill.batches WHERE job_id = %s", [job_id]) <= 200
    assert sampler_trouble(d) == []


def test_batch_duration_settles_near_target_under_pgbench_load(cluster, standby, db, daemon_factory, tmp_path):
    """The controller tracks target_batch_ms while an application reads and writes the table.
    The load's writes are new rows: an application session that waits on the batch's row locks
    halves the next batch by design (test_sessions_waiting_on_a_batch_halve_the_next_one), and
    with updates of random rows that happens often enough to keep batches well under any target."""
    rows = 1000000
    make_users(db, rows)
    db.sql("CREATE SEQUENCE app_ids START 10000001")
    script = tmp_path / "app.sql"
    script.write_text(f"\\set id random(1, {rows})\n"
                      "SELECT status, n FROM users WHERE id = :id;\n"
                      "INSERT INTO users (id, status) VALUES (nextval('app_ids'), 'app');\n")
    target = 200
    job_id = submit(db, "users", set_sql="state = status", where_sql=None, batch_size=1000,
                    target_batch_ms=target, max_batch_size=1000000)
    pgbench = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    load = subprocess.Popen([pgbench, "-n", "-c", "2", "-j", "1", "-T", "120", "-R", "300", "-f", str(script),
                             "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", db.name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        d = daemon_factory(throttle={"sample_interval_ms": 100})
        d.start()
        wait_state(db, job_id, "done", timeout=180, daemon=d)
        assert load.poll() is None, load.stderr.read()  # the load ran all along
    finally:
        load.terminate()
        load.wait(10)
    assert db.one("SELECT count(*) FROM users WHERE id > 10000000") > 100  # it wrote to the table
    assert db.one("SELECT count(*) FROM users WHERE state IS DISTINCT FROM status AND id <= %s", [rows]) == 0
    batches = db.sql("SELECT batch, batch_size, duration_ms, throttled_reason FROM backfill.batches"
                     " WHERE job_id = %s ORDER BY batch", [job_id])
    durations = [r[2] for r in batches[-10:-1]]  # the last nine, without the short last one
    assert len(durations) == 9, batches
    med = statistics.median(durations)
    assert 0.5 * target <= med <= 2.0 * target, batches
    sizes = [r[1] for r in batches]
    assert max(sizes) > 10 * sizes[0], batches  # it grew from its start
    assert all(b <= a * 1.5 + 1 for a, b in zip(sizes, sizes[1:])), batches  # at most x1.5 a step


def test_sessions_waiting_on_a_batch_halve_the_next_one(cluster, standby, db, daemon_factory):
    """Waits below max_blocked_ms do not cancel the batch, but they halve the next one (the rate
    alone would have grown it) and the job sleeps about as long as the batch took before the next."""
    make_users(db, 4000)
    d = daemon_factory(throttle={"sample_interval_ms": 100})
    job_id, _ = app_waits_on_a_slow_first_batch(db, d)
    wait_state(db, job_id, "done", timeout=120, daemon=d)
    sizes = db.sql("SELECT batch, batch_size, throttled_reason, blocked_sessions FROM backfill.batches"
                   " WHERE job_id = %s ORDER BY batch", [job_id])
    assert sizes[0][1] == 400
    # Halved from what the rate chose (which, at ~0.3 rows/ms for a 2 s target, is more than 400).
    assert sizes[1][1] < 400 and sizes[1][2] == "blocked_sessions" and sizes[1][3] >= 1, sizes
    assert max(r[1] for r in sizes[2:]) > sizes[1][1]  # and it grows back once nobody waits
    # A duty cycle after contention: the job slept at least about as long as the batch took.
    (d1, s2), = db.sql("SELECT (SELECT duration_ms FROM backfill.batches WHERE job_id = %s AND batch = 1),"
                       " (SELECT sleep_ms FROM backfill.batches WHERE job_id = %s AND batch = 2)", [job_id, job_id])
    assert s2 >= 0.8 * d1, (d1, s2)
    assert "waited" not in d.log_text() or "cancelling it" not in d.log_text()  # no cancel
    assert_exact(db, "users", job_id, once="n", rows=4000)
