/* The pacing policy: see include/pace.h. Pure: no clock, no I/O. */
#include "pace.h"

#include <math.h>
#include <stdio.h>

void pace_init(pace_state_t *ps)
{
	ps->holding = false;
	ps->sleeping = false;
	ps->wal_sleep = false;
}

void pace_batch_sent(pace_state_t *ps)
{
	ps->wait_reason = REASON_NONE;
	ps->wal_ticketed = false;
	ps->wal_ticket = 0;
	ps->wal_rows = 0;
}

void pace_wait_began(pace_state_t *ps, reason_t reason, double began_ms)
{
	if (ps->wait_reason == REASON_NONE || ps->wait_reason == REASON_BLOCKED_SESSIONS)
		ps->wait_reason = reason;
	if (!ps->sleeping) {
		ps->sleeping = true;
		ps->sleep_began_ms = began_ms;
	}
}

throttle_input_t pace_seen(const pace_input_t *in)
{
	throttle_input_t seen = {.lag_known = in->view.known,
				 .lag_bytes = in->view.lag_bytes,
				 .lag_ms = in->view.lag_ms,
				 .replicating = in->view.replicating,
				 .hold = in->view.hold,
				 .cpu_stretch = in->view.cpu_stretch,
				 .server_idle = in->view.known && in->view.others_active == 0,
				 .runners = in->runners};

	if (seen.hold == REASON_NONE && in->autovacuum)
		seen.hold = REASON_AUTOVACUUM;
	return seen;
}

/* The log's detail of D's reason. */
static void pace_detail(pace_decision_t *d, const throttle_input_t *seen, const pace_input_t *in,
			const throttle_state_t *st)
{
	if (seen->hold == REASON_AUTOVACUUM)
		snprintf(d->detail, sizeof(d->detail), "autovacuum is processing the table");
	else if (d->current == REASON_CPU_CONTENTION)
		snprintf(d->detail, sizeof(d->detail),
			 "other sessions' CPU work takes %.2fx as long while batches run: sleeping %lld ms "
			 "after a %.0f ms batch",
			 seen->cpu_stretch, (long long)d->sleep_ms, st->last_ms);
	else
		snprintf(d->detail, sizeof(d->detail), "%s", in->view.detail);
}

#define PACE_WAL_BUDGETS 2 /* the instance's, the job's own */

/* The next batch takes its WAL from the budgets B: the keys this runner's share of every burst
 * pays for (SHARES of each), at the WAL a key is expected to write. */
static void pace_wal_ticket(pace_state_t *ps, const throttle_state_t *st, const throttle_settings_t *s,
			    walbudget_t *const *b, const int *shares, double now_ms)
{
	double per_row = st->wal_per_row * THROTTLE_WAL_MARGIN;
	int64_t rows = st->wal_known ? st->batch_size : s->min_batch_size;

	for (int i = 0; i < PACE_WAL_BUDGETS && st->wal_known; i++) {
		int64_t fits = b[i] ? walbudget_rows(b[i], per_row, shares[i]) : INT64_MAX;
		if (fits < rows)
			rows = fits;
	}
	if (rows < s->min_batch_size)
		rows = s->min_batch_size;
	ps->wal_rows = rows < st->batch_size ? rows : 0;
	ps->wal_ticket = per_row * (double)rows; /* (0 before it is measured) */
	ps->wal_due_ms = now_ms;
	for (int i = 0; i < PACE_WAL_BUDGETS; i++) {
		double due;

		/* A batch known to write nothing does not wait behind others' debt. */
		if (!b[i] || (st->wal_known && !(ps->wal_ticket > 0)))
			continue;
		walbudget_spend(b[i], ps->wal_ticket, now_ms);
		/* Fixed now: what others take later is not in it. */
		due = now_ms + (double)walbudget_wait_ms(b[i], now_ms);
		if (due > ps->wal_due_ms)
			ps->wal_due_ms = due;
	}
	ps->wal_ticketed = true;
}

/* Fold the WAL budgets into the throttle's decision T: a longer sleep, a smaller batch. */
static void pace_fold_wal(pace_state_t *ps, const throttle_state_t *st, const throttle_settings_t *s,
			  const pace_input_t *in, throttle_decision_t *t)
{
	walbudget_t *const b[PACE_WAL_BUDGETS] = {in->wal, in->job_wal};
	const int shares[PACE_WAL_BUDGETS] = {in->runners, 1};
	double so_far = ps->sleeping ? in->now_ms - ps->sleep_began_ms : 0;
	int64_t wait;
	bool on = false, waits, ends, cuts;

	for (int i = 0; i < PACE_WAL_BUDGETS; i++)
		on = on || (b[i] && walbudget_on(b[i]));
	if (!on || so_far < (double)t->sleep_ms) /* none, or the throttle's own sleep first */
		return;
	if (!ps->wal_ticketed)
		pace_wal_ticket(ps, st, s, b, shares, in->now_ms);
	wait = (int64_t)ceil(ps->wal_due_ms - in->now_ms);
	waits = wait > 0;
	ends = !waits && ps->sleeping && ps->wal_sleep;
	cuts = ps->wal_rows > 0 && (t->max_rows == 0 || ps->wal_rows < t->max_rows);
	if (cuts)
		t->max_rows = ps->wal_rows;
	if (waits)
		t->sleep_ms = (int64_t)so_far + wait;
	if (waits || ends || (cuts && t->reason == REASON_NONE))
		t->reason = REASON_WAL_BUDGET;
	ps->wal_sleep = waits;
}

pace_decision_t pace_decide(pace_state_t *ps, throttle_state_t *st, const throttle_settings_t *s,
			    const pace_input_t *in)
{
	throttle_input_t seen = pace_seen(in);
	throttle_decision_t t;
	pace_decision_t d = {.action = PACE_RUN};

	t = throttle_decide(st, s, &seen);
	if (!t.hold)
		pace_fold_wal(ps, st, s, in, &t);
	d.sleep_ms = t.sleep_ms;
	d.max_rows = t.max_rows;

	if (t.reason != REASON_NONE || st->retries == 0)
		ps->reason = t.reason;
	if (ps->contended && (ps->reason == REASON_NONE || ps->reason == REASON_APPLICATION_WRITES))
		ps->reason = REASON_BLOCKED_SESSIONS; /* the size was halved for it */
	ps->contended = false;
	d.current = ps->reason;
	pace_detail(&d, &seen, in, st);
	if ((t.hold || (t.reason != REASON_NONE && t.sleep_ms > 0)) &&
	    (ps->wait_reason == REASON_NONE || ps->wait_reason == REASON_BLOCKED_SESSIONS))
		ps->wait_reason = t.reason;
	if (ps->wait_reason != REASON_NONE)
		ps->reason = ps->wait_reason;
	d.reason = ps->reason;

	if (t.hold) {
		d.action = PACE_HOLD;
		d.wait_ms = s->sample_interval_ms;
		d.hold_reason = t.reason;
		d.hold_begins = !ps->holding;
		ps->holding = true;
		return d;
	}
	ps->holding = false;
	if (t.sleep_ms > 0) {
		double so_far;
		if (!ps->sleeping) {
			ps->sleeping = true;
			ps->sleep_began_ms = in->now_ms;
		}
		so_far = in->now_ms - ps->sleep_began_ms;
		if (so_far < (double)t.sleep_ms) {
			int64_t step = t.sleep_ms - (int64_t)so_far;
			d.action = PACE_SLEEP;
			d.wait_ms = step < s->sample_interval_ms ? step : s->sample_interval_ms;
			return d;
		}
		d.slept_ms = (int64_t)so_far;
	} else {
		d.slept_ms = ps->sleeping ? (int64_t)(in->now_ms - ps->sleep_began_ms) : 0;
	}
	ps->sleeping = false;
	return d;
}
