"""Trust (issue 11): files from other software and from attackers. Every value a checkpoint holds
passes through unchanged or the command refuses; what torch would read is what widen reads, or
widen refuses; no file of a few kilobytes crashes widen, hangs it or makes it describe huge work;
files are named for what they are; outputs are written safely."""
import io
import json
import os
import pickle
import pickletools
import signal
import stat
import struct
import subprocess
import time
import zipfile

import numpy as np
import pytest
import torch

import pickles as P
from reference import FOREIGN, WIDEN, load, run, save, scaled

HANG = 60  # seconds after which a command counts as hung (a guard, not a measurement)


def run_bounded(*args):
    """run(), but a hang fails the test instead of the suite."""
    proc = subprocess.run([WIDEN, *map(str, args)], capture_output=True, text=True, timeout=HANG,
                          env={k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "WIDEN_ISA")})
    return proc


def f32(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def records_of(**arrays):
    return {k: np.ascontiguousarray(v).tobytes() for k, v in arrays.items()}


def conv_pickle(extra_items=(), conv_key="0"):
    """A state dict as torch 2 pickles it: conv.weight [8, 3, 3, 3] over storage `conv_key`, then extra items."""
    conv = P.tensor_v2(P.storage(conv_key, "F32", 8 * 27), [8, 3, 3, 3])
    return P.ordered_dict([("conv.weight", conv)] + list(extra_items))


def torch_load(path):
    return torch.load(path, weights_only=False)  # torch 1.13's weights-only loader lacks what torch 2 writes


def load_header(path):
    raw = open(path, "rb").read()
    return json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])


def check_widened(got, conv):
    assert got.shape == (8, 4, 3, 3)
    assert np.array_equal(got[:, :3].numpy(), conv) and not got[:, 3].any()


# ------------------------------------------------------------------------------------------------
# 1. Values widen does not model pass through byte for byte; nothing is repointed.


def test_sparse_and_quantized_tensors_pass_through(tmp_path):
    """Written by the installed torch: a sparse COO tensor and a quantized one beside a conv weight.
    Widening the conv leaves both as they were (their storages were once repointed at the widened
    weight's); a cast or a plain rewrite keeps them too."""
    torch.manual_seed(0)
    conv = torch.randn(8, 3, 3, 3)
    sparse = torch.sparse_coo_tensor([[0, 1, 2], [2, 0, 1]], [1.5, -2.0, 3.25], (3, 3))
    quant = torch.quantize_per_tensor(torch.randn(6), 0.1, 3, torch.qint8)
    path = tmp_path / "mixed.pt"
    torch.save({"conv.weight": conv, "sparse": sparse, "quant": quant, "bias": torch.randn(8)}, path)
    names = [t["name"] for t in json.loads(run("inspect", path, "--json", check=0).stdout)["tensors"]]
    assert names == ["conv.weight", "bias"]  # sparse and quantized tensors are not read as dense ones
    out, manifest = tmp_path / "o.pt", tmp_path / "o.json"
    run("apply", path, "-o", out, "--to", "4", "--manifest", manifest, check=0)
    got = torch_load(out)
    check_widened(got["conv.weight"], conv.numpy())
    assert torch.equal(got["sparse"].to_dense(), sparse.to_dense())
    assert torch.equal(got["quant"].int_repr(), quant.int_repr()) and got["quant"].q_scale() == quant.q_scale()
    run("verify", path, out, "--manifest", manifest, check=0)
    proc = run("apply", path, "-o", tmp_path / "h.pt", "--cast", "f16", check=0)
    assert "leaves 1 storage as it is" in proc.stderr  # the sparse tensor's F32 values: passed through, and said
    half = torch_load(tmp_path / "h.pt")
    assert half["conv.weight"].dtype == torch.float16 and torch.equal(half["sparse"].to_dense(), sparse.to_dense())
    proc = run("apply", path, "-o", tmp_path / "o.safetensors", check=0)
    assert "dropping 2 other values (sparse, quant)" in proc.stderr
    assert sorted(load(str(tmp_path / "o.safetensors"))[1]) == ["bias", "conv.weight"]


def test_torch2_values_widen_does_not_model(tmp_path):
    """Spelled as torch 2 writes them: a tensor with Python attributes (_rebuild_from_type_v2), a
    tensor under a dict key that is neither str nor int, a storage held bare. The attributed tensor
    is read (and widened); the others pass through unchanged."""
    conv = f32(8, 3, 3, 3)
    side = f32(5, seed=1)
    attributed = P.from_type_v2(P.tensor_v2(P.storage("0", "F32", 8 * 27), [8, 3, 3, 3]), state={"tag": "stem"})
    data = P.dumps(P.ordered_dict([("conv.weight", attributed),
                                   ("side", {("tuple", "key"): P.tensor_v2(P.storage("1", "F32", 5), [5])}),
                                   ("bare", P.storage("1", "F32", 5))]))
    path = P.write_pt(tmp_path / "t2.pt", data, records_of(**{"0": conv, "1": side}))
    names = [t["name"] for t in json.loads(run("inspect", path, "--json", check=0).stdout)["tensors"]]
    assert names == ["conv.weight"]
    out, manifest = tmp_path / "o.pt", tmp_path / "o.json"
    run("apply", path, "-o", out, "--to", "4", "--manifest", manifest, check=0)
    got = torch_load(out)
    check_widened(got["conv.weight"], conv)
    text = io.StringIO()
    with zipfile.ZipFile(out) as z:
        pickletools.dis(z.read("archive/data.pkl"), text)
    assert "_rebuild_from_type_v2" in text.getvalue() and "'stem'" in text.getvalue()  # its attributes kept
    assert np.array_equal(got["side"][("tuple", "key")].numpy(), side)
    assert list(got["bare"]) == side.tolist()
    run("verify", path, out, "--manifest", manifest, check=0)
    run("apply", path, "-o", tmp_path / "c.pt", "--cast", "bf16", check=0)  # once "storage not in the archive"
    assert torch_load(tmp_path / "c.pt")["conv.weight"].dtype == torch.bfloat16


def test_ordered_dict_built_from_items_is_refused(tmp_path):
    """OrderedDict([(k, v)]) names values no item-by-item walk sees: refused, not half read."""
    data = P.dumps(P.Call(P.Global("collections", "OrderedDict"),
                          ([("w", P.tensor_v2(P.storage("0", "F32", 4), [4]))],)))
    path = P.write_pt(tmp_path / "od.pt", data, records_of(**{"0": f32(4)}))
    proc = run("inspect", path)
    assert proc.returncode == 3 and "OrderedDict" in proc.stderr


def test_rebuild_tensor_v3_rewritten(tmp_path):
    """torch >= 2.1 writes float8 and uint16/32/64 as _rebuild_tensor_v3 over an UntypedStorage. A
    .pt rewrite keeps them (it once crashed on their storage class), and can remap them."""
    f8 = np.arange(24, dtype=np.uint8)
    data = P.dumps(conv_pickle([("f8", P.tensor_v3(P.untyped("1", 24), [2, 3, 4], "float8_e4m3fn")),
                                ("u16", P.tensor_v3(P.untyped("2", 8), [4], "uint16"))]))
    conv = f32(8, 3, 3, 3)
    path = P.write_pt(tmp_path / "v3.pt", data, {**records_of(**{"0": conv}), "1": f8.tobytes(),
                                                  "2": np.arange(4, dtype=np.uint16).tobytes()})
    out, manifest = tmp_path / "o.pt", tmp_path / "o.json"
    run("apply", path, "-o", out, "-t", "conv.weight", "--to", "4", "--manifest", manifest, check=0)
    text = io.StringIO()
    with zipfile.ZipFile(out) as z:
        pickletools.dis(z.read("archive/data.pkl"), text)
        sizes = {n: z.getinfo(n).file_size for n in z.namelist()}
    assert "'torch.storage UntypedStorage'" in text.getvalue() and "'torch UntypedStorage'" not in text.getvalue()
    assert "float8_e4m3fn" in text.getvalue() and "uint16" in text.getvalue()
    got = {t["name"]: t for t in json.loads(run("inspect", out, "--json", check=0).stdout)["tensors"]}
    assert got["f8"]["dtype"] == "F8_E4M3" and got["u16"]["dtype"] == "U16" and got["conv.weight"]["shape"] == [8, 4, 3, 3]
    assert sorted(sizes[f"archive/data/{k}"] for k in "012") == [8, 24, 8 * 4 * 9 * 4]
    run("verify", path, out, "--manifest", manifest, check=0)
    # a float8 tensor remapped as raw bytes: a new UntypedStorage of its own
    run("apply", path, "-o", tmp_path / "f.pt", "-t", "f8", "--axis", "1", "--map", "2,0,zero,1",
        "--manifest", tmp_path / "f.json", check=0)
    back = tmp_path / "f.safetensors"
    run("apply", tmp_path / "f.pt", "-o", back, check=0)
    want = f8.reshape(2, 3, 4)
    want = np.stack([want[:, 2], want[:, 0], np.zeros_like(want[:, 0]), want[:, 1]], 1)
    assert load(str(back))[1]["f8"][1].tobytes() == want.tobytes()
    run("verify", path, tmp_path / "f.pt", "--manifest", tmp_path / "f.json", check=0)


@pytest.mark.skipif(bool(os.environ.get("WIDEN_SANITIZE")), reason="reads 8 GiB (sparse); once is enough")
def test_map_over_more_than_2_32_channels(tmp_path):
    """A tensor of 2^32 + 1 channels (a sparse file of 8 GiB): the input channel count is 64-bit, so
    row 1 starts 2^32 + 1 elements in, not 1 (a truncated count read the wrong bytes, and verify,
    replaying the same plan, agreed)."""
    channels = 2 ** 32 + 1
    header = json.dumps({"w": {"dtype": "U8", "shape": [2, channels, 1], "data_offsets": [0, 2 * channels]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "wide.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        start = f.tell()
        f.seek(start + 1)
        f.write(b"\x09")  # element [0, 1, 0]: what a count cut to 32 bits reads for row 1
        f.seek(start + channels)
        f.write(b"\x07")  # element [1, 0, 0]
        f.truncate(start + 2 * channels)
    out = tmp_path / "o.safetensors"
    run("apply", path, "-o", out, "-t", "w", "--map", "0", "--no-fsync", check=0)
    assert load(str(out))[1]["w"][1].tolist() == [[[0]], [[7]]]


# ------------------------------------------------------------------------------------------------
# 2. One reading: the one torch makes, or a refusal.


def test_repeated_key_is_refused(tmp_path):
    """torch keeps the last of two equal keys; a reader that kept the first would verify the
    attacker's weights. Refused, with 1 and True (one key to Python) and 1 beside '1' (one name)."""
    conv, evil = P.tensor_v2(P.storage("0", "F32", 4), [4]), P.tensor_v2(P.storage("1", "F32", 4), [4])
    recs = records_of(**{"0": f32(4), "1": f32(4, seed=9)})
    cases = {"twice": [("w", conv), ("w", evil)], "one_and_true": [(1, conv), (True, evil)],
             "int_and_str": [(1, conv), ("1", evil)], "dotted": [("a.b", conv), ("a", {"b": evil})],
             "float_and_int": [(2, conv), (2.0, evil)]}
    for case, items in cases.items():
        path = P.write_pt(tmp_path / f"{case}.pt", P.dumps(P.ordered_dict(items)), recs)
        for args in (("inspect", path), ("hash", path), ("apply", path, "-o", tmp_path / "o.pt", "--cast", "f16")):
            proc = run(*args)
            assert proc.returncode == 3, (case, args, proc.stderr)
        assert not (tmp_path / "o.pt").exists()


def test_zip_entries_torch_could_read_otherwise_are_refused(tmp_path):
    """Two entries of one name (or names equal but for case: torch's reader ignores case), a NUL
    inside a name, an entry outside the archive's folder, no version record: exit 3."""
    data = P.dumps(conv_pickle())
    conv = records_of(**{"0": f32(8, 3, 3, 3)})
    bad = {
        "same_name": {"archive/data/0": b"\0" * 864},
        "case": {"archive/DATA/0": b"\0" * 864},
        "nul": {"archive/data/0\0x": b""},
        "outside": {"elsewhere/data/0": b""},
    }
    for case, extra in bad.items():
        path = P.write_pt(tmp_path / f"{case}.pt", data, conv, extra=extra)
        proc = run("inspect", path)
        assert proc.returncode == 3, (case, proc.stderr)
    proc = run("inspect", P.write_pt(tmp_path / "nover.pt", data, conv, version=None))
    assert proc.returncode == 3 and "version" in proc.stderr


def test_long_keys_and_names_are_read_whole(tmp_path):
    """A storage key of 700 characters and dotted names of 3000: no fixed buffer cuts them."""
    key, name = "k" * 700, ".".join(["layer" * 60] * 10) + ".weight"
    data = P.dumps(P.ordered_dict([(name, P.tensor_v2(P.storage(key, "F32", 8 * 27), [8, 3, 3, 3]))]))
    path = P.write_pt(tmp_path / "long.pt", data, {key: f32(8, 3, 3, 3).tobytes()})
    doc = json.loads(run("inspect", path, "--json", check=0).stdout)
    assert [t["name"] for t in doc["tensors"]] == [name] and doc["tensors"][0]["storage"] == key
    out = tmp_path / "o.pt"
    run("apply", path, "-o", out, "--to", "4", "--manifest", tmp_path / "m.json", check=0)
    assert list(torch_load(out)) == [name]
    run("verify", path, out, "--manifest", tmp_path / "m.json", check=0)


def test_what_torch_would_change_or_read_otherwise_is_refused(tmp_path):
    """Found by an attack review: a state that sets `data` or `real` (torch's setattr repoints the
    tensor or writes into its storage), a container changed after a call read it (torch keeps what the
    call saw, a rewrite what it became), a dict key built by _codecs.encode (it can equal 'abc'), a
    storage record marked a directory (torch reads nothing of it), a big-endian archive or a version
    record under a long folder name (once looked up in a 128-byte buffer), a location torch does not
    know or that holds no data, gradients on an integer tensor, a Parameter's requires_grad that is not
    a bool, Python 2 names outside protocol 2, multi-disk, patch and strong-encryption zip fields."""
    a, b = P.tensor_v2(P.storage("0", "F32", 4), [4]), P.tensor_v2(P.storage("1", "F32", 4), [4])
    recs = records_of(**{"0": f32(4), "1": f32(4, seed=2)})
    items = [1]
    late = {}
    cases = {
        "state_data": P.ordered_dict([("w", P.from_type_v2(a, ("torch.nn.parameter", "Parameter"), {"data": b}))]),
        "state_real": P.ordered_dict([("a", a), ("b", P.from_type_v2(P.tensor_v2(P.storage("0", "F32", 4), [2]),
                                                                     state={"real": 0}))]),
        "state_slots": P.ordered_dict([("w", P.from_type_v2(a, state=({}, {"grad": b})))]),
        "set_then_append": P.ordered_dict([("s", P.Call(P.Global("builtins", "set"), (items,))), ("L", items),
                                           ("more", P.Raw(b""))]),
        "codecs_key": P.ordered_dict([("abc", a), (P.Call(P.Global("_codecs", "encode"), ("nop", "rot13")), b)]),
        "int_grad": P.ordered_dict([("w", P.Call(P.Global("torch._utils", "_rebuild_tensor_v2"),
                                                 (P.storage("0", "I64", 2), 0, (2,), (1,), True, P.ordered_dict())))]),
        "parameter_grad_int": P.ordered_dict([("w", P.NewObj(P.Global("torch.nn.parameter", "Parameter"), (a, 1)))]),
        "cpu0": P.ordered_dict([("w", P.tensor_v2(P.Persid(("storage", P.Global("torch", "FloatStorage"), "0", "cpu:0",
                                                            4)), [4]))]),
        "meta": P.ordered_dict([("w", P.tensor_v2(P.Persid(("storage", P.Global("torch", "FloatStorage"), "0", "meta",
                                                            4)), [4]))]),
    }
    reasons = {"state_data": "state", "state_real": "state", "state_slots": "state", "set_then_append": "after a call",
               "codecs_key": "_codecs.encode", "int_grad": "requires gradients", "parameter_grad_int": "Parameter",
               "cpu0": "location", "meta": "location"}
    for case, obj in cases.items():
        data = P.dumps(obj)
        if case == "set_then_append":  # the list, fetched from the memo after set() read it, gets one more item
            memo_of_list = data.index(b"]") + 1
            data = data[:-2] + b"h" + data[memo_of_list + 1:memo_of_list + 2] + b"K\x02a" + data[-2:]
        path = P.write_pt(tmp_path / f"{case}.pt", data, recs)
        proc = run("inspect", path)
        assert proc.returncode == 3 and reasons[case] in proc.stderr, (case, proc.stderr)
    # Python 2 names are mapped only under protocol 2, as torch maps them
    set2 = P.ordered_dict([("w", a), ("s", P.Call(P.Global("__builtin__", "set"), ([1],)))])
    assert run("inspect", P.write_pt(tmp_path / "p2.pt", P.dumps(set2), recs)).returncode == 0
    assert run("inspect", P.write_pt(tmp_path / "p3.pt", P.dumps(set2, proto=3), recs)).returncode == 3
    conv = P.dumps(P.ordered_dict([("w", a)]))
    for name, kwargs in {"directory": {"attributes": {"archive/data/0": 0x10}},
                         "big_long": {"prefix": "p" * 118, "byteorder": b"big"},
                         "version_long": {"prefix": "p" * 115, "extra": {"p" * 115 + "/.data/version": b"99\n"}}}.items():
        proc = run("inspect", P.write_pt(tmp_path / f"{name}.pt", conv, records_of(**{"0": f32(4)}), **kwargs))
        assert proc.returncode == 3, (name, proc.stderr)
    slash = P.dumps(P.ordered_dict([("w", P.tensor_v2(P.storage("0/", "F32", 4), [4]))]))
    assert run("inspect", P.write_pt(tmp_path / "slash.pt", slash, {"0/": f32(4).tobytes()})).returncode == 3
    good = P.write_pt(tmp_path / "good.pt", conv, records_of(**{"0": f32(4)}))
    raw = good.read_bytes()
    cd = raw.index(b"PK\x01\x02")
    z64 = raw.rindex(b"PK\x06\x06") if b"PK\x06\x06" in raw else None
    eocd = raw.rindex(b"PK\x05\x06")
    patches = {"patch": (cd + 8, struct.pack("<H", 0x20)), "strong": (cd + 8, struct.pack("<H", 0x40)),
               "entry_disk": (cd + 34, struct.pack("<H", 1)), "eocd_disk": (eocd + 4, struct.pack("<H", 1)),
               "eocd_count": (eocd + 8, struct.pack("<H", 1))}
    assert z64 is None  # Python's zipfile writes no ZIP64 record for a small archive
    for name, (at, value) in patches.items():
        bad = tmp_path / f"{name}.pt"
        bad.write_bytes(raw[:at] + value + raw[at + len(value):])
        proc = run("inspect", bad)
        assert proc.returncode == 3, (name, proc.stderr)


def test_maps_record_their_values_exactly(tmp_path):
    """A NaN with a payload and a subnormal constant, recorded so that verify replays the same bits
    (a NaN was once recorded as 'nan' and verify rejected apply's own output)."""
    src = tmp_path / "in.safetensors"
    save(str(src), {"w": ("F32", f32(4, 3, 2, 2))})
    for const in ("nan(0x1234)", "-nan(0x55)", "0x1p-130"):
        out, manifest = tmp_path / "o.safetensors", tmp_path / "m.json"
        run("apply", src, "-o", out, "--map", f"0,1,2,const:{const}", "--manifest", manifest, "--force", check=0)
        run("verify", src, out, check=0)
        run("verify", src, out, "--manifest", manifest, check=0)
        got = load(str(out))[1]["w"][1][:, 3]
        assert got.view(np.uint32)[0, 0, 0] == np.float32(float.fromhex("0x1p-130")).view(np.uint32) or const != "0x1p-130"
    bits = load(str(tmp_path / "o.safetensors"))[1]["w"][1]
    assert bits.shape == (4, 4, 2, 2)
    assert run("apply", src, "-o", tmp_path / "u.safetensors", "--map", "0,1,2,const:1e-50").returncode == 2


def test_listings_stay_proportionate(tmp_path):
    """A name of megabytes does not pad every row of inspect's table to its width, and names with
    the storage key each repeats are budgeted: a 220 KB file once listed 1.2 GB."""
    long_key = "k" * 60000
    t = P.tensor_v2(P.storage(long_key, "F32", 1), [1])
    path = P.write_pt(tmp_path / "keys.pt", P.dumps({"t": [t] * 20000}), {long_key: f32(1).tobytes()})
    assert os.path.getsize(path) < 300_000
    proc = run_bounded("inspect", path, "--json")
    assert proc.returncode == 3 and "MiB" in proc.stderr
    wide = P.dumps(P.ordered_dict([("x" * 100_000, P.tensor_v2(P.storage("0", "F32", 1), [1]))] +
                                  [(f"t{i}", P.tensor_v2(P.storage("0", "F32", 1), [1])) for i in range(3000)]))
    path = P.write_pt(tmp_path / "wide.pt", wide, {"0": f32(1).tobytes()})
    out = run_bounded("inspect", path).stdout
    assert len(out) < 100_000 + 3001 * 200


# ------------------------------------------------------------------------------------------------
# 3. No crash, no endless work, from a few kilobytes.


def test_cycles_and_deep_nesting_through_the_memo(tmp_path):
    """A list that contains itself; 5000 levels of lists filled after they were nested (the depth
    check once ran when a child was adopted, before it was filled): exit 3 at once."""
    loop = []
    loop.append(loop)
    n = 5000
    deep = b"\x80\x02" + b"".join(b"]r" + struct.pack("<I", i) for i in range(n))
    deep += b"".join(b"j" + struct.pack("<I", i) + b"j" + struct.pack("<I", i + 1) + b"a" for i in reversed(range(n - 1)))
    deep += b"."
    for case, data in {"cycle": P.dumps({"w": loop}), "deep": deep}.items():
        path = P.write_pt(tmp_path / f"{case}.pt", data, {})
        for args in (("inspect", path), ("apply", path, "-o", tmp_path / "o.pt", "--cast", "f16")):
            proc = run_bounded(*args)
            assert proc.returncode == 3, (case, proc.stderr)
            assert "cycle" in proc.stderr or "deeper" in proc.stderr


def test_shared_objects_are_walked_once(tmp_path):
    """40 levels of {'a': x, 'b': x} (2^40 paths) and 20 levels over one tensor (2^20 names once): each
    object is named by its first path only."""
    inner = {"w": P.tensor_v2(P.storage("0", "F32", 4), [4])}
    for _ in range(20):
        inner = {"a": inner, "b": inner}
    path = P.write_pt(tmp_path / "shared.pt", P.dumps(inner), records_of(**{"0": f32(4)}))
    names = [t["name"] for t in json.loads(run_bounded("inspect", path, "--json").stdout)["tensors"]]
    assert names == [".".join(["a"] * 20) + ".w"]
    x = {}
    for _ in range(40):
        x = {"a": x, "b": x}
    assert run_bounded("inspect", P.write_pt(tmp_path / "s40.pt", P.dumps(x), {})).returncode == 0
    out = tmp_path / "o.pt"
    assert run_bounded("apply", path, "-o", out, "--cast", "f16").returncode == 0
    got = torch_load(out)
    assert got["a"] is got["b"]  # still one object
    for _ in range(20):
        got = got["a"]
    assert got["w"].dtype == torch.float16


def test_empty_and_zero_stride_tensors_describe_no_endless_work(tmp_path):
    """A [2^60, 3, 0] tensor is empty: widening it walks no rows. One zero-stride view named 2000
    times describes gigabytes from a few kilobytes: refused before any of it is done."""
    path = tmp_path / "empty.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [2 ** 60, 3, 0], "data_offsets": [0, 0]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    out = tmp_path / "o.safetensors"
    assert run_bounded("apply", path, "-o", out, "--to", "4").returncode == 0
    assert load_header(out)["w"] == {"dtype": "F32", "shape": [2 ** 60, 4, 0], "data_offsets": [0, 0]}
    view = P.tensor_v2(P.storage("0", "F32", 1), [1000, 1000], stride=[0, 0])
    data = P.dumps(P.ordered_dict([(f"v{i}", view) for i in range(2000)]))
    path = P.write_pt(tmp_path / "views.pt", data, records_of(**{"0": f32(1)}))
    assert os.path.getsize(path) < 64 << 10
    for args in (("hash", path), ("apply", path, "-o", out, "--force"), ("apply", path, "-o", tmp_path / "v.pt",
                                                                          "--cast", "f16")):
        proc = run_bounded(*args)
        assert proc.returncode == 3 and "256 times" in proc.stderr, (args, proc.stderr)
    assert run_bounded("inspect", path).returncode == 0  # listing them is cheap


def test_verify_stops_before_replaying_a_transform_the_output_cannot_hold(tmp_path):
    """An output whose shapes are not the plan's: verify says so without running the recorded
    transform. The input here is a sparse file of 192 GiB that the replay would read whole (a hostile
    output once made verify replay whatever it recorded, after the shape check had failed). Under qemu,
    12 GiB: qemu-aarch64 refuses to map a file of 192 GiB here (ENOMEM), where the arm64 CLI itself would not."""
    n = 2 ** 34 if not FOREIGN else 2 ** 30
    header = json.dumps({"w": {"dtype": "F32", "shape": [1, 3, n], "data_offsets": [0, 12 * n]}}).encode()
    header += b" " * (-len(header) % 8)
    src = tmp_path / "huge.safetensors"
    with open(src, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 12 * n)
    transform = {"tool": "widen 0.1.0", "cast": None, "tensors": [{"name": "w", "axis": 1, "map": ["0", "1", "2", "zero"]}]}
    fake = tmp_path / "fake.safetensors"
    save(str(fake), {"w": ("F32", f32(1, 4, 8))}, {"widen": json.dumps(transform, separators=(",", ":"))})
    proc = run_bounded("verify", src, fake)
    assert proc.returncode == 1 and "expected F32 [1, 4, %d]" % n in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_end_every_command_at_once(tmp_path, sig):
    """SIGINT and SIGTERM end a command wherever it is, here while it parses a large header (no
    progress callback runs there): the process is stopped mid-parse, signalled, continued, and must
    exit 130 then, with nothing left behind (it once finished the parse, and inspect its listing)."""
    n = scaled(800_000)  # under qemu a quarter: its parse takes longer still
    header = json.dumps({f"t{i:07d}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(n)},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    src = tmp_path / "in" / "big.safetensors"
    src.parent.mkdir()
    src.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * n)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    for args in (["inspect", src], ["verify", src, src], ["apply", src, "-o", out_dir / "o.safetensors", "--cast", "f16"]):
        proc = subprocess.Popen([WIDEN, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env)
        # once its handlers are in place (on a loaded machine the process may not have reached main)
        for _ in range(200):
            with open(f"/proc/{proc.pid}/status") as f:
                caught = int(next(l for l in f if l.startswith("SigCgt:")).split()[1], 16)
            if caught >> (sig - 1) & 1:
                break
            time.sleep(0.01)
        time.sleep(0.2)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.1)
        if proc.poll() is not None:
            pytest.skip("the command finished before it could be stopped")
        proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=HANG)
        assert proc.returncode == 130 and "interrupted" in err, (args, proc.returncode, err)
        assert os.listdir(out_dir) == []


# ------------------------------------------------------------------------------------------------
# 4. Files named for what they are; names shown safely; outputs written safely.


def test_torch_files_widen_does_not_read_are_named(tmp_path):
    obj = {"w": torch.zeros(2)}
    path = tmp_path / "legacy1.pt"  # protocols 2 to 5 are read (test_legacy.py)
    torch.save(obj, path, _use_new_zipfile_serialization=False, pickle_protocol=1)
    proc = run("inspect", path)
    assert proc.returncode == 3 and "legacy" in proc.stderr and "protocol 0 or 1" in proc.stderr, proc.stderr
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    proc = run("inspect", raw)
    assert proc.returncode == 3 and "raw pickle" in proc.stderr
    script = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 2, 1)), str(script))
    proc = run("inspect", script)
    assert proc.returncode == 3 and "TorchScript" in proc.stderr


def test_exactly_the_globals_current_torch_accepts(tmp_path):
    """Python 2 spellings current torch maps (__builtin__.set) are read; what it refuses is refused:
    _rebuild_* functions off its list, a module name cut at a NUL, a dtype alias, strings that are not
    UTF-8, an UntypedStorage spelled as torch never writes it."""
    t = P.tensor_v2(P.storage("0", "F32", 4), [4])
    recs = records_of(**{"0": f32(4)})
    builtin_set = P.Call(P.Global("__builtin__", "set"), ([1, 2],))
    path = P.write_pt(tmp_path / "set.pt", P.dumps(P.ordered_dict([("w", t), ("s", builtin_set)])), recs)
    run("apply", path, "-o", tmp_path / "o.pt", "--cast", "f16", check=0)
    assert torch_load(tmp_path / "o.pt")["s"] == {1, 2}
    refused = {
        "nested": P.ordered_dict([("w", P.Call(P.Global("torch._utils", "_rebuild_nested_tensor"), (t, 0, 0, 0)))]),
        "invented": P.ordered_dict([("w", P.Call(P.Global("torch._utils", "_rebuild_anything"), (1,)))]),
        "nul_module": P.ordered_dict([("w", P.Call(P.Global("torch._utils\0junk", "_rebuild_tensor_v2"), t.args))]),
        "alias": P.ordered_dict([("w", P.Global("torch", "float"))]),
        "not_utf8": P.ordered_dict([("w", t), ("s", b"\xff\xfe")]),
        "untyped_spelling": P.ordered_dict([("w", P.Call(P.Global("torch._utils", "_rebuild_tensor_v3"),
                                                          (P.Persid(("storage", P.Global("torch", "UntypedStorage"), "0",
                                                                     "cpu", 16)), 0, (4,), (1,), False,
                                                           P.ordered_dict(), P.Global("torch", "float32"))))]),
    }
    for case, obj in refused.items():
        proc = run("inspect", P.write_pt(tmp_path / f"{case}.pt", P.dumps(obj), recs))
        assert proc.returncode == 3, (case, proc.stderr)


def test_which_torch_loads_which_output(tmp_path):
    """What the README says: a .pt output holds what the input held; torch >= 2 loads any of them with
    weights_only=True; torch 1.13's weights-only loader lacks BINFLOAT, so it loads outputs without
    Python floats that way, and the others with weights_only=False."""
    torch.manual_seed(0)
    plain, training = tmp_path / "plain.pt", tmp_path / "training.pt"
    torch.save({"conv.weight": torch.randn(4, 3, 3, 3)}, plain)
    torch.save({"model": {"conv.weight": torch.randn(4, 3, 3, 3)}, "lr": 0.1}, training)
    for path in (plain, training):
        run("apply", path, "-o", tmp_path / f"o{path.name}", "--to", "4", check=0)
    torch.load(tmp_path / "oplain.pt", weights_only=True)
    if int(torch.__version__.split(".")[0]) >= 2:
        torch.load(tmp_path / "otraining.pt", weights_only=True)
    else:
        with pytest.raises(Exception):
            torch.load(tmp_path / "otraining.pt", weights_only=True)
        assert torch.load(tmp_path / "otraining.pt", weights_only=False)["lr"] == 0.1


def test_dtypes_without_a_torch_storage(tmp_path):
    """U16, U32 and F8 go to .pt as torch >= 2.1 writes them (_rebuild_tensor_v3); F6 has no torch
    dtype: exit 3, and no warning about an output that is never written."""
    src = tmp_path / "in.safetensors"
    save(str(src), {"u": ("U16", np.arange(6, dtype=np.uint16)), "f8": ("F8_E4M3", np.arange(4, dtype=np.uint8)),
                    "w": ("U32", np.arange(3, dtype=np.uint32))}, {"format": "pt", "note": "x"})
    proc = run("apply", src, "-o", tmp_path / "o.pt")
    assert proc.returncode == 0, proc.stderr
    got = {t["name"]: t["dtype"] for t in json.loads(run("inspect", tmp_path / "o.pt", "--json", check=0).stdout)["tensors"]}
    assert got == {"u": "U16", "f8": "F8_E4M3", "w": "U32"}
    run("apply", tmp_path / "o.pt", "-o", tmp_path / "back.safetensors", check=0)
    back = load(str(tmp_path / "back.safetensors"))[1]
    assert back["u"][1].tolist() == list(range(6)) and back["f8"][1].tolist() == list(range(4))
    six = tmp_path / "six.safetensors"
    header = json.dumps({"x": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]}}).encode()
    header += b" " * (-len(header) % 8)
    six.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0")
    proc = run("apply", six, "-o", tmp_path / "six.pt")
    assert proc.returncode == 3 and "warning" not in proc.stderr and not (tmp_path / "six.pt").exists()


def test_round_trips_keep_metadata_honest(tmp_path):
    """pt -> safetensors writes {"format": "pt"} (transformers requires it); widen's own key is not
    reported as dropped on the way back to .pt; a bare tensor is named "tensor"."""
    torch.manual_seed(0)
    torch.save({"conv.weight": torch.randn(4, 3, 3, 3)}, tmp_path / "m.pt")
    run("apply", tmp_path / "m.pt", "-o", tmp_path / "m.safetensors", "--to", "4", check=0)
    meta = load(str(tmp_path / "m.safetensors"))[0]
    assert meta["format"] == "pt" and "widen" in meta
    run("verify", tmp_path / "m.pt", tmp_path / "m.safetensors", check=0)
    proc = run("apply", tmp_path / "m.safetensors", "-o", tmp_path / "back.pt", check=0)
    assert "dropping" not in proc.stderr
    bare = tmp_path / "bare.pt"
    torch.save(torch.randn(2, 3, 4, 4), bare)
    assert [t["name"] for t in json.loads(run("inspect", bare, "--json", check=0).stdout)["tensors"]] == ["tensor"]
    run("apply", bare, "-o", tmp_path / "bare4.pt", "--to", "4", check=0)
    assert torch_load(tmp_path / "bare4.pt").shape == (2, 4, 4, 4)


def test_names_are_escaped_in_messages_and_listings(tmp_path):
    """A newline in a name cannot forge a second error line, an escape sequence does not reach the
    terminal."""
    torch.manual_seed(0)
    evil = "a\nwiden: error: forged\x1b[31m"
    torch.save({evil: torch.randn(4, 3, 3, 3), "b\u202eb": torch.randn(2)}, tmp_path / "e.pt")
    out = run("inspect", tmp_path / "e.pt", check=0).stdout
    assert "\x1b" not in out and "\\x1b[31m" in out and "a\\nwiden: error: forged" in out and "\\u202e" in out
    assert json.loads(run("inspect", tmp_path / "e.pt", "--json", check=0).stdout)["tensors"][0]["name"] == evil
    proc = run("apply", tmp_path / "e.pt", "-o", tmp_path / "o.pt", "-t", evil + "x", "--to", "4")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "\x1b" not in proc.stderr


def test_the_archive_folder_is_never_the_inputs(tmp_path):
    """An input whose entries all start with '../' (a zip slip torch loads): the output's folder is
    archive/."""
    data = P.dumps(conv_pickle())
    path = P.write_pt(tmp_path / "slip.pt", data, records_of(**{"0": f32(8, 3, 3, 3)}), prefix="..",
                      extra={"../extra.txt": b"not read by torch.load"})
    proc = run("apply", path, "-o", tmp_path / "o.pt", "--to", "4", check=0)
    assert "dropping 1 archive entry that torch.load does not read" in proc.stderr
    with zipfile.ZipFile(tmp_path / "o.pt") as z:
        assert all(n.startswith("archive/") for n in z.namelist())


def test_outputs_are_written_safely(tmp_path):
    """The umask applies (and is never changed); '', links, FIFOs and devices are not replaced;
    a manifest is not the output; a name of 250 characters fits; a FIFO is not waited on."""
    src = tmp_path / "in.safetensors"
    save(str(src), {"w": ("F32", f32(4, 3, 3, 3))})
    proc = subprocess.run(f"umask 027; exec {WIDEN} apply {src} -o {tmp_path / 'o.safetensors'} --to 4",
                          shell=True, capture_output=True, text=True)
    assert proc.returncode == 0 and stat.S_IMODE(os.stat(tmp_path / "o.safetensors").st_mode) == 0o640
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.safetensors"
    os.symlink(tmp_path / "elsewhere.safetensors", link)
    for target in ("", "/dev/null", fifo, link):  # ("-" is standard output: tests/test_stdout.py)
        proc = run_bounded("apply", src, "-o", target, "--to", "4", "--force")
        assert proc.returncode == 2, (target, proc.stderr)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.path.islink(link) and stat.S_ISFIFO(os.stat(fifo).st_mode)
    proc = run("apply", src, "-o", tmp_path / "x.safetensors", "--to", "4", "--manifest", tmp_path / "." / "x.safetensors")
    assert proc.returncode == 2 and not (tmp_path / "x.safetensors").exists()
    long = tmp_path / ("n" * 238 + ".safetensors")
    run("apply", src, "-o", long, "--to", "4", check=0)
    assert run_bounded("inspect", fifo).returncode == 3


def test_manifests_are_read_strictly(tmp_path):
    src = tmp_path / "in.safetensors"
    save(str(src), {"w": ("F32", f32(4, 3, 3, 3))})
    out, manifest = tmp_path / "o.safetensors", tmp_path / "m.json"
    run("apply", src, "-o", out, "--to", "4", "--manifest", manifest, check=0)
    doc = json.loads(manifest.read_text())
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert run("verify", src, out, "--manifest", broken).returncode == 3
    doc["transform"]["tensors"][0]["axis"] = 2 ** 32 + 1  # was cut to 1
    broken.write_text(json.dumps(doc))
    assert run("verify", src, out, "--manifest", broken).returncode == 3


@pytest.mark.host_only("this build's library (ctypes)")
def test_library_refuses_null_arguments(tmp_path):
    """A NULL transform, path or report is a usage error, not a crash."""
    import ctypes
    from reference import LIBWIDEN
    lib = ctypes.CDLL(LIBWIDEN)
    err = ctypes.create_string_buffer(2048)
    src = tmp_path / "in.safetensors"
    save(str(src), {"w": ("F32", f32(4, 3, 3, 3))})
    lib.widen_apply.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    assert lib.widen_apply(str(src).encode(), str(tmp_path / "o.safetensors").encode(), None, None, err) == 2
    lib.widen_verify.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p]
    assert lib.widen_verify(None, str(src).encode(), None, None, err) == 2
