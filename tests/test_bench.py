"""widen-bench (built with WIDEN_BENCH, the release preset): its flags, its outputs, and that what it times
is right: every contender's output against the scalar kernel's (--check), and the scalar kernel's on the
benchmark's own input against NumPy (--dump). Tiny shapes and a tiny min time; nothing here asserts on time."""
import json
import os
import subprocess

import numpy as np
import pytest

from reference import BUILD, cli_env, from_dtype_bits, to_dtype_bits

BENCH = os.path.join(BUILD, "widen-bench")
if not os.path.exists(BENCH):
    pytest.skip(f"{BENCH} is not built (WIDEN_BENCH=ON, the release preset, builds it)", allow_module_level=True)

FAST = ["--benchmark_min_time=0.0001", "--benchmark_repetitions=2"]
ISAS = ["scalar", "avx2", "avx512", "neon"]


def bench(*args, check=None):
    p = subprocess.run([BENCH, *args], capture_output=True, text=True, env=cli_env(), timeout=120)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def usable():
    line = next(l for l in bench("--version", check=0).stdout.splitlines() if l.startswith("usable:"))
    return line.split()[1:]


def test_help_and_version():
    p = bench("--help", check=0)
    for flag in ("--shape", "--axis", "--to", "--map", "--dtype", "--cast", "--isa", "--store", "--threads", "--suite",
                 "--json", "--markdown", "--check", "--dump", "--benchmark_format", "--benchmark_out",
                 "--benchmark_repetitions"):
        assert flag in p.stdout, flag
    assert p.stderr == ""
    v = bench("--version", check=0).stdout.splitlines()
    assert v[0].startswith("widen-bench ")
    assert "scalar" in usable()


@pytest.mark.parametrize("args", [
    ["--bogus"], ["--shape"], [], ["--shape", "2,x"], ["--shape", "2,0,3"], ["--shape", "2,3", "--axis", "5"],
    ["--shape", "2,3", "--isa", "sse9"], ["--shape", "2,3", "--store", "fast"], ["--shape", "2,3", "--threads", "0"],
    ["--shape", "2,3", "--dtype", "q7"], ["--shape", "2,3", "--cast", "u8"], ["--shape", "2,3", "--dtype", "u8", "--cast", "f32"],
    ["--shape", "2,3", "--to", "2"], ["--shape", "2,3", "--map", "0,7"], ["--shape", "2,3", "--map", "0,1", "--to", "4"],
    ["--shape", "2,3", "--at", "1"], ["--suite", "--shape", "2,3"], ["--shape", "2,3", "--json", "--markdown"],
    ["--shape", "2,3", "--json", "--benchmark_format=json"], ["--shape", "2,3", "--benchmark_repetitions=abc"],
    ["--shape", "2,3", "--benchmark_bogus=1"], ["--shape", "2,3", "operand"], ["--suite", "--dump", "x"],
], ids=lambda a: " ".join(a) or "nothing")
def test_bad_flags_exit_2_with_one_line(args):
    p = bench(*args, check=2)
    assert p.stdout == ""
    assert len(p.stderr.splitlines()) == 1 and p.stderr.startswith("widen-bench: error: "), p.stderr


def test_an_isa_this_cpu_lacks_is_refused_by_name():
    missing = [i for i in ISAS if i not in usable()]
    if not missing:
        pytest.skip("this CPU runs every ISA")
    p = bench("--shape", "2,3,4", "--to", "4", "--isa", f"scalar,{missing[0]}", *FAST, check=2)
    assert missing[0] in p.stderr and "cannot run" in p.stderr


def widen_rows(doc):
    return [r for r in doc["results"] if r["kernel"] in ISAS]


def test_json_summary_has_every_usable_isa_and_the_peers():
    doc = json.loads(bench("--shape", "2,3,4,5", "--to", "4", "--dtype", "bf16", "--json", *FAST, check=0).stdout)
    assert doc["repetitions"] == 2 and doc["threads"] == 1
    cases = {r["case"] for r in doc["results"]}
    assert cases == {"2x3x4x5_axis1_to4/BF16"}
    kernels = [r["kernel"] for r in doc["results"]]
    assert kernels[:3] == ["memcpy", "naive", "xnnpack"]
    rows = widen_rows(doc)
    # scalar once (cached), every other usable ISA cached and streaming
    assert sorted((r["kernel"], r["store"]) for r in rows) == sorted(
        [("scalar", "cached")] + [(i, s) for i in usable() if i != "scalar" for s in ("cached", "stream")])
    for r in doc["results"]:
        assert r["input_bytes"] == 2 * 3 * 20 * 2
        assert r["output_bytes"] == 2 * 4 * 20 * 2
        assert r["moved_bytes"] == (2 * r["output_bytes"] if r["kernel"] == "memcpy" else r["input_bytes"] + r["output_bytes"])
        assert r["bytes_per_second"] > 0 and r["cv"] >= 0 and r["repetitions"] == 2
        assert abs(r["output_bytes_per_second"] / r["bytes_per_second"] - r["output_bytes"] / r["moved_bytes"]) < 1e-6
    assert doc["results"][0]["ratio_to_memcpy"] == 1


def test_isa_and_store_selection_and_threads():
    doc = json.loads(bench("--shape", "5,3,7", "--to", "4", "--isa", "scalar", "--store", "auto", "--threads", "3",
                           "--json", *FAST, check=0).stdout)
    rows = widen_rows(doc)
    assert [(r["kernel"], r["store"], r["threads"]) for r in rows] == [("scalar", "cached", 3)]
    assert all(r["case"] == "5x3x7_axis1_to4/F32/threads:3" for r in doc["results"])
    if len(usable()) > 1:
        isa = usable()[1]
        doc = json.loads(bench("--shape", "5,3,7", "--to", "4", "--isa", isa, "--store", "auto", "--json", *FAST,
                               check=0).stdout)
        assert [(r["kernel"], r["store"], r["auto_store"]) for r in widen_rows(doc)] == [(isa, "auto", "cached")]


def test_user_benchmark_flags_override_the_defaults():
    doc = json.loads(bench("--shape", "2,3", "--isa", "scalar", "--json", "--benchmark_min_time=0.0001",
                           "--benchmark_repetitions=3", check=0).stdout)
    assert doc["repetitions"] == 3
    assert all(r["repetitions"] == 3 for r in doc["results"])
    # neither --to nor --map: a copy of the whole tensor, which XNNPACK's pad does not do
    assert [r["kernel"] for r in doc["results"]] == ["memcpy", "naive", "scalar"]


def expected_names(case, with_peers=True):
    names = ["memcpy"] + (["naive", "xnnpack"] if with_peers else [])
    names += ["widen_scalar_cached"] + [f"widen_{i}_{s}" for i in usable() if i != "scalar" for s in ("cached", "stream")]
    return {f"{n}/{case}/real_time" for n in names}


def test_benchmark_format_json_is_google_benchmarks_own(tmp_path):
    p = bench("--shape", "2,3,4,5", "--to", "4", "--dtype", "f16", "--benchmark_format=json", *FAST, check=0)
    doc = json.loads(p.stdout)
    assert "context" in doc and "num_cpus" in doc["context"]
    runs = [b for b in doc["benchmarks"] if b["run_type"] == "iteration"]
    assert {b["name"] for b in runs} == expected_names("2x3x4x5_axis1_to4/F16")
    assert len(runs) == 2 * len(expected_names("2x3x4x5_axis1_to4/F16"))
    assert all(b["bytes_per_second"] > 0 for b in runs)
    assert {b["aggregate_name"] for b in doc["benchmarks"] if b["run_type"] == "aggregate"} >= {"mean", "median", "cv"}
    # the table goes to stderr then
    assert "x memcpy" in p.stderr


def test_benchmark_out_writes_googles_report_beside_the_table(tmp_path):
    out = tmp_path / "gb.json"
    p = bench("--shape", "3,3,2", "--to", "4", "--isa", "scalar", f"--benchmark_out={out}", *FAST, check=0)
    assert "x memcpy" in p.stdout and "widen-bench " in p.stdout.splitlines()[0]
    doc = json.loads(out.read_text())
    assert {b["name"] for b in doc["benchmarks"] if b["run_type"] == "iteration"} == {
        f"{n}/3x3x2_axis1_to4/F32/real_time" for n in ("memcpy", "naive", "xnnpack", "widen_scalar_cached")}


def test_list_tests_and_filter_pass_through():
    p = bench("--shape", "2,3,4", "--to", "4", "--isa", "scalar", "--benchmark_list_tests=true", check=0)
    assert set(p.stdout.split()) == {f"{n}/2x3x4_axis1_to4/F32/real_time"
                                     for n in ("memcpy", "naive", "xnnpack", "widen_scalar_cached")}
    doc = json.loads(bench("--shape", "2,3,4", "--to", "4", "--json", "--benchmark_filter=^(memcpy|widen_scalar)",
                           *FAST, check=0).stdout)
    assert [r["kernel"] for r in doc["results"]] == ["memcpy", "scalar"]


def test_markdown_table():
    p = bench("--shape", "2,3,4", "--to", "4", "--markdown", *FAST, check=0)
    lines = p.stdout.splitlines()
    header = next(l for l in lines if l.startswith("| case |"))
    assert header.split("|")[1:4] == [" case ", " memcpy GB/s ", " naive "]
    assert any(l.startswith("| 2x3x4_axis1_to4/F32 |") for l in lines)
    assert lines[-1].startswith("target (>= 0.95 x memcpy, best store mode) missed by: ")


CHECKS = [
    ("7,3,5", ["--to", "4"], "f32", None),
    ("4,3,9", ["--to", "5", "--at", "1", "--init", "const:0.5"], "bf16", None),
    ("3,5,3", ["--axis", "-1", "--map", "2,zero,0,1*-1.5,const:2"], "f16", "bf16"),
    ("2,3,4,5", ["--map", "2,1,0"], "bf16", "f32"),
    ("1001", [], "f32", "f16"),
    ("6,2,3", ["--axis", "2", "--to", "4"], "u8", None),
    ("6,3,2", ["--to", "4"], "i64", None),
]


@pytest.mark.parametrize("shape,args,dtype,cast", CHECKS, ids=lambda v: str(v))
def test_check_every_contender_against_scalar(shape, args, dtype, cast):
    cmd = ["--shape", shape, *args, "--dtype", dtype, "--store", "all", "--threads", "3", "--check"]
    if cast:
        cmd += ["--cast", cast]
    p = bench(*cmd, check=0)
    lines = p.stdout.splitlines()
    assert lines and all(l.startswith("ok ") for l in lines), p.stdout
    assert sum(l.startswith("ok widen_") for l in lines) == 1 + 3 * (len(usable()) - 1)


NP = {"f32": np.uint32, "f16": np.uint16, "bf16": np.uint16, "u8": np.uint8, "i64": np.uint64}


def numpy_reference(x_bits, dtype, cast, axis, entries):
    """The output from NumPy: channel entries along `axis` (int K, ("scale", K, S), ("const", V), "zero"; None:
    the whole tensor), computed in F32 and rounded once to the output dtype."""
    out_dtype = (cast or dtype).upper()
    computable = dtype in ("f32", "f16", "bf16")
    x = from_dtype_bits(x_bits, dtype.upper()) if computable else None
    if entries is None:  # neither --to nor --map: the whole tensor, cast
        return to_dtype_bits(x, out_dtype) if cast else x_bits
    chans = []
    for e in entries:
        shape = list(x_bits.shape)
        shape[axis] = 1
        if isinstance(e, int):
            c = np.take(x_bits, [e], axis=axis)
            chans.append(c if not cast else to_dtype_bits(np.take(x, [e], axis=axis), out_dtype))
        elif e == "zero":
            chans.append(np.zeros(shape, dtype=NP[cast or dtype]))
        elif e[0] == "scale":
            chans.append(to_dtype_bits(np.take(x, [e[1]], axis=axis) * np.float32(e[2]), out_dtype))
        else:
            chans.append(np.full(shape, to_dtype_bits(np.float32([e[1]]), out_dtype)[0], dtype=NP[cast or dtype]))
    return np.concatenate([np.asarray(c, dtype=NP[cast or dtype]) for c in chans], axis=axis)


DUMPS = [
    ("4,3,5,6", ["--to", "4"], "f32", None, 1, [0, 1, 2, "zero"]),
    ("4,3,9", ["--to", "5", "--at", "1", "--init", "const:0.5"], "bf16", None, 1,
     [("const", 0.5), 0, 1, 2, ("const", 0.5)]),
    ("3,5,3", ["--axis", "-1", "--map", "2,zero,0,1*-1.5,const:2"], "f16", "bf16", 2,
     [2, "zero", 0, ("scale", 1, -1.5), ("const", 2.0)]),
    ("2,3,4,5", ["--map", "2,1,0"], "bf16", "f32", 1, [2, 1, 0]),
    ("6,3,2", ["--to", "4"], "i64", None, 1, [0, 1, 2, "zero"]),
    ("1001", [], "f32", "f16", 0, None),
]


@pytest.mark.parametrize("shape,args,dtype,cast,axis,entries", DUMPS, ids=lambda v: str(v))
def test_dump_scalar_output_matches_numpy(tmp_path, shape, args, dtype, cast, axis, entries):
    prefix = tmp_path / "case"
    cmd = ["--shape", shape, *args, "--dtype", dtype, "--dump", str(prefix), "--isa", "scalar"]
    if cast:
        cmd += ["--cast", cast]
    bench(*cmd, check=0)
    dims = [int(d) for d in shape.split(",")]
    x = np.fromfile(f"{prefix}.in", dtype=NP[dtype]).reshape(dims)
    if dtype in ("f32", "f16", "bf16"):  # the benchmark's input: finite values in [-2, 2)
        v = from_dtype_bits(x, dtype.upper())
        assert np.isfinite(v).all() and (v >= -2).all() and (v < 2).all() and len(np.unique(v)) > 1
    got = np.fromfile(f"{prefix}.out", dtype=NP[cast or dtype])
    want = numpy_reference(x, dtype, cast, axis, entries)
    assert got.size == want.size
    np.testing.assert_array_equal(got, want.reshape(-1))


def test_aggregates_only_still_summarized():
    doc = json.loads(bench("--shape", "4,3,8", "--to", "4", "--isa", "scalar", "--json",
                           "--benchmark_report_aggregates_only=true", *FAST, check=0).stdout)
    assert [r["repetitions"] for r in doc["results"]] == [2, 2, 2, 2]
    assert all(r["bytes_per_second"] > 0 for r in doc["results"])


def test_dump_to_a_folder_that_is_not_there_is_an_io_error(tmp_path):
    p = bench("--shape", "2,3", "--dump", str(tmp_path / "missing" / "case"), check=4)
    assert len(p.stderr.splitlines()) == 1 and "missing/case.in" in p.stderr
