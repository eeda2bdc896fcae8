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

/* What the command line asks for. */
typedef struct cli {
	const char *path; /* the configuration file */
	bool path_given, check_config, install_schema, print_schema;
	daemon_options_t dopt;
} cli_t;

#define CLI_GO_ON (-1) /* not an exit code: the next step follows */

/* Reads the options into CLI. Returns CLI_GO_ON, or the exit code when the command line is wrong
 * or has been answered (--version, --help). */
static int parse_options(int argc, char **argv, cli_t *cli)
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
	int c;

	while ((c = getopt_long(argc, argv, "c:Vh", options, NULL)) != -1) {
		switch (c) {
		case 'c':
			cli->path = optarg;
			cli->path_given = true;
			break;
		case OPT_CHECK_CONFIG:
			cli->check_config = true;
			break;
		case OPT_INSTALL_SCHEMA:
			cli->install_schema = true;
			break;
		case OPT_SCHEMA_SQL:
			cli->print_schema = true;
			break;
		case OPT_EXIT_WHEN_IDLE:
			cli->dopt.exit_when_idle = true;
			break;
		case OPT_LOG_LEVEL:
			if (!log_level_parse(optarg, &cli->dopt.log_level)) {
				fprintf(stderr,
					"backfilld: --log-level: \"%s\" is not one of error, warning, "
					"notice, info, debug\n",
					optarg);
				return EXIT_BAD_USAGE;
			}
			cli->dopt.log_level_override = true;
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
	return CLI_GO_ON;
}

/* The checks of the command line as a whole, once every option is read: CLI_GO_ON or the exit code. */
static int check_arguments(int argc, char **argv, const cli_t *cli)
{
	if (optind < argc) {
		fprintf(stderr, "backfilld: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return EXIT_BAD_USAGE;
	}
	if ((int)cli->check_config + (int)cli->install_schema + (int)cli->print_schema > 1) {
		fprintf(stderr,
			"backfilld: --check-config, --install-schema and --schema-sql exclude each other\n");
		return EXIT_BAD_USAGE;
	}
	return CLI_GO_ON;
}

/* The configuration (the defaults for --schema-sql with no file), its passwords kept for masking,
 * the log set up. NULL, the exit code in *CODE, when it cannot be had. */
static config_t *load_config(const cli_t *cli, int *code)
{
	char err[1024];
	config_t *config;

	if (cli->print_schema && !cli->path_given && access(cli->path, F_OK) != 0) {
		config = config_defaults(); /* no file: print for the default schema name */
	} else {
		config = config_load(cli->path, err, sizeof(err));
		if (!config) {
			fprintf(stderr, "backfilld: invalid configuration: %s\n", err);
			*code = EXIT_BAD_CONFIG;
			return NULL;
		}
	}
	if (!config_register_secrets(config)) {
		fprintf(stderr,
			"backfilld: cannot keep the connection strings' passwords for masking: out of "
			"memory, or too many of them\n");
		config_free(config);
		*code = EXIT_RUNTIME;
		return NULL;
	}
	if (cli->dopt.log_level_override)
		config->log_level = cli->dopt.log_level;
	log_configure(config->log_level, config->log_syslog);
	return config;
}

/* The one-shot command asked for, if any: its exit code (CONFIG freed), else CLI_GO_ON. */
static int run_one_shot(const cli_t *cli, config_t *config)
{
	int code = EXIT_OK;

	if (cli->check_config) {
		config_print(config, stdout);
	} else if (cli->print_schema) {
		char *sql = schema_render(config->schema);
		fputs(sql, stdout);
		free(sql);
	} else if (cli->install_schema) {
		code = schema_install(config->conninfo, config->schema);
	} else {
		return CLI_GO_ON;
	}
	config_free(config);
	return code;
}

/* The daemon, until it stops; it takes CONFIG. */
static int start(config_t *config, cli_t *cli)
{
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
	cli->dopt.config_path = cli->path;
	return daemon_run(config, &cli->dopt);
}

int main(int argc, char **argv)
{
	cli_t cli = {.path = CONFIG_DEFAULT_PATH};
	config_t *config;
	int code;

	signals_block();
	atexit(text_secrets_clear);

	code = parse_options(argc, argv, &cli);
	if (code == CLI_GO_ON)
		code = check_arguments(argc, argv, &cli);
	if (code != CLI_GO_ON)
		return code;
	config = load_config(&cli, &code);
	if (!config)
		return code;
	code = run_one_shot(&cli, config);
	if (code != CLI_GO_ON)
		return code;
	return start(config, &cli);
}
