/* The queue schema's statements: see include/queuesql.h. Each text has @q@ where the schema goes. */
#include "queuesql.h"

#include <stdlib.h>
#include <string.h>

#include "batchsql.h"
#include "util.h"

static const char *const texts[QSQL_COUNT] = {
	[QSQL_SCHEMA_VERSION] = "SELECT pg_catalog.max(version) FROM @q@.schema_version",
	[QSQL_CLAIM] = "SELECT * FROM @q@._claim($1::pg_catalog.text, $2::pg_catalog.int4,"
		       " $3::pg_catalog.int8[])",
	[QSQL_RENEW] = "SELECT id, state, owner FROM @q@._renew($1::pg_catalog.text, $2::pg_catalog.int8[],"
		       " $3::pg_catalog.int4)",
	[QSQL_RUNNABLE_COUNT] = "SELECT @q@._runnable_count()",
	[QSQL_COUNT_STATES] = "SELECT state, jobs FROM @q@._count_states()",
	[QSQL_SET_LIMITS] = "SELECT @q@._set_limits($1::pg_catalog.int4)",
	[QSQL_RELEASE] = "SELECT @q@._release($1::pg_catalog.int8, $2::pg_catalog.text, $3::pg_catalog.text,"
			 " $4::pg_catalog.text)",
	[QSQL_SET_REASON] = "SELECT @q@._set_reason($1::pg_catalog.text, $2::pg_catalog.int8[],"
			    " $3::pg_catalog.text)",
	[QSQL_DRY_RUN_DONE] = "SELECT @q@._dry_run_done($1::pg_catalog.int8, $2::pg_catalog.text,"
			      " $3::pg_catalog.int8, $4::pg_catalog.int8)",
	[QSQL_LOAD_JOB] =
		"SELECT j.state, j.owner, j.kind, n.nspname, c.relname, c.oid::pg_catalog.int8 AS target_oid,"
		" j.set_sql, j.where_sql, j.batch_sql, j.mismatch_sql, j.run_as, j.last_key::pg_catalog.text,"
		" j.rows_scanned, j.rows_changed, j.batches, j.rows_estimate, j.failed_rows, j.dry_run,"
		" j.parallel, j.batch_size, j.min_batch_size, j.max_batch_size, j.target_batch_ms, "
		"j.sleep_ms,"
		" j.max_sleep_ms, j.max_replication_lag_bytes, j.max_replication_lag_ms, j.max_blocked_ms,"
		" j.lock_timeout_ms, j.statement_timeout_ms, j.max_failed_rows, j.run_window, "
		"j.hold_when_sql,"
		" j.max_wal_bytes_per_s"
		" FROM @q@.jobs j LEFT JOIN pg_catalog.pg_class c ON c.oid = j.target"
		" LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
		" WHERE j.id = $1::pg_catalog.int8",
	/* A domain's comparison operators are its base type's. */
	[QSQL_LOAD_KEYS] =
		"SELECT k.name, a.atttypid::pg_catalog.int8 AS type_oid,"
		" pg_catalog.quote_ident(tn.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||)"
		" pg_catalog.quote_ident(t.typname) AS carrier,"
		" t.typcategory OPERATOR(pg_catalog.=) 'N' AS numeric,"
		" (SELECT n.nspname FROM pg_catalog.pg_operator o"
		"  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace"
		"  WHERE o.oprname OPERATOR(pg_catalog.=) '>' AND o.oprleft OPERATOR(pg_catalog.=) bt.oid"
		"  AND o.oprright OPERATOR(pg_catalog.=) bt.oid"
		"  ORDER BY n.nspname OPERATOR(pg_catalog.<>) 'pg_catalog' LIMIT 1) AS op_schema"
		" FROM @q@.jobs j CROSS JOIN LATERAL pg_catalog.unnest(j.key_columns) WITH ORDINALITY"
		" AS k(name, ord)"
		" LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) j.target"
		" AND a.attname OPERATOR(pg_catalog.=) k.name AND a.attnum OPERATOR(pg_catalog.>) 0"
		" AND NOT a.attisdropped"
		" LEFT JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid"
		" LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid OPERATOR(pg_catalog.=) t.typnamespace"
		" LEFT JOIN pg_catalog.pg_type bt ON bt.oid OPERATOR(pg_catalog.=)"
		"  CASE WHEN t.typtype OPERATOR(pg_catalog.=) 'd' THEN t.typbasetype ELSE t.oid END"
		" WHERE j.id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 ORDER BY k.ord",
	[QSQL_LOAD_SLICES] = "SELECT s.slice, s.lower_key::pg_catalog.text, s.upper_key::pg_catalog.text,"
			     " s.last_key::pg_catalog.text, s.done"
			     " FROM @q@.slices s JOIN @q@.jobs j ON j.id OPERATOR(pg_catalog.=) s.job_id"
			     " AND j.target OPERATOR(pg_catalog.=) s.target"
			     " AND j.key_columns OPERATOR(pg_catalog.=) s.key_columns"
			     " WHERE s.job_id OPERATOR(pg_catalog.=) $1::pg_catalog.int8 ORDER BY s.slice",
	[QSQL_SPLIT] =
		"SELECT s.slice, s.lower_key::pg_catalog.text, s.upper_key::pg_catalog.text,"
		" NULL::pg_catalog.text, false FROM @q@.jobs j CROSS JOIN LATERAL"
		" @q@._make_slices(j.id, $2::pg_catalog.text, @q@._split_points(j.target, j.key_columns,"
		" LEAST(j.parallel, $3::pg_catalog.int4))) AS s WHERE j.id = $1::pg_catalog.int8",
	[QSQL_BATCH_OPEN] = "SELECT pg_catalog.set_config('statement_timeout', $1::pg_catalog.text, true),"
			    " pg_catalog.set_config('lock_timeout', $2::pg_catalog.text, true),"
			    " w.writes, w.own, w.table_rows FROM @q@._batch_open($3::pg_catalog.oid) AS w",
	[QSQL_BATCH_WAL] =
		"SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(),"
		" pg_catalog.current_setting('backfilld.lsn0')::pg_catalog.pg_lsn)::pg_catalog.int8",
	[QSQL_WAITERS] = "SELECT w.waiters, w.longest_ms, w.own FROM @q@._waiters($1::pg_catalog.oid) AS w",
	[QSQL_MISMATCHES] = "SELECT @q@._record_mismatches($1::pg_catalog.int8, $2::pg_catalog.text)",
	[QSQL_CHECKPOINT] =
		"SELECT c.state, c.rows_scanned, c.rows_changed, c.batches, c.rows_estimate, c.wal_bytes,"
		" c.slice_done, c.wal_lsn, c.run_window FROM @q@._checkpoint($1::pg_catalog.int8, "
		"$2::pg_catalog.text,"
		" $3::pg_catalog.int4, $4::pg_catalog.int4, $5::pg_catalog.int4, $6::pg_catalog.int4,"
		" $7::pg_catalog.int4, $8::pg_catalog.int8, $9::pg_catalog.int8, $10::pg_catalog.int4,"
		" $11::pg_catalog.text, $12::pg_catalog.int4) AS c",
	[QSQL_SKIP_ROW] =
		"SELECT @q@._skip_row($1::pg_catalog.int8, $2::pg_catalog.text, $3::pg_catalog.int4,"
		" $4::pg_catalog.text, $5::pg_catalog.text, $6::pg_catalog.int4)",
	[QSQL_WINDOW] =
		"SELECT j.run_window, j.run_window IS NULL OR @q@._in_window(j.run_window, pg_catalog.now())"
		" FROM @q@.jobs j WHERE j.id OPERATOR(pg_catalog.=) $1::pg_catalog.int8",
	[QSQL_SET_ERROR] =
		"SELECT @q@._set_error($1::pg_catalog.text, $2::pg_catalog.int8, $3::pg_catalog.text)",
};

char *queuesql(queuesql_t which, const char *schema)
{
	const char *text = (unsigned)which < QSQL_COUNT ? texts[which] : NULL, *p, *at;
	char *q, *out, *o;
	size_t n = 0, qlen;

	if (!text)
		abort();
	q = sql_quote_ident(schema);
	qlen = strlen(q);
	for (p = text; (at = strstr(p, "@q@")) != NULL; p = at + 3)
		n++;
	out = o = util_calloc(strlen(text) + n * qlen + 1, 1);
	for (p = text; (at = strstr(p, "@q@")) != NULL; p = at + 3) {
		memcpy(o, p, (size_t)(at - p));
		o += at - p;
		memcpy(o, q, qlen);
		o += qlen;
	}
	strcpy(o, p);
	free(q);
	return out;
}
