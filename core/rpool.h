/*
 * rpool.h - threads that talk to the remote tier's Redis Cluster for the
 * daemon, so that no cluster round trip runs on the server thread.
 *
 * Owns: a few worker threads, each with its own cluster handle
 * (core/rcluster.h handles are single-threaded), a queue of jobs and a list
 * of finished ones, and an eventfd that becomes readable when a job has
 * finished. A worker opens its handle at its first job and again after the
 * handle was lost; while the cluster cannot be reached at all, a job fails
 * at once (EC_ECONN with the reason) instead of waiting, and the worker
 * tries again at most once per reopen interval, so an outage costs each
 * job one clear error and the cluster no storm of connects.
 *
 * Callers: the pager's remote reads (core/pager_remote.c) and the shared
 * result namespaces (core/results_remote.c), each with a pool of its own.
 * Threads: ec_rpool_open, _submit, _reap, _close, _stats from one thread
 * (the server thread); job->run on a worker; job->done on the thread that
 * calls ec_rpool_reap.
 */
#ifndef EC_CORE_RPOOL_H
#define EC_CORE_RPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "core/rcluster.h"

typedef struct ec_rpool ec_rpool;

typedef struct ec_rjob ec_rjob;
struct ec_rjob {
    /* Filled by the caller. run() is not called when the worker has no
     * handle (then rc and msg say why); done() always is, exactly once. */
    void (*run)(ec_rjob *j, ec_rcluster *rc); /* worker thread: set j->rc, j->msg */
    void (*done)(ec_rjob *j);                 /* ec_rpool_reap's thread */
    void *user;

    /* Results. */
    int rc;
    char msg[EC_ERRMSG_MAX];

    /* Private to the pool. */
    ec_rjob *next;
};

typedef struct ec_rpool_config {
    const char *url;           /* redis-cluster://host:port[,...] (copied) */
    ec_rcluster_opts opts;     /* every handle's */
    unsigned threads;          /* 0: 4 */
    uint32_t reopen_ms;        /* least time between two failed opens of one
                                * worker (0: 1000) */
    const char *name;          /* for thread names and messages ("remote") */
    bool wake_extra;           /* also write 1 to wake_fd (an eventfd the
                                * caller polls already, e.g. the pager's)
                                * each time a job has finished, after it is
                                * on the finished list */
    int wake_fd;
} ec_rpool_config;

/* Start the workers (no connection is made yet). EC_EINVAL for a bad URL,
 * EC_ENOMEM. */
int ec_rpool_open(const ec_rpool_config *cfg, ec_rpool **out);

/* Queue a job (never blocks). */
void ec_rpool_submit(ec_rpool *p, ec_rjob *j);

/* Readable when finished jobs wait for ec_rpool_reap. */
int ec_rpool_event_fd(const ec_rpool *p);

/* Call done() of every finished job, in the order they finished. */
void ec_rpool_reap(ec_rpool *p);

/* Jobs queued or running. */
size_t ec_rpool_pending(const ec_rpool *p);

/* The sum of the workers' cluster counters (handles reopened included), and
 * how many opens failed. */
void ec_rpool_stats(ec_rpool *p, ec_rcluster_stats *sum, uint64_t *open_failures);

/* Let running jobs finish, fail the queued ones (EC_ECONN, "shutting
 * down"), call every done() left, stop the workers and free. NULL: no-op. */
void ec_rpool_close(ec_rpool *p);

#endif
