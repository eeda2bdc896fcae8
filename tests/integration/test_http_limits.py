"""The HTTP listener is bounded and fair on odd inputs: a client that trickles header bytes is
dropped at its deadline, connections beyond the cap close the longest-waiting ones, and running
out of file descriptors backs off quietly instead of spinning. /healthz keeps answering.

The numbers are daemon/http.c's constants.
"""

import os
import re
import select
import socket
import time
import urllib.error
import urllib.request

import pgharness

DEADLINE_S = 10  # HTTP_DEADLINE_MS: from accept (or the last complete request) to a complete request
CAP = 64  # HTTP_MAX_CONNECTIONS
CALM_S = 5  # HTTP_ACCEPT_CALM_MS: an episode of failing accepts ends after this long without one
FD_LIMIT = 64  # the daemon's RLIMIT_NOFILE in the out-of-descriptors test


# -- helpers ---------------------------------------------------------------------------------

def healthz(port, timeout=2.0):
    """(status, seconds) of GET /healthz; status None when nothing answered in TIMEOUT."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        with e:
            status = e.code
    except (urllib.error.URLError, OSError):
        status = None
    return status, time.monotonic() - t0


def wait_healthz_200(port, timeout=20):
    pgharness.wait_until(lambda: healthz(port)[0] == 200, timeout=timeout, interval=0.1,
                         what="/healthz 200")


def http_daemon(daemon_factory, **sections):
    port = pgharness.free_port()
    return daemon_factory(http={"listen": f"127.0.0.1:{port}"}, **sections), port


def server_closed(sock, wait=0.0):
    """True once the server closed SOCK (EOF or reset), waiting up to WAIT seconds for it."""
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return False
    try:
        return sock.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:  # ECONNRESET and friends
        return True


def cpu_seconds(pid):
    """User + system CPU time of PID, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect_many(port, n, settle=2.0):
    """N loopback connections opened without blocking; those the kernel completed within SETTLE
    seconds (the rest are closed)."""
    pending = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        pending.append(s)
    done = []
    deadline = time.monotonic() + settle
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], pending, [], 0.1)
        for s in writable:
            pending.remove(s)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                done.append(s)
            else:
                s.close()
    for s in pending:
        s.close()
    return done


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def log_lines(daemon, regex, since=0):
    return [line for line in daemon.log_text()[since:].splitlines() if re.search(regex, line)]


# -- tests -----------------------------------------------------------------------------------

def test_out_of_descriptors_backs_off_quietly_and_recovers(db, daemon_factory):
    """Run with RLIMIT_NOFILE 64 and open connections until accept() fails for want of
    descriptors: the daemon does not spin, logs the episode in a few lines, and serves /healthz
    again once the clients go."""
    d, port = http_daemon(daemon_factory, daemon={"workers": 1})
    d.start(wrapper=["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}"])
    wait_healthz_200(port)
    pid = d.pid
    with open(f"/proc/{pid}/comm") as f:
        assert f.read().strip() == "backfilld"  # setpriv and prlimit exec, so the pid is the daemon's
    mark = d.log_mark()

    socks = connect_many(port, 2 * FD_LIMIT)
    try:
        assert len(socks) > FD_LIMIT - open_fds(pid) + 5, f"only {len(socks)} connections"
        time.sleep(0.5)
        assert open_fds(pid) >= FD_LIMIT - 2, f"the daemon has only {open_fds(pid)} descriptors open"
        cpu0 = cpu_seconds(pid)
        time.sleep(5)
        cpu = cpu_seconds(pid) - cpu0
        assert cpu < 0.5, f"the daemon used {cpu:.2f}s of CPU in 5 s out of descriptors"
        about = log_lines(d, r"(?i)accept", mark)
        assert 1 <= len(about) < 10, about[:20]
    finally:
        close_all(socks)

    t0 = time.monotonic()
    wait_healthz_200(port, timeout=5)
    print(f"/healthz 200 {time.monotonic() - t0:.2f}s after the clients closed")
    d.wait_for_log(r"http: accepting connections again", since=mark, timeout=CALM_S + 5)
    about = log_lines(d, r"(?i)accept", mark)
    assert len(about) < 10, about
    assert d.stop() == 0
