#!/usr/bin/env python3
"""Reference outputs for the C++ CLIP text encoder (tests/models/clip/clip_text_golden_test.cpp), made by transformers.

Python is only the test oracle; CI never runs this script. It writes

  tests/data/clip_tiny_{l,h,bigg}/   config.json + model.safetensors from save_pretrained (tiny random weights)
                                     and io.safetensors: input_ids [2, 77] int64 and every output of one
                                     forward: last_hidden_state, hidden_states.0 .. hidden_states.N,
                                     pooler_output, text_embeds (bigg only)
  tests/data/keys/clip_l.tsv, openclip_h.tsv, openclip_bigg.tsv
                                     name<TAB>shape of the REAL full-size text encoders (built on the meta
                                     device), in the checkpoint spelling "text_model.*"

The three tiny models copy the conventions of the SD text encoders:
  l     CLIP ViT-L/14 (SD1.x): quick_gelu, prompts padded with EOS, eos_token_id = EOS (998 here). Row 0 holds
        token 999 (as if added by textual inversion, larger than EOS), so the legacy argmax rule would pool
        at the wrong place: only the first-EOS rule matches.
  h     OpenCLIP ViT-H/14 (SD2.x): gelu, padded with 0, legacy eos_token_id = 2 while the EOS token is 999
        (the largest id), as in the real configs. Row 0 holds token 2 early, so only the argmax rule matches.
  bigg  OpenCLIP ViT-bigG/14 (SDXL text_encoder_2): CLIPTextModelWithProjection, gelu, projection_dim 24,
        padded with 0, eos_token_id = EOS (999).

Since transformers 5.6 CLIPTextModel saves its keys without "text_model." (l, h), while
CLIPTextModelWithProjection keeps it (bigg): the C++ loader reads both.

Weights are re-drawn (seeded) after construction, LayerNorms included, so that a swapped or skipped
parameter changes the outputs. Versions used: torch 2.15.0, transformers 5.24.0.
"""
import os

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "data")

TINY = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, layer_norm_eps=1e-5, attention_dropout=0.0)


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if "layer_norm" in name and name.endswith("weight"):
                v = 1.0 + 0.2 * n
            elif name.endswith("bias"):
                v = 0.2 * n
            elif "embedding" in name:
                v = 0.7 * n
            else:  # Linear weight [out, in]: keeps activations of order one
                v = n / p.shape[1] ** 0.5
            p.copy_(v.to(p.dtype))


def prompts(bos, eos, pad, lengths, seed, plant):
    """Two rows [BOS, tokens, EOS, pad...] of 77; `plant` = {(row, pos): id} overrides tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), 77), pad, dtype=torch.int64)
    for r, n in enumerate(lengths):
        ids[r, 0] = bos
        ids[r, 1:1 + n] = torch.randint(3, 997, (n,), generator=g)
        ids[r, 1 + n] = eos
    for (r, c), v in plant.items():
        ids[r, c] = v
    return ids


def make(name, cls, act, bos_cfg, eos_cfg, pad_cfg, bos, eos, pad, plant, seed, **extra):
    cfg = CLIPTextConfig(hidden_act=act, bos_token_id=bos_cfg, eos_token_id=eos_cfg, pad_token_id=pad_cfg,
                         architectures=[cls.__name__], **TINY, **extra)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    randomize(model, seed)
    out_dir = os.path.join(DATA, f"clip_tiny_{name}")
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)

    ids = prompts(bos, eos, pad, [7, 20], seed + 1, plant)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == TINY["num_hidden_layers"] + 1
    assert not torch.allclose(hs[-1], out.last_hidden_state)  # hidden_states[-1] is before final LN
    tensors = {"input_ids": ids, "last_hidden_state": out.last_hidden_state.contiguous()}
    for i, h in enumerate(hs):
        tensors[f"hidden_states.{i}"] = h.contiguous()
    if cls is CLIPTextModelWithProjection:
        tensors["text_embeds"] = out.text_embeds.contiguous()
        # The pooled output is not returned by WithProjection: recompute it through the inner model.
        inner = model.text_model(input_ids=ids)
        tensors["pooler_output"] = inner.pooler_output.contiguous()
        assert torch.allclose(model.text_projection(inner.pooler_output), out.text_embeds)
    else:
        tensors["pooler_output"] = out.pooler_output.contiguous()
    # Where transformers pooled: report it, and check the planted tokens make the rule matter.
    last = out.last_hidden_state
    pooled = tensors["pooler_output"]
    where = [int(torch.nonzero((last[b] == pooled[b]).all(-1))[0]) for b in range(ids.shape[0])]
    print(name, "pooled at", where, "eos_token_id", eos_cfg)
    save_file(tensors, os.path.join(out_dir, "io.safetensors"), metadata={"format": "pt"})


def key_list(file, cls, prefix_flat, **cfg):
    with torch.device("meta"):
        model = cls(CLIPTextConfig(**cfg))
    with open(os.path.join(DATA, "keys", file), "w") as f:
        for n, p in model.named_parameters():
            # CLIPTextModel (transformers >= 5.6) names its parameters without "text_model."; every SD
            # checkpoint and WithProjection spell them with it, which is what sd's module uses.
            if prefix_flat and not n.startswith("text_model."):
                n = "text_model." + n
            f.write(f"{n}\t{list(p.shape)}\n")


def main():
    # l: first-EOS rule; planted 999 at row 0 position 3 would win an argmax.
    make("l", CLIPTextModel, "quick_gelu", 997, 998, 998, bos=997, eos=998, pad=998, plant={(0, 3): 999}, seed=11)
    # h: legacy eos_token_id 2; planted 2 at row 0 position 2 would be found by the first-EOS rule.
    make("h", CLIPTextModel, "gelu", 0, 2, 1, bos=998, eos=999, pad=0, plant={(0, 2): 2}, seed=22)
    make("bigg", CLIPTextModelWithProjection, "gelu", 998, 999, 0, bos=998, eos=999, pad=0, plant={}, seed=33,
         projection_dim=24)

    os.makedirs(os.path.join(DATA, "keys"), exist_ok=True)
    common = dict(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5)
    key_list("clip_l.tsv", CLIPTextModel, True, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
             num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768, **common)
    key_list("openclip_h.tsv", CLIPTextModel, True, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
             num_attention_heads=16, hidden_act="gelu", projection_dim=512, **common)
    key_list("openclip_bigg.tsv", CLIPTextModelWithProjection, False, hidden_size=1280, intermediate_size=5120,
             num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu", projection_dim=1280, **common)


if __name__ == "__main__":
    main()
