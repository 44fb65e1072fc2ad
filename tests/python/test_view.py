"""Tensor.view: zero-copy, read-only numpy arrays and torch tensors (DLPack)
over the shared segment, and the lifetime of their pins."""

import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import embcache
from conftest import MODEL
from test_gather import NP_DTYPE, same


def pins_held(client):
    s = client.stats()
    return s["pins_taken"] - s["pins_released"]


@pytest.mark.parametrize("name", sorted(NP_DTYPE))
def test_view_numpy_every_dtype(client, tables, name):
    src = tables.src[name]
    t = client.tensor(MODEL, name)
    with t.view() as w:
        a = w.numpy()
        assert same(a, src)
        assert same(np.asarray(w), src)
        assert same(w[len(src) - 1], src[-1])
        assert len(w) == len(src) and w.shape == src.shape and w.nbytes == src.nbytes
        assert w.numpy() is a                       # one array per view


def test_view_is_read_only(client):
    with client.tensor(MODEL, "emb_f32").view() as w:
        a = w.numpy()
        assert not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            a[0, 0] = 1.0
        with pytest.raises(ValueError):
            a.flags.writeable = True
        with pytest.raises(ValueError):
            np.copyto(a, 0)
        b = a[10:20]                                  # numpy views of it too
        with pytest.raises(ValueError):
            b[0] = 0


def test_view_is_zero_copy(client, tables):
    t = client.tensor(MODEL, "emb_f32")
    with t.view() as w1, t.view() as w2:
        # Both views map the same pinned region of the segment.
        assert w1.numpy().ctypes.data == w2.numpy().ctypes.data


def test_view_torch_from_dlpack(client, tables, torch_mod):
    torch = torch_mod
    for name in ("emb_f32", "emb_f16", "emb_i64", "emb_u8", "cube", "vec"):
        src = tables.src[name]
        with client.tensor(MODEL, name).view() as w:
            x = torch.from_dlpack(w)
            assert torch.equal(x, torch.from_numpy(src))
            assert w.torch().data_ptr() == x.data_ptr() == w.numpy().ctypes.data
    with client.tensor(MODEL, "emb_bf16").view() as w:
        x = w.torch()
        assert x.dtype == torch.bfloat16 and tuple(x.shape) == (400, 16)
        assert same(x.view(torch.int16).numpy().view(np.uint16), tables.src["emb_bf16"])
        assert w.__dlpack_device__() == (1, 0)


def test_use_after_release_raises(client, torch_mod):
    torch = torch_mod
    t = client.tensor(MODEL, "emb_f32")
    with t.view() as w:
        pass
    assert w.released
    for use in (w.numpy, w.torch, w.__dlpack__, lambda: np.asarray(w), lambda: w[0],
                lambda: torch.from_dlpack(w)):
        with pytest.raises(embcache.ReleasedError, match="released"):
            use()
    w.release()                                       # idempotent
    with pytest.raises(ValueError):                   # ReleasedError is a ValueError
        w.numpy()


def test_arrays_keep_their_pin(client, tables, torch_mod):
    torch = torch_mod
    t = client.tensor(MODEL, "emb_f64")
    gc.collect()
    base = pins_held(client)
    w = t.view()
    a = w.numpy()
    x = w.torch()
    assert pins_held(client) == base + 1
    w.release()
    # Still pinned, still the right rows, for as long as the array and tensor live.
    assert pins_held(client) == base + 1
    assert same(a, tables.src["emb_f64"])
    assert torch.equal(x, torch.from_numpy(tables.src["emb_f64"]))
    del a
    gc.collect()
    assert pins_held(client) == base + 1            # the torch tensor's reference
    del x
    gc.collect()
    assert pins_held(client) == base


def test_garbage_collected_view_unpins(client):
    t = client.tensor(MODEL, "emb_i8")
    gc.collect()
    base = pins_held(client)
    w = t.view()
    w.numpy()
    assert pins_held(client) == base + 1
    del w
    gc.collect()
    assert pins_held(client) == base


def test_unconsumed_capsule_unpins(client):
    t = client.tensor(MODEL, "emb_u8")
    gc.collect()
    base = pins_held(client)
    with t.view() as w:
        caps = [w.__dlpack__() for _ in range(3)]
        assert type(caps[0]).__name__ == "PyCapsule"
    assert pins_held(client) == base + 1
    del caps
    gc.collect()
    assert pins_held(client) == base


def test_numpy_from_dlpack_of_view(client, tables):
    with client.tensor(MODEL, "emb_i32").view() as w:
        assert same(np.from_dlpack(w), tables.src["emb_i32"])


def test_dlpack_refuses_a_stream(client):
    with client.tensor(MODEL, "emb_f32").view() as w:
        with pytest.raises(BufferError):
            w.__dlpack__(stream=1)


def test_view_outlives_closed_client(tables):
    c = embcache.connect(tables.daemon.socket)
    t = c.tensor(MODEL, "emb_f32")
    w = t.view()
    c.close()
    t.release()
    assert same(w.numpy(), tables.src["emb_f32"])
    with pytest.raises(embcache.ReleasedError):
        t.gather([1])
    with pytest.raises(embcache.ReleasedError, match="closed"):
        c.tensor(MODEL, "emb_f32")
    w.release()


def test_writing_through_torch_faults_not_corrupts(tables, torch_mod):
    # torch has no read-only tensors: a write must die on the read-only
    # mapping (SIGSEGV) rather than change shared data.
    code = textwrap.dedent(f"""
        import embcache, torch
        c = embcache.connect({tables.daemon.socket!r})
        x = c.tensor({MODEL!r}, "emb_f32").view().torch()
        print("mapped", flush=True)
        x[0, 0] = 12345.0
        print("wrote", flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "mapped" in r.stdout and "wrote" not in r.stdout, r.stderr
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        # Under AddressSanitizer the fault is reported, then aborts.
        assert r.returncode == -6 and "SEGV" in r.stderr, (r.returncode, r.stderr)
    else:
        assert r.returncode == -11, (r.returncode, r.stderr)
    with embcache.connect(tables.daemon.socket) as c:
        assert same(c.tensor(MODEL, "emb_f32").gather([0]), tables.src["emb_f32"][[0]])
