"""Outputs written side by side at their offsets (issue 15), safetensors, .pt and .npz: the bytes, the
hashes and the counts are those of the ordered stream, for every thread count; the values are
NumPy's (and torch's, for a .pt); progress keeps its contract on several threads, and a cancel or a
full disk leaves no output."""
import json
import os
import subprocess

import numpy as np
import pytest

from reference import LIBWIDEN, ROOT, WIDEN, cli_env, f32_to_bf16_bits, load, run, save

os.environ["WIDEN_LIBRARY"] = os.path.abspath(LIBWIDEN)
import sys  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "python"))
import widen  # noqa: E402

MiB = 1 << 20
THREADS = ("1", "2", "3", "8")


def mixed_tensors():
    """About 30 MiB: tensors over a thread's share at 3 and 8 threads, a few of several MiB, a conv
    weight to remap, hundreds of small ones of odd sizes, empty ones, and untouched integer runs
    (one over 1 MiB, which the kernel copies at its offset)."""
    rng = np.random.default_rng(15)
    t = {"big": ("F32", rng.standard_normal(5 * MiB // 2, dtype=np.float32)),  # 10 MiB
         "stem.weight": ("F32", rng.standard_normal((64, 3, 7, 7), dtype=np.float32)),
         "wide_rows": ("F32", rng.standard_normal((1, 3, 350001), dtype=np.float32)),  # a row over 4 MiB
         "half": ("F16", rng.standard_normal(3 * MiB // 2 + 3).astype(np.float16)),
         "ids": ("I64", np.arange(300001, dtype=np.int64)),
         "ids2": ("I64", np.arange(7, dtype=np.int64)),
         "empty": ("F32", np.zeros((0,), np.float32)),
         "empty2": ("F32", np.zeros((3, 0, 2), np.float32)),
         "scalar": ("F32", np.array(1.5, np.float32))}
    for i in range(4):
        t[f"mid.{i}"] = ("F32", rng.standard_normal(MiB // 2 + 17 * i, dtype=np.float32))
    for i in range(300):
        t[f"small.{i:03d}"] = ("F32", rng.standard_normal(int(rng.integers(0, 3000)), dtype=np.float32))
    return t


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("parallel")
    path = str(d / "mixed.safetensors")
    t = mixed_tensors()
    save(path, t)
    return d, path, t


TRANSFORMS = {
    "bf16": ["--cast", "bf16"],
    "f16": ["--cast", "f16"],
    "to4": ["-t", "stem.weight", "--to", "4", "--map", "2,zero,1,const:-1.5"],
    "to4-cast": ["-t", "wide_rows", "--to", "4", "--map", "0,mean,2,1", "--cast", "bf16"],
}


def streamed(path, args, fmt=()):
    """The ordered stream's bytes: standard output goes front to back whatever the threads."""
    proc = subprocess.run([WIDEN, "apply", path, "-o", "-", *args, *fmt, "--threads", "8", "--no-progress"],
                          capture_output=True, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def on_every_thread_count(d, path, name, ext):
    """The output of TRANSFORMS[name] (and its manifest) at each of THREADS, which must all be equal,
    with counts that add up to the file; the bytes."""
    outputs, manifests = {}, {}
    for threads in THREADS:
        out, man = d / f"{name}-{threads}.{ext}", d / f"{name}-{threads}.{ext}.json"
        proc = run("apply", path, "-o", out, *TRANSFORMS[name], "--threads", threads, "--no-fsync", "--manifest", man,
                   "--json", check=0)
        counts = json.loads(proc.stdout)["bytes"]
        assert counts["cloned"] + counts["copied"] + counts["written"] == os.path.getsize(out), (threads, counts)
        if name.startswith(("bf16", "f16")):
            assert counts["copied"] + counts["cloned"] >= 300001 * 8  # the long untouched run, moved by the kernel
        outputs[threads] = out.read_bytes()
        manifests[threads] = json.loads(man.read_text())["tensors"]
    assert all(outputs[n] == outputs["1"] for n in THREADS), "the bytes depend on the threads"
    assert all(manifests[n] == manifests["1"] for n in THREADS), "the hashes depend on the threads"
    return outputs["1"]


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_every_thread_count_writes_the_streams_bytes(source, name):
    d, path, t = source
    args = TRANSFORMS[name]
    first = on_every_thread_count(d, path, name, "safetensors")
    assert first == streamed(path, args)
    scalar = d / f"{name}-scalar.safetensors"  # the C reference kernels, side by side
    run("apply", path, "-o", scalar, *args, "--threads", "3", "--no-fsync", env={"WIDEN_ISA": "scalar"}, check=0)
    assert scalar.read_bytes() == first, "the bytes depend on the ISA"
    run("verify", path, d / f"{name}-8.safetensors", "--manifest", d / f"{name}-8.safetensors.json", "--threads", "3",
        check=0)

    _, got, _, _ = load(d / f"{name}-8.safetensors")
    assert set(got) == set(t)
    cast = "bf16" if "bf16" in args else "f16" if "f16" in args else None
    for key, (dtype, a) in t.items():
        if name == "to4" and key == "stem.weight":
            a = np.stack([a[:, 2], np.zeros_like(a[:, 0]), a[:, 1], np.full_like(a[:, 0], -1.5)], axis=1)
        elif name == "to4-cast" and key == "wide_rows":
            mean = a.mean(axis=1, dtype=np.float32)
            assert np.allclose(bf16(got[key][1][:, 1]), mean, rtol=1e-2, atol=1e-2)
            a = np.stack([a[:, 0], bf16(got[key][1][:, 1]), a[:, 2], a[:, 1]], axis=1)
        if cast == "bf16" and dtype in ("F32", "F16"):
            assert got[key][0] == "BF16" and np.array_equal(got[key][1], f32_to_bf16_bits(a.astype(np.float32)).reshape(a.shape)), key
        elif cast == "f16" and dtype == "F32":
            assert got[key][0] == "F16" and np.array_equal(got[key][1], a.astype(np.float16)), key
        else:
            assert got[key][0] == dtype and np.array_equal(got[key][1], a), key


# a .pt's zip records laid out in advance: each record's bytes from a worker, then the local headers
# and data descriptors with their CRC-32s; the archive is the ordered writer's, byte for byte
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_a_pt_output_on_every_thread_count_is_the_streams(source, name):
    torch = pytest.importorskip("torch")
    d, path, t = source
    args = TRANSFORMS[name]
    assert on_every_thread_count(d, path, name, "pt") == streamed(path, args, ("--format", "pt"))
    run("verify", path, d / f"{name}-8.pt", "--manifest", d / f"{name}-8.pt.json", check=0)
    # torch reads what the ordered safetensors writer wrote (whose values test_every_thread_count...
    # checks against NumPy), bit for bit
    plain = d / f"{name}-plain.safetensors"
    run("apply", path, "-o", plain, *args, "--threads", "1", "--no-fsync", check=0)
    _, want, _, _ = load(plain)
    got = torch.load(str(d / f"{name}-8.pt"), weights_only=True)
    assert set(got) == set(want)
    for key, (dtype, a) in want.items():
        g = got[key]
        bits = g.view(torch.int16) if g.dtype == torch.bfloat16 else g
        assert tuple(g.shape) == a.shape and np.array_equal(bits.numpy().view(a.dtype), a), key


# an .npz's members laid out in advance as np.savez lays them out: each array from a worker, then the
# local headers with their CRC-32s (of the .npy header and the array); the archive is the ordered
# writer's (one thread), byte for byte, and zipfile and np.load read it with their CRC checks
@pytest.mark.parametrize("name", ["f16", "to4"])  # .npz has no BF16
def test_an_npz_output_on_every_thread_count_is_the_ordered_writers(source, name):
    import zipfile
    d, path, _ = source
    args = TRANSFORMS[name]
    on_every_thread_count(d, path, name, "npz")
    out = d / f"{name}-8.npz"
    run("verify", path, out, "--manifest", d / f"{name}-8.npz.json", check=0)
    with zipfile.ZipFile(out) as z:
        assert z.testzip() is None, "a member's CRC-32 is wrong"
    plain = d / f"{name}-npz-plain.safetensors"  # its values are checked against NumPy above
    run("apply", path, "-o", plain, *args, "--threads", "1", "--no-fsync", check=0)
    _, want, _, _ = load(plain)
    with np.load(out) as got:
        assert set(got.files) == set(want)
        for key, (_, a) in want.items():
            g = got[key]
            assert g.shape == a.shape and g.dtype == a.dtype and np.array_equal(g, a), key


def bf16(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_a_pt_input_with_views_and_strides(tmp_path):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(3)
    base = torch.randn(512, 1100, generator=g)
    sd = {"t": base.t(), "view": base[3:200], "conv": torch.randn(8, 3, 3, 3, generator=g),
          "ids": torch.arange(200000), "big": torch.randn(3 * MiB, generator=g)}
    for i in range(50):
        sd[f"s{i}"] = torch.randn(i * 31, generator=g)
    src = str(tmp_path / "m.pt")
    torch.save(sd, src)
    outs = []
    for threads in ("1", "3"):
        out = tmp_path / f"o{threads}.safetensors"
        run("apply", src, "-o", out, "--cast", "bf16", "--threads", threads, "--no-fsync", check=0)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    pts = []
    for threads in ("1", "3"):  # and to a .pt: views and strides, records copied whole and cast
        out = tmp_path / f"o{threads}.pt"
        run("apply", src, "-o", out, "--to", "4", "-t", "conv", "--threads", threads, "--no-fsync", check=0)
        pts.append(out.read_bytes())
    assert pts[0] == pts[1]
    back = torch.load(str(tmp_path / "o3.pt"), weights_only=True)
    assert torch.equal(back["t"], base.t()) and torch.equal(back["view"], base[3:200])
    assert torch.equal(back["conv"][:, :3], sd["conv"]) and not back["conv"][:, 3].any()
    assert torch.equal(back["big"], sd["big"]) and torch.equal(back["s49"], sd["s49"])
    _, got, _, _ = load(tmp_path / "o3.safetensors")
    assert np.array_equal(got["t"][1], f32_to_bf16_bits(base.t().numpy()))
    assert np.array_equal(got["ids"][1], np.arange(200000))
    run("verify", src, tmp_path / "o3.safetensors", check=0)


@pytest.mark.host_only("the Python package over this build's library")
@pytest.mark.parametrize("threads,ext", [(2, "safetensors"), (8, "safetensors"), (3, "pt")])
def test_progress_on_threads_and_cancel(source, threads, ext):
    d, path, _ = source
    calls = []
    out = str(d / f"p{threads}.{ext}")
    widen.apply(path, out, cast="bf16", threads=threads, fsync=False, overwrite=True,
                progress=lambda done, total: calls.append((done, total)))
    done = [c[0] for c in calls]
    assert done == sorted(done) and done[-1] == calls[0][1] and {c[1] for c in calls} == {calls[0][1]}
    assert max(np.diff([0] + done)) <= 64 * MiB
    for stop_at in (1, 5):
        calls = []
        gone = str(d / f"cancel{threads}-{stop_at}.{ext}")
        with pytest.raises(widen.Interrupted):
            widen.apply(path, gone, cast="bf16", threads=threads, fsync=False,
                        progress=lambda done, total: calls.append(done) or len(calls) >= stop_at)
        assert len(calls) == stop_at, "progress called after the cancel"
        assert not os.path.exists(gone)
        assert not [f for f in os.listdir(d) if f.startswith(".") or "cancel" in f], "a temporary was left"


@pytest.mark.parametrize("ext", ["safetensors", "pt", "npz"])
def test_a_full_disk_on_a_worker_fails_the_run_and_leaves_nothing(source, tmp_path, ext):
    import resource
    _, path, _ = source
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
    proc = subprocess.run([WIDEN, "apply", path, "-o", str(out_dir / f"o.{ext}"), "--cast", "f16", "--threads",
                           "4"], capture_output=True, text=True, preexec_fn=limit, env=cli_env())
    assert proc.returncode == 4, proc.stderr
    # a worker's pwrite, or its copy of the untouched run, met the limit: one message, the first
    assert f"o.{ext}" in proc.stderr and ("write failed" in proc.stderr or "too large" in proc.stderr)
    assert len(proc.stderr.strip().split("\n")) == 1, proc.stderr
    assert os.listdir(out_dir) == []
