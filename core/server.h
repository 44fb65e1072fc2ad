/*
 * server.h - embcached's server loop: the control socket, client sessions,
 * the importer thread, signals.
 *
 * One thread runs the loop (epoll over the listening socket, every client,
 * the engine's completion eventfd, the importer's eventfd and a signalfd)
 * and is the only caller of the engine. A second thread runs imports, which
 * write partition files and the catalog but never the segment.
 */
#ifndef EC_CORE_SERVER_H
#define EC_CORE_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define EC_SERVER_MAX_ALLOW 16

struct ec_keeper;

typedef struct ec_server_config {
    const char *data_dir;
    const char *socket_path;
    uint64_t shm_size;
    unsigned io_threads;
    uid_t allow_uids[EC_SERVER_MAX_ALLOW]; /* besides our own uid and root */
    size_t n_allow_uids;
    bool allow_any;                        /* every local user may connect */
    uid_t admin_uids[EC_SERVER_MAX_ALLOW]; /* may administer, besides our uid and root */
    size_t n_admin_uids;
    unsigned max_clients;                  /* 0 for 1024 */
    unsigned max_clients_per_uid;          /* 0 for a quarter of max_clients */
    struct ec_keeper *keeper;              /* core/keeper.h; NULL: none */
    uint64_t budget;                       /* host-tier bytes; 0: the whole data area */
    double ttl_seconds, ttl_jitter;        /* partition TTL (0: none), jitter fraction */
    int pager;                             /* enum ec_pager_kind */
    unsigned queue_depth;                  /* io_uring reads in flight */
    double rate_window;                    /* seconds per request-rate window */
    uint64_t gpu_slab;                     /* device slab per GPU, at most; 0: off;
                                            * UINT64_MAX: the default (core/devtier.h,
                                            * "Sizing") */
    long epoch_hold_max;                   /* seconds a client may hold an epoch; 0: 30 */
    long pin_lease;                        /* seconds a stopped client keeps its views;
                                            * 0: for ever */
    uint64_t item_bytes;                   /* item index sizing; 0: default; UINT64_MAX: none */
    uint64_t result_arena;                 /* bytes of each uid's private result arena;
                                            * 0: 64 MiB */
    int wal_sync;                          /* ec_wal_sync of dynamic tables' log:
                                            * 0 batch, 1 interval, 2 none */
    unsigned wal_sync_ms;                  /* interval: ms between syncs; 0: 100 */
    char metrics_addr[16];                 /* --metrics-listen: an IPv4 literal */
    unsigned metrics_port;                 /* its port; 0: no metrics endpoint */
    char remote[1024];                     /* --remote: the Redis Cluster of the remote
                                            * tier, checked seeds; "": none */
    char remote_auth_file[1024];           /* --remote-auth-file: its credentials
                                            * (checked); "": none */
    unsigned remote_threads;               /* its reader threads; 0: 4 */
    bool remote_no_keep;                   /* remote-keep false: what is read from it is
                                            * not written into the partition files */
    uint64_t remote_keep_reserve;          /* free bytes the data dir's file system keeps:
                                            * nothing more is kept below them, and the
                                            * coldest kept partitions are removed */
    uint64_t remote_keep_max;              /* bytes kept partitions may take; 0: no
                                            * bound but the reserve */
    /* SIGHUP or a RELOAD request: read the configuration again
     * (core/daemon_config.h, ec_dconf_reload). Fills *next with every
     * field of *cur, but those that may change at run time as now
     * configured, and summary (cap bytes; may be NULL) with the line it
     * logs; returns 0, or a negative EC_E* code after it logged why and
     * set the thread's error (nothing changes then). NULL: SIGHUP is
     * logged and ignored, RELOAD refused. Called on the server thread. */
    int (*reload)(void *arg, const struct ec_server_config *cur, struct ec_server_config *next,
                  char *summary, size_t cap);
    void *reload_arg;
    bool reload_failed;                    /* the configuration could not be read again
                                            * at start (a restarted worker): reported as
                                            * config_last_reload_ok 0 */
} ec_server_config;

/* The fields ec_server_run applies on SIGHUP without a restart: budget,
 * ttl_seconds, ttl_jitter, rate_window, epoch_hold_max, pin_lease,
 * wal_sync, wal_sync_ms, remote_no_keep, max_clients, max_clients_per_uid, allow_uids,
 * allow_any, admin_uids (for connections accepted from then on; admin
 * rights are checked at each request). Every other field is fixed at
 * start. */

/* Run until SIGTERM or SIGINT; SIGHUP reloads (cfg->reload). Returns 0
 * after a clean shutdown, or a negative EC_E* code (with ec_last_error())
 * when start-up failed. */
int ec_server_run(const ec_server_config *cfg);

#endif
