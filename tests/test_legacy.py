"""Legacy torch.save files (torch < 1.6, or _use_new_zipfile_serialization=False) and pickles of
protocols 3 to 5: written by the installed torch and by a generator that reproduces what older writers
did (torch 0.3's _rebuild_tensor, storage views with view_metadata, unsorted key lists), read by widen,
widened and converted to .pt and safetensors, and checked against what torch.load reads from the same
input. Damaged and hostile files are refused with exit 3."""
import collections
import io
import json
import pickle
import pickletools
import struct
import zipfile

import numpy as np
import pytest
import torch

import reference
from reference import run

MAGIC = 0x1950a86a20f9469cfc6c
# torch/_weights_only_unpickler.py (current): the opcodes it reads
WEIGHTS_ONLY_OPCODES = {"PROTO", "STOP", "GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS",
                        "MARK", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWTRUE", "NEWFALSE", "EMPTY_TUPLE",
                        "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT",
                        "BINUNICODE", "SHORT_BINSTRING", "BINPERSID", "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT"}


def checkpoint():
    """Tensors of several dtypes, views and shared storages, a Parameter, nesting, non-tensor values."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(40, generator=g)
    sd = collections.OrderedDict()
    sd["conv1.weight"] = torch.randn(6, 3, 3, 3, generator=g)
    sd["conv1.bias"] = base[:6]              # views of one storage
    sd["bn.weight"] = base[10:16]
    sd["fc.weight"] = torch.randn(3, 5, generator=g).t()  # non-contiguous
    sd["half"] = torch.randn(4, generator=g).half()
    sd["bf16"] = torch.randn(4, generator=g).bfloat16()
    sd["steps"] = torch.arange(5)
    sd["mask"] = torch.tensor([True, False, True])
    sd["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    sd["tied"] = sd["conv1.weight"]          # the same tensor under two names
    return {"state_dict": sd, "epoch": 7, "arch": "resnet", "sets": {"ok": [1, 2, "x"]}}


def load_reference(path, protocol):
    """What torch reads: its weights-only loader where the installed torch has one for the file
    (protocols 2 and 3), its full unpickler otherwise (files the test itself wrote)."""
    return torch.load(path, weights_only=protocol < 4)


def flat(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        return {prefix[:-1]: obj}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {}


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.contiguous().view(-1).view(torch.uint8).equal(
        b.contiguous().view(-1).view(torch.uint8))


def raw(t):
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def check_widened(src, out, ref, name="state_dict.conv1.weight"):
    """out (a .pt, or a safetensors file read by the reference reader) holds ref's tensors, name widened
    from 3 to 4 channels with zeros."""
    want = flat(ref)
    if out.suffix == ".pt":
        got = {k: (t.dtype, list(t.shape), raw(t)) for k, t in flat(torch.load(out, weights_only=False)).items()}
    elif out.suffix == ".npz":
        with np.load(out) as z:
            got = {k: (None, list(z[k].shape), z[k].tobytes()) for k in z.files}
    else:
        got = {k: (d, list(a.shape), a.tobytes()) for k, (d, a) in reference.load(out)[1].items()}
    assert set(got) == set(want)
    for k, t in want.items():
        if k == name:  # only the name transformed: another name of the same tensor keeps it as it was
            t = torch.cat([t, torch.zeros_like(t[:, :1])], 1)
        assert got[k][1:] == (list(t.shape), raw(t)), k
        if out.suffix == ".pt":
            assert got[k][0] == t.dtype, k


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("fmt", ["pt", "safetensors", "npz"])
def test_torch_legacy_files_widened_and_converted(tmp_path, protocol, fmt):
    obj = checkpoint()
    if fmt == "npz":  # NumPy has no bfloat16
        del obj["state_dict"]["bf16"]
    src = tmp_path / "legacy.pth"
    torch.save(obj, src, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    ref = load_reference(src, protocol)
    # the same tensors as the same object saved as a zip checkpoint
    zipped = tmp_path / "zip.pt"
    torch.save(obj, zipped)
    assert run("hash", src, check=0).stdout.split("\n", 1)[1] == run("hash", zipped, check=0).stdout.split("\n", 1)[1]
    out, manifest = tmp_path / f"out.{fmt}", tmp_path / "m.json"
    run("apply", src, "-t", "state_dict.conv1.weight", "--axis", "1", "--to", "4", "-o", out, "--manifest", manifest,
        check=0)
    check_widened(src, out, ref)
    if fmt == "pt":
        with open(out, "rb") as f:
            assert f.read(4) == b"PK\x03\x04"  # never written as legacy
        back = torch.load(out, weights_only=False)
        sd = back["state_dict"]
        assert sd["conv1.bias"].storage().data_ptr() == sd["bn.weight"].storage().data_ptr()  # still shared
        assert sd["tied"].shape[1] == 3 and back["epoch"] == 7 and back["sets"] == {"ok": [1, 2, "x"]}
    run("verify", src, out, "--manifest", manifest, check=0)
    data = bytearray(out.read_bytes())
    for at in (len(data) // 2, len(data) - 30):  # a tensor's or the pickle's bytes; the zip directory
        data[at] ^= 1
        out.write_bytes(bytes(data))
        proc = run("verify", src, out, "--manifest", manifest)
        assert proc.returncode in (1, 3) and "verified" not in proc.stdout, proc.stderr
        data[at] ^= 1


# ------------------------------------------------------------------------------------------------
# What older writers wrote: a generator of legacy files with torch 0.3's _rebuild_tensor, storage
# views (the sixth item of a persistent id), and key lists in any order.

class Storage:
    def __init__(self, key, cls, values):
        self.key, self.cls, self.values = key, cls, values  # values: a 1-d tensor of the class's dtype


class StorageView:
    def __init__(self, root, key, offset, size):
        self.root, self.key, self.offset, self.size = root, key, offset, size


class RawPid:
    """A persistent id spelled out whole (what an attacker writes)."""
    def __init__(self, tup):
        self.tup = tup


class Rebuild:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def legacy_file(path, obj, storages, protocol=2, keys=None, counts=None, trailer=b"", magic=MAGIC, version=1001,
                extra=(), sys_info=None):
    """Writes obj as _legacy_save lays it out; persistent ids for Storage and StorageView objects."""
    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, RawPid):
                return o.tup
            if isinstance(o, Storage):
                return ("storage", o.cls, o.key, "cpu", o.values.numel(), None)
            if isinstance(o, StorageView):
                r = o.root
                return ("storage", r.cls, r.key, "cpu", r.values.numel(), (o.key, o.offset, o.size))
            return None

    f = io.BytesIO()
    pickle.dump(magic, f, protocol=protocol)
    pickle.dump(version, f, protocol=protocol)
    Pickler(f, protocol=protocol).dump(sys_info or {"protocol_version": 1001, "little_endian": True,
                                                    "type_sizes": {"short": 2, "int": 4, "long": 4}})
    Pickler(f, protocol=protocol).dump(obj)
    order = keys if keys is not None else sorted(s.key for s in storages)
    pickle.dump(order, f, protocol=protocol)
    by_key = {s.key: s for s in list(storages) + list(extra)}
    for i, k in enumerate(order):
        s = by_key[k]
        count = s.values.numel() if counts is None else counts[i]
        f.write(struct.pack("<q", count) + s.values.numpy().tobytes())
    f.write(trailer)
    path.write_bytes(f.getvalue())
    return path


def old_style(tmp_path, **kw):
    """torch 0.3's tensors (_rebuild_tensor) and a storage view: a conv kernel in a root storage, a
    bias in a view of a second storage, a tensor of the view's root."""
    g = torch.Generator().manual_seed(9)
    w = Storage("140001", torch.FloatStorage, torch.randn(2 * 3 * 3 * 3, generator=g))
    r = Storage("140002", torch.FloatStorage, torch.randn(10, generator=g))
    view = StorageView(r, "140003", 4, 3)
    obj = collections.OrderedDict()
    obj["conv.weight"] = Rebuild(torch._utils._rebuild_tensor, (w, 0, (2, 3, 3, 3), (27, 9, 3, 1)))
    obj["conv.bias"] = Rebuild(torch._utils._rebuild_tensor, (view, 1, (2,), (1,)))
    obj["other"] = Rebuild(torch._utils._rebuild_tensor_v2, (r, 0, (2, 5), (5, 1), False, collections.OrderedDict()))
    return legacy_file(tmp_path / kw.pop("name", "old.pth"), obj, [w, r], **kw)


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "npz"])
def test_old_writers_rebuild_tensor_and_storage_views(tmp_path, fmt):
    src = old_style(tmp_path)
    ref = torch.load(src, weights_only=False)  # the reference reader of storage views
    assert torch.equal(ref["conv.bias"], ref["other"].view(-1)[5:7])
    out, manifest = tmp_path / f"out.{fmt}", tmp_path / "m.json"
    run("apply", src, "-t", "conv.weight", "--axis", "1", "--to", "4", "-o", out, "--manifest", manifest, check=0)
    check_widened(src, out, ref, name="conv.weight")
    if fmt == "pt":
        assert torch.load(out, weights_only=True).keys() == ref.keys()
    run("verify", src, out, "--manifest", manifest, check=0)


def test_protocol_4_and_5_zip_checkpoints(tmp_path):
    """torch.save(..., pickle_protocol=4 or 5) writes FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL,
    EMPTY_SET + ADDITEMS and bytes: read as torch.load reads them, written as protocol 2, which the
    weights-only loader reads."""
    for protocol in (3, 4, 5):
        obj = {"conv.weight": torch.randn(2, 3, 1, 1), "s": {1, 2, 3}, "b": b"\x00\xffz", "names": ["ä", "b"] * 3}
        src = tmp_path / f"p{protocol}.pt"
        torch.save(obj, src, pickle_protocol=protocol)
        out, manifest = tmp_path / f"o{protocol}.pt", tmp_path / f"m{protocol}.json"
        run("apply", src, "-t", "conv.weight", "--axis", "1", "--to", "4", "-o", out, "--manifest", manifest, check=0)
        # current torch's weights-only loader reads builtins.set and _codecs.encode, 1.13's does not: the
        # values are checked with the full unpickler, the opcodes against the weights-only loader's list
        back = torch.load(out, weights_only=False)
        ops = {op.name for op, _, _ in pickletools.genops(zipfile.ZipFile(out).read("archive/data.pkl"))}
        assert ops <= WEIGHTS_ONLY_OPCODES, ops - WEIGHTS_ONLY_OPCODES
        assert back["s"] == {1, 2, 3} and back["b"] == b"\x00\xffz" and back["names"] == ["ä", "b"] * 3
        assert torch.equal(back["conv.weight"][:, :3], obj["conv.weight"]) and not back["conv.weight"][:, 3].any()
        run("verify", src, out, "--manifest", manifest, check=0)


def test_damaged_and_hostile_legacy_files(tmp_path):
    """Each is exit 3, with nothing written. torch.load fails on the truncated file, the wrong counts
    and the key nobody names; the others it loads with bytes the file does not state: a storage read
    twice, one never read (left uninitialised), a view cut short, a trailer ignored."""
    good = old_style(tmp_path, name="good.pth").read_bytes()
    truncated = tmp_path / "t.pth"
    truncated.write_bytes(good[:-5])
    cases = {
        "truncated": lambda: truncated,
        "count past the file": lambda: old_style(tmp_path, name="c.pth", counts=[2 ** 60, 10]),
        "count disagrees": lambda: old_style(tmp_path, name="d.pth", counts=[53, 10]),
        "key listed twice": lambda: old_style(tmp_path, name="k.pth", keys=["140001", "140001", "140002"]),
        "key not listed": lambda: old_style(tmp_path, name="n.pth", keys=["140001"]),
        "key nobody names": lambda: old_style(tmp_path, name="x.pth", keys=["140001", "140002", "9"],
                                              extra=[Storage("9", torch.FloatStorage, torch.ones(2))]),
        "trailing bytes": lambda: old_style(tmp_path, name="tr.pth", trailer=b"\0" * 16),
        "bad magic": lambda: old_style(tmp_path, name="m.pth", magic=MAGIC + 1),
        "bad version": lambda: old_style(tmp_path, name="v.pth", version=1000),
    }
    for what, make in cases.items():
        path = make()
        for args in (("inspect", path), ("apply", path, "-t", "conv.weight", "--axis", "1", "--to", "4", "-o",
                                         tmp_path / "o.pt", "--force")):
            proc = run(*args)
            assert proc.returncode == 3 and proc.stderr.count("\n") == 1, (what, proc.stderr)
        assert not (tmp_path / "o.pt").exists()
    # a storage view reaching past its root, and a global off the allowlist in the object pickle
    r = Storage("1", torch.FloatStorage, torch.zeros(4))
    past = legacy_file(tmp_path / "past.pth", {"v": Rebuild(torch._utils._rebuild_tensor,
                                                                (StorageView(r, "2", 3, 2), 0, (2,), (1,)))}, [r])
    proc = run("inspect", past)
    assert proc.returncode == 3 and "past the end" in proc.stderr
    evil = legacy_file(tmp_path / "evil.pth", {"v": Rebuild(print, ("hi",))}, [])
    proc = run("inspect", evil)
    assert proc.returncode == 3 and "builtins.print" in proc.stderr


def test_files_still_refused_are_named(tmp_path):
    """Protocol 1 legacy files (text opcodes torch's weights-only loader does not read) and raw pickles."""
    path = tmp_path / "p1.pt"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False, pickle_protocol=1)
    proc = run("inspect", path)
    assert proc.returncode == 3 and "protocol 0 or 1" in proc.stderr
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    proc = run("inspect", raw)
    assert proc.returncode == 3 and "raw pickle" in proc.stderr
    assert json.loads(run("inspect", old_style(tmp_path), "--json", check=0).stdout)["format"] == "pt"


@pytest.mark.parametrize("spelling", ["%06o\0 ", "+%o\0", "0o%o", "%o_\0", "base256"])
def test_a_legacy_file_that_also_reads_as_tar_is_refused(tmp_path, spelling):
    """torch.load tries the tar-era format first: a legacy file whose first block carries a valid tar
    checksum (here inside the sys_info dict, which torch ignores) is read by torch as a tar archive,
    and by widen not at all."""
    good = old_style(tmp_path, name="good.pth").read_bytes()
    f = io.BytesIO()
    for value in (MAGIC, 1001):
        pickle.dump(value, f, protocol=2)
    head = f.getvalue()
    f = io.BytesIO()
    pickle.dump({"pad": "x" * 600}, f, protocol=2)
    info = bytearray(f.getvalue())
    rest = good[len(head):]
    rest = rest[rest.index(b".") + 1:]  # past the original sys_info pickle
    data = bytearray(head + bytes(info) + rest)
    assert data.index(b"x" * 600) < 100  # the string covers the header's fields: they are made valid
    data[100:148] = b"0000644\0" + b"0000000\0" * 2 + b"00000000000\0" * 2
    data[329:345] = b"\0" * 16
    data[156] = ord("0")  # a regular file ('x' would be a pax header tarfile cannot parse)
    data[148:156] = b" " * 8
    checksum = sum(data[:512])

    def field(value):  # every spelling Python's tarfile (int(text, 8), or base-256) reads
        if spelling == "base256":
            return b"\x80" + value.to_bytes(7, "big")
        if spelling == "%o_\0":  # an underscore between two digits
            text = b"%o" % value
            return (text[:1] + b"_" + text[1:] + b"\0").ljust(8, b"\0")
        return (spelling.encode() % value).ljust(8, b"\0")
    data[148:156] = field(checksum)
    path = tmp_path / "tar.pth"
    path.write_bytes(bytes(data))
    import tarfile
    with tarfile.open(path, "r:") as tar:  # Python's tarfile reads its first member
        assert tar.getmembers()
    with pytest.raises(Exception):
        torch.load(path, weights_only=False)
    proc = run("inspect", path)
    assert proc.returncode == 3 and "tar archive" in proc.stderr, proc.stderr
    if spelling == "base256":
        return  # its bytes are not UTF-8: the string holding them is not one torch reads either
    data[148:156] = field(checksum + 1)  # without a valid checksum it is an ordinary legacy file
    path.write_bytes(bytes(data))
    run("inspect", path, check=0)


def test_attacks_found_in_review(tmp_path):
    """Each was read by widen in a way torch does not read it; each is now exit 3 (or read as torch
    reads it)."""
    pickles = pytest.importorskip("pickles")
    # a view whose root numel times the element size wraps around 2^64
    r = Storage("1", torch.FloatStorage, torch.arange(6.0))
    wrap = RawPid(("storage", torch.FloatStorage, "1", "cpu", 6 + 2 ** 62, ("v", 2 ** 61, 2)))
    path = legacy_file(tmp_path / "wrap.pth", {"a": Rebuild(torch._utils._rebuild_tensor, (r, 0, (6,), (1,))),
                                               "z": Rebuild(torch._utils._rebuild_tensor, (wrap, 0, (2,), (1,)))}, [r])
    proc = run("hash", path)
    assert proc.returncode == 3 and "two types or sizes" in proc.stderr, proc.stderr
    # a FRAME of the magic pickle that runs past its STOP: where torch reads on depends on its buffer
    data = bytearray(old_style(tmp_path, name="p4.pth", protocol=4).read_bytes())
    assert data[2] == 0x95
    data[3:11] = struct.pack("<Q", struct.unpack("<Q", data[3:11])[0] + 5)
    (tmp_path / "frame.pth").write_bytes(bytes(data))
    proc = run("inspect", tmp_path / "frame.pth")
    assert proc.returncode == 3 and "FRAME runs past its STOP" in proc.stderr, proc.stderr
    # a storage in sys_info, which torch loads without persistent_load
    path = old_style(tmp_path, name="sys.pth", sys_info={"x": Storage("1", torch.FloatStorage, torch.zeros(1))})
    proc = run("inspect", path)
    assert proc.returncode == 3 and "persistent id" in proc.stderr, proc.stderr
    # ADDITEMS on set(L): the set grows, L does not (L is memo 2: the dict, "lst", then L)
    obj = {"lst": [1], "conv": pickles.tensor_v2(pickles.storage("0", "F32", 3), [1, 3, 1, 1]),
           "s": pickles.Raw(b"cbuiltins\nset\nh\x02\x85R(K\x02\x90")}
    src = pickles.write_pt(tmp_path / "additems.pt", pickles.dumps(obj, proto=4), {"0": struct.pack("<3f", 1, 2, 3)})
    assert torch.load(src, weights_only=False)["lst"] == [1]
    out, manifest = tmp_path / "a.pt", tmp_path / "a.json"
    run("apply", src, "-t", "conv", "--axis", "1", "--to", "4", "-o", out, "--manifest", manifest, check=0)
    back = torch.load(out, weights_only=False)
    assert back["lst"] == [1] and back["s"] == {1, 2}
    run("verify", src, out, "--manifest", manifest, check=0)
    # a global split as torch.save never splits it: the weights-only loader reads it, the full
    # unpickler fails on it under protocol 2 (protocol 4 resolves dotted names); refused either way
    obj = {"conv": pickles.Call(pickles.Global("torch", "_utils._rebuild_tensor_v2"),
                                pickles.tensor_v2(pickles.storage("0", "F32", 3), [3]).args)}
    src = pickles.write_pt(tmp_path / "split.pt", pickles.dumps(obj, proto=2), {"0": struct.pack("<3f", 1, 2, 3)})
    with pytest.raises(Exception):
        torch.load(src, weights_only=False)
    proc = run("inspect", src)
    assert proc.returncode == 3 and "split" in proc.stderr, proc.stderr
