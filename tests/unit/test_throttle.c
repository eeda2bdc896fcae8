/*
 * Unit tests for throttle.c: the starting size, halving and jittered exponential backoff
 * on retries, and the growth back toward the configured size after successful batches.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "throttle.h"

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
		.lock_timeout_ms = 2000,
		.statement_timeout_ms = 30000,
		.standbys = no_standbys,
		.nstandbys = 0,
	};
	return s;
}

/* A state as if a job had been running with SIZE, SLEEP and RETRIES. */
static throttle_state_t make_state(int64_t size, int64_t sleep_ms, int retries)
{
	throttle_state_t st = {.batch_size = size, .sleep_ms = sleep_ms, .retries = retries};
	return st;
}

/* ---- throttle_init ---- */

static void test_init_within_bounds(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 250, 30000);
	throttle_state_t st = make_state(-1, -1, 7);

	(void)state;
	throttle_init(&st, &s);
	assert_int_equal(st.batch_size, 1000);
	assert_int_equal(st.sleep_ms, 250);
	assert_int_equal(st.retries, 0);
}

static void test_init_clamps(void **state)
{
	throttle_settings_t below = make_settings(5, 10, 100000, 0, 30000);
	throttle_settings_t above = make_settings(500000, 10, 100000, 0, 30000);
	throttle_settings_t at_min = make_settings(10, 10, 100000, 0, 30000);
	throttle_settings_t at_max = make_settings(100000, 10, 100000, 0, 30000);
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
	static const double bad[] = {-0.5, -1e-9, 1.0, 2.0, 1e300};
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

/* ---- throttle_after_batch ---- */

static void test_batch_resets_retries_and_sleep(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 250, 30000);
	throttle_state_t st = make_state(1000, 12800, 5);

	(void)state;
	throttle_after_batch(&st, &s, 1000, 120.0);
	assert_int_equal(st.retries, 0);
	assert_int_equal(st.sleep_ms, 250);
	assert_int_equal(st.batch_size, 1000);
}

static void test_batch_grows_back_by_half(void **state)
{
	/* Half of the size plus one per batch (the one lets a size of 1 grow), capped at 1000. */
	static const int64_t want[] = {16, 25, 38, 58, 88, 133, 200, 301, 452, 679, 1000, 1000, 1000};
	throttle_settings_t s = make_settings(1000, 10, 100000, 0, 30000);
	throttle_state_t st = make_state(10, 0, 0);

	(void)state;
	for (int i = 0; i < (int)(sizeof(want) / sizeof(want[0])); i++) {
		throttle_after_batch(&st, &s, st.batch_size, 50.0);
		assert_int_equal(st.batch_size, want[i]);
	}
}

static void test_batch_grows_from_one(void **state)
{
	static const int64_t want[] = {2, 4, 7, 11, 17, 20, 20};
	throttle_settings_t s = make_settings(20, 1, 100, 0, 30000);
	throttle_state_t st = make_state(1, 0, 0);

	(void)state;
	for (int i = 0; i < (int)(sizeof(want) / sizeof(want[0])); i++) {
		throttle_after_batch(&st, &s, st.batch_size, 5.0);
		assert_int_equal(st.batch_size, want[i]);
	}
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

static void test_batch_applies_lowered_size(void **state)
{
	throttle_settings_t s = make_settings(200, 10, 100000, 0, 30000);
	throttle_state_t st = make_state(1000, 0, 0);

	(void)state;
	throttle_after_batch(&st, &s, 1000, 80.0);
	assert_int_equal(st.batch_size, 200);
	throttle_after_batch(&st, &s, 200, 80.0);
	assert_int_equal(st.batch_size, 200);
}

static void test_batch_stays_within_bounds(void **state)
{
	/* Inconsistent settings still give a size inside [min, max]. */
	throttle_settings_t over = make_settings(5000, 10, 2000, 0, 30000);
	throttle_settings_t under = make_settings(5, 10, 2000, 0, 30000);
	throttle_state_t st = make_state(1900, 0, 0);

	(void)state;
	throttle_after_batch(&st, &over, 1900, 10.0);
	assert_int_equal(st.batch_size, 2000);
	throttle_after_batch(&st, &over, 2000, 10.0);
	assert_int_equal(st.batch_size, 2000);
	st = make_state(10, 0, 0);
	throttle_after_batch(&st, &under, 10, 10.0);
	assert_int_equal(st.batch_size, 10);
}

static void test_batch_sleep_within_max(void **state)
{
	throttle_settings_t s = make_settings(1000, 10, 100000, 5000, 1000);
	throttle_settings_t zero = make_settings(1000, 10, 100000, 0, 30000);
	throttle_state_t st = make_state(1000, 30000, 2);

	(void)state;
	throttle_after_batch(&st, &s, 1000, 10.0);
	assert_int_equal(st.sleep_ms, 1000);
	st = make_state(1000, 30000, 2);
	throttle_after_batch(&st, &zero, 1000, 10.0);
	assert_int_equal(st.sleep_ms, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
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
		cmocka_unit_test(test_batch_grows_back_by_half),
		cmocka_unit_test(test_batch_grows_from_one),
		cmocka_unit_test(test_retry_then_recover),
		cmocka_unit_test(test_batch_applies_lowered_size),
		cmocka_unit_test(test_batch_stays_within_bounds),
		cmocka_unit_test(test_batch_sleep_within_max),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
