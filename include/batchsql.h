/*
 * The SQL of a job's session: keyset pagination over the job's key, built as plain strings from
 * a plain struct so it can be unit-tested without a server. Every statement runs in a session
 * logged in as the job's role, under that role's settings, so everything the daemon adds to the
 * job's SQL is qualified (relations, functions, operators, types) and keys cross the session as
 * text written and read under fixed settings (<schema>._key_out and _key_in). Identifiers are
 * always quoted; the user's SQL fragments are placed on lines of their own inside parentheses.
 */
#ifndef BACKFILLD_BATCHSQL_H
#define BACKFILLD_BATCHSQL_H

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
	const char *queue_schema;  /* unquoted, as in the configuration */
	const char *target_schema; /* unquoted names, as in the catalog */
	const char *target_table;
	int nkeys;
	const char *const *key_names; /* unquoted column names, in key order */
	const char *const *key_types; /* each key column's type as qualified SQL ("pg_catalog"."int8") */
	const char *key_op_schema;    /* unquoted schema of the key types' comparison operators */
	const char *set_sql;	      /* update: the SET list */
	const char *where_sql;	      /* update: optional filter; NULL or "" for none */
	const char *mismatch_sql;     /* verify: true for a row that is not yet right */
	const char *const *upper;     /* a slice's last key (nkeys values, inclusive); NULL: no end */
} batch_spec_t;

/* NAME as a quoted SQL identifier ("a""b"). Caller frees. */
char *sql_quote_ident(const char *name) __attribute__((warn_unused_result));

/*
 * The statement of one batch, to be prepared in the job's session. Parameters: $1..$nkeys the
 * last key already done (absent when FIRST, the job's first batch), then the batch size, then
 * (statement jobs) the job's batch_sql.
 *
 * update: walks at most that many keys after the last one and updates the rows between the first
 * and the last of them that match where_sql. verify: the same walk, nothing updated: the keys
 * where mismatch_sql holds are counted as changed and left, as a jsonb array of text arrays, in
 * the transaction-local setting backfilld.mismatches. statement: the same walk, then the job's
 * SQL once, through <schema>._statement_batch, with $1, $2 the first and the last key.
 *
 * It returns one row (scanned bigint, changed bigint, first_key text[], last_key text[]), which
 * it also leaves in the transaction-local settings backfilld.scanned/changed/first_key/last_key
 * for the checkpoint. Caller frees.
 */
char *batch_build_batch(const batch_spec_t *spec, bool first) __attribute__((warn_unused_result));

/* How many parameters batch_build_batch's statement takes. */
int batch_nparams(const batch_spec_t *spec, bool first);

/*
 * The key right after the checkpoint (parameters as batch_build_batch, without the size and the
 * SQL), left in the transaction-local setting backfilld.skip_key for <schema>._skip_row: how one
 * row that fails on its own is stepped over. Caller frees.
 */
char *batch_build_peek(const batch_spec_t *spec, bool first) __attribute__((warn_unused_result));

/*
 * The first key column's minimum and maximum, recorded for percent by <schema>._set_bounds($1 job
 * id, $2 owner). Caller frees.
 */
char *batch_build_bounds(const batch_spec_t *spec) __attribute__((warn_unused_result));

/*
 * A parallel job's slices: <schema>._split_points cuts the key range as the job's role, and
 * <schema>._make_slices records the cuts ($1 job id, $2 owner, $3 daemon.max_parallel: never
 * more slices than that, whatever the job asked). Rows (slice, lower_key text,
 * upper_key text, last_key text, done). Caller frees.
 */
char *batch_build_split(const char *queue_schema) __attribute__((warn_unused_result));

/*
 * Opens every batch transaction: $1 statement_timeout (ms), $2 lock_timeout (ms), $3 the target's
 * oid. Notes the WAL position for the checkpoint's wal_bytes, and returns the target's write
 * counters (<schema>._batch_open: writes, own, table_rows) for the throttle. Caller frees.
 */
char *batch_build_open(const char *queue_schema) __attribute__((warn_unused_result));

/* Who waits on the batch ($1 the target's oid): <schema>._waiters. Caller frees. */
char *batch_build_waiters(const char *queue_schema) __attribute__((warn_unused_result));

/* A verify batch's mismatches, recorded ($1 job id, $2 owner). Caller frees. */
char *batch_build_mismatches(const char *queue_schema) __attribute__((warn_unused_result));

/* The WAL a dry run's batch wrote, read before it rolls back. */
extern const char batch_dry_wal_sql[];

/*
 * The checkpoint, right after the batch statement in the same transaction. Parameters as
 * <schema>._checkpoint: id, owner, lease_ms, batch size, sleep before it, batch_size_now,
 * sleep_ms_now, lag bytes, lag ms, blocked sessions, throttled reason, slice (NULL: the whole
 * job). Its row: state, rows_scanned, rows_changed, batches, rows_estimate, wal_bytes, slice_done,
 * wal_lsn (the server's WAL insert position then). Caller frees.
 */
char *batch_build_checkpoint(const char *queue_schema) __attribute__((warn_unused_result));

/* Skip one failing row: <schema>._skip_row($1 id, $2 owner, $3 lease_ms, $4 sqlstate, $5 message,
 * $6 slice). Caller frees. */
char *batch_build_skip(const char *queue_schema) __attribute__((warn_unused_result));

/* Whether the job's role may read (and, for an update job, update) the target: one row of two
 * booleans. $1 the target's oid. */
const char *batch_privileges_sql(job_kind_t kind);

#endif
