"""The command line (contract section 1): options, one-shot commands, exit codes."""

import re
import time

import pytest

import pgharness
from bfhelp import assert_exact, make_users


def test_version_and_help(daemon_factory):
    d = daemon_factory()
    v = d.run_oneshot("--version", config=False)
    assert v.returncode == 0 and re.match(r"backfilld \d+\.\d+\.\d+", v.stdout)
    h = d.run_oneshot("--help", config=False)
    assert h.returncode == 0
    for opt in ("--config", "--check-config", "--install-schema", "--schema-sql", "--exit-when-idle",
                "--log-level", "--version", "--help"):
        assert opt in h.stdout


def test_bad_command_line_exits_64(daemon_factory):
    d = daemon_factory()
    assert d.run_oneshot("--no-such-option").returncode == 64
    assert d.run_oneshot("--log-level", "loud").returncode == 64
    assert d.run_oneshot("stray-argument").returncode == 64
    assert d.run_oneshot("--schema-sql", "--check-config").returncode == 64


def test_check_config_prints_effective_settings(daemon_factory):
    d = daemon_factory(throttle={"batch_size": 777})
    d.write_config()
    p = d.run_oneshot("--check-config")
    assert p.returncode == 0, p.stderr
    assert re.search(r"batch_size = 777;", p.stdout)
    assert re.search(r"max_replication_lag_bytes = 67108864", p.stdout)  # a default filled in
    assert re.search(r'level = "debug";', p.stdout)


def test_invalid_config_exits_78_with_file_and_line(daemon_factory):
    d = daemon_factory()
    path = d.write_config()
    text = path.read_text()
    path.write_text(text + "daemon2: { workers = 3; };\n")
    line = len(text.splitlines()) + 1
    p = d.run_oneshot("--check-config")
    assert p.returncode == 78
    assert f"{path}:{line}: daemon2" in p.stderr

    d.write_config(throttle={"batch_size": 0})
    p = d.run_oneshot("--check-config")
    assert p.returncode == 78
    assert re.search(re.escape(str(path)) + r":\d+: throttle.batch_size: 0 is out of range", p.stderr)

    missing = d.run_oneshot("-c", "/nonexistent/backfilld.conf", "--check-config", config=False)
    assert missing.returncode == 78 and "/nonexistent/backfilld.conf" in missing.stderr

    # The daemon itself refuses to start on a bad file, also with 78.
    d.write_config(throttle={"batch_size": 10})
    path.write_text(path.read_text().replace("workers = 2", 'workers = "two"'))
    p = d.run_oneshot()
    assert p.returncode == 78 and "daemon.workers: expected an integer" in p.stderr


def test_schema_sql_uses_the_configured_schema(daemon_factory):
    d = daemon_factory(database={"schema": "bf two"})
    d.write_config()
    p = d.run_oneshot("--schema-sql")
    assert p.returncode == 0
    assert 'CREATE TABLE IF NOT EXISTS "bf two".jobs' in p.stdout
    assert "@schema@" not in p.stdout


@pytest.mark.versions
def test_install_schema_is_idempotent_and_creates_other_schemas(db, daemon_factory):
    d = daemon_factory(database={"schema": "queue2"})
    d.write_config()
    for _ in range(2):
        p = d.run_oneshot("--install-schema")
        assert p.returncode == 0, p.stderr
    assert db.one("SELECT version FROM queue2.schema_version") == 3
    assert db.one("SELECT count(*) FROM pg_proc WHERE proname = '_claim' "
                  "AND pronamespace = 'queue2'::regnamespace") == 1


def test_install_schema_calls_nothing_a_search_path_could_shadow(db, daemon_factory):
    """The database's search_path puts a schema of look-alike functions before pg_catalog: every
    function --install-schema calls is pg_catalog's (qualified), none of the look-alikes."""
    db.sql("CREATE SCHEMA evil")
    db.sql("CREATE TABLE evil.called (name text)")
    db.sql("CREATE FUNCTION evil.hashtext(text) RETURNS int LANGUAGE sql"
           " AS $$ INSERT INTO evil.called VALUES ('hashtext') RETURNING 0 $$")
    db.sql("CREATE FUNCTION evil.maxstep(int, int) RETURNS int LANGUAGE sql"
           " AS $$ INSERT INTO evil.called VALUES ('max') RETURNING $2 $$")
    db.sql("CREATE AGGREGATE evil.max(int) (sfunc = evil.maxstep, stype = int)")
    db.sql(f'ALTER DATABASE "{db.name}" SET search_path = evil, pg_catalog, public')
    d = daemon_factory(database={"schema": "queue3"})
    d.write_config()
    p = d.run_oneshot("--install-schema")
    assert p.returncode == 0, p.stderr
    assert "installed at version 3" in p.stderr, p.stderr
    assert db.sql("SELECT name FROM evil.called") == []


def test_install_schema_unreachable_database_exits_69(daemon_factory):
    port = pgharness.free_port()
    d = daemon_factory(database={"conninfo": f"host=127.0.0.1 port={port} user=postgres dbname=x connect_timeout=2"})
    d.write_config()
    p = d.run_oneshot("--install-schema")
    assert p.returncode == 69
    assert "cannot connect" in p.stderr


def test_daemon_waits_for_a_missing_schema_then_runs(db, daemon_factory):
    """A daemon pointed at a database without the schema says what to do and keeps trying."""
    make_users(db, 2000)
    d = daemon_factory(database={"schema": "later"}, daemon={"poll_interval_ms": 200})
    d.start()
    d.wait_for_log(r"queue schema later is not installed.*--install-schema", timeout=20)
    assert d.running()
    p = d.run_oneshot("--install-schema")
    assert p.returncode == 0, p.stderr
    job_id = db.one("INSERT INTO later.jobs (target, set_sql) VALUES ('users', 'state = status') RETURNING id")
    deadline = time.monotonic() + 30
    while db.one("SELECT state FROM later.jobs WHERE id = %s", [job_id]) != "done":
        assert time.monotonic() < deadline, d.log_tail()
        time.sleep(0.1)
    assert_exact(db, "users", same=("state", "status"))  # the job is in later.jobs


def test_unreachable_database_daemon_keeps_retrying(daemon_factory):
    port = pgharness.free_port()
    d = daemon_factory(database={"conninfo": f"host=127.0.0.1 port={port} user=postgres dbname=x"})
    d.start()
    d.wait_for_log(r"cannot connect.*reconnecting in \d+ ms", timeout=10)
    first = d.log_mark()
    d.wait_for_log(r"cannot connect.*reconnecting in \d+ ms", timeout=10, since=first)
    assert d.running()
    assert d.stop() == 0
