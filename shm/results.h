/*
 * results.h - cached inference results as items of the item store: the
 * record a result item holds, how a (namespace, key bytes) becomes an item
 * key, and the reader's lookup (the cache-manager issue builds its
 * namespaces, TTLs, leases and invalidation on these).
 *
 * A result item's key is EC_ITEM_KIND_RESULT in its top two bits, the
 * namespace's slot in the next 9 and 53 bits of the 128-bit XXH3 hash of
 * the key bytes, seeded by the namespace's salt and slot; its value is a
 * record:
 *
 *   ec_result_hdr (120 bytes) | key bytes, padded to 8 | value bytes
 *
 * The header keeps the other 64 bits of the hash and the key itself, which
 * a reader compares in full: two keys that share 62 bits of hash are two
 * different items for the daemon (an insert of the second finds the first
 * and is refused or replaces it) and never a false hit for a reader. Sizes
 * come from the daemon and are checked against the item's slab before any
 * byte is used.
 *
 * Readers: any process with the segment mapped, any thread, no system call
 * (ec_result_read). Writer: the daemon's server thread lays a record out in
 * a slot the item store reserved (ec_result_write), then publishes it.
 */
#ifndef EC_SHM_RESULTS_H
#define EC_SHM_RESULTS_H

#include <stddef.h>
#include <stdint.h>

#include "embcache.h"
#include "segment.h"

#define EC_ITEM_KIND_RESULT 2ull
#define EC_RESULT_NS_MASK 0x1ffu
#define EC_RESULT_HASH_MASK ((1ull << 53) - 1)
/* The namespace slot of a result item's key. */
#define EC_RESULT_KEY_NS(key) ((uint32_t)((key) >> 53) & EC_RESULT_NS_MASK)
_Static_assert(EC_NS_MAX <= EC_RESULT_NS_MASK + 1, "namespace slots fit the item key");

/* ec_result_hdr.flags */
#define EC_RESULT_NEGATIVE 0x1u /* "no result" was the answer: no value bytes */
#define EC_RESULT_TENSOR 0x2u   /* the value is a tensor: dtype, ndim, shape */

typedef struct ec_result_hdr {
    uint64_t hash_hi;            /* the high 64 bits of the key's hash */
    uint32_t ns, ns_gen;         /* namespace slot and its generation when written */
    uint32_t key_len, value_len;
    int64_t fresh_until_ns;      /* CLOCK_MONOTONIC: a hit until then */
    int64_t stale_until_ns;      /* >= fresh_until_ns: may be served stale until then */
    uint32_t flags;              /* EC_RESULT_* */
    uint32_t compute_us;         /* how long computing it took (early refresh) */
    uint32_t dtype, ndim;        /* EC_RESULT_TENSOR */
    uint64_t shape[EC_MAX_DIMS];
} ec_result_hdr;

_Static_assert(sizeof(ec_result_hdr) == 120, "result header layout");

/* Where a result is in the item store. */
typedef struct ec_result_key {
    uint64_t item_key;           /* never 0 */
    uint64_t hash_hi;
} ec_result_key;

/* Longest key: a key is compared in full, so it is kept whole. */
#define EC_RESULT_KEY_MAX 4096u

void ec_result_key_of(uint64_t salt, uint32_t ns, const void *key, size_t key_len,
                      ec_result_key *out);

/* The item value bytes a record of this key and value needs (before the
 * item store's rounding to a size class), or 0 when too large. */
uint64_t ec_result_record_bytes(size_t key_len, size_t value_len);

/* The size class a record of need bytes is stored in: need rounded up to
 * one of about 9 classes per doubling (at most 12.5% more), so a store of
 * values of every size has a bounded number of classes. 0 when need is 0
 * or more than an item may hold. */
uint64_t ec_result_class_bytes(uint64_t need);

/* Daemon: lay a record out at dst (an item's value, at least
 * ec_result_record_bytes() long). h->key_len and h->value_len say how many
 * bytes of key and value are copied. */
void ec_result_write(uint8_t *dst, const ec_result_hdr *h, const void *key, const void *value);

/* What a lookup found. */
enum ec_result_state {
    EC_RESULT_MISS = 0,
    EC_RESULT_FRESH = 1,         /* before fresh_until */
    EC_RESULT_STALE = 2,         /* after fresh_until, before stale_until */
};

/* Look (ns, ns_gen, key) up at now_ns and copy its value to out (cap
 * bytes). Returns an ec_result_state, with *hdr (may be NULL) filled on
 * FRESH or STALE;
 * EC_ETOOBIG when the value is larger than cap (hdr->value_len says how
 * large). A record of another generation of the namespace, or past
 * stale_until, is a miss. Lock-free; a copy that raced with the daemon is
 * retried, and a record that keeps changing is a miss. */
int ec_result_read(const ec_segment *seg, const ec_result_key *k, uint32_t ns, uint32_t ns_gen,
                   const void *key, size_t key_len, int64_t now_ns, void *out, size_t cap,
                   ec_result_hdr *hdr);

/* The same, also saying where the item is (*off, on FRESH or STALE), for
 * the access hint a client sends. */
int ec_result_read_at(const ec_segment *seg, const ec_result_key *k, uint32_t ns,
                      uint32_t ns_gen, const void *key, size_t key_len, int64_t now_ns,
                      void *out, size_t cap, ec_result_hdr *hdr, uint64_t *off);

#endif
