/*
 * Unit tests for keys.c: text[] literals as array_out prints them, the always-quoted form
 * keys_encode writes, rejection of what a key can never be, and a seeded random round trip.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "keys.h"

/* Decode LITERAL and check it gives exactly the N strings in WANT. */
static void expect_decoded(const char *literal, const char *const *want, int n)
{
	jobkey_t key;

	assert_true(keys_decode(literal, &key));
	assert_int_equal(key.n, n);
	for (int i = 0; i < n; i++)
		assert_string_equal(key.values[i], want[i]);
	keys_clear(&key);
	assert_null(key.values);
	assert_int_equal(key.n, 0);
}

static void expect_rejected(const char *literal)
{
	jobkey_t key = {(char **)&key, 99};

	if (keys_decode(literal, &key))
		fail_msg("accepted %s", literal);
	assert_null(key.values);
	assert_int_equal(key.n, 0);
}

/* Encode VALUES, decode the result, and compare. */
static void expect_round_trip(const char *const *values, int n)
{
	jobkey_t in = {(char **)values, n};
	jobkey_t out;
	char *text = keys_encode(&in);

	assert_non_null(text);
	assert_true(keys_decode(text, &out));
	assert_int_equal(out.n, n);
	for (int i = 0; i < n; i++)
		assert_string_equal(out.values[i], values[i]);
	keys_clear(&out);
	free(text);
}

static void test_decode_array_out_forms(void **state)
{
	(void)state;
	expect_decoded("{}", NULL, 0);
	expect_decoded("{1}", (const char *const[]){"1"}, 1);
	expect_decoded("{1,2}", (const char *const[]){"1", "2"}, 2);
	expect_decoded("{\"a b\",\"x\\\"y\",\"back\\\\slash\",\"\"}",
		       (const char *const[]){"a b", "x\"y", "back\\slash", ""}, 4);
	expect_decoded("{\"NULL\",\"null\"}", (const char *const[]){"NULL", "null"}, 2);
	expect_decoded("{NULLS,nul,xnull}", (const char *const[]){"NULLS", "nul", "xnull"}, 3);
	expect_decoded("{2024-01-01,-5,1.5e3}", (const char *const[]){"2024-01-01", "-5", "1.5e3"}, 3);
	expect_decoded("{\"{}\",\",\",\"}\"}", (const char *const[]){"{}", ",", "}"}, 3);
	expect_decoded("{żółw,日本語,\"Ωmega x\"}", (const char *const[]){"żółw", "日本語", "Ωmega x"}, 3);
	/* Inside quotes array_in drops the backslash before any character. */
	expect_decoded("{\"\\a\\b\"}", (const char *const[]){"ab"}, 1);
}

static void test_decode_whitespace(void **state)
{
	(void)state;
	expect_decoded("  {a,b}\n", (const char *const[]){"a", "b"}, 2);
	expect_decoded("{ a , \"b \" }", (const char *const[]){"a", "b "}, 2);
	expect_decoded("{ }", NULL, 0);
	expect_decoded("\t{\"\"}\r\n", (const char *const[]){""}, 1);
}

static void test_decode_rejects(void **state)
{
	static const char *const bad[] = {
		/* not a text[] literal at all, or unbalanced */
		"",
		"   ",
		"1,2",
		"(a,b)",
		"{",
		"}",
		"{a",
		"{a,",
		"{\"a}",
		"{\"a\\",
		"{\"a\\\"}",
		/* trailing garbage */
		"{a}}",
		"{a}x",
		"{a} {b}",
		"{a;b}x",
		/* empty elements */
		"{,}",
		"{,a}",
		"{a,}",
		"{a,,b}",
		/* NULL elements: key columns are NOT NULL */
		"{NULL}",
		"{null}",
		"{Null,1}",
		"{1, nUlL }",
		/* nested arrays and dimension decorations */
		"{{a}}",
		"{{a},{b}}",
		"{a,{b}}",
		"[0:1]={a,b}",
		"[1:1]={a}",
		/* array_out would have quoted these; array_in would even take some */
		"{a b}",
		"{a\\,b}",
		"{a\\b}",
		"{a\"b\"}",
		"{\"a\"b}",
		"{\"a\" \"b\"}",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_rejected(bad[i]);
	expect_rejected(NULL);
	assert_false(keys_decode("{a}", NULL));
}

static void test_round_trip_tricky(void **state)
{
	static const char *const tricky[] = {
		/* empty, whitespace, and what array_in treats specially */
		"",
		" ",
		"  lead",
		"trail  ",
		"a b",
		"\t\n\r\v\f",
		"\"",
		"\"\"",
		"\\",
		"\\\\",
		"back\\slash\"quote",
		",",
		"{",
		"}",
		"{}",
		"{a,b}",
		"[0:1]={x}",
		/* the word NULL is only a null element when unquoted */
		"NULL",
		"null",
		"Null",
		/* multibyte UTF-8 and SQL-ish punctuation */
		"日本語",
		"żółw 🐢",
		"'",
		"$1",
	};
	int n = (int)(sizeof(tricky) / sizeof(tricky[0]));

	(void)state;
	expect_round_trip(NULL, 0);
	for (int i = 0; i < n; i++)
		expect_round_trip(&tricky[i], 1);
	expect_round_trip(tricky, n);
}

static void test_encode_form(void **state)
{
	const char *const values[] = {"1", "a\"b", "c\\d", ""};
	jobkey_t key = {(char **)values, 4};
	jobkey_t empty = {NULL, 0};
	const char *const with_null[] = {"a", NULL};
	jobkey_t bad = {(char **)with_null, 2};
	jobkey_t negative = {NULL, -1};
	char *text;

	(void)state;
	text = keys_encode(&key);
	assert_string_equal(text, "{\"1\",\"a\\\"b\",\"c\\\\d\",\"\"}");
	free(text);
	text = keys_encode(&empty);
	assert_string_equal(text, "{}");
	free(text);
	assert_null(keys_encode(&bad));
	assert_null(keys_encode(&negative));
	assert_null(keys_encode(NULL));
}

static void test_clear_is_safe(void **state)
{
	jobkey_t key = {NULL, 0};

	(void)state;
	keys_clear(&key);
	keys_clear(&key);
	keys_clear(NULL);
}

/* xorshift64*: a fixed sequence on every platform, unlike rand(). */
static uint64_t rng_state = UINT64_C(0x9e3779b97f4a7c15);

static uint32_t rng_next(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * UINT64_C(0x2545f4914f6cdd1d)) >> 32);
}

/* A random string drawn mostly from characters that matter to the array syntax. */
static char *random_value(void)
{
	static const char *const pieces[] = {
		/* array syntax */
		"\"",
		"\\",
		",",
		"{",
		"}",
		"[",
		"]",
		":",
		"=",
		/* whitespace and the null word */
		" ",
		"\t",
		"\n",
		"NULL",
		"null",
		/* plain and multibyte text, control bytes, a byte that is not UTF-8 */
		"a",
		"Z",
		"0",
		"9",
		"-",
		".",
		"'",
		"$",
		"é",
		"日",
		"🐢",
		"\x01",
		"\x7f",
		"\xff",
	};
	size_t npieces = sizeof(pieces) / sizeof(pieces[0]);
	int count = (int)(rng_next() % 12);
	char *value = malloc((size_t)count * 4 + 1);

	assert_non_null(value);
	value[0] = '\0';
	for (int i = 0; i < count; i++)
		strcat(value, pieces[rng_next() % npieces]);
	return value;
}

static void test_round_trip_random(void **state)
{
	(void)state;
	for (int iter = 0; iter < 20000; iter++) {
		jobkey_t in, out;
		char *text;

		in.n = (int)(rng_next() % 6);
		in.values = calloc((size_t)in.n + 1, sizeof(char *));
		assert_non_null(in.values);
		for (int i = 0; i < in.n; i++)
			in.values[i] = random_value();

		text = keys_encode(&in);
		assert_non_null(text);
		assert_true(keys_decode(text, &out));
		assert_int_equal(out.n, in.n);
		for (int i = 0; i < in.n; i++)
			assert_string_equal(out.values[i], in.values[i]);
		keys_clear(&out);
		free(text);
		keys_clear(&in);
	}
}

/*
 * Mutated literals: whatever decode accepts must survive encode and decode unchanged,
 * and nothing may crash or leak (run under ASan or valgrind to see the latter).
 */
static void test_decode_mutations(void **state)
{
	static const char alphabet[] = "{}\",\\ aN[]:=";

	(void)state;
	for (int iter = 0; iter < 20000; iter++) {
		const char *const seed[] = {"a", "b c", "\"", "NULL"};
		jobkey_t in = {(char **)seed, (int)(rng_next() % 5)};
		jobkey_t first, second;
		char *text = keys_encode(&in);
		size_t len;
		int edits = 1 + (int)(rng_next() % 3);

		assert_non_null(text);
		len = strlen(text);
		for (int e = 0; e < edits && len > 0; e++) {
			size_t at = rng_next() % len;

			if (rng_next() % 4 == 0)
				text[at] = '\0'; /* truncate */
			else
				text[at] = alphabet[rng_next() % (sizeof(alphabet) - 1)];
			len = strlen(text);
		}

		if (keys_decode(text, &first)) {
			char *again = keys_encode(&first);

			assert_non_null(again);
			assert_true(keys_decode(again, &second));
			assert_int_equal(second.n, first.n);
			for (int i = 0; i < first.n; i++)
				assert_string_equal(second.values[i], first.values[i]);
			keys_clear(&second);
			keys_clear(&first);
			free(again);
		}
		free(text);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decode_array_out_forms),
		cmocka_unit_test(test_decode_whitespace),
		cmocka_unit_test(test_decode_rejects),
		cmocka_unit_test(test_round_trip_tricky),
		cmocka_unit_test(test_encode_form),
		cmocka_unit_test(test_clear_is_safe),
		cmocka_unit_test(test_round_trip_random),
		cmocka_unit_test(test_decode_mutations),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
