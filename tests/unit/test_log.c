/*
 * Unit tests for log.c, on what it writes to stderr (a file here, so lines carry "<N>"): one
 * call is one line, control characters escaped, passwords masked, long messages cut on a
 * character boundary and marked, levels filtered, errno kept.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "text.h"

static int saved_stderr = -1;
static FILE *captured;

static void capture_start(void)
{
	fflush(stderr);
	captured = tmpfile();
	assert_non_null(captured);
	saved_stderr = dup(STDERR_FILENO);
	assert_true(saved_stderr >= 0);
	assert_true(dup2(fileno(captured), STDERR_FILENO) >= 0);
}

/* What was written since capture_start. Caller frees. */
static char *capture_end(void)
{
	long len;
	char *text;

	fflush(stderr);
	assert_true(dup2(saved_stderr, STDERR_FILENO) >= 0);
	close(saved_stderr);
	len = ftell(captured);
	assert_true(len >= 0);
	text = calloc(1, (size_t)len + 1);
	assert_non_null(text);
	rewind(captured);
	assert_int_equal(fread(text, 1, (size_t)len, captured), (size_t)len);
	fclose(captured);
	return text;
}

static int setup(void **state)
{
	(void)state;
	log_configure(LOG_LEVEL_DEBUG, false);
	return 0;
}

static void test_one_call_one_line(void **state)
{
	char *out;
	(void)state;

	capture_start();
	log_msg(LOG_LEVEL_INFO, "job 1 (public.we\nird<0>\x1b[31m)", "a\nb\r<3>c\x1b[0m \xc3\xa9 \xff%s",
		"\n");
	out = capture_end();
	assert_string_equal(out,
			    "<6>job 1 (public.we\\nird<0>\\x1b[31m): a\\nb\\r<3>c\\x1b[0m \xc3\xa9 \\xff\n");
	free(out);
}

static void test_levels_and_errno(void **state)
{
	char *out;
	(void)state;

	capture_start();
	log_configure(LOG_LEVEL_WARNING, false);
	errno = EAGAIN;
	log_info("hidden");
	log_error("shown: %d", 7);
	int kept = errno;
	log_configure(LOG_LEVEL_DEBUG, false);
	out = capture_end();
	assert_int_equal(kept, EAGAIN);
	assert_string_equal(out, "<3>shown: 7\n");
	free(out);
}

static void test_passwords_masked(void **state)
{
	char *out;
	(void)state;

	capture_start();
	log_msg(LOG_LEVEL_NOTICE, "queue", "cannot connect: %s; reconnecting in 250 ms",
		"end of string reached when looking for matching \"]\" in IPv6 host address in URI: "
		"\"postgresql://u:s3cret@[::1/x\"");
	log_debug("conninfo host=h password=s3cret dbname=x");
	out = capture_end();
	assert_null(strstr(out, "s3cret"));
	assert_non_null(strstr(out, "<5>queue: cannot connect: "));
	assert_non_null(strstr(out, "\"postgresql://u:" TEXT_MASK "@[::1/x\"; reconnecting in 250 ms\n"));
	assert_non_null(strstr(out, "<7>conninfo host=h password=" TEXT_MASK " dbname=x\n"));
	free(out);
}

/* Every line of OUT starts "<N>", holds no control character and no broken UTF-8. */
static void expect_clean_lines(const char *out, int want_lines)
{
	int lines = 0;

	for (const char *p = out; *p; lines++) {
		const char *end = strchr(p, '\n');
		assert_non_null(end);
		assert_true(p[0] == '<' && p[1] >= '0' && p[1] <= '7' && p[2] == '>');
		for (const char *q = p; q < end; q++)
			assert_true((unsigned char)*q >= 0x20 && *q != 0x7f);
		assert_int_equal(text_utf8_prefix(p, (size_t)(end - p)), (size_t)(end - p));
		p = end + 1;
	}
	assert_int_equal(lines, want_lines);
}

static void test_long_messages_cut_and_marked(void **state)
{
	char *big = malloc(9001), *out;
	(void)state;

	assert_non_null(big);
	/* 3000 two-byte characters: the 2048-byte limit falls inside one. */
	for (int i = 0; i < 3000; i++)
		memcpy(big + 2 * i, "\xc3\xa9", 2);
	big[6000] = '\0';
	capture_start();
	log_info("%s", big);
	/* Control bytes escape to four: the escaped line's limit is what cuts. */
	memset(big, '\x01', 9000);
	big[9000] = '\0';
	log_info("%s", big);
	log_info("short");
	out = capture_end();
	expect_clean_lines(out, 3);
	char *second = strchr(out, '\n') + 1;
	assert_int_equal(second - out, strlen("<6>") + 2046 + strlen(" [truncated]\n"));
	assert_memory_equal(second - 1 - strlen(" [truncated]"), " [truncated]", strlen(" [truncated]"));
	char *third = strchr(second, '\n') + 1;
	assert_true(third - second <= 4096 + 4);
	assert_memory_equal(third - 1 - strlen(" [truncated]"), " [truncated]", strlen(" [truncated]"));
	assert_string_equal(third, "<6>short\n");
	free(out);
	free(big);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_call_one_line),
		cmocka_unit_test(test_levels_and_errno),
		cmocka_unit_test(test_passwords_masked),
		cmocka_unit_test(test_long_messages_cut_and_marked),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
