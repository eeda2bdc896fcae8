/*
 * Unit tests for batchsql.c: identifier quoting, job kinds, and the exact text of the keyset
 * statements of a job's session (quoting, qualified names, parameter numbering, where the
 * user's fragments go).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batchsql.h"
#include "jobkind.h"
#include "sqlcheck.h"

static void expect_quoted(const char *name, const char *want)
{
	char *q = sql_quote_ident(name);

	assert_non_null(q);
	assert_string_equal(q, want);
	free(q);
}

/* ---- sql_quote_ident ---- */

static void test_quote_plain(void **state)
{
	(void)state;
	expect_quoted("id", "\"id\"");
	expect_quoted("Order", "\"Order\"");
	expect_quoted("my schema", "\"my schema\"");
	expect_quoted("a.b", "\"a.b\"");
}

static void test_quote_embedded_quotes(void **state)
{
	(void)state;
	expect_quoted("we\"ird", "\"we\"\"ird\"");
	expect_quoted("\"", "\"\"\"\"");
	expect_quoted("a\"\"b", "\"a\"\"\"\"b\"");
	expect_quoted("\"edge\"", "\"\"\"edge\"\"\"");
}

static void test_quote_empty(void **state)
{
	(void)state;
	expect_quoted("", "\"\"");
}

static void test_quote_unicode(void **state)
{
	(void)state;
	/* UTF-8 bytes pass through untouched: no multibyte sequence contains 0x22. */
	expect_quoted("na\xc3\xafve_\xe8\xa1\xa8", "\"na\xc3\xafve_\xe8\xa1\xa8\"");
	expect_quoted("\xf0\x9f\x90\x98\"x", "\"\xf0\x9f\x90\x98\"\"x\"");
}

/* ---- job kinds ---- */

static void test_job_kind_round_trip(void **state)
{
	static const struct {
		const char *name;
		job_kind_t kind;
	} kinds[] = {
		{"update", JOB_KIND_UPDATE},
		{"statement", JOB_KIND_STATEMENT},
		{"verify", JOB_KIND_VERIFY},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		job_kind_t k = (job_kind_t)-1;

		assert_true(job_kind_parse(kinds[i].name, &k));
		assert_int_equal(k, kinds[i].kind);
		assert_string_equal(job_kind_name(k), kinds[i].name);
	}
}

/* The table's rows: each kind's builder, its SQL column, and what its batches do. */
static void test_job_kind_table(void **state)
{
	(void)state;
	assert_ptr_equal(job_kind_info(JOB_KIND_UPDATE)->build, batch_build_update);
	assert_ptr_equal(job_kind_info(JOB_KIND_VERIFY)->build, batch_build_verify);
	assert_ptr_equal(job_kind_info(JOB_KIND_STATEMENT)->build, batch_build_statement);
	assert_string_equal(job_kind_info(JOB_KIND_UPDATE)->sql_column, "set_sql");
	assert_string_equal(job_kind_info(JOB_KIND_VERIFY)->sql_column, "mismatch_sql");
	assert_string_equal(job_kind_info(JOB_KIND_STATEMENT)->sql_column, "batch_sql");
	assert_true(job_kind_info(JOB_KIND_UPDATE)->writes);
	assert_true(job_kind_info(JOB_KIND_STATEMENT)->writes);
	assert_false(job_kind_info(JOB_KIND_VERIFY)->writes);
	assert_true(job_kind_info(JOB_KIND_VERIFY)->records_mismatches);
	assert_false(job_kind_info(JOB_KIND_UPDATE)->records_mismatches);
	assert_true(job_kind_info(JOB_KIND_STATEMENT)->sql_param);
	assert_false(job_kind_info(JOB_KIND_UPDATE)->sql_param);
	assert_int_equal(job_kind_info(JOB_KIND_STATEMENT)->kind, JOB_KIND_STATEMENT);
}

static void test_job_kind_rejects(void **state)
{
	static const char *const bad[] = {"",	     "Update",	"UPDATE",   "updat",	  "updates",
					  " update", "update ", "verify\n", "statements", "?"};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		job_kind_t k = JOB_KIND_VERIFY;

		if (job_kind_parse(bad[i], &k))
			fail_msg("accepted \"%s\"", bad[i]);
		assert_int_equal(k, JOB_KIND_VERIFY); /* untouched on failure */
	}
	{
		job_kind_t k = JOB_KIND_STATEMENT;

		assert_false(job_kind_parse(NULL, &k));
		assert_int_equal(k, JOB_KIND_STATEMENT);
	}
	assert_string_equal(job_kind_name((job_kind_t)3), "?");
	assert_string_equal(job_kind_name((job_kind_t)-1), "?");
}

/* ---- the batch statement ---- */

static const char *const id_name[] = {"id"};
static const char *const id_type[] = {"\"pg_catalog\".\"int8\""};

static batch_spec_t single_key_spec(void)
{
	batch_spec_t spec = {
		.queue_schema = "backfill",
		.target_schema = "public",
		.target_table = "items",
		.nkeys = 1,
		.key_names = id_name,
		.key_types = id_type,
		.key_op_schema = "pg_catalog",
		.set_sql = "flag = true",
		.where_sql = NULL,
	};
	return spec;
}

static const char *const pair_names[] = {"tenant_id", "created_at"};
static const char *const pair_types[] = {"\"pg_catalog\".\"int4\"", "\"pg_catalog\".\"timestamptz\""};

static batch_spec_t composite_key_spec(void)
{
	batch_spec_t spec = single_key_spec();

	spec.target_table = "events";
	spec.nkeys = 2;
	spec.key_names = pair_names;
	spec.key_types = pair_types;
	return spec;
}

static void expect_all_qualified(const char *sql)
{
	static const char *const functions[] = {
		"set_config(", "current_setting(",    "count(", "jsonb_agg(", "min(",
		"max(",	       "has_table_privilege("};
	for (size_t i = 0; i < sizeof(functions) / sizeof(functions[0]); i++)
		expect_qualified(sql, functions[i], "pg_catalog.");
	expect_absent(sql, "::text"); /* a cast to text names pg_catalog.text */
	expect_qualified(sql, "._key_in(", "\"backfill\"");
	expect_qualified(sql, "._key_out(", "\"backfill\"");
	/* No bare comparison of a key: every one goes through OPERATOR(schema.op). */
	expect_absent(sql, ") > (");
	expect_absent(sql, ") >= (");
	expect_absent(sql, ") <= (");
}

static void test_update_single_first(void **state)
{
	batch_spec_t spec = single_key_spec();
	char *sql = batch_build_update(&spec, true);

	(void)state;
	assert_non_null(sql);
	assert_true(strncmp(sql, "WITH __bf_keys AS MATERIALIZED (\n", 33) == 0);
	expect_contains(sql, "  SELECT \"id\" AS __bf_k1\n"
			     "  FROM \"public\".\"items\"\n"
			     "  ORDER BY \"id\"\n"
			     "  LIMIT $1\n");
	/* No lower bound on the first batch. */
	expect_absent(sql, "_key_in(");
	expect_absent(sql, "$2");
	expect_params(sql, 1);

	expect_contains(sql, "SELECT * FROM __bf_keys ORDER BY __bf_k1 LIMIT 1\n");
	expect_contains(sql, "SELECT * FROM __bf_keys ORDER BY __bf_k1 DESC LIMIT 1\n");
	expect_contains(sql, "  UPDATE \"public\".\"items\" SET\nflag = true\n  WHERE ");
	expect_contains(sql, "\"id\" OPERATOR(\"pg_catalog\".>=) (SELECT __bf_k1 FROM __bf_first)\n");
	expect_contains(sql, "    AND \"id\" OPERATOR(\"pg_catalog\".<=) (SELECT __bf_k1 FROM __bf_last)\n");
	/* The leading-column range is only for composite keys. */
	assert_int_equal(count_occurrences(sql, "OPERATOR(\"pg_catalog\".>=)"), 1);
	/* A row moved past the batch's last key fails the batch. */
	expect_contains(sql, "  RETURNING \"id\" OPERATOR(\"pg_catalog\".>) (SELECT __bf_k1 FROM __bf_last)"
			     " AS __bf_moved\n)\n");
	expect_contains(sql, "(SELECT pg_catalog.count(*) FROM __bf_changed WHERE __bf_moved) AS moved");
	expect_contains(sql, "CASE WHEN s.moved > 0 THEN \"backfill\"._keys_moved(s.moved) END");
	expect_contains(sql,
			"(SELECT ARRAY[\"backfill\"._key_out(__bf_k1)]::pg_catalog.text[] FROM __bf_first)"
			" AS first_key");
	expect_contains(sql,
			"(SELECT ARRAY[\"backfill\"._key_out(__bf_k1)]::pg_catalog.text[] FROM __bf_last)"
			" AS last_key");
	expect_contains(sql, "pg_catalog.set_config('backfilld.scanned', s.scanned::pg_catalog.text, true)");
	expect_contains(sql, "pg_catalog.set_config('backfilld.changed', s.changed::pg_catalog.text, true)");
	expect_contains(sql,
			"pg_catalog.set_config('backfilld.first_key', coalesce(s.first_key::pg_catalog.text,"
			" ''), true)");
	expect_contains(sql,
			"pg_catalog.set_config('backfilld.last_key', coalesce(s.last_key::pg_catalog.text,"
			" ''), true)");
	expect_absent(sql, "backfilld.mismatches");
	assert_int_equal(count_occurrences(sql, "__bf_k2"), 0);
	expect_all_qualified(sql);
	free(sql);
}

static void test_update_single_next(void **state)
{
	batch_spec_t spec = single_key_spec();
	char *sql = batch_build_update(&spec, false);

	(void)state;
	assert_non_null(sql);
	expect_contains(sql,
			"  FROM \"public\".\"items\"\n"
			"  WHERE \"id\" OPERATOR(\"pg_catalog\".>) \"backfill\"._key_in($1::pg_catalog.text,"
			" NULL::\"pg_catalog\".\"int8\")\n"
			"  ORDER BY \"id\"\n"
			"  LIMIT $2\n");
	expect_absent(sql, "LIMIT $1");
	expect_params(sql, 2);
	assert_int_equal(count_occurrences(sql, "$1"), 1);
	assert_int_equal(count_occurrences(sql, "$2"), 1);
	expect_all_qualified(sql);
	free(sql);
}

static void test_update_composite_next(void **state)
{
	batch_spec_t spec = composite_key_spec();
	char *sql = batch_build_update(&spec, false);

	(void)state;
	assert_non_null(sql);
	expect_contains(sql,
			"  SELECT \"tenant_id\" AS __bf_k1, \"created_at\" AS __bf_k2\n"
			"  FROM \"public\".\"events\"\n"
			"  WHERE ROW(\"tenant_id\", \"created_at\") OPERATOR(\"pg_catalog\".>)"
			" ROW(\"backfill\"._key_in($1::pg_catalog.text, NULL::\"pg_catalog\".\"int4\"),"
			" \"backfill\"._key_in($2::pg_catalog.text, NULL::\"pg_catalog\".\"timestamptz\"))\n"
			"  ORDER BY \"tenant_id\", \"created_at\"\n"
			"  LIMIT $3\n");
	expect_params(sql, 3);
	expect_contains(sql, "SELECT * FROM __bf_keys ORDER BY __bf_k1, __bf_k2 LIMIT 1\n");
	expect_contains(sql, "SELECT * FROM __bf_keys ORDER BY __bf_k1 DESC, __bf_k2 DESC LIMIT 1\n");
	expect_contains(sql, "ROW(\"tenant_id\", \"created_at\") OPERATOR(\"pg_catalog\".>=)"
			     " ROW((SELECT __bf_k1 FROM __bf_first), (SELECT __bf_k2 FROM __bf_first))\n");
	expect_contains(sql, "    AND ROW(\"tenant_id\", \"created_at\") OPERATOR(\"pg_catalog\".<=)"
			     " ROW((SELECT __bf_k1 FROM __bf_last), (SELECT __bf_k2 FROM __bf_last))\n");
	/* The leading column's own range, for the planner's estimate. */
	expect_contains(sql,
			"    AND \"tenant_id\" OPERATOR(\"pg_catalog\".>=) (SELECT __bf_k1 FROM __bf_first)"
			" AND \"tenant_id\" OPERATOR(\"pg_catalog\".<=) (SELECT __bf_k1 FROM __bf_last)\n");
	expect_contains(sql, "(SELECT ARRAY[\"backfill\"._key_out(__bf_k1), \"backfill\"._key_out(__bf_k2)]"
			     "::pg_catalog.text[] FROM __bf_first) AS first_key");
	expect_all_qualified(sql);
	free(sql);
}

static void test_update_composite_first(void **state)
{
	batch_spec_t spec = composite_key_spec();
	char *sql = batch_build_update(&spec, true);

	(void)state;
	assert_non_null(sql);
	expect_contains(sql, "  FROM \"public\".\"events\"\n"
			     "  ORDER BY \"tenant_id\", \"created_at\"\n"
			     "  LIMIT $1\n");
	expect_absent(sql, "_key_in(");
	expect_params(sql, 1);
	expect_all_qualified(sql);
	free(sql);
}

static void test_key_operators_of_another_schema(void **state)
{
	static const char *const names[] = {"email"};
	static const char *const types[] = {"\"ext\".\"citext\""};
	batch_spec_t spec = single_key_spec();
	char *sql;

	(void)state;
	spec.key_names = names;
	spec.key_types = types;
	spec.key_op_schema = "ext";
	sql = batch_build_update(&spec, false);
	assert_non_null(sql);
	expect_contains(sql, "  WHERE \"email\" OPERATOR(\"ext\".>) \"backfill\"._key_in($1::pg_catalog.text,"
			     " NULL::\"ext\".\"citext\")\n");
	expect_contains(sql, "\"email\" OPERATOR(\"ext\".>=) (SELECT __bf_k1 FROM __bf_first)");
	expect_absent(sql, "OPERATOR(\"pg_catalog\"");
	free(sql);
}

static void test_update_names_needing_quotes(void **state)
{
	static const char *const names[] = {"Order"};
	static const char *const types[] = {"\"pg_catalog\".\"text\""};
	batch_spec_t spec = single_key_spec();
	char *sql;

	(void)state;
	spec.queue_schema = "Queue \"q\"";
	spec.target_schema = "my schema";
	spec.target_table = "we\"ird";
	spec.key_names = names;
	spec.key_types = types;
	sql = batch_build_update(&spec, false);
	assert_non_null(sql);
	expect_contains(sql, "  SELECT \"Order\" AS __bf_k1\n"
			     "  FROM \"my schema\".\"we\"\"ird\"\n"
			     "  WHERE \"Order\" OPERATOR(\"pg_catalog\".>) \"Queue \"\"q\"\"\"._key_in(");
	expect_contains(sql, "  UPDATE \"my schema\".\"we\"\"ird\" SET\n");
	assert_int_equal(count_occurrences(sql, "\"my schema\".\"we\"\"ird\""), 2);
	/* Never the raw names. */
	expect_absent(sql, "\"we\"ird\"");
	expect_absent(sql, " my schema");
	expect_absent(sql, "BY Order");
	expect_absent(sql, " Queue \"q\".");
	expect_params(sql, 2);
	free(sql);
}

static void test_update_where_absent(void **state)
{
	batch_spec_t spec = single_key_spec();
	char *with_null, *with_empty;

	(void)state;
	spec.where_sql = NULL;
	with_null = batch_build_update(&spec, false);
	spec.where_sql = "";
	with_empty = batch_build_update(&spec, false);
	assert_non_null(with_null);
	assert_non_null(with_empty);
	expect_absent(with_null, "AND (\n");
	/* The range is followed directly by RETURNING. */
	expect_contains(with_null,
			"    AND \"id\" OPERATOR(\"pg_catalog\".<=) (SELECT __bf_k1 FROM __bf_last)\n"
			"  RETURNING \"id\" OPERATOR(\"pg_catalog\".>) (SELECT __bf_k1 FROM"
			" __bf_last) AS __bf_moved\n");
	assert_string_equal(with_null, with_empty);
	free(with_null);
	free(with_empty);
}

static void test_update_where_given(void **state)
{
	batch_spec_t spec = composite_key_spec();
	char *sql;

	(void)state;
	spec.where_sql = "status = 'new' -- only the new ones";
	sql = batch_build_update(&spec, false);
	assert_non_null(sql);
	/* On its own line inside parentheses: the comment ends at the newline before ")". */
	expect_contains(sql,
			" (SELECT __bf_k1 FROM __bf_last)\n"
			"    AND (\n"
			"status = 'new' -- only the new ones\n"
			"    )\n"
			"  RETURNING ROW(\"tenant_id\", \"created_at\") OPERATOR(\"pg_catalog\".>) ROW(");
	assert_int_equal(count_occurrences(sql, "status = 'new'"), 1);
	expect_params(sql, 3);
	free(sql);
}

static void test_update_set_own_line(void **state)
{
	batch_spec_t spec = single_key_spec();
	char *sql;

	(void)state;
	spec.set_sql = "total = price * qty, -- recompute\n  note = 'x'";
	sql = batch_build_update(&spec, true);
	assert_non_null(sql);
	expect_contains(sql, "  UPDATE \"public\".\"items\" SET\n"
			     "total = price * qty, -- recompute\n"
			     "  note = 'x'\n"
			     "  WHERE \"id\" OPERATOR(\"pg_catalog\".>=) (SELECT __bf_k1 FROM __bf_first)\n");
	assert_int_equal(count_occurrences(sql, "recompute"), 1);
	free(sql);
}

static void test_verify_batch(void **state)
{
	batch_spec_t spec = single_key_spec();
	char *sql;

	(void)state;
	spec.set_sql = NULL;
	spec.mismatch_sql = "a IS DISTINCT FROM b";
	sql = batch_build_verify(&spec, false);
	assert_non_null(sql);
	expect_absent(sql, "UPDATE");
	expect_contains(sql, ", __bf_changed AS MATERIALIZED (\n  SELECT ARRAY[\"backfill\"._key_out(\"id\")]"
			     "::pg_catalog.text[] AS key\n  FROM \"public\".\"items\"\n  WHERE ");
	expect_contains(sql, "    AND (\na IS DISTINCT FROM b\n    )\n)\n");
	expect_contains(sql, "pg_catalog.set_config('backfilld.mismatches', coalesce((SELECT "
			     "pg_catalog.jsonb_agg(key) FROM __bf_changed)::pg_catalog.text, ''), true)");
	expect_params(sql, 2);
	expect_all_qualified(sql);
	free(sql);
}

static void test_statement_batch(void **state)
{
	batch_spec_t spec = single_key_spec();
	char *first, *next;

	(void)state;
	spec.set_sql = NULL;
	first = batch_build_statement(&spec, true);
	next = batch_build_statement(&spec, false);
	assert_non_null(first);
	assert_non_null(next);
	/* The job's SQL is a parameter, run once through the queue schema's function, as the role. */
	expect_contains(first,
			"  SELECT \"backfill\"._statement_batch($2::pg_catalog.text, __bf_first.__bf_k1,"
			" __bf_last.__bf_k1) AS __bf_rows\n  FROM __bf_first, __bf_last\n");
	expect_contains(next, "_statement_batch($3::pg_catalog.text, ");
	expect_contains(next, "coalesce((SELECT __bf_rows FROM __bf_changed), 0) AS changed");
	expect_absent(next, "UPDATE");
	expect_absent(next, "_keys_moved");
	expect_params(first, 2);
	expect_params(next, 3);
	expect_all_qualified(next);
	free(first);
	free(next);
}

static void test_slice_upper_bound(void **state)
{
	static const char *const upper[] = {"7", "it's \\ here"};
	batch_spec_t spec = composite_key_spec();
	char *next, *first, *peek;

	(void)state;
	spec.upper = upper;
	next = batch_build_update(&spec, false);
	first = batch_build_update(&spec, true);
	peek = batch_build_peek(&spec, true);
	/* The bound is a literal read back like a checkpoint, through _key_in. */
	expect_contains(next,
			"  AND ROW(\"tenant_id\", \"created_at\") OPERATOR(\"pg_catalog\".<=)"
			" ROW(\"backfill\"._key_in(E'7', NULL::\"pg_catalog\".\"int4\"),"
			" \"backfill\"._key_in(E'it''s \\\\ here', NULL::\"pg_catalog\".\"timestamptz\"))\n");
	expect_contains(first, "  WHERE ROW(\"tenant_id\", \"created_at\") OPERATOR(\"pg_catalog\".<=) ROW(");
	expect_contains(peek, "WHERE ROW(\"tenant_id\", \"created_at\") OPERATOR(\"pg_catalog\".<=) ROW(");
	expect_params(next, 3);
	expect_params(first, 1);
	expect_params(peek, 0);
	free(next);
	free(first);
	free(peek);
}

/* ---- the other statements of a job's session ---- */

static void test_peek(void **state)
{
	batch_spec_t spec = composite_key_spec();
	char *first = batch_build_peek(&spec, true), *next = batch_build_peek(&spec, false);

	(void)state;
	expect_contains(first,
			"SELECT pg_catalog.set_config('backfilld.skip_key', ARRAY[\"backfill\"._key_out("
			"\"tenant_id\"), \"backfill\"._key_out(\"created_at\")]::pg_catalog.text[]"
			"::pg_catalog.text, true)\nFROM \"public\".\"events\"\nORDER BY \"tenant_id\","
			" \"created_at\"\nLIMIT 1");
	expect_contains(next, "WHERE ROW(\"tenant_id\", \"created_at\") OPERATOR(\"pg_catalog\".>) ROW(");
	expect_params(next, 2);
	expect_all_qualified(first);
	expect_all_qualified(next);
	free(first);
	free(next);
}

static void test_bounds(void **state)
{
	batch_spec_t spec = single_key_spec();
	char *sql = batch_build_bounds(&spec);

	(void)state;
	assert_string_equal(sql, "SELECT \"backfill\"._set_bounds($1::pg_catalog.int8, $2::pg_catalog.text,"
				 " \"backfill\"._key_out(pg_catalog.min(\"id\")), \"backfill\"._key_out("
				 "pg_catalog.max(\"id\")))\nFROM \"public\".\"items\"");
	free(sql);
}

static void test_privileges(void **state)
{
	(void)state;
	expect_contains(batch_privileges_sql(true), "pg_catalog.has_any_column_privilege($1::pg_catalog.oid,"
						    " 'UPDATE')");
	expect_absent(batch_privileges_sql(false), "UPDATE");
	expect_params(batch_privileges_sql(true), 1);
	expect_params(batch_privileges_sql(false), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_quote_plain),
		cmocka_unit_test(test_quote_embedded_quotes),
		cmocka_unit_test(test_quote_empty),
		cmocka_unit_test(test_quote_unicode),
		cmocka_unit_test(test_job_kind_round_trip),
		cmocka_unit_test(test_job_kind_rejects),
		cmocka_unit_test(test_job_kind_table),
		cmocka_unit_test(test_update_single_first),
		cmocka_unit_test(test_update_single_next),
		cmocka_unit_test(test_update_composite_next),
		cmocka_unit_test(test_update_composite_first),
		cmocka_unit_test(test_key_operators_of_another_schema),
		cmocka_unit_test(test_update_names_needing_quotes),
		cmocka_unit_test(test_update_where_absent),
		cmocka_unit_test(test_update_where_given),
		cmocka_unit_test(test_update_set_own_line),
		cmocka_unit_test(test_verify_batch),
		cmocka_unit_test(test_statement_batch),
		cmocka_unit_test(test_slice_upper_bound),
		cmocka_unit_test(test_peek),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_privileges),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
