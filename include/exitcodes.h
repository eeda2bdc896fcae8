/* Process exit codes, from sysexits.h as the contract (section 1) fixes them. */
#ifndef BACKFILLD_EXITCODES_H
#define BACKFILLD_EXITCODES_H

#include <sysexits.h>

#define EXIT_OK 0
#define EXIT_RUNTIME 1
#define EXIT_BAD_USAGE EX_USAGE		   /* 64: bad command line */
#define EXIT_DB_UNAVAILABLE EX_UNAVAILABLE /* 69: one-shot command could not reach the database */
#define EXIT_BAD_CONFIG EX_CONFIG	   /* 78: invalid configuration */

#endif
