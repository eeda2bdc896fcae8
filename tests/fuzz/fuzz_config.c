/*
 * libFuzzer target for config_load: arbitrary bytes as a configuration file. The input goes
 * into one memfd reopened through /proc/self/fd, so no file touches the disk. Every accepted
 * file must print (config_print) to text that loads back and prints the same again.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_fd = -1;
static char fuzz_path[64];

/* Replace the memfd's content with DATA. */
static void fuzz_write(const void *data, size_t size)
{
	if (ftruncate(fuzz_fd, 0) != 0 || (size > 0 && pwrite(fuzz_fd, data, size, 0) != (ssize_t)size)) {
		perror("fuzz_config: writing the memfd");
		abort();
	}
}

/* CONFIG as config_print writes it, in a malloc'd string. */
static char *fuzz_print(const config_t *config, size_t *len)
{
	char *text = NULL;
	FILE *out = open_memstream(&text, len);

	if (!out)
		abort();
	config_print(config, out);
	if (fclose(out) != 0)
		abort();
	return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[512];
	config_t *config, *again;
	char *first, *second;
	size_t first_len, second_len;

	if (fuzz_fd < 0) {
		fuzz_fd = memfd_create("fuzz_config", MFD_CLOEXEC);
		if (fuzz_fd < 0) {
			perror("fuzz_config: memfd_create");
			abort();
		}
		snprintf(fuzz_path, sizeof(fuzz_path), "/proc/self/fd/%d", fuzz_fd);
	}
	fuzz_write(data, size);
	err[0] = '\0';
	config = config_load(fuzz_path, err, sizeof(err));
	if (!config) {
		/* A rejection always says why, on one line. */
		if (err[0] == '\0' || strchr(err, '\n'))
			abort();
		return 0;
	}

	/* print -> load -> print is a fixed point (the header names the same path both times). */
	first = fuzz_print(config, &first_len);
	fuzz_write(first, first_len);
	again = config_load(fuzz_path, err, sizeof(err));
	if (!again) {
		fprintf(stderr, "fuzz_config: printed config rejected: %s\n%s", err, first);
		abort();
	}
	second = fuzz_print(again, &second_len);
	if (first_len != second_len || memcmp(first, second, first_len) != 0) {
		fprintf(stderr, "fuzz_config: round trip differs\n--- first\n%s--- second\n%s", first,
			second);
		abort();
	}
	free(first);
	free(second);
	config_free(again);
	config_free(config);
	return 0;
}
