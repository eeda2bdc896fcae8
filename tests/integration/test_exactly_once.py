"""Exactly once: the checkpoint commits with its batch, so SIGKILL at any moment neither loses
nor repeats a row. The job's set_sql is n = n + 1: any repeat shows as n = 2, any loss as n = 0."""

import random

import pytest

from bfhelp import assert_exact, job, kill_loop, make_users, run_to_idle, submit, wait_state


@pytest.mark.versions
def test_sigkill_many_times_same_instance_name(db, daemon_factory):
    """A restarted instance with the same name takes its own jobs back at once."""
    make_users(db, 100000)
    job_id = submit(db, "users", set_sql="n = n + 1", where_sql=None, fixed=250, sleep_ms=10)
    d = daemon_factory(daemon={"name": "fixed-instance", "lease_ms": 60000})
    rnd = random.Random(20261122)
    progress = kill_loop(db, d, job_id, kills=15, rnd=rnd, lo=0.0, hi=0.3)
    # The kills really landed mid-job: progress was made between them and the job was not done.
    assert len(progress) == 15 and len(set(progress)) >= 8, progress
    assert job(db, job_id)["state"] == "running"
    assert run_to_idle(d) == 0
    assert_exact(db, "users", job_id, once="n", rows=100000, changed=100000)  # n = 1 on every row


@pytest.mark.versions
def test_sigkill_then_takeover_after_the_lease_expires(db, daemon_factory):
    """Instances named host:pid: the next one waits for the dead one's lease, then takes over."""
    make_users(db, 20000)
    job_id = submit(db, "users", set_sql="n = n + 1", where_sql=None, fixed=200, sleep_ms=50)
    d = daemon_factory(daemon={"lease_ms": 1000, "poll_interval_ms": 200})
    rnd = random.Random(7)
    progress = kill_loop(db, d, job_id, kills=4, rnd=rnd, lo=0.0, hi=0.5)
    assert len(set(progress)) >= 3, progress
    d.start()
    wait_state(db, job_id, "done", timeout=60, daemon=d)
    assert_exact(db, "users", job_id, once="n")  # done: released, owner NULL
