/* The job kinds as a table: see include/jobkind.h. */
#include "jobkind.h"

#include <stddef.h>
#include <string.h>

static const job_kind_info_t kinds[] = {
	{JOB_KIND_UPDATE, "update", "set_sql", true, false, false, true, batch_build_update},
	{JOB_KIND_STATEMENT, "statement", "batch_sql", true, true, false, false, batch_build_statement},
	{JOB_KIND_VERIFY, "verify", "mismatch_sql", false, false, true, false, batch_build_verify},
};
#define NKINDS (sizeof(kinds) / sizeof(kinds[0]))

const job_kind_info_t *job_kind_info(job_kind_t kind)
{
	for (size_t i = 0; i < NKINDS; i++)
		if (kinds[i].kind == kind)
			return &kinds[i];
	return &kinds[0];
}

bool job_kind_parse(const char *text, job_kind_t *out)
{
	for (size_t i = 0; i < NKINDS; i++) {
		if (text && strcmp(text, kinds[i].name) == 0) {
			*out = kinds[i].kind;
			return true;
		}
	}
	return false;
}

const char *job_kind_name(job_kind_t kind)
{
	for (size_t i = 0; i < NKINDS; i++)
		if (kinds[i].kind == kind)
			return kinds[i].name;
	return "?";
}
