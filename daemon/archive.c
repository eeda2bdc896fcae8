/* The WAL archive backlog and its hold: see include/archive.h. Pure: no clock, no I/O. */
#include "archive.h"

#include <string.h>

#define SEGMENT_NAME_LEN 24 /* timeline, then the segment number's high and low halves */

/* Eight upper-case hex digits at S (as the server prints WAL file names). */
static bool archive_hex8(const char *s, uint32_t *out)
{
	uint32_t v = 0;

	for (int i = 0; i < 8; i++) {
		char c = s[i];
		if (c >= '0' && c <= '9')
			v = v * 16 + (uint32_t)(c - '0');
		else if (c >= 'A' && c <= 'F')
			v = v * 16 + (uint32_t)(c - 'A' + 10);
		else
			return false;
	}
	*out = v;
	return true;
}

bool archive_segment_start(const char *name, int64_t segment_bytes, uint64_t *start, const char **suffix)
{
	uint32_t tli, high, low;
	uint64_t per_high;

	/* wal_segment_size is a power of two from 1 MB to 1 GB. */
	if (!name || segment_bytes <= 0 || segment_bytes > (INT64_C(1) << 32) ||
	    (segment_bytes & (segment_bytes - 1)) != 0)
		return false;
	if (strnlen(name, SEGMENT_NAME_LEN) < SEGMENT_NAME_LEN || !archive_hex8(name, &tli) ||
	    !archive_hex8(name + 8, &high) || !archive_hex8(name + 16, &low))
		return false;
	per_high = (UINT64_C(1) << 32) / (uint64_t)segment_bytes;
	if (low >= per_high)
		return false;
	*start = ((uint64_t)high * per_high + low) * (uint64_t)segment_bytes;
	if (suffix)
		*suffix = name + SEGMENT_NAME_LEN;
	return true;
}

/* The first WAL position not archived yet, as the file NAME tells it: it is the last file
 * archived (ARCHIVED), or one not archived. False when NAME tells no position. */
static bool archive_first_unarchived(const char *name, bool archived, int64_t segment_bytes, uint64_t *at)
{
	const char *suffix;
	uint32_t offset;

	if (!archive_segment_start(name, segment_bytes, at, &suffix))
		return false;
	if (strcmp(suffix, ".partial") == 0)
		return true; /* the rest of this segment is on the next timeline, not archived */
	if (suffix[0] == '\0') {
		if (archived)
			*at += (uint64_t)segment_bytes;
		return true;
	}
	/* A backup history file, "<segment>.<offset>.backup": archived after its segment. */
	if (strlen(suffix) == 16 && suffix[0] == '.' && archive_hex8(suffix + 1, &offset) &&
	    strcmp(suffix + 9, ".backup") == 0) {
		*at += (uint64_t)segment_bytes;
		return true;
	}
	return false;
}

int64_t archive_backlog(const archive_seen_t *seen)
{
	int64_t segment = seen->segment_bytes;
	uint64_t from, writing;
	bool known;

	if (!seen->on)
		return ARCHIVE_OFF;
	known = (seen->failed_since && archive_first_unarchived(seen->last_failed, false, segment, &from)) ||
		archive_first_unarchived(seen->last_archived, true, segment, &from);
	if (!known && seen->listed) {
		if (!seen->oldest_ready)
			return 0; /* nothing waits to be archived */
		known = archive_first_unarchived(seen->oldest_ready, false, segment, &from);
	}
	if (!known)
		return ARCHIVE_UNKNOWN;
	/* SEGMENT is valid here: a name was read with it. */
	writing = seen->current_lsn - seen->current_lsn % (uint64_t)segment;
	return writing > from ? (int64_t)(writing - from) : 0;
}

bool archive_hold(bool holding, int64_t backlog, int64_t limit)
{
	if (backlog == ARCHIVE_OFF)
		return false;
	if (backlog < 0)
		return holding;
	if (holding)
		return (double)backlog >= (double)limit / 2;
	return backlog > limit;
}
