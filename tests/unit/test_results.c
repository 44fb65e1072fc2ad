/*
 * test_results.c - result records in a real item store (shm/results.h):
 * what is written is read back byte for byte; freshness, staleness and the
 * namespace's generation decide a hit; a key that shares an item key with
 * another is never a false hit; sizes read from the segment are checked;
 * size classes stay within 12.5% of what a record needs.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "common/err.h"
#include "core/itemstore.h"
#include "shm/extent.h"
#include "shm/items.h"
#include "shm/layout.h"
#include "shm/results.h"
#include "shm/segment.h"

#define SALT 0x5eed5eed12345678ull
#define NS 3u
#define GEN 7u
#define SEC 1000000000ll

struct env {
    ec_segment seg;
    ec_extents *ext;
    ec_itemstore *s;
};

static int slab_alloc(void *arg, bool may_evict, uint64_t *off)
{
    struct env *v = arg;

    (void)may_evict;
    return ec_extent_alloc_aligned(v->ext, EC_SLAB_BYTES, EC_SLAB_BYTES, off) ? EC_ENOSPC : 0;
}

static void slab_free(void *arg, uint64_t off)
{
    struct env *v = arg;

    ec_extent_release(v->ext, off, EC_SLAB_BYTES);
}

static bool valid(void *arg, uint64_t key, uint64_t value_bytes)
{
    (void)arg;
    (void)value_bytes;
    return EC_ITEM_KEY_KIND(key) == EC_ITEM_KIND_RESULT;
}

static void env_new(struct env *v)
{
    ec_itemstore_env env = {.slab_alloc = slab_alloc, .slab_free = slab_free, .valid = valid,
                            .arg = v};

    memset(v, 0, sizeof(*v));
    assert_int_equal(ec_segment_create_geometry(64u << 20, 0, 256, &v->seg), 0);
    assert_int_equal(ec_segment_seal(&v->seg), 0);
    assert_int_equal(ec_extents_new(v->seg.data_size, &v->ext), 0);
    assert_int_equal(ec_items_open(&v->seg, &env, &v->s), 0);
}

static void env_free(struct env *v)
{
    ec_items_close(v->s);
    ec_extents_free(v->ext);
    ec_segment_close(&v->seg);
}

/* The daemon's side: a record for (ns, gen, key) -> value, stored under k
 * (normally ec_result_key_of(key); a test may pass another key's). */
static int put_as(struct env *v, const ec_result_key *k, uint32_t ns, uint32_t gen,
                  const void *key, size_t klen, const void *val, size_t vlen, int64_t fresh,
                  int64_t stale, uint32_t flags)
{
    ec_result_hdr h = {.hash_hi = k->hash_hi, .ns = ns, .ns_gen = gen,
                       .key_len = (uint32_t)klen, .value_len = (uint32_t)vlen,
                       .fresh_until_ns = fresh, .stale_until_ns = stale, .flags = flags};
    uint64_t need = ec_result_record_bytes(klen, vlen), off;
    int rc;

    assert_true(need > 0);
    rc = ec_items_reserve(v->s, ec_result_class_bytes(need), &off);
    if (rc)
        return rc;
    memcpy(v->seg.data + off, &k->item_key, 8);
    ec_result_write(v->seg.data + off + 8, &h, key, val);
    return ec_items_publish(v->s, k->item_key, off);
}

static int put(struct env *v, const void *key, size_t klen, const void *val, size_t vlen,
               int64_t fresh, int64_t stale)
{
    ec_result_key k;

    ec_result_key_of(SALT, NS, key, klen, &k);
    return put_as(v, &k, NS, GEN, key, klen, val, vlen, fresh, stale, 0);
}

static int get(struct env *v, uint32_t ns, uint32_t gen, const void *key, size_t klen,
               int64_t now, void *out, size_t cap, ec_result_hdr *h)
{
    ec_result_key k;

    ec_result_key_of(SALT, ns, key, klen, &k);
    return ec_result_read(&v->seg, &k, ns, gen, key, klen, now, out, cap, h);
}

static void fill(uint64_t seed, uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(seed * 2654435761u + i * 31);
}

/* Records of many key and value sizes come back byte for byte. */
static void test_round_trip(void **state)
{
    static uint8_t val[70000], out[70000];
    struct env v;
    (void)state;

    env_new(&v);
    for (unsigned i = 0; i < 300; i++) {
        char key[64];
        size_t vlen = (size_t)(i * 233) % sizeof(val), klen;
        klen = (size_t)snprintf(key, sizeof(key), "request-%u-%s", i, i % 2 ? "odd" : "");
        fill(i, val, vlen);
        assert_int_equal(put(&v, key, klen, val, vlen, 10 * SEC, 20 * SEC), 0);
    }
    for (unsigned i = 0; i < 300; i++) {
        char key[64];
        size_t vlen = (size_t)(i * 233) % sizeof(val), klen;
        ec_result_hdr h;
        klen = (size_t)snprintf(key, sizeof(key), "request-%u-%s", i, i % 2 ? "odd" : "");
        fill(i, val, vlen);
        memset(out, 0xee, sizeof(out));
        assert_int_equal(get(&v, NS, GEN, key, klen, 1 * SEC, out, sizeof(out), &h),
                         EC_RESULT_FRESH);
        assert_int_equal(h.value_len, vlen);
        assert_memory_equal(out, val, vlen);
    }
    /* a key never put, and a prefix of one that was */
    assert_int_equal(get(&v, NS, GEN, "request-7", 9, SEC, out, sizeof(out), NULL),
                     EC_RESULT_MISS);
    assert_int_equal(get(&v, NS, GEN, "nothing", 7, SEC, out, sizeof(out), NULL),
                     EC_RESULT_MISS);
    env_free(&v);
}

/* Fresh, then stale, then gone; another generation or namespace misses. */
static void test_time_and_generation(void **state)
{
    struct env v;
    ec_result_hdr h;
    uint8_t out[16];
    (void)state;

    env_new(&v);
    assert_int_equal(put(&v, "k", 1, "value", 5, 10 * SEC, 15 * SEC), 0);
    assert_int_equal(get(&v, NS, GEN, "k", 1, 10 * SEC - 1, out, sizeof(out), &h),
                     EC_RESULT_FRESH);
    assert_int_equal(get(&v, NS, GEN, "k", 1, 10 * SEC, out, sizeof(out), &h),
                     EC_RESULT_STALE);
    assert_memory_equal(out, "value", 5);
    assert_int_equal(get(&v, NS, GEN, "k", 1, 15 * SEC, out, sizeof(out), &h),
                     EC_RESULT_MISS);
    assert_int_equal(get(&v, NS, GEN + 1, "k", 1, SEC, out, sizeof(out), &h), EC_RESULT_MISS);
    assert_int_equal(get(&v, NS + 1, GEN, "k", 1, SEC, out, sizeof(out), &h), EC_RESULT_MISS);
    /* a value larger than the buffer: said, not copied */
    assert_int_equal(get(&v, NS, GEN, "k", 1, SEC, out, 4, &h), EC_ETOOBIG);
    assert_int_equal(h.value_len, 5);
    env_free(&v);
}

/* Two keys under one item key (as a 62-bit collision would put them): the
 * reader compares the whole key and the rest of the hash, never a false
 * hit; a NEGATIVE record is a hit with no bytes. */
static void test_no_false_hit(void **state)
{
    struct env v;
    ec_result_key ka, kb;
    ec_result_hdr h;
    uint8_t out[16];
    (void)state;

    env_new(&v);
    ec_result_key_of(SALT, NS, "alpha", 5, &ka);
    ec_result_key_of(SALT, NS, "bravo", 5, &kb);
    assert_true(ka.item_key != kb.item_key);
    /* "alpha" stored where "bravo" would be looked up, with bravo's hash */
    assert_int_equal(put_as(&v, &kb, NS, GEN, "alpha", 5, "AAAA", 4, 10 * SEC, 10 * SEC, 0), 0);
    assert_int_equal(ec_result_read(&v.seg, &kb, NS, GEN, "bravo", 5, SEC, out, sizeof(out), &h),
                     EC_RESULT_MISS);
    /* the right key bytes but another hash_hi: not trusted */
    {
        ec_result_key wrong = kb;
        wrong.hash_hi ^= 1;
        assert_int_equal(
            ec_result_read(&v.seg, &wrong, NS, GEN, "alpha", 5, SEC, out, sizeof(out), &h),
            EC_RESULT_MISS);
    }
    /* a NEGATIVE answer */
    assert_int_equal(put_as(&v, &ka, NS, GEN, "alpha", 5, NULL, 0, 10 * SEC, 10 * SEC,
                            EC_RESULT_NEGATIVE), 0);
    assert_int_equal(ec_result_read(&v.seg, &ka, NS, GEN, "alpha", 5, SEC, out, sizeof(out), &h),
                     EC_RESULT_FRESH);
    assert_true(h.flags & EC_RESULT_NEGATIVE);
    assert_int_equal(h.value_len, 0);
    env_free(&v);
}

/* Lengths in a record that do not fit its item are refused, not used. */
static void test_bad_sizes(void **state)
{
    struct env v;
    ec_result_key k;
    ec_item_ref ref;
    ec_result_hdr *h;
    uint8_t out[64];
    (void)state;

    env_new(&v);
    assert_int_equal(put(&v, "key", 3, "v", 1, 10 * SEC, 10 * SEC), 0);
    ec_result_key_of(SALT, NS, "key", 3, &k);
    assert_int_equal(ec_item_lookup(&v.seg, k.item_key, sizeof(ec_result_hdr), &ref), 1);
    h = (ec_result_hdr *)(void *)(v.seg.data + ref.off + 8);
    h->value_len = 1u << 30; /* as a corrupted record would say */
    assert_int_equal(get(&v, NS, GEN, "key", 3, SEC, out, sizeof(out), NULL), EC_RESULT_MISS);
    h->value_len = 1;
    h->key_len = 1u << 20;
    assert_int_equal(get(&v, NS, GEN, "key", 3, SEC, out, sizeof(out), NULL), EC_RESULT_MISS);
    h->key_len = 3;
    assert_int_equal(get(&v, NS, GEN, "key", 3, SEC, out, sizeof(out), NULL), EC_RESULT_FRESH);
    assert_int_equal(ec_result_record_bytes(EC_RESULT_KEY_MAX + 1, 1), 0);
    assert_int_equal(ec_result_record_bytes(1, EC_SLAB_BYTES), 0);
    env_free(&v);
}

/* Classes: never below the need, at most 12.5% above it, at most 8 per
 * doubling, and the largest is what an item holds. */
static void test_classes(void **state)
{
    uint64_t prev = 0, classes = 0, max = EC_SLAB_BYTES - EC_SLAB_HEADER - 8;
    (void)state;

    assert_int_equal(ec_result_class_bytes(0), 0);
    assert_int_equal(ec_result_class_bytes(max + 1), 0);
    assert_int_equal(ec_result_class_bytes(max), max);
    for (uint64_t need = 1; need <= max; need += need < 4096 ? 1 : 97) {
        uint64_t c = ec_result_class_bytes(need);
        assert_true(c >= need);
        assert_true(c % 8 == 0 || c == max);
        if (need > 128)
            assert_true(c * 8 <= need * 9 + 8 * 16);
        if (c != prev)
            classes++;
        prev = c;
    }
    printf("%llu classes for records of 1 byte to 1 MiB\n", (unsigned long long)classes);
    assert_true(classes <= 8 * 14 + 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),  cmocka_unit_test(test_time_and_generation),
        cmocka_unit_test(test_no_false_hit), cmocka_unit_test(test_bad_sizes),
        cmocka_unit_test(test_classes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
