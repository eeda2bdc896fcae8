/*
 * A job's own holds, asked of its session before each batch (and at every sample interval while
 * held): its run window (run_window, reason run_window; read from its row each time, so a user's
 * change applies at once) and its hold_when_sql (evaluated as
 * run_as in a read-only transaction under the daemon's timeouts; true holds the job, reason
 * hold_when_sql). An expression that fails holds the job too and puts its error in last_error
 * without failing the job; the error is cleared once the expression works again.
 */
#include "job_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchsql.h"
#include "config.h"
#include "daemon.h"
#include "log.h"
#include "pgconn.h"
#include "queuesql.h"
#include "reason.h"
#include "text.h"
#include "util.h"

/* Held by REASON (DETAIL for the log): announced when it begins, decided again after a sample
 * interval. The batch after the hold records why it waited. */
static void job_cond_hold(job_t *job, reason_t reason, const char *detail)
{
	throttle_settings_t s;

	if (job->cond_reason != reason) {
		job_log(job, LOG_LEVEL_NOTICE, "held: %s (%s)", reason_name(reason), detail);
		job_write_reason(job, reason);
		job->cond_reason = reason;
		job->logged_reason = reason;
	}
	job->pace.reason = reason;
	job->pace.wait_reason = reason;
	job_report(job, true);
	job_settings(job, &s);
	job_sleep(job, JOB_THROTTLED, s.sample_interval_ms);
}

/* The answer to writing a hold's error to last_error (or clearing it): _set_error says false
 * when the row was locked by another session and nothing was written. */
static bool job_cond_error_written(job_t *job, const pgconn_result_t *res, const char *what)
{
	if (res->broken)
		return false;
	if (!res->ok) {
		job_log(job, LOG_LEVEL_WARNING, "cannot %s last_error: %s %s", what, res->sqlstate,
			res->message);
		return false;
	}
	if (strcmp(pgconn_value(res->results[0], 0, 0) ?: "f", "t") == 0)
		return true;
	job_log(job, LOG_LEVEL_DEBUG,
		"the job's row was locked: last_error is written again at the next check");
	return false;
}

static void job_cond_error_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	(void)conn;
	if (!job_cond_error_written(job, res, "record"))
		job->cond_error_missed = true; /* the next check while held writes it again */
}

/* The expression (or the window's check) failed: held, the error in last_error. */
static void job_cond_failed(job_t *job, const pgconn_result_t *res)
{
	char err[1024];
	bool window = job->steps.of[res->failed_index] == STEP_WINDOW;

	text_snprintf(err, sizeof(err), "%s: %s (%s as role %s: the job holds until it works)", res->sqlstate,
		      res->message, job_failed_step(job, res), job->run_as);
	if (!job->cond_error_set || job->cond_error_missed || job->cond_reason == REASON_NONE) {
		/* Set before the answer: a clear that follows must be sent even while this one is in
		 * flight (the queue connection keeps their order). */
		job->cond_error_set = true;
		job->cond_error_missed = !job_write_error(job, err, job_cond_error_cb);
	}
	job_cond_hold(job, window ? REASON_RUN_WINDOW : REASON_HOLD_WHEN_SQL, err);
}

void job_window_seen(job_t *job, const char *run_window)
{
	if ((run_window == NULL) == (job->run_window == NULL) &&
	    (!run_window || strcmp(run_window, job->run_window) == 0))
		return;
	job_log(job, LOG_LEVEL_INFO, "run window %s%s", run_window ? "now " : "removed",
		run_window ? run_window : "");
	free(job->run_window);
	job->run_window = run_window ? util_strdup(run_window) : NULL;
}

/* Neither its window nor its hold_when_sql holds the job: the batch. */
static void job_cond_go_on(job_t *job)
{
	if (job->cond_reason != REASON_NONE) {
		job_log(job, LOG_LEVEL_NOTICE, "%s: going on",
			job->cond_reason == REASON_RUN_WINDOW ? "its run window is open"
							      : "its hold_when_sql is no longer true");
		job_write_reason(job, REASON_NONE);
		job->cond_reason = REASON_NONE;
		job->logged_reason = REASON_NONE;
	}
	job_next_batch(job);
}

static void job_cond_cleared_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	bool cleared = job_cond_error_written(job, res, "clear");
	(void)conn;

	if (!job->cond_clearing || job->state != JOB_HOLD_CHECK)
		return; /* the job moved on meanwhile (its session lost, its lease, a new check) */
	job->cond_clearing = false;
	if (cleared) {
		job->cond_error_set = false;
		job->cond_error_missed = false;
	}
	job_cond_go_on(job); /* not cleared: the check before the next batch tries again */
}

/* The expression works again: clear its error before the next batch. Not at the same time: the
 * batch's checkpoint locks the job's row, and a clear that met that lock would be skipped (and
 * the job could finish with the stale error). The job waits in JOB_HOLD_CHECK for the answer. */
static void job_cond_clear(job_t *job)
{
	job->cond_clearing = job_write_error(job, NULL, job_cond_cleared_cb);
	if (!job->cond_clearing)
		job_cond_go_on(job); /* the queue is down: cleared at a later check */
}

static void job_hold_check_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	const PGresult *window, *hold;
	char detail[256];
	(void)conn;

	if (!job_session_result_ok(job, res, JOB_HOLD_CHECK))
		return;
	if (job->stopping || daemon_paused()) {
		job_next_batch(job); /* which gives the job back, or holds it */
		return;
	}
	if (!res->ok) {
		job_cond_failed(job, res);
		return;
	}
	window = job_result(job, res, STEP_WINDOW);
	hold = job_result(job, res, STEP_HOLD_WHEN);
	if (window && PQntuples(window) == 1)
		job_window_seen(job, pgconn_value(window, 0, 0));
	if (window && strcmp(pgconn_value(window, 0, 1) ?: "t", "t") != 0) {
		text_snprintf(detail, sizeof(detail), "outside its run window %s", job->run_window);
		job_cond_hold(job, REASON_RUN_WINDOW, detail);
		return;
	}
	if (hold && PQntuples(hold) > 0) {
		job_cond_hold(job, REASON_HOLD_WHEN_SQL, "its hold_when_sql is true");
		return;
	}
	if (job->cond_error_set) {
		job_cond_clear(job); /* then the batch */
		return;
	}
	job_cond_go_on(job);
}

void job_hold_check(job_t *job)
{
	throttle_settings_t s;
	char stmt_timeout[24], lock_timeout[24];
	const char *timeouts[] = {stmt_timeout, lock_timeout}, *window_params[] = {job->id_text};
	char *window_sql = queuesql(QSQL_WINDOW, daemon_config()->schema);
	char *hold_sql = job->hold_when_sql ? batch_build_hold_when(job->hold_when_sql) : NULL;
	pgconn_stmt_t stmts[5];
	job_step_t steps[5];
	int n = 0;

	job->cond_clearing = false; /* a clear still in flight belongs to an earlier check */
	job_settings(job, &s);
	snprintf(stmt_timeout, sizeof(stmt_timeout), "%lld", (long long)s.statement_timeout_ms);
	snprintf(lock_timeout, sizeof(lock_timeout), "%lld", (long long)s.lock_timeout_ms);
	steps[n] = STEP_BEGIN; /* read-only: the expression writes nothing */
	stmts[n++] = (pgconn_stmt_t){"BEGIN READ ONLY", 0, NULL, NULL, NULL};
	steps[n] = STEP_OPEN;
	stmts[n++] = (pgconn_stmt_t){batch_timeouts_sql, 2, timeouts, NULL, NULL};
	steps[n] = STEP_WINDOW; /* also with none: a user may have set one since */
	stmts[n++] = (pgconn_stmt_t){window_sql, 1, window_params, NULL, NULL};
	if (hold_sql) {
		steps[n] = STEP_HOLD_WHEN;
		stmts[n++] = (pgconn_stmt_t){hold_sql, 0, NULL, NULL, NULL};
	}
	steps[n] = STEP_END;
	stmts[n++] = (pgconn_stmt_t){"COMMIT", 0, NULL, NULL, NULL};
	job_set_state(job, JOB_HOLD_CHECK);
	if (!job_session_send(job, stmts, steps, n, job_hold_check_cb))
		job_session_lost(job);
	free(window_sql);
	free(hold_sql);
}
