"""PyTorch zip checkpoints: real torchvision models judged by PyTorch itself (the classic recipe's
"Err: 0"), training checkpoints, tied weights, and malicious or broken files."""
import collections
import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
import torchvision

from reference import SCALE, load, run

# model -> dotted path of its first convolution
MODELS = {
    "resnet18": "conv1", "mobilenet_v3_small": "features.0.0", "efficientnet_b0": "features.0.0",
    "regnet_y_400mf": "stem.0", "convnext_tiny": "features.0.0", "swin_t": "features.0.0", "vit_b_16": "conv_proj",
}
if os.environ.get("WIDEN_SANITIZE"):  # the sanitizer pass checks widen, not PyTorch: two models suffice
    MODELS = {k: MODELS[k] for k in ("resnet18", "mobilenet_v3_small")}
elif SCALE < 1:  # an emulated CLI (qemu): the models under 50 MB; the three larger ones (110 to 330 MB) take
    # the same path through widen (a zip checkpoint of F32 and I64 tensors, one conv widened)
    MODELS = {k: v for k, v in MODELS.items() if k not in ("convnext_tiny", "swin_t", "vit_b_16")}


def widen_first_conv(model, path):
    """The classic recipe's model surgery: the first conv rebuilt with 4 input channels."""
    *parents, last = path.split(".")
    parent = model
    for p in parents:
        parent = parent[int(p)] if p.isdigit() else getattr(parent, p)
    old = parent[int(last)] if last.isdigit() else getattr(parent, last)
    new = torch.nn.Conv2d(4, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation, old.groups,
                          bias=old.bias is not None)
    if last.isdigit():
        parent[int(last)] = new
    else:
        setattr(parent, last, new)
    return model


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for name in MODELS:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        path = folder / f"{name}.pt"
        torch.save(model.state_dict(), path)
        out[name] = (model, path)
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_model_widened_err_0(saved_models, tmp_path, name):
    model, path = saved_models[name]
    reference = torch.load(path, weights_only=True)
    doc = json.loads(run("inspect", path, "--json", check=0).stdout)
    assert [(t["name"], t["dtype"], t["shape"]) for t in doc["tensors"]] == [
        (k, {torch.float32: "F32", torch.int64: "I64"}[v.dtype], list(v.shape)) for k, v in reference.items()]
    torch.manual_seed(1)
    rgb = torch.randn(1, 3, 224, 224)
    rgba = torch.cat([rgb, torch.randn(1, 1, 224, 224)], 1)
    with torch.no_grad():
        expected = model(rgb)
    conv = MODELS[name] + ".weight"
    for suffix in ("pt", "safetensors"):
        out = tmp_path / f"{name}4.{suffix}"
        manifest = tmp_path / f"{name}4.{suffix}.json"
        run("apply", path, "-o", out, "--to", "4", "--manifest", manifest, check=0)
        if suffix == "pt":
            state = torch.load(out, weights_only=True)
        else:
            _, tensors, _, _ = load(str(out))
            state = {k: torch.from_numpy(np.array(a)) for k, (_, a) in tensors.items()}
            state = {k: state[k] for k in reference}  # the model's own order
        assert state[conv].shape[1] == 4 and torch.equal(state[conv][:, :3], reference[conv])
        assert torch.all(state[conv][:, 3] == 0)
        for k, v in reference.items():
            if k != conv:
                assert torch.equal(state[k], v), k
        torch.manual_seed(0)
        widened = widen_first_conv(getattr(torchvision.models, name)(), MODELS[name]).eval()
        widened.load_state_dict(state)
        with torch.no_grad():
            assert (widened(rgba) - expected).abs().max().item() == 0.0
        run("verify", path, out, "--manifest", manifest, check=0)


def training_checkpoint(path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    ckpt = {"model": model.state_dict(), "epoch": 3, "step": 123456789012, "lr": 0.05, "milestones": [10, 20],
            "name": "run-α", "flags": (True, None), "optimizer": opt.state_dict()}
    torch.save(ckpt, path)
    return ckpt


def assert_same(a, b, skip=()):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert type(a) == type(b) and list(a) == list(b)
        for k in a:
            if k not in skip:
                assert_same(a[k], b[k], skip)
    elif isinstance(a, (list, tuple)):
        assert type(a) == type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y, skip)
    else:
        assert a == b and type(a) == type(b)


def test_training_checkpoint_round_trip(tmp_path):
    path = tmp_path / "train.pt"
    ckpt = training_checkpoint(path)
    proc = run("apply", path, "-o", tmp_path / "o.pt", "--to", "4")
    assert proc.returncode == 2
    assert "model.0.weight" in proc.stderr and "optimizer.state.0.momentum_buffer" in proc.stderr
    run("apply", path, "-o", tmp_path / "o.pt", "-t", "model.0.weight", "-t", "optimizer.state.0.momentum_buffer",
        "--to", "4", check=0)
    out = torch.load(tmp_path / "o.pt", weights_only=False)  # torch 1.13's weights-only loader lacks BINFLOAT
    w, m = out["model"]["0.weight"], out["optimizer"]["state"][0]["momentum_buffer"]
    assert w.shape == m.shape == (8, 4, 3, 3)
    assert torch.equal(w[:, :3], ckpt["model"]["0.weight"]) and torch.all(w[:, 3] == 0)
    assert torch.equal(m[:, :3], ckpt["optimizer"]["state"][0]["momentum_buffer"])
    out["model"]["0.weight"] = ckpt["model"]["0.weight"]
    out["optimizer"]["state"][0]["momentum_buffer"] = ckpt["optimizer"]["state"][0]["momentum_buffer"]
    assert_same(ckpt, out)
    assert out["model"]._metadata == ckpt["model"]._metadata
    # a cast that changes nothing keeps every value too
    run("apply", path, "-o", tmp_path / "same.pt", "--cast", "f32", check=0)
    assert_same(ckpt, torch.load(tmp_path / "same.pt", weights_only=False))
    run("apply", path, "-o", tmp_path / "half.pt", "--cast", "f16", check=0)
    half = torch.load(tmp_path / "half.pt", weights_only=False)
    assert half["model"]["0.weight"].dtype == torch.float16 and half["model"]["1.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(half["model"]["0.weight"], ckpt["model"]["0.weight"].half())
    # to safetensors: the non-tensor values are named as dropped
    proc = run("apply", path, "-o", tmp_path / "t.safetensors")
    assert proc.returncode == 0 and "warning" in proc.stderr and "epoch" in proc.stderr and "lr" in proc.stderr


def test_tied_weights_stay_tied(tmp_path):
    torch.manual_seed(0)
    shared = torch.randn(10, 3, 3, 3)
    path = tmp_path / "tied.pt"
    torch.save({"encoder.conv.weight": shared, "decoder.conv.weight": shared, "head.weight": torch.randn(4, 3, 2, 2)},
               path)
    assert "shared by encoder.conv.weight decoder.conv.weight" in run("inspect", path, check=0).stdout
    run("apply", path, "-o", tmp_path / "o.pt", "-t", "head.weight", "--to", "5", check=0)
    out = torch.load(tmp_path / "o.pt", weights_only=True)
    assert out["encoder.conv.weight"].data_ptr() == out["decoder.conv.weight"].data_ptr()
    assert torch.equal(out["encoder.conv.weight"], shared)
    # widening one of the two gives it its own storage; the other keeps the old one
    run("apply", path, "-o", tmp_path / "o2.pt", "-t", "encoder.conv.weight", "--to", "4", check=0)
    out = torch.load(tmp_path / "o2.pt", weights_only=True)
    assert out["encoder.conv.weight"].shape == (10, 4, 3, 3) and torch.equal(out["decoder.conv.weight"], shared)
    proc = run("apply", path, "-o", tmp_path / "o.safetensors", "-t", "head.weight", "--to", "5")
    assert proc.returncode == 0 and "share" in proc.stderr


@pytest.mark.parametrize("cast", [None, "bf16"])
def test_pt_manifest_hashes_views_and_whole_storages(tmp_path, cast):
    """A .pt manifest takes whole-storage tensors' hashes from the copy pass and hashes views (part of a
    storage, an offset, a transpose) separately; every hash must equal xxhash of the tensor's bytes."""
    import xxhash
    torch.manual_seed(0)
    base = torch.randn(6, 40)
    sd = {"conv.weight": torch.randn(8, 3, 3, 3), "tied.a": base, "tied.b": base, "slice.first": base[:2],
          "slice.offset": base[3:5], "transposed": torch.randn(5, 7).t(), "bias": torch.randn(8).to(torch.float16)}
    path = tmp_path / "views.pt"
    torch.save(sd, path)
    out, manifest = tmp_path / "o.pt", tmp_path / "o.json"
    args = ["apply", path, "-o", out, "-t", "conv.weight", "--to", "4", "--manifest", manifest]
    run(*(args + (["--cast", cast] if cast else [])), check=0)
    got = torch.load(out, weights_only=True)
    entries = {t["name"]: t for t in json.loads(manifest.read_text())["tensors"]}
    assert set(entries) == set(sd)

    def digest(t):
        return xxhash.xxh3_128_hexdigest(t.contiguous().view(torch.uint8).numpy().tobytes())

    for name, t in sd.items():
        assert entries[name]["input"]["xxh3_128"] == digest(t), name
        assert entries[name]["output"]["xxh3_128"] == digest(got[name]), name
    want = torch.cat([sd["conv.weight"], torch.zeros(8, 1, 3, 3)], 1)
    assert torch.equal(got["conv.weight"], want.to(torch.bfloat16) if cast else want)
    run("verify", path, out, "--manifest", manifest, check=0)
    if cast:
        return
    # `hash` agrees on the strided tensor, and verify compares its elements, not an empty run
    hashes = dict(line.split()[::-1] for line in run("hash", path, check=0).stdout.splitlines()[1:])
    assert hashes["transposed"] == digest(sd["transposed"])
    info = {t["name"]: t for t in json.loads(run("inspect", out, "--json", check=0).stdout)["tensors"]}
    assert info["transposed"]["strided"] and info["transposed"]["bytes"] == 35 * 4
    data = bytearray(out.read_bytes())
    data[info["transposed"]["offset"] + 9] ^= 0x40
    out.write_bytes(bytes(data))
    proc = run("verify", path, out, "--manifest", manifest)
    assert proc.returncode == 1 and "'transposed'" in proc.stdout + proc.stderr


def test_pt_output_same_bytes_and_valid_crcs_at_any_thread_count(tmp_path):
    """Untouched storages are copied inside the kernel while the hashing thread computes their CRC-32
    (or, with one thread, after the copy): every thread count must give the same file, and Python's
    zipfile must find every record's CRC right."""
    torch.manual_seed(0)
    sd = {"stem.weight": torch.randn(16, 3, 3, 3), "big": torch.randn(3, 700_000), "half": torch.randn(5000).half(),
          "empty": torch.zeros(0, 4), "tail": torch.randn(7)}
    path = tmp_path / "m.pt"
    torch.save(sd, path)
    outputs = []
    for threads in ["1", "2", "5"]:
        out = tmp_path / f"o{threads}.pt"
        run("apply", path, "-o", out, "-t", "stem.weight", "--to", "4", "--threads", threads, "--no-fsync", check=0)
        with zipfile.ZipFile(out) as z:
            assert z.testzip() is None
        outputs.append(out.read_bytes())
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]
    got = torch.load(tmp_path / "o1.pt", weights_only=True)
    for name in ("big", "half", "empty", "tail"):
        assert torch.equal(got[name], sd[name]), name
    assert torch.equal(got["stem.weight"], torch.cat([sd["stem.weight"], torch.zeros(16, 1, 3, 3)], 1))


def test_expanded_tensors_hash_their_elements_and_huge_views_are_refused(tmp_path):
    """Zero strides (expand) are hashed element by element; a view of a few bytes that claims more than
    256 times the file's size is refused with exit 3 instead of hashing for ever."""
    import xxhash
    torch.manual_seed(0)
    small = torch.randn(3).expand(100, 3)
    torch.save({"small": small}, tmp_path / "ok.pt")
    lines = run("hash", tmp_path / "ok.pt", check=0).stdout.splitlines()
    assert lines[1].split()[0] == xxhash.xxh3_128_hexdigest(small.contiguous().numpy().tobytes())
    torch.save({"small": small, "huge": torch.randn(2).expand(1_000_000, 100_000, 2)}, tmp_path / "huge.pt")
    proc = run("hash", tmp_path / "huge.pt")
    assert proc.returncode == 3 and "'huge'" in proc.stderr and "256 times" in proc.stderr
    assert run("inspect", tmp_path / "huge.pt").returncode == 0


def test_strided_tensors_are_written_to_safetensors_in_row_major_order(tmp_path):
    """A transposed, a permuted, an expanded and a stepped view go to safetensors as their elements in
    row-major order (what .contiguous() holds), next to a widened conv; verify checks them byte for byte
    and finds a flipped byte; the file converts back to .pt with the same values."""
    torch.manual_seed(0)
    base = torch.randn(6, 40)
    sd = {"conv.weight": torch.randn(8, 3, 3, 3), "transposed": torch.randn(70, 50).t(),
          "permuted": torch.randn(2, 3, 4, 5).permute(2, 0, 3, 1), "expanded": torch.randn(3).expand(5, 3),
          "stepped": base[1:, ::3], "half": torch.randn(9, 4).half().t(), "plain": base}
    path = tmp_path / "strided.pt"
    torch.save(sd, path)
    out = tmp_path / "o.safetensors"
    run("apply", path, "-o", out, "-t", "conv.weight", "--to", "4", "--manifest", tmp_path / "m.json", check=0)
    _, got, _, _ = load(str(out))
    for name, t in sd.items():
        if name != "conv.weight":
            assert got[name][1].shape == tuple(t.shape), name
            assert got[name][1].tobytes() == t.contiguous().numpy().tobytes(), name
    assert got["conv.weight"][1].tobytes() == torch.cat([sd["conv.weight"], torch.zeros(8, 1, 3, 3)], 1).numpy().tobytes()
    run("verify", path, out, "--manifest", tmp_path / "m.json", check=0)
    back = tmp_path / "back.pt"
    run("apply", out, "-o", back, check=0)
    loaded = torch.load(back, weights_only=True)
    assert all(torch.equal(loaded[n], sd[n]) for n in sd if n != "conv.weight")
    info = {t["name"]: t for t in json.loads(run("inspect", out, "--json", check=0).stdout)["tensors"]}
    data = bytearray(out.read_bytes())
    data[info["transposed"]["offset"] + 4 * 51] ^= 0x01  # element [1, 1]
    out.write_bytes(bytes(data))
    proc = run("verify", path, out)
    assert proc.returncode == 1 and "transposed" in proc.stdout + proc.stderr
    # --cast gathers then casts (safetensors) or casts the storages under the views (.pt)
    run("apply", path, "-o", tmp_path / "c.safetensors", "--cast", "bf16", check=0)
    _, cast, _, _ = load(str(tmp_path / "c.safetensors"))
    run("apply", path, "-o", tmp_path / "c.pt", "--cast", "bf16", "--manifest", tmp_path / "c.json", check=0)
    cast_pt = torch.load(tmp_path / "c.pt", weights_only=True)
    for name, t in sd.items():
        want = t.contiguous().to(torch.bfloat16)
        assert cast[name][0] == "BF16" and cast[name][1].tobytes() == want.view(torch.int16).numpy().tobytes(), name
        assert torch.equal(cast_pt[name], want), name
    run("verify", path, tmp_path / "c.safetensors", check=0)
    run("verify", path, tmp_path / "c.pt", "--manifest", tmp_path / "c.json", check=0)
    # channel remaps gather the strided input a step of rows at a time (.pt gives the result a storage)
    for ext in ("safetensors", "pt"):
        r = tmp_path / f"r.{ext}"
        run("apply", path, "-o", r, "-t", "transposed", "--from", "70", "--to", "72", "--at", "1", "--init",
            "const:0.25", "--manifest", tmp_path / f"r{ext}.json", check=0)
        got_t = load(str(r))[1]["transposed"][1] if ext == "safetensors" else \
            torch.load(r, weights_only=True)["transposed"].numpy()
        q = np.full((50, 1), 0.25, np.float32)
        want = np.concatenate([q, sd["transposed"].contiguous().numpy(), q], 1)
        assert got_t.shape == (50, 72) and got_t.tobytes() == want.tobytes(), ext
        run("verify", path, r, "--manifest", tmp_path / f"r{ext}.json", check=0)
    run("apply", path, "-o", tmp_path / "p.safetensors", "-t", "permuted", "--from", "2", "--to", "3",
        "--map", "1,0*2,zero", check=0)
    p = sd["permuted"].contiguous().numpy()  # [4, 2, 5, 3]
    want = np.stack([p[:, 1], p[:, 0] * 2, np.zeros_like(p[:, 0])], 1)
    assert load(str(tmp_path / "p.safetensors"))[1]["permuted"][1].tobytes() == want.tobytes()
    # a strided tensor whose rows are over one 4 MiB step is refused
    torch.save({"wide": torch.randn(400_000, 3, 2).permute(2, 1, 0)}, tmp_path / "wide.pt")
    proc = run("apply", tmp_path / "wide.pt", "-o", tmp_path / "w.safetensors", "--to", "4")
    assert proc.returncode == 3 and "strided" in proc.stderr and not (tmp_path / "w.safetensors").exists()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_output_on_another_filesystem_is_the_same_file(tmp_path):
    """copy_file_range refuses to cross filesystems (EXDEV) on this kernel: the bytes then go through
    the process, for .pt and .safetensors alike, and the files and manifests are the same."""
    import tempfile
    torch.manual_seed(0)
    sd = {"stem.weight": torch.randn(16, 3, 3, 3), "big": torch.randn(3, 300_000), "tail": torch.randn(7).half()}
    path = tmp_path / "m.pt"
    torch.save(sd, path)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        if os.stat(other).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same filesystem here")
        for ext in ("pt", "safetensors"):
            outs = []
            for folder in (tmp_path, other):
                out, manifest = os.path.join(folder, f"o.{ext}"), os.path.join(folder, f"o.{ext}.json")
                run("apply", path, "-o", out, "--to", "4", "--manifest", manifest, "--no-fsync", check=0)
                m = json.loads(open(manifest).read())
                m.pop("output")
                outs.append((open(out, "rb").read(), m))
            assert outs[0] == outs[1], ext
            run("verify", path, os.path.join(other, f"o.{ext}"), "--manifest", os.path.join(other, f"o.{ext}.json"),
                check=0)


class _Storage:
    def __init__(self, key, kind, numel):
        self.key, self.kind, self.numel = key, kind, numel


class _View:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, {})."""
    def __init__(self, storage, size, stride):
        self.args = (storage, 0, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


def crafted_pt(path, views, storage_numel=4):
    """A .pt whose tensors have hand-picked sizes and strides over one float storage of 4 elements
    (torch.save would never write these)."""
    storage = _Storage("0", torch.FloatStorage, storage_numel)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel) if isinstance(obj, _Storage) else None

    data = io.BytesIO()
    Pickler(data, protocol=2).dump({name: _View(storage, size, stride) for name, (size, stride) in views.items()})
    zip_with_pickle(path, data.getvalue(), {"archive/byteorder": "little",
                                            "archive/data/0": struct.pack("<4f", 1, 2, 3, 4)})
    return path


def test_crafted_strides_exit_3_without_reading_outside(tmp_path):
    """Strides whose reach wraps around 2^64, element bytes that overflow, and a zero-stride view over
    the 256x bound next to an ordinary tensor: each a clean exit 3 for every command, never a crash."""
    wrap = crafted_pt(tmp_path / "wrap.pt", {"w": ((3, 3), (3 * 2 ** 61, 2 ** 61))})
    bytes_overflow = crafted_pt(tmp_path / "bytes.pt", {"w": ((2 ** 62,), (0,))})
    for path in (wrap, bytes_overflow):
        for args in (("inspect", path), ("hash", path), ("apply", path, "-o", tmp_path / "o.safetensors", "--cast",
                                                          "f16")):
            proc = run(*args)
            assert proc.returncode == 3 and "'w'" in proc.stderr, (path, args, proc.stderr)
    huge = crafted_pt(tmp_path / "huge.pt", {"w": ((2 ** 40,), (0,)), "v": ((2, 2), (2, 1))})
    proc = run("hash", huge)
    assert proc.returncode == 3 and "256 times" in proc.stderr
    proc = run("apply", huge, "-o", tmp_path / "h.safetensors", "--cast", "f16")
    assert proc.returncode == 3 and not (tmp_path / "h.safetensors").exists()
    assert run("inspect", huge).returncode == 0


def test_zero_size_tensors_remap_and_verify_compares_strided_outputs(tmp_path):
    """Empty tensors are contiguous whatever their strides (nothing to gather); and verify compares an
    output tensor stored strided even when the input's is contiguous."""
    torch.save({"w": torch.zeros(3, 0), "v": torch.zeros(3, 4, 0)}, tmp_path / "z.pt")
    assert "strided" not in run("inspect", tmp_path / "z.pt", "--json", check=0).stdout
    run("apply", tmp_path / "z.pt", "-o", tmp_path / "z.safetensors", "-t", "v", "--map", "0,zero,1", check=0)
    assert load(str(tmp_path / "z.safetensors"))[1]["v"][1].shape == (3, 3, 0)
    run("apply", tmp_path / "z.pt", "-o", tmp_path / "z2.pt", "-t", "w", "--axis", "0", "--map", "2,1,0", check=0)
    assert torch.load(tmp_path / "z2.pt", weights_only=True)["w"].shape == (3, 0)
    torch.manual_seed(0)
    torch.save({"w": torch.randn(3, 4)}, tmp_path / "in.pt")
    run("apply", tmp_path / "in.pt", "-o", tmp_path / "x.pt", "--cast", "bf16", "--manifest", tmp_path / "m.json",
        check=0)
    torch.save({"w": torch.randn(4, 3).t().bfloat16()}, tmp_path / "other.pt")  # same shape, strided, other values
    proc = run("verify", tmp_path / "in.pt", tmp_path / "other.pt", "--manifest", tmp_path / "m.json")
    assert proc.returncode == 1 and "at 'w'" in proc.stdout + proc.stderr


def zip_with_pickle(path, data, extra=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        for name, blob in (extra or {}).items():
            z.writestr(name, blob)
        z.writestr("archive/version", "3\n")
    return path


MARKER = "/tmp/widen-test-pwned"
MALICIOUS = {
    "os_system": (b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(f"touch {MARKER}")) + f"touch {MARKER}".encode()
                  + b"\x85R.", "os.system"),
    "reduce_on_string": (b"\x80\x02X\x01\x00\x00\x00a)R.", "REDUCE"),
    "unknown_opcode": (b"\x80\x02(I1\n.", "opcode"),
    "memo_out_of_range": (b"\x80\x02h\x05.", "memo"),
    "nesting": (b"\x80\x02" + b"]" * 10000 + b"a" * 9999 + b".", "deeper"),
    "numpy_global": (b"\x80\x02cnumpy.core.multiarray\nscalar\n.", "numpy.core.multiarray.scalar"),
    "persid_not_storage": (b"\x80\x02X\x03\x00\x00\x00abc\x85Q.", "persistent id"),
    "no_stop": (b"\x80\x02}", "STOP"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_pickles_exit_3_and_run_nothing(tmp_path, case):
    data, words = MALICIOUS[case]
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    path = zip_with_pickle(tmp_path / f"{case}.pt", data)
    for args in (["inspect", path], ["apply", path, "-o", tmp_path / "o.pt", "--to", "4"]):
        proc = run(*args)
        assert proc.returncode == 3, (case, proc.stderr)
        assert proc.stderr.startswith("widen: error: ") and words in proc.stderr, proc.stderr
    assert not os.path.exists(MARKER)
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_broken_archives(tmp_path):
    torch.save({"a": torch.zeros(4, 3, 2, 2), "b": torch.ones(8)}, tmp_path / "ok.pt")
    good = (tmp_path / "ok.pt").read_bytes()
    z = zipfile.ZipFile(io.BytesIO(good))
    infos = z.infolist()
    cd = good.rindex(b"PK\x01\x02" + good[good.index(b"PK\x01\x02") + 4:good.index(b"PK\x01\x02") + 6])
    cases = {}
    # an entry whose size runs past the end of the file
    data = bytearray(good)
    first = good.index(b"PK\x01\x02")
    data[first + 20:first + 28] = struct.pack("<II", 0x7FFFFFF0, 0x7FFFFFF0)
    cases["past_end"] = (bytes(data), "past the end")
    # two entries whose data overlap: the second central entry points at the first local header
    data = bytearray(good)
    second = good.index(b"PK\x01\x02", first + 4)
    data[second + 42:second + 46] = good[first + 42:first + 46]
    cases["overlap"] = (bytes(data), "overlap")
    legacy = io.BytesIO()  # a legacy file cut short in its storages
    torch.save({"a": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    cases["legacy"] = (legacy.getvalue()[:-3], "truncated")
    cases["truncated"] = (good[: len(good) // 2], "zip")
    assert infos and cd
    for case, (blob, words) in cases.items():
        path = tmp_path / f"{case}.pt"
        path.write_bytes(blob)
        proc = run("apply", path, "-o", tmp_path / "o.pt", "--to", "4")
        assert proc.returncode == 3 and words in proc.stderr, (case, proc.stderr)
        assert not (tmp_path / "o.pt").exists()


def test_safetensors_to_pt_and_back(tmp_path):
    from reference import f32_to_bf16_bits, save
    rng = np.random.default_rng(3)
    tensors = {"conv.weight": ("F32", rng.standard_normal((6, 3, 3, 3)).astype(np.float32)),
               "half": ("F16", rng.standard_normal((2, 3)).astype(np.float16)),
               "brain": ("BF16", f32_to_bf16_bits(rng.standard_normal(5).astype(np.float32))),
               "count": ("I64", np.int64(7).reshape(())), "mask": ("BOOL", rng.random(4) > 0.5)}
    src = tmp_path / "m.safetensors"
    save(str(src), tensors, {"format": "pt", "origin": "a test"})
    proc = run("apply", src, "-o", tmp_path / "m.pt")  # a conversion: no transform
    # {"format": "pt"} goes without saying in a .pt file; only the other key is named as dropped
    assert proc.returncode == 0 and "dropping 1 key" in proc.stderr
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert type(state).__name__ == "OrderedDict" and set(state) == set(tensors)
    for name, (dtype, array) in tensors.items():
        got = state[name]
        if dtype == "BF16":
            assert got.dtype == torch.bfloat16 and np.array_equal(got.view(torch.int16).numpy().view(np.uint16), array)
        else:
            assert np.array_equal(got.numpy(), array), name
    run("apply", src, "-o", tmp_path / "w.pt", "--to", "4", "--manifest", tmp_path / "w.json", check=0)
    widened = torch.load(tmp_path / "w.pt", weights_only=True)["conv.weight"]
    assert widened.shape == (6, 4, 3, 3) and np.array_equal(widened[:, :3].numpy(), tensors["conv.weight"][1])
    run("verify", src, tmp_path / "w.pt", "--manifest", tmp_path / "w.json", check=0)
    # and back: the same bytes as the original tensors
    run("apply", tmp_path / "m.pt", "-o", tmp_path / "back.safetensors", check=0)
    _, back, _, _ = load(str(tmp_path / "back.safetensors"))
    assert {k: (d, a.tobytes()) for k, (d, a) in back.items()} == {
        k: (d, np.ascontiguousarray(a).tobytes()) for k, (d, a) in tensors.items()}


def test_rebuild_tensor_v3_and_parameters_are_read(tmp_path):
    """Newer torch writes float8 and other new dtypes as _rebuild_tensor_v3 over an UntypedStorage
    (numel in bytes), and Parameters through _rebuild_parameter; torch 1.13 writes neither, so the
    pickle is spelled out here."""
    def s(text):
        return b"X" + struct.pack("<I", len(text)) + text.encode()
    hooks = b"ccollections\nOrderedDict\n)R"
    v3 = (b"ctorch._utils\n_rebuild_tensor_v3\n((" + s("storage") + b"ctorch.storage\nUntypedStorage\n" + s("0") + s("cpu")
          + b"K\x04tQK\x00K\x02K\x02\x86K\x02K\x01\x86\x89" + hooks + b"ctorch\nfloat8_e4m3fn\ntR")
    v2 = (b"ctorch._utils\n_rebuild_tensor_v2\n((" + s("storage") + b"ctorch\nFloatStorage\n" + s("1") + s("cpu")
          + b"K\x03tQK\x00K\x03\x85K\x01\x85\x89" + hooks + b"tR")
    param = b"ctorch._utils\n_rebuild_parameter\n(" + v2 + b"\x88" + hooks + b"tR"
    pickle = b"\x80\x02}(" + s("f8") + v3 + s("p") + param + b"u."
    path = zip_with_pickle(tmp_path / "v3.pt", pickle, {"archive/data/0": bytes([1, 2, 3, 4]),
                                                         "archive/data/1": np.float32([1, 2, 3]).tobytes()})
    doc = json.loads(run("inspect", path, "--json", check=0).stdout)
    assert [(t["name"], t["dtype"], t["shape"]) for t in doc["tensors"]] == [("f8", "F8_E4M3", [2, 2]), ("p", "F32", [3])]
    run("apply", path, "-o", tmp_path / "o.safetensors", check=0)
    _, got, _, _ = load(str(tmp_path / "o.safetensors"))
    assert got["f8"][1].tobytes() == bytes([1, 2, 3, 4]) and got["p"][1].tolist() == [1.0, 2.0, 3.0]
