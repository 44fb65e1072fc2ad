/*
 * pager_uring.c - the io_uring pager backend.
 *
 * Runs on the server thread: ec_pager_submit queues a request (demand ahead
 * of prewarm), and as many as the queue depth allows go to the kernel in one
 * io_uring_submit. Reads go with O_DIRECT from the partition file straight
 * into the partition's extent in the segment; the data area is registered as
 * fixed buffers (in chunks of at most 1 GiB, the kernel's limit per buffer)
 * and partition files as fixed files when the kernel and RLIMIT_MEMLOCK
 * allow, and plain reads are used otherwise. Completions post to an eventfd
 * registered with the ring, which the server polls; ec_pager_reap handles
 * them: short reads, EAGAIN and EINTR are resubmitted for the rest, the
 * checksum (or each block's) is verified, and the request is handed back.
 *
 * The fault hook is applied here too: an injected EIO is a NOP whose
 * completion is read as -EIO, an injected short read asks the kernel for half.
 * A request ec_pager_prepare() failed (rc set) goes through the ring as a
 * NOP too, so that it comes back through reap like the others.
 */
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/log.h"
#include "core/pager_impl.h"

#define CHUNK (1ULL << 30)
#define FILE_SLOTS 4096u

struct uring {
    struct io_uring ring;
    bool ring_ok;
    ec_page_req *head[2], *tail[2]; /* waiting for a slot, by priority */
    unsigned inflight;
    unsigned pending_sqes;          /* prepared, not yet submitted */
    struct iovec *iov;              /* registered buffers */
    unsigned niov;
    bool fixed_files;
    uint8_t *slot_used;
};

static int uring_open(ec_pager *p)
{
    struct uring *u = calloc(1, sizeof(*u));
    struct io_uring_probe *probe;
    unsigned entries = 8;
    int rc;

    if (!u)
        return ec_seterr(EC_ENOMEM, "io_uring pager");
    p->impl = u;
    while (entries < p->cfg.queue_depth)
        entries *= 2;
    rc = io_uring_queue_init(entries, &u->ring, 0);
    if (rc < 0)
        return ec_seterr_errno(EC_EIO, -rc, "io_uring_queue_init(%u)", entries);
    u->ring_ok = true;
    probe = io_uring_get_probe_ring(&u->ring);
    if (!probe || !io_uring_opcode_supported(probe, IORING_OP_READ) ||
        !io_uring_opcode_supported(probe, IORING_OP_READ_FIXED)) {
        if (probe)
            io_uring_free_probe(probe);
        return ec_seterr(EC_EIO, "this kernel's io_uring cannot read (IORING_OP_READ is "
                                 "missing)");
    }
    io_uring_free_probe(probe);
    p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->efd < 0)
        return ec_seterr_errno(EC_EIO, errno, "eventfd for io_uring");
    rc = io_uring_register_eventfd(&u->ring, p->efd);
    if (rc < 0)
        return ec_seterr_errno(EC_EIO, -rc, "io_uring_register_eventfd");

    /* Fixed buffers: the whole data area, so every extent is one. */
    if (p->cfg.region && p->cfg.region_len) {
        u->niov = (unsigned)((p->cfg.region_len + CHUNK - 1) / CHUNK);
        u->iov = calloc(u->niov, sizeof(*u->iov));
        for (unsigned i = 0; u->iov && i < u->niov; i++) {
            u->iov[i].iov_base = (uint8_t *)p->cfg.region + (size_t)i * CHUNK;
            u->iov[i].iov_len = i + 1 < u->niov ? CHUNK : p->cfg.region_len - (size_t)i * CHUNK;
        }
        rc = u->iov ? io_uring_register_buffers(&u->ring, u->iov, u->niov) : -ENOMEM;
        if (rc < 0) {
            ec_info("io_uring: segment not registered as fixed buffers (%s; raise "
                    "RLIMIT_MEMLOCK to allow it): using plain reads", strerror(-rc));
            free(u->iov);
            u->iov = NULL;
            u->niov = 0;
        }
    }
    rc = io_uring_register_files_sparse(&u->ring, FILE_SLOTS);
    if (rc == 0) {
        u->slot_used = calloc(FILE_SLOTS, 1);
        u->fixed_files = u->slot_used != NULL;
    }
    snprintf(p->desc, sizeof(p->desc), "io_uring, queue depth %u, O_DIRECT, %s, %s",
             p->cfg.queue_depth, u->niov ? "fixed buffers" : "plain buffers",
             u->fixed_files ? "fixed files" : "plain files");
    return 0;
}

static int uring_file_add(ec_pager *p, int fd)
{
    struct uring *u = p->impl;

    if (!u->fixed_files)
        return -1;
    for (unsigned i = 0; i < FILE_SLOTS; i++) {
        if (u->slot_used[i])
            continue;
        if (io_uring_register_files_update(&u->ring, i, &fd, 1) != 1)
            return -1;
        u->slot_used[i] = 1;
        return (int)i;
    }
    return -1;
}

static void uring_file_del(ec_pager *p, int slot)
{
    struct uring *u = p->impl;
    int none = -1;

    if (!u->fixed_files || slot < 0 || (unsigned)slot >= FILE_SLOTS || !u->slot_used[slot])
        return;
    io_uring_register_files_update(&u->ring, (unsigned)slot, &none, 1);
    u->slot_used[slot] = 0;
}

/* Which registered buffer holds [dest, dest+len), or -1. */
static int buffer_of(const ec_pager *p, const struct uring *u, const uint8_t *dest, size_t len)
{
    const uint8_t *base = p->cfg.region;
    size_t off, i;

    if (!u->niov || dest < base || dest + len > base + p->cfg.region_len)
        return -1;
    off = (size_t)(dest - base);
    i = off / CHUNK;
    if ((off + len - 1) / CHUNK != i)
        return -1;
    return (int)i;
}

/* Put the next read of r into an SQE. Returns false when the ring is full. */
static bool prep(ec_pager *p, struct uring *u, ec_page_req *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    uint32_t len = ec_pager_want(r) - r->done;
    uint8_t *dest = r->dest + r->done;
    uint64_t off = r->file_off + r->done;
    int fd = r->direct ? r->dfd : r->fd, buf;

    if (!sqe)
        return false;
    if (r->rc || r->fake_eof || r->fault == EC_FAULT_EIO) {
        /* Injected: a NOP whose completion is read as EOF or EIO; or a
         * request failed before any I/O. */
        io_uring_prep_nop(sqe);
    } else {
        /* Injected short read: ask for half; the completion clears the
         * fault (and, for SHORT, makes the file "end" there). */
        if (r->fault == EC_FAULT_SHORT || r->fault == EC_FAULT_SHORT_ONCE)
            len = ec_pager_short_len(len);
        buf = buffer_of(p, u, dest, len);
        if (buf >= 0) {
            io_uring_prep_read_fixed(sqe, fd, dest, len, off, buf);
            p->st.fixed_buffer_reads++;
        } else {
            io_uring_prep_read(sqe, fd, dest, len, off);
        }
        if (r->direct && r->file_slot >= 0 && u->fixed_files) {
            sqe->fd = r->file_slot;
            sqe->flags |= IOSQE_FIXED_FILE;
        }
    }
    io_uring_sqe_set_data(sqe, r);
    u->inflight++;
    u->pending_sqes++;
    return true;
}

/* Start queued requests up to the queue depth, demand first; with submit,
 * hand them to the kernel in one call. */
static void kick(ec_pager *p, struct uring *u, bool submit)
{
    for (int q = 0; q < 2; q++) {
        while (u->head[q] && u->inflight < p->cfg.queue_depth) {
            ec_page_req *r = u->head[q];
            if (!prep(p, u, r))
                goto submit;
            u->head[q] = r->next;
            if (!u->head[q])
                u->tail[q] = NULL;
        }
    }
submit:
    if (submit && u->pending_sqes) {
        int rc = io_uring_submit(&u->ring);
        if (rc >= 0)
            u->pending_sqes -= (unsigned)rc < u->pending_sqes ? (unsigned)rc : u->pending_sqes;
    }
    p->st.inflight = u->inflight;
}

static void enqueue(struct uring *u, ec_page_req *r, bool front)
{
    int q = r->prio == EC_PAGE_DEMAND ? 0 : 1;

    if (front) {
        r->next = u->head[q];
        u->head[q] = r;
        if (!u->tail[q])
            u->tail[q] = r;
        return;
    }
    r->next = NULL;
    if (u->tail[q])
        u->tail[q]->next = r;
    else
        u->head[q] = r;
    u->tail[q] = r;
}

static void uring_submit(ec_pager *p, ec_page_req *r)
{
    struct uring *u = p->impl;

    enqueue(u, r, false);
    kick(p, u, false);
}

static void uring_flush(ec_pager *p)
{
    kick(p, p->impl, true);
}

static void uring_reap(ec_pager *p, void (*done)(ec_page_req *, void *), void *arg)
{
    struct uring *u = p->impl;
    struct io_uring_cqe *cqe;
    uint64_t v;

    (void)!read(p->efd, &v, sizeof(v));
    while (io_uring_peek_cqe(&u->ring, &cqe) == 0) {
        ec_page_req *r = io_uring_cqe_get_data(cqe);
        long res = cqe->res;

        io_uring_cqe_seen(&u->ring, cqe);
        u->inflight--;
        if (r->rc)
            goto finished; /* failed before any I/O: a NOP came back */
        if (r->fake_eof) {
            res = 0;
        } else if (r->fault == EC_FAULT_EIO) {
            res = -EIO;
        } else if (r->fault == EC_FAULT_SHORT || r->fault == EC_FAULT_SHORT_ONCE) {
            r->fake_eof = r->fault == EC_FAULT_SHORT && res > 0;
            r->fault = EC_FAULT_NONE;
        }
        if (ec_pager_account(r, res) == EC_READ_AGAIN) {
            enqueue(u, r, true); /* the rest of it goes next */
            continue;
        }
finished:
        ec_pager_verify(r);
        ec_pager_count(p, r);
        done(r, arg);
    }
    kick(p, u, true);
}

static void uring_close(ec_pager *p, void (*done)(ec_page_req *, void *), void *arg)
{
    struct uring *u = p->impl;

    if (u) {
        /* Reads in the kernel write into the segment: wait for them. */
        while (u->ring_ok && u->inflight) {
            struct io_uring_cqe *cqe;
            if (u->pending_sqes)
                kick(p, u, true);
            if (io_uring_wait_cqe(&u->ring, &cqe) < 0)
                break;
            ec_page_req *r = io_uring_cqe_get_data(cqe);
            io_uring_cqe_seen(&u->ring, cqe);
            u->inflight--;
            r->rc = EC_ECONN;
            snprintf(r->msg, sizeof(r->msg), "embcached is shutting down");
            done(r, arg);
        }
        for (int q = 0; q < 2; q++) {
            ec_page_req *r = u->head[q], *next;
            for (; r; r = next) {
                next = r->next;
                r->rc = EC_ECONN;
                snprintf(r->msg, sizeof(r->msg), "embcached is shutting down");
                done(r, arg);
            }
        }
        if (u->ring_ok)
            io_uring_queue_exit(&u->ring);
        free(u->iov);
        free(u->slot_used);
        free(u);
    }
    if (p->efd >= 0)
        close(p->efd);
}

const struct ec_pager_ops ec_pager_uring_ops = {
    .name = "io_uring",
    .open = uring_open,
    .close = uring_close,
    .submit = uring_submit,
    .flush = uring_flush,
    .reap = uring_reap,
    .file_add = uring_file_add,
    .file_del = uring_file_del,
};
