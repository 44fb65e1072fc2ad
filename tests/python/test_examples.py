"""The examples in python/examples run, at small sizes."""

import re
import subprocess
import sys

import pytest

from conftest import EMBCACHED, MODEL, REPO

pytest.importorskip("torch")
EXAMPLES = REPO / "python" / "examples"


def test_launch(tables):
    r = subprocess.run([sys.executable, str(EXAMPLES / "launch.py"), "--workers", "2",
                        "--rows", "20000", "--dim", "32", "--requests", "20",
                        "--embcached", EMBCACHED], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "outputs identical in all three rounds: yes" in r.stdout
    # Three rounds: embcache, the shared mmap, private copies. At this size the
    # daemon's fixed cost outweighs the table; test_memory.py weighs them.
    ratios = [float(x) for x in re.findall(r"= ([0-9.]+) x the table", r.stdout)]
    assert len(ratios) == 3 and ratios[1] < ratios[2], r.stdout


def test_worker_standalone(tables):
    r = subprocess.run([sys.executable, str(EXAMPLES / "worker.py"), "--socket",
                        tables.daemon.socket, "--model", MODEL, "--tensor", "emb_f32",
                        "--requests", "5"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.search(r"5 requests of 32 bags x 8 ids: p50 [0-9.]+ us", r.stdout), r.stdout
