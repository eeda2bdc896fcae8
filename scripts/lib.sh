# shellcheck shell=bash
# Shared by scripts/test.sh and the demo script: where the checkout is, and the Debian
# packages backfilld needs to build, test and run against a local PostgreSQL 15.
# Source it; it sets no shell options of its own.

PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}

# Build and test dependencies, one list for every script.
BACKFILLD_PACKAGES=(
	build-essential
	cmake
	pkg-config
	libpq-dev
	libevent-dev
	libconfig-dev
	libcmocka-dev
	libsystemd-dev
	python3-pytest
	python3-psycopg
	valgrind    # tests/integration/test_valgrind.py
	prometheus  # promtool and a server the integration tests scrape with
	gnuplot-nox # scripts/plot-job
	systemd     # systemd-analyze verify|security on the unit
)

# The absolute path of the checkout this file lives in.
repo_root() {
	(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}

say() {
	printf '==> %s\n' "$*" >&2
}

die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# Install whichever of PKG... are missing; does nothing (not even apt-get update) when all
# are present. Uses sudo only when not root, and only if sudo exists.
ensure_packages() {
	local pkg status
	local -a missing=() as_root=()

	if ! command -v dpkg-query >/dev/null 2>&1; then
		say "not a Debian system; make sure these are installed: $*"
		return 0
	fi
	for pkg in "$@"; do
		status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
		[[ $status == "install ok installed" ]] || missing+=("$pkg")
	done
	((${#missing[@]} == 0)) && return 0

	if ((EUID != 0)); then
		command -v sudo >/dev/null 2>&1 ||
			die "missing packages: ${missing[*]}; install them as root (no sudo here)"
		as_root=(sudo)
	fi
	say "installing: ${missing[*]}"
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Everything the project needs, plus the PostgreSQL 15 server and psql when absent.
ensure_backfilld_packages() {
	local -a pkgs=("${BACKFILLD_PACKAGES[@]}")

	[[ -x $PG_BINDIR/postgres ]] || pkgs+=(postgresql-15)
	command -v psql >/dev/null 2>&1 || pkgs+=(postgresql-client-15)
	ensure_packages "${pkgs[@]}"
}

# backfilld refuses to run as root: prefix the daemon's command with "${AS_DAEMON_USER[@]}",
# which runs it as the postgres OS user when the script runs as root (and is empty otherwise).
AS_DAEMON_USER=()
if ((EUID == 0)); then
	AS_DAEMON_USER=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
