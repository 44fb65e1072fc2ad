"""fork() under live handles: the child reconnects on its own and never
touches the parent's connection or pins (PyTorch DataLoader workers, pre-fork
servers)."""

import gc
import os

import numpy as np
import pytest

import embcache
from conftest import MODEL
from test_gather import same
from test_view import pins_held


def in_child(fn) -> int:
    """Run fn() in a forked child; its exit status (0: fn returned True)."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            code = 0 if fn() else 1
        except BaseException as e:  # noqa: B902 -- report anything, never return
            os.write(2, f"child: {type(e).__name__}: {e}\n".encode())
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_child_reconnects_and_leaves_the_parent_alone(tables):
    src = tables.src["emb_f32"]
    c = embcache.connect(tables.daemon.socket)
    t = c.tensor(MODEL, "emb_f32")
    w = t.view()
    arr = w.numpy()
    gc.collect()
    pins = pins_held(c)
    assert c.evict(MODEL, "1") >= 0          # the child's gathers will miss

    def child():
        nonlocal w, arr
        ids = np.random.default_rng(9).permutation(1000)
        ok = same(t.gather(ids), src[ids])                  # a new connection
        ok &= same(arr, src)                                # inherited array: still mapped
        try:
            w.numpy()
            ok = False
        except embcache.StaleError as e:
            ok &= "forked" in str(e)
        ok &= c.stats()["clients"] >= 2
        with t.view() as w2:                                # its own view
            ok &= same(w2.numpy(), src)
        w.release()                      # dropping the inherited pin must not unpin
        del w, arr                       # the parent's
        gc.collect()
        return ok

    assert in_child(child) == 0
    # The parent's connection and pins are untouched.
    assert pins_held(c) == pins
    ids = np.random.default_rng(10).permutation(1000)
    assert same(t.gather(ids), src[ids]) and same(w.numpy(), src)
    w.release()
    del arr
    gc.collect()
    assert pins_held(c) == pins - 1
    c.close()


def test_dataloader_workers(tables):
    torch = pytest.importorskip("torch")
    from embcache.torch import CachedEmbedding

    src = torch.from_numpy(tables.src["emb_f32"])
    emb = CachedEmbedding(MODEL, "emb_f32", socket=tables.daemon.socket, mode="sum")
    emb(torch.tensor([[1, 2]]))                            # used in the parent first
    ids = torch.randint(0, 1000, (64, 5), generator=torch.Generator().manual_seed(1))
    loader = torch.utils.data.DataLoader(ids, batch_size=8, num_workers=2,
                                         multiprocessing_context="fork",
                                         collate_fn=lambda b: emb(torch.stack(b)))
    got = torch.cat(list(loader))
    assert torch.allclose(got, src[ids].sum(1), rtol=0, atol=1e-5)
    assert torch.equal(emb(ids), got)
