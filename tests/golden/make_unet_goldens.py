#!/usr/bin/env python3
"""Reference data for the C++ UNet2DConditionModel (tests/models/unet/unet_test.cpp), made by diffusers.

Python is only the test oracle; CI never runs this script. It writes:

tests/data/unet_tiny_<name>/   tiny random-weight diffusers UNet2DConditionModel folders, written by
                               save_pretrained (config.json + weights), and io.safetensors with the
                               inputs and diffusers' outputs for a batch of 2:
      sample [2, 4, H, W] f32, timestep [2] (or [1]: a Python float passed as a scalar),
      encoder_hidden_states [2, 77, X] f32, text_embeds / time_ids (sdxl), timestep_cond (lcm),
      out      the f32 model's output (weights as stored, upcast to f32)
      out_f64  the same model and inputs run in float64 (the time sinusoids stay f32 in diffusers)
  sd1   SD1-like: attention_head_dim an int (= heads), conv proj_in/out, CrossAttn then Down block.
        Saved as the fp16 variant (diffusion_pytorch_model.fp16.safetensors).
  sd2   SD2-like: use_linear_projection, attention_head_dim a list of HEAD COUNTS, upcast_attention,
        cross_attention_dim as a list, all blocks with cross-attention, norm_num_groups 16.
  sdxl  SDXL-like: DownBlock2D first, addition_embed_type text_time (text_embeds + 6 time ids),
        transformer_layers_per_block [1, 2]. Saved sharded (index.json + 2 or more shards).
  lcm   LCM-like: SD1 layout with time_cond_proj_dim (timestep_cond), cross_attention_dim 24.
  misc  the remaining config paths: SSD-1B-like per-layer transformer depths with
        reverse_transformer_layers_per_block, mid_block_type UNetMidBlock2D, layers_per_block list,
        flip_sin_to_cos false, freq_shift 1, center_input_sample, mid_block_scale_factor 2,
        time_embedding_dim, conv_in_kernel 1 / conv_out_kernel 5, an odd 15x13 sample (upsampling
        to the skip's size) and a scalar timestep.
  Weights are rounded to float16 and stored as float16 (half the bytes); the outputs are computed
  from exactly those values, so the f32 comparison is unaffected. Norm weights/biases are
  randomised too (diffusers initialises them to 1/0, which would hide a swapped affine).

tests/data/unet_blocks.safetensors   the VAE-side paths the UNet goldens do not reach, from diffusers'
                               own classes: ResnetBlock2D without time embedding (8 -> 16 channels,
                               conv_shortcut), Downsample2D with padding 0 (pad right/bottom) on an odd
                               7x6 input, UNetMidBlock2D with attention (group_norm, q/k/v biases,
                               residual, output_scale_factor 2). Parameters under "resnet.", "down.",
                               "mid."; inputs/outputs as <block>_in / <block>_out (f32, from f64 runs).

tests/data/keys/unet_<model>.tsv   "name<TAB>[shape]" of every parameter of the REAL configs, in
                               diffusers' state_dict order, from models built on the meta device.

Run: python3 tests/golden/make_unet_goldens.py   (torch 2.x CPU, diffusers 0.42)
"""
import json
import copy
import os
import shutil

from fixture_hygiene import strip_machine_paths

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(ROOT, "tests", "data")

COMMON = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
              norm_num_groups=8, cross_attention_dim=32)

TINY = {
    "sd1": dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4),
    "sd2": dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=[2, 4],
                use_linear_projection=True, upcast_attention=True, cross_attention_dim=[32, 32], norm_num_groups=16),
    "sdxl": dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=[2, 4],
                 use_linear_projection=True, transformer_layers_per_block=[1, 2], addition_embed_type="text_time",
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8),
    "lcm": dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2, cross_attention_dim=24,
                time_cond_proj_dim=16),
    "misc": dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), mid_block_type="UNetMidBlock2D",
                 layers_per_block=[1, 2], attention_head_dim=[2, 2], use_linear_projection=True,
                 transformer_layers_per_block=[[1], [1, 2]], reverse_transformer_layers_per_block=[[2, 1, 1], 1],
                 flip_sin_to_cos=False, freq_shift=1, center_input_sample=True, mid_block_scale_factor=2.0,
                 time_embedding_dim=48, conv_in_kernel=1, conv_out_kernel=5),
}
SEEDS = {"sd1": 11, "sd2": 12, "sdxl": 13, "lcm": 14, "misc": 15}

# The released models' configs (FORMATS.md §2.2); SSD-1B's is inferred (see unet_config.cpp).
REAL = {
    "sd15": dict(attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, layers_per_block=2, sample_size=64),
    "sd21": dict(attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280],
                 cross_attention_dim=1024, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, layers_per_block=2, sample_size=96,
                 upcast_attention=True, use_linear_projection=True),
    "sdxl_base": dict(addition_embed_type="text_time", addition_time_embed_dim=256, attention_head_dim=[5, 10, 20],
                      block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
                      down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                      up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
                      projection_class_embeddings_input_dim=2816, sample_size=128,
                      transformer_layers_per_block=[1, 2, 10], use_linear_projection=True),
    "sdxl_refiner": dict(addition_embed_type="text_time", addition_time_embed_dim=256,
                         attention_head_dim=[6, 12, 24, 24], block_out_channels=[384, 768, 1536, 1536],
                         cross_attention_dim=1280,
                         down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                           "DownBlock2D"],
                         up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                         layers_per_block=2, projection_class_embeddings_input_dim=2560, sample_size=128,
                         transformer_layers_per_block=4, use_linear_projection=True),
    "ssd1b": dict(addition_embed_type="text_time", addition_time_embed_dim=256, attention_head_dim=[5, 10, 20],
                  block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
                  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
                  mid_block_type="UNetMidBlock2D", projection_class_embeddings_input_dim=2816, sample_size=128,
                  transformer_layers_per_block=[[1, 1], [2, 2], [4, 4]],
                  reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], [1, 1, 1]],
                  use_linear_projection=True),
}


def randomise(model, gen):
    """Default init for weights, random affine for norms, then round everything to float16."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.split(".")[-2]:  # norm1..3, norm, conv_norm_out: GroupNorm / LayerNorm
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            p.copy_(p.to(torch.float16).to(torch.float32))


def make_inputs(name, cfg, gen):
    h, w = (15, 13) if name == "misc" else (16, 16)
    x = cfg.get("cross_attention_dim", COMMON["cross_attention_dim"])
    x = x[0] if isinstance(x, (list, tuple)) else x
    io = {
        "sample": torch.randn(2, 4, h, w, generator=gen),
        "encoder_hidden_states": torch.randn(2, 77, x, generator=gen),
    }
    if name == "sd1":
        io["timestep"] = torch.tensor([981, 1], dtype=torch.int64)
    elif name == "misc":
        io["timestep"] = torch.tensor([500.25], dtype=torch.float64)  # passed to diffusers as a Python float
    else:
        io["timestep"] = torch.tensor([999.0, 17.5], dtype=torch.float32)
    if name == "sdxl":
        io["text_embeds"] = torch.randn(2, 16, generator=gen)
        io["time_ids"] = torch.tensor([[16.0, 16.0, 0.0, 0.0, 16.0, 16.0], [24.0, 20.0, 2.0, 3.0, 16.0, 16.0]])
    if name == "lcm":
        io["timestep_cond"] = torch.randn(2, 16, generator=gen)
    return io


def run(model, io, dtype):
    model = model.to(dtype)
    kwargs = {}
    if "text_embeds" in io:
        kwargs["added_cond_kwargs"] = {"text_embeds": io["text_embeds"].to(dtype), "time_ids": io["time_ids"].to(dtype)}
    if "timestep_cond" in io:
        kwargs["timestep_cond"] = io["timestep_cond"].to(dtype)
    t = io["timestep"]
    timestep = float(t.item()) if t.numel() == 1 else t
    with torch.no_grad():
        return model(io["sample"].to(dtype), timestep, io["encoder_hidden_states"].to(dtype), **kwargs).sample


def gradients(model, io):
    """Gradients of loss = sum(out * w) in float64 with respect to the inputs and a few parameters
    (conv_in, the time embedding, the first cross-attention query, conv_out's bias), stored as
    grad_weight, grad_sample, grad_encoder_hidden_states and grad_param/<name>."""
    m = copy.deepcopy(model).to(torch.float64)
    sample = io["sample"].double().requires_grad_()
    ehs = io["encoder_hidden_states"].double().requires_grad_()
    kwargs = {}
    if "text_embeds" in io:
        kwargs["added_cond_kwargs"] = {"text_embeds": io["text_embeds"].double(), "time_ids": io["time_ids"].double()}
    if "timestep_cond" in io:
        kwargs["timestep_cond"] = io["timestep_cond"].double()
    t = io["timestep"]
    out = m(sample, float(t.item()) if t.numel() == 1 else t, ehs, **kwargs).sample
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(77), dtype=torch.float64)
    (out * w).sum().backward()
    params = dict(m.named_parameters())
    names = ["conv_in.weight", "time_embedding.linear_1.weight", "conv_out.bias"]
    names += [next(k for k in params if k.endswith("attn2.to_q.weight"))]
    res = {"grad_weight": w.float(), "grad_sample": sample.grad, "grad_encoder_hidden_states": ehs.grad}
    for n in names:
        res["grad_param/" + n] = params[n].grad
    return res


def make_tiny(name):
    cfg = dict(COMMON)
    cfg.update(TINY[name])
    gen = torch.Generator().manual_seed(SEEDS[name])
    torch.manual_seed(SEEDS[name])
    model = UNet2DConditionModel(**cfg).eval()
    randomise(model, gen)
    io = make_inputs(name, cfg, gen)
    out = run(model, io, torch.float32)
    out64 = run(model, io, torch.float64)
    model = model.to(torch.float32)
    rel = ((out.double() - out64).norm() / out64.norm()).item()
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, out {tuple(out.shape)}, "
          f"|out| {out.norm():.4f}, diffusers f32 vs f64 rel err {rel:.2e}")

    folder = os.path.join(DATA, f"unet_tiny_{name}")
    shutil.rmtree(folder, ignore_errors=True)
    half = model.to(torch.float16)
    if name == "sd1":
        half.save_pretrained(folder, variant="fp16")
    elif name == "sdxl":
        half.save_pretrained(folder, max_shard_size="400KB")
    else:
        half.save_pretrained(folder)
    strip_machine_paths(folder)
    io["out"] = out.contiguous()
    io["out_f64"] = out64.contiguous()
    io.update(gradients(model, io))
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(folder, "io.safetensors"))

    # The saved folder must reproduce the output through diffusers' own loader.
    kw = {"variant": "fp16"} if name == "sd1" else {}
    again = UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float32, **kw)
    assert torch.equal(run(again, io, torch.float32), out), name


def make_blocks():
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D
    gen = torch.Generator().manual_seed(21)
    torch.manual_seed(21)
    blocks = {
        "resnet": (ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=None, groups=4, eps=1e-6),
                   (2, 8, 6, 5)),
        "down": (Downsample2D(8, use_conv=True, out_channels=8, padding=0, name="op"), (2, 8, 7, 6)),
        "mid": (UNetMidBlock2D(in_channels=16, temb_channels=None, resnet_eps=1e-6, resnet_groups=4,
                               attention_head_dim=8, output_scale_factor=2.0), (2, 16, 5, 3)),
    }
    tensors = {}
    for name, (block, shape) in blocks.items():
        block = block.eval()
        randomise(block, gen)
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            y = block.double()(x.double()) if name != "resnet" else block.double()(x.double(), None)
        tensors[f"{name}_in"] = x
        tensors[f"{name}_out"] = y.float().contiguous()
        for k, v in block.state_dict().items():
            tensors[f"{name}.{k}"] = v.float().contiguous()
        print(f"block {name}: in {tuple(x.shape)} out {tuple(y.shape)}")
    save_file(tensors, os.path.join(DATA, "unet_blocks.safetensors"))


def write_keys():
    os.makedirs(os.path.join(DATA, "keys"), exist_ok=True)
    for name, cfg in REAL.items():
        with torch.device("meta"):
            model = UNet2DConditionModel(**cfg)
        sd = model.state_dict()
        path = os.path.join(DATA, "keys", f"unet_{name}.tsv")
        with open(path, "w") as f:
            for k, v in sd.items():
                f.write(f"{k}\t[{', '.join(str(s) for s in v.shape)}]\n")
        total = sum(v.numel() for v in sd.values())
        print(f"keys {name}: {len(sd)} tensors, {total:,} parameters")
        lead = {"sd15": "sd15", "sd21": "sd21", "sdxl_base": "sdxl", "ssd1b": "ssd1b"}.get(name)
        if lead:
            ref_path = os.path.join(ROOT, "..", "shared", "reference", "keys", f"{lead}_unet.tsv")
            if os.path.exists(ref_path):
                ref = {}
                for line in open(ref_path):
                    if line.startswith("#"):
                        continue
                    k, shape = line.rstrip("\n").split("\t")[:2]
                    ref[k] = shape
                ours = {k: f"[{', '.join(str(s) for s in v.shape)}]" for k, v in sd.items()}
                print(f"  vs lead {lead}_unet.tsv: {'identical' if ours == ref else 'DIFFERENT'}"
                      f" ({len(set(ours) ^ set(ref))} names differ)")


if __name__ == "__main__":
    for n in TINY:
        make_tiny(n)
    make_blocks()
    write_keys()
