/*
 * Small helpers every module needs: time in milliseconds (a timeval for libevent, the monotonic
 * clock), allocation that aborts when memory runs out (a daemon has nothing better to do), and
 * splitting "HOST:PORT".
 */
#ifndef BACKFILLD_UTIL_H
#define BACKFILLD_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>
#include <time.h>

/* MS milliseconds as a timeval (negative: zero). */
struct timeval util_ms_to_tv(int64_t ms);

/* The monotonic clock, in milliseconds. */
double util_now_ms(void);

/* Seconds from SINCE (CLOCK_MONOTONIC) to now. */
double util_elapsed_s(const struct timespec *since);

/* strdup / calloc that abort on failure; util_strdup(NULL) is NULL. */
char *util_strdup(const char *s) __attribute__((warn_unused_result));
void *util_calloc(size_t n, size_t size) __attribute__((warn_unused_result));

/*
 * Split "HOST:PORT" or "[V6]:PORT" into HOST (brackets dropped) and PORT. False when ADDRESS has
 * no such form, or a part does not fit its buffer; nothing is checked of the port's digits.
 */
bool util_split_host_port(const char *address, char *host, size_t hostlen, char *port, size_t portlen)
	__attribute__((warn_unused_result));

#endif
