"""Test harness: throwaway PostgreSQL clusters and the real backfilld binary.

Cluster runs initdb/pg_ctl/pg_basebackup (as the `postgres` OS user when the tests run as root,
since initdb refuses root) from a bin directory: PG_BIN in the environment, else Debian's
PostgreSQL 15 (scripts/pg-binaries.sh MAJOR prints one for another major). Daemon writes a
libconfig file and runs the binary with its output in a log file. install_schema() applies the
queue schema to a database.
"""

import contextlib
import copy
import os
import re
import shutil
import signal as _signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import psycopg

PG_BIN = Path(os.environ.get("PG_BIN") or "/usr/lib/postgresql/15/bin")  # every Cluster's default
SOURCE_DIR = Path(os.environ.get("BACKFILLD_SOURCE_DIR") or Path(__file__).resolve().parents[2])
SCHEMA_FILE = SOURCE_DIR / "daemon" / "schema.sql"
SCHEMA_NAME = "backfill"
IS_ROOT = os.geteuid() == 0
PG_USER = "postgres"  # the OS user that owns clusters when we run as root


class HarnessError(RuntimeError):
    pass


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_binary():
    return Path(os.environ.get("BACKFILLD_BIN") or SOURCE_DIR / "build" / "backfilld")


def wait_until(predicate, timeout=20.0, interval=0.05, what="condition"):
    """Poll PREDICATE until it returns something truthy; return that, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _tail(path, lines=40):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def _pg_owned(path):
    """Make PATH a directory the cluster's OS user can write, and every ancestor traversable."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not IS_ROOT:
        return
    shutil.chown(path, PG_USER, PG_USER)
    os.chmod(path, 0o700)
    for parent in path.resolve().parents:
        mode = os.stat(parent).st_mode
        if not mode & 0o001:  # e.g. /tmp/pytest-of-root is 0700
            os.chmod(parent, mode | 0o011)


def _traversable(path):
    """Let the unprivileged user the daemon runs as (when the tests run as root) reach PATH."""
    if not IS_ROOT:
        return
    for parent in [Path(path).resolve(), *Path(path).resolve().parents]:
        mode = os.stat(parent).st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o011)


def as_daemon_user():
    """The command prefix that runs the daemon as an unprivileged user when the tests run as
    root: backfilld refuses to run as root."""
    return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--"] if IS_ROOT else []


class Cluster:
    """One PostgreSQL cluster in BASEDIR/data, listening on 127.0.0.1:PORT, run by the server
    binaries in BIN_DIR (default PG_BIN)."""

    def __init__(self, basedir, port=None, name="primary", bin_dir=None):
        self.basedir = Path(basedir)
        self.port = port or free_port()
        self.name = name
        self.bin_dir = Path(bin_dir or PG_BIN)
        self.datadir = self.basedir / "data"
        self.logfile = self.basedir / "postgresql.log"
        self._own_sockdir = None
        self._version_num = None
        self.running = False

    @property
    def version_num(self):
        """The server's version as server_version_num (150014 for 15.14): the running server's,
        else the postgres binary's (`postgres --version`)."""
        if self._version_num is None:
            if self.running:
                self._version_num = int(self.sql("SHOW server_version_num")[0][0])
            else:
                # --version needs no data directory, and postgres answers it even as root.
                out = subprocess.run([str(self.bin_dir / "postgres"), "--version"], capture_output=True,
                                     text=True, timeout=30).stdout
                m = re.search(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?", out)
                if not m:
                    raise HarnessError(f"{self.name}: cannot read the version of {out!r}")
                self._version_num = int(m.group(1)) * 10000 + int(m.group(2) or 0)
        return self._version_num

    @property
    def major(self):
        """The server's major version: 15 for 15.14."""
        return self.version_num // 10000

    # -- processes ---------------------------------------------------------------------------

    def _run(self, args, timeout=120):
        cmd = [str(self.bin_dir / args[0]), *map(str, args[1:])]
        if IS_ROOT:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        try:
            proc = subprocess.run(cmd, cwd=self.basedir, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise HarnessError(f"{self.name}: {' '.join(cmd)} timed out after {timeout}s\n"
                               f"--- server log tail ---\n{_tail(self.logfile)}") from e
        if proc.returncode != 0:
            raise HarnessError(f"{self.name}: {' '.join(cmd)} exited {proc.returncode}\n"
                               f"--- stderr ---\n{proc.stderr}{proc.stdout}"
                               f"--- server log tail ---\n{_tail(self.logfile)}")
        return proc

    def _socket_dir(self):
        # Unix socket paths are limited to ~107 bytes: use the basedir only when it is short.
        if len(str(self.basedir)) < 80:
            return self.basedir
        if self._own_sockdir is None:
            self._own_sockdir = Path(tempfile.mkdtemp(prefix="bfs-"))
            _pg_owned(self._own_sockdir)
        return self._own_sockdir

    def _conf_lines(self):
        return [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self._socket_dir()}'",
            "logging_collector = off",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "wal_level = replica",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "hot_standby = on",
            "shared_buffers = 128MB",
            "max_connections = 200",
            "wal_keep_size = 1GB",
            "log_line_prefix = '%m [%p] %q%u@%d '",
        ]

    def _append_conf(self, lines):
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(f"\n# pgharness ({self.name})\n" + "\n".join(lines) + "\n")

    def init(self):
        _pg_owned(self.basedir)
        self._run(["initdb", "-D", self.datadir, "-A", "trust", "-U", "postgres", "--no-sync",
                   "-E", "UTF8", "--locale=C"])
        self._append_conf(self._conf_lines())
        with open(self.datadir / "pg_hba.conf", "a") as f:
            f.write("host replication all 127.0.0.1/32 trust\n")
        return self

    def start(self):
        self._run(["pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60", "start"])
        self.running = True
        return self

    def stop(self, mode="fast"):
        if mode not in ("fast", "immediate", "smart"):
            raise ValueError(f"unknown stop mode {mode!r}")
        self._run(["pg_ctl", "-D", self.datadir, "-m", mode, "-w", "-t", "60", "stop"])
        self.running = False

    def restart(self, mode="fast"):
        self.stop(mode)
        self.start()

    def destroy(self):
        """Stop at once (if running) and remove every file."""
        try:
            if self.running or (self.datadir / "postmaster.pid").exists():
                self.stop("immediate")
        except HarnessError:
            pass
        shutil.rmtree(self.basedir, ignore_errors=True)
        if self._own_sockdir is not None:
            shutil.rmtree(self._own_sockdir, ignore_errors=True)

    def log_text(self):
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    # -- SQL ---------------------------------------------------------------------------------

    def conninfo(self, dbname="postgres"):
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def connect(self, dbname="postgres", autocommit=True):
        return psycopg.connect(self.conninfo(dbname), autocommit=autocommit)

    def sql(self, query, params=None, dbname="postgres"):
        """Run one statement in autocommit; rows as a list of tuples, or None without a result."""
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description is not None else None

    # -- replication -------------------------------------------------------------------------

    def make_standby(self, basedir, port=None, name=None, via=None):
        """A hot standby streaming from this cluster, started: VIA "pg_basebackup" (-R -X
        stream) or "backup_api" (a copy taken with the low-level backup API, _copy_for_standby);
        by default pg_basebackup when the bin directory has it. Its cluster_name (NAME) is the
        application_name the primary's pg_stat_replication shows."""
        standby = Cluster(basedir, port, name=name or f"{self.name}-standby", bin_dir=self.bin_dir)
        _pg_owned(standby.basedir)
        if via is None:
            via = "pg_basebackup" if (self.bin_dir / "pg_basebackup").exists() else "backup_api"
        if via == "pg_basebackup":
            standby._run(["pg_basebackup", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres",
                          "-D", standby.datadir, "-R", "-X", "stream", "-c", "fast",
                          "--no-sync"])
        elif via == "backup_api":
            self._copy_for_standby(standby.datadir)
        else:
            raise ValueError(f"unknown standby method {via!r}")
        # The copied postgresql.conf carries the primary's port and socket dir; later lines win.
        standby._append_conf(standby._conf_lines() + [f"cluster_name = '{standby.name}'"])
        return standby.start()

    # What a copy of a running data directory leaves out ("Making a Base Backup Using the Low
    # Level API" in the manual): these directories are copied empty...
    _BACKUP_EMPTY_DIRS = {"pg_wal", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial",
                          "pg_snapshots", "pg_stat_tmp", "pg_subtrans"}
    # ...these files are left out (backup_label and tablespace_map are written from the backup's)...
    _BACKUP_SKIP_FILES = {"postmaster.pid", "postmaster.opts", "backup_label", "backup_label.old",
                          "tablespace_map", "tablespace_map.old", "pg_internal.init",
                          "current_logfiles", "standby.signal", "recovery.signal"}
    # ...and so is anything named pgsql_tmp* (temporary files and their directories).

    def _copy_for_standby(self, target):
        """Copy this running cluster's data directory to TARGET as a standby of it, between
        pg_backup_start and pg_backup_stop (pg_start_backup/pg_stop_backup, non-exclusive, before
        PostgreSQL 15) in one session: no pg_basebackup needed. The copy has no WAL: the standby
        streams it from this cluster (kept by wal_keep_size) from the backup's checkpoint on."""
        if any((self.datadir / "pg_tblspc").iterdir()):
            raise HarnessError(f"{self.name}: cannot copy tablespaces for a standby without pg_basebackup")
        label = f"pgharness {target}"
        with self.connect() as conn:
            if self.version_num >= 150000:
                conn.execute("SELECT pg_backup_start(%s, true)", [label])
            else:
                conn.execute("SELECT pg_start_backup(%s, true, false)", [label])
            try:
                self._copy_tree(self.datadir, Path(target))
            finally:
                # Without WAL archiving there is nothing to wait for (wait_for_archive false).
                if self.version_num >= 150000:
                    row = conn.execute("SELECT labelfile, spcmapfile FROM pg_backup_stop(false)").fetchone()
                else:
                    row = conn.execute("SELECT labelfile, spcmapfile FROM pg_stop_backup(false, false)").fetchone()
        labelfile, spcmapfile = row
        target = Path(target)
        (target / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
        (target / "backup_label").write_text(labelfile)
        if spcmapfile:
            (target / "tablespace_map").write_text(spcmapfile)
        (target / "standby.signal").write_text("")
        # Where pg_basebackup -R writes it: postgresql.auto.conf.
        with open(target / "postgresql.auto.conf", "a") as f:
            f.write(f"primary_conninfo = 'host=127.0.0.1 port={self.port} user=postgres'\n")
        if IS_ROOT:
            for root, dirs, files in os.walk(target):
                for entry in [root, *(os.path.join(root, n) for n in files)]:
                    shutil.chown(entry, PG_USER, PG_USER)
        os.chmod(target, 0o700)

    @classmethod
    def _copy_tree(cls, src, dst, top=True):
        """Copy the data directory SRC to DST as a base backup does: what _BACKUP_EMPTY_DIRS
        (at the top), _BACKUP_SKIP_FILES and pgsql_tmp* name is left out, and a file that
        disappears while it is copied (the server drops and renames files as it runs) is
        skipped."""
        dst.mkdir(mode=0o700)
        for entry in os.scandir(src):
            if entry.name in cls._BACKUP_SKIP_FILES or entry.name.startswith("pgsql_tmp"):
                continue
            to = dst / entry.name
            try:
                if entry.is_symlink():
                    raise HarnessError(f"cannot copy the symlink {entry.path} for a standby")
                if entry.is_dir():
                    if top and entry.name in cls._BACKUP_EMPTY_DIRS:
                        to.mkdir(mode=0o700)
                    else:
                        cls._copy_tree(entry.path, to, top=False)
                else:
                    shutil.copy2(entry.path, to)
            except FileNotFoundError:
                continue


@contextlib.contextmanager
def temporary_cluster(name, cls=None, **kwargs):
    """A new cluster (CLS, default Cluster, with KWARGS such as bin_dir) named NAME, initialised
    and started under a short new /tmp directory (Unix socket paths are short); destroyed with
    the directory afterwards."""
    base = Path(tempfile.mkdtemp(prefix="bfl-"))
    cluster = (cls or Cluster)(base / name, name=name, **kwargs)
    try:
        cluster.init().start()
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def streaming_standby(cluster, name):
    """A standby of CLUSTER named NAME (its application_name), streaming before it is yielded;
    replay is resumed and the standby destroyed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="bfl-sb-"))
    sb = cluster.make_standby(base / name, name=name)
    try:
        wait_until(lambda: cluster.sql(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
            [name])[0][0] == 1, timeout=30, what="the standby streaming")
        yield sb
    finally:
        try:
            sb.sql("SELECT pg_wal_replay_resume()")
        except Exception:
            pass
        sb.destroy()
        shutil.rmtree(base, ignore_errors=True)


def standby_lag_bytes(cluster, name):
    """How far the standby NAME's replay is behind the primary's WAL, in bytes (None if absent)."""
    rows = cluster.sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint FROM pg_stat_replication"
                       " WHERE application_name = %s", [name])
    return rows[0][0] if rows else None


def wait_caught_up(cluster, name, timeout=60):
    """Wait until the standby NAME has replayed everything CLUSTER has written."""
    wait_until(lambda: standby_lag_bytes(cluster, name) == 0, timeout=timeout, what=f"standby {name} caught up")


# -- the daemon ------------------------------------------------------------------------------

def deep_merge(base, overrides):
    """A copy of BASE with OVERRIDES merged in; nested dicts merge, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def base_config(conninfo, **sections):
    """The configuration the tests start from, with SECTIONS (dicts) deep-merged in."""
    base = {
        "database": {"conninfo": conninfo, "schema": SCHEMA_NAME},
        "daemon": {"workers": 2, "poll_interval_ms": 500, "lease_ms": 5000,
                   "shutdown_grace_ms": 5000},
        "http": {"listen": ""},
        "log": {"level": "debug"},
    }
    return deep_merge(base, sections)


def _libconfig_string(s):
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _libconfig_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # libconfig ints are 32-bit; larger ones need the L suffix (int64).
        return f"{value}L" if not -2**31 <= value < 2**31 else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _libconfig_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_libconfig_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} in libconfig")


def to_libconfig(config, indent=0):
    """Render a dict as libconfig: dicts become groups `name: { ... };`; a None value is left out
    (so an override can remove a key)."""
    pad = "  " * indent
    lines = []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, dict):
            lines.append(f"{pad}{key}: {{")
            body = to_libconfig(value, indent + 1)
            if body:
                lines.append(body.rstrip("\n"))
            lines.append(f"{pad}}};")
        else:
            lines.append(f"{pad}{key} = {_libconfig_value(value)};")
    return "\n".join(lines) + "\n"


class Daemon:
    """The real backfilld binary, run with a config file and log in WORKDIR."""

    def __init__(self, binary, workdir, config):
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = copy.deepcopy(config)
        self.config_path = self.workdir / "backfilld.conf"
        self.logfile = self.workdir / "backfilld.log"
        self.proc = None
        self._log_handle = None

    def write_config(self, **overrides):
        """Write the config (deep-merged with OVERRIDES, which also become the new config)."""
        self.config = deep_merge(self.config, overrides)
        self.config_path.write_text(to_libconfig(self.config))
        return self.config_path

    def start(self, *extra_args, wrapper=None):
        """Run `binary -c config EXTRA_ARGS`, prefixed by the WRAPPER command list (e.g.
        valgrind and its options) when given."""
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError("daemon already running")
        if not self.config_path.exists():
            self.write_config()
        if not self.binary.exists():
            raise HarnessError(f"backfilld binary not found at {self.binary} (set BACKFILLD_BIN)")
        self._log_handle = open(self.logfile, "ab")
        _traversable(self.workdir)
        os.chmod(self.config_path, 0o644)
        self.proc = subprocess.Popen([*as_daemon_user(), *map(str, wrapper or ()), str(self.binary), "-c",
                                      str(self.config_path), *map(str, extra_args)],
                                     stdout=self._log_handle, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def log_mark(self):
        """An offset for wait_for_log(since=...): only lines written after now count."""
        return len(self.log_text())

    def log_tail(self, lines=40):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, regex, timeout=20, since=0):
        """Wait until REGEX matches the log (from offset SINCE); return the match."""
        pattern = re.compile(regex, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            m = pattern.search(self.log_text(), since)
            if m:
                return m
            if time.monotonic() >= deadline:
                state = "running" if self.running() else f"exited {self.proc and self.proc.returncode}"
                raise TimeoutError(f"no log line matching {regex!r} after {timeout}s "
                                   f"(daemon {state})\n--- log tail ---\n{self.log_tail()}")
            time.sleep(0.05)

    def signal(self, sig):
        if not self.running():
            raise HarnessError("daemon is not running")
        self.proc.send_signal(sig)

    def wait(self, timeout=30):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise TimeoutError(f"daemon still running after {timeout}s\n--- log tail ---\n"
                               f"{self.log_tail()}") from e
        finally:
            if self.proc.poll() is not None and self._log_handle:
                self._log_handle.close()
                self._log_handle = None

    def kill(self):
        if self.running():
            self.proc.send_signal(_signal.SIGKILL)
        return self.wait(10) if self.proc else None

    def stop(self):
        """SIGTERM, wait up to 30 s, then SIGKILL. Returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.running():
            self.proc.send_signal(_signal.SIGTERM)
            try:
                return self.wait(30)
            except TimeoutError:
                return self.kill()
        return self.wait(1)

    def run_oneshot(self, *args, timeout=60, config=True):
        """Run the binary to completion (e.g. --install-schema): CompletedProcess with text output.
        With config=True (the default) `-c <config file>` comes first."""
        if config and not self.config_path.exists():
            self.write_config()
        cmd = [str(self.binary)] + (["-c", str(self.config_path)] if config else [])
        return subprocess.run(cmd + list(map(str, args)), capture_output=True, text=True,
                              timeout=timeout, cwd=self.workdir)


# -- the schema ------------------------------------------------------------------------------

def render_schema(schema=SCHEMA_NAME):
    """daemon/schema.sql with @schema@ replaced by the quoted schema name, as the daemon does."""
    quoted = '"' + schema.replace('"', '""') + '"'
    return SCHEMA_FILE.read_text().replace("@schema@", quoted)


_binary_verdict = {}  # (binary, mtime, schema mtime) -> bool: binary embeds the current file


def _binary_matches_file(binary):
    key = (str(binary), binary.stat().st_mtime, SCHEMA_FILE.stat().st_mtime)
    if key not in _binary_verdict:
        try:
            proc = subprocess.run([str(binary), "--schema-sql"], capture_output=True, text=True,
                                  timeout=30)
            ok = proc.returncode == 0 and proc.stdout.strip() == render_schema().strip()
        except (OSError, subprocess.SubprocessError):
            ok = False
        if not ok:
            warnings.warn(f"{binary} --schema-sql differs from {SCHEMA_FILE} (stale build?): "
                          "installing the schema from the file")
        _binary_verdict[key] = ok
    return _binary_verdict[key]


def _conninfo_of(conn_or_conninfo):
    if isinstance(conn_or_conninfo, str):
        return conn_or_conninfo
    return conn_or_conninfo.info.dsn


def install_schema(conn, binary=None, workdir=None):
    """Apply the queue schema to the database of CONN (a psycopg connection or a conninfo).

    Uses `backfilld --install-schema` when the binary exists and embeds the current
    daemon/schema.sql; otherwise runs the file in one transaction, as the installer does.
    Returns "binary" or "file"."""
    binary = Path(binary) if binary else default_binary()
    conninfo = _conninfo_of(conn)
    if binary.exists() and os.environ.get("BACKFILLD_SCHEMA_FROM") != "file" \
            and _binary_matches_file(binary):
        with tempfile.TemporaryDirectory(prefix="bfl-install-", dir=workdir) as tmp:
            daemon = Daemon(binary, tmp, base_config(conninfo))
            proc = daemon.run_oneshot("--install-schema")
        if proc.returncode == 0:
            return "binary"
        warnings.warn(f"backfilld --install-schema exited {proc.returncode}: "
                      f"{proc.stderr.strip()[-2000:]}; installing from {SCHEMA_FILE}")
    sql = render_schema()
    if isinstance(conn, str):
        with psycopg.connect(conn, autocommit=True) as c:
            _install_from_file(c, sql)
    else:
        _install_from_file(conn, sql)
    return "file"


def _install_from_file(conn, sql):
    # Without parameters psycopg sends the text with the simple protocol: many statements at once.
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('backfilld.install-schema'))")
        conn.execute(sql)
