/*
 * Unit tests for text.c: character boundaries (every cut of 1- to 4-byte characters, invalid
 * bytes, exact fits), the snprintf that cuts on them, one-line escaping, and password masking
 * in connection strings and in messages, with and without registered secrets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "text.h"

#define M TEXT_MASK

/* "a", U+00E9, U+20AC, U+1F600, "b": characters of 1, 2, 3, 4 and 1 bytes. */
static const char mixed[] = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"
			    "b";
static const size_t mixed_bounds[] = {0, 1, 3, 6, 10, 11};

/* The largest of the N BOUNDS that is <= MAX. */
static size_t bound_below(const size_t *bounds, size_t n, size_t max)
{
	size_t best = 0;

	for (size_t i = 0; i < n; i++)
		if (bounds[i] <= max)
			best = bounds[i];
	return best;
}

static void expect_prefixes(const char *s, const size_t *bounds, size_t n)
{
	for (size_t max = 0; max <= strlen(s) + 2; max++) {
		size_t want = bound_below(bounds, n, max);
		size_t got = text_utf8_prefix(s, max);
		if (got != want)
			fail_msg("\"%s\" at most %zu bytes: got %zu, want %zu", s, max, got, want);
	}
	assert_int_equal(text_utf8_prefix(s, SIZE_MAX), strlen(s));
}

static void test_prefix_valid(void **state)
{
	static const size_t ascii[] = {0, 1, 2, 3};
	static const size_t edges[] = {0, 3, 6, 9, 13};
	(void)state;

	expect_prefixes(mixed, mixed_bounds, sizeof(mixed_bounds) / sizeof(mixed_bounds[0]));
	expect_prefixes("abc", ascii, 4);
	/* U+D7FF, U+E000, U+FFFF, U+10FFFF: the last characters before and after each gap. */
	expect_prefixes("\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\xf4\x8f\xbf\xbf", edges, 5);
	assert_int_equal(text_utf8_prefix("", 0), 0);
	assert_int_equal(text_utf8_prefix("", 10), 0);
	assert_int_equal(text_utf8_prefix("\xc3\xa9", 2), 2); /* exact fit */
	assert_int_equal(text_utf8_prefix("\xc3\xa9", 1), 0);
	assert_int_equal(text_utf8_prefix("\xf0\x9f\x98\x80", 3), 0);
	assert_int_equal(text_utf8_prefix("\xf0\x9f\x98\x80", 4), 4);
}

/* Bytes that are not valid UTF-8 are characters of their own: never a reason to stop early. */
static void test_prefix_invalid(void **state)
{
	static const size_t singles4[] = {0, 1, 2, 3, 4};
	static const size_t singles3[] = {0, 1, 2, 3};
	static const size_t stray[] = {0, 1, 2, 3};
	static const size_t cut_then_ascii[] = {0, 1, 2, 3, 4};
	static const size_t ends_inside[] = {0, 1, 2, 3, 4};
	(void)state;

	expect_prefixes("\xf4\x90\x80\x80", singles4, 5); /* past U+10FFFF */
	expect_prefixes("\xf8\x88\x80\x80", singles4, 5); /* 5-byte form */
	expect_prefixes("\xed\xa0\x80", singles3, 4);	  /* a surrogate */
	expect_prefixes("\xe0\x80\xaf", singles3, 4);	  /* overlong */
	expect_prefixes("a\x80"
			"b",
			stray, 4);
	expect_prefixes("\xe2\x82"
			"ab",
			cut_then_ascii, 5);
	expect_prefixes("ab\xe2\x82", ends_inside, 5); /* the string ends inside a sequence */
	assert_int_equal(text_utf8_prefix("\xc0\xaf", 1), 1);
	assert_int_equal(text_utf8_prefix("\xff", 1), 1);
}

static void test_snprintf_every_length(void **state)
{
	(void)state;

	for (size_t len = 0; len <= sizeof(mixed) + 2; len++) {
		char buf[32];
		memset(buf, '#', sizeof(buf));
		int n = text_snprintf(buf, len, "%s", mixed);
		assert_int_equal(n, (int)strlen(mixed));
		if (len == 0) {
			assert_int_equal(buf[0], '#');
			continue;
		}
		size_t want = text_utf8_prefix(mixed, len - 1);
		assert_int_equal(strlen(buf), want);
		assert_memory_equal(buf, mixed, want);
		assert_int_equal(buf[len], '#'); /* nothing past LEN written */
	}
}

static void test_snprintf_formats_and_bad_bytes(void **state)
{
	char buf[16];
	(void)state;

	assert_int_equal(text_snprintf(buf, sizeof(buf), "%d-%s", 42, "x"), 4);
	assert_string_equal(buf, "42-x");
	/* Exactly fits. */
	assert_int_equal(text_snprintf(buf, 3, "%s", "\xc3\xa9"), 2);
	assert_string_equal(buf, "\xc3\xa9");
	/* Invalid bytes that fit are kept; a complete text is never changed. */
	assert_int_equal(text_snprintf(buf, 4, "%s", "a\xe2\x82"), 3);
	assert_string_equal(buf, "a\xe2\x82");
	assert_int_equal(text_snprintf(buf, 3, "%s",
				       "a\xff"
				       "b"),
			 3);
	assert_string_equal(buf, "a\xff");
	/* A cut that might split a character drops what it cannot tell apart. */
	assert_int_equal(text_snprintf(buf, 4, "%s", "a\xe2\x82x"), 4);
	assert_string_equal(buf, "a");
	/* An error text cut inside its last character (PostgreSQL would refuse it: 22021). */
	assert_int_equal(text_snprintf(buf, 6, "%s: %s", "e", "\xe2\x82\xac"), 6);
	assert_string_equal(buf, "e: ");
}

static void expect_escape(const char *in, const char *want)
{
	char out[256];

	assert_true(text_escape_line(out, sizeof(out), in));
	assert_string_equal(out, want);
}

static void test_escape_line(void **state)
{
	(void)state;

	expect_escape("plain text, \"quoted\" <ok>", "plain text, \"quoted\" <ok>");
	expect_escape("", "");
	expect_escape("a\nb\rc\td\\e", "a\\nb\\rc\\td\\\\e");
	expect_escape("x\n<0>forged", "x\\n<0>forged");
	expect_escape("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m");
	expect_escape("\x01\x1f\x7f", "\\x01\\x1f\\x7f");
	expect_escape(mixed, mixed);
	expect_escape("\xc2\x9b"
		      "2J\xc2\x85",
		      "\\xc2\\x9b2J\\xc2\\x85");		 /* C1 controls */
	expect_escape("\xc2\xa0|\xc2\xbf", "\xc2\xa0|\xc2\xbf"); /* not C1 */
	expect_escape("\xff\xc0\xaf", "\\xff\\xc0\\xaf");
	expect_escape("\xed\xa0\x80", "\\xed\\xa0\\x80");
	expect_escape("ab\xe2\x82", "ab\\xe2\\x82");
}

/* A short buffer ends at a whole character or escape, never inside one. */
static void test_escape_line_bounded(void **state)
{
	const char *in = "\xc3\xa9\x1b\xe2\x82\xac";
	const char *full = "\xc3\xa9\\x1b\xe2\x82\xac";
	static const size_t bounds[] = {0, 2, 6, 9};
	(void)state;

	for (size_t outlen = 1; outlen <= 12; outlen++) {
		char out[16];
		bool all = text_escape_line(out, outlen, in);
		size_t want = bound_below(bounds, 4, outlen - 1);
		assert_int_equal(strlen(out), want);
		assert_memory_equal(out, full, want);
		assert_int_equal(all, want == strlen(full));
	}
	assert_false(text_escape_line(NULL, 0, "x"));
	assert_true(text_escape_line(NULL, 0, ""));
}

static void expect_conninfo(const char *in, const char *want)
{
	char *got = text_mask_conninfo(in);

	assert_non_null(got);
	if (strcmp(got, want) != 0)
		fail_msg("masking <<%s>>: got <<%s>>, want <<%s>>", in, got, want);
	free(got);
}

static void test_mask_keyword_conninfo(void **state)
{
	(void)state;

	expect_conninfo("host=127.0.0.1 password=s3cret dbname=x", "host=127.0.0.1 password=" M " dbname=x");
	expect_conninfo("password=s3cret", "password=" M);
	expect_conninfo("  password  =  's3 cr\\'et'  host=h", "  password  =  " M "  host=h");
	expect_conninfo("password='q\"uo\\\\te'\ttab", "password=" M "\ttab");
	expect_conninfo("password=a\\ b host=h", "password=" M " host=h");
	expect_conninfo("host=h PASSWORD=s3cret", "host=h PASSWORD=" M);
	expect_conninfo("sslpassword=keypw host=h", "sslpassword=" M " host=h");
	expect_conninfo("host=h password='unterminated dbname=x", "host=h password=" M);
	expect_conninfo("host=h password s3cret", "host=h password " M); /* libpq refuses it */
	expect_conninfo("host=h sslpassword s3cret", "host=h sslpassword " M);
	expect_conninfo("dbname=mypassword host=h", "dbname=mypassword host=h");
	expect_conninfo("password= host=h", "password= " M); /* libpq's value is "host=h" */
	expect_conninfo("password=", "password=");
	expect_conninfo("password=''", "password=" M);
	/* A closing quote run into more text (malformed): masked up to the whitespace, so that
	 * masking the masked text again changes nothing (the fuzzer's config round trip). */
	expect_conninfo("password='''' x", "password=" M " x");
	expect_conninfo("password=''''' x", "password=" M); /* the fifth quote opens an unterminated value */
	expect_conninfo("password='a'b'c' dbname=x", "password=" M " dbname=x");
	expect_conninfo("passfile=/x/y dbname=passwords", "passfile=/x/y dbname=passwords");
	expect_conninfo("dbname=postgresql://u:s3cret@h/x host=y", "dbname=postgresql://u:" M "@h/x host=y");
	expect_conninfo("", "");
}

static void test_mask_uri_conninfo(void **state)
{
	(void)state;

	expect_conninfo("postgresql://u:s3cret@127.0.0.1/x", "postgresql://u:" M "@127.0.0.1/x");
	expect_conninfo("postgres://u:s3cret@h:5432/x?sslmode=require",
			"postgres://u:" M "@h:5432/x?sslmode=require");
	expect_conninfo("postgresql://u:s3cret@h1:5432,h2:5433/x", "postgresql://u:" M "@h1:5432,h2:5433/x");
	expect_conninfo("postgresql://u@h/x?password=s3cret&sslmode=require",
			"postgresql://u@h/x?password=" M "&sslmode=require");
	expect_conninfo("postgresql://h/x?sslmode=require&sslpassword=k#frag",
			"postgresql://h/x?sslmode=require&sslpassword=" M "#frag");
	expect_conninfo("postgresql://h/x?pass%77ord=s3cret", "postgresql://h/x?pass%77ord=" M);
	/* Malformed: an open bracket, unencoded '@', '/', ' ' and '?' in the password. */
	expect_conninfo("postgresql://u:s3cret@[::1/x", "postgresql://u:" M "@[::1/x");
	expect_conninfo("postgresql://u:p@ss/w rd?@h/x", "postgresql://u:" M "@h/x");
	expect_conninfo("  postgresql://u:s3 cret@h/x", "  postgresql://u:" M "@h/x");
	expect_conninfo("postgresql://u:s3%zzcret@h/x", "postgresql://u:" M "@h/x");
	/* Nothing to hide. */
	expect_conninfo("postgresql://[::1]:5432/x", "postgresql://[::1]:5432/x");
	expect_conninfo("postgresql://u@h:5432/x", "postgresql://u@h:5432/x");
	expect_conninfo("postgresql://u:@h/x", "postgresql://u:@h/x");
	expect_conninfo("postgresql://", "postgresql://");
}

static void expect_masked(const char *in, const char *want)
{
	char *got = text_mask(in);

	assert_non_null(got);
	if (strcmp(got, want) != 0)
		fail_msg("masking <<%s>>: got <<%s>>, want <<%s>>", in, got, want);
	free(got);
}

/* libpq's own messages (and some of ours) around connection strings. */
static void test_mask_messages(void **state)
{
	(void)state;

	expect_masked("end of string reached when looking for matching \"]\" in IPv6 host address in URI: "
		      "\"postgresql://u:s3cret@[::1/x\"\n",
		      "end of string reached when looking for matching \"]\" in IPv6 host address in URI: "
		      "\"postgresql://u:" M "@[::1/x\"\n");
	expect_masked("missing \"=\" after \"postgresql://u:my secret@h\" in connection info string",
		      "missing \"=\" after \"postgresql://u:" M "@h\" in connection info string");
	expect_masked("unexpected character \"x\" at position 30 in URI (expected \":\" or \"/\"): "
		      "\"postgresql://u:p\"w@h:5x/db\"; reconnecting in 250 ms",
		      "unexpected character \"x\" at position 30 in URI (expected \":\" or \"/\"): "
		      "\"postgresql://u:" M "@h:5x/db\"; reconnecting in 250 ms");
	expect_masked("see http://admin:hunter22@example.com/x and postgres://v:w@h",
		      "see http://admin:" M "@example.com/x and postgres://v:" M "@h");
	expect_masked("conninfo host=h password=s3cret\tdbname=x",
		      "conninfo host=h password=" M "\tdbname=x");
	expect_masked("invalid URI query parameter: \"bogus\"", "invalid URI query parameter: \"bogus\"");
	expect_masked("connection to server at \"127.0.0.1\", port 1 failed: Connection refused",
		      "connection to server at \"127.0.0.1\", port 1 failed: Connection refused");
	expect_masked("password authentication failed for user \"u\"",
		      "password authentication failed for user \"u\"");
	expect_masked("job 1 (public.passwords): batch 3", "job 1 (public.passwords): batch 3");
	expect_masked("listening on postgresql://h:5432/x", "listening on postgresql://h:5432/x");
	expect_masked("", "");
}

static void test_mask_into_bounded_and_cut(void **state)
{
	const char *in = "x postgresql://u:s3cret@h \xe2\x82\xac";
	char out[64];
	(void)state;

	/* The whole length comes back; the output stops at a character boundary. */
	size_t want = strlen("x postgresql://u:" M "@h \xe2\x82\xac");
	assert_int_equal(text_mask_into(out, sizeof(out), in, false), want);
	assert_string_equal(out, "x postgresql://u:" M "@h \xe2\x82\xac");
	assert_int_equal(text_mask_into(out, want, in, false), want);
	assert_string_equal(out, "x postgresql://u:" M "@h ");
	assert_int_equal(text_mask_into(out, 12, in, false), want);
	assert_string_equal(out, "x postgresq");
	assert_int_equal(text_mask_into(NULL, 0, in, false), want);

	/* A text cut inside a URI, before its '@': the rest may be a password. */
	text_mask_into(out, sizeof(out), "x \"postgresql://u:s3cr", true);
	assert_string_equal(out, "x \"postgresql://u:" M);
	text_mask_into(out, sizeof(out), "x postgresql://u:p@ss", true);
	assert_string_equal(out, "x postgresql://u:" M);
	text_mask_into(out, sizeof(out), "x postgresql://u:s3cr", false);
	assert_string_equal(out, "x postgresql://u:s3cr");
	text_mask_into(out, sizeof(out), "x postgresql://u:s3cret@h and more", true);
	assert_string_equal(out, "x postgresql://u:" M "@h and more");
}

/* More fragments than the span table holds: everything from the first one left over is masked. */
static void test_mask_many(void **state)
{
	char in[1024] = "", *out;
	(void)state;

	for (int i = 0; i < 40; i++)
		strcat(in, "password=x ");
	out = text_mask(in);
	assert_non_null(out);
	assert_null(strstr(out, "=x"));
	assert_non_null(strstr(out, "password=" M));
	free(out);
}

static void test_registered_secrets(void **state)
{
	char out[128];
	(void)state;

	assert_true(text_secrets_add_conninfo("postgresql://u:s3cret%zz@127.0.0.1/x"));
	expect_masked("invalid percent-encoded token: \"s3cret%zz\"",
		      "invalid percent-encoded token: \"" M "\"");
	/* The start of one that a cut text ends with. */
	text_mask_into(out, sizeof(out), "token: \"s3cr", true);
	assert_string_equal(out, "token: \"" M);
	text_mask_into(out, sizeof(out), "token: \"s3cr", false);
	assert_string_equal(out, "token: \"s3cr");

	assert_true(text_secrets_add_conninfo("host=h password='s3 cr\\'et' dbname=x"));
	expect_masked("got s3 cr'et here", "got " M " here");
	assert_true(text_secrets_add_conninfo("postgresql://u:p%40ssword1@h/x"));
	expect_masked("p@ssword1 and p%40ssword1", M " and " M);
	expect_conninfo("host=h user=s3cret%zz", "host=h user=" M);

	/* Too short to mask everywhere. */
	assert_true(text_secrets_add_conninfo("password=abc"));
	expect_masked("abc", "abc");

	text_secrets_clear();
	expect_masked("token: \"s3cret%zz\"", "token: \"s3cret%zz\"");
}

static void test_registry_full(void **state)
{
	bool ok = true;
	int added = 0;
	(void)state;

	for (int i = 0; i < 100 && ok; i++) {
		char conninfo[64];
		snprintf(conninfo, sizeof(conninfo), "password=secret%03d", i);
		ok = text_secrets_add_conninfo(conninfo);
		added += ok;
	}
	assert_false(ok);
	assert_true(added >= 16);
	expect_masked("secret000", M);
	/* Known ones are no new entries. */
	assert_true(text_secrets_add_conninfo("password=secret000"));
	text_secrets_clear();
	expect_masked("secret000", "secret000");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_prefix_valid),
		cmocka_unit_test(test_prefix_invalid),
		cmocka_unit_test(test_snprintf_every_length),
		cmocka_unit_test(test_snprintf_formats_and_bad_bytes),
		cmocka_unit_test(test_escape_line),
		cmocka_unit_test(test_escape_line_bounded),
		cmocka_unit_test(test_mask_keyword_conninfo),
		cmocka_unit_test(test_mask_uri_conninfo),
		cmocka_unit_test(test_mask_messages),
		cmocka_unit_test(test_mask_into_bounded_and_cut),
		cmocka_unit_test(test_mask_many),
		cmocka_unit_test(test_registered_secrets),
		cmocka_unit_test(test_registry_full),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
