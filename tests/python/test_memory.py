"""Shared memory is paid once: N worker processes reading one table through
embcache add about one table of memory in total (PSS, from
/proc/PID/smaps_rollup), while N workers that np.load it pay N tables."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import MODEL

pytestmark = pytest.mark.memory

MIB = 1 << 20
N = 4


def pss(pid: int) -> int:
    """Proportional set size of a process, in bytes."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no Pss in /proc/{pid}/smaps_rollup")


def run_workers(args, n):
    """Start n workers, then let them load the table one at a time.

    Returns (their PSS deltas once all hold the table, the first worker's
    delta while it alone held it, the sums they printed)."""
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
                alone = pss(p.pid) - base[0]
        deltas = [pss(p.pid) - b for p, b in zip(procs, base)]
        return deltas, alone, sums
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
    d = make_daemon(shm_size="256M")
    d.start()
    d.import_files(MODEL, 1, [path], partition_bytes=1 << 20)

    ec, ec_alone, ec_sums = run_workers(["embcache", d.socket, MODEL, "big"], N)
    daemon_pss = pss(d.pid) + pss(d.worker_pid)   # the keeper and its worker
    npl, np_alone, np_sums = run_workers(["npload", str(path)], N)

    assert ec_sums == [expected] * N and np_sums == [expected] * N
    ec_total, np_total = sum(ec), sum(npl)
    with capsys.disabled():
        print(f"\n  table {size / MIB:.0f} MiB, {N} workers; PSS added by the table, MiB:"
              f"\n    embcache: each {[round(x / MIB, 1) for x in ec]}, total "
              f"{ec_total / MIB:.1f}, one worker alone {ec_alone / MIB:.1f}, "
              f"{N} over one {(ec_total - ec_alone) / MIB:.1f}; embcached "
              f"{daemon_pss / MIB:.1f}"
              f"\n    np.load:  each {[round(x / MIB, 1) for x in npl]}, total "
              f"{np_total / MIB:.1f}, one worker alone {np_alone / MIB:.1f}, "
              f"{N} over one {(np_total - np_alone) / MIB:.1f}")
    # Through embcache the workers share one copy (with the daemon, which maps
    # it too): together they account for at most one table ...
    assert ec_total < 1.1 * size
    # ... so N workers cost well under a table more than one worker does,
    assert ec_total - ec_alone < 0.5 * size
    # while loading it in each worker pays it N times (the measurement sees copies).
    assert np_total > 0.9 * N * size
    assert np_total - np_alone > 0.9 * (N - 1) * size
