#!/usr/bin/env python3
"""diffusers' training step on the cases of bench/gpu/train_bench.cpp (sd_bench_train), for comparison
on the same GPU (PyTorch and diffusers are a baseline here, never part of sd).

The step is the inner loop of diffusers' examples/text_to_image/train_text_to_image_lora.py (--method
lora) and train_text_to_image.py (full), with the latents and the text context precomputed (cached), as
sd_bench_train runs sd's:
    noise = randn_like(latents); timesteps = randint(0, 1000, (B,)); noisy = DDPMScheduler.add_noise(...)
    with autocast(dtype): pred = unet(noisy, timesteps, context)     # accelerate's mixed precision
    loss = mse_loss(pred.float(), noise.float()); loss.item()          # the scripts' train_loss
    scaler.scale(loss).backward(); scaler.unscale_(opt)                # fp16: GradScaler (accelerate)
    clip_grad_norm_(params, 1.0); scaler.step(opt); scaler.update(); opt.zero_grad(set_to_none=True)
Models, as the scripts set them up:
    lora  UNet2DConditionModel (SD1.5 config, random init) in the weight dtype, frozen; peft adapters from
          unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
          target_modules=["to_k", "to_q", "to_v", "to_out.0"])); with fp16 the adapters are upcast to f32
          (cast_training_params), with bf16 they stay bf16, as in the script
    full  the UNet in f32 (the optimizer's weights), autocast computes in 16 bits
    torch.optim.AdamW(lr 1e-4, weight_decay 1e-2), the scripts' default (foreach) implementation
PyTorch's usual fast settings on top: SDPA attention (diffusers' default processor), cudnn.benchmark, channels_last
(--no-channels-last to turn off), and torch.compile of the UNet with --compile (default mode; each case
compiled afresh, the first step's time printed as a note). Text encoder and VAE are not run.

Prints CSV (lines starting with '#' are notes), one line per case:
    case,method,precision,batch,latent,ms,ms_min,ms_max,peak_mib,trainable,skipped,loss
ms: median wall time of one step between device synchronizations, after --warmup steps; peak_mib:
torch.cuda.max_memory_allocated from the end of the model's setup through the steps (weights, gradients
and optimizer state included). --device cpu --tiny checks this script on any machine with the tiny
pipeline's UNet (tests/data/pipe_tiny_sd1).
"""
import argparse
import gc
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_PIPE = os.path.join(ROOT, "tests", "data", "pipe_tiny_sd1")

# runwayml/stable-diffusion-v1-5 unet/config.json (the fields that differ from diffusers' defaults).
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                 norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
                 downsample_padding=1, mid_block_scale_factor=1, center_input_sample=False,
                 use_linear_projection=False, upcast_attention=False)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
CASES = [(m, p, b) for m in ("lora", "full") for p in ("fp16", "bf16") for b in (1, 4)]
HEADER = "case,method,precision,batch,latent,ms,ms_min,ms_max,peak_mib,trainable,skipped,loss"


def case_name(method, prec, batch):
    return f"{method}-{prec}-b{batch}"


def note(text):
    print(f"# {text}", flush=True)


class Run:
    """One configuration (method, precision): the UNet, its optimizer and scaler, as the scripts build them."""

    def __init__(self, args, method, prec):
        from diffusers import DDPMScheduler, UNet2DConditionModel
        self.args, self.method, self.prec = args, method, prec
        self.dev = torch.device(args.device)
        self.dtype = DTYPES[prec]
        if args.tiny:
            with open(os.path.join(TINY_PIPE, "unet", "config.json")) as f:
                cfg = json.load(f)
        else:
            cfg = dict(SD15_UNET)
        with open(os.path.join(TINY_PIPE, "scheduler", "scheduler_config.json")) as f:
            # SD1.5's schedule (scaled_linear 0.00085..0.012, 1000 steps), read by DDPMScheduler as the
            # scripts do with DDPMScheduler.from_pretrained(model, subfolder="scheduler").
            self.scheduler = DDPMScheduler.from_config(json.load(f))
        torch.manual_seed(0)
        with torch.device(self.dev):
            unet = UNet2DConditionModel.from_config(cfg)
        unet.to(self.dev)
        self.latent = int(unet.config.sample_size)
        cad = unet.config.cross_attention_dim
        self.context_dim = int(cad[0] if isinstance(cad, (list, tuple)) else cad)
        if method == "lora":
            from peft import LoraConfig
            unet.requires_grad_(False)
            unet.to(self.dev, dtype=self.dtype)
            unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                        target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
            if prec == "fp16":
                from diffusers.training_utils import cast_training_params
                cast_training_params(unet, dtype=torch.float32)
        unet.train()
        if args.channels_last:
            unet.to(memory_format=torch.channels_last)
        self.unet = unet
        self.params = [p for p in unet.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in self.params)
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.scaler = torch.amp.GradScaler(self.dev.type, init_scale=args.init_scale) if prec == "fp16" else None
        self.model = unet

    def compile(self):
        torch._dynamo.reset()
        self.model = torch.compile(self.unet)

    def step(self, latents, context):
        """One optimizer step; returns (loss, skipped)."""
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (bsz,), device=latents.device).long()
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(self.dev.type, dtype=self.dtype):
            pred = self.model(noisy, timesteps, context, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss_value = loss.item()
        skipped = False
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            before = self.scaler.get_scale()
            self.scaler.step(self.opt)
            self.scaler.update()
            skipped = self.scaler.get_scale() < before
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss_value, skipped


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run_case(run, batch, args):
    dev = run.dev
    g = torch.Generator(device=dev).manual_seed(100 + batch)
    latents = torch.randn(batch, 4, run.latent, run.latent, device=dev, dtype=run.dtype, generator=g)
    context = torch.randn(batch, 77, run.context_dim, device=dev, dtype=run.dtype, generator=g)
    if args.channels_last:
        latents = latents.to(memory_format=torch.channels_last)
    if args.compile:
        run.compile()
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    loss = float("nan")
    for i in range(args.warmup):
        t0 = time.perf_counter()
        loss, _ = run.step(latents, context)
        sync(dev)
        if args.compile and i == 0:
            note(f"{case_name(run.method, run.prec, batch)}: first (compiling) step {time.perf_counter() - t0:.1f} s")
    times, skipped = [], 0
    for _ in range(args.iters):
        t0 = time.perf_counter()
        loss, s = run.step(latents, context)
        sync(dev)
        times.append((time.perf_counter() - t0) * 1e3)
        skipped += int(s)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")
    print(f"{case_name(run.method, run.prec, batch)},{run.method},{run.prec},{batch},{run.latent},"
          f"{statistics.median(times):.3f},{min(times):.3f},{max(times):.3f},{peak:.0f},{run.trainable},{skipped},"
          f"{loss:.6f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="all", help="all, or a comma-separated list such as lora-fp16-b1,full-bf16-b4")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--init-scale", type=float, default=1024.0, help="fp16 GradScaler init_scale (as sd_bench_train)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the tiny pipeline's UNet (a check of this script)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (each case compiled afresh)")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    args = ap.parse_args()
    args.iters = max(1, args.iters)
    torch.backends.cudnn.benchmark = True  # timed algorithm choice per shape, as sd's default
    if args.compile:
        args.warmup = max(args.warmup, 2)  # the first step compiles the forward and the backward
    wanted = None if args.cases == "all" else set(c for c in args.cases.split(",") if c)

    import diffusers
    try:
        import peft
        peft_version = peft.__version__
    except ImportError:
        peft_version = "missing (the LoRA cases fail)"
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        note(f"no GPU for PyTorch (torch {torch.__version__}); use --device cpu --tiny to check this script")
        return 1
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    note(f"diffusers {diffusers.__version__} training step on {gpu}: torch {torch.__version__}, peft {peft_version}; "
         f"{'tiny test' if args.tiny else 'SD1.5'} UNet, random init; text encoder and VAE excluded (latents and "
         f"context precomputed); gradient checkpointing off; SDPA attention; channels_last "
         f"{'on' if args.channels_last else 'off'}; torch.compile {'on' if args.compile else 'off'}; "
         f"ms = median of {args.iters} after {args.warmup} warm-up")
    print(HEADER, flush=True)
    failures = 0
    for method in ("lora", "full"):
        for prec in ("fp16", "bf16"):
            batches = [b for (m, p, b) in CASES if m == method and p == prec
                       and (wanted is None or case_name(m, p, b) in wanted)]
            if not batches:
                continue
            run = None
            try:
                t0 = time.perf_counter()
                run = Run(args, method, prec)
                sync(dev)
                note(f"{method} {prec}: setup {time.perf_counter() - t0:.1f} s, {run.trainable} trainable elements")
                for b in batches:
                    try:
                        run_case(run, b, args)
                    except Exception as exc:  # one failing case must not hide the others
                        failures += 1
                        note(f"{case_name(method, prec, b)}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                        print(f"{case_name(method, prec, b)},{method},{prec},{b},{run.latent},nan,nan,nan,nan,"
                              f"{run.trainable},0,nan", flush=True)
            except Exception as exc:
                failures += 1
                note(f"{method} {prec} setup: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            del run
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
