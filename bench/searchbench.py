#!/usr/bin/env python3
"""Exact top-k search: embcache's Tensor.search (ec_search) next to FAISS's
IndexFlatIP on the same table, queries, machine and threads.

    /usr/bin/python3 bench/searchbench.py [--build DIR] [--rows N] [--dim D] [-k K]
        [--batch B] [--singles S] [--repeats R] [--threads 1,2] [--record FILE]

What it does:

- writes a --rows x --dim f32 table of standard normal values (seed 1) to a
  .npy in a temporary directory, chunk by chunk (the whole table is never
  held in this process), starts the build's embcached on it with a segment
  just large enough (the table + 25%, at least 256 MiB), imports it, and
  removes the .npy;
- for each thread count T of --threads, runs a worker process with
  OMP_NUM_THREADS=T and OPENBLAS_NUM_THREADS=T (FAISS's OpenMP, and the
  OpenBLAS that both FAISS and libembcache call) and search(threads=T). The
  worker maps the table read-only through Tensor.view() (zero copy: the
  numpy reference reads it there) and gives FAISS its own copy
  (IndexFlatIP.add);
- times, --repeats times, alternating which library goes first: --singles
  calls of 1 query each, and one call of --batch queries; queries/s per
  repeat, reported as the median and the range;
- checks recall@k of both against a numpy reference: float32 products over
  the mapped table for candidates, rescored in float64; ties (equal float32
  scores) go to the smaller id, as ec_search orders them.

One JSON object per line on stdout; --record appends a plain-text summary
with the machine, the commit and the command. Run it with Debian's
/usr/bin/python3 (python3-numpy, python3-faiss) and a Release build (default
build-rel, else --build).
"""

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL, TENSOR = "searchbench", "emb"


def setup_package(build: Path):
    os.environ.setdefault("EMBCACHE_LIBRARY", str(build / "libembcache.so"))
    staged = build / "python"
    sys.path.insert(0, str(staged if (staged / "embcache").is_dir() else REPO / "python"))
    import embcache
    return embcache


# ---------------------------------------------------------------------------
# The reference

def reference_topk(x, q, k, chunk=32768, extra=32):
    """Exact top-k by inner product: float32 products chunk by chunk keep the
    k + extra best per query; those are rescored in float64 (rounded to
    float32, as ec_search compares) and ordered by (score desc, id asc)."""
    nq = len(q)
    keep = k + extra
    best_s = np.full((nq, 0), -np.inf, np.float32)
    best_i = np.zeros((nq, 0), np.int64)
    for r0 in range(0, x.shape[0], chunk):
        s = q @ x[r0:r0 + chunk].T
        m = min(keep, s.shape[1])
        part = np.argpartition(-s, m - 1, axis=1)[:, :m]
        best_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)
        best_i = np.concatenate([best_i, part + r0], 1)
        if best_s.shape[1] > keep:
            top = np.argpartition(-best_s, keep - 1, axis=1)[:, :keep]
            best_s = np.take_along_axis(best_s, top, 1)
            best_i = np.take_along_axis(best_i, top, 1)
    out = np.empty((nq, k), np.int64)
    q64 = q.astype(np.float64)
    for i in range(nq):
        ids = best_i[i]
        exact = (x[ids].astype(np.float64) @ q64[i]).astype(np.float32)
        order = np.lexsort((ids, -exact))
        out[i] = ids[order[:k]]
    return out


def recall(ids, ref):
    k = ref.shape[1]
    return float(np.mean([len(set(a[:k].tolist()) & set(b.tolist())) / k
                          for a, b in zip(ids, ref)]))


# ---------------------------------------------------------------------------
# The worker: one thread count

def worker(args):
    import faiss
    embcache = setup_package(Path(args.build))
    T = args.worker_threads
    faiss.omp_set_num_threads(T)
    rng = np.random.default_rng(2)
    qb = rng.standard_normal((args.batch, args.dim)).astype(np.float32)
    qs = rng.standard_normal((args.singles, args.dim)).astype(np.float32)
    with embcache.connect(args.socket) as c:
        t = c.tensor(MODEL, TENSOR, version=1)
        view = t.view()
        x = view.numpy()                      # the segment itself, read-only
        t.search(qs[:1], args.k, threads=T)   # faults the table in
        index = faiss.IndexFlatIP(args.dim)
        index.add(x)                          # FAISS's own copy
        ref_b = reference_topk(x, qb, args.k)
        ref_s = reference_topk(x, qs, args.k)

        def ec_single():
            out = np.empty((len(qs), args.k), np.int64)
            for i in range(len(qs)):
                out[i] = t.search(qs[i], args.k, threads=T)[1]
            return out

        def fa_single():
            out = np.empty((len(qs), args.k), np.int64)
            for i in range(len(qs)):
                out[i] = index.search(qs[i:i + 1], args.k)[1][0]
            return out

        runs = {
            ("embcache", 1): (ec_single, len(qs), ref_s),
            ("faiss", 1): (fa_single, len(qs), ref_s),
            ("embcache", args.batch): (lambda: t.search(qb, args.k, threads=T)[1],
                                       len(qb), ref_b),
            ("faiss", args.batch): (lambda: index.search(qb, args.k)[1], len(qb), ref_b),
        }
        qps = {key: [] for key in runs}
        rec = {}
        for r in range(args.repeats):
            for per_call in (1, args.batch):
                order = ("embcache", "faiss") if r % 2 == 0 else ("faiss", "embcache")
                for lib in order:
                    fn, n, ref = runs[(lib, per_call)]
                    t0 = time.perf_counter()
                    ids = fn()
                    dt = time.perf_counter() - t0
                    qps[(lib, per_call)].append(n / dt)
                    rec[(lib, per_call)] = min(rec.get((lib, per_call), 1.0), recall(ids, ref))
        for (lib, per_call), v in qps.items():
            print(json.dumps({
                "lib": lib, "queries_per_call": per_call, "threads": T,
                "rows": args.rows, "dim": args.dim, "k": args.k, "metric": "ip",
                "repeats": args.repeats,
                "calls_per_repeat": len(qs) if per_call == 1 else 1,
                "qps_median": float(np.median(v)), "qps_min": float(min(v)),
                "qps_max": float(max(v)), "recall": rec[(lib, per_call)],
            }), flush=True)
        del index
        view.release()


# ---------------------------------------------------------------------------
# The parent: table, daemon, workers, record

def write_table(path: Path, rows: int, dim: int):
    rng = np.random.default_rng(1)
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for r0 in range(0, rows, 65536):
        n = min(65536, rows - r0)
        a[r0:r0 + n] = rng.standard_normal((n, dim), dtype=np.float32)
    a.flush()
    del a


def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release()}


def run_worker(cmd, env, what):
    """Run a bench worker; its JSON lines, echoed as they are parsed."""
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    if out.returncode:
        sys.exit(f"{what} exited {out.returncode}")
    lines = []
    for line in out.stdout.splitlines():
        print(line, flush=True)
        lines.append(json.loads(line))
    return lines


def start_daemon(build, tmp, shm_mb):
    """Start the bench's embcached in tmp with a segment of shm_mb MiB and wait
    until it accepts clients; returns (its Popen, its socket path). The caller
    has run setup_package."""
    import embcache
    sock = str(tmp / "s.sock")
    log = open(tmp / "embcached.log", "wb")
    daemon = subprocess.Popen([str(build / "embcached"), "--data-dir", str(tmp / "data"),
                               "--socket", sock, "--shm-size", f"{shm_mb}M"],
                              stdout=log, stderr=log)
    for _ in range(2000):
        try:
            embcache.connect(sock, reconnect=False).close()
            break
        except embcache.EmbcacheError:
            time.sleep(0.01)
    return daemon, sock


def stop_daemon(daemon):
    """SIGTERM the bench's embcached (None: none was started) and wait."""
    if daemon is None:
        return
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.kill()


def commit():
    try:
        h = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                               capture_output=True, text=True).stdout.strip()
        return h + (" + uncommitted tree" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=str(REPO / "build-rel"))
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--singles", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--record")
    ap.add_argument("--socket", help=argparse.SUPPRESS)
    ap.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_threads:
        return worker(args)

    build = Path(args.build)
    if not (build / "embcached").exists():
        sys.exit(f"searchbench: {build}/embcached not found: build Release there "
                 f"(cmake -DCMAKE_BUILD_TYPE=Release) or pass --build")
    embcache = setup_package(build)
    tmp = Path(tempfile.mkdtemp(prefix="ecsearch-", dir="/tmp"))
    daemon = None
    lines = []
    try:
        src = tmp / f"{TENSOR}.npy"
        write_table(src, args.rows, args.dim)
        need = args.rows * args.dim * 4
        shm_mb = max(256, (need * 5 // 4 + (1 << 20) - 1) >> 20)
        daemon, sock = start_daemon(build, tmp, shm_mb)
        with embcache.connect(sock) as c:
            c.import_model(MODEL, 1, [src])
        src.unlink()
        for T in [int(x) for x in args.threads.split(",")]:
            env = dict(os.environ, OMP_NUM_THREADS=str(T), OPENBLAS_NUM_THREADS=str(T))
            cmd = [sys.executable, __file__, "--build", str(build), "--socket", sock,
                   "--worker-threads", str(T), "--rows", str(args.rows), "--dim",
                   str(args.dim), "-k", str(args.k), "--batch", str(args.batch),
                   "--singles", str(args.singles), "--repeats", str(args.repeats)]
            lines += run_worker(cmd, env, f"searchbench: worker ({T} threads)")
    finally:
        stop_daemon(daemon)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.record:
        record(args, lines)


def record(args, lines):
    import faiss
    m = machine()
    by = {(d["lib"], d["queries_per_call"], d["threads"]): d for d in lines}
    with open(args.record, "a") as f:
        f.write(f"# searchbench: exact top-{args.k} inner product, {args.rows} x {args.dim} "
                f"f32, {time.strftime('%Y-%m-%d %H:%M')}\n")
        f.write(f"machine: nproc {m['nproc']}, CPU {m['cpu']}, kernel {m['kernel']}\n")
        f.write(f"commit: {commit()}\n")
        f.write(f"command: /usr/bin/python3 {' '.join(sys.argv)}\n")
        f.write(f"faiss {faiss.__version__} (IndexFlatIP), numpy {np.__version__}, python "
                f"{platform.python_version()}; threads: OMP_NUM_THREADS = "
                f"OPENBLAS_NUM_THREADS = search(threads=) = T\n")
        f.write(f"repeats {args.repeats}; 1 query/call: {args.singles} calls per repeat\n")
        f.write(f"{'T':>2} {'q/call':>6} {'lib':>8} {'q/s median':>11} {'range':>21} "
                f"{'recall':>7} {'vs faiss':>8}\n")
        for (lib, per_call, T), d in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][1],
                                                                        kv[0][0])):
            fa = by.get(("faiss", per_call, T))
            ratio = d["qps_median"] / fa["qps_median"] if fa else float("nan")
            f.write(f"{T:>2} {per_call:>6} {lib:>8} {d['qps_median']:>11.1f} "
                    f"{d['qps_min']:>10.1f}-{d['qps_max']:<10.1f} {d['recall']:>7.4f} "
                    f"{ratio:>7.2f}x\n")
        f.write("\n")


if __name__ == "__main__":
    main()
