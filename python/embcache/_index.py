"""IVF-Flat indexes of tensors: Client.build_index / Tensor.build_index
(ec_index_build) and Tensor.index_info (ec_index_info_get, and for a
dynamic table ec_index_staleness_get), over include/embcache_search.h.

The build runs in this process (libembcache reads the rows, trains k-means,
writes the file) and the daemon checks and keeps the file; searches use it
through ``Tensor.search(..., nprobe=N)``. This module only converts
arguments and results. Called on the caller's thread; a progress callback
runs on that thread too.
"""

from __future__ import annotations

from ctypes import byref, c_void_p
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Union

from . import _lib as L
from ._client import _Handle, _b, _check
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from ._client import Client, Tensor

_STATS = ("rows", "dim", "nlist", "iters", "train_rows", "reseeded", "min_list",
          "max_list", "file_bytes", "train_s", "assign_s", "total_s")
_INFO = ("nlist", "rows", "dim", "min_list", "max_list", "file_bytes", "train_rows",
         "iters", "built_lsn")
_METRIC_NAMES = {v: k for k, v in L.METRICS.items()}


def _count(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InvalidArgumentError(f"{name} must be an int in [{lo}, {hi}], not {v!r}")
    return v


def build_index(client: "Client", model: str, version: Union[str, int], tensor: str,
                nlist: Optional[int], metric: str, *, iters: int = 0, train_rows: int = 0,
                seed: int = 0, progress: Optional[Callable[[str, int, int], Any]] = None,
                tensor_obj: Optional["Tensor"] = None) -> Dict[str, Any]:
    """See ``Client.build_index`` (tensor_obj: the Tensor whose handle to
    refresh afterwards)."""
    code = L.METRICS.get(metric) if isinstance(metric, str) else None
    if code is None:
        raise InvalidArgumentError(f"unknown metric {metric!r}: 'ip', 'cosine' or 'l2'")
    opts = L.IndexOpts(flags=0, metric=code,
                       nlist=0 if nlist is None else _count("nlist", nlist, 1, 2**32 - 1),
                       iters=_count("iters", iters, 0, 1000),
                       train_rows=_count("train_rows", train_rows, 0, 2**63 - 1),
                       seed=_count("seed", seed, 0, 2**64 - 1))
    failure: Dict[str, BaseException] = {}
    if progress is not None:
        def on_progress(phase: int, done: int, total: int, arg: Any) -> int:
            try:
                return 1 if progress(L.INDEX_PHASES.get(phase, "?"), int(done), int(total)) \
                    else 0
            except BaseException as e:  # noqa: BLE001 - re-raised after the call
                failure["e"] = e
                return 1
        cb = L.IndexProgressFn(on_progress)
        opts.progress = cb
    lib = client._lib
    m, v, t = _b(model, "model"), _b(str(version), "version"), _b(tensor, "tensor")
    st = L.IndexBuildStats()
    try:
        client._call(lambda p: lib.ec_index_build(p, m, v, t, byref(opts), byref(st)))
    except BaseException:
        if "e" in failure:
            raise failure["e"]
        raise
    if tensor_obj is not None:
        _refresh(tensor_obj)
    out: Dict[str, Any] = {f: (float(getattr(st, f)) if f.endswith("_s")
                               else int(getattr(st, f))) for f in _STATS}
    out["metric"] = metric
    return out


def _refresh(t: "Tensor") -> None:
    """Give t a new handle, so that its searches map the index just built
    (a handle keeps the index it mapped first). The old handle is released
    with the Tensor, as on a reconnect: another thread may be using it."""
    c = t._client
    cp, inc = c._current()
    lib = t._lib
    out = c_void_p()
    _check(lib, lib.ec_tensor_resolve(cp.ptr, t.model.encode(), str(t.version).encode(),
                                      t.name.encode(), byref(out)))
    new = _Handle(out.value, lib.ec_tensor_release, (cp,))
    with t._lock:
        if t._hobj is not None:
            t._retired.append(t._hobj)
        t._hobj, t._h, t._inc = new, new.ptr, inc


def index_info(t: "Tensor") -> Dict[str, Any]:
    """See ``Tensor.index_info``."""
    lib = t._lib
    info = L.IndexInfo()

    def call(h: int) -> int:
        return lib.ec_index_info_get(h, byref(info))

    h = t._handle()
    rc = call(h)
    if rc:
        t._fail(rc, h, call)
    out: Dict[str, Any] = {f: int(getattr(info, f)) for f in _INFO}
    out["metric"] = _METRIC_NAMES.get(int(info.metric), str(int(info.metric)))
    if int(lib.ec_tensor_cache_mode(h)) == L.EC_CACHE_DYNAMIC:
        sn = L.IndexStaleness()

        def stale(h2: int) -> int:
            return lib.ec_index_staleness_get(h2, byref(sn))

        h = t._handle()
        rc = stale(h)
        if rc:
            t._fail(rc, h, stale)
        for f, _ in L.IndexStaleness._fields_:
            out[f] = int(getattr(sn, f))
        out["stale_share"] = (out["stale_rows"] / out["live_keys"]) if out["live_keys"] else 0.0
    return out
