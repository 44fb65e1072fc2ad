/*
 * pager.c - choosing a pager backend, and what every read ends with: the
 * retry decisions for short reads, EAGAIN and EINTR, checksum verification
 * (one checksum per partition read, one per 4 KiB block for block reads),
 * statistics and the fault hook (see pager.h). Server thread, except
 * ec_pager_account/verify/what, which touch only the request and also run
 * on the pread backend's reader threads.
 */
#include "core/pager_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "core/partfile.h"

static void drop_req(ec_page_req *r, void *arg)
{
    (void)r;
    (void)arg;
}

int ec_pager_open(const ec_pager_config *cfg, ec_pager **out)
{
    ec_pager *p = calloc(1, sizeof(*p));
    enum ec_pager_kind kind = cfg->kind;
    const char *env = getenv("EMBCACHE_PAGER");
    int rc;

    if (!p)
        return ec_seterr(EC_ENOMEM, "pager");
    p->cfg = *cfg;
    if (!p->cfg.queue_depth)
        p->cfg.queue_depth = 64;
    if (!p->cfg.threads)
        p->cfg.threads = 2;
    p->efd = -1;
    p->rfail_tail = &p->rfail;
    if (kind == EC_PAGER_AUTO && env) {
        if (!strcmp(env, "pread"))
            kind = EC_PAGER_PREAD;
        else if (!strcmp(env, "io_uring"))
            kind = EC_PAGER_URING;
    }
    if (kind != EC_PAGER_PREAD) {
        p->ops = &ec_pager_uring_ops;
        rc = p->ops->open(p);
        if (rc == 0)
            goto ok;
        p->ops->close(p, drop_req, NULL);
        p->impl = NULL;
        p->efd = -1;
        if (kind == EC_PAGER_URING) {
            free(p);
            return rc;
        }
        ec_warn("io_uring is not available (%s): reading partitions with a pool of %u "
                "pread threads instead", ec_last_error(), p->cfg.threads);
    }
    p->ops = &ec_pager_pread_ops;
    rc = p->ops->open(p);
    if (rc) {
        p->ops->close(p, drop_req, NULL);
        free(p);
        return rc;
    }
ok:
    *out = p;
    return 0;
}

void ec_pager_close(ec_pager *p, void (*done)(ec_page_req *r, void *arg), void *arg)
{
    if (!p)
        return;
    ec_pager_remote_close(p, done, arg);
    p->ops->close(p, done, arg);
    free(p);
}

const char *ec_pager_name(const ec_pager *p)
{
    return p->ops->name;
}

const char *ec_pager_describe(const ec_pager *p)
{
    return p->desc;
}

int ec_pager_file_add(ec_pager *p, int fd)
{
    return fd >= 0 && p->ops->file_add ? p->ops->file_add(p, fd) : -1;
}

void ec_pager_file_del(ec_pager *p, int slot)
{
    if (slot >= 0 && p->ops->file_del)
        p->ops->file_del(p, slot);
}

void ec_pager_submit(ec_pager *p, ec_page_req *r)
{
    if (r->remote) {
        ec_pager_remote_submit(p, r);
        return;
    }
    ec_pager_prepare(p, r);
    r->submit_ns = ec_hist_now_ns();
    p->ops->submit(p, r);
}

void ec_pager_flush(ec_pager *p)
{
    if (p->ops->flush)
        p->ops->flush(p);
}

int ec_pager_event_fd(const ec_pager *p)
{
    return p->efd;
}

struct reap_ctx {
    ec_pager *p;
    void (*done)(ec_page_req *r, void *arg);
    void *arg;
};

/* Each completion: its latency into the histogram, then the caller's. */
static void reaped(ec_page_req *r, void *arg)
{
    struct reap_ctx *c = arg;

    ec_hist_since(&c->p->st.read_seconds, r->submit_ns);
    c->done(r, c->arg);
}

void ec_pager_reap(ec_pager *p, void (*done)(ec_page_req *r, void *arg), void *arg)
{
    struct reap_ctx c = {.p = p, .done = done, .arg = arg};

    /* The backend first: it drains the event fd, which the remote tier's
     * workers also write after a job is on their finished list, so a job
     * finished after the drain is either taken below or wakes the next
     * poll. */
    p->ops->reap(p, reaped, &c);
    ec_pager_remote_reap(p, done, arg);
}

void ec_pager_stats_get(const ec_pager *p, ec_pager_stats *out)
{
    *out = p->st;
}

void ec_pager_inject(ec_pager *p, enum ec_fault_kind kind, unsigned every_nth)
{
    p->fault = every_nth ? kind : EC_FAULT_NONE;
    p->fault_every = every_nth;
    p->fault_count = 0;
}

const char *ec_pager_what(const ec_page_req *r, char *buf, size_t len)
{
    if (r->block_sums) {
        uint64_t n = r->length / EC_PARTFILE_BLOCK;
        snprintf(buf, len, "blocks %llu..%llu of %s", (unsigned long long)r->block,
                 (unsigned long long)(r->block + (n ? n - 1 : 0)), r->path);
    } else {
        snprintf(buf, len, "partition %u of %s", r->part, r->path);
    }
    return buf;
}

void ec_pager_prepare(ec_pager *p, ec_page_req *r)
{
    r->done = 0;
    r->retries = 0;
    r->rc = 0;
    r->msg[0] = '\0';
    r->fake_eof = false;
    r->fault = EC_FAULT_NONE;
    r->direct = false;
    if (r->block_sums && (r->length == 0 || r->length % EC_PARTFILE_BLOCK != 0 ||
                          r->io_len != r->length || r->file_off % EC_PARTFILE_BLOCK != 0)) {
        /* A caller's bug: fail the request, do no I/O (see pager_impl.h). */
        r->rc = EC_EINVAL;
        snprintf(r->msg, sizeof(r->msg), "block read of %s: %u bytes (io_len %u) at offset "
                 "%llu are not whole 4 KiB blocks; this is a bug, please report it",
                 r->path, r->length, r->io_len, (unsigned long long)r->file_off);
        return;
    }
    r->direct = r->direct_ok && r->dfd >= 0 && r->io_len >= r->length &&
                r->io_len % EC_PARTFILE_ALIGN == 0 && r->file_off % EC_PARTFILE_ALIGN == 0 &&
                (uintptr_t)r->dest % EC_PARTFILE_ALIGN == 0;
    if (p->fault != EC_FAULT_NONE && ++p->fault_count % p->fault_every == 0)
        r->fault = p->fault;
    /* Half of a one-page direct read is no valid O_DIRECT read: inject the
     * short read into a buffered one. */
    if ((r->fault == EC_FAULT_SHORT || r->fault == EC_FAULT_SHORT_ONCE) && r->direct &&
        r->io_len < 2 * EC_PARTFILE_ALIGN)
        r->direct = false;
}

enum ec_read_next ec_pager_account(ec_page_req *r, long n)
{
    char what[EC_ERRMSG_MAX];

    if (n == -EAGAIN || n == -EINTR) {
        if (++r->retries <= EC_PAGER_MAX_RETRIES)
            return EC_READ_AGAIN;
        r->rc = EC_EIO;
        snprintf(r->msg, sizeof(r->msg), "%s: the read kept failing (%s) after %d retries",
                 ec_pager_what(r, what, sizeof(what)), strerror((int)-n),
                 EC_PAGER_MAX_RETRIES);
        return EC_READ_DONE;
    }
    if (n == -EINVAL && r->direct) {
        /* The file system refused O_DIRECT after all: go on buffered. */
        r->direct = false;
        return EC_READ_AGAIN;
    }
    if (n < 0) {
        r->rc = EC_EIO;
        snprintf(r->msg, sizeof(r->msg), "%s: read failed: %s",
                 ec_pager_what(r, what, sizeof(what)), strerror((int)-n));
        return EC_READ_DONE;
    }
    if (n == 0) {
        /* End of file. O_DIRECT reads whole pages; the data may end inside the
         * last one, and that is enough. */
        if (r->done >= r->length)
            return EC_READ_DONE;
        r->rc = EC_EIO;
        snprintf(r->msg, sizeof(r->msg), "%s: the file ends %u bytes into the %s %u "
                 "(truncated after import?); re-import the model version",
                 ec_pager_what(r, what, sizeof(what)), r->done,
                 r->block_sums ? "blocks'" : "partition's", r->length);
        return EC_READ_DONE;
    }
    r->done += (uint32_t)n;
    if (r->done >= ec_pager_want(r))
        return EC_READ_DONE;
    /* A short read: go on from where it stopped. O_DIRECT needs whole pages,
     * so an odd-sized remainder continues buffered. */
    r->retries++;
    if (r->direct && r->done % EC_PARTFILE_ALIGN)
        r->direct = false;
    if (r->done >= r->length && !r->direct)
        return EC_READ_DONE;
    return EC_READ_AGAIN;
}

void ec_pager_verify(ec_page_req *r)
{
    uint64_t got;

    if (r->rc)
        return;
    if (r->block_sums) {
        for (uint32_t i = 0; i < r->length / EC_PARTFILE_BLOCK; i++) {
            got = ec_checksum(r->dest + (size_t)i * EC_PARTFILE_BLOCK, EC_PARTFILE_BLOCK);
            if (got == r->block_sums[i])
                continue;
            r->rc = EC_ECHECKSUM;
            snprintf(r->msg, sizeof(r->msg), "block %llu of %s failed its checksum (expected "
                     "%016llx, computed %016llx): the data on disk is damaged; re-import "
                     "the model version", (unsigned long long)(r->block + i), r->path,
                     (unsigned long long)r->block_sums[i], (unsigned long long)got);
            return;
        }
        return;
    }
    got = ec_checksum(r->dest, r->length);
    if (got != r->checksum) {
        r->rc = EC_ECHECKSUM;
        snprintf(r->msg, sizeof(r->msg), "partition %u of %s failed its checksum (expected "
                 "%016llx, computed %016llx): the data on disk is damaged; re-import the "
                 "model version", r->part, r->path, (unsigned long long)r->checksum,
                 (unsigned long long)got);
    }
}

void ec_pager_count(ec_pager *p, const ec_page_req *r)
{
    p->st.retries += r->retries;
    if (r->rc == 0) {
        p->st.reads++;
        p->st.bytes += r->length;
        if (r->direct)
            p->st.direct_reads++;
        if (r->block_sums)
            p->st.block_reads++;
    } else if (r->rc == EC_ECHECKSUM) {
        p->st.checksum_failures++;
    } else {
        p->st.errors++;
    }
}
