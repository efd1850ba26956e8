#!/usr/bin/env bash
# sd against PyTorch + diffusers on the CPU, on the same model, in alternating runs (issue 18's proof).
#   bench/cpu_compare.sh MODEL_DIR [rounds=3] [size=256] [steps=3] [threads=all cores] [dtype=fp32|bf16]
# Builds nothing: it runs build/tools/sd_infer and python3 with torch + diffusers (pip; a baseline only).
# Each round runs sd, then PyTorch; the table gives per-stage medians (text encode, one UNet step at
# batch 2 with guidance, VAE decode, VAE encode of an input image) and peak RSS. Stable-diffusion.cpp
# joins when SD_CPP_BIN names its `sd-cli` binary; SD_CPP_MODEL names the file it loads if not MODEL_DIR
# (its diffusers-folder loader does not recognise SD1 folders: make one file with
# `sd_convert --model_path DIR --checkpoint_path FILE.safetensors`). Euler, guidance 7.5, prompt "a cat",
# one image; bf16 converts the f32 model on load in both tools (sd's bf16 kernels need AVX512-BF16/AMX,
# and oneDNN). The first sd run also hashes the model for the PNG parameters (cached afterwards): run
# once beforehand, or count it out.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: bench/cpu_compare.sh MODEL_DIR [rounds] [size] [steps] [threads]}
rounds=${2:-3}; size=${3:-256}; steps=${4:-3}; threads=${5:-$(nproc)}; dtype=${6:-fp32}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OMP_NUM_THREADS=$threads
# An input image for the VAE encode stage: both tools encode it (img2img at strength 1.0 runs every step,
# so the other stages are those of text-to-image).
python3 -c "
import sys
from PIL import Image
n = int(sys.argv[2])
Image.radial_gradient('L').resize((n, n)).convert('RGB').save(sys.argv[1])" "$out/init.png" "$size"
for r in $(seq 1 "$rounds"); do
  /usr/bin/time -f "%M" -o "$out/sd_rss_$r" ./build/tools/sd_infer --model "$model" --prompt "a cat" --steps "$steps" \
    --width "$size" --height "$size" --seed 1 --device cpu --dtype "$dtype" --scheduler euler --guidance_scale 7.5 \
    --init_image "$out/init.png" --strength 1.0 --output_dir "$out/img" --quiet --json > "$out/sd_$r.json"
  /usr/bin/time -f "%M" -o "$out/pt_rss_$r" python3 bench/pytorch/sd_pipeline_cpu.py "$model" "$size" "$steps" "$threads" "$dtype" \
    "$out/init.png" 2>/dev/null | tail -1 > "$out/pt_$r.json"
  if [ -n "${SD_CPP_BIN:-}" ]; then
    /usr/bin/time -f "%M" -o "$out/cpp_rss_$r" "$SD_CPP_BIN" -M img_gen -m "${SD_CPP_MODEL:-$model}" -p "a cat" --steps "$steps" \
      -W "$size" -H "$size" --sampling-method euler --cfg-scale 7.5 -t "$threads" -s 1 \
      -i "$out/init.png" --strength 1.0 -o "$out/cpp.png" > "$out/cpp_$r.log" 2>&1 || true
  fi
done
python3 - "$out" "$rounds" "$steps" "$size" "$threads" "$dtype" <<'PY'
import json, platform, statistics, sys, os, re
out, rounds, steps, size, threads, dtype = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
def med(v): return statistics.median(v) if v else float("nan")
rows = {}
for tool, pre in (("sd", "sd"), ("PyTorch", "pt")):
    t, u, d, e, rss = [], [], [], [], []
    for r in range(1, rounds + 1):
        j = json.load(open(f"{out}/{pre}_{r}.json"))
        j = j.get("timings", j)
        t.append(j["text_encode_s"]); u.append(j["denoise_s"] / steps); d.append(j["decode_s"]); e.append(j["vae_encode_s"])
        rss.append(int(open(f"{out}/{pre}_rss_{r}").read().split()[-1]) / 1e6)
    rows[tool] = (med(t), med(u), med(d), med(e), med(rss))
# stable-diffusion.cpp logs its stages ("get_learned_condition completed, taking 0.52s", "sampling
# completed", "decode_first_stage completed", "encode_first_stage completed").
if os.path.exists(f"{out}/cpp_1.log"):
    t, u, d, e, rss = [], [], [], [], []
    for r in range(1, rounds + 1):
        log = open(f"{out}/cpp_{r}.log", errors="replace").read()
        def stage(name):
            m = re.search(name + r" completed, taking ([0-9.]+)s", log)
            return float(m.group(1)) if m else float("nan")
        t.append(stage("get_learned_condition")); u.append(stage("sampling") / steps)
        d.append(stage("decode_first_stage")); e.append(stage("encode_first_stage"))
        rss.append(int(open(f"{out}/cpp_rss_{r}").read().split()[-1]) / 1e6)
    rows["stable-diffusion.cpp"] = (med(t), med(u), med(d), med(e), med(rss))
cpu = "?"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"): cpu = line.split(":", 1)[1].strip(); break
print(f"CPU: {cpu}, {os.cpu_count()} cores, {threads} threads; {size}x{size}, {steps} Euler steps, {dtype}, {rounds} alternating rounds (medians)")
print(f"| tool | text encode | UNet step (batch 2) | VAE decode | VAE encode | peak RSS |")
print(f"|---|---|---|---|---|---|")
for tool, (t, u, d, e, rss) in rows.items():
    print(f"| {tool} | {t:.2f} s | {u:.2f} s | {d:.2f} s | {e:.2f} s | {rss:.2f} GB |")
s, p = rows["sd"], rows["PyTorch"]
print("| PyTorch / sd (>1: sd faster) | " + " | ".join(f"{p[i] / s[i]:.2f}x" for i in range(5)) + " |")
if "stable-diffusion.cpp" in rows:
    c = rows["stable-diffusion.cpp"]
    print("| stable-diffusion.cpp / sd | " + " | ".join(f"{c[i] / s[i]:.2f}x" for i in range(5)) + " |")
PY
