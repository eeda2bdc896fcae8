/*
 * Widening libconfig 1.5's integer literals: one pass over the text that tells strings,
 * comments, names and numbers apart, and keeps the names of the enclosing groups and the latest
 * key for an error.
 */
#include "widen.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The walk: the text, the copy made of it, and the names around the position. */
typedef struct scanner {
	const char *in;
	size_t n, i; /* the text's length, and the position in it */
	char *out;
	size_t o; /* the copy's length so far */
	unsigned line;
	char groups[WIDEN_MAX_DEPTH][WIDEN_NAME_LEN]; /* enclosing group names, for the key in an error */
	char last[WIDEN_NAME_LEN];		      /* the latest name, usually the key of the next value */
	int depth;
} scanner_t;

/* Copies one character, counting lines. */
static void scan_copy(scanner_t *s)
{
	s->line += s->in[s->i] == '\n';
	s->out[s->o++] = s->in[s->i++];
}

#define SCAN_COPY_WHILE(s, cond)          \
	while ((s)->i < (s)->n && (cond)) \
	scan_copy(s)

/* A quoted string, escapes and all. */
static void scan_string(scanner_t *s)
{
	scan_copy(s);
	while (s->i < s->n && s->in[s->i] != '"') {
		if (s->in[s->i] == '\\' && s->i + 1 < s->n)
			scan_copy(s);
		scan_copy(s);
	}
	if (s->i < s->n)
		scan_copy(s);
}

/* The integer literal from START to the position is beyond int64: ERR says where, and whose. */
static void scan_too_large(const scanner_t *s, size_t start, widen_error_t *err)
{
	char *key = err->key;
	size_t size = sizeof(err->key);

	key[0] = '\0';
	for (int d = 0; d < s->depth && d < WIDEN_MAX_DEPTH; d++)
		snprintf(key + strlen(key), size - strlen(key), "%s.", s->groups[d]);
	snprintf(key + strlen(key), size - strlen(key), "%s", s->last);
	err->line = s->line;
	err->literal = s->in + start;
	err->len = (int)(s->i - start);
}

/* A number (a sign may start it): copied, with an L appended to an integer beyond 32 bits.
 * False, with ERR filled, when an integer is beyond int64. */
static bool scan_number(scanner_t *s, widen_error_t *err)
{
	const char *in = s->in;
	size_t start = s->i;
	bool too_large, widen;

	if (in[s->i] == '-' || in[s->i] == '+')
		scan_copy(s);
	errno = 0;
	if (in[s->i] == '0' && (in[s->i + 1] == 'x' || in[s->i + 1] == 'X')) {
		/* Hex is truncated to 32 bits as well: 0x100000001 would read as 1. */
		unsigned long long hex = strtoull(in + s->i, NULL, 16);
		too_large = errno == ERANGE || hex > INT64_MAX;
		SCAN_COPY_WHILE(s, isalnum((unsigned char)in[s->i])); /* digits and any L */
		widen = hex > INT32_MAX && s->out[s->o - 1] != 'L';
	} else {
		SCAN_COPY_WHILE(s, isdigit((unsigned char)in[s->i]));
		if (in[s->i] == '.' || in[s->i] == 'e' || in[s->i] == 'E') {
			SCAN_COPY_WHILE(s, isdigit((unsigned char)in[s->i]) || strchr(".eE", in[s->i]) ||
						   ((in[s->i] == '-' || in[s->i] == '+') &&
						    (in[s->i - 1] == 'e' || in[s->i - 1] == 'E')));
			return true; /* a float */
		}
		long long value = strtoll(in + start, NULL, 10);
		too_large = errno == ERANGE;
		widen = in[s->i] != 'L' && (value < INT32_MIN || value > INT32_MAX);
	}
	if (too_large) {
		scan_too_large(s, start, err);
		return false;
	}
	if (widen)
		s->out[s->o++] = 'L';
	SCAN_COPY_WHILE(s, in[s->i] == 'L');
	return true;
}

char *widen_int_literals(const char *in, widen_error_t *err)
{
	scanner_t s = {.in = in, .n = strlen(in), .line = 1};

	s.out = malloc(2 * s.n + 1);
	if (!s.out) {
		err->literal = NULL;
		return NULL;
	}
	while (s.i < s.n) {
		char c = in[s.i], next = in[s.i + 1];
		if (c == '"') {
			scan_string(&s);
		} else if (c == '#' || (c == '/' && next == '/')) {
			SCAN_COPY_WHILE(&s, in[s.i] != '\n');
		} else if (c == '/' && next == '*') {
			scan_copy(&s);
			scan_copy(&s);
			SCAN_COPY_WHILE(&s, !(in[s.i] == '*' && in[s.i + 1] == '/'));
		} else if (isalpha((unsigned char)c) || c == '*') {
			size_t start = s.i;
			SCAN_COPY_WHILE(&s, isalnum((unsigned char)in[s.i]) || strchr("_*-", in[s.i]));
			snprintf(s.last, sizeof(s.last), "%.*s", (int)(s.i - start), in + start);
		} else if (isdigit((unsigned char)c) || ((c == '-' || c == '+' || c == '.') &&
							 (isdigit((unsigned char)next) || next == '.'))) {
			if (!scan_number(&s, err)) {
				free(s.out);
				return NULL;
			}
		} else {
			if (c == '{' && s.depth++ < WIDEN_MAX_DEPTH)
				snprintf(s.groups[s.depth - 1], sizeof(s.groups[0]), "%s", s.last);
			else if (c == '}' && s.depth > 0)
				s.depth--;
			scan_copy(&s);
		}
	}
	s.out[s.o] = '\0';
	return s.out;
}
