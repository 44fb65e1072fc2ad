/*
 * engine_keep.c - the disk that partitions kept from the remote tier take,
 * bounded.
 *
 * A version pulled lazily (`embcache pull --lazy`) has its data on the
 * Redis Cluster; with remote-keep, what is read from there is written into
 * the partition file (core/pager_remote.c), and engine_remote.c's bitmap
 * `local` says which partitions are. Those copies are a cache of the
 * cluster, and a cache has to let go: once a day's traffic has touched a
 * few versions, their kept bytes would otherwise fill the data directory
 * until remote-keep-reserve stops any more from being kept, and from then
 * on a partition that turns hot is read from the cluster every time while
 * yesterday's cold ones hold the disk.
 *
 * So the engine removes the coldest kept partitions again (a hole punched
 * over their bytes: the file keeps its size and its head, and a later read
 * goes to the cluster and keeps it anew) when
 *
 *   - the data directory's file system has less than remote-keep-reserve
 *     plus a margin free (the margin: a sixteenth of the reserve, at least
 *     16 MiB); it then frees until twice the margin is free above the
 *     reserve, so keeping and removing do not alternate at one partition;
 *   - remote-keep-max is set and the kept bytes pass it; it then frees
 *     down to fifteen sixteenths of it.
 *
 * Which ones: a CLOCK over the kept partitions of every lazily pulled
 * tensor. `ref` (one bit per partition, engine_remote.c) is set when a
 * read is served from the file; the hand clears it as it passes and takes
 * a partition whose bit is clear. A partition just kept starts clear, so a
 * version read once from end to end does not push out what is read again
 * and again. A partition resident in memory is passed over in a first
 * sweep (its disk copy is not what serves it now) and taken only when a
 * sweep over everything else did not free enough.
 *
 * Never touched:
 *   - a tensor that is not lazily pulled: its file is the only copy;
 *   - anything while the daemon has no remote tier (--remote): then the
 *     kept bytes are the only copy it can reach;
 *   - a tensor with reads of its file in flight (partition or block reads):
 *     a read never sees its bytes punched under it. The server thread both
 *     starts reads and punches, so "none in flight" holds while it punches.
 *
 * After a restart the kept partitions of tensors not yet read are on disk
 * too, so the engine first takes an inventory: it lists the lazily pulled
 * tensors from the catalog and opens a few per tick (engine_remote.c scans
 * each file's holes on open).
 *
 * A punch that is lost in a crash leaves the bytes in the file: the
 * partition is local again after the restart, and its bytes are still
 * verified on every read. No fsync is needed.
 *
 * Runs on the server thread, from ec_engine_tick (every 100 ms; the disk is
 * looked at once a second, or at the next tick after a keep or a skip).
 */
#include "engine.h"
#include "core/engine_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/log.h"

#define CHECK_S 1.0                 /* look at the disk at least this often */
#define INVENTORY_PER_TICK 8u       /* tensors opened per tick for the inventory */
#define PUNCH_PER_TICK 4096u        /* partitions removed per tick at most */
#define MARGIN_MIN (16ull << 20)

void eng_keep_due(ec_engine *e)
{
    e->keep.due = true;
}

void eng_keep_close(ec_engine *e)
{
    free(e->keep.todo);
    e->keep.todo = NULL;
    e->keep.ntodo = e->keep.next = 0;
}

/* Open a few of the lazily pulled tensors not open yet. */
static void inventory(ec_engine *e)
{
    unsigned opened = 0;

    if (!e->keep.listed) {
        e->keep.listed = true;
        if (ec_catalog_remote_tensors(e->cat, &e->keep.todo, &e->keep.ntodo) < 0) {
            ec_warn("the partitions kept from the remote tier are not counted: %s; they are "
                    "counted as their tensors are read", ec_last_error());
            return;
        }
    }
    while (e->keep.next < e->keep.ntodo && opened < INVENTORY_PER_TICK) {
        uint32_t id = e->keep.todo[e->keep.next++];
        struct tstate *ts;
        int rc;
        if (ec_u64map_get(&e->tensors, id))
            continue;
        opened++;
        rc = eng_tensor_get(e, id, &ts);
        if (rc && rc != EC_ENOENT) /* ENOENT: its version was dropped since */
            ec_warn("the partitions kept of tensor %" PRIu32 " are not counted: %s", id,
                    ec_last_error());
    }
    if (e->keep.next == e->keep.ntodo && e->keep.todo) {
        eng_keep_close(e);
        e->keep.due = true;
    }
}

static uint64_t kept_bytes(const ec_engine *e)
{
    uint64_t n = 0;

    for (size_t i = 0; i < e->tensors.cap; i++)
        if (e->tensors.keys[i]) {
            const struct tstate *ts = e->tensors.vals[i];
            n += ts->local_bytes;
        }
    return n;
}

/* The bytes the file system of the data directory has free; UINT64_MAX
 * when it cannot say (then only remote-keep-max bounds what is kept). */
static uint64_t disk_free(const ec_engine *e)
{
    struct statvfs v;

    if (statvfs(e->data_dir, &v) < 0)
        return UINT64_MAX;
    return (uint64_t)v.f_bavail * v.f_frsize;
}

/* May the hand take partitions of ts now? */
static bool evictable(const struct tstate *ts)
{
    return ts->cat.remote && ts->local && ts->ref && ts->rsrc && ts->local_bytes &&
           !ts->retired && ts->inflight == 0 && ts->row_jobs == 0;
}

static bool resident(const ec_engine *e, const struct tstate *ts, uint64_t p)
{
    return (ts->group && !ts->group->loading) ||
           ec_u64map_get(&e->resident, EC_INDEX_KEY((uint32_t)ts->cat.id, (uint32_t)p));
}

struct sweep {
    uint64_t need, freed;
    unsigned punched;
    bool resident_too;
    bool stop;                  /* a punch failed: not again this tick */
};

/* Remove partition p of ts from its file (fd, opened for writing). */
static bool punch(ec_engine *e, struct tstate *ts, int fd, uint64_t p, struct sweep *w)
{
    const ec_partfile_meta *m = &ts->meta;
    uint64_t off = ec_partfile_part_offset(m, p), len = ec_partfile_part_length(m, p);
    uint64_t span = (len + EC_PARTFILE_BLOCK - 1) / EC_PARTFILE_BLOCK * EC_PARTFILE_BLOCK;

    /* The partition's blocks: whole, so that its bytes become a hole (the
     * scan at the next open reads them as remote); the padding to the
     * next partition is the partition's own. */
    if (off + span > m->file_size)
        span = m->file_size - off;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)span) < 0) {
        if (errno == EOPNOTSUPP || errno == ENOSYS) {
            e->keep.cannot_punch = true;
            ec_warn("the file system of %s cannot punch holes: partitions kept from the "
                    "remote tier are not removed again; bound them with remote-keep false "
                    "or a data directory on ext4, XFS or tmpfs", e->data_dir);
        } else {
            ec_warn("removing partition %" PRIu64 " of tensor '%s' kept from the remote tier "
                    "(%s): %s; tried again in a second", p, ts->cat.name, ts->path,
                    strerror(errno));
        }
        w->stop = true;
        return false;
    }
    eng_remote_mark_remote(ts, p);
    e->keep.evictions++;
    e->keep.evicted_bytes += len;
    w->freed += len;
    w->punched++;
    return true;
}

/* Walk ts from partition p0 with the hand; true when the sweep is done. */
static bool sweep_tensor(ec_engine *e, struct tstate *ts, uint64_t p0, struct sweep *w)
{
    int fd = -1;
    uint64_t p;

    for (p = p0; p < ts->meta.partitions; p++) {
        if (!eng_bit(ts->local, p) || ec_partfile_part_length(&ts->meta, p) == 0)
            continue;
        if (!w->resident_too && resident(e, ts, p))
            continue;
        if (eng_bit(ts->ref, p)) {
            eng_bit_clr(ts->ref, p);
            continue;
        }
        if (fd < 0 && (fd = open(ts->path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)) < 0) {
            ec_warn("cannot open %s to remove partitions kept from the remote tier: %s",
                    ts->path, strerror(errno));
            w->stop = true;
            break;
        }
        if (!punch(e, ts, fd, p, w) || w->freed >= w->need || w->punched >= PUNCH_PER_TICK) {
            p++;
            break;
        }
    }
    if (fd >= 0)
        close(fd);
    e->keep.hand_p = p;
    return w->stop || w->freed >= w->need || w->punched >= PUNCH_PER_TICK;
}

/* Two turns of the hand over every tensor: the first clears the bits the
 * second then finds clear. */
static void sweep(ec_engine *e, struct sweep *w)
{
    size_t cap = e->tensors.cap;

    if (!cap)
        return;
    for (size_t step = 0; step <= 2 * cap; step++) {
        size_t i = e->keep.hand % cap;
        struct tstate *ts = e->tensors.keys[i] ? e->tensors.vals[i] : NULL;
        uint64_t p0 = e->keep.hand_p;
        if (ts && evictable(ts) && p0 < ts->meta.partitions && sweep_tensor(e, ts, p0, w))
            return;
        e->keep.hand = (i + 1) % cap;
        e->keep.hand_p = 0;
    }
}

static void evict(ec_engine *e, uint64_t need)
{
    struct sweep w = {.need = need};

    sweep(e, &w);
    if (w.freed < need && !w.stop && w.punched < PUNCH_PER_TICK) {
        w.resident_too = true;
        sweep(e, &w);
    }
    if (w.punched)
        ec_debug("removed %u partition(s), %" PRIu64 " bytes, kept from the remote tier",
                 w.punched, w.freed);
    if (w.freed < need && w.punched >= PUNCH_PER_TICK)
        e->keep.due = true; /* more at the next tick */
}

void eng_keep_tick(ec_engine *e)
{
    double now;
    uint64_t kept, free, need = 0, margin, reserve;

    if (!ec_pager_remote_url(e->pager) || e->keep.cannot_punch)
        return;
    if (!e->keep.listed || e->keep.todo)
        inventory(e);
    now = mono_now();
    if (!e->keep.due && now - e->keep.checked < CHECK_S)
        return;
    e->keep.due = false;
    e->keep.checked = now;
    if (!(kept = kept_bytes(e)))
        return;
    if (e->keep.max && kept > e->keep.max)
        need = kept - (e->keep.max - e->keep.max / 16);
    /* A reserve beyond any disk (tests use 1000T) must not wrap. */
    reserve = e->remote_keep_reserve < UINT64_MAX / 4 ? e->remote_keep_reserve : UINT64_MAX / 4;
    margin = reserve / 16 > MARGIN_MIN ? reserve / 16 : MARGIN_MIN;
    free = disk_free(e);
    if (free != UINT64_MAX && free < reserve + margin && reserve + 2 * margin - free > need)
        need = reserve + 2 * margin - free;
    if (need)
        evict(e, need);
}
