/*
 * systemd notification (sd_notify): READY, STATUS, RELOADING, STOPPING and the watchdog.
 * Every call is a no-op outside systemd or when built without libsystemd.
 */
#ifndef BACKFILLD_SDNOTIFY_H
#define BACKFILLD_SDNOTIFY_H

struct event_base;

/* Arm the watchdog ping on BASE when systemd asked for one (WatchdogSec). */
void notify_start(struct event_base *base);
void notify_stop(void);

/* READY=1; RELOADING=1 (with MONOTONIC_USEC), closed by notify_ready(). A reload before the
 * first READY=1 is not announced and does not end startup. */
void notify_ready(void);
void notify_reloading(void);
void notify_stopping(void);

/* Send a STATUS= line: jobs running, pause. */
void notify_status(const char *status);

#endif
