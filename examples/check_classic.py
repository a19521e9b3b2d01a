#!/usr/bin/python3
"""Runs the classic RGB model (conv1 3->10, conv2 10->5, fc 125->1, 5x5 inputs) in NumPy on the
original weights with an RGB batch, and on the widened weights with the same batch plus a random 4th
channel, and prints the largest difference: 0 when the new channel's weights are zero.

    check_classic.py ORIGINAL.safetensors WIDENED.safetensors
"""
import json
import struct
import sys

import numpy as np


def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return {k: np.frombuffer(raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], "<f4").reshape(v["shape"])
            for k, v in header.items()}


def conv3x3(x, w, b):
    """Conv2d(kernel 3, padding 1), summing input channels one at a time in a fixed order."""
    batch, cin, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((batch, w.shape[0], h, wd), np.float32) + b[None, :, None, None]
    for c in range(cin):
        for i in range(3):
            for j in range(3):
                out += w[None, :, c, i, j, None, None] * xp[:, c, None, i:i + h, j:j + wd]
    return out


def forward(m, x):
    y = np.maximum(conv3x3(x, m["conv1.weight"], m["conv1.bias"]), 0)
    y = np.maximum(conv3x3(y, m["conv2.weight"], m["conv2.bias"]), 0)
    return y.reshape(len(x), -1) @ m["fc.weight"].T + m["fc.bias"]


def main():
    old, new = load(sys.argv[1]), load(sys.argv[2])
    rng = np.random.default_rng(0)
    rgb = rng.standard_normal((8, 3, 5, 5)).astype(np.float32)
    rgba = np.concatenate([rgb, rng.standard_normal((8, 1, 5, 5)).astype(np.float32)], 1)
    err = float(np.abs(forward(old, rgb) - forward(new, rgba)).max())
    print(f"conv1.weight {list(old['conv1.weight'].shape)} -> {list(new['conv1.weight'].shape)}; "
          f"outputs on 8 inputs, max abs diff (Err): {err}")
    sys.exit(0 if err == 0 else 1)


if __name__ == "__main__":
    main()
