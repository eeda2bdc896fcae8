/*
 * Every statement that calls a function of the queue schema or reads its tables, in one place:
 * its text (with the schema quoted in), its parameters, and the columns of its result. The
 * statements of a job's batches (batchsql.h) call the schema's key functions inside; everything
 * else the daemon asks of its schema is here.
 */
#ifndef BACKFILLD_QUEUESQL_H
#define BACKFILLD_QUEUESQL_H

/* The statements. Parameters ($n) and result columns of each. */
typedef enum queuesql {
	/* The schema's version: max(version). */
	QSQL_SCHEMA_VERSION,
	/* Claim jobs: $1 owner, $2 lease_ms, $3 ids not to claim (bigint[]). Rows of jobs. */
	QSQL_CLAIM,
	/* Renew leases: $1 owner, $2 ids (bigint[]), $3 lease_ms. Rows: id, state, owner. */
	QSQL_RENEW,
	/* Jobs that could run now: one count. */
	QSQL_RUNNABLE_COUNT,
	/* Jobs by state: state, jobs. */
	QSQL_COUNT_STATES,
	/* Record daemon.max_parallel: $1. */
	QSQL_SET_LIMITS,
	/* Give a job back: $1 id, $2 owner, $3 state, $4 last_error. Its state, NULL when the lease
	 * was lost. */
	QSQL_RELEASE,
	/* Write throttled_reason now: $1 owner, $2 ids (bigint[]), $3 reason (NULL: none). */
	QSQL_SET_REASON,
	/* A dry run's estimates: $1 id, $2 owner, $3 seconds, $4 WAL bytes. Its state. */
	QSQL_DRY_RUN_DONE,
	/* A job's row ($1 id), columns by name: see job_session.c. */
	QSQL_LOAD_JOB,
	/* Its key columns ($1 id), in key order: name, type_oid, carrier (the type as qualified
	 * SQL), numeric, op_schema (where the type's comparison operators live). */
	QSQL_LOAD_KEYS,
	/* A parallel job's slices as cut for its current target and key ($1 id): QSQL_SLICE_*. */
	QSQL_LOAD_SLICES,
	/* Cut a parallel job, in its session: $1 id, $2 owner, $3 the most slices allowed
	 * (daemon.max_parallel). Columns QSQL_SLICE_*. */
	QSQL_SPLIT,
	/* Opens a batch's transaction: $1 statement_timeout, $2 lock_timeout (ms), $3 the target's
	 * oid. Notes the WAL position; returns the target's write counters: writes, own, table_rows. */
	QSQL_BATCH_OPEN,
	/* The WAL written since QSQL_BATCH_OPEN (a dry run's, before it rolls back). */
	QSQL_BATCH_WAL,
	/* Who waits on the batch's locks ($1 the target's oid): waiters, longest_ms, own. */
	QSQL_WAITERS,
	/* A verify batch's mismatches, recorded: $1 id, $2 owner. */
	QSQL_MISMATCHES,
	/* The checkpoint, in the batch's transaction: $1 id, $2 owner, $3 lease_ms, $4 batch size,
	 * $5 sleep before it, $6 batch_size_now, $7 sleep_ms_now, $8 lag bytes, $9 lag ms,
	 * $10 blocked sessions, $11 throttled reason, $12 slice (NULL: the whole job).
	 * Columns QSQL_CHECKPOINT_*. */
	QSQL_CHECKPOINT,
	/* Step over one failing row: $1 id, $2 owner, $3 lease_ms, $4 sqlstate, $5 message,
	 * $6 slice. Its failed_rows. */
	QSQL_SKIP_ROW,
	/* A job's run window as its row has it now, and whether it is open, in the job's session:
	 * $1 id. Columns: run_window (NULL: none), open. */
	QSQL_WINDOW,
	/* A running job's last_error without failing it (a failing hold_when_sql): $1 owner, $2 id,
	 * $3 the error (NULL clears it). */
	QSQL_SET_ERROR,
	QSQL_COUNT,
} queuesql_t;

/* The columns of QSQL_CHECKPOINT's row. */
enum queuesql_checkpoint_column {
	QSQL_CHECKPOINT_STATE,	      /* the job's state after it: running, done, or a user's */
	QSQL_CHECKPOINT_ROWS_SCANNED, /* the job's totals */
	QSQL_CHECKPOINT_ROWS_CHANGED,
	QSQL_CHECKPOINT_BATCHES,
	QSQL_CHECKPOINT_ROWS_ESTIMATE, /* kept at least rows_scanned */
	QSQL_CHECKPOINT_WAL_BYTES,     /* the batch's WAL */
	QSQL_CHECKPOINT_SLICE_DONE,    /* the slice reached its end */
	QSQL_CHECKPOINT_WAL_LSN,       /* the server's WAL insert position then */
	QSQL_CHECKPOINT_RUN_WINDOW,    /* the job's run window as its row has it now */
};

/* The columns of QSQL_LOAD_SLICES' and QSQL_SPLIT's rows. */
enum queuesql_slice_column {
	QSQL_SLICE_NUMBER,
	QSQL_SLICE_LOWER_KEY, /* text[] as text; NULL: from the start */
	QSQL_SLICE_UPPER_KEY, /* NULL: to the end */
	QSQL_SLICE_LAST_KEY,  /* its checkpoint; NULL: not begun */
	QSQL_SLICE_DONE,
};

/* The text of statement WHICH for the queue schema SCHEMA (unquoted, as configured). Caller
 * frees. */
char *queuesql(queuesql_t which, const char *schema) __attribute__((warn_unused_result));

#endif
