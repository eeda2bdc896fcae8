/*
 * The pacing policy, pure: before each batch, from what the sampler saw, the job's settings and
 * the throttle's state, whether the job runs a batch now, sleeps a step, or holds, and the reason
 * it records. The job only arms timers and logs what this decides. The throttle (throttle.h)
 * does the arithmetic: sizes, lag pressure, duty cycles, the CPU share.
 */
#ifndef BACKFILLD_PACE_H
#define BACKFILLD_PACE_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "reason.h"
#include "sampler.h"
#include "throttle.h"
#include "walbudget.h"

/* What pacing carries from one decision to the next, for one job runner. */
typedef struct pace_state {
	reason_t reason;      /* throttled_reason now: the next checkpoint records it */
	reason_t wait_reason; /* why the job waited since its last batch (REASON_NONE: it did not) */
	bool contended;	      /* the last batch made another session wait: its size was halved */
	bool holding;	      /* in a hold already announced (logged and written to the job row) */
	bool sleeping;	      /* in a throttle sleep that began at sleep_began_ms */
	bool wal_sleep;	      /* that sleep waits for the WAL budgets */
	double sleep_began_ms;
	bool wal_ticketed; /* the next batch took its WAL from the budgets (wal_ticket bytes) */
	double wal_ticket;
	int64_t wal_rows;  /* the keys that pays for (0: the batch size) */
	double wal_due_ms; /* and when the budgets let it run */
} pace_state_t;

typedef struct pace_input {
	sampler_view_t view;  /* what the sampler saw (its hold: standby_missing, logical_slot,
				 archive_backlog) */
	int runners;	      /* the job runners of this instance, which share the lag headroom */
	bool autovacuum;      /* pause_during_autovacuum, and autovacuum works on the table now */
	double now_ms;	      /* the monotonic clock */
	walbudget_t *wal;     /* the instance's WAL budget, shared by its runners (NULL: none) */
	walbudget_t *job_wal; /* the job's own (NULL: none) */
} pace_input_t;

typedef enum pace_action {
	PACE_RUN,   /* run the next batch now */
	PACE_SLEEP, /* sleep wait_ms, then decide again */
	PACE_HOLD,  /* hold: decide again after wait_ms */
} pace_action_t;

typedef struct pace_decision {
	pace_action_t action;
	int64_t wait_ms;      /* SLEEP, HOLD: decide again after this long (at most a sample interval) */
	int64_t sleep_ms;     /* the whole sleep the throttle chose (for the log) */
	int64_t slept_ms;     /* RUN: how long the sleep that ends now lasted */
	int64_t max_rows;     /* RUN: walk at most this many keys (0: the batch size) */
	reason_t reason;      /* the reason the next batch records (pace_state_t.reason) */
	reason_t current;     /* the throttle's reason now, before a wait's: what the log says */
	bool hold_begins;     /* HOLD: not announced yet: log it and write it to the job row */
	reason_t hold_reason; /* HOLD: why */
	char detail[160];     /* what the log says of the reason: the sampler's detail, or the
				   policy's own (autovacuum, the CPU share) */
} pace_decision_t;

/* What the throttle sees of IN: the lag, a hold, the CPU, whether the server is idle. */
throttle_input_t pace_seen(const pace_input_t *in);

/* A runner starts (or its hold was interrupted by a pause: announce it again). */
void pace_init(pace_state_t *ps);

/*
 * The decision before a batch. A sampler's hold, or autovacuum on the table, holds the job; then
 * the throttle decides (throttle_decide). The reason recorded: a retry keeps its own
 * (lock_timeout) until the throttle has one of its own; a batch whose size was halved because
 * others waited says blocked_sessions unless lag or the CPU share say more; and the batch after a
 * hold or a throttle sleep says why it waited, also when the cause cleared before the wait was
 * over (a duty cycle's blocked_sessions does not hide a lag wait it follows). A sleep is taken in
 * steps of at most a sample interval, deciding again after each, so a sleep chosen for lag ends
 * soon after the lag does.
 *
 * Then the WAL budgets, once the job neither holds nor sleeps for the throttle. The next batch
 * takes from every budget the WAL it is expected to write: its keys times wal_per_row with
 * THROTTLE_WAL_MARGIN, the keys cut to what its share of each burst pays for (the instance's burst
 * is shared by its runners, the job's own is the job's), never under min_batch_size; before the
 * job has measured its WAL a key, min_batch_size keys that take nothing. It sleeps as long as the
 * budgets, as they were right after it took, need to be out of debt (not at all when its batches
 * are known to write no WAL): those who took before it run
 * before it, and what others take later does not delay it (a job capped by its own budget gets it
 * beside others that are not, as long as it is no more than their shares). The ticket is kept
 * until the batch is sent (pace_batch_sent), across pace_init. The reason is wal_budget when the
 * job sleeps for the budgets, when a batch runs at the end of such a sleep, and when the budgets
 * cut the batch and nothing else has a reason. The sleep is not bounded by max_sleep_ms: the
 * budget is a limit, not a pause.
 */
pace_decision_t pace_decide(pace_state_t *ps, throttle_state_t *st, const throttle_settings_t *s,
			    const pace_input_t *in);

/* A batch was sent: the wait it records is over, and its WAL ticket is the caller's to settle
 * (read wal_ticket first). */
void pace_batch_sent(pace_state_t *ps);

/* A wait of the job's own between two batches (its VACUUM) began at BEGAN_MS, the previous batch's
 * end: the next batch records REASON as a wait of the throttle's would be recorded, and the
 * throttle's sleep before it counts from BEGAN_MS (the wait is part of it, not added to it). */
void pace_wait_began(pace_state_t *ps, reason_t reason, double began_ms);

#endif
