"""Errors: no daemon, closed and released handles, the library not found, the
code-to-exception map, and the bindings against the header."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import embcache
from embcache import _lib
from embcache.errors import error_for
from conftest import MODEL, REPO


def test_no_daemon_names_the_socket_and_the_fix():
    sock = f"/tmp/ecpy-no-daemon-{os.getpid()}/none.sock"    # a directory that is not there
    with pytest.raises(embcache.ConnectionError) as e:
        embcache.connect(sock)
    err = e.value
    assert isinstance(err, ConnectionError) and isinstance(err, OSError)
    assert isinstance(err, embcache.EmbcacheError) and err.code == -8
    assert sock in str(err)
    assert f"embcached --socket {sock}" in str(err)
    assert "EMBCACHE_SOCKET" in str(err)


def test_default_socket_comes_from_the_environment(tables, monkeypatch):
    monkeypatch.setenv("EMBCACHE_SOCKET", tables.daemon.socket)
    with embcache.connect() as c:
        assert c.socket is None
        assert c.tensor(MODEL, "vec").shape == (100,)
    monkeypatch.setenv("EMBCACHE_SOCKET", "/tmp/ecpy-no-such-dir/x.sock")
    with pytest.raises(embcache.ConnectionError, match="/tmp/ecpy-no-such-dir/x.sock"):
        embcache.connect()


def test_client_properties(client):
    assert client.generation >= 1
    assert client.backend in ("cpu", "cuda")
    assert client.device_count >= 0
    assert "NUMA node" in client.topology()
    if client.backend == "cpu":
        assert client.device_count == 0
    assert "generation" not in repr(client) and "Client" in repr(client)


def test_closed_client(tables):
    c = embcache.connect(tables.daemon.socket)
    t = c.tensor(MODEL, "emb_f32")
    with c:
        pass
    assert c.closed
    for call in (lambda: c.tensor(MODEL, "emb_f32"), c.stats, lambda: c.generation):
        with pytest.raises(embcache.ReleasedError, match="closed"):
            call()
    # Handles made before keep working: they hold their own reference.
    assert t.gather([1]).shape == (1, 16)


def test_released_tensor(client):
    t = client.tensor(MODEL, "emb_f32")
    with t:
        pass
    with pytest.raises(embcache.ReleasedError, match="released"):
        t.gather([1])
    with pytest.raises(embcache.ReleasedError):
        t.gather([1], like="numpy", dtype="f16")
    with pytest.raises(embcache.ReleasedError):
        t.view()


def test_bad_names(client):
    with pytest.raises(embcache.InvalidArgumentError, match="model must be a string"):
        client.tensor(None, "x")  # type: ignore[arg-type]
    with pytest.raises(embcache.EmbcacheError):
        client.tensor("x" * 300, "w")


def test_every_code_has_its_class():
    codes = {getattr(_lib, n): n for n in dir(_lib) if re.fullmatch(r"EC_E[A-Z]+", n)}
    assert len(codes) == 21
    for code, name in codes.items():
        e = error_for(code, "msg")
        assert type(e) is not embcache.EmbcacheError, name
        assert e.code == code and e.code_name == name and str(e) == "msg"
    assert isinstance(error_for(-4, "x"), LookupError)
    assert isinstance(error_for(-5, "x"), IndexError)
    assert isinstance(error_for(-13, "x"), PermissionError)
    assert isinstance(error_for(-15, "x"), embcache.StaleError)
    assert isinstance(error_for(-20, "x"), embcache.DeviceError)
    assert isinstance(error_for(-21, "x"), TimeoutError)
    assert type(error_for(-99, "x")) is embcache.EmbcacheError


def test_bindings_match_the_header_and_the_library():
    header = "".join((REPO / "include" / h).read_text() for h in (
        "embcache.h", "embcache_results.h", "embcache_search.h",
        "embcache_dynamic.h"))
    declared = set(re.findall(r"EC_API\s+[^;(]*?\b(ec_\w+)\s*\(", header))
    assert declared == set(_lib.SIGNATURES), declared ^ set(_lib.SIGNATURES)
    lib = _lib.lib()
    assert lib.missing == [], f"{lib.path} lacks {lib.missing}"
    assert embcache.library_version() == embcache.__version__


def test_library_found_next_to_the_package():
    built = os.environ.get("EMBCACHE_TEST_LIBRARY")
    if not built or os.environ.get("EMBCACHE_LIBRARY"):
        pytest.skip("only where ctest runs the staged package (EMBCACHE_TEST_LIBRARY set)")
    found = Path(embcache.library_path())
    assert found.parent == Path(embcache.__file__).resolve().parent
    assert found.resolve() == Path(built).resolve()


def test_library_not_found_says_what_was_tried(tmp_path):
    env = dict(os.environ, EMBCACHE_LIBRARY=str(tmp_path / "nope" / "libembcache.so"))
    code = ("import embcache\n"
            "try:\n"
            "    embcache.connect('/tmp/x.sock')\n"
            "except ImportError as e:\n"
            "    print(type(e).__name__, e)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("LibraryError cannot load libembcache")
    assert str(tmp_path / "nope" / "libembcache.so") in r.stdout
    assert "$EMBCACHE_LIBRARY" in r.stdout and "EMBCACHE_LIBRARY=" in r.stdout
