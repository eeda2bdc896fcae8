/*
 * Throttle controller. Batch size follows the smoothed rate toward target_batch_ms; sleep
 * grows continuously with lag pressure so lag pushes back long before it stops a job, and a
 * hold at the limit lasts until lag is back under half of it (hysteresis).
 */
#include "throttle.h"

#include <math.h>

#define RATE_SMOOTHING 0.3 /* weight of the newest batch in the rate */
#define GROWTH_CAP 1.5

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

void throttle_init(throttle_state_t *st, const throttle_settings_t *s)
{
	*st = (throttle_state_t){.batch_size = clamp64(s->batch_size, s->min_batch_size, s->max_batch_size),
				 .sleep_ms = clamp64(s->sleep_ms, 0, s->max_sleep_ms),
				 .calm = THROTTLE_DUTY_BATCHES};
}

bool throttle_cpu_contended(const throttle_state_t *st)
{
	return st->cpu_hot > 0;
}

void throttle_after_batch(throttle_state_t *st, const throttle_settings_t *s, int64_t rows,
			  double duration_ms)
{
	double target = (double)s->target_batch_ms;
	double size = (double)st->batch_size;
	/* Only a (nearly) full batch with a real duration says how fast a full one goes. */
	bool full = rows > 0 && rows >= st->batch_size / 2 && duration_ms > 0;
	double rate = full ? (double)rows / (duration_ms < 1 ? 1 : duration_ms) : 0;

	st->retries = 0;
	st->last_ms = duration_ms > 0 ? duration_ms : 0;
	if (st->cpu_hot > 0)
		st->cpu_hot--;
	if (duration_ms > 2 * target) {
		size = size / 2; /* overshoot: shrink fast */
		if (full)
			st->rate = rate; /* and forget the history that let it happen */
	} else if (full) {
		double want;

		st->rate = st->rate > 0 ? RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * st->rate : rate;
		want = st->rate * target;
		size = want > size * GROWTH_CAP ? size * GROWTH_CAP : want;
	}
	if (st->ceiling > 0 && size > (double)st->ceiling)
		size = (double)st->ceiling;
	st->capped = false;
	if (st->app_watch && st->app_seen_ms < THROTTLE_APP_WARMUP_MS) {
		/* Not measured yet: no growth past the first size. */
		double first = (double)clamp64(s->batch_size, s->min_batch_size, s->max_batch_size);
		double hold = first > (double)st->batch_size ? first : (double)st->batch_size;
		if (size > hold)
			size = hold;
	} else if (st->prior > 0 && st->cap > 0) {
		/* The application's writes predict waits: the cap is firm (toward it by halves). */
		double cap = (double)st->cap, old = (double)st->batch_size;
		double limit = old > cap && old / 2 > cap ? old / 2 : cap;
		if (size > limit) {
			size = limit;
			st->capped = true;
		}
	}
	if (!(size >= 1))
		size = 1;
	st->batch_size = clamp64(size > 9e18 ? INT64_MAX : (int64_t)llround(size), s->min_batch_size,
				 s->max_batch_size);
	st->sleep_ms = clamp64(s->sleep_ms, 0, s->max_sleep_ms);
}

/* The cap from what is known of k (throttle_after_waiters), at the rate RATE (keys a ms). */
static void throttle_set_cap(throttle_state_t *st, const throttle_settings_t *s, double rate)
{
	double cap, k, w = THROTTLE_WAITS_PER_S / 1000.0;

	if (st->prior > 0) /* the prior, corrected by the waits seen against those it predicted */
		k = st->prior * (st->waits + THROTTLE_PRIOR_WAITS) / (st->expected + THROTTLE_PRIOR_WAITS);
	else if (st->waits > 1e-3 && st->exposure > 0)
		k = st->waits / st->exposure;
	else
		k = 0; /* nobody waits (any more), and nobody is expected to */
	if (!(k > 0)) {
		st->cap = 0;
		return;
	}
	/*
	 * A batch of B rows takes D = B / rate ms, then the job sleeps S: k B D / (D + S) sessions
	 * wait per ms, at most w. The largest such B solves k B^2 - w B - w S rate = 0 (w / k when
	 * the job does not sleep). S is the sleep the job keeps (sleep_ms), not the idle time of a
	 * duty cycle or a lag sleep, which pass.
	 */
	cap = (w + sqrt(w * w + 4 * k * w * (double)clamp64(s->sleep_ms, 0, s->max_sleep_ms) * rate)) /
	      (2 * k);
	st->cap = cap >= (double)s->max_batch_size   ? 0
		  : cap <= (double)s->min_batch_size ? s->min_batch_size
						     : (int64_t)cap;
}

void throttle_after_waiters(throttle_state_t *st, const throttle_settings_t *s, int64_t rows,
			    double duration_ms, int64_t waiters)
{
	double held = rows > 0 && duration_ms > 0 ? (double)rows * duration_ms : 0;
	double fade = exp(-((duration_ms > 0 ? duration_ms : 0) + (double)st->last_sleep) /
			  THROTTLE_WAITS_MEMORY_MS);

	st->waits = st->waits * fade + (double)(waiters > 0 ? waiters : 0);
	st->exposure = st->exposure * fade + held;
	st->expected = st->expected * fade + st->prior * held;
	throttle_set_cap(st, s,
			 st->rate > 0		       ? st->rate
			 : rows > 0 && duration_ms > 0 ? (double)rows / duration_ms
						       : 0);
}

void throttle_after_app(throttle_state_t *st, const throttle_settings_t *s, double writes, double ms,
			double table_rows)
{
	double fade;

	if (!(ms > 0))
		return;
	if (!(writes > 0)) /* also NaN; fewer than none: counters reset under it */
		writes = 0;
	fade = exp(-ms / THROTTLE_APP_MEMORY_MS);
	st->app_writes = st->app_writes * fade + writes;
	st->app_ms = st->app_ms * fade + ms;
	st->app_seen_ms += ms;
	st->prior =
		table_rows >= 1 && st->app_writes > 0 ? st->app_writes / st->app_ms / (2 * table_rows) : 0;
	throttle_set_cap(st, s, st->rate);
}

bool throttle_after_contention(throttle_state_t *st, const throttle_settings_t *s, int64_t waited_ms)
{
	if (waited_ms <= 0) {
		if (st->calm < THROTTLE_DUTY_BATCHES && ++st->calm == THROTTLE_DUTY_BATCHES)
			st->idle = 0; /* the duty cycle ends */
		if (st->ceiling > 0) {
			int64_t grown = st->ceiling + (st->ceiling / 10 > 0 ? st->ceiling / 10 : 1);
			/* Not past the size the waits seen so far allow (the ceiling stays where it is
			 * until the evidence lets it grow: a first wait says little). */
			if (st->cap > 0 && grown > st->cap)
				grown = st->cap > st->ceiling ? st->cap : st->ceiling;
			st->ceiling = grown;
			if (st->ceiling >= s->max_batch_size)
				st->ceiling = 0;
		}
		return false;
	}
	st->batch_size = clamp64(st->batch_size / 2, s->min_batch_size, s->max_batch_size);
	st->ceiling = st->batch_size;
	st->idle =
		st->calm < THROTTLE_DUTY_BATCHES && st->idle >= 1 ? fmin(st->idle * 2, THROTTLE_MAX_IDLE) : 1;
	st->calm = 0;
	return true;
}

void throttle_after_retry(throttle_state_t *st, const throttle_settings_t *s, double jitter)
{
	int64_t backoff = 100;

	st->batch_size = clamp64(st->batch_size / 2, s->min_batch_size, s->max_batch_size);
	for (int i = 0; i < st->retries && backoff < s->max_sleep_ms; i++)
		backoff *= 2;
	if (!(jitter >= 0 && jitter < 1)) /* also NaN */
		jitter = 0;
	backoff = (int64_t)((double)backoff * (0.5 + jitter / 2));
	st->sleep_ms = clamp64(backoff > s->sleep_ms ? backoff : s->sleep_ms, 0, s->max_sleep_ms);
	st->retries++;
}

void throttle_after_wal(throttle_state_t *st, int64_t rows, int64_t wal_bytes)
{
	double per_row;

	if (rows <= 0 || wal_bytes < 0)
		return;
	per_row = (double)wal_bytes / (double)rows;
	st->wal_known = true;
	st->wal_per_row = st->wal_per_row > 0
				  ? RATE_SMOOTHING * per_row + (1 - RATE_SMOOTHING) * st->wal_per_row
				  : per_row;
	if (per_row > st->wal_per_row)
		st->wal_per_row = per_row;
}

/* The most keys a batch may walk so that its WAL fits in this runner's share of the lag headroom
 * (0: no limit). */
static int64_t throttle_wal_rows(const throttle_state_t *st, const throttle_settings_t *s,
				 const throttle_input_t *in)
{
	double headroom, rows;

	if (!in->lag_known || !in->replicating || s->max_replication_lag_bytes <= 0 || !(st->wal_per_row > 0))
		return 0;
	headroom =
		(double)(s->max_replication_lag_bytes - in->lag_bytes) / (in->runners > 1 ? in->runners : 1);
	rows = headroom / (st->wal_per_row * THROTTLE_WAL_MARGIN);
	return rows < (double)s->min_batch_size ? s->min_batch_size
	       : rows >= (double)st->batch_size ? 0
						: (int64_t)rows;
}

double throttle_pressure(const throttle_settings_t *s, const throttle_input_t *in)
{
	double pb, pt;

	if (!in->lag_known)
		return 0;
	pb = s->max_replication_lag_bytes > 0 ? (double)in->lag_bytes / (double)s->max_replication_lag_bytes
					      : 0;
	pt = s->max_replication_lag_ms > 0 ? (double)in->lag_ms / (double)s->max_replication_lag_ms : 0;
	return pb > pt ? pb : pt;
}

/* The application writes the table, as the job measures it. */
static bool throttle_app_writing(const throttle_state_t *st)
{
	return st->app_watch && st->app_ms > 0 &&
	       st->app_writes / st->app_ms * 1000.0 >= THROTTLE_APP_MIN_WRITES_S;
}

/*
 * The application's share of the CPU. What an application feels is its slowest transactions,
 * those that run beside a batch: they run slower by the stretch, the longer the batch the more of
 * them wholly so. Hence short batches, and few enough of them that the stretch they cause stays
 * near THROTTLE_CPU_STRETCH on average.
 */
static void throttle_cpu_share(throttle_state_t *st, const throttle_settings_t *s, const throttle_input_t *in,
			       throttle_decision_t *d)
{
	bool writing = throttle_app_writing(st);
	double duty, idle;
	int64_t share, burst;

	/* Once seen, the regime holds while the application writes: under it the probes measure the
	 * job's short, sparse batches, not what full ones would cost (they showed 1.05x and the job,
	 * let go, ran flat out beside the same application). */
	if (writing && (in->cpu_stretch > THROTTLE_CPU_STRETCH || st->cpu_hot > 0))
		st->cpu_hot = THROTTLE_CPU_HOLD_BATCHES;
	if (!writing || st->cpu_hot <= 0)
		return;
	duty = in->cpu_stretch > THROTTLE_CPU_STRETCH ? (THROTTLE_CPU_STRETCH - 1) / (in->cpu_stretch - 1)
						      : 1;
	duty = duty > THROTTLE_CPU_TAIL_DUTY ? THROTTLE_CPU_TAIL_DUTY
	       : duty < THROTTLE_MIN_DUTY    ? THROTTLE_MIN_DUTY
					     : duty;
	idle = 1 / duty - 1;
	share = (int64_t)(st->last_ms * idle);
	if (share >= d->sleep_ms) {
		d->sleep_ms = clamp64(share, 0, s->max_sleep_ms);
		d->reason = REASON_CPU_CONTENTION;
	}
	if (st->rate > 0) {
		burst = clamp64((int64_t)(st->rate * THROTTLE_CPU_BURST_MS), s->min_batch_size,
				s->max_batch_size);
		if (burst < st->batch_size && (d->max_rows == 0 || burst < d->max_rows)) {
			d->max_rows = burst;
			d->reason = REASON_CPU_CONTENTION;
		}
	}
}

throttle_decision_t throttle_decide(throttle_state_t *st, const throttle_settings_t *s,
				    const throttle_input_t *in)
{
	throttle_decision_t d = {false, clamp64(st->sleep_ms, 0, s->max_sleep_ms), 0, REASON_NONE};
	double p = throttle_pressure(s, in);

	if (in->hold != REASON_NONE) {
		d.hold = true;
		d.reason = in->hold;
		return d;
	}
	/* Unknown lag (no fresh sample) neither starts nor ends a hold. */
	if (in->lag_known && st->lag_hold && p < 0.5)
		st->lag_hold = false;
	else if (in->lag_known && p >= 1)
		st->lag_hold = true;
	if (st->lag_hold) {
		d.hold = true;
		d.reason = REASON_REPLICATION_LAG;
		return d;
	}
	if (p > 0.5) {
		double base = (double)d.sleep_ms;
		double extra = ((double)s->max_sleep_ms - base) * (p - 0.5) / 0.5;
		d.sleep_ms = clamp64((int64_t)(base + (extra > 0 ? extra : 0)), 0, s->max_sleep_ms);
		d.reason = REASON_REPLICATION_LAG;
	}
	d.max_rows = throttle_wal_rows(st, s, in);
	if (d.max_rows > 0)
		d.reason = REASON_REPLICATION_LAG;
	if (d.reason == REASON_NONE && st->capped)
		d.reason = REASON_APPLICATION_WRITES;
	/* A duty cycle after contention: idle `idle` times as long as busy. */
	if (st->calm < THROTTLE_DUTY_BATCHES && (int64_t)(st->last_ms * st->idle) > d.sleep_ms) {
		d.sleep_ms = clamp64((int64_t)(st->last_ms * st->idle), 0, s->max_sleep_ms);
		d.reason = REASON_BLOCKED_SESSIONS;
	}
	/* A job that measures starts gently: busy at most THROTTLE_START_DUTY of the time until it
	 * knows, unless the CPU probes already show CPU to spare (its size still waits for the
	 * write counters); where the application writes, until the probes tell. */
	if (st->app_watch && !in->server_idle &&
	    !(in->cpu_stretch > 0 && in->cpu_stretch <= THROTTLE_CPU_STRETCH) &&
	    (st->app_seen_ms < THROTTLE_APP_WARMUP_MS ||
	     (!(in->cpu_stretch > 0) && throttle_app_writing(st) &&
	      st->app_seen_ms < THROTTLE_STRETCH_WAIT_MS))) {
		int64_t gentle = (int64_t)(st->last_ms * (1 / THROTTLE_START_DUTY - 1));
		if (gentle > d.sleep_ms)
			d.sleep_ms = clamp64(gentle, 0, s->max_sleep_ms);
	}
	throttle_cpu_share(st, s, in, &d);
	st->last_sleep = d.sleep_ms;
	return d;
}
