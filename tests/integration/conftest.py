"""Fixtures for the integration suite: one shared cluster, a fresh database per test, daemons.

Run with Debian's python: `/usr/bin/python3 -m pytest tests/integration`. The clusters run the
server binaries in PG_BIN (default Debian's PostgreSQL 15); tests marked `versions` are the
subset run against every other supported major (scripts/test.sh --pg MAJOR).
"""

import contextlib
import itertools
import re

import psycopg
import pytest

import pgharness

# What AddressSanitizer, LeakSanitizer and UndefinedBehaviorSanitizer print when they find something.
SANITIZER_REPORT = re.compile(r"ERROR: (Address|Leak)Sanitizer|runtime error: |SUMMARY: UndefinedBehaviorSanitizer")

_db_counter = itertools.count(1)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "versions: the focused subset that scripts/test.sh --pg MAJOR (and CI, for each "
        "supported major but 15) runs with PG_BIN set to that major's binaries; the whole suite runs on 15")
    config.addinivalue_line(
        "markers", "pg13: needs PostgreSQL 13's binaries in PG13_BIN (skipped without it): "
        "backfilld refuses servers older than 14")


def pytest_report_header(config):
    cluster = pgharness.Cluster("/nonexistent")
    try:
        return f"PostgreSQL: {cluster.version_num} from {cluster.bin_dir}"
    except Exception as e:  # the session's first cluster reports it in full
        return f"PostgreSQL: cannot run {cluster.bin_dir}/postgres: {e}"


@pytest.fixture(scope="session")
def cluster():
    """One primary for the whole run, under a short /tmp dir (Unix socket paths are short)."""
    with pgharness.temporary_cluster("primary") as primary:
        yield primary


@pytest.fixture(scope="module")
def standby(cluster):
    """A hot standby of the shared cluster for one module, streaming when the first test gets it;
    its name (standby.name, "standby1") is its application_name on the primary. Replay is resumed
    and the standby destroyed after the module."""
    with pgharness.streaming_standby(cluster, "standby1") as sb:
        yield sb


class Database:
    """A database of the shared cluster, with the queue schema installed."""

    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.conninfo = cluster.conninfo(name)
        self._conns = []

    def connect(self, autocommit=True, daemon=False):
        """A new connection; daemon=True makes it write as the schema's own functions do (the
        test's role, postgres, owns the schema, and backfilld.internal is on), to stage states
        only the daemon reaches."""
        conn = self.cluster.connect(self.name, autocommit=autocommit)
        self._conns.append(conn)
        if daemon:
            conn.execute("SELECT set_config('backfilld.internal', 'on', false)")
            if not autocommit:
                conn.commit()
        return conn

    def sql(self, query, params=None):
        """One statement in autocommit: a list of row tuples, or None without a result."""
        return self.cluster.sql(query, params, dbname=self.name)

    def one(self, query, params=None):
        """The single value of a one-row, one-column query."""
        rows = self.sql(query, params)
        assert rows is not None and len(rows) == 1 and len(rows[0]) == 1, rows
        return rows[0][0]

    def close(self):
        for conn in self._conns:
            try:
                conn.close()
            except Exception:
                pass
        self._conns.clear()


@contextlib.contextmanager
def new_database(cluster, prefix="t"):
    """A new database of CLUSTER (PREFIX_N) with the queue schema installed, as a Database;
    dropped afterwards with its logical replication slots (which would keep it)."""
    name = f"{prefix}_{next(_db_counter)}"
    cluster.sql(f'CREATE DATABASE "{name}"')
    database = Database(cluster, name)
    try:
        with cluster.connect(name) as conn:
            pgharness.install_schema(conn)
        yield database
    finally:
        database.close()
        cluster.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE database = %s", [name])
        cluster.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def daemons(database, workdir):
    """make(binary=None, **sections) -> a Daemon on DATABASE with base_config + SECTIONS, in a
    directory of its own under WORKDIR. Every daemon made is stopped afterwards."""
    made = []

    def make(binary=None, **sections):
        daemon = pgharness.Daemon(binary or pgharness.default_binary(), workdir / f"daemon{len(made) + 1}",
                                  pgharness.base_config(database.conninfo, **sections))
        made.append(daemon)
        return daemon

    try:
        yield make
    finally:
        reports = []
        for daemon in made:
            daemon.stop()
            reports += [line for line in daemon.log_text().splitlines() if SANITIZER_REPORT.search(line)]
        if reports:  # a sanitizer build's report fails the test that made the daemon
            pytest.fail("sanitizer report in the daemon's log:\n" + "\n".join(reports[:20]))


@pytest.fixture
def db(cluster):
    """A new database of the shared cluster, with the queue schema, for one test."""
    with new_database(cluster) as database:
        yield database


@pytest.fixture
def daemon_factory(db, tmp_path):
    """make(binary=None, **sections) -> a Daemon on the test's database with base_config +
    SECTIONS. Every daemon made is stopped at teardown."""
    with daemons(db, tmp_path) as make:
        yield make


@pytest.fixture
def make_role(db):
    """make_role(*grants, login=True, name=None) -> a new role of the test's database (named after
    it unless NAME is given), granted GRANTS; dropped with what it owns afterwards. Jobs run in
    sessions logged in as the role that submitted them, so submitters log in."""
    made = []

    def make(*grants, login=True, name=None):
        name = name or f"{db.name}_r{len(made)}"
        db.sql(f'CREATE ROLE "{name}"{" LOGIN" if login else ""}')
        for grant in grants:
            db.sql(f'GRANT {grant} TO "{name}"')
        made.append(name)
        return name

    yield make
    for name in reversed(made):
        db.sql(f'DROP OWNED BY "{name}" CASCADE')
        db.sql(f'DROP ROLE "{name}"')


@pytest.fixture
def role_conn(db):
    """role_conn(role) -> a session logged in as ROLE (the test cluster trusts local logins)."""
    def connect(role, **kwargs):
        conn = psycopg.connect(db.conninfo.replace("user=postgres", f"user={role}"), autocommit=True,
                               **kwargs)
        db._conns.append(conn)
        return conn
    return connect
