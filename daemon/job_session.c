/*
 * A job's definition and its session: loading the job over the queue connection (as the daemon),
 * its settings, and its session, logged in as its run_as role: made once a connection is free,
 * lost and found again, refused a login (the job fails, saying how to allow it).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "batchsql.h"
#include "config.h"
#include "daemon.h"
#include "job_internal.h"
#include "jobkind.h"
#include "keys.h"
#include "log.h"
#include "pgconn.h"
#include "queue.h"
#include "queuesql.h"
#include "text.h"
#include "throttle.h"
#include "util.h"

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

static void job_connection_event(pgconn_t *conn, pgconn_event_t event, const char *reason, void *arg);

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

void job_clear_definition(job_t *job)
{
	free(job->target_schema);
	free(job->target_table);
	free(job->set_sql);
	free(job->where_sql);
	free(job->batch_sql);
	free(job->mismatch_sql);
	free(job->kind_sql);
	free(job->run_window);
	free(job->hold_when_sql);
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
	job->run_window = job->hold_when_sql = NULL;
	job->key_names = job->key_types = NULL;
	job->key_oids = NULL;
	job->kind_sql = NULL;
	job->nkeys = 0;
}

batch_spec_t job_spec(const job_t *job)
{
	return (batch_spec_t){.queue_schema = daemon_config()->schema,
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
void job_use_session(job_t *job)
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

/* The job is over on this instance: its session closes for good (no reconnection). */
void job_close_session(job_t *job)
{
	if (job->conn && !job->session_closed) {
		pgconn_disconnect(job->conn);
		job->session_closed = true;
		job_sessions_open--;
	}
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
	case JOB_WAITING_SAMPLER:
	case JOB_HOLD_CHECK:
	case JOB_BATCH:
	case JOB_VACUUMING:
	case JOB_PACING:
	case JOB_BACKOFF:
	case JOB_THROTTLED:
	case JOB_HELD:
		job_session_lost(job);
		break;
	case JOB_LOADING:
	case JOB_RELEASING:
	case JOB_RECORDING:
	case JOB_FINISHED:
	case JOB_STATE_COUNT:
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

/* The key columns of the job's row, from the load's keys query. */
static bool job_build_keys(job_t *job, const PGresult *keys, char *err, size_t errlen)
{
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

	return true;
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
	job->run_window = util_strdup(job_column(row, "run_window"));
	job->hold_when_sql = util_strdup(job_column(row, "hold_when_sql"));
	job->how = job_kind_info(job->kind);
	job->kind_sql = util_strdup(job_column(row, job->how->sql_column));
	if (!job->run_as || !job->kind_sql) {
		text_snprintf(err, errlen, "a %s job needs its %s and run_as", job->how->name,
			      job->how->sql_column);
		return false;
	}

	if (!job_build_keys(job, keys, err, errlen))
		return false;
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
	job->max_wal_bytes_per_s = job_column_int64(row, "max_wal_bytes_per_s", 0);

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
	job->throttle.app_watch = job->how->writes && !job->dry_run && job->parallel <= 1;
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
	job->vacuum_changed_at = job->rows_changed; /* what it changed before is not known here */
	job->loaded = true;
	job_log(job, LOG_LEVEL_INFO,
		"walking %d key column%s from %s as role %s, batch size %lld, sleep %lld ms", job->nkeys,
		job->nkeys > 1 ? "s" : "", job->last_key.n ? "the checkpoint" : "the start", job->run_as,
		(long long)job->throttle.batch_size, (long long)job->throttle.sleep_ms);
	if (job->throttle.app_watch)
		job_log(job, LOG_LEVEL_INFO,
			"busy at most 1/%.0f of the time for its first %.0f s while it measures the "
			"application's writes and CPU, longer where the application writes the table, "
			"until the CPU probes tell (at most %.0f s; not once the CPU is seen to be free)",
			1 / THROTTLE_START_DUTY, THROTTLE_APP_WARMUP_MS / 1000,
			THROTTLE_STRETCH_WAIT_MS / 1000);
}

/* The statements of job_load, in its pipeline's order. */
enum {
	LOAD_JOB,
	LOAD_KEYS,
	LOAD_SLICES
};

static void job_load_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	const PGresult *row = res->ok ? res->results[LOAD_JOB] : NULL;
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
	if (!job_build(job, row, res->results[LOAD_KEYS], err, sizeof(err)) ||
	    !job_load_slice(job, res->results[LOAD_SLICES], err, sizeof(err))) {
		job_fail(job, err);
		return;
	}
	if (job->state == JOB_FINISHED)
		return; /* its slice is done or gone */
	job->fresh = true;
	if (job->parallel > 1 && !job->dry_run && job->slice == 0 &&
	    PQntuples(res->results[LOAD_SLICES]) > 0) {
		if (job->stopping)
			job_release(job, job->stop_state, job->stop_error);
		else
			job_start_slices(job, res->results[LOAD_SLICES]); /* cut already: no session needed */
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

void job_load(job_t *job)
{
	static const queuesql_t queries[] = {QSQL_LOAD_JOB, QSQL_LOAD_KEYS, QSQL_LOAD_SLICES};
	char *sql[3];
	const char *params[] = {job->id_text};
	pgconn_stmt_t stmts[3];

	for (int i = 0; i < 3; i++) {
		sql[i] = queuesql(queries[i], daemon_config()->schema);
		stmts[i] = (pgconn_stmt_t){sql[i], 1, params, NULL, NULL};
	}
	job_set_state(job, JOB_LOADING);
	if (!job_queue_send(job, stmts, 3, job_load_cb))
		job_retry_later(job); /* the queue is down: try again */
	for (int i = 0; i < 3; i++)
		free(sql[i]);
}
