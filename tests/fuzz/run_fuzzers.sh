#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz from the committed seeds (tests/fuzz/seeds) and small
# fixtures of tests/data, with a fixed seed and a fixed number of inputs each (about a minute on a
# 2-core machine), and prints how many inputs each tried. With -seed and -runs fixed, CI repeats
# (as far as libFuzzer's scheduling does not depend on timing) the run made before the commit, and
# a slower machine stops at the time cap. Any crash, leak,
# sanitizer report, timeout or uncaught non-sd::Error exception fails the run and leaves the input
# under $WORK/artifacts.
#   tests/fuzz/run_fuzzers.sh BUILD_DIR [MAX_SECONDS_PER_TARGET] [RUNS_SCALE]   (CI: build-fuzz, 120)
# RUNS_SCALE multiplies the inputs per target (e.g. 10 for a longer local session).
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:?usage: run_fuzzers.sh BUILD_DIR [SECONDS]}
SECONDS_EACH=${2:-120}
SCALE=${3:-1}
WORK=${WORK:-$(mktemp -d /tmp/sd_fuzz.XXXXXX)}
mkdir -p "$WORK/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export OMP_NUM_THREADS=1 TMPDIR="$WORK"
D=tests/data
# target | max input bytes | inputs (~1 min here) | seed files and folders
TARGETS=(
  "safetensors|65536|200000|$D/safetensors $D/lora/ti/tinyemb.safetensors $D/python_written.safetensors"
  "checkpoint|65536|150000|$D/ckpt/state.ckpt $D/ckpt/state_deflated.ckpt $D/ckpt/state_proto4.ckpt $D/ckpt/malicious.ckpt $D/ckpt/legacy.ckpt"
  "pickle|16384|800000|tests/fuzz/seeds/pickle"
  "config|8192|600000|tests/fuzz/seeds/config"
  "image|65536|40000|$D/image_transforms/rgb_37x53.png $D/image_transforms/rgba_29x31.png $D/image_transforms/gray16_5x9.png $D/image_transforms/palette_10x12.png $D/image_transforms/rgb_37x53_420.jpg $D/image_transforms/rgb_37x53_444.jpg $D/image_transforms/palette_10x12.gif $D/image_transforms/rgb_37x53_lossy.webp $D/image_transforms/rgba_29x31_lossless.webp $D/image_transforms/rgb_9x11.bmp"
  "tokenizer|4096|300000|tests/fuzz/seeds/tokenizer"
  "lora|262144|15000|$D/lora/sd1_kohya.safetensors $D/lora/sd1_peft.safetensors"
  "embedding|16384|120000|$D/lora/ti/tinyemb.safetensors $D/lora/ti/cat_toy/learned_embeds.safetensors $D/lora/ti/tinyxl.safetensors"
)
failed=0
summary=()
for spec in "${TARGETS[@]}"; do
  IFS='|' read -r name max_len runs_wanted seeds <<<"$spec"
  bin="$BUILD/tests/fuzz/fuzz_$name"
  [ -x "$bin" ] || { echo "run_fuzzers: $bin is missing (build with -DSD_FUZZ=ON)"; exit 2; }
  corpus="$WORK/corpus_$name"
  mkdir -p "$corpus"
  for s in $seeds; do
    if [ -d "$s" ]; then cp "$s"/* "$corpus"/ 2>/dev/null; else cp "$s" "$corpus"/; fi
  done
  log="$WORK/$name.log"
  start=$(date +%s)
  "$bin" -seed=1 -runs=$((runs_wanted * SCALE)) -max_total_time="$SECONDS_EACH" -max_len="$max_len" -timeout=30 -rss_limit_mb=3072 \
    -print_final_stats=1 -artifact_prefix="$WORK/artifacts/$name-" "$corpus" >"$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  secs=$(( $(date +%s) - start ))
  status=ok
  if [ $rc -ne 0 ]; then
    status="FAILED (exit $rc)"
    failed=1
    echo "---- fuzz_$name failed; the end of its log ($log):"
    tail -40 "$log"
    ls "$WORK/artifacts" | grep "^$name-" | sed "s|^|artifact: $WORK/artifacts/|"
  fi
  summary+=("$(printf '%-12s %10s inputs %6s s  peak RSS %5s MB  %s' "$name" "${runs:-?}" "$secs" "${rss:-?}" "$status")")
done
echo "fuzz targets, seed 1, fixed inputs (x$SCALE) capped at ${SECONDS_EACH} s each (ASan + UBSan):"
printf '  %s\n' "${summary[@]}"
exit $failed
