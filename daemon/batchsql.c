/*
 * Batch SQL. A batch walks keys with a MATERIALIZED CTE (index-ordered, LIMIT n), then
 * works on the range [first, last] of those keys: bounds that reach the executor as values,
 * so the target is read by a bounded index scan whatever the planner estimates.
 */
#include "batchsql.h"

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

/* "a", "b" (quoted columns) or __bf_k1, __bf_k2 (the CTEs' aliases), each followed by SUFFIX. */
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

/* VALUE as an escape-string literal: E'it''s' (independent of standard_conforming_strings). */
static void sbuf_literal(sbuf_t *b, const char *value)
{
	sbuf_printf(b, "E'");
	for (const char *p = value; *p; p++)
		sbuf_printf(b, *p == '\'' ? "''" : *p == '\\' ? "\\\\" : "%c", *p);
	sbuf_printf(b, "'");
}

/* OPERATOR("schema".OP): the key's comparison, whatever the session's search_path. */
static void sbuf_op(sbuf_t *b, const batch_spec_t *spec, const char *op)
{
	char *q = sql_quote_ident(spec->key_op_schema ? spec->key_op_schema : "pg_catalog");
	sbuf_printf(b, " OPERATOR(%s.%s) ", q, op);
	free(q);
}

/* Key column I read back from its text: "q"._key_in(<text>, NULL::<type>), where the text is
 * parameter PARAM ($PARAM) or, when PARAM is 0, the literal VALUE. */
static void sbuf_key_in(sbuf_t *b, const batch_spec_t *spec, int i, int param, const char *value)
{
	char *q = sql_quote_ident(spec->queue_schema);
	sbuf_printf(b, "%s._key_in(", q);
	if (param > 0)
		sbuf_printf(b, "$%d::pg_catalog.text", param);
	else
		sbuf_literal(b, value);
	sbuf_printf(b, ", NULL::%s)", spec->key_types[i]);
	free(q);
}

/* ARRAY["q"._key_out(k1), ...]: the key as text, written under fixed settings; of the CTEs'
 * aliases (ALIASES) or of the table's columns. */
static void sbuf_key_out(sbuf_t *b, const batch_spec_t *spec, bool aliases)
{
	char *q = sql_quote_ident(spec->queue_schema);
	sbuf_printf(b, "ARRAY[");
	for (int i = 0; i < spec->nkeys; i++) {
		if (aliases) {
			sbuf_printf(b, "%s%s._key_out(__bf_k%d)", i ? ", " : "", q, i + 1);
		} else {
			char *k = sql_quote_ident(spec->key_names[i]);
			sbuf_printf(b, "%s%s._key_out(%s)", i ? ", " : "", q, k);
			free(k);
		}
	}
	sbuf_printf(b, "]::pg_catalog.text[]");
	free(q);
}

/* The key compared with OP to the values the key_in helpers give: "k" OP v, or for a composite
 * key ROW(k1, k2) OP ROW(v1, v2). Parameters from FIRST_PARAM on; 0: the literals VALUES. */
static void sbuf_key_cmp(sbuf_t *b, const batch_spec_t *spec, const char *op, int first_param,
			 const char *const *values)
{
	bool row = spec->nkeys > 1;

	sbuf_printf(b, row ? "ROW(" : "");
	sbuf_keys(b, spec, false, "");
	sbuf_printf(b, row ? ")" : "");
	sbuf_op(b, spec, op);
	sbuf_printf(b, row ? "ROW(" : "");
	for (int i = 0; i < spec->nkeys; i++) {
		sbuf_printf(b, "%s", i ? ", " : "");
		sbuf_key_in(b, spec, i, first_param > 0 ? first_param + i : 0, values ? values[i] : NULL);
	}
	sbuf_printf(b, row ? ")" : "");
}

/* The key compared with OP to the key of the CTE CTE (__bf_first or __bf_last). */
static void sbuf_key_cmp_cte(sbuf_t *b, const batch_spec_t *spec, const char *op, const char *cte)
{
	bool row = spec->nkeys > 1;

	sbuf_printf(b, row ? "ROW(" : "");
	sbuf_keys(b, spec, false, "");
	sbuf_printf(b, row ? ")" : "");
	sbuf_op(b, spec, op);
	sbuf_printf(b, row ? "ROW(" : "");
	for (int i = 0; i < spec->nkeys; i++)
		sbuf_printf(b, "%s(SELECT __bf_k%d FROM %s)", i ? ", " : "", i + 1, cte);
	sbuf_printf(b, row ? ")" : "");
}

/* The walk's conditions, each line starting with INDENT: after the checkpoint (unless FIRST) and
 * up to a slice's last key. */
static void sbuf_walk_conditions(sbuf_t *b, const batch_spec_t *spec, bool first, const char *indent)
{
	bool any = false;

	if (!first) {
		sbuf_printf(b, "%sWHERE ", indent);
		sbuf_key_cmp(b, spec, ">", 1, NULL);
		sbuf_printf(b, "\n");
		any = true;
	}
	if (spec->upper) {
		sbuf_printf(b, "%s%s", indent, any ? "  AND " : "WHERE ");
		sbuf_key_cmp(b, spec, "<=", 0, spec->upper);
		sbuf_printf(b, "\n");
	}
}

/* The keys of a batch: at most $LIMIT after the checkpoint (unless FIRST), in index order, and
 * the first and the last of them (__bf_keys, __bf_first, __bf_last). Returns the limit's
 * parameter number. */
static int sbuf_walk(sbuf_t *b, const batch_spec_t *spec, bool first, const char *schema, const char *table)
{
	int limit_param = first ? 1 : spec->nkeys + 1;

	sbuf_printf(b, "WITH __bf_keys AS MATERIALIZED (\n  SELECT ");
	for (int i = 0; i < spec->nkeys; i++) {
		char *q = sql_quote_ident(spec->key_names[i]);
		sbuf_printf(b, "%s%s AS __bf_k%d", i ? ", " : "", q, i + 1);
		free(q);
	}
	sbuf_printf(b, "\n  FROM %s.%s\n", schema, table);
	sbuf_walk_conditions(b, spec, first, "  ");
	sbuf_printf(b, "  ORDER BY ");
	sbuf_keys(b, spec, false, "");
	sbuf_printf(b, "\n  LIMIT $%d\n), __bf_first AS MATERIALIZED (\n  SELECT * FROM __bf_keys ORDER BY ",
		    limit_param);
	sbuf_keys(b, spec, true, "");
	sbuf_printf(b, " LIMIT 1\n), __bf_last AS MATERIALIZED (\n  SELECT * FROM __bf_keys ORDER BY ");
	sbuf_keys(b, spec, true, " DESC");
	sbuf_printf(b, " LIMIT 1\n)");
	return limit_param;
}

/* The rows of the table in the batch's range [first, last]: for a composite key the leading
 * column's range too, which keeps the planner's estimate small (row comparisons are estimated
 * poorly). Each condition on a line of its own. */
static void sbuf_range(sbuf_t *b, const batch_spec_t *spec)
{
	sbuf_key_cmp_cte(b, spec, ">=", "__bf_first");
	sbuf_printf(b, "\n    AND ");
	sbuf_key_cmp_cte(b, spec, "<=", "__bf_last");
	sbuf_printf(b, "\n");
	if (spec->nkeys > 1) {
		char *k1 = sql_quote_ident(spec->key_names[0]);
		sbuf_printf(b, "    AND %s", k1);
		sbuf_op(b, spec, ">=");
		sbuf_printf(b, "(SELECT __bf_k1 FROM __bf_first) AND %s", k1);
		sbuf_op(b, spec, "<=");
		sbuf_printf(b, "(SELECT __bf_k1 FROM __bf_last)\n");
		free(k1);
	}
}

/* One row for the daemon, and the same values, transaction-local, for the checkpoint: EXTRA
 * select-list items (each starting with ",\n") and EXTRA_COLUMNS of the inner row (each ending
 * with ",\n"), then what CHANGED counts. */
static void sbuf_result(sbuf_t *b, const batch_spec_t *spec, const char *extra, const char *extra_columns,
			const char *changed)
{
	sbuf_printf(
		b,
		"SELECT s.scanned, s.changed, s.first_key, s.last_key,\n"
		"  pg_catalog.set_config('backfilld.scanned', s.scanned::pg_catalog.text, true),\n"
		"  pg_catalog.set_config('backfilld.changed', s.changed::pg_catalog.text, true),\n"
		"  pg_catalog.set_config('backfilld.first_key', coalesce(s.first_key::pg_catalog.text, ''), "
		"true),\n"
		"  pg_catalog.set_config('backfilld.last_key', coalesce(s.last_key::pg_catalog.text, ''), "
		"true)%s\n"
		"FROM (SELECT (SELECT pg_catalog.count(*) FROM __bf_keys) AS scanned,\n%s"
		"             %s AS changed,\n             (SELECT ",
		extra, extra_columns, changed);
	sbuf_key_out(b, spec, true);
	sbuf_printf(b, " FROM __bf_first) AS first_key,\n             (SELECT ");
	sbuf_key_out(b, spec, true);
	sbuf_printf(b, " FROM __bf_last) AS last_key) AS s");
}

char *batch_build_update(const batch_spec_t *spec, bool first)
{
	sbuf_t b = {0}, moved = {0};
	char *schema = sql_quote_ident(spec->target_schema);
	char *table = sql_quote_ident(spec->target_table);
	char *queue = sql_quote_ident(spec->queue_schema);

	sbuf_walk(&b, spec, first, schema, table);
	sbuf_printf(&b, ", __bf_changed AS (\n  UPDATE %s.%s SET\n%s\n  WHERE ", schema, table,
		    spec->set_sql);
	sbuf_range(&b, spec);
	if (spec->where_sql && spec->where_sql[0])
		sbuf_printf(&b, "    AND (\n%s\n    )\n", spec->where_sql);
	/* A row whose key the update moved past the batch's last key would be walked again: such a
	 * batch fails (_keys_moved) instead of committing. */
	sbuf_printf(&b, "  RETURNING ");
	sbuf_key_cmp_cte(&b, spec, ">", "__bf_last");
	sbuf_printf(&b, " AS __bf_moved\n)\n");
	sbuf_printf(&moved, ",\n  CASE WHEN s.moved > 0 THEN %s._keys_moved(s.moved) END", queue);
	sbuf_result(
		&b, spec, moved.data,
		"             (SELECT pg_catalog.count(*) FROM __bf_changed WHERE __bf_moved) AS moved,\n",
		"(SELECT pg_catalog.count(*) FROM __bf_changed)");
	free(moved.data);
	free(schema);
	free(table);
	free(queue);
	return b.data;
}

char *batch_build_verify(const batch_spec_t *spec, bool first)
{
	sbuf_t b = {0};
	char *schema = sql_quote_ident(spec->target_schema);
	char *table = sql_quote_ident(spec->target_table);

	sbuf_walk(&b, spec, first, schema, table);
	sbuf_printf(&b, ", __bf_changed AS MATERIALIZED (\n  SELECT ");
	sbuf_key_out(&b, spec, false);
	sbuf_printf(&b, " AS key\n  FROM %s.%s\n  WHERE ", schema, table);
	sbuf_range(&b, spec);
	sbuf_printf(&b, "    AND (\n%s\n    )\n)\n", spec->mismatch_sql);
	sbuf_result(&b, spec,
		    ",\n  pg_catalog.set_config('backfilld.mismatches', coalesce((SELECT "
		    "pg_catalog.jsonb_agg(key) FROM __bf_changed)::pg_catalog.text, ''), true)",
		    "", "(SELECT pg_catalog.count(*) FROM __bf_changed)");
	free(schema);
	free(table);
	return b.data;
}

char *batch_build_statement(const batch_spec_t *spec, bool first)
{
	sbuf_t b = {0};
	char *schema = sql_quote_ident(spec->target_schema);
	char *table = sql_quote_ident(spec->target_table);
	char *queue = sql_quote_ident(spec->queue_schema);
	int limit_param = sbuf_walk(&b, spec, first, schema, table);

	/* The job's SQL once, as its role, with the first and last key typed as the key. */
	sbuf_printf(&b,
		    ", __bf_changed AS MATERIALIZED (\n  SELECT %s._statement_batch($%d::pg_catalog.text, "
		    "__bf_first.__bf_k1, __bf_last.__bf_k1) AS __bf_rows\n  FROM __bf_first, __bf_last\n)\n",
		    queue, limit_param + 1);
	sbuf_result(&b, spec, "", "", "coalesce((SELECT __bf_rows FROM __bf_changed), 0)");
	free(schema);
	free(table);
	free(queue);
	return b.data;
}

char *batch_build_peek(const batch_spec_t *spec, bool first)
{
	sbuf_t b = {0};
	char *schema = sql_quote_ident(spec->target_schema);
	char *table = sql_quote_ident(spec->target_table);

	sbuf_printf(&b, "SELECT pg_catalog.set_config('backfilld.skip_key', ");
	sbuf_key_out(&b, spec, false);
	sbuf_printf(&b, "::pg_catalog.text, true)\nFROM %s.%s\n", schema, table);
	sbuf_walk_conditions(&b, spec, first, "");
	sbuf_printf(&b, "ORDER BY ");
	sbuf_keys(&b, spec, false, "");
	sbuf_printf(&b, "\nLIMIT 1");
	free(schema);
	free(table);
	return b.data;
}

char *batch_build_bounds(const batch_spec_t *spec)
{
	sbuf_t b = {0};
	char *schema = sql_quote_ident(spec->target_schema);
	char *table = sql_quote_ident(spec->target_table);
	char *key = sql_quote_ident(spec->key_names[0]);
	char *queue = sql_quote_ident(spec->queue_schema);

	sbuf_printf(&b,
		    "SELECT %s._set_bounds($1::pg_catalog.int8, $2::pg_catalog.text, "
		    "%s._key_out(pg_catalog.min(%s)),"
		    " %s._key_out(pg_catalog.max(%s)))\nFROM %s.%s",
		    queue, queue, key, queue, key, schema, table);
	free(schema);
	free(table);
	free(key);
	free(queue);
	return b.data;
}

char *batch_build_hold_when(const char *hold_when_sql)
{
	sbuf_t b = {0};

	sbuf_printf(&b, "SELECT true WHERE (\n%s\n)", hold_when_sql);
	return b.data;
}

const char batch_timeouts_sql[] =
	"SELECT pg_catalog.set_config('statement_timeout', $1::pg_catalog.text, true),"
	" pg_catalog.set_config('lock_timeout', $2::pg_catalog.text, true)";

const char *batch_privileges_sql(bool writes)
{
	return writes ? "SELECT pg_catalog.has_table_privilege($1::pg_catalog.oid, 'SELECT'),"
			" pg_catalog.has_any_column_privilege($1::pg_catalog.oid, 'UPDATE')"
		      : "SELECT pg_catalog.has_table_privilege($1::pg_catalog.oid, 'SELECT'), true";
}
