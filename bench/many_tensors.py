#!/usr/bin/python3
"""Names, not bytes: a checkpoint of N tiny tensors (a stem conv [8, 3, 3, 3] and N tensors of 4
floats), written with torch.save, read and widened by widen beside torch.load(weights_only=True) of
the same file in the same run, each command RUNS times interleaved, page cache warm; medians of wall
time, peak RSS from /usr/bin/time:

    torch.load(weights_only=True) · widen inspect · widen apply --to 4 (.pt -> .pt, and with a
    manifest) · widen verify --manifest · widen apply to .safetensors

    bench/many_tensors.py [N=100000] [RUNS=5] [DIR=/tmp]

Environment: WIDEN (the binary), PYTHON (a python3 with torch), TIME (GNU time).
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_bench import PY, WIDEN, measure, table  # noqa: E402

MAKE = """
import collections, sys, torch
torch.manual_seed(0)
sd = collections.OrderedDict()
sd["stem.weight"] = torch.randn(8, 3, 3, 3)
for i in range(int(sys.argv[2])):
    sd[f"blocks.{i}.weight"] = torch.randn(4)
torch.save(sd, sys.argv[1])
"""

LOAD = "import sys, torch; torch.load(sys.argv[1], weights_only=True)"


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    folder = sys.argv[3] if len(sys.argv) > 3 else "/tmp"
    src = os.path.join(folder, f"many{n}.pt")
    if not os.path.exists(src):
        subprocess.run([PY, "-c", MAKE, src, str(n)], check=True)
    out, man, st = (os.path.join(folder, f"many{n}_out{x}") for x in (".pt", ".json", ".safetensors"))
    subprocess.run([WIDEN, "apply", src, "-o", out, "--to", "4", "--manifest", man, "--force", "--no-fsync"], check=True)
    commands = {
        "torch.load(weights_only=True)": [PY, "-c", LOAD, src],
        "widen inspect": f"{WIDEN} inspect {src} > /dev/null",
        "widen apply --to 4 (.pt)": [WIDEN, "apply", src, "-o", out + ".2.pt", "--to", "4", "--no-fsync"],
        "widen apply --to 4 --manifest (.pt)": [WIDEN, "apply", src, "-o", out + ".3.pt", "--to", "4", "--no-fsync",
                                                "--manifest", man + ".3"],
        "widen verify --manifest": [WIDEN, "verify", src, out, "--manifest", man],
        "widen apply --to 4 (.safetensors)": [WIDEN, "apply", src, "-o", st, "--to", "4", "--no-fsync"],
    }
    results = measure(commands, [out + ".2.pt", out + ".3.pt", man + ".3", st], runs)
    size = os.path.getsize(src) / 1e6
    table(results, "torch.load(weights_only=True)",
          f"{n + 1} tensors ({size:.1f} MB .pt), median of {runs} runs, {os.cpu_count()} CPUs; ratios to torch.load",
          "torch.load")


if __name__ == "__main__":
    main()
