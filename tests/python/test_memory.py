"""Shared memory is paid once, counted on the whole host.

N worker processes read one table three ways: through embcache views, through
np.load(mmap_mode='r') of the same .npy (one copy in the page cache, shared:
the fair baseline), and through np.load (a private copy each). What the table
costs the host is the PSS (/proc/PID/smaps_rollup: a page shared by k
processes counts 1/k in each, so it adds up) that the workers gained by
loading it, plus, for embcache, the daemon's processes (the keeper and its
worker) in full and the pages of its segment that no process maps (the daemon
reserves the whole segment at start: memory, but in nobody's PSS).

The daemon's segment is sized for the table (as python/examples/launch.py
sizes it), so embcache may cost more than the shared mapping by what the
segment holds beside the table -- its header and indexes (about 5% of the
segment), the 16 MiB staging area for tensors cached by rows, and the spare
-- and by the daemon's own memory (heap, catalog, code: a few MiB). The test
allows exactly that, `segment - table + DAEMON_OWN`, and no more: a daemon
that kept a second copy of the table anywhere, or a client that copied it,
fails it. The mmap baseline must come to one table, and the private copies to
about N.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import embcache
from conftest import MODEL

pytestmark = pytest.mark.memory

MIB = 1 << 20
N = 4
DAEMON_OWN = 16 * MIB       # the daemon's processes beyond the segment

# The whole-host accounting is launch.py's, so the test and the recorded
# example measure the same way: PSS of a process and of its segment mapping,
# and the segment size launch.py gives a table.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python" / "examples"))
from launch import pss, segment_pss, segment_size_for  # noqa: E402


class Host:
    """What the table costs the host at a moment: the workers' PSS gained
    since their base line, plus the daemon's processes and the segment pages
    no process maps (when there is a daemon)."""

    def __init__(self, daemon=None, segment: int = 0) -> None:
        self.daemon_pids = [daemon.pid, daemon.worker_pid] if daemon else []
        self.segment = segment

    def cost(self, procs, base):
        workers = sum(pss(p.pid) - b for p, b in zip(procs, base))
        daemon = sum(pss(p) for p in self.daemon_pids)
        unmapped = 0
        if self.segment:
            mapped = sum(segment_pss(p) for p in self.daemon_pids + [p.pid for p in procs])
            unmapped = max(0, self.segment - mapped)
        return {"total": workers + daemon + unmapped, "workers": workers, "daemon": daemon,
                "unmapped": unmapped}


def run_workers(args, n, host: Host):
    """Start n workers, then let them load the table one at a time.

    Returns (the host's cost once all hold the table, its cost while the first
    alone held it, each worker's PSS gain, the sums they printed)."""
    worker = Path(__file__).with_name("memworker.py")
    procs = [subprocess.Popen([sys.executable, str(worker), *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "base"
        base = [pss(p.pid) for p in procs]
        sums, alone = [], None
        for i, p in enumerate(procs):
            p.stdin.write("go\n")
            p.stdin.flush()
            line = p.stdout.readline().split()
            assert line and line[0] == "ready", line
            sums.append(float(line[1]))
            if i == 0:
                alone = host.cost(procs[:1], base[:1])
        every = host.cost(procs, base)
        each = [pss(p.pid) - b for p, b in zip(procs, base)]
        return every, alone, each, sums
    finally:
        for p in procs:
            try:
                p.stdin.write("exit\n")
                p.stdin.close()
            except OSError:
                pass
        for p in procs:
            if p.wait(timeout=60) != 0:
                raise AssertionError(f"worker exited with {p.returncode}")


def test_shared_memory_is_paid_once(make_daemon, tmp_path, capsys):
    rows, dim = 196608, 128                       # 96 MiB of f32
    table = np.random.default_rng(3).standard_normal((rows, dim), dtype=np.float32)
    size = table.nbytes
    path = tmp_path / "big.npy"
    np.save(path, table)
    expected = float(table.sum(dtype=np.float64))
    del table
    segment = segment_size_for(size)
    d = make_daemon(shm_size=str(segment))
    d.start()
    d.import_files(MODEL, 1, [path], partition_bytes=1 << 20)
    with embcache.connect(d.socket) as c:         # resident, in one piece, before the
        c.cache_mode(MODEL, "partitions")         # workers come: the daemon's own pin
        p = c.prewarm(MODEL, 1, pin=True)
        assert p["done"] == p["partitions"] and not p["failed"], p
        reserved = c.stats()["segment_bytes"]     # what the daemon really reserved

    ec, ec_alone, ec_each, ec_sums = run_workers(["embcache", d.socket, MODEL, "big"], N,
                                                 Host(d, reserved))
    mm, mm_alone, mm_each, mm_sums = run_workers(["mmap", str(path)], N, Host())
    pv, pv_alone, pv_each, pv_sums = run_workers(["npload", str(path)], N, Host())

    assert ec_sums == mm_sums == pv_sums == [expected] * N
    allowed = segment - size + DAEMON_OWN
    with capsys.disabled():
        def show(name, every, alone, each):
            print(f"    {name:<9} {every['total'] / MIB:7.1f} MiB = "
                  f"{every['total'] / size:.2f} tables (one worker alone "
                  f"{alone['total'] / MIB:.1f}); workers {[round(x / MIB, 1) for x in each]}"
                  + (f", embcached {every['daemon'] / MIB:.1f}, segment pages no process "
                     f"maps {every['unmapped'] / MIB:.1f}" if every["daemon"] else ""))
        print(f"\n  table {size / MIB:.0f} MiB, {N} workers, segment {segment / MIB:.0f} MiB; "
              f"what the table costs the host (PSS):")
        show("embcache", ec, ec_alone, ec_each)
        show("mmap", mm, mm_alone, mm_each)
        show("np.load", pv, pv_alone, pv_each)
        print(f"    embcache - mmap {(ec['total'] - mm['total']) / MIB:+.1f} MiB "
              f"(allowed: the segment beside the table {(segment - size) / MIB:.1f} + "
              f"the daemon's own {DAEMON_OWN / MIB:.0f})")
    # The shared mapping pays the table once, and so does embcache -- the
    # daemon and the workers together, the whole segment included -- but for
    # what its segment holds beside the table and the daemon's own memory.
    assert 0.95 * size < mm["total"] < 1.1 * size
    assert ec["total"] > 0.95 * size
    assert ec["total"] < mm["total"] + allowed
    # More workers add next to nothing to either: a page each of page tables.
    assert ec["total"] - ec_alone["total"] < 0.05 * size
    assert mm["total"] - mm_alone["total"] < 0.05 * size
    # Private copies pay it N times (the measurement sees copies).
    assert pv["total"] > 0.95 * N * size
    assert pv["total"] - pv_alone["total"] > 0.95 * (N - 1) * size
