/*
 * Configuration: one table of every key (path, type, default, bounds, reloadable), and the
 * loader, validator, printer and reload diff driven by it. Only this file sees libconfig.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* libconfig names its handle config_t too; rename it while its header is read. */
#define config_t libconfig_t
#include <libconfig.h>
#undef config_t

#include "config.h"
#include "text.h"
#include "util.h"
#include "widen.h"

typedef enum key_type {
	KEY_INT,       /* int64_t, within [min, max] */
	KEY_BOOL,      /* bool */
	KEY_STRING,    /* char *, never NULL */
	KEY_STRINGS,   /* char **, NULL-terminated, with an int count at count_offset */
	KEY_LOG_LEVEL, /* log_level_t, written as its name */
} key_type_t;

/* Checks a string value; on failure writes the problem (without the key) and returns false. */
typedef bool (*string_check_fn)(const char *value, char *problem, size_t len);

typedef struct config_key {
	const char *path; /* "group.name" as in the file */
	key_type_t type;
	size_t offset;	       /* of the value in config_t */
	size_t count_offset;   /* KEY_STRINGS: of its int count */
	int64_t def;	       /* default of KEY_INT, KEY_BOOL, KEY_LOG_LEVEL */
	const char *def_str;   /* default of KEY_STRING */
	int64_t min, max;      /* KEY_INT bounds */
	string_check_fn check; /* KEY_STRING: extra validation, or NULL */
	bool reloadable;       /* false: a change takes effect only at restart */
} config_key_t;

static bool check_not_empty(const char *value, char *problem, size_t len);
static bool check_schema(const char *value, char *problem, size_t len);
static bool check_listen(const char *value, char *problem, size_t len);

#define INT64_2_62 ((int64_t)1 << 62)
#define OFF(field) offsetof(config_t, field)
/* clang-format off */
#define INT_KEY(p, f, d, lo, hi) {p, KEY_INT, OFF(f), 0, d, NULL, lo, hi, NULL, true}
#define BOOL_KEY(p, f, d) {p, KEY_BOOL, OFF(f), 0, d, NULL, 0, 0, NULL, true}
#define STRING_KEY(p, f, d, chk, rel) {p, KEY_STRING, OFF(f), 0, 0, d, 0, 0, chk, rel}
/* clang-format on */

/* Every key the file may hold, grouped and ordered as config_print writes them. A string key
 * whose name ends in "conninfo" is a libpq connection string: its passwords never get printed. */
static const config_key_t config_keys[] = {
	STRING_KEY("database.conninfo", conninfo, "", check_not_empty, false),
	STRING_KEY("database.job_conninfo", job_conninfo, "", NULL, false),
	STRING_KEY("database.schema", schema, "backfill", check_schema, false),
	STRING_KEY("daemon.name", name, "", NULL, false),
	INT_KEY("daemon.workers", workers, 2, 1, 1024),
	INT_KEY("daemon.poll_interval_ms", poll_interval_ms, 5000, 10, 3600000),
	INT_KEY("daemon.lease_ms", lease_ms, 30000, 500, 86400000),
	INT_KEY("daemon.shutdown_grace_ms", shutdown_grace_ms, 10000, 0, 3600000),
	INT_KEY("daemon.max_connections", max_connections, 16, 3, 10000),
	INT_KEY("daemon.max_parallel", max_parallel, 8, 1, 1000),
	INT_KEY("throttle.batch_size", throttle.batch_size, 1000, 1, 10000000),
	INT_KEY("throttle.min_batch_size", throttle.min_batch_size, 10, 1, 10000000),
	INT_KEY("throttle.max_batch_size", throttle.max_batch_size, 100000, 1, 10000000),
	INT_KEY("throttle.target_batch_ms", throttle.target_batch_ms, 500, 1, 3600000),
	INT_KEY("throttle.sleep_ms", throttle.sleep_ms, 0, 0, 86400000),
	INT_KEY("throttle.max_sleep_ms", throttle.max_sleep_ms, 30000, 0, 86400000),
	INT_KEY("throttle.max_replication_lag_bytes", throttle.max_replication_lag_bytes, 67108864, 1,
		INT64_2_62),
	INT_KEY("throttle.max_replication_lag_ms", throttle.max_replication_lag_ms, 5000, 1, 86400000),
	INT_KEY("throttle.max_blocked_ms", throttle.max_blocked_ms, 1000, 1, 3600000),
	INT_KEY("throttle.lock_timeout_ms", throttle.lock_timeout_ms, 1000, 1, 3600000),
	INT_KEY("throttle.statement_timeout_ms", throttle.statement_timeout_ms, 30000, 1, 86400000),
	INT_KEY("throttle.max_failed_rows", throttle.max_failed_rows, 1000, 0, INT64_2_62),
	INT_KEY("throttle.sample_interval_ms", throttle.sample_interval_ms, 250, 10, 60000),
	{"throttle.standbys", KEY_STRINGS, OFF(throttle.standbys), OFF(throttle.nstandbys), 0, NULL, 0, 0,
	 NULL, true},
	BOOL_KEY("throttle.logical_slots", throttle.logical_slots, true),
	BOOL_KEY("throttle.pause_during_autovacuum", throttle.pause_during_autovacuum, false),
	INT_KEY("throttle.max_retries", throttle.max_retries, 20, 0, 1000000),
	INT_KEY("throttle.max_wal_bytes_per_s", throttle.max_wal_bytes_per_s, 0, 0, INT64_C(1) << 40),
	INT_KEY("throttle.max_archive_backlog_bytes", throttle.max_archive_backlog_bytes, INT64_C(1073741824),
		1, INT64_MAX),
	INT_KEY("throttle.vacuum_after_percent", throttle.vacuum_after_percent, 10, 0, 100),
	STRING_KEY("http.listen", http_listen, "127.0.0.1:9474", check_listen, false),
	{"log.level", KEY_LOG_LEVEL, OFF(log_level), 0, LOG_LEVEL_INFO, NULL, 0, 0, NULL, true},
	BOOL_KEY("log.syslog", log_syslog, false),
	INT_KEY("log.progress_interval_ms", log_progress_interval_ms, 10000, 0, 3600000),
};

#define N_KEYS (sizeof(config_keys) / sizeof(config_keys[0]))

/* Pairs that must hold low <= high once every key is read; paths into config_keys. */
static const struct {
	const char *low, *high;
} config_ordered[] = {
	{"throttle.min_batch_size", "throttle.batch_size"},
	{"throttle.batch_size", "throttle.max_batch_size"},
	{"throttle.sleep_ms", "throttle.max_sleep_ms"},
};

/* One config_load in progress: where errors go, and where each key was set. */
typedef struct load_ctx {
	const char *path;
	char *err;
	size_t errlen;
	const config_setting_t *set[N_KEYS]; /* the setting each key came from; NULL: default */
} load_ctx_t;

static void *key_slot(const config_t *config, const config_key_t *key)
{
	return (char *)config + key->offset;
}

static bool key_is_conninfo(const config_key_t *key)
{
	size_t len = strlen(key->path);

	return key->type == KEY_STRING && len >= 8 && strcmp(key->path + len - 8, "conninfo") == 0;
}

static const config_key_t *key_find(const char *path)
{
	for (size_t i = 0; i < N_KEYS; i++)
		if (strcmp(config_keys[i].path, path) == 0)
			return &config_keys[i];
	return NULL;
}

/* Writes "FILE:LINE: KEY: problem" (LINE 0 is left out), folded onto one line. */
static void __attribute__((format(printf, 6, 7)))
error_at(char *err, size_t errlen, const char *file, unsigned line, const char *key, const char *fmt, ...)
{
	char problem[512];
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(problem, sizeof(problem), fmt, ap);
	va_end(ap);
	if (line > 0)
		snprintf(err, errlen, "%s:%u: %s%s%s", file, line, key ? key : "", key ? ": " : "", problem);
	else
		snprintf(err, errlen, "%s: %s%s%s", file, key ? key : "", key ? ": " : "", problem);
	for (char *p = err; *p; p++)
		if (iscntrl((unsigned char)*p))
			*p = '?';
}

static void error_oom(char *err, size_t errlen, const char *path)
{
	error_at(err, errlen, path ? path : "backfilld", 0, NULL, "out of memory");
}

static bool check_not_empty(const char *value, char *problem, size_t len)
{
	if (*value != '\0')
		return true;
	snprintf(problem, len, "must not be empty");
	return false;
}

static bool check_schema(const char *value, char *problem, size_t len)
{
	if (!check_not_empty(value, problem, len))
		return false;
	if (strlen(value) <= 63)
		return true;
	snprintf(problem, len, "\"%s\" is longer than 63 bytes", value);
	return false;
}

/* "" (HTTP off), or HOST:PORT with a non-empty host, IPv6 in brackets, port 1..65535. */
static bool check_listen(const char *value, char *problem, size_t len)
{
	char host[256], port[16];
	bool ok = false;

	if (*value == '\0')
		return true;
	/* (an unbracketed IPv6 address has more than one colon: no host of its own) */
	if (util_split_host_port(value, host, sizeof(host), port, sizeof(port)) &&
	    (value[0] == '[' || !strchr(host, ':'))) {
		size_t digits = strspn(port, "0123456789");
		if (digits > 0 && digits <= 5 && port[digits] == '\0') {
			long n = strtol(port, NULL, 10);
			ok = n >= 1 && n <= 65535;
		}
		for (const char *p = host; ok && *p; p++)
			ok = isgraph((unsigned char)*p);
	}
	if (!ok)
		snprintf(problem, len,
			 "\"%s\" is not HOST:PORT with a port 1..65535 (IPv6 as \"[::1]:9474\")", value);
	return ok;
}

static bool __attribute__((warn_unused_result)) set_string(char **slot, const char *value)
{
	char *copy = strdup(value);
	if (!copy)
		return false;
	free(*slot);
	*slot = copy;
	return true;
}

static void free_strings(char **list)
{
	for (char **p = list; p && *p; p++)
		free(*p);
	free(list);
}

/* Fills every key with its default; strings are copied. Returns false when memory runs out. */
static bool __attribute__((warn_unused_result)) apply_defaults(config_t *config)
{
	for (size_t i = 0; i < N_KEYS; i++) {
		const config_key_t *key = &config_keys[i];
		void *slot = key_slot(config, key);
		switch (key->type) {
		case KEY_INT:
			*(int64_t *)slot = key->def;
			break;
		case KEY_BOOL:
			*(bool *)slot = key->def != 0;
			break;
		case KEY_LOG_LEVEL:
			*(log_level_t *)slot = (log_level_t)key->def;
			break;
		case KEY_STRING:
			if (!set_string(slot, key->def_str))
				return false;
			break;
		case KEY_STRINGS:
			*(char ***)slot = calloc(1, sizeof(char *));
			if (!*(char ***)slot)
				return false;
			*(int *)((char *)config + key->count_offset) = 0;
			break;
		}
	}
	return true;
}

/* daemon.name "" means "HOSTNAME:PID". */
static bool __attribute__((warn_unused_result)) fill_name(config_t *config)
{
	char host[256];
	char *name;

	if (config->name[0] != '\0')
		return true;
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	if (asprintf(&name, "%s:%ld", host, (long)getpid()) < 0)
		return false;
	free(config->name);
	config->name = name;
	return true;
}

static const char *setting_file(const load_ctx_t *ctx, const config_setting_t *setting)
{
	const char *file = config_setting_source_file(setting);
	return file ? file : ctx->path;
}

/* apply_setting for a KEY_STRINGS key: SETTING (of TYPE, at FILE:LINE) must be a list of non-empty
 * strings. */
static bool __attribute__((warn_unused_result))
apply_strings(load_ctx_t *ctx, config_t *config, const config_key_t *key, const config_setting_t *setting,
	      const char *file, unsigned line)
{
	int type = config_setting_type(setting);
	void *slot = key_slot(config, key);
	int n = type == CONFIG_TYPE_ARRAY || type == CONFIG_TYPE_LIST ? config_setting_length(setting) : -1;

	for (int i = 0; i < n; i++) {
		const config_setting_t *elem = config_setting_get_elem(setting, (unsigned)i);
		if (config_setting_type(elem) != CONFIG_TYPE_STRING ||
		    *config_setting_get_string(elem) == '\0')
			n = -1;
	}
	if (n < 0) {
		error_at(ctx->err, ctx->errlen, file, line, key->path,
			 "expected a list of non-empty strings, e.g. [\"standby1\", \"standby2\"]");
		return false;
	}
	char **list = calloc((size_t)n + 1, sizeof(char *));
	for (int i = 0; list && i < n; i++) {
		list[i] = strdup(config_setting_get_string_elem(setting, (unsigned)i));
		if (!list[i]) {
			free_strings(list);
			list = NULL;
		}
	}
	if (!list) {
		error_oom(ctx->err, ctx->errlen, ctx->path);
		return false;
	}
	free_strings(*(char ***)slot);
	*(char ***)slot = list;
	*(int *)((char *)config + key->count_offset) = n;
	return true;
}

/* Type-checks SETTING, range-checks it, and stores it in CONFIG under KEY. */
static bool __attribute__((warn_unused_result))
apply_setting(load_ctx_t *ctx, config_t *config, const config_key_t *key, const config_setting_t *setting)
{
	const char *file = setting_file(ctx, setting);
	unsigned line = config_setting_source_line(setting);
	int type = config_setting_type(setting);
	void *slot = key_slot(config, key);
	char problem[384];

	switch (key->type) {
	case KEY_INT: {
		if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64) {
			error_at(ctx->err, ctx->errlen, file, line, key->path, "expected an integer");
			return false;
		}
		int64_t value = config_setting_get_int64(setting);
		if (value < key->min || value > key->max) {
			error_at(ctx->err, ctx->errlen, file, line, key->path,
				 "%" PRId64 " is out of range (%" PRId64 "..%" PRId64 ")", value, key->min,
				 key->max);
			return false;
		}
		*(int64_t *)slot = value;
		return true;
	}
	case KEY_BOOL:
		if (type != CONFIG_TYPE_BOOL) {
			error_at(ctx->err, ctx->errlen, file, line, key->path, "expected true or false");
			return false;
		}
		*(bool *)slot = config_setting_get_bool(setting) != 0;
		return true;
	case KEY_LOG_LEVEL: {
		const char *text = type == CONFIG_TYPE_STRING ? config_setting_get_string(setting) : NULL;
		if (!text || !log_level_parse(text, slot)) {
			error_at(ctx->err, ctx->errlen, file, line, key->path,
				 "expected one of \"error\", \"warning\", \"notice\", \"info\", \"debug\"");
			return false;
		}
		return true;
	}
	case KEY_STRING: {
		if (type != CONFIG_TYPE_STRING) {
			error_at(ctx->err, ctx->errlen, file, line, key->path, "expected a string");
			return false;
		}
		const char *text = config_setting_get_string(setting);
		if (key->check && !key->check(text, problem, sizeof(problem))) {
			error_at(ctx->err, ctx->errlen, file, line, key->path, "%s", problem);
			return false;
		}
		if (!set_string(slot, text)) {
			error_oom(ctx->err, ctx->errlen, ctx->path);
			return false;
		}
		return true;
	}
	case KEY_STRINGS:
		return apply_strings(ctx, config, key, setting, file, line);
	}
	return false;
}

/* Walks the parsed tree in file order: every group and key must be known. */
static bool __attribute__((warn_unused_result))
apply_tree(load_ctx_t *ctx, config_t *config, config_setting_t *root)
{
	for (int g = 0; g < config_setting_length(root); g++) {
		config_setting_t *group = config_setting_get_elem(root, (unsigned)g);
		const char *gname = config_setting_name(group);
		const char *file = setting_file(ctx, group);
		unsigned gline = config_setting_source_line(group);
		bool known = false;

		for (size_t i = 0; i < N_KEYS && !known; i++)
			known = strncmp(config_keys[i].path, gname, strlen(gname)) == 0 &&
				config_keys[i].path[strlen(gname)] == '.';
		if (!known) {
			error_at(ctx->err, ctx->errlen, file, gline, gname, "unknown key");
			return false;
		}
		if (!config_setting_is_group(group)) {
			error_at(ctx->err, ctx->errlen, file, gline, gname, "expected a group { ... }");
			return false;
		}
		for (int s = 0; s < config_setting_length(group); s++) {
			config_setting_t *setting = config_setting_get_elem(group, (unsigned)s);
			char path[256];
			snprintf(path, sizeof(path), "%s.%s", gname, config_setting_name(setting));
			const config_key_t *key = key_find(path);
			if (!key) {
				error_at(ctx->err, ctx->errlen, setting_file(ctx, setting),
					 config_setting_source_line(setting), path, "unknown key");
				return false;
			}
			if (!apply_setting(ctx, config, key, setting))
				return false;
			ctx->set[key - config_keys] = setting;
		}
	}
	return true;
}

/* Checks that involve more than one key, or a key's absence; errors name the later key. */
static bool __attribute__((warn_unused_result))
check_cross(load_ctx_t *ctx, const config_t *config, const config_setting_t *root)
{
	const config_key_t *conninfo = key_find("database.conninfo");
	if (!ctx->set[conninfo - config_keys]) {
		/* Nowhere to point but the database group, if there is one, else line 1. */
		const config_setting_t *db = config_setting_get_member(root, "database");
		error_at(ctx->err, ctx->errlen, db ? setting_file(ctx, db) : ctx->path,
			 db ? config_setting_source_line(db) : 1, conninfo->path, "required, but not set");
		return false;
	}
	for (size_t i = 0; i < sizeof(config_ordered) / sizeof(config_ordered[0]); i++) {
		const config_key_t *low = key_find(config_ordered[i].low);
		const config_key_t *high = key_find(config_ordered[i].high);
		const config_setting_t *low_set = ctx->set[low - config_keys];
		const config_setting_t *high_set = ctx->set[high - config_keys];
		int64_t low_value = *(const int64_t *)key_slot(config, low);
		int64_t high_value = *(const int64_t *)key_slot(config, high);

		if (low_value <= high_value)
			continue;
		/* The defaults are ordered, so at least one of the two came from the file. */
		if (low_set &&
		    (!high_set || config_setting_source_line(low_set) > config_setting_source_line(high_set)))
			error_at(ctx->err, ctx->errlen, setting_file(ctx, low_set),
				 config_setting_source_line(low_set), low->path,
				 "%" PRId64 " is greater than %s (%" PRId64 ")", low_value, high->path,
				 high_value);
		else
			error_at(ctx->err, ctx->errlen, setting_file(ctx, high_set),
				 config_setting_source_line(high_set), high->path,
				 "%" PRId64 " is less than %s (%" PRId64 ")", high_value, low->path,
				 low_value);
		return false;
	}
	return true;
}

/* Reads all of PATH into a NUL-terminated buffer; errno is kept on failure. */
static char *read_text(const char *path)
{
	FILE *f = fopen(path, "r");
	char *text = NULL;
	size_t len = 0, cap = 0;
	bool failed = false;

	if (!f)
		return NULL;
	errno = 0;
	for (;;) {
		if (cap - len < 4096) {
			char *bigger = realloc(text, cap + 65536);
			if (!bigger) {
				errno = ENOMEM;
				failed = true;
				break;
			}
			text = bigger;
			cap += 65536;
		}
		size_t got = fread(text + len, 1, cap - len - 1, f);
		len += got;
		if (got == 0)
			break;
	}
	if (failed || ferror(f)) {
		int saved = errno ? errno : EIO;
		free(text);
		fclose(f);
		errno = saved;
		return NULL;
	}
	text[len] = '\0';
	fclose(f);
	return text;
}

/* TEXT with its integer literals widened for libconfig 1.5 (widen.h); NULL, the error written,
 * when one is beyond int64 (or its key's range) or memory runs out. */
static char *widen_text(const load_ctx_t *ctx, const char *text)
{
	widen_error_t e;
	char *widened = widen_int_literals(text, &e);
	const config_key_t *key;

	if (widened)
		return widened;
	if (!e.literal) {
		error_oom(ctx->err, ctx->errlen, ctx->path);
		return NULL;
	}
	key = key_find(e.key);
	if (key && key->type == KEY_INT)
		error_at(ctx->err, ctx->errlen, ctx->path, e.line, e.key,
			 "%.*s is out of range (%" PRId64 "..%" PRId64 ")", e.len, e.literal, key->min,
			 key->max);
	else
		error_at(ctx->err, ctx->errlen, ctx->path, e.line, e.key, "%.*s is too large for an integer",
			 e.len, e.literal);
	return NULL;
}

config_t *config_load(const char *path, char *err, size_t errlen)
{
	load_ctx_t ctx = {.path = path, .err = err, .errlen = errlen};
	libconfig_t lc;
	config_t *config = calloc(1, sizeof(*config));
	char *text = NULL, *widened = NULL;
	bool ok = false;

	if (!config || !apply_defaults(config) || !(config->path = strdup(path))) {
		error_oom(err, errlen, path);
		config_free(config);
		return NULL;
	}
	text = read_text(path);
	if (!text) {
		error_at(err, errlen, path, 0, NULL, "cannot read: %s", strerror(errno));
		config_free(config);
		return NULL;
	}
	widened = widen_text(&ctx, text);
	free(text);
	if (!widened) {
		config_free(config);
		return NULL;
	}
	config_init(&lc);
	if (!config_read_string(&lc, widened)) {
		const char *file = config_error_file(&lc);
		error_at(err, errlen, file ? file : path, (unsigned)config_error_line(&lc), NULL, "%s",
			 config_error_text(&lc));
	} else if (apply_tree(&ctx, config, config_root_setting(&lc)) &&
		   check_cross(&ctx, config, config_root_setting(&lc))) {
		ok = fill_name(config);
		if (!ok)
			error_oom(err, errlen, path);
	}
	config_destroy(&lc);
	free(widened);
	if (!ok) {
		config_free(config);
		return NULL;
	}
	return config;
}

config_t *config_defaults(void)
{
	config_t *config = calloc(1, sizeof(*config));

	if (!config || !apply_defaults(config) || !fill_name(config)) {
		config_free(config);
		return NULL;
	}
	return config;
}

void config_free(config_t *config)
{
	if (!config)
		return;
	for (size_t i = 0; i < N_KEYS; i++) {
		const config_key_t *key = &config_keys[i];
		if (key->type == KEY_STRING)
			free(*(char **)key_slot(config, key));
		else if (key->type == KEY_STRINGS)
			free_strings(*(char ***)key_slot(config, key));
	}
	free(config->path);
	free(config);
}

/* A libconfig string literal: quotes, backslashes and control bytes escaped. */
static void print_string(FILE *out, const char *text)
{
	fputc('"', out);
	for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(out, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", out);
		else if (*p == '\t')
			fputs("\\t", out);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(out, "\\x%02x", *p);
		else
			fputc(*p, out);
	}
	fputc('"', out);
}

/* A string value; a connection string with its passwords masked (all of it without memory). */
static void print_string_key(FILE *out, const config_key_t *key, const char *value)
{
	char *masked;

	if (!key_is_conninfo(key)) {
		print_string(out, value);
		return;
	}
	masked = text_mask_conninfo(value);
	print_string(out, masked ? masked : TEXT_MASK);
	free(masked);
}

void config_print(const config_t *config, FILE *out)
{
	size_t group_len = 0; /* length of the current group's name, 0 before the first */

	fprintf(out, "# backfilld: effective configuration%s%s\n", config->path ? " of " : "",
		config->path ? config->path : "");
	for (size_t i = 0; i < N_KEYS; i++) {
		const config_key_t *key = &config_keys[i];
		const void *slot = key_slot(config, key);
		const char *dot = strchr(key->path, '.');
		size_t len = (size_t)(dot - key->path);

		if (len != group_len || strncmp(key->path, config_keys[i - 1].path, len) != 0) {
			if (group_len)
				fputs("};\n", out);
			fprintf(out, "%.*s: {\n", (int)len, key->path);
			group_len = len;
		}
		fprintf(out, "  %s = ", dot + 1);
		switch (key->type) {
		case KEY_INT: {
			int64_t value = *(const int64_t *)slot;
			/* libconfig 1.5 needs the L beyond 32 bits. */
			fprintf(out, "%" PRId64 "%s", value,
				value < INT32_MIN || value > INT32_MAX ? "L" : "");
			break;
		}
		case KEY_BOOL:
			fputs(*(const bool *)slot ? "true" : "false", out);
			break;
		case KEY_LOG_LEVEL:
			print_string(out, log_level_name(*(const log_level_t *)slot));
			break;
		case KEY_STRING:
			print_string_key(out, key, *(char *const *)slot);
			break;
		case KEY_STRINGS: {
			char *const *list = *(char **const *)slot;
			fputc('[', out);
			for (int j = 0; list[j]; j++) {
				fputs(j ? ", " : " ", out);
				print_string(out, list[j]);
			}
			fputs(list[0] ? " ]" : "]", out);
			break;
		}
		}
		fputs(";\n", out);
	}
	fputs("};\n", out);
}

bool config_register_secrets(const config_t *config)
{
	bool ok = true;

	for (size_t i = 0; i < N_KEYS; i++)
		if (key_is_conninfo(&config_keys[i]))
			ok = text_secrets_add_conninfo(*(char *const *)key_slot(config, &config_keys[i])) &&
			     ok;
	return ok;
}

static bool key_equal(const config_t *a, const config_t *b, const config_key_t *key)
{
	const void *x = key_slot(a, key), *y = key_slot(b, key);

	switch (key->type) {
	case KEY_INT:
		return *(const int64_t *)x == *(const int64_t *)y;
	case KEY_BOOL:
		return *(const bool *)x == *(const bool *)y;
	case KEY_LOG_LEVEL:
		return *(const log_level_t *)x == *(const log_level_t *)y;
	case KEY_STRING:
		return strcmp(*(char *const *)x, *(char *const *)y) == 0;
	case KEY_STRINGS: {
		char *const *p = *(char **const *)x, *const *q = *(char **const *)y;
		for (; *p && *q; p++, q++)
			if (strcmp(*p, *q) != 0)
				return false;
		return !*p && !*q;
	}
	}
	return false;
}

void config_diff_restart_only(const config_t *old_config, const config_t *new_config,
			      void (*warn)(const char *key))
{
	for (size_t i = 0; i < N_KEYS; i++)
		if (!config_keys[i].reloadable && !key_equal(old_config, new_config, &config_keys[i]))
			warn(config_keys[i].path);
}

static const config_t *current;

const config_t *config_current(void)
{
	return current;
}

void config_set_current(const config_t *config)
{
	current = config;
}
