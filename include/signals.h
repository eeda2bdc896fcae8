/* Signals through libevent only: each handler logs the signal and calls what the daemon registered. */
#ifndef BACKFILLD_SIGNALS_H
#define BACKFILLD_SIGNALS_H

#include <stdbool.h>

struct event_base;

/*
 * Called first thing in main(): hold the handled signals until signals_install() is ready for
 * them, so one that arrives during start-up is acted on, not fatal.
 */
void signals_block(void);

/* What each signal asks for. */
typedef struct signals_hooks {
	void (*pause)(bool paused); /* SIGUSR1 true, SIGUSR2 false */
	void (*reload)(void);	    /* SIGHUP */
	void (*stop)(int signo);    /* SIGTERM, SIGINT */
} signals_hooks_t;

/* Handle SIGUSR1, SIGUSR2, SIGHUP, SIGTERM and SIGINT with HOOKS; ignore SIGPIPE. Delivers what
 * signals_block() held back. */
bool signals_install(struct event_base *base, const signals_hooks_t *hooks)
	__attribute__((warn_unused_result));

void signals_remove(void);

#endif
