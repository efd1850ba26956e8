#!/usr/bin/env python3
"""Writes tests/data/tensorboard/events.out.tfevents.python_written with PyTorch's SummaryWriter
(on TensorBoard's own EventFileWriter), plus tests/data/tensorboard/python_written.json saying
what it holds, for tests/train/tensorboard_test.cpp: the C++ reader must decode this file, and
the C++ writer must produce the same bytes for the same scalars.

Run once by hand (needs torch and tensorboard; Python is only the test oracle, never needed by
CI); the outputs are committed:
    python3 tests/golden/make_tensorboard_fixture.py

The other direction, checked by hand with `--check DIR`: TensorBoard's EventAccumulator reads
the event file(s) a C++ TensorBoardWriter wrote into DIR and must return, for every tag, the
steps, float32 values and wall times listed in python_written.json's "records" (the scalars a
C++ writer can write). Done with tensorboard 2.21.0, protobuf 7.36.2 (upb), torch 2.15.0, from
a small program calling sd::train::TensorBoardWriter::add_scalar with each of those records:
  - EventAccumulator: all 12 scalars over 6 tags came back equal (NaN as NaN, inf, the 2^31 and
    2^40 steps, step 0, the negative step, wall_time 0.0, the non-ASCII and 150-byte tags), and
    it read the file_version "brain.Event:2" as 2.0;
  - `tensorboard --logdir` (its Rust data server, --load_fast default) listed both runs and all
    tags at /data/plugin/scalars/tags and served a 50-point curve written with wall time "now";
  - a resumed run (a second writer in the same directory, steps 5-15 after 0-10) showed as one
    curve: steps 0-4 from the first file, 5-15 from the second. The same rule (a step that goes
    back is a restart: points at or after it are dropped) makes the data server show only the
    last train/loss point of the records here, whose last step is -3; EventAccumulator keeps all.
"""
import argparse
import glob
import json
import math
import os
import shutil
import tempfile
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "data", "tensorboard")
EVENTS_NAME = "events.out.tfevents.python_written"
JSON_NAME = "python_written.json"

T0 = 1700000000.0  # wall_time of the file_version event (time.time() patched while opening)
LONG_TAG = "long/" + "x" * 145  # 150 bytes: the Value and Summary lengths need two-byte varints

# (tag, value, step, walltime): scalars written with add_scalar (old style, simple_value),
# chosen to cover the encoding's corners: step 0 and wall_time 0.0 (fields left out), varint
# boundaries (127, 128, 2^31, 2^40), a negative step (ten-byte varint), values inexact in
# float32, 0.0, NaN, inf, a non-ASCII tag and a long one.
SCALARS = [
    ("train/loss", 0.123456789, 0, T0 + 1.0),
    ("lr", 1e-4, 1, T0 + 1.25),
    ("grad_norm", 3.5, 127, T0 + 1.5),
    ("loss_scale", 65536.0, 128, T0 + 1.75),
    ("train/loss", -2.5, 2**31, T0 + 2.0),
    ("train/loss", 0.0, 2**40, T0 + 2.125),
    ("train/loss", float("nan"), 2**40 + 1, T0 + 2.25),
    ("train/loss", float("inf"), 2**40 + 2, T0 + 2.375),
    ("loss/\u00fcn\u00efc\u00f6d\u00e9", 1e30, 5, T0 + 3.0),
    (LONG_TAG, 7.0, 6, T0 + 3.5),
    ("train/loss", 0.25, 9, 0.0),
    ("train/loss", 1.0, -3, T0 + 4.0),
]


def json_value(v):
    """Finite values as numbers, the others as "nan" / "inf" / "-inf" (JSON has no NaN)."""
    return v if math.isfinite(v) else repr(v)


def as_f32(v):
    import numpy as np

    return float(np.float32(v))


def write_fixture():
    import tensorboard
    import torch
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    tmp = tempfile.mkdtemp()
    try:
        with mock.patch("time.time", return_value=T0):
            writer = SummaryWriter(log_dir=tmp)
        records = []  # one per event record after the file_version one, in file order
        scalars = []  # what read_scalar_events must return, in order

        def scalar(tag, value, step, walltime):
            writer.add_scalar(tag, value, step, walltime=walltime)
            records.append({"kind": "scalar", "tag": tag, "value": json_value(value), "step": step,
                            "wall_time": walltime})
            scalars.append({"tag": tag, "value": json_value(as_f32(value)), "step": step, "wall_time": walltime})

        for s in SCALARS[:10]:
            scalar(*s)
        # Events read_scalar_events skips: text (a tensor value) and a new-style scalar (tensor).
        writer.add_text("notes", "not a scalar", 7, walltime=T0 + 5.0)
        records.append({"kind": "skipped", "what": "add_text"})
        writer.add_scalar("new_style", 2.0, 7, walltime=T0 + 5.5, new_style=True)
        records.append({"kind": "skipped", "what": "add_scalar new_style=True"})
        # One Event whose Summary holds two simple values.
        two = Summary(value=[Summary.Value(tag="pair/a", simple_value=1.5),
                             Summary.Value(tag="pair/b", simple_value=-0.5)])
        writer._get_file_writer().add_summary(two, 8, walltime=T0 + 6.0)
        records.append({"kind": "two_values"})
        scalars.append({"tag": "pair/a", "value": 1.5, "step": 8, "wall_time": T0 + 6.0})
        scalars.append({"tag": "pair/b", "value": -0.5, "step": 8, "wall_time": T0 + 6.0})
        for s in SCALARS[10:]:
            scalar(*s)
        writer.close()

        (written,) = glob.glob(os.path.join(tmp, "events.out.tfevents.*"))
        os.makedirs(OUT_DIR, exist_ok=True)
        shutil.copyfile(written, os.path.join(OUT_DIR, EVENTS_NAME))
    finally:
        shutil.rmtree(tmp)

    desc = {
        "written_by": "torch %s SummaryWriter, tensorboard %s" % (torch.__version__, tensorboard.__version__),
        "file": EVENTS_NAME,
        "file_version": "brain.Event:2",
        "file_version_wall_time": T0,
        "records": records,
        "scalars": scalars,
    }
    with open(os.path.join(OUT_DIR, JSON_NAME), "w") as f:
        json.dump(desc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", os.path.join(OUT_DIR, EVENTS_NAME), "and", JSON_NAME)
    # The fixture must read back through TensorBoard itself.
    check(OUT_DIR, [s for s in scalars])


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def check(logdir, expected):
    """EventAccumulator over logdir must hold exactly `expected` (dicts of tag/value/step/wall_time)."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    tags = sorted(acc.Tags()["scalars"])
    want_tags = sorted({e["tag"] for e in expected})
    assert tags == want_tags, (tags, want_tags)
    n = 0
    for tag in tags:
        got = [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)]
        want = [(e["step"], float(e["value"]), e["wall_time"]) for e in expected if e["tag"] == tag]
        assert len(got) == len(want), (tag, got, want)
        for g, w in zip(got, want):
            assert g[0] == w[0] and same(g[1], w[1]) and g[2] == w[2], (tag, g, w)
            n += 1
    print("EventAccumulator: %d scalars over %d tags as expected in %s" % (n, len(tags), logdir))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="DIR",
                    help="read DIR (written by the C++ writer with python_written.json's records) with "
                         "EventAccumulator instead of writing the fixture")
    args = ap.parse_args()
    if not args.check:
        write_fixture()
        return
    with open(os.path.join(OUT_DIR, JSON_NAME)) as f:
        desc = json.load(f)
    expected = [{"tag": r["tag"], "value": as_f32(float(r["value"])), "step": r["step"], "wall_time": r["wall_time"]}
                for r in desc["records"] if r["kind"] == "scalar"]
    check(args.check, expected)


if __name__ == "__main__":
    main()
