/*
 * results_impl.h - private to core/results*.c: the cache manager's state.
 * The interface is core/results.h.
 *
 *   results.c        namespaces, bindings, leases, puts, purges, listing
 *   results_store.c  where a namespace's records live: the engine's item
 *                    store, or the private arena of its owner's uid
 *
 * Everything runs on the server thread.
 */
#ifndef EC_CORE_RESULTS_IMPL_H
#define EC_CORE_RESULTS_IMPL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/hist.h"
#include "common/u64map.h"
#include "core/catalog.h"
#include "core/itemstore.h"
#include "core/results.h"
#include "shm/extent.h"
#include "shm/segment.h"

/* Where records are stored. */
struct rstore {
    ec_segment *seg;            /* the segment its item index and slabs are in */
    ec_itemstore *items;
    bool arena;                 /* a private arena (else the engine's store) */
    uid_t uid;                  /* arena: whose */
    uint32_t users;             /* arena: private namespaces in it */
    ec_segment own;             /* arena: its segment */
    ec_extents *ext;            /* arena: its data area's allocator */
};

/* A namespace. */
struct rns {
    bool live;
    ec_catalog_ns cat;          /* its definition, as the catalog keeps it */
    struct rstore *store;
    uint64_t items, negative_items, bytes;
    uint64_t hits, misses, negative_hits, stale;  /* clients' counts */
    uint64_t leases_granted, leases_waited, leases_passed, early_refreshes;
    uint64_t computing, computing_peak, limited;
    uint64_t puts, negative_puts, evictions, purged, invalidations;
    /* "No result" entries, oldest first: a ring of item keys (entries whose
     * key is no longer in the manager's negative set are skipped). */
    uint64_t *negq;
    size_t negq_cap, negq_head, negq_len;
};

/* A lease: who computes a key, until when. */
struct lease {
    uint64_t item_key;
    uint64_t owner;
    int64_t deadline_ns;        /* CLOCK_MONOTONIC */
    int64_t granted_ns;         /* CLOCK_MONOTONIC: when it was granted */
    uint32_t slot;
};

struct ec_resmgr {
    ec_engine *e;
    ec_catalog *cat;
    ec_segment *seg;            /* the engine's: the ns[] table is in its header */
    uint64_t arena_bytes;
    struct ec_keeper *keeper;   /* NULL: arenas are not kept across restarts */
    struct rstore main;
    ec_u64map arenas;           /* uid + 1 -> struct rstore * */
    struct rns ns[EC_NS_MAX];
    ec_u64map leases;           /* item key -> struct lease * */
    ec_u64map negative;         /* item key -> (void *)1: a "no result" entry */
    bool removing;              /* the manager itself is taking items out */
    uint64_t cat_changes;       /* ec_catalog_changes() at the last binding check */
    uint64_t rng;
    uint8_t *scratch;           /* a value read from a file (RES_PUT with fd) */
    struct {
        uint64_t arenas_created, dropped_at_open, lease_timeouts, owner_leases_passed;
        uint64_t rebinds, put_errors;
    } st;
    ec_hist recompute_seconds;  /* a lease's grant to its holder's put */
};

/* results_store.c */
int rs_main_init(ec_resmgr *m);
/* The uid's arena, created on first use. */
int rs_arena_get(ec_resmgr *m, uid_t uid, struct rstore **out);
/* A read-only descriptor of an arena, to hand to a client. */
int rs_arena_fd(struct rstore *st, int *fd);
/* A private namespace left the arena; the arena goes with its last one. */
void rs_arena_unref(ec_resmgr *m, struct rstore *st);
void rs_free_all(ec_resmgr *m);
/* Arenas the keeper kept that no namespace claimed: let go. */
void rs_keeper_leftovers(ec_resmgr *m);
/* The manager's call when one of a store's result items leaves it. */
void rs_unpublished(void *arg, uint64_t key, uint64_t bytes);

#endif
