"""Results namespaces from Python (include/embcache_results.h through
python/embcache/_results.py): value round trips with dtype and shape, keys,
misses against cached "no result"s, TTLs, get_or_compute computing once for
8 processes x 16 threads, exceptions that give the lease up, the cached()
decorator, purge, counters, bindings, leases, and context-window blocks.

One daemon serves the module; every test takes a namespace of its own."""

import hashlib
import multiprocessing
import os
import re
import threading
import time

import numpy as np
import pytest

import embcache
from conftest import Daemon, short_tmpdir
from test_fork import in_child
from test_gather import same


@pytest.fixture(scope="module")
def daemon():
    import shutil
    d = Daemon(short_tmpdir("ecpyr-"), shm_size="128M").start()
    yield d
    d.stop()
    shutil.rmtree(d.root, ignore_errors=True)


@pytest.fixture
def client(daemon):
    with embcache.connect(daemon.socket) as c:
        yield c


@pytest.fixture
def ns_name(request):
    return "t." + re.sub(r"[^A-Za-z0-9_.:-]", "-", request.node.name)[:56]


@pytest.fixture
def results(client, ns_name):
    with client.results(ns_name) as r:
        yield r


class Counter:
    """Calls of a computation, shared across threads (and, through a file of
    its own, across processes)."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, value):
        def fn(key):
            with self.lock:
                self.n += 1
            return value
        return fn


# ---------------------------------------------------------------------------
# Bindings

def test_bindings_match_the_results_header():
    from conftest import REPO
    from embcache import _lib
    header = (REPO / "include" / "embcache_results.h").read_text()
    declared = set(re.findall(r"EC_API\s+[^;(]*?\b(ec_\w+)\s*\(", header))
    assert len(declared) == 14
    assert declared <= set(_lib.SIGNATURES), declared - set(_lib.SIGNATURES)
    lib = _lib.lib()
    assert [n for n in declared if getattr(lib, n) is None] == []
    for name in re.findall(r"#define (EC_(?:NS|RES|LEASE)_\w+)\s", header):
        value = re.search(rf"#define {name}\s+(\w+)", header).group(1)
        assert getattr(_lib, name) == int(value.rstrip("u"), 0), name


def test_remote_needs_a_daemon_with_remote(client, ns_name):
    """remote=True (EC_NS_REMOTE) on a daemon started without --remote: a
    clear error, and nothing created."""
    with pytest.raises(embcache.InvalidArgumentError, match="--remote"):
        client.results(ns_name, remote=True)
    assert ns_name not in {x["name"] for x in client.results_list()}
    assert all(x["remote"] is False for x in client.results_list())


# ---------------------------------------------------------------------------
# Values and keys

def test_bytes_round_trip(results):
    values = {"empty": b"", "zeros": b"\0" * 17, "text": "héllo".encode(),
              "big": os.urandom(200_000)}      # past the first 64 KiB buffer: regrown
    for k, v in values.items():
        results.put(k, v)
    for k, v in values.items():
        got = results.get(k)
        assert type(got) is bytes and got == v
    results.put("ba", bytearray(b"xyz"))
    results.put("mv", memoryview(b"0123456789")[2:5])
    assert results.get("ba") == b"xyz" and results.get("mv") == b"234"


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int8, np.uint8,
                                   np.int32, np.int64, np.uint16])
def test_numpy_round_trip(results, dtype):
    rng = np.random.default_rng(1)
    for i, shape in enumerate([(), (1,), (7,), (2, 3, 4), (1, 1, 1, 1, 1, 1, 2, 3), (0, 3)]):
        a = (rng.standard_normal(shape) * 100).astype(dtype)
        results.put(("a", i), a)
        got = results.get(("a", i))
        assert isinstance(got, np.ndarray) and got.flags.writeable
        assert same(got, a), (shape, got)
    t = np.arange(24, dtype=dtype).reshape(4, 6).T              # not contiguous
    results.put("t", t)
    assert same(results.get("t"), np.ascontiguousarray(t))


def test_scalars_and_refused_values(results):
    results.put("i", 7)
    results.put("f", 2.5)
    assert same(results.get("i"), np.array(7, np.int64))
    assert same(results.get("f"), np.array(2.5))
    with pytest.raises(embcache.DTypeError):
        results.put("b", np.array([True]))
    with pytest.raises(embcache.DTypeError):
        results.put("c", np.zeros(2, np.complex64))
    with pytest.raises(embcache.InvalidArgumentError, match="dimensions"):
        results.put("d", np.zeros((1,) * 9, np.float32))
    for bad in ("a string", None, [1, 2], True):
        with pytest.raises(embcache.InvalidArgumentError, match="value must be"):
            results.put("e", bad)
    assert results.get("b") is None and results.get("e", "miss") == "miss"


def test_torch_round_trip(results, torch_mod):
    torch = torch_mod
    values = {"f32": torch.randn(3, 4), "f16": torch.randn(5).half(),
              "bf16": torch.randn(2, 2, 3).to(torch.bfloat16),
              "i64": torch.arange(10).reshape(2, 5),
              "strided": torch.randn(6, 4).t(), "grad": torch.randn(3, requires_grad=True)}
    for k, v in values.items():
        results.put(k, v)
    for k, v in values.items():
        got = results.get(k)                                   # numpy by default
        assert isinstance(got, np.ndarray) and got.shape == tuple(v.shape)
        if v.dtype == torch.bfloat16:
            assert got.dtype == np.uint16
            assert same(got, v.view(torch.int16).numpy().view(np.uint16))
        else:
            assert same(got, v.detach().contiguous().numpy())
        gt = results.get(k, as_torch=True)
        assert isinstance(gt, torch.Tensor) and gt.dtype == v.dtype
        assert gt.shape == v.shape and torch.equal(gt, v.detach())
    with pytest.raises(embcache.DTypeError):
        results.put("bool", torch.tensor([True]))


def test_key_encoding(results, torch_mod):
    torch = torch_mod
    enc = embcache.encode_key
    # plain keys are the bytes a C client would use
    assert enc("user:1") == b"user:1" == enc(b"user:1")
    assert enc(42) == b"42" == enc("42")
    assert enc("é") == "é".encode()
    # tuples: tagged and length-prefixed, so the types of elements count
    assert enc((1, "a")) == b"\0Ti\1\0\0\0" + b"1" + b"s\1\0\0\0a"
    assert len({enc((1,)), enc(("1",)), enc((b"1",)), enc(((1,),)), enc((1, 1))}) == 5
    assert enc(("a", "bc")) != enc(("ab", "c"))
    # arrays: dtype, shape and bytes; a torch tensor keys as the numpy array
    a = np.arange(4, dtype=np.float32)
    assert enc(a) == b"\0A\3<f4\1" + (4).to_bytes(8, "little") + a.tobytes()
    assert enc(torch.arange(4, dtype=torch.float32)) == enc(a)
    keys = [a, a.astype(np.int32), a.reshape(2, 2), a + 1, a.astype(np.float64)]
    assert len({enc(k) for k in keys}) == len(keys)
    for i, k in enumerate(keys):
        results.put(k, bytes([i]))
    assert [results.get(k) for k in keys] == [bytes([i]) for i in range(len(keys))]
    results.put(("doc", 7, b"\0"), b"tuple")
    assert results.get(("doc", 7, b"\0")) == b"tuple" and results.get(("doc", 7)) is None
    results.put("plain", b"p")
    assert results.get(b"plain") == b"p"
    with pytest.raises(embcache.InvalidArgumentError, match="at most 4096"):
        results.put(b"k" * 4097, b"v")
    results.put(b"k" * 4096, b"longest")
    assert results.get(b"k" * 4096) == b"longest"
    for bad in (1.5, None, [1], True, np.array([object()])):
        with pytest.raises(embcache.InvalidArgumentError):
            results.get(bad)


# ---------------------------------------------------------------------------
# Misses, "no result", TTLs

def test_miss_versus_negative_hit(results):
    miss = object()
    assert results.get("k", miss) is miss
    r = results.lookup("k")
    assert not r.found and not r and r.value is None
    results.put_negative("k")
    assert results.get("k", miss) is None
    r = results.lookup("k")
    assert r.found and r.negative and not r.stale and r.value is None
    assert 0 < r.ttl_left <= 30 * 1.1                       # the negative TTL, jittered
    results.put("k", b"now a value")                       # replaces the negative
    r = results.lookup("k")
    assert r.found and not r.negative and r.value == b"now a value"
    results.put("n2", embcache.NO_RESULT)
    assert results.lookup("n2").negative
    assert "k" in results and "absent" not in results


def test_ttl_expiry(client, ns_name):
    r = client.results(ns_name, ttl=0.2, stale_ttl=0, jitter=-1)
    s = r.stats()
    assert s["ttl"] == pytest.approx(0.2) and s["stale_ttl"] < 0 and s["jitter"] <= 0
    r.put("k", b"v")
    r.put("long", b"w", ttl=30)
    got = r.lookup("k")
    assert got.value == b"v" and 0 < got.ttl_left <= 0.2
    time.sleep(0.35)
    assert r.get("k") is None
    assert not r.lookup("k", allow_stale=True).found          # no stale time
    assert r.get("long") == b"w"                               # its own TTL

    stale = client.results(ns_name + "-s", ttl=0.2, stale_ttl=30, jitter=-1)
    stale.put("k", b"old")
    time.sleep(0.35)
    assert stale.get("k") is None
    got = stale.lookup("k", allow_stale=True)
    assert got.found and got.stale and got.value == b"old" and got.ttl_left < 0
    assert stale.get("k", allow_stale=True) == b"old"
    assert stale.stats()["stale_served"] >= 2


# ---------------------------------------------------------------------------
# get_or_compute

def _race_child(sock, name, key, calls_path, barrier, q):
    """One process of test_computed_once_across_processes: 16 threads ask at once."""
    c = embcache.connect(sock)
    r = c.results(name)
    go = threading.Barrier(16)
    digests, errors = [], []

    def compute(k):
        fd = os.open(calls_path, os.O_WRONLY | os.O_APPEND)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        time.sleep(0.5)                              # everyone else arrives meanwhile
        return np.random.default_rng().standard_normal((32, 64)).astype(np.float32)

    def work():
        try:
            go.wait()
            v = r.get_or_compute(key, compute)
            digests.append(hashlib.sha256(v.dtype.str.encode() + bytes(str(v.shape), "ascii")
                                          + v.tobytes()).hexdigest())
        except BaseException as e:  # noqa: B902
            errors.append(repr(e))

    barrier.wait()
    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q.put((os.getpid(), digests, errors))


def test_computed_once_across_processes(results, daemon, tmp_path):
    calls = tmp_path / "calls"
    calls.write_text("")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(8)
    q = ctx.Queue()
    procs = [ctx.Process(target=_race_child, args=(daemon.socket, results.name, ("hot", 1),
                                                   str(calls), barrier, q))
             for _ in range(8)]
    for p in procs:
        p.start()
    got = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert [e for _, _, e in got if e] == []
    digests = [d for _, ds, _ in got for d in ds]
    assert len(digests) == 128
    assert len(calls.read_text().split()) == 1               # computed exactly once
    assert len(set(digests)) == 1                            # everyone has its bytes
    v = results.get(("hot", 1))
    assert hashlib.sha256(v.dtype.str.encode() + bytes(str(v.shape), "ascii")
                          + v.tobytes()).hexdigest() == digests[0]
    s = results.stats()
    assert s["leases_granted"] == 1 and s["puts"] == 1
    assert s["computing"] == 0 and s["computing_peak"] == 1


def test_get_or_compute_once_and_cached(results):
    n = Counter()
    v = np.arange(12, dtype=np.int32).reshape(3, 4)
    assert same(results.get_or_compute("k", n(v)), v)
    assert same(results.get_or_compute("k", n(v)), v)
    assert same(results.get("k"), v) and n.n == 1
    got = results.lookup("k")
    assert got.compute_us < 1_000_000
    # a big value: stored, then read back through a grown buffer
    big = np.random.default_rng(2).standard_normal(100_000).astype(np.float32)
    assert same(results.get_or_compute("big", n(big)), big)
    assert same(results.get_or_compute("big", n(big)), big) and n.n == 2
    # what fn gets is the caller's key, not its bytes
    seen = []
    results.get_or_compute(("t", 1), lambda k: seen.append(k) or b"x")
    assert seen == [("t", 1)]
    # compute time is recorded
    results.get_or_compute("slow", lambda k: time.sleep(0.05) or b"s")
    assert results.lookup("slow").compute_us >= 40_000


def test_early_refresh(client, ns_name):
    r = client.results(ns_name, ttl=3, jitter=-1)
    assert r.get_or_compute("k", lambda k: time.sleep(0.05) or b"v1") == b"v1"
    n = Counter()
    # compute_us 50 ms x beta 1e6: XFetch refreshes (all but surely) at once
    assert r.get_or_compute("k", n(b"v2"), beta=1e6, early=False) == b"v1" and n.n == 0
    assert r.get_or_compute("k", n(b"v2"), beta=1e6) == b"v2" and n.n == 1
    assert r.stats()["early_refreshes"] == 1
    assert r.get("k") == b"v2"
    r.put("slow", b"old")
    r.get_or_compute("s", lambda k: time.sleep(0.05) or b"s1")

    def boom(k):
        raise RuntimeError("refresh failed")
    assert r.get_or_compute("s", boom, beta=1e6) == b"s1"      # still fresh: served
    assert r.get("s") == b"s1" and r.stats()["early_refreshes"] == 2
    assert r.get_or_compute("slow", n(b"new"), beta=1e6) == b"old" and n.n == 1  # no time


def test_no_result_is_cached(results):
    n = Counter()
    assert results.get_or_compute("none", n(embcache.NO_RESULT)) is None
    assert results.get_or_compute("none", n(b"never")) is None
    assert n.n == 1
    r = results.lookup("none")
    assert r.found and r.negative
    s = results.stats()
    assert s["negative_items"] == 1 and s["negative_puts"] == 1


def test_exception_propagates_and_gives_the_lease_up(results):
    err = ValueError("backend down")

    def boom(k):
        raise err
    with pytest.raises(ValueError) as e:
        results.get_or_compute("k", boom)
    assert e.value is err
    assert not results.lookup("k").found                      # nothing was stored
    n = Counter()
    assert results.get_or_compute("k", n(b"fine")) == b"fine" and n.n == 1
    for bad, exc in ((lambda k: None, embcache.InvalidArgumentError),
                     (lambda k: "text", embcache.InvalidArgumentError),
                     (lambda k: np.array([True]), embcache.DTypeError)):
        with pytest.raises(exc):
            results.get_or_compute("bad", bad)
    assert results.get_or_compute("bad", n(b"ok")) == b"ok"


def test_failed_lease_passes_to_a_waiter(results):
    """A holds the lease and fails; B, waiting meanwhile, gets it and computes."""
    started, b_waiting = threading.Event(), threading.Event()
    out = {}

    def a_fn(k):
        started.set()
        b_waiting.wait(10)
        time.sleep(0.3)                          # B is inside get_or_compute by now
        raise KeyError("a failed")

    def a():
        try:
            results.get_or_compute("k", a_fn)
        except KeyError as e:
            out["a"] = e

    b_calls = Counter()

    def b():
        started.wait(10)
        b_waiting.set()
        out["b"] = results.get_or_compute("k", b_calls(b"from b"))

    ta, tb = threading.Thread(target=a), threading.Thread(target=b)
    ta.start()
    tb.start()
    ta.join(30)
    tb.join(30)
    assert isinstance(out.get("a"), KeyError)
    assert out.get("b") == b"from b" and b_calls.n == 1


def test_timeout_and_stale_instead_of_waiting(client, ns_name, daemon):
    r = client.results(ns_name, ttl=0.2, stale_ttl=30, jitter=-1)
    with embcache.connect(daemon.socket) as c2:
        other = c2.results(ns_name)
        assert other.lease("k") == "granted"               # another process computes
        n = Counter()
        t0 = time.monotonic()
        with pytest.raises(embcache.TimeoutError) as e:
            r.get_or_compute("k", n(b"v"), wait=0.2)
        assert isinstance(e.value, TimeoutError) and e.value.code == -21
        assert 0.15 < time.monotonic() - t0 < 5 and n.n == 0
        other.put("k", b"first")
        time.sleep(0.35)                                   # now stale
        assert other.lease("k", allow_stale=True) == "granted"
        assert r.get_or_compute("k", n(b"v"), allow_stale=True) == b"first"
        assert n.n == 0
        other.put("k", b"second")
        assert r.get_or_compute("k", n(b"v")) == b"second" and n.n == 0


def test_lease_parts(client, ns_name, daemon):
    r = client.results(ns_name)
    with embcache.connect(daemon.socket) as c2:
        other = c2.results(ns_name)
        assert r.lease("k") == "granted"
        assert other.lease("k") == "wait"
        assert not other.wait(0.05)                        # nothing happened
        woke = []
        th = threading.Thread(target=lambda: woke.append(other.wait(5)))
        th.start()
        time.sleep(0.1)
        r.put("k", b"v")
        th.join(10)
        assert woke == [True]
        assert other.lease("k") == "found"
        assert r.lease("k2") == "granted" and other.lease("k2") == "wait"
        r.release("k2")
        assert other.lease("k2") == "granted"


# ---------------------------------------------------------------------------
# cached()

def test_cached_decorator(client, ns_name):
    calls = []

    @embcache.cached(ns_name, ttl=60, client=client)
    def scale(x, factor=2.0, *, bias=0):
        calls.append(1)
        return x * factor + bias

    x = np.arange(4, dtype=np.float32)
    assert same(scale(x), x * 2) and len(calls) == 1
    assert same(scale(x), x * 2) and len(calls) == 1             # cached
    assert same(scale(x, 2.0), x * 2) and same(scale(x, factor=2.0), x * 2)
    assert same(scale(x=x), x * 2) and len(calls) == 1           # the same call, bound
    scale(x.astype(np.float64))                                  # dtype
    scale(x.reshape(2, 2))                                       # shape
    scale(x + 1)                                                 # values
    scale(x, 3.0)                                                # another argument
    scale(x, bias=1)                                             # a keyword argument
    assert len(calls) == 6
    keys = {scale.key(x), scale.key(x.astype(np.float64)), scale.key(x.reshape(2, 2)),
            scale.key(x + 1), scale.key(x, 3.0), scale.key(x, bias=1), scale.key(x, 2)}
    assert len(keys) == 7                                        # 2 is not 2.0
    assert scale.key(x) == scale.key(x.copy()) and len(scale.key(x)) == 32
    assert scale.purge(x) == 1
    scale(x)
    assert len(calls) == 7
    assert scale.results().stats()["hits"] >= 4

    @embcache.cached(ns_name, client=client)
    def other(x, factor=2.0, *, bias=0):
        calls.append(1)
        return x
    assert other.key(x) != scale.key(x)                          # the function counts
    with pytest.raises(TypeError, match="unexpected"):
        scale(x, nope=1)
    with pytest.raises(embcache.InvalidArgumentError, match="cannot key"):
        scale(object())


def test_cached_types_and_no_result(client, ns_name, torch_mod):
    torch = torch_mod
    n = []

    @embcache.cached(ns_name, client=client)
    def f(t, what):
        n.append(1)
        if what == "none":
            return embcache.NO_RESULT
        if what == "bytes":
            return b"raw"
        return t * 2

    t = torch.arange(3, dtype=torch.float16)
    for _ in range(2):                                   # computed, then cached: same type
        got = f(t, "t")
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float16
        assert torch.equal(got, t * 2)
        assert f(t, "none") is None and f(t, "bytes") == b"raw"
    assert len(n) == 3
    assert f.key(t, "t") == f.key(t.numpy(), "t")          # keyed by dtype, shape, bytes
    a = f(t.numpy(), "t")                                  # ... so a numpy call hits
    assert isinstance(a, np.ndarray) and same(a, (t * 2).numpy()) and len(n) == 3

    @embcache.cached(ns_name, client=client, like="torch")
    def g(x):
        return torch.ones(2)
    assert isinstance(g(1), torch.Tensor) and isinstance(g(1), torch.Tensor)
    with pytest.raises(embcache.InvalidArgumentError, match="like"):
        embcache.cached(ns_name, like="jax")


def test_cached_default_client(daemon, ns_name, monkeypatch):
    from embcache import _results
    monkeypatch.setenv("EMBCACHE_SOCKET", daemon.socket)
    monkeypatch.setattr(_results, "_default_client", None)
    calls = []

    @embcache.cached(ns_name, ttl=30, stale_ttl=5)
    def f(s: str, n: int) -> bytes:
        calls.append(1)
        return (s * n).encode()
    assert f("ab", 2) == b"abab" and f("ab", 2) == b"abab" and len(calls) == 1
    assert f.results().client.socket is None and f.results().stats()["stale_ttl"] == 5
    _results._default_client.close()


# ---------------------------------------------------------------------------
# Purge, drop, stats, options

def test_purge(results):
    for k in ("a", "b", "c"):
        results.put(k, k.encode())
    results.put_negative("n")
    assert results.purge("a") == 1
    assert results.get("a") is None and results.get("b") == b"b"
    assert results.purge("a") == 0
    assert results.purge() == 3
    assert [results.lookup(k).found for k in "bcn"] == [False] * 3
    assert results.stats()["items"] == 0


def test_stats_counters(results):
    s0 = results.stats()
    results.put("a", b"1")
    results.put("b", np.zeros(3, np.float32))
    results.put_negative("n")
    for _ in range(3):
        results.get("a")
    results.get("x")
    results.lookup("y")
    results.get("n")
    s1 = results.stats()
    d = {k: s1[k] - s0[k] for k in ("hits", "misses", "negative_hits", "puts",
                                   "negative_puts", "items", "negative_items")}
    assert d == {"hits": 3, "misses": 2, "negative_hits": 1, "puts": 3, "negative_puts": 1,
                 "items": 3, "negative_items": 1}
    assert s1["bytes"] > s0["bytes"]
    assert s1["name"] == results.name and s1["owner_uid"] == os.getuid()
    assert s1["shared"] is False and s1["bind_model"] == ""


def test_list_drop_and_options(client, ns_name):
    r = client.results(ns_name, ttl=7, negative_ttl=3, lease_time=4, max_computing=5,
                       negative_max=100, jitter=0.2, stale_ttl=9)
    s = r.stats()
    assert (s["ttl"], s["negative_ttl"], s["lease_time"], s["max_computing"],
            s["negative_max"], s["jitter"], s["stale_ttl"]) == (7, 3, 4, 5, 100, 0.2, 9)
    # options without configure do not change an existing namespace
    assert client.results(ns_name, ttl=99).stats()["ttl"] == 7
    assert client.results(ns_name, ttl=99, configure=True).stats()["ttl"] == 99
    assert ns_name in [d["name"] for d in client.results_list()]
    r.put("k", b"v")
    client.results_drop(ns_name)
    assert ns_name not in [d["name"] for d in client.results_list()]
    with pytest.raises(embcache.NotFoundError):
        client.results(ns_name, create=False)
    with pytest.raises(embcache.NotFoundError):
        client.results_drop(ns_name)
    with pytest.raises(embcache.InvalidArgumentError):
        client.results("bad name/with slash")
    with pytest.raises(embcache.InvalidArgumentError):
        client.results("x" * 64)
    for kw in ({"ttl": 0}, {"negative_ttl": -1}, {"max_computing": 0}, {"bind": 3}):
        with pytest.raises(embcache.InvalidArgumentError):
            client.results(ns_name, **kw)
    with pytest.raises(embcache.NotFoundError):
        client.results(ns_name + "b", bind="no-such-model/current")


def test_bound_namespace_is_invalidated(client, daemon, ns_name, tmp_path):
    for v in (1, 2):
        p = tmp_path / f"v{v}" / "w.npy"
        p.parent.mkdir()
        np.save(p, np.full((4, 2), v, np.float32))
        daemon.import_files("rb", v, [p])
    client.alias("rb", "current", 1)
    r = client.results(ns_name, bind="rb/current")
    fixed = client.results(ns_name + "-v1", bind=("rb", 1))
    s = r.stats()
    assert (s["bind_model"], s["bind_version"], s["bound_version"]) == ("rb", "current", 1)
    r.put("k", b"from v1")
    fixed.put("k", b"pinned")
    gen = s["generation"]
    client.alias("rb", "current", 2)
    deadline = time.monotonic() + 5
    while r.get("k") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.get("k") is None                                  # never served again
    s = r.stats()
    assert s["bound_version"] == 2 and s["generation"] > gen and s["invalidations"] >= 1
    assert fixed.get("k") == b"pinned"                         # its version did not move
    r.put("k", b"from v2")
    assert r.get("k") == b"from v2"


# ---------------------------------------------------------------------------
# Processes and handles

def test_inherited_handle_after_fork(results):
    results.put("parent", b"p")

    def child():
        ok = results.get("parent") == b"p"                 # reopened on its own connection
        results.put("child", np.arange(3, dtype=np.int64))
        return ok and results.get_or_compute("gc", lambda k: b"c") == b"c"

    assert in_child(child) == 0
    assert same(results.get("child"), np.arange(3, dtype=np.int64))
    assert results.get("gc") == b"c" and results.get("parent") == b"p"


def test_closed_handle(client, ns_name):
    r = client.results(ns_name)
    with r:
        r.put("k", b"v")
    assert r.closed
    with pytest.raises(embcache.ReleasedError):
        r.get("k")
    assert client.results(ns_name).get("k") == b"v"       # the results stay


def test_threads_share_a_namespace(results):
    rng = np.random.default_rng(3)
    vals = {i: rng.standard_normal((i % 7 + 1, 5)).astype(np.float32) for i in range(64)}
    bad = []

    def work(seed):
        for i in np.random.default_rng(seed).permutation(64):
            v = results.get_or_compute(int(i), lambda k: vals[k])
            if not same(v, vals[int(i)]):
                bad.append(int(i))

    ths = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert bad == [] and results.stats()["puts"] == 64


# ---------------------------------------------------------------------------
# Context windows

BLOCK = (2, 2, 4, 16, 8)   # (k/v, layers, heads, block tokens, head dim): 8 KiB of f16


def test_context_blocks_round_trip(results, client, ns_name, torch_mod):
    torch = torch_mod
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 32000, 16 * 6 + 5).astype(np.int32)
    kv = rng.standard_normal((6,) + BLOCK).astype(np.float16)
    assert results.lookup_prefix(tokens, 16) == 0
    results.put_blocks(tokens, 16, 0, kv[:3])                  # one array: blocks 0..2
    assert results.lookup_prefix(tokens, 16) == 3
    results.put_blocks(tokens, 16, 3, [kv[3], torch.from_numpy(kv[4])])   # a list
    assert results.lookup_prefix(tokens, 16) == 5
    assert results.lookup_prefix(tokens.tolist(), 16) == 5
    assert results.lookup_prefix(torch.from_numpy(tokens.astype(np.int64)), 16) == 5

    out = np.empty((5,) + BLOCK, np.float16)
    assert results.gather_blocks(tokens, 16, 5, out) is out
    assert same(out, kv[:5])
    got = results.gather_blocks(tokens, 16, block_shape=BLOCK, dtype=np.float16)
    assert same(got, kv[:5])                                   # count: what is cached
    flat = results.gather_blocks(tokens, 16, 2, block_shape=kv[0].nbytes)
    assert flat.dtype == np.uint8 and flat.tobytes() == kv[:2].tobytes()
    tout = torch.empty((3,) + BLOCK, dtype=torch.float16)
    assert results.gather_blocks(tokens, 16, 3, tout) is tout
    assert torch.equal(tout, torch.from_numpy(kv[:3]))

    # a chain: the same block 2 after other blocks is another block
    other = tokens.copy()
    other[20] += 1                                             # inside block 1
    assert results.lookup_prefix(other, 16) == 1
    assert results.lookup_prefix(tokens[:16 * 4 + 3], 16) == 4
    assert results.lookup_prefix(tokens, 32) == 0              # other block size
    # namespaces are salted: the same tokens elsewhere are not cached
    assert client.results(ns_name + "-2").lookup_prefix(tokens, 16) == 0

    with pytest.raises(embcache.NotFoundError) as e:
        results.gather_blocks(tokens, 16, 6, np.empty((6,) + BLOCK, np.float16))
    assert e.value.got == 5
    with pytest.raises(embcache.OutOfRangeError):
        results.gather_blocks(tokens, 16, 2, np.empty((2, 100), np.float16))
    with pytest.raises(embcache.EmbcacheError):
        results.put_blocks(tokens, 16, 6, [kv[0]])             # block 6 is not whole
    with pytest.raises(embcache.DTypeError):
        results.lookup_prefix(np.array([1.5, 2.5]), 16)
    with pytest.raises(embcache.InvalidArgumentError, match="int32"):
        results.lookup_prefix(np.array([2**40]), 16)
    results.purge()
    assert results.lookup_prefix(tokens, 16) == 0


def test_daemon_restart_reopens(make_daemon):
    """Handles open the namespace again on the new worker. A shared namespace's
    results live in the engine's segment and survive; a private one's arena
    does not (its namespace does): only its reopening is checked."""
    d = make_daemon().start()
    c = embcache.connect(d.socket)
    r = c.results("restart-shared", ttl=60, shared=True)
    p = c.results("restart-private", ttl=60)
    r.put("k", np.arange(5, dtype=np.int32))
    r.put_negative("n")
    d.crash()                                     # kill -9 the worker; a warm one serves
    assert same(r.get("k"), np.arange(5, dtype=np.int32))   # reopened, results kept
    assert r.lookup("n").negative
    p.put("after", b"a")
    assert p.get_or_compute("gc", lambda k: b"g") == b"g"
    d.restart_worker()
    assert same(r.get("k"), np.arange(5, dtype=np.int32))
    p.put("again", b"b")
    assert p.get("again") == b"b"
    assert {"restart-shared", "restart-private"} <= {x["name"] for x in c.results_list()}
    c.close()
