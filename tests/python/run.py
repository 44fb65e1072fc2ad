#!/usr/bin/env python3
"""ctest's entry to the Python tests (python/CMakeLists.txt registers it).

Exits 77 -- reported by ctest as skipped, not passed -- when this interpreter
lacks numpy or pytest; otherwise runs pytest over this directory with the
given arguments and exits with its status. torch is optional: the tests that
need it skip themselves (pytest.importorskip).
"""
import importlib.util
import os
import sys

missing = [m for m in ("numpy", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    print(f"python tests skipped: {' and '.join(missing)} not installed for {sys.executable} "
          f"(apt-get install python3-numpy python3-pytest)")
    sys.exit(77)

import pytest  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
sys.exit(pytest.main([here, "-p", "no:cacheprovider", "-ra", *sys.argv[1:]]))
