"""The kernels through the C API (ctypes), on every ISA this machine can run, against NumPy."""
import ctypes

import numpy as np
import pytest

from reference import LIBWIDEN, from_dtype_bits, to_dtype_bits

pytestmark = pytest.mark.host_only("the kernels through this build's library (ctypes); test_conformance.py "
                                   "runs the NEON ones under qemu")

lib = ctypes.CDLL(LIBWIDEN)

ISAS = ["scalar", "avx2", "avx512", "neon"]
DTYPES = {"U8": 1, "I16": 8, "F16": 10, "BF16": 11, "I32": 12, "F32": 14, "I64": 17}
SIZE = {"U8": 1, "I16": 2, "F16": 2, "BF16": 2, "I32": 4, "F32": 4, "I64": 8}
SOURCE, ZERO, CONST = 0, 1, 2


class MapEntry(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("channel", ctypes.c_uint32), ("value", ctypes.c_float),
                ("seed", ctypes.c_uint64)]


class RemapJob(ctypes.Structure):
    _fields_ = [("src", ctypes.c_void_p), ("dst", ctypes.c_void_p), ("src_dtype", ctypes.c_int),
                ("dst_dtype", ctypes.c_int), ("rows", ctypes.c_size_t), ("channels", ctypes.c_size_t),
                ("inner", ctypes.c_size_t), ("src_row_stride", ctypes.c_size_t),
                ("src_chan_stride", ctypes.c_size_t), ("dst_row_stride", ctypes.c_size_t),
                ("dst_chan_stride", ctypes.c_size_t), ("map", ctypes.POINTER(MapEntry)), ("store", ctypes.c_int),
                ("src_channels", ctypes.c_size_t), ("index", ctypes.c_uint64)]


class Error(ctypes.Structure):
    _fields_ = [("status", ctypes.c_int), ("message", ctypes.c_char * 1024), ("hint", ctypes.c_int)]


lib.widen_isa_usable.argtypes = [ctypes.c_int]
lib.widen_remap.argtypes = [ctypes.POINTER(RemapJob), ctypes.c_int, ctypes.POINTER(Error)]
lib.widen_cast.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                           ctypes.c_int, ctypes.POINTER(Error)]

USABLE = [i for i, _ in enumerate(ISAS) if lib.widen_isa_usable(i)]
isa_params = pytest.mark.parametrize("isa", USABLE, ids=[ISAS[i] for i in USABLE])

GUARD = 64


def guarded(nbytes, rng):
    """A garbage-filled buffer with guard bytes on both sides and an odd (unaligned) start."""
    buf = np.frombuffer(rng.bytes(nbytes + 2 * GUARD + 1), dtype=np.uint8).copy()
    return buf, GUARD + 1


def remap(isa, src_bytes, src_dtype, dst_dtype, rows, c, inner, entries, rng):
    n = len(entries)
    out_bytes = rows * n * inner * SIZE[dst_dtype]
    src_buf = np.frombuffer(b"\x00" + src_bytes, dtype=np.uint8).copy()  # unaligned by one byte
    dst_buf, start = guarded(out_bytes, rng)
    before = dst_buf.copy()
    cmap = (MapEntry * max(n, 1))()
    for i, (kind, ch, val) in enumerate(entries):
        cmap[i] = MapEntry(kind, ch, val, 0)
    job = RemapJob(src_buf.ctypes.data + 1, dst_buf.ctypes.data + start, DTYPES[src_dtype], DTYPES[dst_dtype],
                   rows, n, inner, c * inner, inner, n * inner, inner, cmap)
    err = Error()
    assert lib.widen_remap(ctypes.byref(job), isa, ctypes.byref(err)) == 0, err.message
    assert np.array_equal(dst_buf[:start], before[:start]), "wrote before the output"
    assert np.array_equal(dst_buf[start + out_bytes:], before[start + out_bytes:]), "wrote past the output"
    return dst_buf[start:start + out_bytes].tobytes()


def random_bits(rng, shape, dtype):
    """Random element bit patterns, including NaN payloads, infinities, denormals and signed zeros."""
    size = SIZE[dtype]
    raw = rng.integers(0, 2 ** (8 * size), size=shape, dtype=np.uint64 if size == 8 else np.uint32)
    bits = raw.astype({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[size])
    if dtype in ("F32", "F16", "BF16"):
        specials = {"F32": [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00001, 0x7F800001, 0xFFA5A5A5, 1, 0x807FFFFF,
                            0x477FF000, 0x477FEFFF, 0x33000000, 0x33000001, 0x38800000, 0x387FFFFF],
                    "F16": [0, 0x8000, 0x7C00, 0xFC00, 0x7C01, 0x7E00, 0xFD55, 1, 0x83FF, 0x7BFF],
                    "BF16": [0, 0x8000, 0x7F80, 0xFF80, 0x7F81, 0x7FC0, 0xFFD5, 1, 0x807F, 0x7F7F]}[dtype]
        flat = bits.reshape(-1)
        k = min(len(specials), flat.size)
        flat[:k] = np.array(specials[:k], dtype=flat.dtype)
    return bits


def numpy_remap(bits, src_dtype, dst_dtype, entries):
    """The reference: NumPy indexing along axis 1 of [rows, C, inner], fills, then the cast."""
    rows, _, inner = bits.shape
    out_t = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[SIZE[dst_dtype]]
    out = np.zeros((rows, len(entries), inner), dtype=out_t)
    for n, (kind, ch, val) in enumerate(entries):
        if kind == SOURCE:
            src = bits[:, ch, :]
            if src_dtype == dst_dtype:
                out[:, n, :] = src
            else:
                out[:, n, :] = to_dtype_bits(from_dtype_bits(src, src_dtype), dst_dtype)
        elif kind == CONST:
            out[:, n, :] = to_dtype_bits(np.float32([val]), dst_dtype)[0]
    return out.tobytes()


SHAPES = [(1, 3, 1), (2, 3, 7), (5, 1, 33), (0, 3, 4), (3, 4, 0), (4, 3, 1), (7, 10, 9), (2, 13, 65), (1, 3, 1031)]


@isa_params
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_remap_matches_numpy(isa, dtype, shape):
    rng = np.random.default_rng(hash((dtype, shape)) & 0xFFFF)
    rows, c, inner = shape
    bits = random_bits(rng, shape, dtype)
    computable = dtype in ("F32", "F16", "BF16")
    maps = [
        [(SOURCE, k, 0) for k in range(c)] + [(ZERO, 0, 0)],                     # widen by one, zeros
        [(ZERO, 0, 0), (ZERO, 0, 0)] + [(SOURCE, k, 0) for k in range(c)],     # --at 2
        [(SOURCE, c - 1 - k, 0) for k in range(c)],                             # reverse
        [(SOURCE, 0, 0)],                                                        # narrow to one
        [(SOURCE, k % c, 0) for k in range(2 * c + 1)],                          # repeat
    ]
    if computable:
        maps.append([(SOURCE, k, 0) for k in range(c)] + [(CONST, 0, 0.1), (CONST, 0, -65519.0)])
        maps.append([(CONST, 0, float("inf")), (CONST, 0, 1e-7)])
    for entries in maps:
        got = remap(isa, bits.tobytes(), dtype, dtype, rows, c, inner, entries, rng)
        assert got == numpy_remap(bits, dtype, dtype, entries), entries


@isa_params
@pytest.mark.parametrize("src", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("dst", ["F32", "F16", "BF16"])
def test_remap_fused_cast_matches_numpy(isa, src, dst):
    rng = np.random.default_rng(7)
    for rows, c, inner in [(3, 3, 17), (1, 4, 1), (2, 2, 300)]:
        bits = random_bits(rng, (rows, c, inner), src)
        entries = [(SOURCE, k, 0) for k in range(c)] + [(ZERO, 0, 0), (CONST, 0, 0.3333)]
        got = remap(isa, bits.tobytes(), src, dst, rows, c, inner, entries, rng)
        assert got == numpy_remap(bits, src, dst, entries)


def cast(isa, src_dtype, dst_dtype, bits):
    out = np.zeros(bits.size, dtype={2: np.uint16, 4: np.uint32}[SIZE[dst_dtype]])
    err = Error()
    rc = lib.widen_cast(DTYPES[src_dtype], DTYPES[dst_dtype], bits.ctypes.data, out.ctypes.data, bits.size, isa,
                        ctypes.byref(err))
    assert rc == 0, err.message
    return out


@isa_params
def test_cast_every_f16_and_bf16_to_f32(isa):
    everything = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    f16 = cast(isa, "F16", "F32", everything)
    want = everything.view(np.float16).astype(np.float32).view(np.uint32)
    assert np.array_equal(f16, np.where((everything & 0x7FFF) > 0x7C00, want | 0x400000, want))
    bf16 = cast(isa, "BF16", "F32", everything)
    assert np.array_equal(bf16, everything.astype(np.uint32) << 16)


@isa_params
def test_cast_f32_down_matches_numpy(isa):
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2 ** 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    # every rounding neighbourhood of interest: around F16 ties, its subnormals, its overflow edge
    ties = (np.arange(-4096, 4096, dtype=np.int64) + 0x38801000).astype(np.uint32)
    edge = (np.arange(-4096, 4096, dtype=np.int64) + 0x477FF000).astype(np.uint32)
    sub = np.arange(0x32F00000, 0x38900000, 0x1001, dtype=np.uint32)
    bits = np.concatenate([bits, ties, edge, sub, sub | 0x80000000])
    values = bits.view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.array_equal(cast(isa, "F32", "F16", bits), to_dtype_bits(values, "F16"))
    assert np.array_equal(cast(isa, "F32", "BF16", bits), to_dtype_bits(values, "BF16"))


@isa_params
def test_cast_between_f16_and_bf16_rounds_once(isa):
    everything = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    with np.errstate(over="ignore", invalid="ignore"):
        assert np.array_equal(cast(isa, "F16", "BF16", everything),
                              to_dtype_bits(from_dtype_bits(everything, "F16"), "BF16"))
        assert np.array_equal(cast(isa, "BF16", "F16", everything),
                              to_dtype_bits(from_dtype_bits(everything, "BF16"), "F16"))


# Strides may make a row's map read past the row (an overlapping view: channel 3 of row r is channel 0
# of row r + 1), and far past it. The short-row kernels load one vector per step (and AVX-512 three
# per four steps): a byte outside what they load must send the job to the general path, not to a
# wrong byte (row 3 of each four-step group, and every source past the vector, once were).
@isa_params
@pytest.mark.parametrize("dtype", ["F32", "F16", "U8"])
@pytest.mark.parametrize("row_stride,chan_stride", [(3, 1), (3, 6), (4, 1), (3, 2)])
@pytest.mark.parametrize("rows", [1, 17, 41, 1000])
def test_rows_whose_map_reads_past_the_row_match_numpy(isa, dtype, row_stride, chan_stride, rows):
    rng = np.random.default_rng(rows * 100 + row_stride * 10 + chan_stride)
    channels = [0, 1, 2, 3]
    flat = random_bits(rng, ((rows - 1) * row_stride + max(channels) * chan_stride + 1,), dtype)
    src_buf = np.frombuffer(b"\x00" + flat.tobytes(), dtype=np.uint8).copy()
    out_bytes = rows * len(channels) * SIZE[dtype]
    dst_buf, start = guarded(out_bytes, rng)
    before = dst_buf.copy()
    cmap = (MapEntry * len(channels))(*[MapEntry(SOURCE, ch, 0.0, 0) for ch in channels])
    job = RemapJob(src_buf.ctypes.data + 1, dst_buf.ctypes.data + start, DTYPES[dtype], DTYPES[dtype], rows,
                   len(channels), 1, row_stride, chan_stride, len(channels), 1, cmap)
    err = Error()
    assert lib.widen_remap(ctypes.byref(job), isa, ctypes.byref(err)) == 0, err.message
    want = flat[np.arange(rows)[:, None] * row_stride + np.array(channels)[None, :] * chan_stride]
    assert dst_buf[start:start + out_bytes].tobytes() == want.tobytes()
    assert np.array_equal(dst_buf[:start], before[:start]) and np.array_equal(dst_buf[start + out_bytes:],
                                                                              before[start + out_bytes:])


def test_remap_rejects_bad_jobs():
    rng = np.random.default_rng(0)
    err = Error()
    src = np.zeros(16, dtype=np.uint8)
    dst = np.zeros(16, dtype=np.uint8)
    cmap = (MapEntry * 1)(MapEntry(CONST, 0, 1.0, 0))
    job = RemapJob(src.ctypes.data, dst.ctypes.data, DTYPES["I32"], DTYPES["I32"], 1, 1, 2, 2, 2, 2, 2, cmap)
    assert lib.widen_remap(ctypes.byref(job), 0, ctypes.byref(err)) == 2
    assert b"const" in err.message
    job = RemapJob(src.ctypes.data, dst.ctypes.data, DTYPES["I32"], DTYPES["F32"], 1, 1, 2, 2, 2, 2, 2,
                   (MapEntry * 1)(MapEntry(SOURCE, 0, 0, 0)))
    assert lib.widen_remap(ctypes.byref(job), 0, ctypes.byref(err)) == 2
    assert rng is not None


STORES = {"auto": 0, "cached": 1, "stream": 2}


def remap_raw(isa, src, dtype, rows, c, inner, entries, store, dst_offset, dst_row_pad, fill):
    """A same-dtype remap into a garbage-filled buffer starting `dst_offset` bytes into a 64-byte
    aligned block, rows `dst_row_pad` elements apart beyond dense; returns the block, guards included."""
    n, size = len(entries), SIZE[dtype]
    dst_row = n * inner + dst_row_pad
    nbytes = rows * dst_row * size + 2 * GUARD + 64
    buf = np.zeros(nbytes + 64, dtype=np.uint8)
    base = (-buf.ctypes.data) % 64
    buf[base:base + nbytes] = np.frombuffer(fill[:nbytes], dtype=np.uint8)
    start = base + GUARD + dst_offset
    cmap = (MapEntry * max(n, 1))()
    for i, (kind, ch, val) in enumerate(entries):
        cmap[i] = MapEntry(kind, ch, val, 0)
    job = RemapJob(src.ctypes.data, buf.ctypes.data + start, DTYPES[dtype], DTYPES[dtype], rows, n, inner,
                   c * inner, inner, dst_row, inner, cmap, store)
    err = Error()
    assert lib.widen_remap(ctypes.byref(job), isa, ctypes.byref(err)) == 0, err.message
    return buf[base:base + nbytes].tobytes()


@isa_params
def test_short_copies_of_every_length(isa):
    """Cached copies under 4 KiB go through the ISA's own short-copy loop (32-byte steps, the last one
    overlapping), not memcpy: every length from 0 to 300 bytes and around the 4096-byte switch, at
    several start phases, rows not dense (so the short-row permutation does not take them), against
    the scalar kernel, and the copied bytes against the input itself."""
    rng = np.random.default_rng(16)
    fill = rng.bytes(1 << 16)
    for n in list(range(0, 301)) + list(range(4060, 4131)):
        src = np.frombuffer(b"\x00" + rng.bytes(max(2 * n, 1)), dtype=np.uint8)[1:]
        for dst_offset in (0, 1, 33):
            args = (src, "U8", 2, 1, n, [(SOURCE, 0, 0)], STORES["cached"], dst_offset, 5, fill)
            got = remap_raw(isa, *args)
            assert got == remap_raw(0, *args), (n, dst_offset)
            for r in range(2):
                at = GUARD + dst_offset + r * (n + 5)
                assert got[at:at + n] == src[r * n:(r + 1) * n].tobytes(), (n, dst_offset, r)


@isa_params
@pytest.mark.parametrize("dtype", ["U8", "F16", "BF16", "F32", "I64"])
@pytest.mark.parametrize("store", list(STORES))
def test_copies_and_fills_match_scalar(isa, dtype, store):
    """The copy-and-fill paths (memset for zero fills; with streaming stores, a dense output written
    as one stream of whole cache lines, shared lines put together first) against the scalar kernel:
    inner 1 and odd, 0 and 1 rows, new channels at the front, middle and end, every start phase of
    a cache line, rows that are not dense (strided), and runs of many lines."""
    rng = np.random.default_rng(15)
    fill = rng.bytes(1 << 22)
    computable = dtype in ("F16", "BF16", "F32")
    for rows, c, inner in [(0, 3, 5), (1, 3, 1), (1, 3, 196), (7, 3, 1), (5, 3, 13), (33, 3, 196), (3, 2, 4099),
                           (2, 5, 64 // SIZE[dtype] + 1), (65, 1, 3)]:
        src = np.frombuffer(b"\x00" + rng.bytes(max(rows * c * inner * SIZE[dtype], 1)), dtype=np.uint8)
        src = src[1:]  # an unaligned source
        maps = [
            [(SOURCE, k, 0) for k in range(c)] + [(ZERO, 0, 0)],           # new channel at the end
            [(ZERO, 0, 0)] + [(SOURCE, k, 0) for k in range(c)],           # at the front
            [(SOURCE, 0, 0), (ZERO, 0, 0), (ZERO, 0, 0)] + [(SOURCE, k, 0) for k in range(1, c)],
            [(SOURCE, c - 1 - k, 0) for k in range(c)],                   # runs that do not merge
        ]
        if computable:
            maps.append([(SOURCE, k, 0) for k in range(c)] + [(CONST, 0, -0.1), (CONST, 0, -0.1), (ZERO, 0, 0)])
        for entries in maps:
            for dst_offset in (0, 1, 2, 8, 63):
                for pad in (0, 3):
                    args = (src, dtype, rows, c, inner, entries, STORES[store], dst_offset, pad, fill)
                    assert remap_raw(isa, *args) == remap_raw(0, *args), (rows, c, inner, entries, dst_offset, pad)
