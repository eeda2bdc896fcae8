/*
 * The lag clock: a ring of (time, primary LSN) samples, one per new position. When the ring
 * is full the oldest sample goes, so a lag older than the ring's span reads as that span.
 */
#include "lagclock.h"

#include <stdlib.h>
#include <string.h>

bool lagclock_parse_lsn(const char *text, uint64_t *out)
{
	/* As pg_lsn_in: 1 to 8 hex digits, a slash, 1 to 8 hex digits, nothing else. */
	static const char hex[] = "0123456789abcdefABCDEF";
	size_t n1, n2;

	if (!text)
		return false;
	n1 = strspn(text, hex);
	if (n1 < 1 || n1 > 8 || text[n1] != '/')
		return false;
	n2 = strspn(text + n1 + 1, hex);
	if (n2 < 1 || n2 > 8 || text[n1 + 1 + n2] != '\0')
		return false;
	*out = ((uint64_t)strtoul(text, NULL, 16) << 32) | (uint64_t)strtoul(text + n1 + 1, NULL, 16);
	return true;
}

void lagclock_add(lagclock_t *c, double now_ms, uint64_t lsn)
{
	int last;

	if (c->n > 0) {
		last = (c->head + c->n - 1) % LAGCLOCK_SAMPLES;
		if (lsn <= c->s[last].lsn)
			return; /* not a new position: its first sighting is what counts */
	}
	if (c->n == LAGCLOCK_SAMPLES) {
		c->head = (c->head + 1) % LAGCLOCK_SAMPLES;
		c->n--;
	}
	last = (c->head + c->n) % LAGCLOCK_SAMPLES;
	c->s[last].at_ms = now_ms;
	c->s[last].lsn = lsn;
	c->n++;
}

double lagclock_lag_ms(const lagclock_t *c, double now_ms, uint64_t replay_lsn)
{
	/* The oldest position beyond what the standby replayed: the primary reached it then. */
	for (int i = 0; i < c->n; i++) {
		int k = (c->head + i) % LAGCLOCK_SAMPLES;
		if (c->s[k].lsn > replay_lsn) {
			double lag = now_ms - c->s[k].at_ms;
			return lag > 0 ? lag : 0;
		}
	}
	return 0;
}
