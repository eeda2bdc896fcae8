/*
 * The HTTP listener (libevent evhttp on the daemon's loop): GET /metrics (Prometheus text
 * format 0.0.4) and GET /healthz (200 while the queue connection is up, else 503 and why).
 */
#ifndef BACKFILLD_HTTP_H
#define BACKFILLD_HTTP_H

#include <stdbool.h>

struct event_base;

/*
 * Listen on ADDRESS, "HOST:PORT" or "[IPV6]:PORT" (every address HOST resolves to); "" or NULL
 * turns HTTP off and succeeds. False when it cannot listen, after logging an error that names
 * the address: a start-up failure.
 */
bool http_start(struct event_base *base, const char *address) __attribute__((warn_unused_result));

/* Close the listener and every open HTTP connection (before the event base is freed). */
void http_stop(void);

#endif
