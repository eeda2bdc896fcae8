"""The WAL archive backlog (issue 17): with archive_mode on and archive_command failing, WAL piles
up on the primary. Every job holds (archive_backlog) while the WAL not yet archived is over
throttle.max_archive_backlog_bytes, and resumes once the archiver has brought it under half of
that. archive_mode needs a restart, so these tests run on a cluster of their own; each starts
with archiving working and caught up, and sets archive_command to '/bin/false' and back, with a
reload each time."""

import re
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

import pgharness
from bfhelp import differing, job, make_users, submit, wait_state
from conftest import Database

SEGMENT = 16 * 1024 * 1024  # wal_segment_size
LIMIT = 4 * 1024 * 1024  # max_archive_backlog_bytes: one segment waiting is over it
HELD = r"held: archive_backlog \(WAL not yet archived: (\d+) bytes \(limit %d\)\)" % LIMIT


class ArchiveCluster(pgharness.Cluster):
    """A cluster with archive_mode on (archiving nothing until a test sets a command)."""

    def _conf_lines(self):
        return super()._conf_lines() + ["archive_mode = on", "archive_command = '/bin/false'"]


@pytest.fixture(scope="module")
def archive_cluster():
    base = Path(tempfile.mkdtemp(prefix="bfl-ar-"))
    c = ArchiveCluster(base / "archiving", name="archiving")
    try:
        c.init().start()
        assert c.sql("SHOW archive_mode")[0][0] == "on"
        yield c
    finally:
        c.destroy()
        shutil.rmtree(base, ignore_errors=True)


_adb_counter = iter(range(1, 1 << 30))


@pytest.fixture
def adb(archive_cluster):
    name = f"a_{next(_adb_counter)}"
    archive_cluster.sql(f'CREATE DATABASE "{name}"')
    database = Database(archive_cluster, name)
    try:
        with archive_cluster.connect(name) as conn:
            pgharness.install_schema(conn)
        yield database
    finally:
        database.close()
        archive_cluster.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def archive_dir():
    """Where a working archive_command copies WAL to (the cluster's OS user can write it)."""
    path = Path(tempfile.mkdtemp(prefix="bfl-wal-"))
    pgharness._pg_owned(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Archiver:
    """The archive_command of ARCHIVE_CLUSTER: fail() sets '/bin/false', work() one that copies
    into ARCHIVE_DIR; each reloads the server."""

    def __init__(self, cluster, archive_dir):
        self.cluster = cluster
        self.archive_dir = archive_dir

    def _set(self, command):
        self.cluster.sql(f"ALTER SYSTEM SET archive_command = '{command}'")
        self.cluster.sql("SELECT pg_reload_conf()")

    def fail(self):
        self._set("/bin/false")

    def work(self):
        self._set(f"cp %p {self.archive_dir}/%f")

    def caught_up(self):
        """With a working command: switch to a fresh segment and wait until the one before is
        archived, so that nothing waits."""
        self.cluster.sql("SELECT pg_logical_emit_message(false, 'bfl', 'x')")
        done = self.cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        pgharness.wait_until(lambda: self.cluster.sql(
            "SELECT last_archived_wal >= %s FROM pg_stat_archiver", [done])[0][0], timeout=60,
            what=f"{done} archived")


@pytest.fixture
def archiver(archive_cluster, archive_dir):
    """An Archiver, working and caught up at the start and the end of the test."""
    a = Archiver(archive_cluster, archive_dir)
    a.work()
    a.caught_up()
    yield a
    a.work()
    a.caught_up()


def archiver_row(cluster):
    return cluster.sql("SELECT archived_count, last_archived_wal, failed_count, last_failed_wal"
                       " FROM pg_stat_archiver")[0]


def metric(port):
    """backfilld_archive_backlog_bytes on /metrics, or None without a sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        m = re.search(r"(?m)^backfilld_archive_backlog_bytes (\d+)$", resp.read().decode())
    return int(m.group(1)) if m else None


@pytest.fixture
def adaemon_factory(adb, tmp_path):
    """make(name, conninfo=None, port=None) -> a Daemon on ADB (as CONNINFO's role), with the
    4 MiB backlog limit, samples every 100 ms and /metrics on PORT; stopped at teardown."""
    made = []

    def make(name, conninfo=None, port=None):
        d = pgharness.Daemon(pgharness.default_binary(), tmp_path / name, pgharness.base_config(
            conninfo or adb.conninfo,
            throttle={"max_archive_backlog_bytes": LIMIT, "sample_interval_ms": 100},
            http={"listen": f"127.0.0.1:{port}" if port else ""}))
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


def assert_every_row_once(db, job_id, rows):
    row = job(db, job_id)
    assert row["state"] == "done" and row["throttled_reason"] is None, row
    assert row["rows_scanned"] == rows and row["rows_changed"] == rows, row
    assert differing(db) == 0
    assert db.one("SELECT count(*) FILTER (WHERE n <> 1) FROM users") == 0


def assert_held(db, job_id, seconds, batches):
    """The job stays held for archive_backlog, with BATCHES batches committed, for SECONDS."""
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        row = job(db, job_id)
        assert row["state"] == "running" and row["throttled_reason"] == "archive_backlog", row
        assert row["batches"] == batches, row
        time.sleep(0.1)


def first_batch(db, job_id, timeout=120):
    """Wait for the job's first committed batch; the monotonic time it was seen."""
    pgharness.wait_until(lambda: job(db, job_id)["batches"] > 0, timeout=timeout, interval=0.05,
                         what=f"job {job_id} running again")
    return time.monotonic()


@pytest.mark.versions
def test_a_failing_archiver_holds_the_job_until_it_works_again(archive_cluster, adb, archiver, adaemon_factory):
    """archive_command = '/bin/false' and a full segment waiting (16 MiB, over the 4 MiB limit):
    the job holds from the start and commits nothing; once the command works and the server
    reloads, the archiver catches up and the job finishes, every row exactly once."""
    rows = 100000
    make_users(adb, rows)
    archiver.fail()
    adb.sql("SELECT pg_switch_wal()")  # the segment make_users wrote waits for the archiver
    pgharness.wait_until(lambda: archiver_row(archive_cluster)[3] is not None, timeout=30,
                         what="the archiver failing")
    job_id = submit(adb, "users", set_sql="state = status, n = n + 1", where_sql=None)
    port = pgharness.free_port()
    d = adaemon_factory("daemon", port=port)
    d.start()
    pgharness.wait_until(lambda: job(adb, job_id)["throttled_reason"] == "archive_backlog", timeout=30,
                         what="the job held for the archive backlog")
    held_at = time.monotonic()
    backlog = int(d.wait_for_log(HELD, timeout=5).group(1))
    assert backlog >= SEGMENT and backlog % SEGMENT == 0, backlog
    assert metric(port) == backlog
    assert_held(adb, job_id, 3, batches=0)
    assert differing(adb) == rows
    failed = archiver_row(archive_cluster)
    assert failed[2] > 0 and failed[1] < failed[3], failed  # failing, nothing archived since

    archiver.work()
    reloaded_at = time.monotonic()
    resumed_at = first_batch(adb, job_id)
    wait_state(adb, job_id, "done", timeout=120, daemon=d)
    print(f"\nbacklog seen: {backlog} bytes; held {resumed_at - held_at:.1f} s, of which"
          f" {resumed_at - reloaded_at:.1f} s after archive_command was fixed")
    # The job's own WAL may have completed a segment just now: the archiver copies it at once.
    pgharness.wait_until(lambda: metric(port) == 0, timeout=10, what="the gauge back to 0")
    assert_every_row_once(adb, job_id, rows)
    assert "running freely again (was archive_backlog)" in d.log_text()
    # The batch after the hold records why the job waited.
    assert adb.one("SELECT throttled_reason FROM backfill.batches WHERE job_id = %s ORDER BY batch LIMIT 1",
                   [job_id]) == "archive_backlog"


def test_the_jobs_own_wal_fills_a_segment_the_archiver_cannot_archive(adb, archiver, adaemon_factory):
    """Everything archived, then archiving fails: the job runs until its own WAL completes a
    segment, then holds mid-way with its batches so far; once archiving works it finishes,
    every row exactly once."""
    rows = 200000  # about 45 MiB of WAL: a segment completes well before the end
    make_users(adb, rows)
    archiver.caught_up()
    archiver.fail()
    job_id = submit(adb, "users", set_sql="state = status, n = n + 1", where_sql=None)
    d = adaemon_factory("daemon")
    d.start()
    pgharness.wait_until(lambda: job(adb, job_id)["throttled_reason"] == "archive_backlog", timeout=60,
                         what="the job held for the archive backlog")
    row = job(adb, job_id)
    assert row["state"] == "running" and 0 < row["rows_scanned"] < rows, row
    backlog = int(d.wait_for_log(HELD, timeout=5).group(1))
    assert backlog >= SEGMENT, backlog
    assert_held(adb, job_id, 2, batches=row["batches"])
    print(f"\nheld after {row['batches']} batches, {row['rows_scanned']} rows; backlog seen: {backlog} bytes")

    archiver.work()
    wait_state(adb, job_id, "done", timeout=120, daemon=d)
    assert_every_row_once(adb, job_id, rows)


@pytest.fixture
def blind_role(archive_cluster, adb):
    """A login role in backfill_daemon, which loses pg_monitor for the test (the install gave it);
    both undone afterwards (after the daemons stop: request it before adaemon_factory)."""
    role = f"{adb.name}_daemon"
    archive_cluster.sql(f'CREATE ROLE "{role}" LOGIN IN ROLE backfill_daemon')
    archive_cluster.sql("REVOKE pg_monitor FROM backfill_daemon")
    yield role
    archive_cluster.sql("GRANT pg_monitor TO backfill_daemon")
    archive_cluster.sql(f'DROP ROLE "{role}"')


@pytest.mark.versions
def test_nothing_archived_since_a_statistics_reset(archive_cluster, adb, archiver, blind_role, adaemon_factory):
    """pg_stat_archiver names no segment (its statistics were reset while a segment waits, and the
    archiver, after its three failed tries, waits a minute before the next): a daemon whose role
    has no pg_monitor cannot measure the backlog, says so once, and does not hold; given
    pg_monitor, it finds the waiting segment in pg_wal/archive_status and holds."""
    rows = 1000  # a few hundred kB of WAL: no segment completes (that would wake the archiver)
    make_users(adb, rows)
    archiver.fail()
    adb.sql("SELECT pg_switch_wal()")
    pgharness.wait_until(lambda: archiver_row(archive_cluster)[2] >= 3, timeout=30,
                         what="the archiver giving up for now")
    archive_cluster.sql("SELECT pg_stat_reset_shared('archiver')")
    pgharness.wait_until(lambda: archiver_row(archive_cluster) == (0, None, 0, None), timeout=10,
                         what="the archiver's statistics reset")  # on 14 the collector does it later
    conninfo = adb.conninfo.replace("user=postgres", f"user={blind_role}")

    blind_job = submit(adb, "users", set_sql="state = status, n = n + 1", where_sql=None)
    blind = adaemon_factory("blind", conninfo=conninfo)
    blind.start("--exit-when-idle")
    assert blind.wait(60) == 0, blind.log_tail()
    assert_every_row_once(adb, blind_job, rows)
    warning = ("cannot measure the WAL archive backlog: pg_stat_archiver names no WAL segment to count"
               " from (nothing archived or failed yet), and listing pg_wal/archive_status needs"
               " pg_monitor; GRANT pg_monitor to the daemon's role")
    assert blind.log_text().count(warning) == 1, blind.log_tail()
    assert "archive_backlog" not in blind.log_text()

    archive_cluster.sql(f'GRANT pg_monitor TO "{blind_role}"')
    assert archiver_row(archive_cluster) == (0, None, 0, None)  # still nothing named
    adb.sql("UPDATE users SET state = NULL")
    seeing_job = submit(adb, "users", set_sql="state = status, n = n + 1", where_sql=None)
    seeing = adaemon_factory("seeing", conninfo=conninfo)
    seeing.start()
    backlog = int(seeing.wait_for_log(HELD, timeout=30).group(1))
    assert backlog == SEGMENT, backlog
    assert_held(adb, seeing_job, 1, batches=0)
    archiver.work()
    wait_state(adb, seeing_job, "done", timeout=60, daemon=seeing)
    assert "cannot measure the WAL archive backlog" not in seeing.log_text()
    assert adb.one("SELECT count(*) FILTER (WHERE n <> 2) FROM users") == 0
