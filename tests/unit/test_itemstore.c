/*
 * test_itemstore.c - unit tests of the daemon's item store (core/itemstore.c)
 * on a real segment, single process: slabs within a memory limit, S3-FIFO
 * (a hot set survives a scan of one-time keys; a key evicted from S and
 * admitted again goes to M through the ghost), an insert whose two buckets
 * are full evicts a neighbour, a slab given back takes its items with it,
 * hints that name no live item are refused, and a restarted store adopts the
 * slabs whose checksum sums hold and drops a tampered one.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "core/itemstore.h"
#include "shm/extent.h"
#include "shm/items.h"
#include "shm/segment.h"
#include "tests/testutil.h"

#define VAL 120u /* value bytes: 128-byte items, 8191 per slab */

struct env {
    ec_segment seg;
    ec_extents *ext;
    unsigned slabs, max_slabs, freed;
    char *dir;
};

static int slab_alloc(void *arg, bool may_evict, uint64_t *off)
{
    struct env *v = arg;

    (void)may_evict;
    if (v->slabs >= v->max_slabs)
        return EC_ENOSPC;
    if (ec_extent_alloc_aligned(v->ext, EC_SLAB_BYTES, EC_SLAB_BYTES, off))
        return EC_ENOSPC;
    v->slabs++;
    return 0;
}

static void slab_free(void *arg, uint64_t off)
{
    struct env *v = arg;

    assert_int_equal(ec_extent_release(v->ext, off, EC_SLAB_BYTES), 0);
    v->slabs--;
    v->freed++;
}

static int slab_reserve(void *arg, uint64_t off)
{
    struct env *v = arg;
    int rc = ec_extent_reserve(v->ext, off, EC_SLAB_BYTES);

    if (rc == 0)
        v->slabs++;
    return rc;
}

static bool valid(void *arg, uint64_t key, uint64_t value_bytes)
{
    (void)arg;
    return EC_ITEM_KEY_KIND(key) == EC_ITEM_KIND_ROW && value_bytes == VAL;
}

static ec_itemstore *store_open(struct env *v)
{
    ec_itemstore_env env = {.slab_alloc = slab_alloc, .slab_free = slab_free,
                            .valid = valid, .arg = v};
    ec_itemstore *s = NULL;

    assert_int_equal(ec_extents_new(v->seg.data_size, &v->ext), 0);
    v->slabs = 0;
    assert_int_equal(ec_items_open(&v->seg, &env, &s), 0);
    return s;
}

static void store_close(struct env *v, ec_itemstore *s)
{
    ec_items_close(s);
    ec_extents_free(v->ext);
    v->ext = NULL;
}

static void env_new(struct env *v, uint64_t seg_bytes, uint64_t item_bytes, unsigned max_slabs)
{
    memset(v, 0, sizeof(*v));
    v->dir = ect_tmpdir("test_itemstore");
    assert_int_equal(ec_segment_create_geometry(seg_bytes, 0, item_bytes, &v->seg), 0);
    assert_int_equal(ec_segment_seal(&v->seg), 0);
    v->max_slabs = max_slabs;
}

static void env_free(struct env *v)
{
    ec_segment_close(&v->seg);
    ect_rmtree(v->dir);
    free(v->dir);
}

static void fill_value(uint64_t key, uint8_t *out)
{
    for (unsigned k = 0; k < VAL; k++)
        out[k] = (uint8_t)(key * 131 + k);
}

/* Admit key (its value derived from it); 0 or the error. */
static int admit(struct env *v, ec_itemstore *s, uint64_t key)
{
    uint64_t off;
    int rc = ec_items_reserve(s, VAL, &off);

    if (rc)
        return rc;
    memcpy(v->seg.data + off, &key, 8);
    fill_value(key, v->seg.data + off + 8);
    return ec_items_publish(s, key, off);
}

/* Is key published, with its right value? */
static bool present(struct env *v, uint64_t key)
{
    ec_item_ref ref;
    uint8_t want[VAL];

    if (!ec_item_lookup(&v->seg, key, VAL, &ref))
        return false;
    fill_value(key, want);
    assert_memory_equal(ec_item_value(&v->seg, ref.off), want, VAL);
    return true;
}

/* A client's hint for key, as its access ring would carry it. */
static void hit(struct env *v, ec_itemstore *s, uint64_t key)
{
    ec_item_ref ref;
    ec_item_hash h;

    assert_true(ec_item_lookup(&v->seg, key, VAL, &ref));
    ec_item_hash_of(v->seg.item_buckets, key, &h);
    ec_items_hint(s, EC_RING_ITEM_HINT(h.tag, ref.off / 8));
}

#define K(r) EC_ITEM_ROW_KEY(1, (r))

/* A hot set used again and again survives a scan of one-time keys many
 * times the cache: S3-FIFO's small queue takes the scan. */
static void test_scan_resistance(void **state)
{
    struct env v;
    ec_itemstore *s;
    ec_itemstore_stats st;
    const uint64_t hot = 4000; /* the cache holds 2 slabs: 16382 items */
    unsigned kept = 0;
    (void)state;

    env_new(&v, 16u << 20, VAL, 2);
    s = store_open(&v);
    for (int round = 0; round < 3; round++)
        for (uint64_t r = 0; r < hot; r++) {
            if (!present(&v, K(r)))
                assert_int_equal(admit(&v, s, K(r)), 0);
            hit(&v, s, K(r));
        }
    /* A scan of 100,000 keys, each once. */
    for (uint64_t r = 1000000; r < 1100000; r++)
        assert_int_equal(admit(&v, s, K(r)), 0);
    for (uint64_t r = 0; r < hot; r++)
        kept += present(&v, K(r));
    ec_items_stats(s, &st);
    printf("hot set of %llu after a scan of 100000 one-time keys: %u kept (%llu items, %llu "
           "evicted, %llu promoted)\n", (unsigned long long)hot, kept,
           (unsigned long long)st.items, (unsigned long long)st.evicted,
           (unsigned long long)st.promoted);
    assert_true(kept >= hot * 95 / 100);
    assert_true(v.slabs <= 2);
    assert_int_equal(st.items, ec_item_count(&v.seg));
    store_close(&v, s);
    env_free(&v);
}

/* A key evicted from S without being used again is remembered in the
 * ghost; admitted again, it goes to M. */
static void test_ghost(void **state)
{
    struct env v;
    ec_itemstore *s;
    ec_itemstore_stats st;
    uint64_t gh, last;
    (void)state;

    env_new(&v, 16u << 20, VAL, 1);
    s = store_open(&v);
    for (uint64_t r = 0; r < 20000; r++) /* 8191 fit: the first ones go */
        assert_int_equal(admit(&v, s, K(r)), 0);
    assert_false(present(&v, K(0)));
    /* The ghost remembers about a cache's worth of the latest evictions:
     * take the latest one. */
    for (last = 19999; present(&v, K(last)); last--)
        ;
    ec_items_stats(s, &st);
    gh = st.ghost_hits; /* a 16-bit fingerprint may have matched a new key once */
    assert_true(gh <= 2);
    assert_int_equal(admit(&v, s, K(last)), 0);
    ec_items_stats(s, &st);
    assert_int_equal(st.ghost_hits, gh + 1);
    /* In M, it outlives a flood of one-time keys that S takes. */
    for (uint64_t r = 50000; r < 80000; r++)
        assert_int_equal(admit(&v, s, K(r)), 0);
    assert_true(present(&v, K(last)));
    store_close(&v, s);
    env_free(&v);
}

/* With a tiny item index, inserts find both buckets full and evict a
 * neighbour; every key admitted last is found. */
static void test_full_buckets(void **state)
{
    struct env v;
    ec_itemstore *s;
    ec_itemstore_stats st;
    (void)state;

    /* item_bytes large: few buckets for a slab of small items */
    env_new(&v, 4u << 20, 64u << 10, 1);
    assert_true(v.seg.item_buckets * EC_ITEM_WAYS < 8191);
    s = store_open(&v);
    for (uint64_t r = 0; r < 3000; r++) {
        assert_int_equal(admit(&v, s, K(r)), 0);
        assert_true(present(&v, K(r)));
    }
    ec_items_stats(s, &st);
    printf("%llu buckets: %llu items, %llu neighbour evictions\n",
           (unsigned long long)v.seg.item_buckets, (unsigned long long)st.items,
           (unsigned long long)st.neighbour_evictions);
    assert_true(st.neighbour_evictions > 0);
    assert_int_equal(st.items, ec_item_count(&v.seg));
    store_close(&v, s);
    env_free(&v);
}

/* Removing a key frees its slot for the next item; a key that is not there,
 * or asked for with another value size, is left alone; a replaced value is
 * what readers find. */
static void test_remove(void **state)
{
    struct env v;
    ec_itemstore *s;
    ec_itemstore_stats st;
    (void)state;

    env_new(&v, 8u << 20, 128, 2);
    s = store_open(&v);
    for (uint64_t r = 0; r < 100; r++)
        assert_int_equal(admit(&v, s, K(r)), 0);
    assert_int_equal(ec_items_remove(s, K(7), VAL + 8), 0);
    assert_true(present(&v, K(7)));
    assert_int_equal(ec_items_remove(s, K(7), VAL), 1);
    assert_false(present(&v, K(7)));
    assert_int_equal(ec_items_remove(s, K(7), VAL), 0);
    assert_int_equal(ec_items_remove(s, K(1000), VAL), 0);
    /* publish the key again: it is there once, with its value */
    assert_int_equal(admit(&v, s, K(7)), 0);
    assert_true(present(&v, K(7)));
    assert_int_equal(admit(&v, s, K(7)), EC_EEXIST);
    ec_items_stats(s, &st);
    assert_int_equal(st.removed, 1);
    assert_int_equal(st.items, 100);
    assert_int_equal(st.items, ec_item_count(&v.seg));
    for (uint64_t r = 0; r < 100; r++)
        assert_true(present(&v, K(r)));
    store_close(&v, s);
    env_free(&v);
}

/* Shrink gives a slab back, its items unpublished; hints that name nothing
 * live, or lie about the tag, are refused without harm. */
static void test_shrink_and_hints(void **state)
{
    struct env v;
    ec_itemstore *s;
    ec_itemstore_stats st;
    uint64_t live = 0;
    (void)state;

    env_new(&v, 16u << 20, VAL, 3);
    s = store_open(&v);
    for (uint64_t r = 0; r < 20000; r++)
        assert_int_equal(admit(&v, s, K(r)), 0);
    assert_int_equal(v.slabs, 3);
    assert_int_equal(ec_items_shrink(s), EC_SLAB_BYTES);
    assert_int_equal(v.slabs, 2);
    assert_int_equal(v.freed, 1);
    for (uint64_t r = 0; r < 20000; r++)
        live += present(&v, K(r));
    ec_items_stats(s, &st);
    assert_int_equal(live, st.items);
    assert_int_equal(live, ec_item_count(&v.seg));
    assert_true(live <= 2 * 8191);
    /* Hints: random words, offsets past the data, a wrong tag. */
    {
        uint64_t rng = 99, bad0 = st.hints_bad;
        for (int i = 0; i < 100000; i++) {
            rng = rng * 6364136223846793005ull + 1;
            ec_items_hint(s, rng | EC_RING_ITEM);
        }
        ec_items_hint(s, EC_RING_ITEM | EC_ITEM_OFF_MASK);
        ec_items_stats(s, &st);
        assert_true(st.hints_bad > bad0);
    }
    /* The store still works. */
    assert_int_equal(admit(&v, s, K(777777)), 0);
    assert_true(present(&v, K(777777)));
    store_close(&v, s);
    env_free(&v);
}

/* A restarted store adopts what a previous one left: slabs whose sums hold;
 * a slab with a changed byte is dropped whole, and so is one whose header
 * was damaged. */
static void test_adopt(void **state)
{
    struct env v;
    ec_itemstore *s;
    ec_itemstore_stats st;
    ec_item_ref ref;
    uint64_t victim_slab, header_slab;
    unsigned before = 0, after = 0;
    (void)state;

    env_new(&v, 16u << 20, VAL, 4);
    s = store_open(&v);
    for (uint64_t r = 0; r < 4 * 8191; r++)
        assert_int_equal(admit(&v, s, K(r)), 0);
    for (uint64_t r = 0; r < 4 * 8191; r++)
        before += present(&v, K(r));
    store_close(&v, s);
    /* Damage: one value byte in one slab, one header in another. */
    assert_true(ec_item_lookup(&v.seg, K(10), VAL, &ref));
    victim_slab = ref.off / EC_SLAB_BYTES;
    v.seg.data[ref.off + 8 + 3] ^= 1;
    assert_true(ec_item_lookup(&v.seg, K(3 * 8191 + 5), VAL, &ref));
    header_slab = ref.off / EC_SLAB_BYTES;
    assert_true(header_slab != victim_slab);
    ((ec_slab_header *)(void *)(v.seg.data + header_slab * EC_SLAB_BYTES))->nitems++;

    s = store_open(&v);
    assert_int_equal(ec_items_adopt(s, slab_reserve, &v), 0);
    ec_items_stats(s, &st);
    for (uint64_t r = 0; r < 4 * 8191; r++) {
        if (!ec_item_lookup(&v.seg, K(r), VAL, &ref))
            continue;
        assert_true(ref.off / EC_SLAB_BYTES != victim_slab);
        assert_true(ref.off / EC_SLAB_BYTES != header_slab);
        after += present(&v, K(r));
    }
    printf("adopted %llu of %u items, dropped %llu (two damaged slabs)\n",
           (unsigned long long)st.adopted, before, (unsigned long long)st.adopt_dropped);
    assert_int_equal(st.adopted, after);
    assert_int_equal(after, before - 2 * 8191);
    assert_int_equal(st.adopt_dropped, 2 * 8191);
    assert_int_equal(v.slabs, 2);
    /* It goes on admitting into the free slabs and the adopted ones. */
    for (uint64_t r = 100000; r < 130000; r++)
        assert_int_equal(admit(&v, s, K(r)), 0);
    assert_true(v.slabs <= 4);
    ec_items_stats(s, &st);
    assert_int_equal(st.items, ec_item_count(&v.seg));
    store_close(&v, s);
    env_free(&v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_resistance), cmocka_unit_test(test_ghost),
        cmocka_unit_test(test_full_buckets),    cmocka_unit_test(test_shrink_and_hints),
        cmocka_unit_test(test_adopt),           cmocka_unit_test(test_remove),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
