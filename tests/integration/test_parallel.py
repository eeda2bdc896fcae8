"""parallel = N: the key range cut into N slices at quantiles, walked at once on N connections,
each slice with its own checkpoint; the job is done when every slice is."""

import random
import signal
import threading
import time

import pytest

from bfhelp import assert_exact, assert_job, job, kill_loop, make_users, run_to_idle, submit, wait_batches, wait_for, \
    wait_job, wait_state


def slices(db, job_id):
    return db.sql("SELECT slice, lower_key, upper_key, last_key, done, rows_scanned FROM backfill.slices "
                  "WHERE job_id = %s ORDER BY slice", [job_id])


def check_slices_tile(db, job_id, table, n):
    """The slices cut the whole key range into N consecutive pieces, none empty, none overlapping."""
    rows = slices(db, job_id)
    assert [r[0] for r in rows] == list(range(1, n + 1)), rows
    assert rows[0][1] is None and rows[-1][2] is None, rows
    for before, after in zip(rows, rows[1:]):
        assert before[2] == after[1], rows  # one slice ends where the next begins
        assert int(before[2][0]) < int(after[2][0]) if after[2] else True, rows
    counts = [db.one(f"SELECT count(*) FROM {table} WHERE (%s::bigint IS NULL OR id > %s::bigint)"
                     f" AND (%s::bigint IS NULL OR id <= %s::bigint)",
                     [r[1] and r[1][0]] * 2 + [r[2] and r[2][0]] * 2) for r in rows]
    return rows, counts


def concurrent_slices_seen(db, stop, seen):
    """Sample pg_stat_activity: the most slice backends seen inside a transaction at once."""
    with db.cluster.connect(db.name) as conn:
        conn.autocommit = True
        while not stop.is_set():
            n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                             "'backfilld job % slice %' AND state IN ('active', 'idle in transaction')"
                             ).fetchone()[0]
            seen.append(n)
            time.sleep(0.005)


def test_parallel_job_walks_slices_at_once_exactly_once(db, daemon_factory):
    make_users(db, 40000)
    job_id = submit(db, "users", set_sql="n = n + 1, state = status", where_sql=None, fixed=500, parallel=4)
    stop, seen = threading.Event(), []
    sampler = threading.Thread(target=concurrent_slices_seen, args=(db, stop, seen))
    sampler.start()
    d = daemon_factory(daemon={"workers": 1})
    try:
        assert run_to_idle(d) == 0
    finally:
        stop.set()
        sampler.join()
    row = assert_exact(db, "users", job_id, once="n", same=("state", "status"), rows=40000, changed=40000,
                       owner=None, daemon=d)
    rows, counts = check_slices_tile(db, job_id, "users", 4)
    assert all(r[4] for r in rows), rows
    # Cut at quantiles (the planner's histogram after ANALYZE): slices of about equal rows.
    assert sum(counts) == 40000 and min(counts) > 40000 / 4 * 0.7, counts
    assert [r[5] for r in rows] == counts
    # Walked at once: several slice backends in a transaction at the same moment.
    assert max(seen) >= 2, max(seen)
    assert db.one("SELECT count(DISTINCT batch) FROM backfill.batches WHERE job_id = %s", [job_id]) == row["batches"]
    log = d.log_text()
    assert "cut into 4 slices" in log and "walking 4 of its 4 slices at once" in log
    assert db.one("SELECT percent FROM backfill.progress WHERE id = %s", [job_id]) == 100


def test_parallel_job_sigkill_exactly_once(db, daemon_factory):
    """SIGKILL while several slices have batches in flight: no slice loses or repeats a row."""
    make_users(db, 60000)
    job_id = submit(db, "users", set_sql="n = n + 1", where_sql=None, fixed=100, sleep_ms=30, parallel=3)
    d = daemon_factory(daemon={"name": "fixed-instance", "lease_ms": 60000})
    progress = kill_loop(db, d, job_id, kills=8, rnd=random.Random(5), lo=0.0, hi=0.4)
    assert len(set(progress)) >= 5, progress
    assert job(db, job_id)["state"] == "running"
    # The kills landed while the slices were part-way: some, not all, keys of each slice done.
    part_way = [r for r in slices(db, job_id) if r[3] is not None and not r[4]]
    assert part_way, slices(db, job_id)
    assert run_to_idle(d) == 0
    assert_exact(db, "users", job_id, once="n", rows=60000, changed=60000, daemon=d)
    check_slices_tile(db, job_id, "users", 3)
    # Cut once: the restarts took the slices' own checkpoints back.
    assert d.log_text().count("cut into 3 slices") == 1


def test_parallel_job_pause_and_graceful_stop(db, daemon_factory):
    """A user's pause and SIGTERM stop every slice at its boundary; the job is given back once,
    with no lease lost on the way, and resumes from each slice's checkpoint."""
    make_users(db, 30000)
    job_id = submit(db, "users", set_sql="n = n + 1", where_sql=None, fixed=200, sleep_ms=20, parallel=3)
    d = daemon_factory()
    d.start()
    wait_batches(db, job_id, 6)
    assert db.one("SELECT backfill.pause(%s)", [job_id]) == "paused"
    row = wait_state(db, job_id, "paused", daemon=d)
    wait_job(db, job_id, lambda r: r["owner"] is None, daemon=d)
    assert db.one("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                  "'backfilld job % slice %'") == 0
    scanned = job(db, job_id)["rows_scanned"]
    assert 0 < scanned < 30000 and db.one("SELECT count(*) FROM users WHERE n = 1") == scanned
    # percent by key position, over the ranges the slices covered (keys 1..30000, all present)
    percent = float(db.one("SELECT percent FROM backfill.progress WHERE id = %s", [job_id]))
    assert abs(percent - 100.0 * scanned / 30000) < 1.0, (percent, scanned)
    assert db.one("SELECT backfill.resume(%s)", [job_id]) == "pending"
    wait_state(db, job_id, "running", daemon=d)
    wait_batches(db, job_id, job(db, job_id)["batches"] + 6)
    d.signal(signal.SIGTERM)
    assert d.wait(30) == 0
    row = job(db, job_id)
    assert row["state"] == "pending" and row["owner"] is None, row
    assert "lease lost" not in d.log_text(), d.log_tail()
    assert run_to_idle(d) == 0
    assert_exact(db, "users", job_id, once="n")


def test_parallel_text_key_without_statistics_and_statement_job(db, daemon_factory):
    """A text key on a table never analyzed is cut from a sample; a statement job is cut by its
    key too, each order copied once."""
    db.sql("CREATE TABLE codes (code text PRIMARY KEY, v int, w int)")
    db.sql("INSERT INTO codes SELECT md5(g::text), g, NULL FROM generate_series(1, 5000) g")
    upd = submit(db, "codes", set_sql="w = v", where_sql=None, fixed=100, parallel=3)
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, items jsonb NOT NULL)")
    db.sql("INSERT INTO orders SELECT g, jsonb_build_array(jsonb_build_object('sku', 'a' || g),"
           " jsonb_build_object('sku', 'b' || g)) FROM generate_series(1, 3000) g")
    db.sql("CREATE TABLE order_items (order_id int, sku text, PRIMARY KEY (order_id, sku))")
    stmt = db.one("INSERT INTO backfill.jobs (target, kind, batch_sql, parallel, batch_size, min_batch_size,"
                  " max_batch_size) VALUES ('orders', 'statement', $$INSERT INTO order_items"
                  " SELECT o.id, i->>'sku' FROM orders o, jsonb_array_elements(o.items) i"
                  " WHERE o.id BETWEEN $1 AND $2$$, 2, 100, 100, 100) RETURNING id")
    d = daemon_factory(daemon={"workers": 2})
    assert run_to_idle(d) == 0
    assert_exact(db, "codes", upd, same=("w", "v"), rows=5000, daemon=d)
    assert_job(db, stmt, daemon=d)
    rows = slices(db, upd)
    assert len(rows) == 3 and rows[0][2] < rows[1][2], rows
    assert db.one("SELECT count(*) FROM order_items") == 6000  # no duplicate: the key would refuse it
    assert len(slices(db, stmt)) == 2 and job(db, stmt)["rows_scanned"] == 3000


def test_parallel_slice_failure_fails_the_job(db, daemon_factory):
    """One slice meets an error that is not a row's: the other slices stop at their boundary and
    the job fails once, with that error."""
    make_users(db, 20000)
    db.sql("CREATE FUNCTION boom(bigint) RETURNS text LANGUAGE plpgsql AS $$ BEGIN"
           " IF $1 > 15000 THEN RAISE EXCEPTION 'slice three broke' USING ERRCODE = '42501'; END IF;"
           " RETURN 'x'; END $$")
    job_id = submit(db, "users", set_sql="state = boom(id)", where_sql=None, fixed=200, sleep_ms=20, parallel=4)
    d = daemon_factory()
    assert run_to_idle(d) == 0
    row = job(db, job_id)
    assert row["state"] == "failed" and "slice three broke" in row["last_error"], row
    assert row["owner"] is None
    # Failed once, given back once, by the last slice to stop.
    assert d.log_text().count("given back as failed") == 1, d.log_tail()
    assert db.one("SELECT count(*) FROM users WHERE state = 'x'") == row["rows_changed"]


def test_parallel_cannot_change_after_the_job_ran(db, daemon_factory):
    make_users(db, 3000)
    job_id = submit(db, "users", fixed=100, sleep_ms=50)
    d = daemon_factory()
    d.start()
    wait_batches(db, job_id, 2)
    db.sql("SELECT backfill.pause(%s)", [job_id])
    wait_state(db, job_id, "paused", daemon=d)
    with pytest.raises(Exception, match="parallel of job .* cannot change once it has run batches"):
        db.sql("UPDATE backfill.jobs SET parallel = 2 WHERE id = %s", [job_id])
    d.stop()


def test_a_wait_on_one_slice_shrinks_every_slice(db, daemon_factory):
    """One throttle for all slices: a session waiting on slice 1's locks halves slice 2's next
    batch too, though nobody waited on slice 2."""
    make_users(db, 4000)
    # 3 ms a row: a first batch of 400 takes about 1.2 s, under twice the 2 s target.
    job_id = submit(db, "users", set_sql="state = status || left(pg_sleep(0.003)::text, 0), n = n + 1",
                    where_sql=None, batch_size=400, target_batch_ms=2000, max_blocked_ms=60000,
                    statement_timeout_ms=120000, parallel=2)
    d = daemon_factory(throttle={"sample_interval_ms": 100})
    d.start()
    wait_for(lambda: db.one("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                            "'backfilld job % slice %' AND state = 'active'") == 2, what="both slices active", daemon=d)
    time.sleep(0.3)  # the first rows of slice 1's first batch are locked by now
    with db.cluster.connect(db.name) as app:
        app.execute("UPDATE users SET status = 'app', state = 'app' WHERE id = 2")  # waits for the batch
    wait_state(db, job_id, "done", timeout=120, daemon=d)
    assert_exact(db, "users", job_id, once="n")
    cut = int(slices(db, job_id)[0][2][0])
    two = db.sql("SELECT batch_size, throttled_reason, blocked_sessions FROM backfill.batches"
                 " WHERE job_id = %s AND first_key[1]::int > %s ORDER BY batch", [job_id, cut])
    assert all(r[2] == 0 for r in two), two  # nobody waited on slice 2's locks
    # Yet a batch of slice 2 was cut for it (the next one to start after slice 1's wait was
    # seen), where the rate alone grows each batch up to x1.5.
    assert two[0][0] == 400 and any(b[1] == "blocked_sessions" and b[0] < a[0] for a, b in zip(two, two[1:])), two
