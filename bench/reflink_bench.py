#!/usr/bin/python3
"""Cloning benchmark (issue 15): torchvision's vit_h_14 (random init, about 2.5 GB) on an XFS file
system with reflink, made in a sparse image file and loop-mounted (needs root). Widening
conv_proj.weight to 4 channels, as .pt and as .safetensors, beside `cp --reflink=never` (a full
copy) and `cp --reflink=always` (a clone of the whole file). Each command RUNS times interleaved,
page cache warm, the output removed and `sync` run before each; wall time (a monotonic clock
around the command) and peak RSS (/usr/bin/time), and the file system's used bytes after a `sync`, against before; medians:

    bench/reflink_bench.py [RUNS=5] [DIR=/tmp]

Environment: WIDEN (the binary), PYTHON (a python3 with torch and torchvision), TIME (GNU time).
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from torch_bench import MAKE, PY, TIME, WIDEN  # noqa: E402


def used(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def timed(cmd):
    """Wall time from a monotonic clock around the whole command (GNU time's 10 ms steps are too coarse
    for a clone), peak RSS from GNU time."""
    start = time.perf_counter()
    proc = subprocess.run([TIME, "-f", "%M", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {cmd}\n{proc.stderr[-2000:]}")
    return wall, int(proc.stderr.strip().split("\n")[-1])


def main(runs, folder):
    base = tempfile.mkdtemp(prefix="reflink-", dir=folder)
    image, mount = os.path.join(base, "xfs.img"), os.path.join(base, "mnt")
    os.mkdir(mount)
    with open(image, "wb") as f:
        f.truncate(16 << 30)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", image], check=True)
    subprocess.run(["mount", "-o", "loop", image, mount], check=True)
    try:
        pt, st = os.path.join(mount, "vit_h_14.pt"), os.path.join(mount, "vit_h_14.safetensors")
        subprocess.run([PY, "-c", MAKE, pt], check=True)
        subprocess.run([WIDEN, "apply", pt, "-o", st, "--no-progress"], check=True)
        out = os.path.join(mount, "out")
        commands = {
            "cp --reflink=never (.pt)": ["cp", "--reflink=never", pt, out],
            "cp --reflink=always (.pt)": ["cp", "--reflink=always", pt, out],
            "widen .pt -> .pt": [WIDEN, "apply", pt, "-o", out + ".pt", "-t", "conv_proj.weight", "--to", "4",
                                 "--no-fsync", "--no-progress"],
            "widen .safetensors -> .safetensors": [WIDEN, "apply", st, "-o", out + ".safetensors", "-t",
                                                   "conv_proj.weight", "--to", "4", "--no-fsync", "--no-progress"],
            "widen .pt -> .pt, with fsync": [WIDEN, "apply", pt, "-o", out + ".pt", "-t", "conv_proj.weight", "--to",
                                             "4", "--no-progress"],
        }
        outputs = [out, out + ".pt", out + ".safetensors"]
        subprocess.run(["cat", pt, st], stdout=subprocess.DEVNULL, check=True)
        results = {name: [] for name in commands}
        for _ in range(runs):
            for name, cmd in commands.items():
                for p in outputs:
                    if os.path.exists(p):
                        os.unlink(p)
                subprocess.run(["sync"], check=True)
                before = used(mount)
                wall, rss = timed(cmd)
                subprocess.run(["sync"], check=True)
                results[name].append((wall, rss, used(mount) - before))
        size = os.path.getsize(pt)
        print(f"vit_h_14 (torchvision, random init): {size / 1e9:.2f} GB .pt on XFS (reflink=1, a loop-mounted "
              f"image), median of {runs} runs, {os.cpu_count()} CPUs; ratios to `cp --reflink=never`")
        print()
        print("| command | median wall (s) | ratio to a full copy | disk growth (% of the file) | peak RSS (MiB) |")
        print("|---|---|---|---|---|")
        full = statistics.median(w for w, _, _ in results["cp --reflink=never (.pt)"])
        for name, samples in results.items():
            wall = statistics.median(w for w, _, _ in samples)
            grown = statistics.median(g for _, _, g in samples)
            print(f"| {name} | {wall:.3f} | {wall / full:.3f} | {100 * grown / size:.3f} | "
                  f"{max(r for _, r, _ in samples) / 1024:.1f} |")
        print()
    finally:
        subprocess.run(["umount", mount], check=False)
        os.unlink(image)
        os.rmdir(mount)
        os.rmdir(base)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 5, args[1] if len(args) > 1 else "/tmp")
