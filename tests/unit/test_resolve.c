/*
 * test_resolve.c - unit tests of the row lookup a GPU does for ids on the
 * GPU (cuda/resolve.h), compiled here for the host as the emulator compiles
 * it: a real segment with a device table, entries put in with the daemon's
 * own ec_index_insert, and the lookup asked where each row is.
 *
 * Checked: rows on the device tier and in host memory, and their
 * addresses; a device entry used only while the header publishes the
 * slab generation the caller opened; an entry being written, one with too
 * few rows, one outside the data area: misses, never an address; ids
 * outside the tensor; rows across two registration chunks (a miss) and the
 * chunk-by-chunk translation.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/resolve.h"
#include "shm/index.h"
#include "shm/segment.h"
#include "tests/testutil.h"

#define TENSOR 5u
#define RPP 4u
#define ROW 16u
#define SLAB (1u << 20)

struct fixture {
    ec_segment seg, dev;
    uint8_t *slab;
    ec_resolve_args a;
};

static void fixture_init(struct fixture *f)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(ec_segment_create_geometry(8u << 20, 1, 0, &f->seg), 0);
    assert_int_equal(ec_segment_device_view(&f->seg, 0, SLAB, &f->dev), 0);
    f->slab = calloc(1, SLAB);
    assert_non_null(f->slab);
    atomic_store(&f->seg.hdr->dev[0].slab_gen, 77);
    f->a.rows = 16;
    f->a.rpp = RPP;
    f->a.row_bytes = ROW;
    f->a.out_row_bytes = ROW;
    f->a.tensor = TENSOR;
    f->a.seg_len = f->seg.size;
    f->a.chunk = f->seg.size;
    f->a.nchunks = 1;
    f->a.chunk_dev[0] = (uint64_t)(uintptr_t)f->seg.base;
    f->a.index_off = (uint64_t)((uint8_t *)f->seg.index - f->seg.base);
    f->a.index_mask = f->seg.index_mask;
    f->a.data_off = (uint64_t)(f->seg.data - f->seg.base);
    f->a.data_size = f->seg.data_size;
    f->a.dev_index_off = (uint64_t)((uint8_t *)f->dev.index - f->seg.base);
    f->a.gen_off = offsetof(ec_shm_header, dev) + offsetof(ec_shm_device, slab_gen);
    f->a.gen = 77;
    f->a.slab = (uint64_t)(uintptr_t)f->slab;
    f->a.slab_bytes = SLAB;
    /* Partition 0 in host memory at 0, partition 1 on the GPU at 4096. */
    assert_int_equal(ec_index_insert(&f->seg, TENSOR, 0, 0, RPP * ROW), 0);
    assert_int_equal(ec_index_insert(&f->dev, TENSOR, 1, 4096, RPP * ROW), 0);
}

static void fixture_done(struct fixture *f)
{
    free(f->slab);
    ec_segment_close(&f->seg);
}

static unsigned find(const struct fixture *f, int64_t id, uint64_t *src, uint32_t *part)
{
    *src = 0;
    *part = UINT32_MAX;
    return ec_rs_find(&f->a, id, src, part);
}

static void test_tiers_and_addresses(void **state)
{
    struct fixture f;
    uint64_t src;
    uint32_t part;

    (void)state;
    fixture_init(&f);
    assert_int_equal(find(&f, 1, &src, &part), EC_RS_HOST);
    assert_int_equal(part, 0);
    assert_true(src == (uint64_t)(uintptr_t)(f.seg.data + 1 * ROW));
    assert_int_equal(find(&f, 6, &src, &part), EC_RS_DEVICE);
    assert_int_equal(part, 1);
    assert_true(src == (uint64_t)(uintptr_t)(f.slab + 4096 + 2 * ROW));
    /* Partition 2 is nowhere. */
    assert_int_equal(find(&f, 9, &src, &part), EC_RS_MISS);
    assert_int_equal(src, 0);
    /* Outside the tensor. */
    assert_int_equal(find(&f, 16, &src, &part), EC_RS_RANGE);
    assert_int_equal(find(&f, -1, &src, &part), EC_RS_RANGE);
    /* No device tier asked for: the device entry is not looked at. */
    f.a.dev_index_off = 0;
    assert_int_equal(find(&f, 6, &src, &part), EC_RS_MISS);
    fixture_done(&f);
}

static void test_slab_generation(void **state)
{
    struct fixture f;
    uint64_t src;
    uint32_t part;

    (void)state;
    fixture_init(&f);
    /* A new slab (a restarted daemon, a GPU that failed): the device
     * entries found may be of the new slab, at offsets that mean other
     * rows in the one this caller maps. */
    atomic_store(&f.seg.hdr->dev[0].slab_gen, 78);
    assert_int_equal(find(&f, 6, &src, &part), EC_RS_MISS);
    assert_int_equal(src, 0);
    /* ... and host memory is used where the partition is there too. */
    assert_int_equal(ec_index_insert(&f.seg, TENSOR, 1, 8192, RPP * ROW), 0);
    assert_int_equal(find(&f, 6, &src, &part), EC_RS_HOST);
    assert_true(src == (uint64_t)(uintptr_t)(f.seg.data + 8192 + 2 * ROW));
    atomic_store(&f.seg.hdr->dev[0].slab_gen, 77);
    assert_int_equal(find(&f, 6, &src, &part), EC_RS_DEVICE);
    fixture_done(&f);
}

/* The entry of (TENSOR, part) in index `idx`. */
static ec_index_entry *entry_of(ec_segment *idx, uint32_t part)
{
    ec_index_ref ref;

    assert_int_equal(ec_index_lookup(idx, TENSOR, part, &ref), 1);
    return (ec_index_entry *)ref.entry;
}

static void test_entries_checked(void **state)
{
    struct fixture f;
    ec_index_entry *e;
    uint64_t src, seq;
    uint32_t part;

    (void)state;
    fixture_init(&f);
    e = entry_of(&f.seg, 0);
    /* Being written (odd sequence): a miss. */
    seq = atomic_load(&e->seq);
    atomic_store(&e->seq, seq + 1);
    assert_int_equal(find(&f, 1, &src, &part), EC_RS_MISS);
    atomic_store(&e->seq, seq + 2);
    assert_int_equal(find(&f, 1, &src, &part), EC_RS_HOST);
    /* Too few rows for the one asked. */
    atomic_store(&e->length, 3 * ROW);
    assert_int_equal(find(&f, 2, &src, &part), EC_RS_HOST);
    assert_int_equal(find(&f, 3, &src, &part), EC_RS_MISS);
    /* Pointing outside the data area (a corrupt entry): never an address. */
    atomic_store(&e->length, RPP * ROW);
    atomic_store(&e->offset, f.seg.data_size - ROW);
    assert_int_equal(find(&f, 1, &src, &part), EC_RS_MISS);
    assert_int_equal(src, 0);
    /* Not resident. */
    atomic_store(&e->offset, 0);
    atomic_store(&e->flags, 0);
    assert_int_equal(find(&f, 1, &src, &part), EC_RS_MISS);
    /* A device entry outside the slab. */
    e = entry_of(&f.dev, 1);
    atomic_store(&e->offset, SLAB - ROW);
    assert_int_equal(find(&f, 6, &src, &part), EC_RS_MISS);
    fixture_done(&f);
}

static void test_chunks(void **state)
{
    struct fixture f;
    uint64_t src, row_off;
    uint32_t part;
    uint8_t *copy;

    (void)state;
    fixture_init(&f);
    /* 64 KiB chunks, each "mapped" at its own address: a copy of the
     * segment with every chunk at twice its offset (holes between). */
    const uint64_t C = 64u << 10;
    f.a.chunk = C;
    f.a.nchunks = f.seg.size / C;
    assert_true(f.a.nchunks <= EC_RS_MAX_CHUNKS);
    copy = calloc(2, f.seg.size);
    assert_non_null(copy);
    for (uint64_t k = 0; k < f.a.nchunks; k++) {
        memcpy(copy + 2 * k * C, f.seg.base + k * C, C);
        f.a.chunk_dev[k] = (uint64_t)(uintptr_t)(copy + 2 * k * C);
    }
    row_off = f.a.data_off + 1 * ROW;
    assert_int_equal(find(&f, 1, &src, &part), EC_RS_HOST);
    assert_true(src == (uint64_t)(uintptr_t)(copy + 2 * (row_off / C) * C + row_off % C));
    /* A partition whose rows cross a chunk boundary: rows inside one chunk
     * are found, the row across two is a miss (the host path stages it). */
    {
        uint64_t b = (f.a.data_off / C + 1) * C; /* a chunk boundary in the data area */
        assert_int_equal(ec_index_insert(&f.seg, TENSOR, 2, b - f.a.data_off - ROW - 8,
                                         RPP * ROW), 0);
        for (uint64_t k = 0; k < f.a.nchunks; k++)
            memcpy(copy + 2 * k * C, f.seg.base + k * C, C);
    }
    assert_int_equal(find(&f, 8, &src, &part), EC_RS_HOST);
    assert_int_equal(find(&f, 9, &src, &part), EC_RS_MISS);
    assert_int_equal(find(&f, 10, &src, &part), EC_RS_HOST);
    assert_int_equal(find(&f, 11, &src, &part), EC_RS_HOST);
    /* Past the registration. */
    f.a.seg_len = f.a.data_off;
    assert_int_equal(find(&f, 1, &src, &part), EC_RS_MISS);
    free(copy);
    fixture_done(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiers_and_addresses),
        cmocka_unit_test(test_slab_generation),
        cmocka_unit_test(test_entries_checked),
        cmocka_unit_test(test_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
