#!/usr/bin/env python3
"""gpu_torch_baseline.py - the PyTorch side of embcache-bench's `gpu` scenario.

What a PyTorch user does today to get embedding rows onto a GPU, timed the
way embcache-bench times ec_tensor_gather_ex (wall clock around each call,
the GPU synchronized before the clock stops), on tables of the same shape
and dtype, with the same batch sizes of uniform random ids:

  torch-host    (c) table[ids] on a host tensor, then .cuda(): a CPU gather
                into pageable memory and a copy of the result over PCIe;
  torch-device  (d) torch.index_select on a table already resident on the
                GPU, the ids on the GPU too: the floor a device-resident
                cache can hope to match.

The first iterations of each configuration are checked against
table[ids] computed on the host. Writes a JSON array of results (the keys
embcache-bench's own results have) to --json FILE or stdout; progress goes
to stderr. Exits 77 with {"skipped": "<why>"} as the JSON when torch or a
CUDA GPU is missing, 1 when a result differed from the table.

    gpu_torch_baseline.py --dims 64,256 --dtypes f32,f16 --batch 1,256,65536
        [--table-mib 256] [--seconds 2] [--device 0] [--seed 42] [--json FILE]
"""
import argparse
import json
import sys
import time

DTYPES = {"f32": ("float32", 4), "f16": ("float16", 2), "bf16": ("bfloat16", 2)}
VERIFY_BYTES = 256 << 20  # what the first-iteration checks may copy back per configuration


def emit(doc, path):
    if path:
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    else:
        json.dump(doc, sys.stdout, indent=1)
        print()


def skip(why, path):
    emit({"skipped": why}, path)
    sys.exit(77)


def ints(s):
    return [int(v) for v in s.split(",") if v]


def percentile(sorted_ns, q):
    if not sorted_ns:
        return None
    i = min(len(sorted_ns) - 1, int(q * len(sorted_ns)))
    return sorted_ns[i] / 1e3


def run(torch, a, name, dim, dtype, rows, batch, table, table_d, ring, ring_d, fn):
    """Time fn(ids_host, ids_dev) -> output on the GPU; returns a result dict."""
    row_bytes = dim * DTYPES[dtype][1]
    out_bytes = batch * row_bytes
    verify_calls = max(1, min(8, VERIFY_BYTES // max(out_bytes, 1)))
    lat, calls, verified, mismatches, pos = [], 0, 0, 0, 0
    note = ""
    # Warm-up: allocator, kernels, pinned staging buffers.
    for _ in range(3):
        fn(ring[:batch], ring_d[:batch])
    torch.cuda.synchronize(a.device)
    start = time.perf_counter_ns()
    end = start + int(a.seconds * 1e9)
    spent_verifying = 0
    while True:
        if pos + batch > ring.numel():
            pos = 0
        ids, ids_d = ring[pos:pos + batch], ring_d[pos:pos + batch]
        t0 = time.perf_counter_ns()
        out = fn(ids, ids_d)
        torch.cuda.synchronize(a.device)
        t1 = time.perf_counter_ns()
        lat.append(t1 - t0)
        calls += 1
        pos += batch
        if calls <= verify_calls:
            want = table.index_select(0, ids)
            if not torch.equal(out.cpu(), want):
                mismatches += int((out.cpu() != want).any(dim=1).sum())
            verified += batch
            spent_verifying += time.perf_counter_ns() - t1
        if t1 >= end and calls >= 3:
            break
    secs = (time.perf_counter_ns() - start - spent_verifying) / 1e9
    lat.sort()
    rows_done = calls * batch
    rows_s = rows_done / secs if secs > 0 else None
    return {
        "bench": "gpu_torch_baseline", "torch": torch.__version__, "system": name,
        "dtype": dtype, "out_dtype": dtype, "rows": rows, "dim": dim, "row_bytes": row_bytes,
        "batch": batch, "dist": "uniform", "seconds": round(secs, 4), "calls": calls,
        "rows_done": rows_done, "p50_us": percentile(lat, 0.50), "p90_us": percentile(lat, 0.90),
        "p99_us": percentile(lat, 0.99), "p999_us": percentile(lat, 0.999),
        "max_us": lat[-1] / 1e3, "rows_per_s": rows_s,
        "gbps": rows_s * row_bytes / 1e9 if rows_s else None, "verified_rows": verified,
        "mismatches": mismatches, "ok": mismatches == 0, "note": note,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="64,256,1024,4096")
    p.add_argument("--dtypes", default="f32,f16")
    p.add_argument("--batch", default="1,4,16,64,256,1024,4096,16384,65536")
    p.add_argument("--table-mib", type=int, default=256)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", help="write the results here instead of stdout")
    a = p.parse_args()
    try:
        import torch
    except ImportError as e:
        skip("%s cannot import torch (%s)" % (sys.executable, e), a.json)
    if not torch.cuda.is_available():
        skip("torch %s in %s has no usable CUDA GPU (a CPU-only build, or no driver)"
             % (torch.__version__, sys.executable), a.json)
    if a.device >= torch.cuda.device_count():
        skip("torch sees %d GPU(s); there is no GPU %d" % (torch.cuda.device_count(), a.device),
             a.json)
    torch.cuda.set_device(a.device)
    dev = torch.device("cuda", a.device)
    g = torch.Generator().manual_seed(a.seed)
    batches = ints(a.batch)
    results = []
    for dtype in a.dtypes.split(","):
        if dtype not in DTYPES:
            skip("unknown dtype %r (use %s)" % (dtype, ",".join(DTYPES)), a.json)
        tdtype = getattr(torch, DTYPES[dtype][0])
        for dim in ints(a.dims):
            row_bytes = dim * DTYPES[dtype][1]
            rows = max(1024, (a.table_mib << 20) // row_bytes)
            print("gpu_torch_baseline: table %d x %d %s" % (rows, dim, dtype), file=sys.stderr)
            table = (torch.rand(rows, dim, generator=g) - 0.5).to(tdtype)
            table_d = table.to(dev)
            ring_len = max(4 * max(batches), 1 << 20)
            ring = torch.randint(rows, (ring_len,), generator=g, dtype=torch.int64)
            ring_d = ring.to(dev)
            for batch in batches:
                # (c): gather on the CPU into pageable memory, copy to the GPU.
                results.append(run(torch, a, "torch-host", dim, dtype, rows, batch, table,
                                   table_d, ring, ring_d, lambda i, i_d: table[i].cuda()))
                # (d): everything already on the GPU.
                results.append(run(torch, a, "torch-device", dim, dtype, rows, batch, table,
                                   table_d, ring, ring_d,
                                   lambda i, i_d: torch.index_select(table_d, 0, i_d)))
                for r in results[-2:]:
                    print("gpu_torch_baseline: %s %s dim %d batch %d: p50 %.1f us, %.2f GB/s%s"
                          % (r["system"], dtype, dim, batch, r["p50_us"], r["gbps"] or 0,
                             "" if r["ok"] else " MISMATCH"), file=sys.stderr)
            del table, table_d, ring, ring_d
            torch.cuda.empty_cache()
    emit(results, a.json)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
