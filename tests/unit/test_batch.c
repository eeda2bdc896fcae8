/*
 * Unit tests for batch.c: identifier quoting, job kinds, and the exact text of the keyset
 * update and the checkpoint (quoting, parameter numbering, where the user's fragments go).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "batch.h"

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

/* ---- batch_build_update ---- */

static const char *const id_name[] = {"id"};
static const char *const id_type[] = {"bigint"};

static batch_spec_t single_key_spec(void)
{
	batch_spec_t spec = {
		.kind = JOB_KIND_UPDATE,
		.target_schema = "public",
		.target_table = "items",
		.nkeys = 1,
		.key_names = id_name,
		.key_types = id_type,
		.set_sql = "flag = true",
		.where_sql = NULL,
	};
	return spec;
}

static const char *const pair_names[] = {"tenant_id", "created_at"};
static const char *const pair_types[] = {"integer", "timestamp with time zone"};

static batch_spec_t composite_key_spec(void)
{
	batch_spec_t spec = single_key_spec();

	spec.target_table = "events";
	spec.nkeys = 2;
	spec.key_names = pair_names;
	spec.key_types = pair_types;
	return spec;
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
	expect_absent(sql, ") > (");
	expect_absent(sql, "::bigint");
	expect_absent(sql, "$2");
	expect_params(sql, 1);

	expect_contains(sql, "SELECT * FROM __bf_keys ORDER BY __bf_k1 LIMIT 1\n");
	expect_contains(sql, "SELECT * FROM __bf_keys ORDER BY __bf_k1 DESC LIMIT 1\n");
	expect_contains(sql, "  UPDATE \"public\".\"items\" SET\nflag = true\n  WHERE (");
	expect_contains(sql, "(\"id\") >= (SELECT __bf_k1 FROM __bf_first)\n");
	expect_contains(sql, "    AND (\"id\") <= (SELECT __bf_k1 FROM __bf_last)\n");
	/* The leading-column range is only for composite keys. */
	expect_absent(sql, "AND \"id\" >=");
	expect_contains(sql, "  RETURNING 1\n)\n");
	expect_contains(sql, "(SELECT ARRAY[__bf_k1::text] FROM __bf_first) AS first_key");
	expect_contains(sql, "(SELECT ARRAY[__bf_k1::text] FROM __bf_last) AS last_key");
	expect_contains(sql, "set_config('backfilld.scanned', s.scanned::text, true)");
	expect_contains(sql, "set_config('backfilld.changed', s.changed::text, true)");
	expect_contains(sql, "set_config('backfilld.first_key', coalesce(s.first_key::text, ''), true)");
	expect_contains(sql, "set_config('backfilld.last_key', coalesce(s.last_key::text, ''), true)");
	assert_int_equal(count_occurrences(sql, "__bf_k2"), 0);
	free(sql);
}

static void test_update_single_next(void **state)
{
	batch_spec_t spec = single_key_spec();
	char *sql = batch_build_update(&spec, false);

	(void)state;
	assert_non_null(sql);
	expect_contains(sql, "  FROM \"public\".\"items\"\n"
			     "  WHERE (\"id\") > ($1::bigint)\n"
			     "  ORDER BY \"id\"\n"
			     "  LIMIT $2\n");
	expect_absent(sql, "LIMIT $1");
	expect_absent(sql, "$3");
	expect_params(sql, 2);
	assert_int_equal(count_occurrences(sql, "$1"), 1);
	assert_int_equal(count_occurrences(sql, "$2"), 1);
	expect_absent(sql, "AND \"id\" >=");
	free(sql);
}

static void test_update_composite_next(void **state)
{
	batch_spec_t spec = composite_key_spec();
	char *sql = batch_build_update(&spec, false);

	(void)state;
	assert_non_null(sql);
	expect_contains(
		sql, "  SELECT \"tenant_id\" AS __bf_k1, \"created_at\" AS __bf_k2\n"
		     "  FROM \"public\".\"events\"\n"
		     "  WHERE (\"tenant_id\", \"created_at\") > ($1::integer, $2::timestamp with time zone)\n"
		     "  ORDER BY \"tenant_id\", \"created_at\"\n"
		     "  LIMIT $3\n");
	expect_params(sql, 3);
	expect_absent(sql, "$4");
	expect_contains(sql, "SELECT * FROM __bf_keys ORDER BY __bf_k1, __bf_k2 LIMIT 1\n");
	expect_contains(sql, "SELECT * FROM __bf_keys ORDER BY __bf_k1 DESC, __bf_k2 DESC LIMIT 1\n");
	expect_contains(sql,
			"(\"tenant_id\", \"created_at\") >= (SELECT __bf_k1, __bf_k2 FROM __bf_first)\n");
	expect_contains(
		sql, "    AND (\"tenant_id\", \"created_at\") <= (SELECT __bf_k1, __bf_k2 FROM __bf_last)\n");
	/* The leading column's own range, for the planner's estimate. */
	expect_contains(sql, "    AND \"tenant_id\" >= (SELECT __bf_k1 FROM __bf_first)"
			     " AND \"tenant_id\" <= (SELECT __bf_k1 FROM __bf_last)\n");
	expect_absent(sql, "AND \"created_at\" >=");
	expect_contains(sql, "(SELECT ARRAY[__bf_k1::text, __bf_k2::text] FROM __bf_first) AS first_key");
	expect_contains(sql, "(SELECT ARRAY[__bf_k1::text, __bf_k2::text] FROM __bf_last) AS last_key");
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
	expect_absent(sql, ") > (");
	expect_absent(sql, "::integer");
	expect_params(sql, 1);
	expect_contains(sql, "    AND \"tenant_id\" >= (SELECT __bf_k1 FROM __bf_first)"
			     " AND \"tenant_id\" <= (SELECT __bf_k1 FROM __bf_last)\n");
	free(sql);
}

static void test_update_three_keys(void **state)
{
	static const char *const names[] = {"a", "b", "c"};
	static const char *const types[] = {"text", "numeric(10,2)", "uuid"};
	batch_spec_t spec = single_key_spec();
	char *sql;

	(void)state;
	spec.nkeys = 3;
	spec.key_names = names;
	spec.key_types = types;
	sql = batch_build_update(&spec, false);
	assert_non_null(sql);
	expect_contains(sql, "  WHERE (\"a\", \"b\", \"c\") > ($1::text, $2::numeric(10,2), $3::uuid)\n");
	expect_contains(sql, "  LIMIT $4\n");
	expect_params(sql, 4);
	expect_contains(sql, "ORDER BY __bf_k1 DESC, __bf_k2 DESC, __bf_k3 DESC LIMIT 1\n");
	free(sql);
}

static void test_update_names_needing_quotes(void **state)
{
	static const char *const names[] = {"Order"};
	static const char *const types[] = {"text"};
	batch_spec_t spec = single_key_spec();
	char *sql;

	(void)state;
	spec.target_schema = "my schema";
	spec.target_table = "we\"ird";
	spec.key_names = names;
	spec.key_types = types;
	sql = batch_build_update(&spec, false);
	assert_non_null(sql);
	expect_contains(sql, "  SELECT \"Order\" AS __bf_k1\n"
			     "  FROM \"my schema\".\"we\"\"ird\"\n"
			     "  WHERE (\"Order\") > ($1::text)\n"
			     "  ORDER BY \"Order\"\n");
	expect_contains(sql, "  UPDATE \"my schema\".\"we\"\"ird\" SET\n");
	expect_contains(sql, "(\"Order\") >= (SELECT __bf_k1 FROM __bf_first)");
	assert_int_equal(count_occurrences(sql, "\"my schema\".\"we\"\"ird\""), 2);
	/* Never the raw names. */
	expect_absent(sql, "\"we\"ird\"");
	expect_absent(sql, " my schema");
	expect_absent(sql, "BY Order");
	expect_absent(sql, "(Order)");
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
	expect_absent(with_empty, "AND (\n");
	/* The range is followed directly by RETURNING. */
	expect_contains(with_null, "    AND (\"id\") <= (SELECT __bf_k1 FROM __bf_last)\n  RETURNING 1\n");
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
	expect_contains(sql, " AND \"tenant_id\" <= (SELECT __bf_k1 FROM __bf_last)\n"
			     "    AND (\n"
			     "status = 'new' -- only the new ones\n"
			     "    )\n"
			     "  RETURNING 1\n");
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
			     "  WHERE (\"id\") >= (SELECT __bf_k1 FROM __bf_first)\n");
	assert_int_equal(count_occurrences(sql, "recompute"), 1);
	free(sql);
}

/* ---- the checkpoint and the opening statement ---- */

static void test_checkpoint(void **state)
{
	char *sql = batch_build_checkpoint("backfilld");

	(void)state;
	assert_non_null(sql);
	expect_contains(sql, "SELECT state, rows_scanned, rows_changed, batches, rows_estimate, wal_bytes,"
			     " slice_done, wal_lsn FROM \"backfilld\"._checkpoint(");
	expect_contains(sql, "$1::bigint, $2::text, $3::int, $4::int, $5::int, $6::int, $7::int, $8::bigint,"
			     " $9::bigint, $10::int, $11::text, $12::int)");
	expect_params(sql, 12);
	expect_absent(sql, "$13");
	free(sql);
}

static void test_checkpoint_quotes_schema(void **state)
{
	char *sql = batch_build_checkpoint("Queue \"q\"");

	(void)state;
	assert_non_null(sql);
	expect_contains(sql, " FROM \"Queue \"\"q\"\"\"._checkpoint($1::bigint,");
	expect_absent(sql, " Queue \"q\".");
	expect_params(sql, 12);
	free(sql);
}

static void test_open_sql(void **state)
{
	(void)state;
	expect_params(batch_open_sql, 2);
	expect_contains(batch_open_sql, "set_config('statement_timeout', $1, true)");
	expect_contains(batch_open_sql, "set_config('lock_timeout', $2, true)");
	expect_absent(batch_open_sql, "role"); /* the user's SQL runs in run_as's function instead */
	expect_contains(batch_open_sql,
			"set_config('backfilld.lsn0', pg_current_wal_insert_lsn()::text, true)");
}

/* ---- the SECURITY DEFINER functions the batches run in ---- */

static const char *const fn_keys[] = {"tenant", "seq"};
static const char *const fn_types[] = {"integer", "character varying(20)"};

static batch_spec_t fn_spec(void)
{
	return (batch_spec_t){.kind = JOB_KIND_UPDATE,
			      .target_schema = "public",
			      .target_table = "events",
			      .nkeys = 2,
			      .key_names = fn_keys,
			      .key_types = fn_types,
			      .set_sql = "v = w",
			      .where_sql = "v IS DISTINCT FROM w"};
}

static void test_function_next(void **state)
{
	batch_spec_t spec = fn_spec();
	char *sql = batch_build_function(&spec, BATCH_FN_NEXT);
	char *body = batch_build_update(&spec, false);

	(void)state;
	expect_contains(sql, "CREATE OR REPLACE FUNCTION pg_temp.backfilld_batch_next(integer, character "
			     "varying(20), bigint)");
	expect_contains(sql, "LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = \"$user\", public");
	expect_contains(sql, "AS $bf0$\n");
	expect_contains(sql, body);
	expect_contains(sql, "__bf_scanned bigint");
	free(body);
	free(sql);
}

static void test_function_tag_avoids_the_body(void **state)
{
	batch_spec_t spec = fn_spec();
	char *sql;

	(void)state;
	spec.set_sql = "v = $bf0$x$bf0$ || $bf1$y$bf1$";
	sql = batch_build_function(&spec, BATCH_FN_FIRST);
	expect_contains(sql, "AS $bf2$\n");
	expect_contains(sql, "\n$bf2$");
	expect_contains(sql, "CREATE OR REPLACE FUNCTION pg_temp.backfilld_batch_first(bigint)");
	free(sql);
}

static void test_function_peek_and_owner_and_call(void **state)
{
	batch_spec_t spec = fn_spec();
	char *peek = batch_build_function(&spec, BATCH_FN_PEEK_FIRST);
	char *owner = batch_build_function_owner(&spec, BATCH_FN_PEEK_NEXT, "app \"owner\"");
	char *call = batch_build_call(&spec, BATCH_FN_NEXT);
	char *call_first = batch_build_call(&spec, BATCH_FN_PEEK_FIRST);

	(void)state;
	expect_contains(peek, "pg_temp.backfilld_peek_first()");
	expect_contains(peek, "RETURNS TABLE(__bf_key text)");
	expect_contains(owner, "ALTER FUNCTION pg_temp.backfilld_peek_next(integer, character varying(20)) "
			       "OWNER TO \"app \"\"owner\"\"\"");
	assert_string_equal(call, "SELECT * FROM pg_temp.backfilld_batch_next($1, $2, $3)");
	assert_string_equal(call_first, "SELECT * FROM pg_temp.backfilld_peek_first()");
	free(peek);
	free(owner);
	free(call);
	free(call_first);
}

/* ---- slices of a parallel job ---- */

static void test_slice_upper_bound(void **state)
{
	static const char *const upper[] = {"7", "it's \\ here"};
	batch_spec_t spec = fn_spec();
	char *next, *first, *peek, *plain;

	(void)state;
	spec.upper = upper;
	next = batch_build_update(&spec, false);
	first = batch_build_update(&spec, true);
	peek = batch_build_peek(&spec, true);
	spec.upper = NULL;
	plain = batch_build_update(&spec, false);
	/* A literal that survives quotes and backslashes whatever standard_conforming_strings says. */
	expect_contains(next,
			"    AND (\"tenant\", \"seq\") <= (E'7'::integer, E'it''s \\\\ here'::character "
			"varying(20))\n  ORDER BY");
	expect_contains(first,
			"  FROM \"public\".\"events\"\n  WHERE (\"tenant\", \"seq\") <= (E'7'::integer,");
	expect_contains(peek, "WHERE (\"tenant\", \"seq\") <= (E'7'::integer,");
	expect_params(next, 3);
	expect_params(first, 1);
	expect_absent(plain, "<= (E'");
	free(next);
	free(first);
	free(peek);
	free(plain);
}

static void test_slice_statement_and_split(void **state)
{
	static const char *const upper[] = {"100"};
	batch_spec_t spec = single_key_spec();
	char *body, *split, *call, *owner;

	(void)state;
	spec.kind = JOB_KIND_STATEMENT;
	spec.set_sql = NULL;
	spec.batch_sql = "SELECT $1, $2";
	spec.upper = upper;
	body = batch_build_function(&spec, BATCH_FN_NEXT);
	expect_contains(body, "WHERE \"id\" > $1\n          AND (\"id\") <= (E'100'::bigint)\n");
	split = batch_build_function(&spec, BATCH_FN_SPLIT);
	call = batch_build_call(&spec, BATCH_FN_SPLIT);
	owner = batch_build_function_owner(&spec, BATCH_FN_SPLIT, "app");
	expect_contains(split, "CREATE OR REPLACE FUNCTION pg_temp.backfilld_split(int)");
	expect_contains(split, "LANGUAGE plpgsql");
	expect_contains(split, "s.schemaname = E'public'::name AND s.tablename = E'items'::name"
			       " AND s.attname = E'id'::name");
	/* A numeric key without statistics: min and max from the index, not a sample. */
	expect_contains(split, "min(\"id\")::numeric");
	expect_absent(split, "TABLESAMPLE");
	expect_contains(split, "WHERE \"id\" >= __bf_v::bigint ORDER BY \"id\" LIMIT 1");
	expect_contains(split, "set_config('backfilld.split', __bf_out::text, false)");
	assert_string_equal(call, "SELECT * FROM pg_temp.backfilld_split($1)");
	assert_string_equal(owner, "ALTER FUNCTION pg_temp.backfilld_split(int) OWNER TO \"app\"");
	free(body);
	free(split);
	free(call);
	free(owner);

	spec = fn_spec(); /* a text-like first column: sampled when there are no statistics */
	spec.key_types = (const char *const[]){"text", "integer"};
	split = batch_build_split(&spec);
	expect_contains(split, "TABLESAMPLE SYSTEM");
	expect_contains(split, "pg_relation_size(E'\"public\".\"events\"'::regclass)");
	expect_contains(split, "ORDER BY \"tenant\", \"seq\" LIMIT 1");
	free(split);
}

/* ---- the faster PL/pgSQL form for a one-column key ---- */

static void test_fast_function(void **state)
{
	batch_spec_t spec = single_key_spec();
	char *next, *first, *plain, *verify;
	static const char *const uuid_type[] = {"uuid"};
	static const char *const upper[] = {"500"};

	(void)state;
	spec.where_sql = "flag IS NOT TRUE";
	next = batch_build_fast_function(&spec, BATCH_FN_NEXT);
	plain = batch_build_function(&spec, BATCH_FN_NEXT);
	assert_non_null(next);
	/* It replaces the SQL function: same name, arguments and result. */
	expect_contains(next, "CREATE OR REPLACE FUNCTION pg_temp.backfilld_batch_next(bigint, bigint)\n"
			      "RETURNS TABLE(__bf_scanned bigint, __bf_changed bigint, __bf_first text[], "
			      "__bf_last text[], __bf_s1 text, __bf_s2 text, __bf_s3 text, __bf_s4 text)\n");
	expect_contains(plain, "backfilld_batch_next(bigint, bigint)\nRETURNS TABLE(__bf_scanned bigint, "
			       "__bf_changed bigint, __bf_first text[], __bf_last text[], __bf_s1 text, "
			       "__bf_s2 text, __bf_s3 text, __bf_s4 text)\n");
	expect_contains(next,
			"LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = \"$user\", public");
	expect_contains(next, "  SELECT min(__bf_k1), max(__bf_k1), count(*) INTO __bf_lo, __bf_hi, __bf_n\n"
			      "  FROM (SELECT \"id\" AS __bf_k1 FROM \"public\".\"items\"\n"
			      "        WHERE \"id\" > $1\n        ORDER BY \"id\" LIMIT $2) AS __bf_keys;\n");
	expect_contains(next, "  __bf_lo bigint;\n  __bf_hi bigint;\n");
	expect_contains(
		next,
		"    UPDATE \"public\".\"items\" SET\nflag = true\n"
		"    WHERE \"id\" >= __bf_lo AND \"id\" <= __bf_hi\n      AND (\nflag IS NOT TRUE\n      );\n"
		"    GET DIAGNOSTICS __bf_rows = ROW_COUNT;\n");
	expect_contains(next, "set_config('backfilld.last_key', CASE WHEN __bf_n > 0 THEN "
			      "ARRAY[__bf_hi::text]::text ELSE '' END, true)");
	expect_absent(next, "backfilld.mismatches");
	spec.upper = upper;
	first = batch_build_fast_function(&spec, BATCH_FN_FIRST);
	expect_contains(first, "backfilld_batch_first(bigint)");
	expect_contains(first,
			"        WHERE (\"id\") <= (E'500'::bigint)\n        ORDER BY \"id\" LIMIT $1)");
	expect_absent(first, "$2");

	spec.upper = NULL;
	spec.kind = JOB_KIND_VERIFY;
	spec.mismatch_sql = "flag IS NULL";
	verify = batch_build_fast_function(&spec, BATCH_FN_NEXT);
	expect_contains(verify,
			"SELECT jsonb_agg(jsonb_build_array(\"id\"::text)), count(*) INTO __bf_found, "
			"__bf_rows\n");
	expect_contains(verify, "AND (\nflag IS NULL\n      );");
	expect_contains(verify, "set_config('backfilld.mismatches', coalesce(__bf_found::text, ''), true)");
	expect_contains(verify, "__bf_s4 text, __bf_s5 text)");
	expect_absent(verify, "UPDATE");

	/* No faster form: peeks, statement jobs, composite keys, types without min/max. */
	assert_null(batch_build_fast_function(&spec, BATCH_FN_PEEK_NEXT));
	spec.kind = JOB_KIND_STATEMENT;
	assert_null(batch_build_fast_function(&spec, BATCH_FN_NEXT));
	spec = composite_key_spec();
	assert_null(batch_build_fast_function(&spec, BATCH_FN_NEXT));
	spec = single_key_spec();
	spec.key_types = uuid_type;
	assert_null(batch_build_fast_function(&spec, BATCH_FN_FIRST));
	free(next);
	free(plain);
	free(first);
	free(verify);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_function_next),
		cmocka_unit_test(test_function_tag_avoids_the_body),
		cmocka_unit_test(test_function_peek_and_owner_and_call),
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
		cmocka_unit_test(test_update_three_keys),
		cmocka_unit_test(test_update_names_needing_quotes),
		cmocka_unit_test(test_update_where_absent),
		cmocka_unit_test(test_update_where_given),
		cmocka_unit_test(test_update_set_own_line),
		cmocka_unit_test(test_checkpoint),
		cmocka_unit_test(test_checkpoint_quotes_schema),
		cmocka_unit_test(test_open_sql),
		cmocka_unit_test(test_slice_upper_bound),
		cmocka_unit_test(test_fast_function),
		cmocka_unit_test(test_slice_statement_and_split),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
