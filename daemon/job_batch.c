/*
 * A job's batches: the pre-flight check of its SQL, the throttle's decision before each batch,
 * the batch pipeline and its outcome (retries, cancellations), and the rows that fail on their
 * own (bisected, recorded and skipped).
 */
#include "job_internal.h"

#include <assert.h>
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
#include "pgconn.h"
#include "sampler.h"
#include "text.h"
#include "throttle.h"
#include "util.h"

/* ---- rows that fail on their own ---- */

/* Errors one row's data can cause (as opposed to the job's SQL or the server's state). */
static bool sqlstate_is_row_error(const char *sqlstate)
{
	static const char *const classes[] = {"22", "23", "P0", "2F", "38", "39", "44", "54"};
	for (size_t i = 0; i < sizeof(classes) / sizeof(classes[0]); i++)
		if (strncmp(sqlstate, classes[i], 2) == 0)
			return true;
	return false;
}

static void job_skip_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	char err[1024];
	(void)conn;

	if (job->state != JOB_BATCH)
		return;
	if (res->broken) {
		job_session_lost(job);
		return;
	}
	if (!res->ok) {
		if (strcmp(res->sqlstate, "BFL01") == 0) {
			job_log(job, LOG_LEVEL_WARNING, "lease lost while skipping a row");
			job->lease_lost = true;
			job_finish(job);
			return;
		}
		text_snprintf(err, sizeof(err), "%s: %s (skipping a failing row)", res->sqlstate,
			      res->message);
		job_fail(job, err);
		return;
	}
	job->failed_rows = pgconn_int64(job_result(job, res, STEP_CHECKPOINT), 0, 0, job->failed_rows);
	job->rows_scanned++;
	keys_clear(&job->last_key);
	if (!keys_decode(pgconn_value(job_result(job, res, STEP_BATCH), 0, 0), &job->last_key)) {
		job_fail(job, "cannot decode the key of a skipped row");
		return;
	}
	job_log(job, LOG_LEVEL_NOTICE, "skipped row %s: %s %s (%lld failed rows so far)",
		pgconn_value(job_result(job, res, STEP_BATCH), 0, 0), job->skip_sqlstate, job->skip_message,
		(long long)job->failed_rows);
	job->bisect_left = 0; /* the chunk's failing row is isolated: back to the controller's size */
	job_continue(job);
}

/* One row fails alone: record it in failed_rows and move the checkpoint past it. */
static void job_skip_row(job_t *job, const char *sqlstate, const char *message)
{
	char lease[24], oid[16], stmt_timeout[24], lock_timeout[24];
	const char *open_params[3], *skip_params[6];
	char *open_sql = batch_build_open(daemon_config()->schema);
	char *skip_sql = batch_build_skip(daemon_config()->schema);
	throttle_settings_t s;
	bool first = job->last_key.n == 0;
	pgconn_stmt_t stmts[] = {
		{"BEGIN", 0, NULL, NULL, NULL},
		{open_sql, 3, open_params, NULL, NULL},
		{NULL, first ? 0 : job->nkeys, (const char *const *)job->last_key.values,
		 first ? JOB_PREPARED_PEEK_FIRST : JOB_PREPARED_PEEK_NEXT, NULL},
		{skip_sql, 6, skip_params, NULL, NULL},
		{"COMMIT", 0, NULL, NULL, NULL},
	};
	static const job_step_t steps[] = {STEP_BEGIN, STEP_OPEN, STEP_BATCH, STEP_CHECKPOINT, STEP_END};

	job_settings(job, &s);
	snprintf(job->skip_sqlstate, sizeof(job->skip_sqlstate), "%s", sqlstate);
	text_snprintf(job->skip_message, sizeof(job->skip_message), "%s", message);
	snprintf(stmt_timeout, sizeof(stmt_timeout), "%lld", (long long)s.statement_timeout_ms);
	snprintf(lock_timeout, sizeof(lock_timeout), "%lld", (long long)s.lock_timeout_ms);
	snprintf(oid, sizeof(oid), "%u", job->target_oid);
	snprintf(lease, sizeof(lease), "%lld", (long long)daemon_config()->lease_ms);
	open_params[0] = stmt_timeout;
	open_params[1] = lock_timeout;
	open_params[2] = oid;
	skip_params[0] = job->id_text;
	skip_params[1] = daemon_name();
	skip_params[2] = lease;
	skip_params[3] = job->skip_sqlstate;
	skip_params[4] = job->skip_message;
	skip_params[5] = job->slice > 0 ? job->slice_text : NULL;
	job_set_state(job, JOB_BATCH);
	if (!job_session_send(job, stmts, steps, 5, job_skip_cb))
		job_session_lost(job);
	free(open_sql);
	free(skip_sql);
}

/*
 * The batch failed on its data: bisect it. The chunk known to hold a failing row (bisect_left
 * keys from the checkpoint) is tried by halves: a half that fails becomes the chunk, a half that
 * commits leaves the rest as the chunk. A single failing row is recorded and skipped (up to
 * max_failed_rows) and the walk goes back to the controller's size, so a bad row costs about
 * twice log2(batch size) small transactions, however many good rows surround it.
 * Returns false when the error is not one a row can cause.
 */
static bool job_bisect(job_t *job, const pgconn_result_t *res)
{
	throttle_settings_t s;
	char err[1024];

	if (res->failed_index < 0 || res->failed_index >= job->steps.n ||
	    job->steps.of[res->failed_index] != STEP_BATCH || !sqlstate_is_row_error(res->sqlstate) ||
	    job->dry_run)
		return false;
	job_settings(job, &s);
	if (job->batch_limit > 1) {
		if (job->bisect_left <= 0)
			job_log(job, LOG_LEVEL_NOTICE,
				"a batch of %lld rows failed on its data (%s %s): bisecting",
				(long long)job->batch_limit, res->sqlstate, res->message);
		job->bisect_left = job->batch_limit;
		job->bisect_size = job->batch_limit / 2;
		job_next_batch(job);
		return true;
	}
	if (job->failed_rows + 1 > s.max_failed_rows) {
		text_snprintf(
			err, sizeof(err),
			"%s: %s (a row failed on its own, and %lld already did: max_failed_rows is %lld;"
			" see the failed_rows table)",
			res->sqlstate, res->message, (long long)job->failed_rows,
			(long long)s.max_failed_rows);
		job_fail(job, err);
		return true;
	}
	job_skip_row(job, res->sqlstate, res->message);
	return true;
}

/* ---- checking the job's SQL before any data is touched ---- */

static void job_check_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	const PGresult *privileges;
	char err[1024];
	(void)conn;

	if (job->state != JOB_CHECKING)
		return;
	if (res->broken) {
		job_session_lost(job);
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
			job->run_as, job->kind == JOB_KIND_UPDATE ? "read and update" : "read",
			job->target_schema, job->target_table);
		job_fail(job, err);
		return;
	}
	job_continue(job);
}

/*
 * In a fresh session: prepare the job's statements, which parses and analyses its SQL as its role
 * (syntax errors and unknown names show up here, before any row is touched), check the role's
 * privileges on the target, and, for a numeric key, record its bounds for percent.
 */
void job_check(job_t *job)
{
	char oid[16];
	const char *check_params[] = {oid}, *bounds_params[] = {job->id_text, daemon_name()};
	batch_spec_t spec = job_spec(job);
	char *sql[5] = {batch_build_batch(&spec, true), batch_build_batch(&spec, false),
			batch_build_peek(&spec, true), batch_build_peek(&spec, false), NULL};
	static const char *const names[] = {JOB_PREPARED_FIRST, JOB_PREPARED_NEXT, JOB_PREPARED_PEEK_FIRST,
					    JOB_PREPARED_PEEK_NEXT};
	Oid user_types[2] = {job->key_oids[0], job->key_oids[0]};
	pgconn_stmt_t stmts[9];
	job_step_t steps[9];
	int n = 0;

	steps[n] = STEP_PREPARE; /* a session checked before (never so far) prepares them again */
	stmts[n++] = (pgconn_stmt_t){"DEALLOCATE ALL", 0, NULL, NULL, NULL};
	for (int i = 0; i < 4; i++) {
		steps[n] = STEP_PREPARE;
		stmts[n++] = (pgconn_stmt_t){sql[i], 0, NULL, names[i], NULL};
	}
	if (job->kind == JOB_KIND_STATEMENT) { /* its own SQL, with $1 and $2 typed as the key */
		steps[n] = STEP_PREPARE;
		stmts[n++] = (pgconn_stmt_t){job->batch_sql, 2, NULL, JOB_PREPARED_USER, user_types};
	}
	snprintf(oid, sizeof(oid), "%u", job->target_oid);
	steps[n] = STEP_PRIVILEGES;
	stmts[n++] = (pgconn_stmt_t){batch_privileges_sql(job->kind), 1, check_params, NULL, NULL};
	if (job->key_numeric) {
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

/* ---- batches ---- */

static bool sqlstate_is_retryable(const char *sqlstate)
{
	static const char *const retryable[] = {"55P03", "40P01", "40001", "57014"};
	for (size_t i = 0; i < sizeof(retryable) / sizeof(retryable[0]); i++)
		if (strcmp(sqlstate, retryable[i]) == 0)
			return true;
	return false;
}

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
		job->reason ? ", throttled: " : "", job->reason ? job->reason : "");
}

/* Log a change of throttle reason once, not once per batch. */
static void job_note_reason(job_t *job, const char *reason, const char *detail)
{
	if (reason == job->logged_reason ||
	    (reason && job->logged_reason && strcmp(reason, job->logged_reason) == 0))
		return;
	if (reason)
		job_log(job, LOG_LEVEL_NOTICE, "throttled: %s%s%s%s", reason, detail && detail[0] ? " (" : "",
			detail && detail[0] ? detail : "", detail && detail[0] ? ")" : "");
	else
		job_log(job, LOG_LEVEL_NOTICE, "running freely again (was %s)", job->logged_reason);
	job->logged_reason = reason;
}

/* After a committed batch, or while held by the throttle: ask it what comes next. */
void job_continue(job_t *job)
{
	throttle_settings_t s;
	sampler_view_t view;
	throttle_decision_t d;
	bool held;

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
	if (view.warming) { /* the sampler has not looked yet: wait a moment for it */
		struct timeval tv = {0, 50 * 1000};
		job_set_state(job, JOB_THROTTLED);
		job->awaiting_sampler = true;
		evtimer_add(job->timer, &tv);
		return;
	}
	/* Already in a hold (announced and written to the row), not just waiting for the sampler. */
	held = job->state == JOB_THROTTLED && !job->awaiting_sampler;
	job->awaiting_sampler = false;
	job->input = (throttle_input_t){.lag_known = view.known,
					.lag_bytes = view.lag_bytes,
					.lag_ms = view.lag_ms,
					.hold = view.hold,
					.cpu_stretch = view.cpu_stretch,
					.server_idle = view.known && view.others_active == 0,
					.runners = daemon_njobs()};
	if (!job->input.hold && s.pause_during_autovacuum && sampler_autovacuum(job->target_oid)) {
		job->input.hold = "autovacuum";
		snprintf(view.detail, sizeof(view.detail), "autovacuum is processing the table");
	}
	d = throttle_decide(&job->throttle, &s, &job->input);
	job->max_rows = d.max_rows;
	/* A retry's reason stays on the batch that retries; otherwise the throttle's applies. */
	if (d.reason || job->throttle.retries == 0)
		job->reason = d.reason;
	if (job->contended && (!job->reason || strcmp(job->reason, "application_writes") == 0))
		job->reason = "blocked_sessions"; /* the size was halved for it */
	job->contended = false;
	if (job->reason && strcmp(job->reason, "cpu_contention") == 0)
		snprintf(view.detail, sizeof(view.detail),
			 "other sessions' CPU work takes %.2fx as long while batches run: sleeping %lld ms "
			 "after a %.0f ms batch",
			 job->input.cpu_stretch, (long long)d.sleep_ms, job->throttle.last_ms);
	job_note_reason(job, job->reason, view.detail);
	job_report(job, true);
	/* The batch after a hold or a throttle sleep says why it waited, also when the lag that
	 * caused it cleared before the sleep was over, or when another sleep (a duty cycle's)
	 * follows. */
	if (d.hold || (d.reason && d.sleep_ms > 0)) {
		/* A duty cycle's blocked_sessions does not hide a lag wait it follows. */
		if (!job->wait_reason || strcmp(job->wait_reason, "blocked_sessions") == 0)
			job->wait_reason = d.reason;
	}
	if (job->wait_reason)
		job->reason = job->wait_reason;
	if (d.hold) {
		struct timeval tv = util_ms_to_tv(s.sample_interval_ms);
		if (!held) {
			job_log(job, LOG_LEVEL_NOTICE, "held: %s%s%s%s", d.reason, view.detail[0] ? " (" : "",
				view.detail, view.detail[0] ? ")" : "");
			job_write_reason(job, d.reason);
		}
		job_set_state(job, JOB_THROTTLED);
		evtimer_add(job->timer, &tv);
		return;
	}
	/* The throttle's sleep is taken in steps of a sample interval, deciding again after each,
	 * so a sleep chosen for lag ends soon after the lag does. */
	if (d.sleep_ms > 0) {
		int64_t so_far;
		if (!job->sleep_decided) {
			clock_gettime(CLOCK_MONOTONIC, &job->sleep_started);
			job->sleep_decided = true;
		}
		so_far = (int64_t)(util_elapsed_s(&job->sleep_started) * 1000.0);
		if (so_far < d.sleep_ms) {
			int64_t step = d.sleep_ms - so_far;
			job_sleep(job, step < s.sample_interval_ms ? step : s.sample_interval_ms);
			job->slept_ms = so_far + (step < s.sample_interval_ms ? step : s.sample_interval_ms);
			return;
		}
		job->slept_ms = so_far;
	} else {
		job->slept_ms =
			job->sleep_decided ? (int64_t)(util_elapsed_s(&job->sleep_started) * 1000.0) : 0;
	}
	job->sleep_decided = false;
	job_next_batch(job);
}

void job_on_blocked(job_t *job, int64_t sessions, int64_t waited_ms)
{
	throttle_settings_t s;
	int pid = job_batch_backend_pid(job);

	if (job->state != JOB_BATCH || !pid)
		return;
	if (sessions > job->batch_blocked)
		job->batch_blocked = sessions;
	if (waited_ms > job->batch_waited_ms)
		job->batch_waited_ms = waited_ms;
	job_settings(job, &s);
	if (waited_ms < s.max_blocked_ms || job->cancel_reason)
		return;
	job_log(job, LOG_LEVEL_NOTICE, "%lld session(s) waited %lld ms on the batch's locks: cancelling it",
		(long long)sessions, (long long)waited_ms);
	job->cancel_reason = "blocked_sessions";
	if (!job_cancel_batch(job))
		job_log(job, LOG_LEVEL_WARNING, "cannot cancel the batch");
}

static void job_sibling_contended(job_t *sibling, void *waited_ms)
{
	throttle_settings_t s;

	job_settings(sibling, &s);
	if (throttle_after_contention(&sibling->throttle, &s, *(int64_t *)waited_ms))
		sibling->contended = true;
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

static void job_batch_done(job_t *job, const pgconn_result_t *res)
{
	const PGresult *b = job_result(job, res, STEP_BATCH), *cp = job_result(job, res, STEP_CHECKPOINT);
	const PGresult *w = job_result(job, res, STEP_WAITERS);
	const char *last_key = pgconn_value(b, 0, 3);
	const char *state = pgconn_value(cp, 0, 0);
	int64_t scanned = pgconn_int64(b, 0, 0, 0), changed = pgconn_int64(b, 0, 1, 0);
	double duration_ms = util_elapsed_s(&job->batch_started) * 1000.0;
	throttle_settings_t s;

	sampler_wal_position(pgconn_value(cp, 0, 7));
	clock_gettime(CLOCK_MONOTONIC, &job->batch_ended);
	if (w) { /* who waited on it till the end, beside what the sampler saw */
		int64_t sessions = pgconn_int64(w, 0, 0, 0), waited_ms = pgconn_int64(w, 0, 1, 0);
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
	job->rows_scanned = pgconn_int64(cp, 0, 1, job->rows_scanned);
	job->rows_changed = pgconn_int64(cp, 0, 2, job->rows_changed);
	job->batches = pgconn_int64(cp, 0, 3, job->batches);
	job->rows_estimate = pgconn_int64(cp, 0, 4, job->rows_estimate);
	job_log(job, LOG_LEVEL_DEBUG, "batch %lld: %lld rows scanned, %lld changed in %.1f ms, up to %s",
		(long long)job->batches, (long long)scanned, (long long)changed, duration_ms,
		last_key ? last_key : "(end)");

	if (job->slice > 0 && state && strcmp(state, "done") != 0) {
		/* A slice: the job goes on, or its other slices must stop too before it is given back. */
		if (strcmp(state, "running") != 0) {
			job_log(job, LOG_LEVEL_INFO, "%s by a user after batch %lld", state,
				(long long)job->batches);
			job_release(job, state, NULL);
			return;
		}
		if (strcmp(pgconn_value(cp, 0, 6) ?: "f", "t") == 0) {
			job_log(job, LOG_LEVEL_INFO, "slice done; the job's other slices go on");
			if (job->stopping) {
				job_release(job, job->stop_state, job->stop_error);
				return;
			}
			job->quiet = true;
			job_finish(job);
			return;
		}
	} else if (!state || strcmp(state, "running") != 0) {
		if (state && strcmp(state, "done") == 0) {
			double secs = util_elapsed_s(&job->started);
			job_log_progress(job, true);
			job_log(job, LOG_LEVEL_INFO,
				"done: %lld rows scanned, %lld changed in %lld batches; %.1f s on this "
				"instance (%.0f rows/s)",
				(long long)job->rows_scanned, (long long)job->rows_changed,
				(long long)job->batches, secs,
				secs > 0 ? (double)(job->rows_scanned - job->rows_at_start) / secs : 0.0);
		} else {
			job_log(job, LOG_LEVEL_INFO, "%s by a user after batch %lld",
				state ? state : "changed", (long long)job->batches);
		}
		job_finish(job); /* the checkpoint already gave the job back */
		return;
	}
	job_settings(job, &s);
	if (job->bisect_left > 0) {
		/* The keys walked were good: the failing row is in the rest of the chunk; try half of
		 * it. (It is gone when the rest walks clean: the controller takes over again.) */
		job->bisect_left -= scanned;
		job->bisect_size = (job->bisect_left + 1) / 2;
		if (job->bisect_left <= 0 || scanned < job->batch_limit) {
			job->bisect_left = 0;
			job_log(job, LOG_LEVEL_NOTICE, "bisecting done: %lld failed rows so far",
				(long long)job->failed_rows);
		}
	} else {
		if (job->throttle.app_watch && w)
			job_count_app_writes(job, res, &s);
		throttle_after_batch(&job->throttle, &s, scanned, duration_ms);
		throttle_after_wal(&job->throttle, scanned,
				   pgconn_int64(cp, 0, PQfnumber(cp, "wal_bytes"), -1));
		throttle_after_waiters(&job->throttle, &s, scanned, duration_ms, job->batch_blocked);
		/* (A sibling slice may have found contention already while this batch ran.) */
		job->contended =
			throttle_after_contention(&job->throttle, &s, job->batch_waited_ms) || job->contended;
		/* One throttle for a job's slices: a wait on one slice's locks shrinks them all. */
		if (job->contended && job->slice > 0)
			daemon_each_sibling(job, job_sibling_contended, &job->batch_waited_ms);
	}
	metrics_batch_duration(duration_ms / 1000.0);
	job_log_progress(job, false);
	job_continue(job);
}

void job_batch_failed(job_t *job, const pgconn_result_t *res)
{
	const char *stage = job_failed_step(job, res);
	char err[1024];
	throttle_settings_t s;

	job->writes_pid = 0; /* its own writes, rolled back, are counted all the same: unknown */
	if (strcmp(res->sqlstate, "BFL01") == 0) {
		job_log(job, LOG_LEVEL_WARNING,
			"lease lost (%s): batch rolled back, the job is another instance's now",
			res->message);
		job->lease_lost = true;
		job_finish(job);
		return;
	}
	if (!job->stopping && job_bisect(job, res))
		return;
	if (job->cancel_reason && !job->stopping && strcmp(res->sqlstate, "57014") == 0) {
		job_settings(job, &s);
		/* The sessions it blocked waited all the same: they count against its size. */
		throttle_after_waiters(&job->throttle, &s, job->throttle.batch_size,
				       util_elapsed_s(&job->batch_started) * 1000.0, job->batch_blocked);
		throttle_after_retry(&job->throttle, &s, (double)(random() % 1000) / 1000.0);
		job->reason = job->cancel_reason;
		job_note_reason(job, job->reason, "a batch blocked other sessions too long");
		job->cancel_reason = NULL;
		job_sleep(job, job->throttle.sleep_ms);
		return;
	}
	if (job->stopping && strcmp(res->sqlstate, "57014") == 0) {
		job_log(job, LOG_LEVEL_NOTICE, "batch cancelled for shutdown and rolled back");
		job_release(job, job->stop_state, job->stop_error);
		return;
	}
	job_settings(job, &s);
	if (sqlstate_is_retryable(res->sqlstate) && job->throttle.retries >= s.max_retries) {
		text_snprintf(err, sizeof(err),
			      "%s: %s (%s; the batch failed so %lld times in a row: max_retries)",
			      res->sqlstate, res->message, stage, (long long)job->throttle.retries + 1);
		job_fail(job, err);
		return;
	}
	if (sqlstate_is_retryable(res->sqlstate)) {
		throttle_after_retry(&job->throttle, &s, (double)(random() % 1000) / 1000.0);
		job->reason = "lock_timeout";
		job_note_reason(job, job->reason, res->message);
		log_msg(job->throttle.retries == 1 ? LOG_LEVEL_NOTICE : LOG_LEVEL_DEBUG, job->context,
			"batch rolled back (%s %s); retry %d in %lld ms with %lld rows", res->sqlstate,
			res->message, job->throttle.retries, (long long)job->throttle.sleep_ms,
			(long long)job->throttle.batch_size);
		if (job->stopping)
			job_release(job, job->stop_state, job->stop_error);
		else
			job_sleep(job, job->throttle.sleep_ms);
		return;
	}
	text_snprintf(err, sizeof(err), "%s: %s (%s)", res->sqlstate, res->message, stage);
	job_fail(job, err);
}

static void job_batch_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	(void)conn;

	if (job->state != JOB_BATCH)
		return;
	if (res->broken) {
		job_log(job, LOG_LEVEL_WARNING,
			"connection lost during batch %lld: its outcome is read back once reconnected",
			(long long)job->batches + 1);
		job_session_lost(job);
		return;
	}
	if (res->ok)
		job_batch_done(job, res);
	else
		job_batch_failed(job, res);
}

void job_next_batch(job_t *job)
{
	throttle_settings_t s;
	char stmt_timeout[24], lock_timeout[24], limit[24], lease[24], slept[24], size_now[24], sleep_now[24];
	char lag_bytes[24], lag_ms[24], blocked[24], oid[16];
	const char *open_params[3], *checkpoint_params[12], *record_params[2], *waiters_params[1];
	const char **batch_params;
	const char *schema = daemon_config()->schema;
	char *open_sql = batch_build_open(schema), *mismatches_sql = batch_build_mismatches(schema);
	char *waiters_sql = batch_build_waiters(schema), *checkpoint_sql = batch_build_checkpoint(schema);
	pgconn_stmt_t stmts[8];
	job_step_t steps[8];
	int n = 0, nbatch;
	bool first = job->last_key.n == 0;

	if (job->stopping) {
		job_release(job, job->stop_state, job->stop_error);
		goto out;
	}
	if (daemon_paused()) {
		job_hold(job);
		goto out;
	}
	/* What the history records as this batch's sleep: all the time since the previous one
	 * ended, sleeps and holds alike. */
	if (job->batch_ended.tv_sec)
		job->slept_ms = (int64_t)(util_elapsed_s(&job->batch_ended) * 1000.0);
	job_settings(job, &s);
	job->batch_limit =
		job->bisect_left > 0 && job->bisect_size > 0 ? job->bisect_size : job->throttle.batch_size;
	if (job->max_rows > 0 && job->batch_limit > job->max_rows) /* the lag headroom's WAL */
		job->batch_limit = job->max_rows;
	job->max_rows = 0;
	snprintf(stmt_timeout, sizeof(stmt_timeout), "%lld", (long long)s.statement_timeout_ms);
	snprintf(lock_timeout, sizeof(lock_timeout), "%lld", (long long)s.lock_timeout_ms);
	snprintf(limit, sizeof(limit), "%lld", (long long)job->batch_limit);
	snprintf(lease, sizeof(lease), "%lld", (long long)daemon_config()->lease_ms);
	snprintf(slept, sizeof(slept), "%lld", (long long)job->slept_ms);
	snprintf(size_now, sizeof(size_now), "%lld", (long long)job->throttle.batch_size);
	snprintf(sleep_now, sizeof(sleep_now), "%lld", (long long)job->throttle.sleep_ms);
	snprintf(oid, sizeof(oid), "%u", job->target_oid);

	open_params[0] = stmt_timeout;
	open_params[1] = lock_timeout;
	open_params[2] = oid;
	waiters_params[0] = oid;
	record_params[0] = job->id_text;
	record_params[1] = daemon_name();

	/* The last key done, the size, and a statement job's own SQL. */
	nbatch = (first ? 0 : job->nkeys) + 1 + (job->kind == JOB_KIND_STATEMENT ? 1 : 0);
	batch_params = calloc((size_t)nbatch, sizeof(char *));
	if (!batch_params)
		abort();
	for (int i = 0; i < job->last_key.n; i++)
		batch_params[i] = job->last_key.values[i];
	batch_params[first ? 0 : job->nkeys] = limit;
	if (job->kind == JOB_KIND_STATEMENT)
		batch_params[nbatch - 1] = job->batch_sql;

	checkpoint_params[0] = job->id_text;
	checkpoint_params[1] = daemon_name();
	checkpoint_params[2] = lease;
	checkpoint_params[3] = limit;
	checkpoint_params[4] = slept;
	checkpoint_params[5] = size_now;
	checkpoint_params[6] = sleep_now;
	snprintf(lag_bytes, sizeof(lag_bytes), "%lld", (long long)job->input.lag_bytes);
	snprintf(lag_ms, sizeof(lag_ms), "%lld", (long long)job->input.lag_ms);
	/* Sessions that waited on the previous attempt, committed or cancelled: this batch's row
	 * records them (its own waits are seen only while it runs). */
	snprintf(blocked, sizeof(blocked), "%lld", (long long)job->batch_blocked);
	job->batch_blocked = 0;
	job->batch_waited_ms = 0;
	checkpoint_params[7] = job->input.lag_known ? lag_bytes : NULL;
	checkpoint_params[8] = job->input.lag_known ? lag_ms : NULL;
	checkpoint_params[9] = blocked;
	checkpoint_params[10] = job->reason;
	checkpoint_params[11] = job->slice > 0 ? job->slice_text : NULL;

	steps[n] = STEP_BEGIN;
	stmts[n++] = (pgconn_stmt_t){"BEGIN", 0, NULL, NULL, NULL};
	steps[n] = STEP_OPEN;
	stmts[n++] = (pgconn_stmt_t){open_sql, 3, open_params, NULL, NULL};
	steps[n] = STEP_BATCH;
	stmts[n++] = (pgconn_stmt_t){NULL, nbatch, batch_params,
				     first ? JOB_PREPARED_FIRST : JOB_PREPARED_NEXT, NULL};
	if (job->dry_run) {
		/* WAL is written even by a transaction that rolls back: measure it first. */
		steps[n] = STEP_DRY_WAL;
		stmts[n++] = (pgconn_stmt_t){batch_dry_wal_sql, 0, NULL, NULL, NULL};
		steps[n] = STEP_END;
		stmts[n++] = (pgconn_stmt_t){"ROLLBACK", 0, NULL, NULL, NULL};
	} else {
		if (job->kind == JOB_KIND_VERIFY) { /* (a verify job's batch locks no rows) */
			steps[n] = STEP_MISMATCHES;
			stmts[n++] = (pgconn_stmt_t){mismatches_sql, 2, record_params, NULL, NULL};
		} else {
			steps[n] = STEP_WAITERS;
			stmts[n++] = (pgconn_stmt_t){waiters_sql, 1, waiters_params, NULL, NULL};
		}
		steps[n] = STEP_CHECKPOINT;
		stmts[n++] = (pgconn_stmt_t){checkpoint_sql, 12, checkpoint_params, NULL, NULL};
		steps[n] = STEP_END;
		stmts[n++] = (pgconn_stmt_t){"COMMIT", 0, NULL, NULL, NULL};
	}

	job_set_state(job, JOB_BATCH);
	job->cancel_reason = NULL;
	job->wait_reason = NULL; /* this batch records it */
	clock_gettime(CLOCK_MONOTONIC, &job->batch_started);
	if (job->dry_run && job->dry_started.tv_sec == 0)
		job->dry_started = job->batch_started;
	if (!job_session_send(job, stmts, steps, n, job->dry_run ? job_dry_cb : job_batch_cb))
		job_session_lost(job); /* the loss is being handled; the reload resumes it */
	else
		sampler_batch_started();
	free(batch_params);
out:
	free(open_sql);
	free(mismatches_sql);
	free(waiters_sql);
	free(checkpoint_sql);
}
