/*
 * Logging. One line per event; stderr lines carry sd-daemon "<N>" priority prefixes so
 * journald keeps the level, or a timestamp when stderr is a terminal. syslog is optional.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static log_level_t log_threshold = LOG_LEVEL_INFO;
static bool log_syslog;
static bool log_syslog_open;
static int log_tty = -1; /* unknown until the first line */

static const struct {
	const char *name;
	int priority; /* syslog(3) and sd-daemon(3) priority */
} log_levels[] = {
	[LOG_LEVEL_ERROR] = {"error", LOG_ERR},	     [LOG_LEVEL_WARNING] = {"warning", LOG_WARNING},
	[LOG_LEVEL_NOTICE] = {"notice", LOG_NOTICE}, [LOG_LEVEL_INFO] = {"info", LOG_INFO},
	[LOG_LEVEL_DEBUG] = {"debug", LOG_DEBUG},
};

bool log_level_parse(const char *text, log_level_t *out)
{
	for (size_t i = 0; i < sizeof(log_levels) / sizeof(log_levels[0]); i++) {
		if (text && strcmp(text, log_levels[i].name) == 0) {
			*out = (log_level_t)i;
			return true;
		}
	}
	return false;
}

const char *log_level_name(log_level_t level)
{
	if ((unsigned)level >= sizeof(log_levels) / sizeof(log_levels[0]))
		return "?";
	return log_levels[level].name;
}

void log_configure(log_level_t level, bool use_syslog)
{
	log_threshold = level;
	log_syslog = use_syslog;
	if (use_syslog && !log_syslog_open) {
		openlog("backfilld", LOG_PID, LOG_DAEMON);
		log_syslog_open = true;
	}
}

bool log_enabled(log_level_t level)
{
	return level <= log_threshold;
}

void log_msg(log_level_t level, const char *context, const char *fmt, ...)
{
	int saved_errno = errno;
	char text[2048];
	va_list ap;

	if (!log_enabled(level)) {
		errno = saved_errno;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);

	/* One event, one line: fold server messages that carry newlines. */
	for (char *p = text; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';

	if (log_tty < 0)
		log_tty = isatty(STDERR_FILENO);
	if (log_tty) {
		char stamp[32];
		struct tm tm;
		time_t now = time(NULL);
		localtime_r(&now, &tm);
		strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
		fprintf(stderr, "%s %-7s %s%s%s\n", stamp, log_levels[level].name, context ? context : "",
			context ? ": " : "", text);
	} else {
		fprintf(stderr, "<%d>%s%s%s\n", log_levels[level].priority, context ? context : "",
			context ? ": " : "", text);
	}
	fflush(stderr);
	if (log_syslog)
		syslog(log_levels[level].priority, "%s%s%s", context ? context : "", context ? ": " : "",
		       text);
	errno = saved_errno;
}
