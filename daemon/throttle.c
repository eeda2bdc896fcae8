/*
 * Throttle controller. For now a fixed batch size and sleep from the configuration, with
 * halving and exponential backoff on retryable failures; the adaptive controller builds on
 * these entry points.
 */
#include "throttle.h"

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

void throttle_init(throttle_state_t *st, const throttle_settings_t *s)
{
	st->batch_size = clamp64(s->batch_size, s->min_batch_size, s->max_batch_size);
	st->sleep_ms = s->sleep_ms;
	st->retries = 0;
}

void throttle_after_batch(throttle_state_t *st, const throttle_settings_t *s, int64_t rows,
			  double duration_ms)
{
	(void)rows;
	(void)duration_ms;
	/* A successful batch ends a retry streak; a size the retries shrank grows back by
	 * half per batch toward the configured one, and a reload that lowered it applies now. */
	st->retries = 0;
	if (st->batch_size < s->batch_size)
		st->batch_size = st->batch_size + st->batch_size / 2 + 1;
	if (st->batch_size > s->batch_size)
		st->batch_size = s->batch_size;
	st->batch_size = clamp64(st->batch_size, s->min_batch_size, s->max_batch_size);
	st->sleep_ms = clamp64(s->sleep_ms, 0, s->max_sleep_ms);
}

void throttle_after_retry(throttle_state_t *st, const throttle_settings_t *s, double jitter)
{
	int64_t backoff = 100;

	st->batch_size = clamp64(st->batch_size / 2, s->min_batch_size, s->max_batch_size);
	for (int i = 0; i < st->retries && backoff < s->max_sleep_ms; i++)
		backoff *= 2;
	if (!(jitter >= 0 && jitter < 1)) /* also NaN */
		jitter = 0;
	backoff = (int64_t)((double)backoff * (0.5 + jitter / 2));
	st->sleep_ms = clamp64(backoff > s->sleep_ms ? backoff : s->sleep_ms, 0, s->max_sleep_ms);
	st->retries++;
}
