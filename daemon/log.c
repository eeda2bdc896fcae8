/*
 * Logging. One line per event; stderr lines carry sd-daemon "<N>" priority prefixes so
 * journald keeps the level, or a timestamp when stderr is a terminal. syslog is optional.
 * Messages quote names and server text, so each is masked, escaped and bounded first.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "text.h"

static log_level_t log_threshold = LOG_LEVEL_INFO;
static bool log_syslog;
static bool log_syslog_open;
static int log_tty = -1; /* unknown until the first line */

#define LOG_TEXT_MAX 2048 /* a formatted message is cut here, on a character boundary */
#define LOG_LINE_MAX 4096 /* and its escaped form here */
static const char log_cut_mark[] = " [truncated]";

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

/*
 * CONTEXT and the message as one printable line into LINE: passwords masked, control characters
 * and bad UTF-8 escaped, cut on a character boundary and then marked. Trailing newlines are
 * dropped (libpq's messages end with one).
 */
static void __attribute__((format(printf, 4, 0)))
log_format(char *line, size_t linelen, const char *context, const char *fmt, va_list ap)
{
	char text[LOG_TEXT_MAX], masked[LOG_TEXT_MAX + 512];
	size_t used, len;
	bool cut;
	int n;

	text[0] = '\0';
	n = context ? text_snprintf(text, sizeof(text), "%s: ", context) : 0;
	used = strlen(text);
	cut = (size_t)n > used;
	n = text_vsnprintf(text + used, sizeof(text) - used, fmt, ap);
	if (n < 0)
		text[used] = '\0';
	cut = cut || (n >= 0 && (size_t)n >= sizeof(text) - used);
	len = strlen(text);
	while (!cut && len > used && (text[len - 1] == '\n' || text[len - 1] == '\r'))
		text[--len] = '\0';
	if (text_mask_into(masked, sizeof(masked), text, cut) >= sizeof(masked))
		cut = true;
	if (!text_escape_line(line, linelen - (sizeof(log_cut_mark) - 1), masked))
		cut = true;
	if (cut)
		strcat(line, log_cut_mark);
}

void log_msg(log_level_t level, const char *context, const char *fmt, ...)
{
	int saved_errno = errno;
	char line[LOG_LINE_MAX];
	va_list ap;

	if (!log_enabled(level)) {
		errno = saved_errno;
		return;
	}
	va_start(ap, fmt);
	log_format(line, sizeof(line), context, fmt, ap);
	va_end(ap);

	if (log_tty < 0)
		log_tty = isatty(STDERR_FILENO);
	if (log_tty) {
		char stamp[32];
		struct tm tm;
		time_t now = time(NULL);
		localtime_r(&now, &tm);
		strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
		fprintf(stderr, "%s %-7s %s\n", stamp, log_levels[level].name, line);
	} else {
		fprintf(stderr, "<%d>%s\n", log_levels[level].priority, line);
	}
	fflush(stderr);
	if (log_syslog)
		syslog(log_levels[level].priority, "%s", line);
	errno = saved_errno;
}
