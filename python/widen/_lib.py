"""_lib: finding libwiden and declaring its C API to ctypes (the structs mirror include/widen/widen.h)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional

MAX_RANK = 16
ISA_COUNT = 4  # WIDEN_ISA_COUNT: "the active ISA"

# widen_dtype, in the header's order
DTYPES = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16",
          "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64", "F4", "F6_E2M3", "F6_E3M2"]


class Error_(ctypes.Structure):
    _fields_ = [("status", ctypes.c_int), ("message", ctypes.c_char * 1024), ("hint", ctypes.c_int)]


class TensorInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int), ("rank", ctypes.c_int),
                ("shape", ctypes.c_uint64 * MAX_RANK), ("offset", ctypes.c_uint64), ("nbytes", ctypes.c_uint64)]


class MapEntry(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("channel", ctypes.c_uint32), ("value", ctypes.c_float),
                ("seed", ctypes.c_uint64)]


class Init(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("fill", MapEntry)]


class RemapJob(ctypes.Structure):
    _fields_ = [("src", ctypes.c_void_p), ("dst", ctypes.c_void_p), ("src_dtype", ctypes.c_int),
                ("dst_dtype", ctypes.c_int), ("rows", ctypes.c_size_t), ("channels", ctypes.c_size_t),
                ("inner", ctypes.c_size_t), ("src_row_stride", ctypes.c_size_t), ("src_chan_stride", ctypes.c_size_t),
                ("dst_row_stride", ctypes.c_size_t), ("dst_chan_stride", ctypes.c_size_t),
                ("map", ctypes.POINTER(MapEntry)), ("store", ctypes.c_int), ("src_channels", ctypes.c_size_t),
                ("index", ctypes.c_uint64)]


class Hash128(ctypes.Structure):
    _fields_ = [("high", ctypes.c_uint64), ("low", ctypes.c_uint64)]


PROGRESS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)
WARNING = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)


# The structs that can grow begin with their size: the library reads (and fills) only what this
# mirror of the header's layout holds, so an older or newer libwiden works with it (widen.h).
class ApplyStats(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("bytes_cloned", ctypes.c_uint64), ("bytes_copied", ctypes.c_uint64),
                ("bytes_written", ctypes.c_uint64)]


class ApplyOptions(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("threads", ctypes.c_uint), ("fsync", ctypes.c_int), ("overwrite", ctypes.c_int),
                ("manifest_path", ctypes.c_char_p), ("format", ctypes.c_char_p), ("progress", PROGRESS),
                ("progress_user", ctypes.c_void_p), ("warning", WARNING), ("warning_user", ctypes.c_void_p),
                ("no_config", ctypes.c_int), ("norm_fill", ctypes.c_int), ("norm_fill_mean", ctypes.c_double),
                ("norm_fill_std", ctypes.c_double), ("dry_run", ctypes.c_int), ("stats", ctypes.POINTER(ApplyStats))]


class HashOptions(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("threads", ctypes.c_uint), ("progress", PROGRESS),
                ("progress_user", ctypes.c_void_p)]


class OpenOptions(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("progress", PROGRESS), ("progress_user", ctypes.c_void_p)]


class VerifyOptions(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("manifest_path", ctypes.c_char_p), ("threads", ctypes.c_uint),
                ("progress", PROGRESS), ("progress_user", ctypes.c_void_p)]


class VerifyReport(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("tensors", ctypes.c_size_t), ("transformed", ctypes.c_size_t), ("differences", ctypes.c_size_t),
                ("first", ctypes.c_char * 1024)]


def _candidates() -> list:
    paths = []
    if os.environ.get("WIDEN_LIBRARY"):
        paths.append(os.environ["WIDEN_LIBRARY"])
    if os.environ.get("WIDEN_BUILD"):
        paths.append(os.path.join(os.environ["WIDEN_BUILD"], "libwiden.so"))
    # run from a checkout: python/widen/_lib.py -> the repository's build tree
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths.append(os.path.join(root, "build", "release", "libwiden.so"))
    return paths


def _load() -> tuple:
    for path in _candidates():
        if os.path.exists(path):
            return ctypes.CDLL(path), os.path.abspath(path)
    found = ctypes.util.find_library("widen")
    if found:
        return ctypes.CDLL(found), None
    raise ImportError("widen: libwiden not found: set WIDEN_LIBRARY to its path (e.g. build/release/libwiden.so), "
                      "build the repository (cmake --preset release && cmake --build build/release), or install it")


lib, LIBRARY_PATH = _load()
LIBRARY_PATH: Optional[str]

P = ctypes.POINTER
c_ckpt = ctypes.c_void_p
_sigs = {
    "widen_version_number": (ctypes.c_uint, []),
    "widen_dtype_name": (ctypes.c_char_p, [ctypes.c_int]),
    "widen_open": (ctypes.c_int, [ctypes.c_char_p, P(ctypes.c_void_p), P(Error_)]),
    "widen_open_options_init": (None, [P(OpenOptions), ctypes.c_size_t]),
    "widen_open_with": (ctypes.c_int, [ctypes.c_char_p, P(OpenOptions), P(ctypes.c_void_p), P(Error_)]),
    "widen_close": (None, [c_ckpt]),
    "widen_checkpoint_format": (ctypes.c_char_p, [c_ckpt]),
    "widen_checkpoint_size": (ctypes.c_uint64, [c_ckpt]),
    "widen_tensor_count": (ctypes.c_size_t, [c_ckpt]),
    "widen_tensor_at": (P(TensorInfo), [c_ckpt, ctypes.c_size_t]),
    "widen_tensor_find": (ctypes.c_long, [c_ckpt, ctypes.c_char_p]),
    "widen_tensor_strided": (ctypes.c_int, [c_ckpt, ctypes.c_size_t]),
    "widen_tensor_data": (ctypes.c_int, [c_ckpt, ctypes.c_size_t, P(ctypes.c_void_p), P(ctypes.c_uint64), P(Error_)]),
    "widen_tensor_read": (ctypes.c_int, [c_ckpt, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_uint64, P(Error_)]),
    "widen_metadata_count": (ctypes.c_size_t, [c_ckpt]),
    "widen_metadata_at": (None, [c_ckpt, ctypes.c_size_t, P(ctypes.c_char_p), P(ctypes.c_char_p)]),
    "widen_hash128_hex": (None, [Hash128, ctypes.c_char * 33]),
    "widen_hash_checkpoint": (ctypes.c_int, [c_ckpt, P(Hash128), P(Hash128), P(HashOptions), P(Error_)]),
    "widen_hash_options_init": (None, [P(HashOptions), ctypes.c_size_t]),
    "widen_verify_options_init": (None, [P(VerifyOptions), ctypes.c_size_t]),
    "widen_verify_report_init": (None, [P(VerifyReport), ctypes.c_size_t]),
    "widen_transform_new": (ctypes.c_void_p, []),
    "widen_transform_free": (None, [ctypes.c_void_p]),
    "widen_parse_map": (ctypes.c_int, [ctypes.c_char_p, P(P(MapEntry)), P(ctypes.c_size_t), P(Error_)]),
    "widen_parse_init": (ctypes.c_int, [ctypes.c_char_p, P(Init), P(Error_)]),
    "widen_widen_map": (ctypes.c_int, [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32, P(Init), P(MapEntry),
                                       P(Error_)]),
    "widen_transform_add_map": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, P(MapEntry),
                                               ctypes.c_size_t, P(Error_)]),
    "widen_transform_set_cast": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, P(Error_)]),
    "widen_apply_options_init": (None, [P(ApplyOptions), ctypes.c_size_t]),
    "widen_apply_stats_init": (None, [P(ApplyStats), ctypes.c_size_t]),
    "widen_isa_init": (ctypes.c_int, [P(Error_)]),
    "widen_remap": (ctypes.c_int, [P(RemapJob), ctypes.c_int, P(Error_)]),
    "widen_model_open": (ctypes.c_int, [ctypes.c_char_p, P(ctypes.c_void_p), P(Error_)]),
    "widen_model_open_with": (ctypes.c_int, [ctypes.c_char_p, P(OpenOptions), P(ctypes.c_void_p), P(Error_)]),
    "widen_model_close": (None, [ctypes.c_void_p]),
    "widen_model_is_folder": (ctypes.c_int, [ctypes.c_void_p]),
    "widen_model_file_count": (ctypes.c_size_t, [ctypes.c_void_p]),
    "widen_model_file": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
    "widen_model_file_name": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_size_t]),
    "widen_model_tensor_count": (ctypes.c_size_t, [ctypes.c_void_p]),
    "widen_model_tensor_name": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_size_t]),
    "widen_model_tensor_at": (P(TensorInfo), [ctypes.c_void_p, ctypes.c_size_t, P(ctypes.c_size_t)]),
    "widen_model_tensor_find": (ctypes.c_long, [ctypes.c_void_p, ctypes.c_char_p]),
    "widen_model_find_candidates": (ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64,
                                                      P(ctypes.c_size_t), ctypes.c_size_t]),
    "widen_apply_to_fd": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                                         P(ApplyOptions), P(Error_)]),
    "widen_model_apply": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, P(ApplyOptions),
                                         P(Error_)]),
    "widen_model_verify": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, P(VerifyOptions), P(VerifyReport),
                                          P(Error_)]),
}
for _name, (_res, _args) in _sigs.items():
    _fn = getattr(lib, _name)
    _fn.restype = _res
    _fn.argtypes = _args

libc_free = ctypes.CDLL(None).free
libc_free.argtypes = [ctypes.c_void_p]
libc_free.restype = None
