/*
 * The parts of a job shared by job.c (its life), job_batch.c (batches and their failures),
 * job_dry.c (dry runs) and job_slices.c (parallel slices). Private: include/job.h is the interface.
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
#include "keys.h"
#include "log.h"
#include "pgconn.h"
#include "throttle.h"

typedef enum job_state {
	JOB_LOADING,	/* reading its row and key metadata over the queue connection */
	JOB_CONNECTING, /* waiting for its session, logged in as its run_as role (first, or after a loss) */
	JOB_SPLITTING,	/* a parallel job's first runner cuts the key range into slices */
	JOB_CHECKING,	/* preparing its statements as its role, before touching any row */
	JOB_BATCH,	/* a batch pipeline in flight */
	JOB_SLEEPING,	/* between batches, or backing off before a retry */
	JOB_THROTTLED,	/* held by the throttle (lag, a missing standby, autovacuum): decide again soon */
	JOB_HELD,	/* paused by signal */
	JOB_RELEASING,	/* giving the job back over the queue connection */
	JOB_FINISHED,	/* nothing more to do; the daemon frees it */
} job_state_t;

/* The named steps of a pipeline on the job's session; a request holds each at most once. */
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
	STEP_COUNT,
} job_step_t;

#define JOB_PIPELINE_MAX 16

/* Where each step stands in the request in flight. */
typedef struct job_steps {
	int at[STEP_COUNT];		/* the statement's index, -1 when the step is not there */
	job_step_t of[JOB_PIPELINE_MAX]; /* the step of each statement */
	int n;
} job_steps_t;

#define JOB_NOVERRIDES 12 /* the job's throttle overrides: job_overrides in job.c */

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
	pgconn_t *conn; /* the job's session, logged in as run_as; made once run_as is known */
	bool session_closed;	    /* conn is closed for good (the job finished) */
	bool waited_for_connection; /* it said so once */
	struct event *timer;
	int queue_requests; /* requests on the queue connection whose callback has not run */

	/* The definition, from the queue. */
	bool loaded; /* loaded once: the walk on this instance has begun */
	bool fresh;  /* loaded since the session was last lost: the checkpoint is current */
	job_kind_t kind;
	char *target_schema, *target_table;
	char *set_sql, *where_sql, *batch_sql, *mismatch_sql, *run_as;
	bool dry_run; /* measure in transactions that roll back, estimate, change nothing */
	uint32_t target_oid;
	int nkeys;
	char **key_names, **key_types; /* key_types: each column's type as qualified SQL */
	Oid *key_oids;
	bool key_numeric;    /* the first key column is a number: percent can be told by position */
	char *key_op_schema; /* where the key types' comparison operators live */
	bool has_override[JOB_NOVERRIDES];
	int64_t override[JOB_NOVERRIDES];

	/* Progress, as committed. */
	jobkey_t last_key; /* n == 0 before the first batch */
	int64_t rows_scanned, rows_changed, batches, rows_estimate, failed_rows;

	/* Bisecting a batch that failed on its data. */
	int64_t bisect_left; /* keys still to walk in small steps; 0 when not bisecting */
	int64_t bisect_size; /* the size of the next step */
	char skip_sqlstate[8];
	char skip_message[512];
	job_steps_t steps; /* of the request in flight on the session */

	/* A dry run, measured in memory: nothing of it is committed. */
	struct timespec dry_started;
	int64_t dry_scanned, dry_wal, dry_batches;
	bool dry_recording; /* its estimates are being written */
	char dry_seconds[24], dry_wal_bytes[24]; /* the estimates */

	/* The walk on this instance. */
	throttle_state_t throttle;
	int64_t batch_limit;	   /* the size of the batch in flight */
	int64_t max_rows;	   /* the most keys the next batch may walk (lag headroom; 0: no limit) */
	int64_t slept_ms;	   /* the pause that preceded it */
	const char *reason;	   /* throttled_reason for the next checkpoint (NULL: running freely) */
	const char *logged_reason; /* the reason last logged: a change is logged once */
	const char *cancel_reason; /* why we asked the server to cancel the batch in flight */
	struct timespec batch_started;
	struct timespec sleep_started; /* when the throttle's current sleep began */
	bool sleep_decided;	       /* sleeping because the throttle said so (not a retry backoff) */
	bool awaiting_sampler;	       /* JOB_THROTTLED only until the sampler's first look, not held */
	const char *wait_reason;       /* why it was held or slept since the last batch; NULL: it was not */
	struct timespec batch_ended;   /* when the last batch committed: its successor records the wait */
	int64_t batch_blocked;	       /* most sessions seen blocked by the batch in flight */
	int64_t batch_waited_ms;       /* the longest wait on its locks the sampler saw */
	bool contended;		       /* the last batch made others wait: its successor says so */
	throttle_input_t input;	       /* what the throttle saw before the batch in flight */
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

/* The names of the statements prepared in a job's session. */
#define JOB_PREPARED_FIRST "backfilld_first"
#define JOB_PREPARED_NEXT "backfilld_next"
#define JOB_PREPARED_PEEK_FIRST "backfilld_peek_first"
#define JOB_PREPARED_PEEK_NEXT "backfilld_peek_next"
#define JOB_PREPARED_USER "backfilld_user" /* a statement job's own SQL, checked by preparing it */

/* job.c: the job's life */
void job_set_state(job_t *job, job_state_t state);
const char *job_state_name(job_state_t state);
void job_settings(const job_t *job, throttle_settings_t *s);
void job_report(const job_t *job, bool running);
void job_sleep(job_t *job, int64_t ms);
batch_spec_t job_spec(const job_t *job);
void job_write_reason(job_t *job, const char *reason);
void job_hold(job_t *job);
void job_release(job_t *job, const char *state, const char *error);
void job_fail(job_t *job, const char *error);
void job_finish(job_t *job);
void job_session_lost(job_t *job);
/* Send STMTS on the queue connection for JOB; false (CB not called) while the queue is down. */
bool job_queue_send(job_t *job, const pgconn_stmt_t *stmts, int n, pgconn_result_cb cb);
/* Send the pipeline STMTS (with their STEPS) on the job's session, as the request in flight. */
bool job_session_send(job_t *job, const pgconn_stmt_t *stmts, const job_step_t *steps, int n,
		      pgconn_result_cb cb);
/* The result of step STEP of the request in flight, NULL when it is not there. */
const PGresult *job_result(const job_t *job, const pgconn_result_t *res, job_step_t step);
/* What the failed statement of RES was doing, for an error message. */
const char *job_failed_step(const job_t *job, const pgconn_result_t *res);

/* job_batch.c: the pre-flight check, the walk from batch to batch, and its failures */
void job_check(job_t *job);
void job_continue(job_t *job);
void job_next_batch(job_t *job);
void job_batch_failed(job_t *job, const pgconn_result_t *res);

/* job_dry.c: the callback of a dry run's batch */
void job_dry_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg);
/* job_dry.c: write a finished dry run's estimates and end the job */
void job_dry_record(job_t *job);

/* job_slices.c: a parallel job's slices */
bool job_load_slice(job_t *job, const PGresult *slices, char *err, size_t errlen)
	__attribute__((warn_unused_result));
void job_start_slices(job_t *job, const PGresult *slices);
void job_split(job_t *job);

#endif
