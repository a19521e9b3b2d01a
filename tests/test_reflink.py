"""Cloning what is untouched (issue 15), on a real XFS file system with reflink (an image made with
mkfs.xfs and loop-mounted; skipped, with the reason, where mounting is not permitted). For
safetensors and .pt, a widened file of a large untouched body: the output is byte-identical to the
output written on the ordinary file system (the layout is a function of the input alone), torch reads
the transform, verify passes, and the file system's used blocks grow by less than 1 % of the file.
A model folder's untouched shards are cloned whole. On a file system that copies instead, the long
copies start on the output's 2 MiB boundaries."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import folders
from reference import WIDEN, cli_env, run, save

torch = pytest.importorskip("torch")

MiB = 1 << 20
# large enough for the 1 % bound to mean something (the transformed stem is 50 KiB), small enough to
# keep the suite quick
BODY = 64 * MiB


def used(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.fixture(scope="module")
def xfs(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("mounting an XFS image needs root")
    if not shutil.which("mkfs.xfs"):
        pytest.skip("mkfs.xfs is missing (xfsprogs; scripts/setup.sh installs it)")
    base = tmp_path_factory.mktemp("xfs")
    image, mount = base / "fs.img", base / "mnt"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(4 * BODY + 512 * MiB)  # sparse: the image takes what the files take
    made = subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"mkfs.xfs failed: {made.stderr.strip()}")
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount an XFS image here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def stem():
    return np.arange(64 * 3 * 7 * 7, dtype=np.float32).reshape(64, 3, 7, 7) / 100


def body(n):
    return np.arange(n // 4, dtype=np.float32)


def make_inputs(folder):
    """A stem and two large untouched tensors, as safetensors (our writer) and as torch.save writes."""
    st, pt = folder / "in.safetensors", folder / "in.pt"
    if not st.exists():
        save(str(st), {"conv1.weight": ("F32", stem()), "layer1.weight": ("F32", body(BODY // 2)),
                       "layer2.weight": ("F32", body(BODY // 2) + 1)}, {"format": "pt"})
        torch.save({"conv1.weight": torch.from_numpy(stem()), "layer1.weight": torch.from_numpy(body(BODY // 2)),
                    "layer2.weight": torch.from_numpy(body(BODY // 2) + 1)}, str(pt))
        os.sync()
    return st, pt


# a safetensors output on one thread (streamed) and on four (written at offsets: each clone at its own)
@pytest.mark.parametrize("ext,threads", [("safetensors", "1"), ("safetensors", "4"), ("pt", "0")])
def test_widening_clones_the_untouched_body(xfs, tmp_path, ext, threads):
    st, pt = make_inputs(xfs)
    src = st if ext == "safetensors" else pt
    out = xfs / f"out.{ext}"
    if out.exists():
        out.unlink()
    os.sync()
    before = used(str(xfs))
    # a .pt records no transform: its verify needs a manifest (whose hashes read the body; it is cloned
    # all the same)
    manifest = ["--manifest", str(tmp_path / "m.json")] if ext == "pt" else []
    p = run("apply", src, "-o", out, "-t", "conv1.weight", "--to", "4", "--json", "--threads", threads, *manifest,
            check=0)
    os.sync()
    grown = used(str(xfs)) - before
    size = out.stat().st_size
    assert grown < size // 100, f"the output grew the file system by {grown} bytes of {size}"
    b = json.loads(p.stdout)["bytes"]
    assert b["cloned"] + b["copied"] + b["written"] == size
    assert b["cloned"] >= BODY - 4 * 4096, b  # all but the partial blocks at the ends of each run
    # the same bytes as on a file system that copies
    plain = tmp_path / f"plain.{ext}"
    run("apply", src, "-o", plain, "-t", "conv1.weight", "--to", "4", "--no-fsync", check=0)
    with open(out, "rb") as a, open(plain, "rb") as c:
        assert a.read() == c.read()
    run("verify", src, out, *manifest, check=0)
    if ext == "pt":
        got = torch.load(str(out), weights_only=True)
        assert got["conv1.weight"].shape == (64, 4, 7, 7)
        assert torch.equal(got["conv1.weight"][:, :3], torch.from_numpy(stem()))
        assert not got["conv1.weight"][:, 3].any()
        assert torch.equal(got["layer2.weight"], torch.from_numpy(body(BODY // 2) + 1))
    out.unlink()


# a backbone's untouched body is big matrices with small norms and biases between them: on any number
# of threads the whole run is cloned in one piece, the small tensors with it, and only the header and
# the transformed stem are written
@pytest.mark.parametrize("threads", ["1", "4"])
def test_small_tensors_inside_an_untouched_run_are_cloned_with_it(xfs, tmp_path, threads):
    src, out = xfs / "layers.safetensors", xfs / f"layers-{threads}.safetensors"
    tensors = {"conv1.weight": ("F32", stem())}
    for k in range(8):
        tensors[f"layer{k}.a.weight"] = ("F32", body(BODY // 8) + k)
        tensors[f"layer{k}.b.bias"] = ("F32", body(5120) - k)
    if not src.exists():
        save(str(src), tensors, {"format": "pt"})
    p = run("apply", src, "-o", out, "-t", "conv1.weight", "--to", "4", "--json", "--threads", threads, check=0)
    b = json.loads(p.stdout)["bytes"]
    stem_out = 64 * 4 * 7 * 7 * 4
    with open(out, "rb") as f:
        header = 8 + int.from_bytes(f.read(8), "little")
    assert b["written"] <= header + stem_out, b  # not one small tensor written
    assert b["cloned"] >= os.path.getsize(out) - header - stem_out - 2 * 4096, b
    plain = tmp_path / "plain.safetensors"
    run("apply", src, "-o", plain, "-t", "conv1.weight", "--to", "4", "--no-fsync", "--threads", threads, check=0)
    with open(out, "rb") as a, open(plain, "rb") as c:
        assert a.read() == c.read()
    run("verify", src, out, check=0)
    out.unlink()


def test_a_folders_untouched_shards_are_cloned_whole(xfs):
    src, dst = xfs / "vit", xfs / "vit4"
    if dst.exists():
        shutil.rmtree(dst)
    if not src.exists():
        src.mkdir()
        t = folders.vit_tensors()
        patch = {folders.PATCH: t[folders.PATCH]}
        folders.write_shards(str(src), [patch, {"big.0": body(BODY // 2)}, {"big.1": body(BODY // 2) + 2}])
    os.sync()
    before = used(str(xfs))
    p = run("apply", src, "-o", dst, "--to", "4", "--json", check=0)
    os.sync()
    grown = used(str(xfs)) - before
    assert grown < BODY // 100, grown
    assert json.loads(p.stdout)["bytes"]["cloned"] >= BODY - 4 * 4096
    run("verify", src, dst, check=0)
    shutil.rmtree(dst)


# On a file system that copies instead (ext4, tmpfs), the kernel copies a range through the page cache
# in 64 KiB chunks, which fill the output's large folios only where they start on their boundaries,
# as `cp`'s copy from offset 0 does. So widen splits each copy where the output reaches its next
# 2 MiB boundary (README, ext4: 1.24 x cp's time before, 0.94 x after): every long copy starts there,
# on one thread or several (a .pt's records), and the bytes are those written through a pipe.
@pytest.mark.host_only("traces this build's CLI with strace")
@pytest.mark.parametrize("ext,threads", [("safetensors", "1"), ("safetensors", "2"), ("pt", "2")])
def test_long_copies_start_on_the_outputs_2_mib_boundaries(tmp_path, ext, threads):
    if not shutil.which("strace"):
        pytest.skip("strace is missing (scripts/setup.sh installs it)")
    st, pt = make_inputs(tmp_path)
    src = st if ext == "safetensors" else pt
    out, log = tmp_path / f"out.{ext}", tmp_path / "trace"
    args = ["apply", str(src), "-t", "conv1.weight", "--to", "4", "--no-fsync", "--threads", threads]
    env = cli_env()
    if "ASAN_OPTIONS" in env:  # LeakSanitizer cannot run under ptrace; the other runs check leaks
        env["ASAN_OPTIONS"] = env["ASAN_OPTIONS"].replace("detect_leaks=1", "detect_leaks=0")
    traced = subprocess.run(["strace", "-f", "-qq", "-e", "trace=copy_file_range,ioctl", "-o", str(log), WIDEN,
                             *args, "-o", str(out)], env=env, capture_output=True, text=True)
    if traced.returncode and "ptrace" in traced.stderr:
        pytest.skip(f"strace cannot trace here: {traced.stderr.strip().splitlines()[0]}")
    assert traced.returncode == 0, traced.stderr
    trace = log.read_text()
    if re.search(r"FICLONERANGE.*\) = 0$", trace, re.M):
        pytest.skip(f"the file system under {tmp_path} clones")
    if not re.search(r"copy_file_range\(.*\) = [1-9]", trace):
        pytest.skip(f"the kernel does not copy between files under {tmp_path}")
    calls = [(int(at), int(n)) for at, n in
             re.findall(r"copy_file_range\(\d+, \[\d+(?: => \d+)?\], \d+, \[(\d+)(?: => \d+)?\], (\d+), 0\) = \2",
                        trace)]
    long = [(at, n) for at, n in calls if n > 2 * MiB + 4096]
    assert sum(n for _, n in calls) >= BODY and long, trace[:2000]
    assert [at for at, _ in long if at % (2 * MiB)] == [], trace[:2000]
    # the body is one run (safetensors) or two records (.pt) of at most 64 MiB, one step each: at most
    # one partial block and one stretch up to a 2 MiB boundary in front of each
    assert sum(n for _, n in calls) - sum(n for _, n in long) <= 2 * (4096 + 2 * MiB)
    piped = subprocess.run([WIDEN, *args, "-o", "-"], env=cli_env(), check=True, capture_output=True).stdout
    assert out.read_bytes() == piped
