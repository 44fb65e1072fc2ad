#!/usr/bin/env python3
"""Start one embcached and N inference workers on one table; print each
worker's latency and what the table costs the whole host, next to two
baselines: every worker mapping the .npy file (np.load(mmap_mode='r'), one
copy in the page cache, shared) and every worker np.load'ing its own copy.

    python/examples/launch.py                          # 4 workers, a 24 MiB table
    python/examples/launch.py --workers 8 --rows 1000000 --dim 256   # 977 MiB
    python/examples/launch.py --rows 262144 --dim 256 --drop-caches --repeat 3

It creates a random float32 table (--rows x --dim) as a .npy file, then runs
three rounds of --workers processes of worker.py, with the same requests:

1. embcache: it starts embcached on a temporary data directory and socket
   (the one of the build tree, or --embcached PATH) with a segment sized for
   the table (--shm-size; the daemon reserves all of it at start), imports the
   table as model "example" version 1 (alias "current") through the Python
   API, caches it by partitions and prewarms it pinned, so it is resident in
   one piece; each worker maps the daemon's one copy;
2. mmap: each worker np.load's the .npy with mmap_mode='r': the file's pages
   in the page cache, one copy shared by all (embcached is stopped by then);
3. private: each worker np.load's the .npy into its own memory.

What the table costs the host is measured two ways, once every worker holds
it (with --touch-all, the default, every page of the table has been read):

(a) PSS (proportional set size, /proc/PID/smaps_rollup) of every process
    involved: a page shared by k processes counts 1/k in each, so PSS adds up
    to what the host pays for mapped memory. The table's part is what the
    workers grew by from start-up ("started") to holding it ("ready"), plus
    the daemon's processes in full (embcached runs as a keeper and a worker,
    its pid in DATA_DIR/embcached.lock; both may map the segment), plus the
    pages of the segment that no process maps: the daemon reserves the whole
    segment at start, so they are memory, but in no one's PSS.
(b) /proc/meminfo, with --drop-caches (root): the page cache is dropped
    before each round, and in round 1 again after the import (so the
    partition files' page cache is not counted; how much that was is
    printed). The table's part is the change from before the round to the
    daemon holding the table (round 1 only), plus the change from the
    workers' start-up to all of them holding it. Printed: MemTotal -
    MemAvailable ("used"), MemTotal - MemFree ("in use", page cache
    included), Cached and Shmem. MemAvailable counts clean page cache as
    free to take back, so the mmap round's table, which lives in the page
    cache, hardly shows in "used"; it shows in "in use" and Cached. The
    segment is Shmem, which is never reclaimed. Free pages on the kernel's
    per-CPU lists (/proc/zoneinfo), which MemFree leaves out, are counted as
    free, and each reading waits for memory to hold still (a VM hands free
    pages to its host for a moment after a large free). /proc/meminfo also
    sees whatever else the host does meanwhile: the change in the PSS of all
    other processes is printed beside it, and a round in which Shmem or
    other processes moved by more than a few MiB is marked DISTURBED.

All three rounds serve the same requests through the same model; their
outputs are compared. --repeat runs the whole thing again (a new daemon each
time) and ends with the median and range of each figure.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
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
SEGMENT = "/memfd:embcache-segment"     # the segment's mapping, in /proc/PID/smaps


# ---------------------------------------------------------------------------
# Measuring

def pss(pid: int) -> int:
    """A process's proportional set size in bytes."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def segment_pss(pid: int) -> int:
    """The PSS of a process's mappings of embcached's segment, in bytes."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):        # a mapping's first line
                inside = SEGMENT in line
            elif inside and head == "Pss:":
                total += int(line.split()[1]) * 1024
    return total


def pcp_free() -> int:
    """Free pages the kernel keeps on per-CPU lists (/proc/zoneinfo, "count:"),
    in bytes: MemFree and MemAvailable leave them out, and here they come and
    go by hundreds of MiB (an allocation takes from them first)."""
    pages = 0
    with open("/proc/zoneinfo") as f:
        for line in f:
            if line.lstrip().startswith("count:"):
                pages += int(line.split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def meminfo() -> dict:
    """The host's memory, in bytes: used (MemTotal - MemAvailable), inuse
    (MemTotal - MemFree: page cache included), both with the per-CPU lists
    counted as free, and Cached, Shmem."""
    m = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            m[k] = int(v.split()[0]) * 1024
    pcp = pcp_free()
    return {"used": m["MemTotal"] - m["MemAvailable"] - pcp,
            "inuse": m["MemTotal"] - m["MemFree"] - pcp,
            "cached": m["Cached"], "shmem": m["Shmem"]}


def settled_meminfo() -> dict:
    """meminfo() once it holds still: at least 3 s of samples, the last 1.5 s
    within 1 MiB (at most 15 s). A VM that reports free pages to its host
    takes them off the free lists for a moment, ~2 s after a large free (a
    round's workers exiting, a dropped page cache): here by 128 MiB."""
    samples, t0 = [], time.monotonic()
    while True:
        samples.append(meminfo())
        last = [m["inuse"] for m in samples[-7:]]
        if (len(samples) >= 13 and max(last) - min(last) <= MIB) or \
                time.monotonic() - t0 > 15:
            return samples[-1]
        time.sleep(0.25)


def mem_delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in a}


def mem_add(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


ZERO = {"used": 0, "inuse": 0, "cached": 0, "shmem": 0}


def others_pss(ours) -> int:
    """The PSS of every process on the host but ours: how much the rest of the
    machine changed meanwhile, which /proc/meminfo counts too."""
    total = 0
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in ours:
            try:
                total += pss(int(d))
            except OSError:                  # gone meanwhile
                pass
    return total


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def can_drop_caches():
    """None, or why (b) cannot be measured."""
    if os.geteuid() != 0:
        return "not root: /proc/sys/vm/drop_caches needs root"
    if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        return "/proc/sys/vm/drop_caches is not writable here"
    return None


# ---------------------------------------------------------------------------
# The daemon

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


def segment_size_for(table_bytes: int) -> int:
    """The smallest segment, in whole MiB, that holds the table beside what
    the daemon keeps there with its default options: the partition and item
    indexes (about 5% of the segment) and the 16 MiB staging area of rows
    read by rows; 2 MiB to spare."""
    need = (table_bytes + 18 * MIB) / 0.945
    return max(64 * MIB, -(-int(need) // MIB) * MIB)


class Daemon:
    """embcached on dir/data and dir/embcached.sock, stopped by pid."""

    def __init__(self, binary: str, root: Path, shm: int) -> None:
        self.data, self.sock, self.shm = root / "data", str(root / "embcached.sock"), shm
        self.proc = subprocess.Popen([binary, "--data-dir", str(self.data), "--socket",
                                      self.sock, "--shm-size", str(shm), "-q"])
        deadline = time.monotonic() + 20
        while True:                                  # until it answers
            try:
                self.client = embcache.connect(self.sock)
                break
            except embcache.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    sys.exit("launch.py: embcached did not start")
                time.sleep(0.02)

    def pids(self):
        """The keeper (which holds the segment) and the worker it forked."""
        return [self.proc.pid, int((self.data / "embcached.lock").read_text().split()[0])]

    def layout(self) -> str:
        """What the segment holds, from the daemon's statistics."""
        s = self.stats
        index = s["segment_bytes"] - s["data_bytes"]
        free = s["data_bytes"] - s["row_staging_bytes"] - s["used_bytes"]
        return (f"the table {mib(s['used_bytes'])}, header and indexes {mib(index)} (of which "
                f"the item index {mib(s['row_item_index_bytes'])}), staging for rows read "
                f"by rows {mib(s['row_staging_bytes'])}, free {mib(free)}")

    def stop(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
            self.client = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait()


def start_embcache(args, embcached: str, npy: Path, root: Path, table_bytes: int) -> Daemon:
    """A daemon holding the table: by partitions, pinned (one piece), resident."""
    d = Daemon(embcached, root, args.shm_size or segment_size_for(table_bytes))
    c = d.client
    try:
        c.import_model("example", 1, [npy], params={"rows": args.rows, "dim": args.dim})
        c.alias("example", "current", 1)
        c.cache_mode("example", "partitions")
        p = c.prewarm("example", "current", pin=True)
    except embcache.NoSpaceError as e:
        d.stop()
        sys.exit(f"launch.py: the table does not fit a {d.shm / MIB:.0f} MiB segment ({e}); "
                 f"pass a larger --shm-size")
    if p["failed"] or p["done"] != p["partitions"]:
        d.stop()
        sys.exit(f"launch.py: prewarm of the table: {p}")
    d.stats = c.stats()
    d.client.close()                 # the pin is the daemon's own: launch.py holds nothing
    d.client = None
    return d


# ---------------------------------------------------------------------------
# Workers and rounds

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


class Round:
    """One round's workers and measurements (bytes)."""

    def __init__(self, name: str, title: str) -> None:
        self.name, self.title = name, title
        self.workers = []
        self.daemon_pids = []
        self.daemon_pss = []          # per daemon process, all workers holding the table
        self.segment = 0              # the segment's size (0: no daemon)
        self.segment_mapped = 0       # PSS of every process's mappings of it
        self.host_daemon = ZERO       # (b): the daemon coming up with the table
        self.host_workers = ZERO      # (b): the workers, start-up to holding the table
        self.import_cache = 0         # page cache dropped after the import
        self.others = 0               # (b): other processes' PSS changed by this meanwhile
        self.layout = ""
        self.host = False

    @property
    def pss_total(self) -> int:
        return sum(w.pss["ready"] for w in self.workers) + sum(self.daemon_pss)

    @property
    def pss_workers(self) -> int:
        return sum(w.pss["ready"] - w.pss["started"] for w in self.workers)

    @property
    def unmapped(self) -> int:
        return max(0, self.segment - self.segment_mapped)

    @property
    def pss_table(self) -> int:
        return self.pss_workers + sum(self.daemon_pss) + self.unmapped

    @property
    def host_table(self) -> dict:
        return mem_add(self.host_daemon, self.host_workers)

    def disturbed(self) -> str:
        """Why (b) saw more than this round, if it could tell: Shmem that is
        not our segment, other processes' PSS that moved."""
        why = []
        shmem = self.host_table["shmem"] - self.segment
        if abs(shmem) > 2 * MIB:
            why.append(f"Shmem {signed(shmem)} MiB not ours")
        if abs(self.others) > 4 * MIB:
            why.append(f"other processes' PSS {signed(self.others)} MiB")
        return ", ".join(why)


def run_round(args, rnd: Round, extra, setup=None) -> None:
    """Set up (the daemon), start the workers, let them load the table one at a
    time, serve; measure at each step. setup() returns the daemon, if any."""
    def ours():
        return {os.getpid()} | set(rnd.daemon_pids) | {w.p.pid for w in rnd.workers}

    if args.drop_caches:
        drop_caches()
        m0, o0 = settled_meminfo(), others_pss(ours())
    daemon = setup() if setup else None
    if daemon:
        rnd.daemon_pids = daemon.pids()
        rnd.segment = daemon.stats["segment_bytes"]
        rnd.layout = daemon.layout()
    if args.drop_caches:
        if daemon:
            before = meminfo()
            drop_caches()                # the .npy's and partition files' pages (import)
            m1, o1 = settled_meminfo(), others_pss(ours())
            rnd.import_cache = before["cached"] - m1["cached"]
            rnd.host_daemon = mem_delta(m0, m1)
            rnd.others = o1 - o0
        rnd.host = True
    workers = rnd.workers = [Worker(args, extra) for _ in range(args.workers)]
    try:
        for w in workers:
            w.expect("started")
            w.pss["started"] = pss(w.p.pid)
        if args.drop_caches:
            m2, o2 = settled_meminfo(), others_pss(ours())
        for w in workers:                       # one at a time: a fair "ready"
            w.send("load")
            w.expect("ready")
        if args.drop_caches:
            m3, o3 = settled_meminfo(), others_pss(ours())
            rnd.host_workers = mem_delta(m2, m3)
            rnd.others += o3 - o2
        for w in workers:
            w.pss["ready"] = pss(w.p.pid)
        rnd.daemon_pss = [pss(p) for p in rnd.daemon_pids]
        if daemon:
            rnd.segment_mapped = sum(segment_pss(p) for p in
                                     rnd.daemon_pids + [w.p.pid for w in workers])
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


def mib(x: float) -> str:
    return f"{x / MIB:.1f}"


def signed(x: float) -> str:
    return f"{x / MIB:+.1f}"


def report(rnd: Round, table_bytes: int) -> None:
    print(f"\n{rnd.title}")
    if rnd.segment:
        print(f"  embcached: keeper pid {rnd.daemon_pids[0]}, worker pid {rnd.daemon_pids[1]}; "
              f"segment {mib(rnd.segment)} MiB (--shm-size, all of it reserved at start): "
              f"{rnd.layout} MiB; the table cached by partitions, pinned")
    print(f"  {'worker':>6} {'pid':>7} {'p50 us':>9} {'p99 us':>9} {'mean us':>9} "
          f"{'PSS MiB':>8} {'table MiB':>9}")
    for i, w in enumerate(rnd.workers):
        r = w.result
        print(f"  {i:>6} {w.p.pid:>7} {r['p50_us']:>9.1f} {r['p99_us']:>9.1f} "
              f"{r['mean_us']:>9.1f} {mib(w.pss['served']):>8} "
              f"{mib(w.pss['ready'] - w.pss['started']):>9}")
    line = (f"  (a) PSS of every process: {mib(rnd.pss_total)} MiB; the table "
            f"{mib(rnd.pss_table)} MiB = {rnd.pss_table / table_bytes:.2f} x the table: "
            f"the {len(rnd.workers)} workers {signed(rnd.pss_workers)}")
    if rnd.segment:
        line += (f", embcached {mib(sum(rnd.daemon_pss))} (keeper {mib(rnd.daemon_pss[0])}, "
                 f"worker {mib(rnd.daemon_pss[1])}), segment pages no process maps "
                 f"{mib(rnd.unmapped)}")
    print(line)
    if not rnd.host:
        return
    h = rnd.host_table
    line = (f"  (b) host, /proc/meminfo: the table {signed(h['used'])} MiB used (MemTotal - "
            f"MemAvailable), {signed(h['inuse'])} MiB in use (MemTotal - MemFree), Cached "
            f"{signed(h['cached'])}, Shmem {signed(h['shmem'])}; meanwhile the PSS of the "
            f"host's other processes changed by {signed(rnd.others)} MiB")
    if rnd.disturbed():
        line += f"\n      DISTURBED by the rest of the host: {rnd.disturbed()}"
    if rnd.segment:
        d = rnd.host_daemon
        line += (f"\n      of which embcached with the table, before the workers: "
                 f"{signed(d['used'])} used, {signed(d['inuse'])} in use, Shmem "
                 f"{signed(d['shmem'])}; after the import {mib(rnd.import_cache)} MiB of "
                 f"page cache (the .npy and partition files) was dropped, not counted")
    print(line)


def one_run(args, embcached: str, npy: Path, tmp: Path, table_bytes: int, k: int):
    """The three rounds; returns them."""
    ec = Round("embcache", "round 1, embcache (one copy, in embcached's shared memory):")
    mm = Round("mmap", "round 2, np.load(mmap_mode='r') (one copy, in the page cache):")
    pv = Round("private", "round 3, np.load (a private copy in each worker):")
    touch = ["--touch-all"] if args.touch_all else []
    root = tmp / f"run{k}"
    root.mkdir()
    daemons = []

    def setup():
        daemons.append(start_embcache(args, embcached, npy, root, table_bytes))
        return daemons[-1]

    try:
        run_round(args, ec, ["--socket", str(root / "embcached.sock")] + touch, setup)
    finally:
        for d in daemons:                # the baselines run without it
            d.stop()
    shutil.rmtree(root, ignore_errors=True)
    report(ec, table_bytes)
    run_round(args, mm, ["--npy", str(npy), "--mmap"] + touch)
    report(mm, table_bytes)
    run_round(args, pv, ["--npy", str(npy)] + touch)
    report(pv, table_bytes)
    return [ec, mm, pv]


def compare(rounds, table_bytes: int) -> bool:
    ec, mm, pv = rounds
    same = all(a.result["checksum"] == b.result["checksum"] == c.result["checksum"]
               for a, b, c in zip(ec.workers, mm.workers, pv.workers))
    print(f"\nthe table ({mib(table_bytes)} MiB) costs the host, by PSS (a): embcache "
          f"{mib(ec.pss_table)} MiB, shared mmap {mib(mm.pss_table)} MiB, private copies "
          f"{mib(pv.pss_table)} MiB; embcache - mmap {signed(ec.pss_table - mm.pss_table)} MiB")
    if ec.host:
        e, m, p = ec.host_table, mm.host_table, pv.host_table
        print(f"by /proc/meminfo (b), in use (used): embcache {mib(e['inuse'])} "
              f"({mib(e['used'])}) MiB, shared mmap {mib(m['inuse'])} ({mib(m['used'])}) MiB, "
              f"private copies {mib(p['inuse'])} ({mib(p['used'])}) MiB; embcache - mmap "
              f"{signed(e['inuse'] - m['inuse'])} MiB in use")
    print(f"outputs identical in all three rounds: {'yes' if same else 'NO'}")
    return same


def summary(runs, table_bytes: int) -> None:
    """Median and range over the repeats."""
    def fig(values, scale=MIB):
        v = [x / scale for x in values]
        return f"{statistics.median(v):8.1f} ({min(v):.1f}-{max(v):.1f})"

    print(f"\nover {len(runs)} runs: median (min-max); MiB unless marked")
    print(f"  {'round':<9} {'(a) PSS, table':>24} {'(a) x table':>20} {'(b) in use':>24} "
          f"{'(b) used':>24} {'(b) Shmem':>24} {'(b) others PSS':>24} "
          f"{'p50 us (worker 0)':>24}")
    for i in range(3):
        rs = [r[i] for r in runs]
        row = (f"  {rs[0].name:<9} {fig([r.pss_table for r in rs]):>24} "
               f"{fig([r.pss_table for r in rs], table_bytes):>20} ")
        if rs[0].host:
            row += (f"{fig([r.host_table['inuse'] for r in rs]):>24} "
                    f"{fig([r.host_table['used'] for r in rs]):>24} "
                    f"{fig([r.host_table['shmem'] for r in rs]):>24} "
                    f"{fig([r.others for r in rs]):>24} ")
        else:
            row += f"{'-':>24} {'-':>24} {'-':>24} {'-':>24} "
        row += f"{fig([r.workers[0].result['p50_us'] for r in rs], 1):>24}"
        print(row)
    if runs[0][0].host:
        print("  (b) runs marked DISTURBED by the rest of the host: " + ", ".join(
            f"{runs[0][i].name} {sum(bool(r[i].disturbed()) for r in runs)} of {len(runs)}"
            for i in range(3)))
    d = [r[0].pss_table - r[1].pss_table for r in runs]
    print(f"  embcache - mmap, (a): {fig(d)} MiB", end="")
    if runs[0][0].host:
        d = [r[0].host_table["inuse"] - r[1].host_table["inuse"] for r in runs]
        print(f"; (b) in use: {fig(d)} MiB")
    else:
        print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32, help="bags per request")
    ap.add_argument("--bag", type=int, default=8, help="ids per bag")
    ap.add_argument("--no-touch-all", dest="touch_all", action="store_false",
                    help="workers do not read the whole table before serving (then only "
                         "the pages their requests touch count)")
    ap.add_argument("--shm-size", type=int, default=0,
                    help="embcached's segment in bytes (default: sized for the table)")
    ap.add_argument("--drop-caches", action="store_true",
                    help="measure the host's memory (/proc/meminfo), dropping the page "
                         "cache before each round (root; it slows everything else down)")
    ap.add_argument("--repeat", type=int, default=1, help="run the three rounds this often")
    ap.add_argument("--embcached", help="the daemon binary (default: the build tree's)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    embcached = find_embcached(args.embcached)
    lib = find_library()
    table_bytes = args.rows * args.dim * 4
    print(f"launch.py: table {args.rows} x {args.dim} float32 ({mib(table_bytes)} MiB), "
          f"{args.workers} workers, {args.requests} requests of {args.batch} bags x "
          f"{args.bag} ids each, {args.repeat} run(s)")
    print(f"launch.py: {embcached}, {lib}")
    if args.drop_caches and (why := can_drop_caches()):
        print(f"launch.py: (b) skipped: {why}")
        args.drop_caches = False
    elif not args.drop_caches:
        print("launch.py: (b) skipped: pass --drop-caches (root) to measure the host's memory")
    tmp = Path(tempfile.mkdtemp(prefix="embcache-example-", dir="/tmp"))
    try:
        npy = tmp / "emb.npy"
        rng = np.random.default_rng(0)
        np.save(npy, rng.standard_normal((args.rows, args.dim), dtype=np.float32))
        runs = []
        for k in range(args.repeat):
            if args.repeat > 1:
                print(f"\n== run {k + 1} of {args.repeat} ==")
            runs.append(one_run(args, embcached, npy, tmp, table_bytes, k))
            if not compare(runs[-1], table_bytes):
                sys.exit(1)
        if args.repeat > 1:
            summary(runs, table_bytes)
    finally:
        if args.keep:
            print(f"launch.py: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
