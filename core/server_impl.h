/*
 * server_impl.h - private to core/server*.c: the server loop's state (the
 * connections, the importer's queue) and the functions one server file
 * defines and another calls. The interface is core/server.h.
 *
 *   server.c        the loop, connections, sessions, the data path
 *                   (HELLO, RESOLVE, FAULT, FAULT_ROWS, PIN, UNPIN), imports
 *   server_admin.c  statistics and operator requests (STATS, TENSORS, LIST,
 *                   ALIAS, FIND, DEVICES, PREWARM, EVICT, REFRESH, POLICY,
 *                   MODE, RETIRE)
 *   server_index.c  approximate indexes (INDEX_PUT, stored by the importer
 *                   thread; INDEX_OPEN)
 *   server_results.c the cache manager's requests (NS_OPEN, RES_LEASE,
 *                   RES_PUT, RES_RELEASE, RES_PURGE, NS_LIST, NS_DROP)
 *   server_reload.c SIGHUP: the configuration read again and applied
 *
 * Everything runs on the server thread but the importer (server.c).
 */
#ifndef EC_CORE_SERVER_IMPL_H
#define EC_CORE_SERVER_IMPL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#include "common/u64map.h"
#include "core/engine.h"
#include "core/import.h"
#include "core/metrics.h"
#include "core/proto.h"
#include "core/dyntable.h"
#include "core/results.h"
#include "core/server.h"

#define ID_LISTEN 1
#define ID_ENGINE 2
#define ID_SIGNAL 3
#define ID_IMPORT 4
#define ID_METRICS 5 /* core/metrics.c asks for a rendering */
#define ID_RESULTS 6 /* the cache manager's remote tier (core/results_remote.c) */
#define ID_FIRST_CONN 16
#define MAX_OUTSTANDING 64
#define TICK_MS 100
#define RING_MS 10   /* access rings are drained this often while clients report */
#define HELLO_TIMEOUT 10

struct conn {
    uint64_t id;
    int fd;
    time_t accepted;     /* CLOCK_MONOTONIC seconds; HELLO must follow soon */
    pid_t pid;
    uid_t uid;
    bool hello;
    uint32_t features;   /* HELLO's EC_HELLO_* bits: what the client reads */
    ec_session_page *session;
    uint64_t ring_tail;
    uint32_t outstanding;
    uint64_t held_epoch;  /* the least epoch its session showed at the last tick */
    time_t held_since;    /* since when it keeps limbo from being freed (0: it does not) */
    time_t stopped_since; /* since when it is stopped holding views (0: it is not) */
};

struct import_job {
    bool upgrade;                /* UPGRADE: rewrite a version's v1 files */
    bool index;                  /* INDEX_PUT: store fds[0] as the index of (model,
                                  * opts.version, tensor) (server_index.c) */
    char tensor[EC_NAME_MAX + 1]; /* INDEX_PUT: the tensor */
    uint64_t isize;              /* INDEX_PUT: the file's size, as the request says */
    char version[EC_NAME_MAX + 1]; /* UPGRADE: the version or alias */
    uint64_t owner;
    uint32_t req_id;
    ec_import_opts opts;
    char model[EC_NAME_MAX + 1];
    char params[EC_PARAMS_MAX + 1];
    char names[EC_IMPORT_MAX_FILES][256];
    int fds[EC_IMPORT_MAX_FILES];
    size_t n;
    int rc;
    uint32_t tensors;
    char msg[EC_ERRMSG_MAX];
    struct srv_remote_job *remote; /* PUBLISH / PULL (server_remote.c); owned */
    struct import_job *next;
};

typedef struct server {
    const ec_server_config *cfg; /* &live */
    ec_server_config live;       /* the configuration in effect: the start-up one as
                                  * SIGHUP changed it (server_reload.c) */
    struct {
        uint64_t reloads, failures;
        bool last_ok;
    } conf;                      /* config_reloads, config_reload_failures,
                                  * config_last_reload_ok */
    ec_engine *engine;
    ec_resmgr *results;
    struct ec_dyn *dyn;  /* dynamic tables (core/dyntable.h) */
    uint8_t *batch;      /* a row batch read from its memfd (server_dyn.c); kept */
    size_t batch_cap;
    ec_metrics *metrics; /* --metrics-listen (core/metrics.h); NULL: off */
    int ep, lfd, sfd, ifd;
    ec_u64map conns;
    ec_u64map per_uid;   /* uid + 1 -> connections of that uid (as a uintptr_t) */
    uint64_t next_id;
    uint8_t buf[EC_MSG_MAX];
    uint8_t out[EC_MSG_MAX];
    struct stat sock_st;
    int reserve_fd;    /* spent to shed a connection when out of fds */
    bool warned_emfile;

    pthread_t importer;
    bool importer_started;
    pthread_mutex_t ilock;
    pthread_cond_t icond;
    struct import_job *iq, *idone;
    bool istop;
    ec_catalog *icat;

    struct {
        uint64_t accepted, rejected, rejected_uid, rejected_uid_limit, protocol_errors,
            disconnected_slow, epoch_disconnects, pin_revocations, denied, imports, import_failures;
        /* Session counters of clients that have gone. */
        uint64_t gathers, rows, hits, misses, retries, faults, device_rows, mapped_rows,
            staged_rows, gpu_resolved_rows;
        /* Requests answered with an error, by code (index -code). */
        uint64_t errors[1 - EC_E_LAST];
        /* Aliases moved; of them, to a version not prewarmed (under 90% of
         * its bytes resident). */
        uint64_t alias_switches, alias_switches_cold;
        /* PUBLISH, PULL and UNPUBLISH (server_remote.c). */
        uint64_t published_versions, published_bytes, pulled_versions, pulled_bytes,
            pull_failures, unpublished_versions;
    } st;
    ec_u64map tfold;     /* tensor id -> struct tcount: per-tensor counts of them */
    /* Epochs of connections that went while their device gathers may still
     * be queued: held for as long as their process lives (server.c,
     * "Ghost epochs"). */
    struct ghost {
        pid_t pid;
        uint64_t start;  /* the process's start time, so a reused pid is not it */
        uint64_t epoch;
    } *ghosts;
    size_t nghosts, capghosts;
    uint64_t ghost_holds;
    bool rings_busy;     /* the last drain found hints: drain again soon */
} server;

/* Rows and hits clients reported for one tensor. */
struct tcount {
    uint64_t rows, hits;
};

/* server.c */
void srv_reply_send(server *s, struct conn *c, size_t len, const int *fds, int nfds);
void srv_reply_error(server *s, struct conn *c, uint16_t op, uint32_t req_id, int code,
                     const char *msg);
void srv_conn_close(server *s, struct conn *c);
int srv_bad_body(uint16_t op);
int srv_outstanding_take(struct conn *c);
/* Queue a job for the importer thread, which owns it from then on. */
void srv_import_enqueue(server *s, struct import_job *j);
bool srv_peer_admin(const server *s, uid_t uid);

/* server_reload.c: SIGHUP or RELOAD: read the configuration again and apply
 * what may change at run time. */
void srv_reload(server *s);
int srv_h_reload(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);

/* server_dyn.c: dynamic tables (DYN_SET, ROWS_PUT, ROWS_DEL, SNAPSHOT,
 * DYN_STATS) */
int srv_h_dyn_set(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_rows_put(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, const int *fds,
                   int nfds);
int srv_h_rows_del(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, const int *fds,
                   int nfds);
int srv_h_snapshot(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_dyn_stats(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);

/* server_index.c: INDEX_PUT queues the job (it takes fds[0]: *nfds becomes
 * 0); srv_index_store runs it on the importer thread; INDEX_OPEN */
int srv_h_index_put(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, int *fds,
                    int *nfds);
int srv_index_store(server *s, struct import_job *j);
int srv_h_index_open(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);

/* server_remote.c: PUBLISH and PULL queue a job (srv_h_publish_pull, on
 * the server thread); srv_remote_run does it on the importer thread;
 * srv_remote_done answers it on the server thread (counts, log, reply,
 * c->outstanding; frees j->remote, not j). */
int srv_h_publish_pull(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, uint16_t op);
int srv_remote_run(server *s, struct import_job *j);
void srv_remote_done(server *s, struct conn *c, struct import_job *j);

/* server_results.c */
int srv_h_ns_open(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_res_lease(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_res_put(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, const int *fds,
                  int nfds);
int srv_h_res_release(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_res_purge(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_ns_list(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_ns_drop(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
/* ec_resmgr_answer_fn: a deferred RES_LEASE answer (arg: the server). */
void srv_results_answer(void *arg, uint64_t owner, uint64_t token, int answer);
/* Fold a closing session's per-namespace counts into the cache manager. */
void srv_results_fold(server *s, const ec_session_page *p);
/* Add the counts connected clients report for namespace slot to rec. */
void srv_results_live_counts(server *s, uint32_t slot, ec_proto_ns *rec);

/* server_admin.c: the handlers of statistics and operator requests */
int srv_h_stats(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_tensors(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_list(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_alias(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_find(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_devices(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_prewarm(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_version_u64(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, uint16_t op);
int srv_h_policy(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_mode(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
int srv_h_retire(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id);
/* Every statistic of STATS, in its order, through cb (the first non-zero
 * return stops it and is returned). Shared by STATS and /metrics. */
int srv_stats_each(server *s, int (*cb)(const char *name, uint64_t v, void *arg), void *arg);
/* The TENSORS records of every open tensor, by id: *out (free() it), *n. */
int srv_tensor_list(server *s, ec_proto_tensor_stat **out, size_t *n);
/* ec_metrics_render_fn: statistics, tensors and namespaces into the sink. */
void srv_metrics_render(void *arg, ec_metrics_sink *k);

#endif
