/*
 * Text that leaves the daemon: cut on UTF-8 character boundaries (PostgreSQL refuses a cut
 * character), and escaped onto one printable line (logs). Pure functions.
 */
#ifndef BACKFILLD_TEXT_H
#define BACKFILLD_TEXT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/*
 * The length of the longest prefix of S (NUL-terminated) that has at most MAX_BYTES bytes and
 * does not cut a UTF-8 character. A byte that is not part of a valid UTF-8 sequence (strictly:
 * no overlong forms, surrogates or code points past U+10FFFF) counts as a character of its own.
 * Reads past MAX_BYTES (at most 3 bytes, never past the NUL) to tell a character from bytes.
 */
size_t text_utf8_prefix(const char *s, size_t max_bytes);

/*
 * snprintf(3), except that output cut short ends on a character boundary: a UTF-8 sequence the
 * cut would split is left out whole (up to 3 bytes; bytes of invalid UTF-8 right at the cut may
 * go with it). Returns what snprintf returns: the length of the whole text, so a result >= LEN
 * means it was cut.
 */
int text_snprintf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int text_vsnprintf(char *buf, size_t len, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));

/*
 * Copies IN into OUT (OUTLEN bytes with the NUL) as one line of printable text:
 * "\n", "\r", "\t" and "\\" for a newline, carriage return, tab and backslash; "\xNN" for every
 * other byte below 0x20, for 0x7f, for each byte of a C1 control (U+0080..U+009F: terminals
 * obey some of them, e.g. CSI) and for each byte that is not part of valid UTF-8. Other UTF-8
 * characters are copied. So the result holds no control character and no newline, and reads
 * back unambiguously. When it does not all fit, stops before the first character (or escape)
 * that does not fit whole and returns false.
 */
bool text_escape_line(char *out, size_t outlen, const char *in);

#endif
