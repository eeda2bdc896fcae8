/*
 * Checks of SQL text shared by the unit tests of the SQL builders (cmocka): needles present or
 * absent, the $N parameters, qualified names. Include after cmocka.h.
 */
#ifndef BACKFILLD_TEST_SQLCHECK_H
#define BACKFILLD_TEST_SQLCHECK_H

#include <stdbool.h>
#include <string.h>

#define MAX_PARAMS 64

static inline void expect_contains(const char *sql, const char *needle)
{
	if (!strstr(sql, needle))
		fail_msg("missing <<%s>> in:\n%s", needle, sql);
}

static inline void expect_absent(const char *sql, const char *needle)
{
	if (strstr(sql, needle))
		fail_msg("unexpected <<%s>> in:\n%s", needle, sql);
}

static inline int count_occurrences(const char *sql, const char *needle)
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
static inline void expect_params(const char *sql, int want)
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

/*
 * Every function, cast and operator the daemon adds to a job's session is qualified, so that
 * nothing a user creates on the session's search_path can stand in for it: each NEEDLE in SQL is
 * preceded by PREFIX.
 */
static inline void expect_qualified(const char *sql, const char *needle, const char *prefix)
{
	size_t plen = strlen(prefix);

	for (const char *p = strstr(sql, needle); p; p = strstr(p + 1, needle))
		if ((size_t)(p - sql) < plen || strncmp(p - plen, prefix, plen) != 0)
			fail_msg("<<%s>> without <<%s>> at offset %d in:\n%s", needle, prefix, (int)(p - sql),
				 sql);
}

#endif
