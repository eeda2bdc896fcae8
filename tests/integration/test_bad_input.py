"""Bad rows and bad jobs (issue 4): a row that fails on its own is bisected out, recorded and
skipped, up to max_failed_rows; a job whose SQL or target is broken ends failed with a clear
last_error while the daemon and the other jobs go on."""

import time

from bfhelp import assert_exact, assert_job, job, make_users, run_to_idle, submit, wait_batches, wait_state

BAD_IDS = [3, 777, 778, 2500, 4096, 4999, 5000]


def make_numbers(db, rows=5000, bad=BAD_IDS):
    db.sql("CREATE TABLE nums (id int PRIMARY KEY, txt text NOT NULL, num int)")
    db.sql(f"INSERT INTO nums SELECT g, g::text FROM generate_series(1, {rows}) g")
    db.sql("UPDATE nums SET txt = 'x' || id WHERE id = ANY(%s)", [bad])


def test_rows_that_fail_alone_are_bisected_recorded_and_skipped(db, daemon_factory):
    make_numbers(db)
    job_id = submit(db, "nums", set_sql="num = txt::int", where_sql=None, batch_size=500)
    d = daemon_factory()
    assert run_to_idle(d) == 0
    assert_job(db, job_id, failed_rows=len(BAD_IDS), rows_scanned=5000, rows_changed=5000 - len(BAD_IDS))
    failed = db.sql("SELECT key[1]::int, sqlstate, message FROM backfill.failed_rows WHERE job_id = %s"
                    " ORDER BY 1", [job_id])
    assert [f[0] for f in failed] == BAD_IDS
    assert all(f[1] == "22P02" and "invalid input syntax" in f[2] for f in failed)
    assert db.one("SELECT count(*) FROM nums WHERE id <> ALL(%s)"
                  " AND num IS DISTINCT FROM (CASE WHEN txt ~ '^[0-9]+$' THEN txt::int END)", [BAD_IDS]) == 0
    assert db.one("SELECT count(*) FROM nums WHERE num IS NOT NULL AND id = ANY(%s)", [BAD_IDS]) == 0
    assert "bisecting" in d.log_text()


def test_constraint_violations_are_rows_that_fail_alone(db, daemon_factory):
    db.sql("CREATE TABLE acc (id int PRIMARY KEY, src int NOT NULL, pos int CHECK (pos > 0))")
    db.sql("INSERT INTO acc SELECT g, CASE WHEN g % 250 = 0 THEN -g ELSE g END FROM generate_series(1, 3000) g")
    job_id = submit(db, "acc", set_sql="pos = src", where_sql=None, batch_size=1000)
    assert run_to_idle(daemon_factory()) == 0
    assert_job(db, job_id, failed_rows=12)
    assert db.one("SELECT count(DISTINCT sqlstate) FROM backfill.failed_rows WHERE job_id = %s", [job_id]) == 1
    assert db.one("SELECT min(sqlstate) FROM backfill.failed_rows WHERE job_id = %s", [job_id]) == "23514"
    assert db.one("SELECT count(*) FROM acc WHERE pos IS NULL") == 12


def test_past_max_failed_rows_the_job_fails(db, daemon_factory):
    make_numbers(db)
    job_id = submit(db, "nums", set_sql="num = txt::int", where_sql=None, batch_size=500, max_failed_rows=3)
    assert run_to_idle(daemon_factory()) == 0
    row = job(db, job_id)
    assert row["state"] == "failed"
    assert "max_failed_rows is 3" in row["last_error"] and row["last_error"].startswith("22P02")
    assert row["failed_rows"] == 3
    assert db.one("SELECT count(*) FROM backfill.failed_rows WHERE job_id = %s", [job_id]) == 3
    # Everything before the fourth bad row (778 was the third, 2500 the fourth) was done.
    assert db.one("SELECT count(*) FROM nums WHERE id < 2500 AND num IS NULL") == 3
    assert row["last_key"] is not None and int(row["last_key"][0]) < 2500


def test_sql_errors_are_found_before_any_data_is_touched(db, daemon_factory):
    make_users(db, 2000)
    syntax = submit(db, "users", set_sql="state = = status")
    where = submit(db, "users", set_sql="state = status", where_sql="state IS DISTINCT FROM", priority=-1)
    column = submit(db, "users", set_sql="state = statuz", priority=-2)
    db.sql("CREATE TABLE other (id int PRIMARY KEY, a int, b int)")
    db.sql("INSERT INTO other SELECT g, g FROM generate_series(1, 1000) g")
    good = submit(db, "other", set_sql="b = a", where_sql=None, priority=-3)
    assert run_to_idle(daemon_factory(daemon={"workers": 1})) == 0
    for job_id, code in ((syntax, "42601"), (where, "42601"), (column, "42703")):
        row = job(db, job_id)
        assert row["state"] == "failed", row
        assert row["last_error"].startswith(code) and "before touching any row" in row["last_error"], row
        assert row["batches"] == 0 and row["rows_scanned"] == 0
    assert db.one("SELECT count(*) FROM users WHERE state IS NOT NULL") == 0
    assert_exact(db, "other", good, same=("b", "a"))


def test_names_made_to_inject_sql_are_only_names(db, daemon_factory):
    table = 'users"; DROP TABLE victim; --'
    key = 'id"); DROP TABLE victim; --'
    db.sql("CREATE TABLE victim (x int)")
    db.sql(f'CREATE TABLE "{table.replace(chr(34), chr(34) * 2)}" ("{key.replace(chr(34), chr(34) * 2)}" int PRIMARY KEY,'
           ' status text, state text)')
    quoted = '"' + table.replace('"', '""') + '"'
    db.sql(f"INSERT INTO {quoted} SELECT g, 'a' || g FROM generate_series(1, 1500) g")
    job_id = submit(db, quoted, batch_size=100)
    assert job(db, job_id)["key_columns"] == [key]
    assert run_to_idle(daemon_factory()) == 0
    assert_exact(db, quoted, job_id, same=("state", "status"))
    assert db.one("SELECT count(*) FROM pg_class WHERE relname = 'victim'") == 1


def test_target_dropped_mid_job(db, daemon_factory):
    make_users(db, 30000)
    job_id = submit(db, "users", fixed=200, sleep_ms=20)
    db.sql("CREATE TABLE other (id int PRIMARY KEY, a int, b int)")
    db.sql("INSERT INTO other SELECT g, g FROM generate_series(1, 20000) g")
    other = submit(db, "other", set_sql="b = a", where_sql=None, fixed=200, sleep_ms=20)
    d = daemon_factory()
    d.start()
    wait_batches(db, job_id, 3)
    db.sql("DROP TABLE users")
    row = wait_state(db, job_id, "failed", daemon=d)
    assert row["last_error"].startswith("42P01"), row["last_error"]
    wait_state(db, other, "done", timeout=60, daemon=d)
    assert_exact(db, "other", other, same=("b", "a"))
    assert d.running()


def test_key_column_dropped_mid_job(db, daemon_factory):
    db.sql("CREATE TABLE coded (id int PRIMARY KEY, code text NOT NULL UNIQUE, v int, w int)")
    db.sql("INSERT INTO coded SELECT g, 'c' || lpad(g::text, 6, '0'), g FROM generate_series(1, 30000) g")
    job_id = submit(db, "coded", set_sql="w = v", where_sql=None, key_columns=["code"], fixed=200, sleep_ms=20)
    d = daemon_factory()
    d.start()
    wait_batches(db, job_id, 3)
    db.sql("ALTER TABLE coded DROP COLUMN code")
    row = wait_state(db, job_id, "failed", daemon=d)
    assert row["last_error"].startswith("42703") and "code" in row["last_error"], row["last_error"]
    assert d.running()


def test_privilege_revoked_mid_job(db, make_role, role_conn, daemon_factory):
    make_users(db, 30000)
    role = make_role("backfill_submit")
    db.sql(f'GRANT SELECT, UPDATE ON users TO "{role}"')
    job_id = submit(db, "users", conn=role_conn(role), fixed=200, sleep_ms=20)
    d = daemon_factory()
    d.start()
    wait_batches(db, job_id, 3)
    db.sql(f'REVOKE UPDATE ON users FROM "{role}"')
    row = wait_state(db, job_id, "failed", daemon=d)
    assert row["last_error"].startswith("42501") and "permission denied" in row["last_error"]
    done = row["rows_scanned"]
    time.sleep(0.3)
    assert db.one("SELECT count(*) FROM users WHERE state IS NOT NULL") == done
    assert d.running()
