#!/usr/bin/env python3
"""Records what diffusers' training scripts get from their learning-rate schedules, EMA and fp16
loss scaling, for tests/train/{lr_schedule,ema,loss_scaler}_test.cpp:

  lr_schedules.json  for each case: get_scheduler(name, optimizer(lr=1e-4), num_warmup_steps,
                     num_training_steps, num_cycles, power[, step_rules]) and the learning rate
                     the optimizer holds when it takes step k (k = 0, 1, ...: param_groups[0]["lr"]
                     read before optimizer.step(), then optimizer.step(), scheduler.step(), as the
                     scripts loop), for 110 steps of a 100-step schedule (the last 10 past the end);
                     plus two long schedules sampled every 97 steps.
  ema.json           EMAModel(...).get_decay(k) for k = 0..50 and a few large k, for several
                     settings; and the shadow parameters after each of 6 EMAModel.step calls on
                     small float32 tensors whose values change between steps.
  loss_scaler.json   torch.amp.GradScaler("cpu") driven by a found-inf sequence (one parameter
                     whose gradient is made inf or finite): the scale and growth tracker after each
                     update(), and whether the optimizer step was skipped.

Run once by hand (torch 2.15.0, diffusers 0.42.1; Python is only the test oracle, CI never runs
it); the outputs are committed:
    python3 tests/golden/make_train_schedule_goldens.py
Floats are written by json (repr: shortest round-trip form), so C++ reads back the same doubles.
"""
import json
import os

import diffusers
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "data", "train_schedules")

BASE_LR = 1e-4


def optimizer_with_lr(lr):
    p = torch.nn.Parameter(torch.zeros(1))
    return torch.optim.AdamW([p], lr=lr)


def record_lrs(name, warmup, total, steps, num_cycles=1, power=1.0, step_rules=None, stride=1, lr=BASE_LR):
    opt = optimizer_with_lr(lr)
    kwargs = dict(num_warmup_steps=warmup, num_training_steps=total, num_cycles=num_cycles, power=power)
    if step_rules is not None:
        kwargs["step_rules"] = step_rules
    sched = get_scheduler(name, opt, **kwargs)
    out_steps, lrs = [], []
    for k in range(steps):
        lr_k = opt.param_groups[0]["lr"]
        if k > 0:
            assert sched.get_last_lr()[0] == lr_k
        if k % stride == 0:
            out_steps.append(k)
            lrs.append(float(lr_k))
        opt.step()
        sched.step()
    case = {"name": name, "base_lr": lr, "warmup_steps": warmup, "total_steps": total,
            "num_cycles": num_cycles, "power": power, "steps": out_steps, "lr": lrs}
    if step_rules is not None:
        case["step_rules"] = step_rules
    return case


def lr_cases():
    cases = []
    names = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
    for warmup in (10, 0):
        for name in names:
            cases.append(record_lrs(name, warmup, 100, 110))
    # The scripts' --lr_num_cycles reaches cosine_with_restarts only: cosine stays a half cosine.
    cases.append(record_lrs("cosine_with_restarts", 10, 100, 110, num_cycles=3))
    cases.append(record_lrs("cosine", 10, 100, 110, num_cycles=3))
    cases.append(record_lrs("polynomial", 10, 100, 110, power=2.0))
    cases.append(record_lrs("polynomial", 10, 100, 110, power=0.5))
    # Warmup longer than the run (a quick test run with the real warmup): every branch past it.
    for name in ("linear", "cosine", "cosine_with_restarts", "polynomial"):
        cases.append(record_lrs(name, 30, 20, 40))
    cases.append(record_lrs("piecewise_constant", 10, 100, 110, step_rules="1:10,0.1:20,0.01:30,0.005"))
    cases.append(record_lrs("piecewise_constant", 0, 100, 110, step_rules="0.5:50,2:25,0.25:50,0.125"))
    # Realistic lengths, sampled.
    cases.append(record_lrs("cosine", 500, 15000, 15200, stride=97, lr=1e-5))
    cases.append(record_lrs("polynomial", 500, 15000, 15200, power=2.0, stride=97, lr=3e-6))
    cases.append(record_lrs("cosine_with_restarts", 500, 15000, 15200, num_cycles=4, stride=97, lr=5e-6))
    return cases


def ema_decay_cases():
    settings = [
        {},
        {"use_ema_warmup": True, "power": 3 / 4},
        {"use_ema_warmup": True},  # power 2/3
        {"update_after_step": 5},
        {"use_ema_warmup": True, "power": 3 / 4, "update_after_step": 5, "inv_gamma": 2.0},
        {"decay": 0.995, "min_decay": 0.5},
    ]
    steps = list(range(0, 51)) + [100, 1000, 31623, 100000, 215444, 1000000, 10 ** 7]
    cases = []
    for s in settings:
        ema = EMAModel([torch.nn.Parameter(torch.zeros(1))], **s)
        cfg = {"decay": ema.decay, "min_decay": ema.min_decay, "update_after_step": ema.update_after_step,
               "use_ema_warmup": ema.use_ema_warmup, "inv_gamma": ema.inv_gamma, "power": ema.power}
        cases.append({"config": cfg, "steps": steps, "decay": [float(ema.get_decay(k)) for k in steps]})
    return cases


def ema_value_cases():
    shapes = [[4, 3], [5], [2, 2, 2]]
    cases = []
    for setting in ({}, {"use_ema_warmup": True, "power": 3 / 4, "update_after_step": 2}):
        g = torch.Generator().manual_seed(1234)
        params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
        ema = EMAModel(params, **setting)
        initial = [p.detach().flatten().tolist() for p in params]
        steps = []
        for _ in range(6):
            with torch.no_grad():
                for p in params:
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
            ema.step(params)
            steps.append({"params": [p.detach().flatten().tolist() for p in params],
                          "decay": float(ema.cur_decay_value),
                          "ema": [s.flatten().tolist() for s in ema.shadow_params]})
        cfg = {"decay": ema.decay, "min_decay": ema.min_decay, "update_after_step": ema.update_after_step,
               "use_ema_warmup": ema.use_ema_warmup, "inv_gamma": ema.inv_gamma, "power": ema.power}
        cases.append({"config": cfg, "shapes": shapes, "initial": initial, "steps": steps})
    return cases


def loss_scaler_case(flags, **kw):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", **kw)
    scales, trackers, skipped = [], [], []
    for inf in flags:
        opt.zero_grad()
        scaler.scale(p.sum()).backward()  # grad = scale
        if inf:
            with torch.no_grad():
                p.grad.fill_(float("inf"))
        before = p.detach().clone()
        scaler.step(opt)
        scaler.update()
        skipped.append(bool(torch.equal(before, p.detach())))
        scales.append(float(scaler.get_scale()))
        trackers.append(int(scaler._growth_tracker.item()))
        with torch.no_grad():
            p.zero_()
    return {"config": {"init_scale": scaler._init_scale, "growth_factor": scaler._growth_factor,
                       "backoff_factor": scaler._backoff_factor, "growth_interval": scaler._growth_interval},
            "found_inf": flags, "scale": scales, "growth_tracker": trackers, "skipped": skipped}


def loss_scaler_cases():
    flags = [0, 0, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    return [
        loss_scaler_case([bool(f) for f in flags], growth_interval=3),
        # Factors that are not powers of two: the float32 rounding of the scale shows.
        loss_scaler_case([bool(f) for f in flags], init_scale=1000.1, growth_factor=3.0, backoff_factor=0.3,
                         growth_interval=2),
        # Growth past float32's range is refused (the scale stays 2^127, the tracker resets).
        loss_scaler_case([False] * 4, init_scale=2.0 ** 126, growth_interval=1),
    ]


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    outputs = {
        "lr_schedules.json": {"versions": versions, "cases": lr_cases()},
        "ema.json": {"versions": versions, "decays": ema_decay_cases(), "values": ema_value_cases()},
        "loss_scaler.json": {"versions": versions, "cases": loss_scaler_cases()},
    }
    for name, obj in outputs.items():
        with open(os.path.join(OUT_DIR, name), "w") as f:
            json.dump(obj, f, separators=(",", ":"))
            f.write("\n")
        print(name, os.path.getsize(os.path.join(OUT_DIR, name)), "bytes")


if __name__ == "__main__":
    main()
