/*
 * A job's life on this instance: its connection, its timer, loading its definition, holding on
 * SIGUSR1, and giving it back. Batches are in job_batch.c, dry runs in job_dry.c and parallel
 * slices in job_slices.c; job_internal.h holds what they share.
 */
#include "job.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "batch.h"
#include "config.h"
#include "daemon.h"
#include "job_internal.h"
#include "keys.h"
#include "log.h"
#include "metrics.h"
#include "pgconn.h"
#include "throttle.h"

/* The job's throttle overrides, in the order the load query selects them. */
static const struct {
	const char *column;
	size_t offset;
} job_overrides[] = {
	{"batch_size", offsetof(throttle_settings_t, batch_size)},
	{"min_batch_size", offsetof(throttle_settings_t, min_batch_size)},
	{"max_batch_size", offsetof(throttle_settings_t, max_batch_size)},
	{"target_batch_ms", offsetof(throttle_settings_t, target_batch_ms)},
	{"sleep_ms", offsetof(throttle_settings_t, sleep_ms)},
	{"max_sleep_ms", offsetof(throttle_settings_t, max_sleep_ms)},
	{"max_replication_lag_bytes", offsetof(throttle_settings_t, max_replication_lag_bytes)},
	{"max_replication_lag_ms", offsetof(throttle_settings_t, max_replication_lag_ms)},
	{"max_blocked_ms", offsetof(throttle_settings_t, max_blocked_ms)},
	{"lock_timeout_ms", offsetof(throttle_settings_t, lock_timeout_ms)},
	{"statement_timeout_ms", offsetof(throttle_settings_t, statement_timeout_ms)},
	{"max_failed_rows", offsetof(throttle_settings_t, max_failed_rows)},
};
_Static_assert(sizeof(job_overrides) / sizeof(job_overrides[0]) == JOB_NOVERRIDES,
	       "JOB_NOVERRIDES counts job_overrides");
#define LOAD_FIXED_COLUMNS 14 /* columns of the load query before the overrides */

static void job_connection_event(pgconn_t *conn, pgconn_event_t event, const char *reason, void *arg);
static void job_load(job_t *job);
static void job_timer_cb(evutil_socket_t fd, short what, void *arg);

static char *xstrdup_or_null(const char *s)
{
	char *d;
	if (!s)
		return NULL;
	d = strdup(s);
	if (!d)
		abort();
	return d;
}

double job_elapsed_s(const struct timespec *since)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - since->tv_sec) + (double)(now.tv_nsec - since->tv_nsec) / 1e9;
}

/* The configuration's throttle settings with this job's overrides applied. */
void job_settings(const job_t *job, throttle_settings_t *s)
{
	*s = daemon_config()->throttle;
	for (int i = 0; i < JOB_NOVERRIDES; i++)
		if (job->has_override[i])
			*(int64_t *)((char *)s + job_overrides[i].offset) = job->override[i];
	if (s->min_batch_size > s->max_batch_size)
		s->max_batch_size = s->min_batch_size;
	if (s->sleep_ms > s->max_sleep_ms)
		s->max_sleep_ms = s->sleep_ms;
}

static job_t *job_new(int64_t id, const char *target, int slice)
{
	job_t *job = calloc(1, sizeof(*job));
	const config_t *config = daemon_config();
	char app_name[64];
	pgconn_options_t opt;

	if (!job)
		abort();
	job->id = id;
	job->slice = slice;
	snprintf(job->id_text, sizeof(job->id_text), "%lld", (long long)job->id);
	snprintf(job->slice_text, sizeof(job->slice_text), "%d", slice);
	if (slice > 0) {
		snprintf(job->context, sizeof(job->context), "job %lld (%s) slice %d", (long long)job->id,
			 target ? target : "?", slice);
		snprintf(app_name, sizeof(app_name), "backfilld job %lld slice %d", (long long)job->id,
			 slice);
	} else {
		snprintf(job->context, sizeof(job->context), "job %lld (%s)", (long long)job->id,
			 target ? target : "?");
		snprintf(app_name, sizeof(app_name), "backfilld job %lld", (long long)job->id);
	}
	job->timer = evtimer_new(daemon_base(), job_timer_cb, job);
	if (!job->timer)
		abort();
	clock_gettime(CLOCK_MONOTONIC, &job->started);
	job->last_progress = job->started;

	opt = (pgconn_options_t){.conninfo = config->conninfo,
				 .application_name = app_name,
				 .log_context = job->context,
				 .idle_in_transaction_ms = config->lease_ms,
				 .on_event = job_connection_event,
				 .arg = job};
	job->conn = pgconn_new(daemon_base(), &opt);
	job->state = JOB_CONNECTING;
	return job;
}

job_t *job_start(const PGresult *res, int row)
{
	job_t *job = job_new(pgconn_int64(res, row, PQfnumber(res, "id"), 0),
			     pgconn_value(res, row, PQfnumber(res, "target")), 0);

	job_log(job, LOG_LEVEL_INFO, "claimed (%s rows scanned so far)",
		pgconn_value(res, row, PQfnumber(res, "rows_scanned")) ?: "0");
	pgconn_connect(job->conn);
	return job;
}

job_t *job_start_slice(int64_t id, const char *target, int slice)
{
	job_t *job = job_new(id, target, slice);

	pgconn_connect(job->conn);
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

int job_batch_backend_pid(const job_t *job)
{
	return job->state == JOB_BATCH ? pgconn_backend_pid(job->conn) : 0;
}

static void job_clear_definition(job_t *job)
{
	free(job->target_schema);
	free(job->target_table);
	free(job->set_sql);
	free(job->where_sql);
	free(job->batch_sql);
	free(job->mismatch_sql);
	free(job->run_as);
	for (int i = 0; i < job->nkeys; i++) {
		free(job->key_names[i]);
		free(job->key_types[i]);
	}
	free(job->key_names);
	free(job->key_types);
	free(job->sql_first);
	free(job->sql_next);
	free(job->sql_checkpoint);
	free(job->sql_peek_first);
	free(job->sql_peek_next);
	job->target_schema = job->target_table = job->set_sql = job->where_sql = job->run_as = NULL;
	job->batch_sql = job->mismatch_sql = NULL;
	job->key_names = job->key_types = NULL;
	job->sql_first = job->sql_next = job->sql_checkpoint = job->sql_peek_first = job->sql_peek_next =
		NULL;
	job->nkeys = 0;
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
	r = (metrics_job_report_t){.id = job->id,
				   .target = target,
				   .rows_scanned = job->rows_scanned,
				   .rows_changed = job->rows_changed,
				   .batches = job->batches,
				   .batch_size = job->throttle.batch_size,
				   .sleep_ms = job->slept_ms,
				   .throttled_reason =
					   job->state == JOB_HELD ? "paused_by_signal" : job->reason,
				   .running = running};
	metrics_job(&r);
}

/* ---- timer ---- */

static void job_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	job_t *job = arg;
	(void)fd;
	(void)what;

	switch (job->state) {
	case JOB_SLEEPING:
		if (job->sleep_decided) /* a throttle sleep: decide again, lag may have cleared */
			job_continue(job);
		else
			job_next_batch(job);
		break;
	case JOB_THROTTLED:
		job_continue(job);
		break;
	case JOB_CONNECTING:
	case JOB_SPLITTING:
	case JOB_CHECKING:
	case JOB_LOADING:
	case JOB_BATCH:
	case JOB_HELD:
	case JOB_RELEASING:
	case JOB_FINISHED:
		job_log(job, LOG_LEVEL_WARNING, "unexpected timer in state %d", (int)job->state);
		break;
	}
}

void job_sleep(job_t *job, int64_t ms)
{
	struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};

	job->state = JOB_SLEEPING;
	job->slept_ms = ms;
	evtimer_add(job->timer, &tv);
}

/* ---- connection ---- */

static void job_connection_event(pgconn_t *conn, pgconn_event_t event, const char *reason, void *arg)
{
	job_t *job = arg;
	(void)conn;

	switch (event) {
	case PGCONN_EVENT_READY:
		switch (job->state) {
		case JOB_CONNECTING:
			job_load(job);
			break;
		case JOB_RELEASING:
			if (job->dry_recording)
				job_dry_record(job);
			else
				job_release(job, job->release_state, job->release_error);
			break;
		case JOB_SPLITTING:
		case JOB_CHECKING:
		case JOB_LOADING:
		case JOB_BATCH:
		case JOB_SLEEPING:
		case JOB_THROTTLED:
		case JOB_HELD:
		case JOB_FINISHED:
			job_log(job, LOG_LEVEL_WARNING, "connection ready in unexpected state %d",
				(int)job->state);
			break;
		}
		break;
	case PGCONN_EVENT_LOST:
		switch (job->state) {
		case JOB_RELEASING:
		case JOB_FINISHED:
			break; /* the release is retried once connected again */
		case JOB_SLEEPING:
		case JOB_THROTTLED:
		case JOB_HELD:
			evtimer_del(job->timer);
			/* fall through */
		case JOB_CONNECTING:
		case JOB_SPLITTING:
		case JOB_CHECKING:
		case JOB_LOADING:
		case JOB_BATCH:
			if (job->stopping) {
				job_log(job, LOG_LEVEL_WARNING,
					"connection lost during shutdown (%s): the lease will expire by "
					"itself",
					reason);
				job_finish(job);
				return;
			}
			/* Whether a batch in flight committed is read back from the queue once connected. */
			job->state = JOB_CONNECTING;
			job->held_reason_set = false;
			break;
		}
		break;
	}
}

/* ---- loading ---- */

/* The job's definition as the SQL builder takes it. */
batch_spec_t job_spec(const job_t *job)
{
	return (batch_spec_t){.kind = job->kind,
			      .target_schema = job->target_schema,
			      .target_table = job->target_table,
			      .nkeys = job->nkeys,
			      .key_names = (const char *const *)job->key_names,
			      .key_types = (const char *const *)job->key_types,
			      .set_sql = job->set_sql,
			      .where_sql = job->where_sql,
			      .batch_sql = job->batch_sql,
			      .mismatch_sql = job->mismatch_sql,
			      .upper = job->upper.n ? (const char *const *)job->upper.values : NULL};
}

/* The statements of its batches (after the definition, the checkpoint and a slice's bounds). */
void job_build_sql(job_t *job)
{
	batch_spec_t spec = job_spec(job);

	free(job->sql_first);
	free(job->sql_next);
	free(job->sql_checkpoint);
	free(job->sql_peek_first);
	free(job->sql_peek_next);
	job->sql_first = batch_build_call(&spec, BATCH_FN_FIRST);
	job->sql_next = batch_build_call(&spec, BATCH_FN_NEXT);
	job->sql_checkpoint = batch_build_checkpoint(daemon_config()->schema);
	job->sql_peek_first = batch_build_call(&spec, BATCH_FN_PEEK_FIRST);
	job->sql_peek_next = batch_build_call(&spec, BATCH_FN_PEEK_NEXT);
}

static bool job_build(job_t *job, const PGresult *row, const PGresult *keys, char *err, size_t errlen)
{
	const char *kind = pgconn_value(row, 0, 2);
	const char *last_key = pgconn_value(row, 0, 8);

	job_clear_definition(job);
	if (!job_kind_parse(kind, &job->kind)) {
		snprintf(err, errlen, "unknown kind \"%s\"", kind ? kind : "");
		return false;
	}

	if (!pgconn_value(row, 0, 3)) {
		snprintf(err, errlen, "the target table no longer exists");
		return false;
	}
	job->dry_run = strcmp(pgconn_value(row, 0, LOAD_FIXED_COLUMNS + JOB_NOVERRIDES) ?: "f", "t") == 0;
	job->parallel = pgconn_int64(row, 0, LOAD_FIXED_COLUMNS + JOB_NOVERRIDES + 1, 1);
	job->target_oid = (uint32_t)pgconn_int64(row, 0, LOAD_FIXED_COLUMNS + JOB_NOVERRIDES + 2, 0);
	job->target_schema = xstrdup_or_null(pgconn_value(row, 0, 3));
	job->target_table = xstrdup_or_null(pgconn_value(row, 0, 4));
	job->set_sql = xstrdup_or_null(pgconn_value(row, 0, 5));
	job->where_sql = xstrdup_or_null(pgconn_value(row, 0, 6));
	job->run_as = xstrdup_or_null(pgconn_value(row, 0, 7));
	job->batch_sql = xstrdup_or_null(pgconn_value(row, 0, LOAD_FIXED_COLUMNS + JOB_NOVERRIDES + 4));
	job->mismatch_sql = xstrdup_or_null(pgconn_value(row, 0, LOAD_FIXED_COLUMNS + JOB_NOVERRIDES + 5));
	if (!job->run_as || (job->kind == JOB_KIND_UPDATE && !job->set_sql) ||
	    (job->kind == JOB_KIND_STATEMENT && !job->batch_sql) ||
	    (job->kind == JOB_KIND_VERIFY && !job->mismatch_sql)) {
		snprintf(err, errlen,
			 "a %s job needs its SQL (set_sql, batch_sql or mismatch_sql) and run_as",
			 job_kind_name(job->kind));
		return false;
	}

	job->nkeys = PQntuples(keys);
	if (job->nkeys == 0) {
		snprintf(err, errlen, "the job has no key columns");
		return false;
	}
	job->key_names = calloc((size_t)job->nkeys, sizeof(char *));
	job->key_types = calloc((size_t)job->nkeys, sizeof(char *));
	if (!job->key_names || !job->key_types)
		abort();
	for (int i = 0; i < job->nkeys; i++) {
		job->key_names[i] = xstrdup_or_null(pgconn_value(keys, i, 0));
		job->key_types[i] = xstrdup_or_null(pgconn_value(keys, i, 1));
		if (!job->key_types[i]) {
			snprintf(err, errlen, "key column \"%s\" no longer exists in %s.%s",
				 job->key_names[i], job->target_schema, job->target_table);
			return false;
		}
	}

	keys_clear(&job->last_key);
	if (last_key && !keys_decode(last_key, &job->last_key)) {
		snprintf(err, errlen, "the checkpoint last_key %s cannot be decoded", last_key);
		return false;
	}
	if (job->last_key.n != 0 && job->last_key.n != job->nkeys) {
		snprintf(err, errlen, "the checkpoint has %d values but the key has %d columns",
			 job->last_key.n, job->nkeys);
		return false;
	}

	for (int i = 0; i < JOB_NOVERRIDES; i++) {
		const char *v = pgconn_value(row, 0, LOAD_FIXED_COLUMNS + i);
		job->has_override[i] = v != NULL;
		job->override[i] = v ? strtoll(v, NULL, 10) : 0;
	}

	if (job->slice > 0)
		snprintf(job->context, sizeof(job->context), "job %lld (%s.%s) slice %d/%lld",
			 (long long)job->id, job->target_schema, job->target_table, job->slice,
			 (long long)job->parallel);
	else
		snprintf(job->context, sizeof(job->context), "job %lld (%s.%s)", (long long)job->id,
			 job->target_schema, job->target_table);
	return true;
}

static void job_load_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	const char *state, *owner;
	char err[512];
	throttle_settings_t s;
	(void)conn;

	if (job->state != JOB_LOADING)
		return;
	if (res->broken) {
		job->state = JOB_CONNECTING;
		return;
	}
	if (!res->ok) {
		job_log(job, LOG_LEVEL_ERROR, "cannot read the job: %s %s", res->sqlstate, res->message);
		snprintf(err, sizeof(err), "%s: cannot read the job: %s", res->sqlstate, res->message);
		job_release(job, "failed", err);
		return;
	}
	if (PQntuples(res->results[0]) != 1) {
		job_log(job, LOG_LEVEL_WARNING, "the job was deleted from the queue");
		job_finish(job);
		return;
	}
	state = pgconn_value(res->results[0], 0, 0);
	owner = pgconn_value(res->results[0], 0, 1);
	if (!owner || strcmp(owner, daemon_name()) != 0) {
		job_log(job, LOG_LEVEL_WARNING, "lease lost: the job is owned by %s now",
			owner ? owner : "nobody");
		job->lease_lost = true;
		job_finish(job);
		return;
	}
	if (strcmp(state, "running") != 0) {
		job_log(job, LOG_LEVEL_INFO, "state is %s: giving it back", state);
		job_release(job, state, NULL);
		return;
	}
	job->rows_scanned = pgconn_int64(res->results[0], 0, 9, 0);
	job->rows_changed = pgconn_int64(res->results[0], 0, 10, 0);
	job->batches = pgconn_int64(res->results[0], 0, 11, 0);
	job->rows_estimate = pgconn_int64(res->results[0], 0, 12, -1);
	job->failed_rows = pgconn_int64(res->results[0], 0, LOAD_FIXED_COLUMNS + JOB_NOVERRIDES + 3, 0);
	if (!job_build(job, res->results[0], res->results[1], err, sizeof(err)) ||
	    !job_load_slice(job, res->results[2], err, sizeof(err))) {
		job_log(job, LOG_LEVEL_ERROR, "%s", err);
		job_release(job, "failed", err);
		return;
	}
	if (job->parallel > 1 && !job->dry_run && job->slice == 0) {
		if (job->stopping)
			job_release(job, job->stop_state, job->stop_error);
		else if (PQntuples(res->results[2]) == 0)
			job_split(job);
		else
			job_start_slices(job, res->results[2]);
		return;
	}
	if (job->state == JOB_FINISHED)
		return; /* its slice is done or gone */
	if (job->parallel > 1 && job->dry_run && !job->loaded)
		job_log(job, LOG_LEVEL_NOTICE, "a dry run measures the job walked as one slice");
	/* A dry run starts over with its session: nothing of it was committed. */
	job->dry_scanned = job->dry_wal = job->dry_batches = 0;
	job->dry_started = (struct timespec){0, 0};
	job_settings(job, &s);
	if (!job->loaded) {
		throttle_init(&job->throttle, &s);
		/* The application's writes on the target predict who will meet the batches' locks
		 * (not measured for a parallel job's slices, which would count each other's). */
		job->throttle.app_watch = job->kind != JOB_KIND_VERIFY && !job->dry_run && job->parallel <= 1;
		job->writes_pid = 0;
		job->rows_at_start = job->rows_scanned;
		job->loaded = true;
		job_log(job, LOG_LEVEL_INFO,
			"walking %d key column%s from %s, batch size %lld, sleep %lld ms", job->nkeys,
			job->nkeys > 1 ? "s" : "", job->last_key.n ? "the checkpoint" : "the start",
			(long long)job->throttle.batch_size, (long long)job->throttle.sleep_ms);
		if (job->throttle.app_watch)
			job_log(job, LOG_LEVEL_INFO,
				"busy at most 1/%.0f of the time for its first %.0f s while it measures the "
				"application's writes and CPU (or until the CPU is seen to be free)",
				1 / THROTTLE_START_DUTY, THROTTLE_APP_WARMUP_MS / 1000);
	}
	if (job->stopping)
		job_release(job, job->stop_state, job->stop_error);
	else
		job_check(job); /* on every (re)connection: the functions live in the session */
}

static void job_load(job_t *job)
{
	char *schema = (char *)daemon_schema_quoted();
	char row_sql[2048], keys_sql[1024], slices_sql[512];
	const char *params[] = {job->id_text};
	pgconn_stmt_t stmts[3];

	snprintf(
		row_sql, sizeof(row_sql),
		"SELECT j.state, j.owner, j.kind, n.nspname, c.relname, j.set_sql, j.where_sql, j.run_as,"
		" j.last_key::text, j.rows_scanned, j.rows_changed, j.batches, j.rows_estimate, j.name,"
		" j.batch_size, j.min_batch_size, j.max_batch_size, j.target_batch_ms, j.sleep_ms, "
		"j.max_sleep_ms,"
		" j.max_replication_lag_bytes, j.max_replication_lag_ms, j.max_blocked_ms, j.lock_timeout_ms,"
		" j.statement_timeout_ms, j.max_failed_rows, j.dry_run, j.parallel, c.oid, j.failed_rows,"
		" j.batch_sql, j.mismatch_sql"
		" FROM %s.jobs j LEFT JOIN pg_catalog.pg_class c ON c.oid = j.target"
		" LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE j.id = $1",
		schema);
	snprintf(keys_sql, sizeof(keys_sql),
		 "SELECT k.name, pg_catalog.format_type(a.atttypid, a.atttypmod)"
		 " FROM %s.jobs j CROSS JOIN LATERAL unnest(j.key_columns) WITH ORDINALITY AS k(name, ord)"
		 " LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = j.target AND a.attname = k.name"
		 " AND a.attnum > 0 AND NOT a.attisdropped WHERE j.id = $1 ORDER BY k.ord",
		 schema);
	/* A parallel job's slices, as cut for its current target and key. */
	snprintf(slices_sql, sizeof(slices_sql),
		 "SELECT s.slice, s.lower_key::text, s.upper_key::text, s.last_key::text, s.done"
		 " FROM %s.slices s JOIN %s.jobs j ON j.id = s.job_id AND j.target = s.target"
		 " AND j.key_columns = s.key_columns WHERE s.job_id = $1 ORDER BY s.slice",
		 schema, schema);
	stmts[0] = (pgconn_stmt_t){row_sql, 1, params};
	stmts[1] = (pgconn_stmt_t){keys_sql, 1, params};
	stmts[2] = (pgconn_stmt_t){slices_sql, 1, params};
	job->state = JOB_LOADING;
	if (!pgconn_send(job->conn, stmts, 3, job_load_cb, job))
		job->state = JOB_CONNECTING;
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

/* Write throttled_reason now (not only at the next checkpoint): a held job has none. */
void job_write_reason(job_t *job, const char *reason)
{
	char sql[256];
	char ids[32];
	const char *params[] = {daemon_name(), ids, reason};
	pgconn_stmt_t stmt = {sql, 3, params};

	snprintf(ids, sizeof(ids), "{%lld}", (long long)job->id);
	snprintf(sql, sizeof(sql), "SELECT %s._set_reason($1, $2::bigint[], $3)", daemon_schema_quoted());
	if (!pgconn_send(job->conn, &stmt, 1, job_reason_cb, job))
		job_log(job, LOG_LEVEL_DEBUG, "not connected: throttle reason not written");
}

void job_hold(job_t *job)
{
	job->state = JOB_HELD;
	job_report(job, true);
	if (!job->held_reason_set) {
		job_write_reason(job, "paused_by_signal");
		job->held_reason_set = true;
		job_log(job, LOG_LEVEL_INFO, "held: paused by signal");
	}
}

void job_pause_changed(job_t *job)
{
	switch (job->state) {
	case JOB_SLEEPING:
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
			job_write_reason(job, NULL);
			job->slept_ms = 0;
			job_continue(job);
		}
		break;
	case JOB_CONNECTING:
	case JOB_SPLITTING:
	case JOB_CHECKING:
	case JOB_LOADING:
	case JOB_BATCH:
	case JOB_RELEASING:
	case JOB_FINISHED:
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
	if (res->broken)
		return; /* retried when the connection is back */
	if (!res->ok) {
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
	char sql[256];
	const char *params[4];
	pgconn_stmt_t stmt = {sql, 4, params};

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
	job->state = JOB_RELEASING;
	job->release_state = state;
	if (error != job->release_error) {
		free(job->release_error);
		job->release_error = xstrdup_or_null(error);
	}
	params[0] = job->id_text;
	params[1] = daemon_name();
	params[2] = job->release_state;
	params[3] = job->release_error;
	snprintf(sql, sizeof(sql), "SELECT %s._release($1::bigint, $2, $3, $4)", daemon_schema_quoted());
	if (!pgconn_send(job->conn, &stmt, 1, job_release_cb, job)) {
		if (job->stopping) {
			job_log(job, LOG_LEVEL_WARNING, "not connected: the lease will expire by itself");
			job_finish(job);
		}
		/* else: sent again once the connection is back (JOB_RELEASING on READY) */
	}
}

/* The job cannot go on: say why once, and give it back as failed with that last_error. */
void job_fail(job_t *job, const char *error)
{
	job_log(job, LOG_LEVEL_ERROR, "failed: %s", error);
	job_release(job, "failed", error);
}

void job_finish(job_t *job)
{
	evtimer_del(job->timer);
	pgconn_disconnect(job->conn); /* no reconnect for a job that is over */
	if (job->loaded && !job->quiet)
		job_report(job, false);
	job->state = JOB_FINISHED;
	daemon_job_finished(job);
}

/* No new batch: give the job back as STATE at the next boundary. "failed" wins over any other
 * state asked for; otherwise the first one stays. */
static void job_stop_as(job_t *job, const char *state, const char *error)
{
	if (!job->stop_state || (strcmp(state, "failed") == 0 && strcmp(job->stop_state, "failed") != 0)) {
		job->stop_state = state;
		free(job->stop_error);
		job->stop_error = xstrdup_or_null(error);
	}
	job->stopping = true;
	switch (job->state) {
	case JOB_SLEEPING:
	case JOB_THROTTLED:
	case JOB_HELD:
		job_release(job, job->stop_state, job->stop_error);
		break;
	case JOB_CONNECTING:
		if (daemon_stopping()) {
			job_log(job, LOG_LEVEL_WARNING,
				"not connected at shutdown: the lease will expire by itself");
			job_finish(job);
		}
		break; /* else: given back once connected again */
	case JOB_SPLITTING:
	case JOB_CHECKING:
	case JOB_LOADING:
	case JOB_BATCH:
	case JOB_RELEASING:
	case JOB_FINISHED:
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

	if (job->state == JOB_FINISHED || job->state == JOB_RELEASING)
		return;
	if (!ours) {
		job_log(job, LOG_LEVEL_WARNING, "lease lost: the job is %s now",
			owner ? owner : "not owned by anyone");
		job->lease_lost = true;
		if (job->state != JOB_BATCH) /* a batch in flight fails its fence by itself */
			job_finish(job);
		return;
	}
	if (state && strcmp(state, "running") != 0 &&
	    (job->state == JOB_SLEEPING || job->state == JOB_THROTTLED || job->state == JOB_HELD)) {
		job_log(job, LOG_LEVEL_INFO, "%s by a user", state);
		job_release(job, state, NULL);
	}
}
