#!/usr/bin/python3
"""Model-folder benchmark: widen apply on a synthetic sharded model folder (SHARDS safetensors shards
with model.safetensors.index.json, config.json, preprocessor_config.json; the 3-channel stem in the
second shard) beside `cp -r` of the same folder, in the same run. Page cache warm (one untimed read
first), --no-fsync, median of RUNS runs interleaved; before each timed command its output is removed
and `sync` runs (untimed). Wall time and peak RSS from /usr/bin/time. Prints a Markdown table.

    bench/folder_bench.py [SIZE_MIB=8192] [SHARDS=4] [RUNS=3] [DIR=/tmp]
"""
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import synthetic  # noqa: E402
from stream_bench import WIDEN, print_table, timed  # noqa: E402


def make_folder(folder, size_mib, shards):
    os.makedirs(folder)
    weight_map, total, first = {}, 0, 0
    for k in range(shards):
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        _, names = synthetic.make(os.path.join(folder, name), (size_mib << 20) // shards, seed=k, first_block=first,
                                  with_stem=k == 1)
        first += len(names)
        for n in names:
            weight_map[n] = name
        total += os.path.getsize(os.path.join(folder, name))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        f.write(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n")
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(json.dumps({"model_type": "vit", "num_channels": 3, "patch_size": 14}, indent=2, sort_keys=True) + "\n")
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        f.write(json.dumps({"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}, indent=2,
                           sort_keys=True) + "\n")


def main():
    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
    shards = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    folder = sys.argv[4] if len(sys.argv) > 4 else "/tmp"
    src, out, copy = (os.path.join(folder, f"widen-folder-bench-{x}") for x in ("in", "out", "cp"))
    for path in (src, out, copy):
        shutil.rmtree(path, ignore_errors=True)
    make_folder(src, size_mib, shards)
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
    subprocess.run(["sh", "-c", f"cat {src}/* > /dev/null"], check=True)  # warm the page cache
    commands = {
        "cp -r": ["cp", "-r", src, copy],
        "widen apply --to 4 --no-fsync": [WIDEN, "apply", src, "-o", out, "--to", "4", "--no-fsync", "--no-progress"],
        "widen verify": [WIDEN, "verify", src, out],
    }
    results = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            for path, owner in ((copy, "cp -r"), (out, "widen apply")):
                if name.startswith(owner) and os.path.exists(path):
                    shutil.rmtree(path)
            subprocess.run(["sync"], check=True)
            results[name].append(timed(cmd))
    print(f"folder: {size / 2**30:.2f} GiB in {shards} synthetic safetensors shards ({size:,} bytes), median of {runs} "
          f"runs, {os.cpu_count()} CPUs")
    print_table(results, "cp -r")
    for path in (src, out, copy):
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
