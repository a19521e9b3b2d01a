#!/usr/bin/python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/seeds/TARGET/): small valid inputs of each
parser. Run from the repository root; needs python3-torch. The seeds are committed."""
import io
import json
import os
import shutil
import sys
import zipfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import numpy as np  # noqa: E402
from reference import save  # noqa: E402


def out(target, name, data):
    folder = os.path.join(HERE, "seeds", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def main():
    shutil.rmtree(os.path.join(HERE, "seeds"), ignore_errors=True)
    with open(os.path.join(ROOT, "examples", "classic_rgb.safetensors"), "rb") as f:
        out("safetensors", "classic_rgb", f.read())
    buf = os.path.join(HERE, "tmp.safetensors")
    save(buf, {"z": ("F32", np.zeros((2, 0), np.float32)), "s": ("I64", np.int64(3).reshape(())),
               "h": ("F16", np.float16([1, 2, 3]))}, {"format": "pt"})
    with open(buf, "rb") as f:
        out("safetensors", "edge", f.read())
    os.unlink(buf)
    torch.manual_seed(0)
    shared = torch.randn(4, 3)
    checkpoints = {
        "state_dict": torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2)).state_dict(),
        "nested": {"model": {"w": torch.randn(2, 3, 1, 1)}, "epoch": 3, "lr": 0.1, "names": ["a", "b"],
                   "flags": (True, None), "big": 2 ** 40},
        "tied": {"a": shared, "b": shared, "t": shared.t(), "h": torch.ones(3, dtype=torch.float16)},
        "strided": {"expanded": torch.randn(3).expand(4, 2, 3), "offset": shared[1:, ::2], "scalar": torch.tensor(2.0)},
    }
    for name, obj in checkpoints.items():
        data = io.BytesIO()
        torch.save(obj, data)
        out("torch", name, data.getvalue())
        with zipfile.ZipFile(io.BytesIO(data.getvalue())) as z:
            pkl = [n for n in z.namelist() if n.endswith("data.pkl")][0]
            out("pickle", name, z.read(pkl))
    # protocols 4 and 5: frames, memoize, short strings, stack globals, sets and bytes
    for protocol in (4, 5):
        data = io.BytesIO()
        torch.save({"w": shared, "s": {1, 2}, "b": b"\x00\xff", "n": ["a", "a"]}, data, pickle_protocol=protocol)
        with zipfile.ZipFile(io.BytesIO(data.getvalue())) as z:
            out("pickle", f"protocol{protocol}", z.read("archive/data.pkl"))
    # model folder documents: index, config.json, preprocessor_config.json, separated by NUL bytes
    index = json.dumps({"metadata": {"total_size": 248}, "weight_map": {
        "stem.weight": "model-00001-of-00002.safetensors", "stem.bias": "model-00001-of-00002.safetensors",
        "head.weight": "model-00002-of-00002.safetensors"}}, indent=2, sort_keys=True) + "\n"
    configs = {
        "vit": ({"model_type": "vit", "num_channels": 3, "image_size": 4},
                {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_normalize": True}),
        "timm": ({"architecture": "resnet18", "pretrained_cfg": {"input_size": [3, 8, 8], "mean": [0.485, 0.456, 0.406],
                  "std": [0.229, 0.224, 0.225], "first_conv": "stem", "classifier": "head"}}, None),
        "clip": ({"vision_config": {"num_channels": 3, "out_channels": 3}, "model_args": {}}, {"image_mean": [1e-5, 2, 3]}),
        "diffusers": ({"in_channels": 3, "out_channels": 4, "block_out_channels": [4, 8]}, None),
    }
    for name, (config, pre) in configs.items():
        parts = [index, json.dumps(config, indent=2 if name != "clip" else None)]
        if pre is not None:
            parts.append(json.dumps(pre, indent=4))
        out("folder", name, "\0".join(parts).encode())
    # .npy files as np.save writes them, of each header version
    for i, (array, version) in enumerate([(np.ones((2, 3, 1, 1), np.float32), (1, 0)), (np.float16(1.5), (2, 0)),
                                          (np.zeros((0, 3), np.int64), (3, 0)), (np.arange(4, dtype=np.uint8), (1, 0))]):
        data = io.BytesIO()
        np.lib.format.write_array(data, array, version=version)
        out("npy", f"npy{i}", data.getvalue())
    for i, array in enumerate([np.asfortranarray(np.ones((2, 3, 4), ">f4")), np.arange(6, dtype=">c8").reshape(2, 3)]):
        data = io.BytesIO()
        np.save(data, array)
        out("npy", f"layout{i}", data.getvalue())
    data = io.BytesIO()
    np.savez(data, **{"params/conv/kernel": np.ones((3, 3, 3, 2), np.float32), "b": np.zeros(2, np.float16)})
    out("npy", "npz0", data.getvalue())
    # legacy torch.save files (protocols 2 to 5), and one of torch 0.3's with a storage view
    legacy = {"conv.weight": torch.ones(2, 3, 1, 1), "bias": shared[1], "t": shared.t(), "n": [1, "x", {2}]}
    for protocol in (2, 3, 4, 5):
        data = io.BytesIO()
        torch.save(legacy, data, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
        out("legacy", f"p{protocol}", data.getvalue())
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import pathlib
    import tempfile
    import test_legacy
    with tempfile.TemporaryDirectory() as tmp:
        out("legacy", "view", test_legacy.old_style(pathlib.Path(tmp)).read_bytes())
    # np.savez_compressed: deflated members, one compressing well and one not, an empty one and a scalar
    data = io.BytesIO()
    np.savez_compressed(data, **{"k": np.zeros((3, 3, 3, 4), np.float32), "r": np.arange(64, dtype=np.uint8) * 37,
                                 "e": np.zeros((0, 2), np.int16), "s": np.float64(2.5)})
    out("npy", "npz1", data.getvalue())
    for i, text in enumerate(["0,1,2,zero", "2,1,0", "0*0.5,mean,sum,normal:0.1:3,const:1", "timm", "cyclic",
                              "normal:0.5:7", "copy:2", "const:-1e-3", "mean", "zeros"]):
        out("map", f"map{i}", text.encode())


if __name__ == "__main__":
    main()
