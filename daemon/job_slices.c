/*
 * Parallel slices: the job's first runner cuts the key range at quantiles into slices and starts
 * one runner per slice; each runner walks its slice from its own checkpoint to its upper bound.
 */
#include "job_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchsql.h"
#include "config.h"
#include "daemon.h"
#include "keys.h"
#include "log.h"
#include "pgconn.h"
#include "queuesql.h"
#include "text.h"
#include "util.h"

/* A text[] literal (NULL: none) into KEY, which must have the job's number of key columns. */
static bool job_decode_key(const job_t *job, const char *text, jobkey_t *key, char *err, size_t errlen)
{
	keys_clear(key);
	if (!text)
		return true;
	if (!keys_decode(text, key) || key->n != job->nkeys) {
		text_snprintf(err, errlen, "slice %d: the key %s does not fit the job's %d key column(s)",
			      job->slice, text, job->nkeys);
		return false;
	}
	return true;
}

/*
 * A slice's runner walks from its checkpoint (or its lower bound) up to its upper bound; a slice
 * already done, or gone because the job was cut again, ends the runner quietly. SLICES is the
 * load query's third result. False: ERR says why
 * the job cannot go on.
 */
bool job_load_slice(job_t *job, const PGresult *slices, char *err, size_t errlen)
{
	if (job->slice == 0)
		return true;
	for (int r = 0; r < PQntuples(slices); r++) {
		if (pgconn_int64(slices, r, QSQL_SLICE_NUMBER, -1) != job->slice)
			continue;
		if (strcmp(pgconn_value(slices, r, QSQL_SLICE_DONE) ?: "f", "t") == 0) {
			job_log(job, LOG_LEVEL_INFO, "slice already done");
			job->quiet = true;
			job_finish(job);
			return true;
		}
		/* (Cut into fewer slices than asked for: say how many there are.) */
		snprintf(job->context, sizeof(job->context), "job %lld (%s.%s) slice %d/%d",
			 (long long)job->id, job->target_schema, job->target_table, job->slice,
			 PQntuples(slices));
		if (!job_decode_key(job,
				    pgconn_value(slices, r, QSQL_SLICE_LAST_KEY)
					    ?: pgconn_value(slices, r, QSQL_SLICE_LOWER_KEY),
				    &job->last_key, err, errlen) ||
		    !job_decode_key(job, pgconn_value(slices, r, QSQL_SLICE_UPPER_KEY), &job->upper, err,
				    errlen))
			return false;
		return true;
	}
	job_log(job, LOG_LEVEL_WARNING, "slice %d no longer exists: the job was cut again", job->slice);
	job->quiet = true;
	job_finish(job);
	return true;
}

/* Start a runner for every slice not yet done, then leave: they walk the job from here. */
void job_start_slices(job_t *job, const PGresult *slices)
{
	char target[160];
	int started = 0, total = PQntuples(slices);

	snprintf(target, sizeof(target), "%s.%s", job->target_schema, job->target_table);
	for (int r = 0; r < total; r++) {
		if (strcmp(pgconn_value(slices, r, QSQL_SLICE_DONE) ?: "f", "t") == 0)
			continue;
		daemon_add_job(
			job_start_slice(job->id, target, (int)pgconn_int64(slices, r, QSQL_SLICE_NUMBER, 0)));
		started++;
	}
	if (started == 0) {
		job_log(job, LOG_LEVEL_INFO, "every slice is done");
		job_release(job, "done", NULL);
		return;
	}
	job_log(job, LOG_LEVEL_INFO, "walking %d of its %d slices at once", started, total);
	job->quiet = true;
	job_finish(job);
}

static void job_split_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	const PGresult *slices;
	char err[1024];
	(void)conn;

	if (!job_session_result_ok(job, res, JOB_SPLITTING))
		return;
	if (!res->ok) {
		text_snprintf(err, sizeof(err), "%s: %s (cutting the key range into %lld slices as role %s)",
			      res->sqlstate, res->message, (long long)job->parallel, job->run_as);
		job_fail(job, err);
		return;
	}
	slices = job_result(job, res, STEP_SPLIT);
	job_log(job, LOG_LEVEL_INFO, "cut into %d slices (asked for %lld)", PQntuples(slices),
		(long long)job->parallel);
	if (job->stopping)
		job_release(job, job->stop_state, job->stop_error);
	else
		job_start_slices(job, slices);
}

/* Cut the key range at quantiles, as the job's role (it reads the table), then record the slices. */
void job_split(job_t *job)
{
	char *sql = queuesql(QSQL_SPLIT, daemon_config()->schema);
	char max_parallel[24];
	const char *params[] = {job->id_text, daemon_name(), max_parallel};
	pgconn_stmt_t stmt = {sql, 3, params, NULL, NULL};
	static const job_step_t steps[] = {STEP_SPLIT};

	snprintf(max_parallel, sizeof(max_parallel), "%lld", (long long)daemon_config()->max_parallel);
	job_set_state(job, JOB_SPLITTING);
	if (!job_session_send(job, &stmt, steps, 1, job_split_cb))
		job_session_lost(job);
	free(sql);
}
