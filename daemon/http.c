/*
 * The HTTP listener: libevent's evhttp on the daemon's one loop. It binds the sockets itself
 * (so a failure names the address and the errno), then serves /metrics from the metrics
 * registry and /healthz from the queue connection's state. Nothing here blocks: each connection
 * has a deadline, at most HTTP_MAX_CONNECTIONS are open, and when accept() fails (out of
 * descriptors) the listeners rest instead of spinning.
 */
#include "http.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

#define HTTP_CONTEXT "http"
#define HTTP_MAX_HEADERS_SIZE 8192 /* a scrape's headers are far smaller */
#define HTTP_MAX_BODY_SIZE 4096	   /* no endpoint takes a body */
#define HTTP_BACKLOG 64
#define HTTP_MAX_CONNECTIONS 64	    /* past it, the connections nearest their deadline are closed */
#define HTTP_DEADLINE_MS 10000	    /* from the accept, or the last request, to a whole request */
#define HTTP_ACCEPT_BATCH 16	    /* accepts per loop turn: a flood of connects cannot hold the loop */
#define HTTP_ACCEPT_BACKOFF_MS 1000 /* the listeners rest this long after accept() fails */
#define HTTP_ACCEPT_CALM_MS 5000    /* and an episode ends after this long without a failure */

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define TEXT_CONTENT_TYPE "text/plain; charset=utf-8"

/*
 * Whether the listeners accept. accept() failing (out of descriptors, mostly) starts an episode:
 * the listeners rest, retry, and rest again at the next failure, until a calm spell without one.
 */
typedef enum http_accept_state {
	HTTP_ACCEPT_ON,	     /* listening */
	HTTP_ACCEPT_BACKOFF, /* accept() failed: listeners off until the timer or a connection closes */
	HTTP_ACCEPT_RETRY,   /* listening again: a failure rests again, a calm spell ends the episode */
} http_accept_state_t;

/*
 * Each accepted connection, in deadline order. evhttp owns it and shows us only its bufferevent
 * at the accept (http_bev_cb); the sweep right after finds the evhttp_connection behind it.
 */
typedef enum http_conn_state {
	HTTP_CONN_NEW,	/* accepted: we hold a reference on its bufferevent until the sweep */
	HTTP_CONN_OPEN, /* its close callback is ours */
} http_conn_state_t;

typedef struct http_conn {
	TAILQ_ENTRY(http_conn) link;
	http_conn_state_t state;
	unsigned long id;
	int64_t deadline_ms;		 /* CLOCK_MONOTONIC */
	struct bufferevent *bev;	 /* NEW */
	struct evhttp_connection *evcon; /* OPEN */
} http_conn_t;

static struct evhttp *http;
static TAILQ_HEAD(http_conn_list, http_conn) http_conns = TAILQ_HEAD_INITIALIZER(http_conns);
static int http_nconns;
static unsigned long http_conn_ids;
static struct event *http_sweep_timer; /* the nearest deadline; made active by each accept */
static int http_accepted;	       /* since the last sweep */
static bool http_crowded;	       /* closing connections to stay under the cap */
static unsigned long http_crowd_closed;
static struct event *http_accept_timer; /* the rest, then the calm spell */
static http_accept_state_t http_accept_state;
static int64_t http_episode_since; /* ms, CLOCK_MONOTONIC */
static unsigned long http_episode_failures;

static int64_t http_now_ms(void)
{
	return (int64_t)util_now_ms();
}

static void http_timer_arm(struct event *timer, int64_t ms)
{
	struct timeval tv = util_ms_to_tv(ms);

	evtimer_add(timer, &tv);
}

static void http_listener_toggle(struct evhttp_bound_socket *bound, void *arg)
{
	struct evconnlistener *listener = evhttp_bound_socket_get_listener(bound);

	if (*(const bool *)arg)
		evconnlistener_enable(listener);
	else
		evconnlistener_disable(listener);
}

static void http_listeners_enable(bool on)
{
	evhttp_foreach_bound_socket(http, http_listener_toggle, &on);
}

static const char *http_accept_state_name(http_accept_state_t state)
{
	switch (state) {
	case HTTP_ACCEPT_ON:
		return "on";
	case HTTP_ACCEPT_BACKOFF:
		return "backoff";
	case HTTP_ACCEPT_RETRY:
		return "retry";
	}
	return "?";
}

/*
 * The one setter of the accept state. An episode logs a warning when it starts and a notice when
 * it ends; the rests and retries in between are quiet (they are the episode, one a second at
 * most). ERR is accept()'s errno, for HTTP_ACCEPT_BACKOFF.
 */
static void http_set_accept_state(http_accept_state_t next, int err)
{
	http_accept_state_t prev = http_accept_state;

	switch (next) {
	case HTTP_ACCEPT_BACKOFF:
		if (prev == HTTP_ACCEPT_BACKOFF)
			return; /* a second listener's failure in the same turn */
		if (prev == HTTP_ACCEPT_ON) {
			http_episode_since = http_now_ms();
			http_episode_failures = 0;
			log_msg(LOG_LEVEL_WARNING, HTTP_CONTEXT,
				"cannot accept connections: %s; retrying every %d ms", strerror(err),
				HTTP_ACCEPT_BACKOFF_MS);
		}
		http_episode_failures++;
		http_listeners_enable(false);
		http_timer_arm(http_accept_timer, HTTP_ACCEPT_BACKOFF_MS);
		break;
	case HTTP_ACCEPT_RETRY:
		if (prev != HTTP_ACCEPT_BACKOFF)
			goto unexpected;
		http_listeners_enable(true);
		http_timer_arm(http_accept_timer, HTTP_ACCEPT_CALM_MS);
		break;
	case HTTP_ACCEPT_ON:
		if (prev != HTTP_ACCEPT_RETRY)
			goto unexpected;
		log_msg(LOG_LEVEL_NOTICE, HTTP_CONTEXT,
			"accepting connections again: no failure in %d ms, after %lu in %.1f s",
			HTTP_ACCEPT_CALM_MS, http_episode_failures,
			(double)(http_now_ms() - http_episode_since) / 1000.0);
		break;
	}
	http_accept_state = next;
	return;
unexpected:
	log_msg(LOG_LEVEL_WARNING, HTTP_CONTEXT, "unexpected accept state change from %s to %s ignored",
		http_accept_state_name(prev), http_accept_state_name(next));
}

/* accept() failed with something other than EAGAIN or EINTR: rest rather than spin on it. */
static void http_accept_error_cb(struct evconnlistener *listener, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();
	(void)listener;
	(void)arg;

	http_set_accept_state(HTTP_ACCEPT_BACKOFF, err);
}

/* The rest is over (retry), or the retry went calm long enough (the episode is over). */
static void http_accept_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	switch (http_accept_state) {
	case HTTP_ACCEPT_BACKOFF:
		http_set_accept_state(HTTP_ACCEPT_RETRY, 0);
		break;
	case HTTP_ACCEPT_RETRY:
		http_set_accept_state(HTTP_ACCEPT_ON, 0);
		break;
	case HTTP_ACCEPT_ON:
		break;
	}
}

/* Arm the sweep for the nearest deadline, the first connection's. */
static void http_sweep_arm(void)
{
	http_conn_t *first = TAILQ_FIRST(&http_conns);

	if (first)
		http_timer_arm(http_sweep_timer, first->deadline_ms - http_now_ms());
	else
		evtimer_del(http_sweep_timer);
}

/* The cap's episode: a warning when it first closes a connection, a notice once half is free. */
static void http_set_crowded(bool crowded)
{
	if (crowded == http_crowded)
		return;
	if (crowded) {
		http_crowd_closed = 0;
		log_msg(LOG_LEVEL_WARNING, HTTP_CONTEXT,
			"at the cap of %d connections: closing the longest-waiting to make room",
			HTTP_MAX_CONNECTIONS);
	} else {
		log_msg(LOG_LEVEL_NOTICE, HTTP_CONTEXT,
			"back under the cap of %d connections: %lu closed to make room", HTTP_MAX_CONNECTIONS,
			http_crowd_closed);
	}
	http_crowded = crowded;
}

/* C's connection is closing or gone: forget it. Its descriptor is free, so a rest ends now. */
static void http_conn_forget(http_conn_t *c)
{
	TAILQ_REMOVE(&http_conns, c, link);
	http_nconns--;
	if (c->state == HTTP_CONN_NEW)
		(void)bufferevent_decref(c->bev);
	free(c);
	if (http_crowded && http_nconns <= HTTP_MAX_CONNECTIONS / 2)
		http_set_crowded(false);
	if (http_accept_state == HTTP_ACCEPT_BACKOFF)
		http_set_accept_state(HTTP_ACCEPT_RETRY, 0);
}

/* evhttp frees a connection: the client left, an error, or the answer was the last. */
static void http_close_cb(struct evhttp_connection *evcon, void *arg)
{
	(void)evcon;
	http_conn_forget(arg);
}

/*
 * The one state change of a connection, NEW to OPEN: the bufferevent's callback argument is the
 * evhttp_connection evhttp made around it, and its close callback becomes ours. The callbacks are
 * gone when evhttp already freed the connection (it failed to set it up); our reference kept the
 * bufferevent's memory valid to find that out.
 */
static void http_conn_open(http_conn_t *c)
{
	void *evcon = NULL;

	if (c->state != HTTP_CONN_NEW) {
		log_msg(LOG_LEVEL_WARNING, HTTP_CONTEXT, "connection %lu: opened twice, ignored", c->id);
		return;
	}
	bufferevent_getcb(c->bev, NULL, NULL, NULL, &evcon);
	if (!evcon) {
		log_msg(LOG_LEVEL_DEBUG, HTTP_CONTEXT, "connection %lu: dropped before it opened", c->id);
		http_conn_forget(c);
		return;
	}
	(void)bufferevent_decref(c->bev);
	c->bev = NULL;
	c->evcon = evcon;
	c->state = HTTP_CONN_OPEN;
	evhttp_connection_set_closecb(c->evcon, http_close_cb, c);
}

/* Close C's connection ourselves, without an answer: evhttp frees it at once. */
static void http_conn_close(http_conn_t *c, const char *why)
{
	struct evhttp_connection *evcon = c->evcon;

	log_msg(LOG_LEVEL_DEBUG, HTTP_CONTEXT, "connection %lu closed: %s", c->id, why);
	evhttp_connection_set_closecb(evcon, NULL, NULL);
	http_conn_forget(c);
	evhttp_connection_free(evcon);
}

/*
 * Open the connections accepted since the last sweep, then close those past their deadline and,
 * past the cap, those nearest theirs: the longest-waiting go first.
 */
static void http_sweep_cb(evutil_socket_t fd, short what, void *arg)
{
	int64_t now = http_now_ms();
	http_conn_t *c, *next;
	(void)fd;
	(void)what;
	(void)arg;

	if (http_accepted >= HTTP_ACCEPT_BATCH && http_accept_state != HTTP_ACCEPT_BACKOFF)
		http_listeners_enable(true);
	http_accepted = 0;
	for (c = TAILQ_FIRST(&http_conns); c; c = next) {
		next = TAILQ_NEXT(c, link);
		if (c->state == HTTP_CONN_NEW)
			http_conn_open(c);
	}
	while ((c = TAILQ_FIRST(&http_conns)) && c->deadline_ms <= now)
		http_conn_close(c, "past its deadline");
	while (http_nconns > HTTP_MAX_CONNECTIONS) {
		http_set_crowded(true);
		http_crowd_closed++;
		http_conn_close(TAILQ_FIRST(&http_conns), "to make room");
	}
	http_sweep_arm();
}

/*
 * evhttp asks for a bufferevent for each accepted connection: make it as evhttp would, track the
 * connection from now (its deadline runs from the accept), and have the sweep open it next. The
 * listener accepts until accept() would block; after a batch it waits for the sweep instead.
 */
static struct bufferevent *http_bev_cb(struct event_base *base, void *arg)
{
	struct bufferevent *bev = bufferevent_socket_new(base, -1, 0);
	http_conn_t *c = calloc(1, sizeof(*c));
	(void)arg;

	event_active(http_sweep_timer, EV_TIMEOUT, 1);
	if (++http_accepted == HTTP_ACCEPT_BATCH)
		http_listeners_enable(false);
	if (!bev || !c) {
		free(c);
		return bev; /* out of memory: evhttp's idle timeout still bounds it */
	}
	bufferevent_incref(bev);
	c->state = HTTP_CONN_NEW;
	c->id = ++http_conn_ids;
	c->bev = bev;
	c->deadline_ms = http_now_ms() + HTTP_DEADLINE_MS;
	TAILQ_INSERT_TAIL(&http_conns, c, link);
	http_nconns++;
	return bev;
}

/* A whole request came: its answer and the next request have a deadline of their own. */
static void http_conn_renew(struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	http_conn_t *c;

	for (c = TAILQ_FIRST(&http_conns); c; c = TAILQ_NEXT(c, link)) {
		if (c->state == HTTP_CONN_OPEN && c->evcon == evcon) {
			c->deadline_ms = http_now_ms() + HTTP_DEADLINE_MS;
			TAILQ_REMOVE(&http_conns, c, link);
			TAILQ_INSERT_TAIL(&http_conns, c, link);
			return;
		}
	}
}

/* Bind and listen on one resolved address and hand the socket to evhttp; errno on failure. */
static bool http_listen_one(const struct addrinfo *ai)
{
	struct evhttp_bound_socket *bound;
	int one = 1, fd, saved;

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
		return false;
	/* Restart at once while old connections linger in TIME_WAIT; a live listener still conflicts. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
		goto fail;
	/* "localhost" may give both ::1 and 127.0.0.1: each family gets its own socket. */
	if (ai->ai_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0)
		goto fail;
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, HTTP_BACKLOG) != 0)
		goto fail;
	bound = evhttp_accept_socket_with_handle(http, fd);
	if (!bound) {
		errno = ENOMEM;
		goto fail;
	}
	evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(bound), http_accept_error_cb);
	return true;
fail:
	saved = errno;
	close(fd);
	errno = saved;
	return false;
}

static void http_reply(struct evhttp_request *req, int code, const char *reason, const char *content_type,
		       const char *body, size_t len)
{
	struct evbuffer *buf = evbuffer_new();
	struct evkeyvalq *headers = evhttp_request_get_output_headers(req);

	if (!buf || evbuffer_add(buf, body, len) != 0) {
		if (buf)
			evbuffer_free(buf);
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	evhttp_add_header(headers, "Content-Type", content_type);
	evhttp_add_header(headers, "Cache-Control", "no-store");
	evhttp_send_reply(req, code, reason, buf);
	evbuffer_free(buf);
}

static void http_reply_text(struct evhttp_request *req, int code, const char *reason, const char *text)
{
	http_reply(req, code, reason, TEXT_CONTENT_TYPE, text, strlen(text));
}

static void http_metrics(struct evhttp_request *req)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);

	if (!out) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	metrics_render(out);
	if (fclose(out) != 0 || !text) {
		free(text);
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	http_reply(req, HTTP_OK, "OK", METRICS_CONTENT_TYPE, text, len);
	free(text);
}

static void http_healthz(struct evhttp_request *req)
{
	const char *reason;
	char body[640];

	if (metrics_database_up(&reason)) {
		http_reply_text(req, HTTP_OK, "OK", "ok\n");
		return;
	}
	snprintf(body, sizeof(body), "database down: %s\n", reason);
	http_reply_text(req, 503, "Service Unavailable", body);
}

static const char *http_method_name(enum evhttp_cmd_type cmd)
{
	switch (cmd) {
	case EVHTTP_REQ_GET:
		return "GET";
	case EVHTTP_REQ_HEAD:
		return "HEAD";
	case EVHTTP_REQ_POST:
		return "POST";
	case EVHTTP_REQ_PUT:
		return "PUT";
	case EVHTTP_REQ_DELETE:
		return "DELETE";
	case EVHTTP_REQ_OPTIONS:
		return "OPTIONS";
	case EVHTTP_REQ_TRACE:
		return "TRACE";
	case EVHTTP_REQ_CONNECT:
		return "CONNECT";
	case EVHTTP_REQ_PATCH:
		return "PATCH";
	}
	return "?";
}

/* Every request lands here: route by path, then method. */
static void http_request_cb(struct evhttp_request *req, void *arg)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	bool metrics, healthz;
	(void)arg;

	http_conn_renew(req);
	if (!path)
		path = "";
	log_msg(LOG_LEVEL_DEBUG, HTTP_CONTEXT, "%s %s", http_method_name(cmd), path);
	metrics = strcmp(path, "/metrics") == 0;
	healthz = strcmp(path, "/healthz") == 0;
	if (!metrics && !healthz) {
		http_reply_text(req, HTTP_NOTFOUND, "Not Found", "not found: try /metrics or /healthz\n");
		return;
	}
	/* HEAD is GET without the body; evhttp leaves the body out. */
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
		http_reply_text(req, HTTP_BADMETHOD, "Method Not Allowed", "method not allowed: use GET\n");
		return;
	}
	if (metrics)
		http_metrics(req);
	else
		http_healthz(req);
}

bool http_start(struct event_base *base, const char *address)
{
	struct addrinfo hints = {0}, *res = NULL;
	char host[256], port[16];
	int rc, bound = 0;

	if (!address || !*address) {
		log_msg(LOG_LEVEL_INFO, HTTP_CONTEXT, "http.listen is empty: no /metrics or /healthz");
		return true;
	}
	if (!util_split_host_port(address, host, sizeof(host), port, sizeof(port))) {
		log_error("cannot listen on HTTP address %s: not HOST:PORT", address);
		return false;
	}
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		log_error("cannot listen on HTTP address %s: %s", address, gai_strerror(rc));
		return false;
	}
	http = evhttp_new(base);
	http_accept_timer = evtimer_new(base, http_accept_timer_cb, NULL);
	http_sweep_timer = evtimer_new(base, http_sweep_cb, NULL);
	if (!http || !http_accept_timer || !http_sweep_timer) {
		http_stop();
		freeaddrinfo(res);
		log_error("cannot listen on HTTP address %s: out of memory", address);
		return false;
	}
	/* evhttp's inactivity timeout stays, for a connection the deadline could not track (no memory). */
	evhttp_set_timeout(http, HTTP_DEADLINE_MS / 1000);
	evhttp_set_max_headers_size(http, HTTP_MAX_HEADERS_SIZE);
	evhttp_set_max_body_size(http, HTTP_MAX_BODY_SIZE);
	/* Let every method reach the callback, which answers 405 with an Allow header. */
	evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
						 EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
						 EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
	evhttp_set_gencb(http, http_request_cb, NULL);
	evhttp_set_bevcb(http, http_bev_cb, NULL);
	for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		if (!http_listen_one(ai)) {
			log_error("cannot listen on HTTP address %s: %s", address, strerror(errno));
			freeaddrinfo(res);
			http_stop();
			return false;
		}
		bound++;
	}
	freeaddrinfo(res);
	log_msg(LOG_LEVEL_NOTICE, HTTP_CONTEXT, "serving /metrics and /healthz on %s (%d socket%s)", address,
		bound, bound == 1 ? "" : "s");
	return true;
}

void http_stop(void)
{
	http_conn_t *c;

	/* evhttp_free closes every connection: ours are forgotten first, quietly. */
	while ((c = TAILQ_FIRST(&http_conns))) {
		TAILQ_REMOVE(&http_conns, c, link);
		if (c->state == HTTP_CONN_NEW)
			(void)bufferevent_decref(c->bev);
		else
			evhttp_connection_set_closecb(c->evcon, NULL, NULL);
		free(c);
	}
	http_nconns = 0;
	http_accepted = 0;
	http_crowded = false;
	if (http)
		evhttp_free(http);
	http = NULL;
	if (http_accept_timer)
		event_free(http_accept_timer);
	http_accept_timer = NULL;
	if (http_sweep_timer)
		event_free(http_sweep_timer);
	http_sweep_timer = NULL;
	http_accept_state = HTTP_ACCEPT_ON;
}
