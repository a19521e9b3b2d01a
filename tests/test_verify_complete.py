"""verify accounts for every byte: for outputs of every format and path, changing, inserting,
removing or duplicating any region of the output (the safetensors header and each tensor; each zip
local header, record, data descriptor, the central directory and the end records of a .pt) makes
verify exit 1 or 3, never 0, and never crash."""
import json
import os
import struct
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from reference import SCALE, WIDEN, run, save

SANITIZED = bool(os.environ.get("WIDEN_SANITIZE"))
# the sanitizer pass checks one mutation in 4, turn by turn through each region's; an emulated CLI (qemu,
# SCALE < 1) one mutation a region, in turn: every region is still changed
EVERY = 4 if SANITIZED else 1
ONE_A_REGION = SCALE < 1 and not SANITIZED


def regions_safetensors(data):
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    out = [("length", 0, 8), ("header", 8, 8 + n)]
    for name, info in header.items():
        if name != "__metadata__" and info["data_offsets"][1] > info["data_offsets"][0]:
            out.append((f"tensor {name}", 8 + n + info["data_offsets"][0], 8 + n + info["data_offsets"][1]))
    return out


def regions_pt(path, data):
    out = []
    with zipfile.ZipFile(path) as z:
        infos = sorted(z.infolist(), key=lambda i: i.header_offset)
    ends = [i.header_offset for i in infos[1:]]
    cd = data.rindex(b"PK\x06\x06")  # the ZIP64 end record follows the central directory
    ends.append(data.index(b"PK\x01\x02"))
    for info, end in zip(infos, ends):
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len
        out.append((f"local header {info.filename}", info.header_offset, start))
        if info.file_size:
            out.append((f"record {info.filename}", start, start + info.file_size))
        if end > start + info.file_size:
            out.append((f"descriptor {info.filename}", start + info.file_size, end))
    out.append(("central directory", data.index(b"PK\x01\x02"), cd))
    out.append(("zip64 end record", cd, cd + 56))
    out.append(("zip64 locator", cd + 56, cd + 76))
    out.append(("end record", cd + 76, len(data)))
    assert out[-1][2] - out[-1][1] == 22
    return out


def mutations(data, begin, end):
    """Variants of `data` changed in [begin, end)."""
    mid = (begin + end) // 2
    for at in sorted({begin, mid, end - 1}):
        for bit in (0x01, 0x80):
            yield f"flip {bit:#x} at {at}", data[:at] + bytes([data[at] ^ bit]) + data[at + 1:]
    yield "insert", data[:begin] + b"\x00" + data[begin:]
    yield "remove", data[:begin] + data[begin + 1:]
    if end - begin <= 1 << 16:
        yield "duplicate", data[:end] + data[begin:end] + data[end:]


def outputs(tmp_path):
    """(name, input, output, manifest) for every path apply has."""
    torch.manual_seed(0)
    base = torch.randn(6, 10)
    sd = {"conv.weight": torch.randn(8, 3, 3, 3), "tied.a": base, "tied.b": base, "view": base[2:4], "t": base.t(),
          "half": torch.randn(5).half(), "steps": torch.tensor(7),
          "sparse": torch.sparse_coo_tensor([[0, 1], [1, 0]], [1.0, 2.0], (2, 2))}
    pt = tmp_path / "in.pt"
    torch.save({"model": sd, "epoch": 3, "names": ["a", "b"]}, pt)
    st = tmp_path / "in.safetensors"
    rng = np.random.default_rng(0)
    save(str(st), {"conv.weight": ("F32", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
                   "bias": ("F16", rng.standard_normal(8).astype(np.float16)), "n": ("I64", np.arange(3))},
         {"format": "pt", "origin": "test"})
    cases = [("st-st-widen", st, "o1.safetensors", ["--to", "4"]),
             ("st-st-cast", st, "o2.safetensors", ["--cast", "bf16"]),
             ("st-pt-widen", st, "o3.pt", ["--to", "4"]),
             ("pt-pt-widen", pt, "o4.pt", ["-t", "model.conv.weight", "--to", "4", "--init", "mean"]),
             ("pt-pt-cast", pt, "o5.pt", ["--cast", "f16"]),
             ("pt-st-widen", pt, "o6.safetensors", ["-t", "model.conv.weight", "--to", "4"]),
             ("pt-pt-strided-map", pt, "o7.pt", ["-t", "model.t", "--from", "6", "--map", "5,0,zero", "--axis", "1"])]
    for name, src, out, args in cases:
        manifest = tmp_path / f"{out}.json"
        run("apply", src, "-o", tmp_path / out, "--manifest", manifest, *args, check=0)
        run("verify", src, tmp_path / out, "--manifest", manifest, check=0)
        yield name, src, tmp_path / out, manifest


def test_every_changed_region_is_a_difference(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "WIDEN_ISA")}
    checked = 0
    for name, src, out, manifest in list(outputs(tmp_path)):
        data = out.read_bytes()
        regions = regions_pt(out, data) if out.suffix == ".pt" else regions_safetensors(data)
        covered = sorted((b, e) for _, b, e in regions)  # the regions tile the file: every byte is in one
        assert covered[0][0] == 0 and covered[-1][1] == len(data)
        assert all(covered[i][1] == covered[i + 1][0] for i in range(len(covered) - 1)), name
        mutated = tmp_path / f"m{out.suffix}"
        for k, (region, begin, end) in enumerate(regions):
            variants = list(mutations(data, begin, end))
            for m, (what, blob) in enumerate(variants):
                if (k + m) % EVERY or (ONE_A_REGION and m != k % len(variants)):
                    continue  # sampled (above)
                mutated.write_bytes(blob)
                for extra in (["--manifest", manifest], []):
                    if extra == [] and out.suffix == ".pt":
                        continue  # a .pt output records its transform only in the manifest
                    proc = subprocess.run([WIDEN, "verify", src, mutated, *extra], capture_output=True, text=True,
                                          env=env, timeout=60)
                    assert proc.returncode in (1, 3), (name, region, what, proc.returncode, proc.stdout, proc.stderr)
                    checked += 1
    assert checked > (70 if ONE_A_REGION else 600 // EVERY)
