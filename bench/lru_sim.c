/*
 * lru_sim.c - the exact LRU simulator of lru_sim.h.
 *
 * Nodes live in three parallel arrays (key, prev, next) indexed by a
 * 32-bit node number; the list runs from head (most recent) to tail (least
 * recent). The hash table holds node number + 1 (0: empty) and is kept at
 * most half full, so linear probing stays short. Invariants:
 *   1. every node in [0, n) is on the list exactly once and in the table
 *      exactly once, under its key; n <= capacity;
 *   2. no run of occupied slots between a key's home slot and its slot
 *      contains an empty slot (backward-shift deletion keeps this).
 */
#include "bench/lru_sim.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define NIL UINT32_MAX

struct lru_sim {
    uint64_t capacity;
    uint32_t n, cap_alloc;     /* nodes in use, nodes allocated */
    uint32_t head, tail;
    uint64_t *key;
    uint32_t *prev, *next;
    uint32_t *table;           /* node + 1, 0 empty */
    uint64_t mask;             /* table size - 1 */
};

static uint64_t hash64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

/* The slot holding key, or the empty slot where it would go. */
static uint64_t find_slot(const lru_sim *s, uint64_t key)
{
    uint64_t i = hash64(key) & s->mask;
    while (s->table[i] && s->key[s->table[i] - 1] != key)
        i = (i + 1) & s->mask;
    return i;
}

static int rehash(lru_sim *s, uint64_t tsize)
{
    uint32_t *t = calloc(tsize, sizeof(*t));
    if (!t)
        return -1;
    free(s->table);
    s->table = t;
    s->mask = tsize - 1;
    for (uint32_t v = 0; v < s->n; v++)
        s->table[find_slot(s, s->key[v])] = v + 1;
    return 0;
}

/* Room for one more node (invariant: n <= capacity keeps this bounded). */
static int grow(lru_sim *s)
{
    uint64_t want = (uint64_t)s->cap_alloc * 2;
    if (want > s->capacity)
        want = s->capacity;
    if (want < 16)
        want = 16 < s->capacity ? 16 : s->capacity;
    uint64_t *k = realloc(s->key, want * sizeof(*k));
    if (!k)
        return -1;
    s->key = k;
    uint32_t *p = realloc(s->prev, want * sizeof(*p));
    if (!p)
        return -1;
    s->prev = p;
    uint32_t *q = realloc(s->next, want * sizeof(*q));
    if (!q)
        return -1;
    s->next = q;
    s->cap_alloc = (uint32_t)want;
    uint64_t tsize = s->mask + 1;
    while (tsize < want * 2)
        tsize *= 2;
    if (tsize != s->mask + 1 || !s->table)
        return rehash(s, tsize);
    return 0;
}

lru_sim *lru_sim_new(uint64_t capacity)
{
    lru_sim *s;

    if (capacity >= (1ull << 31))
        return NULL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->capacity = capacity;
    s->head = s->tail = NIL;
    s->mask = 15;
    if (rehash(s, 16)) {
        free(s);
        return NULL;
    }
    return s;
}

static void unlink_node(lru_sim *s, uint32_t v)
{
    if (s->prev[v] != NIL)
        s->next[s->prev[v]] = s->next[v];
    else
        s->head = s->next[v];
    if (s->next[v] != NIL)
        s->prev[s->next[v]] = s->prev[v];
    else
        s->tail = s->prev[v];
}

static void push_head(lru_sim *s, uint32_t v)
{
    s->prev[v] = NIL;
    s->next[v] = s->head;
    if (s->head != NIL)
        s->prev[s->head] = v;
    s->head = v;
    if (s->tail == NIL)
        s->tail = v;
}

/* Backward-shift deletion of the entry in slot i (invariant 2). */
static void delete_slot(lru_sim *s, uint64_t i)
{
    uint64_t j = i;

    for (;;) {
        j = (j + 1) & s->mask;
        if (!s->table[j])
            break;
        uint64_t k = hash64(s->key[s->table[j] - 1]) & s->mask;
        /* move j back to i unless its home k lies cyclically in (i, j] */
        bool stays = i <= j ? (k > i && k <= j) : (k > i || k <= j);
        if (!stays) {
            s->table[i] = s->table[j];
            i = j;
        }
    }
    s->table[i] = 0;
}

int lru_sim_access(lru_sim *s, uint64_t key)
{
    uint64_t slot = find_slot(s, key);
    uint32_t v;

    if (s->table[slot]) {
        v = s->table[slot] - 1;
        if (s->head != v) {
            unlink_node(s, v);
            push_head(s, v);
        }
        return 1;
    }
    if (s->capacity == 0)
        return 0;
    if (s->n < s->capacity) {
        if (s->n == s->cap_alloc) {
            if (grow(s))
                return -1;
            slot = find_slot(s, key); /* the table may have been rebuilt */
        }
        v = s->n++;
    } else {
        v = s->tail;
        unlink_node(s, v);
        delete_slot(s, find_slot(s, s->key[v]));
        slot = find_slot(s, key);
    }
    s->key[v] = key;
    s->table[slot] = v + 1;
    push_head(s, v);
    assert(s->n <= s->capacity);
    return 0;
}

int lru_sim_contains(const lru_sim *s, uint64_t key)
{
    return s->table[find_slot(s, key)] != 0;
}

uint64_t lru_sim_size(const lru_sim *s)
{
    return s->n;
}

int64_t lru_sim_oldest(const lru_sim *s)
{
    return s->tail == NIL ? -1 : (int64_t)s->key[s->tail];
}

void lru_sim_free(lru_sim *s)
{
    if (!s)
        return;
    free(s->key);
    free(s->prev);
    free(s->next);
    free(s->table);
    free(s);
}
