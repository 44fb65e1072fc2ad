/*
 * items.c - the item index in the shared segment (see items.h for the
 * contract and layout.h "Item store" for the format and the seqlock).
 *
 * Readers: any thread of any process with the segment mapped call
 * ec_item_lookup/ec_item_probe and ec_item_still_valid; they never write.
 * Writer: the daemon's server thread alone calls insert/remove/clear.
 *
 * Invariants (the writer keeps them between its calls):
 *   1. A key is published in at most one slot, in one of its two buckets.
 *   2. A bucket's seq is even whenever the writer is not inside a write of
 *      it, and only grows; every write moves it by 2.
 *   3. A published slot points at an 8-aligned item inside the data area
 *      whose first 8 bytes are the key; the item's bytes do not change
 *      while it is published (the daemon unpublishes before it reuses them).
 */
#include "shm/items.h"

#include <inttypes.h>
#include <sched.h>
#include <string.h>

#include "common/err.h"

/* Reader patience with a bucket that stays odd (being written): spin, then
 * yield, then report a miss (safe: the daemon finds the item). */
#define SPIN_PAUSES 64u
#define SPIN_YIELDS 10000u

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

static inline uint64_t slot_word(uint32_t tag, uint64_t off)
{
    return ((uint64_t)tag << EC_ITEM_OFF_BITS) | (off / 8);
}

static inline uint32_t slot_tag(uint64_t w)
{
    return (uint32_t)(w >> EC_ITEM_OFF_BITS);
}

static inline uint64_t slot_off(uint64_t w)
{
    return (w & EC_ITEM_OFF_MASK) * 8;
}

/* Is an item of value_bytes at off wholly inside the data area? */
static inline bool item_fits(const ec_segment *seg, uint64_t off, uint64_t value_bytes)
{
    return off < seg->data_size && value_bytes <= seg->data_size - off &&
           8 <= seg->data_size - off - value_bytes;
}

/* A consistent snapshot of one bucket's slots. false when it stayed odd or
 * kept changing for too long (the caller treats it as a miss). */
static bool bucket_read(const ec_item_bucket *b, uint64_t *seq, uint64_t slots[EC_ITEM_WAYS])
{
    for (unsigned tries = 0; tries < SPIN_YIELDS; tries++) {
        for (unsigned spin = 0; spin < SPIN_PAUSES; spin++) {
            uint64_t s1 = atomic_load_explicit(&b->seq, memory_order_acquire);
            if (s1 & 1u) {
                cpu_relax();
                continue;
            }
            for (unsigned w = 0; w < EC_ITEM_WAYS; w++)
                slots[w] = atomic_load_explicit(&b->slot[w], memory_order_relaxed);
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&b->seq, memory_order_relaxed) == s1) {
                *seq = s1;
                return true;
            }
            cpu_relax();
        }
        sched_yield();
    }
    return false;
}

int ec_item_probe(const ec_segment *seg, const ec_item_hash *h, uint64_t value_bytes,
                  ec_item_ref *ref)
{
    uint64_t slots[EC_ITEM_WAYS], seq;

    if (!seg || !seg->item_buckets || h->b1 >= seg->item_buckets ||
        h->b2 >= seg->item_buckets)
        return 0;
    for (int k = 0; k < 2; k++) {
        const ec_item_bucket *b = &seg->items[k ? h->b2 : h->b1];

        if (!bucket_read(b, &seq, slots))
            continue;
        for (unsigned w = 0; w < EC_ITEM_WAYS; w++) {
            uint64_t off;
            if (slots[w] == 0 || slot_tag(slots[w]) != h->tag)
                continue;
            /* Everything read from shared memory is checked before use. */
            off = slot_off(slots[w]);
            if (!item_fits(seg, off, value_bytes))
                continue;
            ref->bucket = b;
            ref->seq = seq;
            ref->off = off;
            return 1;
        }
    }
    return 0;
}

int ec_item_lookup(const ec_segment *seg, uint64_t key, uint64_t value_bytes, ec_item_ref *ref)
{
    uint64_t slots[EC_ITEM_WAYS], seq;
    ec_item_hash h;

    if (!seg || !seg->item_buckets || !ref || key == 0)
        return 0;
    ec_item_hash_of(seg->item_buckets, key, &h);
    for (int k = 0; k < 2; k++) {
        const ec_item_bucket *b = &seg->items[k ? h.b2 : h.b1];

        if (!bucket_read(b, &seq, slots))
            continue;
        for (unsigned w = 0; w < EC_ITEM_WAYS; w++) {
            uint64_t off;
            if (slots[w] == 0 || slot_tag(slots[w]) != h.tag)
                continue;
            off = slot_off(slots[w]);
            if (!item_fits(seg, off, value_bytes) || ec_item_key_at(seg, off) != key)
                continue;
            /* The key was read from the item: valid only if the bucket
             * still holds the snapshot it came from. */
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&b->seq, memory_order_relaxed) != seq)
                break; /* changed under us: look at this bucket no further */
            ref->bucket = b;
            ref->seq = seq;
            ref->off = off;
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Writer side                                                         */

static int require_writer(const ec_segment *seg, const char *what)
{
    if (!seg || !seg->hdr)
        return ec_seterr(EC_EINVAL, "%s: no segment", what);
    if (!seg->item_buckets)
        return ec_seterr(EC_EINVAL, "%s: this segment has no item index (embcached "
                                    "--item-bytes 0)", what);
    if (!seg->writable)
        return ec_seterr(EC_EPERM, "%s: the segment is mapped read-only in this process; "
                                   "only embcached writes the item index", what);
    return 0;
}

static void slot_write(ec_item_bucket *b, unsigned w, uint64_t word)
{
    uint64_t s = atomic_load_explicit(&b->seq, memory_order_relaxed);
    uint64_t odd = (s + 1) | 1u; /* a bucket left odd by a crashed writer moves on too */

    atomic_store_explicit(&b->seq, odd, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&b->slot[w], word, memory_order_relaxed);
    atomic_store_explicit(&b->seq, odd + 1, memory_order_release);
}

/* The bucket and way that hold key (at off, when off != UINT64_MAX). */
static bool find(const ec_segment *seg, const ec_item_hash *h, uint64_t key, uint64_t off,
                 ec_item_bucket **bo, unsigned *wo)
{
    for (int k = 0; k < 2; k++) {
        ec_item_bucket *b = &seg->items[k ? h->b2 : h->b1];
        for (unsigned w = 0; w < EC_ITEM_WAYS; w++) {
            uint64_t s = atomic_load_explicit(&b->slot[w], memory_order_relaxed), o;
            if (s == 0 || slot_tag(s) != h->tag)
                continue;
            o = slot_off(s);
            if (o + 8 > seg->data_size || ec_item_key_at(seg, o) != key)
                continue;
            if (off != UINT64_MAX && o != off)
                continue;
            *bo = b;
            *wo = w;
            return true;
        }
        if (h->b2 == h->b1)
            break;
    }
    return false;
}

int ec_item_insert(ec_segment *seg, uint64_t key, uint64_t off)
{
    ec_item_bucket *b;
    ec_item_hash h;
    unsigned w;
    int rc;

    if ((rc = require_writer(seg, "ec_item_insert")) < 0)
        return rc;
    if (key == 0 || off % 8 || off >= seg->data_size || seg->data_size - off < 8 ||
        off / 8 > EC_ITEM_OFF_MASK)
        return ec_seterr(EC_EINVAL, "ec_item_insert: key %016" PRIx64 " at offset %" PRIu64
                                    " is not a valid item of the %" PRIu64 "-byte data area",
                         key, off, seg->data_size);
    if (ec_item_key_at(seg, off) != key)
        return ec_seterr(EC_EINVAL, "ec_item_insert: the item at offset %" PRIu64 " holds key "
                                    "%016" PRIx64 ", not %016" PRIx64 "; write it first",
                         off, ec_item_key_at(seg, off), key);
    ec_item_hash_of(seg->item_buckets, key, &h);
    if (find(seg, &h, key, UINT64_MAX, &b, &w))
        return ec_seterr(EC_EEXIST, "ec_item_insert: key %016" PRIx64 " is already published",
                         key);
    for (int k = 0; k < 2; k++) {
        b = &seg->items[k ? h.b2 : h.b1];
        for (w = 0; w < EC_ITEM_WAYS; w++) {
            if (atomic_load_explicit(&b->slot[w], memory_order_relaxed) == 0) {
                slot_write(b, w, slot_word(h.tag, off));
                return 0;
            }
        }
    }
    return ec_seterr(EC_ENOSPC, "ec_item_insert: both buckets of key %016" PRIx64 " are full; "
                                "evict one of their items first", key);
}

int ec_item_remove(ec_segment *seg, uint64_t key, uint64_t off)
{
    ec_item_bucket *b;
    ec_item_hash h;
    unsigned w;
    int rc;

    if ((rc = require_writer(seg, "ec_item_remove")) < 0)
        return rc;
    ec_item_hash_of(seg->item_buckets, key, &h);
    if (key == 0 || !find(seg, &h, key, off, &b, &w))
        return ec_seterr(EC_ENOENT, "ec_item_remove: key %016" PRIx64 " at offset %" PRIu64
                                    " is not published", key, off);
    slot_write(b, w, 0);
    return 0;
}

unsigned ec_item_neighbours(const ec_segment *seg, uint64_t key,
                            uint64_t offs[2 * EC_ITEM_WAYS])
{
    ec_item_hash h;
    unsigned n = 0;

    if (!seg || !seg->item_buckets)
        return 0;
    ec_item_hash_of(seg->item_buckets, key, &h);
    for (int k = 0; k < 2; k++) {
        const ec_item_bucket *b = &seg->items[k ? h.b2 : h.b1];
        for (unsigned w = 0; w < EC_ITEM_WAYS; w++) {
            uint64_t s = atomic_load_explicit(&b->slot[w], memory_order_relaxed);
            if (s)
                offs[n++] = slot_off(s);
        }
        if (h.b2 == h.b1)
            break;
    }
    return n;
}

int ec_item_foreach(const ec_segment *seg, int (*fn)(uint64_t key, uint64_t off, void *arg),
                    void *arg)
{
    if (!seg || !fn)
        return ec_seterr(EC_EINVAL, "ec_item_foreach: segment and callback are required");
    for (uint64_t i = 0; i < seg->item_buckets; i++) {
        const ec_item_bucket *b = &seg->items[i];
        for (unsigned w = 0; w < EC_ITEM_WAYS; w++) {
            uint64_t s = atomic_load_explicit(&b->slot[w], memory_order_relaxed), off;
            int rc;
            if (s == 0)
                continue;
            off = slot_off(s);
            rc = fn(off + 8 <= seg->data_size ? ec_item_key_at(seg, off) : 0, off, arg);
            if (rc)
                return rc;
        }
    }
    return 0;
}

void ec_item_clear(ec_segment *seg)
{
    if (require_writer(seg, "ec_item_clear") < 0)
        return;
    for (uint64_t i = 0; i < seg->item_buckets; i++) {
        ec_item_bucket *b = &seg->items[i];
        uint64_t s = atomic_load_explicit(&b->seq, memory_order_relaxed);
        uint64_t odd = (s + 1) | 1u;

        atomic_store_explicit(&b->seq, odd, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
        for (unsigned w = 0; w < EC_ITEM_WAYS; w++)
            atomic_store_explicit(&b->slot[w], 0, memory_order_relaxed);
        atomic_store_explicit(&b->seq, odd + 1, memory_order_release);
    }
}

uint64_t ec_item_count(const ec_segment *seg)
{
    uint64_t n = 0;

    for (uint64_t i = 0; seg && i < seg->item_buckets; i++)
        for (unsigned w = 0; w < EC_ITEM_WAYS; w++)
            n += atomic_load_explicit(&seg->items[i].slot[w], memory_order_relaxed) != 0;
    return n;
}
