"""The real daemon under valgrind (issue 4, "Sanitizers"): a whole small run with --exit-when-idle,
and a run stopped by SIGTERM mid-job, each with no memory error and no leak of any kind.

valgrind cannot run a binary built with AddressSanitizer: under such a build (BACKFILLD_BIN from
build-asan) these tests run BACKFILLD_VALGRIND_BIN instead, or skip when that is not set.
scripts/test.sh --ci runs them against the plain build."""

import os
import re
import shutil
import signal
from pathlib import Path

import pytest

import pgharness
from bfhelp import assert_exact, http, job, make_users, submit, wait_batches

VALGRIND = shutil.which("valgrind")
# Under valgrind everything runs 20-50 times slower: every wait here is generous.
SLOW = 180


def _sanitized(binary):
    """True when BINARY was built with AddressSanitizer (gcc links libasan, clang embeds it)."""
    try:
        return b"__asan_init" in Path(binary).read_bytes()
    except OSError:
        return False


@pytest.fixture
def vg_binary():
    if VALGRIND is None:
        pytest.skip("valgrind is not installed (apt-get install valgrind)")
    binary = Path(os.environ.get("BACKFILLD_VALGRIND_BIN") or pgharness.default_binary())
    if _sanitized(binary):
        pytest.skip(f"{binary} is built with AddressSanitizer, which valgrind cannot run; "
                    "set BACKFILLD_VALGRIND_BIN to a plain build")
    return binary


def valgrind_args(log):
    """valgrind's options, its report going to LOG. LOG is made first and left writable to all:
    when the tests run as root the daemon, and so valgrind, runs as an unprivileged user."""
    Path(log).touch()
    os.chmod(log, 0o666)
    return [VALGRIND, "--error-exitcode=99", "--leak-check=full",
            "--show-leak-kinds=definite,indirect,possible",
            "--errors-for-leak-kinds=definite,indirect,possible",
            "--track-origins=yes", "--num-callers=40", f"--log-file={log}"]


def assert_clean(daemon, log, code):
    """Exit 0 (99 is valgrind's own verdict) and a log that reports no error at all."""
    report = log.read_text(errors="replace") if log.exists() else "<no valgrind log>"
    assert code == 0, (f"daemon under valgrind exited {code}\n--- valgrind ---\n{report[-20000:]}"
                       f"\n--- daemon log ---\n{daemon.log_tail(40)}")
    assert re.search(r"^==\d+== ERROR SUMMARY: 0 errors from 0 contexts", report, re.M), report[-20000:]
    assert "definitely lost: 0 bytes" in report or "All heap blocks were freed" in report, report[-20000:]


def test_valgrind_whole_run_exit_when_idle(db, daemon_factory, vg_binary):
    """Two jobs to the end, one of them failing on a bad column: every path frees what it took."""
    make_users(db, 3000)
    make_users(db, 500, name="others")
    good = submit(db, "users", fixed=500)
    bad = submit(db, "others", set_sql="no_such_column = status")
    d = daemon_factory(binary=vg_binary, daemon={"lease_ms": 60000, "poll_interval_ms": 500})
    log = d.workdir / "valgrind.log"
    d.start("--exit-when-idle", wrapper=valgrind_args(log))
    code = d.wait(SLOW * 2)
    assert_clean(d, log, code)
    assert_exact(db, "users", good, same=("state", "status"))
    row = job(db, bad)
    assert row["state"] == "failed" and "no_such_column" in (row["last_error"] or ""), row


def test_valgrind_sigterm_mid_job_then_resume(db, daemon_factory, vg_binary):
    """Stopped by SIGTERM mid-job with HTTP serving (the batch in flight ends, the lease goes
    back), then a second run resumes from that checkpoint to the end: both free everything."""
    make_users(db, 8000)
    job_id = submit(db, "users", fixed=200, sleep_ms=100)
    port = pgharness.free_port()
    d = daemon_factory(binary=vg_binary, http={"listen": f"127.0.0.1:{port}"},
                       daemon={"lease_ms": 60000, "shutdown_grace_ms": 30000})
    first = d.workdir / "valgrind-1.log"
    d.start(wrapper=valgrind_args(first))
    wait_batches(db, job_id, 3, timeout=SLOW)
    status, _, body = http(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert status == 200 and body, body
    assert http(f"http://127.0.0.1:{port}/healthz", timeout=30)[0] == 200
    d.signal(signal.SIGTERM)
    assert_clean(d, first, d.wait(SLOW))
    row = job(db, job_id)
    assert row["state"] == "pending" and row["owner"] is None, row
    assert 0 < row["rows_scanned"] < 8000, row

    second = d.workdir / "valgrind-2.log"
    d.start("--exit-when-idle", wrapper=valgrind_args(second))
    assert_clean(d, second, d.wait(SLOW * 2))
    assert_exact(db, "users", job_id, same=("state", "status"), rows=8000)


def test_valgrind_sigterm_with_requests_in_flight(db, daemon_factory, vg_binary):
    """Stopped right after it connects, while its first claim and a sample (taken every 10 ms)
    are still in flight: requests dropped at shutdown free what they carried."""
    d = daemon_factory(binary=vg_binary, throttle={"sample_interval_ms": 10})
    log = d.workdir / "valgrind.log"
    d.start(wrapper=valgrind_args(log))
    d.wait_for_log(r"listening on backfill_jobs", timeout=SLOW)
    d.signal(signal.SIGTERM)
    assert_clean(d, log, d.wait(SLOW))
