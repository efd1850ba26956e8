#!/usr/bin/env python3
"""Reference data for the C++ LoRA and textual-inversion loaders (tests/models/adapters/lora_golden_test.cpp,
textual_inversion_golden_test.cpp), made with diffusers + PEFT on the committed tiny models.

Python is only the test oracle; CI never runs this script. It writes tests/data/lora/:

  sd1_peft.safetensors    a LoRA for unet_tiny_sd1 + clip_tiny_l in diffusers' PEFT format, saved by
                          StableDiffusionPipeline.save_lora_weights with the LoraConfigs as
                          "lora_adapter_metadata": UNet r 4, lora_alpha 8, rank_pattern {ff.net.2: 2},
                          alpha_pattern {proj_out: 3}, on every Linear/Conv2d kind (attention, proj_in/out
                          (1x1 convs in SD1), ff, resnet conv1/conv2 (3x3) / conv_shortcut / time_emb_proj,
                          down/upsampler convs); text encoder r 3, lora_alpha 6 on q/k/v/out_proj, fc1, fc2.
                          f16 tensors.
  sd1_kohya.safetensors   the same LoRA with kohya-ss names (FORMATS.md 4.2, written here by hand):
                          lora_unet_<diffusers module path with '_'>, lora_te_text_model_<...>,
                          .lora_down.weight / .lora_up.weight / .alpha (the per-module alpha), f16 tensors.
  sdxl_peft.safetensors   a LoRA for unet_tiny_sdxl + clip_tiny_l (text_encoder) + clip_tiny_bigg
                          (text_encoder_2), PEFT format as above (te2: r 4, lora_alpha 3, use_rslora, so
                          the scale is alpha / sqrt(r)).
  sdxl_kohya.safetensors  the same with kohya's SDXL names: the UNet under its ORIGINAL (sgm) module paths
                          (lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q, ..._in_layers_2,
                          lora_unet_middle_block_1_proj_in ...), lora_te1_ / lora_te2_ text encoders. The
                          rsLoRA scale is folded into its alpha (kohya has no rsLoRA flag).
  sd1_te_old.bin          the SD1 text-encoder part as an early-diffusers torch pickle: .to_q_lora.down.weight
                          (attention-processor names) and .lora_linear_layer.down.weight (fc1/fc2), no
                          alphas (scale 1: the PEFT scale 2 folded into up); te_lora_old_bin in sd1_io is
                          diffusers' output for it (equal to te_lora)
  <name>_io.safetensors   diffusers' outputs, computed in float64 from exactly the stored values:
      unet_lora      UNet output for the inputs of tests/data/unet_tiny_<name>/io.safetensors with the LoRA
                     loaded at scale 0.7;  unet_base: without the LoRA
      te_lora, te_base            text_encoder last_hidden_state for clip_tiny_l/io.safetensors input_ids
                                  (LoRA scale 1.0) / without
      te2_lora, te2_base, te2_embeds_lora (sdxl)  the same for text_encoder_2 (+ text_embeds)
  Both files hold the same float16 values, and each kohya file is checked here to load through diffusers' own kohya converter
  (lora_state_dict) to the same outputs as the PEFT file.

  tokenizer/              a 1000-token CLIP BPE vocabulary for the tiny text encoders (vocab 1000): the
                          first 998 entries of CLIP's vocab.json (bytes, bytes+</w>, the first 486 merges)
                          and <|startoftext|> 998, <|endoftext|> 999.
  ti/cat_toy/learned_embeds.safetensors  diffusers format {"<cat-toy>": [3, 32]}
  ti/tinyemb.safetensors  A1111/kohya format {"emb_params": [2, 32]} (trigger = file stem "tinyemb")
  ti/oldstyle.pt          an A1111 torch.save pickle (string_to_param {"*": [2, 32]}, name, step ...);
                          trigger = file stem "oldstyle" (diffusers is given the same token)
  ti/tinyxl.safetensors   SDXL format {"clip_l": [2, 32], "clip_g": [2, 32]} (trigger "tinyxl")
  ti_io.safetensors       for each prompt (texts in the file's metadata "prompt.<i>"), diffusers'
                          maybe_convert_prompt + tokenizer ids and text-encoder last_hidden_state:
      sd1.<i>.ids / sd1.<i>.out         clip_tiny_l with <cat-toy>, tinyemb and oldstyle loaded
      sdxl.<i>.ids / sdxl.<i>.out       clip_tiny_l (pad 999) with tinyxl's clip_l
      sdxl.<i>.ids2 / sdxl.<i>.out2 / sdxl.<i>.embeds2   clip_tiny_bigg (pad "!" = 0) with clip_g

Run: python3 tests/golden/make_lora_goldens.py   (torch 2.15 CPU, diffusers 0.42.1, transformers 5.24,
peft 0.21.2; transformers' own add_adapter wants peft >= 0.22, so the text encoders get their adapters
through peft.inject_adapter_in_model, which is what diffusers' loader uses as well).
"""
import json
import os
import shutil

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders import TextualInversionLoaderMixin
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "data")
OUT = os.path.join(DATA, "lora")

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
UNET_SCALE = 0.7
# B's size: LoRA effects of roughly 10-30 % on the outputs (visible, yet not swamping the base model).
UNET_GAIN, TE_GAIN = 0.08, 0.12


# ------------------------------------------------------------------------------------------ models

def load_unet(name, dtype=torch.float64):
    kw = {"variant": "fp16"} if name == "sd1" else {}
    return UNet2DConditionModel.from_pretrained(os.path.join(DATA, f"unet_tiny_{name}"), torch_dtype=dtype, **kw).eval()


def load_te(name, dtype=torch.float64):
    cls = CLIPTextModelWithProjection if name == "bigg" else CLIPTextModel
    return cls.from_pretrained(os.path.join(DATA, f"clip_tiny_{name}"), dtype=dtype).eval()


def unet_io(name):
    return load_file(os.path.join(DATA, f"unet_tiny_{name}", "io.safetensors"))


def run_unet(unet, io):
    dt = unet.dtype
    kw = {}
    if "text_embeds" in io:
        kw["added_cond_kwargs"] = {"text_embeds": io["text_embeds"].to(dt), "time_ids": io["time_ids"].to(dt)}
    with torch.no_grad():
        return unet(io["sample"].to(dt), io["timestep"], io["encoder_hidden_states"].to(dt), **kw).sample


def run_te(te, ids):
    with torch.no_grad():
        out = te(ids)
    return out.last_hidden_state, getattr(out, "text_embeds", None)


# ------------------------------------------------------------------------------------------ LoRA weights

def randomise_lora(model, seed, gain):
    """Seeded LoRA values, every one a float16 number: A ~ N(0, 1/fan_in), B ~ N(0, gain^2 / r)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in sorted(model.named_modules()):
            if not isinstance(m, LoraLayer):
                continue
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            fan_in = a[0].numel()
            r = a.shape[0]
            va = torch.randn(a.shape, generator=g, dtype=torch.float64) / fan_in ** 0.5
            vb = torch.randn(b.shape, generator=g, dtype=torch.float64) * gain / r ** 0.5
            a.copy_(va.half().to(a.dtype))
            b.copy_(vb.half().to(b.dtype))


def make_peft_lora(model, config, seed, gain):
    inject_adapter_in_model(config, model)
    randomise_lora(model, seed, gain)
    # float16, as many published LoRAs are (and half the bytes); the values are float16 numbers anyway.
    return {k: v.detach().to(torch.float16).contiguous() for k, v in get_peft_model_state_dict(model).items()}


def peft_scale(config, module):
    """PEFT's scaling for one module: alpha / r, alpha / sqrt(r) with rsLoRA (patterns by dotted suffix)."""
    import re
    r, alpha = config.r, config.lora_alpha
    for pat, v in config.rank_pattern.items():
        if re.match(rf"(.*\.)?({pat})$", module):
            r = v
            break
    for pat, v in config.alpha_pattern.items():
        if re.match(rf"(.*\.)?({pat})$", module):
            alpha = v
            break
    return alpha / (r ** 0.5 if config.use_rslora else r)


# ------------------------------------------------------------------------------------------ kohya names

RESNET_LDM = {"conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "conv2": "out_layers.3",
              "conv_shortcut": "skip_connection"}


def ldm_module(name, cfg):
    """diffusers UNet module path -> original (ldm/sgm) module path, FORMATS.md 3.2."""
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_out": "out.2"}
    if name in fixed:
        return fixed[name]
    L = cfg["layers_per_block"]
    up_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]
    p = name.split(".")
    if p[0] == "mid_block":
        j = int(p[2])
        if p[1] == "resnets":
            return f"middle_block.{2 * j}.{RESNET_LDM[p[3]]}"
        return f"middle_block.{2 * j + 1}." + ".".join(p[3:])
    i, kind, j = int(p[1]), p[2], int(p[3])
    if p[0] == "down_blocks":
        n = 1 + i * (L + 1) + j
        if kind == "resnets":
            return f"input_blocks.{n}.0.{RESNET_LDM[p[4]]}"
        if kind == "attentions":
            return f"input_blocks.{n}.1." + ".".join(p[4:])
        return f"input_blocks.{(i + 1) * (L + 1)}.0.op"
    n = i * (L + 1) + j
    if kind == "resnets":
        return f"output_blocks.{n}.0.{RESNET_LDM[p[4]]}"
    if kind == "attentions":
        return f"output_blocks.{n}.1." + ".".join(p[4:])
    return f"output_blocks.{i * (L + 1) + L}.{2 if up_attn[i] else 1}.conv"


def to_kohya(peft_sd, prefix, rename, config):
    """PEFT {module.lora_A.weight, module.lora_B.weight} -> kohya {name.lora_down/up.weight, name.alpha} in f16."""
    out = {}
    for key, a in peft_sd.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        b = peft_sd[module + ".lora_B.weight"]
        name = prefix + "_" + rename(module).replace(".", "_")
        r = a.shape[0]
        # kohya's scale is alpha / r: the module's PEFT scale times r is its alpha.
        alpha = peft_scale(config, module) * r
        out[name + ".lora_down.weight"] = a.half()
        out[name + ".lora_up.weight"] = b.half()
        out[name + ".alpha"] = torch.tensor(alpha, dtype=torch.float16)
        assert float(out[name + ".alpha"]) == alpha, (name, alpha)  # exactly representable
    return out


# ------------------------------------------------------------------------------------------ LoRA goldens

def load_with_diffusers(pipe_cls, path, unet, tes, unet_scale):
    """diffusers' own loader: lora_state_dict + load_lora_into_unet / _text_encoder, UNet at unet_scale."""
    # unet_config: what load_lora_weights passes, so that sgm-named (SDXL kohya) UNet keys get remapped.
    sd, alphas, meta = pipe_cls.lora_state_dict(path, return_lora_metadata=True, unet_config=unet.config)
    sd = dict(sd)
    pipe_cls.load_lora_into_unet(sd, alphas, unet, adapter_name="a", metadata=meta)
    unet.set_adapters(["a"], weights=[unet_scale])
    for prefix, te in tes.items():
        pipe_cls.load_lora_into_text_encoder(sd, alphas, te, prefix=prefix, adapter_name="a", metadata=meta)
    return sd


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def make_lora(name):
    sdxl = name == "sdxl"
    pipe_cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    te_names = {"text_encoder": "l", "text_encoder_2": "bigg"} if sdxl else {"text_encoder": "l"}

    unet = load_unet(name)
    ucfg = dict(unet.config)
    ucfg_lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=UNET_TARGETS,
                           rank_pattern={"ff.net.2": 2}, alpha_pattern={"proj_out": 3})
    unet_sd = make_peft_lora(unet, ucfg_lora, seed=1 if not sdxl else 2, gain=UNET_GAIN)
    te_cfgs = {"text_encoder": LoraConfig(r=3, lora_alpha=6, init_lora_weights=False, target_modules=TE_TARGETS)}
    if sdxl:
        te_cfgs["text_encoder_2"] = LoraConfig(r=4, lora_alpha=3, use_rslora=True, init_lora_weights=False,
                                               target_modules=TE_TARGETS)
    te_sds = {}
    for i, (comp, cfg) in enumerate(te_cfgs.items()):
        te_sds[comp] = make_peft_lora(load_te(te_names[comp]), cfg, seed=10 + i + (5 if sdxl else 0), gain=TE_GAIN)

    # --- diffusers (PEFT) file
    peft_dir = os.path.join(OUT, f"tmp_{name}")
    kw = {"unet_lora_layers": unet_sd, "unet_lora_adapter_metadata": ucfg_lora.to_dict()}
    for comp, sd in te_sds.items():
        kw[f"{comp}_lora_layers"] = sd
        kw[f"{comp}_lora_adapter_metadata"] = te_cfgs[comp].to_dict()
    pipe_cls.save_lora_weights(peft_dir, **kw)
    peft_path = os.path.join(OUT, f"{name}_peft.safetensors")
    shutil.move(os.path.join(peft_dir, "pytorch_lora_weights.safetensors"), peft_path)
    shutil.rmtree(peft_dir)

    # --- kohya file
    if sdxl:
        kohya = to_kohya(unet_sd, "lora_unet", lambda m: ldm_module(m, ucfg), ucfg_lora)
        kohya.update(to_kohya(te_sds["text_encoder"], "lora_te1", lambda m: "text_model." + m, te_cfgs["text_encoder"]))
        # CLIPTextModelWithProjection keeps "text_model." in its module paths.
        kohya.update(to_kohya(te_sds["text_encoder_2"], "lora_te2", lambda m: m, te_cfgs["text_encoder_2"]))
    else:
        kohya = to_kohya(unet_sd, "lora_unet", lambda m: m, ucfg_lora)
        kohya.update(to_kohya(te_sds["text_encoder"], "lora_te", lambda m: "text_model." + m, te_cfgs["text_encoder"]))
    kohya_path = os.path.join(OUT, f"{name}_kohya.safetensors")
    save_file(kohya, kohya_path, metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4"})

    # --- reference outputs (float64 models)
    io = unet_io(name)
    clip_ids = {c: load_file(os.path.join(DATA, f"clip_tiny_{n}", "io.safetensors"))["input_ids"]
                for c, n in te_names.items()}
    out = {"unet_base": run_unet(load_unet(name), io)}
    for comp, n in te_names.items():
        short = "te" if comp == "text_encoder" else "te2"
        h, e = run_te(load_te(n), clip_ids[comp])
        out[f"{short}_base"] = h
        if e is not None:
            out[f"{short}_embeds_base"] = e

    results = {}
    for kind, path in (("peft", peft_path), ("kohya", kohya_path)):
        u = load_unet(name)
        tes = {c: load_te(n) for c, n in te_names.items()}
        load_with_diffusers(pipe_cls, path, u, tes, UNET_SCALE)
        r = {"unet_lora": run_unet(u, io)}
        for comp, te in tes.items():
            short = "te" if comp == "text_encoder" else "te2"
            h, e = run_te(te, clip_ids[comp])
            r[f"{short}_lora"] = h
            if e is not None:
                r[f"{short}_embeds_lora"] = e
        results[kind] = r

    for k, v in results["peft"].items():
        err = rel(results["kohya"][k], v)
        base = k.replace("_lora", "_base")
        effect = rel(v, out[base])
        print(f"{name}: {k:16s} LoRA effect {effect:.3f}, diffusers kohya vs PEFT file rel err {err:.2e}")
        assert err < 1e-9, f"{name} {k}: diffusers loads the kohya file differently ({err})"
        assert effect > 2e-2, f"{name} {k}: LoRA effect too small"
        out[k] = v

    if not sdxl:
        out["te_lora_old_bin"] = write_old_te_bin(te_sds["text_encoder"], te_cfgs["text_encoder"], pipe_cls,
                                                  results["peft"]["te_lora"], clip_ids["text_encoder"])

    # Independent check of the PEFT scale rules on one module per kind of pattern: our own W + s B A.
    check_manual(name, unet_sd, ucfg_lora, io, results["peft"]["unet_lora"])

    save_file({k: v.to(torch.float32).contiguous() for k, v in out.items()}, os.path.join(OUT, f"{name}_io.safetensors"))
    print(f"{name}: peft {os.path.getsize(peft_path)} B, kohya {os.path.getsize(kohya_path)} B, "
          f"{len(unet_sd) // 2} UNet modules, {sum(len(s) // 2 for s in te_sds.values())} text-encoder modules")


def write_old_te_bin(te_sd, config, pipe_cls, expected, ids):
    """The SD1 text-encoder LoRA as an early-diffusers torch pickle: attention-processor names for the
    projections (to_q_lora ...), lora_linear_layer for the MLP, "text_model." paths, no alphas (so
    scale 1: the PEFT scale is folded into up, an exact float16 doubling)."""
    procs = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}
    old = {}
    for key, a in te_sd.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        b = te_sd[module + ".lora_B.weight"]
        base, leaf = module.rsplit(".", 1)
        full = "text_encoder.text_model." + base
        stem = f"{full}.{procs[leaf]}_lora" if leaf in procs else f"{full}.{leaf}.lora_linear_layer"
        old[stem + ".down.weight"] = a.clone()
        old[stem + ".up.weight"] = (b.double() * peft_scale(config, module)).half()
        assert torch.equal(old[stem + ".up.weight"].double(), b.double() * peft_scale(config, module))
    path = os.path.join(OUT, "sd1_te_old.bin")
    torch.save(old, path)
    te = load_te("l")
    sd, alphas = pipe_cls.lora_state_dict(dict(old))
    pipe_cls.load_lora_into_text_encoder(sd, alphas, te, prefix="text_encoder", adapter_name="a")
    got = run_te(te, ids)[0]
    err = rel(got, expected)
    print(f"sd1: old-style text-encoder .bin through diffusers vs PEFT file rel err {err:.2e}")
    assert err < 1e-9
    return got


def check_manual(name, unet_sd, config, io, expected):
    """Merge the LoRA by hand (W += 0.7 * scale * B @ A) and compare with diffusers' adapter output."""
    unet = load_unet(name)
    mods = dict(unet.named_modules())
    with torch.no_grad():
        for key, a in unet_sd.items():
            if ".lora_A." not in key:
                continue
            module = key.split(".lora_A.")[0]
            b = unet_sd[module + ".lora_B.weight"].double()
            a = a.double()
            w = mods[module].weight
            delta = (b.flatten(1) @ a.flatten(1)).reshape(w.shape)
            w += UNET_SCALE * peft_scale(config, module) * delta
    err = rel(run_unet(unet, io), expected)
    print(f"{name}: hand-merged UNet vs diffusers adapters rel err {err:.2e}")
    assert err < 1e-9


# ------------------------------------------------------------------------------------------ tokenizer

def make_tokenizer():
    src = os.path.join(DATA, "clip")
    with open(os.path.join(src, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(src, "merges.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    n_merges = 1000 - 512 - 2
    merges = lines[1:1 + n_merges]
    small = {t: i for t, i in vocab.items() if i < 512 + n_merges}
    for k, m in enumerate(merges):  # merge k makes token 512 + k
        assert small[m.replace(" ", "")] == 512 + k, m
    small["<|startoftext|>"] = 998
    small["<|endoftext|>"] = 999
    assert sorted(small.values()) == list(range(1000))
    d = os.path.join(OUT, "tokenizer")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(small, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write(lines[0] + "\n" + "\n".join(merges) + "\n")
    return d


def tokenizer(d, pad):
    return CLIPTokenizer.from_pretrained(d, pad_token=pad)


class TiLoader(TextualInversionLoaderMixin):
    """The smallest object diffusers' load_textual_inversion runs on (no pipeline, no offloading)."""
    hf_device_map = None
    components = {}


# ------------------------------------------------------------------------------------------ textual inversion

# diffusers expands multi-vector triggers by plain string replacement, so a trigger that is a prefix of
# another ("emb" / "emb_x") would break the longer one; the triggers here avoid that.
SD1_PROMPTS = ["a photo of <cat-toy> on a beach", "tinyemb, a painting of a house by oldstyle",
               "<cat-toy> and tinyemb in a forest", "a plain prompt"]
SDXL_PROMPTS = ["a tinyxl photo", "tinyxl, tinyxl at night"]


def embed(g, shape):
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 0.7).half().float()


def make_ti(tok_dir):
    g = torch.Generator().manual_seed(77)
    ti = os.path.join(OUT, "ti")
    os.makedirs(os.path.join(ti, "cat_toy"), exist_ok=True)
    cat = embed(g, (3, 32))
    save_file({"<cat-toy>": cat}, os.path.join(ti, "cat_toy", "learned_embeds.safetensors"), metadata={"format": "pt"})
    tiny = embed(g, (2, 32))
    save_file({"emb_params": tiny}, os.path.join(ti, "tinyemb.safetensors"))
    a1111 = embed(g, (2, 32))
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": a1111}, "name": "ignored-name",
                "step": 1234, "sd_checkpoint": "abcdef01", "sd_checkpoint_name": "tiny"},
               os.path.join(ti, "oldstyle.pt"))
    xl = {"clip_l": embed(g, (2, 32)), "clip_g": embed(g, (2, 32))}
    save_file(xl, os.path.join(ti, "tinyxl.safetensors"))

    loader = TiLoader()
    out, meta = {}, {}

    # SD1: three embeddings on clip_tiny_l (A1111-style files need the trigger given: the file stem).
    tok = tokenizer(tok_dir, "<|endoftext|>")
    te = load_te("l")
    loader.load_textual_inversion(os.path.join(ti, "cat_toy"), tokenizer=tok, text_encoder=te)
    loader.load_textual_inversion(os.path.join(ti, "tinyemb.safetensors"), token="tinyemb", tokenizer=tok, text_encoder=te)
    loader.load_textual_inversion({"string_to_param": {"*": a1111}, "name": "oldstyle"}, tokenizer=tok, text_encoder=te)
    for i, p in enumerate(SD1_PROMPTS):
        conv = loader.maybe_convert_prompt(p, tok)
        ids = tok(conv, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out[f"sd1.{i}.ids"] = ids
        out[f"sd1.{i}.out"] = run_te(te, ids)[0]
        meta[f"sd1.prompt.{i}"] = p
        print(f"ti sd1: {p!r} -> {conv!r} -> {ids[0, :14].tolist()}")
    assert out["sd1.0.ids"][0].tolist().count(1000) == 1  # <cat-toy> is the first added token

    # SDXL: clip_l into text_encoder (CLIP-L, pad <|endoftext|>), clip_g into text_encoder_2 (pad "!").
    tok1, tok2 = tokenizer(tok_dir, "<|endoftext|>"), tokenizer(tok_dir, "!")
    te1, te2 = load_te("l"), load_te("bigg")
    loader.load_textual_inversion(xl["clip_l"], token="tinyxl", tokenizer=tok1, text_encoder=te1)
    loader.load_textual_inversion(xl["clip_g"], token="tinyxl", tokenizer=tok2, text_encoder=te2)
    for i, p in enumerate(SDXL_PROMPTS):
        for suffix, t, e in (("", tok1, te1), ("2", tok2, te2)):
            conv = loader.maybe_convert_prompt(p, t)
            ids = t(conv, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            h, emb = run_te(e, ids)
            out[f"sdxl.{i}.ids{suffix}"] = ids
            out[f"sdxl.{i}.out{suffix}"] = h
            if emb is not None:
                out[f"sdxl.{i}.embeds{suffix}"] = emb
        meta[f"sdxl.prompt.{i}"] = p
    save_file({k: (v if v.dtype == torch.int64 else v.float()).contiguous() for k, v in out.items()},
              os.path.join(OUT, "ti_io.safetensors"), metadata=meta)


def main():
    os.makedirs(OUT, exist_ok=True)
    make_lora("sd1")
    make_lora("sdxl")
    make_ti(make_tokenizer())
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(OUT) for f in fs)
    print(f"tests/data/lora: {total} bytes")


if __name__ == "__main__":
    main()
