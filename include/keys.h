/* Key encoding: PostgreSQL text[] literals, the form in which checkpoints are stored. */
#ifndef BACKFILLD_KEYS_H
#define BACKFILLD_KEYS_H

#include <stdbool.h>

/* A decoded key: N text values, none NULL (key columns are NOT NULL). */
typedef struct key {
	char **values;
	int n;
} jobkey_t;

/*
 * Decode a one-dimensional text[] literal such as {1,"a b","x\"y"} into OUT.
 * Rejects NULL elements, nested arrays and malformed input. OUT is left empty on failure.
 */
bool keys_decode(const char *literal, jobkey_t *out) __attribute__((warn_unused_result));

/* Encode KEY as a text[] literal, quoting every element. Caller frees. */
char *keys_encode(const jobkey_t *key) __attribute__((warn_unused_result));

void keys_clear(jobkey_t *key);

#endif
