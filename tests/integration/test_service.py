"""Operable as a service (issue 6): systemd notification and the unit file, /metrics and /healthz
(contract section 5), promtool and a real Prometheus server, and scripts/plot-job.

Optional tools (systemd-analyze, promtool, prometheus, gnuplot) skip their tests when missing;
scripts/lib.sh installs them all.
"""

import configparser
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
import zlib
from pathlib import Path

import pytest

import pgharness
from bfhelp import http, http_daemon, job, make_users, submit, wait_batches, wait_http, wait_state

SOURCE_DIR = pgharness.SOURCE_DIR
UNIT_FILE = SOURCE_DIR / "systemd" / "backfilld.service"
PLOT_JOB = SOURCE_DIR / "scripts" / "plot-job"
RULES_FILE = SOURCE_DIR / "docs" / "backfilld-rules.yml"
REASONS = ("replication_lag", "blocked_sessions", "lock_timeout", "autovacuum", "paused_by_signal",
           "standby_missing", "logical_slot", "run_window", "hold_when_sql", "wal_budget", "archive_backlog",
           "vacuum")


# -- helpers ---------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def _unescape(value):
    return re.sub(r'\\(.)', lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def parse_metrics(text):
    """The samples of a Prometheus text page: a list of (name, {label: value}, float)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = {}
        rest = m.group(2) or ""
        while rest:
            lm = _LABEL.match(rest)
            assert lm, f"bad labels in {line!r}"
            labels[lm.group(1)] = _unescape(lm.group(2))
            rest = rest[lm.end():]
        samples.append((m.group(1), labels, float(m.group(3))))
    return samples


def series(samples, name, **labels):
    """Values of NAME whose labels include LABELS."""
    return [v for n, lab, v in samples
            if n == name and all(lab.get(k) == str(want) for k, want in labels.items())]


def one(samples, name, **labels):
    values = series(samples, name, **labels)
    assert len(values) == 1, f"{name}{labels}: {values}"
    return values[0]


def scrape(port):
    status, headers, body = http(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, body
    return parse_metrics(body)


class NotifyListener:
    """A datagram socket playing systemd's NOTIFY_SOCKET; a thread collects (time, message)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="bfn-")  # short: AF_UNIX paths are limited
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        # The daemon may run as another user (it refuses root): let it reach and write the socket.
        os.chmod(self.dir, 0o755)
        os.chmod(self.path, 0o777)
        self.sock.settimeout(0.1)
        self.messages = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def snapshot(self):
        with self._lock:
            return list(self.messages)

    def wait_for(self, regex, timeout=20, since=0):
        """Wait for a message matching REGEX among those after index SINCE; (index, message)."""
        pattern = re.compile(regex, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.snapshot()
            for i in range(since, len(msgs)):
                if pattern.search(msgs[i][1]):
                    return i, msgs[i][1]
            if time.monotonic() >= deadline:
                raise AssertionError(f"no notification matching {regex!r} after {timeout}s; got "
                                     f"{[m for _, m in msgs[since:]]}")
            time.sleep(0.02)

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify(monkeypatch):
    """NOTIFY_SOCKET and a 1 s watchdog in the environment every daemon started here inherits."""
    listener = NotifyListener()
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)  # unset: the watchdog is for whoever reads it
    yield listener
    listener.close()


def built_with_libsystemd(binary):
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    return "libsystemd" in out


# -- systemd -----------------------------------------------------------------------------------

def test_unit_file_has_what_issue_6_asks():
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str
    unit.read(UNIT_FILE)
    svc = unit["Service"]
    assert svc["Type"] == "notify"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["User"] == "backfilld"
    assert svc["WatchdogSec"]
    # Longer than the default shutdown grace (10 s) plus the 5 s the daemon gives cancelled batches.
    assert int(svc["TimeoutStopSec"]) > 15
    for key, want in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                      "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
                      "UMask": "0077"}.items():
        assert svc[key] == want, key
    assert set(svc["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    binary = pgharness.default_binary()
    # verify checks that ExecStart's binary exists: point it at the one under test.
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={binary}", UNIT_FILE.read_text(), flags=re.M)
    assert f"ExecStart={binary} " in text
    unit = tmp_path / "backfilld.service"
    unit.write_text(text)
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # verify exits 0 on unknown keys and bad values ("..., ignoring"): none may concern our unit.
    assert "backfilld.service" not in out, out


def test_systemd_analyze_security_exposure(tmp_path):
    """The sandbox keeps systemd's exposure score at 2.0 or below (it was 3.5 before issue 6)."""
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={pgharness.default_binary()}", UNIT_FILE.read_text(), flags=re.M)
    unit = tmp_path / "backfilld.service"
    unit.write_text(text)
    proc = subprocess.run([analyze, "security", "--offline=yes", "--threshold=20", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr


def test_sd_notify_ready_status_watchdog_reload_stop(db, daemon_factory, notify):
    d = daemon_factory()
    if not built_with_libsystemd(d.binary):
        pytest.skip("built without libsystemd: notification is compiled away")
    make_users(db, 20000)
    d.start()
    i_ready, _ = notify.wait_for(r"^READY=1$")
    assert "listening on backfill_jobs" in d.log_text(), "READY=1 before the schema check"
    notify.wait_for(r"^STATUS=running: 0 job\(s\) running", since=0)

    # The watchdog: WATCHDOG_USEC=1 s asks for a ping every 0.5 s, from the loop.
    t0 = time.monotonic()
    time.sleep(2.2)
    pings = [t for t, m in notify.snapshot() if m == "WATCHDOG=1" and t >= t0]
    assert len(pings) >= 3, notify.snapshot()
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < 0.9, gaps

    job_id = submit(db, "users", batch_size=100, max_batch_size=100, sleep_ms=50)
    wait_batches(db, job_id, 2)
    notify.wait_for(r"^STATUS=running: 1 job\(s\) running")

    # SIGHUP: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, microseconds), then READY=1.
    mark = len(notify.snapshot())
    now_us = time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6
    d.signal(signal.SIGHUP)
    i_reload, msg = notify.wait_for(r"^RELOADING=1$", since=mark)
    m = re.search(r"^MONOTONIC_USEC=(\d+)$", msg, re.M)
    assert m, msg
    assert 0 <= int(m.group(1)) - now_us < 5e6, (m.group(1), now_us)
    i_ready2, _ = notify.wait_for(r"^READY=1$", since=i_reload + 1)
    assert i_ready2 > i_reload > i_ready

    # A reload that fails still ends with READY=1 (systemd would otherwise wait in "reloading").
    d.config_path.write_text("this is not libconfig\n")
    mark = len(notify.snapshot())
    d.signal(signal.SIGHUP)
    i_reload, _ = notify.wait_for(r"^RELOADING=1$", since=mark)
    notify.wait_for(r"^READY=1$", since=i_reload + 1)
    d.write_config()

    d.signal(signal.SIGUSR1)
    notify.wait_for(r"^STATUS=running: 1 job\(s\) running.*, paused by signal$", since=mark)
    d.signal(signal.SIGUSR2)

    mark = len(notify.snapshot())
    d.signal(signal.SIGTERM)
    notify.wait_for(r"^STOPPING=1$", since=mark)
    assert d.wait(15) == 0
    assert job(db, job_id)["state"] in ("pending", "done")


def test_sd_notify_ready_waits_for_the_schema(db, daemon_factory, notify):
    d = daemon_factory()
    if not built_with_libsystemd(d.binary):
        pytest.skip("built without libsystemd: notification is compiled away")
    db.sql("DROP SCHEMA backfill CASCADE")
    d.start()
    d.wait_for_log(r"not installed in this database")
    notify.wait_for(r"^STATUS=waiting for the queue")
    # A reload while starting must not end the startup (no READY=1 before the schema check).
    mark = d.log_mark()
    d.signal(signal.SIGHUP)
    d.wait_for_log(r"configuration reloaded", since=mark)
    time.sleep(1.0)
    msgs = [m for _, m in notify.snapshot()]
    assert "READY=1" not in msgs, msgs
    assert not any(m.startswith("RELOADING=1") for m in msgs), msgs
    assert msgs.count("WATCHDOG=1") >= 2, msgs  # the loop runs and pings while it waits
    pgharness.install_schema(db.conninfo)
    notify.wait_for(r"^READY=1$", timeout=20)
    assert "listening on backfill_jobs" in d.log_text()


# -- HTTP ----------------------------------------------------------------------------------------

def test_healthz_and_routes(db, daemon_factory):
    d, port = http_daemon(daemon_factory)
    d.start()
    d.wait_for_log(r"listening on backfill_jobs")
    assert wait_http(port, "/healthz", 200) == "ok\n"

    status, headers, body = http(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE backfilld_up gauge" in body
    status, headers, body = http(f"http://127.0.0.1:{port}/metrics?x=1")
    assert status == 200 and "backfilld_up 1" in body

    status, headers, body = http(f"http://127.0.0.1:{port}/metrics", method="HEAD")
    assert status == 200 and body == ""

    for path in ("/", "/metric", "/metrics/", "/healthz/x", "/favicon.ico"):
        assert http(f"http://127.0.0.1:{port}{path}")[0] == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/metrics", "/healthz"):
            status, headers, _ = http(f"http://127.0.0.1:{port}{path}", method=method)
            assert status == 405, (method, path)
            assert headers["Allow"] == "GET, HEAD"
    assert d.running()
    d.stop()
    assert d.proc.returncode == 0


def test_healthz_503_while_the_database_is_unreachable(db, daemon_factory):
    closed = pgharness.free_port()
    d, port = http_daemon(daemon_factory, database={
        "conninfo": f"host=127.0.0.1 port={closed} user=postgres dbname={db.name} connect_timeout=2"})
    d.start()
    body = wait_http(port, "/healthz", 503, body=r"refused")
    assert body.startswith("database down: ") and body.endswith("\n") and body.count("\n") == 1, body
    assert str(closed) in body
    assert one(scrape(port), "backfilld_up") == 0
    assert d.running()  # the daemon waits and reconnects
    assert d.stop() == 0


def test_healthz_follows_the_queue_connection_down_and_up(db, daemon_factory):
    d, port = http_daemon(daemon_factory)
    d.start()
    d.wait_for_log(r"listening on backfill_jobs")
    wait_http(port, "/healthz", 200)
    try:
        db.cluster.sql(f'ALTER DATABASE "{db.name}" ALLOW_CONNECTIONS false')
        db.cluster.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE datname = %s AND application_name = 'backfilld queue'", [db.name])
        wait_http(port, "/healthz", 503, body=r"not currently accepting connections")
        assert one(scrape(port), "backfilld_up") == 0
    finally:
        db.cluster.sql(f'ALTER DATABASE "{db.name}" ALLOW_CONNECTIONS true')
    wait_http(port, "/healthz", 200, timeout=40)
    assert one(scrape(port), "backfilld_up") == 1


def test_port_taken_exits_1_naming_the_address(daemon_factory):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        d = daemon_factory(http={"listen": address})
        d.start()
        assert d.wait(15) == 1
    log = d.log_text()
    assert re.search(rf"cannot listen on HTTP address {re.escape(address)}: Address already in use", log), log


def test_ipv6_listen(db, daemon_factory):
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    d = daemon_factory(http={"listen": f"[::1]:{port}"})
    d.start()
    d.wait_for_log(r"serving /metrics and /healthz on \[::1\]:%d" % port)

    def answered():
        try:
            status, _, body = http(f"http://[::1]:{port}/healthz")
        except OSError:
            return False
        return status == 200 and body == "ok\n"

    pgharness.wait_until(answered, what="/healthz on [::1]")
    assert d.stop() == 0


def test_http_off_with_empty_listen(db, daemon_factory):
    d = daemon_factory()  # the harness's base config has http.listen = ""
    d.start()
    d.wait_for_log(r"listening on backfill_jobs")
    assert "http.listen is empty" in d.log_text()
    assert "serving /metrics" not in d.log_text()
    assert d.stop() == 0


def test_paused_and_up_gauges(db, daemon_factory):
    d, port = http_daemon(daemon_factory)
    d.start()
    d.wait_for_log(r"listening on backfill_jobs")
    wait_http(port, "/healthz", 200)
    s = scrape(port)
    assert one(s, "backfilld_up") == 1 and one(s, "backfilld_paused") == 0
    d.signal(signal.SIGUSR1)
    wait_http(port, "/metrics", 200, body=r"(?m)^backfilld_paused 1$")
    d.signal(signal.SIGUSR2)
    wait_http(port, "/metrics", 200, body=r"(?m)^backfilld_paused 0$")


def test_promtool_accepts_live_metrics(db, daemon_factory):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed (Debian package prometheus; scripts/lib.sh installs it)")
    make_users(db, 30000)
    d, port = http_daemon(daemon_factory)
    d.start()
    job_id = submit(db, "users", batch_size=200, max_batch_size=200, sleep_ms=20)
    wait_batches(db, job_id, 3)
    _, _, body = http(f"http://127.0.0.1:{port}/metrics")
    proc = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\n" + body
    # promtool really looks: a counter without _total is refused.
    bad = body.replace("# TYPE backfilld_up gauge", "# TYPE backfilld_up counter")
    assert bad != body
    proc = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode != 0


def test_promtool_accepts_the_documented_rules():
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool is not installed (Debian package prometheus; scripts/lib.sh installs it)")
    proc = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout


# -- job series ----------------------------------------------------------------------------------

def test_job_series_move_during_a_backfill(db, daemon_factory):
    make_users(db, 40000)
    d, port = http_daemon(daemon_factory)
    d.start()
    job_id = submit(db, "users", batch_size=200, max_batch_size=200, sleep_ms=20)
    wait_batches(db, job_id, 3)

    def job_series():
        s = scrape(port)
        return s if series(s, "backfilld_rows_scanned_total", job=job_id) else None

    s1 = pgharness.wait_until(job_series, timeout=10, what=f"series of job {job_id} on /metrics")
    labels = dict(job=job_id, target="public.users")
    scanned1 = one(s1, "backfilld_rows_scanned_total", **labels)
    batches1 = one(s1, "backfilld_batches_total", **labels)
    assert scanned1 > 0 and batches1 > 0
    assert one(s1, "backfilld_rows_changed_total", **labels) <= scanned1
    assert one(s1, "backfilld_batch_size", **labels) > 0
    assert one(s1, "backfilld_sleep_seconds", **labels) >= 0
    assert one(s1, "backfilld_job_running", **labels) == 1
    throttled = {lab["reason"]: v for n, lab, v in s1
                 if n == "backfilld_throttled" and lab.get("job") == str(job_id)}
    assert set(REASONS) <= set(throttled), throttled
    assert sum(throttled.values()) <= 1
    count1 = one(s1, "backfilld_batch_duration_seconds_count")
    assert count1 > 0

    time.sleep(1.0)
    s2 = scrape(port)
    assert one(s2, "backfilld_rows_scanned_total", **labels) > scanned1
    assert one(s2, "backfilld_batches_total", **labels) > batches1
    assert one(s2, "backfilld_batch_duration_seconds_count") > count1
    assert one(s2, "backfilld_batch_duration_seconds_bucket", le="+Inf") == \
        one(s2, "backfilld_batch_duration_seconds_count")

    # SIGUSR1: the job's throttle reason reads paused_by_signal.
    d.signal(signal.SIGUSR1)
    wait_http(port, "/metrics", 200, timeout=10,
              body=r'(?m)^backfilld_throttled\{job="%d",target="public.users",reason="paused_by_signal"\} 1$'
              % job_id)
    d.signal(signal.SIGUSR2)

    row = wait_state(db, job_id, "done", daemon=d)
    final = pgharness.wait_until(
        lambda: (lambda s: s if series(s, "backfilld_job_running", job=job_id) == [0] else None)(scrape(port)),
        timeout=10, what="the finished job on /metrics")
    assert one(final, "backfilld_rows_scanned_total", **labels) == row["rows_scanned"] == 40000
    assert one(final, "backfilld_rows_changed_total", **labels) == row["rows_changed"]
    assert one(final, "backfilld_batches_total", **labels) == row["batches"]
    assert not series(final, "backfilld_batch_size", job=job_id)  # gauges only while it runs
    assert not series(final, "backfilld_throttled", job=job_id)


def test_job_label_values_are_escaped(db, daemon_factory):
    table = 'we"ird\\ta\nble'
    quoted = '"' + table.replace('"', '""') + '"'
    db.sql(f"CREATE TABLE {quoted} (id bigint PRIMARY KEY, status text, state text)")
    db.sql(f"INSERT INTO {quoted} SELECT g, 'a' FROM generate_series(1, 3000) g")
    d, port = http_daemon(daemon_factory)
    d.start()
    job_id = submit(db, quoted, batch_size=100, max_batch_size=100, sleep_ms=20)
    wait_batches(db, job_id, 2)

    def found():
        _, _, body = http(f"http://127.0.0.1:{port}/metrics")
        s = parse_metrics(body)  # asserts every line parses: escapes are right
        return (body, s) if series(s, "backfilld_rows_scanned_total", job=job_id) else None

    body, s = pgharness.wait_until(found, timeout=10, what=f"series of job {job_id}")
    targets = {lab["target"] for n, lab, _ in s if lab.get("job") == str(job_id)}
    assert len(targets) == 1
    target = targets.pop()
    assert "ird" in target and '"' in target and "\\" in target and "\n" in target, target
    assert "\\n" in body and '\\"' in body and "\\\\" in body


def test_jobs_by_state(db, daemon_factory):
    make_users(db, 100)
    done_id = submit(db, "users")
    d, port = http_daemon(daemon_factory)
    d.start()
    wait_state(db, done_id, "done", daemon=d)
    paused_id = submit(db, "users", not_before="2999-01-01")
    db.sql("SELECT backfill.pause(%s)", [paused_id])
    submit(db, "users", not_before="2999-01-01")

    def counted():
        s = scrape(port)
        got = {lab["state"]: v for n, lab, v in s if n == "backfilld_jobs"}
        return got if got.get("pending") == 1 and got.get("paused") == 1 else None

    got = pgharness.wait_until(counted, timeout=10, what="backfilld_jobs{state}")
    assert got["done"] == 1 and got["running"] == 0 and got["failed"] == 0 and got["cancelled"] == 0


def test_status_line_has_rows_per_second_and_the_reason(db, daemon_factory, notify):
    d = daemon_factory()
    if not built_with_libsystemd(d.binary):
        pytest.skip("built without libsystemd: notification is compiled away")
    make_users(db, 60000)
    d.start()
    job_id = submit(db, "users", batch_size=200, max_batch_size=200, sleep_ms=20)
    wait_batches(db, job_id, 3)
    _, msg = notify.wait_for(r"^STATUS=running: 1 job\(s\) running, [1-9]\d* rows/s", timeout=10)
    d.signal(signal.SIGUSR1)
    notify.wait_for(r"^STATUS=running: 1 job\(s\) running, \d+ rows/s, throttled: paused_by_signal",
                    timeout=10)


# -- Prometheus ----------------------------------------------------------------------------------

def test_prometheus_scrapes_the_daemon(db, daemon_factory, tmp_path):
    prometheus = shutil.which("prometheus")
    if not prometheus:
        pytest.skip("prometheus is not installed (Debian package prometheus; scripts/lib.sh installs it)")
    make_users(db, 100000)
    d, port = http_daemon(daemon_factory)
    d.start()
    job_id = submit(db, "users", batch_size=200, max_batch_size=200, sleep_ms=30)
    wait_batches(db, job_id, 2)

    prom_port = pgharness.free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{RULES_FILE}']\n"
        "scrape_configs:\n"
        "  - job_name: backfilld\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n")
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen([prometheus, f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def query(q):
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            try:
                status, _, body = http(url)
            except OSError:
                return []
            if status != 200:
                return []
            return json.loads(body)["data"]["result"]

        up = pgharness.wait_until(lambda: query('up{job="backfilld"} == 1'), timeout=30,
                                  what="Prometheus scraping the daemon")
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{port}"
        assert pgharness.wait_until(lambda: query("backfilld_up == 1"), timeout=10, what="backfilld_up")
        # The daemon's job label meets Prometheus's own: it arrives as exported_job.
        q = f'backfilld_rows_scanned_total{{exported_job="{job_id}"}}'
        first = pgharness.wait_until(lambda: query(q), timeout=15, what=q)
        assert first[0]["metric"]["target"] == "public.users"
        v1 = float(first[0]["value"][1])

        def grew():
            r = query(q)
            return r and float(r[0]["value"][1]) > v1

        pgharness.wait_until(grew, timeout=15, what="the rows counter growing in Prometheus")
        # The documented recording rule works on the real series.
        assert pgharness.wait_until(lambda: query(f'backfilld:rows_per_second{{exported_job="{job_id}"}} > 0'),
                                    timeout=15, what="backfilld:rows_per_second")
    finally:
        prom.terminate()
        try:
            prom.wait(15)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(5)
        log.close()


# -- plot-job ------------------------------------------------------------------------------------

def png_chunks(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, data[pos + 8:pos + 8 + length]
        pos += 12 + length


def png_size(path):
    ihdr = next(chunk for kind, chunk in png_chunks(path) if kind == b"IHDR")
    return struct.unpack(">II", ihdr[:8])


def png_colors(path):
    """The set of RGB colors of an 8-bit RGB/RGBA PNG, decoded with the stdlib."""
    chunks = list(png_chunks(path))
    width, height, depth, ctype = struct.unpack(">IIBB", next(c for k, c in chunks if k == b"IHDR")[:10])
    assert depth == 8 and ctype in (2, 6), (depth, ctype)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(c for k, c in chunks if k == b"IDAT"))
    stride = width * bpp
    prev = bytes(stride)
    colors = set()
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if ftype == 2:
            line = bytearray((x + b) & 255 for x, b in zip(line, prev))
        elif ftype in (1, 3, 4):
            for x in range(stride):
                a = line[x - bpp] if x >= bpp else 0
                if ftype == 1:
                    line[x] = (line[x] + a) & 255
                elif ftype == 3:
                    line[x] = (line[x] + (a + prev[x]) // 2) & 255
                else:
                    b, c = prev[x], prev[x - bpp] if x >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colors.update(zip(line[0::bpp], line[1::bpp], line[2::bpp]))
        prev = line
    return colors


SHADE_REPLICATION_LAG = (0xf6, 0xc6, 0xc6)
SHADE_WAL_BUDGET = (0xdc, 0xd3, 0xf2)


def test_plot_job_draws_a_png(db, daemon_factory, tmp_path):
    if not shutil.which("gnuplot"):
        pytest.skip("gnuplot is not installed (Debian package gnuplot-nox; scripts/lib.sh installs it)")
    make_users(db, 20000)
    job_id = submit(db, "users", batch_size=500, max_batch_size=500, sleep_ms=10, name='plot "me" \\ now')
    d = daemon_factory()
    d.start()
    wait_state(db, job_id, "done", daemon=d)
    d.stop()
    batches = db.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s", [job_id])
    assert batches >= 40

    def plot(out, *args):
        proc = subprocess.run([str(PLOT_JOB), "--conninfo", db.conninfo, *args, str(job_id), str(out)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc

    proc = plot(tmp_path / "default.png")
    assert f"job {job_id}, {batches} batches" in proc.stdout
    assert png_size(tmp_path / "default.png") == (1200, 1350)
    plot(tmp_path / "plain.png", "--size", "600x550")  # small: decoding in Python is slow
    assert png_size(tmp_path / "plain.png") == (600, 550)
    colors = png_colors(tmp_path / "plain.png")
    assert len(colors) > 20  # curves, text, grid: not a blank canvas
    assert SHADE_REPLICATION_LAG not in colors  # nothing throttled in this run
    assert SHADE_WAL_BUDGET not in colors

    # Mark a stretch of batches as held back by replication lag: it is shaded in that color.
    db.sql("UPDATE backfill.batches SET throttled_reason = 'replication_lag', lag_bytes = 1048576 * batch, "
           "lag_ms = 100 * batch WHERE job_id = %s AND batch BETWEEN 10 AND 20", [job_id])
    plot(tmp_path / "shaded.png", "--schema", "backfill", "--size", "600x550")
    assert SHADE_REPLICATION_LAG in png_colors(tmp_path / "shaded.png")
    # And another held back by a WAL budget, drawn with the budget's line in the WAL panel.
    db.sql("UPDATE backfill.batches SET throttled_reason = 'wal_budget' WHERE job_id = %s AND batch > 25", [job_id])
    db.sql("UPDATE backfill.jobs SET max_wal_bytes_per_s = 500000 WHERE id = %s", [job_id])
    plot(tmp_path / "budget.png", "--wal-budget", "2000000", "--size", "600x550")
    colors = png_colors(tmp_path / "budget.png")
    assert SHADE_REPLICATION_LAG in colors and SHADE_WAL_BUDGET in colors


def test_plot_job_errors(db, tmp_path):
    out = tmp_path / "x.png"
    run = lambda *a: subprocess.run([str(PLOT_JOB), *map(str, a)], capture_output=True, text=True, timeout=60)
    assert run().returncode == 64
    assert run("--conninfo", db.conninfo, "abc", out).returncode == 64
    assert run("--conninfo", db.conninfo, "--size", "big", 1, out).returncode == 64
    assert run("--conninfo", db.conninfo, "--wal-budget", "2MB", 1, out).returncode == 64
    p = run("--conninfo", db.conninfo, 999999, out)
    assert p.returncode == 1 and "no job 999999" in p.stderr
    make_users(db, 10)
    job_id = submit(db, "users", not_before="2999-01-01")
    p = run("--conninfo", db.conninfo, job_id, out)
    assert p.returncode == 1 and "no committed batch" in p.stderr
    assert not out.exists()
