/*
 * The sampler: a monitoring connection that every sample_interval_ms reads replication lag
 * (per physical standby, and logical slots), sessions blocked by our batches, autovacuum
 * workers, and the WAL archive backlog (with archive_mode on: WAL kept only because it is not
 * archived yet; over throttle.max_archive_backlog_bytes it holds every job until it is below
 * half of that), in one pipelined round trip. While jobs run, twice a second at most it also times a
 * fixed piece of CPU work on the server (the probe), also as batches begin: how much longer it
 * takes while batches run, against the lower quartile of the recent probes, is the CPU the
 * batches take from every other session (cpu_stretch). It never blocks the loop; jobs read its
 * latest view.
 */
#ifndef BACKFILLD_SAMPLER_H
#define BACKFILLD_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "reason.h"

typedef struct sampler_view {
	bool known;		 /* a recent sample exists */
	bool warming;		 /* no sample yet, but one is due within seconds: wait for it */
	int64_t lag_bytes;	 /* the worst watched standby or logical slot, plus WAL written since */
	int64_t lag_ms;		 /* the worst watched standby, on the daemon's clock */
	bool replicating;	 /* a watched standby or logical slot exists: WAL can be behind */
	reason_t hold;		 /* REASON_STANDBY_MISSING, REASON_LOGICAL_SLOT, REASON_ARCHIVE_BACKLOG, or
			       REASON_NONE */
	int64_t archive_backlog; /* WAL not archived yet, in bytes (archive.h: or ARCHIVE_OFF, ARCHIVE_UNKNOWN) */
	double cpu_stretch;	 /* how much longer the CPU probe takes while batches run (0: unknown) */
	int others_active;	 /* other client sessions at work in the latest sample (-1: unknown) */
	char detail[160];	 /* which standby or slot, for the log */
} sampler_view_t;

/* What the sampler asks of the daemon, and tells it. */
typedef struct sampler_hooks {
	void (*batch_pids)(char *buf, size_t len); /* the backends of the batches in flight, "{12,34}" */
	int (*njobs)(void);			   /* job runners of this instance */
	void (*on_blocked)(int pid, int64_t sessions, int64_t waited_ms); /* SESSIONS wait on PID's locks */
} sampler_hooks_t;

struct event_base;

void sampler_open(struct event_base *base, const sampler_hooks_t *hooks);
void sampler_close(void);

/* The latest sample, as the throttle sees it. */
void sampler_view(sampler_view_t *out);

/* A batch was sent: time a CPU probe now if one is due (every half second at most), so that
 * probes during batches come however little of the time batches run. */
void sampler_batch_started(void);

/* An autovacuum worker is processing the table RELID now. */
bool sampler_autovacuum(uint32_t relid);

/*
 * A batch's checkpoint saw the server's WAL insert position at LSN (text, "0/16B3748"): until a
 * sample is taken past it, the WAL between the latest sample's position and the highest such
 * LSN counts as lag (every session's WAL, each byte once).
 */
void sampler_wal_position(const char *lsn);

#endif
