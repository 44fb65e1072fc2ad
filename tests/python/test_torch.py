"""embcache.torch.CachedEmbedding against nn.Embedding / nn.EmbeddingBag
loaded with the same weights."""

import copy
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import embcache  # noqa: E402
from embcache.torch import CachedEmbedding  # noqa: E402
from conftest import MODEL, cuda_torch, gpu_unavailable  # noqa: E402


@pytest.fixture
def weights(tables):
    return torch.from_numpy(tables.src["emb_f32"].copy())


def ids(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 1000, shape))


def test_embedding_forward_equals_nn_embedding(client, weights):
    ref = nn.Embedding.from_pretrained(weights)
    emb = CachedEmbedding(MODEL, "emb_f32", client=client)
    assert (emb.num_embeddings, emb.embedding_dim) == (1000, 16)
    for x in (ids(7), ids(3, 5, seed=1), ids(2, 3, 4, seed=2), torch.tensor(5),
              ids(6, seed=3).int(), torch.zeros(0, 3, dtype=torch.long)):
        y = emb(x)
        assert y.shape == x.shape + (16,) and y.dtype == torch.float32
        assert torch.equal(y, ref(x))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bag_modes_equal_nn_embeddingbag(client, weights, mode):
    ref = nn.EmbeddingBag.from_pretrained(weights, mode=mode)
    bag = CachedEmbedding(MODEL, "emb_f32", client=client, mode=mode)
    x = ids(20, seed=4)
    offsets = torch.tensor([0, 3, 3, 10, 19])             # an empty bag, a bag of one
    assert torch.equal(bag(x, offsets), ref(x, offsets))
    x2 = ids(4, 6, seed=5)                                 # 2-D: one bag per row
    assert torch.equal(bag(x2), ref(x2))
    assert bag(x2).shape == (4, 16)


def test_bag_per_sample_weights_and_last_offset(client, weights):
    ref = nn.EmbeddingBag.from_pretrained(weights, mode="sum", include_last_offset=True)
    bag = CachedEmbedding(MODEL, "emb_f32", client=client, mode="sum",
                          include_last_offset=True)
    x = ids(12, seed=6)
    offsets = torch.tensor([0, 5, 5, 12])
    w = torch.rand(12)
    assert torch.allclose(bag(x, offsets, w), ref(x, offsets, per_sample_weights=w),
                          rtol=0, atol=1e-6)
    assert torch.equal(bag(x, offsets), ref(x, offsets))


def test_swapping_one_line_in_a_model(client, weights):
    class Net(nn.Module):
        def __init__(self, emb):
            super().__init__()
            self.emb = emb
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.emb(x).mean(dim=1))

    torch.manual_seed(0)
    a = Net(nn.Embedding.from_pretrained(weights))
    b = Net(CachedEmbedding(MODEL, "emb_f32", client=client))
    b.head.load_state_dict(a.head.state_dict())
    x = ids(8, 10, seed=7)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert set(b.state_dict()) == {"head.weight", "head.bias"}


def test_no_trainable_parameters(client):
    emb = CachedEmbedding(MODEL, "emb_f32", client=client)
    assert list(emb.parameters()) == [] and emb.state_dict() == {}
    with pytest.raises(RuntimeError, match="inference"):
        emb.requires_grad_()
    emb.requires_grad_(False)
    y = emb(ids(3))
    assert not y.requires_grad


def test_device_and_dtype_follow_the_module(client, tables):
    src = tables.src["emb_f32"]
    emb = CachedEmbedding(MODEL, "emb_f32", client=client)
    assert emb.device.type == "cpu" and emb.dtype == torch.float32
    emb = emb.to("cpu")
    x = ids(9, seed=8)
    emb.half()
    assert emb.dtype == torch.float16
    y = emb(x)
    assert y.dtype == torch.float16
    assert torch.equal(y, torch.from_numpy(src[x.numpy()].astype(np.float16)))
    emb.to(torch.bfloat16)
    assert torch.equal(emb(x), torch.from_numpy(src[x.numpy()]).to(torch.bfloat16))
    emb.float()
    assert torch.equal(emb(x), torch.from_numpy(src[x.numpy()]))


def test_other_dtypes(client, tables):
    f16 = CachedEmbedding(MODEL, "emb_f16", client=client)
    x = torch.tensor([[1, 2], [256, 0]])
    assert f16(x).dtype == torch.float16
    assert torch.equal(f16(x), torch.from_numpy(tables.src["emb_f16"][x.numpy()]))
    bf = CachedEmbedding(MODEL, "emb_bf16", client=client)
    assert bf(x).dtype == torch.bfloat16
    i32 = CachedEmbedding(MODEL, "emb_i32", client=client)
    assert i32.dtype == torch.int32
    i32.double()                                           # integer rows stay integers
    assert torch.equal(i32(x), torch.from_numpy(tables.src["emb_i32"][x.numpy()]))


def test_errors(client):
    emb = CachedEmbedding(MODEL, "emb_f32", client=client)
    with pytest.raises(embcache.DTypeError):
        emb(torch.tensor([1.0]))
    with pytest.raises(embcache.OutOfRangeError):
        emb(torch.tensor([1000]))
    with pytest.raises(TypeError):
        emb([1, 2])
    with pytest.raises(embcache.InvalidArgumentError, match="offsets"):
        emb(torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(embcache.InvalidArgumentError, match="2-D"):
        CachedEmbedding(MODEL, "cube", client=client)
    with pytest.raises(embcache.InvalidArgumentError, match="mode"):
        CachedEmbedding(MODEL, "emb_f32", client=client, mode="median")
    with pytest.raises(embcache.NotFoundError):
        CachedEmbedding(MODEL, "nope", client=client)
    bag = CachedEmbedding(MODEL, "emb_f32", client=client, mode="mean")
    with pytest.raises(embcache.InvalidArgumentError, match="1-D"):
        bag(torch.zeros(2, 2, 2, dtype=torch.long))


def test_own_connection_and_pickling(tables):
    emb = CachedEmbedding(MODEL, "emb_f32", socket=tables.daemon.socket, mode="sum")
    x = ids(2, 5, seed=9)
    y = emb(x)
    for clone in (pickle.loads(pickle.dumps(emb)), copy.deepcopy(emb)):
        assert clone.table is not emb.table and clone.table.version == emb.table.version
        assert torch.equal(clone(x), y)
    assert "emb_f32" in repr(emb) and "mode='sum'" in repr(emb)


@pytest.mark.gpu
def test_cuda(client, weights):
    if client.backend != "cuda":
        gpu_unavailable(f"libembcache runs its {client.backend} backend here")
    cuda_torch()
    emb = CachedEmbedding(MODEL, "emb_f32", client=client).cuda()
    ref = nn.Embedding.from_pretrained(weights).cuda()
    x = ids(4, 5, seed=10)
    y = emb(x)                                             # ids on the host
    assert y.device.type == "cuda"
    assert torch.equal(y, ref(x.cuda()))
    assert torch.equal(emb(x.cuda()), ref(x.cuda()))      # ids on the device
    bag = CachedEmbedding(MODEL, "emb_f32", client=client, mode="mean").cuda()
    refb = nn.EmbeddingBag.from_pretrained(weights, mode="mean").cuda()
    assert torch.allclose(bag(x.cuda()), refb(x.cuda()))
    assert torch.equal(emb.half()(x), ref(x.cuda()).half())
