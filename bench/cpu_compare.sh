#!/usr/bin/env bash
# sd against PyTorch + diffusers on the CPU, on the same model, in alternating runs (issue 18's proof).
#   bench/cpu_compare.sh MODEL_DIR [rounds=3] [size=256] [steps=3] [threads=all cores] [dtype=fp32|bf16]
# Builds nothing: it runs build/tools/sd_infer and python3 with torch + diffusers (pip; a baseline only).
# Each round runs sd, then PyTorch; the table gives per-stage medians (text encode, one UNet step at
# batch 2 with guidance, VAE decode) and peak RSS. Stable-diffusion.cpp joins when SD_CPP_BIN names its
# binary. Euler, guidance 7.5, prompt "a cat", one image; bf16 converts the f32 model on load in
# both tools (sd's bf16 kernels need AVX512-BF16/AMX, and oneDNN). The first sd run also hashes the model
# for the PNG parameters (cached afterwards): run once beforehand, or count it out.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: bench/cpu_compare.sh MODEL_DIR [rounds] [size] [steps] [threads]}
rounds=${2:-3}; size=${3:-256}; steps=${4:-3}; threads=${5:-$(nproc)}; dtype=${6:-fp32}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OMP_NUM_THREADS=$threads
for r in $(seq 1 "$rounds"); do
  /usr/bin/time -f "%M" -o "$out/sd_rss_$r" ./build/tools/sd_infer --model "$model" --prompt "a cat" --steps "$steps" \
    --width "$size" --height "$size" --seed 1 --device cpu --dtype "$dtype" --scheduler euler --guidance_scale 7.5 \
    --output_dir "$out/img" --quiet --json > "$out/sd_$r.json"
  /usr/bin/time -f "%M" -o "$out/pt_rss_$r" python3 bench/pytorch/sd_pipeline_cpu.py "$model" "$size" "$steps" "$threads" "$dtype" \
    2>/dev/null | tail -1 > "$out/pt_$r.json"
  if [ -n "${SD_CPP_BIN:-}" ]; then
    /usr/bin/time -f "%M" -o "$out/cpp_rss_$r" "$SD_CPP_BIN" -M img_gen -m "$model" -p "a cat" --steps "$steps" \
      -W "$size" -H "$size" --sampling-method euler --cfg-scale 7.5 -t "$threads" -o "$out/cpp.png" > "$out/cpp_$r.log" 2>&1 || true
  fi
done
python3 - "$out" "$rounds" "$steps" "$size" "$threads" "$dtype" <<'PY'
import json, platform, statistics, sys, os, re
out, rounds, steps, size, threads, dtype = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
def med(v): return statistics.median(v) if v else float("nan")
rows = {}
for tool, pre in (("sd", "sd"), ("PyTorch", "pt")):
    t, u, d, rss = [], [], [], []
    for r in range(1, rounds + 1):
        j = json.load(open(f"{out}/{pre}_{r}.json"))
        j = j.get("timings", j)
        t.append(j["text_encode_s"]); u.append(j["denoise_s"] / steps); d.append(j["decode_s"])
        rss.append(int(open(f"{out}/{pre}_rss_{r}").read().split()[-1]) / 1e6)
    rows[tool] = (med(t), med(u), med(d), med(rss))
cpu = "?"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"): cpu = line.split(":", 1)[1].strip(); break
print(f"CPU: {cpu}, {os.cpu_count()} cores, {threads} threads; {size}x{size}, {steps} Euler steps, {dtype}, {rounds} alternating rounds (medians)")
print(f"| tool | text encode | UNet step (batch 2) | VAE decode | peak RSS |")
print(f"|---|---|---|---|---|")
for tool, (t, u, d, rss) in rows.items():
    print(f"| {tool} | {t:.2f} s | {u:.2f} s | {d:.2f} s | {rss:.2f} GB |")
s, p = rows["sd"], rows["PyTorch"]
print(f"| PyTorch / sd (>1: sd faster) | {p[0]/s[0]:.2f}x | {p[1]/s[1]:.2f}x | {p[2]/s[2]:.2f}x | {p[3]/s[3]:.2f}x |")
PY
