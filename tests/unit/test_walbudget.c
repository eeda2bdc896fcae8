/*
 * Unit tests for walbudget.c: the token bucket (refill, burst, debt, the wait until it is out of
 * debt, the keys a burst pays for, reloads), and a simulation of runners sharing budgets as the
 * jobs do (take a batch's expected WAL, wait until the budgets as they were then are out of debt,
 * run, settle with the WAL written) that checks what docs/throttle.md argues: no 4-s window over 1.2 times the rate,
 * an average of at least 0.8 times it, and a job's own budget honoured within the instance's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>
#include <math.h>

#include "throttle.h"
#include "walbudget.h"

#define RATE 2000000 /* bytes a second */
#define BURST (RATE * WALBUDGET_BURST_S)

static void assert_near(double got, double want)
{
	if (got < want - 0.5 || got > want + 0.5)
		fail_msg("got %.3f, want %.3f", got, want);
}

/* Full at the start; fills at the rate, never past the burst; a clock that goes back adds
 * nothing. */
static void test_it_fills_at_its_rate_up_to_the_burst(void **state)
{
	walbudget_t b;

	(void)state;
	walbudget_init(&b, RATE, 1000);
	assert_true(walbudget_on(&b));
	assert_near(walbudget_level(&b, 1000), BURST);
	walbudget_spend(&b, BURST, 1000);
	assert_near(walbudget_level(&b, 1000), 0);
	assert_near(walbudget_level(&b, 1100), RATE / 10.0);
	assert_near(walbudget_level(&b, 900), 0);
	assert_near(walbudget_level(&b, 1000 + 1000 * WALBUDGET_BURST_S), BURST);
	assert_near(walbudget_level(&b, 60000), BURST);
}

/* A debt is paid back by the wait; whoever takes after it waits for its debt too (first come,
 * first served). */
static void test_a_debt_is_paid_back_by_the_wait(void **state)
{
	walbudget_t b;

	(void)state;
	walbudget_init(&b, RATE, 0);
	assert_int_equal(walbudget_wait_ms(&b, 0), 0);
	walbudget_spend(&b, BURST, 0);
	assert_int_equal(walbudget_wait_ms(&b, 0), 0); /* empty is not a debt */
	walbudget_spend(&b, 1000000, 0);	       /* 1 MB more than it held */
	assert_near(walbudget_level(&b, 0), -1000000);
	assert_int_equal(walbudget_wait_ms(&b, 0), 500);
	walbudget_spend(&b, 200000, 100); /* the next in line */
	assert_int_equal(walbudget_wait_ms(&b, 100), 400 + 100);
	assert_int_equal(walbudget_wait_ms(&b, 500), 100);
	assert_int_equal(walbudget_wait_ms(&b, 600), 0);
	assert_near(walbudget_level(&b, 600), 0);
}

/* A refund (a batch that wrote less than it took) gives back, but never past the burst. */
static void test_a_refund_stops_at_the_burst(void **state)
{
	walbudget_t b;

	(void)state;
	walbudget_init(&b, RATE, 0);
	walbudget_spend(&b, 300000, 0);
	walbudget_spend(&b, -100000, 10);
	assert_near(walbudget_level(&b, 10), BURST - 300000 + 100000 + RATE / 100.0);
	walbudget_spend(&b, -10 * BURST, 20);
	assert_near(walbudget_level(&b, 20), BURST);
}

/* The keys a share of one burst pays for; no limit when off or unmeasured. */
static void test_the_keys_a_burst_pays_for(void **state)
{
	walbudget_t b;

	(void)state;
	walbudget_init(&b, RATE, 0);
	assert_int_equal(walbudget_rows(&b, 1000, 1), (int64_t)(BURST / 1000));
	assert_int_equal(walbudget_rows(&b, 1000, 0), (int64_t)(BURST / 1000));
	assert_int_equal(walbudget_rows(&b, 1000, 4), (int64_t)(BURST / 4000));
	assert_int_equal(walbudget_rows(&b, 3000, 1), (int64_t)(BURST / 3000));
	assert_int_equal(walbudget_rows(&b, 10 * BURST, 1), 0);
	assert_int_equal(walbudget_rows(&b, 0, 1), INT64_MAX);
	walbudget_init(&b, 0, 0);
	assert_int_equal(walbudget_rows(&b, 1000, 1), INT64_MAX);
}

/* Off: no wait, no limit, spending does nothing. */
static void test_off_limits_nothing(void **state)
{
	walbudget_t b;

	(void)state;
	walbudget_init(&b, 0, 0);
	assert_false(walbudget_on(&b));
	walbudget_spend(&b, 1e12, 0);
	assert_int_equal(walbudget_wait_ms(&b, 0), 0);
	walbudget_init(&b, -5, 0);
	assert_false(walbudget_on(&b));
}

/* A reload: a debt is kept and paid at the new rate, a level is kept within the new burst; off
 * and on again starts full. */
static void test_a_new_rate_keeps_the_debt(void **state)
{
	walbudget_t b;

	(void)state;
	walbudget_init(&b, RATE, 0);
	walbudget_spend(&b, BURST + 400000, 0); /* 400 kB of debt */
	walbudget_set_rate(&b, RATE / 2, 100);	/* 200 kB paid back at the old rate by then */
	assert_near(walbudget_level(&b, 100), -200000);
	assert_near(b.burst, BURST / 2);
	assert_int_equal(walbudget_wait_ms(&b, 100), 200); /* at 1 MB/s */
	walbudget_set_rate(&b, RATE * 4, 300);		   /* out of debt: kept under the larger burst */
	assert_near(walbudget_level(&b, 300), 0);
	assert_near(walbudget_level(&b, 400), RATE * 4 / 10.0);
	walbudget_set_rate(&b, RATE / 4, 10000); /* full at the old burst: cut to the new one */
	assert_near(walbudget_level(&b, 10000), BURST / 4);
	walbudget_set_rate(&b, 0, 11000);
	assert_false(walbudget_on(&b));
	assert_int_equal(walbudget_wait_ms(&b, 11000), 0);
	walbudget_set_rate(&b, RATE, 12000);
	assert_near(walbudget_level(&b, 12000), BURST);
}

/* ---- runners sharing budgets, as the jobs do ---- */

#define SIM_MS 60000
#define SIM_WINDOW_MS 4000
#define SIM_RUNNERS 4

typedef struct runner {
	throttle_state_t st; /* its measured WAL per key (throttle_after_wal), its rate */
	walbudget_t own;     /* its job's own budget (off: none) */
	double next_ms;	     /* when it decides again, or its batch ends */
	bool ticketed;	     /* it took its next batch's WAL */
	double due_ms;	     /* and may send it then */
	bool in_batch;
	double ticket;	  /* what it took */
	int64_t rows;	  /* the keys its next batch, or the batch in flight, walks */
	double wal;	  /* what the batch in flight writes */
	double written;	  /* and has written so far */
	double start_ms;  /* when it began */
	double total_wal; /* all it wrote */
} runner_t;

typedef struct sim {
	int runners;
	int64_t own_rate;    /* runner 0's own budget (0: none) */
	double per_row;	     /* the WAL a key really writes */
	double speed;	     /* bytes a second a batch writes while it runs */
	double overhead_ms;  /* a batch's round trips and checkpoint */
	int spike_every;     /* every so many batches writes twice its WAL a key (0: never) */
	int64_t batch_size;  /* what the throttle would walk */
	int64_t min_rows;    /* min_batch_size */
	double wake_late_ms; /* timers fire up to this late */
} sim_t;

static uint64_t sim_seed = 88172645463325252ULL;

static double sim_random(void) /* [0, 1) */
{
	sim_seed ^= sim_seed << 13;
	sim_seed ^= sim_seed >> 7;
	sim_seed ^= sim_seed << 17;
	return (double)(sim_seed >> 11) / 9007199254740992.0;
}

/* Its next batch: the keys every budget's burst pays for (min_rows before it has measured), and
 * what it takes from them. */
static void sim_ticket(const sim_t *s, walbudget_t *b[2], runner_t *r, double now)
{
	double per_row = r->st.wal_per_row * THROTTLE_WAL_MARGIN;
	bool measured = r->st.wal_known;
	int64_t rows = measured ? s->batch_size : s->min_rows;

	for (int i = 0; i < 2 && measured; i++) {
		int64_t fits = walbudget_rows(b[i], per_row, i == 0 ? s->runners : 1);
		rows = fits < rows ? fits : rows;
	}
	r->rows = rows < s->min_rows ? s->min_rows : rows;
	r->ticket = measured ? per_row * (double)r->rows : 0;
	r->due_ms = now;
	for (int i = 0; i < 2; i++) {
		walbudget_spend(b[i], r->ticket, now);
		r->due_ms = fmax(r->due_ms, now + (double)walbudget_wait_ms(b[i], now));
	}
	r->ticketed = true;
}

/* A runner decides at NOW: take its next batch's WAL, wait until it is due, or send the batch. */
static void sim_decide(const sim_t *s, walbudget_t *b[2], runner_t *r, double now, int *batches)
{
	bool spike;

	if (!r->ticketed)
		sim_ticket(s, b, r, now);
	if (r->due_ms > now) {
		r->next_ms = r->due_ms + s->wake_late_ms * sim_random();
		return;
	}
	spike = s->spike_every > 0 && ++*batches % s->spike_every == 0;
	r->ticketed = false;
	r->wal = (double)r->rows * s->per_row * (spike ? 2 : 1);
	r->written = 0;
	r->in_batch = true;
	r->start_ms = now;
	r->next_ms = now + s->overhead_ms + r->wal / s->speed * 1000.0;
}

/* Millisecond T for runner R: it writes its batch's WAL evenly while it runs (into WAL[T]), and
 * settles and decides again when it is due. */
static void sim_step(const sim_t *s, walbudget_t *b[2], runner_t *r, int t, double *wal, int *batches)
{
	if (r->in_batch) {
		double len = r->next_ms - r->start_ms;
		double share = r->wal / (len > 1 ? len : 1);
		share = share < r->wal - r->written ? share : r->wal - r->written;
		*wal += share;
		r->written += share;
	}
	if (r->next_ms > (double)t)
		return;
	if (r->in_batch) {
		*wal += r->wal - r->written;
		r->in_batch = false;
		r->total_wal += r->wal;
		for (int i = 0; i < 2; i++)
			walbudget_spend(b[i], r->wal - r->ticket, t);
		throttle_after_wal(&r->st, r->rows, (int64_t)r->wal);
	}
	sim_decide(s, b, r, t, batches);
}

/* The worst 4-s window of WAL[0..SIM_MS), as a multiple of RATE. */
static double sim_worst(const double *wal)
{
	double sum = 0, worst = 0;

	for (int t = 0; t < SIM_MS; t++) {
		sum += wal[t];
		if (t >= SIM_WINDOW_MS)
			sum -= wal[t - SIM_WINDOW_MS];
		if (t >= SIM_WINDOW_MS - 1 && sum > worst)
			worst = sum;
	}
	return worst / (SIM_WINDOW_MS / 1000.0) / RATE;
}

/* Run S for SIM_MS: the worst 4-s window and the average rate of all, and runner 0's average, as
 * multiples of RATE. Budget 0 is the instance's, shared by the runners; 1 is a runner's own. */
static void sim_run(const sim_t *s, double *worst, double *average, double *first)
{
	static double wal[SIM_MS];
	static runner_t r[SIM_RUNNERS];
	walbudget_t instance;
	int batches = 0;
	double total = 0;

	assert_true(s->runners <= SIM_RUNNERS);
	walbudget_init(&instance, RATE, 0);
	for (int i = 0; i < s->runners; i++) {
		r[i] = (runner_t){0};
		walbudget_init(&r[i].own, i == 0 ? s->own_rate : 0, 0);
	}
	for (int t = 0; t < SIM_MS; t++) {
		wal[t] = 0;
		for (int i = 0; i < s->runners; i++)
			sim_step(s, (walbudget_t *[2]){&instance, &r[i].own}, &r[i], t, &wal[t], &batches);
		total += wal[t];
	}
	*worst = sim_worst(wal);
	*average = total / (SIM_MS / 1000.0) / RATE;
	*first = r[0].total_wal / (SIM_MS / 1000.0) / RATE;
}

static void sim_check(const sim_t *s)
{
	double worst, average, first;

	sim_run(s, &worst, &average, &first);
	print_message("%d runner(s)%s, %.0f B a key, %.0f MB/s while running, spikes every %d: worst "
		      "4-s window %.3fx, average %.3fx (runner 0: %.3fx)\n",
		      s->runners, s->own_rate ? ", runner 0 capped" : "", s->per_row, s->speed / 1e6,
		      s->spike_every, worst, average, first);
	assert_true(worst <= 1.2);
	assert_true(average >= 0.8);
	if (s->own_rate > 0) /* its own budget, and no more; the others' shares if that is less */
		assert_true(first >= 0.8 * fmin((double)s->own_rate / RATE, 1.0 / s->runners) &&
			    first <= 1.01 * (double)s->own_rate / RATE);
	else /* a fair share */
		assert_true(first >= 0.8 / s->runners);
}

/* One, two and four runners; batches much smaller than a burst (which spend a full bucket at
 * once), and of any size cut to a share of a burst; WAL a key that doubles for a batch now and
 * then (full-page images after a checkpoint); slow batches; late timers; a runner with a budget
 * of its own. */
static void test_runners_sharing_a_budget_stay_within_it(void **state)
{
	sim_t s = {.runners = 1,
		   .per_row = 1100,
		   .speed = 20e6,
		   .overhead_ms = 5,
		   .batch_size = 50,
		   .min_rows = 10,
		   .wake_late_ms = 3};

	(void)state;
	sim_check(&s);
	s.batch_size = 100000;
	sim_check(&s);
	s.runners = 2;
	sim_check(&s);
	s.runners = 4;
	s.spike_every = 7;
	sim_check(&s);
	s.runners = 2;
	s.own_rate = RATE / 4;
	sim_check(&s);
	s.own_rate = 0;
	s.speed = 4e6; /* a batch writes only twice as fast as the budget */
	s.overhead_ms = 30;
	sim_check(&s);
	s.per_row = 300000; /* a key worth more than a share of a burst: min_rows a batch, in debt */
	s.min_rows = 1;
	s.speed = 20e6;
	sim_check(&s);
	s.runners = 4;
	s.own_rate = RATE / 5; /* 4 runners: under its share of the instance's, it gets it */
	s.per_row = 1100;
	s.min_rows = 10;
	sim_check(&s);
	s.runners = 2;
	s.own_rate = 0;
	s.per_row = 200; /* small batches (the throttle's size) under what a burst pays for */
	s.batch_size = 300;
	s.spike_every = 0;
	sim_check(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_it_fills_at_its_rate_up_to_the_burst),
		cmocka_unit_test(test_a_debt_is_paid_back_by_the_wait),
		cmocka_unit_test(test_a_refund_stops_at_the_burst),
		cmocka_unit_test(test_the_keys_a_burst_pays_for),
		cmocka_unit_test(test_off_limits_nothing),
		cmocka_unit_test(test_a_new_rate_keeps_the_debt),
		cmocka_unit_test(test_runners_sharing_a_budget_stay_within_it),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
