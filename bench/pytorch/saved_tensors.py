#!/usr/bin/env python3
"""What PyTorch keeps for backward in one SD1.5 UNet training step (CPU, f32, random init):
the baseline for bench/cpu/train_memory.cpp (sd_bench_train_memory). PyTorch is a baseline
here, never part of sd.

  python3 bench/pytorch/saved_tensors.py [--latent 32] [--checkpointing] [--no-walk]

Every tensor autograd saves during the forward passes through torch.autograd.graph.
saved_tensors_hooks (the pack hook returns the tensor itself, so memory is unchanged) and is
counted two ways: per save (numel * element size, every time) and per storage (each distinct
untyped storage once, by its data_ptr, at its full nbytes). A storage is "weights" when it is
the storage of an nn.Parameter (so weight.t() views count as weights), else "activations".
With --checkpointing, diffusers' gradient checkpointing runs torch.utils.checkpoint
(use_reentrant=False, diffusers' default) through a wrapper that also counts the inputs each
checkpointed block keeps for its recomputation (those are not saved tensors, so no hook sees
them). Without checkpointing the autograd graph is also walked from the output's grad_fn and
each node's _saved_* tensors are summed per node type.
Memory of the process: VmRSS / VmHWM from /proc/self/status (HWM reset through clear_refs), and
the glibc heap in use (mallinfo2: uordblks + hblkhd, which PyTorch's CPU allocator draws from)
sampled before and after every module's forward and every autograd node's backward: the peak
at those points (transients inside one op are not seen)."""
import argparse
import collections
import ctypes
import time

import torch

SD15_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, mid_block_type="UNetMidBlock2DCrossAttn", norm_eps=1e-5, norm_num_groups=32,
    out_channels=4, sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    upcast_attention=False, use_linear_projection=False)

MIB = float(1 << 20)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap():
    m = _libc.mallinfo2()
    return m.uordblks + m.hblkhd


class HeapPeak:
    def __init__(self):
        self.peak = 0

    def sample(self, *_):
        self.peak = max(self.peak, heap())


def status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return -1


def reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def storage_key(t):
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


class SavedCounter:
    def __init__(self, param_ptrs):
        self.param_ptrs = param_ptrs
        self.per_save = {"weights": 0, "activations": 0}
        self.storages = {}  # data_ptr -> (nbytes, kind)
        self.ckpt_inputs = {}  # data_ptr -> nbytes (activations kept by checkpoint for recompute)

    def kind(self, ptr):
        return "weights" if ptr in self.param_ptrs else "activations"

    def pack(self, t):
        try:
            ptr, nbytes = storage_key(t)
        except (RuntimeError, NotImplementedError):
            return t
        k = self.kind(ptr)
        self.per_save[k] += t.numel() * t.element_size()
        self.storages[ptr] = (nbytes, k)
        return t

    def unpack(self, t):
        return t

    def unique(self, kind):
        return sum(n for n, k in self.storages.values() if k == kind)

    def with_ckpt_inputs(self):
        """Activation storages kept: saved ones plus checkpoint inputs, each once."""
        d = {p: n for p, (n, k) in self.storages.items() if k == "activations"}
        for p, n in self.ckpt_inputs.items():
            if p not in self.param_ptrs:
                d[p] = n
        return sum(d.values())


def walk(root, param_ptrs):
    """Per node type: saved tensors per save and unique activation storage (earliest saver)."""
    seen, stack, nodes = set(), [root], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        nodes.append(fn)
        for nxt, _ in fn.next_functions:
            if nxt is not None and nxt not in seen:
                stack.append(nxt)
    nodes.sort(key=lambda f: f._sequence_nr() if hasattr(f, "_sequence_nr") else 0)
    agg = collections.defaultdict(lambda: [0, 0, 0, 0])  # nodes, per-save act, per-save weights, unique act
    owner = {}
    savers = collections.defaultdict(set)
    sizes = {}
    for fn in nodes:
        name = type(fn).__name__
        agg[name][0] += 1
        for attr in dir(fn):
            if not attr.startswith("_saved_"):
                continue
            try:
                v = getattr(fn, attr)
            except Exception:
                continue
            vals = v if isinstance(v, (list, tuple)) else [v]
            for t in vals:
                if not isinstance(t, torch.Tensor):
                    continue
                ptr, nbytes = storage_key(t)
                b = t.numel() * t.element_size()
                if ptr in param_ptrs:
                    agg[name][2] += b
                    continue
                agg[name][1] += b
                savers[ptr].add(name)
                sizes[ptr] = nbytes
                if ptr not in owner:
                    owner[ptr] = name
    for ptr, name in owner.items():
        agg[name][3] += sizes[ptr]
    by_set = collections.defaultdict(lambda: [0, 0])
    for ptr, s in savers.items():
        key = " + ".join(sorted(s))
        by_set[key][0] += 1
        by_set[key][1] += sizes[ptr]
    return len(nodes), agg, by_set


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--no-walk", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import UNet2DConditionModel
    import diffusers

    t0 = time.time()
    points = []

    def point(what):
        points.append((what, status_bytes("VmRSS"), status_bytes("VmHWM"), heap(), time.time() - t0))

    print(f"# PyTorch {torch.__version__}, diffusers {diffusers.__version__}: SD1.5 UNet training step, CPU f32, "
          f"latents [1,4,{args.latent},{args.latent}], context [1,77,768], t=500, "
          f"gradient_checkpointing={'on' if args.checkpointing else 'off'}")
    point("start")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).float().train()
    params = list(unet.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    print(f"parameters: {len(params)} tensors, {sum(p.numel() for p in params)} elements, "
          f"{weight_bytes / MIB:.1f} MiB")
    counter = SavedCounter(param_ptrs)
    if args.checkpointing:
        def ckpt_func(module, *a):
            for t in a:
                if isinstance(t, torch.Tensor):
                    ptr, nbytes = storage_key(t)
                    counter.ckpt_inputs[ptr] = nbytes
            return torch.utils.checkpoint.checkpoint(module.__call__, *a, use_reentrant=False)
        unet.enable_gradient_checkpointing(gradient_checkpointing_func=ckpt_func)
    x = torch.randn(1, 4, args.latent, args.latent)
    ctx = torch.randn(1, 77, 768)
    t = torch.tensor([500])
    gout = torch.randn(1, 4, args.latent, args.latent)
    point("after weights (+ inputs)")

    fwd_heap = HeapPeak()
    handles = []
    for m in unet.modules():
        handles.append(m.register_forward_pre_hook(lambda mod, inp: fwd_heap.sample()))
        handles.append(m.register_forward_hook(lambda mod, inp, o: fwd_heap.sample()))
    reset_hwm()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        out = unet(x, t, encoder_hidden_states=ctx).sample
    point("after forward")
    for h in handles:
        h.remove()
    fwd_heap.sample()

    print("\n## Saved for backward after forward (pack hook)")
    print("| quantity | MiB |\n|---|---|")
    print(f"| weights (all parameters) | {weight_bytes / MIB:.1f} |")
    tot = counter.per_save["weights"] + counter.per_save["activations"]
    print(f"| per save: total / weights / activations | {tot / MIB:.1f} / {counter.per_save['weights'] / MIB:.1f} / "
          f"{counter.per_save['activations'] / MIB:.1f} |")
    nw = sum(1 for _, k in counter.storages.values() if k == "weights")
    print(f"| per storage: weights ({nw} storages) | {counter.unique('weights') / MIB:.1f} |")
    print(f"| per storage: activations ({len(counter.storages) - nw} storages) | "
          f"{counter.unique('activations') / MIB:.1f} |")
    if args.checkpointing:
        print(f"| checkpoint inputs kept for recompute ({len(counter.ckpt_inputs)} storages) | "
              f"{sum(counter.ckpt_inputs.values()) / MIB:.1f} |")
        print(f"| activations kept: saved + checkpoint inputs, each storage once | "
              f"{counter.with_ckpt_inputs() / MIB:.1f} |")

    if not args.no_walk and not args.checkpointing:
        # (With non-reentrant checkpointing, reading _saved_* would trigger recomputation.)
        n, agg, by_set = walk(out.grad_fn, param_ptrs)
        print(f"\n### By node type (graph walk, {n} nodes; unique storage attributed to the earliest saver)")
        print("| node | nodes | per-save activations MiB | per-save weights MiB | unique activation storage MiB |")
        print("|---|---|---|---|---|")
        for name, a in sorted(agg.items(), key=lambda kv: -kv[1][3]):
            print(f"| {name} | {a[0]} | {a[1] / MIB:.1f} | {a[2] / MIB:.1f} | {a[3] / MIB:.1f} |")
        print("\n### Activation storages by the set of node types saving them")
        print("| saved by | storages | MiB |\n|---|---|---|")
        for key, (c, b) in sorted(by_set.items(), key=lambda kv: -kv[1][1]):
            print(f"| {key} | {c} | {b / MIB:.1f} |")

    fwd_hwm = status_bytes("VmHWM")
    bwd_heap = HeapPeak()
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        fn.register_prehook(lambda go: bwd_heap.sample())
        fn.register_hook(lambda gi, go: bwd_heap.sample())
        stack.extend(n for n, _ in fn.next_functions if n is not None)
    bwd_heap.sample()
    reset_hwm()
    out.backward(gout)
    bwd_heap.sample()
    point("after backward (gradients alive)")
    bwd_hwm = status_bytes("VmHWM")
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    del out
    point("after dropping the graph")

    print("\n## Process memory (RSS)")
    print("| quantity | MiB |\n|---|---|")
    print(f"| heap in use after weights (mallinfo2) | {points[1][3] / MIB:.1f} |")
    print(f"| heap peak during forward (sampled at every module's entry and exit) | {fwd_heap.peak / MIB:.1f} |")
    print(f"| heap peak during backward (sampled before and after every node) | {bwd_heap.peak / MIB:.1f} |")
    print(f"| RSS HWM during forward | {fwd_hwm / MIB:.1f} |")
    print(f"| RSS HWM during backward | {bwd_hwm / MIB:.1f} |")
    print(f"| parameter gradients after backward | {grads / MIB:.1f} |")
    print("\n| point | RSS MiB | RSS HWM MiB | heap in use MiB | t s |\n|---|---|---|---|---|")
    for what, r, h, hp, s in points:
        print(f"| {what} | {r / MIB:.1f} | {h / MIB:.1f} | {hp / MIB:.1f} | {s:.1f} |")


if __name__ == "__main__":
    main()
