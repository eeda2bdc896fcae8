/*
 * A job's life on this instance: loading its definition over the queue connection, its own
 * session logged in as its run_as role, its timer, holding on SIGUSR1, and giving it back.
 * Batches are in job_batch.c, dry runs in job_dry.c and parallel slices in job_slices.c;
 * job_internal.h holds what they share.
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
#include "text.h"
#include "throttle.h"
#include "util.h"

#define JOB_RETRY_MS 1000 /* a request the queue connection could not take is sent again after this */

/* The job's throttle overrides: columns of the load query, and where each goes. */
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

static const char *const job_state_names[] = {
	[JOB_LOADING] = "loading",     [JOB_CONNECTING] = "connecting",
	[JOB_SPLITTING] = "splitting", [JOB_CHECKING] = "checking",
	[JOB_BATCH] = "batch",	       [JOB_SLEEPING] = "sleeping",
	[JOB_THROTTLED] = "throttled", [JOB_HELD] = "held",
	[JOB_RELEASING] = "releasing", [JOB_FINISHED] = "finished",
};

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
};
_Static_assert(sizeof(job_step_names) / sizeof(job_step_names[0]) == STEP_COUNT, "a name for each step");

static void job_connection_event(pgconn_t *conn, pgconn_event_t event, const char *reason, void *arg);
static void job_load(job_t *job);
static void job_use_session(job_t *job);
static void job_timer_cb(evutil_socket_t fd, short what, void *arg);

const char *job_state_name(job_state_t state)
{
	return (unsigned)state < sizeof(job_state_names) / sizeof(job_state_names[0]) ? job_state_names[state]
										      : "?";
}

void job_set_state(job_t *job, job_state_t state)
{
	if (job->state == state)
		return;
	if (job->state == JOB_FINISHED) { /* a finished job is only freed */
		job_log(job, LOG_LEVEL_WARNING, "refusing to go from finished to %s", job_state_name(state));
		return;
	}
	job_log(job, LOG_LEVEL_DEBUG, "%s -> %s", job_state_name(job->state), job_state_name(state));
	job->state = state;
}

/* Whether the job overrides the setting at OFFSET. */
static bool job_overrides_setting(const job_t *job, size_t offset)
{
	for (int i = 0; i < JOB_NOVERRIDES; i++)
		if (job_overrides[i].offset == offset)
			return job->has_override[i];
	return false;
}

/*
 * The configuration's throttle settings with this job's overrides applied. Where a job's bound
 * conflicts with a configured one, the job's wins (its max_batch_size under the configured
 * min_batch_size lowers the minimum). A job may not exceed the configuration's
 * statement_timeout_ms and max_sleep_ms: a submitter cannot keep a worker in one batch, or
 * asleep, longer than the operator allows.
 */
void job_settings(const job_t *job, throttle_settings_t *s)
{
	const throttle_settings_t *config = &daemon_config()->throttle;

	*s = *config;
	for (int i = 0; i < JOB_NOVERRIDES; i++)
		if (job->has_override[i])
			*(int64_t *)((char *)s + job_overrides[i].offset) = job->override[i];
	if (s->min_batch_size > s->max_batch_size) {
		if (job_overrides_setting(job, offsetof(throttle_settings_t, max_batch_size)) &&
		    !job_overrides_setting(job, offsetof(throttle_settings_t, min_batch_size)))
			s->min_batch_size = s->max_batch_size;
		else
			s->max_batch_size = s->min_batch_size;
	}
	if (s->statement_timeout_ms > config->statement_timeout_ms)
		s->statement_timeout_ms = config->statement_timeout_ms;
	if (s->max_sleep_ms > config->max_sleep_ms)
		s->max_sleep_ms = config->max_sleep_ms;
	if (s->sleep_ms > s->max_sleep_ms) {
		if (job_overrides_setting(job, offsetof(throttle_settings_t, max_sleep_ms)) ||
		    s->sleep_ms > config->max_sleep_ms)
			s->sleep_ms = s->max_sleep_ms;
		else
			s->max_sleep_ms = s->sleep_ms;
	}
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

int job_batch_backend_pid(const job_t *job)
{
	return job->state == JOB_BATCH && job->conn ? pgconn_backend_pid(job->conn) : 0;
}

bool job_cancel_batch(job_t *job)
{
	return job->state == JOB_BATCH && job->conn && pgconn_cancel(job->conn);
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
	free(job->key_oids);
	free(job->key_op_schema);
	job->target_schema = job->target_table = job->set_sql = job->where_sql = job->run_as = NULL;
	job->batch_sql = job->mismatch_sql = job->key_op_schema = NULL;
	job->key_names = job->key_types = NULL;
	job->key_oids = NULL;
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

batch_spec_t job_spec(const job_t *job)
{
	return (batch_spec_t){.kind = job->kind,
			      .queue_schema = daemon_config()->schema,
			      .target_schema = job->target_schema,
			      .target_table = job->target_table,
			      .nkeys = job->nkeys,
			      .key_names = (const char *const *)job->key_names,
			      .key_types = (const char *const *)job->key_types,
			      .key_op_schema = job->key_op_schema,
			      .set_sql = job->set_sql,
			      .where_sql = job->where_sql,
			      .mismatch_sql = job->mismatch_sql,
			      .upper = job->upper.n ? (const char *const *)job->upper.values : NULL};
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

/* Arm the timer to send the queue request of the current state again. */
static void job_retry_later(job_t *job)
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
	case JOB_SLEEPING:
		if (job->sleep_decided) /* a throttle sleep: decide again, lag may have cleared */
			job_continue(job);
		else
			job_next_batch(job);
		break;
	case JOB_THROTTLED:
		job_continue(job);
		break;
	case JOB_LOADING:
		job_load(job);
		break;
	case JOB_CONNECTING: /* waiting for a free connection */
		job_use_session(job);
		break;
	case JOB_RELEASING:
		if (job->dry_recording)
			job_dry_record(job);
		else
			job_release(job, job->release_state, job->release_error);
		break;
	case JOB_SPLITTING:
	case JOB_CHECKING:
	case JOB_BATCH:
	case JOB_HELD:
	case JOB_FINISHED:
		job_log(job, LOG_LEVEL_WARNING, "unexpected timer while %s", job_state_name(job->state));
		break;
	}
}

void job_sleep(job_t *job, int64_t ms)
{
	struct timeval tv = util_ms_to_tv(ms);

	job_set_state(job, JOB_SLEEPING);
	job->slept_ms = ms;
	evtimer_add(job->timer, &tv);
}

/* ---- the session, logged in as run_as ---- */

/*
 * Whether a failed connection attempt is the server refusing this role (authentication, pg_hba,
 * a role without LOGIN or gone, no CONNECT privilege) rather than a server that is not there or
 * not ready: only the first kind fails the job; the session retries the other.
 */
static bool job_login_refused(const char *error)
{
	static const char *const refusals[] = {
		"authentication failed",
		"no pg_hba.conf entry",
		"pg_hba.conf rejects",
		"is not permitted to log in",
		"does not exist",
		"fe_sendauth",
		"no password supplied",
		"password is required",
		"permission denied for database",
		"certificate",
	};
	for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++)
		if (error && strstr(error, refusals[i]))
			return true;
	return false;
}

/* The next step once the definition is loaded and the session is up. */
static void job_proceed(job_t *job)
{
	if (job->stopping)
		job_release(job, job->stop_state, job->stop_error);
	else if (job->parallel > 1 && !job->dry_run && job->slice == 0)
		job_split(job);
	else
		job_check(job); /* on every (re)connection: prepared statements live in the session */
}

/* Job sessions open on this instance: with the queue's and the sampler's connections, never more
 * than daemon.max_connections (a parallel job's slices wait for one). */
static int job_sessions_open;

/* Wait for the session (made now if it is the first time, and a connection is free), or go on
 * if it is up. */
static void job_use_session(job_t *job)
{
	const config_t *config = daemon_config();
	char app_name[64];
	pgconn_options_t opt;

	if (job->conn && pgconn_is_ready(job->conn)) {
		job_proceed(job);
		return;
	}
	job_set_state(job, JOB_CONNECTING);
	if (job->conn)
		return; /* it reconnects by itself; READY comes */
	if (job_sessions_open >= config->max_connections - 2) {
		if (!job->waited_for_connection)
			job_log(job, LOG_LEVEL_INFO,
				"waiting for a free connection (%d job sessions open,"
				" daemon.max_connections %lld)",
				job_sessions_open, (long long)config->max_connections);
		job->waited_for_connection = true;
		job_retry_later(job);
		return;
	}
	job_sessions_open++;
	if (job->slice > 0)
		snprintf(app_name, sizeof(app_name), "backfilld job %lld slice %d", (long long)job->id,
			 job->slice);
	else
		snprintf(app_name, sizeof(app_name), "backfilld job %lld", (long long)job->id);
	opt = (pgconn_options_t){.conninfo =
					 config->job_conninfo[0] ? config->job_conninfo : config->conninfo,
				 .user = job->run_as,
				 .session = PGCONN_SESSION_JOB,
				 .application_name = app_name,
				 .log_context = job->context,
				 .idle_in_transaction_ms = config->lease_ms,
				 .on_event = job_connection_event,
				 .arg = job};
	job->conn = pgconn_new(daemon_base(), &opt);
	pgconn_connect(job->conn);
}

/* The session broke: whatever was in flight has an unknown outcome, so the checkpoint is read
 * again before the walk goes on. */
void job_session_lost(job_t *job)
{
	job->fresh = false;
	evtimer_del(job->timer);
	job_set_state(job, JOB_CONNECTING);
}

static void job_connection_event(pgconn_t *conn, pgconn_event_t event, const char *reason, void *arg)
{
	job_t *job = arg;
	char err[1024];
	(void)conn;

	if (event == PGCONN_EVENT_READY) {
		if (job->state != JOB_CONNECTING)
			return; /* loading or releasing: that request's callback goes on */
		if (job->fresh)
			job_proceed(job);
		else
			job_load(job);
		return;
	}
	switch (job->state) {
	case JOB_CONNECTING:
		if (!job->loaded || !job_login_refused(reason))
			break;
		text_snprintf(
			err, sizeof(err),
			"28000: the job's session cannot log in as role %s: %s (backfilld runs a job's "
			"batches in"
			" a session logged in as the role that submitted it: let the daemon log in as that "
			"role,"
			" through database.job_conninfo and a pg_ident.conf map for peer or certificate"
			" authentication, or a password file; see README, Roles)",
			job->run_as, reason);
		job_fail(job, err);
		break;
	case JOB_SPLITTING:
	case JOB_CHECKING:
	case JOB_BATCH:
	case JOB_SLEEPING:
	case JOB_THROTTLED:
	case JOB_HELD:
		job_session_lost(job);
		break;
	case JOB_LOADING:
	case JOB_RELEASING:
	case JOB_FINISHED:
		break; /* queue requests; a lost session is seen again when it matters */
	}
}

/* ---- loading the definition (over the queue connection, as the daemon) ---- */

static const char *job_column(const PGresult *res, const char *name)
{
	return pgconn_value(res, 0, PQfnumber(res, name));
}

static int64_t job_column_int64(const PGresult *res, const char *name, int64_t if_null)
{
	return pgconn_int64(res, 0, PQfnumber(res, name), if_null);
}

/* Fill the definition from ROW (the job row, one row) and KEYS (its key columns, in order).
 * False, with ERR set, when the job cannot run as it stands. */
static bool job_build(job_t *job, const PGresult *row, const PGresult *keys, char *err, size_t errlen)
{
	const char *last_key = job_column(row, "last_key");

	job_clear_definition(job);
	if (!job_kind_parse(job_column(row, "kind"), &job->kind)) {
		text_snprintf(err, errlen, "unknown kind \"%s\"", job_column(row, "kind") ?: "");
		return false;
	}
	if (!job_column(row, "nspname")) {
		text_snprintf(err, errlen, "the target table no longer exists");
		return false;
	}
	job->dry_run = strcmp(job_column(row, "dry_run") ?: "f", "t") == 0;
	job->parallel = job_column_int64(row, "parallel", 1);
	job->target_oid = (uint32_t)job_column_int64(row, "target_oid", 0);
	job->target_schema = util_strdup(job_column(row, "nspname"));
	job->target_table = util_strdup(job_column(row, "relname"));
	job->set_sql = util_strdup(job_column(row, "set_sql"));
	job->where_sql = util_strdup(job_column(row, "where_sql"));
	job->run_as = util_strdup(job_column(row, "run_as"));
	job->batch_sql = util_strdup(job_column(row, "batch_sql"));
	job->mismatch_sql = util_strdup(job_column(row, "mismatch_sql"));
	if (!job->run_as || (job->kind == JOB_KIND_UPDATE && !job->set_sql) ||
	    (job->kind == JOB_KIND_STATEMENT && !job->batch_sql) ||
	    (job->kind == JOB_KIND_VERIFY && !job->mismatch_sql)) {
		text_snprintf(err, errlen,
			      "a %s job needs its SQL (set_sql, batch_sql or mismatch_sql) and run_as",
			      job_kind_name(job->kind));
		return false;
	}

	job->nkeys = PQntuples(keys);
	if (job->nkeys == 0) {
		text_snprintf(err, errlen, "the job has no key columns");
		return false;
	}
	job->key_names = calloc((size_t)job->nkeys, sizeof(char *));
	job->key_types = calloc((size_t)job->nkeys, sizeof(char *));
	job->key_oids = calloc((size_t)job->nkeys, sizeof(Oid));
	if (!job->key_names || !job->key_types || !job->key_oids)
		abort();
	for (int i = 0; i < job->nkeys; i++) {
		const char *op_schema = pgconn_value(keys, i, PQfnumber(keys, "op_schema"));
		job->key_names[i] = util_strdup(pgconn_value(keys, i, PQfnumber(keys, "name")));
		job->key_types[i] = util_strdup(pgconn_value(keys, i, PQfnumber(keys, "carrier")));
		job->key_oids[i] = (Oid)pgconn_int64(keys, i, PQfnumber(keys, "type_oid"), 0);
		if (!job->key_types[i]) {
			text_snprintf(err, errlen, "key column \"%s\" no longer exists in %s.%s",
				      job->key_names[i], job->target_schema, job->target_table);
			return false;
		}
		/* One schema for the row comparison of a composite key: the first column's, unless
		 * the columns disagree (then pg_catalog's, where the built-in types' operators are). */
		if (i == 0)
			job->key_op_schema = util_strdup(op_schema ?: "pg_catalog");
		else if (strcmp(job->key_op_schema, op_schema ?: "pg_catalog") != 0) {
			free(job->key_op_schema);
			job->key_op_schema = util_strdup("pg_catalog");
		}
	}
	job->key_numeric = strcmp(pgconn_value(keys, 0, PQfnumber(keys, "numeric")) ?: "f", "t") == 0;

	keys_clear(&job->last_key);
	if (last_key && !keys_decode(last_key, &job->last_key)) {
		text_snprintf(err, errlen, "the checkpoint last_key %s cannot be decoded", last_key);
		return false;
	}
	if (job->last_key.n != 0 && job->last_key.n != job->nkeys) {
		text_snprintf(err, errlen, "the checkpoint has %d values but the key has %d columns",
			      job->last_key.n, job->nkeys);
		return false;
	}

	for (int i = 0; i < JOB_NOVERRIDES; i++) {
		const char *v = job_column(row, job_overrides[i].column);
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

/* The walk on this instance begins: the throttle's first state. */
static void job_begin_walk(job_t *job)
{
	throttle_settings_t s;

	job_settings(job, &s);
	throttle_init(&job->throttle, &s);
	/* The application's writes on the target predict who will meet the batches' locks (not
	 * measured for a parallel job's slices, which would count each other's). */
	job->throttle.app_watch = job->kind != JOB_KIND_VERIFY && !job->dry_run && job->parallel <= 1;
	/* Before 15, other sessions' statistics reach the reader through the collector with a delay
	 * that makes the job's own writes look like the application's, now and then. */
	if (job->throttle.app_watch && queue_server_version() < 150000) {
		job->throttle.app_watch = false;
		job_log(job, LOG_LEVEL_INFO,
			"not measuring the application's writes: PostgreSQL %d's"
			" statistics cannot tell them from the job's own",
			queue_server_version() / 10000);
	}
	job->writes_pid = 0;
	job->rows_at_start = job->rows_scanned;
	job->loaded = true;
	job_log(job, LOG_LEVEL_INFO,
		"walking %d key column%s from %s as role %s, batch size %lld, sleep %lld ms", job->nkeys,
		job->nkeys > 1 ? "s" : "", job->last_key.n ? "the checkpoint" : "the start", job->run_as,
		(long long)job->throttle.batch_size, (long long)job->throttle.sleep_ms);
	if (job->throttle.app_watch)
		job_log(job, LOG_LEVEL_INFO,
			"busy at most 1/%.0f of the time for its first %.0f s while it measures the "
			"application's writes and CPU (or until the CPU is seen to be free)",
			1 / THROTTLE_START_DUTY, THROTTLE_APP_WARMUP_MS / 1000);
}

static void job_load_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	const PGresult *row = res->ok ? res->results[0] : NULL;
	const char *state, *owner;
	char err[1024];
	(void)conn;

	if (job->state != JOB_LOADING)
		return;
	if (res->broken) {
		job_retry_later(job);
		return;
	}
	if (!res->ok) {
		text_snprintf(err, sizeof(err), "%s: cannot read the job: %s", res->sqlstate, res->message);
		job_fail(job, err);
		return;
	}
	if (PQntuples(row) != 1) {
		job_log(job, LOG_LEVEL_WARNING, "the job was deleted from the queue");
		job_finish(job);
		return;
	}
	state = job_column(row, "state");
	owner = job_column(row, "owner");
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
	job->rows_scanned = job_column_int64(row, "rows_scanned", 0);
	job->rows_changed = job_column_int64(row, "rows_changed", 0);
	job->batches = job_column_int64(row, "batches", 0);
	job->rows_estimate = job_column_int64(row, "rows_estimate", -1);
	job->failed_rows = job_column_int64(row, "failed_rows", 0);
	if (!job_build(job, row, res->results[1], err, sizeof(err)) ||
	    !job_load_slice(job, res->results[2], err, sizeof(err))) {
		job_fail(job, err);
		return;
	}
	if (job->state == JOB_FINISHED)
		return; /* its slice is done or gone */
	job->fresh = true;
	if (job->parallel > 1 && !job->dry_run && job->slice == 0 && PQntuples(res->results[2]) > 0) {
		if (job->stopping)
			job_release(job, job->stop_state, job->stop_error);
		else
			job_start_slices(job, res->results[2]); /* cut already: no session needed */
		return;
	}
	if (job->parallel > 1 && job->dry_run && !job->loaded)
		job_log(job, LOG_LEVEL_NOTICE, "a dry run measures the job walked as one slice");
	/* A dry run starts over with its session: nothing of it was committed. */
	job->dry_scanned = job->dry_wal = job->dry_batches = 0;
	job->dry_started = (struct timespec){0, 0};
	if (!job->loaded)
		job_begin_walk(job);
	job_use_session(job);
}

static void job_load(job_t *job)
{
	static const char row_sql[] =
		"SELECT j.state, j.owner, j.kind, n.nspname, c.relname, c.oid::pg_catalog.int8 AS target_oid,"
		" j.set_sql, j.where_sql, j.batch_sql, j.mismatch_sql, j.run_as, j.last_key::pg_catalog.text,"
		" j.rows_scanned, j.rows_changed, j.batches, j.rows_estimate, j.failed_rows, j.dry_run, "
		"j.parallel,"
		" j.batch_size, j.min_batch_size, j.max_batch_size, j.target_batch_ms, j.sleep_ms, "
		"j.max_sleep_ms,"
		" j.max_replication_lag_bytes, j.max_replication_lag_ms, j.max_blocked_ms, j.lock_timeout_ms,"
		" j.statement_timeout_ms, j.max_failed_rows"
		" FROM %s.jobs j LEFT JOIN pg_catalog.pg_class c ON c.oid = j.target"
		" LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE j.id = "
		"$1::pg_catalog.int8";
	/* Each key column: its type as qualified SQL (the text of a key is read back as it), and the
	 * schema of its type's comparison operators (a domain's: its base type's). */
	static const char keys_sql[] =
		"SELECT k.name, a.atttypid::pg_catalog.int8 AS type_oid,"
		" pg_catalog.quote_ident(tn.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||)"
		" pg_catalog.quote_ident(t.typname) AS carrier,"
		" t.typcategory OPERATOR(pg_catalog.=) 'N' AS numeric,"
		" (SELECT n.nspname FROM pg_catalog.pg_operator o"
		"  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace"
		"  WHERE o.oprname OPERATOR(pg_catalog.=) '>' AND o.oprleft OPERATOR(pg_catalog.=) bt.oid"
		"  AND o.oprright OPERATOR(pg_catalog.=) bt.oid"
		"  ORDER BY n.nspname OPERATOR(pg_catalog.<>) 'pg_catalog' LIMIT 1) AS op_schema"
		" FROM %s.jobs j CROSS JOIN LATERAL pg_catalog.unnest(j.key_columns) WITH ORDINALITY AS "
		"k(name, ord)"
		" LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) j.target"
		" AND a.attname OPERATOR(pg_catalog.=) k.name AND a.attnum OPERATOR(pg_catalog.>) 0"
		" AND NOT a.attisdropped"
		" LEFT JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid"
		" LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid OPERATOR(pg_catalog.=) t.typnamespace"
		" LEFT JOIN pg_catalog.pg_type bt ON bt.oid OPERATOR(pg_catalog.=)"
		"  CASE WHEN t.typtype OPERATOR(pg_catalog.=) 'd' THEN t.typbasetype ELSE t.oid END"
		" WHERE j.id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 ORDER BY k.ord";
	/* A parallel job's slices, as cut for its current target and key. */
	static const char slices_sql[] =
		"SELECT s.slice, s.lower_key::pg_catalog.text, s.upper_key::pg_catalog.text,"
		" s.last_key::pg_catalog.text, s.done"
		" FROM %s.slices s JOIN %s.jobs j ON j.id OPERATOR(pg_catalog.=) s.job_id"
		" AND j.target OPERATOR(pg_catalog.=) s.target AND j.key_columns OPERATOR(pg_catalog.=) "
		"s.key_columns"
		" WHERE s.job_id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 ORDER BY s.slice";
	const char *schema = daemon_schema_quoted();
	char sql[3][2048];
	const char *params[] = {job->id_text};
	pgconn_stmt_t stmts[3];

	snprintf(sql[0], sizeof(sql[0]), row_sql, schema);
	snprintf(sql[1], sizeof(sql[1]), keys_sql, schema);
	snprintf(sql[2], sizeof(sql[2]), slices_sql, schema, schema);
	for (int i = 0; i < 3; i++)
		stmts[i] = (pgconn_stmt_t){sql[i], 1, params, NULL, NULL};
	job_set_state(job, JOB_LOADING);
	if (!job_queue_send(job, stmts, 3, job_load_cb))
		job_retry_later(job); /* the queue is down: try again */
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
	char sql[256], ids[32];
	const char *params[] = {daemon_name(), ids, reason};
	pgconn_stmt_t stmt = {sql, 3, params, NULL, NULL};

	snprintf(ids, sizeof(ids), "{%lld}", (long long)job->id);
	snprintf(sql, sizeof(sql),
		 "SELECT %s._set_reason($1::pg_catalog.text, $2::pg_catalog.int8[], $3::pg_catalog.text)",
		 daemon_schema_quoted());
	if (!job_queue_send(job, &stmt, 1, job_reason_cb))
		job_log(job, LOG_LEVEL_DEBUG, "the queue is down: throttle reason not written");
}

void job_hold(job_t *job)
{
	job_set_state(job, JOB_HELD);
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
	case JOB_LOADING:
	case JOB_CONNECTING:
	case JOB_SPLITTING:
	case JOB_CHECKING:
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
	char sql[256];
	const char *params[4];
	pgconn_stmt_t stmt = {sql, 4, params, NULL, NULL};

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
	snprintf(sql, sizeof(sql),
		 "SELECT %s._release($1::pg_catalog.int8, $2::pg_catalog.text, $3::pg_catalog.text,"
		 " $4::pg_catalog.text)",
		 daemon_schema_quoted());
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
	if (job->conn && !job->session_closed) {
		pgconn_disconnect(job->conn); /* no reconnect for a job that is over */
		job->session_closed = true;
		job_sessions_open--;
	}
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
	case JOB_SLEEPING:
	case JOB_THROTTLED:
	case JOB_HELD:
	case JOB_CONNECTING: /* the queue gives it back; the session is not needed for that */
		job_release(job, job->stop_state, job->stop_error);
		break;
	case JOB_LOADING:
	case JOB_SPLITTING:
	case JOB_CHECKING:
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
