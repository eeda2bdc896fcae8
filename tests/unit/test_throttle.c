/*
 * Unit tests for throttle.c: the starting size; retries (halving, jittered exponential
 * backoff); the batch size following target_batch_ms on synthetic and recorded-looking
 * traces (convergence, overshoot, limits, bad measurements); and lag pressure turned into
 * sleep or a hold with hysteresis.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "throttle.h"

#define LAG_BYTES 1000000 /* max_replication_lag_bytes in make_settings */
#define LAG_MS 10000	  /* max_replication_lag_ms in make_settings */

static char *no_standbys[] = {NULL};

/* Settings with only what the controller reads set; the rest as a config would leave it. */
static throttle_settings_t make_settings(int64_t batch, int64_t min, int64_t max, int64_t sleep_ms,
					 int64_t max_sleep_ms)
{
	throttle_settings_t s = {
		.batch_size = batch,
		.min_batch_size = min,
		.max_batch_size = max,
		.target_batch_ms = 1000,
		.sleep_ms = sleep_ms,
		.max_sleep_ms = max_sleep_ms,
		.max_replication_lag_bytes = LAG_BYTES,
		.max_replication_lag_ms = LAG_MS,
		.max_blocked_ms = 5000,
		.lock_timeout_ms = 2000,
		.statement_timeout_ms = 30000,
		.sample_interval_ms = 1000,
		.standbys = no_standbys,
		.nstandbys = 0,
	};
	return s;
}

/* A state as if a job had been running with SIZE, SLEEP and RETRIES (no rate measured yet). */
static throttle_state_t make_state(int64_t size, int64_t sleep_ms, int retries)
{
	throttle_state_t st = {.batch_size = size, .sleep_ms = sleep_ms, .retries = retries};
	return st;
}

/* ---- a synthetic server: a batch of ROWS takes rows / rate + overhead ms, times noise ---- */

typedef struct server {
	double rate;	 /* rows per ms */
	double overhead; /* ms per batch whatever its size (begin, checkpoint, commit) */
	double noise;	 /* each duration is scaled by a uniform factor in [1 - noise, 1 + noise] */
	uint64_t prng;	 /* xorshift64 state; never 0 */
} server_t;

static double server_uniform(server_t *sv)
{
	sv->prng ^= sv->prng << 13;
	sv->prng ^= sv->prng >> 7;
	sv->prng ^= sv->prng << 17;
	return (double)(sv->prng >> 11) / 9007199254740992.0; /* [0, 1) */
}

static double server_batch_ms(server_t *sv, int64_t rows)
{
	double ms = (double)rows / sv->rate + sv->overhead;

	if (sv->noise > 0)
		ms *= 1 + sv->noise * (2 * server_uniform(sv) - 1);
	return ms;
}

/* The size whose batch takes exactly the target on SV (noise aside). */
static double server_ideal(const server_t *sv, const throttle_settings_t *s)
{
	return sv->rate * ((double)s->target_batch_ms - sv->overhead);
}

/* Run one full batch of the current size on SV; returns its duration. */
static double run_batch(throttle_state_t *st, const throttle_settings_t *s, server_t *sv)
{
	double ms = server_batch_ms(sv, st->batch_size);

	throttle_after_batch(st, s, st->batch_size, ms);
	return ms;
}

static bool within(double v, double ideal, double frac)
{
	return v >= ideal * (1 - frac) && v <= ideal * (1 + frac);
}

/* One step may grow the size by x1.5 at most (rounded to the nearest row). */
static void expect_growth_capped(int64_t before, int64_t after, int step)
{
	if (2 * after > 3 * before + 1)
		fail_msg("step %d: the size grew from %lld to %lld, more than x1.5", step, (long long)before,
			 (long long)after);
}

/* A state that has run SIZE-row batches at RATE rows/ms for long enough to trust it. */
static throttle_state_t steady_state(int64_t size, double rate)
{
	throttle_state_t st = make_state(size, 0, 0);

	st.rate = rate;
	return st;
}

/* ---- throttle_init ---- */

static void test_init_within_bounds(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 250, 30000);
	throttle_state_t st = make_state(-1, -1, 7);

	(void)state;
	st.rate = 42;
	st.lag_hold = true;
	throttle_init(&st, &s);
	assert_int_equal(st.batch_size, 1000);
	assert_int_equal(st.sleep_ms, 250);
	assert_int_equal(st.retries, 0);
	assert_true(st.rate == 0);
	assert_false(st.lag_hold);
}

static void test_init_clamps(void **state)
{
	throttle_settings_t below = make_settings(5, 10, 100000, 0, 30000);
	throttle_settings_t above = make_settings(500000, 10, 100000, 0, 30000);
	throttle_settings_t at_min = make_settings(10, 10, 100000, 0, 30000);
	throttle_settings_t at_max = make_settings(100000, 10, 100000, 0, 30000);
	throttle_settings_t long_sleep = make_settings(1000, 10, 100000, 5000, 1000);
	throttle_state_t st = make_state(0, 0, 3);

	(void)state;
	throttle_init(&st, &below);
	assert_int_equal(st.batch_size, 10);
	assert_int_equal(st.retries, 0);
	throttle_init(&st, &above);
	assert_int_equal(st.batch_size, 100000);
	throttle_init(&st, &at_min);
	assert_int_equal(st.batch_size, 10);
	throttle_init(&st, &at_max);
	assert_int_equal(st.batch_size, 100000);
	/* A pause longer than the longest allowed is cut to it. */
	throttle_init(&st, &long_sleep);
	assert_int_equal(st.sleep_ms, 1000);
}

/* ---- throttle_after_retry ---- */

static void test_retry_halves_to_min(void **state)
{
	static const int64_t want[] = {500, 250, 125, 62, 31, 15, 10, 10, 10};
	throttle_settings_t s = make_settings(1000, 10, 100000, 0, 30000);
	throttle_state_t st;

	(void)state;
	throttle_init(&st, &s);
	for (int i = 0; i < (int)(sizeof(want) / sizeof(want[0])); i++) {
		throttle_after_retry(&st, &s, 0.5);
		assert_int_equal(st.batch_size, want[i]);
		assert_int_equal(st.retries, i + 1);
	}
}

static void test_retry_never_below_min(void **state)
{
	throttle_settings_t one = make_settings(1, 1, 100, 0, 30000);
	throttle_settings_t s = make_settings(1000, 300, 100000, 0, 30000);
	throttle_state_t st = make_state(1, 0, 0);

	(void)state;
	throttle_after_retry(&st, &one, 0);
	assert_int_equal(st.batch_size, 1);
	/* 400 / 2 is under min: min, not 200. */
	st = make_state(400, 0, 0);
	throttle_after_retry(&st, &s, 0);
	assert_int_equal(st.batch_size, 300);
	throttle_after_retry(&st, &s, 0);
	assert_int_equal(st.batch_size, 300);
}

static void test_retry_respects_lowered_max(void **state)
{
	/* A reload lowered max below half the current size: the halved size is clamped. */
	throttle_settings_t s = make_settings(500, 10, 1000, 0, 30000);
	throttle_state_t st = make_state(100000, 0, 0);

	(void)state;
	throttle_after_retry(&st, &s, 0);
	assert_int_equal(st.batch_size, 1000);
}

static void test_retry_backoff_exponential(void **state)
{
	/* Base 100 ms doubled per previous retry, scaled by 0.5 + jitter / 2 and truncated. */
	static const int64_t low[] = {50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600};
	static const int64_t high[] = {99, 199, 399, 799, 1599, 3198, 6396, 12793, 25587, 51174};
	throttle_settings_t s = make_settings(1000, 10, 100000, 0, 86400000);

	(void)state;
	for (int k = 0; k < (int)(sizeof(low) / sizeof(low[0])); k++) {
		throttle_state_t a = make_state(1000, 0, k);
		throttle_state_t b = make_state(1000, 0, k);

		throttle_after_retry(&a, &s, 0.0);
		throttle_after_retry(&b, &s, 0.999);
		assert_int_equal(a.sleep_ms, low[k]);
		assert_int_equal(b.sleep_ms, high[k]);
		assert_int_equal(a.retries, k + 1);
		assert_int_equal(b.retries, k + 1);
	}
}

static void test_retry_backoff_sequence(void **state)
{
	/* The same growth when the retries come one after another. */
	throttle_settings_t s = make_settings(1000, 10, 100000, 0, 86400000);
	throttle_state_t st;
	int64_t want = 50;

	(void)state;
	throttle_init(&st, &s);
	for (int i = 0; i < 12; i++) {
		throttle_after_retry(&st, &s, 0.0);
		assert_int_equal(st.sleep_ms, want);
		want *= 2;
	}
}

static void test_retry_bad_jitter_is_zero(void **state)
{
	static const double bad[] = {-0.5, -1e-9, 1.0, 2.0, 1e300, NAN, INFINITY, -INFINITY};
	throttle_settings_t s = make_settings(1000, 10, 100000, 0, 30000);

	(void)state;
	for (int i = 0; i < (int)(sizeof(bad) / sizeof(bad[0])); i++) {
		throttle_state_t st = make_state(1000, 0, 2);

		throttle_after_retry(&st, &s, bad[i]);
		assert_int_equal(st.sleep_ms, 200);
	}
}

static void test_retry_backoff_capped(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 0, 1000);
	throttle_state_t st;

	(void)state;
	for (int k = 0; k < 64; k++) {
		throttle_state_t a = make_state(1000, 0, k);
		throttle_state_t b = make_state(1000, 0, k);

		throttle_after_retry(&a, &s, 0.0);
		throttle_after_retry(&b, &s, 0.999);
		assert_in_range(a.sleep_ms, 0, 1000);
		assert_in_range(b.sleep_ms, 0, 1000);
		assert_true(a.sleep_ms <= b.sleep_ms);
	}
	/* Far past the cap: exactly the cap with the top jitter, and no overflow. */
	st = make_state(1000, 0, 20);
	throttle_after_retry(&st, &s, 0.999);
	assert_int_equal(st.sleep_ms, 1000);
	st = make_state(1000, 0, 1000000);
	throttle_after_retry(&st, &s, 0.999);
	assert_int_equal(st.sleep_ms, 1000);
	assert_int_equal(st.retries, 1000001);
	/* Below the cap nothing is cut: 400 ms is 800 ms times 0.5. */
	st = make_state(1000, 0, 3);
	throttle_after_retry(&st, &s, 0.0);
	assert_int_equal(st.sleep_ms, 400);
}

static void test_retry_sleep_at_least_sleep_ms(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 5000, 30000);
	throttle_state_t st;

	(void)state;
	/* Early backoffs are shorter than the configured pause, which wins. */
	st = make_state(1000, 5000, 0);
	throttle_after_retry(&st, &s, 0.0);
	assert_int_equal(st.sleep_ms, 5000);
	st = make_state(1000, 5000, 5);
	throttle_after_retry(&st, &s, 0.999);
	assert_int_equal(st.sleep_ms, 5000);
	/* A longer backoff replaces it: 100 * 2^7 * 0.5. */
	st = make_state(1000, 5000, 7);
	throttle_after_retry(&st, &s, 0.0);
	assert_int_equal(st.sleep_ms, 6400);
	for (int k = 0; k < 40; k++) {
		st = make_state(1000, 5000, k);
		throttle_after_retry(&st, &s, 0.0);
		assert_in_range(st.sleep_ms, 5000, 30000);
	}
}

/* ---- throttle_after_batch: a committed batch steers the size ---- */

static void test_batch_resets_retries_and_sleep(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 250, 30000);
	throttle_settings_t long_sleep = make_settings(1000, 10, 100000, 5000, 1000);
	throttle_state_t st = make_state(1000, 12800, 5);

	(void)state;
	throttle_after_batch(&st, &s, 1000, 120.0);
	assert_int_equal(st.retries, 0);
	assert_int_equal(st.sleep_ms, 250);
	st = make_state(1000, 30000, 2);
	throttle_after_batch(&st, &long_sleep, 1000, 120.0);
	assert_int_equal(st.sleep_ms, 1000);
}

static void test_batch_first_steps_exact(void **state)
{
	/* 1000 rows in 100 ms: 10 rows/ms, so 10000 would take the 1000 ms target; growth is
	 * capped at x1.5 a step. A batch at the target keeps its size. */
	throttle_settings_t s = make_settings(1000, 10, 1000000, 0, 30000);
	throttle_state_t st;

	(void)state;
	throttle_init(&st, &s);
	throttle_after_batch(&st, &s, 1000, 100.0);
	assert_true(st.rate == 10.0);
	assert_int_equal(st.batch_size, 1500);
	/* The second measurement is smoothed with weight 0.3: 0.3 * 20 + 0.7 * 10 = 13. */
	throttle_after_batch(&st, &s, 1500, 75.0);
	assert_float_equal(st.rate, 13.0, 1e-9);
	assert_int_equal(st.batch_size, 2250);
	/* Close to the target the size is the smoothed rate times the target, uncapped. */
	st = steady_state(9000, 10.0);
	throttle_after_batch(&st, &s, 9000, 900.0);
	assert_int_equal(st.batch_size, 10000);
	st = steady_state(10000, 10.0);
	throttle_after_batch(&st, &s, 10000, 1000.0);
	assert_int_equal(st.batch_size, 10000);
	/* Slower than the target (but under twice it): down to rate * target, no cap. */
	st = steady_state(10000, 10.0);
	throttle_after_batch(&st, &s, 10000, 2000.0);
	assert_float_equal(st.rate, 8.5, 1e-9);
	assert_int_equal(st.batch_size, 8500);
}

static void test_batch_grows_from_one(void **state)
{
	/* A size of 1 can grow: 1.5 rounds to 2, then x1.5 rounded each step, up to rate * target. */
	static const int64_t want[] = {2,  3,	5,   8,	  12,  18,  27,	  41,  62,
				       93, 140, 210, 315, 473, 710, 1000, 1000};
	throttle_settings_t s = make_settings(1, 1, 100000, 0, 30000);
	server_t sv = {.rate = 1.0};
	throttle_state_t st;

	(void)state;
	throttle_init(&st, &s);
	for (int i = 0; i < (int)(sizeof(want) / sizeof(want[0])); i++) {
		run_batch(&st, &s, &sv);
		assert_int_equal(st.batch_size, want[i]);
	}
}

static void test_batch_converges(void **state)
{
	/* 20 rows/ms plus 20 ms a batch, target 500 ms: 9600 rows take exactly the target. */
	throttle_settings_t s = make_settings(1000, 10, 1000000, 0, 30000);
	server_t sv = {.rate = 20, .overhead = 20};
	double ideal;
	throttle_state_t st;
	int reached = -1;

	(void)state;
	s.target_batch_ms = 500;
	ideal = server_ideal(&sv, &s);
	assert_float_equal(ideal, 9600, 1e-9);
	throttle_init(&st, &s);
	for (int i = 0; i < 15 && reached < 0; i++) {
		int64_t before = st.batch_size;

		run_batch(&st, &s, &sv);
		expect_growth_capped(before, st.batch_size, i);
		assert_true(st.batch_size >= before); /* from below it only grows */
		if (within((double)st.batch_size, ideal, 0.10))
			reached = i + 1;
	}
	if (reached < 0 || reached > 10)
		fail_msg("the size was not within 10%% of %.0f after 10 batches (now %lld)", ideal,
			 (long long)st.batch_size);
	for (int i = 0; i < 50; i++) {
		int64_t before = st.batch_size;
		double ms = run_batch(&st, &s, &sv);

		expect_growth_capped(before, st.batch_size, reached + i);
		if (!within((double)st.batch_size, ideal, 0.10))
			fail_msg("batch %d after converging: size %lld left 10%% of %.0f", i,
				 (long long)st.batch_size, ideal);
		assert_true(ms < 1.1 * 500);
	}
	/* Settled: the batch takes the target to within 1%. */
	assert_true(within(server_batch_ms(&sv, st.batch_size), 500, 0.01));
}

static void test_batch_converges_from_above(void **state)
{
	/* Starting ten times too big: overshoots halve it, then it settles on the ideal. */
	throttle_settings_t s = make_settings(96000, 10, 1000000, 0, 30000);
	server_t sv = {.rate = 20, .overhead = 20};
	throttle_state_t st;
	int reached = -1;

	(void)state;
	s.target_batch_ms = 500;
	throttle_init(&st, &s);
	run_batch(&st, &s, &sv); /* 4820 ms: over twice the target */
	assert_int_equal(st.batch_size, 48000);
	for (int i = 0; i < 10 && reached < 0; i++) {
		int64_t before = st.batch_size;

		run_batch(&st, &s, &sv);
		assert_true(st.batch_size <= before);
		if (within((double)st.batch_size, 9600, 0.10))
			reached = i;
	}
	if (reached < 0)
		fail_msg("the size was not within 10%% of 9600 after 11 batches (now %lld)",
			 (long long)st.batch_size);
	for (int i = 0; i < 50; i++) {
		run_batch(&st, &s, &sv);
		if (!within((double)st.batch_size, 9600, 0.10))
			fail_msg("batch %d after converging: size %lld", i, (long long)st.batch_size);
	}
}

static void test_batch_converges_with_noise(void **state)
{
	/* Durations off by up to 20% either way: the smoothed rate keeps the size in a band
	 * around the ideal instead of chasing each batch. */
	throttle_settings_t s = make_settings(1000, 10, 1000000, 0, 30000);
	server_t sv = {.rate = 20, .overhead = 20, .noise = 0.2, .prng = 0x9E3779B97F4A7C15ull};
	double sum = 0, sq = 0;
	throttle_state_t st;
	const int n = 400;

	(void)state;
	s.target_batch_ms = 500;
	throttle_init(&st, &s);
	for (int i = 0; i < 20; i++)
		run_batch(&st, &s, &sv);
	for (int i = 0; i < n; i++) {
		int64_t before = st.batch_size;
		double ms = run_batch(&st, &s, &sv);
		double dev = (double)st.batch_size / 9600 - 1;

		expect_growth_capped(before, st.batch_size, i);
		if (ms > 2 * 500)
			fail_msg("batch %d took %.0f ms, over twice the target", i, ms);
		if (dev < -0.15 || dev > 0.20)
			fail_msg("batch %d: size %lld outside [0.85, 1.20] x 9600", i,
				 (long long)st.batch_size);
		sum += dev;
		sq += dev * dev;
	}
	/* On average on the ideal (the inverse of the noise leans slightly high) and smooth:
	 * an unsmoothed controller would wander about twice as far. */
	if (fabs(sum / n) > 0.04)
		fail_msg("mean size off the ideal by %.1f%%", 100 * sum / n);
	if (sqrt(sq / n) > 0.07)
		fail_msg("size wanders %.1f%% (rms) around the ideal", 100 * sqrt(sq / n));
}

static void test_batch_follows_rate_drop(void **state)
{
	/* A recorded-looking run: 20 rows/ms, then the server gets busy (4 rows/ms, ideal 1920)
	 * for a while, then it is quiet again. */
	throttle_settings_t s = make_settings(1000, 100, 1000000, 0, 30000);
	server_t sv = {.rate = 20, .overhead = 20};
	throttle_state_t st;
	int reached = -1;

	(void)state;
	s.target_batch_ms = 500;
	throttle_init(&st, &s);
	for (int i = 0; i < 30; i++)
		run_batch(&st, &s, &sv);
	assert_true(within((double)st.batch_size, 9600, 0.01));

	/* Busy: the first batch takes about 2400 ms, over twice the target: exactly half. */
	sv.rate = 4;
	st.batch_size = 9600;
	assert_true(run_batch(&st, &s, &sv) > 1000);
	assert_int_equal(st.batch_size, 4800);
	for (int i = 1; i < 40; i++) {
		int64_t before = st.batch_size;
		double ms = run_batch(&st, &s, &sv);

		/* A full batch slower than the target never makes the next one bigger. */
		if (ms > 500 && st.batch_size > before)
			fail_msg("busy batch %d: %lld rows took %.0f ms, yet the size grew to %lld", i,
				 (long long)before, ms, (long long)st.batch_size);
		if (reached < 0 && within((double)st.batch_size, 1920, 0.10))
			reached = i;
		else if (reached >= 0 && !within((double)st.batch_size, 1920, 0.10))
			fail_msg("busy batch %d: size %lld left 10%% of 1920 after reaching it", i,
				 (long long)st.batch_size);
	}
	if (reached < 0 || reached > 4)
		fail_msg("the size took %d batches to come within 10%% of 1920 (at most 4 wanted)", reached);

	/* Quiet again: it grows back, at most x1.5 a step, and settles. */
	sv.rate = 20;
	reached = -1;
	for (int i = 0; i < 40; i++) {
		int64_t before = st.batch_size;

		run_batch(&st, &s, &sv);
		expect_growth_capped(before, st.batch_size, i);
		if (reached < 0 && within((double)st.batch_size, 9600, 0.10))
			reached = i;
		else if (reached >= 0 && !within((double)st.batch_size, 9600, 0.10))
			fail_msg("quiet batch %d: size %lld left 10%% of 9600", i, (long long)st.batch_size);
	}
	if (reached < 0 || reached > 15)
		fail_msg("the size took %d batches to grow back within 10%% of 9600 (at most 15 wanted)",
			 reached);
}

static void test_batch_overshoot_halves(void **state)
{
	throttle_settings_t s = make_settings(8000, 1500, 1000000, 0, 30000);
	throttle_state_t st;

	(void)state;
	/* Over twice the target: half, whatever the rate says (here 6800). */
	st = steady_state(8000, 8.0);
	throttle_after_batch(&st, &s, 8000, 2000.5);
	assert_int_equal(st.batch_size, 4000);
	/* Even a first batch, and even a partial one. */
	st = make_state(8000, 0, 0);
	throttle_after_batch(&st, &s, 8000, 5000);
	assert_int_equal(st.batch_size, 4000);
	st = steady_state(8000, 8.0);
	throttle_after_batch(&st, &s, 100, 2500);
	assert_int_equal(st.batch_size, 4000);
	/* Exactly twice is not an overshoot: the rate decides (0.3 * 4 + 0.7 * 8 = 6.8). */
	st = steady_state(8000, 8.0);
	throttle_after_batch(&st, &s, 8000, 2000);
	assert_int_equal(st.batch_size, 6800);
	/* Repeated overshoots halve down to min and no further. */
	st = steady_state(8000, 8.0);
	throttle_after_batch(&st, &s, st.batch_size, 10000);
	assert_int_equal(st.batch_size, 4000);
	throttle_after_batch(&st, &s, st.batch_size, 10000);
	assert_int_equal(st.batch_size, 2000);
	throttle_after_batch(&st, &s, st.batch_size, 10000);
	assert_int_equal(st.batch_size, 1500);
	throttle_after_batch(&st, &s, st.batch_size, 10000);
	assert_int_equal(st.batch_size, 1500);
}

static void test_batch_max_below_ideal(void **state)
{
	/* The ideal is 9600 but max is 5000: it reaches max and stays there. */
	throttle_settings_t s = make_settings(1000, 10, 5000, 0, 30000);
	server_t sv = {.rate = 20, .overhead = 20};
	throttle_state_t st;

	(void)state;
	s.target_batch_ms = 500;
	throttle_init(&st, &s);
	for (int i = 0; i < 60; i++) {
		run_batch(&st, &s, &sv);
		assert_in_range(st.batch_size, 1000, 5000);
		if (i >= 5)
			assert_int_equal(st.batch_size, 5000);
	}
}

static void test_batch_min_above_ideal(void **state)
{
	/* 1 row/ms: the ideal is 480, min is 2000 (a batch takes 2020 ms, an overshoot). */
	throttle_settings_t s = make_settings(5000, 2000, 100000, 0, 30000);
	server_t sv = {.rate = 1, .overhead = 20};
	throttle_state_t st;

	(void)state;
	s.target_batch_ms = 500;
	throttle_init(&st, &s);
	run_batch(&st, &s, &sv);
	assert_int_equal(st.batch_size, 2500);
	for (int i = 0; i < 60; i++) {
		run_batch(&st, &s, &sv);
		assert_int_equal(st.batch_size, 2000);
	}
	/* No overshoot now (2000 ms of a 1500 ms target), but the ideal 1500 is under min. */
	sv.overhead = 0;
	s.target_batch_ms = 1500;
	for (int i = 0; i < 10; i++) {
		run_batch(&st, &s, &sv);
		assert_int_equal(st.batch_size, 2000);
	}
}

static void test_batch_within_reloaded_bounds(void **state)
{
	/* A reload moved [min, max] past the current size: the next size is inside. */
	throttle_settings_t lowered = make_settings(500, 10, 1000, 0, 30000);
	throttle_settings_t raised = make_settings(5000, 4000, 100000, 0, 30000);
	throttle_state_t st;

	(void)state;
	st = steady_state(9000, 9.0);
	throttle_after_batch(&st, &lowered, 9000, 1000);
	assert_int_equal(st.batch_size, 1000);
	st = steady_state(100, 0.1);
	throttle_after_batch(&st, &raised, 100, 1000);
	assert_int_equal(st.batch_size, 4000);
	/* Even when the batch said nothing (no rows). */
	st = steady_state(9000, 9.0);
	throttle_after_batch(&st, &lowered, 0, 10);
	assert_int_equal(st.batch_size, 1000);
}

static void test_batch_bad_duration(void **state)
{
	/* A duration that cannot be (zero, negative, NaN) is no measurement: the size and the
	 * smoothed rate stay as they were, and nothing non-finite leaks into the state. */
	static const double bad[] = {0.0, -0.0, -5.0, -1e9, NAN, -INFINITY};
	throttle_settings_t s = make_settings(1000, 10, 1000000, 100, 30000);

	(void)state;
	for (int i = 0; i < (int)(sizeof(bad) / sizeof(bad[0])); i++) {
		throttle_state_t st = steady_state(9600, 9.6);
		throttle_state_t fresh = make_state(1000, 0, 2);

		throttle_after_batch(&st, &s, 9600, bad[i]);
		if (st.batch_size != 9600 || !(st.rate == 9.6))
			fail_msg("duration %g: size %lld (was 9600), rate %g (was 9.6)", bad[i],
				 (long long)st.batch_size, st.rate);
		assert_int_equal(st.retries, 0);
		assert_int_equal(st.sleep_ms, 100);
		throttle_after_batch(&fresh, &s, 1000, bad[i]);
		if (fresh.batch_size != 1000 || !(fresh.rate == 0))
			fail_msg("duration %g on a first batch: size %lld (was 1000), rate %g (was 0)",
				 bad[i], (long long)fresh.batch_size, fresh.rate);
		assert_int_equal(fresh.retries, 0);
	}
}

static void test_batch_no_rows(void **state)
{
	/* A batch that walked no keys says nothing about the rate: nothing moves, even at size 1. */
	throttle_settings_t s = make_settings(1000, 1, 1000000, 0, 30000);
	static const double ms[] = {0.5, 10, 1000, 1999};
	static const int64_t sizes[] = {1, 2, 9600};

	(void)state;
	for (int i = 0; i < (int)(sizeof(sizes) / sizeof(sizes[0])); i++) {
		for (int k = 0; k < (int)(sizeof(ms) / sizeof(ms[0])); k++) {
			throttle_state_t st = steady_state(sizes[i], 9.6);

			throttle_after_batch(&st, &s, 0, ms[k]);
			if (st.batch_size != sizes[i] || !(st.rate == 9.6))
				fail_msg("0 rows in %g ms at size %lld: size %lld, rate %g", ms[k],
					 (long long)sizes[i], (long long)st.batch_size, st.rate);
		}
	}
	/* And no rows on a first batch leaves the rate unmeasured. */
	{
		throttle_state_t st = make_state(1000, 0, 0);

		throttle_after_batch(&st, &s, 0, 30);
		assert_int_equal(st.batch_size, 1000);
		assert_true(st.rate == 0);
	}
}

static void test_batch_partial_does_not_shrink(void **state)
{
	/* The last batch of a range is short: its few rows, overhead-bound, must not be read as
	 * a slow server. */
	throttle_settings_t s = make_settings(1000, 10, 1000000, 0, 30000);
	throttle_state_t st;

	(void)state;
	s.target_batch_ms = 500;
	st = steady_state(9600, 19.2);
	throttle_after_batch(&st, &s, 100, 25.0); /* 4 rows/ms: would say 2000 */
	assert_int_equal(st.batch_size, 9600);
	st = steady_state(9600, 19.2);
	throttle_after_batch(&st, &s, 4799, 900.0); /* just under half, and slow */
	assert_int_equal(st.batch_size, 9600);
	st = make_state(1000, 0, 0);
	throttle_after_batch(&st, &s, 3, 20.0); /* a first batch that found the end */
	assert_int_equal(st.batch_size, 1000);
	/* Half full counts: 4800 rows in 500 ms is 9.6 rows/ms, 0.3 * 9.6 + 0.7 * 19.2 = 16.32. */
	st = steady_state(9600, 19.2);
	throttle_after_batch(&st, &s, 4800, 500.0);
	assert_int_equal(st.batch_size, 8160);
}

static void test_retry_then_recover(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 100, 30000);
	throttle_state_t st;

	(void)state;
	throttle_init(&st, &s);
	throttle_after_retry(&st, &s, 0.0);
	throttle_after_retry(&st, &s, 0.0);
	throttle_after_retry(&st, &s, 0.0);
	assert_int_equal(st.batch_size, 125);
	assert_int_equal(st.retries, 3);
	assert_int_equal(st.sleep_ms, 200);

	/* 125 rows in 40 ms would allow 3125 a second: capped at x1.5. */
	throttle_after_batch(&st, &s, 125, 40.0);
	assert_int_equal(st.batch_size, 188);
	assert_int_equal(st.retries, 0);
	assert_int_equal(st.sleep_ms, 100);

	/* The streak restarted: the next retry backs off from the base again. */
	throttle_after_retry(&st, &s, 0.0);
	assert_int_equal(st.batch_size, 94);
	assert_int_equal(st.sleep_ms, 100);
	assert_int_equal(st.retries, 1);
}

/* ---- throttle_pressure and throttle_decide: lag becomes sleep, then a hold ---- */

static throttle_input_t lag_input(int64_t bytes, int64_t ms)
{
	throttle_input_t in = {.lag_known = true, .lag_bytes = bytes, .lag_ms = ms, .hold = REASON_NONE};
	return in;
}

/* Lag pressure P on the byte limit alone. */
static throttle_input_t pressure_input(double p)
{
	return lag_input((int64_t)llround(p * LAG_BYTES), 0);
}

static void expect_runs(throttle_decision_t d, int64_t sleep_ms, const char *reason)
{
	if (d.hold)
		fail_msg("held (%s), expected to run after %lld ms", reason_name(d.reason) ?: "NULL",
			 (long long)sleep_ms);
	assert_int_equal(d.sleep_ms, sleep_ms);
	if (reason)
		assert_string_equal(reason_name(d.reason) ?: "NULL", reason);
	else if (d.reason)
		fail_msg("reason %s, expected none", reason_name(d.reason));
}

static void expect_holds(throttle_decision_t d, const char *reason)
{
	if (!d.hold)
		fail_msg("ran after %lld ms (reason %s), expected a hold for %s", (long long)d.sleep_ms,
			 reason_name(d.reason) ?: "NULL", reason);
	assert_non_null(reason_name(d.reason));
	assert_string_equal(reason_name(d.reason), reason);
}

static void test_pressure_values(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 100, 10100);
	throttle_input_t in;

	(void)state;
	in = lag_input(0, 0);
	assert_float_equal(throttle_pressure(&s, &in), 0.0, 1e-12);
	in = lag_input(250000, 0);
	assert_float_equal(throttle_pressure(&s, &in), 0.25, 1e-12);
	in = lag_input(0, 7500);
	assert_float_equal(throttle_pressure(&s, &in), 0.75, 1e-12);
	/* The worse of the two, either way round. */
	in = lag_input(900000, 2000);
	assert_float_equal(throttle_pressure(&s, &in), 0.9, 1e-12);
	in = lag_input(100000, 6000);
	assert_float_equal(throttle_pressure(&s, &in), 0.6, 1e-12);
	/* Over the limit is over 1, not capped. */
	in = lag_input(3000000, 25000);
	assert_float_equal(throttle_pressure(&s, &in), 3.0, 1e-12);
	/* Unknown lag is no pressure, whatever the numbers. */
	in = lag_input(3000000, 25000);
	in.lag_known = false;
	assert_float_equal(throttle_pressure(&s, &in), 0.0, 1e-12);
	/* A limit of 0 turns that measure off. */
	s.max_replication_lag_bytes = 0;
	in = lag_input(INT64_MAX, 2500);
	assert_float_equal(throttle_pressure(&s, &in), 0.25, 1e-12);
	s.max_replication_lag_bytes = LAG_BYTES;
	s.max_replication_lag_ms = 0;
	in = lag_input(500000, INT64_MAX);
	assert_float_equal(throttle_pressure(&s, &in), 0.5, 1e-12);
}

static void test_decide_no_sleep_below_half(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 100, 10100);
	static const int64_t bytes[] = {0, 1, 250000, 499999, 500000, 0, 0, 499999};
	static const int64_t ms[] = {0, 0, 0, 0, 0, 4999, 5000, 4999};
	throttle_state_t st;

	(void)state;
	throttle_init(&st, &s);
	for (int i = 0; i < (int)(sizeof(bytes) / sizeof(bytes[0])); i++) {
		throttle_input_t in = lag_input(bytes[i], ms[i]);

		expect_runs(throttle_decide(&st, &s, &in), 100, NULL);
	}
	/* Deciding never touches the batch size. */
	assert_int_equal(st.batch_size, 1000);
	assert_false(st.lag_hold);
}

static void test_decide_sleep_proportional(void **state)
{
	/* From sleep_ms (100) at half the limit to max_sleep_ms (10100) at the limit. */
	throttle_settings_t s = make_settings(1000, 10, 100000, 100, 10100);
	throttle_state_t st;
	throttle_input_t in;
	int64_t last = 100;

	(void)state;
	throttle_init(&st, &s);
	in = lag_input(750000, 0); /* 75% of the bytes: midway */
	expect_runs(throttle_decide(&st, &s, &in), 5100, "replication_lag");
	in = lag_input(0, 7500); /* 75% of the time: the same */
	expect_runs(throttle_decide(&st, &s, &in), 5100, "replication_lag");
	in = lag_input(625000, 0);
	expect_runs(throttle_decide(&st, &s, &in), 2600, "replication_lag");
	in = lag_input(0, 8750);
	expect_runs(throttle_decide(&st, &s, &in), 7600, "replication_lag");
	/* Continuous and rising all the way up, under max_sleep_ms until the hold. */
	for (int64_t b = 500001; b < LAG_BYTES; b += 997) {
		throttle_decision_t d;

		in = lag_input(b, 0);
		d = throttle_decide(&st, &s, &in);
		assert_false(d.hold);
		if (d.sleep_ms < last || d.sleep_ms > last + 25 || d.sleep_ms > 10100)
			fail_msg("at %lld bytes: sleep %lld after %lld", (long long)b, (long long)d.sleep_ms,
				 (long long)last);
		last = d.sleep_ms;
	}
	assert_true(last >= 10080);
	assert_false(st.lag_hold);
}

static void test_decide_worse_of_bytes_and_time(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 100, 10100);
	throttle_state_t st;
	throttle_input_t in;

	(void)state;
	throttle_init(&st, &s);
	in = lag_input(100000, 7500); /* time is worse */
	expect_runs(throttle_decide(&st, &s, &in), 5100, "replication_lag");
	in = lag_input(750000, 1000); /* bytes are worse */
	expect_runs(throttle_decide(&st, &s, &in), 5100, "replication_lag");
	in = lag_input(625000, 8750); /* both over half: the worse one */
	expect_runs(throttle_decide(&st, &s, &in), 7600, "replication_lag");
	in = lag_input(499999, 4999); /* both just under half: nothing added */
	expect_runs(throttle_decide(&st, &s, &in), 100, NULL);
	in = lag_input(0, 10000); /* the time limit alone holds */
	expect_holds(throttle_decide(&st, &s, &in), "replication_lag");
}

static void test_decide_holds_at_limit(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 100, 10100);
	throttle_state_t st;
	throttle_input_t in;

	(void)state;
	throttle_init(&st, &s);
	in = lag_input(999999, 0);
	expect_runs(throttle_decide(&st, &s, &in), 10099, "replication_lag");
	in = lag_input(LAG_BYTES, 0);
	expect_holds(throttle_decide(&st, &s, &in), "replication_lag");
	assert_true(st.lag_hold);
	throttle_init(&st, &s);
	in = lag_input(50 * (int64_t)LAG_BYTES, 3 * LAG_MS);
	expect_holds(throttle_decide(&st, &s, &in), "replication_lag");
	/* Holding does not move the batch size. */
	assert_int_equal(st.batch_size, 1000);
}

static void test_decide_hysteresis(void **state)
{
	static const double trace[] = {0.3, 0.8, 1.0, 0.8, 0.5, 0.6, 0.5, 0.49, 0.8, 0.99, 1.2, 0.7, 0.1};
	static const bool held[] = {false, false, true,	 true, true, true, true,
				    false, false, false, true, true, false};
	throttle_settings_t s = make_settings(1000, 10, 100000, 100, 10100);
	throttle_state_t st;

	(void)state;
	throttle_init(&st, &s);
	for (int i = 0; i < (int)(sizeof(trace) / sizeof(trace[0])); i++) {
		throttle_input_t in = pressure_input(trace[i]);
		throttle_decision_t d = throttle_decide(&st, &s, &in);

		if (d.hold != held[i])
			fail_msg("step %d, pressure %.2f: %s, expected %s", i, trace[i],
				 d.hold ? "held" : "ran", held[i] ? "a hold" : "to run");
		if (d.hold)
			expect_holds(d, "replication_lag");
		assert_true(st.lag_hold == held[i]);
	}
	/* Released at 0.49: no added sleep and no reason. */
	throttle_init(&st, &s);
	{
		throttle_input_t over = pressure_input(1.0), under = pressure_input(0.49);

		expect_holds(throttle_decide(&st, &s, &over), "replication_lag");
		expect_runs(throttle_decide(&st, &s, &under), 100, NULL);
	}
}

static void test_decide_input_hold(void **state)
{
	static const double lag[] = {0, 0.3, 0.75, 1.5};
	throttle_settings_t s = make_settings(1000, 10, 100000, 100, 10100);
	throttle_state_t st;
	throttle_input_t in;

	(void)state;
	for (int i = 0; i < (int)(sizeof(lag) / sizeof(lag[0])); i++) {
		throttle_init(&st, &s);
		in = pressure_input(lag[i]);
		in.hold = REASON_AUTOVACUUM;
		expect_holds(throttle_decide(&st, &s, &in), "autovacuum");
		in.lag_known = false;
		expect_holds(throttle_decide(&st, &s, &in), "autovacuum");
	}
	in = lag_input(0, 0);
	in.hold = REASON_STANDBY_MISSING;
	expect_holds(throttle_decide(&st, &s, &in), "standby_missing");

	/* Held for lag, then for autovacuum while lag eased to 0.7: once autovacuum is done the
	 * lag hold still stands (0.7 is not under half), and goes at 0.4. */
	throttle_init(&st, &s);
	in = pressure_input(1.1);
	expect_holds(throttle_decide(&st, &s, &in), "replication_lag");
	in = pressure_input(0.7);
	in.hold = REASON_AUTOVACUUM;
	expect_holds(throttle_decide(&st, &s, &in), "autovacuum");
	in.hold = REASON_NONE;
	expect_holds(throttle_decide(&st, &s, &in), "replication_lag");
	in = pressure_input(0.4);
	expect_runs(throttle_decide(&st, &s, &in), 100, NULL);
}

static void test_decide_unknown_lag(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 100, 10100);
	throttle_state_t st;
	throttle_input_t in;

	(void)state;
	throttle_init(&st, &s);
	in = lag_input(INT64_MAX, INT64_MAX);
	in.lag_known = false;
	for (int i = 0; i < 5; i++)
		expect_runs(throttle_decide(&st, &s, &in), 100, NULL);
	assert_false(st.lag_hold);
	in = lag_input(750000, 7500);
	in.lag_known = false;
	expect_runs(throttle_decide(&st, &s, &in), 100, NULL);
}

static void test_decide_sleep_from_current_pause(void **state)
{
	/* The pause a retry set is the base the lag adds to; all within max_sleep_ms. */
	throttle_settings_t s = make_settings(1000, 10, 100000, 100, 10100);
	throttle_state_t st;
	throttle_input_t in;

	(void)state;
	throttle_init(&st, &s);
	st.sleep_ms = 2100;
	in = lag_input(0, 0);
	expect_runs(throttle_decide(&st, &s, &in), 2100, NULL);
	in = lag_input(750000, 0);
	expect_runs(throttle_decide(&st, &s, &in), 6100, "replication_lag");
	st.sleep_ms = 50000;
	in = lag_input(0, 0);
	expect_runs(throttle_decide(&st, &s, &in), 10100, NULL);
	in = lag_input(750000, 0);
	expect_runs(throttle_decide(&st, &s, &in), 10100, "replication_lag");
	/* No pause configured at all: lag alone makes one. */
	s = make_settings(1000, 10, 100000, 0, 10000);
	throttle_init(&st, &s);
	in = lag_input(0, 0);
	expect_runs(throttle_decide(&st, &s, &in), 0, NULL);
	in = lag_input(750000, 0);
	expect_runs(throttle_decide(&st, &s, &in), 5000, "replication_lag");
}

/* ---- contention: sessions waiting on a committed batch's locks ---- */

static throttle_settings_t contention_settings(void)
{
	return (throttle_settings_t){.batch_size = 1000,
				     .min_batch_size = 10,
				     .max_batch_size = 100000,
				     .target_batch_ms = 500,
				     .max_sleep_ms = 30000,
				     .max_replication_lag_bytes = 1000,
				     .max_replication_lag_ms = 1000};
}

static void test_contention_halves_on_any_wait(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;

	(void)state;
	throttle_init(&st, &s);
	st.batch_size = 8000;
	assert_false(throttle_after_contention(&st, &s, 0)); /* nobody waited (or under 1 ms) */
	assert_false(throttle_after_contention(&st, &s, -1));
	assert_int_equal(st.batch_size, 8000);
	assert_int_equal(st.ceiling, 0);
	assert_true(throttle_after_contention(&st, &s, 1)); /* far under the target: still felt */
	assert_int_equal(st.batch_size, 4000);
	assert_int_equal(st.ceiling, 4000);
	for (int i = 0; i < 20; i++)
		(void)throttle_after_contention(&st, &s, 5000);
	assert_int_equal(st.batch_size, 10); /* never below min */
	assert_int_equal(st.ceiling, 10);
}

/* After contention the size grows back by a tenth a calm batch, not x1.5, however fast the rows go. */
static void test_contention_ceiling_grows_slowly(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;
	int64_t before;

	(void)state;
	throttle_init(&st, &s);
	st.batch_size = 2000;
	throttle_after_batch(&st, &s, 2000, 100.0); /* 20 rows/ms: the rate wants 10,000 */
	assert_int_equal(st.batch_size, 3000);	    /* x1.5 */
	assert_true(throttle_after_contention(&st, &s, 400));
	assert_int_equal(st.batch_size, 1500);
	for (int i = 0; i < 5; i++) {
		before = st.ceiling;
		throttle_after_batch(&st, &s, st.batch_size, (double)st.batch_size / 20.0);
		assert_int_equal(st.batch_size, before); /* held at the ceiling */
		assert_false(throttle_after_contention(&st, &s, 0));
		assert_int_equal(st.ceiling, before + before / 10);
	}
	throttle_after_batch(&st, &s, st.batch_size, (double)st.batch_size / 20.0);
	assert_int_equal(st.batch_size, 2414); /* 1500 grown by a tenth five times, rounded down */
	/* The ceiling goes once it reaches max_batch_size. */
	s.max_batch_size = 2500;
	assert_false(throttle_after_contention(&st, &s, 0));
	assert_int_equal(st.ceiling, 0);
}

/*
 * An application that meets the job's row locks at random: it makes K sessions wait per row
 * a batch holds and per ms it holds them (waiters come out of the running expectation, so the
 * trace is the same on every run). One batch of the job as the daemon runs it: decide (the
 * sleep), the batch on SV, then the controller's three steps. Adds the batch's time (sleep and
 * duration, ms), its waiters and its rows to the app's totals.
 */
typedef struct app {
	double k;	 /* waiters per row x ms */
	double expected; /* waiters owed by the batches so far, not yet come out */
	double time, waits, rows;
	double writes;	   /* its row writes to the target a ms, seen when the job measures them */
	double table_rows; /* the table's rows, as the job reads them with the counters */
	int64_t largest;   /* the largest batch since `time` was last zeroed */
	double stretch;	   /* the CPU probes' stretch (0: none yet) */
} app_t;

static void run_contended_batch(throttle_state_t *st, const throttle_settings_t *s, server_t *sv, app_t *app)
{
	throttle_input_t calm = {.lag_known = true, .cpu_stretch = app->stretch};
	throttle_decision_t d = throttle_decide(st, s, &calm);
	int64_t rows = st->batch_size, waiters = 0;
	double ms = server_batch_ms(sv, rows);

	app->expected += app->k * (double)rows * ms;
	while (app->expected >= 1) {
		waiters++;
		app->expected -= 1;
	}
	if (st->app_watch) /* what the counters say of the interval from the previous batch's start */
		throttle_after_app(st, s, app->writes * ((double)d.sleep_ms + ms), (double)d.sleep_ms + ms,
				   app->table_rows);
	if (rows > app->largest)
		app->largest = rows;
	throttle_after_batch(st, s, rows, ms);
	throttle_after_waiters(st, s, rows, ms, waiters);
	(void)throttle_after_contention(st, s, waiters > 0 ? 1 : 0);
	app->time += (double)d.sleep_ms + ms;
	app->waits += (double)waiters;
	app->rows += (double)rows;
}

/* The largest batch size whose batches, each followed by sleep_ms, keep the waits APP makes under
 * THROTTLE_WAITS_PER_S on SV: found by scanning every size, not by the controller's formula. */
static double waits_budget_size(const throttle_settings_t *s, server_t *sv, const app_t *app)
{
	double allowed = 0;

	for (int64_t b = 1; b <= s->max_batch_size; b++) {
		double d = server_batch_ms(sv, b);
		if (app->k * (double)b * d / (d + (double)s->sleep_ms) * 1000 <= THROTTLE_WAITS_PER_S)
			allowed = (double)b;
	}
	return allowed;
}

/* Run WARM batches (the first waits fade), then MEASURED more, and check the latter: sessions
 * waited at most 1.5 x THROTTLE_WAITS_PER_S a second of the job's time, but did wait (at
 * min_batch_size they would not), and the job walked at least half as fast as batches of the
 * budget's size (waits_budget_size) would. */
static void expect_settled_on_the_budget(throttle_state_t *st, const throttle_settings_t *s, server_t *sv,
					 app_t *app, int warm, int measured)
{
	double secs, allowed = waits_budget_size(s, sv, app);
	double best = allowed / (server_batch_ms(sv, (int64_t)allowed) + (double)s->sleep_ms) * 1000;

	for (int i = 0; i < warm; i++)
		run_contended_batch(st, s, sv, app);
	app->time = app->waits = app->rows = 0;
	for (int i = 0; i < measured; i++)
		run_contended_batch(st, s, sv, app);
	secs = app->time / 1000;
	if (!(app->waits / secs <= 1.5 * THROTTLE_WAITS_PER_S))
		fail_msg("%.0f waits in %.0f s of the job: %.2f a second, over 1.5 x %.1f", app->waits, secs,
			 app->waits / secs, THROTTLE_WAITS_PER_S);
	assert_true(app->waits > 0);
	if (!(app->rows / secs >= 0.5 * best))
		fail_msg("%.0f rows/s (batch %lld); batches of %.0f rows would walk %.0f", app->rows / secs,
			 (long long)st->batch_size, allowed, best);
}

/*
 * With an application that keeps meeting the job's locks, the rate at which sessions wait on the
 * job settles near THROTTLE_WAITS_PER_S, and the job walks about as fast as that allows: batches
 * of ~1,000 rows back to back (the size at which 400 transactions/s over 1M rows meet one in
 * five seconds). Halving on each wait and idling after it alone kept waits as rare by idling up
 * to 8x as long as it ran: ~5,500 rows/s here, against ~47,000.
 */
static void test_waiters_settle_near_the_budget(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;
	server_t sv = {.rate = 50, .overhead = 1};
	app_t app = {.k = 2e-7}; /* 400 transactions/s on one row each of 1M, a row held half the batch */

	(void)state;
	throttle_init(&st, &s);
	expect_settled_on_the_budget(&st, &s, &sv, &app, 20000, 20000);
}

/* The same with a sleep of 100 ms after every batch (sleep_ms): the job meets the application
 * only while a batch runs, so the budget allows bigger batches than back to back (~2,800 rows;
 * leaving the sleep out of the budget held them near 830: 8,341 rows/s against 17,715). */
static void test_waiters_budget_counts_the_sleep(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;
	server_t sv = {.rate = 50, .overhead = 1};
	app_t app = {.k = 2e-7};

	(void)state;
	s.sleep_ms = 100;
	assert_true(waits_budget_size(&s, &sv, &app) > 2000); /* back to back it would be 1,000 */
	throttle_init(&st, &s);
	expect_settled_on_the_budget(&st, &s, &sv, &app, 6000, 6000);
}

/* When the application stops meeting the job's locks, the job grows back to what the target
 * asks, within a few minutes of its time; before any wait there is no cap at all. */
static void test_waiters_gone_the_size_grows_back(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;
	server_t sv = {.rate = 50, .overhead = 1};
	app_t app = {.k = 2e-7};

	(void)state;
	throttle_init(&st, &s);
	for (int i = 0; i < 100; i++) {
		throttle_after_batch(&st, &s, st.batch_size, server_batch_ms(&sv, st.batch_size));
		throttle_after_waiters(&st, &s, st.batch_size, 100, 0);
		assert_int_equal(st.cap, 0);
	}
	for (int i = 0; i < 5000; i++)
		run_contended_batch(&st, &s, &sv, &app);
	assert_true(st.cap > 0);
	assert_true(st.batch_size < 5000);
	app.k = 0;
	app.time = 0;
	while (app.time < 10 * 60 * 1000.0 && st.batch_size < 24000)
		run_contended_batch(&st, &s, &sv, &app);
	if (st.batch_size < 24000)
		fail_msg("10 minutes without waiters: batch %lld, cap %lld, ceiling %lld",
			 (long long)st.batch_size, (long long)st.cap, (long long)st.ceiling);
}

/* 400 transactions/s, each writing one row of 1M at random: what the job's counters show, and
 * the waits that follow (k = r / 2N, one row held half the batch); the CPU probes show CPU to
 * spare (the waits alone govern). */
static app_t pgbench_like_app(void)
{
	return (app_t){.k = 2e-7, .writes = 0.4, .table_rows = 1e6, .stretch = 1.02};
}

/*
 * The job that reads the application's writes from the table's counters keeps to the waits
 * budget from its first batches: it does not grow while it measures, and then not past the size
 * the writes predict. Without them the size grew to ~17,000 rows in its first 10 s, and sessions
 * waited 5 times (the budget: 2).
 */
static void test_app_writes_keep_the_start_under_the_budget(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;
	server_t sv = {.rate = 50, .overhead = 1};
	app_t app = pgbench_like_app();
	double allowed = waits_budget_size(&s, &sv, &app);

	(void)state;
	throttle_init(&st, &s);
	st.app_watch = true;
	while (app.time < 10000)
		run_contended_batch(&st, &s, &sv, &app);
	if (!((double)app.largest <= 1.5 * allowed))
		fail_msg("its first 10 s: batches up to %lld rows; the budget allows %.0f",
			 (long long)app.largest, allowed);
	if (!(app.waits <= 1.5 * THROTTLE_WAITS_PER_S * 10))
		fail_msg("%.0f sessions waited in its first 10 s; the budget is %.0f", app.waits,
			 THROTTLE_WAITS_PER_S * 10);
	/* and it walked: at least half as fast as batches of the budget's size would */
	assert_true(app.rows / 10 >= 0.5 * allowed / server_batch_ms(&sv, (int64_t)allowed) * 1000);
	/* The same job that does not measure: the start this prevents. */
	throttle_init(&st, &s);
	app = pgbench_like_app();
	while (app.time < 10000)
		run_contended_batch(&st, &s, &sv, &app);
	assert_true((double)app.largest > 10 * allowed);	  /* ~17,000 rows */
	assert_true(app.waits > 1.5 * THROTTLE_WAITS_PER_S * 10); /* 5 */
}

/* While it measures, the size stays at the first batch_size and it is busy at most
 * THROTTLE_START_DUTY of the time; once measured, with nobody writing, it grows to what the
 * target asks, and the reason is none. */
static void test_app_warmup_then_free_when_nobody_writes(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;
	server_t sv = {.rate = 50, .overhead = 1};
	app_t app = {.k = 0, .writes = 0, .table_rows = 1e6};
	throttle_input_t calm = {.lag_known = true};

	(void)state;
	throttle_init(&st, &s);
	st.app_watch = true;
	while (app.time + 2 / THROTTLE_START_DUTY * server_batch_ms(&sv, st.batch_size) <
	       THROTTLE_APP_WARMUP_MS) {
		run_contended_batch(&st, &s, &sv, &app);
		assert_int_equal(st.batch_size, s.batch_size);
		/* and busy at most THROTTLE_START_DUTY of the time */
		assert_true(throttle_decide(&st, &s, &calm).sleep_ms >=
			    (int64_t)(st.last_ms * (1 / THROTTLE_START_DUTY - 1)));
	}
	for (int i = 0; i < 30; i++)
		run_contended_batch(&st, &s, &sv, &app);
	assert_true(within((double)st.batch_size, server_ideal(&sv, &s), 0.1));
	assert_int_equal(st.cap, 0);
	assert_int_equal(throttle_decide(&st, &s, &calm).reason, REASON_NONE);
}

/* While it measures, CPU probes that show CPU to spare (stretch known, at most
 * THROTTLE_CPU_STRETCH) end the gentle start's sleep at once, but not its size; probes that show
 * the CPU taken, or none yet, keep it. */
static void test_app_warmup_ends_early_when_the_cpu_is_free(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;
	server_t sv = {.rate = 50, .overhead = 1};
	app_t app = {.k = 0, .writes = 0, .table_rows = 1e6};
	throttle_input_t unknown = {.lag_known = true};
	throttle_input_t busy = {.lag_known = true, .cpu_stretch = 1.8};
	throttle_input_t free_cpu = {.lag_known = true, .cpu_stretch = 1.02};

	(void)state;
	throttle_init(&st, &s);
	st.app_watch = true;
	run_contended_batch(&st, &s, &sv, &app);
	assert_true(st.app_seen_ms < THROTTLE_APP_WARMUP_MS);
	assert_true(throttle_decide(&st, &s, &unknown).sleep_ms >=
		    (int64_t)(st.last_ms * (1 / THROTTLE_START_DUTY - 1)));
	assert_true(throttle_decide(&st, &s, &busy).sleep_ms >=
		    (int64_t)(st.last_ms * (1 / THROTTLE_START_DUTY - 1)));
	assert_int_equal(throttle_decide(&st, &s, &free_cpu).sleep_ms, s.sleep_ms);
	/* the size still keeps to the first batch_size until the counters are in */
	throttle_after_batch(&st, &s, st.batch_size, server_batch_ms(&sv, st.batch_size));
	assert_int_equal(st.batch_size, s.batch_size);
}

/*
 * Where the application writes the table, the gentle start outlasts THROTTLE_APP_WARMUP_MS until
 * the CPU probes tell whether batches slow its CPU work (a job let go at full speed for the
 * seconds the probes take caused a fifth to a third of the slow transactions bench_settings saw); a stretch then
 * brings the CPU share, CPU to spare lets it go, and probes that never come do so after
 * THROTTLE_STRETCH_WAIT_MS. Nobody writing: the warm-up alone.
 */
/* A job that measures, whose last batch took 4 ms, after MS of measuring WRITES rows. */
static throttle_state_t measured_state(const throttle_settings_t *s, double writes, double ms)
{
	throttle_state_t st;

	throttle_init(&st, s);
	st.app_watch = true;
	st.last_ms = 4;
	throttle_after_app(&st, s, writes, ms, 1e6);
	return st;
}

static void test_app_writing_keeps_the_start_gentle_until_the_probes_tell(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st = measured_state(&s, 400 * 3, 3000); /* 3 s: 400 writes a second */
	throttle_input_t unknown = {.lag_known = true};
	throttle_input_t busy = {.lag_known = true, .cpu_stretch = 1.5};
	throttle_input_t free_cpu = {.lag_known = true, .cpu_stretch = 1.02};
	int64_t gentle = (int64_t)(st.last_ms * (1 / THROTTLE_START_DUTY - 1));
	throttle_decision_t d;

	(void)state;
	assert_true(st.app_seen_ms >= THROTTLE_APP_WARMUP_MS);
	assert_true(throttle_decide(&st, &s, &unknown).sleep_ms >= gentle);
	d = throttle_decide(&st, &s, &busy);
	assert_int_equal(d.reason, REASON_CPU_CONTENTION);
	assert_true(d.sleep_ms >= gentle);
	st = measured_state(&s, 400 * 3, 3000);
	assert_int_equal(throttle_decide(&st, &s, &free_cpu).sleep_ms, s.sleep_ms);
	throttle_after_app(&st, &s, 400 * 8, 8000, 1e6); /* 11 s, and still no probe */
	assert_int_equal(throttle_decide(&st, &s, &unknown).sleep_ms, s.sleep_ms);
	/* Nobody writing: free once measured. */
	st = measured_state(&s, 0, 3000);
	assert_int_equal(throttle_decide(&st, &s, &unknown).sleep_ms, s.sleep_ms);
}

/* On a server where no other session is at work, a job that measures starts at full speed: nobody
 * to protect; the size still waits for the counters. */
static void test_app_warmup_skipped_on_an_idle_server(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;
	server_t sv = {.rate = 50, .overhead = 1};
	app_t app = {.k = 0, .writes = 0, .table_rows = 1e6};
	throttle_input_t idle = {.lag_known = true, .server_idle = true, .cpu_stretch = 1.6};
	throttle_input_t others = {.lag_known = true, .cpu_stretch = 1.6};

	(void)state;
	throttle_init(&st, &s);
	st.app_watch = true;
	run_contended_batch(&st, &s, &sv, &app);
	assert_int_equal(throttle_decide(&st, &s, &idle).sleep_ms, s.sleep_ms);
	assert_true(throttle_decide(&st, &s, &others).sleep_ms >=
		    (int64_t)(st.last_ms * (1 / THROTTLE_START_DUTY - 1)));
	throttle_after_batch(&st, &s, st.batch_size, server_batch_ms(&sv, st.batch_size));
	assert_int_equal(st.batch_size, s.batch_size);
}

/*
 * The WAL a key writes, measured batch by batch, sizes the next batch to the lag headroom: with
 * the lag at 60% of the limit and 100 bytes a key, a batch walks at most 40% of the limit over
 * 100 bytes, less the margin, and half of that when two runners share it; a jump of the WAL a key
 * writes (full-page images) counts at once; no headroom leaves min_batch_size; no measure, room
 * for more than batch_size, or nothing replicating, no limit.
 */
static void test_wal_per_key_fits_batches_in_the_lag_headroom(void **state)
{
	throttle_settings_t s = make_settings(100000, 10, 1000000, 0, 30000);
	throttle_state_t st;
	throttle_input_t in = {
		.lag_known = true, .replicating = true, .lag_bytes = LAG_BYTES * 6 / 10, .runners = 1};
	throttle_decision_t d;
	int64_t expect = (int64_t)(LAG_BYTES * 0.4 / (100 * THROTTLE_WAL_MARGIN));

	(void)state;
	throttle_init(&st, &s);
	assert_int_equal(throttle_decide(&st, &s, &in).max_rows, 0); /* nothing measured yet */
	assert_false(st.wal_known);
	throttle_after_wal(&st, 0, 100000); /* no key walked: nothing learned */
	assert_false(st.wal_known);
	throttle_after_wal(&st, 1000, 0); /* measured, and nothing written (the WAL budget's sizes) */
	assert_true(st.wal_known);
	assert_true(st.wal_per_row == 0);
	throttle_after_wal(&st, 1000, 100000);
	d = throttle_decide(&st, &s, &in);
	assert_int_equal(d.max_rows, expect);
	assert_string_equal(reason_name(d.reason), "replication_lag");
	in.runners = 2;
	assert_int_equal(throttle_decide(&st, &s, &in).max_rows, expect / 2);
	in.runners = 1;
	throttle_after_wal(&st, 1000, 1000000); /* ten times as much a key: believed at once */
	assert_int_equal(throttle_decide(&st, &s, &in).max_rows, expect / 10);
	throttle_after_wal(&st, 1000, 100000); /* and forgotten slowly */
	assert_true(throttle_decide(&st, &s, &in).max_rows < expect / 2);
	in.lag_bytes = LAG_BYTES * 99 / 100;
	assert_int_equal(throttle_decide(&st, &s, &in).max_rows, s.min_batch_size);
	in.lag_bytes = 0;
	st.wal_per_row = 0.001;
	assert_int_equal(throttle_decide(&st, &s, &in).max_rows, 0);
	in.lag_known = false;
	st.wal_per_row = 100;
	assert_int_equal(throttle_decide(&st, &s, &in).max_rows, 0);
	/* Nothing replicates (no standby, no slot): no WAL is behind, whatever a batch writes. */
	in.lag_known = true;
	in.lag_bytes = 0;
	st.wal_per_row = 100;
	d = throttle_decide(&st, &s, &in);
	assert_true(d.max_rows > 0);
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);
	in.replicating = false;
	d = throttle_decide(&st, &s, &in);
	assert_int_equal(d.max_rows, 0);
	assert_int_equal(d.reason, REASON_NONE);
}

/*
 * An application that arrives in the middle of a job running big batches: within a few seconds
 * of its first writes the size is down to what they allow (by halves), with the reason
 * application_writes; the first waits it meets are few.
 */
static void test_app_arriving_brings_the_size_down(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;
	server_t sv = {.rate = 50, .overhead = 1};
	app_t app = {.k = 0, .writes = 0, .table_rows = 1e6};
	throttle_input_t calm = {.lag_known = true};
	double allowed;

	(void)state;
	throttle_init(&st, &s);
	st.app_watch = true;
	while (app.time < 60000)
		run_contended_batch(&st, &s, &sv, &app);
	assert_true(st.batch_size > 20000);
	app = pgbench_like_app();
	allowed = waits_budget_size(&s, &sv, &app);
	while (app.time < 5000)
		run_contended_batch(&st, &s, &sv, &app);
	if (!((double)st.batch_size <= 1.5 * allowed))
		fail_msg("5 s after the application came: batch %lld, the budget allows %.0f",
			 (long long)st.batch_size, allowed);
	assert_true(app.waits <= 5);
	assert_int_equal(throttle_decide(&st, &s, &calm).reason, REASON_APPLICATION_WRITES);
}

/*
 * The writes predict waits that do not come (the application writes rows the job is not near):
 * the evidence outweighs the prior, and within a few minutes the job runs at the target's size.
 */
static void test_app_writes_elsewhere_lift_the_cap(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;
	server_t sv = {.rate = 50, .overhead = 1};
	app_t app = pgbench_like_app();

	(void)state;
	app.k = 0; /* nobody meets the locks */
	throttle_init(&st, &s);
	st.app_watch = true;
	while (app.time < 10000)
		run_contended_batch(&st, &s, &sv, &app);
	assert_true(st.cap > 0 && st.batch_size <= 2000); /* held near the prior's 1,000 at first */
	while (app.time < 5 * 60000 && !within((double)st.batch_size, server_ideal(&sv, &s), 0.1))
		run_contended_batch(&st, &s, &sv, &app);
	if (!within((double)st.batch_size, server_ideal(&sv, &s), 0.1))
		fail_msg("5 minutes without a wait: batch %lld, cap %lld (target's size %.0f)",
			 (long long)st.batch_size, (long long)st.cap, server_ideal(&sv, &s));
}

/* No prior without the table's size, or when the job's batches write nothing of the target
 * (table_rows 0): the writes alone do not cap the size. */
static void test_app_writes_without_a_table_size_cap_nothing(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;

	(void)state;
	throttle_init(&st, &s);
	st.app_watch = true;
	throttle_after_app(&st, &s, 4000, 10000, 0);
	assert_true(st.app_seen_ms >= THROTTLE_APP_WARMUP_MS);
	assert_true(st.prior == 0 && st.cap == 0);
	throttle_after_app(&st, &s, 4000, 10000, 1e6);
	assert_true(st.prior > 0 && st.cap > 0);
	throttle_after_app(&st, &s, NAN, 0, 1e6); /* a bad interval is ignored */
	assert_true(st.cap > 0);
}

/* A job that has measured the application writing 400 rows a second (over 10 s), whose last
 * batch took LAST_MS. */
static throttle_state_t cpu_share_state(const throttle_settings_t *s, double last_ms)
{
	throttle_state_t st;

	throttle_init(&st, s);
	st.app_watch = true;
	throttle_after_app(&st, s, 4000, 10000, 1e6);
	st.last_ms = last_ms;
	return st;
}

/*
 * While the application writes the table, the job is busy the share of the time that keeps other
 * sessions' CPU work at THROTTLE_CPU_STRETCH of its time on average, 0.1 / (s - 1), but never more
 * than THROTTLE_CPU_TAIL_DUTY (its slowest transactions are those beside a batch): a stretch of
 * 1.2, 2, 5 or 11 leaves a hundredth, sleep 99 times the batch; 1.05: nothing; 21 a two-hundredth,
 * and 41 no less than THROTTLE_MIN_DUTY.
 */
static void test_cpu_share_follows_the_stretch(void **state)
{
	throttle_settings_t s = contention_settings();
	const struct {
		double stretch;
		int64_t sleep_ms;
		const char *reason;
	} cases[] = {
		{0, 0, NULL},
		{1.05, 0, NULL},
		{1.1, 0, NULL},
		{1.2, 7920, "cpu_contention"},
		{2, 7920, "cpu_contention"},
		{5, 7920, "cpu_contention"},
		{11, 7920, "cpu_contention"},
		{21, 15920, "cpu_contention"},
		{41, 15920, "cpu_contention"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		throttle_state_t st = cpu_share_state(&s, 80);
		throttle_input_t in = {.lag_known = true, .cpu_stretch = cases[i].stretch};
		throttle_decision_t d = throttle_decide(&st, &s, &in);
		if (llabs(d.sleep_ms - cases[i].sleep_ms) > 1)
			fail_msg("stretch %.2f: sleep %lld ms, want %lld", cases[i].stretch,
				 (long long)d.sleep_ms, (long long)cases[i].sleep_ms);
		if (cases[i].reason)
			assert_string_equal(reason_name(d.reason), cases[i].reason);
		else
			assert_int_equal(d.reason, REASON_NONE);
		assert_false(d.hold);
	}
}

/*
 * Under contention each batch walks no more keys than run in THROTTLE_CPU_BURST_MS at the measured
 * rate (a short batch makes a short stall for the transactions beside it), and the regime holds
 * while the application writes however calm the probes look under it (shorter, sparser batches
 * show less of the stretch, not what full ones would cost); it outlasts the writes by
 * THROTTLE_CPU_HOLD_BATCHES batches, and then only a stretch seen again brings it back.
 */
static void test_cpu_contention_keeps_batches_short_while_the_application_writes(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st = cpu_share_state(&s, 80);
	throttle_input_t hot = {.lag_known = true, .cpu_stretch = 1.5},
			 calm = {.lag_known = true, .cpu_stretch = 1.02};
	throttle_decision_t d;
	int i;

	(void)state;
	st.rate = 400; /* keys a ms */
	st.batch_size = 20000;
	d = throttle_decide(&st, &s, &hot);
	assert_int_equal(d.max_rows, 800);
	assert_int_equal(d.reason, REASON_CPU_CONTENTION);
	assert_int_equal(d.sleep_ms, 7920);
	for (i = 0; i < 3 * THROTTLE_CPU_HOLD_BATCHES; i++) { /* calm probes, the application writing */
		throttle_after_batch(&st, &s, 800, 2.0);
		throttle_after_app(&st, &s, 40, 100, 1e6);
		st.batch_size = 20000;
		d = throttle_decide(&st, &s, &calm);
		assert_int_equal(d.max_rows, 800);
		assert_int_equal(d.reason, REASON_CPU_CONTENTION);
		assert_int_equal(d.sleep_ms, 198); /* a hundredth of the time busy */
	}
	throttle_after_app(&st, &s, 0, 60000, 1e6); /* a minute without writes */
	for (i = 0; i < THROTTLE_CPU_HOLD_BATCHES; i++)
		throttle_after_batch(&st, &s, 800, 2.0);
	throttle_after_app(&st, &s, 4000, 10000, 1e6); /* the writes again, the probes calm */
	st.batch_size = 20000;
	d = throttle_decide(&st, &s, &calm);
	assert_int_equal(d.max_rows, 0);
	assert_int_not_equal(d.reason, REASON_CPU_CONTENTION);
	d = throttle_decide(&st, &s, &hot); /* until the stretch is seen again */
	assert_int_equal(d.max_rows, 800);
	assert_int_equal(d.reason, REASON_CPU_CONTENTION);
	/* Without a measured rate there is no burst to cut to; the share applies all the same. */
	st = cpu_share_state(&s, 80);
	d = throttle_decide(&st, &s, &hot);
	assert_int_equal(d.max_rows, 0);
	assert_int_equal(d.sleep_ms, 7920);
}

/* Not without the application writing the table (the CPU is only shared with whom it is for),
 * nor for a job that does not measure; lag that asks for a longer sleep wins; max_sleep_ms bounds. */
static void test_cpu_share_needs_the_application(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st = cpu_share_state(&s, 80);
	throttle_input_t in = {.lag_known = true, .cpu_stretch = 2};
	throttle_decision_t d;

	(void)state;
	throttle_after_app(&st, &s, 0, 60000, 1e6); /* a minute without writes: gone */
	d = throttle_decide(&st, &s, &in);
	assert_int_equal(d.sleep_ms, 0);
	assert_int_equal(d.reason, REASON_NONE);

	st = cpu_share_state(&s, 80);
	st.app_watch = false;
	d = throttle_decide(&st, &s, &in);
	assert_int_equal(d.sleep_ms, 0);

	st = cpu_share_state(&s, 80);
	in.lag_bytes = 900; /* pressure 0.9 of max_replication_lag_bytes 1000 */
	d = throttle_decide(&st, &s, &in);
	assert_string_equal(reason_name(d.reason), "replication_lag");
	assert_true(d.sleep_ms > 7920);

	st = cpu_share_state(&s, 80);
	in.lag_bytes = 0;
	s.max_sleep_ms = 500;
	d = throttle_decide(&st, &s, &in);
	assert_int_equal(d.sleep_ms, 500);
	assert_string_equal(reason_name(d.reason), "cpu_contention");
}

/* For THROTTLE_DUTY_BATCHES batches after contention the sleep is at least the last batch's
 * duration, with reason blocked_sessions; lag that asks for more wins. */
static void test_contention_duty_cycle(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;
	throttle_input_t calm = {.lag_known = true}, lagging = {.lag_known = true, .lag_bytes = 900};
	throttle_decision_t d;

	(void)state;
	throttle_init(&st, &s);
	throttle_after_batch(&st, &s, 1000, 120.0);
	d = throttle_decide(&st, &s, &calm);
	assert_int_equal(d.sleep_ms, 0); /* no contention yet: no duty cycle */
	assert_int_equal(d.reason, REASON_NONE);
	assert_true(throttle_after_contention(&st, &s, 300));
	d = throttle_decide(&st, &s, &calm);
	assert_int_equal(d.sleep_ms, 120);
	assert_string_equal(reason_name(d.reason), "blocked_sessions");
	d = throttle_decide(&st, &s, &lagging); /* p = 0.9: 0.8 of max_sleep_ms */
	assert_int_equal(d.sleep_ms, 24000);
	assert_string_equal(reason_name(d.reason), "replication_lag");
	for (int i = 0; i < THROTTLE_DUTY_BATCHES; i++) {
		throttle_after_batch(&st, &s, st.batch_size, 80.0);
		d = throttle_decide(&st, &s, &calm);
		assert_int_equal(d.sleep_ms, 80);
		(void)throttle_after_contention(&st, &s, 0);
	}
	d = throttle_decide(&st, &s, &calm);
	assert_int_equal(d.sleep_ms, 0); /* calm again */
	assert_int_equal(d.reason, REASON_NONE);
	/* Never past max_sleep_ms. */
	s.max_sleep_ms = 50;
	assert_true(throttle_after_contention(&st, &s, 300));
	assert_int_equal(throttle_decide(&st, &s, &calm).sleep_ms, 50);
}

/* Contention that comes back before the duty cycle has ended doubles the idle time, up to
 * THROTTLE_MAX_IDLE times the batch; a full duty cycle without contention ends it. */
static void test_contention_that_keeps_coming_back_lengthens_the_idle_time(void **state)
{
	throttle_settings_t s = contention_settings();
	throttle_state_t st;
	throttle_input_t calm = {.lag_known = true};
	const int64_t want[] = {100, 200, 400, 800, 800};

	(void)state;
	throttle_init(&st, &s);
	for (int i = 0; i < 5; i++) {
		throttle_after_batch(&st, &s, st.batch_size, 100.0);
		assert_true(throttle_after_contention(&st, &s, 5));
		for (int calm_batches = 0; calm_batches < i; calm_batches++) { /* some calm ones between */
			assert_int_equal(throttle_decide(&st, &s, &calm).sleep_ms, want[i]);
			throttle_after_batch(&st, &s, st.batch_size, 100.0);
			assert_false(throttle_after_contention(&st, &s, 0));
		}
		assert_int_equal(throttle_decide(&st, &s, &calm).sleep_ms, want[i]);
	}
	for (int i = 0; i < THROTTLE_DUTY_BATCHES; i++) {
		throttle_after_batch(&st, &s, st.batch_size, 100.0);
		assert_false(throttle_after_contention(&st, &s, 0));
	}
	assert_int_equal(throttle_decide(&st, &s, &calm).sleep_ms, 0); /* the cycle has ended */
	assert_true(throttle_after_contention(&st, &s, 5));
	assert_int_equal(throttle_decide(&st, &s, &calm).sleep_ms, 100); /* and starts at 1x again */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_contention_halves_on_any_wait),
		cmocka_unit_test(test_waiters_settle_near_the_budget),
		cmocka_unit_test(test_waiters_gone_the_size_grows_back),
		cmocka_unit_test(test_waiters_budget_counts_the_sleep),
		cmocka_unit_test(test_app_writes_keep_the_start_under_the_budget),
		cmocka_unit_test(test_app_warmup_then_free_when_nobody_writes),
		cmocka_unit_test(test_app_warmup_ends_early_when_the_cpu_is_free),
		cmocka_unit_test(test_app_writing_keeps_the_start_gentle_until_the_probes_tell),
		cmocka_unit_test(test_app_arriving_brings_the_size_down),
		cmocka_unit_test(test_app_warmup_skipped_on_an_idle_server),
		cmocka_unit_test(test_wal_per_key_fits_batches_in_the_lag_headroom),
		cmocka_unit_test(test_app_writes_elsewhere_lift_the_cap),
		cmocka_unit_test(test_app_writes_without_a_table_size_cap_nothing),
		cmocka_unit_test(test_cpu_share_follows_the_stretch),
		cmocka_unit_test(test_cpu_contention_keeps_batches_short_while_the_application_writes),
		cmocka_unit_test(test_cpu_share_needs_the_application),
		cmocka_unit_test(test_contention_that_keeps_coming_back_lengthens_the_idle_time),
		cmocka_unit_test(test_contention_ceiling_grows_slowly),
		cmocka_unit_test(test_contention_duty_cycle),
		cmocka_unit_test(test_init_within_bounds),
		cmocka_unit_test(test_init_clamps),
		cmocka_unit_test(test_retry_halves_to_min),
		cmocka_unit_test(test_retry_never_below_min),
		cmocka_unit_test(test_retry_respects_lowered_max),
		cmocka_unit_test(test_retry_backoff_exponential),
		cmocka_unit_test(test_retry_backoff_sequence),
		cmocka_unit_test(test_retry_bad_jitter_is_zero),
		cmocka_unit_test(test_retry_backoff_capped),
		cmocka_unit_test(test_retry_sleep_at_least_sleep_ms),
		cmocka_unit_test(test_batch_resets_retries_and_sleep),
		cmocka_unit_test(test_batch_first_steps_exact),
		cmocka_unit_test(test_batch_grows_from_one),
		cmocka_unit_test(test_batch_converges),
		cmocka_unit_test(test_batch_converges_from_above),
		cmocka_unit_test(test_batch_converges_with_noise),
		cmocka_unit_test(test_batch_follows_rate_drop),
		cmocka_unit_test(test_batch_overshoot_halves),
		cmocka_unit_test(test_batch_max_below_ideal),
		cmocka_unit_test(test_batch_min_above_ideal),
		cmocka_unit_test(test_batch_within_reloaded_bounds),
		cmocka_unit_test(test_batch_bad_duration),
		cmocka_unit_test(test_batch_no_rows),
		cmocka_unit_test(test_batch_partial_does_not_shrink),
		cmocka_unit_test(test_retry_then_recover),
		cmocka_unit_test(test_pressure_values),
		cmocka_unit_test(test_decide_no_sleep_below_half),
		cmocka_unit_test(test_decide_sleep_proportional),
		cmocka_unit_test(test_decide_worse_of_bytes_and_time),
		cmocka_unit_test(test_decide_holds_at_limit),
		cmocka_unit_test(test_decide_hysteresis),
		cmocka_unit_test(test_decide_input_hold),
		cmocka_unit_test(test_decide_unknown_lag),
		cmocka_unit_test(test_decide_sleep_from_current_pause),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
