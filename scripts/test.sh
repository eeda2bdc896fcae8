#!/usr/bin/env bash
# The README's test command: install what is missing, build, and run the whole suite
# (unit tests and the pytest integration suite against real PostgreSQL 15 clusters).
# CI runs this through .ci/run as root on a clean Debian 12 checkout.
set -euo pipefail

usage() {
	cat <<'USAGE'
usage: scripts/test.sh [--sanitize] [--unit] [-- CTEST-ARGS...]
  --sanitize  build in build-asan with AddressSanitizer + UBSan and run the suite there
  --unit      run only the unit tests (ctest -R '^unit\.')
  BUILD_DIR   environment: build directory (default build, or build-asan with --sanitize)
  CHECK_FORMAT=auto|yes|no  clang-format check: auto runs it when clang-format is installed,
              yes installs clang-format-14 if needed, no skips it
USAGE
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

sanitize=0
unit_only=0
ctest_extra=()
while (($#)); do
	case $1 in
	--sanitize) sanitize=1 ;;
	--unit) unit_only=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	--)
		shift
		ctest_extra=("$@")
		break
		;;
	*)
		usage >&2
		exit 64
		;;
	esac
	shift
done

root=$(repo_root)
cd "$root"
jobs=$(nproc 2>/dev/null || echo 2)
check_format=${CHECK_FORMAT:-auto}
failed=()

ensure_backfilld_packages
[[ $check_format == yes ]] && ensure_packages clang-format-14

# Formatting: the pinned style is clang-format 14's; prefer that binary when both exist.
clang_format=$(command -v clang-format-14 || command -v clang-format || true)
if [[ $check_format != no && -n $clang_format ]]; then
	shopt -s nullglob
	sources=(daemon/*.c include/*.h tests/unit/*.c)
	shopt -u nullglob
	say "checking formatting with $("$clang_format" --version | head -n1)"
	if ((${#sources[@]})) && ! "$clang_format" --dry-run --Werror "${sources[@]}"; then
		say "misformatted: run $clang_format -i on the files above"
		failed+=(format)
	fi
elif [[ $check_format != no ]]; then
	say "clang-format not installed; skipping the format check (CHECK_FORMAT=yes installs it)"
fi

if ((sanitize)); then
	build=${BUILD_DIR:-build-asan}
	sanitize_opt=ON
	# A distinct exit status, so a sanitizer report is never mistaken for exit 1 or 0.
	export ASAN_OPTIONS="detect_leaks=1:exitcode=86${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
	export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=86${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
else
	build=${BUILD_DIR:-build}
	sanitize_opt=OFF
fi

say "configuring $build (BACKFILLD_SANITIZE=$sanitize_opt)"
cmake -S "$root" -B "$build" -DBACKFILLD_SANITIZE="$sanitize_opt" -DBACKFILLD_TESTS=ON
say "building with $jobs jobs"
cmake --build "$build" -j"$jobs"

ctest_args=(--test-dir "$build" --output-on-failure --no-tests=error -j"$jobs")
((unit_only)) && ctest_args+=(-R '^unit\.')
say "running tests"
ctest "${ctest_args[@]}" "${ctest_extra[@]}" || failed+=(tests)

if ((${#failed[@]})); then
	say "FAILED: ${failed[*]}"
	exit 1
fi
say "all passed"
