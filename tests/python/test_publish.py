"""Client.publish, Client.pull and Client.unpublish (ec_model_publish / ec_model_pull /
ec_model_unpublish) through a local Redis Cluster started with tests/redis/cluster.sh: a
version published by one daemon is pulled by another and reads the same, byte for byte; a
pull of a version that exists raises ExistsError; once unpublished, the puller keeps its
copy and no other daemon can pull it. Skipped only where redis-server or redis-cli is not installed."""

import random
import shutil
import socket
import subprocess

import numpy as np
import pytest

import embcache

from conftest import REPO

CLUSTER_SH = REPO / "tests" / "redis" / "cluster.sh"


def _free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture
def cluster(tmp_path):
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.skip("redis-server or redis-cli is not installed")
    d = tmp_path / "cluster"
    for _ in range(5):
        base = random.randrange(20000, 40000)
        if all(_free(base + i) and _free(base + 10000 + i) for i in range(6)):
            if subprocess.run(["bash", str(CLUSTER_SH), "start", str(d), str(base)],
                              capture_output=True).returncode == 0:
                break
            subprocess.run(["bash", str(CLUSTER_SH), "stop", str(d)], capture_output=True)
    else:
        pytest.fail("could not start a Redis cluster with tests/redis/cluster.sh")
    try:
        yield f"redis-cluster://127.0.0.1:{base},127.0.0.1:{base + 1}"
    finally:
        subprocess.run(["bash", str(CLUSTER_SH), "stop", str(d)], capture_output=True)


def test_publish_then_pull(make_daemon, tmp_path, cluster):
    a, b = make_daemon().start(), make_daemon().start()
    src = np.random.default_rng(9).standard_normal((3000, 24)).astype(np.float32)
    p = tmp_path / "emb.npy"
    np.save(p, src)
    a.import_files("m", 3, [p])
    with embcache.connect(a.socket) as ca, embcache.connect(b.socket) as cb:
        got = ca.publish("m", 3, cluster)
        assert got == {"version": 3, "tensors": 1, "bytes": src.nbytes}
        pulled = cb.pull("m", 3, cluster)
        assert pulled["tensors"] == 1 and pulled["bytes"] == src.nbytes
        rows = cb.tensor("m", "emb", version=3).gather(np.arange(3000))
        np.testing.assert_array_equal(rows, src)
        with pytest.raises(embcache.ExistsError):
            cb.pull("m", 3, cluster)
        with pytest.raises(embcache.NotFoundError):
            cb.pull("m", 4, cluster)
        # off the cluster again: b keeps its copy, nothing more can be pulled
        assert ca.unpublish("m", 3, cluster) == {"version": 3, "tensors": 1,
                                                 "bytes": src.nbytes}
        with pytest.raises(embcache.NotFoundError):
            ca.unpublish("m", 3, cluster)
        np.testing.assert_array_equal(cb.tensor("m", "emb", version=3).gather(np.arange(3000)),
                                      src)
    c = make_daemon().start()
    with embcache.connect(c.socket) as cc, pytest.raises(embcache.NotFoundError):
        cc.pull("m", 3, cluster)


def test_the_daemons_remote_is_the_default_cluster(make_daemon, tmp_path, cluster):
    a = make_daemon().start()
    c = make_daemon(extra=["--remote", cluster]).start()
    src = np.arange(4096 * 8, dtype=np.float32).reshape(4096, 8)
    p = tmp_path / "t.npy"
    np.save(p, src)
    a.import_files("m", 1, [p])
    with embcache.connect(a.socket) as ca, embcache.connect(c.socket) as cc:
        # a daemon without --remote says what to do when no cluster is named
        with pytest.raises(embcache.InvalidArgumentError, match="--remote"):
            ca.publish("m", 1)
        ca.publish("m", 1, cluster)
        assert cc.pull("m", 1)["tensors"] == 1          # through c's --remote
        np.testing.assert_array_equal(cc.tensor("m", "t", version=1).gather(np.arange(4096)),
                                      src)
    # the CLI too: no --cluster, no $EMBCACHE_CLUSTER
    out = c.cli("pull", "m", "1", check=False)
    assert out.returncode == 6, out.stderr                # exists already


def test_lazy_pull_reads_from_the_cluster(make_daemon, tmp_path, cluster):
    a = make_daemon().start()
    b = make_daemon(extra=["--remote", cluster]).start()
    src = np.random.default_rng(5).standard_normal((5000, 32)).astype(np.float32)
    p = tmp_path / "lazy.npy"
    np.save(p, src)
    a.import_files("m", 7, [p])
    with embcache.connect(a.socket) as ca, embcache.connect(b.socket) as cb:
        ca.publish("m", 7, cluster)
        pulled = cb.pull("m", 7, lazy=True)   # b's own --remote
        assert pulled["tensors"] == 1 and 0 < pulled["bytes"] < src.nbytes
        rows = cb.tensor("m", "lazy", version=7).gather(np.arange(5000))
        np.testing.assert_array_equal(rows, src)
        stats = cb.stats()
        assert stats["remote_reads"] > 0 and stats["remote_bytes"] >= src.nbytes
