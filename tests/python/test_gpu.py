"""GPU outputs: rows gathered straight into CUDA tensors. Skipped on a machine
without an NVIDIA GPU (or with a CPU build of torch); failed on a machine with
one whose libembcache runs no CUDA backend, and always under
EMBCACHE_REQUIRE_GPU=1 (conftest.gpu_unavailable decides)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

try:
    import torch
except ImportError:  # cuda_torch() below says what that means
    torch = None

import embcache  # noqa: E402
from conftest import MODEL, cuda_torch, gpu_unavailable  # noqa: E402

pytestmark = [pytest.mark.gpu]


@pytest.fixture
def gpu_client(client):
    """The client, when libembcache runs CUDA and torch reaches the GPU."""
    if client.backend != "cuda":
        gpu_unavailable(f"libembcache runs its {client.backend} backend here (built without "
                        f"CUDA, or no driver?)")
    cuda_torch()
    return client


def host(x):
    return x.cpu()


def test_gather_to_device(gpu_client, tables):
    src = torch.from_numpy(tables.src["emb_f32"])
    t = gpu_client.tensor(MODEL, "emb_f32")
    ids = np.random.default_rng(0).integers(0, 1000, (5, 7))
    y = t.gather(ids, device="cuda:0", like="torch")
    assert y.is_cuda and y.shape == (5, 7, 16) and y.is_contiguous()
    assert hasattr(y, "__cuda_array_interface__")
    torch.cuda.current_stream().synchronize()
    assert torch.equal(host(y), src[torch.from_numpy(ids)])
    # ids already on the device: the output follows them
    dids = torch.from_numpy(ids).cuda()
    y2 = t.gather(dids)
    assert y2.is_cuda and torch.equal(host(y2), host(y))
    # int32 ids on the device
    assert torch.equal(host(t.gather(dids.int())), host(y))
    # device ids, host output
    y3 = t.gather(dids, device="cpu")
    assert not y3.is_cuda and torch.equal(y3, host(y))


def test_out_on_device_and_streams(gpu_client, tables):
    src = torch.from_numpy(tables.src["emb_f32"])
    t = gpu_client.tensor(MODEL, "emb_f32")
    ids = torch.arange(999, -1, -1)
    out = torch.empty(1000, 16, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        assert t.gather(ids, out=out) is out        # queued on the current stream (s)
    s.synchronize()
    assert torch.equal(host(out), src.flip(0))
    out.zero_()
    assert t.gather(ids, out=out, stream=s) is out
    s.synchronize()
    assert torch.equal(host(out), src.flip(0))
    with pytest.raises(embcache.InvalidArgumentError):
        t.gather(ids, out=torch.empty(1000, 16, device="cuda").t().contiguous().t())
    with pytest.raises(embcache.InvalidArgumentError, match="device"):
        t.gather(ids, out=out, device="cpu")


def test_stream_waits_for_the_current_one(gpu_client, tables):
    """stream=: ids and output are made on the current stream, the gather runs on
    another; it must wait for them (wait_stream) and keep their memory from being
    reused while it is queued (record_stream)."""
    src = torch.from_numpy(tables.src["emb_f32"])
    t = gpu_client.tensor(MODEL, "emb_f32")
    side = torch.cuda.Stream()
    for _ in range(5):
        torch.cuda._sleep(50_000_000)               # the current stream is busy...
        ids = torch.arange(999, -1, -1, device="cuda")  # ...when the ids are written
        y = t.gather(ids, stream=side)
        del ids                                     # its memory must not be reused early
        junk = torch.full((1000,), 7, dtype=torch.int64, device="cuda")
        side.synchronize()
        torch.cuda.synchronize()
        assert torch.equal(host(y), src.flip(0))
        del junk
    # a raw cudaStream_t works the same way
    torch.cuda._sleep(50_000_000)
    ids = torch.arange(1000, device="cuda")
    y = t.gather(ids, stream=side.cuda_stream)
    torch.cuda.synchronize()
    assert torch.equal(host(y), src)


def test_conversion_on_device(gpu_client, tables):
    src = torch.from_numpy(tables.src["emb_f32"])
    t = gpu_client.tensor(MODEL, "emb_f32")
    ids = torch.randint(0, 1000, (300,))
    for dt in (torch.float16, torch.bfloat16):
        y = t.gather(ids, device="cuda", dtype=dt)
        assert y.dtype == dt and y.is_cuda
        assert torch.equal(host(y), src[ids].to(dt))


def test_every_dtype_on_device(gpu_client, tables):
    for name in ("emb_f16", "emb_f64", "emb_i8", "emb_u8", "emb_i32", "emb_i64", "emb_bf16",
                 "cube"):
        t = gpu_client.tensor(MODEL, name)
        ids = torch.randint(0, t.rows, (50,))
        y = t.gather(ids, device="cuda")
        assert torch.equal(host(y), t.gather(ids))


def test_cpu_backend_refuses_device_output(tables):
    cuda_torch()
    code = textwrap.dedent(f"""
        import embcache, torch
        c = embcache.connect({tables.daemon.socket!r})
        assert c.backend == "cpu" and c.device_count == 0, c.backend
        try:
            c.tensor({MODEL!r}, "emb_f32").gather([1], device="cuda:0")
        except embcache.InvalidArgumentError as e:
            print("refused:", e)
    """)
    env = dict(os.environ, EMBCACHE_BACKEND="cpu")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("refused:"), (r.stdout, r.stderr)
