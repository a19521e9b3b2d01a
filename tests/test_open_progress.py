"""Progress and cancellation while a checkpoint is opened (widen_open_with, widen_model_open_with,
widen.open(progress=)): an .npz whose members are deflated is inflated at open into an unlinked
temporary file, and a stored member is read whole for its CRC-32. The calls obey the progress
contract (at least every 64 MiB of the documented unit, never backwards, ending at the total); a
cancel stops the open with nothing left behind (no file in $TMPDIR, no descriptor open on one); and
verify, which opens its files itself, counts their inflating in its one run and stops there too."""
import ctypes
import os
import sys
import zipfile

import numpy as np
import pytest

from reference import LIBWIDEN, ROOT, WIDEN, save

os.environ["WIDEN_LIBRARY"] = os.path.abspath(LIBWIDEN)
sys.path.insert(0, os.path.join(ROOT, "python"))
import widen  # noqa: E402
from widen import _lib  # noqa: E402

from progress_contract import MiB, STEP, check_calls  # noqa: E402

# all but test_cli_shows_the_inflating call the library
HOST = pytest.mark.host_only("opens, applies and verifies through this build's library")


def inflated_sizes(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: (i.compress_type, i.file_size) for i in z.infolist()}


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """A deflated .npz of 102 MiB inflated (np.savez_compressed: 2 MiB of noise, which keeps it within
    widen's bound on what a file may inflate to, then zeros, cheap to deflate), and a mixed archive
    (a stored member of 40 MiB beside a deflated one)."""
    d = tmp_path_factory.mktemp("openprogress")
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, size=2 * MiB, dtype=np.uint8)
    arrays = {"noise": noise, "zeros": np.zeros(25 * MiB, np.float32),
              "stem": np.arange(8 * 3 * 3 * 3, dtype=np.float32).reshape(8, 3, 3, 3)}
    deflated = str(d / "big.npz")
    np.savez_compressed(deflated, **arrays)
    mixed = str(d / "mixed.npz")
    import io
    with zipfile.ZipFile(mixed, "w") as z:
        for name, value, method in (("kernel.npy", np.full(10 * MiB, 0.5, np.float32), zipfile.ZIP_STORED),
                                    ("noise.npy", noise, zipfile.ZIP_DEFLATED)):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, value)
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), buf.getvalue(), compress_type=method,
                       compresslevel=1)
    return d, arrays, deflated, mixed


def deleted_descriptors(folder):
    """This process's descriptors open on a file in `folder` (an unlinked temporary one included)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder) + "/"):
            found.append(target)
    return found


@HOST
def test_open_reports_the_inflating(archives):
    _, arrays, deflated, _ = archives
    members = inflated_sizes(deflated)
    assert all(m == zipfile.ZIP_DEFLATED for m, _ in members.values())
    calls = []
    with widen.open(deflated, progress=lambda d, n: calls.append((d, n))) as c:
        assert c.format == "npz" and sorted(c.names()) == sorted(arrays)
        assert np.array_equal(c.get("stem"), arrays["stem"])
        assert np.array_equal(c.get("noise"), arrays["noise"])
    # the unit: the members' inflated bytes, as the zip directory declares them
    check_calls(calls, total=sum(size for _, size in members.values()))
    assert calls[-1][1] > STEP  # so that the gap above was checked over more than one step


@HOST
def test_open_of_the_mixed_archive_counts_the_crc_and_the_copy(archives):
    _, _, _, mixed = archives
    members = inflated_sizes(mixed)
    stored = members["kernel.npy"][1]
    calls = []
    with widen.open(mixed, progress=lambda d, n: calls.append((d, n))) as c:
        assert np.all(c.get("kernel") == 0.5)
    # the stored member read for its CRC-32, the deflated one inflated, the stored array copied beside it
    array_bytes = 10 * MiB * 4
    check_calls(calls, total=stored + members["noise.npy"][1] + array_bytes)


@HOST
def test_files_opened_from_their_headers_report_nothing(tmp_path):
    path = str(tmp_path / "s.safetensors")
    save(path, {"w": ("F32", np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2))})
    calls = []
    with widen.open(path, progress=lambda d, n: calls.append((d, n))) as c:
        assert c.names() == ["w"]
    assert calls == []


@HOST
@pytest.mark.parametrize("how", ["true", "raise"])
def test_a_cancelled_open_leaves_nothing_behind(archives, tmp_path, monkeypatch, how):
    _, _, deflated, mixed = archives
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))

    def stop(d, n):
        calls.append((d, n))
        if how == "raise":
            raise KeyboardInterrupt
        return True

    for path in (deflated, mixed):
        calls = []
        with pytest.raises(KeyboardInterrupt if how == "raise" else widen.Interrupted) as e:
            widen.open(path, progress=stop)
        if how == "true":
            assert e.value.status == 130
        check_calls(calls, cancelled=True)
        assert os.listdir(tmp) == []
        assert deleted_descriptors(tmp) == []
    # and an open that is not cancelled inflates there, and lets go of it when closed
    c = widen.open(deflated)
    assert len(deleted_descriptors(tmp)) == 1
    c.close()
    del c
    import gc
    gc.collect()
    assert deleted_descriptors(tmp) == [] and os.listdir(tmp) == []


def open_model_with(path, progress):
    lib = _lib.lib
    options = _lib.OpenOptions()
    lib.widen_open_options_init(ctypes.byref(options), ctypes.sizeof(options))
    fn = _lib.PROGRESS(lambda _u, d, n: progress(d, n) or 0)
    options.progress = fn
    model, err = ctypes.c_void_p(), _lib.Error_()
    status = lib.widen_model_open_with(path.encode(), ctypes.byref(options), ctypes.byref(model), ctypes.byref(err))
    if model.value:
        lib.widen_model_close(model)
    return status, err.message.decode()


@HOST
def test_a_folder_reports_its_files_opens_in_one_run(archives, tmp_path):
    _, _, deflated, _ = archives
    folder = tmp_path / "model"
    folder.mkdir()
    os.link(deflated, folder / "model.bin")  # an .npz is what a .bin holds here
    (folder / "config.json").write_text('{"num_channels": 3}\n')
    calls = []
    status, message = open_model_with(str(folder), lambda d, n: calls.append((d, n)))
    assert status == 0, message
    # the folder's total: the bytes of its files, each weight file's share its size
    check_calls(calls, total=os.path.getsize(deflated) + os.path.getsize(folder / "config.json"))
    calls = []
    status, message = open_model_with(str(folder), lambda d, n: calls.append((d, n)) or 1)
    assert status == 130, message
    check_calls(calls, cancelled=True)
    # a file: as widen_open_with
    calls = []
    status, message = open_model_with(deflated, lambda d, n: calls.append((d, n)))
    assert status == 0, message
    check_calls(calls, total=sum(size for _, size in inflated_sizes(deflated).values()))


@HOST
def test_verify_counts_the_inflating_in_its_run_and_stops_there(archives, tmp_path):
    _, _, deflated, _ = archives
    out = str(tmp_path / "wide.npz")
    widen.apply(deflated, out, tensors="stem", to=4, axis=1, fsync=False)
    calls = []
    r = widen.verify(deflated, out, progress=lambda d, n: calls.append((d, n)))
    assert r.ok, r.first
    check_calls(calls)
    inflated = sum(size for _, size in inflated_sizes(deflated).values())
    assert calls[0][0] <= inflated < calls[-1][1]  # the first reports are of the inflating
    calls = []
    with pytest.raises(widen.Interrupted):
        widen.verify(deflated, out, progress=lambda d, n: calls.append((d, n)) or True)
    check_calls(calls, cancelled=True)
    assert calls[0][0] <= inflated


@HOST
def test_apply_and_hash_report_the_open_then_their_run(archives, tmp_path):
    _, _, deflated, _ = archives
    inflated = sum(size for _, size in inflated_sizes(deflated).values())
    out = str(tmp_path / "wide.safetensors")
    calls = []
    with pytest.raises(widen.Interrupted):
        widen.apply(deflated, out, tensors="stem", to=4, axis=1, fsync=False,
                    progress=lambda d, n: calls.append((d, n)) or True)
    assert calls == [calls[0]] and calls[0][1] == inflated  # stopped in the open
    assert not os.path.exists(out)
    calls = []
    widen.hash(deflated, progress=lambda d, n: calls.append((d, n)))
    opening = [c for c in calls if c[1] == inflated]
    check_calls(opening, total=inflated)
    assert len(opening) < len(calls)  # then the hash's own run


def test_cli_shows_the_inflating(archives):
    import subprocess
    _, _, deflated, _ = archives
    proc = subprocess.run([WIDEN, "inspect", deflated, "--progress"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "inflating" in proc.stderr and "100.0%" in proc.stderr
    proc = subprocess.run([WIDEN, "inspect", deflated, "--no-progress"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""


@HOST
def test_widen_apply_by_path_reports_the_open_and_stops_there(archives, tmp_path):
    """widen_apply(path, ...) opens the input itself: its progress sees the inflating first (a run of
    its own) and a cancel there leaves no output."""
    _, _, deflated, _ = archives
    lib = _lib.lib
    lib.widen_apply.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.POINTER(_lib.Error_)]
    tr = lib.widen_transform_new()
    err = _lib.Error_()
    calls = []
    on_progress = _lib.PROGRESS(lambda user, done, total: calls.append((done, total)) or 1)
    try:
        assert lib.widen_transform_set_cast(tr, 10, ctypes.byref(err)) == 0  # F16
        o = _lib.ApplyOptions()
        lib.widen_apply_options_init(ctypes.byref(o), ctypes.sizeof(o))
        o.progress = on_progress
        out = tmp_path / "o.safetensors"
        assert lib.widen_apply(deflated.encode(), str(out).encode(), tr, ctypes.byref(o), ctypes.byref(err)) == 130
        assert not out.exists() and os.listdir(tmp_path) == []
        check_calls(calls, total=sum(size for _, size in inflated_sizes(deflated).values()), cancelled=True)
    finally:
        lib.widen_transform_free(tr)
