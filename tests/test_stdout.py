"""`apply -o -`: the output streamed to standard output (a pipe, a file, never a terminal), the same
bytes -o FILE writes, verified and with its manifest; what cannot stream refused before a byte; a
reader that goes away midway; and widen_apply_to_fd, the library call underneath."""
import ctypes
import io
import os
import pty
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

import folders
import reference
from reference import ROOT, WIDEN, cli_env, load, run, save

sys.path.insert(0, os.path.join(ROOT, "python"))
from widen._lib import PROGRESS, ApplyOptions  # noqa: E402  (the header's layout, written once)

SANITIZED = bool(os.environ.get("WIDEN_SANITIZE"))


def tensors(seed=5):
    g = np.random.default_rng(seed)
    return {
        "conv1.weight": ("F32", g.standard_normal((8, 3, 3, 3)).astype(np.float32)),
        "bn1.weight": ("F32", g.standard_normal(8).astype(np.float32)),
        "fc.weight": ("F16", g.standard_normal((10, 8)).astype(np.float16)),
        "blob": ("U8", np.resize(np.arange(251, dtype=np.uint8), 3 << 20)),  # an untouched run past 1 MiB
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The same tensors as safetensors and as a torch.save state dict."""
    import torch
    folder = tmp_path_factory.mktemp("stdout")
    t = tensors()
    save(str(folder / "in.safetensors"), t, {"origin": "test"})
    torch.save({k: torch.from_numpy(a.copy()) for k, (_, a) in t.items()}, folder / "in.pt")
    return {"safetensors": folder / "in.safetensors", "pt": folder / "in.pt"}, t


def stream(*args, stdout=subprocess.PIPE, input_fd=None, check=0):
    """Runs the CLI with stdout a pipe (or what is given); returns (returncode, stdout bytes, stderr)."""
    proc = subprocess.run([WIDEN, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, env=cli_env())
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.returncode, proc.stdout, proc.stderr.decode(errors="replace")


def expected(t):
    """--to 4 on conv1.weight: the old channels first, a zero channel after."""
    want = {k: a for k, (_, a) in t.items()}
    want["conv1.weight"] = np.pad(want["conv1.weight"], ((0, 0), (0, 1), (0, 0), (0, 0)))
    return want


def loaded(data, fmt, tmp_path):
    """The output's tensors as NumPy arrays, read by the reference readers."""
    if fmt == "pt":
        import torch
        sd = torch.load(io.BytesIO(data), weights_only=True)
        return {k: v.numpy() for k, v in sd.items()}
    path = tmp_path / "read.safetensors"
    path.write_bytes(data)
    return {k: a for k, (_, a) in load(str(path))[1].items()}


@pytest.mark.parametrize("src_fmt", ["safetensors", "pt"])
@pytest.mark.parametrize("out_fmt", ["safetensors", "pt", None])
def test_stdout_is_the_file_output_verified_with_its_manifest(tmp_path, inputs, src_fmt, out_fmt):
    paths, t = inputs
    src = paths[src_fmt]
    fmt = out_fmt or src_fmt  # no --format: the input's
    extra = ["--format", out_fmt] if out_fmt else []
    manifest = tmp_path / "m.json"
    _, piped, err = stream("apply", src, "-o", "-", "--to", "4", "--manifest", manifest, *extra)
    # warnings go to stderr (a safetensors input's metadata has no place in a .pt), never into the stream
    assert err == ("widen: warning: " + str(src) + ": a .pt state dict has no place for safetensors metadata: "
                   "dropping 1 key\n" if (src_fmt, fmt) == ("safetensors", "pt") else "")
    as_file = tmp_path / ("file." + fmt)
    run("apply", src, "-o", as_file, "--to", "4", "-q", *extra, check=0)
    assert piped == as_file.read_bytes()
    out = tmp_path / ("out." + fmt)
    out.write_bytes(piped)
    if fmt == "safetensors":  # a .pt records no transform: the manifest does
        run("verify", src, out, check=0)
    run("verify", src, out, "--manifest", manifest, check=0)
    doc = manifest.read_text()
    assert '"output": "<stdout>"' in doc and '"input": ' + '"' + str(src) + '"' in doc
    got, want = loaded(piped, fmt, tmp_path), expected(t)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].tobytes() == want[k].tobytes(), k


def test_shell_pipe_and_redirect_to_a_file(tmp_path, inputs):
    """`| cat > file` (a pipe: every byte through write) and `> file` (a regular file: copied in the
    kernel, from the descriptor's offset on) give the bytes -o FILE writes; progress goes to stderr."""
    src = inputs[0]["safetensors"]
    as_file = tmp_path / "file.safetensors"
    run("apply", src, "-o", as_file, "--to", "4", check=0)
    env = cli_env()
    piped, redirected = tmp_path / "piped", tmp_path / "redirected"
    proc = subprocess.run(["bash", "-c", f'set -o pipefail; "{WIDEN}" apply "{src}" -o - --to 4 --progress '
                           f'| cat > "{piped}"'], env=env, stderr=subprocess.PIPE, check=True)
    assert piped.read_bytes() == as_file.read_bytes()
    assert b"100.0%" in proc.stderr
    with open(redirected, "wb") as f:
        f.write(b"HEAD")
        f.flush()
        subprocess.run([WIDEN, "apply", src, "-o", "-", "--to", "4", "--no-fsync"], stdout=f, env=env, check=True)
    assert redirected.read_bytes() == b"HEAD" + as_file.read_bytes()


def test_what_cannot_stream_is_refused_before_a_byte(tmp_path, inputs):
    src = inputs[0]["safetensors"]
    rc, out, err = stream("apply", src, "-o", "-", "--to", "4", "--format", "npz", check=2)
    assert out == b"" and err.count("\n") == 1 and "an .npz cannot be streamed" in err
    npz = tmp_path / "in.npz"
    np.savez(npz, kernel=np.ones((3, 3, 3, 8), np.float32))
    rc, out, err = stream("apply", npz, "-o", "-", "--to", "4", check=2)  # npz by default: the input's
    assert out == b"" and "an .npz cannot be streamed" in err
    stream("apply", npz, "-o", "-", "--to", "4", "--format", "safetensors", check=0)
    folder = tmp_path / "timm"
    folders.timm_folder(str(folder))
    rc, out, err = stream("apply", folder, "-o", "-", "--to", "4", check=2)
    assert out == b"" and err.count("\n") == 1 and "model folder" in err
    # --dry-run refuses what -o - refuses, and prints the plan on stdout otherwise
    stream("apply", folder, "-o", "-", "--to", "4", "--dry-run", check=2)
    _, out, _ = stream("apply", src, "-o", "-", "--to", "4", "--dry-run")
    assert out.decode().startswith(f"plan: {src} -> <stdout> (safetensors), nothing written")


def test_a_terminal_is_refused(tmp_path, inputs):
    src = inputs[0]["safetensors"]
    leader, follower = pty.openpty()
    try:
        rc, _, err = stream("apply", src, "-o", "-", "--to", "4", stdout=follower, check=2)
        assert err == "widen: error: refusing to write a checkpoint to a terminal\n"
        os.set_blocking(leader, False)
        try:
            assert os.read(leader, 100) == b""
        except (BlockingIOError, OSError):
            pass  # nothing written
        # the plan, though, is for a person
        stream("apply", src, "-o", "-", "--to", "4", "--dry-run", stdout=follower, check=0)
    finally:
        os.close(leader)
        os.close(follower)


BIG = 72 << 20


def test_summary_line_goes_to_the_terminal_on_stderr(tmp_path, inputs):
    src = inputs[0]["safetensors"]
    leader, follower = pty.openpty()
    out = tmp_path / "out.safetensors"
    with open(out, "wb") as f:
        proc = subprocess.Popen([WIDEN, "apply", src, "-o", "-", "--to", "4", "--no-progress"], stdout=f,
                                stderr=follower, stdin=subprocess.DEVNULL, env=cli_env())
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    text = b"".join(chunks).decode()
    assert re.fullmatch(r"widen: wrote <stdout>: 1 tensor changed, 3 copied, 3\.0 MiB in \d+\.\d s "
                        r"\([\d.]+ \w+ cloned, [\d.]+ \w+ copied, [\d.]+ \w+ written\)", text.strip()), text
    run("apply", src, "-o", tmp_path / "file.safetensors", "--to", "4", check=0)
    assert out.read_bytes() == (tmp_path / "file.safetensors").read_bytes()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A conv and 72 MiB untouched: more than a pipe holds, more than 64 MiB of progress."""
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    save(str(path), {"a.weight": ("F32", np.ones((8, 3, 3, 3), np.float32)),
                     "big": ("U8", np.resize(np.arange(251, dtype=np.uint8), BIG))}, {})
    return path


def test_reader_closing_early_fails_without_hanging(tmp_path, big):
    manifest = tmp_path / "m.json"
    proc = subprocess.Popen([WIDEN, "apply", big, "-o", "-", "--to", "4", "--manifest", manifest],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    assert len(proc.stdout.read(1 << 16)) == 1 << 16
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 4, err
    assert err == "widen: error: <stdout>: write failed: Broken pipe; the output stream is incomplete\n"
    assert os.listdir(tmp_path) == []  # no manifest, no temporary


@pytest.mark.skipif(SANITIZED, reason="measures RSS: the sanitizer's shadow memory is not widen's to bound")
def test_memory_stays_bounded_through_a_pipe(tmp_path, big):
    """Peak RSS (file pages included) stays under 64 MiB while 72 MiB go through write: the pages
    of the input's mapping are released as they go."""
    rss = tmp_path / "rss.txt"
    cmd = f'set -o pipefail; /usr/bin/time -v -o "{rss}" "{WIDEN}" apply "{big}" -o - --to 4 | cat > /dev/null'
    proc = subprocess.run(["bash", "-c", cmd], stderr=subprocess.PIPE, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-500:]
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", rss.read_text()).group(1))
    assert peak < 64 * 1024, peak


# ---- the library: widen_apply_to_fd -------------------------------------------------------------

class Lib:
    """libwiden through ctypes: one transform (conv to 4 channels), one open checkpoint."""

    def __init__(self, path, tensor="a.weight"):
        self.lib = lib = ctypes.CDLL(reference.LIBWIDEN)
        lib.widen_transform_new.restype = ctypes.c_void_p
        lib.widen_apply_to_fd.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                                          ctypes.c_void_p, ctypes.c_char_p]
        self.err = ctypes.create_string_buffer(2048)
        self.tr = ctypes.c_void_p(lib.widen_transform_new())
        entries, count = ctypes.c_void_p(), ctypes.c_size_t()
        assert lib.widen_parse_map(b"0,1,2,zero", ctypes.byref(entries), ctypes.byref(count), self.err) == 0
        assert lib.widen_transform_add_map(self.tr, tensor.encode(), 1, entries, count, self.err) == 0
        ctypes.CDLL(None).free(entries)
        self.ckpt = ctypes.c_void_p()
        assert lib.widen_open(str(path).encode(), ctypes.byref(self.ckpt), self.err) == 0

    def options(self, **fields):
        opts = ApplyOptions()
        self.lib.widen_apply_options_init(ctypes.byref(opts), ctypes.sizeof(opts))
        for k, v in fields.items():
            setattr(opts, k, v)
        return opts

    def apply(self, fd, opts, name=b"pipe"):
        return self.lib.widen_apply_to_fd(self.ckpt, fd, name, self.tr, ctypes.byref(opts), self.err)

    def message(self):
        return self.err.raw[4:].split(b"\0", 1)[0].decode()

    def close(self):
        self.lib.widen_close(self.ckpt)
        self.lib.widen_transform_free(self.tr)


def drain(fd, sink):
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            sink.append(chunk)


@pytest.mark.host_only("this build's library (ctypes)")
def test_apply_to_fd_into_a_pipe_reports_progress_every_64_mib(big):
    lib = Lib(big)
    seen, got = [], []

    def on_progress(user, done, total):
        seen.append((done, total))
        return 0

    callback = PROGRESS(on_progress)
    opts = lib.options(progress=callback, threads=2)
    r, w = os.pipe()
    reader = threading.Thread(target=drain, args=(r, got))
    reader.start()
    st = lib.apply(w, opts)
    os.close(w)
    reader.join(timeout=60)
    message = lib.message()
    lib.close()
    assert st == 0, message
    data = b"".join(got)
    n = int.from_bytes(data[:8], "little")
    assert data[8:8 + n].startswith(b'{"__metadata__":{"widen":')
    assert data.endswith(np.resize(np.arange(251, dtype=np.uint8), BIG).tobytes())  # the last tensor, whole
    total = seen[-1][1]
    assert seen[-1][0] == total and total >= BIG
    steps = [b - a for (a, _), (b, _) in zip([(0, 0)] + seen, seen)]
    assert max(steps) <= 64 << 20, steps
    assert all(b >= a for a, b in zip(seen, seen[1:]))


@pytest.mark.host_only("this build's library (ctypes)")
def test_apply_to_fd_refuses_before_writing(tmp_path, inputs):
    src = inputs[0]["safetensors"]
    lib = Lib(src, "conv1.weight")
    try:
        r, w = os.pipe()
        os.set_blocking(r, False)
        assert lib.apply(w, lib.options(format=b"npz")) == 2 and "cannot be streamed" in lib.message()
        assert lib.apply(r, lib.options()) == 2 and "not open for writing" in lib.message()
        leader, follower = pty.openpty()
        assert lib.apply(follower, lib.options()) == 2 and "terminal" in lib.message()
        os.close(leader), os.close(follower)
        with open(src, "ab") as f:  # the input itself, open for appending
            assert lib.apply(f.fileno(), lib.options()) == 2 and "is the input file" in lib.message()
        assert lib.apply(w, lib.options(format=b"pt", manifest_path=str(tmp_path / "no" / "m.json").encode())) == 4
        assert "cannot create a file" in lib.message()
        lib.err.value = b""
        assert lib.apply(9999, lib.options()) == 2 and "not open" in lib.message()
        with pytest.raises(BlockingIOError):
            os.read(r, 1)  # nothing was written by any of them
        os.close(r), os.close(w)
        # the progress callback asking to stop: the message says the stream is cut short
        r, w = os.pipe()
        got = []
        reader = threading.Thread(target=drain, args=(r, got))
        reader.start()
        stop = PROGRESS(lambda user, done, total: 1)
        assert lib.apply(w, lib.options(progress=stop), name=None) == 130
        os.close(w)
        reader.join(timeout=60)
        assert lib.message() == "<output stream>: interrupted; the output stream is incomplete"
    finally:
        lib.close()


@pytest.mark.host_only("the Python package over this build's library")
def test_python_apply_into_an_open_file_and_a_pipe(tmp_path, inputs):
    """widen.apply(src, file object or descriptor): the bytes -o FILE writes, from the position on."""
    import widen
    src = inputs[0]["safetensors"]
    as_file = tmp_path / "file.pt"
    widen.apply(src, as_file, to=4, format="pt", warning=lambda m: None)
    with open(tmp_path / "out.pt", "wb") as f:
        f.write(b"HEAD")  # buffered: flushed before widen writes
        widen.apply(src, f, to=4, format="pt", fsync=False, warning=lambda m: None)
    assert (tmp_path / "out.pt").read_bytes() == b"HEAD" + as_file.read_bytes()
    r, w = os.pipe()
    got = []
    reader = threading.Thread(target=drain, args=(r, got))
    reader.start()
    try:
        widen.apply(src, w, to=4, format="pt", warning=lambda m: None)
    finally:
        os.close(w)
        reader.join(timeout=60)
    assert b"".join(got) == as_file.read_bytes()
    r, w = os.pipe()
    try:
        with pytest.raises(widen.UsageError, match="cannot be streamed"):
            widen.apply(src, w, to=4, format="npz")
    finally:
        os.close(r), os.close(w)
