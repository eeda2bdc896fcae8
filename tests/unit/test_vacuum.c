/*
 * Unit tests for vacuum.c: when a job vacuums its target (vacuum_after_percent of the table's
 * rows changed since the last VACUUM, never fewer than VACUUM_MIN_ROWS, never at 0), how many rows
 * the batches before it may still change, and the text of the statements its session sends.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "sqlcheck.h"
#include "vacuum.h"

static void test_threshold_is_the_percent_of_the_table(void **state)
{
	(void)state;
	assert_int_equal(vacuum_threshold(10, 1000000), 100000);
	assert_int_equal(vacuum_threshold(10, 200000), 20000);
	assert_int_equal(vacuum_threshold(1, 5000000), 50000);
	assert_int_equal(vacuum_threshold(100, 300000), 300000);
	/* Rounded up: a job never vacuums before the percent is reached. */
	assert_int_equal(vacuum_threshold(10, 1000005), 100001);
	assert_int_equal(vacuum_threshold(33, 1000001), 330001);
	/* A huge table does not overflow. */
	assert_int_equal(vacuum_threshold(50, INT64_MAX / 2), INT64_MAX / 4 + 1);
	/* A percent beyond 100 (never from the configuration, which bounds it) is 100. */
	assert_int_equal(vacuum_threshold(250, 300000), 300000);
}

static void test_threshold_has_a_floor(void **state)
{
	(void)state;
	assert_int_equal(vacuum_threshold(10, 20000), VACUUM_MIN_ROWS);
	assert_int_equal(vacuum_threshold(1, 1), VACUUM_MIN_ROWS);
	assert_int_equal(vacuum_threshold(10, 10 * VACUUM_MIN_ROWS), VACUUM_MIN_ROWS);
	assert_int_equal(vacuum_threshold(10, 10 * VACUUM_MIN_ROWS + 10), VACUUM_MIN_ROWS + 1);
}

static void test_never_when_off_or_unknown(void **state)
{
	(void)state;
	assert_int_equal(vacuum_threshold(0, 1000000), 0);
	assert_int_equal(vacuum_threshold(-5, 1000000), 0);
	assert_int_equal(vacuum_threshold(10, 0), 0);
	assert_int_equal(vacuum_threshold(10, -1), 0); /* a table never analyzed, nothing walked */
	assert_false(vacuum_due(0, INT64_MAX, 1000000));
	assert_false(vacuum_due(10, INT64_MAX, -1));
	assert_false(vacuum_due(10, 0, 0));
}

static void test_due_once_the_threshold_is_reached(void **state)
{
	(void)state;
	assert_false(vacuum_due(10, 0, 1000000));
	assert_false(vacuum_due(10, 99999, 1000000));
	assert_true(vacuum_due(10, 100000, 1000000));
	assert_true(vacuum_due(10, 250000, 1000000));
	/* The floor: a small table, or the first batches of one never analyzed (its estimate is the
	 * rows walked so far), is not vacuumed after every batch. */
	assert_false(vacuum_due(10, 2000, 2000));
	assert_false(vacuum_due(10, VACUUM_MIN_ROWS - 1, 50000));
	assert_true(vacuum_due(10, VACUUM_MIN_ROWS, 50000));
	/* 100%: once as many rows changed as the table has. */
	assert_false(vacuum_due(100, 199999, 200000));
	assert_true(vacuum_due(100, 200000, 200000));
}

static void test_rows_left_before_the_next(void **state)
{
	(void)state;
	assert_int_equal(vacuum_rows_left(10, 0, 1000000), 100000);
	assert_int_equal(vacuum_rows_left(10, 99000, 1000000), 1000);
	assert_int_equal(vacuum_rows_left(10, 99999, 1000000), 1);
	/* Due (a VACUUM comes first): never 0, which means no limit. */
	assert_int_equal(vacuum_rows_left(10, 100000, 1000000), 1);
	assert_int_equal(vacuum_rows_left(10, 500000, 1000000), 1);
	assert_int_equal(vacuum_rows_left(10, 0, 20000), VACUUM_MIN_ROWS);
	/* Never: no limit. */
	assert_int_equal(vacuum_rows_left(0, 500000, 1000000), 0);
	assert_int_equal(vacuum_rows_left(10, 500000, -1), 0);
}

static void test_it_waits_after_the_last_commit(void **state)
{
	(void)state;
	/* A last batch of a tenth of the round or more: the whole wait. */
	assert_int_equal(vacuum_wait_ms(0, 100000, 100000), VACUUM_SETTLE_MS);
	assert_int_equal(vacuum_wait_ms(0, 10000, 100000), VACUUM_SETTLE_MS);
	assert_int_equal(vacuum_wait_ms(30, 50000, 100000), VACUUM_SETTLE_MS - 30);
	assert_int_equal(vacuum_wait_ms(VACUUM_SETTLE_MS, 100000, 100000), 0);
	assert_int_equal(vacuum_wait_ms(60000, 100000, 100000), 0); /* a throttle's sleep waited */
	/* A small one: in proportion (1,000 of 100,000 rows: a tenth of the wait). */
	assert_int_equal(vacuum_wait_ms(0, 1000, 100000), VACUUM_SETTLE_MS / 10);
	assert_int_equal(vacuum_wait_ms(4, 1000, 100000), VACUUM_SETTLE_MS / 10 - 4);
	assert_int_equal(vacuum_wait_ms(VACUUM_SETTLE_MS / 10, 1000, 100000), 0);
	assert_int_equal(vacuum_wait_ms(0, 0, 100000), 0);
	/* Nothing known of the round: the whole wait; a clock that says nothing: from the commit. */
	assert_int_equal(vacuum_wait_ms(0, 1000, 0), VACUUM_SETTLE_MS);
	assert_int_equal(vacuum_wait_ms(-1, 100000, 100000), VACUUM_SETTLE_MS);
	assert_int_equal(vacuum_wait_ms(0.0 / 0.0, 100000, 100000), VACUUM_SETTLE_MS);
}

static void test_a_round_ends_in_two_even_batches(void **state)
{
	(void)state;
	/* 100,000 rows to the next VACUUM at 83,000 a batch: two of 50,000, not 83,000 and 17,000. */
	assert_int_equal(vacuum_batch_keys(100000, 83000), 50000);
	assert_int_equal(vacuum_batch_keys(50000, 83000), 50000);
	/* Full batches first: 30,000, 30,000, then 20,000 and 20,000. */
	assert_int_equal(vacuum_batch_keys(100000, 30000), 30000);
	assert_int_equal(vacuum_batch_keys(70000, 30000), 30000);
	assert_int_equal(vacuum_batch_keys(40000, 30000), 20000);
	assert_int_equal(vacuum_batch_keys(20000, 30000), 20000);
	assert_int_equal(vacuum_batch_keys(100000, 100000), 100000);
	assert_int_equal(vacuum_batch_keys(100000, 1000), 1000);
	assert_int_equal(vacuum_batch_keys(1001, 1000), 501); /* then 500 */
	assert_int_equal(vacuum_batch_keys(20000, 15000), 10000);
	assert_int_equal(vacuum_batch_keys(10000, 15000), 10000);
	assert_int_equal(vacuum_batch_keys(1, 15000), 1);
	/* Never more than the batch or what is left; never a batch under half the batch size but
	 * the whole of what is left. */
	for (int64_t left = 1; left < 5000; left += 7)
		for (int64_t batch = 1; batch < 700; batch += 13) {
			int64_t keys = vacuum_batch_keys(left, batch), rest = left - keys;
			assert_true(keys <= batch && keys <= left);
			assert_true(keys * 2 >= batch || keys == left);
			assert_true(rest == 0 || rest * 2 >= batch);
		}
	/* No VACUUM ahead: the batch as it is. */
	assert_int_equal(vacuum_batch_keys(0, 83000), 83000);
}

static void test_the_vacuum_statement(void **state)
{
	char *sql = vacuum_build("app", "users");
	(void)state;

	assert_string_equal(sql, "VACUUM (TRUNCATE false) \"app\".\"users\"");
	free(sql);
	/* Names are only names. */
	sql = vacuum_build("we\"ird", "t; DROP TABLE x");
	assert_string_equal(sql, "VACUUM (TRUNCATE false) \"we\"\"ird\".\"t; DROP TABLE x\"");
	free(sql);
}

static void test_the_session_statements(void **state)
{
	(void)state;
	/* Session settings (false), not the transaction's: the VACUUM runs outside any. */
	expect_contains(vacuum_timeouts_sql,
			"pg_catalog.set_config('statement_timeout', $1::pg_catalog.text, false)");
	expect_contains(vacuum_timeouts_sql,
			"pg_catalog.set_config('lock_timeout', $2::pg_catalog.text, false)");
	/* Autovacuum's cost delay only when asked for ($3, $4 not NULL): otherwise the role's own. */
	expect_contains(vacuum_timeouts_sql,
			"CASE WHEN $3::pg_catalog.text IS NOT NULL"
			" THEN pg_catalog.set_config('vacuum_cost_delay', $3::pg_catalog.text, false) END");
	expect_contains(vacuum_timeouts_sql,
			"CASE WHEN $4::pg_catalog.text IS NOT NULL"
			" THEN pg_catalog.set_config('vacuum_cost_limit', $4::pg_catalog.text, false) END");
	expect_params(vacuum_timeouts_sql, 4);
	assert_string_equal(vacuum_reset_statement_timeout_sql, "RESET statement_timeout");
	assert_string_equal(vacuum_reset_lock_timeout_sql, "RESET lock_timeout");
	assert_string_equal(vacuum_reset_cost_delay_sql, "RESET vacuum_cost_delay");
	assert_string_equal(vacuum_reset_cost_limit_sql, "RESET vacuum_cost_limit");
}

static void test_the_permission_check(void **state)
{
	(void)state;
	expect_params(vacuum_permitted_sql, 1);
	expect_contains(vacuum_permitted_sql, "pg_catalog.pg_has_role(c.relowner, 'USAGE')");
	expect_contains(vacuum_permitted_sql, "pg_catalog.pg_has_role(d.datdba, 'USAGE')");
	/* MAINTAIN only where the server knows it: inside a CASE on the version. */
	expect_contains(vacuum_permitted_sql, "CASE WHEN pg_catalog.current_setting('server_version_num')");
	expect_contains(vacuum_permitted_sql,
			"170000 THEN pg_catalog.has_table_privilege(c.oid, 'MAINTAIN')");
	expect_contains(vacuum_permitted_sql, "FROM pg_catalog.pg_class c, pg_catalog.pg_database d");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_threshold_is_the_percent_of_the_table),
		cmocka_unit_test(test_threshold_has_a_floor),
		cmocka_unit_test(test_never_when_off_or_unknown),
		cmocka_unit_test(test_due_once_the_threshold_is_reached),
		cmocka_unit_test(test_rows_left_before_the_next),
		cmocka_unit_test(test_it_waits_after_the_last_commit),
		cmocka_unit_test(test_a_round_ends_in_two_even_batches),
		cmocka_unit_test(test_the_vacuum_statement),
		cmocka_unit_test(test_the_session_statements),
		cmocka_unit_test(test_the_permission_check),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
