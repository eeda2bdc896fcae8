/*
 * A job's batches: the pre-flight check of its SQL, the pacing decision before each batch, the
 * batch pipeline and its outcome (progress, retries, cancellations). Rows that fail on their own
 * are in job_rows.c.
 */
#include "job_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "batchsql.h"
#include "config.h"
#include "daemon.h"
#include "keys.h"
#include "log.h"
#include "metrics.h"
#include "pace.h"
#include "pgconn.h"
#include "queuesql.h"
#include "reason.h"
#include "sampler.h"
#include "text.h"
#include "throttle.h"
#include "util.h"
#include "vacuum.h"
#include "walbudget.h"

#define JOB_SAMPLER_WAIT_MS 50 /* before its first look, the sampler is asked again this soon */
#define JOB_CHECK_RETRIES 20   /* the check's serialization failures and lock timeouts in a row */

static bool sqlstate_is_retryable(const char *sqlstate);

/* ---- checking the job's SQL before any data is touched ---- */

static void job_check_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	const PGresult *privileges;
	char err[1024];
	(void)conn;

	if (!job_session_result_ok(job, res, JOB_CHECKING))
		return;
	if (!res->ok && sqlstate_is_retryable(res->sqlstate) && job->check_retries < JOB_CHECK_RETRIES) {
		/* A serialization failure or a lock: the role's isolation level, another slice. */
		job->check_retries++;
		job_log(job, LOG_LEVEL_NOTICE, "%s %s (%s): checking again in 1 s", res->sqlstate,
			res->message, job_failed_step(job, res));
		job_retry_later(job);
		return;
	}
	if (!res->ok) {
		text_snprintf(err, sizeof(err), "%s: %s (%s as role %s, before touching any row)",
			      res->sqlstate, res->message, job_failed_step(job, res), job->run_as);
		job_fail(job, err);
		return;
	}
	privileges = job_result(job, res, STEP_PRIVILEGES);
	if (strcmp(pgconn_value(privileges, 0, 0) ?: "f", "t") != 0 ||
	    strcmp(pgconn_value(privileges, 0, 1) ?: "f", "t") != 0) {
		text_snprintf(
			err, sizeof(err),
			"42501: permission denied: role %s may not %s table %s.%s (checked before touching "
			"any row)",
			job->run_as, job->how->writes ? "read and update" : "read", job->target_schema,
			job->target_table);
		job_fail(job, err);
		return;
	}
	job_vacuum_checked(job, job_result(job, res, STEP_MAY_VACUUM));
	job_continue(job);
}

/*
 * In a fresh session: prepare the job's statements, which parses and analyses its SQL as its role
 * (syntax errors and unknown names show up here, before any row is touched), check the role's
 * privileges on the target (and whether it may vacuum it), and, for a numeric key, record its
 * bounds for percent.
 */
void job_check(job_t *job)
{
	char oid[16];
	const char *check_params[] = {oid}, *bounds_params[] = {job->id_text, daemon_name()};
	batch_spec_t spec = job_spec(job);
	char *sql[5] = {job->how->build(&spec, true), job->how->build(&spec, false),
			batch_build_peek(&spec, true), batch_build_peek(&spec, false), NULL};
	static const char *const names[] = {JOB_PREPARED_FIRST, JOB_PREPARED_NEXT, JOB_PREPARED_PEEK_FIRST,
					    JOB_PREPARED_PEEK_NEXT};
	Oid user_types[2] = {job->key_oids[0], job->key_oids[0]};
	pgconn_stmt_t stmts[10];
	job_step_t steps[10];
	int n = 0;

	steps[n] = STEP_PREPARE; /* a session checked before (never so far) prepares them again */
	stmts[n++] = (pgconn_stmt_t){"DEALLOCATE ALL", 0, NULL, NULL, NULL};
	for (int i = 0; i < 4; i++) {
		steps[n] = STEP_PREPARE;
		stmts[n++] = (pgconn_stmt_t){sql[i], 0, NULL, names[i], NULL};
	}
	if (job->how->sql_param) { /* its own SQL, with $1 and $2 typed as the key */
		steps[n] = STEP_PREPARE;
		stmts[n++] = (pgconn_stmt_t){job->kind_sql, 2, NULL, JOB_PREPARED_USER, user_types};
	}
	snprintf(oid, sizeof(oid), "%u", job->target_oid);
	steps[n] = STEP_PRIVILEGES;
	stmts[n++] = (pgconn_stmt_t){batch_privileges_sql(job->how->writes), 1, check_params, NULL, NULL};
	if (job_vacuums(job)) {
		steps[n] = STEP_MAY_VACUUM;
		stmts[n++] = (pgconn_stmt_t){vacuum_permitted_sql, 1, check_params, NULL, NULL};
	}
	if (job->key_numeric && job->parallel <= 1) { /* (percent by position: one slice only) */
		sql[4] = batch_build_bounds(&spec);
		steps[n] = STEP_BOUNDS;
		stmts[n++] = (pgconn_stmt_t){sql[4], 2, bounds_params, NULL, NULL};
	}
	job_set_state(job, JOB_CHECKING);
	if (!job_session_send(job, stmts, steps, n, job_check_cb))
		job_session_lost(job);
	for (int i = 0; i < 5; i++)
		free(sql[i]);
}

/* ---- the decision before each batch ---- */

/* The progress line, every log.progress_interval_ms; DONE: the last one, at once. */
static void job_log_progress(job_t *job, bool done)
{
	struct timespec now;
	int64_t interval = daemon_config()->log_progress_interval_ms;
	double secs = util_elapsed_s(&job->started);
	double rate = secs > 0 ? (double)(job->rows_scanned - job->rows_at_start) / secs : 0;
	char percent[16] = "?", eta[32] = "?";

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!done) {
		double since = (double)(now.tv_sec - job->last_progress.tv_sec) +
			       (double)(now.tv_nsec - job->last_progress.tv_nsec) / 1e9;
		if (interval <= 0 || since * 1000 < (double)interval)
			return;
	}
	job->last_progress = now;
	if (job->rows_estimate > 0) {
		double p = 100.0 * (double)job->rows_scanned / (double)job->rows_estimate;
		/* As backfill.progress: below 100 until the job is done. */
		snprintf(percent, sizeof(percent), "%.1f%%", done ? 100 : p > 99.9 ? 99.9 : p);
		if (rate > 0) {
			double left = (double)(job->rows_estimate - job->rows_scanned) / rate;
			snprintf(eta, sizeof(eta), "%.0fs", left > 0 ? left : 0);
		}
	}
	job_log(job, LOG_LEVEL_INFO,
		"%s  %lld rows scanned, %lld changed, %.0f rows/s, batch %lld, sleep %lld ms, ETA %s%s%s",
		percent, (long long)job->rows_scanned, (long long)job->rows_changed, rate,
		(long long)job->throttle.batch_size, (long long)job->slept_ms, eta,
		job->pace.reason ? ", throttled: " : "",
		job->pace.reason ? reason_name(job->pace.reason) : "");
}

/* Log a change of throttle reason once, not once per batch. */
void job_note_reason(job_t *job, reason_t reason, const char *detail)
{
	bool with = detail && detail[0];

	if (reason == job->logged_reason)
		return;
	if (reason != REASON_NONE)
		job_log(job, LOG_LEVEL_NOTICE, "throttled: %s%s%s%s", reason_name(reason), with ? " (" : "",
			with ? detail : "", with ? ")" : "");
	else
		job_log(job, LOG_LEVEL_NOTICE, "running freely again (was %s)",
			reason_name(job->logged_reason));
	job->logged_reason = reason;
}

/* ---- the WAL budgets ---- */

#define JOB_WAL_BUDGETS 2

/* The WAL budgets a batch of JOB draws from: the instance's and its job's own (NULL: none). */
static void job_wal_budgets(const job_t *job, walbudget_t *b[JOB_WAL_BUDGETS])
{
	b[0] = daemon_wal_budget();
	b[1] = daemon_job_wal_budget(job->id, job->max_wal_bytes_per_s);
}

/* The batch about to be sent takes from the WAL budgets what it is expected to write: what its
 * ticket took (pace.h), made up to its final size (a lag headroom may have cut it further; a
 * retry, or a bisection's batch, has no ticket). What a batch that fails took stays taken. */
static void job_wal_reserve(job_t *job)
{
	walbudget_t *b[JOB_WAL_BUDGETS];
	double now = util_now_ms();
	double ticket = job->pace.wal_ticketed ? job->pace.wal_ticket : 0;

	job_wal_budgets(job, b);
	job->wal_reserved = job->throttle.wal_per_row * THROTTLE_WAL_MARGIN * (double)job->batch_limit;
	for (int i = 0; i < JOB_WAL_BUDGETS; i++)
		if (b[i])
			walbudget_spend(b[i], job->wal_reserved - ticket, now);
}

/* The batch in flight ended having written WAL_BYTES (dry runs too: their WAL is written all the
 * same): the budgets get back what it took beyond that, or take what it wrote beyond what it took
 * (a debt the next waits pay back); -1: unknown, what it took stays taken. */
void job_wal_settle(job_t *job, int64_t wal_bytes)
{
	walbudget_t *b[JOB_WAL_BUDGETS];
	double now = util_now_ms();

	job_wal_budgets(job, b);
	for (int i = 0; i < JOB_WAL_BUDGETS && wal_bytes >= 0; i++)
		if (b[i])
			walbudget_spend(b[i], (double)wal_bytes - job->wal_reserved, now);
	job->wal_reserved = 0;
}

/* Which budgets hold the job back, for the log. */
static void job_wal_detail(const job_t *job, char *detail, size_t len)
{
	int64_t instance = daemon_config()->throttle.max_wal_bytes_per_s;
	char mine[64] = "";

	if (job->max_wal_bytes_per_s > 0)
		snprintf(mine, sizeof(mine), "%sthe job's max_wal_bytes_per_s %lld", instance > 0 ? ", " : "",
			 (long long)job->max_wal_bytes_per_s);
	if (instance > 0)
		snprintf(detail, len, "throttle.max_wal_bytes_per_s %lld for all jobs%s", (long long)instance,
			 mine);
	else
		snprintf(detail, len, "%s", mine);
}

/* What the pacing policy sees now: the sampler's view, autovacuum on the table, the WAL budgets. */
static void job_pace_input(job_t *job, const throttle_settings_t *s, const sampler_view_t *view,
			   pace_input_t *in)
{
	walbudget_t *b[JOB_WAL_BUDGETS];

	job_wal_budgets(job, b);
	*in = (pace_input_t){.view = *view,
			     .runners = daemon_njobs(),
			     .autovacuum = view->hold == REASON_NONE && s->pause_during_autovacuum &&
					   sampler_autovacuum(job->target_oid),
			     .now_ms = util_now_ms(),
			     .wal = b[0],
			     .job_wal = b[1]};
	job->input = pace_seen(in);
}

/* After a committed batch, or after a step of a sleep or a hold: decide what comes next. */
void job_continue(job_t *job)
{
	throttle_settings_t s;
	sampler_view_t view;
	pace_input_t in;
	pace_decision_t d;

	if (job->lease_lost) { /* seen while a batch was in flight that had no fence (a dry run) */
		job_finish(job);
		return;
	}
	if (job->stopping) {
		job_release(job, job->stop_state, job->stop_error);
		return;
	}
	if (daemon_paused()) {
		job_hold(job);
		return;
	}
	job_settings(job, &s);
	sampler_view(&view);
	if (view.warming) { /* the sampler has not looked yet: it will soon */
		job_sleep(job, JOB_WAITING_SAMPLER, JOB_SAMPLER_WAIT_MS);
		return;
	}
	job_pace_input(job, &s, &view, &in);
	d = pace_decide(&job->pace, &job->throttle, &s, &in);
	if (d.current == REASON_WAL_BUDGET)
		job_wal_detail(job, d.detail, sizeof(d.detail));
	/* (While its window or hold_when_sql holds it, that is the reason the log has.) */
	job_note_reason(job, d.current != REASON_NONE ? d.current : job->cond_reason, d.detail);
	job_report(job, true);
	switch (d.action) {
	case PACE_HOLD:
		if (d.hold_begins) {
			job_log(job, LOG_LEVEL_NOTICE, "held: %s%s%s%s", reason_name(d.hold_reason),
				d.detail[0] ? " (" : "", d.detail, d.detail[0] ? ")" : "");
			job_write_reason(job, d.hold_reason);
		}
		job_sleep(job, JOB_THROTTLED, d.wait_ms);
		return;
	case PACE_SLEEP:
		job_sleep(job, JOB_PACING, d.wait_ms);
		return;
	case PACE_RUN:
		job->slept_ms = d.slept_ms;
		job->max_rows = d.max_rows;
		if (job->run_window || job->hold_when_sql || job->cond_error_set)
			job_hold_check(job); /* then the batch, unless its window or hold says no */
		else
			job_next_batch(job);
		return;
	}
}

/* ---- while a batch runs ---- */

void job_cancel_if_blocking(job_t *job, int64_t sessions, int64_t waited_ms, const char *locks,
			    const char *what)
{
	throttle_settings_t s;

	job_settings(job, &s);
	if (waited_ms < s.max_blocked_ms || job->cancel_reason != REASON_NONE)
		return;
	job_log(job, LOG_LEVEL_NOTICE, "%lld session(s) waited %lld ms on %s: cancelling it",
		(long long)sessions, (long long)waited_ms, locks);
	job->cancel_reason = REASON_BLOCKED_SESSIONS;
	if (!job_cancel_batch(job))
		job_log(job, LOG_LEVEL_WARNING, "cannot cancel %s", what);
}

void job_on_blocked(job_t *job, int64_t sessions, int64_t waited_ms)
{
	int pid = job_batch_backend_pid(job);

	if (job->state == JOB_VACUUMING) {
		job_vacuum_blocked(job, sessions, waited_ms);
		return;
	}
	if (job->state != JOB_BATCH || !pid)
		return;
	if (sessions > job->batch_blocked)
		job->batch_blocked = sessions;
	if (waited_ms > job->batch_waited_ms)
		job->batch_waited_ms = waited_ms;
	job_cancel_if_blocking(job, sessions, waited_ms, "the batch's locks", "the batch");
}

/* ---- a batch's outcome ---- */

static void job_sibling_contended(job_t *sibling, void *waited_ms)
{
	throttle_settings_t s;

	job_settings(sibling, &s);
	if (throttle_after_contention(&sibling->throttle, &s, *(int64_t *)waited_ms))
		sibling->pace.contended = true;
}

/*
 * A batch committed: what the application wrote to the target since the previous batch began,
 * from the counters read at the start of both (and the job's own writes in the previous one),
 * for the throttle. Not for the slices of a parallel job: each would count its siblings' writes
 * as the application's.
 */
static void job_count_app_writes(job_t *job, const pgconn_result_t *res, const throttle_settings_t *s)
{
	const PGresult *open = job_result(job, res, STEP_OPEN), *w = job_result(job, res, STEP_WAITERS);
	int64_t total = pgconn_int64(open, 0, PQfnumber(open, "writes"), -1);
	int64_t own = pgconn_int64(open, 0, PQfnumber(open, "own"), -1);
	int64_t rows = pgconn_int64(open, 0, PQfnumber(open, "table_rows"), 0);
	int64_t own_end = pgconn_int64(w, 0, PQfnumber(w, "own"), -1);
	int pid = pgconn_backend_pid(job->conn);

	if (total < 0 || own < 0 || own_end < own || !pid) {
		job->writes_pid = 0;
		return;
	}
	if (own_end > own)
		job->writes_target = true;
	if (job->writes_pid == pid) {
		double ms = (double)(job->batch_started.tv_sec - job->writes_at.tv_sec) * 1000.0 +
			    (double)(job->batch_started.tv_nsec - job->writes_at.tv_nsec) / 1e6;
		throttle_after_app(
			&job->throttle, s, (double)(total - job->writes_total - job->writes_own), ms,
			job->writes_target ? (double)(rows > job->rows_estimate ? rows : job->rows_estimate)
					   : 0);
	}
	job->writes_pid = pid;
	job->writes_total = total;
	job->writes_own = own_end - own;
	job->writes_at = job->batch_started;
}

/* What the throttle learns from a committed batch of SCANNED keys that took DURATION_MS. */
static void job_learn(job_t *job, const pgconn_result_t *res, int64_t scanned, double duration_ms)
{
	const PGresult *cp = job_result(job, res, STEP_CHECKPOINT), *w = job_result(job, res, STEP_WAITERS);
	throttle_settings_t s;

	job_settings(job, &s);
	if (job->throttle.app_watch && w)
		job_count_app_writes(job, res, &s);
	throttle_after_batch(&job->throttle, &s, scanned, duration_ms);
	throttle_after_wal(&job->throttle, scanned, pgconn_int64(cp, 0, QSQL_CHECKPOINT_WAL_BYTES, -1));
	throttle_after_waiters(&job->throttle, &s, scanned, duration_ms, job->batch_blocked);
	/* (A sibling slice may have found contention already while this batch ran.) */
	job->pace.contended =
		throttle_after_contention(&job->throttle, &s, job->batch_waited_ms) || job->pace.contended;
	/* One throttle for a job's slices: a wait on one slice's locks shrinks them all. */
	if (job->pace.contended && job->slice > 0)
		daemon_each_sibling(job, job_sibling_contended, &job->batch_waited_ms);
}

/* The job's state as the checkpoint returned it. True when the walk goes on here. */
static bool job_goes_on(job_t *job, const PGresult *cp)
{
	const char *state = pgconn_value(cp, 0, QSQL_CHECKPOINT_STATE);
	double secs;

	if (job->slice > 0 && state && strcmp(state, "done") != 0) {
		/* A slice: the job goes on, or its other slices must stop too before it is given back. */
		if (strcmp(state, "running") != 0) {
			job_log(job, LOG_LEVEL_INFO, "%s by a user after batch %lld", state,
				(long long)job->batches);
			job_release(job, state, NULL);
			return false;
		}
		if (strcmp(pgconn_value(cp, 0, QSQL_CHECKPOINT_SLICE_DONE) ?: "f", "t") != 0)
			return true;
		job_log(job, LOG_LEVEL_INFO, "slice done; the job's other slices go on");
		if (job->stopping) {
			job_release(job, job->stop_state, job->stop_error);
			return false;
		}
		job->quiet = true;
		job_finish(job);
		return false;
	}
	if (state && strcmp(state, "running") == 0)
		return true;
	if (state && strcmp(state, "done") == 0) {
		secs = util_elapsed_s(&job->started);
		job_log_progress(job, true);
		job_log(job, LOG_LEVEL_INFO,
			"done: %lld rows scanned, %lld changed in %lld batches; %.1f s on this instance "
			"(%.0f "
			"rows/s)",
			(long long)job->rows_scanned, (long long)job->rows_changed, (long long)job->batches,
			secs, secs > 0 ? (double)(job->rows_scanned - job->rows_at_start) / secs : 0.0);
	} else {
		job_log(job, LOG_LEVEL_INFO, "%s by a user after batch %lld", state ? state : "changed",
			(long long)job->batches);
	}
	job_finish(job); /* the checkpoint already gave the job back */
	return false;
}

static void job_batch_done(job_t *job, const pgconn_result_t *res)
{
	const PGresult *b = job_result(job, res, STEP_BATCH), *cp = job_result(job, res, STEP_CHECKPOINT);
	const PGresult *w = job_result(job, res, STEP_WAITERS);
	const char *last_key = pgconn_value(b, 0, BATCH_LAST_KEY);
	int64_t scanned = pgconn_int64(b, 0, BATCH_SCANNED, 0),
		changed = pgconn_int64(b, 0, BATCH_CHANGED, 0);
	double duration_ms = util_elapsed_s(&job->batch_started) * 1000.0;

	sampler_wal_position(pgconn_value(cp, 0, QSQL_CHECKPOINT_WAL_LSN));
	job_wal_settle(job, pgconn_int64(cp, 0, QSQL_CHECKPOINT_WAL_BYTES, -1));
	clock_gettime(CLOCK_MONOTONIC, &job->batch_ended);
	if (w) { /* who waited on it till the end, beside what the sampler saw */
		int64_t sessions = pgconn_int64(w, 0, PQfnumber(w, "waiters"), 0);
		int64_t waited_ms = pgconn_int64(w, 0, PQfnumber(w, "longest_ms"), 0);
		if (sessions > job->batch_blocked)
			job->batch_blocked = sessions;
		if (waited_ms > job->batch_waited_ms)
			job->batch_waited_ms = waited_ms;
	}
	if (last_key) {
		keys_clear(&job->last_key);
		if (!keys_decode(last_key, &job->last_key)) {
			/* Committed, but we cannot walk on from it: stop; a restart reads it again. */
			job_log(job, LOG_LEVEL_ERROR, "cannot decode the key %s", last_key);
			job_release(job, "failed", "cannot decode the checkpoint key");
			return;
		}
	}
	job->rows_scanned = pgconn_int64(cp, 0, QSQL_CHECKPOINT_ROWS_SCANNED, job->rows_scanned);
	job->rows_changed = pgconn_int64(cp, 0, QSQL_CHECKPOINT_ROWS_CHANGED, job->rows_changed);
	job->batches = pgconn_int64(cp, 0, QSQL_CHECKPOINT_BATCHES, job->batches);
	job->rows_estimate = pgconn_int64(cp, 0, QSQL_CHECKPOINT_ROWS_ESTIMATE, job->rows_estimate);
	job_log(job, LOG_LEVEL_DEBUG, "batch %lld: %lld rows scanned, %lld changed in %.1f ms, up to %s",
		(long long)job->batches, (long long)scanned, (long long)changed, duration_ms,
		last_key ? last_key : "(end)");
	if (!job_goes_on(job, cp))
		return;
	job_window_seen(job, pgconn_value(cp, 0, QSQL_CHECKPOINT_RUN_WINDOW));
	if (job->bisect_left > 0)
		job_bisect_after_batch(job, scanned);
	else
		job_learn(job, res, scanned, duration_ms);
	metrics_batch_duration(duration_ms / 1000.0);
	job_log_progress(job, false);
	job_continue(job);
}

static bool sqlstate_is_retryable(const char *sqlstate)
{
	static const char *const retryable[] = {"55P03", "40P01", "40001", "57014"};
	for (size_t i = 0; i < sizeof(retryable) / sizeof(retryable[0]); i++)
		if (strcmp(sqlstate, retryable[i]) == 0)
			return true;
	return false;
}

/* A batch we cancelled because it blocked other sessions too long: back off and try again. */
static void job_blocked_backoff(job_t *job)
{
	throttle_settings_t s;

	job_settings(job, &s);
	/* The sessions it blocked waited all the same: they count against its size. */
	throttle_after_waiters(&job->throttle, &s, job->throttle.batch_size,
			       util_elapsed_s(&job->batch_started) * 1000.0, job->batch_blocked);
	throttle_after_retry(&job->throttle, &s, (double)(random() % 1000) / 1000.0);
	job->pace.reason = job->cancel_reason;
	job_note_reason(job, job->pace.reason, "a batch blocked other sessions too long");
	job->cancel_reason = REASON_NONE;
	job_sleep(job, JOB_BACKOFF, job->throttle.sleep_ms);
}

/* A lock timeout, deadlock, serialization failure or cancellation: retry, up to max_retries. */
static void job_retry(job_t *job, const pgconn_result_t *res)
{
	throttle_settings_t s;
	char err[1024];

	job_settings(job, &s);
	if (job->throttle.retries >= s.max_retries) {
		text_snprintf(err, sizeof(err),
			      "%s: %s (%s; the batch failed so %lld times in a row: max_retries)",
			      res->sqlstate, res->message, job_failed_step(job, res),
			      (long long)job->throttle.retries + 1);
		job_fail(job, err);
		return;
	}
	throttle_after_retry(&job->throttle, &s, (double)(random() % 1000) / 1000.0);
	job->pace.reason = REASON_LOCK_TIMEOUT;
	job_note_reason(job, job->pace.reason, res->message);
	log_msg(job->throttle.retries == 1 ? LOG_LEVEL_NOTICE : LOG_LEVEL_DEBUG, job->context,
		"batch rolled back (%s %s); retry %d in %lld ms with %lld rows", res->sqlstate, res->message,
		job->throttle.retries, (long long)job->throttle.sleep_ms,
		(long long)job->throttle.batch_size);
	if (job->stopping)
		job_release(job, job->stop_state, job->stop_error);
	else
		job_sleep(job, JOB_BACKOFF, job->throttle.sleep_ms);
}

void job_batch_failed(job_t *job, const pgconn_result_t *res)
{
	char err[1024];
	bool cancelled = strcmp(res->sqlstate, "57014") == 0;

	job->writes_pid = 0; /* its own writes, rolled back, are counted all the same: unknown */
	if (!job->stopping && job_bisect(job, res))
		return;
	if (job->cancel_reason != REASON_NONE && !job->stopping && cancelled) {
		job_blocked_backoff(job);
		return;
	}
	if (job->stopping && cancelled) {
		job_log(job, LOG_LEVEL_NOTICE, "batch cancelled for shutdown and rolled back");
		job_release(job, job->stop_state, job->stop_error);
		return;
	}
	if (sqlstate_is_retryable(res->sqlstate)) {
		job_retry(job, res);
		return;
	}
	text_snprintf(err, sizeof(err), "%s: %s (%s)", res->sqlstate, res->message,
		      job_failed_step(job, res));
	job_fail(job, err);
}

static void job_batch_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	(void)conn;

	if (!job_session_result_ok(job, res, JOB_BATCH))
		return;
	if (res->ok)
		job_batch_done(job, res);
	else
		job_batch_failed(job, res);
}

/* ---- sending a batch ---- */

/* The texts of a batch pipeline's parameters: they live until it is sent (libpq copies them). */
typedef struct batch_texts {
	char stmt_timeout[24], lock_timeout[24], limit[24], lease[24], slept[24], size_now[24];
	char sleep_now[24], lag_bytes[24], lag_ms[24], blocked[24], oid[16];
	const char *open[3], *checkpoint[12], *record[2], *waiters[1];
	const char **batch; /* the last key done, the size, and the kind's own SQL */
	int nbatch;
	char *open_sql, *mismatches_sql, *waiters_sql, *checkpoint_sql, *wal_sql;
} batch_texts_t;

static void job_batch_texts(job_t *job, const throttle_settings_t *s, batch_texts_t *t)
{
	const char *schema = daemon_config()->schema;
	bool first = job->last_key.n == 0;

	t->open_sql = queuesql(QSQL_BATCH_OPEN, schema);
	t->mismatches_sql = queuesql(QSQL_MISMATCHES, schema);
	t->waiters_sql = queuesql(QSQL_WAITERS, schema);
	t->checkpoint_sql = queuesql(QSQL_CHECKPOINT, schema);
	t->wal_sql = queuesql(QSQL_BATCH_WAL, schema);
	snprintf(t->stmt_timeout, sizeof(t->stmt_timeout), "%lld", (long long)s->statement_timeout_ms);
	snprintf(t->lock_timeout, sizeof(t->lock_timeout), "%lld", (long long)s->lock_timeout_ms);
	snprintf(t->limit, sizeof(t->limit), "%lld", (long long)job->batch_limit);
	snprintf(t->lease, sizeof(t->lease), "%lld", (long long)daemon_config()->lease_ms);
	snprintf(t->slept, sizeof(t->slept), "%lld", (long long)job->slept_ms);
	snprintf(t->size_now, sizeof(t->size_now), "%lld", (long long)job->throttle.batch_size);
	snprintf(t->sleep_now, sizeof(t->sleep_now), "%lld", (long long)job->throttle.sleep_ms);
	snprintf(t->oid, sizeof(t->oid), "%u", job->target_oid);
	snprintf(t->lag_bytes, sizeof(t->lag_bytes), "%lld", (long long)job->input.lag_bytes);
	snprintf(t->lag_ms, sizeof(t->lag_ms), "%lld", (long long)job->input.lag_ms);
	/* Sessions that waited on the previous attempt, committed or cancelled: this batch's row
	 * records them (its own waits are seen only while it runs). */
	snprintf(t->blocked, sizeof(t->blocked), "%lld", (long long)job->batch_blocked);

	t->nbatch = (first ? 0 : job->nkeys) + 1 + (job->how->sql_param ? 1 : 0);
	t->batch = util_calloc((size_t)t->nbatch, sizeof(char *));
	for (int i = 0; i < job->last_key.n; i++)
		t->batch[i] = job->last_key.values[i];
	t->batch[first ? 0 : job->nkeys] = t->limit;
	if (job->how->sql_param)
		t->batch[t->nbatch - 1] = job->kind_sql;

	t->open[0] = t->stmt_timeout;
	t->open[1] = t->lock_timeout;
	t->open[2] = t->oid;
	t->waiters[0] = t->oid;
	t->record[0] = job->id_text;
	t->record[1] = daemon_name();
	t->checkpoint[0] = job->id_text;
	t->checkpoint[1] = daemon_name();
	t->checkpoint[2] = t->lease;
	t->checkpoint[3] = t->limit;
	t->checkpoint[4] = t->slept;
	t->checkpoint[5] = t->size_now;
	t->checkpoint[6] = t->sleep_now;
	t->checkpoint[7] = job->input.lag_known ? t->lag_bytes : NULL;
	t->checkpoint[8] = job->input.lag_known ? t->lag_ms : NULL;
	t->checkpoint[9] = t->blocked;
	t->checkpoint[10] = job->pace.reason != REASON_NONE ? reason_name(job->pace.reason) : NULL;
	t->checkpoint[11] = job->slice > 0 ? job->slice_text : NULL;
}

static void job_batch_texts_free(batch_texts_t *t)
{
	free(t->batch);
	free(t->open_sql);
	free(t->mismatches_sql);
	free(t->waiters_sql);
	free(t->checkpoint_sql);
	free(t->wal_sql);
}

/* The pipeline of one batch: its transaction, the batch, what it records, the checkpoint. */
static int job_batch_pipeline(const job_t *job, const batch_texts_t *t, pgconn_stmt_t *stmts,
			      job_step_t *steps)
{
	int n = 0;

	steps[n] = STEP_BEGIN;
	stmts[n++] = (pgconn_stmt_t){"BEGIN", 0, NULL, NULL, NULL};
	steps[n] = STEP_OPEN;
	stmts[n++] = (pgconn_stmt_t){t->open_sql, 3, t->open, NULL, NULL};
	steps[n] = STEP_BATCH;
	stmts[n++] = (pgconn_stmt_t){NULL, t->nbatch, t->batch,
				     job->last_key.n == 0 ? JOB_PREPARED_FIRST : JOB_PREPARED_NEXT, NULL};
	if (job->dry_run) {
		/* WAL is written even by a transaction that rolls back: measure it first. */
		steps[n] = STEP_DRY_WAL;
		stmts[n++] = (pgconn_stmt_t){t->wal_sql, 0, NULL, NULL, NULL};
		steps[n] = STEP_END;
		stmts[n++] = (pgconn_stmt_t){"ROLLBACK", 0, NULL, NULL, NULL};
		return n;
	}
	if (job->how->records_mismatches) {
		steps[n] = STEP_MISMATCHES;
		stmts[n++] = (pgconn_stmt_t){t->mismatches_sql, 2, t->record, NULL, NULL};
	}
	if (job->how->writes) { /* (a batch that writes nothing locks no rows) */
		steps[n] = STEP_WAITERS;
		stmts[n++] = (pgconn_stmt_t){t->waiters_sql, 1, t->waiters, NULL, NULL};
	}
	steps[n] = STEP_CHECKPOINT;
	stmts[n++] = (pgconn_stmt_t){t->checkpoint_sql, 12, t->checkpoint, NULL, NULL};
	steps[n] = STEP_END;
	stmts[n++] = (pgconn_stmt_t){"COMMIT", 0, NULL, NULL, NULL};
	return n;
}

void job_next_batch(job_t *job)
{
	throttle_settings_t s;
	batch_texts_t t;
	pgconn_stmt_t stmts[8];
	job_step_t steps[8];
	int n;

	if (job->stopping) {
		job_release(job, job->stop_state, job->stop_error);
		return;
	}
	if (daemon_paused()) {
		job_hold(job);
		return;
	}
	if (job_vacuum_due(job)) {
		job_vacuum(job); /* then it decides again */
		return;
	}
	/* What the history records as this batch's sleep: all the time since the previous one
	 * ended, sleeps and holds alike. */
	if (job->batch_ended.tv_sec)
		job->slept_ms = (int64_t)(util_elapsed_s(&job->batch_ended) * 1000.0);
	job_settings(job, &s);
	job->batch_limit =
		job->bisect_left > 0 && job->bisect_size > 0 ? job->bisect_size : job->throttle.batch_size;
	if (job->max_rows > 0 && job->batch_limit > job->max_rows) /* lag headroom, WAL budget */
		job->batch_limit = job->max_rows;
	job->batch_limit = job_vacuum_batch_limit(job, job->batch_limit); /* not past a VACUUM due */
	job->max_rows = 0;
	job_wal_reserve(job);
	job_batch_texts(job, &s, &t);
	n = job_batch_pipeline(job, &t, stmts, steps);
	job->batch_blocked = 0;
	job->batch_waited_ms = 0;

	job_set_state(job, JOB_BATCH);
	job->cancel_reason = REASON_NONE;
	pace_batch_sent(&job->pace); /* this batch records the wait */
	clock_gettime(CLOCK_MONOTONIC, &job->batch_started);
	if (job->dry_run && job->dry_started.tv_sec == 0)
		job->dry_started = job->batch_started;
	if (!job_session_send(job, stmts, steps, n, job->dry_run ? job_dry_cb : job_batch_cb))
		job_session_lost(job); /* the loss is being handled; the reload resumes it */
	else
		sampler_batch_started();
	job_batch_texts_free(&t);
}
