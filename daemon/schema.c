/*
 * The queue schema: the SQL compiled in from daemon/schema.sql, rendered for the configured
 * schema name, and the one-shot installer (a blocking libpq session: it never runs on the loop).
 */
#include "schema.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "batchsql.h"
#include "exitcodes.h"
#include "log.h"

char *schema_render(const char *schema)
{
	static const char placeholder[] = "@schema@";
	char *quoted = sql_quote_ident(schema);
	size_t qlen = strlen(quoted), plen = strlen(placeholder), count = 0, len;
	char *out, *o;
	const char *s, *hit;

	for (s = schema_sql; (hit = strstr(s, placeholder)) != NULL; s = hit + plen)
		count++;
	len = strlen(schema_sql) + count * qlen + 1;
	out = o = malloc(len);
	if (!out)
		abort();
	for (s = schema_sql; (hit = strstr(s, placeholder)) != NULL; s = hit + plen) {
		memcpy(o, s, (size_t)(hit - s));
		o += hit - s;
		memcpy(o, quoted, qlen);
		o += qlen;
	}
	strcpy(o, s);
	free(quoted);
	return out;
}

static bool schema_exec(PGconn *conn, const char *sql, const char *what)
{
	PGresult *res = PQexec(conn, sql);
	ExecStatusType st = PQresultStatus(res);
	bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;

	if (!ok) {
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		log_error("%s failed: %s%s%s", what, state ? state : "", state ? " " : "",
			  PQerrorMessage(conn));
	}
	PQclear(res);
	return ok;
}

int schema_install(const char *conninfo, const char *schema)
{
	const char *keys[] = {"dbname", "application_name", NULL};
	const char *values[] = {conninfo, "backfilld install-schema", NULL};
	PGconn *conn = PQconnectdbParams(keys, values, 1);
	char *sql, *quoted, version_sql[256];
	PGresult *res;
	bool ok;

	if (PQstatus(conn) != CONNECTION_OK) {
		log_error("cannot connect to the database: %s", PQerrorMessage(conn));
		PQfinish(conn);
		return EXIT_DB_UNAVAILABLE;
	}
	if (PQserverVersion(conn) < SCHEMA_MIN_SERVER_VERSION) {
		log_error("backfilld needs PostgreSQL 14 or later; the server is %s",
			  PQparameterStatus(conn, "server_version") ?: "older");
		PQfinish(conn);
		return EXIT_BAD_CONFIG;
	}
	sql = schema_render(schema);
	/* One transaction, serialised against concurrent installers. */
	ok = schema_exec(conn, "SET client_min_messages = warning", "setting up") &&
	     schema_exec(conn, "BEGIN", "BEGIN") &&
	     schema_exec(conn,
			 "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('backfilld "
			 "install-schema'))",
			 "locking") &&
	     schema_exec(conn, sql, "installing the schema") && schema_exec(conn, "COMMIT", "COMMIT");
	free(sql);
	if (!ok) {
		PQfinish(conn);
		return EXIT_RUNTIME;
	}
	quoted = sql_quote_ident(schema);
	snprintf(version_sql, sizeof(version_sql), "SELECT pg_catalog.max(version) FROM %s.schema_version",
		 quoted);
	free(quoted);
	res = PQexec(conn, version_sql);
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
		log_notice("queue schema %s is installed at version %s", schema, PQgetvalue(res, 0, 0));
	PQclear(res);
	PQfinish(conn);
	return EXIT_OK;
}
