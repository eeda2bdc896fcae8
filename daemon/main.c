/*
 * backfilld: the command line. One-shot commands (--check-config, --schema-sql,
 * --install-schema) run and exit; otherwise the daemon's loop runs until stopped.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "daemon.h"
#include "exitcodes.h"
#include "log.h"
#include "schema.h"
#include "signals.h"
#include "text.h"

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: backfilld [OPTIONS]\n"
		"A PostgreSQL backfill daemon: walks tables in key order, one short transaction per "
		"batch.\n\n"
		"  -c, --config FILE     configuration file (default " CONFIG_DEFAULT_PATH ")\n"
		"      --check-config    parse and validate the file, print the effective settings, exit\n"
		"      --install-schema  create or upgrade the queue schema in the configured database, "
		"exit\n"
		"      --schema-sql      print the schema SQL to stdout, exit\n"
		"      --exit-when-idle  exit 0 once no runnable job is pending or running\n"
		"      --log-level LEVEL error | warning | notice | info | debug (overrides the file)\n"
		"  -V, --version         print the version, exit\n"
		"  -h, --help            print this help, exit\n\n"
		"Signals: SIGUSR1 pause, SIGUSR2 resume, SIGHUP reload, SIGTERM/SIGINT stop.\n");
}

/* Environment variables libpq turns into session settings (PGOPTIONS is the operator's choice,
 * like the options of job_conninfo). */
static const char *const job_setting_env[] = {"PGDATESTYLE", "PGTZ", "PGGEQO"};

enum {
	OPT_CHECK_CONFIG = 1000,
	OPT_INSTALL_SCHEMA,
	OPT_SCHEMA_SQL,
	OPT_EXIT_WHEN_IDLE,
	OPT_LOG_LEVEL,
};

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{"config", required_argument, NULL, 'c'},
		{"check-config", no_argument, NULL, OPT_CHECK_CONFIG},
		{"install-schema", no_argument, NULL, OPT_INSTALL_SCHEMA},
		{"schema-sql", no_argument, NULL, OPT_SCHEMA_SQL},
		{"exit-when-idle", no_argument, NULL, OPT_EXIT_WHEN_IDLE},
		{"log-level", required_argument, NULL, OPT_LOG_LEVEL},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *path = CONFIG_DEFAULT_PATH;
	bool path_given = false, check_config = false, install_schema = false, print_schema = false;
	daemon_options_t dopt = {0};
	char err[1024];
	config_t *config;
	int c, modes;

	signals_block();
	atexit(text_secrets_clear);

	while ((c = getopt_long(argc, argv, "c:Vh", options, NULL)) != -1) {
		switch (c) {
		case 'c':
			path = optarg;
			path_given = true;
			break;
		case OPT_CHECK_CONFIG:
			check_config = true;
			break;
		case OPT_INSTALL_SCHEMA:
			install_schema = true;
			break;
		case OPT_SCHEMA_SQL:
			print_schema = true;
			break;
		case OPT_EXIT_WHEN_IDLE:
			dopt.exit_when_idle = true;
			break;
		case OPT_LOG_LEVEL:
			if (!log_level_parse(optarg, &dopt.log_level)) {
				fprintf(stderr,
					"backfilld: --log-level: \"%s\" is not one of error, warning, "
					"notice, info, debug\n",
					optarg);
				return EXIT_BAD_USAGE;
			}
			dopt.log_level_override = true;
			break;
		case 'V':
			printf("backfilld %s\n", BACKFILLD_VERSION);
			return EXIT_OK;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		default:
			usage(stderr);
			return EXIT_BAD_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "backfilld: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return EXIT_BAD_USAGE;
	}
	modes = (int)check_config + (int)install_schema + (int)print_schema;
	if (modes > 1) {
		fprintf(stderr,
			"backfilld: --check-config, --install-schema and --schema-sql exclude each other\n");
		return EXIT_BAD_USAGE;
	}

	if (print_schema && !path_given && access(path, F_OK) != 0) {
		config = config_defaults(); /* no file: print for the default schema name */
	} else {
		config = config_load(path, err, sizeof(err));
		if (!config) {
			fprintf(stderr, "backfilld: invalid configuration: %s\n", err);
			return EXIT_BAD_CONFIG;
		}
	}
	if (!config_register_secrets(config)) {
		fprintf(stderr,
			"backfilld: cannot keep the connection strings' passwords for masking: out of "
			"memory, or too many of them\n");
		config_free(config);
		return EXIT_RUNTIME;
	}
	if (dopt.log_level_override)
		config->log_level = dopt.log_level;
	log_configure(config->log_level, config->log_syslog);

	if (check_config) {
		config_print(config, stdout);
		config_free(config);
		return EXIT_OK;
	}
	if (print_schema) {
		char *sql = schema_render(config->schema);
		fputs(sql, stdout);
		free(sql);
		config_free(config);
		return EXIT_OK;
	}
	if (install_schema) {
		int code = schema_install(config->conninfo, config->schema);
		config_free(config);
		return code;
	}

	/* A daemon trusted with production tables runs with as little privilege as it can. */
	if (geteuid() == 0) {
		fprintf(stderr, "backfilld: refusing to run as root: run the daemon as an unprivileged user"
				" (the systemd unit uses User=backfilld)\n");
		config_free(config);
		return EXIT_RUNTIME;
	}
	/* libpq sends these as session settings of every connection: a job's session must start
	 * with its role's and database's settings, as its submitter's own would. */
	for (size_t i = 0; i < sizeof(job_setting_env) / sizeof(job_setting_env[0]); i++) {
		if (getenv(job_setting_env[i])) {
			log_notice(
				"ignoring %s from the environment: job sessions take their role's settings",
				job_setting_env[i]);
			unsetenv(job_setting_env[i]);
		}
	}
	dopt.config_path = path;
	return daemon_run(config, &dopt);
}
