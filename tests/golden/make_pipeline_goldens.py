#!/usr/bin/env python3
"""Reference data for the C++ pipelines (tests/infer/pipeline_golden_test.cpp) and the sd_infer
end-to-end tests, made by diffusers' own pipelines.

Python is only the test oracle; CI never runs this script. It writes:

tests/data/pipe_tiny_<name>/   tiny random-weight diffusers pipeline folders, written by the pipelines'
                               save_pretrained (model_index.json, scheduler/, unet/, vae/, text_encoder*/,
                               tokenizer*/), all weights float16 (the f32 runs below read exactly these values):
  sd1      StableDiffusionPipeline: unet_tiny_sd1, vae_tiny, clip_tiny_l, PNDMScheduler with SD1.5's config
  sd2      StableDiffusionPipeline: unet_tiny_sd2, vae_tiny, clip_tiny_h (pad "!"), DDIMScheduler with SD2.1's
           768-v config (prediction_type v_prediction)
  sdxl     StableDiffusionXLPipeline: unet_tiny_sdxl, vae_tiny, two NEW tiny text encoders (CLIP-L-like width 16,
           OpenCLIP-bigG-like width 16 with a 16-wide projection): unet_tiny_sdxl takes a 32-wide context (16 + 16)
           and 16-wide pooled embeddings, which clip_tiny_l / clip_tiny_bigg (32 wide, projection 24) do not fit.
           EulerDiscreteScheduler with SDXL base's config, force_zeros_for_empty_prompt true
  sdxl_refiner  StableDiffusionXLImg2ImgPipeline (refiner layout: text_encoder_2 / tokenizer_2 only, a NEW tiny
           UNet with 5 time ids (aesthetic score), requires_aesthetics_score true, force_zeros false), sharing
           the sdxl pipeline's second text encoder and VAE
  lcm      LatentConsistencyModelPipeline: unet_tiny_lcm (time_cond_proj_dim 16, context 24), vae_tiny, a NEW tiny
           CLIP-L-like encoder of width 24 (clip_tiny_l is 32 wide), LCMScheduler with the LCM hub config
  The tokenizers are the project's CLIP vocabulary (tests/data/clip) cut to 1000 tokens, the vocabulary size of
  the tiny text encoders: the 512 byte tokens, the first 486 merges (merge i makes token 512 + i, as in CLIP's
  own vocabulary) and <|startoftext|> 998, <|endoftext|> 999. transformers 5 saves tokenizers as tokenizer.json
  only; vocab.json and merges.txt are written next to it, as hub folders have them.

tests/data/pipelines/cases.json, goldens.safetensors, init.png
  One entry per case: pipeline folder, scheduler switch (the sd_infer --scheduler name and the diffusers
  from_config call it stands for), steps, guidance, prompts, size, ... For each case <c>:
    <c>.latents    the `latents=` argument given to the pipeline (unscaled noise; the pipeline multiplies it by
                   init_noise_sigma), [B, 4, h, w]
    <c>.noise.<i>  every other randn_tensor draw, in order (img2img: the VAE posterior sample, then the noise
                   added to the image latents; LCM: the noise of each step but the last)
    <c>.out_latents  the pipeline's output with output_type="latent"
    <c>.image      vae.decode(out_latents / scaling_factor): the decoded image BEFORE clamping, [B, 3, H, W]
  The pipeline's own output_type="pt" image (clamped to [0, 1]) is checked here to equal
  (image / 2 + 0.5).clamp(0, 1).
  Files identical to one in an earlier pipeline folder (VAE, tokenizers, the shared text encoder) are relative
  symlinks to it (pipe_tiny_sd1 holds real files).
  init.png is the img2img input (a synthetic 48x32 RGB picture).

Run: python3 tests/golden/make_pipeline_goldens.py   (torch 2.x CPU, diffusers 0.42, transformers 5)
"""
import json
import os
import shutil
import types

from fixture_hygiene import strip_machine_paths

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

import diffusers
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       LatentConsistencyModelPipeline, LCMScheduler, PNDMScheduler, StableDiffusionImg2ImgPipeline,
                       StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(ROOT, "tests", "data")
OUT = os.path.join(DATA, "pipelines")

BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
# The hub scheduler configs (FORMATS.md §2.5).
SCHED_SD15 = dict(_class=PNDMScheduler, **BETAS, prediction_type="epsilon", set_alpha_to_one=False, skip_prk_steps=True,
                  steps_offset=1, clip_sample=False)
SCHED_SD21 = dict(_class=DDIMScheduler, **BETAS, prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1,
                  clip_sample=False)
SCHED_SDXL = dict(_class=EulerDiscreteScheduler, **BETAS, prediction_type="epsilon", interpolation_type="linear",
                  timestep_spacing="leading", steps_offset=1, use_karras_sigmas=False)
SCHED_LCM = dict(_class=LCMScheduler, **BETAS, prediction_type="epsilon", original_inference_steps=50,
                 set_alpha_to_one=True, steps_offset=1, timestep_scaling=10.0, timestep_spacing="leading",
                 clip_sample=False)

# sd_infer --scheduler NAME -> what diffusers users write (infer/scheduler.cpp short names).
SWITCH = {
    None: lambda cfg: None,
    "ddim": lambda cfg: DDIMScheduler.from_config(cfg),
    "euler": lambda cfg: EulerDiscreteScheduler.from_config(cfg),
    "dpm++2m": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++", solver_order=2,
                                                                    use_karras_sigmas=False),
    "dpm++2m_karras": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver++",
                                                                           solver_order=2, use_karras_sigmas=True),
}


def make_scheduler(spec):
    spec = dict(spec)
    cls = spec.pop("_class")
    return cls.from_config(spec)  # as a hub file is read: keys the class does not take are ignored


# ---- tiny tokenizer --------------------------------------------------------------------------------
TOKENS = 1000
MERGES = TOKENS - 512 - 2


def write_tiny_vocab(dst):
    vocab = json.load(open(os.path.join(DATA, "clip", "vocab.json"), encoding="utf-8"))
    lines = open(os.path.join(DATA, "clip", "merges.txt"), encoding="utf-8").read().split("\n")
    merges = [l for l in lines[1:] if l][:MERGES]
    inv = {v: k for k, v in vocab.items()}
    for i, m in enumerate(merges):  # CLIP's order: merge i produces token 512 + i
        a, b = m.split()
        assert vocab[a + b] == 512 + i, m
    tiny = {inv[i]: i for i in range(512 + MERGES)}
    tiny["<|startoftext|>"] = TOKENS - 2
    tiny["<|endoftext|>"] = TOKENS - 1
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(tiny, f, ensure_ascii=False)
    with open(os.path.join(dst, "merges.txt"), "w", encoding="utf-8") as f:
        f.write(lines[0] + "\n" + "\n".join(merges) + "\n")


def make_tokenizer(vocab_dir, pad):
    return CLIPTokenizer(os.path.join(vocab_dir, "vocab.json"), os.path.join(vocab_dir, "merges.txt"), pad_token=pad,
                         model_max_length=77)


# ---- components --------------------------------------------------------------------------------------
def randomise_norms(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            parts = name.split(".")
            if any("norm" in s for s in parts[-2:-1]):
                if parts[-1] == "weight":
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def new_text_encoder(width, projection, act, seed):
    cfg = CLIPTextConfig(vocab_size=TOKENS, hidden_size=width, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act=act, projection_dim=projection or 512,
                         bos_token_id=TOKENS - 2, eos_token_id=2 if projection else TOKENS - 1, pad_token_id=1)
    torch.manual_seed(seed)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # std 0.1 instead of 0.02: hidden states that differ visibly per token
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    randomise_norms(model, gen)
    return model.to(torch.float16)


def load_text_encoder(name, eos=None):
    model = CLIPTextModel.from_pretrained(os.path.join(DATA, name), dtype=torch.float16)
    if eos is not None:  # the tiny tokenizer's special ids (pooling reads eos_token_id)
        model.config.bos_token_id = TOKENS - 2
        model.config.eos_token_id = eos
    return model


def load_unet(name, **kw):
    return UNet2DConditionModel.from_pretrained(os.path.join(DATA, name), torch_dtype=torch.float16, **kw)


def new_refiner_unet(seed):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=[2, 2],
                                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=16 + 5 * 8, upcast_attention=True)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    randomise_norms(unet, gen)
    return unet.to(torch.float16)


def load_vae():
    return AutoencoderKL.from_pretrained(os.path.join(DATA, "vae_tiny"), torch_dtype=torch.float16)


def save_pipeline(pipe, name, vocab_dir):
    dst = os.path.join(DATA, name)
    shutil.rmtree(dst, ignore_errors=True)
    pipe.save_pretrained(dst, safe_serialization=True)
    for tok in ("tokenizer", "tokenizer_2"):
        if os.path.isdir(os.path.join(dst, tok)):
            for f in ("vocab.json", "merges.txt"):
                shutil.copy(os.path.join(vocab_dir, f), os.path.join(dst, tok, f))
            os.remove(os.path.join(dst, tok, "tokenizer.json"))  # rebuilt from vocab.json + merges.txt
    strip_machine_paths(dst)
    return dst


def link_duplicates(names):
    """Replaces each file identical to one in an earlier pipeline folder by a relative symlink to it (the VAE, the
    tokenizers and the shared text encoder appear in several pipelines): keeps the working tree small."""
    import hashlib
    first = {}
    for name in names:
        for root, _, files in sorted(os.walk(os.path.join(DATA, name))):
            for f in sorted(files):
                path = os.path.join(root, f)
                digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
                if digest in first and os.path.getsize(path) > 1024:
                    os.remove(path)
                    os.symlink(os.path.relpath(first[digest], root), path)
                else:
                    first.setdefault(digest, path)


def build_pipelines(vocab_dir):
    tok_eos = make_tokenizer(vocab_dir, "<|endoftext|>")
    tok_bang = make_tokenizer(vocab_dir, "!")
    paths = {}
    pipe = StableDiffusionPipeline(vae=load_vae(), text_encoder=load_text_encoder("clip_tiny_l", eos=TOKENS - 1),
                                   tokenizer=tok_eos, unet=load_unet("unet_tiny_sd1", variant="fp16"),
                                   scheduler=make_scheduler(SCHED_SD15), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    paths["sd1"] = save_pipeline(pipe, "pipe_tiny_sd1", vocab_dir)
    pipe = StableDiffusionPipeline(vae=load_vae(), text_encoder=load_text_encoder("clip_tiny_h"), tokenizer=tok_bang,
                                   unet=load_unet("unet_tiny_sd2"), scheduler=make_scheduler(SCHED_SD21),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    paths["sd2"] = save_pipeline(pipe, "pipe_tiny_sd2", vocab_dir)
    te2 = new_text_encoder(16, 16, "gelu", seed=32)
    pipe = StableDiffusionXLPipeline(vae=load_vae(), text_encoder=new_text_encoder(16, None, "quick_gelu", seed=31),
                                     text_encoder_2=te2, tokenizer=tok_eos, tokenizer_2=tok_bang,
                                     unet=load_unet("unet_tiny_sdxl"), scheduler=make_scheduler(SCHED_SDXL),
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    paths["sdxl"] = save_pipeline(pipe, "pipe_tiny_sdxl", vocab_dir)
    pipe = StableDiffusionXLImg2ImgPipeline(vae=load_vae(), text_encoder=None, text_encoder_2=te2, tokenizer=None,
                                            tokenizer_2=tok_bang, unet=new_refiner_unet(seed=33),
                                            scheduler=make_scheduler(SCHED_SDXL), requires_aesthetics_score=True,
                                            force_zeros_for_empty_prompt=False, add_watermarker=False)
    paths["sdxl_refiner"] = save_pipeline(pipe, "pipe_tiny_sdxl_refiner", vocab_dir)
    pipe = LatentConsistencyModelPipeline(vae=load_vae(), text_encoder=new_text_encoder(24, None, "quick_gelu", seed=34),
                                          tokenizer=tok_eos, unet=load_unet("unet_tiny_lcm"),
                                          scheduler=make_scheduler(SCHED_LCM), safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    paths["lcm"] = save_pipeline(pipe, "pipe_tiny_lcm", vocab_dir)
    link_duplicates(["pipe_tiny_sd1", "pipe_tiny_sd2", "pipe_tiny_sdxl", "pipe_tiny_sdxl_refiner", "pipe_tiny_lcm"])
    return paths


# ---- noise -------------------------------------------------------------------------------------------
class NoiseTable:
    """Stands in for diffusers' randn_tensor: records each draw (recording) or serves the recorded ones (replay)."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)
        self.draws, self.replay, self.pos = [], None, 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        if self.replay is not None:
            t = self.replay[self.pos]
            self.pos += 1
            assert tuple(t.shape) == tuple(shape), (t.shape, shape)
        else:
            t = torch.randn(tuple(shape), generator=self.gen)
            self.draws.append(t)
        return t.to(dtype=dtype or torch.float32)

    def start_replay(self):
        self.replay, self.pos = list(self.draws), 0


PATCHED = ["diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
           "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img",
           "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl",
           "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img",
           "diffusers.pipelines.latent_consistency_models.pipeline_latent_consistency_text2img",
           "diffusers.schedulers.scheduling_lcm",
           "diffusers.models.autoencoders.vae"]


def patch_noise(table):
    import importlib
    for m in PATCHED:
        importlib.import_module(m).randn_tensor = table


# ---- cases -------------------------------------------------------------------------------------------
PROMPT = "a red cartoon cat"
CASES = [
    # name, pipeline, fields
    dict(name="sd1_ddim", pipe="sd1", scheduler="ddim", steps=6, guidance_scale=7.5, negative_prompt="blurry",
         height=32, width=48, num_images=2),
    dict(name="sd1_euler", pipe="sd1", scheduler="euler", steps=6, guidance_scale=7.5, guidance_rescale=0.7,
         height=32, width=48),
    dict(name="sd1_dpmpp_2m_karras", pipe="sd1", scheduler="dpm++2m_karras", steps=8, guidance_scale=6.0,
         negative_prompt="low quality, blurry", clip_skip=1, height=48, width=32),
    dict(name="sd1_pndm", pipe="sd1", scheduler=None, steps=6, guidance_scale=7.5, height=32, width=32),
    dict(name="sd1_img2img", pipe="sd1", scheduler="euler", steps=10, guidance_scale=7.5, negative_prompt="blurry",
         strength=0.6, init_image="init.png"),
    dict(name="sd2_euler", pipe="sd2", scheduler="euler", steps=6, guidance_scale=7.5, negative_prompt="blurry",
         height=32, width=48),
    dict(name="sd2_ddim", pipe="sd2", scheduler=None, steps=6, guidance_scale=7.5, height=32, width=48),
    dict(name="sdxl_euler", pipe="sdxl", scheduler=None, steps=6, guidance_scale=5.0, height=32, width=48),
    dict(name="sdxl_dpmpp_2m", pipe="sdxl", scheduler="dpm++2m", steps=6, guidance_scale=5.0, negative_prompt="blurry",
         height=32, width=48, original_size=[64, 96], crops_coords_top_left=[2, 4], target_size=[32, 48]),
    dict(name="sdxl_refiner", pipe="sdxl", refiner="sdxl_refiner", scheduler=None, steps=8, guidance_scale=5.0,
         negative_prompt="blurry", height=32, width=48, high_noise_frac=0.75),
    dict(name="lcm_4", pipe="lcm", scheduler=None, steps=4, guidance_scale=8.5, height=32, width=48),
]


def latent_shape(pipe, case):
    f = pipe.vae_scale_factor
    return (case.get("num_images", 1), pipe.unet.config.in_channels, case["height"] // f, case["width"] // f)


def run_case(paths, case, seed):
    table = NoiseTable(seed)
    patch_noise(table)
    kind = case["pipe"]
    cls = {"sd1": StableDiffusionPipeline, "sd2": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline,
           "lcm": LatentConsistencyModelPipeline}[kind]
    if "init_image" in case:
        cls = StableDiffusionImg2ImgPipeline
    pipe = cls.from_pretrained(paths[kind], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    te = getattr(pipe, "text_encoder", None)
    if te is not None and not hasattr(te, "text_model"):
        # transformers >= 5.6 flattened CLIPTextModel (no .text_model); diffusers 0.42's clip_skip path still
        # calls text_encoder.text_model.final_layer_norm: give it that name for the same module.
        te.__dict__["text_model"] = types.SimpleNamespace(final_layer_norm=te.final_layer_norm)
    new = SWITCH[case["scheduler"]](pipe.scheduler.config)
    if new is not None:
        pipe.scheduler = new
    kw = dict(prompt=PROMPT, num_inference_steps=case["steps"], guidance_scale=case["guidance_scale"],
              num_images_per_prompt=case.get("num_images", 1))
    if kind != "lcm":
        kw["negative_prompt"] = case.get("negative_prompt")
    for k in ("guidance_rescale", "clip_skip", "original_size", "crops_coords_top_left", "target_size"):
        if k in case:
            kw[k] = tuple(case[k]) if isinstance(case[k], list) else case[k]
    result = {}
    if "init_image" in case:
        img = Image.open(os.path.join(OUT, case["init_image"])).convert("RGB")
        kw.update(image=img, strength=case["strength"])
    else:
        kw.update(height=case["height"], width=case["width"])
        lat = torch.randn(latent_shape(pipe, case), generator=torch.Generator().manual_seed(seed + 1000))
        kw["latents"] = lat
        result["latents"] = lat

    refiner = None
    if "refiner" in case:
        refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(paths[case["refiner"]], torch_dtype=torch.float32)
        refiner.set_progress_bar_config(disable=True)

    def go(output_type):
        with torch.no_grad():
            if refiner is None:
                return cls.__call__(pipe, output_type=output_type, **kw)[0]
            base = pipe(output_type="latent", denoising_end=case["high_noise_frac"], **kw)[0]
            return refiner(prompt=PROMPT, negative_prompt=case.get("negative_prompt"), image=base,
                           num_inference_steps=case["steps"], guidance_scale=case["guidance_scale"],
                           denoising_start=case["high_noise_frac"], output_type=output_type)[0]

    out_latents = go("latent")
    table.start_replay()
    image_pt = go("pt")
    assert table.pos == len(table.draws)
    vae = (refiner or pipe).vae
    with torch.no_grad():
        image = vae.decode(out_latents / vae.config.scaling_factor, return_dict=False)[0]
    expect_pt = (image / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(image_pt, expect_pt, atol=1e-6), (image_pt - expect_pt).abs().max()
    result.update(out_latents=out_latents, image=image)
    for i, t in enumerate(table.draws):
        result[f"noise.{i}"] = t
    print(f"{case['name']:22s} latents {tuple(out_latents.shape)} |image| {image.norm():.4f} "
          f"range [{image.min():.3f}, {image.max():.3f}] noise draws {len(table.draws)}")
    return result


def write_init_image():
    h, w = 32, 48
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), ((x // 8 + y // 8) % 2) * 200 + 30], -1).astype(np.uint8)
    img[8:20, 14:30] = [230, 40, 40]
    Image.fromarray(img).save(os.path.join(OUT, "init.png"))


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    vocab_dir = os.path.join(OUT, "_vocab")
    write_tiny_vocab(vocab_dir)
    paths = build_pipelines(vocab_dir)
    write_init_image()
    tensors = {}
    for i, case in enumerate(CASES):
        for k, v in run_case(paths, case, seed=100 + i).items():
            tensors[f"{case['name']}.{k}"] = v.contiguous().float()
    save_file(tensors, os.path.join(OUT, "goldens.safetensors"))
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"prompt": PROMPT, "diffusers": diffusers.__version__, "cases": CASES}, f, indent=1)
    shutil.rmtree(vocab_dir)
    total = 0
    for root, _, files in os.walk(DATA):
        if "/pipe_tiny_" in root or root.endswith("pipelines"):
            total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    print(f"pipelines + goldens: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
