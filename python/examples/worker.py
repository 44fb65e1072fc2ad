#!/usr/bin/env python3
"""A PyTorch inference worker served from an embcache table.

The model: each request is a batch of bags of token ids; the worker
mean-pools each bag's embeddings (CachedEmbedding in EmbeddingBag "mean"
mode: rows come from embcached's shared memory) and applies a linear head.
It serves --requests random requests and reports each one's latency.

    worker.py --socket /tmp/embcache.sock --model example --tensor emb
    worker.py --npy emb.npy --mmap # a baseline: np.load(mmap_mode='r'), shared
    worker.py --npy emb.npy        # a baseline: np.load a private copy

With --control it talks to launch.py over stdin/stdout (JSON lines): it says
"started" once imported, "ready" once the model is built (and, with
--touch-all, the whole table read once), waits for "go", serves, says "done"
with its latencies, and waits for "exit" -- so the launcher can read its
memory (PSS) at each of those points.
"""

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

try:
    from embcache.torch import CachedEmbedding
except ImportError:  # run from the source tree: the package is next door
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from embcache.torch import CachedEmbedding


class BagClassifier(nn.Module):
    """Mean-pooled embeddings and a linear head."""

    def __init__(self, embedding: nn.Module, dim: int, classes: int) -> None:
        super().__init__()
        self.embedding = embedding
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids))      # ids: (batch, bag) -> (batch, classes)


def say(event: str, **fields) -> None:
    print(json.dumps({"event": event, "pid": os.getpid(), **fields}), flush=True)


def wait_for(word: str) -> None:
    line = sys.stdin.readline()
    if line.strip() != word:
        sys.exit(f"worker {os.getpid()}: expected {word!r} from the launcher, got {line!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", help="embcached's socket (default $EMBCACHE_SOCKET)")
    ap.add_argument("--model", default="example")
    ap.add_argument("--tensor", default="emb")
    ap.add_argument("--version", default="current")
    ap.add_argument("--npy", help="baseline: np.load this table instead of using embcache")
    ap.add_argument("--mmap", action="store_true",
                    help="with --npy: np.load(mmap_mode='r'), so every worker maps the "
                         "file's one copy in the page cache, instead of a private copy")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32, help="bags per request")
    ap.add_argument("--bag", type=int, default=8, help="ids per bag")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="seed of the request ids")
    ap.add_argument("--touch-all", action="store_true",
                    help="read the whole table once before serving (every page counted)")
    ap.add_argument("--control", action="store_true", help="talk to launch.py")
    args = ap.parse_args()

    torch.set_num_threads(1)            # N workers share the host's cores
    if args.control:
        say("started")
        wait_for("load")

    if args.npy:
        if args.mmap:
            table = np.load(args.npy, mmap_mode="r")            # shared: the page cache
            with warnings.catch_warnings():                     # torch has no read-only
                warnings.simplefilter("ignore", UserWarning)    # tensors; nothing writes
                weights = torch.from_numpy(table)
        else:
            table = np.load(args.npy)                           # a private copy
            weights = torch.from_numpy(table)
        embedding = nn.EmbeddingBag.from_pretrained(weights, mode="mean")
        rows, dim = weights.shape
        if args.touch_all:                                      # fault in every page
            float(table.sum(dtype=np.float64))
    else:
        embedding = CachedEmbedding(args.model, args.tensor, args.version, mode="mean",
                                    socket=args.socket)
        rows, dim = embedding.num_embeddings, embedding.embedding_dim
        if args.touch_all:
            with embedding.table.view() as view:                # zero-copy, shared
                float(view.numpy().sum(dtype=np.float64))
    torch.manual_seed(1234)             # the same head in every worker and mode
    model = BagClassifier(embedding, dim, args.classes).eval()

    rng = np.random.default_rng(args.seed)
    requests = [torch.from_numpy(rng.integers(0, rows, (args.batch, args.bag)))
                for _ in range(args.requests)]
    if args.control:
        say("ready")
        wait_for("go")

    latencies, checksum = [], 0.0
    with torch.inference_mode():
        model(requests[0])              # warm-up
        for ids in requests:
            t0 = time.perf_counter()
            logits = model(ids)
            latencies.append(time.perf_counter() - t0)
            checksum += float(logits.double().sum())
    us = np.array(latencies) * 1e6
    result = {"requests": len(us), "p50_us": float(np.percentile(us, 50)),
              "p99_us": float(np.percentile(us, 99)), "mean_us": float(us.mean()),
              "checksum": checksum}
    if args.control:
        say("done", **result)
        wait_for("exit")
    else:
        print(f"worker {os.getpid()}: {result['requests']} requests of {args.batch} bags x "
              f"{args.bag} ids: p50 {result['p50_us']:.1f} us, p99 {result['p99_us']:.1f} us "
              f"(checksum {checksum:.6f})")


if __name__ == "__main__":
    main()
