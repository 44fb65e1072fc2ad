/*
 * test_items.c - unit tests of the item index (shm/items.c): insert, lookup,
 * probe and remove; the two buckets of a key and a full pair of them
 * (EC_ENOSPC and the neighbours a victim is chosen from); keys sharing a tag
 * are told apart by the whole key; sequence bumps on every write; slots that
 * point outside the data area are never returned; a random stress against a
 * reference map; the index of a real segment mapped read-only refuses writes.
 * Single process: concurrent readers and a writer are in
 * tests/integration/test_seqlock_mp.c.
 *
 * Most tests run on a small fake segment in the heap with a chosen number of
 * buckets, so full buckets and shared tags are easy to arrange.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "shm/items.h"
#include "shm/segment.h"
#include "tests/testutil.h"

#define DATA_SIZE (1u << 20)
#define VAL 24u /* value bytes of the test items */
#define ITEM (8u + VAL)

typedef struct fake {
    ec_segment seg;
    void *mem;
} fake;

static fake *fake_new(uint64_t buckets)
{
    fake *f = calloc(1, sizeof(*f));
    uint64_t slots = EC_SHM_MIN_SLOTS, index_bytes = slots * sizeof(ec_index_entry);
    uint64_t item_off = EC_SHM_HEADER_SIZE + index_bytes;
    uint64_t data_off = (item_off + buckets * sizeof(ec_item_bucket) + EC_SHM_PAGE - 1) /
                        EC_SHM_PAGE * EC_SHM_PAGE;
    uint64_t size = data_off + DATA_SIZE;
    ec_shm_header *h;

    assert_non_null(f);
    f->mem = aligned_alloc(EC_SHM_PAGE, size);
    assert_non_null(f->mem);
    memset(f->mem, 0, size);
    h = f->mem;
    h->magic = EC_SHM_MAGIC;
    h->layout_version = EC_SHM_LAYOUT_VERSION;
    h->header_size = EC_SHM_HEADER_SIZE;
    h->segment_size = size;
    h->index_off = EC_SHM_HEADER_SIZE;
    h->index_slots = slots;
    h->item_off = item_off;
    h->item_buckets = buckets;
    h->data_off = data_off;
    h->data_size = DATA_SIZE;
    assert_int_equal(ec_segment_validate(f->mem, size), 0);
    f->seg.fd = -1;
    f->seg.writable = true;
    f->seg.base = f->mem;
    f->seg.size = size;
    f->seg.hdr = h;
    f->seg.index = (ec_index_entry *)((uint8_t *)f->mem + EC_SHM_HEADER_SIZE);
    f->seg.index_slots = slots;
    f->seg.index_mask = slots - 1;
    f->seg.items = (ec_item_bucket *)((uint8_t *)f->mem + item_off);
    f->seg.item_buckets = buckets;
    f->seg.data = (uint8_t *)f->mem + data_off;
    f->seg.data_size = DATA_SIZE;
    return f;
}

static void fake_free(fake *f)
{
    free(f->mem);
    free(f);
}

/* Write an item (key, then a value derived from it) at slot i of the data. */
static uint64_t put_item(fake *f, uint64_t i, uint64_t key)
{
    uint64_t off = i * ITEM;
    assert_true(off + ITEM <= DATA_SIZE);
    memcpy(f->seg.data + off, &key, 8);
    for (unsigned k = 0; k < VAL; k++)
        f->seg.data[off + 8 + k] = (uint8_t)(key * 31 + k);
    return off;
}

static bool value_ok(const fake *f, uint64_t off, uint64_t key)
{
    for (unsigned k = 0; k < VAL; k++)
        if (f->seg.data[off + 8 + k] != (uint8_t)(key * 31 + k))
            return false;
    return true;
}

static uint64_t bucket_seq(const fake *f, uint64_t b)
{
    return atomic_load(&f->seg.items[b].seq);
}

static void test_basic(void **state)
{
    fake *f = fake_new(64);
    ec_item_ref ref;
    ec_item_hash h;
    uint64_t key = EC_ITEM_ROW_KEY(5, 12345), off = put_item(f, 3, key), s0;
    (void)state;

    assert_int_equal(ec_item_lookup(&f->seg, key, VAL, &ref), 0);
    ec_item_hash_of(f->seg.item_buckets, key, &h);
    s0 = bucket_seq(f, h.b1);
    assert_int_equal(ec_item_insert(&f->seg, key, off), 0);
    assert_int_equal(bucket_seq(f, h.b1), s0 + 2);
    assert_int_equal(ec_item_lookup(&f->seg, key, VAL, &ref), 1);
    assert_int_equal(ref.off, off);
    assert_ptr_equal(ref.bucket, &f->seg.items[h.b1]);
    assert_true(value_ok(f, ref.off, key));
    assert_true(ec_item_still_valid(&ref));
    assert_int_equal(ec_item_count(&f->seg), 1);
    /* probe finds the same slot without comparing the key */
    {
        ec_item_ref p;
        assert_int_equal(ec_item_probe(&f->seg, &h, VAL, &p), 1);
        assert_int_equal(p.off, off);
        assert_int_equal(ec_item_key_at(&f->seg, p.off), key);
    }
    /* a second insert of the key, and bad arguments */
    assert_int_equal(ec_item_insert(&f->seg, key, off), EC_EEXIST);
    assert_int_equal(ec_item_insert(&f->seg, key, off + 4), EC_EINVAL);
    assert_int_equal(ec_item_insert(&f->seg, key, DATA_SIZE), EC_EINVAL);
    assert_int_equal(ec_item_insert(&f->seg, 0, off), EC_EINVAL);
    /* the item at an offset must carry the key being published */
    assert_int_equal(ec_item_insert(&f->seg, key + 1, off), EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "write it first"));
    /* a value longer than the data area after the item is not a hit */
    assert_int_equal(ec_item_lookup(&f->seg, key, DATA_SIZE, &ref), 0);

    /* remove bumps the bucket: a copy made before does not validate */
    assert_int_equal(ec_item_lookup(&f->seg, key, VAL, &ref), 1);
    assert_int_equal(ec_item_remove(&f->seg, key, off + 8), EC_ENOENT);
    assert_int_equal(ec_item_remove(&f->seg, key, off), 0);
    assert_false(ec_item_still_valid(&ref));
    assert_int_equal(ec_item_lookup(&f->seg, key, VAL, &ref), 0);
    assert_int_equal(ec_item_remove(&f->seg, key, off), EC_ENOENT);
    assert_int_equal(ec_item_count(&f->seg), 0);
    fake_free(f);
}

/* With one bucket, every key shares it: 7 fit, the 8th is refused, and the
 * neighbours are the 7. */
static void test_full(void **state)
{
    fake *f = fake_new(1);
    uint64_t offs[2 * EC_ITEM_WAYS], key;
    ec_item_ref ref;
    (void)state;

    for (unsigned i = 0; i < EC_ITEM_WAYS; i++) {
        key = EC_ITEM_ROW_KEY(1, i);
        assert_int_equal(ec_item_insert(&f->seg, key, put_item(f, i, key)), 0);
    }
    key = EC_ITEM_ROW_KEY(1, 100);
    assert_int_equal(ec_item_insert(&f->seg, key, put_item(f, 100, key)), EC_ENOSPC);
    assert_int_equal(ec_item_neighbours(&f->seg, key, offs), EC_ITEM_WAYS);
    for (unsigned i = 0; i < EC_ITEM_WAYS; i++) {
        assert_int_equal(offs[i] % ITEM, 0);
        assert_true(offs[i] / ITEM < EC_ITEM_WAYS);
    }
    assert_int_equal(ec_item_remove(&f->seg, EC_ITEM_ROW_KEY(1, 3), 3 * ITEM), 0);
    assert_int_equal(ec_item_insert(&f->seg, key, 100 * ITEM), 0);
    assert_int_equal(ec_item_lookup(&f->seg, key, VAL, &ref), 1);
    assert_int_equal(ec_item_lookup(&f->seg, EC_ITEM_ROW_KEY(1, 3), VAL, &ref), 0);
    fake_free(f);
}

/* Two keys with the same tag in the same bucket are told apart by the key
 * stored at the item; probe may return the wrong one, lookup never does. */
static void test_shared_tag(void **state)
{
    fake *f = fake_new(1);
    uint32_t *seen = calloc(1u << 24, sizeof(*seen));
    uint64_t a = 0, b = 0;
    ec_item_ref ref;
    (void)state;

    assert_non_null(seen);
    for (uint64_t r = 1; r < 50000000 && !b; r++) {
        ec_item_hash h;
        ec_item_hash_of(1, EC_ITEM_ROW_KEY(2, r), &h);
        if (seen[h.tag]) {
            a = EC_ITEM_ROW_KEY(2, seen[h.tag]);
            b = EC_ITEM_ROW_KEY(2, r);
        }
        seen[h.tag] = (uint32_t)r;
    }
    free(seen);
    assert_true(b != 0);
    assert_int_equal(ec_item_insert(&f->seg, a, put_item(f, 0, a)), 0);
    assert_int_equal(ec_item_lookup(&f->seg, b, VAL, &ref), 0); /* tag matches, key not */
    assert_int_equal(ec_item_insert(&f->seg, b, put_item(f, 1, b)), 0);
    assert_int_equal(ec_item_lookup(&f->seg, a, VAL, &ref), 1);
    assert_int_equal(ref.off, 0);
    assert_int_equal(ec_item_lookup(&f->seg, b, VAL, &ref), 1);
    assert_int_equal(ref.off, ITEM);
    assert_int_equal(ec_item_remove(&f->seg, a, 0), 0);
    assert_int_equal(ec_item_lookup(&f->seg, b, VAL, &ref), 1);
    assert_int_equal(ec_item_lookup(&f->seg, a, VAL, &ref), 0);
    fake_free(f);
}

/* A slot word pointing outside the data area (a damaged or hostile index)
 * is never returned by lookup or probe. */
static void test_out_of_bounds(void **state)
{
    fake *f = fake_new(4);
    uint64_t key = EC_ITEM_ROW_KEY(3, 9);
    ec_item_hash h;
    ec_item_ref ref;
    (void)state;

    ec_item_hash_of(4, key, &h);
    /* offset / 8 = DATA_SIZE / 8 - 1: the key fits, the value does not */
    atomic_store(&f->seg.items[h.b1].slot[0],
                 ((uint64_t)h.tag << EC_ITEM_OFF_BITS) | (DATA_SIZE / 8 - 1));
    atomic_store(&f->seg.items[h.b1].slot[1],
                 ((uint64_t)h.tag << EC_ITEM_OFF_BITS) | EC_ITEM_OFF_MASK);
    assert_int_equal(ec_item_lookup(&f->seg, key, VAL, &ref), 0);
    assert_int_equal(ec_item_probe(&f->seg, &h, VAL, &ref), 0);
    /* a bucket left odd (a writer died in it) reads as a miss, not a hang */
    atomic_store(&f->seg.items[h.b1].slot[0], 0);
    atomic_store(&f->seg.items[h.b1].slot[1], 0);
    assert_int_equal(ec_item_insert(&f->seg, key, put_item(f, 0, key)), 0);
    atomic_fetch_add(&f->seg.items[h.b1].seq, 1);
    assert_int_equal(ec_item_lookup(&f->seg, key, VAL, &ref), 0);
    /* and the next write moves it on */
    assert_int_equal(ec_item_remove(&f->seg, key, 0), 0);
    assert_int_equal(bucket_seq(f, h.b1) % 2, 0);
    fake_free(f);
}

/* Random inserts and removes against a reference, then every key checked. */
static void test_random(void **state)
{
    enum { N = 3000 };
    fake *f = fake_new(600); /* 4200 slots, up to 3000 items: up to 71% */
    static bool in[N];
    uint64_t rng = 42;
    unsigned live = 0, full = 0;
    ec_item_ref ref;
    (void)state;

    memset(in, 0, sizeof(in));
    for (int step = 0; step < 200000; step++) {
        unsigned i;
        uint64_t key;
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        i = (unsigned)(rng >> 33) % N;
        key = EC_ITEM_ROW_KEY(7, (uint64_t)i * 7919u);
        if (in[i]) {
            assert_int_equal(ec_item_lookup(&f->seg, key, VAL, &ref), 1);
            assert_int_equal(ref.off, (uint64_t)i * ITEM);
            assert_true(value_ok(f, ref.off, key));
            assert_int_equal(ec_item_remove(&f->seg, key, (uint64_t)i * ITEM), 0);
            in[i] = false;
            live--;
        } else {
            int rc;
            assert_int_equal(ec_item_lookup(&f->seg, key, VAL, &ref), 0);
            rc = ec_item_insert(&f->seg, key, put_item(f, i, key));
            if (rc == EC_ENOSPC) {
                full++;
                continue;
            }
            assert_int_equal(rc, 0);
            in[i] = true;
            live++;
        }
    }
    assert_int_equal(ec_item_count(&f->seg), live);
    for (unsigned i = 0; i < N; i++)
        assert_int_equal(ec_item_lookup(&f->seg, EC_ITEM_ROW_KEY(7, (uint64_t)i * 7919u), VAL,
                                        &ref),
                         in[i] ? 1 : 0);
    /* two choices of 7 slots at this load: a full pair is rare */
    assert_true(full < 200);
    ec_item_clear(&f->seg);
    assert_int_equal(ec_item_count(&f->seg), 0);
    fake_free(f);
}

static int count_cb(uint64_t key, uint64_t off, void *arg)
{
    (void)off;
    assert_int_equal(EC_ITEM_KEY_KIND(key), EC_ITEM_KIND_ROW);
    (*(unsigned *)arg)++;
    return 0;
}

/* A real segment: the item index planned for it, mapped read-only by a
 * client, refuses writes there and finds what the writer published. */
static void test_real_segment(void **state)
{
    char *dir = ect_tmpdir("test_items");
    ec_segment w, r;
    ec_item_ref ref;
    int fd;
    unsigned n = 0;
    uint64_t key = EC_ITEM_ROW_KEY(EC_ITEM_ROW_TENSOR_MAX, EC_ITEM_ROW_MAX);
    (void)state;

    assert_int_equal(EC_ITEM_KEY_TENSOR(key), EC_ITEM_ROW_TENSOR_MAX);
    assert_int_equal(EC_ITEM_KEY_ROW(key), EC_ITEM_ROW_MAX);
    assert_int_equal(ec_segment_create_geometry(8u << 20, 0, 256, &w), 0);
    assert_int_equal(ec_segment_seal(&w), 0);
    assert_true(w.item_buckets > 0);
    memcpy(w.data + 4096, &key, 8);
    assert_int_equal(ec_item_insert(&w, key, 4096), 0);
    assert_int_equal(ec_item_foreach(&w, count_cb, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ec_segment_open_readonly(&w, &fd), 0);
    assert_int_equal(ec_segment_map_fd(fd, &r), 0);
    close(fd);
    assert_int_equal(r.item_buckets, w.item_buckets);
    assert_int_equal(ec_item_lookup(&r, key, 256, &ref), 1);
    assert_int_equal(ref.off, 4096);
    assert_int_equal(ec_item_insert(&r, key + 1, 8192), EC_EPERM);
    assert_int_equal(ec_item_remove(&r, key, 4096), EC_EPERM);
    ec_segment_close(&r);
    ec_segment_close(&w);
    /* no item index at all: lookups miss, writes explain */
    assert_int_equal(ec_segment_create_geometry(8u << 20, 0, 0, &w), 0);
    assert_int_equal(ec_segment_seal(&w), 0);
    assert_int_equal(w.item_buckets, 0);
    assert_int_equal(ec_item_lookup(&w, key, 8, &ref), 0);
    assert_int_equal(ec_item_insert(&w, key, 4096), EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "no item index"));
    ec_segment_close(&w);
    ect_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_shared_tag),
        cmocka_unit_test(test_out_of_bounds),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_real_segment),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
