"""A daemon that restarts or stops under a live process: the next call
reconnects once (or raises a clear error), views of a worker that was
replaced (whose memory the next one may reuse) raise on use, and no call
ever returns a wrong row or crashes."""

import numpy as np
import pytest

import embcache
from test_gather import same


@pytest.fixture
def table(tmp_path):
    # 2000 x 16 f32 in 4 KiB partitions: 32 partitions of 64 rows.
    a = np.random.default_rng(11).standard_normal((2000, 16)).astype(np.float32)
    np.save(tmp_path / "r.npy", a)
    return tmp_path / "r.npy", a


def test_restart_reconnects_transparently(make_daemon, table):
    path, src = table
    d = make_daemon()
    d.start()
    d.import_files("r", 1, [path])
    d.cli("alias", "r", "current", "1")
    c = embcache.connect(d.socket)
    t = c.tensor("r", "r")                                  # via the alias
    assert same(t.gather(np.arange(1000)), src[:1000])
    w = t.view()
    old_array = w.numpy()
    assert same(old_array, src)
    gen = c.generation
    d.restart_worker()            # warm: the next worker takes the segment over
    ids = np.random.default_rng(1).permutation(2000)
    assert same(t.gather(ids), src[ids])                   # reconnected and re-resolved
    assert c.generation > gen
    assert t.version == 1 and t.requested_version == "current"
    for use in (w.numpy, w.torch, w.__dlpack__, lambda: w[0]):
        with pytest.raises(embcache.StaleError, match="restarted"):
            use()
    w.release()
    with t.view() as w2:                                   # a new view works
        assert same(w2.numpy(), src)
    assert "client_rows" in c.stats()
    c.close()


def test_view_of_old_daemon_raises_before_anything_else_noticed(make_daemon, table):
    path, src = table
    d = make_daemon()
    d.start()
    d.import_files("r", 1, [path])
    c = embcache.connect(d.socket)
    w = c.tensor("r", "r", 1).view()
    d.crash()                     # kill -9 of the worker; the next one serves warm
    # No other call has noticed the restart: the view itself must.
    with pytest.raises(embcache.StaleError):
        w.numpy()


def test_restart_without_reconnect_raises_stale(make_daemon, table):
    path, src = table
    d = make_daemon()
    d.start()
    d.import_files("r", 1, [path])
    c = embcache.connect(d.socket, reconnect=False)
    t = c.tensor("r", "r", 1)
    assert same(t.gather([5]), src[[5]])
    d.restart_worker()
    with pytest.raises(embcache.StaleError, match="restarted") as e:
        t.gather([5])
    assert e.value.code == -15
    with pytest.raises(embcache.StaleError):
        c.stats()
    # A new client works.
    with embcache.connect(d.socket) as c2:
        assert same(c2.tensor("r", "r", 1).gather([5, 6]), src[[5, 6]])


def test_daemon_stopped_names_the_socket(make_daemon, table):
    path, src = table
    d = make_daemon()
    d.start()
    d.import_files("r", 1, [path])
    c = embcache.connect(d.socket)
    t = c.tensor("r", "r", 1)
    assert same(t.gather(np.arange(64)), src[:64])         # partition 0 resident
    d.stop()
    # A stopped daemon leaves its handles stale (its segment is nobody's
    # now, a crashed one's is kept and served): the next call, hit or miss,
    # tries to reconnect and says what is wrong, naming the socket and the fix.
    with pytest.raises(embcache.ConnectionError) as e:
        t.gather(np.arange(64))
    assert d.socket in str(e.value) and "embcached --socket" in str(e.value)
    with pytest.raises(embcache.ConnectionError) as e:
        t.gather([1999])
    assert d.socket in str(e.value) and "embcached --socket" in str(e.value)
    with pytest.raises(embcache.ConnectionError, match="embcached --socket"):
        c.stats()
    # Once a daemon is back, the same handles work again.
    d.start()
    assert same(t.gather([1999, 0]), src[[1999, 0]])
    assert c.stats()["clients"] >= 1
