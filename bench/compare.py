#!/usr/bin/env python3
"""Joins sd_bench_gpu's CSV with bench/pytorch/ops.py's and prints the comparison table:
op, shape, dtype, ours ms, PyTorch ms, speed-up (PyTorch time / ours), and the achieved
TFLOP/s or GB/s against the ceilings measured in the same run (copy bandwidth, bf16 GEMM)."""
import csv
import math
import sys


def load(path):
    rows = {}
    with open(path) as f:
        for r in csv.DictReader(line for line in f if not line.startswith("#")):
            rows[(r["op"], r["dtype"], r["params"])] = r
    return rows


def main(ours_path, torch_path):
    ours, theirs = load(ours_path), load(torch_path)

    def rate(r):
        ms = float(r["ms"])
        if not ms or math.isnan(ms):
            return float("nan"), ""
        flop, nbytes = float(r["flop"]), float(r["bytes"])
        if flop > 0:
            return flop / ms / 1e9, "TFLOP/s"
        if nbytes > 0:
            return nbytes / ms / 1e6, "GB/s"
        return float("nan"), ""

    best = lambda key: max((rate(d[key])[0] for d in (ours, theirs) if key in d and not math.isnan(rate(d[key])[0])),
                           default=float("nan"))
    copy_key = next((k for k in ours if k[0] == "copy"), None)
    gemm_key = next((k for k in ours if k[0] == "matmul" and "8192" in k[2] and "N=8192" in k[2]), None)
    bw_ceiling = best(copy_key) if copy_key else float("nan")
    flop_ceiling = best(gemm_key) if gemm_key else float("nan")
    print(f"ceilings measured here: copy {bw_ceiling:.0f} GB/s (read+write), bf16 GEMM 8192^3 {flop_ceiling:.0f} TFLOP/s")
    hdr = f"{'op':<17}{'shape':<34}{'dtype':<6}{'ours ms':>9}{'torch ms':>10}{'speedup':>9}{'ours rate':>17}{'of ceil':>8}"
    print(hdr)
    print("-" * len(hdr))
    for key, r in ours.items():
        op, dt, params = key
        o = float(r["ms"])
        t = float(theirs[key]["ms"]) if key in theirs else float("nan")
        val, unit = rate(r)
        ceil = flop_ceiling if unit == "TFLOP/s" else bw_ceiling
        frac = val / ceil if ceil and not math.isnan(val) else float("nan")
        extra = ""
        if r.get("peak_mib") and float(r["peak_mib"]) > 0 and op.startswith("unet"):
            tp = theirs.get(key, {}).get("peak_mib", "nan")
            extra = f"   peak MiB: ours {float(r['peak_mib']):.0f}, torch {float(tp):.0f}"
        rate_s = f"{val:>10.1f} {unit:<7}{frac:>7.0%}" if unit else f"{'':>18}{'':>7}"
        print(f"{op:<17}{params:<34}{dt:<6}{o:>9.3f}{t:>10.3f}{t / o if o else float('nan'):>8.2f}x{rate_s}{extra}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
