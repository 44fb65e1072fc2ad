/*
 * results.c - result records in the item store: keys, size classes, the
 * daemon's layout of a record and the readers' lookup (see results.h).
 */
#include "results.h"

#include <stdatomic.h>
#include <string.h>
/* Inline: readers run in libembcache, which links no libxxhash. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/err.h"
#include "common/hash.h"
#include "items.h"
#include "layout.h"

#define KEY_PAD(n) (((uint64_t)(n) + 7) / 8 * 8)
/* What one item of a slab may hold (core/itemstore.h's EC_ITEM_VALUE_MAX). */
#define VALUE_MAX ((uint64_t)EC_SLAB_BYTES - EC_SLAB_HEADER - 8)
#define READ_TRIES 8

void ec_result_key_of(uint64_t salt, uint32_t ns, const void *key, size_t key_len,
                      ec_result_key *out)
{
    XXH128_hash_t h = XXH3_128bits_withSeed(key, key_len, salt ^ ec_mix64((uint64_t)ns + 1));
    uint64_t low = h.low64 & EC_RESULT_HASH_MASK;

    out->item_key = (EC_ITEM_KIND_RESULT << 62) | ((uint64_t)(ns & EC_RESULT_NS_MASK) << 53) |
                    (low ? low : 1);
    out->hash_hi = h.high64;
}

uint64_t ec_result_record_bytes(size_t key_len, size_t value_len)
{
    uint64_t n;

    if (key_len > EC_RESULT_KEY_MAX || value_len > VALUE_MAX)
        return 0;
    n = sizeof(ec_result_hdr) + KEY_PAD(key_len) + value_len;
    return n <= VALUE_MAX ? n : 0;
}

uint64_t ec_result_class_bytes(uint64_t need)
{
    uint64_t p = 128, step, c;

    if (need == 0 || need > VALUE_MAX)
        return 0;
    if (need <= 128)
        return 128;
    while (p * 2 <= need)
        p *= 2;
    step = p / 8;
    c = (need + step - 1) / step * step;
    return c <= VALUE_MAX ? c : VALUE_MAX;
}

void ec_result_write(uint8_t *dst, const ec_result_hdr *h, const void *key, const void *value)
{
    uint64_t kp = KEY_PAD(h->key_len);

    memcpy(dst, h, sizeof(*h));
    if (h->key_len)
        memcpy(dst + sizeof(*h), key, h->key_len);
    memset(dst + sizeof(*h) + h->key_len, 0, kp - h->key_len);
    if (h->value_len)
        memcpy(dst + sizeof(*h) + kp, value, h->value_len);
}

/* The value bytes the item at off may hold, from its slab's header (the
 * daemon's, checked like anything else read from the segment); 0 when the
 * offset is not an item of a well-formed slab. */
static uint64_t value_cap(const ec_segment *seg, uint64_t off)
{
    uint64_t slab = off & ~((uint64_t)EC_SLAB_BYTES - 1);
    const volatile ec_slab_header *sh;
    uint64_t ib;

    if (slab > seg->data_size || EC_SLAB_BYTES > seg->data_size - slab)
        return 0;
    sh = (const volatile ec_slab_header *)(const void *)(seg->data + slab);
    ib = sh->item_bytes;
    if (sh->magic != EC_SLAB_MAGIC || ib < 8 + sizeof(ec_result_hdr) || ib % 8 ||
        ib > EC_SLAB_BYTES - EC_SLAB_HEADER || off < slab + EC_SLAB_HEADER ||
        (off - slab - EC_SLAB_HEADER) % ib || off + ib > slab + EC_SLAB_BYTES)
        return 0;
    return ib - 8;
}

int ec_result_read(const ec_segment *seg, const ec_result_key *k, uint32_t ns, uint32_t ns_gen,
                   const void *key, size_t key_len, int64_t now_ns, void *out, size_t cap,
                   ec_result_hdr *hdr)
{
    return ec_result_read_at(seg, k, ns, ns_gen, key, key_len, now_ns, out, cap, hdr, NULL);
}

int ec_result_read_at(const ec_segment *seg, const ec_result_key *k, uint32_t ns,
                      uint32_t ns_gen, const void *key, size_t key_len, int64_t now_ns,
                      void *out, size_t cap, ec_result_hdr *hdr, uint64_t *off)
{
    for (int tries = 0; tries < READ_TRIES; tries++) {
        ec_item_ref ref;
        ec_result_hdr h;
        const uint8_t *v;
        uint64_t vcap, rec;
        int state;

        if (ec_item_lookup(seg, k->item_key, sizeof(ec_result_hdr), &ref) != 1)
            return EC_RESULT_MISS;
        v = ec_item_value(seg, ref.off);
        vcap = value_cap(seg, ref.off);
        memcpy(&h, v, sizeof(h));
        rec = (uint64_t)sizeof(h) + KEY_PAD(h.key_len) + h.value_len;
        if (vcap == 0 || h.key_len != key_len || key_len > EC_RESULT_KEY_MAX ||
            h.value_len > VALUE_MAX || rec > vcap || h.hash_hi != k->hash_hi || h.ns != ns ||
            ((h.flags & EC_RESULT_NEGATIVE) && h.value_len) ||
            memcmp(v + sizeof(h), key, key_len) != 0) {
            if (!ec_item_still_valid(&ref))
                continue; /* read while the daemon changed it: look again */
            return EC_RESULT_MISS; /* another key, or a record we do not trust */
        }
        if (h.ns_gen != ns_gen || now_ns >= h.stale_until_ns)
            state = EC_RESULT_MISS;
        else
            state = now_ns < h.fresh_until_ns ? EC_RESULT_FRESH : EC_RESULT_STALE;
        if (state != EC_RESULT_MISS && out && h.value_len > cap) {
            if (!ec_item_still_valid(&ref))
                continue;
            if (hdr)
                *hdr = h;
            return ec_seterr(EC_ETOOBIG, "a result of %u bytes does not fit in %zu",
                             h.value_len, cap);
        }
        if (state != EC_RESULT_MISS && out && h.value_len)
            memcpy(out, v + sizeof(h) + KEY_PAD(key_len), h.value_len);
        if (!ec_item_still_valid(&ref))
            continue;
        if (state != EC_RESULT_MISS && hdr)
            *hdr = h;
        if (off)
            *off = ref.off;
        return state;
    }
    return EC_RESULT_MISS;
}
