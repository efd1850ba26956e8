#!/usr/bin/env bash
# One prepared check for a lent GPU machine (see README "GPU check"). It builds sd with CUDA
# (all cores), prints the device, runs every `cuda` test against the CPU reference plus the
# rest of the suite, and prints a short table last. Full logs go to the folder named on the
# command line.
#   usage: bench/gpu_check.sh <log_dir>
# SD_GPU_CHECK_SKIP lists parts to leave out, separated by spaces: tests, bench, models, train, dp
# (e.g. SD_GPU_CHECK_SKIP="train dp"). Expected time on one H100/H200: build ~1 min, tests ~2, bench
# ~2-3, models up to 6 (bounded), train up to 7 (bounded), dp up to 5 (bounded): split the parts over
# two calls when one command may run 10 minutes at most.
# Before sending the tree to the device machine, run bench/prepare_device_deps.sh here (it
# copies the header-only dependencies that machine lacks into .deps/) and carry .deps.
set -uo pipefail
LOG="${1:?usage: bench/gpu_check.sh <log_dir>}"
mkdir -p "$LOG"
LOG=$(cd "$LOG" && pwd)
cd "$(dirname "$0")/.."
BUILD=build-gpu
skip=" ${SD_GPU_CHECK_SKIP:-} "
want() { [[ "$skip" != *" $1 "* ]]; }
JOBS=$(nproc)
t0=$(date +%s)
: > "$LOG/failures.txt"
row() { printf '%-34s %s\n' "$1" "$2" >> "$LOG/table.txt"; }
: > "$LOG/table.txt"

nvidia-smi > "$LOG/nvidia-smi.txt" 2>&1 || true
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
row "gpu" "${gpu:-none found}"

if ! cmake -S . -B "$BUILD" -G Ninja -DSD_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real \
      -DSD_BUILD_BENCH=ON > "$LOG/configure.log" 2>&1; then
  row "configure" "FAILED (see configure.log)"; tail -30 "$LOG/configure.log"; cat "$LOG/table.txt"; exit 1
fi
if ! ninja -C "$BUILD" -j "$JOBS" > "$LOG/build.log" 2>&1; then
  row "build" "FAILED (see build.log)"; grep -m 20 -E "error|FAILED" "$LOG/build.log"; cat "$LOG/table.txt"; exit 1
fi
row "build (sm_90, $JOBS jobs)" "ok in $(( $(date +%s) - t0 )) s"

"$BUILD/tools/sd_devinfo" > "$LOG/devinfo.txt" 2>&1
rc=$?
row "device query + 64 MiB round trip" "$([ $rc -eq 0 ] && echo ok || echo FAILED) ($(grep -m1 -o 'round trip.*' "$LOG/devinfo.txt" | cut -c1-60))"

# The cuda label compares each kernel with the CPU reference; then everything else.
want tests || row "tests" "skipped (SD_GPU_CHECK_SKIP)"
want tests && for sel in "-L ^cuda$" "-LE ^cuda$"; do
  name=$([ "$sel" = "-L ^cuda$" ] && echo cuda || echo other)
  (cd "$BUILD" && ctest $sel -j "$JOBS" --output-on-failure --timeout 300 > "$LOG/ctest_$name.log" 2>&1)
  summary=$(grep -E "tests passed|tests failed" "$LOG/ctest_$name.log" | tail -1)
  skipped=$(grep -c "(Skipped)" "$LOG/ctest_$name.log")
  row "ctest ($name labels)" "${summary:-no tests} (skipped $skipped)"
  grep -E "\*\*\*Failed|Exception|Timeout|rel err|Failure" "$LOG/ctest_$name.log" | head -40 >> "$LOG/failures.txt"
  # The training tests' measured errors (GPU vs CPU), from ctest's full log of this run.
  [ "$name" = cuda ] && grep -hE "^\[ Cuda(TrainStep|SdTrain) \]" "$BUILD/Testing/Temporary/LastTest.log" \
    > "$LOG/train_cuda_errors.txt" 2>/dev/null
  # Channels-last models (layout conversions per forward, in CudaUNet too) and the one-kernel GroupNorm's share of calls.
  [ "$name" = cuda ] && grep -hE "^\[ Cuda(ChannelsLast|Norm|Conv|UNet) \]" "$BUILD/Testing/Temporary/LastTest.log" \
    > "$LOG/layout_cuda.txt" 2>/dev/null
done

# Python wheels carried in .whl/ (diffusers, for the UNet-step baseline), installed aside.
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sd_site .whl/*.whl \
    > "$LOG/pip.log" 2>&1 && export PYTHONPATH=/tmp/sd_site${PYTHONPATH:+:$PYTHONPATH}
fi
# Benchmarks: ours and PyTorch's on the same cases, same card, same run.
row "pytorch" "$(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1 | tail -1)"
t1=$(date +%s)
: > "$LOG/ours.csv"; : > "$LOG/ours.err"; : > "$LOG/compare.txt"
if want bench; then
"$BUILD/bench/sd_bench_gpu" --cases bench/gpu/cases.txt > "$LOG/ours.csv" 2> "$LOG/ours.err"
python3 bench/pytorch/ops.py --cases bench/gpu/cases.txt > "$LOG/torch.csv" 2> "$LOG/torch.err"
python3 bench/compare.py "$LOG/ours.csv" "$LOG/torch.csv" > "$LOG/compare.txt" 2>&1
row "benchmarks" "$(( $(date +%s) - t1 )) s ($(grep -c . "$LOG/ours.err") error lines from ours)"
fi

# Whole-UNet steps that take longer (torch.compile modes, SDXL at 1024 px; bench/gpu/model_cases.txt),
# bounded so this part stays under about 6 minutes; SD_GPU_MODEL_CASES=none skips it, or names another file.
model_cases=${SD_GPU_MODEL_CASES:-bench/gpu/model_cases.txt}
: > "$LOG/compare_models.txt"
if [ "$model_cases" != none ] && want models; then
  t4=$(date +%s)
  timeout 120 "$BUILD/bench/sd_bench_gpu" --cases "$model_cases" > "$LOG/ours_models.csv" 2> "$LOG/ours_models.err" \
    || echo "# sd_bench_gpu (model cases) exited with status $? (124: timed out after 120 s)" >> "$LOG/ours_models.csv"
  timeout 240 python3 bench/pytorch/ops.py --cases "$model_cases" > "$LOG/torch_models.csv" 2> "$LOG/torch_models.err" \
    || echo "# ops.py (model cases) exited with status $? (124: timed out after 240 s)" >> "$LOG/torch_models.csv"
  python3 bench/compare.py "$LOG/ours_models.csv" "$LOG/torch_models.csv" > "$LOG/compare_models.txt" 2>&1
  row "model-step benchmarks" "$(( $(date +%s) - t4 )) s ($(grep -c . "$LOG/ours_models.err") error lines from ours)"
fi

# Training steps at SD1.5 size (bench/NOTES.md "Training step"): sd_train's step (sd_bench_train) and
# diffusers' scripts' step (train_step.py, eager; then torch.compile on one case, SD_TRAIN_COMPILE_CASES,
# "none" to skip), each bounded so this part stays under about 3 minutes.
t2=$(date +%s)
: > "$LOG/train_sd.err"; : > "$LOG/compare_train.txt"; : > "$LOG/train_diffusers.err"
if want train; then
timeout 150 "$BUILD/bench/sd_bench_train" > "$LOG/train_sd.csv" 2> "$LOG/train_sd.err" \
  || echo "# sd_bench_train exited with status $? (124: timed out after 150 s)" >> "$LOG/train_sd.csv"
timeout 150 python3 bench/pytorch/train_step.py > "$LOG/train_diffusers.csv" 2> "$LOG/train_diffusers.err" \
  || echo "# train_step.py exited with status $? (124: timed out after 150 s)" >> "$LOG/train_diffusers.csv"
compile_cases=${SD_TRAIN_COMPILE_CASES:-lora-bf16-b4}
: > "$LOG/train_diffusers_compile.csv"
if [ "$compile_cases" != none ]; then
  timeout 100 python3 bench/pytorch/train_step.py --compile --cases "$compile_cases" \
    > "$LOG/train_diffusers_compile.csv" 2> "$LOG/train_diffusers_compile.err" \
    || echo "# train_step.py --compile exited with status $? (124: timed out after 100 s)" >> "$LOG/train_diffusers_compile.csv"
fi
python3 bench/compare_train.py "$LOG/train_sd.csv" "$LOG/train_diffusers.csv" "$LOG/train_diffusers_compile.csv" \
  > "$LOG/compare_train.txt" 2>&1
row "training-step benchmarks" "$(( $(date +%s) - t2 )) s ($(grep -c . "$LOG/train_sd.err") error lines from sd)"
fi

# Data parallelism (train/distributed.h): sd_bench_dp under mpirun, one process per GPU of this machine
# (one GPU: NCCL with one rank, which prices the bucket copies), then the model of bench/NOTES.md "Data
# parallelism" for 2 and 8 GPUs from the measured backward timeline. Without mpirun (or MPI in the
# build), the timeline and the model only. The CudaMpiTrain test (cuda label, above) checks the NCCL path.
t3=$(date +%s)
: > "$LOG/dp_sd15.txt"; : > "$LOG/dp_sdxl.txt"
if want dp; then
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
[ "$ngpu" -ge 1 ] 2>/dev/null || ngpu=1
dp_launch=()
if command -v mpirun > /dev/null 2>&1; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  dp_launch=(mpirun --oversubscribe -np "$ngpu")
fi
for m in sd15 sdxl; do
  extra=()
  [ "$m" = sdxl ] && extra=(--checkpointing)
  timeout 150 "${dp_launch[@]}" "$BUILD/bench/sd_bench_dp" --model "$m" "${extra[@]}" > "$LOG/dp_$m.txt" 2> "$LOG/dp_$m.err" \
    || echo "# sd_bench_dp --model $m exited with status $? (124: timed out after 150 s)" >> "$LOG/dp_$m.txt"
done
row "data parallel (sd_bench_dp)" "$(( $(date +%s) - t3 )) s, $ngpu GPU(s)$([ ${#dp_launch[@]} -eq 0 ] && echo ', no mpirun: model only')"
fi

# Goldens that need a GPU to make: torch's CUDA randn for a few seeds (sd_infer --rng torch-cuda).
want bench && { python3 tests/golden/record_torch_cuda_randn.py "$LOG/torch_cuda_randn.safetensors" > "$LOG/torch_randn.log" 2>&1 \
  && row "torch cuda randn golden" "recorded" || row "torch cuda randn golden" "FAILED (see torch_randn.log)"; }

row "total wall time" "$(( $(date +%s) - t0 )) s"
echo
echo "==== sd gpu_check ($(date -u +%Y-%m-%d)) ===="
cat "$LOG/devinfo.txt"
cat "$LOG/failures.txt"
head -5 "$LOG/ours.err" 2>/dev/null
head -5 "$LOG/train_sd.err" 2>/dev/null
grep -v "kept in float32" "$LOG/train_diffusers.err" 2>/dev/null | grep -m 5 -iE "error|Traceback"
cat "$LOG/table.txt"
echo
grep -E "trainable tensors|bounds|LoRA file|learned_embeds|token table|fp16 (overflowing|clean)" "$LOG/train_cuda_errors.txt" 2>/dev/null | cut -c1-400
grep -E "layout conversions|one-kernel|graph" "$LOG/layout_cuda.txt" 2>/dev/null | cut -c1-200
echo
cat "$LOG/compare.txt" 2>/dev/null
echo
grep -E "^unet" "$LOG/compare_models.txt" 2>/dev/null
grep -h "^#" "$LOG/ours_models.csv" "$LOG/torch_models.csv" 2>/dev/null | head -8
echo
cat "$LOG/compare_train.txt" 2>/dev/null
echo
cat "$LOG/dp_sd15.txt" "$LOG/dp_sdxl.txt" 2>/dev/null
head -3 "$LOG/dp_sd15.err" "$LOG/dp_sdxl.err" 2>/dev/null
