/*
 * u64map.c - open-addressing u64 -> pointer map (see u64map.h).
 */
#include "u64map.h"

#include <stdlib.h>

#include "common/hash.h"
#include "embcache.h"

static size_t slot_of(uint64_t key, size_t mask)
{
    return (size_t)ec_mix64(key) & mask;
}

void *ec_u64map_get(const ec_u64map *m, uint64_t key)
{
    if (!m->cap || !key)
        return NULL;
    for (size_t i = slot_of(key, m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == key)
            return m->vals[i];
        if (!m->keys[i])
            return NULL;
    }
}

static int grow(ec_u64map *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    uint64_t *keys = calloc(cap, sizeof(*keys));
    void **vals = calloc(cap, sizeof(*vals));

    if (!keys || !vals) {
        free(keys);
        free(vals);
        return EC_ENOMEM;
    }
    for (size_t j = 0; j < m->cap; j++) {
        if (!m->keys[j])
            continue;
        size_t i = slot_of(m->keys[j], cap - 1);
        while (keys[i])
            i = (i + 1) & (cap - 1);
        keys[i] = m->keys[j];
        vals[i] = m->vals[j];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return 0;
}

int ec_u64map_put(ec_u64map *m, uint64_t key, void *val)
{
    size_t i;

    if (!key)
        return EC_EINVAL;
    if ((m->len + 1) * 2 > m->cap && grow(m))
        return EC_ENOMEM;
    for (i = slot_of(key, m->cap - 1); m->keys[i]; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == key) {
            m->vals[i] = val;
            return 0;
        }
    }
    m->keys[i] = key;
    m->vals[i] = val;
    m->len++;
    return 0;
}

void *ec_u64map_del(ec_u64map *m, uint64_t key)
{
    size_t mask = m->cap - 1, i, j;
    void *val;

    if (!m->cap || !key)
        return NULL;
    for (i = slot_of(key, mask); m->keys[i] != key; i = (i + 1) & mask)
        if (!m->keys[i])
            return NULL;
    val = m->vals[i];
    /* Backward shift: pull later members of the probe run into the hole. */
    for (j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
        size_t home = slot_of(m->keys[j], mask);
        if (((j - home) & mask) >= ((j - i) & mask)) {
            m->keys[i] = m->keys[j];
            m->vals[i] = m->vals[j];
            i = j;
        }
    }
    m->keys[i] = 0;
    m->vals[i] = NULL;
    m->len--;
    return val;
}

void ec_u64map_free(ec_u64map *m)
{
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->len = 0;
}
