"""DLPack capsules for the managed tensors libembcache exports (ec_view_dlpack).

A consumer (torch.from_dlpack, numpy.from_dlpack, TensorFlow, JAX, CuPy)
takes a PyCapsule named "dltensor" holding a DLManagedTensor *, renames it
"used_dltensor" and calls the tensor's deleter when it is done with it. A
capsule nobody consumed still owns its tensor: its destructor calls the
deleter, but only while the name is still "dltensor".

The destructor and the capsule name are C-level objects the capsules point
at; both are deliberately kept alive for the life of the process, so a
capsule destroyed during interpreter shutdown never calls freed memory.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int, c_void_p

from ._lib import DLManagedTensor

_api = ctypes.pythonapi

_capsule_new = _api.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [c_void_p, c_void_p, c_void_p]

_capsule_is_valid = _api.PyCapsule_IsValid
_capsule_is_valid.restype = c_int
_capsule_is_valid.argtypes = [c_void_p, c_void_p]

_capsule_get_pointer = _api.PyCapsule_GetPointer
_capsule_get_pointer.restype = c_void_p
_capsule_get_pointer.argtypes = [c_void_p, c_void_p]

_NAME = ctypes.create_string_buffer(b"dltensor")
_NAME_ADDR = ctypes.addressof(_NAME)


def call_deleter(managed: int) -> None:
    """Run a DLManagedTensor's deleter (what a consumer does when done)."""
    m = DLManagedTensor.from_address(managed)
    if m.deleter:
        m.deleter(managed)


def _destroy(capsule: int, _is_valid=_capsule_is_valid, _get=_capsule_get_pointer,
             _name=_NAME_ADDR, _delete=call_deleter) -> None:
    # The capsule is dying: if nobody consumed it, its tensor is still ours.
    if capsule and _is_valid(capsule, _name):
        p = _get(capsule, _name)
        if p:
            _delete(p)


_DESTRUCTOR = ctypes.CFUNCTYPE(None, c_void_p)(_destroy)
_DESTRUCTOR_ADDR = ctypes.cast(_DESTRUCTOR, c_void_p).value

# Never freed: capsules may outlive this module during shutdown.
for _o in (_DESTRUCTOR, _NAME):
    _api.Py_IncRef(ctypes.py_object(_o))


def capsule(managed: int) -> object:
    """Wrap a DLManagedTensor * in a "dltensor" PyCapsule that owns it."""
    try:
        return _capsule_new(managed, _NAME_ADDR, _DESTRUCTOR_ADDR)
    except BaseException:
        call_deleter(managed)
        raise
