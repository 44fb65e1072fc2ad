/*
 * results_impl.h - private to core/results*.c: the cache manager's state.
 * The interface is core/results.h.
 *
 *   results.c        namespaces, bindings, leases, puts, purges, listing
 *   results_store.c  where a namespace's records live: the engine's item
 *                    store, or the private arena of its owner's uid
 *   results_remote.c remote namespaces: their values and leases in the
 *                    remote tier's cluster
 *
 * Everything runs on the server thread (results_remote.c's cluster calls
 * run on its pool's workers, on copies).
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

/* A lease of a remote namespace, as the cluster sees it (results_remote.c). */
enum {
    RL_LOCAL = 0,               /* local only (not remote, or the cluster failed) */
    RL_PENDING,                 /* owner's request waits for the cluster's answer */
    RL_WAIT,                    /* another host holds the cluster lease: the daemon
                                 * (owner 0) holds this one and polls for the value */
    RL_HELD,                    /* owner holds the cluster lease too (token, lkey) */
};

/* A lease: who computes a key, until when. */
struct lease {
    uint64_t item_key;
    uint64_t owner;             /* a connection; 0: the daemon (RL_WAIT) */
    int64_t deadline_ns;        /* CLOCK_MONOTONIC */
    int64_t granted_ns;         /* CLOCK_MONOTONIC: when it was granted */
    uint32_t slot;
    uint8_t remote;             /* RL_* */
    bool uncounted;             /* not in its namespace's computing count */
    uint64_t serial;            /* unique per daemon: a job's lease is still this one */
    char *lkey;                 /* RL_HELD: the cluster lease key (malloc'd) */
    size_t lkey_len;
    char token[33];             /* RL_HELD: what the cluster lease key holds */
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
    uint64_t lease_serial;
    ec_resmgr_answer_fn answer; /* deferred lease answers */
    void *answer_arg;
    struct rremote *rr;         /* results_remote.c; NULL without --remote */
};

/* results.c, for results_remote.c */
struct rns *rm_ns_at(ec_resmgr *m, uint32_t slot);
void rm_lease_end(ec_resmgr *m, struct lease *l);
void rm_wake(ec_resmgr *m, uint32_t slot);
/* What is stored under key now (EC_RESULT_MISS/FRESH/STALE). */
int rm_peek(ec_resmgr *m, struct rns *ns, const void *key, size_t key_len);

/* results_remote.c */
int rr_open(ec_resmgr *m, const char *url);
void rr_close(ec_resmgr *m);
/* A miss of remote namespace ns that would get lease l (just granted to
 * owner, RL_PENDING): ask the cluster; the answer goes to (owner, token).
 * An early refresh (EC_RES_EARLY) gives fresh_left_ns, how long the value
 * here stays fresh: only a newer value in the cluster counts as found.
 * 0, or an error (then l is a plain local lease). */
int rr_ask(ec_resmgr *m, struct rns *ns, struct lease *l, const void *key, size_t key_len,
           uint32_t flags, int64_t fresh_left_ns, uint64_t owner, uint64_t token);
/* Whether a cluster request for item_key is under way (then a new miss
 * waits for it: one request per key at a time). */
bool rr_busy(ec_resmgr *m, uint64_t item_key);
/* A value was stored by a client in remote namespace ns: send it to the
 * cluster (then release l's cluster lease, when l is RL_HELD: its token is
 * taken, l becomes RL_LOCAL). fresh_ns: how long it is fresh. */
void rr_publish(ec_resmgr *m, struct rns *ns, const void *key, size_t key_len,
                const ec_res_put *v, const void *value, int64_t fresh_ns, struct lease *l);
/* A single key was purged from remote namespace ns: delete it there too. */
void rr_purge(ec_resmgr *m, struct rns *ns, const void *key, size_t key_len);
/* Lease l is ending (any reason): release its cluster lease, stop polling. */
void rr_lease_ended(ec_resmgr *m, struct lease *l);
/* A connection closed: its deferred answers are dropped. */
void rr_owner_close(ec_resmgr *m, uint64_t owner);
int rr_stats(ec_resmgr *m, int (*cb)(const char *name, uint64_t v, void *arg), void *arg);

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
