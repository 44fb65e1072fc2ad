/*
 * pager_remote.c - the pager's third source of bytes: the remote tier's
 * Redis Cluster, for tensors pulled lazily (`embcache pull --lazy`, see
 * core/publish.h), whose partition files hold their head (header,
 * partition table, block table) and a sparse data region until the data
 * is read.
 *
 * The engine (core/engine_fault.c, core/engine_rows.c) decides per
 * request: a partition, or a run of 4 KiB blocks, whose bytes are not in
 * the local file comes here (ec_page_req.remote) instead of to the
 * io_uring or pread backend. A request becomes one job of an ec_rpool
 * (core/rpool.h); jobs wait in two queues here, demand reads before
 * prewarm reads, and at most twice as many as there are workers are at
 * the pool at once. On a worker thread, with that worker's own cluster
 * handle, the job
 *
 *   1. works out the chunks ec:c:<model>:<version>:<t>:<p>:<k> that cover
 *      the bytes (a partition: all of its chunks; a block run: the chunks
 *      of each partition it overlaps that hold any of its bytes),
 *   2. GETs them all with ONE ec_rcluster_mget_into (grouped by slot owner,
 *      pipelined, the owners in parallel; MOVED, ASK and failovers are
 *      the handle's business),
 *   3. checks each value's length against the manifest's arithmetic and
 *      copies it into place (dest directly for a partition; a private
 *      buffer per partition for a block run, whose stride padding stays
 *      zero, as the block checksums expect),
 *   4. verifies dest exactly as a read from the file is (ec_pager_verify:
 *      the partition's XXH3-64, or every block's), so that a chunk
 *      overwritten on the cluster is EC_ECHECKSUM naming model, version,
 *      tensor, partition and chunk, never served,
 *   5. with keep, writes every partition it holds whole and verified
 *      (against the catalog's partition checksum) into the partition file
 *      through a descriptor of its own, fdatasync()s it, and reports it in
 *      kept_first/kept_n; the engine then marks it local. A block run
 *      keeps the partitions whose chunks it fetched whole (with 1 MiB
 *      chunks and partitions of at most 1 MiB, every partition it
 *      touches), never a part of one. Nothing is kept once the file
 *      system would have less than keep_reserve bytes free after the write
 *      (remote-keep-reserve): a full disk would stop the catalog and the
 *      write-ahead logs, and the bytes are still on the cluster.
 *
 * The pool's workers write the pager's event fd after a job is on their
 * finished list (rpool's wake_extra), so the engine's one event fd wakes
 * the server for both kinds of reads, and ec_pager_reap hands remote
 * completions back like any other. A cluster that cannot be reached fails
 * each job at once with EC_ECONN naming the cluster (the pool does not
 * retry an open for a second), while local and resident data is served
 * as before. Without --remote, a request for remote bytes fails with a
 * message saying to start embcached with --remote.
 *
 * Threads: ec_pager_remote_* on the server thread; run_job on the pool's
 * workers (it touches only its job, its request and the request's dest,
 * invariant 5 of engine_impl.h); job_done on the server thread.
 */
#include "core/pager_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/log.h"
#include "core/rpool.h"

#define KEY_MAX 600

/* Messages may be cut to fit EC_ERRMSG_MAX; that is fine. */
__attribute__((format(printf, 3, 4))) static void msgf(char *buf, size_t cap,
                                                       const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
}
#define MSG(buf, ...) msgf(buf, sizeof(buf), __VA_ARGS__)

struct job;

/* Jobs wait here, demand reads before prewarm reads, and at most
 * max_out of them are at the pool at once: a prewarm of a large version
 * cannot queue thousands of reads ahead of a client's. */
struct ec_pager_remote {
    ec_rpool *pool;
    char url[1024];
    ec_pager_remote_stats st;
    struct job *q[2], **qtail[2]; /* by enum ec_page_prio */
    unsigned out, max_out;
    /* ec_pager_remote_reap's caller, for job_done (server thread only). */
    void (*done)(ec_page_req *, void *);
    void *arg;
};

/* The bytes of one partition a job fetches: chunks k0..k1, which hold the
 * partition's bytes [from, from + len). */
struct seg {
    uint64_t part, k0, k1, from, len;
    uint8_t *buf;     /* dest (a partition read) or malloc'd (a block run) */
    bool owned, whole;
};

struct job {
    ec_rjob base;
    ec_pager *p;
    ec_page_req *r;
    struct job *next;  /* in a queue of ec_pager_remote */
    struct seg *segs;
    size_t nsegs;
    /* one entry per key */
    uint8_t **dst;
    size_t *want;
    uint32_t *seg_of;
    uint64_t *chunk_of;
    int err;
    char errmsg[EC_ERRMSG_MAX];
};

static uint64_t nchunks(uint64_t len, uint32_t chunk)
{
    return len / chunk + (len % chunk != 0);
}

/* Worker: one value of the MGET. */
static void chunk_cb(void *arg, size_t i, int status, const void *val, size_t len,
                     const char *msg)
{
    struct job *j = arg;
    const struct seg *g = &j->segs[j->seg_of[i]];

    if (status == 0 && len == j->want[i]) {
        if (val != j->dst[i])
            memcpy(j->dst[i], val, len);
        return;
    }
    if (j->err)
        return;
    if (status == 0 || status == EC_ENOENT) {
        j->err = EC_ECHECKSUM;
        if (status == 0)
            MSG(j->errmsg, "partition %" PRIu64 " chunk %" PRIu64
                " on the remote tier has %zu bytes, the manifest makes %zu (overwritten "
                "there?); publish the version again", g->part, j->chunk_of[i], len, j->want[i]);
        else
            MSG(j->errmsg, "partition %" PRIu64 " chunk %" PRIu64
                " is missing on the remote tier (unpublished, deleted or expired "
                "there?); publish the version again from a host that holds it whole",
                g->part, j->chunk_of[i]);
        return;
    }
    j->err = status;
    MSG(j->errmsg, "partition %" PRIu64 " chunk %" PRIu64 ": %.400s",
        g->part, j->chunk_of[i], msg ? msg : ec_strerror(status));
}

/* Worker: which partitions and chunks r needs. 0, or r->rc set. */
static int plan(struct job *j)
{
    ec_page_req *r = j->r;
    const ec_remote_src *s = r->remote;
    const ec_partfile_meta *m = &s->meta;

    if (!r->block_sums) {
        uint64_t len = r->part < m->partitions ? ec_partfile_part_length(m, r->part) : 0;
        if (r->part >= m->partitions || len != r->length)
            goto bad;
        if (!(j->segs = calloc(1, sizeof(*j->segs))))
            goto nomem;
        j->segs[0] = (struct seg){.part = r->part, .k0 = 0, .k1 = nchunks(len, s->chunk) - 1,
                                  .from = 0, .len = len, .buf = r->dest, .whole = true};
        j->nsegs = len ? 1 : 0;
        return 0;
    }
    {
        uint64_t a, b, p0, p1;
        if (r->file_off < m->data_off || m->stride == 0 || r->length == 0 ||
            r->file_off + r->length > m->file_size)
            goto bad;
        a = r->file_off - m->data_off;
        b = a + r->length;
        p0 = a / m->stride;
        p1 = (b - 1) / m->stride;
        if (p1 >= m->partitions)
            p1 = m->partitions - 1;
        if (p0 > p1)
            goto bad;
        if (!(j->segs = calloc(p1 - p0 + 1, sizeof(*j->segs))))
            goto nomem;
        memset(r->dest, 0, r->length); /* the padding between partitions */
        for (uint64_t p = p0; p <= p1; p++) {
            uint64_t ps = p * m->stride, lp = ec_partfile_part_length(m, p);
            uint64_t x = a > ps ? a : ps, y = b < ps + lp ? b : ps + lp, end;
            struct seg *g = &j->segs[j->nsegs];
            if (x >= y)
                continue; /* only its padding */
            g->part = p;
            g->k0 = (x - ps) / s->chunk;
            g->k1 = (y - ps - 1) / s->chunk;
            g->from = g->k0 * s->chunk;
            end = (g->k1 + 1) * s->chunk < lp ? (g->k1 + 1) * s->chunk : lp;
            g->len = end - g->from;
            g->whole = g->from == 0 && end == lp;
            g->owned = true;
            if (!(g->buf = malloc(g->len ? g->len : 1)))
                goto nomem;
            j->nsegs++;
        }
        return 0;
    }
nomem:
    r->rc = EC_ENOMEM;
    MSG(r->msg, "out of memory for a remote read of %u bytes", r->length);
    return -1;
bad:
    r->rc = EC_EINVAL;
    MSG(r->msg, "a remote read of %u bytes at offset %" PRIu64
        " (partition %u) does not fit the file's layout; this is a bug, please report it",
        r->length, r->file_off, r->part);
    return -1;
}

/* Worker: copy what a block run asked for out of the partitions' buffers. */
static void place(struct job *j)
{
    ec_page_req *r = j->r;
    const ec_partfile_meta *m = &r->remote->meta;
    uint64_t a = r->file_off - m->data_off, b = a + r->length;

    for (size_t i = 0; i < j->nsegs; i++) {
        const struct seg *g = &j->segs[i];
        uint64_t lo = g->part * m->stride + g->from, hi = lo + g->len;
        uint64_t x = a > lo ? a : lo, y = b < hi ? b : hi;
        if (x < y)
            memcpy(r->dest + (x - a), g->buf + (x - lo), y - x);
    }
}

/* Worker: after a failed verification, say which partition and chunk. */
static void blame(struct job *j)
{
    ec_page_req *r = j->r;
    const ec_remote_src *s = r->remote;
    const ec_partfile_meta *m = &s->meta;
    uint64_t part = r->part, chunk = 0;

    if (r->block_sums) {
        for (uint32_t i = 0; i < r->length / EC_PARTFILE_BLOCK; i++) {
            if (ec_checksum(r->dest + (size_t)i * EC_PARTFILE_BLOCK, EC_PARTFILE_BLOCK) ==
                r->block_sums[i])
                continue;
            uint64_t d = r->file_off - m->data_off + (uint64_t)i * EC_PARTFILE_BLOCK;
            part = d / m->stride;
            chunk = (d - part * m->stride) / s->chunk;
            break;
        }
    } else {
        /* The first chunk whose bytes differ is unknown: name the range. */
        chunk = nchunks(r->length, s->chunk) - 1;
        MSG(r->msg, "partition %" PRIu64 " (chunks 0..%" PRIu64 " of "
            "ec:c:%.64s:%" PRId64 ":%u:%" PRIu64 ") read from the remote tier fails its "
            "checksum: corrupted or overwritten on the cluster; not served; publish the "
            "version again", part, chunk, s->model, s->version,
            s->index, part);
        return;
    }
    MSG(r->msg, "partition %" PRIu64 " chunk %" PRIu64 " (ec:c:%.64s:%"
        PRId64 ":%u:%" PRIu64 ":%" PRIu64 ") read from the remote tier fails its block "
        "checksum: corrupted or overwritten on the cluster; not served; publish the "
        "version again", part, chunk, s->model, s->version, s->index, part, chunk);
}

/* Would the file system of fd keep at least reserve bytes free after len
 * more? A file system that cannot say is taken at its word (room). */
static bool room_for(int fd, uint64_t len, uint64_t reserve)
{
    struct statvfs v;

    if (fstatvfs(fd, &v) < 0)
        return true;
    return (uint64_t)v.f_bavail * v.f_frsize >= len + reserve;
}

/* Worker: write the partitions held whole and verified into the file. */
static void keep(struct job *j)
{
    ec_page_req *r = j->r;
    const ec_remote_src *s = r->remote;
    const ec_partfile_meta *m = &s->meta;
    uint64_t first = 0;
    uint32_t n = 0;
    int fd = -1;

    for (size_t i = 0; i < j->nsegs; i++) {
        const struct seg *g = &j->segs[i];
        uint64_t off = ec_partfile_part_offset(m, g->part), done = 0;
        if (!g->whole || (n && g->part != first + n))
            continue;
        /* A block run verified its blocks; the partition as a whole is
         * checked before it becomes local (a partition read already was). */
        if (g->owned && ec_checksum(g->buf, g->len) != s->part_checksums[g->part])
            continue;
        if (fd < 0 && (fd = open(s->path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) {
            ec_warn("remote tier: cannot open %s to keep what was read: %s", s->path,
                    strerror(errno));
            return;
        }
        if (!room_for(fd, g->len, r->keep_reserve)) {
            r->keep_no_space = true;
            break;
        }
        while (done < g->len) {
            ssize_t w = pwrite(fd, g->buf + done, g->len - done, (off_t)(off + done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                ec_warn("remote tier: writing partition %" PRIu64 " into %s: %s", g->part,
                        s->path, w < 0 ? strerror(errno) : "wrote nothing");
                n = 0; /* a torn write: its checksum catches it when it is read */
                goto out;
            }
            done += (uint64_t)w;
        }
        if (!n)
            first = g->part;
        n++;
    }
    if (n && fdatasync(fd) < 0) {
        ec_warn("remote tier: fdatasync of %s: %s", s->path, strerror(errno));
        n = 0;
    }
out:
    if (fd >= 0)
        close(fd);
    r->kept_first = first;
    r->kept_n = n;
}

/* Worker: the whole job. */
static void run_job(ec_rjob *base, ec_rcluster *rc)
{
    struct job *j = (struct job *)base;
    ec_page_req *r = j->r;
    const ec_remote_src *s = r->remote;
    char **keys = NULL;
    size_t *klen = NULL, n = 0, i = 0;
    int st;

    if (plan(j))
        goto out;
    for (size_t g = 0; g < j->nsegs; g++)
        n += (size_t)(j->segs[g].k1 - j->segs[g].k0 + 1);
    if (n == 0)
        goto verify; /* only padding: zeros */
    keys = calloc(n, sizeof(*keys));
    klen = calloc(n, sizeof(*klen));
    j->dst = calloc(n, sizeof(*j->dst));
    j->want = calloc(n, sizeof(*j->want));
    j->seg_of = calloc(n, sizeof(*j->seg_of));
    j->chunk_of = calloc(n, sizeof(*j->chunk_of));
    if (!keys || !klen || !j->dst || !j->want || !j->seg_of || !j->chunk_of)
        goto nomem;
    for (size_t g = 0; g < j->nsegs; g++) {
        const struct seg *sg = &j->segs[g];
        uint64_t lp = ec_partfile_part_length(&s->meta, sg->part);
        for (uint64_t k = sg->k0; k <= sg->k1; k++, i++) {
            uint64_t co = k * s->chunk;
            if (!(keys[i] = malloc(KEY_MAX)))
                goto nomem;
            klen[i] = (size_t)snprintf(keys[i], KEY_MAX, "ec:c:%s:%" PRId64 ":%u:%" PRIu64
                                       ":%" PRIu64, s->model, s->version, s->index, sg->part, k);
            j->dst[i] = sg->buf + (co - sg->from);
            j->want[i] = (size_t)(lp - co < s->chunk ? lp - co : s->chunk);
            j->seg_of[i] = (uint32_t)g;
            j->chunk_of[i] = k;
        }
    }
    /* Values land in dest straight from the socket (chunk_cb copies the
     * ones that did not). */
    st = ec_rcluster_mget_into(rc, (const char *const *)keys, klen, n, (void *const *)j->dst,
                               j->want, chunk_cb, j);
    if (j->err || st) {
        r->rc = j->err ? j->err : st;
        if (j->err)
            MSG(r->msg, "%s", j->errmsg);
        else
            MSG(r->msg, "%.900s", ec_last_error());
        goto out;
    }
    if (r->block_sums)
        place(j);
verify:
    ec_pager_verify(r);
    if (r->rc == EC_ECHECKSUM)
        blame(j);
    else if (r->rc == 0 && r->keep)
        keep(j);
    goto out;
nomem:
    r->rc = EC_ENOMEM;
    MSG(r->msg, "out of memory for a remote read of %zu chunks", n);
out:
    for (size_t k = 0; keys && k < n; k++)
        free(keys[k]);
    free(keys);
    free(klen);
    j->base.rc = r->rc;
}

static void job_free(struct job *j)
{
    for (size_t g = 0; g < j->nsegs; g++)
        if (j->segs[g].owned)
            free(j->segs[g].buf);
    free(j->segs);
    free(j->dst);
    free(j->want);
    free(j->seg_of);
    free(j->chunk_of);
    free(j);
}

/* Server thread: count it and hand it back. */
static void finish_req(ec_pager *p, ec_page_req *r, void (*done)(ec_page_req *, void *),
                       void *arg)
{
    struct ec_pager_remote *x = p->remote;

    if (x) {
        ec_hist_since(&x->st.read_seconds, r->submit_ns);
        if (r->rc == 0) {
            x->st.reads++;
            x->st.bytes += r->length;
            for (uint32_t k = 0; k < r->kept_n; k++)
                x->st.kept_bytes += ec_partfile_part_length(&r->remote->meta,
                                                            r->kept_first + k);
            if (r->keep_no_space)
                x->st.keep_skipped_space++;
            else if (r->keep && r->kept_n == 0 && !r->block_sums)
                x->st.keep_failures++;
        } else if (r->rc == EC_ECHECKSUM) {
            x->st.checksum_failures++;
        } else {
            x->st.errors++;
        }
    } else {
        p->remote_refused++;
    }
    done(r, arg);
}

/* Server thread: hand waiting jobs to the pool, demand reads first. */
static void pump(struct ec_pager_remote *x)
{
    while (x->out < x->max_out) {
        int k = x->q[EC_PAGE_DEMAND] ? EC_PAGE_DEMAND : EC_PAGE_PREWARM;
        struct job *j = x->q[k];
        if (!j)
            return;
        x->q[k] = j->next;
        if (!x->q[k])
            x->qtail[k] = &x->q[k];
        j->next = NULL;
        x->out++;
        ec_rpool_submit(x->pool, &j->base);
    }
}

static void job_done(ec_rjob *base)
{
    struct job *j = (struct job *)base;
    ec_pager *p = j->p;
    ec_page_req *r = j->r;

    if (p->remote->out)
        p->remote->out--;
    if (j->base.rc && !r->rc) { /* the pool failed it without running it */
        r->rc = j->base.rc;
        MSG(r->msg, "%s", j->base.msg);
    } else if ((r->rc == EC_ECONN || r->rc == EC_ETIMEOUT || r->rc == EC_EBUSY) &&
               !strstr(r->msg, p->remote->url)) {
        /* The cluster, not this partition: say which and what happens. */
        char m[EC_ERRMSG_MAX];
        snprintf(m, sizeof(m), "%s", r->msg);
        MSG(r->msg, "the remote tier's cluster (%.200s) cannot serve partition %u now; what "
            "is only there fails until it is back, local and resident data is served: %s",
            p->remote->url, r->part, m);
        /* One code for "the cluster cannot be had", whatever the way it
         * failed (refused, timed out, CLUSTERDOWN); the message keeps which. */
        r->rc = EC_ECONN;
    }
    job_free(j);
    if (p->remote->st.inflight)
        p->remote->st.inflight--;
    finish_req(p, r, p->remote->done, p->remote->arg);
    pump(p->remote);
}

int ec_pager_remote_open(ec_pager *p, const char *url, unsigned threads)
{
    struct ec_pager_remote *x;
    ec_rpool_config c = {.url = url, .threads = threads ? threads : 4, .name = "remote",
                         .wake_extra = true, .wake_fd = p->efd,
                         /* one job's MGET: a few MiB; a cluster that does not
                          * answer within this is reported, not waited for */
                         .opts = {.op_timeout_ms = 3000, .max_value_bytes = 80u << 20}};
    int rc;

    if (p->remote)
        return ec_seterr(EC_EINVAL, "the remote tier is open already");
    if (!(x = calloc(1, sizeof(*x))))
        return ec_seterr(EC_ENOMEM, "remote tier");
    snprintf(x->url, sizeof(x->url), "%s", url);
    x->max_out = 2 * c.threads;
    for (int k = 0; k < 2; k++)
        x->qtail[k] = &x->q[k];
    if ((rc = ec_rpool_open(&c, &x->pool))) {
        free(x);
        return rc;
    }
    p->remote = x;
    return 0;
}

const char *ec_pager_remote_url(const ec_pager *p)
{
    return p->remote ? p->remote->url : NULL;
}

void ec_pager_remote_submit(ec_pager *p, ec_page_req *r)
{
    struct job *j;

    r->rc = 0;
    r->msg[0] = '\0';
    r->kept_first = 0;
    r->kept_n = 0;
    r->keep_no_space = false;
    r->done = 0;
    r->retries = 0;
    r->direct = false;
    r->submit_ns = ec_hist_now_ns();
    if (!p->remote) {
        r->rc = EC_ECONN;
        MSG(r->msg, "partition %u was pulled lazily and is only on "
            "the remote tier, and this embcached has no remote tier: start embcached with "
            "--remote redis-cluster://host:port (the cluster it was pulled from)", r->part);
    } else if (!(j = calloc(1, sizeof(*j)))) {
        r->rc = EC_ENOMEM;
        MSG(r->msg, "out of memory queueing a remote read");
    } else {
        j->base.run = run_job;
        j->base.done = job_done;
        int k = r->prio == EC_PAGE_PREWARM ? EC_PAGE_PREWARM : EC_PAGE_DEMAND;
        j->p = p;
        j->r = r;
        p->remote->st.inflight++;
        *p->remote->qtail[k] = j;
        p->remote->qtail[k] = &j->next;
        pump(p->remote);
        return;
    }
    /* Failed at once: back through reap, like every completion. */
    r->next = NULL;
    *p->rfail_tail = r;
    p->rfail_tail = &r->next;
    {
        uint64_t one = 1;
        (void)!write(p->efd, &one, sizeof(one));
    }
}

void ec_pager_remote_reap(ec_pager *p, void (*done)(ec_page_req *, void *), void *arg)
{
    ec_page_req *r = p->rfail, *next;

    p->rfail = NULL;
    p->rfail_tail = &p->rfail;
    for (; r; r = next) {
        next = r->next;
        r->next = NULL;
        finish_req(p, r, done, arg);
    }
    if (p->remote) {
        p->remote->done = done;
        p->remote->arg = arg;
        ec_rpool_reap(p->remote->pool);
    }
}

void ec_pager_remote_close(ec_pager *p, void (*done)(ec_page_req *, void *), void *arg)
{
    struct ec_pager_remote *x = p->remote;

    ec_pager_remote_reap(p, done, arg);
    if (!x)
        return;
    x->done = done;
    x->arg = arg;
    x->max_out = 0; /* nothing more to the pool */
    for (int k = 0; k < 2; k++) {
        while (x->q[k]) {
            struct job *j = x->q[k];
            ec_page_req *r = j->r;
            x->q[k] = j->next;
            r->rc = EC_ECONN;
            MSG(r->msg, "the remote tier is shutting down");
            job_free(j);
            finish_req(p, r, done, arg);
        }
        x->qtail[k] = &x->q[k];
    }
    ec_rpool_close(x->pool); /* every job's done() runs in here */
    p->remote = NULL;
    free(x);
}

void ec_pager_remote_stats_get(ec_pager *p, ec_pager_remote_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (p->remote)
        *out = p->remote->st;
    out->errors += p->remote_refused;
    if (!p->remote)
        return;
    {
        ec_rcluster_stats cs;
        uint64_t open_failures = 0;
        ec_rpool_stats(p->remote->pool, &cs, &open_failures);
        out->redirects = cs.moved + cs.ask;
        out->retries = cs.retries;
        out->connect_failures = cs.connect_failures + open_failures;
    }
}
