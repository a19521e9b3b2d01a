"""Every channel map (SPEC §2 --init and --map) against NumPy computing the same thing in fp32 and
rounding once, bit for bit; seeded noise identical across ISAs and threads, with the asked
statistics; verify checks every mode."""
import json

import numpy as np
import pytest

from reference import SCALE, cli_isas, from_dtype_bits, load, run, save, to_dtype_bits

# every ISA the driven CLI can use: scalar, avx2 and avx512 here; scalar and neon for the arm64 CLI under qemu
ISAS = ["scalar"] + cli_isas()
# under qemu (SCALE < 1) verify replays one output in 1/SCALE of test_init_modes_against_numpy's (each in
# turn: every mode and layout is verified in one dtype or another); test_verify_checks_every_mode verifies each
VERIFY_EVERY = max(1, round(1 / SCALE))


def stored(values_f32, dtype):
    """F32 values as stored in dtype (raw bits), and the F32 values they stand for."""
    bits = to_dtype_bits(values_f32, dtype)
    return bits, from_dtype_bits(bits, dtype)


def seq_sum(x, axis):
    """fp32 sum of the channels one after another, as widen does (NumPy's own sum is pairwise)."""
    parts = np.moveaxis(x, axis, 0)
    acc = parts[0].astype(np.float32).copy()
    for p in parts[1:]:
        acc = (acc + p).astype(np.float32)
    return acc


def expected(x, axis, n, mode, at=0):
    """NumPy's version of each mode, in fp32: the output tensor before rounding to the dtype."""
    c = x.shape[axis]
    chan = lambda k: np.take(x, k, axis=axis)
    if mode == "timm":
        if n == 1:
            outs = [seq_sum(x, axis)]
        else:
            scale = np.float32(c / n)
            outs = [chan(i % c) * scale if n != c else chan(i % c) for i in range(n)]
    elif mode == "cyclic":
        outs = [chan(i % c) for i in range(n)]
    else:
        if mode == "mean":
            fill = seq_sum(x, axis) / np.float32(c)
        elif mode.startswith("copy:"):
            fill = chan(int(mode[5:]))
        elif mode.startswith("const:"):
            fill = np.full(chan(0).shape, np.float32(mode[6:]), np.float32)
        else:
            fill = np.zeros(chan(0).shape, np.float32)
        outs = [chan(i - at) if at <= i < at + c else fill for i in range(n)]
    return np.stack([o.astype(np.float32) for o in outs], axis=axis)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_init_modes_against_numpy(tmp_path, dtype):
    rng = np.random.default_rng(21)
    shapes = {"conv": ((16, 3, 5, 5), 1), "hwio": ((3, 3, 3, 8), -2), "lin": ((7, 13), 1), "convT": ((3, 6, 2, 2), 0)}
    tensors, values = {}, {}
    for name, (shape, _) in shapes.items():
        bits, vals = stored(rng.standard_normal(shape).astype(np.float32), dtype)
        tensors[name] = (dtype, bits if dtype != "F16" else bits.view(np.float16))
        values[name] = vals
    path = tmp_path / "in.safetensors"
    save(str(path), tensors)
    cases = [("timm", 4, 0), ("timm", 1, 0), ("timm", 6, 0), ("cyclic", 5, 0), ("mean", 4, 0), ("mean", 5, 1),
             ("copy:1", 4, 0), ("copy:0", 6, 2), ("const:0.3", 4, 1)]
    checked = 0
    for mode, n, at in cases:
        for name, (shape, axis) in shapes.items():
            c = shape[axis]
            if mode.startswith("copy:") and int(mode[5:]) >= c:
                continue
            n_out = n if mode.startswith("timm") or mode == "cyclic" else max(n, c + at)
            out = tmp_path / "o.safetensors"
            args = ["-t", name, "--axis", str(axis), "--to", str(n_out), "--init", mode, "--force"]
            if mode not in ("timm", "cyclic"):
                args += ["--at", str(at)]
            run("apply", path, "-o", out, *args, check=0)
            _, got, _, _ = load(str(out))
            want = to_dtype_bits(expected(values[name], axis, n_out, mode, at), dtype)
            assert got[name][1].tobytes() == want.tobytes(), (mode, name, n_out)
            checked += 1
            if checked % VERIFY_EVERY == 0:
                run("verify", path, out, check=0)


@pytest.mark.parametrize("dtype", ["F32", "BF16"])
def test_map_entries_against_numpy(tmp_path, dtype):
    rng = np.random.default_rng(5)
    bits, x = stored(rng.standard_normal((9, 4, 6)).astype(np.float32), dtype)
    path = tmp_path / "in.safetensors"
    save(str(path), {"w": (dtype, bits)})
    chan = lambda k: x[:, k]
    maps = {
        "2,1,0": [chan(2), chan(1), chan(0)],
        "0*0.5,3*-2,mean,sum,zero,const:7": [chan(0) * np.float32(0.5), chan(3) * np.float32(-2),
                                              seq_sum(x, 1) / np.float32(4), seq_sum(x, 1),
                                              np.zeros_like(chan(0)), np.full_like(chan(0), 7)],
        "0,1,2": [chan(0), chan(1), chan(2)],
        "0,1,2,3,zero,1": [chan(0), chan(1), chan(2), chan(3), np.zeros_like(chan(0)), chan(1)],
    }
    for spec, outs in maps.items():
        out = tmp_path / "o.safetensors"
        run("apply", path, "-o", out, "-t", "w", "--map", spec, "--force", check=0)
        _, got, _, _ = load(str(out))
        assert got["w"][1].tobytes() == to_dtype_bits(np.stack(outs, 1), dtype).tobytes(), spec
        run("verify", path, out, check=0)


def numpy_normal(count, std, seed, index0=0):
    """The generator in NumPy (float64 math): for checking the formula, not the last bit."""
    mask = np.uint64(0xFFFFFFFFFFFFFFFF)

    def mix(x):
        x = x ^ (x >> np.uint64(30))
        x = (x * np.uint64(0xBF58476D1CE4E5B9)) & mask
        x = x ^ (x >> np.uint64(27))
        x = (x * np.uint64(0x94D049BB133111EB)) & mask
        return x ^ (x >> np.uint64(31))
    with np.errstate(over="ignore"):
        key = mix(np.uint64((seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF))
        idx = np.arange(index0, index0 + count, dtype=np.uint64)
        x = mix(idx * np.uint64(0x9E3779B97F4A7C15) + key)
    u1 = ((x >> np.uint64(40)) + np.uint64(1)).astype(np.float64) * 2.0 ** -24
    u2 = ((x >> np.uint64(16)) & np.uint64(0xFFFFFF)).astype(np.float64) * 2.0 ** -24
    return std * np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)


def test_normal_is_reproducible_and_has_the_asked_statistics(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "in.safetensors"
    # 10^7 draws; noise is the costliest thing to emulate (SLEEF's log and cos): under qemu SCALE^2 of them,
    # within bounds 1/SCALE as wide (the same 3 standard errors or more)
    inner = int(5_000_000 * min(1, SCALE) ** 2)
    tolerance = 0.001 / min(1, SCALE)
    save(str(path), {"w": ("F32", rng.standard_normal((2, 1, inner)).astype(np.float32)),
                     "h": ("F16", rng.standard_normal((40, 3, 7, 7)).astype(np.float16))})
    outs = {}
    for isa in ISAS:
        for threads in ("1", "2", "7"):
            out = tmp_path / f"o-{isa}-{threads}.safetensors"
            run("apply", path, "-o", out, "-t", "w", "--to", "2", "--init", "normal:0.5:7", "--threads", threads,
                "--no-fsync", env={"WIDEN_ISA": isa}, check=0)
            outs[(isa, threads)] = out.read_bytes()
            out2 = tmp_path / f"p-{isa}-{threads}.safetensors"
            run("apply", path, "-o", out2, "-t", "h", "--map", "normal:0.02:3,0,normal:1,2,1", "--threads", threads,
                env={"WIDEN_ISA": isa}, check=0)
            outs[("h", isa, threads)] = out2.read_bytes()
    assert len({v for k, v in outs.items() if k[0] != "h"}) == 1
    assert len({v for k, v in outs.items() if k[0] == "h"}) == 1
    _, got, _, _ = load(str(tmp_path / "o-scalar-1.safetensors"))
    noise = got["w"][1][:, 1, :].astype(np.float64)  # 10^7 draws
    assert abs(noise.mean()) < tolerance * 0.5, noise.mean()
    assert abs(noise.std() / 0.5 - 1) < tolerance, noise.std()
    # the documented formula: element index = flat output index, seed 7
    flat = np.arange(2 * 2 * inner).reshape(2, 2, inner)[:, 1, :5000]
    want = np.concatenate([numpy_normal(5000, 0.5, 7, int(row[0])) for row in flat])
    assert np.allclose(got["w"][1][:, 1, :5000].reshape(-1), want, rtol=1e-5, atol=1e-6)
    run("verify", path, tmp_path / "o-scalar-1.safetensors", check=0)
    # a different seed, different noise
    run("apply", path, "-o", tmp_path / "s8.safetensors", "-t", "w", "--to", "2", "--init", "normal:0.5:8", check=0)
    _, other, _, _ = load(str(tmp_path / "s8.safetensors"))
    assert not np.array_equal(other["w"][1][:, 1, :100], got["w"][1][:, 1, :100])


def test_verify_checks_every_mode(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "in.safetensors"
    save(str(path), {"w": ("F32", rng.standard_normal((8, 3, 4, 4)).astype(np.float32))})
    for mode in ("mean", "timm", "cyclic", "normal:0.1:4", "copy:2"):
        out = tmp_path / "o.safetensors"
        run("apply", path, "-o", out, "--to", "4", "--init", mode, "--force", check=0)
        run("verify", path, out, check=0)
        _, _, header, start = load(str(out))
        data = bytearray(out.read_bytes())
        data[start + header["w"]["data_offsets"][0] + 4 * 16 * 3 + 1] ^= 1  # filter 0, channel 3
        out.write_bytes(bytes(data))
        proc = run("verify", path, out)
        assert proc.returncode == 1 and "channel 3" in proc.stderr, (mode, proc.stderr)


def test_impossible_requests_exit_2(tmp_path):
    path = tmp_path / "in.safetensors"
    save(str(path), {"w": ("F32", np.zeros((2, 3, 2), np.float32)), "i": ("I32", np.zeros((2, 3, 2), np.int32))})
    for args in (["-t", "i", "--to", "4", "--init", "mean"], ["-t", "i", "--map", "0*2,1,2"],
                 ["-t", "w", "--to", "4", "--init", "copy:3"], ["-t", "w", "--map", "0,5"],
                 ["-t", "w", "--to", "4", "--init", "normal:-1"], ["-t", "w", "--to", "4", "--init", "normal:1:x"],
                 ["-t", "w", "--to", "4", "--init", "mean", "--at", "2"], ["-t", "w", "--to", "2"],
                 ["-t", "w", "--map", "0*x"], ["-t", "w", "--to", "4", "--init", "median"],
                 ["-t", "w", "--to", "4", "--map", "0,1,2"], ["-t", "w", "--map", "0,1", "--at", "1"]):
        proc = run("apply", path, "-o", tmp_path / "o.safetensors", *args)
        assert proc.returncode == 2 and proc.stderr.startswith("widen: error: "), (args, proc.stderr)
    run("apply", path, "-o", tmp_path / "o.safetensors", "-t", "w", "--to", "3", "--map", "2,1,0", check=0)
    doc = json.loads(run("inspect", path, "--json", check=0).stdout)
    assert len(doc["tensors"]) == 2
