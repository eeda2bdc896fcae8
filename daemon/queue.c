/*
 * The queue connection. Up means: connected, the schema installed at the version this
 * binary expects, and LISTEN backfill_jobs in place; after any loss it reconnects (pgconn's
 * backoff), checks again, re-LISTENs, and the daemon rescans.
 */
#include "queue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "config.h"
#include "log.h"
#include "pgconn.h"
#include "queuesql.h"
#include "schema.h"
#include "util.h"

#define QUEUE_CONTEXT "queue"
#define QUEUE_LOCK_TIMEOUT_MS 2000 /* a row another session keeps locked never stalls the queue longer */

/* The single control connection and what we know of it. */
static struct {
	void (*wake)(void); /* something may be claimable, or the connection's state changed */
	char *schema;	    /* the queue schema, as configured */
	pgconn_t *conn;
	bool up;
	struct event *recheck; /* schema missing or old: look again later */
	bool warned_superuser;
	int server_version;	  /* server_version_num, 0 until checked */
	struct timespec answered; /* the last request that succeeded (CLOCK_MONOTONIC) */
	char reason[512];
} queue;

typedef struct queue_call {
	queue_rows_cb cb;
	void *arg;
	const char *what;
} queue_call_t;

static void queue_check_schema(void);

/* The statements of the check on each connection, in its pipeline's order. */
enum {
	CHECK_SERVER,
	CHECK_VERSION,
	CHECK_ROLE,
	CHECK_LISTEN,
	CHECK_COUNT
};

static void queue_set_down(const char *why)
{
	queue.up = false;
	snprintf(queue.reason, sizeof(queue.reason), "%s", why);
}

static void queue_recheck_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (pgconn_is_ready(queue.conn))
		queue_check_schema();
}

static void queue_schema_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	int64_t version;
	int64_t ms = config_current()->poll_interval_ms;
	struct timeval tv = util_ms_to_tv(ms);
	char why[512];
	(void)conn;
	(void)arg;

	if (res->broken)
		return;
	if (res->failed_index != CHECK_SERVER &&
	    pgconn_int64(res->results[CHECK_SERVER], 0, 0, 0) < SCHEMA_MIN_SERVER_VERSION) {
		snprintf(why, sizeof(why), "backfilld needs PostgreSQL 14 or later; the server is %s",
			 pgconn_value(res->results[CHECK_SERVER], 0, 1) ?: "?");
	} else if (!res->ok) {
		if (strcmp(res->sqlstate, "42P01") == 0 || strcmp(res->sqlstate, "3F000") == 0)
			snprintf(why, sizeof(why),
				 "the queue schema %s is not installed in this database: run backfilld "
				 "--install-schema",
				 config_current()->schema);
		else
			snprintf(why, sizeof(why), "cannot check the queue schema: %s %s", res->sqlstate,
				 res->message);
	} else {
		why[0] = '\0';
	}
	if (why[0]) {
		log_msg(LOG_LEVEL_ERROR, QUEUE_CONTEXT, "%s; checking again in %lld ms", why, (long long)ms);
		queue_set_down(why);
		evtimer_add(queue.recheck, &tv);
		return;
	}
	queue.server_version = (int)pgconn_int64(res->results[CHECK_SERVER], 0, 0, 0);
	version = pgconn_int64(res->results[CHECK_VERSION], 0, 0, 0);
	if (version != SCHEMA_VERSION) {
		snprintf(why, sizeof(why),
			 version < SCHEMA_VERSION ? "the queue schema %s is at version %lld, this backfilld "
						    "needs %d: run backfilld --install-schema to upgrade it"
						  : "the queue schema %s is at version %lld, newer than this "
						    "backfilld knows (%d): upgrade backfilld",
			 config_current()->schema, (long long)version, SCHEMA_VERSION);
		log_msg(LOG_LEVEL_ERROR, QUEUE_CONTEXT, "%s; checking again in %lld ms", why, (long long)ms);
		queue_set_down(why);
		evtimer_add(queue.recheck, &tv);
		return;
	}
	if (!queue.warned_superuser &&
	    strcmp(pgconn_value(res->results[CHECK_ROLE], 0, 0) ?: "f", "t") == 0) {
		log_msg(LOG_LEVEL_WARNING, QUEUE_CONTEXT,
			"the daemon's database role %s is a superuser: give it a role of its own, member of"
			" backfill_daemon and pg_monitor (jobs run in sessions of their submitters' roles"
			" whatever role the daemon has)",
			pgconn_value(res->results[CHECK_ROLE], 0, 1) ?: "?");
		queue.warned_superuser = true;
	}
	queue.up = true;
	queue.reason[0] = '\0';
	clock_gettime(CLOCK_MONOTONIC, &queue.answered);
	queue_record_limits();
	log_msg(LOG_LEVEL_INFO, QUEUE_CONTEXT,
		"connected; schema %s version %lld; listening on backfill_jobs", config_current()->schema,
		(long long)version);
	queue.wake();
}

static void queue_check_schema(void)
{
	char *sql = queuesql(QSQL_SCHEMA_VERSION, queue.schema);
	pgconn_stmt_t stmts[CHECK_COUNT];

	/* The server's version first: an older server's catalogs may fail the other queries. */
	stmts[CHECK_SERVER] =
		(pgconn_stmt_t){"SELECT pg_catalog.current_setting('server_version_num')::pg_catalog.int4,"
				" pg_catalog.current_setting('server_version')",
				0, NULL, NULL, NULL};
	stmts[CHECK_VERSION] = (pgconn_stmt_t){sql, 0, NULL, NULL, NULL};
	stmts[CHECK_ROLE] = (pgconn_stmt_t){"SELECT r.rolsuper, r.rolname FROM pg_catalog.pg_roles r"
					    " WHERE r.rolname = pg_catalog.current_user()",
					    0, NULL, NULL, NULL};
	stmts[CHECK_LISTEN] = (pgconn_stmt_t){"LISTEN backfill_jobs", 0, NULL, NULL, NULL};
	if (!pgconn_send(queue.conn, stmts, CHECK_COUNT, queue_schema_cb, NULL))
		queue_set_down("not connected");
	free(sql);
}

static void queue_event_cb(pgconn_t *conn, pgconn_event_t event, const char *reason, void *arg)
{
	(void)conn;
	(void)arg;
	switch (event) {
	case PGCONN_EVENT_READY:
		queue_check_schema();
		break;
	case PGCONN_EVENT_LOST:
		queue_set_down(reason);
		queue.wake(); /* /healthz and STATUS= see it now */
		break;
	}
}

static void queue_notify_cb(pgconn_t *conn, const char *channel, const char *payload, void *arg)
{
	(void)conn;
	(void)arg;
	log_msg(LOG_LEVEL_DEBUG, QUEUE_CONTEXT, "notification on %s: %s", channel, payload);
	queue.wake();
}

void queue_open(struct event_base *base, void (*wake)(void))
{
	pgconn_options_t opt = {.conninfo = config_current()->conninfo,
				.application_name = "backfilld queue",
				.log_context = QUEUE_CONTEXT,
				.idle_in_transaction_ms = config_current()->lease_ms,
				.lock_timeout_ms = QUEUE_LOCK_TIMEOUT_MS,
				.on_event = queue_event_cb,
				.on_notify = queue_notify_cb};

	queue.wake = wake;
	queue.schema = util_strdup(config_current()->schema);
	queue.conn = pgconn_new(base, &opt);
	queue.recheck = evtimer_new(base, queue_recheck_cb, NULL);
	if (!queue.recheck)
		abort();
	queue_set_down("connecting");
	pgconn_connect(queue.conn);
}

void queue_close(void)
{
	if (queue.conn)
		pgconn_free(queue.conn);
	if (queue.recheck)
		event_free(queue.recheck);
	queue.conn = NULL;
	queue.recheck = NULL;
	free(queue.schema);
	queue.schema = NULL;
	queue_set_down("closed");
}

bool queue_is_up(void)
{
	return queue.up;
}

const char *queue_down_reason(void)
{
	return queue.reason;
}

static void queue_call_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	queue_call_t *call = arg;
	(void)conn;

	if (!res->ok && !res->broken)
		log_msg(LOG_LEVEL_ERROR, QUEUE_CONTEXT, "%s failed: %s %s", call->what, res->sqlstate,
			res->message);
	if (res->ok)
		clock_gettime(CLOCK_MONOTONIC, &queue.answered);
	call->cb(res->ok ? res->results[0] : NULL, call->arg);
	free(call);
}

static bool queue_call(const char *what, queuesql_t which, int nparams, const char *const *params,
		       queue_rows_cb cb, void *arg)
{
	pgconn_stmt_t stmt = {NULL, nparams, params, NULL, NULL};
	queue_call_t *call;
	bool sent;

	if (!queue.up)
		return false;
	call = util_calloc(1, sizeof(*call));
	*call = (queue_call_t){cb, arg, what};
	stmt.sql = queuesql(which, queue.schema);
	sent = pgconn_send(queue.conn, &stmt, 1, queue_call_cb, call);
	free((char *)stmt.sql);
	if (!sent)
		free(call);
	return sent;
}

/* IDS as a bigint[] literal. Caller frees. */
static char *queue_id_array(const int64_t *ids, int n)
{
	size_t cap = 3 + (size_t)n * 21;
	char *out = malloc(cap), *p = out;

	if (!out)
		abort();
	*p++ = '{';
	for (int i = 0; i < n; i++)
		p += snprintf(p, cap - (size_t)(p - out), "%s%lld", i ? "," : "", (long long)ids[i]);
	*p++ = '}';
	*p = '\0';
	return out;
}

bool queue_claim(const int64_t *exclude, int n, queue_rows_cb cb, void *arg)
{
	char lease[24];
	char *ids = queue_id_array(exclude, n);
	const char *params[] = {config_current()->name, lease, ids};
	bool ok;

	snprintf(lease, sizeof(lease), "%lld", (long long)config_current()->lease_ms);
	ok = queue_call("claim", QSQL_CLAIM, 3, params, cb, arg);
	free(ids);
	return ok;
}

bool queue_renew(const int64_t *ids, int n, queue_rows_cb cb, void *arg)
{
	char lease[24];
	char *array = queue_id_array(ids, n);
	const char *params[] = {config_current()->name, array, lease};
	bool ok;

	snprintf(lease, sizeof(lease), "%lld", (long long)config_current()->lease_ms);
	ok = queue_call("lease renewal", QSQL_RENEW, 3, params, cb, arg);
	free(array);
	return ok;
}

bool queue_runnable(queue_rows_cb cb, void *arg)
{
	return queue_call("idle check", QSQL_RUNNABLE_COUNT, 0, NULL, cb, arg);
}

bool queue_count_states(queue_rows_cb cb, void *arg)
{
	return queue_call("counting jobs", QSQL_COUNT_STATES, 0, NULL, cb, arg);
}

bool queue_send(const pgconn_stmt_t *stmts, int n, pgconn_result_cb cb, void *arg)
{
	return queue.up && pgconn_send(queue.conn, stmts, n, cb, arg);
}

int queue_server_version(void)
{
	return queue.server_version;
}

static void queue_limits_cb(const PGresult *res, void *arg)
{
	(void)res;
	(void)arg;
}

void queue_record_limits(void)
{
	char max_parallel[24];
	const char *params[] = {max_parallel};

	snprintf(max_parallel, sizeof(max_parallel), "%lld", (long long)config_current()->max_parallel);
	if (!queue_call("recording the limits", QSQL_SET_LIMITS, 1, params, queue_limits_cb, NULL))
		log_msg(LOG_LEVEL_DEBUG, QUEUE_CONTEXT,
			"the queue is down: daemon.max_parallel is recorded"
			" when it is back");
}

bool queue_healthy(char *why, size_t len)
{
	const config_t *config = config_current();
	int64_t limit_ms = 3 * config->poll_interval_ms > config->lease_ms ? 3 * config->poll_interval_ms
									   : config->lease_ms;
	struct timespec now;
	double silent_ms;

	if (!queue.up) {
		snprintf(why, len, "%s", queue.reason);
		return false;
	}
	clock_gettime(CLOCK_MONOTONIC, &now);
	silent_ms = (double)(now.tv_sec - queue.answered.tv_sec) * 1000.0 +
		    (double)(now.tv_nsec - queue.answered.tv_nsec) / 1e6;
	if (silent_ms > (double)limit_ms) {
		snprintf(why, len,
			 "the queue connection has completed no claim, lease renewal or count for %.0f s"
			 " (is something holding locks on the queue's tables?)",
			 silent_ms / 1000.0);
		return false;
	}
	why[0] = '\0';
	return true;
}
