"""The Python package (python/widen) over the built library: reading tensors (zero-copy views and
gathered copies), apply/verify/hash round trips against NumPy, progress and cancellation, typed
errors, the in-memory remap, and an offline pip install into a venv."""
import ctypes
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from reference import BUILD, LIBWIDEN, ROOT, load, save

os.environ["WIDEN_LIBRARY"] = os.path.abspath(LIBWIDEN)
sys.path.insert(0, os.path.join(ROOT, "python"))
import widen  # noqa: E402

pytestmark = pytest.mark.host_only("the Python package over this build's library")

xxhash = pytest.importorskip("xxhash")


def make(tmp_path, name="m.safetensors"):
    rng = np.random.default_rng(7)
    tensors = {"conv.weight": ("F32", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
               "conv.bias": ("F32", rng.standard_normal(4).astype(np.float32)),
               "emb": ("F16", rng.standard_normal((5, 2)).astype(np.float16)),
               "steps": ("I64", np.arange(6, dtype=np.int64).reshape(2, 3)),
               "half": ("BF16", np.arange(6, dtype=np.uint16)),
               "empty": ("F32", np.zeros((0, 3), np.float32))}
    path = str(tmp_path / name)
    save(path, tensors, {"note": "hi"})
    return path, tensors


def test_open_lists_and_gets_zero_copy_views(tmp_path):
    path, tensors = make(tmp_path)
    _, _, header, start = load(path)
    with widen.open(path) as ckpt:
        assert ckpt.format == "safetensors" and ckpt.metadata == {"note": "hi"}
        assert set(ckpt.names()) == set(tensors)
        for t in ckpt:
            info = header[t.name]
            assert (t.dtype, list(t.shape), t.offset, t.nbytes) == (
                info["dtype"], info["shape"], start + info["data_offsets"][0],
                info["data_offsets"][1] - info["data_offsets"][0])
            a = ckpt.get(t.name)
            assert a.shape == tensors[t.name][1].shape and not a.flags.writeable
            assert np.array_equal(a, tensors[t.name][1])
        w = ckpt.get("conv.weight")
        w2 = ckpt["conv.weight"]
        assert np.shares_memory(w, w2), "two gets of one tensor view the same mapping"
        assert not np.shares_memory(w, ckpt.get("conv.weight", copy=True))
        assert ckpt.get("half").dtype == np.uint16  # BF16: raw bits
    # closed, but the view keeps the mapping alive
    assert np.array_equal(w, tensors["conv.weight"][1])
    del w2
    with pytest.raises(widen.UsageError) as e:
        ckpt.get("conv.weight")
    assert e.value.status == 2


def test_get_torch_checkpoint_views_and_strided_copies(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"plain": base, "t": base.t(), "col": base[:, 1], "bf": torch.ones(3, dtype=torch.bfloat16)}
    path = str(tmp_path / "m.pt")
    torch.save(sd, path)
    with widen.open(path) as ckpt:
        assert ckpt.format == "pt"
        assert not ckpt.info("plain").strided and ckpt.info("t").strided
        for name, value in sd.items():
            a = ckpt.get(name)
            expect = value.contiguous().view(torch.int16).numpy().view(np.uint16) if name == "bf" else value.numpy()
            assert np.array_equal(a, expect), name
        plain = ckpt.get("plain")
        assert not plain.flags.writeable and not plain.flags.owndata
        strided = ckpt.get("t")
        assert strided.flags.writeable and strided.flags.owndata  # gathered into a copy
        assert torch.equal(torch.from_numpy(ckpt.get("bf").view(np.int16).copy()).view(torch.bfloat16), sd["bf"])


def test_get_numpy_fortran_and_big_endian_arrays(tmp_path):
    a = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    b = np.arange(5, dtype=">i4")
    path = str(tmp_path / "m.npz")
    np.savez(path, a=a, b=b, c=np.arange(3, dtype=np.float64))
    with widen.open(path) as ckpt:
        assert ckpt.info("a").strided and ckpt.info("b").strided and not ckpt.info("c").strided
        assert np.array_equal(ckpt.get("a"), a) and np.array_equal(ckpt.get("b"), b)
        assert ckpt.get("b").dtype == np.dtype("<i4")
        assert not ckpt.get("c").flags.owndata


def test_apply_verify_hash_round_trip(tmp_path):
    path, tensors = make(tmp_path)
    out = str(tmp_path / "out.safetensors")
    manifest = str(tmp_path / "m.json")
    calls = []
    widen.apply(path, out, tensors="conv.weight", to=5, init="const:0.25", manifest=manifest,
                progress=lambda d, t: calls.append((d, t)))
    assert calls and all(b[0] >= a[0] for a, b in zip(calls, calls[1:])) and calls[-1][0] == calls[-1][1]
    with widen.open(out) as ckpt:
        w = ckpt.get("conv.weight")
        src = tensors["conv.weight"][1]
        assert w.shape == (4, 5, 3, 3)
        assert np.array_equal(w[:, :3], src) and np.all(w[:, 3:] == np.float32(0.25))
        assert np.array_equal(ckpt.get("emb"), tensors["emb"][1])
    report = widen.verify(path, out, manifest)
    assert report.ok and report.tensors == len(tensors) and report.transformed == 1 and report.first == ""
    hashes = widen.hash(out)
    assert hashes.file == xxhash.xxh3_128_hexdigest(open(out, "rb").read())
    _, written, _, _ = load(out)
    for name, (_, arr) in written.items():
        assert hashes.tensors[name] == xxhash.xxh3_128_hexdigest(arr.tobytes()), name
    # a changed output: verify reports it, or raises Different with check=True
    other = tmp_path / "other.safetensors"
    data = bytearray(open(out, "rb").read())
    with widen.open(out) as ckpt:
        t = ckpt.info("conv.weight")
    data[t.offset + t.nbytes - 1] ^= 1
    other.write_bytes(bytes(data))
    report = widen.verify(path, other)
    assert not report.ok and report.differences >= 1 and report.first
    with pytest.raises(widen.Different) as e:
        widen.verify(path, other, check=True)
    assert e.value.status == 1


def test_apply_map_cast_and_auto_detection(tmp_path):
    path, tensors = make(tmp_path)
    out = str(tmp_path / "o.safetensors")
    widen.apply(path, out, map=[2, 1, 0, "zero"], cast="f16")  # auto-detects conv.weight
    with widen.open(out) as ckpt:
        w = ckpt.get("conv.weight")
        src = tensors["conv.weight"][1].astype(np.float16)
        assert w.dtype == np.float16 and np.array_equal(w[:, :3], src[:, ::-1]) and not w[:, 3].any()
    assert widen.verify(path, out)


def test_cancel_raises_interrupted_and_leaves_no_output(tmp_path):
    path, _ = make(tmp_path)
    out = tmp_path / "cancelled.safetensors"
    with pytest.raises(widen.Interrupted) as e:
        widen.apply(path, str(out), to=4, progress=lambda done, total: True)
    assert e.value.status == 130 and not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"], "no temporary left behind"

    class Boom(Exception):
        pass

    def fail(done, total):
        raise Boom()
    with pytest.raises(Boom):
        widen.apply(path, str(out), to=4, progress=fail)
    assert not out.exists()


def test_typed_errors_carry_statuses(tmp_path):
    path, _ = make(tmp_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{nope}")
    cases = [
        (lambda: widen.open(str(bad)), widen.FormatError, 3),
        (lambda: widen.open(str(tmp_path / "missing.safetensors")), widen.WidenIOError, 4),
        (lambda: widen.apply(path, str(tmp_path / "o.safetensors"), tensors="nope", to=4), widen.UsageError, 2),
        (lambda: widen.apply(path, str(tmp_path / "o.safetensors"), tensors="conv.weight", to=2), widen.UsageError, 2),
        (lambda: widen.remap(np.zeros((2, 3), np.float32), 1, "7"), widen.UsageError, 2),
    ]
    for fn, cls, status in cases:
        with pytest.raises(cls) as e:
            fn()
        assert e.value.status == status and isinstance(e.value, widen.Error) and str(e.value)
    assert widen.IOError is widen.WidenIOError


def test_errors_name_no_cli_flags_and_say_the_argument(tmp_path):
    """The library's messages name no flag of the widen command; where its hint says which setting
    would change the outcome, the exception names this package's argument."""
    path, _ = make(tmp_path)
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep")
    cases = [
        (lambda: widen.apply(path, str(out), tensors="conv.weight", to=4), f"{out}: exists (overwrite=True replaces it)"),
        (lambda: widen.apply(path, str(tmp_path / "p.safetensors"), tensors="conv.weight", map="0,x"),
         "map entry 'x' is not K, K*S, zero, const:V, mean, sum or normal:STD[:SEED]"),
        (lambda: widen.apply(path, str(tmp_path / "p.safetensors"), tensors="conv.weight", to=4, init="median"),
         "unknown init mode 'median' (use zeros, const:V, mean, copy:K, normal:STD[:SEED], timm or cyclic)"),
        (lambda: widen.apply(path, str(tmp_path / "p.safetensors"), tensors="conv.weight", to=2),
         f"{path}: tensor 'conv.weight': 2 channels are fewer than the tensor's 3: widening does not narrow"),
        (lambda: widen.apply(path, str(tmp_path / "p.npz"), tensors="conv.weight", to=4),
         f"{path}: tensor 'half' is BF16 in the output, which NumPy has no dtype for (np.savez would store raw "
         "bytes): write safetensors or .pt, or cast it to F32 (cast='f32')"),
    ]
    for fn, message in cases:
        with pytest.raises(widen.UsageError) as e:
            fn()
        assert str(e.value) == message and "--" not in str(e.value)
    pt = tmp_path / "o.pt"
    widen.apply(path, str(pt), tensors="conv.weight", to=4, warning=lambda message: None)
    with pytest.raises(widen.UsageError) as e:
        widen.verify(path, str(pt))
    assert str(e.value) == (f"{pt}: no transform recorded (no 'widen' metadata key): a manifest is needed to verify "
                            "it (pass manifest=PATH)")
    assert out.read_bytes() == b"keep"


def readme_pipeline():
    """The README's Python pipeline: the python block after the marker comment in its Python section."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("\n## Python\n"):]
    section = section[:section.index("\n## ", 1)]
    marker = "<!-- tests/test_python.py runs the python block below"
    assert section.count(marker) == 1, "the README's Python section lost its marked example"
    after = section[section.index(marker):]
    start = after.index("```python\n") + len("```python\n")
    return after[start:after.index("\n```", start)]


def test_readme_pipeline_runs(tmp_path):
    """The example as printed, in an empty folder, against this build's library: it makes its own RGB
    checkpoint, widens it, verifies it and loads it into a 4-channel torch model; its own asserts
    check the weights (old channels kept, the new one their mean), and it says what it loaded."""
    pytest.importorskip("torch")
    code = readme_pipeline()
    assert "widen.apply(" in code and "load_state_dict" in code
    env = dict(os.environ, WIDEN_LIBRARY=os.path.abspath(LIBWIDEN), PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.replace("\r", "\n").split("\n")
    assert "loaded (8, 4, 3, 3)" in lines, r.stdout
    digest = next(line for line in lines if len(line) == 32 and all(c in "0123456789abcdef" for c in line))
    assert digest == widen.hash(str(tmp_path / "rgbd.safetensors")).file
    assert sorted(os.listdir(tmp_path)) == ["rgb.pt", "rgbd.json", "rgbd.safetensors"]


def test_c_read_api_checks_its_arguments(tmp_path):
    path, tensors = make(tmp_path)
    lib = widen._lib.lib
    err = widen._lib.Error_()
    assert lib.widen_tensor_data(None, 0, None, None, ctypes.byref(err)) == 2
    assert lib.widen_tensor_read(None, 0, None, 0, None) == 2
    with widen.open(path) as ckpt:
        p = ckpt._ptr()
        data, n = ctypes.c_void_p(), ctypes.c_uint64()
        assert lib.widen_tensor_data(p, 0, None, ctypes.byref(n), None) == 2
        assert lib.widen_tensor_data(p, 999, ctypes.byref(data), ctypes.byref(n), ctypes.byref(err)) == 2
        assert data.value is None and b"no tensor 999" in err.message
        k = ckpt._index["steps"]
        buf = ctypes.create_string_buffer(48)
        assert lib.widen_tensor_read(p, k, buf, 47, ctypes.byref(err)) == 2  # wrong size
        assert lib.widen_tensor_read(p, k, None, 48, ctypes.byref(err)) == 2
        assert lib.widen_tensor_read(p, k, buf, 48, ctypes.byref(err)) == 0
        assert buf.raw == tensors["steps"][1].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int16, np.uint8, np.int64])
def test_remap_matches_numpy(dtype):
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((2, 3, 5, 4)) * 10).astype(dtype)
    out = widen.remap(a, 1, [2, 0, "zero", 1])
    expect = np.concatenate([a[:, 2:3], a[:, 0:1], np.zeros_like(a[:, :1]), a[:, 1:2]], axis=1)
    assert out.dtype == a.dtype and np.array_equal(out, expect)
    last = widen.remap(a, -1, "3,3")
    assert np.array_equal(last, a[..., [3, 3]])


def test_remap_casts_and_fills():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    out = widen.remap(a, 1, "0,1,2,mean,const:0.5", dtype="F16")
    assert out.dtype == np.float16
    assert np.array_equal(out[:, :3], a.astype(np.float16))
    assert np.array_equal(out[:, 3], a.mean(axis=1).astype(np.float16)) and np.all(out[:, 4] == 0.5)
    bf = widen.remap(a, 1, [0, 1, 2], dtype="BF16")
    assert bf.dtype == np.uint16
    back = widen.remap(bf, 1, [0, 1, 2], dtype="F32", src_dtype="BF16")
    assert np.array_equal(back, a)  # small integers are exact in bfloat16


def test_python_m_widen_runs_the_cli():
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))  # LD_PRELOAD kept: a sanitized library needs it
    r = subprocess.run([sys.executable, "-m", "widen", "--version"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith("widen " + widen.library_version())


def test_versions_agree():
    text = open(os.path.join(ROOT, "python", "pyproject.toml")).read()
    assert f'version = "{widen.__version__}"' in text
    assert widen.__version__ == widen.library_version()


def test_pip_install_offline_into_a_venv(tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONPATH", "WIDEN_BUILD")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", WIDEN_LIBRARY=os.path.abspath(LIBWIDEN))
    r = subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0 or not (venv / "bin" / "pip").exists():
        pytest.skip(f"cannot create a venv (install python3-venv): {r.stderr.strip()[-300:]}")
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(os.path.join(ROOT, "python"), src, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                      "__pycache__"))
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-build-isolation", "--no-index", str(src)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    if "LD_PRELOAD" in os.environ:  # a sanitized library needs its runtime first, as in this process
        env["LD_PRELOAD"] = os.environ["LD_PRELOAD"]
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import widen, sys; print(widen.__file__); "
                        "print(widen.library_version()); print(widen.LIBRARY_PATH)"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    where, version, lib = r.stdout.split()
    assert where.startswith(str(venv)) and version == widen.__version__ and lib == os.path.abspath(LIBWIDEN)


def test_dry_run_checks_and_writes_nothing(tmp_path):
    path, _ = make(tmp_path)
    out = tmp_path / "o.npz"
    before = sorted(os.listdir(tmp_path))
    widen.apply(path, str(tmp_path / "o.safetensors"), tensors="conv.weight", to=4, dry_run=True)
    assert sorted(os.listdir(tmp_path)) == before
    # what the real run refuses, the dry run refuses the same way: .npz cannot hold BF16
    for dry in (True, False):
        with pytest.raises(widen.UsageError) as e:
            widen.apply(path, str(out), tensors="conv.weight", to=4, dry_run=dry)
        assert "BF16" in str(e.value) and sorted(os.listdir(tmp_path)) == before
    with pytest.raises(widen.WidenIOError):
        widen.apply(path, str(tmp_path / "nowhere" / "o.safetensors"), tensors="conv.weight", to=4, dry_run=True)


def test_apply_returns_what_it_did_with_the_bytes(tmp_path):
    path = str(tmp_path / "big.safetensors")
    save(path, {"stem": ("F32", np.ones((4, 3, 3, 3), np.float32)), "body": ("F32", np.arange(1 << 19, dtype=np.float32))})
    out = tmp_path / "o.safetensors"
    stats = widen.apply(path, str(out), tensors="stem", to=4, fsync=False)
    assert stats.cloned + stats.copied + stats.written == out.stat().st_size
    assert stats.cloned + stats.copied >= (2 << 20) - 2 * 4096 and stats.written < 8192
    assert widen.apply(path, str(tmp_path / "p.safetensors"), tensors="stem", to=4, dry_run=True) == \
        widen.ApplyStats(0, 0, 0)
