"""PyTorch drop-in: ``CachedEmbedding``, an nn.Module whose rows come from embcache.

    from embcache.torch import CachedEmbedding
    # was: self.emb = nn.Embedding.from_pretrained(weights)
    self.emb = CachedEmbedding("bert-base", "word_embeddings")
    # was: nn.EmbeddingBag.from_pretrained(weights, mode="mean")
    self.bag = CachedEmbedding("bert-base", "word_embeddings", mode="mean")

The module has no parameters: it is for inference. The table lives in the
daemon's shared memory, read by every process on the host; each forward
gathers the rows it needs (zero system calls when they are resident) onto the
module's device, which follows ``.to(device)`` / ``.cuda()``, in the module's
floating dtype, which follows ``.half()`` / ``.bfloat16()`` (f32 tables are
converted by libembcache on the way).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._client import Client, Tensor, connect
from .errors import InvalidArgumentError

__all__ = ["CachedEmbedding"]


class CachedEmbedding(nn.Module):
    """``nn.Embedding`` (``mode=None``) or ``nn.EmbeddingBag`` (``mode="sum"``,
    ``"mean"`` or ``"max"``) over a 2-D embcache tensor.

    Args:
        model, tensor, version: which tensor (as in :meth:`Client.tensor`);
            the module keeps the concrete version it resolved to.
        client: the client to use; default a new ``embcache.connect(socket)``.
        mode: None for Embedding; "sum", "mean" or "max" for EmbeddingBag.
        include_last_offset: as in nn.EmbeddingBag.
        socket: the daemon's socket when ``client`` is not given.

    forward(input, offsets=None, per_sample_weights=None):
        Embedding: ``input`` is an integer tensor of any shape; the result is
        ``input.shape + (embedding_dim,)``.
        EmbeddingBag: ``input`` is 1-D with ``offsets`` (bag starts), or 2-D
        (one bag per row); the result is ``(bags, embedding_dim)``; empty bags
        give zeros; ``per_sample_weights`` with mode "sum".

    Inference only: there is no weight to train; ``requires_grad_(True)``
    raises. ``padding_idx``, ``max_norm`` and sparse gradients are not offered.
    """

    def __init__(self, model: str, tensor: str, version: Union[str, int] = "current",
                 client: Optional[Client] = None, mode: Optional[str] = None, *,
                 include_last_offset: bool = False, socket: Optional[str] = None) -> None:
        super().__init__()
        if mode not in (None, "sum", "mean", "max"):
            raise InvalidArgumentError(f"mode must be None, 'sum', 'mean' or 'max', not {mode!r}")
        self._client = client if client is not None else connect(socket)
        t: Tensor = self._client.tensor(model, tensor, version)
        if len(t.shape) != 2:
            raise InvalidArgumentError(f"tensor '{tensor}' of model '{model}' has shape "
                                       f"{t.shape}: an embedding table is 2-D")
        self._table = t
        self.mode = mode
        self.include_last_offset = include_last_offset
        self.num_embeddings, self.embedding_dim = t.shape
        # Carries the module's device and floating dtype through .to() / .cuda()
        # / .half(): an empty buffer, not saved in the state dict.
        table_dtype = t.torch_dtype
        anchor_dtype = table_dtype if table_dtype.is_floating_point else torch.float32
        self.register_buffer("_anchor", torch.empty(0, dtype=anchor_dtype), persistent=False)
        self._table_dtype = table_dtype

    @property
    def table(self) -> Tensor:
        """The embcache tensor the rows come from."""
        return self._table

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the output rows."""
        if not self._table_dtype.is_floating_point:
            return self._table_dtype
        return self._anchor.dtype

    def requires_grad_(self, requires_grad: bool = True) -> "CachedEmbedding":
        if requires_grad:
            raise RuntimeError("CachedEmbedding is for inference: its rows live in embcache's "
                               "read-only shared memory and cannot be trained")
        return self

    def forward(self, input: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor of row ids, not {type(input).__name__}")
        anchor = self._anchor
        dev = anchor.device
        dtype = anchor.dtype if self._table_dtype.is_floating_point else self._table_dtype
        if self.mode is None:
            if offsets is not None or per_sample_weights is not None:
                raise InvalidArgumentError("offsets and per_sample_weights need mode='sum', "
                                           "'mean' or 'max'")
            if dtype is self._table_dtype and dev.type == "cpu" and not input.is_cuda:
                return self._table.gather(input)    # the fast path: a CPU torch tensor
            return self._table.gather(input, device=dev, like="torch",
                                      dtype=None if dtype == self._table_dtype else dtype)
        # EmbeddingBag: gather every id's row once, in order, then let torch's
        # own embedding_bag reduce them (so results match nn.EmbeddingBag).
        if input.dim() not in (1, 2):
            raise InvalidArgumentError(f"EmbeddingBag input must be 1-D (with offsets) or 2-D, "
                                       f"not {input.dim()}-D")
        rows = self._table.gather(input.reshape(-1), device=dev, like="torch",
                                  dtype=None if dtype == self._table_dtype else dtype)
        index = torch.arange(rows.shape[0], device=dev).reshape(input.shape)
        if offsets is not None:
            offsets = offsets.to(dev)
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.to(device=dev, dtype=rows.dtype)
        return F.embedding_bag(index, rows, offsets, mode=self.mode,
                               per_sample_weights=per_sample_weights,
                               include_last_offset=self.include_last_offset)

    def extra_repr(self) -> str:
        t = self._table
        s = (f"{t.model}@{t.version}/{t.name}, {self.num_embeddings}, {self.embedding_dim}, "
             f"device={self.device}, dtype={self.dtype}")
        return s + (f", mode={self.mode!r}" if self.mode else "")

    # Pickling (torch.save, copy.deepcopy, multiprocessing) keeps which tensor
    # it is, not the connection: unpickling connects and resolves again.
    def __getstate__(self) -> Any:
        state = self.__dict__.copy()
        t = state.pop("_table")
        c = state.pop("_client")
        state["_embcache_ref"] = (c.socket, t.model, t.version, t.name)
        return state

    def __setstate__(self, state: Any) -> None:
        socket, model, version, name = state.pop("_embcache_ref")
        self.__dict__.update(state)
        self._client = connect(socket)
        self._table = self._client.tensor(model, name, version)
