/* Unit tests for util.c: milliseconds as a timeval, and HOST:PORT splitting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util.h"

static void test_ms_to_tv(void **state)
{
	struct timeval tv;

	(void)state;
	tv = util_ms_to_tv(1500);
	assert_int_equal(tv.tv_sec, 1);
	assert_int_equal(tv.tv_usec, 500000);
	tv = util_ms_to_tv(999);
	assert_int_equal(tv.tv_sec, 0);
	assert_int_equal(tv.tv_usec, 999000);
	tv = util_ms_to_tv(-5);
	assert_int_equal(tv.tv_sec, 0);
	assert_int_equal(tv.tv_usec, 0);
	tv = util_ms_to_tv(86400000LL * 365);
	assert_int_equal(tv.tv_sec, 86400LL * 365);
}

static void expect_split(const char *address, const char *host, const char *port)
{
	char h[64], p[16];

	if (!host) {
		assert_false(util_split_host_port(address, h, sizeof(h), p, sizeof(p)));
		return;
	}
	assert_true(util_split_host_port(address, h, sizeof(h), p, sizeof(p)));
	assert_string_equal(h, host);
	assert_string_equal(p, port);
}

static void test_split_host_port(void **state)
{
	(void)state;
	expect_split("127.0.0.1:9474", "127.0.0.1", "9474");
	expect_split("localhost:1", "localhost", "1");
	expect_split("[::1]:9474", "::1", "9474");
	expect_split("[fe80::1%eth0]:80", "fe80::1%eth0", "80");
	expect_split("::1:9474", "::1", "9474"); /* the last colon: the caller refuses unbracketed IPv6 */
	expect_split("noport", NULL, NULL);
	expect_split("host:", NULL, NULL);
	expect_split(":9474", NULL, NULL);
	expect_split("[::1]9474", NULL, NULL);
	expect_split("[]:1", NULL, NULL);
	expect_split("[::1", NULL, NULL);
	expect_split("a-very-long-host-name-that-does-not-fit-in-sixty-four-bytes-at-all.example:1", NULL,
		     NULL);
	expect_split("host:12345678901234567", NULL, NULL); /* the port does not fit */
}

static void test_strdup_and_calloc(void **state)
{
	char *s = util_strdup("abc");
	int *z = util_calloc(4, sizeof(int));

	(void)state;
	assert_string_equal(s, "abc");
	assert_null(util_strdup(NULL));
	for (int i = 0; i < 4; i++)
		assert_int_equal(z[i], 0);
	free(s);
	free(z);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ms_to_tv),
		cmocka_unit_test(test_split_host_port),
		cmocka_unit_test(test_strdup_and_calloc),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
