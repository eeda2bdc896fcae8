/*
 * Unit tests for lagclock.c: pg_lsn parsing, and time lag as the age of the oldest primary
 * position a standby has not replayed (caught up, replay paused, primary idle, repeated
 * positions, and a ring that overflows).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "lagclock.h"

#define MB ((uint64_t)1 << 20)

/* An empty clock, as the sampler starts with (a zeroed one). */
static lagclock_t *clock_new(void)
{
	lagclock_t *c = calloc(1, sizeof(*c));

	assert_non_null(c);
	return c;
}

static void expect_lag(const lagclock_t *c, double now_ms, uint64_t replay, double want)
{
	double got = lagclock_lag_ms(c, now_ms, replay);

	if (!(got >= want - 1e-6 && got <= want + 1e-6))
		fail_msg("at %.0f ms, replayed to %llX: lag %.3f ms, expected %.3f", now_ms,
			 (unsigned long long)replay, got, want);
}

/* ---- lagclock_parse_lsn ---- */

static void test_parse_lsn_valid(void **state)
{
	static const struct {
		const char *text;
		uint64_t lsn;
	} cases[] = {
		{"0/0", 0},
		{"0/1", 1},
		{"1/0", (uint64_t)1 << 32},
		{"16/B374D848", 0x16B374D848ull},
		{"16/b374d848", 0x16B374D848ull},
		{"16/b374D848", 0x16B374D848ull},
		{"a/F", 0xA0000000Full},
		{"00000016/0B374D84", 0x160B374D84ull},
		{"FFFFFFFF/FFFFFFFF", UINT64_MAX},
		{"ffffffff/0", 0xFFFFFFFF00000000ull},
	};

	(void)state;
	for (int i = 0; i < (int)(sizeof(cases) / sizeof(cases[0])); i++) {
		uint64_t got = 12345;

		if (!lagclock_parse_lsn(cases[i].text, &got))
			fail_msg("\"%s\" rejected", cases[i].text);
		if (got != cases[i].lsn)
			fail_msg("\"%s\" read as %llX, expected %llX", cases[i].text, (unsigned long long)got,
				 (unsigned long long)cases[i].lsn);
	}
}

/* Each of TEXTS is rejected and leaves the output alone. */
static void expect_rejected(const char *const *texts, int n)
{
	for (int i = 0; i < n; i++) {
		uint64_t got = 12345;

		if (lagclock_parse_lsn(texts[i], &got))
			fail_msg("\"%s\" accepted as %llX", texts[i] ? texts[i] : "(null)",
				 (unsigned long long)got);
		assert_int_equal(got, 12345);
	}
}

static void test_parse_lsn_malformed(void **state)
{
	static const char *const bad[] = {
		NULL,
		"",
		"/",
		"16",	      /* missing slash */
		"16B374D848", /* missing slash */
		"16:B374D848",
		"16/",
		"/B374D848",
		"16/B374D848x", /* trailing junk */
		"16/B374D848 ",
		"16/B374D848\n",
		"16/B374D848/0",
		"16//B374D848",
		"G/0",
		"16/B374D84G",
		"xyz",
	};

	(void)state;
	expect_rejected(bad, (int)(sizeof(bad) / sizeof(bad[0])));
}

static void test_parse_lsn_strict(void **state)
{
	/* What pg_lsn itself rejects: 1 to 8 hex digits each side, nothing else. scanf-style
	 * parsing lets these through (and truncates the over-long ones). */
	static const char *const bad[] = {
		" 16/B374D848",	 "16/ B374D848", "+16/B374D848", "16/+B374D848", "-1/0",	"0/-1",
		"0x16/B374D848", "16/0xB374D8",	 "123456789/0",	 "0/123456789",	 "100000000/0", "0/1FFFFFFFF",
	};

	(void)state;
	expect_rejected(bad, (int)(sizeof(bad) / sizeof(bad[0])));
}

/* ---- lagclock_add and lagclock_lag_ms ---- */

static void test_lag_empty_clock(void **state)
{
	lagclock_t *c = clock_new();

	(void)state;
	expect_lag(c, 0, 0, 0);
	expect_lag(c, 1e9, 0x16B374D848ull, 0);
	free(c);
}

static void test_lag_caught_up(void **state)
{
	/* The primary writes 1 MB a second; the standby replays each position as it appears. */
	lagclock_t *c = clock_new();

	(void)state;
	for (int i = 0; i <= 100; i++) {
		double t = 1000.0 * i;
		uint64_t lsn = 0x100000000ull + (uint64_t)i * MB;

		lagclock_add(c, t, lsn);
		expect_lag(c, t, lsn, 0);
		expect_lag(c, t + 999, lsn, 0);
		/* The standby was sampled a moment later and is already further on. */
		expect_lag(c, t + 10, lsn + 4096, 0);
	}
	free(c);
}

static void test_lag_replay_paused(void **state)
{
	/* Replay paused at the position the primary had at 3 s; the primary writes on. The lag
	 * is the age of the first position beyond it (seen at 4 s) and grows with the clock,
	 * between samples too. */
	lagclock_t *c = clock_new();
	const uint64_t base = 0x16B374D848ull;
	const uint64_t paused = base + 3 * MB;

	(void)state;
	for (int i = 0; i <= 3; i++)
		lagclock_add(c, 1000.0 * i, base + (uint64_t)i * MB);
	expect_lag(c, 3000, paused, 0);
	expect_lag(c, 3900, paused, 0); /* nothing newer seen yet */
	for (int i = 4; i <= 60; i++) {
		double t = 1000.0 * i;

		lagclock_add(c, t, base + (uint64_t)i * MB);
		expect_lag(c, t, paused, t - 4000);
		expect_lag(c, t + 500, paused, t + 500 - 4000);
	}
	expect_lag(c, 60000, paused, 56000);
	/* Paused halfway between two samples: the first position beyond is still the 4 s one. */
	expect_lag(c, 60000, paused + MB / 2, 56000);
	/* Replay resumed: the lag falls to the age of what is left, then to nothing. */
	expect_lag(c, 60000, base + 30 * MB, 60000 - 31000);
	expect_lag(c, 60000, base + 59 * MB, 0);
	expect_lag(c, 60000, base + 60 * MB, 0);
	free(c);
}

static void test_lag_primary_idle(void **state)
{
	/* Nothing written for an hour and the standby has it all: no lag however long, where
	 * now() - pg_last_xact_replay_timestamp() would read an hour. */
	lagclock_t *c = clock_new();
	const uint64_t lsn = 0x16B374D848ull;

	(void)state;
	lagclock_add(c, 0, lsn);
	for (int i = 1; i <= 3600; i++) {
		lagclock_add(c, 1000.0 * i, lsn);
		expect_lag(c, 1000.0 * i, lsn, 0);
	}
	expect_lag(c, 3600e3 + 999, lsn, 0);
	assert_int_equal(c->n, 1); /* repeated positions take no room */
	/* Then the primary writes and the standby does not follow: lag from that moment only. */
	lagclock_add(c, 3601e3, lsn + 8192);
	expect_lag(c, 3601e3, lsn, 0);
	expect_lag(c, 3603e3, lsn, 2000);
	free(c);
}

static void test_lag_repeated_lsn_keeps_first_sighting(void **state)
{
	lagclock_t *c = clock_new();

	(void)state;
	lagclock_add(c, 0, 100);
	lagclock_add(c, 1000, 100);
	lagclock_add(c, 2000, 100);
	expect_lag(c, 3000, 50, 3000); /* since 0, not since 2000 */
	/* A position older than the last one (a stale sample) adds nothing either. */
	lagclock_add(c, 2500, 90);
	expect_lag(c, 3000, 50, 3000);
	expect_lag(c, 3000, 95, 3000);
	expect_lag(c, 3000, 100, 0);
	lagclock_add(c, 4000, 200);
	lagclock_add(c, 5000, 200);
	expect_lag(c, 6000, 100, 2000);
	expect_lag(c, 6000, 150, 2000);
	assert_int_equal(c->n, 2);
	free(c);
}

static void test_lag_never_negative(void **state)
{
	lagclock_t *c = clock_new();

	(void)state;
	lagclock_add(c, 5000, 100);
	expect_lag(c, 4000, 0, 0); /* asked about a moment before the sample */
	expect_lag(c, 5000, 0, 0);
	expect_lag(c, 5001, 0, 1);
	free(c);
}

static void test_lag_ring_overflow(void **state)
{
	/* LAGCLOCK_SAMPLES + 10 new positions, 10 ms apart: the 10 oldest go. A standby behind
	 * all of them reads the ring's span (plus the time since the last sample), and every
	 * kept sample still answers exactly across the wrap-around. */
	const int n = LAGCLOCK_SAMPLES + 10;
	lagclock_t *c = clock_new();
	double now = 10.0 * (n - 1) + 5;

	(void)state;
	for (int i = 0; i < n; i++)
		lagclock_add(c, 10.0 * i, 0x100000000ull + 16 * (uint64_t)(i + 1));
	assert_int_equal(c->n, LAGCLOCK_SAMPLES);
	expect_lag(c, now, 0, now - 100);
	expect_lag(c, now, 0x100000000ull, now - 100);
	/* Replayed to one of the dropped positions: also the span, not the true (longer) age. */
	expect_lag(c, now, 0x100000000ull + 16 * 5, now - 100);
	for (int k = 10; k < n - 1; k++)
		expect_lag(c, now, 0x100000000ull + 16 * (uint64_t)(k + 1), now - 10.0 * (k + 1));
	expect_lag(c, now, 0x100000000ull + 16 * (uint64_t)n, 0);
	/* It keeps going: 3 more in, 3 more of the oldest out. */
	for (int i = n; i < n + 3; i++)
		lagclock_add(c, 10.0 * i, 0x100000000ull + 16 * (uint64_t)(i + 1));
	now = 10.0 * (n + 2);
	assert_int_equal(c->n, LAGCLOCK_SAMPLES);
	expect_lag(c, now, 0, now - 130);
	expect_lag(c, now, 0x100000000ull + 16 * (uint64_t)(n + 2), now - 10.0 * (n + 2));
	free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_lsn_valid),
		cmocka_unit_test(test_parse_lsn_malformed),
		cmocka_unit_test(test_parse_lsn_strict),
		cmocka_unit_test(test_lag_empty_clock),
		cmocka_unit_test(test_lag_caught_up),
		cmocka_unit_test(test_lag_replay_paused),
		cmocka_unit_test(test_lag_primary_idle),
		cmocka_unit_test(test_lag_repeated_lsn_keeps_first_sighting),
		cmocka_unit_test(test_lag_never_negative),
		cmocka_unit_test(test_lag_ring_overflow),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
