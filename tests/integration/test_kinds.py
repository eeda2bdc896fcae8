"""Job kinds, dry runs, estimates and progress (issue 5), against the contract (CONTRACT.md §4).

The playbook's data shapes, each checked row for row against an expected result computed
independently: status -> state, is_active -> a three-state status, full_name -> first/last name,
int id -> id_big; orders.items (jsonb) -> order_items by a `statement` job, run twice; a `verify`
job that finds exactly the rows seeded as wrong and changes nothing; a dry run that changes nothing
and estimates the real run within 2x; backfill.progress sampled while a job runs.

Parallel slices are not covered here yet.
"""

import math
import random
import time

import pytest

from bfhelp import assert_exact, assert_job, job, kill_loop, run_to_idle, submit, wait_state

# -- helpers -----------------------------------------------------------------------------------


def table_fingerprint(db, table, key="id"):
    """The table's content AND its physical tuple versions (ctid, xmin): a job that rewrote a row,
    even to the same value, changes it."""
    return db.one(f"SELECT md5(string_agg(t::text || '@' || t.ctid::text || '/' || t.xmin::text, ','"
                  f" ORDER BY {key})) || ':' || count(*) FROM {table} t")


def mismatch_keys(db, job_id):
    return [r[0] for r in db.sql("SELECT key FROM backfill.mismatches WHERE job_id = %s", [job_id])]


def seconds(delta):
    return delta.total_seconds()


# -- statement jobs ----------------------------------------------------------------------------

ORDERS = 20000


def make_orders(db, rows=ORDERS):
    """orders.items holds 0 to 4 items as a jsonb array (some NULL, some empty, some with a repeated
    sku); order_items is the child table being split out, unique on (order_id, sku)."""
    db.sql("CREATE TABLE orders (id bigint PRIMARY KEY, items jsonb, note text)")
    db.sql(f"""INSERT INTO orders (id, items, note)
              SELECT g,
                     CASE WHEN g % 17 = 0 THEN NULL
                          WHEN g % 13 = 0 THEN '[]'::jsonb
                          ELSE (SELECT jsonb_agg(jsonb_build_object('sku', 'sku-' || ((g * 7 + i) % 50),
                                                                    'qty', i + g % 3))
                                FROM generate_series(1, 1 + g % 4) i)
                     END,
                     'order ' || g
              FROM generate_series(1, {int(rows)}) g""")
    # A repeated sku within one order: ON CONFLICT DO NOTHING keeps the first, by design.
    db.sql("""UPDATE orders SET items = '[{"sku": "dup", "qty": 1}, {"sku": "dup", "qty": 2}]'
              WHERE id IN (5, 10007)""")
    db.sql("CREATE TABLE order_items (order_id bigint NOT NULL REFERENCES orders, sku text NOT NULL,"
           " qty int NOT NULL, UNIQUE (order_id, sku))")
    db.sql("ANALYZE orders")


SPLIT_SQL = """INSERT INTO order_items (order_id, sku, qty)
    SELECT o.id, i->>'sku', (i->>'qty')::int
    FROM orders o, jsonb_array_elements(o.items) i
    WHERE o.id BETWEEN $1 AND $2
    ON CONFLICT DO NOTHING"""

# The expected child rows, computed without the job's SQL: one row per distinct (order, sku), the
# first occurrence's qty.
EXPECTED_ITEMS = """SELECT DISTINCT ON (o.id, e.value->>'sku') o.id AS order_id, e.value->>'sku' AS sku,
                           (e.value->>'qty')::int AS qty
                    FROM orders o CROSS JOIN LATERAL jsonb_array_elements(o.items) WITH ORDINALITY e(value, n)
                    ORDER BY o.id, e.value->>'sku', e.n"""


def expect_items(db):
    """(Re)compute the expected child rows into expected_items; their count."""
    db.sql(f"DROP TABLE IF EXISTS expected_items; CREATE TABLE expected_items AS {EXPECTED_ITEMS}")
    return db.one("SELECT count(*) FROM expected_items")


def items_differing(db):
    """Rows of order_items and expected_items that differ, duplicates included."""
    return db.one("""SELECT count(*) FROM (
                        (SELECT order_id, sku, qty FROM order_items EXCEPT ALL SELECT * FROM expected_items)
                        UNION ALL
                        (SELECT * FROM expected_items EXCEPT ALL SELECT order_id, sku, qty FROM order_items)) d""")


def test_statement_splits_jsonb_items_into_child_table_twice_without_duplicates(db, daemon_factory):
    make_orders(db)
    expected = expect_items(db)
    assert expected > ORDERS  # the model case really has several items per order
    orders_before = table_fingerprint(db, "orders")

    first = submit(db, "orders", kind="statement", batch_sql=SPLIT_SQL, fixed=700, name="split items")
    d = daemon_factory()
    assert run_to_idle(d) == 0
    row = assert_job(db, first, d, last_error=None)
    assert items_differing(db) == 0
    assert db.one("SELECT count(*) FROM order_items") == expected
    assert db.one("SELECT qty FROM order_items WHERE order_id = 5 AND sku = 'dup'") == 1
    # The batch size counts keys walked in the target, not rows written to the child table.
    assert row["rows_scanned"] == ORDERS
    assert row["rows_changed"] == expected  # rows batch_sql affected
    assert row["batches"] == db.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s", [first])
    assert row["batches"] in (math.ceil(ORDERS / 700), math.ceil(ORDERS / 700) + 1), row["batches"]
    assert db.one("SELECT max(rows_scanned) FROM backfill.batches WHERE job_id = %s", [first]) == 700
    assert db.one("SELECT sum(rows_changed) FROM backfill.batches WHERE job_id = %s", [first]) == expected
    assert row["last_key"] == [str(ORDERS)]
    assert table_fingerprint(db, "orders") == orders_before  # the target itself is untouched

    # Run it again on the same table (a second job, after the first is done): nothing doubles.
    second = submit(db, "orders", kind="statement", batch_sql=SPLIT_SQL, fixed=700, name="split items again")
    assert run_to_idle(daemon_factory()) == 0
    row2 = assert_job(db, second, last_error=None)
    assert row2["rows_scanned"] == ORDERS and row2["rows_changed"] == 0
    assert items_differing(db) == 0
    assert db.one("SELECT count(*) FROM order_items") == expected

    # And once more after the application added orders in the meantime: only those are split.
    db.sql(f"""INSERT INTO orders (id, items) SELECT g, jsonb_build_array(jsonb_build_object('sku', 'new', 'qty', g))
              FROM generate_series({ORDERS + 1}, {ORDERS + 50}) g""")
    third = submit(db, "orders", kind="statement", batch_sql=SPLIT_SQL, fixed=700)
    assert run_to_idle(daemon_factory()) == 0
    row3 = assert_job(db, third, last_error=None)
    assert row3["rows_changed"] == 50
    assert expect_items(db) == expected + 50
    assert items_differing(db) == 0


def test_statement_binds_first_and_last_key_of_each_batch_typed_as_bigint(db, daemon_factory):
    """$1/$2 are the batch's first and last key, typed as the key column: bigint keys beyond the int
    range work with `$1 + 0` (an untyped parameter would resolve to int and overflow)."""
    n, size = 10000, 333
    db.sql("CREATE TABLE big (id bigint PRIMARY KEY, v int)")
    db.sql("INSERT INTO big SELECT 3000000000 + g * 7, g FROM generate_series(1, %s) g", [n])
    db.sql("CREATE TABLE calls (lo bigint, hi bigint, lo_type text, hi_type text, keys bigint, at_xid xid8)")
    before = table_fingerprint(db, "big")
    job_id = submit(db, "big", kind="statement", batch_sql="""
        INSERT INTO calls (lo, hi, lo_type, hi_type, keys, at_xid)
        SELECT $1 + 0, $2 + 0, pg_typeof($1)::text, pg_typeof($2)::text, count(*), pg_current_xact_id()
        FROM big WHERE id BETWEEN $1 AND $2""", fixed=size)
    d = daemon_factory()
    assert run_to_idle(d) == 0
    row = assert_job(db, job_id, d, last_error=None)
    assert db.sql("SELECT DISTINCT lo_type, hi_type FROM calls") == [("bigint", "bigint")]
    # Once per batch: one call per committed batch, with that batch's first and last key.
    nbatches = db.one("SELECT count(*) FROM backfill.batches WHERE job_id = %s", [job_id])
    assert db.one("SELECT count(*) FROM calls") == nbatches == row["batches"] == row["rows_changed"]
    assert nbatches in (math.ceil(n / size), math.ceil(n / size) + 1)
    assert db.one("""SELECT count(*) FROM calls c FULL JOIN (
                         SELECT first_key[1]::bigint AS lo, last_key[1]::bigint AS hi, rows_scanned
                         FROM backfill.batches WHERE job_id = %s AND rows_scanned > 0) b
                     ON b.lo = c.lo AND b.hi = c.hi
                     WHERE b.lo IS NULL OR c.lo IS NULL OR b.rows_scanned <> c.keys""", [job_id]) == 0
    # The calls cover every key exactly once, in order, at most `size` keys each.
    assert db.one("SELECT sum(keys) FROM calls") == n
    assert db.one("SELECT max(keys) FROM calls") == size
    assert db.one("SELECT min(lo) FROM calls") == 3000000007
    assert db.one("SELECT max(hi) FROM calls") == 3000000000 + 7 * n
    assert db.one("""SELECT count(*) FROM (SELECT lo, lag(hi) OVER (ORDER BY lo) AS prev FROM calls) s
                     WHERE lo <= prev""") == 0
    # Each call ran in its own transaction (one per batch).
    assert db.one("SELECT count(DISTINCT at_xid) FROM calls") == nbatches
    assert table_fingerprint(db, "big") == before


def test_statement_with_a_text_key(db, daemon_factory):
    """A text key: $1 and $2 are text (`$1 || ''` works), and keys with quotes, commas, braces,
    backslashes and unicode reach batch_sql intact."""
    odd = ["", " ", "a,b", "{x}", 'say "hi"', "back\\slash", "NULL", "ünïcødé", "tab\tin", "'quote'",
           "line\nbreak", "z" * 300]
    values = odd + [f"k{i:05d}" for i in range(2000)]
    db.sql("CREATE TABLE tags (name text PRIMARY KEY, label text)")
    with db.connect() as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO tags VALUES (%s, %s)", [(v, v + "!") for v in values])
    db.sql("CREATE TABLE tag_copy (name text, label text, lo text, lo_type text)")
    job_id = submit(db, "tags", kind="statement", batch_sql="""
        INSERT INTO tag_copy (name, label, lo, lo_type)
        SELECT name, label, $1 || '', pg_typeof($2)::text FROM tags WHERE name BETWEEN $1 AND $2""",
                    fixed=97)
    d = daemon_factory()
    assert run_to_idle(d) == 0
    row = assert_job(db, job_id, d, last_error=None)
    assert db.sql("SELECT DISTINCT lo_type FROM tag_copy") == [("text",)]
    assert row["rows_scanned"] == len(values) and row["rows_changed"] == len(values)
    assert db.one("SELECT count(*) FROM tag_copy") == len(values)
    assert db.one("""SELECT count(*) FROM ((SELECT name, label FROM tag_copy EXCEPT ALL SELECT name, label FROM tags)
                     UNION ALL (SELECT name, label FROM tags EXCEPT ALL SELECT name, label FROM tag_copy)) d""") == 0
    # $1 was each batch's first key.
    assert db.one("""SELECT count(*) FROM (SELECT DISTINCT lo FROM tag_copy) c
                     FULL JOIN (SELECT first_key[1] AS lo FROM backfill.batches
                                WHERE job_id = %s AND rows_scanned > 0) b USING (lo)
                     WHERE c IS NULL OR b IS NULL""", [job_id]) == 0


def test_statement_is_exactly_once_under_sigkill(db, daemon_factory):
    """batch_sql commits with its checkpoint or not at all: a copy without a unique constraint holds
    every key exactly once after repeated SIGKILLs."""
    n = 30000
    db.sql("CREATE TABLE src (id bigint PRIMARY KEY, v text)")
    db.sql("INSERT INTO src SELECT g, md5(g::text) FROM generate_series(1, %s) g", [n])
    db.sql("CREATE TABLE copies (id bigint, v text)")  # no constraint: a repeat would show
    job_id = submit(db, "src", kind="statement",
                    batch_sql="INSERT INTO copies SELECT id, v FROM src WHERE id BETWEEN $1 AND $2",
                    fixed=150, sleep_ms=10)
    d = daemon_factory(daemon={"name": "kinds-fixed", "lease_ms": 60000})
    progress = kill_loop(db, d, job_id, kills=6, rnd=random.Random(5), lo=0.0, hi=0.3)
    assert len(set(progress)) >= 4, progress  # the kills landed mid-job
    assert run_to_idle(d) == 0
    assert_job(db, job_id, d, last_error=None, rows_changed=n, rows_scanned=n)
    assert db.one("SELECT count(*) FROM copies") == n
    assert db.one("SELECT count(DISTINCT id) FROM copies") == n
    assert db.one("SELECT count(*) FROM (SELECT * FROM copies EXCEPT SELECT * FROM src) x") == 0


def test_statement_job_refuses_a_composite_key_at_insert(db):
    db.sql("CREATE TABLE events (tenant int NOT NULL, seq int NOT NULL, v int, PRIMARY KEY (tenant, seq))")
    db.sql("CREATE TABLE single (id int PRIMARY KEY, a int NOT NULL, b int NOT NULL, UNIQUE (a, b))")
    for target, cols in (("events", None), ("single", ["a", "b"])):
        extra = {"key_columns": cols} if cols else {}
        try:
            submit(db, target, kind="statement", batch_sql="SELECT $1, $2", **extra)
        except Exception as e:  # psycopg.errors.CheckViolation or similar
            msg = str(e)
        else:
            raise AssertionError(f"a statement job on composite key {target} {cols} was accepted")
        assert "single-column key" in msg or "composite" in msg, msg
    assert db.one("SELECT count(*) FROM backfill.jobs") == 0
    # A verify job may walk a composite key.
    assert submit(db, "events", kind="verify", mismatch_sql="v IS NULL") > 0


# -- verify jobs -------------------------------------------------------------------------------


@pytest.mark.versions
def test_verify_finds_exactly_the_seeded_rows_and_changes_nothing(db, daemon_factory):
    n = 30000
    db.sql("CREATE TABLE users (id bigint PRIMARY KEY, status text, state text)")
    db.sql("INSERT INTO users SELECT g, (ARRAY['active','idle','banned'])[1 + g % 3], NULL"
           f" FROM generate_series(1, {n}) g")
    db.sql("UPDATE users SET state = status")
    rnd = random.Random(11)
    wrong = sorted(set(rnd.sample(range(2, n), 150)) | {1, n})
    # Three kinds of wrong: a different value, NULL on one side, NULL on the other.
    db.sql("UPDATE users SET state = 'stale' WHERE id = ANY(%s)", [wrong[0::3]])
    db.sql("UPDATE users SET state = NULL WHERE id = ANY(%s)", [wrong[1::3]])
    db.sql("UPDATE users SET status = NULL WHERE id = ANY(%s)", [wrong[2::3]])
    db.sql("UPDATE users SET status = NULL, state = NULL WHERE id = 500")  # both NULL: not distinct
    db.sql("VACUUM ANALYZE users")
    before = table_fingerprint(db, "users")
    job_id = submit(db, "users", kind="verify", mismatch_sql="state IS DISTINCT FROM status", fixed=1000)
    d = daemon_factory()
    assert run_to_idle(d) == 0
    row = assert_job(db, job_id, d, last_error=None)
    keys = mismatch_keys(db, job_id)
    assert all(isinstance(k, list) and len(k) == 1 for k in keys), keys[:5]
    assert sorted(int(k[0]) for k in keys) == wrong  # exactly those, each once
    assert row["rows_changed"] == len(wrong)
    assert row["rows_scanned"] == n
    assert db.one("SELECT max(rows_scanned) FROM backfill.batches WHERE job_id = %s", [job_id]) <= 1000
    assert table_fingerprint(db, "users") == before  # read-only: not even a same-value rewrite

    # After the fix, a second verify finds nothing.
    db.sql("UPDATE users SET state = status WHERE state IS DISTINCT FROM status")
    again = submit(db, "users", kind="verify", mismatch_sql="state IS DISTINCT FROM status", fixed=1000)
    assert run_to_idle(daemon_factory()) == 0
    row = assert_job(db, again, last_error=None)
    assert row["rows_changed"] == 0 and mismatch_keys(db, again) == []
    assert len(mismatch_keys(db, job_id)) == len(wrong)  # the first job's findings are kept


def test_verify_with_a_composite_key_records_every_key_column(db, daemon_factory):
    db.sql("CREATE TABLE events (tenant int NOT NULL, seq int NOT NULL, v int NOT NULL, copy int,"
           " PRIMARY KEY (tenant, seq))")
    db.sql("INSERT INTO events SELECT t, s, t * 1000 + s, t * 1000 + s"
           " FROM generate_series(1, 20) t, generate_series(1, 300) s")
    wrong = [(1, 1), (3, 77), (3, 78), (12, 300), (20, 300)]
    for t, s in wrong:
        db.sql("UPDATE events SET copy = -1 WHERE tenant = %s AND seq = %s", [t, s])
    before = table_fingerprint(db, "events", key="tenant, seq")
    job_id = submit(db, "events", kind="verify", mismatch_sql="copy IS DISTINCT FROM v", fixed=250)
    assert run_to_idle(daemon_factory()) == 0
    row = assert_job(db, job_id, last_error=None)
    assert row["key_columns"] == ["tenant", "seq"]
    assert sorted(mismatch_keys(db, job_id)) == sorted([[str(t), str(s)] for t, s in wrong])
    assert row["rows_changed"] == len(wrong) and row["rows_scanned"] == 6000
    assert table_fingerprint(db, "events", key="tenant, seq") == before


# -- dry runs and estimates --------------------------------------------------------------------

DRY_ROWS = 300000


def test_dry_run_changes_nothing_and_estimates_the_real_run_within_2x(db, daemon_factory):
    db.sql("CREATE TABLE users (id bigint PRIMARY KEY, status text NOT NULL, state text)")
    db.sql("INSERT INTO users (id, status) SELECT g, (ARRAY['active','idle','banned'])[1 + g % 3]"
           f" FROM generate_series(1, {DRY_ROWS}) g")
    db.sql("VACUUM ANALYZE users")
    before = table_fingerprint(db, "users")
    pinned = dict(fixed=2000)

    dry = submit(db, "users", dry_run=True, **pinned)
    d = daemon_factory()
    assert run_to_idle(d) == 0
    drow = assert_job(db, dry, d, last_error=None)
    assert table_fingerprint(db, "users") == before  # nothing changed, not even rolled forward
    assert db.one("SELECT count(*) FROM users WHERE state IS NOT NULL") == 0
    est_s, est_wal = drow["estimated_seconds"], drow["estimated_wal_bytes"]
    assert est_s is not None and est_s > 0, drow
    assert est_wal is not None and est_wal > 0, drow
    dry_duration = seconds(drow["finished_at"] - drow["started_at"])

    real = submit(db, "users", **pinned)
    lsn0 = db.one("SELECT pg_current_wal_lsn()")
    assert run_to_idle(daemon_factory()) == 0
    real_wal = db.one("SELECT pg_current_wal_lsn() - %s::pg_lsn", [lsn0])
    rrow = assert_exact(db, "users", real, same=("state", "status"), changed=DRY_ROWS, last_error=None)
    real_s = seconds(rrow["finished_at"] - rrow["started_at"])
    assert real_s >= 1.0, f"the real run took {real_s:.2f}s: too short to judge an estimate"
    # Within 2x either way (estimated_seconds is whole seconds: allow its rounding).
    assert math.floor(real_s / 2) <= est_s <= math.ceil(real_s * 2), (est_s, real_s)
    # The dry run walked only the first batches (about 1%), not the whole table.
    assert dry_duration < real_s / 3, (dry_duration, real_s)
    # WAL: an estimate of the whole job's WAL, not of one batch (same order as the real run's).
    assert real_wal / 4 <= est_wal <= real_wal * 4, (est_wal, int(real_wal))


def test_dry_run_of_a_statement_job_writes_nothing(db, daemon_factory):
    make_orders(db)
    before = table_fingerprint(db, "orders")
    job_id = submit(db, "orders", kind="statement", batch_sql=SPLIT_SQL, fixed=200, dry_run=True)
    d = daemon_factory()
    assert run_to_idle(d) == 0
    row = assert_job(db, job_id, d, last_error=None)
    assert db.one("SELECT count(*) FROM order_items") == 0
    assert table_fingerprint(db, "orders") == before
    assert row["estimated_seconds"] is not None and row["estimated_seconds"] >= 0, row
    assert row["estimated_wal_bytes"] is not None and row["estimated_wal_bytes"] > 0, row


def test_dry_run_estimates_survive_a_locked_row_and_a_lost_connection_while_they_are_written(db, daemon_factory):
    """The estimates are written over the queue connection, which never waits on a row lock:
    while another session keeps the job's row locked, and after that connection is terminated,
    the daemon writes them again until they are in; not replaced by a plain release (which would
    leave the estimates empty)."""
    db.sql("CREATE TABLE codes (code text PRIMARY KEY, v int, w int)")  # a text key: no bounds to write
    db.sql("INSERT INTO codes SELECT md5(g::text), g, NULL FROM generate_series(1, 20000) g")
    db.sql("ANALYZE codes")
    job_id = submit(db, "codes", set_sql="w = v", where_sql=None, fixed=100, sleep_ms=100, dry_run=True)
    d = daemon_factory(daemon={"lease_ms": 60000})
    d.start()
    d.wait_for_log(r"walking 1 key column")
    with db.cluster.connect(db.name, autocommit=False) as locker:
        locker.execute("SELECT 1 FROM backfill.jobs WHERE id = %s FOR UPDATE", [job_id])
        mark = d.log_mark()
        d.wait_for_log(r"locked by another session: writing the estimates again", timeout=90)
        queue = db.sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'backfilld queue'"
                       " AND datname = %s", [db.name])
        db.sql("SELECT pg_terminate_backend(%s)", [queue[0][0]])
        d.wait_for_log(r"queue: connection lost", since=mark)
        d.wait_for_log(r"locked by another session: writing the estimates again", since=d.log_mark())
        assert job(db, job_id)["estimated_seconds"] is None
        locker.rollback()
    row = wait_state(db, job_id, "done", daemon=d)
    assert row["estimated_seconds"] is not None and row["estimated_wal_bytes"] > 0, row
    assert db.one("SELECT count(*) FROM codes WHERE w IS NOT NULL") == 0
    assert d.stop() == 0


# -- progress ----------------------------------------------------------------------------------


def sample_progress(db, job_id, timeout=90):
    """Sample backfill.progress (with the job's counters) until the job leaves running; the samples
    and the final progress row."""
    samples = []
    deadline = time.monotonic() + timeout
    with db.connect() as conn:
        q = ("SELECT p.state, p.percent, p.rows_per_second, p.eta, p.throttled_reason, j.rows_scanned,"
             " j.batches, j.estimated_seconds, j.estimated_wal_bytes"
             " FROM backfill.progress p JOIN backfill.jobs j USING (id) WHERE p.id = %s")
        names = ["state", "percent", "rows_per_second", "eta", "throttled_reason", "rows_scanned", "batches",
                 "estimated_seconds", "estimated_wal_bytes"]
        while time.monotonic() < deadline:
            s = dict(zip(names, conn.execute(q, [job_id]).fetchone()))
            if s["state"] in ("done", "failed", "cancelled"):
                return samples, s
            samples.append(s)
            time.sleep(0.03)
    raise AssertionError(f"job {job_id} still running after {timeout}s: {samples[-1:]}")


def test_progress_percent_rate_and_eta_while_running(db, daemon_factory):
    """50,000 rows in pinned batches of 250 with a pause between them. The first two batches are slow
    (their rows sleep in set_sql), so the job sits below 1% with a batch committed for a while."""
    n, size = 50000, 250
    db.sql("CREATE TABLE users (id bigint PRIMARY KEY, status text NOT NULL, state text)")
    db.sql("INSERT INTO users (id, status) SELECT g, (ARRAY['active','idle','banned'])[1 + g % 3]"
           f" FROM generate_series(1, {n}) g")
    db.sql("VACUUM ANALYZE users")
    job_id = submit(db, "users", set_sql="state = status || CASE WHEN id <= 500 THEN pg_sleep(0.004)::text"
                                         " ELSE '' END", where_sql=None, fixed=size, sleep_ms=20)
    pending = db.sql("SELECT percent, eta FROM backfill.progress WHERE id = %s", [job_id])
    assert pending[0][1] is None  # nothing done: no eta
    d = daemon_factory()
    d.start()
    samples, final = sample_progress(db, job_id)
    assert final["state"] == "done", (final, d.log_tail())
    assert_exact(db, "users", job_id, same=("state", "status"))

    running = [s for s in samples if s["state"] == "running"]
    assert len(running) > 50, len(running)
    for s in running:
        if s["percent"] is not None:
            assert 0 <= s["percent"] <= 100, s
        if s["batches"] > 0:
            assert s["rows_per_second"] is not None and s["rows_per_second"] > 0, s
    percents = [s["percent"] for s in running if s["percent"] is not None]
    assert percents == sorted(percents), "percent went backwards"
    # Before 1% (a batch committed, so a rate exists): no eta.
    early = [s for s in running if 0 < s["rows_scanned"] < 0.009 * n]
    assert len(early) >= 5, [(s["rows_scanned"], s["batches"]) for s in running[:20]]
    assert all(s["eta"] is None for s in early), [s for s in early if s["eta"] is not None][:3]
    assert all(s["percent"] is not None and s["percent"] < 1 for s in early), early[:3]
    # Past 1% and running freely: an eta, and the live estimates are kept.
    later = [s for s in running if 0.02 * n <= s["rows_scanned"] <= 0.95 * n and s["throttled_reason"] is None]
    assert len(later) >= 20, len(later)
    assert all(s["eta"] is not None for s in later), [s for s in later if s["eta"] is None][:3]
    assert all(s["percent"] >= 1 for s in later), later[:3]
    mid = [s for s in later if 0.3 * n <= s["rows_scanned"] <= 0.6 * n]
    assert mid and all(0 < s["eta"].total_seconds() < 60 for s in mid), mid[:3]
    assert all(s["estimated_seconds"] is not None and s["estimated_wal_bytes"] is not None
               and s["estimated_wal_bytes"] > 0 for s in later), [s for s in later][:3]
    # Done: 100.
    assert final["percent"] == 100, final


def test_progress_never_above_100_with_a_stale_row_estimate(db, daemon_factory):
    """A text key (no key position to go by): percent comes from rows_scanned / rows_estimate,
    and pg_class says 2,000 rows where there are 10,000."""
    db.sql("CREATE TABLE tags (name text PRIMARY KEY, label text, copy text) WITH (autovacuum_enabled = false)")
    db.sql("INSERT INTO tags (name, label) SELECT 'k' || lpad(g::text, 6, '0'), g::text"
           " FROM generate_series(1, 2000) g")
    db.sql("ANALYZE tags")
    db.sql("INSERT INTO tags (name, label) SELECT 'k' || lpad(g::text, 6, '0'), g::text"
           " FROM generate_series(2001, 10000) g")
    job_id = submit(db, "tags", set_sql="copy = label", where_sql=None, fixed=100, sleep_ms=15)
    d = daemon_factory()
    d.start()
    samples, final = sample_progress(db, job_id)
    assert final["state"] == "done", (final, d.log_tail())
    running = [s for s in samples if s["state"] == "running"]
    assert running and any(s["rows_scanned"] > 2500 for s in running)  # sampled past the estimate
    assert all(s["percent"] is None or 0 <= s["percent"] <= 100 for s in running), \
        max((s["percent"] for s in running if s["percent"] is not None), default=None)
    assert final["percent"] == 100
    assert_exact(db, "tags", job_id, same=("copy", "label"))


# -- the playbook's data shapes (update jobs) --------------------------------------------------


def test_shape_rename_status_to_state(db, daemon_factory):
    """expand/contract rename: state is added beside status; some rows were already dual-written,
    some hold a stale value; NULL status copies as NULL."""
    db.sql("CREATE TABLE users (id bigint PRIMARY KEY, status text, state text, email text)")
    db.sql("""INSERT INTO users (id, status, email)
              SELECT g, CASE WHEN g % 101 = 0 THEN NULL
                             ELSE (ARRAY['active','idle','banned','ünïcødé'])[1 + g % 4] END,
                     'u' || g || '@example.com' FROM generate_series(1, 25000) g""")
    db.sql("UPDATE users SET state = status WHERE id % 7 = 0")           # dual-written already
    db.sql("UPDATE users SET state = 'stale' WHERE id % 11 = 0")          # wrong: must be overwritten
    db.sql("CREATE TABLE expected AS SELECT id, status AS state, status, email FROM users")
    changed = db.one("SELECT count(*) FROM users WHERE state IS DISTINCT FROM status")
    assert 0 < changed < 25000
    job_id = submit(db, "users", set_sql="state = status", where_sql="state IS DISTINCT FROM status",
                    batch_size=1000)
    assert run_to_idle(daemon_factory()) == 0
    row = assert_job(db, job_id, last_error=None)
    assert db.one("""SELECT count(*) FROM users u FULL JOIN expected e USING (id)
                     WHERE u.id IS NULL OR e.id IS NULL OR u.state IS DISTINCT FROM e.state
                        OR u.status IS DISTINCT FROM e.status OR u.email IS DISTINCT FROM e.email""") == 0
    assert row["rows_changed"] == changed
    assert db.one("SELECT state FROM users WHERE id = 101") is None
    assert db.one("SELECT state FROM users WHERE id = 77") == "idle"  # was 'stale'


def test_shape_is_active_to_three_state_status_with_check(db, daemon_factory):
    db.sql("CREATE TABLE accounts (id int PRIMARY KEY, is_active boolean, status text,"
           " CONSTRAINT status_values CHECK (status IN ('active', 'inactive', 'unknown')))")
    db.sql("""INSERT INTO accounts (id, is_active)
              SELECT g, CASE g % 5 WHEN 0 THEN NULL WHEN 1 THEN false ELSE true END
              FROM generate_series(1, 20000) g""")
    # Expected, computed independently of the job's expression.
    db.sql("""CREATE TABLE expected AS
              SELECT id, coalesce(CASE is_active WHEN true THEN 'active' WHEN false THEN 'inactive' END,
                                  'unknown') AS status FROM accounts""")
    job_id = submit(db, "accounts",
                    set_sql="status = CASE WHEN is_active THEN 'active' WHEN NOT is_active THEN 'inactive'"
                            " ELSE 'unknown' END",
                    where_sql="status IS NULL", batch_size=1500)
    assert run_to_idle(daemon_factory()) == 0
    row = assert_job(db, job_id, last_error=None)
    assert row["rows_changed"] == 20000
    assert db.one("""SELECT count(*) FROM accounts a FULL JOIN expected e USING (id)
                     WHERE a.id IS NULL OR e.id IS NULL OR a.status IS DISTINCT FROM e.status""") == 0
    assert db.sql("SELECT status, count(*) FROM accounts GROUP BY 1 ORDER BY 1") == \
        [("active", 12000), ("inactive", 4000), ("unknown", 4000)]
    # The contract step is now possible: every row has a status.
    db.sql("ALTER TABLE accounts ALTER COLUMN status SET NOT NULL")


# Hand-written cases: full_name -> (first_name, last_name).
NAME_CASES = [
    ("Ada Lovelace", "Ada", "Lovelace"),
    ("Plato", "Plato", None),
    ("Grace Brewster Murray Hopper", "Grace", "Brewster Murray Hopper"),
    ("  Alan   Mathison  Turing  ", "Alan", "Mathison  Turing"),
    ("   Leading", "Leading", None),
    ("Trailing   ", "Trailing", None),
    ("José Ünïcødé", "José", "Ünïcødé"),
    ("李 小龍", "李", "小龍"),
    ("Jean-Luc Picard", "Jean-Luc", "Picard"),
    ("Miles O'Brien", "Miles", "O'Brien"),
    ("", None, None),
    ("     ", None, None),
    (None, None, None),
]

FIRST_SQL = "nullif(split_part(btrim(full_name), ' ', 1), '')"
LAST_SQL = ("nullif(btrim(substr(btrim(full_name), length(split_part(btrim(full_name), ' ', 1)) + 1)), '')")


def split_name(full):
    """The same rule in Python: trim spaces, first word, the rest trimmed; empty is NULL."""
    if full is None:
        return None, None
    first, _, rest = full.strip(" ").partition(" ")
    return first or None, rest.strip(" ") or None


def test_shape_full_name_split_with_odd_names(db, daemon_factory):
    rnd = random.Random(3)
    words = ["Anne", "Bo", "Chloé", "Dmitri", "Émile", "Ōta", "Zoë", "van", "der", "Ng", "Ødegård", "Li"]
    names = [c[0] for c in NAME_CASES]
    for _ in range(8000):
        parts = rnd.sample(words, rnd.randint(1, 4))
        sep = lambda: " " * rnd.choice([1, 1, 1, 2, 3])  # noqa: E731
        name = sep().join(parts)
        if rnd.random() < 0.2:
            name = " " * rnd.randint(1, 3) + name
        if rnd.random() < 0.2:
            name = name + " " * rnd.randint(1, 3)
        names.append(rnd.choice([name, name, name, name, name, "", None]))
    db.sql("CREATE TABLE people (id int PRIMARY KEY, full_name text, first_name text, last_name text)")
    with db.connect() as conn:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO people (id, full_name) VALUES (%s, %s)", list(enumerate(names, 1)))
    job_id = submit(db, "people", set_sql=f"first_name = {FIRST_SQL}, last_name = {LAST_SQL}",
                    where_sql=None, batch_size=700)
    assert run_to_idle(daemon_factory()) == 0
    row = assert_job(db, job_id, last_error=None)
    assert row["rows_changed"] == len(names)
    got = {r[0]: (r[1], r[2], r[3]) for r in db.sql("SELECT id, full_name, first_name, last_name FROM people")}
    assert len(got) == len(names)
    # Hand-written expectations first (they pin the rule), then every row against the Python rule.
    for i, (full, first, last) in enumerate(NAME_CASES, 1):
        assert got[i] == (full, first, last), (i, got[i])
        assert split_name(full) == (first, last)
    wrong = [(i, got[i]) for i, full in enumerate(names, 1) if got[i] != (full, *split_name(full))]
    assert wrong == [], wrong[:10]
    # And the same expression in a plain SELECT agrees.
    assert db.one(f"SELECT count(*) FROM people WHERE first_name IS DISTINCT FROM {FIRST_SQL}"
                  f" OR last_name IS DISTINCT FROM {LAST_SQL}") == 0


def test_shape_int_id_copied_into_bigint(db, daemon_factory):
    """Keys from the int minimum to the int maximum, negative ones included: the walk starts below
    zero, and every id_big equals its id."""
    db.sql("CREATE TABLE legacy (id int PRIMARY KEY, id_big bigint, payload text)")
    db.sql("""INSERT INTO legacy (id, payload)
              SELECT DISTINCT v, 'p' || v FROM (
                  SELECT unnest(ARRAY[-2147483648, -2147483647, -1, 0, 1, 2147483646, 2147483647]) AS v
                  UNION ALL SELECT (g * 104729) % 2147483647 - 1073741823 FROM generate_series(1, 20000) g) s""")
    db.sql("UPDATE legacy SET id_big = 0 WHERE id % 9 = 0 AND id <> 0")  # a bad dual-write, to be fixed
    db.sql("UPDATE legacy SET id_big = id WHERE id % 5 = 0")             # already copied
    db.sql("CREATE TABLE expected AS SELECT id::bigint AS id_big, payload FROM legacy")
    total = db.one("SELECT count(*) FROM legacy")
    todo = db.one("SELECT count(*) FROM legacy WHERE id_big IS DISTINCT FROM id")
    job_id = submit(db, "legacy", set_sql="id_big = id", where_sql="id_big IS DISTINCT FROM id",
                    batch_size=1000)
    assert run_to_idle(daemon_factory()) == 0
    row = assert_job(db, job_id, last_error=None)
    assert row["rows_scanned"] == total and row["rows_changed"] == todo
    assert db.one("""SELECT count(*) FROM legacy l FULL JOIN expected e ON e.id_big = l.id::bigint
                     WHERE l.id IS NULL OR e.id_big IS NULL OR l.id_big IS DISTINCT FROM e.id_big
                        OR l.payload IS DISTINCT FROM e.payload""") == 0
    assert db.sql("SELECT id_big FROM legacy WHERE id IN (-2147483648, 2147483647) ORDER BY id") == \
        [(-2147483648,), (2147483647,)]
    assert db.one("SELECT count(*) FROM legacy WHERE id_big::text <> id::text") == 0
    assert row["last_key"] == ["2147483647"]
