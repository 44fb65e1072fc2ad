/*
 * engine_remote.c - which bytes of a lazily pulled tensor are local, and
 * the engine's side of the remote tier (the reads themselves are
 * core/pager_remote.c's).
 *
 * A tensor pulled with `embcache pull --lazy` (catalog: remote = true) has
 * a partition file whose head is whole and whose data region starts as one
 * hole. Per such tensor the engine keeps an ec_remote_src (what a remote
 * read needs) and a bitmap, one bit per partition: set when the
 * partition's bytes are in the file. It is built the first time the file
 * is opened, from the file itself: SEEK_DATA/SEEK_HOLE over the data
 * region, a partition being local when no hole falls inside its bytes (a
 * partition is written whole, by one worker's pwrite, and fdatasync'd
 * before its bit is set). That is a hint, not a proof, and it need not be
 * one: every local read is still verified, and a local read of such a
 * tensor that fails its checksum (a keep write torn by a crash, a file
 * system that reports holes as data) clears the bit and goes to the
 * cluster instead, which writes the partition again. A file system
 * without SEEK_HOLE reports the whole file as data; then the first read
 * of each partition fails its checksum locally (holes read as zeros) and
 * is fetched, which is slower but right.
 *
 * Why not a bitmap file of its own: it would have to be kept in step with
 * the data across crashes (write data, sync, write bit, sync), and the
 * file's own extents already say the same thing for free.
 *
 * Called by engine_files.c (open), engine_fault.c and engine_rows.c
 * (submit, completion) and engine.c (stats, close), on the server thread.
 */
#include "engine.h"
#include "core/engine_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"


void eng_remote_free(struct tstate *ts)
{
    free(ts->rsrc);
    free(ts->local);
    free(ts->ref);
    ts->rsrc = NULL;
    ts->local = NULL;
    ts->ref = NULL;
    ts->local_bytes = 0;
}

/* Partition p's bytes are in the file now (or no longer): the bit, and
 * the bytes engine_keep.c bounds. */
static void mark_local(struct tstate *ts, uint64_t p)
{
    if (!eng_bit(ts->local, p)) {
        eng_bit_set(ts->local, p);
        ts->local_bytes += ec_partfile_part_length(&ts->meta, p);
    }
}

void eng_remote_mark_remote(struct tstate *ts, uint64_t p)
{
    if (eng_bit(ts->local, p)) {
        eng_bit_clr(ts->local, p);
        ts->local_bytes -= ec_partfile_part_length(&ts->meta, p);
    }
}

/* Reads of partitions [p0, p1] served from the file: a reference each, for
 * the CLOCK that chooses what stays on disk (engine_keep.c). */
static void referenced(struct tstate *ts, uint64_t p0, uint64_t p1)
{
    for (uint64_t p = p0; p <= p1 && p < ts->meta.partitions; p++)
        eng_bit_set(ts->ref, p);
}

/* The partitions whose bytes lie in data, from the file's extents. */
static void scan(struct tstate *ts, int fd)
{
    const ec_partfile_meta *m = &ts->meta;
    uint64_t off = m->data_off, n = 0;

    while (off < m->file_size) {
        off_t d = lseek(fd, (off_t)off, SEEK_DATA), h;
        uint64_t p;

        if (d < 0)
            break; /* ENXIO: no data after off; else: treat the rest as remote */
        h = lseek(fd, d, SEEK_HOLE);
        if (h < 0)
            h = (off_t)m->file_size;
        p = ((uint64_t)d - m->data_off + m->stride - 1) / m->stride;
        for (; p < m->partitions; p++) {
            uint64_t po = ec_partfile_part_offset(m, p);
            if (po + ec_partfile_part_length(m, p) > (uint64_t)h)
                break;
            mark_local(ts, p);
            n++;
        }
        off = (uint64_t)h > off ? (uint64_t)h : off + 1;
    }
    for (uint64_t p = 0; p < m->partitions; p++)
        if (ec_partfile_part_length(m, p) == 0 && !eng_bit(ts->local, p)) {
            mark_local(ts, p);
            n++;
        }
    ec_debug("tensor '%s' of model '%s' version %lld: %llu of %llu partitions local, the "
             "rest on the remote tier", ts->cat.name, ts->cat.model, (long long)ts->cat.version,
             (unsigned long long)n, (unsigned long long)m->partitions);
}

int eng_remote_open(ec_engine *e, struct tstate *ts, int fd)
{
    ec_remote_src *s;

    (void)e;
    if (!ts->cat.remote)
        return 0;
    if (!ts->rsrc && !(ts->rsrc = calloc(1, sizeof(*ts->rsrc))))
        return ec_seterr(EC_ENOMEM, "remote source of tensor '%s'", ts->cat.name);
    s = ts->rsrc;
    snprintf(s->model, sizeof(s->model), "%s", ts->cat.model);
    s->version = ts->cat.version;
    snprintf(s->tensor, sizeof(s->tensor), "%s", ts->cat.name);
    s->index = ts->cat.remote_index;
    s->chunk = ts->cat.remote_chunk;
    s->meta = ts->meta;
    s->part_checksums = ts->cat.part_checksums;
    s->path = ts->path;
    if (!ts->local) {
        free(ts->ref);
        ts->ref = NULL;
        ts->local_bytes = 0;
        if (!(ts->local = calloc(ts->meta.partitions / 8 + 1, 1)) ||
            !(ts->ref = calloc(ts->meta.partitions / 8 + 1, 1))) {
            free(ts->local);
            ts->local = NULL;
            return ec_seterr(EC_ENOMEM, "local map of tensor '%s'", ts->cat.name);
        }
        scan(ts, fd);
    }
    return 0;
}

/* Refresh took a new file (no read of the tensor in flight): its checksums
 * and layout, and which partitions it holds. */
void eng_remote_reset(ec_engine *e, struct tstate *ts)
{
    if (!ts->cat.remote)
        return;
    free(ts->local);
    ts->local = NULL;
    ts->local_bytes = 0;
    if (eng_remote_open(e, ts, ts->fd))
        ec_warn("tensor '%s': %s; its partitions not on disk fail their reads", ts->cat.name,
                ec_last_error());
}

/* The source for a read of partitions [p0, p1], or NULL when they are all
 * local (or the tensor is all local). */
static const ec_remote_src *src_for(const struct tstate *ts, uint64_t p0, uint64_t p1)
{
    if (!ts->rsrc || !ts->local)
        return NULL;
    for (uint64_t p = p0; p <= p1 && p < ts->meta.partitions; p++)
        if (!eng_bit(ts->local, p))
            return ts->rsrc;
    return NULL;
}

void eng_remote_part(ec_engine *e, struct tstate *ts, uint32_t part, ec_page_req *r)
{
    r->remote = src_for(ts, part, part);
    r->keep = e->remote_keep;
    r->keep_reserve = e->remote_keep_reserve;
    if (r->remote)
        e->st.remote_submits++;
    else if (ts->local)
        referenced(ts, part, part);
}

void eng_remote_blocks(ec_engine *e, struct tstate *ts, uint64_t first, uint32_t n,
                       ec_page_req *r)
{
    const ec_partfile_meta *m = &ts->meta;
    uint64_t a = first * EC_PARTFILE_BLOCK, b = a + (uint64_t)n * EC_PARTFILE_BLOCK;

    r->remote = NULL;
    r->keep = e->remote_keep;
    r->keep_reserve = e->remote_keep_reserve;
    if (!ts->rsrc || !m->stride || n == 0)
        return;
    r->remote = src_for(ts, a / m->stride, (b - 1) / m->stride);
    if (r->remote)
        e->st.remote_submits++;
    else if (ts->local)
        referenced(ts, a / m->stride, (b - 1) / m->stride);
}

void eng_remote_done(ec_engine *e, struct tstate *ts, const ec_page_req *r)
{
    if (!r->remote || !ts->local)
        return;
    /* A new partition on disk starts unreferenced: a scan read once does
     * not push out what is read again and again (engine_keep.c). */
    for (uint32_t k = 0; k < r->kept_n; k++)
        if (r->kept_first + k < ts->meta.partitions)
            mark_local(ts, r->kept_first + k);
    if (r->kept_n || r->keep_no_space)
        eng_keep_due(e);
}

bool eng_remote_retry(ec_engine *e, struct tstate *ts, const ec_page_req *r)
{
    const ec_partfile_meta *m = &ts->meta;
    uint64_t p0, p1;

    if (r->rc != EC_ECHECKSUM || r->remote || !ts->rsrc || !ts->local ||
        !ec_pager_remote_url(e->pager) || ts->retired)
        return false;
    if (r->block_sums) {
        uint64_t a = r->file_off - m->data_off;
        p0 = a / m->stride;
        p1 = (a + r->length - 1) / m->stride;
    } else {
        p0 = p1 = r->part;
    }
    for (uint64_t p = p0; p <= p1 && p < m->partitions; p++)
        eng_remote_mark_remote(ts, p);
    e->st.remote_local_refetches++;
    ec_warn("%s (no re-import needed: the version was pulled lazily, so the partition is "
            "read from the remote tier again and rewritten)", r->msg);
    return true;
}

int eng_remote_stats(ec_engine *e, int (*cb)(const char *name, uint64_t v, void *arg), void *arg)
{
    ec_pager_remote_stats s;
    uint64_t local = 0, remote = 0, disk = 0;
    int rc;

    ec_pager_remote_stats_get(e->pager, &s);
    for (size_t i = 0; i < e->tensors.cap; i++) {
        struct tstate *ts = e->tensors.vals[i];
        if (!e->tensors.keys[i] || !ts->local)
            continue;
        disk += ts->local_bytes;
        for (uint64_t p = 0; p < ts->meta.partitions; p++)
            if (eng_bit(ts->local, p))
                local++;
            else
                remote++;
    }
#define S(name, v)                                     \
    do {                                               \
        if ((rc = cb(name, (uint64_t)(v), arg)) != 0)  \
            return rc;                                 \
    } while (0)
    S("remote_tier", ec_pager_remote_url(e->pager) != NULL);
    S("remote_reads", s.reads);
    S("remote_bytes", s.bytes);
    S("remote_errors", s.errors);
    S("remote_checksum_failures", s.checksum_failures);
    S("remote_kept_bytes", s.kept_bytes);
    S("remote_keep_failures", s.keep_failures);
    S("remote_keep_skipped_space", s.keep_skipped_space);
    S("remote_inflight", s.inflight);
    S("remote_redirects", s.redirects);
    S("remote_retries", s.retries);
    S("remote_connect_failures", s.connect_failures);
    S("remote_local_refetches", e->st.remote_local_refetches);
    S("remote_partitions_local", local);
    S("remote_partitions_remote", remote);
    S("remote_disk_bytes", disk);
    S("remote_disk_evictions", e->keep.evictions);
    S("remote_disk_evicted_bytes", e->keep.evicted_bytes);
#undef S
    return 0;
}

void ec_engine_remote_hist(ec_engine *e, ec_hist *out)
{
    ec_pager_remote_stats s;

    ec_pager_remote_stats_get(e->pager, &s);
    *out = s.read_seconds;
}

void ec_engine_set_remote_keep(ec_engine *e, bool keep, uint64_t reserve, uint64_t max)
{
    e->remote_keep = keep;
    e->remote_keep_reserve = reserve;
    e->keep.max = max;
    eng_keep_due(e);
}
