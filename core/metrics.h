/*
 * metrics.h - embcached's Prometheus endpoint (--metrics-listen): an HTTP
 * listener (libmicrohttpd) serving GET /metrics in the text exposition
 * format 0.0.4 and GET /healthz.
 *
 * Owns: the HTTP daemon and its thread, an eventfd the server loop polls,
 * and the latest rendering of the statistics (a text buffer under a mutex).
 * Called by the server loop (core/server.c): ec_metrics_start() at start-up,
 * ec_metrics_serve() when the eventfd is readable, ec_metrics_alive() on
 * every tick, ec_metrics_stop() at shutdown.
 *
 * Threads: the statistics belong to the server thread, and only it reads
 * them. The HTTP thread (libmicrohttpd's internal polling thread) never
 * does: for each scrape it bumps a request count under the mutex, writes
 * the eventfd and waits on a condition variable, at most
 * EC_METRICS_WAIT_MS, for the server thread to render the text (through the
 * sink functions below, into the buffer, under the mutex) and to signal it.
 * A server thread that does not answer in time gets the scrape a 503.
 * /healthz reads only an atomic timestamp the server thread writes.
 *
 * Invariants (under the mutex): served <= asked; when served == n, text
 * holds a rendering made after the n-th request was asked.
 */
#ifndef EC_CORE_METRICS_H
#define EC_CORE_METRICS_H

#include <stdint.h>

#include "common/hist.h"
#include "core/proto.h"

#define EC_METRICS_WAIT_MS 2000          /* a scrape waits this long for the server */
#define EC_METRICS_HEALTH_MS 5000        /* /healthz: the loop ticked within this */
#define EC_METRICS_MAX_TENSORS 200       /* per-tensor series: at most this many tensors */
#define EC_METRICS_MAX_CONNS 16          /* HTTP connections at once */

typedef struct ec_metrics ec_metrics;
/* What the server thread renders into; valid during one ec_metrics_serve(). */
typedef struct ec_metrics_sink ec_metrics_sink;

/* Fills the sink with every statistic; called on the server thread. */
typedef void (*ec_metrics_render_fn)(void *arg, ec_metrics_sink *k);

/* Start listening on addr (an IPv4 literal), port, on a thread of its own.
 * @return 0 and *out, or EC_EINVAL (a bad address), EC_EIO (cannot listen
 *   there: the port is taken, say; the message names the address),
 *   EC_ENOMEM. */
int ec_metrics_start(const char *addr, unsigned port, ec_metrics **out);
/* The descriptor the server loop polls for EPOLLIN; owned by m. */
int ec_metrics_event_fd(const ec_metrics *m);
/* The eventfd was readable: render for the scrapes waiting, with fn. */
void ec_metrics_serve(ec_metrics *m, ec_metrics_render_fn fn, void *arg);
/* The server loop ticked (now). m may be NULL. */
void ec_metrics_alive(ec_metrics *m);
/* Stop the listener (waiting scrapes get 503) and free m. m may be NULL. */
void ec_metrics_stop(ec_metrics *m);

/* Sink functions, for fn only (server thread). */
/* A statistic of `embcache stats`, by its name there. */
int ec_metrics_put_stat(const char *name, uint64_t v, void *sink);
/* One open tensor (its TENSORS record); past EC_METRICS_MAX_TENSORS
 * tensors only counted. */
void ec_metrics_put_tensor(ec_metrics_sink *k, const ec_proto_tensor_stat *t);
/* One result namespace (its NS_LIST record, live counts included). */
void ec_metrics_put_ns(ec_metrics_sink *k, const ec_proto_ns *ns);
/* A latency histogram: the family embcache_<name>_seconds. */
void ec_metrics_put_hist(ec_metrics_sink *k, const char *name, const char *help,
                         const ec_hist *h);
/* Requests answered with an error: by_code[-code] for every EC_E* code. */
void ec_metrics_put_errors(ec_metrics_sink *k, const uint64_t *by_code);

#endif
