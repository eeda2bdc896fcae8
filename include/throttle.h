/*
 * The throttle controller: pure arithmetic over plain structs, no I/O. After each batch it
 * moves the batch size toward target_batch_ms; before each batch it turns what the sampler
 * saw (replication lag, holds) into a sleep, or a hold, with a reason. The formulas, and why
 * they are what they are: docs/throttle.md, "The controller's arithmetic".
 */
#ifndef BACKFILLD_THROTTLE_H
#define BACKFILLD_THROTTLE_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "reason.h"

typedef struct throttle_state {
	int64_t batch_size; /* the size the next batch will use */
	int64_t sleep_ms;   /* the pause before the next batch */
	int retries;	    /* consecutive retried batches */
	double rate;	    /* smoothed keys walked per millisecond; 0 until measured */
	bool lag_hold;	    /* held for lag until it is back under half the limit */
	int64_t ceiling;    /* after contention: the most the size may grow to (0: no ceiling) */
	int calm;	    /* batches since the last one that made another session wait */
	double last_ms;	    /* the last committed batch's duration */
	double idle;	    /* in a duty cycle: sleep this many times last_ms (0: none) */
	double waits;	    /* sessions that waited on the job's batches, fading (throttle_after_waiters) */
	double exposure;    /* rows x ms the batches held their row locks, fading the same way */
	int64_t cap;	    /* the size that keeps those waits under THROTTLE_WAITS_PER_S (0: none) */
	int64_t last_sleep; /* the sleep throttle_decide chose before the batch */
	bool app_watch;	    /* the job measures the application's writes (throttle_after_app) */
	double app_writes;  /* the application's row writes to the target, fading over
			       THROTTLE_APP_MEMORY_MS (an application that arrives is seen soon) */
	double app_ms;	    /* the time they were counted over, fading the same way */
	double app_seen_ms; /* all the time measured so far, not fading */
	double prior;	    /* the k those writes predict (0: none) */
	double expected;    /* the waits the prior predicted for the batches since, fading like waits */
	bool capped;	    /* the last batch size was held under what the target asked by the cap */
	double wal_per_row; /* WAL bytes a walked key writes, smoothed (0: not measured) */
	int cpu_hot;	    /* batches left in the CPU-contention regime (throttle_decide) */
	bool wal_known;	    /* wal_per_row is measured (and may be 0: batches that write no WAL) */
} throttle_state_t;

/* What the sampler saw, for one decision. */
typedef struct throttle_input {
	bool lag_known;	    /* false: no sample yet (lag is not throttled on) */
	int64_t lag_bytes;  /* worst watched standby or slot, plus WAL written since the sample */
	int64_t lag_ms;	    /* worst watched standby, on the daemon's own clock */
	bool replicating;   /* a watched standby or slot exists: a batch's WAL adds to the lag */
	reason_t hold;	    /* a reason that holds the job outright (standby_missing, logical_slot,
			       archive_backlog, autovacuum), or REASON_NONE */
	double cpu_stretch; /* how much longer other sessions' CPU work takes while batches run, as
			       the sampler's probe measures it (0: unknown) */
	bool server_idle;   /* no other client session was at work at the latest sample */
	int runners;	    /* the job runners of this instance, which share the lag headroom */
} throttle_input_t;

typedef struct throttle_decision {
	bool hold;	  /* run no batch now; decide again after a sample interval */
	int64_t sleep_ms; /* otherwise sleep this long first */
	int64_t max_rows; /* and walk at most this many keys (0: batch_size) */
	reason_t reason;  /* REASON_NONE when running freely */
} throttle_decision_t;

/* Start a job: the configured size, clamped into [min, max]. */
void throttle_init(throttle_state_t *st, const throttle_settings_t *s);

/* Whether the job is in the CPU share's regime (the application writes the table and its CPU work
 * was stretched by the job's batches in the last THROTTLE_CPU_HOLD_BATCHES batches). */
bool throttle_cpu_contended(const throttle_state_t *st);

/*
 * A batch committed after walking ROWS keys in DURATION_MS. The size moves toward
 * target_batch_ms from the smoothed rate, growing at most x1.5 a step; a batch over twice
 * the target halves it. Always within [min, max].
 */
void throttle_after_batch(throttle_state_t *st, const throttle_settings_t *s, int64_t rows,
			  double duration_ms);

/*
 * After throttle_after_batch: another session waited WAITED_MS on the committed batch's locks.
 * A wait of a millisecond or more is contention: the next batch is halved (not below min) and
 * that size becomes a ceiling, which grows back by a tenth per batch nobody waits on, not past
 * throttle_after_waiters' cap, and goes once it reaches max_batch_size. For
 * THROTTLE_DUTY_BATCHES batches after contention throttle_decide sleeps at least `idle` times as
 * long as the last batch took: idle is 1 at the first contention and doubles with each one before
 * the duty cycle has ended, up to THROTTLE_MAX_IDLE. Returns true on contention.
 */
#define THROTTLE_DUTY_BATCHES 10 /* the batches a duty cycle lasts after contention */
#define THROTTLE_MAX_IDLE 8.0	 /* the most idle gets (busy a ninth of the time) */
bool throttle_after_contention(throttle_state_t *st, const throttle_settings_t *s, int64_t waited_ms);

/*
 * After throttle_after_batch: a committed batch walked ROWS keys in DURATION_MS, and WAITERS
 * other sessions waited on its locks. Updates k, the waiters per row and millisecond of row locks
 * held (a memory that fades over THROTTLE_WAITS_MEMORY_MS of the job's time), and from it `cap`:
 * the largest batch size whose waits stay under THROTTLE_WAITS_PER_S at the job's rate and
 * sleep_ms (0: no cap, as before anybody waited). The cap only brakes the ceiling of
 * throttle_after_contention, which grows back no further than it and never shrinks for it.
 */
#define THROTTLE_WAITS_PER_S 0.2	 /* the waits a second the cap allows: one every 5 s */
#define THROTTLE_WAITS_MEMORY_MS 60000.0 /* the job's time over which the waits seen fade */
void throttle_after_waiters(throttle_state_t *st, const throttle_settings_t *s, int64_t rows,
			    double duration_ms, int64_t waiters);

/*
 * Before anybody waits: the application's writes to the target table predict k. Between the
 * starts of two batches MS apart the application updated or deleted WRITES rows of the target
 * (the table's statistics counters less the job's own; not inserts), which has TABLE_ROWS rows
 * (pass 0 when the job's batches write nothing there). The prior k0 = r / 2N (r the writes a ms,
 * fading over THROTTLE_APP_MEMORY_MS; N the table's rows) is corrected by the waits seen against
 * those it predicted. While the prior holds a cap, the cap is firm: the size grows no further
 * and, when over it, halves toward it each batch; throttle_decide gives the reason
 * application_writes while the cap holds the size under what target_batch_ms asks.
 *
 * A job that measures (app_watch, set by the caller after throttle_init) does not grow past its
 * first batch_size before it has measured for THROTTLE_APP_WARMUP_MS, and meanwhile
 * throttle_decide keeps it busy at most THROTTLE_START_DUTY of the time (no reason of its own)
 * unless cpu_stretch is known and at most THROTTLE_CPU_STRETCH, or server_idle. Where the
 * application writes the table (THROTTLE_APP_MIN_WRITES_S), the gentle start goes on until
 * cpu_stretch is known, for up to THROTTLE_STRETCH_WAIT_MS of measuring: whether its batches slow
 * the application's CPU work decides the CPU share below.
 */
#define THROTTLE_PRIOR_WAITS 4.0	 /* the prior's weight, in waits, against the waits seen */
#define THROTTLE_APP_WARMUP_MS 2000.0	 /* how long a job measures before its size may grow */
#define THROTTLE_START_DUTY 0.01	 /* the busy share meanwhile */
#define THROTTLE_STRETCH_WAIT_MS 10000.0 /* the longest gentle start for the CPU probes */
#define THROTTLE_APP_MEMORY_MS 3000.0	 /* the time over which the application's writes fade */
void throttle_after_app(throttle_state_t *st, const throttle_settings_t *s, double writes, double ms,
			double table_rows);

/*
 * A batch was rolled back for a reason worth retrying (lock timeout, deadlock, statement
 * timeout, serialization failure, or cancelled for blocking others): halve the size (not
 * below min) and back off exponentially up to max_sleep_ms. JITTER in [0,1) spreads it.
 */
void throttle_after_retry(throttle_state_t *st, const throttle_settings_t *s, double jitter);

/*
 * The CPU share (throttle_decide): while the application writes the table
 * (THROTTLE_APP_MIN_WRITES_S rows a second or more) and other sessions' CPU work takes
 * s = cpu_stretch times as long while batches run, the job is busy a share
 * u = (THROTTLE_CPU_STRETCH - 1) / (s - 1) of the time, at most THROTTLE_CPU_TAIL_DUTY and not
 * under THROTTLE_MIN_DUTY: it sleeps (1 / u - 1) times as long as its last batch took, and each
 * batch walks no more keys than run in THROTTLE_CPU_BURST_MS, reason cpu_contention. The regime
 * begins when the stretch is seen over THROTTLE_CPU_STRETCH, holds while the application writes
 * (shorter, sparser batches show less of the stretch, not what full ones would cost), and lasts
 * THROTTLE_CPU_HOLD_BATCHES batches after the writes were last seen.
 */
#define THROTTLE_CPU_STRETCH 1.1      /* the stretch of other sessions' CPU work the share aims at */
#define THROTTLE_MIN_DUTY 0.005	      /* the least busy share */
#define THROTTLE_CPU_TAIL_DUTY 0.01   /* the busiest share under contention */
#define THROTTLE_CPU_BURST_MS 2.0     /* the longest batch under contention */
#define THROTTLE_CPU_HOLD_BATCHES 200 /* how long the regime outlasts the application's writes */
#define THROTTLE_APP_MIN_WRITES_S 1.0 /* the application's writes a second that call for a share */

/*
 * After a committed batch that walked ROWS keys and wrote WAL_BYTES of WAL: what a key costs in
 * WAL, smoothed, but never under the latest batch's (a checkpoint's full-page images make it
 * jump), for throttle_decide's lag headroom and the WAL budgets' batch sizes (pace.h); wal_known
 * from the first batch that walked a key.
 */
#define THROTTLE_WAL_MARGIN 1.25 /* a batch may write this much more WAL a key than measured */
void throttle_after_wal(throttle_state_t *st, int64_t rows, int64_t wal_bytes);

/*
 * Before a batch. Lag pressure p is the worse of lag_bytes/max_replication_lag_bytes and
 * lag_ms/max_replication_lag_ms: below 0.5 no sleep is added; from 0.5 to 1 the sleep grows
 * linearly from sleep_ms to max_sleep_ms; at 1 the job holds until p is back under 0.5. After
 * contention the sleep is at least idle times the last batch's duration (reason
 * blocked_sessions), unless lag asks for more; then the gentle start and the CPU share above.
 * The batch walks at most max_rows keys: the WAL it is expected to write (wal_per_row x
 * THROTTLE_WAL_MARGIN) fits in this runner's share of the lag headroom
 * (max_replication_lag_bytes - lag_bytes, over the instance's runners; reason replication_lag
 * when that cuts the batch).
 */
throttle_decision_t throttle_decide(throttle_state_t *st, const throttle_settings_t *s,
				    const throttle_input_t *in);

/* Lag pressure as above (0 when unknown). */
double throttle_pressure(const throttle_settings_t *s, const throttle_input_t *in);

#endif
