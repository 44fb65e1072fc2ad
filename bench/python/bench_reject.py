#!/usr/bin/env python3
"""What a request for a tensor that does not exist costs the daemon.

    bench/python/bench_reject.py [--build DIR] [--requests N] [--repeat R]
                                 [--record FILE]

embcached serves every connection from one thread, so the CPU time it
spends refusing names that do not exist (a typo in a config, a scanner, a
flood) is time taken from everyone else. This starts the build's embcached
on a temporary data directory, imports a model with --tensors small tensors
(so the catalog has names to search) and then, per repeat, sends --requests
resolves of each kind and reads the daemon worker's CPU time (utime + stime
of /proc/PID/stat, before and after) to report its CPU microseconds per
request:

- unknown tensor: a model that exists, a tensor name it never had;
- unknown model: a model name that was never imported;
- known tensor: a tensor that exists (for scale; the client caches nothing,
  each call is a RESOLVE round trip).

Each name is new (a counter in it), so no cache of recent answers helps.
Reported: median and range over the repeats. The client's own time is not
counted: only the daemon's.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_binding import REPO, machine, setup_package  # noqa: E402


def cpu_us(pid: int) -> float:
    """utime + stime of a process, in microseconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1e6 / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.environ.get("EMBCACHE_BUILD_DIR", str(REPO / "build")))
    ap.add_argument("--requests", type=int, default=50000, help="per kind and repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tensors", type=int, default=64)
    ap.add_argument("--record", help="write a recorded run here: machine header + output")
    args = ap.parse_args()

    build = Path(args.build).resolve()
    embcache = setup_package(build)
    lines = machine()
    lines.append("# " + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]))
    try:  # the daemon's own source tree and commit, which may not be this one's
        home = [l.split("=", 1)[1] for l in (build / "CMakeCache.txt").read_text().splitlines()
                if l.startswith("CMAKE_HOME_DIRECTORY:")][0]
        rev = subprocess.run(["git", "-C", home, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        lines.append(f"# embcached and libembcache: {build}, built from {home} at {rev}")
    except (OSError, IndexError):
        pass

    def emit(s=""):
        print(s, flush=True)
        lines.append(s)

    tmp = Path(tempfile.mkdtemp(prefix="ecreject-", dir="/tmp"))
    sock = str(tmp / "s.sock")
    data = tmp / "data"
    daemon = subprocess.Popen([str(build / "embcached"), "--data-dir", str(data), "--socket",
                               sock, "--shm-size", "64M", "-q"])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                c = embcache.connect(sock)
                break
            except embcache.ConnectionError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    sys.exit("bench_reject.py: embcached did not start")
                time.sleep(0.02)
        files = []
        for i in range(args.tensors):
            p = tmp / f"t{i:03d}.npy"
            np.save(p, np.zeros((16, 8), dtype=np.float32))
            files.append(p)
        c.import_model("m", 1, files)
        c.alias("m", "current", 1)
        worker = int((data / "embcached.lock").read_text().split()[0])
        emit(f"bench_reject: {args.requests} requests per kind and repeat, {args.repeat} "
             f"repeats; model 'm' has {args.tensors} tensors; daemon worker pid {worker}")

        def unknown_tensor(i):
            c.tensor("m", f"nope{i}", "current")

        def unknown_model(i):
            c.tensor(f"nomodel{i}", "t000", "current")

        def known(i):
            c.tensor("m", f"t{i % args.tensors:03d}", "current")

        kinds = [("unknown tensor", unknown_tensor, True), ("unknown model", unknown_model, True),
                 ("known tensor", known, False)]
        per = {k[0]: [] for k in kinds}
        n = 0
        for _ in range(args.repeat):
            for name, fn, fails in kinds:
                before = cpu_us(worker)
                for _ in range(args.requests):
                    n += 1
                    try:
                        fn(n)
                        assert not fails, f"{name}: resolve {n} succeeded"
                    except embcache.NotFoundError:
                        assert fails, f"{name}: resolve {n} failed"
                per[name].append((cpu_us(worker) - before) / args.requests)
        emit("kind              daemon CPU us/request: median  [min, max]")
        for name, v in per.items():
            emit(f"{name:<17} {statistics.median(v):8.2f}  [{min(v):.2f}, {max(v):.2f}]")
        st = c.stats()
        emit("stats: " + ", ".join(f"{k}={st[k]}" for k in sorted(st)
                                   if k.startswith("resolve")))
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(tmp)])
    if args.record:
        Path(args.record).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
