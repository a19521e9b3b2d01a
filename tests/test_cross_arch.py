"""Every machine, same bytes (issue 16): the whole CLI cross-built for aarch64 (the `aarch64` preset:
library and CLI over Debian's arm64 multiarch packages, NEON kernels) and run under qemu-aarch64 must
write byte-identical outputs to this machine's build for the same inputs and arguments: every output
format (from safetensors, .pt, legacy .pt and .npz inputs), every init mode, maps with scales, means
and sums, every cast, and 1 to 3 threads. Sizes are small (qemu runs everything about 20 times
slower), the paths are all there. Skipped where the aarch64 build or qemu is missing, and under the
sanitizer run (the release run compares the same bytes)."""
import hashlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from reference import ROOT, WIDEN, cli_env, save

torch = pytest.importorskip("torch")

ARM = os.environ.get("WIDEN_AARCH64", os.path.join(ROOT, "build", "aarch64", "widen"))
# the arm64 programs run on Debian's arm64 multiarch libc (libc6:arm64, which the -dev:arm64 packages
# bring): with the cross toolchain's copy (-L /usr/aarch64-linux-gnu) qemu 7.2 hangs in pthread_create
QEMU = ["qemu-aarch64-static"]

pytestmark = [
    pytest.mark.host_only("drives both CLIs itself: this build's, and the arm64 one under qemu"),
    pytest.mark.skipif(bool(os.environ.get("WIDEN_SANITIZE")), reason="the release run compares the same bytes"),
    pytest.mark.skipif(not os.path.exists(ARM), reason=f"no aarch64 build at {ARM} (cmake --preset aarch64)"),
    pytest.mark.skipif(shutil.which(QEMU[0]) is None, reason="qemu-aarch64-static is missing"),
]


def digest(path):
    if os.path.isdir(path):
        h = hashlib.sha256()
        for root, dirs, files in sorted(os.walk(path)):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                h.update(os.path.relpath(full, path).encode() + b"\0")
                with open(full, "rb") as f:
                    h.update(f.read())
        return h.hexdigest()
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def widen(binary, *args):
    cmd = (QEMU + [ARM] if binary == "arm" else [WIDEN]) + [str(a) for a in args]
    env = cli_env()
    env.pop("LD_PRELOAD", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, (binary, args, proc.stderr)
    return proc


def test_the_arm64_build_runs_neon():
    out = widen("arm", "--version").stdout
    assert "isa: neon" in out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cross")
    rng = np.random.default_rng(16)
    conv = rng.standard_normal((16, 3, 5, 5)).astype(np.float32)
    conv[0, 0, 0, :3] = [np.nan, -0.0, 1e-42]  # a NaN, a signed zero, a denormal
    tensors = {"stem.weight": conv, "stem.bias": rng.standard_normal(16).astype(np.float32),
               "block.weight": rng.standard_normal((32, 16, 3, 3)).astype(np.float32),
               "head.weight": rng.standard_normal((10, 32)).astype(np.float16),
               "steps": np.arange(6, dtype=np.int64)}
    paths = {"st": d / "m.safetensors", "pt": d / "m.pt", "legacy": d / "legacy.pt", "npz": d / "m.npz"}
    save(str(paths["st"]), {k: ({np.float32: "F32", np.float16: "F16", np.int64: "I64"}[v.dtype.type], v)
                            for k, v in tensors.items()}, {"format": "pt"})
    state = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
    state["block.weight"] = state["block.weight"].transpose(2, 3)  # a strided view
    torch.save(state, str(paths["pt"]))
    torch.save(state, str(paths["legacy"]), _use_new_zipfile_serialization=False)
    np.savez_compressed(str(paths["npz"]), kernel=np.moveaxis(conv, (0, 1), (3, 2)).copy(),
                        bias=tensors["stem.bias"])
    return d, paths


CASES = [
    ("st", "safetensors", ["--to", "4"]),
    ("st", "pt", ["--to", "5", "--at", "1", "--init", "const:0.25"]),
    ("st", "npz", ["--to", "4", "--init", "mean"]),
    ("st", "safetensors", ["--to", "6", "--init", "copy:2", "--threads", "3"]),
    ("st", "safetensors", ["--to", "4", "--init", "normal:0.02:7", "--threads", "2"]),
    ("st", "pt", ["--to", "1", "--init", "timm"]),
    ("st", "safetensors", ["--to", "8", "--init", "cyclic", "--cast", "bf16"]),
    ("st", "safetensors", ["--map", "2,1,0,0*0.5,mean,sum,zero"]),
    ("st", "safetensors", ["--cast", "f16", "--threads", "1"]),
    ("st", "pt", ["--cast", "bf16", "--threads", "2"]),
    ("pt", "pt", ["--to", "4", "--init", "mean"]),
    ("pt", "safetensors", ["--cast", "f16"]),
    ("pt", "pt", ["-t", "block.weight", "--map", "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,mean"]),
    ("legacy", "pt", ["--to", "4", "--init", "normal:0.5:3"]),
    ("legacy", "safetensors", ["--to", "4"]),
    ("npz", "npz", ["--to", "4", "--init", "const:-1"]),
    ("npz", "safetensors", ["--to", "4", "--cast", "bf16"]),
]


@pytest.mark.parametrize("source,ext,args", CASES, ids=[f"{s}-{e}-{' '.join(a)}" for s, e, a in CASES])
def test_arm64_writes_the_same_bytes(inputs, tmp_path, source, ext, args):
    d, paths = inputs
    outs = {}
    for binary in ("x86", "arm"):
        out = tmp_path / f"{binary}.{ext}"
        widen(binary, "apply", paths[source], "-o", out, "--no-fsync", "--no-progress", "--manifest", f"{out}.json", *args)
        outs[binary] = out
    assert digest(outs["x86"]) == digest(outs["arm"])
    # the same hashes in the manifests, whichever machine computed them (their paths differ)
    docs = [json.loads(open(f"{outs[b]}.json").read()) for b in ("x86", "arm")]
    assert docs[0]["tensors"] == docs[1]["tensors"] and docs[0]["transform"] == docs[1]["transform"]
    # each side proves the other's output
    widen("x86", "verify", paths[source], outs["arm"], "--manifest", f"{outs['arm']}.json")
    widen("arm", "verify", paths[source], outs["x86"], "--manifest", f"{outs['x86']}.json")


def test_a_model_folder_is_the_same_on_arm64(tmp_path):
    import folders
    src = tmp_path / "vit"
    folders.sharded_vit(str(src))
    for binary in ("x86", "arm"):
        widen(binary, "apply", src, "-o", tmp_path / binary, "--to", "4", "--no-fsync", "--no-progress")
    assert digest(tmp_path / "x86") == digest(tmp_path / "arm")
    widen("arm", "verify", src, tmp_path / "x86")
