/*
 * A job's VACUUM of its target, pure: when it is due (throttle.vacuum_after_percent of the
 * table's rows changed since the last one), and the statements the job's session sends for it.
 * job_vacuum.c sends them; tests/unit/test_vacuum.c tests them.
 */
#ifndef BACKFILLD_VACUUM_H
#define BACKFILLD_VACUUM_H

#include <stdbool.h>
#include <stdint.h>

/* Never fewer changed rows between two VACUUMs than this: on a table never analyzed the job's
 * row estimate is the rows it has walked so far, which would make the first VACUUMs come after
 * every batch or two. */
#define VACUUM_MIN_ROWS 10000

/* The rows a job changes between two VACUUMs of a table of TABLE_ROWS rows (its estimate; at
 * least the rows walked) with vacuum_after_percent PERCENT: PERCENT of TABLE_ROWS, rounded up,
 * and at least VACUUM_MIN_ROWS. 0 (never) when PERCENT or TABLE_ROWS is not positive. */
int64_t vacuum_threshold(int64_t percent, int64_t table_rows);

/* Whether the job vacuums now, having changed CHANGED rows since its last VACUUM (or since its
 * walk began on this instance). */
bool vacuum_due(int64_t percent, int64_t changed, int64_t table_rows);

/* How long after the job's last commit its VACUUM starts, at most. A snapshot taken before that
 * commit (any other session's query running then, however short) keeps the dead rows of the last
 * batch from being removed: right after a batch of 100,000 rows that is a whole round's. */
#define VACUUM_SETTLE_MS 50

/* How much longer the job waits before its VACUUM, SINCE_COMMIT_MS after its last commit, which
 * changed at most LAST_ROWS rows of the ROUND_ROWS the round counted: VACUUM_SETTLE_MS after it
 * when that batch was a tenth of the round or more, in proportion below (a wait would cost more
 * than the few rows it saves). */
int64_t vacuum_wait_ms(double since_commit_ms, int64_t last_rows, int64_t round_rows);

/* The rows the job may still change before its next VACUUM is due (at least 1 once it is, since
 * a VACUUM comes first then); 0 when it never vacuums. A batch walks at most as many keys (each
 * key changes a row at most), so the VACUUMs come after that many rows, not a batch later. */
int64_t vacuum_rows_left(int64_t percent, int64_t changed, int64_t table_rows);

/* The keys the next batch walks, at most BATCH, when LEFT rows are left before the next VACUUM
 * (vacuum_rows_left; 0: BATCH): full batches, then the last two of the round share what is left
 * (each at least half of BATCH), rather than a short batch at the end of every round. */
int64_t vacuum_batch_keys(int64_t left, int64_t batch);

/*
 * The VACUUM of SCHEMA.TABLE (unquoted names, as in the catalog), alone in its request: it cannot
 * run in a transaction block or a pipeline with other statements. TRUNCATE false: it never takes
 * the ACCESS EXCLUSIVE lock that truncating the table's empty end needs (the walk leaves none
 * there anyway). The table's own vacuum_index_cleanup (AUTO by default) decides whether its
 * indexes are vacuumed. A partitioned table's partitions are vacuumed one by one. Caller frees.
 */
char *vacuum_build(const char *schema, const char *table) __attribute__((warn_unused_result));

/*
 * Before the VACUUM, alone in its request: the session's statement_timeout ($1) and lock_timeout
 * ($2), in ms, as session settings (the VACUUM runs outside any transaction); and, unless NULL,
 * vacuum_cost_delay ($3, ms) and vacuum_cost_limit ($4): while the application competes with the
 * job for the CPU (throttle_cpu_contended), the job's VACUUM sleeps as autovacuum's does
 * (VACUUM_CONTENDED_COST_DELAY_MS every VACUUM_CONTENDED_COST_LIMIT of cost) instead of running
 * flat out for a tenth of a second or more.
 */
extern const char vacuum_timeouts_sql[];
#define VACUUM_CONTENDED_COST_DELAY_MS "2"
#define VACUUM_CONTENDED_COST_LIMIT "200"

/* After it, one request of each: the session's own settings back (the role's, the database's). */
extern const char vacuum_reset_statement_timeout_sql[];
extern const char vacuum_reset_lock_timeout_sql[];
extern const char vacuum_reset_cost_delay_sql[];
extern const char vacuum_reset_cost_limit_sql[];

/*
 * Whether the session's role may VACUUM the table $1 (its oid), one boolean: it has the rights of
 * the table's owner or of the database's (superusers have every role's), or, from PostgreSQL 17,
 * the MAINTAIN privilege on the table (granted, or through pg_maintain). A VACUUM the role may
 * not run is skipped with a warning, not an error: the job asks first.
 */
extern const char vacuum_permitted_sql[];

#endif
