"""Bounded memory: peak RSS (as /usr/bin/time -v reports it, file pages included) stays under
64 MiB on a file far larger than that, for apply, verify and hash. Under qemu (an emulated CLI), the
files are smaller (SCALE), still twice the bound or more, and the RSS is the emulator's and the
program's together."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from reference import ROOT, SCALE, WIDEN, scaled

sys.path.insert(0, os.path.join(ROOT, "bench"))
import synthetic  # noqa: E402

LIMIT_KIB = 64 * 1024


def peak_rss_kib(*args):
    """Peak RSS of one CLI run; 0 on a sanitizer build, whose shadow memory is not widen's to bound."""
    proc = subprocess.run(["/usr/bin/time", "-v", WIDEN, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if os.environ.get("WIDEN_SANITIZE"):
        return 0
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))


def test_peak_rss_is_bounded_on_a_512_mib_file(tmp_path):
    src = tmp_path / "big.safetensors"
    stem, _ = synthetic.make(str(src), scaled(512 << 20, at_least=2 * synthetic.BLOCK + (4 << 20)))
    assert src.stat().st_size > scaled(7 * LIMIT_KIB * 1024, at_least=2 * LIMIT_KIB * 1024)
    out = tmp_path / "out.safetensors"
    assert peak_rss_kib("apply", src, "-o", out, "--to", "4", "--no-fsync", "--threads", "2") < LIMIT_KIB
    assert peak_rss_kib("verify", src, out) < LIMIT_KIB
    assert peak_rss_kib("hash", out) < LIMIT_KIB
    # the widened tensor, read back independently
    with open(out, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    header = json.loads(open(out, "rb").read(8 + n)[8:])
    begin, end = header["stem.weight"]["data_offsets"]
    with open(out, "rb") as f:
        f.seek(8 + n + begin)
        got = np.frombuffer(f.read(end - begin), dtype="<f4").reshape(1280, 4, 14, 14)
    assert got.tobytes() == np.pad(stem, ((0, 0), (0, 1), (0, 0), (0, 0))).tobytes()


def test_memory_follows_names_not_data_on_100000_tensors(tmp_path):
    """A checkpoint of 100,000 tensors (torch.save): memory grows with the names, not the data: at
    most 4 KiB a tensor for apply, 8 KiB for verify (which reads two checkpoints and a manifest), on
    top of the bounded data path; and every name is read."""
    import collections
    import torch
    n = scaled(100_000)
    sd = collections.OrderedDict([("stem.weight", torch.ones(8, 3, 3, 3))] +
                                 [(f"blocks.{i}.weight", torch.full((4,), float(i))) for i in range(n)])
    src, out, manifest = tmp_path / "many.pt", tmp_path / "o.pt", tmp_path / "m.json"
    torch.save(sd, src)
    assert peak_rss_kib("apply", src, "-o", out, "--to", "4", "--manifest", manifest, "--no-fsync") < LIMIT_KIB + 4 * n
    assert peak_rss_kib("verify", src, out, "--manifest", manifest) < LIMIT_KIB + 8 * n
    doc = json.loads(subprocess.run([WIDEN, "inspect", out, "--json"], capture_output=True, text=True).stdout)
    assert len(doc["tensors"]) == n + 1 and doc["tensors"][0]["shape"] == [8, 4, 3, 3]
    entries = {t["name"]: t for t in json.loads(manifest.read_text())["tensors"]}
    import xxhash
    k = 77777 * n // 100_000
    assert entries[f"blocks.{k}.weight"]["output"]["xxh3_128"] == xxhash.xxh3_128_hexdigest(
        np.full(4, float(k), np.float32).tobytes())


def test_folder_memory_is_bounded_by_the_largest_step(tmp_path):
    """A 768 MiB model folder of 12 shards: apply and verify stay under the same 64 MiB as one file,
    however many shards there are (the untouched ones are copied by the kernel, not read). Under qemu,
    3 shards (192 MiB)."""
    src, out = tmp_path / "model", tmp_path / "out"
    src.mkdir()
    weight_map, first = {}, 0
    shards = max(3, round(12 * SCALE))
    for k in range(shards):
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        _, names = synthetic.make(str(src / name), 64 << 20, seed=k, first_block=first, with_stem=k == min(5, shards - 2))
        first += len(names)
        weight_map.update({n: name for n in names})
    with open(src / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    assert peak_rss_kib("apply", src, "-o", out, "--to", "4", "--no-fsync", "--threads", "2") < LIMIT_KIB
    assert peak_rss_kib("verify", src, out) < LIMIT_KIB
    assert peak_rss_kib("hash", out) < LIMIT_KIB


@pytest.mark.skipif(bool(os.environ.get("WIDEN_SANITIZE")),
                    reason="peak RSS means nothing under a sanitizer; test_legacy.py and test_numpy.py run these paths")
def test_legacy_torch_and_compressed_npz_memory_is_bounded(tmp_path):
    """A legacy torch.save file and an np.savez_compressed archive, each several times the limit:
    apply, verify and hash stream them (the archive's members inflated through a fixed buffer into
    a temporary file), and the widened stem is what NumPy computes."""
    import torch
    g = np.random.default_rng(7)
    stem = g.standard_normal((64, 3, 7, 7)).astype(np.float32)
    # 128 MiB that deflate shrinks fast (48 MiB under qemu: SCALE)
    block = (np.arange(scaled(32 << 20, at_least=12 << 20), dtype=np.int64) % 251).astype(np.float32)
    legacy = tmp_path / "legacy.pth"
    torch.save({"stem.weight": torch.from_numpy(stem), "a": torch.from_numpy(block), "b": torch.from_numpy(block[::-1].copy())},
               legacy, _use_new_zipfile_serialization=False)
    npz = tmp_path / "c.npz"
    np.savez_compressed(npz, **{"stem/weight": stem.transpose(2, 3, 1, 0), "a": block, "b": block[::-1]})
    assert legacy.stat().st_size > scaled(4 * LIMIT_KIB * 1024, at_least=LIMIT_KIB * 1024)
    for src, name, axis, fmt in ((legacy, "stem.weight", "1", "pt"), (npz, "stem/weight", "-2", "safetensors")):
        out, manifest = tmp_path / f"out.{fmt}", tmp_path / f"{fmt}.json"
        assert peak_rss_kib("apply", src, "-o", out, "-t", name, "--axis", axis, "--to", "4", "--no-fsync",
                            "--manifest", manifest) < LIMIT_KIB
        assert peak_rss_kib("verify", src, out, "--manifest", manifest) < LIMIT_KIB
        assert peak_rss_kib("hash", src) < LIMIT_KIB
    want = np.pad(stem, ((0, 0), (0, 1), (0, 0), (0, 0)))
    assert torch.load(tmp_path / "out.pt", weights_only=True)["stem.weight"].numpy().tobytes() == want.tobytes()
    import reference
    got = reference.load(tmp_path / "out.safetensors")[1]["stem/weight"][1]
    assert got.tobytes() == np.ascontiguousarray(want.transpose(2, 3, 1, 0)).tobytes()
