/*
 * The SQL of a batch: keyset pagination over the job's key, built as plain strings from a
 * plain struct so it can be unit-tested without a server. Identifiers are always quoted;
 * the user's SQL fragments are placed on lines of their own inside parentheses.
 */
#ifndef BACKFILLD_BATCH_H
#define BACKFILLD_BATCH_H

#include <stdbool.h>

typedef enum job_kind {
	JOB_KIND_UPDATE,
	JOB_KIND_STATEMENT,
	JOB_KIND_VERIFY,
} job_kind_t;

/* "update" | "statement" | "verify". */
bool job_kind_parse(const char *text, job_kind_t *out) __attribute__((warn_unused_result));
const char *job_kind_name(job_kind_t kind);

typedef struct batch_spec {
	job_kind_t kind;
	const char *target_schema; /* unquoted names, as in the catalog */
	const char *target_table;
	int nkeys;
	const char *const *key_names; /* unquoted column names, in key order */
	const char *const *key_types; /* format_type() of each key column: valid SQL type names */
	const char *set_sql;	      /* update: the SET list */
	const char *where_sql;	      /* update: optional filter; NULL or "" for none */
	const char *batch_sql;	      /* statement: run per batch with $1, $2 = first, last key */
	const char *mismatch_sql;     /* verify: true for a row that is not yet right */
	const char *const *upper;     /* a slice's last key (nkeys values, inclusive); NULL: no end */
} batch_spec_t;

/* NAME as a quoted SQL identifier ("a""b"). Caller frees. */
char *sql_quote_ident(const char *name) __attribute__((warn_unused_result));

/*
 * The statement of one `update` batch, or of one `verify` batch when SPEC's kind says so (then
 * nothing is updated: the keys where mismatch_sql holds are counted as changed and left, as a
 * jsonb array of text arrays, in backfilld.mismatches). Parameters: $1..$nkeys the last key already done
 * (absent when FIRST, the job's first batch), then the batch size. It walks at most that
 * many keys after the last one, updates the rows between the first and the last of them
 * that match where_sql, and returns one row (scanned bigint, changed bigint, first_key
 * text[], last_key text[]), which it also leaves in the transaction-local settings
 * backfilld.scanned/changed/first_key/last_key for the checkpoint. Caller frees.
 */
char *batch_build_update(const batch_spec_t *spec, bool first) __attribute__((warn_unused_result));

/*
 * The key right after the checkpoint (parameters as batch_build_update, without the size),
 * left in the transaction-local setting backfilld.skip_key for <schema>._skip_row: how one row
 * that fails on its own is stepped over. Caller frees.
 */
char *batch_build_peek(const batch_spec_t *spec, bool first) __attribute__((warn_unused_result));

/* The statement a batch function wraps. */
typedef enum batch_function {
	BATCH_FN_FIRST, /* batch_build_update(spec, true) */
	BATCH_FN_NEXT,	/* batch_build_update(spec, false) */
	BATCH_FN_PEEK_FIRST,
	BATCH_FN_PEEK_NEXT,
	BATCH_FN_BOUNDS, /* min and max of the first key column into backfilld.key_min/key_max */
	BATCH_FN_SPLIT,	 /* split points of a parallel job into backfilld.split (see batch_build_split) */
} batch_function_t;

/*
 * The body of the split function (plpgsql): given $1 = N slices, up to N-1 keys that cut the key
 * range into slices of about equal rows, strictly ascending, left in the session setting
 * backfilld.split as a jsonb array of text arrays; returns how many. The cut values of the first
 * key column come from the planner's histogram (pg_stats), else, for a numeric column, from
 * min and max read off the key index, else from a TABLESAMPLE of about 200 pages; each becomes
 * the first whole key at or after it, found through the key index. Caller frees.
 */
char *batch_build_split(const batch_spec_t *spec) __attribute__((warn_unused_result));

/* The first key column is numeric: percent can be told by key position. */
bool batch_key_is_numeric(const batch_spec_t *spec);

/* Its name in pg_temp, e.g. "backfilld_batch_next". */
const char *batch_function_name(batch_function_t fn);

/*
 * The user's SQL never runs with SET ROLE (which it could undo): it runs inside a temporary
 * SECURITY DEFINER function owned by the job's run_as role, where PostgreSQL refuses any change
 * of role. This returns the CREATE OR REPLACE FUNCTION pg_temp.<name>(...) statement for FN,
 * followed (after a ";") by nothing else: a single statement. Caller frees.
 */
char *batch_build_function(const batch_spec_t *spec, batch_function_t fn) __attribute__((warn_unused_result));

/*
 * The faster form of FN (BATCH_FN_FIRST or BATCH_FN_NEXT) for an update or verify job whose key
 * is one column of a type with min() and max() (numbers, text, dates and times): a PL/pgSQL body
 * that, like a hand-written keyset loop, reads min, max and count of the next keys, then updates
 * (or, verify, reads) that range with plain bounds and takes the count from ROW_COUNT; its plan
 * is cached for the session. Same name, arguments and result as batch_build_function's, so it
 * replaces it with CREATE OR REPLACE once that (SQL, parsed at creation) has validated the
 * user's SQL. NULL when SPEC has no such form. Caller frees.
 */
char *batch_build_fast_function(const batch_spec_t *spec, batch_function_t fn)
	__attribute__((warn_unused_result));

/* ALTER FUNCTION pg_temp.<name>(...) OWNER TO <run_as>. Caller frees. */
char *batch_build_function_owner(const batch_spec_t *spec, batch_function_t fn, const char *run_as)
	__attribute__((warn_unused_result));

/* SELECT * FROM pg_temp.<name>($1, ...): the call, with the same parameters as the statement. */
char *batch_build_call(const batch_spec_t *spec, batch_function_t fn) __attribute__((warn_unused_result));

/*
 * Settings that open every batch transaction. Parameters: $1 statement_timeout (ms),
 * $2 lock_timeout (ms). It also notes the WAL position for the checkpoint's wal_bytes.
 */
extern const char batch_open_sql[];

/*
 * batch_open_sql for a batch that counts the application's writes: $3 is the target's oid, and
 * its row goes on with pg_temp.backfilld_writes($3)'s: the target's counters of rows updated
 * and deleted (the writes that can meet a batch's row locks; a new row cannot) as this session
 * sees them, the statistics every session has reported plus what this one has not yet; this
 * session's own part of that (its pending counts: those of this transaction and of earlier
 * ones not yet reported); and the table's row estimate (pg_class.reltuples). Read at the start
 * of two batches, the first figure differs by the application's writes that reached the
 * statistics in between plus the job's own, whenever this session reported them; the second
 * figure read at a batch's start and its end (batch_waiters_sql) gives the job's own writes of
 * that batch. batch_writes_function_sql creates the function with the other batch functions.
 */
extern const char batch_open_counting_sql[];
extern const char batch_writes_function_sql[];

/*
 * Who waits on the batch, asked at its end before the checkpoint: the number of other sessions
 * waiting on a lock this backend holds, and the longest of their waits in ms (counted from the
 * start of the statement that waits); then this session's pending write counts of the target
 * (as batch_open_counting_sql). Every session a batch's row locks blocked is still waiting
 * then, as those locks go only at commit: this sees each one, however short the batch, where
 * the sampler sees only those it catches between its samples. pg_blocking_pids() is called only
 * for sessions waiting on a lock. Sessions of other roles need pg_read_all_stats (pg_monitor)
 * to be seen. $1 is the target's oid. It calls pg_temp.backfilld_waiters(), which
 * batch_waiters_function_sql creates in the batch's session with the other batch functions: a
 * PL/pgSQL body keeps its plan for the session, where the query sent as it is was parsed and
 * planned again for every batch (pg_stat_activity is a view with joins: ~0.8 ms of the
 * server's CPU a batch).
 */
extern const char batch_waiters_sql[];
extern const char batch_waiters_function_sql[];

/*
 * The checkpoint, run as the daemon's own role right after the batch statement in the same
 * transaction. SCHEMA is the queue schema (unquoted). Parameters as <schema>._checkpoint:
 * id, owner, lease_ms, batch size, sleep before it, batch_size_now, sleep_ms_now, lag
 * bytes, lag ms, blocked sessions, throttled reason, slice (NULL: the whole job). Its row:
 * state, rows_scanned, rows_changed, batches, rows_estimate, wal_bytes, slice_done, wal_lsn (the
 * server's WAL insert position then). Caller frees.
 */
char *batch_build_checkpoint(const char *schema) __attribute__((warn_unused_result));

#endif
