/* A job's VACUUM of its target, pure: see include/vacuum.h. */
#include "vacuum.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchsql.h"
#include "util.h"

int64_t vacuum_threshold(int64_t percent, int64_t table_rows)
{
	int64_t rows;

	if (percent <= 0 || table_rows <= 0)
		return 0;
	if (percent > 100)
		percent = 100;
	rows = table_rows / 100 * percent + (table_rows % 100 * percent + 99) / 100;
	return rows < VACUUM_MIN_ROWS ? VACUUM_MIN_ROWS : rows;
}

bool vacuum_due(int64_t percent, int64_t changed, int64_t table_rows)
{
	int64_t threshold = vacuum_threshold(percent, table_rows);

	return threshold > 0 && changed >= threshold;
}

int64_t vacuum_wait_ms(double since_commit_ms, int64_t last_rows, int64_t round_rows)
{
	double settle = VACUUM_SETTLE_MS;

	if (round_rows > 0 && last_rows >= 0 && (double)last_rows * 10 < (double)round_rows)
		settle = VACUUM_SETTLE_MS * (double)last_rows * 10 / (double)round_rows;
	if (!(since_commit_ms >= 0)) /* also NaN: the clock says nothing */
		since_commit_ms = 0;
	return since_commit_ms < settle ? (int64_t)(settle - since_commit_ms + 0.5) : 0;
}

int64_t vacuum_rows_left(int64_t percent, int64_t changed, int64_t table_rows)
{
	int64_t threshold = vacuum_threshold(percent, table_rows);

	if (threshold == 0)
		return 0;
	return changed < threshold ? threshold - changed : 1;
}

int64_t vacuum_batch_keys(int64_t left, int64_t batch)
{
	if (left <= 0 || batch <= 0)
		return batch;
	if (left <= batch)
		return left;
	return left < 2 * batch ? left - left / 2 : batch;
}

char *vacuum_build(const char *schema, const char *table)
{
	char *s = sql_quote_ident(schema), *t = sql_quote_ident(table), *sql;
	size_t len = strlen(s) + strlen(t) + 64;

	sql = util_calloc(len, 1);
	snprintf(sql, len, "VACUUM (TRUNCATE false) %s.%s", s, t);
	free(s);
	free(t);
	return sql;
}

const char vacuum_timeouts_sql[] =
	"SELECT pg_catalog.set_config('statement_timeout', $1::pg_catalog.text, false),"
	" pg_catalog.set_config('lock_timeout', $2::pg_catalog.text, false),"
	" CASE WHEN $3::pg_catalog.text IS NOT NULL"
	" THEN pg_catalog.set_config('vacuum_cost_delay', $3::pg_catalog.text, false) END,"
	" CASE WHEN $4::pg_catalog.text IS NOT NULL"
	" THEN pg_catalog.set_config('vacuum_cost_limit', $4::pg_catalog.text, false) END";

const char vacuum_reset_statement_timeout_sql[] = "RESET statement_timeout";
const char vacuum_reset_lock_timeout_sql[] = "RESET lock_timeout";
const char vacuum_reset_cost_delay_sql[] = "RESET vacuum_cost_delay";
const char vacuum_reset_cost_limit_sql[] = "RESET vacuum_cost_limit";

/* has_table_privilege(..., 'MAINTAIN') is an error before 17: CASE keeps it from being called. */
const char vacuum_permitted_sql[] =
	"SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE')"
	" OR pg_catalog.pg_has_role(d.datdba, 'USAGE')"
	" OR CASE WHEN pg_catalog.current_setting('server_version_num')::pg_catalog.int4"
	" OPERATOR(pg_catalog.>=) 170000"
	" THEN pg_catalog.has_table_privilege(c.oid, 'MAINTAIN') ELSE false END"
	" FROM pg_catalog.pg_class c, pg_catalog.pg_database d"
	" WHERE c.oid OPERATOR(pg_catalog.=) $1::pg_catalog.oid"
	" AND d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()";
