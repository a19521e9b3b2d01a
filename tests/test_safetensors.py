"""The safetensors reader enforces every rule of FORMATS.md (each broken file gets exit 3 and no
output), accepts what the reference reader accepts, and the writer lays files out as the
reference writer does."""
import json
import os
import struct

import numpy as np
import pytest

from reference import load, run, save


def raw_file(path, header, data=b"", pad=True, length=None):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    n = len(text) if length is None else length
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + text + data)
    return path


T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
BROKEN = {
    "short_file": lambda p: open(p, "wb").write(b"\x08\x00\x00"),
    "header_too_large": lambda p: raw_file(p, {"a": T}, b"\0" * 8, length=100_000_001),
    "header_past_end": lambda p: raw_file(p, {"a": T}, b"\0" * 8, length=4096),
    "invalid_utf8": lambda p: raw_file(p, b'{"a\xff\xfe":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8),
    "not_json": lambda p: raw_file(p, b'{"a": {"dtype": "F32",', b"\0" * 8),
    "not_an_object": lambda p: raw_file(p, b"[1, 2, 3]"),
    "trailing_garbage_json": lambda p: raw_file(p, json.dumps({"a": T}).encode() + b" x", b"\0" * 8),
    "dtype_not_string": lambda p: raw_file(p, {"a": dict(T, dtype=4)}, b"\0" * 8),
    "unknown_dtype": lambda p: raw_file(p, {"a": dict(T, dtype="f32")}, b"\0" * 8),
    "shape_not_list": lambda p: raw_file(p, {"a": dict(T, shape="2")}, b"\0" * 8),
    "negative_dim": lambda p: raw_file(p, {"a": dict(T, shape=[-2])}, b"\0" * 8),
    "float_dim": lambda p: raw_file(p, {"a": dict(T, shape=[2.0])}, b"\0" * 8),
    "offsets_three": lambda p: raw_file(p, {"a": dict(T, data_offsets=[0, 8, 8])}, b"\0" * 8),
    "offsets_negative": lambda p: raw_file(p, {"a": dict(T, data_offsets=[-8, 0])}, b"\0" * 8),
    "offsets_reversed": lambda p: raw_file(p, {"a": dict(T, data_offsets=[8, 0])}, b"\0" * 8),
    "size_mismatch": lambda p: raw_file(p, {"a": dict(T, shape=[3])}, b"\0" * 8),
    "count_overflow": lambda p: raw_file(p, {"a": dict(T, shape=[2**32, 2**32, 2])}, b"\0" * 8),
    "bytes_overflow": lambda p: raw_file(p, {"a": dict(T, shape=[2**62])}, b"\0" * 8),
    "subbyte_not_whole": lambda p: raw_file(p, {"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}}, b"\0"),
    "first_not_at_zero": lambda p: raw_file(p, {"a": dict(T, data_offsets=[8, 16])}, b"\0" * 16),
    "gap": lambda p: raw_file(p, {"a": T, "b": dict(T, data_offsets=[12, 20])}, b"\0" * 20),
    "overlap": lambda p: raw_file(p, {"a": T, "b": dict(T, data_offsets=[4, 12])}, b"\0" * 12),
    "trailing_bytes": lambda p: raw_file(p, {"a": T}, b"\0" * 9),
    "truncated_data": lambda p: raw_file(p, {"a": T}, b"\0" * 7),
    "duplicate_name": lambda p: raw_file(
        p, b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}',
        b"\0" * 16),
    "metadata_not_object": lambda p: raw_file(p, {"__metadata__": [1], "a": T}, b"\0" * 8),
    "metadata_value_not_string": lambda p: raw_file(p, {"__metadata__": {"k": 1}, "a": T}, b"\0" * 8),
    "tensor_not_object": lambda p: raw_file(p, {"a": [1, 2]}, b"\0" * 8),
    "legacy_torch": lambda p: open(p, "wb").write(bytes.fromhex("80028a0a6cfc9c46f9206aa85019") + b"\0" * 64),
    "zip_archive": lambda p: open(p, "wb").write(b"PK\x03\x04" + b"\0" * 64),
    "empty_file": lambda p: open(p, "wb").write(b""),
    "shard_index_json": lambda p: open(p, "wb").write(b'{"metadata": {}, "weight_map": {}}'),
    "npy": lambda p: open(p, "wb").write(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_file_exits_3_and_writes_nothing(tmp_path, case):
    path = tmp_path / f"{case}.safetensors"
    BROKEN[case](str(path))
    before = path.read_bytes()
    for args in (["inspect", path], ["hash", path], ["apply", path, "-o", tmp_path / "out.safetensors", "--to", "4"]):
        proc = run(*args)
        assert proc.returncode == 3, (case, args[0], proc.stderr)
        lines = proc.stderr.strip().split("\n")
        assert len(lines) == 1 and lines[0].startswith("widen: error: ") and str(path) in lines[0], proc.stderr
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [path.name], "output or temporary file left behind"


def test_messages_say_what_is_wrong(tmp_path):
    cases = {"legacy_torch": "legacy", "zip_archive": "zip", "shard_index_json": "index.json", "npy": "NumPy", "gap": "gap", "overlap": "overlap",
             "trailing_bytes": "trailing", "duplicate_name": "duplicate", "unknown_dtype": "unknown dtype",
             "header_too_large": "100,000,000", "truncated_data": "truncated"}
    for case, words in cases.items():
        path = tmp_path / case
        BROKEN[case](str(path))
        assert words in run("inspect", path, check=3).stderr, case


def inspect_json(path):
    return json.loads(run("inspect", path, "--json", check=0).stdout)


def test_accepts_what_the_reference_reader_accepts(tmp_path):
    # zero-sized tensors, a scalar, whitespace around the JSON, no padding (unaligned data), sub-byte
    header = b'  {"z":{"dtype":"F32","shape":[2,0],"data_offsets":[0,0]},' \
             b'"s":{"dtype":"I64","shape":[],"data_offsets":[0,8]},' \
             b'"h":{"dtype":"F16","shape":[3],"data_offsets":[8,14]},' \
             b'"q":{"dtype":"F4","shape":[4],"data_offsets":[14,16]}}\n '
    data = struct.pack("<q", -5) + np.float16([1, 2, 3]).tobytes() + b"\x12\x34"
    path = raw_file(str(tmp_path / "edge.safetensors"), header, data, pad=False)
    doc = inspect_json(path)
    got = {t["name"]: (t["dtype"], t["shape"], t["bytes"]) for t in doc["tensors"]}
    assert got == {"z": ("F32", [2, 0], 0), "s": ("I64", [], 8), "h": ("F16", [3], 6), "q": ("F4", [4], 2)}
    # empty header
    empty = raw_file(str(tmp_path / "empty.safetensors"), b"{}")
    assert inspect_json(empty)["tensors"] == []


def test_inspect_lists_what_the_reference_reads(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"b.weight": ("F32", rng.standard_normal((4, 3, 2)).astype(np.float32)),
               "a.count": ("I64", np.int64([7])),
               "c.half": ("F16", rng.standard_normal(5).astype(np.float16)),
               "é unicode": ("U8", np.arange(3, dtype=np.uint8))}
    path = tmp_path / "m.safetensors"
    save(str(path), tensors, {"format": "pt"})
    doc = inspect_json(path)
    meta, ref, header, start = load(str(path))
    assert doc["metadata"] == meta
    assert {t["name"]: (t["dtype"], t["shape"], t["bytes"], t["offset"]) for t in doc["tensors"]} == {
        n: (h["dtype"], h["shape"], h["data_offsets"][1] - h["data_offsets"][0], start + h["data_offsets"][0])
        for n, h in header.items()}
    text = run("inspect", path, check=0).stdout
    assert "b.weight" in text and "[4, 3, 2]" in text and "format = pt" in text


def test_header_length_that_looks_like_a_pickle_opcode(tmp_path):
    # a header of 0x280 bytes starts the file with 80 02, the bytes a pickle starts with
    pad = 0x280 - len(json.dumps({"a": T, "__metadata__": {"k": ""}}))
    header = json.dumps({"a": T, "__metadata__": {"k": "x" * pad}}).encode()
    path = raw_file(str(tmp_path / "p.safetensors"), header, b"\0" * 8)
    assert open(path, "rb").read(2) == b"\x80\x02"
    assert [t["name"] for t in inspect_json(path)["tensors"]] == ["a"]


def test_unpadded_header_of_123_bytes_is_not_taken_for_json(tmp_path):
    header = json.dumps({"a": T}).encode()
    header += b" " * (123 - len(header))
    path = raw_file(str(tmp_path / "odd.safetensors"), header, b"\0" * 8, pad=False)
    assert open(path, "rb").read(1) == b"{"
    assert [t["name"] for t in inspect_json(path)["tensors"]] == ["a"]


def test_other_writers_quirks_are_read_as_the_reference_reads_them(tmp_path):
    """Headers as other writers (Rust, Swift, R, tinygrad) lay them out: fields in another order,
    unknown fields (the reference ignores them), __metadata__ last or null, escaped names (\\u00e9,
    \\/), a header padded with newlines: read as the reference reads them; a nesting deeper than
    serde_json's 128 levels in an unknown field is refused, as the reference refuses it."""
    header = (b'{"b\\u00e9\\/c":{"shape":[2],"data_offsets":[0,8],"dtype":"F32","extra":{"x":[1,2.5,-3e4,null]}},'
              b'"a":{"data_offsets":[8,10],"dtype":"U8","shape":[2]},"__metadata__":{"k":"v"}}\n\n\n')
    data = np.float32([1.5, -2]).tobytes() + b"\x07\x09"
    path = raw_file(str(tmp_path / "q.safetensors"), header, data, pad=False)
    doc = inspect_json(path)
    assert {t["name"]: t["shape"] for t in doc["tensors"]} == {"bé/c": [2], "a": [2]} and doc["metadata"] == {"k": "v"}
    assert load(path)[1]["bé/c"][1].tolist() == [1.5, -2.0]
    nulled = raw_file(str(tmp_path / "n.safetensors"), b'{"__metadata__":null,"a":{"dtype":"U8","shape":[1],'
                                                      b'"data_offsets":[0,1]}}', b"\x01")
    assert inspect_json(nulled)["metadata"] == {}
    deep = raw_file(str(tmp_path / "d.safetensors"), b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":' +
                    b"[" * 200 + b"]" * 200 + b"}}", b"\x01")
    assert run("inspect", deep).returncode == 3


def test_a_header_of_many_tensors_is_read_in_compact_records(tmp_path):
    """300,000 tensors (a 20 MB header): no JSON tree in memory (an 83 MB header once took 1.6 GB, 1.2 KB
    a tensor); at most 800 bytes a tensor now, the table included."""
    import re
    import subprocess
    from reference import WIDEN
    n = 300_000
    header = json.dumps({f"t{i:07d}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(n)},
                        separators=(",", ":")).encode()
    path = raw_file(str(tmp_path / "many.safetensors"), header, b"\0" * n)
    proc = subprocess.run(["/usr/bin/time", "-v", WIDEN, "inspect", path], capture_output=True, text=True)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == n + 2
    if not os.environ.get("WIDEN_SANITIZE"):
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
        assert rss * 1024 < 800 * n, rss
