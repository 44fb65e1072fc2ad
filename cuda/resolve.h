/*
 * resolve.h - rows found by the GPU: the lookup a gather kernel does for
 * ids that are already on the GPU, written once for two compilers.
 *
 * nvcc compiles it into the resolve kernel (cuda/gather.cu); the C compiler
 * into the emulator (backend_emu.c), which runs the same lookups on the
 * host, through the same "device addresses" (the emulator's aliases of
 * each registered chunk), so the tests of machines without a GPU check the
 * code a GPU runs. Nothing here allocates, blocks or calls the CUDA API.
 *
 * What it reads, all through the client's read-only registration of the
 * segment (ec_host_map: chunk by chunk, each with its own device address):
 * the partition index and the data area of the host tier, the device
 * index of the GPU's tier and the header's slab generation; and the slab
 * itself. The reading follows layout.h:
 *  - an index entry is read under its seqlock (seq even and unchanged
 *    around the fields, with system-scope fences between: the daemon writes
 *    from the CPU while the GPU reads over PCIe); an entry being written is
 *    a miss, which is safe: the host path asks the daemon;
 *  - a device-index entry is used only if the header still publishes the
 *    slab generation the client opened, read after the entry: the daemon
 *    publishes a new generation before entries of a new slab;
 *  - every offset is bounds-checked before it is used;
 *  - rows are not re-checked after the copy: the caller holds a
 *    reclamation epoch from before the launch until the kernel has
 *    completed, so no extent the kernel can find is reused under it.
 *
 * Per id the kernel writes one status byte (EC_RS_*) to host memory; the
 * caller gathers the not-resident ones the host way (which faults them in)
 * and reports an out-of-range id.
 */
#ifndef EC_CUDA_RESOLVE_H
#define EC_CUDA_RESOLVE_H

#include <stdint.h>

#include "common/hash.h"

#ifdef __CUDACC__
#define EC_RS_FN __device__ __forceinline__
#define EC_RS_FENCE() __threadfence_system()
#else
#include <stdatomic.h>
#define EC_RS_FN static inline
#define EC_RS_FENCE() atomic_thread_fence(memory_order_seq_cst)
#endif

/* A row's status after the kernel (one byte per id). */
#define EC_RS_DEVICE 0u  /* copied from the device tier */
#define EC_RS_HOST 1u    /* copied from the host tier (mapped) */
#define EC_RS_MISS 2u    /* not resident (or being moved): not copied */
#define EC_RS_RANGE 3u   /* the id is outside the tensor: not copied */

/* Chunks of a registration the kernel can translate (as EC_HOST_MAP_MAX). */
#define EC_RS_MAX_CHUNKS 256u

/* Everything the lookup needs, passed to the kernel by value (about
 * 2.2 KiB, under the 4 KiB every CUDA version takes). Offsets are from the
 * segment's base unless said otherwise. */
typedef struct ec_resolve_args {
    const int64_t *ids;         /* n ids, device memory */
    unsigned char *status;      /* n bytes, mapped host memory */
    uint32_t *parts;            /* n partitions of the rows copied, mapped host
                                 * memory: the caller's access hints */
    unsigned char *dst;         /* output rows, device memory */
    uint64_t n;
    uint64_t rows;              /* the tensor's rows: ids 0..rows-1 */
    uint64_t rpp;               /* rows per partition */
    uint64_t row_bytes;         /* of a source row */
    uint64_t out_row_bytes;     /* distance between output rows */
    uint64_t tensor;            /* its id in index keys */
    /* Host tier. */
    uint64_t seg_len;           /* bytes registered */
    uint64_t chunk;             /* bytes per chunk */
    uint64_t nchunks;
    uint64_t index_off, index_mask;
    uint64_t data_off, data_size;
    /* Device tier; dev_index_off 0: none. */
    uint64_t dev_index_off;
    uint64_t gen_off;           /* the header's slab_gen of this GPU */
    uint64_t gen;               /* the generation the slab below belongs to */
    uint64_t slab;              /* device address of the client's mapping */
    uint64_t slab_bytes;
    uint64_t chunk_dev[EC_RS_MAX_CHUNKS]; /* device address of each chunk */
} ec_resolve_args;

/* The index entry as layout.h defines it (ec_index_entry), in plain types
 * both compilers take. */
typedef struct ec_rs_entry {
    uint64_t seq, key, offset;
    uint32_t length, flags;
} ec_rs_entry;

/* The device address of segment bytes [off, off + len), or 0 when they are
 * outside the registration or straddle two chunks. */
EC_RS_FN uint64_t ec_rs_addr(const ec_resolve_args *a, uint64_t off, uint64_t len)
{
    uint64_t k;

    if (len == 0 || off >= a->seg_len || len > a->seg_len - off || a->chunk == 0)
        return 0;
    k = off / a->chunk;
    if (k >= a->nchunks || (off + len - 1) / a->chunk != k)
        return 0;
    return a->chunk_dev[k] + (off - k * a->chunk);
}

/* Look key up in the index at index_off (index_mask + 1 entries). 1 and
 * *off / *len (checked against `limit`) on a resident entry, else 0. */
EC_RS_FN int ec_rs_lookup(const ec_resolve_args *a, uint64_t index_off, uint64_t key,
                          uint64_t limit, uint64_t *off, uint64_t *len)
{
    uint64_t i = ec_mix64(key) & a->index_mask; /* where the daemon's index put it */

    for (uint64_t probes = 0; probes <= a->index_mask; probes++, i = (i + 1) & a->index_mask) {
        uint64_t at = ec_rs_addr(a, index_off + i * sizeof(ec_rs_entry), sizeof(ec_rs_entry));
        const volatile ec_rs_entry *e = (const volatile ec_rs_entry *)(uintptr_t)at;
        uint64_t s1, s2, k, o;
        uint32_t l, f;

        if (!at)
            return 0;
        s1 = e->seq;
        if (s1 & 1u)
            return 0; /* being written: a miss, which the host path resolves */
        EC_RS_FENCE();
        k = e->key;
        o = e->offset;
        l = e->length;
        f = e->flags;
        EC_RS_FENCE();
        s2 = e->seq;
        if (s1 != s2)
            return 0;
        if (k == 0)
            return 0;
        if (k != key)
            continue;
        if (!(f & 1u) || o > limit || l > limit - o) /* EC_ENTRY_RESIDENT, bounds */
            return 0;
        *off = o;
        *len = l;
        return 1;
    }
    return 0;
}

/* Where row `id` is: EC_RS_DEVICE or EC_RS_HOST with *src its device
 * address and *part its partition, or EC_RS_MISS / EC_RS_RANGE. */
EC_RS_FN unsigned ec_rs_find(const ec_resolve_args *a, int64_t id, uint64_t *src,
                             uint32_t *part)
{
    uint64_t p, r, key, off = 0, len = 0, at;

    if (id < 0 || (uint64_t)id >= a->rows || a->rpp == 0)
        return EC_RS_RANGE;
    p = (uint64_t)id / a->rpp;
    r = (uint64_t)id % a->rpp;
    if (p > 0xffffffffull)
        return EC_RS_RANGE;
    key = a->tensor << 32 | p; /* EC_INDEX_KEY */
    *part = (uint32_t)p;
    if (a->dev_index_off &&
        ec_rs_lookup(a, a->dev_index_off, key, a->slab_bytes, &off, &len) &&
        (r + 1) * a->row_bytes <= len) {
        /* The entry is of the slab we read only while the header still
         * publishes that slab's generation. */
        uint64_t g = ec_rs_addr(a, a->gen_off, 8);
        EC_RS_FENCE();
        if (g && *(const volatile uint64_t *)(uintptr_t)g == a->gen) {
            *src = a->slab + off + r * a->row_bytes;
            return EC_RS_DEVICE;
        }
    }
    if (!ec_rs_lookup(a, a->index_off, key, a->data_size, &off, &len) ||
        (r + 1) * a->row_bytes > len)
        return EC_RS_MISS;
    at = ec_rs_addr(a, a->data_off + off + r * a->row_bytes, a->row_bytes);
    if (!at)
        return EC_RS_MISS; /* straddles two chunks: the host path stages it */
    *src = at;
    return EC_RS_HOST;
}

#endif
