/*
 * The configuration file's text before libconfig parses it. libconfig 1.5 reads a decimal or hex
 * literal without an L suffix as a 32-bit int and silently truncates a larger one (10000000000
 * becomes 1410065408, 0x100000001 becomes 1): widen_int_literals appends the L to such literals
 * so that they arrive as int64.
 */
#ifndef BACKFILLD_WIDEN_H
#define BACKFILLD_WIDEN_H

#define WIDEN_MAX_DEPTH 8 /* group names kept for an error's key; deeper ones are left out */
#define WIDEN_NAME_LEN 64 /* a name's bytes kept, with its NUL */

/* An integer literal beyond int64. */
typedef struct widen_error {
	unsigned line;	     /* its line in the text */
	const char *literal; /* where it starts in the text (a sign included); NULL: out of memory */
	int len;	     /* its length */
	char key[(WIDEN_MAX_DEPTH + 1) * WIDEN_NAME_LEN]; /* "group.name": the key it is the value of */
} widen_error_t;

/*
 * TEXT with an L appended to every integer literal beyond 32 bits; strings, comments and floats
 * are copied untouched, so line numbers do not change. Returns the new text (free() it), or
 * NULL with ERR filled when a literal is beyond int64 or memory runs out.
 */
char *widen_int_literals(const char *text, widen_error_t *err);

#endif
