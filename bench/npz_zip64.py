#!/usr/bin/python3
"""A ZIP64 .npz: one stored member over 4 GiB (sizes and offsets only ZIP64 can hold) beside a conv
stem [64,3,7,7] F32, written as np.savez writes members (zipfile, force_zip64, a version 1.0 .npy
header), in chunks so that building it takes little memory. The stem is widened to 4 channels into
safetensors and into an .npz (which needs ZIP64 records itself), each checked (`widen verify`, and the
stem read back with np.load through zipfile), beside `cp` of the same archive in the same run. Page
cache warm as far as it holds, --no-fsync, median of RUNS interleaved runs, wall time and peak RSS
from /usr/bin/time. Prints a Markdown table.

    bench/npz_zip64.py [MEMBER_MIB=4608] [RUNS=3] [DIR=/tmp]
"""
import io
import os
import subprocess
import sys
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from stream_bench import print_table, timed  # noqa: E402

WIDEN = os.environ.get("WIDEN", os.path.join(HERE, "..", "build", "release", "widen"))
CHUNK = 64 << 20


def make(path, member_bytes):
    rng = np.random.default_rng(0)
    stem = (rng.standard_normal((64, 3, 7, 7)) * 0.02).astype(np.float32)
    elements = member_bytes // 4
    chunk = (rng.standard_normal(CHUNK // 4) * 0.02).astype(np.float32).tobytes()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        with z.open("stem/weight.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, stem)
        with z.open("blocks/big.npy", "w", force_zip64=True) as f:
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                          "shape": (elements,)})
            f.write(header.getvalue())
            left = elements * 4
            while left:
                n = min(left, len(chunk))
                f.write(chunk[:n])
                left -= n
    return stem


def main():
    args = sys.argv[1:]
    member_mib = int(args[0]) if args else 4608
    runs = int(args[1]) if len(args) > 1 else 3
    folder = args[2] if len(args) > 2 else "/tmp"
    src = os.path.join(folder, "widen-zip64-in.npz")
    outs = {"safetensors": os.path.join(folder, "widen-zip64-out.safetensors"),
            "npz": os.path.join(folder, "widen-zip64-out.npz")}
    copy = os.path.join(folder, "widen-zip64-cp.npz")
    stem = make(src, member_mib << 20)
    size = os.path.getsize(src)
    subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)
    commands = {"cp": (copy, ["cp", src, copy])}
    for fmt, out in outs.items():
        commands[f"widen apply --to 4 (.{fmt}) --no-fsync"] = (out, [
            WIDEN, "apply", src, "-o", out, "-t", "stem/weight", "--axis", "1", "--to", "4", "--no-fsync", "--force",
            "--no-progress"])
    results = {name: [] for name in commands}
    for _ in range(runs):
        for name, (target, cmd) in commands.items():
            if os.path.exists(target):
                os.unlink(target)
            subprocess.run(["sync"], check=True)
            results[name].append(timed(cmd))
    for out in outs.values():  # the results hold what they should
        subprocess.run([WIDEN, "verify", src, out], check=True, stdout=subprocess.DEVNULL)
    with np.load(outs["npz"]) as z:
        widened = z["stem/weight"]
        assert widened.shape == (64, 4, 7, 7) and np.array_equal(widened[:, :3], stem) and not widened[:, 3].any()
    with zipfile.ZipFile(outs["npz"]) as z:
        info = z.getinfo("blocks/big.npy")
        assert info.compress_type == zipfile.ZIP_STORED and (info.file_size > 2 ** 32) == (member_mib > 4096)
    print(f"file: {size / 2**30:.2f} GiB np.savez-style archive, a stored member of {member_mib / 1024:.2f} GiB "
          f"(ZIP64), median of {runs} runs, {os.cpu_count()} CPUs; both outputs verified, the .npz read back "
          f"with np.load")
    print_table(results, "cp")
    for path in [src, copy, *outs.values()]:
        if os.path.exists(path):
            os.unlink(path)


if __name__ == "__main__":
    main()
