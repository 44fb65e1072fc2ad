/*
 * index.c - the partition index in the shared segment: open addressing with
 * linear probing, backward-shift deletion and a seqlock per entry (see
 * index.h for the contract and layout.h for the seqlock protocol).
 *
 * Readers: any thread of any process with the segment mapped (clients map
 * it read-only) call ec_index_lookup() and ec_index_still_valid(); they
 * never write and never block the writer. Writer: the daemon's engine
 * thread alone calls insert/remove/clear, on a writable mapping.
 *
 * Invariants (the writer keeps them between its calls):
 *   1. A key sits in the probe chain starting at hash(key) & mask with no
 *      empty slot between its home and its slot (no tombstones).
 *   2. An entry's seq is even whenever the writer is not inside a write of
 *      that entry; it only grows. Every write of an entry (publish, move
 *      during a backward shift, clear) moves it by an even amount >= 2.
 *   3. While a key is present its (offset, length) do not change: a reader
 *      whose slot's seq did not move read an extent that is still live.
 *   4. seg->index_used (daemon-private) counts occupied entries, for the
 *      load-factor check; EC_INDEX_USED_UNKNOWN after a (re)attach until the
 *      first insert counts them. The shared gauge hdr->resident_partitions
 *      belongs to the engine and is not touched here.
 */
#include "shm/index.h"

#include <inttypes.h>
#include <sched.h>
#include <string.h>

#include "common/err.h"
#include "common/hash.h"

/* The load factor is kept below 9/10. */
#define EC_INDEX_MAX_LOAD_NUM 9u
#define EC_INDEX_MAX_LOAD_DEN 10u

/* Reader patience with an entry that stays odd (being written): spin, then
 * yield, then give up and report a miss (safe: the daemon finds it). */
#define EC_SPIN_PAUSES 64u
#define EC_SPIN_YIELDS 10000u

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}


/* One consistent snapshot of an entry. */
typedef struct snap {
    uint64_t seq, key, offset;
    uint32_t length, flags;
} snap;

/* Read an entry under its seqlock. Returns false when it stayed odd or kept
 * moving for too long (the caller treats that as a miss). */
static bool entry_read(const ec_index_entry *e, snap *s)
{
    for (unsigned tries = 0; tries < EC_SPIN_YIELDS; tries++) {
        for (unsigned spin = 0; spin < EC_SPIN_PAUSES; spin++) {
            uint64_t s1 = atomic_load_explicit(&e->seq, memory_order_acquire);
            if (s1 & 1u) {
                cpu_relax();
                continue;
            }
            s->key = atomic_load_explicit(&e->key, memory_order_relaxed);
            s->offset = atomic_load_explicit(&e->offset, memory_order_relaxed);
            s->length = atomic_load_explicit(&e->length, memory_order_relaxed);
            s->flags = atomic_load_explicit(&e->flags, memory_order_relaxed);
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&e->seq, memory_order_relaxed) == s1) {
                s->seq = s1;
                return true;
            }
            cpu_relax();
        }
        sched_yield();
    }
    return false;
}

int ec_index_lookup(const ec_segment *seg, uint32_t tensor, uint32_t part, ec_index_ref *ref)
{
    uint64_t key = EC_INDEX_KEY(tensor, part);
    uint64_t i, mask;

    if (!seg || !seg->index || !ref || tensor == 0)
        return 0;
    mask = seg->index_mask;
    i = ec_mix64(key) & mask;
    for (uint64_t probes = 0; probes <= mask; probes++, i = (i + 1) & mask) {
        const ec_index_entry *e = &seg->index[i];
        snap s;

        if (!entry_read(e, &s))
            return 0; /* a writer holds it: a false miss is safe */
        if (s.key == 0)
            return 0;
        if (s.key != key)
            continue;
        /* Everything read from shared memory is checked before use: an entry
         * that points outside the data area is never dereferenced. */
        if (!(s.flags & EC_ENTRY_RESIDENT) || s.offset > seg->data_size ||
            s.length > seg->data_size - s.offset)
            return 0;
        ref->entry = e;
        ref->seq = s.seq;
        ref->offset = s.offset;
        ref->length = s.length;
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Writer side                                                         */

static uint64_t seq_begin(ec_index_entry *e)
{
    uint64_t s = atomic_load_explicit(&e->seq, memory_order_relaxed);
    /* Next odd value; an entry left odd by a crashed writer moves on too. */
    uint64_t odd = (s + 1) | 1u;

    atomic_store_explicit(&e->seq, odd, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    return odd;
}

static void seq_end(ec_index_entry *e, uint64_t odd)
{
    atomic_store_explicit(&e->seq, odd + 1, memory_order_release);
}

static void entry_write(ec_index_entry *e, uint64_t key, uint64_t offset, uint32_t length,
                        uint32_t flags)
{
    uint64_t odd = seq_begin(e);

    atomic_store_explicit(&e->key, key, memory_order_relaxed);
    atomic_store_explicit(&e->offset, offset, memory_order_relaxed);
    atomic_store_explicit(&e->length, length, memory_order_relaxed);
    atomic_store_explicit(&e->flags, flags, memory_order_relaxed);
    seq_end(e, odd);
}

static uint64_t key_at(const ec_segment *seg, uint64_t i)
{
    return atomic_load_explicit(&seg->index[i].key, memory_order_relaxed);
}

static int require_writer(const ec_segment *seg, const char *what)
{
    if (!seg || !seg->index || !seg->hdr)
        return ec_seterr(EC_EINVAL, "%s: no segment", what);
    if (!seg->writable)
        return ec_seterr(EC_EPERM, "%s: the segment is mapped read-only in this process; "
                                   "only embcached writes the index",
                         what);
    return 0;
}

uint64_t ec_index_count(const ec_segment *seg)
{
    uint64_t n = 0;

    if (!seg || !seg->index)
        return 0;
    for (uint64_t i = 0; i < seg->index_slots; i++)
        n += key_at(seg, i) != 0;
    return n;
}

int ec_index_insert(ec_segment *seg, uint32_t tensor, uint32_t part, uint64_t offset,
                    uint32_t length)
{
    uint64_t key = EC_INDEX_KEY(tensor, part), limit, count, i;
    int rc;

    if ((rc = require_writer(seg, "ec_index_insert")) < 0)
        return rc;
    if (tensor == 0)
        return ec_seterr(EC_EINVAL, "ec_index_insert: tensor id 0 is reserved (part %" PRIu32
                                    ")",
                         part);
    if (offset > seg->data_size || length > seg->data_size - offset)
        return ec_seterr(EC_EINVAL,
                         "ec_index_insert: range [%" PRIu64 ", +%" PRIu32
                         ") of tensor %" PRIu32 " part %" PRIu32
                         " is outside the %" PRIu64 "-byte data area",
                         offset, length, tensor, part, seg->data_size);

    limit = seg->index_slots / EC_INDEX_MAX_LOAD_DEN * EC_INDEX_MAX_LOAD_NUM +
            seg->index_slots % EC_INDEX_MAX_LOAD_DEN * EC_INDEX_MAX_LOAD_NUM /
                EC_INDEX_MAX_LOAD_DEN;
    if (seg->index_used == EC_INDEX_USED_UNKNOWN || seg->index_used > seg->index_slots)
        seg->index_used = ec_index_count(seg);
    count = seg->index_used;

    i = ec_mix64(key) & seg->index_mask;
    for (uint64_t probes = 0; probes < seg->index_slots;
         probes++, i = (i + 1) & seg->index_mask) {
        uint64_t k = key_at(seg, i);
        if (k == key)
            return ec_seterr(EC_EEXIST,
                             "ec_index_insert: tensor %" PRIu32 " part %" PRIu32
                             " is already in the index; remove it first",
                             tensor, part);
        if (k != 0)
            continue;
        if (count >= limit)
            break;
        entry_write(&seg->index[i], key, offset, length, EC_ENTRY_RESIDENT);
        seg->index_used = count + 1;
        return 0;
    }
    return ec_seterr(EC_ENOSPC,
                     "ec_index_insert: index is full (%" PRIu64 " of %" PRIu64
                     " slots used, limit %" PRIu64 "); evict partitions or grow the segment",
                     count, seg->index_slots, limit);
}

int ec_index_remove(ec_segment *seg, uint32_t tensor, uint32_t part, uint64_t *offset_out,
                    uint32_t *length_out)
{
    uint64_t key = EC_INDEX_KEY(tensor, part), mask, hole, j;
    uint64_t off;
    uint32_t len;
    int rc;

    if ((rc = require_writer(seg, "ec_index_remove")) < 0)
        return rc;
    mask = seg->index_mask;
    hole = ec_mix64(key) & mask;
    for (uint64_t probes = 0;; probes++, hole = (hole + 1) & mask) {
        uint64_t k;
        if (probes > mask || tensor == 0 || (k = key_at(seg, hole)) == 0)
            return ec_seterr(EC_ENOENT,
                             "ec_index_remove: tensor %" PRIu32 " part %" PRIu32
                             " is not in the index",
                             tensor, part);
        if (k == key)
            break;
    }
    off = atomic_load_explicit(&seg->index[hole].offset, memory_order_relaxed);
    len = atomic_load_explicit(&seg->index[hole].length, memory_order_relaxed);

    /* Backward shift: walk the chain after the hole; an entry whose home is
     * not cyclically in (hole, j] may move back into the hole, which then
     * moves to j. Each move is a seqlocked write of the destination; the
     * source is rewritten (moved again or cleared) afterwards, so a reader
     * may miss the moving key once but never sees a wrong one. */
    j = hole;
    for (;;) {
        uint64_t kj, home;
        const ec_index_entry *src;

        j = (j + 1) & mask;
        kj = key_at(seg, j);
        if (kj == 0 || j == hole)
            break;
        home = ec_mix64(kj) & mask;
        if (((j - home) & mask) < ((j - hole) & mask))
            continue; /* its home lies in (hole, j]: it must stay */
        src = &seg->index[j];
        entry_write(&seg->index[hole], kj,
                    atomic_load_explicit(&src->offset, memory_order_relaxed),
                    atomic_load_explicit(&src->length, memory_order_relaxed),
                    atomic_load_explicit(&src->flags, memory_order_relaxed));
        hole = j;
    }
    entry_write(&seg->index[hole], 0, 0, 0, 0);

    if (seg->index_used != EC_INDEX_USED_UNKNOWN && seg->index_used > 0)
        seg->index_used--;
    if (offset_out)
        *offset_out = off;
    if (length_out)
        *length_out = len;
    return 0;
}

int ec_index_foreach(const ec_segment *seg,
                     int (*fn)(uint32_t tensor, uint32_t part, uint64_t offset,
                               uint32_t length, void *arg),
                     void *arg)
{
    if (!seg || !seg->index || !fn)
        return ec_seterr(EC_EINVAL, "ec_index_foreach: segment and callback are required");
    for (uint64_t i = 0; i < seg->index_slots; i++) {
        const ec_index_entry *e = &seg->index[i];
        uint64_t key = atomic_load_explicit(&e->key, memory_order_relaxed);
        int rc;

        if (key == 0)
            continue;
        /* fn must not insert or remove: a backward shift would move entries
         * across the scan position. Collect, then remove. */
        rc = fn(EC_INDEX_KEY_TENSOR(key), EC_INDEX_KEY_PART(key),
                atomic_load_explicit(&e->offset, memory_order_relaxed),
                atomic_load_explicit(&e->length, memory_order_relaxed), arg);
        if (rc != 0)
            return rc;
    }
    return 0;
}

void ec_index_clear(ec_segment *seg)
{
    if (require_writer(seg, "ec_index_clear") < 0)
        return;
    for (uint64_t i = 0; i < seg->index_slots; i++)
        entry_write(&seg->index[i], 0, 0, 0, 0);
    seg->index_used = 0;
}
