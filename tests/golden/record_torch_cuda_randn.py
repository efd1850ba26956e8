#!/usr/bin/env python3
"""Records torch.randn on a CUDA generator (first/last 2048 values of each draw) (what diffusers/A1111 seeds produce) for a few
seeds and shapes, as safetensors. Needs a GPU; bench/gpu_check.sh runs it on the lent machine
and the file is committed as tests/data/torch_cuda_randn.safetensors, the golden for
`sd_infer --rng torch-cuda`."""
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1] if len(sys.argv) > 1 else "torch_cuda_randn.safetensors"
tensors = {}
def ends(t):
    # The first and last 2048 values in row-major order (enough to pin the element mapping,
    # small enough to commit).
    flat = t.flatten()
    return flat if flat.numel() <= 4096 else torch.cat([flat[:2048], flat[-2048:]])


for seed in (0, 42, 1234, 2**32 + 7):
    for shape in ((1, 4, 64, 64), (2, 4, 128, 128), (1, 4, 96, 96), (3, 5)):
        g = torch.Generator(device="cuda").manual_seed(seed)
        name = f"seed{seed}_" + "x".join(map(str, shape))
        tensors[name] = ends(torch.randn(shape, generator=g, device="cuda", dtype=torch.float32)).cpu().contiguous()
        # A second draw from the same generator: the offset advances as torch advances it.
        tensors[name + "_second"] = ends(torch.randn(shape, generator=g, device="cuda")).cpu().contiguous()
save_file(tensors, out, metadata={"torch": torch.__version__, "device": torch.cuda.get_device_name()})
print(f"wrote {len(tensors)} tensors to {out}")
