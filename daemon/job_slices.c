/*
 * Parallel slices: the job's first runner cuts the key range at quantiles into slices and starts
 * one runner per slice; each runner walks its slice from its own checkpoint to its upper bound.
 */
#include "job_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "daemon.h"
#include "keys.h"
#include "log.h"
#include "pgconn.h"

/* A text[] literal (NULL: none) into KEY, which must have the job's number of key columns. */
static bool job_decode_key(const job_t *job, const char *text, jobkey_t *key, char *err, size_t errlen)
{
	keys_clear(key);
	if (!text)
		return true;
	if (!keys_decode(text, key) || key->n != job->nkeys) {
		snprintf(err, errlen, "slice %d: the key %s does not fit the job's %d key column(s)",
			 job->slice, text, job->nkeys);
		return false;
	}
	return true;
}

/*
 * A slice's runner walks from its checkpoint (or its lower bound) up to its upper bound; a slice
 * already done, or gone because the job was cut again, ends the runner quietly. SLICES is the
 * load query's third result. Anything else builds the whole job's statements. False: ERR says why
 * the job cannot go on.
 */
bool job_load_slice(job_t *job, const PGresult *slices, char *err, size_t errlen)
{
	if (job->slice == 0) {
		job_build_sql(job);
		return true;
	}
	for (int r = 0; r < PQntuples(slices); r++) {
		if (pgconn_int64(slices, r, 0, -1) != job->slice)
			continue;
		if (strcmp(pgconn_value(slices, r, 4) ?: "f", "t") == 0) {
			job_log(job, LOG_LEVEL_INFO, "slice already done");
			job->quiet = true;
			job_finish(job);
			return true;
		}
		if (!job_decode_key(job, pgconn_value(slices, r, 3) ?: pgconn_value(slices, r, 1),
				    &job->last_key, err, errlen) ||
		    !job_decode_key(job, pgconn_value(slices, r, 2), &job->upper, err, errlen))
			return false;
		job_build_sql(job);
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
		if (strcmp(pgconn_value(slices, r, 4) ?: "f", "t") == 0)
			continue;
		daemon_add_job(job_start_slice(job->id, target, (int)pgconn_int64(slices, r, 0, 0)));
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
	char err[1024];
	(void)conn;

	if (job->state != JOB_SPLITTING)
		return;
	if (res->broken) {
		job->state = JOB_CONNECTING;
		return;
	}
	if (!res->ok) {
		if (strcmp(res->sqlstate, "BFL01") == 0) {
			job_log(job, LOG_LEVEL_WARNING, "lease lost while cutting the job into slices");
			job->lease_lost = true;
			job_finish(job);
			return;
		}
		snprintf(err, sizeof(err), "%s: %s (cutting the key range into %lld slices as role %s)",
			 res->sqlstate, res->message, (long long)job->parallel, job->run_as);
		job_fail(job, err);
		return;
	}
	job_log(job, LOG_LEVEL_INFO, "cut into %d slices (asked for %lld)", PQntuples(res->results[3]),
		(long long)job->parallel);
	if (job->stopping)
		job_release(job, job->stop_state, job->stop_error);
	else
		job_start_slices(job, res->results[3]);
}

/* Cut the key range at quantiles, as the job's role (it reads the table), then record the slices. */
void job_split(job_t *job)
{
	batch_spec_t spec = job_spec(job);
	char *create = batch_build_function(&spec, BATCH_FN_SPLIT);
	char *owner = batch_build_function_owner(&spec, BATCH_FN_SPLIT, job->run_as);
	char *call = batch_build_call(&spec, BATCH_FN_SPLIT);
	char parallel[24], make_sql[256];
	const char *split_params[] = {parallel}, *make_params[] = {job->id_text, daemon_name()};
	pgconn_stmt_t stmts[4];

	snprintf(parallel, sizeof(parallel), "%lld", (long long)job->parallel);
	snprintf(make_sql, sizeof(make_sql),
		 "SELECT slice, lower_key::text, upper_key::text, NULL::text, false"
		 " FROM %s._make_slices($1::bigint, $2)",
		 daemon_schema_quoted());
	stmts[0] = (pgconn_stmt_t){create, 0, NULL};
	stmts[1] = (pgconn_stmt_t){owner, 0, NULL};
	stmts[2] = (pgconn_stmt_t){call, 1, split_params};
	stmts[3] = (pgconn_stmt_t){make_sql, 2, make_params};
	job->state = JOB_SPLITTING;
	if (!pgconn_send(job->conn, stmts, 4, job_split_cb, job))
		job->state = JOB_CONNECTING;
	free(create);
	free(owner);
	free(call);
}
