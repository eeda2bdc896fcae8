/*
 * Rows that fail on their own: a batch that fails on its data is bisected (only the halves that
 * fail are split again), a single failing row is recorded in failed_rows and stepped over in a
 * transaction of its own, and the walk goes back to the controller's size.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchsql.h"
#include "config.h"
#include "daemon.h"
#include "job_internal.h"
#include "keys.h"
#include "log.h"
#include "pgconn.h"
#include "queuesql.h"
#include "text.h"
#include "throttle.h"

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

	if (!job_session_result_ok(job, res, JOB_BATCH))
		return;
	if (!res->ok) {
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
	char *open_sql = queuesql(QSQL_BATCH_OPEN, daemon_config()->schema);
	char *skip_sql = queuesql(QSQL_SKIP_ROW, daemon_config()->schema);
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
bool job_bisect(job_t *job, const pgconn_result_t *res)
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

/* A batch of a bisection committed SCANNED keys: the failing row is in the rest of the chunk; try
 * half of it. (It is gone when the rest walks clean: the controller takes over again.) */
void job_bisect_after_batch(job_t *job, int64_t scanned)
{
	job->bisect_left -= scanned;
	job->bisect_size = (job->bisect_left + 1) / 2;
	if (job->bisect_left <= 0 || scanned < job->batch_limit) {
		job->bisect_left = 0;
		job_log(job, LOG_LEVEL_NOTICE, "bisecting done: %lld failed rows so far",
			(long long)job->failed_rows);
	}
}
