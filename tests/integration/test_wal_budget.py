"""The WAL budget (throttle.max_wal_bytes_per_s, jobs.max_wal_bytes_per_s): the WAL the jobs of an
instance write together stays within the budget over every 4-s window (at most 1.2 times it) and
uses it (at least 0.8 times it on average) when nothing else holds the jobs; a job's own column
caps that job within the instance's; a reload changes the rate from the next batch; the reason is
wal_budget. The WAL trace is each committed batch's wal_bytes at its finished_at
(backfill.batches), checked against the server's own WAL position, polled."""

import signal
import threading
import time

from bfhelp import job, submit, wait_state

MB = 1000 * 1000
WINDOW_S = 4.0


def wide_table(db, name, rows):
    """About 1.1 kB of WAL for each row a job updates: a 1 kB text in every row of a full heap,
    so every new version goes to another page and is logged whole. No autovacuum: the WAL a row
    writes stays the same throughout."""
    db.sql(f"CREATE TABLE {name} (id bigint PRIMARY KEY, pad text NOT NULL, v int NOT NULL DEFAULT 0)"
           " WITH (autovacuum_enabled = false)")
    db.sql(f"INSERT INTO {name} (id, pad) SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, {int(rows)}) g")
    db.sql(f"VACUUM ANALYZE {name}")


def batches(db, job_ids):
    """[(finished_at in epoch seconds, started in epoch seconds, wal_bytes, throttled_reason, job_id)],
    in order of finished_at."""
    return db.sql("SELECT extract(epoch FROM finished_at)::float8,"
                  " extract(epoch FROM finished_at)::float8 - duration_ms / 1000.0, wal_bytes,"
                  " throttled_reason, job_id FROM backfill.batches WHERE job_id = ANY (%s) ORDER BY 1",
                  [list(job_ids)])


def worst_window(points, window=WINDOW_S):
    """The most bytes in any closed window of WINDOW seconds, over POINTS [(time, bytes)] sorted by
    time, as bytes a second."""
    worst, total, first = 0.0, 0, 0
    for t, wal in points:
        total += wal
        while points[first][0] < t - window:
            total -= points[first][1]
            first += 1
        worst = max(worst, total)
    return worst / window


def trace(rows, job_ids=None):
    """From batches() rows: the points (finished_at, wal_bytes) of JOB_IDS (all: None), the busy
    period's start and end, and its average rate."""
    rows = [r for r in rows if job_ids is None or r[4] in job_ids]
    points = [(r[0], r[2] or 0) for r in rows]
    start, end = min(r[1] for r in rows), max(r[0] for r in rows)
    return points, start, end, sum(p[1] for p in points) / (end - start)


class WalPoller:
    """The server's WAL insert position every 50 ms, from another session: [(epoch s, lsn bytes)]."""

    def __init__(self, db):
        self.conn = db.connect()
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            t, lsn = self.conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8,"
                                       " pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint").fetchone()
            self.samples.append((t, lsn))
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def worst_window(self, start, end, window=WINDOW_S):
        """The most WAL the server wrote in a window of WINDOW seconds (between two samples at least
        WINDOW apart, the nearest such) within [START, END], as bytes a second."""
        s = [x for x in self.samples if start <= x[0] <= end]
        worst, k = 0.0, 0
        for i, (t, lsn) in enumerate(s):
            while k < len(s) and s[k][0] < t + window:
                k += 1
            if k == len(s):
                break
            worst = max(worst, (s[k][1] - lsn) / (s[k][0] - t))
        return worst

    def average(self, start, end):
        s = [x for x in self.samples if start <= x[0] <= end]
        return (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0])


def report(what, budget, worst, average, true_worst=None, true_average=None):
    line = f"{what}: worst {WINDOW_S:.0f}-s window {worst / budget:.3f}x the budget, average {average / budget:.3f}x"
    if true_worst is not None:
        line += f" (the server's WAL position: {true_worst / budget:.3f}x, {true_average / budget:.3f}x)"
    print(line)


def test_two_jobs_share_the_instances_budget(db, daemon_factory):
    """Two jobs on two tables at once, 2 MB/s for the instance: every 4-s window of the batches'
    WAL is at most 1.2 times the budget, the average at least 0.8 times it, and the server's own
    WAL position agrees; the batches, the job rows and the log say wal_budget. Without the budget
    the jobs write ~20 MB/s here."""
    budget = 2 * MB
    wide_table(db, "wide_a", 18000)
    wide_table(db, "wide_b", 18000)
    jobs = [submit(db, t, set_sql="v = v + 1", where_sql=None) for t in ("wide_a", "wide_b")]
    d = daemon_factory(throttle={"max_wal_bytes_per_s": budget})
    with WalPoller(db) as poller:
        d.start()
        reasons = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = db.sql("SELECT state, throttled_reason FROM backfill.jobs WHERE id = ANY (%s)", [jobs])
            reasons |= {r[1] for r in rows if r[0] == "running"}
            if all(r[0] == "done" for r in rows):
                break
            time.sleep(0.1)
        for j in jobs:
            wait_state(db, j, "done", timeout=1, daemon=d)
    rows = batches(db, jobs)
    points, start, end, average = trace(rows)
    worst = worst_window(points)
    true_worst, true_average = poller.worst_window(start, end), poller.average(start, end)
    report("two jobs, 2 MB/s", budget, worst, average, true_worst, true_average)
    assert worst <= 1.2 * budget, (worst, budget)
    assert average <= 1.2 * budget, (average, budget)
    assert end - start >= 3 * WINDOW_S, (start, end)  # long enough to judge windows
    assert average >= 0.8 * budget, (average, budget)
    assert true_worst <= 1.2 * budget, (true_worst, budget)
    assert true_average >= 0.8 * budget, (true_average, budget)
    # Both jobs ran at once most of the time: the budget was shared, not taken in turns.
    ends = [max(r[0] for r in rows if r[4] == j) for j in jobs]
    starts = [min(r[1] for r in rows if r[4] == j) for j in jobs]
    assert min(ends) - max(starts) >= 0.6 * (end - start), (starts, ends)
    assert "wal_budget" in reasons, reasons
    assert sum(1 for r in rows if r[3] == "wal_budget") >= 0.8 * len(rows), [r[3] for r in rows][:40]
    assert "throttled: wal_budget (throttle.max_wal_bytes_per_s 2000000 for all jobs)" in d.log_text()
    for t in ("wide_a", "wide_b"):
        assert db.one(f"SELECT count(*) FROM {t} WHERE v <> 1") == 0


def test_a_jobs_own_budget_caps_it_within_the_instances(db, daemon_factory):
    """The instance's budget 2 MB/s, one job's own max_wal_bytes_per_s 0.5 MB/s: that job writes
    at most 1.2 times its own budget over every 4-s window and at least 0.8 times it on average;
    the other job takes what is left of the instance's, and the two together stay within it."""
    budget, own = 2 * MB, MB // 2
    wide_table(db, "capped", 6000)
    wide_table(db, "free", 16000)
    capped = submit(db, "capped", set_sql="v = v + 1", where_sql=None, max_wal_bytes_per_s=own)
    free = submit(db, "free", set_sql="v = v + 1", where_sql=None)
    d = daemon_factory(throttle={"max_wal_bytes_per_s": budget})
    d.start()
    for j in (capped, free):
        wait_state(db, j, "done", timeout=120, daemon=d)
    rows = batches(db, [capped, free])
    points, start, end, average = trace(rows, [capped])
    worst = worst_window(points)
    report("the capped job, 0.5 MB/s of its own", own, worst, average)
    assert worst <= 1.2 * own, (worst, own)
    assert average <= 1.2 * own, (average, own)
    assert end - start >= 2.5 * WINDOW_S, (start, end)
    assert average >= 0.8 * own, (average, own)
    free_points, free_start, free_end, free_average = trace(rows, [free])
    report("the other job", budget, worst_window(free_points), free_average)
    assert free_average >= 0.8 * (budget - own), free_average
    all_points = trace(rows)[0]
    report("both", budget, worst_window(all_points), trace(rows)[3])
    assert worst_window(all_points) <= 1.2 * budget
    assert "throttled: wal_budget (throttle.max_wal_bytes_per_s 2000000 for all jobs, the job's" \
           " max_wal_bytes_per_s 500000)" in d.log_text()
    assert job(db, capped)["state"] == job(db, free)["state"] == "done"


def test_a_reload_changes_the_budget_from_the_next_batch(db, daemon_factory):
    """1 MB/s, then a reload to 3 MB/s: the rate follows within a window, and stays within 1.2
    times the new budget."""
    wide_table(db, "reloaded", 22000)
    job_id = submit(db, "reloaded", set_sql="v = v + 1", where_sql=None)
    d = daemon_factory(throttle={"max_wal_bytes_per_s": MB})
    d.start()
    wait_state(db, job_id, "running", timeout=30, daemon=d)
    time.sleep(6)
    rows = batches(db, [job_id])
    _, start, end, average = trace(rows)
    assert average <= 1.2 * MB, f"{average / MB:.1f} MB/s before the reload"
    assert job(db, job_id)["state"] == "running"
    d.write_config(throttle={"max_wal_bytes_per_s": 3 * MB})
    mark = d.log_mark()
    reloaded = db.one("SELECT extract(epoch FROM clock_timestamp())::float8")
    d.signal(signal.SIGHUP)
    d.wait_for_log("configuration reloaded", since=mark)
    wait_state(db, job_id, "done", timeout=60, daemon=d)
    rows = batches(db, [job_id])
    before = [r for r in rows if r[0] < reloaded]
    after = [r for r in rows if r[1] > reloaded + 0.5]
    b_points, b_start, b_end, b_average = trace(before)
    a_points, a_start, a_end, a_average = trace(after)
    report("before the reload, 1 MB/s", MB, worst_window(b_points), b_average)
    report("after it, 3 MB/s", 3 * MB, worst_window(a_points), a_average)
    assert worst_window(b_points) <= 1.2 * MB and b_average >= 0.8 * MB
    assert a_end - a_start >= WINDOW_S, (a_start, a_end)
    assert worst_window(a_points) <= 1.2 * 3 * MB and a_average >= 0.8 * 3 * MB
