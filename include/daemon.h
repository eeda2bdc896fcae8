/*
 * The daemon: one event loop, its modes (paused, stopping), the jobs it runs, and when to
 * claim more. Signal handlers and connections report here; the loop acts at safe points.
 */
#ifndef BACKFILLD_DAEMON_H
#define BACKFILLD_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "walbudget.h"

struct event_base;
typedef struct job job_t;

typedef struct daemon_options {
	const char *config_path;
	bool log_level_override; /* --log-level given: reloads keep it */
	log_level_t log_level;
	bool exit_when_idle;
} daemon_options_t;

/* Run until stopped. Takes ownership of CONFIG. Returns the process exit code. */
int daemon_run(config_t *config, const daemon_options_t *options) __attribute__((warn_unused_result));

struct event_base *daemon_base(void);
const config_t *daemon_config(void);

/* The instance name written to jobs.owner. */
const char *daemon_name(void);

/* SIGUSR1/SIGUSR2: every job holds at its next batch boundary, or resumes. */
bool daemon_paused(void);
void daemon_set_paused(bool paused);

/* SIGTERM/SIGINT: the first stops gracefully, a second exits at once. */
bool daemon_stopping(void);
void daemon_request_stop(int signo);

/* SIGHUP. */
void daemon_reload(void);

/* Something may be claimable (a NOTIFY, a job ended, the queue connection came up). */
void daemon_wake(void);

/* Run JOB too (a slice of a parallel job this instance holds). */
void daemon_add_job(job_t *job);

/* Another runner of JOB's job that has not finished, or NULL. */
job_t *daemon_live_sibling(const job_t *job);

/* Call FN(sibling, ARG) for every other runner of JOB's job that has not finished. */
void daemon_each_sibling(const job_t *job, void (*fn)(job_t *sibling, void *arg), void *arg);

/* A job reached its end; the daemon frees it once the loop iteration is over. */
void daemon_job_finished(job_t *job);

/* How many jobs (or slices of one) this instance runs now. */
int daemon_njobs(void);

/* The instance's WAL budget: throttle.max_wal_bytes_per_s for all its jobs and slices together,
 * its rate following reloads; NULL while it is off. */
walbudget_t *daemon_wal_budget(void);

/* The WAL budget of job ID on this instance (its max_wal_bytes_per_s column, RATE bytes a second),
 * shared by the job's runners: made full on first use, its rate set to RATE when that differs,
 * gone once the job's last runner here has finished. NULL when RATE is 0 or less. */
walbudget_t *daemon_job_wal_budget(int64_t id, int64_t rate);

/* The backends of the batches in flight, as an int[] literal ("{12,34}") for the sampler. */
void daemon_batch_pids(char *buf, size_t len);

/* The sampler saw SESSIONS waiting on locks of backend PID, the longest for WAITED_MS. */
void daemon_on_blocked(int pid, int64_t sessions, int64_t waited_ms);

#endif
