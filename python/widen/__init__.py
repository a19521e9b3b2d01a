"""widen: model surgery on checkpoint files, from Python.

ctypes bindings over libwiden (the C library; no compiled extension here):

- ``widen.open(path)``: a checkpoint's tensors, and ``get(name)`` as a NumPy array that views the
  file's read-only mapping where its bytes are already the array (zero-copy), else a copy.
- ``widen.apply(src, dst, ...)``: widen or remap tensors, cast, convert; streamed, hashed, atomic
  (``dst`` a path), or streamed front to back into an open file or descriptor.
- ``widen.verify(input, output)`` and ``widen.hash(path)``.
- ``widen.remap(array, axis, map)``: the channel-map kernels on an in-memory array.

Every failure raises a ``widen.Error`` whose ``status`` is the exit code of the ``widen`` command
(``UsageError`` 2, ``FormatError`` 3, ``WidenIOError`` 4, ``Interrupted`` 130, ``Different`` 1).

Dtypes without a NumPy equivalent come back as their raw bit patterns: BF16 as ``uint16`` and the
F8 types as ``uint8`` arrays of the tensor's shape
(``torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)`` reinterprets BF16);
F4 and F6 pack several elements into a byte and raise ``UsageError``.
"""
from __future__ import annotations

import ctypes
import os
import warnings
import weakref
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _lib
from ._lib import lib

__all__ = ["open", "apply", "verify", "hash", "remap", "Checkpoint", "Tensor", "ApplyStats", "VerifyReport", "Hashes",
           "Error", "UsageError", "FormatError", "WidenIOError", "IOError", "Interrupted", "Different",
           "WidenWarning", "library_version", "LIBRARY_PATH", "__version__"]

__version__ = "0.1.0"
LIBRARY_PATH: Optional[str] = _lib.LIBRARY_PATH
PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------------
# Errors


class Error(Exception):
    """A widen failure. ``status`` is the exit code the ``widen`` command would give; ``message`` the
    library's one-line message."""

    status: int = 0

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class Different(Error):
    """verify found a difference (exit 1); raised by ``verify(..., check=True)``."""
    status = 1


class UsageError(Error):
    """Bad arguments: unknown tensor, impossible map, ... (exit 2)."""
    status = 2


class FormatError(Error):
    """Invalid or unsupported input file (exit 3)."""
    status = 3


class WidenIOError(Error):
    """Read or write failure, disk full, out of memory (exit 4)."""
    status = 4


class Interrupted(Error):
    """The progress callback asked to stop (exit 130); no output was left behind."""
    status = 130


class WidenWarning(UserWarning):
    """A notice of apply's (values a conversion drops, storages it unshares)."""


IOError = WidenIOError  # the brief's name; the builtin stays reachable as builtins.OSError

_BY_STATUS = {1: Different, 2: UsageError, 3: FormatError, 4: WidenIOError, 130: Interrupted}


# The library's messages name no flag of the widen command (see widen.h); where the error's hint says
# which setting would change the outcome, the exception names this package's argument for it.
_HINTS = {1: "overwrite=True replaces it", 2: "the format argument sets it", 3: "cast='f32'",
          4: "no_config=True leaves the configs as they are", 5: "pass manifest=PATH"}


def _raise(status: int, err: Optional[_lib.Error_] = None, message: Optional[str] = None) -> None:
    text = message if message is not None else err.message.decode("utf-8", "replace") if err is not None else ""
    if message is None and err is not None and err.hint in _HINTS:
        text += f" ({_HINTS[err.hint]})"
    raise _BY_STATUS.get(status, Error)(text, status)


def _check(status: int, err: _lib.Error_) -> None:
    if status:
        _raise(status, err)


def _path(p: PathLike) -> bytes:
    return os.fsencode(os.fspath(p))


def library_version() -> str:
    """The linked libwiden's version, "MAJOR.MINOR.PATCH"."""
    n = lib.widen_version_number()
    return f"{n // 10000}.{n // 100 % 100}.{n % 100}"


# ---------------------------------------------------------------------------------------------------
# Reading checkpoints

# NumPy equivalents of widen's dtypes (little-endian); BF16 and F8 as raw bits of their size.
_NUMPY = {"BOOL": "|b1", "U8": "|u1", "I8": "|i1", "I16": "<i2", "U16": "<u2", "F16": "<f2", "I32": "<i4",
          "U32": "<u4", "F32": "<f4", "C64": "<c8", "F64": "<f8", "I64": "<i8", "U64": "<u8",
          "BF16": "<u2", "F8_E5M2": "|u1", "F8_E4M3": "|u1", "F8_E8M0": "|u1", "F8_E4M3FNUZ": "|u1",
          "F8_E5M2FNUZ": "|u1"}
_RAW = {"BF16", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}


def numpy_dtype(dtype: str) -> np.dtype:
    """The NumPy dtype ``Checkpoint.get`` returns for a widen dtype name (raw bits for BF16 and F8);
    UsageError for F4 and F6, which pack elements below a byte."""
    if dtype not in _NUMPY:
        raise UsageError(f"{dtype} packs several elements into a byte: no NumPy array holds it")
    return np.dtype(_NUMPY[dtype])


@dataclass(frozen=True)
class Tensor:
    """One tensor as the file describes it. ``offset`` is the absolute byte offset of its data;
    ``nbytes`` its bytes in the file (0 for a strided torch view, whose elements are not one run);
    ``strided``: its bytes are not its row-major little-endian elements (a strided view, a
    Fortran-order or big-endian NumPy array), so ``get`` copies it."""
    name: str
    dtype: str
    shape: Tuple[int, ...]
    offset: int
    nbytes: int
    strided: bool = False

    @property
    def raw(self) -> bool:
        """The dtype has no NumPy equivalent: ``get`` returns its bit patterns."""
        return self.dtype in _RAW


class _Handle:
    """Owns a widen_checkpoint*: closed when the last of the Checkpoint and its array views lets go."""

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr
        self._finalizer = weakref.finalize(self, lib.widen_close, ptr)


class Checkpoint:
    """An open checkpoint (safetensors, torch .pt/.pth/.bin, .npy/.npz), read-only. A context manager;
    arrays that ``get`` returns as views keep the file mapped until they are gone, even after close."""

    def __init__(self, path: PathLike, progress: Optional[Callable[[int, int], object]] = None) -> None:
        self.path = os.fspath(path)
        err = _lib.Error_()
        ptr = ctypes.c_void_p()
        callbacks = _Callbacks(progress, None)
        options = callbacks.open_options()
        status = lib.widen_open_with(_path(path), ctypes.byref(options), ctypes.byref(ptr), ctypes.byref(err))
        if callbacks.exception is not None:
            raise callbacks.exception
        _check(status, err)
        self._handle: Optional[_Handle] = _Handle(ptr.value)
        self.format: str = lib.widen_checkpoint_format(ptr).decode()
        self.size: int = lib.widen_checkpoint_size(ptr)
        self.tensors: List[Tensor] = [self._info(ptr.value, i) for i in range(lib.widen_tensor_count(ptr))]
        self._index: Dict[str, int] = {t.name: i for i, t in enumerate(self.tensors)}
        meta = {}
        for i in range(lib.widen_metadata_count(ptr)):
            k, v = ctypes.c_char_p(), ctypes.c_char_p()
            lib.widen_metadata_at(ptr, i, ctypes.byref(k), ctypes.byref(v))
            meta[k.value.decode("utf-8", "surrogateescape")] = v.value.decode("utf-8", "surrogateescape")
        self.metadata: Dict[str, str] = meta

    @staticmethod
    def _info(ptr: int, i: int) -> Tensor:
        t = lib.widen_tensor_at(ptr, i).contents
        return Tensor(t.name.decode("utf-8", "surrogateescape"), _lib.DTYPES[t.dtype], tuple(t.shape[:t.rank]),
                      t.offset, t.nbytes, bool(lib.widen_tensor_strided(ptr, i)))

    def _ptr(self) -> int:
        if self._handle is None:
            raise UsageError(f"{self.path}: the checkpoint is closed")
        return self._handle.ptr

    def close(self) -> None:
        """Closes the checkpoint; the mapping goes once no array views it either."""
        self._handle = None

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> np.ndarray:
        return self.get(name)

    def names(self) -> List[str]:
        """Tensor names in file order."""
        return [t.name for t in self.tensors]

    def info(self, name: str) -> Tensor:
        """The Tensor called ``name``; UsageError if there is none."""
        if name not in self._index:
            raise UsageError(f"{self.path}: no tensor named '{name}'")
        return self.tensors[self._index[name]]

    def get(self, name: str, copy: bool = False) -> np.ndarray:
        """Tensor ``name`` as a NumPy array of its shape. Where the file holds its elements as one
        run of little-endian row-major bytes (widen_tensor_data), a read-only view of the mapping that
        keeps the checkpoint alive; else (or with ``copy=True``) a writable copy, gathered into
        row-major order (widen_tensor_read). BF16/F8 come as raw uint16/uint8 bits."""
        ptr = self._ptr()
        t = self.info(name)
        index = self._index[name]
        dtype = numpy_dtype(t.dtype)
        err = _lib.Error_()
        if not copy and not t.strided:
            data, nbytes = ctypes.c_void_p(), ctypes.c_uint64()
            _check(lib.widen_tensor_data(ptr, index, ctypes.byref(data), ctypes.byref(nbytes), ctypes.byref(err)), err)
            if nbytes.value == 0:
                out = np.empty(t.shape, dtype)
            else:
                buf = (ctypes.c_char * nbytes.value).from_address(data.value)
                buf._widen_handle = self._handle  # the view keeps the mapping
                out = np.frombuffer(buf, dtype=dtype).reshape(t.shape)
            out.flags.writeable = False
            return out
        out = np.empty(t.shape, dtype)
        _check(lib.widen_tensor_read(ptr, index, out.ctypes.data if out.nbytes else None, out.nbytes,
                                     ctypes.byref(err)), err)
        return out

    def __repr__(self) -> str:
        return f"<widen.Checkpoint {self.path!r} {self.format}, {len(self.tensors)} tensors>"


def open(path: PathLike,  # noqa: A001 (widen.open, as the brief names it)
         progress: Optional[Callable[[int, int], object]] = None) -> Checkpoint:
    """Opens a checkpoint file read-only (FormatError if it is not one widen reads, WidenIOError if it
    cannot be read). Use as ``with widen.open(p) as ckpt: ckpt.get(name)``. ``progress(done, total)``
    is called as opening reads data, which only an .npz does (its stored members' CRC-32 checked, its
    deflated members inflated: done of their bytes, inflated), every 8 MiB and at the end; a true
    return value stops it with ``Interrupted``."""
    return Checkpoint(path, progress)


# ---------------------------------------------------------------------------------------------------
# Apply


class _Callbacks:
    """The C callbacks of one run; an exception a Python callable raises stops the run and is re-raised."""

    def __init__(self, progress: Optional[Callable[[int, int], object]],
                 warning: Optional[Callable[[str], object]]) -> None:
        self.progress = progress
        self.warning = warning
        self.exception: Optional[BaseException] = None
        self.c_progress = _lib.PROGRESS(self._on_progress) if progress else _lib.PROGRESS()
        self.c_warning = _lib.WARNING(self._on_warning)

    def open_options(self) -> _lib.OpenOptions:
        options = _lib.OpenOptions()
        lib.widen_open_options_init(ctypes.byref(options), ctypes.sizeof(options))
        options.progress = self.c_progress
        return options

    def open_model(self, path: PathLike, model: ctypes.c_void_p) -> None:
        """widen_model_open_with, this run's progress reporting the opening (an .npz's inflating)."""
        err = _lib.Error_()
        options = self.open_options()
        status = lib.widen_model_open_with(_path(path), ctypes.byref(options), ctypes.byref(model), ctypes.byref(err))
        if self.exception is not None:
            raise self.exception
        _check(status, err)

    def _on_progress(self, _user: object, done: int, total: int) -> int:
        if self.exception is not None:
            return 1
        try:
            return 1 if self.progress(done, total) else 0
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
            self.exception = e
            return 1

    def _on_warning(self, _user: object, message: bytes) -> None:
        text = message.decode("utf-8", "replace")
        try:
            if self.warning is not None:
                self.warning(text)
            else:
                warnings.warn(text, WidenWarning, stacklevel=3)
        except BaseException as e:  # noqa: BLE001
            if self.exception is None:
                self.exception = e


def _map_text(map: Union[str, Sequence[Union[int, str]]]) -> bytes:
    """--map syntax from a string or a sequence of entries (ints: input channels; strings: entries)."""
    if isinstance(map, str):
        return map.encode()
    return ",".join(str(m) for m in map).encode()


def _parse_map(map: Union[str, Sequence[Union[int, str]]]) -> "ctypes.Array[_lib.MapEntry]":
    err = _lib.Error_()
    entries = ctypes.POINTER(_lib.MapEntry)()
    count = ctypes.c_size_t()
    _check(lib.widen_parse_map(_map_text(map), ctypes.byref(entries), ctypes.byref(count), ctypes.byref(err)), err)
    try:
        out = (_lib.MapEntry * max(count.value, 1))()
        ctypes.memmove(out, entries, ctypes.sizeof(_lib.MapEntry) * count.value)
        return out, count.value
    finally:
        _lib.libc_free(ctypes.cast(entries, ctypes.c_void_p))


_CASTS = {"f32": 14, "f16": 10, "bf16": 11}


def _stream(dst: object) -> Optional[Tuple[int, bytes]]:
    """A destination that is an open file or descriptor: (its descriptor, its name), flushed first."""
    if isinstance(dst, int) and not isinstance(dst, bool):
        return dst, b"<stdout>" if dst == 1 else f"<fd {dst}>".encode()
    if isinstance(dst, (str, bytes, os.PathLike)) or not hasattr(dst, "fileno"):
        return None
    flush = getattr(dst, "flush", None)  # a socket has none
    if flush is not None:
        flush()
    name = getattr(dst, "name", None)
    return dst.fileno(), os.fsencode(name) if isinstance(name, (str, bytes)) else f"<fd {dst.fileno()}>".encode()


def apply(src: PathLike, dst: Union[PathLike, int, BinaryIO], tensors: Union[None, str, Sequence[str]] = None,
          to: Optional[int] = None, init: Optional[str] = None, at: Optional[int] = None,
          map: Union[None, str, Sequence[Union[int, str]]] = None,
          cast: Optional[str] = None, axis: Optional[int] = None, channels_from: int = 3,
          manifest: Optional[PathLike] = None, format: Optional[str] = None, threads: int = 0, fsync: bool = True,
          overwrite: bool = False, no_config: bool = False, norm_fill: Optional[Tuple[float, float]] = None,
          progress: Optional[Callable[[int, int], object]] = None,
          warning: Optional[Callable[[str], object]] = None, dry_run: bool = False) -> "ApplyStats":
    """Writes ``dst`` = the model ``src`` (a checkpoint file or a model folder) with the transform
    applied, as ``widen apply`` does (same option names; ``channels_from`` is ``--from``).

    ``tensors`` names the tensors (default: the one auto-detected: rank >= 3, ``channels_from``
    channels on ``axis``); ``to`` widens them to that many channels, old ones at ``at`` (default 0),
    new ones filled by ``init`` (zeros, const:V, mean, copy:K, normal:STD[:SEED], timm, cyclic); or
    ``map`` gives every output channel ("0,1,2,zero" or [0, 1, 2, "zero"]). ``cast`` is f32, f16 or
    bf16. ``axis`` defaults to 1 (-2 for an .npz). ``progress(done, total)`` is called as bytes are
    written (before that, where opening ``src`` reads data, an .npz's inflating, as ``open`` calls it:
    a run of its own, with its own total); a true return value stops the run with ``Interrupted``, an
    exception it raises stops it and is re-raised. Notices go to ``warning(message)``, else to ``warnings.warn`` (WidenWarning).
    The output appears only when complete: after any failure there is none.

    ``dst`` may also be an open binary file (flushed first) or a descriptor: the output is then
    written into it front to back as it is made, from its position on (a pipe, a socket, a file;
    ``format`` safetensors or pt, default the input's; not a terminal, not a model folder), every
    check made before the first byte; after a failure there, what it got is incomplete.

    ``dry_run=True`` makes every check and notice of the real run and writes nothing: it returns
    when the run would start writing, or raises what the run would raise before that.

    Returns what was done with the output's bytes (``ApplyStats``: cloned from the input where the
    file system can, copied inside the kernel, written; all 0 for a dry run)."""
    if map is not None and (init is not None or at is not None):
        raise UsageError("init and at go with to, not map")
    if (init is not None or at is not None) and to is None:
        raise UsageError("init and at go with to")
    if tensors is not None and to is None and map is None:
        raise UsageError("tensors selects tensors for to or map")
    if norm_fill is not None and no_config:
        raise UsageError("norm_fill sets values in the configs that no_config leaves alone")
    if format is not None and format not in ("safetensors", "pt", "npz"):
        raise UsageError(f"format: '{format}' is not safetensors, pt or npz")
    err = _lib.Error_()
    _check(lib.widen_isa_init(ctypes.byref(err)), err)
    names = [tensors] if isinstance(tensors, str) else list(tensors) if tensors is not None else None
    tr = lib.widen_transform_new()
    model = ctypes.c_void_p()
    if not tr:
        raise WidenIOError("out of memory")
    try:
        if cast is not None:
            if cast.lower() not in _CASTS:
                raise UsageError(f"cast: '{cast}' is not f32, f16 or bf16")
            _check(lib.widen_transform_set_cast(tr, _CASTS[cast.lower()], ctypes.byref(err)), err)
        callbacks = _Callbacks(progress, warning)
        callbacks.open_model(src, model)
        if axis is None:
            axis = 1
            if not lib.widen_model_is_folder(model) and \
                    lib.widen_checkpoint_format(lib.widen_model_file(model, 0)) == b"npz":
                axis = -2  # JAX/Flax HWIO kernels
        if to is not None or map is not None:
            _add_maps(model, tr, os.fspath(src), names, to, init, at or 0, map, axis, channels_from)
        options = _lib.ApplyOptions()
        lib.widen_apply_options_init(ctypes.byref(options), ctypes.sizeof(options))
        options.threads = threads
        options.fsync = int(fsync)
        options.overwrite = int(overwrite)
        options.manifest_path = _path(manifest) if manifest is not None else None
        options.format = format.encode() if format else None
        options.progress = callbacks.c_progress
        options.warning = callbacks.c_warning
        options.no_config = int(no_config)
        options.dry_run = int(dry_run)
        stats = _lib.ApplyStats()
        lib.widen_apply_stats_init(ctypes.byref(stats), ctypes.sizeof(stats))
        options.stats = ctypes.pointer(stats)
        if norm_fill is not None:
            options.norm_fill = 1
            options.norm_fill_mean, options.norm_fill_std = float(norm_fill[0]), float(norm_fill[1])
        stream = _stream(dst)
        if stream and lib.widen_model_is_folder(model):
            raise UsageError(f"{os.fspath(src)}: a model folder is written to a new folder, not to a stream")
        if stream:
            status = lib.widen_apply_to_fd(lib.widen_model_file(model, 0), stream[0], stream[1], tr,
                                           ctypes.byref(options), ctypes.byref(err))
        else:
            status = lib.widen_model_apply(model, _path(dst), tr, ctypes.byref(options), ctypes.byref(err))
        if callbacks.exception is not None:
            raise callbacks.exception
        _check(status, err)
        return ApplyStats(stats.bytes_cloned, stats.bytes_copied, stats.bytes_written)
    finally:
        if model.value:
            lib.widen_model_close(model)
        lib.widen_transform_free(tr)


@dataclass(frozen=True)
class ApplyStats:
    """What an apply did with the output's bytes: ``cloned`` (shared with the input's blocks: XFS,
    btrfs, OpenZFS, NFS 4.2), ``copied`` (inside the kernel), ``written`` (from widen's buffers)."""
    cloned: int
    copied: int
    written: int


def _add_maps(model: ctypes.c_void_p, tr: int, src: str, names: Optional[List[str]], to: Optional[int],
              init: Optional[str], at: int, map: Union[None, str, Sequence[Union[int, str]]], axis: int,
              channels_from: int) -> None:
    err = _lib.Error_()
    if names is None:
        found = (ctypes.c_size_t * 16)()
        n = lib.widen_model_find_candidates(model, axis, channels_from, found, 16)
        if n != 1:
            listed = ", ".join(lib.widen_model_tensor_name(model, found[i]).decode("utf-8", "replace")
                               for i in range(min(n, 16)))
            if n == 0:
                raise UsageError(f"{src}: no floating-point tensor of rank >= 3 has {channels_from} channels on axis "
                                 f"{axis}; name one with tensors=")
            raise UsageError(f"{src}: {n} tensors have {channels_from} channels on axis {axis} ({listed}); name them "
                             f"with tensors=")
        names = [lib.widen_model_tensor_name(model, found[0]).decode("utf-8", "surrogateescape")]
    given, given_n = _parse_map(map) if map is not None else (None, 0)
    if map is not None and to is not None and given_n != to:
        raise UsageError(f"map has {given_n} entries but to asks for {to} channels")
    c_init = _lib.Init()
    c_init.fill.kind = 1  # zeros
    if init is not None:
        _check(lib.widen_parse_init(init.encode(), ctypes.byref(c_init), ctypes.byref(err)), err)
    for name in names:
        k = lib.widen_model_tensor_find(model, name.encode("utf-8", "surrogateescape"))
        if k < 0:
            raise UsageError(f"{src}: no tensor named '{name}'")
        t = lib.widen_model_tensor_at(model, k, None).contents
        a = axis + t.rank if axis < 0 else axis
        if not 0 <= a < t.rank:
            raise UsageError(f"{src}: tensor '{name}' has rank {t.rank}: no axis {axis}")
        cname = lib.widen_model_tensor_name(model, k)
        if map is None:
            if not 0 <= to < 2 ** 32 or not 0 <= at < 2 ** 32:
                raise UsageError(f"to and at must be channel counts, not {to} and {at}")
            entries = (_lib.MapEntry * max(to, 1))()
            ch = t.shape[a]
            if ch >= 2 ** 32:
                raise UsageError(f"tensor '{name}' has too many channels")
            if lib.widen_widen_map(ch, to, at, ctypes.byref(c_init), entries, ctypes.byref(err)):
                raise UsageError(f"{src}: tensor '{name}': {err.message.decode('utf-8', 'replace')}")
            _check(lib.widen_transform_add_map(tr, cname, axis, entries, to, ctypes.byref(err)), err)
        else:
            _check(lib.widen_transform_add_map(tr, cname, axis, given, given_n, ctypes.byref(err)), err)


# ---------------------------------------------------------------------------------------------------
# Verify and hash


@dataclass(frozen=True)
class VerifyReport:
    """What verify found: ``ok`` (WIDEN_OK), tensors compared, of which transformed, differences, and
    the first difference (one line; "" when ok)."""
    ok: bool
    tensors: int
    transformed: int
    differences: int
    first: str

    def __bool__(self) -> bool:
        return self.ok


def verify(input: PathLike, output: PathLike, manifest: Optional[PathLike] = None,  # noqa: A002
           check: bool = False, threads: int = 0,
           progress: Optional[Callable[[int, int], object]] = None) -> VerifyReport:
    """Proves that ``output`` is ``input`` with the recorded transform applied (files or model
    folders; the transform from ``manifest`` when given, whose hashes are then checked too, else the
    output's ``widen`` metadata). Returns the report; with ``check=True`` a difference raises
    ``Different`` (status 1) instead. Errors (unreadable files, ...) always raise. ``threads`` (0:
    all CPUs) does not change the verdict; ``progress(done, total)`` as for apply: a true result
    stops the run (``Interrupted``)."""
    err = _lib.Error_()
    r = _lib.VerifyReport()
    lib.widen_verify_report_init(ctypes.byref(r), ctypes.sizeof(r))
    options = _lib.VerifyOptions()
    lib.widen_verify_options_init(ctypes.byref(options), ctypes.sizeof(options))
    options.manifest_path = _path(manifest) if manifest is not None else None
    options.threads = threads
    callbacks = _Callbacks(progress, None)
    options.progress = callbacks.c_progress
    status = lib.widen_model_verify(_path(input), _path(output), ctypes.byref(options), ctypes.byref(r),
                                    ctypes.byref(err))
    if callbacks.exception is not None:
        raise callbacks.exception
    if status not in (0, 1):
        _raise(status, err)
    report = VerifyReport(status == 0, r.tensors, r.transformed, r.differences,
                          r.first.decode("utf-8", "replace") if status else "")
    if status and check:
        more = f" (and {r.differences - 1} more differences)" if r.differences > 1 else ""
        raise Different(report.first + more, 1)
    return report


@dataclass(frozen=True)
class Hashes:
    """XXH3-128 hex digests (as xxhsum -H2 prints them): of each weight file (``files``, by its
    name in the model) and of each tensor's elements in row-major order (``tensors``, by name).
    ``file`` is the single file's digest for a checkpoint file."""
    files: Dict[str, str] = field(default_factory=dict)
    tensors: Dict[str, str] = field(default_factory=dict)

    @property
    def file(self) -> str:
        if len(self.files) != 1:
            raise UsageError(f"a model of {len(self.files)} files has no single file hash")
        return next(iter(self.files.values()))


def _hex(h: _lib.Hash128) -> str:
    out = (ctypes.c_char * 33)()
    lib.widen_hash128_hex(h, out)
    return out.value.decode()


def hash(path: PathLike, progress: Optional[Callable[[int, int], object]] = None,  # noqa: A001
         threads: int = 0) -> Hashes:
    """Hashes a checkpoint file or model folder: each file and each tensor. ``progress(done, total)``
    as for apply (per file); ``threads`` (0: all CPUs) does not change the hashes."""
    err = _lib.Error_()
    model = ctypes.c_void_p()
    callbacks = _Callbacks(progress, None)
    callbacks.open_model(path, model)
    try:
        options = _lib.HashOptions()
        lib.widen_hash_options_init(ctypes.byref(options), ctypes.sizeof(options))
        options.threads = threads
        options.progress = callbacks.c_progress
        files, per_file = {}, []
        for f in range(lib.widen_model_file_count(model)):
            ckpt = lib.widen_model_file(model, f)
            n = lib.widen_tensor_count(ckpt)
            file_hash, tensor_hashes = _lib.Hash128(), (_lib.Hash128 * max(n, 1))()
            status = lib.widen_hash_checkpoint(ckpt, ctypes.byref(file_hash), tensor_hashes, ctypes.byref(options),
                                               ctypes.byref(err))
            if callbacks.exception is not None:
                raise callbacks.exception
            _check(status, err)
            files[lib.widen_model_file_name(model, f).decode("utf-8", "surrogateescape")] = _hex(file_hash)
            first = ctypes.addressof(lib.widen_tensor_at(ckpt, 0).contents) if n else 0
            per_file.append((first, tensor_hashes))
        tensors = {}
        size = ctypes.sizeof(_lib.TensorInfo)
        for i in range(lib.widen_model_tensor_count(model)):
            f = ctypes.c_size_t()
            info = lib.widen_model_tensor_at(model, i, ctypes.byref(f))
            first, hashes = per_file[f.value]
            k = (ctypes.addressof(info.contents) - first) // size
            tensors[lib.widen_model_tensor_name(model, i).decode("utf-8", "surrogateescape")] = _hex(hashes[k])
        return Hashes(files, tensors)
    finally:
        lib.widen_model_close(model)


# ---------------------------------------------------------------------------------------------------
# In-memory remap

_FROM_NUMPY = {np.dtype("bool"): 0, np.dtype("uint8"): 1, np.dtype("int8"): 2, np.dtype("int16"): 8,
               np.dtype("uint16"): 9, np.dtype("float16"): 10, np.dtype("int32"): 12, np.dtype("uint32"): 13,
               np.dtype("float32"): 14, np.dtype("complex64"): 15, np.dtype("float64"): 16, np.dtype("int64"): 17,
               np.dtype("uint64"): 18}


def _dtype_code(dtype: Union[str, np.dtype, type]) -> int:
    if isinstance(dtype, str) and dtype.upper() in _lib.DTYPES:
        return _lib.DTYPES.index(dtype.upper())
    d = np.dtype(dtype).newbyteorder("=")
    if d not in _FROM_NUMPY:
        raise UsageError(f"remap: no widen dtype for NumPy's {d}")
    return _FROM_NUMPY[d]


def remap(array: np.ndarray, axis: int, map: Union[str, Sequence[Union[int, str]]],
          dtype: Union[None, str, np.dtype, type] = None, src_dtype: Optional[str] = None) -> np.ndarray:
    """A new array: ``array`` with its channels along ``axis`` remapped by ``map`` ("0,1,2,zero",
    [2, 1, 0], [0, "const:0.5", "mean"]: --map syntax, one entry per output channel) through the
    library's kernels, and converted to ``dtype`` ("F32", "F16", "BF16" or a NumPy dtype; default: the
    input's). BF16 arrays are uint16 bit patterns: pass ``src_dtype="BF16"`` for such an input (and
    get uint16 back for ``dtype="BF16"``). Fills other than zero need F32, F16 or BF16."""
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    if a.ndim == 0:
        raise UsageError("remap: a 0-d array has no channel axis")
    ax = axis + a.ndim if axis < 0 else axis
    if not 0 <= ax < a.ndim:
        raise UsageError(f"remap: no axis {axis} in an array of rank {a.ndim}")
    src_code = _dtype_code(src_dtype) if src_dtype is not None else _dtype_code(a.dtype)
    dst_code = _dtype_code(dtype) if dtype is not None else src_code
    dst_name = _lib.DTYPES[dst_code]
    out_np = numpy_dtype(dst_name)
    if np.dtype(numpy_dtype(_lib.DTYPES[src_code])).itemsize != a.dtype.itemsize:
        raise UsageError(f"remap: a {a.dtype} array does not hold {_lib.DTYPES[src_code]} elements")
    entries, n = _parse_map(map)
    rows = int(np.prod(a.shape[:ax], dtype=np.int64))
    c = a.shape[ax]
    inner = int(np.prod(a.shape[ax + 1:], dtype=np.int64))
    for i in range(n):
        if entries[i].kind in (0, 3) and entries[i].channel >= c:
            raise UsageError(f"remap: the map reads channel {entries[i].channel} of {c}")
    out = np.empty(a.shape[:ax] + (n,) + a.shape[ax + 1:], out_np)
    job = _lib.RemapJob(a.ctypes.data, out.ctypes.data, src_code, dst_code, rows, n, inner, c * inner, inner,
                        n * inner, inner, entries, 0, c, 0)
    err = _lib.Error_()
    _check(lib.widen_remap(ctypes.byref(job), _lib.ISA_COUNT, ctypes.byref(err)), err)
    return out
