#!/usr/bin/env python3
"""Joins sd_bench_train's CSV (bench/gpu/train_bench.cpp) with bench/pytorch/train_step.py's (eager, and
optionally a second run with --compile) and prints one table of training steps:
    case, sd ms, diffusers ms, speedup (diffusers ms / sd ms: > 1 means sd is faster), diffusers+compile ms
    and sd's speedup against it, sd peak MiB, diffusers peak MiB, memory ratio (sd / diffusers: < 1 means
    sd needs less), and the fp16 steps skipped by the loss scaler during the timed steps (sd / diffusers).
A missing file or case shows as '-'. The notes ('#' lines) of each file are printed under the table.
    usage: compare_train.py ours.csv diffusers.csv [diffusers_compiled.csv]"""
import csv
import math
import os
import sys


def load(path):
    rows, notes = {}, []
    if not path or not os.path.exists(path):
        return rows, notes
    with open(path) as f:
        lines = f.read().splitlines()
    notes = [l[1:].strip() for l in lines if l.startswith("#")]
    body = [l for l in lines if l and not l.startswith("#") and "," in l]
    for r in csv.DictReader(body):
        if r.get("case") and r["case"] != "case":
            rows[r["case"]] = r
    return rows, notes


def num(r, key):
    try:
        v = float(r[key])
        return v if math.isfinite(v) else float("nan")
    except (KeyError, TypeError, ValueError):
        return float("nan")


def fmt(v, spec):
    return "-" if v is None or math.isnan(v) else format(v, spec)


def main(ours_path, torch_path, compiled_path=None):
    ours, ours_notes = load(ours_path)
    theirs, torch_notes = load(torch_path)
    comp, comp_notes = load(compiled_path)
    order = [f"{m}-{p}-b{b}" for m in ("lora", "full") for p in ("fp16", "bf16") for b in (1, 4)]
    cases = [c for c in order if c in ours or c in theirs] + [c for c in list(ours) + list(theirs) if c not in order]
    cases = list(dict.fromkeys(cases))
    print("Training step: SD1.5 UNet (random weights), 512 px (64x64 latents); text encoder and VAE excluded "
          "(latents and context precomputed); gradient checkpointing off; forward + backward + clip + AdamW "
          "(+ fp16 loss scaling); median ms per step; peak = allocated device memory over the steps (weights and "
          "optimizer state included).")
    print("speedup = diffusers ms / sd ms (>1: sd faster); mem ratio = sd peak / diffusers peak (<1: sd smaller).")
    hdr = (f"{'case':<14}{'sd ms':>9}{'diffusers ms':>14}{'speedup':>9}{'compiled ms':>13}{'vs compiled':>13}"
           f"{'sd peak MiB':>13}{'diffusers peak MiB':>20}{'mem ratio':>11}{'skipped sd/diff':>17}")
    print(hdr)
    print("-" * len(hdr))
    for c in cases:
        o, t, k = ours.get(c, {}), theirs.get(c, {}), comp.get(c, {})
        o_ms, t_ms, k_ms = num(o, "ms"), num(t, "ms"), num(k, "ms")
        o_pk, t_pk = num(o, "peak_mib"), num(t, "peak_mib")
        speed = t_ms / o_ms if o_ms > 0 else float("nan")
        speed_c = k_ms / o_ms if o_ms > 0 else float("nan")
        ratio = o_pk / t_pk if t_pk > 0 else float("nan")
        skipped = f"{o.get('skipped', '-')}/{t.get('skipped', '-')}"
        print(f"{c:<14}{fmt(o_ms, '.1f'):>9}{fmt(t_ms, '.1f'):>14}{fmt(speed, '.2f') + 'x':>9}{fmt(k_ms, '.1f'):>13}"
              f"{(fmt(speed_c, '.2f') + 'x') if not math.isnan(speed_c) else '-':>13}{fmt(o_pk, '.0f'):>13}"
              f"{fmt(t_pk, '.0f'):>20}{fmt(ratio, '.2f'):>11}{skipped:>17}")
    for name, notes in (("sd", ours_notes), ("diffusers", torch_notes), ("diffusers+compile", comp_notes)):
        for n in notes:
            print(f"  [{name}] {n}")
    if not ours:
        print(f"  no sd results in {ours_path}")
    if not theirs:
        print(f"  no diffusers results in {torch_path}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(*sys.argv[1:])
