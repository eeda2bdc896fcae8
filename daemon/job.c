/*
 * A job's life on this instance: its states and their one setter, its timer, its requests (on
 * the queue connection and on its session), holding on SIGUSR1, and giving it back. Its
 * definition and session are in job_session.c, its batches in job_batch.c and job_rows.c, dry
 * runs in job_dry.c and parallel slices in job_slices.c; job_internal.h holds what they share.
 */
#include "job.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "batchsql.h"
#include "config.h"
#include "daemon.h"
#include "job_internal.h"
#include "keys.h"
#include "log.h"
#include "metrics.h"
#include "pgconn.h"
#include "queue.h"
#include "queuesql.h"
#include "text.h"
#include "throttle.h"
#include "util.h"

#define JOB_RETRY_MS 1000 /* a request the queue connection could not take is sent again after this */

#define JOB_STATE_NAME(id, name) [JOB_##id] = name,
static const char *const job_state_names[JOB_STATE_COUNT] = {JOB_STATES(JOB_STATE_NAME)};
#undef JOB_STATE_NAME

#define TO(id) (1u << JOB_##id)
/* Where the walk goes after a decision (job_continue). */
#define WALK                                                                                             \
	(TO(WAITING_SAMPLER) | TO(HOLD_CHECK) | TO(BATCH) | TO(VACUUMING) | TO(PACING) | TO(THROTTLED) | \
	 TO(HELD))
/* Anywhere but FINISHED a job may lose its session, give the job back, or end. */
#define ANY_END (TO(CONNECTING) | TO(RELEASING) | TO(FINISHED))
/* The states each state may go to. */
static const unsigned job_transitions[JOB_STATE_COUNT] = {
	[JOB_LOADING] = TO(LOADING) | TO(SPLITTING) | TO(CHECKING) | ANY_END,
	[JOB_CONNECTING] = TO(LOADING) | TO(SPLITTING) | TO(CHECKING) | ANY_END,
	[JOB_SPLITTING] = ANY_END,
	[JOB_CHECKING] = WALK | ANY_END,
	[JOB_WAITING_SAMPLER] = WALK | ANY_END,
	[JOB_HOLD_CHECK] = WALK | ANY_END,
	[JOB_BATCH] = WALK | TO(BACKOFF) | TO(RECORDING) | ANY_END,
	[JOB_VACUUMING] = WALK | ANY_END,
	[JOB_PACING] = WALK | ANY_END,
	[JOB_BACKOFF] = TO(BATCH) | TO(VACUUMING) | TO(PACING) | TO(HELD) | ANY_END,
	[JOB_THROTTLED] = WALK | ANY_END,
	[JOB_HELD] = WALK | ANY_END,
	[JOB_RELEASING] = TO(RELEASING) | TO(FINISHED),
	[JOB_RECORDING] = TO(RECORDING) | TO(FINISHED),
	[JOB_FINISHED] = 0,
};
#undef TO

static const char *const job_step_names[] = {
	[STEP_BEGIN] = "starting the transaction",
	[STEP_OPEN] = "setting the timeouts",
	[STEP_BATCH] = "in the batch statement",
	[STEP_DRY_WAL] = "measuring a dry run; nothing was changed",
	[STEP_MISMATCHES] = "recording mismatches",
	[STEP_WAITERS] = "asking who waits on the batch",
	[STEP_CHECKPOINT] = "in the checkpoint",
	[STEP_END] = "at commit",
	[STEP_PREPARE] = "checking the job's SQL",
	[STEP_PRIVILEGES] = "checking privileges",
	[STEP_BOUNDS] = "reading the key's bounds",
	[STEP_SPLIT] = "cutting the key range into slices",
	[STEP_WINDOW] = "asking whether the run window is open",
	[STEP_HOLD_WHEN] = "evaluating hold_when_sql",
	[STEP_MAY_VACUUM] = "asking whether the role may vacuum the table",
	[STEP_VACUUM] = "vacuuming the table",
};
_Static_assert(sizeof(job_step_names) / sizeof(job_step_names[0]) == STEP_COUNT, "a name for each step");

static void job_timer_cb(evutil_socket_t fd, short what, void *arg);

const char *job_state_name(job_state_t state)
{
	return (unsigned)state < JOB_STATE_COUNT ? job_state_names[state] : "?";
}

/* The one way a job changes state: logged by name, and refused (with an error line) when the
 * transition is not one of job_transitions. */
void job_set_state(job_t *job, job_state_t state)
{
	if (job->state == state)
		return;
	if ((unsigned)state >= JOB_STATE_COUNT || !(job_transitions[job->state] & (1u << state))) {
		job_log(job, LOG_LEVEL_ERROR, "refusing to go from %s to %s", job_state_name(job->state),
			job_state_name(state));
		return;
	}
	job_log(job, LOG_LEVEL_DEBUG, "%s -> %s", job_state_name(job->state), job_state_name(state));
	job->state = state;
}

static job_t *job_new(int64_t id, const char *target, int slice)
{
	job_t *job = calloc(1, sizeof(*job));

	if (!job)
		abort();
	job->id = id;
	job->slice = slice;
	snprintf(job->id_text, sizeof(job->id_text), "%lld", (long long)job->id);
	snprintf(job->slice_text, sizeof(job->slice_text), "%d", slice);
	if (slice > 0)
		snprintf(job->context, sizeof(job->context), "job %lld (%s) slice %d", (long long)job->id,
			 target ? target : "?", slice);
	else
		snprintf(job->context, sizeof(job->context), "job %lld (%s)", (long long)job->id,
			 target ? target : "?");
	job->timer = evtimer_new(daemon_base(), job_timer_cb, job);
	if (!job->timer)
		abort();
	clock_gettime(CLOCK_MONOTONIC, &job->started);
	job->last_progress = job->started;
	job->state = JOB_LOADING;
	pace_init(&job->pace);
	return job;
}

job_t *job_start(const PGresult *res, int row)
{
	job_t *job = job_new(pgconn_int64(res, row, PQfnumber(res, "id"), 0),
			     pgconn_value(res, row, PQfnumber(res, "target")), 0);

	job_log(job, LOG_LEVEL_INFO, "claimed (%s rows scanned so far)",
		pgconn_value(res, row, PQfnumber(res, "rows_scanned")) ?: "0");
	job_load(job);
	return job;
}

job_t *job_start_slice(int64_t id, const char *target, int slice)
{
	job_t *job = job_new(id, target, slice);

	job_load(job);
	return job;
}

int64_t job_id(const job_t *job)
{
	return job->id;
}

bool job_is_live_sibling(const job_t *job, const job_t *other)
{
	return other != job && other->id == job->id && other->state != JOB_FINISHED;
}

bool job_is_finished(const job_t *job)
{
	return job->state == JOB_FINISHED;
}

bool job_can_free(const job_t *job)
{
	return job->state == JOB_FINISHED && job->queue_requests == 0;
}

/* A batch or the job's VACUUM: a statement in flight that holds locks on the target. */
static bool job_in_statement(const job_t *job)
{
	return (job->state == JOB_BATCH || job->state == JOB_VACUUMING) && job->conn;
}

int job_batch_backend_pid(const job_t *job)
{
	return job_in_statement(job) ? pgconn_backend_pid(job->conn) : 0;
}

bool job_cancel_batch(job_t *job)
{
	return job_in_statement(job) && pgconn_cancel(job->conn);
}

void job_free(job_t *job)
{
	if (!job)
		return;
	pgconn_free(job->conn);
	event_free(job->timer);
	job_clear_definition(job);
	keys_clear(&job->last_key);
	keys_clear(&job->upper);
	free(job->release_error);
	free(job->stop_error);
	free(job);
}

/* Tell the metrics registry where this job stands. */
void job_report(const job_t *job, bool running)
{
	char target[160];
	metrics_job_report_t r;

	snprintf(target, sizeof(target), "%s.%s", job->target_schema ? job->target_schema : "?",
		 job->target_table ? job->target_table : "?");
	r = (metrics_job_report_t){
		.id = job->id,
		.target = target,
		.rows_scanned = job->rows_scanned,
		.rows_changed = job->rows_changed,
		.batches = job->batches,
		.batch_size = job->throttle.batch_size,
		.sleep_ms = job->slept_ms,
		.throttled_reason =
			reason_name(job->state == JOB_HELD ? REASON_PAUSED_BY_SIGNAL : job->pace.reason),
		.running = running};
	metrics_job(&r);
}

/* ---- requests ---- */

/* A queue request of a job carries the job; its callback runs once, also when the queue breaks. */
typedef struct job_queue_call {
	job_t *job;
	pgconn_result_cb cb;
} job_queue_call_t;

static void job_queue_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_queue_call_t *call = arg;
	job_t *job = call->job;

	job->queue_requests--;
	if (job->state != JOB_FINISHED)
		call->cb(conn, res, job);
	else if (job->queue_requests == 0)
		daemon_wake(); /* it can be freed now */
	free(call);
}

bool job_queue_send(job_t *job, const pgconn_stmt_t *stmts, int n, pgconn_result_cb cb)
{
	job_queue_call_t *call = malloc(sizeof(*call));

	if (!call)
		abort();
	*call = (job_queue_call_t){job, cb};
	if (!queue_send(stmts, n, job_queue_cb, call)) {
		free(call);
		return false;
	}
	job->queue_requests++;
	return true;
}

bool job_session_result_ok(job_t *job, const pgconn_result_t *res, job_state_t expected)
{
	if (job->state != expected)
		return false; /* stale: the job went on without it (a lost lease, a stop) */
	if (res->broken) {
		if (expected == JOB_BATCH)
			job_log(job, LOG_LEVEL_WARNING,
				"connection lost during batch %lld: its outcome is read back once "
				"reconnected",
				(long long)job->batches + 1);
		job_session_lost(job);
		return false;
	}
	if (!res->ok && strcmp(res->sqlstate, "BFL01") == 0) {
		job_log(job, LOG_LEVEL_WARNING, "lease lost (%s)%s: the job is another instance's now",
			res->message, expected == JOB_BATCH ? ": batch rolled back" : "");
		job->lease_lost = true;
		job_finish(job);
		return false;
	}
	return true;
}

bool job_session_send(job_t *job, const pgconn_stmt_t *stmts, const job_step_t *steps, int n,
		      pgconn_result_cb cb)
{
	if (n > JOB_PIPELINE_MAX)
		abort();
	for (int s = 0; s < STEP_COUNT; s++)
		job->steps.at[s] = -1;
	for (int i = 0; i < n; i++) {
		job->steps.of[i] = steps[i];
		job->steps.at[steps[i]] = i;
	}
	job->steps.n = n;
	return job->conn && pgconn_send(job->conn, stmts, n, cb, job);
}

const PGresult *job_result(const job_t *job, const pgconn_result_t *res, job_step_t step)
{
	int at = job->steps.at[step];
	return at >= 0 && at < res->n ? res->results[at] : NULL;
}

const char *job_failed_step(const job_t *job, const pgconn_result_t *res)
{
	int i = res->failed_index;
	return i >= 0 && i < job->steps.n ? job_step_names[job->steps.of[i]] : "";
}

/* Arm the timer to try the current state's request again (a queue that was down, a free
 * connection). */
void job_retry_later(job_t *job)
{
	struct timeval tv = {JOB_RETRY_MS / 1000, (JOB_RETRY_MS % 1000) * 1000};
	evtimer_add(job->timer, &tv);
}

/* ---- timer ---- */

static void job_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	job_t *job = arg;
	(void)fd;
	(void)what;

	switch (job->state) {
	case JOB_WAITING_SAMPLER:
	case JOB_PACING:
	case JOB_THROTTLED:
		job_continue(job); /* decide again: lag may have cleared, the sampler may have looked */
		break;
	case JOB_BACKOFF:
		job_next_batch(job);
		break;
	case JOB_LOADING:
		job_load(job);
		break;
	case JOB_CHECKING: /* the check failed on a serialization failure or a lock */
		job_check(job);
		break;
	case JOB_CONNECTING: /* waiting for a free connection */
		job_use_session(job);
		break;
	case JOB_RELEASING:
		job_release(job, job->release_state, job->release_error);
		break;
	case JOB_RECORDING:
		job_dry_record(job);
		break;
	case JOB_SPLITTING:
	case JOB_HOLD_CHECK:
	case JOB_BATCH:
	case JOB_VACUUMING:
	case JOB_HELD:
	case JOB_FINISHED:
	case JOB_STATE_COUNT:
		job_log(job, LOG_LEVEL_WARNING, "unexpected timer while %s", job_state_name(job->state));
		break;
	}
}

/* Sleep MS in STATE (PACING, BACKOFF or WAITING_SAMPLER, THROTTLED): the timer goes on from it. */
void job_sleep(job_t *job, job_state_t state, int64_t ms)
{
	struct timeval tv = util_ms_to_tv(ms);

	job_set_state(job, state);
	evtimer_add(job->timer, &tv);
}

/* ---- holding (SIGUSR1) ---- */

static void job_reason_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	(void)conn;
	if (!res->ok && !res->broken)
		job_log(job, LOG_LEVEL_WARNING, "cannot record the throttle reason: %s %s", res->sqlstate,
			res->message);
}

static void job_error_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	(void)conn;
	if (!res->ok && !res->broken)
		job_log(job, LOG_LEVEL_WARNING, "cannot record last_error: %s %s", res->sqlstate,
			res->message);
}

bool job_write_error(job_t *job, const char *error, pgconn_result_cb cb)
{
	char *sql = queuesql(QSQL_SET_ERROR, daemon_config()->schema);
	const char *params[] = {daemon_name(), job->id_text, error};
	pgconn_stmt_t stmt = {sql, 3, params, NULL, NULL};
	bool sent = job_queue_send(job, &stmt, 1, cb ? cb : job_error_cb);

	if (!sent)
		job_log(job, LOG_LEVEL_DEBUG, "the queue is down: last_error not written");
	free(sql);
	return sent;
}

/* Write throttled_reason now (not only at the next checkpoint): a held job has none. */
void job_write_reason(job_t *job, reason_t reason)
{
	char *sql = queuesql(QSQL_SET_REASON, daemon_config()->schema), ids[32];
	const char *params[] = {daemon_name(), ids, reason_name(reason)};
	pgconn_stmt_t stmt = {sql, 3, params, NULL, NULL};

	snprintf(ids, sizeof(ids), "{%lld}", (long long)job->id);
	if (!job_queue_send(job, &stmt, 1, job_reason_cb))
		job_log(job, LOG_LEVEL_DEBUG, "the queue is down: throttle reason not written");
	free(sql);
}

void job_hold(job_t *job)
{
	job_set_state(job, JOB_HELD);
	job_report(job, true);
	if (!job->held_reason_set) {
		job_write_reason(job, REASON_PAUSED_BY_SIGNAL);
		job->held_reason_set = true;
		job_log(job, LOG_LEVEL_INFO, "held: paused by signal");
	}
}

void job_pause_changed(job_t *job)
{
	switch (job->state) {
	case JOB_WAITING_SAMPLER:
	case JOB_PACING:
	case JOB_BACKOFF:
	case JOB_THROTTLED:
		if (daemon_paused()) {
			evtimer_del(job->timer);
			job_hold(job);
		}
		break;
	case JOB_HELD:
		if (!daemon_paused()) {
			job_log(job, LOG_LEVEL_INFO, "resumed");
			job->held_reason_set = false;
			job_write_reason(job, REASON_NONE);
			job->slept_ms = 0;
			pace_init(&job->pace); /* a hold it was in is announced again */
			job->cond_reason = REASON_NONE;
			job_continue(job);
		}
		break;
	case JOB_LOADING:
	case JOB_CONNECTING:
	case JOB_SPLITTING:
	case JOB_CHECKING:
	case JOB_HOLD_CHECK:
	case JOB_BATCH:
	case JOB_VACUUMING:
	case JOB_RELEASING:
	case JOB_RECORDING:
	case JOB_FINISHED:
	case JOB_STATE_COUNT:
		break; /* acted on at the next boundary */
	}
}

/* ---- the end ---- */

static void job_release_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	const char *state;
	(void)conn;

	if (job->state != JOB_RELEASING)
		return;
	if (res->broken) {
		if (daemon_stopping()) {
			job_log(job, LOG_LEVEL_WARNING,
				"the queue connection broke at shutdown: the lease will"
				" expire by itself");
			job_finish(job);
		} else {
			job_retry_later(job);
		}
		return;
	}
	if (!res->ok) {
		if (strcmp(res->sqlstate, "55P03") == 0 && !daemon_stopping()) { /* the row is locked */
			job_log(job, LOG_LEVEL_NOTICE,
				"the job's row is locked by another session: giving it back"
				" again in %d ms",
				JOB_RETRY_MS);
			job_retry_later(job);
			return;
		}
		job_log(job, LOG_LEVEL_ERROR, "cannot give the job back: %s %s", res->sqlstate, res->message);
	} else {
		state = pgconn_value(res->results[0], 0, 0);
		if (!state)
			job_log(job, LOG_LEVEL_WARNING, "lease lost before the job could be given back");
		else
			job_log(job, LOG_LEVEL_INFO, "given back as %s", state);
	}
	job_finish(job);
}

/* STATE as one of our own literals: it may point into a result that is freed after its callback,
 * and a release is sent again after a reconnection. */
static const char *job_state_literal(const char *state)
{
	static const char *const states[] = {"pending", "paused", "done", "failed", "cancelled"};
	for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
		if (state && strcmp(state, states[i]) == 0)
			return states[i];
	return "pending";
}

static void job_stop_as(job_t *job, const char *state, const char *error);

void job_release(job_t *job, const char *state, const char *error)
{
	char *sql;
	const char *params[4];
	pgconn_stmt_t stmt = {NULL, 4, params, NULL, NULL};

	evtimer_del(job->timer);
	if (job->lease_lost) {
		job_finish(job);
		return;
	}
	state = job_state_literal(state);
	if (job->stop_state && strcmp(job->stop_state, "failed") == 0 && strcmp(state, "failed") != 0) {
		state = job->stop_state; /* a sibling slice failed: the job fails */
		error = job->stop_error;
	}
	/* A slice whose siblings still run leaves; the last one to stop gives the job back. */
	if (job->slice > 0) {
		job_t *sibling = daemon_live_sibling(job);
		if (sibling) {
			job_log(job, LOG_LEVEL_INFO, "stopped (%s): the job's other slices give it back",
				state);
			job->quiet = true;
			job_finish(job);
			job_stop_as(sibling, state, error);
			return;
		}
	}
	job_set_state(job, JOB_RELEASING);
	job->release_state = state;
	if (error != job->release_error) {
		free(job->release_error);
		job->release_error = util_strdup(error);
	}
	params[0] = job->id_text;
	params[1] = daemon_name();
	params[2] = job->release_state;
	params[3] = job->release_error;
	stmt.sql = sql = queuesql(QSQL_RELEASE, daemon_config()->schema);
	if (!job_queue_send(job, &stmt, 1, job_release_cb)) {
		if (job->stopping && daemon_stopping()) {
			job_log(job, LOG_LEVEL_WARNING,
				"the queue is down at shutdown: the lease will expire by"
				" itself");
			job_finish(job);
		} else {
			job_retry_later(job);
		}
	}
	free(sql);
}

/* The job cannot go on: say why once, and give it back as failed with that last_error (which
 * its submitter reads: no password of a connection string in it). */
void job_fail(job_t *job, const char *error)
{
	char masked[2048];

	text_mask_into(masked, sizeof(masked), error, false);
	job_log(job, LOG_LEVEL_ERROR, "failed: %s", masked);
	job_release(job, "failed", masked);
}

void job_finish(job_t *job)
{
	evtimer_del(job->timer);
	job_close_session(job);
	if (job->loaded && !job->quiet)
		job_report(job, false);
	job_set_state(job, JOB_FINISHED);
	daemon_job_finished(job);
}

/* No new batch: give the job back as STATE at the next boundary. "failed" wins over any other
 * state asked for; otherwise the first one stays. */
static void job_stop_as(job_t *job, const char *state, const char *error)
{
	if (!job->stop_state || (strcmp(state, "failed") == 0 && strcmp(job->stop_state, "failed") != 0)) {
		job->stop_state = state;
		free(job->stop_error);
		job->stop_error = util_strdup(error);
	}
	job->stopping = true;
	switch (job->state) {
	case JOB_WAITING_SAMPLER:
	case JOB_PACING:
	case JOB_BACKOFF:
	case JOB_THROTTLED:
	case JOB_HELD:
	case JOB_CONNECTING: /* the queue gives it back; the session is not needed for that */
		job_release(job, job->stop_state, job->stop_error);
		break;
	case JOB_LOADING:
	case JOB_SPLITTING:
	case JOB_CHECKING:
	case JOB_HOLD_CHECK:
	case JOB_BATCH:
	case JOB_VACUUMING:
	case JOB_RELEASING:
	case JOB_RECORDING:
	case JOB_FINISHED:
	case JOB_STATE_COUNT:
		break; /* acted on when the request in flight completes */
	}
}

void job_stop(job_t *job)
{
	job_stop_as(job, "pending", NULL);
}

void job_lease_seen(job_t *job, const char *state, const char *owner)
{
	bool ours = owner && strcmp(owner, daemon_name()) == 0;

	if (job->state == JOB_FINISHED || job->state == JOB_RELEASING || job->state == JOB_RECORDING)
		return;
	if (!ours) {
		job_log(job, LOG_LEVEL_WARNING, "lease lost: the job is %s now",
			owner ? owner : "not owned by anyone");
		job->lease_lost = true;
		if (job->state == JOB_VACUUMING) /* it has no fence: its end finishes the job */
			job_cancel_batch(job);
		else if (job->state != JOB_BATCH) /* a batch in flight fails its fence by itself */
			job_finish(job);
		return;
	}
	if (state && strcmp(state, "running") != 0 && job->state == JOB_VACUUMING && !job->stopping) {
		/* No batch follows it: it gives the job back once it ends. */
		job_log(job, LOG_LEVEL_INFO, "%s by a user during its VACUUM", state);
		job_stop_as(job, job_state_literal(state), NULL);
		return;
	}
	if (state && strcmp(state, "running") != 0 &&
	    (job->state == JOB_WAITING_SAMPLER || job->state == JOB_PACING || job->state == JOB_BACKOFF ||
	     job->state == JOB_THROTTLED || job->state == JOB_HELD)) {
		job_log(job, LOG_LEVEL_INFO, "%s by a user", state);
		job_release(job, state, NULL);
	}
}
