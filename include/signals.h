/* Signals through libevent only: each handler logs the signal and flips a daemon mode. */
#ifndef BACKFILLD_SIGNALS_H
#define BACKFILLD_SIGNALS_H

#include <stdbool.h>

struct event_base;

/*
 * Called first thing in main(): hold the handled signals until signals_install() is ready for
 * them, so one that arrives during start-up is acted on, not fatal.
 */
void signals_block(void);

/* SIGUSR1 pause, SIGUSR2 resume, SIGHUP reload, SIGTERM/SIGINT stop; SIGPIPE ignored. Delivers
 * what signals_block() held back. */
bool signals_install(struct event_base *base) __attribute__((warn_unused_result));

void signals_remove(void);

#endif
