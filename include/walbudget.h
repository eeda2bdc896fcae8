/*
 * A WAL budget as a token bucket, pure: no clock, no I/O (times are passed in, in milliseconds of
 * the monotonic clock). It fills at its rate up to its burst. A batch takes the WAL it is expected
 * to write (walbudget_spend), then waits as long as the bucket, as it was right after that, needs
 * to be out of debt (walbudget_wait_ms then), and settles with the WAL it measured once it has run
 * (walbudget_spend of the difference; a refund is negative). Whoever took first runs first: what
 * others take later is not in its wait. A batch is sized to what its share of one burst pays for
 * (walbudget_rows).
 * Why the burst is what it is, and what it bounds: docs/throttle.md, wal_budget.
 */
#ifndef BACKFILLD_WALBUDGET_H
#define BACKFILLD_WALBUDGET_H

#include <stdbool.h>
#include <stdint.h>

/* It holds at most this many seconds of its rate. */
#define WALBUDGET_BURST_S 0.25

typedef struct walbudget {
	double rate;  /* bytes a second; 0: off */
	double burst; /* the most it holds: WALBUDGET_BURST_S seconds of the rate */
	double level; /* bytes it held at at_ms; below 0: a debt */
	double at_ms; /* when level was brought up to date */
} walbudget_t;

/* RATE bytes a second (0 or less: off), full at NOW_MS. */
void walbudget_init(walbudget_t *b, int64_t rate, double now_ms);

/* A new rate from NOW_MS (a reload). What it holds, or owes, is kept, within the new burst; a
 * budget that was off starts full; RATE 0 or less turns it off. */
void walbudget_set_rate(walbudget_t *b, int64_t rate, double now_ms);

/* Whether it limits anything (its rate is above zero). */
bool walbudget_on(const walbudget_t *b);

/* What it holds at NOW_MS (below 0: a debt). A clock that goes back adds nothing. */
double walbudget_level(const walbudget_t *b, double now_ms);

/* Take BYTES at NOW_MS (negative: give them back, never past the burst). Nothing when off. */
void walbudget_spend(walbudget_t *b, double bytes, double now_ms);

/* How long from NOW_MS until it is out of debt, in whole milliseconds (0: it is, or it is off). */
int64_t walbudget_wait_ms(const walbudget_t *b, double now_ms);

/* How many keys, at BYTES_PER_ROW each, one of SHARES equal shares of a burst pays for (INT64_MAX
 * when it is off or BYTES_PER_ROW is not above 0). */
int64_t walbudget_rows(const walbudget_t *b, double bytes_per_row, int shares);

#endif
