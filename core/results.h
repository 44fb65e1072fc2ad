/*
 * results.h - the daemon's cache manager: namespaces of cached results,
 * their leases, and the item-store records that hold them
 * (include/embcache_results.h is what clients see of it).
 *
 * Owns: the namespaces (their definitions, kept in the catalog, and their
 * generations, published in the segment header's ns[] table), the leases
 * (who computes which key, until when), the per-namespace count and FIFO of
 * "no result" entries, and the result arenas of private namespaces
 * (results_store.c). Results of shared namespaces are items of the engine's
 * item store, under the engine's budget and eviction policy, beside rows;
 * those of private namespaces are items of their owner uid's arena, a
 * segment of the same layout that only connections of that uid are given.
 *
 * Called by the server loop (core/server_results.c) for NS_OPEN, RES_LEASE,
 * RES_PUT, RES_RELEASE, RES_PURGE, NS_LIST and NS_DROP, when a connection
 * closes (its leases pass on), on every tick (leases past their time pass
 * on; bindings are checked when the catalog changed) and after an alias
 * moved. Threads: the server thread only, but the remote tier's workers
 * (core/results_remote.c: namespaces shared across hosts through the
 * cluster, their leases there; core/rpool.h runs their cluster calls).
 */
#ifndef EC_CORE_RESULTS_H
#define EC_CORE_RESULTS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/hist.h"
#include "core/engine.h"
#include "core/proto.h"

typedef struct ec_resmgr ec_resmgr;

struct ec_keeper;

typedef struct ec_resmgr_config {
    uint64_t arena_bytes;       /* each private arena; 0: 64 MiB */
    struct ec_keeper *keeper;   /* holds the arenas across worker restarts; NULL: none */
    const char *remote;         /* the remote tier's cluster (redis-cluster://...), for
                                 * EC_NS_REMOTE namespaces; NULL or "": none */
} ec_resmgr_config;

/* ec_resmgr_lease's answer when the answer comes later, through the answer
 * function (a remote namespace's miss asks the cluster first). Never sent. */
#define EC_LEASE_DEFERRED 0x100

/* Where deferred lease answers go: (owner, token) as ec_resmgr_lease was
 * given them, and an EC_LEASE_* answer. Called on the server thread from
 * ec_resmgr_remote_events() or ec_resmgr_tick(); the owner may have gone
 * (then nothing is to be sent). */
typedef void (*ec_resmgr_answer_fn)(void *arg, uint64_t owner, uint64_t token, int answer);
void ec_resmgr_set_answer(ec_resmgr *m, ec_resmgr_answer_fn fn, void *arg);

/* The remote tier's readiness descriptor (epoll it; -1 without --remote),
 * and what to call when it is readable. */
int ec_resmgr_remote_fd(const ec_resmgr *m);
void ec_resmgr_remote_events(ec_resmgr *m);
/* The remote tier's latency: each cluster job of the cache manager, from
 * its submission to its completion. */
void ec_resmgr_remote_hist(const ec_resmgr *m, ec_hist *out);

/* Who asks: the connection (leases are its), its uid, and whether it may
 * administer the daemon. */
typedef struct ec_res_peer {
    uint64_t owner;
    uid_t uid;
    bool admin;
} ec_res_peer;

/* Load the namespaces from the engine's catalog, publish their generations,
 * drop result items the previous daemon left for namespaces that no longer
 * exist or of an older generation, and hook the engine's item store. */
int ec_resmgr_open(ec_engine *e, const ec_resmgr_config *cfg, ec_resmgr **out);
void ec_resmgr_close(ec_resmgr *m);

/* NS_OPEN. On success *slot, *salt, *gen; *arena_fd >= 0 (the caller's
 * read-only descriptor of its arena, to send and close) for a private
 * namespace, else -1. */
int ec_resmgr_ns_open(ec_resmgr *m, const ec_res_peer *p, const char *name, uint32_t flags,
                      const char *bind_model, const char *bind_version,
                      const ec_proto_ns_opts *opts, uint32_t *slot, uint64_t *salt,
                      uint32_t *gen, int *arena_fd);
/* RES_LEASE: an EC_LEASE_* answer, or an EC_E* code. seen: with
 * EC_RES_EARLY, the fresh_until of the record the caller saw (0: any).
 * token != 0: the answer may be deferred (EC_LEASE_DEFERRED): it then goes
 * to the answer function with (p->owner, token), exactly once unless the
 * owner closed first. */
int ec_resmgr_lease(ec_resmgr *m, const ec_res_peer *p, uint32_t slot, uint32_t flags,
                    const void *key, size_t key_len, int64_t seen, uint64_t token);

/* A value of RES_PUT. */
typedef struct ec_res_put {
    uint32_t flags;             /* EC_RES_NEGATIVE, EC_RES_TENSOR */
    uint64_t ttl_us;            /* 0: the namespace's */
    uint32_t compute_us;
    uint32_t dtype, ndim;
    uint64_t shape[EC_MAX_DIMS];
    const void *value;          /* value_len bytes, when not fd */
    uint64_t value_len;
    int fd;                     /* >= 0: the value is read from this file */
    /* Internal (core/results_remote.c): a value copied from the cluster is
     * fresh exactly this long (no jitter) and is not sent back there. */
    int64_t fresh_ns;           /* > 0: fresh this long */
    bool from_remote;
} ec_res_put;

int ec_resmgr_put(ec_resmgr *m, const ec_res_peer *p, uint32_t slot, const void *key,
                  size_t key_len, const ec_res_put *v);
int ec_resmgr_release(ec_resmgr *m, const ec_res_peer *p, uint32_t slot, const void *key,
                      size_t key_len);
int ec_resmgr_purge(ec_resmgr *m, const ec_res_peer *p, uint32_t slot, bool all,
                    const void *key, size_t key_len, uint64_t *removed);
int ec_resmgr_drop(ec_resmgr *m, const ec_res_peer *p, const char *name);

/* NS_LIST: fill rec for the first namespace at or after *cursor the peer may
 * see; *cursor moves past it. 1 filled, 0 none left. */
int ec_resmgr_list(ec_resmgr *m, const ec_res_peer *p, uint32_t *cursor, ec_proto_ns *rec);

/* Clients' counts for a namespace slot (folded from session pages; hints). */
void ec_resmgr_count(ec_resmgr *m, uint32_t slot, uint64_t hits, uint64_t misses,
                     uint64_t negative_hits, uint64_t stale);

/* A connection closed: its leases pass on. */
void ec_resmgr_owner_close(ec_resmgr *m, uint64_t owner);
/* Leases past their time pass on; bindings are re-checked when the catalog
 * changed since the last check. */
void ec_resmgr_tick(ec_resmgr *m);
/* Re-check every binding now (an alias moved, a version was retired). */
void ec_resmgr_rebind(ec_resmgr *m);

int ec_resmgr_stats(ec_resmgr *m, int (*cb)(const char *name, uint64_t v, void *arg), void *arg);

/* Recomputations: from a lease's grant (a miss that the caller computes)
 * to its holder's put, across namespaces. Server thread. */
void ec_resmgr_recompute_hist(const ec_resmgr *m, ec_hist *out);

#endif
