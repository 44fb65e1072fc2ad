/*
 * test_extent.c - unit tests of the daemon-private extent allocator
 * (shm/extent.c): allocation and coalescing, fragmentation, refusal of
 * double and partial frees and of overlapping reservations, a large
 * (1M-page) allocator, and a random alloc/release/reserve stress run
 * checked against a reference bitmap. Single process, single thread.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "shm/extent.h"
#include "shm/layout.h"
#include "tests/testutil.h"

#define PG ((uint64_t)EC_SHM_PAGE)

static void stats(const ec_extents *ex, ec_extent_stats *st)
{
    memset(st, 0xa5, sizeof(*st));
    ec_extent_stats_get(ex, st);
}

static void test_new_invalid(void **state)
{
    ec_extents *ex = NULL;
    (void)state;

    assert_int_equal(ec_extents_new(0, &ex), EC_EINVAL);
    assert_int_equal(ec_extents_new(PG + 1, &ex), EC_EINVAL);
    assert_int_equal(ec_extents_new(100, &ex), EC_EINVAL);
    assert_int_equal(ec_extents_new(PG, NULL), EC_EINVAL);
    assert_null(ex);
    assert_int_equal(ec_extents_new(PG, &ex), 0);
    ec_extents_free(ex);
    ec_extents_free(NULL);
}

static void test_alloc_basic(void **state)
{
    ec_extents *ex;
    ec_extent_stats st;
    uint64_t a, b, c, d;
    (void)state;

    assert_int_equal(ec_extents_new(64 * PG, &ex), 0);
    stats(ex, &st);
    assert_int_equal(st.capacity, 64 * PG);
    assert_int_equal(st.used, 0);
    assert_int_equal(st.free_runs, 1);
    assert_int_equal(st.largest_free, 64 * PG);

    assert_int_equal(ec_extent_alloc(ex, 1, &a), 0); /* rounded up to a page */
    assert_int_equal(a, 0);
    assert_int_equal(ec_extent_alloc(ex, PG, &b), 0);
    assert_int_equal(b, PG);
    assert_int_equal(ec_extent_alloc(ex, 2 * PG + 1, &c), 0);
    assert_int_equal(c, 2 * PG);
    stats(ex, &st);
    assert_int_equal(st.used, 5 * PG);
    assert_int_equal(st.free_runs, 1);
    assert_int_equal(st.largest_free, 59 * PG);

    /* Invalid requests. */
    assert_int_equal(ec_extent_alloc(ex, 0, &d), EC_EINVAL);
    assert_int_equal(ec_extent_alloc(ex, UINT64_MAX, &d), EC_EINVAL);
    assert_int_equal(ec_extent_alloc(NULL, PG, &d), EC_EINVAL);
    assert_int_equal(ec_extent_alloc(ex, PG, NULL), EC_EINVAL);
    /* Too big: ENOSPC with a message saying what is free. */
    assert_int_equal(ec_extent_alloc(ex, 60 * PG, &d), EC_ENOSPC);
    assert_non_null(strstr(ec_last_error(), "largest free run"));

    /* Free the middle one: a hole, two free runs. */
    assert_int_equal(ec_extent_release(ex, b, PG), 0);
    stats(ex, &st);
    assert_int_equal(st.free_runs, 2);
    assert_int_equal(st.used, 4 * PG);
    /* First fit reuses the hole. */
    assert_int_equal(ec_extent_alloc(ex, PG, &d), 0);
    assert_int_equal(d, PG);
    assert_int_equal(ec_extent_release(ex, d, PG), 0);

    /* Coalescing: free a, then c; everything merges back to one run. */
    assert_int_equal(ec_extent_release(ex, a, 1), 0);
    stats(ex, &st);
    assert_int_equal(st.free_runs, 2); /* [0,2) and [5,64) */
    assert_int_equal(st.largest_free, 59 * PG);
    assert_int_equal(ec_extent_release(ex, c, 2 * PG + 1), 0);
    stats(ex, &st);
    assert_int_equal(st.free_runs, 1);
    assert_int_equal(st.used, 0);
    assert_int_equal(st.largest_free, 64 * PG);

    /* Fill exactly, then ENOSPC. */
    assert_int_equal(ec_extent_alloc(ex, 64 * PG, &a), 0);
    assert_int_equal(a, 0);
    stats(ex, &st);
    assert_int_equal(st.free_runs, 0);
    assert_int_equal(st.largest_free, 0);
    assert_int_equal(ec_extent_alloc(ex, 1, &d), EC_ENOSPC);
    assert_int_equal(ec_extent_release(ex, 0, 64 * PG), 0);
    ec_extents_free(ex);
}

static void test_fragmentation(void **state)
{
    ec_extents *ex;
    ec_extent_stats st;
    uint64_t off[16], x;
    (void)state;

    assert_int_equal(ec_extents_new(16 * PG, &ex), 0);
    for (int i = 0; i < 16; i++) {
        assert_int_equal(ec_extent_alloc(ex, PG, &off[i]), 0);
        assert_int_equal(off[i], (uint64_t)i * PG);
    }
    for (int i = 0; i < 16; i += 2)
        assert_int_equal(ec_extent_release(ex, off[i], PG), 0);
    stats(ex, &st);
    assert_int_equal(st.free_runs, 8);
    assert_int_equal(st.largest_free, PG);
    assert_int_equal(st.used, 8 * PG);
    /* 8 pages are free but no two are adjacent. */
    assert_int_equal(ec_extent_alloc(ex, 2 * PG, &x), EC_ENOSPC);
    /* Free page 5: pages 4,5,6 merge into one 3-page run. */
    assert_int_equal(ec_extent_release(ex, off[5], PG), 0);
    stats(ex, &st);
    assert_int_equal(st.free_runs, 7);
    assert_int_equal(st.largest_free, 3 * PG);
    assert_int_equal(ec_extent_alloc(ex, 3 * PG, &x), 0);
    assert_int_equal(x, 4 * PG);
    assert_int_equal(ec_extent_alloc(ex, 2 * PG, &x), EC_ENOSPC);
    ec_extents_free(ex);
}

/* Aligned allocation: a window at a multiple of the alignment, from a run
 * that holds one, or from an exactly aligned free run when no larger run
 * is left; refused when no aligned window is free. */
static void test_aligned(void **state)
{
    ec_extents *ex;
    ec_extent_stats st;
    uint64_t a, b, c, x, pad;
    (void)state;

    assert_int_equal(ec_extents_new(64 * PG, &ex), 0);
    assert_int_equal(ec_extent_alloc(ex, 3 * PG, &pad), 0); /* pages 0..2 */
    assert_int_equal(ec_extent_alloc_aligned(ex, 16 * PG, 16 * PG, &a), 0);
    assert_int_equal(a, 16 * PG);
    assert_int_equal(ec_extent_alloc_aligned(ex, 16 * PG, 16 * PG, &b), 0);
    assert_int_equal(b, 32 * PG);
    /* pages 3..15 and 48..63 are free: 13 + 16 */
    stats(ex, &st);
    assert_int_equal(st.used, 35 * PG);
    /* no run of 31 pages: the aligned window [48, 64) is found by the scan */
    assert_int_equal(ec_extent_alloc_aligned(ex, 16 * PG, 16 * PG, &c), 0);
    assert_int_equal(c, 48 * PG);
    assert_int_equal(ec_extent_alloc_aligned(ex, 16 * PG, 16 * PG, &x), EC_ENOSPC);
    assert_int_equal(ec_extent_alloc_aligned(ex, 4 * PG, 4 * PG, &x), 0); /* pages 4..7 */
    assert_int_equal(x, 4 * PG);
    assert_int_equal(ec_extent_alloc_aligned(ex, PG, 3 * PG, &x), EC_EINVAL);
    assert_int_equal(ec_extent_alloc_aligned(ex, PG, 100, &x), EC_EINVAL);
    /* each is one allocation: released whole */
    assert_int_equal(ec_extent_release(ex, b, 16 * PG), 0);
    assert_int_equal(ec_extent_release(ex, a, 16 * PG), 0);
    assert_int_equal(ec_extent_release(ex, c, 16 * PG), 0);
    assert_int_equal(ec_extent_release(ex, 4 * PG, 4 * PG), 0);
    assert_int_equal(ec_extent_release(ex, pad, 3 * PG), 0);
    stats(ex, &st);
    assert_int_equal(st.used, 0);
    assert_int_equal(st.free_runs, 1);
    ec_extents_free(ex);
}

static void test_release_refused(void **state)
{
    ec_extents *ex;
    ec_extent_stats before, after;
    uint64_t a, b;
    (void)state;

    assert_int_equal(ec_extents_new(32 * PG, &ex), 0);
    assert_int_equal(ec_extent_alloc(ex, 2 * PG, &a), 0); /* [0,2) */
    assert_int_equal(ec_extent_alloc(ex, 3 * PG, &b), 0); /* [2,5) */
    stats(ex, &before);

    /* Partial frees and wrong sizes. */
    assert_int_equal(ec_extent_release(ex, a, PG), EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "not exactly one allocated extent"));
    assert_int_equal(ec_extent_release(ex, a + PG, PG), EC_EINVAL);
    assert_int_equal(ec_extent_release(ex, a, 3 * PG), EC_EINVAL); /* spans into b */
    assert_int_equal(ec_extent_release(ex, a, 5 * PG), EC_EINVAL); /* a and b together */
    assert_int_equal(ec_extent_release(ex, b, 4 * PG), EC_EINVAL); /* past b into free */
    assert_int_equal(ec_extent_release(ex, b, 2 * PG), EC_EINVAL);
    /* Unaligned, empty, out of bounds, free space. */
    assert_int_equal(ec_extent_release(ex, a + 1, PG), EC_EINVAL);
    assert_int_equal(ec_extent_release(ex, a, 0), EC_EINVAL);
    assert_int_equal(ec_extent_release(ex, 32 * PG, PG), EC_EINVAL);
    assert_int_equal(ec_extent_release(ex, 31 * PG, 2 * PG), EC_EINVAL);
    assert_int_equal(ec_extent_release(ex, UINT64_MAX - PG + 1, PG), EC_EINVAL);
    assert_int_equal(ec_extent_release(ex, 0, UINT64_MAX), EC_EINVAL);
    assert_int_equal(ec_extent_release(ex, 10 * PG, PG), EC_EINVAL);
    assert_int_equal(ec_extent_release(NULL, 0, PG), EC_EINVAL);
    stats(ex, &after);
    assert_memory_equal(&before, &after, sizeof(before));

    /* Double free. */
    assert_int_equal(ec_extent_release(ex, a, 2 * PG), 0);
    assert_int_equal(ec_extent_release(ex, a, 2 * PG), EC_EINVAL);
    /* The last page of b, with a free neighbour on each side now. */
    assert_int_equal(ec_extent_release(ex, b + 2 * PG, PG), EC_EINVAL);
    assert_int_equal(ec_extent_release(ex, b, 3 * PG), 0);
    assert_int_equal(ec_extent_release(ex, b, 3 * PG), EC_EINVAL);
    stats(ex, &after);
    assert_int_equal(after.used, 0);
    assert_int_equal(after.free_runs, 1);
    ec_extents_free(ex);
}

static void test_reserve(void **state)
{
    ec_extents *ex;
    ec_extent_stats st;
    uint64_t x;
    (void)state;

    assert_int_equal(ec_extents_new(32 * PG, &ex), 0);
    assert_int_equal(ec_extent_reserve(ex, 2 * PG, 4 * PG), 0); /* [2,6) */
    stats(ex, &st);
    assert_int_equal(st.used, 4 * PG);
    assert_int_equal(st.free_runs, 2);
    assert_int_equal(st.largest_free, 26 * PG);
    /* Overlaps refused, in every position. */
    assert_int_equal(ec_extent_reserve(ex, 2 * PG, 4 * PG), EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "overlaps"));
    assert_int_equal(ec_extent_reserve(ex, 0, 3 * PG), EC_EINVAL);
    assert_int_equal(ec_extent_reserve(ex, 5 * PG, 2 * PG), EC_EINVAL);
    assert_int_equal(ec_extent_reserve(ex, 3 * PG, PG), EC_EINVAL);
    assert_int_equal(ec_extent_reserve(ex, 0, 32 * PG), EC_EINVAL);
    /* Out of bounds / unaligned / empty. */
    assert_int_equal(ec_extent_reserve(ex, 31 * PG, 2 * PG), EC_EINVAL);
    assert_int_equal(ec_extent_reserve(ex, 40 * PG, PG), EC_EINVAL);
    assert_int_equal(ec_extent_reserve(ex, 7 * PG + 8, PG), EC_EINVAL);
    assert_int_equal(ec_extent_reserve(ex, 7 * PG, 0), EC_EINVAL);
    stats(ex, &st);
    assert_int_equal(st.used, 4 * PG);

    /* Adjacent reservations are separate extents. */
    assert_int_equal(ec_extent_reserve(ex, 6 * PG, PG), 0); /* [6,7) */
    assert_int_equal(ec_extent_release(ex, 2 * PG, 5 * PG), EC_EINVAL);
    /* Allocation goes around them: [0,2) fits 2 pages, 3 go after 7. */
    assert_int_equal(ec_extent_alloc(ex, 3 * PG, &x), 0);
    assert_int_equal(x, 7 * PG);
    assert_int_equal(ec_extent_alloc(ex, 2 * PG, &x), 0);
    assert_int_equal(x, 0);
    /* A reservation is released like an allocation. */
    assert_int_equal(ec_extent_release(ex, 2 * PG, 4 * PG), 0);
    assert_int_equal(ec_extent_release(ex, 6 * PG, PG), 0);
    assert_int_equal(ec_extent_release(ex, 7 * PG, 3 * PG), 0);
    assert_int_equal(ec_extent_release(ex, 0, 2 * PG), 0);
    stats(ex, &st);
    assert_int_equal(st.used, 0);
    assert_int_equal(st.free_runs, 1);
    assert_int_equal(st.largest_free, 32 * PG);
    ec_extents_free(ex);
}

/* A segment of ~1M pages (4 GiB of data) must be fast: fill it page by page,
 * free every other page, then everything. */
static void test_million_pages(void **state)
{
    const uint64_t npages = 1u << 20;
    ec_extents *ex;
    ec_extent_stats st;
    struct timespec t0, t1;
    uint64_t off;
    double secs;
    (void)state;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(ec_extents_new(npages * PG, &ex), 0);
    for (uint64_t i = 0; i < npages; i++) {
        assert_int_equal(ec_extent_alloc(ex, PG, &off), 0);
        if (off != i * PG)
            fail_msg("page %llu allocated at %llu", (unsigned long long)i,
                     (unsigned long long)off);
    }
    assert_int_equal(ec_extent_alloc(ex, PG, &off), EC_ENOSPC);
    for (uint64_t i = 0; i < npages; i += 2)
        assert_int_equal(ec_extent_release(ex, i * PG, PG), 0);
    stats(ex, &st);
    assert_int_equal(st.free_runs, npages / 2);
    assert_int_equal(st.largest_free, PG);
    /* A 2-page request must fail fast, not scan 512K runs. */
    assert_int_equal(ec_extent_alloc(ex, 2 * PG, &off), EC_ENOSPC);
    for (uint64_t i = 1; i < npages; i += 2)
        assert_int_equal(ec_extent_release(ex, i * PG, PG), 0);
    stats(ex, &st);
    assert_int_equal(st.free_runs, 1);
    assert_int_equal(st.used, 0);
    assert_int_equal(st.largest_free, npages * PG);
    /* Large extents. */
    assert_int_equal(ec_extent_alloc(ex, (npages - 1) * PG, &off), 0);
    assert_int_equal(ec_extent_release(ex, off, (npages - 1) * PG), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("1M pages: %d alloc + release in %.3f s\n", 1 << 20, secs);
    assert_true(secs < 20.0);
    ec_extents_free(ex);
}

/* ------------------------------------------------------------------ */
/* Random stress against a reference bitmap                            */

typedef struct ref_alloc {
    uint64_t page, pages;
} ref_alloc;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Leftmost run of >= want free pages in the reference, or UINT64_MAX. */
static uint64_t ref_first_fit(const uint8_t *used, uint64_t n, uint64_t want)
{
    uint64_t run = 0;
    for (uint64_t p = 0; p < n; p++) {
        run = used[p] ? 0 : run + 1;
        if (run == want)
            return p + 1 - want;
    }
    return UINT64_MAX;
}

static void ref_stats(const uint8_t *used, uint64_t n, ec_extent_stats *st)
{
    uint64_t run = 0;
    memset(st, 0, sizeof(*st));
    st->capacity = n * PG;
    for (uint64_t p = 0; p < n; p++) {
        if (used[p]) {
            st->used += PG;
            run = 0;
            continue;
        }
        if (run == 0)
            st->free_runs++;
        run++;
        if (run * PG > st->largest_free)
            st->largest_free = run * PG;
    }
}

static void stress(uint64_t npages, unsigned ops, uint64_t max_pages)
{
    ec_extents *ex;
    uint8_t *used = calloc(npages, 1);
    ref_alloc *live = calloc(npages, sizeof(*live));
    size_t nlive = 0;
    ec_extent_stats st, want;

    assert_non_null(used);
    assert_non_null(live);
    assert_int_equal(ec_extents_new(npages * PG, &ex), 0);
    for (unsigned op = 0; op < ops; op++) {
        unsigned kind = (unsigned)(rnd() % 100);
        if (kind < 45) {
            uint64_t pages = 1 + rnd() % max_pages, off;
            uint64_t expect = ref_first_fit(used, npages, pages);
            int rc = ec_extent_alloc(ex, pages * PG - rnd() % PG, &off);
            if (expect == UINT64_MAX) {
                assert_int_equal(rc, EC_ENOSPC);
                continue;
            }
            assert_int_equal(rc, 0);
            assert_int_equal(off, expect * PG); /* exactly first fit */
            memset(used + expect, 1, pages);
            live[nlive++] = (ref_alloc){expect, pages};
        } else if (kind < 90) {
            if (!nlive)
                continue;
            size_t i = rnd() % nlive;
            ref_alloc a = live[i];
            /* A bad release first (never changes anything). */
            if (a.pages > 1)
                assert_int_equal(ec_extent_release(ex, a.page * PG, (a.pages - 1) * PG),
                                 EC_EINVAL);
            assert_int_equal(ec_extent_release(ex, a.page * PG, a.pages * PG), 0);
            assert_int_equal(ec_extent_release(ex, a.page * PG, a.pages * PG), EC_EINVAL);
            memset(used + a.page, 0, a.pages);
            live[i] = live[--nlive];
        } else {
            /* Reserve a random range: refused iff it overlaps. */
            uint64_t pages = 1 + rnd() % max_pages, page = rnd() % npages;
            bool overlaps = page + pages > npages;
            for (uint64_t p = page; !overlaps && p < page + pages; p++)
                overlaps = used[p];
            int rc = ec_extent_reserve(ex, page * PG, pages * PG);
            if (overlaps) {
                assert_int_equal(rc, EC_EINVAL);
                continue;
            }
            assert_int_equal(rc, 0);
            memset(used + page, 1, pages);
            live[nlive++] = (ref_alloc){page, pages};
        }
        if (op % 97 == 0 || op == ops - 1) {
            stats(ex, &st);
            ref_stats(used, npages, &want);
            assert_memory_equal(&st, &want, sizeof(st));
        }
    }
    /* Release everything: back to one run. */
    while (nlive) {
        ref_alloc a = live[--nlive];
        assert_int_equal(ec_extent_release(ex, a.page * PG, a.pages * PG), 0);
    }
    stats(ex, &st);
    assert_int_equal(st.used, 0);
    assert_int_equal(st.free_runs, 1);
    assert_int_equal(st.largest_free, npages * PG);
    ec_extents_free(ex);
    free(used);
    free(live);
}

static void test_stress_small(void **state)
{
    (void)state;
    stress(37, 20000, 5); /* one partial leaf */
}

static void test_stress_medium(void **state)
{
    (void)state;
    stress(3001, 30000, 40); /* several leaves, partial last one */
}

static void test_stress_large(void **state)
{
    (void)state;
    stress(20000, 10000, 700); /* runs crossing many leaves */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_invalid),     cmocka_unit_test(test_alloc_basic),
        cmocka_unit_test(test_fragmentation),   cmocka_unit_test(test_release_refused),
        cmocka_unit_test(test_aligned),
        cmocka_unit_test(test_reserve),         cmocka_unit_test(test_million_pages),
        cmocka_unit_test(test_stress_small),    cmocka_unit_test(test_stress_medium),
        cmocka_unit_test(test_stress_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
