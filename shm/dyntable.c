/*
 * dyntable.c - the reader's lookup of a dynamic table and the daemon's
 * primitive writes (the protocol is in dyntable.h). Which slot an update
 * takes, which key goes when the table is full, and the log of updates
 * are the daemon's (core/dyntable.c).
 */
#include "dyntable.h"

#include <string.h>

#include "common/err.h"

#define PAGE 4096u
#define SPIN_MAX (1ull << 24)

static uint64_t pow2_at_least(uint64_t x)
{
    uint64_t p = 1;

    while (p < x)
        p <<= 1;
    return p;
}

uint64_t ec_dyn_region_bytes(uint64_t capacity, uint64_t row_bytes, uint64_t *nbuckets,
                             uint64_t *nslots, uint64_t *slot_bytes)
{
    /* Buckets for a load of at most half their ways: with two choices a
     * full bucket pair is then vanishingly rare. */
    uint64_t nb = pow2_at_least((capacity * 2 + EC_DYN_WAYS - 1) / EC_DYN_WAYS);
    uint64_t spare = capacity / 16 > EC_DYN_SPARE_MIN ? capacity / 16 : EC_DYN_SPARE_MIN;
    uint64_t sb = (sizeof(ec_dyn_slot) + row_bytes + 31) & ~31ull;
    uint64_t ns = capacity + spare;
    uint64_t slots_off = PAGE + ((nb * sizeof(ec_dyn_bucket) + PAGE - 1) & ~(uint64_t)(PAGE - 1));

    if (nb < 2)
        nb = 2;
    slots_off = PAGE + ((nb * sizeof(ec_dyn_bucket) + PAGE - 1) & ~(uint64_t)(PAGE - 1));
    if (nbuckets)
        *nbuckets = nb;
    if (nslots)
        *nslots = ns;
    if (slot_bytes)
        *slot_bytes = sb;
    return (slots_off + ns * sb + PAGE - 1) & ~(uint64_t)(PAGE - 1);
}

void ec_dyn_init_w(void *base, uint32_t tensor, uint64_t capacity, uint64_t row_bytes,
                   uint64_t salt)
{
    ec_dyn_header *h = base;
    uint64_t nb, ns, sb, bytes = ec_dyn_region_bytes(capacity, row_bytes, &nb, &ns, &sb);

    memset(base, 0, PAGE);
    h->magic = EC_DYN_MAGIC;
    h->version = EC_DYN_VERSION;
    h->tensor = tensor;
    h->region_bytes = bytes;
    h->nbuckets = nb;
    h->nslots = ns;
    h->capacity = capacity;
    h->row_bytes = row_bytes;
    h->slot_bytes = sb;
    h->buckets_off = PAGE;
    h->slots_off = PAGE + ((nb * sizeof(ec_dyn_bucket) + PAGE - 1) & ~(uint64_t)(PAGE - 1));
    h->salt = salt;
    memset((uint8_t *)base + h->buckets_off, 0, nb * sizeof(ec_dyn_bucket));
    /* Slots need no clearing: a slot is read only through a word, and
     * written (seq made odd first) before a word points at it; the scans
     * read `live`, so clear that. */
    for (uint64_t s = 0; s < ns; s++) {
        ec_dyn_slot *sl = (ec_dyn_slot *)(void *)((uint8_t *)base + h->slots_off + s * sb);
        atomic_store_explicit(&sl->live, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->lsn, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->seq, 0, memory_order_relaxed);
    }
}

int ec_dyn_view_open(const ec_segment *seg, uint64_t off, uint32_t tensor, uint64_t row_bytes,
                     ec_dyn_view *v)
{
    const ec_dyn_header *h;
    uint64_t room, nb, ns, sb, need;

    if (off % PAGE || off > seg->data_size || seg->data_size - off < PAGE)
        return ec_seterr(EC_ECORRUPT, "dynamic table of tensor %u: offset %llu outside the "
                                      "segment's data area", tensor, (unsigned long long)off);
    h = (const ec_dyn_header *)(const void *)(seg->data + off);
    room = seg->data_size - off;
    if (h->magic != EC_DYN_MAGIC || h->version != EC_DYN_VERSION ||
        (tensor && h->tensor != tensor) || (row_bytes && h->row_bytes != row_bytes))
        return ec_seterr(EC_ECORRUPT, "dynamic table of tensor %u: bad header (magic, "
                                      "version %u, tensor %u, row bytes %llu)",
                         tensor, h->version, h->tensor, (unsigned long long)h->row_bytes);
    if (h->capacity == 0 || h->capacity > EC_DYN_CAPACITY_MAX || h->row_bytes == 0 ||
        h->row_bytes > (1ull << 30))
        return ec_seterr(EC_ECORRUPT, "dynamic table of tensor %u: capacity %llu or row bytes "
                                      "%llu out of range", tensor,
                         (unsigned long long)h->capacity, (unsigned long long)h->row_bytes);
    need = ec_dyn_region_bytes(h->capacity, h->row_bytes, &nb, &ns, &sb);
    if (h->nbuckets != nb || h->nslots != ns || h->slot_bytes != sb || h->region_bytes != need ||
        need > room || h->buckets_off != PAGE || h->slots_off < PAGE + nb * sizeof(ec_dyn_bucket) ||
        h->slots_off > need || (need - h->slots_off) / sb < ns)
        return ec_seterr(EC_ECORRUPT, "dynamic table of tensor %u: geometry does not match its "
                                      "capacity %llu (region %llu of %llu bytes)",
                         tensor, (unsigned long long)h->capacity,
                         (unsigned long long)h->region_bytes, (unsigned long long)room);
    v->hdr = h;
    v->buckets = (const ec_dyn_bucket *)(const void *)(seg->data + off + h->buckets_off);
    v->slots = seg->data + off + h->slots_off;
    v->nbuckets = nb;
    v->nslots = ns;
    v->slot_bytes = sb;
    v->row_bytes = h->row_bytes;
    v->capacity = h->capacity;
    v->salt = h->salt;
    return 0;
}

/* One pass over key's two buckets: 1 copied (out may be NULL: no copy;
 * *lsn, when lsn is not NULL, the slot's), 0 absent, -1 a slot moved under
 * the copy (look up again). */
static int find_once(const ec_dyn_view *v, const ec_dyn_hash *h, int64_t key, void *out,
                     uint64_t *lsn)
{
    uint64_t bs[2] = {h->b1, h->b2};

    for (int i = 0; i < 2; i++) {
        const ec_dyn_bucket *b = &v->buckets[bs[i]];
        for (unsigned w = 0; w < EC_DYN_WAYS; w++) {
            uint64_t word = atomic_load_explicit(&b->word[w], memory_order_acquire);
            uint64_t slot;
            const ec_dyn_slot *sl;
            uint64_t s1;
            if (!word || (word >> EC_DYN_SLOT_BITS) != h->tag)
                continue;
            slot = (word & EC_DYN_SLOT_MASK) - 1;
            if (slot >= v->nslots)
                continue; /* never written by the daemon: not ours to read */
            sl = ec_dyn_slot_at(v, slot);
            s1 = atomic_load_explicit(&sl->seq, memory_order_acquire);
            if (s1 & 1)
                return -1;
            if (atomic_load_explicit(&sl->key, memory_order_relaxed) != key) {
                /* A tag collision, or a word that moved and a slot reused
                 * since: only the first is a reason to look further. */
                if (atomic_load_explicit(&b->word[w], memory_order_acquire) != word)
                    return -1;
                continue;
            }
            if (out)
                memcpy(out, (const uint8_t *)(sl + 1), v->row_bytes);
            if (lsn)
                *lsn = atomic_load_explicit(&sl->lsn, memory_order_relaxed);
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&sl->seq, memory_order_relaxed) != s1)
                return -1;
            return 1;
        }
    }
    return 0;
}

static int find_h(const ec_dyn_view *v, const ec_dyn_hash *h, int64_t key, void *out,
                  uint64_t *lsn, uint64_t *retries)
{
    int rc;

    for (uint64_t n = 0; (rc = find_once(v, h, key, out, lsn)) < 0; n++) {
        if (retries)
            (*retries)++;
        /* A slot odd for this long was left half-written by a daemon
         * that died: its successor publishes a new table. */
        if (n == SPIN_MAX)
            return ec_seterr(EC_ESTALE, "dynamic table of tensor %u: key %lld is being "
                                        "written for too long (did the daemon die?)",
                             v->hdr->tensor, (long long)key);
    }
    return rc;
}

static int find(const ec_dyn_view *v, int64_t key, void *out, uint64_t *lsn,
                uint64_t *retries)
{
    ec_dyn_hash h;

    ec_dyn_hash_of(v->nbuckets, v->salt, key, &h);
    return find_h(v, &h, key, out, lsn, retries);
}

int ec_dyn_find(const ec_dyn_view *v, int64_t key, void *out, uint64_t *retries)
{
    return find(v, key, out, NULL, retries);
}

int ec_dyn_key_lsn(const ec_dyn_view *v, int64_t key, uint64_t *lsn)
{
    uint64_t got = 0;
    int rc = find(v, key, NULL, &got, NULL);

    if (rc == 1)
        *lsn = got;
    return rc;
}

int ec_dyn_find_many(const ec_dyn_view *v, const int64_t *keys, size_t n, int *found,
                     uint64_t *lsn, void *out)
{
    ec_dyn_hash h[EC_DYN_BATCH];

    if (n > EC_DYN_BATCH)
        return ec_seterr(EC_EINVAL, "ec_dyn_find_many: %zu keys (at most %u)", n, EC_DYN_BATCH);
    for (size_t i = 0; i < n; i++) {
        ec_dyn_hash_of(v->nbuckets, v->salt, keys[i], &h[i]);
        __builtin_prefetch(&v->buckets[h[i].b1]);
        __builtin_prefetch(&v->buckets[h[i].b2]);
    }
    /* The slots of the words whose tag matches (a hint: the lookups below
     * check everything again), with their rows when they are to be copied. */
    for (size_t i = 0; i < n; i++) {
        uint64_t bs[2] = {h[i].b1, h[i].b2};
        for (int j = 0; j < 2; j++)
            for (unsigned w = 0; w < EC_DYN_WAYS; w++) {
                uint64_t word = atomic_load_explicit(&v->buckets[bs[j]].word[w],
                                                     memory_order_relaxed);
                uint64_t slot = (word & EC_DYN_SLOT_MASK) - 1;
                if (!word || (word >> EC_DYN_SLOT_BITS) != h[i].tag || slot >= v->nslots)
                    continue;
                if (out)
                    ec_dyn_slot_prefetch(v, slot);
                else
                    __builtin_prefetch(ec_dyn_slot_at(v, slot));
            }
    }
    for (size_t i = 0; i < n; i++) {
        int rc = find_h(v, &h[i], keys[i], out ? (uint8_t *)out + i * v->row_bytes : NULL,
                        lsn ? &lsn[i] : NULL, NULL);
        if (rc < 0)
            return rc;
        found[i] = rc;
    }
    return 0;
}

int ec_dyn_slot_peek(const ec_dyn_view *v, uint64_t slot, uint64_t *lsn)
{
    const ec_dyn_slot *sl;
    uint64_t s1, live, l;

    if (slot >= v->nslots)
        return 0;
    sl = ec_dyn_slot_at(v, slot);
    s1 = atomic_load_explicit(&sl->seq, memory_order_acquire);
    if (s1 & 1) {
        *lsn = UINT64_MAX;
        return 1;
    }
    live = atomic_load_explicit(&sl->live, memory_order_relaxed);
    l = atomic_load_explicit(&sl->lsn, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&sl->seq, memory_order_relaxed) != s1) {
        *lsn = UINT64_MAX; /* rewritten under us: newer than anything */
        return 1;
    }
    if (!live)
        return 0;
    *lsn = l;
    return 1;
}

int ec_dyn_slot_read(const ec_dyn_view *v, uint64_t slot, int64_t *key, void *out)
{
    const ec_dyn_slot *sl;

    if (slot >= v->nslots)
        return 0;
    sl = ec_dyn_slot_at(v, slot);
    for (uint64_t n = 0;; n++) {
        uint64_t s1 = atomic_load_explicit(&sl->seq, memory_order_acquire);
        int64_t k;
        if (n == SPIN_MAX)
            return ec_seterr(EC_ESTALE, "dynamic table of tensor %u: slot %llu is being "
                                        "written for too long (did the daemon die?)",
                             v->hdr->tensor, (unsigned long long)slot);
        if (s1 & 1)
            continue;
        if (!atomic_load_explicit(&sl->live, memory_order_relaxed))
            return 0;
        k = atomic_load_explicit(&sl->key, memory_order_relaxed);
        memcpy(out, (const uint8_t *)(sl + 1), v->row_bytes);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&sl->seq, memory_order_relaxed) != s1)
            continue;
        /* A slot just left by an update may still say live: count it only
         * where its key's word points, so a scan sees each key once. */
        {
            ec_dyn_hash h;
            uint64_t bs[2];
            ec_dyn_hash_of(v->nbuckets, v->salt, k, &h);
            bs[0] = h.b1;
            bs[1] = h.b2;
            for (int i = 0; i < 2; i++)
                for (unsigned w = 0; w < EC_DYN_WAYS; w++) {
                    uint64_t word = atomic_load_explicit(&v->buckets[bs[i]].word[w],
                                                         memory_order_acquire);
                    if (word && (word & EC_DYN_SLOT_MASK) == slot + 1 &&
                        (word >> EC_DYN_SLOT_BITS) == h.tag) {
                        *key = k;
                        return 1;
                    }
                }
        }
        return 0;
    }
}

void ec_dyn_slot_write_w(const ec_dyn_view *v, uint64_t slot, int64_t key, const void *row,
                         uint64_t lsn)
{
    ec_dyn_slot *sl = ec_dyn_slot_w(v, slot);
    uint64_t s = atomic_load_explicit(&sl->seq, memory_order_relaxed);

    atomic_store_explicit(&sl->seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&sl->key, key, memory_order_relaxed);
    memcpy((uint8_t *)(sl + 1), row, v->row_bytes);
    atomic_store_explicit(&sl->lsn, lsn, memory_order_relaxed);
    atomic_store_explicit(&sl->live, 1, memory_order_relaxed);
    atomic_store_explicit(&sl->seq, s + 2, memory_order_release);
}

bool ec_dyn_locate_w(const ec_dyn_view *v, int64_t key, uint64_t *bucket, unsigned *way,
                     uint64_t *slot)
{
    ec_dyn_hash h;
    uint64_t bs[2];

    ec_dyn_hash_of(v->nbuckets, v->salt, key, &h);
    bs[0] = h.b1;
    bs[1] = h.b2;
    for (int i = 0; i < 2; i++)
        for (unsigned w = 0; w < EC_DYN_WAYS; w++) {
            uint64_t word = atomic_load_explicit(&v->buckets[bs[i]].word[w], memory_order_relaxed);
            uint64_t s;
            if (!word || (word >> EC_DYN_SLOT_BITS) != h.tag)
                continue;
            s = (word & EC_DYN_SLOT_MASK) - 1;
            if (atomic_load_explicit(&ec_dyn_slot_at(v, s)->key, memory_order_relaxed) != key)
                continue;
            *bucket = bs[i];
            *way = w;
            *slot = s;
            return true;
        }
    return false;
}

static unsigned used_ways(const ec_dyn_bucket *b, unsigned *first_free)
{
    unsigned n = 0;

    *first_free = EC_DYN_WAYS;
    for (unsigned w = 0; w < EC_DYN_WAYS; w++) {
        if (atomic_load_explicit(&b->word[w], memory_order_relaxed))
            n++;
        else if (*first_free == EC_DYN_WAYS)
            *first_free = w;
    }
    return n;
}

bool ec_dyn_free_way_w(const ec_dyn_view *v, int64_t key, uint64_t *bucket, unsigned *way)
{
    ec_dyn_hash h;
    unsigned f1, f2, n1, n2;

    ec_dyn_hash_of(v->nbuckets, v->salt, key, &h);
    n1 = used_ways(&v->buckets[h.b1], &f1);
    n2 = used_ways(&v->buckets[h.b2], &f2);
    if (f1 == EC_DYN_WAYS && f2 == EC_DYN_WAYS)
        return false;
    if (f2 == EC_DYN_WAYS || (f1 != EC_DYN_WAYS && n1 <= n2)) {
        *bucket = h.b1;
        *way = f1;
    } else {
        *bucket = h.b2;
        *way = f2;
    }
    return true;
}

void ec_dyn_word_set_w(const ec_dyn_view *v, int64_t key, uint64_t bucket, unsigned way,
                       uint64_t slot)
{
    ec_dyn_hash h;
    uint64_t word = 0;

    if (slot != UINT64_MAX) {
        ec_dyn_hash_of(v->nbuckets, v->salt, key, &h);
        word = h.tag << EC_DYN_SLOT_BITS | (slot + 1);
    }
    atomic_store_explicit(&ec_dyn_bucket_w(v, bucket)->word[way], word, memory_order_release);
}
