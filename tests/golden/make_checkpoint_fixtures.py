#!/usr/bin/env python3
"""Fixtures for the single-file checkpoint tests (tests/models/formats/checkpoint_test.cpp).

Python is only the test oracle; CI never runs this script. It writes

  tests/data/checkpoint_keys/<list>.tsv.gz
      The per-tensor key lists of the full-size models (diffusers/transformers name, shape, original
      single-file name; copied from ../shared/reference/keys/, which are leads) after checking them here
      against the libraries themselves:
        * names and shapes == the real-config models built on the meta device (diffusers 0.42 UNets for
          SD1.5, SD2.1, SDXL, SSD-1B (inferred config), the SD VAE; transformers CLIP-L, OpenCLIP-H (23
          layers), OpenCLIP-bigG with projection);
        * original names == what diffusers' own single-file converters (convert_ldm_unet_checkpoint,
          convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint, convert_open_clip_checkpoint) turn
          back into exactly those diffusers names, each tensor coming from the right original tensor
          (marker values follow rows through the q/k/v split, the transpose and the 1x1-conv reshape).
      sdxl_refiner_unet.tsv.gz lists the SDXL refiner UNet (names and shapes only: no lead for its original
      names; the C++ test checks the round trip).

  tests/data/single_file/{sd1,sdxl}_tiny.safetensors
      Tiny random models with the REAL key names (SD1: UNet + VAE + CLIP-L; SDXL: CLIP-L + OpenCLIP-bigG) as one original single file, built from the diffusers models through the tsv mapping,
      and checked here: diffusers' converters map the file back to exactly the models' state dicts.
  tests/data/single_file/{sd1,sdxl}_tiny_diffusers/<component>/
      The same models as save_pretrained writes them (config.json + weights; transformers 5.x CLIPTextModel
      saves flat names without "text_model.").
  tests/data/single_file/sd1_tiny.ckpt
      Part of the SD1 single file (VAE, text encoder, some UNet tensors, a schedule buffer, model_ema.decay) as
      torch.save({"state_dict": ..., "global_step": 7}) writes it.

  tests/data/ckpt/
      state.ckpt       torch.save of {"state_dict": OrderedDict of f32/f16/bf16/f64/i64/i32/u8/bool tensors, a
                       non-contiguous view with a storage offset, tensors sharing a storage, a Parameter, a 0-d
                       and an empty tensor}, "global_step": 5, Lightning-style metadata (a ModelCheckpoint class
                       as a dict key, numpy scalars)}
      state_deflated.ckpt  the same archive with every entry deflated
      state_proto4.ckpt    part of it with pickle protocol 4 (STACK_GLOBAL, MEMOIZE, FRAME)
      legacy.ckpt      the pre-1.6 non-zip torch format (refused by the C++ reader)
      malicious.ckpt   a torch-style zip whose data.pkl is a hand-made pickle calling os.system("echo pwned");
                       it is written byte by byte and never loaded here
      expected.safetensors, expected.json  the values (contiguous), strides, offsets and sharing to compare

Versions used: torch 2.15.0, diffusers 0.42.1, transformers 5.24.0, safetensors 0.8.0, numpy 2.x.
"""
import gzip
import io
import json
import os
import re
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                 convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "data")
REFERENCE = os.environ.get("SD_REFERENCE_KEYS", os.path.join(HERE, "../../../shared/reference/keys"))

# ------------------------------------------------------------------------------------------- configs

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8)
SD21_UNET = dict(SD15_UNET, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SSD1B_UNET = dict(SDXL_UNET, transformer_layers_per_block=[1, 2, 4],
                  reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], 1], mid_block_type="UNetMidBlock2D")
REFINER_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                    block_out_channels=(384, 768, 1536, 1536),
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    transformer_layers_per_block=4, attention_head_dim=[6, 12, 24, 24], cross_attention_dim=1280,
                    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=2560)
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
           latent_channels=4)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
              projection_dim=768, hidden_act="quick_gelu")
CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
              projection_dim=512, hidden_act="gelu")
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                 projection_dim=1280, hidden_act="gelu")

# ------------------------------------------------------------------------------------------- tsv lists


def canonical_clip(k):
    """transformers >= 5.6 flattens CLIPTextModel; the lists (and single files) use "text_model."."""
    return "text_model." + k if k.startswith(("embeddings.", "encoder.", "final_layer_norm.")) else k


def read_tsv(name):
    """Rows (diffusers name, shape, original name, transform, part, original shape)."""
    rows = []
    with open(os.path.join(REFERENCE, name)) as f:
        text = f.read()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        d, shape, orig = line.split("\t")
        shape = json.loads(shape)
        oname = orig.split()[0]
        transform, part, oshape = "none", -1, shape
        m = re.search(r"\(rows (\d+):(\d+) of (\[[\d, ]+\])\)", orig)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            transform, part, oshape = "fused", a // (b - a), json.loads(m.group(3))
        m = re.search(r"\(stored TRANSPOSED: (\[[\d, ]+\])\)", orig)
        if m:
            transform, oshape = "transpose", json.loads(m.group(1))
        m = re.search(r"\(ldm shape (\[[\d, ]+\])\)", orig)
        if m:
            transform, oshape = "conv", json.loads(m.group(1))
        rows.append((d, shape, oname, transform, part, oshape))
    return rows, text


def meta_listing(make):
    with torch.device("meta"):
        m = make()
    clip = isinstance(m, (CLIPTextModel, CLIPTextModelWithProjection))
    return {(canonical_clip(k) if clip else k): list(v.shape) for k, v in m.state_dict().items()
            if not k.endswith("position_ids")}, m


LEGACY_VAE = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def legacy_to_current(k):
    for old, new in LEGACY_VAE.items():
        k = k.replace(f"attentions.0.{old}.", f"attentions.0.{new}.")
    return k


def marker(i, shape):
    """Row r of original tensor i holds i*1e7 + r: follows rows through splits, transposes and reshapes.
    Only dim 0 is real (the converters never look at the other dims' sizes)."""
    if len(shape) == 0:
        return torch.tensor(float(i) * 1e7, dtype=torch.float64)
    return (torch.arange(shape[0], dtype=torch.float64) + i * 1e7).view(shape[0], *[1] * (len(shape) - 1))


def check_rows(converted, rows, originals, index, what):
    assert set(converted) == {legacy_to_current(r[0]) for r in rows}, (
        what, sorted(set(converted) ^ {legacy_to_current(r[0]) for r in rows})[:10])
    for d, shape, oname, transform, part, oshape in rows:
        out = converted[legacy_to_current(d)]
        base = index[oname] * 1e7
        if transform == "fused":
            n = oshape[0] // 3
            expect = base + torch.arange(part * n, (part + 1) * n, dtype=torch.float64)
            got = out.reshape(out.shape[0], -1)[:, 0]
        elif transform == "transpose":
            expect = base + torch.arange(oshape[0], dtype=torch.float64)
            got = out.reshape(-1, out.shape[-1])[0, :] if out.dim() == 2 else out
        elif len(oshape) == 0:
            expect, got = torch.tensor(base, dtype=torch.float64), out
        else:
            expect = base + torch.arange(oshape[0], dtype=torch.float64)
            got = out.reshape(out.shape[0], -1)[:, 0]
        assert torch.equal(got, expect), (what, d, oname, transform)


def verify_and_copy(tsv, make, convert, what):
    rows, text = read_tsv(tsv)
    listing, model = meta_listing(make) if make else (None, None)
    if listing is not None:
        mine = {legacy_to_current(d): s for d, s, *_ in rows}
        assert mine == listing, (what, sorted(set(mine) ^ set(listing))[:10],
                                 [k for k in mine if k in listing and mine[k] != listing[k]][:10])
    if convert:
        originals, index = {}, {}
        for i, (d, shape, oname, transform, part, oshape) in enumerate(rows):
            if oname not in index:
                index[oname] = len(index) + 1
                originals[oname] = marker(index[oname], oshape)
        converted = convert(originals, model)
        check_rows(converted, rows, originals, index, what)
    os.makedirs(os.path.join(DATA, "checkpoint_keys"), exist_ok=True)
    out = os.path.join(DATA, "checkpoint_keys", tsv + ".gz")
    with open(out, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", filename="", mtime=0, compresslevel=9) as g:
            g.write(text.encode())
    print(f"{what}: {len(rows)} keys verified -> {os.path.relpath(out, DATA)}")
    return rows


def unet_convert(config):
    return lambda orig, model: convert_ldm_unet_checkpoint(orig, dict(model.config))


def key_lists():
    verify_and_copy("sd15_unet.tsv", lambda: UNet2DConditionModel(**SD15_UNET), unet_convert(SD15_UNET), "SD1.5 UNet")
    verify_and_copy("sd21_unet.tsv", lambda: UNet2DConditionModel(**SD21_UNET), unet_convert(SD21_UNET), "SD2.1 UNet")
    verify_and_copy("sdxl_unet.tsv", lambda: UNet2DConditionModel(**SDXL_UNET), unet_convert(SDXL_UNET), "SDXL UNet")
    verify_and_copy("ssd1b_unet.tsv", lambda: UNet2DConditionModel(**SSD1B_UNET), unet_convert(SSD1B_UNET),
                    "SSD-1B UNet (inferred config)")
    vae_conv = lambda orig, model: convert_ldm_vae_checkpoint(orig, dict(model.config))
    verify_and_copy("vae.tsv", lambda: AutoencoderKL(**VAE), vae_conv, "VAE")
    verify_and_copy("vae_legacy_attn_names.tsv", lambda: AutoencoderKL(**VAE), vae_conv, "VAE (legacy attention names)")
    clip_conv = lambda orig, model: {canonical_clip(k): v for k, v in convert_ldm_clip_checkpoint(orig).items()}
    verify_and_copy("clip_l_sd1_text_encoder.tsv", lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)), clip_conv,
                    "CLIP-L (SD1)")
    verify_and_copy("clip_l_sdxl_text_encoder.tsv", lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L)), clip_conv,
                    "CLIP-L (SDXL)")
    verify_and_copy("openclip_h_sd2_text_encoder.tsv", lambda: CLIPTextModel(CLIPTextConfig(**CLIP_H)),
                    lambda orig, model: convert_open_clip_checkpoint(model, orig, prefix="cond_stage_model.model."),
                    "OpenCLIP-H (SD2)")
    verify_and_copy("openclip_bigg_sdxl_text_encoder_2.tsv",
                    lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG)),
                    lambda orig, model: convert_open_clip_checkpoint(model, orig,
                                                                     prefix="conditioner.embedders.1.model."),
                    "OpenCLIP-bigG (SDXL)")
    # The refiner: names and shapes from diffusers itself.
    listing, _ = meta_listing(lambda: UNet2DConditionModel(**REFINER_UNET))
    text = "# diffusers_key\tshape\t(no original names: round trip only)\n" + "".join(
        f"{k}\t{json.dumps(s).replace(',', ', ')}\t-\n" for k, s in listing.items())
    with open(os.path.join(DATA, "checkpoint_keys", "sdxl_refiner_unet.tsv.gz"), "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", filename="", mtime=0, compresslevel=9) as g:
            g.write(text.encode())
    print(f"SDXL refiner UNet: {len(listing)} keys listed")


# ------------------------------------------------------------------------------------------- tiny single files


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def to_original(state, rows, clip):
    """diffusers state dict -> original names through the tsv rows (independent of the C++ code)."""
    canon = canonical_clip if clip else (lambda k: k)
    by_name = {canon(legacy_to_current(r[0])): r for r in rows}
    out, fused = {}, {}
    for k, v in state.items():
        if k.endswith("position_ids"):
            continue
        d, shape, oname, transform, part, oshape = by_name[canon(k)]
        if transform == "fused":
            fused.setdefault(oname, [None] * 3)[part] = v
        elif transform == "transpose":
            out[oname] = v.t().contiguous()
        elif transform == "conv":
            out[oname] = v.reshape(*v.shape, 1, 1).contiguous()
        else:
            out[oname] = v.clone()
    for oname, parts in fused.items():
        out[oname] = torch.cat(parts, 0).contiguous()
    return out


def check_equal(converted, state, what, clip=False):
    canon = canonical_clip if clip else (lambda k: k)
    state = {canon(k): v for k, v in state.items() if not k.endswith("position_ids")}
    converted = {canon(k): v for k, v in converted.items()}
    assert set(converted) == set(state), (what, sorted(set(converted) ^ set(state))[:10])
    for k in state:
        assert converted[k].shape == state[k].shape and torch.equal(converted[k], state[k]), (what, k)


def tiny_single_files():
    rows = {n: read_tsv(n + ".tsv")[0] for n in ["sd15_unet", "sdxl_unet", "vae", "clip_l_sd1_text_encoder",
                                                  "clip_l_sdxl_text_encoder", "openclip_bigg_sdxl_text_encoder_2"]}
    outdir = os.path.join(DATA, "single_file")
    os.makedirs(outdir, exist_ok=True)
    tiny_clip = dict(vocab_size=16, hidden_size=8, intermediate_size=12, num_attention_heads=2, num_hidden_layers=2,
                     max_position_embeddings=8, bos_token_id=14, eos_token_id=15, pad_token_id=15)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(2, 4, 8, 8),
                        layers_per_block=2, latent_channels=4, norm_num_groups=2)
    randomize(vae, 3)
    families = {
        "sd1": dict(
            unet=UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                                      block_out_channels=(2, 4, 8, 8), norm_num_groups=2,
                                      down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                      up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                      cross_attention_dim=4, attention_head_dim=2),
            text_encoder=CLIPTextModel(CLIPTextConfig(**tiny_clip, hidden_act="quick_gelu")),
            rows=dict(unet=rows["sd15_unet"], text_encoder=rows["clip_l_sd1_text_encoder"]), with_vae=True),
        # SDXL: the two text encoders only (OpenCLIP's fused q/k/v and transposed projection are what
        # differs from SD1; the SDXL UNet names are covered by the verified key list).
        "sdxl": dict(
            text_encoder=CLIPTextModel(CLIPTextConfig(**tiny_clip, hidden_act="quick_gelu")),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**tiny_clip, hidden_act="gelu",
                                                                      projection_dim=6)),
            rows=dict(text_encoder=rows["clip_l_sdxl_text_encoder"],
                      text_encoder_2=rows["openclip_bigg_sdxl_text_encoder_2"]), with_vae=False),
    }
    for fam, spec in families.items():
        models = {k: spec[k] for k in ["unet", "text_encoder", "text_encoder_2"] if k in spec}
        if spec["with_vae"]:  # the SDXL fixture leaves the (identical) VAE path to the SD1 one
            models["vae"] = vae
        comp_rows = dict(spec["rows"], vae=rows["vae"])
        original = {}
        for i, (name, model) in enumerate(sorted(models.items())):
            if name != "vae":
                randomize(model, 10 + i)
            model.half()
            original.update(to_original(model.state_dict(), comp_rows[name], name.startswith("text_encoder")))
        # diffusers' own converters must give the models back exactly.
        if "unet" in models:
            check_equal(convert_ldm_unet_checkpoint(original, dict(models["unet"].config)),
                        models["unet"].state_dict(), fam + " unet")
        if "vae" in models:
            check_equal(convert_ldm_vae_checkpoint(original, dict(vae.config)), vae.state_dict(), fam + " vae")
        prefix = "cond_stage_model.transformer." if fam == "sd1" else "conditioner.embedders.0.transformer."
        clip_part = {k: v for k, v in original.items() if k.startswith(prefix)}
        check_equal(convert_ldm_clip_checkpoint(clip_part), models["text_encoder"].state_dict(), fam + " clip", True)
        if "text_encoder_2" in models:
            check_equal(convert_open_clip_checkpoint(models["text_encoder_2"], original,
                                                     prefix="conditioner.embedders.1.model."),
                        models["text_encoder_2"].state_dict(), fam + " open_clip", True)
        save_file(original, os.path.join(outdir, f"{fam}_tiny.safetensors"), metadata={"format": "pt"})
        folder = os.path.join(outdir, f"{fam}_tiny_diffusers")
        for name, model in models.items():
            model.save_pretrained(os.path.join(folder, name), safe_serialization=True)
        if fam == "sd1":
            # As an ldm .ckpt: VAE, text encoder, a few UNet tensors and the schedule buffers (the whole UNet
            # would only add torch's per-storage overhead to the fixture).
            unet_keep = ("model.diffusion_model.input_blocks.0.", "model.diffusion_model.input_blocks.1.",
                         "model.diffusion_model.time_embed.", "model.diffusion_model.out.")
            part = OrderedDict((k, v) for k, v in original.items()
                               if not k.startswith("model.diffusion_model.") or k.startswith(unet_keep))
            part["alphas_cumprod"] = torch.linspace(0.99, 0.01, 10)
            part["model_ema.decay"] = torch.tensor(0.9999)
            torch.save({"state_dict": part, "global_step": 7}, os.path.join(outdir, "sd1_tiny.ckpt"))
        print(f"{fam} tiny single file: {len(original)} tensors, diffusers converters agree")


# ------------------------------------------------------------------------------------------- .ckpt fixtures


def lightning_stub():
    """A stand-in for pytorch_lightning's ModelCheckpoint, pickled by reference like the real one."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for n in names:
        sys.modules.setdefault(n, types.ModuleType(n))
    cls = type("ModelCheckpoint", (), {})
    cls.__module__ = names[-1]
    sys.modules[names[-1]].ModelCheckpoint = cls
    return cls


def ckpt_fixtures():
    out = os.path.join(DATA, "ckpt")
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    base = torch.arange(40, dtype=torch.float32) * 0.5 - 3.0
    f32 = torch.randn(3, 4, generator=g)
    sd = OrderedDict()
    sd["model.f32"] = f32
    sd["model.f32_t"] = f32.t()  # shares f32's storage, strides (1, 4)
    sd["model.f16"] = torch.randn(2, 5, generator=g).half()
    sd["model.bf16"] = torch.randn(7, generator=g).bfloat16()
    sd["model.f64"] = torch.tensor(3.25, dtype=torch.float64)  # 0-d
    sd["model.i64"] = torch.arange(6, dtype=torch.int64).view(2, 3) * 1000000007 - 5
    sd["model.i32"] = torch.tensor([-7, 0, 2**31 - 1], dtype=torch.int32)
    sd["model.u8"] = torch.tensor([0, 255, 7], dtype=torch.uint8)
    sd["model.bool"] = torch.tensor([True, False, True])
    sd["model.base"] = base
    sd["model.view"] = base.view(5, 8)[1:, 2:7:2]  # storage offset 10, strides (8, 2): non-contiguous
    sd["model.empty"] = torch.zeros(0, 3)
    sd["model.param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    ModelCheckpoint = lightning_stub()
    ckpt = {
        "epoch": 2,
        "global_step": 5,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": sd,
        "callbacks": {ModelCheckpoint: {"best_model_score": np.float64(0.25), "monitor": None,
                                        "best_k_models": {}, "kth_value": np.float32(1.5)}},
        "lr_schedulers": [],
        "hparams": {"lr": 1e-4, "betas": (0.9, 0.999), "name": "sd", "flag": True, "big": 2**70},
    }
    torch.save(ckpt, os.path.join(out, "state.ckpt"))
    # Same archive with deflated entries (torch writes them stored).
    with zipfile.ZipFile(os.path.join(out, "state.ckpt")) as src, \
            zipfile.ZipFile(os.path.join(out, "state_deflated.ckpt"), "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    small = OrderedDict((k, sd[k]) for k in ["model.f32", "model.f32_t", "model.bf16", "model.view", "model.base"])
    torch.save({"state_dict": small, "global_step": 9}, os.path.join(out, "state_proto4.ckpt"), pickle_protocol=4)
    torch.save(OrderedDict(f32=f32), os.path.join(out, "legacy.ckpt"), _use_new_zipfile_serialization=False)

    expected = {k: (v.detach().contiguous().clone() if v.dim() else v.detach().clone()) for k, v in sd.items()}
    save_file(expected, os.path.join(out, "expected.safetensors"))
    meta = {
        "global_step": 5,
        "keys": list(sd.keys()),
        "strides": {k: list(v.stride()) for k, v in sd.items()},
        "offsets": {k: v.storage_offset() for k, v in sd.items()},
        "shared": [["model.f32", "model.f32_t"], ["model.base", "model.view"]],
        "proto4_keys": list(small.keys()),
        "proto4_global_step": 9,
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(meta, f, indent=1)

    # Hand-made malicious pickle, never unpickled here: os.system("echo pwned") via GLOBAL + REDUCE.
    evil = (b"\x80\x02" + b"cos\nsystem\n" + b"q\x00" + b"X\x0a\x00\x00\x00echo pwned" + b"\x85" + b"R" + b".")
    with zipfile.ZipFile(os.path.join(out, "malicious.ckpt"), "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", evil)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    print("ckpt fixtures written")


if __name__ == "__main__":
    torch.manual_seed(0)
    key_lists()
    tiny_single_files()
    ckpt_fixtures()
