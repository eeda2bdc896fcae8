"""Security (issue 4): privileges the schema installs, run_as, and the daemon's own role."""

import os

import psycopg
import pytest

from bfhelp import job, make_users, run_to_idle, submit

DAEMON_FUNCTIONS = ["_claim", "_checkpoint", "_skip_row", "_make_slices", "_release", "_renew", "_set_reason",
                    "_runnable_count"]


@pytest.fixture
def roles(db):
    made = []

    def make(*grants):
        name = f"{db.name}_r{len(made)}"
        db.sql(f'CREATE ROLE "{name}" LOGIN')
        for g in grants:
            db.sql(f'GRANT {g} TO "{name}"')
        made.append(name)
        return name

    yield make
    for name in made:
        db.sql(f'DROP OWNED BY "{name}" CASCADE')
        db.sql(f'DROP ROLE "{name}"')


def as_role(db, role):
    conn = db.connect()
    conn.execute(f'SET ROLE "{role}"')
    return conn


def test_public_has_nothing(db, roles):
    nobody = roles()
    with as_role(db, nobody) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM backfill.jobs")
    # No grant to PUBLIC anywhere in the schema.
    assert db.one("""SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                     aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
                     WHERE n.nspname = 'backfill' AND a.grantee = 0""") == 0
    assert db.one("""SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
                     aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                     WHERE n.nspname = 'backfill' AND a.grantee = 0""") == 0


def test_backfill_submit_submits_and_steers_but_cannot_act_as_the_daemon(db, roles):
    make_users(db, 100)
    submitter = roles("backfill_submit")
    db.sql(f'GRANT SELECT, UPDATE ON users TO "{submitter}"')
    with as_role(db, submitter) as conn:
        job_id = submit(db, "users", conn=conn)
        assert conn.execute("SELECT count(*) FROM backfill.progress").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM backfill.slices").fetchone()[0] == 0
        assert conn.execute("SELECT backfill.pause(%s)", [job_id]).fetchone()[0] == "paused"
        assert conn.execute("SELECT backfill.resume(%s)", [job_id]).fetchone()[0] == "pending"
        for fn in DAEMON_FUNCTIONS:
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


def test_submitters_cannot_steer_each_others_jobs(db, roles):
    make_users(db, 100)
    alice, bob = roles("backfill_submit"), roles("backfill_submit")
    with as_role(db, alice) as conn:
        job_id = submit(db, "users", conn=conn)
    with as_role(db, bob) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT backfill.cancel(%s)", [job_id])
    assert job(db, job_id)["state"] == "pending"


def test_every_function_has_a_fixed_search_path_and_none_is_security_definer(db):
    rows = db.sql("""SELECT proname, prosecdef, coalesce(array_to_string(proconfig, ','), '')
                     FROM pg_proc WHERE pronamespace = 'backfill'::regnamespace""")
    assert len(rows) > 20
    for name, secdef, config in rows:
        assert not secdef, name
        assert "search_path=pg_catalog, pg_temp" in config or "search_path=pg_catalog,pg_temp" in config, (name, config)


def test_run_as_cannot_be_spoofed(db, roles):
    make_users(db, 100)
    mallory = roles("backfill_submit")
    with as_role(db, mallory) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO backfill.jobs (target, set_sql, run_as) VALUES ('users', 'state = status', 'postgres')")


def test_a_submitter_without_update_privilege_changes_nothing(db, roles, daemon_factory):
    make_users(db, 1000)
    reader = roles("backfill_submit")
    db.sql(f'GRANT SELECT ON users TO "{reader}"')
    with as_role(db, reader) as conn:
        job_id = submit(db, "users", conn=conn)
    assert run_to_idle(daemon_factory()) == 0
    row = job(db, job_id)
    assert row["state"] == "failed" and "permission denied" in row["last_error"]
    assert db.one("SELECT count(*) FROM users WHERE state IS NOT NULL") == 0


def test_daemon_warns_when_its_role_is_a_superuser(db, daemon_factory):
    d = daemon_factory()
    d.start()
    d.wait_for_log(r"listening on backfill_jobs")
    d.wait_for_log(r"database role postgres is a superuser")


def test_a_submitters_sql_cannot_escape_its_role(db, roles, daemon_factory):
    """SET ROLE could be undone by the user's own SQL (set_config('role', 'none')); the batch runs
    inside a SECURITY DEFINER function owned by run_as instead, where PostgreSQL refuses it."""
    make_users(db, 200)
    mallory = roles("backfill_submit")
    db.sql(f'GRANT SELECT, UPDATE ON users TO "{mallory}"')
    db.sql("CREATE TABLE secret (x int)")
    db.sql(f'GRANT CREATE ON SCHEMA public TO "{mallory}"')
    with as_role(db, mallory) as conn:
        conn.execute("""CREATE FUNCTION public.escape() RETURNS text LANGUAGE plpgsql AS $$
                        BEGIN PERFORM set_config('role', 'none', false); DROP TABLE public.secret;
                        RETURN current_user; END $$""")
        job_id = submit(db, "users", conn=conn, set_sql="state = public.escape()", where_sql=None)
    assert run_to_idle(daemon_factory()) == 0
    row = job(db, job_id)
    assert row["state"] == "failed"
    assert 'cannot set parameter "role" within security-definer function' in row["last_error"], row["last_error"]
    assert db.one("SELECT count(*) FROM pg_class WHERE relname = 'secret'") == 1
    assert db.one("SELECT count(*) FROM users WHERE state IS NOT NULL") == 0


def test_batches_run_as_run_as(db, roles, daemon_factory):
    make_users(db, 300)
    alice = roles("backfill_submit")
    db.sql(f'GRANT SELECT, UPDATE ON users TO "{alice}"')
    with as_role(db, alice) as conn:
        job_id = submit(db, "users", conn=conn, set_sql="state = current_user", where_sql=None)
    assert run_to_idle(daemon_factory()) == 0
    assert job(db, job_id)["state"] == "done"
    assert db.sql("SELECT DISTINCT state FROM users") == [(alice,)]


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
