#!/usr/bin/env bash
# The untrusted-input check CI runs after the tests: a CPU-only build with clang, AddressSanitizer
# and UndefinedBehaviorSanitizer in build-fuzz/, the parser tests under them (ctest label
# `sanitize`), then every libFuzzer target with a fixed seed and a fixed number of inputs (about a
# minute each here; MAX_SECONDS caps each, default 120).
#   scripts/fuzz_check.sh [MAX_SECONDS_PER_TARGET]        (make fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-120}
BUILD=${FUZZ_BUILD:-build-fuzz}
JOBS=${JOBS:-$(nproc)}
start=$(date +%s)
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  # -O1 -g1: the usual sanitizer build (fast enough to fuzz, stack traces with lines).
  CC=clang CXX=clang++ cmake -S . -B "$BUILD" -G Ninja -DSD_CUDA=OFF -DSD_FUZZ=ON -DSD_BUILD_BENCH=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" >/dev/null
fi
cmake --build "$BUILD" -j "$JOBS"
built=$(date +%s)
echo "fuzz_check: sanitizer build in $((built - start)) s"
(cd "$BUILD" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 OMP_NUM_THREADS=1 \
  ctest -L sanitize --output-on-failure -j "$JOBS")
tested=$(date +%s)
echo "fuzz_check: parser tests under ASan + UBSan in $((tested - built)) s"
tests/fuzz/run_fuzzers.sh "$BUILD" "$SECONDS_EACH"
echo "fuzz_check: fuzzing in $(( $(date +%s) - tested )) s; total $(( $(date +%s) - start )) s"
