/*
 * u64map.h - a small open-addressing map from non-zero u64 keys to pointers,
 * for the daemon's private bookkeeping (in-flight reads, resident units,
 * tensors, connections). Linear probing, backward-shift deletion, grows at
 * load 0.5. Not thread-safe: each map belongs to one thread.
 */
#ifndef EC_COMMON_U64MAP_H
#define EC_COMMON_U64MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct ec_u64map {
    uint64_t *keys; /* 0 = empty */
    void **vals;
    size_t cap;     /* power of two, or 0 */
    size_t len;
} ec_u64map;

/* NULL when absent. key must not be 0. */
void *ec_u64map_get(const ec_u64map *m, uint64_t key);
/* Insert or replace. 0 or EC_ENOMEM. */
int ec_u64map_put(ec_u64map *m, uint64_t key, void *val);
/* Remove; returns the value or NULL. */
void *ec_u64map_del(ec_u64map *m, uint64_t key);
void ec_u64map_free(ec_u64map *m);

/* Iterate: for (size_t i = 0; i < m->cap; i++) if (m->keys[i]) ... */

#endif
