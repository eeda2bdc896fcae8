"""Security of the queue: privileges the schema installs, row-level security, run_as, the daemon's
own role, and what a submitter with nothing but backfill_submit can reach. The attacks on a job's
own session are in test_job_sessions.py."""

import os

import psycopg
import pytest

from bfhelp import assert_job, job, make_users, run_to_idle, submit

# The functions of the daemon's queue connection: a submitter may not call them.
QUEUE_FUNCTIONS = ["_claim", "_renew", "_release", "_set_reason", "_dry_run_done", "_runnable_count", "_set_limits",
                   "_count_states", "_set_error"]
# The functions a job's session calls (as the job's role): SECURITY DEFINER where they write.
JOB_SESSION_DEFINERS = ["_checkpoint", "_skip_row", "_record_mismatches", "_set_bounds", "_make_slices",
                        "_waiters"]


def test_public_has_nothing(db, make_role):
    nobody = make_role()
    with db.connect() as conn:
        conn.execute(f'SET ROLE "{nobody}"')
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM backfill.jobs")
    # No grant to PUBLIC anywhere in the schema.
    assert db.one("""SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                     aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
                     WHERE n.nspname = 'backfill' AND a.grantee = 0""") == 0
    assert db.one("""SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
                     aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                     WHERE n.nspname = 'backfill' AND a.grantee = 0""") == 0


def test_backfill_submit_submits_and_steers_but_cannot_act_as_the_daemon(db, make_role, role_conn):
    make_users(db, 100)
    submitter = make_role("backfill_submit")
    db.sql(f'GRANT SELECT, UPDATE ON users TO "{submitter}"')
    conn = role_conn(submitter)
    job_id = submit(db, "users", conn=conn)
    assert conn.execute("SELECT count(*) FROM backfill.progress").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM backfill.slices").fetchone()[0] == 0
    assert conn.execute("SELECT backfill.pause(%s)", [job_id]).fetchone()[0] == "paused"
    assert conn.execute("SELECT backfill.resume(%s)", [job_id]).fetchone()[0] == "pending"
    for fn in QUEUE_FUNCTIONS:
        assert not conn.execute("SELECT has_function_privilege(oid, 'EXECUTE') FROM pg_proc"
                                " WHERE proname = %s AND pronamespace = 'backfill'::regnamespace",
                                [fn]).fetchone()[0], fn
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM backfill._claim('me', 1000, '{}')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("UPDATE backfill.jobs SET set_sql = 'state = 1' WHERE id = %s", [job_id])
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM backfill.jobs")
    assert job(db, job_id)["run_as"] == submitter


def _leaked(conn, query):
    """Run QUERY on CONN and return the notices it raised."""
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    conn.execute(query).fetchall()
    return notices


def test_submitters_see_and_steer_only_their_own_jobs_and_admins_all(db, make_role, role_conn, daemon_factory):
    """Row-level security on jobs, batches, failed_rows, mismatches, slices and the progress view:
    bob sees none of alice's rows (whose failed_rows quote her table's values), cannot steer her
    jobs, and a leaky function of his own sees nothing of them either; backfill_admin sees and
    steers all."""
    alice, bob = make_role("backfill_submit"), make_role("backfill_submit")
    admin = make_role("backfill_admin")
    db.sql("CREATE TABLE secrets (id int PRIMARY KEY, code text NOT NULL, v int)")
    db.sql("INSERT INTO secrets SELECT g, CASE WHEN g % 50 = 0 THEN 'x' || g ELSE g::text END FROM generate_series(1, 500) g")
    db.sql(f'GRANT SELECT, UPDATE ON secrets TO "{alice}"')
    make_users(db, 300)
    db.sql(f'GRANT SELECT, UPDATE ON users TO "{bob}"')
    a = role_conn(alice)
    failing = submit(db, "secrets", conn=a, set_sql="v = code::int", where_sql=None, name="alice-failing")
    verify = submit(db, "secrets", conn=a, set_sql=None, where_sql=None, kind="verify",
                    mismatch_sql="code !~ '^[0-9]+$'", name="alice-verify")
    sliced = submit(db, "secrets", conn=a, set_sql="v = 1", where_sql=None, parallel=2, name="alice-sliced")
    assert run_to_idle(daemon_factory()) == 0
    for j in (failing, verify, sliced):
        assert_job(db, j)
    assert db.one("SELECT count(*) FROM backfill.failed_rows WHERE message LIKE %s", ['%"x50"%']) == 1
    b = role_conn(bob)
    mine = submit(db, "users", conn=b, name="bob-job")
    for table in ("jobs", "progress", "batches", "failed_rows", "mismatches", "slices"):
        column = "id" if table in ("jobs", "progress") else "job_id"
        seen = {r[0] for r in b.execute(f"SELECT {column} FROM backfill.{table}").fetchall()}
        assert seen <= {mine}, (table, seen)
    assert b.execute("SELECT count(*) FROM backfill.jobs").fetchone()[0] == 1
    # Steering: the row is not there for him.
    assert b.execute("UPDATE backfill.jobs SET state = 'cancelled' WHERE id = %s", [verify]).rowcount == 0
    for fn in ("pause", "cancel", "resume"):
        with pytest.raises(psycopg.errors.NoDataFound):
            b.execute(f"SELECT backfill.{fn}(%s)", [sliced])
    # A leaky function in his query's filter sees only his own rows.
    b.execute("CREATE FUNCTION pg_temp.leak(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001"
              " AS $$ BEGIN RAISE NOTICE 'saw %', $1; RETURN true; END $$")
    for query in ("SELECT * FROM backfill.progress WHERE pg_temp.leak(name)",
                  "SELECT * FROM backfill.jobs WHERE pg_temp.leak(name)",
                  "SELECT * FROM backfill.failed_rows WHERE pg_temp.leak(message)"):
        notices = _leaked(b, query)
        assert not any("alice" in n or "x50" in n for n in notices), (query, notices)
    # Alice sees hers, not his; the admin sees and steers all.
    a_seen = {r[0] for r in a.execute("SELECT id FROM backfill.progress").fetchall()}
    assert a_seen == {failing, verify, sliced}
    adm = role_conn(admin)
    assert {r[0] for r in adm.execute("SELECT id FROM backfill.jobs").fetchall()} == {failing, verify, sliced, mine}
    assert adm.execute("SELECT count(*) FROM backfill.failed_rows").fetchone()[0] == 10
    assert adm.execute("SELECT backfill.cancel(%s)", [mine]).fetchone()[0] == "cancelled"
    assert job(db, mine)["state"] == "cancelled"


def test_only_the_schemas_own_functions_write_daemon_columns(db, make_role, role_conn):
    """No setting a session can arrange (backfilld.daemon, backfilld.internal, or any other)
    lets a submitter write daemon-owned columns, on its own job or another's; the job-session
    functions refuse a job that is not the caller's (run_as is not its session_user) or whose
    lease it does not hold."""
    make_users(db, 100)
    alice, mallory = make_role("backfill_submit"), make_role("backfill_submit")
    for r in (alice, mallory):
        db.sql(f'GRANT SELECT, UPDATE ON users TO "{r}"')
    victim = submit(db, "users", conn=role_conn(alice))
    own = submit(db, "users", conn=role_conn(mallory), set_sql="n = n + 1", where_sql=None)
    with db.connect(daemon=True) as d:  # a daemon instance holds alice's job mid-walk
        d.execute("UPDATE backfill.jobs SET state = 'running', owner = 'host:1', last_key = '{50}',"
                  " rows_scanned = 50, batches = 1, lease_until = now() + interval '1 hour' WHERE id = %s",
                  [victim])
    before = job(db, victim)
    m = role_conn(mallory)
    for setting in ("backfilld.daemon", "backfilld.internal", "backfilld.owner"):
        m.execute(f"SELECT set_config('{setting}', 'on', false)")
    for column, value in (("state", "done"), ("owner", "me"), ("last_key", "{100}"), ("rows_scanned", 0),
                          ("batches", 99), ("throttled_reason", "x"), ("finished_at", "now")):
        with pytest.raises(psycopg.Error):
            m.execute(f"UPDATE backfill.jobs SET {column} = %s WHERE id = %s", [value, own])
        assert m.execute("UPDATE backfill.jobs SET state = 'cancelled' WHERE id = %s", [victim]).rowcount == 0
    calls = [
        ("SELECT * FROM backfill._checkpoint(%s, 'host:1', 1000, 1, 0, 1, 0, 0, 0, 0, NULL, NULL)", "42501"),
        ("SELECT backfill._skip_row(%s, 'host:1', 1000, '22P02', 'x', NULL)", "42501"),
        ("SELECT backfill._record_mismatches(%s, 'host:1')", "42501"),
        ("SELECT backfill._set_bounds(%s, 'host:1', '1', '2')", "42501"),
        ("SELECT * FROM backfill._make_slices(%s, 'host:1', '[]')", "42501"),
    ]
    m.execute("SELECT set_config('backfilld.scanned', '100000', false),"
              " set_config('backfilld.last_key', '{99999}', false), set_config('backfilld.skip_key', '{99999}', false),"
              " set_config('backfilld.mismatches', '[[\"1\"]]', false)")
    for call, sqlstate in calls:
        with pytest.raises(psycopg.Error) as info:
            m.execute(call, [victim])
        assert info.value.sqlstate == sqlstate, (call, info.value)
    # Its own job, but not its lease: fenced.
    with pytest.raises(psycopg.Error) as info:
        m.execute("SELECT * FROM backfill._checkpoint(%s, 'host:1', 1000, 1, 0, 1, 0, 0, 0, 0, NULL, NULL)", [own])
    assert info.value.sqlstate == "BFL01"
    after = job(db, victim)
    for column in ("state", "owner", "last_key", "rows_scanned", "batches", "set_sql", "key_min"):
        assert after[column] == before[column], column
    assert db.one("SELECT count(*) FROM backfill.mismatches") == 0
    assert db.one("SELECT count(*) FROM backfill.failed_rows") == 0
    assert db.one("SELECT count(*) FROM backfill.batches") == 0


def test_functions_have_a_fixed_search_path_and_only_the_listed_ones_are_security_definer(db):
    rows = db.sql("""SELECT p.proname, p.prosecdef, coalesce(array_to_string(p.proconfig, ','), ''),
                            p.proowner = n.nspowner
                     FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     WHERE n.nspname = 'backfill'""")
    assert len(rows) > 30
    definers = set()
    for name, secdef, config, owned_by_schema_owner in rows:
        assert owned_by_schema_owner, name
        if secdef:
            definers.add(name)
        if name == "_statement_batch":  # runs the job's SQL as its caller, under its settings
            assert not secdef and config == "", (name, config)
            continue
        assert "search_path=pg_catalog, pg_temp" in config or "search_path=pg_catalog,pg_temp" in config, \
            (name, config)
    assert definers == set(QUEUE_FUNCTIONS) | set(JOB_SESSION_DEFINERS), definers
    # Who may execute each definer: the daemon the queue's, submitters the job session's.
    for name in definers:
        grantees = {r[0] for r in db.sql(
            """SELECT coalesce(r.rolname, 'PUBLIC') FROM pg_proc p,
                      aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                      LEFT JOIN pg_roles r ON r.oid = a.grantee
               WHERE p.proname = %s AND p.pronamespace = 'backfill'::regnamespace AND a.grantee <> p.proowner""",
            [name])}
        assert grantees == ({"backfill_daemon"} if name in QUEUE_FUNCTIONS else {"backfill_submit"}), (name, grantees)


def test_run_as_cannot_be_spoofed_and_must_log_in(db, make_role):
    make_users(db, 100)
    mallory = make_role("backfill_submit")
    group = make_role("backfill_submit", login=False)
    db.sql(f'GRANT "{group}" TO "{mallory}"')
    with db.connect() as conn:
        conn.execute(f'SET ROLE "{mallory}"')
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO backfill.jobs (target, set_sql, run_as) VALUES ('users', 'state = status', 'postgres')")
        conn.execute(f'SET ROLE "{group}"')
        with pytest.raises(psycopg.errors.CheckViolation) as info:
            conn.execute("INSERT INTO backfill.jobs (target, set_sql) VALUES ('users', 'state = status')")
        assert "cannot log in" in str(info.value)


def test_a_submitter_without_update_privilege_changes_nothing(db, make_role, role_conn, daemon_factory):
    make_users(db, 1000)
    reader = make_role("backfill_submit")
    db.sql(f'GRANT SELECT ON users TO "{reader}"')
    job_id = submit(db, "users", conn=role_conn(reader))
    assert run_to_idle(daemon_factory()) == 0
    row = job(db, job_id)
    assert row["state"] == "failed" and "permission denied" in row["last_error"]
    assert db.one("SELECT count(*) FROM users WHERE state IS NOT NULL") == 0


def test_daemon_warns_when_its_role_is_a_superuser(db, daemon_factory):
    d = daemon_factory()
    d.start()
    d.wait_for_log(r"listening on backfill_jobs")
    d.wait_for_log(r"database role postgres is a superuser")


def test_a_submitters_sql_cannot_leave_its_role(db, make_role, role_conn, daemon_factory):
    """The job's SQL runs in a session logged in as its submitter: resetting the role or the
    session's authorization leaves it that role, whatever the daemon's own role (here a
    superuser). What it tried is recorded as it ran."""
    make_users(db, 200)
    mallory = make_role("backfill_submit")
    db.sql(f'GRANT SELECT, UPDATE ON users TO "{mallory}"')
    db.sql("CREATE TABLE secret (x int)")
    db.sql(f'GRANT CREATE ON SCHEMA public TO "{mallory}"')
    m = role_conn(mallory)
    m.execute("CREATE TABLE public.seen (who text, sess text, super text)")
    m.execute("""CREATE FUNCTION public.escape() RETURNS text LANGUAGE plpgsql AS $$
                 BEGIN
                   PERFORM set_config('role', 'none', false);
                   BEGIN EXECUTE 'SET SESSION AUTHORIZATION postgres'; EXCEPTION WHEN OTHERS THEN NULL; END;
                   INSERT INTO public.seen VALUES (current_user, session_user, current_setting('is_superuser'));
                   DROP TABLE public.secret;
                   RETURN current_user;
                 END $$""")
    job_id = submit(db, "users", conn=m, set_sql="state = public.escape()", where_sql=None)
    assert run_to_idle(daemon_factory()) == 0
    row = job(db, job_id)
    assert row["state"] == "failed"
    assert "must be owner of table secret" in row["last_error"], row["last_error"]
    assert db.one("SELECT count(*) FROM pg_class WHERE relname = 'secret'") == 1
    assert db.one("SELECT count(*) FROM users WHERE state IS NOT NULL") == 0
    assert db.one("SELECT count(*) FROM seen") == 0  # rolled back with the batch


def test_batches_run_in_a_session_of_run_as(db, make_role, role_conn, daemon_factory):
    make_users(db, 300)
    alice = make_role("backfill_submit")
    db.sql(f'GRANT SELECT, UPDATE ON users TO "{alice}"')
    job_id = submit(db, "users", conn=role_conn(alice), where_sql=None,
                    set_sql="state = session_user || '/' || current_user || '/' || current_setting('is_superuser')")
    assert run_to_idle(daemon_factory()) == 0  # the daemon logs in as postgres, a superuser
    assert_job(db, job_id)
    assert db.sql("SELECT DISTINCT state FROM users") == [(f"{alice}/{alice}/off",)]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to check that the daemon refuses root")
def test_the_daemon_refuses_to_run_as_root(db, daemon_factory):
    d = daemon_factory()
    d.write_config()
    p = d.run_oneshot()  # run_oneshot does not drop privileges
    assert p.returncode == 1
    assert "refusing to run as root" in p.stderr
    # One-shot commands are fine as root.
    assert d.run_oneshot("--check-config").returncode == 0
    assert d.run_oneshot("--install-schema").returncode == 0
