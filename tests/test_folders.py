"""Model folders: sharded transformers models (safetensors and .bin), a diffusers pipeline and a timm
Hub folder, built as those libraries write them (tests/folders.py). Every output is loaded back with
the installed torch and NumPy and checked against an independent computation: the widened layer
gives Err = 0 on a convolution, the configs hold the new values and nothing else changed, untouched
files are byte-identical."""
import filecmp
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

import folders
import reference
from reference import run

torch = pytest.importorskip("torch")


def tree(root):
    out = []
    for d, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files]
    return sorted(out)


def load_any(path):
    """{name: numpy array} of a shard, read by the reference reader or by torch."""
    if path.endswith(".safetensors"):
        return {k: v for k, (_, v) in reference.load(path)[1].items()}
    return {k: v.numpy() for k, v in torch.load(path).items()}


def load_model(folder, index_name):
    """The state dict assembled from the index, each shard loaded once."""
    with open(os.path.join(folder, index_name)) as f:
        index = json.load(f)
    shards = {s: load_any(os.path.join(folder, s)) for s in set(index["weight_map"].values())}
    assert sorted(n for s in shards.values() for n in s) == sorted(index["weight_map"])
    return {n: shards[s][n] for n, s in index["weight_map"].items()}, index


def conv_err(old_w, new_w, map_sources, seed=0):
    """max |conv(new_w, x_new) - conv(old_w, x_old)| where x_new's channels are x_old's as the map
    places them and the other channels are random (their weights must be zero)."""
    g = np.random.default_rng(seed)
    c_new = new_w.shape[1]
    x_new = g.standard_normal((2, c_new, 9, 9)).astype(np.float32)
    x_old = np.stack([x_new[:, map_sources.index(k)] for k in range(old_w.shape[1])], axis=1)
    a = torch.nn.functional.conv2d(torch.from_numpy(x_new), torch.from_numpy(np.array(new_w)))
    b = torch.nn.functional.conv2d(torch.from_numpy(x_old), torch.from_numpy(np.array(old_w)))
    return float((a - b).abs().max())


# ------------------------------------------------------------------------------------------------
# transformers: a sharded ViT


def test_sharded_vit_widened_across_shards(tmp_path):
    src, out = tmp_path / "vit", tmp_path / "vit4"
    t = folders.sharded_vit(str(src))
    r = run("apply", src, "-o", out, "--to", "4", "--manifest", tmp_path / "m.json", check=0)
    assert tree(out) == tree(src)
    # the shards without the patch embedding are copied byte for byte
    assert filecmp.cmp(src / "model-00001-of-00003.safetensors", out / "model-00001-of-00003.safetensors", False)
    assert filecmp.cmp(src / "model-00003-of-00003.safetensors", out / "model-00003-of-00003.safetensors", False)
    for f in ("README.md", ".gitattributes"):
        assert filecmp.cmp(src / f, out / f, False)
    model, index = load_model(str(out), "model.safetensors.index.json")
    w = model[folders.PATCH]
    assert w.shape == (32, 4, 4, 4)
    assert np.array_equal(w[:, :3], t[folders.PATCH]) and not w[:, 3].any()
    assert conv_err(t[folders.PATCH], w, [0, 1, 2, None]) == 0.0
    for n in t:
        if n != folders.PATCH:
            assert np.array_equal(model[n], t[n]), n
    # transformers' convention: total_size is the tensors' bytes
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in model.values())
    assert index["weight_map"] == json.load(open(src / "model.safetensors.index.json"))["weight_map"]
    # configs: the channel count and the normalisation follow; every other byte as it was
    cfg_in, cfg_out = (src / "config.json").read_text(), (out / "config.json").read_text()
    assert cfg_out == cfg_in.replace('"num_channels": 3', '"num_channels": 4')
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert pre["image_mean"] == [0.5] * 4 and pre["image_std"] == [0.5] * 4
    assert {k: v for k, v in pre.items() if not k.startswith("image_")} == \
        {k: v for k, v in folders.VIT_PREPROCESSOR.items() if not k.startswith("image_")}
    assert run("verify", src, out).returncode == 0
    assert run("verify", src, out, "--manifest", tmp_path / "m.json").returncode == 0
    manifest = json.load(open(tmp_path / "m.json"))
    assert {x["file"] for x in manifest["tensors"]} == {"model-00002-of-00003.safetensors"}
    assert {x["path"]: x["op"] for x in manifest["files"]}["model-00001-of-00003.safetensors"] == "copy"


def test_index_as_input_and_reordered_normalisation(tmp_path):
    src, out = tmp_path / "vit", tmp_path / "bgr"
    t = folders.sharded_vit(str(src))
    pre = dict(folders.VIT_PREPROCESSOR, image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    folders.dump_hf(src / "preprocessor_config.json", pre)
    run("apply", src / "model.safetensors.index.json", "-o", out, "-t", folders.PATCH, "--map", "2,1,0", check=0)
    got = json.loads((out / "preprocessor_config.json").read_text())
    assert got["image_mean"] == [0.3, 0.2, 0.1] and got["image_std"] == [0.6, 0.5, 0.4]
    assert json.loads((out / "config.json").read_text())["num_channels"] == 3
    model, _ = load_model(str(out), "model.safetensors.index.json")
    assert np.array_equal(model[folders.PATCH], t[folders.PATCH][:, ::-1])
    assert run("verify", src, out).returncode == 0


def test_norm_fill_default_is_the_mean_of_the_old_channels(tmp_path):
    src, out, out2 = tmp_path / "vit", tmp_path / "a", tmp_path / "b"
    folders.sharded_vit(str(src))
    pre = dict(folders.VIT_PREPROCESSOR, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    folders.dump_hf(src / "preprocessor_config.json", pre)
    run("apply", src, "-o", out, "--to", "5", "--at", "1", check=0)
    got = json.loads((out / "preprocessor_config.json").read_text())
    mean, std = sum(pre["image_mean"]) / 3, sum(pre["image_std"]) / 3
    assert got["image_mean"] == [mean, 0.485, 0.456, 0.406, mean]
    assert got["image_std"] == [std, 0.229, 0.224, 0.225, std]
    run("apply", src, "-o", out2, "--to", "4", "--norm-fill", "0.5:0.25", check=0)
    got = json.loads((out2 / "preprocessor_config.json").read_text())
    assert got["image_mean"] == [0.485, 0.456, 0.406, 0.5] and got["image_std"] == [0.229, 0.224, 0.225, 0.25]
    assert run("verify", src, out2).returncode == 0
    # --no-config: configs copied as they are
    out3 = tmp_path / "c"
    run("apply", src, "-o", out3, "--to", "4", "--no-config", check=0)
    assert filecmp.cmp(src / "config.json", out3 / "config.json", False)
    assert filecmp.cmp(src / "preprocessor_config.json", out3 / "preprocessor_config.json", False)


def test_total_size_as_file_sizes_keeps_that_convention(tmp_path):
    src, out = tmp_path / "vit", tmp_path / "out"
    folders.sharded_vit(str(src), total="files")
    run("apply", src, "-o", out, "--to", "4", check=0)
    index = json.load(open(out / "model.safetensors.index.json"))
    shards = set(index["weight_map"].values())
    assert index["metadata"]["total_size"] == sum(os.path.getsize(out / s) for s in shards)


# ------------------------------------------------------------------------------------------------
# transformers: sharded .bin, and conversions of whole folders


def test_sharded_bin_widened_and_converted(tmp_path):
    src = tmp_path / "bin"
    t = folders.sharded_vit(str(src), fmt="bin")
    out = tmp_path / "bin4"
    run("apply", src, "-o", out, "--to", "4", "--manifest", tmp_path / "m.json", check=0)
    assert tree(out) == tree(src)
    assert filecmp.cmp(src / "pytorch_model-00003-of-00003.bin", out / "pytorch_model-00003-of-00003.bin", False)
    model, index = load_model(str(out), "pytorch_model.bin.index.json")
    assert conv_err(t[folders.PATCH], model[folders.PATCH], [0, 1, 2, None]) == 0.0
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in model.values())
    # .pt shards record no transform: verify needs the manifest
    assert run("verify", src, out).returncode == 2
    assert run("verify", src, out, "--manifest", tmp_path / "m.json").returncode == 0
    # .bin -> safetensors: shards and index renamed as transformers names them
    st = tmp_path / "st"
    run("apply", src, "-o", st, "--format", "safetensors", check=0)
    assert tree(st) == sorted([".gitattributes", "README.md", "config.json", "preprocessor_config.json", "model.safetensors.index.json"] +
                              [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)])
    model, index = load_model(str(st), "model.safetensors.index.json")
    assert all(np.array_equal(model[n], t[n]) for n in t) and len(model) == len(t)
    assert filecmp.cmp(src / "config.json", st / "config.json", False)
    assert run("verify", src, st).returncode == 0
    # and back: safetensors -> .bin
    back = tmp_path / "back"
    run("apply", st, "-o", back, "--to", "4", "--format", "pt", check=0)
    model, index = load_model(str(back), "pytorch_model.bin.index.json")
    assert conv_err(t[folders.PATCH], model[folders.PATCH], [0, 1, 2, None]) == 0.0
    assert sorted(set(index["weight_map"].values())) == [f"pytorch_model-0000{k}-of-00003.bin" for k in (1, 2, 3)]


# ------------------------------------------------------------------------------------------------
# diffusers and timm


def test_diffusers_unet_4_to_9_for_inpainting(tmp_path):
    src, out = tmp_path / "pipe", tmp_path / "inpaint"
    unet, vae = folders.diffusers_pipeline(str(src))
    r = run("apply", src, "-o", out, "--from", "4", "--map", "0,1,2,3,zero,zero,zero,zero,zero", check=0)
    assert "out_channels" in r.stderr and "block_out_channels" not in r.stderr  # a count of 4 reported, not guessed
    assert tree(out) == tree(src)
    for f in tree(src):
        if f not in ("unet/diffusion_pytorch_model.safetensors", "unet/config.json"):
            assert filecmp.cmp(src / f, out / f, False), f
    w = load_any(str(out / "unet/diffusion_pytorch_model.safetensors"))
    assert w["conv_in.weight"].shape == (32, 9, 3, 3)
    assert conv_err(unet["conv_in.weight"], w["conv_in.weight"], [0, 1, 2, 3, None, None, None, None, None]) == 0.0
    cfg_in, cfg_out = (src / "unet/config.json").read_text(), (out / "unet/config.json").read_text()
    assert cfg_out == cfg_in.replace('"in_channels": 4', '"in_channels": 9')
    assert run("verify", src, out).returncode == 0
    i = run("inspect", src, "--json", check=0)
    doc = json.loads(i.stdout)
    assert "unet/conv_in.weight" in [x["name"] for x in doc["tensors"]]
    assert "unet/config.json: in_channels = 4" in doc["channels"]


def test_timm_first_conv_chooses_the_layer(tmp_path):
    src, out = tmp_path / "timm", tmp_path / "timm4"
    t = folders.timm_folder(str(src))
    # the shape rule alone is ambiguous (conv1 and aux_rgb have 3 input channels)
    assert run("apply", src / "model.safetensors", "-o", tmp_path / "x.safetensors", "--to", "4").returncode == 2
    run("apply", src, "-o", out, "--to", "4", check=0)
    w = load_any(str(out / "model.safetensors"))
    assert conv_err(t["conv1.weight"], w["conv1.weight"], [0, 1, 2, None]) == 0.0
    assert np.array_equal(w["aux_rgb.weight"], t["aux_rgb.weight"])
    cfg = json.loads((out / "config.json").read_text())
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [4, 32, 32] and pc["test_input_size"] == [4, 40, 40]
    assert pc["mean"] == folders.TIMM_CONFIG["pretrained_cfg"]["mean"] + [sum([0.485, 0.456, 0.406]) / 3]
    assert pc["std"] == folders.TIMM_CONFIG["pretrained_cfg"]["std"] + [sum([0.229, 0.224, 0.225]) / 3]
    assert cfg["model_args"] == {"in_chans": 4}
    want = dict(folders.TIMM_CONFIG, model_args={"in_chans": 4})
    want["pretrained_cfg"] = dict(pc)
    assert cfg == want and list(cfg) == list(want)
    assert run("verify", src, out).returncode == 0


# ------------------------------------------------------------------------------------------------
# verify: every file accounted for


@pytest.mark.parametrize("damage", ["shard", "config", "index", "extra", "missing", "other"])
def test_verify_finds_any_change(tmp_path, damage):
    src, out = tmp_path / "vit", tmp_path / "out"
    folders.sharded_vit(str(src))
    run("apply", src, "-o", out, "--to", "4", check=0)
    if damage == "shard":
        p = out / "model-00003-of-00003.safetensors"
        b = bytearray(p.read_bytes())
        b[-1] ^= 1
        p.write_bytes(bytes(b))
    elif damage == "config":
        p = out / "preprocessor_config.json"
        p.write_text(p.read_text().replace('"resample": 2', '"resample": 3'))
    elif damage == "index":
        p = out / "model.safetensors.index.json"
        p.write_text(p.read_text().replace("46376", "46377"))
    elif damage == "extra":
        (out / "notes.txt").write_text("x")
    elif damage == "missing":
        os.remove(out / "README.md")
    else:
        (out / ".gitattributes").write_text("changed\n")
    assert run("verify", src, out).returncode in (1, 3)


# ------------------------------------------------------------------------------------------------
# faults: exit 3 / 2 / 130 and nothing left behind


def leftovers(parent):
    return [p for p in os.listdir(parent) if ".widen-" in p]


def test_missing_shard_and_bad_indexes(tmp_path):
    src = tmp_path / "vit"
    folders.sharded_vit(str(src))
    index_path = src / "model.safetensors.index.json"
    good = index_path.read_text()

    def attempt(expect):
        out = tmp_path / "out"
        r = run("apply", src, "-o", out, "--to", "4")
        assert r.returncode == expect, r.stderr
        assert r.stderr.startswith("widen: error: ") and r.stderr.count("\n") == 1
        assert not out.exists() and not leftovers(tmp_path)
        return r.stderr

    os.rename(src / "model-00003-of-00003.safetensors", tmp_path / "away")
    assert "missing" in attempt(3)
    os.rename(tmp_path / "away", src / "model-00003-of-00003.safetensors")
    index = json.loads(good)
    index["weight_map"]["vit.not.there"] = "model-00001-of-00003.safetensors"
    index_path.write_text(json.dumps(index))
    assert "vit.not.there" in attempt(3)
    index = json.loads(good)
    del index["weight_map"]["classifier.bias"]
    index_path.write_text(json.dumps(index))
    assert "classifier.bias" in attempt(3)
    # a name twice: Python's json keeps the last; widen refuses
    index_path.write_text(good.replace('"weight_map": {', '"weight_map": {\n    "classifier.bias": '
                                       '"model-00001-of-00003.safetensors",', 1))
    assert "twice" in attempt(3)
    index = json.loads(good)
    index["weight_map"]["classifier.bias"] = "../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    attempt(3)
    index_path.write_text(good)
    p = src / "model-00002-of-00003.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    attempt(3)
    p.write_bytes(data)
    (tmp_path / "out").mkdir()
    r = run("apply", src, "-o", tmp_path / "out", "--to", "4")
    assert r.returncode == 2 and "exists" in r.stderr


def test_weight_files_without_index(tmp_path):
    src = tmp_path / "two"
    src.mkdir()
    g = np.random.default_rng(5)
    a = {"stem.weight": g.standard_normal((8, 3, 3, 3)).astype(np.float32)}
    b = {"head.weight": g.standard_normal((2, 8)).astype(np.float32)}
    reference.save(src / "part-a.safetensors", {k: ("F32", v) for k, v in a.items()})
    reference.save(src / "part-b.safetensors", {k: ("F32", v) for k, v in b.items()})
    run("apply", src, "-o", tmp_path / "out", "--to", "4", check=0)
    assert filecmp.cmp(src / "part-b.safetensors", tmp_path / "out" / "part-b.safetensors", False)
    # the same names in two files: which is the model? exit 2, naming both
    reference.save(src / "part-c.safetensors", {k: ("F32", v) for k, v in a.items()})
    r = run("apply", src, "-o", tmp_path / "out2", "--to", "4")
    assert r.returncode == 2 and "part-a.safetensors" in r.stderr and "part-c.safetensors" in r.stderr
    # weights of another format beside safetensors are the same model: left out, with a notice
    os.remove(src / "part-c.safetensors")
    torch.save({k: torch.from_numpy(v) for k, v in a.items()}, src / "pytorch_model.bin")
    r = run("apply", src, "-o", tmp_path / "out3", "--to", "4", check=0)
    assert "pytorch_model.bin" in r.stderr and not (tmp_path / "out3" / "pytorch_model.bin").exists()
    assert run("verify", src, tmp_path / "out3").returncode == 0


def test_interrupted_folder_leaves_nothing(tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    g = np.random.default_rng(9)
    stem = g.standard_normal((64, 3, 7, 7)).astype(np.float32)
    reference.save(src / "model-00001-of-00009.safetensors", {"stem.weight": ("F32", stem)})
    weight_map = {"stem.weight": "model-00001-of-00009.safetensors"}
    block = np.zeros((1024, 1024, 16), np.float32)  # 64 MiB per shard
    for k in range(2, 10):
        name = f"model-{k:05d}-of-00009.safetensors"
        reference.save(src / name, {f"blocks.{k}.weight": ("F32", block)})
        weight_map[f"blocks.{k}.weight"] = name
    folders.dump_hf(src / "model.safetensors.index.json", {"metadata": {"total_size": 0}, "weight_map": weight_map})
    for chain in "abcde":  # folders nested 15 deep: every one made must be removed too
        deep = src.joinpath(chain, *[f"d{k}" for k in range(14)])
        deep.mkdir(parents=True)
        (deep / "f.txt").write_text(chain)
    out = tmp_path / "out"
    proc = subprocess.Popen([reference.WIDEN, "apply", str(src), "-o", str(out), "--to", "4", "--no-progress"],
                            stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not leftovers(tmp_path):
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    if proc.returncode == 0:  # it finished first: then the output is whole
        assert run("verify", src, out).returncode == 0
    else:
        assert proc.returncode == 130 and "interrupted" in err
        assert not out.exists() and not leftovers(tmp_path)


# ------------------------------------------------------------------------------------------------
# the documents are read as Python's json reads them, or refused


JSON_CASES = [
    b'{"a": NaN, "b": Infinity, "c": -Infinity}', b'{"a": nan}', b'{"a": 01}', b'{"a": 1.}', b'{"a": .5}',
    b'{"a": 1e5, "b": -0, "c": 1E-2, "d": 1e400}', b'{"a": "\\ud83d\\ude00"}', b'{"a": [1,]}', b'{"a": "\t"}',
    b' \n{"a": 1}\r\n ', b'\xef\xbb\xbf{"a": 1}', b'{"a": 1} x', b'{"a": true, "b": false, "c": null}',
    b'{"a": "\xff"}', b'{"a": "\\x41"}', b'{"a": "\\u00e9\\/\\b"}', b'{"a" 1}', b'{"a": 1,}', b'{,}', b'{}',
    b'{"a": -}', b'{"a": 1.5e}', b'{"a": "\xc3\xa9"}', b'{"\\u0000": 1}', b'{"a": [[[[]]]]}', b'{"a": tru}',
]
# where widen refuses what Python's json would read: duplicate keys (Python keeps the last one
# silently), lone surrogates, nesting past 128, and documents that are not objects
WIDEN_STRICTER = [b'{"a": 1, "a": 2}', b'{"a": "\\ud83d"}', b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}", b"[1, 2]"]


def python_reads(raw):
    try:
        json.loads(raw.decode("utf-8"))
        return True
    except (UnicodeDecodeError, ValueError):
        return False


@pytest.mark.parametrize("raw", JSON_CASES + WIDEN_STRICTER)
def test_config_json_read_as_python_reads_it(tmp_path, raw):
    src = tmp_path / "vit"
    folders.sharded_vit(str(src))
    (src / "config.json").write_bytes(raw)
    expect = 0 if python_reads(raw) and raw not in WIDEN_STRICTER else 3
    if raw in WIDEN_STRICTER:
        assert python_reads(raw)  # a real disagreement, settled by refusing
    # a config is needed when the input layer is widened: then one that cannot be read is exit 3
    r = run("apply", src, "-o", tmp_path / "out", "--to", "4")
    assert r.returncode == expect, (raw, r.stderr)
    if expect:
        assert "config.json" in r.stderr and r.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
        # and only there: inspect says it was not read, --no-config copies it as it is
        assert "config.json: not read" in run("inspect", src, check=0).stdout
        run("apply", src, "-o", tmp_path / "out", "--to", "4", "--no-config", check=0)
        assert (tmp_path / "out" / "config.json").read_bytes() == raw
        assert run("verify", src, tmp_path / "out").returncode == 0


def test_hash_and_inspect_of_a_folder(tmp_path):
    xxhash = pytest.importorskip("xxhash")
    src = tmp_path / "vit"
    t = folders.sharded_vit(str(src))
    doc = json.loads(run("hash", src, "--json", check=0).stdout)
    assert [f["file"] for f in doc["files"]] == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    for f in doc["files"]:
        assert f["xxh3_128"] == xxhash.xxh3_128_hexdigest((src / f["file"]).read_bytes())
    assert {x["name"]: x["xxh3_128"] for x in doc["tensors"]} == \
        {n: xxhash.xxh3_128_hexdigest(v.tobytes()) for n, v in t.items()}
    doc = json.loads(run("inspect", src, "--json", check=0).stdout)
    assert doc["tensor_bytes"] == sum(v.nbytes for v in t.values())
    assert doc["size"] == sum(os.path.getsize(src / f) for f in tree(src))
    assert {x["name"]: (x["file"], x["shape"]) for x in doc["tensors"]} == \
        {n: (json.load(open(src / "model.safetensors.index.json"))["weight_map"][n], list(v.shape)) for n, v in t.items()}
    assert doc["channels"] == ["config.json: num_channels = 3", "preprocessor_config.json: image_mean = [0.5, 0.5, 0.5]",
                               "preprocessor_config.json: image_std = [0.5, 0.5, 0.5]"]


# ------------------------------------------------------------------------------------------------
# what an attack review found (each failed before its fix)


def vit(tmp_path, name="vit"):
    src = tmp_path / name
    folders.sharded_vit(str(src))
    return src


def test_list_layout_of_any_length_stays_json(tmp_path):
    src = vit(tmp_path)
    (src / "preprocessor_config.json").write_text('{"image_mean": [0.5' + " " * 300 + ', 0.25, 0.75], '
                                                  '"image_std": [\n' + " " * 400 + '0.5]}')
    run("apply", src, "-o", tmp_path / "out", "--to", "4", check=0)
    got = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert got["image_mean"] == [0.5, 0.25, 0.75, 0.5]
    assert run("verify", src, tmp_path / "out").returncode == 0


def test_output_channels_are_not_the_input_layer(tmp_path):
    src, out = tmp_path / "pipe", tmp_path / "out"
    folders.diffusers_pipeline(str(src))
    run("apply", src, "-o", out, "-t", "vae/encoder.conv_in.weight", "--axis", "0", "--to", "40", check=0)
    assert filecmp.cmp(src / "vae/config.json", out / "vae/config.json", False)
    assert run("verify", src, out).returncode == 0


def test_manifest_never_inside_the_input_or_over_a_file(tmp_path):
    src = vit(tmp_path)
    before = {f: (src / f).read_bytes() for f in tree(src)}
    for manifest, extra in ((src / "m.json", []), (src / "model-00001-of-00003.safetensors", ["--force"]),
                            (tmp_path / "out" / "m.json", []), (tmp_path / "out", [])):
        r = run("apply", src, "-o", tmp_path / "out", "--to", "4", "--manifest", manifest, *extra)
        assert r.returncode == 2, r.stderr
    (tmp_path / "m.json").write_text("{}")
    assert run("apply", src, "-o", tmp_path / "out", "--to", "4", "--manifest", tmp_path / "m.json").returncode == 2
    assert {f: (src / f).read_bytes() for f in tree(src)} == before
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_output_inside_the_input_through_a_link(tmp_path):
    src = vit(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", src / "link")
    r = run("apply", src, "-o", tmp_path / "elsewhere" / "out", "--to", "4")
    assert r.returncode == 2 and "inside the input" in r.stderr


def test_verify_sees_folders_and_depth(tmp_path):
    src = vit(tmp_path)
    out = tmp_path / "out"
    run("apply", src, "-o", out, "--to", "4", check=0)
    (out / "empty").mkdir()
    assert run("verify", src, out).returncode == 1
    os.rmdir(out / "empty")
    deep = out.joinpath(*"abcdefghijklmnopq")
    deep.mkdir(parents=True)
    (deep / "x.txt").write_text("x")
    assert run("verify", src, out).returncode in (1, 3)
    # a file 16 folders down in the input is copied and verified
    src2 = vit(tmp_path, "vit2")
    deep = src2.joinpath(*"abcdefghijklmnop")
    deep.mkdir(parents=True)
    (deep / "x.txt").write_text("x")
    run("apply", src2, "-o", tmp_path / "out2", "--to", "4", check=0)
    assert run("verify", src2, tmp_path / "out2").returncode == 0


def test_index_totals_exact_or_refused(tmp_path):
    src = vit(tmp_path)
    p = src / "model.safetensors.index.json"
    good = p.read_text()
    p.write_text(good.replace('"total_size": 44328', '"total_size": 0, "total_parameters": 9007199254740993'))
    run("apply", src, "-o", tmp_path / "out", "--to", "4", check=0)
    meta = json.load(open(tmp_path / "out" / "model.safetensors.index.json"))["metadata"]
    assert meta == {"total_size": 2048, "total_parameters": 9007199254740993 + 512}
    assert run("verify", src, tmp_path / "out").returncode == 0
    # narrowing below a total of 0, or past 2^63: not this model's total; refused, nothing written
    r = run("apply", src, "-o", tmp_path / "out2", "-t", folders.PATCH, "--map", "0")
    assert r.returncode == 3 and "total_size" in r.stderr and not (tmp_path / "out2").exists()
    p.write_text(good.replace('"total_size": 44328', '"total_size": 44328.0'))
    run("apply", src, "-o", tmp_path / "out3", "--to", "4", check=0)
    assert '"total_size": 46376.0' in (tmp_path / "out3" / "model.safetensors.index.json").read_text()


@pytest.mark.parametrize("value", ["100", "120", "1e15", "1e16", "0.00001", "0.0001", "123456789.125", "-2.5",
                                   "0.30000000000000004", "5e-324", "1.7976931348623157e308"])
def test_new_values_written_as_python_repr_writes_them(tmp_path, value):
    src = vit(tmp_path)
    run("apply", src, "-o", tmp_path / "out", "--to", "4", "--norm-fill", f"{value}:1", check=0)
    text = (tmp_path / "out" / "preprocessor_config.json").read_text()
    assert f"    {repr(float(value))}\n" in text
    assert json.loads(text)["image_mean"][3] == float(value)


def test_long_numbers_read_exactly(tmp_path):
    src = vit(tmp_path)
    long_half = "0.5" + "0" * 80 + "1"
    (src / "preprocessor_config.json").write_text('{"image_mean": [' + long_half + ', 0.5, 0.5], '
                                                  '"image_std": [0.5, 0.5, 0.5]}')
    run("apply", src, "-o", tmp_path / "out", "--to", "4", check=0)
    got = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["image_mean"]
    assert got[3] == (float(long_half) + 0.5 + 0.5) / 3 and long_half in (tmp_path / "out" / "preprocessor_config.json").read_text()


def test_index_names_and_odd_indexes(tmp_path):
    src = vit(tmp_path)
    # a file whose name holds ".index.json" is still a file
    shard = tmp_path / "m.index.json.safetensors"
    shutil.copy(src / "model-00002-of-00003.safetensors", shard)
    run("apply", shard, "-o", tmp_path / "one.safetensors", "--to", "4", check=0)
    assert run("verify", shard, tmp_path / "one.safetensors").returncode == 0
    # an index of another name is the folder's index
    os.rename(src / "model.safetensors.index.json", src / "model.index.json")
    run("apply", src, "-o", tmp_path / "out", "--to", "4", check=0)
    assert json.load(open(tmp_path / "out" / "model.index.json"))["metadata"]["total_size"] == 46376
    # one the user names is read as the index, or refused
    (src / "foo.index.json").write_text('{"not": "an index"}')
    r = run("inspect", src / "foo.index.json")
    assert r.returncode == 3 and "weight_map" in r.stderr
    (src / "foo.index.json").write_text('{"weight_map": {}}')
    assert run("inspect", src / "foo.index.json").returncode == 3


def test_links_and_first_conv_lists(tmp_path):
    src = vit(tmp_path)
    os.symlink("loop", src / "loop")
    r = run("inspect", src)
    assert r.returncode == 3, r.stderr
    os.remove(src / "loop")
    t = tmp_path / "timm"
    folders.timm_folder(str(t))
    cfg = dict(folders.TIMM_CONFIG, model_args=None)
    cfg["pretrained_cfg"] = dict(cfg["pretrained_cfg"], first_conv=["conv1", "conv1"])
    (t / "config.json").write_text(json.dumps(cfg, indent=4))
    run("apply", t, "-o", tmp_path / "t4", "--to", "4", check=0)
    assert json.load(open(tmp_path / "t4" / "config.json"))["model_args"] == {"in_chans": 4}


def test_cast_and_several_tensors_across_shards(tmp_path):
    src = vit(tmp_path)
    t = folders.vit_tensors()
    out = tmp_path / "bf16"
    run("apply", src, "-o", out, "--cast", "bf16", check=0)
    model, index = load_model(str(out), "model.safetensors.index.json")
    for n, v in t.items():  # bf16 is the upper half of the f32 bits, rounded to nearest even
        assert np.array_equal(model[n], reference.f32_to_bf16_bits(v)), n
    assert index["metadata"]["total_size"] == 44328 // 2
    assert run("verify", src, out).returncode == 0
    # two tensors in two shards, one manifest
    out2 = tmp_path / "two"
    run("apply", src, "-o", out2, "-t", folders.PATCH, "-t", "classifier.weight", "--axis", "0", "--to", "40",
        "--manifest", tmp_path / "m.json", check=0)
    model, _ = load_model(str(out2), "model.safetensors.index.json")
    assert model["classifier.weight"].shape == (40, 32) and not model["classifier.weight"][10:].any()
    assert model[folders.PATCH].shape == (40, 3, 4, 4)
    assert filecmp.cmp(src / "model-00001-of-00003.safetensors", out2 / "model-00001-of-00003.safetensors", False)
    assert filecmp.cmp(src / "config.json", out2 / "config.json", False)  # output channels: no config follows
    assert run("verify", src, out2, "--manifest", tmp_path / "m.json").returncode == 0
    files = {x["file"] for x in json.load(open(tmp_path / "m.json"))["tensors"]}
    assert files == {"model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"}


# ------------------------------------------------------------------------------------------------
# what a second attack review found


def test_a_kernels_height_is_not_its_input(tmp_path):
    src, t = tmp_path / "pipe", tmp_path / "timm"
    folders.diffusers_pipeline(str(src))
    folders.timm_folder(str(t))
    run("apply", src, "-o", tmp_path / "o1", "-t", "vae/encoder.conv_in.weight", "--axis", "2", "--to", "5", check=0)
    assert filecmp.cmp(src / "vae/config.json", tmp_path / "o1/vae/config.json", False)
    run("apply", t, "-o", tmp_path / "o2", "-t", "conv1.weight", "--axis", "2", "--to", "9", check=0)
    assert filecmp.cmp(t / "config.json", tmp_path / "o2/config.json", False)
    assert run("verify", t, tmp_path / "o2").returncode == 0


def test_verify_refuses_fills_and_manifests_apply_never_writes(tmp_path):
    src = vit(tmp_path)
    out = tmp_path / "out"
    run("apply", src, "-o", out, "--to", "4", "--manifest", tmp_path / "m.json", check=0)
    p = out / "preprocessor_config.json"
    good = p.read_text()
    doc = json.loads(good)
    doc["image_mean"][3] = float("nan")
    p.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    assert run("verify", src, out).returncode == 1
    p.write_text(good)
    manifest = json.load(open(tmp_path / "m.json"))
    tampered = [
        dict(manifest, tensors=manifest["tensors"] + [dict(manifest["tensors"][0], file="model-00001-of-00003.safetensors")]),
        dict(manifest, files=manifest["files"][:-1]),
        dict(manifest, files=[dict(f, op="copy") for f in manifest["files"]]),
    ]
    for i, m in enumerate(tampered):
        (tmp_path / f"t{i}.json").write_text(json.dumps(m))
        assert run("verify", src, out, "--manifest", tmp_path / f"t{i}.json").returncode == 1, i
    (tmp_path / "c.json").write_text(json.dumps(dict(manifest, configs={"follow": "no"})))
    assert run("verify", src, out, "--manifest", tmp_path / "c.json").returncode == 3


def test_notes_stay_utf8_and_stale_lists_are_reported(tmp_path):
    t = tmp_path / "timm"
    folders.timm_folder(str(t))
    cfg = dict(folders.TIMM_CONFIG)
    cfg["pretrained_cfg"] = dict(cfg["pretrained_cfg"], first_conv="a" * 86 + "é" * 30)
    (t / "config.json").write_text(json.dumps(cfg, indent=4, ensure_ascii=False))
    notes = json.loads(run("inspect", t, "--json", check=0).stdout)["channels"]
    assert any(n.startswith("config.json: pretrained_cfg.first_conv = ") for n in notes)
    src = vit(tmp_path)
    os.remove(src / "config.json")
    r = run("apply", src, "-o", tmp_path / "out", "--to", "4", check=0)
    assert "preprocessor_config.json" in r.stderr and "left as they are" in r.stderr


def test_no_edit_where_nothing_changes_and_edits_in_the_files_layout(tmp_path):
    src = vit(tmp_path)
    p = src / "config.json"
    p.write_text(p.read_text().replace('"num_channels": 3', '"num_channels": 3.0'))
    run("apply", src, "-o", tmp_path / "bgr", "-t", folders.PATCH, "--map", "2,1,0", check=0)
    assert filecmp.cmp(p, tmp_path / "bgr" / "config.json", False)
    t = tmp_path / "timm"
    folders.timm_folder(str(t))
    run("apply", t, "-o", tmp_path / "t4", "--to", "4", check=0)
    text = (tmp_path / "t4" / "config.json").read_text()
    assert '    "model_args": {\n        "in_chans": 4\n    }\n}' in text
    assert run("apply", t, "-o", tmp_path / "x", "--to", "4", "--no-config", "--norm-fill", "0.5:0.5").returncode == 2
    for bad in ("0x1p-1:0.5", " 0.5:0.5", "0.5:", "nan:1", "1:inf", "0.5"):
        assert run("apply", t, "-o", tmp_path / "x", "--to", "4", "--norm-fill", bad).returncode == 2, bad


# ------------------------------------------------------------------------------------------------
# real-world layouts (a third review)


def test_variants_and_foreign_weights_are_left_out(tmp_path):
    src, out = tmp_path / "sd", tmp_path / "out"
    unet, _ = folders.diffusers_pipeline(str(src))
    for variant in ("fp16", "non_ema"):  # as runwayml/stable-diffusion-v1-5 ships them
        shutil.copy(src / "unet/diffusion_pytorch_model.safetensors", src / f"unet/diffusion_pytorch_model.{variant}.safetensors")
    for name in ("v1-5-pruned-emaonly.ckpt", "text_encoder/tf_model.h5", "text_encoder/flax_model.msgpack",
                 "onnx/unet/model.onnx"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"weights of another kind")
    (src / ".git" / "lfs").mkdir(parents=True)
    (src / ".git" / "lfs" / "object").write_bytes(b"a second copy")
    (src / ".cache" / "huggingface").mkdir(parents=True)
    (src / ".cache" / "huggingface" / "x.metadata").write_text("etag")
    doc = json.loads(run("inspect", src, "--json", check=0).stdout)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in doc["left_out"] and "onnx/unet/model.onnx" in doc["left_out"]
    r = run("apply", src, "-o", out, "-t", "unet/conv_in.weight", "--map", "0,1,2,3,zero,zero,zero,zero,zero", check=0)
    assert "not in the output" in r.stderr and ".git" in r.stderr
    left = set(doc["left_out"]) | {".git/lfs/object", ".cache/huggingface/x.metadata"}
    assert set(tree(out)) == set(tree(src)) - left
    assert run("verify", src, out).returncode == 0


def test_variant_index_and_shards_left_out(tmp_path):
    src = vit(tmp_path)
    for f in tree(src):
        if f.startswith("model-"):
            shutil.copy(src / f, src / f.replace("model-", "model.fp16-"))
    index = json.load(open(src / "model.safetensors.index.json"))
    index["weight_map"] = {k: v.replace("model-", "model.fp16-") for k, v in index["weight_map"].items()}
    folders.dump_hf(src / "model.safetensors.index.fp16.json", index)
    run("apply", src, "-o", tmp_path / "out", "--to", "4", check=0)
    assert not [f for f in tree(tmp_path / "out") if "fp16" in f]
    assert run("verify", src, tmp_path / "out").returncode == 0


def test_defaults_left_out_of_a_transformers_config_are_added(tmp_path):
    src = vit(tmp_path)
    # recent transformers drops nested values equal to their defaults (SigLIP, CLIP)
    cfg = {"architectures": ["SiglipModel"], "model_type": "siglip",
           "text_config": {"model_type": "siglip_text_model"},
           "vision_config": {"model_type": "siglip_vision_model", "patch_size": 4}}
    folders.dump_hf(src / "config.json", cfg)
    r = run("apply", src, "-o", tmp_path / "out", "--to", "4", check=0)
    assert "num_channels" in r.stderr
    got = json.load(open(tmp_path / "out" / "config.json"))
    assert got == dict(cfg, vision_config=dict(cfg["vision_config"], num_channels=4))
    assert json.load(open(tmp_path / "out" / "preprocessor_config.json"))["image_mean"] == [0.5] * 4
    assert run("verify", src, tmp_path / "out").returncode == 0


def test_controlnet_conditioning_channels_follow(tmp_path):
    src = tmp_path / "controlnet"
    src.mkdir()
    g = np.random.default_rng(4)
    w = {"conv_in.weight": g.standard_normal((32, 4, 3, 3)).astype(np.float32),
         "controlnet_cond_embedding.conv_in.weight": g.standard_normal((16, 3, 3, 3)).astype(np.float32)}
    reference.save(src / "diffusion_pytorch_model.safetensors", {k: ("F32", v) for k, v in w.items()})
    folders.dump_hf(src / "config.json", {"_class_name": "ControlNetModel", "conditioning_channels": 3, "in_channels": 4})
    run("apply", src, "-o", tmp_path / "out", "--to", "4", check=0)
    got = json.load(open(tmp_path / "out" / "config.json"))
    assert got["conditioning_channels"] == 4 and got["in_channels"] == 4
    assert run("verify", src, tmp_path / "out").returncode == 0


def test_cast_follows_torch_dtype_and_outputs_named_like_files_refused(tmp_path):
    src = vit(tmp_path)
    run("apply", src, "-o", tmp_path / "half", "--cast", "f16", check=0)
    assert json.load(open(tmp_path / "half" / "config.json"))["torch_dtype"] == "float16"
    assert run("verify", src, tmp_path / "half").returncode == 0
    r = run("apply", src, "-o", tmp_path / "one.safetensors", "--to", "4")
    assert r.returncode == 2 and not (tmp_path / "one.safetensors").exists()


def test_trainer_state_is_named(tmp_path):
    src = vit(tmp_path)
    (src / "optimizer.pt").write_bytes(b"optimizer state")
    r = run("apply", src, "-o", tmp_path / "out", "--to", "4", check=0)
    assert "optimizer.pt" in r.stderr
    assert filecmp.cmp(src / "optimizer.pt", tmp_path / "out" / "optimizer.pt", False)
