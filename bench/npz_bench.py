#!/usr/bin/python3
"""Compressed .npz benchmark: widen apply on a large `np.savez_compressed` archive (a conv stem
`stem/weight` [64,3,7,7] F32 plus 64 MiB F32 blocks of normal weights, the 3-channel stem widened to
4 channels) beside, in the same run, `unzip -p` of the same archive (zlib inflating the same members,
the floor for reading them) and the NumPy recipe (np.load every array, widen the stem, write it again
with np.savez_compressed). Page cache warm, --no-fsync, median of RUNS runs interleaved; before each
timed command its output is removed and `sync` runs (untimed). Wall time and peak RSS from
/usr/bin/time. widen inflates into an unlinked file in $TMPDIR (default /tmp), which should be on a
disk, not a tmpfs, for the memory figures to mean what they say. Prints a Markdown table.

    bench/npz_bench.py [SIZE_MIB=2048] [RUNS=3] [DIR=/tmp] [--no-numpy]
"""
import os
import statistics
import subprocess
import sys
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from stream_bench import print_table, timed  # noqa: E402

WIDEN = os.environ.get("WIDEN", os.path.join(HERE, "..", "build", "release", "widen"))
BLOCK = 4096 * 4096  # F32 elements of one block

RECIPE = """
import sys
import numpy as np
src, out = sys.argv[1], sys.argv[2]
with np.load(src) as z:
    arrays = {name: z[name] for name in z.files}
w = arrays["stem/weight"]
arrays["stem/weight"] = np.concatenate([w, np.zeros_like(w[:, :1])], axis=1)
np.savez_compressed(out, **arrays)
"""


def make(path, size_bytes, seed=0):
    """Writes the archive as np.savez_compressed does (zipfile, ZIP_DEFLATED at zlib's default
    level, ZIP64 members, each written by np.lib.format.write_array), one member at a time so that
    building it takes little memory. Weights: normal F32, std 0.02, which deflate shrinks by about 8 %
    (full-precision random weights; bf16-trained ones compress about 2 : 1, but take zlib 5 times
    longer to build)."""
    rng = np.random.default_rng(seed)
    stem = (rng.standard_normal((64, 3, 7, 7)) * 0.02).astype(np.float32)
    block = (rng.standard_normal(BLOCK) * 0.02).astype(np.float32).reshape(4096, 4096)
    blocks = max(1, int(size_bytes // (block.nbytes / 1.08)))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as z:
        with z.open("stem/weight.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, stem)
        for i in range(blocks):
            with z.open(f"blocks/{i:04d}/weight.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.roll(block, i, axis=0))  # no two members alike
    return blocks


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    numpy_recipe = "--no-numpy" not in sys.argv
    size_mib = int(args[0]) if args else 2048
    runs = int(args[1]) if len(args) > 1 else 3
    folder = args[2] if len(args) > 2 else "/tmp"
    src = os.path.join(folder, "widen-bench-in.npz")
    out = os.path.join(folder, "widen-bench-out.safetensors")
    recipe_out = os.path.join(folder, "widen-bench-recipe.npz")
    blocks = make(src, size_mib << 20)
    size = os.path.getsize(src)
    inflated = blocks * BLOCK * 4 + 64 * 3 * 7 * 7 * 4
    subprocess.run(["cat", src], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    commands = {
        "unzip -p > /dev/null": ["sh", "-c", f"unzip -p '{src}' > /dev/null"],
        "widen apply --to 4 (.safetensors) --no-fsync": [WIDEN, "apply", src, "-o", out, "-t", "stem/weight", "--axis",
                                                         "1", "--to", "4", "--no-fsync", "--force", "--no-progress"],
        "widen verify": [WIDEN, "verify", src, out],
        "widen hash": [WIDEN, "hash", src],
    }
    if numpy_recipe:
        commands["NumPy: np.load + np.savez_compressed"] = [sys.executable, "-c", RECIPE, src, recipe_out]
    results = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():  # interleaved, so drift hits every command alike
            for path in (out, recipe_out):
                if name.startswith(("widen apply", "NumPy")) and os.path.exists(path):
                    os.unlink(path)
            subprocess.run(["sync"], check=True)
            results[name].append(timed(cmd))
    print(f"file: {size / 2**30:.2f} GiB np.savez_compressed archive ({size:,} bytes; {inflated / 2**30:.2f} GiB "
          f"inflated, {blocks + 1} members), median of {runs} runs, {os.cpu_count()} CPUs, "
          f"TMPDIR={os.environ.get('TMPDIR', '/tmp')}")
    print_table(results, "unzip -p > /dev/null")
    if numpy_recipe:
        recipe = statistics.median(w for w, _ in results["NumPy: np.load + np.savez_compressed"])
        apply = statistics.median(w for w, _ in results["widen apply --to 4 (.safetensors) --no-fsync"])
        print(f"\nwiden apply / NumPy recipe: {apply / recipe:.2f}")
    for path in (src, out, recipe_out):
        if os.path.exists(path):
            os.unlink(path)


if __name__ == "__main__":
    main()
