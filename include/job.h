/*
 * One claimed job: its definition, read over the queue connection; its own session, logged in
 * as the role that submitted it; its keyset walk, one transaction per batch with the checkpoint
 * inside it; and the states it passes through (loading, connecting, checking, in a batch,
 * sleeping, held, releasing, finished).
 */
#ifndef BACKFILLD_JOB_H
#define BACKFILLD_JOB_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

typedef struct job job_t;

/* Take over the job in row ROW of a <schema>.jobs result (as _claim returns it) and start it. */
job_t *job_start(const PGresult *res, int row) __attribute__((warn_unused_result));

/* Start slice SLICE of parallel job ID (TARGET names its table in the log), which this instance
 * holds: the job's first runner cut it into slices and starts one runner per slice. */
job_t *job_start_slice(int64_t id, const char *target, int slice) __attribute__((warn_unused_result));

int64_t job_id(const job_t *job);

/* Another runner of the same job (a slice of a parallel job) that has not finished. */
bool job_is_live_sibling(const job_t *job, const job_t *other);

/* The daemon's pause mode changed: held jobs resume, running ones hold at the next boundary. */
void job_pause_changed(job_t *job);

/* Shutdown: no new batch; the one in flight finishes, then the lease is released (pending). */
void job_stop(job_t *job);

/* The backend of the batch (or the job's VACUUM of its target) in flight, or 0 if none. */
int job_batch_backend_pid(const job_t *job);

/* Ask the server to cancel the batch in flight (it rolls back), or the job's VACUUM (skipped this
 * time). False when neither is in flight. */
bool job_cancel_batch(job_t *job);

/*
 * The control connection renewed leases: STATE and OWNER are what the queue holds for this
 * job now (NULL when the row is gone). A lost lease or a user's pause/cancel ends the job.
 */
void job_lease_seen(job_t *job, const char *state, const char *owner);

/*
 * SESSIONS other sessions wait on locks of this job's batch, the longest for WAITED_MS: past
 * max_blocked_ms the batch is cancelled (it rolls back) and retried with half the size. A VACUUM
 * of the job's that blocks them as long is cancelled, and skipped this time.
 */
void job_on_blocked(job_t *job, int64_t sessions, int64_t waited_ms);

/* Nothing more will happen. */
bool job_is_finished(const job_t *job);

/* Finished, and no request of its own is still on the queue connection: the daemon may free it. */
bool job_can_free(const job_t *job);

void job_free(job_t *job);

#endif
