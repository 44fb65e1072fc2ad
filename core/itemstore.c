/*
 * itemstore.c - slabs, size classes and S3-FIFO eviction of the items in
 * the segment (see itemstore.h for the design and who calls it).
 *
 * State, all in the daemon's heap but the slab headers and the items:
 *
 *   by_mib[]   data-area MiB -> the slab there (NULL: none); an item's
 *              offset finds its slab and position in O(1)
 *   classes    one per item size: its slabs, free slots, S queue (a ring of
 *              item offsets, oldest first), M's clock hand, ghost table
 *   meta[]     per slab, one byte per slot: state (FREE, RESERVED, S, M),
 *              a 2-bit use counter, and 4 bits of the item's tag, which a
 *              client's hint must match (a hint for a slot reused since is
 *              mostly told apart without reading the item)
 *
 * Invariants (asserted where cheap):
 *   1. A slot is published in the item index iff its state is S or M, and
 *      then its slab's header sum includes its checksum.
 *   2. cls->ns / cls->nm count the slots in state S / M; every S slot has
 *      an entry in the S ring (the ring may also hold stale entries, of
 *      slots that left S otherwise; they are skipped when popped).
 *   3. A slot is on its class's free list iff its state is FREE and it is
 *      below its slab's bump mark; slots at or above bump were never used.
 *   4. A slot's bytes are rewritten only while it is RESERVED, i.e. after
 *      it was unpublished (which bumped its bucket's sequence).
 */
#include "core/itemstore.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/hash.h"
#include "common/log.h"
#include "core/partfile.h"
#include "shm/items.h"

enum { ST_FREE = 0, ST_RESERVED = 1, ST_S = 2, ST_M = 3 };

#define ST(m) ((m) & 3u)
#define FREQ(m) (((m) >> 2) & 3u)
#define TAG4(m) ((m) >> 4)
#define META(st, fr) ((uint8_t)((st) | ((fr) << 2)))
/* The same, keeping the slot's tag bits (a live item's). */
#define REMETA(m, st, fr) ((uint8_t)(((m) & 0xf0u) | (st) | ((fr) << 2)))
#define S_SHARE 10 /* percent of a class's slots that S may hold */

struct iclass;

struct slab {
    uint64_t off;                /* from the data area, 1 MiB-aligned */
    struct iclass *cls;
    uint32_t nitems;             /* slots */
    uint32_t bump;               /* slots [bump, nitems) were never used */
    uint32_t live;               /* slots in state S or M */
    uint32_t idx;                /* position in cls->slabs */
    uint8_t *meta;               /* nitems bytes */
};

struct iclass {
    uint32_t item_bytes;         /* 8-byte key + value, padded to 8 */
    uint64_t value_bytes;
    struct slab **slabs;
    size_t nslabs, capslabs;
    uint64_t *free;              /* item offsets */
    size_t nfree, capfree;
    uint64_t *sq;                /* S ring */
    size_t sq_head, sq_len, sq_cap;
    uint64_t ns, nm;
    size_t hand_slab;            /* M's clock hand */
    uint32_t hand_pos;
    uint16_t *ghost;             /* fingerprints of keys evicted from S */
    size_t nghost;
    uint64_t since_grow;         /* evictions since the last may_evict slab_alloc */
};

struct ec_itemstore {
    ec_segment *seg;
    ec_itemstore_env env;
    struct slab **by_mib;
    uint64_t nmib;
    struct iclass **classes;
    size_t nclasses;
    uint64_t nslabs;
    ec_itemstore_stats st;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static uint32_t item_bytes_of(uint64_t value_bytes)
{
    return (uint32_t)((8 + value_bytes + 7) / 8 * 8);
}

static struct slab *slab_of(const ec_itemstore *s, uint64_t off)
{
    uint64_t mib = off / EC_SLAB_BYTES;

    return mib < s->nmib ? s->by_mib[mib] : NULL;
}

/* Slot number of the item at off in slab sl, or UINT32_MAX if off is not
 * the start of one of its slots. */
static uint32_t pos_of(const struct slab *sl, uint64_t off)
{
    uint64_t rel;

    if (off < sl->off + EC_SLAB_HEADER)
        return UINT32_MAX;
    rel = off - sl->off - EC_SLAB_HEADER;
    if (rel % sl->cls->item_bytes || rel / sl->cls->item_bytes >= sl->nitems)
        return UINT32_MAX;
    return (uint32_t)(rel / sl->cls->item_bytes);
}

static uint64_t off_of(const struct slab *sl, uint32_t pos)
{
    return sl->off + EC_SLAB_HEADER + (uint64_t)pos * sl->cls->item_bytes;
}

static ec_slab_header *header_of(const ec_itemstore *s, const struct slab *sl)
{
    return (ec_slab_header *)(void *)(s->seg->data + sl->off);
}

/* The checksum an item contributes to its slab's sum. */
static uint64_t item_sum(const ec_itemstore *s, uint64_t off, uint64_t value_bytes)
{
    return ec_checksum(s->seg->data + off, (size_t)(8 + value_bytes));
}

static int push_u64(uint64_t **v, size_t *n, size_t *cap, uint64_t x)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 256;
        uint64_t *p = realloc(*v, c * sizeof(*p));
        if (!p)
            return EC_ENOMEM;
        *v = p;
        *cap = c;
    }
    (*v)[(*n)++] = x;
    return 0;
}

/* ------------------------------------------------------------------ */
/* S ring and ghost                                                    */

static int sq_push(struct iclass *c, uint64_t off)
{
    if (c->sq_len == c->sq_cap) {
        size_t cap = c->sq_cap ? c->sq_cap * 2 : 1024;
        uint64_t *q = malloc(cap * sizeof(*q));
        if (!q)
            return EC_ENOMEM;
        for (size_t i = 0; i < c->sq_len; i++)
            q[i] = c->sq[(c->sq_head + i) % c->sq_cap];
        free(c->sq);
        c->sq = q;
        c->sq_cap = cap;
        c->sq_head = 0;
    }
    c->sq[(c->sq_head + c->sq_len) % c->sq_cap] = off;
    c->sq_len++;
    return 0;
}

static bool sq_pop(struct iclass *c, uint64_t *off)
{
    if (!c->sq_len)
        return false;
    *off = c->sq[c->sq_head];
    c->sq_head = (c->sq_head + 1) % c->sq_cap;
    c->sq_len--;
    return true;
}

static void ghost_at(const struct iclass *c, uint64_t key, size_t *i, uint16_t *fp)
{
    uint64_t h = ec_mix64(key ^ 0x5bd1e9955bd1e995ull);

    *i = (size_t)ec_item_range(h, c->nghost);
    *fp = (uint16_t)((h & 0xffff) | 1u);
}

static void ghost_put(struct iclass *c, uint64_t key)
{
    size_t i;
    uint16_t fp;

    if (!c->nghost)
        return;
    ghost_at(c, key, &i, &fp);
    c->ghost[i] = fp;
}

static bool ghost_take(struct iclass *c, uint64_t key)
{
    size_t i;
    uint16_t fp;

    if (!c->nghost)
        return false;
    ghost_at(c, key, &i, &fp);
    if (c->ghost[i] != fp)
        return false;
    c->ghost[i] = 0;
    return true;
}

/* The ghost remembers about as many keys as the class has slots. Resizing
 * forgets it (it only steers admission). */
static void ghost_resize(struct iclass *c)
{
    size_t want = c->nslabs * (c->nslabs ? c->slabs[0]->nitems : 0);
    uint16_t *g;

    if (want <= c->nghost && want >= c->nghost / 2)
        return;
    g = calloc(want ? want : 1, sizeof(*g));
    if (!g)
        return; /* keep the old one */
    free(c->ghost);
    c->ghost = g;
    c->nghost = want;
}

/* ------------------------------------------------------------------ */
/* Classes and slabs                                                   */

static struct iclass *class_get(ec_itemstore *s, uint64_t value_bytes, bool create)
{
    struct iclass *c, **v;

    for (size_t i = 0; i < s->nclasses; i++)
        if (s->classes[i]->value_bytes == value_bytes)
            return s->classes[i];
    if (!create)
        return NULL;
    c = calloc(1, sizeof(*c));
    v = realloc(s->classes, (s->nclasses + 1) * sizeof(*v));
    if (!c || !v) {
        free(c);
        if (v)
            s->classes = v;
        return NULL;
    }
    c->value_bytes = value_bytes;
    c->item_bytes = item_bytes_of(value_bytes);
    s->classes = v;
    s->classes[s->nclasses++] = c;
    return c;
}

/* Put a slab at off (already the caller's memory) into class c. */
static struct slab *slab_add(ec_itemstore *s, struct iclass *c, uint64_t off, bool init)
{
    struct slab *sl = calloc(1, sizeof(*sl));
    uint64_t mib = off / EC_SLAB_BYTES;

    if (!sl || mib >= s->nmib || s->by_mib[mib])
        goto fail;
    sl->off = off;
    sl->cls = c;
    sl->nitems = (EC_SLAB_BYTES - EC_SLAB_HEADER) / c->item_bytes;
    sl->meta = calloc(sl->nitems, 1);
    if (!sl->meta)
        goto fail;
    if (c->nslabs == c->capslabs) {
        size_t cap = c->capslabs ? c->capslabs * 2 : 16;
        struct slab **v = realloc(c->slabs, cap * sizeof(*v));
        if (!v)
            goto fail;
        c->slabs = v;
        c->capslabs = cap;
    }
    if (init) {
        ec_slab_header *h = (ec_slab_header *)(void *)(s->seg->data + off);
        memset(h, 0, sizeof(*h));
        h->item_bytes = c->item_bytes;
        h->nitems = sl->nitems;
        h->value_bytes = c->value_bytes;
        h->sum = 0;
        h->magic = EC_SLAB_MAGIC;
    }
    sl->idx = (uint32_t)c->nslabs;
    c->slabs[c->nslabs++] = sl;
    s->by_mib[mib] = sl;
    s->nslabs++;
    ghost_resize(c);
    return sl;
fail:
    if (sl)
        free(sl->meta);
    free(sl);
    return NULL;
}

/* Unpublish the item in slot pos of sl (state S or M): bucket seq bumped,
 * slab sum updated, counts kept. The slot becomes RESERVED. */
static void unpublish(ec_itemstore *s, struct slab *sl, uint32_t pos)
{
    struct iclass *c = sl->cls;
    uint64_t off = off_of(sl, pos), key = ec_item_key_at(s->seg, off);
    unsigned st = ST(sl->meta[pos]);
    int rc;

    assert(st == ST_S || st == ST_M);
    rc = ec_item_remove(s->seg, key, off);
    assert(rc == 0);
    (void)rc;
    header_of(s, sl)->sum ^= item_sum(s, off, c->value_bytes);
    if (st == ST_S)
        c->ns--;
    else
        c->nm--;
    sl->live--;
    sl->meta[pos] = META(ST_RESERVED, 0);
    s->st.items--;
    if (s->env.evicted)
        s->env.evicted(s->env.arg, key, c->value_bytes);
}

static void slot_free(struct iclass *c, struct slab *sl, uint32_t pos)
{
    sl->meta[pos] = META(ST_FREE, 0);
    if (push_u64(&c->free, &c->nfree, &c->capfree, off_of(sl, pos)))
        sl->meta[pos] = META(ST_RESERVED, 0); /* lost until its slab goes: harmless */
}

/* ------------------------------------------------------------------ */
/* S3-FIFO                                                             */

/* Evict one item of class c by S3-FIFO; its slot is returned RESERVED.
 * EC_ENOSPC when the class holds no item. */
static int evict_one(ec_itemstore *s, struct iclass *c, uint64_t *off_out)
{
    uint64_t cap = 0;

    for (size_t i = 0; i < c->nslabs; i++)
        cap += c->slabs[i]->nitems;
    for (uint64_t steps = 0; c->ns + c->nm > 0; steps++) {
        bool from_s = c->ns > 0 && (c->nm == 0 || c->ns * 100 >= cap * S_SHARE);

        if (steps > 8 * cap + 16) /* cannot happen: every step moves toward a victim */
            break;
        if (from_s) {
            uint64_t off;
            struct slab *sl;
            uint32_t pos;

            if (!sq_pop(c, &off)) {
                c->ns = 0; /* the ring lost entries (out of memory): recount later */
                continue;
            }
            sl = slab_of(s, off);
            if (!sl || sl->cls != c || (pos = pos_of(sl, off)) == UINT32_MAX ||
                ST(sl->meta[pos]) != ST_S)
                continue; /* stale */
            if (FREQ(sl->meta[pos]) >= 1) {
                sl->meta[pos] = REMETA(sl->meta[pos], ST_M, 0);
                c->ns--;
                c->nm++;
                s->st.promoted++;
                continue;
            }
            ghost_put(c, ec_item_key_at(s->seg, off));
            unpublish(s, sl, pos);
            s->st.evicted++;
            *off_out = off;
            return 0;
        }
        /* M: the clock hand over the class's slots. */
        if (c->hand_slab >= c->nslabs) {
            c->hand_slab = 0;
            c->hand_pos = 0;
        }
        {
            struct slab *sl = c->slabs[c->hand_slab];
            uint32_t pos = c->hand_pos;
            uint8_t m;

            if (pos >= sl->bump) {
                c->hand_slab++;
                c->hand_pos = 0;
                continue;
            }
            c->hand_pos++;
            m = sl->meta[pos];
            if (ST(m) != ST_M)
                continue;
            if (FREQ(m) > 0) {
                sl->meta[pos] = REMETA(m, ST_M, FREQ(m) - 1);
                continue;
            }
            unpublish(s, sl, pos);
            s->st.evicted++;
            *off_out = off_of(sl, pos);
            return 0;
        }
    }
    return EC_ENOSPC;
}

/* Remove slab sl from the store: its items unpublished, its free slots
 * forgotten, its memory handed back. */
static void slab_remove(ec_itemstore *s, struct slab *sl)
{
    struct iclass *c = sl->cls;
    size_t k = 0;

    for (uint32_t pos = 0; pos < sl->bump; pos++)
        if (ST(sl->meta[pos]) == ST_S || ST(sl->meta[pos]) == ST_M) {
            unpublish(s, sl, pos);
            s->st.evicted++;
        }
    for (size_t i = 0; i < c->nfree; i++)
        if (c->free[i] < sl->off || c->free[i] >= sl->off + EC_SLAB_BYTES)
            c->free[k++] = c->free[i];
    c->nfree = k;
    c->slabs[sl->idx] = c->slabs[--c->nslabs];
    c->slabs[sl->idx]->idx = sl->idx;
    if (c->hand_slab >= c->nslabs)
        c->hand_slab = 0;
    s->by_mib[sl->off / EC_SLAB_BYTES] = NULL;
    s->nslabs--;
    header_of(s, sl)->magic = 0;
    s->env.slab_free(s->env.arg, sl->off);
    free(sl->meta);
    free(sl);
    ghost_resize(c);
}

/* ------------------------------------------------------------------ */
/* Public                                                              */

int ec_items_open(ec_segment *seg, const ec_itemstore_env *env, ec_itemstore **out)
{
    ec_itemstore *s = calloc(1, sizeof(*s));

    if (!s)
        return ec_seterr(EC_ENOMEM, "item store");
    s->seg = seg;
    s->env = *env;
    s->nmib = seg->data_size / EC_SLAB_BYTES + 1;
    s->by_mib = calloc(s->nmib, sizeof(*s->by_mib));
    if (!s->by_mib) {
        free(s);
        return ec_seterr(EC_ENOMEM, "item store slab table");
    }
    *out = s;
    return 0;
}

void ec_items_close(ec_itemstore *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nclasses; i++) {
        struct iclass *c = s->classes[i];
        for (size_t k = 0; k < c->nslabs; k++) {
            free(c->slabs[k]->meta);
            free(c->slabs[k]);
        }
        free(c->slabs);
        free(c->free);
        free(c->sq);
        free(c->ghost);
        free(c);
    }
    free(s->classes);
    free(s->by_mib);
    free(s);
}

int ec_items_reserve(ec_itemstore *s, uint64_t value_bytes, uint64_t *off_out)
{
    struct iclass *c;
    struct slab *sl;
    uint64_t off;
    uint32_t per;

    if (value_bytes > EC_ITEM_VALUE_MAX || !s->seg->item_buckets)
        return ec_seterr(EC_EINVAL, "an item of %llu bytes cannot be stored (at most %u, and "
                                    "the segment needs an item index)",
                         (unsigned long long)value_bytes, (unsigned)EC_ITEM_VALUE_MAX);
    c = class_get(s, value_bytes, true);
    if (!c)
        return ec_seterr(EC_ENOMEM, "item class");
    per = (EC_SLAB_BYTES - EC_SLAB_HEADER) / c->item_bytes;
    if (c->nfree) {
        off = c->free[--c->nfree];
        sl = slab_of(s, off);
        assert(sl && ST(sl->meta[pos_of(sl, off)]) == ST_FREE);
        sl->meta[pos_of(sl, off)] = META(ST_RESERVED, 0);
        *off_out = off;
        return 0;
    }
    for (size_t i = c->nslabs; i-- > 0;) {
        sl = c->slabs[i];
        if (sl->bump < sl->nitems) {
            sl->meta[sl->bump] = META(ST_RESERVED, 0);
            *off_out = off_of(sl, sl->bump++);
            return 0;
        }
        break; /* only the newest slab can have unused slots */
    }
    /* Grow: into free budget always; by evicting a cold partition once per
     * slab's worth of our own evictions. */
    {
        bool may_evict = c->since_grow >= per || c->nslabs == 0;
        if (s->env.slab_alloc(s->env.arg, may_evict, &off) == 0) {
            c->since_grow = 0;
            sl = slab_add(s, c, off, true);
            if (!sl) {
                s->env.slab_free(s->env.arg, off);
                return ec_seterr(EC_ENOMEM, "item slab");
            }
            sl->meta[0] = META(ST_RESERVED, 0);
            sl->bump = 1;
            *off_out = off_of(sl, 0);
            return 0;
        }
        if (may_evict)
            c->since_grow = 0;
    }
    if (evict_one(s, c, off_out) == 0) {
        c->since_grow++;
        return 0;
    }
    /* This class holds nothing and no memory is free: take a slab from the
     * class that holds the most. */
    if (ec_items_shrink(s) && s->env.slab_alloc(s->env.arg, false, &off) == 0) {
        sl = slab_add(s, c, off, true);
        if (!sl) {
            s->env.slab_free(s->env.arg, off);
            return ec_seterr(EC_ENOMEM, "item slab");
        }
        sl->meta[0] = META(ST_RESERVED, 0);
        sl->bump = 1;
        *off_out = off_of(sl, 0);
        return 0;
    }
    return ec_seterr(EC_ENOSPC, "budget exhausted: no room for an item of %llu bytes: the "
                                "memory is pinned or held by partitions that cannot be "
                                "evicted; release views or start embcached with a larger "
                                "--budget", (unsigned long long)value_bytes);
}

void ec_items_abandon(ec_itemstore *s, uint64_t off)
{
    struct slab *sl = slab_of(s, off);
    uint32_t pos = sl ? pos_of(sl, off) : UINT32_MAX;

    if (pos == UINT32_MAX || ST(sl->meta[pos]) != ST_RESERVED)
        return;
    slot_free(sl->cls, sl, pos);
}

int ec_items_publish(ec_itemstore *s, uint64_t key, uint64_t off)
{
    struct slab *sl = slab_of(s, off);
    uint32_t pos = sl ? pos_of(sl, off) : UINT32_MAX;
    struct iclass *c;
    int rc;

    if (pos == UINT32_MAX || ST(sl->meta[pos]) != ST_RESERVED)
        return ec_seterr(EC_EINVAL, "ec_items_publish: offset %llu is not a reserved slot",
                         (unsigned long long)off);
    c = sl->cls;
    for (int tries = 0;; tries++) {
        uint64_t offs[2 * EC_ITEM_WAYS], victim = UINT64_MAX;
        unsigned n, best = 99;

        rc = ec_item_insert(s->seg, key, off);
        if (rc != EC_ENOSPC || tries > 2 * (int)EC_ITEM_WAYS)
            break;
        /* Both buckets are full: evict the least used neighbour (S before
         * M). Rare at the index's load. */
        n = ec_item_neighbours(s->seg, key, offs);
        for (unsigned i = 0; i < n; i++) {
            struct slab *vs = slab_of(s, offs[i]);
            uint32_t vp = vs ? pos_of(vs, offs[i]) : UINT32_MAX;
            unsigned score;
            if (vp == UINT32_MAX || (ST(vs->meta[vp]) != ST_S && ST(vs->meta[vp]) != ST_M))
                continue;
            score = FREQ(vs->meta[vp]) + (ST(vs->meta[vp]) == ST_M ? 4 : 0);
            if (score < best) {
                best = score;
                victim = offs[i];
            }
        }
        if (victim == UINT64_MAX)
            break;
        {
            struct slab *vs = slab_of(s, victim);
            uint32_t vp = pos_of(vs, victim);
            unpublish(s, vs, vp);
            slot_free(vs->cls, vs, vp);
            s->st.neighbour_evictions++;
            s->st.evicted++;
        }
    }
    if (rc) {
        slot_free(c, sl, pos);
        return rc;
    }
    header_of(s, sl)->sum ^= item_sum(s, off, c->value_bytes);
    sl->live++;
    s->st.items++;
    s->st.admitted++;
    {
        ec_item_hash h;
        ec_item_hash_of(s->seg->item_buckets, key, &h);
        sl->meta[pos] = (uint8_t)((h.tag & 0xfu) << 4);
    }
    if (ghost_take(c, key)) {
        sl->meta[pos] = REMETA(sl->meta[pos], ST_M, 0);
        c->nm++;
        s->st.ghost_hits++;
    } else {
        sl->meta[pos] = REMETA(sl->meta[pos], ST_S, 0);
        c->ns++;
        if (sq_push(c, off)) {
            /* No ring room: it goes to M rather than be lost to S. */
            sl->meta[pos] = REMETA(sl->meta[pos], ST_M, 0);
            c->ns--;
            c->nm++;
        }
    }
    return 0;
}

int ec_items_remove(ec_itemstore *s, uint64_t key, uint64_t value_bytes)
{
    ec_item_ref ref;
    struct slab *sl;
    uint32_t pos;
    unsigned st;

    if (ec_item_lookup(s->seg, key, value_bytes, &ref) != 1)
        return 0;
    sl = slab_of(s, ref.off);
    pos = sl ? pos_of(sl, ref.off) : UINT32_MAX;
    if (pos == UINT32_MAX || sl->cls->value_bytes != value_bytes)
        return 0;
    st = ST(sl->meta[pos]);
    if (st != ST_S && st != ST_M)
        return 0;
    unpublish(s, sl, pos);
    slot_free(sl->cls, sl, pos);
    s->st.removed++;
    return 1;
}

int ec_items_remove_key(ec_itemstore *s, uint64_t key, uint64_t *value_bytes)
{
    ec_item_ref ref;
    struct slab *sl;
    uint32_t pos;
    unsigned st;

    if (ec_item_lookup(s->seg, key, 8, &ref) != 1)
        return 0;
    sl = slab_of(s, ref.off);
    pos = sl ? pos_of(sl, ref.off) : UINT32_MAX;
    if (pos == UINT32_MAX)
        return 0;
    st = ST(sl->meta[pos]);
    if (st != ST_S && st != ST_M)
        return 0;
    if (value_bytes)
        *value_bytes = sl->cls->value_bytes;
    unpublish(s, sl, pos);
    slot_free(sl->cls, sl, pos);
    s->st.removed++;
    return 1;
}

bool ec_items_has(const ec_itemstore *s, uint64_t key, uint64_t value_bytes)
{
    ec_item_ref ref;

    return ec_item_lookup(s->seg, key, value_bytes, &ref) == 1;
}

void ec_items_hint(ec_itemstore *s, uint64_t hint)
{
    uint64_t off = (hint & EC_ITEM_OFF_MASK) * 8;
    uint32_t tag = (uint32_t)(hint >> 40) & 0x7fffffu, pos;
    struct slab *sl = off < s->seg->data_size ? slab_of(s, off) : NULL;
    uint8_t m;

    /* The slot's own state and tag bits decide: the item itself is not read
     * (hints come by the million a second). A lying client can only make
     * items look used, as reading them would. */
    if (!sl || (pos = pos_of(sl, off)) == UINT32_MAX) {
        s->st.hints_bad++;
        return;
    }
    m = sl->meta[pos];
    if ((ST(m) != ST_S && ST(m) != ST_M) || TAG4(m) != (tag & 0xfu)) {
        s->st.hints_bad++; /* evicted or reused since: a stale hint */
        return;
    }
    if (FREQ(m) < 3)
        sl->meta[pos] = REMETA(m, ST(m), FREQ(m) + 1);
    s->st.hints++;
}

uint64_t ec_items_drop(ec_itemstore *s, bool (*fn)(uint64_t key, void *arg), void *arg)
{
    uint64_t n = 0;

    for (size_t i = 0; i < s->nclasses; i++) {
        struct iclass *c = s->classes[i];
        for (size_t k = 0; k < c->nslabs; k++) {
            struct slab *sl = c->slabs[k];
            for (uint32_t pos = 0; pos < sl->bump; pos++) {
                unsigned st = ST(sl->meta[pos]);
                if ((st != ST_S && st != ST_M) ||
                    !fn(ec_item_key_at(s->seg, off_of(sl, pos)), arg))
                    continue;
                unpublish(s, sl, pos);
                slot_free(c, sl, pos);
                n++;
            }
        }
    }
    return n;
}

uint64_t ec_items_shrink(ec_itemstore *s)
{
    struct iclass *big = NULL;
    struct slab *pick = NULL;

    for (size_t i = 0; i < s->nclasses; i++)
        if (!big || s->classes[i]->nslabs > big->nslabs)
            big = s->classes[i];
    if (!big || !big->nslabs)
        return 0;
    for (size_t k = 0; k < big->nslabs; k++) {
        struct slab *sl = big->slabs[k];
        uint32_t reserved = 0;
        for (uint32_t pos = 0; pos < sl->bump; pos++)
            reserved += ST(sl->meta[pos]) == ST_RESERVED;
        if (reserved)
            continue; /* a read is filling one of its slots */
        if (!pick || sl->live < pick->live)
            pick = sl;
    }
    if (!pick)
        return 0;
    slab_remove(s, pick);
    return EC_SLAB_BYTES;
}

void ec_items_foreach(const ec_itemstore *s,
                      void (*fn)(uint64_t key, unsigned freq, bool main, void *arg), void *arg)
{
    for (size_t i = 0; i < s->nclasses; i++) {
        const struct iclass *c = s->classes[i];
        for (size_t k = 0; k < c->nslabs; k++) {
            const struct slab *sl = c->slabs[k];
            for (uint32_t pos = 0; pos < sl->bump; pos++) {
                unsigned st = ST(sl->meta[pos]);
                if (st == ST_S || st == ST_M)
                    fn(ec_item_key_at(s->seg, off_of(sl, pos)), FREQ(sl->meta[pos]),
                       st == ST_M, arg);
            }
        }
    }
}

void ec_items_stats(const ec_itemstore *s, ec_itemstore_stats *out)
{
    *out = s->st;
    out->slabs = s->nslabs;
    out->bytes = s->nslabs * EC_SLAB_BYTES;
    out->classes = s->nclasses;
    out->value_bytes = 0;
    out->heap_bytes = s->nmib * sizeof(*s->by_mib);
    for (size_t i = 0; i < s->nclasses; i++) {
        const struct iclass *c = s->classes[i];
        out->value_bytes += (c->ns + c->nm) * c->value_bytes;
        out->heap_bytes += c->nghost * sizeof(*c->ghost) + c->sq_cap * sizeof(*c->sq) +
                           c->capfree * sizeof(*c->free) + c->capslabs * sizeof(*c->slabs);
        for (size_t k = 0; k < c->nslabs; k++)
            out->heap_bytes += sizeof(struct slab) + c->slabs[k]->nitems;
    }
}

uint64_t ec_items_bytes(const ec_itemstore *s)
{
    return s ? s->nslabs * EC_SLAB_BYTES : 0;
}

/* ------------------------------------------------------------------ */
/* Warm restart                                                        */

struct found {
    uint64_t key, off;
};

struct adopt_ctx {
    struct found *v;
    size_t n, cap;
};

static int collect(uint64_t key, uint64_t off, void *arg)
{
    struct adopt_ctx *a = arg;

    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 4096;
        struct found *v = realloc(a->v, cap * sizeof(*v));
        if (!v)
            return EC_ENOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n].key = key;
    a->v[a->n++].off = off;
    return 0;
}

static int cmp_found(const void *x, const void *y)
{
    const struct found *a = x, *b = y;
    return (a->off > b->off) - (a->off < b->off);
}

/* Is the slab header at slab_off one a daemon wrote? */
static bool header_ok(const ec_itemstore *s, uint64_t slab_off)
{
    const ec_slab_header *h;

    if (slab_off + EC_SLAB_BYTES > s->seg->data_size)
        return false;
    h = (const ec_slab_header *)(const void *)(s->seg->data + slab_off);
    return h->magic == EC_SLAB_MAGIC && h->value_bytes <= EC_ITEM_VALUE_MAX &&
           h->item_bytes == item_bytes_of(h->value_bytes) &&
           h->nitems == (EC_SLAB_BYTES - EC_SLAB_HEADER) / h->item_bytes;
}

int ec_items_adopt(ec_itemstore *s, int (*reserve_slab)(void *arg, uint64_t off), void *arg)
{
    struct adopt_ctx a = {0};
    int rc = ec_item_foreach(s->seg, collect, &a);

    if (rc) {
        free(a.v);
        ec_item_clear(s->seg);
        return ec_seterr(EC_ENOMEM, "out of memory scanning the item index: items dropped");
    }
    if (a.n)
        qsort(a.v, a.n, sizeof(*a.v), cmp_found);
    for (size_t i = 0; i < a.n;) {
        uint64_t slab_off = a.v[i].off / EC_SLAB_BYTES * EC_SLAB_BYTES, sum = 0;
        const ec_slab_header *h = (const ec_slab_header *)(const void *)(s->seg->data +
                                                                         slab_off);
        size_t j = i;
        bool ok = header_ok(s, slab_off);

        while (j < a.n && a.v[j].off / EC_SLAB_BYTES * EC_SLAB_BYTES == slab_off)
            j++;
        for (size_t k = i; ok && k < j; k++) {
            uint64_t rel = a.v[k].off - slab_off;
            ok = rel >= EC_SLAB_HEADER && (rel - EC_SLAB_HEADER) % h->item_bytes == 0 &&
                 (rel - EC_SLAB_HEADER) / h->item_bytes < h->nitems &&
                 s->env.valid(s->env.arg, a.v[k].key, h->value_bytes);
            if (ok)
                sum ^= item_sum(s, a.v[k].off, h->value_bytes);
        }
        ok = ok && sum == h->sum && reserve_slab(arg, slab_off) == 0;
        if (ok) {
            struct iclass *c = class_get(s, h->value_bytes, true);
            struct slab *sl = c ? slab_add(s, c, slab_off, false) : NULL;
            if (!sl) {
                ok = false;
            } else {
                for (size_t k = i; k < j; k++) {
                    uint32_t pos = pos_of(sl, a.v[k].off);
                    ec_item_hash ih;
                    ec_item_hash_of(s->seg->item_buckets, a.v[k].key, &ih);
                    sl->meta[pos] = (uint8_t)(((ih.tag & 0xfu) << 4) | META(ST_M, 0));
                    sl->live++;
                    c->nm++;
                    s->st.items++;
                }
                sl->bump = sl->nitems;
                for (uint32_t pos = 0; pos < sl->nitems; pos++)
                    if (ST(sl->meta[pos]) == ST_FREE &&
                        push_u64(&c->free, &c->nfree, &c->capfree, off_of(sl, pos)))
                        sl->meta[pos] = META(ST_RESERVED, 0);
                s->st.adopted += j - i;
            }
        }
        if (!ok) {
            for (size_t k = i; k < j; k++)
                ec_item_remove(s->seg, a.v[k].key, a.v[k].off);
            s->st.adopt_dropped += j - i;
        }
        i = j;
    }
    free(a.v);
    if (s->st.adopted || s->st.adopt_dropped)
        ec_info("warm restart: kept %llu cached rows in %llu slabs, dropped %llu",
                (unsigned long long)s->st.adopted, (unsigned long long)s->nslabs,
                (unsigned long long)s->st.adopt_dropped);
    return 0;
}
