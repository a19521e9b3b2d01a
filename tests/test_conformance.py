"""Every SIMD ISA this machine has against the scalar kernels, byte for byte (tests/conformance.c),
and whole files written under each WIDEN_ISA compared byte for byte."""
import os
import subprocess

import numpy as np
import pytest
import xxhash

from reference import BUILD, ROOT, cli_isas, f32_to_bf16_bits, load, run, save

CONFORMANCE = os.path.join(BUILD, "widen_conformance")
AARCH64 = os.path.join(ROOT, "build", "aarch64", "widen_conformance")
ISAS = [isa for isa in ("avx2", "avx512", "neon")
        if subprocess.run([CONFORMANCE, isa, "1"], capture_output=True).returncode == 0]
HOST = pytest.mark.host_only("runs this build's conformance program (the qemu lane's kernels are checked by "
                             "test_neon_matches_scalar_under_qemu, in the host runs)")


@HOST
@pytest.mark.parametrize("isa", ISAS)
def test_isa_matches_scalar_on_random_jobs(isa):
    proc = subprocess.run([CONFORMANCE, isa, "2000"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2500 passed, 0 failed" in proc.stdout


@HOST
@pytest.mark.skipif(bool(os.environ.get("WIDEN_SANITIZE")),
                    reason="the same arm64 program as the release run's (not sanitized): run once, there")
def test_neon_matches_scalar_under_qemu():
    """The NEON kernels, cross-built by scripts/test.sh, run under qemu-aarch64."""
    assert os.path.exists(AARCH64), "build/aarch64 is missing: scripts/test.sh cross-builds it"
    proc = subprocess.run(["qemu-aarch64-static", AARCH64, "neon", "2000"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2500 passed, 0 failed" in proc.stdout


@HOST
def test_unusable_isa_is_refused():
    other = "neon" if os.uname().machine == "x86_64" else "avx2"
    assert subprocess.run([CONFORMANCE, other, "1"], capture_output=True).returncode == 2


@pytest.mark.skipif(not cli_isas(), reason="no SIMD ISA on the driven CLI's machine")
def test_files_are_identical_under_every_isa(tmp_path):
    """Every ISA the driven CLI can use (avx2 and avx512 here, neon under qemu) against its scalar kernels."""
    rng = np.random.default_rng(9)
    pixels = rng.standard_normal((200_003, 3)).astype(np.float32)
    pixels.view(np.uint32)[:6, 0] = [0x7F800001, 0x00000001, 0x80000000, 0x7F800000, 0x477FF000, 0x33000001]
    tensors = {
        "conv.weight": ("F32", rng.standard_normal((96, 3, 7, 7)).astype(np.float32)),
        "pixels": ("F32", pixels),
        "half": ("F16", rng.standard_normal((300, 3, 5)).astype(np.float16)),
        "brain": ("BF16", f32_to_bf16_bits(rng.standard_normal((64, 3, 3, 3)).astype(np.float32))),
    }
    path = tmp_path / "in.safetensors"
    save(str(path), tensors)
    jobs = [
        ["-t", "conv.weight", "--to", "4"],
        ["-t", "pixels", "--axis", "-1", "--map", "2,1,0,const:1"],
        ["-t", "half", "-t", "brain", "--to", "5", "--at", "1", "--init", "const:-0.5"],
        ["--cast", "bf16"],
        ["-t", "pixels", "--axis", "-1", "--to", "4", "--cast", "f16"],
    ]
    for i, args in enumerate(jobs):
        outputs = {}
        for isa in ["scalar", *cli_isas()]:
            for threads in ("1", "2"):
                out = tmp_path / f"o{i}-{isa}-{threads}.safetensors"
                run("apply", path, "-o", out, *args, "--threads", threads, env={"WIDEN_ISA": isa}, check=0)
                outputs[(isa, threads)] = out.read_bytes()
        assert len(set(outputs.values())) == 1, (args, sorted(outputs))
        run("verify", path, out, check=0)
    hashes = {isa: run("hash", path, env={"WIDEN_ISA": isa}, check=0).stdout for isa in ["scalar", *cli_isas()]}
    assert len(set(hashes.values())) == 1
    assert hashes["scalar"].split()[0] == xxhash.xxh3_128_hexdigest(path.read_bytes())
    _, got, _, _ = load(str(tmp_path / "o1-scalar-1.safetensors"))
    want = np.concatenate([pixels[:, [2, 1, 0]], np.ones((len(pixels), 1), np.float32)], 1)
    assert got["pixels"][1].tobytes() == want.tobytes()
