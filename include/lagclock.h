/*
 * Replication time lag on the daemon's own monotonic clock: remember when the primary's WAL
 * position was first seen at each value; a standby's lag is the age of the oldest position
 * it has not replayed yet. Unlike replay_lag it does not freeze while replay is paused, and
 * unlike pg_last_xact_replay_timestamp() it does not grow while the primary is idle.
 */
#ifndef BACKFILLD_LAGCLOCK_H
#define BACKFILLD_LAGCLOCK_H

#include <stdbool.h>
#include <stdint.h>

#define LAGCLOCK_SAMPLES 4096

typedef struct lagclock {
	struct {
		double at_ms; /* monotonic time the position was first seen */
		uint64_t lsn;
	} s[LAGCLOCK_SAMPLES];
	int head; /* oldest */
	int n;
} lagclock_t;

/* Parse a pg_lsn text ("16/B374D848"); false when malformed. */
bool lagclock_parse_lsn(const char *text, uint64_t *out) __attribute__((warn_unused_result));

/* The primary is at LSN at time NOW_MS (monotonic). Only new positions are kept. */
void lagclock_add(lagclock_t *c, double now_ms, uint64_t lsn);

/* How long ago (ms) the primary first passed REPLAY_LSN; 0 when the standby has caught up. */
double lagclock_lag_ms(const lagclock_t *c, double now_ms, uint64_t replay_lsn);

#endif
