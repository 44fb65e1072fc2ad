/*
 * segment.c - create, re-attach, map and validate the shared segment
 * (see segment.h and layout.h).
 *
 * Called by the daemon (ec_segment_create / _seal / _attach /
 * _open_readonly, from its start-up path and its server thread) and by
 * clients (ec_segment_map_fd, once per connection). Every function is synchronous
 * and keeps no state outside the ec_segment it fills, so any thread may call
 * it; one ec_segment must not be closed while another thread uses it.
 *
 * The layout is computed by ec_segment_plan() alone; ec_segment_validate()
 * checks every header field a reader relies on, with overflow-safe
 * arithmetic, before any derived pointer is formed. Nothing read from the
 * mapping, a kept segment, a received descriptor or fstat() is trusted
 * until it has been checked.
 */
#include "shm/segment.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"

#define EC_SEG_PREFIX "/embcache-"
#define EC_SEG_PREFIX_LEN (sizeof(EC_SEG_PREFIX) - 1)
#define EC_SEG_HEX_LEN 32
#define EC_SEG_NAME_LEN (EC_SEG_PREFIX_LEN + EC_SEG_HEX_LEN)

#define EC_SEG_MIN_SIZE (1ull << 20)
#define EC_SEG_MAX_SIZE (1ull << 50) /* 1 PiB: far beyond any host, keeps math small */
#define EC_SEG_HUGE_ALIGN (2ull << 20)

static_assert(EC_SEG_NAME_LEN < EC_SEGMENT_NAME_MAX, "segment name fits");

static uint64_t round_up(uint64_t v, uint64_t align)
{
    return (v + align - 1) / align * align;
}

static uint64_t next_pow2(uint64_t v)
{
    uint64_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

static uint64_t slots_for(uint64_t data_size)
{
    uint64_t want = 2 * (data_size / EC_SHM_PAGE);
    if (want < EC_SHM_MIN_SLOTS)
        want = EC_SHM_MIN_SLOTS;
    return next_pow2(want);
}

/* Item index buckets for a data area of dsize bytes whose items average
 * item_bytes of value (plus their 8-byte key): at most 85% of the slots are
 * used when the whole area is items. 0 item_bytes: no item index. */
static uint64_t buckets_for(uint64_t dsize, uint64_t item_bytes)
{
    uint64_t items;

    if (item_bytes == 0)
        return 0;
    items = dsize / (item_bytes + 8); /* < 2^50: the products below cannot overflow */
    items = (items * 100 + EC_ITEM_WAYS * 85 - 1) / (EC_ITEM_WAYS * 85);
    return items ? items : 1;
}

/*
 * Sizing loop: the index sizes depend on the data size, which depends on
 * where the indexes end. Start from the smallest indexes and grow them until
 * they cover the data area that is left; they only grow and the data area
 * only shrinks, so this ends (in a handful of rounds). The data area starts
 * on a 2 MiB boundary (huge-page friendly) when the padding costs at most
 * 1/16 of the segment, otherwise on the next 4 KiB page.
 */
int ec_segment_plan(uint64_t size, uint64_t *index_slots, uint64_t *data_off,
                    uint64_t *data_size)
{
    return ec_segment_plan_ex(size, 0, index_slots, data_off, data_size);
}

int ec_segment_plan_ex(uint64_t size, unsigned device_tables, uint64_t *index_slots,
                       uint64_t *data_off, uint64_t *data_size)
{
    ec_segment_geometry g = {0};
    int rc = ec_segment_plan_geometry(size, device_tables, EC_ITEM_BYTES_DEFAULT, &g);

    if (rc == 0) {
        *index_slots = g.index_slots;
        *data_off = g.data_off;
        *data_size = g.data_size;
    }
    return rc;
}

int ec_segment_plan_geometry(uint64_t size, unsigned device_tables, uint64_t item_bytes,
                             ec_segment_geometry *out)
{
    uint64_t slots = EC_SHM_MIN_SLOTS, buckets = item_bytes ? 1 : 0, off = 0, dsize = 0;
    uint64_t item_off = 0;

    if (device_tables > EC_SHM_MAX_DEVICES)
        return ec_seterr(EC_EINVAL, "%u device tables asked for; at most %u GPUs are supported",
                         device_tables, EC_SHM_MAX_DEVICES);
    if (size < EC_SEG_MIN_SIZE || size % EC_SHM_PAGE != 0 || size > EC_SEG_MAX_SIZE)
        return ec_seterr(EC_EINVAL,
                         "segment size %" PRIu64 " is invalid: it must be a multiple of "
                         "%u bytes between 1 MiB and 1 PiB; pass a size such as 1G",
                         size, EC_SHM_PAGE);
    if (item_bytes > EC_SLAB_BYTES)
        return ec_seterr(EC_EINVAL, "item size %" PRIu64 " is larger than a %u-byte slab; "
                                    "pass a smaller --item-bytes (0: no item store)",
                         item_bytes, EC_SLAB_BYTES);
    for (;;) {
        uint64_t index_end =
            EC_SHM_HEADER_SIZE + slots * sizeof(ec_index_entry) * (1 + device_tables);
        uint64_t items_end = index_end + buckets * sizeof(ec_item_bucket);
        uint64_t huge = round_up(items_end, EC_SEG_HUGE_ALIGN);
        uint64_t need, needb;

        item_off = index_end;
        if (huge < size && huge - items_end <= size / 16)
            off = huge;
        else
            off = round_up(items_end, EC_SHM_PAGE);
        if (off + EC_SHM_PAGE > size)
            return ec_seterr(EC_EINVAL,
                             "segment size %" PRIu64 " leaves no room for data after a "
                             "%" PRIu64 "-slot index and %" PRIu64 " item buckets; pass a "
                             "larger size",
                             size, slots, buckets);
        dsize = (size - off) / EC_SHM_PAGE * EC_SHM_PAGE;
        need = slots_for(dsize);
        needb = buckets_for(dsize, item_bytes);
        if (need <= slots && needb <= buckets)
            break;
        if (need > slots)
            slots = need;
        if (needb > buckets)
            buckets = needb;
    }
    assert(off % EC_SHM_PAGE == 0 && dsize % EC_SHM_PAGE == 0);
    assert(item_off + buckets * sizeof(ec_item_bucket) <= off);
    assert(off + dsize <= size);
    out->index_slots = slots;
    out->item_off = item_off;
    out->item_buckets = buckets;
    out->data_off = off;
    out->data_size = dsize;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Validation                                                          */

int ec_segment_validate(const void *base, size_t mapped_size)
{
    const ec_shm_header *h = base;
    uint64_t index_bytes, index_end;

    if (!base)
        return ec_seterr(EC_EINVAL, "ec_segment_validate: no mapping given");
    if (mapped_size < EC_SHM_HEADER_SIZE)
        return ec_seterr(EC_ECORRUPT,
                         "segment is truncated: mapping has %zu bytes, less than its "
                         "%u-byte header; recreate it (restart embcached without the "
                         "stale segment record)",
                         mapped_size, EC_SHM_HEADER_SIZE);
    if (h->magic != EC_SHM_MAGIC)
        return ec_seterr(EC_ECORRUPT,
                         "not an embcache segment: magic is 0x%016" PRIx64
                         ", expected 0x%016llx; remove the record and let embcached "
                         "create a new segment",
                         h->magic, (unsigned long long)EC_SHM_MAGIC);
    if (h->layout_version != EC_SHM_LAYOUT_VERSION)
        return ec_seterr(EC_EVERSION,
                         "segment layout version is %" PRIu32 ", this build understands "
                         "%u; run matching embcache versions, or stop every client and "
                         "restart embcached so it creates a new segment",
                         h->layout_version, EC_SHM_LAYOUT_VERSION);
    if (h->header_size != EC_SHM_HEADER_SIZE)
        return ec_seterr(EC_ECORRUPT, "segment header size is %" PRIu32 ", expected %u",
                         h->header_size, EC_SHM_HEADER_SIZE);
    if (h->segment_size > mapped_size)
        return ec_seterr(EC_ECORRUPT,
                         "segment is truncated: header says %" PRIu64
                         " bytes, mapping has %zu",
                         h->segment_size, mapped_size);
    if (h->segment_size != mapped_size)
        return ec_seterr(EC_ECORRUPT,
                         "segment size mismatch: header says %" PRIu64
                         " bytes, mapping has %zu",
                         h->segment_size, mapped_size);
    if (h->index_off != h->header_size)
        return ec_seterr(EC_ECORRUPT,
                         "segment index offset is %" PRIu64 ", expected %" PRIu32,
                         h->index_off, h->header_size);
    if (h->index_slots < EC_SHM_MIN_SLOTS || (h->index_slots & (h->index_slots - 1)) != 0)
        return ec_seterr(EC_ECORRUPT,
                         "segment index has %" PRIu64
                         " slots, not a power of two >= %u",
                         h->index_slots, EC_SHM_MIN_SLOTS);
    if (h->index_slots > h->segment_size / sizeof(ec_index_entry))
        return ec_seterr(EC_ECORRUPT,
                         "segment index of %" PRIu64 " slots exceeds the %" PRIu64
                         "-byte segment",
                         h->index_slots, h->segment_size);
    index_bytes = h->index_slots * sizeof(ec_index_entry); /* <= segment_size: no overflow */
    if (index_bytes > h->segment_size - h->index_off)
        return ec_seterr(EC_ECORRUPT,
                         "segment index (%" PRIu64 " bytes at %" PRIu64
                         ") runs past the segment end (%" PRIu64 ")",
                         index_bytes, h->index_off, h->segment_size);
    if (h->device_tables > EC_SHM_MAX_DEVICES)
        return ec_seterr(EC_ECORRUPT, "segment has %" PRIu32 " device tables, at most %u",
                         h->device_tables, EC_SHM_MAX_DEVICES);
    /* index_bytes <= segment_size / 1 and tables <= 8: no overflow. */
    for (uint32_t i = 0; i < h->device_tables; i++)
        if (h->dev[i].index_off != h->index_off + (i + 1) * index_bytes)
            return ec_seterr(EC_ECORRUPT, "segment device table %" PRIu32 " is at %" PRIu64
                             ", expected %" PRIu64, i, h->dev[i].index_off,
                             h->index_off + (i + 1) * index_bytes);
    index_end = h->index_off + index_bytes * (1 + h->device_tables);
    if (h->item_off != index_end)
        return ec_seterr(EC_ECORRUPT, "segment item index is at %" PRIu64 ", expected %" PRIu64,
                         h->item_off, index_end);
    if (h->item_buckets > (h->segment_size - index_end) / sizeof(ec_item_bucket))
        return ec_seterr(EC_ECORRUPT, "segment item index of %" PRIu64 " buckets runs past "
                                      "the segment end", h->item_buckets);
    index_end += h->item_buckets * sizeof(ec_item_bucket); /* bounded just above */
    if (index_end > h->data_off)
        return ec_seterr(EC_ECORRUPT,
                         "segment indexes end at %" PRIu64
                         ", past the data area start %" PRIu64,
                         index_end, h->data_off);
    if (h->data_off % EC_SHM_PAGE != 0 || h->data_size % EC_SHM_PAGE != 0)
        return ec_seterr(EC_ECORRUPT,
                         "segment data area (offset %" PRIu64 ", size %" PRIu64
                         ") is not %u-byte aligned",
                         h->data_off, h->data_size, EC_SHM_PAGE);
    if (h->data_off > h->segment_size || h->data_size > h->segment_size - h->data_off)
        return ec_seterr(EC_ECORRUPT,
                         "segment data area (offset %" PRIu64 ", size %" PRIu64
                         ") runs past the segment end (%" PRIu64 ")",
                         h->data_off, h->data_size, h->segment_size);
    return 0;
}

/* Fill the derived fields of seg from a validated mapping. */
static void fill_segment(ec_segment *seg, int fd, bool writable, void *base, size_t size)
{
    ec_shm_header *h = base;

    memset(seg, 0, sizeof(*seg));
    seg->fd = fd;
    seg->writable = writable;
    seg->base = base;
    seg->size = size;
    seg->hdr = h;
    seg->index = (ec_index_entry *)(seg->base + h->index_off);
    seg->index_slots = h->index_slots;
    seg->index_mask = h->index_slots - 1;
    seg->items = (ec_item_bucket *)(seg->base + h->item_off);
    seg->item_buckets = h->item_buckets;
    seg->data = seg->base + h->data_off;
    seg->data_size = h->data_size;
    seg->index_used = EC_INDEX_USED_UNKNOWN; /* index.c counts on first insert */
}

/* ------------------------------------------------------------------ */
/* Names of earlier versions' segments                                 */

static bool name_is_valid(const char *name)
{
    if (strlen(name) != EC_SEG_NAME_LEN || memcmp(name, EC_SEG_PREFIX, EC_SEG_PREFIX_LEN) != 0)
        return false;
    for (size_t i = EC_SEG_PREFIX_LEN; i < EC_SEG_NAME_LEN; i++) {
        char c = name[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* Daemon: create, seal, attach, hand out                              */

#define EC_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE)

int ec_segment_create(uint64_t size, ec_segment *out)
{
    return ec_segment_create_ex(size, 0, out);
}

int ec_segment_device_view(const ec_segment *seg, unsigned dev, uint64_t slab_size,
                           ec_segment *out)
{
    if (!seg || !seg->hdr || !out || dev >= seg->hdr->device_tables)
        return ec_seterr(EC_EINVAL, "no device table %u in this segment", dev);
    *out = *seg;
    out->index = (ec_index_entry *)(seg->base + seg->hdr->dev[dev].index_off);
    out->data = NULL;
    out->data_size = slab_size;
    out->index_used = EC_INDEX_USED_UNKNOWN;
    return 0;
}

int ec_segment_create_ex(uint64_t size, unsigned device_tables, ec_segment *out)
{
    int rc = ec_segment_create_geometry(size, device_tables, EC_ITEM_BYTES_DEFAULT, out);

    if (rc == 0 && (rc = ec_segment_seal(out)) < 0)
        ec_segment_close(out);
    return rc;
}

int ec_segment_create_geometry(uint64_t size, unsigned device_tables, uint64_t item_bytes,
                               ec_segment *out)
{
    ec_segment_geometry g;
    ec_shm_header *h;
    void *base = MAP_FAILED;
    int fd = -1, rc, err;

    if (!out)
        return ec_seterr(EC_EINVAL, "ec_segment_create: out is required");
    if ((rc = ec_segment_plan_geometry(size, device_tables, item_bytes, &g)) < 0)
        return rc;
    if ((uint64_t)(size_t)size != size)
        return ec_seterr(EC_EINVAL, "segment size %" PRIu64 " does not fit this address space",
                         size);
    /* An anonymous memfd: no name anyone could open, nothing left in
     * /dev/shm when the last process holding it goes. */
    fd = memfd_create("embcache-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return ec_seterr_errno(EC_EIO, errno, "memfd_create for the shared segment failed");
    if (ftruncate(fd, (off_t)size) < 0) {
        rc = ec_seterr_errno(errno == ENOSPC || errno == EFBIG ? EC_ENOSPC : EC_EIO, errno,
                             "cannot size the segment to %" PRIu64 " bytes", size);
        goto fail;
    }
    do
        err = posix_fallocate(fd, 0, (off_t)size);
    while (err == EINTR);
    if (err == ENOSPC || err == EFBIG || err == ENOMEM) {
        rc = ec_seterr_errno(EC_ENOSPC, err,
                             "cannot reserve %" PRIu64 " bytes (%.1f MiB) of shared memory "
                             "for the segment; pass a smaller --shm-size or free memory "
                             "(grep -E 'MemAvailable|Shmem' /proc/meminfo)",
                             size, (double)size / (1024.0 * 1024.0));
        goto fail;
    }
    if (err != 0 && err != EOPNOTSUPP) {
        rc = ec_seterr_errno(EC_EIO, err,
                             "posix_fallocate of %" PRIu64 " bytes for the segment failed",
                             size);
        goto fail;
    }
    base = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = ec_seterr_errno(errno == ENOMEM ? EC_ENOMEM : EC_EIO, errno,
                             "cannot map the segment (%" PRIu64 " bytes)", size);
        goto fail;
    }

    h = base;
    memset(h, 0, EC_SHM_HEADER_SIZE);
    h->magic = EC_SHM_MAGIC;
    h->layout_version = EC_SHM_LAYOUT_VERSION;
    h->header_size = EC_SHM_HEADER_SIZE;
    h->segment_size = size;
    h->index_off = EC_SHM_HEADER_SIZE;
    h->index_slots = g.index_slots;
    h->data_off = g.data_off;
    h->data_size = g.data_size;
    h->item_off = g.item_off;
    h->item_buckets = g.item_buckets;
    h->created_unix = (uint64_t)time(NULL);
    h->device_tables = device_tables;
    for (unsigned i = 0; i < device_tables; i++) {
        h->dev[i].index_off =
            EC_SHM_HEADER_SIZE + (i + 1) * g.index_slots * sizeof(ec_index_entry);
        atomic_store_explicit(&h->dev[i].numa_node, -1, memory_order_relaxed);
    }
    atomic_store_explicit(&h->used_bytes, 0, memory_order_relaxed);
    atomic_store_explicit(&h->resident_partitions, 0, memory_order_relaxed);
    atomic_store_explicit(&h->daemon_pid, (uint32_t)getpid(), memory_order_relaxed);
    atomic_store_explicit(&h->generation, 1, memory_order_release);
    if ((rc = ec_segment_validate(base, (size_t)size)) < 0) {
        rc = ec_adderr(EC_EINTERNAL, "freshly written segment failed validation");
        goto fail;
    }
    fill_segment(out, fd, true, base, (size_t)size);
    out->index_used = 0; /* a new index is empty */
    return 0;

fail:
    if (base != MAP_FAILED)
        munmap(base, (size_t)size);
    close(fd);
    return rc;
}

int ec_segment_seal(ec_segment *seg)
{
    int have;

    if (!seg || seg->fd < 0)
        return ec_seterr(EC_EINVAL, "ec_segment_seal: no segment");
    have = fcntl(seg->fd, F_GET_SEALS);
    if (have >= 0 && (have & EC_SEALS) == EC_SEALS)
        return 0;
    /* F_SEAL_FUTURE_WRITE keeps the mappings that exist (ours and the
     * keeper's) writable and refuses every new writable mapping, write(2)
     * and hole punch; SHRINK and GROW keep the size, so no reader can be
     * made to fault (SIGBUS) past a truncated end. */
    if (have < 0 || fcntl(seg->fd, F_ADD_SEALS, EC_SEALS | F_SEAL_SEAL) < 0)
        return ec_seterr_errno(EC_EIO, errno,
                               "cannot seal the shared segment (F_SEAL_FUTURE_WRITE needs "
                               "Linux 5.1 or later)");
    return 0;
}

int ec_segment_attach(int fd, void *base, size_t size, ec_segment *out)
{
    struct stat st;
    int rc;

    if (fd < 0 || !base || !out)
        return ec_seterr(EC_EINVAL, "ec_segment_attach: a descriptor and a mapping are needed");
    if (fstat(fd, &st) < 0)
        return ec_seterr_errno(EC_EIO, errno, "cannot fstat the kept segment");
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != (uint64_t)size)
        return ec_seterr(EC_ECORRUPT,
                         "the kept segment has %lld bytes, its mapping %zu; starting cold",
                         (long long)st.st_size, size);
    if ((rc = ec_segment_validate(base, size)) < 0)
        return ec_adderr(rc, "the kept segment");
    fill_segment(out, fd, true, base, size);
    /* A keeper takes a segment before it is sealed: a worker that died in
     * between leaves it unsealed. Seal it now. */
    if ((rc = ec_segment_seal(out)) < 0) {
        memset(out, 0, sizeof(*out));
        out->fd = -1;
        return rc;
    }
    return 0;
}

int ec_segment_open_readonly(const ec_segment *seg, int *fd_out)
{
    char path[64];
    int fd;

    if (!seg || !fd_out || seg->fd < 0)
        return ec_seterr(EC_EINVAL, "ec_segment_open_readonly: needs the daemon's segment");
    /* A read-only open file description of the same memfd (the seals make
     * any other description read-only too; this one says so). */
    snprintf(path, sizeof(path), "/proc/self/fd/%d", seg->fd);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fd = fcntl(seg->fd, F_DUPFD_CLOEXEC, 0); /* no /proc: the seals still hold */
    if (fd < 0)
        return ec_seterr_errno(EC_EIO, errno,
                               "cannot open a read-only descriptor of the segment");
    *fd_out = fd;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Segments of earlier versions                                        */

/* Read and check a record of an earlier version. EC_ENOENT when none. */
static int record_read(const char *data_dir, char name[EC_SEGMENT_NAME_MAX])
{
    char path[4096], buf[EC_SEGMENT_NAME_MAX + 2];
    ssize_t len;
    int fd;

    if (snprintf(path, sizeof(path), "%s/%s", data_dir, EC_SEGMENT_RECORD) >=
        (int)sizeof(path))
        return ec_seterr(EC_EINVAL, "data directory path '%s' is too long", data_dir);
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return errno == ENOENT ? EC_ENOENT
                               : ec_seterr_errno(EC_EIO, errno, "cannot open %s", path);
    len = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (len <= 0)
        return ec_seterr(EC_ECORRUPT, "%s is empty", path);
    buf[len] = '\0';
    if (buf[len - 1] == '\n')
        buf[len - 1] = '\0';
    if (!name_is_valid(buf))
        return ec_seterr(EC_ECORRUPT, "%s does not name a segment", path);
    memcpy(name, buf, strlen(buf) + 1);
    return 0;
}

int ec_segment_remove_legacy(const char *data_dir)
{
    char name[EC_SEGMENT_NAME_MAX], path[4096];
    int rc;

    if (!data_dir || !*data_dir)
        return 0;
    rc = record_read(data_dir, name);
    if (rc == EC_ENOENT)
        return 0;
    if (rc == 0) {
        char shm[80];
        struct stat st;
        int fd;
        /* Only a segment of ours: the record is in a directory others may
         * have been able to write. */
        snprintf(shm, sizeof(shm), "/dev/shm%s", name);
        fd = open(shm, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd >= 0) {
            if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid())
                shm_unlink(name);
            close(fd);
        }
    }
    snprintf(path, sizeof(path), "%s/%s", data_dir, EC_SEGMENT_RECORD);
    unlink(path);
    snprintf(path, sizeof(path), "%s/%s.tmp", data_dir, EC_SEGMENT_RECORD);
    unlink(path);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Client                                                              */

int ec_segment_map_fd(int fd, ec_segment *out)
{
    void *base = MAP_FAILED;
    size_t size = 0;
    struct stat st;
    int dupfd = -1, rc;

    if (fd < 0 || !out)
        return ec_seterr(EC_EINVAL, "ec_segment_map_fd: a descriptor and out are required");
    if (fstat(fd, &st) < 0)
        return ec_seterr_errno(EC_EIO, errno, "cannot fstat the segment descriptor %d", fd);
    if (!S_ISREG(st.st_mode))
        return ec_seterr(EC_ECORRUPT,
                         "the segment descriptor %d is not a shared memory object", fd);
    {
        /* Only a sealed segment: then no process but the daemon (and the
         * keeper) can change a byte of it or its size, whatever its uid. */
        int seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0 || (seals & EC_SEALS) != EC_SEALS)
            return ec_seterr(EC_EPERM,
                             "the daemon handed out a segment that is not sealed against "
                             "writes (seals 0x%x); it is not an embcached of this version, "
                             "or not embcached: refusing to read from it",
                             seals < 0 ? 0 : (unsigned)seals);
    }
    if (st.st_size < (off_t)EC_SHM_HEADER_SIZE)
        return ec_seterr(EC_ECORRUPT,
                         "segment is truncated: %lld bytes, less than its %u-byte header",
                         (long long)st.st_size, EC_SHM_HEADER_SIZE);
    if ((uint64_t)st.st_size > EC_SEG_MAX_SIZE)
        return ec_seterr(EC_ECORRUPT, "segment is %lld bytes, more than any embcache segment",
                         (long long)st.st_size);
    size = (size_t)st.st_size;
    base = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = ec_seterr_errno(errno == ENOMEM ? EC_ENOMEM : EC_EIO, errno,
                             "cannot map the segment (%zu bytes) read-only", size);
        goto fail;
    }
    if ((rc = ec_segment_validate(base, size)) < 0)
        goto fail;
    dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dupfd < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot dup the segment descriptor %d", fd);
        goto fail;
    }
    fill_segment(out, dupfd, false, base, size);
    return 0;

fail:
    if (base != MAP_FAILED)
        munmap(base, size);
    return rc;
}

void ec_segment_close(ec_segment *seg)
{
    if (!seg)
        return;
    if (seg->base)
        munmap(seg->base, seg->size);
    if (seg->fd >= 0)
        close(seg->fd);
    seg->fd = -1;
    seg->base = NULL;
    seg->hdr = NULL;
    seg->index = NULL;
    seg->data = NULL;
    seg->size = 0;
    seg->index_slots = 0;
    seg->index_mask = 0;
    seg->data_size = 0;
    seg->index_used = EC_INDEX_USED_UNKNOWN;
    seg->writable = false;
}

/* nftw callback of ec_segment_rmtree: a segment record takes the segment
 * it names with it. */
static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    if (flag == FTW_F && !strcmp(p + ftw->base, EC_SEGMENT_RECORD) && ftw->base > 0) {
        char dir[4096];
        if ((size_t)ftw->base <= sizeof(dir)) {
            memcpy(dir, p, (size_t)ftw->base - 1);
            dir[ftw->base - 1] = '\0';
            ec_segment_remove_legacy(dir);
        }
    }
    return remove(p);
}

void ec_segment_rmtree(const char *path)
{
    if (path)
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}
