/*
 * segment.c - create, re-attach, map and validate the shared segment
 * (see segment.h and layout.h).
 *
 * Called by the daemon (ec_segment_create / _reopen / _open_readonly /
 * _destroy, from its start-up path and its engine thread) and by clients
 * (ec_segment_map_fd, once per connection). Every function is synchronous
 * and keeps no state outside the ec_segment it fills, so any thread may call
 * it; one ec_segment must not be closed while another thread uses it.
 *
 * The layout is computed by ec_segment_plan() alone; ec_segment_validate()
 * checks every header field a reader relies on, with overflow-safe
 * arithmetic, before any derived pointer is formed. Nothing read from the
 * mapping, the record file or fstat() is trusted until it has been checked.
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
#include <sys/random.h>
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
    ec_segment_geometry g;
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
static void fill_segment(ec_segment *seg, int fd, bool writable, void *base, size_t size,
                         const char *name)
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
    if (name)
        snprintf(seg->name, sizeof(seg->name), "%s", name);
    seg->index_used = EC_INDEX_USED_UNKNOWN; /* index.c counts on first insert */
}

/* ------------------------------------------------------------------ */
/* Names and the record file                                           */

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

static int random_name(char out[EC_SEGMENT_NAME_MAX])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t rnd[EC_SEG_HEX_LEN / 2];
    size_t got = 0;

    while (got < sizeof(rnd)) {
        ssize_t r = getrandom(rnd + got, sizeof(rnd) - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return ec_seterr_errno(EC_EIO, errno, "getrandom for a segment name failed");
        }
        got += (size_t)r;
    }
    memcpy(out, EC_SEG_PREFIX, EC_SEG_PREFIX_LEN);
    for (size_t i = 0; i < sizeof(rnd); i++) {
        out[EC_SEG_PREFIX_LEN + 2 * i] = hex[rnd[i] >> 4];
        out[EC_SEG_PREFIX_LEN + 2 * i + 1] = hex[rnd[i] & 15];
    }
    out[EC_SEG_NAME_LEN] = '\0';
    assert(name_is_valid(out));
    return 0;
}

static int record_path(const char *data_dir, const char *suffix, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s/%s%s", data_dir, EC_SEGMENT_RECORD, suffix);
    if (n < 0 || (size_t)n >= len)
        return ec_seterr(EC_EINVAL, "data directory path '%s' is too long", data_dir);
    return 0;
}

/* Write name + "\n" to <data_dir>/segment through a temporary file, fsync
 * it, rename it into place and fsync the directory. */
static int record_write(const char *data_dir, const char *name)
{
    char tmp[4096], path[4096], line[EC_SEGMENT_NAME_MAX + 1];
    int fd = -1, dfd = -1, rc;
    size_t len, done = 0;

    if ((rc = record_path(data_dir, ".tmp", tmp, sizeof(tmp))) < 0 ||
        (rc = record_path(data_dir, "", path, sizeof(path))) < 0)
        return rc;
    len = (size_t)snprintf(line, sizeof(line), "%s\n", name);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = ec_seterr_errno(EC_EIO, errno,
                             "cannot create %s; check that the data directory exists "
                             "and is writable",
                             tmp);
        goto fail;
    }
    while (done < len) {
        ssize_t w = write(fd, line + done, len - done);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            rc = ec_seterr_errno(EC_EIO, errno, "cannot write %s", tmp);
            goto fail_unlink;
        }
        done += (size_t)w;
    }
    if (fsync(fd) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot fsync %s", tmp);
        goto fail_unlink;
    }
    if (close(fd) < 0) {
        fd = -1;
        rc = ec_seterr_errno(EC_EIO, errno, "cannot close %s", tmp);
        goto fail_unlink;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot rename %s to %s", tmp, path);
        goto fail_unlink;
    }
    dfd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd); /* best effort: the record is in place either way */
        close(dfd);
    }
    return 0;

fail_unlink:
    unlink(tmp);
fail:
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Read and check the record. EC_ENOENT when there is none. */
static int record_read(const char *data_dir, char name[EC_SEGMENT_NAME_MAX])
{
    char path[4096], buf[EC_SEGMENT_NAME_MAX + 2];
    size_t len = 0;
    int fd, rc;

    if ((rc = record_path(data_dir, "", path, sizeof(path))) < 0)
        return rc;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return ec_seterr(EC_ENOENT,
                             "no segment is recorded in %s; create a new one", path);
        return ec_seterr_errno(EC_EIO, errno, "cannot open %s", path);
    }
    while (len < sizeof(buf)) {
        ssize_t r = read(fd, buf + len, sizeof(buf) - len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = ec_seterr_errno(EC_EIO, errno, "cannot read %s", path);
            close(fd);
            return rc;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (len == sizeof(buf))
        return ec_seterr(EC_ECORRUPT,
                         "%s is too long to hold a segment name; remove it and let "
                         "embcached create a new segment",
                         path);
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    buf[len] = '\0';
    if (memchr(buf, '\0', len) || !name_is_valid(buf))
        return ec_seterr(EC_ECORRUPT,
                         "%s does not hold a valid segment name (expected "
                         "/embcache-<32 hex digits>); remove it and let embcached "
                         "create a new segment",
                         path);
    memcpy(name, buf, len + 1);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Daemon: create, reopen, hand out, destroy                           */

int ec_segment_create(const char *data_dir, uint64_t size, ec_segment *out)
{
    return ec_segment_create_ex(data_dir, size, 0, out);
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
    out->name[0] = '\0';
    return 0;
}

int ec_segment_create_ex(const char *data_dir, uint64_t size, unsigned device_tables,
                         ec_segment *out)
{
    return ec_segment_create_geometry(data_dir, size, device_tables, EC_ITEM_BYTES_DEFAULT,
                                      out);
}

int ec_segment_create_geometry(const char *data_dir, uint64_t size, unsigned device_tables,
                               uint64_t item_bytes, ec_segment *out)
{
    ec_segment_geometry g;
    uint64_t slots, data_off, data_size;
    char name[EC_SEGMENT_NAME_MAX];
    ec_shm_header *h;
    void *base = MAP_FAILED;
    int fd = -1, rc, err;

    if (!data_dir || !*data_dir || !out)
        return ec_seterr(EC_EINVAL, "ec_segment_create: data_dir and out are required");
    if ((rc = ec_segment_plan_geometry(size, device_tables, item_bytes, &g)) < 0)
        return rc;
    slots = g.index_slots;
    data_off = g.data_off;
    data_size = g.data_size;
    if ((uint64_t)(size_t)size != size)
        return ec_seterr(EC_EINVAL, "segment size %" PRIu64 " does not fit this address space",
                         size);

    for (int tries = 0;; tries++) {
        if ((rc = random_name(name)) < 0)
            return rc;
        fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
        if (fd >= 0)
            break;
        if (errno != EEXIST || tries >= 8)
            return ec_seterr_errno(errno == EACCES ? EC_EPERM : EC_EIO, errno,
                                   "cannot create shared memory segment %s; check that "
                                   "/dev/shm is mounted and writable",
                                   name);
    }
    /* From here on the name exists: every failure unlinks it. */
    if (fchmod(fd, 0600) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot chmod segment %s to 0600", name);
        goto fail;
    }
    if (ftruncate(fd, (off_t)size) < 0) {
        rc = ec_seterr_errno(errno == ENOSPC || errno == EFBIG ? EC_ENOSPC : EC_EIO, errno,
                             "cannot size segment %s to %" PRIu64 " bytes", name, size);
        goto fail;
    }
    do
        err = posix_fallocate(fd, 0, (off_t)size);
    while (err == EINTR);
    if (err == ENOSPC || err == EFBIG || err == ENOMEM) {
        rc = ec_seterr_errno(EC_ENOSPC, err,
                             "cannot reserve %" PRIu64 " bytes (%.1f MiB) for the segment "
                             "in /dev/shm; pass a smaller --shm-size or free space in "
                             "/dev/shm (df -h /dev/shm)",
                             size, (double)size / (1024.0 * 1024.0));
        goto fail;
    }
    if (err != 0 && err != EOPNOTSUPP) {
        rc = ec_seterr_errno(EC_EIO, err,
                             "posix_fallocate of %" PRIu64 " bytes for segment %s failed",
                             size, name);
        goto fail;
    }
    base = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = ec_seterr_errno(errno == ENOMEM ? EC_ENOMEM : EC_EIO, errno,
                             "cannot map segment %s (%" PRIu64 " bytes)", name, size);
        goto fail;
    }

    h = base;
    memset(h, 0, EC_SHM_HEADER_SIZE);
    h->magic = EC_SHM_MAGIC;
    h->layout_version = EC_SHM_LAYOUT_VERSION;
    h->header_size = EC_SHM_HEADER_SIZE;
    h->segment_size = size;
    h->index_off = EC_SHM_HEADER_SIZE;
    h->index_slots = slots;
    h->data_off = data_off;
    h->data_size = data_size;
    h->item_off = g.item_off;
    h->item_buckets = g.item_buckets;
    h->created_unix = (uint64_t)time(NULL);
    h->device_tables = device_tables;
    for (unsigned i = 0; i < device_tables; i++) {
        h->dev[i].index_off = EC_SHM_HEADER_SIZE + (i + 1) * slots * sizeof(ec_index_entry);
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
    if ((rc = record_write(data_dir, name)) < 0)
        goto fail;

    fill_segment(out, fd, true, base, (size_t)size, name);
    out->index_used = 0; /* a new index is empty */
    return 0;

fail:
    if (base != MAP_FAILED)
        munmap(base, (size_t)size);
    shm_unlink(name);
    close(fd);
    return rc;
}

int ec_segment_reopen(const char *data_dir, ec_segment *out)
{
    char name[EC_SEGMENT_NAME_MAX];
    void *base = MAP_FAILED;
    size_t size = 0;
    struct stat st;
    int fd = -1, rc;

    if (!data_dir || !*data_dir || !out)
        return ec_seterr(EC_EINVAL, "ec_segment_reopen: data_dir and out are required");
    if ((rc = record_read(data_dir, name)) < 0)
        return rc;
    fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
        if (errno == ENOENT)
            rc = ec_seterr(EC_ENOENT,
                           "segment %s recorded in %s/%s no longer exists (the host "
                           "rebooted or it was removed); create a new one",
                           name, data_dir, EC_SEGMENT_RECORD);
        else
            rc = ec_seterr_errno(errno == EACCES ? EC_EPERM : EC_EIO, errno,
                                 "cannot open segment %s recorded in %s/%s", name,
                                 data_dir, EC_SEGMENT_RECORD);
        goto fail;
    }
    if (fstat(fd, &st) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot fstat segment %s", name);
        goto fail;
    }
    if (st.st_uid != geteuid() || (st.st_mode & 0777) != 0600) {
        rc = ec_seterr(EC_EPERM,
                       "segment %s has owner uid %u and mode %04o, expected uid %u and "
                       "mode 0600; refusing to attach a segment others may write: remove "
                       "/dev/shm%s and restart embcached",
                       name, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777),
                       (unsigned)geteuid(), name);
        goto fail;
    }
    if (st.st_size < (off_t)EC_SHM_HEADER_SIZE) {
        rc = ec_seterr(EC_ECORRUPT,
                       "segment %s is truncated: %lld bytes, less than its %u-byte header",
                       name, (long long)st.st_size, EC_SHM_HEADER_SIZE);
        goto fail;
    }
    if ((uint64_t)st.st_size > EC_SEG_MAX_SIZE) {
        rc = ec_seterr(EC_ECORRUPT, "segment %s is %lld bytes, more than any embcache segment",
                       name, (long long)st.st_size);
        goto fail;
    }
    size = (size_t)st.st_size;
    base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        rc = ec_seterr_errno(errno == ENOMEM ? EC_ENOMEM : EC_EIO, errno,
                             "cannot map segment %s (%zu bytes)", name, size);
        goto fail;
    }
    if ((rc = ec_segment_validate(base, size)) < 0) {
        ec_adderr(rc, "segment %s recorded in %s/%s", name, data_dir, EC_SEGMENT_RECORD);
        goto fail;
    }
    fill_segment(out, fd, true, base, size, name);
    return 0;

fail:
    if (base != MAP_FAILED)
        munmap(base, size);
    if (fd >= 0)
        close(fd);
    return rc;
}

int ec_segment_open_readonly(const ec_segment *seg, int *fd_out)
{
    int fd;

    if (!seg || !fd_out || !seg->name[0])
        return ec_seterr(EC_EINVAL,
                         "ec_segment_open_readonly: needs the daemon's named segment");
    fd = shm_open(seg->name, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        /* No name in the message: it may be relayed to a client. */
        return ec_seterr_errno(errno == ENOENT ? EC_ENOENT : EC_EIO, errno,
                               "cannot open a read-only descriptor of the segment");
    *fd_out = fd;
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
    fill_segment(out, dupfd, false, base, size, NULL);
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

int ec_segment_destroy(ec_segment *seg, const char *data_dir)
{
    char path[4096], recorded[EC_SEGMENT_NAME_MAX];
    int rc = 0;

    if (!seg || !seg->name[0])
        return ec_seterr(EC_EINVAL, "ec_segment_destroy: needs the daemon's named segment");
    if (shm_unlink(seg->name) < 0 && errno != ENOENT)
        rc = ec_seterr_errno(EC_EIO, errno, "cannot remove segment %s", seg->name);
    if (data_dir && *data_dir && record_path(data_dir, "", path, sizeof(path)) == 0) {
        /* Remove the record only if it still names this segment: a newer
         * segment's record is not ours to remove. */
        if (record_read(data_dir, recorded) == 0 && strcmp(recorded, seg->name) == 0 &&
            unlink(path) < 0 && errno != ENOENT && rc == 0)
            rc = ec_seterr_errno(EC_EIO, errno, "cannot remove %s", path);
    }
    return rc;
}

/* nftw callback of ec_segment_rmtree: a segment record takes the segment
 * it names with it. */
static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    if (flag == FTW_F && !strcmp(p + ftw->base, EC_SEGMENT_RECORD) && ftw->base > 0) {
        char dir[4096], name[EC_SEGMENT_NAME_MAX];
        if ((size_t)ftw->base <= sizeof(dir)) {
            memcpy(dir, p, (size_t)ftw->base - 1);
            dir[ftw->base - 1] = '\0';
            if (record_read(dir, name) == 0)
                shm_unlink(name);
        }
    }
    return remove(p);
}

void ec_segment_rmtree(const char *path)
{
    if (path)
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}
