"""Tensor.search (ec_search) against a numpy reference in float64: every
metric, the vector scan (few queries) and the BLAS path (16 or more), f32,
f16 and bf16 tables, a table cached by rows, ties, k beyond the table, torch
queries, and the errors; approximate search through an IVF index
(Client.build_index, search(nprobe=...)) against exact search."""

import numpy as np
import pytest

import embcache
from conftest import MODEL

METRICS = ("ip", "cosine", "l2")


def as_f32(name, a):
    if name == "emb_bf16":  # raw bf16 bits
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def reference(x, q, metric):
    """Every row's score for every query, as the library defines it (float64,
    rounded to float32), and the order: best first, ties by smaller id."""
    x = x.astype(np.float64)
    q = q.astype(np.float64)
    if metric == "l2":
        s = (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :]
        s = np.maximum(s, 0).astype(np.float32)
        key = s
    else:
        s = q @ x.T
        if metric == "cosine":
            xn = np.sqrt((x * x).sum(1))
            s = np.where(xn > 0, s / np.linalg.norm(q, axis=1)[:, None] / np.where(
                xn > 0, xn, 1)[None, :], 0.0)
        s = s.astype(np.float32)
        key = -s
    ids = np.arange(x.shape[0])
    order = np.stack([np.lexsort((ids, key[i])) for i in range(len(q))])
    return s, order


def check(x, q, k, metric, scores, ids):
    """Recall 1.0: the rows returned score what the k best score (equal ids
    except among rows whose scores tie), best first, scores to 1e-4."""
    s, order = reference(x, q, metric)
    kk = min(k, x.shape[0])
    want = np.take_along_axis(s, order[:, :kk], 1)
    assert ids.shape == (len(q), k) and scores.shape == (len(q), k)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    got = np.take_along_axis(s, ids[:, :kk], 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores[:, :kk], want, rtol=1e-4, atol=1e-4)
    same = ids[:, :kk] == order[:, :kk]
    tie = np.isclose(got, want, rtol=1e-6, atol=1e-7)
    assert (same | tie).all()
    assert (same.mean() > 0.99)
    for row in ids:
        assert len(set(row[:kk].tolist())) == kk
    if k > kk:
        assert (ids[:, kk:] == -1).all()
        assert (scores[:, kk:] == (np.inf if metric == "l2" else -np.inf)).all()


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("name", ["emb_f32", "emb_f16", "emb_bf16"])
@pytest.mark.parametrize("nq", [1, 3, 40])
def test_search_matches_numpy(client, tables, name, metric, nq):
    x = as_f32(name, tables.src[name])
    rng = np.random.default_rng(nq)
    q = rng.standard_normal((nq, x.shape[1])).astype(np.float32)
    t = client.tensor(MODEL, name)
    for k in (1, 10):
        scores, ids = t.search(q, k, metric)
        check(x, q, k, metric, scores, ids)


def test_one_query_and_k_beyond_rows(client, tables):
    x = tables.src["sw1"]  # 100 x 8
    t = client.tensor("sw", "w", version=1)
    q = x[3] + 0.01
    scores, ids = t.search(q, 120, "l2")
    assert scores.shape == (120,) and ids.shape == (120,)
    check(x, q[None], 120, "l2", scores[None], ids[None])
    assert ids[0] == 3
    # float64 and list queries are converted
    s2, i2 = t.search(q.astype(np.float64).tolist(), 120, "l2")
    assert (i2 == ids).all() and (s2 == scores).all()


def test_ties_and_rows_mode(make_daemon, tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    twins = [7 + 211 * i for i in range(1, 13)]
    x[twins] = x[7]
    p = tmp_path / "t.npy"
    np.save(p, x)
    d = make_daemon(shm_size="32M").start()
    d.import_files("m", 1, [p], partition_bytes=16384)
    q = np.concatenate([x[7:8], rng.standard_normal((30, 32)).astype(np.float32)])
    with embcache.connect(d.socket) as c:
        for mode in ("partitions", "rows"):
            c.cache_mode("m", mode)
            t = c.tensor("m", "t", version=1)
            assert t.cache_mode == mode
            for metric in METRICS:
                for n in (1, len(q)):          # the vector scan and the BLAS path
                    scores, ids = t.search(q[:n], 10, metric)
                    check(x, q[:n], 10, metric, scores, ids)
                    if metric != "ip":           # row 7 and its first 9 copies, in id order
                        assert ids[0].tolist() == [7] + twins[:9]


def test_torch_queries(client, tables, torch_mod):
    torch = torch_mod
    x = tables.src["emb_f32"]
    q = torch.randn(20, x.shape[1], dtype=torch.float64)
    t = client.tensor(MODEL, "emb_f32")
    scores, ids = t.search(q, 5, "cosine")
    assert isinstance(scores, torch.Tensor) and isinstance(ids, torch.Tensor)
    assert scores.dtype == torch.float32 and ids.dtype == torch.int64
    check(x, q.numpy().astype(np.float32), 5, "cosine", scores.numpy(), ids.numpy())


def test_errors(client, tables):
    t = client.tensor(MODEL, "emb_f32")
    dim = tables.src["emb_f32"].shape[1]
    q = np.ones((2, dim), np.float32)
    with pytest.raises(embcache.InvalidArgumentError, match="queries have 15 floats"):
        t.search(q[:, :-1], 3)
    with pytest.raises(embcache.InvalidArgumentError, match="k must be at least 1"):
        t.search(q, 0)
    with pytest.raises(embcache.InvalidArgumentError, match="unknown metric"):
        t.search(q, 3, "hamming")
    with pytest.raises(embcache.InvalidArgumentError, match="shape"):
        t.search(np.ones((2, 2, dim), np.float32), 3)
    bad = q.copy()
    bad[1, 2] = np.nan
    with pytest.raises(embcache.InvalidArgumentError, match="query 1, value 2 is NaN"):
        t.search(bad, 3)
    with pytest.raises(embcache.InvalidArgumentError, match="all zeros"):
        t.search(np.zeros(dim, np.float32), 3, "cosine")
    with pytest.raises(embcache.InvalidArgumentError, match="needs a 2-D"):
        client.tensor(MODEL, "cube").search(np.ones(3, np.float32), 1)
    with pytest.raises(embcache.InvalidArgumentError, match="needs a 2-D"):
        client.tensor(MODEL, "vec").search(np.ones(100, np.float32), 1)
    with pytest.raises(embcache.DTypeError, match="f32, f16 or bf16"):
        client.tensor(MODEL, "emb_i32").search(np.ones(3, np.float32), 1)
    # no queries: no results, no call
    s, i = t.search(np.empty((0, dim), np.float32), 4)
    assert s.shape == (0, 4) and i.shape == (0, 4)


# ---------------------------------------------------------------------------
# Approximate search through an IVF index (ec_index_build, nprobe)

def mixture(rng, rows, dim, centres=20, sigma=1.0):
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, rows)] + sigma * rng.standard_normal((rows, dim))
    q = c[rng.integers(0, centres, 50)] + sigma * rng.standard_normal((50, dim))
    return x.astype(np.float32), q.astype(np.float32)


def recall(ids, ref):
    k = ref.shape[1]
    return np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(ids, ref)])


@pytest.fixture
def ivf_daemon(make_daemon, tmp_path):
    x, q = mixture(np.random.default_rng(11), 6000, 32)
    p = tmp_path / "t.npy"
    np.save(p, x)
    d = make_daemon(shm_size="64M").start()
    d.import_files("m", 1, [p], partition_bytes=65536)
    return d, x, q


@pytest.mark.parametrize("metric", METRICS)
def test_ivf_recall_against_exact(ivf_daemon, metric):
    d, x, q = ivf_daemon
    phases = []
    with embcache.connect(d.socket) as c:
        st = c.build_index("m", 1, "t", nlist=64, metric=metric,
                           progress=lambda ph, done, total: phases.append((ph, done, total)))
        assert st["nlist"] == 64 and st["rows"] == 6000 and st["dim"] == 32
        assert st["metric"] == metric and st["iters"] == 10 and st["train_rows"] == 4096
        assert st["min_list"] <= 6000 / 64 <= st["max_list"] < 6000
        assert [p for p, done, total in phases if done == total] == \
            ["sample", "train", "assign", "write", "send"]
        t = c.tensor("m", "t", version=1)
        info = t.index_info()
        assert info["metric"] == metric and info["nlist"] == 64 and info["rows"] == 6000
        exact_s, exact_i = t.search(q, 10, metric)
        few = recall(t.search(q, 10, metric, nprobe=1)[1], exact_i)
        s8, i8 = t.search(q, 10, metric, nprobe=8)
        r8 = recall(i8, exact_i)
        assert r8 >= 0.9 and few < r8, (few, r8)
        # rows found have their exact scores, best first
        s_all, i_all = t.search(q, 10, metric, nprobe=64)
        assert (i_all == exact_i).all() and (s_all == exact_s).all()
        ref, _ = reference(x, q, metric)
        np.testing.assert_allclose(s8, np.take_along_axis(ref, i8, 1), rtol=1e-4, atol=1e-4)
        for n in (1, 20):   # the vector scan and matrix products, one query and a batch
            s, i = t.search(q[:n], 10, metric, nprobe=8, threads=1)
            assert recall(i, exact_i[:n]) >= 0.8
            np.testing.assert_allclose(s, np.take_along_axis(ref[:n], i, 1), rtol=1e-4,
                                       atol=1e-4)


def test_ivf_errors_and_refresh(ivf_daemon):
    d, x, q = ivf_daemon
    with embcache.connect(d.socket) as c:
        t = c.tensor("m", "t", version=1)
        with pytest.raises(embcache.NotFoundError, match="no index: build one with"):
            t.search(q, 5, nprobe=4)
        with pytest.raises(embcache.InvalidArgumentError, match="nprobe must be"):
            t.search(q, 5, nprobe=-1)
        with pytest.raises(embcache.NotFoundError):
            t.index_info()
        with pytest.raises(embcache.InvalidArgumentError, match="stopped by its progress"):
            c.build_index("m", 1, "t", nlist=32, progress=lambda *a: a[0] == "train")
        with pytest.raises(ZeroDivisionError):
            c.build_index("m", 1, "t", nlist=32, progress=lambda *a: 1 / 0)
        with pytest.raises(embcache.InvalidArgumentError, match="at most one list per row"):
            c.build_index("m", 1, "t", nlist=7000)
        with pytest.raises(embcache.InvalidArgumentError, match="unknown metric"):
            c.build_index("m", 1, "t", metric="hamming")
        st = t.build_index(nlist=32, metric="ip")
        assert st["nlist"] == 32
        t.search(q, 5, "ip", nprobe=4)
        with pytest.raises(embcache.InvalidArgumentError, match="built for metric ip"):
            t.search(q, 5, "l2", nprobe=4)
        # Tensor.build_index gives the handle the new index at once.
        t.build_index(nlist=16, metric="l2")
        assert t.index_info()["metric"] == "l2" and t.index_info()["nlist"] == 16
        s, i = t.search(q, 5, "l2", nprobe=16)
        es, ei = t.search(q, 5, "l2")
        assert (i == ei).all()
        # the CLI: --nprobe, and index info
        r = d.cli("index", "info", "m", "1", "t", "--json")
        assert '"metric": "l2", "nlist": 16' in r.stdout
