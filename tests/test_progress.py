"""Progress, cancellation and threads on the paths that read whole files (hash, verify; files and
model folders), and the structs that can grow (widen.h): what the library reads and writes of a
caller's struct of another size. The hashes are checked against Python's xxhash, and across thread
counts; the progress contract (at least every 64 MiB, never backwards, ending at the total; nothing
after a cancel) against the calls recorded."""
import ctypes
import os
import sys

import numpy as np
import pytest

from reference import LIBWIDEN, ROOT, save

os.environ["WIDEN_LIBRARY"] = os.path.abspath(LIBWIDEN)
sys.path.insert(0, os.path.join(ROOT, "python"))
import widen  # noqa: E402
from widen import _lib  # noqa: E402

xxhash = pytest.importorskip("xxhash")
torch = pytest.importorskip("torch")

from progress_contract import MiB, STEP, check_calls  # noqa: E402

pytestmark = pytest.mark.host_only("progress, cancellation and struct sizes through this build's library")


def big_tensors():
    """About 150 MiB: two large tensors around a small stem, so that a run spans several steps."""
    return {"stem.weight": np.arange(8 * 3 * 3 * 3, dtype=np.float32).reshape(8, 3, 3, 3) / 7,
            "blocks.0": np.arange(18 * MiB, dtype=np.float32),
            "norm": np.ones(5, np.float16),
            "blocks.1": np.full(19 * MiB, 0.5, np.float32)}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    t = big_tensors()
    st = str(d / "big.safetensors")
    save(st, {k: ("F16" if v.dtype == np.float16 else "F32", v) for k, v in t.items()})
    pt = str(d / "big.pt")
    torch.save({k: torch.from_numpy(v.copy()) for k, v in t.items()}, pt)
    return d, t, st, pt



@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_hash_threads_agree_with_xxhash_and_report_progress(files, kind):
    _, t, st, pt = files
    path = st if kind == "safetensors" else pt
    with open(path, "rb") as f:
        whole = xxhash.xxh3_128_hexdigest(f.read())
    results = []
    for threads in (1, 2, 3):
        calls = []
        h = widen.hash(path, threads=threads, progress=lambda d, n: calls.append((d, n)))
        check_calls(calls)
        assert calls[-1][1] >= os.path.getsize(path)
        results.append(h)
        assert h.file == whole
        for name, value in t.items():
            assert h.tensors[name] == xxhash.xxh3_128_hexdigest(value.tobytes()), (threads, name)
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("threads", [1, 2])
def test_hash_cancel_stops_at_the_first_report(files, threads):
    _, _, st, pt = files
    for path in (st, pt):
        calls = []
        with pytest.raises(widen.Interrupted) as e:
            widen.hash(path, threads=threads, progress=lambda d, n: calls.append((d, n)) or True)
        assert e.value.status == 130
        check_calls(calls, cancelled=True)


@pytest.fixture(scope="module")
def outputs(files):
    d, _, st, pt = files
    out_st, out_pt = str(d / "wide.safetensors"), str(d / "wide.pt")
    widen.apply(st, out_st, tensors="stem.weight", to=4, fsync=False)
    widen.apply(pt, out_pt, tensors="stem.weight", to=4, fsync=False, manifest=str(d / "wide.pt.json"))
    return (st, out_st, None), (pt, out_pt, str(d / "wide.pt.json"))


@pytest.mark.parametrize("which", [0, 1])
def test_verify_threads_progress_and_cancel(outputs, which):
    src, out, manifest = outputs[which]
    reports = []
    for threads in (1, 2):
        calls = []
        r = widen.verify(src, out, manifest=manifest, threads=threads, progress=lambda d, n: calls.append((d, n)))
        assert r.ok, r.first
        check_calls(calls)
        reports.append(r)
    assert reports[0] == reports[1]
    calls = []
    with pytest.raises(widen.Interrupted):
        widen.verify(src, out, manifest=manifest, progress=lambda d, n: calls.append((d, n)) or True)
    check_calls(calls, cancelled=True)
    # a difference is still found on more threads
    bad = out + ".bad"
    with open(out, "rb") as f:
        data = bytearray(f.read())
    data[-(5 * MiB)] ^= 1  # inside blocks.1
    with open(bad, "wb") as f:
        f.write(data)
    try:
        r = widen.verify(src, bad, manifest=manifest, threads=2)
        assert not r.ok and r.differences >= 1
    finally:
        os.unlink(bad)


def test_folder_verify_progress_and_cancel(tmp_path):
    import folders
    src, out = tmp_path / "in", tmp_path / "out"
    os.makedirs(src)
    t = big_tensors()
    folders.write_shards(str(src), [{"blocks.0": t["blocks.0"]}, {"stem.weight": t["stem.weight"]},
                                    {"blocks.1": t["blocks.1"]}])
    calls = []
    widen.apply(str(src), str(out), tensors="stem.weight", to=4, fsync=False, progress=lambda d, n: calls.append((d, n)))
    check_calls(calls)  # the untouched shards' copies included, in steps
    calls, stopped = [], tmp_path / "stopped"
    with pytest.raises(widen.Interrupted):
        widen.apply(str(src), str(stopped), tensors="stem.weight", to=4, progress=lambda d, n: calls.append((d, n)) or True)
    check_calls(calls, cancelled=True)
    assert not stopped.exists()
    calls = []
    r = widen.verify(str(src), str(out), threads=2, progress=lambda d, n: calls.append((d, n)))
    assert r.ok and r.tensors == 3 and r.transformed == 1, r.first
    check_calls(calls)
    calls = []
    with pytest.raises(widen.Interrupted):
        widen.verify(str(src), str(out), progress=lambda d, n: calls.append((d, n)) or True)
    check_calls(calls, cancelled=True)


# ---------------------------------------------------------------------------------------------------
# Structs that can grow

lib = _lib.lib
lib.widen_apply.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(_lib.Error_)]
lib.widen_apply.restype = ctypes.c_int
lib.widen_verify.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.POINTER(_lib.Error_)]
lib.widen_verify.restype = ctypes.c_int
for name in ("widen_apply_options_init", "widen_verify_options_init", "widen_verify_report_init",
             "widen_hash_options_init"):
    getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def cast_transform():
    tr = lib.widen_transform_new()
    err = _lib.Error_()
    assert lib.widen_transform_set_cast(tr, 11, ctypes.byref(err)) == 0  # BF16
    return tr


def small(tmp_path):
    path = str(tmp_path / "s.safetensors")
    save(path, {"w": ("F32", np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2))})
    return path


@pytest.mark.parametrize("name,struct", [("widen_apply_options_init", _lib.ApplyOptions),
                                         ("widen_verify_options_init", _lib.VerifyOptions),
                                         ("widen_verify_report_init", _lib.VerifyReport),
                                         ("widen_hash_options_init", _lib.HashOptions)])
def test_init_writes_nothing_past_the_callers_size(name, struct):
    full = ctypes.sizeof(struct)
    for size in (8, 16, full, full + 24):
        buf = (ctypes.c_ubyte * (full + 64))(*([0xAA] * (full + 64)))
        getattr(lib, name)(buf, size)
        raw = bytes(buf)
        assert int.from_bytes(raw[:8], sys.byteorder) == size
        assert raw[size:] == b"\xaa" * (full + 64 - size), f"{name} wrote past {size} bytes"
        if size >= full:
            assert raw[full:size] == bytes(size - full), "what the library does not know is zeroed"
    buf = struct()
    getattr(lib, name)(ctypes.byref(buf), full)
    if struct is _lib.ApplyOptions:
        assert (buf.fsync, buf.threads, buf.overwrite) == (1, 0, 0)  # the defaults


def test_an_older_or_unknown_struct_is_refused(tmp_path):
    path = small(tmp_path)
    out = str(tmp_path / "o.safetensors")
    err = _lib.Error_()
    tr = cast_transform()
    try:
        o = _lib.ApplyOptions()
        lib.widen_apply_options_init(ctypes.byref(o), 16)  # shorter than any published layout
        assert lib.widen_apply(path.encode(), out.encode(), tr, ctypes.byref(o), ctypes.byref(err)) == 2
        assert b"widen_apply_options.size is 16" in err.message and not os.path.exists(out)
        # the first published layout, before dry_run: still read, dry_run keeps its default (a real run)
        lib.widen_apply_options_init(ctypes.byref(o), _lib.ApplyOptions.dry_run.offset)
        o.dry_run = 1  # past the caller's size: never read
        assert lib.widen_apply(path.encode(), out.encode(), tr, ctypes.byref(o), ctypes.byref(err)) == 0, err.message
        assert os.path.exists(out)
        os.unlink(out)
        lib.widen_apply_options_init(ctypes.byref(o), ctypes.sizeof(o))
        o.dry_run = 1
        assert lib.widen_apply(path.encode(), out.encode(), tr, ctypes.byref(o), ctypes.byref(err)) == 0, err.message
        assert not os.path.exists(out) and os.listdir(tmp_path) == ["s.safetensors"]
        # a newer caller's struct: zeros past what the library knows are fine, anything else is not
        big = (ctypes.c_ubyte * (ctypes.sizeof(_lib.ApplyOptions) + 32))()
        lib.widen_apply_options_init(big, len(big))
        assert lib.widen_apply(path.encode(), out.encode(), tr, big, ctypes.byref(err)) == 0, err.message
        big[ctypes.sizeof(_lib.ApplyOptions) + 5] = 1
        os.unlink(out)
        assert lib.widen_apply(path.encode(), out.encode(), tr, big, ctypes.byref(err)) == 2
        assert b"does not know" in err.message and not os.path.exists(out)
    finally:
        lib.widen_transform_free(tr)
    h = _lib.HashOptions()
    lib.widen_hash_options_init(ctypes.byref(h), 8)
    ckpt = ctypes.c_void_p()
    assert lib.widen_open(path.encode(), ctypes.byref(ckpt), ctypes.byref(err)) == 0
    try:
        assert lib.widen_hash_checkpoint(ckpt, None, None, ctypes.byref(h), ctypes.byref(err)) == 2
        assert b"widen_hash_options.size is 8" in err.message
    finally:
        lib.widen_close(ckpt)


def test_a_report_is_filled_only_as_far_as_its_size(tmp_path):
    path = small(tmp_path)
    out = str(tmp_path / "o.safetensors")
    widen.apply(path, out, cast="bf16", fsync=False)
    err = _lib.Error_()
    known = ctypes.sizeof(_lib.VerifyReport)
    buf = (ctypes.c_ubyte * (known + 40))()
    lib.widen_verify_report_init(buf, known + 8)
    for i in range(known + 8, known + 40):
        buf[i] = 0x55  # past the caller's size: never touched
    assert lib.widen_verify(path.encode(), out.encode(), None, buf, ctypes.byref(err)) == 0, err.message
    report = _lib.VerifyReport.from_buffer(buf)
    assert (report.tensors, report.transformed, report.differences) == (1, 1, 0)
    assert bytes(buf)[known:known + 8] == bytes(8) and bytes(buf)[known + 8:] == b"\x55" * 32
    short = _lib.VerifyReport()
    lib.widen_verify_report_init(ctypes.byref(short), 16)
    assert lib.widen_verify(path.encode(), out.encode(), None, ctypes.byref(short), ctypes.byref(err)) == 2
    assert b"widen_verify_report.size is 16" in err.message


MIRRORS = {"Error_": "widen_error", "TensorInfo": "widen_tensor_info", "MapEntry": "widen_map_entry",
           "Init": "widen_init", "RemapJob": "widen_remap_job", "Hash128": "widen_hash128",
           "ApplyStats": "widen_apply_stats", "ApplyOptions": "widen_apply_options",
           "HashOptions": "widen_hash_options", "OpenOptions": "widen_open_options",
           "VerifyOptions": "widen_verify_options", "VerifyReport": "widen_verify_report"}


def test_the_python_mirrors_have_the_headers_layouts(tmp_path):
    """Every ctypes struct of the package has the C struct's size and each field its offset, as the
    compiler lays out the header: a field missing from a mirror (the library would read or write past
    Python's struct) fails here."""
    import subprocess
    mirrors = {name: getattr(_lib, name) for name in MIRRORS}
    assert set(mirrors) == {n for n, c in vars(_lib).items() if isinstance(c, type) and issubclass(c, ctypes.Structure)}
    lines = []
    for py, c in MIRRORS.items():
        lines.append(f'printf("{py} SIZEOF %zu\\n", sizeof({c}));')
        for field, *_ in mirrors[py]._fields_:
            lines.append(f'printf("{py} {field} %zu\\n", offsetof({c}, {field}));')
    src = tmp_path / "layout.c"
    src.write_text("#include <stddef.h>\n#include <stdio.h>\n#include <widen/widen.h>\nint main(void) {\n" +
                   "\n".join(lines) + "\nreturn 0;\n}\n")
    subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", "-I", os.path.join(ROOT, "include"), str(src), "-o",
                    str(tmp_path / "layout")], check=True)
    got = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True, check=True).stdout.split("\n")
    for line in filter(None, got):
        py, field, value = line.split()
        expect = ctypes.sizeof(mirrors[py]) if field == "SIZEOF" else getattr(mirrors[py], field).offset
        assert int(value) == expect, f"{py}.{field}: C says {value}, ctypes {expect}"
