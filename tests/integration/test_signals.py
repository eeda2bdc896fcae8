"""Signals (contract section 2), sent for real to the real binary."""

import signal
import time

from bfhelp import assert_exact, differing, job, make_users, submit, wait_batches, wait_job, wait_state


def test_sigusr1_holds_within_one_batch_and_sigusr2_resumes(db, daemon_factory):
    make_users(db, 40000)
    job_id = submit(db, "users", fixed=200, sleep_ms=30)
    d = daemon_factory(daemon={"lease_ms": 1500})
    d.start()
    wait_batches(db, job_id, 3)
    mark = d.log_mark()
    d.signal(signal.SIGUSR1)
    d.wait_for_log(r"received User defined signal 1", since=mark)
    before = job(db, job_id)["batches"]
    wait_job(db, job_id, lambda r: r["throttled_reason"] == "paused_by_signal", timeout=10)
    time.sleep(2.0)  # longer than the lease: it must be kept renewed
    row = job(db, job_id)
    assert row["batches"] <= before + 1  # at most the batch in flight committed
    assert row["state"] == "running" and row["owner"] is not None
    assert db.one("SELECT lease_until > now() FROM backfill.jobs WHERE id = %s", [job_id])
    held = row["batches"]
    time.sleep(0.5)
    assert job(db, job_id)["batches"] == held
    d.signal(signal.SIGUSR1)  # repeated: harmless
    mark = d.log_mark()
    d.signal(signal.SIGUSR2)
    d.wait_for_log(r"resumed", since=mark)
    wait_batches(db, job_id, held + 2)
    assert job(db, job_id)["throttled_reason"] is None
    wait_state(db, job_id, "done", timeout=60, daemon=d)
    assert_exact(db, "users", job_id, same=("state", "status"))
    assert d.running()


def test_sigusr1_stops_claiming_new_jobs(db, daemon_factory):
    make_users(db, 100)
    d = daemon_factory()
    d.start()
    d.wait_for_log(r"listening on backfill_jobs")
    d.signal(signal.SIGUSR1)
    d.wait_for_log(r"paused:")
    job_id = submit(db, "users")
    time.sleep(1.5)
    assert job(db, job_id)["state"] == "pending"
    d.signal(signal.SIGUSR2)
    wait_state(db, job_id, "done", daemon=d)
    assert_exact(db, "users", job_id, same=("state", "status"))


def test_sigterm_commits_the_batch_in_flight_and_releases_the_lease(db, daemon_factory):
    make_users(db, 40000)
    job_id = submit(db, "users", fixed=200, sleep_ms=30)
    d = daemon_factory()
    d.start()
    wait_batches(db, job_id, 3)
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(10) == 0
    assert time.monotonic() - t0 < 5
    row = job(db, job_id)
    assert row["state"] == "pending" and row["owner"] is None and row["lease_until"] is None
    done = row["rows_scanned"]
    assert 0 < done < 40000
    # Everything up to the checkpoint is changed, nothing after it.
    assert db.one("SELECT count(*) FROM users WHERE id <= %s AND state IS DISTINCT FROM status",
                  [int(row["last_key"][0])]) == 0
    assert db.one("SELECT count(*) FROM users WHERE id > %s AND state IS NOT NULL", [int(row["last_key"][0])]) == 0
    log = d.log_text()
    assert "received Terminated" in log and "every lease given back" in log


def test_sigterm_cancels_a_long_batch_after_the_grace(db, daemon_factory):
    make_users(db, 2000)
    # Each row sleeps 5 ms: a batch of 1000 takes about 5 s, longer than the 1 s grace.
    job_id = submit(db, "users", set_sql="state = status || left(pg_sleep(0.005)::text, 0)",
                    fixed=1000, statement_timeout_ms=60000)
    d = daemon_factory(daemon={"shutdown_grace_ms": 1000})
    d.start()
    wait_state(db, job_id, "running", daemon=d)
    time.sleep(0.5)
    assert job(db, job_id)["batches"] == 0
    t0 = time.monotonic()
    d.signal(signal.SIGINT)
    assert d.wait(15) == 0
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 4, elapsed
    row = job(db, job_id)
    assert row["state"] == "pending" and row["owner"] is None
    assert row["batches"] == 0 and row["rows_scanned"] == 0
    assert differing(db) == 2000  # the cancelled batch rolled back
    assert "cancelling the batch" in d.log_text()


def test_second_sigterm_exits_at_once(db, daemon_factory):
    make_users(db, 2000)
    submit(db, "users", set_sql="state = status || left(pg_sleep(0.005)::text, 0)", batch_size=1000)
    d = daemon_factory(daemon={"shutdown_grace_ms": 30000})
    d.start()
    d.wait_for_log(r"walking")
    time.sleep(0.3)
    d.signal(signal.SIGTERM)
    d.wait_for_log(r"stop requested")
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    code = d.wait(5)
    assert time.monotonic() - t0 < 2
    assert code == 1
    assert "second stop signal" in d.log_text()


def test_sighup_applies_a_good_file_and_keeps_running_on_a_broken_one(db, daemon_factory):
    make_users(db, 60000)
    job_id = submit(db, "users", sleep_ms=20)
    d = daemon_factory(throttle={"batch_size": 100, "min_batch_size": 100, "max_batch_size": 100})
    d.start()
    wait_batches(db, job_id, 3)
    path = d.write_config(throttle={"batch_size": 300, "min_batch_size": 300, "max_batch_size": 300})
    mark = d.log_mark()
    d.signal(signal.SIGHUP)
    d.wait_for_log(r"configuration reloaded", since=mark)
    n = job(db, job_id)["batches"]
    wait_batches(db, job_id, n + 3)
    assert db.one("SELECT max(batch_size) FROM backfill.batches WHERE job_id = %s", [job_id]) == 300

    text = path.read_text()
    path.write_text(text + "throttle_typo: { x = 1; };\n")
    bad_line = len(text.splitlines()) + 1
    mark = d.log_mark()
    d.signal(signal.SIGHUP)
    d.wait_for_log(rf"reload failed, keeping the running configuration: {path}:{bad_line}: throttle_typo", since=mark)
    n = job(db, job_id)["batches"]
    wait_batches(db, job_id, n + 3)
    assert d.running()
    last = db.sql("SELECT batch_size FROM backfill.batches WHERE job_id = %s ORDER BY batch DESC LIMIT 2", [job_id])
    assert [r[0] for r in last] == [300, 300]

    # A change that needs a restart is said so and kept as it was.
    path.write_text(text.replace('schema = "backfill"', 'schema = "elsewhere"'))
    mark = d.log_mark()
    d.signal(signal.SIGHUP)
    d.wait_for_log(r"database.schema changed, but it only takes effect at restart", since=mark)
    wait_state(db, job_id, "done", timeout=120, daemon=d)
    assert_exact(db, "users", job_id, same=("state", "status"))
