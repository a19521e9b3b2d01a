#!/usr/bin/python3
"""Streaming benchmark: widen apply on a large synthetic safetensors file beside `cp` of the same
file, in the same run. Page cache warm (one untimed read first), --no-fsync, median of RUNS runs
interleaved; before each timed command its output is removed and `sync` runs (untimed), so that no
command pays for the previous one's write-back. Wall time and peak RSS from /usr/bin/time. Prints a
Markdown table.

    bench/stream_bench.py [SIZE_MIB=2560] [RUNS=5] [DIR=/tmp]
"""
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import synthetic  # noqa: E402

WIDEN = os.environ.get("WIDEN", os.path.join(HERE, "..", "build", "release", "widen"))


def timed(cmd):
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    wall, rss = proc.stderr.strip().split("\n")[-1].split()
    return float(wall), int(rss)


def print_table(results, baseline):
    """Markdown: each command's median wall time, its ratio to the baseline's, its peak RSS."""
    base = statistics.median(w for w, _ in results[baseline])
    print()
    print(f"| command | median wall (s) | ratio to {baseline} | peak RSS (MiB) |")
    print("|---|---|---|---|")
    for name, samples in results.items():
        wall = statistics.median(w for w, _ in samples)
        rss = max(r for _, r in samples) / 1024
        print(f"| {name} | {wall:.2f} | {wall / base:.2f} | {rss:.1f} |")


def main():
    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 2560
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    folder = sys.argv[3] if len(sys.argv) > 3 else "/tmp"
    src = os.path.join(folder, "widen-bench-in.safetensors")
    out = os.path.join(folder, "widen-bench-out.safetensors")
    copy = os.path.join(folder, "widen-bench-cp.safetensors")
    synthetic.make(src, size_mib << 20)
    size = os.path.getsize(src)
    subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    commands = {
        "cp": ["cp", src, copy],
        "widen apply --to 4 --no-fsync": [WIDEN, "apply", src, "-o", out, "--to", "4", "--no-fsync", "--force",
                                          "--no-progress"],
        "widen verify": [WIDEN, "verify", src, out],
        "widen hash": [WIDEN, "hash", src],
    }
    results = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():  # interleaved, so drift hits every command alike
            if name == "cp" and os.path.exists(copy):
                os.unlink(copy)
            if name.startswith("widen apply") and os.path.exists(out):
                os.unlink(out)
            subprocess.run(["sync"], check=True)
            results[name].append(timed(cmd))
    print(f"file: {size / 2**30:.2f} GiB synthetic safetensors ({size:,} bytes), median of {runs} runs, "
          f"{os.cpu_count()} CPUs")
    print_table(results, "cp")
    for path in (src, out, copy):
        if os.path.exists(path):
            os.unlink(path)


if __name__ == "__main__":
    main()
