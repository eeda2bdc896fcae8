/*
 * The parts of a job shared by its files: job.c (its life and its one state setter),
 * job_session.c (its definition and its session), job_batch.c (the check and the batches),
 * job_rows.c (rows that fail on their own), job_hold.c (its run window and hold_when_sql),
 * job_vacuum.c (its VACUUMs of the target), job_dry.c (dry runs) and job_slices.c (parallel
 * slices). Private: include/job.h is the interface.
 */
#ifndef BACKFILLD_JOB_INTERNAL_H
#define BACKFILLD_JOB_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <libpq-fe.h>

#include "batchsql.h"
#include "job.h"
#include "jobkind.h"
#include "keys.h"
#include "log.h"
#include "pace.h"
#include "pgconn.h"
#include "reason.h"
#include "throttle.h"

/* The states of a job runner; job_set_state() is the only way between them. */
#define JOB_STATES(X)                                                                                   \
	X(LOADING, "loading")	      /* reading its row and key metadata over the queue connection */  \
	X(CONNECTING, "connecting")   /* waiting for its session (first, or after a loss) */            \
	X(SPLITTING, "splitting")     /* a parallel job's first runner cuts the key range */            \
	X(CHECKING, "checking")	      /* preparing its statements as its role, before any row */        \
	X(WAITING_SAMPLER, "waiting") /* the sampler has not looked yet: its first look comes soon */   \
	X(HOLD_CHECK, "holdcheck")    /* asking its session whether its window is open, its hold off */ \
	X(BATCH, "batch")	      /* a batch (or a failing row's skip) in flight */                 \
	X(VACUUMING, "vacuuming")     /* its VACUUM of the target, between two batches */               \
	X(PACING, "pacing")	      /* a step of the throttle's sleep: decide again after it */       \
	X(BACKOFF, "backoff")	      /* backing off before a retried batch */                          \
	X(THROTTLED, "throttled")     /* held by the throttle: decide again after a sample interval */  \
	X(HELD, "held")		      /* paused by signal */                                            \
	X(RELEASING, "releasing")     /* giving the job back over the queue connection */               \
	X(RECORDING, "recording")     /* writing a dry run's estimates, then done */                    \
	X(FINISHED, "finished")	      /* nothing more to do; the daemon frees it */

#define JOB_STATE_ENUM(id, name) JOB_##id,
typedef enum job_state {
	JOB_STATES(JOB_STATE_ENUM) JOB_STATE_COUNT
} job_state_t;
#undef JOB_STATE_ENUM

/* The named steps of a pipeline on the job's session. */
typedef enum job_step {
	STEP_BEGIN,
	STEP_OPEN,	 /* timeouts, WAL position, the target's write counters */
	STEP_BATCH,	 /* the batch statement (or, skipping a row, the peek at its key) */
	STEP_DRY_WAL,	 /* a dry run's WAL, before it rolls back */
	STEP_MISMATCHES, /* a verify batch's findings */
	STEP_WAITERS,	 /* who waits on the batch's locks */
	STEP_CHECKPOINT, /* the checkpoint (or the failing row's record) */
	STEP_END,	 /* COMMIT, or a dry run's ROLLBACK */
	STEP_PREPARE,	 /* the check: preparing the job's statements */
	STEP_PRIVILEGES, /* the check: the role's privileges on the target */
	STEP_BOUNDS,	 /* the check: a numeric key's bounds, for percent */
	STEP_SPLIT,	 /* cutting a parallel job into slices */
	STEP_WINDOW,	 /* whether the run window is open */
	STEP_HOLD_WHEN,	 /* the job's hold_when_sql */
	STEP_MAY_VACUUM, /* the check: whether the role may VACUUM the target */
	STEP_VACUUM,	 /* the VACUUM of the target */
	STEP_COUNT,
} job_step_t;

#define JOB_PIPELINE_MAX 16

/* The request in flight on the session: each statement's step, and where each step stands (the
 * last statement of that step). */
typedef struct job_steps {
	int at[STEP_COUNT];
	job_step_t of[JOB_PIPELINE_MAX];
	int n;
} job_steps_t;

#define JOB_NOVERRIDES 12 /* the job's throttle overrides: job_overrides in job_session.c */

/* The names of the statements prepared in a job's session. */
#define JOB_PREPARED_FIRST "backfilld_first"
#define JOB_PREPARED_NEXT "backfilld_next"
#define JOB_PREPARED_PEEK_FIRST "backfilld_peek_first"
#define JOB_PREPARED_PEEK_NEXT "backfilld_peek_next"
#define JOB_PREPARED_USER "backfilld_user" /* a statement job's own SQL, checked by preparing it */

struct job {
	int64_t id;
	char id_text[24];
	/* A parallel job runs as one runner per slice, each a job_t of its own with the same id: slice
	 * 1..N. Slice 0 is the whole job, or the runner that cuts a parallel job and starts the others. */
	int slice;
	char slice_text[16];
	int64_t parallel;
	jobkey_t upper;	   /* a slice's last key; n == 0: to the end */
	char context[160]; /* log prefix: "job 12 (public.users)" */
	job_state_t state;
	pgconn_t *conn;		    /* its session, logged in as run_as; made once run_as is known */
	bool session_closed;	    /* conn is closed for good (the job finished) */
	bool waited_for_connection; /* it said so once */
	int check_retries;	    /* the check failed on a serialization failure or a lock: tried again */
	struct event *timer;
	int queue_requests; /* requests on the queue connection whose callback has not run */

	/* The definition, from the queue. */
	bool loaded; /* loaded once: the walk on this instance has begun */
	bool fresh;  /* loaded since the session was last lost: the checkpoint is current */
	job_kind_t kind;
	const job_kind_info_t *how; /* its kind's row */
	char *target_schema, *target_table;
	char *set_sql, *where_sql, *batch_sql, *mismatch_sql, *run_as;
	char *kind_sql;	     /* its kind's own SQL, the column how->sql_column names */
	char *run_window;    /* 'HH:MM-HH:MM [zone]': it runs batches only inside; NULL: always */
	char *hold_when_sql; /* true holds it (evaluated as run_as before each batch); NULL: none */
	bool dry_run;	     /* measure in transactions that roll back, estimate, change nothing */
	uint32_t target_oid;
	int nkeys;
	char **key_names, **key_types; /* key_types: each column's type as qualified SQL */
	Oid *key_oids;
	bool key_numeric;    /* the first key column is a number: its bounds are recorded */
	char *key_op_schema; /* where the key types' comparison operators live */
	bool has_override[JOB_NOVERRIDES];
	int64_t override[JOB_NOVERRIDES];
	int64_t max_wal_bytes_per_s; /* its own WAL budget (0: none), within the instance's */

	/* Progress, as committed. */
	jobkey_t last_key; /* n == 0 before the first batch */
	int64_t rows_scanned, rows_changed, batches, rows_estimate, failed_rows;

	/* Bisecting a batch that failed on its data (job_rows.c). */
	int64_t bisect_left; /* keys of the chunk known to hold a failing row; 0: not bisecting */
	int64_t bisect_size; /* the size of the next try */
	char skip_sqlstate[8];
	char skip_message[512];
	job_steps_t steps; /* of the request in flight on the session */

	/* A dry run, measured in memory: nothing of it is committed. */
	struct timespec dry_started;
	int64_t dry_scanned, dry_wal, dry_batches;
	char dry_seconds[24], dry_wal_bytes[24]; /* the estimates */

	/* The walk on this instance. */
	throttle_state_t throttle;
	pace_state_t pace;	/* its reason, and how it has waited since its last batch */
	int64_t batch_limit;	/* the size of the batch in flight */
	int64_t max_rows;	/* the most keys the next batch may walk (lag, WAL budget; 0: no limit) */
	double wal_reserved;	/* the WAL the batch in flight took from the WAL budgets */
	int64_t slept_ms;	/* the pause that preceded it */
	reason_t logged_reason; /* the reason last logged: a change is logged once */
	reason_t cancel_reason; /* why we asked the server to cancel the batch in flight */
	reason_t cond_reason;	/* the hold of its window or hold_when_sql in force (announced) */
	bool cond_error_set;	/* a failing hold's error is in last_error (or on its way) */
	bool cond_error_missed; /* its write was refused or skipped: the next check writes it again */
	bool cond_clearing;	/* its clear is in flight; the next batch waits for the answer */
	/* Its VACUUMs of the target (job_vacuum.c). */
	int64_t vacuum_changed_at;	/* rows_changed when its last VACUUM began (or its walk here) */
	bool vacuum_denied;		/* its role may not vacuum the target (seen by the check) */
	bool vacuum_denied_said;	/* that is in the log and last_error */
	bool vacuum_off;		/* a VACUUM failed unexpectedly: none more on this instance */
	struct timespec vacuum_started; /* the VACUUM in flight */
	struct timespec batch_started;
	struct timespec batch_ended; /* when the last batch committed: its successor records the wait */
	int64_t batch_blocked;	     /* most sessions seen blocked by the batch in flight */
	int64_t batch_waited_ms;     /* the longest wait on its locks the sampler saw */
	throttle_input_t input;	     /* what the throttle saw before the batch in flight */
	/* The application's writes to the target, between the starts of two batches
	 * (<schema>._batch_open; throttle_after_app). */
	int writes_pid;		   /* the backend of the last reading; 0: none to count from */
	int64_t writes_total;	   /* the target's counters it saw: reported plus its own pending */
	int64_t writes_own;	   /* the job's own writes in the batch that followed */
	struct timespec writes_at; /* when that batch started */
	bool writes_target;	   /* its batches have written rows of the target */
	struct timespec started, last_progress;
	int64_t rows_at_start;

	/* Modes. */
	bool stopping;		   /* no new batch: give the job back (stop_state) at the next boundary */
	const char *stop_state;	   /* "pending" at shutdown; a sibling slice's state when it stopped */
	char *stop_error;	   /* with "failed" */
	bool quiet;		   /* a runner that leaves while its job goes on: not "stopped" in metrics */
	bool lease_lost;	   /* another instance owns it: write nothing more */
	bool held_reason_set;	   /* paused_by_signal is written in the queue */
	const char *release_state; /* what RELEASING asks for */
	char *release_error;
};

#define job_log(job, level, ...) log_msg(level, (job)->context, __VA_ARGS__)

/* job.c: the job's life */
void job_set_state(job_t *job, job_state_t state);
const char *job_state_name(job_state_t state);
void job_settings(const job_t *job, throttle_settings_t *s);
void job_report(const job_t *job, bool running);
void job_sleep(job_t *job, job_state_t state, int64_t ms);
void job_retry_later(job_t *job);
void job_write_reason(job_t *job, reason_t reason);
/* Write ERROR (NULL: none) into the job row's last_error, the job going on. CB (NULL: a warning
 * if it fails) has the answer: true when written or already so, false when another session kept
 * the row locked. False when the queue is down: nothing sent. */
bool job_write_error(job_t *job, const char *error, pgconn_result_cb cb);
void job_hold(job_t *job);
void job_release(job_t *job, const char *state, const char *error);
void job_fail(job_t *job, const char *error);
void job_finish(job_t *job);
/* Send STMTS on the queue connection for JOB; false (CB not called) while the queue is down. */
bool job_queue_send(job_t *job, const pgconn_stmt_t *stmts, int n, pgconn_result_cb cb);
/* Send the pipeline STMTS (with their STEPS) on the job's session, as the request in flight. */
bool job_session_send(job_t *job, const pgconn_stmt_t *stmts, const job_step_t *steps, int n,
		      pgconn_result_cb cb);
/* The result of step STEP of the request in flight, NULL when it is not there. */
const PGresult *job_result(const job_t *job, const pgconn_result_t *res, job_step_t step);
/* What the failed statement of RES was doing, for an error message. */
const char *job_failed_step(const job_t *job, const pgconn_result_t *res);
/* The shared checks a session result opens with: false when it is stale (the job has left
 * EXPECTED) or the session broke (then the job waits for it again). */
bool job_session_result_ok(job_t *job, const pgconn_result_t *res, job_state_t expected);

/* job_session.c: the definition and the session */
void job_load(job_t *job);
void job_use_session(job_t *job);
void job_session_lost(job_t *job);
void job_close_session(job_t *job);
batch_spec_t job_spec(const job_t *job);
void job_clear_definition(job_t *job);

/* job_batch.c: the check, the walk from batch to batch, its failures */
void job_check(job_t *job);
void job_continue(job_t *job);
void job_next_batch(job_t *job);
void job_batch_failed(job_t *job, const pgconn_result_t *res);
void job_note_reason(job_t *job, reason_t reason, const char *detail);
void job_wal_settle(job_t *job, int64_t wal_bytes);

/* job_hold.c: its run window and hold_when_sql, checked before each batch */
void job_hold_check(job_t *job);
/* The job's row has RUN_WINDOW now (NULL: none): the next batches follow it. */
void job_window_seen(job_t *job, const char *run_window);

/* job_vacuum.c: its VACUUMs of the target between batches */
/* Whether the job vacuums its target at all: its kind updates it in place; not a dry run. */
bool job_vacuums(const job_t *job);
/* The check's answer (STEP_MAY_VACUUM's result, NULL when not asked): whether its role may. */
void job_vacuum_checked(job_t *job, const PGresult *permitted);
/* Before a batch: whether a VACUUM comes first (job_vacuum then, which goes on to job_continue). */
bool job_vacuum_due(job_t *job);
/* VACUUM the target now, or sleep a little after the last commit first (vacuum_wait_ms). */
/* The keys the next batch walks, at most BATCH, so that the next VACUUM is not late and the
 * round ends in no short batch (vacuum_batch_keys; not below min_batch_size). */
int64_t job_vacuum_batch_limit(const job_t *job, int64_t batch);
void job_vacuum(job_t *job);
/* SESSIONS wait on the VACUUM's lock, the longest for WAITED_MS: past max_blocked_ms it is
 * cancelled (and skipped this time). */
void job_vacuum_blocked(job_t *job, int64_t sessions, int64_t waited_ms);
/* Cancel the statement in flight (batch or VACUUM) once a session has waited max_blocked_ms on
 * LOCKS (logged), unless a cancel is already under way; WHAT names it if the cancel fails. */
void job_cancel_if_blocking(job_t *job, int64_t sessions, int64_t waited_ms, const char *locks,
			    const char *what);

/* job_rows.c: rows that fail on their own */
bool job_bisect(job_t *job, const pgconn_result_t *res);
void job_bisect_after_batch(job_t *job, int64_t scanned);

/* job_dry.c: a dry run's batch, and its estimates */
void job_dry_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg);
void job_dry_record(job_t *job);

/* job_slices.c: a parallel job's slices */
bool job_load_slice(job_t *job, const PGresult *slices, char *err, size_t errlen)
	__attribute__((warn_unused_result));
void job_start_slices(job_t *job, const PGresult *slices);
void job_split(job_t *job);

#endif
