/*
 * Text that leaves the daemon: cut on UTF-8 character boundaries (PostgreSQL refuses a cut
 * character), escaped onto one printable line (logs), and with passwords masked (connection
 * strings, and messages that quote them). Pure functions, apart from the registry of secrets.
 */
#ifndef BACKFILLD_TEXT_H
#define BACKFILLD_TEXT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/* What a masked password reads as; the same whatever its length. */
#define TEXT_MASK "********"

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

/*
 * A copy of the libpq connection string CONNINFO with every password replaced by TEXT_MASK:
 * keyword=value strings ("password = 'a b\'c'", any keyword ending in "password", in any case,
 * quoted or not, e.g. sslpassword), and URIs (scheme://user:PASSWORD@host, query parameters
 * ?password=... also when percent-encoded, malformed URIs too: the user information ends at the
 * last '@'), also a URI given as dbname. Registered secrets (below) are masked too. Leaves the
 * rest as it is. NULL when memory runs out; caller frees.
 */
char *text_mask_conninfo(const char *conninfo) __attribute__((warn_unused_result));

/*
 * TEXT (any message, e.g. a libpq error quoting a connection string) with password-looking
 * fragments replaced by TEXT_MASK: the passwords of URIs (a URI ends at whitespace, or at the
 * line's last '"' when a '"' opens it, as libpq quotes them), "...password = VALUE" (a VALUE ends
 * at unquoted whitespace), and every occurrence of a registered secret. Errs toward masking more
 * than the password when a fragment is malformed. text_mask allocates (NULL when memory runs
 * out; caller frees).
 */
char *text_mask(const char *text) __attribute__((warn_unused_result));

/*
 * text_mask into OUT (OUTLEN bytes with the NUL), cut on a character boundary; returns the
 * length of the whole result, like snprintf. TEXT_CUT: TEXT is only the start of a longer text,
 * so a URI or a registered secret that runs into its end may have lost what shows where its
 * password ends: such a URI is masked from its first ':' to the end, such a secret's start too.
 */
size_t text_mask_into(char *out, size_t outlen, const char *text, bool text_cut);

/*
 * Remember the passwords in CONNINFO (as written, and unquoted or percent-decoded) so that
 * text_mask* masks them wherever they appear, however the message around them looks: libpq
 * quotes a bad fragment alone ("invalid percent-encoded token: "pa%zz"").
 * Passwords shorter than 4 bytes are not remembered (masking every "abc" would garble logs).
 * Returns false when memory runs out or the registry (32 secrets) is full.
 */
bool text_secrets_add_conninfo(const char *conninfo) __attribute__((warn_unused_result));

/* Forget every registered secret (shutdown, tests). */
void text_secrets_clear(void);

#endif
