/*
 * Text that leaves the daemon: UTF-8 character boundaries, and one-line escaping for the log.
 */
#include "text.h"

#include <stdio.h>
#include <string.h>

/* ---- UTF-8 ---- */

/* The length of the sequence lead byte C starts (0: none), and the range its second byte must be
 * in (Unicode's table of well-formed sequences: no overlong forms, surrogates, or past U+10FFFF). */
static size_t utf8_lead(unsigned char c, unsigned char *lo, unsigned char *hi)
{
	*lo = 0x80;
	*hi = 0xbf;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		return 2;
	if (c == 0xe0)
		*lo = 0xa0;
	else if (c == 0xed)
		*hi = 0x9f;
	if (c >= 0xe0 && c <= 0xef)
		return 3;
	if (c == 0xf0)
		*lo = 0x90;
	else if (c == 0xf4)
		*hi = 0x8f;
	if (c >= 0xf0 && c <= 0xf4)
		return 4;
	return 0;
}

/*
 * The character at S, of which AVAIL (>= 1) bytes may be read: the length of a valid sequence,
 * 1 for a byte that starts none, 0 when the AVAIL bytes end inside a sequence valid so far.
 */
static size_t utf8_char(const unsigned char *s, size_t avail)
{
	unsigned char lo, hi;
	size_t n = utf8_lead(s[0], &lo, &hi);

	if (n <= 1)
		return 1;
	for (size_t i = 1; i < n; i++) {
		if (i == avail)
			return 0;
		if (s[i] < lo || s[i] > hi)
			return 1;
		lo = 0x80;
		hi = 0xbf;
	}
	return n;
}

/* The length of the character at S, a non-empty NUL-terminated string; bad bytes one at a time. */
static size_t utf8_next(const char *s)
{
	size_t n = utf8_char((const unsigned char *)s, strnlen(s, 4));
	return n ? n : 1;
}

/* The length of BUF without a UTF-8 sequence that its end cuts short. */
static size_t utf8_uncut(const char *buf)
{
	size_t i = 0;

	while (buf[i]) {
		size_t n = utf8_char((const unsigned char *)buf + i, strnlen(buf + i, 4));
		if (n == 0)
			break;
		i += n;
	}
	return i;
}

size_t text_utf8_prefix(const char *s, size_t max_bytes)
{
	size_t i = 0;

	while (i < max_bytes && s[i]) {
		size_t n = utf8_next(s + i);
		if (n > max_bytes - i)
			break;
		i += n;
	}
	return i;
}

int text_vsnprintf(char *buf, size_t len, const char *fmt, va_list ap)
{
	int n = vsnprintf(buf, len, fmt, ap);

	if (n >= 0 && len > 0 && (size_t)n >= len)
		buf[utf8_uncut(buf)] = '\0';
	return n;
}

int text_snprintf(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = text_vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	return n;
}

/* ---- one line ---- */

/* The printable form of the N-byte character at P, into PIECE (8 bytes); returns its length. */
static size_t escape_char(const char *p, size_t n, char *piece)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *u = (const unsigned char *)p;
	bool c1 = n == 2 && u[0] == 0xc2 && u[1] < 0xa0;
	size_t len = 0;

	if (n == 1 && (*p == '\n' || *p == '\r' || *p == '\t' || *p == '\\')) {
		piece[0] = '\\';
		piece[1] = *p == '\n' ? 'n' : *p == '\r' ? 'r' : *p == '\t' ? 't' : '\\';
		return 2;
	}
	if ((n == 1 && u[0] >= 0x20 && u[0] < 0x7f) || (n > 1 && !c1)) {
		memcpy(piece, p, n);
		return n;
	}
	for (size_t i = 0; i < n; i++) {
		piece[len++] = '\\';
		piece[len++] = 'x';
		piece[len++] = hex[u[i] >> 4];
		piece[len++] = hex[u[i] & 0xf];
	}
	return len;
}

bool text_escape_line(char *out, size_t outlen, const char *in)
{
	size_t o = 0;

	if (outlen == 0)
		return *in == '\0';
	for (const char *p = in; *p;) {
		char piece[8];
		size_t n = utf8_next(p);
		size_t len = escape_char(p, n, piece);
		if (len >= outlen - o) {
			out[o] = '\0';
			return false;
		}
		memcpy(out + o, piece, len);
		o += len;
		p += n;
	}
	out[o] = '\0';
	return true;
}
