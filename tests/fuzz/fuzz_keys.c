/*
 * libFuzzer target for keys_decode: arbitrary bytes as a text[] literal. Whatever is accepted
 * must encode (keys_encode) and decode again to the very same values.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	jobkey_t key, again;
	char *literal, *encoded;

	/* The decoder takes a C string: the input up to its first NUL, exactly as long as that. */
	literal = malloc(size + 1);
	if (!literal)
		return 0;
	memcpy(literal, data, size);
	literal[size] = '\0';

	if (!keys_decode(literal, &key)) {
		if (key.n != 0 || key.values != NULL)
			abort(); /* OUT must be left empty on failure */
		free(literal);
		return 0;
	}
	encoded = keys_encode(&key);
	if (!encoded)
		abort();
	if (!keys_decode(encoded, &again)) {
		fprintf(stderr, "fuzz_keys: own encoding rejected: %s\n", encoded);
		abort();
	}
	if (again.n != key.n)
		abort();
	for (int i = 0; i < key.n; i++)
		if (strcmp(key.values[i], again.values[i]) != 0) {
			fprintf(stderr, "fuzz_keys: element %d differs after %s\n", i, encoded);
			abort();
		}
	keys_clear(&again);
	keys_clear(&key);
	free(encoded);
	free(literal);
	return 0;
}
