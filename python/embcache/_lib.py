"""ctypes bindings of libembcache's exported C API (include/embcache.h).

This module owns finding and loading the shared library and declares, for
every function the library exports (client/libembcache.map), its argument and
result types -- nothing else: no logic of the cache lives here or anywhere in
the package. The rest of the package calls the functions through ``lib()``.

Where the library is looked for, first hit wins:

1. ``$EMBCACHE_LIBRARY``, a path to libembcache.so (when set, nothing else is
   tried);
2. a ``libembcache.so`` next to this file (the CMake build stages the package
   into ``<build>/python/embcache`` with a symlink to the library it built);
3. the path CMake's ``install`` recorded in ``_install.py``;
4. ``ctypes.util.find_library("embcache")`` (the dynamic linker's cache);
5. ``libembcache.so.0`` through the dynamic linker's default search.

Any thread may call the functions; ``ec_last_error()`` is per thread, so it
is read on the thread that made the failing call, right after it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_char_p,
    c_double,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

# ---------------------------------------------------------------------------
# Constants of include/embcache.h

EC_MAX_DIMS = 8

EC_OK = 0
EC_EINVAL = -1
EC_ENOMEM = -2
EC_EIO = -3
EC_ENOENT = -4
EC_ERANGE = -5
EC_ECHECKSUM = -6
EC_EPROTO = -7
EC_ECONN = -8
EC_EEXIST = -9
EC_EFORMAT = -10
EC_EDTYPE = -11
EC_ENOSPC = -12
EC_EPERM = -13
EC_EBUSY = -14
EC_ESTALE = -15
EC_EVERSION = -16
EC_ETOOBIG = -17
EC_EINTERNAL = -18
EC_ECORRUPT = -19
EC_EDEVICE = -20
EC_ETIMEOUT = -21

EC_DTYPE_INVALID = 0
EC_DTYPE_F32 = 1
EC_DTYPE_F16 = 2
EC_DTYPE_BF16 = 3
EC_DTYPE_F64 = 4
EC_DTYPE_I8 = 5
EC_DTYPE_U8 = 6
EC_DTYPE_I32 = 7
EC_DTYPE_I64 = 8

EC_GATHER_OUT_DEVICE = 0x1
EC_GATHER_IDS_DEVICE = 0x2

EC_PREWARM_PIN = 0x1
EC_PREWARM_DEVICE = 0x2

EC_CACHE_AUTO = 0
EC_CACHE_PARTITIONS = 1
EC_CACHE_ROWS = 2
EC_CACHE_DYNAMIC = 3  # a tensor's mode only: not one ec_model_cache_mode sets
CACHE_MODES = {"auto": EC_CACHE_AUTO, "partitions": EC_CACHE_PARTITIONS, "rows": EC_CACHE_ROWS}
CACHE_MODE_NAMES = {v: k for k, v in CACHE_MODES.items()}

# include/embcache_results.h
EC_NS_NAME_MAX = 63
EC_NAME_MAX = 255
EC_RES_KEY_MAX = 4096
EC_NS_MAX = 384

EC_NS_CREATE = 0x1
EC_NS_SHARED = 0x2
EC_NS_CONFIGURE = 0x4
EC_NS_EXCL = 0x8
EC_NS_REMOTE = 0x10

EC_RES_NEGATIVE = 0x1       # ec_result_meta.flags, ec_result_value.flags
EC_RES_TENSOR = 0x2

EC_RES_FRESH = 1            # ec_result_meta.state
EC_RES_STALE = 2

EC_RES_ALLOW_STALE = 0x1    # flags of reads
EC_RES_NO_EARLY = 0x2
EC_RES_EARLY = 0x4

EC_LEASE_GRANTED = 1        # ec_results_lease() answers
EC_LEASE_WAIT = 2
EC_LEASE_FOUND = 3
EC_LEASE_STALE = 4

# include/embcache_search.h
EC_METRIC_IP = 1
EC_METRIC_COSINE = 2
EC_METRIC_L2 = 3
METRICS = {"ip": EC_METRIC_IP, "cosine": EC_METRIC_COSINE, "l2": EC_METRIC_L2}
EC_SEARCH_GEMM_MIN = 16

# dlpack/dlpack.h (DLPACK_VERSION 60, the legacy DLManagedTensor)
KDL_CPU = 1
KDL_CUDA = 2


# ---------------------------------------------------------------------------
# Structures

class PublishResult(ctypes.Structure):
    """ec_publish_result."""
    _fields_ = [("version", c_int64), ("tensors", c_uint32), ("bytes", c_uint64)]


class TensorInfo(ctypes.Structure):
    """ec_tensor_info."""
    _fields_ = [
        ("model", c_char_p),
        ("tensor", c_char_p),
        ("version", c_int64),
        ("dtype", c_int),
        ("ndim", c_uint32),
        ("shape", c_uint64 * EC_MAX_DIMS),
        ("rows", c_uint64),
        ("row_bytes", c_uint64),
        ("rows_per_partition", c_uint64),
        ("partitions", c_uint64),
    ]


class GatherOpts(ctypes.Structure):
    """ec_gather_opts."""
    _fields_ = [
        ("flags", c_uint32),
        ("device", c_int32),
        ("stream", c_void_p),
        ("out_dtype", c_int),
    ]


class ImportOpts(ctypes.Structure):
    """ec_import_opts."""
    _fields_ = [
        ("model", c_char_p),
        ("version", c_int64),
        ("round", c_int64),
        ("params_json", c_char_p),
        ("partition_bytes", c_uint64),
    ]


class PrewarmProgress(ctypes.Structure):
    """ec_prewarm_progress."""
    _fields_ = [
        ("version", c_int64),
        ("partitions", c_uint64),
        ("done", c_uint64),
        ("failed", c_uint64),
        ("bytes", c_uint64),
        ("finished", c_int),
    ]


class VersionInfo(ctypes.Structure):
    """ec_version_info."""
    _fields_ = [
        ("model", c_char_p),
        ("version", c_int64),
        ("round", c_int64),
        ("params_json", c_char_p),
        ("aliases", c_char_p),
        ("created_unix", c_int64),
        ("tensors", c_uint32),
        ("bytes", c_uint64),
    ]


class TensorListing(ctypes.Structure):
    """ec_tensor_listing."""
    _fields_ = [
        ("name", c_char_p),
        ("dtype", c_int),
        ("ndim", c_uint32),
        ("shape", c_uint64 * EC_MAX_DIMS),
        ("partitions", c_uint64),
        ("bytes", c_uint64),
    ]


class TensorStats(ctypes.Structure):
    """ec_tensor_stats."""
    _fields_ = [
        ("model", c_char_p),
        ("version", c_int64),
        ("tensor", c_char_p),
        ("mode", c_int),
        ("policy", c_int),
        ("file_version", c_uint32),
        ("bytes", c_uint64),
        ("row_bytes", c_uint64),
        ("resident_bytes", c_uint64),
        ("resident_rows", c_uint64),
        ("rows_served", c_uint64),
        ("hits", c_uint64),
        ("row_faults", c_uint64),
        ("bytes_read", c_uint64),
    ]


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", c_int32), ("device_id", c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", c_uint8), ("bits", c_uint8), ("lanes", c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", c_void_p),
        ("device", DLDevice),
        ("ndim", c_int32),
        ("dtype", DLDataType),
        ("shape", POINTER(c_int64)),
        ("strides", POINTER(c_int64)),
        ("byte_offset", c_uint64),
    ]


DLDeleter = CFUNCTYPE(None, c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [
        ("dl_tensor", DLTensor),
        ("manager_ctx", c_void_p),
        ("deleter", DLDeleter),
    ]


class NsOpts(ctypes.Structure):
    """ec_ns_opts."""
    _fields_ = [
        ("flags", c_uint32),
        ("bind_model", c_char_p),
        ("bind_version", c_char_p),
        ("ttl", c_double),
        ("stale_ttl", c_double),
        ("negative_ttl", c_double),
        ("jitter", c_double),
        ("lease_time", c_double),
        ("max_computing", c_uint32),
        ("negative_max", c_uint64),
    ]


class ResultMeta(ctypes.Structure):
    """ec_result_meta."""
    _fields_ = [
        ("state", c_int),
        ("flags", c_uint32),
        ("len", c_size_t),
        ("dtype", c_int),
        ("ndim", c_uint32),
        ("shape", c_int64 * EC_MAX_DIMS),
        ("ttl_left", c_double),
        ("compute_us", c_uint32),
    ]


class ResultValue(ctypes.Structure):
    """ec_result_value."""
    _fields_ = [
        ("data", c_void_p),
        ("len", c_size_t),
        ("flags", c_uint32),
        ("dtype", c_int),
        ("ndim", c_uint32),
        ("shape", c_int64 * EC_MAX_DIMS),
        ("ttl", c_double),
        ("compute_us", c_uint32),
    ]


class ComputeOpts(ctypes.Structure):
    """ec_compute_opts."""
    _fields_ = [
        ("flags", c_uint32),
        ("wait", c_double),
        ("beta", c_double),
    ]


class NsInfo(ctypes.Structure):
    """ec_ns_info."""
    _fields_ = [
        ("name", c_char_p),
        ("owner_uid", c_uint32),
        ("flags", c_uint32),
        ("bind_model", c_char_p),
        ("bind_version", c_char_p),
        ("bound_version", c_int64),
        ("generation", c_uint32),
        ("ttl", c_double),
        ("stale_ttl", c_double),
        ("negative_ttl", c_double),
        ("jitter", c_double),
        ("lease_time", c_double),
        ("max_computing", c_uint32),
        ("negative_max", c_uint64),
    ] + [(n, c_uint64) for n in (
        "items", "negative_items", "bytes",
        "hits", "misses", "negative_hits", "stale_served",
        "leases_granted", "leases_waited", "leases_passed", "early_refreshes",
        "computing", "computing_peak", "limited",
        "puts", "negative_puts", "evictions", "purged", "invalidations")]


class SearchOpts(ctypes.Structure):
    """ec_search_opts."""
    _fields_ = [
        ("flags", c_uint32),
        ("threads", c_uint32),
        ("nprobe", c_uint32),
    ]


# ec_index_progress_fn(phase, done, total, arg)
IndexProgressFn = CFUNCTYPE(c_int, c_int, c_uint64, c_uint64, c_void_p)
INDEX_PHASES = {1: "sample", 2: "train", 3: "assign", 4: "write", 5: "send"}


class IndexOpts(ctypes.Structure):
    """ec_index_opts."""
    _fields_ = [
        ("flags", c_uint32),
        ("metric", c_int),
        ("nlist", c_uint32),
        ("iters", c_uint32),
        ("train_rows", c_uint64),
        ("seed", c_uint64),
        ("progress", IndexProgressFn),
        ("progress_arg", c_void_p),
    ]


class IndexBuildStats(ctypes.Structure):
    """ec_index_build_stats."""
    _fields_ = [
        ("rows", c_uint64), ("dim", c_uint64),
        ("nlist", c_uint32), ("iters", c_uint32),
        ("train_rows", c_uint64), ("reseeded", c_uint64),
        ("min_list", c_uint64), ("max_list", c_uint64),
        ("file_bytes", c_uint64),
        ("train_s", c_double), ("assign_s", c_double), ("total_s", c_double),
    ]


class IndexInfo(ctypes.Structure):
    """ec_index_info."""
    _fields_ = [
        ("metric", c_int), ("nlist", c_uint32),
        ("rows", c_uint64), ("dim", c_uint64),
        ("min_list", c_uint64), ("max_list", c_uint64),
        ("file_bytes", c_uint64), ("train_rows", c_uint64),
        ("iters", c_uint32), ("built_lsn", c_uint64),
    ]


class IndexStaleness(ctypes.Structure):
    """ec_index_staleness."""
    _fields_ = [
        ("built_lsn", c_uint64), ("table_lsn", c_uint64),
        ("indexed_keys", c_uint64), ("live_keys", c_uint64),
        ("stale_rows", c_uint64),
    ]


class RowsResult(ctypes.Structure):
    """ec_rows_result."""
    _fields_ = [(n, c_uint64) for n in ("lsn", "inserted", "updated", "deleted", "missing",
                                        "evicted")]


class DynInfo(ctypes.Structure):
    """ec_dyn_info."""
    _fields_ = [("capacity", c_uint64), ("keys", c_uint64), ("policy", c_int),
                ("lsn", c_uint64), ("puts", c_uint64), ("deletes", c_uint64),
                ("evictions", c_uint64)]


class DynTableStat(ctypes.Structure):
    """ec_dyn_table_stat."""
    _fields_ = [("model", ctypes.c_char * (EC_NAME_MAX + 1)), ("version", c_int64),
                ("tensor", ctypes.c_char * (EC_NAME_MAX + 1)),
                ("capacity", c_uint64), ("keys", c_uint64), ("row_bytes", c_uint64),
                ("bytes", c_uint64), ("policy", c_int), ("lsn", c_uint64),
                ("base_lsn", c_uint64)] + [(n, c_uint64) for n in (
                    "puts", "inserts", "updates", "deletes", "evictions", "refused")]


DynTableCallback = CFUNCTYPE(c_int, POINTER(DynTableStat), c_void_p)


# ec_compute_fn(arg, key, key_len, out) and ec_ns_cb(ns, arg)
ComputeFn = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t, POINTER(ResultValue))
NsCallback = CFUNCTYPE(c_int, POINTER(NsInfo), c_void_p)

ListCallback = CFUNCTYPE(c_int, POINTER(VersionInfo), POINTER(TensorListing), c_void_p)
StatCallback = CFUNCTYPE(c_int, c_char_p, c_uint64, c_void_p)
TensorStatsCallback = CFUNCTYPE(c_int, POINTER(TensorStats), c_void_p)

_P = c_void_p  # opaque handles (ec_client *, ec_tensor *, ec_view *)

# name -> (restype, argtypes): every function of include/embcache.h.
SIGNATURES: Dict[str, Tuple[Any, List[Any]]] = {
    "ec_strerror": (c_char_p, [c_int]),
    "ec_last_error": (c_char_p, []),
    "ec_dtype_name": (c_char_p, [c_int]),
    "ec_dtype_size": (c_size_t, [c_int]),
    "ec_version": (c_char_p, []),
    "ec_client_connect": (c_int, [c_char_p, POINTER(_P)]),
    "ec_client_close": (None, [_P]),
    "ec_client_generation": (c_uint64, [_P]),
    "ec_client_backend": (c_char_p, [_P]),
    "ec_client_device_count": (c_int, [_P]),
    "ec_client_topology": (c_int, [_P, c_void_p, c_size_t]),
    "ec_daemon_reload": (c_int, [_P, c_void_p, c_size_t]),
    "ec_client_stats": (c_int, [_P, StatCallback, c_void_p]),
    "ec_client_tensor_stats": (c_int, [_P, TensorStatsCallback, c_void_p]),
    "ec_tensor_resolve": (c_int, [_P, c_char_p, c_char_p, c_char_p, POINTER(_P)]),
    "ec_tensor_release": (None, [_P]),
    "ec_tensor_info_get": (c_int, [_P, POINTER(TensorInfo)]),
    "ec_tensor_cache_mode": (c_int, [_P]),
    "ec_tensor_gather": (c_int, [_P, c_void_p, c_size_t, c_void_p, c_size_t]),
    "ec_tensor_gather_ex": (c_int, [_P, c_void_p, c_size_t, c_void_p, c_size_t,
                                    POINTER(GatherOpts)]),
    "ec_tensor_view": (c_int, [_P, POINTER(_P)]),
    "ec_view_data": (c_void_p, [_P]),
    "ec_view_size": (c_size_t, [_P]),
    "ec_view_release": (None, [_P]),
    "ec_view_check": (c_int, [_P]),
    "ec_view_dlpack": (c_int, [_P, POINTER(POINTER(DLManagedTensor))]),
    "ec_model_import": (c_int, [_P, POINTER(ImportOpts), POINTER(c_char_p), c_size_t,
                                POINTER(c_uint32)]),
    "ec_model_alias": (c_int, [_P, c_char_p, c_char_p, c_int64]),
    "ec_model_prewarm": (c_int, [_P, c_char_p, c_char_p, ctypes.c_uint,
                                 POINTER(PrewarmProgress)]),
    "ec_model_evict": (c_int, [_P, c_char_p, c_char_p, POINTER(c_uint64)]),
    "ec_model_retire": (c_int, [_P, c_char_p, c_int64, c_int]),
    "ec_model_refresh": (c_int, [_P, c_char_p, c_char_p, POINTER(c_uint64)]),
    "ec_model_policy": (c_int, [_P, c_char_p, c_uint64, c_double]),
    "ec_model_cache_mode": (c_int, [_P, c_char_p, c_char_p, c_int]),
    "ec_model_upgrade": (c_int, [_P, c_char_p, c_char_p, POINTER(c_uint32)]),
    "ec_model_find": (c_int, [_P, c_char_p, c_int64, c_char_p, POINTER(c_int64)]),
    "ec_catalog_list": (c_int, [_P, c_char_p, ListCallback, c_void_p]),
    # include/embcache_results.h
    "ec_results_open": (c_int, [_P, c_char_p, POINTER(NsOpts), POINTER(_P)]),
    "ec_results_close": (None, [_P]),
    "ec_results_get": (c_int, [_P, c_void_p, c_size_t, c_uint32, c_void_p, c_size_t,
                               POINTER(ResultMeta)]),
    "ec_results_put": (c_int, [_P, c_void_p, c_size_t, POINTER(ResultValue)]),
    "ec_results_get_or_compute": (c_int, [_P, c_void_p, c_size_t, POINTER(ComputeOpts),
                                          ComputeFn, c_void_p, c_void_p, c_size_t,
                                          POINTER(ResultMeta)]),
    "ec_results_lease": (c_int, [_P, c_void_p, c_size_t, c_uint32]),
    "ec_results_release": (c_int, [_P, c_void_p, c_size_t]),
    "ec_results_wait": (c_int, [_P, c_double]),
    "ec_results_purge": (c_int, [_P, c_void_p, c_size_t, POINTER(c_uint64)]),
    "ec_results_drop": (c_int, [_P, c_char_p]),
    "ec_results_list": (c_int, [_P, NsCallback, c_void_p]),
    "ec_context_lookup_prefix": (c_int, [_P, c_void_p, c_size_t, c_size_t,
                                         POINTER(c_size_t)]),
    "ec_context_put": (c_int, [_P, c_void_p, c_size_t, c_size_t, c_size_t, c_size_t,
                               POINTER(ResultValue)]),
    "ec_context_gather": (c_int, [_P, c_void_p, c_size_t, c_size_t, c_size_t, c_void_p,
                                  c_size_t, c_int, POINTER(c_size_t)]),
    # include/embcache_search.h
    "ec_search": (c_int, [_P, c_void_p, c_size_t, c_size_t, c_size_t, c_int,
                          POINTER(SearchOpts), c_void_p, c_void_p]),
    "ec_metric_name": (c_char_p, [c_int]),
    "ec_index_build": (c_int, [_P, c_char_p, c_char_p, c_char_p, POINTER(IndexOpts),
                               POINTER(IndexBuildStats)]),
    "ec_index_info_get": (c_int, [_P, POINTER(IndexInfo)]),
    "ec_index_staleness_get": (c_int, [_P, POINTER(IndexStaleness)]),
    # include/embcache_dynamic.h
    "ec_model_dynamic": (c_int, [_P, c_char_p, c_char_p, c_char_p, c_uint64, c_int]),
    "ec_rows_put": (c_int, [_P, c_void_p, c_size_t, c_void_p, c_size_t, POINTER(RowsResult)]),
    "ec_rows_delete": (c_int, [_P, c_void_p, c_size_t, POINTER(RowsResult)]),
    "ec_rows_find": (c_int, [_P, c_void_p, c_size_t, c_void_p, c_size_t, c_void_p,
                             POINTER(c_size_t)]),
    "ec_rows_info": (c_int, [_P, POINTER(DynInfo)]),
    "ec_model_snapshot": (c_int, [_P, c_char_p, c_char_p, c_int64, POINTER(c_int64)]),
    "ec_model_publish": (c_int, [_P, c_char_p, c_char_p, c_char_p, POINTER(PublishResult)]),
    "ec_model_pull": (c_int, [_P, c_char_p, c_char_p, c_char_p, POINTER(PublishResult)]),
    "ec_model_unpublish": (c_int, [_P, c_char_p, c_char_p, c_char_p,
                                   POINTER(PublishResult)]),
    "ec_model_pull_flags": (c_int, [_P, c_char_p, c_char_p, c_char_p, c_uint32,
                                    POINTER(PublishResult)]),
    "ec_client_dyn_tables": (c_int, [_P, DynTableCallback, c_void_p]),
}


class Library:
    """The loaded libembcache: its path and one attribute per exported function.

    A function the loaded library does not export (an older build) is None;
    ``need(name)`` turns that into a clear error.
    """

    def __init__(self, cdll: ctypes.CDLL, path: str) -> None:
        self.cdll = cdll
        self.path = path
        self.missing: List[str] = []
        for name, (restype, argtypes) in SIGNATURES.items():
            try:
                fn = getattr(cdll, name)
            except AttributeError:
                self.missing.append(name)
                setattr(self, name, None)
                continue
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)

    def need(self, name: str) -> Any:
        fn = getattr(self, name, None)
        if fn is None:
            from .errors import LibraryError
            raise LibraryError(
                f"{self.path} does not export {name}(): it was built from an older "
                f"embcache; rebuild libembcache (cmake --build) or point "
                f"EMBCACHE_LIBRARY at a current build")
        return fn

    def last_error(self, code: int) -> str:
        msg = self.ec_last_error()  # type: ignore[attr-defined]
        if msg:
            return msg.decode("utf-8", "replace")
        s = self.ec_strerror(code)  # type: ignore[attr-defined]
        return s.decode("utf-8", "replace") if s else f"error {code}"


_lock = threading.Lock()
_lib: Optional[Library] = None


def _candidates() -> Iterator[Tuple[str, str]]:
    """(where it came from, path or name), in the order they are tried."""
    env = os.environ.get("EMBCACHE_LIBRARY")
    if env:
        yield ("$EMBCACHE_LIBRARY", env)
        return
    here = Path(__file__).resolve().parent
    for name in ("libembcache.so", "libembcache.so.0"):
        if (here / name).exists():
            yield ("next to the package", str(here / name))
            break
    try:
        from . import _install  # type: ignore[attr-defined]  # written by CMake's install
        yield ("the installed path", _install.LIBRARY)
    except ImportError:
        pass
    found = ctypes.util.find_library("embcache")
    if found:
        yield ("ctypes.util.find_library", found)
    yield ("the dynamic linker's search path", "libembcache.so.0")


def lib() -> Library:
    """The loaded library; loads it on first use.

    Raises embcache.LibraryError (an ImportError) naming every place tried.
    """
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        tried = []
        for where, path in _candidates():
            try:
                cdll = ctypes.CDLL(path)
            except OSError as e:
                tried.append(f"{path} ({where}): {e}")
                continue
            _lib = Library(cdll, path)
            return _lib
        from .errors import LibraryError
        raise LibraryError(
            "cannot load libembcache; tried:\n  " + "\n  ".join(tried) +
            "\nBuild it (cmake -S . -B build && cmake --build build) and set "
            "EMBCACHE_LIBRARY=/path/to/build/libembcache.so, or install it "
            "(cmake --install build) and run ldconfig")
