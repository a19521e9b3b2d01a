"""widen apply / verify / hash end to end, against NumPy and an independent safetensors writer."""
import json
import os
import subprocess

import numpy as np
import pytest
import xxhash

from reference import f32_to_bf16_bits, load, run, save, to_dtype_bits, unusable_isa


def backbone(rng):
    """A small ResNet-like state dict whose only 3-input-channel weight is conv1 [64,3,7,7]."""
    return {
        "conv1.weight": ("F32", rng.standard_normal((64, 3, 7, 7)).astype(np.float32)),
        "bn1.weight": ("F32", rng.standard_normal(64).astype(np.float32)),
        "bn1.num_batches_tracked": ("I64", np.int64(17).reshape(())),
        "layer1.0.conv1.weight": ("F32", rng.standard_normal((64, 64, 3, 3)).astype(np.float32)),
        "head.weight": ("BF16", f32_to_bf16_bits(rng.standard_normal((10, 64)).astype(np.float32))),
        "fc.weight": ("F16", rng.standard_normal((10, 3)).astype(np.float16)),
        "mask": ("BOOL", rng.random((3, 5)) > 0.5),
    }


META = {"format": "pt", "note": "unicode ✓"}


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(42)
    tensors = backbone(rng)
    path = tmp_path / "in.safetensors"
    save(str(path), tensors, META)
    return path, tensors


def widen_out(tmp_path, name="out.safetensors"):
    return tmp_path / name


def test_widen_first_conv_to_4_channels(tmp_path, model):
    path, tensors = model
    before = path.read_bytes()
    out = widen_out(tmp_path)
    run("apply", path, "-o", out, "--to", "4", check=0)
    assert path.read_bytes() == before, "input modified"
    meta, got, _, _ = load(str(out))
    w = tensors["conv1.weight"][1]
    assert got["conv1.weight"][1].shape == (64, 4, 7, 7)
    expected = np.pad(w, ((0, 0), (0, 1), (0, 0), (0, 0)))
    assert got["conv1.weight"][1].tobytes() == expected.tobytes()
    assert np.all(got["conv1.weight"][1][:, 3].view(np.uint32) == 0)
    for name, (dtype, array) in tensors.items():
        if name != "conv1.weight":
            assert got[name][0] == dtype and got[name][1].tobytes() == np.ascontiguousarray(array).tobytes(), name
    # metadata kept, provenance added
    recorded = json.loads(meta.pop("widen"))
    assert meta == META
    assert recorded["tensors"] == [{"name": "conv1.weight", "axis": 1, "map": ["0", "1", "2", "zero"]}]
    # the whole file is what the reference writer would write for these tensors and metadata
    expected_file = tmp_path / "expected.safetensors"
    new = dict(tensors, **{"conv1.weight": ("F32", expected)})
    save(str(expected_file), new, dict(META, widen=json.dumps(recorded, separators=(",", ":"), ensure_ascii=False)))
    assert out.read_bytes() == expected_file.read_bytes()
    proc = run("verify", path, out, check=0)
    assert "verified" in proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["expected.safetensors", "in.safetensors", "out.safetensors"]


def flip(path, name, element_offset):
    _, _, header, start = load(str(path))
    pos = start + header[name]["data_offsets"][0] + element_offset
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name,offset,words", [
    ("conv1.weight", 4 * 49 * 1 + 8, "not a copy of input channel 1"),   # channel 1 of filter 0
    ("conv1.weight", 4 * 49 * 3, "does not hold the fill zero"),        # the new channel
    ("layer1.0.conv1.weight", 1000, "byte 1000 differs"),
    ("head.weight", 2, "differs"),
])
def test_verify_names_the_tensor_whose_byte_flipped(tmp_path, model, name, offset, words):
    path, _ = model
    out = widen_out(tmp_path)
    run("apply", path, "-o", out, "--to", "4", "--manifest", tmp_path / "m.json", check=0)
    flip(out, name, offset)
    proc = run("verify", path, out)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("widen: error: ") and f"'{name}'" in proc.stderr and words in proc.stderr
    assert run("verify", path, out, "--manifest", tmp_path / "m.json").returncode == 1
    doc = json.loads(run("verify", path, out, "--json").stdout)
    assert doc["ok"] is False and doc["differences"] == 1 and name in doc["first_difference"]


def test_verify_catches_a_changed_input_with_the_manifest(tmp_path, model):
    path, _ = model
    out = widen_out(tmp_path)
    run("apply", path, "-o", out, "--to", "4", "--manifest", tmp_path / "m.json", check=0)
    run("verify", path, out, "--manifest", tmp_path / "m.json", check=0)
    other = tmp_path / "other.safetensors"
    out2 = tmp_path / "out2.safetensors"
    save(str(other), backbone(np.random.default_rng(7)), META)
    run("apply", other, "-o", out2, "--to", "4", check=0)
    proc = run("verify", other, out2, "--manifest", tmp_path / "m.json")
    assert proc.returncode == 1 and "manifest" in proc.stderr


def test_manifest_hashes_match_python_xxhash(tmp_path, model):
    path, tensors = model
    out = widen_out(tmp_path)
    run("apply", path, "-o", out, "--to", "5", "--at", "1", "--init", "const:0.25", "--manifest",
        tmp_path / "m.json", check=0)
    manifest = json.loads((tmp_path / "m.json").read_text())
    _, got, _, _ = load(str(out))
    assert manifest["version"] and manifest["transform"]["tensors"][0]["map"] == ["const:0.25", "0", "1", "2",
                                                                                   "const:0.25"]
    entries = {t["name"]: t for t in manifest["tensors"]}
    assert set(entries) == set(tensors)
    for name, (_, array) in tensors.items():
        e = entries[name]
        assert e["input"]["xxh3_128"] == xxhash.xxh3_128_hexdigest(np.ascontiguousarray(array).tobytes())
        assert e["output"]["xxh3_128"] == xxhash.xxh3_128_hexdigest(got[name][1].tobytes())
        assert e["output"]["shape"] == list(got[name][1].shape)
    w = tensors["conv1.weight"][1]
    want = np.concatenate([np.full((64, 1, 7, 7), 0.25, np.float32), w, np.full((64, 1, 7, 7), 0.25, np.float32)], 1)
    assert got["conv1.weight"][1].tobytes() == want.tobytes()
    run("verify", path, out, "--manifest", tmp_path / "m.json", check=0)


def test_hash_matches_xxhsum_and_python(tmp_path, model):
    path, tensors = model
    lines = run("hash", path, check=0).stdout.strip().split("\n")
    xxhsum = subprocess.run(["xxhsum", "-H2", str(path)], capture_output=True, text=True, check=True).stdout
    assert lines[0].split()[0] == xxhsum.split()[0] == xxhash.xxh3_128_hexdigest(path.read_bytes())
    got = dict(reversed(line.split("  ", 1)) for line in lines[1:])
    assert got == {n: xxhash.xxh3_128_hexdigest(np.ascontiguousarray(a).tobytes()) for n, (_, a) in tensors.items()}
    doc = json.loads(run("hash", path, "--json", check=0).stdout)
    assert doc["xxh3_128"] == lines[0].split()[0]
    inspected = json.loads(run("inspect", path, "--json", "--hash", check=0).stdout)
    assert {t["name"]: t["xxh3_128"] for t in inspected["tensors"]} == got


def test_reproducible_across_runs_and_threads(tmp_path):
    rng = np.random.default_rng(5)
    tensors = {
        "stem.weight": ("F32", rng.standard_normal((64, 3, 96, 96)).astype(np.float32)),  # rows across threads
        "long": ("F16", rng.standard_normal((3, 2_500_000)).astype(np.float16)),           # a row > one chunk
        "other": ("F32", rng.standard_normal((1000, 300)).astype(np.float32)),
    }
    path = tmp_path / "big.safetensors"
    save(str(path), tensors)
    outputs = []
    for i, threads in enumerate(["1", "2", "7", "2"]):
        a = tmp_path / f"a{i}.safetensors"
        run("apply", path, "-o", a, "-t", "stem.weight", "--to", "4", "--no-fsync", "--threads", threads, check=0)
        b = tmp_path / f"b{i}.safetensors"
        run("apply", path, "-o", b, "-t", "long", "--axis", "0", "--map", "2,zero,1,const:-1.5,0", "--cast", "bf16",
            "--threads", threads, "--manifest", tmp_path / f"m{i}.json", check=0)
        manifest = json.loads((tmp_path / f"m{i}.json").read_text())
        assert manifest.pop("output") == str(b)
        outputs.append((a.read_bytes(), b.read_bytes(), manifest))
    assert all(o == outputs[0] for o in outputs[1:])
    _, got, _, _ = load(str(tmp_path / "b0.safetensors"))
    long = tensors["long"][1].astype(np.float32)
    want = np.stack([long[2], np.zeros_like(long[0]), long[1], np.full_like(long[0], -1.5), long[0]])
    assert np.array_equal(got["long"][1], to_dtype_bits(want, "BF16"))
    assert np.array_equal(got["other"][1], to_dtype_bits(tensors["other"][1], "BF16"))
    run("verify", path, tmp_path / "b0.safetensors", "--manifest", tmp_path / "m0.json", check=0)
    run("verify", path, tmp_path / "a0.safetensors", check=0)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_maps_axes_and_casts_against_numpy(tmp_path, dtype):
    rng = np.random.default_rng(11)
    f32 = {"hwio": rng.standard_normal((3, 3, 3, 8)).astype(np.float32),
           "lin": rng.standard_normal((6, 3)).astype(np.float32),
           "convT": rng.standard_normal((3, 8, 2, 2)).astype(np.float32)}
    store = {n: (dtype, a if dtype == "F32" else a.astype(np.float16) if dtype == "F16" else f32_to_bf16_bits(a))
             for n, a in f32.items()}
    value = {n: a if dtype == "F32" else a.astype(np.float16).astype(np.float32) if dtype == "F16"
             else (f32_to_bf16_bits(a).astype(np.uint32) << 16).view(np.float32) for n, a in f32.items()}
    path = tmp_path / "in.safetensors"
    save(str(path), store)
    cases = [
        (["-t", "hwio", "--axis", "-2", "--map", "2,1,0"], "hwio", lambda a: a[:, :, [2, 1, 0], :]),
        (["-t", "lin", "--axis", "-1", "--to", "4", "--at", "1"], "lin", lambda a: np.pad(a, ((0, 0), (1, 0)))),
        (["-t", "convT", "--axis", "0", "--map", "0,1"], "convT", lambda a: a[:2]),
        (["-t", "lin", "--map", "1,const:2.5,1"], "lin",
         lambda a: np.stack([a[:, 1], np.full(6, 2.5, np.float32), a[:, 1]], 1)),
    ]
    for i, (args, name, fn) in enumerate(cases):
        for cast in (None, "f32", "f16", "bf16"):
            out = tmp_path / f"o{i}{cast}.safetensors"
            run("apply", path, "-o", out, *args, *(["--cast", cast] if cast else []), check=0)
            _, got, _, _ = load(str(out))
            target = (cast or dtype).upper()
            want = to_dtype_bits(fn(value[name]), target)
            assert got[name][0] == target
            assert got[name][1].tobytes() == want.tobytes(), (args, cast)
            run("verify", path, out, check=0)


def test_auto_detection(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    path = tmp_path / "two.safetensors"
    save(str(path), {"model.conv1.weight": ("F32", w), "optimizer.momentum": ("F32", w.copy()),
                     "int3": ("I32", np.zeros((2, 3, 2), np.int32))})
    proc = run("apply", path, "-o", tmp_path / "o.safetensors", "--to", "4")
    assert proc.returncode == 2
    assert "model.conv1.weight" in proc.stderr and "optimizer.momentum" in proc.stderr
    proc = run("apply", path, "-o", tmp_path / "o.safetensors", "--to", "9", "--from", "5")
    assert proc.returncode == 2 and "no floating-point tensor" in proc.stderr
    run("apply", path, "-o", tmp_path / "o.safetensors", "-t", "model.conv1.weight", "-t", "optimizer.momentum",
        "--to", "4", check=0)
    _, got, _, _ = load(str(tmp_path / "o.safetensors"))
    assert got["model.conv1.weight"][1].shape == got["optimizer.momentum"][1].shape == (8, 4, 3, 3)
    assert got["int3"][1].shape == (2, 3, 2)
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))


def test_usage_errors_exit_2_and_leave_nothing(tmp_path, model):
    path, _ = model
    out = tmp_path / "o.safetensors"
    cases = [
        ["--to", "2"],                                   # narrower than the tensor
        ["--to", "4", "--at", "2"],                      # old channels past the end
        ["--map", "0,1,3"],                              # K out of range
        ["--map", "0,one,2"],                            # unreadable entry
        ["--map", "0,1,2,const:x"],
        ["-t", "nope", "--to", "4"],                     # unknown tensor
        ["-t", "bn1.num_batches_tracked", "--axis", "0", "--to", "2"],  # rank 0 has no axis 0
        ["-t", "mask", "--axis", "0", "--to", "4", "--init", "const:1"],  # const on BOOL
        ["--to", "4", "--init", "median"],               # no such mode
        ["--to", "5", "--map", "0,1,2,zero"],            # a map of the wrong length
        ["--cast", "f64"],
        [],                                              # nothing to do
        ["--to", "4", "--format", "npy"],
        ["--to", "4", "--axis", "x"],
    ]
    for args in cases:
        proc = run("apply", path, "-o", out, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().split("\n")
        assert len(lines) == 1 and lines[0].startswith("widen: error: "), (args, proc.stderr)
        assert sorted(os.listdir(tmp_path)) == ["in.safetensors"], args


def test_output_rules(tmp_path, model):
    path, _ = model
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"keep me")
    proc = run("apply", path, "-o", out, "--to", "4")
    assert proc.returncode == 2 and "--force" in proc.stderr and out.read_bytes() == b"keep me"
    run("apply", path, "-o", out, "--to", "4", "--force", check=0)
    assert out.read_bytes() != b"keep me"
    before = path.read_bytes()
    link = tmp_path / "link.safetensors"
    os.symlink(path, link)
    hard = tmp_path / "hard.safetensors"
    os.link(path, hard)
    for target in (path, link, hard):
        proc = run("apply", path, "-o", target, "--to", "4", "--force")
        assert proc.returncode == 2 and "input" in proc.stderr
    assert path.read_bytes() == before
    proc = run("apply", tmp_path / "missing.safetensors", "-o", tmp_path / "x.safetensors", "--to", "4")
    assert proc.returncode == 4 and "missing.safetensors" in proc.stderr
    proc = run("apply", path, "-o", tmp_path / "no" / "dir" / "x.safetensors", "--to", "4")
    assert proc.returncode == 4
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))


def test_isa_selection(tmp_path, model):
    path, _ = model
    assert "isa: " in run("--version", check=0).stdout
    proc = run("--version", env={"WIDEN_ISA": "scalar"}, check=0)
    assert "isa: scalar" in proc.stdout
    for bad in ("sse9", unusable_isa()):  # the driven CLI's machine, which may be another's (qemu)
        proc = run("apply", path, "-o", tmp_path / "o.safetensors", "--to", "4", env={"WIDEN_ISA": bad})
        assert proc.returncode == 2 and "WIDEN_ISA" in proc.stderr
    outs = []
    for isa in ("scalar", ""):
        o = tmp_path / f"o{isa}.safetensors"
        run("apply", path, "-o", o, "--to", "4", "--cast", "f16", env={"WIDEN_ISA": isa}, check=0)
        outs.append(o.read_bytes())
    assert outs[0] == outs[1]


def test_help_and_version():
    assert "usage: widen" in run("--help", check=0).stdout
    for cmd in ("inspect", "apply", "verify", "hash"):
        assert f"usage: widen {cmd}" in run(cmd, "--help", check=0).stdout
    assert run("frobnicate").returncode == 2
    assert run().returncode == 2
