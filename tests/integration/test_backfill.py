"""Update jobs end to end against a real server: results, keys, claiming, steering, failures."""

import random
import threading
import time

import psycopg
import pytest

import pgharness
from bfhelp import (assert_exact, assert_job, daemon_sessions, differing, job, make_users, run_to_idle, submit,
                    wait_batches, wait_state)


def test_rename_backfill_exact_under_concurrent_dual_writes(db, daemon_factory):
    """The application keeps writing (dual-writes keep state = status on its own rows) while the
    job walks: at the end no row differs, and the counters add up."""
    make_users(db, 60000)
    job_id = submit(db, "users", fixed=1000, sleep_ms=5)
    stop = threading.Event()
    writes = {"updates": 0, "inserts": 0}

    def application():
        rnd = random.Random(7)
        with psycopg.connect(db.conninfo, autocommit=True) as conn:
            next_id = 10_000_000
            while not stop.is_set():
                k = rnd.randint(1, 60000)
                new = rnd.choice(["active", "idle", "banned", "deleted"])
                conn.execute("UPDATE users SET status = %s, state = %s WHERE id = %s", [new, new, k])
                writes["updates"] += 1
                if rnd.random() < 0.2:
                    next_id += 1
                    conn.execute("INSERT INTO users (id, status, state) VALUES (%s, 'new', 'new')", [next_id])
                    writes["inserts"] += 1

    app = threading.Thread(target=application)
    d = daemon_factory()
    d.start()
    app.start()
    try:
        row = wait_state(db, job_id, "done", timeout=120, daemon=d)
    finally:
        stop.set()
        app.join()
    assert writes["updates"] > 100, writes  # the application really wrote during the walk
    row = assert_exact(db, "users", job_id, same=("state", "status"), daemon=d)  # let go: owner, lease, finished_at
    assert row["rows_scanned"] >= 60000
    assert row["batches"] == db.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s", [job_id])
    # No batch walked more keys than its size; checkpoints are contiguous and increasing.
    assert db.one("SELECT max(rows_scanned) FROM backfill.batches WHERE job_id = %s", [job_id]) <= 1000
    assert db.one("""SELECT count(*) FROM (SELECT last_key[1]::bigint AS k,
                         lag(last_key[1]::bigint) OVER (ORDER BY batch) AS prev
                     FROM backfill.batches WHERE job_id = %s) s WHERE k <= prev""", [job_id]) == 0


def test_sparse_where_scans_at_most_batch_size(db, daemon_factory):
    make_users(db, 20000)
    db.sql("UPDATE users SET state = status WHERE id % 100 <> 0")  # only 1% left to change
    job_id = submit(db, "users", fixed=500)
    assert run_to_idle(daemon_factory()) == 0
    assert_exact(db, "users", job_id, same=("state", "status"), rows=20000, changed=200)
    sizes = db.sql("SELECT rows_scanned FROM backfill.batches WHERE job_id = %s ORDER BY batch", [job_id])
    assert max(s[0] for s in sizes) == 500 and len(sizes) in (40, 41)


def test_composite_key_walk(db, daemon_factory):
    db.sql("CREATE TABLE events (tenant int NOT NULL, seq int NOT NULL, v int NOT NULL DEFAULT 0,"
           " copy int, PRIMARY KEY (tenant, seq))")
    db.sql("INSERT INTO events (tenant, seq, v) SELECT t, s, t * 1000 + s"
           " FROM generate_series(1, 37) t, generate_series(1, 271) s")
    job_id = submit(db, "events", set_sql="copy = v", where_sql=None, batch_size=333)
    assert run_to_idle(daemon_factory()) == 0
    assert_exact(db, "events", job_id, same=("copy", "v"), rows=37 * 271, changed=37 * 271,
                 key_columns=["tenant", "seq"], last_key=["37", "271"])


TRICKY = ["", " ", "a,b", "{x}", 'say "hi"', "back\\slash", "NULL", "ünïcødé", "tab\tin", "z" * 300,
          "line\nbreak", "'quote'"]


def test_text_key_with_tricky_values(db, daemon_factory):
    """Text keys round-trip through the text[] checkpoint whatever they contain."""
    db.sql("CREATE TABLE tags (name text PRIMARY KEY, label text, copy text)")
    values = TRICKY + [f"k{i:05d}" for i in range(3000)]
    with db.connect() as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO tags (name, label) VALUES (%s, %s)", [(v, v + "!") for v in values])
    job_id = submit(db, "tags", set_sql="copy = label", where_sql=None, fixed=7)
    assert run_to_idle(daemon_factory(log={"level": "info"}), timeout=180) == 0
    assert_exact(db, "tags", job_id, same=("copy", "label"), rows=len(values))


def test_timestamp_and_key_columns_given_explicitly(db, daemon_factory):
    db.sql("CREATE TABLE readings (id serial PRIMARY KEY, at timestamptz NOT NULL UNIQUE, v numeric, v2 numeric)")
    db.sql("INSERT INTO readings (at, v) SELECT timestamptz '2024-01-01 00:00:00.123456+00' + g * interval '1.5 s',"
           " g / 7.0 FROM generate_series(1, 5000) g")
    job_id = submit(db, "readings", set_sql="v2 = v * 2", where_sql=None, key_columns=["at"], batch_size=400)
    assert run_to_idle(daemon_factory()) == 0
    assert_exact(db, "readings", job_id, same=("v2", "v * 2"))


def test_failing_job_ends_failed_and_others_go_on(db, daemon_factory):
    make_users(db, 3000)
    bad = submit(db, "users", set_sql="state = no_such_column", where_sql=None)
    db.sql("CREATE TABLE other (id int PRIMARY KEY, a int, b int)")
    db.sql("INSERT INTO other SELECT g, g FROM generate_series(1, 3000) g")
    good = submit(db, "other", set_sql="b = a", where_sql=None, priority=-1)
    d = daemon_factory(daemon={"workers": 1})
    assert run_to_idle(d) == 0
    row = job(db, bad)
    assert row["state"] == "failed"
    assert row["last_error"].startswith("42703") and "no_such_column" in row["last_error"]
    assert row["owner"] is None and row["finished_at"] is not None
    assert_exact(db, "other", good, same=("b", "a"))
    assert differing(db) == 3000  # the failed job changed nothing

    # A failed job resumes from its checkpoint once fixed and set back to pending.
    db.sql("UPDATE backfill.jobs SET set_sql = 'state = status' WHERE id = %s", [bad])
    assert db.one("SELECT backfill.resume(%s)", [bad]) == "pending"
    assert run_to_idle(daemon_factory()) == 0
    assert_exact(db, "users", bad, same=("state", "status"))


def test_run_as_without_privilege_fails_and_touches_nothing(db, make_role, daemon_factory):
    make_users(db, 1000)
    role = make_role("backfill_submit")
    db.sql(f'GRANT SELECT ON users TO "{role}"')
    with db.connect() as conn:
        conn.execute(f'SET ROLE "{role}"')
        job_id = submit(db, "users", conn=conn)
    assert job(db, job_id)["run_as"] == role
    assert run_to_idle(daemon_factory()) == 0
    row = job(db, job_id)
    assert row["state"] == "failed"
    assert "42501" in row["last_error"] and "permission denied" in row["last_error"]
    assert differing(db) == 1000


def test_workers_limit_and_one_running_job_per_table(db, daemon_factory):
    """With workers = 2, three jobs: two on one table never run together; at most two run."""
    make_users(db, 8000)
    make_users(db, 8000, name="users2")
    a = submit(db, "users", fixed=200, sleep_ms=20)
    b = submit(db, "users", set_sql="n = n + 1", where_sql=None, fixed=200, sleep_ms=20)
    c = submit(db, "users2", fixed=200, sleep_ms=20)
    d = daemon_factory(daemon={"workers": 2})
    d.start()
    seen_max = 0
    seen_same_table = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = db.sql("SELECT id, target::text FROM backfill.jobs WHERE state = 'running'")
        seen_max = max(seen_max, len(rows))
        targets = [r[1] for r in rows]
        seen_same_table |= len(targets) != len(set(targets))
        if db.one("SELECT count(*) FROM backfill.jobs WHERE state <> 'done'") == 0:
            break
        time.sleep(0.02)
    assert_exact(db, "users", [a, b], once="n")
    assert_job(db, c)
    assert seen_max == 2, seen_max  # both workers were used
    assert not seen_same_table
    # Priority then id: a ran before b (same table, same priority).
    assert job(db, a)["finished_at"] <= job(db, b)["started_at"]


def test_priority_and_not_before(db, daemon_factory):
    make_users(db, 500)
    make_users(db, 500, name="users2")
    late = submit(db, "users", not_before=db.one("SELECT now() + interval '3 seconds'"))
    low = submit(db, "users2", priority=1)
    high = submit(db, "users2", set_sql="n = 7", where_sql=None, priority=5)
    # --exit-when-idle: a job not due yet is not runnable, so the daemon exits and leaves it pending.
    assert run_to_idle(daemon_factory(daemon={"workers": 1})) == 0
    assert job(db, late)["state"] == "pending"
    rows = {j: assert_job(db, j) for j in (low, high)}
    assert rows[high]["started_at"] < rows[low]["started_at"]  # higher priority first
    # A long-running daemon starts it once due, not before.
    d = daemon_factory(daemon={"workers": 1, "poll_interval_ms": 200})
    d.start()
    row = wait_state(db, late, "done", timeout=30, daemon=d)
    assert row["started_at"] >= row["not_before"]


def test_notify_wakes_the_daemon_at_once(db, daemon_factory):
    make_users(db, 100)
    d = daemon_factory(daemon={"poll_interval_ms": 60000})
    d.start()
    d.wait_for_log(r"listening on backfill_jobs")
    t0 = time.monotonic()
    job_id = submit(db, "users")
    wait_state(db, job_id, "done", timeout=10, daemon=d)
    assert time.monotonic() - t0 < 5  # far below the 60 s poll


def test_user_pause_resume_and_cancel(db, daemon_factory):
    make_users(db, 20000)
    job_id = submit(db, "users", fixed=200, sleep_ms=20)
    d = daemon_factory()
    d.start()
    wait_batches(db, job_id, 3)
    assert db.one("SELECT backfill.pause(%s)", [job_id]) == "paused"
    row = wait_state(db, job_id, "paused", daemon=d)
    d.wait_for_log(rf"job {job_id} .*(paused by a user|given back as paused)")
    time.sleep(0.5)
    row = job(db, job_id)
    frozen = row["batches"]
    assert row["owner"] is None and row["lease_until"] is None
    time.sleep(0.7)
    assert job(db, job_id)["batches"] == frozen  # nothing runs while paused
    assert db.one("SELECT backfill.resume(%s)", [job_id]) == "pending"
    wait_batches(db, job_id, frozen + 2)
    assert db.one("SELECT backfill.cancel(%s)", [job_id]) == "cancelled"
    row = wait_state(db, job_id, "cancelled", daemon=d)
    time.sleep(0.5)
    row = job(db, job_id)
    assert row["owner"] is None and row["finished_at"] is not None
    assert differing(db) > 0  # it really stopped before the end
    assert d.running()


def test_expired_lease_of_another_instance_is_taken_over(db, daemon_factory):
    make_users(db, 3000)
    job_id = submit(db, "users", fixed=1000)
    with db.connect(daemon=True) as conn:  # a dead instance that had done one batch
        conn.execute("UPDATE backfill.jobs SET state = 'running', owner = 'ghost:1', started_at = now(),"
                     " lease_until = now() + interval '2 seconds', last_key = '{1000}', rows_scanned = 1000,"
                     " batches = 1 WHERE id = %s", [job_id])
    d = daemon_factory(daemon={"poll_interval_ms": 200})
    d.start()
    time.sleep(1.0)
    assert job(db, job_id)["owner"] == "ghost:1"  # not before the lease expires
    wait_state(db, job_id, "done", timeout=30, daemon=d)
    # The ghost's batch, two full ones, and an empty one that finds the end (3000 is a multiple of 1000).
    assert_job(db, job_id, rows_scanned=3000, batches=4)
    # It resumed from the checkpoint: rows up to 1000 were not touched.
    assert db.one("SELECT count(*) FROM users WHERE id <= 1000 AND state IS NULL") == 1000
    assert db.one("SELECT count(*) FROM users WHERE id > 1000 AND state IS DISTINCT FROM status") == 0


def test_connections_terminated_mid_job_reconnect_and_finish(db, daemon_factory):
    make_users(db, 30000)
    db.sql("UPDATE users SET n = 0")
    job_id = submit(db, "users", set_sql="n = n + 1", where_sql=None, fixed=300, sleep_ms=10)
    d = daemon_factory()
    d.start()
    for _ in range(3):
        wait_batches(db, job_id, job(db, job_id)["batches"] + 5)
        sessions = pgharness.wait_until(lambda: len(daemon_sessions(db)) >= 2 and daemon_sessions(db),
                                        what="daemon sessions")
        for pid, _ in sessions:
            db.sql("SELECT pg_terminate_backend(%s)", [pid])
        d.wait_for_log(r"connection lost", timeout=10)
    wait_state(db, job_id, "done", timeout=120, daemon=d)
    assert_exact(db, "users", job_id, once="n")
    assert "reconnecting in" in d.log_text()


@pytest.mark.parametrize("bad", [
    {"kind": "migrate"},
    {"set_sql": None},
    {"batch_size": 0},
    {"key_columns": ["status"]},
])
def test_malformed_job_refused_at_insert(db, bad):
    make_users(db, 10)
    cols = {"target": "users", "set_sql": "state = status"}
    cols.update(bad)
    names = list(cols)
    with pytest.raises(psycopg.errors.Error) as err:
        db.sql(f"INSERT INTO backfill.jobs ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})",
               [cols[n] for n in names])
    key = next(iter(bad))
    assert key.split("_")[0] in str(err.value) or "kind" in str(err.value), str(err.value)


def test_dry_run_verify_and_parallel_side_by_side(db, daemon_factory):
    """A dry run changes nothing and fills the estimates; a verify job records mismatches and
    changes nothing; a parallel job beside them is cut into slices (tests/integration/test_parallel.py)."""
    make_users(db, 1000)
    dry = submit(db, "users", dry_run=True)
    db.sql("CREATE TABLE other (id int PRIMARY KEY, a int, b int)")
    db.sql("INSERT INTO other SELECT g, g, CASE WHEN g % 100 = 0 THEN -1 ELSE g END FROM generate_series(1, 500) g")
    verify = db.one("INSERT INTO backfill.jobs (target, kind, mismatch_sql) VALUES ('other', 'verify', 'b <> a')"
                    " RETURNING id")
    par = submit(db, "other", set_sql="b = a", where_sql=None, parallel=2, priority=-1)
    d = daemon_factory(daemon={"workers": 1})
    assert run_to_idle(d) == 0
    row = job(db, dry)
    assert row["state"] == "done" and row["estimated_seconds"] is not None and row["estimated_wal_bytes"] > 0
    assert differing(db) == 1000
    assert_job(db, verify, rows_changed=5)
    assert sorted(r[0] for r in db.sql("SELECT key[1]::int FROM backfill.mismatches WHERE job_id = %s",
                                       [verify])) == [100, 200, 300, 400, 500]
    assert_exact(db, "other", par, same=("b", "a"))
    assert "cut into 2 slices" in d.log_text()


def test_daemon_as_an_unprivileged_role_with_the_readme_grants(db, make_role, daemon_factory):
    """The README's recipe: a non-superuser daemon role in backfill_daemon and pg_monitor, member
    of no submitter; the submitting role, which logs in, in backfill_submit; nothing else granted.
    The job runs in a session logged in as the submitting role (the test cluster trusts local
    logins: the authentication is the operator's, see test_job_sessions.py)."""
    make_users(db, 5000)
    daemon_role, owner = make_role("backfill_daemon", "pg_monitor"), make_role("backfill_submit")
    db.sql(f'ALTER TABLE users OWNER TO "{owner}"')
    assert not db.one("SELECT pg_has_role(%s, %s, 'MEMBER')", [daemon_role, owner])
    with db.connect() as conn:
        conn.execute(f'SET ROLE "{owner}"')
        job_id = submit(db, "users", conn=conn, batch_size=700)
        assert conn.execute("SELECT count(*) FROM backfill.progress").fetchone()[0] == 1
    conninfo = db.conninfo.replace("user=postgres", f"user={daemon_role}")
    assert conninfo != db.conninfo
    d = daemon_factory(database={"conninfo": conninfo})
    assert run_to_idle(d) == 0
    assert_exact(db, "users", job_id, same=("state", "status"), run_as=owner, daemon=d)
    with db.connect() as conn:  # the owner can pause its own jobs through the function
        conn.execute(f'SET ROLE "{owner}"')
        again = submit(db, "users", conn=conn, set_sql="n = 1", where_sql=None)
        assert conn.execute("SELECT backfill.pause(%s)", [again]).fetchone()[0] == "paused"


def test_progress_percent_by_rows_walked_on_a_sparse_key_and_eta(db, daemon_factory):
    """A numeric key whose range is no fair measure of its rows (20,000 dense keys and one
    outlier at 100,000): percent follows the rows walked (~20% after 4,000), not the key's
    position (~4%); eta appears after 1% and grows while the job is held."""
    db.sql("CREATE TABLE sparse (id bigint PRIMARY KEY, a int, b int)")
    db.sql("INSERT INTO sparse SELECT g, g FROM generate_series(1, 20000) g")
    db.sql("INSERT INTO sparse VALUES (100000, 1, NULL)")
    db.sql("ANALYZE sparse")
    job_id = submit(db, "sparse", set_sql="b = a", where_sql=None, fixed=500, sleep_ms=30)
    d = daemon_factory()
    d.start()
    wait_batches(db, job_id, 8)
    row = job(db, job_id)
    assert (row["key_min"], row["key_max"]) == ("1", "100000")
    pct, eta, last, scanned, estimate = db.sql(
        "SELECT p.percent, p.eta, j.last_key[1]::bigint, j.rows_scanned, j.rows_estimate"
        " FROM backfill.progress p JOIN backfill.jobs j USING (id) WHERE id = %s", [job_id])[0]
    assert estimate == 20001
    assert abs(float(pct) - 100.0 * scanned / estimate) < 0.1, (pct, scanned)
    assert float(pct) - 100.0 * (last - 1) / 99999 > 10  # far from the key's position
    assert eta is not None
    d.signal(__import__("signal").SIGUSR1)
    d.wait_for_log(r"held: paused by signal")
    time.sleep(0.3)
    eta1 = db.one("SELECT eta FROM backfill.progress WHERE id = %s", [job_id])
    time.sleep(1.5)
    eta2 = db.one("SELECT eta FROM backfill.progress WHERE id = %s", [job_id])
    assert eta2 > eta1  # time held back counts
    d.signal(__import__("signal").SIGUSR2)
    wait_state(db, job_id, "done", timeout=120, daemon=d)
    assert_exact(db, "sparse", job_id, same=("b", "a"))
    assert db.one("SELECT percent FROM backfill.progress WHERE id = %s", [job_id]) == 100
    assert db.one("SELECT eta FROM backfill.progress WHERE id = %s", [job_id]) is None


def test_progress_percent_by_rows_for_text_keys(db, daemon_factory):
    db.sql("CREATE TABLE words (w text PRIMARY KEY, a int, b int)")
    db.sql("INSERT INTO words SELECT md5(g::text), g FROM generate_series(1, 20000) g")
    db.sql("ANALYZE words")
    job_id = submit(db, "words", set_sql="b = a", where_sql=None, fixed=500, sleep_ms=30)
    d = daemon_factory()
    d.start()
    wait_batches(db, job_id, 8)
    assert job(db, job_id)["key_min"] is None
    pct, scanned, estimate = db.sql("SELECT p.percent, j.rows_scanned, j.rows_estimate FROM backfill.progress p"
                                    " JOIN backfill.jobs j USING (id) WHERE id = %s", [job_id])[0]
    pct = float(pct)
    assert abs(pct - 100.0 * scanned / estimate) < 0.1
    assert 0 < pct <= 100
