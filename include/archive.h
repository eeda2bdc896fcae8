/*
 * The WAL archive backlog, pure: from what pg_stat_archiver (and, with pg_monitor,
 * pg_ls_archive_statusdir()) shows, how much WAL the primary keeps on its disk only because it is
 * not archived yet; and the hold it causes, with its hysteresis. The sampler reads the server and
 * keeps the hold's state; no I/O here.
 */
#ifndef BACKFILLD_ARCHIVE_H
#define BACKFILLD_ARCHIVE_H

#include <stdbool.h>
#include <stdint.h>

#define ARCHIVE_OFF (-1)     /* archive_mode is off: nothing is measured, nothing holds */
#define ARCHIVE_UNKNOWN (-2) /* archive_mode is on, but what the server shows gives no position */

/* What the sampler read, for one measurement. Names are WAL file names as the server prints them. */
typedef struct archive_seen {
	bool on;		   /* archive_mode is on or always */
	int64_t segment_bytes;	   /* wal_segment_size */
	uint64_t current_lsn;	   /* pg_current_wal_lsn() */
	const char *last_archived; /* pg_stat_archiver.last_archived_wal; NULL: none */
	const char *last_failed;   /* last_failed_wal; NULL: none */
	bool failed_since; /* last_failed_time is later than last_archived_time (or none was archived) */
	bool listed;	   /* pg_wal/archive_status was listed (needs pg_monitor) */
	const char *oldest_ready; /* then: the lowest segment with a .ready file; NULL: none */
} archive_seen_t;

/*
 * The first WAL position of the segment NAME ("000000010000000A000000FF": timeline, then the
 * segment number in two halves) for segments of SEGMENT_BYTES, in *START. The timeline does not
 * matter: WAL positions go on across timelines. False when NAME is not a segment's name, maybe
 * with a suffix (SUFFIX, when not NULL, is set to what follows the 24 digits).
 */
bool archive_segment_start(const char *name, int64_t segment_bytes, uint64_t *start, const char **suffix)
	__attribute__((warn_unused_result));

/*
 * The backlog in bytes: the WAL from the first segment not archived yet up to the start of the
 * segment being written (that one cannot be archived before it is complete, and counting it
 * would hold a job whose limit is under a segment for good on an otherwise idle server). The
 * first segment not archived yet is, in this order:
 *  - the one the archiver failed on, when that failure is later than its last success;
 *  - the one after last_archived_wal (a ".partial" segment's own: after a promotion the new
 *    timeline's copy of it is not archived yet; a backup history file's: it is archived after
 *    its segment);
 *  - the lowest one waiting in archive_status (LISTED), and none waiting is a backlog of 0.
 * ARCHIVE_UNKNOWN when none of these applies: nothing archived or failed since the statistics
 * were reset (or the first archive_command has not returned yet) and the listing is not
 * permitted, or the latest file is a timeline history file. ARCHIVE_OFF when archive_mode is off.
 */
int64_t archive_backlog(const archive_seen_t *seen);

/*
 * Whether every job holds now, HOLDING whether they held after the previous measurement: from a
 * backlog over LIMIT until it is below half of LIMIT. An unknown backlog neither starts nor ends
 * a hold; archive_mode off ends it.
 */
bool archive_hold(bool holding, int64_t backlog, int64_t limit);

#endif
