/*
 * Dry runs: the first batches run in transactions that roll back, measured in memory (rows,
 * time, WAL), then extrapolated to the whole job and recorded as its estimates.
 */
#include "job_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "keys.h"
#include "log.h"
#include "pgconn.h"
#include "queuesql.h"
#include "throttle.h"
#include "util.h"

#define DRY_RUN_MAX_S 60.0    /* at most a minute of measuring */
#define DRY_RUN_MIN_BATCHES 5 /* and, past 1% of the keys, enough batches (or seconds) that the */
#define DRY_RUN_MIN_S 2.0     /* first, slower batch does not dominate the estimate */

static void job_dry_done_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	(void)conn;

	if (job->state != JOB_RECORDING)
		return;
	if (res->broken || (!res->ok && strcmp(res->sqlstate, "55P03") == 0 && !daemon_stopping())) {
		/* The queue broke, or another session keeps the job's row locked: sent again. */
		if (!res->broken)
			job_log(job, LOG_LEVEL_NOTICE,
				"the job's row is locked by another session: writing the"
				" estimates again in 1 s");
		job_retry_later(job);
		return;
	}
	if (!res->ok)
		job_log(job, LOG_LEVEL_ERROR, "cannot record the dry run's estimates: %s %s", res->sqlstate,
			res->message);
	else
		job_log(job, LOG_LEVEL_INFO, "dry run %s: nothing was changed",
			pgconn_value(res->results[0], 0, 0) ?: "?");
	job_finish(job);
}

void job_dry_record(job_t *job)
{
	char *sql = queuesql(QSQL_DRY_RUN_DONE, daemon_config()->schema);
	const char *params[] = {job->id_text, daemon_name(), job->dry_seconds, job->dry_wal_bytes};
	pgconn_stmt_t stmt = {sql, 4, params, NULL, NULL};

	job_set_state(job, JOB_RECORDING);
	if (!job_queue_send(job, &stmt, 1, job_dry_done_cb)) {
		job_log(job, LOG_LEVEL_DEBUG, "the queue is down: the estimates are written once it is back");
		job_retry_later(job);
	}
	free(sql);
}

/* The dry run measured enough: extrapolate to the whole table and end the job. */
static void job_dry_finish(job_t *job, bool reached_end)
{
	char *seconds = job->dry_seconds, *wal = job->dry_wal_bytes;
	double elapsed = util_elapsed_s(&job->dry_started);
	int64_t rows =
		reached_end ? job->dry_scanned
			    : (job->rows_estimate > job->dry_scanned ? job->rows_estimate : job->dry_scanned);
	double factor = job->dry_scanned > 0 ? (double)rows / (double)job->dry_scanned : 0;

	snprintf(job->dry_seconds, sizeof(job->dry_seconds), "%.0f", elapsed * factor);
	snprintf(job->dry_wal_bytes, sizeof(job->dry_wal_bytes), "%.0f", (double)job->dry_wal * factor);
	job_log(job, LOG_LEVEL_INFO,
		"dry run: %lld rows in %.1f s and %lld WAL bytes, rolled back; the whole job (%lld rows): "
		"about %s s and"
		" %s WAL bytes",
		(long long)job->dry_scanned, elapsed, (long long)job->dry_wal, (long long)rows, seconds, wal);
	job_dry_record(job);
}

void job_dry_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	const PGresult *b = job_result(job, res, STEP_BATCH);
	int64_t scanned, wal;
	double duration_ms;
	throttle_settings_t s;
	(void)conn;

	if (!job_session_result_ok(job, res, JOB_BATCH))
		return;
	if (!res->ok) {
		job_batch_failed(job, res);
		return;
	}
	scanned = pgconn_int64(b, 0, BATCH_SCANNED, 0);
	duration_ms = util_elapsed_s(&job->batch_started) * 1000.0;
	job->dry_scanned += scanned;
	job->dry_batches++;
	wal = pgconn_int64(job_result(job, res, STEP_DRY_WAL), 0, 0, -1);
	job_wal_settle(job, wal); /* rolled back, but written: it counts against the WAL budgets */
	job->dry_wal += wal > 0 ? wal : 0;
	if (pgconn_value(b, 0, BATCH_LAST_KEY)) {
		keys_clear(&job->last_key);
		if (!keys_decode(pgconn_value(b, 0, BATCH_LAST_KEY), &job->last_key)) {
			job_fail(job, "cannot decode a key (dry run; nothing was changed)");
			return;
		}
	}
	job_settings(job, &s);
	throttle_after_batch(&job->throttle, &s, scanned, duration_ms);
	throttle_after_wal(&job->throttle, scanned, wal); /* sizes batches for the lag, the budgets */
	if (scanned < job->batch_limit)
		job_dry_finish(job, true);
	else if (util_elapsed_s(&job->dry_started) >= DRY_RUN_MAX_S ||
		 (job->rows_estimate > 0 && job->dry_scanned * 100 >= job->rows_estimate &&
		  (job->dry_batches >= DRY_RUN_MIN_BATCHES ||
		   util_elapsed_s(&job->dry_started) >= DRY_RUN_MIN_S)))
		job_dry_finish(job, false);
	else
		job_continue(job);
}
