/*
 * Unit tests for queuesql.c: every statement of the queue schema, with the schema quoted in, its
 * parameters $1..$n without a gap, and the functions it calls qualified.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "queuesql.h"
#include "sqlcheck.h"

static const struct {
	queuesql_t which;
	const char *call; /* after the quoted schema */
	int params;
} statements[] = {
	{QSQL_SCHEMA_VERSION, ".schema_version", 0},
	{QSQL_CLAIM, "._claim($1::pg_catalog.text, $2::pg_catalog.int4, $3::pg_catalog.int8[])", 3},
	{QSQL_RENEW, "._renew($1::pg_catalog.text, $2::pg_catalog.int8[], $3::pg_catalog.int4)", 3},
	{QSQL_RUNNABLE_COUNT, "._runnable_count()", 0},
	{QSQL_COUNT_STATES, "._count_states()", 0},
	{QSQL_SET_LIMITS, "._set_limits($1::pg_catalog.int4)", 1},
	{QSQL_RELEASE, "._release($1::pg_catalog.int8, $2::pg_catalog.text, $3::pg_catalog.text,", 4},
	{QSQL_SET_REASON, "._set_reason($1::pg_catalog.text, $2::pg_catalog.int8[],", 3},
	{QSQL_DRY_RUN_DONE, "._dry_run_done($1::pg_catalog.int8, $2::pg_catalog.text,", 4},
	{QSQL_LOAD_JOB, ".jobs j LEFT JOIN pg_catalog.pg_class c", 1},
	{QSQL_LOAD_KEYS, ".jobs j CROSS JOIN LATERAL pg_catalog.unnest(j.key_columns)", 1},
	{QSQL_LOAD_SLICES, ".slices s JOIN ", 1},
	{QSQL_SPLIT, "._make_slices(j.id, $2::pg_catalog.text, ", 3},
	{QSQL_BATCH_OPEN, "._batch_open($3::pg_catalog.oid) AS w", 3},
	{QSQL_BATCH_WAL, NULL, 0},
	{QSQL_WAITERS, "._waiters($1::pg_catalog.oid) AS w", 1},
	{QSQL_MISMATCHES, "._record_mismatches($1::pg_catalog.int8, $2::pg_catalog.text)", 2},
	{QSQL_CHECKPOINT, "._checkpoint($1::pg_catalog.int8, $2::pg_catalog.text,", 12},
	{QSQL_SKIP_ROW, "._skip_row($1::pg_catalog.int8, $2::pg_catalog.text, $3::pg_catalog.int4,", 6},
	{QSQL_WINDOW, "._in_window(j.run_window, pg_catalog.now()) FROM ", 1},
	{QSQL_SET_ERROR, "._set_error($1::pg_catalog.text, $2::pg_catalog.int8, $3::pg_catalog.text)", 3},
};

static void test_every_statement_is_listed(void **state)
{
	(void)state;
	assert_int_equal(sizeof(statements) / sizeof(statements[0]), QSQL_COUNT);
	for (int i = 0; i < QSQL_COUNT; i++)
		assert_int_equal(statements[i].which, i);
}

/* A schema name that needs quoting lands quoted, everywhere, and nothing is left to fill in. */
static void test_the_schema_is_quoted_in(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(statements) / sizeof(statements[0]); i++) {
		char *sql = queuesql(statements[i].which, "Queue \"q\"");
		char call[256];

		assert_non_null(sql);
		if (statements[i].call) {
			snprintf(call, sizeof(call), "\"Queue \"\"q\"\"\"%s", statements[i].call);
			expect_contains(sql, call);
		}
		expect_absent(sql, " Queue \"q\".");
		expect_absent(sql, "@q@");
		expect_params(sql, statements[i].params);
		expect_qualified(sql, "set_config(", "pg_catalog.");
		expect_qualified(sql, "current_setting(", "pg_catalog.");
		expect_qualified(sql, "max(", "pg_catalog.");
		free(sql);
	}
}

/* The statements of a job's session (where the role's search_path applies) qualify every type. */
static void test_job_session_statements_qualify_their_types(void **state)
{
	static const queuesql_t in_session[] = {QSQL_WINDOW,	 QSQL_SPLIT,   QSQL_BATCH_OPEN,
						QSQL_BATCH_WAL,	 QSQL_WAITERS, QSQL_MISMATCHES,
						QSQL_CHECKPOINT, QSQL_SKIP_ROW};

	(void)state;
	for (size_t i = 0; i < sizeof(in_session) / sizeof(in_session[0]); i++) {
		char *sql = queuesql(in_session[i], "backfill");
		expect_absent(sql, "::int");
		expect_absent(sql, "::text");
		expect_absent(sql, "::bigint");
		expect_absent(sql, "::oid");
		free(sql);
	}
}

/* A batch's transaction sets only the daemon's own two timeouts: everything else is the role's. */
static void test_open_sets_only_the_daemons_own_settings(void **state)
{
	char *sql = queuesql(QSQL_BATCH_OPEN, "backfill");

	(void)state;
	expect_contains(sql, "pg_catalog.set_config('statement_timeout', $1::pg_catalog.text, true)");
	expect_contains(sql, "pg_catalog.set_config('lock_timeout', $2::pg_catalog.text, true)");
	assert_int_equal(count_occurrences(sql, "set_config("), 2);
	expect_absent(sql, "role");
	expect_absent(sql, "search_path");
	free(sql);
}

/* The checkpoint's columns are in the order of its enum. */
static void test_checkpoint_columns(void **state)
{
	char *sql = queuesql(QSQL_CHECKPOINT, "backfill");

	(void)state;
	expect_contains(sql, "SELECT c.state, c.rows_scanned, c.rows_changed, c.batches, c.rows_estimate,"
			     " c.wal_bytes, c.slice_done, c.wal_lsn, c.run_window FROM ");
	assert_int_equal(QSQL_CHECKPOINT_STATE, 0);
	assert_int_equal(QSQL_CHECKPOINT_ROWS_ESTIMATE, 4);
	assert_int_equal(QSQL_CHECKPOINT_WAL_LSN, 7);
	free(sql);
	sql = queuesql(QSQL_LOAD_SLICES, "backfill");
	expect_contains(sql, "SELECT s.slice, s.lower_key::pg_catalog.text, s.upper_key::pg_catalog.text,"
			     " s.last_key::pg_catalog.text, s.done");
	assert_int_equal(QSQL_SLICE_DONE, 4);
	free(sql);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_statement_is_listed),
		cmocka_unit_test(test_the_schema_is_quoted_in),
		cmocka_unit_test(test_job_session_statements_qualify_their_types),
		cmocka_unit_test(test_open_sets_only_the_daemons_own_settings),
		cmocka_unit_test(test_checkpoint_columns),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
