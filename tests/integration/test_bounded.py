"""Bounded on odd inputs: rows that fail on their own cost a few transactions each, a paused
standby's lag passes its limit by little, progress follows the rows on skewed keys, slices are
even on skewed keys, a job on an idle server starts at full speed, and error texts are cut on
character boundaries."""

import time


import pgharness
from bfhelp import assert_exact, assert_job, job, run_to_idle, submit, wait_state


def test_bad_rows_are_bisected_in_few_transactions(db, daemon_factory):
    """100,000 rows, one in every 2,711 failing on its own, batches of 1,000: each bad row costs
    about twice log2(1000) small transactions, and the walk goes back to full batches after it
    (the rest of a bisected range used to be walked one row per transaction: ~18,000 batches)."""
    db.sql("CREATE TABLE vals (id bigint PRIMARY KEY, raw text NOT NULL, v int)")
    db.sql("INSERT INTO vals SELECT g, CASE WHEN g % 2711 = 0 THEN 'bad' || g ELSE g::text END, NULL"
           " FROM generate_series(1, 100000) g")
    job_id = submit(db, "vals", set_sql="v = raw::int", where_sql=None, fixed=1000, max_failed_rows=100)
    t0 = time.monotonic()
    assert run_to_idle(daemon_factory(), timeout=300) == 0
    elapsed = time.monotonic() - t0
    row = assert_job(db, job_id, failed_rows=36)
    assert row["failed_rows"] == db.one("SELECT count(*) FROM backfill.failed_rows WHERE job_id = %s", [job_id])
    assert db.one("SELECT count(*) FROM vals WHERE v IS NULL") == 36
    assert db.one("SELECT count(*) FROM vals WHERE v IS NOT NULL AND v <> id") == 0
    batches = row["batches"]
    print(f"100,000 rows with 36 bad ones: {batches} committed batches, {elapsed:.1f} s")
    assert batches <= 100 + 36 * 12, batches
    assert db.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s AND rows_scanned = 1000",
                  [job_id]) >= 60  # full batches between the bad rows


def test_lag_passes_the_limit_by_little_with_a_paused_standby(cluster, db, daemon_factory):
    """max_replication_lag_bytes = 2 MB and the standby's replay paused from the start: batches
    are sized from the WAL a key writes to fit the headroom left, so lag peaks at no more than
    1.25 times the limit (batches used to grow to 13-20 MB each, the peak to 8 times the limit),
    and the job holds; it finishes once replay resumes."""
    limit = 2 * 1024 * 1024
    db.sql("CREATE TABLE wide (id bigint PRIMARY KEY, pad text NOT NULL, v int)")
    db.sql("INSERT INTO wide SELECT g, repeat(md5(g::text), 4), 0 FROM generate_series(1, 200000) g")
    db.sql("ANALYZE wide")
    with pgharness.streaming_standby(cluster, "lagsb") as sb:
        pgharness.wait_caught_up(cluster, "lagsb")
        sb.sql("SELECT pg_wal_replay_pause()")
        pgharness.wait_until(lambda: sb.sql("SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused",
                             timeout=30, what="replay paused")
        base = pgharness.standby_lag_bytes(cluster, "lagsb")
        job_id = submit(db, "wide", set_sql="v = v + 1", where_sql=None)
        d = daemon_factory(throttle={"max_replication_lag_bytes": limit, "max_replication_lag_ms": 3600000,
                                     "sample_interval_ms": 100, "standbys": ["lagsb"], "max_sleep_ms": 200})
        d.start()
        peak, held = 0, None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            peak = max(peak, (pgharness.standby_lag_bytes(cluster, "lagsb") or 0) - base)
            if held is None and "held: replication_lag" in d.log_text():
                held = time.monotonic()
            if held and time.monotonic() - held > 3:
                break
            time.sleep(0.02)
        assert held is not None, d.log_tail()
        walked = job(db, job_id)["rows_scanned"]
        print(f"lag peaked at {peak} bytes ({peak / limit:.2f} x the limit) after {walked} rows")
        assert peak >= limit // 2  # it really ran up to the limit
        assert peak <= 1.25 * limit, (peak, limit)
        sb.sql("SELECT pg_wal_replay_resume()")
        wait_state(db, job_id, "done", timeout=180, daemon=d)
    assert_exact(db, "wide", job_id, once="v")


def _progress_samples(db, job_ids, daemon, timeout=90):
    """Sample backfill.progress (with the jobs' counters) until every job of JOB_IDS is done:
    {job id: [(state, percent, rows_scanned, rows_estimate), ...]}."""
    samples = {j: [] for j in job_ids}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = db.sql("SELECT p.id, p.state, p.percent, j.rows_scanned, j.rows_estimate FROM backfill.progress p"
                      " JOIN backfill.jobs j USING (id) WHERE p.id = ANY (%s)", [list(job_ids)])
        for job_id, *row in rows:
            samples[job_id].append(tuple(row))
        if all(r[1] == "done" for r in rows):
            return samples
        time.sleep(0.05)
    raise AssertionError(f"jobs {job_ids} not done: {[v[-3:] for v in samples.values()]}\n{daemon.log_tail()}")


def test_progress_follows_the_rows_on_skewed_keys(db, daemon_factory):
    """One key at 9223372036854775807 among 1..60000 (percent by key position stayed at 0.0 all
    along), and NaN among numeric keys (which showed 100.0 from the first batch): percent follows
    the rows walked, below 100 until the job is done, and the daemon's log says the same."""
    db.sql("CREATE TABLE skew (id bigint PRIMARY KEY, v int)")
    db.sql("INSERT INTO skew SELECT g, 0 FROM generate_series(1, 60000) g")
    db.sql("INSERT INTO skew VALUES (9223372036854775807, 0)")
    db.sql("CREATE TABLE nans (k numeric PRIMARY KEY, v int)")
    db.sql("INSERT INTO nans SELECT g, 0 FROM generate_series(1, 60000) g")
    db.sql("INSERT INTO nans VALUES ('NaN', 0)")
    db.sql("ANALYZE skew; ANALYZE nans")
    d = daemon_factory(daemon={"workers": 2}, log={"progress_interval_ms": 200})
    jobs = [submit(db, t, set_sql="v = 1", where_sql=None, fixed=1000, sleep_ms=20) for t in ("skew", "nans")]
    d.start()
    for job_id, samples in _progress_samples(db, jobs, d).items():
        running = [s for s in samples if s[0] == "running" and s[2] > 0]
        assert len(running) >= 5, samples
        for state, percent, scanned, estimate in running:
            assert percent is not None and float(percent) < 100, (percent, scanned)
            assert abs(float(percent) - 100.0 * scanned / estimate) <= 1.0, (percent, scanned, estimate)
        assert samples[-1][1] == 100
    for line in d.log_text().splitlines():
        if "rows scanned," in line and "%" in line and "done" not in line:
            percent = float(line.split("%")[0].split()[-1])
            scanned = int(line.split("%")[1].split()[0])
            assert abs(percent - 100.0 * scanned / 60001) <= 1.0, line


def test_slices_are_even_on_skewed_keys(db, daemon_factory):
    """parallel = 4 on a composite key whose first column has three values, with one outlying key:
    no slice holds more than twice its share of the rows (the cut used to give 2 slices of
    200,007 and 0 rows)."""
    db.sql("CREATE TABLE parts (a int, b int, v int, PRIMARY KEY (a, b))")
    db.sql("INSERT INTO parts SELECT g % 3, g, 0 FROM generate_series(1, 120000) g")
    db.sql("INSERT INTO parts VALUES (1, 2147483647, 0)")
    db.sql("ANALYZE parts")
    job_id = submit(db, "parts", set_sql="v = 1", where_sql=None, parallel=4)
    assert run_to_idle(daemon_factory(daemon={"workers": 1})) == 0
    assert_exact(db, "parts", job_id, once="v")
    counts = [r[0] for r in db.sql("SELECT rows_scanned FROM backfill.slices WHERE job_id = %s ORDER BY slice",
                                   [job_id])]
    assert len(counts) == 4, counts
    assert sum(counts) == 120001
    assert max(counts) <= 2 * 120001 / 4, counts


def test_a_job_on_an_idle_server_runs_at_full_speed_at_once(db, daemon_factory):
    """No other session at work: the gentle start (busy a hundredth of the time for 2 s while it
    measures the application) has nobody to protect, so the job does not sleep."""
    db.sql("CREATE TABLE calm (id bigint PRIMARY KEY, v int)")
    db.sql("INSERT INTO calm SELECT g, 0 FROM generate_series(1, 60000) g")
    db.sql("ANALYZE calm")
    job_id = submit(db, "calm", set_sql="v = 1", where_sql=None, fixed=1000)
    time.sleep(1)  # the session that submitted it is gone and its last statement long past
    # Its own VACUUMs off: the batch after each records the VACUUM's time as its sleep.
    assert run_to_idle(daemon_factory(throttle={"vacuum_after_percent": 0})) == 0
    assert_exact(db, "calm", job_id, once="v")
    slept = db.sql("SELECT batch, sleep_ms FROM backfill.batches WHERE job_id = %s ORDER BY batch", [job_id])
    total = sum(s for b, s in slept if b > 1)
    print(f"sleep over {len(slept)} batches: {total} ms")
    assert total < 300, slept[:10]


def test_error_texts_are_cut_on_character_boundaries(db, daemon_factory):
    """Error messages of many multi-byte characters, longer than the daemon keeps: a row failing
    on its own is still recorded and skipped, and a job failing on such an error is given back as
    failed with its message cut on a character boundary (cut inside one, the server refused the
    text: 22021, the job stayed running and was claimed again every lease)."""
    db.sql("CREATE TABLE accents (id bigint PRIMARY KEY, v int)")
    db.sql("INSERT INTO accents SELECT g, 0 FROM generate_series(1, 3000) g")
    db.sql("""CREATE FUNCTION raise_long(id bigint, code text) RETURNS int LANGUAGE plpgsql AS $$
              BEGIN
                IF id % 1000 = 7 THEN
                  RAISE EXCEPTION USING ERRCODE = code, MESSAGE = 'x' || repeat('é€😀', 400);
                END IF;
                RETURN 1;
              END $$""")
    skipped = submit(db, "accents", set_sql="v = raise_long(id, '22023')", where_sql=None, fixed=500)
    d = daemon_factory(daemon={"lease_ms": 2000})
    assert run_to_idle(d) == 0
    assert_job(db, skipped, failed_rows=3)
    messages = [r[0] for r in db.sql("SELECT message FROM backfill.failed_rows WHERE job_id = %s", [skipped])]
    assert all(m.startswith("xé€😀") and len(m) > 100 for m in messages), messages
    db.sql("UPDATE accents SET v = 0")
    failing = submit(db, "accents", set_sql="v = raise_long(id, 'BF999')", where_sql=None, fixed=500)
    assert run_to_idle(daemon_factory(daemon={"lease_ms": 2000}), timeout=60) == 0
    row = job(db, failing)
    assert row["state"] == "failed", row
    assert row["last_error"].startswith("BF999: xé€😀"), row["last_error"][:40]


def test_a_batch_that_moves_keys_past_its_last_one_fails_instead_of_walking_them_again(db, daemon_factory):
    """set_sql may not assign the key (refused at INSERT), but a trigger can: a batch whose rows'
    keys end up after its last key fails with BFK01 and rolls back, instead of walking them again
    (or forever) while the log says 100%."""
    db.sql("CREATE TABLE moving (id bigint PRIMARY KEY, v int)")
    db.sql("INSERT INTO moving SELECT g, 0 FROM generate_series(1, 2000) g")
    db.sql("""CREATE FUNCTION move_on() RETURNS trigger LANGUAGE plpgsql AS $$
              BEGIN NEW.id := NEW.id + 10000000; RETURN NEW; END $$""")
    db.sql("CREATE TRIGGER moves BEFORE UPDATE ON moving FOR EACH ROW EXECUTE FUNCTION move_on()")
    job_id = submit(db, "moving", set_sql="v = 1", where_sql=None, fixed=500)
    assert run_to_idle(daemon_factory()) == 0
    row = job(db, job_id)
    assert row["state"] == "failed", row
    assert row["last_error"].startswith("BFK01: 500 row(s) of this batch now have a key after"), row["last_error"]
    assert row["batches"] == 0
    assert db.one("SELECT count(*) FROM moving WHERE id > 10000000 OR v <> 0") == 0


def test_a_jobs_own_bounds_win_over_configured_ones(db, daemon_factory):
    """A job's max_batch_size below the configuration's min_batch_size: the job's bound holds
    (it was silently raised to the configured minimum)."""
    db.sql("CREATE TABLE small (id bigint PRIMARY KEY, v int)")
    db.sql("INSERT INTO small SELECT g, 0 FROM generate_series(1, 3000) g")
    job_id = submit(db, "small", set_sql="v = 1", where_sql=None, batch_size=20, max_batch_size=20)
    d = daemon_factory(throttle={"min_batch_size": 100, "batch_size": 500})
    assert run_to_idle(d) == 0
    assert_exact(db, "small", job_id, once="v")
    assert db.one("SELECT max(rows_scanned) FROM backfill.batches WHERE job_id = %s", [job_id]) == 20
