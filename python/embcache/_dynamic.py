"""Dynamic tables: rows by int64 key, inserted, updated and deleted online
(include/embcache_dynamic.h).

``Client.make_dynamic`` turns a tensor of a version into a dynamic table;
``Tensor.put``, ``Tensor.delete`` send batches of updates to the daemon
(logged before they are acknowledged); ``Tensor.find`` and
``Tensor.gather`` read rows by key from shared memory with no system call;
``Client.snapshot`` folds a version's tables into a new immutable version.
This module converts arguments and results; the work is the library's.

Called from ``Tensor`` and ``Client`` (_client.py) on the caller's thread.
"""

from __future__ import annotations

import sys
from ctypes import byref, c_int64, c_size_t
from typing import TYPE_CHECKING, Any, Dict, Tuple

import numpy as np

from . import _lib as L
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from ._client import Client, Tensor

POLICIES = {"refuse": 1, "evict-lru": 2}


def _keys(keys: Any) -> np.ndarray:
    tmod = sys.modules.get("torch")
    if tmod is not None and isinstance(keys, tmod.Tensor):
        keys = keys.detach().to("cpu").numpy()
    k = np.asarray(keys)
    if k.dtype.kind not in "iu":
        raise InvalidArgumentError(f"keys must be integers, not {k.dtype}")
    return np.ascontiguousarray(k.reshape(-1), dtype=np.int64)


def _rows(tensor: "Tensor", rows: Any, n: int) -> np.ndarray:
    tmod = sys.modules.get("torch")
    if tmod is not None and isinstance(rows, tmod.Tensor):
        rows = rows.detach().to("cpu").numpy()
    r = np.ascontiguousarray(rows, dtype=tensor.dtype)
    want = (n,) + tuple(tensor.shape[1:])
    if r.shape != want and r.size != int(np.prod(want)):
        raise InvalidArgumentError(f"rows of shape {r.shape} for {n} keys: expected {want}")
    return r


def _result(res: "L.RowsResult") -> Dict[str, int]:
    return {k: int(getattr(res, k)) for k, _ in L.RowsResult._fields_}


def put(tensor: "Tensor", keys: Any, rows: Any) -> Dict[str, int]:
    """See ``Tensor.put``."""
    k = _keys(keys)
    r = _rows(tensor, rows, k.size)
    res = L.RowsResult()
    lib = tensor._lib
    kp, rp, nb = k.ctypes.data, r.ctypes.data, r.nbytes

    def call(h: int) -> int:
        return lib.ec_rows_put(h, kp, k.size, rp, nb, byref(res))

    h = tensor._handle()
    rc = call(h)
    if rc:
        tensor._fail(rc, h, call)
    return _result(res)


def delete(tensor: "Tensor", keys: Any) -> Dict[str, int]:
    """See ``Tensor.delete``."""
    k = _keys(keys)
    res = L.RowsResult()
    lib = tensor._lib
    kp = k.ctypes.data

    def call(h: int) -> int:
        return lib.ec_rows_delete(h, kp, k.size, byref(res))

    h = tensor._handle()
    rc = call(h)
    if rc:
        tensor._fail(rc, h, call)
    return _result(res)


def find(tensor: "Tensor", keys: Any) -> Tuple[np.ndarray, np.ndarray]:
    """See ``Tensor.find``."""
    k = _keys(keys)
    out = np.empty((k.size,) + tuple(tensor.shape[1:]), tensor.dtype)
    found = np.zeros(k.size, np.uint8)
    nf = c_size_t()
    lib = tensor._lib
    kp, op, fp, nb = k.ctypes.data, out.ctypes.data, found.ctypes.data, out.nbytes

    def call(h: int) -> int:
        return lib.ec_rows_find(h, kp, k.size, op, nb, fp, byref(nf))

    if k.size:
        h = tensor._handle()
        rc = call(h)
        if rc:
            tensor._fail(rc, h, call)
    shape = np.shape(keys) if not hasattr(keys, "shape") else tuple(keys.shape)
    return out.reshape(tuple(shape) + tuple(tensor.shape[1:])), found.astype(bool).reshape(shape)


def info(tensor: "Tensor") -> Dict[str, int]:
    """See ``Tensor.dynamic_info``."""
    out = L.DynInfo()
    lib = tensor._lib

    def call(h: int) -> int:
        return lib.ec_rows_info(h, byref(out))

    h = tensor._handle()
    rc = call(h)
    if rc:
        tensor._fail(rc, h, call)
    return {k: int(getattr(out, k)) for k, _ in L.DynInfo._fields_ if k != "policy"}


def make_dynamic(client: "Client", model: str, version: Any, tensor: str, capacity: int,
                 policy: str) -> None:
    """See ``Client.make_dynamic``."""
    code = POLICIES.get(policy) if isinstance(policy, str) else None
    if code is None:
        raise InvalidArgumentError(f"unknown policy {policy!r}: 'refuse' or 'evict-lru'")
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 0:
        raise InvalidArgumentError(f"capacity must be an int >= 0 (0: twice the rows), not "
                                   f"{capacity!r}")
    lib = client._lib
    m, v, t = model.encode(), str(version).encode(), tensor.encode()
    client._call(lambda p: lib.ec_model_dynamic(p, m, v, t, int(capacity), code), retry=False)


def snapshot(client: "Client", model: str, version: Any, new_version: int) -> int:
    """See ``Client.snapshot``."""
    lib = client._lib
    m, v = model.encode(), str(version).encode()
    out = c_int64()
    client._call(lambda p: lib.ec_model_snapshot(p, m, v, int(new_version), byref(out)),
                 retry=False)
    return int(out.value)


def tables(client: "Client") -> list:
    """See ``Client.dynamic_tables``."""
    lib = client._lib
    out: list = []

    def cb(p: Any, arg: Any) -> int:
        t = p.contents
        d = {k: int(getattr(t, k)) for k, _ in L.DynTableStat._fields_
             if k not in ("model", "tensor", "policy")}
        d["model"] = t.model.decode()
        d["tensor"] = t.tensor.decode()
        d["policy"] = "evict-lru" if t.policy == 2 else "refuse"
        out.append(d)
        return 0

    fn = L.DynTableCallback(cb)
    client._call(lambda p: lib.ec_client_dyn_tables(p, fn, None))
    return out
