"""Review findings on progress (widen.h, widen_progress_fn): at least every 64 MiB, done ending at
total, on the paths the first tests did not reach: a large strided tensor hashed on several threads,
and a verify whose verdict is a difference."""
import os
import shutil
import sys

import numpy as np
import pytest

from reference import LIBWIDEN, ROOT, save

os.environ["WIDEN_LIBRARY"] = os.path.abspath(LIBWIDEN)
sys.path.insert(0, os.path.join(ROOT, "python"))
import widen  # noqa: E402

torch = pytest.importorskip("torch")
xxhash = pytest.importorskip("xxhash")

from progress_contract import MiB, STEP, check_calls  # noqa: E402

pytestmark = pytest.mark.host_only("progress through this build's library")



def test_hash_of_a_large_strided_tensor_on_threads_reports_progress(tmp_path):
    # an 80 MiB transposed view: hashed by gathering its elements, on one of the workers
    path = str(tmp_path / "strided.pt")
    t = torch.arange(20 * MiB, dtype=torch.float32).reshape(4096, 5 * 1024)
    torch.save({"t": t.T, "small": torch.ones(4)}, path)
    want = xxhash.xxh3_128_hexdigest(t.T.contiguous().numpy().tobytes())
    for threads in (1, 2):
        calls = []
        h = widen.hash(path, threads=threads, progress=lambda d, n: calls.append((d, n)))
        assert h.tensors["t"] == want
        check_calls(calls)
        # and a cancel during it stops it
        calls = []
        with pytest.raises(widen.Interrupted):
            widen.hash(path, threads=threads, progress=lambda d, n: calls.append((d, n)) or d >= 16 * MiB)
        assert calls[-1][0] <= 16 * MiB + STEP


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("verdict")
    src, out = str(d / "in.safetensors"), str(d / "out.safetensors")
    save(src, {"stem.weight": ("F32", np.arange(8 * 3 * 9, dtype=np.float32).reshape(8, 3, 3, 3)),
               "big": ("F32", np.arange(20 * MiB, dtype=np.float32))})
    widen.apply(src, out, tensors="stem.weight", to=4, fsync=False)
    return d, src, out


@pytest.mark.parametrize("threads", [1, 2])
def test_verify_that_finds_a_difference_still_ends_its_progress(pair, threads):
    d, src, out = pair
    bad = str(d / f"bad{threads}.safetensors")
    data = bytearray(open(out, "rb").read())
    data[len(data) // 3] ^= 1  # inside 'big'
    open(bad, "wb").write(data)
    calls = []
    r = widen.verify(src, bad, threads=threads, progress=lambda d_, n: calls.append((d_, n)))
    assert not r.ok
    check_calls(calls, skipped_end=True)


def test_folder_verify_that_finds_a_difference_still_ends_its_progress(tmp_path):
    import folders
    src, out = tmp_path / "in", tmp_path / "out"
    os.makedirs(src)
    folders.write_shards(str(src), [{"stem.weight": np.ones((8, 3, 3, 3), np.float32)},
                                    {"big": np.arange(20 * MiB, dtype=np.float32)}])
    widen.apply(str(src), str(out), tensors="stem.weight", to=4, fsync=False)
    copied = [n for n in sorted(os.listdir(out)) if n.endswith(".safetensors")][-1]
    data = bytearray(open(out / copied, "rb").read())
    data[len(data) // 3] ^= 1  # a copied shard that differs from the input's
    os.unlink(out / copied)
    open(out / copied, "wb").write(data)
    calls = []
    r = widen.verify(str(src), str(out), progress=lambda d, n: calls.append((d, n)))
    assert not r.ok
    check_calls(calls, skipped_end=True)
    shutil.rmtree(out)
