"""Exceptions of the embcache package, one class per family of libembcache codes.

Every exception is an ``EmbcacheError`` carrying ``.code``, the library's
negative ``EC_E*`` code, and the library's message for the failure (which says
what failed, with what input, and what to do next). Most classes also derive
from the built-in exception a Python programmer would catch for that kind of
failure: ``OutOfRangeError`` is an ``IndexError``, ``ConnectionError`` is the
built-in ``ConnectionError``, ``DTypeError`` is a ``TypeError``, and so on.
"""

from __future__ import annotations

import builtins
from typing import Dict, Type

from . import _lib as L

__all__ = [
    "EmbcacheError", "InvalidArgumentError", "OutOfMemoryError", "EmbcacheIOError",
    "NotFoundError", "OutOfRangeError", "ChecksumError", "ProtocolError", "ConnectionError",
    "ExistsError", "FormatError", "DTypeError", "NoSpaceError", "PermissionError",
    "BusyError", "StaleError", "VersionMismatchError", "TooBigError", "InternalError",
    "CorruptError", "DeviceError", "TimeoutError", "ReleasedError", "LibraryError", "error_for",
]


class EmbcacheError(Exception):
    """Base class of every error the package raises.

    Attributes:
        code: the libembcache error code (a negative ``EC_E*`` value).
        message: the message, as ``str(err)``.
    """

    code: int = L.EC_EINTERNAL

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        if code:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def code_name(self) -> str:
        """The code's name, e.g. ``"EC_ENOENT"``."""
        return _NAMES.get(self.code, f"EC_E({self.code})")


class InvalidArgumentError(EmbcacheError, ValueError):
    """EC_EINVAL: an argument is invalid (shape, contiguity, device, ...)."""
    code = L.EC_EINVAL


class OutOfMemoryError(EmbcacheError, MemoryError):
    """EC_ENOMEM: out of memory in this process."""
    code = L.EC_ENOMEM


class EmbcacheIOError(EmbcacheError, OSError):
    """EC_EIO: an I/O call failed."""
    code = L.EC_EIO


class NotFoundError(EmbcacheError, LookupError):
    """EC_ENOENT: no such model, version, alias or tensor."""
    code = L.EC_ENOENT


class OutOfRangeError(EmbcacheError, IndexError):
    """EC_ERANGE: a row id is outside the tensor."""
    code = L.EC_ERANGE


class ChecksumError(EmbcacheError):
    """EC_ECHECKSUM: stored data failed its checksum; it is never served."""
    code = L.EC_ECHECKSUM


class ProtocolError(EmbcacheError):
    """EC_EPROTO: a malformed or unexpected message from the daemon."""
    code = L.EC_EPROTO


class ConnectionError(EmbcacheError, builtins.ConnectionError):
    """EC_ECONN: the daemon is unreachable or went away.

    The message names the socket and how to start a daemon on it.
    """
    code = L.EC_ECONN


class ExistsError(EmbcacheError):
    """EC_EEXIST: already exists (a duplicate model version)."""
    code = L.EC_EEXIST


class FormatError(EmbcacheError, ValueError):
    """EC_EFORMAT: an input file that cannot be imported as it is: malformed,
    truncated, unreadable, not a regular file, or over a limit."""
    code = L.EC_EFORMAT


class DTypeError(EmbcacheError, TypeError):
    """EC_EDTYPE: a dtype that cannot be used here (float ids, a wrong ``out``
    dtype, a conversion the library does not do)."""
    code = L.EC_EDTYPE


class NoSpaceError(EmbcacheError):
    """EC_ENOSPC: no room: the segment is full and nothing is evictable."""
    code = L.EC_ENOSPC


class PermissionError(EmbcacheError, builtins.PermissionError):
    """EC_EPERM: not allowed (peer credentials, file owner, an aliased version)."""
    code = L.EC_EPERM


class BusyError(EmbcacheError):
    """EC_EBUSY: in use (a version with open views, a data dir in use)."""
    code = L.EC_EBUSY


class StaleError(EmbcacheError):
    """EC_ESTALE: the daemon restarted since this handle was made.

    Tensors reconnect once on their own; views of the old daemon raise this
    on use: take a new view.
    """
    code = L.EC_ESTALE


class VersionMismatchError(EmbcacheError):
    """EC_EVERSION: the daemon and this libembcache disagree on a version."""
    code = L.EC_EVERSION


class TooBigError(EmbcacheError):
    """EC_ETOOBIG: a request or message exceeds a limit."""
    code = L.EC_ETOOBIG


class InternalError(EmbcacheError):
    """EC_EINTERNAL: an invariant failed: a bug, please report it."""
    code = L.EC_EINTERNAL


class CorruptError(EmbcacheError):
    """EC_ECORRUPT: the shared segment or a file failed validation."""
    code = L.EC_ECORRUPT


class DeviceError(EmbcacheError):
    """EC_EDEVICE: a GPU call failed (wrong device, device lost, out of memory)."""
    code = L.EC_EDEVICE


class TimeoutError(EmbcacheError, builtins.TimeoutError):
    """EC_ETIMEOUT: waited as long as allowed for another caller's computation."""
    code = L.EC_ETIMEOUT


class ReleasedError(EmbcacheError, ValueError):
    """A view, tensor or client was used after it was released or closed."""
    code = L.EC_EINVAL


class LibraryError(EmbcacheError, ImportError):
    """libembcache cannot be loaded, or lacks a function this package needs."""
    code = L.EC_EINVAL


_CLASSES: Dict[int, Type[EmbcacheError]] = {
    cls.code: cls for cls in (
        InvalidArgumentError, OutOfMemoryError, EmbcacheIOError, NotFoundError,
        OutOfRangeError, ChecksumError, ProtocolError, ConnectionError, ExistsError,
        FormatError, DTypeError, NoSpaceError, PermissionError, BusyError, StaleError,
        VersionMismatchError, TooBigError, InternalError, CorruptError, DeviceError,
        TimeoutError)
}

_NAMES: Dict[int, str] = {
    getattr(L, n): n for n in dir(L) if n.startswith("EC_E") and n != "EC_E_LAST"
}


def error_for(code: int, message: str) -> EmbcacheError:
    """The exception for a libembcache code and message."""
    cls = _CLASSES.get(code, EmbcacheError)
    return cls(message, code)
