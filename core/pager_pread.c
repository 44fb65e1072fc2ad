/*
 * pager_pread.c - the pread pager backend: a pool of reader threads.
 *
 * The fallback where io_uring cannot be used. The server thread queues
 * requests (demand before prewarm) under a mutex; each reader takes one,
 * reads it with pread (O_DIRECT where the request allows), verifies its
 * checksum (or its blocks' checksums), puts it on the done list and wakes
 * the server through an eventfd. The server thread reaps the done list.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/pager_impl.h"

struct preadb {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ec_page_req *head[2], *tail[2]; /* by priority */
    ec_page_req *done;
    bool stop;
    pthread_t *threads;
    unsigned nthreads;
    uint64_t queued, busy;
};

static void read_one(ec_page_req *r)
{
    if (r->rc)
        return; /* malformed: ec_pager_prepare failed it */
    for (;;) {
        uint32_t want = ec_pager_want(r);
        int fd = r->direct ? r->dfd : r->fd;
        long n;

        if (r->fake_eof) {
            n = 0;
        } else if (r->fault == EC_FAULT_EIO) {
            n = -EIO;
        } else {
            uint32_t len = want - r->done;
            if (r->fault == EC_FAULT_SHORT || r->fault == EC_FAULT_SHORT_ONCE) {
                len = ec_pager_short_len(len);
                r->fake_eof = r->fault == EC_FAULT_SHORT;
                r->fault = EC_FAULT_NONE;
            }
            n = pread(fd, r->dest + r->done, len, (off_t)(r->file_off + r->done));
            if (n < 0)
                n = -errno;
        }
        if (ec_pager_account(r, n) == EC_READ_DONE)
            break;
    }
    ec_pager_verify(r);
}

static void *reader_main(void *arg)
{
    ec_pager *p = arg;
    struct preadb *b = p->impl;

    for (;;) {
        ec_page_req *r = NULL;
        uint64_t one = 1;

        pthread_mutex_lock(&b->mu);
        while (!b->stop && !b->head[0] && !b->head[1])
            pthread_cond_wait(&b->cv, &b->mu);
        for (int q = 0; q < 2 && !r; q++) {
            if ((r = b->head[q])) {
                b->head[q] = r->next;
                if (!b->head[q])
                    b->tail[q] = NULL;
            }
        }
        if (!r) {
            pthread_mutex_unlock(&b->mu);
            return NULL;
        }
        b->queued--;
        b->busy++;
        pthread_mutex_unlock(&b->mu);

        read_one(r);

        pthread_mutex_lock(&b->mu);
        b->busy--;
        r->next = b->done;
        b->done = r;
        pthread_mutex_unlock(&b->mu);
        (void)!write(p->efd, &one, sizeof(one));
    }
}

static int pread_open(ec_pager *p)
{
    struct preadb *b = calloc(1, sizeof(*b));

    if (!b)
        return ec_seterr(EC_ENOMEM, "pread pager");
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    p->impl = b;
    p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->efd < 0)
        return ec_seterr_errno(EC_EIO, errno, "eventfd for the pread pager");
    b->threads = calloc(p->cfg.threads, sizeof(*b->threads));
    if (!b->threads)
        return ec_seterr(EC_ENOMEM, "pread pager threads");
    for (unsigned i = 0; i < p->cfg.threads; i++) {
        if (pthread_create(&b->threads[i], NULL, reader_main, p))
            return ec_seterr(EC_ENOMEM, "cannot start pread reader thread %u", i);
        b->nthreads++;
    }
    snprintf(p->desc, sizeof(p->desc), "pread, %u reader thread(s), O_DIRECT where the file "
             "system allows", b->nthreads);
    return 0;
}

static void pread_reap(ec_pager *p, void (*done)(ec_page_req *, void *), void *arg)
{
    struct preadb *b = p->impl;
    ec_page_req *r, *next;
    uint64_t v;

    (void)!read(p->efd, &v, sizeof(v));
    pthread_mutex_lock(&b->mu);
    r = b->done;
    b->done = NULL;
    p->st.inflight = b->busy;
    p->st.queued = b->queued;
    pthread_mutex_unlock(&b->mu);
    for (; r; r = next) {
        next = r->next;
        ec_pager_count(p, r);
        done(r, arg);
    }
}

static void pread_submit(ec_pager *p, ec_page_req *r)
{
    struct preadb *b = p->impl;
    int q = r->prio == EC_PAGE_DEMAND ? 0 : 1;

    r->next = NULL;
    pthread_mutex_lock(&b->mu);
    if (b->tail[q])
        b->tail[q]->next = r;
    else
        b->head[q] = r;
    b->tail[q] = r;
    b->queued++;
    p->st.queued = b->queued;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void pread_close(ec_pager *p, void (*done)(ec_page_req *, void *), void *arg)
{
    struct preadb *b = p->impl;

    if (!b)
        goto out;
    /* Hand back what never started, then let the readers finish theirs. */
    pthread_mutex_lock(&b->mu);
    for (int q = 0; q < 2; q++) {
        ec_page_req *r = b->head[q], *next;
        b->head[q] = b->tail[q] = NULL;
        for (; r; r = next) {
            next = r->next;
            r->rc = EC_ECONN;
            snprintf(r->msg, sizeof(r->msg), "embcached is shutting down");
            r->next = b->done;
            b->done = r;
        }
    }
    b->stop = true;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    for (unsigned i = 0; i < b->nthreads; i++)
        pthread_join(b->threads[i], NULL);
    if (p->efd >= 0)
        pread_reap(p, done, arg);
    free(b->threads);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b);
out:
    if (p->efd >= 0)
        close(p->efd);
}

const struct ec_pager_ops ec_pager_pread_ops = {
    .name = "pread",
    .open = pread_open,
    .close = pread_close,
    .submit = pread_submit,
    .reap = pread_reap,
};
