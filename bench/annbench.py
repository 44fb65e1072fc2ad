#!/usr/bin/env python3
"""Approximate top-k search: embcache's IVF-Flat index (Client.build_index,
Tensor.search(nprobe=...)) next to FAISS's IndexIVFFlat and next to exact
embcache search, on the same table, queries, machine and threads.

    /usr/bin/python3 bench/annbench.py [--build DIR] [--rows N] [--dim D]
        [--centres C] [--sigma S] [-k K] [--metrics ip,cosine,l2]
        [--nprobe 1,4,16,64] [--nlist N] [--batch B] [--singles S]
        [--exact-singles E] [--repeats R] [--threads T] [--record FILE]
        [--dynamic [--rewrite 0.1]]

What it does:

- writes a --rows x --dim f32 table drawn from a Gaussian mixture (--centres
  centres drawn N(0, 1), each row a centre plus N(0, sigma^2) noise; seed 1)
  to a .npy chunk by chunk, starts the build's embcached with a segment large
  enough for it, imports it and removes the .npy. Queries (--batch of them,
  seed 2) come from the same mixture. (SIFT1M or another public set is not
  reachable from this machine: the data is synthetic.)
- runs one worker process with OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = T
  (FAISS's OpenMP, and the OpenBLAS that both libraries call) and
  search(threads=T). The worker maps the table read-only through
  Tensor.view(); FAISS gets its own copy (IndexIVFFlat.add), normalized for
  cosine.
- per metric: the ground truth is exact embcache search (checked against
  numpy by tests/python/test_search.py); embcache builds its index once
  (build_index, default nlist unless --nlist) and FAISS trains an
  IndexIVFFlat with the same nlist, the same number of k-means iterations
  (10) and a training sample of the same size (64 nlist rows, drawn from the
  same table), then adds every row. For IP and cosine FAISS's quantizer is
  IndexFlatIP (spherical k-means, METRIC_INNER_PRODUCT), for L2 IndexFlatL2.
- times, --repeats times, alternating which library goes first: --singles
  calls of 1 query each (--exact-singles for exact search, which is slow)
  and one call of --batch queries, for exact embcache and for each --nprobe
  of both IVF indexes, all single-query runs before the batches, with a
  0.3 s pause before each run (both libraries' thread pools spin a while
  after a batch); queries/s per repeat, reported as the median and the
  range; recall@k against the exact answer.

With --dynamic, the table is made a dynamic table instead (keys 0..rows-1):
per metric, embcache's index and FAISS's IndexIVFFlat (same nlist, on the
worker's copy of the same rows, ids = keys) are built and timed (exact
search of the table next to FAISS's IndexIDMap2 of an IndexFlatIP or
IndexFlatL2 of the same rows, updated as the IVF is; --nprobe of both
indexes; one query per call and a batch) right after the build, after --rewrite of the rows (a random share of
the keys, seed 4) were written again with new rows of the mixture (the
table's puts; FAISS: remove_ids and add_with_ids of those keys, timed; for
embcache the index's delta, which a new handle's first search assigns to
the lists, timed as "first search"), and after a rebuild of both; recall
against exact search of the table as it is then, and the index's stale rows
(Tensor.index_info). Metrics ip and l2 (FAISS gets no unit rows here).

One JSON object per line on stdout; --record appends a plain-text table with
the machine, the commit and the command. Run it with Debian's /usr/bin/python3
(python3-numpy, python3-faiss) and a Release build (default build-hA-rel,
else --build).
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The helpers both benches use (same directory).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from searchbench import (commit, machine, recall, run_worker, setup_package,  # noqa: E402
                         start_daemon, stop_daemon)

REPO = Path(__file__).resolve().parents[1]
MODEL, TENSOR = "annbench", "emb"


def centres(args):
    return np.random.default_rng(1).standard_normal((args.centres, args.dim)).astype(np.float32)


def draw(rng, c, n, sigma):
    return (c[rng.integers(0, len(c), n)] +
            sigma * rng.standard_normal((n, c.shape[1]), dtype=np.float32)).astype(np.float32)


def unit(a):
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return (a / np.where(n > 0, n, 1)).astype(np.float32)


# ---------------------------------------------------------------------------
# The worker

def worker(args):
    import faiss
    embcache = setup_package(Path(args.build))
    T = args.threads
    faiss.omp_set_num_threads(T)
    qrng = np.random.default_rng(2)
    qb = draw(qrng, centres(args), args.batch, args.sigma)
    qs = qb[:args.singles]
    qx = qb[:min(args.singles, args.exact_singles)]   # exact is slow: fewer calls
    k = args.k
    with embcache.connect(args.socket) as c:
        t = c.tensor(MODEL, TENSOR, version=1)
        view = t.view()
        x = view.numpy()
        t.search(qs[:1], k, threads=T)                 # faults the table in

        def timed(fn, n, ref, key):
            t0 = time.perf_counter()
            ids = fn()
            dt = time.perf_counter() - t0
            res.setdefault(key, {"qps": [], "recall": 1.0})
            res[key]["qps"].append(n / dt)
            if ref is not None:
                res[key]["recall"] = min(res[key]["recall"], recall(ids, ref))

        for metric in args.metrics.split(","):
            res = {}
            # ground truth: exact embcache
            ref_b = t.search(qb, k, metric, threads=T)[1]
            ref_s = ref_b[:len(qs)]
            # embcache's index
            t0 = time.perf_counter()
            st = c.build_index(MODEL, 1, TENSOR, nlist=args.nlist or None, metric=metric)
            ec_build = time.perf_counter() - t0
            nlist = st["nlist"]
            ti = c.tensor(MODEL, TENSOR, version=1)    # a handle that maps the new index
            # FAISS's, same nlist, iterations and sample size
            t0 = time.perf_counter()
            fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
            quant = (faiss.IndexFlatL2 if metric == "l2" else faiss.IndexFlatIP)(args.dim)
            index = faiss.IndexIVFFlat(quant, args.dim, nlist, fmetric)
            index.cp.niter = 10
            sample = np.sort(np.random.default_rng(3).choice(
                args.rows, min(args.rows, 64 * nlist), replace=False))
            xs = x[sample]
            if metric == "cosine":
                xs = unit(xs)
            index.train(xs)
            del xs
            for r0 in range(0, args.rows, 262144):
                blk = x[r0:r0 + 262144]
                index.add(unit(blk) if metric == "cosine" else np.ascontiguousarray(blk))
            fa_build = time.perf_counter() - t0
            fq_b = unit(qb) if metric == "cosine" else qb
            fq_s = fq_b[:len(qs)]

            def ec_single(nprobe):
                qq = qs if nprobe else qx

                def run():
                    out = np.empty((len(qq), k), np.int64)
                    for i in range(len(qq)):
                        out[i] = (ti if nprobe else t).search(qq[i], k, metric, threads=T,
                                                              nprobe=nprobe)[1]
                    return out
                return run

            def fa_single():
                out = np.empty((len(qs), k), np.int64)
                for i in range(len(qs)):
                    out[i] = index.search(fq_s[i:i + 1], k)[1][0]
                return out

            nprobes = [int(v) for v in args.nprobe.split(",")]
            for r in range(args.repeats):
                order = ("embcache", "faiss") if r % 2 == 0 else ("faiss", "embcache")
                # One query per call first, then batches: both libraries'
                # pools (OpenBLAS's, OpenMP's) spin a while after a parallel
                # batch, on CPUs a single-query run would want. A pause
                # before each timed run lets them sleep.
                for per_call in (1, args.batch):
                    time.sleep(0.3)
                    if per_call == 1:   # exact embcache: the baseline of the speed-ups
                        timed(ec_single(0), len(qx), ref_s[:len(qx)], ("exact", 0, 1))
                    else:
                        timed(lambda: t.search(qb, k, metric, threads=T)[1], len(qb), ref_b,
                              ("exact", 0, args.batch))
                    for nprobe in nprobes:
                        index.nprobe = nprobe
                        for lib in order:
                            time.sleep(0.3)
                            if lib == "embcache" and per_call == 1:
                                timed(ec_single(nprobe), len(qs), ref_s, (lib, nprobe, 1))
                            elif lib == "embcache":
                                timed(lambda: ti.search(qb, k, metric, threads=T,
                                                        nprobe=nprobe)[1],
                                      len(qb), ref_b, (lib, nprobe, args.batch))
                            elif per_call == 1:
                                timed(fa_single, len(qs), ref_s, (lib, nprobe, 1))
                            else:
                                timed(lambda: index.search(fq_b, k)[1], len(qb), ref_b,
                                      (lib, nprobe, args.batch))
            for (lib, nprobe, per_call), d in res.items():
                v = d["qps"]
                print(json.dumps({
                    "lib": lib, "metric": metric, "nprobe": nprobe, "nlist": nlist,
                    "queries_per_call": per_call, "threads": T, "rows": args.rows,
                    "dim": args.dim, "k": k, "repeats": args.repeats,
                    "calls_per_repeat": (len(qx) if lib == "exact" else len(qs))
                    if per_call == 1 else 1,
                    "qps_median": float(np.median(v)), "qps_min": float(min(v)),
                    "qps_max": float(max(v)), "recall": d["recall"],
                    "build_s": ec_build if lib == "embcache" else
                    fa_build if lib == "faiss" else 0.0,
                    "list_rows": [st["min_list"], st["max_list"]] if lib == "embcache"
                    else None,
                }), flush=True)
            ti.release()
            del index, flat
        view.release()


# ---------------------------------------------------------------------------
# The worker of --dynamic

def table_rows(args):
    """The rows write_table wrote (same seeds, same chunks)."""
    c = centres(args)
    rng = np.random.default_rng(11)
    return np.concatenate([draw(rng, c, min(65536, args.rows - r0), args.sigma)
                           for r0 in range(0, args.rows, 65536)])


def faiss_ivf(faiss, args, metric, nlist, rows):
    """FAISS's IndexIVFFlat on rows (ids 0..n-1), trained as worker() trains it."""
    fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    quant = (faiss.IndexFlatL2 if metric == "l2" else faiss.IndexFlatIP)(args.dim)
    index = faiss.IndexIVFFlat(quant, args.dim, nlist, fmetric)
    index.cp.niter = 10
    sample = np.sort(np.random.default_rng(3).choice(len(rows), min(len(rows), 64 * nlist),
                                                     replace=False))
    index.train(rows[sample])
    index.add_with_ids(rows, np.arange(len(rows), dtype=np.int64))
    return index


def dyn_worker(args):
    import faiss
    embcache = setup_package(Path(args.build))
    T, k = args.threads, args.k
    faiss.omp_set_num_threads(T)
    qb = draw(np.random.default_rng(2), centres(args), args.batch, args.sigma)
    qs = qb[:args.singles]
    nprobes = [int(v) for v in args.nprobe.split(",")]
    wrng = np.random.default_rng(4)
    rows = table_rows(args)          # the table as it is: FAISS's copy of it
    with embcache.connect(args.socket) as c:
        c.make_dynamic(MODEL, 1, TENSOR, capacity=args.rows + args.rows // 8,
                       policy="refuse")
        for metric in args.metrics.split(","):
            t0 = time.perf_counter()
            st = c.build_index(MODEL, 1, TENSOR, nlist=args.nlist or None, metric=metric)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            index = faiss_ivf(faiss, args, metric, st["nlist"], rows)
            fa_build = time.perf_counter() - t0
            # FAISS's exact search of the same rows by key, updated as its IVF is.
            flat = faiss.IndexIDMap2((faiss.IndexFlatL2 if metric == "l2"
                                      else faiss.IndexFlatIP)(args.dim))
            flat.add_with_ids(rows, np.arange(len(rows), dtype=np.int64))
            for phase in ("built", "rewritten", "rebuilt"):
                fa_update_s = 0.0
                if phase == "rewritten":
                    n = int(args.rows * args.rewrite)
                    keys = np.sort(wrng.choice(args.rows, n, replace=False)).astype(np.int64)
                    tw = c.tensor(MODEL, TENSOR, version=1)
                    for r0 in range(0, n, 65536):
                        kk = keys[r0:r0 + 65536]
                        new = draw(wrng, centres(args), len(kk), args.sigma)
                        tw.put(kk, new)
                        rows[kk] = new
                    tw.release()
                    # FAISS's way to update rows in place: remove, add again.
                    t0 = time.perf_counter()
                    index.remove_ids(keys)
                    index.add_with_ids(rows[keys], keys)
                    fa_update_s = time.perf_counter() - t0
                    flat.remove_ids(keys)
                    flat.add_with_ids(rows[keys], keys)
                elif phase == "rebuilt":
                    t0 = time.perf_counter()
                    st = c.build_index(MODEL, 1, TENSOR, nlist=args.nlist or None,
                                       metric=metric)
                    build_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    index = faiss_ivf(faiss, args, metric, st["nlist"], rows)
                    fa_build = time.perf_counter() - t0
                ti = c.tensor(MODEL, TENSOR, version=1)   # maps the index built last
                info = ti.index_info()
                # The handle's first approximate search: it maps the index and
                # assigns the rows written since the build to their lists.
                t0 = time.perf_counter()
                ti.search(qs[0], k, metric, threads=T, nprobe=nprobes[0])
                first_ms = (time.perf_counter() - t0) * 1e3
                ref_b = ti.search(qb, k, metric, threads=T)[1]
                ref_s = ref_b[:len(qs)]
                res = {}

                def fa_single(ix, qq):
                    out = np.empty((len(qq), k), np.int64)
                    for i in range(len(qq)):
                        out[i] = ix.search(qq[i:i + 1], k)[1][0]
                    return out

                for r in range(args.repeats):
                    order = ("embcache", "faiss") if r % 2 == 0 else ("faiss", "embcache")
                    for nprobe in [0] + nprobes:
                        index.nprobe = max(nprobe, 1)
                        for per_call in (1, args.batch):
                            for lib in order:
                                time.sleep(0.3)
                                qq = (qs[:args.exact_singles] if nprobe == 0 else qs) \
                                    if per_call == 1 else qb
                                ix = flat if nprobe == 0 else index
                                t0 = time.perf_counter()
                                if lib == "faiss":
                                    ids = fa_single(ix, qq) if per_call == 1 else \
                                        ix.search(qb, k)[1]
                                elif per_call == 1:
                                    ids = np.stack([ti.search(q, k, metric, threads=T,
                                                              nprobe=nprobe)[1] for q in qq])
                                else:
                                    ids = ti.search(qq, k, metric, threads=T,
                                                    nprobe=nprobe)[1]
                                dt = time.perf_counter() - t0
                                d = res.setdefault((lib, nprobe, per_call),
                                                   {"qps": [], "recall": 1.0})
                                d["qps"].append(len(qq) / dt)
                                ref = ref_s[:len(qq)] if per_call == 1 else ref_b
                                d["recall"] = min(d["recall"], recall(ids, ref))
                for (lib, nprobe, per_call), d in res.items():
                    v = d["qps"]
                    print(json.dumps({
                        "mode": "dynamic", "phase": phase, "metric": metric,
                        "lib": lib, "nprobe": nprobe,
                        "nlist": st["nlist"], "queries_per_call": per_call, "threads": T,
                        "rows": args.rows, "dim": args.dim, "k": k,
                        "repeats": args.repeats, "rewrite": args.rewrite,
                        "qps_median": float(np.median(v)), "qps_min": float(min(v)),
                        "qps_max": float(max(v)), "recall": d["recall"],
                        "build_s": build_s, "faiss_build_s": fa_build,
                        "faiss_update_s": fa_update_s, "first_ms": first_ms,
                        "stale_rows": info["stale_rows"],
                        "live_keys": info["live_keys"],
                    }), flush=True)
                ti.release()
            del index, flat


def record_dynamic(args, lines, wall, shm_mb, load):
    m = machine()
    with open(args.record, "a") as f:
        f.write(f"# annbench --dynamic: IVF-Flat top-{args.k} of a dynamic table, after its "
                f"build, after {args.rewrite:.0%} of its rows were written again, after a "
                f"rebuild; {args.rows} x {args.dim} f32, {time.strftime('%Y-%m-%d %H:%M')}\n")
        f.write(f"machine: 2 vCPU VM (nproc {m['nproc']}), CPU {m['cpu']}, kernel "
                f"{m['kernel']}\n")
        f.write(f"commit: {commit()}\n")
        f.write(f"command: /usr/bin/python3 {' '.join(sys.argv)}\n")
        f.write(f"numpy {np.__version__}, python {platform.python_version()}; threads: "
                f"OPENBLAS_NUM_THREADS = search(threads=) = {args.threads}; wall {wall:.0f} s; "
                f"embcached --shm-size {shm_mb}M; load average (1 min) {load[0]:.2f} at the "
                f"start, {load[1]:.2f} at the end (a shared machine)\n")
        f.write(f"data: Gaussian mixture, {args.centres} centres N(0,1), sigma {args.sigma}, "
                f"seed 1/11, keys 0..rows-1; rows written again: drawn from the same mixture "
                f"(seed 4); {args.batch} queries (seed 2)\n")
        f.write(f"repeats {args.repeats}; 1 query/call: {args.singles} calls per repeat "
                f"({min(args.singles, args.exact_singles)} for exact); recall@{args.k} against "
                f"exact search of the table as it is in that phase (the least over repeats)\n")
        for metric in args.metrics.split(","):
            ml = [d for d in lines if d["metric"] == metric]
            for phase in ("built", "rewritten", "rebuilt"):
                pl = [d for d in ml if d["phase"] == phase]
                if not pl:
                    continue
                e = pl[0]
                f.write(f"\n## metric {metric}, {phase}: nlist {e['nlist']}, stale rows "
                        f"{e['stale_rows']} of {e['live_keys']} live keys; index build: "
                        f"embcache {e['build_s']:.1f} s, faiss {e['faiss_build_s']:.1f} s; "
                        f"a new embcache handle's first search {e['first_ms']:.1f} ms")
                if phase == "rewritten":
                    f.write(f"; faiss remove_ids + add_with_ids of the rows written "
                            f"{e['faiss_update_s']:.1f} s")
                f.write("\n")
                f.write(f"{'q/call':>6} {'nprobe':>6} {'lib':>8} {'q/s median':>11} "
                        f"{'range':>21} {'recall':>7}  vs faiss\n")
                fa = {(d["nprobe"], d["queries_per_call"]): d["qps_median"]
                      for d in pl if d["lib"] == "faiss"}
                for d in sorted(pl, key=lambda d: (d["queries_per_call"], d["nprobe"],
                                                   d["lib"])):
                    key = (d["nprobe"], d["queries_per_call"])
                    vs = f"{d['qps_median'] / fa[key]:.2f}x" if key in fa else ""
                    f.write(f"{d['queries_per_call']:>6} {d['nprobe'] or 'exact':>6} "
                            f"{d['lib']:>8} {d['qps_median']:>11.1f} {d['qps_min']:>10.1f}-"
                            f"{d['qps_max']:<10.1f} {d['recall']:>7.4f}  {vs}\n")
        f.write("\n")


# ---------------------------------------------------------------------------
# The parent: table, daemon, worker, record

def write_table(path: Path, args):
    c = centres(args)
    rng = np.random.default_rng(11)
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                  shape=(args.rows, args.dim))
    for r0 in range(0, args.rows, 65536):
        n = min(65536, args.rows - r0)
        a[r0:r0 + n] = draw(rng, c, n, args.sigma)
    a.flush()
    del a


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(REPO / "build-hA-rel"))
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--centres", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--metrics", default="ip,cosine,l2")
    ap.add_argument("--nprobe", default="1,4,16,64")
    ap.add_argument("--nlist", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--singles", type=int, default=200)
    ap.add_argument("--exact-singles", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--record")
    ap.add_argument("--dynamic", action="store_true",
                    help="a dynamic table's index: after its build, after --rewrite, rebuilt")
    ap.add_argument("--rewrite", type=float, default=0.1,
                    help="--dynamic: share of the rows written again (default 0.1)")
    ap.add_argument("--socket", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dynamic and "cosine" in args.metrics.split(","):
        sys.exit("annbench: --dynamic runs metrics ip and l2 (FAISS would need the table's "
                 "rows of unit length): pass --metrics ip,l2")
    if args.worker:
        return dyn_worker(args) if args.dynamic else worker(args)

    build = Path(args.build)
    if not (build / "embcached").exists():
        sys.exit(f"annbench: {build}/embcached not found: build Release there "
                 f"(cmake -DCMAKE_BUILD_TYPE=Release) or pass --build")
    embcache = setup_package(build)
    tmp = Path(tempfile.mkdtemp(prefix="ecann-", dir="/tmp"))
    daemon = None
    lines = []
    t_start = time.time()
    load0 = os.getloadavg()[0]
    try:
        src = tmp / f"{TENSOR}.npy"
        write_table(src, args)
        need = args.rows * args.dim * 4
        if args.dynamic:   # the table beside the tensor: capacity 1.125 rows, slots of +32 B
            need += int(args.rows * 1.125 * 1.07 * (args.dim * 4 + 32 + 16))
        shm_mb = max(256, (need * 5 // 4 + (1 << 20) - 1) >> 20)
        daemon, sock = start_daemon(build, tmp, shm_mb)
        with embcache.connect(sock) as c:
            c.import_model(MODEL, 1, [src], partition_bytes=1 << 20)
        src.unlink()
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
                   OPENBLAS_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, __file__, "--worker", "--socket", sock] + sys.argv[1:]
        lines += run_worker(cmd, env, "annbench: worker")
    finally:
        stop_daemon(daemon)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.record:
        (record_dynamic if args.dynamic else record)(args, lines, time.time() - t_start,
                                                     shm_mb, (load0, os.getloadavg()[0]))


def record(args, lines, wall, shm_mb, load):
    import faiss
    m = machine()
    with open(args.record, "a") as f:
        f.write(f"# annbench: IVF-Flat top-{args.k}, embcache vs FAISS IndexIVFFlat vs exact "
                f"embcache, {args.rows} x {args.dim} f32, {time.strftime('%Y-%m-%d %H:%M')}\n")
        f.write(f"machine: 2 vCPU VM (nproc {m['nproc']}), CPU {m['cpu']}, kernel "
                f"{m['kernel']}\n")
        f.write(f"commit: {commit()}\n")
        f.write(f"command: /usr/bin/python3 {' '.join(sys.argv)}\n")
        f.write(f"faiss {faiss.__version__}, numpy {np.__version__}, python "
                f"{platform.python_version()}; threads: OMP_NUM_THREADS = "
                f"OPENBLAS_NUM_THREADS = search(threads=) = {args.threads}; wall "
                f"{wall:.0f} s; embcached --shm-size {shm_mb}M; load average (1 min) "
                f"{load[0]:.2f} at the start, {load[1]:.2f} at the end (a shared machine)\n")
        f.write(f"data: Gaussian mixture, {args.centres} centres N(0,1), sigma {args.sigma}, "
                f"seed 1/11; {args.batch} queries from the same mixture (seed 2); synthetic: "
                f"SIFT1M is not reachable offline\n")
        f.write(f"repeats {args.repeats}; 1 query/call: {args.singles} calls per repeat "
                f"({min(args.singles, args.exact_singles)} for exact); "
                f"recall@{args.k} against exact embcache search (the least over repeats)\n")
        for metric in args.metrics.split(","):
            ml = [d for d in lines if d["metric"] == metric]
            if not ml:
                continue
            ex = {d["queries_per_call"]: d for d in ml if d["lib"] == "exact"}
            e = next(d for d in ml if d["lib"] == "embcache")
            fa = next(d for d in ml if d["lib"] == "faiss")
            f.write(f"\n## metric {metric}: nlist {e['nlist']} (list rows {e['list_rows'][0]}"
                    f"..{e['list_rows'][1]}); build: embcache {e['build_s']:.1f} s, FAISS "
                    f"train+add {fa['build_s']:.1f} s\n")
            f.write(f"{'q/call':>6} {'lib':>8} {'nprobe':>6} {'q/s median':>11} "
                    f"{'range':>21} {'recall':>7} {'vs exact':>8}\n")
            for d in sorted(ml, key=lambda d: (d["queries_per_call"], d["nprobe"],
                                               d["lib"] != "exact", d["lib"])):
                base = ex.get(d["queries_per_call"])
                ratio = d["qps_median"] / base["qps_median"] if base else float("nan")
                f.write(f"{d['queries_per_call']:>6} {d['lib']:>8} {d['nprobe'] or '-':>6} "
                        f"{d['qps_median']:>11.1f} {d['qps_min']:>10.1f}-{d['qps_max']:<10.1f} "
                        f"{d['recall']:>7.4f} {ratio:>7.1f}x\n")
        f.write("\n")


if __name__ == "__main__":
    main()
