"""Faults that must lose nothing: a full disk, signals in the middle of a write, the input shrinking
under widen's mapping, truncated and corrupted files. After each, the input is as it was (unless the
test itself changed it) and no file but the expected output is left in the output folder."""
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xxhash

from reference import ROOT, SCALE, WIDEN, run, save, scaled

EVERY = max(1, round(1 / SCALE))  # an emulated CLI (qemu) runs one case in EVERY of the many below

sys.path.insert(0, os.path.join(ROOT, "bench"))
import synthetic  # noqa: E402


def digest(path):
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    synthetic.make(str(path), scaled(384 << 20))  # long enough a write to be interrupted (qemu is slower)
    return path, digest(path)


def start(*args):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    return subprocess.Popen([WIDEN, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_temporary(folder, at_least=1 << 20, timeout=60):
    """Waits until widen's temporary output in `folder` holds `at_least` bytes; returns its path."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in os.listdir(folder):
            if ".widen-" in name:
                try:
                    if os.path.getsize(os.path.join(folder, name)) >= at_least:
                        return name
                except FileNotFoundError:
                    pass
        time.sleep(0.005)
    return None


def test_full_disk_exits_4_and_leaves_nothing(tmp_path):
    src = tmp_path / "in.safetensors"
    save(str(src), {"w": ("F32", np.ones((64, 3, 64, 64), np.float32))})
    before = digest(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
    proc = subprocess.run([WIDEN, "apply", str(src), "-o", str(out_dir / "o.safetensors"), "--to", "4"],
                          capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 4, proc.stderr
    assert "write failed" in proc.stderr and "o.safetensors" in proc.stderr
    assert os.listdir(out_dir) == [] and digest(src) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_write_exits_130_and_leaves_nothing(tmp_path, big, sig):
    src, before = big
    proc = start("apply", src, "-o", tmp_path / "o.safetensors", "--to", "4", "--threads", "1")
    assert wait_for_temporary(tmp_path, 8 << 20), "no temporary output appeared"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert os.listdir(tmp_path) == [] and digest(src) == before


def test_input_shrinking_under_the_mapping_exits_4_and_leaves_nothing(tmp_path, big):
    src, _ = big
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(src.read_bytes())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = start("apply", victim, "-o", out_dir / "o.safetensors", "--to", "4", "--threads", "1")
    assert wait_for_temporary(out_dir, 8 << 20), "no temporary output appeared"
    os.truncate(victim, 4 << 20)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the truncation")
    assert proc.returncode in (3, 4), err
    assert err.startswith("widen: error: ") and len(err.strip().split("\n")) == 1
    assert os.listdir(out_dir) == []


def test_truncation_at_every_header_offset_and_many_data_offsets(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "in.safetensors"
    save(str(src), {"a.weight": ("F32", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
                    "b": ("I64", np.arange(5))}, {"k": "v"})
    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    cut = tmp_path / "cut.safetensors"
    # every header offset (one in EVERY under qemu, where the release runs have tried them all)
    offsets = list(range(0, 8 + n, EVERY)) + list(range(8 + n, len(data), 7 * EVERY))
    for k in offsets:
        cut.write_bytes(data[:k])
        proc = run("apply", cut, "-o", tmp_path / "o.safetensors", "--to", "4")
        assert proc.returncode == 3, (k, proc.stderr)
    assert sorted(os.listdir(tmp_path)) == ["cut.safetensors", "in.safetensors"]


def test_random_header_flips_never_crash(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "in.safetensors"
    save(str(src), {"a.weight": ("F32", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
                    "b": ("I64", np.arange(5))}, {"k": "v"})
    data = bytearray(src.read_bytes())
    n = int.from_bytes(data[:8], "little")
    bad = tmp_path / "bad.safetensors"
    outcomes = {0: 0, 3: 0}
    trials = 300 // EVERY
    for trial in range(trials):
        flipped = bytearray(data)
        pos = int(rng.integers(0, 8 + n))
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(flipped))
        proc = run("apply", bad, "-o", tmp_path / "o.safetensors", "--to", "4", "--force")
        assert proc.returncode in (0, 2, 3), (pos, proc.returncode, proc.stderr)
        if proc.returncode == 0:  # a flip that still makes a valid file (a name, a metadata value)
            run("verify", bad, tmp_path / "o.safetensors", check=0)
            os.unlink(tmp_path / "o.safetensors")
        outcomes[proc.returncode] = outcomes.get(proc.returncode, 0) + 1
    assert outcomes[3] > trials * 2 // 3  # nearly every flip is caught
    assert sorted(os.listdir(tmp_path)) == ["bad.safetensors", "in.safetensors"]


def test_pt_truncations_and_flips(tmp_path):
    import torch
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    torch.save({"conv.weight": torch.randn(4, 3, 3, 3), "n": 3}, path)
    data = path.read_bytes()
    bad = tmp_path / "bad.pt"
    rng = np.random.default_rng(3)
    for k in list(range(0, len(data), 13 * EVERY)):
        bad.write_bytes(data[:k])
        assert run("inspect", bad).returncode == 3, k
    for trial in range(200 // EVERY):
        flipped = bytearray(data)
        pos = int(rng.integers(0, len(data)))
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(flipped))
        proc = run("apply", bad, "-o", tmp_path / "o.pt", "--to", "4", "--force")
        assert proc.returncode in (0, 2, 3), (pos, proc.returncode, proc.stderr)


def test_read_only_output_folder_exits_4(tmp_path):
    """A read-only bind mount in a private mount namespace: root's write permission does not help."""
    src = tmp_path / "in.safetensors"
    save(str(src), {"w": ("F32", np.ones((4, 3, 2, 2), np.float32))})
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && "
              f"exec {WIDEN} apply {src} -o {ro}/o.safetensors --to 4")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    if "mount" in proc.stderr and proc.returncode not in (4,):
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.startswith("widen: error: ") and "Read-only file system" in proc.stderr
    assert os.listdir(ro) == []
