/*
 * Why a job is held back: one enum and one name table, the names the contract gives
 * (throttled_reason in backfill.jobs, backfill.batches and backfill.progress, the log, and
 * backfilld_throttled{reason} in the metrics). A new reason is one line of REASONS.
 */
#ifndef BACKFILLD_REASON_H
#define BACKFILLD_REASON_H

#define REASONS(X)                                  \
	X(REPLICATION_LAG, "replication_lag")       \
	X(STANDBY_MISSING, "standby_missing")       \
	X(LOGICAL_SLOT, "logical_slot")             \
	X(BLOCKED_SESSIONS, "blocked_sessions")     \
	X(APPLICATION_WRITES, "application_writes") \
	X(CPU_CONTENTION, "cpu_contention")         \
	X(LOCK_TIMEOUT, "lock_timeout")             \
	X(AUTOVACUUM, "autovacuum")                 \
	X(PAUSED_BY_SIGNAL, "paused_by_signal")     \
	X(RUN_WINDOW, "run_window")                 \
	X(HOLD_WHEN_SQL, "hold_when_sql")           \
	X(WAL_BUDGET, "wal_budget")                 \
	X(ARCHIVE_BACKLOG, "archive_backlog")       \
	X(VACUUM, "vacuum")

#define REASON_ENUM(id, name) REASON_##id,
typedef enum reason {
	REASON_NONE = 0, /* running freely */
	REASONS(REASON_ENUM) REASON_COUNT,
} reason_t;
#undef REASON_ENUM

/* Its name, e.g. "replication_lag"; NULL for REASON_NONE (and for a value out of range). */
const char *reason_name(reason_t reason);

/* The reason of NAME; REASON_NONE for NULL or a name it does not know. */
reason_t reason_parse(const char *name);

#endif
