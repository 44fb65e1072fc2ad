/*
 * rpool.c - the remote tier's worker threads (see rpool.h).
 *
 * One mutex guards the queue, the finished list and the counters; a
 * worker holds it only to take a job, to hand one back and to copy its
 * handle's counters, never across a cluster call.
 */
#include "core/rpool.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

struct worker {
    ec_rpool *pool;
    pthread_t tid;
    bool started;
    unsigned index;
    ec_rcluster *rc;
    uint64_t last_fail_ns;     /* when an open last failed (0: never) */
    int fail_rc;
    char fail_msg[EC_ERRMSG_MAX];
    ec_rcluster_stats st;      /* the handle's, as of its last job (under mu) */
    ec_rcluster_stats base;    /* handles closed before this one (under mu) */
    uint64_t gen;              /* p->down_gen when rc was opened */
};

struct ec_rpool {
    char url[1024];
    char name[32];
    ec_rcluster_opts opts;
    uint64_t reopen_ns;
    unsigned nworkers;
    struct worker *w;
    int efd;
    int wake_fd;               /* the caller's, or -1 */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    ec_rjob *qhead, *qtail;    /* queued */
    ec_rjob *dhead, *dtail;    /* finished, for reap */
    size_t pending;            /* queued or running */
    uint64_t open_failures;
    uint64_t down_gen;         /* bumped when a job found the cluster unreachable */
    bool stop;
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void wake(ec_rpool *p)
{
    uint64_t one = 1;
    ssize_t n = write(p->efd, &one, sizeof(one));
    (void)n; /* EAGAIN: the counter is already non-zero, the reader wakes */
    if (p->wake_fd >= 0) {
        n = write(p->wake_fd, &one, sizeof(one));
        (void)n;
    }
}

static void finish(ec_rpool *p, ec_rjob *j)
{
    j->next = NULL;
    if (p->dtail)
        p->dtail->next = j;
    else
        p->dhead = j;
    p->dtail = j;
}

/* sum += s (under mu). */
static void add_stats(ec_rcluster_stats *sum, const ec_rcluster *rc)
{
    ec_rcluster_stats s;

    ec_rcluster_stats_get(rc, &s);
    sum->commands += s.commands;
    sum->bytes_out += s.bytes_out;
    sum->bytes_in += s.bytes_in;
    sum->moved += s.moved;
    sum->ask += s.ask;
    sum->retries += s.retries;
    sum->refreshes += s.refreshes;
    sum->refresh_failures += s.refresh_failures;
    sum->connects += s.connects;
    sum->connect_failures += s.connect_failures;
    sum->errors += s.errors;
}

/* Worker thread: a handle, or why there is none. gen: p->down_gen as of
 * taking the job; a handle opened before another worker found the cluster
 * unreachable is opened afresh, so that an outage fails every worker's
 * next job at once instead of each spending its op_timeout_ms. */
static ec_rcluster *handle(struct worker *w, uint64_t gen)
{
    ec_rpool *p = w->pool;
    uint64_t now;
    int rc;

    if (w->rc && w->gen != gen) {
        pthread_mutex_lock(&p->mu);
        add_stats(&w->base, w->rc);
        pthread_mutex_unlock(&p->mu);
        ec_rcluster_close(w->rc);
        w->rc = NULL;
    }
    w->gen = gen;
    if (w->rc)
        return w->rc;
    now = now_ns();
    if (w->last_fail_ns && now - w->last_fail_ns < p->reopen_ns)
        return NULL; /* failed a moment ago: say the same again */
    rc = ec_rcluster_open(p->url, &p->opts, &w->rc);
    if (rc == 0) {
        w->last_fail_ns = 0;
        return w->rc;
    }
    w->rc = NULL;
    w->last_fail_ns = now ? now : 1;
    w->fail_rc = rc;
    snprintf(w->fail_msg, sizeof(w->fail_msg), "the remote tier's cluster cannot be reached "
             "(%.160s): %.240s; what is only there fails until it is back",
             p->url, ec_last_error());
    pthread_mutex_lock(&p->mu);
    p->open_failures++;
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    ec_rpool *p = w->pool;
    char tname[16];

    snprintf(tname, sizeof(tname), "ec-%.6s-%u", p->name, w->index);
    pthread_setname_np(pthread_self(), tname);
    for (;;) {
        ec_rjob *j;
        ec_rcluster *rc;
        uint64_t gen;

        pthread_mutex_lock(&p->mu);
        while (!p->stop && !p->qhead)
            pthread_cond_wait(&p->cv, &p->mu);
        if (!p->qhead) { /* stopping, nothing left */
            pthread_mutex_unlock(&p->mu);
            break;
        }
        j = p->qhead;
        p->qhead = j->next;
        if (!p->qhead)
            p->qtail = NULL;
        gen = p->down_gen;
        pthread_mutex_unlock(&p->mu);

        j->rc = 0;
        j->msg[0] = '\0';
        rc = handle(w, gen);
        if (rc) {
            j->run(j, rc);
            if (j->rc == EC_ECONN) {
                /* Every node of a key unreachable: open afresh next time,
                 * which fails at once (and then fast for reopen_ms) while
                 * the whole cluster is down, instead of each job spending
                 * its op_timeout_ms on retries; the other workers too. */
                pthread_mutex_lock(&p->mu);
                add_stats(&w->base, w->rc);
                w->gen = ++p->down_gen;
                pthread_mutex_unlock(&p->mu);
                ec_rcluster_close(w->rc);
                w->rc = NULL;
            }
        } else {
            j->rc = w->fail_rc ? w->fail_rc : EC_ECONN;
            snprintf(j->msg, sizeof(j->msg), "%s", w->fail_msg);
        }

        pthread_mutex_lock(&p->mu);
        w->st = w->base;
        if (w->rc)
            add_stats(&w->st, w->rc);
        finish(p, j);
        pthread_mutex_unlock(&p->mu);
        wake(p);
    }
    return NULL;
}

int ec_rpool_open(const ec_rpool_config *cfg, ec_rpool **out)
{
    ec_rcluster_addr seeds[EC_RCLUSTER_MAX_SEEDS];
    size_t nseeds = 0;
    ec_rpool *p;
    int rc;

    if (!cfg || !cfg->url || strlen(cfg->url) >= sizeof(p->url))
        return ec_seterr(EC_EINVAL, "remote tier: no cluster URL, or one too long");
    rc = ec_rcluster_parse_seeds(cfg->url, seeds, EC_RCLUSTER_MAX_SEEDS, &nseeds);
    if (rc)
        return rc;
    p = calloc(1, sizeof(*p));
    if (!p)
        return ec_seterr(EC_ENOMEM, "remote tier pool");
    snprintf(p->url, sizeof(p->url), "%s", cfg->url);
    snprintf(p->name, sizeof(p->name), "%s", cfg->name ? cfg->name : "remote");
    p->opts = cfg->opts;
    p->reopen_ns = (uint64_t)(cfg->reopen_ms ? cfg->reopen_ms : 1000) * 1000000u;
    p->nworkers = cfg->threads ? cfg->threads : 4;
    p->wake_fd = cfg->wake_extra ? cfg->wake_fd : -1;
    p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    p->w = calloc(p->nworkers, sizeof(*p->w));
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (p->efd < 0 || !p->w) {
        rc = p->efd < 0 ? ec_seterr_errno(EC_EIO, errno, "remote tier: eventfd")
                        : ec_seterr(EC_ENOMEM, "remote tier workers");
        ec_rpool_close(p);
        return rc;
    }
    for (unsigned i = 0; i < p->nworkers; i++) {
        struct worker *w = &p->w[i];
        w->pool = p;
        w->index = i;
        if (pthread_create(&w->tid, NULL, worker_main, w) != 0) {
            ec_rpool_close(p);
            return ec_seterr(EC_ENOMEM, "remote tier: cannot start worker %u", i);
        }
        w->started = true;
    }
    *out = p;
    return 0;
}

void ec_rpool_submit(ec_rpool *p, ec_rjob *j)
{
    j->next = NULL;
    pthread_mutex_lock(&p->mu);
    p->pending++;
    if (p->stop) { /* closing: fail it, reap will hand it back */
        j->rc = EC_ECONN;
        snprintf(j->msg, sizeof(j->msg), "the remote tier is shutting down");
        finish(p, j);
        pthread_mutex_unlock(&p->mu);
        wake(p);
        return;
    }
    if (p->qtail)
        p->qtail->next = j;
    else
        p->qhead = j;
    p->qtail = j;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

int ec_rpool_event_fd(const ec_rpool *p) { return p->efd; }

void ec_rpool_reap(ec_rpool *p)
{
    uint64_t v;
    ec_rjob *list;
    ssize_t n = read(p->efd, &v, sizeof(v));

    (void)n;
    pthread_mutex_lock(&p->mu);
    list = p->dhead;
    p->dhead = p->dtail = NULL;
    for (ec_rjob *j = list; j; j = j->next)
        p->pending--;
    pthread_mutex_unlock(&p->mu);
    while (list) {
        ec_rjob *j = list;
        list = j->next;
        j->next = NULL;
        j->done(j);
    }
}

size_t ec_rpool_pending(const ec_rpool *p)
{
    size_t n;
    pthread_mutex_lock((pthread_mutex_t *)&p->mu);
    n = p->pending;
    pthread_mutex_unlock((pthread_mutex_t *)&p->mu);
    return n;
}

void ec_rpool_stats(ec_rpool *p, ec_rcluster_stats *sum, uint64_t *open_failures)
{
    memset(sum, 0, sizeof(*sum));
    pthread_mutex_lock(&p->mu);
    for (unsigned i = 0; i < p->nworkers; i++) {
        const ec_rcluster_stats *s = &p->w[i].st;
        sum->commands += s->commands;
        sum->bytes_out += s->bytes_out;
        sum->bytes_in += s->bytes_in;
        sum->moved += s->moved;
        sum->ask += s->ask;
        sum->retries += s->retries;
        sum->refreshes += s->refreshes;
        sum->refresh_failures += s->refresh_failures;
        sum->connects += s->connects;
        sum->connect_failures += s->connect_failures;
        sum->errors += s->errors;
    }
    if (open_failures)
        *open_failures = p->open_failures;
    pthread_mutex_unlock(&p->mu);
}

void ec_rpool_close(ec_rpool *p)
{
    ec_rjob *q;

    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    q = p->qhead; /* queued, never started: they fail */
    p->qhead = p->qtail = NULL;
    while (q) {
        ec_rjob *j = q;
        q = j->next;
        j->rc = EC_ECONN;
        snprintf(j->msg, sizeof(j->msg), "the remote tier is shutting down");
        finish(p, j);
    }
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; p->w && i < p->nworkers; i++) {
        if (p->w[i].started)
            pthread_join(p->w[i].tid, NULL);
        ec_rcluster_close(p->w[i].rc);
    }
    if (p->efd >= 0)
        ec_rpool_reap(p);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    if (p->efd >= 0)
        close(p->efd);
    free(p->w);
    free(p);
}
