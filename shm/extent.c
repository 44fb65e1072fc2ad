/*
 * extent.c - the daemon-private allocator of page runs in the segment's data
 * area (see extent.h).
 *
 * Called by the daemon's engine thread only (page-in, eviction, warm-restart
 * rebuild); never shared between threads or processes, so it takes no lock.
 *
 * State, all in the daemon's heap:
 *   used[]   one bit per page: 1 = allocated.
 *   start[]  one bit per page: 1 = first page of an allocation. With used[]
 *            this pins down every allocation's exact range, so a release of
 *            a range that is not exactly one allocation (a double free, a
 *            partial free, a range spanning two allocations) is refused.
 *   tree[]   a segment tree over leaves of LEAF_PAGES pages. Each node keeps
 *            the longest free run at its left edge (pre), at its right edge
 *            (suf) and anywhere inside it (max), in pages. Allocation walks
 *            down from the root to the leftmost free run that fits (first
 *            fit, O(log n) plus one leaf scan); an update re-summarizes the
 *            touched leaves and their ancestors.
 *
 * Invariants (asserted):
 *   1. used_pages == popcount(used[]); free runs counted in free_runs.
 *   2. start[p] implies used[p]; bits past npages are never set.
 *   3. tree[1].max == the longest free run in used[].
 * Free runs are implicitly coalesced: they are maximal runs of zero bits.
 */
#include "shm/extent.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "shm/layout.h"

#define LEAF_PAGES 512u /* 8 bitmap words per tree leaf */
#define WORD_BITS 64u
#define MAX_PAGES (1ull << 31) /* node counters are 32-bit: 8 TiB of data */

typedef struct ec_node {
    uint32_t pre, suf, max;
} ec_node;

struct ec_extents {
    uint64_t capacity;   /* bytes */
    uint64_t npages;
    uint64_t nwords;
    uint64_t nleaves;    /* real leaves */
    uint64_t tree_leaves; /* power of two >= nleaves */
    uint64_t used_pages;
    uint64_t free_runs;
    uint64_t *used;
    uint64_t *start;
    ec_node *tree;       /* 1-based, 2 * tree_leaves nodes */
};

/* ------------------------------------------------------------------ */
/* Bitmap helpers                                                      */

static bool bit_get(const uint64_t *map, uint64_t p)
{
    return (map[p / WORD_BITS] >> (p % WORD_BITS)) & 1u;
}

/* Mask of bits [lo, hi) inside one word, 0 <= lo < hi <= 64. */
static uint64_t word_mask(unsigned lo, unsigned hi)
{
    uint64_t m = hi == WORD_BITS ? ~0ull : ((1ull << hi) - 1);
    return m & ~((1ull << lo) - 1);
}

/* Set (val=true) or clear bits [a, b). */
static void bits_assign(uint64_t *map, uint64_t a, uint64_t b, bool val)
{
    while (a < b) {
        uint64_t w = a / WORD_BITS;
        unsigned lo = (unsigned)(a % WORD_BITS);
        unsigned hi = (b - w * WORD_BITS) >= WORD_BITS ? WORD_BITS
                                                       : (unsigned)(b - w * WORD_BITS);
        uint64_t m = word_mask(lo, hi);
        if (val)
            map[w] |= m;
        else
            map[w] &= ~m;
        a = w * WORD_BITS + hi;
    }
}

/* True if every bit in [a, b) equals val. */
static bool bits_all(const uint64_t *map, uint64_t a, uint64_t b, bool val)
{
    while (a < b) {
        uint64_t w = a / WORD_BITS;
        unsigned lo = (unsigned)(a % WORD_BITS);
        unsigned hi = (b - w * WORD_BITS) >= WORD_BITS ? WORD_BITS
                                                       : (unsigned)(b - w * WORD_BITS);
        uint64_t m = word_mask(lo, hi);
        uint64_t v = val ? (map[w] & m) : (~map[w] & m);
        if (v != m)
            return false;
        a = w * WORD_BITS + hi;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* Segment tree                                                        */

static uint64_t node_len(const ec_extents *ex, uint64_t node)
{
    unsigned depth = 63u - (unsigned)__builtin_clzll(node);
    return (uint64_t)LEAF_PAGES * (ex->tree_leaves >> depth);
}

/* First page covered by a node. */
static uint64_t node_first(const ec_extents *ex, uint64_t node)
{
    unsigned depth = 63u - (unsigned)__builtin_clzll(node);
    return (node - (1ull << depth)) * node_len(ex, node);
}

/* Summarize one leaf from the bitmap; pages past npages count as used. */
static void leaf_summarize(ec_extents *ex, uint64_t leaf)
{
    ec_node *n = &ex->tree[ex->tree_leaves + leaf];
    uint64_t first = leaf * LEAF_PAGES, end = first + LEAF_PAGES;
    uint64_t p, run = 0, best = 0, pre = 0;
    bool at_start = true;

    if (end > ex->npages)
        end = ex->npages;
    p = first;
    while (p < end) {
        uint64_t w = ex->used[p / WORD_BITS];
        unsigned off = (unsigned)(p % WORD_BITS);
        uint64_t rem = end - p < WORD_BITS - off ? end - p : WORD_BITS - off;

        w >>= off;
        if ((w & 1u) == 0) {
            uint64_t z = w ? (uint64_t)__builtin_ctzll(w) : rem;
            if (z > rem)
                z = rem;
            run += z;
            p += z;
        } else {
            uint64_t o = ~w ? (uint64_t)__builtin_ctzll(~w) : rem;
            if (o > rem)
                o = rem;
            if (at_start)
                pre = run;
            at_start = false;
            if (run > best)
                best = run;
            run = 0;
            p += o;
        }
    }
    if (end < first + LEAF_PAGES) {
        /* Partial last leaf: the missing pages act as used. */
        if (at_start)
            pre = run;
        at_start = false;
        if (run > best)
            best = run;
        run = 0;
    }
    if (at_start)
        pre = run;
    if (run > best)
        best = run;
    n->pre = (uint32_t)pre;
    n->suf = (uint32_t)run;
    n->max = (uint32_t)best;
}

static void node_combine(ec_extents *ex, uint64_t node)
{
    const ec_node *l = &ex->tree[2 * node], *r = &ex->tree[2 * node + 1];
    uint64_t half = node_len(ex, 2 * node);
    ec_node *n = &ex->tree[node];
    uint32_t cross = l->suf + r->pre;

    n->pre = l->pre == half ? (uint32_t)(half + r->pre) : l->pre;
    n->suf = r->suf == half ? (uint32_t)(half + l->suf) : r->suf;
    n->max = l->max > r->max ? l->max : r->max;
    if (cross > n->max)
        n->max = cross;
}

/* Re-summarize the leaves covering pages [a, b) and their ancestors. */
static void tree_update(ec_extents *ex, uint64_t a, uint64_t b)
{
    uint64_t lo = a / LEAF_PAGES, hi = (b - 1) / LEAF_PAGES;

    for (uint64_t l = lo; l <= hi; l++)
        leaf_summarize(ex, l);
    lo += ex->tree_leaves;
    hi += ex->tree_leaves;
    while (lo > 1) {
        lo /= 2;
        hi /= 2;
        for (uint64_t n = lo; n <= hi; n++)
            node_combine(ex, n);
    }
}

/* First page of the leftmost free run of >= want pages inside a leaf. */
static uint64_t leaf_find(const ec_extents *ex, uint64_t leaf, uint64_t want)
{
    uint64_t first = leaf * LEAF_PAGES, end = first + LEAF_PAGES, run = 0;

    if (end > ex->npages)
        end = ex->npages;
    for (uint64_t p = first, run_start = first; p < end;) {
        uint64_t w = ex->used[p / WORD_BITS];
        unsigned off = (unsigned)(p % WORD_BITS);
        uint64_t rem = end - p < WORD_BITS - off ? end - p : WORD_BITS - off;

        w >>= off;
        if ((w & 1u) == 0) {
            uint64_t z = w ? (uint64_t)__builtin_ctzll(w) : rem;
            if (z > rem)
                z = rem;
            if (run == 0)
                run_start = p;
            run += z;
            p += z;
            if (run >= want)
                return run_start;
        } else {
            uint64_t o = ~w ? (uint64_t)__builtin_ctzll(~w) : rem;
            if (o > rem)
                o = rem;
            run = 0;
            p += o;
        }
    }
    assert(!"leaf_find: summary promised a run");
    return UINT64_MAX;
}

/* Leftmost run of >= want pages; the root must have max >= want. */
static uint64_t tree_find(const ec_extents *ex, uint64_t want)
{
    uint64_t node = 1;

    assert(ex->tree[1].max >= want);
    while (node < ex->tree_leaves) {
        const ec_node *l = &ex->tree[2 * node], *r = &ex->tree[2 * node + 1];
        if (l->max >= want) {
            node = 2 * node;
        } else if ((uint64_t)l->suf + r->pre >= want) {
            /* The run straddles the two halves: it starts at the left
             * half's free suffix. */
            return node_first(ex, 2 * node + 1) - l->suf;
        } else {
            assert(r->max >= want);
            node = 2 * node + 1;
        }
    }
    return leaf_find(ex, node - ex->tree_leaves, want);
}

/* ------------------------------------------------------------------ */
/* Bookkeeping of free runs                                            */

static bool page_free(const ec_extents *ex, uint64_t p)
{
    return p < ex->npages && !bit_get(ex->used, p);
}

/* Mark [a, b) (all free) allocated, as one allocation. */
static void mark_used(ec_extents *ex, uint64_t a, uint64_t b)
{
    bool lf = a > 0 && page_free(ex, a - 1), rf = page_free(ex, b);

    assert(bits_all(ex->used, a, b, false));
    if (lf && rf)
        ex->free_runs++;
    else if (!lf && !rf)
        ex->free_runs--;
    bits_assign(ex->used, a, b, true);
    bits_assign(ex->start, a, a + 1, true);
    ex->used_pages += b - a;
    tree_update(ex, a, b);
}

/* Mark the allocation [a, b) free. */
static void mark_free(ec_extents *ex, uint64_t a, uint64_t b)
{
    bool lf = a > 0 && page_free(ex, a - 1), rf = page_free(ex, b);

    assert(bits_all(ex->used, a, b, true));
    if (lf && rf)
        ex->free_runs--;
    else if (!lf && !rf)
        ex->free_runs++;
    bits_assign(ex->used, a, b, false);
    bits_assign(ex->start, a, a + 1, false);
    ex->used_pages -= b - a;
    tree_update(ex, a, b);
}

/* ------------------------------------------------------------------ */
/* API                                                                 */

int ec_extents_new(uint64_t capacity, ec_extents **out)
{
    ec_extents *ex = NULL;
    int rc;

    if (!out)
        return ec_seterr(EC_EINVAL, "ec_extents_new: out is required");
    if (capacity == 0 || capacity % EC_SHM_PAGE != 0 || capacity / EC_SHM_PAGE > MAX_PAGES)
        return ec_seterr(EC_EINVAL,
                         "extent capacity %" PRIu64 " must be a non-zero multiple of %u "
                         "bytes and at most %llu pages",
                         capacity, EC_SHM_PAGE, (unsigned long long)MAX_PAGES);
    ex = calloc(1, sizeof(*ex));
    if (!ex) {
        rc = ec_seterr(EC_ENOMEM, "out of memory for the extent allocator");
        goto fail;
    }
    ex->capacity = capacity;
    ex->npages = capacity / EC_SHM_PAGE;
    ex->nwords = (ex->npages + WORD_BITS - 1) / WORD_BITS;
    ex->nleaves = (ex->npages + LEAF_PAGES - 1) / LEAF_PAGES;
    ex->tree_leaves = 1;
    while (ex->tree_leaves < ex->nleaves)
        ex->tree_leaves <<= 1;
    ex->used = calloc(ex->nwords, sizeof(uint64_t));
    ex->start = calloc(ex->nwords, sizeof(uint64_t));
    ex->tree = calloc(2 * ex->tree_leaves, sizeof(ec_node));
    if (!ex->used || !ex->start || !ex->tree) {
        rc = ec_seterr(EC_ENOMEM,
                       "out of memory for the extent allocator of %" PRIu64 " pages",
                       ex->npages);
        goto fail;
    }
    /* Padding leaves stay all-zero (no free pages); real ones are summarized. */
    tree_update(ex, 0, ex->npages);
    ex->free_runs = 1;
    assert(ex->tree[1].max == ex->npages);
    *out = ex;
    return 0;

fail:
    ec_extents_free(ex);
    return rc;
}

void ec_extents_free(ec_extents *ex)
{
    if (!ex)
        return;
    free(ex->used);
    free(ex->start);
    free(ex->tree);
    free(ex);
}

/* Round bytes up to pages; false on overflow or zero. */
static bool to_pages(uint64_t bytes, uint64_t *pages)
{
    if (bytes == 0 || bytes > UINT64_MAX - (EC_SHM_PAGE - 1))
        return false;
    *pages = (bytes + EC_SHM_PAGE - 1) / EC_SHM_PAGE;
    return true;
}

int ec_extent_alloc(ec_extents *ex, uint64_t bytes, uint64_t *off_out)
{
    uint64_t pages, first;

    if (!ex || !off_out || !to_pages(bytes, &pages))
        return ec_seterr(EC_EINVAL, "ec_extent_alloc: invalid request of %" PRIu64 " bytes",
                         bytes);
    if (pages > ex->tree[1].max)
        return ec_seterr(EC_ENOSPC,
                         "no free run of %" PRIu64 " bytes in the segment (largest free run "
                         "%" PRIu64 " bytes, %" PRIu64 " of %" PRIu64 " bytes free in %" PRIu64
                         " runs); evict and retry, or grow --shm-size",
                         pages * EC_SHM_PAGE, (uint64_t)ex->tree[1].max * EC_SHM_PAGE,
                         (ex->npages - ex->used_pages) * EC_SHM_PAGE, ex->capacity,
                         ex->free_runs);
    first = tree_find(ex, pages);
    assert(first + pages <= ex->npages);
    mark_used(ex, first, first + pages);
    *off_out = first * EC_SHM_PAGE;
    return 0;
}

int ec_extent_alloc_aligned(ec_extents *ex, uint64_t bytes, uint64_t align, uint64_t *off_out)
{
    uint64_t pages, apages, first, start, fits = 0;

    if (!ex || !off_out || !to_pages(bytes, &pages) || align < EC_SHM_PAGE ||
        align % EC_SHM_PAGE != 0 || (align & (align - 1)) != 0)
        return ec_seterr(EC_EINVAL, "ec_extent_alloc_aligned: invalid request of %" PRIu64
                                    " bytes at %" PRIu64 "-byte alignment", bytes, align);
    apages = align / EC_SHM_PAGE;
    /* A free run of pages + apages - 1 holds an aligned window: first fit. */
    if (pages + apages - 1 <= ex->tree[1].max) {
        first = tree_find(ex, pages + apages - 1);
        start = (first + apages - 1) / apages * apages;
        assert(start + pages <= ex->npages && bits_all(ex->used, start, start + pages, false));
        mark_used(ex, start, start + pages);
        *off_out = start * EC_SHM_PAGE;
        return 0;
    }
    /* Otherwise look at every aligned window (the free runs may be exactly
     * aligned ones). */
    if (pages <= ex->tree[1].max)
        for (start = 0; start + pages <= ex->npages; start += apages)
            if (bits_all(ex->used, start, start + pages, false)) {
                fits = 1;
                break;
            }
    if (!fits)
        return ec_seterr(EC_ENOSPC,
                         "no free %" PRIu64 "-byte run at %" PRIu64 "-byte alignment in the "
                         "segment (largest free run %" PRIu64 " bytes, %" PRIu64 " bytes free "
                         "in %" PRIu64 " runs); evict and retry, or grow --shm-size",
                         pages * EC_SHM_PAGE, align, (uint64_t)ex->tree[1].max * EC_SHM_PAGE,
                         (ex->npages - ex->used_pages) * EC_SHM_PAGE, ex->free_runs);
    mark_used(ex, start, start + pages);
    *off_out = start * EC_SHM_PAGE;
    return 0;
}

/* Common checks of an (off, bytes) range: aligned, non-empty, in bounds. */
static int check_range(const ec_extents *ex, const char *what, uint64_t off, uint64_t bytes,
                       uint64_t *a, uint64_t *b)
{
    uint64_t pages;

    if (!ex)
        return ec_seterr(EC_EINVAL, "%s: no allocator", what);
    if (off % EC_SHM_PAGE != 0 || !to_pages(bytes, &pages) || off / EC_SHM_PAGE > ex->npages ||
        pages > ex->npages - off / EC_SHM_PAGE)
        return ec_seterr(EC_EINVAL,
                         "%s: range [%" PRIu64 ", +%" PRIu64 ") is not a page-aligned, "
                         "non-empty range inside the %" PRIu64 "-byte data area",
                         what, off, bytes, ex->capacity);
    *a = off / EC_SHM_PAGE;
    *b = *a + pages;
    return 0;
}

int ec_extent_release(ec_extents *ex, uint64_t off, uint64_t bytes)
{
    uint64_t a = 0, b = 0;
    int rc;

    if ((rc = check_range(ex, "ec_extent_release", off, bytes, &a, &b)) < 0)
        return rc;
    /* Exactly one allocation: starts at a, all used, no other allocation
     * starts inside, and the page after it is free or starts another. */
    if (!bit_get(ex->start, a) || !bits_all(ex->used, a, b, true) ||
        !bits_all(ex->start, a + 1, b, false) ||
        (b < ex->npages && bit_get(ex->used, b) && !bit_get(ex->start, b)))
        return ec_seterr(EC_EINVAL,
                         "ec_extent_release: [%" PRIu64 ", +%" PRIu64 ") is not exactly one "
                         "allocated extent (double free or wrong size); refused, the "
                         "allocator is unchanged",
                         off, bytes);
    mark_free(ex, a, b);
    return 0;
}

int ec_extent_reserve(ec_extents *ex, uint64_t off, uint64_t bytes)
{
    uint64_t a = 0, b = 0;
    int rc;

    if ((rc = check_range(ex, "ec_extent_reserve", off, bytes, &a, &b)) < 0)
        return rc;
    if (!bits_all(ex->used, a, b, false))
        return ec_seterr(EC_EINVAL,
                         "ec_extent_reserve: [%" PRIu64 ", +%" PRIu64 ") overlaps an "
                         "allocated extent",
                         off, bytes);
    mark_used(ex, a, b);
    return 0;
}

void ec_extent_stats_get(const ec_extents *ex, ec_extent_stats *out)
{
    if (!ex || !out)
        return;
    out->capacity = ex->capacity;
    out->used = ex->used_pages * EC_SHM_PAGE;
    out->free_runs = ex->free_runs;
    out->largest_free = (uint64_t)ex->tree[1].max * EC_SHM_PAGE;
}
