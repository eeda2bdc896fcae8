"""Hostile text (issue "Exact, bounded and fair on odd inputs"): a password in the connection
string never shows on --check-config, on the unauthenticated /healthz or in the log, even when
the string is a malformed URI that libpq quotes back; a table name with a newline, "<0>" and an
ANSI escape cannot forge log lines or reach a terminal."""

import re

import pytest

import pgharness
from bfhelp import assert_exact, healthz, run_to_idle, submit

SECRET = "s3cret"


@pytest.mark.parametrize("conninfo", [
    f"host=127.0.0.1 password={SECRET} dbname=x",
    f"host=127.0.0.1 password = '{SECRET} x\\'y' dbname=x",
    f"postgresql://u:{SECRET}@127.0.0.1/x",
    f"postgresql://u@127.0.0.1/x?password={SECRET}",
    f"postgresql://u:{SECRET}@[::1/x",
])
def test_check_config_never_prints_a_password(daemon_factory, conninfo):
    d = daemon_factory(database={"conninfo": conninfo})
    p = d.run_oneshot("--check-config")
    assert p.returncode == 0, p.stderr
    assert SECRET not in p.stdout + p.stderr, p.stdout
    assert re.search(r'^  conninfo = ".*\*{8}.*";$', p.stdout, re.MULTILINE), p.stdout


# Malformed URIs that libpq quotes back in its error, whole or (the last) just the bad token.
MALFORMED = [
    f"postgresql://u:{SECRET}@[::1/x",
    f"postgresql://u:{SECRET}@[::1]x/x",
    f"postgresql://u:{SECRET}@[]/x",
    f"postgresql://u:{SECRET}%zz@127.0.0.1/x",
]


@pytest.mark.parametrize("conninfo", MALFORMED)
def test_a_malformed_uri_password_stays_off_healthz_and_the_log(daemon_factory, conninfo):
    port = pgharness.free_port()
    d = daemon_factory(database={"conninfo": conninfo}, http={"listen": f"127.0.0.1:{port}"})
    d.start()
    d.wait_for_log(r"queue: cannot connect: .*reconnecting in \d+ ms")
    answer = pgharness.wait_until(lambda: (lambda a: a if a[0] is not None else None)(healthz(port, timeout=5)),
                                  what="/healthz answering")
    status, body = answer
    assert status == 503 and body.startswith("database down: "), answer
    assert "URI" in body or "percent-encoded" in body, body  # libpq's own reason, masked
    assert SECRET not in body, body
    assert d.running()  # the daemon waits for a database it can reach
    assert d.stop() == 0
    assert SECRET not in d.log_text(), d.log_tail()


# A newline to start a line of its own with a forged priority, a carriage return to overwrite
# the line on a terminal, and an escape sequence that turns the terminal red.
HOSTILE_TABLE = "we\nird<0>\x1b[31m\rname"


def test_a_hostile_table_name_cannot_forge_log_lines(db, daemon_factory):
    quoted = '"' + HOSTILE_TABLE.replace('"', '""') + '"'
    db.sql(f"CREATE TABLE {quoted} (id bigint PRIMARY KEY, status text NOT NULL, state text)")
    db.sql(f"INSERT INTO {quoted} (id, status) SELECT g, 'x' || g FROM generate_series(1, 200) g")
    job_id = submit(db, quoted, batch_size=50)
    d = daemon_factory()
    assert run_to_idle(d) == 0, d.log_tail()
    assert_exact(db, quoted, job_id, same=("state", "status"), daemon=d)

    log = d.logfile.read_bytes()
    assert log.endswith(b"\n")
    lines = log[:-1].split(b"\n")
    for line in lines:
        assert re.match(rb"<[0-7]>", line), line  # the daemon's own priority, one per call
        assert not re.search(rb"[\x00-\x1f\x7f]", line), line  # no ESC, no CR, no other control
    # The name shows, escaped, where the job's lines name their table.
    assert b"we\\nird<0>\\x1b[31m\\rname" in log, log[-2000:]
