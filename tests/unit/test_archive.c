/*
 * Unit tests for archive.c: WAL segment names to positions, the archive backlog from what
 * pg_stat_archiver and archive_status show (failing, working, promoted, backups, never
 * archived, not permitted to list), and the hold's hysteresis.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "archive.h"

#define SEG (INT64_C(16) << 20) /* 16 MiB, the default wal_segment_size */
#define MIB (INT64_C(1) << 20)

/* The WAL position N bytes into segment number SEGNO. */
static uint64_t at(uint64_t segno, uint64_t n)
{
	return segno * (uint64_t)SEG + n;
}

static archive_seen_t on(uint64_t current_lsn)
{
	archive_seen_t seen = {.on = true, .segment_bytes = SEG, .current_lsn = current_lsn};
	return seen;
}

static void test_segment_names(void **state)
{
	uint64_t start = 0;
	const char *suffix = NULL;

	(void)state;
	assert_true(archive_segment_start("000000010000000000000001", SEG, &start, &suffix));
	assert_int_equal(start, 0x1000000);
	assert_string_equal(suffix, "");
	/* The high half counts 4 GiB of WAL: 256 segments of 16 MiB. */
	assert_true(archive_segment_start("00000001000000020000000A", SEG, &start, NULL));
	assert_int_equal(start, UINT64_C(0x20A000000));
	assert_true(archive_segment_start("0000000100000000000000FF", SEG, &start, NULL));
	assert_int_equal(start, UINT64_C(0xFF000000));
	/* The timeline does not move the position. */
	assert_true(archive_segment_start("0000000700000000000000FF.partial", SEG, &start, &suffix));
	assert_int_equal(start, UINT64_C(0xFF000000));
	assert_string_equal(suffix, ".partial");
	/* Other segment sizes: 1 GiB segments are 4 per high half, 1 MiB ones 4096. */
	assert_true(archive_segment_start("000000010000000100000003", INT64_C(1) << 30, &start, NULL));
	assert_int_equal(start, UINT64_C(0x1C0000000));
	assert_false(archive_segment_start("000000010000000100000004", INT64_C(1) << 30, &start, NULL));
	assert_true(archive_segment_start("000000010000000000000FFF", MIB, &start, NULL));
	assert_int_equal(start, UINT64_C(0xFFF00000));
	/* Not a segment: beyond the segments of a high half, lower case, short, a history file, NULL. */
	assert_false(archive_segment_start("000000010000000000000100", SEG, &start, NULL));
	assert_false(archive_segment_start("00000001000000000000000a", SEG, &start, NULL));
	assert_false(archive_segment_start("00000001000000000000000", SEG, &start, NULL));
	assert_false(archive_segment_start("00000002.history", SEG, &start, NULL));
	assert_false(archive_segment_start(NULL, SEG, &start, NULL));
	/* Not a segment size. */
	assert_false(archive_segment_start("000000010000000000000001", 0, &start, NULL));
	assert_false(archive_segment_start("000000010000000000000001", 3 * MIB, &start, NULL));
	assert_false(archive_segment_start("000000010000000000000001", INT64_C(1) << 33, &start, NULL));
}

static void test_off_is_not_measured(void **state)
{
	archive_seen_t seen = on(at(9, 100));

	(void)state;
	seen.on = false;
	seen.last_failed = "000000010000000000000001";
	seen.failed_since = true;
	assert_int_equal(archive_backlog(&seen), ARCHIVE_OFF);
}

static void test_a_working_archiver_has_no_backlog(void **state)
{
	archive_seen_t seen = on(at(5, 12 * MIB));

	(void)state;
	seen.last_archived = "000000010000000000000004";
	/* The segment being written is not counted, however full. */
	assert_int_equal(archive_backlog(&seen), 0);
	/* An older failure, since overcome, does not count. */
	seen.last_failed = "000000010000000000000002";
	assert_int_equal(archive_backlog(&seen), 0);
}

static void test_a_failing_archiver_counts_from_the_segment_it_fails_on(void **state)
{
	archive_seen_t seen = on(at(2, 0)); /* just after pg_switch_wal() */

	(void)state;
	/* Failing from the start: nothing was ever archived. */
	seen.last_failed = "000000010000000000000001";
	seen.failed_since = true;
	assert_int_equal(archive_backlog(&seen), SEG);
	/* Failing after successes: segments 4 to 6 wait while 7 is written. */
	seen = on(at(7, 300));
	seen.last_archived = "000000010000000000000003";
	seen.last_failed = "000000010000000000000004";
	seen.failed_since = true;
	assert_int_equal(archive_backlog(&seen), 3 * SEG);
	/* Slow rather than failing: archived up to 3, nothing failed. */
	seen.last_failed = NULL;
	seen.failed_since = false;
	assert_int_equal(archive_backlog(&seen), 3 * SEG);
}

static void test_after_a_promotion(void **state)
{
	archive_seen_t seen = on(at(6, 4096));

	(void)state;
	/* The old timeline's partial segment 5: the new timeline's segment 5 is not archived yet. */
	seen.last_archived = "000000010000000000000005.partial";
	assert_int_equal(archive_backlog(&seen), SEG);
	/* A timeline history file tells no position. */
	seen.last_archived = "00000002.history";
	assert_int_equal(archive_backlog(&seen), ARCHIVE_UNKNOWN);
	/* ...a failure on one neither: the last segment archived still does. */
	seen.last_archived = "000000020000000000000004";
	seen.last_failed = "00000003.history";
	seen.failed_since = true;
	assert_int_equal(archive_backlog(&seen), SEG);
}

static void test_a_backup_history_file_follows_its_segment(void **state)
{
	archive_seen_t seen = on(at(4, 1));

	(void)state;
	seen.last_archived = "000000010000000000000002.00000028.backup";
	assert_int_equal(archive_backlog(&seen), SEG);
	seen.last_archived = "000000010000000000000002.0000002.backup";
	assert_int_equal(archive_backlog(&seen), ARCHIVE_UNKNOWN);
}

static void test_never_archived_needs_the_listing(void **state)
{
	archive_seen_t seen = on(at(9, 7));

	(void)state;
	/* Nothing archived or failed (statistics reset, or the first archive_command still runs). */
	assert_int_equal(archive_backlog(&seen), ARCHIVE_UNKNOWN);
	seen.listed = true;
	assert_int_equal(archive_backlog(&seen), 0);
	seen.oldest_ready = "000000000000000000000003";
	assert_int_equal(archive_backlog(&seen), 6 * SEG);
	seen.oldest_ready = "junk";
	assert_int_equal(archive_backlog(&seen), ARCHIVE_UNKNOWN);
	/* pg_stat_archiver's names come first when they tell a position. */
	seen.oldest_ready = "000000000000000000000003";
	seen.last_archived = "000000010000000000000007";
	assert_int_equal(archive_backlog(&seen), SEG);
}

static void test_never_negative(void **state)
{
	archive_seen_t seen = on(at(3, 10));

	(void)state;
	seen.last_archived = "000000010000000000000005";
	assert_int_equal(archive_backlog(&seen), 0);
}

static void test_the_hold_has_hysteresis(void **state)
{
	int64_t limit = 4 * MIB;
	bool holding = false;

	(void)state;
	holding = archive_hold(holding, 0, limit);
	assert_false(holding);
	holding = archive_hold(holding, limit, limit); /* at the limit: not over it */
	assert_false(holding);
	holding = archive_hold(holding, limit + 1, limit);
	assert_true(holding);
	holding = archive_hold(holding, 3 * MIB, limit);
	assert_true(holding);
	holding = archive_hold(holding, 2 * MIB, limit); /* half: not below it */
	assert_true(holding);
	holding = archive_hold(holding, ARCHIVE_UNKNOWN, limit); /* unknown: as before */
	assert_true(holding);
	holding = archive_hold(holding, 2 * MIB - 1, limit);
	assert_false(holding);
	holding = archive_hold(holding, 3 * MIB, limit); /* between half and the limit: no new hold */
	assert_false(holding);
	holding = archive_hold(holding, ARCHIVE_UNKNOWN, limit);
	assert_false(holding);
	holding = archive_hold(holding, SEG, limit);
	assert_true(holding);
	holding = archive_hold(holding, ARCHIVE_OFF, limit); /* archive_mode turned off */
	assert_false(holding);
	/* An odd limit: below half is below 2.5. */
	assert_true(archive_hold(true, 3, 5));
	assert_false(archive_hold(true, 2, 5));
	assert_true(archive_hold(false, 2, 1));
	assert_false(archive_hold(false, 1, 1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_segment_names),
		cmocka_unit_test(test_off_is_not_measured),
		cmocka_unit_test(test_a_working_archiver_has_no_backlog),
		cmocka_unit_test(test_a_failing_archiver_counts_from_the_segment_it_fails_on),
		cmocka_unit_test(test_after_a_promotion),
		cmocka_unit_test(test_a_backup_history_file_follows_its_segment),
		cmocka_unit_test(test_never_archived_needs_the_listing),
		cmocka_unit_test(test_never_negative),
		cmocka_unit_test(test_the_hold_has_hysteresis),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
