"""A worker process of test_memory.py (and nothing else).

    memworker.py embcache SOCKET MODEL TENSOR     read the table through a view
    memworker.py mmap PATH                        np.load(mmap_mode='r'): the page cache
    memworker.py npload PATH                      np.load the table itself

Protocol on stdin/stdout, so the test can measure each process at a known
point: prints "base" once imported and connected; on "go" maps (or loads)
the table, reads every byte of it and prints "ready <sum>"; exits on "exit".
"""
import sys

import numpy as np

mode = sys.argv[1]
if mode == "embcache":
    import embcache
    client = embcache.connect(sys.argv[2])
    tensor = client.tensor(sys.argv[3], sys.argv[4], 1)
print("base", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(1)
if mode == "embcache":
    view = tensor.view()
    table = view.numpy()          # zero-copy: the daemon's shared memory
elif mode == "mmap":
    table = np.load(sys.argv[2], mmap_mode="r")   # the file's pages, shared by all
else:
    table = np.load(sys.argv[2])  # a private copy
print("ready", repr(float(table.sum(dtype=np.float64))), flush=True)
sys.stdin.readline()
