/*
 * The job kinds as a table: what SQL column each needs, what its batches do to the target, and
 * the builder of its batch statement. A new kind is an enum value and a builder (batchsql), a
 * row here (job_kinds.c), and the schema's validation of jobs.kind.
 */
#ifndef BACKFILLD_JOBKIND_H
#define BACKFILLD_JOBKIND_H

#include <stdbool.h>

#include "batchsql.h"

typedef struct job_kind_info {
	job_kind_t kind;
	const char *name;	 /* jobs.kind */
	const char *sql_column;	 /* the jobs column that holds its SQL */
	bool writes;		 /* its batches write the target: UPDATE privilege, who waits on their
				   row locks, the application's writes measured beside them */
	bool sql_param;		 /* its SQL is the batch statement's last parameter, checked by preparing
				   it alone with $1 and $2 typed as the key */
	bool records_mismatches; /* its batches record mismatches */
	bool vacuums;		 /* its batches update the target in place, leaving dead row versions:
				   it vacuums the target as it goes (throttle.vacuum_after_percent) */
	char *(*build)(const batch_spec_t *spec, bool first); /* its batch statement */
} job_kind_info_t;

/* The row of KIND (never NULL for a value of job_kind_t). */
const job_kind_info_t *job_kind_info(job_kind_t kind);

/* The kind named TEXT (a row's name), false when none is. */
bool job_kind_parse(const char *text, job_kind_t *out) __attribute__((warn_unused_result));
const char *job_kind_name(job_kind_t kind);

#endif
