/*
 * baseline_floor.c - the two in-process floors embcache-bench measures
 * embcache against (see baseline.h):
 *
 *   flat     all rows in one malloc'd array, memcpy per row: the limit of
 *            the machine for a gather (no lookup at all);
 *   hashmap  an open-addressing hash map (linear probing, load <= 0.5)
 *            from row id to a separately malloc'd row, memcpy per row: what
 *            a user would write by hand.
 */
#include <stdlib.h>
#include <string.h>

#include "bench/baseline.h"

struct ec_baseline {
    /* flat */
    unsigned char *data;
    /* hashmap */
    int64_t *keys;     /* -1: empty */
    void **vals;
    uint64_t mask;
    /* both */
    uint64_t rows;
    size_t row_bytes;
};

static int floor_open(ec_baseline **out, char *note, size_t note_len)
{
    (void)note;
    (void)note_len;
    *out = calloc(1, sizeof(**out));
    return *out ? 0 : -1;
}

/* ---- flat ---- */

static int flat_load(ec_baseline *b, const void *data, uint64_t rows, size_t row_bytes)
{
    free(b->data);
    b->data = malloc(rows * row_bytes);
    if (!b->data)
        return -1;
    memcpy(b->data, data, rows * row_bytes);
    b->rows = rows;
    b->row_bytes = row_bytes;
    return 0;
}

static int flat_gather(ec_baseline *b, const int64_t *ids, size_t n, void *out)
{
    unsigned char *o = out;
    const size_t rb = b->row_bytes;

    for (size_t i = 0; i < n; i++) {
        if ((uint64_t)ids[i] >= b->rows)
            return -1;
        memcpy(o + i * rb, b->data + (uint64_t)ids[i] * rb, rb);
    }
    return 0;
}

static void flat_close(ec_baseline *b)
{
    if (b) {
        free(b->data);
        free(b);
    }
}

/* ---- hashmap ---- */

static uint64_t hash64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static void hm_free(ec_baseline *b)
{
    if (b->vals)
        for (uint64_t i = 0; i <= b->mask; i++)
            free(b->vals[i]);
    free(b->vals);
    free(b->keys);
    b->vals = NULL;
    b->keys = NULL;
}

static int hm_load(ec_baseline *b, const void *data, uint64_t rows, size_t row_bytes)
{
    uint64_t cap = 16;

    hm_free(b);
    while (cap < rows * 2)
        cap <<= 1;
    b->keys = malloc(cap * sizeof(*b->keys));
    b->vals = calloc(cap, sizeof(*b->vals));
    if (!b->keys || !b->vals)
        return -1;
    memset(b->keys, 0xff, cap * sizeof(*b->keys));
    b->mask = cap - 1;
    b->rows = rows;
    b->row_bytes = row_bytes;
    for (uint64_t r = 0; r < rows; r++) {
        uint64_t i = hash64(r) & b->mask;
        void *v = malloc(row_bytes);
        if (!v)
            return -1;
        memcpy(v, (const unsigned char *)data + r * row_bytes, row_bytes);
        while (b->keys[i] != -1)
            i = (i + 1) & b->mask;
        b->keys[i] = (int64_t)r;
        b->vals[i] = v;
    }
    return 0;
}

static int hm_gather(ec_baseline *b, const int64_t *ids, size_t n, void *out)
{
    unsigned char *o = out;
    const size_t rb = b->row_bytes;

    for (size_t k = 0; k < n; k++) {
        uint64_t i = hash64((uint64_t)ids[k]) & b->mask;
        while (b->keys[i] != ids[k]) {
            if (b->keys[i] == -1)
                return -1; /* not there */
            i = (i + 1) & b->mask;
        }
        memcpy(o + k * rb, b->vals[i], rb);
    }
    return 0;
}

static void hm_close(ec_baseline *b)
{
    if (b) {
        hm_free(b);
        free(b);
    }
}

const ec_baseline_ops ec_baseline_flat_ops = {
    .name = "flat", .open = floor_open, .load = flat_load, .gather = flat_gather,
    .close = flat_close,
};

const ec_baseline_ops ec_baseline_hashmap_ops = {
    .name = "hashmap", .open = floor_open, .load = hm_load, .gather = hm_gather,
    .close = hm_close,
};
