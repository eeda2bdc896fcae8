/*
 * The queue connection: the daemon's control session. It checks the schema version,
 * LISTENs on backfill_jobs, claims jobs and renews leases, and carries the requests jobs make
 * as the daemon (loading a job, giving it back). A job's batches run in a session of its own.
 */
#ifndef BACKFILLD_QUEUE_H
#define BACKFILLD_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "pgconn.h"

/* RES is NULL when the request failed (already logged). */
typedef void (*queue_rows_cb)(const PGresult *res, void *arg);

struct event_base;

/* Create the connection and start connecting on BASE. WAKE is called when something may be
 * claimable (a NOTIFY, the connection came up) or the connection broke. */
void queue_open(struct event_base *base, void (*wake)(void));

/* Close and free (shutdown). */
void queue_close(void);

/* Connected, schema checked, listening. */
bool queue_is_up(void);

/* Record what the validation at INSERT must know of the configuration (daemon.max_parallel):
 * when the queue comes up, and after a reload. */
void queue_record_limits(void);

/* The server's server_version_num, as the queue last checked it (0 before). */
int queue_server_version(void);

/*
 * Up, and answering: a claim, a lease renewal or a count has succeeded within the last
 * max(3 x daemon.poll_interval_ms, daemon.lease_ms). Otherwise false, with WHY (LEN bytes) saying
 * what is wrong: for /healthz, which must not say ok while the queue is stuck.
 */
bool queue_healthy(char *why, size_t len);

/* Why the queue is not up ("" when it is). */
const char *queue_down_reason(void);

/* Claim one job not in EXCLUDE; CB gets zero or one row of <schema>.jobs. */
bool queue_claim(const int64_t *exclude, int n, queue_rows_cb cb, void *arg)
	__attribute__((warn_unused_result));

/* Renew the leases of IDS; CB gets rows (id, state, owner). */
bool queue_renew(const int64_t *ids, int n, queue_rows_cb cb, void *arg) __attribute__((warn_unused_result));

/* Count jobs that are runnable now (pending and due, or running); CB gets one row. */
bool queue_runnable(queue_rows_cb cb, void *arg) __attribute__((warn_unused_result));

/* Count the queue's jobs by state; CB gets rows (state, count). */
bool queue_count_states(queue_rows_cb cb, void *arg) __attribute__((warn_unused_result));

/*
 * Send a request of the caller's own on the queue connection (the daemon's role): pgconn_send's
 * contract. False, without calling CB, while the queue is not up.
 */
bool queue_send(const pgconn_stmt_t *stmts, int n, pgconn_result_cb cb, void *arg)
	__attribute__((warn_unused_result));

#endif
