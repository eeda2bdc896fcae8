"""The HTTP listener is bounded and fair on odd inputs: a client that trickles header bytes is
dropped at its deadline, connections beyond the cap close the longest-waiting ones, and running
out of file descriptors backs off quietly instead of spinning. /healthz keeps answering.

The numbers are daemon/http.c's constants.
"""

import http.client
import os
import re
import select
import socket
import time

import pgharness
from bfhelp import cpu_seconds, healthz, http_daemon, wait_http

DEADLINE_S = 10  # HTTP_DEADLINE_MS: from accept (or the last complete request) to a complete request
CAP = 64  # HTTP_MAX_CONNECTIONS
CALM_S = 5  # HTTP_ACCEPT_CALM_MS: an episode of failing accepts ends after this long without one
FD_LIMIT = 64  # the daemon's RLIMIT_NOFILE in the out-of-descriptors test


# -- helpers ---------------------------------------------------------------------------------

def timed_healthz(port):
    """(status, seconds) of GET /healthz (bfhelp.healthz: status None when nothing answered)."""
    t0 = time.monotonic()
    status, _ = healthz(port)
    return status, time.monotonic() - t0


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

def test_a_trickling_client_is_dropped_at_its_deadline(db, daemon_factory):
    """One header byte a second keeps an idle timeout from ever firing; the deadline counts from
    the accept, whatever the client sends. Meanwhile /healthz answers at once for others, and a
    keep-alive client's whole requests each earn a deadline of their own."""
    d, port = http_daemon(daemon_factory)
    d.start()
    wait_http(port, request_timeout=2)

    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    t0 = time.monotonic()
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Trickle: ")
    keep = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    keep.connect()
    keep_sock = keep.sock

    def keep_alive_healthz():
        keep.request("GET", "/healthz")
        with keep.getresponse() as r:
            r.read()
            assert r.status == 200
        assert keep.sock is keep_sock, "the keep-alive connection was closed"

    closed_after, slowest = None, 0.0
    try:
        while time.monotonic() - t0 < DEADLINE_S + 5:
            try:
                s.send(b"a")
            except OSError:
                closed_after = time.monotonic() - t0
                break
            if server_closed(s, wait=0.8):
                closed_after = time.monotonic() - t0
                break
            status, took = timed_healthz(port)
            assert status == 200, f"/healthz answered {status} during the trickle"
            slowest = max(slowest, took)
            keep_alive_healthz()
        # Past the deadline its accept set, the keep-alive connection still answers.
        for _ in range(4):
            time.sleep(0.5)
            keep_alive_healthz()
    finally:
        s.close()
        keep.close()
    print(f"trickling client closed after {closed_after}s; slowest /healthz {slowest * 1000:.0f} ms")
    assert closed_after is not None, f"a trickling client was still connected after {DEADLINE_S + 5}s"
    assert DEADLINE_S - 1 <= closed_after <= DEADLINE_S + 1.5, closed_after
    assert slowest < 0.5, f"/healthz took {slowest:.2f}s during the trickle"
    assert d.stop() == 0


def test_connections_beyond_the_cap_close_the_longest_waiting(db, daemon_factory):
    """200 idle connections: the daemon keeps the newest CAP open and closes the older ones at
    once, logging the episode once; a fresh /healthz still answers at once."""
    d, port = http_daemon(daemon_factory)
    d.start()
    wait_http(port, request_timeout=2)
    mark = d.log_mark()

    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    try:
        def settled():
            return sum(server_closed(s) for s in socks) >= len(socks) - CAP
        pgharness.wait_until(settled, timeout=5, what=f"the server closing {len(socks) - CAP} connections")
        closed = [server_closed(s) for s in socks]
        assert not any(closed[-CAP + 1:]), "a connection among the newest was closed"
        assert open_fds(d.pid) < CAP + 40, f"{open_fds(d.pid)} descriptors open in the daemon"

        status, took = timed_healthz(port)
        assert status == 200 and took < 1.0, (status, took)
        assert len(log_lines(d, r"http: at the cap", mark)) == 1, d.log_tail()
    finally:
        close_all(socks)
    d.wait_for_log(r"http: back under the cap", since=mark, timeout=10)
    assert len(log_lines(d, r"http: (at|back under) the cap", mark)) == 2, d.log_tail()
    assert d.stop() == 0


def test_out_of_descriptors_backs_off_quietly_and_recovers(db, daemon_factory):
    """Run with RLIMIT_NOFILE 64 and open connections until accept() fails for want of
    descriptors: the daemon does not spin, logs the episode in a few lines, and serves /healthz
    again once the clients go."""
    d, port = http_daemon(daemon_factory, daemon={"workers": 1})
    d.start(wrapper=["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}"])
    wait_http(port, request_timeout=2)
    pid = d.pid
    with open(f"/proc/{pid}/comm") as f:
        assert f.read().strip() == "backfilld"  # setpriv and prlimit exec, so the pid is the daemon's
    mark = d.log_mark()

    socks = connect_many(port, 2 * FD_LIMIT)
    try:
        time.sleep(0.5)
        assert open_fds(pid) >= FD_LIMIT - 2, \
            f"{len(socks)} connections, yet the daemon has only {open_fds(pid)} descriptors open"
        cpu0 = cpu_seconds(pid)
        time.sleep(5)
        cpu = cpu_seconds(pid) - cpu0
        assert cpu < 0.5, f"the daemon used {cpu:.2f}s of CPU in 5 s out of descriptors"
        about = log_lines(d, r"(?i)accept", mark)
        assert 1 <= len(about) < 10, about[:20]
    finally:
        close_all(socks)

    t0 = time.monotonic()
    wait_http(port, timeout=5, request_timeout=2)
    print(f"/healthz 200 {time.monotonic() - t0:.2f}s after the clients closed")
    d.wait_for_log(r"http: accepting connections again", since=mark, timeout=CALM_S + 5)
    about = log_lines(d, r"(?i)accept", mark)
    assert len(about) < 10, about
    assert d.stop() == 0
