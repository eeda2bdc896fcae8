/*
 * The throttle controller: pure arithmetic over plain structs, no I/O. Given what the last
 * batch did, it chooses the next batch size and the sleep before it.
 */
#ifndef BACKFILLD_THROTTLE_H
#define BACKFILLD_THROTTLE_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

typedef struct throttle_state {
	int64_t batch_size; /* the size the next batch will use */
	int64_t sleep_ms;   /* the pause before the next batch */
	int retries;	    /* consecutive retried batches */
} throttle_state_t;

/* Start a job: the configured size, clamped into [min, max]. */
void throttle_init(throttle_state_t *st, const throttle_settings_t *s);

/* A batch committed. */
void throttle_after_batch(throttle_state_t *st, const throttle_settings_t *s, int64_t rows,
			  double duration_ms);

/*
 * A batch was rolled back for a reason worth retrying (lock timeout, deadlock, statement
 * timeout, serialization failure): halve the size (not below min) and back off with
 * exponential growth up to max_sleep_ms. JITTER in [0,1) spreads the backoff.
 */
void throttle_after_retry(throttle_state_t *st, const throttle_settings_t *s, double jitter);

#endif
