/*
 * sd_notify glue. The watchdog is pinged from a loop timer, so a stuck loop stops the
 * pings and systemd restarts the daemon.
 */
#include "sdnotify.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include <event2/event.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

static struct event *watchdog;
static bool ready;		/* READY=1 went out: startup is over */
static bool reload_unannounced; /* a reload began before READY: its closing READY=1 is not sent */

#ifdef HAVE_LIBSYSTEMD
static void notify_watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	sd_notify(0, "WATCHDOG=1");
}
#endif

void notify_start(struct event_base *base)
{
#ifdef HAVE_LIBSYSTEMD
	uint64_t usec = 0;
	if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
		struct timeval tv = {(time_t)(usec / 2 / 1000000), (suseconds_t)(usec / 2 % 1000000)};
		watchdog = event_new(base, -1, EV_PERSIST, notify_watchdog_cb, NULL);
		if (watchdog)
			event_add(watchdog, &tv);
		sd_notify(0, "WATCHDOG=1");
	}
#else
	(void)base;
#endif
}

void notify_stop(void)
{
	if (watchdog)
		event_free(watchdog);
	watchdog = NULL;
}

void notify_ready(void)
{
	/* A reload before startup ends must not end startup: READY waits for the schema check. */
	if (reload_unannounced) {
		reload_unannounced = false;
		return;
	}
	ready = true;
#ifdef HAVE_LIBSYSTEMD
	sd_notify(0, "READY=1");
#endif
}

void notify_reloading(void)
{
	if (!ready) {
		reload_unannounced = true;
		return;
	}
#ifdef HAVE_LIBSYSTEMD
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
		   (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000ULL);
#endif
}

void notify_stopping(void)
{
#ifdef HAVE_LIBSYSTEMD
	sd_notify(0, "STOPPING=1");
#endif
}

void notify_status(const char *status)
{
#ifdef HAVE_LIBSYSTEMD
	sd_notifyf(0, "STATUS=%s", status);
#else
	(void)status;
#endif
}
