/*
 * Text that leaves the daemon: UTF-8 character boundaries, one-line escaping for the log, and
 * masking of passwords in connection strings and in the messages that quote them. Masking finds
 * the fragments to hide first (spans of the input), then copies the input around them.
 */
#include "text.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TEXT_MAX_SPANS 32   /* masked fragments per text; past them, the rest of the text is masked */
#define TEXT_MAX_SECRETS 32 /* registered secrets */
#define TEXT_MIN_SECRET 4   /* bytes */

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

/* ---- passwords: finding them ---- */

typedef struct span {
	size_t start, end; /* bytes [start, end) of the text */
} span_t;

typedef struct spans {
	span_t s[TEXT_MAX_SPANS];
	int n;
	size_t rest; /* more spans than fit: mask everything from here on (SIZE_MAX: none) */
} spans_t;

static char *text_secrets[TEXT_MAX_SECRETS];
static int text_nsecrets;

static void spans_add(spans_t *sp, size_t start, size_t end)
{
	if (end <= start)
		return;
	if (sp->n < TEXT_MAX_SPANS)
		sp->s[sp->n++] = (span_t){start, end};
	else if (start < sp->rest)
		sp->rest = start;
}

/* isspace() of the C locale, as libpq's connection string parser uses it. */
static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static bool ends_with_password(const char *s, size_t n)
{
	return n >= 8 && strncasecmp(s + n - 8, "password", 8) == 0;
}

/* Does the word that ends at T + I stand where a keyword does: after whitespace, or first? */
static bool at_keyword_start(const char *t, size_t i)
{
	while (i > 0 && (isalnum((unsigned char)t[i - 1]) || t[i - 1] == '_'))
		i--;
	return i == 0 || is_space(t[i - 1]);
}

/*
 * If T + I starts "password", then '=' (whitespace around it allowed), returns where the value
 * starts, else 0. LENIENT (a whole connection string) also takes whitespace for the '=' after a
 * keyword ("password s3cret"): libpq refuses such a string, but the word after is a password.
 */
static size_t keyword_value(const char *t, size_t len, size_t i, bool lenient)
{
	size_t j = i + 8;

	if (len - i < 8 || strncasecmp(t + i, "password", 8) != 0)
		return 0;
	while (j < len && is_space(t[j]))
		j++;
	if (j < len && t[j] == '=')
		j++;
	else if (!lenient || j == i + 8 || !at_keyword_start(t, i))
		return 0;
	while (j < len && is_space(t[j]))
		j++;
	return j;
}

/* The end of the value at V: after its closing quote if quoted, else at whitespace; a backslash
 * escapes the next byte either way (libpq's rules). A closing quote not followed by whitespace
 * (a malformed string) goes on as another value up to whitespace, so that the masked text, which no longer
 * starts with a quote, masks the same bytes again. */
static size_t keyword_value_end(const char *t, size_t len, size_t v)
{
	bool quoted = v < len && t[v] == '\'';
	size_t j = v + quoted;

	while (j < len && (quoted ? t[j] != '\'' : !is_space(t[j]))) {
		if (t[j] == '\\' && j + 1 < len)
			j++;
		j++;
	}
	if (!quoted || j >= len)
		return j;
	return j + 1 < len && !is_space(t[j + 1]) ? keyword_value_end(t, len, j + 1) : j + 1;
}

/*
 * Where the URI whose scheme starts at S and whose "://" is at SEP ends: at the end of T when it
 * is all of T (WHOLE); at the line's last '"' when a '"' opens it (libpq quotes URIs so, and a
 * malformed password may hold spaces); else at whitespace or a '"'.
 */
static size_t uri_end(const char *t, size_t len, size_t s, size_t sep, bool whole)
{
	size_t j = sep;

	if (whole)
		return len;
	if (s > 0 && t[s - 1] == '"') {
		size_t line_end = sep;
		while (line_end < len && t[line_end] != '\n')
			line_end++;
		for (j = line_end; j > sep; j--)
			if (t[j - 1] == '"')
				return j - 1;
	}
	while (j < len && !is_space(t[j]) && t[j] != '"')
		j++;
	return j;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)tolower((unsigned char)c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decodes the N bytes at S into OUT (room for N + 1); a bad escape stays as it is.
 * Returns the decoded length. */
static size_t percent_decode(const char *s, size_t n, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		int hi = i + 2 < n && s[i] == '%' ? hex_value(s[i + 1]) : -1;
		int lo = hi >= 0 ? hex_value(s[i + 2]) : -1;
		if (lo >= 0) {
			out[o++] = (char)(hi * 16 + lo);
			i += 2;
		} else {
			out[o++] = s[i];
		}
	}
	out[o] = '\0';
	return o;
}

/* The query parameters of the URI T[from, end) whose (percent-decoded) names end in "password". */
static void uri_query_spans(const char *t, size_t from, size_t end, spans_t *sp)
{
	for (size_t q = from; q < end; q++) {
		size_t eq = q + 1, v;
		char name[64];

		if (t[q] != '?' && t[q] != '&')
			continue;
		while (eq < end && t[eq] != '=' && t[eq] != '&' && t[eq] != '#')
			eq++;
		if (eq == end || t[eq] != '=' || eq - (q + 1) >= sizeof(name))
			continue;
		if (!ends_with_password(name, percent_decode(t + q + 1, eq - (q + 1), name)))
			continue;
		for (v = eq + 1; v < end && t[v] != '&' && t[v] != '#';)
			v++;
		spans_add(sp, eq + 1, v);
		q = v - 1;
	}
}

/*
 * The password of the URI T[sep + 3, end) (after "://"): between the first ':' and the last '@'.
 * libpq ends the user information at the first '@', but a malformed password may hold '@', '/'
 * or '?', so this errs toward masking more. Then its password query parameters. CUT: the URI
 * runs into the end of a text that was cut, so its '@' may be lost: mask from the ':' on.
 */
static void uri_spans(const char *t, size_t sep, size_t end, bool cut, spans_t *sp)
{
	size_t auth = sep + 3, at = 0;

	for (size_t j = end; j > auth && !at; j--)
		if (t[j - 1] == '@')
			at = j - 1;
	if (cut) {
		const char *colon = memchr(t + auth, ':', end - auth);
		if (colon)
			spans_add(sp, (size_t)(colon - t) + 1, end);
	} else if (at) {
		const char *colon = memchr(t + auth, ':', at - auth);
		if (colon)
			spans_add(sp, (size_t)(colon - t) + 1, at);
	}
	uri_query_spans(t, at ? at + 1 : auth, end, sp);
}

/* If "://" is at T + I after a scheme (a letter, then letters, digits, '+', '-', '.'), where the
 * scheme starts; else I. */
static size_t uri_scheme_at(const char *t, size_t len, size_t i)
{
	size_t s = i;

	if (len - i < 3 || memcmp(t + i, "://", 3) != 0)
		return i;
	while (s > 0 && (isalnum((unsigned char)t[s - 1]) || strchr("+-.", t[s - 1])))
		s--;
	while (s < i && !isalpha((unsigned char)t[s]))
		s++;
	return s;
}

/* Does CONNINFO have the URI form (a scheme and "://" after any whitespace)? */
static bool conninfo_is_uri(const char *conninfo)
{
	const char *p = conninfo, *scheme;

	while (is_space(*p))
		p++;
	scheme = p;
	while (isalnum((unsigned char)*p) || (*p && strchr("+-.", *p)))
		p++;
	return p > scheme && isalpha((unsigned char)*scheme) && strncmp(p, "://", 3) == 0;
}

/* The URIs' and "password=" fragments of T. CONNINFO: T is one connection string (its URI
 * runs to the end; '=' after "password" is optional). CUT: T is the start of a longer text. */
static void find_structural(const char *t, size_t len, bool conninfo, bool cut, spans_t *sp)
{
	bool whole = conninfo && conninfo_is_uri(t);

	for (size_t i = 0; i < len;) {
		size_t s = uri_scheme_at(t, len, i), v;
		if (s < i) {
			size_t end = uri_end(t, len, s, i, whole);
			uri_spans(t, i, end, cut && end == len, sp);
			whole = false;
			i = end > i + 3 ? end : i + 3;
		} else if ((v = keyword_value(t, len, i, conninfo)) != 0) {
			size_t end = keyword_value_end(t, len, v);
			spans_add(sp, v, end);
			i = end > i ? end : i + 1;
		} else {
			i++;
		}
	}
}

/* Every registered secret in T; CUT: also the start of one that T's end cuts short. */
static void find_secrets(const char *t, size_t len, bool cut, spans_t *sp)
{
	for (int k = 0; k < text_nsecrets; k++) {
		const char *secret = text_secrets[k];
		size_t n = strlen(secret);
		for (const char *p = t; (p = memmem(p, len - (size_t)(p - t), secret, n)) != NULL; p += n)
			spans_add(sp, (size_t)(p - t), (size_t)(p - t) + n);
		for (size_t m = n - 1 < len ? n - 1 : len; cut && m > 0; m--)
			if (memcmp(t + len - m, secret, m) == 0) {
				spans_add(sp, len - m, len);
				break;
			}
	}
}

/* ---- passwords: masking them ---- */

/* Output bounded by CAP bytes (with the NUL), counting all that was put, as snprintf does. */
typedef struct sink {
	char *buf;
	size_t cap, len;
} sink_t;

static void sink_put(sink_t *o, const char *s, size_t n)
{
	if (o->len + 1 < o->cap) {
		size_t room = o->cap - 1 - o->len;
		memcpy(o->buf + o->len, s, n < room ? n : room);
	}
	o->len += n;
}

/* Copies T from POS to the span S, masked; returns where the copy goes on. */
static size_t mask_span(sink_t *o, const char *t, size_t pos, span_t s)
{
	if (s.end <= pos)
		return pos;
	if (s.start >= pos) {
		sink_put(o, t + pos, s.start - pos);
		sink_put(o, TEXT_MASK, strlen(TEXT_MASK));
	}
	return s.end;
}

static void spans_sort(spans_t *sp)
{
	for (int i = 1; i < sp->n; i++)
		for (int j = i; j > 0 && sp->s[j - 1].start > sp->s[j].start; j--) {
			span_t tmp = sp->s[j];
			sp->s[j] = sp->s[j - 1];
			sp->s[j - 1] = tmp;
		}
}

static size_t mask_into(char *out, size_t outlen, const char *text, bool conninfo, bool cut)
{
	spans_t sp = {.rest = SIZE_MAX};
	sink_t o = {out, outlen, 0};
	size_t len = strlen(text), pos = 0;

	find_structural(text, len, conninfo, cut, &sp);
	find_secrets(text, len, cut, &sp);
	spans_sort(&sp);
	for (int k = 0; k < sp.n && sp.s[k].start < sp.rest; k++)
		pos = mask_span(&o, text, pos, sp.s[k]);
	if (sp.rest < len)
		pos = mask_span(&o, text, pos, (span_t){sp.rest, len});
	sink_put(&o, text + pos, len - pos);
	if (outlen > 0 && o.len < outlen) {
		out[o.len] = '\0';
	} else if (outlen > 0) {
		out[outlen - 1] = '\0';
		out[utf8_uncut(out)] = '\0';
	}
	return o.len;
}

static char *mask_alloc(const char *text, bool conninfo)
{
	size_t n = mask_into(NULL, 0, text, conninfo, false);
	char *out = malloc(n + 1);

	if (out)
		mask_into(out, n + 1, text, conninfo, false);
	return out;
}

char *text_mask_conninfo(const char *conninfo)
{
	return mask_alloc(conninfo, true);
}

char *text_mask(const char *text)
{
	return mask_alloc(text, false);
}

size_t text_mask_into(char *out, size_t outlen, const char *text, bool text_cut)
{
	return mask_into(out, outlen, text, false, text_cut);
}

/* ---- the registry ---- */

/* Remembers the N bytes at S, unless too short or known already; false when it cannot. */
static bool secret_add(const char *s, size_t n)
{
	char *copy;

	if (n < TEXT_MIN_SECRET)
		return true;
	for (int k = 0; k < text_nsecrets; k++)
		if (strlen(text_secrets[k]) == n && memcmp(text_secrets[k], s, n) == 0)
			return true;
	if (text_nsecrets == TEXT_MAX_SECRETS || !(copy = strndup(s, n)))
		return false;
	text_secrets[text_nsecrets++] = copy;
	return true;
}

/* The value S of N bytes without libpq's quotes and backslashes, into OUT (room for N + 1). */
static size_t unquote(const char *s, size_t n, char *out)
{
	size_t o = 0, i = 0;

	if (n > 0 && s[0] == '\'') {
		i = 1;
		if (n > 1 && s[n - 1] == '\'')
			n--;
	}
	for (; i < n; i++) {
		if (s[i] == '\\' && i + 1 < n)
			i++;
		out[o++] = s[i];
	}
	out[o] = '\0';
	return o;
}

bool text_secrets_add_conninfo(const char *conninfo)
{
	spans_t sp = {.rest = SIZE_MAX};
	size_t len = strlen(conninfo);
	char *buf = malloc(len + 1);
	bool ok = buf != NULL;

	find_structural(conninfo, len, true, false, &sp);
	for (int k = 0; ok && k < sp.n; k++) {
		const char *s = conninfo + sp.s[k].start;
		size_t n = sp.s[k].end - sp.s[k].start;
		ok = secret_add(s, n) && secret_add(buf, unquote(s, n, buf)) &&
		     secret_add(buf, percent_decode(s, n, buf));
	}
	free(buf);
	return ok;
}

void text_secrets_clear(void)
{
	for (int k = 0; k < text_nsecrets; k++)
		free(text_secrets[k]);
	text_nsecrets = 0;
}
