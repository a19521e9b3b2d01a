#!/usr/bin/python3
"""Writes a synthetic safetensors checkpoint of about SIZE bytes: a ViT-like patch embedding
`stem.weight` [1280,3,14,14] F32 (the only 3-channel tensor) plus `blocks.N.weight` F32 tensors of
64 MiB filled with non-zero data (not sparse, so `cp` gets no shortcut through holes).

    synthetic.py OUT SIZE_MIB
"""
import json
import struct
import sys

import numpy as np

BLOCK = 4096 * 4096 * 4  # bytes of one blocks.N.weight


def make(path, size_bytes, seed=0, first_block=0, with_stem=True):
    """Returns the stem's values (None without one) and the names written."""
    rng = np.random.default_rng(seed)
    stem = rng.standard_normal((1280, 3, 14, 14)).astype(np.float32)
    blocks = max(1, (size_bytes - (stem.nbytes if with_stem else 0)) // BLOCK)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    names = [f"blocks.{i:04d}.weight" for i in range(first_block, first_block + blocks)]
    for name in names:
        header[name] = {"dtype": "F32", "shape": [4096, 4096], "data_offsets": [offset, offset + BLOCK]}
        offset += BLOCK
    if with_stem:
        header["stem.weight"] = {"dtype": "F32", "shape": list(stem.shape), "data_offsets": [offset, offset + stem.nbytes]}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    block = rng.standard_normal(BLOCK // 4).astype(np.float32).tobytes()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _ in names:
            f.write(block)
        if with_stem:
            f.write(stem.tobytes())
    return (stem if with_stem else None), names + (["stem.weight"] if with_stem else [])


if __name__ == "__main__":
    make(sys.argv[1], int(sys.argv[2]) << 20)
