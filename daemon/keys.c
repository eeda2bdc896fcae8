/*
 * Key encoding: checkpoints and recorded keys travel as PostgreSQL text[] literals.
 * The decoder reads what array_out prints (and tolerates the whitespace array_in skips);
 * the encoder quotes every element so array_in gives the exact values back.
 */
#include "keys.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The characters array_in skips and array_out quotes (arrayfuncs.c array_isspace). */
static bool keys_is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Characters an unquoted element may not hold: array_out quotes any element with one. */
static bool keys_is_special(char c)
{
	return c == ',' || c == '{' || c == '}' || c == '"' || c == '\\' || keys_is_space(c);
}

static const char *keys_skip_space(const char *p)
{
	while (keys_is_space(*p))
		p++;
	return p;
}

/* array_in reads an unquoted NULL in any letter case as a null element. */
static bool keys_is_null_word(const char *s, size_t len)
{
	static const char word[] = "null";

	if (len != sizeof(word) - 1)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((s[i] | 0x20) != word[i])
			return false;
	return true;
}

/*
 * Read one element at *P into a new string. A quoted element ends at its closing quote,
 * an unquoted one at the next special character; nothing past the terminator is read.
 * Returns NULL (leaving *P anywhere) on malformed input or when out of memory.
 */
static char *keys_read_element(const char **p)
{
	const char *s = *p;
	const char *start;
	char *value;
	size_t len = 0;

	if (*s == '"') {
		/* Measure first so the copy is exactly as long as the source span. */
		start = ++s;
		for (;;) {
			if (*s == '\0')
				return NULL;
			if (*s == '"')
				break;
			if (*s == '\\') {
				s++;
				if (*s == '\0')
					return NULL;
			}
			s++;
			len++;
		}
		value = malloc(len + 1);
		if (!value)
			return NULL;
		for (size_t i = 0; i < len; i++) {
			if (*start == '\\')
				start++;
			value[i] = *start++;
		}
		value[len] = '\0';
		*p = s + 1;
		return value;
	}

	start = s;
	while (*s != '\0' && !keys_is_special(*s))
		s++;
	len = (size_t)(s - start);
	if (len == 0 || keys_is_null_word(start, len))
		return NULL;
	value = malloc(len + 1);
	if (!value)
		return NULL;
	memcpy(value, start, len);
	value[len] = '\0';
	*p = s;
	return value;
}

/* Append VALUE to KEY, growing the array geometrically. */
static bool keys_append(jobkey_t *key, int *cap, char *value)
{
	if (key->n == *cap) {
		int grown;
		char **values;

		if (*cap > INT_MAX / 2 || (size_t)*cap * 2 > SIZE_MAX / sizeof(char *))
			return false;
		grown = *cap ? *cap * 2 : 4;
		values = realloc(key->values, (size_t)grown * sizeof(char *));
		if (!values)
			return false;
		key->values = values;
		*cap = grown;
	}
	key->values[key->n++] = value;
	return true;
}

bool keys_decode(const char *literal, jobkey_t *out)
{
	jobkey_t key = {NULL, 0};
	int cap = 0;
	const char *p;

	if (!out)
		return false;
	out->values = NULL;
	out->n = 0;
	if (!literal)
		return false;

	/* A leading '[' is a dimension decoration such as [0:1]={a,b}: not a key we wrote. */
	p = keys_skip_space(literal);
	if (*p != '{')
		return false;
	p = keys_skip_space(p + 1);

	if (*p == '}') {
		p++;
	} else {
		for (;;) {
			char *value;

			/* A nested '{' lands here too and is refused as an empty unquoted element. */
			value = keys_read_element(&p);
			if (!value)
				goto fail;
			if (!keys_append(&key, &cap, value)) {
				free(value);
				goto fail;
			}
			p = keys_skip_space(p);
			if (*p == '}') {
				p++;
				break;
			}
			if (*p != ',')
				goto fail;
			p = keys_skip_space(p + 1);
		}
	}

	if (*keys_skip_space(p) != '\0')
		goto fail;
	*out = key;
	return true;

fail:
	keys_clear(&key);
	return false;
}

char *keys_encode(const jobkey_t *key)
{
	size_t size = 3; /* "{}" and the terminator */
	char *text, *q;

	if (!key || key->n < 0 || (key->n > 0 && !key->values))
		return NULL;

	/* Each element needs two quotes, a comma, and at most two bytes per source byte. */
	for (int i = 0; i < key->n; i++) {
		size_t len;

		if (!key->values[i])
			return NULL;
		len = strlen(key->values[i]);
		if (len > (SIZE_MAX - size - 3) / 2)
			return NULL;
		size += 2 * len + 3;
	}

	text = malloc(size);
	if (!text)
		return NULL;
	q = text;
	*q++ = '{';
	for (int i = 0; i < key->n; i++) {
		if (i > 0)
			*q++ = ',';
		*q++ = '"';
		for (const char *s = key->values[i]; *s; s++) {
			if (*s == '"' || *s == '\\')
				*q++ = '\\';
			*q++ = *s;
		}
		*q++ = '"';
	}
	*q++ = '}';
	*q = '\0';
	return text;
}

void keys_clear(jobkey_t *key)
{
	if (!key)
		return;
	for (int i = 0; i < key->n; i++)
		free(key->values[i]);
	free(key->values);
	key->values = NULL;
	key->n = 0;
}
