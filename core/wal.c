/*
 * wal.c - the write-ahead log of dynamic tables' row updates (wal.h has the
 * format, the crash rules and the sync modes).
 *
 * What it owns: the log directory, the list of its files (oldest first; the
 * last is the one appended to, kept open O_RDWR) and the lsn counter. Who
 * calls it: core/dyntable.c and core/dyntable_snap.c on the daemon's server
 * thread; one thread, no locks.
 *
 * Invariants of an open log:
 *  1. files[] is sorted by first_lsn; files[i + 1].first_lsn ==
 *     files[i].first_lsn + files[i].records; nfiles >= 1.
 *  2. files[i].size is where the file's records end: the header and
 *     exactly `records` valid records. The file on disk ends there, or
 *     (direct appends) at the next 4 KiB boundary with zeros between; a
 *     failed append truncates the current file back to size.
 *  3. last_lsn == files[nfiles - 1].first_lsn + files[nfiles - 1].records - 1.
 *  4. dirty: the current file holds records not yet fdatasynced (never in
 *     BATCH mode); older files hold none (rotation syncs them first).
 *  5. broken != 0 after a failed fdatasync: appends and syncs are refused.
 *  7. The mark (INTERVAL and NONE modes): the file `synced` holds an lsn
 *     through which every record was fdatasynced, written only after that
 *     fdatasync returned. A machine that stops may lose, or leave garbage
 *     in, what was written after it; open then cuts the last file at the
 *     first bad record past the mark, valid-looking records after it
 *     included (rule 2b of wal.h), and calls a bad record at or before the
 *     mark corruption. BATCH mode keeps no mark (every acknowledged record
 *     was synced): open removes a mark a previous daemon left.
 *  6. Direct appends (dio >= 0, the current file opened O_DIRECT): stage
 *     holds the current file's last partial 4 KiB block, bytes
 *     [size - tail, size), tail = size % 4096. An append copies the record
 *     behind it and writes whole blocks from the block's start, padded
 *     with zeros; so a record's bytes reach the disk without passing
 *     through the page cache (no page allocated and copied per append; a
 *     log written at hundreds of MB/s does not push the host's cached
 *     partition files out). Rewriting the partial block rewrites bytes
 *     already there with the same values, so a torn write of it cannot
 *     damage an acknowledged record.
 */
#include "core/wal.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/err.h"
#include "common/log.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "write-ahead log files are little-endian and written with native stores"
#endif

#define FILE_MAGIC 0x3130464c41574345ull /* "ECWALF01" */
#define MARK_MAGIC 0x3130534c41574345ull /* "ECWALS01" */
#define MARK_NAME "synced"
#define FILE_VERSION 1u
#define REC_MAGIC 0x52574345u            /* "ECWR" */
#define SCRATCH ((size_t)1 << 20)        /* chunk of hashing and scanning */
#define BLK 4096u                        /* direct I/O's alignment */
#define STAGE_MAX ((size_t)64 << 20)     /* larger records are written buffered */

/* At offset 0 of every file. */
struct wal_fhdr {
    uint64_t magic;     /* FILE_MAGIC */
    uint32_t version;   /* FILE_VERSION */
    uint32_t reserved;  /* 0 */
    uint64_t first_lsn; /* the lsn of the file's first record; also its name */
    uint64_t checksum;  /* XXH3-64 of the 24 bytes above */
};

/* The file MARK_NAME (invariant 7). */
struct wal_mark {
    uint64_t magic;    /* MARK_MAGIC */
    uint64_t lsn;      /* every record up to it was fdatasynced */
    uint64_t reserved; /* 0 */
    uint64_t checksum; /* XXH3-64 of the 24 bytes above */
};

/* Before each record's payload. */
struct wal_rhdr {
    uint32_t magic;     /* REC_MAGIC */
    uint8_t op;         /* EC_WAL_PUT or EC_WAL_DEL */
    uint8_t pad[3];     /* 0 */
    uint32_t table;
    uint32_t n;         /* 1..EC_WAL_MAX_KEYS */
    uint32_t row_bytes; /* PUT 1..EC_WAL_MAX_ROW_BYTES; DEL 0 */
    uint32_t reserved;  /* 0 */
    uint64_t lsn;
    uint64_t payload;   /* n * 8 + n * row_bytes */
    uint64_t checksum;  /* XXH3-64 of this header (this field 0) and the payload */
};

static_assert(sizeof(struct wal_fhdr) == 32, "wal file header size");
static_assert(offsetof(struct wal_fhdr, checksum) == 24, "wal file header layout");
static_assert(sizeof(struct wal_rhdr) == 48, "wal record header size");
static_assert(offsetof(struct wal_rhdr, table) == 8, "wal record header layout");
static_assert(offsetof(struct wal_rhdr, lsn) == 24, "wal record header layout");
static_assert(offsetof(struct wal_rhdr, checksum) == 40, "wal record header layout");

#define FHDR ((uint64_t)sizeof(struct wal_fhdr))
#define RHDR ((uint64_t)sizeof(struct wal_rhdr))

struct wal_file {
    uint64_t first_lsn;
    uint64_t records;
    uint64_t size;
};

struct ec_wal {
    char *dir;
    int dfd;                  /* the directory: openat, unlinkat, fsync */
    int fd;                   /* the current file, files[nfiles - 1] */
    int dio;                  /* the same file opened O_DIRECT, or -1 (invariant 6) */
    int mfd;                  /* MARK_NAME, once written; -1 */
    bool have_mark;           /* at open: a valid mark was found, of lsn mark_lsn */
    uint64_t mark_lsn;
    bool direct;              /* open the current file O_DIRECT when the fs allows it */
    unsigned char *stage;     /* aligned to BLK: the tail block, then a record */
    size_t stage_cap;
    ec_wal_sync_mode sync;
    uint64_t file_bytes;
    struct wal_file *files;
    size_t nfiles, cap;
    uint64_t last_lsn;
    bool dirty;
    int broken;
    unsigned char *buf;       /* payloads of replay; scratch of hashing */
    size_t buf_cap;
    enum ec_wal_fault fault;
    unsigned fault_every, fault_count;
    ec_wal_stats st;
};

enum { REC_OK = 0, REC_BAD = 1 };

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

static void file_name(uint64_t lsn, char name[32])
{
    snprintf(name, 32, "wal-%016llx.log", (unsigned long long)lsn);
}

/* Exactly what file_name() makes of an lsn >= 1. */
static bool parse_name(const char *s, uint64_t *lsn)
{
    unsigned long long v;
    char again[32];

    if (strlen(s) != 24 || sscanf(s, "wal-%16llx.log", &v) != 1 || v == 0)
        return false;
    file_name(v, again);
    *lsn = v;
    return strcmp(again, s) == 0;
}

static int errno_code(int e)
{
    return e == ENOSPC || e == EDQUOT ? EC_ENOSPC : e == ENOMEM ? EC_ENOMEM : EC_EIO;
}

static bool fault_tick(ec_wal *w)
{
    return ++w->fault_count % w->fault_every == 0;
}

/* Read len bytes at off: the bytes read (< len only at end of file), or -errno. */
static ssize_t pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    size_t got = 0;

    while (got < len) {
        ssize_t r = pread(fd, (char *)buf + got, len - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Write the iovecs at off, whole. 0 or -errno. Modifies iov. */
static int pwritev_all(int fd, struct iovec *iov, int cnt, uint64_t off)
{
    while (cnt > 0) {
        ssize_t r = pwritev(fd, iov, cnt, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return -EIO;
        off += (uint64_t)r;
        while (cnt > 0 && (size_t)r >= iov->iov_len) {
            r -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + r;
            iov->iov_len -= (size_t)r;
        }
    }
    return 0;
}

/* pwritev_all, or (fault injection) a part of it and a failure. */
static int io_write(ec_wal *w, int fd, struct iovec *iov, int cnt, uint64_t off)
{
    if ((w->fault == EC_WAL_FAULT_EIO || w->fault == EC_WAL_FAULT_ENOSPC) && fault_tick(w)) {
        iov[0].iov_len /= 2;
        (void)pwritev_all(fd, iov, 1, off);
        return w->fault == EC_WAL_FAULT_EIO ? -EIO : -ENOSPC;
    }
    return pwritev_all(fd, iov, cnt, off);
}

/* fdatasync (data) or fsync. 0 or -errno. */
static int io_sync(ec_wal *w, int fd, bool data)
{
    if (w->fault == EC_WAL_FAULT_SYNC && fault_tick(w))
        return -EIO;
    if ((data ? fdatasync(fd) : fsync(fd)) < 0)
        return -errno;
    return 0;
}

static int buf_reserve(ec_wal *w, size_t len)
{
    unsigned char *p;

    if (len <= w->buf_cap)
        return 0;
    if (!(p = realloc(w->buf, len)))
        return ec_seterr(EC_ENOMEM, "write-ahead log: %zu bytes for a record", len);
    w->buf = p;
    w->buf_cap = len;
    return 0;
}

static void buf_release(ec_wal *w)
{
    free(w->buf);
    w->buf = NULL;
    w->buf_cap = 0;
}

/* Room for len bytes in the stage, keeping its first keep bytes. */
static int stage_reserve(ec_wal *w, size_t len, size_t keep)
{
    void *p;

    if (len <= w->stage_cap)
        return 0;
    len = (len + BLK - 1) / BLK * BLK;
    if (posix_memalign(&p, BLK, len) != 0)
        return ec_seterr(EC_ENOMEM, "write-ahead log: %zu bytes to stage a record", len);
    if (keep)
        memcpy(p, w->stage, keep);
    free(w->stage);
    w->stage = p;
    w->stage_cap = len;
    return 0;
}

/* Bytes of the current file's last partial block. */
static size_t tail_of(const ec_wal *w)
{
    return (size_t)(w->files[w->nfiles - 1].size % BLK);
}

/* Open the current file (fd, named name) O_DIRECT as well and load its
 * partial last block into the stage (invariant 6). Where the file system
 * takes no O_DIRECT (tmpfs), or anything here fails, appends stay
 * buffered: correct, only slower. */
static void dio_open(ec_wal *w, const char *name)
{
    size_t tail = tail_of(w);
    ssize_t r;

    if (w->dio >= 0)
        close(w->dio);
    w->dio = -1;
    if (!w->direct)
        return;
    if ((w->dio = openat(w->dfd, name, O_RDWR | O_DIRECT | O_CLOEXEC)) < 0) {
        if (errno != EINVAL)
            ec_warn("write-ahead log %s/%s: cannot open it for direct I/O (%s); appends go "
                    "through the page cache", w->dir, name, strerror(errno));
        w->direct = false;
        return;
    }
    if (stage_reserve(w, BLK, 0) < 0 ||
        (r = pread_full(w->fd, w->stage, tail, w->files[w->nfiles - 1].size - tail)) !=
            (ssize_t)tail) {
        close(w->dio);
        w->dio = -1;
    }
}

static int files_push(ec_wal *w, uint64_t first_lsn)
{
    if (w->nfiles == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 16;
        struct wal_file *p = realloc(w->files, cap * sizeof(*p));
        if (!p)
            return ec_seterr(EC_ENOMEM, "write-ahead log: the list of files");
        w->files = p;
        w->cap = cap;
    }
    w->files[w->nfiles++] = (struct wal_file){.first_lsn = first_lsn, .size = FHDR};
    return 0;
}

/* EC_ECORRUPT naming the file and the offset. */
__attribute__((format(printf, 4, 5)))
static int corrupt(const ec_wal *w, const char *name, uint64_t off, const char *fmt, ...)
{
    char what[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return ec_seterr(EC_ECORRUPT, "write-ahead log %s/%s, offset %llu: %s; nothing was changed",
                     w->dir, name, (unsigned long long)off, what);
}

static uint64_t fhdr_sum(const struct wal_fhdr *fh)
{
    return XXH3_64bits(fh, offsetof(struct wal_fhdr, checksum));
}

static uint64_t payload_of(uint8_t op, uint32_t n, uint32_t row_bytes)
{
    return (uint64_t)n * sizeof(int64_t) + (op == EC_WAL_PUT ? (uint64_t)n * row_bytes : 0);
}

/* ------------------------------------------------------------------ */
/* Reading records                                                     */

/* Check the record at off of a file whose valid part ends at fsize: its
 * header's fields and its checksum, with the payload read into w->buf
 * (load) or hashed through it in chunks. The lsn is the caller's to
 * check. Returns REC_OK (*h filled), REC_BAD (why says what is wrong), or
 * EC_EIO / EC_ENOMEM. */
static int check_record(ec_wal *w, int fd, const char *name, uint64_t off, uint64_t fsize,
                        bool load, struct wal_rhdr *h, char *why, size_t why_len)
{
    XXH3_state_t xs;
    struct wal_rhdr z;
    uint64_t want, done = 0;
    bool bad;
    ssize_t r;
    int rc;

    if (fsize - off < RHDR) {
        snprintf(why, why_len, "a partial record header (%llu of %llu bytes)",
                 (unsigned long long)(fsize - off), (unsigned long long)RHDR);
        return REC_BAD;
    }
    if ((r = pread_full(fd, h, RHDR, off)) < 0)
        goto io;
    if ((uint64_t)r < RHDR) {
        snprintf(why, why_len, "a partial record header (the file is shorter than it was)");
        return REC_BAD;
    }
    want = payload_of(h->op, h->n, h->row_bytes);
    bad = true;
    if (h->magic != REC_MAGIC)
        snprintf(why, why_len, "no record magic (0x%08x)", h->magic);
    else if (h->op != EC_WAL_PUT && h->op != EC_WAL_DEL)
        snprintf(why, why_len, "unknown op %u", h->op);
    else if (h->pad[0] || h->pad[1] || h->pad[2] || h->reserved)
        snprintf(why, why_len, "non-zero reserved bytes in the record header");
    else if (h->n == 0 || h->n > EC_WAL_MAX_KEYS ||
             (h->op == EC_WAL_PUT ? h->row_bytes == 0 || h->row_bytes > EC_WAL_MAX_ROW_BYTES
                                  : h->row_bytes != 0))
        snprintf(why, why_len, "impossible sizes (n %u, row_bytes %u, op %u)", h->n,
                 h->row_bytes, h->op);
    else if (h->payload != want || want > EC_WAL_MAX_PAYLOAD)
        snprintf(why, why_len, "payload of %llu bytes where n and row_bytes make %llu",
                 (unsigned long long)h->payload, (unsigned long long)want);
    else if (h->payload > fsize - off - RHDR)
        snprintf(why, why_len, "a short payload (%llu of %llu bytes in the file)",
                 (unsigned long long)(fsize - off - RHDR), (unsigned long long)h->payload);
    else
        bad = false;
    if (bad)
        return REC_BAD;

    z = *h;
    z.checksum = 0;
    XXH3_64bits_reset(&xs);
    XXH3_64bits_update(&xs, &z, sizeof(z));
    if ((rc = buf_reserve(w, load ? (size_t)h->payload : SCRATCH)) < 0)
        return rc;
    while (done < h->payload) {
        size_t len = load ? (size_t)h->payload : (size_t)(h->payload - done < SCRATCH
                                                              ? h->payload - done : SCRATCH);
        if ((r = pread_full(fd, w->buf, len, off + RHDR + done)) < 0)
            goto io;
        if ((size_t)r < len) {
            snprintf(why, why_len, "a short payload (the file is shorter than it was)");
            return REC_BAD;
        }
        XXH3_64bits_update(&xs, w->buf, len);
        done += len;
    }
    if (XXH3_64bits_digest(&xs) != h->checksum) {
        snprintf(why, why_len, "checksum mismatch (record of lsn %llu, %llu payload bytes)",
                 (unsigned long long)h->lsn, (unsigned long long)h->payload);
        return REC_BAD;
    }
    return REC_OK;
io:
    return ec_seterr_errno(EC_EIO, (int)-r, "reading write-ahead log %s/%s at offset %llu",
                           w->dir, name, (unsigned long long)off);
}

/* Is there a valid record (any lsn) starting anywhere in (from, fsize)?
 * 1 (*at set), 0, or a negative code. */
static int find_later(ec_wal *w, int fd, const char *name, uint64_t from, uint64_t fsize,
                      uint64_t *at)
{
    unsigned char *chunk = malloc(SCRATCH);
    uint64_t pos = from + 1;
    struct wal_rhdr h;
    char why[160];
    int rc = 0;

    if (!chunk)
        return ec_seterr(EC_ENOMEM, "write-ahead log: scanning %s", name);
    while (pos + RHDR <= fsize && rc == 0) {
        size_t len = fsize - pos < SCRATCH ? (size_t)(fsize - pos) : SCRATCH;
        ssize_t r = pread_full(fd, chunk, len, pos);
        if (r < 0) {
            rc = ec_seterr_errno(EC_EIO, (int)-r, "reading write-ahead log %s/%s", w->dir, name);
            break;
        }
        if ((size_t)r < RHDR)
            break;
        len = (size_t)r;
        for (size_t i = 0; i + 4 <= len && rc == 0; i++) {
            uint32_t m;
            memcpy(&m, chunk + i, sizeof(m));
            if (m != REC_MAGIC)
                continue;
            rc = check_record(w, fd, name, pos + i, fsize, false, &h, why, sizeof(why));
            if (rc == REC_OK) {
                *at = pos + i;
                rc = 1;
            } else if (rc == REC_BAD) {
                rc = 0;
            }
        }
        pos += len - 3;
    }
    free(chunk);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Opening                                                             */

/* Read the mark (invariant 7): have_mark and mark_lsn. A missing or
 * damaged mark is no mark: open then calls any bad record that is not the
 * tail corruption, as it would without one, and deletes nothing. */
static void mark_read(ec_wal *w)
{
    struct wal_mark m;
    int fd = openat(w->dfd, MARK_NAME, O_RDONLY | O_CLOEXEC);

    w->have_mark = false;
    if (fd < 0)
        return;
    if (pread_full(fd, &m, sizeof(m), 0) == (ssize_t)sizeof(m) && m.magic == MARK_MAGIC &&
        m.reserved == 0 && m.checksum == XXH3_64bits(&m, 24)) {
        w->have_mark = true;
        w->mark_lsn = m.lsn;
    } else {
        ec_warn("write-ahead log %s/%s is damaged; ignored (a bad record anywhere but the "
                "tail is then reported as corruption)", w->dir, MARK_NAME);
    }
    close(fd);
}

/* Record that every record through lsn is durable (called right after
 * the fdatasync that made it so). A failure only costs the mark's
 * leniency after a machine crash: logged, not returned. */
static void mark_write(ec_wal *w, uint64_t lsn)
{
    struct wal_mark m = {.magic = MARK_MAGIC, .lsn = lsn};

    if (w->mfd < 0) {
        if ((w->mfd = openat(w->dfd, MARK_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0 ||
            fsync(w->dfd) < 0) {
            ec_warn("write-ahead log %s/%s: %s", w->dir, MARK_NAME, strerror(errno));
            return;
        }
    }
    m.checksum = XXH3_64bits(&m, 24);
    if (pwrite(w->mfd, &m, sizeof(m), 0) != (ssize_t)sizeof(m) || fdatasync(w->mfd) < 0)
        ec_warn("write-ahead log %s/%s: %s", w->dir, MARK_NAME, strerror(errno));
}

/* Are the bytes [off, size) of fd the zeros a direct append pads its last
 * block with: inside the file's last 4 KiB block, the file ending on a
 * block boundary? 1, 0, or -errno. */
static int is_padding(int fd, uint64_t off, uint64_t size)
{
    unsigned char b[BLK];
    ssize_t r;

    if (size % BLK || size - off >= BLK)
        return 0;
    if ((r = pread_full(fd, b, (size_t)(size - off), off)) < 0)
        return (int)r;
    if ((uint64_t)r != size - off)
        return 0;
    for (ssize_t k = 0; k < r; k++)
        if (b[k])
            return 0;
    return 1;
}

/* Check files[i] whole. For the last file, a torn tail sets *cut to the
 * offset to cut at, and a file too short for its header sets *remove. */
static int scan_file(ec_wal *w, size_t i, uint64_t *cut, bool *remove)
{
    struct wal_file *f = &w->files[i];
    bool last = i + 1 == w->nfiles;
    char name[32], why[160];
    struct wal_fhdr fh;
    struct wal_rhdr h;
    struct stat sb;
    uint64_t off = FHDR, size, at = 0, expect;
    ssize_t r = 0;
    int fd, rc = 0;

    file_name(f->first_lsn, name);
    if ((fd = openat(w->dfd, name, O_RDONLY | O_CLOEXEC)) < 0)
        return ec_seterr_errno(EC_EIO, errno, "opening write-ahead log %s/%s", w->dir, name);
    if (fstat(fd, &sb) < 0 || (r = pread_full(fd, &fh, FHDR, 0)) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "reading write-ahead log %s/%s", w->dir, name);
        goto out;
    }
    size = (uint64_t)sb.st_size;
    if ((uint64_t)r < FHDR || fh.magic != FILE_MAGIC || fh.version != FILE_VERSION ||
        fh.reserved != 0 || fh.checksum != fhdr_sum(&fh)) {
        if (last && size <= FHDR) { /* a crash while it was being created */
            f->size = size;
            *remove = true;
            goto out;
        }
        rc = corrupt(w, name, 0, (uint64_t)r < FHDR ? "a partial file header"
                                 : "a bad file header (magic, version or checksum)");
        goto out;
    }
    if (fh.first_lsn != f->first_lsn) {
        rc = corrupt(w, name, 0, "the header's first lsn %llu is not the file name's",
                     (unsigned long long)fh.first_lsn);
        goto out;
    }
    if (i > 0 && w->files[i - 1].first_lsn + w->files[i - 1].records != f->first_lsn) {
        char prev[32];
        file_name(w->files[i - 1].first_lsn, prev);
        rc = corrupt(w, name, 0, "lsn gap: %s ends at lsn %llu, this file starts at %llu", prev,
                     (unsigned long long)(w->files[i - 1].first_lsn + w->files[i - 1].records - 1),
                     (unsigned long long)f->first_lsn);
        goto out;
    }
    while (off < size) {
        rc = check_record(w, fd, name, off, size, false, &h, why, sizeof(why));
        if (rc < 0)
            goto out;
        if (rc == REC_OK && h.lsn != f->first_lsn + f->records) {
            rc = corrupt(w, name, off, "a record of lsn %llu where %llu was expected",
                         (unsigned long long)h.lsn,
                         (unsigned long long)(f->first_lsn + f->records));
            goto out;
        }
        if (rc == REC_BAD) {
            int pad = is_padding(fd, off, size);
            if (pad < 0) {
                rc = ec_seterr_errno(EC_EIO, -pad, "reading write-ahead log %s/%s", w->dir,
                                     name);
                goto out;
            }
            if (pad) { /* the end of the records: not a torn write */
                size = off;
                break;
            }
            if (!last) {
                rc = corrupt(w, name, off, "%s, in a file that is not the last", why);
                goto out;
            }
            if ((rc = find_later(w, fd, name, off, size, &at)) < 0)
                goto out;
            expect = f->first_lsn + f->records;
            if (w->have_mark && expect <= w->mark_lsn) {
                rc = corrupt(w, name, off, "%s, at lsn %llu, which was synced (the log was "
                             "synced through lsn %llu)", why, (unsigned long long)expect,
                             (unsigned long long)w->mark_lsn);
                goto out;
            }
            if (rc == 1 && !w->have_mark) {
                rc = corrupt(w, name, off, "%s, and a valid record follows at offset %llu", why,
                             (unsigned long long)at);
                goto out;
            }
            if (rc == 1)
                ec_warn("write-ahead log %s/%s: cutting %llu bytes at offset %llu, from lsn "
                        "%llu on: the log was synced through lsn %llu and what followed was "
                        "damaged (the machine stopped; --wal-sync interval or none lose "
                        "unsynced updates then): %s", w->dir, name,
                        (unsigned long long)(size - off), (unsigned long long)off,
                        (unsigned long long)expect, (unsigned long long)w->mark_lsn, why);
            else
                ec_warn("write-ahead log %s/%s: cutting %llu bytes at offset %llu, a record "
                        "that was never acknowledged (a crash while it was appended): %s",
                        w->dir, name, (unsigned long long)(size - off),
                        (unsigned long long)off, why);
            *cut = off;
            break;
        }
        off += RHDR + h.payload;
        f->records++;
    }
    f->size = off;
    w->st.truncated_bytes += size - off;
    rc = 0;
out:
    close(fd);
    return rc;
}

/* Create the file of first lsn `lsn` and make it current: O_EXCL, header,
 * fsync, directory fsync. The previous current file is closed. */
static int create_file(ec_wal *w, uint64_t lsn)
{
    struct wal_fhdr fh = {.magic = FILE_MAGIC, .version = FILE_VERSION, .first_lsn = lsn};
    struct iovec iov = {.iov_base = &fh, .iov_len = sizeof(fh)};
    char name[32];
    int fd, rc;

    if ((rc = files_push(w, lsn)) < 0)
        return rc;
    w->nfiles--; /* pushed for real below, on success */
    fh.checksum = fhdr_sum(&fh);
    file_name(lsn, name);
    if ((fd = openat(w->dfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
        return ec_seterr_errno(errno_code(errno), errno, "creating write-ahead log %s/%s",
                               w->dir, name);
    if ((rc = io_write(w, fd, &iov, 1, 0)) < 0 || (rc = io_sync(w, fd, false)) < 0 ||
        (rc = io_sync(w, w->dfd, false)) < 0) {
        close(fd);
        unlinkat(w->dfd, name, 0);
        return ec_seterr_errno(errno_code(-rc), -rc, "creating write-ahead log %s/%s (removed "
                               "again)", w->dir, name);
    }
    if (w->fd >= 0)
        close(w->fd);
    w->fd = fd;
    w->files[w->nfiles++] = (struct wal_file){.first_lsn = lsn, .size = FHDR};
    dio_open(w, name);
    return 0;
}

static int open_dir(ec_wal *w)
{
    if (mkdir(w->dir, 0700) == 0) {
        /* Make the new directory's entry durable. */
        char *copy = strdup(w->dir);
        int pfd = copy ? open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
        int e = pfd < 0 || fsync(pfd) < 0 ? errno : 0;
        if (pfd >= 0)
            close(pfd);
        free(copy);
        if (e)
            return ec_seterr_errno(EC_EIO, e, "syncing the parent of the new directory %s",
                                   w->dir);
    } else if (errno != EEXIST) {
        return ec_seterr_errno(errno_code(errno), errno, "creating the write-ahead log "
                               "directory %s (its parent must exist)", w->dir);
    }
    if ((w->dfd = open(w->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        return ec_seterr_errno(EC_EIO, errno, "opening the write-ahead log directory %s", w->dir);
    return 0;
}

static int cmp_file(const void *a, const void *b)
{
    uint64_t x = ((const struct wal_file *)a)->first_lsn, y = ((const struct wal_file *)b)->first_lsn;
    return x < y ? -1 : x > y;
}

static int list_files(ec_wal *w)
{
    int fd = fcntl(w->dfd, F_DUPFD_CLOEXEC, 0), rc = 0;
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *de;
    uint64_t lsn;

    if (!d) {
        rc = ec_seterr_errno(EC_EIO, errno, "listing the write-ahead log directory %s", w->dir);
        if (fd >= 0)
            close(fd);
        return rc;
    }
    rewinddir(d);
    errno = 0;
    while (rc == 0 && (de = readdir(d)))
        if (parse_name(de->d_name, &lsn))
            rc = files_push(w, lsn);
    if (rc == 0 && errno != 0)
        rc = ec_seterr_errno(EC_EIO, errno, "listing the write-ahead log directory %s", w->dir);
    closedir(d);
    if (rc == 0 && w->nfiles > 1)
        qsort(w->files, w->nfiles, sizeof(*w->files), cmp_file);
    return rc;
}

int ec_wal_open(const ec_wal_config *cfg, ec_wal **out)
{
    ec_wal *w;
    uint64_t cut = UINT64_MAX, next = 1;
    bool remove = false;
    char name[32];
    int rc;

    if (!cfg || !cfg->dir || !out || (unsigned)cfg->sync > EC_WAL_SYNC_NONE)
        return ec_seterr(EC_EINVAL, "ec_wal_open: NULL config, directory or out, or an unknown "
                         "sync mode");
    if (!(w = calloc(1, sizeof(*w))) || !(w->dir = strdup(cfg->dir))) {
        free(w);
        return ec_seterr(EC_ENOMEM, "opening the write-ahead log %s", cfg->dir);
    }
    w->dfd = w->fd = w->dio = w->mfd = -1;
    w->sync = cfg->sync;
    w->direct = cfg->direct;
    w->file_bytes = cfg->file_bytes ? cfg->file_bytes : EC_WAL_DEFAULT_FILE_BYTES;
    if ((rc = open_dir(w)) < 0 || (rc = list_files(w)) < 0)
        goto fail;
    mark_read(w);
    /* Check everything before changing anything. */
    for (size_t i = 0; i < w->nfiles; i++)
        if ((rc = scan_file(w, i, &cut, &remove)) < 0)
            goto fail;
    if (remove) {
        struct wal_file *f = &w->files[w->nfiles - 1];
        file_name(f->first_lsn, name);
        ec_warn("write-ahead log %s/%s: removing it, a file of %llu bytes that a crash left "
                "without its header (it holds no record)", w->dir, name,
                (unsigned long long)f->size);
        if (unlinkat(w->dfd, name, 0) < 0 || fsync(w->dfd) < 0) {
            rc = ec_seterr_errno(EC_EIO, errno, "removing write-ahead log %s/%s", w->dir, name);
            goto fail;
        }
        w->st.truncated_bytes += f->size;
        next = f->first_lsn;
        w->nfiles--;
    }
    if (w->nfiles == 0) {
        if ((rc = create_file(w, next)) < 0)
            goto fail;
    } else {
        struct wal_file *f = &w->files[w->nfiles - 1];
        file_name(f->first_lsn, name);
        /* The sync makes durable what a previous daemon wrote and did not
         * sync, before anything is built on it. */
        if ((w->fd = openat(w->dfd, name, O_RDWR | O_CLOEXEC)) < 0 ||
            (cut != UINT64_MAX && ftruncate(w->fd, (off_t)cut) < 0) || fsync(w->fd) < 0) {
            rc = ec_seterr_errno(errno_code(errno), errno, "opening write-ahead log %s/%s%s",
                                 w->dir, name, cut != UINT64_MAX ? " to cut its torn tail" : "");
            goto fail;
        }
        dio_open(w, name);
    }
    w->last_lsn = w->files[w->nfiles - 1].first_lsn + w->files[w->nfiles - 1].records - 1;
    if (w->have_mark && w->sync == EC_WAL_SYNC_BATCH &&
        (unlinkat(w->dfd, MARK_NAME, 0) < 0 || fsync(w->dfd) < 0))
        ec_warn("write-ahead log %s: cannot remove %s, the mark of another sync mode: %s",
                w->dir, MARK_NAME, strerror(errno));
    buf_release(w);
    *out = w;
    return 0;
fail:
    ec_wal_close(w);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Appending                                                           */

static int refuse_broken(const ec_wal *w)
{
    return ec_seterr(w->broken, "write-ahead log %s: an fdatasync failed; it takes no appends "
                     "until it is opened again (restart the daemon)", w->dir);
}

/* fdatasync the current file's appended records. */
static int sync_records(ec_wal *w)
{
    char name[32];
    int rc = io_sync(w, w->fd, true);

    if (rc < 0) {
        w->broken = EC_EIO;
        file_name(w->files[w->nfiles - 1].first_lsn, name);
        return ec_seterr_errno(EC_EIO, -rc, "fdatasync of write-ahead log %s/%s (whether its "
                               "last records are durable is unknown; no appends until it is "
                               "opened again)", w->dir, name);
    }
    w->dirty = false;
    w->st.syncs++;
    if (w->sync != EC_WAL_SYNC_BATCH)
        mark_write(w, w->last_lsn);
    return 0;
}

int ec_wal_append(ec_wal *w, uint32_t table, uint8_t op, const int64_t *keys, uint32_t n,
                  const void *rows, uint32_t row_bytes, uint64_t *lsn_out)
{
    struct wal_rhdr h = {.magic = REC_MAGIC, .op = op, .table = table, .n = n};
    struct iovec iov[3];
    struct wal_file *f;
    XXH3_state_t xs;
    uint64_t rec;
    size_t tail;
    bool staged;
    char name[32];
    int rc;

    if (!w || !keys || n == 0 || (op != EC_WAL_PUT && op != EC_WAL_DEL) ||
        (op == EC_WAL_PUT && (!rows || row_bytes == 0)))
        return ec_seterr(EC_EINVAL, "ec_wal_append: NULL log or keys, no keys, op %u, or a PUT "
                         "without rows", op);
    if (op == EC_WAL_DEL)
        row_bytes = 0;
    if (n > EC_WAL_MAX_KEYS || row_bytes > EC_WAL_MAX_ROW_BYTES ||
        payload_of(op, n, row_bytes) > EC_WAL_MAX_PAYLOAD)
        return ec_seterr(EC_ETOOBIG, "an update of %u keys and rows of %u bytes is larger than "
                         "one log record may be (%u keys, rows of %u bytes, %llu bytes in all); "
                         "split it", n, row_bytes, EC_WAL_MAX_KEYS, EC_WAL_MAX_ROW_BYTES,
                         (unsigned long long)EC_WAL_MAX_PAYLOAD);
    if (w->broken)
        return refuse_broken(w);
    assert(w->nfiles >= 1 && w->fd >= 0);
    h.row_bytes = row_bytes;
    h.lsn = w->last_lsn + 1;
    h.payload = payload_of(op, n, row_bytes);
    rec = RHDR + h.payload;
    f = &w->files[w->nfiles - 1];
    if (f->size > FHDR && f->size + rec > w->file_bytes) {
        if ((w->dirty && (rc = sync_records(w)) < 0) || (rc = create_file(w, h.lsn)) < 0)
            return rc;
        f = &w->files[w->nfiles - 1];
    }
    XXH3_64bits_reset(&xs);
    XXH3_64bits_update(&xs, &h, sizeof(h));
    XXH3_64bits_update(&xs, keys, (size_t)n * sizeof(int64_t));
    iov[0] = (struct iovec){.iov_base = &h, .iov_len = sizeof(h)};
    iov[1] = (struct iovec){.iov_base = (void *)keys, .iov_len = (size_t)n * sizeof(int64_t)};
    if (op == EC_WAL_PUT) {
        XXH3_64bits_update(&xs, rows, (size_t)n * row_bytes);
        iov[2] = (struct iovec){.iov_base = (void *)rows, .iov_len = (size_t)n * row_bytes};
    }
    h.checksum = XXH3_64bits_digest(&xs);
    file_name(f->first_lsn, name);
    tail = tail_of(w);
    staged = w->dio >= 0 && tail + rec <= STAGE_MAX && stage_reserve(w, tail + rec + BLK, tail) == 0;
    if (staged) {
        /* Invariant 6: the record behind the tail block, whole blocks. */
        unsigned char *p = w->stage + tail;
        size_t end = tail + (size_t)rec, len = (end + BLK - 1) / BLK * BLK;
        memcpy(p, &h, sizeof(h));
        memcpy(p + sizeof(h), keys, (size_t)n * sizeof(int64_t));
        if (op == EC_WAL_PUT)
            memcpy(p + sizeof(h) + (size_t)n * 8, rows, (size_t)n * row_bytes);
        memset(w->stage + end, 0, len - end);
        iov[0] = (struct iovec){.iov_base = w->stage, .iov_len = len};
        rc = io_write(w, w->dio, iov, 1, f->size - tail);
    } else {
        rc = io_write(w, w->fd, iov, op == EC_WAL_PUT ? 3 : 2, f->size);
    }
    if (rc < 0) {
        if (ftruncate(w->fd, (off_t)f->size) < 0) {
            w->broken = EC_EIO;
            return ec_seterr_errno(EC_EIO, errno, "write-ahead log %s/%s: an append failed (%s) "
                                   "and cutting it off failed too; no appends until it is "
                                   "opened again", w->dir, name, strerror(-rc));
        }
        return ec_seterr_errno(errno_code(-rc), -rc, "appending %llu bytes (lsn %llu) to "
                               "write-ahead log %s/%s at offset %llu; the file is as it was",
                               (unsigned long long)rec, (unsigned long long)h.lsn, w->dir, name,
                               (unsigned long long)f->size);
    }
    if (w->sync == EC_WAL_SYNC_BATCH) {
        if ((rc = sync_records(w)) < 0) {
            if (ftruncate(w->fd, (off_t)f->size) < 0) { /* the log is broken already */
            }
            return rc;
        }
    } else {
        w->dirty = true;
    }
    f->size += rec;
    f->records++;
    w->last_lsn = h.lsn;
    w->st.appends++;
    if (staged) { /* the new partial block to the stage's start */
        size_t end = tail + (size_t)rec;
        memmove(w->stage, w->stage + end / BLK * BLK, end % BLK);
        w->st.direct_appends++;
    } else if (w->dio >= 0) {
        dio_open(w, name); /* reloads the tail a buffered append moved */
    }
    if (lsn_out)
        *lsn_out = h.lsn;
    return 0;
}

int ec_wal_sync(ec_wal *w)
{
    if (!w)
        return ec_seterr(EC_EINVAL, "ec_wal_sync: NULL log");
    if (w->broken)
        return refuse_broken(w);
    if (!w->dirty || w->sync == EC_WAL_SYNC_NONE)
        return 0;
    return sync_records(w);
}

int ec_wal_set_sync(ec_wal *w, ec_wal_sync_mode mode)
{
    int rc;

    if (!w || (unsigned)mode > EC_WAL_SYNC_NONE)
        return ec_seterr(EC_EINVAL, "ec_wal_set_sync: NULL log or an unknown sync mode");
    if (w->broken)
        return refuse_broken(w);
    if (mode == w->sync)
        return 0;
    if (w->dirty && (rc = sync_records(w)) < 0) /* writes the mark: still INTERVAL/NONE */
        return rc;
    if (mode == EC_WAL_SYNC_BATCH) {
        /* BATCH keeps no mark (rule 2b), as open removes another mode's. */
        if (w->mfd >= 0) {
            close(w->mfd);
            w->mfd = -1;
        }
        if ((unlinkat(w->dfd, MARK_NAME, 0) < 0 && errno != ENOENT) || fsync(w->dfd) < 0)
            ec_warn("write-ahead log %s: cannot remove %s, the mark of another sync mode: %s",
                    w->dir, MARK_NAME, strerror(errno));
    } else if (w->sync == EC_WAL_SYNC_BATCH) {
        /* Everything appended so far is synced: the mark says so. */
        mark_write(w, w->last_lsn);
    }
    w->sync = mode;
    return 0;
}

uint64_t ec_wal_last_lsn(const ec_wal *w)
{
    return w ? w->last_lsn : 0;
}

/* ------------------------------------------------------------------ */
/* Replay and collection                                               */

/* Read files[i]'s records again, checking each (its payload into w->buf
 * when load), and call fn with each until it returns non-zero: 0, fn's
 * value, or a negative code. */
static int walk_file(ec_wal *w, size_t i, bool load,
                     int (*fn)(ec_wal *w, const struct wal_rhdr *h, void *arg), void *arg)
{
    const struct wal_file *f = &w->files[i];
    bool cur = i + 1 == w->nfiles;
    char name[32], why[160];
    uint64_t off = FHDR;
    struct wal_rhdr h;
    int fd, rc = 0;

    file_name(f->first_lsn, name);
    if ((fd = cur ? w->fd : openat(w->dfd, name, O_RDONLY | O_CLOEXEC)) < 0)
        return ec_seterr_errno(EC_EIO, errno, "opening write-ahead log %s/%s", w->dir, name);
    for (uint64_t k = 0; k < f->records && rc == 0; k++, off += RHDR + h.payload) {
        if ((rc = check_record(w, fd, name, off, f->size, load, &h, why, sizeof(why))) < 0)
            break;
        if (rc == REC_BAD || h.lsn != f->first_lsn + k) {
            rc = corrupt(w, name, off, "%s (the file changed since the log was opened)",
                         rc == REC_BAD ? why : "an lsn out of sequence");
            break;
        }
        rc = fn(w, &h, arg);
    }
    if (!cur)
        close(fd);
    return rc;
}

struct replay_ctx {
    int (*fn)(void *arg, const ec_wal_record *r);
    void *arg;
};

static int replay_one(ec_wal *w, const struct wal_rhdr *h, void *arg)
{
    const struct replay_ctx *c = arg;
    ec_wal_record r = {.lsn = h->lsn, .table = h->table, .op = h->op, .n = h->n,
                       .row_bytes = h->row_bytes, .keys = (const int64_t *)w->buf,
                       .rows = h->op == EC_WAL_PUT ? w->buf + (size_t)h->n * 8 : NULL};

    w->st.replayed++;
    return c->fn(c->arg, &r);
}

int ec_wal_replay(ec_wal *w, int (*fn)(void *arg, const ec_wal_record *r), void *arg)
{
    struct replay_ctx c = {.fn = fn, .arg = arg};
    int rc = 0;

    if (!w || !fn)
        return ec_seterr(EC_EINVAL, "ec_wal_replay: NULL log or callback");
    for (size_t i = 0; i < w->nfiles && rc == 0; i++)
        rc = walk_file(w, i, true, replay_one, &c);
    buf_release(w);
    return rc;
}

struct gc_ctx {
    bool (*needed)(void *arg, uint32_t table, uint64_t lsn);
    void *arg;
};

static int gc_one(ec_wal *w, const struct wal_rhdr *h, void *arg)
{
    const struct gc_ctx *c = arg;

    (void)w;
    return c->needed(c->arg, h->table, h->lsn) ? 1 : 0;
}

int ec_wal_gc(ec_wal *w, bool (*needed)(void *arg, uint32_t table, uint64_t lsn), void *arg,
              uint32_t *removed_files)
{
    struct gc_ctx c = {.needed = needed, .arg = arg};
    uint32_t removed = 0;
    char name[32];
    int rc = 0;

    if (!w || !needed)
        return ec_seterr(EC_EINVAL, "ec_wal_gc: NULL log or callback");
    /* Oldest first, never the current file; the first file with a needed
     * record ends it, so the files left stay contiguous. */
    while (w->nfiles > 1 && (rc = walk_file(w, 0, false, gc_one, &c)) == 0) {
        file_name(w->files[0].first_lsn, name);
        if (unlinkat(w->dfd, name, 0) < 0) {
            rc = ec_seterr_errno(EC_EIO, errno, "removing write-ahead log %s/%s", w->dir, name);
            break;
        }
        removed++;
        w->st.removed_files++;
        memmove(w->files, w->files + 1, (w->nfiles - 1) * sizeof(*w->files));
        w->nfiles--;
    }
    buf_release(w);
    if (removed > 0 && fsync(w->dfd) < 0 && rc >= 0)
        rc = ec_seterr_errno(EC_EIO, errno, "syncing the write-ahead log directory %s", w->dir);
    if (rc < 0)
        return ec_adderr(rc, "collecting the write-ahead log (%u files removed)", removed);
    if (removed_files)
        *removed_files = removed;
    return 0;
}

void ec_wal_stats_get(const ec_wal *w, ec_wal_stats *out)
{
    *out = w->st;
    out->files = w->nfiles;
    out->bytes = 0;
    for (size_t i = 0; i < w->nfiles; i++)
        out->bytes += w->files[i].size;
    out->first_lsn = w->files[0].first_lsn;
    out->last_lsn = w->last_lsn;
    out->direct = w->dio >= 0;
}

void ec_wal_close(ec_wal *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    if (w->dio >= 0)
        close(w->dio);
    if (w->mfd >= 0)
        close(w->mfd);
    if (w->dfd >= 0)
        close(w->dfd);
    free(w->files);
    free(w->buf);
    free(w->stage);
    free(w->dir);
    free(w);
}

void ec_wal_inject(ec_wal *w, enum ec_wal_fault kind, unsigned every_nth)
{
    w->fault = every_nth ? kind : EC_WAL_FAULT_NONE;
    w->fault_every = every_nth;
    w->fault_count = 0;
}
