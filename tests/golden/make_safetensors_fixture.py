#!/usr/bin/env python3
"""Writes tests/data/python_written.safetensors with the reference writer (Python safetensors),
plus tests/data/python_written.json describing every tensor (name, dtype, shape, values) so the
C++ test can check what it reads and rebuild the same tensors to compare its writer's bytes.

Run once by hand (needs numpy and safetensors); the outputs are committed:
    python3 tests/golden/make_safetensors_fixture.py
"""
import json
import os

import numpy as np
import safetensors
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "data")

# Names are chosen to sort differently from the writer's dtype order (I64 > F64 > F32 > I32 >
# F16 > U8 > BOOL), sizes are odd so tensors after the f16/u8 ones start at odd offsets, and the
# values are exact in their dtype (f16 ones are multiples of 1/4 below 2048).
TENSORS = {
    "z_ids": np.array([0, -1, 2**40, -(2**62)], dtype=np.int64),
    "b.double": np.array([1.0 / 3.0, -2.5e-300], dtype=np.float64),
    "weight": np.array([[0.5, -1.0, 2.25], [3.0e10, -7.125, 1.0e-8]], dtype=np.float32),
    "alpha": np.array(4.0, dtype=np.float32),  # 0-d scalar, like a kohya LoRA ".alpha"
    "counts": np.array([7, -8, 2147483647], dtype=np.int32),
    "a.bias": np.array([0.25, -1.75, 1024.0], dtype=np.float16),
    "pixels": np.array([0, 1, 127, 128, 255], dtype=np.uint8),
    "mask": np.array([[True, False], [False, True]], dtype=np.bool_),
    "empty": np.zeros((0, 3), dtype=np.float32),
}
METADATA = {"format": "pt"}

DTYPE_NAMES = {
    np.dtype(np.int64): "I64",
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.int32): "I32",
    np.dtype(np.float16): "F16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


def main():
    st_path = os.path.join(OUT_DIR, "python_written.safetensors")
    save_file(TENSORS, st_path, metadata=METADATA)
    desc = {
        "written_by": "safetensors %s (Python), numpy %s" % (safetensors.__version__, np.__version__),
        "metadata": METADATA,
        "tensors": [
            {
                "name": name,
                "dtype": DTYPE_NAMES[a.dtype],
                "shape": list(a.shape),
                # Integers stay integers (2**62 is not exact as a double); floats as repr.
                "values": [v.item() if a.dtype.kind in "iub" else float(v) for v in a.reshape(-1)],
            }
            for name, a in sorted(TENSORS.items())
        ],
    }
    with open(os.path.join(OUT_DIR, "python_written.json"), "w") as f:
        json.dump(desc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
