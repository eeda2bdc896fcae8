/*
 * Unit tests for metrics.c: what each report turns into in the Prometheus text format
 * (labels and their escaping, the throttle-reason enum, the histogram, rounds that forget
 * standbys and queue states, the archive backlog gauge, the bound on finished jobs), the
 * /healthz reason (one line, its passwords masked), the STATUS summary, and, when promtool is
 * installed, that promtool accepts a fully populated page.
 */
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

#include "metrics.h"
#include "text.h"

/* The rendered page. Caller frees. */
static char *render(void)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);

	assert_non_null(out);
	metrics_render(out);
	assert_int_equal(fclose(out), 0);
	return text;
}

static void expect_line(const char *page, const char *line)
{
	size_t n = strlen(line);

	for (const char *p = strstr(page, line); p; p = strstr(p + 1, line))
		if ((p == page || p[-1] == '\n') && p[n] == '\n')
			return;
	fail_msg("missing line <<%s>> in:\n%s", line, page);
}

static void expect_no(const char *page, const char *needle)
{
	if (strstr(page, needle))
		fail_msg("unexpected <<%s>> in:\n%s", needle, page);
}

/* How many lines start with PREFIX and end with SUFFIX. */
static int count_lines(const char *page, const char *prefix, const char *suffix)
{
	int n = 0;

	for (const char *p = page; *p;) {
		const char *end = strchr(p, '\n');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (len >= strlen(prefix) + strlen(suffix) && strncmp(p, prefix, strlen(prefix)) == 0 &&
		    strncmp(p + len - strlen(suffix), suffix, strlen(suffix)) == 0)
			n++;
		p += len + (end ? 1 : 0);
	}
	return n;
}

static int teardown(void **state)
{
	(void)state;
	metrics_reset();
	return 0;
}

static void report(int64_t id, const char *target, int64_t scanned, const char *reason, bool running)
{
	metrics_job_report_t r = {.id = id,
				  .target = target,
				  .rows_scanned = scanned,
				  .rows_changed = scanned / 2,
				  .batches = scanned / 100,
				  .batch_size = 100,
				  .sleep_ms = 250,
				  .throttled_reason = reason,
				  .running = running};
	metrics_job(&r);
}

static void test_empty_page(void **state)
{
	char *page;
	const char *reason = NULL;
	(void)state;

	page = render();
	expect_line(page, "backfilld_up 0");
	expect_line(page, "backfilld_paused 0");
	expect_line(page, "backfilld_blocked_sessions 0");
	expect_line(page, "# TYPE backfilld_batch_duration_seconds histogram");
	expect_line(page, "backfilld_batch_duration_seconds_bucket{le=\"+Inf\"} 0");
	expect_line(page, "backfilld_batch_duration_seconds_count 0");
	expect_line(page, "# TYPE backfilld_rows_scanned_total counter");
	expect_no(page, "backfilld_jobs{"); /* never counted: no zeros that were never measured */
	expect_no(page, "backfilld_rows_scanned_total{");
	free(page);
	assert_false(metrics_database_up(&reason));
	assert_string_equal(reason, "not connected yet");
}

static void test_job_series_and_escaping(void **state)
{
	char *page;
	(void)state;

	report(7, "public.a\\b\"c\nd", 1500, NULL, true);
	page = render();
	expect_line(page, "backfilld_rows_scanned_total{job=\"7\",target=\"public.a\\\\b\\\"c\\nd\"} 1500");
	expect_line(page, "backfilld_rows_changed_total{job=\"7\",target=\"public.a\\\\b\\\"c\\nd\"} 750");
	expect_line(page, "backfilld_batches_total{job=\"7\",target=\"public.a\\\\b\\\"c\\nd\"} 15");
	expect_line(page, "backfilld_batch_size{job=\"7\",target=\"public.a\\\\b\\\"c\\nd\"} 100");
	expect_line(page, "backfilld_sleep_seconds{job=\"7\",target=\"public.a\\\\b\\\"c\\nd\"} 0.25");
	expect_line(page, "backfilld_job_running{job=\"7\",target=\"public.a\\\\b\\\"c\\nd\"} 1");
	/* Running freely: every reason reads 0. */
	expect_line(page, "backfilld_throttled{job=\"7\",target=\"public.a\\\\b\\\"c\\nd\",reason="
			  "\"replication_lag\"} 0");
	expect_line(page, "backfilld_throttled{job=\"7\",target=\"public.a\\\\b\\\"c\\nd\",reason=\"paused_"
			  "by_signal\"} 0");
	expect_line(page, "backfilld_throttled{job=\"7\",target=\"public.a\\\\b\\\"c\\nd\",reason="
			  "\"archive_backlog\"} 0");
	assert_int_equal(count_lines(page, "backfilld_throttled{", "} 0"), 14); /* every known reason */
	assert_int_equal(count_lines(page, "backfilld_throttled{", "} 1"), 0);
	free(page);
}

static void test_throttle_reason_enum(void **state)
{
	char *page;
	(void)state;

	report(1, "public.t", 10, "lock_timeout", true);
	page = render();
	expect_line(page, "backfilld_throttled{job=\"1\",target=\"public.t\",reason=\"lock_timeout\"} 1");
	expect_line(page, "backfilld_throttled{job=\"1\",target=\"public.t\",reason=\"replication_lag\"} 0");
	free(page);

	/* A reason outside the contract's list shows, and stays listed (as 0) afterwards. */
	report(1, "public.t", 20, "some_new_reason", true);
	page = render();
	expect_line(page, "backfilld_throttled{job=\"1\",target=\"public.t\",reason=\"some_new_reason\"} 1");
	expect_line(page, "backfilld_throttled{job=\"1\",target=\"public.t\",reason=\"lock_timeout\"} 0");
	free(page);
	report(1, "public.t", 30, "", true); /* "" is running freely too */
	page = render();
	expect_line(page, "backfilld_throttled{job=\"1\",target=\"public.t\",reason=\"some_new_reason\"} 0");
	free(page);

	/* A job that left exports counters only. */
	report(1, "public.t", 40, NULL, false);
	page = render();
	expect_line(page, "backfilld_rows_scanned_total{job=\"1\",target=\"public.t\"} 40");
	expect_line(page, "backfilld_job_running{job=\"1\",target=\"public.t\"} 0");
	expect_no(page, "backfilld_throttled{");
	expect_no(page, "backfilld_batch_size{");
	expect_no(page, "backfilld_sleep_seconds{");
	free(page);
}

static void test_finished_jobs_are_bounded(void **state)
{
	char *page;
	char line[128];
	(void)state;

	report(1000, "public.keep", 1, NULL, true); /* running: never evicted */
	for (int64_t id = 1; id <= 150; id++)
		report(id, "public.t", id, NULL, true);
	for (int64_t id = 1; id <= 150; id++)
		report(id, "public.t", id, NULL, false);
	page = render();
	for (int64_t id = 1; id <= 150; id++) {
		snprintf(line, sizeof(line),
			 "backfilld_rows_scanned_total{job=\"%lld\",target=\"public.t\"} %lld", (long long)id,
			 (long long)id);
		if (id <= 50)
			expect_no(page, line);
		else
			expect_line(page, line);
	}
	expect_line(page, "backfilld_rows_scanned_total{job=\"1000\",target=\"public.keep\"} 1");
	free(page);
}

static void test_histogram(void **state)
{
	char *page;
	(void)state;

	metrics_batch_duration(0.005);
	metrics_batch_duration(0.3);
	metrics_batch_duration(0.5); /* le is inclusive */
	metrics_batch_duration(100);
	page = render();
	expect_line(page, "backfilld_batch_duration_seconds_bucket{le=\"0.01\"} 1");
	expect_line(page, "backfilld_batch_duration_seconds_bucket{le=\"0.25\"} 1");
	expect_line(page, "backfilld_batch_duration_seconds_bucket{le=\"0.5\"} 3");
	expect_line(page, "backfilld_batch_duration_seconds_bucket{le=\"60\"} 3");
	expect_line(page, "backfilld_batch_duration_seconds_bucket{le=\"+Inf\"} 4");
	expect_line(page, "backfilld_batch_duration_seconds_count 4");
	expect_line(page, "backfilld_batch_duration_seconds_sum 100.805");
	free(page);
}

static void test_standby_rounds(void **state)
{
	char *page;
	(void)state;

	metrics_standby_lag("s1", 1024, 0.5);
	metrics_standby_lag("slot \"x\"", 2048, 0);
	metrics_standby_round();
	page = render();
	expect_line(page, "backfilld_replication_lag_bytes{standby=\"s1\"} 1024");
	expect_line(page, "backfilld_replication_lag_seconds{standby=\"s1\"} 0.5");
	expect_line(page, "backfilld_replication_lag_bytes{standby=\"slot \\\"x\\\"\"} 2048");
	free(page);
	metrics_standby_lag("s1", 10, 0.25);
	metrics_standby_round();
	page = render();
	expect_line(page, "backfilld_replication_lag_bytes{standby=\"s1\"} 10");
	expect_no(page, "standby=\"slot");
	free(page);
	metrics_blocked_sessions(3);
	page = render();
	expect_line(page, "backfilld_blocked_sessions 3");
	free(page);
}

static void test_archive_backlog(void **state)
{
	char *page;
	(void)state;

	page = render(); /* not measured yet: the family, no sample */
	expect_line(page, "# TYPE backfilld_archive_backlog_bytes gauge");
	assert_int_equal(count_lines(page, "backfilld_archive_backlog_bytes", ""), 0);
	free(page);
	metrics_archive_backlog(INT64_C(1) << 34);
	page = render();
	expect_line(page, "backfilld_archive_backlog_bytes 17179869184");
	free(page);
	metrics_archive_backlog(0);
	page = render();
	expect_line(page, "backfilld_archive_backlog_bytes 0");
	free(page);
	metrics_archive_backlog(-1); /* archive_mode turned off */
	page = render();
	assert_int_equal(count_lines(page, "backfilld_archive_backlog_bytes", ""), 0);
	free(page);
}

static void test_queue_states(void **state)
{
	char *page;
	(void)state;

	metrics_queue_jobs("pending", 3);
	metrics_queue_jobs("odd", 1);
	metrics_queue_round();
	page = render();
	expect_line(page, "backfilld_jobs{state=\"pending\"} 3");
	expect_line(page, "backfilld_jobs{state=\"odd\"} 1");
	expect_line(page, "backfilld_jobs{state=\"cancelled\"} 0");
	free(page);
	metrics_queue_jobs("running", 2);
	metrics_queue_round();
	page = render();
	expect_line(page, "backfilld_jobs{state=\"pending\"} 0");
	expect_line(page, "backfilld_jobs{state=\"running\"} 2");
	expect_no(page, "odd");
	free(page);
}

static void test_database_and_pause(void **state)
{
	const char *reason = NULL;
	char *page;
	(void)state;

	metrics_database(false, "connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n"
				"\tIs the server running on that host and accepting TCP/IP connections?\n");
	assert_false(metrics_database_up(&reason));
	assert_string_equal(reason,
			    "connection to server at \"127.0.0.1\", port 1 failed: Connection refused "
			    "Is the server running on that host and accepting TCP/IP connections?");
	metrics_database(true, "");
	metrics_paused(true);
	assert_true(metrics_database_up(&reason));
	assert_string_equal(reason, "");
	page = render();
	expect_line(page, "backfilld_up 1");
	expect_line(page, "backfilld_paused 1");
	free(page);
}

/* /healthz answers anyone: a libpq error that quotes the connection string loses its password. */
static void test_database_reason_masked(void **state)
{
	const char *reason = NULL;
	(void)state;

	metrics_database(false,
			 "cannot connect: end of string reached when looking for matching \"]\" in IPv6 "
			 "host address in URI: \"postgresql://u:s3cret@[::1/x\"\n");
	assert_false(metrics_database_up(&reason));
	assert_string_equal(reason,
			    "cannot connect: end of string reached when looking for matching \"]\" in "
			    "IPv6 host address in URI: \"postgresql://u:" TEXT_MASK "@[::1/x\"");
}

static double fake_now;

static double fake_clock(void)
{
	return fake_now;
}

static void test_summary(void **state)
{
	char buf[160];
	(void)state;

	metrics_set_clock(fake_clock);
	fake_now = 100;
	metrics_summary(buf, sizeof(buf));
	assert_string_equal(buf, "0 rows/s");
	report(1, "public.a", 0, NULL, true);
	report(2, "public.b", 500, "replication_lag", true);
	fake_now = 102;
	report(1, "public.a", 2000, NULL, true);
	report(2, "public.b", 500, "replication_lag", true);
	report(3, "public.c", 0, "lock_timeout", true);
	fake_now = 104; /* job 1: 2000 rows in 4 s; job 2 still; job 3 has one sample */
	metrics_summary(buf, sizeof(buf));
	assert_string_equal(buf, "500 rows/s, throttled: replication_lag, lock_timeout");
	report(2, "public.b", 500, NULL, false);
	report(3, "public.c", 0, NULL, false);
	metrics_summary(buf, sizeof(buf));
	assert_string_equal(buf, "500 rows/s");
	fake_now = 1000; /* samples out of the window: no rate */
	metrics_summary(buf, sizeof(buf));
	assert_string_equal(buf, "0 rows/s");
}

/* A page with every family populated must pass `promtool check metrics` (lint included). */
static void test_promtool_accepts_the_page(void **state)
{
	char path[] = "/tmp/backfilld-metrics-XXXXXX", cmd[256];
	char *page;
	FILE *f;
	int fd, rc;
	(void)state;

	if (system("command -v promtool >/dev/null 2>&1") != 0)
		skip(); /* scripts/lib.sh installs Debian's prometheus package */
	report(3, "public.\"we\\ird\"\ntable", 12345, "replication_lag", true);
	report(4, "public.users", 99, NULL, false);
	report(5, "app.orders", 1, NULL, true);
	metrics_batch_duration(0.2);
	metrics_standby_lag("standby1", 4096, 1.5);
	metrics_standby_round();
	metrics_archive_backlog(16777216);
	metrics_queue_jobs("running", 2);
	metrics_queue_round();
	metrics_database(true, NULL);
	page = render();
	fd = mkstemp(path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	fputs(page, f);
	assert_int_equal(fclose(f), 0);
	snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
	rc = system(cmd);
	unlink(path);
	if (rc != 0)
		fail_msg("promtool check metrics failed (%d) on:\n%s", rc, page);
	free(page);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_empty_page, teardown),
		cmocka_unit_test_teardown(test_job_series_and_escaping, teardown),
		cmocka_unit_test_teardown(test_throttle_reason_enum, teardown),
		cmocka_unit_test_teardown(test_finished_jobs_are_bounded, teardown),
		cmocka_unit_test_teardown(test_histogram, teardown),
		cmocka_unit_test_teardown(test_standby_rounds, teardown),
		cmocka_unit_test_teardown(test_queue_states, teardown),
		cmocka_unit_test_teardown(test_database_and_pause, teardown),
		cmocka_unit_test_teardown(test_database_reason_masked, teardown),
		cmocka_unit_test_teardown(test_archive_backlog, teardown),
		cmocka_unit_test_teardown(test_summary, teardown),
		cmocka_unit_test_teardown(test_promtool_accepts_the_page, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
