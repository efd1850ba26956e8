#!/usr/bin/env python3
"""Reference data for the C++ schedulers (tests/infer/scheduler_golden_test.cpp), made by diffusers.

Python is only the test oracle; CI never runs this script. It writes tests/data/schedulers/:

cases.json            presets (scheduler_config.json contents), the shared sample shape, and per case:
                      preset, short (the --scheduler name, "" = the preset's own class), overrides
                      (from_config keyword arguments), n, strength, eta, init_noise_sigma, the number of
                      noise draws, run_offset, and the UNet-input scale of every step (scale_model_input
                      of 1; absent where all are 1); per sweep: preset, short, overrides, ns and lengths.
goldens.safetensors   shared inputs and per-case outputs (cases are c<index>, sweeps s<index>, in the order
                      of cases.json):
    sample             [2, 2, 2, 2] the initial noise (text2img: latents = sample * init_noise_sigma)
    image, image_noise the img2img latents and the noise add_noise mixes into them
    eps.0 .. eps.2     the "model": step i's output is eps[i % 3] + 0.05 * scale_model_input(x_i, t_i)
    noise.0 .. noise.6 the noise table: diffusers' randn_tensor is replaced by noise[k % 7] for draw k
    <case>.timesteps   scheduler.timesteps, the whole schedule, as float32 (exact for the int64 ones); the
                       loop ran timesteps[run_offset:] (img2img: the strength subset)
    <case>.sigmas      scheduler.sigmas (float32), for the sigma-based classes
    <case>.traj        [steps + 1, 2, 2, 2, 2] float32: the starting latents, then prev_sample of every step
    <case>.x0          pred_original_sample (LCM: denoised) of the last step, where step returns one
    ac.<name>          alphas_cumprod of a few beta configurations (float32)
    <sweep>.timesteps  timesteps (float32) of every n of the sweep (1..30, 50, 100), concatenated
    <sweep>.sigmas     their sigmas, concatenated (sigma-based classes)
    train.*            DDPMScheduler (SD betas) add_noise / get_velocity at timesteps [0, 17, 500, 999] and
                       diffusers.training_utils.compute_snr at a few timesteps

Run: python3 tests/golden/make_scheduler_goldens.py   (torch 2.x CPU, diffusers 0.42)
"""
import json
import os

import torch
import diffusers
from diffusers.training_utils import compute_snr
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "tests", "data", "schedulers")

SHAPE = [2, 2, 2, 2]
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}

# Hub scheduler_config.json contents (FORMATS.md §2.5).
PRESETS = {
    "sd15": {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", **SD_BETAS, "prediction_type": "epsilon",
             "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False,
             "trained_betas": None},
    "sd21": {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", **SD_BETAS, "clip_sample": False,
             "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "trained_betas": None},
    "sdxl": {"_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", **SD_BETAS,
             "clip_sample": False, "interpolation_type": "linear", "prediction_type": "epsilon",
             "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False},
    "lcm": {"_class_name": "LCMScheduler", "_diffusers_version": "0.22.0.dev0", **SD_BETAS, "clip_sample": False,
            "clip_sample_range": 1.0, "dynamic_thresholding_ratio": 0.995, "original_inference_steps": 50,
            "prediction_type": "epsilon", "rescale_betas_zero_snr": False, "sample_max_value": 1.0,
            "set_alpha_to_one": True, "steps_offset": 1, "thresholding": False, "timestep_scaling": 10.0,
            "timestep_spacing": "leading", "trained_betas": None},
    "turbo": {"_class_name": "EulerAncestralDiscreteScheduler", "_diffusers_version": "0.24.0.dev0", **SD_BETAS,
              "clip_sample": False, "interpolation_type": "linear", "prediction_type": "epsilon",
              "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
              "timestep_spacing": "trailing", "trained_betas": None, "use_karras_sigmas": False},
    "ddpm_defaults": {"_class_name": "DDPMScheduler"},
    # A 100-step training schedule given as trained_betas (filled in below).
    "tiny": {"_class_name": "DDIMScheduler", "num_train_timesteps": 100, "clip_sample": False,
             "set_alpha_to_one": False, "steps_offset": 1},
}
PRESETS["tiny"]["trained_betas"] = [round(0.001 + 0.0004 * i + 0.00001 * (i % 7), 6) for i in range(100)]

# --scheduler NAME -> (class, from_config overrides); the same table as infer/scheduler.cpp.
SHORT = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                "use_karras_sigmas": False}),
    "dpm++2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                       "use_karras_sigmas": True}),
    "dpm++2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
                                                    "use_karras_sigmas": False}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
SIGMA_CLASSES = {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                 "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"}

gen = torch.Generator().manual_seed(1234)
SAMPLE = torch.randn(SHAPE, generator=gen)
IMAGE = torch.randn(SHAPE, generator=gen) * 0.8
IMAGE_NOISE = torch.randn(SHAPE, generator=gen)
EPS = [torch.randn(SHAPE, generator=gen) for _ in range(3)]
NOISE = [torch.randn(SHAPE, generator=gen) for _ in range(7)]

DRAWS = []


def fake_randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
    assert list(shape) == SHAPE, shape
    k = len(DRAWS)
    DRAWS.append(k)
    return NOISE[k % len(NOISE)].clone().to(dtype if dtype is not None else torch.float32)


for mod in ["scheduling_ddpm", "scheduling_ddim", "scheduling_euler_ancestral_discrete", "scheduling_euler_discrete",
            "scheduling_dpmsolver_multistep", "scheduling_lcm"]:
    setattr(getattr(diffusers.schedulers, mod), "randn_tensor", fake_randn_tensor)


def build(preset, short, overrides):
    cfg = dict(PRESETS[preset])
    cls = SHORT[short][0] if short else cfg["_class_name"]
    kwargs = {**(SHORT[short][1] if short else {}), **overrides}
    return getattr(diffusers, cls).from_config(cfg, **kwargs), cls


def run_case(preset, short, overrides, n, strength=1.0, eta=0.0):
    s, cls = build(preset, short, overrides)
    DRAWS.clear()
    if cls == "LCMScheduler":
        s.set_timesteps(n, strength=strength)
        run = s.timesteps
        x = s.add_noise(IMAGE, IMAGE_NOISE, run[:1]) if strength < 1 else SAMPLE * s.init_noise_sigma
    elif strength < 1:
        # diffusers' img2img get_timesteps + prepare_latents
        s.set_timesteps(n)
        init_timestep = min(int(n * strength), n)
        t_start = max(n - init_timestep, 0)
        run = s.timesteps[t_start * s.order:]
        if hasattr(s, "set_begin_index"):
            s.set_begin_index(t_start * s.order)
        x = s.add_noise(IMAGE, IMAGE_NOISE, run[:1].repeat(SHAPE[0]))
    else:
        s.set_timesteps(n)
        run = s.timesteps
        x = SAMPLE * s.init_noise_sigma
    rec = {"timesteps": s.timesteps.to(torch.float32).clone()}
    run_offset = len(s.timesteps) - len(run)
    if cls in SIGMA_CLASSES:
        rec["sigmas"] = s.sigmas.to(torch.float32).clone()
    init_sigma = float(s.init_noise_sigma)
    traj = [x.clone()]
    scales = []
    x0 = None
    for i, t in enumerate(run):
        inp = s.scale_model_input(x, t)
        scales.append(float(s.scale_model_input(torch.ones(1), t)[0]))
        mo = EPS[i % 3] + 0.05 * inp
        kw = {"eta": eta} if eta else {}
        out = s.step(mo, t, x, **kw)
        x = out.prev_sample
        traj.append(x.clone())
        x0 = getattr(out, "pred_original_sample", None)
        if cls == "LCMScheduler":
            x0 = out.denoised
    rec["traj"] = torch.stack(traj).to(torch.float32)
    if x0 is not None:
        rec["x0"] = x0.to(torch.float32).clone()
    meta = {"init_noise_sigma": init_sigma, "draws": len(DRAWS), "run_offset": run_offset}
    if any(v != 1.0 for v in scales):  # (absent: every scale is 1)
        meta["scales"] = scales
    return rec, meta


CASES = []


def add(preset, short, overrides=None, ns=(1, 4, 25), strength=1.0, eta=0.0):
    for n in ns:
        CASES.append((preset, short, dict(overrides or {}), n, strength, eta))


# A. the released configs as they come
add("sd15", "")
add("sd21", "")
add("sdxl", "")
add("lcm", "", ns=(1, 2, 4, 8))
add("turbo", "", ns=(1, 2, 4))
add("ddpm_defaults", "")
# B. every --scheduler on the SD1.5 config, every spacing, both prediction types
for short in SHORT:
    if short == "lcm":
        add("sd15", "lcm", ns=(1, 2, 4, 8))
        add("sd15", "lcm", {"prediction_type": "v_prediction"}, ns=(1, 4))
        continue
    add("sd15", short, ns=(4, 25))  # the class's own default spacing
    if short == "dpm++2m_karras":  # Karras sigmas replace the spaced timesteps
        add("sd15", short, {"prediction_type": "v_prediction"})
        continue
    for spacing in ("leading", "linspace", "trailing"):
        for pred in ("epsilon", "v_prediction"):
            add("sd15", short, {"timestep_spacing": spacing, "prediction_type": pred})
# C. options
ZSNR = {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}
add("sd15", "ddpm", {"variance_type": "fixed_small_log"})
add("sd15", "ddpm", {"variance_type": "fixed_large"})
add("sd15", "ddpm", {"prediction_type": "sample"})
add("sd15", "ddpm", ZSNR)
add("sd15", "ddim", eta=1.0)
add("sd15", "ddim", {"set_alpha_to_one": True})
add("sd15", "ddim", {"clip_sample": True, "clip_sample_range": 0.5})
add("sd15", "ddim", ZSNR)
add("sd15", "ddim", {"prediction_type": "sample"})
add("sd15", "ddim", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02})
add("sd15", "ddim", {"beta_schedule": "squaredcos_cap_v2"})
add("sd15", "pndm", {"skip_prk_steps": False}, ns=(4, 25))
add("sd15", "pndm", {"skip_prk_steps": False, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    ns=(5,))
add("sd15", "pndm", {"set_alpha_to_one": True})
add("sd15", "euler", {"use_karras_sigmas": True})
add("sd15", "euler", {"use_exponential_sigmas": True})
add("sd15", "euler", {"final_sigmas_type": "sigma_min"})
add("sd15", "euler", ZSNR)
add("sd15", "euler", {"prediction_type": "sample"})
add("sd15", "euler", {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0})
add("sd15", "euler_a", ZSNR)
add("sd15", "heun", {"use_karras_sigmas": True})
add("sd15", "heun", {"use_exponential_sigmas": True})
add("sd15", "heun", {"clip_sample": True})
add("sd15", "heun", {"prediction_type": "sample"})
add("sd15", "dpm++2m", {"solver_order": 1})
add("sd15", "dpm++2m", {"solver_order": 3})
add("sd15", "dpm++2m", {"solver_type": "heun"})
add("sd15", "dpm++2m_sde", {"solver_type": "heun"})
add("sd15", "dpm++2m_sde", {"use_karras_sigmas": True})
add("sd15", "dpm++2m_sde", {"solver_order": 3})
add("sd15", "dpm++2m", {"lower_order_final": False})
add("sd15", "dpm++2m", {"final_sigmas_type": "sigma_min"})
add("sd15", "dpm++2m", {"final_sigmas_type": "sigma_min", "lower_order_final": False, "euler_at_final": True})
add("sd15", "dpm++2m", {"lambda_min_clipped": -5.1, "prediction_type": "v_prediction"})
add("sd15", "dpm++2m", {"use_lu_lambdas": True})
add("sd15", "dpm++2m", {"use_exponential_sigmas": True})
add("sd15", "dpm++2m", ZSNR)
add("sd15", "dpm++2m", {"prediction_type": "sample"})
add("sd15", "dpm++2m", {"beta_schedule": "squaredcos_cap_v2"})
add("sd15", "unipc", {"solver_type": "bh1"})  # diffusers: NaN at the last step (sd: finite, see the test)
add("sd15", "unipc", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"})
add("sd15", "unipc", {"solver_order": 1})
add("sd15", "unipc", {"solver_order": 3})
# (noise prediction cannot reach sigma 0: diffusers returns NaN there, sd refuses final_sigmas_type zero)
add("sd15", "unipc", {"predict_x0": False, "final_sigmas_type": "sigma_min"})
add("sd15", "unipc", {"predict_x0": False, "prediction_type": "v_prediction", "solver_order": 3,
                      "final_sigmas_type": "sigma_min"})
add("sd15", "unipc", {"use_karras_sigmas": True})
add("sd15", "unipc", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"})
add("sd15", "unipc", {"use_exponential_sigmas": True})
add("sd15", "unipc", {"disable_corrector": [0, 2]})
add("sd15", "unipc", {"lower_order_final": False})
add("sd15", "unipc", {"final_sigmas_type": "sigma_min"})
add("sd15", "unipc", {"prediction_type": "sample"})
add("sd15", "unipc", ZSNR)
add("sd15", "lcm", {"clip_sample": True}, ns=(4,))
add("sd15", "lcm", {"original_inference_steps": 100, "timestep_scaling": 5.0}, ns=(4, 25))
add("sd15", "lcm", {"prediction_type": "sample"}, ns=(4,))
for short in ("ddim", "euler", "dpm++2m", "unipc", "pndm"):
    add("tiny", short, ns=(1, 4, 25))
# D. img2img: the strength subset, the begin index and add_noise
for short in ("ddim", "ddpm", "pndm", "euler", "euler_a", "heun", "dpm++2m", "dpm++2m_karras", "dpm++2m_sde",
              "unipc"):
    add("sd15", short, ns=(4, 25), strength=0.6)
add("sd15", "euler", ns=(4,), strength=0.3)
add("sdxl", "", ns=(25,), strength=0.45)
add("sd15", "lcm", ns=(4,), strength=0.5)
add("lcm", "", ns=(2, 4), strength=0.8)

# Timestep / sigma sweeps over n.
SWEEP_NS = list(range(1, 31)) + [50, 100]
SWEEPS = []
for short in SHORT:
    if short == "lcm":
        SWEEPS.append(("lcm", "", {}, list(range(1, 51))))
        continue
    for spacing in ("leading", "linspace", "trailing"):
        SWEEPS.append(("sd15", short, {"timestep_spacing": spacing}, SWEEP_NS))
SWEEPS.append(("sd15", "pndm", {"skip_prk_steps": False}, [n for n in SWEEP_NS if n >= 4]))
SWEEPS.append(("sd15", "unipc", {"use_karras_sigmas": True}, SWEEP_NS))
SWEEPS.append(("sd15", "dpm++2m", {"use_lu_lambdas": True}, SWEEP_NS))
SWEEPS.append(("sd15", "dpm++2m", {"lambda_min_clipped": -5.1}, SWEEP_NS))
SWEEPS.append(("sd15", "euler", {"use_karras_sigmas": True}, SWEEP_NS))
SWEEPS.append(("tiny", "euler", {"timestep_spacing": "trailing"}, list(range(1, 31))))


def main():
    os.makedirs(OUT, exist_ok=True)
    tensors = {"sample": SAMPLE, "image": IMAGE, "image_noise": IMAGE_NOISE}
    for i, e in enumerate(EPS):
        tensors[f"eps.{i}"] = e
    for i, z in enumerate(NOISE):
        tensors[f"noise.{i}"] = z
    cases = []
    for idx, (preset, short, overrides, n, strength, eta) in enumerate(CASES):
        rec, meta = run_case(preset, short, overrides, n, strength, eta)
        for k, v in rec.items():
            tensors[f"c{idx}.{k}"] = v.contiguous()
        cases.append({"key": f"c{idx}", "preset": preset, "short": short, "overrides": overrides, "n": n,
                      "strength": strength, "eta": eta, **meta})
    sweeps = []
    for idx, (preset, short, overrides, ns) in enumerate(SWEEPS):
        name = "|".join([preset, short or "native"] + [f"{k}={json.dumps(v)}" for k, v in sorted(overrides.items())])
        ts, sg, lens, slens = [], [], [], []
        for n in ns:
            s, cls = build(preset, short, overrides)
            s.set_timesteps(n)
            ts.append(s.timesteps.to(torch.float32))
            lens.append(len(s.timesteps))
            if cls in SIGMA_CLASSES:
                sg.append(s.sigmas.to(torch.float32))
                slens.append(len(s.sigmas))
        tensors[f"s{idx}.timesteps"] = torch.cat(ts)
        if sg:
            tensors[f"s{idx}.sigmas"] = torch.cat(sg)
        sweeps.append({"name": name, "key": f"s{idx}", "preset": preset, "short": short, "overrides": overrides, "ns": ns,
                       "lengths": lens, "sigma_lengths": slens})
    # alphas_cumprod of the beta configurations used above
    acs = {
        "sd": ("sd15", "ddim", {}),
        "linear": ("ddpm_defaults", "", {}),
        "cos": ("sd15", "ddim", {"beta_schedule": "squaredcos_cap_v2"}),
        "zsnr_ddim": ("sd15", "ddim", {"rescale_betas_zero_snr": True}),
        "zsnr_euler": ("sd15", "euler", {"rescale_betas_zero_snr": True}),
        "tiny": ("tiny", "", {}),
    }
    for k, (preset, short, overrides) in acs.items():
        s, _ = build(preset, short, overrides)
        tensors[f"ac.{k}"] = s.alphas_cumprod.to(torch.float32).clone()
    # training helpers
    ddpm, _ = build("sd15", "ddpm", {})
    tb = torch.tensor([0, 17, 500, 999], dtype=torch.int64)
    g2 = torch.Generator().manual_seed(99)
    x0 = torch.randn(4, 2, 3, 3, generator=g2)
    nz = torch.randn(4, 2, 3, 3, generator=g2)
    tensors.update({"train.timesteps": tb, "train.x0": x0, "train.noise": nz,
                    "train.noisy": ddpm.add_noise(x0, nz, tb), "train.velocity": ddpm.get_velocity(x0, nz, tb)})
    ts = torch.tensor([0, 1, 17, 250, 500, 998, 999], dtype=torch.int64)
    tensors["train.snr_timesteps"] = ts
    tensors["train.snr"] = compute_snr(ddpm, ts)

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(OUT, "goldens.safetensors"), metadata={"format": "pt"})
    presets = {k: json.dumps(v) for k, v in PRESETS.items()}
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"shape": SHAPE, "presets": presets, "cases": cases, "sweeps": sweeps,
                   "diffusers": diffusers.__version__, "torch": torch.__version__}, f, separators=(",", ":"))
    size = sum(os.path.getsize(os.path.join(OUT, p)) for p in os.listdir(OUT))
    print(f"{len(cases)} cases, {len(sweeps)} sweeps, {size} bytes")


if __name__ == "__main__":
    main()
