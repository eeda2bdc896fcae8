/*
 * Unit tests for config.c: the example file, defaults, one exact "FILE:LINE: KEY: problem"
 * line for each kind of mistake, 64-bit integers, the standbys list, the print -> load round
 * trip (passwords masked), registering the passwords for masking, and which changes
 * config_diff_restart_only reports.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "text.h"

#define CONNINFO_LINE "database: { conninfo = \"dbname=x\"; };\n"

/* Writes TEXT to a fresh file in BACKFILLD_TEST_TMP (else /tmp); its name goes into PATH. */
static void write_conf(char *path, size_t len, const char *text)
{
	static int serial; /* makes each file of this process unique */
	const char *dir = getenv("BACKFILLD_TEST_TMP");
	FILE *f;

	snprintf(path, len, "%s/test_config_%ld_%d.conf", dir && *dir ? dir : "/tmp", (long)getpid(),
		 serial++);
	f = fopen(path, "w");
	if (!f)
		fail_msg("cannot write %s: %s", path, strerror(errno));
	fputs(text, f);
	assert_int_equal(fclose(f), 0);
}

/* Loads TEXT; it must load. The file is removed again. */
static config_t *load_text(const char *text)
{
	char path[PATH_MAX], err[512] = "";
	config_t *config;

	write_conf(path, sizeof(path), text);
	config = config_load(path, err, sizeof(err));
	unlink(path);
	if (!config)
		fail_msg("rejected: %s", err);
	assert_string_equal(config->path, path);
	return config;
}

/* Loads TEXT; it must fail with exactly "PATH" followed by WANT (":LINE: KEY: problem"). */
static void expect_error(const char *text, const char *want)
{
	char path[PATH_MAX], err[512] = "", expected[PATH_MAX + 512];
	config_t *config;

	write_conf(path, sizeof(path), text);
	config = config_load(path, err, sizeof(err));
	unlink(path);
	if (config) {
		config_free(config);
		fail_msg("accepted, expected error%s", want);
	}
	snprintf(expected, sizeof(expected), "%s%s", path, want);
	assert_string_equal(err, expected);
	assert_null(strchr(err, '\n'));
}

static void expect_host_pid_name(const config_t *config)
{
	char host[256], want[300];

	assert_int_equal(gethostname(host, sizeof(host)), 0);
	host[sizeof(host) - 1] = '\0';
	snprintf(want, sizeof(want), "%s:%ld", host, (long)getpid());
	assert_string_equal(config->name, want);
}

/* Every default of contract section 3, apart from conninfo and name. */
static void expect_defaults(const config_t *c)
{
	assert_string_equal(c->schema, "backfill");
	assert_int_equal(c->workers, 2);
	assert_int_equal(c->poll_interval_ms, 5000);
	assert_int_equal(c->lease_ms, 30000);
	assert_int_equal(c->shutdown_grace_ms, 10000);
	assert_int_equal(c->throttle.batch_size, 1000);
	assert_int_equal(c->throttle.min_batch_size, 10);
	assert_int_equal(c->throttle.max_batch_size, 100000);
	assert_int_equal(c->throttle.target_batch_ms, 500);
	assert_int_equal(c->throttle.sleep_ms, 0);
	assert_int_equal(c->throttle.max_sleep_ms, 30000);
	assert_int_equal(c->throttle.max_replication_lag_bytes, 67108864);
	assert_int_equal(c->throttle.max_replication_lag_ms, 5000);
	assert_int_equal(c->throttle.max_blocked_ms, 1000);
	assert_int_equal(c->throttle.lock_timeout_ms, 1000);
	assert_int_equal(c->throttle.statement_timeout_ms, 30000);
	assert_int_equal(c->throttle.max_failed_rows, 1000);
	assert_int_equal(c->throttle.sample_interval_ms, 250);
	assert_non_null(c->throttle.standbys);
	assert_null(c->throttle.standbys[0]);
	assert_int_equal(c->throttle.nstandbys, 0);
	assert_true(c->throttle.logical_slots);
	assert_false(c->throttle.pause_during_autovacuum);
	assert_string_equal(c->http_listen, "127.0.0.1:9474");
	assert_int_equal(c->log_level, LOG_LEVEL_INFO);
	assert_false(c->log_syslog);
	assert_int_equal(c->log_progress_interval_ms, 10000);
}

/* Does a line of the example file set key (its first word, followed by "=")? */
static bool file_sets_key(const char *path, const char *key)
{
	FILE *in = fopen(path, "r");
	char line[512], word[128];
	bool found = false;

	assert_non_null(in);
	while (!found && fgets(line, sizeof(line), in))
		found = sscanf(line, " %127[a-z_] =", word) == 1 && strchr(line, '=') && !strcmp(word, key);
	fclose(in);
	return found;
}

/* Every key the daemon knows (as --check-config prints them) is set in the example file. */
static void expect_every_key_shown(const config_t *config, const char *path)
{
	char *printed = NULL, line[512], key[128];
	size_t printed_len = 0;
	FILE *out = open_memstream(&printed, &printed_len), *keys;
	int count = 0;

	assert_non_null(out);
	config_print(config, out);
	fclose(out);
	keys = fmemopen(printed, printed_len, "r");
	assert_non_null(keys);
	while (fgets(line, sizeof(line), keys)) {
		if (sscanf(line, " %127[a-z_] =", key) != 1 || !strchr(line, '='))
			continue;
		count++;
		if (!file_sets_key(path, key))
			fail_msg("%s does not show the key %s", path, key);
	}
	fclose(keys);
	free(printed);
	assert_true(count >= 30);
}

static void test_example_conf_loads(void **state)
{
	const char *source = getenv("BACKFILLD_SOURCE_DIR");
	char path[PATH_MAX], err[512] = "";
	config_t *config;

	(void)state;
	if (source && *source) {
		snprintf(path, sizeof(path), "%s/conf/backfilld.conf", source);
	} else {
		/* This file is SOURCE/tests/unit/test_config.c. */
		const char *slash = strrchr(__FILE__, '/');
		snprintf(path, sizeof(path), "%.*s/../../conf/backfilld.conf",
			 slash ? (int)(slash - __FILE__) : 1, slash ? __FILE__ : ".");
	}
	config = config_load(path, err, sizeof(err));
	if (!config)
		fail_msg("%s", err);
	assert_string_equal(config->conninfo, "dbname=app user=backfilld");
	expect_defaults(config);
	expect_host_pid_name(config);
	expect_every_key_shown(config, path);
	config_free(config);
}

static void test_defaults(void **state)
{
	config_t *config = config_defaults();

	(void)state;
	assert_non_null(config);
	assert_string_equal(config->conninfo, "");
	assert_null(config->path);
	expect_defaults(config);
	expect_host_pid_name(config);
	config_free(config);

	config = load_text(CONNINFO_LINE);
	assert_string_equal(config->conninfo, "dbname=x");
	expect_defaults(config);
	expect_host_pid_name(config);
	config_free(config);

	config = load_text(CONNINFO_LINE "daemon: { name = \"worker-a\"; };\n");
	assert_string_equal(config->name, "worker-a");
	config_free(config);
}

static void test_error_file_and_syntax(void **state)
{
	char err[512];
	const char *missing = "/nonexistent-dir/backfilld.conf";

	(void)state;
	assert_null(config_load(missing, err, sizeof(err)));
	assert_string_equal(err, "/nonexistent-dir/backfilld.conf: cannot read: No such file or directory");

	expect_error("database: {\n  conninfo = ;\n};\n", ":2: syntax error");
	expect_error("database: {\n  conninfo = \"a\";\n  schema = = \"b\";\n};\n", ":3: syntax error");
	expect_error(CONNINFO_LINE "daemon: {\n  workers = 3;\n  workers = 4;\n};\n",
		     ":4: duplicate setting name");
}

static void test_error_unknown_keys(void **state)
{
	(void)state;
	expect_error(CONNINFO_LINE "daemon: {\n  wrkers = 3;\n};\n", ":3: daemon.wrkers: unknown key");
	expect_error(CONNINFO_LINE "\nmetrics: { port = 1; };\n", ":3: metrics: unknown key");
	expect_error("workers = 3;\n" CONNINFO_LINE, ":1: workers: unknown key");
	expect_error(CONNINFO_LINE "throttle: {\n  batch_size = 5;\n  extra: { a = 1; };\n};\n",
		     ":4: throttle.extra: unknown key");
	expect_error(CONNINFO_LINE "daemon = 5;\n", ":2: daemon: expected a group { ... }");
}

static void test_error_types(void **state)
{
	(void)state;
	expect_error(CONNINFO_LINE "daemon: {\n  workers = \"4\";\n};\n",
		     ":3: daemon.workers: expected an integer");
	expect_error(CONNINFO_LINE "daemon: { workers = 4.0; };\n",
		     ":2: daemon.workers: expected an integer");
	expect_error(CONNINFO_LINE "daemon: { workers = true; };\n",
		     ":2: daemon.workers: expected an integer");
	expect_error(CONNINFO_LINE "log: { syslog = 1; };\n", ":2: log.syslog: expected true or false");
	expect_error("database: { conninfo = \"x\";\n  schema = 5; };\n",
		     ":2: database.schema: expected a string");
	expect_error("database: { conninfo = [\"a\"]; };\n", ":1: database.conninfo: expected a string");
	expect_error(CONNINFO_LINE "throttle: { standbys = [1, 2]; };\n",
		     ":2: throttle.standbys: expected a list of non-empty strings, e.g. [\"standby1\", "
		     "\"standby2\"]");
	expect_error(CONNINFO_LINE "throttle: { standbys = \"s1\"; };\n",
		     ":2: throttle.standbys: expected a list of non-empty strings, e.g. [\"standby1\", "
		     "\"standby2\"]");
	expect_error(CONNINFO_LINE "throttle: { standbys = (\"s1\", \"\"); };\n",
		     ":2: throttle.standbys: expected a list of non-empty strings, e.g. [\"standby1\", "
		     "\"standby2\"]");
}

static void test_error_ranges(void **state)
{
	(void)state;
	expect_error(CONNINFO_LINE "throttle: {\n  batch_size = 0;\n};\n",
		     ":3: throttle.batch_size: 0 is out of range (1..10000000)");
	expect_error(CONNINFO_LINE "daemon: { workers = 1025; };\n",
		     ":2: daemon.workers: 1025 is out of range (1..1024)");
	/* Hex beyond 32 bits is not truncated by libconfig 1.5 behind our back (0x100000001 is not 1). */
	expect_error(CONNINFO_LINE "daemon: { workers = 0x100000001; };\n",
		     ":2: daemon.workers: 4294967297 is out of range (1..1024)");
	expect_error(CONNINFO_LINE "daemon: { poll_interval_ms = 9; };\n",
		     ":2: daemon.poll_interval_ms: 9 is out of range (10..3600000)");
	expect_error(CONNINFO_LINE "throttle: { sleep_ms = -1; };\n",
		     ":2: throttle.sleep_ms: -1 is out of range (0..86400000)");
	expect_error(CONNINFO_LINE "throttle: { sample_interval_ms = 60001; };\n",
		     ":2: throttle.sample_interval_ms: 60001 is out of range (10..60000)");
	expect_error(CONNINFO_LINE "log: { progress_interval_ms = 3600001; };\n",
		     ":2: log.progress_interval_ms: 3600001 is out of range (0..3600000)");
	expect_error(CONNINFO_LINE "throttle: { max_replication_lag_bytes = 4611686018427387905L; };\n",
		     ":2: throttle.max_replication_lag_bytes: 4611686018427387905 is out of range "
		     "(1..4611686018427387904)");
}

static void test_error_cross_checks(void **state)
{
	(void)state;
	/* Against a default: the key in the file is named. */
	expect_error(CONNINFO_LINE "throttle: {\n  min_batch_size = 5000;\n};\n",
		     ":3: throttle.min_batch_size: 5000 is greater than throttle.batch_size (1000)");
	expect_error(CONNINFO_LINE "throttle: {\n  max_batch_size = 500;\n};\n",
		     ":3: throttle.max_batch_size: 500 is less than throttle.batch_size (1000)");
	expect_error(CONNINFO_LINE "throttle: { sleep_ms = 40000; };\n",
		     ":2: throttle.sleep_ms: 40000 is greater than throttle.max_sleep_ms (30000)");
	/* Both in the file: the later one is named. */
	expect_error(CONNINFO_LINE "throttle: {\n  batch_size = 100;\n  min_batch_size = 200;\n};\n",
		     ":4: throttle.min_batch_size: 200 is greater than throttle.batch_size (100)");
	expect_error(CONNINFO_LINE "throttle: {\n  min_batch_size = 200;\n  batch_size = 100;\n};\n",
		     ":4: throttle.batch_size: 100 is less than throttle.min_batch_size (200)");
	expect_error(CONNINFO_LINE "throttle: {\n  max_sleep_ms = 10;\n  sleep_ms = 20;\n};\n",
		     ":4: throttle.sleep_ms: 20 is greater than throttle.max_sleep_ms (10)");
}

static void test_error_strings(void **state)
{
	(void)state;
	expect_error("database: {\n  conninfo = \"\";\n};\n", ":2: database.conninfo: must not be empty");
	expect_error("\ndatabase: {\n  schema = \"s\";\n};\n",
		     ":2: database.conninfo: required, but not set");
	expect_error("", ":1: database.conninfo: required, but not set");
	expect_error("log: { syslog = true; };\n\ndatabase: {\n};\n",
		     ":3: database.conninfo: required, but not set");
	expect_error("database: { conninfo = \"x\";\n  schema = \"\"; };\n",
		     ":2: database.schema: must not be empty");
	expect_error(
		"database: { conninfo = \"x\";\n  schema = "
		"\"s234567890123456789012345678901234567890123456789012345678901234\"; };\n",
		":2: database.schema: \"s234567890123456789012345678901234567890123456789012345678901234\" "
		"is longer than 63 bytes");
	expect_error(
		CONNINFO_LINE "log: {\n  level = \"loud\";\n};\n",
		":3: log.level: expected one of \"error\", \"warning\", \"notice\", \"info\", \"debug\"");
	expect_error(
		CONNINFO_LINE "log: { level = 3; };\n",
		":2: log.level: expected one of \"error\", \"warning\", \"notice\", \"info\", \"debug\"");
}

static void test_http_listen(void **state)
{
	static const char *const bad[] = {
		"9474",	 ":9474", "localhost:0", "localhost:65536", "::1:9474", "[::1]9474",
		"[]:80", "host:", "host:12a",	 "[::1:80",	    "h:-1",	"a b:80"};
	static const char *const good[] = {"", "0.0.0.0:1", "[::1]:9474", "localhost:65535", "db.example:80"};
	char text[256], want[256];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(text, sizeof(text), CONNINFO_LINE "http: { listen = \"%s\"; };\n", bad[i]);
		snprintf(want, sizeof(want),
			 ":2: http.listen: \"%s\" is not HOST:PORT with a port 1..65535 (IPv6 as "
			 "\"[::1]:9474\")",
			 bad[i]);
		expect_error(text, want);
	}
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		snprintf(text, sizeof(text), CONNINFO_LINE "http: { listen = \"%s\"; };\n", good[i]);
		config_t *config = load_text(text);
		assert_string_equal(config->http_listen, good[i]);
		config_free(config);
	}
	/* A control character in a quoted value cannot break the one-line error. */
	expect_error(
		CONNINFO_LINE "http: { listen = \"a\\nb:1\"; };\n",
		":2: http.listen: \"a?b:1\" is not HOST:PORT with a port 1..65535 (IPv6 as \"[::1]:9474\")");
}

static void test_int64(void **state)
{
	config_t *config;

	(void)state;
	/* libconfig 1.5 truncates a 32-bit literal; config.c widens it first. */
	config = load_text(
		"throttle: {\n  max_replication_lag_bytes = 10000000000;\n"
		"  max_failed_rows = 4611686018427387904L; # 2^62, the maximum 99999999999999999999\n"
		"  /* 99999999999999999999 */ standbys = [\"x12345678901\"];\n"
		"};\ndatabase: { conninfo = \"port=99999999999999999999\"; };\n");
	assert_int_equal(config->throttle.max_replication_lag_bytes, INT64_C(10000000000));
	assert_int_equal(config->throttle.max_failed_rows, INT64_C(4611686018427387904));
	assert_string_equal(config->throttle.standbys[0], "x12345678901");
	assert_string_equal(config->conninfo, "port=99999999999999999999");
	config_free(config);

	config = load_text(CONNINFO_LINE "throttle: { max_replication_lag_bytes = 4294967296L; };\n");
	assert_int_equal(config->throttle.max_replication_lag_bytes, INT64_C(4294967296));
	config_free(config);

	expect_error(CONNINFO_LINE "throttle: { sleep_ms = -10000000000; };\n",
		     ":2: throttle.sleep_ms: -10000000000 is out of range (0..86400000)");
	expect_error(CONNINFO_LINE "daemon: { workers = 4294967298; };\n",
		     ":2: daemon.workers: 4294967298 is out of range (1..1024)");
	expect_error(CONNINFO_LINE "throttle: {\n  max_replication_lag_bytes = 99999999999999999999;\n};\n",
		     ":3: throttle.max_replication_lag_bytes: 99999999999999999999 is out of range "
		     "(1..4611686018427387904)");
	expect_error(CONNINFO_LINE "throttle: { max_replication_lag_ms = 5.0e10; };\n",
		     ":2: throttle.max_replication_lag_ms: expected an integer");
}

static void test_standbys(void **state)
{
	config_t *config;

	(void)state;
	config = load_text(CONNINFO_LINE "throttle: { standbys = (\"replica-a\", \"replica-b\"); };\n");
	assert_int_equal(config->throttle.nstandbys, 2);
	assert_string_equal(config->throttle.standbys[0], "replica-a");
	assert_string_equal(config->throttle.standbys[1], "replica-b");
	assert_null(config->throttle.standbys[2]);
	config_free(config);

	config = load_text(CONNINFO_LINE "throttle: { standbys = [\"s1\"]; };\n");
	assert_int_equal(config->throttle.nstandbys, 1);
	assert_string_equal(config->throttle.standbys[0], "s1");
	assert_null(config->throttle.standbys[1]);
	config_free(config);

	config = load_text(CONNINFO_LINE "throttle: { standbys = (); };\n");
	assert_int_equal(config->throttle.nstandbys, 0);
	assert_null(config->throttle.standbys[0]);
	config_free(config);
}

static char *print_to_string(const config_t *config)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	assert_non_null(f);
	config_print(config, f);
	assert_int_equal(fclose(f), 0);
	return text;
}

static void test_print_load_round_trip(void **state)
{
	config_t *first, *second;
	char *text1, *text2;

	(void)state;
	first = load_text(
		"database: { conninfo = \"host='a b' password='q\\\"uo\\\\te'\\ttab\"; schema = \"bf\"; };\n"
		"daemon: { name = \"n1\"; workers = 7; lease_ms = 600; };\n"
		"throttle: { batch_size = 20; min_batch_size = 20; max_batch_size = 20;\n"
		"  max_replication_lag_bytes = 4611686018427387904L; max_failed_rows = 0;\n"
		"  standbys = [\"a\", \"b c\"]; logical_slots = false; pause_during_autovacuum = true;\n"
		"  sleep_ms = 5; max_sleep_ms = 5; };\n"
		"http: { listen = \"\"; };\n"
		"log: { level = \"debug\"; syslog = true; progress_interval_ms = 0; };\n");
	assert_string_equal(first->conninfo, "host='a b' password='q\"uo\\te'\ttab");

	text1 = print_to_string(first);
	second = load_text(text1);
	assert_string_equal(second->conninfo, "host='a b' password=" TEXT_MASK "\ttab");
	assert_string_equal(second->schema, "bf");
	assert_string_equal(second->name, "n1");
	assert_int_equal(second->workers, 7);
	assert_int_equal(second->lease_ms, 600);
	assert_int_equal(second->throttle.batch_size, 20);
	assert_int_equal(second->throttle.max_replication_lag_bytes, INT64_C(4611686018427387904));
	assert_int_equal(second->throttle.max_failed_rows, 0);
	assert_int_equal(second->throttle.nstandbys, 2);
	assert_string_equal(second->throttle.standbys[1], "b c");
	assert_false(second->throttle.logical_slots);
	assert_true(second->throttle.pause_during_autovacuum);
	assert_int_equal(second->throttle.sleep_ms, 5);
	assert_string_equal(second->http_listen, "");
	assert_int_equal(second->log_level, LOG_LEVEL_DEBUG);
	assert_true(second->log_syslog);
	assert_int_equal(second->log_progress_interval_ms, 0);

	/* Apart from the first line, which names the file, the two prints are the same. */
	text2 = print_to_string(second);
	assert_non_null(strchr(text1, '\n'));
	assert_string_equal(strchr(text1, '\n'), strchr(text2, '\n'));
	assert_non_null(strstr(text1, "\n  max_replication_lag_bytes = 4611686018427387904L;\n"));
	assert_non_null(strstr(text1, "\n  standbys = [ \"a\", \"b c\" ];\n"));
	assert_non_null(strstr(text1, "\nlog: {\n  level = \"debug\";\n"));
	free(text1);
	free(text2);
	config_free(first);
	config_free(second);

	/* The defaults print and load too, once a conninfo is given. */
	first = config_defaults();
	assert_non_null(first);
	free(first->conninfo);
	first->conninfo = strdup("dbname=d");
	text1 = print_to_string(first);
	second = load_text(text1);
	expect_defaults(second);
	assert_string_equal(second->name, first->name);
	free(text1);
	config_free(first);
	config_free(second);
}

static char warned[512]; /* the keys diff_restart_only reported, space-separated */

static void record_warning(const char *key)
{
	size_t len = strlen(warned);
	snprintf(warned + len, sizeof(warned) - len, "%s%s", len ? " " : "", key);
}

static void expect_restart_only(const char *old_text, const char *new_text, const char *want)
{
	config_t *old_config = load_text(old_text), *new_config = load_text(new_text);

	warned[0] = '\0';
	config_diff_restart_only(old_config, new_config, record_warning);
	assert_string_equal(warned, want);
	config_free(old_config);
	config_free(new_config);
}

/* --check-config never shows a password, in either form of connection string. */
static void test_print_masks_passwords(void **state)
{
	static const struct {
		const char *file_value, *printed;
	} cases[] = {
		{"host=127.0.0.1 password=s3cret dbname=x", "host=127.0.0.1 password=" TEXT_MASK " dbname=x"},
		{"postgresql://u:s3cret@127.0.0.1/x", "postgresql://u:" TEXT_MASK "@127.0.0.1/x"},
		{"postgresql://u:s3cret@[::1/x", "postgresql://u:" TEXT_MASK "@[::1/x"},
		{"dbname=x", "dbname=x"},
	};
	(void)state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char file[256], want[256];
		snprintf(file, sizeof(file), "database: { conninfo = \"%s\"; };\n", cases[i].file_value);
		config_t *config = load_text(file);
		char *text = print_to_string(config);
		snprintf(want, sizeof(want), "\n  conninfo = \"%s\";\n", cases[i].printed);
		if (!strstr(text, want) || strstr(text, "s3cret"))
			fail_msg("case %zu: wanted <<%s>> in:\n%s", i, want, text);
		free(text);
		config_free(config);
	}
}

/* The configured passwords are masked anywhere, also where libpq quotes one alone. */
static void test_register_secrets(void **state)
{
	config_t *config = load_text("database: { conninfo = \"postgresql://u:s3cret%zz@h/x\"; };\n");
	char *masked;
	(void)state;

	assert_true(config_register_secrets(config));
	masked = text_mask("invalid percent-encoded token: \"s3cret%zz\"");
	assert_string_equal(masked, "invalid percent-encoded token: \"" TEXT_MASK "\"");
	free(masked);
	text_secrets_clear();
	config_free(config);
}

static void test_diff_restart_only(void **state)
{
	(void)state;
	expect_restart_only(CONNINFO_LINE, CONNINFO_LINE, "");
	expect_restart_only(CONNINFO_LINE "throttle: { batch_size = 1000; };\n",
			    "database: { conninfo = \"dbname=y\"; };\nthrottle: { batch_size = 2000; };\n",
			    "database.conninfo");
	expect_restart_only(CONNINFO_LINE,
			    CONNINFO_LINE "daemon: { workers = 9; };\nlog: { level = \"debug\"; };\n"
					  "throttle: { standbys = [\"s\"]; logical_slots = false; };\n",
			    "");
	expect_restart_only(CONNINFO_LINE,
			    "http: { listen = \"\"; };\ndaemon: { name = \"other\"; };\n"
			    "database: { conninfo = \"dbname=x\"; schema = \"q\"; };\n",
			    "database.schema daemon.name http.listen");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_example_conf_loads),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_error_file_and_syntax),
		cmocka_unit_test(test_error_unknown_keys),
		cmocka_unit_test(test_error_types),
		cmocka_unit_test(test_error_ranges),
		cmocka_unit_test(test_error_cross_checks),
		cmocka_unit_test(test_error_strings),
		cmocka_unit_test(test_http_listen),
		cmocka_unit_test(test_int64),
		cmocka_unit_test(test_standbys),
		cmocka_unit_test(test_print_load_round_trip),
		cmocka_unit_test(test_print_masks_passwords),
		cmocka_unit_test(test_register_secrets),
		cmocka_unit_test(test_diff_restart_only),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
