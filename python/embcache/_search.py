"""Tensor.search: top-k rows of a cached 2-D tensor for a batch of queries,
exact or through the tensor's IVF index (nprobe > 0), through ec_search()
(include/embcache_search.h).

The search runs in this process over its read-only mapping of the segment
(no copy of the table, no round trip to the daemon for resident rows): a
vectorized scan for a few queries, OpenBLAS matrix products and per-query
heaps for batches of EC_SEARCH_GEMM_MIN (16) or more. This module only
converts the queries and the results; the scan, its consistency with the
daemon's evictions and the order of ties are the library's.

Called by ``Tensor.search`` (_client.py) on the caller's thread.
"""

from __future__ import annotations

import sys
from ctypes import byref
from typing import TYPE_CHECKING, Any, Tuple

import numpy as np

from . import _lib as L
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from ._client import Tensor


def search(tensor: "Tensor", queries: Any, k: int, metric: str = "ip",
           threads: int = 0, nprobe: int = 0) -> Tuple[Any, Any]:
    """See ``Tensor.search``."""
    tmod = sys.modules.get("torch")
    as_torch = tmod is not None and isinstance(queries, tmod.Tensor)
    if as_torch:
        device = queries.device
        q = queries.detach().to(device="cpu", dtype=tmod.float32).contiguous().numpy()
    else:
        q = np.ascontiguousarray(queries, dtype=np.float32)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidArgumentError(f"k must be an int, not {type(k).__name__}")
    k = int(k)
    if k < 1:
        raise InvalidArgumentError(f"k must be at least 1, not {k}")
    code = L.METRICS.get(metric) if isinstance(metric, str) else None
    if code is None:
        raise InvalidArgumentError(f"unknown metric {metric!r}: 'ip' (inner product), "
                                   f"'cosine' or 'l2' (squared Euclidean distance)")
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or \
            not 0 <= threads < 2**32:
        raise InvalidArgumentError(f"threads must be an int >= 0 (0: every CPU), not "
                                   f"{threads!r}")
    if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or \
            not 0 <= nprobe < 2**32:
        raise InvalidArgumentError(f"nprobe must be an int >= 0 (0: exact search), not "
                                   f"{nprobe!r}")
    single = q.ndim == 1
    if single:
        q = q.reshape(1, -1)
    if q.ndim != 2:
        raise InvalidArgumentError(f"queries must have shape (dim,) or (n, dim), not "
                                   f"{q.shape}")
    nq, dim = q.shape
    scores = np.empty((nq, k), np.float32)
    ids = np.empty((nq, k), np.int64)
    if nq:
        lib = tensor._lib
        fn = lib.need("ec_search")
        opts = L.SearchOpts(flags=0, threads=int(threads), nprobe=int(nprobe))
        qp, sp, ip = q.ctypes.data, scores.ctypes.data, ids.ctypes.data

        def call(hh: int) -> int:
            return fn(hh, qp, nq, dim, k, code, byref(opts), sp, ip)

        h = tensor._handle()
        rc = call(h)
        if rc:
            tensor._fail(rc, h, call)
    if single:
        scores, ids = scores[0], ids[0]
    if as_torch:
        return (tmod.from_numpy(scores).to(device), tmod.from_numpy(ids).to(device))
    return scores, ids
