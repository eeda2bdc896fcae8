"""backfilld needs PostgreSQL 14 or later, and says so against an older server: against 13 (the
npm package's binaries, in PG13_BIN: `scripts/test.sh --pg 13`, a step of CI) `--install-schema`
exits 69 or 78 and the daemon claims nothing, each with a message that names the server's version.
Skipped without PG13_BIN; the rest of the suite runs on PG_BIN (Debian's 15)."""

import os
import re
import time

import pytest

import pgharness

PG13_BIN = os.environ.get("PG13_BIN")

pytestmark = [pytest.mark.pg13,
              pytest.mark.skipif(not PG13_BIN, reason="PG13_BIN (PostgreSQL 13's bin directory) is not set")]

NEEDS_14 = re.compile(r"(?im)^.*PostgreSQL 14 or later.*$")


@pytest.fixture(scope="module")
def cluster13():
    with pgharness.temporary_cluster("pg13", bin_dir=PG13_BIN) as c:
        assert c.major == 13, c.version_num
        yield c


def names_the_version(line, cluster):
    """Whether LINE names the server's version, as server_version (13.23) or server_version_num."""
    version, num = cluster.sql("SELECT current_setting('server_version'), current_setting('server_version_num')")[0]
    return version.split()[0] in line or num in line


def schema_for_13():
    """The queue schema with what PostgreSQL 13 cannot parse rewritten (CREATE OR REPLACE TRIGGER
    is 14's: a DROP TRIGGER IF EXISTS and a CREATE TRIGGER instead): a stand-in for a queue the
    daemon could claim from on 13, for the test that it does not."""
    sql = re.sub(r"CREATE OR REPLACE TRIGGER (\w+) (.*?) ON (\S+)",
                 lambda m: f"DROP TRIGGER IF EXISTS {m[1]} ON {m[3]};\nCREATE TRIGGER {m[1]} {m[2]} ON {m[3]}",
                 pgharness.render_schema(), flags=re.DOTALL)
    # and the schema's own refusal of servers before 14
    return re.sub(r"IF current_setting\('server_version_num'\)::int < 140000 THEN.*?END IF;", "", sql,
                  flags=re.DOTALL)


def test_install_schema_refuses_postgresql_13(cluster13, tmp_path):
    cluster13.sql("CREATE DATABASE install13")
    d = pgharness.Daemon(pgharness.default_binary(), tmp_path / "d",
                         pgharness.base_config(cluster13.conninfo("install13")))
    p = d.run_oneshot("--install-schema")
    assert p.returncode in (69, 78), (p.returncode, p.stderr)
    lines = NEEDS_14.findall(p.stderr)
    assert lines, p.stderr
    assert any(names_the_version(line, cluster13) for line in lines), p.stderr
    # Refused before anything was installed.
    assert cluster13.sql("SELECT to_regnamespace('backfill')", dbname="install13") == [(None,)]


def test_the_daemon_refuses_postgresql_13_and_claims_nothing(cluster13, tmp_path):
    cluster13.sql("CREATE DATABASE daemon13")
    with cluster13.connect("daemon13") as conn:
        try:
            pgharness._install_from_file(conn, schema_for_13())
        except Exception as e:
            pytest.fail(f"the stand-in queue schema does not install on 13 (update schema_for_13): {e}")
        conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, status text, state text)")
        conn.execute("INSERT INTO users SELECT g, 'active' FROM generate_series(1, 1000) g")
        job_id = conn.execute("INSERT INTO backfill.jobs (target, set_sql) VALUES ('users', 'state = status')"
                              " RETURNING id").fetchone()[0]
    d = pgharness.Daemon(pgharness.default_binary(), tmp_path / "d",
                         pgharness.base_config(cluster13.conninfo("daemon13"),
                                               daemon={"poll_interval_ms": 100}))
    try:
        d.start()
        m = d.wait_for_log(NEEDS_14.pattern, timeout=20)
        assert names_the_version(m.group(0), cluster13), m.group(0)
        # Whether it exits or stays up, it claims nothing: watched over 20 poll intervals.
        deadline = time.monotonic() + 2.0
        while d.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        row = cluster13.sql("SELECT state, owner, batches FROM backfill.jobs WHERE id = %s", [job_id],
                            dbname="daemon13")
        assert row == [("pending", None, 0)], (row, d.log_tail())
        assert cluster13.sql("SELECT count(*) FROM users WHERE state IS NOT NULL", dbname="daemon13") == [(0,)]
    finally:
        d.stop()
