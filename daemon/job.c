/*
 * A job's life on this instance. Each job has its own connection and one explicit state;
  * every batch is one pipeline (BEGIN, timeouts, the batch function, the checkpoint,
 * COMMIT), so the checkpoint commits with the rows it covers or not at all.
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
#include "keys.h"
#include "log.h"
#include "metrics.h"

#include "pgconn.h"
#include "sampler.h"

#include "throttle.h"

typedef enum job_state {
	JOB_CONNECTING, /* waiting for its connection, first or after a loss */
	JOB_LOADING,	/* reading its row and key metadata */
	JOB_SPLITTING,	/* a parallel job's first runner cuts the key range into slices */
	JOB_CHECKING,	/* creating its batch functions as its role, before touching any row */
	JOB_BATCH,	/* a batch pipeline in flight */
	JOB_SLEEPING,	/* between batches, or backing off before a retry */
	JOB_THROTTLED,	/* held by the throttle (lag, a missing standby, autovacuum): decide again soon */
	JOB_HELD,	/* paused by signal */
	JOB_RELEASING,	/* giving the job back (pending, failed, or a user's state) */
	JOB_FINISHED,	/* nothing more to do; the daemon frees it */
} job_state_t;

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
#define NOVERRIDES ((int)(sizeof(job_overrides) / sizeof(job_overrides[0])))
#define LOAD_FIXED_COLUMNS 14 /* columns of the load query before the overrides */

struct job {
	int64_t id;
	char id_text[24];
	/* A parallel job runs as one runner per slice, each a job_t of its own with the same id: slice
	 * 1..N. Slice 0 is the whole job, or the runner that cuts a parallel job and starts the others. */
	int slice;
	char slice_text[16];
	int64_t parallel;
	jobkey_t upper;	   /* a slice's last key; n == 0: to the end */
	char context[160]; /* log prefix: "job 12 (public.users)" */
	job_state_t state;
	pgconn_t *conn;
	struct event *timer;

	/* The definition, from the queue. */
	bool loaded;
	job_kind_t kind;
	char *target_schema, *target_table;
	char *set_sql, *where_sql, *batch_sql, *mismatch_sql, *run_as;
	bool dry_run; /* measure in transactions that roll back, estimate, change nothing */
	uint32_t target_oid;
	int nkeys;
	char **key_names, **key_types;
	bool has_override[NOVERRIDES];
	int64_t override[NOVERRIDES];
	char *sql_first, *sql_next, *sql_checkpoint, *sql_peek_first, *sql_peek_next;

	/* Progress, as committed. */
	jobkey_t last_key; /* n == 0 before the first batch */
	int64_t rows_scanned, rows_changed, batches, rows_estimate, failed_rows;

	/* Bisecting a batch that failed on its data. */
	int64_t bisect_left; /* keys still to walk in small steps; 0 when not bisecting */
	int64_t bisect_size; /* the size of the next step */
	char skip_sqlstate[8];
	int checkpoint_at; /* where the checkpoint stands in the batch pipeline */

	/* A dry run, measured in memory: nothing of it is committed. */
	struct timespec dry_started;
	int64_t dry_scanned, dry_wal, dry_batches;
	char skip_message[512];

	/* The walk on this instance. */
	throttle_state_t throttle;
	int64_t batch_limit;	   /* the size of the batch in flight */
	int64_t slept_ms;	   /* the pause that preceded it */
	const char *reason;	   /* throttled_reason for the next checkpoint (NULL: running freely) */
	const char *logged_reason; /* the reason last logged: a change is logged once */
	const char *cancel_reason; /* why we asked the server to cancel the batch in flight */
	struct timespec batch_started;
	struct timespec sleep_started; /* when the throttle's current sleep began */
	bool sleep_decided;	       /* sleeping because the throttle said so (not a retry backoff) */
	const char *hold_reason;       /* NULL when not held */
	struct timespec batch_ended;   /* when the last batch committed: its successor records the wait */
	int64_t batch_blocked;	       /* most sessions seen blocked by the batch in flight */
	int64_t batch_waited_ms;       /* the longest wait on its locks the sampler saw */
	bool contended;		       /* the last batch made others wait: its successor says so */
	throttle_input_t input;	       /* what the throttle saw before the batch in flight */
	struct timespec started, last_progress;
	int64_t rows_at_start;

	/* Modes. */
	bool stopping;		   /* no new batch: give the job back (stop_state) at the next boundary */
	const char *stop_state;	   /* "pending" at shutdown; a sibling slice's state when it stopped */
	char *stop_error;	   /* with "failed" */
	bool quiet;		   /* a runner that leaves while its job goes on: not "stopped" in metrics */
	bool lease_lost;	   /* another instance owns it: write nothing more */
	bool held_reason_set;	   /* paused_by_signal is written in the queue */
	const char *release_state; /* what RELEASING asks for */
	char *release_error;
};

static void job_connection_event(pgconn_t *conn, pgconn_event_t event, const char *reason, void *arg);
static void job_load(job_t *job);
static void job_next_batch(job_t *job);
static void job_release(job_t *job, const char *state, const char *error);
static void job_fail(job_t *job, const char *error);
static void job_finish(job_t *job);
static void job_hold(job_t *job);
static void job_timer_cb(evutil_socket_t fd, short what, void *arg);
static void job_continue(job_t *job);
static void job_check(job_t *job);
static void job_batch_failed(job_t *job, const pgconn_result_t *res);
static void job_dry_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg);

static void job_write_reason(job_t *job, const char *reason);

#define job_log(job, level, ...) log_msg(level, (job)->context, __VA_ARGS__)

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

static double elapsed_s(const struct timespec *since)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - since->tv_sec) + (double)(now.tv_nsec - since->tv_nsec) / 1e9;
}

/* The configuration's throttle settings with this job's overrides applied. */
static void job_settings(const job_t *job, throttle_settings_t *s)
{
	*s = daemon_config()->throttle;
	for (int i = 0; i < NOVERRIDES; i++)
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
static void job_report(const job_t *job, bool running)
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

static void job_sleep(job_t *job, int64_t ms)
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
static batch_spec_t job_spec(const job_t *job)
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
static void job_build_sql(job_t *job)
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
	job->dry_run = strcmp(pgconn_value(row, 0, LOAD_FIXED_COLUMNS + NOVERRIDES) ?: "f", "t") == 0;
	job->parallel = pgconn_int64(row, 0, LOAD_FIXED_COLUMNS + NOVERRIDES + 1, 1);
	job->target_oid = (uint32_t)pgconn_int64(row, 0, LOAD_FIXED_COLUMNS + NOVERRIDES + 2, 0);
	job->target_schema = xstrdup_or_null(pgconn_value(row, 0, 3));
	job->target_table = xstrdup_or_null(pgconn_value(row, 0, 4));
	job->set_sql = xstrdup_or_null(pgconn_value(row, 0, 5));
	job->where_sql = xstrdup_or_null(pgconn_value(row, 0, 6));
	job->run_as = xstrdup_or_null(pgconn_value(row, 0, 7));
	job->batch_sql = xstrdup_or_null(pgconn_value(row, 0, LOAD_FIXED_COLUMNS + NOVERRIDES + 4));
	job->mismatch_sql = xstrdup_or_null(pgconn_value(row, 0, LOAD_FIXED_COLUMNS + NOVERRIDES + 5));
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

	for (int i = 0; i < NOVERRIDES; i++) {
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

/* ---- parallel slices ---- */

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
static bool job_load_slice(job_t *job, const PGresult *slices, char *err, size_t errlen)
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
static void job_start_slices(job_t *job, const PGresult *slices)
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
static void job_split(job_t *job)
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
	job->failed_rows = pgconn_int64(res->results[0], 0, LOAD_FIXED_COLUMNS + NOVERRIDES + 3, 0);
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
		job->rows_at_start = job->rows_scanned;
		job->loaded = true;
		job_log(job, LOG_LEVEL_INFO,
			"walking %d key column%s from %s, batch size %lld, sleep %lld ms", job->nkeys,
			job->nkeys > 1 ? "s" : "", job->last_key.n ? "the checkpoint" : "the start",
			(long long)job->throttle.batch_size, (long long)job->throttle.sleep_ms);
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
static void job_write_reason(job_t *job, const char *reason)
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

static void job_hold(job_t *job)
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
		job->state = JOB_CONNECTING;
		return;
	}
	if (!res->ok) {
		if (strcmp(res->sqlstate, "BFL01") == 0) {
			job_log(job, LOG_LEVEL_WARNING, "lease lost while skipping a row");
			job->lease_lost = true;
			job_finish(job);
			return;
		}
		snprintf(err, sizeof(err), "%s: %s (skipping a failing row)", res->sqlstate, res->message);
		job_fail(job, err);
		return;
	}
	job->failed_rows = pgconn_int64(res->results[3], 0, 0, job->failed_rows);
	job->rows_scanned++;
	keys_clear(&job->last_key);
	if (!keys_decode(pgconn_value(res->results[2], 0, 0), &job->last_key)) {
		job_release(job, "failed", "cannot decode the key of a skipped row");
		return;
	}
	job_log(job, LOG_LEVEL_NOTICE, "skipped row %s: %s %s (%lld failed rows so far)",
		pgconn_value(res->results[2], 0, 0), job->skip_sqlstate, job->skip_message,
		(long long)job->failed_rows);
	if (--job->bisect_left <= 0)
		job->bisect_left = 0;
	job_continue(job);
}

/* One row fails alone: record it in failed_rows and move the checkpoint past it. */
static void job_skip_row(job_t *job, const char *sqlstate, const char *message)
{
	char lease[24];
	const char *open_params[2], *skip_params[6];
	char stmt_timeout[24], lock_timeout[24];
	pgconn_stmt_t stmts[5];
	char skip_sql[256];
	throttle_settings_t s;
	bool first = job->last_key.n == 0;

	job_settings(job, &s);
	snprintf(job->skip_sqlstate, sizeof(job->skip_sqlstate), "%s", sqlstate);
	snprintf(job->skip_message, sizeof(job->skip_message), "%s", message);
	snprintf(stmt_timeout, sizeof(stmt_timeout), "%lld", (long long)s.statement_timeout_ms);
	snprintf(lock_timeout, sizeof(lock_timeout), "%lld", (long long)s.lock_timeout_ms);
	snprintf(lease, sizeof(lease), "%lld", (long long)daemon_config()->lease_ms);
	snprintf(skip_sql, sizeof(skip_sql), "SELECT %s._skip_row($1::bigint, $2, $3::int, $4, $5, $6::int)",
		 daemon_schema_quoted());
	open_params[0] = stmt_timeout;
	open_params[1] = lock_timeout;
	skip_params[0] = job->id_text;
	skip_params[1] = daemon_name();
	skip_params[2] = lease;
	skip_params[3] = job->skip_sqlstate;
	skip_params[4] = job->skip_message;
	skip_params[5] = job->slice > 0 ? job->slice_text : NULL;
	stmts[0] = (pgconn_stmt_t){"BEGIN", 0, NULL};
	stmts[1] = (pgconn_stmt_t){batch_open_sql, 2, open_params};
	stmts[2] = (pgconn_stmt_t){first ? job->sql_peek_first : job->sql_peek_next, first ? 0 : job->nkeys,
				   (const char *const *)job->last_key.values};
	stmts[3] = (pgconn_stmt_t){skip_sql, 6, skip_params};
	stmts[4] = (pgconn_stmt_t){"COMMIT", 0, NULL};
	job->state = JOB_BATCH;
	if (!pgconn_send(job->conn, stmts, 5, job_skip_cb, job))
		job->state = JOB_CONNECTING;
}

/*
 * The batch failed on its data: halve it until the failing rows stand alone, committing the
 * good ones on the way; a single failing row is recorded and skipped, up to max_failed_rows.
 * Returns false when the error is not one a row can cause.
 */
static bool job_bisect(job_t *job, const pgconn_result_t *res)
{
	throttle_settings_t s;
	char err[1024];

	if (res->failed_index != 2 || !sqlstate_is_row_error(res->sqlstate) || job->dry_run)
		return false;
	job_settings(job, &s);
	if (job->batch_limit > 1) {
		if (job->bisect_left <= 0) {
			job_log(job, LOG_LEVEL_NOTICE,
				"a batch of %lld rows failed on its data (%s %s): bisecting",
				(long long)job->batch_limit, res->sqlstate, res->message);
			job->bisect_left = job->batch_limit;
		}
		job->bisect_size = job->batch_limit / 2;
		job_next_batch(job);
		return true;
	}
	if (job->failed_rows + 1 > s.max_failed_rows) {
		snprintf(err, sizeof(err),
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
	char err[1024];
	(void)conn;

	if (job->state != JOB_CHECKING)
		return;
	if (res->broken) {
		job->state = JOB_CONNECTING;
		return;
	}
	if (!res->ok) {
		snprintf(err, sizeof(err), "%s: %s (%s for role %s, before touching any row)", res->sqlstate,
			 res->message,
			 res->failed_index < 4	  ? "checking the job's SQL"
			 : res->failed_index < 8  ? "handing the batch to its run_as role"
			 : res->failed_index == 8 ? "checking privileges"
						  : "reading the key's bounds",
			 job->run_as);
		job_fail(job, err);
		return;
	}
	if (strcmp(pgconn_value(res->results[8], 0, 0) ?: "f", "t") != 0 ||
	    strcmp(pgconn_value(res->results[8], 0, 1) ?: "f", "t") != 0) {
		snprintf(err, sizeof(err),
			 "42501: permission denied: role %s may not %s table %s.%s (checked before touching "
			 "any row)",
			 job->run_as, job->kind == JOB_KIND_UPDATE ? "read and update" : "read",
			 job->target_schema, job->target_table);
		job_fail(job, err);
		return;
	}
	job_continue(job);
}

/* Create the batch functions and hand them to run_as; check its privileges on the target. The
 * function bodies are parsed as they are created: syntax errors and unknown names show up here,
 * before any row is touched. */
static void job_check(job_t *job)
{
	char oid[16], bounds_sql[160];
	const char *check_params[2], *bounds_params[2] = {job->id_text, daemon_name()};
	pgconn_stmt_t stmts[13];
	char *sql[11] = {NULL};
	int n = 9;
	batch_spec_t spec = job_spec(job);

	for (int fn = 0; fn < 4; fn++) {
		sql[fn] = batch_build_function(&spec, (batch_function_t)fn);
		sql[4 + fn] = batch_build_function_owner(&spec, (batch_function_t)fn, job->run_as);
	}
	for (int i = 0; i < 8; i++)
		stmts[i] = (pgconn_stmt_t){sql[i], 0, NULL};
	snprintf(oid, sizeof(oid), "%u", job->target_oid);
	check_params[0] = job->run_as;
	check_params[1] = oid;
	stmts[8] = (pgconn_stmt_t){job->kind == JOB_KIND_UPDATE
					   ? "SELECT has_table_privilege($1::name, $2::oid, 'SELECT'),"
					     " has_any_column_privilege($1::name, $2::oid, 'UPDATE')"
					   : "SELECT has_table_privilege($1::name, $2::oid, 'SELECT'), true",
				   2, check_params};
	/* A numeric first key: its bounds, so progress can be told by key position. */
	if (batch_key_is_numeric(&spec)) {
		sql[8] = batch_build_function(&spec, BATCH_FN_BOUNDS);
		sql[9] = batch_build_function_owner(&spec, BATCH_FN_BOUNDS, job->run_as);
		sql[10] = batch_build_call(&spec, BATCH_FN_BOUNDS);
		snprintf(bounds_sql, sizeof(bounds_sql), "SELECT %s._set_bounds($1::bigint, $2)",
			 daemon_schema_quoted());
		for (int i = 8; i < 11; i++)
			stmts[n++] = (pgconn_stmt_t){sql[i], 0, NULL};
		stmts[n++] = (pgconn_stmt_t){bounds_sql, 2, bounds_params};
	}
	job->state = JOB_CHECKING;
	if (!pgconn_send(job->conn, stmts, n, job_check_cb, job))
		job->state = JOB_CONNECTING;
	for (int i = 0; i < 11; i++)
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

static void job_log_progress(job_t *job, bool force)
{
	struct timespec now;
	int64_t interval = daemon_config()->log_progress_interval_ms;
	double secs = elapsed_s(&job->started);
	double rate = secs > 0 ? (double)(job->rows_scanned - job->rows_at_start) / secs : 0;
	char percent[16] = "?", eta[32] = "?";

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!force) {
		double since = (double)(now.tv_sec - job->last_progress.tv_sec) +
			       (double)(now.tv_nsec - job->last_progress.tv_nsec) / 1e9;
		if (interval <= 0 || since * 1000 < (double)interval)
			return;
	}
	job->last_progress = now;
	if (job->rows_estimate > 0) {
		double p = 100.0 * (double)job->rows_scanned / (double)job->rows_estimate;
		snprintf(percent, sizeof(percent), "%.1f%%", p > 100 ? 100 : p);
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
static void job_continue(job_t *job)
{
	throttle_settings_t s;
	sampler_view_t view;
	throttle_decision_t d;

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
		job->state = JOB_THROTTLED;
		evtimer_add(job->timer, &tv);
		return;
	}
	job->input = (throttle_input_t){.lag_known = view.known,
					.lag_bytes = view.lag_bytes,
					.lag_ms = view.lag_ms,
					.hold = view.hold};
	if (!job->input.hold && s.pause_during_autovacuum && sampler_autovacuum(job->target_oid)) {
		job->input.hold = "autovacuum";
		snprintf(view.detail, sizeof(view.detail), "autovacuum is processing the table");
	}
	d = throttle_decide(&job->throttle, &s, &job->input);
	/* A retry's reason stays on the batch that retries; otherwise the throttle's applies. */
	if (d.reason || job->throttle.retries == 0)
		job->reason = d.reason;
	if (!job->reason && job->contended)
		job->reason = "blocked_sessions"; /* the size was halved for it */
	job->contended = false;
	job_note_reason(job, job->reason, view.detail);
	job_report(job, true);
	if (!d.hold && job->hold_reason && !job->reason)
		job->reason = job->hold_reason; /* the batch after a hold says why it waited */
	job->hold_reason = d.hold ? d.reason : NULL;
	if (d.hold) {
		struct timeval tv = {(time_t)(s.sample_interval_ms / 1000),
				     (suseconds_t)((s.sample_interval_ms % 1000) * 1000)};
		if (job->state != JOB_THROTTLED) {
			job_log(job, LOG_LEVEL_NOTICE, "held: %s%s%s%s", d.reason, view.detail[0] ? " (" : "",
				view.detail, view.detail[0] ? ")" : "");
			job_write_reason(job, d.reason);
		}
		job->state = JOB_THROTTLED;
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
		so_far = (int64_t)(elapsed_s(&job->sleep_started) * 1000.0);
		if (so_far < d.sleep_ms) {
			int64_t step = d.sleep_ms - so_far;
			job_sleep(job, step < s.sample_interval_ms ? step : s.sample_interval_ms);
			job->slept_ms = so_far + (step < s.sample_interval_ms ? step : s.sample_interval_ms);
			return;
		}
		job->slept_ms = so_far;
	} else {
		job->slept_ms = job->sleep_decided ? (int64_t)(elapsed_s(&job->sleep_started) * 1000.0) : 0;
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
	daemon_cancel_backend(pid);
}

static void job_sibling_contended(job_t *sibling, void *waited_ms)
{
	throttle_settings_t s;

	job_settings(sibling, &s);
	if (throttle_after_contention(&sibling->throttle, &s, *(int64_t *)waited_ms))
		sibling->contended = true;
}

static void job_batch_done(job_t *job, const pgconn_result_t *res)
{
	const PGresult *b = res->results[2], *cp = res->results[job->checkpoint_at];
	const char *last_key = pgconn_value(b, 0, 3);
	const char *state = pgconn_value(cp, 0, 0);
	int64_t scanned = pgconn_int64(b, 0, 0, 0), changed = pgconn_int64(b, 0, 1, 0);
	double duration_ms = elapsed_s(&job->batch_started) * 1000.0;
	throttle_settings_t s;

	sampler_wal_written(pgconn_int64(cp, 0, 5, 0));
	clock_gettime(CLOCK_MONOTONIC, &job->batch_ended);

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
			double secs = elapsed_s(&job->started);
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
		/* Walked past the rows that failed: the controller takes over again. */
		job->bisect_left -= scanned;
		if (job->bisect_left <= 0) {
			job->bisect_left = 0;
			job_log(job, LOG_LEVEL_NOTICE, "bisecting done: %lld failed rows so far",
				(long long)job->failed_rows);
		}
	} else {
		throttle_after_batch(&job->throttle, &s, scanned, duration_ms);
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

static void job_batch_failed(job_t *job, const pgconn_result_t *res)
{
	int i = res->failed_index;
	const char *stage = i == 0			   ? "starting the transaction"
			    : i == 1			   ? "setting the timeouts"
			    : i == 2			   ? "in the batch statement"
			    : job->dry_run		   ? "measuring a dry run; nothing was changed"
			    : i == job->checkpoint_at	   ? "in the checkpoint"
			    : i == job->checkpoint_at + 1  ? "at commit"
			    : job->kind == JOB_KIND_VERIFY ? "recording mismatches"
							   : "";
	char err[1024];
	throttle_settings_t s;

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
	if (sqlstate_is_retryable(res->sqlstate)) {
		job_settings(job, &s);
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
	snprintf(err, sizeof(err), "%s: %s (%s)", res->sqlstate, res->message, stage);
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
		job->state = JOB_CONNECTING;
		return;
	}
	if (res->ok)
		job_batch_done(job, res);
	else
		job_batch_failed(job, res);
}

static void job_next_batch(job_t *job)
{
	throttle_settings_t s;
	char stmt_timeout[24], lock_timeout[24], limit[24], lease[24], slept[24], size_now[24], sleep_now[24];
	char lag_bytes[24], lag_ms[24], blocked[24];
	const char *open_params[2], *checkpoint_params[12], *mismatch_params[1] = {job->id_text};
	const char **batch_params;
	pgconn_stmt_t stmts[6];
	char mismatches_sql[320];
	int n = 0;
	bool first = job->last_key.n == 0;

	if (job->stopping) {
		job_release(job, job->stop_state, job->stop_error);
		return;
	}
	if (daemon_paused()) {
		job_hold(job);
		return;
	}
	snprintf(mismatches_sql, sizeof(mismatches_sql),
		 "INSERT INTO %s.mismatches (job_id, key) SELECT $1::bigint, ARRAY(SELECT "
		 "jsonb_array_elements_text(e))"
		 " FROM jsonb_array_elements(nullif(current_setting('backfilld.mismatches', true), "
		 "'')::jsonb) AS e",
		 daemon_schema_quoted());
	/* What the history records as this batch's sleep: all the time since the previous one
	 * ended, sleeps and holds alike. */
	if (job->batch_ended.tv_sec)
		job->slept_ms = (int64_t)(elapsed_s(&job->batch_ended) * 1000.0);
	job_settings(job, &s);
	job->batch_limit =
		job->bisect_left > 0 && job->bisect_size > 0 ? job->bisect_size : job->throttle.batch_size;
	snprintf(stmt_timeout, sizeof(stmt_timeout), "%lld", (long long)s.statement_timeout_ms);
	snprintf(lock_timeout, sizeof(lock_timeout), "%lld", (long long)s.lock_timeout_ms);
	snprintf(limit, sizeof(limit), "%lld", (long long)job->batch_limit);
	snprintf(lease, sizeof(lease), "%lld", (long long)daemon_config()->lease_ms);
	snprintf(slept, sizeof(slept), "%lld", (long long)job->slept_ms);
	snprintf(size_now, sizeof(size_now), "%lld", (long long)job->throttle.batch_size);
	snprintf(sleep_now, sizeof(sleep_now), "%lld", (long long)job->throttle.sleep_ms);

	open_params[0] = stmt_timeout;
	open_params[1] = lock_timeout;

	batch_params = calloc((size_t)job->nkeys + 1, sizeof(char *));
	if (!batch_params)
		abort();
	for (int i = 0; i < job->last_key.n; i++)
		batch_params[i] = job->last_key.values[i];
	batch_params[first ? 0 : job->nkeys] = limit;

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
	checkpoint_params[9] = blocked; /* sessions the previous attempt blocked, when it was cancelled */
	checkpoint_params[10] = job->reason;
	checkpoint_params[11] = job->slice > 0 ? job->slice_text : NULL;

	stmts[n++] = (pgconn_stmt_t){"BEGIN", 0, NULL};
	stmts[n++] = (pgconn_stmt_t){batch_open_sql, 2, open_params};
	stmts[n++] = (pgconn_stmt_t){first ? job->sql_first : job->sql_next, first ? 1 : job->nkeys + 1,
				     batch_params};
	if (job->dry_run) {
		/* WAL is written even by a transaction that rolls back: measure it first. */
		stmts[n++] = (pgconn_stmt_t){"SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(),"
					     " current_setting('backfilld.lsn0')::pg_lsn)::bigint",
					     0, NULL};
		stmts[n++] = (pgconn_stmt_t){"ROLLBACK", 0, NULL};
	} else {
		if (job->kind == JOB_KIND_VERIFY)
			stmts[n++] = (pgconn_stmt_t){mismatches_sql, 1, mismatch_params};
		job->checkpoint_at = n;
		stmts[n++] = (pgconn_stmt_t){job->sql_checkpoint, 12, checkpoint_params};
		stmts[n++] = (pgconn_stmt_t){"COMMIT", 0, NULL};
	}

	job->state = JOB_BATCH;
	job->cancel_reason = NULL;
	clock_gettime(CLOCK_MONOTONIC, &job->batch_started);
	if (job->dry_run && job->dry_started.tv_sec == 0)
		job->dry_started = job->batch_started;
	if (!pgconn_send(job->conn, stmts, n, job->dry_run ? job_dry_cb : job_batch_cb, job))
		job->state = JOB_CONNECTING; /* the loss is being handled; the load resumes it */
	free(batch_params);
}

/* ---- dry runs ---- */

#define DRY_RUN_MAX_S 60.0    /* at most a minute of measuring */
#define DRY_RUN_MIN_BATCHES 5 /* and, past 1% of the keys, enough batches (or seconds) that the */
#define DRY_RUN_MIN_S 2.0     /* first, slower batch does not dominate the estimate */

static void job_dry_done_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	(void)conn;

	if (job->state != JOB_RELEASING)
		return;
	if (res->broken)
		return; /* sent again once reconnected */
	if (!res->ok)
		job_log(job, LOG_LEVEL_ERROR, "cannot record the dry run's estimates: %s %s", res->sqlstate,
			res->message);
	else
		job_log(job, LOG_LEVEL_INFO, "dry run %s: nothing was changed",
			pgconn_value(res->results[0], 0, 0) ?: "?");
	job_finish(job);
}

/* The dry run measured enough: extrapolate to the whole table and end the job. */
static void job_dry_finish(job_t *job, bool reached_end)
{
	char sql[160], seconds[24], wal[24];
	const char *params[4];
	pgconn_stmt_t stmt = {sql, 4, params};
	double elapsed = elapsed_s(&job->dry_started);
	int64_t rows =
		reached_end ? job->dry_scanned
			    : (job->rows_estimate > job->dry_scanned ? job->rows_estimate : job->dry_scanned);
	double factor = job->dry_scanned > 0 ? (double)rows / (double)job->dry_scanned : 0;

	snprintf(seconds, sizeof(seconds), "%.0f", elapsed * factor);
	snprintf(wal, sizeof(wal), "%.0f", (double)job->dry_wal * factor);
	snprintf(sql, sizeof(sql), "SELECT %s._dry_run_done($1::bigint, $2, $3::bigint, $4::bigint)",
		 daemon_schema_quoted());
	params[0] = job->id_text;
	params[1] = daemon_name();
	params[2] = seconds;
	params[3] = wal;
	job_log(job, LOG_LEVEL_INFO,
		"dry run: %lld rows in %.1f s and %lld WAL bytes, rolled back; the whole job (%lld rows): "
		"about %s s and"
		" %s WAL bytes",
		(long long)job->dry_scanned, elapsed, (long long)job->dry_wal, (long long)rows, seconds, wal);
	job->state = JOB_RELEASING;
	job->release_state = "done";
	if (!pgconn_send(job->conn, &stmt, 1, job_dry_done_cb, job))
		job->state = JOB_CONNECTING;
}

static void job_dry_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	job_t *job = arg;
	const PGresult *b = res->results[2];
	int64_t scanned;
	double duration_ms;
	throttle_settings_t s;
	(void)conn;

	if (job->state != JOB_BATCH)
		return;
	if (res->broken) {
		job->state = JOB_CONNECTING;
		return;
	}
	if (!res->ok) {
		job_batch_failed(job, res);
		return;
	}
	scanned = pgconn_int64(b, 0, 0, 0);
	duration_ms = elapsed_s(&job->batch_started) * 1000.0;
	job->dry_scanned += scanned;
	job->dry_batches++;
	job->dry_wal += pgconn_int64(res->results[3], 0, 0, 0);
	if (pgconn_value(b, 0, 3)) {
		keys_clear(&job->last_key);
		if (!keys_decode(pgconn_value(b, 0, 3), &job->last_key)) {
			job_release(job, "failed", "cannot decode a key (dry run; nothing was changed)");
			return;
		}
	}
	job_settings(job, &s);
	throttle_after_batch(&job->throttle, &s, scanned, duration_ms);
	if (scanned < job->batch_limit)
		job_dry_finish(job, true);
	else if (elapsed_s(&job->dry_started) >= DRY_RUN_MAX_S ||
		 (job->rows_estimate > 0 && job->dry_scanned * 100 >= job->rows_estimate &&
		  (job->dry_batches >= DRY_RUN_MIN_BATCHES || elapsed_s(&job->dry_started) >= DRY_RUN_MIN_S)))
		job_dry_finish(job, false);
	else
		job_continue(job);
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

static void job_release(job_t *job, const char *state, const char *error)
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
static void job_fail(job_t *job, const char *error)
{
	job_log(job, LOG_LEVEL_ERROR, "failed: %s", error);
	job_release(job, "failed", error);
}

static void job_finish(job_t *job)
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
