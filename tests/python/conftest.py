"""Fixtures of the Python tests: the binaries of a build, private daemons, and
the source arrays of the imported tables.

The binaries come from $EMBCACHE_TEST_EMBCACHED / $EMBCACHE_TEST_CLI (ctest
sets them, with PYTHONPATH pointing at the package staged in the build tree),
else from $EMBCACHE_BUILD_DIR or build/ of this checkout, in which case the
package is taken from python/ and the library from that build directory.

Every daemon runs on a temporary data directory and socket; its segment
goes with it (nothing is ever left in /dev/shm); daemons are stopped by pid.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Sequence

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _setup_paths() -> None:
    if "EMBCACHE_TEST_EMBCACHED" in os.environ:
        return
    build = Path(os.environ.get("EMBCACHE_BUILD_DIR", REPO / "build"))
    os.environ["EMBCACHE_TEST_EMBCACHED"] = str(build / "embcached")
    os.environ["EMBCACHE_TEST_CLI"] = str(build / "embcache")
    os.environ.setdefault("EMBCACHE_LIBRARY", str(build / "libembcache.so"))
    if importlib.util.find_spec("embcache") is None:
        sys.path.insert(0, str(REPO / "python"))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "python")] + [p for p in [os.environ.get("PYTHONPATH")] if p])


_setup_paths()
# Every embcached a test starts (and the examples' launcher) runs with the
# options it is given, not an installed /etc/embcache/embcached.conf: set and
# empty means no configuration file.
os.environ["EMBCACHE_CONFIG"] = ""

import embcache  # noqa: E402

EMBCACHED = os.environ["EMBCACHE_TEST_EMBCACHED"]
CLI = os.environ["EMBCACHE_TEST_CLI"]


# ---------------------------------------------------------------------------
# GPU tests: where every one of them decides to skip

REQUIRE_GPU = os.environ.get("EMBCACHE_REQUIRE_GPU") == "1"


def gpu_present() -> bool:
    """Does this machine have an NVIDIA GPU (a device node, or a GPU the driver
    lists)? EMBCACHE_TEST_GPU_PRESENT=1/0 overrides, as in tests/testutil.c."""
    force = os.environ.get("EMBCACHE_TEST_GPU_PRESENT")
    if force in ("0", "1"):
        return force == "1"
    if os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0"):
        return True
    try:
        return any(not n.startswith(".") for n in os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False


def gpu_unavailable(why: str, missing_feature: bool = False) -> NoReturn:
    """A GPU test that cannot run (why): the rule of tests/testutil.h's
    ect_gpu_unavailable. Fails under EMBCACHE_REQUIRE_GPU=1; skips where the
    machine has no NVIDIA GPU, or where what is missing is a feature rather than
    an error (missing_feature: torch not installed, or built without CUDA);
    fails otherwise: a machine with a GPU that cannot run the test (libembcache
    built without CUDA, a driver that fails) is a failure, not a missing GPU."""
    if REQUIRE_GPU:
        pytest.fail(f"EMBCACHE_REQUIRE_GPU=1, but {why}", pytrace=False)
    if not gpu_present():
        pytest.skip(f"this machine has no NVIDIA GPU ({why})")
    if missing_feature:
        pytest.skip(why)
    pytest.fail(f"this machine has an NVIDIA GPU, but {why}", pytrace=False)


def cuda_torch():
    """torch, when it can reach a GPU; else gpu_unavailable says what happens."""
    try:
        import torch
    except ImportError as e:
        gpu_unavailable(f"torch is not installed for {sys.executable} ({e})",
                        missing_feature=True)
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            gpu_unavailable(f"torch {torch.__version__} was built without CUDA",
                            missing_feature=True)
        gpu_unavailable(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no "
                        f"usable GPU")
    return torch


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """EMBCACHE_PYTEST_SKIPPED_RC=N (ctest's python_gpu): exit N when tests were
    selected and every one was skipped, so that ctest reports the run as
    skipped rather than passed."""
    rc = os.environ.get("EMBCACHE_PYTEST_SKIPPED_RC")
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if rc and exitstatus == 0 and tr is not None:
        st = tr.stats
        if st.get("skipped") and not any(st.get(k) for k in ("passed", "failed", "error",
                                                              "xpassed", "xfailed")):
            session.exitstatus = int(rc)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "memory: the shared-memory PSS test (slow)")
    config.addinivalue_line("markers", "gpu: needs a CUDA device and torch with CUDA")
    for p in (EMBCACHED, CLI):
        if not os.access(p, os.X_OK):
            raise pytest.UsageError(f"{p} is not an executable: build the tree, or set "
                                    f"EMBCACHE_BUILD_DIR / EMBCACHE_TEST_EMBCACHED")


# ---------------------------------------------------------------------------
# Daemons

class Daemon:
    """One embcached on its own data directory and socket."""

    def __init__(self, root: Path, shm_size: str = "128M",
                 extra: Sequence[str] = ()) -> None:
        self.root = root
        self.data = root / "data"
        self.socket = str(root / "s.sock")
        self.log = root / "embcached.log"
        self.shm_size = shm_size
        self.extra = list(extra)
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Daemon":
        args = [EMBCACHED, "--data-dir", str(self.data), "--socket", self.socket,
                "--shm-size", self.shm_size] + self.extra
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        try:
            self._wait_worker(None)
        except BaseException:
            self.stop()  # never leave a daemon behind
            raise
        return self

    def _wait_worker(self, old: Optional[int]) -> int:
        """Poll until a worker other than old answers; its pid."""
        assert self.proc is not None
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embcached exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text()}")
            try:
                w = self.worker_pid
                if w != old:
                    embcache.connect(self.socket, reconnect=False).close()
                    return w
            except (embcache.ConnectionError, ValueError, IndexError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embcached did not answer on {self.socket} in 20 s")
            time.sleep(0.01)

    @property
    def worker_pid(self) -> int:
        """The worker, which serves (the keeper, self.pid, forks it)."""
        return int((self.data / "embcached.lock").read_text().split()[0])

    def crash(self) -> None:
        """kill -9 the worker; the keeper starts another, which serves warm."""
        old = self.worker_pid
        os.kill(old, signal.SIGKILL)
        self._wait_worker(old)

    def restart_worker(self) -> None:
        """SIGUSR2: the keeper stops the worker and starts another, warm."""
        old = self.worker_pid
        os.kill(self.pid, signal.SIGUSR2)
        self._wait_worker(old)

    def stop(self) -> int:
        p, self.proc = self.proc, None
        if p is None:
            return 0
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([CLI, "--socket", self.socket, *args], capture_output=True,
                           text=True, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"embcache {' '.join(args)}: exit {r.returncode}: {r.stderr}")
        return r

    def import_files(self, model: str, version: int, files: Sequence[Path],
                     partition_bytes: int = 4096) -> None:
        self.cli("import", "--model", model, "--version", str(version),
                 "--partition-bytes", str(partition_bytes), *map(str, files))


def short_tmpdir(prefix: str) -> Path:
    # Unix socket paths must stay under 108 bytes: keep them under /tmp.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture
def make_daemon():
    """A factory of private daemons, all stopped and removed at the end."""
    made: List[Daemon] = []

    def make(**kw) -> Daemon:
        d = Daemon(short_tmpdir("ecpy-"), **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()
        shutil.rmtree(d.root, ignore_errors=True)


# ---------------------------------------------------------------------------
# Source tables

def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounded to nearest even (test data only)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: Dict[str, tuple]) -> None:
    """tensors: name -> (safetensors dtype, shape, raw bytes)."""
    header, off, blobs = {}, 0, []
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blobs.append(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


MODEL = "pyt"   # every table below, version 1, alias "current"


def make_sources(rng: np.random.Generator) -> Dict[str, np.ndarray]:
    def ints(dt, shape):
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)

    f32 = rng.standard_normal((1000, 16)).astype(np.float32)
    return {
        "emb_f32": f32,                                     # 64 rows per 4 KiB partition
        "emb_f16": rng.standard_normal((500, 24)).astype(np.float16),
        "emb_f64": rng.standard_normal((300, 5)),
        "emb_i8": ints(np.int8, (200, 7)),
        "emb_u8": ints(np.uint8, (200, 9)),
        "emb_i32": ints(np.int32, (257, 3)),
        "emb_i64": ints(np.int64, (129, 4)),
        "cube": rng.standard_normal((50, 4, 3)).astype(np.float32),
        "vec": rng.standard_normal(100).astype(np.float32),
        "emb_bf16": bf16_bits(rng.standard_normal((400, 16)).astype(np.float32)),
    }


class Tables:
    def __init__(self, daemon: Daemon, src: Dict[str, np.ndarray]) -> None:
        self.daemon = daemon
        self.src = src
        self.model = MODEL


@pytest.fixture(scope="session")
def tables(tmp_path_factory) -> Tables:
    """A session daemon with MODEL version 1 (every table of make_sources,
    bf16 through .safetensors) and model "sw" versions 1 and 2 (alias current
    -> 1), imported with the CLI."""
    root = short_tmpdir("ecpys-")
    d = Daemon(root, shm_size="128M").start()
    files = tmp_path_factory.mktemp("src")
    src = make_sources(np.random.default_rng(1234))
    paths = []
    for name, a in src.items():
        if name == "emb_bf16":
            p = files / "bf.safetensors"
            write_safetensors(p, {name: ("BF16", a.shape, a.tobytes())})
        else:
            p = files / f"{name}.npy"
            np.save(p, a)
        paths.append(p)
    d.import_files(MODEL, 1, paths)
    d.cli("alias", MODEL, "current", "1")
    sw = np.random.default_rng(7)
    for v in (1, 2):
        p = files / f"v{v}" / "w.npy"
        p.parent.mkdir()
        np.save(p, sw.standard_normal((100, 8)).astype(np.float32))
        src[f"sw{v}"] = np.load(p)
        d.import_files("sw", v, [p])
    d.cli("alias", "sw", "current", "1")
    yield Tables(d, src)
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def client(tables: Tables):
    with embcache.connect(tables.daemon.socket) as c:
        yield c


@pytest.fixture(scope="session")
def torch_mod():
    return pytest.importorskip("torch")
