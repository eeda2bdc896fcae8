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

typedef struct batch_spec {
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
 * The statement of one batch of each kind, to be prepared in the job's session. Parameters:
 * $1..$nkeys the last key already done (absent when FIRST, the job's first batch), then the batch
 * size, then (statement jobs) the job's batch_sql. Each walks at most that many keys after the
 * last one, and returns one row (scanned bigint, changed bigint, first_key text[], last_key
 * text[]), which it also leaves in the transaction-local settings
 * backfilld.scanned/changed/first_key/last_key for the checkpoint. Caller frees.
 *
 * update: updates the rows between the first and the last key that match where_sql, and fails
 * (<schema>._keys_moved) when the update moved a key past the last one.
 * verify: updates nothing: the keys where mismatch_sql holds are counted as changed and left, as
 * a jsonb array of text arrays, in the transaction-local setting backfilld.mismatches.
 * statement: runs the job's SQL once, through <schema>._statement_batch, with $1, $2 the first
 * and the last key.
 */
enum batch_column {
	BATCH_SCANNED,
	BATCH_CHANGED,
	BATCH_FIRST_KEY,
	BATCH_LAST_KEY
};

char *batch_build_update(const batch_spec_t *spec, bool first) __attribute__((warn_unused_result));
char *batch_build_verify(const batch_spec_t *spec, bool first) __attribute__((warn_unused_result));
char *batch_build_statement(const batch_spec_t *spec, bool first) __attribute__((warn_unused_result));

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

/* A job's hold_when_sql as a statement: one row (true) when it holds, none otherwise (false or
 * NULL). The expression is on lines of its own inside parentheses. Caller frees. */
char *batch_build_hold_when(const char *hold_when_sql) __attribute__((warn_unused_result));

/* The daemon's two timeouts for the transaction: $1 statement_timeout, $2 lock_timeout (ms). */
extern const char batch_timeouts_sql[];

/* Whether the job's role may read the target (and, with WRITES, update it): one row of two
 * booleans. $1 the target's oid. */
const char *batch_privileges_sql(bool writes);

#endif
