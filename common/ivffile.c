/*
 * ivffile.c - layout, checksums and validation of an IVF index file
 * (common/ivffile.h). Linked into embcached (which checks a client's file
 * before storing it) and libembcache (which writes one, and checks one
 * before searching it). No state, no locks.
 */
#include "common/ivffile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Inline: libembcache links no libxxhash. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "common/err.h"

static const char *const SEC_NAME[EC_IVF_NSEC] = {"centroids", "offsets", "ids", "norms",
                                                  "vectors"};

static uint64_t align_up(uint64_t v)
{
    return (v + EC_IVF_ALIGN - 1) & ~(uint64_t)(EC_IVF_ALIGN - 1);
}

uint64_t ec_ivf_layout(uint64_t rows, uint64_t dim, uint32_t nlist,
                       ec_ivf_section sec[EC_IVF_NSEC])
{
    uint64_t at = EC_IVF_HEADER_SIZE;

    if (rows == 0 || rows > EC_IVF_MAX_ROWS || dim == 0 || dim > EC_IVF_MAX_DIM ||
        nlist == 0 || nlist > rows)
        return 0;
    /* rows < 2^40 and dim <= 2^16: no product below overflows. */
    sec[EC_IVF_CENTROIDS].size = (uint64_t)nlist * dim * sizeof(float);
    sec[EC_IVF_OFFSETS].size = ((uint64_t)nlist + 1) * sizeof(uint64_t);
    sec[EC_IVF_IDS].size = rows * sizeof(int64_t);
    sec[EC_IVF_NORMS].size = rows * sizeof(float);
    sec[EC_IVF_VECTORS].size = rows * dim * sizeof(float);
    for (int i = 0; i < EC_IVF_NSEC; i++) {
        sec[i].offset = at;
        sec[i].checksum = 0;
        at = align_up(at + sec[i].size);
    }
    /* The file ends where the vectors end, unpadded. */
    return sec[EC_IVF_VECTORS].offset + sec[EC_IVF_VECTORS].size;
}

uint64_t ec_ivf_hash(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}

void ec_ivf_seal(void *base, uint64_t size)
{
    ec_ivf_header *h = base;

    for (int i = 0; i < EC_IVF_NSEC; i++)
        if (h->sec[i].offset <= size && h->sec[i].size <= size - h->sec[i].offset)
            h->sec[i].checksum = ec_ivf_hash((const uint8_t *)base + h->sec[i].offset,
                                             (size_t)h->sec[i].size);
    h->header_checksum = ec_ivf_hash(h, offsetof(ec_ivf_header, header_checksum));
}

/* A NUL inside the field, and a non-empty string of printable bytes. */
static bool name_ok(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);

    if (n == 0 || n == cap)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f)
            return false;
    return true;
}

static int bad(const char *what)
{
    return ec_seterr(EC_EFORMAT, "index file: %s", what);
}

/* Magic, format and the header's checksum. */
static int check_ident(const ec_ivf_header *h)
{
    if (h->magic != EC_IVF_MAGIC)
        return bad("bad magic: not an embcache IVF index");
    if ((h->format != EC_IVF_FORMAT && h->format != EC_IVF_FORMAT_KEYED) ||
        h->header_size != EC_IVF_HEADER_SIZE)
        return ec_seterr(EC_EFORMAT, "index file: format %u with a %u-byte header; this "
                                     "embcache reads formats %u and %u (%u bytes): build it "
                                     "again", h->format, h->header_size, EC_IVF_FORMAT,
                         EC_IVF_FORMAT_KEYED, EC_IVF_HEADER_SIZE);
    if (h->header_checksum != ec_ivf_hash(h, offsetof(ec_ivf_header, header_checksum)))
        return bad("header checksum mismatch");
    return 0;
}

int ec_ivf_read_header(const char *path, ec_ivf_header *out)
{
    ec_ivf_header h;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), rc;

    if (fd < 0)
        return errno == ENOENT ? EC_ENOENT
                               : ec_seterr_errno(EC_EIO, errno, "cannot open index file %s",
                                                 path);
    do
        n = pread(fd, &h, sizeof(h), 0);
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n < 0)
        return ec_seterr_errno(EC_EIO, errno, "cannot read index file %s", path);
    if ((size_t)n < sizeof(h))
        return ec_seterr(EC_EFORMAT, "index file %s: %zd bytes, shorter than its %u-byte "
                                     "header", path, n, EC_IVF_HEADER_SIZE);
    if ((rc = check_ident(&h)))
        return ec_adderr(rc, "%s", path);
    *out = h;
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

/* KEYED: no key twice (a sorted copy). */
static int check_keys_unique(const ec_ivf_view *v)
{
    int64_t *k = malloc((size_t)v->rows * sizeof(int64_t));

    if (!k)
        return ec_seterr(EC_ENOMEM, "index file: a copy of %llu keys",
                         (unsigned long long)v->rows);
    memcpy(k, v->ids, (size_t)v->rows * sizeof(int64_t));
    qsort(k, (size_t)v->rows, sizeof(int64_t), cmp_i64);
    for (uint64_t i = 1; i < v->rows; i++)
        if (k[i] == k[i - 1]) {
            long long dup = (long long)k[i];
            free(k);
            return ec_seterr(EC_EFORMAT, "index file: key %lld appears twice", dup);
        }
    free(k);
    return 0;
}

static int check_header(const ec_ivf_header *h, uint64_t size)
{
    ec_ivf_section want[EC_IVF_NSEC];
    int rc;

    if (size < EC_IVF_HEADER_SIZE)
        return ec_seterr(EC_EFORMAT, "index file: %llu bytes, shorter than its %u-byte header",
                         (unsigned long long)size, EC_IVF_HEADER_SIZE);
    if ((rc = check_ident(h)))
        return rc;
    if (!name_ok(h->model, sizeof(h->model)) || !name_ok(h->tensor, sizeof(h->tensor)))
        return bad("model or tensor name is empty, unterminated or not printable");
    if (h->dtype != EC_DTYPE_F32)
        return ec_seterr(EC_EFORMAT, "index file: stored vectors of dtype %u (only f32)",
                         h->dtype);
    if (h->src_dtype != EC_DTYPE_F32 && h->src_dtype != EC_DTYPE_F16 &&
        h->src_dtype != EC_DTYPE_BF16)
        return ec_seterr(EC_EFORMAT, "index file: source dtype %u (f32, f16 or bf16)",
                         h->src_dtype);
    if (h->metric != EC_METRIC_IP && h->metric != EC_METRIC_COSINE &&
        h->metric != EC_METRIC_L2)
        return ec_seterr(EC_EFORMAT, "index file: unknown metric %u", h->metric);
    if (h->format == EC_IVF_FORMAT ? h->flags != 0 : (h->flags & ~EC_IVF_KEYED) != 0)
        return ec_seterr(EC_EFORMAT, "index file: unknown flags 0x%x for format %u", h->flags,
                         h->format);
    if (!(h->flags & EC_IVF_KEYED) && h->built_lsn)
        return ec_seterr(EC_EFORMAT, "index file: built at lsn %llu, and its ids are not a "
                                     "dynamic table's keys", (unsigned long long)h->built_lsn);
    if (h->rows == 0 || h->rows > EC_IVF_MAX_ROWS || h->dim == 0 || h->dim > EC_IVF_MAX_DIM)
        return ec_seterr(EC_EFORMAT, "index file: %llu rows of %llu floats (1..2^40 rows of "
                                     "1..%u)", (unsigned long long)h->rows,
                         (unsigned long long)h->dim, EC_IVF_MAX_DIM);
    if (h->nlist == 0 || h->nlist > h->rows)
        return ec_seterr(EC_EFORMAT, "index file: %u lists for %llu rows (1..rows)", h->nlist,
                         (unsigned long long)h->rows);
    (void)ec_ivf_layout(h->rows, h->dim, h->nlist, want);
    for (int i = 0; i < EC_IVF_NSEC; i++) {
        const ec_ivf_section *s = &h->sec[i];
        uint64_t floor = i == 0 ? EC_IVF_HEADER_SIZE
                                : h->sec[i - 1].offset + h->sec[i - 1].size;
        if (s->size != want[i].size)
            return ec_seterr(EC_EFORMAT, "index file: section %s is %llu bytes; %llu rows, "
                                         "dim %llu and %u lists make it %llu", SEC_NAME[i],
                             (unsigned long long)s->size, (unsigned long long)h->rows,
                             (unsigned long long)h->dim, h->nlist,
                             (unsigned long long)want[i].size);
        if (s->offset % EC_IVF_ALIGN)
            return ec_seterr(EC_EFORMAT, "index file: section %s at offset %llu is not "
                                         "%u-byte aligned", SEC_NAME[i],
                             (unsigned long long)s->offset, EC_IVF_ALIGN);
        if (s->offset < floor)
            return ec_seterr(EC_EFORMAT, "index file: section %s at offset %llu overlaps the "
                                         "header or the section before it (which ends at "
                                         "%llu)", SEC_NAME[i], (unsigned long long)s->offset,
                             (unsigned long long)floor);
        if (s->offset > size || s->size > size - s->offset)
            return ec_seterr(EC_EFORMAT, "index file: section %s at [%llu, +%llu) ends past "
                                         "the end of the file (%llu bytes)", SEC_NAME[i],
                             (unsigned long long)s->offset, (unsigned long long)s->size,
                             (unsigned long long)size);
    }
    if (h->sec[EC_IVF_NSEC - 1].offset + h->sec[EC_IVF_NSEC - 1].size != size)
        return ec_seterr(EC_EFORMAT, "index file: %llu bytes, and its sections end at %llu",
                         (unsigned long long)size,
                         (unsigned long long)(h->sec[EC_IVF_NSEC - 1].offset +
                                              h->sec[EC_IVF_NSEC - 1].size));
    return 0;
}

int ec_ivf_check(const void *base, uint64_t size, bool checksums, ec_ivf_view *out)
{
    const uint8_t *b = base;
    const ec_ivf_header *h = base;
    ec_ivf_view v;
    uint64_t *seen;
    int rc;

    if (!base || ((uintptr_t)base & 7))
        return bad("not mapped at an 8-byte boundary");
    if ((rc = check_header(h, size)))
        return rc;
    if (checksums)
        for (int i = 0; i < EC_IVF_NSEC; i++)
            if (ec_ivf_hash(b + h->sec[i].offset, (size_t)h->sec[i].size) != h->sec[i].checksum)
                return ec_seterr(EC_EFORMAT, "index file: section %s failed its checksum",
                                 SEC_NAME[i]);
    v.h = h;
    v.rows = h->rows;
    v.dim = h->dim;
    v.nlist = h->nlist;
    v.metric = (ec_metric)h->metric;
    v.centroids = (const float *)(const void *)(b + h->sec[EC_IVF_CENTROIDS].offset);
    v.offsets = (const uint64_t *)(const void *)(b + h->sec[EC_IVF_OFFSETS].offset);
    v.ids = (const int64_t *)(const void *)(b + h->sec[EC_IVF_IDS].offset);
    v.norms = (const float *)(const void *)(b + h->sec[EC_IVF_NORMS].offset);
    v.vectors = (const float *)(const void *)(b + h->sec[EC_IVF_VECTORS].offset);
    if (v.offsets[0] != 0 || v.offsets[v.nlist] != v.rows)
        return ec_seterr(EC_EFORMAT, "index file: list offsets run from %llu to %llu, not "
                                     "from 0 to its %llu rows",
                         (unsigned long long)v.offsets[0],
                         (unsigned long long)v.offsets[v.nlist], (unsigned long long)v.rows);
    for (uint32_t l = 0; l < v.nlist; l++)
        if (v.offsets[l + 1] < v.offsets[l])
            return ec_seterr(EC_EFORMAT, "index file: list offsets decrease at list %u "
                                         "(%llu, then %llu)", l,
                             (unsigned long long)v.offsets[l],
                             (unsigned long long)v.offsets[l + 1]);
    if (h->flags & EC_IVF_KEYED) {
        if (checksums && (rc = check_keys_unique(&v)))
            return rc;
        *out = v;
        return 0;
    }
    if (!(seen = calloc((size_t)((v.rows + 63) / 64), sizeof(uint64_t))))
        return ec_seterr(EC_ENOMEM, "index file: a bitmap of %llu ids",
                         (unsigned long long)v.rows);
    rc = 0;
    for (uint64_t i = 0; i < v.rows; i++) {
        int64_t id = v.ids[i];
        if (id < 0 || (uint64_t)id >= v.rows) {
            rc = ec_seterr(EC_EFORMAT, "index file: id %lld at position %llu is outside "
                                       "[0, %llu)", (long long)id, (unsigned long long)i,
                           (unsigned long long)v.rows);
            break;
        }
        if (seen[id / 64] & (UINT64_C(1) << (id % 64))) {
            rc = ec_seterr(EC_EFORMAT, "index file: id %lld appears twice (again at position "
                                       "%llu)", (long long)id, (unsigned long long)i);
            break;
        }
        seen[id / 64] |= UINT64_C(1) << (id % 64);
    }
    free(seen);
    if (rc)
        return rc;
    *out = v;
    return 0;
}
