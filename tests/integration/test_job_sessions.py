"""A job runs as its submitter for real. Each job's batches run in a session logged in as its
run_as role: the attacks a submitter with nothing but backfill_submit tried on the earlier design
(taking over the daemon's batch functions, a session search_path that outlives the job's SQL,
shadowing functions, operators and catalog relations) reach nothing beyond the submitter's own
rights, whatever role the daemon logs in as (here a superuser); the job's SQL sees its submitter's
settings and gets what the submitter's own UPDATE gets; keys round-trip exactly under any settings;
a job whose session cannot log in fails clearly; and the README's production set-up works."""

import getpass
import os
import random
from pathlib import Path

import pytest

import pgharness
from bfhelp import assert_exact, assert_job, job, kill_loop, run_to_idle, submit


def _daemon_os_user():
    """The OS user the daemon runs as (pgharness.as_daemon_user)."""
    return pgharness.PG_USER if pgharness.IS_ROOT else getpass.getuser()


def _attacker(db, make_role, role_conn, rows=2000):
    """Mallory (backfill_submit, CREATE on the database and on public) with a table of her own,
    mine(id, v, n); bob with a table of his, bobs, and a paused job on it. Returns (mallory, her
    session, bob's job id)."""
    mallory, bob = make_role("backfill_submit"), make_role("backfill_submit")
    db.sql(f'GRANT CREATE ON DATABASE "{db.name}" TO "{mallory}"')
    db.sql(f'GRANT CREATE ON SCHEMA public TO "{mallory}"')
    db.sql("CREATE TABLE bobs (id int PRIMARY KEY, v int)")
    db.sql("INSERT INTO bobs SELECT g, g FROM generate_series(1, 100) g")
    db.sql(f'GRANT SELECT, UPDATE ON bobs TO "{bob}"')
    bob_job = submit(db, "bobs", conn=role_conn(bob), set_sql="v = v + 1", where_sql=None, state="paused")
    m = role_conn(mallory)
    m.execute("CREATE TABLE public.mine (id bigint PRIMARY KEY, v int, n int NOT NULL DEFAULT 0)")
    m.execute(f"INSERT INTO public.mine (id, v) SELECT g, g FROM generate_series(1, {rows}) g")
    m.execute("ANALYZE public.mine")
    m.execute("CREATE TABLE public.attempts (what text, ok boolean, who name, sess name)")
    return mallory, m, bob_job


def _nothing_reached_bob(db, mallory, bob_job, flag=None):
    """Bob's table and job are as they were, the queue holds nothing forged for his job, and no
    attempt of Mallory's succeeded or ran as anyone but her."""
    assert not db.one("SELECT has_table_privilege(%s, 'bobs', 'SELECT')", [mallory])
    assert db.one("SELECT sum(v) FROM bobs") == 5050
    row = job(db, bob_job)
    assert row["set_sql"] == "v = v + 1" and row["state"] == "paused"
    for table in ("mismatches", "failed_rows", "batches"):
        assert db.one(f"SELECT count(*) FROM backfill.{table} WHERE job_id = %s", [bob_job]) == 0, table
    # (A temporary function of her own session is hers to make: it runs nothing of anybody else's.)
    succeeded = db.sql("SELECT what, who, sess FROM attempts WHERE ok AND what <> 'overload'")
    assert succeeded == [], succeeded
    assert db.one("SELECT count(*) FROM attempts WHERE who <> %s OR sess <> %s", [mallory, mallory]) == 0
    if flag:
        assert not Path(flag).exists(), "COPY TO PROGRAM ran"


def test_a_submitter_cannot_take_over_the_batch_functions(db, make_role, role_conn, daemon_factory):
    """The issue's first attack: from inside her own SQL, Mallory alters the daemon's temporary
    batch function to SECURITY INVOKER and adds an untyped-overload twin, so that later batches
    would run her SQL with the daemon's rights; then, batch after batch, she grants herself Bob's
    table, forges rows in backfill.mismatches and failed_rows, rewrites Bob's job and runs COPY TO
    PROGRAM. The daemon logs in as a superuser. Nothing of it reaches beyond her own rights."""
    mallory, m, bob_job = _attacker(db, make_role, role_conn)
    flag = f"/tmp/bfl-copy-{db.name}"
    if os.path.exists(flag):
        os.unlink(flag)
    m.execute(f"""
        CREATE FUNCTION public.attempt(what text, sql text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            BEGIN
                EXECUTE sql;
                INSERT INTO public.attempts VALUES (what, true, current_user, session_user);
            EXCEPTION WHEN OTHERS THEN
                INSERT INTO public.attempts VALUES (what, false, current_user, session_user);
            END;
        END $$;
        CREATE FUNCTION public.evil() RETURNS int LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('evil.txid', true) = txid_current()::text THEN RETURN 1; END IF;
            PERFORM set_config('evil.txid', txid_current()::text, true);
            PERFORM public.attempt('takeover', 'ALTER FUNCTION pg_temp.backfilld_batch_next(bigint, bigint) SECURITY INVOKER');
            PERFORM public.attempt('overload', 'CREATE FUNCTION pg_temp.backfilld_batch_next(text, text) RETURNS int'
                                              ' LANGUAGE sql AS ''SELECT 1''');
            PERFORM public.attempt('grant', 'GRANT SELECT ON public.bobs TO "{mallory}"');
            PERFORM public.attempt('mismatch', 'INSERT INTO backfill.mismatches (job_id, key) VALUES ({bob_job}, ''{{1}}'')');
            PERFORM public.attempt('failed_row', 'INSERT INTO backfill.failed_rows (job_id, key) VALUES ({bob_job}, ''{{1}}'')');
            PERFORM public.attempt('rewrite', 'UPDATE backfill.jobs SET set_sql = ''v = 666'' WHERE id = {bob_job}');
            PERFORM public.attempt('program', 'COPY (SELECT 1) TO PROGRAM ''touch {flag}''');
            RETURN 1;
        END $$""")
    job_id = submit(db, "mine", conn=m, set_sql="n = n + public.evil()", where_sql=None, fixed=200)
    assert run_to_idle(daemon_factory()) == 0
    assert_exact(db, "mine", job_id, once="n")
    # The attempts were made in every batch (10), as Mallory, and all failed.
    assert db.one("SELECT count(*) FROM attempts WHERE what = 'grant'") == 10
    _nothing_reached_bob(db, mallory, bob_job, flag)


@pytest.mark.versions
def test_a_session_search_path_and_shadowing_objects_hijack_nothing(db, make_role, role_conn, daemon_factory):
    """The issue's second attack, and its relatives: Mallory's SQL sets the session's
    search_path to her schema ahead of pg_catalog, where set_config, current_setting, count and
    the bigint operators > and = have twins of hers (> always false: a walk that used it would stop
    at once), and temporary tables named like catalog relations. None of the daemon's statements
    calls any of them (each twin records every call), and the walk stays exact."""
    mallory, m, bob_job = _attacker(db, make_role, role_conn)
    m.execute(f"""
        CREATE SCHEMA trap;
        CREATE FUNCTION trap.record(what text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO public.attempts VALUES (what, false, current_user, session_user);
            BEGIN
                EXECUTE 'GRANT SELECT ON public.bobs TO "{mallory}"';
                INSERT INTO public.attempts VALUES (what || ' grant', true, current_user, session_user);
            EXCEPTION WHEN OTHERS THEN NULL;
            END;
        END $$;
        CREATE FUNCTION trap.set_config(text, text, boolean) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN PERFORM trap.record('set_config'); RETURN pg_catalog.set_config($1, $2, $3); END $$;
        CREATE FUNCTION trap.current_setting(text, boolean) RETURNS text LANGUAGE plpgsql AS $$
        BEGIN PERFORM trap.record('current_setting'); RETURN pg_catalog.current_setting($1, $2); END $$;
        CREATE FUNCTION trap.count(bigint) RETURNS bigint LANGUAGE plpgsql AS $$
        BEGIN PERFORM trap.record('count'); RETURN 0; END $$;
        CREATE FUNCTION trap.gt(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN PERFORM trap.record('>'); RETURN false; END $$;
        CREATE FUNCTION trap.eq(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN PERFORM trap.record('='); RETURN false; END $$;
        CREATE OPERATOR trap.> (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = trap.gt);
        CREATE OPERATOR trap.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = trap.eq);
        CREATE TYPE trap.text AS (x int);
        CREATE FUNCTION public.arm() RETURNS int LANGUAGE plpgsql AS $$
        BEGIN
            IF pg_catalog.current_setting('search_path') <> 'trap, pg_catalog, public' THEN
                PERFORM pg_catalog.set_config('search_path', 'trap, pg_catalog, public', false);
                CREATE TEMP TABLE IF NOT EXISTS pg_stat_activity (pid int, wait_event_type text, query_start timestamptz);
                CREATE TEMP TABLE IF NOT EXISTS pg_locks (pid int, granted boolean, waitstart timestamptz);
                CREATE TEMP TABLE IF NOT EXISTS pg_class (oid oid, reltuples real);
                CREATE TEMP TABLE IF NOT EXISTS jobs (id bigint);
            END IF;
            RETURN 1;
        END $$""")
    job_id = submit(db, "mine", conn=m, set_sql="n = n OPERATOR(pg_catalog.+) public.arm()", where_sql=None,
                    fixed=150)
    assert run_to_idle(daemon_factory()) == 0
    row = assert_exact(db, "mine", job_id, once="n", rows=2000)
    assert row["batches"] >= 14
    _nothing_reached_bob(db, mallory, bob_job)
    assert db.sql("SELECT what, who FROM attempts") == [], "a twin of Mallory's was called"


def test_the_job_sees_its_submitters_settings_and_gets_what_its_own_update_gets(db, make_role, role_conn,
                                                                              daemon_factory):
    """The database in America/New_York, the role's DateStyle 'SQL, DMY' and a search_path that
    names its own schema: a job's result equals, row for row, the same UPDATE run in a fresh
    session logged in as the submitter."""
    alice = make_role("backfill_submit")
    db.sql(f"ALTER DATABASE \"{db.name}\" SET timezone = 'America/New_York'")
    db.sql(f"CREATE SCHEMA alice_s AUTHORIZATION \"{alice}\"")
    db.sql(f"ALTER ROLE \"{alice}\" IN DATABASE \"{db.name}\" SET datestyle = 'SQL, DMY'")
    db.sql(f"ALTER ROLE \"{alice}\" IN DATABASE \"{db.name}\" SET search_path = alice_s, public")
    a = role_conn(alice)
    assert a.execute("SHOW timezone").fetchone()[0] == "America/New_York"
    a.execute("CREATE FUNCTION fmt(timestamptz) RETURNS text LANGUAGE sql STABLE"
              " AS $$ SELECT to_char($1, 'Dy DD Mon YYYY HH24:MI:SS TZ') $$")
    a.execute("CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, amount float8,"
              " d date, s text, f text, i text, m text)")
    # Around the start of daylight saving time in New York (2026-03-08 07:00 UTC).
    a.execute("INSERT INTO events (id, created_at, amount) SELECT g,"
              " timestamptz '2026-03-07 20:00:00+00' + g * interval '7 minutes 13.25 seconds', g / 3.0"
              " FROM generate_series(1, 3000) g")
    a.execute("CREATE TABLE events_copy AS TABLE events")
    set_sql = ("d = created_at::date, s = created_at::text, f = fmt(created_at),"
               " i = (created_at - date '2026-03-08')::text, m = amount::text")
    job_id = submit(db, "alice_s.events", conn=a, set_sql=set_sql, where_sql=None, batch_size=250)
    assert run_to_idle(daemon_factory()) == 0
    assert_job(db, job_id)
    fresh = role_conn(alice)
    fresh.execute(f"UPDATE events_copy SET {set_sql}")
    assert fresh.execute("SELECT count(*) FROM (TABLE events EXCEPT TABLE events_copy) x").fetchone()[0] == 0
    assert fresh.execute("SELECT count(*) FROM (TABLE events_copy EXCEPT TABLE events) x").fetchone()[0] == 0
    # The settings were really not the daemon's: local New York times, day first.
    assert db.one("SELECT s FROM alice_s.events WHERE id = 1") == "07/03/2026 15:07:13.25 EST"
    assert db.one("SELECT count(*) FROM alice_s.events WHERE s LIKE '%EDT'") > 1000


KEY_TABLES = {
    # name: (type, the key of row g, g = 1..N)
    "k_ts": ("timestamptz", "timestamptz '2026-10-24 23:00:00+00' + g * interval '1.000001 seconds'"),
    "k_date": ("date", "date '2026-01-01' + g"),
    "k_f8": ("float8", "CASE WHEN g = 1 THEN 'Infinity'::float8 WHEN g = 2 THEN '-Infinity' ELSE g / 3.0 + 1e-9 END"),
    "k_num": ("numeric", "CASE WHEN g = 1 THEN 'NaN'::numeric ELSE g / 7.0 + 0.0000000001 END"),
}


def test_keys_round_trip_exactly_under_any_settings_across_sigkills(db, make_role, role_conn, daemon_factory):
    """timestamptz, date, float8 and numeric keys, checkpointed by sessions under DateStyle
    'SQL, DMY', TimeZone Europe/Berlin (across the end of its summer time) and a lossy
    extra_float_digits, resume at the same row after SIGKILLs: every row changed exactly once."""
    alice = make_role("backfill_submit")
    for setting in ("datestyle = 'SQL, DMY'", "timezone = 'Europe/Berlin'", "extra_float_digits = -3"):
        db.sql(f"ALTER ROLE \"{alice}\" IN DATABASE \"{db.name}\" SET {setting}")
    db.sql(f'GRANT CREATE ON SCHEMA public TO "{alice}"')
    a = role_conn(alice)
    jobs = []
    for name, (type_, expr) in KEY_TABLES.items():
        a.execute(f"CREATE TABLE {name} (k {type_} PRIMARY KEY, n int NOT NULL DEFAULT 0)")
        a.execute(f"INSERT INTO {name} (k) SELECT {expr} FROM generate_series(1, 3000) g")
        jobs.append(submit(db, name, conn=a, set_sql="n = n + 1", where_sql=None, fixed=97, sleep_ms=5))
    d = daemon_factory(daemon={"name": "keys", "lease_ms": 60000, "workers": 4})
    progress = kill_loop(db, d, jobs[0], kills=6, rnd=random.Random(14), lo=0.05, hi=0.4)
    assert len(set(progress)) >= 3, progress
    assert run_to_idle(d) == 0
    for job_id, name in zip(jobs, KEY_TABLES):
        assert_exact(db, name, job_id, once="n")
    # The checkpoints are the same text whatever the role's settings.
    assert db.one("SELECT last_key[1] FROM backfill.jobs WHERE id = %s", [jobs[1]]) == "2034-03-20"


def test_a_job_whose_session_cannot_log_in_fails_clearly_and_others_go_on(db, cluster, make_role, role_conn,
                                                                          daemon_factory):
    """A role that may no longer log in, and one that pg_hba.conf rejects: each job fails at once
    with a last_error that says how to allow it; the daemon goes on with a third job."""
    alice, rejected, carol = (make_role("backfill_submit") for _ in range(3))
    db.sql("CREATE TABLE ta (id int PRIMARY KEY, v int); CREATE TABLE tb (id int PRIMARY KEY, v int);"
           " CREATE TABLE tc (id int PRIMARY KEY, v int)")
    for t, r in (("ta", alice), ("tb", rejected), ("tc", carol)):
        db.sql(f"INSERT INTO {t} SELECT g, 0 FROM generate_series(1, 500) g")
        db.sql(f'GRANT SELECT, UPDATE ON {t} TO "{r}"')
    ja = submit(db, "ta", conn=role_conn(alice), set_sql="v = 1", where_sql=None)
    jb = submit(db, "tb", conn=role_conn(rejected), set_sql="v = 1", where_sql=None)
    jc = submit(db, "tc", conn=role_conn(carol), set_sql="v = 1", where_sql=None)
    db.sql(f'ALTER ROLE "{alice}" NOLOGIN')
    hba = cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f'host all "{rejected}" 127.0.0.1/32 reject\n' + original)
    cluster.sql("SELECT pg_reload_conf()")
    try:
        d = daemon_factory(daemon={"workers": 3})
        assert run_to_idle(d) == 0
    finally:
        hba.write_text(original)
        cluster.sql("SELECT pg_reload_conf()")
    for j, why in ((ja, "is not permitted to log in"), (jb, "pg_hba.conf rejects")):
        row = job(db, j)
        assert row["state"] == "failed", row
        assert "cannot log in as role" in row["last_error"] and why in row["last_error"], row["last_error"]
        assert "job_conninfo" in row["last_error"] and "README" in row["last_error"]
    assert_exact(db, "tc", jc, once="v")
    assert db.one("SELECT sum(v) FROM ta") == 0 and db.one("SELECT sum(v) FROM tc") == 500


@pytest.mark.versions
def test_install_schema_upgrades_a_version_1_queue_in_place_keeping_its_jobs(db, daemon_factory):
    """Version 1 (the queue of the earlier design) with a pending job and a running one that a dead
    instance left mid-walk: --install-schema upgrades it in one transaction, and a daemon finishes
    both exactly."""
    db.sql("DROP SCHEMA backfill CASCADE")
    v1 = (Path(__file__).parent / "fixtures" / "schema_v1.sql").read_text().replace("@schema@", '"backfill"')
    with db.connect() as c:
        with c.transaction():
            c.execute(v1)
        c.execute("CREATE TABLE t1 (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);"
                  " CREATE TABLE t2 (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)")
        c.execute("INSERT INTO t1 (id) SELECT generate_series(1, 3000); INSERT INTO t2 (id) SELECT generate_series(1, 3000)")
        pending = c.execute("INSERT INTO backfill.jobs (target, set_sql, batch_size) VALUES ('t1', 'n = n + 1', 400)"
                            " RETURNING id").fetchone()[0]
        running = c.execute("INSERT INTO backfill.jobs (target, set_sql, batch_size) VALUES ('t2', 'n = n + 1', 400)"
                            " RETURNING id").fetchone()[0]
        c.execute("SELECT set_config('backfilld.daemon', 'on', false)")
        c.execute("UPDATE t2 SET n = 1 WHERE id <= 1000")
        c.execute("UPDATE backfill.jobs SET state = 'running', owner = 'old:1', lease_until = now() - interval '1 s',"
                  " started_at = now(), last_key = '{1000}', rows_scanned = 1000, rows_changed = 1000, batches = 3"
                  " WHERE id = %s", [running])
    assert db.one("SELECT version FROM backfill.schema_version") == 1
    d = daemon_factory()
    p = d.run_oneshot("--install-schema")
    assert p.returncode == 0, p.stderr
    assert db.one("SELECT version FROM backfill.schema_version") == 3
    assert db.one("SELECT count(*) FROM pg_proc WHERE proname IN ('_is_daemon', '_require_daemon')") == 0
    assert run_to_idle(d) == 0
    for j, t in ((pending, "t1"), (running, "t2")):
        assert_exact(db, t, j, once="n", rows=3000)


def test_install_schema_upgrades_a_version_2_queue_keeping_its_jobs(db, daemon_factory):
    """Version 2 (before run windows, operator holds and WAL budgets) with a pending job and a
    paused one: --install-schema adds the version-3 columns in place, both jobs keep their rows,
    and a daemon runs them."""
    db.sql("DROP SCHEMA backfill CASCADE")
    v2 = (Path(__file__).parent / "fixtures" / "schema_v2.sql").read_text().replace("@schema@", '"backfill"')
    with db.connect() as c:
        with c.transaction():
            c.execute(v2)
        c.execute("CREATE TABLE t1 (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);"
                  " CREATE TABLE t2 (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)")
        c.execute("INSERT INTO t1 (id) SELECT generate_series(1, 3000); INSERT INTO t2 (id) SELECT generate_series(1, 3000)")
        pending = c.execute("INSERT INTO backfill.jobs (target, set_sql, batch_size) VALUES ('t1', 'n = n + 1', 400)"
                            " RETURNING id").fetchone()[0]
        paused = c.execute("INSERT INTO backfill.jobs (target, set_sql, state) VALUES ('t2', 'n = n + 1', 'paused')"
                           " RETURNING id").fetchone()[0]
    assert db.one("SELECT version FROM backfill.schema_version") == 2
    d = daemon_factory()
    p = d.run_oneshot("--install-schema")
    assert p.returncode == 0, p.stderr
    assert db.one("SELECT version FROM backfill.schema_version") == 3
    assert db.sql("SELECT run_window, hold_when_sql, max_wal_bytes_per_s FROM backfill.jobs ORDER BY id") == \
        [(None, None, None), (None, None, None)]
    assert job(db, paused)["state"] == "paused"
    db.sql("SELECT backfill.resume(%s)", [paused])
    assert run_to_idle(d) == 0
    for j, t in ((pending, "t1"), (paused, "t2")):
        row = job(db, j)
        assert row["state"] == "done" and row["rows_scanned"] == 3000, row
        assert db.one(f"SELECT count(*) FROM {t} WHERE n <> 1") == 0, t


@pytest.mark.versions
def test_the_readme_peer_map_set_up(db, cluster, make_role, role_conn, daemon_factory):
    """The README's production set-up: job sessions over the local socket with peer
    authentication and a pg_ident.conf map from the daemon's OS user to the submitting roles (on
    PostgreSQL 16 and later one line names +backfill_submit; before, a line per role). A role the
    map leaves out cannot log in, and its job fails saying so."""
    alice, outsider = make_role("backfill_submit"), make_role("backfill_submit")
    daemon_role = make_role("backfill_daemon", "pg_monitor")
    for r in (alice, outsider):
        db.sql(f"CREATE TABLE \"{r}_t\" (id int PRIMARY KEY, v int)")
        db.sql(f"INSERT INTO \"{r}_t\" SELECT g, 0 FROM generate_series(1, 1000) g")
        db.sql(f'GRANT SELECT, UPDATE ON "{r}_t" TO "{r}"')
    mine = submit(db, f'"{alice}_t"', conn=role_conn(alice), set_sql="v = 1", where_sql=None)
    theirs = submit(db, f'"{outsider}_t"', conn=role_conn(outsider), set_sql="v = 1", where_sql=None)
    version = cluster.sql("SHOW server_version_num")[0][0]
    os_user = _daemon_os_user()
    group_map = int(version) >= 160000
    ident_lines = ([f"bfmap_{db.name} {os_user} +backfill_submit"] if group_map
                   else [f"bfmap_{db.name} {os_user} \"{alice}\""])
    hba, ident = cluster.datadir / "pg_hba.conf", cluster.datadir / "pg_ident.conf"
    hba_was, ident_was = hba.read_text(), ident.read_text()
    hba.write_text(f"local {db.name} all peer map=bfmap_{db.name}\n" + hba_was)
    ident.write_text(ident_was + "\n" + "\n".join(ident_lines) + "\n")
    cluster.sql("SELECT pg_reload_conf()")
    if group_map:  # the map follows the group: out of it, out of the map
        db.sql(f'REVOKE backfill_submit FROM "{outsider}"')
    try:
        job_conninfo = f"host={cluster._socket_dir()} port={cluster.port} dbname={db.name}"
        conninfo = db.conninfo.replace("user=postgres", f"user={daemon_role}")
        d = daemon_factory(database={"conninfo": conninfo, "job_conninfo": job_conninfo})
        assert run_to_idle(d) == 0
    finally:
        hba.write_text(hba_was)
        ident.write_text(ident_was)
        cluster.sql("SELECT pg_reload_conf()")
    assert_exact(db, f'"{alice}_t"', mine, once="v", daemon=d)
    assert db.one(f"SELECT sum(v) FROM \"{alice}_t\"") == 1000
    row = job(db, theirs)
    assert row["state"] == "failed" and "Peer authentication failed" in row["last_error"], row["last_error"]
    assert db.one(f"SELECT sum(v) FROM \"{outsider}_t\"") == 0
