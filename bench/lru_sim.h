/*
 * lru_sim.h - an exact LRU cache simulator over 64-bit keys, for
 * embcache-bench: what a perfect least-recently-used cache of a given
 * number of entries would hit on the same access stream a system was fed
 * (the mixed and large scenarios run it by row, by 4 KiB page and by
 * partition at the same bytes as embcache's budget).
 *
 * A hash map (open addressing, linear probing, backward-shift deletion)
 * from key to node, and a doubly linked list of nodes in recency order:
 * O(1) expected per access. Memory grows with the distinct keys seen, up to
 * the capacity, so a large capacity fed a short stream costs little.
 * Single-threaded; used by bench/ only.
 */
#ifndef EC_BENCH_LRU_SIM_H
#define EC_BENCH_LRU_SIM_H

#include <stdint.h>

typedef struct lru_sim lru_sim;

/* A cache of `capacity` entries (0: every access misses). NULL when out of
 * memory or capacity >= 2^31. */
lru_sim *lru_sim_new(uint64_t capacity);

/* Access key: 1 on a hit (the entry becomes the most recent), 0 on a miss
 * (the key is inserted as the most recent, evicting the least recent entry
 * when full), -1 when out of memory (the simulation is then invalid). */
int lru_sim_access(lru_sim *s, uint64_t key);

/* Whether key is cached, without changing the order. */
int lru_sim_contains(const lru_sim *s, uint64_t key);

/* Entries cached now. */
uint64_t lru_sim_size(const lru_sim *s);

/* The least recent key, or -1 when empty (for tests). */
int64_t lru_sim_oldest(const lru_sim *s);

void lru_sim_free(lru_sim *s);

#endif
