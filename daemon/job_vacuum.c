/*
 * A job's VACUUMs of its target. An update job leaves a dead version of every row it changes;
 * once it has changed throttle.vacuum_after_percent of the table's rows since its last VACUUM,
 * it vacuums the table between two batches, alone on its session (as run_as: the role's rights
 * decide, asked at the check), so that the batches after it reuse the space; a little after its
 * last commit (up to VACUUM_SETTLE_MS), so that other sessions' snapshots taken before it do not
 * keep that batch's dead rows. The job waits for
 * it (throttled_reason vacuum), and the batch after it records that wait. A VACUUM that waits
 * lock_timeout_ms for its lock (autovacuum or DDL on the table) or keeps another session waiting
 * max_blocked_ms is given up: skipped this time. A role that may not vacuum the table is said
 * once in the log and in last_error (which the job keeps when it is done); the job goes on
 * without. The arithmetic and the statements are in vacuum.c.
 */
#include "job_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "daemon.h"
#include "log.h"
#include "pgconn.h"
#include "queue.h"
#include "reason.h"
#include "sampler.h"
#include "text.h"
#include "throttle.h"
#include "util.h"
#include "vacuum.h"

bool job_vacuums(const job_t *job)
{
	return job->how && job->how->vacuums && !job->dry_run;
}

void job_vacuum_checked(job_t *job, const PGresult *permitted)
{
	if (!permitted)
		return;
	job->vacuum_denied = strcmp(pgconn_value(permitted, 0, 0) ?: "f", "t") != 0;
	if (job->vacuum_denied)
		job_log(job, LOG_LEVEL_DEBUG, "role %s may not vacuum the table", job->run_as);
}

/* The table's rows, as the job counts them: its estimate, at least what it walked. */
static int64_t job_table_rows(const job_t *job)
{
	return job->rows_estimate > job->rows_scanned ? job->rows_estimate : job->rows_scanned;
}

static void job_sibling_round(job_t *sibling, void *changed)
{
	if (sibling->vacuum_changed_at < *(int64_t *)changed)
		sibling->vacuum_changed_at = *(int64_t *)changed;
}

static void job_sibling_said(job_t *sibling, void *arg)
{
	(void)arg;
	sibling->vacuum_denied_said = true;
}

static void job_sibling_vacuuming(job_t *sibling, void *found)
{
	if (sibling->state == JOB_VACUUMING)
		*(bool *)found = true;
}

/* A round begins (vacuumed or not): the next is counted from the rows changed so far, also by a
 * parallel job's other slices, which share the table. Returns the rows this round counted. */
static int64_t job_vacuum_round(job_t *job)
{
	int64_t counted = job->rows_changed - job->vacuum_changed_at;

	job->vacuum_changed_at = job->rows_changed;
	if (job->slice > 0)
		daemon_each_sibling(job, job_sibling_round, &job->rows_changed);
	return counted;
}

/* Its role may not vacuum the table: said once in the log (by one slice of a parallel job), and
 * written to last_error at every round it misses (a note another write may have replaced). */
static void job_vacuum_denied(job_t *job)
{
	char note[1024];

	text_snprintf(note, sizeof(note),
		      "not vacuumed: role %s may not VACUUM %s.%s (%s): the job goes on without, and the "
		      "table may grow up to twice its size; let the role vacuum it, or set "
		      "throttle.vacuum_after_percent = 0",
		      job->run_as, job->target_schema, job->target_table,
		      queue_server_version() >= 170000
			      ? "that takes the MAINTAIN privilege on it, or owning it or the database"
			      : "only the owner of the table or of the database may");
	if (!job->vacuum_denied_said) {
		job_log(job, LOG_LEVEL_WARNING, "%s", note);
		job->vacuum_denied_said = true;
		if (job->slice > 0)
			daemon_each_sibling(job, job_sibling_said, NULL);
	}
	job_write_error(job, note, NULL);
}

bool job_vacuum_due(job_t *job)
{
	throttle_settings_t s;
	bool sibling = false;

	if (!job_vacuums(job) || job->vacuum_off || job->bisect_left > 0)
		return false;
	job_settings(job, &s);
	if (!vacuum_due(s.vacuum_after_percent, job->rows_changed - job->vacuum_changed_at,
			job_table_rows(job)))
		return false;
	if (job->slice > 0)
		daemon_each_sibling(job, job_sibling_vacuuming, &sibling);
	if (sibling)
		return false; /* another slice vacuums the table now */
	if (job->vacuum_denied) {
		job_vacuum_round(job);
		job_vacuum_denied(job);
		return false;
	}
	if (sampler_autovacuum(job->target_oid)) {
		job_vacuum_round(job);
		job_log(job, LOG_LEVEL_INFO, "autovacuum is vacuuming the table: the job does not this time");
		return false;
	}
	return true;
}

int64_t job_vacuum_batch_limit(const job_t *job, int64_t batch)
{
	throttle_settings_t s;
	int64_t left, keys;

	if (!job_vacuums(job) || job->vacuum_off || job->vacuum_denied)
		return batch;
	job_settings(job, &s);
	left = vacuum_rows_left(s.vacuum_after_percent, job->rows_changed - job->vacuum_changed_at,
				job_table_rows(job));
	keys = vacuum_batch_keys(left, batch);
	return keys < s.min_batch_size && s.min_batch_size < batch ? s.min_batch_size : keys;
}

static void job_vacuum_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	double secs = util_elapsed_s(&job->vacuum_started);
	(void)conn;

	if (!job_session_result_ok(job, res, JOB_VACUUMING))
		return;
	if (res->ok)
		job_log(job, LOG_LEVEL_INFO, "vacuumed the table in %.2f s", secs);
	else if (strcmp(res->sqlstate, "57014") == 0 && (job->stopping || job->lease_lost))
		job_log(job, LOG_LEVEL_NOTICE, "VACUUM cancelled after %.2f s: the job stops", secs);
	else if (strcmp(res->sqlstate, "57014") == 0 && job->cancel_reason == REASON_BLOCKED_SESSIONS)
		job_log(job, LOG_LEVEL_NOTICE,
			"VACUUM cancelled after %.2f s: it kept other sessions "
			"waiting; skipped this time",
			secs);
	else if (strcmp(res->sqlstate, "55P03") == 0)
		job_log(job, LOG_LEVEL_NOTICE,
			"VACUUM skipped this time: it waited lock_timeout_ms for its lock (autovacuum or "
			"DDL on the table)");
	else {
		job_log(job, LOG_LEVEL_WARNING, "VACUUM failed: %s %s; the job goes on without vacuuming",
			res->sqlstate, res->message);
		job->vacuum_off = true;
	}
	job->cancel_reason = REASON_NONE;
	job_continue(job);
}

/*
 * VACUUM the target now, alone in its request: the session's statement_timeout off (it takes as
 * long as the pages changed and the indexes take; cancelling it would waste them), its
 * lock_timeout the job's lock_timeout_ms, and while the application competes for the CPU
 * autovacuum's cost delay, set before and reset after, each a request of its own.
 */
static void job_vacuum_send(job_t *job)
{
	throttle_settings_t s;
	char lock_timeout[24], detail[160];
	bool contended = throttle_cpu_contended(&job->throttle);
	const char *timeouts[] = {"0", lock_timeout, contended ? VACUUM_CONTENDED_COST_DELAY_MS : NULL,
				  contended ? VACUUM_CONTENDED_COST_LIMIT : NULL};
	char *sql = vacuum_build(job->target_schema, job->target_table);
	pgconn_stmt_t set = {vacuum_timeouts_sql, 4, timeouts, NULL, NULL};
	pgconn_stmt_t vacuum = {sql, 0, NULL, NULL, NULL};
	pgconn_stmt_t reset[] = {{vacuum_reset_statement_timeout_sql, 0, NULL, NULL, NULL},
				 {vacuum_reset_lock_timeout_sql, 0, NULL, NULL, NULL},
				 {vacuum_reset_cost_delay_sql, 0, NULL, NULL, NULL},
				 {vacuum_reset_cost_limit_sql, 0, NULL, NULL, NULL}};
	static const job_step_t steps[] = {STEP_VACUUM};
	int64_t rows = job_table_rows(job), changed = job_vacuum_round(job);

	job_settings(job, &s);
	snprintf(lock_timeout, sizeof(lock_timeout), "%lld", (long long)s.lock_timeout_ms);
	snprintf(detail, sizeof(detail), "%lld rows changed since its last VACUUM, of about %lld%s",
		 (long long)changed, (long long)rows,
		 contended ? "; with autovacuum's cost delay, as the application competes for the CPU" : "");
	job_set_state(job, JOB_VACUUMING);
	job->cancel_reason = REASON_NONE;
	job->pace.reason = REASON_VACUUM;
	job_note_reason(job, REASON_VACUUM, detail);
	job_write_reason(job, REASON_VACUUM);
	job_report(job, true);
	clock_gettime(CLOCK_MONOTONIC, &job->vacuum_started);
	if (!job->conn || !pgconn_send(job->conn, &set, 1, NULL, NULL) ||
	    !job_session_send(job, &vacuum, steps, 1, job_vacuum_cb) ||
	    !pgconn_send(job->conn, reset, 4, NULL, NULL))
		job_session_lost(job);
	free(sql);
}

/* The VACUUM comes up to VACUUM_SETTLE_MS after the last commit (vacuum_wait_ms): a sleep first if
 * need be, after which the job decides again (and, unless held, comes back here). */
void job_vacuum(job_t *job)
{
	throttle_settings_t s;
	int64_t wait_ms;

	job_settings(job, &s);
	wait_ms = vacuum_wait_ms(job->batch_ended.tv_sec ? util_elapsed_s(&job->batch_ended) * 1000.0
							 : VACUUM_SETTLE_MS,
				 job->batch_limit, /* the last batch's keys: at least the rows it changed */
				 vacuum_threshold(s.vacuum_after_percent, job_table_rows(job)));
	/* The next batch records it, and the throttle's sleep before that batch counts from the last
	 * commit: the wait and the VACUUM are part of it. */
	pace_wait_began(&job->pace, REASON_VACUUM,
			job->batch_ended.tv_sec ? (double)job->batch_ended.tv_sec * 1000.0 +
							  (double)job->batch_ended.tv_nsec / 1e6
						: util_now_ms());
	if (wait_ms > 0) {
		job_sleep(job, JOB_PACING, wait_ms);
		return;
	}
	job_vacuum_send(job);
}

void job_vacuum_blocked(job_t *job, int64_t sessions, int64_t waited_ms)
{
	job_cancel_if_blocking(job, sessions, waited_ms, "the VACUUM's lock", "the VACUUM");
}
