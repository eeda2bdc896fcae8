/* The queue schema: SQL compiled into the binary, its version, and the one-shot installer. */
#ifndef BACKFILLD_SCHEMA_H
#define BACKFILLD_SCHEMA_H

#include <stdbool.h>
#include <stdio.h>

/* Version of the schema this binary expects; schema.sql records it in <schema>.schema_version. */
#define SCHEMA_VERSION 3

/* The oldest server backfilld supports (server_version_num): PostgreSQL 14. */
#define SCHEMA_MIN_SERVER_VERSION 140000

/* daemon/schema.sql as compiled in; "@schema@" stands for the quoted schema name. */
extern const char schema_sql[];

/* The schema SQL for SCHEMA (quoted as an identifier). Caller frees. */
char *schema_render(const char *schema) __attribute__((warn_unused_result));

/*
 * Create or upgrade the schema in the database of CONNINFO (blocking: one-shot command).
 * Returns an exit code from exitcodes.h and logs what went wrong.
 */
int schema_install(const char *conninfo, const char *schema) __attribute__((warn_unused_result));

#endif
