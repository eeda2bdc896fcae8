/*
 * Unit tests for pace.c: the decision before each batch (run, sleep a step, hold), the holds
 * announced once, sleeps taken in steps of a sample interval, the WAL budgets' waits and cuts,
 * and the reason each batch records.
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

/* ---- WAL budgets ---- */

#define WAL_RATE 1000000 /* bytes a second: a burst of 250 kB */

/* A budget of WAL_RATE owing DEBT bytes at time 0 (0: full). */
static walbudget_t budget(double debt)
{
	walbudget_t b;

	walbudget_init(&b, WAL_RATE, 0);
	if (debt > 0)
		walbudget_spend(&b, b.burst + debt, 0);
	return b;
}

/* No lag, the instance's budget B and the job's own OWN (NULL: none), at NOW_MS. */
static pace_input_t with_wal(walbudget_t *b, walbudget_t *own, double now_ms)
{
	pace_input_t in = {.view = {.known = true}, .runners = 1, .now_ms = now_ms, .wal = b, .job_wal = own};
	return in;
}

#define WAL(...) (&(pace_input_t[]){with_wal(__VA_ARGS__)}[0])

/* A job that has measured WAL_PER_ROW bytes a key. */
static fixture_t measured(double wal_per_row)
{
	fixture_t f = start();

	f.st.wal_known = true;
	f.st.wal_per_row = wal_per_row;
	return f;
}

/* A budget in debt: the next batch takes its WAL once, and the job sleeps until the budget is out
 * of debt, in steps of a sample interval, with the reason wal_budget; the batch after it says so
 * too, and walks the whole size when a burst pays for it. */
static void test_a_wal_debt_sleeps_until_it_is_paid_back(void **state)
{
	fixture_t f = measured(100); /* 1000 keys: 125 kB with the margin */
	walbudget_t b = budget(1000000);
	pace_decision_t d;

	(void)state;
	d = pace_decide(&f.ps, &f.st, &f.s, WAL(&b, NULL, 0));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.sleep_ms, 1125);
	assert_int_equal(d.wait_ms, INTERVAL_MS);
	assert_int_equal(d.reason, REASON_WAL_BUDGET);
	assert_int_equal(d.current, REASON_WAL_BUDGET);
	assert_true(f.ps.wal_ticket == 125000);
	d = pace_decide(&f.ps, &f.st, &f.s, WAL(&b, NULL, 1000)); /* taken once, not again */
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.wait_ms, 125);
	assert_int_equal(d.sleep_ms, 1125);
	d = pace_decide(&f.ps, &f.st, &f.s, WAL(&b, NULL, 1125));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.slept_ms, 1125);
	assert_int_equal(d.max_rows, 0);
	assert_int_equal(d.reason, REASON_WAL_BUDGET);
	assert_int_equal(d.current, REASON_WAL_BUDGET);
	pace_batch_sent(&f.ps);
	assert_false(f.ps.wal_ticketed);
	/* Paid back and full again: the next batch runs freely. */
	d = pace_decide(&f.ps, &f.st, &f.s, WAL(&b, NULL, 5000));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.reason, REASON_NONE);
	assert_int_equal(d.slept_ms, 0);
}

/* Batches are cut to what a burst pays for (with the margin), never under min_batch_size; before
 * the job has measured a batch it walks min_batch_size keys and takes nothing. */
static void test_the_wal_budget_cuts_the_batch(void **state)
{
	fixture_t f = start();
	walbudget_t b = budget(0);
	pace_decision_t d;

	(void)state;
	d = pace_decide(&f.ps, &f.st, &f.s, WAL(&b, NULL, 0));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.max_rows, f.s.min_batch_size);
	assert_int_equal(d.reason, REASON_WAL_BUDGET);
	assert_true(f.ps.wal_ticket == 0);
	pace_batch_sent(&f.ps);
	f = measured(1000); /* 1250 bytes a key: a burst pays for 200 keys */
	d = pace_decide(&f.ps, &f.st, &f.s, WAL(&b, NULL, 0));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.max_rows, 200);
	assert_int_equal(d.reason, REASON_WAL_BUDGET);
	assert_true(f.ps.wal_ticket == 250000);
	pace_batch_sent(&f.ps);
	f.st.wal_per_row = 100000; /* one key is more than a burst: min_batch_size, a debt */
	d = pace_decide(&f.ps, &f.st, &f.s, WAL(&b, NULL, 250)); /* 250 kB back by then */
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(f.ps.wal_rows, f.s.min_batch_size);
	assert_int_equal(d.sleep_ms, 1000);
	/* Off: nothing. */
	f = measured(1000);
	walbudget_init(&b, 0, 0);
	d = pace_decide(&f.ps, &f.st, &f.s, WAL(&b, NULL, 0));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.max_rows, 0);
	assert_int_equal(d.reason, REASON_NONE);
}

/* The instance's budget and the job's own: the batch takes from both, the smaller burst cuts it,
 * the longer debt makes it wait. */
static void test_the_tighter_of_two_budgets_wins(void **state)
{
	fixture_t f = measured(1000);
	walbudget_t instance, own = budget(500000);
	pace_decision_t d;

	(void)state;
	walbudget_init(&instance, 4 * WAL_RATE, 0);
	d = pace_decide(&f.ps, &f.st, &f.s, WAL(&instance, &own, 0));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.sleep_ms, 750); /* its own 500 kB of debt and the 250 kB it took */
	assert_int_equal(d.reason, REASON_WAL_BUDGET);
	assert_true(walbudget_level(&instance, 0) == instance.burst - 250000);
	d = pace_decide(&f.ps, &f.st, &f.s, WAL(&instance, &own, 750));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.max_rows, 200); /* the job's burst pays for 200 keys, the instance's 800 */
	assert_int_equal(d.reason, REASON_WAL_BUDGET);
}

/* Two runners on one budget: the one that took first runs first; the other's wait includes what
 * the first took, and what the first takes later does not delay it. */
static void test_runners_on_one_budget_take_turns(void **state)
{
	fixture_t first = measured(1000), second = measured(1000);
	walbudget_t b = budget(0);
	pace_decision_t d;

	(void)state;
	d = pace_decide(&first.ps, &first.st, &first.s, WAL(&b, NULL, 0));
	assert_int_equal(d.action, PACE_RUN);
	d = pace_decide(&second.ps, &second.st, &second.s, WAL(&b, NULL, 0));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.sleep_ms, 250);
	pace_batch_sent(&first.ps);
	d = pace_decide(&first.ps, &first.st, &first.s, WAL(&b, NULL, 100));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.sleep_ms, 400); /* behind the second */
	d = pace_decide(&second.ps, &second.st, &second.s, WAL(&b, NULL, 250));
	assert_int_equal(d.action, PACE_RUN);
	pace_batch_sent(&second.ps);
	d = pace_decide(&second.ps, &second.st, &second.s, WAL(&b, NULL, 260)); /* behind the first */
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.sleep_ms, 490);
	d = pace_decide(&first.ps, &first.st, &first.s, WAL(&b, NULL, 300));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.wait_ms, 200);
	d = pace_decide(&first.ps, &first.st, &first.s, WAL(&b, NULL, 500));
	assert_int_equal(d.action, PACE_RUN);
}

/* A job whose batches write no WAL (a verify job) is not held back by others' debt; one that has
 * not measured yet waits for it, with its first small batch. */
static void test_a_job_that_writes_no_wal_is_not_held_back(void **state)
{
	fixture_t f = measured(0);
	walbudget_t b = budget(1000000);
	pace_decision_t d;

	(void)state;
	d = pace_decide(&f.ps, &f.st, &f.s, WAL(&b, NULL, 0));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.max_rows, 0);
	assert_int_equal(d.reason, REASON_NONE);
	f = start();
	d = pace_decide(&f.ps, &f.st, &f.s, WAL(&b, NULL, 0));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.sleep_ms, 1000);
	assert_int_equal(d.reason, REASON_WAL_BUDGET);
}

/* The throttle's own sleep comes first (its reason, and no WAL taken meanwhile); a wait for the
 * budgets after it says wal_budget now, while the batch records the first wait; a hold wins over
 * both; a lag cut keeps its reason when the budget cuts more. */
static void test_the_throttle_sleeps_first(void **state)
{
	fixture_t f = start();
	walbudget_t b = budget(10000000); /* 10 s of debt */
	pace_input_t in = with_wal(&b, NULL, 0);
	pace_decision_t d;

	(void)state;
	in.view = at(0.75, 0).view; /* a lag sleep of 5 s */
	d = pace_decide(&f.ps, &f.st, &f.s, &in);
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.sleep_ms, 5000);
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);
	assert_false(f.ps.wal_ticketed);
	in.now_ms = 5000; /* the lag sleep is over; 5 s of debt are left */
	d = pace_decide(&f.ps, &f.st, &f.s, &in);
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.sleep_ms, 10000);
	assert_int_equal(d.current, REASON_WAL_BUDGET);
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);
	in.view.hold = REASON_STANDBY_MISSING;
	d = pace_decide(&f.ps, &f.st, &f.s, &in);
	assert_int_equal(d.action, PACE_HOLD);
	assert_int_equal(d.hold_reason, REASON_STANDBY_MISSING);

	f = measured(100); /* a burst pays for 2000 keys, lag's headroom of 0.4 MB for 3200 */
	f.st.batch_size = 5000;
	f.s.max_sleep_ms = 0; /* no lag sleep: only the cut */
	b = budget(0);
	in = with_wal(&b, NULL, 0);
	in.view = at(0.6, 0).view;
	d = pace_decide(&f.ps, &f.st, &f.s, &in);
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.max_rows, 2000);
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);
	pace_batch_sent(&f.ps);
	in.view = at(0.9, 0).view; /* headroom for 0.1 MB: 800 keys */
	in.now_ms = 1000;
	d = pace_decide(&f.ps, &f.st, &f.s, &in);
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.max_rows, 800);
	assert_int_equal(d.reason, REASON_REPLICATION_LAG);
}

/* A VACUUM between two batches (from 1000, the previous batch's end): the batch after it records
 * vacuum, and a throttle's sleep counts from 1000 rather than from the VACUUM's end. */
static void test_a_wait_of_its_own_is_part_of_the_sleep(void **state)
{
	fixture_t f = start();
	pace_decision_t d;

	(void)state;
	pace_wait_began(&f.ps, REASON_VACUUM, 1000);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.1, 1200));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.slept_ms, 200);
	assert_int_equal(d.reason, REASON_VACUUM);
	assert_int_equal(d.current, REASON_NONE);
	pace_batch_sent(&f.ps);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.1, 1300));
	assert_int_equal(d.reason, REASON_NONE);
	/* Lag asks for 5 s of sleep: 3 s of it went by in the VACUUM. */
	pace_wait_began(&f.ps, REASON_VACUUM, 2000);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 5000));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.sleep_ms, 5000);
	assert_int_equal(d.reason, REASON_VACUUM); /* the first wait is the one recorded */
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 6500));
	assert_int_equal(d.action, PACE_SLEEP);
	assert_int_equal(d.wait_ms, 500);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 7000));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.slept_ms, 5000);
	/* A sleep of the throttle's already under way keeps its start; a wait already recorded (lag)
	 * stays the one the batch records. */
	pace_batch_sent(&f.ps);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 8000));
	assert_int_equal(d.action, PACE_SLEEP);
	pace_wait_began(&f.ps, REASON_VACUUM, 8500);
	d = pace_decide(&f.ps, &f.st, &f.s, IN(0.75, 13000));
	assert_int_equal(d.action, PACE_RUN);
	assert_int_equal(d.slept_ms, 5000);
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
		cmocka_unit_test(test_a_wal_debt_sleeps_until_it_is_paid_back),
		cmocka_unit_test(test_the_wal_budget_cuts_the_batch),
		cmocka_unit_test(test_the_tighter_of_two_budgets_wins),
		cmocka_unit_test(test_runners_on_one_budget_take_turns),
		cmocka_unit_test(test_a_job_that_writes_no_wal_is_not_held_back),
		cmocka_unit_test(test_the_throttle_sleeps_first),
		cmocka_unit_test(test_a_wait_of_its_own_is_part_of_the_sleep),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
