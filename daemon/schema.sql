-- backfilld queue schema (version 1).
--
-- Every schema name in this file is a placeholder (at-sign, "schema", at-sign) that backfilld
-- replaces with the quoted schema name (--install-schema, --schema-sql). Never put the placeholder
-- inside a single-quoted literal, where a name holding a quote would break the text.
-- The installer runs this whole file in one transaction after taking an advisory lock, so the
-- file holds no transaction control. Running it again changes no data and no definition.
--
-- Layout:
--   1. the schema and schema_version (one row; 0 while a first install is under way), then a guard
--      that refuses to run over a newer schema;
--   2. the version-1 tables, CREATE ... IF NOT EXISTS. Once released, never edit these
--      statements: an existing database keeps the tables it was created with;
--   3. upgrades: one DO block per version after 1, each guarded by the recorded version;
--   4. functions, triggers and the view, CREATE OR REPLACE, always in their latest form (they may
--      use columns added by step 3);
--   5. record the version.
--
-- To add version 2:
--   * in step 3 add a block
--         DO $v2$ BEGIN
--           IF (SELECT version FROM @schema@.schema_version) < 2 THEN
--             ALTER TABLE @schema@.jobs ADD COLUMN ...;
--           END IF;
--         END $v2$;
--     (CREATE OR REPLACE cannot change a function's result type or drop a view's column: drop
--     such an object in the block, step 4 recreates it);
--   * edit the objects of step 4 to their new form;
--   * change 1 to 2 in the guard (step 1) and in step 5, and SCHEMA_VERSION in include/schema.h.
--
-- Who writes what: users INSERT jobs and steer them through jobs.state (or pause(), resume(),
-- cancel()); the trigger on jobs validates every change. backfilld's sessions run
-- set_config('backfilld.daemon', 'on', false) and use the _-prefixed functions. That setting is
-- not a security boundary (any session can set it), so the trigger keeps what decides whose
-- privileges a batch runs with (run_as, target, the SQL) unchangeable even for such sessions.

-- 1. Schema, version, guard -------------------------------------------------------------------

CREATE SCHEMA IF NOT EXISTS @schema@;

CREATE TABLE IF NOT EXISTS @schema@.schema_version (
    version int NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS schema_version_one_row ON @schema@.schema_version ((true));
INSERT INTO @schema@.schema_version (version)
SELECT 0 WHERE NOT EXISTS (SELECT FROM @schema@.schema_version);

DO $guard$
DECLARE
    v int := (SELECT version FROM @schema@.schema_version);
BEGIN
    IF v > 1 THEN
        RAISE EXCEPTION 'the queue schema is at version %, newer than this backfilld (version 1)', v
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Upgrade backfilld; never downgrade the schema.';
    END IF;
END
$guard$;

-- 2. Version-1 tables ---------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS @schema@.jobs (
    id                        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                      text,
    kind                      text NOT NULL DEFAULT 'update',
    target                    regclass NOT NULL,
    key_columns               text[],
    set_sql                   text,
    where_sql                 text,
    batch_sql                 text,
    mismatch_sql              text,
    -- per-job overrides of the throttle settings; NULL uses the configuration
    batch_size                int,
    min_batch_size            int,
    max_batch_size            int,
    target_batch_ms           int,
    sleep_ms                  int,
    max_sleep_ms              int,
    max_replication_lag_bytes bigint,
    max_replication_lag_ms    int,
    max_blocked_ms            int,
    lock_timeout_ms           int,
    statement_timeout_ms      int,
    max_failed_rows           bigint,
    parallel                  int NOT NULL DEFAULT 1,
    dry_run                   boolean NOT NULL DEFAULT false,
    estimated_seconds         bigint,
    estimated_wal_bytes       bigint,
    priority                  int NOT NULL DEFAULT 0,
    not_before                timestamptz,
    state                     text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'paused', 'done', 'failed', 'cancelled')),
    run_as                    name,
    -- written by the daemon
    owner                     text,
    lease_until               timestamptz,
    last_key                  text[],
    rows_scanned              bigint NOT NULL DEFAULT 0,
    rows_changed              bigint NOT NULL DEFAULT 0,
    batches                   bigint NOT NULL DEFAULT 0,
    failed_rows               bigint NOT NULL DEFAULT 0,
    wal_bytes                 bigint NOT NULL DEFAULT 0,  -- written by its committed batches
    key_min                   text,  -- a numeric first key column's bounds at the start, for percent
    key_max                   text,
    rows_estimate             bigint,
    batch_size_now            int,
    sleep_ms_now              int,
    throttled_reason          text,
    last_error                text,
    created_at                timestamptz NOT NULL DEFAULT now(),
    started_at                timestamptz,
    updated_at                timestamptz NOT NULL DEFAULT now(),
    finished_at               timestamptz
);

-- What _claim scans.
CREATE INDEX IF NOT EXISTS jobs_claim_idx ON @schema@.jobs (priority DESC, id)
    WHERE state IN ('pending', 'running');
-- Two running jobs on one table are impossible (_claim never tries; this is the backstop).
ALTER TABLE @schema@.jobs ADD COLUMN IF NOT EXISTS wal_bytes bigint NOT NULL DEFAULT 0;
ALTER TABLE @schema@.jobs ADD COLUMN IF NOT EXISTS key_min text;
ALTER TABLE @schema@.jobs ADD COLUMN IF NOT EXISTS key_max text;

CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_running_per_target ON @schema@.jobs (target)
    WHERE state = 'running';

CREATE TABLE IF NOT EXISTS @schema@.failed_rows (
    job_id  bigint NOT NULL REFERENCES @schema@.jobs ON DELETE CASCADE,
    key     text[],
    sqlstate text,
    message text,
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS failed_rows_job_idx ON @schema@.failed_rows (job_id);

CREATE TABLE IF NOT EXISTS @schema@.mismatches (
    job_id bigint NOT NULL REFERENCES @schema@.jobs ON DELETE CASCADE,
    key    text[],
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS mismatches_job_idx ON @schema@.mismatches (job_id);

CREATE TABLE IF NOT EXISTS @schema@.batches (
    job_id           bigint NOT NULL REFERENCES @schema@.jobs ON DELETE CASCADE,
    batch            bigint NOT NULL,
    first_key        text[],
    last_key         text[],
    rows_scanned     bigint,
    rows_changed     bigint,
    duration_ms      double precision,
    sleep_ms         int,
    lag_bytes        bigint,
    lag_ms           bigint,
    blocked_sessions int,
    wal_bytes        bigint,
    batch_size       int,
    throttled_reason text,
    finished_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (job_id, batch)
);

-- Parallel jobs (parallel > 1): the key range cut into slices, each walked on its own connection
-- with its own checkpoint. A slice covers the keys after lower_key (NULL: from the first) up to
-- upper_key inclusive (NULL: to the last). target and key_columns say what the cut was made for:
-- a job whose target or key changed is cut again.
CREATE TABLE IF NOT EXISTS @schema@.slices (
    job_id       bigint NOT NULL REFERENCES @schema@.jobs ON DELETE CASCADE,
    slice        int NOT NULL,
    target       regclass NOT NULL,
    key_columns  text[] NOT NULL,
    lower_key    text[],
    upper_key    text[],
    last_key     text[],  -- the slice's checkpoint
    done         boolean NOT NULL DEFAULT false,
    rows_scanned bigint NOT NULL DEFAULT 0,
    batches      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, slice)
);

-- 3. Upgrades (none yet: version 1 is the first) ------------------------------------------------

-- 4. Functions, triggers, views -----------------------------------------------------------------

-- True on backfilld's own sessions.
CREATE OR REPLACE FUNCTION @schema@._is_daemon() RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(current_setting('backfilld.daemon', true), '') = 'on' $$;

-- The daemon functions refuse other sessions with a clear message rather than the trigger's.
CREATE OR REPLACE FUNCTION @schema@._require_daemon(p_function text) RETURNS void
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT @schema@._is_daemon() THEN
        RAISE EXCEPTION '% is for backfilld sessions only', p_function
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'backfilld runs set_config(''backfilld.daemon'', ''on'', false) at connect.';
    END IF;
END
$$;

-- Columns only the daemon writes: a user may neither set them at INSERT nor change them.
-- The counters must be 0 at INSERT, the rest NULL.
CREATE OR REPLACE FUNCTION @schema@._daemon_columns() RETURNS text[]
LANGUAGE sql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$ SELECT ARRAY['owner', 'lease_until', 'last_key', 'rows_scanned', 'rows_changed', 'batches',
                   'failed_rows', 'wal_bytes', 'key_min', 'key_max', 'rows_estimate', 'batch_size_now', 'sleep_ms_now',
                   'throttled_reason', 'last_error', 'estimated_seconds', 'estimated_wal_bytes',
                   'started_at', 'finished_at'] $$;

-- Columns that decide what a job runs and as whom. Even a daemon session cannot change them.
CREATE OR REPLACE FUNCTION @schema@._definition_columns() RETURNS text[]
LANGUAGE sql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$ SELECT ARRAY['kind', 'target', 'key_columns', 'set_sql', 'where_sql', 'batch_sql',
                   'mismatch_sql', 'parallel'] $$;

-- The first of COLUMNS whose value differs between the two rows, NULL when none does.
CREATE OR REPLACE FUNCTION @schema@._first_changed(p_old @schema@.jobs, p_new @schema@.jobs,
                                                   p_columns text[]) RETURNS text
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c FROM unnest(p_columns) WITH ORDINALITY AS u(c, n)
    WHERE to_jsonb(p_old) -> c IS DISTINCT FROM to_jsonb(p_new) -> c
    ORDER BY n LIMIT 1
$$;

-- Rows the job expects to walk: the planner's estimate (summed over leaf partitions for a
-- partitioned table); NULL while the table was never vacuumed or analyzed.
CREATE OR REPLACE FUNCTION @schema@._estimate_rows(p_target regclass) RETURNS bigint
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN c.relkind = 'p' THEN
            (SELECT sum(l.reltuples)::bigint FROM pg_partition_tree(c.oid) t
             JOIN pg_class l ON l.oid = t.relid WHERE t.isleaf AND l.reltuples >= 0)
        WHEN c.reltuples >= 0 THEN c.reltuples::bigint
        END
    FROM pg_class c WHERE c.oid = p_target
$$;

-- The primary key's columns in index order, NULL without a primary key.
CREATE OR REPLACE FUNCTION @schema@._primary_key(p_target regclass) RETURNS text[]
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT array_agg(a.attname::text ORDER BY k.n)
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = p_target AND i.indisprimary AND k.n <= i.indnkeyatts
    HAVING count(*) > 0
$$;

-- Refuses key columns that cannot be walked in key order, naming the rule that failed.
CREATE OR REPLACE FUNCTION @schema@._check_key(p_target regclass, p_key text[]) RETURNS void
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c text;
    att record;
BEGIN
    IF cardinality(p_key) = 0 OR array_ndims(p_key) <> 1 THEN
        RAISE EXCEPTION 'key_columns must list at least one column'
            USING ERRCODE = 'check_violation', HINT = 'Leave it NULL to use the primary key.';
    END IF;
    FOREACH c IN ARRAY p_key LOOP
        IF c IS NULL THEN
            RAISE EXCEPTION 'key_columns must not contain NULL' USING ERRCODE = 'check_violation';
        END IF;
        IF (SELECT count(*) FROM unnest(p_key) AS u(k) WHERE u.k = c) > 1 THEN
            RAISE EXCEPTION 'key_columns names column "%" twice', c USING ERRCODE = 'check_violation';
        END IF;
        SELECT a.attnotnull INTO att FROM pg_attribute a
        WHERE a.attrelid = p_target AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'key column "%" does not exist in table %', c, p_target
                USING ERRCODE = 'check_violation',
                      HINT = 'key_columns holds column names as they are stored, without quotes.';
        END IF;
        IF NOT att.attnotnull THEN
            RAISE EXCEPTION 'key column "%" of table % is nullable: key columns must be NOT NULL',
                c, p_target USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    IF NOT EXISTS (
        SELECT FROM pg_index i
        WHERE i.indrelid = p_target AND i.indisunique AND i.indisvalid
          AND i.indpred IS NULL AND i.indexprs IS NULL
          AND i.indnkeyatts = cardinality(p_key)
          AND (SELECT array_agg(a.attname::text ORDER BY k.n)
               FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
               WHERE k.n <= i.indnkeyatts) = p_key)
    THEN
        RAISE EXCEPTION 'key_columns (%) of table % are not the key of a unique index',
            array_to_string(p_key, ', '), p_target
            USING ERRCODE = 'check_violation',
                  HINT = 'Name the columns of the primary key or of a valid unique index without '
                         'predicate or expressions, in index order.';
    END IF;
END
$$;

-- Refuses throttle overrides out of range or inconsistent with each other.
CREATE OR REPLACE FUNCTION @schema@._check_sizes(j @schema@.jobs) RETURNS void
LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    size record;
BEGIN
    FOR size IN
        SELECT * FROM (VALUES
            ('batch_size', j.batch_size, 1), ('min_batch_size', j.min_batch_size, 1),
            ('max_batch_size', j.max_batch_size, 1), ('target_batch_ms', j.target_batch_ms, 1),
            ('max_sleep_ms', j.max_sleep_ms, 1),
            ('max_replication_lag_bytes', j.max_replication_lag_bytes, 1),
            ('max_replication_lag_ms', j.max_replication_lag_ms, 1),
            ('max_blocked_ms', j.max_blocked_ms, 1), ('lock_timeout_ms', j.lock_timeout_ms, 1),
            ('statement_timeout_ms', j.statement_timeout_ms, 1),
            ('sleep_ms', j.sleep_ms, 0), ('max_failed_rows', j.max_failed_rows, 0),
            ('parallel', j.parallel, 1)) AS v(col, val, low)
        WHERE v.val < v.low
    LOOP
        RAISE EXCEPTION '% must be % (got %)', size.col,
            CASE size.low WHEN 0 THEN '>= 0' ELSE '> 0' END, size.val
            USING ERRCODE = 'check_violation';
    END LOOP;
    IF j.min_batch_size > j.max_batch_size THEN
        RAISE EXCEPTION 'min_batch_size (%) must not exceed max_batch_size (%)',
            j.min_batch_size, j.max_batch_size USING ERRCODE = 'check_violation';
    END IF;
    IF j.batch_size < j.min_batch_size OR j.batch_size > j.max_batch_size THEN
        RAISE EXCEPTION 'batch_size (%) must lie between min_batch_size (%) and max_batch_size (%)',
            j.batch_size, j.min_batch_size, j.max_batch_size USING ERRCODE = 'check_violation';
    END IF;
    IF j.sleep_ms > j.max_sleep_ms THEN
        RAISE EXCEPTION 'sleep_ms (%) must not exceed max_sleep_ms (%)', j.sleep_ms, j.max_sleep_ms
            USING ERRCODE = 'check_violation';
    END IF;
END
$$;

-- Validates what a job is (kind, target, key, SQL, sizes); returns the key columns to store
-- (the primary key's when the job names none).
CREATE OR REPLACE FUNCTION @schema@._check_definition(j @schema@.jobs) RETURNS text[]
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel record;
    v_key text[] := j.key_columns;
    needed text := CASE j.kind WHEN 'update' THEN 'set_sql' WHEN 'statement' THEN 'batch_sql'
                               WHEN 'verify' THEN 'mismatch_sql' END;
    sql_col record;
BEGIN
    IF needed IS NULL THEN
        RAISE EXCEPTION 'unknown kind "%": use update, statement or verify', j.kind
            USING ERRCODE = 'check_violation';
    END IF;

    IF j.target IS NULL THEN
        RAISE EXCEPTION 'target is required: the table the job walks' USING ERRCODE = 'check_violation';
    END IF;
    SELECT c.relkind, c.relnamespace = t.typnamespace AS in_queue INTO rel
    FROM pg_class c, pg_type t
    WHERE c.oid = j.target AND t.oid = pg_typeof(j)::oid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'target % does not exist', j.target::oid USING ERRCODE = 'check_violation';
    END IF;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'target % is not a table (relkind %)', j.target, rel.relkind
            USING ERRCODE = 'check_violation',
                  HINT = 'A job walks an ordinary or partitioned table.';
    END IF;
    IF rel.in_queue THEN
        RAISE EXCEPTION 'target % is a table of the queue itself', j.target
            USING ERRCODE = 'check_violation';
    END IF;

    -- Each kind needs its own SQL column and refuses the others'.
    FOR sql_col IN
        SELECT * FROM (VALUES ('set_sql', j.set_sql, 'update'), ('where_sql', j.where_sql, 'update'),
                              ('batch_sql', j.batch_sql, 'statement'),
                              ('mismatch_sql', j.mismatch_sql, 'verify')) AS v(col, val, kind)
    LOOP
        IF sql_col.col = needed AND coalesce(btrim(sql_col.val, E' \t\r\n'), '') = '' THEN
            RAISE EXCEPTION '% is required for % jobs', needed, j.kind
                USING ERRCODE = 'check_violation';
        ELSIF sql_col.kind <> j.kind AND sql_col.val IS NOT NULL THEN
            RAISE EXCEPTION '% is only used by % jobs', sql_col.col, sql_col.kind
                USING ERRCODE = 'check_violation',
                      HINT = format('A %s job uses %s.', j.kind, needed);
        END IF;
    END LOOP;

    IF v_key IS NULL THEN
        v_key := @schema@._primary_key(j.target);
        IF v_key IS NULL THEN
            RAISE EXCEPTION 'table % has no primary key: name key_columns', j.target
                USING ERRCODE = 'check_violation',
                      HINT = 'key_columns must be covered by a unique index on NOT NULL columns.';
        END IF;
    ELSE
        PERFORM @schema@._check_key(j.target, v_key);
    END IF;
    IF j.kind = 'statement' AND cardinality(v_key) <> 1 THEN
        RAISE EXCEPTION 'statement jobs need a single-column key: $1 and $2 carry the first and last key (key_columns is %)',
            v_key USING ERRCODE = 'check_violation';
    END IF;

    PERFORM @schema@._check_sizes(j);
    RETURN v_key;
END
$$;

-- BEFORE INSERT OR UPDATE on jobs: validates users' rows and state changes.
CREATE OR REPLACE FUNCTION @schema@._jobs_before() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col text;
    newrow jsonb;
    v_key text[];
BEGIN
    IF TG_OP = 'UPDATE' AND @schema@._is_daemon() THEN
        -- Every checkpoint passes here: compare the columns directly (cheap) and name the one
        -- that changed only on the way to the error. The list is _definition_columns()'s plus
        -- id, run_as and created_at (test_schema.py checks each of them).
        IF (NEW.id, NEW.run_as, NEW.created_at, NEW.kind, NEW.target, NEW.key_columns, NEW.set_sql,
            NEW.where_sql, NEW.batch_sql, NEW.mismatch_sql, NEW.parallel)
           IS DISTINCT FROM (OLD.id, OLD.run_as, OLD.created_at, OLD.kind, OLD.target, OLD.key_columns,
                             OLD.set_sql, OLD.where_sql, OLD.batch_sql, OLD.mismatch_sql, OLD.parallel)
        THEN
            col := @schema@._first_changed(OLD, NEW,
                       ARRAY['id', 'run_as', 'created_at'] || @schema@._definition_columns());
            RAISE EXCEPTION 'column % of job % cannot be changed by backfilld', col, OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.updated_at := now();
        RETURN NEW;
    END IF;

    IF TG_OP = 'INSERT' THEN
        newrow := to_jsonb(NEW);
        FOREACH col IN ARRAY @schema@._daemon_columns() LOOP
            IF newrow -> col IS DISTINCT FROM
               (CASE WHEN col IN ('rows_scanned', 'rows_changed', 'batches', 'failed_rows', 'wal_bytes')
                     THEN '0' ELSE 'null' END)::jsonb THEN
                RAISE EXCEPTION 'column % is written by the daemon', col
                    USING ERRCODE = 'check_violation', HINT = 'Leave it out of the INSERT.';
            END IF;
        END LOOP;
        IF NEW.state IS NULL OR NEW.state NOT IN ('pending', 'paused') THEN
            RAISE EXCEPTION 'a new job''s state must be pending or paused, not "%"', NEW.state
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.run_as IS NOT NULL AND NEW.run_as <> current_user THEN
            RAISE EXCEPTION 'run_as is the role that inserts the job and cannot be set to another role'
                USING ERRCODE = 'check_violation',
                      HINT = format('Leave run_as out, or insert as role %s (SET ROLE).', NEW.run_as);
        END IF;
        NEW.run_as := current_user;
        NEW.key_columns := @schema@._check_definition(NEW);
        NEW.updated_at := now();
        RETURN NEW;
    END IF;

    -- UPDATE by a user.
    col := @schema@._first_changed(OLD, NEW,
               ARRAY['id', 'run_as', 'created_at'] || @schema@._daemon_columns());
    IF col IS NOT NULL THEN
        RAISE EXCEPTION 'column % is written by the daemon', col
            USING ERRCODE = 'check_violation',
                  HINT = 'Steer a job through its state, or pause(), resume(), cancel().';
    END IF;

    IF NEW.state IS DISTINCT FROM OLD.state THEN
        -- Only the job's role (or a member of it) steers the job.
        IF EXISTS (SELECT FROM pg_roles r WHERE r.rolname = OLD.run_as)
           AND NOT pg_has_role(current_user, OLD.run_as, 'MEMBER') THEN
            RAISE EXCEPTION 'only role % (run_as) can change the state of job %', OLD.run_as, OLD.id
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF OLD.state = 'done' THEN
            RAISE EXCEPTION 'job % is done: its state cannot change', OLD.id
                USING ERRCODE = 'check_violation', HINT = 'Insert a new job to run it again.';
        ELSIF NEW.state IS NULL OR NEW.state IN ('running', 'done', 'failed') THEN
            RAISE EXCEPTION 'state % is set by the daemon', coalesce(NEW.state, 'NULL')
                USING ERRCODE = 'check_violation',
                      HINT = 'Users set pending (resume), paused or cancelled.';
        ELSIF NOT (OLD.state, NEW.state) IN (('pending', 'paused'), ('pending', 'cancelled'),
                                            ('running', 'paused'), ('running', 'cancelled'),
                                            ('paused', 'pending'), ('paused', 'cancelled'),
                                            ('failed', 'pending'), ('failed', 'cancelled'),
                                            ('cancelled', 'pending')) THEN
            RAISE EXCEPTION 'job % cannot go from % to %', OLD.id, OLD.state, NEW.state
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.state = 'pending' AND OLD.state IN ('failed', 'cancelled') THEN
            NEW.last_error := NULL;
            NEW.finished_at := NULL;
        ELSIF NEW.state = 'cancelled' AND NEW.owner IS NULL THEN
            NEW.finished_at := now();
        END IF;
    END IF;

    -- A parallel job's slices keep their checkpoints; a different number of them cannot.
    IF NEW.parallel IS DISTINCT FROM OLD.parallel AND OLD.batches > 0 THEN
        RAISE EXCEPTION 'parallel of job % cannot change once it has run batches (% so far)',
            OLD.id, OLD.batches
            USING ERRCODE = 'check_violation',
                  HINT = 'Cancel the job and insert a new one with the parallelism you want.';
    END IF;

    col := @schema@._first_changed(OLD, NEW, @schema@._definition_columns());
    IF col IS NOT NULL THEN
        IF OLD.state NOT IN ('pending', 'paused', 'failed', 'cancelled') THEN
            RAISE EXCEPTION 'column % of job % cannot change while it is %', col, OLD.id, OLD.state
                USING ERRCODE = 'check_violation', HINT = 'Pause the job first.';
        END IF;
        -- A job runs with run_as's privileges: only that role (or a member) rewrites what it runs.
        IF EXISTS (SELECT FROM pg_roles r WHERE r.rolname = OLD.run_as)
           AND NOT pg_has_role(current_user, OLD.run_as, 'MEMBER') THEN
            RAISE EXCEPTION 'only role % (run_as) can change column % of job %', OLD.run_as, col, OLD.id
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        v_key := @schema@._check_definition(NEW);
        -- A checkpoint in another key space means nothing: start over.
        IF (NEW.target <> OLD.target OR v_key IS DISTINCT FROM OLD.key_columns)
           AND OLD.last_key IS NOT NULL THEN
            RAISE NOTICE 'job % restarts from the beginning: its target or key changed', OLD.id;
            NEW.last_key := NULL;
        END IF;
        NEW.key_columns := v_key;
    ELSE
        -- The sizes may change at any time; they apply from the next batch. (The table is not
        -- looked at: a job whose table was dropped can still be cancelled.)
        PERFORM @schema@._check_sizes(NEW);
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER jobs_validate BEFORE INSERT OR UPDATE ON @schema@.jobs
    FOR EACH ROW EXECUTE FUNCTION @schema@._jobs_before();

-- AFTER INSERT, and AFTER UPDATE of the state: wakes the daemons. The channel name is fixed.
-- (The WHEN clause keeps the function out of the checkpoints' counter updates.)
CREATE OR REPLACE FUNCTION @schema@._jobs_notify() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('backfill_jobs', NEW.id || ' ' || NEW.state);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER jobs_notify AFTER INSERT ON @schema@.jobs
    FOR EACH ROW EXECUTE FUNCTION @schema@._jobs_notify();
CREATE OR REPLACE TRIGGER jobs_notify_state AFTER UPDATE ON @schema@.jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION @schema@._jobs_notify();

-- User functions: each sets a state through the trigger's rules and returns the new state.

CREATE OR REPLACE FUNCTION @schema@._set_state(p_id bigint, p_state text) RETURNS text
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result text;
BEGIN
    UPDATE @schema@.jobs j SET state = p_state WHERE j.id = p_id RETURNING j.state INTO result;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', p_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN result;
END
$$;

CREATE OR REPLACE FUNCTION @schema@.pause(id bigint) RETURNS text
LANGUAGE sql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$ SELECT @schema@._set_state(id, 'paused') $$;

-- Resuming a job that is already pending or running changes nothing.
CREATE OR REPLACE FUNCTION @schema@.resume(id bigint) RETURNS text
LANGUAGE sql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT @schema@._set_state(id, CASE WHEN j.state IN ('pending', 'running') THEN j.state
                                        ELSE 'pending' END)
    FROM (SELECT NULL) AS one LEFT JOIN @schema@.jobs j ON j.id = resume.id
$$;

CREATE OR REPLACE FUNCTION @schema@.cancel(id bigint) RETURNS text
LANGUAGE sql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$ SELECT @schema@._set_state(id, 'cancelled') $$;

-- Daemon functions. They run on backfilld's sessions (backfilld.daemon = on).

-- Takes one job: a pending one whose time has come, or a running one whose lease expired (or
-- that p_owner already holds), skipping p_exclude and tables another job is running on.
-- Returns the claimed row, or no row.
CREATE OR REPLACE FUNCTION @schema@._claim(p_owner text, p_lease_ms int, p_exclude bigint[])
RETURNS SETOF @schema@.jobs
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    claimed bigint;
BEGIN
    PERFORM @schema@._require_daemon('_claim');
    -- Serialise claims across instances, so the one-running-job-per-table test below is sound.
    -- The key is 'bfld' and the jobs table's oid.
    PERFORM pg_advisory_xact_lock(1650879588,
        (SELECT t.typrelid FROM pg_type t WHERE t.oid = pg_typeof(NULL::@schema@.jobs))::int);

    SELECT j.id INTO claimed
    FROM @schema@.jobs j
    WHERE j.state IN ('pending', 'running')
      AND ((j.state = 'pending' AND (j.not_before IS NULL OR j.not_before <= now()))
           OR (j.state = 'running'
               AND (j.lease_until IS NULL OR j.lease_until < now() OR j.owner = p_owner)))
      AND j.id <> ALL (coalesce(p_exclude, '{}'))
      AND NOT EXISTS (SELECT FROM @schema@.jobs o
                      WHERE o.target = j.target AND o.state = 'running' AND o.id <> j.id)
    ORDER BY j.priority DESC, j.id
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED;

    IF claimed IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE @schema@.jobs j
    SET state = 'running', owner = p_owner,
        lease_until = clock_timestamp() + p_lease_ms * interval '1 millisecond',
        started_at = coalesce(j.started_at, now()),
        throttled_reason = NULL, last_error = NULL, finished_at = NULL,
        rows_estimate = coalesce(j.rows_estimate, @schema@._estimate_rows(j.target))
    WHERE j.id = claimed
    RETURNING j.*;
END
$$;

-- Commits a batch's checkpoint in the batch's own transaction. The batch left these
-- transaction-local settings: backfilld.scanned, backfilld.changed (numbers),
-- backfilld.first_key, backfilld.last_key (text[] literals, '' when the batch saw no row) and
-- backfilld.lsn0 (the WAL insert position at BEGIN). Raises BFL01 when p_owner lost the job.
-- p_slice: the slice of a parallel job the batch walked (NULL: the whole job). A slice's
-- checkpoint moves the slice's last_key and the job's counters; the job is done with its last
-- slice; while other slices may still run, a state a user set keeps the owner (the daemon gives
-- the job back once its slices have stopped).
-- Its arguments and result columns changed before the first release: drop any older shape
-- (daemon-only, no dependents).
DROP FUNCTION IF EXISTS @schema@._checkpoint(bigint, text, int, int, int, int, int, bigint, bigint, int, text);
DROP FUNCTION IF EXISTS @schema@._checkpoint(bigint, text, int, int, int, int, int, bigint, bigint, int, text, int);
CREATE FUNCTION @schema@._checkpoint(
    p_id bigint, p_owner text, p_lease_ms int, p_limit int, p_sleep_ms int,
    p_batch_size_now int, p_sleep_ms_now int, p_lag_bytes bigint, p_lag_ms bigint,
    p_blocked int, p_throttled_reason text, p_slice int)
RETURNS TABLE(state text, rows_scanned bigint, rows_changed bigint, batches bigint,
              rows_estimate bigint, wal_bytes bigint, slice_done boolean, wal_lsn text)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_scanned bigint := coalesce(nullif(current_setting('backfilld.scanned', true), ''), '0')::bigint;
    v_changed bigint := coalesce(nullif(current_setting('backfilld.changed', true), ''), '0')::bigint;
    v_first_key text[] := nullif(current_setting('backfilld.first_key', true), '')::text[];
    v_last_key text[] := nullif(current_setting('backfilld.last_key', true), '')::text[];
    v_lsn0 pg_lsn := nullif(current_setting('backfilld.lsn0', true), '')::pg_lsn;
    v_old_state text;
    v_new_state text;
BEGIN
    PERFORM @schema@._require_daemon('_checkpoint');
    wal_lsn := pg_current_wal_insert_lsn()::text;  -- the server's, for the throttle's lag estimate
    wal_bytes := pg_wal_lsn_diff(wal_lsn::pg_lsn, v_lsn0)::bigint;
    SELECT j.state INTO v_old_state FROM @schema@.jobs j
    WHERE j.id = p_id AND j.owner = p_owner FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % lease lost: another instance owns it now', p_id USING ERRCODE = 'BFL01';
    END IF;
    -- A short batch was the last one; a job a user paused during it is done all the same.
    IF p_slice IS NULL THEN
        v_new_state := CASE WHEN v_scanned < p_limit AND v_old_state IN ('running', 'paused')
                            THEN 'done' ELSE v_old_state END;
    ELSE
        UPDATE @schema@.slices s
        SET last_key = coalesce(v_last_key, s.last_key), rows_scanned = s.rows_scanned + v_scanned,
            batches = s.batches + 1, done = v_scanned < p_limit
        WHERE s.job_id = p_id AND s.slice = p_slice
        RETURNING s.done INTO slice_done;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'job % has no slice % any more: it was cut again', p_id, p_slice
                USING ERRCODE = 'BFL01';
        END IF;
        v_new_state := CASE WHEN slice_done AND v_old_state IN ('running', 'paused')
                                 AND NOT EXISTS (SELECT FROM @schema@.slices s
                                                 WHERE s.job_id = p_id AND NOT s.done)
                            THEN 'done' ELSE v_old_state END;
    END IF;

    UPDATE @schema@.jobs j
    SET last_key = CASE WHEN p_slice IS NULL THEN coalesce(v_last_key, j.last_key) ELSE j.last_key END,
        rows_scanned = j.rows_scanned + v_scanned,
        rows_changed = j.rows_changed + v_changed,
        batches = j.batches + 1,
        wal_bytes = j.wal_bytes + coalesce(_checkpoint.wal_bytes, 0),
        -- Extrapolated cost of the whole job, kept current once 1% is done.
        estimated_seconds = CASE WHEN j.rows_estimate > 0
                                  AND (j.rows_scanned + v_scanned) * 100 >= j.rows_estimate
            THEN ceil(extract(epoch FROM clock_timestamp() - j.started_at)
                      * greatest(j.rows_estimate, j.rows_scanned + v_scanned)
                      / (j.rows_scanned + v_scanned))::bigint
            ELSE j.estimated_seconds END,
        estimated_wal_bytes = CASE WHEN j.rows_estimate > 0
                                    AND (j.rows_scanned + v_scanned) * 100 >= j.rows_estimate
            THEN ((j.wal_bytes + coalesce(_checkpoint.wal_bytes, 0))::numeric
                  * greatest(j.rows_estimate, j.rows_scanned + v_scanned)
                  / (j.rows_scanned + v_scanned))::bigint
            ELSE j.estimated_wal_bytes END,
        batch_size_now = p_batch_size_now,
        sleep_ms_now = p_sleep_ms_now,
        state = v_new_state,
        -- a job that stops running leaves the daemon (a parallel one once it is done)
        owner = CASE WHEN v_new_state = 'running' OR (p_slice IS NOT NULL AND v_new_state <> 'done')
                     THEN j.owner END,
        lease_until = CASE WHEN v_new_state = 'running' OR (p_slice IS NOT NULL AND v_new_state <> 'done')
                           THEN clock_timestamp() + p_lease_ms * interval '1 millisecond' END,
        throttled_reason = CASE WHEN v_new_state = 'running' THEN p_throttled_reason END,
        finished_at = CASE WHEN v_new_state IN ('done', 'cancelled')
                           THEN coalesce(j.finished_at, now()) ELSE j.finished_at END
    WHERE j.id = p_id
    RETURNING j.state, j.rows_scanned, j.rows_changed, j.batches, j.rows_estimate
    INTO state, rows_scanned, rows_changed, batches, rows_estimate;

    INSERT INTO @schema@.batches AS b (job_id, batch, first_key, last_key, rows_scanned,
        rows_changed, duration_ms, sleep_ms, lag_bytes, lag_ms, blocked_sessions, wal_bytes,
        batch_size, throttled_reason)
    VALUES (p_id, batches, v_first_key, v_last_key, v_scanned, v_changed,
        extract(epoch FROM clock_timestamp() - now()) * 1000, p_sleep_ms, p_lag_bytes, p_lag_ms,
        p_blocked, wal_bytes, p_batch_size_now, p_throttled_reason);
    RETURN NEXT;
END
$$;

-- Skips one row that fails on its own: runs in the transaction where the daemon, as the job's
-- role, read the row's key into backfilld.skip_key. Records it in failed_rows and moves the
-- checkpoint past it (the slice's, when p_slice is not NULL), fenced by the lease like
-- _checkpoint. Returns the job's failed_rows.
DROP FUNCTION IF EXISTS @schema@._skip_row(bigint, text, int, text, text);
CREATE OR REPLACE FUNCTION @schema@._skip_row(p_id bigint, p_owner text, p_lease_ms int,
                                              p_sqlstate text, p_message text, p_slice int)
RETURNS bigint
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_key text[] := nullif(current_setting('backfilld.skip_key', true), '')::text[];
    v_failed bigint;
BEGIN
    PERFORM @schema@._require_daemon('_skip_row');
    IF v_key IS NULL THEN
        RAISE EXCEPTION 'job %: no row to skip', p_id USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE @schema@.jobs j
    SET last_key = CASE WHEN p_slice IS NULL THEN v_key ELSE j.last_key END,
        rows_scanned = j.rows_scanned + 1, failed_rows = j.failed_rows + 1,
        lease_until = clock_timestamp() + p_lease_ms * interval '1 millisecond'
    WHERE j.id = p_id AND j.owner = p_owner
    RETURNING j.failed_rows INTO v_failed;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % lease lost: another instance owns it now', p_id USING ERRCODE = 'BFL01';
    END IF;
    IF p_slice IS NOT NULL THEN
        UPDATE @schema@.slices s SET last_key = v_key, rows_scanned = s.rows_scanned + 1
        WHERE s.job_id = p_id AND s.slice = p_slice;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'job % has no slice % any more: it was cut again', p_id, p_slice
                USING ERRCODE = 'BFL01';
        END IF;
    END IF;
    INSERT INTO @schema@.failed_rows (job_id, key, sqlstate, message) VALUES (p_id, v_key, p_sqlstate, p_message);
    RETURN v_failed;
END
$$;

-- Cuts a parallel job into slices at the keys its role's split function left in the session
-- setting backfilld.split (a jsonb array of text arrays, ascending): n keys make n + 1 slices.
-- Replaces slices made before (for another target or key). Fenced by the lease. Returns them.
CREATE OR REPLACE FUNCTION @schema@._make_slices(p_id bigint, p_owner text)
RETURNS TABLE(slice int, lower_key text[], upper_key text[])
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_cuts jsonb := coalesce(nullif(current_setting('backfilld.split', true), ''), '[]')::jsonb;
    v_job record;
BEGIN
    PERFORM @schema@._require_daemon('_make_slices');
    SELECT j.target, j.key_columns INTO v_job FROM @schema@.jobs j
    WHERE j.id = p_id AND j.owner = p_owner FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % lease lost: another instance owns it now', p_id USING ERRCODE = 'BFL01';
    END IF;
    DELETE FROM @schema@.slices s WHERE s.job_id = p_id;
    RETURN QUERY
    WITH cut AS (SELECT ARRAY(SELECT jsonb_array_elements_text(e)) AS key, n::int AS n
                 FROM jsonb_array_elements(v_cuts) WITH ORDINALITY AS t(e, n))
    INSERT INTO @schema@.slices AS s (job_id, slice, target, key_columns, lower_key, upper_key)
    SELECT p_id, g.n, v_job.target, v_job.key_columns,
           (SELECT c.key FROM cut c WHERE c.n = g.n - 1), (SELECT c.key FROM cut c WHERE c.n = g.n)
    FROM generate_series(1, jsonb_array_length(v_cuts) + 1) AS g(n)
    RETURNING s.slice, s.lower_key, s.upper_key;
END
$$;

-- Ends a dry run: the estimates it measured, the job done, nothing else changed.
CREATE OR REPLACE FUNCTION @schema@._dry_run_done(p_id bigint, p_owner text, p_seconds bigint,
                                                  p_wal_bytes bigint)
RETURNS text
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result text;
BEGIN
    PERFORM @schema@._require_daemon('_dry_run_done');
    UPDATE @schema@.jobs j
    SET estimated_seconds = p_seconds, estimated_wal_bytes = p_wal_bytes,
        state = CASE WHEN j.state = 'running' THEN 'done' ELSE j.state END,
        finished_at = CASE WHEN j.state IN ('running', 'cancelled') THEN now() ELSE j.finished_at END,
        owner = NULL, lease_until = NULL, throttled_reason = NULL
    WHERE j.id = p_id AND j.owner = p_owner
    RETURNING j.state INTO result;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % lease lost: another instance owns it now', p_id USING ERRCODE = 'BFL01';
    END IF;
    RETURN result;
END
$$;

-- Records the bounds of a numeric first key column, read by the job's role into the session
-- settings backfilld.key_min/key_max; the first bounds recorded stay (percent is by position).
CREATE OR REPLACE FUNCTION @schema@._set_bounds(p_id bigint, p_owner text) RETURNS void
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @schema@._require_daemon('_set_bounds');
    UPDATE @schema@.jobs j
    SET key_min = coalesce(j.key_min, nullif(current_setting('backfilld.key_min', true), '')),
        key_max = coalesce(j.key_max, nullif(current_setting('backfilld.key_max', true), ''))
    WHERE j.id = p_id AND j.owner = p_owner AND (j.key_min IS NULL OR j.key_max IS NULL);
END
$$;

-- Gives a job back: 'failed' (with p_error) always wins; otherwise a running job takes p_state
-- (e.g. 'pending' at shutdown) and a state a user set is kept. Returns the resulting state, NULL
-- when p_owner does not hold the job.
CREATE OR REPLACE FUNCTION @schema@._release(p_id bigint, p_owner text, p_state text, p_error text)
RETURNS text
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    current text;
    result text;
BEGIN
    PERFORM @schema@._require_daemon('_release');
    IF p_state IS NULL OR p_state NOT IN ('pending', 'paused', 'done', 'failed', 'cancelled') THEN
        RAISE EXCEPTION '_release: cannot release a job as "%"', p_state
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT j.state INTO current FROM @schema@.jobs j
    WHERE j.id = p_id AND j.owner = p_owner FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    result := CASE WHEN p_state = 'failed' THEN 'failed'
                   WHEN current = 'running' THEN p_state ELSE current END;
    UPDATE @schema@.jobs j
    SET state = result,
        last_error = CASE WHEN result = 'failed' THEN p_error ELSE j.last_error END,
        finished_at = CASE WHEN result = 'failed' THEN now()
                           WHEN result IN ('done', 'cancelled') THEN coalesce(j.finished_at, now())
                           ELSE j.finished_at END,
        owner = NULL, lease_until = NULL, throttled_reason = NULL
    WHERE j.id = p_id;
    RETURN result;
END
$$;

-- Extends every lease p_owner holds among p_ids, whatever the job's state: a job a user paused
-- or cancelled keeps its owner until the daemon gives it back at the next batch boundary (a
-- batch in flight must still pass its checkpoint's fence). One row per existing id of p_ids,
-- with its state and owner, so the daemon sees lost leases and users' steering.
CREATE OR REPLACE FUNCTION @schema@._renew(p_owner text, p_ids bigint[], p_lease_ms int)
RETURNS TABLE(id bigint, state text, owner text)
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM @schema@._require_daemon('_renew');
    UPDATE @schema@.jobs j
    SET lease_until = clock_timestamp() + p_lease_ms * interval '1 millisecond'
    WHERE j.id = ANY (p_ids) AND j.owner = p_owner;
    RETURN QUERY SELECT j.id, j.state, j.owner FROM @schema@.jobs j
                 WHERE j.id = ANY (p_ids) ORDER BY j.id;
END
$$;

-- Shows why p_owner's running jobs are held back (NULL: they are not).
CREATE OR REPLACE FUNCTION @schema@._set_reason(p_owner text, p_ids bigint[], p_reason text)
RETURNS void
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM @schema@._require_daemon('_set_reason');
    UPDATE @schema@.jobs j SET throttled_reason = p_reason
    WHERE j.id = ANY (p_ids) AND j.owner = p_owner AND j.state = 'running'
      AND j.throttled_reason IS DISTINCT FROM p_reason;
END
$$;

-- Jobs that are running or could start now (--exit-when-idle stops at 0).
CREATE OR REPLACE FUNCTION @schema@._runnable_count() RETURNS bigint
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FROM @schema@.jobs j
    WHERE j.state = 'running'
       OR (j.state = 'pending' AND (j.not_before IS NULL OR j.not_before <= now()))
$$;

-- Progress of every job. percent: of rows_estimate (100 once done); rows_per_second: over the
-- last 20 batches, from the start of the first to the end of the last; eta: while running or
-- paused, once 1% is done.
-- percent: by key position when the first key column is numeric (bounds taken at the start;
-- for a parallel job, the ranges its slices have covered), otherwise rows_scanned / rows_estimate; never above 100, 100 once done. rows_per_second: over the
-- last 20 batches. eta: while running or paused, once 1% is done, at the rate of those batches
-- measured up to now, so time held back by the throttle or a pause counts.
CREATE OR REPLACE VIEW @schema@.progress AS
SELECT j.id, j.name, j.target, j.state, p.percent, j.rows_changed, r.rows_per_second,
       CASE WHEN j.state IN ('running', 'paused') AND p.percent >= 1
                 AND r.rows_per_second_now > 0
            THEN make_interval(secs => (j.rows_scanned * (100 - p.percent) / p.percent
                                        / r.rows_per_second_now)::double precision)
       END AS eta,
       j.throttled_reason
FROM @schema@.jobs j
CROSS JOIN LATERAL (
    SELECT CASE WHEN j.state = 'done' THEN 100.0
                -- a parallel job: the key range its slices have covered
                WHEN j.parallel > 1 AND j.key_min IS NOT NULL AND j.key_max IS NOT NULL
                     AND j.key_max::numeric > j.key_min::numeric
                     AND EXISTS (SELECT FROM @schema@.slices s WHERE s.job_id = j.id)
                THEN round(least(100, greatest(0, 100.0 * (
                         SELECT sum(greatest(0,
                                    CASE WHEN s.done THEN coalesce(s.upper_key[1], j.key_max)::numeric
                                         ELSE coalesce(s.last_key[1], s.lower_key[1], j.key_min)::numeric END
                                    - coalesce(s.lower_key[1], j.key_min)::numeric))
                         FROM @schema@.slices s WHERE s.job_id = j.id)
                     / (j.key_max::numeric - j.key_min::numeric))), 1)
                WHEN j.key_min IS NOT NULL AND j.key_max IS NOT NULL
                     AND j.key_max::numeric > j.key_min::numeric
                THEN CASE WHEN j.last_key IS NULL THEN 0.0
                          ELSE round(least(100, greatest(0, 100.0 * (j.last_key[1]::numeric - j.key_min::numeric)
                                                        / (j.key_max::numeric - j.key_min::numeric))), 1) END
                WHEN j.rows_estimate > 0
                THEN round(least(100, 100.0 * j.rows_scanned / j.rows_estimate), 1)
           END AS percent) p
CROSS JOIN LATERAL (
    SELECT round((sum(b.rows_scanned)
                  / nullif(extract(epoch FROM max(b.finished_at)
                                   - min(b.finished_at - b.duration_ms * interval '1 millisecond')),
                           0))::numeric, 1) AS rows_per_second,
           sum(b.rows_scanned)
           / nullif(extract(epoch FROM greatest(clock_timestamp(), max(b.finished_at))
                            - min(b.finished_at - b.duration_ms * interval '1 millisecond')), 0)
               AS rows_per_second_now
    FROM (SELECT * FROM @schema@.batches b WHERE b.job_id = j.id
          ORDER BY b.batch DESC LIMIT 20) b) r;

-- 5. Roles and privileges -----------------------------------------------------------------------
-- backfill_submit: for roles that submit and steer jobs (GRANT backfill_submit TO app_role).
-- backfill_daemon: for the daemon's login role (GRANT backfill_daemon TO backfilld). Nothing is
-- left to PUBLIC. Every function of the schema is SECURITY INVOKER with a fixed search_path.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'backfill_submit') THEN
        CREATE ROLE backfill_submit NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'backfill_daemon') THEN
        CREATE ROLE backfill_daemon NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON SCHEMA @schema@ FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA @schema@ FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @schema@ FROM PUBLIC;
GRANT USAGE ON SCHEMA @schema@ TO backfill_submit, backfill_daemon;

GRANT SELECT, INSERT ON @schema@.jobs TO backfill_submit;
GRANT UPDATE (state) ON @schema@.jobs TO backfill_submit;
GRANT SELECT ON @schema@.progress, @schema@.batches, @schema@.failed_rows, @schema@.mismatches,
    @schema@.slices, @schema@.schema_version TO backfill_submit;
-- The validation trigger's helpers run as the submitter; the daemon's functions are the daemon's.
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA @schema@ TO backfill_submit;
REVOKE EXECUTE ON FUNCTION @schema@._claim(text, int, bigint[]),
    @schema@._checkpoint(bigint, text, int, int, int, int, int, bigint, bigint, int, text, int),
    @schema@._skip_row(bigint, text, int, text, text, int), @schema@._make_slices(bigint, text),
    @schema@._dry_run_done(bigint, text, bigint, bigint), @schema@._set_bounds(bigint, text),
    @schema@._release(bigint, text, text, text), @schema@._renew(text, bigint[], int),
    @schema@._set_reason(text, bigint[], text), @schema@._runnable_count()
    FROM backfill_submit;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA @schema@ TO backfill_daemon;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA @schema@ TO backfill_daemon;

-- Reading other sessions' lag and lock waits needs pg_monitor; only a superuser may grant it.
DO $$
BEGIN
    IF NOT pg_catalog.pg_has_role('backfill_daemon', 'pg_monitor', 'MEMBER') THEN
        GRANT pg_monitor TO backfill_daemon;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'could not grant pg_monitor to backfill_daemon: as a superuser, run GRANT pg_monitor TO backfill_daemon';
END
$$;

-- 6. The version ---------------------------------------------------------------------------------

UPDATE @schema@.schema_version SET version = 1 WHERE version IS DISTINCT FROM 1;
