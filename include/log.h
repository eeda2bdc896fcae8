/* Logging: levels, sd-daemon "<N>" priority prefixes on stderr, optional syslog. */
#ifndef BACKFILLD_LOG_H
#define BACKFILLD_LOG_H

#include <stdbool.h>

typedef enum log_level {
	LOG_LEVEL_ERROR = 0,
	LOG_LEVEL_WARNING,
	LOG_LEVEL_NOTICE,
	LOG_LEVEL_INFO,
	LOG_LEVEL_DEBUG,
} log_level_t;

/* Parse "error" | "warning" | "notice" | "info" | "debug"; false if none matches. */
bool log_level_parse(const char *text, log_level_t *out) __attribute__((warn_unused_result));

/* The name log_level_parse() accepts for LEVEL. */
const char *log_level_name(log_level_t level);

/* Set the threshold and whether lines also go to syslog (ident "backfilld"). */
void log_configure(log_level_t level, bool use_syslog);

/* True when a line at LEVEL would be written. */
bool log_enabled(log_level_t level);

/*
 * Write one line at LEVEL. CONTEXT (may be NULL) prefixes it, e.g. "job 12".
 * errno is preserved. Lines on stderr carry "<N>" priority prefixes for journald
 * unless stderr is a terminal, where they carry a timestamp and the level instead.
 * Messages quote table names and server text, so one call is always exactly one line:
 * trailing newlines are dropped, passwords masked (text_mask), control characters and
 * invalid UTF-8 escaped (text_escape_line), and a message past 2048 bytes formatted
 * (4096 escaped) is cut on a character boundary and ends " [truncated]". The same
 * text goes to syslog.
 */
void log_msg(log_level_t level, const char *context, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_error(...) log_msg(LOG_LEVEL_ERROR, NULL, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_LEVEL_WARNING, NULL, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_LEVEL_NOTICE, NULL, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, NULL, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, NULL, __VA_ARGS__)

#endif
