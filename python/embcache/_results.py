"""Results and cached(): the Python face of libembcache's cache manager
(include/embcache_results.h): results kept by (namespace, key), computed
once for every process, and context windows (token prefixes cut into
blocks).

``Client.results(name, ...)`` opens a namespace as a :class:`Results`;
:func:`cached` is a decorator that caches a function's results in one.
Everything about TTLs, leases, stale and negative results happens in
libembcache and the daemon; this module maps keys and values between Python
objects and bytes, and C error codes onto exceptions.

Keys (``encode_key``), deterministic across processes and runs:

- ``bytes`` (and bytearray, memoryview) as they are; ``str`` as its UTF-8;
  ``int`` as its decimal digits in ASCII. These plain keys are the bytes a C
  client would use, so ``"42"``, ``b"42"`` and ``42`` are one key.
- a numpy array or torch tensor (or numpy scalar): ``b"\\0A"``, then its
  dtype (one length byte and the numpy type string, e.g. ``"<f4"``; torch
  bfloat16 is ``"bf16"``), one byte of ndim, the shape as little-endian
  int64s and the C-order bytes. A torch tensor keys as the numpy array of
  the same dtype, shape and values. No hashing: keys are at most
  ``EC_RES_KEY_MAX`` (4096) bytes; hash larger inputs yourself (as
  :func:`cached` does).
- a tuple: ``b"\\0T"`` and, per element, a type byte (``b`` bytes, ``s`` str,
  ``i`` int, ``A`` array, ``T`` tuple), its length as a little-endian uint32
  and its encoding as above. Inside a tuple, 1, "1" and b"1" differ.

Values: ``bytes`` are stored as bytes and come back as ``bytes``; numpy
arrays and torch tensors (moved to the host and made contiguous) as tensors
with their dtype and shape, which come back as numpy arrays (``as_torch=True``:
torch tensors; bfloat16 comes to numpy as uint16 bit patterns, and numpy
uint16 is stored as bf16 bits); Python ints and floats as 0-d int64/float64
arrays. A cached "no result" (``put_negative``, or :data:`NO_RESULT` from a
computation) reads as ``None``: ``get(key, default=None)`` returns ``default``
on a miss and ``None`` on a negative hit, so pass a sentinel of your own as
``default``, or call ``lookup(key)`` for a :class:`Result` that says
``found``, ``negative`` and ``stale``.

Processes and threads: a Results may be used by many threads at once; each
thread reads into a buffer of its own. After fork(), or when embcached
restarts, the namespace is opened again on the client's new connection on
first use (a lease held by the old connection is lost; a waiter takes it).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import inspect
import itertools
import struct
import sys
import threading
import time
from ctypes import byref, c_size_t, c_uint64, c_void_p
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _lib as L
from ._client import (_CPU, _NP_OF, _RECONNECT_CODES, Client, _dtype_code, _Handle, _s,
                      _torch)
from . import _client
from .errors import (EmbcacheError, InternalError, InvalidArgumentError, NotFoundError,
                     ReleasedError, StaleError, error_for)

__all__ = ["Results", "Result", "NO_RESULT", "cached", "encode_key"]


class _NoResult:
    """The type of :data:`NO_RESULT`."""

    _inst: Optional["_NoResult"] = None

    def __new__(cls) -> "_NoResult":
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __repr__(self) -> str:
        return "embcache.NO_RESULT"

    def __reduce__(self) -> str:
        return "NO_RESULT"


#: Returned by a computation (get_or_compute's fn, a cached() function) to say
#: "there is no result for this key": cached for the namespace's negative TTL,
#: read back as None.
NO_RESULT = _NoResult()

_LEASE_NAMES = {L.EC_LEASE_GRANTED: "granted", L.EC_LEASE_WAIT: "wait",
                L.EC_LEASE_FOUND: "found", L.EC_LEASE_STALE: "stale"}
_FN_FAILED = -1000   # what the compute trampoline returns when fn raised
_BUF0 = 64 << 10     # first size of each thread's read buffer


def _is_torch(x: Any) -> bool:
    t = sys.modules.get("torch")
    return t is not None and isinstance(x, t.Tensor)


# ---------------------------------------------------------------------------
# Keys

def _array_key(x: Any) -> bytes:
    if _is_torch(x):
        t = _torch()
        x = x.detach().cpu().contiguous()
        if x.dtype == t.bfloat16:
            dt, data = b"bf16", x.view(t.int16).numpy().tobytes()
            shape = tuple(x.shape)
        else:
            a = x.numpy()
            dt, data, shape = a.dtype.str.encode(), a.tobytes(), a.shape
    else:
        a = np.asarray(x)
        if a.dtype.hasobject:
            raise InvalidArgumentError("an array of Python objects cannot be a key")
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        dt, data, shape = a.dtype.str.encode(), a.tobytes(), a.shape
    if len(shape) > 255:
        raise InvalidArgumentError(f"a key array of {len(shape)} dimensions")
    return (b"\0A" + bytes([len(dt)]) + dt + bytes([len(shape)])
            + struct.pack(f"<{len(shape)}q", *shape) + data)


def _key_part(x: Any) -> Tuple[bytes, bytes]:
    """(type byte, encoding) of a key or key element."""
    if isinstance(x, bytes):
        return b"b", x
    if isinstance(x, (bytearray, memoryview)):
        return b"b", bytes(x)
    if isinstance(x, str):
        return b"s", x.encode("utf-8")
    if isinstance(x, int) and not isinstance(x, bool):
        return b"i", str(x).encode("ascii")
    if isinstance(x, tuple):
        parts = []
        for e in x:
            tag, enc = _key_part(e)
            parts.append(tag + struct.pack("<I", len(enc)) + enc)
        return b"T", b"\0T" + b"".join(parts)
    if isinstance(x, (np.ndarray, np.generic)) or _is_torch(x):
        return b"A", _array_key(x)
    raise InvalidArgumentError(
        f"a key must be bytes, str, int, a numpy array, a torch tensor or a tuple of "
        f"these, not {type(x).__name__}")


def encode_key(key: Any) -> bytes:
    """The bytes a key is stored under (see the module's documentation)."""
    k = _key_part(key)[1]
    if len(k) > L.EC_RES_KEY_MAX:
        raise InvalidArgumentError(f"the key is {len(k)} bytes; keys are at most "
                                   f"{L.EC_RES_KEY_MAX}: hash it (hashlib.blake2b) first")
    return k


# ---------------------------------------------------------------------------
# Values

def _value(v: Any, ttl: Optional[float], compute_us: int = 0) -> Tuple[Any, L.ResultValue]:
    """(what must stay alive while the C call runs, the ec_result_value of v)."""
    rv = L.ResultValue()
    rv.ttl = _pos(ttl, "ttl") if ttl is not None else 0.0
    rv.compute_us = min(max(int(compute_us), 0), 0xFFFFFFFF)
    keep: Any = None
    if v is NO_RESULT:
        rv.flags = L.EC_RES_NEGATIVE
        return keep, rv
    if isinstance(v, (bytes, bytearray, memoryview)):
        keep = np.frombuffer(v if isinstance(v, bytes) else bytes(v), np.uint8)
        rv.len = keep.size
        rv.data = keep.ctypes.data if keep.size else None
        return keep, rv
    if _is_torch(v):
        keep = v.detach()
        if keep.device.type != "cpu":
            keep = keep.cpu()
        keep = keep.contiguous()
        code = _dtype_code(keep.dtype)
        shape = tuple(keep.shape)
        nbytes = keep.numel() * keep.element_size()
        ptr = keep.data_ptr()
    elif isinstance(v, (np.ndarray, np.generic, int, float)) and not isinstance(v, bool):
        keep = np.asarray(v)
        if not keep.dtype.isnative:
            keep = keep.astype(keep.dtype.newbyteorder("="))
        if not keep.flags.c_contiguous:
            keep = keep.copy(order="C")   # (np.ascontiguousarray makes 0-d 1-d)
        code = _dtype_code(keep.dtype)
        shape, nbytes, ptr = keep.shape, keep.nbytes, keep.ctypes.data
    else:
        raise InvalidArgumentError(
            f"a value must be bytes, a numpy array, a torch tensor, an int or a float "
            f"(or embcache.NO_RESULT), not {type(v).__name__}")
    if len(shape) > L.EC_MAX_DIMS:
        raise InvalidArgumentError(f"a value of {len(shape)} dimensions; at most "
                                   f"{L.EC_MAX_DIMS}")
    rv.flags = L.EC_RES_TENSOR
    rv.dtype = code
    rv.ndim = len(shape)
    for i, n in enumerate(shape):
        rv.shape[i] = n
    rv.len = nbytes
    rv.data = ptr if nbytes else None
    return keep, rv


def _decode(flags: int, dtype: int, shape: Tuple[int, ...], raw: np.ndarray,
            as_torch: bool) -> Any:
    """The Python value of a stored one; raw (uint8) is copied, never kept."""
    if flags & L.EC_RES_NEGATIVE:
        return None
    if not flags & L.EC_RES_TENSOR:
        return raw.tobytes()
    npdt = _NP_OF.get(dtype)
    if npdt is None:
        raise InternalError(f"a stored result has dtype {dtype}, which this embcache "
                            f"package does not know: upgrade it", L.EC_EINTERNAL)
    want = npdt.itemsize
    for n in shape:
        want *= n
    if want != raw.size:
        raise InternalError(f"a stored result of shape {shape} has {raw.size} bytes, not "
                            f"{want}", L.EC_EINTERNAL)
    a = raw.view(npdt).reshape(shape).copy()
    if not as_torch:
        return a
    t = _torch()
    if dtype == L.EC_DTYPE_BF16:
        return t.from_numpy(a.view(np.int16)).view(t.bfloat16)
    return t.from_numpy(a)


def _raw_of(rv: L.ResultValue) -> np.ndarray:
    if not rv.len:
        return np.empty(0, np.uint8)
    return np.ctypeslib.as_array((ctypes.c_uint8 * rv.len).from_address(rv.data))


def _pos(x: Optional[float], what: str) -> float:
    x = float(x)  # type: ignore[arg-type]
    if not x > 0:
        raise InvalidArgumentError(f"{what} must be > 0 seconds (None: the default), not {x}")
    return x


class Result:
    """What :meth:`Results.lookup` found.

    Attributes:
        found: a value or a cached "no result" was found.
        negative: it is a cached "no result" (``value`` is None).
        stale: it is past its TTL (only with ``allow_stale=True``).
        value: the value (bytes, a numpy array or a torch tensor), or None.
        ttl_left: seconds it stays fresh (< 0: stale for that long).
        compute_us: how long computing it took, as its writer said.
    """

    __slots__ = ("found", "negative", "stale", "value", "ttl_left", "compute_us")

    def __init__(self, found: bool, negative: bool = False, stale: bool = False,
                 value: Any = None, ttl_left: float = 0.0, compute_us: int = 0) -> None:
        self.found, self.negative, self.stale = found, negative, stale
        self.value, self.ttl_left, self.compute_us = value, ttl_left, compute_us

    def __bool__(self) -> bool:
        return self.found

    def __repr__(self) -> str:
        if not self.found:
            return "<embcache.Result miss>"
        what = "negative" if self.negative else type(self.value).__name__
        return (f"<embcache.Result {what}{' stale' if self.stale else ''} "
                f"ttl_left={self.ttl_left:.3f}>")


def _from_meta(meta: L.ResultMeta, raw: np.ndarray, as_torch: bool) -> Result:
    shape = tuple(int(meta.shape[i]) for i in range(min(meta.ndim, L.EC_MAX_DIMS)))
    return Result(True, bool(meta.flags & L.EC_RES_NEGATIVE), meta.state == L.EC_RES_STALE,
                  _decode(meta.flags, meta.dtype, shape, raw, as_torch),
                  float(meta.ttl_left), int(meta.compute_us))


class _Buf(threading.local):
    def __init__(self) -> None:
        self.arr = np.empty(_BUF0, np.uint8)


# get_or_compute's callback: one C function for every call; arg is the id of
# the call's _Compute in _calls.
class _Compute:
    __slots__ = ("fn", "key", "ttl", "prepared", "err", "ran")

    def __init__(self, fn: Callable[[Any], Any], key: Any, ttl: Optional[float]) -> None:
        self.fn, self.key, self.ttl = fn, key, ttl
        self.prepared: Optional[Tuple[Any, L.ResultValue]] = None
        self.err: Optional[BaseException] = None
        self.ran = False


_calls: Dict[int, _Compute] = {}
_call_ids = itertools.count(1)


def _trampoline(arg: Optional[int], key: int, key_len: int, out: Any) -> int:
    c = _calls.get(arg or 0)
    if c is None:
        return L.EC_EINTERNAL
    try:
        if c.prepared is None:   # computed once, also across a retried call
            c.ran = True
            t0 = time.perf_counter()
            v = c.fn(c.key)
            us = int((time.perf_counter() - t0) * 1e6)
            if v is None:
                raise InvalidArgumentError(
                    "the computation returned None: return a value, or embcache.NO_RESULT "
                    "for \"no result\"")
            c.prepared = _value(v, c.ttl, us)
        out[0] = c.prepared[1]
        return 0
    except BaseException as e:  # noqa: B902 -- re-raised by get_or_compute
        c.err = e
        return _FN_FAILED


_TRAMPOLINE = L.ComputeFn(_trampoline)


def _ns_dict(ns: L.NsInfo) -> Dict[str, Any]:
    d: Dict[str, Any] = {}
    for name, _ in L.NsInfo._fields_:
        v = getattr(ns, name)
        d[name] = _s(v) if isinstance(v, (bytes, type(None))) else v
    d["shared"] = bool(ns.flags & L.EC_NS_SHARED)
    d["remote"] = bool(ns.flags & L.EC_NS_REMOTE)
    return d


def _list(lib: L.Library, ptr: int, out: List[Dict[str, Any]]) -> int:
    def cb(nsp: Any, arg: Any) -> int:
        out.append(_ns_dict(nsp.contents))
        return 0
    ccb = L.NsCallback(cb)
    out.clear()
    return lib.need("ec_results_list")(ptr, ccb, None)


# ---------------------------------------------------------------------------
# Results

class Results:
    """An open results namespace (see :meth:`Client.results`)."""

    def __init__(self, client: Client, name: str, *, create: bool = True, shared: bool = False,
                 remote: bool = False, configure: bool = False, bind: Union[None, str, Tuple[str, Any]] = None,
                 ttl: Optional[float] = None, stale_ttl: Optional[float] = None,
                 negative_ttl: Optional[float] = None, jitter: Optional[float] = None,
                 lease_time: Optional[float] = None, max_computing: Optional[int] = None,
                 negative_max: Optional[int] = None) -> None:
        self._client = client
        self._lib = client._lib
        self.name = name
        self._bname = _client._b(name, "namespace name")
        o = L.NsOpts()
        o.flags = ((L.EC_NS_CREATE if create else 0) | (L.EC_NS_SHARED if shared else 0)
                   | (L.EC_NS_REMOTE if remote else 0)
                   | (L.EC_NS_CONFIGURE if configure else 0))
        if bind is not None:
            if isinstance(bind, str):
                m, sep, v = bind.partition("/")
                v = v if sep else "current"
            elif isinstance(bind, tuple) and len(bind) == 2:
                m, v = bind
            else:
                raise InvalidArgumentError(f"bind must be 'model/version_or_alias' or "
                                           f"(model, version), not {bind!r}")
            self._bind = (_client._b(m, "bind model"), _client._b(v, "bind version"))
            o.bind_model, o.bind_version = self._bind
        o.ttl = 0.0 if ttl is None else _pos(ttl, "ttl")
        # stale_ttl and jitter: 0 means none (the C API's 0 is "the default")
        o.stale_ttl = 0.0 if stale_ttl is None else (float(stale_ttl) if stale_ttl > 0 else -1.0)
        o.jitter = 0.0 if jitter is None else (float(jitter) if jitter > 0 else -1.0)
        o.negative_ttl = 0.0 if negative_ttl is None else _pos(negative_ttl, "negative_ttl")
        o.lease_time = 0.0 if lease_time is None else _pos(lease_time, "lease_time")
        for f, v in (("max_computing", max_computing), ("negative_max", negative_max)):
            if v is not None:
                if int(v) < 1:
                    raise InvalidArgumentError(f"{f} must be >= 1 (None: the default)")
                setattr(o, f, int(v))
        self._opts = o
        self._lock = threading.Lock()
        self._buf = _Buf()
        self._retired: List[_Handle] = []
        ch, self._inc = client._current()
        self._fork = _client._FORK
        try:
            self._hobj: Optional[_Handle] = self._open(ch)
        except EmbcacheError as e:
            if e.code not in _RECONNECT_CODES or not client._reconnect:
                raise
            ch, self._inc = client._recover(self._inc, e.code, e.message)
            self._hobj = self._open(ch)
        self._h = self._hobj.ptr
        # reopened after a fork or restart: create it again, never reconfigure
        self._opts.flags &= ~L.EC_NS_CONFIGURE
        _client._lockers.add(self)

    def _open(self, ch: _Handle) -> _Handle:
        lib = self._lib
        o = self._opts
        plain = (o.flags == 0 and not o.bind_model and o.ttl == 0 and o.stale_ttl == 0
                 and o.negative_ttl == 0 and o.jitter == 0 and o.lease_time == 0
                 and o.max_computing == 0 and o.negative_max == 0)
        out = c_void_p()
        rc = lib.need("ec_results_open")(ch.ptr, self._bname, None if plain else byref(o),
                                         byref(out))
        if rc:
            raise error_for(rc, lib.last_error(rc))
        return _Handle(out.value, lib.ec_results_close, (ch,))

    # -- handles, restarts, fork ----------------------------------------------

    def _handle(self) -> int:
        h = self._h
        if h == 0:
            raise ReleasedError(f"results namespace '{self.name}' was closed: open it again")
        if self._fork != _client._FORK:
            h = self._recover(h, 0, "")
        return h

    def _recover(self, h: int, rc: int, msg: str) -> int:
        """Open the namespace on the client's new connection after a call with
        handle h failed with rc (a daemon restart), or after a fork (rc 0)."""
        c = self._client
        with self._lock:
            forked = self._fork != _client._FORK
            if self._h == 0:
                raise ReleasedError(f"results namespace '{self.name}' was closed")
            if self._h != h and not forked:
                return self._h
            if forked:
                cp, inc = c._current()
            else:
                if not c._reconnect or c._closed:
                    raise error_for(rc, msg)
                cp, inc = c._recover(self._inc, rc, msg)
            try:
                new = self._open(cp)
            except EmbcacheError as e:
                raise StaleError(f"{'this process forked' if forked else 'embcached restarted'}"
                                 f" and results namespace '{self.name}' could not be opened "
                                 f"again: {e}", L.EC_ESTALE) from e
            if self._hobj is not None:
                self._retired.append(self._hobj)
            self._hobj, self._h, self._inc, self._fork = new, new.ptr, inc, _client._FORK
            return self._h

    def _run(self, call: Callable[[int], int]) -> int:
        """rc = call(handle), reopening once on a daemon restart; raises on rc < 0."""
        h = self._handle()
        rc = call(h)
        if rc < 0:
            msg = self._lib.last_error(rc)
            if rc not in _RECONNECT_CODES:
                raise error_for(rc, msg)
            rc = call(self._recover(h, rc, msg))
            if rc < 0:
                raise error_for(rc, self._lib.last_error(rc))
        return rc

    # -- reads -------------------------------------------------------------

    def lookup(self, key: Any, *, allow_stale: bool = False, as_torch: bool = False) -> Result:
        """Look key up (no system call): a :class:`Result` (``found`` is False
        on a miss; ``negative`` for a cached "no result").

        Raises:
            InvalidArgumentError: a key that cannot be encoded, or too long.
            StaleError: embcached restarted and the namespace is gone.
        """
        k = encode_key(key)
        flags = L.EC_RES_ALLOW_STALE if allow_stale else 0
        get = self._lib.ec_results_get
        meta = L.ResultMeta()
        tl = self._buf
        for _ in range(8):
            buf = tl.arr
            rc = self._get_once(get, k, flags, buf, meta)
            if rc == 0:
                return Result(False)
            if rc != L.EC_ETOOBIG:
                return _from_meta(meta, buf[:meta.len], as_torch)
            tl.arr = np.empty(max(int(meta.len), 2 * buf.size), np.uint8)
        raise error_for(L.EC_ETOOBIG, f"the value of a key in '{self.name}' kept growing "
                                      f"while it was read")

    def _get_once(self, get: Any, k: bytes, flags: int, buf: np.ndarray,
                  meta: L.ResultMeta) -> int:
        """ec_results_get into buf: 1, 0 or EC_ETOOBIG; raises other errors."""
        ptr, cap = buf.ctypes.data, buf.size
        h = self._handle()
        rc = get(h, k, len(k), flags, ptr, cap, byref(meta))
        if rc < 0 and rc != L.EC_ETOOBIG:
            msg = self._lib.last_error(rc)
            if rc not in _RECONNECT_CODES:
                raise error_for(rc, msg)
            rc = get(self._recover(h, rc, msg), k, len(k), flags, ptr, cap, byref(meta))
            if rc < 0 and rc != L.EC_ETOOBIG:
                raise error_for(rc, self._lib.last_error(rc))
        return rc

    def get(self, key: Any, default: Any = None, *, allow_stale: bool = False,
            as_torch: bool = False) -> Any:
        """The value of key; ``default`` on a miss; None for a cached "no result".

        Args:
            key: bytes, str, int, a numpy array, a torch tensor or a tuple of these.
            default: returned on a miss (pass a sentinel to tell a miss from a
                negative hit, or use :meth:`lookup`).
            allow_stale: a value past its TTL (within the stale time) is an answer.
            as_torch: tensors as torch tensors rather than numpy arrays.
        """
        r = self.lookup(key, allow_stale=allow_stale, as_torch=as_torch)
        return r.value if r.found else default

    def __contains__(self, key: Any) -> bool:
        return self.lookup(key).found

    # -- writes ------------------------------------------------------------

    def put(self, key: Any, value: Any, ttl: Optional[float] = None) -> None:
        """Store key -> value (bytes, a numpy array, a torch tensor, an int or a
        float; :data:`NO_RESULT` is :meth:`put_negative`), replacing what is
        there, for ``ttl`` seconds (None: the namespace's). Ends this
        process's lease on key and wakes the waiters.

        Raises:
            DTypeError: a dtype embcache has not (bool, complex, int16, ...).
            TooBigError: key and value exceed an item (about 1 MiB).
            NoSpaceError, PermissionError, ConnectionError.
        """
        k = encode_key(key)
        keep, rv = _value(value, ttl)
        put = self._lib.need("ec_results_put")
        self._run(lambda h: put(h, k, len(k), byref(rv)))
        del keep

    def put_negative(self, key: Any, ttl: Optional[float] = None) -> None:
        """Cache "no result" for key (for ``ttl`` s; None: the negative TTL)."""
        self.put(key, NO_RESULT, ttl)

    def get_or_compute(self, key: Any, fn: Callable[[Any], Any], ttl: Optional[float] = None,
                       *, allow_stale: bool = False, wait: Optional[float] = None,
                       beta: Optional[float] = None, early: bool = True,
                       as_torch: bool = False) -> Any:
        """key's value, computed by ``fn(key)`` once for every process.

        On a miss this call either gets the key's lease and runs fn in this
        thread, storing what it returns (for ``ttl`` s; a value as :meth:`put`
        takes, or :data:`NO_RESULT`, cached as "no result"), or waits for the
        caller that has it (in any process), up to ``wait`` seconds (None: twice
        the namespace's lease time). With ``allow_stale`` a stale value is
        returned instead of waiting. A fresh value close to expiry may be
        recomputed early by one caller (``early=False``: never; ``beta``: how
        eagerly, default 1.0); if fn raises then, the fresh value is returned.

        Returns the value as :meth:`get` would (None for "no result").

        Raises:
            whatever fn raised (after giving up the lease, so a waiter computes);
            TimeoutError: waited ``wait`` s for others' computations.
            InvalidArgumentError: fn returned None or an unstorable value.
            errors of :meth:`put`.
        """
        k = encode_key(key)
        o = L.ComputeOpts()
        o.flags = ((L.EC_RES_ALLOW_STALE if allow_stale else 0)
                   | (0 if early else L.EC_RES_NO_EARLY))
        o.wait = 0.0 if wait is None else _pos(wait, "wait")
        o.beta = 0.0 if beta is None else _pos(beta, "beta")
        goc = self._lib.need("ec_results_get_or_compute")
        meta = L.ResultMeta()
        tl = self._buf
        c = _Compute(fn, key, ttl)
        cid = next(_call_ids)
        _calls[cid] = c
        try:
            for attempt in range(4):
                buf = tl.arr
                ptr, cap = buf.ctypes.data, buf.size
                h = self._handle()
                rc = goc(h, k, len(k), byref(o), _TRAMPOLINE, cid, ptr, cap, byref(meta))
                if rc >= 1:   # (also when an early refresh failed: the value is fresh)
                    return _from_meta(meta, buf[:meta.len], as_torch).value
                if c.err is not None:
                    raise c.err
                if rc == L.EC_ETOOBIG:
                    if c.prepared is not None:   # ours: no need to read it back
                        rv = c.prepared[1]
                        shape = tuple(int(rv.shape[i]) for i in range(rv.ndim))
                        return _decode(rv.flags, rv.dtype, shape, _raw_of(rv), as_torch)
                    r = self.lookup(key, allow_stale=allow_stale, as_torch=as_torch)
                    if r.found:
                        return r.value
                    continue                      # gone meanwhile: ask again
                if rc == 0:
                    raise InternalError("ec_results_get_or_compute returned 0, which it "
                                        "never should", L.EC_EINTERNAL)
                msg = self._lib.last_error(rc)
                if rc not in _RECONNECT_CODES or attempt:
                    raise error_for(rc, msg)
                self._recover(h, rc, msg)
            raise error_for(L.EC_EBUSY, f"a key of '{self.name}' was found but gone before "
                                        f"it could be read, 4 times")
        finally:
            del _calls[cid]
            c.err = None   # no cycle through the traceback

    # -- the miss path in parts ---------------------------------------------

    def lease(self, key: Any, *, allow_stale: bool = False, early: bool = False) -> str:
        """Ask for key's lease: "granted" (compute it, then put() or release()),
        "wait" (another computes it: wait()), "found" (it is cached: read it)
        or "stale" (another computes it; the stale value may be read)."""
        k = encode_key(key)
        flags = ((L.EC_RES_ALLOW_STALE if allow_stale else 0)
                 | (L.EC_RES_EARLY if early else 0))
        fn = self._lib.need("ec_results_lease")
        rc = self._run(lambda h: fn(h, k, len(k), flags))
        try:
            return _LEASE_NAMES[rc]
        except KeyError:
            raise InternalError(f"ec_results_lease answered {rc}", L.EC_EINTERNAL) from None

    def release(self, key: Any) -> None:
        """Give up this process's lease on key without a value (a waiter gets it)."""
        k = encode_key(key)
        fn = self._lib.need("ec_results_release")
        self._run(lambda h: fn(h, k, len(k)))

    def wait(self, timeout: float) -> bool:
        """Sleep until something is stored in or released from the namespace
        (True), or ``timeout`` seconds pass (False)."""
        fn = self._lib.need("ec_results_wait")
        t = float(timeout)
        h = self._handle()
        rc = fn(h, t)
        if rc in _RECONNECT_CODES:
            rc = fn(self._recover(h, rc, self._lib.last_error(rc)), t)
        if rc == L.EC_ETIMEOUT:
            return False
        if rc < 0:
            raise error_for(rc, self._lib.last_error(rc))
        return True

    def purge(self, key: Any = None) -> int:
        """Drop key's value, or (key None) every result of the namespace (its
        owner only); returns how many went."""
        fn = self._lib.need("ec_results_purge")
        n = c_uint64()
        if key is None:
            self._run(lambda h: fn(h, None, 0, byref(n)))
        else:
            k = encode_key(key)
            self._run(lambda h: fn(h, k, len(k), byref(n)))
        return int(n.value)

    def stats(self) -> Dict[str, Any]:
        """This namespace as ec_results_list() reports it: its options
        (ttl, stale_ttl, ...), binding, generation, what it holds (items,
        negative_items, bytes) and its counters (hits, misses, negative_hits,
        stale_served, leases_*, puts, negative_puts, evictions, purged, ...)."""
        out: List[Dict[str, Any]] = []
        self._client._call(lambda p: _list(self._lib, p, out))
        for d in out:
            if d["name"] == self.name:
                return d
        raise NotFoundError(f"results namespace '{self.name}' is not listed: it was "
                            f"dropped", L.EC_ENOENT)

    # -- context windows ---------------------------------------------------

    @staticmethod
    def _tokens(tokens: Any) -> np.ndarray:
        if _is_torch(tokens):
            tokens = tokens.detach().cpu().numpy()
        a = np.asarray(tokens)
        if a.size == 0 and a.dtype.kind == "f":
            a = a.astype(np.int32)
        if a.dtype.kind not in "iu":
            from .errors import DTypeError
            raise DTypeError(f"tokens must be integers, not {a.dtype}")
        if a.ndim != 1:
            raise InvalidArgumentError(f"tokens must be 1-D, not of shape {a.shape}")
        if a.dtype != np.int32:
            if a.size and (int(a.min()) < -2**31 or int(a.max()) >= 2**31):
                raise InvalidArgumentError("a token does not fit in int32")
        return np.ascontiguousarray(a, dtype=np.int32)

    def lookup_prefix(self, tokens: Any, block_tokens: int) -> int:
        """How many leading blocks of ``block_tokens`` tokens of ``tokens`` are
        cached (fresh); no system call."""
        t = self._tokens(tokens)
        fn = self._lib.need("ec_context_lookup_prefix")
        n = c_size_t()
        self._run(lambda h: fn(h, t.ctypes.data, t.size, int(block_tokens), byref(n)))
        return int(n.value)

    def put_blocks(self, tokens: Any, block_tokens: int, first: int, values: Any,
                   ttl: Optional[float] = None) -> None:
        """Store blocks first, first+1, ... of tokens: ``values[i]`` is block
        first+i's value (a sequence of values as :meth:`put` takes, or one
        array or tensor whose first dimension runs over the blocks)."""
        t = self._tokens(tokens)
        count = len(values)
        if count == 0:
            return
        arr = (L.ResultValue * count)()
        keep = []
        for i in range(count):
            kp, rv = _value(values[i], ttl)
            keep.append(kp)
            arr[i] = rv
        fn = self._lib.need("ec_context_put")
        self._run(lambda h: fn(h, t.ctypes.data, t.size, int(block_tokens), int(first), count,
                               arr))
        del keep

    def gather_blocks(self, tokens: Any, block_tokens: int, count: Optional[int] = None,
                      out: Any = None, *, dtype: Any = None,
                      block_shape: Union[None, int, Sequence[int]] = None) -> Any:
        """Copy the values of blocks 0..count-1 (None: as many as are cached)
        into ``out`` and return it.

        ``out``: a C-contiguous numpy array or torch tensor (host, or CUDA:
        copied there by the GPU backend) of count * block_bytes bytes, in any
        shape; or None: a new numpy array of shape (count, *block_shape) and
        ``dtype`` (default uint8).

        Raises:
            NotFoundError: a block is not cached (``err.got`` says how many
                were copied). OutOfRangeError: a block's value is not
                block_bytes long. DeviceError: a CUDA out without a GPU backend.
        """
        t = self._tokens(tokens)
        if count is None:
            count = self.lookup_prefix(t, block_tokens)
        count = int(count)
        if out is None:
            if block_shape is None:
                raise InvalidArgumentError("gather_blocks needs out=, or block_shape= (and "
                                           "dtype=) to make one")
            bs = (block_shape,) if isinstance(block_shape, int) else tuple(block_shape)
            out = np.empty((count,) + bs, np.uint8 if dtype is None else dtype)
        if isinstance(out, np.ndarray):
            if not out.flags.c_contiguous or not out.flags.writeable:
                raise InvalidArgumentError("out must be a writeable C-contiguous array")
            ptr, nbytes, dev = out.ctypes.data, out.nbytes, _CPU
        elif _is_torch(out):
            if not out.is_contiguous():
                raise InvalidArgumentError("out must be a contiguous tensor")
            if out.device.type not in ("cpu", "cuda"):
                raise InvalidArgumentError(f"out on {out.device} is not supported")
            dev = _CPU if out.device.type == "cpu" else int(out.device.index or 0)
            ptr, nbytes = out.data_ptr(), out.numel() * out.element_size()
        else:
            raise InvalidArgumentError(f"out must be a numpy array or a torch tensor, not "
                                       f"{type(out).__name__}")
        if count == 0:
            return out
        if nbytes % count:
            raise InvalidArgumentError(f"out has {nbytes} bytes, not a multiple of {count} "
                                       f"blocks")
        bb = nbytes // count
        fn = self._lib.need("ec_context_gather")
        got = c_size_t()

        def call(h: int) -> int:
            return fn(h, t.ctypes.data, t.size, int(block_tokens), count, ptr, bb, dev,
                      byref(got))
        h = self._handle()
        rc = call(h)
        if rc in _RECONNECT_CODES:
            rc = call(self._recover(h, rc, self._lib.last_error(rc)))
        if rc < 0:
            e = error_for(rc, self._lib.last_error(rc))
            if rc == L.EC_ENOENT:
                e.got = int(got.value)  # type: ignore[attr-defined]
            raise e
        return out

    # -- lifetime ----------------------------------------------------------

    @property
    def client(self) -> Client:
        return self._client

    @property
    def closed(self) -> bool:
        return self._h == 0

    def close(self) -> None:
        """Release the handle (the namespace and its results stay)."""
        with self._lock:
            self._hobj = None
            self._h = 0
            self._retired = []

    def __enter__(self) -> "Results":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<embcache.Results '{self.name}'{' closed' if self._h == 0 else ''}>"


# ---------------------------------------------------------------------------
# cached()

_default_lock = threading.Lock()
_default_client: Optional[Client] = None


def _default() -> Client:
    global _default_client
    c = _default_client
    if c is None or c.closed:
        with _default_lock:
            c = _default_client
            if c is None or c.closed:
                c = _default_client = Client()
    return c


def _feed(h: Any, x: Any) -> None:
    """Hash x's type tag, dtype, shape and bytes into h."""
    def put(tag: bytes, data: bytes) -> None:
        h.update(tag + struct.pack("<Q", len(data)))
        h.update(data)

    if x is None:
        put(b"n", b"")
    elif isinstance(x, bool):
        put(b"?", b"\1" if x else b"\0")
    elif isinstance(x, int):
        put(b"i", str(x).encode())
    elif isinstance(x, float):
        put(b"f", struct.pack("<d", x))
    elif isinstance(x, str):
        put(b"s", x.encode("utf-8"))
    elif isinstance(x, (bytes, bytearray, memoryview)):
        put(b"b", bytes(x))
    elif isinstance(x, (np.ndarray, np.generic)) or _is_torch(x):
        put(b"A", _array_key(x))
    elif isinstance(x, (tuple, list)):
        put(b"T" if isinstance(x, tuple) else b"L", struct.pack("<Q", len(x)))
        for e in x:
            _feed(h, e)
    elif isinstance(x, dict):
        items = sorted(x.items(), key=lambda kv: str(kv[0]))
        put(b"D", struct.pack("<Q", len(items)))
        for k, v in items:
            _feed(h, k)
            _feed(h, v)
    else:
        raise InvalidArgumentError(
            f"embcache.cached cannot key an argument of type {type(x).__name__}: use "
            f"numpy arrays, torch tensors, str, bytes, int, float, bool, None, or "
            f"tuples, lists and dicts of these")


def cached(namespace: str, ttl: Optional[float] = None, client: Optional[Client] = None, *,
           like: Optional[str] = None, allow_stale: bool = False, wait: Optional[float] = None,
           **ns_opts: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Cache a function's results in results namespace ``namespace``.

    ::

        @embcache.cached("emb-v3", ttl=600)
        def embed(tokens: np.ndarray) -> np.ndarray: ...

    The key of a call is a BLAKE2b digest of the function's module and
    qualified name and of its arguments -- bound to its parameters, so
    ``f(x, 2)`` and ``f(x, b=2)`` are one call, defaults filled in, extra
    keyword arguments sorted by name -- each as a type tag, its dtype and
    shape for arrays and tensors, and its bytes. Arguments may be numpy
    arrays, torch tensors (their values, moved to the host), str, bytes,
    int, float, bool, None, and tuples, lists and dicts of these.

    A call goes through :meth:`Results.get_or_compute`: computed once for
    every process; the function may return :data:`NO_RESULT` (the call
    returns None). Values come back as numpy arrays, or torch tensors when
    ``like="torch"`` or (``like=None``) when an argument is a torch tensor --
    the same type whether computed or read from the cache; bytes stay bytes.

    Args:
        namespace: opened (created when missing) on first call, with
            ``ns_opts`` (Client.results's keyword arguments).
        ttl: seconds a result stays fresh (None: the namespace's).
        client: the Client to use; None: a client connected on first use to
            the default socket (``$EMBCACHE_SOCKET``, then the daemon's default).
        like: "numpy", "torch" or None (see above).
        allow_stale, wait: as for get_or_compute.

    The wrapper has ``key(*args, **kwargs)`` (the key of a call),
    ``purge(*args, **kwargs)`` (drop one call's result) and ``results()``
    (the Results namespace it uses).
    """
    if like not in (None, "numpy", "torch"):
        raise InvalidArgumentError(f"like must be 'numpy', 'torch' or None, not {like!r}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        try:
            sig: Optional[inspect.Signature] = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
        name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
        state: Dict[str, Any] = {}
        lock = threading.Lock()

        def results() -> Results:
            r = state.get("r")
            if r is None or r.closed:
                with lock:
                    r = state.get("r")
                    if r is None or r.closed:
                        c = client if client is not None else _default()
                        r = state["r"] = c.results(namespace, **ns_opts)
            return r

        def key(*args: Any, **kwargs: Any) -> bytes:
            h = hashlib.blake2b(digest_size=32, person=b"embcache.cached")
            _feed(h, name)
            if sig is not None:
                try:
                    b = sig.bind(*args, **kwargs)
                except TypeError as e:
                    raise TypeError(f"{name}(): {e}") from None
                b.apply_defaults()
                for pname, v in b.arguments.items():
                    _feed(h, pname)
                    _feed(h, v)
            else:
                _feed(h, args)
                _feed(h, dict(kwargs))
            return h.digest()

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            k = key(*args, **kwargs)
            as_torch = like == "torch" or (
                like is None and any(_is_torch(a) for a in itertools.chain(
                    args, kwargs.values())))
            return results().get_or_compute(
                k, lambda _k: fn(*args, **kwargs), ttl, allow_stale=allow_stale, wait=wait,
                as_torch=as_torch)

        def purge(*args: Any, **kwargs: Any) -> int:
            return results().purge(key(*args, **kwargs))

        wrapper.key = key          # type: ignore[attr-defined]
        wrapper.purge = purge      # type: ignore[attr-defined]
        wrapper.results = results  # type: ignore[attr-defined]
        return wrapper

    return deco
