/* The pacing policy: see include/pace.h. Pure: no clock, no I/O. */
#include "pace.h"

#include <stdio.h>

void pace_init(pace_state_t *ps)
{
	ps->holding = false;
	ps->sleeping = false;
}

void pace_batch_sent(pace_state_t *ps)
{
	ps->wait_reason = REASON_NONE;
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

pace_decision_t pace_decide(pace_state_t *ps, throttle_state_t *st, const throttle_settings_t *s,
			    const pace_input_t *in)
{
	throttle_input_t seen = pace_seen(in);
	throttle_decision_t t;
	pace_decision_t d = {.action = PACE_RUN};

	t = throttle_decide(st, s, &seen);
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
