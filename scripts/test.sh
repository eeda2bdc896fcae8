#!/usr/bin/env bash
# The README's test command: install what is missing, build, and run the whole suite
# (unit tests, the pytest integration suite against real PostgreSQL 15 clusters, and the
# daemon under valgrind); with --pg MAJOR, the integration tests marked `versions` against
# another PostgreSQL major. CI runs `scripts/test.sh --ci` through .ci/run as root on a clean
# Debian 12 checkout.
set -euo pipefail

usage() {
	cat <<'USAGE'
usage: scripts/test.sh [--sanitize | --ci] [--unit] [-- CTEST-ARGS...]
       scripts/test.sh [--sanitize] --pg MAJOR [-- PYTEST-ARGS...]
  --sanitize  build in build-asan with AddressSanitizer + UBSan and run the suite there
              (without the valgrind test: valgrind cannot run an ASan binary)
  --unit      run only the unit tests (ctest -R '^unit\.')
  --pg MAJOR  build, then run the integration tests marked `versions` (schema install, exactly
              once under SIGKILL, a paused standby, blocked sessions, a verify job) against
              PostgreSQL MAJOR (14, 16, 17, 18; 15 is Debian's), fetched once with npm by
              scripts/pg-binaries.sh; MAJOR 13 runs the tests marked `pg13` instead (backfilld
              refuses a server older than 14)
  --ci        CI's sequence: the format check; the plain build's unit tests and valgrind
              test (build); the whole suite, unit and integration, on the ASan + UBSan
              build (build-asan); then scripts/fuzz.sh FUZZ_SECONDS (default 30); then, on
              the plain build, --pg 14, 16, 17 and 18 and 13, a step each
  BUILD_DIR   environment: build directory (default build, or build-asan with --sanitize;
              --ci ignores it)
  BACKFILLD_PG_CACHE  environment: where scripts/pg-binaries.sh keeps other majors'
              binaries (default /var/cache/backfilld-pg as root)
  FUZZ_SECONDS  environment: with --ci, how long each fuzz target runs (default 30)
  CHECK_FORMAT=auto|yes|no  clang-format check: auto runs it when clang-format is installed,
              yes installs clang-format-14 if needed, no skips it
USAGE
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

sanitize=0
unit_only=0
ci=0
pg_major=""
opt_flag --sanitize sanitize
opt_flag --unit unit_only
opt_flag --ci ci
opt_value --pg pg_major
parse_args "$@"
((${#ARGS[@]} == 0)) || usage_error
ctest_extra=("${ARGS_REST[@]}")
[[ -z ${OPT_GIVEN[--pg]:-} || $pg_major =~ ^[1-9][0-9]*$ ]] || usage_error

if ((ci && (sanitize || unit_only))) || { [[ -n $pg_major ]] && ((ci || unit_only)); }; then
	usage_error
fi

root=$(repo_root)
cd "$root"
jobs=$(build_jobs)
check_format=${CHECK_FORMAT:-auto}
failed=()

ensure_backfilld_packages
[[ $check_format == yes ]] && ensure_packages clang-format-14

# Formatting: the pinned style is clang-format 14's; prefer that binary when both exist.
clang_format=$(command -v clang-format-14 || command -v clang-format || true)
if [[ $check_format != no && -n $clang_format ]]; then
	shopt -s nullglob
	sources=(daemon/*.c include/*.h tests/unit/*.c tests/fuzz/*.c)
	shopt -u nullglob
	say "checking formatting with $("$clang_format" --version | head -n1)"
	if ((${#sources[@]})) && ! "$clang_format" --dry-run --Werror "${sources[@]}"; then
		say "misformatted: run $clang_format -i on the files above"
		failed+=(format)
	fi
elif [[ $check_format != no ]]; then
	say "clang-format not installed; skipping the format check (CHECK_FORMAT=yes installs it)"
fi

# Sanitizer reports exit with a distinct status, so one is never mistaken for exit 1 or 0;
# tests/lsan.supp names the leaks of Debian's libconfig that are not ours.
sanitizer_env() {
	export ASAN_OPTIONS="detect_leaks=1:exitcode=86${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
	export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
	export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=86${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
}

# build_tree BUILD ON|OFF: configure and build one build directory.
build_tree() {
	say "configuring $1 (BACKFILLD_SANITIZE=$2)"
	cmake -S "$root" -B "$1" -DBACKFILLD_SANITIZE="$2" -DBACKFILLD_TESTS=ON || return
	say "building $1 with $jobs jobs"
	cmake --build "$1" -j"$jobs"
}

# run_suite BUILD ON|OFF [CTEST-ARGS...]: configure, build and test one build directory.
run_suite() {
	local build=$1 sanitize_opt=$2
	shift 2
	build_tree "$build" "$sanitize_opt" || return
	say "running tests in $build"
	ctest --test-dir "$build" --output-on-failure --no-tests=error -j"$jobs" "$@" "${ctest_extra[@]}"
}

# version_suite BUILD ON|OFF MAJOR [PYTEST-ARGS...]: build BUILD, then run the integration tests
# marked `versions` with the server binaries of PostgreSQL MAJOR (PG_BIN); for 13, those marked
# `pg13` (PG13_BIN), while the suite's own cluster stays Debian's 15. As CMake's integration
# test runs pytest (tests/CMakeLists.txt), with a time limit so that a hang ends the step.
version_suite() {
	local build=$1 sanitize_opt=$2 major=$3 bin
	local -a env=() marker=(-m versions)
	shift 3
	[[ $build == /* ]] || build=$root/$build
	bin=$(pg_bindir "$major") || return
	say "PostgreSQL $major: $bin ($(cat "$bin/../VERSION" 2>/dev/null || echo Debian))"
	if ((major < 14)); then
		env=(PG13_BIN="$bin")
		marker=(-m pg13)
	else
		env=(PG_BIN="$bin")
	fi
	build_tree "$build" "$sanitize_opt" || return
	say "running the integration tests marked ${marker[1]} against PostgreSQL $major"
	env "${env[@]}" BACKFILLD_BIN="$build/backfilld" BACKFILLD_SOURCE_DIR="$root" \
		timeout -k 30 900 /usr/bin/python3 -m pytest -v -p no:cacheprovider --durations=5 "${marker[@]}" \
		--ignore="$root/tests/integration/test_valgrind.py" "$@" "$root/tests/integration"
}

# sanitized_suite BUILD [CTEST-ARGS...]: run_suite on an ASan + UBSan build, in a subshell so
# the sanitizer environment stays there.
sanitized_suite() {
	(
		sanitizer_env
		run_suite "$1" ON "${@:2}"
	)
}

# sanitized_version_suite BUILD MAJOR [PYTEST-ARGS...]: version_suite on an ASan + UBSan build.
sanitized_version_suite() {
	(
		sanitizer_env
		version_suite "$1" ON "${@:2}"
	)
}

# step NAME COMMAND...: run one step, time it, and record a failure without stopping.
step() {
	local name=$1 start=$SECONDS
	shift
	say "step: $name"
	if "$@"; then
		say "step $name passed in $((SECONDS - start))s"
	else
		say "step $name FAILED after $((SECONDS - start))s"
		failed+=("$name")
	fi
}

if ((ci)); then
	step plain-unit-valgrind run_suite build OFF -R '^unit\.|^integration\.valgrind$'
	step sanitizers-full-suite sanitized_suite build-asan
	step fuzz bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
	for major in 14 16 17 18; do
		step "postgresql-$major" version_suite build OFF "$major"
	done
	step postgresql-13-refused version_suite build OFF 13
elif [[ -n $pg_major ]]; then
	if ((sanitize)); then
		step "postgresql-$pg_major" sanitized_version_suite "${BUILD_DIR:-build-asan}" "$pg_major" "${ctest_extra[@]}"
	else
		step "postgresql-$pg_major" version_suite "${BUILD_DIR:-build}" OFF "$pg_major" "${ctest_extra[@]}"
	fi
else
	unit_args=()
	((unit_only)) && unit_args=(-R '^unit\.')
	if ((sanitize)); then
		step tests sanitized_suite "${BUILD_DIR:-build-asan}" "${unit_args[@]}"
	else
		step tests run_suite "${BUILD_DIR:-build}" OFF "${unit_args[@]}"
	fi
fi

if ((${#failed[@]})); then
	say "FAILED: ${failed[*]}"
	exit 1
fi
say "all passed in ${SECONDS}s"
