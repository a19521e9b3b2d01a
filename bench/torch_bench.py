#!/usr/bin/python3
"""File-to-file benchmark on a real backbone: torchvision's vit_h_14 (random init, about 2.5 GB),
saved with torch.save as .pt and converted to .safetensors. Measured in the same run, each command
RUNS times, in an order shuffled per run, page cache warm, outputs removed and `sync` run (then half a
second's pause) before each timed command, wall time and peak RSS from /usr/bin/time; medians:

    cp of each input · the PyTorch recipe (load, build the 4-channel conv_proj weight, save) · widen
    apply --to 4 --no-fsync for pt -> pt, safetensors -> safetensors, pt -> safetensors · widen apply
    with fsync against cp followed by sync

    bench/torch_bench.py [RUNS=3] [DIR=/tmp]
    bench/torch_bench.py --growth 1,4,16 [RUNS=3] [DIR=/tmp]   synthetic safetensors of 1, 4, 16 GiB
    bench/torch_bench.py --threads 1,2,4,8,16 [RUNS=3] [DIR=/tmp]
        vit_h_14 with --threads N: pt -> pt --to 4 (copy-bound), and every tensor through the kernels:
        pt and safetensors --cast bf16, an .npz of it (made by widen) --cast f16; beside cp; with
        WIDEN_BASE set, the cast rows of that binary too, interleaved in the same run (a before/after)

Environment: WIDEN (the binary), WIDEN_BASE (another, for --threads), PYTHON (a python3 with torch and
torchvision), TIME (GNU time).
"""
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WIDEN = os.environ.get("WIDEN", os.path.join(HERE, "..", "build", "release", "widen"))
PY = os.environ.get("PYTHON", "/usr/bin/python3")
TIME = os.environ.get("TIME", "/usr/bin/time")
BASE = os.environ.get("WIDEN_BASE")

RECIPE = """
import sys, torch
sd = torch.load(sys.argv[1])
w = sd["conv_proj.weight"]
new = torch.zeros(w.shape[0], 4, *w.shape[2:], dtype=w.dtype)
new[:, :3] = w
sd["conv_proj.weight"] = new
torch.save(sd, sys.argv[2])
"""

MAKE = """
import sys, torch, torchvision
torch.manual_seed(0)
torch.save(torchvision.models.vit_h_14().state_dict(), sys.argv[1])
"""


def timed(cmd, shell=False):
    full = [TIME, "-f", "%e %M", "sh", "-c", cmd] if shell else [TIME, "-f", "%e %M", *cmd]
    proc = subprocess.run(full, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {cmd}\n{proc.stderr[-2000:]}")
    wall, rss = proc.stderr.strip().split("\n")[-1].split()
    return float(wall), int(rss)


def measure(commands, outputs, runs):
    """Each run times every command once, in an order shuffled per run (seeded): on a VM whose disk
    discards and writes back the previous command's 2.5 GB in the background, a fixed order would
    charge that to whichever command follows the heaviest one."""
    results = {name: [] for name in commands}
    order = random.Random(0)
    for _ in range(runs):
        names = list(commands)
        order.shuffle(names)
        for name in names:
            cmd = commands[name]
            for path in outputs:
                if os.path.exists(path):
                    os.unlink(path)
            subprocess.run(["sync"], check=True)
            time.sleep(0.5)
            results[name].append(timed(cmd, shell=isinstance(cmd, str)))
    return results


def table(results, base, note, label="cp", bases=None):
    """bases: a row's own baseline row, where it is not `base`"""
    print(note)
    print()
    print(f"| command | median wall (s) | ratio to {label} | peak RSS (MiB) |")
    print("|---|---|---|---|")
    median = {name: statistics.median(w for w, _ in samples) for name, samples in results.items()}
    for name, samples in results.items():
        b = median[(bases or {}).get(name, base)]
        print(f"| {name} | {median[name]:.2f} | {median[name] / b:.2f} | {max(r for _, r in samples) / 1024:.1f} |")
    print()


def vit_files(folder):
    pt = os.path.join(folder, "vit_h_14.pt")
    st = os.path.join(folder, "vit_h_14.safetensors")
    if not os.path.exists(pt):
        subprocess.run([PY, "-c", MAKE, pt], check=True)
    if not os.path.exists(st):
        subprocess.run([WIDEN, "apply", pt, "-o", st, "--no-progress"], check=True)
    return pt, st


def main_threads(counts, runs, folder):
    pt, st = vit_files(folder)
    npz = os.path.join(folder, "vit_h_14.npz")
    if not os.path.exists(npz):
        subprocess.run([WIDEN, "apply", st, "-o", npz, "--no-progress"], check=True)
    outs = [os.path.join(folder, n) for n in ("threads-cp", "threads-out.pt", "threads-out.safetensors",
                                              "threads-cast.pt", "threads-cast.npz")]
    commands = {"cp (.pt)": ["cp", pt, outs[0]]}
    rows = [("pt -> pt --to 4", pt, outs[1], ["--to", "4"], False),
            ("pt --cast bf16", pt, outs[3], ["--cast", "bf16"], True),
            ("safetensors --cast bf16", st, outs[2], ["--cast", "bf16"], True),
            ("npz --cast f16", npz, outs[4], ["--cast", "f16"], True)]
    for label, src, out, args, with_base in rows:
        for n in counts:
            for prefix, binary in [("", WIDEN)] + ([("(WIDEN_BASE) ", BASE)] if BASE and with_base else []):
                commands[f"{prefix}{label}, --threads {n}"] = [binary, "apply", src, "-o", out, *args, "--no-fsync",
                                                              "--no-progress", "--threads", str(n)]
    subprocess.run(["cat", pt, st], stdout=subprocess.DEVNULL, check=True)
    results = measure(commands, outs, runs)
    table(results, "cp (.pt)", f"vit_h_14 with --threads N, median of {runs} runs, {os.cpu_count()} CPUs; ratios to "
          "`cp` of the .pt (the bf16 output is half the size)")
    for p in outs:
        if os.path.exists(p):
            os.unlink(p)


def main_vit(runs, folder):
    pt, st = vit_files(folder)
    out = {k: os.path.join(folder, f"bench-out.{k}") for k in ("cp", "cpst", "recipe", "pt", "st", "ptst", "fsync",
                                                                 "cpsync")}
    commands = {
        "cp (.pt)": ["cp", pt, out["cp"]],
        "cp (.safetensors)": ["cp", st, out["cpst"]],
        "PyTorch recipe (.pt -> .pt)": [PY, "-c", RECIPE, pt, out["recipe"]],
        "widen .pt -> .pt": [WIDEN, "apply", pt, "-o", out["pt"] + ".pt", "--to", "4", "--no-fsync", "--no-progress"],
        "widen .safetensors -> .safetensors": [WIDEN, "apply", st, "-o", out["st"] + ".safetensors", "--to", "4",
                                               "--no-fsync", "--no-progress"],
        "widen .pt -> .safetensors": [WIDEN, "apply", pt, "-o", out["ptst"] + ".safetensors", "--to", "4",
                                      "--no-fsync", "--no-progress"],
        "cp + sync (.safetensors)": f"cp {st} {out['cpsync']} && sync",
        "widen with fsync (.safetensors)": [WIDEN, "apply", st, "-o", out["fsync"] + ".safetensors", "--to", "4",
                                            "--no-progress"],
    }
    paths = list(out.values()) + [out[k] + ext for k in ("pt", "st", "ptst", "fsync") for ext in (".pt", ".safetensors")]
    subprocess.run(["cat", pt, st], stdout=subprocess.DEVNULL, check=True)
    results = measure(commands, paths, runs)
    size = os.path.getsize(pt)
    table(results, "cp (.pt)", f"vit_h_14 (torchvision, random init): {size / 1e9:.2f} GB .pt, median of {runs} runs in "
          f"shuffled order, {os.cpu_count()} CPUs; ratios to `cp` of the same input file (the fsync rows: to `cp` "
          f"and `sync`)",
          bases={"cp (.safetensors)": "cp (.safetensors)", "widen .safetensors -> .safetensors": "cp (.safetensors)",
                 "cp + sync (.safetensors)": "cp + sync (.safetensors)",
                 "widen with fsync (.safetensors)": "cp + sync (.safetensors)"})
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)


def main_growth(sizes, runs, folder):
    sys.path.insert(0, HERE)
    import synthetic
    print(f"growth: synthetic safetensors, `widen apply --to 4 --no-fsync` beside `cp`, median of {runs} runs")
    print()
    print("| size (GiB) | cp (s) | widen (s) | widen / cp | widen s per GiB | widen peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for gib in sizes:
        src = os.path.join(folder, f"growth-{gib}.safetensors")
        synthetic.make(src, gib << 30)
        outs = [os.path.join(folder, "growth-cp"), os.path.join(folder, "growth-out.safetensors")]
        res = measure({"cp": ["cp", src, outs[0]],
                       "widen": [WIDEN, "apply", src, "-o", outs[1], "--to", "4", "--no-fsync", "--no-progress"]},
                      outs, runs)
        cp = statistics.median(w for w, _ in res["cp"])
        w = statistics.median(x for x, _ in res["widen"])
        rss = max(r for _, r in res["widen"]) / 1024
        print(f"| {gib} | {cp:.2f} | {w:.2f} | {w / cp:.2f} | {w / gib:.2f} | {rss:.1f} |")
        for p in outs + [src]:
            if os.path.exists(p):
                os.unlink(p)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--threads":
        counts = [int(x) for x in (args[1] if len(args) > 1 else "1,2,4,8,16").split(",")]
        main_threads(counts, int(args[2]) if len(args) > 2 else 3, args[3] if len(args) > 3 else "/tmp")
    elif args and args[0] == "--growth":
        sizes = [int(x) for x in (args[1] if len(args) > 1 else "1,4,16").split(",")]
        main_growth(sizes, int(args[2]) if len(args) > 2 else 3, args[3] if len(args) > 3 else "/tmp")
    else:
        main_vit(int(args[0]) if args else 3, args[1] if len(args) > 1 else "/tmp")
