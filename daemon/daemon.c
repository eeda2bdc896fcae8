/*
 * The daemon: the event base, the current configuration, the modes signals set, the jobs
 * this instance runs, and the timers that claim more, renew leases and stop in time.
 */
#include "daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "exitcodes.h"
#include "http.h"
#include "job.h"
#include "log.h"
#include "metrics.h"
#include "sdnotify.h"
#include "pgconn.h"
#include "queue.h"
#include "sampler.h"
#include "signals.h"
#include "util.h"

#define MAX_JOBS 1024
#define STOP_HARD_LIMIT_MS 5000 /* after the grace: cancelled batches get this long to roll back */

typedef enum daemon_mode {
	DAEMON_RUNNING,
	DAEMON_STOPPING, /* waiting for jobs to give their leases back */
	DAEMON_EXITING,	 /* the loop is ending */
} daemon_mode_t;

static struct {
	struct event_base *base;
	config_t *config;
	daemon_options_t options;
	daemon_mode_t mode;
	bool paused;
	int exit_code;

	job_t *jobs[MAX_JOBS];
	int njobs;
	job_t *finished[MAX_JOBS]; /* freed after the loop iteration that finished them */
	int nfinished;

	walbudget_t wal; /* throttle.max_wal_bytes_per_s */
	struct {
		int64_t id;
		walbudget_t budget;
	} job_wal[MAX_JOBS]; /* the WAL budgets of jobs that have their own */
	int njob_wal;

	bool ready_sent; /* READY=1 went to systemd */
	bool claiming;	 /* a claim request is in flight */
	bool idle_check; /* an --exit-when-idle count is in flight */
	bool renewing;
	struct event *wake;	 /* zero-delay: claim, reap finished jobs */
	struct event *poll;	 /* poll_interval_ms: rescan without a NOTIFY */
	struct event *renew;	 /* lease_ms / 3 */
	struct event *grace;	 /* shutdown_grace_ms after SIGTERM */
	struct event *hard_stop; /* the last resort after the grace */
} d;

struct event_base *daemon_base(void)
{
	return d.base;
}

const config_t *daemon_config(void)
{
	return d.config;
}

const char *daemon_name(void)
{
	return d.config->name;
}

bool daemon_paused(void)
{
	return d.paused;
}

bool daemon_stopping(void)
{
	return d.mode != DAEMON_RUNNING;
}

static void daemon_arm(struct event *ev, int64_t ms)
{
	struct timeval tv = util_ms_to_tv(ms);
	evtimer_add(ev, &tv);
}

void daemon_wake(void)
{
	if (d.wake && !evtimer_pending(d.wake, NULL))
		daemon_arm(d.wake, 0);
}

walbudget_t *daemon_wal_budget(void)
{
	return walbudget_on(&d.wal) ? &d.wal : NULL;
}

walbudget_t *daemon_job_wal_budget(int64_t id, int64_t rate)
{
	int i = 0;

	if (rate <= 0)
		return NULL;
	while (i < d.njob_wal && d.job_wal[i].id != id)
		i++;
	if (i == d.njob_wal) {
		if (d.njob_wal >= MAX_JOBS)
			return NULL; /* never reached: one per job this instance runs */
		d.njob_wal++;
		d.job_wal[i].id = id;
		walbudget_init(&d.job_wal[i].budget, rate, util_now_ms());
	} else if (d.job_wal[i].budget.rate != (double)rate) {
		walbudget_set_rate(&d.job_wal[i].budget, rate, util_now_ms());
	}
	return &d.job_wal[i].budget;
}

/* JOB left: its job's WAL budget goes with its last runner here. */
static void daemon_drop_job_wal(const job_t *job)
{
	for (int i = 0; i < d.njobs; i++)
		if (job_id(d.jobs[i]) == job_id(job))
			return;
	for (int i = 0; i < d.njob_wal; i++)
		if (d.job_wal[i].id == job_id(job))
			d.job_wal[i--] = d.job_wal[--d.njob_wal];
}

void daemon_job_finished(job_t *job)
{
	for (int i = 0; i < d.njobs; i++) {
		if (d.jobs[i] == job) {
			d.jobs[i] = d.jobs[--d.njobs];
			d.finished[d.nfinished++] = job;
			break;
		}
	}
	daemon_drop_job_wal(job);
	daemon_wake();
}

void daemon_add_job(job_t *job)
{
	if (d.njobs >= MAX_JOBS) {
		/* never reached: workers and parallel are far below it */
		log_error("too many jobs at once (%d): job %lld is left to its lease", d.njobs,
			  (long long)job_id(job));
		job_free(job);
		return;
	}
	d.jobs[d.njobs++] = job;
	if (d.mode != DAEMON_RUNNING)
		job_stop(job);
}

job_t *daemon_live_sibling(const job_t *job)
{
	for (int i = 0; i < d.njobs; i++)
		if (job_is_live_sibling(job, d.jobs[i]))
			return d.jobs[i];
	return NULL;
}

void daemon_each_sibling(const job_t *job, void (*fn)(job_t *sibling, void *arg), void *arg)
{
	for (int i = 0; i < d.njobs; i++)
		if (job_is_live_sibling(job, d.jobs[i]))
			fn(d.jobs[i], arg);
}

/* Jobs running here: the runners of one parallel job count once. */
static int daemon_distinct_jobs(void)
{
	int n = 0;
	for (int i = 0; i < d.njobs; i++) {
		bool seen = false;
		for (int k = 0; k < i && !seen; k++)
			seen = job_id(d.jobs[k]) == job_id(d.jobs[i]);
		n += !seen;
	}
	return n;
}

int daemon_njobs(void)
{
	return d.njobs;
}

void daemon_batch_pids(char *buf, size_t len)
{
	size_t used = 0;

	used += (size_t)snprintf(buf, len, "{");
	for (int i = 0; i < d.njobs && used + 16 < len; i++) {
		int pid = job_batch_backend_pid(d.jobs[i]);
		if (pid)
			used += (size_t)snprintf(buf + used, len - used, "%s%d", used > 1 ? "," : "", pid);
	}
	snprintf(buf + used, len - used, "}");
}

void daemon_on_blocked(int pid, int64_t sessions, int64_t waited_ms)
{
	for (int i = 0; i < d.njobs; i++) {
		if (pid && job_batch_backend_pid(d.jobs[i]) == pid) {
			job_on_blocked(d.jobs[i], sessions, waited_ms);
			return;
		}
	}
}

/* One STATUS= line for systemd, sent when it changes. */
static void daemon_send_status(void)
{
	static char last[256];
	char status[256], summary[160];

	metrics_summary(summary, sizeof(summary));
	snprintf(status, sizeof(status), "%s: %d job(s) running, %s%s",
		 !queue_is_up()		    ? "waiting for the queue"
		 : d.mode != DAEMON_RUNNING ? "stopping"
					    : "running",
		 d.njobs, summary, d.paused ? ", paused by signal" : "");
	if (strcmp(status, last) != 0) {
		snprintf(last, sizeof(last), "%s", status);
		notify_status(status);
	}
}

/* What /healthz says: the queue connection is up and answering. */
static void daemon_report_health(void)
{
	char why[512];
	bool healthy = queue_healthy(why, sizeof(why));
	static bool was_healthy = true;

	if (!healthy && was_healthy && queue_is_up())
		log_warning("%s", why);
	was_healthy = healthy || !queue_is_up();
	metrics_database(healthy, why);
}

/* ---- ending ---- */

static void daemon_exit_loop(int code)
{
	d.mode = DAEMON_EXITING;
	d.exit_code = code;
	event_base_loopexit(d.base, NULL);
}

/* Stopping and no job left: done. */
static void daemon_check_stopped(void)
{
	if (d.mode == DAEMON_STOPPING && d.njobs == 0) {
		log_notice("every lease given back; exiting");
		daemon_exit_loop(EXIT_OK);
	}
}

static void daemon_grace_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	for (int i = 0; i < d.njobs; i++) {
		int pid = job_batch_backend_pid(d.jobs[i]);
		if (pid && job_cancel_batch(d.jobs[i]))
			log_notice("shutdown grace of %lld ms passed: cancelling the batch of job %lld "
				   "(backend %d)",
				   (long long)d.config->shutdown_grace_ms, (long long)job_id(d.jobs[i]), pid);
	}
	daemon_arm(d.hard_stop, STOP_HARD_LIMIT_MS);
}

static void daemon_hard_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	log_warning("%d job(s) did not give their lease back in time; exiting anyway (leases expire by "
		    "themselves)",
		    d.njobs);
	daemon_exit_loop(EXIT_RUNTIME);
}

void daemon_request_stop(int signo)
{
	if (d.mode != DAEMON_RUNNING) {
		log_warning("second stop signal (%s): exiting at once", strsignal(signo));
		notify_stopping();
		_exit(EXIT_RUNTIME); /* no cleanup: leases expire by themselves */
	}
	log_notice(
		"stop requested (%s): finishing batches in flight, then giving leases back (grace %lld ms)",
		strsignal(signo), (long long)d.config->shutdown_grace_ms);
	notify_stopping();
	d.mode = DAEMON_STOPPING;
	for (int i = d.njobs - 1; i >= 0; i--)
		job_stop(d.jobs[i]);
	daemon_arm(d.grace, d.config->shutdown_grace_ms);
	daemon_wake();
}

/* ---- pause and reload ---- */

void daemon_set_paused(bool paused)
{
	if (d.paused == paused) {
		log_info("already %s", paused ? "paused" : "running");
		return;
	}
	d.paused = paused;
	metrics_paused(paused);
	log_notice(paused ? "paused: batches in flight commit, no new batch starts, leases are kept"
			  : "resumed");
	for (int i = 0; i < d.njobs; i++)
		job_pause_changed(d.jobs[i]);
	daemon_send_status();
	daemon_wake();
}

static void daemon_warn_restart_only(const char *key)
{
	log_warning("reload: %s changed, but it only takes effect at restart; keeping the running value",
		    key);
}

void daemon_reload(void)
{
	char err[1024];
	config_t *fresh;

	if (!d.options.config_path) {
		log_warning("reload: no configuration file to read");
		return;
	}
	notify_reloading();
	fresh = config_load(d.options.config_path, err, sizeof(err));
	if (!fresh) {
		log_error("reload failed, keeping the running configuration: %s", err);
		notify_ready();
		return;
	}
	config_diff_restart_only(d.config, fresh, daemon_warn_restart_only);
	/* Keep what only a restart changes. */
	free(fresh->conninfo);
	free(fresh->job_conninfo);
	free(fresh->schema);
	free(fresh->name);
	free(fresh->http_listen);
	fresh->conninfo = strdup(d.config->conninfo);
	fresh->job_conninfo = strdup(d.config->job_conninfo);
	fresh->schema = strdup(d.config->schema);
	fresh->name = strdup(d.config->name);
	fresh->http_listen = strdup(d.config->http_listen);
	if (!fresh->conninfo || !fresh->job_conninfo || !fresh->schema || !fresh->name || !fresh->http_listen)
		abort();
	if (d.options.log_level_override)
		fresh->log_level = d.options.log_level;
	config_free(d.config);
	d.config = fresh;
	config_set_current(fresh);
	log_configure(d.config->log_level, d.config->log_syslog);
	if (d.wal.rate != (double)d.config->throttle.max_wal_bytes_per_s)
		walbudget_set_rate(&d.wal, d.config->throttle.max_wal_bytes_per_s, util_now_ms());
	log_notice("configuration reloaded from %s; it applies from the next batch", d.options.config_path);
	queue_record_limits();
	notify_ready();
}

/* ---- claiming ---- */

static void daemon_claim(void);

static void daemon_idle_cb(const PGresult *res, void *arg)
{
	(void)arg;
	d.idle_check = false;
	if (!res || d.mode != DAEMON_RUNNING || d.njobs > 0 || d.claiming || d.paused)
		return;
	if (pgconn_int64(res, 0, 0, 1) == 0) {
		log_notice("no runnable job is pending or running: exiting (--exit-when-idle)");
		daemon_exit_loop(EXIT_OK);
	}
}

static void daemon_claim_cb(const PGresult *res, void *arg)
{
	(void)arg;
	d.claiming = false;
	if (res && PQntuples(res) == 1) {
		if (d.mode != DAEMON_RUNNING) {
			/* Claimed just as a stop arrived: give it straight back through the job. */
			job_t *job = job_start(res, 0);
			d.jobs[d.njobs++] = job;
			job_stop(job);
			return;
		}
		d.jobs[d.njobs++] = job_start(res, 0);
		daemon_claim(); /* maybe more room */
		return;
	}
	if (res && d.options.exit_when_idle && d.njobs == 0 && !d.paused && !d.idle_check)
		d.idle_check = queue_runnable(daemon_idle_cb, NULL);
}

static void daemon_claim(void)
{
	int64_t ids[MAX_JOBS];

	if (d.mode != DAEMON_RUNNING || d.paused || d.claiming || !queue_is_up())
		return;
	if (daemon_distinct_jobs() >= d.config->workers || d.njobs + d.nfinished >= MAX_JOBS)
		return;
	for (int i = 0; i < d.njobs; i++)
		ids[i] = job_id(d.jobs[i]);
	d.claiming = queue_claim(ids, d.njobs, daemon_claim_cb, NULL);
}

static void daemon_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	/* Free the jobs that finished: no callback of theirs is on the stack now, and none is still
	 * to come from the queue connection (those that wait for one are freed later). */
	for (int i = 0; i < d.nfinished; i++) {
		if (job_can_free(d.finished[i])) {
			job_free(d.finished[i]);
			d.finished[i--] = d.finished[--d.nfinished];
		}
	}
	if (!d.ready_sent && queue_is_up()) {
		notify_ready(); /* after the schema check */
		d.ready_sent = true;
	}
	daemon_report_health();
	daemon_check_stopped();
	daemon_claim();
	daemon_send_status();
}

static void daemon_count_cb(const PGresult *res, void *arg)
{
	(void)arg;
	if (!res)
		return;
	for (int r = 0; r < PQntuples(res); r++)
		metrics_queue_jobs(pgconn_value(res, r, 0), pgconn_int64(res, r, 1, 0));
	metrics_queue_round();
}

static void daemon_poll_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	daemon_report_health(); /* a lost or stuck connection wakes nobody */
	if (queue_is_up() && !queue_count_states(daemon_count_cb, NULL))
		log_debug("cannot count the queue's jobs now");
	daemon_claim();
	daemon_send_status(); /* rows/s moves */
	daemon_arm(d.poll, d.config->poll_interval_ms);
}

static void daemon_renew_cb_rows(const PGresult *res, void *arg)
{
	(void)arg;
	d.renewing = false;
	if (!res)
		return;
	for (int i = 0; i < d.njobs; i++) {
		job_t *job = d.jobs[i];
		bool seen = false;
		for (int r = 0; r < PQntuples(res); r++) {
			if (pgconn_int64(res, r, 0, -1) == job_id(job)) {
				job_lease_seen(job, pgconn_value(res, r, 1), pgconn_value(res, r, 2));
				seen = true;
				break;
			}
		}
		if (!seen)
			job_lease_seen(job, NULL, NULL);
		if (d.njobs <= i || d.jobs[i] != job)
			i--; /* the job finished and left the array */
	}
}

static void daemon_renew_cb(evutil_socket_t fd, short what, void *arg)
{
	int64_t ids[MAX_JOBS];
	(void)fd;
	(void)what;
	(void)arg;

	if (d.njobs > 0 && !d.renewing && d.mode == DAEMON_RUNNING) {
		for (int i = 0; i < d.njobs; i++)
			ids[i] = job_id(d.jobs[i]);
		d.renewing = queue_renew(ids, d.njobs, daemon_renew_cb_rows, NULL);
	}
	daemon_arm(d.renew, d.config->lease_ms / 3);
}

/* ---- the loop ---- */

int daemon_run(config_t *config, const daemon_options_t *options)
{
	struct event *ev[5];

	memset(&d, 0, sizeof(d));
	d.config = config;
	config_set_current(config);
	d.options = *options;
	walbudget_init(&d.wal, config->throttle.max_wal_bytes_per_s, util_now_ms());
	srandom((unsigned)time(NULL) ^ (unsigned)getpid());

	d.base = event_base_new();
	if (!d.base) {
		log_error("cannot create the event loop");
		return EXIT_RUNTIME;
	}
	d.wake = evtimer_new(d.base, daemon_wake_cb, NULL);
	d.poll = evtimer_new(d.base, daemon_poll_cb, NULL);
	d.renew = evtimer_new(d.base, daemon_renew_cb, NULL);
	d.grace = evtimer_new(d.base, daemon_grace_cb, NULL);
	d.hard_stop = evtimer_new(d.base, daemon_hard_stop_cb, NULL);
	if (!d.wake || !d.poll || !d.renew || !d.grace || !d.hard_stop ||
	    !signals_install(d.base,
			     &(signals_hooks_t){daemon_set_paused, daemon_reload, daemon_request_stop})) {
		log_error("cannot set up the event loop");
		return EXIT_RUNTIME;
	}

	log_notice("backfilld %s starting as %s: %lld worker(s), queue schema %s", BACKFILLD_VERSION,
		   config->name, (long long)config->workers, config->schema);
	if (!http_start(d.base, config->http_listen)) {
		d.exit_code = EXIT_RUNTIME;
		goto out;
	}
	notify_start(d.base);
	queue_open(d.base, daemon_wake);
	sampler_open(d.base, &(sampler_hooks_t){daemon_batch_pids, daemon_njobs, daemon_on_blocked});
	daemon_arm(d.poll, d.config->poll_interval_ms);
	daemon_arm(d.renew, d.config->lease_ms / 3);

	event_base_dispatch(d.base);
out:

	/* Free everything so leak reports mean something. The queue goes first: its requests call
	 * back (broken) into the jobs that made them. */
	sampler_close();
	queue_close();
	for (int i = 0; i < d.njobs; i++)
		job_free(d.jobs[i]);
	for (int i = 0; i < d.nfinished; i++)
		job_free(d.finished[i]);
	signals_remove();
	notify_stop();
	ev[0] = d.wake;
	ev[1] = d.poll;
	ev[2] = d.renew;
	ev[3] = d.grace;
	ev[4] = d.hard_stop;
	for (int i = 0; i < 5; i++)
		event_free(ev[i]);
	http_stop();
	metrics_reset();
	event_base_free(d.base);
	config_free(d.config);
	return d.exit_code;
}
