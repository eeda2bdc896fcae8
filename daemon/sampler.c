/*
 * The sampler. Lag bytes come from pg_stat_replication's replay_lsn (and logical slots'
 * confirmed_flush_lsn) against pg_current_wal_lsn(); lag time from the lag clock, not from
 * replay_lag or replay timestamps, which both lie. Blocked sessions are found by filtering
 * pg_stat_activity on wait_event_type = 'Lock' first and calling pg_blocking_pids() only on
 * those; the daemon then cancels the batch that blocks too long. The WAL archive backlog comes
 * from pg_stat_archiver (archive.c does the arithmetic); while it is over
 * max_archive_backlog_bytes the view holds every job.
 */
#include "sampler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "archive.h"
#include "config.h"
#include "lagclock.h"
#include "log.h"
#include "metrics.h"

#include "pgconn.h"
#include "util.h"

#define SAMPLER_CONTEXT "sampler"
#define MAX_AUTOVACUUM 64
#define STALE_SAMPLES 10      /* a view older than this many intervals (and 5 s) is unknown */
#define WARMUP_MS 5000	      /* how long jobs wait for the first sample before going on without */
#define PROBE_EVERY_MS 500    /* the CPU probe's interval (at most once a sample) until... */
#define PROBE_SETTLED 16      /* ...this many were taken (8 during batches), then: */
#define PROBE_SETTLED_MS 2000 /* (each probe is CPU work the application shares the CPU with) */
#define PROBE_WINDOW 64	      /* the baseline is the lower quartile of this many latest probes */
#define PROBE_IN_BATCH 8      /* the stretch is the mean of this many latest probes during batches */
#define PROBE_MIN_SEEN 12     /* probes before the stretch is told (the first few, as the daemon's */
#define PROBE_MIN_IN_BATCH 4  /* sessions start, run slow), and of them during batches */

static const char sample_wal_sql[] = "SELECT pg_catalog.pg_current_wal_lsn()::text";
static const char sample_standbys_sql[] =
	"SELECT r.application_name, r.replay_lsn::text, extract(epoch FROM r.replay_lag) * 1000, r.state"
	" FROM pg_catalog.pg_stat_replication r"
	" WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots s"
	"                   WHERE s.active_pid = r.pid AND s.slot_type = 'logical')";
static const char sample_slots_sql[] = "SELECT slot_name, confirmed_flush_lsn::text, wal_status"
				       " FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical'";
static const char sample_blocked_sql[] =
	"SELECT b.blocker, pg_catalog.count(DISTINCT a.pid),"
	" pg_catalog.max(extract(epoch FROM pg_catalog.clock_timestamp()"
	" - coalesce(l.waitstart, a.query_start))) * 1000"
	" FROM pg_catalog.pg_stat_activity a"
	" CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.pg_blocking_pids(a.pid)) AS b(blocker)"
	" LEFT JOIN pg_catalog.pg_locks l ON l.pid = a.pid AND NOT l.granted"
	" WHERE a.wait_event_type = 'Lock' AND b.blocker = ANY ($1::int[])"
	" GROUP BY b.blocker";
/* ~4 ms of one CPU: long enough for the scheduler to share the CPU with whatever else runs
 * (a shorter one mostly runs whole in one time slice and shows nothing). Timed by the server,
 * so the network is not in it. */
static const char sample_probe_sql[] =
	"SELECT extract(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp()) * 1000"
	" FROM (SELECT pg_catalog.count(*) FROM pg_catalog.generate_series(1, 20000)) AS g";
/* Other client sessions at work: active, in a transaction, or idle for less than half a second
 * (an application between its statements). One the daemon may not see (no pg_monitor) counts. */
static const char sample_others_sql[] =
	"SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a"
	" WHERE a.backend_type = 'client backend' AND a.pid <> pg_catalog.pg_backend_pid()"
	" AND a.application_name NOT LIKE 'backfilld%'"
	" AND (a.state IS NULL OR a.state <> 'idle'"
	"      OR a.state_change > pg_catalog.clock_timestamp() - interval '500 milliseconds')";
static const char sample_autovacuum_sql[] =
	"SELECT p.relid FROM pg_catalog.pg_stat_progress_vacuum p"
	" JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid WHERE a.backend_type = 'autovacuum worker'"
	" AND p.datid = (SELECT d.oid FROM pg_catalog.pg_database d"
	" WHERE d.datname = pg_catalog.current_database())";

/*
 * The WAL archive (archive.h), one row. The listing of pg_wal/archive_status is needed only when
 * pg_stat_archiver names no segment to count from, and needs pg_monitor: its function's EXECUTE
 * privilege is checked as the statement starts, however little of it runs, so a role without it
 * is sent the form without the listing (or the whole sample would fail).
 */
enum archive_col {
	ARCHIVE_COL_ON,		  /* archive_mode is on or always */
	ARCHIVE_COL_SEGMENT,	  /* wal_segment_size in bytes */
	ARCHIVE_COL_ARCHIVED,	  /* last_archived_wal */
	ARCHIVE_COL_FAILED,	  /* last_failed_wal */
	ARCHIVE_COL_FAILED_SINCE, /* it failed after its last success */
	ARCHIVE_COL_MAY_LIST,	  /* the role may list archive_status */
	ARCHIVE_COL_LISTED,	  /* it was listed (only when pg_stat_archiver names no segment) */
	ARCHIVE_COL_OLDEST_READY, /* then: the lowest segment with a .ready file, its timeline 0 */
};
#define ARCHIVE_SEGMENT_RE "'^[0-9A-F]{24}(\\.partial|\\.[0-9A-F]{8}\\.backup)?$'"
#define SAMPLE_ARCHIVE_SQL(listed, oldest_ready)                                                             \
	"SELECT s.mode_on, s.segment, s.archived, s.failed, s.failed_since, s.may_list, " listed             \
	", " oldest_ready                                                                                    \
	" FROM (SELECT pg_catalog.current_setting('archive_mode') IN ('on', 'always') AS mode_on,"           \
	" pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size')) AS segment,"              \
	" a.last_archived_wal AS archived, a.last_failed_wal AS failed,"                                     \
	" coalesce(a.last_failed_time > a.last_archived_time, a.last_failed_time IS NOT NULL)"               \
	"   AS failed_since,"                                                                                \
	" pg_catalog.has_function_privilege('pg_catalog.pg_ls_archive_statusdir()', 'EXECUTE') AS may_list," \
	" coalesce(a.last_archived_wal ~ " ARCHIVE_SEGMENT_RE ", false)"                                     \
	" OR (coalesce(a.last_failed_time > a.last_archived_time, a.last_failed_time IS NOT NULL)"           \
	"     AND coalesce(a.last_failed_wal ~ " ARCHIVE_SEGMENT_RE ", false)) AS named"                     \
	" FROM pg_catalog.pg_stat_archiver a) s"
static const char sample_archive_sql[] = SAMPLE_ARCHIVE_SQL("false", "NULL::text");
#define ARCHIVE_OLDEST_READY_SQL                                                  \
	"CASE WHEN s.mode_on AND NOT s.named THEN"                                \
	" (SELECT '00000000' || pg_catalog.min(pg_catalog.substr(f.name, 9, 16))" \
	"  FROM pg_catalog.pg_ls_archive_statusdir() f"                           \
	"  WHERE f.name ~ '^[0-9A-F]{24}(\\.partial)?\\.ready$') END"
static const char sample_archive_listing_sql[] =
	SAMPLE_ARCHIVE_SQL("s.mode_on AND NOT s.named", ARCHIVE_OLDEST_READY_SQL);

/* The statements of a sample, in the order of its pipeline: res->results[SAMPLE_...]. */
enum {
	SAMPLE_WAL,	   /* sample_wal_sql */
	SAMPLE_STANDBYS,   /* sample_standbys_sql */
	SAMPLE_SLOTS,	   /* sample_slots_sql */
	SAMPLE_BLOCKED,	   /* sample_blocked_sql, $1 the backends of our batches */
	SAMPLE_AUTOVACUUM, /* sample_autovacuum_sql */
	SAMPLE_OTHERS,	   /* sample_others_sql */
	SAMPLE_ARCHIVE,	   /* sample_archive_sql, or with the listing (sample_archive_listing_sql) */
	SAMPLE_PROBE,	   /* sample_probe_sql, only when a probe is due while jobs run */
	SAMPLE_STATEMENTS,
};

/* The sampler's connection, timer and latest view. */
static struct {
	sampler_hooks_t hooks;
	pgconn_t *conn;
	struct event *tick;
	bool in_flight;	      /* a sample */
	bool probe_in_flight; /* a CPU probe sent as a batch began (a sample may queue behind it) */
	lagclock_t clock;
	sampler_view_t view;
	double view_at_ms; /* monotonic time of the view; 0: none yet */
	double opened_at_ms;
	uint64_t view_lsn;   /* the primary's WAL position in the latest view */
	uint64_t latest_lsn; /* the highest WAL position a batch's checkpoint saw since */
	char worst[128];     /* the standby or slot furthest behind in the latest view */
	uint64_t worst_lsn;  /* its replay (or confirmed flush) position then */
	double replay_rate;  /* bytes/ms it moved since the view before, when it was the worst too */
	uint32_t autovacuum[MAX_AUTOVACUUM];
	int nautovacuum;
	bool warned_invisible;
	/* The WAL archive. */
	bool archive_may_list; /* samples send the listing form: the role may list archive_status */
	bool archive_listing;  /* the sample in flight was sent the listing form */
	bool archive_holding;  /* every job holds for the backlog (archive_hold) */
	int64_t archive_known; /* the latest backlog measured (bytes) */
	bool warned_archive;   /* the backlog could not be measured: said once */
	/* The CPU probe. */
	double probe_due_ms;		 /* the next one goes with the first sample from then */
	double probe_batch_due_ms;	 /* the next one as a batch begins: not before then */
	bool probe_in_batch;		 /* the probe in flight was sent while batches ran */
	double probes[PROBE_WINDOW];	 /* the latest probes' times (ms), a ring */
	int nprobes;			 /* how many were ever taken */
	double in_batch[PROBE_IN_BATCH]; /* the latest of them taken during batches, a ring */
	int nin_batch;			 /* how many of those were ever taken */
	double stretch;			 /* sampler_stretch() after the latest probe */
} sampler;

static void sampler_arm(void)
{
	int64_t ms = config_current()->throttle.sample_interval_ms;
	struct timeval tv = util_ms_to_tv(ms);
	evtimer_add(sampler.tick, &tv);
}

static bool sampler_watches(const char *name)
{
	const throttle_settings_t *s = &config_current()->throttle;
	if (s->nstandbys == 0)
		return true;
	for (int i = 0; i < s->nstandbys; i++)
		if (name && strcmp(s->standbys[i], name) == 0)
			return true;
	return false;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The time to the next probe of each kind: often until the baseline and the stretch are known,
 * rarely then. */
static double sampler_probe_every(void)
{
	return sampler.nprobes < PROBE_SETTLED || sampler.nin_batch < PROBE_IN_BATCH ? PROBE_EVERY_MS
										     : PROBE_SETTLED_MS;
}

/* The mean of the latest probes during batches over the lower quartile of all the latest probes:
 * what the CPU work of other sessions takes while batches run against what it takes at best. */
static double sampler_stretch(void)
{
	double sorted[PROBE_WINDOW], sum = 0;
	int n = sampler.nin_batch < PROBE_IN_BATCH ? sampler.nin_batch : PROBE_IN_BATCH;
	int all = sampler.nprobes < PROBE_WINDOW ? sampler.nprobes : PROBE_WINDOW;

	if (all < PROBE_MIN_SEEN || n < PROBE_MIN_IN_BATCH)
		return 0;
	memcpy(sorted, sampler.probes, sizeof(double) * (size_t)all);
	qsort(sorted, (size_t)all, sizeof(double), cmp_double);
	for (int i = 0; i < n; i++)
		sum += sampler.in_batch[i];
	return sum / n / sorted[all / 4];
}

/* A probe's result arrived (TIME: its ms, as text). It counts as during batches when they ran as
 * it was sent (SENT_IN_BATCH) and still do. */
static void sampler_probe_seen(const char *time, bool sent_in_batch)
{
	char pids[32];
	double ms = time ? strtod(time, NULL) : 0;
	bool in_batch;

	if (!(ms > 0))
		return;
	sampler.hooks.batch_pids(pids, sizeof(pids));
	in_batch = sent_in_batch && strcmp(pids, "{}") != 0;
	sampler.probes[sampler.nprobes++ % PROBE_WINDOW] = ms;
	if (in_batch)
		sampler.in_batch[sampler.nin_batch++ % PROBE_IN_BATCH] = ms;
	sampler.stretch = sampler_stretch();
	sampler.view.cpu_stretch = sampler.stretch;
	log_msg(LOG_LEVEL_DEBUG, SAMPLER_CONTEXT, "CPU probe: %.2f ms%s", ms,
		in_batch ? " during batches" : "");
}

/* A probe sent on its own as a batch began. */
static void sampler_probe_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	(void)conn;
	(void)arg;

	sampler.probe_in_flight = false;
	if (res->ok)
		sampler_probe_seen(pgconn_value(res->results[0], 0, 0), true);
}

void sampler_batch_started(void)
{
	pgconn_stmt_t probe = {sample_probe_sql, 0, NULL, NULL, NULL};
	double now = util_now_ms();

	/* Only on an idle connection: a sample is never kept waiting for more than the probe
	 * (queued behind it), and a probe never waits behind a sample. */
	if (sampler.in_flight || sampler.probe_in_flight || !sampler.conn || !pgconn_is_idle(sampler.conn) ||
	    now < sampler.probe_batch_due_ms)
		return;
	sampler.probe_batch_due_ms = now + sampler_probe_every();
	if (pgconn_send(sampler.conn, &probe, 1, sampler_probe_cb, NULL))
		sampler.probe_in_flight = true;
}

/* One round of results as it is read: the view it makes and the standby or slot furthest behind. */
typedef struct sample_round {
	sampler_view_t v;
	uint64_t current;   /* the primary's WAL position */
	char worst[128];    /* the standby or slot furthest behind */
	uint64_t worst_lsn; /* its replay (or confirmed flush) position */
} sample_round_t;

/* The watched physical standbys: their lag, in bytes and on the lag clock. */
static void absorb_standbys(sample_round_t *r, const PGresult *standbys, double at)
{
	sampler_view_t *v = &r->v;

	for (int row = 0; row < PQntuples(standbys); row++) {
		const char *name = pgconn_value(standbys, row, 0);
		uint64_t lsn;
		int64_t bytes;
		double ms;

		if (!sampler_watches(name))
			continue;
		if (!lagclock_parse_lsn(pgconn_value(standbys, row, 1), &lsn)) {
			if (!sampler.warned_invisible) {
				log_msg(LOG_LEVEL_WARNING, SAMPLER_CONTEXT,
					"cannot read the replay position of standby %s (state %s): without "
					"it lag is"
					" not throttled; GRANT pg_monitor to the daemon's role",
					name ? name : "?", pgconn_value(standbys, row, 3) ?: "?");
				sampler.warned_invisible = true;
			}
			continue;
		}
		bytes = r->current > lsn ? (int64_t)(r->current - lsn) : 0;
		ms = lagclock_lag_ms(&sampler.clock, at, lsn);
		metrics_standby_lag(name ? name : "?", bytes, ms / 1000.0);
		if (bytes > v->lag_bytes || (int64_t)ms > v->lag_ms || !v->detail[0])
			snprintf(v->detail, sizeof(v->detail), "standby %s: %lld bytes, %.0f ms behind",
				 name ? name : "?", (long long)bytes, ms);
		if (bytes > v->lag_bytes || !r->worst[0]) {
			v->lag_bytes = bytes > v->lag_bytes ? bytes : v->lag_bytes;
			snprintf(r->worst, sizeof(r->worst), "%s", name ? name : "?");
			r->worst_lsn = lsn;
		}
		if ((int64_t)ms > v->lag_ms)
			v->lag_ms = (int64_t)ms;
	}
}

/* A named standby that is not connected counts as lagging. */
static void absorb_missing_standbys(sample_round_t *r, const PGresult *standbys)
{
	const throttle_settings_t *s = &config_current()->throttle;

	for (int i = 0; i < s->nstandbys; i++) {
		bool seen = false;
		for (int row = 0; row < PQntuples(standbys) && !seen; row++)
			seen = strcmp(pgconn_value(standbys, row, 0) ?: "", s->standbys[i]) == 0;
		if (!seen) {
			r->v.hold = REASON_STANDBY_MISSING;
			snprintf(r->v.detail, sizeof(r->v.detail), "standby %s is not connected",
				 s->standbys[i]);
		}
	}
}

/* The logical slots: their lag in bytes, and a hold when one's WAL is at risk. */
static void absorb_slots(sample_round_t *r, const PGresult *slots)
{
	sampler_view_t *v = &r->v;

	for (int row = 0; row < PQntuples(slots); row++) {
		const char *name = pgconn_value(slots, row, 0), *status = pgconn_value(slots, row, 2);
		uint64_t lsn;
		int64_t bytes;
		if (status && strcmp(status, "reserved") != 0 && v->hold == REASON_NONE) {
			v->hold = REASON_LOGICAL_SLOT;
			snprintf(v->detail, sizeof(v->detail), "logical slot %s has wal_status %s", name,
				 status);
		}
		if (!lagclock_parse_lsn(pgconn_value(slots, row, 1), &lsn))
			continue;
		bytes = r->current > lsn ? (int64_t)(r->current - lsn) : 0;
		{
			char label[128];
			snprintf(label, sizeof(label), "slot:%s", name ? name : "?");
			metrics_standby_lag(label, bytes, 0);
		}
		if (bytes > v->lag_bytes || !r->worst[0]) {
			v->lag_bytes = bytes > v->lag_bytes ? bytes : v->lag_bytes;
			snprintf(r->worst, sizeof(r->worst), "slot:%s", name ? name : "?");
			r->worst_lsn = lsn;
			if (v->hold == REASON_NONE) /* a hold's detail says why it holds */
				snprintf(v->detail, sizeof(v->detail), "logical slot %s: %lld bytes behind",
					 name, (long long)bytes);
		}
	}
}

/* The sessions our batches block (told to the daemon) and the tables autovacuum works on. */
static void absorb_sessions(const PGresult *blocked, const PGresult *vacuum)
{
	int64_t total = 0;

	for (int row = 0; row < PQntuples(blocked); row++)
		total += pgconn_int64(blocked, row, 1, 0);
	metrics_blocked_sessions(total);
	for (int row = 0; row < PQntuples(blocked); row++)
		sampler.hooks.on_blocked((int)pgconn_int64(blocked, row, 0, 0),
					 pgconn_int64(blocked, row, 1, 0), pgconn_int64(blocked, row, 2, 0));
	sampler.nautovacuum = 0;
	for (int row = 0; row < PQntuples(vacuum) && sampler.nautovacuum < MAX_AUTOVACUUM; row++)
		sampler.autovacuum[sampler.nautovacuum++] = (uint32_t)pgconn_int64(vacuum, row, 0, 0);
}

/* How fast the worst one replays, for the estimate between samples (0: unknown, as if stalled). */
static void absorb_replay_rate(const sample_round_t *r, double at)
{
	sampler.replay_rate = 0;
	if (r->worst[0] && strcmp(r->worst, sampler.worst) == 0 && sampler.view_at_ms > 0 &&
	    at > sampler.view_at_ms && r->worst_lsn >= sampler.worst_lsn)
		sampler.replay_rate = (double)(r->worst_lsn - sampler.worst_lsn) / (at - sampler.view_at_ms);
	snprintf(sampler.worst, sizeof(sampler.worst), "%s", r->worst);
	sampler.worst_lsn = r->worst_lsn;
}

/* Column COL of R's first row is true. */
static bool sampler_true(const PGresult *r, int col)
{
	const char *value = pgconn_value(r, 0, col);
	return value && strcmp(value, "t") == 0;
}

/* The WAL archive backlog from the archive step's row R, at the WAL position CURRENT: into the
 * view V and the metrics, and the hold every job honours while it is too large. */
static void sampler_archive(const PGresult *r, uint64_t current, sampler_view_t *v)
{
	int64_t limit = config_current()->throttle.max_archive_backlog_bytes;
	archive_seen_t seen = {.on = sampler_true(r, ARCHIVE_COL_ON),
			       .segment_bytes = pgconn_int64(r, 0, ARCHIVE_COL_SEGMENT, 0),
			       .current_lsn = current,
			       .last_archived = pgconn_value(r, 0, ARCHIVE_COL_ARCHIVED),
			       .last_failed = pgconn_value(r, 0, ARCHIVE_COL_FAILED),
			       .failed_since = sampler_true(r, ARCHIVE_COL_FAILED_SINCE),
			       .listed = sampler.archive_listing && sampler_true(r, ARCHIVE_COL_LISTED),
			       .oldest_ready = pgconn_value(r, 0, ARCHIVE_COL_OLDEST_READY)};
	int64_t backlog = archive_backlog(&seen);

	sampler.archive_may_list = sampler_true(r, ARCHIVE_COL_MAY_LIST);
	if (backlog == ARCHIVE_UNKNOWN && !sampler.archive_may_list && !sampler.warned_archive) {
		log_msg(LOG_LEVEL_WARNING, SAMPLER_CONTEXT,
			"cannot measure the WAL archive backlog: pg_stat_archiver names no WAL segment to "
			"count from (%s), and listing pg_wal/archive_status needs pg_monitor; GRANT "
			"pg_monitor to the daemon's role",
			seen.last_archived ? seen.last_archived : "nothing archived or failed yet");
		sampler.warned_archive = true;
	}
	if (backlog >= 0)
		sampler.archive_known = backlog;
	sampler.archive_holding = archive_hold(sampler.archive_holding, backlog, limit);
	metrics_archive_backlog(backlog);
	v->archive_backlog = backlog;
	if (sampler.archive_holding && v->hold == REASON_NONE) {
		v->hold = REASON_ARCHIVE_BACKLOG;
		snprintf(v->detail, sizeof(v->detail), "WAL not yet archived: %lld bytes (limit %lld)",
			 (long long)sampler.archive_known, (long long)limit);
	}
}

/* Fold one round of results into the view. */
static void sampler_absorb(const pgconn_result_t *res, double at)
{
	const PGresult *standbys = res->results[SAMPLE_STANDBYS];
	sample_round_t r = {.v = {.known = true}};

	if (!lagclock_parse_lsn(pgconn_value(res->results[SAMPLE_WAL], 0, 0), &r.current))
		return;
	lagclock_add(&sampler.clock, at, r.current);

	absorb_standbys(&r, standbys, at);
	absorb_missing_standbys(&r, standbys);
	if (config_current()->throttle.logical_slots)
		absorb_slots(&r, res->results[SAMPLE_SLOTS]);
	metrics_standby_round();
	absorb_sessions(res->results[SAMPLE_BLOCKED], res->results[SAMPLE_AUTOVACUUM]);
	absorb_replay_rate(&r, at);
	r.v.replicating = r.worst[0] != '\0';
	r.v.others_active = (int)pgconn_int64(res->results[SAMPLE_OTHERS], 0, 0, -1);
	sampler_archive(res->results[SAMPLE_ARCHIVE], r.current, &r.v);
	if (res->n > SAMPLE_PROBE)
		sampler_probe_seen(pgconn_value(res->results[SAMPLE_PROBE], 0, 0), sampler.probe_in_batch);
	r.v.cpu_stretch = sampler.stretch;
	sampler.view = r.v;
	sampler.view_at_ms = at;
	sampler.view_lsn = r.current;
}

static void sampler_tick_cb(evutil_socket_t fd, short what, void *arg);

static void sampler_result_cb(pgconn_t *conn, const pgconn_result_t *res, void *arg)
{
	double *sent_at = arg;
	(void)conn;

	sampler.in_flight = false;
	if (!res->ok && res->failed_index == SAMPLE_ARCHIVE && sampler.archive_listing &&
	    strcmp(res->sqlstate, "42501") == 0) {
		/* The role may not list archive_status (assumed until told, so that the first sample
		 * of a role with pg_monitor lists it): sample again at once without the listing. */
		log_msg(LOG_LEVEL_DEBUG, SAMPLER_CONTEXT, "archive_status cannot be listed: %s",
			res->message);
		sampler.archive_may_list = false;
		free(sent_at);
		evtimer_del(sampler.tick);
		sampler_tick_cb(-1, 0, NULL);
		return;
	}
	if (res->ok)
		sampler_absorb(res, *sent_at);
	else if (!res->broken)
		log_msg(LOG_LEVEL_WARNING, SAMPLER_CONTEXT, "sample failed: %s %s", res->sqlstate,
			res->message);
	free(sent_at);
}

static void sampler_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	char pids[1024];
	const char *params[] = {pids};
	pgconn_stmt_t stmts[SAMPLE_STATEMENTS] = {
		[SAMPLE_WAL] = {sample_wal_sql, 0, NULL, NULL, NULL},
		[SAMPLE_STANDBYS] = {sample_standbys_sql, 0, NULL, NULL, NULL},
		[SAMPLE_SLOTS] = {sample_slots_sql, 0, NULL, NULL, NULL},
		[SAMPLE_BLOCKED] = {sample_blocked_sql, 1, params, NULL, NULL},
		[SAMPLE_AUTOVACUUM] = {sample_autovacuum_sql, 0, NULL, NULL, NULL},
		[SAMPLE_OTHERS] = {sample_others_sql, 0, NULL, NULL, NULL},
		[SAMPLE_ARCHIVE] = {sampler.archive_may_list ? sample_archive_listing_sql
							     : sample_archive_sql,
				    0, NULL, NULL, NULL},
	};
	int n = SAMPLE_PROBE; /* the probe goes last, when it goes */
	double *sent_at;
	(void)fd;
	(void)what;
	(void)arg;

	sampler_arm();
	if (sampler.in_flight || !pgconn_is_ready(sampler.conn))
		return;
	sampler.hooks.batch_pids(pids, sizeof(pids));
	sent_at = malloc(sizeof(*sent_at));
	if (!sent_at)
		abort();
	*sent_at = util_now_ms();
	/* The CPU probe, twice a second at most while jobs run (every other second once known). */
	if (sampler.hooks.njobs() > 0 && *sent_at >= sampler.probe_due_ms) {
		sampler.probe_due_ms = *sent_at + sampler_probe_every();
		sampler.probe_in_batch = strcmp(pids, "{}") != 0;
		stmts[SAMPLE_PROBE] = (pgconn_stmt_t){sample_probe_sql, 0, NULL, NULL, NULL};
		n = SAMPLE_STATEMENTS;
	}
	if (pgconn_send(sampler.conn, stmts, n, sampler_result_cb, sent_at)) {
		sampler.in_flight = true;
		sampler.archive_listing = sampler.archive_may_list;
	} else {
		free(sent_at);
	}
}

static void sampler_event_cb(pgconn_t *conn, pgconn_event_t event, const char *reason, void *arg)
{
	(void)conn;
	(void)arg;
	if (event == PGCONN_EVENT_LOST)
		log_msg(LOG_LEVEL_DEBUG, SAMPLER_CONTEXT, "down: %s", reason);
	else if (sampler.view_at_ms == 0) {
		/* Connected: take the first sample now rather than an interval later. */
		evtimer_del(sampler.tick);
		sampler_tick_cb(-1, 0, NULL);
	}
}

void sampler_open(struct event_base *base, const sampler_hooks_t *hooks)
{
	pgconn_options_t opt = {.conninfo = config_current()->conninfo,
				.application_name = "backfilld sampler",
				.log_context = SAMPLER_CONTEXT,
				.idle_in_transaction_ms = config_current()->lease_ms,
				.on_event = sampler_event_cb};

	memset(&sampler, 0, sizeof(sampler));
	sampler.hooks = *hooks;
	sampler.archive_may_list = true; /* until a sample says otherwise */
	sampler.conn = pgconn_new(base, &opt);
	sampler.tick = evtimer_new(base, sampler_tick_cb, NULL);
	if (!sampler.tick)
		abort();
	sampler.opened_at_ms = util_now_ms();
	pgconn_connect(sampler.conn);
	sampler_arm();
}

void sampler_close(void)
{
	if (sampler.conn)
		pgconn_free(sampler.conn);
	if (sampler.tick)
		event_free(sampler.tick);
	sampler.conn = NULL;
	sampler.tick = NULL;
}

void sampler_view(sampler_view_t *out)
{
	double age = util_now_ms() - sampler.view_at_ms;
	double stale = (double)config_current()->throttle.sample_interval_ms * STALE_SAMPLES;

	*out = sampler.view;
	if (sampler.view_at_ms == 0 || age > (stale > 5000 ? stale : 5000)) {
		out->known = false;
		out->hold = REASON_NONE;
		out->warming = sampler.view_at_ms == 0 && util_now_ms() - sampler.opened_at_ms < WARMUP_MS;
		return;
	}
	/* Since the sample: the WAL our batches saw written, less what the worst standby or slot
	 * replayed meanwhile at its last measured pace (none when it stood still, e.g. paused).
	 * With no standby or slot in the view nothing lags behind that WAL. */
	if (sampler.worst[0] && sampler.latest_lsn > sampler.view_lsn) {
		double written = (double)(sampler.latest_lsn - sampler.view_lsn);
		double replayed = sampler.replay_rate * (age > 0 ? age : 0);
		if (written > replayed) {
			size_t len = strlen(out->detail);
			out->lag_bytes += (int64_t)(written - replayed);
			if (out->hold == REASON_NONE && len + 1 < sizeof(out->detail))
				snprintf(out->detail + len, sizeof(out->detail) - len,
					 " at the last sample, about %lld more since",
					 (long long)(written - replayed));
		}
	}
}

bool sampler_autovacuum(uint32_t relid)
{
	for (int i = 0; i < sampler.nautovacuum; i++)
		if (sampler.autovacuum[i] == relid)
			return true;
	return false;
}

void sampler_wal_position(const char *lsn)
{
	uint64_t at;

	if (lsn && lagclock_parse_lsn(lsn, &at) && at > sampler.latest_lsn)
		sampler.latest_lsn = at;
}
