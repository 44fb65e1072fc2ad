"""embcache: read embedding tables and model weights out of embcached's shared
memory, into numpy arrays and torch tensors, without copies through the daemon.

    import embcache
    with embcache.connect() as c:                 # $EMBCACHE_SOCKET or the default
        t = c.tensor("bert-base", "word_embeddings", version="current")
        rows = t.gather([101, 2023, 7])           # numpy array, shape (3, dim)
        with t.view() as w:                       # the whole tensor, zero-copy
            weights = w.numpy()                   # read-only array over shared memory
        scores, ids = t.search(queries, k=10, metric="cosine")  # exact top-k, in process

``client.results(name)`` opens a namespace of cached inference results
(computed once for every process: ``get_or_compute``) and context windows;
``@embcache.cached(name)`` caches a function's results in one.

``embcache.torch.CachedEmbedding`` is a drop-in for ``torch.nn.Embedding`` /
``EmbeddingBag`` whose rows come from embcache. The package is a thin ctypes
binding of libembcache (include/embcache.h); it finds the library through
``$EMBCACHE_LIBRARY``, next to the package, or the dynamic linker.
"""

from ._client import Client, Tensor, View, connect
from ._results import NO_RESULT, Result, Results, cached, encode_key
from .errors import (BusyError, ChecksumError, CorruptError, DeviceError, DTypeError,
                     EmbcacheError, EmbcacheIOError, ExistsError, FormatError, InternalError,
                     InvalidArgumentError, LibraryError, NoSpaceError, NotFoundError,
                     OutOfMemoryError, OutOfRangeError, ProtocolError, ReleasedError,
                     StaleError, TooBigError, VersionMismatchError)
# Subclasses of the builtins of the same names: exported explicitly, and kept
# out of __all__ so that `from embcache import *` does not shadow the builtins.
from .errors import ConnectionError as ConnectionError  # noqa: A001
from .errors import PermissionError as PermissionError  # noqa: A001
from .errors import TimeoutError as TimeoutError  # noqa: A001

__version__ = "0.1.0"

__all__ = [
    "connect", "Client", "Tensor", "View", "library_path", "library_version", "__version__",
    "Results", "Result", "NO_RESULT", "cached", "encode_key",
    "EmbcacheError", "InvalidArgumentError", "OutOfMemoryError", "EmbcacheIOError",
    "NotFoundError", "OutOfRangeError", "ChecksumError", "ProtocolError",
    "ExistsError", "FormatError", "DTypeError", "NoSpaceError",
    "BusyError", "StaleError", "VersionMismatchError", "TooBigError", "InternalError",
    "CorruptError", "DeviceError", "ReleasedError", "LibraryError",
]


def library_path() -> str:
    """The path of the libembcache this package loaded (loads it if needed)."""
    from . import _lib
    return _lib.lib().path


def library_version() -> str:
    """The loaded libembcache's version string (ec_version())."""
    from . import _lib
    v = _lib.lib().ec_version()  # type: ignore[attr-defined]
    return v.decode() if v else ""
