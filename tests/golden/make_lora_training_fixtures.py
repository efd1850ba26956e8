#!/usr/bin/env python3
"""Reference data for the trainable LoRA (train/lora_training.h; tests/train/lora_training_test.cpp),
made with diffusers + PEFT on the tiny pipelines tests/data/pipe_tiny_sd1 and pipe_tiny_sdxl.

Python is only the test oracle; CI never runs this script. It writes tests/data/lora_training/:

  peft_targets.json     for each (model, component, target list): the modules PEFT adapts when
                        LoraConfig(target_modules=<list>) is injected into the diffusers UNet /
                        transformers CLIP text encoder (UNet lists also with the --lora_target words
                        they expand from, as train/lora_training.h unet_lora_targets expands them).
                        The C++ test attaches to the same layers.
  <case>_io.safetensors for the C++-written LoRA files of each case: the fixed inputs (sample,
                        timestep, encoder_hidden_states, SDXL text_embeds / time_ids, input_ids,
                        input_ids_2) and float64 outputs of the models without (<x>_base) and with
                        (<x>_lora) the LoRA: unet, te (last_hidden_state), te2, te2_embeds (SDXL).

The LoRA files themselves (<case>_peft.safetensors, <case>_kohya.safetensors) are written by the
C++ test (SD_LORA_TRAINING_WRITE_FIXTURES=1 sd_tests --gtest_filter=GoldenLoraTraining.Files*) with
fixed adapter values; the C++ test then checks it writes them byte for byte. This script checks them
against diffusers and PEFT:
  * ground truth: PEFT adapters (LoraConfig r / lora_alpha / use_rslora / target_modules of the case,
    injected into fresh float64 models) holding the values of the file; the module set must equal the
    file's, and each module's PEFT scaling must be the case's alpha / r (alpha / sqrt(r) with rsLoRA);
  * the diffusers file: the same keys and values as StableDiffusion(XL)Pipeline.save_lora_weights
    writes for those PEFT adapters (text-encoder keys compared without transformers' "text_model.",
    which the flattened CLIPTextModel of transformers >= 5.6 drops and which we keep), and the
    lora_adapter_metadata (r, lora_alpha, use_rslora, target_modules) equal to the case's config;
  * each file (diffusers and kohya) loaded with pipe.load_lora_weights() into a float64 pipeline gives
    the ground-truth outputs (rel err < 1e-9), which are what <case>_io records.

Cases (the same table as golden_cases() in the C++ test):
  sd1        UNet r 4, alpha 2 on attention + proj_in/out (1x1 convs) + LoCon 3x3 convs; text encoder
             r 4, alpha 3, rsLoRA on q/k/v/out_proj, fc1, fc2; float16 files (diffusers + kohya)
  sdxl       UNet r 2 (alpha = r) on attention + LoCon convs; text_encoder r 2, alpha 4 on q/k/v/out;
             text_encoder_2 r 4, alpha 8, rsLoRA on all six; bfloat16 files (kohya: sgm UNet names,
             lora_te1 / lora_te2)
  sd1_plain  diffusers' default setup (attention; q/k/v/out_proj; alpha = r), float32, diffusers file
             only: no lora_adapter_metadata, diffusers infers the config from the keys

Run: python3 tests/golden/make_lora_training_fixtures.py   (torch 2.15 CPU, diffusers 0.42.1,
transformers 5.25, peft 0.21.2)
"""
import json
import os
import tempfile

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "data")
OUT = os.path.join(DATA, "lora_training")

PIPES = {"sd1": (StableDiffusionPipeline, "pipe_tiny_sd1"), "sdxl": (StableDiffusionXLPipeline, "pipe_tiny_sdxl")}
COMPONENTS = {"sd1": ["unet", "text_encoder"], "sdxl": ["unet", "text_encoder", "text_encoder_2"]}

WORDS = {"attn": ["to_q", "to_k", "to_v", "to_out.0"], "ff": ["ff.net.0.proj", "ff.net.2"],
         "proj": ["proj_in", "proj_out"], "conv": ["conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv"]}
TE_DEFAULT = ["q_proj", "k_proj", "v_proj", "out_proj"]
TE_ALL = TE_DEFAULT + ["fc1", "fc2"]


def unet_targets(words):
    out = []
    for w in words:
        for t in WORDS.get(w, [w]):
            if t not in out:
                out.append(t)
    return out


def lora(r, alpha, rslora, targets):
    return {"r": r, "alpha": alpha if alpha else r, "rslora": rslora, "targets": targets}


CASES = {
    "sd1": {"model": "sd1", "files": ["peft", "kohya"],
            "loras": {"unet": lora(4, 2, False, unet_targets(["attn", "proj", "conv"])),
                      "text_encoder": lora(4, 3, True, TE_ALL)}},
    "sdxl": {"model": "sdxl", "files": ["peft", "kohya"],
             "loras": {"unet": lora(2, 0, False, unet_targets(["attn", "conv"])),
                       "text_encoder": lora(2, 4, False, TE_DEFAULT),
                       "text_encoder_2": lora(4, 8, True, TE_ALL)}},
    "sd1_plain": {"model": "sd1", "files": ["peft"],
                  "loras": {"unet": lora(4, 0, False, unet_targets(["attn"])),
                            "text_encoder": lora(4, 0, False, TE_DEFAULT)}},
}


# ------------------------------------------------------------------------------------------ models

def load_component(model, comp, dtype):
    d = os.path.join(DATA, PIPES[model][1], comp)
    if comp == "unet":
        return UNet2DConditionModel.from_pretrained(d, torch_dtype=dtype).eval()
    cls = CLIPTextModelWithProjection if comp == "text_encoder_2" else CLIPTextModel
    return cls.from_pretrained(d, dtype=dtype).eval()


def load_models(model, dtype=torch.float64):
    return {c: load_component(model, c, dtype) for c in COMPONENTS[model]}


def make_inputs(model):
    g = torch.Generator().manual_seed(2024 if model == "sd1" else 2025)
    io = {"sample": torch.randn(2, 4, 8, 8, generator=g), "timestep": torch.tensor([901.0, 37.0]),
          "encoder_hidden_states": torch.randn(2, 7, 32, generator=g)}
    if model == "sdxl":
        io["text_embeds"] = torch.randn(2, 16, generator=g)
        io["time_ids"] = torch.tensor([[64.0, 64, 0, 0, 64, 64], [48, 32, 4, 8, 48, 32]])
    ids = torch.full((2, 12), 999, dtype=torch.int64)  # <|endoftext|> 999 also pads
    ids[:, 0] = 998
    ids[0, 1:6] = torch.randint(3, 990, (5,), generator=g)
    ids[1, 1:9] = torch.randint(3, 990, (8,), generator=g)
    io["input_ids"] = ids
    if model == "sdxl":
        io["input_ids_2"] = ids.clone()
    return io


def run(models, io):
    out = {}
    with torch.no_grad():
        unet = models["unet"]
        dt = unet.dtype
        kw = {}
        if "text_embeds" in io:
            kw["added_cond_kwargs"] = {"text_embeds": io["text_embeds"].to(dt), "time_ids": io["time_ids"].to(dt)}
        out["unet"] = unet(io["sample"].to(dt), io["timestep"], io["encoder_hidden_states"].to(dt), **kw).sample
        out["te"] = models["text_encoder"](io["input_ids"]).last_hidden_state
        if "text_encoder_2" in models:
            o = models["text_encoder_2"](io["input_ids_2"])
            out["te2"] = o.last_hidden_state
            out["te2_embeds"] = o.text_embeds
    return out


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def strip_tm(key):
    """Text-encoder key without transformers' "text_model." (absent in the flattened CLIPTextModel)."""
    for c in ("text_encoder_2.", "text_encoder."):
        if key.startswith(c + "text_model."):
            return c + key[len(c) + len("text_model."):]
    return key


def peft_layers(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, LoraLayer))


# ------------------------------------------------------------------------------------------ targets

def make_peft_targets():
    cases = []
    unet_words = [["attn"], ["attn", "ff", "proj"], ["conv"], ["attn", "ff", "proj", "conv"],
                  ["conv_shortcut", "time_emb_proj", "conv_in", "conv_out"]]
    for model in ("sd1", "sdxl"):
        for words in unet_words:
            targets = unet_targets(words)
            m = load_component(model, "unet", torch.float32)
            inject_adapter_in_model(LoraConfig(r=2, target_modules=targets), m)
            cases.append({"model": model, "component": "unet", "words": words, "targets": targets,
                          "modules": peft_layers(m)})
        for comp in COMPONENTS[model][1:]:
            for targets in (TE_DEFAULT, TE_ALL):
                m = load_component(model, comp, torch.float32)
                inject_adapter_in_model(LoraConfig(r=2, target_modules=targets), m)
                cases.append({"model": model, "component": comp, "targets": targets, "modules": peft_layers(m)})
    for c in cases:
        print(f"targets {c['model']:4s} {c['component']:14s} {str(c['targets'])[:70]:70s} {len(c['modules'])} modules")
    with open(os.path.join(OUT, "peft_targets.json"), "w") as f:
        json.dump({"cases": cases}, f, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ LoRA files

def ground_truth(case, file_sd):
    """Fresh float64 models with PEFT adapters of the case's configs holding the file's values."""
    models = load_models(case["model"])
    used = set()
    for comp, spec in case["loras"].items():
        m = models[comp]
        cfg = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], use_rslora=spec["rslora"],
                         target_modules=spec["targets"])
        inject_adapter_in_model(cfg, m)
        expected_scale = spec["alpha"] / (spec["r"] ** 0.5 if spec["rslora"] else spec["r"])
        with torch.no_grad():
            for name, mod in m.named_modules():
                if not isinstance(mod, LoraLayer):
                    continue
                assert abs(mod.scaling["default"] - expected_scale) < 1e-12, (name, mod.scaling)
                for which, param in (("lora_A", mod.lora_A["default"].weight),
                                     ("lora_B", mod.lora_B["default"].weight)):
                    key = f"{comp}.{name}.{which}.weight"
                    if key not in file_sd:  # the file keeps "text_model." for the flattened CLIPTextModel
                        key = f"{comp}.text_model.{name}.{which}.weight"
                    assert key in file_sd, f"PEFT adapts {comp}.{name}, the file has no {which} for it"
                    assert file_sd[key].shape == param.shape, (key, file_sd[key].shape, param.shape)
                    param.copy_(file_sd[key].double())
                    used.add(key)
    assert used == set(file_sd), f"file keys PEFT does not adapt: {sorted(set(file_sd) - used)[:5]}"
    return models


def check_against_diffusers_save(case_name, case, models, path):
    """Our diffusers file vs what save_lora_weights writes for the same PEFT adapters."""
    pipe_cls = PIPES[case["model"]][0]
    ours = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    kw = {}
    defaults = True
    for comp, spec in case["loras"].items():
        kw[f"{comp}_lora_layers"] = get_peft_model_state_dict(models[comp])
        cfg = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], use_rslora=spec["rslora"],
                         target_modules=spec["targets"])
        kw[f"{comp}_lora_adapter_metadata"] = cfg.to_dict()
        defaults = defaults and spec["alpha"] == spec["r"] and not spec["rslora"]
    with tempfile.TemporaryDirectory() as d:
        pipe_cls.save_lora_weights(d, **kw)
        theirs = load_file(os.path.join(d, "pytorch_lora_weights.safetensors"))
    te_keys = sorted(k for k in theirs if k.startswith("text_encoder."))
    ours_te = sorted(k for k in ours if k.startswith("text_encoder."))
    print(f"{case_name}: diffusers writes e.g. {te_keys[0]} (ours: {ours_te[0]})")
    a = {strip_tm(k): v for k, v in ours.items()}
    b = {strip_tm(k): v for k, v in theirs.items()}
    assert len(a) == len(ours) and set(a) == set(b), f"{case_name}: key sets differ: {sorted(set(a) ^ set(b))[:6]}"
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k].double(), b[k].double()), k
    assert meta.get("format") == "pt", meta
    if defaults:
        assert "lora_adapter_metadata" not in meta, meta
        return
    md = json.loads(meta["lora_adapter_metadata"])
    for comp, spec in case["loras"].items():
        assert md[f"{comp}.r"] == spec["r"] and md[f"{comp}.lora_alpha"] == spec["alpha"], (comp, md)
        assert md[f"{comp}.use_rslora"] == spec["rslora"], (comp, md)
        # The listed modules are exactly the ones PEFT adapts with the case's suffix targets.
        m = load_component(case["model"], comp, torch.float32)
        inject_adapter_in_model(LoraConfig(r=spec["r"], target_modules=md[f"{comp}.target_modules"]), m)
        assert peft_layers(m) == peft_layers(models[comp]), comp


def load_with_pipeline(case, path):
    pipe_cls, folder = PIPES[case["model"]]
    pipe = pipe_cls.from_pretrained(os.path.join(DATA, folder), torch_dtype=torch.float64)
    pipe.load_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path))
    models = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    if case["model"] == "sdxl":
        models["text_encoder_2"] = pipe.text_encoder_2
    return models


def make_case(name, case):
    paths = {kind: os.path.join(OUT, f"{name}_{kind}.safetensors") for kind in case["files"]}
    for p in paths.values():
        assert os.path.exists(p), f"{p} missing: run the C++ test with SD_LORA_TRAINING_WRITE_FIXTURES=1 first"
    io = make_inputs(case["model"])
    base = run(load_models(case["model"]), io)
    truth_models = ground_truth(case, load_file(paths["peft"]))
    truth = run(truth_models, io)
    check_against_diffusers_save(name, case, truth_models, paths["peft"])
    for kind, p in paths.items():
        got = run(load_with_pipeline(case, p), io)
        for k, v in truth.items():
            err, effect = rel(got[k], v), rel(v, base[k])
            print(f"{name}: {kind:5s} {k:10s} pipe.load_lora_weights vs PEFT truth rel err {err:.2e}, "
                  f"LoRA effect {effect:.3f}")
            assert err < 1e-9, (name, kind, k, err)
            assert effect > 2e-2, (name, kind, k, effect)
    out = dict(io)
    for k in truth:
        out[f"{k}_base"] = base[k].float().contiguous()
        out[f"{k}_lora"] = truth[k].float().contiguous()
    path = os.path.join(OUT, f"{name}_io.safetensors")
    save_file(out, path)
    os.chmod(path, 0o644)


def main():
    torch.set_grad_enabled(True)
    os.makedirs(OUT, exist_ok=True)
    make_peft_targets()
    for name, case in CASES.items():
        make_case(name, case)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"tests/data/lora_training: {total} bytes")


if __name__ == "__main__":
    main()
