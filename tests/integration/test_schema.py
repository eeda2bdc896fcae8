"""The queue schema (daemon/schema.sql) against a real server: validation, steering, NOTIFY, the
daemon's functions and the progress view. No daemon binary needed. The last section checks the
harness itself (standby, libconfig rendering, the Daemon wrapper)."""

import datetime as dt
import re
import signal
import sys
import textwrap
import threading
import time

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

import bfhelp
import pgharness
from bfhelp import job

# -- helpers ------------------------------------------------------------------------------------


def insert_job(conn, **cols):
    """bfhelp.insert_job on CONN, on items with set_sql v = v + 1 unless COLS say otherwise; the
    new row as a dict."""
    cols.setdefault("target", "items")
    if cols.get("kind", "update") == "update" and "set_sql" not in cols:
        cols["set_sql"] = "v = v + 1"
    return bfhelp.insert_job(conn, **cols)


def refused(conn, statement, params=None):
    """Run STATEMENT, which must fail; return the error."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(statement, params)
    return info.value


def refused_insert(conn, **cols):
    with pytest.raises(psycopg.Error) as info:
        insert_job(conn, **cols)
    return info.value


def claim(dconn, owner, lease_ms=5000, exclude=()):
    with dconn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM backfill._claim(%s, %s, %s::bigint[])",
                           [owner, lease_ms, list(exclude)]).fetchone()


def checkpoint(dconn, job_id, owner, scanned, changed=0, first=None, last=None, limit=100,
               lease_ms=5000, sleep_ms=7, batch_size_now=100, sleep_ms_now=5, lag_bytes=11,
               lag_ms=12, blocked=1, reason=None, slice=None):
    """What the daemon does at the end of a batch: the GUCs, then _checkpoint, in one transaction."""
    with dconn.transaction():
        dconn.execute("SELECT set_config('backfilld.lsn0', pg_current_wal_insert_lsn()::text, true)")
        dconn.execute("CREATE TEMP TABLE IF NOT EXISTS wal_filler (x int)")  # some WAL
        dconn.execute(
            "SELECT set_config('backfilld.scanned', %s, true), set_config('backfilld.changed', %s, true),"
            " set_config('backfilld.first_key', %s, true), set_config('backfilld.last_key', %s, true)",
            [str(scanned), str(changed), first or "", last or ""])
        with dconn.cursor(row_factory=dict_row) as cur:
            return cur.execute(
                "SELECT * FROM backfill._checkpoint(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [job_id, owner, lease_ms, limit, sleep_ms, batch_size_now, sleep_ms_now,
                 lag_bytes, lag_ms, blocked, reason, slice]).fetchone()


@pytest.fixture
def conn(db):
    """A user's session, with a few tables to point jobs at."""
    c = db.connect()
    c.execute(textwrap.dedent("""
        CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0, note text);
        CREATE TABLE items2 (id bigint PRIMARY KEY, v int);
        CREATE TABLE pairs (b int, a int, x int, PRIMARY KEY (b, a));
        CREATE TABLE nokey (id int NOT NULL, email text, code text NOT NULL, tenant int NOT NULL,
                            CONSTRAINT nokey_tenant_id UNIQUE (tenant, id));
        CREATE UNIQUE INDEX nokey_code_partial ON nokey (code) WHERE code <> '';
        CREATE UNIQUE INDEX nokey_email ON nokey (email);
        CREATE VIEW items_view AS SELECT * FROM items;
        CREATE TEMP TABLE temp_items (id bigint PRIMARY KEY, v int);
        INSERT INTO items (id) SELECT generate_series(1, 1000);
        ANALYZE items;
    """))
    return c


@pytest.fixture
def dconn(db):
    """A session that writes as the schema's own functions do (the daemon's side)."""
    return db.connect(daemon=True)


@pytest.fixture
def role(db, make_role):
    """A login role allowed to submit jobs (make_role), and to UPDATE backfill.jobs beyond
    backfill_submit (definitions too)."""
    name = make_role("backfill_submit")
    db.sql(f'GRANT UPDATE ON backfill.jobs TO "{name}"')
    return name


# -- installation ------------------------------------------------------------------------------


@pytest.mark.versions
def test_install_twice_is_idempotent(db):
    snapshot = ("SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                "        WHERE n.nspname = 'backfill'),"
                "       (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                "        WHERE n.nspname = 'backfill'),"
                "       (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'backfill.jobs'::regclass"
                "        AND NOT tgisinternal)")
    before = db.sql(snapshot)
    db.sql("CREATE TABLE t (id int PRIMARY KEY)")
    db.sql("INSERT INTO backfill.jobs (target, kind, mismatch_sql) VALUES ('t', 'verify', 'false')")
    with db.connect() as c:
        pgharness.install_schema(c)
        pgharness.install_schema(c)
    assert db.sql("SELECT version FROM backfill.schema_version") == [(3,)]
    assert db.sql(snapshot) == before
    assert before[0][1] >= 15 and before[0][2] == 3  # validate, notify on INSERT, notify on a new state
    assert db.one("SELECT count(*) FROM backfill.jobs") == 1  # data survives


def test_schema_file_has_no_transaction_control_and_quotes_the_name(db):
    text = pgharness.SCHEMA_FILE.read_text()
    code = "\n".join(line.split("--")[0] for line in text.splitlines())
    for word in ("BEGIN;", "COMMIT", "ROLLBACK", "START TRANSACTION"):
        assert word not in code.upper().replace("BEGIN\n", ""), word
    assert "backfill." not in code  # every schema reference goes through @schema@
    # Installed under an awkward name, it works, and the channel name stays fixed.
    with db.connect() as c:
        c.execute(pgharness.render_schema('Queue "X"'))
        c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        c.execute("LISTEN backfill_jobs")
        got = []
        c.add_notify_handler(lambda n: got.append(n.payload))
        row = c.execute('INSERT INTO "Queue ""X""".jobs (target, kind, mismatch_sql)'
                        " VALUES ('t', 'verify', 'false') RETURNING key_columns").fetchone()
        assert row == (["id"],)
        c.execute("SELECT 1")
        assert got == ["1 pending"]


def test_install_refuses_a_newer_schema(db):
    db.sql("UPDATE backfill.schema_version SET version = 4")
    with db.connect() as c:
        err = refused(c, pgharness.render_schema())
    assert "version 4, newer than this backfilld" in str(err)
    assert db.sql("SELECT version FROM backfill.schema_version") == [(4,)]


def test_schema_version_has_exactly_one_row(db):
    err = refused(db.connect(), "INSERT INTO backfill.schema_version VALUES (1)")
    assert err.sqlstate == "23505"


# -- INSERT validation -------------------------------------------------------------------------

BAD_INSERTS = [
    (dict(kind="upsert"), r'unknown kind "upsert": use update, statement or verify'),
    (dict(set_sql=None), r"set_sql is required for update jobs"),
    (dict(set_sql="  \n "), r"set_sql is required for update jobs"),
    (dict(kind="statement", batch_sql="SELECT $1, $2", set_sql="v = 1"),
     r"set_sql is only used by update jobs"),
    (dict(kind="statement", set_sql=None), r"batch_sql is required for statement jobs"),
    (dict(kind="verify", set_sql=None), r"mismatch_sql is required for verify jobs"),
    (dict(batch_sql="SELECT 1"), r"batch_sql is only used by statement jobs"),
    (dict(mismatch_sql="v <> 0"), r"mismatch_sql is only used by verify jobs"),
    (dict(kind="statement", set_sql=None, batch_sql="SELECT $1, $2", where_sql="true"),
     r"where_sql is only used by update jobs"),
    (dict(key_columns=["nope"]), r'key column "nope" does not exist in table public.items'),
    (dict(target="nokey", key_columns=["email"]),
     r'key column "email" of table public.nokey is nullable: key columns must be NOT NULL'),
    (dict(key_columns=["v"]), r"key_columns \(v\) of table public.items are not the key of a unique index"),
    (dict(target="nokey", key_columns=["id", "tenant"]),
     r"key_columns \(id, tenant\) of table public.nokey are not the key of a unique index"),
    (dict(target="nokey", key_columns=["code"]), r"key_columns \(code\) .* not the key of a unique"),
    (dict(key_columns=["id", "id"]), r'key_columns names column "id" twice'),
    (dict(key_columns=[]), r"key_columns must list at least one column"),
    (dict(target="nokey"), r"table public.nokey has no primary key: name key_columns"),
    (dict(target="items_view"), r"target public.items_view is not a table"),
    (dict(target="backfill.batches"), r"target backfill.batches is a table of the queue itself"),
    (dict(target="pairs", kind="statement", set_sql=None, batch_sql="SELECT $1, $2"),
     r"statement jobs need a single-column key: \$1 and \$2 carry the first and last key"),
    (dict(set_sql="v = 1, id = id + 10000000"), r'set_sql assigns key column "id", the key the job walks'),
    (dict(set_sql="(note, id) = ('x', -id)"), r'set_sql assigns key column "id"'),
    (dict(target="pairs", set_sql="x = 1, a = a"), r'set_sql assigns key column "a"'),
    (dict(target="temp_items"), r"target temp_items is a temporary table"),
    (dict(batch_size=0), r"batch_size must be > 0 \(got 0\)"),
    (dict(max_replication_lag_bytes=-5), r"max_replication_lag_bytes must be > 0 \(got -5\)"),
    (dict(lock_timeout_ms=0), r"lock_timeout_ms must be > 0"),
    (dict(sleep_ms=-1), r"sleep_ms must be >= 0 \(got -1\)"),
    (dict(max_failed_rows=-1), r"max_failed_rows must be >= 0"),
    (dict(parallel=0), r"parallel must be > 0 \(got 0\)"),
    (dict(min_batch_size=500, max_batch_size=100),
     r"min_batch_size \(500\) must not exceed max_batch_size \(100\)"),
    (dict(batch_size=5, min_batch_size=10),
     r"batch_size \(5\) must lie between min_batch_size \(10\) and max_batch_size"),
    (dict(sleep_ms=100, max_sleep_ms=50), r"sleep_ms \(100\) must not exceed max_sleep_ms \(50\)"),
    (dict(state="running"), r"a new job's state must be pending or paused, not \"running\""),
    (dict(state="done"), r"must be pending or paused, not \"done\""),
    (dict(owner="me:1"), r"column owner is written by the daemon"),
    (dict(lease_until=dt.datetime.now(dt.timezone.utc)), r"column lease_until is written by the daemon"),
    (dict(rows_scanned=5), r"column rows_scanned is written by the daemon"),
    (dict(last_key=["7"]), r"column last_key is written by the daemon"),
    (dict(finished_at=dt.datetime.now(dt.timezone.utc)), r"column finished_at is written by the daemon"),
    (dict(estimated_seconds=3), r"column estimated_seconds is written by the daemon"),
]


@pytest.mark.parametrize("cols,message", BAD_INSERTS, ids=[m[:40] for _, m in BAD_INSERTS])
def test_malformed_insert_is_refused(conn, cols, message):
    err = refused_insert(conn, **cols)
    assert err.sqlstate == "23514", (err.sqlstate, str(err))
    assert re.search(message, err.diag.message_primary), err.diag.message_primary
    assert conn.execute("SELECT count(*) FROM backfill.jobs").fetchone() == (0,)


def test_run_as_cannot_name_another_role(conn, role):
    err = refused_insert(conn, run_as=role)
    assert "run_as is the role that inserts the job and cannot be set to another role" in str(err)
    assert err.sqlstate == "23514"
    # Inserted as that role, the job runs as it; naming oneself is allowed.
    conn.execute(f"GRANT SELECT ON items TO {role}")
    conn.execute(f"SET ROLE {role}")
    row = insert_job(conn, run_as=role)
    assert row["run_as"] == role
    assert insert_job(conn, priority=1)["run_as"] == role
    err = refused_insert(conn, run_as="postgres")
    assert "cannot be set to another role" in str(err)
    conn.execute("RESET ROLE")


def test_good_job_gets_defaults(conn):
    row = insert_job(conn, name="copy", set_sql="v = 1", where_sql="v IS DISTINCT FROM 1")
    assert row["key_columns"] == ["id"]
    assert row["run_as"] == "postgres"
    assert row["state"] == "pending" and row["kind"] == "update" and row["parallel"] == 1
    assert (row["rows_scanned"], row["rows_changed"], row["batches"], row["failed_rows"]) == (0, 0, 0, 0)
    assert row["owner"] is None and row["updated_at"] is not None
    paused = insert_job(conn, state="paused", batch_size=50, min_batch_size=10, max_batch_size=50)
    assert paused["state"] == "paused"


def test_key_columns_filled_from_composite_pk_in_index_order(conn):
    row = insert_job(conn, target="pairs", set_sql="x = a + b")
    assert row["key_columns"] == ["b", "a"]
    # A unique constraint in its own column order is accepted; a statement job with a one-column PK too.
    assert insert_job(conn, target="nokey", key_columns=["tenant", "id"],
                      set_sql="code = code")["key_columns"] == ["tenant", "id"]
    stmt = insert_job(conn, kind="statement", batch_sql="SELECT $1::bigint, $2::bigint")
    assert stmt["key_columns"] == ["id"]
    verify = insert_job(conn, kind="verify", mismatch_sql="v <> 0")
    assert verify["kind"] == "verify"


def test_key_with_include_columns_and_partitioned_target(conn):
    conn.execute("""CREATE TABLE inc (a int NOT NULL, b int NOT NULL, c int,
                                      CONSTRAINT inc_u UNIQUE (a) INCLUDE (b))""")
    assert insert_job(conn, target="inc", key_columns=["a"], set_sql="c = 1")["key_columns"] == ["a"]
    err = refused_insert(conn, target="inc", key_columns=["a", "b"], set_sql="c = 1")
    assert "not the key of a unique index" in str(err)
    conn.execute("""CREATE TABLE parted (id int, k int, v int, PRIMARY KEY (k, id)) PARTITION BY RANGE (k);
                    CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
                    CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM (10) TO (20);
                    INSERT INTO parted SELECT g, g % 20, 0 FROM generate_series(1, 400) g;
                    ANALYZE parted""")
    row = insert_job(conn, target="parted", set_sql="v = 1")
    assert row["key_columns"] == ["k", "id"]
    # _estimate_rows sums the leaf partitions
    assert conn.execute("SELECT backfill._estimate_rows('parted')").fetchone() == (400,)


# -- NOTIFY ------------------------------------------------------------------------------------


def collect_notifies(listener, want, timeout=5.0):
    got = listener.bfl_got
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        listener.execute("SELECT 1")  # notifications arrive with any round trip
        time.sleep(0.02)
    return list(got)


def test_notify_on_insert_and_on_state_change(db, conn):
    listener = db.connect()
    listener.bfl_got = []
    listener.add_notify_handler(
        lambda n: listener.bfl_got.append((n.channel, n.payload)))
    listener.execute("LISTEN backfill_jobs")
    j = insert_job(conn)
    assert collect_notifies(listener, 1) == [("backfill_jobs", f"{j['id']} pending")]
    conn.execute("UPDATE backfill.jobs SET priority = 3, batch_size = 10 WHERE id = %s", [j["id"]])
    conn.execute("UPDATE backfill.jobs SET state = 'paused' WHERE id = %s", [j["id"]])
    # Notifications from one session arrive in commit order: none came from the priority change.
    got = collect_notifies(listener, 2)
    assert got == [("backfill_jobs", f"{j['id']} pending"), ("backfill_jobs", f"{j['id']} paused")]
    # A rolled-back insert notifies nobody.
    with conn.transaction(force_rollback=True):
        insert_job(conn)
    conn.execute("SELECT backfill.cancel(%s)", [j["id"]])
    assert collect_notifies(listener, 3)[2:] == [("backfill_jobs", f"{j['id']} cancelled")]


# -- steering ------------------------------------------------------------------------------------


def test_pause_resume_cancel(conn):
    jid = insert_job(conn)["id"]
    assert conn.execute("SELECT backfill.pause(%s)", [jid]).fetchone() == ("paused",)
    assert conn.execute("SELECT backfill.pause(%s)", [jid]).fetchone() == ("paused",)  # repeatable
    assert conn.execute("SELECT backfill.resume(%s)", [jid]).fetchone() == ("pending",)
    assert conn.execute("SELECT backfill.resume(%s)", [jid]).fetchone() == ("pending",)
    assert conn.execute("SELECT backfill.cancel(%s)", [jid]).fetchone() == ("cancelled",)
    row = job(conn, jid)
    assert row["finished_at"] is not None
    assert conn.execute("SELECT backfill.resume(%s)", [jid]).fetchone() == ("pending",)
    row = job(conn, jid)
    assert row["state"] == "pending" and row["finished_at"] is None
    err = refused(conn, "SELECT backfill.pause(%s)", [jid + 100])
    assert f"job {jid + 100} does not exist" in str(err)
    assert err.sqlstate == "P0002"


def test_refused_state_changes(conn, dconn):
    jid = insert_job(conn)["id"]
    for state in ("running", "done", "failed"):
        err = refused(conn, "UPDATE backfill.jobs SET state = %s WHERE id = %s", [state, jid])
        assert f"state {state} is set by the daemon" in str(err), str(err)
    conn.execute("SELECT backfill.cancel(%s)", [jid])
    err = refused(conn, "SELECT backfill.pause(%s)", [jid])
    assert f"job {jid} cannot go from cancelled to paused" in str(err)
    # done is final
    conn.execute("SELECT backfill.resume(%s)", [jid])
    dconn.execute("UPDATE backfill.jobs SET state = 'done' WHERE id = %s", [jid])
    for fn in ("resume", "pause", "cancel"):
        err = refused(conn, f"SELECT backfill.{fn}(%s)", [jid])
        assert f"job {jid} is done: its state cannot change" in str(err)
    assert job(conn, jid)["state"] == "done"


def test_failed_job_resumes_with_error_cleared(conn, dconn):
    jid = insert_job(conn)["id"]
    claim(dconn, "a")
    assert dconn.execute("SELECT backfill._release(%s, 'a', 'failed', 'boom (XX000)')",
                         [jid]).fetchone() == ("failed",)
    row = job(conn, jid)
    assert row["last_error"] == "boom (XX000)" and row["finished_at"] is not None
    err = refused(conn, "SELECT backfill.pause(%s)", [jid])
    assert "cannot go from failed to paused" in str(err)
    assert conn.execute("SELECT backfill.resume(%s)", [jid]).fetchone() == ("pending",)
    row = job(conn, jid)
    assert row["last_error"] is None and row["finished_at"] is None


def test_user_updates_of_daemon_columns_and_definition(conn, dconn):
    jid = insert_job(conn)["id"]
    for col, val in (("owner", "x"), ("rows_scanned", 9), ("last_key", ["5"]), ("run_as", "nobody"),
                     ("throttled_reason", "x"), ("created_at", dt.datetime(2000, 1, 1))):
        err = refused(conn, sql.SQL("UPDATE backfill.jobs SET {} = %s WHERE id = %s").format(
            sql.Identifier(col)), [val, jid])
        assert f"column {col} is written by the daemon" in str(err)
    # Sizes change any time, but stay validated; the definition only while not running.
    conn.execute("UPDATE backfill.jobs SET set_sql = 'v = 2' WHERE id = %s", [jid])
    claim(dconn, "a")
    conn.execute("UPDATE backfill.jobs SET batch_size = 77 WHERE id = %s", [jid])
    err = refused(conn, "UPDATE backfill.jobs SET batch_size = 0 WHERE id = %s", [jid])
    assert "batch_size must be > 0" in str(err)
    err = refused(conn, "UPDATE backfill.jobs SET set_sql = 'v = 3' WHERE id = %s", [jid])
    assert f"column set_sql of job {jid} cannot change while it is running" in str(err)
    conn.execute("SELECT backfill.pause(%s)", [jid])
    err = refused(conn, "UPDATE backfill.jobs SET kind = 'statement' WHERE id = %s", [jid])
    assert "set_sql is only used by update jobs" in str(err)  # re-validated as at INSERT
    conn.execute("UPDATE backfill.jobs SET set_sql = 'v = 3' WHERE id = %s", [jid])
    assert job(conn, jid)["set_sql"] == "v = 3"


def test_key_change_restarts_from_the_beginning(conn, dconn):
    jid = insert_job(conn, target="nokey", key_columns=["tenant", "id"], set_sql="code = code")["id"]
    dconn.execute("UPDATE backfill.jobs SET last_key = '{1,2}' WHERE id = %s", [jid])
    conn.execute("UPDATE backfill.jobs SET set_sql = 'code = upper(code)' WHERE id = %s", [jid])
    assert job(conn, jid)["last_key"] == ["1", "2"]  # same key: the checkpoint holds
    conn.execute("UPDATE backfill.jobs SET target = 'items', key_columns = NULL WHERE id = %s", [jid])
    row = job(conn, jid)
    assert row["key_columns"] == ["id"] and row["last_key"] is None


def test_only_run_as_rewrites_a_job_definition(conn, role):
    jid = insert_job(conn)["id"]  # run_as postgres
    conn.execute(f"SET ROLE {role}")
    # Row-level security: another submitter does not see the job, so cannot change it.
    assert conn.execute("UPDATE backfill.jobs SET set_sql = 'v = 9' WHERE id = %s", [jid]).rowcount == 0
    # Steering is the job's role's too: another submitter cannot pause or cancel it.
    err = refused(conn, "SELECT backfill.pause(%s)", [jid])
    assert "is not a job of a role you are a member of" in str(err)
    conn.execute("RESET ROLE")
    assert job(conn, jid)["set_sql"] == "v = v + 1"
    assert conn.execute("SELECT backfill.pause(%s)", [jid]).fetchone() == ("paused",)


def test_daemon_session_cannot_change_what_a_job_runs(conn, dconn):
    jid = insert_job(conn)["id"]
    changes = {"set_sql": "v = 0", "run_as": "nobody", "target": "items2", "kind": "verify",
               "key_columns": ["v"], "where_sql": "true", "batch_sql": "SELECT 1",
               "mismatch_sql": "true", "parallel": 2, "created_at": "2020-01-01",
               "hold_when_sql": "false"}
    # Every definition column is guarded (the trigger compares them one by one for speed).
    guarded = dconn.execute("SELECT backfill._definition_columns()").fetchone()[0]
    assert set(guarded) | {"run_as", "created_at"} == set(changes), guarded
    for col, val in changes.items():
        err = refused(dconn, sql.SQL("UPDATE backfill.jobs SET {} = %s WHERE id = %s").format(
            sql.Identifier(col)), [val, jid])
        assert f"column {col} of job {jid} cannot be changed by backfilld" in str(err)
    # The daemon's own columns it may write.
    dconn.execute("UPDATE backfill.jobs SET rows_scanned = 5, throttled_reason = 'x' WHERE id = %s", [jid])
    dconn.execute("UPDATE backfill.jobs SET rows_estimate = 5 WHERE id = %s", [jid])
    assert job(conn, jid)["rows_estimate"] == 5


# -- daemon functions ----------------------------------------------------------------------------


def test_daemon_functions_refuse_user_sessions(conn, role):
    insert_job(conn)
    conn.execute(f"SET ROLE {role}")
    for call in ["SELECT * FROM backfill._claim('a', 1000, '{}')",
                 "SELECT * FROM backfill._renew('a', '{1}', 1000)",
                 "SELECT backfill._release(1, 'a', 'done', NULL)",
                 "SELECT backfill._set_reason('a', '{1}', 'x')",
                 "SELECT backfill._dry_run_done(1, 'a', 1, 1)"]:
        err = refused(conn, call)
        assert err.sqlstate == "42501", (call, err)
    conn.execute("RESET ROLE")
    assert conn.execute("SELECT state FROM backfill.jobs").fetchall() == [("pending",)]


def test_claim_order_priority_then_id(conn, dconn):
    conn.execute("CREATE TABLE t1 (id int PRIMARY KEY); CREATE TABLE t2 (id int PRIMARY KEY);"
                 "CREATE TABLE t3 (id int PRIMARY KEY); CREATE TABLE t4 (id int PRIMARY KEY)")
    low = insert_job(conn, target="t1", kind="verify", mismatch_sql="false")["id"]
    high_a = insert_job(conn, target="t2", kind="verify", mismatch_sql="false", priority=5)["id"]
    high_b = insert_job(conn, target="t3", kind="verify", mismatch_sql="false", priority=5)["id"]
    paused = insert_job(conn, target="t4", kind="verify", mismatch_sql="false", priority=9, state="paused")["id"]
    got = [claim(dconn, owner)["id"] for owner in ("a", "b", "c")]
    assert got == [high_a, high_b, low]
    assert claim(dconn, "d") is None
    row = job(conn, high_a)
    assert row["state"] == "running" and row["owner"] == "a" and row["started_at"] is not None
    assert row["lease_until"] > row["started_at"]
    assert job(conn, paused)["state"] == "paused"
    # p_exclude skips, and an owner gets its own running job back
    assert claim(dconn, "a", exclude=[high_a]) is None
    assert claim(dconn, "a")["id"] == high_a


def test_claim_fills_rows_estimate_from_reltuples(conn, dconn):
    jid = insert_job(conn)["id"]
    row = claim(dconn, "a")
    assert row["id"] == jid and row["rows_estimate"] == 1000


def test_claim_honours_not_before(conn, dconn):
    later = insert_job(conn, not_before=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))["id"]
    now = insert_job(conn, target="items2", set_sql="v = 1",
                     not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1))["id"]
    assert claim(dconn, "a")["id"] == now
    assert claim(dconn, "b") is None
    assert job(conn, later)["state"] == "pending"
    conn.execute("UPDATE backfill.jobs SET not_before = now() - interval '1 s' WHERE id = %s", [later])
    assert claim(dconn, "b")["id"] == later


def test_no_second_running_job_on_one_target(conn, dconn):
    first = insert_job(conn)["id"]
    second = insert_job(conn, priority=1, state="paused")["id"]
    assert claim(dconn, "a")["id"] == first
    conn.execute("SELECT backfill.resume(%s)", [second])
    assert claim(dconn, "b") is None  # higher priority, but its table is busy
    checkpoint(dconn, first, "a", scanned=0, limit=10)  # first is done
    assert job(conn, first)["state"] == "done"
    assert claim(dconn, "b")["id"] == second
    # the unique index is the backstop
    third = insert_job(conn)["id"]
    err = refused(dconn, "UPDATE backfill.jobs SET state = 'running' WHERE id = %s", [third])
    assert err.sqlstate == "23505"


def test_claims_are_serialised(db, conn):
    first = insert_job(conn)["id"]
    second = insert_job(conn)["id"]  # same table
    a, b = db.connect(daemon=True), db.connect(daemon=True)
    result = {}
    with a.transaction():
        assert claim(a, "a")["id"] == first
        thread = threading.Thread(target=lambda: result.update(row=claim(b, "b")))
        thread.start()
        # b skips the locked row and takes the second job, whose table a's claim holds: it waits
        # on the unique index for a's claim to commit, then claims nothing
        pgharness.wait_until(lambda: conn.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0],
            timeout=10, what="the second claim to wait")
        assert thread.is_alive()
    thread.join(10)
    assert not thread.is_alive() and result["row"] is None
    assert job(conn, second)["state"] == "pending"


def test_expired_lease_is_taken_over(conn, dconn):
    jid = insert_job(conn)["id"]
    assert claim(dconn, "a", lease_ms=60000)["id"] == jid
    assert claim(dconn, "b") is None  # lease still valid
    dconn.execute("UPDATE backfill.jobs SET lease_until = now() - interval '1 s' WHERE id = %s", [jid])
    row = claim(dconn, "b")
    assert row["id"] == jid and row["owner"] == "b"
    assert row["lease_until"] > dt.datetime.now(dt.timezone.utc)


def test_checkpoint_fencing_raises_bfl01(conn, dconn):
    jid = insert_job(conn)["id"]
    claim(dconn, "a")
    with pytest.raises(psycopg.Error) as info:
        checkpoint(dconn, jid, "b", scanned=100, first="{1}", last="{100}")
    assert info.value.sqlstate == "BFL01"
    assert f"job {jid} lease lost: another instance owns it now" in str(info.value)
    row = job(conn, jid)
    assert row["owner"] == "a" and row["batches"] == 0
    assert conn.execute("SELECT count(*) FROM backfill.batches").fetchone() == (0,)


def test_checkpoint_counts_and_marks_done(conn, dconn):
    jid = insert_job(conn)["id"]
    claim(dconn, "a")
    res = checkpoint(dconn, jid, "a", scanned=100, changed=40, first="{1}", last="{100}",
                     limit=100, reason="replication_lag", batch_size_now=100, sleep_ms_now=5)
    wal = res.pop("wal_bytes")
    lsn = res.pop("wal_lsn")  # the server's insert position then: at least where the batch began
    assert conn.execute("SELECT %s::pg_lsn <= pg_current_wal_insert_lsn()", [lsn]).fetchone() == (True,)
    assert res == {"state": "running", "rows_scanned": 100, "rows_changed": 40, "batches": 1,
                   "rows_estimate": 1000, "slice_done": None, "run_window": None}
    assert wal > 0  # the checkpoint's own writes at least
    assert conn.execute("SELECT wal_bytes FROM backfill.batches WHERE job_id = %s", [jid]).fetchone() == (wal,)
    row = job(conn, jid)
    assert row["last_key"] == ["100"] and row["throttled_reason"] == "replication_lag"
    assert row["batch_size_now"] == 100 and row["sleep_ms_now"] == 5 and row["owner"] == "a"
    # An empty batch keeps the checkpoint; a short one ends the job.
    res = checkpoint(dconn, jid, "a", scanned=0, limit=100)
    assert res["state"] == "done" and res["batches"] == 2 and res["rows_scanned"] == 100
    row = job(conn, jid)
    assert row["last_key"] == ["100"]
    assert row["owner"] is None and row["lease_until"] is None and row["throttled_reason"] is None
    assert row["finished_at"] is not None
    with conn.cursor(row_factory=dict_row) as cur:
        batches = cur.execute("SELECT * FROM backfill.batches ORDER BY batch").fetchall()
    assert [b["batch"] for b in batches] == [1, 2]
    b = batches[0]
    assert (b["first_key"], b["last_key"], b["rows_scanned"], b["rows_changed"]) == (["1"], ["100"], 100, 40)
    assert (b["sleep_ms"], b["lag_bytes"], b["lag_ms"], b["blocked_sessions"], b["batch_size"]) == (7, 11, 12, 1, 100)
    assert b["throttled_reason"] == "replication_lag"
    assert b["duration_ms"] >= 0 and b["wal_bytes"] > 0
    assert batches[1]["first_key"] is None and batches[1]["last_key"] is None


def test_checkpoint_after_user_pause_or_cancel_lets_go(conn, dconn):
    paused = insert_job(conn)["id"]
    cancelled = insert_job(conn, target="items2", set_sql="v = 1")["id"]
    claim(dconn, "a")
    claim(dconn, "a", exclude=[paused])
    conn.execute("SELECT backfill.pause(%s), backfill.cancel(%s)", [paused, cancelled])
    assert job(conn, cancelled)["finished_at"] is None  # the daemon still holds it
    assert checkpoint(dconn, paused, "a", scanned=100, last="{100}")["state"] == "paused"
    assert checkpoint(dconn, cancelled, "a", scanned=100, last="{100}")["state"] == "cancelled"
    p, c = job(conn, paused), job(conn, cancelled)
    assert p["owner"] is None and p["lease_until"] is None and p["finished_at"] is None
    assert p["last_key"] == ["100"]
    assert c["owner"] is None and c["finished_at"] is not None


def make_slices(dconn, job_id, owner, cuts):
    return dconn.execute("SELECT slice, lower_key, upper_key FROM backfill._make_slices(%s, %s, %s::jsonb)",
                         [job_id, owner, cuts]).fetchall()


def test_slices_checkpoints_and_done_with_the_last(conn, dconn):
    jid = insert_job(conn, parallel=3)["id"]
    claim(dconn, "a")
    with pytest.raises(psycopg.Error) as info:
        make_slices(dconn, jid, "b", '[["300"], ["700"]]')
    assert info.value.sqlstate == "BFL01"
    assert make_slices(dconn, jid, "a", '[["300"], ["700"]]') == [
        (1, None, ["300"]), (2, ["300"], ["700"]), (3, ["700"], None)]
    # Cut again (its target or key changed): the old slices go.
    assert len(make_slices(dconn, jid, "a", '[["500"]]')) == 2
    make_slices(dconn, jid, "a", '[["300"], ["700"]]')
    res = checkpoint(dconn, jid, "a", scanned=100, last="{400}", limit=100, slice=2)
    assert res["state"] == "running" and res["slice_done"] is False and res["rows_scanned"] == 100
    row = job(conn, jid)
    assert row["last_key"] is None  # a parallel job's checkpoints are its slices'
    # Slice 1 ends (a short batch); the job goes on with the others.
    res = checkpoint(dconn, jid, "a", scanned=50, last="{300}", limit=100, slice=1)
    assert res["state"] == "running" and res["slice_done"] is True and res["batches"] == 2
    # A user's pause: the slice's checkpoint reports it but keeps the owner (other slices may
    # still have batches in flight; the daemon gives the job back once they stop).
    conn.execute("SELECT backfill.pause(%s)", [jid])
    res = checkpoint(dconn, jid, "a", scanned=100, last="{500}", limit=100, slice=2)
    assert res["state"] == "paused" and job(conn, jid)["owner"] == "a"
    assert dconn.execute("SELECT backfill._release(%s, 'a', 'paused', NULL)", [jid]).fetchone() == ("paused",)
    conn.execute("SELECT backfill.resume(%s)", [jid])
    claim(dconn, "a")
    res = checkpoint(dconn, jid, "a", scanned=7, last="{700}", limit=100, slice=2)
    assert res["state"] == "running" and res["slice_done"] is True
    res = checkpoint(dconn, jid, "a", scanned=0, limit=100, slice=3)
    assert res["state"] == "done" and res["slice_done"] is True
    row = job(conn, jid)
    assert row["owner"] is None and row["rows_scanned"] == 257 and row["finished_at"] is not None
    got = conn.execute("SELECT slice, last_key, done, rows_scanned, batches FROM backfill.slices"
                       " WHERE job_id = %s ORDER BY slice", [jid]).fetchall()
    assert got == [(1, ["300"], True, 50, 1), (2, ["700"], True, 207, 3), (3, None, True, 0, 1)]
    with pytest.raises(psycopg.Error) as info:
        checkpoint(dconn, jid, "a", scanned=1, limit=100, slice=9)
    assert info.value.sqlstate == "BFL01"
    # Users may read the slices, not write them.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with db_role_session(conn) as user:
            user.execute("DELETE FROM backfill.slices")


def db_role_session(conn):
    """The user's connection as backfill_submit alone."""
    conn.execute("SET ROLE backfill_submit")
    class _Reset:
        def __enter__(self):
            return conn

        def __exit__(self, *exc):
            conn.execute("RESET ROLE")
    return _Reset()


def test_release(conn, dconn):
    jid = insert_job(conn)["id"]
    claim(dconn, "a")
    assert dconn.execute("SELECT backfill._release(%s, 'b', 'pending', NULL)", [jid]).fetchone() == (None,)
    assert job(conn, jid)["owner"] == "a"
    assert dconn.execute("SELECT backfill._release(%s, 'a', 'pending', NULL)", [jid]).fetchone() == ("pending",)
    row = job(conn, jid)
    assert row["state"] == "pending" and row["owner"] is None and row["lease_until"] is None
    # a state the user set while the daemon held the job is kept
    claim(dconn, "a")
    conn.execute("SELECT backfill.pause(%s)", [jid])
    assert dconn.execute("SELECT backfill._release(%s, 'a', 'pending', NULL)", [jid]).fetchone() == ("paused",)
    err = refused(dconn, "SELECT backfill._release(%s, 'a', 'running', NULL)", [jid])
    assert "cannot release a job as \"running\"" in str(err)


def test_renew(conn, dconn):
    running = insert_job(conn)["id"]
    paused = insert_job(conn, target="items2", set_sql="v = 1")["id"]
    conn.execute("CREATE TABLE t3 (id int PRIMARY KEY)")
    cancelled = insert_job(conn, target="t3", kind="verify", mismatch_sql="false")["id"]
    claim(dconn, "a", lease_ms=1000)
    claim(dconn, "a", exclude=[running])
    claim(dconn, "a", exclude=[running, paused])
    before = job(conn, running)["lease_until"]
    conn.execute("SELECT backfill.pause(%s), backfill.cancel(%s)", [paused, cancelled])
    rows = dconn.execute("SELECT * FROM backfill._renew('a', %s::bigint[], 60000)",
                         [[running, paused, cancelled, 999]]).fetchall()
    # Users' steering is reported; the daemon gives such jobs back itself at a batch boundary.
    assert rows == [(running, "running", "a"), (paused, "paused", "a"), (cancelled, "cancelled", "a")]
    assert job(conn, running)["lease_until"] > before + dt.timedelta(seconds=30)
    assert job(conn, paused)["lease_until"] > before + dt.timedelta(seconds=30)
    # another owner's job is reported, not touched
    rows = dconn.execute("SELECT * FROM backfill._renew('b', %s::bigint[], 1)", [[running]]).fetchall()
    assert rows == [(running, "running", "a")]
    assert job(conn, running)["lease_until"] > before + dt.timedelta(seconds=30)


def test_set_reason_and_runnable_count(conn, dconn):
    mine = insert_job(conn)["id"]
    other = insert_job(conn, target="items2", set_sql="v = 1")["id"]
    conn.execute("CREATE TABLE t3 (id int PRIMARY KEY); CREATE TABLE t4 (id int PRIMARY KEY)")
    insert_job(conn, target="t3", kind="verify", mismatch_sql="false", state="paused")
    insert_job(conn, target="t4", kind="verify", mismatch_sql="false",
               not_before=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    assert dconn.execute("SELECT backfill._runnable_count()").fetchone() == (2,)
    claim(dconn, "a")
    claim(dconn, "b")
    dconn.execute("SELECT backfill._set_reason('a', %s::bigint[], 'paused_by_signal')", [[mine, other]])
    assert job(conn, mine)["throttled_reason"] == "paused_by_signal"
    assert job(conn, other)["throttled_reason"] is None
    assert dconn.execute("SELECT backfill._runnable_count()").fetchone() == (2,)
    checkpoint(dconn, mine, "a", scanned=0)
    assert dconn.execute("SELECT backfill._runnable_count()").fetchone() == (1,)


# -- progress ----------------------------------------------------------------------------------


def progress(conn, jid):
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM backfill.progress WHERE id = %s", [jid]).fetchone()


def add_batches(dconn, jid, specs, t0):
    """SPECS: (rows_scanned, start offset s, duration s) per batch."""
    for n, (rows, start, dur) in enumerate(specs, 1):
        dconn.execute("INSERT INTO backfill.batches (job_id, batch, rows_scanned, duration_ms, finished_at)"
                      " VALUES (%s, %s, %s, %s, %s)",
                      [jid, n, rows, dur * 1000.0, t0 + dt.timedelta(seconds=start + dur)])


def test_progress_view(conn, dconn):
    jid = insert_job(conn, name="copy")["id"]
    row = progress(conn, jid)
    assert (row["name"], row["state"], row["percent"], row["rows_per_second"], row["eta"]) == \
        ("copy", "pending", None, None, None)
    assert str(row["target"]) == "items"
    # 25 batches ending now: only the last 20 count. Those scan 20 x 10 rows from t0+5 s to t0+25 s.
    t0 = conn.execute("SELECT now() - interval '25 seconds'").fetchone()[0]
    add_batches(dconn, jid, [(1000, i, 1) for i in range(5)] + [(10, 5 + i, 1) for i in range(20)], t0)
    dconn.execute("UPDATE backfill.jobs SET rows_estimate = 1000, rows_scanned = 250, rows_changed = 7,"
                  " state = 'running', owner = 'a', throttled_reason = 'blocked_sessions' WHERE id = %s", [jid])
    row = progress(conn, jid)
    assert str(row["percent"]) == "25.0" and str(row["rows_per_second"]) == "10.0"
    # 750 rows to go at 10/s, the rate measured up to now (a moment after the last batch)
    assert dt.timedelta(seconds=74) <= row["eta"] <= dt.timedelta(seconds=78), row["eta"]
    assert row["rows_changed"] == 7 and row["throttled_reason"] == "blocked_sessions"
    # Over the estimate: never 100 before the job is done, never a negative eta.
    dconn.execute("UPDATE backfill.jobs SET rows_scanned = 1200 WHERE id = %s", [jid])
    row = progress(conn, jid)
    assert str(row["percent"]) == "99.9" and dt.timedelta(0) <= row["eta"] < dt.timedelta(seconds=1), row
    # Under 1%: no eta yet.
    dconn.execute("UPDATE backfill.jobs SET rows_scanned = 5 WHERE id = %s", [jid])
    row = progress(conn, jid)
    assert str(row["percent"]) == "0.5" and row["eta"] is None
    # Done: 100 whatever the counters say, and no eta.
    dconn.execute("UPDATE backfill.jobs SET state = 'done', owner = NULL WHERE id = %s", [jid])
    row = progress(conn, jid)
    assert str(row["percent"]) == "100.0" and row["eta"] is None
    assert str(row["rows_per_second"]) == "10.0"


# -- the harness itself ------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["pg_basebackup", pytest.param("backup_api", marks=pytest.mark.versions)])
def test_standby_replays_a_row(cluster, tmp_path, via):
    """Both ways the harness makes a standby: pg_basebackup, and (where there is no pg_basebackup,
    as in the npm packages of other majors) a copy between pg_backup_start and pg_backup_stop."""
    standby = cluster.make_standby(tmp_path / "standby", via=via)
    try:
        assert standby.sql("SELECT pg_is_in_recovery()") == [(True,)]
        # Recovery renamed the backup's label, which says who took it.
        label = (standby.datadir / "backup_label.old").read_text()
        assert ("LABEL: pgharness" in label) == (via == "backup_api"), label
        cluster.sql("CREATE TABLE IF NOT EXISTS harness_repl (v text)")
        cluster.sql("INSERT INTO harness_repl VALUES ('hello')")
        pgharness.wait_until(
            lambda: standby.sql("SELECT to_regclass('harness_repl') IS NOT NULL")[0][0]
            and standby.sql("SELECT v FROM harness_repl") == [("hello",)],
            timeout=30, what="the row on the standby")
        rows = cluster.sql("SELECT state FROM pg_stat_replication WHERE client_addr IS NOT NULL")
        assert ("streaming",) in rows
    finally:
        standby.destroy()
        cluster.sql("DROP TABLE IF EXISTS harness_repl")
    assert not (tmp_path / "standby").exists()


def test_to_libconfig():
    cfg = pgharness.base_config("host=h dbname=\"x\"", daemon={"workers": 3},
                                throttle={"standbys": ["s1", "s2"], "logical_slots": False,
                                          "max_replication_lag_bytes": 2**40, "sleep_ms": None})
    text = pgharness.to_libconfig(cfg)
    assert 'conninfo = "host=h dbname=\\"x\\"";' in text
    assert "workers = 3;" in text and "poll_interval_ms = 500;" in text  # merged, not replaced
    assert 'standbys = ["s1", "s2"];' in text and "logical_slots = false;" in text
    assert "max_replication_lag_bytes = 1099511627776L;" in text
    assert "sleep_ms" not in text
    assert text.startswith("database: {\n") and "\n};\ndaemon: {\n" in text


def test_daemon_wrapper_with_a_stand_in_binary(tmp_path):
    fake = tmp_path / "fake-backfilld"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import signal, sys, time
        print("config", sys.argv[2], flush=True)
        if "--once" in sys.argv:
            print("once", flush=True); sys.exit(3)
        signal.signal(signal.SIGUSR1, lambda *a: print("got SIGUSR1", flush=True))
        signal.signal(signal.SIGTERM, lambda *a: (print("bye", flush=True), sys.exit(0)))
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """))
    fake.chmod(0o755)
    d = pgharness.Daemon(fake, tmp_path / "w", pgharness.base_config("dbname=x"))
    proc = d.run_oneshot("--once")
    assert proc.returncode == 3 and "once" in proc.stdout
    assert 'conninfo = "dbname=x";' in d.config_path.read_text()
    d.start()
    d.wait_for_log(r"^ready$")
    mark = d.log_mark()
    d.signal(signal.SIGUSR1)
    d.wait_for_log(r"got SIGUSR1", since=mark)
    with pytest.raises(TimeoutError, match="no log line matching"):
        d.wait_for_log(r"never", timeout=0.3)
    assert d.stop() == 0 and "bye" in d.log_text()
