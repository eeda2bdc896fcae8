/*
 * Unit tests for pace.c: the decision before each batch (run, sleep a step, hold), the holds
 * announced once, sleeps taken in steps of a sample interval, and the reason each batch records.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "pace.h"

#define LAG_BYTES 1000000
#define INTERVAL_MS 1000

static char *no_standbys[] = {NULL};

static throttle_settings_t settings(void)
{
	throttle_settings_t s = {
		.batch_size = 1000,
		.min_batch_size = 10,
		.max_batch_size = 100000,
		.target_batch_ms = 1000,
		.sleep_ms = 0,
		.max_sleep_ms = 10000,
		.max_replication_lag_bytes = LAG_BYTES,
		.max_replication_lag_ms = 10000,
		.max_blocked_ms = 5000,
		.lock_timeout_ms = 2000,
		.statement_timeout_ms = 30000,
		.sample_interval_ms = INTERVAL_MS,
		.standbys = no_standbys,
	};
	return s;
}

/* Lag at PRESSURE times the byte limit, seen at NOW_MS. */
static pace_input_t at(double pressure, double now_ms)
{
	pace_input_t in = {
		.view = {.known = true, .replicating = true, .lag_bytes = (int64_t)(pressure * LAG_BYTES)},
		.runners = 1,
		.now_ms = now_ms};
	return in;
}

/* A pointer to the input of at(), for pace_decide. */
#define IN(...) (&(pace_input_t[]){at(__VA_ARGS__)}[0])

typedef struct fixture {
	pace_state_t ps;
	throttle_state_t st;
	throttle_settings_t s;
} fixture_t;

static fixture_t start(void)
{
	fixture_t f = {.s = settings()};
	throttle_init(&f.st, &f.s);
	pace_init(&f.ps);
	return f;
}

static void test_free_runs_at_once(void **state)
{
	fixture_t f = start();
	pace_decision_t d;

	(void)state;
	d = pace_decide(&f.ps, &f.st, &f.s, &(pace_input_t){.now_ms = 5});
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.reason, REASON_NONE);
	assert_int_equal(d.current, REASON_NONE);
	assert_int_equal(d.slept_ms, 0);
	assert_int_equal(d.max_rows, 0);
}

/* Lag at 0.75 of the limit: half of max_sleep, taken a sample interval at a time; the lag clears
 * after two steps and the batch runs then, recording the wait and its length. */
static void test_a_lag_sleep_is_taken_in_steps_and_ends_with_the_lag(void **state)
{
	fixture_t f = start();
	pace_decision_t d;

	(void)state;
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 1000));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.sleep_ms, 5000);
	assert_int_equal(d.wait_ms, INTERVAL_MS);
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 2000));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.wait_ms, INTERVAL_MS);
	/* The last step is what is left of the sleep. */
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 5500));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.wait_ms, 500);
	/* Cleared: it runs, and says why it waited although the throttle has no reason now. */
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.1, 5800));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.slept_ms, 4800);
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);
	assert_int_equal(d.current, REASON_NONE);
	/* The batch that recorded the wait was sent: the next one runs freely. */
	pace_batch_sent(&f.ps);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.1, 9000));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.reason, REASON_NONE);
	assert_int_equal(d.slept_ms, 0);
}

/* A whole sleep: the batch runs once its time is up, with the time it slept. */
static void test_a_sleep_that_is_over_runs(void **state)
{
	fixture_t f = start();
	pace_decision_t d;

	(void)state;
	f.s.sample_interval_ms = 60000;
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 0));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.wait_ms, 5000);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 5001));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.slept_ms, 5001);
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);
}

/* A sampler's hold is announced once (logged, written to the job row), decided again every sample
 * interval, and announced again after pace_init (a pause interrupted it). */
static void test_a_hold_is_announced_once(void **state)
{
	fixture_t f = start();
	pace_input_t in = {.view = {.known = true, .hold = REASON_STANDBY_MISSING}, .now_ms = 0};
	pace_decision_t d;

	(void)state;
	d = pace_decide(&f.ps, &f.st, &f.s, &in);
	assert_int_equal(d.action, PACE_HOLD);
	assert_true(d.hold_begins);
	assert_int_equal(d.hold_reason, REASON_STANDBY_MISSING);
	assert_int_equal(d.wait_ms, INTERVAL_MS);
	d = pace_decide(&f.ps, &f.st, &f.s, &in);
	assert_int_equal(d.action, PACE_HOLD);
	assert_false(d.hold_begins);
	pace_init(&f.ps);
	d = pace_decide(&f.ps, &f.st, &f.s, &in);
	assert_true(d.hold_begins);
	/* Released: the batch after it says why it waited. */
	in.view.hold = REASON_NONE;
	d = pace_decide(&f.ps, &f.st, &f.s, &in);
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.reason, REASON_STANDBY_MISSING);
	/* A new hold after a run is a new announcement. */
	pace_batch_sent(&f.ps);
	in.view.hold = REASON_LOGICAL_SLOT;
	d = pace_decide(&f.ps, &f.st, &f.s, &in);
	assert_true(d.hold_begins);
	assert_int_equal(d.hold_reason, REASON_LOGICAL_SLOT);
}

/* Autovacuum on the table holds the job; a sampler's hold says more and wins. */
static void test_autovacuum_holds_unless_the_sampler_does(void **state)
{
	fixture_t f = start();
	pace_input_t in = {.autovacuum = true};
	throttle_input_t seen;
	pace_decision_t d;

	(void)state;
	d = pace_decide(&f.ps, &f.st, &f.s, &in);
	assert_int_equal(d.action, PACE_HOLD);
	assert_int_equal(d.hold_reason, REASON_AUTOVACUUM);
	in.view.hold = REASON_LOGICAL_SLOT;
	d = pace_decide(&f.ps, &f.st, &f.s, &in);
	assert_int_equal(d.hold_reason, REASON_LOGICAL_SLOT);
	seen = pace_seen(&in);
	assert_int_equal(seen.hold, REASON_LOGICAL_SLOT);
}

/* What the throttle sees of the sampler's view. */
static void test_what_the_throttle_sees(void **state)
{
	pace_input_t in = {
		.view = {.known = true, .lag_bytes = 5, .lag_ms = 7, .cpu_stretch = 1.5, .others_active = 0},
		.runners = 3};
	throttle_input_t seen;

	(void)state;
	seen = pace_seen(&in);
	assert_true(seen.lag_known);
	assert_int_equal(seen.lag_bytes, 5);
	assert_int_equal(seen.lag_ms, 7);
	assert_true(seen.cpu_stretch == 1.5);
	assert_true(seen.server_idle);
	assert_int_equal(seen.runners, 3);
	assert_int_equal(seen.hold, REASON_NONE);
	in.view.others_active = 2;
	assert_false(pace_seen(&in).server_idle);
	in.view.others_active = 0;
	in.view.known = false; /* no sample: not known to be idle */
	assert_false(pace_seen(&in).server_idle);
	in.autovacuum = true;
	assert_int_equal(pace_seen(&in).hold, REASON_AUTOVACUUM);
}

/* A retry keeps its own reason until the throttle has one; a fresh batch drops it. */
static void test_a_retry_keeps_lock_timeout(void **state)
{
	fixture_t f = start();
	pace_decision_t d;

	(void)state;
	f.ps.reason = REASON_LOCK_TIMEOUT;
	f.st.retries = 1;
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0, 0));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.reason, REASON_LOCK_TIMEOUT);
	/* Lag says more. */
	pace_batch_sent(&f.ps);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 0));
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);
	/* The retried batch committed (retries back to 0): no reason left. */
	f = start();
	f.ps.reason = REASON_LOCK_TIMEOUT;
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0, 0));
	assert_int_equal(d.reason, REASON_NONE);
}

/* A batch whose size was halved because others waited records blocked_sessions, once; lag that
 * makes it sleep says more. */
static void test_contention_records_blocked_sessions(void **state)
{
	fixture_t f = start();
	pace_decision_t d;

	(void)state;
	f.ps.contended = true;
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0, 0));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.reason, REASON_BLOCKED_SESSIONS);
	assert_int_equal(d.current, REASON_BLOCKED_SESSIONS);
	assert_false(f.ps.contended);
	pace_batch_sent(&f.ps);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0, 0));
	assert_int_equal(d.reason, REASON_NONE);
	f.ps.contended = true;
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 0));
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);
}

/* A duty cycle's sleep (blocked_sessions) that follows a lag wait does not hide it; a lag wait
 * that follows a duty cycle's does. */
static void test_a_duty_cycle_does_not_hide_a_lag_wait(void **state)
{
	fixture_t f = start();
	pace_decision_t d;

	(void)state;
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 0));
	assert_int_equal(d.action, PACE_SLEEP);
	/* The lag clears, and a duty cycle after contention asks for 1 s more. */
	f.st.calm = 0;
	f.st.idle = 2;
	f.st.last_ms = 500;
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0, 100));
	assert_int_equal(d.current, REASON_BLOCKED_SESSIONS);
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);

	f = start();
	f.st.calm = 0;
	f.st.idle = 2;
	f.st.last_ms = 500;
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0, 0));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.reason, REASON_BLOCKED_SESSIONS);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 100));
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);
}

/* Lag over the limit holds (until it is back under half); the WAL headroom limits the keys. */
static void test_lag_over_the_limit_holds(void **state)
{
	fixture_t f = start();
	pace_decision_t d;

	(void)state;
	d = pace_decide(&f.ps, &f.st, &f.s, IN(1.2, 0));
	assert_int_equal(d.action, PACE_HOLD);
	assert_int_equal(d.hold_reason, REASON_REPLICATION_LAG);
	assert_true(d.hold_begins);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.6, 1000));
	assert_int_equal(d.action, PACE_HOLD);
	assert_false(d.hold_begins);
	f.st.wal_per_row = 1000; /* 0.6 of 1 MB left: at most 600 keys' WAL, under the size of 1000 */
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.4, 2000));
	assert_int_equal(d.action, PACE_RUN);
	assert_true(d.max_rows >= f.s.min_batch_size && d.max_rows <= 600);
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_free_runs_at_once),
		cmocka_unit_test(test_a_lag_sleep_is_taken_in_steps_and_ends_with_the_lag),
		cmocka_unit_test(test_a_sleep_that_is_over_runs),
		cmocka_unit_test(test_a_hold_is_announced_once),
		cmocka_unit_test(test_autovacuum_holds_unless_the_sampler_does),
		cmocka_unit_test(test_a_retry_keeps_lock_timeout),
		cmocka_unit_test(test_contention_records_blocked_sessions),
		cmocka_unit_test(test_a_duty_cycle_does_not_hide_a_lag_wait),
		cmocka_unit_test(test_lag_over_the_limit_holds),
		cmocka_unit_test(test_what_the_throttle_sees),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
