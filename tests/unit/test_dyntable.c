/*
 * test_dyntable.c - shm/dyntable.c: the layout's validation, lookups by
 * key (tag collisions included), and the reader protocol under a writer
 * that rewrites one key nonstop (threads of one process over one mapping;
 * the multi-process case is tests/integration/test_dynamic.c), and the
 * lsn each slot records (what an indexed table's delta scan reads).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "embcache.h"
#include "shm/dyntable.h"

#define ROWB 64u

struct fixture {
    ec_segment seg;
    uint8_t *mem;
    ec_dyn_view v;
    uint64_t *fifo, fhead, fcount;
    uint64_t lsn;                 /* of the last put */
};

static void fx_init(struct fixture *f, uint64_t capacity)
{
    uint64_t bytes = ec_dyn_region_bytes(capacity, ROWB, NULL, NULL, NULL);

    memset(f, 0, sizeof(*f));
    f->mem = aligned_alloc(4096, bytes + 4096);
    assert_non_null(f->mem);
    f->seg.data = f->mem;
    f->seg.data_size = bytes + 4096;
    ec_dyn_init_w(f->mem, 7, capacity, ROWB, 0x1234);
    assert_int_equal(ec_dyn_view_open(&f->seg, 0, 7, ROWB, &f->v), 0);
    f->fifo = malloc(f->v.nslots * 8);
    for (uint64_t s = 0; s < f->v.nslots; s++)
        f->fifo[s] = s;
    f->fcount = f->v.nslots;
}

static void fx_free(struct fixture *f)
{
    free(f->mem);
    free(f->fifo);
}

static uint64_t pop(struct fixture *f)
{
    uint64_t s = f->fifo[f->fhead];
    f->fhead = (f->fhead + 1) % f->v.nslots;
    f->fcount--;
    return s;
}

static void push(struct fixture *f, uint64_t s)
{
    f->fifo[(f->fhead + f->fcount) % f->v.nslots] = s;
    f->fcount++;
}

/* The daemon's put, reduced: a fresh slot, then the word. */
static void put(struct fixture *f, int64_t key, const uint8_t *row)
{
    uint64_t b, s, fresh = pop(f);
    unsigned w;

    ec_dyn_slot_write_w(&f->v, fresh, key, row, ++f->lsn);
    if (ec_dyn_locate_w(&f->v, key, &b, &w, &s)) {
        ec_dyn_word_set_w(&f->v, key, b, w, fresh);
        atomic_store(&ec_dyn_slot_w(&f->v, s)->live, 0);
        push(f, s);
        return;
    }
    assert_true(ec_dyn_free_way_w(&f->v, key, &b, &w));
    ec_dyn_word_set_w(&f->v, key, b, w, fresh);
}

static void fill(uint8_t *row, int64_t key, uint32_t ver)
{
    for (unsigned i = 0; i < ROWB; i += 4) {
        uint32_t x = (uint32_t)key * 2654435761u ^ ver ^ i;
        memcpy(row + i, &x, 4);
    }
    memcpy(row, &ver, 4);
}

static void test_roundtrip_and_absent(void **state)
{
    struct fixture f;
    uint8_t row[ROWB], out[ROWB];

    (void)state;
    fx_init(&f, 5000);
    for (int64_t k = -2500; k < 2500; k++) {
        fill(row, k * 1000003, 1);
        put(&f, k * 1000003, row);
    }
    for (int64_t k = -2500; k < 2500; k++) {
        fill(row, k * 1000003, 1);
        assert_int_equal(ec_dyn_find(&f.v, k * 1000003, out, NULL), 1);
        assert_memory_equal(out, row, ROWB);
    }
    assert_int_equal(ec_dyn_find(&f.v, 5, out, NULL), 0);
    assert_int_equal(ec_dyn_find(&f.v, INT64_MIN, out, NULL), 0);
    /* An update is a new slot; the old one is free and a scan skips it. */
    fill(row, 0, 2);
    put(&f, 0, row);
    assert_int_equal(ec_dyn_find(&f.v, 0, out, NULL), 1);
    assert_memory_equal(out, row, ROWB);
    {
        uint64_t live = 0;
        int64_t key;
        for (uint64_t s = 0; s < f.v.nslots; s++)
            live += ec_dyn_slot_read(&f.v, s, &key, out) == 1;
        assert_int_equal(live, 5000);
    }
    fx_free(&f);
}

/* Each slot says which update wrote it: a peek at the header alone and a
 * lookup by key give the put's lsn; an update moves the key to a slot with
 * the new lsn and leaves the old one free; an absent key has none. */
static void test_slot_lsn(void **state)
{
    struct fixture f;
    uint8_t row[ROWB];
    uint64_t lsn = 0, live = 0, newer = 0;

    (void)state;
    fx_init(&f, 1024);
    for (int64_t k = 0; k < 100; k++) {
        fill(row, k * 7919, 1);
        put(&f, k * 7919, row);                   /* lsn k + 1 */
    }
    for (int64_t k = 0; k < 100; k++) {
        assert_int_equal(ec_dyn_key_lsn(&f.v, k * 7919, &lsn), 1);
        assert_int_equal(lsn, (uint64_t)k + 1);
    }
    assert_int_equal(ec_dyn_key_lsn(&f.v, 5, &lsn), 0);
    fill(row, 7919, 2);
    put(&f, 7919, row);                           /* lsn 101 */
    assert_int_equal(ec_dyn_key_lsn(&f.v, 7919, &lsn), 1);
    assert_int_equal(lsn, 101);
    for (uint64_t s = 0; s < f.v.nslots; s++) {
        uint64_t l = 0;
        int r = ec_dyn_slot_peek(&f.v, s, &l);
        assert_true(r == 0 || r == 1);
        live += r == 1;
        newer += r == 1 && l > 100;
    }
    assert_int_equal(live, 100);
    assert_int_equal(newer, 1);
    assert_int_equal(ec_dyn_slot_peek(&f.v, f.v.nslots, &lsn), 0);
    /* Looked up sixteen at a time, present and absent keys mixed: what
     * ec_dyn_key_lsn and ec_dyn_find say of each, key by key. */
    for (int64_t k0 = 0; k0 < 200; k0 += EC_DYN_BATCH) {
        int64_t keys[EC_DYN_BATCH];
        int found[EC_DYN_BATCH];
        uint64_t lsns[EC_DYN_BATCH];
        uint8_t *rows = malloc(EC_DYN_BATCH * f.v.row_bytes), *one_row = malloc(f.v.row_bytes);
        assert_non_null(rows);
        assert_non_null(one_row);
        for (unsigned i = 0; i < EC_DYN_BATCH; i++)
            keys[i] = (k0 + i) % 2 ? (k0 + i) / 2 * 7919 : (k0 + i) * 7919 + 1;
        assert_int_equal(ec_dyn_find_many(&f.v, keys, EC_DYN_BATCH, found, lsns, rows), 0);
        for (unsigned i = 0; i < EC_DYN_BATCH; i++) {
            int one = ec_dyn_key_lsn(&f.v, keys[i], &lsn);
            assert_int_equal(found[i], one);
            assert_int_equal(found[i], keys[i] % 7919 == 0 && keys[i] / 7919 < 100);
            if (one == 1) {
                assert_int_equal(lsns[i], lsn);
                assert_int_equal(ec_dyn_find(&f.v, keys[i], one_row, NULL), 1);
                assert_memory_equal(rows + i * f.v.row_bytes, one_row, f.v.row_bytes);
            }
        }
        /* Without lsns or rows: the same answers. */
        memset(found, 0xff, sizeof(found));
        assert_int_equal(ec_dyn_find_many(&f.v, keys, EC_DYN_BATCH, found, NULL, NULL), 0);
        for (unsigned i = 0; i < EC_DYN_BATCH; i++)
            assert_int_equal(found[i], keys[i] % 7919 == 0 && keys[i] / 7919 < 100);
        free(rows);
        free(one_row);
    }
    {
        int64_t keys[EC_DYN_BATCH + 1] = {0};
        int found[EC_DYN_BATCH + 1];
        uint64_t lsns[EC_DYN_BATCH + 1];
        assert_int_equal(ec_dyn_find_many(&f.v, keys, 0, found, lsns, NULL), 0);
        assert_int_equal(ec_dyn_find_many(&f.v, keys, EC_DYN_BATCH + 1, found, lsns, NULL),
                         EC_EINVAL);
    }
    fx_free(&f);
}

/* A word with a key's tag that points at another key's slot (what a tag
 * collision looks like): the reader compares the whole key, skips it, and
 * finds the key's own row. */
static void test_tag_collision_is_no_hit(void **state)
{
    struct fixture f;
    uint8_t row[ROWB], out[ROWB];
    ec_dyn_hash h;
    uint64_t other;

    (void)state;
    fx_init(&f, 1024);
    ec_dyn_hash_of(f.v.nbuckets, f.v.salt, 1, &h);
    other = pop(&f);
    fill(row, 777, 9);
    ec_dyn_slot_write_w(&f.v, other, 777, row, 1);
    atomic_store(&ec_dyn_bucket_w(&f.v, h.b1)->word[0], h.tag << EC_DYN_SLOT_BITS | (other + 1));
    atomic_store(&ec_dyn_bucket_w(&f.v, h.b2)->word[0], h.tag << EC_DYN_SLOT_BITS | (other + 1));
    assert_int_equal(ec_dyn_find(&f.v, 1, out, NULL), 0);
    fill(row, 1, 1);
    put(&f, 1, row);
    assert_int_equal(ec_dyn_find(&f.v, 1, out, NULL), 1);
    assert_memory_equal(out, row, ROWB);
    fx_free(&f);
}

static void test_view_refuses_bad_headers(void **state)
{
    struct fixture f;
    ec_dyn_view v;
    ec_dyn_header *h;
    ec_dyn_header saved;

    (void)state;
    fx_init(&f, 2000);
    h = (ec_dyn_header *)(void *)f.mem;
    saved = *h;
    assert_int_equal(ec_dyn_view_open(&f.seg, 0, 8, ROWB, &v), EC_ECORRUPT); /* tensor */
    assert_int_equal(ec_dyn_view_open(&f.seg, 0, 7, 32, &v), EC_ECORRUPT);   /* row bytes */
    assert_int_equal(ec_dyn_view_open(&f.seg, 4096, 7, ROWB, &v), EC_ECORRUPT);
    assert_int_equal(ec_dyn_view_open(&f.seg, f.seg.data_size, 7, ROWB, &v), EC_ECORRUPT);
    h->nslots += 1;
    assert_int_equal(ec_dyn_view_open(&f.seg, 0, 7, ROWB, &v), EC_ECORRUPT);
    *h = saved;
    h->capacity = 1ull << 50;
    assert_int_equal(ec_dyn_view_open(&f.seg, 0, 7, ROWB, &v), EC_ECORRUPT);
    *h = saved;
    h->region_bytes = f.seg.data_size * 2;
    assert_int_equal(ec_dyn_view_open(&f.seg, 0, 7, ROWB, &v), EC_ECORRUPT);
    *h = saved;
    f.seg.data_size = 8192; /* the table passes the segment's end */
    assert_int_equal(ec_dyn_view_open(&f.seg, 0, 7, ROWB, &v), EC_ECORRUPT);
    fx_free(&f);
}

/* A word pointing past the slots (a daemon's bug or a corrupted segment)
 * is never followed. */
static void test_word_out_of_range_ignored(void **state)
{
    struct fixture f;
    uint8_t out[ROWB];
    ec_dyn_hash h;

    (void)state;
    fx_init(&f, 1024);
    ec_dyn_hash_of(f.v.nbuckets, f.v.salt, 99, &h);
    atomic_store(&ec_dyn_bucket_w(&f.v, h.b1)->word[0],
                 h.tag << EC_DYN_SLOT_BITS | (f.v.nslots + 5));
    assert_int_equal(ec_dyn_find(&f.v, 99, out, NULL), 0);
    fx_free(&f);
}

struct hot {
    struct fixture *f;
    _Atomic int stop;
    _Atomic uint64_t reads, torn, missing, retries;
};

static void *hot_reader(void *arg)
{
    struct hot *x = arg;
    uint8_t out[ROWB], want[ROWB];
    uint64_t retries = 0;

    while (!atomic_load_explicit(&x->stop, memory_order_relaxed)) {
        uint32_t ver;
        if (ec_dyn_find(&x->f->v, 42, out, &retries) != 1) {
            atomic_fetch_add(&x->missing, 1);
            continue;
        }
        memcpy(&ver, out, 4);
        fill(want, 42, ver);
        if (memcmp(out, want, ROWB))
            atomic_fetch_add(&x->torn, 1);
        atomic_fetch_add_explicit(&x->reads, 1, memory_order_relaxed);
    }
    atomic_fetch_add(&x->retries, retries);
    return NULL;
}

/* One key rewritten as fast as one thread can while two threads read it:
 * no torn row, never absent, and reads keep completing. */
static void test_hot_key_never_torn(void **state)
{
    struct fixture f;
    struct hot x = {.f = &f};
    pthread_t th[2];
    uint8_t row[ROWB];
    uint32_t ver = 1;

    (void)state;
    fx_init(&f, 1024);
    fill(row, 42, ver);
    put(&f, 42, row);
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, hot_reader, &x);
    while (atomic_load(&x.reads) < 200000 && ver < 50000000) {
        fill(row, 42, ++ver);
        put(&f, 42, row);
    }
    atomic_store(&x.stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    print_message("%u updates, %llu reads, %llu retries\n", ver,
                  (unsigned long long)atomic_load(&x.reads),
                  (unsigned long long)atomic_load(&x.retries));
    assert_int_equal(atomic_load(&x.torn), 0);
    assert_int_equal(atomic_load(&x.missing), 0);
    assert_true(atomic_load(&x.reads) >= 200000);
    fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_and_absent),
        cmocka_unit_test(test_tag_collision_is_no_hit),
        cmocka_unit_test(test_slot_lsn),
        cmocka_unit_test(test_view_refuses_bad_headers),
        cmocka_unit_test(test_word_out_of_range_ignored),
        cmocka_unit_test(test_hot_key_never_torn),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
