/*
 * The metrics registry: what modules report (jobs, batch durations, lag, blocked sessions,
 * queue counts, pause, the queue connection), kept in plain arrays and rendered on demand
 * as Prometheus text format 0.0.4. No I/O besides writing to the FILE it is given.
 */
#include "metrics.h"
#include "reason.h"
#include "text.h"
#include "util.h"

#include <inttypes.h>
#include <stddef.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define METRICS_MAX_FINISHED 100 /* finished jobs kept, so their last counter values stay visible */
#define METRICS_MAX_REASONS 32	 /* distinct throttle reasons exported per job */
#define METRICS_RATE_SAMPLES 8	 /* (time, rows) samples per job for rows/s */
#define METRICS_RATE_WINDOW_S 60.0

/* backfilld_batch_duration_seconds: short batches aim at target_batch_ms (500 by default). */
static const double duration_buckets[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
#define NBUCKETS ((int)(sizeof(duration_buckets) / sizeof(duration_buckets[0])))

/* The throttle's reasons (the contract's and the sampler's holds): each running job exports all
 * of them, 1 on its current one, so a series never vanishes when a job starts running freely. */
#define known_reasons(r) reason_name((reason_t)((r) + 1))
#define NKNOWN_REASONS (REASON_COUNT - 1)

/* The job states backfilld_jobs always shows once the queue has been counted. */
static const char *const known_states[] = {"pending", "running", "paused", "done", "failed", "cancelled"};
#define NKNOWN_STATES ((int)(sizeof(known_states) / sizeof(known_states[0])))

typedef struct metrics_rate_sample {
	double t;
	int64_t rows;
} metrics_rate_sample_t;

typedef struct metrics_job_entry {
	int64_t id;
	char *target;
	int64_t rows_scanned, rows_changed, batches, batch_size, sleep_ms;
	char *reason; /* NULL: running freely */
	bool running;
	uint64_t finished_seq; /* order in which jobs finished, for eviction */
	metrics_rate_sample_t samples[METRICS_RATE_SAMPLES];
	int nsamples, next_sample;
} metrics_job_entry_t;

/* A labelled gauge that lives as long as it keeps being reported (standbys, queue states). */
typedef struct metrics_labelled {
	char *label;
	int64_t n;
	double seconds;
	bool seen; /* reported since the last round */
} metrics_labelled_t;

static struct {
	metrics_job_entry_t *jobs; /* sorted by id */
	int njobs, capjobs;
	uint64_t finish_seq;

	char *reasons[METRICS_MAX_REASONS]; /* reasons seen beyond the known ones */
	int nreasons;

	uint64_t buckets[NBUCKETS]; /* cumulative at render time; here per bucket */
	uint64_t duration_count;
	double duration_sum;

	metrics_labelled_t *standbys;
	int nstandbys, capstandbys;

	metrics_labelled_t *states;
	int nstates, capstates;
	bool counted; /* metrics_queue_round() was called at least once */

	int64_t blocked_sessions;
	int64_t archive_backlog;
	bool archive_measured; /* archive_backlog is a measurement (archive_mode on, and it was known) */
	bool paused;
	bool db_up;
	char *db_reason;

	double (*clock)(void);
} m;

static void *xrealloc(void *p, size_t size)
{
	void *q = realloc(p, size);
	if (!q)
		abort();
	return q;
}

/* A copy of S, "" for NULL. */
static char *xstrdup(const char *s)
{
	return util_strdup(s ? s : "");
}

static double metrics_now(void)
{
	return m.clock ? m.clock() : util_now_ms() / 1000.0;
}

void metrics_set_clock(double (*now)(void))
{
	m.clock = now;
}

/* ---- jobs ---- */

static metrics_job_entry_t *metrics_find_job(int64_t id)
{
	int lo = 0, hi = m.njobs;

	while (lo < hi) {
		int mid = lo + (hi - lo) / 2;
		if (m.jobs[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < m.njobs && m.jobs[lo].id == id)
		return &m.jobs[lo];
	if (m.njobs == m.capjobs) {
		m.capjobs = m.capjobs ? m.capjobs * 2 : 16;
		m.jobs = xrealloc(m.jobs, (size_t)m.capjobs * sizeof(*m.jobs));
	}
	memmove(&m.jobs[lo + 1], &m.jobs[lo], (size_t)(m.njobs - lo) * sizeof(*m.jobs));
	m.njobs++;
	memset(&m.jobs[lo], 0, sizeof(m.jobs[lo]));
	m.jobs[lo].id = id;
	m.jobs[lo].running = true;
	return &m.jobs[lo];
}

static void metrics_free_job(metrics_job_entry_t *job)
{
	free(job->target);
	free(job->reason);
}

/* Keep at most METRICS_MAX_FINISHED finished jobs: drop the one that finished first. */
static void metrics_evict_finished(void)
{
	int finished = 0, oldest = -1;

	for (int i = 0; i < m.njobs; i++) {
		if (m.jobs[i].running)
			continue;
		finished++;
		if (oldest < 0 || m.jobs[i].finished_seq < m.jobs[oldest].finished_seq)
			oldest = i;
	}
	if (finished <= METRICS_MAX_FINISHED)
		return;
	metrics_free_job(&m.jobs[oldest]);
	memmove(&m.jobs[oldest], &m.jobs[oldest + 1], (size_t)(m.njobs - oldest - 1) * sizeof(*m.jobs));
	m.njobs--;
}

/* Remember a reason outside the known list so every running job exports it from now on. */
static void metrics_note_reason(const char *reason)
{
	for (int i = 0; i < NKNOWN_REASONS; i++)
		if (strcmp(known_reasons(i), reason) == 0)
			return;
	for (int i = 0; i < m.nreasons; i++)
		if (strcmp(m.reasons[i], reason) == 0)
			return;
	if (m.nreasons < METRICS_MAX_REASONS)
		m.reasons[m.nreasons++] = xstrdup(reason);
}

void metrics_job(const metrics_job_report_t *report)
{
	metrics_job_entry_t *job = metrics_find_job(report->id);
	bool was_running = job->running && job->target != NULL;
	const char *reason =
		report->throttled_reason && *report->throttled_reason ? report->throttled_reason : NULL;

	if (!job->target || strcmp(job->target, report->target ? report->target : "") != 0) {
		free(job->target);
		job->target = xstrdup(report->target);
	}
	job->rows_scanned = report->rows_scanned;
	job->rows_changed = report->rows_changed;
	job->batches = report->batches;
	job->batch_size = report->batch_size;
	job->sleep_ms = report->sleep_ms;
	free(job->reason);
	job->reason = reason ? xstrdup(reason) : NULL;
	if (reason)
		metrics_note_reason(reason);

	if (report->running) {
		metrics_rate_sample_t *s = &job->samples[job->next_sample];
		if (!was_running) {
			job->nsamples = 0; /* (re)claimed: the rate starts afresh */
			job->next_sample = 0;
			s = &job->samples[0];
		}
		s->t = metrics_now();
		s->rows = report->rows_scanned;
		job->next_sample = (job->next_sample + 1) % METRICS_RATE_SAMPLES;
		if (job->nsamples < METRICS_RATE_SAMPLES)
			job->nsamples++;
		job->running = true;
		job->finished_seq = 0;
	} else {
		if (job->running)
			job->finished_seq = ++m.finish_seq;
		job->running = false;
		job->nsamples = 0;
		metrics_evict_finished();
	}
}

/* Rows per second of one running job over its recent samples, up to now. */
static double metrics_job_rate(const metrics_job_entry_t *job, double now)
{
	const metrics_rate_sample_t *oldest = NULL, *newest = NULL;

	for (int i = 0; i < job->nsamples; i++) {
		const metrics_rate_sample_t *s = &job->samples[i];
		if (now - s->t > METRICS_RATE_WINDOW_S)
			continue;
		if (!oldest || s->t < oldest->t)
			oldest = s;
		if (!newest || s->t > newest->t)
			newest = s;
	}
	if (!oldest || oldest == newest || now <= oldest->t)
		return 0;
	return (double)(newest->rows - oldest->rows) / (now - oldest->t);
}

void metrics_summary(char *buf, size_t len)
{
	double now = metrics_now(), rate = 0;
	size_t used;

	for (int i = 0; i < m.njobs; i++)
		if (m.jobs[i].running)
			rate += metrics_job_rate(&m.jobs[i], now);
	used = (size_t)snprintf(buf, len, "%.0f rows/s", rate);
	for (int i = 0, n = 0; i < m.njobs && used < len; i++) {
		const metrics_job_entry_t *job = &m.jobs[i];
		bool dup = false;
		if (!job->running || !job->reason)
			continue;
		for (int k = 0; k < i && !dup; k++)
			dup = m.jobs[k].running && m.jobs[k].reason &&
			      strcmp(m.jobs[k].reason, job->reason) == 0;
		if (dup)
			continue;
		used += (size_t)snprintf(buf + used, len - used, "%s%s",
					 n++ ? ", " : ", throttled: ", job->reason);
	}
}

/* ---- everything else ---- */

void metrics_batch_duration(double seconds)
{
	if (!(seconds >= 0)) /* NaN too */
		seconds = 0;
	for (int i = 0; i < NBUCKETS; i++) {
		if (seconds <= duration_buckets[i]) {
			m.buckets[i]++;
			break;
		}
	}
	m.duration_count++;
	m.duration_sum += seconds;
}

static metrics_labelled_t *metrics_labelled(metrics_labelled_t **arr, int *n, int *cap, const char *label)
{
	for (int i = 0; i < *n; i++)
		if (strcmp((*arr)[i].label, label) == 0)
			return &(*arr)[i];
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 8;
		*arr = xrealloc(*arr, (size_t)*cap * sizeof(**arr));
	}
	(*arr)[*n] = (metrics_labelled_t){.label = xstrdup(label)};
	return &(*arr)[(*n)++];
}

/* End of a round: forget what was not reported (KEEP: set to 0 instead), clear the marks. */
static void metrics_labelled_round(metrics_labelled_t *arr, int *n, bool (*keep)(const char *label))
{
	int out = 0;

	for (int i = 0; i < *n; i++) {
		if (!arr[i].seen) {
			if (keep && keep(arr[i].label)) {
				arr[i].n = 0;
				arr[i].seconds = 0;
			} else {
				free(arr[i].label);
				continue;
			}
		}
		arr[i].seen = false;
		arr[out++] = arr[i];
	}
	*n = out;
}

void metrics_standby_lag(const char *standby, int64_t bytes, double seconds)
{
	metrics_labelled_t *s =
		metrics_labelled(&m.standbys, &m.nstandbys, &m.capstandbys, standby ? standby : "");
	s->n = bytes;
	s->seconds = seconds;
	s->seen = true;
}

void metrics_standby_round(void)
{
	metrics_labelled_round(m.standbys, &m.nstandbys, NULL);
}

void metrics_blocked_sessions(int64_t n)
{
	m.blocked_sessions = n;
}

void metrics_archive_backlog(int64_t bytes)
{
	m.archive_measured = bytes >= 0;
	m.archive_backlog = bytes >= 0 ? bytes : 0;
}

void metrics_queue_jobs(const char *state, int64_t n)
{
	metrics_labelled_t *s = metrics_labelled(&m.states, &m.nstates, &m.capstates, state ? state : "");
	s->n = n;
	s->seen = true;
}

static bool metrics_known_state(const char *state)
{
	for (int i = 0; i < NKNOWN_STATES; i++)
		if (strcmp(known_states[i], state) == 0)
			return true;
	return false;
}

void metrics_queue_round(void)
{
	for (int i = 0; i < NKNOWN_STATES; i++)
		(void)metrics_labelled(&m.states, &m.nstates, &m.capstates, known_states[i]);
	metrics_labelled_round(m.states, &m.nstates, metrics_known_state);
	m.counted = true;
}

void metrics_paused(bool paused)
{
	m.paused = paused;
}

void metrics_database(bool up, const char *reason)
{
	char *clean, *out;

	free(m.db_reason);
	m.db_up = up;
	if (up) {
		m.db_reason = NULL;
		return;
	}
	/* /healthz answers anyone: a libpq message may quote the connection string. */
	clean = text_mask(reason && *reason ? reason : "not connected");
	if (!clean)
		abort();
	/* libpq messages span lines ("...failed: Connection refused\n\tIs the server running"). */
	out = clean;
	for (const char *p = clean; *p; p++) {
		bool space = *p == '\n' || *p == '\r' || *p == '\t' || *p == ' ';
		if (space && (out == clean || out[-1] == ' '))
			continue;
		*out++ = space ? ' ' : *p;
	}
	while (out > clean && out[-1] == ' ')
		out--;
	*out = '\0';
	m.db_reason = clean;
}

bool metrics_database_up(const char **reason)
{
	if (reason)
		*reason = m.db_up ? "" : m.db_reason ? m.db_reason : "not connected yet";
	return m.db_up;
}

/* ---- rendering ---- */

/* A label value with \\, \" and \n escaped, as the text format requires. */
static void put_label_value(FILE *out, const char *value)
{
	for (const char *p = value ? value : ""; *p; p++) {
		switch (*p) {
		case '\\':
			fputs("\\\\", out);
			break;
		case '"':
			fputs("\\\"", out);
			break;
		case '\n':
			fputs("\\n", out);
			break;
		default:
			fputc(*p, out);
			break;
		}
	}
}

/* The shortest decimal that reads back as V; +Inf, -Inf and NaN as Prometheus spells them. */
static void put_double(FILE *out, double v)
{
	char text[40];

	if (isnan(v)) {
		fputs("NaN", out);
		return;
	}
	if (isinf(v)) {
		fputs(v > 0 ? "+Inf" : "-Inf", out);
		return;
	}
	if (v == floor(v) && fabs(v) < 1e15) {
		fprintf(out, "%.0f", v); /* "10", not "1e+01" */
		return;
	}
	for (int precision = 1; precision <= 17; precision++) {
		snprintf(text, sizeof(text), "%.*g", precision, v);
		if (strtod(text, NULL) == v)
			break;
	}
	fputs(text, out);
}

static void put_family(FILE *out, const char *name, const char *type, const char *help)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void put_job_labels(FILE *out, const metrics_job_entry_t *job)
{
	fprintf(out, "{job=\"%" PRId64 "\",target=\"", job->id);
	put_label_value(out, job->target);
	fputc('"', out);
}

/* One series per kept job (RUNNING_ONLY: per running job) of an int64 field. */
static void put_job_ints(FILE *out, const char *name, size_t offset, bool running_only)
{
	for (int i = 0; i < m.njobs; i++) {
		const metrics_job_entry_t *job = &m.jobs[i];
		if (running_only && !job->running)
			continue;
		fputs(name, out);
		put_job_labels(out, job);
		fprintf(out, "} %" PRId64 "\n", *(const int64_t *)((const char *)job + offset));
	}
}

static void put_throttled(FILE *out, const metrics_job_entry_t *job, const char *reason)
{
	fputs("backfilld_throttled", out);
	put_job_labels(out, job);
	fputs(",reason=\"", out);
	put_label_value(out, reason);
	fprintf(out, "\"} %d\n", job->reason && strcmp(job->reason, reason) == 0 ? 1 : 0);
}

static void render_jobs(FILE *out)
{
	put_family(out, "backfilld_job_running", "gauge",
		   "1 while this instance runs the job, 0 once it left (the last 100 finished jobs stay).");
	for (int i = 0; i < m.njobs; i++) {
		fputs("backfilld_job_running", out);
		put_job_labels(out, &m.jobs[i]);
		fprintf(out, "} %d\n", m.jobs[i].running ? 1 : 0);
	}
	put_family(out, "backfilld_rows_scanned_total", "counter", "Rows the job walked, as committed.");
	put_job_ints(out, "backfilld_rows_scanned_total", offsetof(metrics_job_entry_t, rows_scanned), false);
	put_family(out, "backfilld_rows_changed_total", "counter", "Rows the job changed, as committed.");
	put_job_ints(out, "backfilld_rows_changed_total", offsetof(metrics_job_entry_t, rows_changed), false);
	put_family(out, "backfilld_batches_total", "counter", "Batches the job committed.");
	put_job_ints(out, "backfilld_batches_total", offsetof(metrics_job_entry_t, batches), false);
	put_family(out, "backfilld_batch_size", "gauge",
		   "The batch size the controller chose for a running job.");
	put_job_ints(out, "backfilld_batch_size", offsetof(metrics_job_entry_t, batch_size), true);

	put_family(out, "backfilld_sleep_seconds", "gauge",
		   "The pause between batches the controller chose for a running job.");
	for (int i = 0; i < m.njobs; i++) {
		if (!m.jobs[i].running)
			continue;
		fputs("backfilld_sleep_seconds", out);
		put_job_labels(out, &m.jobs[i]);
		fputs("} ", out);
		put_double(out, (double)m.jobs[i].sleep_ms / 1000.0);
		fputc('\n', out);
	}

	put_family(out, "backfilld_throttled", "gauge",
		   "1 on the reason a running job is held back by, 0 on every other reason; all 0 while it "
		   "runs freely.");
	for (int i = 0; i < m.njobs; i++) {
		const metrics_job_entry_t *job = &m.jobs[i];
		if (!job->running)
			continue;
		for (int r = 0; r < NKNOWN_REASONS; r++)
			put_throttled(out, job, known_reasons(r));
		for (int r = 0; r < m.nreasons; r++)
			put_throttled(out, job, m.reasons[r]);
		/* A reason past METRICS_MAX_REASONS still shows while current. */
		if (job->reason) {
			bool listed = false;
			for (int r = 0; r < NKNOWN_REASONS && !listed; r++)
				listed = strcmp(known_reasons(r), job->reason) == 0;
			for (int r = 0; r < m.nreasons && !listed; r++)
				listed = strcmp(m.reasons[r], job->reason) == 0;
			if (!listed)
				put_throttled(out, job, job->reason);
		}
	}
}

static void render_histogram(FILE *out)
{
	uint64_t cumulative = 0;

	put_family(out, "backfilld_batch_duration_seconds", "histogram",
		   "Time from BEGIN to COMMIT of each committed batch.");
	for (int i = 0; i < NBUCKETS; i++) {
		cumulative += m.buckets[i];
		fputs("backfilld_batch_duration_seconds_bucket{le=\"", out);
		put_double(out, duration_buckets[i]);
		fprintf(out, "\"} %" PRIu64 "\n", cumulative);
	}
	fprintf(out, "backfilld_batch_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", m.duration_count);
	fputs("backfilld_batch_duration_seconds_sum ", out);
	put_double(out, m.duration_sum);
	fprintf(out, "\nbackfilld_batch_duration_seconds_count %" PRIu64 "\n", m.duration_count);
}

static void render_standbys(FILE *out)
{
	put_family(out, "backfilld_replication_lag_bytes", "gauge",
		   "Replication lag of a watched standby or logical slot, as last sampled.");
	for (int i = 0; i < m.nstandbys; i++) {
		fputs("backfilld_replication_lag_bytes{standby=\"", out);
		put_label_value(out, m.standbys[i].label);
		fprintf(out, "\"} %" PRId64 "\n", m.standbys[i].n);
	}
	put_family(out, "backfilld_replication_lag_seconds", "gauge",
		   "Replay lag of a watched standby, as last sampled.");
	for (int i = 0; i < m.nstandbys; i++) {
		fputs("backfilld_replication_lag_seconds{standby=\"", out);
		put_label_value(out, m.standbys[i].label);
		fputs("\"} ", out);
		put_double(out, m.standbys[i].seconds);
		fputc('\n', out);
	}
}

void metrics_render(FILE *out)
{
	put_family(out, "backfilld_build_info", "gauge", "Always 1; the version is a label.");
	fputs("backfilld_build_info{version=\"", out);
	put_label_value(out, BACKFILLD_VERSION);
	fputs("\"} 1\n", out);
	put_family(out, "backfilld_up", "gauge",
		   "1 while the queue connection is up (connected, schema checked, listening).");
	fprintf(out, "backfilld_up %d\n", m.db_up ? 1 : 0);
	put_family(out, "backfilld_paused", "gauge", "1 while every job is paused by SIGUSR1.");
	fprintf(out, "backfilld_paused %d\n", m.paused ? 1 : 0);

	put_family(out, "backfilld_jobs", "gauge",
		   "Jobs in the queue by state, on every instance, as last counted.");
	for (int i = 0; m.counted && i < m.nstates; i++) {
		fputs("backfilld_jobs{state=\"", out);
		put_label_value(out, m.states[i].label);
		fprintf(out, "\"} %" PRId64 "\n", m.states[i].n);
	}

	render_jobs(out);
	render_histogram(out);
	render_standbys(out);

	put_family(out, "backfilld_blocked_sessions", "gauge",
		   "Sessions waiting on locks held by this instance's batches, as last sampled.");
	fprintf(out, "backfilld_blocked_sessions %" PRId64 "\n", m.blocked_sessions);

	put_family(out, "backfilld_archive_backlog_bytes", "gauge",
		   "WAL the primary keeps because it is not archived yet, as last sampled (only while "
		   "archive_mode is on and it could be measured).");
	if (m.archive_measured)
		fprintf(out, "backfilld_archive_backlog_bytes %" PRId64 "\n", m.archive_backlog);
}

void metrics_reset(void)
{
	for (int i = 0; i < m.njobs; i++)
		metrics_free_job(&m.jobs[i]);
	free(m.jobs);
	for (int i = 0; i < m.nreasons; i++)
		free(m.reasons[i]);
	for (int i = 0; i < m.nstandbys; i++)
		free(m.standbys[i].label);
	free(m.standbys);
	for (int i = 0; i < m.nstates; i++)
		free(m.states[i].label);
	free(m.states);
	free(m.db_reason);
	memset(&m, 0, sizeof(m));
}
