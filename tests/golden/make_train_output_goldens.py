#!/usr/bin/env python3
"""What sd_train saves, loaded by diffusers the way users load it (tests/train/train_outputs_golden_test.cpp).

Python is only the test oracle; CI never runs this script. tests/data/train_outputs/commands.json lists eight
short sd_train runs on the tiny pipelines (tests/data/pipe_tiny_sd1, pipe_tiny_sdxl) and the tiny datasets
tests/data/train_tiny / train_tiny_txt (10 steps at 32 px, seed 7, one BLAS thread):

  sd1_lora     LoRA rank 4, alpha 8 (scale 2: lora_adapter_metadata) on the UNet's attention and the text
               encoder's q/k/v/out_proj; fp16 files, diffusers/PEFT and kohya layouts
  sdxl_lora    LoRA rank 4 (alpha = rank: no metadata) on the UNet's attention and 3x3 convolutions (LoCon) and
               both text encoders; fp16, both layouts (kohya: sgm UNet names, lora_te1 / lora_te2)
  sd1_full     full fine-tune of the UNet and the text encoder, fp32: the pipeline folder and model.safetensors
  sdxl_full    full fine-tune of the UNet and both text encoders, fp16: the folder and model.safetensors
  sd1_ti       textual inversion, "<shape>" with 2 vectors (initializer "a"), lr 5e-2: learned_embeds.safetensors
               {"<shape>": [2, 32]} and the A1111/ComfyUI shape.safetensors {"emb_params": [2, 32]}, fp16
  sdxl_ti      textual inversion, "<shape>" with 1 vector in both encoders: learned_embeds.safetensors and
               learned_embeds_2.safetensors ({"<shape>": [1, 16]} each), shape.safetensors {"clip_l", "clip_g"}
  sd1_db_lora  DreamBooth LoRA ("a photo of sks shape" on train_tiny) with prior preservation: 2 class images
               ("a photo of shape") that sd_train generates into a scratch folder ({tmp}/class) before training;
               UNet attention + text encoder, both layouts, fp16
  sd1_db_full  DreamBooth full fine-tune of the UNet and the text encoder, fp16: the folder and model.safetensors

With --sd_train PATH the runs are made again (into a temporary folder) and their outputs copied into
tests/data/train_outputs/<case>/: the LoRA / embedding files (the run must have written exactly those, besides
logs/); for the full runs the whole saved folder (without logs/), where every file sd_train copied from the
starting pipeline (checked byte-identical to it) becomes a relative symlink to that pipeline's file, so that only
the trained weights and model.safetensors take space. Generated class images are not kept. Without --sd_train
the committed files are used; --cases limits both steps to some cases.

For each LoRA and full case diffusers loads the outputs as users do and runs, in float32 on the CPU, the UNet and
the text encoder(s) on fixed inputs; tests/data/train_outputs/<case>_io.safetensors holds
  inputs   sample [2,4,16,16], timestep [2], encoder_hidden_states [2,77,32], SDXL text_embeds [2,16] and
           time_ids [2,6]; input_ids [2,77] (and input_ids_2) from the pipeline's tokenizers for two captions
           (DreamBooth: the instance and the class prompt)
  outputs  unet_<v>, te_<v> (last_hidden_state), SDXL te2_<v> and te2_embeds_<v> (text_embeds), for
           v = base (the starting pipeline), and
           LoRA: diffusers / kohya   StableDiffusion(XL)Pipeline.from_pretrained(tiny pipe)
                                     + pipe.load_lora_weights(case dir, weight_name=<file>)
           full: folder              StableDiffusion(XL)Pipeline.from_pretrained(case dir)
                 single              StableDiffusion(XL)Pipeline.from_single_file(model.safetensors,
                                     config=<tiny pipe folder>)
It asserts that loading logged nothing about unexpected / missing / unused keys (diffusers, transformers and
PEFT warnings captured), that transformers' and diffusers' loading info of each saved component lists no
missing or unexpected keys, that diffusers injected one adapter per LoRA module of each file, that the two
LoRA layouts give the same outputs, that the single file gives exactly the folder's weights, and that the
training changed every output (relative change > 1e-2).

For the textual-inversion cases the io file holds, for two prompts (TI_PROMPTS; metadata "prompts" per
variant, "token", "a1111_trigger", "num_vectors"), the token ids after diffusers' maybe_convert_prompt
(ids_<v>, SDXL ids2_<v>) and the encoder outputs the pipelines condition on (te_<v>: SD1 last_hidden_state,
SDXL hidden_states[-2]; SDXL te2_<v> hidden_states[-2] and te2_embeds_<v> text_embeds; checked equal to
pipe.encode_prompt's prompt_embeds / pooled_prompt_embeds), for
  plain      the starting pipeline, prompts with "<shape>" (no embedding loaded)
  init       the starting pipeline, the trigger replaced by the initializer once per vector (= the untrained
             embedding)
  diffusers  SD1: pipe.load_textual_inversion(case dir, weight_name="learned_embeds.safetensors");
             SDXL: the same, then learned_embeds_2.safetensors with text_encoder=pipe.text_encoder_2,
             tokenizer=pipe.tokenizer_2
  a1111      SD1: pipe.load_textual_inversion("shape.safetensors", token="shape"); SDXL: diffusers' documented
             recipe, load_textual_inversion(state_dict["clip_g"], token="shape", text_encoder=pipe.text_encoder_2,
             tokenizer=pipe.tokenizer_2) and the same for clip_l with text_encoder / tokenizer
It asserts that the tokenizers got the tokens <shape>, <shape>_1, ... (one per vector, new consecutive ids) with
exactly the files' rows in the embedding tables, that maybe_convert_prompt expands the trigger to all its
vectors, that the A1111 file gives the same ids and outputs as learned_embeds, and that the embedding changes
every output against plain and init (relative change > 1e-2).

One diffusers limitation is worked around, not hidden: from_single_file picks the SDXL text_encoder_2
weights by testing whether the CLIP-L part (conditioner.embedders.0) has text_encoder_2's width; in
pipe_tiny_sdxl both encoders are 16 wide (real SDXL: 768 and 1280), so diffusers would load the CLIP-L
weights into text_encoder_2 and leave its text_projection unloaded (on the meta device). The script shows
that this happens, then builds text_encoder_2 with diffusers' own convert_open_clip_checkpoint on the
conditioner.embedders.1 part and passes it to from_single_file.

Run: python3 tests/golden/make_train_output_goldens.py [--sd_train build/tools/sd_train] [--cases CASE ...]
     (torch 2.15 CPU, diffusers 0.42.1, transformers 5.25, peft 0.21)
"""
import argparse
import filecmp
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import warnings

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "data"))
OUT = os.path.join(DATA, "train_outputs")
COMMANDS = os.path.join(OUT, "commands.json")

LORA_FILES = {"diffusers": "pytorch_lora_weights.safetensors", "kohya": "pytorch_lora_weights_kohya.safetensors"}
CAPTIONS = ["a red circle on a white background", "a purple square on a orange background"]
# DreamBooth: the instance prompt and the class prompt.
DB_CAPTIONS = ["a photo of sks shape", "a photo of shape"]
# Textual inversion: {} is the trigger (or, for the "init" variant, the initializer word once per vector).
TI_PROMPTS = ["a photo of {} on a white background", "{}, a red circle"]
# Log lines / warnings that mean a tensor was dropped, left out or not matched.
BAD = re.compile(r"unexpected|missing|not used|not initiali|newly initiali|were not|ignor|no lora|unmatched|"
                 r"mismatch|skipp|meta device|not found in", re.I)
# Known harmless messages of these library versions.
BENIGN = re.compile(r"torch_dtype` is deprecated|should be kept in float32: \[\]|requires torchvision|"
                    r"add_watermarker'} was not found in config", re.I)


def pipe_class(case):
    return StableDiffusionXLPipeline if case.startswith("sdxl") else StableDiffusionPipeline


# ------------------------------------------------------------------------------------------ captured logs

class Captured(logging.Handler):
    """Every WARNING+ record of diffusers / transformers / peft and every Python warning while active."""

    def __init__(self, what):
        super().__init__(logging.WARNING)
        self.what = what
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")

    def __enter__(self):
        self.loggers = [logging.getLogger(n) for n in ("diffusers", "transformers", "peft")]
        for lg in self.loggers:
            lg.addHandler(self)
        self.catcher = warnings.catch_warnings(record=True)
        self.warned = self.catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.catcher.__exit__(*exc)
        for lg in self.loggers:
            lg.removeHandler(self)
        self.messages += [f"warning: {w.message}" for w in self.warned]
        bad = [m for m in self.messages if BAD.search(m) and not BENIGN.search(m)]
        for m in self.messages:
            print(f"  [{self.what}] {'FAIL ' if m in bad else ''}{m.splitlines()[0][:200]}")
        assert not bad, f"{self.what}: loading reported dropped or unmatched keys: {bad}"
        return False


# ------------------------------------------------------------------------------------------ running sd_train

def load_commands():
    with open(COMMANDS) as f:
        return json.load(f)


def command(cmds, sd_train, case, out_dir, scratch):
    c = cmds["cases"][case]
    args = [a.replace("{data}", DATA).replace("{tmp}", scratch) for a in c["args"]]
    return ([sd_train, "--pretrained_model_name_or_path", os.path.join(DATA, c["source"])] + cmds["common"] + args +
            ["--output_dir", out_dir])


def flag(c, name, default=None):
    """The value of --name in a case's args (the last one wins, as in sd_train)."""
    args = c["args"]
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--" + name]
    return values[-1] if values else default


def kind(c):
    """lora (lora, dreambooth-lora), full (full, dreambooth) or ti (textual-inversion)."""
    return {"lora": "lora", "dreambooth-lora": "lora", "full": "full", "dreambooth": "full",
            "textual-inversion": "ti"}[flag(c, "method")]


def top_level_files(case, c):
    """The files a LoRA or textual-inversion run writes into its output folder."""
    if kind(c) == "lora":
        return set(LORA_FILES.values())
    names = {"learned_embeds.safetensors", ti_file_name(c)}
    if case.startswith("sdxl"):
        names.add("learned_embeds_2.safetensors")
    return names


def files_under(d):
    out = set()
    for root, _, files in os.walk(d, followlinks=True):
        for f in files:
            out.add(os.path.relpath(os.path.join(root, f), d))
    return out


def make_fixtures(sd_train, only=None):
    cmds = load_commands()
    env = dict(os.environ, **cmds["env"])
    with tempfile.TemporaryDirectory() as tmp:
        for case, c in cmds["cases"].items():
            if only and case not in only:
                continue
            run_dir, scratch = os.path.join(tmp, case), os.path.join(tmp, case + "_scratch")
            os.makedirs(scratch)
            cmd = command(cmds, sd_train, case, run_dir, scratch)
            print("$", " ".join(cmd))
            subprocess.run(cmd, check=True, env=env)
            dest = os.path.join(OUT, case)
            shutil.rmtree(dest, ignore_errors=True)
            os.makedirs(dest)
            if kind(c) != "full":
                written = {f for f in os.listdir(run_dir) if os.path.isfile(os.path.join(run_dir, f))}
                assert written == top_level_files(case, c), (case, sorted(written))
                for name in sorted(written):
                    shutil.copyfile(os.path.join(run_dir, name), os.path.join(dest, name))
                    print(f"  {case}/{name}: {os.path.getsize(os.path.join(dest, name))} bytes")
                continue
            source = os.path.join(DATA, c["source"])
            saved = files_under(run_dir) - {f for f in files_under(run_dir) if f.startswith("logs/")}
            # Every file of the starting pipeline is in the saved folder (nothing dropped), plus the single file.
            assert saved == files_under(source) | {"model.safetensors"}, (case, sorted(saved ^ files_under(source)))
            for rel in sorted(saved):
                src, dst = os.path.join(run_dir, rel), os.path.join(dest, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                orig = os.path.join(source, rel)
                if os.path.exists(orig) and filecmp.cmp(src, orig, shallow=False):
                    assert not rel.endswith(("model.safetensors", "diffusion_pytorch_model.safetensors")) or \
                        rel.split("/")[0] not in ("unet", "text_encoder", "text_encoder_2"), f"{rel} was not trained"
                    os.symlink(os.path.relpath(orig, os.path.dirname(dst)), dst)
                else:
                    shutil.copyfile(src, dst)
                    print(f"  {case}/{rel}: {os.path.getsize(dst)} bytes")


# ------------------------------------------------------------------------------------------ inputs and outputs

def captions_of(c):
    return DB_CAPTIONS if flag(c, "instance_prompt") else CAPTIONS


def make_inputs(case, pipe, captions):
    g = torch.Generator().manual_seed(77 if case.startswith("sd1") else 78)
    io = {"sample": torch.randn(2, 4, 16, 16, generator=g), "timestep": torch.tensor([901.0, 37.0]),
          "encoder_hidden_states": torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g)}
    if case.startswith("sdxl"):
        io["text_embeds"] = torch.randn(2, pipe.text_encoder_2.config.projection_dim, generator=g)
        io["time_ids"] = torch.tensor([[32.0, 32, 0, 0, 32, 32], [48, 32, 4, 8, 32, 32]])
    io["input_ids"] = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                                     return_tensors="pt").input_ids
    if case.startswith("sdxl"):
        io["input_ids_2"] = pipe.tokenizer_2(captions, padding="max_length", max_length=77, truncation=True,
                                             return_tensors="pt").input_ids
    return io


def run(pipe, io):
    out = {}
    with torch.no_grad():
        kw = {}
        if "text_embeds" in io:
            kw["added_cond_kwargs"] = {"text_embeds": io["text_embeds"], "time_ids": io["time_ids"]}
        out["unet"] = pipe.unet(io["sample"], io["timestep"], io["encoder_hidden_states"], **kw).sample
        out["te"] = pipe.text_encoder(io["input_ids"]).last_hidden_state
        if "input_ids_2" in io:
            o = pipe.text_encoder_2(io["input_ids_2"])
            out["te2"] = o.last_hidden_state
            out["te2_embeds"] = o.text_embeds
    for k, v in out.items():
        assert v.dtype == torch.float32 and torch.isfinite(v).all(), k
    return out


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def components(case):
    return ["unet", "text_encoder"] + (["text_encoder_2"] if case.startswith("sdxl") else [])


def load_base(case, source):
    return pipe_class(case).from_pretrained(source, dtype=torch.float32)


# ------------------------------------------------------------------------------------------ LoRA

def file_modules(path):
    """Component -> number of adapted modules in a LoRA file of either layout."""
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
    count = {}
    for k in keys:
        if k.endswith((".lora_A.weight", ".lora_down.weight")):
            if k.startswith(("unet.", "lora_unet_")):
                c = "unet"
            elif k.startswith(("text_encoder_2.", "lora_te2_")):
                c = "text_encoder_2"
            else:
                assert k.startswith(("text_encoder.", "lora_te_", "lora_te1_")), k
                c = "text_encoder"
            count[c] = count.get(c, 0) + 1
    return count


def lora_case(case, source, io, base):
    d = os.path.join(OUT, case)
    outs = {}
    for layout, name in LORA_FILES.items():
        path = os.path.join(d, name)
        pipe = load_base(case, source)
        with Captured(f"{case} load_lora_weights({name})"):
            pipe.load_lora_weights(d, weight_name=name)
        injected = {c: sum(isinstance(m, LoraLayer) for m in getattr(pipe, c).modules()) for c in components(case)}
        expected = file_modules(path)
        print(f"{case}: {layout:9s} file modules {expected}, diffusers adapted {injected}")
        assert injected == {c: expected.get(c, 0) for c in components(case)}, (case, layout, injected, expected)
        outs[layout] = run(pipe, io)
        for k, v in outs[layout].items():
            effect = rel(v, base[k])
            print(f"{case}: {layout:9s} {k:10s} LoRA effect {effect:.4f}")
            assert effect > 1e-2, (case, layout, k, effect)
    for k in base:
        e = rel(outs["kohya"][k], outs["diffusers"][k])
        print(f"{case}: kohya vs diffusers layout {k:10s} rel err {e:.2e}")
        assert e < 1e-5, (case, k, e)
    return outs


# ------------------------------------------------------------------------------------------ full fine-tunes

def check_component_folders(case, d):
    """Each trained component loads alone with no missing / unexpected keys."""
    for c in components(case):
        path = os.path.join(d, c)
        with Captured(f"{case} {c}.from_pretrained"):
            if c == "unet":
                _, info = UNet2DConditionModel.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
            else:
                cls = CLIPTextModelWithProjection if c == "text_encoder_2" else CLIPTextModel
                _, info = cls.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        print(f"{case}: {c}/ loading info: {({k: len(v) for k, v in info.items()})}")
        assert not bad, (case, c, bad)


def text_encoder_2_from_single_file(path, source):
    """diffusers' own converter on the OpenCLIP-bigG part (see the module docstring)."""
    cfg = CLIPTextConfig.from_pretrained(os.path.join(source, "text_encoder_2"))
    model = CLIPTextModelWithProjection(cfg).to(torch.float32).eval()  # the config says float16
    checkpoint = load_file(path)
    sd = convert_open_clip_checkpoint(model, checkpoint, prefix="conditioner.embedders.1.model.")
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    assert not missing and not unexpected, (missing, unexpected)
    return model


def full_case(case, source, io, base):
    d = os.path.join(OUT, case)
    single = os.path.join(d, "model.safetensors")
    cls = pipe_class(case)
    check_component_folders(case, d)
    with Captured(f"{case} from_pretrained(folder)"):
        folder = cls.from_pretrained(d, dtype=torch.float32)
    kw = {}
    if case.startswith("sdxl"):
        plain = cls.from_single_file(single, config=source, dtype=torch.float32, local_files_only=True)
        te2 = plain.text_encoder_2.state_dict()
        on_meta = [k for k, v in te2.items() if v.is_meta]
        te1 = {"text_model." + k if not k.startswith("text_model.") else k: v
               for k, v in folder.text_encoder.state_dict().items()}
        clip_l = all(torch.equal(v, te1[k]) for k, v in te2.items() if not v.is_meta and k in te1)
        print(f"{case}: plain from_single_file: text_encoder_2 left on meta: {on_meta}; "
              f"its other weights are text_encoder's (CLIP-L): {clip_l}")
        kw["text_encoder_2"] = text_encoder_2_from_single_file(single, source)
    with Captured(f"{case} from_single_file"):
        from_file = cls.from_single_file(single, config=source, dtype=torch.float32, local_files_only=True, **kw)
    for c in components(case) + ["vae"]:
        a, b = getattr(folder, c).state_dict(), getattr(from_file, c).state_dict()
        a = {k: v for k, v in a.items() if not k.endswith("position_ids")}
        b = {k: v for k, v in b.items() if not k.endswith("position_ids")}
        assert set(a) == set(b), (case, c, sorted(set(a) ^ set(b))[:5])
        differ = [k for k in a if b[k].is_meta or b[k].dtype != a[k].dtype or not torch.equal(a[k], b[k])]
        print(f"{case}: {c:14s} single file == folder: {len(a) - len(differ)} of {len(a)} tensors")
        assert not differ, (case, c, differ[:5])
    outs = {"folder": run(folder, io), "single": run(from_file, io)}
    for k, v in outs["folder"].items():
        effect = rel(v, base[k])
        print(f"{case}: {k:10s} fine-tune effect {effect:.4f}")
        assert effect > 1e-2, (case, k, effect)
        assert torch.equal(outs["single"][k], v), (case, k)
    return outs


# ------------------------------------------------------------------------------------------ textual inversion

def ti_file_name(c):
    """The A1111 file's stem: the placeholder without <> (sd_train's embedding_file_name)."""
    return re.sub(r'[<>/\\:*?"|]', "", flag(c, "placeholder_token")) + ".safetensors"


def encode_ti(pipe, prompts, sdxl):
    """Token ids (after diffusers' maybe_convert_prompt) and the encoder outputs encode_prompt uses."""
    def ids_of(tok):
        text = pipe.maybe_convert_prompt(prompts, tok)
        return tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    out = {"ids": ids_of(pipe.tokenizer)}
    with torch.no_grad():
        if not sdxl:
            out["te"] = pipe.text_encoder(out["ids"]).last_hidden_state
            pe, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
            assert torch.equal(pe, out["te"]), "encode_prompt differs from last_hidden_state"
        else:
            out["ids2"] = ids_of(pipe.tokenizer_2)
            o1 = pipe.text_encoder(out["ids"], output_hidden_states=True)
            o2 = pipe.text_encoder_2(out["ids2"], output_hidden_states=True)
            out["te"], out["te2"], out["te2_embeds"] = o1.hidden_states[-2], o2.hidden_states[-2], o2.text_embeds
            pe, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
            assert torch.equal(pe, torch.cat([out["te"], out["te2"]], -1)), "encode_prompt's prompt_embeds"
            assert torch.equal(pooled, out["te2_embeds"]), "encode_prompt's pooled_prompt_embeds"
    for k, v in out.items():
        assert k.startswith("ids") or (v.dtype == torch.float32 and torch.isfinite(v).all()), k
    return out


def expect_rows(what, tok, te, token, rows):
    """tok has token, token_1, ... (one per row) as consecutive new ids whose embedding rows are `rows`."""
    names = [token] + [f"{token}_{i}" for i in range(1, rows.shape[0])]
    ids = tok.convert_tokens_to_ids(names)
    table = te.get_input_embeddings().weight
    print(f"  {what}: tokens {names} -> ids {ids} (vocabulary {len(tok)}, embedding rows {table.shape[0]})")
    assert ids == list(range(ids[0], ids[0] + len(names))) and ids[-1] == len(tok) - 1, (what, ids)
    assert f"{token}_{rows.shape[0]}" not in tok.get_vocab(), (what, "too many vectors")
    assert torch.equal(table[ids].detach(), rows.float()), (what, "embedding rows differ from the file's")


def ti_case(case, c, source):
    d = os.path.join(OUT, case)
    sdxl = case.startswith("sdxl")
    cls = pipe_class(case)
    token = flag(c, "placeholder_token")
    n = int(flag(c, "num_vectors", "1"))
    a1111 = ti_file_name(c)
    trigger = a1111[:-len(".safetensors")]
    init = " ".join([flag(c, "initializer_token")] * n)
    prompts = {"plain": [p.format(token) for p in TI_PROMPTS], "init": [p.format(init) for p in TI_PROMPTS],
               "diffusers": [p.format(token) for p in TI_PROMPTS], "a1111": [p.format(trigger) for p in TI_PROMPTS]}
    learned = load_file(os.path.join(d, "learned_embeds.safetensors"))
    assert list(learned) == [token] and learned[token].shape[0] == n, {k: v.shape for k, v in learned.items()}
    a1111_sd = load_file(os.path.join(d, a1111))
    outs = {}
    for variant in ("plain", "init", "diffusers", "a1111"):
        pipe = cls.from_pretrained(source, dtype=torch.float32)
        with Captured(f"{case} {variant} load_textual_inversion"):
            if variant == "diffusers" and not sdxl:
                pipe.load_textual_inversion(d, weight_name="learned_embeds.safetensors")
            elif variant == "diffusers":  # textual_inversion_sdxl.py's pair, one file per encoder
                pipe.load_textual_inversion(d, weight_name="learned_embeds.safetensors")
                pipe.load_textual_inversion(d, weight_name="learned_embeds_2.safetensors",
                                            text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
            elif variant == "a1111" and not sdxl:
                pipe.load_textual_inversion(os.path.join(d, a1111), token=trigger)
            elif variant == "a1111":  # diffusers' documented recipe for SDXL clip_l / clip_g files
                assert sorted(a1111_sd) == ["clip_g", "clip_l"], sorted(a1111_sd)
                pipe.load_textual_inversion(a1111_sd["clip_g"], token=trigger, text_encoder=pipe.text_encoder_2,
                                            tokenizer=pipe.tokenizer_2)
                pipe.load_textual_inversion(a1111_sd["clip_l"], token=trigger, text_encoder=pipe.text_encoder,
                                            tokenizer=pipe.tokenizer)
        if variant == "diffusers":
            expect_rows(f"{case} learned_embeds", pipe.tokenizer, pipe.text_encoder, token, learned[token])
            if sdxl:
                second = load_file(os.path.join(d, "learned_embeds_2.safetensors"))
                assert list(second) == [token], list(second)
                expect_rows(f"{case} learned_embeds_2", pipe.tokenizer_2, pipe.text_encoder_2, token, second[token])
            converted = pipe.maybe_convert_prompt(prompts[variant][0], pipe.tokenizer)
            print(f"  {case}: maybe_convert_prompt({prompts[variant][0]!r}) = {converted!r}")
            assert converted == prompts[variant][0].replace(token, " ".join(
                [token] + [f"{token}_{i}" for i in range(1, n)])), converted
        if variant == "a1111":
            rows = a1111_sd["clip_l"] if sdxl else a1111_sd["emb_params"]
            expect_rows(f"{case} {a1111}", pipe.tokenizer, pipe.text_encoder, trigger, rows)
            if sdxl:
                expect_rows(f"{case} {a1111} clip_g", pipe.tokenizer_2, pipe.text_encoder_2, trigger, a1111_sd["clip_g"])
        outs[variant] = encode_ti(pipe, prompts[variant], sdxl)
        print(f"{case}: {variant:9s} ids {outs[variant]['ids'][0, :12].tolist()} ...")
    # The A1111 file holds the same vectors as learned_embeds(_2): the same ids and outputs.
    for k, v in outs["diffusers"].items():
        assert torch.equal(outs["a1111"][k], v), (case, k, "a1111 file differs from learned_embeds")
    # The embedding matters: against the prompt without it and against the untrained (initializer) vectors.
    for against in ("plain", "init"):
        for k, v in outs["diffusers"].items():
            if k.startswith("ids"):
                continue
            effect = rel(v, outs[against][k])
            print(f"{case}: {k:10s} embedding vs {against:5s} {effect:.4f}")
            assert effect > 1e-2, (case, against, k, effect)
    record = {f"{k}_{variant}": v for variant, o in outs.items() for k, v in o.items()}
    meta = {"prompts": json.dumps(prompts), "token": token, "a1111_trigger": trigger, "num_vectors": str(n)}
    path = os.path.join(OUT, f"{case}_io.safetensors")
    save_file({k: v.contiguous() for k, v in record.items()}, path, metadata=meta)
    os.chmod(path, 0o644)


# ------------------------------------------------------------------------------------------ main

def make_case(case, c):
    source = os.path.join(DATA, c["source"])
    if kind(c) == "ti":
        return ti_case(case, c, source)
    base_pipe = load_base(case, source)
    captions = captions_of(c)
    io = make_inputs(case, base_pipe, captions)
    base = run(base_pipe, io)
    outs = lora_case(case, source, io, base) if kind(c) == "lora" else full_case(case, source, io, base)
    record = dict(io)
    for k, v in base.items():
        record[f"{k}_base"] = v
    for variant, o in outs.items():
        for k, v in o.items():
            record[f"{k}_{variant}"] = v
    path = os.path.join(OUT, f"{case}_io.safetensors")
    save_file({k: v.contiguous() for k, v in record.items()}, path, metadata={"captions": json.dumps(captions)})
    os.chmod(path, 0o644)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd_train", help="rerun the sd_train commands with this binary first")
    ap.add_argument("--cases", nargs="*", help="only these cases (default: all of commands.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.sd_train:
        make_fixtures(os.path.abspath(args.sd_train), args.cases)
    for case, c in load_commands()["cases"].items():
        if not args.cases or case in args.cases:
            make_case(case, c)
    total = 0
    for root, _, files in os.walk(OUT):
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    print(f"tests/data/train_outputs: {total} bytes")


if __name__ == "__main__":
    main()
