"""Independent Python references for the tests: a safetensors writer and reader written from
FORMATS.md (not from widen's code), NumPy dtype handling, and helpers to run the CLI."""
import functools
import json
import os
import struct
import subprocess

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("WIDEN_BUILD", os.path.join(ROOT, "build", "release"))
# WIDEN: another CLI to drive (the aarch64 build's widen-qemu wrapper runs the arm64 CLI under qemu)
WIDEN = os.environ.get("WIDEN") or os.path.join(BUILD, "widen")
LIBWIDEN = os.path.join(BUILD, "libwiden.so")
# FOREIGN: the CLI driven is not this build's own (WIDEN=build/aarch64/widen-qemu: the arm64 CLI under
# qemu-aarch64). The tests marked host_only (they need this build's library, its conformance program
# or x86 tools) are skipped there (conftest.py), and SCALE shrinks the files the other tests make.
FOREIGN = os.path.realpath(WIDEN) != os.path.realpath(os.path.join(BUILD, "widen"))
# SCALE: a factor on the sizes of the large files tests make (WIDEN_SCALE sets it; under an emulator, where
# every byte a kernel touches costs about 20 times more, 1/4 by default). Tests that must cross a threshold
# (the 64 MiB progress step, a pipe's capacity, a memory bound) scale only the part above it: scaled().
SCALE = float(os.environ.get("WIDEN_SCALE") or (0.25 if FOREIGN else 1))


def scaled(size, at_least=0, align=1):
    """size * SCALE, but never under at_least, rounded up to a multiple of align."""
    n = max(int(size * SCALE), at_least)
    return -(-n // align) * align

# safetensors' Dtype enum order: the reference writer sorts by it, descending, then by name.
DTYPE_ORDER = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
               "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"]

# NumPy views of each dtype (BF16 and F8 as raw unsigned integers of their size).
NP = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "F8_E5M2": np.uint8, "F8_E4M3": np.uint8,
      "I16": np.int16, "U16": np.uint16, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "U32": np.uint32,
      "F32": np.float32, "F64": np.float64, "I64": np.int64, "U64": np.uint64, "C64": np.complex64}


def tensor_bytes(array):
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def header_bytes(entries, metadata=None):
    """entries: list of (name, dtype, shape, nbytes) in write order."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_order(tensors):
    """tensors: {name: (dtype, array)} -> names in the reference writer's order."""
    return sorted(tensors, key=lambda n: (-DTYPE_ORDER.index(tensors[n][0]), n.encode()))


def save(path, tensors, metadata=None):
    """Writes tensors {name: (dtype_name, array)} as the reference writer lays them out."""
    names = write_order(tensors)
    blobs = [tensor_bytes(tensors[n][1]) for n in names]
    entries = [(n, tensors[n][0], tensors[n][1].shape, len(b)) for n, b in zip(names, blobs)]
    with open(path, "wb") as f:
        f.write(header_bytes(entries, metadata))
        for b in blobs:
            f.write(b)


def load(path):
    """Returns (metadata or None, {name: (dtype, array)}, header dict, data start)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    metadata = header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        data = raw[8 + n + begin:8 + n + end]
        array = np.frombuffer(data, dtype=np.dtype(NP[info["dtype"]]).newbyteorder("<")).reshape(info["shape"])
        tensors[name] = (info["dtype"], array)
    return metadata, tensors, header, 8 + n


def cli_env(env=None):
    """The environment the CLI runs in: this one, less WIDEN_ISA, plus `env`."""
    full_env = dict(os.environ)
    full_env.pop("WIDEN_ISA", None)
    if full_env.pop("LD_PRELOAD", None) is not None or os.environ.get("WIDEN_SANITIZE"):
        # the sanitized CLI carries its own runtime; there, leaks are errors too
        full_env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    if env:
        full_env.update(env)
    return full_env


@functools.lru_cache(maxsize=None)
def cli_version():
    """The driven CLI's `widen --version` lines as a dict: isa, usable (a list, scalar first), cpu."""
    out = subprocess.run([WIDEN, "--version"], capture_output=True, text=True, env=cli_env(), check=True).stdout
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    fields["usable"] = fields.get("usable", "scalar").split()
    return fields


def cli_isas():
    """The SIMD ISAs the driven CLI can use here (`usable:` of --version, scalar left out): avx2 and avx512
    on this machine's build, neon for the arm64 CLI under qemu."""
    return [isa for isa in cli_version()["usable"] if isa != "scalar"]


def unusable_isa():
    """An ISA the driven CLI's machine cannot have: WIDEN_ISA set to it is refused (exit 2)."""
    return "avx2" if "neon" in cli_version()["usable"] else "neon"


def run(*args, env=None, check=None):
    """Runs the widen CLI; returns the CompletedProcess (text mode)."""
    proc = subprocess.run([WIDEN, *map(str, args)], capture_output=True, text=True, env=cli_env(env))
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def f32_to_bf16_bits(a):
    """Round-to-nearest-even F32 -> BF16 in NumPy integer arithmetic; NaNs quieted."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)


def bf16_bits_to_f32(b):
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def quiet_f16(h_bits, f32_bits):
    """NumPy keeps a signalling NaN signalling when it narrows F32 to F16 (and sets the lowest
    payload bit when the kept payload would be empty); IEEE 754 (and F16C) return the quiet NaN with
    the sign and leading payload bits. Where the F32 input is a NaN, that IEEE result replaces
    NumPy's."""
    f = np.asarray(f32_bits, dtype=np.uint32)
    nan = (f & 0x7FFFFFFF) > 0x7F800000
    ieee = ((f >> 16) & 0x8000) | 0x7E00 | ((f >> 13) & 0x3FF)
    return np.where(nan, ieee, h_bits).astype(np.uint16)


def quiet_f32(f_bits, h_bits):
    """Same for F16 -> F32 widening: the F32 quiet bit is set where the F16 input was a NaN."""
    nan = (np.asarray(h_bits, dtype=np.uint16) & 0x7FFF) > 0x7C00
    return np.where(nan, f_bits | 0x00400000, f_bits).astype(np.uint32)


def to_dtype_bits(values_f32, dtype):
    """F32 values rounded once to dtype, as raw bits (uint32 for F32, uint16 otherwise)."""
    v = np.ascontiguousarray(values_f32, dtype=np.float32)
    if dtype == "F32":
        return v.view(np.uint32)
    if dtype == "F16":
        with np.errstate(over="ignore", invalid="ignore"):
            return quiet_f16(v.astype(np.float16).view(np.uint16), v.view(np.uint32))
    return f32_to_bf16_bits(v)


def from_dtype_bits(bits, dtype):
    """Raw bits of dtype -> F32 values (exact)."""
    if dtype == "F32":
        return np.asarray(bits, dtype=np.uint32).view(np.float32)
    if dtype == "F16":
        h = np.asarray(bits, dtype=np.uint16)
        return quiet_f32(h.view(np.float16).astype(np.float32).view(np.uint32), h).view(np.float32)
    return bf16_bits_to_f32(bits)
