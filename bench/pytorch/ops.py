#!/usr/bin/env python3
"""Times bench/gpu/cases.txt with plain PyTorch on the same GPU, the way sd_bench_gpu does:
CUDA events, warm-up, median of many runs, rotating among input sets larger than the L2 cache.
Prints CSV: op,dtype,params,ms,flop,bytes  (PyTorch is a baseline here, never part of sd)."""
import argparse
import statistics

import torch
import torch.nn.functional as F

DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
L2_BYTES = 60e6


def read_cases(path):
    cases = []
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, dt, *kv = line.split()
        params = {k: int(v) for k, v in (x.split("=") for x in kv)}
        cases.append((op, dt, " ".join(kv), params))
    return cases


def sets_for(bytes_per_set):
    return int(min(8, max(1, 3 * L2_BYTES / max(bytes_per_set, 1))))


def rnd(shape, dt):
    return torch.randn(shape, device="cuda", dtype=dt)


def make(op, dt, p):
    es = torch.tensor([], dtype=dt).element_size()
    if op == "copy":
        src, dst = rnd((p["n"],), dt), torch.empty(p["n"], device="cuda", dtype=dt)
        return (lambda i: dst.copy_(src)), 1, 0, 2 * p["n"] * es
    if op == "matmul":
        M, N, K = p["M"], p["N"], p["K"]
        n = sets_for((M * K + K * N) * es)
        a = [rnd((M, K), dt) for _ in range(n)]
        b = [rnd((K, N), dt) for _ in range(n)]
        return (lambda i: torch.matmul(a[i], b[i])), n, 2 * M * N * K, (M * K + K * N + M * N) * es
    if op in ("attention_fwd", "attention_fwdbwd"):
        B, H, Lq, Lk, D = p["B"], p["H"], p["Lq"], p["Lk"], p["D"]
        bwd = op == "attention_fwdbwd"
        n = sets_for((2 * B * H * Lq * D + 2 * B * H * Lk * D) * es)
        sets = [(rnd((B, H, Lq, D), dt), rnd((B, H, Lk, D), dt), rnd((B, H, Lk, D), dt), rnd((B, H, Lq, D), dt))
                for _ in range(n)]

        def run(i):
            q, k, v, g = sets[i]
            if not bwd:
                with torch.no_grad():
                    F.scaled_dot_product_attention(q, k, v)
                return
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
            F.scaled_dot_product_attention(q, k, v).backward(g)
        flop = 4 * B * H * Lq * Lk * D * (3.5 if bwd else 1.0)
        return run, n, flop, (2 * B * H * Lq * D + 2 * B * H * Lk * D) * es * (2 if bwd else 1)
    if op == "group_norm_silu":
        N, C, H, W = p["N"], p["C"], p["H"], p["W"]
        n = sets_for(N * C * H * W * es)
        fmt = torch.channels_last if p.get("cl") else torch.contiguous_format  # onek=1 is sd's switch only
        xs = [rnd((N, C, H, W), dt).to(memory_format=fmt) for _ in range(n)]
        g, b = rnd((C,), dt), rnd((C,), dt)
        return (lambda i: F.silu(F.group_norm(xs[i], 32, g, b, 1e-5))), n, 0, 2 * N * C * H * W * es
    if op == "conv3x3":
        N, C, H, W, O, s = p["N"], p["C"], p["H"], p["W"], p["O"], p.get("s", 1)
        Ho, Wo = (H - 1) // s + 1, (W - 1) // s + 1
        n = sets_for(N * C * H * W * es)
        xs = [rnd((N, C, H, W), dt).to(memory_format=torch.channels_last) for _ in range(n)]
        w = rnd((O, C, 3, 3), dt).to(memory_format=torch.channels_last)
        b = rnd((O,), dt)

        def run(i):
            with torch.no_grad():
                F.conv2d(xs[i], w, b, stride=s, padding=1)
        return run, n, 2 * N * O * Ho * Wo * C * 9, (N * C * H * W + N * O * Ho * Wo + O * C * 9) * es
    if op == "geglu":  # diffusers' GEGLU: hidden * gelu(gate) on the projection's two halves
        R, n = p["rows"], p["n"]
        nsets = sets_for(R * 2 * n * es)
        xs = [rnd((R, 2 * n), dt) for _ in range(nsets)]

        def run(i):
            with torch.no_grad():
                hidden, gate = xs[i].chunk(2, dim=-1)
                hidden * F.gelu(gate)
        return run, nsets, 0, 3 * R * n * es
    if op in ("layer_norm", "softmax"):
        R, D = p["rows"], p["D"]
        n = sets_for(R * D * es)
        xs = [rnd((R, D), dt) for _ in range(n)]
        g, b = rnd((D,), dt), rnd((D,), dt)
        if op == "layer_norm":
            return (lambda i: F.layer_norm(xs[i], (D,), g, b, 1e-5)), n, 0, 2 * R * D * es
        return (lambda i: torch.softmax(xs[i], -1)), n, 0, 2 * R * D * es
    if op in ("unet_fwd", "unet_fwdbwd"):
        # diffusers' UNet2DConditionModel with SD1.5's (or, xl=1, SDXL base's) config and random
        # weights, SDPA attention (diffusers' default processor on PyTorch 2); cl=1: channels_last
        # model and input; compile=1: torch.compile (default mode), compile=2: mode
        # "max-autotune-no-cudagraphs" (compile time falls in the warm-up). Needs the diffusers wheel.
        from diffusers import UNet2DConditionModel
        xl = bool(p.get("xl"))
        if xl:
            cfg = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                       block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=[5, 10, 20],
                       down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                       transformer_layers_per_block=[1, 2, 10], addition_embed_type="text_time",
                       addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                       use_linear_projection=True)
        else:
            cfg = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                       block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                       down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                       up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        model = UNet2DConditionModel(**cfg).to("cuda", dt)
        B, H, W = p["B"], p["H"], p["W"]
        x, ctx = rnd((B, 4, H, W), dt), rnd((B, 77, 2048 if xl else 768), dt)
        if p.get("cl"):
            model = model.to(memory_format=torch.channels_last)
            x = x.to(memory_format=torch.channels_last)
        added = {"text_embeds": rnd((B, 1280), dt), "time_ids": torch.full((B, 6), 1024.0, device="cuda", dtype=dt)} if xl else None
        t = torch.full((B,), 500.0, device="cuda")
        fwd = model
        if p.get("compile"):
            fwd = torch.compile(model, mode=None if p["compile"] == 1 else "max-autotune-no-cudagraphs")
        if op == "unet_fwd":
            def run(i):
                with torch.no_grad():
                    fwd(x, t, ctx, added_cond_kwargs=added)
        else:
            def run(i):
                out = fwd(x, t, ctx, added_cond_kwargs=added).sample
                out.backward(x)
                model.zero_grad(set_to_none=True)
        return run, 1, 0, 0
    raise ValueError(op)


def median_ms(run, sets, warmup, reps):
    with torch.enable_grad():
        for i in range(warmup):
            run(i % sets)
        torch.cuda.synchronize()
        times = []
        for i in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            run(i % sets)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", default="bench/gpu/cases.txt")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    # cuDNN picks its convolution algorithms by timing them once per shape, as sd's default does
    # (SD_CUDNN_BENCHMARK): PyTorch's strongest usual setting for fixed shapes.
    torch.backends.cudnn.benchmark = True
    print("op,dtype,params,ms,flop,bytes,peak_mib", flush=True)
    for op, dt, params, p in read_cases(args.cases):
        try:
            torch.cuda.reset_peak_memory_stats()
            run, sets, flop, nbytes = make(op, DTYPES[dt], p)
            ms = median_ms(run, sets, 3, 10 if op.startswith("unet") else args.reps)
        except Exception as exc:  # report and go on: one failing case must not hide the others
            print(f"# {op} {params}: {exc}", flush=True)
            ms, flop, nbytes = float("nan"), 0, 0
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"{op},{dt},{params},{ms:.5f},{flop:.6g},{nbytes:.6g},{peak:.0f}", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
