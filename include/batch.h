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
} batch_spec_t;

/* NAME as a quoted SQL identifier ("a""b"). Caller frees. */
char *sql_quote_ident(const char *name) __attribute__((warn_unused_result));

/*
 * The statement of one `update` batch. Parameters: $1..$nkeys the last key already done
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

/*
 * Session and transaction settings that open every batch transaction. Parameters:
 * $1 statement_timeout (ms), $2 lock_timeout (ms), $3 the role to run as.
 */
extern const char batch_open_sql[];

/*
 * The checkpoint, run as the daemon's own role right after the batch statement in the same
 * transaction. SCHEMA is the queue schema (unquoted). Parameters as <schema>._checkpoint:
 * id, owner, lease_ms, batch size, sleep before it, batch_size_now, sleep_ms_now, lag
 * bytes, lag ms, blocked sessions, throttled reason. Caller frees.
 */
char *batch_build_checkpoint(const char *schema) __attribute__((warn_unused_result));

#endif
