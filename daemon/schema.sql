-- backfilld queue schema (version 3).
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
--   3. upgrades: one block per version after 1, each guarded by the recorded version or
--      idempotent by itself;
--   4. functions, triggers and the view, CREATE OR REPLACE, always in their latest form (they may
--      use columns added by step 3);
--   5. roles, row-level security and privileges;
--   6. record the version.
--
-- To add version N + 1:
--   * in step 3 add a block
--         DO $vN$ BEGIN
--           IF (SELECT version FROM @schema@.schema_version) < N + 1 THEN
--             ALTER TABLE @schema@.jobs ADD COLUMN ...;
--           END IF;
--         END $vN$;
--     (CREATE OR REPLACE cannot change a function's result type or arguments' names, nor drop a
--     view's column: drop such an object in step 3, step 4 recreates it);
--   * edit the objects of step 4 to their new form;
--   * change N to N + 1 in the guard (step 1) and in step 6, and SCHEMA_VERSION in include/schema.h.
--
-- Who writes what. Users INSERT jobs and steer them through jobs.state (or pause(), resume(),
-- cancel()); the trigger on jobs validates every change and row-level security shows a user only
-- the jobs of roles it is a member of. Everything else is written by the schema's own functions,
-- SECURITY DEFINER and owned by the schema's owner; the trigger tells their writes apart by
-- current_user being the owner of the jobs table together with the setting backfilld.internal,
-- which only those functions' SET clauses give (a session may set the setting, but it is not
-- the owner). The daemon's queue connection calls the functions granted to backfill_daemon
-- (claim, renew, release); a job's batches run in a session logged in as the job's run_as role,
-- which calls the functions granted to backfill_submit that checkpoint, skip a failing row and
-- record mismatches, each refusing any job whose run_as is not its session_user or whose lease
-- is not the caller's.

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
    IF v > 3 THEN
        RAISE EXCEPTION 'the queue schema is at version %, newer than this backfilld (version 3)', v
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Upgrade backfilld; never downgrade the schema.';
    END IF;
    IF current_setting('server_version_num')::int < 140000 THEN
        RAISE EXCEPTION 'backfilld needs PostgreSQL 14 or later; this server is %',
            current_setting('server_version')
            USING ERRCODE = 'feature_not_supported';
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


-- 3. Upgrades ----------------------------------------------------------------------------------

-- Version 2: batches run in sessions logged in as the job's role; the daemon's functions are
-- SECURITY DEFINER; the session setting backfilld.daemon no longer means anything. Functions
-- that went away or changed their arguments (none has dependents):
DROP FUNCTION IF EXISTS @schema@._require_daemon(text);
DROP FUNCTION IF EXISTS @schema@._is_daemon();
DROP FUNCTION IF EXISTS @schema@._make_slices(bigint, text);
DROP FUNCTION IF EXISTS @schema@._set_bounds(bigint, text);

-- What the daemons' configuration allows, for the validation at INSERT (one row; written by a
-- daemon when it connects: daemon.max_parallel).
CREATE TABLE IF NOT EXISTS @schema@.limits (
    max_parallel int NOT NULL DEFAULT 8
);
CREATE UNIQUE INDEX IF NOT EXISTS limits_one_row ON @schema@.limits ((true));
INSERT INTO @schema@.limits (max_parallel) SELECT 8 WHERE NOT EXISTS (SELECT FROM @schema@.limits);

-- Version 3: run windows, operator holds (hold_when_sql), a job's WAL budget.
ALTER TABLE @schema@.jobs ADD COLUMN IF NOT EXISTS run_window text;
ALTER TABLE @schema@.jobs ADD COLUMN IF NOT EXISTS hold_when_sql text;
ALTER TABLE @schema@.jobs ADD COLUMN IF NOT EXISTS max_wal_bytes_per_s bigint;
DO $v3$
BEGIN
    IF (SELECT version FROM @schema@.schema_version) < 3 THEN
        -- _checkpoint returns the job's run window too (a new result column).
        DROP FUNCTION IF EXISTS @schema@._checkpoint(bigint, text, int, int, int, int, int, bigint,
                                                     bigint, int, text, int);
    END IF;
END
$v3$;
-- _set_error returned void in the first schemas of version 3; it says whether it wrote now (a
-- result type cannot be replaced). The schema found by its jobs table's row type: a name in a
-- string literal would break on a schema name with a quote in it.
DO $set_error$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_type t ON t.typnamespace = p.pronamespace
               WHERE t.oid = pg_catalog.pg_typeof(NULL::@schema@.jobs) AND p.proname = '_set_error'
                 AND p.prorettype = 'pg_catalog.void'::pg_catalog.regtype) THEN
        DROP FUNCTION @schema@._set_error(text, bigint, text);
    END IF;
END
$set_error$;

-- 4. Functions, triggers, views -----------------------------------------------------------------

-- True inside the schema's own functions: current_user is the owner of the jobs table (a
-- SECURITY DEFINER function of the schema, or the owner's own session) and backfilld.internal
-- is on (those functions' SET clause). Neither alone is enough.
CREATE OR REPLACE FUNCTION @schema@._is_internal() RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(current_setting('backfilld.internal', true), '') = 'on'
       AND c.relowner = (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user)
    FROM pg_class c JOIN pg_type t ON t.typrelid = c.oid
    WHERE t.oid = pg_typeof(NULL::@schema@.jobs)
$$;

-- Whether the current user sees and steers the jobs of P_RUN_AS: a member of that role, of
-- backfill_admin (DBAs), or of backfill_daemon (the daemon reads every job). Row-level security
-- on every table of the schema and the progress view use it.
CREATE OR REPLACE FUNCTION @schema@._can_see(p_run_as name) RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_has_role(current_user, 'backfill_admin', 'MEMBER')
        OR pg_has_role(current_user, 'backfill_daemon', 'MEMBER')
        OR EXISTS (SELECT FROM pg_roles r
                   WHERE r.rolname = p_run_as AND pg_has_role(current_user, r.oid, 'MEMBER'))
$$;

-- TEXT as numeric, NULL when it is not a number: the progress view reads keys and bounds that a
-- job's session wrote, and one bad value must not break the view for everybody.
CREATE OR REPLACE FUNCTION @schema@._to_numeric(p_text text) RETURNS numeric
LANGUAGE sql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN p_text ~ '^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$'
                     AND length(p_text) < 1000
                THEN p_text::numeric END
$$;

-- Columns only the daemon writes: a user may neither set them at INSERT nor change them.
-- The counters must be 0 at INSERT, the rest NULL.
CREATE OR REPLACE FUNCTION @schema@._daemon_columns() RETURNS text[]
LANGUAGE sql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$ SELECT ARRAY['owner', 'lease_until', 'last_key', 'rows_scanned', 'rows_changed', 'batches',
                   'failed_rows', 'wal_bytes', 'key_min', 'key_max', 'rows_estimate', 'batch_size_now', 'sleep_ms_now',
                   'throttled_reason', 'last_error', 'estimated_seconds', 'estimated_wal_bytes',
                   'started_at', 'finished_at'] $$;

-- Columns that decide what a job runs and as whom. Not even the schema's own functions change them.
CREATE OR REPLACE FUNCTION @schema@._definition_columns() RETURNS text[]
LANGUAGE sql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$ SELECT ARRAY['kind', 'target', 'key_columns', 'set_sql', 'where_sql', 'batch_sql',
                   'mismatch_sql', 'parallel', 'hold_when_sql'] $$;

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
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
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
            ('parallel', j.parallel, 1), ('max_wal_bytes_per_s', j.max_wal_bytes_per_s, 1))
            AS v(col, val, low)
        WHERE v.val < v.low
    LOOP
        RAISE EXCEPTION '% must be % (got %)', size.col,
            CASE size.low WHEN 0 THEN '>= 0' ELSE '> 0' END, size.val
            USING ERRCODE = 'check_violation';
    END LOOP;
    IF j.parallel > (SELECT l.max_parallel FROM @schema@.limits l) THEN
        RAISE EXCEPTION 'parallel (%) exceeds daemon.max_parallel (%)', j.parallel,
            (SELECT l.max_parallel FROM @schema@.limits l)
            USING ERRCODE = 'check_violation',
                  HINT = 'Each slice is a connection of its own: ask for fewer, or raise daemon.max_parallel.';
    END IF;
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
    IF j.run_window IS NOT NULL THEN
        PERFORM @schema@._window_parts(j.run_window);
    END IF;
END
$$;

-- Run windows: 'HH:MM-HH:MM' and an optional IANA time zone (default UTC); a window whose end
-- is not after its start crosses midnight. The parts of WINDOW, refused with a message naming
-- the problem. (Evaluated by the server, which knows the time zones, at INSERT as the submitter
-- and before batches in the job's session.)
-- _window_parse reads them (a zone the server does not know fails as it is used); _window_parts
-- also checks that the zone is an IANA name, through pg_timezone_names, which reads the whole
-- time zone directory (~20 ms of CPU): only where a window is accepted, never before each batch.
CREATE OR REPLACE FUNCTION @schema@._window_parse(p_window text, OUT start_at time, OUT end_at time,
                                                  OUT zone text)
LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m text[] := regexp_match(p_window,
                             '^\s*([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})(?:\s+(\S+))?\s*$');
BEGIN
    IF m IS NULL THEN
        RAISE EXCEPTION 'run_window "%" is not HH:MM-HH:MM with an optional time zone', p_window
            USING ERRCODE = 'check_violation',
                  HINT = 'For example ''22:00-06:00 Europe/Paris'' (it may cross midnight; the zone defaults to UTC).';
    END IF;
    IF m[1]::int > 23 OR m[3]::int > 24 OR m[2]::int > 59 OR m[4]::int > 59
       OR (m[3]::int = 24 AND m[4]::int > 0) THEN
        RAISE EXCEPTION 'run_window "%" has a time out of range (00:00 to 23:59, or 24:00 as its end)',
            p_window USING ERRCODE = 'check_violation';
    END IF;
    start_at := make_time(m[1]::int, m[2]::int, 0);
    end_at := CASE WHEN m[3]::int = 24 THEN time '24:00' ELSE make_time(m[3]::int, m[4]::int, 0) END;
    IF start_at = end_at OR (start_at = time '00:00' AND end_at = time '24:00') THEN
        RAISE EXCEPTION 'run_window "%" is empty or the whole day', p_window
            USING ERRCODE = 'check_violation', HINT = 'Leave run_window NULL to run at any time.';
    END IF;
    zone := coalesce(m[5], 'UTC');
END
$$;

CREATE OR REPLACE FUNCTION @schema@._window_parts(p_window text, OUT start_at time, OUT end_at time,
                                                  OUT zone text)
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    SELECT p.start_at, p.end_at, p.zone INTO start_at, end_at, zone FROM @schema@._window_parse(p_window) p;
    IF NOT EXISTS (SELECT FROM pg_timezone_names WHERE name = zone) THEN
        RAISE EXCEPTION 'run_window "%": unknown time zone "%"', p_window, zone
            USING ERRCODE = 'check_violation',
                  HINT = 'Use an IANA time zone name such as UTC, Europe/Paris or America/New_York.';
    END IF;
END
$$;

-- The stretches of WINDOW that overlap [p_from, p_to): one per local day, each cut to the range.
CREATE OR REPLACE FUNCTION @schema@._window_open_stretches(p_window text, p_from timestamptz,
                                                           p_to timestamptz)
RETURNS TABLE(opens timestamptz, closes timestamptz)
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
    WITH w AS (SELECT * FROM @schema@._window_parse(p_window)),
    days AS (
        SELECT d::date AS day, w.* FROM w,
            generate_series((p_from AT TIME ZONE w.zone)::date - 1, (p_to AT TIME ZONE w.zone)::date,
                            interval '1 day') AS d
    ),
    stretch AS (
        SELECT (day + start_at) AT TIME ZONE zone AS o,
               (day + end_at + CASE WHEN end_at <= start_at THEN interval '1 day' ELSE interval '0' END)
                   AT TIME ZONE zone AS c
        FROM days
    )
    SELECT greatest(o, p_from), least(c, p_to) FROM stretch
    WHERE o < p_to AND c > p_from ORDER BY 1
$$;

-- Whether WINDOW is open at P_AT.
CREATE OR REPLACE FUNCTION @schema@._in_window(p_window text, p_at timestamptz) RETURNS boolean
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT FROM @schema@._window_open_stretches(p_window, p_at,
                                                               p_at + interval '1 microsecond'))
$$;

-- Seconds of [p_from, p_to) inside WINDOW.
CREATE OR REPLACE FUNCTION @schema@._window_seconds(p_window text, p_from timestamptz,
                                                    p_to timestamptz) RETURNS double precision
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(sum(extract(epoch FROM closes - opens)), 0)::double precision
    FROM @schema@._window_open_stretches(p_window, p_from, p_to)
$$;

-- How long from P_FROM until P_SECONDS of work inside WINDOW are done (NULL beyond ten years).
CREATE OR REPLACE FUNCTION @schema@._window_eta(p_window text, p_seconds double precision,
                                                p_from timestamptz) RETURNS interval
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    left_s double precision := greatest(p_seconds, 0);
    s record;
    step interval := interval '30 days';
    t timestamptz := p_from;
BEGIN
    WHILE t < p_from + interval '10 years' LOOP
        FOR s IN SELECT * FROM @schema@._window_open_stretches(p_window, t, t + step) LOOP
            IF extract(epoch FROM s.closes - s.opens) >= left_s THEN
                RETURN s.opens + left_s * interval '1 second' - p_from;
            END IF;
            left_s := left_s - extract(epoch FROM s.closes - s.opens);
        END LOOP;
        t := t + step;
    END LOOP;
    RETURN NULL;
END
$$;

-- Refuses a hold_when_sql that is not one boolean expression the submitter can evaluate. It is
-- parsed and planned as the submitter, not run: LIMIT 0 reads no row, so WHERE never evaluates
-- it (a constant part may be folded while planning).
CREATE OR REPLACE FUNCTION @schema@._check_hold_when(p_sql text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cur refcursor;
BEGIN
    IF btrim(p_sql, E' \t\r\n') = '' THEN
        RAISE EXCEPTION 'hold_when_sql is empty' USING ERRCODE = 'check_violation',
            HINT = 'Leave it NULL for no hold, or give a boolean expression such as (SELECT paused FROM flags).';
    END IF;
    -- Names resolve as in the job's session: the role's own search_path (the session's reset
    -- value), not this function's; the SET clause restores it on the way out.
    PERFORM set_config('search_path', (SELECT s.reset_val FROM pg_settings s WHERE s.name = 'search_path'),
                       true);
    -- A cursor takes exactly one statement: text that ends the expression and adds statements
    -- is refused before anything runs.
    OPEN cur FOR EXECUTE format(E'SELECT 1 WHERE (\n%s\n) LIMIT 0', p_sql);
    CLOSE cur;
EXCEPTION
    WHEN datatype_mismatch THEN
        RAISE EXCEPTION 'hold_when_sql is not a boolean expression: %', SQLERRM
            USING ERRCODE = 'check_violation';
    WHEN check_violation THEN
        RAISE;
    WHEN feature_not_supported OR invalid_cursor_definition THEN
        RAISE EXCEPTION 'hold_when_sql must be one expression, not statements (%)', SQLERRM
            USING ERRCODE = 'check_violation';
    WHEN OTHERS THEN
        RAISE EXCEPTION 'hold_when_sql cannot be evaluated as role %: % (%)', current_user, SQLERRM, SQLSTATE
            USING ERRCODE = 'check_violation';
END
$$;

-- Validates what a job is (kind, target, key, SQL, sizes); returns the key columns to store
-- (the primary key's when the job names none).
CREATE OR REPLACE FUNCTION @schema@._check_definition(j @schema@.jobs) RETURNS text[]
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c text;
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
    SELECT c.relkind, c.relpersistence, c.relnamespace = t.typnamespace AS in_queue INTO rel
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
    IF rel.relpersistence = 't' THEN
        RAISE EXCEPTION 'target % is a temporary table: backfilld walks it in sessions of its own, which cannot see it',
            j.target USING ERRCODE = 'check_violation';
    END IF;
    IF rel.in_queue THEN
        RAISE EXCEPTION 'target % is a table of the queue itself', j.target
            USING ERRCODE = 'check_violation';
    END IF;

    -- Each kind needs its own SQL column and refuses the others'.
    FOR sql_col IN
        SELECT * FROM (VALUES ('set_sql', j.set_sql, ARRAY['update']),
                              ('where_sql', j.where_sql, ARRAY['update']),
                              ('batch_sql', j.batch_sql, ARRAY['statement']),
                              ('mismatch_sql', j.mismatch_sql, ARRAY['verify'])) AS v(col, val, kinds)
    LOOP
        IF sql_col.col = needed AND coalesce(btrim(sql_col.val, E' \t\r\n'), '') = '' THEN
            RAISE EXCEPTION '% is required for % jobs', needed, j.kind
                USING ERRCODE = 'check_violation';
        ELSIF NOT j.kind = ANY (sql_col.kinds) AND sql_col.val IS NOT NULL THEN
            RAISE EXCEPTION '% is only used by % jobs', sql_col.col, array_to_string(sql_col.kinds, ' and ')
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
    -- An update that assigns a key column would move rows past the walk (walked again, or
    -- forever): PostgreSQL itself says whether set_sql assigns a column, by refusing a second
    -- assignment of it. Nothing runs (EXPLAIN); other problems are left to the job's check.
    IF j.kind = 'update' THEN
        FOREACH c IN ARRAY v_key LOOP
            BEGIN
                EXECUTE format('EXPLAIN UPDATE %s SET %s, %I = %I WHERE false', j.target, j.set_sql, c, c);
            EXCEPTION WHEN syntax_error THEN
                IF SQLERRM LIKE 'multiple assignments to same column%' THEN
                    RAISE EXCEPTION 'set_sql assigns key column "%", the key the job walks', c
                        USING ERRCODE = 'check_violation',
                              HINT = 'Walk another unique key (key_columns): rows whose key changes would be walked again.';
                END IF;
            WHEN OTHERS THEN
                NULL;
            END;
        END LOOP;
    END IF;
    IF j.kind = 'statement' AND cardinality(v_key) <> 1 THEN
        RAISE EXCEPTION 'statement jobs need a single-column key: $1 and $2 carry the first and last key (key_columns is %)',
            v_key USING ERRCODE = 'check_violation';
    END IF;

    IF j.hold_when_sql IS NOT NULL THEN
        PERFORM @schema@._check_hold_when(j.hold_when_sql);
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
    IF TG_OP = 'UPDATE' AND @schema@._is_internal() THEN
        -- The schema's own functions. Every checkpoint passes here: compare the columns
        -- directly (cheap) and name the one that changed only on the way to the error. The list
        -- is _definition_columns()'s plus id, run_as and created_at (test_schema.py checks each).
        IF (NEW.id, NEW.run_as, NEW.created_at, NEW.kind, NEW.target, NEW.key_columns, NEW.set_sql,
            NEW.where_sql, NEW.batch_sql, NEW.mismatch_sql, NEW.parallel, NEW.hold_when_sql)
           IS DISTINCT FROM (OLD.id, OLD.run_as, OLD.created_at, OLD.kind, OLD.target, OLD.key_columns,
                             OLD.set_sql, OLD.where_sql, OLD.batch_sql, OLD.mismatch_sql, OLD.parallel,
                             OLD.hold_when_sql)
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
        -- A job's batches run in a session logged in as this role.
        IF NOT (SELECT r.rolcanlogin FROM pg_roles r WHERE r.rolname = current_user) THEN
            RAISE EXCEPTION 'role % cannot log in, and a job''s batches run in a session logged in as the role that submits it',
                current_user
                USING ERRCODE = 'check_violation',
                      HINT = 'Submit the job as a role with LOGIN (RESET ROLE, or SET ROLE to such a role).';
        END IF;
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
        -- Only the job's role (or a member of it, or of backfill_admin) steers the job.
        IF NOT @schema@._can_see(OLD.run_as) THEN
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
        IF NOT EXISTS (SELECT FROM pg_roles r
                       WHERE r.rolname = OLD.run_as AND pg_has_role(current_user, r.oid, 'MEMBER')) THEN
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
        -- Row-level security hides the jobs of roles the user is not a member of.
        RAISE EXCEPTION 'job % does not exist, or is not a job of a role you are a member of', p_id
            USING ERRCODE = 'no_data_found';
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

-- Takes one job: a pending one whose time has come, or a running one whose lease expired (or
-- that p_owner already holds), skipping p_exclude, rows another session has locked, and tables
-- another job is running on. Returns the claimed row, or no row. Waits on nothing: a locked row
-- is skipped, and two instances that start jobs on one table at once meet the unique index
-- jobs_one_running_per_target, where the later one claims nothing this time. Planned for its
-- parameters every call: a generic plan once sorted the whole queue.
CREATE OR REPLACE FUNCTION @schema@._claim(p_owner text, p_lease_ms int, p_exclude bigint[])
RETURNS SETOF @schema@.jobs
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET backfilld.internal = 'on'
SET plan_cache_mode = 'force_custom_plan'
AS $$
DECLARE
    claimed bigint;
BEGIN
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
    BEGIN
        RETURN QUERY
        UPDATE @schema@.jobs j
        SET state = 'running', owner = p_owner,
            lease_until = clock_timestamp() + p_lease_ms * interval '1 millisecond',
            started_at = coalesce(j.started_at, now()),
            throttled_reason = NULL, last_error = NULL, finished_at = NULL,
            rows_estimate = greatest(coalesce(@schema@._estimate_rows(j.target), j.rows_estimate),
                                     j.rows_scanned)
        WHERE j.id = claimed
        RETURNING j.*;
    EXCEPTION WHEN unique_violation THEN
        RETURN;  -- another instance started a job on the same table meanwhile
    END;
END
$$;

-- Functions a job's session calls (as the job's run_as role). Each one that writes is SECURITY
-- DEFINER and first takes the job through _lock_job: the session's user must be the job's run_as
-- and the caller must hold its lease. A submitter's own SQL runs in that session too and may
-- call them: at most on its own role's jobs, and only what it could do to them anyway.

-- The job row a job session works on, locked. Refuses a job whose run_as is not session_user
-- (42501), and raises BFL01 when p_owner does not hold its lease. Returns its state. Only the
-- schema's own functions call it.
CREATE OR REPLACE FUNCTION @schema@._lock_job(p_id bigint, p_owner text) RETURNS text
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v record;
BEGIN
    SELECT j.state, j.owner, j.run_as INTO v FROM @schema@.jobs j WHERE j.id = p_id FOR UPDATE;
    IF NOT FOUND OR v.run_as IS DISTINCT FROM session_user THEN
        RAISE EXCEPTION 'job % is not a job of role %', p_id, session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF v.owner IS DISTINCT FROM p_owner THEN
        RAISE EXCEPTION 'job % lease lost: another instance owns it now', p_id USING ERRCODE = 'BFL01';
    END IF;
    RETURN v.state;
END
$$;

-- Key values as text, the same whatever the session's settings (DateStyle, TimeZone,
-- IntervalStyle, extra_float_digits, lc_monetary): a checkpoint written under one role's settings
-- resumes at the same row under any other. _key_in reads them back as the type of its second
-- argument (a typed NULL).
CREATE OR REPLACE FUNCTION @schema@._key_out(p_value anyelement) RETURNS text
LANGUAGE sql STABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres'
SET TimeZone = 'UTC' SET extra_float_digits = 3 SET lc_monetary = 'C' SET bytea_output = 'hex'
AS $$ SELECT p_value::pg_catalog.text $$;

CREATE OR REPLACE FUNCTION @schema@._key_in(p_text text, p_type anyelement) RETURNS anyelement
LANGUAGE plpgsql STABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres'
SET TimeZone = 'UTC' SET extra_float_digits = 3 SET lc_monetary = 'C' SET bytea_output = 'hex'
AS $$
DECLARE
    v_value ALIAS FOR $0;
BEGIN
    v_value := p_text;  -- the type's input function, under the settings above
    RETURN v_value;
END
$$;

-- Fails an update batch that moved N rows' keys past its last key: they would be walked again.
CREATE OR REPLACE FUNCTION @schema@._keys_moved(p_rows bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION '% row(s) of this batch now have a key after the batch''s last key: set_sql, or a trigger, changes the key the job walks, and those rows would be walked again',
        p_rows
        USING ERRCODE = 'BFK01',
              HINT = 'Walk another unique key (key_columns), one the job does not change.';
END
$$;

-- Runs a statement job's SQL once for a batch, with $1 and $2 the batch's first and last key,
-- as the caller and under the caller's settings (search_path included: no SET clause here, and
-- nothing in the body is looked up by name). Returns the rows it processed.
CREATE OR REPLACE FUNCTION @schema@._statement_batch(p_sql text, p_first anyelement, p_last anyelement)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $$
DECLARE
    v_rows bigint;
BEGIN
    EXECUTE p_sql USING p_first, p_last;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;

-- Opens a batch: notes the WAL insert position for the checkpoint's wal_bytes
-- (backfilld.lsn0), and returns the target's counters of rows updated and deleted as this
-- session sees them (what every session reported plus this one's pending counts), this
-- session's own pending part, and the table's row estimate: read at the start of two batches,
-- they tell the application's writes in between (the throttle's application_writes).
CREATE OR REPLACE FUNCTION @schema@._batch_open(p_target oid)
RETURNS TABLE(writes bigint, own bigint, table_rows bigint)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM set_config('backfilld.lsn0', pg_current_wal_insert_lsn()::text, true);
    RETURN QUERY
    SELECT pg_stat_get_tuples_updated(p_target) + pg_stat_get_tuples_deleted(p_target) + o.own, o.own,
           (SELECT c.reltuples FROM pg_class c WHERE c.oid = p_target)::bigint
    FROM (SELECT pg_stat_get_xact_tuples_updated(p_target) + pg_stat_get_xact_tuples_deleted(p_target)
                 AS own) AS o;
END
$$;

-- Who waits on the batch, asked at its end before the checkpoint: other sessions waiting on a
-- lock this backend holds, the longest of their waits in ms (from the start of the statement
-- that waits), and this session's pending write counts of the target. Row locks go only at
-- commit, so every session a batch blocked is still waiting then. SECURITY DEFINER: seeing other
-- roles' sessions needs pg_read_all_stats, which the schema's owner has and a submitter need not.
-- It returns counts only.
CREATE OR REPLACE FUNCTION @schema@._waiters(p_target oid)
RETURNS TABLE(waiters bigint, longest_ms bigint, own bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    SELECT count(*), coalesce(max(floor(extract(epoch FROM clock_timestamp() - w.query_start) * 1000)), 0)::bigint,
           pg_stat_get_xact_tuples_updated(p_target) + pg_stat_get_xact_tuples_deleted(p_target)
    FROM (SELECT a.pid, a.query_start FROM pg_stat_activity a
          WHERE a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid() OFFSET 0) AS w
    WHERE pg_backend_pid() = ANY (pg_blocking_pids(w.pid));
END
$$;

-- Commits a batch's checkpoint in the batch's own transaction. The batch left these
-- transaction-local settings: backfilld.scanned, backfilld.changed (numbers),
-- backfilld.first_key, backfilld.last_key (text[] literals, '' when the batch saw no row) and
-- backfilld.lsn0 (the WAL insert position at its start). Raises BFL01 when p_owner lost the job.
-- p_slice: the slice of a parallel job the batch walked (NULL: the whole job). A slice's
-- checkpoint moves the slice's last_key and the job's counters; the job is done with its last
-- slice; while other slices may still run, a state a user set keeps the owner (the daemon gives
-- the job back once its slices have stopped).
DROP FUNCTION IF EXISTS @schema@._checkpoint(bigint, text, int, int, int, int, int, bigint, bigint, int, text);
CREATE OR REPLACE FUNCTION @schema@._checkpoint(
    p_id bigint, p_owner text, p_lease_ms int, p_limit int, p_sleep_ms int,
    p_batch_size_now int, p_sleep_ms_now int, p_lag_bytes bigint, p_lag_ms bigint,
    p_blocked int, p_throttled_reason text, p_slice int)
RETURNS TABLE(state text, rows_scanned bigint, rows_changed bigint, batches bigint,
              rows_estimate bigint, wal_bytes bigint, slice_done boolean, wal_lsn text,
              run_window text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET backfilld.internal = 'on'
AS $$
#variable_conflict use_column
DECLARE
    v_scanned bigint := coalesce(nullif(current_setting('backfilld.scanned', true), ''), '0')::bigint;
    v_changed bigint := coalesce(nullif(current_setting('backfilld.changed', true), ''), '0')::bigint;
    v_first_key text[] := nullif(current_setting('backfilld.first_key', true), '')::text[];
    v_last_key text[] := nullif(current_setting('backfilld.last_key', true), '')::text[];
    v_lsn0 pg_lsn := nullif(current_setting('backfilld.lsn0', true), '')::pg_lsn;
    v_lease interval := least(greatest(p_lease_ms, 1), 86400000) * interval '1 millisecond';
    v_old_state text;
    v_new_state text;
BEGIN
    v_old_state := @schema@._lock_job(p_id, p_owner);
    wal_lsn := pg_current_wal_insert_lsn()::text;  -- the server's, for the throttle's lag estimate
    wal_bytes := pg_wal_lsn_diff(wal_lsn::pg_lsn, v_lsn0)::bigint;
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
        rows_estimate = greatest(j.rows_estimate, j.rows_scanned + v_scanned),
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
                           THEN clock_timestamp() + v_lease END,
        throttled_reason = CASE WHEN v_new_state = 'running' THEN p_throttled_reason END,
        finished_at = CASE WHEN v_new_state IN ('done', 'cancelled')
                           THEN coalesce(j.finished_at, now()) ELSE j.finished_at END
    WHERE j.id = p_id
    RETURNING j.state, j.rows_scanned, j.rows_changed, j.batches, j.rows_estimate, j.run_window
    INTO state, rows_scanned, rows_changed, batches, rows_estimate, run_window;

    INSERT INTO @schema@.batches AS b (job_id, batch, first_key, last_key, rows_scanned,
        rows_changed, duration_ms, sleep_ms, lag_bytes, lag_ms, blocked_sessions, wal_bytes,
        batch_size, throttled_reason)
    VALUES (p_id, batches, v_first_key, v_last_key, v_scanned, v_changed,
        extract(epoch FROM clock_timestamp() - now()) * 1000, p_sleep_ms, p_lag_bytes, p_lag_ms,
        p_blocked, wal_bytes, p_batch_size_now, p_throttled_reason);
    RETURN NEXT;
END
$$;

-- Skips one row that fails on its own: runs in the transaction where the job's session read the
-- row's key into backfilld.skip_key. Records it in failed_rows and moves the checkpoint past it
-- (the slice's, when p_slice is not NULL). Returns the job's failed_rows.
DROP FUNCTION IF EXISTS @schema@._skip_row(bigint, text, int, text, text);
CREATE OR REPLACE FUNCTION @schema@._skip_row(p_id bigint, p_owner text, p_lease_ms int,
                                              p_sqlstate text, p_message text, p_slice int)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET backfilld.internal = 'on'
AS $$
DECLARE
    v_key text[] := nullif(current_setting('backfilld.skip_key', true), '')::text[];
    v_failed bigint;
BEGIN
    PERFORM @schema@._lock_job(p_id, p_owner);
    IF v_key IS NULL THEN
        RAISE EXCEPTION 'job %: no row to skip', p_id USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE @schema@.jobs j
    SET last_key = CASE WHEN p_slice IS NULL THEN v_key ELSE j.last_key END,
        rows_scanned = j.rows_scanned + 1, failed_rows = j.failed_rows + 1,
        lease_until = clock_timestamp() + least(greatest(p_lease_ms, 1), 86400000) * interval '1 millisecond'
    WHERE j.id = p_id
    RETURNING j.failed_rows INTO v_failed;
    IF p_slice IS NOT NULL THEN
        UPDATE @schema@.slices s SET last_key = v_key, rows_scanned = s.rows_scanned + 1
        WHERE s.job_id = p_id AND s.slice = p_slice;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'job % has no slice % any more: it was cut again', p_id, p_slice
                USING ERRCODE = 'BFL01';
        END IF;
    END IF;
    INSERT INTO @schema@.failed_rows (job_id, key, sqlstate, message)
    VALUES (p_id, v_key, left(p_sqlstate, 5), left(p_message, 2000));
    RETURN v_failed;
END
$$;

-- Records what a verify batch found: the keys it left in backfilld.mismatches (a jsonb array of
-- text arrays). Returns how many.
CREATE OR REPLACE FUNCTION @schema@._record_mismatches(p_id bigint, p_owner text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET backfilld.internal = 'on'
AS $$
DECLARE
    v_found jsonb := nullif(current_setting('backfilld.mismatches', true), '')::jsonb;
    v_count bigint;
BEGIN
    PERFORM @schema@._lock_job(p_id, p_owner);
    INSERT INTO @schema@.mismatches (job_id, key)
    SELECT p_id, ARRAY(SELECT jsonb_array_elements_text(e))
    FROM jsonb_array_elements(coalesce(v_found, '[]')) AS e;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Records the bounds of a numeric first key column, read by the job's session; the first bounds
-- recorded stay (percent is by position). A bound that is not a number is not recorded.
CREATE OR REPLACE FUNCTION @schema@._set_bounds(p_id bigint, p_owner text, p_min text, p_max text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET backfilld.internal = 'on'
AS $$
BEGIN
    PERFORM @schema@._lock_job(p_id, p_owner);
    IF @schema@._to_numeric(p_min) IS NULL OR @schema@._to_numeric(p_max) IS NULL THEN
        RETURN;
    END IF;
    UPDATE @schema@.jobs j
    SET key_min = coalesce(j.key_min, p_min), key_max = coalesce(j.key_max, p_max)
    WHERE j.id = p_id AND (j.key_min IS NULL OR j.key_max IS NULL);
END
$$;

-- Where to cut the key range of TARGET (key columns P_KEY) into P_N slices of about equal rows:
-- up to P_N - 1 whole keys, ascending, as a jsonb array of text arrays. The cuts are quantiles of
-- the whole keys themselves, of every row of a small table or of a sample of about 2,000 pages
-- of a large one: an outlying key, or a first key column with few distinct values, moves no cut
-- far from its share of rows. SECURITY INVOKER: it reads the table as the job's role.
CREATE OR REPLACE FUNCTION @schema@._split_points(p_target regclass, p_key text[], p_n int)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres'
SET TimeZone = 'UTC' SET extra_float_digits = 3 SET lc_monetary = 'C' SET bytea_output = 'hex'
AS $$
DECLARE
    v_cols text := (SELECT string_agg(format('%I', c), ', ' ORDER BY n)
                    FROM unnest(p_key) WITH ORDINALITY AS u(c, n));
    v_texts text := (SELECT string_agg(format('%I::pg_catalog.text', c), ', ' ORDER BY n)
                     FROM unnest(p_key) WITH ORDINALITY AS u(c, n));
    v_pages bigint;
    v_sample text := '';
    v_keys text[];
    v_rows bigint;
    v_cut text[];
    v_prev text[];
    v_out jsonb := '[]';
BEGIN
    IF p_n < 2 THEN
        RETURN v_out;
    END IF;
    SELECT sum(pg_relation_size(t.relid)) / 8192 INTO v_pages
    FROM pg_partition_tree(p_target) t WHERE t.isleaf;
    IF v_pages > 2000 THEN  -- about 2,000 pages, anywhere in the table
        v_sample := format(' TABLESAMPLE SYSTEM (%s)', round(100.0 * 2000 / v_pages, 6));
    END IF;
    EXECUTE format('SELECT array_agg(ARRAY[%s] ORDER BY %s) FROM %s%s', v_texts, v_cols, p_target, v_sample)
        INTO v_keys;
    v_rows := coalesce(array_length(v_keys, 1), 0);
    FOR i IN 1 .. p_n - 1 LOOP
        EXIT WHEN v_rows = 0;
        v_cut := ARRAY(SELECT unnest(v_keys[ceil(v_rows::numeric * i / p_n)::int:ceil(v_rows::numeric * i / p_n)::int]));
        IF v_cut IS DISTINCT FROM v_prev AND v_cut <> '{}' THEN
            v_out := v_out || jsonb_build_array(to_jsonb(v_cut));
            v_prev := v_cut;
        END IF;
    END LOOP;
    RETURN v_out;
END
$$;

-- Cuts a parallel job into slices at P_CUTS (a jsonb array of ascending keys, _split_points'
-- result): n keys make n + 1 slices, never more than the job's parallel. Replaces slices made
-- before (for another target or key). Returns them.
CREATE OR REPLACE FUNCTION @schema@._make_slices(p_id bigint, p_owner text, p_cuts jsonb)
RETURNS TABLE(slice int, lower_key text[], upper_key text[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET backfilld.internal = 'on'
AS $$
#variable_conflict use_column
DECLARE
    v_job record;
    v_cuts jsonb := coalesce(p_cuts, '[]');
BEGIN
    PERFORM @schema@._lock_job(p_id, p_owner);
    SELECT j.target, j.key_columns, j.parallel INTO v_job FROM @schema@.jobs j WHERE j.id = p_id;
    IF jsonb_typeof(v_cuts) <> 'array' OR jsonb_array_length(v_cuts) > v_job.parallel - 1 THEN
        RAISE EXCEPTION 'job %: % cut(s) for % slices', p_id, jsonb_array_length(v_cuts), v_job.parallel
            USING ERRCODE = 'invalid_parameter_value';
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

-- Functions of the daemon's queue connection (granted to backfill_daemon only).

-- Ends a dry run: the estimates it measured, the job done, nothing else changed.
CREATE OR REPLACE FUNCTION @schema@._dry_run_done(p_id bigint, p_owner text, p_seconds bigint,
                                                  p_wal_bytes bigint)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET backfilld.internal = 'on'
AS $$
DECLARE
    result text;
BEGIN
    PERFORM FROM @schema@.jobs j WHERE j.id = p_id FOR UPDATE NOWAIT;
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

-- Gives a job back: 'failed' (with p_error) always wins; otherwise a running job takes p_state
-- (e.g. 'pending' at shutdown) and a state a user set is kept. Returns the resulting state, NULL
-- when p_owner does not hold the job.
CREATE OR REPLACE FUNCTION @schema@._release(p_id bigint, p_owner text, p_state text, p_error text)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET backfilld.internal = 'on'
AS $$
DECLARE
    current text;
    result text;
BEGIN
    IF p_state IS NULL OR p_state NOT IN ('pending', 'paused', 'done', 'failed', 'cancelled') THEN
        RAISE EXCEPTION '_release: cannot release a job as "%"', p_state
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- NOWAIT: a row another session keeps locked must not stall the daemon's queue connection;
    -- the daemon tries again.
    SELECT j.state INTO current FROM @schema@.jobs j
    WHERE j.id = p_id AND j.owner = p_owner FOR UPDATE NOWAIT;
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET backfilld.internal = 'on'
AS $$
#variable_conflict use_column
BEGIN
    -- A row another session keeps locked is not renewed this time (the daemon must not wait).
    UPDATE @schema@.jobs j
    SET lease_until = clock_timestamp() + p_lease_ms * interval '1 millisecond'
    WHERE j.id IN (SELECT l.id FROM @schema@.jobs l
                   WHERE l.id = ANY (p_ids) AND l.owner = p_owner FOR UPDATE SKIP LOCKED);
    RETURN QUERY SELECT j.id, j.state, j.owner FROM @schema@.jobs j
                 WHERE j.id = ANY (p_ids) ORDER BY j.id;
END
$$;

-- Shows why p_owner's running jobs are held back (NULL: they are not).
CREATE OR REPLACE FUNCTION @schema@._set_reason(p_owner text, p_ids bigint[], p_reason text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET backfilld.internal = 'on'
AS $$
BEGIN
    UPDATE @schema@.jobs j SET throttled_reason = p_reason
    WHERE j.id IN (SELECT l.id FROM @schema@.jobs l
                   WHERE l.id = ANY (p_ids) AND l.owner = p_owner AND l.state = 'running'
                     AND l.throttled_reason IS DISTINCT FROM p_reason FOR UPDATE SKIP LOCKED);
END
$$;

-- The last_error of a job p_owner holds, without failing it (a hold_when_sql that fails holds
-- the job and says why there); NULL clears it. Whatever its state: a job a user paused keeps its
-- owner until the daemon gives it back, and must not keep a stale error. False when the row held
-- something else and another session kept it locked (the job's own batch at its checkpoint, a
-- user's UPDATE): nothing was written, and the daemon writes it again at the job's next check.
-- True when written, already so, or no longer the daemon's job.
CREATE OR REPLACE FUNCTION @schema@._set_error(p_owner text, p_id bigint, p_error text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET backfilld.internal = 'on'
AS $$
BEGIN
    UPDATE @schema@.jobs j SET last_error = p_error
    WHERE j.id IN (SELECT l.id FROM @schema@.jobs l
                   WHERE l.id = p_id AND l.owner = p_owner
                     AND l.last_error IS DISTINCT FROM p_error FOR UPDATE SKIP LOCKED);
    IF FOUND THEN
        RETURN true;
    END IF;
    RETURN NOT EXISTS (SELECT FROM @schema@.jobs j
                       WHERE j.id = p_id AND j.owner = p_owner
                         AND j.last_error IS DISTINCT FROM p_error);
END
$$;

-- Records the connecting daemon's daemon.max_parallel for the validation at INSERT.
CREATE OR REPLACE FUNCTION @schema@._set_limits(p_max_parallel int) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ UPDATE @schema@.limits SET max_parallel = p_max_parallel WHERE max_parallel IS DISTINCT FROM p_max_parallel $$;

-- Jobs that are running or could start now (--exit-when-idle stops at 0).
CREATE OR REPLACE FUNCTION @schema@._runnable_count() RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FROM @schema@.jobs j
    WHERE j.state = 'running'
       OR (j.state = 'pending' AND (j.not_before IS NULL OR j.not_before <= now()))
$$;

-- The queue's jobs by state, for the metrics.
CREATE OR REPLACE FUNCTION @schema@._count_states() RETURNS TABLE(state text, jobs bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT j.state, count(*) FROM @schema@.jobs j GROUP BY j.state $$;

-- Progress of every job the user may see (the view's own filter, as _can_see: a view runs with
-- its owner's rights, who is not subject to row-level security; security_barrier keeps a user's
-- own functions from seeing the other rows).
-- percent: rows_scanned of rows_estimate (kept at least rows_scanned), below 100 until the job
-- is done; by a numeric key's position only when there is no estimate. The daemon's progress log
-- line says the same. rows_per_second: over the last 20 batches. eta: while running or paused,
-- once 1% is done, at the rate of those batches measured up to now, so time held back by the
-- throttle or a pause counts.
CREATE OR REPLACE VIEW @schema@.progress WITH (security_barrier) AS
SELECT j.id, j.name, j.target, j.state, p.percent, j.rows_changed, r.rows_per_second,
       CASE WHEN j.state NOT IN ('running', 'paused') OR p.percent < 1 OR NOT r.rows_per_second_now > 0
            THEN NULL
            WHEN j.run_window IS NULL
            THEN make_interval(secs => (j.rows_scanned * (100 - p.percent) / p.percent
                                        / r.rows_per_second_now)::double precision)
            -- the work left at the rate measured inside the window, laid onto the windows to come
            ELSE @schema@._window_eta(j.run_window,
                     (j.rows_scanned * (100 - p.percent) / p.percent
                      / nullif(r.rows / nullif(@schema@._window_seconds(j.run_window, r.since, r.until_now), 0),
                               0))::double precision,
                     clock_timestamp())
       END AS eta,
       j.throttled_reason, j.run_window, j.hold_when_sql
FROM @schema@.jobs j
CROSS JOIN LATERAL (
    SELECT CASE WHEN j.state = 'done' THEN 100.0
                -- the rows walked: a key's range is no fair measure of its rows (one outlying
                -- key, clustered or sparse values); never 100 before the job is done
                WHEN j.rows_estimate > 0
                THEN round(least(99.9, 100.0 * j.rows_scanned / j.rows_estimate), 1)
                -- no row estimate (a table never analyzed): a numeric key's position
                WHEN j.parallel = 1 AND @schema@._to_numeric(j.key_max) > @schema@._to_numeric(j.key_min)
                THEN CASE WHEN j.last_key IS NULL THEN 0.0
                          ELSE round(least(99.9, greatest(0, 100.0 * (@schema@._to_numeric(j.last_key[1])
                                                                     - @schema@._to_numeric(j.key_min))
                                                         / (@schema@._to_numeric(j.key_max)
                                                            - @schema@._to_numeric(j.key_min)))), 1) END
           END AS percent) p
CROSS JOIN LATERAL (
    SELECT round((sum(b.rows_scanned)
                  / nullif(extract(epoch FROM max(b.finished_at)
                                   - min(b.finished_at - b.duration_ms * interval '1 millisecond')),
                           0))::numeric, 1) AS rows_per_second,
           sum(b.rows_scanned)
           / nullif(extract(epoch FROM greatest(clock_timestamp(), max(b.finished_at))
                            - min(b.finished_at - b.duration_ms * interval '1 millisecond')), 0)
               AS rows_per_second_now,
           sum(b.rows_scanned) AS rows,
           min(b.finished_at - b.duration_ms * interval '1 millisecond') AS since,
           greatest(clock_timestamp(), max(b.finished_at)) AS until_now
    FROM (SELECT * FROM @schema@.batches b WHERE b.job_id = j.id
          ORDER BY b.batch DESC LIMIT 20) b) r
WHERE @schema@._can_see(j.run_as);


-- 5. Roles, row-level security, privileges ----------------------------------------------------
-- backfill_submit: roles that submit and steer their own jobs (GRANT backfill_submit TO app_role);
--   a job's batches run in a session logged in as that role, which calls the job-session
--   functions of step 4.
-- backfill_admin: DBAs, who see and steer every job.
-- backfill_daemon: the daemon's login role (with pg_monitor to see standbys and lock waits). It
--   needs no membership in any submitter.
-- Nothing is left to PUBLIC. Every function has a fixed search_path, but _statement_batch, which
-- runs a statement job's SQL as its caller under the caller's own settings.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'backfill_submit') THEN
        CREATE ROLE backfill_submit NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'backfill_daemon') THEN
        CREATE ROLE backfill_daemon NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'backfill_admin') THEN
        CREATE ROLE backfill_admin NOLOGIN;
    END IF;
END
$$;

-- A submitter sees and steers only the jobs of roles it is a member of.
ALTER TABLE @schema@.jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE @schema@.batches ENABLE ROW LEVEL SECURITY;
ALTER TABLE @schema@.failed_rows ENABLE ROW LEVEL SECURITY;
ALTER TABLE @schema@.mismatches ENABLE ROW LEVEL SECURITY;
ALTER TABLE @schema@.slices ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS jobs_of_my_roles ON @schema@.jobs;
CREATE POLICY jobs_of_my_roles ON @schema@.jobs
    USING (@schema@._can_see(run_as)) WITH CHECK (@schema@._can_see(run_as));
DROP POLICY IF EXISTS batches_of_my_roles ON @schema@.batches;
CREATE POLICY batches_of_my_roles ON @schema@.batches FOR SELECT
    USING (EXISTS (SELECT FROM @schema@.jobs j WHERE j.id = job_id AND @schema@._can_see(j.run_as)));
DROP POLICY IF EXISTS failed_rows_of_my_roles ON @schema@.failed_rows;
CREATE POLICY failed_rows_of_my_roles ON @schema@.failed_rows FOR SELECT
    USING (EXISTS (SELECT FROM @schema@.jobs j WHERE j.id = job_id AND @schema@._can_see(j.run_as)));
DROP POLICY IF EXISTS mismatches_of_my_roles ON @schema@.mismatches;
CREATE POLICY mismatches_of_my_roles ON @schema@.mismatches FOR SELECT
    USING (EXISTS (SELECT FROM @schema@.jobs j WHERE j.id = job_id AND @schema@._can_see(j.run_as)));
DROP POLICY IF EXISTS slices_of_my_roles ON @schema@.slices;
CREATE POLICY slices_of_my_roles ON @schema@.slices FOR SELECT
    USING (EXISTS (SELECT FROM @schema@.jobs j WHERE j.id = job_id AND @schema@._can_see(j.run_as)));

REVOKE ALL ON SCHEMA @schema@ FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA @schema@ FROM PUBLIC, backfill_submit, backfill_admin, backfill_daemon;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @schema@ FROM PUBLIC, backfill_submit, backfill_admin, backfill_daemon;
GRANT USAGE ON SCHEMA @schema@ TO backfill_submit, backfill_admin, backfill_daemon;

-- Submitting, watching and steering.
GRANT SELECT, INSERT ON @schema@.jobs TO backfill_submit, backfill_admin;
GRANT UPDATE (state, run_window) ON @schema@.jobs TO backfill_submit, backfill_admin;
GRANT SELECT ON @schema@.progress, @schema@.batches, @schema@.failed_rows, @schema@.mismatches,
    @schema@.slices, @schema@.schema_version, @schema@.limits TO backfill_submit, backfill_admin;
-- What the user functions, the row-level security policies and the validation trigger call (as
-- the user).
GRANT EXECUTE ON FUNCTION @schema@.pause(bigint), @schema@.resume(bigint), @schema@.cancel(bigint),
    @schema@._set_state(bigint, text), @schema@._can_see(name), @schema@._is_internal(),
    @schema@._to_numeric(text), @schema@._daemon_columns(), @schema@._definition_columns(),
    @schema@._first_changed(@schema@.jobs, @schema@.jobs, text[]),
    @schema@._primary_key(regclass), @schema@._check_key(regclass, text[]),
    @schema@._check_sizes(@schema@.jobs), @schema@._check_definition(@schema@.jobs),
    @schema@._window_parts(text), @schema@._check_hold_when(text)
    TO backfill_submit, backfill_admin, backfill_daemon;
-- Run windows, for anyone (they read nothing of the queue): a job's session asks whether its
-- window is open; the progress view (as its owner) lays the work left onto the windows.
GRANT EXECUTE ON FUNCTION @schema@._window_parse(text),
    @schema@._window_open_stretches(text, timestamptz, timestamptz),
    @schema@._in_window(text, timestamptz), @schema@._window_seconds(text, timestamptz, timestamptz),
    @schema@._window_eta(text, double precision, timestamptz)
    TO backfill_submit, backfill_admin, backfill_daemon;
-- A job's session (logged in as the job's role).
GRANT EXECUTE ON FUNCTION
    @schema@._checkpoint(bigint, text, int, int, int, int, int, bigint, bigint, int, text, int),
    @schema@._skip_row(bigint, text, int, text, text, int), @schema@._record_mismatches(bigint, text),
    @schema@._set_bounds(bigint, text, text, text), @schema@._make_slices(bigint, text, jsonb),
    @schema@._split_points(regclass, text[], int), @schema@._waiters(oid), @schema@._batch_open(oid),
    @schema@._key_in(text, anyelement), @schema@._key_out(anyelement),
    @schema@._statement_batch(text, anyelement, anyelement), @schema@._keys_moved(bigint)
    TO backfill_submit;
-- The daemon's queue connection.
GRANT SELECT ON @schema@.jobs, @schema@.slices, @schema@.schema_version, @schema@.limits TO backfill_daemon;
GRANT EXECUTE ON FUNCTION @schema@._claim(text, int, bigint[]), @schema@._renew(text, bigint[], int),
    @schema@._release(bigint, text, text, text), @schema@._set_reason(text, bigint[], text),
    @schema@._dry_run_done(bigint, text, bigint, bigint), @schema@._runnable_count(),
    @schema@._count_states(), @schema@._set_limits(int), @schema@._set_error(text, bigint, text)
    TO backfill_daemon;

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

UPDATE @schema@.schema_version SET version = 3 WHERE version IS DISTINCT FROM 3;
