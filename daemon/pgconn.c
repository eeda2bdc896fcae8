/*
 * libpq on libevent. A connection is a small state machine (DOWN, CONNECTING, SETUP, READY,
 * WAITING to reconnect); requests queue up and the head one is in flight as a pipeline.
 * Callbacks may free the connection: the free waits until the outermost entry point returns.
 */
#include "pgconn.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "log.h"
#include "util.h"

#define CONNECT_TIMEOUT_MS 10000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 10000

typedef enum pgconn_state {
	PGCONN_DOWN,	   /* not connected and not trying */
	PGCONN_CONNECTING, /* PQconnectPoll in progress */
	PGCONN_SETUP,	   /* connected; the session settings are being applied */
	PGCONN_READY,
	PGCONN_WAITING, /* lost; a reconnect timer is armed */
} pgconn_state_t;

typedef struct request {
	struct request *next;
	int n;
	char **sql;
	char **prepare;
	Oid **types; /* of a PREPARE, ntypes of them */
	int *ntypes;
	int *nparams;
	char ***params;
	PGresult **results;
	int current; /* statement whose results are being read */
	pgconn_result_cb cb;
	void *arg;
	bool internal; /* session setup or cleanup ROLLBACK: not the caller's */
} request_t;

struct pgconn {
	struct event_base *base;
	pgconn_options_t opt; /* strings owned */
	PGconn *pg;
	pgconn_state_t state;
	struct event *ev_read;
	struct event *ev_write;
	struct event *ev_timer; /* connect timeout, or reconnect backoff */
	int poll_fd;		/* socket the connect-poll events watch */
	request_t *head, *tail; /* head is in flight once sent */
	bool head_sent;
	int attempts; /* consecutive failures, for the backoff */
	int depth;    /* nesting of entry points; a free waits for 0 */
	bool freeing; /* pgconn_free is telling queued requests their end */
	bool dead;
	char last_error[512];
	time_t notice_window; /* notices logged since then (NOTICE_WINDOW_S) */
	int notices;
	int64_t notices_dropped;
};

static void pgconn_read_cb(evutil_socket_t fd, short what, void *arg);
static void pgconn_write_cb(evutil_socket_t fd, short what, void *arg);
static void pgconn_poll_cb(evutil_socket_t fd, short what, void *arg);
static void pgconn_timer_cb(evutil_socket_t fd, short what, void *arg);
static void pgconn_lost(pgconn_t *c, const char *why);
static void pgconn_start_next(pgconn_t *c);
static void pgconn_process_input(pgconn_t *c);
static bool pgconn_enqueue(pgconn_t *c, const pgconn_stmt_t *stmts, int n, pgconn_result_cb cb, void *arg,
			   bool internal, bool at_head);

/* A copy of S, "" for NULL. */
static char *xstrdup(const char *s)
{
	return util_strdup(s ? s : "");
}

static void request_free(request_t *r)
{
	for (int i = 0; i < r->n; i++) {
		free(r->sql[i]);
		free(r->prepare[i]);
		free(r->types[i]);
		for (int j = 0; j < r->nparams[i]; j++)
			free(r->params[i][j]);
		free(r->params[i]);
		if (r->results[i])
			PQclear(r->results[i]);
	}
	free(r->sql);
	free(r->prepare);
	free(r->types);
	free(r->ntypes);
	free(r->nparams);
	free(r->params);
	free(r->results);
	free(r);
}

static void pgconn_set_error(pgconn_t *c, const char *why)
{
	snprintf(c->last_error, sizeof(c->last_error), "%s", why ? why : "unknown error");
	/* libpq messages end with a newline; keep one line. */
	size_t len = strlen(c->last_error);
	while (len > 0 && (c->last_error[len - 1] == '\n' || c->last_error[len - 1] == ' '))
		c->last_error[--len] = '\0';
}

static void pgconn_notices_left_out(pgconn_t *c);

static void pgconn_really_free(pgconn_t *c)
{
	pgconn_notices_left_out(c);
	free((char *)c->opt.conninfo);
	free((char *)c->opt.user);
	free((char *)c->opt.application_name);
	free((char *)c->opt.log_context);
	free(c);
}

/* Entry points (libevent callbacks) bracket their work with enter/leave. */
static void pgconn_enter(pgconn_t *c)
{
	c->depth++;
}

static void pgconn_leave(pgconn_t *c)
{
	if (--c->depth == 0 && c->dead)
		pgconn_really_free(c);
}

/* Server notices (a job's own SQL can RAISE as many as it likes): at most NOTICE_BURST logged in
 * any NOTICE_WINDOW_S, then one line saying how many were left out. */
#define NOTICE_BURST 10
#define NOTICE_WINDOW_S 10

static void pgconn_notices_left_out(pgconn_t *c)
{
	if (c->notices_dropped > 0)
		log_msg(LOG_LEVEL_WARNING, c->opt.log_context,
			"%lld more server notices in %d s were left out of the log",
			(long long)c->notices_dropped, NOTICE_WINDOW_S);
	c->notices_dropped = 0;
}

static void pgconn_notice_cb(void *arg, const PGresult *res)
{
	pgconn_t *c = arg;
	const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	bool warning = severity && strcmp(severity, "WARNING") == 0;
	time_t now = time(NULL);

	if (now - c->notice_window >= NOTICE_WINDOW_S) {
		pgconn_notices_left_out(c);
		c->notice_window = now;
		c->notices = 0;
	}
	if (++c->notices > NOTICE_BURST) {
		c->notices_dropped++;
		return;
	}
	log_msg(warning ? LOG_LEVEL_WARNING : LOG_LEVEL_DEBUG, c->opt.log_context, "server %s: %s",
		severity ? severity : "NOTICE", msg ? msg : "");
}

pgconn_t *pgconn_new(struct event_base *base, const pgconn_options_t *options)
{
	pgconn_t *c = util_calloc(1, sizeof(*c));
	c->base = base;
	c->opt = *options;
	c->opt.conninfo = xstrdup(options->conninfo);
	c->opt.user = options->user ? xstrdup(options->user) : NULL;
	c->opt.application_name = xstrdup(options->application_name);
	c->opt.log_context = xstrdup(options->log_context);
	c->state = PGCONN_DOWN;
	c->poll_fd = -1;
	c->ev_timer = evtimer_new(base, pgconn_timer_cb, c);
	if (!c->ev_timer)
		abort();
	return c;
}

static void pgconn_drop_events(pgconn_t *c)
{
	if (c->ev_read) {
		event_free(c->ev_read);
		c->ev_read = NULL;
	}
	if (c->ev_write) {
		event_free(c->ev_write);
		c->ev_write = NULL;
	}
	c->poll_fd = -1;
}

/*
 * Close the socket and drop every queued request. With CALL_BACK their callbacks learn that
 * the connection broke (and may free C); without, they are dropped silently (pgconn_free).
 */
static void pgconn_close(pgconn_t *c, bool call_back)
{
	request_t *r;

	pgconn_drop_events(c);
	if (c->ev_timer)
		evtimer_del(c->ev_timer);
	if (c->pg) {
		PQfinish(c->pg);
		c->pg = NULL;
	}
	while ((r = c->head) != NULL) {
		c->head = r->next;
		if (!c->head)
			c->tail = NULL;
		if (call_back && !c->dead && !r->internal && r->cb) {
			pgconn_result_t res = {.results = r->results,
					       .n = r->n,
					       .ok = false,
					       .broken = true,
					       .failed_index = -1,
					       .sqlstate = "",
					       .message = c->last_error};
			r->cb(c, &res, r->arg);
		}
		request_free(r);
	}
	c->head_sent = false;
}

static void pgconn_watch_poll(pgconn_t *c, PostgresPollingStatusType want)
{
	int fd = PQsocket(c->pg);
	short what = want == PGRES_POLLING_READING ? EV_READ : EV_WRITE;

	/* The socket can change while libpq tries several addresses: re-create every time. */
	pgconn_drop_events(c);
	c->poll_fd = fd;
	c->ev_read = event_new(c->base, fd, what, pgconn_poll_cb, c);
	if (!c->ev_read || event_add(c->ev_read, NULL) != 0) {
		pgconn_lost(c, "cannot watch the connection's socket");
		return;
	}
}

void pgconn_connect(pgconn_t *c)
{
	/* Our keywords first so the user's conninfo may override them; then what must hold
	 * whatever it says: the client encoding (the daemon reads and writes UTF-8), the user a job
	 * session logs in as, and application_name. */
	const char *keys[] = {"connect_timeout",
			      "keepalives",
			      "keepalives_idle",
			      "keepalives_interval",
			      "keepalives_count",
			      "dbname",
			      "client_encoding",
			      "application_name",
			      "user",
			      NULL};
	const char *values[] = {
		"10",	     "1", "10", "5", "3", c->opt.conninfo, "UTF8", c->opt.application_name,
		c->opt.user, NULL};
	struct timeval tv = {CONNECT_TIMEOUT_MS / 1000, (CONNECT_TIMEOUT_MS % 1000) * 1000};

	if (c->dead)
		return;
	if (c->state == PGCONN_CONNECTING || c->state == PGCONN_SETUP || c->state == PGCONN_READY)
		return;
	evtimer_del(c->ev_timer);
	c->state = PGCONN_CONNECTING;
	c->pg = PQconnectStartParams(keys, values, 1);
	if (!c->pg) {
		pgconn_lost(c, "out of memory");
		return;
	}
	if (PQstatus(c->pg) == CONNECTION_BAD) {
		pgconn_lost(c, PQerrorMessage(c->pg));
		return;
	}
	PQsetNoticeReceiver(c->pg, pgconn_notice_cb, c);
	evtimer_add(c->ev_timer, &tv);
	pgconn_watch_poll(c, PGRES_POLLING_WRITING);
}

/* The session's settings are in place: it is ready. */
static void pgconn_setup_done_cb(pgconn_t *c, const pgconn_result_t *res, void *arg)
{
	(void)arg;
	if (!res->ok) {
		if (!res->broken)
			pgconn_lost(c, res->message);
		return;
	}
	c->state = PGCONN_READY;
	c->attempts = 0;
	c->last_error[0] = '\0';
	log_msg(LOG_LEVEL_DEBUG, c->opt.log_context, "connected (backend %d)", PQbackendPID(c->pg));
	c->opt.on_event(c, PGCONN_EVENT_READY, "", c->opt.arg);
}

static void pgconn_connected(pgconn_t *c)
{
	char idle_ms[32], lock_ms[32];
	const char *params[] = {idle_ms, lock_ms};
	pgconn_stmt_t daemon_setup = {
		"SELECT pg_catalog.set_config('DateStyle', 'ISO', false),"
		" pg_catalog.set_config('TimeZone', 'UTC', false),"
		" pg_catalog.set_config('extra_float_digits', '3', false),"
		" pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false),"
		" pg_catalog.set_config('idle_in_transaction_session_timeout', $1, false),"
		" pg_catalog.set_config('lock_timeout', $2, false)",
		2, params, NULL, NULL};
	pgconn_stmt_t job_setup = {
		"SELECT pg_catalog.set_config('idle_in_transaction_session_timeout', $1, false)", 1, params,
		NULL, NULL};
	int fd = PQsocket(c->pg);

	evtimer_del(c->ev_timer);
	pgconn_drop_events(c);
	if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
		pgconn_lost(c, PQerrorMessage(c->pg));
		return;
	}
	c->ev_read = event_new(c->base, fd, EV_READ | EV_PERSIST, pgconn_read_cb, c);
	c->ev_write = event_new(c->base, fd, EV_WRITE, pgconn_write_cb, c);
	if (!c->ev_read || !c->ev_write || event_add(c->ev_read, NULL) != 0) {
		pgconn_lost(c, "cannot watch the connection's socket");
		return;
	}
	c->state = PGCONN_SETUP;
	snprintf(idle_ms, sizeof(idle_ms), "%lld", (long long)c->opt.idle_in_transaction_ms);
	snprintf(lock_ms, sizeof(lock_ms), "%lld", (long long)c->opt.lock_timeout_ms);
	if (!pgconn_enqueue(c, c->opt.session == PGCONN_SESSION_JOB ? &job_setup : &daemon_setup, 1,
			    pgconn_setup_done_cb, NULL, true, true))
		pgconn_lost(c, "cannot send the session setup");
}

static void pgconn_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	pgconn_t *c = arg;
	(void)fd;
	(void)what;

	pgconn_enter(c);
	switch (PQconnectPoll(c->pg)) {
	case PGRES_POLLING_READING:
		pgconn_watch_poll(c, PGRES_POLLING_READING);
		break;
	case PGRES_POLLING_WRITING:
		pgconn_watch_poll(c, PGRES_POLLING_WRITING);
		break;
	case PGRES_POLLING_OK:
		pgconn_connected(c);
		break;
	case PGRES_POLLING_FAILED:
	default:
		pgconn_lost(c, PQerrorMessage(c->pg));
		break;
	}
	pgconn_leave(c);
}

static void pgconn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	pgconn_t *c = arg;
	(void)fd;
	(void)what;

	pgconn_enter(c);
	switch (c->state) {
	case PGCONN_CONNECTING:
	case PGCONN_SETUP:
		pgconn_lost(c, "timeout while connecting");
		break;
	case PGCONN_WAITING:
		c->state = PGCONN_DOWN;
		pgconn_connect(c);
		break;
	case PGCONN_DOWN:
	case PGCONN_READY:
		log_msg(LOG_LEVEL_WARNING, c->opt.log_context, "unexpected timer in state %d", (int)c->state);
		break;
	}
	pgconn_leave(c);
}

/* Lost or failed: close, tell the owner, and arm the reconnect with jittered backoff. */
static void pgconn_lost(pgconn_t *c, const char *why)
{
	bool was_up = c->state == PGCONN_READY;
	long delay;
	struct timeval tv;

	if (c->dead)
		return;
	pgconn_set_error(c, why);
	c->state = PGCONN_WAITING;
	pgconn_close(c, true);
	if (c->dead)
		return;
	delay = BACKOFF_MIN_MS << (c->attempts < 10 ? c->attempts : 10);
	if (delay > BACKOFF_MAX_MS)
		delay = BACKOFF_MAX_MS;
	delay = delay / 2 + random() % (delay / 2 + 1); /* jitter: half to full */
	c->attempts++;
	log_msg(was_up ? LOG_LEVEL_WARNING : LOG_LEVEL_NOTICE, c->opt.log_context,
		"%s: %s; reconnecting in %ld ms", was_up ? "connection lost" : "cannot connect",
		c->last_error, delay);
	tv.tv_sec = delay / 1000;
	tv.tv_usec = (delay % 1000) * 1000;
	evtimer_add(c->ev_timer, &tv);
	c->opt.on_event(c, PGCONN_EVENT_LOST, c->last_error, c->opt.arg);
}

static void pgconn_flush(pgconn_t *c)
{
	int r = PQflush(c->pg);
	if (r < 0)
		pgconn_lost(c, PQerrorMessage(c->pg));
	else if (r > 0)
		event_add(c->ev_write, NULL);
}

static void pgconn_write_cb(evutil_socket_t fd, short what, void *arg)
{
	pgconn_t *c = arg;
	(void)fd;
	(void)what;

	pgconn_enter(c);
	if (c->pg)
		pgconn_flush(c);
	pgconn_leave(c);
}

/* Send the head request as a pipeline: every statement, then one Sync. */
static void pgconn_start_next(pgconn_t *c)
{
	request_t *r = c->head;

	if (!r || c->head_sent || !c->pg || c->dead)
		return;
	if (c->state != PGCONN_READY && !(c->state == PGCONN_SETUP && r->internal))
		return;
	for (int i = 0; i < r->n; i++) {
		int sent;
		if (r->prepare[i] && r->sql[i])
			sent = PQsendPrepare(c->pg, r->prepare[i], r->sql[i], r->ntypes[i], r->types[i]);
		else if (r->prepare[i])
			sent = PQsendQueryPrepared(c->pg, r->prepare[i], r->nparams[i],
						   (const char *const *)r->params[i], NULL, NULL, 0);
		else
			sent = PQsendQueryParams(c->pg, r->sql[i], r->nparams[i], NULL,
						 (const char *const *)r->params[i], NULL, NULL, 0);
		if (!sent) {
			pgconn_lost(c, PQerrorMessage(c->pg));
			return;
		}
	}
	if (!PQpipelineSync(c->pg)) {
		pgconn_lost(c, PQerrorMessage(c->pg));
		return;
	}
	c->head_sent = true;
	pgconn_flush(c);
}

static void pgconn_complete_head(pgconn_t *c)
{
	request_t *r = c->head;
	pgconn_result_t res = {.results = r->results,
			       .n = r->n,
			       .ok = true,
			       .failed_index = -1,
			       .sqlstate = "",
			       .message = ""};
	PGTransactionStatusType ts;

	c->head = r->next;
	if (!c->head)
		c->tail = NULL;
	c->head_sent = false;

	for (int i = 0; i < r->n; i++) {
		ExecStatusType st = r->results[i] ? PQresultStatus(r->results[i]) : PGRES_FATAL_ERROR;
		if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
			continue;
		res.ok = false;
		res.failed_index = i;
		if (r->results[i]) {
			const char *state = PQresultErrorField(r->results[i], PG_DIAG_SQLSTATE);
			const char *msg = PQresultErrorField(r->results[i], PG_DIAG_MESSAGE_PRIMARY);
			res.sqlstate = state ? state : "";
			res.message = msg ? msg : PQresultErrorMessage(r->results[i]);
		} else {
			res.message = "no result";
		}
		break;
	}

	/* A failed explicit transaction stays aborted after the Sync: clean it before anything else. */
	ts = PQtransactionStatus(c->pg);
	if (ts == PQTRANS_INERROR || ts == PQTRANS_INTRANS) {
		pgconn_stmt_t rollback = {"ROLLBACK", 0, NULL, NULL, NULL};
		if (ts == PQTRANS_INTRANS)
			log_msg(LOG_LEVEL_WARNING, c->opt.log_context,
				"a request left a transaction open; rolling back");
		if (!pgconn_enqueue(c, &rollback, 1, NULL, NULL, true, true)) {
			request_free(r);
			pgconn_lost(c, "cannot roll back");
			return;
		}
	} else if (!r->internal && !res.ok) {
		log_msg(LOG_LEVEL_DEBUG, c->opt.log_context, "statement %d failed: %s %s", res.failed_index,
			res.sqlstate, res.message);
	}

	if (r->cb)
		r->cb(c, &res, r->arg);
	request_free(r);
	if (!c->dead && c->pg)
		pgconn_start_next(c);
}

static void pgconn_process_input(pgconn_t *c)
{
	PGnotify *n;

	while (c->pg && !c->dead && c->head && c->head_sent && !PQisBusy(c->pg)) {
		request_t *r = c->head;
		PGresult *res = PQgetResult(c->pg);

		if (res == NULL) { /* end of one statement's results */
			if (r->current < r->n)
				r->current++;
			continue;
		}
		if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
			PQclear(res);
			pgconn_complete_head(c);
			continue;
		}
		if (r->current < r->n && !r->results[r->current])
			r->results[r->current] = res;
		else
			PQclear(res); /* a second result for one statement: not ours to keep */
	}
	while (c->pg && !c->dead && (n = PQnotifies(c->pg)) != NULL) {
		if (c->opt.on_notify)
			c->opt.on_notify(c, n->relname, n->extra, c->opt.arg);
		PQfreemem(n);
	}
}

static void pgconn_read_cb(evutil_socket_t fd, short what, void *arg)
{
	pgconn_t *c = arg;
	(void)fd;
	(void)what;

	pgconn_enter(c);
	if (c->pg) {
		if (!PQconsumeInput(c->pg))
			pgconn_lost(c, PQerrorMessage(c->pg));
		else
			pgconn_process_input(c);
	}
	pgconn_leave(c);
}

static bool pgconn_enqueue(pgconn_t *c, const pgconn_stmt_t *stmts, int n, pgconn_result_cb cb, void *arg,
			   bool internal, bool at_head)
{
	request_t *r = util_calloc(1, sizeof(*r));

	r->n = n;
	r->sql = util_calloc((size_t)n, sizeof(char *));
	r->prepare = util_calloc((size_t)n, sizeof(char *));
	r->types = util_calloc((size_t)n, sizeof(Oid *));
	r->ntypes = util_calloc((size_t)n, sizeof(int));
	r->nparams = util_calloc((size_t)n, sizeof(int));
	r->params = util_calloc((size_t)n, sizeof(char **));
	r->results = util_calloc((size_t)n, sizeof(PGresult *));
	for (int i = 0; i < n; i++) {
		bool prepare = stmts[i].prepare != NULL, run_prepared = prepare && !stmts[i].sql;
		r->sql[i] = stmts[i].sql ? xstrdup(stmts[i].sql) : NULL;
		r->prepare[i] = prepare ? xstrdup(stmts[i].prepare) : NULL;
		if (prepare && !run_prepared) { /* PREPARE: types, not values */
			if (stmts[i].types) {
				r->ntypes[i] = stmts[i].nparams;
				r->types[i] = util_calloc((size_t)stmts[i].nparams, sizeof(Oid));
				memcpy(r->types[i], stmts[i].types, sizeof(Oid) * (size_t)stmts[i].nparams);
			}
			r->params[i] = util_calloc(0, sizeof(char *));
			continue;
		}
		r->nparams[i] = stmts[i].nparams;
		r->params[i] = util_calloc((size_t)stmts[i].nparams, sizeof(char *));
		for (int j = 0; j < stmts[i].nparams; j++)
			r->params[i][j] = stmts[i].params[j] ? xstrdup(stmts[i].params[j]) : NULL;
	}
	r->cb = cb;
	r->arg = arg;
	r->internal = internal;

	if (at_head && !c->head_sent) {
		r->next = c->head;
		c->head = r;
		if (!c->tail)
			c->tail = r;
	} else if (at_head) {
		/* Behind the one in flight. */
		r->next = c->head->next;
		c->head->next = r;
		if (c->tail == c->head)
			c->tail = r;
	} else {
		if (c->tail)
			c->tail->next = r;
		else
			c->head = r;
		c->tail = r;
	}
	pgconn_start_next(c);
	return true;
}

bool pgconn_send(pgconn_t *c, const pgconn_stmt_t *stmts, int n, pgconn_result_cb cb, void *arg)
{
	if (c->dead || c->state != PGCONN_READY || n <= 0)
		return false;
	return pgconn_enqueue(c, stmts, n, cb, arg, false, false);
}

bool pgconn_is_ready(const pgconn_t *c)
{
	return c->state == PGCONN_READY;
}

bool pgconn_is_idle(const pgconn_t *c)
{
	return c->state == PGCONN_READY && c->head == NULL;
}

int pgconn_backend_pid(const pgconn_t *c)
{
	return c->pg && c->state == PGCONN_READY ? PQbackendPID(c->pg) : 0;
}

const char *pgconn_last_error(const pgconn_t *c)
{
	return c->last_error;
}

/* A cancel request on its way: libpq's PQcancel connects to the server and waits for it to close
 * the connection, so it runs on a detached thread of its own, which only logs a failure. */
typedef struct cancel_request {
	PGcancel *cancel;
	char context[128];
} cancel_request_t;

static void *pgconn_cancel_thread(void *arg)
{
	cancel_request_t *req = arg;
	char err[256];

	if (!PQcancel(req->cancel, err, (int)sizeof(err)))
		log_msg(LOG_LEVEL_WARNING, req->context, "cannot send a cancel request: %s", err);
	PQfreeCancel(req->cancel);
	free(req);
	return NULL;
}

bool pgconn_cancel(pgconn_t *c)
{
	cancel_request_t *req;
	pthread_attr_t attr;
	pthread_t thread;
	bool started;

	if (c->dead || !c->pg || c->state != PGCONN_READY)
		return false;
	req = util_calloc(1, sizeof(*req));
	req->cancel = PQgetCancel(c->pg);
	snprintf(req->context, sizeof(req->context), "%s", c->opt.log_context);
	if (!req->cancel) {
		free(req);
		return false;
	}
	started = pthread_attr_init(&attr) == 0 &&
		  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
		  pthread_create(&thread, &attr, pgconn_cancel_thread, req) == 0;
	pthread_attr_destroy(&attr);
	if (!started) {
		log_msg(LOG_LEVEL_WARNING, c->opt.log_context, "cannot start a cancel request");
		PQfreeCancel(req->cancel);
		free(req);
	}
	return started;
}

void pgconn_disconnect(pgconn_t *c)
{
	pgconn_set_error(c, "closed by the daemon");
	c->state = PGCONN_DOWN;
	pgconn_enter(c);
	pgconn_close(c, true);
	pgconn_leave(c);
}

void pgconn_free(pgconn_t *c)
{
	if (!c || c->dead || c->freeing)
		return;
	pgconn_set_error(c, "closed by the daemon");
	c->state = PGCONN_DOWN;
	c->freeing = true;
	pgconn_enter(c);
	/* Queued requests learn that they broke, so their owners free what they passed along. */
	pgconn_close(c, true);
	c->dead = true;
	event_free(c->ev_timer);
	c->ev_timer = NULL;
	pgconn_leave(c);
}

const char *pgconn_value(const PGresult *res, int row, int col)
{
	if (!res || row >= PQntuples(res) || col >= PQnfields(res) || PQgetisnull(res, row, col))
		return NULL;
	return PQgetvalue(res, row, col);
}

int64_t pgconn_int64(const PGresult *res, int row, int col, int64_t if_null)
{
	const char *v = pgconn_value(res, row, col);
	return v ? strtoll(v, NULL, 10) : if_null;
}
