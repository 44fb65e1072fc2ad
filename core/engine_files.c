/*
 * engine_files.c - the partition files the engine keeps open: a bounded set.
 *
 * A tensor's reads need two descriptors of its partition file: a buffered
 * one (headers, checksum tables, reads O_DIRECT cannot do) and an O_DIRECT
 * one (registered with the pager). Keeping both open for every tensor ever
 * resolved runs a daemon with many tensors out of descriptors: 117 tensors
 * took a 256-descriptor limit, and then connections and imports failed. So
 * the files are opened when a tensor is used and closed, least recently
 * used first, when more than files_max tensors have theirs open; a tensor
 * with reads in flight or queued (its partition jobs and block reads hold
 * its descriptors) is never closed. Every (re)open checks the file against
 * the catalog's header checksum and layout, so a file replaced while closed
 * is refused, never served.
 *
 * files_max is a quarter of the descriptor limit (soft RLIMIT_NOFILE, read
 * at open), two descriptors per tensor: half the limit, the rest left to
 * connections, imports and the pager.
 *
 * Called by the engine on the server thread (eng_tensor_get, refresh,
 * retire, close).
 */
#include "engine.h"
#include "core/engine_impl.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/log.h"

void eng_files_init(ec_engine *e)
{
    struct rlimit rl;
    uint64_t n = 256;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        n = rl.rlim_cur == RLIM_INFINITY ? 1u << 20 : (uint64_t)rl.rlim_cur;
    e->files_max = n / 4 > 4 ? n / 4 : 4;
    e->files_open = 0;
}

void eng_files_close(ec_engine *e, struct tstate *ts)
{
    if (ts->fd < 0 && ts->dfd < 0)
        return;
    ec_pager_file_del(e->pager, ts->file_slot);
    if (ts->fd >= 0)
        close(ts->fd);
    if (ts->dfd >= 0)
        close(ts->dfd);
    ts->fd = ts->dfd = ts->file_slot = -1;
    if (e->files_open)
        e->files_open--;
}

/* Close the least recently used tensor files that no read needs, until
 * there is room for one more. */
static void make_room(ec_engine *e, const struct tstate *keep)
{
    while (e->files_open >= e->files_max) {
        struct tstate *lru = NULL;
        for (size_t i = 0; i < e->tensors.cap; i++) {
            struct tstate *ts = e->tensors.vals[i];
            if (!e->tensors.keys[i] || ts == keep || ts->fd < 0 || ts->inflight ||
                ts->row_jobs)
                continue;
            if (!lru || ts->files_used < lru->files_used)
                lru = ts;
        }
        if (!lru)
            return; /* every open file is being read: go over, for now */
        eng_files_close(e, lru);
        e->st.files_closed++;
    }
}

/* Adopt fd (the buffered descriptor of ts's file, already checked) and open
 * the O_DIRECT one beside it. */
void eng_files_adopt(ec_engine *e, struct tstate *ts, int fd)
{
    eng_files_close(e, ts);
    make_room(e, ts);
    ts->fd = fd;
    /* O_DIRECT where the file system allows it (not tmpfs): reads then go
     * from the device into the segment without the page cache. */
    ts->dfd = open(ts->path, O_RDONLY | O_DIRECT | O_CLOEXEC | O_NOFOLLOW);
    ts->file_slot = ec_pager_file_add(e->pager, ts->dfd);
    ts->files_used = ++e->files_clock;
    e->files_open++;
}

int eng_files_open(ec_engine *e, struct tstate *ts)
{
    ec_partfile_meta m;
    int fd = -1, rc;

    if (ts->fd >= 0) {
        ts->files_used = ++e->files_clock;
        return 0;
    }
    make_room(e, ts);
    rc = ec_partfile_open(ts->path, &m, &fd);
    if (rc)
        return ec_adderr(rc, "tensor '%s' of model '%s' version %lld", ts->cat.name,
                         ts->cat.model, (long long)ts->cat.version);
    if (m.header_checksum != ts->cat.header_checksum || m.partitions != ts->cat.partitions ||
        m.rows != ts->cat.rows || m.row_bytes != ts->cat.row_bytes ||
        m.rows_per_partition != ts->cat.rows_per_partition) {
        close(fd);
        return ec_seterr(EC_ECORRUPT,
                         "partition file %s of tensor '%s' (model '%s' version %lld) is not the "
                         "file that was imported; re-import the version, or run `embcache "
                         "refresh` if it was changed on purpose",
                         ts->path, ts->cat.name, ts->cat.model, (long long)ts->cat.version);
    }
    ts->meta = m;
    if ((rc = eng_remote_open(e, ts, fd))) {
        close(fd);
        return rc;
    }
    eng_files_adopt(e, ts, fd);
    e->st.files_opened++;
    return 0;
}
