"""Bounded memory: peak RSS (as /usr/bin/time -v reports it, file pages included) stays under
64 MiB on a file far larger than that, for apply, verify and hash."""
import json
import os
import re
import subprocess
import sys

import numpy as np

from reference import ROOT, WIDEN

sys.path.insert(0, os.path.join(ROOT, "bench"))
import synthetic  # noqa: E402

LIMIT_KIB = 64 * 1024


def peak_rss_kib(*args):
    """Peak RSS of one CLI run; 0 on a sanitizer build, whose shadow memory is not widen's to bound."""
    proc = subprocess.run(["/usr/bin/time", "-v", WIDEN, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if os.environ.get("WIDEN_SANITIZE"):
        return 0
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))


def test_peak_rss_is_bounded_on_a_512_mib_file(tmp_path):
    src = tmp_path / "big.safetensors"
    stem = synthetic.make(str(src), 512 << 20)
    assert src.stat().st_size > 7 * LIMIT_KIB * 1024
    out = tmp_path / "out.safetensors"
    assert peak_rss_kib("apply", src, "-o", out, "--to", "4", "--no-fsync", "--threads", "2") < LIMIT_KIB
    assert peak_rss_kib("verify", src, out) < LIMIT_KIB
    assert peak_rss_kib("hash", out) < LIMIT_KIB
    # the widened tensor, read back independently
    with open(out, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    header = json.loads(open(out, "rb").read(8 + n)[8:])
    begin, end = header["stem.weight"]["data_offsets"]
    with open(out, "rb") as f:
        f.seek(8 + n + begin)
        got = np.frombuffer(f.read(end - begin), dtype="<f4").reshape(1280, 4, 14, 14)
    assert got.tobytes() == np.pad(stem, ((0, 0), (0, 1), (0, 0), (0, 0))).tobytes()
