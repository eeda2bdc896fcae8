/*
 * What the daemon exports on /metrics and /healthz. Modules report into this registry as
 * things happen; http.c renders it. Pure bookkeeping: no I/O.
 */
#ifndef BACKFILLD_METRICS_H
#define BACKFILLD_METRICS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* A job this instance runs (or ran: finished jobs stay until 100 newer ones replace them). */
typedef struct metrics_job_report {
	int64_t id;
	const char *target;   /* "schema.table" */
	int64_t rows_scanned; /* the job's totals, as committed */
	int64_t rows_changed;
	int64_t batches;
	int64_t batch_size; /* the controller's current choice */
	int64_t sleep_ms;
	const char *throttled_reason; /* NULL while running freely */
	bool running;		      /* false once it left this instance */
} metrics_job_report_t;

void metrics_job(const metrics_job_report_t *report);

/* One committed batch took SECONDS (backfilld_batch_duration_seconds histogram). */
void metrics_batch_duration(double seconds);

/* Replication lag of one standby or logical slot, as sampled. */
void metrics_standby_lag(const char *standby, int64_t bytes, double seconds);

/* Forget standbys not reported since the last call (a new sample round begins). */
void metrics_standby_round(void);

/* Sessions currently waiting on locks held by our batches. */
void metrics_blocked_sessions(int64_t n);

/* WAL not archived yet, in bytes, as sampled; negative: not measured (archive_mode off, or
 * unknown), and the gauge has no sample. */
void metrics_archive_backlog(int64_t bytes);

/* Jobs in the queue by state (all instances), as last counted: report each state of one count,
 * then call metrics_queue_round(); the contract's six states not reported read 0. */
void metrics_queue_jobs(const char *state, int64_t n);
void metrics_queue_round(void);

void metrics_paused(bool paused);

/* The queue connection is up (schema checked), or why not: REASON is kept with its passwords
 * masked (text_mask) and its whitespace folded onto one line. */
void metrics_database(bool up, const char *reason);
bool metrics_database_up(const char **reason);

/* Prometheus text format 0.0.4 of everything above. */
void metrics_render(FILE *out);

/* Free everything (shutdown). */
void metrics_reset(void);

/* For systemd's STATUS= line: "1234 rows/s" over the running jobs' recent batches, then
 * ", throttled: REASON, ..." when some running job is held back. */
void metrics_summary(char *buf, size_t len);

/* Tests: the clock (seconds) rates are measured with; NULL is CLOCK_MONOTONIC. metrics_reset()
 * restores it. */
void metrics_set_clock(double (*now)(void));

#endif
