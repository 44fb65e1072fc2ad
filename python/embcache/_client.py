"""Client, Tensor and View: the Python face of libembcache's handles.

Each class wraps one C handle (ec_client, ec_tensor, ec_view) and maps Python
arguments -- lists, numpy arrays, torch tensors, devices, dtypes -- onto the
C calls, and the C error codes onto exceptions. Everything about rows,
ranges, residency and dtype conversion happens in libembcache.

Lifetimes. A C handle is owned by a small ``_Handle`` object that releases it
when the last Python reference to it goes: a Tensor keeps its client's handle
alive, a View its tensor's, and a numpy array taken from a view keeps the
view's pin. ``close()``/``release()`` drop the caller's reference at once.

Daemon restarts. A call that fails with EC_ESTALE (the daemon restarted) or
EC_ECONN (the connection was lost) reconnects the client once, re-resolves
the tensor (same model, the version it resolved to, same name) and is
retried; if that fails too, the error is raised (calls that change the
catalog are not retried: they may have happened). A View of the previous
daemon raises StaleError on use. Handles replaced that way are released when
the Tensor is (another thread may still be inside a call with one). After
fork() the child does the same on first use, with a connection of its own.

Thread safety: any number of threads may gather from one Tensor; reconnects
are serialized by the client's lock.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time
import weakref
from ctypes import byref, c_char_p, c_int64, c_uint32, c_uint64, c_void_p
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _dlpack
from . import _lib as L
from .errors import (DeviceError, DTypeError, EmbcacheError, InvalidArgumentError,
                     ReleasedError, StaleError, error_for)

PathLike = Union[str, "os.PathLike[str]"]
Device = Union[str, int, Any]  # "cpu", "cuda", "cuda:N", a torch.device

_CPU = -1  # device ordinal meaning host memory

# ec_dtype -> numpy dtype of numpy outputs. numpy has no bfloat16: bf16 rows
# come out as np.uint16 holding the raw bit patterns.
_NP_OF = {
    L.EC_DTYPE_F32: np.dtype(np.float32), L.EC_DTYPE_F16: np.dtype(np.float16),
    L.EC_DTYPE_BF16: np.dtype(np.uint16), L.EC_DTYPE_F64: np.dtype(np.float64),
    L.EC_DTYPE_I8: np.dtype(np.int8), L.EC_DTYPE_U8: np.dtype(np.uint8),
    L.EC_DTYPE_I32: np.dtype(np.int32), L.EC_DTYPE_I64: np.dtype(np.int64),
}
_TORCH_NAME_OF = {
    L.EC_DTYPE_F32: "float32", L.EC_DTYPE_F16: "float16", L.EC_DTYPE_BF16: "bfloat16",
    L.EC_DTYPE_F64: "float64", L.EC_DTYPE_I8: "int8", L.EC_DTYPE_U8: "uint8",
    L.EC_DTYPE_I32: "int32", L.EC_DTYPE_I64: "int64",
}
_CODE_OF_NAME = {
    "f32": L.EC_DTYPE_F32, "float32": L.EC_DTYPE_F32, "float": L.EC_DTYPE_F32,
    "f16": L.EC_DTYPE_F16, "float16": L.EC_DTYPE_F16, "half": L.EC_DTYPE_F16,
    "bf16": L.EC_DTYPE_BF16, "bfloat16": L.EC_DTYPE_BF16,
    "f64": L.EC_DTYPE_F64, "float64": L.EC_DTYPE_F64, "double": L.EC_DTYPE_F64,
    "i8": L.EC_DTYPE_I8, "int8": L.EC_DTYPE_I8, "u8": L.EC_DTYPE_U8, "uint8": L.EC_DTYPE_U8,
    "i32": L.EC_DTYPE_I32, "int32": L.EC_DTYPE_I32, "i64": L.EC_DTYPE_I64,
    "int64": L.EC_DTYPE_I64,
    "uint16": L.EC_DTYPE_BF16,  # numpy's stand-in for bfloat16, see _NP_OF
}
_RECONNECT_CODES = (L.EC_ESTALE, L.EC_ECONN)


def _s(b: Optional[bytes]) -> str:
    return b.decode("utf-8", "replace") if b else ""


def _b(s: Union[str, int, "os.PathLike[str]"], what: str) -> bytes:
    if isinstance(s, int) and not isinstance(s, bool):
        s = str(s)
    if not isinstance(s, (str, os.PathLike)):
        raise InvalidArgumentError(f"{what} must be a string, not {type(s).__name__}")
    return os.fsencode(s)


def _torch() -> Any:
    """torch, imported on first need (numpy users never pay for it)."""
    t = sys.modules.get("torch")
    if t is None:
        try:
            import torch as t  # noqa: F811
        except ImportError as e:
            raise InvalidArgumentError(
                "this needs PyTorch, which is not installed (pip install torch, or "
                "apt-get install python3-torch)") from e
    return t


_addressof = ctypes.addressof
_from_buffer = ctypes.c_char.from_buffer


def _addr(a: np.ndarray) -> int:
    """The address of a non-empty C-contiguous array's first byte (a third of
    the cost of ``a.ctypes.data``, which it falls back to for read-only ones)."""
    try:
        return _addressof(_from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


_TORCH_INT64: Any = None
_TORCH_EMPTY: Any = None
_TORCH_TENSOR: Any = None


def _torch_tensor_type() -> Any:
    """torch.Tensor once torch is imported (by anyone), else None; caches
    what the fast path of Tensor.gather uses."""
    global _TORCH_INT64, _TORCH_EMPTY, _TORCH_TENSOR
    if _TORCH_TENSOR is None:
        t = sys.modules.get("torch")
        if t is None or not hasattr(t, "Tensor"):
            return None
        _TORCH_INT64, _TORCH_EMPTY, _TORCH_TENSOR = t.int64, t.empty, t.Tensor
    return _TORCH_TENSOR


def _dtype_code(dtype: Any) -> int:
    """An ec_dtype for a dtype given as a name, a numpy dtype or a torch dtype."""
    if isinstance(dtype, str):
        code = _CODE_OF_NAME.get(dtype.lower())
    else:
        t = sys.modules.get("torch")
        if t is not None and isinstance(dtype, t.dtype):
            code = _CODE_OF_NAME.get(str(dtype).rsplit(".", 1)[-1])
        else:
            try:
                code = _CODE_OF_NAME.get(np.dtype(dtype).name)
            except TypeError:
                code = None
    if code is None:
        raise DTypeError(f"dtype {dtype!r} is not one embcache has (f32, f16, bf16, f64, "
                         f"i8, u8, i32, i64)")
    return code


def _device_ordinal(device: Device) -> int:
    """-1 for the host, else the CUDA device ordinal."""
    if isinstance(device, int) and not isinstance(device, bool):
        if device < -1:
            raise InvalidArgumentError(f"device {device} is not a device ordinal")
        return device
    t = sys.modules.get("torch")
    if t is not None and isinstance(device, t.device):
        kind, index = device.type, device.index
    elif isinstance(device, str):
        kind, _, idx = device.partition(":")
        try:
            index = int(idx) if idx else None
        except ValueError:
            index = -2
    else:
        raise InvalidArgumentError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")
    if kind == "cpu" and index in (None, 0):
        return _CPU
    if kind == "cuda" and (index is None or index >= 0):
        if index is not None:
            return index
        t = _torch()
        if not t.cuda.is_available():
            raise DeviceError("device 'cuda': torch sees no CUDA device in this process")
        return t.cuda.current_device()
    raise InvalidArgumentError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")


def _device_name(ordinal: int) -> str:
    return "cpu" if ordinal == _CPU else f"cuda:{ordinal}"


class _Handle:
    """Owns one C handle; releases it when the last reference goes.

    ``deps`` are handles this one must not outlive (a tensor's client).
    """

    __slots__ = ("ptr", "deps", "_fin", "__weakref__")

    def __init__(self, ptr: int, release: Callable[[int], None], deps: Tuple[Any, ...] = ()):
        self.ptr = ptr
        self.deps = deps
        self._fin = weakref.finalize(self, release, ptr)
        _handles.add(self)


# fork(): a child inherits the parent's connections -- the same socket, the
# parent's pins. It must never use them (its requests would interleave with
# the parent's on one socket) nor release them (that would drop the parent's
# pins). So in the child every inherited handle is disowned (never released
# there), its locks are made anew, and _FORK changes: clients and tensors
# reconnect on their next use, views of the parent raise StaleError.
_FORK = 0
_handles: "weakref.WeakSet[_Handle]" = weakref.WeakSet()
_lockers: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _FORK
    _FORK += 1
    for h in list(_handles):
        h._fin.detach()
    for o in list(_lockers):
        o._lock = threading.RLock() if isinstance(o, Client) else threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check(lib: L.Library, rc: int) -> None:
    if rc:
        raise error_for(rc, lib.last_error(rc))


# ---------------------------------------------------------------------------
# Client

class Client:
    """A connection to embcached (see :func:`connect`)."""

    def __init__(self, socket: Optional[PathLike] = None, *, reconnect: bool = True) -> None:
        """Connect to the daemon listening on ``socket``.

        Args:
            socket: the daemon's socket; None means ``$EMBCACHE_SOCKET``, then
                the daemon's default (``/run/embcache/embcached.sock`` as root,
                ``$XDG_RUNTIME_DIR/embcache.sock`` or ``/tmp/embcache-UID/embcached.sock``;
                when that does not exist and the system service's
                ``/run/embcache/embcached.sock`` does, that one).
            reconnect: on a daemon restart, reconnect once and retry the call
                (True), or raise StaleError (False).

        Raises:
            ConnectionError: no daemon listens there (the message names the
                socket and how to start one).
            PermissionError, VersionMismatchError, CorruptError.
        """
        self._lib = L.lib()
        self._socket = os.fspath(socket) if socket is not None else None
        self._reconnect = reconnect
        self._lock = threading.RLock()
        self._closed = False
        self._inc = 0          # bumped on every reconnect
        self._broken = False   # the current connection failed; reconnect before use
        self._fork = _FORK     # the process it was made in (see _after_fork_in_child)
        self._h: Optional[_Handle] = None
        self._h = self._connect()
        _lockers.add(self)

    def _connect(self) -> _Handle:
        lib = self._lib
        out = c_void_p()
        path = os.fsencode(self._socket) if self._socket is not None else None
        rc = lib.ec_client_connect(path, byref(out))
        _check(lib, rc)
        return _Handle(out.value, lib.ec_client_close)

    # The handle to use now and its incarnation; connects if needed.
    def _current(self) -> Tuple[_Handle, int]:
        h = self._h
        if h is not None and not self._broken and self._fork == _FORK:
            return h, self._inc
        with self._lock:
            if self._closed:
                raise ReleasedError("this embcache client is closed: connect again")
            if self._h is None or self._broken or self._fork != _FORK:
                self._swap()
            assert self._h is not None
            return self._h, self._inc

    # Replace the connection (caller holds _lock).
    def _swap(self) -> None:
        old, self._h = self._h, None
        self._broken = False
        self._fork = _FORK
        self._inc += 1
        del old  # ec_client_close once nothing else holds it
        self._h = self._connect()

    # A call on incarnation `inc` failed with a reconnect code: reconnect once
    # (if nobody did already) and return the new handle, or raise.
    def _recover(self, inc: int, rc: int, msg: str) -> Tuple[_Handle, int]:
        if not self._reconnect:
            raise error_for(rc, msg)
        with self._lock:
            if self._closed:
                raise error_for(rc, msg)
            if self._inc == inc:
                self._swap()
            return self._current()

    def _call(self, fn: Callable[[int], int], retry: bool = True) -> Tuple[_Handle, int]:
        """Run fn(client pointer) -> rc, reconnecting once on a daemon restart.

        Returns the handle (and its incarnation) the call succeeded with.
        """
        h, inc = self._current()
        rc = fn(h.ptr)
        if rc == 0:
            return h, inc
        msg = self._lib.last_error(rc)
        if rc not in _RECONNECT_CODES:
            raise error_for(rc, msg)
        if not retry:
            # Not safe to repeat (it may have happened): reconnect on next use.
            if self._reconnect and self._inc == inc:
                self._broken = True
            raise error_for(rc, msg)
        h, inc = self._recover(inc, rc, msg)
        rc = fn(h.ptr)
        if rc:
            raise error_for(rc, self._lib.last_error(rc))
        return h, inc

    # -- public ------------------------------------------------------------

    @property
    def socket(self) -> Optional[str]:
        """The socket given to connect() (None: the default)."""
        return self._socket

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def generation(self) -> int:
        """The generation of the daemon this client is attached to."""
        h, _ = self._current()
        return int(self._lib.ec_client_generation(h.ptr))

    @property
    def backend(self) -> str:
        """The device backend this process runs: "cuda" or "cpu"."""
        h, _ = self._current()
        return _s(self._lib.need("ec_client_backend")(h.ptr))

    @property
    def device_count(self) -> int:
        """GPUs this client can gather to (0 with the CPU backend)."""
        h, _ = self._current()
        return int(self._lib.need("ec_client_device_count")(h.ptr))

    def topology(self) -> str:
        """The machine as the daemon found it, on one line (packages, NUMA
        nodes, GPUs and disks with their nodes, the daemon's backend)."""
        lib = self._lib
        fn = lib.need("ec_client_topology")
        size = 4096
        while True:
            buf = ctypes.create_string_buffer(size)
            try:
                self._call(lambda p: fn(p, buf, size))
                return _s(buf.value)
            except EmbcacheError as e:
                if e.code != L.EC_ETOOBIG or size >= 1 << 20:
                    raise
                size *= 8

    def reload(self) -> str:
        """Have the daemon read its configuration again and apply what may
        change while it runs (ec_daemon_reload; administrators); returns
        the summary line once applied. An invalid file raises
        InvalidArgumentError with its first error, and changes nothing."""
        fn = self._lib.need("ec_daemon_reload")
        buf = ctypes.create_string_buffer(2048)
        self._call(lambda p: fn(p, buf, 2048), retry=False)
        return _s(buf.value)

    def close(self) -> None:
        """Drop this client's connection. Tensors and views already made keep
        working; the connection goes when the last of them is released."""
        with self._lock:
            self._closed = True
            self._h = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"connection {self._inc}"
        return f"<embcache.Client socket={self._socket or '(default)'} {state}>"

    def tensor(self, model: str, tensor: str, version: Union[str, int] = "current") -> "Tensor":
        """Resolve (model, version or alias, tensor) to a :class:`Tensor`.

        Args:
            model: the model name.
            tensor: the tensor's name within the model version.
            version: a version number, or an alias such as "current". The
                tensor keeps the version it resolved to, even if the alias moves.

        Raises:
            NotFoundError: unknown model, version, alias or tensor.
            ConnectionError, StaleError, EmbcacheIOError, CorruptError.
        """
        lib = self._lib
        m, v, t = _b(model, "model"), _b(version, "version"), _b(tensor, "tensor")
        out = c_void_p()
        h, inc = self._call(lambda p: lib.ec_tensor_resolve(p, m, v, t, byref(out)))
        return Tensor(self, _Handle(out.value, lib.ec_tensor_release, (h,)), inc, str(version))

    def stats(self) -> Dict[str, int]:
        """The daemon's statistics as a dict (segment bytes, resident
        partitions, hits, misses, page-ins, checksum failures, clients, ...)."""
        lib = self._lib
        out: Dict[str, int] = {}

        def cb(name: bytes, value: int, arg: Any) -> int:
            out[_s(name)] = int(value)
            return 0

        ccb = L.StatCallback(cb)

        def call(ptr: int) -> int:
            out.clear()
            return lib.ec_client_stats(ptr, ccb, None)

        self._call(call)
        return out

    def tensor_stats(self) -> List[Dict[str, Any]]:
        """Per tensor the daemon has open: how it is cached ("rows" or
        "partitions") and by which policy, its bytes in memory, the rows
        clients gathered and found there, and the bytes read from disk."""
        lib = self._lib
        out: List[Dict[str, Any]] = []

        def cb(tp: Any, arg: Any) -> int:
            t = tp.contents
            out.append({
                "model": _s(t.model), "version": int(t.version), "tensor": _s(t.tensor),
                "mode": L.CACHE_MODE_NAMES.get(int(t.mode), "auto"),
                "policy": L.CACHE_MODE_NAMES.get(int(t.policy), "auto"),
                "file_version": int(t.file_version), "bytes": int(t.bytes),
                "row_bytes": int(t.row_bytes), "resident_bytes": int(t.resident_bytes),
                "resident_rows": int(t.resident_rows), "rows_served": int(t.rows_served),
                "hits": int(t.hits), "row_faults": int(t.row_faults),
                "bytes_read": int(t.bytes_read),
            })
            return 0

        ccb = L.TensorStatsCallback(cb)

        def call(ptr: int) -> int:
            out.clear()
            return lib.ec_client_tensor_stats(ptr, ccb, None)

        self._call(call)
        return out

    def list(self, model: Optional[str] = None) -> List[Dict[str, Any]]:
        """Model versions (of one model, or all) with their tensors, as dicts."""
        lib = self._lib
        versions: List[Dict[str, Any]] = []

        def cb(vp: Any, tp: Any, arg: Any) -> int:
            if not tp:
                v = vp.contents
                versions.append({
                    "model": _s(v.model), "version": int(v.version),
                    "round": None if v.round < 0 else int(v.round),
                    "params": json.loads(_s(v.params_json) or "{}"),
                    "aliases": [a for a in _s(v.aliases).split(",") if a],
                    "created_unix": int(v.created_unix), "bytes": int(v.bytes),
                    "tensors": []})
            else:
                t = tp.contents
                versions[-1]["tensors"].append({
                    "name": _s(t.name), "dtype": _s(lib.ec_dtype_name(t.dtype)),
                    "shape": tuple(int(t.shape[i]) for i in range(t.ndim)),
                    "partitions": int(t.partitions), "bytes": int(t.bytes)})
            return 0

        ccb = L.ListCallback(cb)
        mb = _b(model, "model") if model is not None else None

        def call(ptr: int) -> int:
            versions.clear()
            return lib.ec_catalog_list(ptr, mb, ccb, None)

        self._call(call)
        return versions

    def import_model(self, model: str, version: int, paths: Sequence[PathLike], *,
                     round: Optional[int] = None, params: Union[None, str, Dict[str, Any]] = None,
                     partition_bytes: int = 0) -> int:
        """Import .npy / .safetensors files as a new model version.

        The files are opened by the library with this process's permissions
        and passed to the daemon. Returns the number of tensors imported.

        Raises:
            ExistsError: that version exists. FormatError, DTypeError,
            EmbcacheIOError, NoSpaceError, ConnectionError.
        """
        lib = self._lib
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        encoded = [os.fsencode(p) for p in paths]
        arr = (c_char_p * len(encoded))(*encoded)
        pj = json.dumps(params).encode() if isinstance(params, dict) else (
            params.encode() if params is not None else None)
        opts = L.ImportOpts(model=_b(model, "model"), version=int(version),
                            round=-1 if round is None else int(round), params_json=pj,
                            partition_bytes=int(partition_bytes))
        n = c_uint32()
        self._call(lambda p: lib.ec_model_import(p, byref(opts), arr, len(encoded), byref(n)),
                   retry=False)
        return int(n.value)

    def alias(self, model: str, alias: str, version: int) -> None:
        """Point ``alias`` at (model, version), atomically for readers."""
        lib = self._lib
        m, a = _b(model, "model"), _b(alias, "alias")
        self._call(lambda p: lib.ec_model_alias(p, m, a, int(version)))

    def prewarm(self, model: str, version: Union[str, int] = "current", *, pin: bool = False,
                device: bool = False, wait: bool = True,
                timeout: Optional[float] = None) -> Dict[str, int]:
        """Load a model version into shared memory ahead of traffic.

        With ``wait`` (the default) polls the daemon's progress until it is
        finished (or ``timeout`` seconds passed); returns the progress as a dict
        (version, partitions, done, failed, bytes, finished).
        """
        lib = self._lib
        m, v = _b(model, "model"), _b(version, "version")
        flags = (L.EC_PREWARM_PIN if pin else 0) | (L.EC_PREWARM_DEVICE if device else 0)
        prog = L.PrewarmProgress()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._call(lambda p: lib.ec_model_prewarm(p, m, v, flags, byref(prog)))
            out = {k: int(getattr(prog, k)) for k, _ in L.PrewarmProgress._fields_}
            if not wait or prog.finished or (deadline and time.monotonic() > deadline):
                return out
            time.sleep(0.02)  # polling the daemon's progress

    def evict(self, model: str, version: Union[str, int] = "current") -> int:
        """Drop a version's resident partitions from memory; returns bytes freed."""
        lib = self._lib
        m, v = _b(model, "model"), _b(version, "version")
        freed = c_uint64()
        self._call(lambda p: lib.ec_model_evict(p, m, v, byref(freed)))
        return int(freed.value)

    def make_dynamic(self, model: str, version: Union[str, int], tensor: str, *,
                     capacity: int = 0, policy: str = "refuse") -> None:
        """Make a tensor of a version a dynamic table (ec_model_dynamic): at
        most ``capacity`` keys (0: twice its rows); when full, "refuse" new
        keys or "evict-lru" the least recently written ones."""
        from . import _dynamic
        _dynamic.make_dynamic(self, model, version, tensor, capacity, policy)

    def dynamic_tables(self) -> List[Dict[str, Any]]:
        """Every dynamic table the daemon serves: model, version, tensor,
        capacity, keys, bytes, policy, lsn, base_lsn and update counts
        (ec_client_dyn_tables)."""
        from . import _dynamic
        return _dynamic.tables(self)

    def snapshot(self, model: str, version: Union[str, int], new_version: int = 0) -> int:
        """Fold a version's dynamic tables into a new immutable version
        (ec_model_snapshot); returns its number."""
        from . import _dynamic
        return _dynamic.snapshot(self, model, version, new_version)

    def build_index(self, model: str, version: Union[str, int], tensor: str,
                    nlist: Optional[int] = None, metric: str = "ip", *, iters: int = 0,
                    train_rows: int = 0, seed: int = 0,
                    progress: Optional[Callable[[str, int, int], Any]] = None
                    ) -> Dict[str, Any]:
        """Build the IVF-Flat index of a 2-D f32/f16/bf16 tensor and store it
        with the daemon (ec_index_build; needs administrator rights), so that
        ``Tensor.search(..., nprobe=N)`` scans only the N nearest lists.

        Args:
            nlist: lists (k-means centroids); None: about 4 sqrt(rows), a power
                of two.
            metric: what searches will use: "ip", "cosine" or "l2".
            iters, train_rows, seed: k-means iterations (0: 10), rows it trains
                on (0: min(rows, 64 nlist)), seed (0: a fixed default).
            progress: called as progress(phase, done, total), phase one of
                "sample", "train", "assign", "write", "send"; a true return
                value stops the build (InvalidArgumentError).

        Returns:
            what the build did: rows, dim, nlist, iters, train_rows, reseeded,
            min_list, max_list, file_bytes, train_s, assign_s, total_s.

        A dynamic table is indexed by its keys, as they are when the build
        begins (rows is then the keys indexed); searches assign every row
        written since to its nearest centroid of this build (once per
        handle) and score it when its list is probed, so they stay right
        and fast (``Tensor.index_info()["stale_rows"]`` counts those rows):
        build again when the rows drifted from the build's centroids.

        Handles that already searched through an earlier index keep it;
        ``Tensor.build_index`` refreshes its own handle.
        """
        from ._index import build_index
        return build_index(self, model, version, tensor, nlist, metric, iters=iters,
                           train_rows=train_rows, seed=seed, progress=progress)

    def retire(self, model: str, version: int, force: bool = False) -> None:
        """Retire a version: drop it from memory, the catalog and disk."""
        lib = self._lib
        m = _b(model, "model")
        self._call(lambda p: lib.ec_model_retire(p, m, int(version), int(bool(force))),
                   retry=False)

    def publish(self, model: str, version: Union[str, int],
                cluster: Optional[str] = None) -> Dict[str, int]:
        """Copy a version to a Redis Cluster (ec_model_publish; administrators):
        every partition checked, written in chunks, the manifest last.
        ``cluster`` is "redis-cluster://host:port[,host:port...]"; None: the
        daemon's ``--remote``. Returns
        {"version", "tensors", "bytes"}."""
        return self._publish_pull(self._lib.ec_model_publish, model, version, cluster)

    def pull(self, model: str, version: Union[str, int],
             cluster: Optional[str] = None, lazy: bool = False) -> Dict[str, int]:
        """Register a version published on a Redis Cluster (ec_model_pull;
        administrators); nothing is registered unless every partition matches
        its checksum. ``lazy``: register it from its manifest and file heads
        and read each partition from the cluster when it is first needed
        (the daemon must run with ``--remote``; ec_model_pull_flags with
        EC_PULL_LAZY). Returns {"version", "tensors", "bytes"}."""
        if lazy:
            lib = self._lib
            return self._publish_pull(
                lambda p, m, v, u, out: lib.ec_model_pull_flags(p, m, v, u, 1, out),
                model, version, cluster)
        return self._publish_pull(self._lib.ec_model_pull, model, version, cluster)

    def unpublish(self, model: str, version: Union[str, int],
                  cluster: Optional[str] = None) -> Dict[str, int]:
        """Remove a version from a Redis Cluster (ec_model_unpublish;
        administrators): its chunks and file heads, then its manifest.
        Returns {"version", "tensors", "bytes"} (the bytes removed)."""
        return self._publish_pull(self._lib.ec_model_unpublish, model, version, cluster)

    def _publish_pull(self, fn: Any, model: str, version: Union[str, int],
                      cluster: Optional[str]) -> Dict[str, int]:
        from ._lib import PublishResult
        m, v = _b(model, "model"), _b(version, "version")
        u = b"" if cluster is None else _b(cluster, "cluster")
        out = PublishResult()
        self._call(lambda p: fn(p, m, v, u, byref(out)), retry=False)
        return {"version": int(out.version), "tensors": int(out.tensors),
                "bytes": int(out.bytes)}

    def refresh(self, model: str, version: Union[str, int] = "current") -> int:
        """Reload partitions whose files changed on disk; returns how many."""
        lib = self._lib
        m, v = _b(model, "model"), _b(version, "version")
        changed = c_uint64()
        self._call(lambda p: lib.ec_model_refresh(p, m, v, byref(changed)))
        return int(changed.value)

    def policy(self, model: str, min_resident_bytes: int = 0,
               min_request_rate: float = 0.0) -> None:
        """Set a model's residency policy (see ec_model_policy)."""
        lib = self._lib
        m = _b(model, "model")
        self._call(lambda p: lib.ec_model_policy(p, m, int(min_resident_bytes),
                                                 float(min_request_rate)))

    def upgrade(self, model: str, version: Union[int, str]) -> int:
        """Rewrite the version's old (format 1) partition files with block
        checksums; returns how many were rewritten (see ec_model_upgrade)."""
        lib = self._lib
        m, v = _b(model, "model"), _b(str(version), "version")
        n = ctypes.c_uint32()
        self._call(lambda p: lib.ec_model_upgrade(p, m, v, byref(n)))
        return int(n.value)

    def cache_mode(self, model: str, mode: str, tensor: Optional[str] = None) -> None:
        """Set how a model's tensors (or ``tensor`` alone) are cached: "rows",
        "partitions" or "auto" (see ec_model_cache_mode)."""
        lib = self._lib
        if mode not in L.CACHE_MODES:
            raise ValueError(f"cache mode {mode!r} is not one of {sorted(L.CACHE_MODES)}")
        m = _b(model, "model")
        t = _b(tensor, "tensor") if tensor is not None else None
        self._call(lambda p: lib.ec_model_cache_mode(p, m, t, L.CACHE_MODES[mode]))

    def find(self, model: str, round: int, params: Union[None, str, Dict[str, Any]] = None) -> int:
        """The newest version of ``model`` trained at ``round`` (with ``params``)."""
        lib = self._lib
        m = _b(model, "model")
        pj = json.dumps(params).encode() if isinstance(params, dict) else (
            params.encode() if params is not None else None)
        out = c_int64()
        self._call(lambda p: lib.ec_model_find(p, m, int(round), pj, byref(out)))
        return int(out.value)

    # -- results namespaces (include/embcache_results.h; see _results.py) ----

    def results(self, name: str, *, create: bool = True, shared: bool = False,
                remote: bool = False, configure: bool = False, bind: Union[None, str, Tuple[str, Any]] = None,
                ttl: Optional[float] = None, stale_ttl: Optional[float] = None,
                negative_ttl: Optional[float] = None, jitter: Optional[float] = None,
                lease_time: Optional[float] = None, max_computing: Optional[int] = None,
                negative_max: Optional[int] = None) -> Any:
        """Open results namespace ``name`` as a :class:`embcache.Results`.

        Args:
            name: letters, digits, '.', '_', '-', ':' (at most 63 bytes).
            create: create it when it does not exist (owned by this uid).
            shared: create it open to every uid the daemon serves.
            remote: create it shared across hosts through the daemon's remote
                tier (embcached --remote): a result computed on one host is a
                hit on the others, a key missed on several at once is computed
                once. InvalidArgumentError on a daemon without --remote.
            configure: apply the options below to an existing namespace (its
                owner only); without it they count only when it is created.
            bind: "model/version_or_alias" (just "model": its "current") or
                (model, version): results are dropped, never served, once the
                alias moves or the version is retired.
            ttl: seconds a result is fresh. stale_ttl: seconds past that it
                may still be served stale (0: never). negative_ttl: seconds a
                "no result" is kept. jitter: each TTL spread by +- this
                fraction (0: none). lease_time: seconds a computation may take
                before its lease passes to a waiter. max_computing: leases
                held at once. negative_max: most "no result" entries kept.
                None: the daemon's default (300 s, 60 s, 30 s, 0.1, 30 s, 64,
                65536).

        Raises:
            NotFoundError: no such namespace and not ``create``, or a binding to
                an unknown model or alias. PermissionError: another uid's.
            InvalidArgumentError: a bad name or option. NoSpaceError: too many
                namespaces.
        """
        from ._results import Results
        return Results(self, name, create=create, shared=shared, remote=remote,
                       configure=configure,
                       bind=bind, ttl=ttl, stale_ttl=stale_ttl, negative_ttl=negative_ttl,
                       jitter=jitter, lease_time=lease_time, max_computing=max_computing,
                       negative_max=negative_max)

    def results_list(self) -> List[Dict[str, Any]]:
        """The results namespaces this client may open (an administrator: all),
        one dict each, with the fields of Results.stats()."""
        from ._results import _list
        out: List[Dict[str, Any]] = []
        self._call(lambda p: _list(self._lib, p, out))
        return out

    def results_drop(self, name: str) -> None:
        """Delete results namespace ``name`` and its results (its owner only).

        Raises:
            NotFoundError, PermissionError.
        """
        fn = self._lib.need("ec_results_drop")
        n = _b(name, "namespace name")
        self._call(lambda p: fn(p, n), retry=False)


def connect(socket: Optional[PathLike] = None, *, reconnect: bool = True) -> Client:
    """Connect to embcached; the client is a context manager.

    ``socket`` defaults to ``$EMBCACHE_SOCKET``, then the daemon's default.
    See :class:`Client`.
    """
    return Client(socket, reconnect=reconnect)


# ---------------------------------------------------------------------------
# Tensor

class Tensor:
    """A resolved tensor of a model version: gather rows, take views.

    Attributes:
        model, name: the model and tensor names.
        version: the concrete version it resolved to (an int).
        shape: the tensor's shape; ``shape[0]`` is the row count.
        dtype: the numpy dtype of numpy outputs. numpy has no bfloat16: a bf16
            tensor's numpy outputs are ``numpy.uint16`` holding the raw bit
            patterns (``dtype_name`` says "bf16"; torch outputs are
            ``torch.bfloat16``).
        dtype_name: "f32", "f16", "bf16", "f64", "i8", "u8", "i32" or "i64".
    """

    def __init__(self, client: Client, handle: _Handle, inc: int, requested: str) -> None:
        self._client = client
        self._lib = client._lib
        self._hobj: Optional[_Handle] = handle
        self._h = handle.ptr
        self._inc = inc
        self._retired: List[_Handle] = []
        self._lock = threading.Lock()
        self._fork = _FORK
        _lockers.add(self)
        self.requested_version = requested
        info = L.TensorInfo()
        _check(self._lib, self._lib.ec_tensor_info_get(self._h, byref(info)))
        self.model = _s(info.model)
        self.name = _s(info.tensor)
        self.version = int(info.version)
        self._code = int(info.dtype)
        self.dtype_name = _s(self._lib.ec_dtype_name(self._code))
        self.dtype = _NP_OF[self._code]
        self.shape: Tuple[int, ...] = tuple(int(info.shape[i]) for i in range(info.ndim))
        self.rows = int(info.rows)
        self.row_bytes = int(info.row_bytes)
        self.rows_per_partition = int(info.rows_per_partition)
        self.partitions = int(info.partitions)
        self._row_shape = self.shape[1:]
        self._tdtype: Any = None

    # -- properties --------------------------------------------------------

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes

    @property
    def torch_dtype(self) -> Any:
        """The torch dtype of torch outputs (torch.bfloat16 for bf16)."""
        return self._torch_dtype()

    def _torch_dtype(self) -> Any:
        d = self._tdtype
        if d is None:
            d = self._tdtype = getattr(_torch(), _TORCH_NAME_OF[self._code])
        return d

    @property
    def client(self) -> Client:
        return self._client

    @property
    def cache_mode(self) -> str:
        """How the daemon caches this tensor, as it last said: "rows" or
        "partitions" (gathers follow a change by themselves)."""
        return L.CACHE_MODE_NAMES.get(int(self._lib.ec_tensor_cache_mode(self._h)), "auto")

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 1

    def __repr__(self) -> str:
        return (f"<embcache.Tensor {self.model}@{self.version}/{self.name} "
                f"shape={self.shape} dtype={self.dtype_name}>")

    def release(self) -> None:
        """Release the handle now (views already taken keep working)."""
        with self._lock:
            self._hobj = None
            self._h = 0
            self._retired = []

    def __enter__(self) -> "Tensor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- restart handling --------------------------------------------------

    def _fail(self, rc: int, h: int, call: Callable[[int], int]) -> None:
        """A call with handle h returned rc: reconnect and retry once, or raise."""
        msg = self._lib.last_error(rc)
        if rc not in _RECONNECT_CODES or h == 0:
            raise error_for(rc, msg)
        h = self._recover(h, rc, msg)
        rc = call(h)
        if rc:
            raise error_for(rc, self._lib.last_error(rc))

    def _recover(self, h: int, rc: int, msg: str) -> int:
        """Resolve again on a new connection after the call with handle h
        failed with rc (a daemon restart), or after a fork (rc 0)."""
        c = self._client
        with self._lock:
            forked = self._fork != _FORK
            if self._h == 0:
                raise ReleasedError(f"{self!r} was released")
            if self._h != h and not forked:   # another thread already did it
                return self._h
            if forked:
                # A new connection of this process; the parent's stays its own.
                why = "this process forked"
                cp, inc = c._current()
            else:
                why = "embcached restarted"
                if not c._reconnect or c._closed:
                    raise error_for(rc, msg + ("" if not c._closed else
                                               " (the client was closed: connect again)"))
                cp, inc = c._recover(self._inc, rc, msg)
            out = c_void_p()
            lib = self._lib
            r = lib.ec_tensor_resolve(cp.ptr, self.model.encode(), str(self.version).encode(),
                                      self.name.encode(), byref(out))
            if r:
                raise StaleError(f"{why} and tensor '{self.name}' of model "
                                 f"'{self.model}' version {self.version} could not be "
                                 f"resolved again: {lib.last_error(r)}", L.EC_ESTALE)
            new = _Handle(out.value, lib.ec_tensor_release, (cp,))
            info = L.TensorInfo()
            _check(lib, lib.ec_tensor_info_get(new.ptr, byref(info)))
            shape = tuple(int(info.shape[i]) for i in range(info.ndim))
            if int(info.dtype) != self._code or shape != self.shape:
                raise StaleError(f"{why} and tensor '{self.name}' of model "
                                 f"'{self.model}' version {self.version} changed (now "
                                 f"{shape} {_s(lib.ec_dtype_name(info.dtype))}): resolve it "
                                 f"again", L.EC_ESTALE)
            if self._hobj is not None:
                self._retired.append(self._hobj)
            self._hobj, self._h, self._inc, self._fork = new, new.ptr, inc, _FORK
            return self._h

    def _handle(self) -> int:
        h = self._h
        if h == 0:
            raise ReleasedError(f"{self!r} was released")
        if self._fork != _FORK:
            h = self._recover(h, 0, "")
        return h

    # -- gather ------------------------------------------------------------

    def gather(self, ids: Any, out: Any = None, device: Optional[Device] = None,
               like: Optional[str] = None, dtype: Any = None, *, stream: Any = None) -> Any:
        """Rows ``ids`` of the tensor, as an array of shape ``ids.shape + shape[1:]``.

        Args:
            ids: row ids: a list, a numpy array or a torch tensor of an integer
                dtype, of any shape (each in ``[0, rows)``).
            out: write into this C-contiguous numpy array or torch tensor of the
                right shape, dtype and device instead, and return it.
            device: "cpu", "cuda" or "cuda:N" (or a torch.device): where the
                rows land. Default: ``out``'s device, else the ids' device for
                torch ids, else the host. A GPU output is a torch tensor,
                written by a kernel queued on the current CUDA stream (or
                ``stream``): use it on that stream or synchronize first.
            like: "numpy" or "torch": the type of the result. Default:
                ``out``'s type, else torch for torch ids and numpy otherwise.
            dtype: convert to this dtype on the way (f16 or bf16 from an f32
                tensor); default the tensor's own.
            stream: a torch.cuda.Stream or a raw cudaStream_t for GPU outputs.

        Returns:
            ``out``, or a new numpy array / torch tensor.

        Raises:
            DTypeError: ids of a non-integer dtype; ``out`` of the wrong dtype;
                a conversion the library does not do.
            InvalidArgumentError: ``out`` of the wrong shape or device, not
                C-contiguous or read-only; a numpy result on a GPU.
            OutOfRangeError: an id outside the tensor (the message names its
                position and value).
            ConnectionError, StaleError (see the class docs), ChecksumError,
            EmbcacheIOError, NoSpaceError, DeviceError.
        """
        lib = self._lib
        h = self._h
        if h == 0 or self._fork != _FORK:
            h = self._handle()
        # The common cases first: int64 ids on the host, the tensor's dtype,
        # a new array (or a matching numpy out).
        if device is None and like is None and dtype is None:
            tp = type(ids)
            res = None
            if tp is np.ndarray:
                if ids.dtype == np.int64 and ids.flags.c_contiguous:
                    if out is None:
                        res = np.empty(ids.shape + self._row_shape, self.dtype)
                    elif (type(out) is np.ndarray and out.dtype == self.dtype
                          and out.flags.c_contiguous and out.flags.writeable
                          and out.shape == ids.shape + self._row_shape):
                        res = out
                    if res is not None:
                        n, nb = ids.size, res.nbytes
                        if n:
                            ip, op = _addr(ids), _addr(res)
            elif out is None and tp is _torch_tensor_type():
                if ids.dtype is _TORCH_INT64 and ids.is_cpu and ids.is_contiguous():
                    res = _TORCH_EMPTY(ids.shape + self._row_shape, dtype=self._torch_dtype())
                    ip, op, n = ids.data_ptr(), res.data_ptr(), ids.numel()
                    nb = n * self.row_bytes
            if res is not None:
                if n:
                    rc = lib.ec_tensor_gather(h, ip, n, op, nb)
                    if rc:
                        self._fail(rc, h, lambda hh: lib.ec_tensor_gather(hh, ip, n, op, nb))
                return res
        return self._gather_general(ids, out, device, like, dtype, stream)

    def _gather_general(self, ids: Any, out: Any, device: Any, like: Any, dtype: Any,
                        stream: Any) -> Any:
        lib = self._lib
        t = sys.modules.get("torch")
        # ids -> (int64 C-contiguous array or tensor, where they are)
        ids_torch = t is not None and isinstance(ids, t.Tensor)
        if ids_torch:
            if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == t.bool:
                raise DTypeError(f"ids must be of an integer dtype, not {ids.dtype}")
            ids_dev = _CPU if ids.device.type == "cpu" else ids.device.index
            if ids.device.type not in ("cpu", "cuda"):
                raise InvalidArgumentError(f"ids on device {ids.device} are not supported")
        else:
            if not isinstance(ids, np.ndarray):
                arr = np.asarray(ids)
                if arr.size == 0 and arr.dtype.kind == "f":
                    arr = arr.astype(np.int64)  # [] is no float
                ids = arr
            if ids.dtype.kind not in "iu":
                raise DTypeError(f"ids must be of an integer dtype, not {ids.dtype}")
            ids_dev = _CPU
        ids_shape = tuple(ids.shape)

        # where the rows go, in what type and dtype
        code = self._code if dtype is None else _dtype_code(dtype)
        dev = None if device is None else _device_ordinal(device)
        if like not in (None, "numpy", "torch"):
            raise InvalidArgumentError(f"like must be 'numpy' or 'torch', not {like!r}")
        shape = ids_shape + self._row_shape
        if out is not None:
            if isinstance(out, np.ndarray):
                kind, odev = "numpy", _CPU
            elif t is not None and isinstance(out, t.Tensor):
                kind = "torch"
                odev = _CPU if out.device.type == "cpu" else (
                    out.device.index if out.device.type == "cuda" else -2)
            else:
                raise InvalidArgumentError(
                    f"out must be a numpy array or a torch tensor, not {type(out).__name__}")
            if like is not None and like != kind:
                raise InvalidArgumentError(f"like={like!r} but out is a {kind} array")
            if dev is not None and dev != odev:
                raise InvalidArgumentError(f"device={_device_name(dev)} but out is on "
                                           f"{out.device if kind == 'torch' else 'cpu'}")
            dev = odev
            self._check_out(out, kind, shape, code, t)
            res = out
        else:
            kind = like or ("torch" if ids_torch else "numpy")
            if dev is None:
                dev = ids_dev
            if dev != _CPU and kind == "numpy":
                raise InvalidArgumentError(f"a numpy array cannot live on "
                                           f"{_device_name(dev)}: use like='torch'")
            if kind == "numpy":
                res = np.empty(shape, _NP_OF[code])
            else:
                t = _torch()
                if dev != _CPU and not t.cuda.is_available():
                    raise DeviceError(f"device {_device_name(dev)}: torch sees no CUDA device "
                                      f"in this process")
                res = t.empty(shape, dtype=getattr(t, _TORCH_NAME_OF[code]),
                              device="cpu" if dev == _CPU else f"cuda:{dev}")

        # the ids, as int64 and contiguous where the library reads them
        flags = 0
        if ids_torch:
            if ids_dev != _CPU and dev != _CPU:
                ids = ids.to(device=f"cuda:{dev}", dtype=t.int64).contiguous()
                flags |= L.EC_GATHER_IDS_DEVICE
            else:
                ids = ids.to(device="cpu", dtype=t.int64).contiguous()
            ids_ptr, n = ids.data_ptr(), ids.numel()
        else:
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            ids_ptr, n = ids.ctypes.data, ids.size
        if kind == "numpy":
            out_ptr, nbytes = res.ctypes.data, res.nbytes
        else:
            out_ptr, nbytes = res.data_ptr(), res.numel() * res.element_size()
        if n == 0:
            return res

        h = self._handle()
        if dev == _CPU and code == self._code:
            def call(hh: int) -> int:
                return lib.ec_tensor_gather(hh, ids_ptr, n, out_ptr, nbytes)
        else:
            opts = L.GatherOpts(flags=flags, device=max(dev, 0), stream=None,
                                out_dtype=0 if code == self._code else code)
            if dev != _CPU:
                opts.flags |= L.EC_GATHER_OUT_DEVICE
                opts.stream = self._stream(stream, dev)
                if stream is not None:
                    self._on_stream(stream, dev, res,
                                    ids if flags & L.EC_GATHER_IDS_DEVICE else None)
            fn = lib.need("ec_tensor_gather_ex")

            def call(hh: int) -> int:
                return fn(hh, ids_ptr, n, out_ptr, nbytes, byref(opts))
        rc = call(h)
        if rc:
            self._fail(rc, h, call)
        return res

    def _check_out(self, out: Any, kind: str, shape: Tuple[int, ...], code: int,
                   t: Any) -> None:
        if kind == "numpy":
            if out.dtype != _NP_OF[code]:
                raise DTypeError(f"out has dtype {out.dtype}; rows of {self.name} come as "
                                 f"{_NP_OF[code]}" + (" (bf16 bits)" if
                                                      code == L.EC_DTYPE_BF16 else ""))
            contiguous, writeable = out.flags.c_contiguous, out.flags.writeable
        else:
            want = getattr(t, _TORCH_NAME_OF[code])
            if out.dtype != want:
                raise DTypeError(f"out has dtype {out.dtype}; rows of {self.name} come as "
                                 f"{want}")
            contiguous, writeable = out.is_contiguous(), not out.requires_grad
            if out.device.type not in ("cpu", "cuda"):
                raise InvalidArgumentError(f"out on {out.device} is not supported")
        if tuple(out.shape) != shape:
            raise InvalidArgumentError(f"out has shape {tuple(out.shape)}; these ids need "
                                       f"{shape}")
        if not contiguous:
            raise InvalidArgumentError("out must be C-contiguous (row-major, no strides): "
                                       "pass a fresh array, or let gather() make one")
        if not writeable:
            raise InvalidArgumentError("out is read-only" if kind == "numpy" else
                                       "out requires grad: gather into a tensor that does not")

    @staticmethod
    def _on_stream(stream: Any, dev: int, res: Any, ids: Any) -> None:
        """The gather runs on ``stream``, not on the current stream where the ids
        were converted and the output allocated: make ``stream`` wait for the
        current one, and tell PyTorch's caching allocator that the output and
        the ids are used on ``stream`` (record_stream), so their memory is not
        handed out again while the kernel is still queued there."""
        t = _torch()
        if isinstance(stream, int) and stream == 0:
            # The legacy default stream: PyTorch's own streams are created
            # non-blocking and do not wait for it, nor it for them.
            s = t.cuda.default_stream(dev)
        else:
            s = (t.cuda.ExternalStream(stream, device=f"cuda:{dev}")
                 if isinstance(stream, int) else stream)
        cur = t.cuda.current_stream(dev)
        if s.cuda_stream == cur.cuda_stream:
            return
        s.wait_stream(cur)
        for x in (res, ids):
            if x is not None and isinstance(x, t.Tensor) and x.device.type == "cuda":
                x.record_stream(s)

    @staticmethod
    def _stream(stream: Any, dev: int) -> Optional[int]:
        if stream is None:
            return _torch().cuda.current_stream(dev).cuda_stream or None
        if isinstance(stream, int):
            return stream or None
        return getattr(stream, "cuda_stream", 0) or None

    # -- view --------------------------------------------------------------

    # -- dynamic tables ----------------------------------------------------

    def put(self, keys: Any, rows: Any) -> Dict[str, int]:
        """Insert or update rows of a dynamic table by int64 key (ec_rows_put).

        ``rows`` has shape ``(len(keys),) + shape[1:]`` in the tensor's
        dtype. Logged by the daemon before it is acknowledged: when this
        returns, the update survives a crash of the daemon. Administrators
        only. Returns the counts: lsn, inserted, updated, evicted.

        Raises:
            NoSpaceError: the table is full (policy "refuse"): nothing applied.
            PermissionError, NotFoundError (not a dynamic table),
            InvalidArgumentError (shapes), EmbcacheIOError (the log).
        """
        from . import _dynamic
        return _dynamic.put(self, keys, rows)

    def delete(self, keys: Any) -> Dict[str, int]:
        """Delete keys of a dynamic table (ec_rows_delete); absent keys are
        counted in ``missing``. Logged and acknowledged like ``put``."""
        from . import _dynamic
        return _dynamic.delete(self, keys)

    def find(self, keys: Any) -> Tuple[Any, Any]:
        """Rows of keys of a dynamic table and which were found
        (ec_rows_find): ``(rows, found)``, rows of absent keys all zero.
        ``gather`` reads the same rows but raises NotFoundError for an
        absent key."""
        from . import _dynamic
        return _dynamic.find(self, keys)

    def dynamic_info(self) -> Dict[str, int]:
        """A dynamic table's capacity, keys, lsn and counts (ec_rows_info)."""
        from . import _dynamic
        return _dynamic.info(self)

    # -- search ------------------------------------------------------------

    def search(self, queries: Any, k: int = 10, metric: str = "ip", *,
               threads: int = 0, nprobe: int = 0) -> Tuple[Any, Any]:
        """The ``k`` best rows for each query, exact (ec_search), or
        approximate through the tensor's IVF index with ``nprobe`` > 0.

        Computed in this process over the shared segment, with no copy of
        the table; partitions not in memory are read in first, and a tensor
        cached by rows is read through the gather path (a full scan).

        Args:
            queries: shape ``(dim,)`` or ``(n, dim)``: a numpy array (any
                float dtype, converted to float32), a list, or a torch tensor.
            k: results per query, >= 1. Past the table's last row the ids are
                -1 and the scores -inf (``ip``, ``cosine``) or inf (``l2``).
            metric: "ip" (inner product), "cosine", or "l2" (squared
                Euclidean distance, lowest first).
            threads: threads of the search (0: every CPU).
            nprobe: 0 (exact), or scan only the rows of the ``nprobe`` lists
                of the tensor's IVF index (``build_index``) whose centroids
                score best for each query; the rows found have their exact
                scores, rows in no probed list are missed. The index must
                have been built for ``metric``. A dynamic table's ids are
                keys; the rows written since its index was built are always
                scored too (exactly, by their key's row now), and deleted
                keys never come back.

        Returns:
            ``(scores, ids)`` of shape ``(n, k)`` (``(k,)`` for one query),
            float32 and int64, best first; equal scores in the order of
            their ids. numpy arrays, or torch tensors on the queries' device
            when ``queries`` is a torch tensor.

        Raises:
            InvalidArgumentError: a ``dim`` that is not ``shape[1]``, a tensor
                that is not 2-D, k < 1, an unknown metric, NaN or infinite
                queries, an all-zero cosine query.
            DTypeError: a tensor that is not f32, f16 or bf16.
            NotFoundError: ``nprobe`` > 0 and the tensor has no index.
            InvalidArgumentError: ``nprobe`` > 0 and the index was built for
                another metric.
            ConnectionError, StaleError, ChecksumError, EmbcacheIOError (as a
            gather's).
        """
        from ._search import search
        return search(self, queries, k, metric, threads, nprobe)

    def build_index(self, nlist: Optional[int] = None, metric: str = "ip", **kw: Any
                    ) -> Dict[str, Any]:
        """Build this tensor's IVF index (see ``Client.build_index``); this
        handle searches through the new index from now on."""
        from ._index import build_index
        return build_index(self._client, self.model, self.version, self.name, nlist, metric,
                           tensor_obj=self, **kw)

    def index_info(self) -> Dict[str, Any]:
        """What this tensor's IVF index holds (ec_index_info_get): metric,
        nlist, rows, dim, min_list, max_list, file_bytes, train_rows, iters,
        built_lsn. For a dynamic table also how stale it is
        (ec_index_staleness_get): table_lsn, indexed_keys, live_keys,
        stale_rows (live keys written since the build: searches assign
        them to the build's lists; ``build_index`` again brings them to 0,
        with centroids trained on the rows of now) and stale_share
        (stale_rows / live_keys).

        Raises:
            NotFoundError: the tensor has no index.
        """
        from ._index import index_info
        return index_info(self)

    def view(self) -> "View":
        """Pin the whole tensor in shared memory and return a read-only,
        zero-copy :class:`View` of it (``with t.view() as w: ...``).

        Raises:
            NoSpaceError: the segment cannot hold the tensor contiguously.
            ChecksumError, EmbcacheIOError, ConnectionError, StaleError.
        """
        lib = self._lib
        out = c_void_p()
        used: List[_Handle] = []

        def call(hh: int) -> int:
            rc = lib.ec_tensor_view(hh, byref(out))
            if rc == 0:
                used.append(self._hobj)  # type: ignore[arg-type]
            return rc

        h = self._handle()
        rc = call(h)
        if rc:
            self._fail(rc, h, call)
        return View(self, used[0], out.value, self._inc)


# ---------------------------------------------------------------------------
# View

class _ArrayOwner:
    """The base object of a view's numpy arrays: it describes the memory
    through ``__array_interface__`` (read-only) and keeps the pin alive.

    Why not np.frombuffer: a buffer over the mapping would be writable from
    Python's point of view, and numpy would let anyone set
    ``arr.flags.writeable = True`` and fault on the first write. An interface
    that says read-only makes numpy refuse that.
    """

    __slots__ = ("__array_interface__", "_pin")

    def __init__(self, pin: _Handle, ptr: int, shape: Tuple[int, ...], typestr: str) -> None:
        self._pin = pin
        self.__array_interface__ = {"data": (ptr, True), "shape": shape,
                                    "typestr": typestr, "version": 3}


class View:
    """A pinned, read-only, zero-copy view of a whole tensor in shared memory.

    ``numpy()`` (or ``numpy.asarray(view)``) gives a read-only array over the
    shared memory; ``torch()`` (or ``torch.from_dlpack(view)``) a torch tensor
    over it through DLPack. The memory is mapped read-only: writing it
    through torch (which has no read-only tensors) kills the process with
    SIGSEGV rather than changing shared data.

    The pin is held until the view is released (``release()``, the end of a
    ``with`` block, or garbage collection) *and* every array or tensor taken
    from it is gone: arrays stay valid after ``release()``. After a daemon
    restart, using the view raises StaleError; arrays taken from it must not
    be used after a restart (the new daemon does not keep the old pins).
    """

    def __init__(self, tensor: Tensor, thandle: _Handle, vptr: int, inc: int) -> None:
        lib = tensor._lib
        self._lib = lib
        self._tensor = tensor
        self._thandle = thandle          # the tensor handle the view came from
        self._inc = inc
        self._fork = _FORK
        self._pin: Optional[_Handle] = _Handle(vptr, lib.ec_view_release, (thandle,))
        self._ptr = int(lib.ec_view_data(vptr) or 0)
        self.nbytes = int(lib.ec_view_size(vptr))
        self.shape: Tuple[int, ...] = tensor.shape
        self.dtype = tensor.dtype
        self.dtype_name = tensor.dtype_name
        self._array: Optional[np.ndarray] = None

    @property
    def tensor(self) -> Tensor:
        return self._tensor

    @property
    def released(self) -> bool:
        return self._pin is None

    def _check(self) -> _Handle:
        """The pin, after checking the view may still be read."""
        pin = self._pin
        if pin is None:
            raise ReleasedError(f"this view of {self._tensor.name} was released: take a new "
                                f"one with tensor.view()")
        t = self._tensor
        if self._fork != _FORK:
            raise StaleError(f"this view of {t.name} was taken before this process forked: "
                             f"take a new view in this process", L.EC_ESTALE)
        stale = t._client._inc != self._inc
        if not stale:
            # The daemon generation in the segment against the view's: no
            # system call, and nothing counted as a gather.
            rc = self._lib.ec_view_check(pin.ptr)
            if rc == L.EC_ESTALE:
                stale = True
            elif rc:
                raise error_for(rc, self._lib.last_error(rc))
        if stale:
            raise StaleError(f"this view of {t.name} belongs to an embcached that has "
                             f"restarted since: take a new view", L.EC_ESTALE)
        return pin

    def numpy(self) -> np.ndarray:
        """The tensor as a read-only numpy array over the shared memory (no copy).

        bf16 tensors come as numpy.uint16 bit patterns.
        """
        pin = self._check()
        arr = self._array
        if arr is None:
            owner = _ArrayOwner(pin, self._ptr, self.shape, self.dtype.str)
            arr = np.asarray(owner)
            self._array = arr
        return arr

    def torch(self) -> Any:
        """The tensor as a torch tensor over the shared memory (no copy), via
        DLPack. It is read-only memory: do not write to it."""
        self._check()
        return _torch().from_dlpack(self)

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        a = self.numpy()
        if dtype is not None and np.dtype(dtype) != a.dtype:
            return a.astype(dtype)
        return a.copy() if copy else a

    def __dlpack__(self, stream: Any = None) -> object:
        """A DLPack capsule of the view (its own reference to the pin)."""
        if stream is not None and stream != -1:
            raise BufferError("a view lives in host memory: __dlpack__ takes no stream")
        pin = self._check()
        m = ctypes.POINTER(L.DLManagedTensor)()
        _check(self._lib, self._lib.need("ec_view_dlpack")(pin.ptr, byref(m)))
        return _dlpack.capsule(ctypes.cast(m, c_void_p).value)

    def __dlpack_device__(self) -> Tuple[int, int]:
        return (L.KDL_CPU, 0)

    def __getitem__(self, key: Any) -> Any:
        return self.numpy()[key]

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 1

    def release(self) -> None:
        """Drop this view's pin (arrays taken from it keep theirs). Idempotent."""
        self._pin = None
        self._array = None

    def __enter__(self) -> "View":
        self._check()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._pin is None else f"{self.nbytes} bytes"
        return (f"<embcache.View {self._tensor.model}@{self._tensor.version}/"
                f"{self._tensor.name} shape={self.shape} dtype={self.dtype_name} {state}>")
