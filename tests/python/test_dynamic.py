"""Dynamic tables from Python (Client.make_dynamic, Tensor.put/delete/find/
gather, Client.snapshot) and from the CLI (embcache dynamic/put/del/update/
snapshot, the stream framing and its refusals), each against a dict model
of what was written; a crash of the daemon loses no acknowledged update."""

import struct

import numpy as np
import pytest

import embcache

DIM = 16


@pytest.fixture
def dyn(make_daemon, tmp_path):
    d = make_daemon().start()
    src = np.random.default_rng(3).standard_normal((100, DIM)).astype(np.float32)
    p = tmp_path / "t.npy"
    np.save(p, src)
    d.import_files("m", 1, [p])
    with embcache.connect(d.socket) as c:
        c.make_dynamic("m", 1, "t", capacity=1000, policy="refuse")
        yield d, c, src


def rows_for(keys, ver):
    keys = np.asarray(keys, np.int64)
    return (keys[:, None].astype(np.float32) * 0.5 + ver + np.arange(DIM, dtype=np.float32))


def test_put_find_delete_against_a_model(dyn):
    d, c, src = dyn
    t = c.tensor("m", "t", version=1)
    model = {k: src[k] for k in range(100)}
    rng = np.random.default_rng(5)
    for ver in range(1, 30):
        keys = rng.integers(-2**62, 2**62, 20)
        keys[:5] = rng.integers(0, 100, 5)          # some existing keys
        r = t.put(keys, rows_for(keys, ver))
        assert r["inserted"] + r["updated"] == len(keys)
        for k, row in zip(keys.tolist(), rows_for(keys, ver)):
            model[k] = row
        gone = rng.choice(list(model), 3, replace=False)
        r = t.delete(gone)
        assert r["deleted"] == 3
        for k in gone.tolist():
            del model[k]
    keys = np.array(list(model), np.int64)
    got = t.gather(keys)
    np.testing.assert_array_equal(got, np.stack([model[k] for k in keys.tolist()]))
    rows, found = t.find(np.array([keys[0], 123456789123, keys[1]]))
    assert found.tolist() == [True, False, True]
    assert not rows[1].any()
    with pytest.raises(embcache.NotFoundError):
        t.gather(np.array([123456789123]))
    info = t.dynamic_info()
    assert info["keys"] == len(model) and info["capacity"] == 1000
    (tab,) = c.dynamic_tables()
    assert (tab["model"], tab["version"], tab["tensor"]) == ("m", 1, "t")
    assert tab["keys"] == len(model) and tab["policy"] == "refuse"
    assert tab["deletes"] == 29 * 3 and tab["lsn"] >= 58


def test_full_table_refuses_whole_batch(dyn):
    d, c, src = dyn
    t = c.tensor("m", "t", version=1)
    keys = np.arange(1000, 2000, dtype=np.int64)     # 1000 new keys, 900 places
    with pytest.raises(embcache.NoSpaceError, match="nothing applied"):
        t.put(keys, rows_for(keys, 1))
    assert t.dynamic_info()["keys"] == 100
    assert not t.find(keys[:1])[1][0]


def test_crash_loses_no_acknowledged_update(dyn):
    d, c, src = dyn
    t = c.tensor("m", "t", version=1)
    keys = np.arange(500, 600, dtype=np.int64)
    t.put(keys, rows_for(keys, 7))
    c.close()
    d.crash()
    with embcache.connect(d.socket) as c2:
        t2 = c2.tensor("m", "t", version=1)
        np.testing.assert_array_equal(t2.gather(keys), rows_for(keys, 7))
        np.testing.assert_array_equal(t2.gather(np.arange(100)), src)


def test_snapshot_is_a_version(dyn):
    d, c, src = dyn
    t = c.tensor("m", "t", version=1)
    t.put([7, 1000], rows_for([7, 1000], 2))
    v = c.snapshot("m", 1)
    assert v == 2
    snap = c.tensor("m", "t", version=2)
    ks = c.tensor("m", "t.keys", version=2)
    assert snap.shape == (101, DIM)
    keys = ks.gather(np.arange(101)).tolist()
    assert sorted(keys) == sorted(list(range(100)) + [1000])
    rows = snap.gather(np.arange(101))
    byk = dict(zip(keys, rows))
    np.testing.assert_array_equal(byk[1000], rows_for([1000], 2)[0])
    np.testing.assert_array_equal(byk[8], src[8])


def frame(op, keys, rows=None, row_bytes=None):
    keys = np.asarray(keys, np.int64)
    rb = 0 if op == 2 else (row_bytes if row_bytes is not None else rows.shape[1] * 4)
    out = struct.pack("<IB3xII", 0x31554345, op, len(keys), rb) + keys.tobytes()
    if op == 1:
        out += np.ascontiguousarray(rows, np.float32).tobytes()
    return out


def test_cli_update_stream_and_refusals(dyn, tmp_path):
    d, c, src = dyn
    stream = (frame(1, [1, 2], rows_for([1, 2], 3))
              + frame(1, [3], rows_for([3], 3)[:, :8], row_bytes=32)   # wrong row size
              + frame(2, [2])
              + frame(1, [4000], rows_for([4000], 3)))
    p = tmp_path / "u.bin"
    p.write_bytes(stream)
    r = d.cli("update", "m", "1", "t", str(p), check=False)
    assert r.returncode == 5, r.stderr
    assert "record 1 at byte" in r.stderr and "32 bytes" in r.stderr
    t = c.tensor("m", "t", version=1)
    np.testing.assert_array_equal(t.gather([1]), rows_for([1], 3))
    np.testing.assert_array_equal(t.gather([3]), src[3:4])           # refused record
    assert t.find([2])[1].tolist() == [False]                        # deleted
    np.testing.assert_array_equal(t.gather([4000]), rows_for([4000], 3))
    # Garbage stops the stream and names where.
    p.write_bytes(frame(2, [1]) + b"junkjunkjunkjunk")
    r = d.cli("update", "m", "1", "t", str(p), check=False)
    assert r.returncode == 5 and "record 1 at byte 24" in r.stderr, r.stderr
    assert t.find([1])[1].tolist() == [False]
    # npy pairs, del, snapshot, stats
    kp, rp = tmp_path / "k.npy", tmp_path / "r.npy"
    np.save(kp, np.array([9, 10], np.int64))
    np.save(rp, rows_for([9, 10], 8))
    d.cli("put", "m", "1", "t", "--keys", str(kp), "--rows", str(rp))
    np.testing.assert_array_equal(t.gather([9, 10]), rows_for([9, 10], 8))
    d.cli("del", "m", "1", "t", "9")
    assert t.find([9])[1].tolist() == [False]
    out = d.cli("stats").stdout
    assert "dynamic tables:" in out and "m/1/t:" in out
    assert d.cli("snapshot", "m", "1").stdout.strip() == "2"
    r = d.cli("put", "m", "2", "t", "--keys", str(kp), "--rows", str(rp), check=False)
    assert r.returncode == 4 and "not a dynamic table" in r.stderr


def test_cli_update_from_safetensors(dyn, tmp_path):
    from conftest import write_safetensors
    d, c, src = dyn
    t = c.tensor("m", "t", version=1)
    keys = np.array([5, 2**40, -7], np.int64)
    rows = rows_for(keys, 11)
    p = tmp_path / "u.safetensors"
    write_safetensors(p, {"keys": ("I64", keys.shape, keys.tobytes()),
                          "rows": ("F32", rows.shape, rows.tobytes())})
    d.cli("update", "m", "1", "t", "--safetensors", str(p), "--batch", "2")
    np.testing.assert_array_equal(t.gather(keys), rows)
    # Other names, and a put through `embcache put`.
    rows2 = rows_for(keys, 12)
    q = tmp_path / "v.safetensors"
    write_safetensors(q, {"ids": ("I64", keys.shape, keys.tobytes()),
                          "emb": ("F32", rows2.shape, rows2.tobytes())})
    r = d.cli("update", "m", "1", "t", "--safetensors", str(q), check=False)
    assert r.returncode != 0 and "no tensor 'keys'" in r.stderr and "'ids'" in r.stderr
    np.testing.assert_array_equal(t.gather(keys), rows)              # nothing applied
    d.cli("put", "m", "1", "t", "--safetensors", str(q), "--keys-name", "ids",
          "--rows-name", "emb")
    np.testing.assert_array_equal(t.gather(keys), rows2)
    # Rows of the wrong width are refused whole and named.
    bad = rows2[:, :8].copy()
    write_safetensors(q, {"keys": ("I64", keys.shape, keys.tobytes()),
                          "rows": ("F32", bad.shape, bad.tobytes())})
    r = d.cli("put", "m", "1", "t", "--safetensors", str(q), check=False)
    assert r.returncode != 0 and "tensor rows" in r.stderr, r.stderr
    np.testing.assert_array_equal(t.gather(keys), rows2)
    # And deletes by the keys of a safetensors file.
    d.cli("del", "m", "1", "t", "--safetensors", str(p))
    assert t.find(keys)[1].tolist() == [False, False, False]


def test_index_of_a_dynamic_table(make_daemon, tmp_path):
    """build_index and search(nprobe=) on a dynamic table with arbitrary
    int64 keys: new keys next to a query are found, a row moved next to a
    query is found with its new score, deleted keys never come back;
    index_info says how many rows were written since the build, a rebuild
    brings that to 0, and a crash of the daemon keeps it."""
    rng = np.random.default_rng(21)
    dim, n = 32, 4000
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    x = (centres[rng.integers(0, 20, n)] + rng.standard_normal((n, dim))).astype(np.float32)
    q = (centres[rng.integers(0, 20, 30)] + rng.standard_normal((30, dim))).astype(np.float32)
    keys = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)
    np.save(tmp_path / "t.npy", x)
    np.save(tmp_path / "t.keys.npy", keys)
    d = make_daemon(shm_size="64M").start()
    d.import_files("m", 1, [tmp_path / "t.npy", tmp_path / "t.keys.npy"])
    with embcache.connect(d.socket) as c:
        c.make_dynamic("m", 1, "t", capacity=2 * n, policy="refuse")
        t = c.tensor("m", "t", version=1)
        st = t.build_index(nlist=64, metric="l2")
        assert st["rows"] == n
        info = t.index_info()
        assert info["rows"] == n and info["stale_rows"] == 0 and info["live_keys"] == n
        assert info["built_lsn"] == info["table_lsn"]
        es, ei = t.search(q, 10, "l2")
        s8, i8 = t.search(q, 10, "l2", nprobe=8)
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i8.tolist(), ei.tolist())]) \
            >= 0.9
        assert set(i8.ravel().tolist()) <= set(keys.tolist())
        # Written after the build: new keys at queries 0..4, an indexed key
        # moved to query 5, the best key of query 6 deleted.
        new = rng.integers(-2**63, 2**63 - 1, 5, dtype=np.int64)
        t.put(new, q[:5] + 1e-3)
        moved = int(keys[np.argmax(((x - q[5]) ** 2).sum(1))])   # the farthest row
        t.put(np.array([moved]), q[5:6] + 1e-3)
        gone = int(ei[6, 0])
        t.delete(np.array([gone]))
        es, ei = t.search(q, 10, "l2")
        s8, i8 = t.search(q, 10, "l2", nprobe=8)
        assert i8[:5, 0].tolist() == new.tolist()
        assert i8[5, 0] == moved
        np.testing.assert_array_equal(s8[:6, 0], es[:6, 0])
        assert gone not in i8.ravel().tolist()
        info = t.index_info()
        assert info["stale_rows"] == 6 and info["live_keys"] == n + 4
        assert info["table_lsn"] > info["built_lsn"]
        assert info["stale_share"] == pytest.approx(6 / (n + 4))
        assert '"stale_rows": 6' in d.cli("index", "info", "m", "1", "t", "--json").stdout
    d.crash()
    with embcache.connect(d.socket) as c:
        t = c.tensor("m", "t", version=1)
        assert t.index_info()["stale_rows"] == 6
        s, i = t.search(q, 10, "l2", nprobe=8)
        np.testing.assert_array_equal(i, i8)
        t.build_index(nlist=64, metric="l2")
        assert t.index_info()["stale_rows"] == 0
        s, i = t.search(q, 10, "l2", nprobe=8)
        assert i[:5, 0].tolist() == new.tolist()
