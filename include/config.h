/*
 * Configuration: one table of keys (path, type, default, bounds, reloadable),
 * parsed from a libconfig file into a fresh struct, validated, then swapped in.
 */
#ifndef BACKFILLD_CONFIG_H
#define BACKFILLD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "log.h"

#define CONFIG_DEFAULT_PATH "/etc/backfilld/backfilld.conf"

/* The throttle section; a job's column of the same name overrides each value. */
typedef struct throttle_settings {
	int64_t batch_size;
	int64_t min_batch_size;
	int64_t max_batch_size;
	int64_t target_batch_ms;
	int64_t sleep_ms;
	int64_t max_sleep_ms;
	int64_t max_replication_lag_bytes;
	int64_t max_replication_lag_ms;
	int64_t max_blocked_ms;
	int64_t lock_timeout_ms;
	int64_t statement_timeout_ms;
	int64_t max_failed_rows;
	int64_t sample_interval_ms;
	char **standbys; /* application_names; NULL-terminated, never NULL itself */
	int nstandbys;
	bool logical_slots;
	bool pause_during_autovacuum;
	int64_t max_retries;		   /* retryable failures of one batch in a row before the job fails */
	int64_t max_wal_bytes_per_s;	   /* the WAL budget of all this instance's jobs; 0: none */
	int64_t max_archive_backlog_bytes; /* WAL not yet archived beyond which every job holds */
	int64_t vacuum_after_percent;	   /* VACUUM the target after changing this % of its rows */
} throttle_settings_t;

typedef struct config {
	char *path; /* the file it was read from */

	char *conninfo;
	char *job_conninfo; /* job sessions ("" in the file: conninfo); its user is the job's run_as */
	char *schema;

	char *name; /* "" in the file means "host:pid"; config_load fills that in */
	int64_t workers;
	int64_t poll_interval_ms;
	int64_t lease_ms;
	int64_t shutdown_grace_ms;
	int64_t max_connections; /* all of this instance's connections together */
	int64_t max_parallel;	 /* the largest parallel a job may ask for */

	throttle_settings_t throttle;

	char *http_listen; /* "" turns HTTP off */

	log_level_t log_level;
	bool log_syslog;
	int64_t log_progress_interval_ms; /* how often a running job logs progress at info */
} config_t;

/*
 * Read PATH into a new config. On any problem returns NULL and writes one line into ERR:
 * "PATH:LINE: KEY: what is wrong" (syntax errors, unknown keys, wrong types, values out
 * of range, a missing or empty conninfo, inconsistent bounds such as min > max).
 */
config_t *config_load(const char *path, char *err, size_t errlen) __attribute__((warn_unused_result));

/* A config with every default (conninfo empty): for --schema-sql without a file. */
config_t *config_defaults(void) __attribute__((warn_unused_result));

void config_free(config_t *config);

/* The configuration in force: the daemon sets it at start and after each reload, and every
 * module of the loop reads it from here (never a copy: a reload frees the old one). */
const config_t *config_current(void);
void config_set_current(const config_t *config);

/* Print every effective setting in libconfig syntax (--check-config). Passwords in connection
 * strings are masked (text_mask_conninfo), so they read TEXT_MASK if the output is loaded again. */
void config_print(const config_t *config, FILE *out);

/* Register the passwords of every connection string in CONFIG with text_secrets_add_conninfo,
 * so that logs and /healthz mask them wherever they show up. False when that fails. */
bool config_register_secrets(const config_t *config) __attribute__((warn_unused_result));

/*
 * Before a reload: for each key that differs between OLD and NEW but only takes effect
 * at restart (database.*, daemon.name, daemon.workers is reloadable), call WARN with its path.
 */
void config_diff_restart_only(const config_t *old_config, const config_t *new_config,
			      void (*warn)(const char *key));

#endif
