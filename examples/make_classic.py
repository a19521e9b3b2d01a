#!/usr/bin/python3
"""Writes examples/classic_rgb.safetensors: the small RGB model of the classic widening recipe.

    conv1: Conv2d(3, 10, 3, padding=1)   conv2: Conv2d(10, 5, 3, padding=1)   fc: Linear(125, 1)

for 5x5 RGB inputs, with PyTorch's default initialisation (uniform in +-1/sqrt(fan_in)) drawn from a
fixed NumPy seed, so the file is the same on every run. Only NumPy and the standard library are used.
"""
import json
import os
import struct
import sys

import numpy as np


def save_safetensors(path, tensors, metadata):
    """The safetensors reference writer's layout: dtype alignment descending, then name; packed data;
    JSON padded with spaces to a multiple of 8."""
    header = {"__metadata__": metadata}
    offset = 0
    for name in sorted(tensors):  # all F32 here, so name order is the writer's order
        nbytes = tensors[name].nbytes
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in sorted(tensors):
            f.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())


def main():
    rng = np.random.RandomState(0)

    def uniform(shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, size=shape).astype(np.float32)

    tensors = {
        "conv1.weight": uniform((10, 3, 3, 3), 3 * 9),
        "conv1.bias": uniform((10,), 3 * 9),
        "conv2.weight": uniform((5, 10, 3, 3), 10 * 9),
        "conv2.bias": uniform((5,), 10 * 9),
        "fc.weight": uniform((1, 125), 125),
        "fc.bias": uniform((1,), 125),
    }
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "classic_rgb.safetensors")
    save_safetensors(out, tensors, {"format": "pt", "model": "classic RGB recipe: conv1 3->10, conv2 10->5, fc 125->1"})


if __name__ == "__main__":
    main()
