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

#define MAX_PARAMS 64

static void expect_quoted(const char *name, const char *want)
{
	char *q = sql_quote_ident(name);

	assert_non_null(q);
	assert_string_equal(q, want);
	free(q);
}

static void expect_contains(const char *sql, const char *needle)
{
	if (!strstr(sql, needle))
		fail_msg("missing <<%s>> in:\n%s", needle, sql);
}

static void expect_absent(const char *sql, const char *needle)
{
	if (strstr(sql, needle))
		fail_msg("unexpected <<%s>> in:\n%s", needle, sql);
}

static int count_occurrences(const char *sql, const char *needle)
{
	int n = 0;

	for (const char *p = strstr(sql, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

/*
 * Check that the $N placeholders in SQL are exactly $1..$want: the highest is $want and
 * none of the numbers below it is missing (a gap would make PostgreSQL fail to infer a type).
 */
static void expect_params(const char *sql, int want)
{
	bool seen[MAX_PARAMS + 1] = {false};
	int highest = 0;

	for (const char *p = strchr(sql, '$'); p; p = strchr(p + 1, '$')) {
		int n = 0;
		const char *d = p + 1;

		if (*d < '0' || *d > '9')
			fail_msg("a '$' not followed by a digit in:\n%s", sql);
		for (; *d >= '0' && *d <= '9'; d++)
			n = n * 10 + (*d - '0');
		if (n < 1 || n > MAX_PARAMS)
			fail_msg("parameter $%d out of range in:\n%s", n, sql);
		seen[n] = true;
		if (n > highest)
			highest = n;
	}
	assert_int_equal(highest, want);
	for (int i = 1; i <= want; i++)
		if (!seen[i])
			fail_msg("parameter $%d missing in:\n%s", i, sql);
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
		.kind = JOB_KIND_UPDATE,
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

/*
 * Every function, cast and operator the daemon adds to a job's session is qualified, so that
 * nothing a user creates on the session's search_path can stand in for it: each NEEDLE in SQL is
 * preceded by PREFIX.
 */
static void expect_qualified(const char *sql, const char *needle, const char *prefix)
{
	size_t plen = strlen(prefix);

	for (const char *p = strstr(sql, needle); p; p = strstr(p + 1, needle))
		if ((size_t)(p - sql) < plen || strncmp(p - plen, prefix, plen) != 0)
			fail_msg("<<%s>> without <<%s>> at offset %d in:\n%s", needle, prefix, (int)(p - sql),
				 sql);
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
	char *sql = batch_build_batch(&spec, true);

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
	assert_int_equal(batch_nparams(&spec, true), 1);

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
	char *sql = batch_build_batch(&spec, false);

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
	assert_int_equal(batch_nparams(&spec, false), 2);
	assert_int_equal(count_occurrences(sql, "$1"), 1);
	assert_int_equal(count_occurrences(sql, "$2"), 1);
	expect_all_qualified(sql);
	free(sql);
}

static void test_update_composite_next(void **state)
{
	batch_spec_t spec = composite_key_spec();
	char *sql = batch_build_batch(&spec, false);

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
	assert_int_equal(batch_nparams(&spec, false), 3);
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
	char *sql = batch_build_batch(&spec, true);

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
	sql = batch_build_batch(&spec, false);
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
	sql = batch_build_batch(&spec, false);
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
	with_null = batch_build_batch(&spec, false);
	spec.where_sql = "";
	with_empty = batch_build_batch(&spec, false);
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
	sql = batch_build_batch(&spec, false);
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
	sql = batch_build_batch(&spec, true);
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
	spec.kind = JOB_KIND_VERIFY;
	spec.set_sql = NULL;
	spec.mismatch_sql = "a IS DISTINCT FROM b";
	sql = batch_build_batch(&spec, false);
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
	spec.kind = JOB_KIND_STATEMENT;
	spec.set_sql = NULL;
	first = batch_build_batch(&spec, true);
	next = batch_build_batch(&spec, false);
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
	assert_int_equal(batch_nparams(&spec, true), 2);
	assert_int_equal(batch_nparams(&spec, false), 3);
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
	next = batch_build_batch(&spec, false);
	first = batch_build_batch(&spec, true);
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

static void test_queue_schema_statements(void **state)
{
	static const struct {
		char *(*build)(const char *schema);
		const char *call;
		int params;
	} statements[] = {
		{batch_build_split, "._make_slices(j.id, $2::pg_catalog.text, ", 3},
		{batch_build_open, "._batch_open($3::pg_catalog.oid) AS w", 3},
		{batch_build_waiters, "._waiters($1::pg_catalog.oid) AS w", 1},
		{batch_build_mismatches, "._record_mismatches($1::pg_catalog.int8, $2::pg_catalog.text)", 2},
		{batch_build_checkpoint, "._checkpoint($1::pg_catalog.int8, $2::pg_catalog.text,", 12},
		{batch_build_skip,
		 "._skip_row($1::pg_catalog.int8, $2::pg_catalog.text, $3::pg_catalog.int4,", 6},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(statements) / sizeof(statements[0]); i++) {
		char *sql = statements[i].build("Queue \"q\"");
		char call[256];

		snprintf(call, sizeof(call), "\"Queue \"\"q\"\"\"%s", statements[i].call);
		expect_contains(sql, call);
		expect_absent(sql, " Queue \"q\".");
		expect_absent(sql, "@q@");
		expect_params(sql, statements[i].params);
		expect_qualified(sql, "set_config(", "pg_catalog.");
		free(sql);
	}
}

static void test_open_sets_only_the_daemons_own_settings(void **state)
{
	char *sql = batch_build_open("backfill");

	(void)state;
	expect_contains(sql, "pg_catalog.set_config('statement_timeout', $1::pg_catalog.text, true)");
	expect_contains(sql, "pg_catalog.set_config('lock_timeout', $2::pg_catalog.text, true)");
	assert_int_equal(count_occurrences(sql, "set_config("), 2);
	expect_absent(sql, "role");
	expect_absent(sql, "search_path");
	free(sql);
}

static void test_privileges(void **state)
{
	(void)state;
	expect_contains(batch_privileges_sql(JOB_KIND_UPDATE),
			"pg_catalog.has_any_column_privilege($1::pg_catalog.oid,"
			" 'UPDATE')");
	expect_absent(batch_privileges_sql(JOB_KIND_VERIFY), "UPDATE");
	expect_params(batch_privileges_sql(JOB_KIND_STATEMENT), 1);
	expect_params(batch_dry_wal_sql, 0);
	expect_qualified(batch_dry_wal_sql, "current_setting(", "pg_catalog.");
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
		cmocka_unit_test(test_queue_schema_statements),
		cmocka_unit_test(test_open_sets_only_the_daemons_own_settings),
		cmocka_unit_test(test_privileges),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
