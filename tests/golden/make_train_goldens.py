#!/usr/bin/env python3
"""Reference training steps for the C++ trainer (tests/train/train_golden_test.cpp), computed with the
training logic of diffusers' scripts (train_text_to_image.py, train_text_to_image_lora.py, their _sdxl
versions) on the tiny pipelines of tests/data/pipe_tiny_{sd1,sdxl}, in float32 on the CPU.

Python is only the test oracle; CI never runs this script. The random inputs of every step (latents,
noise, timesteps, offset noise, input perturbation) are drawn here and recorded, and the C++ test feeds
them in, so both sides compute the same thing. For each case, 3 optimizer steps of

    noise (+ noise_offset * offset)  ->  noisy = DDPMScheduler.add_noise(latents, noise (+ perturbation), t)
    context = text_encoder(ids)[0]   (SDXL: cat of both encoders' hidden_states[-2]; pooled + time ids)
    target = noise | get_velocity;  pred = unet(noisy, t, context, ...)
    loss = MSE (Min-SNR weighted per example); loss.backward()
    clip_grad_norm_(trainable, 1.0); AdamW(lr 1e-3, betas (0.9, 0.999), wd 1e-2, eps 1e-8).step()
    get_scheduler("linear", warmup 2, total 10).step()   (so the learning rates are 0, 5e-4, 1e-3)

tests/data/train_goldens/<case>.safetensors holds
    step<k>.latents, step<k>.noise, step<k>.timesteps (i64), step<k>.ids (i64), [step<k>.ids_2,
    step<k>.time_ids (SDXL)], [step<k>.offset, step<k>.perturbation]
    step<k>.loss (0-d), step<k>.lr (0-d f64)
    init.<name>    LoRA runs: the adapters before training (A as PEFT initialised it; B zeros)
    grad.<name>    their gradients at step 0 (before clipping)
    final.<name>   their values after the 3 steps
  with <name> the C++ trainer's names: "unet.<diffusers module path>.<param>" for full fine-tunes,
  "unet.<path>.lora_A.weight" / ".lora_B.weight" for LoRA, "text_encoder.text_model.<...>" for text encoders.
    Metadata: the case's settings (method, prediction, snr_gamma, noise_offset, input_perturbation, lora rank/alpha,
    train_text_encoder) and the captions of each step.
tests/data/train_goldens/vae_training.safetensors: --method vae, 3 steps of the tiny VAE (L1 + 1e-2 KL).
tests/data/train_goldens/vae_sd1.safetensors: pixels -> vae.encode -> latent_dist (mean, logvar) and
    (mean + std * eps) * scaling_factor for a recorded eps.

Cases:
    sd1_full        full UNet + text encoder, epsilon, Min-SNR 5, input_perturbation 0.1
    sd1_lora_te     LoRA rank 4 alpha 8 on the UNet's to_q/k/v/out.0 and the text encoder's q/k/v/out_proj,
                    --prediction_type v_prediction, Min-SNR 5
    sdxl_full       full UNet, epsilon, Min-SNR 5 (time ids from sizes/crops)
    sdxl_lora       LoRA rank 4 (alpha = rank) on the UNet, v_prediction, Min-SNR 5, noise_offset 0.05
    sd1_dreambooth_prior        train_dreambooth.py: full UNet + text encoder, 2 instance + 2 class examples,
                                prior_loss_weight 0.5, --offset_noise (0.1)
    sdxl_dreambooth_lora_prior  train_dreambooth_lora_sdxl.py: UNet LoRA, prior preservation, v_prediction,
                                Min-SNR 5 in the DreamBooth form (min(SNR, 5)/SNR + 1, instance timesteps only)
    sd1_textual_inversion       textual_inversion.py: "<shape>" with 2 vectors from "a", no clipping; the whole
                                token table's gradient and its value after 3 steps (other rows restored)
    sdxl_textual_inversion      textual_inversion_sdxl.py: both encoders' tables, 1 vector

Run: python3 tests/golden/make_train_goldens.py   (torch 2.15 CPU, diffusers 0.42.1, transformers 5.25, peft 0.21)
"""
import os

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")
OUT = os.path.join(DATA, "train_goldens")
STEPS = 3
BATCH = 2
LATENT = (4, 16, 16)
CAPTIONS = [["a red circle on a white background", "a blue square"],
            ["a green triangle", "a yellow circle on a purple background"],
            ["", "a black circle on a green background"]]


def te_name(prefix, n):
    # transformers >= 5.6 flattens CLIPTextModel ("embeddings..."); the C++ names keep "text_model.".
    n = n.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
    if not n.startswith("text_model.") and not n.startswith("text_projection"):
        n = "text_model." + n
    return prefix + "." + n


def unet_name(n):
    return "unet." + n.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def run_case(name, pipe, method, prediction, snr_gamma, train_te=False, rank=4, alpha=4, noise_offset=0.0,
             input_perturbation=0.0, prior=0, prior_weight=1.0, dreambooth=False, ti_vectors=0, max_grad_norm=1.0):
    torch.manual_seed(1234 + len(name))
    root = os.path.join(DATA, f"pipe_tiny_{pipe}")
    sdxl = pipe == "sdxl"
    unet = UNet2DConditionModel.from_pretrained(os.path.join(root, "unet"), torch_dtype=torch.float32)
    te = CLIPTextModel.from_pretrained(os.path.join(root, "text_encoder"), torch_dtype=torch.float32)
    tok = CLIPTokenizer.from_pretrained(os.path.join(root, "tokenizer"))
    te2 = tok2 = None
    if sdxl:
        te2 = CLIPTextModelWithProjection.from_pretrained(os.path.join(root, "text_encoder_2"), torch_dtype=torch.float32)
        tok2 = CLIPTokenizer.from_pretrained(os.path.join(root, "tokenizer_2"))
    sched = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
    if prediction:
        sched.register_to_config(prediction_type=prediction)
    for m in [unet, te] + ([te2] if te2 is not None else []):
        m.requires_grad_(False)

    named = []  # (C++ name, parameter)
    captions = CAPTIONS
    ti = []  # (tokenizer, encoder, component, new ids, original table) for textual inversion
    if method == "textual_inversion":
        # textual_inversion(_sdxl).py: new tokens "<shape>", "<shape>_1", their rows copied from the initializer
        # token's, the whole token-embedding table trains, every other row is put back after each step.
        tokens = ["<shape>"] + [f"<shape>_{i}" for i in range(1, ti_vectors)]
        sides = [(tok, te, "text_encoder")] + ([(tok2, te2, "text_encoder_2")] if sdxl else [])
        for tk, enc, comp in sides:
            assert tk.add_tokens(tokens) == len(tokens)
            enc.resize_token_embeddings(len(tk))
            ids = tk.convert_tokens_to_ids(tokens)
            init = tk.encode("a", add_special_tokens=False)
            assert len(init) == 1
            table = enc.get_input_embeddings()
            with torch.no_grad():
                for i in ids:
                    table.weight[i] = table.weight[init[0]].clone()
            table.weight.requires_grad_(True)
            ti.append((tk, enc, comp, ids, table.weight.detach().clone()))
            named.append((comp + ".text_model.embeddings.token_embedding.weight", table.weight))
        text = " ".join(tokens)
        captions = [[f"a photo of a {text}", f"a rendering of a {text}"],
                    [f"a dark photo of the {text}", f"a photo of my {text}"],
                    [f"the photo of a {text}", f"a photo of one {text}"]]
    elif method == "full":
        unet.requires_grad_(True)
        named += [(unet_name(n), p) for n, p in unet.named_parameters()]
        if train_te:
            te.requires_grad_(True)
            named += [(te_name("text_encoder", n), p) for n, p in te.named_parameters()]
    else:
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True,
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        named += [(unet_name(n), p) for n, p in unet.named_parameters() if p.requires_grad]
        if train_te:
            te = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True,
                                                    target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), te)
            for n, p in te.named_parameters():
                p.requires_grad_("lora_" in n)
            named += [(te_name("text_encoder", n), p) for n, p in te.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    assert len(set(n for n, _ in named)) == len(named)
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=2, num_training_steps=10)

    out = {}
    if method == "lora":  # a full fine-tune starts from the pipeline's weights, textual inversion from the initializer
        for n, p in named:
            out["init." + n] = p.detach().clone()
    batch = BATCH + prior
    if prior:
        # train_dreambooth.py's collate_fn: instance examples first, then class examples.
        captions = [["a photo of sks dog", "a photo of sks dog", "a photo of dog", "a photo of dog"]] * STEPS
    for k in range(STEPS):
        latents = torch.randn(batch, *LATENT)
        noise = torch.randn_like(latents)
        out[f"step{k}.latents"] = latents
        out[f"step{k}.noise"] = noise.clone()
        if noise_offset:
            offset = torch.randn(batch, LATENT[0], 1, 1)
            out[f"step{k}.offset"] = offset
            noise = noise + noise_offset * offset
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (batch,)).long()
        out[f"step{k}.timesteps"] = timesteps
        noised_with = noise
        if input_perturbation:
            perturbation = torch.randn_like(noise)
            out[f"step{k}.perturbation"] = perturbation
            noised_with = noise + input_perturbation * perturbation
        noisy = sched.add_noise(latents, noised_with, timesteps)
        ids = tok(captions[k], max_length=tok.model_max_length, padding="max_length", truncation=True,
                  return_tensors="pt").input_ids
        out[f"step{k}.ids"] = ids
        added = None
        if sdxl:
            ids2 = tok2(captions[k], max_length=tok2.model_max_length, padding="max_length", truncation=True,
                        return_tensors="pt").input_ids
            out[f"step{k}.ids_2"] = ids2
            # encode_prompt of train_text_to_image_sdxl.py
            e1 = te(ids, output_hidden_states=True, return_dict=False)
            e2 = te2(ids2, output_hidden_states=True, return_dict=False)
            context = torch.cat([e1[-1][-2], e2[-1][-2]], dim=-1)
            pooled = e2[0]
            time_ids = torch.tensor([[40.0 + 8 * k, 56.0, 4.0 * k, 0.0, 32.0, 32.0],
                                     [32.0, 48.0 + 8 * k, 0.0, 8.0, 32.0, 32.0]] * (batch // 2))
            out[f"step{k}.time_ids"] = time_ids
            added = {"text_embeds": pooled, "time_ids": time_ids}
        else:
            context = te(ids, return_dict=False)[0]
        if sched.config.prediction_type == "epsilon":
            target = noise
        else:
            target = sched.get_velocity(latents, noise, timesteps)
        pred = unet(noisy, timesteps, context, added_cond_kwargs=added, return_dict=False)[0]
        snr_timesteps = timesteps
        if prior:
            # train_dreambooth(_lora_sdxl).py: chunk into instance and class halves; the prior loss is plain MSE
            # and Min-SNR weighs the instance half with its own timesteps.
            pred, pred_prior = torch.chunk(pred, 2, dim=0)
            target, target_prior = torch.chunk(target, 2, dim=0)
            prior_loss = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
            snr_timesteps, _ = torch.chunk(timesteps, 2, dim=0)
        if snr_gamma is None:
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        else:
            snr = compute_snr(sched, snr_timesteps)
            w = torch.stack([snr, snr_gamma * torch.ones_like(snr_timesteps)], dim=1).min(dim=1)[0] / snr
            if sched.config.prediction_type == "v_prediction":
                # the DreamBooth scripts floor v at an SNR weight of one; the text-to-image scripts divide by SNR + 1
                w = w + 1 if dreambooth else w * snr / (snr + 1)
            loss = F.mse_loss(pred.float(), target.float(), reduction="none")
            loss = (loss.mean(dim=list(range(1, len(loss.shape)))) * w).mean()
        if prior:
            loss = loss + prior_weight * prior_loss
        out[f"step{k}.loss"] = loss.detach().clone()
        out[f"step{k}.lr"] = torch.tensor(lr_scheduler.get_last_lr()[0], dtype=torch.float64)
        loss.backward()
        if k == 0:
            for n, p in named:
                out["grad." + n] = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        for tk, enc, comp, ids, original in ti:
            keep = torch.ones(original.shape[0], dtype=torch.bool)
            keep[min(ids):max(ids) + 1] = False
            with torch.no_grad():
                enc.get_input_embeddings().weight[keep] = original[keep]
    for n, p in named:
        out["final." + n] = p.detach().clone()
    meta = {"method": method, "pipe": f"pipe_tiny_{pipe}", "prediction": sched.config.prediction_type,
            "prediction_override": prediction or "", "snr_gamma": "" if snr_gamma is None else str(snr_gamma),
            "noise_offset": str(noise_offset), "input_perturbation": str(input_perturbation),
            "train_text_encoder": str(int(train_te)), "rank": str(rank), "alpha": str(alpha), "steps": str(STEPS),
            "trainable": str(len(named)), "prior": str(prior), "prior_weight": str(prior_weight),
            "dreambooth": str(int(dreambooth)), "ti_vectors": str(ti_vectors), "max_grad_norm": str(max_grad_norm)}
    for k in range(STEPS):
        meta[f"step{k}.captions"] = "\n".join(captions[k])
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, f"{name}.safetensors"), metadata=meta)
    print(f"{name}: {len(named)} trainable tensors, losses", [round(float(out[f'step{k}.loss']), 6) for k in range(STEPS)])


def vae_case():
    torch.manual_seed(99)
    vae = AutoencoderKL.from_pretrained(os.path.join(DATA, "pipe_tiny_sd1", "vae"), torch_dtype=torch.float32)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    dist = vae.encode(pixels).latent_dist
    eps = torch.randn_like(dist.mean)
    latents = (dist.mean + dist.std * eps) * vae.config.scaling_factor
    t = {"pixels": pixels, "mean": dist.mean, "logvar": dist.logvar, "eps": eps, "latents": latents}
    save_file({k: v.detach().contiguous() for k, v in t.items()}, os.path.join(OUT, "vae_sd1.safetensors"))


def vae_training_case():
    """--method vae: L1 reconstruction of a posterior sample + kl_weight * KL(N(mean, var) || N(0, 1)) (summed
    over latent elements, averaged over the batch); 3 AdamW steps of the whole tiny VAE, clip 1.0."""
    torch.manual_seed(7)
    vae = AutoencoderKL.from_pretrained(os.path.join(DATA, "pipe_tiny_sd1", "vae"), torch_dtype=torch.float32)
    named = [("vae." + n, p) for n, p in vae.named_parameters()]
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=2, num_training_steps=10)
    out = {}
    kl_weight = 1e-2
    for k in range(STEPS):
        pixels = torch.rand(2, 3, 32, 32) * 2 - 1
        dist = vae.encode(pixels).latent_dist
        eps = torch.randn_like(dist.mean)
        z = dist.mean + dist.std * eps
        rec = vae.decode(z).sample
        kl = 0.5 * (dist.mean.pow(2) + dist.var - 1.0 - dist.logvar).sum() / pixels.shape[0]
        loss = (rec.float() - pixels).abs().mean() + kl_weight * kl
        out[f"step{k}.pixels"] = pixels
        out[f"step{k}.eps"] = eps.detach()
        out[f"step{k}.loss"] = loss.detach().clone()
        out[f"step{k}.lr"] = torch.tensor(lr_scheduler.get_last_lr()[0], dtype=torch.float64)
        loss.backward()
        if k == 0:
            for n, p in named:
                out["grad." + n] = p.grad.detach().clone()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
    for n, p in named:
        out["final." + n] = p.detach().clone()
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "vae_training.safetensors"),
              metadata={"kl_weight": str(kl_weight), "loss": "l1", "steps": str(STEPS), "trainable": str(len(named))})
    print("vae_training:", len(named), "trainable tensors, losses", [round(float(out[f"step{k}.loss"]), 6) for k in range(STEPS)])


def main():
    os.makedirs(OUT, exist_ok=True)
    with torch.no_grad():
        vae_case()
    vae_training_case()
    run_case("sd1_full", "sd1", "full", None, 5.0, train_te=True, input_perturbation=0.1)
    run_case("sd1_lora_te", "sd1", "lora", "v_prediction", 5.0, train_te=True, rank=4, alpha=8)
    run_case("sdxl_full", "sdxl", "full", None, 5.0)
    run_case("sdxl_lora", "sdxl", "lora", "v_prediction", 5.0, rank=4, alpha=4, noise_offset=0.05)
    run_case("sd1_dreambooth_prior", "sd1", "full", None, None, train_te=True, prior=2, prior_weight=0.5,
             dreambooth=True, noise_offset=0.1)
    run_case("sdxl_dreambooth_lora_prior", "sdxl", "lora", "v_prediction", 5.0, prior=2, prior_weight=1.0,
             dreambooth=True)
    run_case("sd1_textual_inversion", "sd1", "textual_inversion", None, None, ti_vectors=2, max_grad_norm=0)
    run_case("sdxl_textual_inversion", "sdxl", "textual_inversion", None, None, ti_vectors=1, max_grad_norm=0)


if __name__ == "__main__":
    main()
