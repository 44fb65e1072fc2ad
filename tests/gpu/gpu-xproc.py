"""gpu-xproc.py - cross-process byte-exactness of GPU gathers (tools/gpu-check.sh's xproc
and kill steps). NOT YET RUN ON A GPU: exercised only against emulated GPUs (--emu).

  gpu-xproc.py rows [--emu]   3 worker processes gather rows of an f32 table as f32, f16 and
                              bf16 (ids on the host and on the GPU, a side stream) into CUDA
                              tensors: first from mapped host memory (a daemon with
                              --gpu-slab 0), then from the device tier (a daemon whose slab
                              holds the whole table, opened by each worker); every row compared
                              bit for bit with the source table (f16/bf16: with torch's
                              round-to-nearest-even conversion of the f32 rows); then
                              stream-ordering probes
  gpu-xproc.py kill [--emu]   a worker queues a device-tier gather behind ~2 s of GPU work and
                              the daemon's worker process is SIGKILLed while it is queued: the
                              rows must come out right, the client's CUDA context must survive,
                              and a gather after the keeper's restart must work

libembcache (static cudart) runs next to torch (its own libcudart). --emu: the daemon runs
emulated GPUs (EMBCACHE_BACKEND=emu) and the workers gather to host memory: the
orchestration, the daemon's device tier and the comparisons run without a GPU; nothing of
CUDA does. Env: EC_BUILD (build dir, for embcached), EC_TMP (scratch, default
/tmp/ec-xproc). Prints 'xproc:' lines; exits 0 when every row matched.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROWS, DIM, ITERS = 131072, 256, 30  # a 128 MiB f32 table
EMU = "--emu" in sys.argv


def log(*a):
    print("xproc:", *a, flush=True)


# ---------------------------------------------------------------- workers

def worker(sock, npy, phase, seed):
    import numpy as np
    import torch
    import embcache

    gpu = not EMU
    dev = torch.device("cuda:0" if gpu else "cpu")
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    src = torch.from_numpy(np.load(npy))
    c = embcache.connect(sock)
    t = c.tensor("xp", "emb", 1)
    rng = np.random.default_rng(seed)
    out = {"phase": phase, "pid": os.getpid(), "backend": c.backend, "bad": 0, "rows": 0,
           "notes": []}
    if gpu and c.backend != "cuda":
        out["bad"] += 1
        out["notes"].append(f"libembcache runs its {c.backend} backend, not cuda")

    def same(y, ref):
        y = y.cpu()
        bits = {torch.float32: torch.int32, torch.float16: torch.int16,
                torch.bfloat16: torch.int16}[y.dtype]
        return y.shape == ref.shape and y.dtype == ref.dtype and \
            torch.equal(y.view(bits), ref.view(bits))

    # The first GPU gather registers the segment and opens the slab: not timed, not raced.
    t0 = time.perf_counter()
    t.gather(rng.integers(0, ROWS, 8), device=dev, like="torch")
    sync()
    out["first_call_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    if phase in ("mapped", "device"):
        for it in range(ITERS):
            n = int(rng.choice([1, 7, 256, 4096, 65536]))
            ids = rng.integers(0, ROWS, n)
            tid = torch.from_numpy(ids)
            m = it % 5
            if m == 0:
                y, ref = t.gather(ids, device=dev, like="torch"), src[tid]
            elif m == 1:  # ids on the GPU: the output follows them
                y, ref = t.gather(tid.to(dev)), src[tid]
            elif m == 2:
                y = t.gather(ids, device=dev, like="torch", dtype=torch.float16)
                ref = src[tid].half()
            elif m == 3:
                y = t.gather(ids, device=dev, like="torch", dtype=torch.bfloat16)
                ref = src[tid].bfloat16()
            elif gpu:  # a side stream as the current stream, consumed there without a sync
                s = torch.cuda.Stream()
                with torch.cuda.stream(s):
                    y = t.gather(tid.to(dev)) * 1
                s.synchronize()
                ref = src[tid]
            else:
                y, ref = t.gather(ids, device=dev, like="torch") * 1, src[tid]
            sync()
            out["rows"] += n
            if not same(y, ref):
                out["bad"] += 1
                out["notes"].append(f"iteration {it} mode {m} n {n} {y.dtype}: MISMATCH")
        st = c.stats()
        out["client_rows_device_tier"] = st.get("client_rows_device_tier")
        out["client_rows_mapped_host"] = st.get("client_rows_mapped_host")
        out["client_rows_gpu_resolved"] = st.get("client_rows_gpu_resolved")
    elif phase == "streams" and gpu:
        # ids written on the current stream after a long sleep, gathered with stream=<another>:
        # the gather must wait for the current stream (issue 13, item 8)
        s2 = torch.cuda.Stream()
        new = torch.from_numpy(rng.integers(1, ROWS, 4096))
        buf = torch.zeros(4096, dtype=torch.int64, device=dev)
        sync()
        torch.cuda._sleep(int(2e9))
        buf.copy_(new.to(dev))
        y = t.gather(buf, stream=s2)
        s2.synchronize()
        sync()
        ok = same(y, src[new])
        out["notes"].append("stream= another stream, ids made on the current stream: " +
                            ("ordered (OK)" if ok else "RACE: ids read before they were written"))
        out["bad"] += 0 if ok else 1
        ids = rng.integers(0, ROWS, 65536)
        y = t.gather(ids, device=dev, like="torch").sum(dim=1)  # consumed at once, no sync
        sync()
        ok2 = torch.equal(y.cpu(), src[torch.from_numpy(ids)].to(dev).sum(dim=1).cpu())
        out["notes"].append("consumer on the current stream: " + ("OK" if ok2 else "MISMATCH"))
        out["bad"] += 0 if ok2 else 1
    elif phase == "kill":
        ids = torch.from_numpy(rng.integers(0, ROWS, 65536))
        y = torch.full((65536, DIM), float("nan"), device=dev)
        sync()
        if gpu:
            torch.cuda._sleep(int(4e9))  # ~2 s of GPU work ahead of the gather
        t.gather(ids.numpy(), out=y)
        print("QUEUED", flush=True)
        sys.stdin.readline()  # the parent has killed the daemon's worker
        try:
            sync()
            ok = same(y, src[ids])
            healthy = torch.ones(1, device=dev).sum().item() == 1.0
            out["notes"].append(f"gather queued when the daemon died: rows "
                                f"{'intact' if ok else 'WRONG'}; CUDA context "
                                f"{'healthy' if healthy else 'BROKEN'}")
            out["bad"] += (0 if ok else 1) + (0 if healthy else 1)
        except Exception as e:  # a sticky CUDA error: this process's context is gone
            out["notes"].append(f"gather queued when the daemon died: CUDA ERROR {e!r}")
            out["bad"] += 1
        try:  # the keeper's new worker serves: a gather after the crash works
            ids2 = rng.integers(0, ROWS, 4096)
            y2 = t.gather(ids2, device=dev, like="torch")
            sync()
            ok3 = same(y2, src[torch.from_numpy(ids2)])
            out["notes"].append("gather after the restart: " + ("OK" if ok3 else "MISMATCH"))
            out["bad"] += 0 if ok3 else 1
        except Exception as e:
            out["notes"].append(f"gather after the restart: ERROR {e!r}")
            out["bad"] += 1
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------- the parent

class Daemon:
    def __init__(self, build, tmp, slab):
        self.data, self.sock = f"{tmp}/data", f"{tmp}/ec.sock"
        self.log = open(f"{tmp}/embcached.log", "a")
        env = dict(os.environ)
        if EMU:
            env.update(EMBCACHE_BACKEND="emu", EMBCACHE_EMU_GPUS="1")
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.p = subprocess.Popen([f"{build}/embcached", "--data-dir", self.data, "--socket",
                                   self.sock, "--shm-size", "1G", "--gpu-slab", slab],
                                  stdout=self.log, stderr=self.log, env=env)
        import embcache
        for _ in range(300):
            try:
                embcache.connect(self.sock, reconnect=False).close()
                return
            except Exception:
                if self.p.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"embcached did not start (see {tmp}/embcached.log)")

    def worker_pid(self):
        with open(f"{self.data}/embcached.lock") as f:
            return int(f.read().split()[0])

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def spawn(sock, npy, phase, seed):
    args = [sys.executable, __file__, "worker", sock, npy, phase, str(seed)]
    return subprocess.Popen(args + (["--emu"] if EMU else []), stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)


def collect(p, timeout=200):
    try:
        o, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        o, _ = p.communicate()
    for line in o.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"bad": 1, "notes": [f"worker exited {p.returncode} without a result"]}


def wait_resident(c, parts, secs=60):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if c.stats().get("device0_resident_partitions", 0) >= parts:
            break
        time.sleep(0.1)
    return c.stats().get("device0_resident_partitions", 0)


def main():
    import numpy as np
    import embcache
    what = sys.argv[1]
    build, tmp = os.environ["EC_BUILD"], os.environ.get("EC_TMP", "/tmp/ec-xproc")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    npy = f"{tmp}/emb.npy"
    src = np.random.default_rng(7).standard_normal((ROWS, DIM), dtype=np.float32)
    src[::97, ::5] = np.float32(6.1035156e-05) * 1.5  # f16 rounding ties and subnormals
    src[1::89, 1::7] = np.float32(3.0e-8)
    src[2::83, 2::11] = np.float32(1.0) + np.float32(2.0 ** -8)  # a bf16 tie
    np.save(npy, src)
    bad = 0
    phases = [("mapped", "0"), ("device", "512M")] if what == "rows" else [("kill", "512M")]
    first = True
    for phase, slab in phases:
        d = Daemon(build, tmp, slab)
        try:
            c = embcache.connect(d.sock)
            if first:
                c.import_model("xp", 1, [npy])
                first = False
            c.prewarm("xp", 1)
            parts = c.tensor("xp", "emb", 1).partitions
            if slab != "0":
                c.prewarm("xp", 1, device=True)
                got = wait_resident(c, parts)
                log(f"{phase}: device tier holds {got} of {parts} partitions")
                if got < parts:
                    bad += 1
                    log(f"{phase}: FAIL: the table did not reach the device tier "
                        f"(see {tmp}/embcached.log)")
            if phase == "kill":
                p = spawn(d.sock, npy, "kill", 6)
                line = p.stdout.readline()
                if line.strip() == "QUEUED":
                    w = d.worker_pid()
                    os.kill(w, signal.SIGKILL)
                    log(f"embcached's worker {w} killed (SIGKILL) with a device-tier gather "
                        f"queued")
                    time.sleep(1.0)
                    p.stdin.write("go\n")
                    p.stdin.flush()
                r = collect(p)
                bad += r["bad"]
                log("kill", json.dumps(r))
                continue
            ps = [spawn(d.sock, npy, phase, 100 + k) for k in range(3)]
            rs = [collect(p) for p in ps]
            for r in rs:
                bad += r["bad"]
                log(phase, json.dumps(r))
            dev_rows = sum(r.get("client_rows_device_tier") or 0 for r in rs)
            if phase == "device" and not EMU and dev_rows == 0:
                bad += 1
                log("device: FAIL: no row came from the device tier")
            if phase == "device" and not EMU:
                r = collect(spawn(d.sock, npy, "streams", 5))
                bad += r["bad"]
                log("streams", json.dumps(r))
            c.close()
        finally:
            d.stop()
    log(f"RESULT {what} {'OK' if bad == 0 else 'FAIL'}: {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) > 5 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] in ("rows", "kill"):
        sys.exit(main())
    else:
        print(__doc__)
        sys.exit(2)
