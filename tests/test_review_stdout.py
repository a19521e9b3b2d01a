"""Review findings on `apply -o -` and widen_apply_to_fd: a descriptor in non-blocking mode (a
stdout a parent set O_NONBLOCK on, as Node.js does; a Python socket with a timeout) must still take
the whole checkpoint: a full pipe is waited on, not an error."""
import fcntl
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from reference import LIBWIDEN, ROOT, WIDEN, cli_env, save

os.environ["WIDEN_LIBRARY"] = os.path.abspath(LIBWIDEN)
sys.path.insert(0, os.path.join(ROOT, "python"))
import widen  # noqa: E402


def source(tmp_path):
    path = str(tmp_path / "in.safetensors")
    save(path, {"conv1.weight": ("F32", np.ones((8, 3, 3, 3), np.float32)),
                "blob": ("U8", np.resize(np.arange(251, dtype=np.uint8), 5 << 20))})
    ref = str(tmp_path / "ref.safetensors")
    widen.apply(path, ref, tensors="conv1.weight", to=4, fsync=False)
    with open(ref, "rb") as f:
        return path, f.read()


def slow_read(fd, out):
    time.sleep(0.3)  # the pipe fills before anyone reads
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        out.append(chunk)


def test_stdout_in_non_blocking_mode_gets_the_whole_output(tmp_path):
    path, want = source(tmp_path)
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    proc = subprocess.Popen([WIDEN, "apply", path, "-t", "conv1.weight", "--to", "4", "-o", "-"], stdout=w,
                            stderr=subprocess.PIPE, env=cli_env())
    os.close(w)
    got = []
    slow_read(r, got)
    os.close(r)
    err = proc.stderr.read().decode(errors="replace")
    assert proc.wait() == 0, err
    assert b"".join(got) == want


@pytest.mark.host_only("the Python package over this build's library")
def test_python_apply_into_a_socket_with_a_timeout(tmp_path):
    path, want = source(tmp_path)
    a, b = socket.socketpair()
    a.settimeout(30)  # Python makes the descriptor non-blocking underneath
    got = []
    reader = threading.Thread(target=slow_read, args=(b.fileno(), got))
    reader.start()
    try:
        widen.apply(path, a, tensors="conv1.weight", to=4)
    finally:
        a.shutdown(socket.SHUT_WR)
        reader.join()
        a.close()
        b.close()
    assert b"".join(got) == want


@pytest.mark.host_only("the Python package over this build's library")
def test_what_cannot_stream_names_only_what_can(tmp_path):
    npy, npz = str(tmp_path / "a.npy"), str(tmp_path / "a.npz")
    np.save(npy, np.ones((2, 3, 4, 4), np.float32))
    np.savez(npz, a=np.ones((2, 3, 4, 4), np.float32))
    r, w = os.pipe()
    try:
        for path in (npy, npz):
            try:
                widen.apply(path, w, cast="f16")
                raise AssertionError("streamed")
            except widen.UsageError as e:
                text = str(e)
            # an .npz cannot be streamed either: the message offers what can, and the argument to set
            assert ".npz, " not in text and "safetensors or pt" in text, text
            assert text.endswith("(the format argument sets it)"), text
    finally:
        os.close(r)
        os.close(w)
