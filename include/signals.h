/* Signals through libevent only: each handler logs the signal and flips a daemon mode. */
#ifndef BACKFILLD_SIGNALS_H
#define BACKFILLD_SIGNALS_H

#include <stdbool.h>

struct event_base;

/* SIGUSR1 pause, SIGUSR2 resume, SIGHUP reload, SIGTERM/SIGINT stop; SIGPIPE ignored. */
bool signals_install(struct event_base *base) __attribute__((warn_unused_result));

void signals_remove(void);

#endif
