#!/usr/bin/env bash
# Build the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan in build-fuzz, and run
# each for SECONDS (default 60), side by side (one core each). Exits non-zero when a target
# crashes, leaks, hangs or trips a sanitizer; the input that did it is left in
# build-fuzz/artifacts/ and the target's log in build-fuzz/fuzz-TARGET.log.
set -euo pipefail

usage() {
	cat <<'USAGE'
usage: scripts/fuzz.sh [SECONDS]
  SECONDS     how long each target runs (default 60)
  BUILD_DIR   environment: build directory (default build-fuzz)
New inputs that reach new code are kept in BUILD_DIR/corpus/<target> between runs; the seeds
in tests/fuzz/corpus/<target> are read, never written.
USAGE
}

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_args "$@"
args_count 0 1
seconds=${ARGS[0]:-60}
case $seconds in
*[!0-9]* | 0) usage_error ;;
esac

root=$(repo_root)
cd "$root"
build=${BUILD_DIR:-build-fuzz}

ensure_backfilld_packages
ensure_packages clang-14 libclang-rt-14-dev
clang=$(command -v clang-14 || command -v clang) || die "clang not found"

say "configuring $build (BACKFILLD_FUZZ=ON, $("$clang" --version | head -n1))"
CC=$clang cmake -S "$root" -B "$build" -DBACKFILLD_FUZZ=ON -DBACKFILLD_TESTS=OFF \
	-DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build" -j"$(build_jobs)" --target fuzz_config fuzz_keys

build=$(cd "$build" && pwd)
mkdir -p "$build/artifacts"
# Stray relative paths (an @include in a fuzzed config) land in an empty directory.
scratch=$(mktemp -d)
pids=()
cleanup() {
	local pid
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	rm -rf "$scratch"
}
trap cleanup EXIT

export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$root/tests/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

targets=(config keys)
for target in "${targets[@]}"; do
	corpus=$build/corpus/$target
	mkdir -p "$corpus"
	say "fuzzing $target for ${seconds}s (log: $build/fuzz-$target.log)"
	(cd "$scratch" && exec "$build/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -timeout=10 \
		-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$build/artifacts/$target-" \
		-dict="$root/tests/fuzz/$target.dict" "$corpus" "$root/tests/fuzz/corpus/$target" \
		</dev/null >"$build/fuzz-$target.log" 2>&1) &
	pids+=($!)
done

failed=()
for i in "${!targets[@]}"; do
	target=${targets[i]}
	if wait "${pids[i]}"; then
		say "fuzz_$target: no failure in ${seconds}s; $(grep -E '^stat::number_of_executed_units' \
			"$build/fuzz-$target.log" | awk '{print $2}') runs, $(find "$build/corpus/$target" \
			-type f | wc -l) inputs kept in $build/corpus/$target"
	else
		tail -n 60 "$build/fuzz-$target.log" >&2
		say "fuzz_$target FAILED: the input is in $build/artifacts/$target-*"
		failed+=("$target")
	fi
done

if ((${#failed[@]})); then
	say "FAILED: fuzzing ${failed[*]}"
	exit 1
fi
say "fuzzing passed"
