/*
 * Batch SQL. The update walks keys with a MATERIALIZED CTE (index-ordered, LIMIT n), then
 * updates the range [first, last] of those keys: bounds that reach the executor as values,
 * so the target is read by a bounded index scan whatever the planner estimates.
 */
#include "batch.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A growing string; allocation failure aborts (we are a daemon, not a library). */
typedef struct sbuf {
	char *data;
	size_t len, cap;
} sbuf_t;

static void sbuf_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sbuf_printf(sbuf_t *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		size_t room = b->cap - b->len;
		va_start(ap, fmt);
		n = vsnprintf(b->data ? b->data + b->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0)
			abort();
		if ((size_t)n < room) {
			b->len += (size_t)n;
			return;
		}
		b->cap = (b->cap + (size_t)n + 1) * 2;
		b->data = realloc(b->data, b->cap);
		if (!b->data)
			abort();
	}
}

static const char *const kind_names[] = {
	[JOB_KIND_UPDATE] = "update",
	[JOB_KIND_STATEMENT] = "statement",
	[JOB_KIND_VERIFY] = "verify",
};

bool job_kind_parse(const char *text, job_kind_t *out)
{
	for (size_t i = 0; i < sizeof(kind_names) / sizeof(kind_names[0]); i++) {
		if (text && strcmp(text, kind_names[i]) == 0) {
			*out = (job_kind_t)i;
			return true;
		}
	}
	return false;
}

const char *job_kind_name(job_kind_t kind)
{
	return (unsigned)kind < sizeof(kind_names) / sizeof(kind_names[0]) ? kind_names[kind] : "?";
}

char *sql_quote_ident(const char *name)
{
	size_t len = strlen(name);
	char *out = malloc(len * 2 + 3), *p = out;

	if (!out)
		abort();
	*p++ = '"';
	for (const char *s = name; *s; s++) {
		if (*s == '"')
			*p++ = '"';
		*p++ = *s;
	}
	*p++ = '"';
	*p = '\0';
	return out;
}

/* "a", "b" or __bf_k1, __bf_k2 (with optional DESC) */
static void sbuf_keys(sbuf_t *b, const batch_spec_t *spec, bool aliases, const char *suffix)
{
	for (int i = 0; i < spec->nkeys; i++) {
		if (aliases) {
			sbuf_printf(b, "%s__bf_k%d%s", i ? ", " : "", i + 1, suffix);
		} else {
			char *q = sql_quote_ident(spec->key_names[i]);
			sbuf_printf(b, "%s%s%s", i ? ", " : "", q, suffix);
			free(q);
		}
	}
}

/* VALUE as an escape-string literal of TYPE: E'it''s'::text (independent of
 * standard_conforming_strings). */
static void sbuf_literal(sbuf_t *b, const char *value, const char *type)
{
	sbuf_printf(b, "E'");
	for (const char *p = value; *p; p++)
		sbuf_printf(b, *p == '\'' ? "''" : *p == '\\' ? "\\\\" : "%c", *p);
	sbuf_printf(b, "'::%s", type);
}

/* " AND (k1, k2) <= (upper)" for a slice; nothing without an upper bound. CONNECTOR opens it. */
static void sbuf_upper(sbuf_t *b, const batch_spec_t *spec, const char *connector)
{
	if (!spec->upper)
		return;
	sbuf_printf(b, "%s(", connector);
	sbuf_keys(b, spec, false, "");
	sbuf_printf(b, ") <= (");
	for (int i = 0; i < spec->nkeys; i++) {
		sbuf_printf(b, "%s", i ? ", " : "");
		sbuf_literal(b, spec->upper[i], spec->key_types[i]);
	}
	sbuf_printf(b, ")\n");
}

char *batch_build_update(const batch_spec_t *spec, bool first)
{
	sbuf_t b = {0};
	char *schema = sql_quote_ident(spec->target_schema);
	char *table = sql_quote_ident(spec->target_table);
	int limit_param = first ? 1 : spec->nkeys + 1;

	/* The keys of this batch, in index order. */
	sbuf_printf(&b, "WITH __bf_keys AS MATERIALIZED (\n  SELECT ");
	for (int i = 0; i < spec->nkeys; i++) {
		char *q = sql_quote_ident(spec->key_names[i]);
		sbuf_printf(&b, "%s%s AS __bf_k%d", i ? ", " : "", q, i + 1);
		free(q);
	}
	sbuf_printf(&b, "\n  FROM %s.%s\n", schema, table);
	if (!first) {
		sbuf_printf(&b, "  WHERE (");
		sbuf_keys(&b, spec, false, "");
		sbuf_printf(&b, ") > (");
		for (int i = 0; i < spec->nkeys; i++)
			sbuf_printf(&b, "%s$%d::%s", i ? ", " : "", i + 1, spec->key_types[i]);
		sbuf_printf(&b, ")\n");
	}
	sbuf_upper(&b, spec, first ? "  WHERE " : "    AND ");
	sbuf_printf(&b, "  ORDER BY ");
	sbuf_keys(&b, spec, false, "");
	sbuf_printf(&b, "\n  LIMIT $%d\n), __bf_first AS MATERIALIZED (\n  SELECT * FROM __bf_keys ORDER BY ",
		    limit_param);
	sbuf_keys(&b, spec, true, "");
	sbuf_printf(&b, " LIMIT 1\n), __bf_last AS MATERIALIZED (\n  SELECT * FROM __bf_keys ORDER BY ");
	sbuf_keys(&b, spec, true, " DESC");
	if (spec->kind == JOB_KIND_VERIFY) {
		sbuf_printf(&b, " LIMIT 1\n), __bf_changed AS MATERIALIZED (\n  SELECT ARRAY[");
		sbuf_keys(&b, spec, false, "::text");
		sbuf_printf(&b, "] AS key\n  FROM %s.%s\n  WHERE (", schema, table);
	} else {
		sbuf_printf(&b, " LIMIT 1\n), __bf_changed AS (\n  UPDATE %s.%s SET\n%s\n  WHERE (", schema,
			    table, spec->set_sql);
	}

	/* The range [first, last]; for a composite key the leading column's range too, which
	 * keeps the planner's estimate small (row comparisons are estimated poorly). */
	sbuf_keys(&b, spec, false, "");
	sbuf_printf(&b, ") >= (SELECT ");
	sbuf_keys(&b, spec, true, "");
	sbuf_printf(&b, " FROM __bf_first)\n    AND (");
	sbuf_keys(&b, spec, false, "");
	sbuf_printf(&b, ") <= (SELECT ");
	sbuf_keys(&b, spec, true, "");
	sbuf_printf(&b, " FROM __bf_last)\n");
	if (spec->nkeys > 1) {
		char *k1 = sql_quote_ident(spec->key_names[0]);
		sbuf_printf(&b,
			    "    AND %s >= (SELECT __bf_k1 FROM __bf_first) AND %s <= (SELECT __bf_k1 FROM "
			    "__bf_last)\n",
			    k1, k1);
		free(k1);
	}
	if (spec->kind == JOB_KIND_VERIFY) {
		sbuf_printf(&b, "    AND (\n%s\n    )\n)\n", spec->mismatch_sql);
	} else {
		if (spec->where_sql && spec->where_sql[0])
			sbuf_printf(&b, "    AND (\n%s\n    )\n", spec->where_sql);
		sbuf_printf(&b, "  RETURNING 1\n)\n");
	}

	/* One row for the daemon, and the same values for the checkpoint function. */
	sbuf_printf(&b,
		    "SELECT s.scanned, s.changed, s.first_key, s.last_key,\n"
		    "  set_config('backfilld.scanned', s.scanned::text, true),\n"
		    "  set_config('backfilld.changed', s.changed::text, true),\n"
		    "  set_config('backfilld.first_key', coalesce(s.first_key::text, ''), true),\n"
		    "  set_config('backfilld.last_key', coalesce(s.last_key::text, ''), true)%s\n"
		    "FROM (SELECT (SELECT count(*) FROM __bf_keys) AS scanned,\n"
		    "             (SELECT count(*) FROM __bf_changed) AS changed,\n"
		    "             (SELECT ARRAY[",
		    spec->kind == JOB_KIND_VERIFY
			    ? ",\n  set_config('backfilld.mismatches',"
			      " coalesce((SELECT jsonb_agg(key) FROM __bf_changed)::text, ''), true)"
			    : "");
	for (int i = 0; i < spec->nkeys; i++)
		sbuf_printf(&b, "%s__bf_k%d::text", i ? ", " : "", i + 1);
	sbuf_printf(&b, "] FROM __bf_first) AS first_key,\n             (SELECT ARRAY[");
	for (int i = 0; i < spec->nkeys; i++)
		sbuf_printf(&b, "%s__bf_k%d::text", i ? ", " : "", i + 1);
	sbuf_printf(&b, "] FROM __bf_last) AS last_key) AS s");

	free(schema);
	free(table);
	return b.data;
}

char *batch_build_peek(const batch_spec_t *spec, bool first)
{
	sbuf_t b = {0};
	char *schema = sql_quote_ident(spec->target_schema);
	char *table = sql_quote_ident(spec->target_table);

	sbuf_printf(&b, "SELECT set_config('backfilld.skip_key', ARRAY[");
	for (int i = 0; i < spec->nkeys; i++) {
		char *q = sql_quote_ident(spec->key_names[i]);
		sbuf_printf(&b, "%s%s::text", i ? ", " : "", q);
		free(q);
	}
	sbuf_printf(&b, "]::text, true)\nFROM %s.%s\n", schema, table);
	if (!first) {
		sbuf_printf(&b, "WHERE (");
		sbuf_keys(&b, spec, false, "");
		sbuf_printf(&b, ") > (");
		for (int i = 0; i < spec->nkeys; i++)
			sbuf_printf(&b, "%s$%d::%s", i ? ", " : "", i + 1, spec->key_types[i]);
		sbuf_printf(&b, ")\n");
	}
	sbuf_upper(&b, spec, first ? "WHERE " : "  AND ");
	sbuf_printf(&b, "ORDER BY ");
	sbuf_keys(&b, spec, false, "");
	sbuf_printf(&b, "\nLIMIT 1");
	free(schema);
	free(table);
	return b.data;
}

const char batch_open_sql[] =
	"SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true),"
	" set_config('backfilld.lsn0', pg_current_wal_insert_lsn()::text, true)";

const char batch_open_counting_sql[] =
	"SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true),"
	" set_config('backfilld.lsn0', pg_current_wal_insert_lsn()::text, true), w.*"
	" FROM pg_temp.backfilld_writes($3::oid) AS w";

const char batch_writes_function_sql[] =
	"CREATE OR REPLACE FUNCTION pg_temp.backfilld_writes(oid)\n"
	"RETURNS TABLE(__bf_writes bigint, __bf_own bigint, __bf_rows bigint)\n"
	"LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp\nAS $bf$\nBEGIN\n"
	"  RETURN QUERY SELECT pg_stat_get_tuples_updated($1) + pg_stat_get_tuples_deleted($1) + o.own,"
	" o.own,\n"
	"    (SELECT c.reltuples FROM pg_class c WHERE c.oid = $1)::bigint\n"
	"  FROM (SELECT pg_stat_get_xact_tuples_updated($1) + pg_stat_get_xact_tuples_deleted($1) AS own)"
	" AS o;\nEND;\n$bf$";

const char batch_waiters_sql[] = "SELECT * FROM pg_temp.backfilld_waiters($1::oid)";

const char batch_waiters_function_sql[] =
	"CREATE OR REPLACE FUNCTION pg_temp.backfilld_waiters(oid)\n"
	"RETURNS TABLE(__bf_waiters bigint, __bf_longest_ms bigint, __bf_own bigint)\n"
	"LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp\nAS $bf$\nBEGIN\n"
	"  RETURN QUERY SELECT count(*), coalesce(max(floor(extract(epoch FROM clock_timestamp() -"
	" w.query_start) * 1000)), 0)::bigint,\n"
	"    pg_stat_get_xact_tuples_updated($1) + pg_stat_get_xact_tuples_deleted($1)\n"
	"  FROM (SELECT a.pid, a.query_start FROM pg_catalog.pg_stat_activity a\n"
	"        WHERE a.wait_event_type = 'Lock' AND a.pid <> pg_catalog.pg_backend_pid() OFFSET 0) AS w\n"
	"  WHERE pg_catalog.pg_backend_pid() = ANY (pg_catalog.pg_blocking_pids(w.pid));\nEND;\n$bf$";

static const char *const function_names[] = {
	[BATCH_FN_FIRST] = "backfilld_batch_first",	[BATCH_FN_NEXT] = "backfilld_batch_next",
	[BATCH_FN_PEEK_FIRST] = "backfilld_peek_first", [BATCH_FN_PEEK_NEXT] = "backfilld_peek_next",
	[BATCH_FN_BOUNDS] = "backfilld_bounds",		[BATCH_FN_SPLIT] = "backfilld_split",
};

bool batch_key_is_numeric(const batch_spec_t *spec)
{
	static const char *const numeric[] = {"smallint", "integer", "bigint",
					      "numeric",  "real",    "double precision"};
	for (size_t i = 0; i < sizeof(numeric) / sizeof(numeric[0]); i++)
		if (strncmp(spec->key_types[0], numeric[i], strlen(numeric[i])) == 0)
			return true;
	return false;
}

/* Session settings (not transaction-local: the check runs without a transaction block). */
static char *batch_build_bounds(const batch_spec_t *spec)
{
	sbuf_t b = {0};
	char *schema = sql_quote_ident(spec->target_schema);
	char *table = sql_quote_ident(spec->target_table);
	char *key = sql_quote_ident(spec->key_names[0]);

	sbuf_printf(&b,
		    "SELECT set_config('backfilld.key_min', coalesce(min(%s)::text, ''), false),"
		    " set_config('backfilld.key_max', coalesce(max(%s)::text, ''), false)\nFROM %s.%s",
		    key, key, schema, table);
	free(schema);
	free(table);
	free(key);
	return b.data;
}

char *batch_build_split(const batch_spec_t *spec)
{
	sbuf_t b = {0};
	char *schema = sql_quote_ident(spec->target_schema);
	char *table = sql_quote_ident(spec->target_table);
	char *key = sql_quote_ident(spec->key_names[0]);
	const char *type = spec->key_types[0];

	sbuf_printf(&b, "DECLARE\n  __bf_q text[];\n  __bf_m int;\n  __bf_v text;\n  __bf_key text[];\n"
			"  __bf_prev text[];\n  __bf_out jsonb := '[]';\nBEGIN\n"
			"  SELECT s.histogram_bounds::text::text[] INTO __bf_q FROM pg_catalog.pg_stats s\n"
			"  WHERE s.schemaname = ");
	sbuf_literal(&b, spec->target_schema, "name");
	sbuf_printf(&b, " AND s.tablename = ");
	sbuf_literal(&b, spec->target_table, "name");
	sbuf_printf(&b, " AND s.attname = ");
	sbuf_literal(&b, spec->key_names[0], "name");
	sbuf_printf(&b, "\n  ORDER BY s.inherited DESC LIMIT 1;\n"
			"  __bf_m := coalesce(cardinality(__bf_q), 0);\n"
			"  IF __bf_m > $1 THEN\n" /* the planner's quantiles: buckets of equal rows */
			"    __bf_q := ARRAY(SELECT __bf_q[1 + (i * (__bf_m - 1)) / $1]"
			" FROM generate_series(1, $1 - 1) AS i);\n  ELSE\n");
	if (batch_key_is_numeric(spec))
		sbuf_printf(
			&b,
			"    SELECT ARRAY(SELECT (lo + (hi - lo) * i / $1)::%s::text"
			" FROM generate_series(1, $1 - 1) AS i) INTO __bf_q\n"
			"    FROM (SELECT min(%s)::numeric AS lo, max(%s)::numeric AS hi FROM %s.%s) AS r\n"
			"    WHERE r.lo IS NOT NULL;\n",
			type, key, key, schema, table);
	else {
		/* About 200 pages, anywhere in the table. */
		char *qualified = malloc(strlen(schema) + strlen(table) + 2);
		if (!qualified)
			abort();
		sprintf(qualified, "%s.%s", schema, table);
		sbuf_printf(&b,
			    "    SELECT (percentile_disc(ARRAY(SELECT i::float8 / $1"
			    " FROM generate_series(1, $1 - 1) AS i))\n"
			    "            WITHIN GROUP (ORDER BY %s))::text[] INTO __bf_q\n"
			    "    FROM %s TABLESAMPLE SYSTEM (least(100, greatest(0.01, 100.0 * 200\n"
			    "          / greatest(1, pg_catalog.pg_relation_size(",
			    key, qualified);
		sbuf_literal(&b, qualified, "regclass");
		sbuf_printf(&b, ") / 8192))));\n");
		free(qualified);
	}
	sbuf_printf(&b,
		    "  END IF;\n  FOREACH __bf_v IN ARRAY coalesce(__bf_q, '{}') LOOP\n    SELECT ARRAY[");
	sbuf_keys(&b, spec, false, "::text");
	sbuf_printf(&b, "] INTO __bf_key FROM %s.%s WHERE %s >= __bf_v::%s ORDER BY ", schema, table, key,
		    type);
	sbuf_keys(&b, spec, false, "");
	sbuf_printf(&b, " LIMIT 1;\n"
			"    IF __bf_key IS NOT NULL AND __bf_key IS DISTINCT FROM __bf_prev THEN\n"
			"      __bf_out := __bf_out || jsonb_build_array(to_jsonb(__bf_key));\n"
			"      __bf_prev := __bf_key;\n    END IF;\n  END LOOP;\n"
			"  PERFORM set_config('backfilld.split', __bf_out::text, false);\n"
			"  RETURN QUERY SELECT jsonb_array_length(__bf_out);\nEND;");
	free(schema);
	free(table);
	free(key);
	return b.data;
}

const char *batch_function_name(batch_function_t fn)
{
	return function_names[fn];
}

/* The key values after which the statement starts (the NEXT variants). */
static bool function_has_key_params(batch_function_t fn)
{
	return fn == BATCH_FN_NEXT || fn == BATCH_FN_PEEK_NEXT;
}

static bool function_has_limit(batch_function_t fn)
{
	return fn == BATCH_FN_FIRST || fn == BATCH_FN_NEXT;
}

/* "(type1, type2, bigint)": the function's argument types. */
static void sbuf_signature(sbuf_t *b, const batch_spec_t *spec, batch_function_t fn)
{
	int n = 0;

	sbuf_printf(b, "(");
	if (function_has_key_params(fn))
		for (int i = 0; i < spec->nkeys; i++)
			sbuf_printf(b, "%s%s", n++ ? ", " : "", spec->key_types[i]);
	if (function_has_limit(fn))
		sbuf_printf(b, "%sbigint", n++ ? ", " : "");
	if (fn == BATCH_FN_SPLIT)
		sbuf_printf(b, "int");
	sbuf_printf(b, ")");
}

/* The end of a PL/pgSQL batch body: the batch's row (keys walked, rows changed, first and last
 * key) as RETURN QUERY, each also kept in a backfilld.* setting for the checkpoint; a verify
 * batch adds its mismatches. */
static void sbuf_return_batch(sbuf_t *b, bool verify)
{
	sbuf_printf(b,
		    "  RETURN QUERY SELECT __bf_n, __bf_rows,\n"
		    "    CASE WHEN __bf_n > 0 THEN ARRAY[__bf_lo::text] END,\n"
		    "    CASE WHEN __bf_n > 0 THEN ARRAY[__bf_hi::text] END,\n"
		    "    set_config('backfilld.scanned', __bf_n::text, true),\n"
		    "    set_config('backfilld.changed', __bf_rows::text, true),\n"
		    "    set_config('backfilld.first_key',"
		    " CASE WHEN __bf_n > 0 THEN ARRAY[__bf_lo::text]::text ELSE '' END, true),\n"
		    "    set_config('backfilld.last_key',"
		    " CASE WHEN __bf_n > 0 THEN ARRAY[__bf_hi::text]::text ELSE '' END, true)%s;\nEND;",
		    verify ? ",\n    set_config('backfilld.mismatches', coalesce(__bf_found::text, ''), true)"
			   : "");
}

/*
 * A statement job's batch, as a PL/pgSQL body: walk at most $N keys after the checkpoint, then
 * run the user's statement once with $1, $2 = the first and last of them, typed as the key.
 */
static char *batch_build_statement_body(const batch_spec_t *spec, bool first)
{
	sbuf_t b = {0};
	char *schema = sql_quote_ident(spec->target_schema);
	char *table = sql_quote_ident(spec->target_table);
	char *key = sql_quote_ident(spec->key_names[0]);
	const char *type = spec->key_types[0];

	sbuf_printf(&b,
		    "DECLARE\n  __bf_lo %s;\n  __bf_hi %s;\n  __bf_n bigint;\n  __bf_rows bigint := 0;\n"
		    "  __bf_sql text := '",
		    type, type);
	for (const char *p = spec->batch_sql; *p; p++) /* as a string literal */
		sbuf_printf(&b, *p == '\'' ? "''" : "%c", *p);
	sbuf_printf(
		&b,
		"';\nBEGIN\n  SELECT (array_agg(__bf_k1 ORDER BY __bf_k1))[1],"
		" (array_agg(__bf_k1 ORDER BY __bf_k1 DESC))[1], count(*)\n  INTO __bf_lo, __bf_hi, __bf_n\n"
		"  FROM (SELECT %s AS __bf_k1 FROM %s.%s\n",
		key, schema, table);
	if (!first)
		sbuf_printf(&b, "        WHERE %s > $1\n", key);
	sbuf_upper(&b, spec, first ? "        WHERE " : "          AND ");
	sbuf_printf(&b, "        ORDER BY %s LIMIT $%d) AS __bf_keys;\n", key, first ? 1 : 2);
	sbuf_printf(&b, "  IF __bf_n > 0 THEN\n    EXECUTE __bf_sql USING __bf_lo, __bf_hi;\n"
			"    GET DIAGNOSTICS __bf_rows = ROW_COUNT;\n  END IF;\n");
	sbuf_return_batch(&b, false);
	free(schema);
	free(table);
	free(key);
	return b.data;
}

char *batch_build_function(const batch_spec_t *spec, batch_function_t fn)
{
	sbuf_t b = {0}, tag = {0};
	bool plpgsql = (spec->kind == JOB_KIND_STATEMENT && function_has_limit(fn)) || fn == BATCH_FN_SPLIT;
	char *body = fn == BATCH_FN_SPLIT	 ? batch_build_split(spec)
		     : plpgsql			 ? batch_build_statement_body(spec, fn == BATCH_FN_FIRST)
		     : fn == BATCH_FN_FIRST	 ? batch_build_update(spec, true)
		     : fn == BATCH_FN_NEXT	 ? batch_build_update(spec, false)
		     : fn == BATCH_FN_PEEK_FIRST ? batch_build_peek(spec, true)
		     : fn == BATCH_FN_BOUNDS	 ? batch_build_bounds(spec)
						 : batch_build_peek(spec, false);

	/* A dollar-quote tag the body does not contain. */
	for (int i = 0;; i++) {
		tag.len = 0;
		sbuf_printf(&tag, "$bf%d$", i);
		if (!strstr(body, tag.data))
			break;
	}
	sbuf_printf(&b, "CREATE OR REPLACE FUNCTION pg_temp.%s", function_names[fn]);
	sbuf_signature(&b, spec, fn);
	if (function_has_limit(fn))
		sbuf_printf(&b,
			    "\nRETURNS TABLE(__bf_scanned bigint, __bf_changed bigint, __bf_first text[], "
			    "__bf_last"
			    " text[], __bf_s1 text, __bf_s2 text, __bf_s3 text, __bf_s4 text%s)",
			    spec->kind == JOB_KIND_VERIFY ? ", __bf_s5 text" : "");
	else if (fn == BATCH_FN_BOUNDS)
		sbuf_printf(&b, "\nRETURNS TABLE(__bf_min text, __bf_max text)");
	else if (fn == BATCH_FN_SPLIT)
		sbuf_printf(&b, "\nRETURNS TABLE(__bf_cuts int)");
	else
		sbuf_printf(&b, "\nRETURNS TABLE(__bf_key text)");
	sbuf_printf(
		&b,
		"\nLANGUAGE %s VOLATILE SECURITY DEFINER SET search_path = \"$user\", public\nAS %s\n%s\n%s",
		plpgsql ? "plpgsql" : "sql", tag.data, body, tag.data);
	free(body);
	free(tag.data);
	return b.data;
}

/* The key types min() and max() exist for (format_type() names, by prefix). */
static bool key_has_min_max(const char *type)
{
	static const char *const types[] = {"smallint", "integer",	    "bigint", "numeric",
					    "real",	"double precision", "text",   "character",
					    "date",	"timestamp",	    "time ",  "oid"};
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (strncmp(type, types[i], strlen(types[i])) == 0)
			return true;
	return strcmp(type, "time without time zone") == 0;
}

char *batch_build_fast_function(const batch_spec_t *spec, batch_function_t fn)
{
	sbuf_t b = {0}, body = {0}, tag = {0};
	char *schema, *table, *key;
	const char *type = spec->key_types[0];
	bool first = fn == BATCH_FN_FIRST, verify = spec->kind == JOB_KIND_VERIFY;

	if ((fn != BATCH_FN_FIRST && fn != BATCH_FN_NEXT) || spec->nkeys != 1 ||
	    spec->kind == JOB_KIND_STATEMENT || !key_has_min_max(type))
		return NULL;
	schema = sql_quote_ident(spec->target_schema);
	table = sql_quote_ident(spec->target_table);
	key = sql_quote_ident(spec->key_names[0]);
	sbuf_printf(&body,
		    "DECLARE\n  __bf_lo %s;\n  __bf_hi %s;\n  __bf_n bigint;\n  __bf_rows bigint := 0;\n"
		    "  __bf_found jsonb;\nBEGIN\n"
		    "  SELECT min(__bf_k1), max(__bf_k1), count(*) INTO __bf_lo, __bf_hi, __bf_n\n"
		    "  FROM (SELECT %s AS __bf_k1 FROM %s.%s\n",
		    type, type, key, schema, table);
	if (!first)
		sbuf_printf(&body, "        WHERE %s > $1\n", key);
	sbuf_upper(&body, spec, first ? "        WHERE " : "          AND ");
	sbuf_printf(&body, "        ORDER BY %s LIMIT $%d) AS __bf_keys;\n  IF __bf_n > 0 THEN\n", key,
		    first ? 1 : 2);
	if (verify) {
		sbuf_printf(&body,
			    "    SELECT jsonb_agg(jsonb_build_array(%s::text)), count(*) INTO __bf_found, "
			    "__bf_rows\n    FROM %s.%s\n    WHERE %s >= __bf_lo AND %s <= __bf_hi\n"
			    "      AND (\n%s\n      );\n",
			    key, schema, table, key, key, spec->mismatch_sql);
	} else {
		sbuf_printf(&body, "    UPDATE %s.%s SET\n%s\n    WHERE %s >= __bf_lo AND %s <= __bf_hi\n",
			    schema, table, spec->set_sql, key, key);
		if (spec->where_sql && spec->where_sql[0])
			sbuf_printf(&body, "      AND (\n%s\n      )", spec->where_sql);
		sbuf_printf(&body, ";\n    GET DIAGNOSTICS __bf_rows = ROW_COUNT;\n");
	}
	sbuf_printf(&body, "  END IF;\n");
	sbuf_return_batch(&body, verify);
	for (int i = 0;; i++) {
		tag.len = 0;
		sbuf_printf(&tag, "$bf%d$", i);
		if (!strstr(body.data, tag.data))
			break;
	}
	sbuf_printf(&b, "CREATE OR REPLACE FUNCTION pg_temp.%s", function_names[fn]);
	sbuf_signature(&b, spec, fn);
	sbuf_printf(&b,
		    "\nRETURNS TABLE(__bf_scanned bigint, __bf_changed bigint, __bf_first text[], "
		    "__bf_last text[], __bf_s1 text, __bf_s2 text, __bf_s3 text, __bf_s4 text%s)",
		    verify ? ", __bf_s5 text" : "");
	sbuf_printf(&b,
		    "\nLANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = \"$user\", public\nAS "
		    "%s\n%s\n%s",
		    tag.data, body.data, tag.data);
	free(body.data);
	free(tag.data);
	free(schema);
	free(table);
	free(key);
	return b.data;
}

char *batch_build_function_owner(const batch_spec_t *spec, batch_function_t fn, const char *run_as)
{
	sbuf_t b = {0};
	char *role = sql_quote_ident(run_as);

	sbuf_printf(&b, "ALTER FUNCTION pg_temp.%s", function_names[fn]);
	sbuf_signature(&b, spec, fn);
	sbuf_printf(&b, " OWNER TO %s", role);
	free(role);
	return b.data;
}

char *batch_build_call(const batch_spec_t *spec, batch_function_t fn)
{
	sbuf_t b = {0};
	int n = (function_has_key_params(fn) ? spec->nkeys : 0) + (function_has_limit(fn) ? 1 : 0) +
		(fn == BATCH_FN_SPLIT ? 1 : 0);

	sbuf_printf(&b, "SELECT * FROM pg_temp.%s(", function_names[fn]);
	for (int i = 1; i <= n; i++)
		sbuf_printf(&b, "%s$%d", i > 1 ? ", " : "", i);
	sbuf_printf(&b, ")");
	return b.data;
}

char *batch_build_checkpoint(const char *schema)
{
	sbuf_t b = {0};
	char *q = sql_quote_ident(schema);

	sbuf_printf(
		&b,
		"SELECT state, rows_scanned, rows_changed, batches, rows_estimate, wal_bytes, slice_done,"
		" wal_lsn"
		" FROM %s._checkpoint("
		"$1::bigint, $2::text, $3::int, $4::int, $5::int, $6::int, $7::int, $8::bigint, $9::bigint,"
		" $10::int, $11::text, $12::int)",
		q);
	free(q);
	return b.data;
}
