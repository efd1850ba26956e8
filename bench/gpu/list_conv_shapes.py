#!/usr/bin/env python3
"""Prints a conv3x3 line of bench/gpu/cases.txt for every distinct 3x3 convolution (input shape,
output channels, stride) of diffusers' SD1.5 UNet at 512 px (batch 2: guidance), SDXL's UNet at
1024 px (batch 2) and the SD VAE decoder at 512 px (batch 1). The models are built on PyTorch's
meta device: shapes only, no weights, no GPU. Run once when the list changes:
    python3 bench/gpu/list_conv_shapes.py
(needs torch and diffusers; PyTorch is a test oracle here, never part of sd)."""
import torch
import torch.nn as nn
from diffusers import AutoencoderKL, UNet2DConditionModel


def conv_shapes(module, call):
    seen = []

    def hook(mod, inp, out):
        if mod.kernel_size == (3, 3):
            n, c, h, w = inp[0].shape
            key = (n, c, h, w, mod.out_channels, mod.stride[0])
            if key not in seen:
                seen.append(key)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        call()
    for h in handles:
        h.remove()
    return seen


def main():
    with torch.device("meta"):
        sd15 = UNet2DConditionModel(
            sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        xl = UNet2DConditionModel(
            sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280), cross_attention_dim=2048,
            attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
        t = torch.full((2,), 500.0)
        groups = [
            ("SD1.5 UNet, 512 px, batch 2", conv_shapes(sd15, lambda: sd15(torch.randn(2, 4, 64, 64), t,
                                                                           torch.randn(2, 77, 768)))),
            ("SDXL UNet, 1024 px, batch 2", conv_shapes(xl, lambda: xl(
                torch.randn(2, 4, 128, 128), t, torch.randn(2, 77, 2048),
                added_cond_kwargs={"text_embeds": torch.randn(2, 1280), "time_ids": torch.randn(2, 6)}))),
            ("VAE decoder, 512 px, batch 1", conv_shapes(vae.decoder, lambda: vae.decoder(torch.randn(1, 4, 64, 64)))),
        ]
    printed = set()
    for title, shapes in groups:
        print(f"# 3x3 convolutions of the {title} (bench/gpu/list_conv_shapes.py)")
        for n, c, h, w, o, s in shapes:
            if (n, c, h, w, o, s) in printed:
                continue
            printed.add((n, c, h, w, o, s))
            print(f"conv3x3         f16  N={n} C={c} H={h} W={w} O={o}" + (f" s={s}" if s != 1 else ""))


if __name__ == "__main__":
    main()
