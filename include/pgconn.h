/*
 * One PostgreSQL connection on the event loop: non-blocking connect, pipeline-mode
 * requests (several statements, one Sync, one round trip), LISTEN notifications, and
 * reconnection with jittered exponential backoff. Nothing else in the daemon touches libpq
 * sockets.
 */
#ifndef BACKFILLD_PGCONN_H
#define BACKFILLD_PGCONN_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

struct event_base;
typedef struct pgconn pgconn_t;

typedef enum pgconn_event {
	PGCONN_EVENT_READY, /* connected and the session set up: requests may be sent */
	PGCONN_EVENT_LOST,  /* the connection failed or broke; it reconnects itself after a backoff */
} pgconn_event_t;

/*
 * One statement of a request. Params are text values, NULL for SQL NULL. With PREPARE set, SQL
 * is prepared under that name (NPARAMS parameter types in TYPES, or none: the server infers
 * them) instead of run; with PREPARE set and SQL NULL, the prepared statement of that name runs
 * with PARAMS.
 */
typedef struct pgconn_stmt {
	const char *sql;
	int nparams;
	const char *const *params;
	const char *prepare;
	const Oid *types;
} pgconn_stmt_t;

/* What a request produced; valid only during the result callback. */
typedef struct pgconn_result {
	PGresult *const *results; /* one per statement, NULL where none arrived */
	int n;
	bool ok;	      /* every statement succeeded */
	bool broken;	      /* the connection broke first: the outcome on the server is unknown */
	int failed_index;     /* the statement that failed, -1 if none */
	const char *sqlstate; /* of the failure; "" when broken or ok */
	const char *message;  /* the server's primary message, or the connection error */
} pgconn_result_t;

typedef void (*pgconn_result_cb)(pgconn_t *conn, const pgconn_result_t *result, void *arg);
typedef void (*pgconn_event_cb)(pgconn_t *conn, pgconn_event_t event, const char *reason, void *arg);
typedef void (*pgconn_notify_cb)(pgconn_t *conn, const char *channel, const char *payload, void *arg);

/*
 * The settings a session starts with. A daemon session (queue, sampler) fixes its formats
 * (DateStyle ISO, TimeZone UTC, extra_float_digits 3), its search_path (pg_catalog, pg_temp) and
 * a lock_timeout. A job session takes the role's and the database's settings as they are: the
 * job's SQL must see exactly what its submitter's own session would.
 */
typedef enum pgconn_session {
	PGCONN_SESSION_DAEMON,
	PGCONN_SESSION_JOB,
} pgconn_session_t;

typedef struct pgconn_options {
	const char *conninfo; /* the user's connection string or URI */
	const char *user;     /* log in as this role, whatever CONNINFO says; NULL: as it says */
	pgconn_session_t session;
	const char *application_name; /* shown in pg_stat_activity, e.g. "backfilld job 12" */
	const char *log_context;      /* prefix of this connection's log lines */
	int64_t idle_in_transaction_ms;
	int64_t lock_timeout_ms; /* a daemon session's lock_timeout; 0: the server's */
	pgconn_event_cb on_event;
	pgconn_notify_cb on_notify; /* may be NULL */
	void *arg;		    /* passed to on_event and on_notify */
} pgconn_options_t;

/* A new, unconnected connection. Strings in OPTIONS are copied. */
pgconn_t *pgconn_new(struct event_base *base, const pgconn_options_t *options)
	__attribute__((warn_unused_result));

/* Start connecting (now, or restart at once if a reconnect is pending). */
void pgconn_connect(pgconn_t *conn);

/*
 * Queue a request: the statements run in pipeline mode followed by one Sync, so they form one
 * round trip. CB runs once with the outcome (also when the connection breaks). A request whose
 * transaction is left aborted or open is followed by a ROLLBACK before the next one.
 * Returns false, without calling CB, when the connection is not ready.
 */
bool pgconn_send(pgconn_t *conn, const pgconn_stmt_t *stmts, int n, pgconn_result_cb cb, void *arg)
	__attribute__((warn_unused_result));

/* Connected and set up. */
bool pgconn_is_ready(const pgconn_t *conn);

/* Ready with no request queued or in flight. */
bool pgconn_is_idle(const pgconn_t *conn);

/* The server process of the current connection, 0 when not connected. */
int pgconn_backend_pid(const pgconn_t *conn);

/* Why the last attempt failed or the connection was lost ("" if it never was). */
const char *pgconn_last_error(const pgconn_t *conn);

/*
 * Ask the server to cancel what the connection runs now (libpq's cancel request, sent from a
 * thread of its own so the loop never waits on it). The statement in flight, if any, fails with
 * 57014. False when there is nothing to cancel or the request could not be started.
 */
bool pgconn_cancel(pgconn_t *conn);

/* Close the connection; queued requests get a broken result. No reconnect until pgconn_connect. */
void pgconn_disconnect(pgconn_t *conn);

/* Close and free. Safe inside the connection's own callbacks: the free is then deferred. */
void pgconn_free(pgconn_t *conn);

/* Helpers over results. */
const char *pgconn_value(const PGresult *res, int row, int col); /* NULL for SQL NULL */
int64_t pgconn_int64(const PGresult *res, int row, int col, int64_t if_null);

#endif
