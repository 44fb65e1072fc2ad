/*
 * test_index.c - unit tests of the partition index (shm/index.c): insert,
 * lookup and remove; collisions and wrap-around at the end of the table;
 * backward-shift deletion keeping every other key findable (random stress
 * against a reference map); sequence bumps on remove and on moves; entries
 * that point outside the data area are never returned; a full table; the
 * index on a real segment mapped read-only. Single process: the concurrent
 * seqlock test is tests/integration/test_seqlock_mp.c.
 *
 * Most tests run on a small fake segment in the heap (64 or 1024 slots), so
 * that collisions and wrap-around are easy to arrange. Homes of keys are
 * found by experiment (insert into an empty table, see where the key lands),
 * so the tests do not depend on the hash function.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/err.h"
#include "shm/index.h"
#include "shm/segment.h"
#include "tests/testutil.h"

#define DATA_SIZE (1u << 20)

typedef struct fake {
    ec_segment seg;
    void *mem;
} fake;

static fake *fake_new(uint64_t slots)
{
    fake *f = calloc(1, sizeof(*f));
    uint64_t index_bytes = slots * sizeof(ec_index_entry);
    uint64_t data_off = EC_SHM_HEADER_SIZE + (index_bytes + EC_SHM_PAGE - 1) / EC_SHM_PAGE *
                                                 EC_SHM_PAGE;
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
    h->item_off = EC_SHM_HEADER_SIZE + index_bytes; /* no item index */
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
    f->seg.data = (uint8_t *)f->mem + data_off;
    f->seg.data_size = DATA_SIZE;
    return f;
}

static void fake_free(fake *f)
{
    free(f->mem);
    free(f);
}

static uint64_t seq_of(const ec_segment *s, uint64_t slot)
{
    return atomic_load(&s->index[slot].seq);
}

static uint64_t key_of(const ec_segment *s, uint64_t slot)
{
    return atomic_load(&s->index[slot].key);
}

static int64_t slot_of(const ec_segment *s, uint32_t t, uint32_t p)
{
    for (uint64_t i = 0; i < s->index_slots; i++)
        if (key_of(s, i) == EC_INDEX_KEY(t, p))
            return (int64_t)i;
    return -1;
}

/* Home slot of a key, by experiment on an empty table. */
static uint64_t home_of(ec_segment *s, uint32_t t, uint32_t p)
{
    int64_t slot;
    assert_int_equal(ec_index_count(s), 0);
    assert_int_equal(ec_index_insert(s, t, p, 0, 0), 0);
    slot = slot_of(s, t, p);
    assert_true(slot >= 0);
    assert_int_equal(ec_index_remove(s, t, p, NULL, NULL), 0);
    return (uint64_t)slot;
}

static void expect_hit(const ec_segment *s, uint32_t t, uint32_t p, uint64_t off, uint32_t len)
{
    ec_index_ref ref;
    if (ec_index_lookup(s, t, p, &ref) != 1)
        fail_msg("tensor %u part %u not found", t, p);
    assert_int_equal(ref.offset, off);
    assert_int_equal(ref.length, len);
    assert_int_equal(ref.seq & 1, 0);
    assert_true(ec_index_still_valid(&ref));
}

static void expect_miss(const ec_segment *s, uint32_t t, uint32_t p)
{
    ec_index_ref ref;
    assert_int_equal(ec_index_lookup(s, t, p, &ref), 0);
}

static void test_basic(void **state)
{
    fake *f = fake_new(64);
    ec_segment *s = &f->seg;
    uint64_t off = 0;
    uint32_t len = 0;
    (void)state;

    expect_miss(s, 1, 0);
    assert_int_equal(ec_index_insert(s, 1, 0, 4096, 8192), 0);
    assert_int_equal(ec_index_insert(s, 1, 1, 0, 4096), 0);
    assert_int_equal(ec_index_insert(s, 2, 0, DATA_SIZE - 4096, 4096), 0);
    assert_int_equal(ec_index_count(s), 3);
    assert_int_equal(s->index_used, 3);
    expect_hit(s, 1, 0, 4096, 8192);
    expect_hit(s, 1, 1, 0, 4096);
    expect_hit(s, 2, 0, DATA_SIZE - 4096, 4096);
    expect_miss(s, 1, 2);
    expect_miss(s, 3, 0);
    expect_miss(s, 0, 0); /* tensor 0 is never a hit */

    /* Duplicates. */
    assert_int_equal(ec_index_insert(s, 1, 0, 0, 4096), EC_EEXIST);
    assert_non_null(strstr(ec_last_error(), "already in the index"));
    expect_hit(s, 1, 0, 4096, 8192);

    assert_int_equal(ec_index_remove(s, 1, 0, &off, &len), 0);
    assert_int_equal(off, 4096);
    assert_int_equal(len, 8192);
    expect_miss(s, 1, 0);
    expect_hit(s, 1, 1, 0, 4096);
    assert_int_equal(ec_index_remove(s, 1, 0, &off, &len), EC_ENOENT);
    assert_int_equal(ec_index_remove(s, 0, 0, &off, &len), EC_ENOENT);
    assert_int_equal(ec_index_count(s), 2);
    assert_int_equal(s->index_used, 2);
    /* Reinsert with another extent. */
    assert_int_equal(ec_index_insert(s, 1, 0, 65536, 100), 0);
    expect_hit(s, 1, 0, 65536, 100);

    /* Large tensor and part ids stay distinct. */
    assert_int_equal(ec_index_insert(s, UINT32_MAX, UINT32_MAX, 0, 1), 0);
    assert_int_equal(ec_index_insert(s, UINT32_MAX, 0, 0, 2), 0);
    assert_int_equal(ec_index_insert(s, 1, UINT32_MAX, 0, 3), 0);
    expect_hit(s, UINT32_MAX, UINT32_MAX, 0, 1);
    expect_hit(s, UINT32_MAX, 0, 0, 2);
    expect_hit(s, 1, UINT32_MAX, 0, 3);
    fake_free(f);
}

static void test_insert_refused(void **state)
{
    fake *f = fake_new(64);
    ec_segment *s = &f->seg;
    (void)state;

    assert_int_equal(ec_index_insert(s, 0, 5, 0, 4096), EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "tensor id 0"));
    assert_int_equal(ec_index_insert(s, 1, 0, DATA_SIZE + 4096, 1), EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "outside"));
    assert_int_equal(ec_index_insert(s, 1, 0, DATA_SIZE - 4096, 4097), EC_EINVAL);
    assert_int_equal(ec_index_insert(s, 1, 0, UINT64_MAX - 10, 100), EC_EINVAL);
    assert_int_equal(ec_index_insert(s, 1, 0, 0, UINT32_MAX), EC_EINVAL); /* > 1 MiB */
    assert_int_equal(ec_index_insert(NULL, 1, 0, 0, 1), EC_EINVAL);
    /* The whole data area and an empty range at its end are fine. */
    assert_int_equal(ec_index_insert(s, 1, 0, 0, DATA_SIZE), 0);
    assert_int_equal(ec_index_insert(s, 1, 1, DATA_SIZE, 0), 0);

    /* A read-only mapping cannot write. */
    s->writable = false;
    assert_int_equal(ec_index_insert(s, 1, 2, 0, 1), EC_EPERM);
    assert_non_null(strstr(ec_last_error(), "read-only"));
    assert_int_equal(ec_index_remove(s, 1, 0, NULL, NULL), EC_EPERM);
    ec_index_clear(s); /* refused silently */
    assert_int_equal(ec_index_count(s), 2);
    s->writable = true;
    assert_int_equal(ec_index_count(s), 2);
    fake_free(f);
}

static void test_full(void **state)
{
    fake *f = fake_new(64);
    ec_segment *s = &f->seg;
    uint32_t n = 0;
    int rc;
    (void)state;

    while ((rc = ec_index_insert(s, 7, n, 0, 4096)) == 0)
        n++;
    assert_int_equal(rc, EC_ENOSPC);
    assert_non_null(strstr(ec_last_error(), "index is full"));
    /* Load factor stays below 0.9. */
    assert_true(n * 10 < 64 * 9);
    assert_true(n >= 56);
    for (uint32_t i = 0; i < n; i++)
        expect_hit(s, 7, i, 0, 4096);
    expect_miss(s, 7, n);
    /* A duplicate is EEXIST even when full. */
    assert_int_equal(ec_index_insert(s, 7, 0, 0, 4096), EC_EEXIST);
    /* Remove one, insert one. */
    assert_int_equal(ec_index_remove(s, 7, 3, NULL, NULL), 0);
    assert_int_equal(ec_index_insert(s, 7, n, 0, 4096), 0);
    assert_int_equal(ec_index_insert(s, 7, n + 1, 0, 4096), EC_ENOSPC);

    /* After a (re)attach the count is unknown: the next insert counts the
     * entries first, and still refuses past the limit. */
    assert_int_equal(ec_index_remove(s, 7, 4, NULL, NULL), 0);
    s->index_used = EC_INDEX_USED_UNKNOWN;
    assert_int_equal(ec_index_insert(s, 7, 4, 0, 4096), 0);
    assert_int_equal(s->index_used, ec_index_count(s));
    s->index_used = EC_INDEX_USED_UNKNOWN;
    assert_int_equal(ec_index_insert(s, 7, n + 2, 0, 4096), EC_ENOSPC);
    /* The shared gauge is the engine's: the index never writes it. */
    assert_int_equal(atomic_load(&s->hdr->resident_partitions), 0);
    fake_free(f);
}

/* Keys with chosen homes: collisions, chains that wrap from the last slot to
 * the first, and backward shifts across the wrap. */
static void test_collisions_wrap(void **state)
{
    fake *f = fake_new(64);
    ec_segment *s = &f->seg;
    uint32_t at62[3] = {0}, at63[2] = {0}, at0[1] = {0}, at1[1] = {0};
    unsigned n62 = 0, n63 = 0, n0 = 0, n1 = 0;
    uint64_t seq_before;
    (void)state;

    for (uint32_t p = 0; n62 < 3 || n63 < 2 || n0 < 1 || n1 < 1; p++) {
        uint64_t h = home_of(s, 9, p);
        if (h == 62 && n62 < 3)
            at62[n62++] = p;
        else if (h == 63 && n63 < 2)
            at63[n63++] = p;
        else if (h == 0 && n0 < 1)
            at0[n0++] = p;
        else if (h == 1 && n1 < 1)
            at1[n1++] = p;
        assert_true(p < 1000000);
    }
    /* Insert in an order that makes a chain 62,63,0,1,2,3,4. */
    assert_int_equal(ec_index_insert(s, 9, at62[0], 0, 62), 0);
    assert_int_equal(ec_index_insert(s, 9, at62[1], 0, 621), 0);
    assert_int_equal(ec_index_insert(s, 9, at63[0], 0, 63), 0);
    assert_int_equal(ec_index_insert(s, 9, at62[2], 0, 622), 0);
    assert_int_equal(ec_index_insert(s, 9, at0[0], 0, 100), 0);
    assert_int_equal(ec_index_insert(s, 9, at63[1], 0, 631), 0);
    assert_int_equal(ec_index_insert(s, 9, at1[0], 0, 101), 0);
    assert_int_equal(slot_of(s, 9, at62[0]), 62);
    assert_int_equal(slot_of(s, 9, at62[1]), 63);
    assert_int_equal(slot_of(s, 9, at63[0]), 0);
    assert_int_equal(slot_of(s, 9, at62[2]), 1);
    assert_int_equal(slot_of(s, 9, at0[0]), 2);
    assert_int_equal(slot_of(s, 9, at63[1]), 3);
    assert_int_equal(slot_of(s, 9, at1[0]), 4);
    expect_hit(s, 9, at62[2], 0, 622);
    expect_hit(s, 9, at1[0], 0, 101);

    /* Remove the head of the chain: everything shifts back one slot, each
     * moved slot's sequence moves. */
    seq_before = seq_of(s, 4);
    assert_int_equal(ec_index_remove(s, 9, at62[0], NULL, NULL), 0);
    assert_int_equal(slot_of(s, 9, at62[1]), 62);
    assert_int_equal(slot_of(s, 9, at63[0]), 63);
    assert_int_equal(slot_of(s, 9, at62[2]), 0);
    assert_int_equal(slot_of(s, 9, at0[0]), 1);
    assert_int_equal(slot_of(s, 9, at63[1]), 2);
    assert_int_equal(slot_of(s, 9, at1[0]), 3);
    assert_int_equal(key_of(s, 4), 0);
    assert_true(seq_of(s, 4) > seq_before);
    for (uint64_t i = 0; i < 64; i++)
        assert_int_equal(seq_of(s, i) & 1, 0);
    expect_miss(s, 9, at62[0]);
    expect_hit(s, 9, at62[1], 0, 621);
    expect_hit(s, 9, at63[0], 0, 63);
    expect_hit(s, 9, at62[2], 0, 622);
    expect_hit(s, 9, at0[0], 0, 100);
    expect_hit(s, 9, at63[1], 0, 631);
    expect_hit(s, 9, at1[0], 0, 101);

    /* Remove at0 (slot 1): at63[1] (home 63, slot 2) may move back to 1,
     * at1 (home 1, slot 3) then moves to 2. */
    assert_int_equal(ec_index_remove(s, 9, at0[0], NULL, NULL), 0);
    assert_int_equal(slot_of(s, 9, at63[1]), 1);
    assert_int_equal(slot_of(s, 9, at1[0]), 2);
    /* Remove at62[2] (slot 0): at63[1] (home 63) moves to 0; at1 (home 1)
     * moves to 1, its home. */
    assert_int_equal(ec_index_remove(s, 9, at62[2], NULL, NULL), 0);
    assert_int_equal(slot_of(s, 9, at63[1]), 0);
    assert_int_equal(slot_of(s, 9, at1[0]), 1);
    /* Remove at63[1] (slot 0): at1 sits at its home and stays. */
    assert_int_equal(ec_index_remove(s, 9, at63[1], NULL, NULL), 0);
    assert_int_equal(slot_of(s, 9, at1[0]), 1);
    assert_int_equal(key_of(s, 0), 0);
    expect_hit(s, 9, at62[1], 0, 621);
    expect_hit(s, 9, at63[0], 0, 63);
    expect_hit(s, 9, at1[0], 0, 101);
    assert_int_equal(ec_index_count(s), 3);
    fake_free(f);
}

static void test_seq(void **state)
{
    fake *f = fake_new(64);
    ec_segment *s = &f->seg;
    ec_index_ref ref, ref2, refb;
    uint32_t a = 0, b;
    uint64_t ha;
    int64_t slot;
    (void)state;

    assert_int_equal(ec_index_insert(s, 3, 1, 8192, 4096), 0);
    assert_int_equal(ec_index_lookup(s, 3, 1, &ref), 1);
    assert_true(ec_index_still_valid(&ref));
    assert_true(ec_index_still_valid(&ref)); /* reading changes nothing */
    slot = slot_of(s, 3, 1);
    assert_ptr_equal(ref.entry, &s->index[slot]);
    assert_true(ref.seq >= 2);

    /* Remove bumps it: a copy made under ref must be discarded. */
    assert_int_equal(ec_index_remove(s, 3, 1, NULL, NULL), 0);
    assert_false(ec_index_still_valid(&ref));
    assert_true(seq_of(s, (uint64_t)slot) >= ref.seq + 2);
    assert_int_equal(seq_of(s, (uint64_t)slot) & 1, 0);

    /* Reinsert the same key with the same extent in the same slot: the old
     * reference stays invalid (sequences only grow: no ABA). */
    assert_int_equal(ec_index_insert(s, 3, 1, 8192, 4096), 0);
    assert_int_equal(slot_of(s, 3, 1), slot);
    assert_false(ec_index_still_valid(&ref));
    assert_int_equal(ec_index_lookup(s, 3, 1, &ref2), 1);
    assert_true(ref2.seq > ref.seq);
    assert_true(ec_index_still_valid(&ref2));

    /* A move by backward shift invalidates a reference to the moved key. */
    assert_int_equal(ec_index_remove(s, 3, 1, NULL, NULL), 0);
    ha = home_of(s, 4, a);
    for (b = a + 1;; b++)
        if (home_of(s, 4, b) == ha)
            break;
    assert_int_equal(ec_index_insert(s, 4, a, 0, 1), 0);
    assert_int_equal(ec_index_insert(s, 4, b, 0, 2), 0);
    assert_int_equal(slot_of(s, 4, b), (int64_t)((ha + 1) & 63));
    assert_int_equal(ec_index_lookup(s, 4, b, &refb), 1);
    assert_int_equal(ec_index_remove(s, 4, a, NULL, NULL), 0);
    assert_false(ec_index_still_valid(&refb));
    assert_int_equal(slot_of(s, 4, b), (int64_t)ha);
    expect_hit(s, 4, b, 0, 2);

    /* Clear bumps every sequence. */
    assert_int_equal(ec_index_lookup(s, 4, b, &refb), 1);
    {
        uint64_t before[64];
        for (int i = 0; i < 64; i++)
            before[i] = seq_of(s, (uint64_t)i);
        ec_index_clear(s);
        for (int i = 0; i < 64; i++) {
            assert_true(seq_of(s, (uint64_t)i) > before[i]);
            assert_int_equal(seq_of(s, (uint64_t)i) & 1, 0);
        }
    }
    assert_false(ec_index_still_valid(&refb));
    assert_int_equal(ec_index_count(s), 0);
    assert_int_equal(s->index_used, 0);
    expect_miss(s, 4, b);
    fake_free(f);
}

/* The segment is shared memory a reader must not trust: an entry that points
 * outside the data area, or is not marked resident, is a miss. */
static void test_out_of_bounds_never_returned(void **state)
{
    fake *f = fake_new(64);
    ec_segment *s = &f->seg;
    ec_index_entry *e;
    int64_t slot;
    (void)state;

    assert_int_equal(ec_index_insert(s, 5, 5, 0, 4096), 0);
    slot = slot_of(s, 5, 5);
    e = &s->index[slot];
    expect_hit(s, 5, 5, 0, 4096);

    atomic_store(&e->offset, DATA_SIZE + 4096);
    expect_miss(s, 5, 5);
    atomic_store(&e->offset, DATA_SIZE - 4096);
    atomic_store(&e->length, 4097);
    expect_miss(s, 5, 5);
    atomic_store(&e->offset, UINT64_MAX - 100);
    atomic_store(&e->length, 200); /* offset + length wraps around */
    expect_miss(s, 5, 5);
    atomic_store(&e->offset, 0);
    atomic_store(&e->length, 4096);
    atomic_store(&e->flags, 0); /* not resident */
    expect_miss(s, 5, 5);
    atomic_store(&e->flags, EC_ENTRY_RESIDENT);
    expect_hit(s, 5, 5, 0, 4096);

    /* A reader whose mapping has a smaller data area than the entry claims
     * (a client's own view of data_size) misses too. */
    s->data_size = 2048;
    expect_miss(s, 5, 5);
    s->data_size = DATA_SIZE;

    /* An entry left odd (a writer died mid-write) is a miss after a bounded
     * wait, and the next write of it repairs the sequence. */
    atomic_store(&e->seq, 5);
    expect_miss(s, 5, 5);
    assert_int_equal(ec_index_remove(s, 5, 5, NULL, NULL), 0);
    assert_int_equal(atomic_load(&e->seq) & 1, 0);
    assert_true(atomic_load(&e->seq) > 5);
    assert_int_equal(ec_index_insert(s, 5, 5, 0, 4096), 0);
    expect_hit(s, 5, 5, 0, 4096);
    fake_free(f);
}

typedef struct visit {
    unsigned n;
    uint64_t sum;
    unsigned stop_after;
} visit;

static int visit_fn(uint32_t t, uint32_t p, uint64_t off, uint32_t len, void *arg)
{
    visit *v = arg;
    v->n++;
    v->sum += t * 1000003ull + p + off + len;
    return v->stop_after && v->n == v->stop_after ? 42 : 0;
}

static void test_foreach(void **state)
{
    fake *f = fake_new(64);
    ec_segment *s = &f->seg;
    visit v = {0, 0, 0};
    uint64_t sum = 0;
    (void)state;

    for (uint32_t p = 0; p < 20; p++) {
        assert_int_equal(ec_index_insert(s, 2, p, p * 4096ull, p + 1), 0);
        sum += 2 * 1000003ull + p + p * 4096ull + p + 1;
    }
    assert_int_equal(ec_index_foreach(s, visit_fn, &v), 0);
    assert_int_equal(v.n, 20);
    assert_int_equal(v.sum, sum);
    v = (visit){0, 0, 5};
    assert_int_equal(ec_index_foreach(s, visit_fn, &v), 42);
    assert_int_equal(v.n, 5);
    assert_int_equal(ec_index_foreach(s, NULL, NULL), EC_EINVAL);
    fake_free(f);
}

/* Random inserts and removes against a reference: after every operation the
 * affected keys, and periodically all keys, are where the reference says. */
static uint64_t rng = 12345;

static uint64_t rnd(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void stress(uint64_t slots, unsigned nkeys, unsigned ops)
{
    fake *f = fake_new(slots);
    ec_segment *s = &f->seg;
    bool *present = calloc(nkeys, sizeof(bool));
    uint64_t *offs = calloc(nkeys, sizeof(uint64_t));
    unsigned count = 0, full = 0;

    assert_non_null(present);
    assert_non_null(offs);
    (void)full;
    for (unsigned op = 0; op < ops; op++) {
        unsigned k = (unsigned)(rnd() % nkeys);
        uint32_t t = 1 + k % 3, p = k / 3 * 7919;

        if (present[k] && rnd() % 10 >= 3) {
            expect_hit(s, t, p, offs[k], k > 4096 ? 4096 : k);
        } else if (present[k]) {
            uint64_t off;
            uint32_t len;
            assert_int_equal(ec_index_remove(s, t, p, &off, &len), 0);
            assert_int_equal(off, offs[k]);
            assert_int_equal(len, k);
            present[k] = false;
            count--;
            expect_miss(s, t, p);
        } else {
            uint64_t off = (rnd() % (DATA_SIZE / 4096)) * 4096;
            int rc = ec_index_insert(s, t, p, off, k > 4096 ? 4096 : k);
            if (rc == EC_ENOSPC) {
                full++;
                assert_true((count + 1) * 10 >= slots * 9);
                continue;
            }
            assert_int_equal(rc, 0);
            assert_int_equal(ec_index_insert(s, t, p, off, k), EC_EEXIST);
            present[k] = true;
            offs[k] = off;
            count++;
        }
        if (op % 211 == 0 || op == ops - 1) {
            assert_int_equal(ec_index_count(s), count);
            assert_int_equal(s->index_used, count);
            for (unsigned j = 0; j < nkeys; j++) {
                uint32_t tj = 1 + j % 3, pj = j / 3 * 7919;
                if (present[j])
                    expect_hit(s, tj, pj, offs[j], j > 4096 ? 4096 : j);
                else
                    expect_miss(s, tj, pj);
            }
        }
    }
    printf("stress %llu slots, %u keys: %u entries at the end, %u inserts refused (full)\n",
           (unsigned long long)slots, nkeys, count, full);
    free(present);
    free(offs);
    fake_free(f);
}

static void test_stress_small(void **state)
{
    (void)state;
    stress(64, 80, 40000); /* mostly near-full: long chains, wrap-around */
}

static void test_stress_large(void **state)
{
    (void)state;
    stress(1024, 1500, 60000);
}

/* The index on a real segment: the daemon writes, a read-only mapping of
 * the same segment (as a client gets it) reads, and cannot write. */
static void test_real_segment(void **state)
{
    char *dir = ect_tmpdir("ec-index");
    ec_segment seg, ro;
    ec_index_ref ref;
    void *kept;
    int fd, kfd;
    (void)state;

    assert_int_equal(ec_segment_create_geometry(4u << 20, 0, EC_ITEM_BYTES_DEFAULT, &seg), 0);
    /* the keeper's mapping, for the warm restart below */
    kfd = fcntl(seg.fd, F_DUPFD_CLOEXEC, 0);
    kept = mmap(NULL, 4u << 20, PROT_READ | PROT_WRITE, MAP_SHARED, kfd, 0);
    assert_true(kept != MAP_FAILED);
    assert_int_equal(ec_segment_seal(&seg), 0);
    assert_int_equal(seg.index_used, 0);
    assert_int_equal(ec_segment_open_readonly(&seg, &fd), 0);
    assert_int_equal(ec_segment_map_fd(fd, &ro), 0);
    close(fd);
    assert_false(ro.writable);

    memset(seg.data + 8192, 0x5a, 4096);
    assert_int_equal(ec_index_insert(&seg, 11, 2, 8192, 4096), 0);
    assert_int_equal(ec_index_lookup(&ro, 11, 2, &ref), 1);
    assert_int_equal(ref.offset, 8192);
    assert_int_equal(ro.data[ref.offset + 100], 0x5a);
    assert_true(ec_index_still_valid(&ref));
    assert_int_equal(ec_index_insert(&ro, 11, 3, 0, 4096), EC_EPERM);
    assert_int_equal(ec_index_remove(&ro, 11, 2, NULL, NULL), EC_EPERM);
    assert_int_equal(ec_index_remove(&seg, 11, 2, NULL, NULL), 0);
    assert_false(ec_index_still_valid(&ref));
    assert_int_equal(ec_index_lookup(&ro, 11, 2, &ref), 0);

    ec_segment_close(&ro);

    /* Warm restart: the entries survive, the private count is recomputed. */
    assert_int_equal(ec_index_insert(&seg, 11, 4, 0, 4096), 0);
    assert_int_equal(ec_index_insert(&seg, 12, 4, 4096, 4096), 0);
    ec_segment_close(&seg);
    assert_int_equal(ec_segment_attach(kfd, kept, 4u << 20, &seg), 0);
    assert_int_equal(seg.index_used, EC_INDEX_USED_UNKNOWN);
    assert_int_equal(ec_index_lookup(&seg, 12, 4, &ref), 1);
    assert_int_equal(ref.offset, 4096);
    assert_int_equal(ec_index_insert(&seg, 13, 4, 8192, 4096), 0);
    assert_int_equal(seg.index_used, 3);
    assert_int_equal(ec_index_remove(&seg, 11, 4, NULL, NULL), 0);
    assert_int_equal(seg.index_used, 2);
    ec_segment_close(&seg);
    ect_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_insert_refused),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_collisions_wrap),
        cmocka_unit_test(test_seq),
        cmocka_unit_test(test_out_of_bounds_never_returned),
        cmocka_unit_test(test_foreach),
        cmocka_unit_test(test_stress_small),
        cmocka_unit_test(test_stress_large),
        cmocka_unit_test(test_real_segment),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
