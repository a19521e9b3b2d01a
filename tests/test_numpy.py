""".npy files: read as numpy.lib.format reads them (np.save's files, headers of versions 1.0, 2.0 and
3.0, every numeric dtype widen names), widened and converted, checked against NumPy; hostile and odd
headers held to np.load's verdict: what NumPy refuses, widen refuses, and what NumPy reads, widen reads
alike or refuses for a named reason."""
import ast
import io
import json
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest

import reference
from reference import run

DTYPES = {"BOOL": np.bool_, "I8": np.int8, "U8": np.uint8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
          "U32": np.uint32, "I64": np.int64, "U64": np.uint64, "F16": np.float16, "F32": np.float32,
          "F64": np.float64, "C64": np.complex64}


def sample(dtype, shape, seed=0):
    g = np.random.default_rng(seed)
    return (g.standard_normal(shape) * 100).astype(dtype) if shape else np.array(3, dtype=dtype)


@pytest.mark.parametrize("name", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3), (5,), (4, 3, 2, 2)])
def test_np_save_read_and_hashed(tmp_path, name, shape):
    xxhash = pytest.importorskip("xxhash")
    a = sample(DTYPES[name], shape)
    np.save(tmp_path / "a.npy", a)
    doc = json.loads(run("inspect", tmp_path / "a.npy", "--json", "--hash", check=0).stdout)
    (t,) = doc["tensors"]
    assert (t["name"], t["dtype"], t["shape"], t["bytes"]) == ("array", name, list(shape), a.nbytes)
    assert t["xxh3_128"] == xxhash.xxh3_128_hexdigest(a.tobytes())
    assert doc["format"] == "npy"


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_widened_and_converted(tmp_path, version, dtype):
    torch = pytest.importorskip("torch")
    a = sample(dtype, (16, 3, 5, 5), seed=1)
    with open(tmp_path / "k.npy", "wb") as f:
        np.lib.format.write_array(f, a, version=version)
    run("apply", tmp_path / "k.npy", "-o", tmp_path / "k4.safetensors", "--to", "4", check=0)
    _, tensors, _, _ = reference.load(tmp_path / "k4.safetensors")
    w = tensors["array"][1]
    assert w.shape == (16, 4, 5, 5) and np.array_equal(w[:, :3], a) and not w[:, 3].any()
    assert run("verify", tmp_path / "k.npy", tmp_path / "k4.safetensors").returncode == 0
    run("apply", tmp_path / "k.npy", "-o", tmp_path / "k.pt", "--map", "2,1,0", "--manifest", tmp_path / "m.json", check=0)
    assert np.array_equal(torch.load(tmp_path / "k.pt")["array"].numpy(), a[:, ::-1])
    assert run("verify", tmp_path / "k.npy", tmp_path / "k.pt", "--manifest", tmp_path / "m.json").returncode == 0
    # a flipped byte of the output is found
    raw = bytearray((tmp_path / "k4.safetensors").read_bytes())
    raw[-5] ^= 0x10
    (tmp_path / "k4.safetensors").write_bytes(bytes(raw))
    assert run("verify", tmp_path / "k.npy", tmp_path / "k4.safetensors").returncode == 1


def npy_with_header(header, version=(1, 0), data=None):
    """A .npy of this header text (padded as np.save pads), followed by `data` bytes (default: what
    the header describes, if Python can read it)."""
    text = header.encode("latin1")
    start = 10 if version == (1, 0) else 12
    pad = -(start + len(text) + 1) % 64
    text = text + b" " * pad + b"\n"
    prefix = b"\x93NUMPY" + bytes(version) + (struct.pack("<H", len(text)) if version == (1, 0)
                                              else struct.pack("<I", len(text)))
    if data is None:
        try:
            d = ast.literal_eval(header)
            n = int(np.prod(d["shape"])) * np.dtype(d["descr"]).itemsize
            data = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
        except Exception:
            data = b""
    return prefix + text + data


# (header, why widen may refuse what NumPy reads, or None where they must agree)
HEADERS = [
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", None),
    ('{"descr": "<f4", "fortran_order": False, "shape": (3, 4)}', None),
    ("{'shape': (2,), 'fortran_order': False, 'descr': '|u1'}", None),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (3L, 4L), }", None),  # Python 2's long, versions 1 and 2
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (True, 4), }", None),
    ("{'descr': '<f4', 'fortran_order': True, 'shape': (7,), }", None),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", None),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (3), }", None),  # an int, not a tuple
    ("{'descr': '<f4', 'fortran_order': False, 'shape': [3, 4], }", None),  # a list
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 4), }", "negative dimensions (NumPy infers them from the data)"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), 'extra': 1}", None),
    ("{'descr': '<f4', 'shape': (3, 4), }", None),
    ("{'descr': '|O', 'fortran_order': False, 'shape': (3,), }", None),
    ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }", "structured dtypes"),
    ("{'descr': '<f4', 'fortran_order': 0, 'shape': (3,), }", None),
    ("__import__('os').system('true')", None),
    ("[1, 2, 3]", None),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), } # a comment", "comments"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (1+2, 4), }", "expressions"),
    ("{'descr': 'float32', 'fortran_order': False, 'shape': (3, 4), }", "dtype names np.save does not write"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), 'shape': (3, 4)}", "repeated keys"),
    ("{'descr': '>f4', 'fortran_order': False, 'shape': (3, 4), }", None),
    ("{'descr': '<f4', 'fortran_order': True, 'shape': (3, 4), }", None),
    ("{'descr': '<c16', 'fortran_order': False, 'shape': (3,), }", "complex128 (no safetensors dtype)"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (0x3, 4), }", "hexadecimal"),
]


def numpy_reads(path):
    try:
        return np.load(path, allow_pickle=False)
    except Exception:
        return None


@pytest.mark.parametrize("header,why", HEADERS)
def test_headers_held_to_np_load(tmp_path, header, why):
    path = tmp_path / "h.npy"
    path.write_bytes(npy_with_header(header))
    expected = numpy_reads(path)
    r = run("inspect", path, "--json")
    if expected is None:
        assert r.returncode == 3, (header, r.stdout)
        assert r.stderr.startswith("widen: error: ") and r.stderr.count("\n") == 1
    elif why is None:
        assert r.returncode == 0, (header, r.stderr)
        (t,) = json.loads(r.stdout)["tensors"]
        assert t["shape"] == list(expected.shape) and t["bytes"] == expected.nbytes
    else:
        assert r.returncode in (0, 3), r.stderr  # NumPy reads it; widen may refuse, for the reason named
        if r.returncode == 0:
            (t,) = json.loads(r.stdout)["tensors"]
            assert t["shape"] == list(expected.shape)


@pytest.mark.parametrize("damage", ["truncated", "trailing", "version", "huge_header", "magic", "count_overflow"])
def test_damaged_files_refused(tmp_path, damage):
    good = npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }")
    raw = {"truncated": good[:-1], "trailing": good + b"\0",
           "version": good[:6] + b"\x04\x00" + good[8:],
           "huge_header": npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }" + " " * 20000,
                                          version=(2, 0)),
           "magic": b"\x93NUMPZ" + good[6:],
           "count_overflow": npy_with_header("{'descr': '<f4', 'fortran_order': False, "
                                             "'shape': (4294967296, 4294967296, 4), }", data=b"")}[damage]
    (tmp_path / "d.npy").write_bytes(raw)
    r = run("inspect", tmp_path / "d.npy")
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert numpy_reads(tmp_path / "d.npy") is None or damage == "trailing"  # np.load ignores trailing bytes


# ------------------------------------------------------------------------------------------------
# .npz archives of stored members (np.savez); JAX/Flax kernels are HWIO


def conv_hwio(x, k):
    """NHWC input, HWIO kernel, valid padding: computed in NumPy, in float64."""
    win = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), k.shape[:2], axis=(1, 2))
    return np.einsum("nyxchw,hwco->nyxo", win, k.astype(np.float64))


def test_jax_style_npz_widened_on_its_input_axis(tmp_path):
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(3)
    arrays = {"params/conv1/kernel": g.standard_normal((7, 7, 3, 64)).astype(np.float32),
              "params/conv1/bias": g.standard_normal(64).astype(np.float32),
              "params/head/kernel": g.standard_normal((64, 10)).astype(np.float32)}
    np.savez(tmp_path / "flax.npz", **arrays)
    doc = json.loads(run("inspect", tmp_path / "flax.npz", "--json", check=0).stdout)
    assert doc["format"] == "npz" and sorted(t["name"] for t in doc["tensors"]) == sorted(arrays)
    # no --axis: an .npz's kernels are HWIO, input channels on axis -2
    run("apply", tmp_path / "flax.npz", "-o", tmp_path / "w.safetensors", "--to", "4", check=0)
    _, tensors, _, _ = reference.load(tmp_path / "w.safetensors")
    k4 = tensors["params/conv1/kernel"][1]
    assert k4.shape == (7, 7, 4, 64)
    x = g.standard_normal((2, 12, 12, 4)).astype(np.float32)
    err = np.abs(conv_hwio(x, k4) - conv_hwio(x[..., :3], arrays["params/conv1/kernel"])).max()
    assert err == 0.0
    for name in ("params/conv1/bias", "params/head/kernel"):
        assert np.array_equal(tensors[name][1], arrays[name])
    assert run("verify", tmp_path / "flax.npz", tmp_path / "w.safetensors").returncode == 0
    run("apply", tmp_path / "flax.npz", "-o", tmp_path / "w.pt", "--manifest", tmp_path / "m.json", check=0)
    back = torch.load(tmp_path / "w.pt")
    assert all(np.array_equal(back[n].numpy(), a) for n, a in arrays.items())
    assert run("verify", tmp_path / "flax.npz", tmp_path / "w.pt", "--manifest", tmp_path / "m.json").returncode == 0


@pytest.mark.parametrize("case", ["object", "not_npy", "pickle_member", "truncated_member"])
def test_hostile_or_unread_npz_refused(tmp_path, case):
    import zipfile
    path = tmp_path / "x.npz"
    if case == "object":
        np.savez(path, a=np.array([1, "x"], dtype=object))
    else:
        np.savez(path, a=np.ones((2, 3), np.float32))
        with zipfile.ZipFile(path, "a") as z:
            if case == "not_npy":
                z.writestr("notes.txt", "hello")
            elif case == "pickle_member":
                z.writestr("b.npy", b"\x80\x02cos\nsystem\nq\x00.")
            else:
                z.writestr("c.npy", npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }")[:-8])
    r = run("inspect", path)
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert not list(tmp_path.glob(".*widen*"))


@pytest.mark.parametrize("descr", [">f4", ">f2", ">f8", ">i8", ">u2", ">c8", "<f4", "|b1"])
def test_big_endian_and_fortran_order_read_as_np_load_reads_them(tmp_path, descr):
    """Each array's values as np.load gives them: hashed as its little-endian row-major bytes, widened
    and converted to safetensors and .pt from them, and verified."""
    xxhash = pytest.importorskip("xxhash")
    g = np.random.default_rng(3)
    for fortran in (False, True):
        for shape in [(), (0, 3), (5,), (2, 3, 4, 1)]:
            a = (g.standard_normal(shape) * 50).astype(descr)
            src = tmp_path / "a.npy"
            np.save(src, np.asfortranarray(a) if fortran else a)
            values = np.load(src)
            plain = np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<"))
            (t,) = json.loads(run("inspect", src, "--json", "--hash", check=0).stdout)["tensors"]
            assert t["xxh3_128"] == xxhash.xxh3_128_hexdigest(plain.tobytes()), (descr, fortran, shape)
            if len(shape) != 4 or descr in ("|b1", ">i8", ">u2", ">c8"):
                continue
            for fmt in ("safetensors", "pt"):
                out, manifest = tmp_path / f"o.{fmt}", tmp_path / "m.json"
                run("apply", src, "-t", "array", "--axis", "1", "--to", "4", "--map", "2,1,0,zero", "-o", out,
                    "--manifest", manifest, "--force", check=0)
                want = np.concatenate([plain[:, ::-1], np.zeros_like(plain[:, :1])], 1)
                if fmt == "safetensors":
                    got = reference.load(out)[1]["array"][1]
                else:
                    torch = pytest.importorskip("torch")
                    got = torch.load(out, weights_only=True)["array"].numpy()
                assert got.tobytes() == want.tobytes(), (descr, fortran, fmt)
                run("verify", src, out, "--manifest", manifest, check=0)


def test_npz_of_mixed_layouts(tmp_path):
    """Members in Fortran order, big-endian and plain in one archive: each read as np.load reads it."""
    xxhash = pytest.importorskip("xxhash")
    g = np.random.default_rng(4)
    arrays = {"b/plain": g.standard_normal((3, 2)).astype("<f4"),
              "a/fortran": np.asfortranarray(g.standard_normal((2, 3, 2)).astype("<f2")),
              "c/big": g.standard_normal((4, 3)).astype(">f8"), "d/both": np.asfortranarray(g.standard_normal((3, 2)).astype(">i4"))}
    np.savez(tmp_path / "m.npz", **arrays)
    doc = json.loads(run("inspect", tmp_path / "m.npz", "--json", "--hash", check=0).stdout)
    got = {t["name"]: t["xxh3_128"] for t in doc["tensors"]}
    want = {k: xxhash.xxh3_128_hexdigest(np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")).tobytes())
            for k, v in arrays.items()}
    assert got == want
    run("apply", tmp_path / "m.npz", "--cast", "f32", "-o", tmp_path / "m.safetensors", check=0)
    out = reference.load(tmp_path / "m.safetensors")[1]
    for k, v in arrays.items():  # --cast f32 casts the 16- and 32-bit floats; the others keep their dtype
        dtype = "<f4" if v.dtype.kind == "f" and v.itemsize <= 4 else v.dtype.newbyteorder("<")
        assert out[k][1].tobytes() == np.ascontiguousarray(v).astype(dtype).tobytes(), k


# ------------------------------------------------------------------------------------------------
# .npz outputs: np.savez's layout, members in the input's order, the transform as the archive comment


def strip_comment(raw):
    """The archive less its comment: what np.savez writes for the same arrays."""
    end = raw.rindex(b"PK\x05\x06")
    assert end + 22 + int.from_bytes(raw[end + 20:end + 22], "little") == len(raw)
    return raw[:end + 20] + b"\0\0"


def savez_bytes(path, arrays):
    np.savez(path, **arrays)
    return path.read_bytes()


def npz_inputs(tmp_path):
    """(input path, -t name or None, {name: array} it holds, in its order), one per input format."""
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(5)
    kernel = g.standard_normal((8, 3, 3, 3)).astype(np.float32)
    big = g.standard_normal((600, 500)).astype(np.float32)  # over 1 MiB: copied inside the kernel, CRC combined
    others = {"bias": g.standard_normal(8).astype(np.float16), "steps": np.array(7, np.int64),
              "mask": np.array([True, False, True]), "empty": np.zeros((2, 0), np.float32), "big": big}
    np.save(tmp_path / "in.npy", kernel)
    yield tmp_path / "in.npy", None, {"array": kernel}, 1
    np.savez(tmp_path / "in.npz", **{"params/conv/kernel": kernel.transpose(2, 3, 1, 0).copy(), **others})
    yield tmp_path / "in.npz", "params/conv/kernel", {"params/conv/kernel": kernel.transpose(2, 3, 1, 0), **others}, -2
    st = {"conv.weight": ("F32", kernel), "bias": ("F16", others["bias"]), "steps": ("I64", others["steps"]),
          "mask": ("BOOL", others["mask"]), "empty": ("F32", others["empty"]), "big": ("F32", big)}
    reference.save(str(tmp_path / "in.safetensors"), st, {"format": "pt"})
    yield (tmp_path / "in.safetensors", "conv.weight",
           {n: st[n][1] for n in reference.write_order(st)}, 1)
    base = torch.from_numpy(big)
    sd = {"conv.weight": torch.from_numpy(kernel), "bias": torch.from_numpy(others["bias"]),
          "steps": torch.tensor(7), "big": base, "view": base[2:4], "t": base[:5, :7].t()}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "in.pt")
    yield (tmp_path / "in.pt", "model.conv.weight",
           {f"model.{n}": np.array(v.numpy(), order="C") for n, v in sd.items()}, 1)


def widened(a, axis, to=4):
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, to - a.shape[axis])
    return np.pad(a, pad)


def test_npz_written_as_np_savez_writes_it(tmp_path):
    import zipfile
    for src, name, arrays, axis in npz_inputs(tmp_path):
        out = tmp_path / f"{src.suffix[1:]}-out.npz"
        args = ["-t", name] if name else []
        run("apply", src, "-o", out, *args, "--to", "4", "--threads", "2", check=0)
        z = np.load(out, allow_pickle=False)
        expected = {n: (widened(a, axis) if n in (name, "array") else a) for n, a in arrays.items()}
        assert z.files == list(expected), (src, z.files)  # the input's order
        for n, a in expected.items():
            got = z[n]
            assert got.dtype == a.dtype and got.shape == a.shape and got.tobytes() == a.tobytes(), (src, n)
        with zipfile.ZipFile(out) as archive:
            assert archive.testzip() is None
            assert json.loads(archive.comment)["tensors"][0]["name"] == (name or "array")
        raw = out.read_bytes()
        assert strip_comment(raw) == savez_bytes(tmp_path / "ref.npz", {n: z[n] for n in z.files}), src
        # any thread count, the same bytes
        run("apply", src, "-o", tmp_path / "one.npz", *args, "--to", "4", "--threads", "1", check=0)
        assert (tmp_path / "one.npz").read_bytes() == raw
        assert run("verify", src, out).returncode == 0
        # and back: the .npz is an input like any other
        run("apply", out, "-o", tmp_path / "back.safetensors", check=0)
        _, back, _, _ = reference.load(tmp_path / "back.safetensors")
        assert all(back[n][1].tobytes() == a.tobytes() for n, a in expected.items())
        for f in (out, tmp_path / "one.npz", tmp_path / "back.safetensors"):
            f.unlink()


def npz_regions(path, raw):
    """(what, begin, end) tiling the archive: each member's local header, .npy header and data; the
    central directory, the end record and the comment."""
    import zipfile
    out = []
    with zipfile.ZipFile(path) as z:
        infos = sorted(z.infolist(), key=lambda i: i.header_offset)
        comment = len(z.comment)
    for info in infos:
        name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len
        header_len = struct.unpack("<H", raw[start + 8:start + 10])[0] + 10
        out.append((f"local header {info.filename}", info.header_offset, start))
        out.append((f"npy header {info.filename}", start, start + header_len))
        if info.file_size > header_len:
            out.append((f"data {info.filename}", start + header_len, start + info.file_size))
    end = len(raw) - comment - 22
    out.append(("central directory", raw.index(b"PK\x01\x02"), end))
    out.append(("end record", end, end + 22))
    if comment:
        out.append(("comment", end + 22, len(raw)))
    return out


def test_npz_every_region_checked_by_verify(tmp_path):
    g = np.random.default_rng(6)
    np.savez(tmp_path / "in.npz", k=g.standard_normal((3, 3, 3, 4)).astype(np.float32), b=np.arange(4, dtype=np.int32))
    out, manifest = tmp_path / "out.npz", tmp_path / "m.json"
    run("apply", tmp_path / "in.npz", "-o", out, "--to", "4", "--init", "mean", "--manifest", manifest, check=0)
    assert run("verify", tmp_path / "in.npz", out, "--manifest", manifest).returncode == 0
    raw = out.read_bytes()
    regions = npz_regions(out, raw)
    covered = sorted((b, e) for _, b, e in regions)
    assert covered[0][0] == 0 and covered[-1][1] == len(raw)
    assert all(covered[i][1] == covered[i + 1][0] for i in range(len(covered) - 1))
    mutated = tmp_path / "m.npz"
    for what, begin, end in regions:
        for at in sorted({begin, (begin + end) // 2, end - 1}):
            blob = bytearray(raw)
            blob[at] ^= 0x01 if what != "comment" else 0x02
            mutated.write_bytes(bytes(blob))
            for extra in (["--manifest", manifest], []):
                r = run("verify", tmp_path / "in.npz", mutated, *extra)
                assert r.returncode in (1, 3), (what, at, extra, r.stdout, r.stderr)
                assert r.stderr.startswith("widen: error: ") and r.stderr.count("\n") == 1
    # the difference is named where it lies
    blob = bytearray(raw)
    k_data = next(b for w, b, e in regions if w == "data k.npy")
    blob[k_data + 4 * 13] ^= 0x01  # element [0, 0, 3, 1] of the widened [3, 3, 4, 4] k: the new channel
    mutated.write_bytes(bytes(blob))
    r = run("verify", tmp_path / "in.npz", mutated)  # its CRC-32 fails first, as np.load's would
    assert r.returncode == 3 and "CRC-32" in r.stderr, r.stderr
    import zlib
    with zipfile.ZipFile(mutated) as z:  # with the CRC made right, the damage itself is named
        info = z.getinfo("k.npy")
        size = info.file_size
    header = info.header_offset
    start = header + 30 + struct.unpack("<HH", bytes(blob[header + 26:header + 30]))[0] + \
        struct.unpack("<HH", bytes(blob[header + 26:header + 30]))[1]
    crc = struct.pack("<I", zlib.crc32(bytes(blob[start:start + size])))
    blob[header + 14:header + 18] = crc
    central = bytes(blob).index(b"PK\x01\x02", start + size)
    while bytes(blob[central + 46:central + 46 + 5]) != b"k.npy":
        central = bytes(blob).index(b"PK\x01\x02", central + 4)
    blob[central + 16:central + 20] = crc
    mutated.write_bytes(bytes(blob))
    r = run("verify", tmp_path / "in.npz", mutated)
    assert r.returncode == 1 and "tensor 'k': output channel 3 (axis 2) does not hold the fill mean" in r.stderr, r.stderr


@pytest.mark.parametrize("names,why", [
    (["a/../b"], "'..' component"), (["/abs"], "absolute"), (["W", "w"], "differ only in case"),
    (["x", "x.npy"], "np.load"), ([""], "empty")])
def test_npz_member_names_refused(tmp_path, names, why):
    tensors = {n: ("F32", np.ones(2, np.float32)) for n in names}
    reference.save(str(tmp_path / "in.safetensors"), tensors)
    r = run("apply", tmp_path / "in.safetensors", "-o", tmp_path / "out.npz")
    assert r.returncode == 2 and why in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out.npz").exists() and not list(tmp_path.glob(".*widen*"))


def test_npz_refusals_and_fallbacks(tmp_path):
    g = np.random.default_rng(7)
    reference.save(str(tmp_path / "in.safetensors"), {"w": ("F32", g.standard_normal((2, 3, 1, 1)).astype(np.float32)),
                                                       "h": ("BF16", np.zeros(2, np.uint16))})
    r = run("apply", tmp_path / "in.safetensors", "-o", tmp_path / "out.npz", "-t", "w", "--to", "4")
    assert r.returncode == 2 and "BF16" in r.stderr and "--cast f32" in r.stderr
    run("apply", tmp_path / "in.safetensors", "-o", tmp_path / "out.npz", "-t", "w", "--to", "4", "--cast", "f32", check=0)
    assert np.load(tmp_path / "out.npz")["h"].dtype == np.float32
    assert run("verify", tmp_path / "in.safetensors", tmp_path / "out.npz").returncode == 0
    # --format npz whatever the name; .npy outputs are not written
    run("apply", tmp_path / "in.safetensors", "-o", tmp_path / "out.bin2", "--cast", "f16", "--format", "npz", check=0)
    assert np.load(tmp_path / "out.bin2")["w"].dtype == np.float16
    assert run("apply", tmp_path / "in.safetensors", "-o", tmp_path / "o.npy", "--cast", "f32").returncode == 2
    # a transform too long for the comment: recorded in the manifest only
    reference.save(str(tmp_path / "row.safetensors"), {"r": ("F32", np.ones((1, 3), np.float32))})
    r = run("apply", tmp_path / "row.safetensors", "-o", tmp_path / "row.npz", "-t", "r", "--axis", "1", "--to", "12000")
    assert r.returncode == 0 and "manifest" in r.stderr
    assert run("verify", tmp_path / "row.safetensors", tmp_path / "row.npz").returncode == 2
    run("apply", tmp_path / "row.safetensors", "-o", tmp_path / "row2.npz", "-t", "r", "--axis", "1", "--to", "12000",
        "--manifest", tmp_path / "row.json", check=0)
    assert run("verify", tmp_path / "row.safetensors", tmp_path / "row2.npz", "--manifest", tmp_path / "row.json").returncode == 0
    assert np.load(tmp_path / "row2.npz")["r"].shape == (1, 12000)


def test_npz_not_for_model_folders(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    reference.save(str(folder / "model.safetensors"), {"w": ("F32", np.ones((2, 3, 1, 1), np.float32))}, {"format": "pt"})
    (folder / "config.json").write_text('{"num_channels": 3}')
    for out, args in ((tmp_path / "out", ["--format", "npz"]), (tmp_path / "out.npz", [])):
        r = run("apply", folder, "-o", out, "--cast", "f16", *args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert not out.exists()


def test_npz_of_more_members_than_a_zip_end_record_counts(tmp_path):
    """65,537 members: zipfile's ZIP64 end record and locator, as np.savez writes them (checked byte for
    byte against np.savez by hand: too slow here)."""
    import zipfile
    n = 65537
    reference.save(str(tmp_path / "many.safetensors"), {f"t{i:05d}": ("I32", np.full(1, i, np.int32)) for i in range(n)})
    run("apply", tmp_path / "many.safetensors", "-o", tmp_path / "many.npz", check=0)
    raw = (tmp_path / "many.npz").read_bytes()
    end = raw.rindex(b"PK\x05\x06")
    assert raw[end - 76:end - 72] == b"PK\x06\x06" and raw[end - 20:end - 16] == b"PK\x06\x07"
    assert struct.unpack("<HH", raw[end + 8:end + 12]) == (0xFFFF, 0xFFFF)
    with zipfile.ZipFile(tmp_path / "many.npz") as z:  # what np.load opens
        assert len(z.infolist()) == n
        for i in (0, n - 1):
            with z.open(f"t{i:05d}.npy") as member:  # the CRC checked as it is read
                assert np.lib.format.read_array(member)[0] == i
    assert run("verify", tmp_path / "many.safetensors", tmp_path / "many.npz").returncode == 0


# ------------------------------------------------------------------------------------------------
# .npz archives of deflated members (np.savez_compressed): inflated at open into an unlinked file in
# $TMPDIR, never whole into memory; what the zip directory declares held to what the streams hold

COMPRESSED = {"stem/kernel": ((7, 7, 3, 16), np.float32), "stem/bias": ((16,), np.float16),
              "scalar": ((), np.float64), "empty": ((0, 3), np.float32), "nothing": ((2, 0, 3), np.int8),
              "steps": ((), np.int64), "ids": ((5, 4), np.int16), "mask": ((3, 3), np.bool_),
              "zeros": ((64, 64), np.float32), "phase": ((4, 2), np.complex64), "head": ((16, 10), np.float64)}


def compressed_arrays(seed=5):
    out = {n: sample(dtype, shape, seed=seed + i) for i, (n, (shape, dtype)) in enumerate(sorted(COMPRESSED.items()))}
    out["zeros"] = np.zeros((64, 64), np.float32)  # compresses to almost nothing
    return out


def empty_dir(path):
    path.mkdir(exist_ok=True)
    return {"TMPDIR": str(path)}


def test_savez_compressed_read_widened_converted(tmp_path):
    torch = pytest.importorskip("torch")
    xxhash = pytest.importorskip("xxhash")
    arrays = compressed_arrays()
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    np.savez(tmp_path / "s.npz", **arrays)
    env = empty_dir(tmp_path / "tmp")
    doc = json.loads(run("inspect", tmp_path / "c.npz", "--json", "--hash", env=env, check=0).stdout)
    assert doc["format"] == "npz" and doc["size"] == (tmp_path / "c.npz").stat().st_size
    # the file's hash is of the archive as it is; each array's, of its bytes, whether stored or deflated
    assert doc["xxh3_128"] == xxhash.xxh3_128_hexdigest((tmp_path / "c.npz").read_bytes())
    got = {t["name"]: t for t in doc["tensors"]}
    assert sorted(got) == sorted(arrays)
    for name, a in arrays.items():
        assert got[name]["shape"] == list(a.shape) and got[name]["bytes"] == a.nbytes
        assert got[name]["xxh3_128"] == xxhash.xxh3_128_hexdigest(a.tobytes()), name
    stored = run("hash", tmp_path / "s.npz", check=0).stdout.splitlines()[1:]
    assert run("hash", tmp_path / "c.npz", env=env, check=0).stdout.splitlines()[1:] == stored
    # widened on axis -2 (HWIO), to safetensors and to .pt, checked against NumPy bit for bit
    run("apply", tmp_path / "c.npz", "-o", tmp_path / "w.safetensors", "--to", "4", env=env, check=0)
    _, tensors, _, _ = reference.load(tmp_path / "w.safetensors")
    k = tensors["stem/kernel"][1]
    assert k.shape == (7, 7, 4, 16) and np.array_equal(k[..., :3, :], arrays["stem/kernel"]) and not k[..., 3, :].any()
    for name, a in arrays.items():
        if name != "stem/kernel":
            assert tensors[name][1].tobytes() == a.tobytes() and tensors[name][1].shape == a.shape, name
    assert run("verify", tmp_path / "c.npz", tmp_path / "w.safetensors", env=env).returncode == 0
    run("apply", tmp_path / "c.npz", "-o", tmp_path / "w.pt", "--to", "4", "--manifest", tmp_path / "m.json", env=env,
        check=0)
    back = torch.load(tmp_path / "w.pt")
    assert np.array_equal(back["stem/kernel"].numpy(), k)
    for name, a in arrays.items():
        if name != "stem/kernel":
            assert back[name].numpy().tobytes() == a.tobytes() and tuple(back[name].shape) == a.shape, name
    assert run("verify", tmp_path / "c.npz", tmp_path / "w.pt", "--manifest", tmp_path / "m.json",
               env=env).returncode == 0
    assert not list((tmp_path / "tmp").iterdir())


def test_mixed_stored_and_deflated_members(tmp_path):
    import zipfile
    xxhash = pytest.importorskip("xxhash")
    g = np.random.default_rng(9)
    arrays = {"a": g.standard_normal((33, 3, 3, 3)).astype(np.float32), "b": np.arange(1000, dtype=np.int32),
              "c": g.standard_normal(7).astype(np.float16), "d": np.zeros(0, np.float32)}
    with zipfile.ZipFile(tmp_path / "m.npz", "w") as z:
        for i, (name, a) in enumerate(arrays.items()):
            data = io.BytesIO()
            np.lib.format.write_array(data, a)
            z.writestr(name + ".npy", data.getvalue(), zipfile.ZIP_DEFLATED if i % 2 == 0 else zipfile.ZIP_STORED)
    assert all(np.array_equal(np.load(tmp_path / "m.npz")[n], a) for n, a in arrays.items())
    env = empty_dir(tmp_path / "tmp")
    doc = json.loads(run("inspect", tmp_path / "m.npz", "--json", "--hash", env=env, check=0).stdout)
    assert {t["name"]: t["xxh3_128"] for t in doc["tensors"]} == \
        {n: xxhash.xxh3_128_hexdigest(a.tobytes()) for n, a in arrays.items()}
    run("apply", tmp_path / "m.npz", "-o", tmp_path / "w.safetensors", "--axis", "1", "--to", "4", env=env, check=0)
    _, tensors, _, _ = reference.load(tmp_path / "w.safetensors")
    assert np.array_equal(tensors["a"][1][:, :3], arrays["a"]) and not tensors["a"][1][:, 3].any()
    assert all(np.array_equal(tensors[n][1], arrays[n]) for n in "bcd")
    assert run("verify", tmp_path / "m.npz", tmp_path / "w.safetensors", env=env).returncode == 0
    assert not list((tmp_path / "tmp").iterdir())


def npy_bytes(a):
    data = io.BytesIO()
    np.lib.format.write_array(data, a)
    return data.getvalue()


def deflate(raw, level=6):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(raw) + c.flush()


def zip_archive(members):
    """A zip written byte by byte, so that its directory can say what it likes: each member a dict of
    name, data (the bytes in the archive), method, usize, crc; ZIP64 sizes in the directory."""
    out, central = bytearray(), bytearray()
    for m in members:
        name, data = m["name"].encode(), m["data"]
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, m["method"], 0, 0x21, m["crc"],
                           min(len(data), 0xFFFFFFFF), min(m["usize"], 0xFFFFFFFF), len(name), 0) + name + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, m["method"], 0, 0x21, m["crc"],
                               0xFFFFFFFF, 0xFFFFFFFF, len(name), 28, 0, 0, 0, 0, 0xFFFFFFFF) + name
        central += struct.pack("<HHQQQ", 1, 24, m["usize"], len(data), offset)
    return bytes(out + central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members),
                                             len(central), len(out), 0))


def deflated_member(name, raw, **changes):
    m = {"name": name, "data": deflate(raw), "method": 8, "usize": len(raw), "crc": zlib.crc32(raw)}
    m.update(changes)
    return m


def hostile_npz(case):
    a = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    raw = npy_bytes(a)
    good = deflated_member("ok.npy", npy_bytes(np.ones(3, np.float32)))
    if case == "bomb":  # 10 KB that declare a terabyte: refused before a byte is inflated
        bad = deflated_member("w.npy", raw, usize=1 << 40)
    elif case == "bomb_in_disguise":  # declares what its header does, inflates to a gigabyte
        head = npy_bytes(np.zeros(1000, np.uint8))[:-1000]
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = z.compress(head) + b"".join(z.compress(bytes(1 << 20)) for _ in range(1024)) + z.flush()
        bad = {"name": "w.npy", "data": data, "method": 8, "usize": len(head) + 1000, "crc": 0}
    elif case == "directory_shorter":  # the stream holds more than the directory says
        bad = deflated_member("w.npy", raw + bytes(8))
        bad["usize"] = len(raw)
        bad["crc"] = zlib.crc32(raw)
    elif case == "directory_longer":  # ... and less
        bad = deflated_member("w.npy", raw[:-8], usize=len(raw), crc=zlib.crc32(raw))
    elif case == "header_disagrees":  # the directory and the stream agree, the .npy header does not
        bad = deflated_member("w.npy", raw + bytes(8))
    elif case == "truncated_stream":
        bad = deflated_member("w.npy", raw)
        bad["data"] = bad["data"][:-40]
    elif case == "trailing_bytes":
        bad = deflated_member("w.npy", raw)
        bad["data"] += b"\0" * 16
    elif case == "damaged_stream":
        bad = deflated_member("w.npy", raw)
        bad["data"] = bytes([0xFF]) * 64 + bad["data"][64:]
    elif case == "bad_crc":
        bad = deflated_member("w.npy", raw)
        bad["crc"] ^= 1
    elif case == "bzip2":
        bz = pytest.importorskip("bz2")
        bad = {"name": "w.npy", "data": bz.compress(raw), "method": 12, "usize": len(raw), "crc": zlib.crc32(raw)}
    elif case == "header_too_long":
        bad = deflated_member("w.npy", b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 20) + b" " * 100)
    else:
        raise AssertionError(case)
    return zip_archive([good, bad])


HOSTILE = ["bomb", "bomb_in_disguise", "directory_shorter", "directory_longer", "header_disagrees", "truncated_stream",
           "trailing_bytes", "damaged_stream", "bad_crc", "bzip2", "header_too_long"]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_deflated_members_refused(tmp_path, case):
    import time
    (tmp_path / "x.npz").write_bytes(hostile_npz(case))
    env = empty_dir(tmp_path / "tmp")
    for command in (("inspect",), ("hash",), ("apply", "-o", tmp_path / "out.safetensors", "--to", "4")):
        began = time.monotonic()
        r = run(command[0], tmp_path / "x.npz", *command[1:], env=env)
        assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
        assert "w.npy" in r.stderr or "deflate bomb" in r.stderr, r.stderr
        assert time.monotonic() - began < 10
    assert not list((tmp_path / "tmp").iterdir()) and not (tmp_path / "out.safetensors").exists()


def test_deflate_bomb_refused_before_inflating(tmp_path):
    (tmp_path / "x.npz").write_bytes(hostile_npz("bomb"))
    r = run("inspect", tmp_path / "x.npz", env={"TMPDIR": str(tmp_path / "missing")})
    # refused for what it declares: no temporary file was even tried (that would be exit 4)
    assert r.returncode == 3 and "deflate bomb" in r.stderr, r.stderr


def test_inflating_where_there_is_no_room(tmp_path):
    import resource
    import subprocess
    np.savez_compressed(tmp_path / "c.npz", a=np.random.default_rng(0).standard_normal(1 << 18))
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    env.pop("LD_PRELOAD", None)
    (tmp_path / "tmp").mkdir()

    def small_files():  # a file size limit: writing past it fails as a full disk would (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))

    r = subprocess.run([reference.WIDEN, "inspect", str(tmp_path / "c.npz")], capture_output=True, text=True, env=env,
                       preexec_fn=small_files)
    assert r.returncode == 4 and "TMPDIR" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = run("inspect", tmp_path / "c.npz", env={"TMPDIR": str(tmp_path / "missing")})
    assert r.returncode == 4 and "TMPDIR" in r.stderr, r.stderr
    assert not list((tmp_path / "tmp").iterdir())


def test_bfloat16_as_raw_records_is_refused_with_its_descr(tmp_path):
    """ml_dtypes' bfloat16 goes through np.save as '<V2', raw 2-byte records, which np.load hands back
    as such: no writer names it, so it is refused, and the message says why."""
    path = tmp_path / "bf16.npy"
    path.write_bytes(npy_with_header("{'descr': '<V2', 'fortran_order': False, 'shape': (3, 4), }"))
    assert np.load(path).dtype == np.dtype("V2")
    proc = run("inspect", path)
    assert proc.returncode == 3 and "'<V2'" in proc.stderr and "bfloat16" in proc.stderr, proc.stderr


def test_compressed_npz_with_gathered_members_to_npz(tmp_path):
    """Deflated members in Fortran order and big-endian: inflated, gathered, widened, written as an
    .npz that np.load reads as the expected arrays, and verified."""
    g = np.random.default_rng(2)
    arrays = {"f": np.asfortranarray(g.standard_normal((3, 4, 2)).astype(">f4")),
              "p": g.standard_normal(5).astype("<f2"), "z": np.zeros((64, 64), ">f8")}
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    run("apply", tmp_path / "c.npz", "-o", tmp_path / "w.npz", "-t", "f", "--axis", "1", "--to", "5", check=0)
    with np.load(tmp_path / "w.npz") as out:
        want = np.concatenate([arrays["f"], np.zeros((3, 1, 2), ">f4")], 1).astype("<f4")
        assert out["f"].dtype == np.dtype("<f4") and out["f"].tobytes() == want.tobytes()
        assert out["p"].tobytes() == arrays["p"].tobytes() and out["z"].tobytes() == arrays["z"].astype("<f8").tobytes()
    run("verify", tmp_path / "c.npz", tmp_path / "w.npz", check=0)


def test_gathered_arrays_left_alone_or_cast_into_pt(tmp_path):
    """Big-endian and Fortran-order arrays that no channel map touches, written to .pt as they are and
    cast: torch.load gives NumPy's values (a review found their file bytes written as they lay)."""
    torch = pytest.importorskip("torch")
    arrays = {"b": np.arange(4, dtype=">f4"), "f": np.asfortranarray(np.arange(6, dtype="<f4").reshape(2, 3)),
              "i": np.arange(6, dtype=">i2").reshape(3, 2), "h": np.asfortranarray(np.arange(24, dtype=">f2").reshape(2, 3, 4)),
              "c": np.asfortranarray((np.arange(6) + 1j).astype(">c8").reshape(2, 3))}
    np.savez(tmp_path / "m.npz", **arrays)
    for cast in (None, "f16"):
        out, manifest = tmp_path / f"o{cast}.pt", tmp_path / f"m{cast}.json"
        run("apply", tmp_path / "m.npz", "-o", out, "--manifest", manifest, *(("--cast", cast) if cast else ()), check=0)
        back = torch.load(out, weights_only=False)
        for k, v in arrays.items():
            want = np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<"))
            if cast and v.dtype.kind == "f":
                want = want.astype("<f2")
            assert back[k].numpy().tobytes() == want.tobytes(), (cast, k)
        run("verify", tmp_path / "m.npz", out, "--manifest", manifest, check=0)


def test_archives_pythons_zipfile_reads_otherwise_are_refused(tmp_path):
    """Where np.load (Python's zipfile) would read other bytes or another name than the offsets and
    bytes the records state, or would refuse: each is exit 3 (found in review)."""
    def archive(value, name="x.npy"):
        buf = io.BytesIO()
        np.save(buf, np.array(value, "<f4"))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            z.writestr(name, buf.getvalue())
        return bytearray(out.getvalue())

    a, b = archive([1, 2, 3]), archive([4, 5, 6])
    cases = {"concatenated": (a + b, "bytes lie"), "prefixed": (b"junk" * 8 + a, "")}  # (not even taken for a zip)
    gap = bytearray(a)
    eocd = gap.rindex(b"PK\x05\x06")
    cases["gap before the end record"] = (gap[:eocd] + b"\0" * 4 + gap[eocd:], "bytes lie")
    local = bytearray(a)
    local[local.index(b"x.npy")] = ord("y")
    cases["local header names another file"] = (local, "local header")
    crc = bytearray(a)
    crc[crc.index(b"\x00\x00\x80\x3f") + 3] ^= 1  # the element 1.0 of the stored data
    cases["stored data failing its CRC"] = (crc, "CRC-32")
    cp437 = archive([1, 2], name="é.npy")
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        j = cp437.index(sig)
        struct.pack_into("<H", cp437, j + off, struct.unpack_from("<H", cp437, j + off)[0] & ~0x800)
    cases["name not marked UTF-8"] = (cp437, "cp437")
    for what, (data, why) in cases.items():
        path = tmp_path / "a.npz"
        path.write_bytes(bytes(data))
        try:
            with np.load(path) as z:
                read = {k: z[k].tolist() for k in z.files}
        except Exception:  # noqa: BLE001 - np.load refuses it
            read = None
        assert read != {"x": [1.0, 2.0, 3.0]}, what  # never what widen's offsets would give
        r = run("inspect", path)
        assert r.returncode == 3 and why in r.stderr and r.stderr.count("\n") == 1, (what, r.stderr)


def test_a_record_widen_did_not_write_fails_verify(tmp_path):
    """The transform recorded in an output (an .npz's archive comment, a safetensors file's metadata)
    must be the record widen writes for it: another tool text, an extra key or another key order is
    not widen's output, even where the transform it describes is the same (found in review)."""
    np.savez(tmp_path / "in.npz", w=np.ones((2, 3, 2, 2), np.float32))
    for fmt in ("npz", "safetensors"):
        out = tmp_path / f"out.{fmt}"
        run("apply", tmp_path / "in.npz", "-o", out, "-t", "w", "--axis", "1", "--to", "4", check=0)
        if fmt == "npz":
            data = out.read_bytes()
            eocd = data.rindex(b"PK\x05\x06")
            record = data[eocd + 22:]
        else:
            meta, tensors = reference.load(out)[:2]
            record = meta["widen"].encode()
        tool = json.loads(record)["tool"].encode()
        for forged in (record.replace(tool, b"EVIL, trust me"), record.replace(b'{"tool"', b'{"x":"y","tool"'),
                       record.replace(b'"cast":null,', b"").replace(b'{"tool"', b'{"cast":null,"tool"')):
            assert forged != record and json.loads(forged)
            if fmt == "npz":
                blob = bytearray(data[:eocd + 22]) + forged
                struct.pack_into("<H", blob, eocd + 20, len(forged))
                out.write_bytes(bytes(blob))
            else:
                reference.save(out, tensors, {**meta, "widen": forged.decode()})
            r = run("verify", tmp_path / "in.npz", out)
            assert r.returncode == 1 and "verified" not in r.stdout, (fmt, forged, r.stdout, r.stderr)
