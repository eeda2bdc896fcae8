/* Small helpers every module needs: see include/util.h. */
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct timeval util_ms_to_tv(int64_t ms)
{
	struct timeval tv = {0, 0};

	if (ms > 0) {
		tv.tv_sec = (time_t)(ms / 1000);
		tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
	}
	return tv;
}

double util_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

double util_elapsed_s(const struct timespec *since)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - since->tv_sec) + (double)(now.tv_nsec - since->tv_nsec) / 1e9;
}

char *util_strdup(const char *s)
{
	char *d;

	if (!s)
		return NULL;
	d = strdup(s);
	if (!d)
		abort();
	return d;
}

void *util_calloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		abort();
	return p;
}

bool util_split_host_port(const char *address, char *host, size_t hostlen, char *port, size_t portlen)
{
	const char *colon, *host_start = address, *host_end;

	if (address[0] == '[') {
		host_end = strchr(address, ']');
		if (!host_end || host_end[1] != ':')
			return false;
		host_start = address + 1;
		colon = host_end + 1;
	} else {
		colon = strrchr(address, ':');
		if (!colon)
			return false;
		host_end = colon;
	}
	if (host_end <= host_start || (size_t)(host_end - host_start) >= hostlen ||
	    strlen(colon + 1) >= portlen || colon[1] == '\0')
		return false;
	memcpy(host, host_start, (size_t)(host_end - host_start));
	host[host_end - host_start] = '\0';
	snprintf(port, portlen, "%s", colon + 1);
	return true;
}
