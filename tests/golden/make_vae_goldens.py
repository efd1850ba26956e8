#!/usr/bin/env python3
"""Reference data for the C++ AutoencoderKL (tests/models/vae/vae_test.cpp), made by diffusers.

Python is only the test oracle; CI never runs this script. It writes:

tests/data/vae_tiny/          a tiny random-weight diffusers AutoencoderKL (seed 31): block_out_channels
                              (16, 32), layers_per_block 1, norm_num_groups 8, latent_channels 4,
                              sample_size 32, written by save_pretrained (config.json + f16 weights),
                              and io.safetensors:
      image [2, 3, 32, 32]      encode -> enc_mean / enc_logvar [2, 4, 16, 16] (latent_dist.mean / .logvar)
      image_odd [1, 3, 29, 27]  encode -> odd_mean / odd_logvar [1, 4, 14, 13] (pad-right/bottom downsampling)
      latents [2, 4, 16, 16]    decode -> dec [2, 3, 32, 32]
      *_f64                     the same model and inputs run in float64
      Tiling, with the tile sizes lowered so that the tiny model tiles (diffusers' enable_tiling(), then
      tile_sample_min_size 16, tile_latent_min_size 8, tile_overlap_factor 0.25):
      latents_big [1, 4, 20, 27]  decode -> tiled_dec [1, 3, 40, 54] (4 x 5 tiles, short last row/column)
      image_big [1, 3, 40, 54]    encode -> tiled_mean / tiled_logvar [1, 4, 20, 27]
      Weights are rounded to float16 and stored as float16; every output is computed from exactly those
      values. Norm weights/biases are randomised (diffusers initialises them to 1/0), and the
      quant_conv's logvar half gets a bias of -4 so that std = exp(logvar / 2) is small but not tiny.
tests/data/vae_tiny_legacy/   the same weights saved with the pre-0.14 attention names of the mid blocks
                              (query, key, value, proj_attn instead of to_q, to_k, to_v, to_out.0): the
                              names older diffusers-format VAEs (e.g. SD1.5's, _diffusers_version 0.6.0) use.
tests/data/keys/vae_sd.tsv, vae_sdxl.tsv       "name<TAB>[shape]" of the REAL VAE configs
                              (stabilityai/sd-vae-ft-mse and the SDXL VAE), in state_dict order.
tests/data/keys/unet_sdxl_turbo.tsv, unet_lcm_sdxl.tsv   the same for the UNets of stabilityai/sdxl-turbo
                              (the SDXL base config) and latent-consistency/lcm-sdxl (SDXL base with
                              time_cond_proj_dim 256).

Run: python3 tests/golden/make_vae_goldens.py   (torch 2.x CPU, diffusers 0.42)
"""
import json
import os
import shutil

from fixture_hygiene import strip_machine_paths

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(ROOT, "tests", "data")

TINY = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
            norm_num_groups=8, latent_channels=4, sample_size=32)
TILE = dict(tile_sample_min_size=16, tile_latent_min_size=8, tile_overlap_factor=0.25)

FOUR = ("DownEncoderBlock2D",) * 4
UP4 = ("UpDecoderBlock2D",) * 4
# Hub configs (FORMATS.md §2.3): stabilityai/sd-vae-ft-mse (SD1.x/2.x VAE) and the SDXL VAE.
REAL_VAE = {
    "sd": dict(block_out_channels=[128, 256, 512, 512], down_block_types=FOUR, up_block_types=UP4,
               layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215),
    "sdxl": dict(block_out_channels=[128, 256, 512, 512], down_block_types=FOUR, up_block_types=UP4,
                 layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=1024, scaling_factor=0.13025,
                 force_upcast=True),
}
SDXL_UNET = dict(addition_embed_type="text_time", addition_time_embed_dim=256, attention_head_dim=[5, 10, 20],
                 block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
                 projection_class_embeddings_input_dim=2816, sample_size=128, transformer_layers_per_block=[1, 2, 10],
                 use_linear_projection=True)
REAL_UNET = {
    # "exact same architecture as SDXL" (diffusers' sdxl_turbo docs; FORMATS.md §2.2).
    "sdxl_turbo": dict(SDXL_UNET),
    # latent-consistency/lcm-sdxl: the SDXL base UNet plus the guidance-scale embedding (w_embedding 256).
    "lcm_sdxl": dict(SDXL_UNET, time_cond_proj_dim=256),
}

LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def randomise(model, gen):
    """Default init for weights, random affine for norms, logvar bias -4, then round to float16."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            parts = name.split(".")
            if "norm" in parts[-2]:  # norm1, norm2, group_norm, conv_norm_out
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            if name == "quant_conv.bias":
                p[p.shape[0] // 2:] -= 4.0
            p.copy_(p.to(torch.float16).to(torch.float32))


def encode(vae, x):
    with torch.no_grad():
        d = vae.encode(x).latent_dist
        return d.mean.contiguous(), d.logvar.contiguous()


def decode(vae, z):
    with torch.no_grad():
        return vae.decode(z).sample.contiguous()


def tiled(vae, on):
    if on:
        vae.enable_tiling()
        for k, v in TILE.items():
            setattr(vae, k, v)
    else:
        vae.disable_tiling()


def make_tiny():
    gen = torch.Generator().manual_seed(31)
    torch.manual_seed(31)
    vae = AutoencoderKL(**TINY).eval()
    randomise(vae, gen)
    io = {
        "image": torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1,
        "image_odd": torch.rand(1, 3, 29, 27, generator=gen) * 2 - 1,
        "latents": torch.randn(2, 4, 16, 16, generator=gen),
        "latents_big": torch.randn(1, 4, 20, 27, generator=gen),
        "image_big": torch.rand(1, 3, 40, 54, generator=gen) * 2 - 1,
    }
    out = {}
    for dtype, suffix in ((torch.float64, "_f64"), (torch.float32, "")):
        vae = vae.to(dtype)
        tiled(vae, False)
        out["enc_mean" + suffix], out["enc_logvar" + suffix] = encode(vae, io["image"].to(dtype))
        out["odd_mean" + suffix], out["odd_logvar" + suffix] = encode(vae, io["image_odd"].to(dtype))
        out["dec" + suffix] = decode(vae, io["latents"].to(dtype))
        tiled(vae, True)
        out["tiled_dec" + suffix] = decode(vae, io["latents_big"].to(dtype))
        out["tiled_mean" + suffix], out["tiled_logvar" + suffix] = encode(vae, io["image_big"].to(dtype))
        tiled(vae, False)
    for k in ("enc_mean", "dec", "tiled_dec", "tiled_mean"):
        rel = ((out[k].double() - out[k + "_f64"]).norm() / out[k + "_f64"].norm()).item()
        print(f"  {k}: {tuple(out[k].shape)}, diffusers f32 vs f64 rel err {rel:.2e}")
    # Tiling must have changed something (the tiles see less context), or the test would prove nothing.
    plain = decode(vae.to(torch.float32), io["latents_big"])
    print(f"  tiled vs untiled decode of latents_big: rel diff "
          f"{((plain - out['tiled_dec']).norm() / plain.norm()).item():.2e}")
    print(f"tiny VAE: {sum(p.numel() for p in vae.parameters())} parameters")

    folder = os.path.join(DATA, "vae_tiny")
    shutil.rmtree(folder, ignore_errors=True)
    vae.to(torch.float16).save_pretrained(folder)
    strip_machine_paths(folder)
    io.update(out)
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(folder, "io.safetensors"))

    # The saved folder must reproduce the outputs through diffusers' own loader.
    again = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).eval()
    assert torch.equal(decode(again, io["latents"]), out["dec"])

    # Legacy attention names: same tensors, renamed keys; diffusers' loader must still accept them.
    legacy = os.path.join(DATA, "vae_tiny_legacy")
    shutil.rmtree(legacy, ignore_errors=True)
    os.makedirs(legacy)
    shutil.copy(os.path.join(folder, "config.json"), legacy)
    sd = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    renamed = {}
    for k, v in sd.items():
        for new, old in LEGACY.items():
            tag = f".attentions.0.{new}."
            if tag in k:
                k = k.replace(tag, f".attentions.0.{old}.")
        renamed[k] = v
    assert sum(".query." in k for k in renamed) == 4, sorted(renamed)  # weight + bias, encoder + decoder
    save_file(renamed, os.path.join(legacy, "diffusion_pytorch_model.safetensors"))
    again = AutoencoderKL.from_pretrained(legacy, torch_dtype=torch.float32).eval()
    assert torch.equal(decode(again, io["latents"]), out["dec"])


def write_keys(model, path):
    sd = model.state_dict()
    with open(path, "w") as f:
        for k, v in sd.items():
            f.write(f"{k}\t[{', '.join(str(s) for s in v.shape)}]\n")
    return sd


def lead(path):
    ref = {}
    for line in open(path):
        if line.startswith("#"):
            continue
        k, shape = line.rstrip("\n").split("\t")[:2]
        ref[k] = shape
    return ref


def keys():
    os.makedirs(os.path.join(DATA, "keys"), exist_ok=True)
    for name, cfg in REAL_VAE.items():
        with torch.device("meta"):
            model = AutoencoderKL(**cfg)
        sd = write_keys(model, os.path.join(DATA, "keys", f"vae_{name}.tsv"))
        total = sum(v.numel() for v in sd.values())
        enc = sum(v.numel() for k, v in sd.items() if k.startswith("encoder.") or k.startswith("quant_conv."))
        print(f"keys vae_{name}: {len(sd)} tensors, {total:,} parameters ({enc:,} encoder + quant_conv, "
              f"{total - enc:,} decoder + post_quant_conv)")
        ref_path = os.path.join(ROOT, "..", "shared", "reference", "keys", "vae.tsv")
        if os.path.exists(ref_path):
            ours = {k: f"[{', '.join(str(s) for s in v.shape)}]" for k, v in sd.items()}
            ref = lead(ref_path)
            # The lead lists the decoder's mid attention under its legacy names.
            ref = {k.replace("attentions.0.query", "attentions.0.to_q").replace("attentions.0.key", "attentions.0.to_k")
                   .replace("attentions.0.value", "attentions.0.to_v").replace("attentions.0.proj_attn",
                                                                               "attentions.0.to_out.0"): s
                   for k, s in ref.items()}
            print(f"  vs lead vae.tsv: {'identical' if ours == ref else 'DIFFERENT'} "
                  f"({len(set(ours) ^ set(ref))} names differ)")
    for name, cfg in REAL_UNET.items():
        with torch.device("meta"):
            model = UNet2DConditionModel(**cfg)
        sd = write_keys(model, os.path.join(DATA, "keys", f"unet_{name}.tsv"))
        print(f"keys unet_{name}: {len(sd)} tensors, {sum(v.numel() for v in sd.values()):,} parameters")


if __name__ == "__main__":
    make_tiny()
    keys()
