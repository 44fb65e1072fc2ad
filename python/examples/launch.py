#!/usr/bin/env python3
"""Start one embcached and N inference workers on one table; print each
worker's latency and the host memory it costs, next to the baseline where
every worker np.load's the table itself.

    python/examples/launch.py                          # 4 workers, a 24 MiB table
    python/examples/launch.py --workers 8 --rows 1000000 --dim 256   # 977 MiB

It creates a random float32 table (--rows x --dim) as a .npy file, starts
embcached on a temporary data directory and socket (the one of the build
tree, or --embcached PATH), imports the table as model "example" version 1
(alias "current") through the Python API, then runs two rounds of --workers
processes of worker.py:

1. through embcache: each worker maps the daemon's one copy of the table;
2. the baseline: each worker np.load's the .npy file into its own memory.

Memory is the proportional set size (PSS, /proc/PID/smaps_rollup): a page
shared by k processes counts 1/k in each, so PSS adds up to what the host
really pays. For each worker it is read after start-up ("started"), once the
table is in place ("ready"; with --touch-all, the default, every page of the
table has been read by then) and after serving ("served"). Both rounds serve
the same requests through the same model; their outputs are compared.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
try:
    import embcache
except ImportError:  # run from the source tree: the package is next door
    sys.path.insert(0, str(HERE.parent))
    import embcache

MIB = 1 << 20


def pss(pid: int) -> int:
    """A process's proportional set size in bytes."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def find_embcached(arg):
    for cand in [arg, os.environ.get("EMBCACHED")] + [
            str(REPO / b / "embcached") for b in ("build", "build-py")] + [
            shutil.which("embcached")]:
        if cand and os.access(cand, os.X_OK):
            return cand
    sys.exit("launch.py: embcached not found: build it (cmake --build build) or pass "
             "--embcached PATH")


def find_library():
    """Make sure the workers can load libembcache (a source-tree run)."""
    try:
        return embcache.library_path()
    except embcache.LibraryError:
        for b in ("build", "build-py"):
            lib = REPO / b / "libembcache.so"
            if lib.exists():
                os.environ["EMBCACHE_LIBRARY"] = str(lib)
                return embcache.library_path()
        raise


class Worker:
    def __init__(self, args, extra):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(embcache.__file__).resolve().parents[1])] +
            [p for p in [env.get("PYTHONPATH")] if p])
        cmd = [sys.executable, str(HERE / "worker.py"), "--control",
               "--requests", str(args.requests), "--batch", str(args.batch),
               "--bag", str(args.bag), "--seed", "7", *extra]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=env)
        self.pss = {}
        self.result = {}

    def expect(self, event):
        line = self.p.stdout.readline()
        if not line:
            sys.exit(f"launch.py: worker {self.p.pid} exited ({self.p.wait()}) before "
                     f"'{event}'")
        msg = json.loads(line)
        if msg["event"] != event:
            sys.exit(f"launch.py: worker {self.p.pid} said {msg}, expected {event}")
        return msg

    def send(self, word):
        self.p.stdin.write(word + "\n")
        self.p.stdin.flush()


def run_round(args, extra):
    """Start the workers, load, serve; PSS at each step. Returns the workers."""
    workers = [Worker(args, extra) for _ in range(args.workers)]
    try:
        for w in workers:
            w.expect("started")
            w.pss["started"] = pss(w.p.pid)
        for w in workers:                       # one at a time: a fair "ready"
            w.send("load")
            w.expect("ready")
        for w in workers:
            w.pss["ready"] = pss(w.p.pid)
        for w in workers:
            w.send("go")
        for w in workers:
            w.result = w.expect("done")
            w.pss["served"] = pss(w.p.pid)
    finally:
        for w in workers:
            try:
                w.send("exit")
            except OSError:
                pass
        for w in workers:
            w.p.wait()
    return workers


def report(title, workers, table_bytes, daemon_pss=None):
    print(f"\n{title}")
    print(f"  {'worker':>6} {'pid':>7} {'p50 us':>9} {'p99 us':>9} {'mean us':>9} "
          f"{'PSS MiB':>8} {'table MiB':>9}")
    for i, w in enumerate(workers):
        r = w.result
        print(f"  {i:>6} {w.p.pid:>7} {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} "
              f"{r['mean_us']:>9.1f} {w.pss['served'] / MIB:>8.1f} "
              f"{(w.pss['ready'] - w.pss['started']) / MIB:>9.1f}")
    total = sum(w.pss["served"] for w in workers)
    table = sum(w.pss["ready"] - w.pss["started"] for w in workers)
    line = (f"  all {len(workers)} workers: PSS {total / MIB:.1f} MiB, of which the table "
            f"{table / MIB:.1f} MiB = {table / table_bytes:.2f} x the table")
    if daemon_pss is not None:
        line += f"; embcached {daemon_pss / MIB:.1f} MiB (its segment)"
    print(line)
    return total, table


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32, help="bags per request")
    ap.add_argument("--bag", type=int, default=8, help="ids per bag")
    ap.add_argument("--no-touch-all", dest="touch_all", action="store_false",
                    help="embcache workers do not read the whole table before serving "
                         "(then only the pages their requests touch count)")
    ap.add_argument("--embcached", help="the daemon binary (default: the build tree's)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    embcached = find_embcached(args.embcached)
    lib = find_library()
    tmp = Path(tempfile.mkdtemp(prefix="embcache-example-", dir="/tmp"))
    sock = str(tmp / "embcached.sock")
    table_bytes = args.rows * args.dim * 4
    print(f"launch.py: table {args.rows} x {args.dim} float32 ({table_bytes / MIB:.1f} MiB), "
          f"{args.workers} workers, {args.requests} requests of {args.batch} bags x "
          f"{args.bag} ids each")
    print(f"launch.py: {embcached}, {lib}")
    daemon = None
    try:
        npy = tmp / "emb.npy"
        rng = np.random.default_rng(0)
        np.save(npy, rng.standard_normal((args.rows, args.dim), dtype=np.float32))
        shm = max(64 * MIB, 2 * table_bytes + 32 * MIB)
        daemon = subprocess.Popen([embcached, "--data-dir", str(tmp / "data"), "--socket", sock,
                                   "--shm-size", str(shm), "-q"])
        deadline = time.monotonic() + 20
        while True:                                  # until it answers
            try:
                client = embcache.connect(sock)
                break
            except embcache.ConnectionError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    sys.exit("launch.py: embcached did not start")
                time.sleep(0.02)
        with client:
            client.import_model("example", 1, [npy], params={"rows": args.rows,
                                                             "dim": args.dim})
            client.alias("example", "current", 1)
            client.prewarm("example", "current")
        print(f"launch.py: embcached pid {daemon.pid} serves {sock}; model example version 1")

        extra = ["--socket", sock] + (["--touch-all"] if args.touch_all else [])
        ec = run_round(args, extra)
        daemon_pss = pss(daemon.pid)
        ec_total, ec_table = report("through embcache (one copy, in embcached's shared memory):",
                                    ec, table_bytes, daemon_pss)
        base = run_round(args, ["--npy", str(npy)])
        np_total, np_table = report("baseline (each worker np.load's the table):", base,
                                    table_bytes)
        same = all(a.result["checksum"] == b.result["checksum"] for a, b in zip(ec, base))
        print(f"\nthe table costs the workers {ec_table / MIB:.1f} MiB through embcache and "
              f"{np_table / MIB:.1f} MiB loaded by each ({np_table / max(ec_table, 1):.1f}x); "
              f"outputs identical: {'yes' if same else 'NO'}")
        if not same:
            sys.exit(1)
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait()
        if args.keep:
            print(f"launch.py: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
