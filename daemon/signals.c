/*
 * Signal handling. libevent delivers signals as ordinary callbacks on the loop, so these
 * run at a safe point; they only log and hand the request to what the daemon registered.
 */
#include "signals.h"

#include <signal.h>
#include <string.h>

#include <event2/event.h>

#include "log.h"

static const int handled[] = {SIGUSR1, SIGUSR2, SIGHUP, SIGTERM, SIGINT};
#define NHANDLED ((int)(sizeof(handled) / sizeof(handled[0])))

static struct event *signal_events[NHANDLED];
static signals_hooks_t hooks;

static void signals_cb(evutil_socket_t signo, short what, void *arg)
{
	(void)what;
	(void)arg;
	log_notice("received %s", strsignal((int)signo));
	switch (signo) {
	case SIGUSR1:
		hooks.pause(true);
		break;
	case SIGUSR2:
		hooks.pause(false);
		break;
	case SIGHUP:
		hooks.reload();
		break;
	case SIGTERM:
	case SIGINT:
		hooks.stop((int)signo);
		break;
	default:
		log_warning("unexpected signal %d ignored", (int)signo);
		break;
	}
}

static void signals_mask(int how)
{
	sigset_t set;

	sigemptyset(&set);
	for (int i = 0; i < NHANDLED; i++)
		sigaddset(&set, handled[i]);
	sigprocmask(how, &set, NULL);
}

void signals_block(void)
{
	signals_mask(SIG_BLOCK);
}

bool signals_install(struct event_base *base, const signals_hooks_t *h)
{
	hooks = *h;
	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < NHANDLED; i++) {
		signal_events[i] = evsignal_new(base, handled[i], signals_cb, NULL);
		if (!signal_events[i] || evsignal_add(signal_events[i], NULL) != 0)
			return false;
	}
	/* Anything pending since start-up is delivered now, to libevent's handlers. */
	signals_mask(SIG_UNBLOCK);
	return true;
}

void signals_remove(void)
{
	for (int i = 0; i < NHANDLED; i++) {
		if (signal_events[i])
			event_free(signal_events[i]);
		signal_events[i] = NULL;
	}
}
