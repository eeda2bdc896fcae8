/* The WAL budget's token bucket: see include/walbudget.h. Pure: no clock, no I/O. */
#include "walbudget.h"

#include <math.h>

void walbudget_init(walbudget_t *b, int64_t rate, double now_ms)
{
	b->rate = rate > 0 ? (double)rate : 0;
	b->burst = b->rate * WALBUDGET_BURST_S;
	b->level = b->burst;
	b->at_ms = now_ms;
}

bool walbudget_on(const walbudget_t *b)
{
	return b->rate > 0;
}

double walbudget_level(const walbudget_t *b, double now_ms)
{
	double level = b->level;

	if (now_ms > b->at_ms)
		level += b->rate * (now_ms - b->at_ms) / 1000.0;
	return level < b->burst ? level : b->burst;
}

/* Bring the level up to NOW_MS. */
static void walbudget_refill(walbudget_t *b, double now_ms)
{
	b->level = walbudget_level(b, now_ms);
	if (now_ms > b->at_ms)
		b->at_ms = now_ms;
}

void walbudget_set_rate(walbudget_t *b, int64_t rate, double now_ms)
{
	if (!walbudget_on(b) || rate <= 0) {
		walbudget_init(b, rate, now_ms);
		return;
	}
	walbudget_refill(b, now_ms);
	b->rate = (double)rate;
	b->burst = b->rate * WALBUDGET_BURST_S;
	if (b->level > b->burst)
		b->level = b->burst;
}

void walbudget_spend(walbudget_t *b, double bytes, double now_ms)
{
	if (!walbudget_on(b) || !isfinite(bytes))
		return;
	walbudget_refill(b, now_ms);
	b->level -= bytes;
	if (b->level > b->burst)
		b->level = b->burst;
}

int64_t walbudget_wait_ms(const walbudget_t *b, double now_ms)
{
	double missing;

	if (!walbudget_on(b))
		return 0;
	missing = -walbudget_level(b, now_ms);
	return missing > 0 ? (int64_t)ceil(missing * 1000.0 / b->rate) : 0;
}

int64_t walbudget_rows(const walbudget_t *b, double bytes_per_row, int shares)
{
	double rows;

	if (!walbudget_on(b) || !(bytes_per_row > 0))
		return INT64_MAX;
	rows = floor(b->burst / (shares > 1 ? shares : 1) / bytes_per_row);
	return rows < 9e18 ? (int64_t)rows : INT64_MAX;
}
