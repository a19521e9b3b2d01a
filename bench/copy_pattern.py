#!/usr/bin/python3
"""Where the time of a widen apply on a file system that copies (ext4) goes, beside `cp`: widen moves
the untouched bytes with the same in-kernel copy (`copy_file_range`) as `cp`, but at other offsets.
This replays widen's copies without widen, so that the cost of the offsets and the cost of widen's
own work can be told apart. Measured in one run, each command RUNS times in an order shuffled per run,
page cache warm, outputs removed and `sync` run (then half a second's pause) before each; medians of
wall time and of system time (the copies are all kernel time):

    cp FILE
    widen apply FILE --to 4 --no-fsync --no-progress
    replay, as widen copies: the output's longest run of untouched tensors, copied from its input
        offset to its output offset in widen's steps (64 MiB), each split at the input's next 4 KiB
        block (where cloning would start) and at the output's next 2 MiB boundary
    replay, not split at 2 MiB: the same, without the second split (widen before it)
    replay, as cp: the same number of bytes from the start of the input to the start of the output,
        at the files' positions (no offsets), in calls as large as the kernel takes, as cp does

    bench/copy_pattern.py [RUNS=9] [FILE=/tmp/vit_h_14.safetensors]

FILE is a safetensors file (torch_bench.py leaves vit_h_14.safetensors in its folder). Environment:
WIDEN (the binary), WIDEN_BASE (another, timed beside it in the same runs: a before/after).
"""
import json
import os
import random
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WIDEN = os.environ.get("WIDEN", os.path.join(HERE, "..", "build", "release", "widen"))
BASE = os.environ.get("WIDEN_BASE")
STEP = 64 << 20
BLOCK = 4096
ALIGN = 2 << 20


def tensors(path):
    """name -> (absolute begin, end) of each tensor's bytes"""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in header.items()}


def longest_untouched_run(src, out):
    """(input offset, output offset, bytes) of the longest run of tensors that lie back to back, with
    the same bytes count, in both files (the run widen copies in one piece)"""
    a, b = tensors(src), tensors(out)
    same = sorted((b[k][0], a[k][0], b[k][1] - b[k][0]) for k in a if k in b and a[k][1] - a[k][0] == b[k][1] - b[k][0]
                  and b[k][1] > b[k][0])
    best, run = (0, 0, 0), None
    for o, i, n in same:
        if run and run[0] + run[2] == o and run[1] + run[2] == i:
            run = (run[0], run[1], run[2] + n)
        else:
            run = (o, i, n)
        if run[2] > best[2]:
            best = (run[1], run[0], run[2])
    return best


def replay(src, dst, s, d, n, step, split):
    """copy_file_range of n bytes from src offset s to dst offset d, in steps of `step`, each split
    at the input's next 4 KiB block and, with `split`, at the output's next multiple of 2 MiB; with
    step 0, n bytes from the files' positions"""
    i = os.open(src, os.O_RDONLY)
    o = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    while not step and n > 0:
        c = os.copy_file_range(i, o, n)
        if c <= 0:
            sys.exit(f"copy_file_range returned {c}")
        n -= c
    at = 0
    while at < n:
        m = min(step, n - at)
        head = min((-(s + at)) % BLOCK, m)
        lead = min((-(d + at + head)) % ALIGN, m - head) if split else 0
        for a, length in ((at, head), (at + head, lead), (at + head + lead, m - head - lead)):
            done = 0
            while done < length:
                c = os.copy_file_range(i, o, length - done, s + a + done, d + a + done)
                if c <= 0:
                    sys.exit(f"copy_file_range returned {c}")
                done += c
        at += m
    os.close(i)
    os.close(o)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--replay":
        src, dst, *nums = sys.argv[2:]
        s, d, n, step, split = (int(x) for x in nums)
        replay(src, dst, s, d, n, step, split)
        return
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    src = sys.argv[2] if len(sys.argv) > 2 else "/tmp/vit_h_14.safetensors"
    folder = tempfile.mkdtemp(prefix="copy-pattern-", dir=os.path.dirname(os.path.abspath(src)))
    out = os.path.join(folder, "out")
    widen = [WIDEN, "apply", src, "-o", out + ".safetensors", "--to", "4", "--no-fsync", "--no-progress"]
    subprocess.run(widen, check=True)
    s, d, n = longest_untouched_run(src, out + ".safetensors")
    os.unlink(out + ".safetensors")
    me = [sys.executable, os.path.abspath(__file__), "--replay", src, out]
    commands = {
        "cp": ["cp", src, out],
        "widen apply --to 4": widen,
        **({"widen apply --to 4 (WIDEN_BASE)": [BASE] + widen[1:]} if BASE else {}),
        "replay: as widen copies": me + [str(s), str(d), str(n), str(STEP), "1"],
        "replay: not split at 2 MiB (widen before)": me + [str(s), str(d), str(n), str(STEP), "0"],
        "replay: as cp (from the start, at the files' positions)": me + ["0", "0", str(n), "0", "0"],
    }
    results = {k: [] for k in commands}
    order = random.Random(0)
    subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)
    for _ in range(runs):
        names = list(commands)
        order.shuffle(names)
        for name in names:
            for p in (out, out + ".safetensors"):
                if os.path.exists(p):
                    os.unlink(p)
            subprocess.run(["sync"], check=True)
            time.sleep(0.5)
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
            t = time.perf_counter()
            subprocess.run(commands[name], check=True)
            wall = time.perf_counter() - t
            results[name].append((wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime - before))
    for p in (out, out + ".safetensors"):
        if os.path.exists(p):
            os.unlink(p)
    os.rmdir(folder)
    print(f"{os.path.basename(src)}: the longest untouched run is {n / 1e9:.2f} GB, input offset {s}, output offset "
          f"{d} (congruent mod 4096: {(d - s) % BLOCK == 0}); median of {runs} runs in shuffled order, "
          f"{os.cpu_count()} CPUs; ratios to cp")
    print()
    print("| command | median wall (s) | wall / cp | median system time (s) | system / cp |")
    print("|---|---|---|---|---|")
    wall0 = statistics.median(w for w, _ in results["cp"])
    sys0 = statistics.median(s for _, s in results["cp"])
    for name, samples in results.items():
        w = statistics.median(x for x, _ in samples)
        st = statistics.median(y for _, y in samples)
        print(f"| {name} | {w:.3f} | {w / wall0:.2f} | {st:.3f} | {st / sys0:.2f} |")


if __name__ == "__main__":
    main()
