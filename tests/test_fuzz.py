"""The libFuzzer targets (build/fuzz, clang with ASan and UBSan): every crash file found so far is
replayed, then each target fuzzes for a bounded time from its seed corpus."""
import os
import re
import subprocess

import pytest

from reference import ROOT

FUZZ = os.path.join(ROOT, "build", "fuzz")
SEEDS = os.path.join(ROOT, "tests", "fuzz", "seeds")
REGRESSIONS = os.path.join(ROOT, "tests", "fuzz", "regressions")
TARGETS = ["safetensors", "torch", "pickle", "map", "verify", "folder", "npy", "legacy"]
SECONDS = int(os.environ.get("WIDEN_FUZZ_SECONDS", "10"))

pytestmark = [pytest.mark.skipif(bool(os.environ.get("WIDEN_SANITIZE")),
                                 reason="the fuzz build is sanitized itself; it runs in the release pass"),
              pytest.mark.host_only("the libFuzzer targets are built for this machine (build/fuzz)")]


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target(tmp_path, target):
    binary = os.path.join(FUZZ, f"fuzz_{target}")
    assert os.path.exists(binary), "build/fuzz is missing: scripts/test.sh builds it"
    crashes = os.path.join(REGRESSIONS, target)
    if os.path.isdir(crashes) and os.listdir(crashes):
        files = [os.path.join(crashes, f) for f in sorted(os.listdir(crashes))]
        proc = subprocess.run([binary, *files], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = os.path.join(SEEDS, target)
    env = dict(os.environ)
    if target == "verify":  # its seeds are the outputs apply writes today: the target writes them itself
        seeds = str(tmp_path / "seeds")
        os.mkdir(seeds)
        env["WIDEN_FUZZ_SEEDS"] = seeds
    proc = subprocess.run([binary, f"-max_total_time={SECONDS}", "-seed=1", f"-artifact_prefix={tmp_path}/",
                           str(corpus), seeds], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = int(re.search(r"Done (\d+) runs", proc.stderr).group(1))
    assert runs > 1000
