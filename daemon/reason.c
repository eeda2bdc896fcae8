/* The throttle reasons' names (include/reason.h's REASONS): the one table the logs, the queue and
 * the metrics use. */
#include "reason.h"

#include <stddef.h>
#include <string.h>

#define REASON_NAME(id, name) [REASON_##id] = name,
static const char *const reason_names[REASON_COUNT] = {[REASON_NONE] = NULL, REASONS(REASON_NAME)};
#undef REASON_NAME

const char *reason_name(reason_t reason)
{
	return (unsigned)reason < REASON_COUNT ? reason_names[reason] : NULL;
}

reason_t reason_parse(const char *name)
{
	for (int r = 1; name && r < REASON_COUNT; r++)
		if (strcmp(reason_names[r], name) == 0)
			return (reason_t)r;
	return REASON_NONE;
}
