"""Run windows and operator holds (issue 17, part 4): run_window holds a job outside its hours,
hold_when_sql holds it while an expression of the submitter's is true, both validated at INSERT,
both live (a user's change applies while the job runs), both in the job row, the log and the
batches that follow."""
import datetime as dt
import time
import urllib.request

import psycopg
import pytest

import pgharness
from bfhelp import cpu_seconds, differing, job, make_users, submit, wait_batches, wait_state

FAST = {"sample_interval_ms": 100}


def utc_window(db, start_h, end_h):
    """'HH:MM-HH:MM UTC' from now + START_H hours to now + END_H hours (minute precision)."""
    now = db.one("SELECT now() AT TIME ZONE 'UTC'")
    fmt = lambda h: (now + dt.timedelta(hours=h)).strftime("%H:%M")  # noqa: E731
    return f"{fmt(start_h)}-{fmt(end_h)} UTC"


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def refused(db, sql, params=()):
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        db.sql(sql, params)
    return str(err.value)


def wait_reason(db, job_id, reason, timeout=20):
    pgharness.wait_until(lambda: job(db, job_id)["throttled_reason"] == reason, timeout=timeout,
                         what=f"throttled_reason {reason}")


def assert_stands_still(db, job_id, seconds=1.5):
    before = job(db, job_id)
    time.sleep(seconds)
    after = job(db, job_id)
    assert (after["rows_scanned"], after["batches"]) == (before["rows_scanned"], before["batches"]), after
    assert after["state"] == "running", after


# -- validation at INSERT ------------------------------------------------------------------------


def test_windows_and_holds_are_validated_at_insert(db):
    make_users(db, 10)
    db.sql("CREATE TABLE canary (v int)")
    bad_windows = {
        "nonsense": "is not HH:MM-HH:MM with an optional time zone",
        "22:00-06:00 Mars/Olympus": 'unknown time zone "Mars/Olympus"',
        "25:00-06:00": "has a time out of range",
        "10:00-10:61": "has a time out of range",
        "10:00-10:00": "is empty or the whole day",
        "": "is not HH:MM-HH:MM",
    }
    for window, message in bad_windows.items():
        assert message in refused(db, "INSERT INTO backfill.jobs (target, set_sql, run_window)"
                                      " VALUES ('users', 'state = status', %s)", [window]), window
    bad_holds = {
        "1": "is not a boolean expression",
        "nosuchcolumn": 'column "nosuchcolumn" does not exist',
        "true) ; DROP TABLE canary; SELECT (true": "must be one expression, not statements",
        "   ": "hold_when_sql is empty",
    }
    for expr, message in bad_holds.items():
        assert message in refused(db, "INSERT INTO backfill.jobs (target, set_sql, hold_when_sql)"
                                      " VALUES ('users', 'state = status', %s)", [expr]), expr
    assert db.one("SELECT to_regclass('canary') IS NOT NULL"), "the INSERT ran a statement of hold_when_sql"
    # Good ones, which the progress view shows; the expression's names resolve on the role's
    # search_path, and a comment at its end does not swallow what follows it.
    jid = submit(db, "users", run_window="22:00-06:00 Europe/Paris",
                 hold_when_sql="EXISTS (SELECT FROM canary) -- a comment")
    assert db.sql("SELECT run_window, hold_when_sql FROM backfill.progress WHERE id = %s", [jid]) == \
        [("22:00-06:00 Europe/Paris", "EXISTS (SELECT FROM canary) -- a comment")]
    # The window may change at any time; the expression only while the job does not run.
    db.sql("UPDATE backfill.jobs SET run_window = '09:00-17:00' WHERE id = %s", [jid])
    assert "is not HH:MM-HH:MM" in refused(db, "UPDATE backfill.jobs SET run_window = 'x' WHERE id = %s", [jid])


def test_window_arithmetic_on_the_server(db):
    """Crossing midnight, time zones, daylight saving time, and the time laid onto windows."""
    one = lambda sql, *p: db.one(sql, list(p))  # noqa: E731
    w = "22:00-06:00 UTC"
    assert one("SELECT backfill._in_window(%s, '2026-12-06 23:00+00')", w) is True
    assert one("SELECT backfill._in_window(%s, '2026-12-07 05:59+00')", w) is True
    assert one("SELECT backfill._in_window(%s, '2026-12-07 06:00+00')", w) is False
    assert one("SELECT backfill._in_window(%s, '2026-12-06 21:59+00')", w) is False
    # 09:00-17:00 in New York is 14:00-22:00 UTC in winter.
    ny = "09:00-17:00 America/New_York"
    assert one("SELECT backfill._in_window(%s, '2026-12-06 14:30+00')", ny) is True
    assert one("SELECT backfill._in_window(%s, '2026-12-06 13:30+00')", ny) is False
    # Paris springs forward on 2026-03-29: 01:00-05:00 local is 3 hours long that night.
    assert one("SELECT backfill._window_seconds('01:00-05:00 Europe/Paris', '2026-03-28 12:00+00',"
               " '2026-03-29 12:00+00')") == 3 * 3600
    assert one("SELECT backfill._window_seconds(%s, '2026-12-06 00:00+00', '2026-12-08 00:00+00')", w) == 16 * 3600
    # Ten hours of work from noon in an 8-hour night window: 8 h that night, 2 h the next one.
    assert one("SELECT backfill._window_eta(%s, 36000, '2026-12-06 12:00+00')", w) == dt.timedelta(hours=36)
    assert one("SELECT backfill._window_eta(%s, 60, '2026-12-06 23:00+00')", w) == dt.timedelta(minutes=1)


def test_progress_eta_counts_only_time_inside_the_window(db):
    """1,000 s of work left at the rate measured inside a window that closes within minutes: the
    eta spills into the next day's window, about 23 hours on."""
    make_users(db, 100)
    jid = submit(db, "users", run_window=utc_window(db, -1, 0.05))
    t0 = db.one("SELECT now() - interval '25 seconds'")
    with db.connect(daemon=True) as dconn:
        for i in range(20):
            dconn.execute("INSERT INTO backfill.batches (job_id, batch, rows_scanned, rows_changed,"
                          " duration_ms, sleep_ms, finished_at) VALUES (%s, %s, 10, 10, 1000, 0, %s)",
                          [jid, i + 1, t0 + dt.timedelta(seconds=5 + i)])
        dconn.execute("UPDATE backfill.jobs SET rows_estimate = 10200, rows_scanned = 200, state = 'running',"
                      " owner = 'a' WHERE id = %s", [jid])
    eta = db.one("SELECT eta FROM backfill.progress WHERE id = %s", [jid])
    assert dt.timedelta(hours=22, minutes=50) < eta < dt.timedelta(hours=23, minutes=30), eta
    # The same job without a window: 1,000 s.
    with db.connect(daemon=True) as dconn:
        dconn.execute("UPDATE backfill.jobs SET run_window = NULL WHERE id = %s", [jid])
    eta = db.one("SELECT eta FROM backfill.progress WHERE id = %s", [jid])
    assert dt.timedelta(seconds=950) < eta < dt.timedelta(seconds=1050), eta


# -- the daemon ------------------------------------------------------------------------------------


def test_a_job_outside_its_window_holds_until_its_window_opens(db, daemon_factory):
    """Submitted outside its window: it holds (job row, log, metrics) and walks nothing; a user
    moves the window over now and it runs at once; closing it mid-walk holds it again, removing it
    lets it finish, every row exactly once. The batch after each hold records run_window."""
    make_users(db, 6000)
    jid = submit(db, "users", fixed=200, sleep_ms=50, run_window=utc_window(db, 2, 3))
    port = pgharness.free_port()
    d = daemon_factory(throttle=FAST, http={"listen": f"127.0.0.1:{port}"})
    d.start()
    wait_reason(db, jid, "run_window")
    d.wait_for_log(r"held: run_window \(outside its run window \d\d:\d\d-\d\d:\d\d UTC\)")
    assert_stands_still(db, jid)
    assert job(db, jid)["rows_scanned"] == 0
    pgharness.wait_until(
        lambda: 'reason="run_window"} 1' in metrics(port), timeout=10,
        what="the metrics to show run_window")
    db.sql("UPDATE backfill.jobs SET run_window = %s WHERE id = %s", [utc_window(db, -1, 1), jid])
    wait_batches(db, jid, 5)
    d.wait_for_log(r"its run window is open: going on")
    assert db.one("SELECT throttled_reason FROM backfill.batches WHERE job_id = %s AND batch = 1", [jid]) == \
        "run_window"
    db.sql("UPDATE backfill.jobs SET run_window = %s WHERE id = %s", [utc_window(db, 2, 3), jid])
    wait_reason(db, jid, "run_window")
    assert_stands_still(db, jid)
    assert job(db, jid)["rows_scanned"] < 6000
    db.sql("UPDATE backfill.jobs SET run_window = NULL WHERE id = %s", [jid])
    wait_state(db, jid, "done", daemon=d)
    assert differing(db) == 0
    assert db.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s AND throttled_reason = 'run_window'",
                  [jid]) == 2


def test_a_job_held_by_its_window_costs_its_server_next_to_nothing(db, daemon_factory):
    """While held, the job's session asks about its window at every sample interval (here ten
    times a second): each ask must be cheap. (Checking the zone through pg_timezone_names, which
    reads the whole time zone directory, cost ~20 ms of CPU an ask: a fifth of a CPU held, in
    bursts the application's latency felt.) The zone is checked where the window is accepted."""
    make_users(db, 1000)
    jid = submit(db, "users", fixed=200, run_window=utc_window(db, 2, 3).replace("UTC", "Europe/Paris"))
    d = daemon_factory(throttle=FAST)
    d.start()
    wait_reason(db, jid, "run_window")
    pid = db.one("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [f"backfilld job {jid}"])
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(4)
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
    assert job(db, jid)["throttled_reason"] == "run_window"
    assert d.log_text().count("held: run_window") == 1
    assert cpu < 0.05 * wall, f"the held job's session used {cpu:.2f} s of CPU in {wall:.1f} s"


def test_hold_when_sql_holds_while_true(db, daemon_factory):
    """An application's flag: the job walks while it is false, holds (reason hold_when_sql) while
    a user sets it true, and finishes once it is false again."""
    make_users(db, 6000)
    db.sql("CREATE TABLE flags (paused boolean NOT NULL)")
    db.sql("INSERT INTO flags VALUES (false)")
    jid = submit(db, "users", fixed=200, sleep_ms=50, hold_when_sql="(SELECT paused FROM flags)")
    d = daemon_factory(throttle=FAST)
    d.start()
    wait_batches(db, jid, 3)
    db.sql("UPDATE flags SET paused = true")
    wait_reason(db, jid, "hold_when_sql")
    d.wait_for_log(r"held: hold_when_sql \(its hold_when_sql is true\)")
    assert_stands_still(db, jid)
    db.sql("UPDATE flags SET paused = false")
    wait_state(db, jid, "done", daemon=d)
    assert differing(db) == 0
    assert db.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s AND throttled_reason = 'hold_when_sql'",
                  [jid]) == 1
    assert job(db, jid)["last_error"] is None


def test_a_failing_hold_when_sql_holds_the_job_with_its_error(db, daemon_factory):
    """The expression's table is dropped under a running job: the job holds, last_error says why,
    the job does not fail; the table is back and the job finishes with last_error cleared. An
    expression that would write fails too (a read-only transaction), writing nothing."""
    make_users(db, 4000)
    db.sql("CREATE TABLE flags (paused boolean NOT NULL)")
    db.sql("INSERT INTO flags VALUES (false)")
    db.sql("CREATE TABLE counter (n int)")
    db.sql("INSERT INTO counter VALUES (0)")
    jid = submit(db, "users", fixed=200, sleep_ms=50, hold_when_sql="(SELECT paused FROM flags)")
    d = daemon_factory(throttle=FAST)
    d.start()
    wait_batches(db, jid, 3)
    db.sql("DROP TABLE flags")
    wait_reason(db, jid, "hold_when_sql")
    pgharness.wait_until(lambda: job(db, jid)["last_error"] is not None, timeout=10, what="last_error")
    row = job(db, jid)
    assert 'relation "flags" does not exist' in row["last_error"] and "42P01" in row["last_error"], row
    assert_stands_still(db, jid)
    db.sql("CREATE TABLE flags (paused boolean NOT NULL)")
    db.sql("INSERT INTO flags VALUES (false)")
    wait_state(db, jid, "done", daemon=d)
    assert differing(db) == 0
    assert job(db, jid)["last_error"] is None
    # One that writes: refused by the read-only transaction, nothing written, the job held.
    db.sql("UPDATE users SET state = NULL")
    db.sql("CREATE FUNCTION bump() RETURNS boolean LANGUAGE sql VOLATILE"
           " AS 'UPDATE counter SET n = n + 1 RETURNING false'")
    jid2 = submit(db, "users", fixed=200, hold_when_sql="bump()")
    wait_reason(db, jid2, "hold_when_sql")
    pgharness.wait_until(lambda: job(db, jid2)["last_error"] is not None, timeout=10, what="last_error")
    assert "read-only transaction" in job(db, jid2)["last_error"]
    assert job(db, jid2)["rows_scanned"] == 0 and db.one("SELECT n FROM counter") == 0


def test_a_hold_error_is_cleared_although_the_job_row_is_locked_when_the_hold_ends(db, daemon_factory):
    """The expression works again while another session keeps the job's row locked (as a batch's
    checkpoint does for a moment, or a user's UPDATE): the clear of last_error meets the lock and
    writes nothing. The daemon must write it again, before a batch, and not finish the job with
    the stale error (it did: CI saw a job done with last_error still saying the table was gone)."""
    make_users(db, 3000)
    db.sql("CREATE TABLE flags (paused boolean NOT NULL)")
    db.sql("INSERT INTO flags VALUES (false)")
    jid = submit(db, "users", fixed=300, sleep_ms=50, hold_when_sql="(SELECT paused FROM flags)")
    d = daemon_factory(throttle=FAST, log={"level": "debug"})
    d.start()
    wait_batches(db, jid, 2)
    db.sql("DROP TABLE flags")
    wait_reason(db, jid, "hold_when_sql")
    pgharness.wait_until(lambda: job(db, jid)["last_error"] is not None, timeout=10, what="last_error")
    with db.connect(autocommit=False) as locker:
        locker.execute("SELECT 1 FROM backfill.jobs WHERE id = %s FOR UPDATE", [jid])
        mark = d.log_mark()
        db.sql("CREATE TABLE flags (paused boolean NOT NULL)")
        db.sql("INSERT INTO flags VALUES (false)")
        # The clear has been answered when the daemon goes on (it waits for it); a second
        # more for a daemon that sends it beside the batch instead.
        d.wait_for_log(r"its hold_when_sql is no longer true: going on", since=mark)
        time.sleep(1.0)
        locker.rollback()
    wait_state(db, jid, "done", daemon=d)
    row = job(db, jid)
    assert row["last_error"] is None, row
    assert differing(db) == 0


def test_hold_when_sql_is_evaluated_as_the_submitter(db, make_role, role_conn, daemon_factory):
    """A submitter cannot hold its job on what it may not read: refused at INSERT; granted, then
    revoked under the running job, the job holds with the permission error (its own session, its
    own rights) instead of reading it with the daemon's."""
    make_users(db, 3000)
    db.sql("CREATE TABLE secret_flags (paused boolean NOT NULL)")
    db.sql("INSERT INTO secret_flags VALUES (false)")
    alice = make_role("backfill_submit")
    db.sql(f'GRANT SELECT, UPDATE ON users TO "{alice}"')
    conn = role_conn(alice)
    with pytest.raises(psycopg.errors.CheckViolation) as err:
        submit(db, "users", conn=conn, hold_when_sql="(SELECT paused FROM secret_flags)")
    assert f"cannot be evaluated as role {alice}: permission denied for table secret_flags" in str(err.value)
    db.sql(f'GRANT SELECT ON secret_flags TO "{alice}"')
    jid = submit(db, "users", conn=conn, fixed=100, sleep_ms=50, hold_when_sql="(SELECT paused FROM secret_flags)")
    d = daemon_factory(throttle=FAST)
    d.start()
    wait_batches(db, jid, 3)
    db.sql(f'REVOKE SELECT ON secret_flags FROM "{alice}"')
    wait_reason(db, jid, "hold_when_sql")
    pgharness.wait_until(lambda: job(db, jid)["last_error"] is not None, timeout=10, what="last_error")
    assert "permission denied for table secret_flags" in job(db, jid)["last_error"]
    assert_stands_still(db, jid)


def test_a_submitter_moves_its_own_jobs_window_and_no_one_elses(db, make_role, role_conn):
    """run_window is the one column besides state a submitter may update, and only on its own jobs
    (row-level security); hold_when_sql, which runs as the job's role, it may not."""
    make_users(db, 10)
    alice, bob = make_role("backfill_submit"), make_role("backfill_submit")
    for role in (alice, bob):
        db.sql(f'GRANT SELECT, UPDATE ON users TO "{role}"')
    a, b = role_conn(alice), role_conn(bob)
    jid = submit(db, "users", conn=a, run_window="22:00-06:00")
    a.execute("UPDATE backfill.jobs SET run_window = '01:00-02:00 Asia/Tokyo' WHERE id = %s", [jid])
    assert job(db, jid)["run_window"] == "01:00-02:00 Asia/Tokyo"
    assert b.execute("UPDATE backfill.jobs SET run_window = NULL WHERE id = %s", [jid]).rowcount == 0
    assert job(db, jid)["run_window"] == "01:00-02:00 Asia/Tokyo"
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        a.execute("UPDATE backfill.jobs SET hold_when_sql = 'false' WHERE id = %s", [jid])
