"""Tensor.gather and Tensor metadata: every returned value against the source
arrays, for every dtype, every kind of ids, out=, like= and dtype=."""

import threading

import numpy as np
import pytest

import embcache
from conftest import MODEL, bf16_bits

NP_DTYPE = {"emb_f32": np.float32, "emb_f16": np.float16, "emb_f64": np.float64,
            "emb_i8": np.int8, "emb_u8": np.uint8, "emb_i32": np.int32, "emb_i64": np.int64,
            "cube": np.float32, "vec": np.float32, "emb_bf16": np.uint16}
DTYPE_NAME = {"emb_f32": "f32", "emb_f16": "f16", "emb_f64": "f64", "emb_i8": "i8",
              "emb_u8": "u8", "emb_i32": "i32", "emb_i64": "i64", "cube": "f32", "vec": "f32",
              "emb_bf16": "bf16"}


def same(a, b):
    """Equal shape, dtype and bytes (NaN-safe, -0.0-exact)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", sorted(NP_DTYPE))
def test_metadata(client, tables, name):
    src = tables.src[name]
    t = client.tensor(MODEL, name)
    assert (t.model, t.name, t.version, t.requested_version) == (MODEL, name, 1, "current")
    assert t.shape == src.shape
    assert t.dtype == np.dtype(NP_DTYPE[name])
    assert t.dtype_name == DTYPE_NAME[name]
    assert t.rows == src.shape[0] == len(t)
    assert t.row_bytes == src[0].nbytes
    assert t.nbytes == src.nbytes
    assert t.partitions == -(-t.rows // t.rows_per_partition)
    assert name in repr(t)


@pytest.mark.parametrize("name", sorted(NP_DTYPE))
def test_every_dtype_every_row(client, tables, name):
    src = tables.src[name]
    t = client.tensor(MODEL, name, version=1)
    rng = np.random.default_rng(5)
    ids = np.concatenate([rng.permutation(len(src)), rng.integers(0, len(src), 300),
                          [0, len(src) - 1, len(src) - 1]])
    got = t.gather(ids)
    assert isinstance(got, np.ndarray)
    assert same(got, src[ids])


def test_ids_kinds(client, tables):
    src = tables.src["emb_f32"]
    t = client.tensor(MODEL, "emb_f32")
    ids = [3, 999, 0, 64, 63, 3]
    assert same(t.gather(ids), src[ids])
    assert same(t.gather(tuple(ids)), src[ids])
    for dt in (np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64):
        a = np.array([1, 2, 100, 127], dtype=dt)
        assert same(t.gather(a), src[a.astype(np.int64)])
    ro = np.array([5, 6, 7], dtype=np.int64)
    ro.flags.writeable = False                                  # read-only ids are fine
    assert same(t.gather(ro), src[ro])
    strided = np.arange(0, 1000, dtype=np.int64)[::7]          # not contiguous
    assert not strided.flags.c_contiguous
    assert same(t.gather(strided), src[strided])
    two_d = np.array([[1, 2, 3], [900, 800, 700]])
    assert same(t.gather(two_d), src[two_d])                   # (2, 3, 16)
    assert same(t.gather(np.int64(5)), src[5])                 # 0-d -> one row
    assert same(t.gather(7), src[7])
    assert t.gather([]).shape == (0, 16)
    assert t.gather(np.zeros((0, 4), np.int32)).shape == (0, 4, 16)


def test_row_shapes(client, tables):
    cube, vec = tables.src["cube"], tables.src["vec"]
    assert same(client.tensor(MODEL, "cube").gather([[4, 1]]), cube[[[4, 1]]])
    assert same(client.tensor(MODEL, "vec").gather([99, 0, 5]), vec[[99, 0, 5]])


def test_torch_ids_and_like(client, tables, torch_mod):
    torch = torch_mod
    src = tables.src["emb_f32"]
    t = client.tensor(MODEL, "emb_f32")
    for dt in (torch.int64, torch.int32, torch.int16, torch.uint8):
        ids = torch.tensor([[5, 6], [200, 7]], dtype=dt)
        got = t.gather(ids)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        assert got.device.type == "cpu"
        assert torch.equal(got, torch.from_numpy(src[ids.long().numpy()]))
    strided = torch.arange(1000)[::3]
    assert torch.equal(t.gather(strided), torch.from_numpy(src[strided.numpy()]))
    got = t.gather([1, 2], like="torch")
    assert isinstance(got, torch.Tensor) and torch.equal(got, torch.from_numpy(src[[1, 2]]))
    got = t.gather(torch.tensor([1, 2]), like="numpy")
    assert isinstance(got, np.ndarray) and same(got, src[[1, 2]])
    bf = client.tensor(MODEL, "emb_bf16").gather(torch.tensor([3, 1]))
    assert bf.dtype == torch.bfloat16
    assert same(bf.view(torch.int16).numpy().view(np.uint16), tables.src["emb_bf16"][[3, 1]])
    with pytest.raises(embcache.InvalidArgumentError, match="like"):
        t.gather([1], like="jax")


def test_outputs_support_dlpack(client, tables, torch_mod):
    torch = torch_mod
    t = client.tensor(MODEL, "emb_f32")
    a = t.gather([4, 5])
    assert torch.equal(torch.from_dlpack(a), torch.from_numpy(tables.src["emb_f32"][[4, 5]]))
    b = t.gather(torch.tensor([4, 5]))
    assert same(np.from_dlpack(b), tables.src["emb_f32"][[4, 5]])


def test_out_numpy(client, tables):
    src = tables.src["emb_f64"]
    t = client.tensor(MODEL, "emb_f64")
    out = np.full((3, 5), -1.0)
    assert t.gather([299, 0, 1], out=out) is out
    assert same(out, src[[299, 0, 1]])
    out2 = np.empty((2, 2, 5))
    assert t.gather(np.array([[1, 2], [3, 4]]), out=out2) is out2
    assert same(out2, src[[[1, 2], [3, 4]]])


def test_out_torch(client, tables, torch_mod):
    torch = torch_mod
    src = tables.src["emb_i32"]
    t = client.tensor(MODEL, "emb_i32")
    out = torch.empty((2, 3), dtype=torch.int32)
    assert t.gather([256, 1], out=out) is out
    assert torch.equal(out, torch.from_numpy(src[[256, 1]]))
    with pytest.raises(embcache.InvalidArgumentError, match="like"):
        t.gather([1, 2], out=out, like="numpy")


def test_out_errors(client, torch_mod):
    torch = torch_mod
    t = client.tensor(MODEL, "emb_f32")
    with pytest.raises(embcache.InvalidArgumentError, match="C-contiguous"):
        t.gather([1, 2], out=np.empty((16, 2), np.float32).T)
    with pytest.raises(embcache.InvalidArgumentError, match="C-contiguous"):
        t.gather([1, 2], out=torch.empty(16, 2).t())
    with pytest.raises(embcache.DTypeError, match="dtype") as e:
        t.gather([1, 2], out=np.empty((2, 16), np.float64))
    assert isinstance(e.value, TypeError) and e.value.code == -11
    with pytest.raises(embcache.DTypeError, match="dtype"):
        t.gather([1, 2], out=torch.empty(2, 16, dtype=torch.float16))
    with pytest.raises(embcache.InvalidArgumentError, match="shape"):
        t.gather([1, 2], out=np.empty((3, 16), np.float32))
    with pytest.raises(embcache.InvalidArgumentError, match="shape"):
        t.gather([1, 2], out=np.empty(32, np.float32))
    ro = np.empty((2, 16), np.float32)
    ro.flags.writeable = False
    with pytest.raises(embcache.InvalidArgumentError, match="read-only"):
        t.gather([1, 2], out=ro)
    with pytest.raises(embcache.InvalidArgumentError, match="grad"):
        t.gather([1, 2], out=torch.empty(2, 16, requires_grad=True))
    with pytest.raises(embcache.InvalidArgumentError, match="numpy array or a torch"):
        t.gather([1, 2], out=[[0.0] * 16] * 2)


@pytest.mark.parametrize("bad", [[1.0, 2.0], [1, 2.5], np.array([1.0, 2.0]),
                                 np.array([True, False]), ["1", "2"], [None]])
def test_float_and_other_ids_refused(client, bad):
    t = client.tensor(MODEL, "emb_f32")
    with pytest.raises(embcache.DTypeError, match="integer dtype") as e:
        t.gather(bad)
    assert isinstance(e.value, TypeError)


def test_float_torch_ids_refused(client, torch_mod):
    torch = torch_mod
    t = client.tensor(MODEL, "emb_f32")
    for ids in (torch.tensor([1.0]), torch.tensor([True]), torch.tensor([1.0], dtype=torch.half)):
        with pytest.raises(embcache.DTypeError, match="integer dtype"):
            t.gather(ids)


def test_out_of_range(client):
    t = client.tensor(MODEL, "emb_f32")
    with pytest.raises(embcache.OutOfRangeError) as e:
        t.gather([0, 5, 1000])
    assert isinstance(e.value, IndexError)
    assert e.value.code == -5 and e.value.code_name == "EC_ERANGE"
    assert "ids[2] = 1000" in str(e.value) and "emb_f32" in str(e.value)
    with pytest.raises(embcache.OutOfRangeError, match=r"ids\[1\] = -1"):
        t.gather(np.array([3, -1]))
    with pytest.raises(embcache.OutOfRangeError):
        t.gather([[1, 2], [3, 10**6]])


def test_misses_are_faulted_in(client, tables):
    src = tables.src["emb_f32"]
    t = client.tensor(MODEL, "emb_f32")
    t.gather(np.arange(1000))
    assert client.evict(MODEL, "1") > 0
    before = client.stats()
    ids = np.random.default_rng(3).permutation(1000)
    assert same(t.gather(ids), src[ids])
    after = client.stats()
    assert after["client_miss_rows"] > before["client_miss_rows"]
    assert after["page_ins"] > before["page_ins"]


def test_dtype_conversion(client, tables, torch_mod):
    torch = torch_mod
    src = tables.src["emb_f32"]
    t = client.tensor(MODEL, "emb_f32")
    ids = np.random.default_rng(4).integers(0, 1000, 300)
    for dt in (np.float16, "f16", "float16", torch.float16):
        assert same(t.gather(ids, dtype=dt), src[ids].astype(np.float16))
    bf = t.gather(ids, dtype="bf16")                 # numpy: bf16 bit patterns
    assert same(bf, bf16_bits(src[ids]))
    bt = t.gather(torch.from_numpy(ids), dtype=torch.bfloat16)
    assert bt.dtype == torch.bfloat16
    assert torch.equal(bt, torch.from_numpy(src[ids]).to(torch.bfloat16))
    out = np.empty((300, 16), np.float16)
    assert t.gather(ids, out=out, dtype="f16") is out
    assert same(out, src[ids].astype(np.float16))
    assert same(t.gather(ids, dtype=np.float32), src[ids])   # its own dtype: no conversion
    with pytest.raises(embcache.DTypeError):
        client.tensor(MODEL, "emb_f16").gather([1], dtype=np.float32)
    with pytest.raises(embcache.DTypeError):
        client.tensor(MODEL, "emb_i32").gather([1], dtype="f16")
    with pytest.raises(embcache.DTypeError, match="complex"):
        t.gather([1], dtype=np.complex64)


def test_device_arguments_without_gpu(client, torch_mod):
    torch = torch_mod
    t = client.tensor(MODEL, "emb_f32")
    with pytest.raises(embcache.InvalidArgumentError, match="numpy array cannot live"):
        t.gather([1], device="cuda:0", like="numpy")
    with pytest.raises(embcache.InvalidArgumentError, match="device must be"):
        t.gather([1], device="tpu")
    assert t.gather([1], device="cpu").shape == (1, 16)
    assert t.gather([1], device=torch.device("cpu"), like="torch").device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(embcache.DeviceError, match="no CUDA device"):
            t.gather([1], device="cuda:0", like="torch")
        with pytest.raises(embcache.DeviceError, match="no CUDA device"):
            t.gather(torch.tensor([1]), device="cuda")


def test_threads_share_a_tensor(client, tables):
    src = tables.src["emb_f32"]
    t = client.tensor(MODEL, "emb_f32")
    bad = []

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(200):
            ids = rng.integers(0, 1000, 64)
            if not same(t.gather(ids), src[ids]):
                bad.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert bad == []


def test_alias_switch_keeps_resolved_version(client, tables):
    t1 = client.tensor("sw", "w")
    assert t1.version == 1
    client.alias("sw", "current", 2)
    try:
        t2 = client.tensor("sw", "w")
        assert t2.version == 2 and t2.requested_version == "current"
        assert same(t1.gather([0, 99]), tables.src["sw1"][[0, 99]])
        assert same(t2.gather([0, 99]), tables.src["sw2"][[0, 99]])
    finally:
        client.alias("sw", "current", 1)


def test_not_found(client):
    for args in [("nope", "w"), ("sw", "nope"), ("sw", "w", 9), ("sw", "w", "canary")]:
        with pytest.raises(embcache.NotFoundError) as e:
            client.tensor(*args)
        assert isinstance(e.value, LookupError) and e.value.code == -4


def test_stats_and_list(client, tables):
    s = client.stats()
    assert isinstance(s, dict) and all(isinstance(v, int) for v in s.values())
    assert s["clients"] >= 1 and s["segment_bytes"] == 128 << 20
    client.tensor(MODEL, "emb_f32").gather(np.arange(100))
    assert client.stats()["client_rows"] >= s["client_rows"] + 100
    versions = {(v["model"], v["version"]): v for v in client.list()}
    v = versions[(MODEL, 1)]
    assert "current" in v["aliases"]
    shapes = {x["name"]: (x["dtype"], x["shape"]) for x in v["tensors"]}
    assert shapes["emb_bf16"] == ("bf16", (400, 16)) and shapes["cube"] == ("f32", (50, 4, 3))
    assert [v["version"] for v in client.list("sw")] == [1, 2]


def test_import_through_the_api(client, tmp_path):
    a = np.arange(60, dtype=np.int64).reshape(20, 3)
    np.save(tmp_path / "t.npy", a)
    assert client.import_model("apimodel", 3, [tmp_path / "t.npy"], round=7,
                               params={"k": 1}) == 1
    assert client.find("apimodel", 7, {"k": 1}) == 3
    assert same(client.tensor("apimodel", "t", 3).gather([19, 0]), a[[19, 0]])
    with pytest.raises(embcache.ExistsError):
        client.import_model("apimodel", 3, [tmp_path / "t.npy"])
    with pytest.raises(embcache.EmbcacheError):
        client.import_model("apimodel", 4, [tmp_path / "missing.npy"])
    client.retire("apimodel", 3)
    with pytest.raises(embcache.NotFoundError):
        client.tensor("apimodel", "t", 3)
