#!/usr/bin/python3
"""Runs the kernel benchmarks (build/release/widen_bench) with repetitions in random interleaving and
prints a Markdown table of each kernel's bytes moved (read + written) per second as a ratio to memcpy
of the same output, measured in the same run. Medians of the repetitions.

    bench/kernel_table.py [REPETITIONS=5] [MIN_TIME=0.1]      or      bench/kernel_table.py --json FILE
"""
import json
import os
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "release", "widen_bench")
TARGET = 0.95


def run(repetitions, min_time):
    out = subprocess.run([BENCH, f"--benchmark_repetitions={repetitions}", "--benchmark_enable_random_interleaving=true",
                          f"--benchmark_min_time={min_time}", "--benchmark_report_aggregates_only=true",
                          "--benchmark_format=json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--json":
        doc = json.load(open(sys.argv[2]))
    else:
        doc = run(int(sys.argv[1]) if len(sys.argv) > 1 else 5, sys.argv[2] if len(sys.argv) > 2 else "0.1")
    rates = {}
    for b in doc["benchmarks"]:
        if b.get("aggregate_name") == "median" and "bytes_per_second" in b:
            kernel, case = b["run_name"].split("/", 1)
            rates.setdefault(case, {})[kernel] = b["bytes_per_second"]
    kernels = sorted({k for r in rates.values() for k in r if k.startswith("widen_")},
                     key=lambda k: (["scalar", "avx2", "avx512", "neon"].index(k.split("_")[1]), k))
    peers = [k for k in ("naive", "xnnpack") if any(k in r for r in rates.values())]
    ctx = doc.get("context", {})
    print(f"{ctx.get('num_cpus', '?')} CPUs at {ctx.get('mhz_per_cpu', '?')} MHz; medians of the repetitions; "
          f"ratios to memcpy of the output (bytes read + written per second); **bold**: an AVX2/AVX-512 "
          f"figure below {TARGET}")
    print()
    print("| case | memcpy GB/s | " + " | ".join(peers + [k.replace("widen_", "") for k in kernels]) + " |")
    print("|---|---|" + "---|" * (len(peers) + len(kernels)))
    misses = []
    for case in sorted(rates, key=lambda c: (c.startswith("cast"), c)):
        r = rates[case]
        base = r["memcpy"]
        cells = []
        for k in peers + kernels:
            if k not in r:
                cells.append("")
                continue
            ratio = r[k] / base
            simd = k.startswith("widen_avx")
            cells.append(f"**{ratio:.2f}**" if simd and ratio < TARGET else f"{ratio:.2f}")
        best = {isa: max((r[k] / base for k in r if k.startswith(f"widen_{isa}_")), default=None)
                for isa in ("avx2", "avx512")}
        misses += [f"{case} {isa} best {v:.2f}" for isa, v in best.items() if v is not None and v < TARGET]
        print(f"| {case} | {base / 1e9:.1f} | " + " | ".join(cells) + " |")
    print()
    print("target (>= %.2f x memcpy, best store mode) missed by: %s" % (TARGET, "; ".join(misses) if misses else "none"))


if __name__ == "__main__":
    main()
