/*
 * pagerbench.c - embcache-pagerbench: how fast the pager (core/pager.h)
 * faults partitions in from disk, next to fio on the same bytes.
 *
 *   embcache-pagerbench [--file PATH | --dir DIR --size-mib N]
 *                       [--partition-kib 256,1024,4096] [--qd 1,8,32]
 *                       [--pager io_uring|pread|both] [--random] [--seconds S]
 *                       [--json] [--fio PATH|none] [--keep] [--repeat N]
 *
 * For each partition size it makes a partition file of N MiB of
 * pseudo-random bytes with ec_partfile_writer (real checksums, nothing a
 * compressing or zero-detecting disk could shortcut), or reuses one already
 * in DIR whose header matches. Then, for each queue depth, it runs fio
 * (ioengine=io_uring, direct=1, the partition size as block size, the queue
 * depth as iodepth) over exactly the file's data bytes, sequentially and at
 * random, and for each pager kind it reads every partition of the file once
 * into an arena of qd partition slots (MAP_SHARED|MAP_ANONYMOUS, like the
 * segment), keeping qd reads in flight and recycling slots as they finish,
 * the way the daemon's server thread drives the pager: submit, poll the
 * pager's eventfd, reap. Reads are cold: O_DIRECT (the pager's own choice),
 * after POSIX_FADV_DONTNEED on the file.
 *
 * The pager always verifies each partition's XXH3-64 before it reports the
 * read done; that cost is part of every number here, and the program
 * measures the checksum's speed on freshly read partitions so it can be told
 * apart.
 *
 * Latency is per partition, submit to reap (CLOCK_MONOTONIC): every sample
 * is kept and sorted. fio's latencies are its lat_ns (submit to complete)
 * percentiles. GB/s is 10^9 bytes per second of wall time, first submit to
 * last reap. The pread pager gets qd reader threads, so qd is the reads in
 * flight for both kinds.
 *
 * With --repeat N each (partition size, qd) group - fio read, fio randread,
 * each pager - runs N times back to back, so a disk whose speed drifts
 * (a VM's) is compared pairwise; the table gives medians.
 *
 * Output: one line per configuration with every parameter echoed, then a
 * table; with --json, a JSON document on stdout and the lines and table on
 * stderr. Single-threaded apart from the pread pager's readers.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "bench_util.h"
#include "core/pager.h"
#include "core/partfile.h"

#define MAX_LIST 16
#define ROW_BYTES 4096u /* rows of one page: any partition size that is a 4 KiB multiple */
#define DEFAULT_DIR "/tmp/embcache-bench"

struct opts {
    const char *file;
    const char *dir;
    uint64_t size_mib;
    uint64_t part_kib[MAX_LIST];
    unsigned nparts_kib;
    bool part_given;
    uint64_t qd[MAX_LIST];
    unsigned nqd;
    bool kind_uring, kind_pread, kind_explicit;
    bool random;
    double seconds;
    bool json;
    const char *fio;   /* NULL: not to be run */
    bool keep;
    unsigned repeat;
};

/* One fio run's numbers. */

/* One configuration's numbers. */
struct result {
    const char *kind;
    char desc[256];
    uint64_t part_kib;
    unsigned qd;
    unsigned rep;       /* which repetition, from 1 */
    bool random;
    bool ok;
    char err[EC_ERRMSG_MAX];
    uint64_t parts, bytes;
    double secs, gbps, p50_us, p90_us, p99_us, p999_us, max_us, cpu_pct;
    double verify_gbps; /* XXH3-64 speed on fresh partitions, one core */
    double verify_pct;  /* of one core, spent verifying at this throughput */
    uint64_t direct, fixed, retries;
    bu_fio_res fio_seq, fio_rand;
    double ratio; /* gbps / the fio run of the same order; 0 when none */
};

/* The file under test. */
struct bfile {
    char path[PATH_MAX];
    ec_partfile_meta m;
    int fd, dfd;
    uint64_t *sums;
    bool created;
    uint64_t data_bytes; /* file_size - data_off: what fio reads */
    double verify_gbps;  /* XXH3-64 over partitions fresh from disk, one core */
};

static FILE *txt; /* the human-readable lines: stdout, or stderr with --json */


static double cpu_secs(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}


/* Pseudo-random, never-zero 64-bit words. */
static void fill_random(uint8_t *buf, size_t len, uint64_t *seed)
{
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t v = bu_splitmix(seed) | 1;
        memcpy(buf + i, &v, 8);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of n sorted samples, in microseconds. */
static double pct_us(const uint64_t *sorted, uint64_t n, double pct)
{
    uint64_t rank;

    if (!n)
        return 0;
    rank = (uint64_t)(pct / 100.0 * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)sorted[rank - 1] / 1e3;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "embcache-pagerbench: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: embcache-pagerbench [--file PATH | --dir DIR --size-mib N]\n"
            "           [--partition-kib 256,1024,4096] [--qd 1,8,32]\n"
            "           [--pager io_uring|pread|both] [--random] [--seconds S]\n"
            "           [--json] [--fio PATH|none] [--keep] [--repeat N]\n"
            "\n"
            "  --file PATH        read this partition file (its own partition size)\n"
            "  --dir DIR          make or reuse bench files here (default " DEFAULT_DIR ")\n"
            "  --size-mib N       bytes of data per bench file (default 1024)\n"
            "  --partition-kib L  partition sizes, KiB, 4 KiB multiples (default 256,1024,4096)\n"
            "  --qd L             reads in flight (default 1,8,32)\n"
            "  --pager K          io_uring, pread or both (default both)\n"
            "  --random           read partitions in a random order (default: file order)\n"
            "  --seconds S        stop each configuration after S seconds (default 60)\n"
            "  --json             JSON on stdout; the text lines go to stderr\n"
            "  --fio PATH|none    the fio to compare with (default: fio on PATH)\n"
            "  --keep             keep bench files this run created (default: remove)\n"
            "  --repeat N         run each configuration (and fio) N times, interleaved;\n"
            "                     the table shows medians (default 1)\n");
}

static uint64_t parse_u64(const char *what, const char *s)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        die("%s: '%s' is not a number", what, s);
    return v;
}

static unsigned parse_list(const char *what, const char *s, uint64_t *out)
{
    char buf[256], *save = NULL, *tok;
    unsigned n = 0;

    if (strlen(s) >= sizeof(buf))
        die("%s: list too long", what);
    strcpy(buf, s);
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == MAX_LIST)
            die("%s: at most %d values", what, MAX_LIST);
        out[n] = parse_u64(what, tok);
        if (!out[n])
            die("%s: 0 is not allowed", what);
        n++;
    }
    if (!n)
        die("%s: empty list", what);
    return n;
}

static void parse_args(int argc, char **argv, struct opts *o)
{
    static const struct option lo[] = {
        {"file", required_argument, NULL, 'f'},     {"dir", required_argument, NULL, 'd'},
        {"size-mib", required_argument, NULL, 's'}, {"partition-kib", required_argument, NULL, 'p'},
        {"qd", required_argument, NULL, 'q'},       {"pager", required_argument, NULL, 'k'},
        {"random", no_argument, NULL, 'r'},         {"seconds", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},           {"fio", required_argument, NULL, 'F'},
        {"keep", no_argument, NULL, 'K'},           {"repeat", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    char *end;

    memset(o, 0, sizeof(*o));
    o->dir = DEFAULT_DIR;
    o->size_mib = 1024;
    o->nparts_kib = parse_list("--partition-kib", "256,1024,4096", o->part_kib);
    o->nqd = parse_list("--qd", "1,8,32", o->qd);
    o->kind_uring = o->kind_pread = true;
    o->seconds = 60;
    o->fio = "fio";
    o->repeat = 1;
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case 'f': o->file = optarg; break;
        case 'd': o->dir = optarg; break;
        case 's': o->size_mib = parse_u64("--size-mib", optarg); break;
        case 'p':
            o->nparts_kib = parse_list("--partition-kib", optarg, o->part_kib);
            o->part_given = true;
            break;
        case 'q': o->nqd = parse_list("--qd", optarg, o->qd); break;
        case 'k':
            o->kind_explicit = strcmp(optarg, "both") != 0;
            o->kind_uring = !strcmp(optarg, "io_uring") || !strcmp(optarg, "both");
            o->kind_pread = !strcmp(optarg, "pread") || !strcmp(optarg, "both");
            if (!o->kind_uring && !o->kind_pread)
                die("--pager: '%s' is not io_uring, pread or both", optarg);
            break;
        case 'r': o->random = true; break;
        case 't':
            o->seconds = strtod(optarg, &end);
            if (*end || !(o->seconds > 0))
                die("--seconds: '%s' is not a positive number", optarg);
            break;
        case 'j': o->json = true; break;
        case 'F': o->fio = strcmp(optarg, "none") ? optarg : NULL; break;
        case 'K': o->keep = true; break;
        case 'R':
            o->repeat = (unsigned)parse_u64("--repeat", optarg);
            if (!o->repeat || o->repeat > 100)
                die("--repeat: 1..100");
            break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc)
        die("unexpected argument '%s' (see --help)", argv[optind]);
    if (!o->size_mib || o->size_mib > (1u << 20))
        die("--size-mib: %" PRIu64 " is out of range (1..1048576)", o->size_mib);
    for (unsigned i = 0; i < o->nparts_kib; i++)
        if (o->part_kib[i] % 4 || o->part_kib[i] > 1024 * 1024 ||
            o->part_kib[i] > o->size_mib * 1024)
            die("--partition-kib: %" PRIu64 " KiB is not a 4 KiB multiple within the file "
                "and 1 GiB", o->part_kib[i]);
    for (unsigned i = 0; i < o->nqd; i++)
        if (o->qd[i] > 4096)
            die("--qd: %" PRIu64 " is more than 4096", o->qd[i]);
    if (o->file && o->part_given)
        fprintf(stderr, "embcache-pagerbench: --file given: its own partition size is used, "
                        "--partition-kib is ignored\n");
}

/* mkdir -p */
static void make_dirs(const char *dir)
{
    char buf[PATH_MAX];
    size_t len = strlen(dir);

    if (len >= sizeof(buf))
        die("--dir: path too long");
    memcpy(buf, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            die("cannot create directory %s: %s", buf, strerror(errno));
        buf[i] = i < len ? '/' : '\0';
    }
}

/* What verification costs here: XXH3-64 speed, one core, over partitions
 * just read from the file with O_DIRECT (as the pager sees them: fresh from
 * disk, not in the CPU's caches unless the device put them there), up to
 * 64 MiB of them. */
static double measure_verify(const struct bfile *f)
{
    size_t len = (size_t)f->m.stride;
    uint64_t n = (64u << 20) / len, ns = 0, bytes = 0;
    int fd = f->dfd >= 0 ? f->dfd : f->fd;
    uint8_t *buf = aligned_alloc(EC_PARTFILE_ALIGN, len);
    volatile uint64_t sink = 0;

    if (!buf)
        return 0;
    if (n < 4)
        n = 4;
    if (n > f->m.partitions)
        n = f->m.partitions;
    for (uint64_t p = 0; p < n; p++) {
        uint64_t plen = ec_partfile_part_length(&f->m, p), t;
        size_t io = (size_t)((plen + EC_PARTFILE_ALIGN - 1) / EC_PARTFILE_ALIGN *
                             EC_PARTFILE_ALIGN);
        if (pread(fd, buf, io, (off_t)ec_partfile_part_offset(&f->m, p)) < (ssize_t)plen)
            break;
        t = bu_now_ns();
        sink += ec_checksum(buf, (size_t)plen);
        ns += bu_now_ns() - t;
        bytes += plen;
    }
    (void)sink;
    free(buf);
    return ns ? (double)bytes / (double)ns : 0; /* bytes per ns = GB/s */
}

/* Open path as a partition file; fills f. Returns false (and closes
 * everything) when it is not a valid one. */
static bool bfile_open(struct bfile *f, const char *path)
{
    int rc;

    snprintf(f->path, sizeof(f->path), "%s", path);
    rc = ec_partfile_open(path, &f->m, &f->fd);
    if (rc)
        return false;
    f->sums = calloc(f->m.partitions, sizeof(*f->sums));
    if (!f->sums)
        die("out of memory for %" PRIu64 " checksums", f->m.partitions);
    rc = ec_partfile_read_table(f->fd, &f->m, f->sums);
    if (rc) {
        fprintf(stderr, "embcache-pagerbench: %s: %s\n", path, ec_last_error());
        free(f->sums);
        close(f->fd);
        return false;
    }
    f->dfd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (f->dfd < 0)
        fprintf(stderr, "embcache-pagerbench: warning: %s cannot be opened O_DIRECT (%s): "
                        "reads go through the page cache and are not cold\n",
                path, strerror(errno));
    f->data_bytes = f->m.file_size - f->m.data_off;
    f->verify_gbps = measure_verify(f);
    return true;
}

static void bfile_close(struct bfile *f)
{
    free(f->sums);
    close(f->fd);
    if (f->dfd >= 0)
        close(f->dfd);
    if (f->created && unlink(f->path) != 0)
        fprintf(stderr, "embcache-pagerbench: cannot remove %s: %s\n", f->path,
                strerror(errno));
}

/* DIR/pagerbench-<N>m-<K>k.ecp: reuse it when its layout matches, else
 * (re)write it with pseudo-random rows through the partition writer. */
static void bfile_make(struct bfile *f, const struct opts *o, uint64_t part_kib)
{
    char path[PATH_MAX], name[128], tmp[PATH_MAX];
    ec_partfile_meta m;
    ec_partfile_writer *w;
    uint64_t rows = o->size_mib * (1024 * 1024 / ROW_BYTES), rpp, hc, seed, left;
    uint64_t *sums;
    uint8_t *buf;
    size_t chunk = 8u << 20;
    uint64_t t0;

    memset(f, 0, sizeof(*f));
    if ((size_t)snprintf(path, sizeof(path), "%s/pagerbench-%" PRIu64 "m-%" PRIu64 "k%s",
                         o->dir, o->size_mib, part_kib, EC_PARTFILE_EXT) >= sizeof(path))
        die("--dir: path too long");
    if (ec_partfile_plan(rows, ROW_BYTES, part_kib * 1024, &rpp))
        die("cannot plan %" PRIu64 " KiB partitions: %s", part_kib, ec_last_error());
    if (access(path, F_OK) == 0) {
        if (bfile_open(f, path)) {
            if (f->m.rows == rows && f->m.row_bytes == ROW_BYTES &&
                f->m.rows_per_partition == rpp && f->m.dtype == EC_DTYPE_U8)
                return; /* reuse (and leave it there) */
            bfile_close(f);
        }
        fprintf(stderr, "embcache-pagerbench: %s does not match; writing it again\n", path);
        if (unlink(path) != 0)
            die("cannot remove %s: %s", path, strerror(errno));
    }
    memset(&m, 0, sizeof(m));
    m.dtype = EC_DTYPE_U8;
    m.ndim = 2;
    m.shape[0] = rows;
    m.shape[1] = ROW_BYTES;
    m.rows_per_partition = rpp;
    if (ec_partfile_layout(&m))
        die("partition file layout: %s", ec_last_error());
    if (m.stride != part_kib * 1024)
        die("%" PRIu64 " KiB partitions come out as %" PRIu64 " bytes", part_kib, m.stride);
    fprintf(txt, "# writing %s: %" PRIu64 " MiB, %" PRIu64 " partitions of %" PRIu64 " KiB\n",
            path, o->size_mib, m.partitions, part_kib);
    fflush(txt);
    t0 = bu_now_ns();
    buf = malloc(chunk);
    sums = calloc(m.partitions, sizeof(*sums));
    if (!buf || !sums)
        die("out of memory");
    if (ec_partfile_writer_open(o->dir, &m, &w))
        die("%s", ec_last_error());
    seed = 0x5eed0000u + part_kib;
    for (left = rows * ROW_BYTES; left;) {
        size_t n = left < chunk ? (size_t)left : chunk;
        fill_random(buf, n, &seed);
        if (ec_partfile_writer_append(w, buf, n))
            die("%s", ec_last_error());
        left -= n;
    }
    if (ec_partfile_writer_commit(w, name, sizeof(name), &hc, sums))
        die("%s", ec_last_error());
    ec_partfile_writer_close(w);
    free(buf);
    free(sums);
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s/%s", o->dir, name) >= sizeof(tmp))
        die("--dir: path too long");
    if (rename(tmp, path) != 0)
        die("cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (!bfile_open(f, path))
        die("the file just written does not open: %s", ec_last_error());
    f->created = !o->keep;
    fprintf(txt, "# wrote %s in %.1f s\n", path, (double)(bu_now_ns() - t0) / 1e9);
}

/* Drop the file's pages from the page cache (O_DIRECT would bypass them
 * anyway; this covers a file system that refuses O_DIRECT). */
static void make_cold(const struct bfile *f)
{
    (void)posix_fadvise(f->fd, 0, 0, POSIX_FADV_DONTNEED);
}

/* ---- fio ------------------------------------------------------------- */




/* jobs[0].read: bw_bytes and the 50th/99th lat_ns percentiles (clat_ns
 * where fio did not report lat_ns percentiles). */

static char fio_version[64] = "none";

static bool fio_probe(const char *fio)
{
    char *argv[] = {(char *)fio, (char *)"--version", NULL};
    int st;
    char *out = bu_run_capture(argv, &st);
    bool ok = out && WIFEXITED(st) && WEXITSTATUS(st) == 0 && !strncmp(out, "fio", 3);

    if (ok) {
        out[strcspn(out, "\r\n")] = '\0';
        snprintf(fio_version, sizeof(fio_version), "%s", out);
    }
    free(out);
    return ok;
}

static void fio_run(const struct opts *o, const struct bfile *f, unsigned qd, bool random,
                    bu_fio_res *r)
{
    make_cold(f);
    if (!bu_fio_run(o->fio, f->path, random ? "randread" : "read", f->m.stride, qd,
                    f->data_bytes, f->m.data_off, o->seconds, r))
        fprintf(stderr, "embcache-pagerbench: fio %s bs=%" PRIu64 " iodepth=%u failed "
                        "(exit status %d) or printed no usable JSON\n",
                random ? "randread" : "read", f->m.stride, qd, r->status);
}

/* ---- the pager run ----------------------------------------------------- */

struct slot {
    ec_page_req req;
    uint64_t t0;
    unsigned idx;
};

/* One configuration in progress: what is needed to start the next read. */
struct run {
    ec_pager *p;
    const struct bfile *f;
    const uint32_t *order;
    uint64_t next, nparts, inflight;
    uint8_t *arena;
    size_t slot_len;
    int file_slot;
    struct slot *slots;
    unsigned *freel;
    unsigned nfree;
    uint64_t *lat;
    uint64_t nlat, bytes;
    int rc;
    char msg[EC_ERRMSG_MAX];
};

/* Start reads on free slots until qd are in flight or none are left. */
static void refill(struct run *c)
{
    const ec_partfile_meta *m = &c->f->m;

    while (c->nfree && c->next < c->nparts && !c->rc) {
        struct slot *s = &c->slots[c->freel[--c->nfree]];
        ec_page_req *r = &s->req;
        uint32_t part = c->order[c->next++];
        uint64_t len = ec_partfile_part_length(m, part);

        memset(r, 0, sizeof(*r));
        r->fd = c->f->fd;
        r->dfd = c->f->dfd;
        r->file_slot = c->file_slot;
        r->path = c->f->path;
        r->file_off = ec_partfile_part_offset(m, part);
        r->length = (uint32_t)len;
        r->io_len = (uint32_t)((len + EC_PARTFILE_ALIGN - 1) / EC_PARTFILE_ALIGN *
                               EC_PARTFILE_ALIGN);
        r->direct_ok = true;
        r->dest = c->arena + (size_t)s->idx * c->slot_len;
        r->checksum = c->f->sums[part];
        r->part = part;
        r->prio = EC_PAGE_DEMAND;
        r->user = s;
        s->t0 = bu_now_ns();
        c->inflight++;
        ec_pager_submit(c->p, r);
    }
    ec_pager_flush(c->p);
}

static void on_done(ec_page_req *r, void *arg)
{
    struct run *c = arg;
    struct slot *s = r->user;
    uint64_t t = bu_now_ns();

    c->inflight--;
    if (r->rc) {
        if (!c->rc) {
            c->rc = r->rc;
            snprintf(c->msg, sizeof(c->msg), "%s", r->msg);
        }
    } else {
        c->lat[c->nlat++] = t - s->t0;
        c->bytes += r->length;
    }
    c->freel[c->nfree++] = s->idx; /* refilled once the reap is over, as the server does */
}

static void on_close(ec_page_req *r, void *arg)
{
    (void)r;
    (void)arg;
}

static void pager_run(const struct opts *o, const struct bfile *f, enum ec_pager_kind kind,
                      unsigned qd, struct result *res)
{
    const ec_partfile_meta *m = &f->m;
    uint64_t nparts = m->partitions, t0, t1, deadline;
    uint32_t *order = NULL;
    size_t slot_len = (size_t)m->stride, arena_len = slot_len * qd;
    uint8_t *arena;
    ec_pager *p = NULL;
    ec_pager_config cfg = {.kind = kind, .queue_depth = qd, .threads = qd};
    ec_pager_stats st;
    struct run c;
    double c0;

    memset(&c, 0, sizeof(c));
    res->kind = kind == EC_PAGER_URING ? "io_uring" : "pread";
    res->qd = qd;
    res->random = o->random;
    res->part_kib = m->stride / 1024;
    arena = mmap(NULL, arena_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (arena == MAP_FAILED)
        die("mmap of a %zu-byte arena: %s", arena_len, strerror(errno));
    memset(arena, 0xa5, arena_len); /* fault it in, as a segment in use would be */
    cfg.region = arena;
    cfg.region_len = arena_len;
    if (ec_pager_open(&cfg, &p)) {
        snprintf(res->err, sizeof(res->err), "%s", ec_last_error());
        munmap(arena, arena_len);
        return;
    }
    snprintf(res->desc, sizeof(res->desc), "%s", ec_pager_describe(p));
    c.p = p;
    c.f = f;
    c.nparts = nparts;
    c.arena = arena;
    c.slot_len = slot_len;
    c.file_slot = ec_pager_file_add(p, f->dfd);
    c.slots = calloc(qd, sizeof(*c.slots));
    c.freel = calloc(qd, sizeof(*c.freel));
    c.lat = calloc(nparts, sizeof(*c.lat));
    order = malloc(nparts * sizeof(*order));
    if (!c.slots || !c.freel || !c.lat || !order)
        die("out of memory");
    for (uint64_t i = 0; i < nparts; i++)
        order[i] = (uint32_t)i;
    if (o->random) {
        uint64_t seed = 42;
        for (uint64_t i = nparts - 1; i > 0; i--) {
            uint64_t j = bu_splitmix(&seed) % (i + 1);
            uint32_t x = order[i];
            order[i] = order[j];
            order[j] = x;
        }
    }
    c.order = order;
    for (unsigned i = 0; i < qd; i++) {
        c.slots[i].idx = i;
        c.freel[c.nfree++] = qd - 1 - i; /* slot 0 first */
    }
    make_cold(f);

    c0 = cpu_secs();
    t0 = bu_now_ns();
    deadline = t0 + (uint64_t)(o->seconds * 1e9);
    for (;;) {
        refill(&c);
        if (!c.inflight)
            break;
        struct pollfd pfd = {.fd = ec_pager_event_fd(p), .events = POLLIN};
        if (poll(&pfd, 1, 1000) < 0 && errno != EINTR)
            die("poll: %s", strerror(errno));
        ec_pager_reap(p, on_done, &c);
        if (c.next < c.nparts && bu_now_ns() > deadline)
            c.nparts = c.next; /* out of time: finish what is in flight */
    }
    t1 = bu_now_ns();
    res->cpu_pct = 100.0 * (cpu_secs() - c0) / ((double)(t1 - t0) / 1e9);

    ec_pager_stats_get(p, &st);
    ec_pager_file_del(p, c.file_slot);
    ec_pager_close(p, on_close, NULL);
    munmap(arena, arena_len);

    if (c.rc) {
        snprintf(res->err, sizeof(res->err), "%s", c.msg);
    } else {
        res->ok = true;
        res->parts = c.nlat;
        res->bytes = c.bytes;
        res->secs = (double)(t1 - t0) / 1e9;
        res->gbps = (double)c.bytes / 1e9 / res->secs;
        qsort(c.lat, c.nlat, sizeof(*c.lat), cmp_u64);
        res->p50_us = pct_us(c.lat, c.nlat, 50);
        res->p90_us = pct_us(c.lat, c.nlat, 90);
        res->p99_us = pct_us(c.lat, c.nlat, 99);
        res->p999_us = pct_us(c.lat, c.nlat, 99.9);
        res->max_us = c.nlat ? (double)c.lat[c.nlat - 1] / 1e3 : 0;
        res->verify_gbps = f->verify_gbps;
        res->verify_pct = f->verify_gbps > 0 ? 100.0 * res->gbps / f->verify_gbps : 0;
        res->direct = st.direct_reads;
        res->fixed = st.fixed_buffer_reads;
        res->retries = st.retries;
    }
    free(order);
    free(c.lat);
    free(c.freel);
    free(c.slots);
}

/* ---- output ------------------------------------------------------------ */

static void print_line(const struct result *r)
{
    if (!r->ok) {
        fprintf(txt, "pager=%s part_kib=%" PRIu64 " qd=%u order=%s rep=%u error=\"%s\"\n",
                r->kind, r->part_kib, r->qd, r->random ? "random" : "seq", r->rep, r->err);
        fflush(txt);
        return;
    }
    fprintf(txt,
            "pager=%s part_kib=%" PRIu64 " qd=%u order=%s rep=%u parts=%" PRIu64
            " bytes=%" PRIu64
            " secs=%.3f gbps=%.3f p50_us=%.0f p90_us=%.0f p99_us=%.0f p999_us=%.0f "
            "max_us=%.0f cpu_pct=%.0f verify_gbps=%.2f verify_cpu_pct=%.0f direct=%" PRIu64 " fixed_buf=%" PRIu64
            " retries=%" PRIu64,
            r->kind, r->part_kib, r->qd, r->random ? "random" : "seq", r->rep, r->parts, r->bytes,
            r->secs, r->gbps, r->p50_us, r->p90_us, r->p99_us, r->p999_us, r->max_us,
            r->cpu_pct, r->verify_gbps, r->verify_pct, r->direct, r->fixed, r->retries);
    if (r->fio_seq.ok)
        fprintf(txt, " fio_read_gbps=%.3f fio_read_p50_us=%.0f fio_read_p99_us=%.0f",
                r->fio_seq.gbps, r->fio_seq.p50_us, r->fio_seq.p99_us);
    if (r->fio_rand.ok)
        fprintf(txt, " fio_randread_gbps=%.3f fio_randread_p50_us=%.0f fio_randread_p99_us=%.0f",
                r->fio_rand.gbps, r->fio_rand.p50_us, r->fio_rand.p99_us);
    if (r->ratio > 0)
        fprintf(txt, " ratio=%.3f", r->ratio);
    fprintf(txt, " desc=\"%s\"\n", r->desc);
    fflush(txt);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of get() over the results rs[idx[0..k)], skipping those where it
 * is < 0 (no value); < 0 when none has one. */
static double median_of(const struct result *rs, const size_t *idx, size_t k,
                        double (*get)(const struct result *))
{
    double v[128];
    size_t m = 0;

    for (size_t i = 0; i < k && m < 128; i++) {
        double x = get(&rs[idx[i]]);
        if (x >= 0)
            v[m++] = x;
    }
    if (!m)
        return -1;
    qsort(v, m, sizeof(*v), cmp_double);
    return m % 2 ? v[m / 2] : (v[m / 2 - 1] + v[m / 2]) / 2;
}

static const bu_fio_res *base_of(const struct result *r)
{
    return r->random ? &r->fio_rand : &r->fio_seq;
}
static double get_gbps(const struct result *r) { return r->ok ? r->gbps : -1; }
static double get_p50(const struct result *r) { return r->ok ? r->p50_us : -1; }
static double get_p99(const struct result *r) { return r->ok ? r->p99_us : -1; }
static double get_fgbps(const struct result *r) { return base_of(r)->ok ? base_of(r)->gbps : -1; }
static double get_fp50(const struct result *r) { return base_of(r)->ok ? base_of(r)->p50_us : -1; }
static double get_fp99(const struct result *r) { return base_of(r)->ok ? base_of(r)->p99_us : -1; }
static double get_rgbps(const struct result *r) { return r->fio_rand.ok ? r->fio_rand.gbps : -1; }
static double get_ratio(const struct result *r) { return r->ok && r->ratio > 0 ? r->ratio : -1; }

/* A table cell: v with `decimals` decimals in `width` columns, "-" when v < 0. */
static void cell(double v, int decimals, int width)
{
    if (v < 0)
        fprintf(txt, " %*s", width, "-");
    else
        fprintf(txt, " %*.*f", width, decimals, v);
}

/* One row per (pager, partition size, qd): medians over the repetitions;
 * ratio is the median of each repetition's own ratio (pager and fio run back
 * to back), with the lowest and highest when there were several. */
static void print_table(const struct result *rs, size_t n, unsigned repeat)
{
    size_t *idx = calloc(n ? n : 1, sizeof(*idx));
    bool *done = calloc(n ? n : 1, sizeof(*done));

    if (!idx || !done)
        die("out of memory");
    fprintf(txt, "\n%-8s %8s %4s %-6s %4s %7s %8s %8s %9s %8s %8s %9s %6s %s\n", "pager",
            "part_KiB", "qd", "order", "reps", "GB/s", "p50_us", "p99_us", "fio_GB/s", "fio_p50",
            "fio_p99", "rand_GB/s", "ratio", repeat > 1 ? "ratio_min..max" : "");
    for (size_t i = 0; i < n; i++) {
        size_t k = 0, bad = 0;
        double lo = -1, hi = -1;

        if (done[i])
            continue;
        for (size_t j = i; j < n; j++) {
            if (done[j] || strcmp(rs[j].kind, rs[i].kind) || rs[j].part_kib != rs[i].part_kib ||
                rs[j].qd != rs[i].qd)
                continue;
            done[j] = true;
            idx[k++] = j;
            bad += !rs[j].ok;
            if (get_ratio(&rs[j]) >= 0) {
                if (lo < 0 || rs[j].ratio < lo)
                    lo = rs[j].ratio;
                if (hi < 0 || rs[j].ratio > hi)
                    hi = rs[j].ratio;
            }
        }
        fprintf(txt, "%-8s %8" PRIu64 " %4u %-6s %4zu", rs[i].kind, rs[i].part_kib, rs[i].qd,
                rs[i].random ? "random" : "seq", k - bad);
        cell(median_of(rs, idx, k, get_gbps), 3, 7);
        cell(median_of(rs, idx, k, get_p50), 0, 8);
        cell(median_of(rs, idx, k, get_p99), 0, 8);
        cell(median_of(rs, idx, k, get_fgbps), 3, 9);
        cell(median_of(rs, idx, k, get_fp50), 0, 8);
        cell(median_of(rs, idx, k, get_fp99), 0, 8);
        cell(median_of(rs, idx, k, get_rgbps), 3, 9);
        cell(median_of(rs, idx, k, get_ratio), 3, 6);
        if (k > 1 && lo >= 0)
            fprintf(txt, " %.3f..%.3f", lo, hi);
        if (bad)
            fprintf(txt, "  (%zu failed: %s)", bad, rs[idx[0]].ok ? "see above" : rs[idx[0]].err);
        fputc('\n', txt);
    }
    fprintf(txt, "(medians over repetitions; ratio = pager GB/s / fio %s GB/s at the same block "
                 "size and depth, run back to back; fio_p50/p99 are fio's lat_ns percentiles, "
                 "us)\n",
            n && rs[0].random ? "randread" : "read");
    fflush(txt);
    free(idx);
    free(done);
}

static void json_str(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            fprintf(out, "\\u%04x", ch);
        else
            fputc(ch, out);
    }
    fputc('"', out);
}

static void json_fio(FILE *out, const char *name, const bu_fio_res *f)
{
    if (!f->ok) {
        fprintf(out, ", \"%s\": null", name);
        return;
    }
    fprintf(out, ", \"%s\": {\"gbps\": %.4f, \"p50_us\": %.1f, \"p99_us\": %.1f}", name,
            f->gbps, f->p50_us, f->p99_us);
}

static void print_json(const struct opts *o, const struct result *rs, size_t n,
                       const char *file_desc)
{
    struct utsname u;
    char host[256] = "";

    uname(&u);
    gethostname(host, sizeof(host) - 1);
    printf("{\n  \"bench\": \"embcache-pagerbench\",\n  \"host\": ");
    json_str(stdout, host);
    printf(",\n  \"kernel\": ");
    json_str(stdout, u.release);
    printf(",\n  \"machine\": ");
    json_str(stdout, u.machine);
    printf(",\n  \"cpus\": %ld,\n  \"mem_mib\": %lld,\n", sysconf(_SC_NPROCESSORS_ONLN),
           (long long)sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE) / (1 << 20));
    printf("  \"fio\": ");
    json_str(stdout, fio_version);
    printf(",\n  \"files\": ");
    json_str(stdout, file_desc);
    printf(",\n  \"order\": \"%s\",\n  \"seconds_cap\": %.1f,\n  \"repeat\": %u,\n",
           o->random ? "random" : "seq", o->seconds, o->repeat);
    printf("  \"checksum\": \"xxh3-64, verified by the pager on every read\",\n"
           "  \"results\": [\n");
    for (size_t i = 0; i < n; i++) {
        const struct result *r = &rs[i];
        printf("    {\"pager\": \"%s\", \"part_kib\": %" PRIu64 ", \"qd\": %u, \"order\": \"%s\", "
               "\"rep\": %u, \"ok\": %s",
               r->kind, r->part_kib, r->qd, r->random ? "random" : "seq", r->rep,
               r->ok ? "true" : "false");
        if (!r->ok) {
            printf(", \"error\": ");
            json_str(stdout, r->err);
        } else {
            printf(", \"parts\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"secs\": %.4f, "
                   "\"gbps\": %.4f, \"lat_us\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, "
                   "\"p99.9\": %.1f, \"max\": %.1f}, \"cpu_pct\": %.1f, \"verify_gbps\": %.3f, "
                   "\"verify_cpu_pct\": %.1f, "
                   "\"direct_reads\": %" PRIu64 ", \"fixed_buffer_reads\": %" PRIu64
                   ", \"retries\": %" PRIu64 ", \"desc\": ",
                   r->parts, r->bytes, r->secs, r->gbps, r->p50_us, r->p90_us, r->p99_us,
                   r->p999_us, r->max_us, r->cpu_pct, r->verify_gbps, r->verify_pct, r->direct,
                   r->fixed,
                   r->retries);
            json_str(stdout, r->desc);
        }
        json_fio(stdout, "fio_read", &r->fio_seq);
        json_fio(stdout, "fio_randread", &r->fio_rand);
        if (r->ratio > 0)
            printf(", \"ratio\": %.4f", r->ratio);
        else
            printf(", \"ratio\": null");
        printf("}%s\n", i + 1 < n ? "," : "");
    }
    printf("  ]\n}\n");
}

int main(int argc, char **argv)
{
    struct opts o;
    struct result *rs;
    size_t n = 0, cap;
    unsigned nfiles;
    bool have_fio = false, uring_failed = false;
    char file_desc[PATH_MAX + 64] = "";

    parse_args(argc, argv, &o);
    txt = o.json ? stderr : stdout;
    nfiles = o.file ? 1 : o.nparts_kib;
    cap = (size_t)nfiles * o.nqd * 2 * o.repeat;
    rs = calloc(cap, sizeof(*rs));
    if (!rs)
        die("out of memory");
    if (!o.file)
        make_dirs(o.dir);

    if (o.fio) {
        have_fio = fio_probe(o.fio);
        if (!have_fio)
            fprintf(txt, "# fio not installed (or '%s' does not run): apt-get install fio; "
                         "going on without it\n", o.fio);
    }
    fprintf(txt, "# embcache-pagerbench: %s, the pager verifies every partition's xxh3-64 "
                 "(included in every number), order %s, cap %.0f s per configuration\n",
            have_fio ? fio_version : "no fio", o.random ? "random" : "sequential", o.seconds);
    fflush(txt);

    for (unsigned fi = 0; fi < nfiles; fi++) {
        struct bfile f;

        if (o.file) {
            memset(&f, 0, sizeof(f));
            if (!bfile_open(&f, o.file))
                die("%s is not a partition file: %s", o.file, ec_last_error());
        } else {
            bfile_make(&f, &o, o.part_kib[fi]);
        }
        fprintf(txt, "# file %s: %" PRIu64 " partitions of %" PRIu64 " bytes, data %" PRIu64
                     " bytes at offset %" PRIu64 "%s; xxh3-64 of a partition fresh from disk: "
                     "%.2f GB/s on one core\n",
                f.path, f.m.partitions, f.m.stride, f.data_bytes, f.m.data_off,
                f.created ? " (removed at the end; --keep keeps it)" : "", f.verify_gbps);
        fflush(txt);
        snprintf(file_desc + strlen(file_desc), sizeof(file_desc) - strlen(file_desc), "%s%s",
                 fi ? ", " : "", f.path);
        for (unsigned qi = 0; qi < o.nqd * o.repeat; qi++) {
            unsigned qd = (unsigned)o.qd[qi / o.repeat];
            bu_fio_res fs = {0}, fr = {0};

            if (have_fio) {
                fio_run(&o, &f, qd, false, &fs);
                fio_run(&o, &f, qd, true, &fr);
            }
            for (int k = 0; k < 2; k++) {
                enum ec_pager_kind kind = k == 0 ? EC_PAGER_URING : EC_PAGER_PREAD;
                struct result *r = &rs[n];

                if ((kind == EC_PAGER_URING && (!o.kind_uring || uring_failed)) ||
                    (kind == EC_PAGER_PREAD && !o.kind_pread))
                    continue;
                pager_run(&o, &f, kind, qd, r);
                r->rep = qi % o.repeat + 1;
                if (!r->ok && kind == EC_PAGER_URING && !r->desc[0]) {
                    /* The ring did not open: say so once and go on with pread,
                     * unless io_uring was asked for by name. */
                    fprintf(txt, "# io_uring pager not available: %s\n", r->err);
                    if (o.kind_explicit)
                        die("--pager io_uring: io_uring cannot be used here");
                    uring_failed = true;
                    memset(r, 0, sizeof(*r));
                    continue;
                }
                r->fio_seq = fs;
                r->fio_rand = fr;
                if (r->ok) {
                    const bu_fio_res *base = o.random ? &fr : &fs;
                    if (base->ok && base->gbps > 0)
                        r->ratio = r->gbps / base->gbps;
                }
                print_line(r);
                n++;
            }
        }
        bfile_close(&f);
    }
    print_table(rs, n, o.repeat);
    if (o.json)
        print_json(&o, rs, n, file_desc);
    for (size_t i = 0; i < n; i++)
        if (!rs[i].ok) {
            free(rs);
            return 1;
        }
    free(rs);
    return 0;
}
