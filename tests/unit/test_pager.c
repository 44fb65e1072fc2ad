/*
 * test_pager.c - core/pager: both backends (io_uring and pread) read every
 * partition of a partition file byte-exact, many times over (2 GiB of reads
 * per backend by default; EC_TEST_PAGER_MIB changes it); injected EIO and
 * short reads come back as errors, a short read that is retried succeeds, a
 * flipped byte is caught by the checksum, a truncated file is reported, and
 * demand reads go before prewarm reads. Block reads (runs of 4 KiB blocks of
 * a version-2 file, verified block by block) of one and of several blocks
 * come back byte-exact, direct and buffered; a flipped byte fails the block
 * that holds it, by number; injected EIO and short reads reach the
 * request's rc. Without io_uring the io_uring cases report themselves
 * skipped.
 */
#include <errno.h>
#include <liburing.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/pager.h"
#include "core/partfile.h"
#include "testutil.h"

#define ROW 65536u
#define ROWS 512u
#define RPP 16u /* 1 MiB partitions, 32 of them */

static char *dir;
static char path[512];
static uint8_t *src;           /* the tensor's bytes */
static ec_partfile_meta meta;
static uint64_t *sums;
static uint64_t *bsums;        /* the file's block checksums */
static uint8_t *arena;         /* one slot per partition, like extents */
static size_t arena_len;

static int setup(void **state)
{
    ec_partfile_writer *w;
    char name[64];
    uint64_t hc;

    (void)state;
    dir = ect_tmpdir("ec-pager");
    src = malloc((size_t)ROWS * ROW);
    ect_fill(EC_DTYPE_U8, 5, 0, (uint64_t)ROWS * ROW, src);
    memset(&meta, 0, sizeof(meta));
    meta.dtype = EC_DTYPE_U8;
    meta.ndim = 2;
    meta.shape[0] = ROWS;
    meta.shape[1] = ROW;
    meta.rows_per_partition = RPP;
    assert_int_equal(ec_partfile_layout(&meta), 0);
    assert_int_equal(meta.partitions, ROWS / RPP);
    sums = calloc(meta.partitions, sizeof(*sums));
    assert_int_equal(ec_partfile_writer_open(dir, &meta, &w), 0);
    assert_int_equal(ec_partfile_writer_append(w, src, (size_t)ROWS * ROW), 0);
    assert_int_equal(ec_partfile_writer_commit(w, name, sizeof(name), &hc, sums), 0);
    ec_partfile_writer_close(w);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    {
        ec_partfile_meta m;
        int fd;
        assert_int_equal(ec_partfile_open(path, &m, &fd), 0);
        assert_int_equal(m.version, EC_PARTFILE_VERSION);
        assert_int_equal(m.blocks, (uint64_t)ROWS * ROW / 4096); /* no padding here */
        bsums = calloc(m.blocks, sizeof(*bsums));
        assert_int_equal(ec_partfile_read_block_sums(fd, &m, bsums), 0);
        close(fd);
        meta = m;
    }
    arena_len = meta.partitions * (size_t)RPP * ROW;
    arena = mmap(NULL, arena_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(arena != MAP_FAILED);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    munmap(arena, arena_len);
    free(src);
    free(sums);
    free(bsums);
    ect_rmtree(dir);
    free(dir);
    return 0;
}

struct files {
    int fd, dfd;
};

static struct files open_files(const char *p)
{
    struct files f = {open(p, O_RDONLY | O_CLOEXEC), open(p, O_RDONLY | O_DIRECT | O_CLOEXEC)};
    assert_true(f.fd >= 0);
    return f;
}

static void close_files(struct files f)
{
    close(f.fd);
    if (f.dfd >= 0)
        close(f.dfd);
}

static void req_init(ec_page_req *r, struct files f, int slot, uint32_t part)
{
    memset(r, 0, sizeof(*r));
    r->fd = f.fd;
    r->dfd = f.dfd;
    r->file_slot = slot;
    r->path = path;
    r->file_off = ec_partfile_part_offset(&meta, part);
    r->length = (uint32_t)ec_partfile_part_length(&meta, part);
    r->io_len = r->length;
    r->direct_ok = true;
    r->dest = arena + (size_t)part * RPP * ROW;
    r->checksum = sums[part];
    r->part = part;
}

struct reaped {
    ec_page_req *order[64];
    int n;
};

static void on_done(ec_page_req *r, void *arg)
{
    struct reaped *x = arg;
    x->order[x->n++] = r;
}

/* Reap until `want` requests are back (or fail the test after 20 s). */
static void reap_all(ec_pager *p, struct reaped *x, int want)
{
    ec_pager_flush(p);
    for (int i = 0; x->n < want && i < 2000; i++) {
        struct pollfd pfd = {.fd = ec_pager_event_fd(p), .events = POLLIN};
        poll(&pfd, 1, 10);
        ec_pager_reap(p, on_done, x);
    }
    assert_int_equal(x->n, want);
}

static ec_pager *open_kind(enum ec_pager_kind kind, unsigned qd)
{
    ec_pager_config c = {.kind = kind, .queue_depth = qd, .threads = 2, .region = arena,
                         .region_len = arena_len};
    ec_pager *p = NULL;
    int rc = ec_pager_open(&c, &p);

    if (rc && kind == EC_PAGER_URING) {
        /* Skip only when the kernel itself refuses io_uring (not built in,
         * disabled by sysctl or seccomp); our own failure fails the test. */
        struct io_uring ring;
        int k = io_uring_queue_init(4, &ring, 0);
        if (k == -ENOSYS || k == -EPERM || k == -EACCES) {
            printf("io_uring is not available here (%s): skipped\n", strerror(-k));
            return NULL; /* the caller skips */
        }
        if (k == 0)
            io_uring_queue_exit(&ring);
        fail_msg("the io_uring pager failed to open where io_uring works: %s",
                 ec_last_error());
    }
    assert_int_equal(rc, 0);
    return p;
}

static void read_everything(enum ec_pager_kind kind)
{
    const char *mib = getenv("EC_TEST_PAGER_MIB");
    uint64_t total = (mib ? strtoull(mib, NULL, 10) : 2048) << 20, done = 0;
    ec_pager *p = open_kind(kind, 32);
    struct files f = open_files(path);
    ec_page_req *reqs = calloc(meta.partitions, sizeof(*reqs));
    ec_pager_stats st;
    int slot;

    if (!p)
        skip();
    slot = ec_pager_file_add(p, f.dfd);
    while (done < total) {
        struct reaped x = {.n = 0};
        memset(arena, 0, arena_len);
        for (uint32_t part = 0; part < meta.partitions; part++) {
            req_init(&reqs[part], f, slot, part);
            reqs[part].prio = part % 3 ? EC_PAGE_DEMAND : EC_PAGE_PREWARM;
            ec_pager_submit(p, &reqs[part]);
        }
        reap_all(p, &x, (int)meta.partitions);
        for (uint32_t part = 0; part < meta.partitions; part++) {
            if (reqs[part].rc)
                fail_msg("partition %u: %s", part, reqs[part].msg);
            assert_memory_equal(arena + (size_t)part * RPP * ROW,
                                src + (size_t)part * RPP * ROW, RPP * ROW);
        }
        done += arena_len;
    }
    ec_pager_stats_get(p, &st);
    printf("%s (%s): %llu partitions, %llu MiB read byte-exact, %llu direct, %llu fixed "
           "buffer\n", ec_pager_name(p), ec_pager_describe(p), (unsigned long long)st.reads,
           (unsigned long long)(st.bytes >> 20), (unsigned long long)st.direct_reads,
           (unsigned long long)st.fixed_buffer_reads);
    assert_int_equal(st.bytes, done);
    assert_int_equal(st.errors + st.checksum_failures, 0);
    ec_pager_file_del(p, slot);
    ec_pager_close(p, on_done, &(struct reaped){.n = 0});
    close_files(f);
    free(reqs);
}

static void test_uring_reads_everything(void **s) { (void)s; read_everything(EC_PAGER_URING); }
static void test_pread_reads_everything(void **s) { (void)s; read_everything(EC_PAGER_PREAD); }

/* Every 3rd read fails as `kind`; the others succeed. */
static void faults(enum ec_pager_kind kind)
{
    static const enum ec_fault_kind kinds[] = {EC_FAULT_EIO, EC_FAULT_SHORT,
                                               EC_FAULT_SHORT_ONCE};
    ec_pager *p = open_kind(kind, 8);
    struct files f = open_files(path);
    ec_page_req reqs[12];

    if (!p)
        skip();
    for (size_t k = 0; k < 3; k++) {
        struct reaped x = {.n = 0};
        ec_pager_stats st0, st1;

        ec_pager_stats_get(p, &st0);
        ec_pager_inject(p, kinds[k], 3);
        for (uint32_t i = 0; i < 12; i++) {
            req_init(&reqs[i], f, -1, i);
            ec_pager_submit(p, &reqs[i]);
        }
        reap_all(p, &x, 12);
        ec_pager_inject(p, EC_FAULT_NONE, 0);
        ec_pager_stats_get(p, &st1);
        for (uint32_t i = 0; i < 12; i++) {
            bool hit = (i + 1) % 3 == 0;
            if (!hit || kinds[k] == EC_FAULT_SHORT_ONCE) {
                if (reqs[i].rc)
                    fail_msg("fault %zu, read %u: %s", k, i, reqs[i].msg);
                assert_memory_equal(reqs[i].dest, src + (size_t)i * RPP * ROW, RPP * ROW);
                continue;
            }
            assert_int_equal(reqs[i].rc, EC_EIO);
            assert_non_null(strstr(reqs[i].msg, path));
            if (kinds[k] == EC_FAULT_SHORT) {
                /* Half the partition arrived, then the file "ended". */
                char want[64];
                snprintf(want, sizeof(want), "ends %u bytes into", RPP * ROW / 2);
                assert_non_null(strstr(reqs[i].msg, "truncated"));
                if (!strstr(reqs[i].msg, want))
                    fail_msg("expected '%s' in: %s", want, reqs[i].msg);
            }
        }
        if (kinds[k] == EC_FAULT_SHORT_ONCE) {
            assert_true(st1.retries - st0.retries >= 4);
            assert_int_equal(st1.errors, st0.errors);
        } else {
            assert_int_equal(st1.errors - st0.errors, 4);
        }
    }
    ec_pager_close(p, on_done, &(struct reaped){.n = 0});
    close_files(f);
}

static void test_uring_faults(void **s) { (void)s; faults(EC_PAGER_URING); }
static void test_pread_faults(void **s) { (void)s; faults(EC_PAGER_PREAD); }

/* A copy of the file with one flipped byte, then truncated. */
static void damaged(enum ec_pager_kind kind)
{
    char bad[600];
    size_t len;
    uint8_t *file = ect_read_file(path, &len);
    ec_pager *p = open_kind(kind, 8);
    ec_page_req r[2];
    struct files f;

    if (!p) {
        free(file);
        skip();
    }
    snprintf(bad, sizeof(bad), "%s/damaged.ecp", dir);
    file[ec_partfile_part_offset(&meta, 1) + 777] ^= 0x01;
    assert_int_equal(ect_write_file(bad, file, len), 0);
    f = open_files(bad);
    for (int round = 0; round < 2; round++) {
        struct reaped x = {.n = 0};
        req_init(&r[0], f, -1, 0);
        req_init(&r[1], f, -1, 1);
        r[0].path = r[1].path = bad;
        ec_pager_submit(p, &r[0]);
        ec_pager_submit(p, &r[1]);
        reap_all(p, &x, 2);
        assert_int_equal(r[0].rc, 0);
        assert_int_equal(r[1].rc, EC_ECHECKSUM);
        assert_non_null(strstr(r[1].msg, "checksum"));
    }
    close_files(f);
    /* Truncated in the middle of partition 2. */
    assert_int_equal(truncate(bad, (off_t)(ec_partfile_part_offset(&meta, 2) + 4096)), 0);
    f = open_files(bad);
    {
        struct reaped x = {.n = 0};
        req_init(&r[0], f, -1, 2);
        r[0].path = bad;
        ec_pager_submit(p, &r[0]);
        reap_all(p, &x, 1);
        assert_int_equal(r[0].rc, EC_EIO);
        assert_non_null(strstr(r[0].msg, "truncated"));
    }
    close_files(f);
    ec_pager_close(p, on_done, &(struct reaped){.n = 0});
    free(file);
}

static void test_uring_damaged(void **s) { (void)s; damaged(EC_PAGER_URING); }
static void test_pread_damaged(void **s) { (void)s; damaged(EC_PAGER_PREAD); }

/* With one read at a time, a demand read queued behind prewarm reads is
 * the next one served. */
static void test_demand_before_prewarm(void **state)
{
    ec_pager *p = open_kind(EC_PAGER_URING, 1);
    struct files f = open_files(path);
    ec_page_req r[6];
    struct reaped x = {.n = 0};
    int pos = -1;

    (void)state;
    if (!p)
        skip();
    for (uint32_t i = 0; i < 6; i++) {
        req_init(&r[i], f, -1, i);
        r[i].prio = i == 5 ? EC_PAGE_DEMAND : EC_PAGE_PREWARM;
        ec_pager_submit(p, &r[i]);
    }
    reap_all(p, &x, 6);
    for (int i = 0; i < 6; i++)
        if (x.order[i] == &r[5])
            pos = i;
    printf("the demand read, submitted last behind 5 prewarm reads, finished at position %d\n",
           pos);
    assert_true(pos >= 0 && pos <= 1);
    ec_pager_close(p, on_done, &(struct reaped){.n = 0});
    close_files(f);
}

/* ------------------------------------------------------------------ */
/* Block reads                                                         */

/* A read of n blocks from `first` into dest. The data region of this file
 * has no padding, so block b holds src[b * 4096...]. */
static void block_req_init(ec_page_req *r, struct files f, int slot, uint64_t first,
                           uint32_t n, uint8_t *dest)
{
    memset(r, 0, sizeof(*r));
    r->fd = f.fd;
    r->dfd = f.dfd;
    r->file_slot = slot;
    r->path = path;
    r->file_off = ec_partfile_block_offset(&meta, first);
    r->length = r->io_len = n * 4096;
    r->direct_ok = true;
    r->dest = dest;
    r->block_sums = bsums + first;
    r->block = first;
    r->part = 9999; /* must not appear in block messages */
}

static void expect_msg(const ec_page_req *r, const char *want)
{
    if (!strstr(r->msg, want))
        fail_msg("expected '%s' in: %s", want, r->msg);
}

static const struct {
    uint64_t first;
    uint32_t n;
    size_t dest_off;  /* into the arena; not 4 KiB-aligned: a buffered read */
    bool direct_ok;
} block_cases[] = {
    {0, 1, 0, true},                          /* the first block */
    {5, 3, 64 * 4096, true},                  /* several */
    {255, 2, 128 * 4096, true},               /* across partitions 0 and 1 */
    {(uint64_t)ROWS * ROW / 4096 - 1, 1, 192 * 4096, true}, /* the last block */
    {1000, 64, 256 * 4096, true},             /* a quarter partition */
    {77, 1, 400 * 4096 + 512, true},          /* misaligned dest */
    {78, 4, 420 * 4096, false},               /* the caller forbids O_DIRECT */
};
#define NBLOCK_CASES (sizeof(block_cases) / sizeof(block_cases[0]))

static void block_reads(enum ec_pager_kind kind)
{
    ec_pager *p = open_kind(kind, 4);
    struct files f = open_files(path);
    ec_page_req r[NBLOCK_CASES + 3];
    ec_pager_stats st0, st1;
    uint64_t bytes = 0;
    int slot;

    if (!p)
        skip();
    slot = ec_pager_file_add(p, f.dfd);
    ec_pager_stats_get(p, &st0);
    for (int round = 0; round < 3; round++) {
        struct reaped x = {.n = 0};
        memset(arena, 0, arena_len);
        for (size_t i = 0; i < NBLOCK_CASES; i++) {
            block_req_init(&r[i], f, round ? slot : -1, block_cases[i].first,
                           block_cases[i].n, arena + block_cases[i].dest_off);
            r[i].direct_ok = block_cases[i].direct_ok;
            r[i].prio = i % 2 ? EC_PAGE_DEMAND : EC_PAGE_PREWARM;
            ec_pager_submit(p, &r[i]);
            bytes += r[i].length;
        }
        reap_all(p, &x, (int)NBLOCK_CASES);
        for (size_t i = 0; i < NBLOCK_CASES; i++) {
            if (r[i].rc)
                fail_msg("blocks %llu+%u: %s", (unsigned long long)block_cases[i].first,
                         block_cases[i].n, r[i].msg);
            assert_memory_equal(arena + block_cases[i].dest_off,
                                src + block_cases[i].first * 4096,
                                (size_t)block_cases[i].n * 4096);
        }
    }
    ec_pager_stats_get(p, &st1);
    printf("%s: %llu block reads, %llu bytes, %llu direct\n", ec_pager_name(p),
           (unsigned long long)(st1.block_reads - st0.block_reads),
           (unsigned long long)(st1.bytes - st0.bytes),
           (unsigned long long)(st1.direct_reads - st0.direct_reads));
    assert_int_equal(st1.block_reads - st0.block_reads, 3 * NBLOCK_CASES);
    assert_int_equal(st1.reads - st0.reads, 3 * NBLOCK_CASES);
    assert_int_equal(st1.bytes - st0.bytes, bytes);
    assert_int_equal(st1.errors + st1.checksum_failures, 0);

    /* Not whole blocks: refused without I/O. */
    {
        struct reaped x = {.n = 0};
        block_req_init(&r[0], f, -1, 3, 1, arena);
        r[0].length = r[0].io_len = 100;
        block_req_init(&r[1], f, -1, 3, 2, arena + 8192);
        r[1].io_len = 4096;
        block_req_init(&r[2], f, -1, 3, 1, arena + 16384);
        r[2].file_off += 512;
        for (int i = 0; i < 3; i++)
            ec_pager_submit(p, &r[i]);
        reap_all(p, &x, 3);
        for (int i = 0; i < 3; i++) {
            assert_int_equal(r[i].rc, EC_EINVAL);
            expect_msg(&r[i], "whole 4 KiB blocks");
        }
    }
    ec_pager_file_del(p, slot);
    ec_pager_close(p, on_done, &(struct reaped){.n = 0});
    close_files(f);
}

static void test_uring_block_reads(void **s) { (void)s; block_reads(EC_PAGER_URING); }
static void test_pread_block_reads(void **s) { (void)s; block_reads(EC_PAGER_PREAD); }

/* A copy of the file with a flipped byte in block 300, then truncated
 * inside block 501. */
static void block_damaged(enum ec_pager_kind kind)
{
    char bad[600], want[700];
    size_t len;
    uint8_t *file = ect_read_file(path, &len);
    ec_pager *p = open_kind(kind, 8);
    ec_page_req r[4];
    struct files f;
    struct reaped x = {.n = 0};
    ec_pager_stats st0, st1;

    if (!p) {
        free(file);
        skip();
    }
    snprintf(bad, sizeof(bad), "%s/damaged-block.ecp", dir);
    file[ec_partfile_block_offset(&meta, 300) + 123] ^= 0x10;
    assert_int_equal(ect_write_file(bad, file, len), 0);
    f = open_files(bad);
    ec_pager_stats_get(p, &st0);
    block_req_init(&r[0], f, -1, 300, 1, arena);
    block_req_init(&r[1], f, -1, 298, 4, arena + 4 * 4096); /* block 300 is its third */
    block_req_init(&r[2], f, -1, 301, 2, arena + 8 * 4096);
    block_req_init(&r[3], f, -1, 296, 4, arena + 12 * 4096);
    for (int i = 0; i < 4; i++) {
        r[i].path = bad;
        ec_pager_submit(p, &r[i]);
    }
    reap_all(p, &x, 4);
    snprintf(want, sizeof(want), "block 300 of %s failed its checksum", bad);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].rc, EC_ECHECKSUM);
        expect_msg(&r[i], want);
        expect_msg(&r[i], "re-import the model version");
    }
    assert_int_equal(r[2].rc, 0);
    assert_int_equal(r[3].rc, 0);
    assert_memory_equal(arena + 8 * 4096, src + 301 * 4096, 2 * 4096);
    ec_pager_stats_get(p, &st1);
    assert_int_equal(st1.checksum_failures - st0.checksum_failures, 2);
    assert_int_equal(st1.block_reads - st0.block_reads, 2);
    close_files(f);

    assert_int_equal(truncate(bad, (off_t)(ec_partfile_block_offset(&meta, 501) + 100)), 0);
    f = open_files(bad);
    x.n = 0;
    block_req_init(&r[0], f, -1, 499, 3, arena);
    r[0].path = bad;
    ec_pager_submit(p, &r[0]);
    reap_all(p, &x, 1);
    assert_int_equal(r[0].rc, EC_EIO);
    snprintf(want, sizeof(want), "blocks 499..501 of %s", bad);
    expect_msg(&r[0], want);
    expect_msg(&r[0], "ends 8292 bytes into");
    expect_msg(&r[0], "truncated");
    close_files(f);
    ec_pager_close(p, on_done, &(struct reaped){.n = 0});
    free(file);
}

static void test_uring_block_damaged(void **s) { (void)s; block_damaged(EC_PAGER_URING); }
static void test_pread_block_damaged(void **s) { (void)s; block_damaged(EC_PAGER_PREAD); }

/* Every 2nd block read fails as `kind`: hits on runs of 1, 3 and 2 blocks
 * (a one-block direct read cannot be halved: the short read goes
 * buffered). */
static void block_faults(enum ec_pager_kind kind)
{
    static const enum ec_fault_kind kinds[] = {EC_FAULT_EIO, EC_FAULT_SHORT,
                                               EC_FAULT_SHORT_ONCE};
    static const uint32_t nblocks[] = {2, 1, 1, 3, 4, 2};
    ec_pager *p = open_kind(kind, 8);
    struct files f = open_files(path);
    ec_page_req r[6];
    int slot;

    if (!p)
        skip();
    slot = ec_pager_file_add(p, f.dfd);
    for (size_t k = 0; k < 3; k++) {
        struct reaped x = {.n = 0};
        ec_pager_stats st0, st1;

        ec_pager_stats_get(p, &st0);
        memset(arena, 0, 64 * 4096);
        ec_pager_inject(p, kinds[k], 2);
        for (uint32_t i = 0; i < 6; i++) {
            block_req_init(&r[i], f, slot, 100 * i + 7, nblocks[i], arena + i * 8 * 4096);
            ec_pager_submit(p, &r[i]);
        }
        reap_all(p, &x, 6);
        ec_pager_inject(p, EC_FAULT_NONE, 0);
        ec_pager_stats_get(p, &st1);
        for (uint32_t i = 0; i < 6; i++) {
            bool hit = i % 2 == 1;
            char want[700];

            if (!hit || kinds[k] == EC_FAULT_SHORT_ONCE) {
                if (r[i].rc)
                    fail_msg("fault %zu, read %u: %s", k, i, r[i].msg);
                assert_memory_equal(r[i].dest, src + (size_t)(100 * i + 7) * 4096,
                                    (size_t)nblocks[i] * 4096);
                continue;
            }
            assert_int_equal(r[i].rc, EC_EIO);
            snprintf(want, sizeof(want), "blocks %u..%u of %s", 100 * i + 7,
                     100 * i + 7 + nblocks[i] - 1, path);
            expect_msg(&r[i], want);
            assert_null(strstr(r[i].msg, "partition"));
            if (kinds[k] == EC_FAULT_SHORT) {
                /* Half a block, or whole blocks of half the run, then "EOF". */
                snprintf(want, sizeof(want), "ends %u bytes into the blocks' %u",
                         nblocks[i] == 1 ? 2048 : 4096, nblocks[i] * 4096);
                expect_msg(&r[i], want);
                expect_msg(&r[i], "truncated");
            } else {
                expect_msg(&r[i], "read failed");
            }
        }
        assert_int_equal(st1.block_reads - st0.block_reads,
                         kinds[k] == EC_FAULT_SHORT_ONCE ? 6 : 3);
        if (kinds[k] == EC_FAULT_SHORT_ONCE) {
            assert_true(st1.retries - st0.retries >= 3);
            assert_int_equal(st1.errors, st0.errors);
        } else {
            assert_int_equal(st1.errors - st0.errors, 3);
        }
    }
    ec_pager_file_del(p, slot);
    ec_pager_close(p, on_done, &(struct reaped){.n = 0});
    close_files(f);
}

static void test_uring_block_faults(void **s) { (void)s; block_faults(EC_PAGER_URING); }
static void test_pread_block_faults(void **s) { (void)s; block_faults(EC_PAGER_PREAD); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uring_reads_everything),
        cmocka_unit_test(test_pread_reads_everything),
        cmocka_unit_test(test_uring_faults),
        cmocka_unit_test(test_pread_faults),
        cmocka_unit_test(test_uring_damaged),
        cmocka_unit_test(test_pread_damaged),
        cmocka_unit_test(test_demand_before_prewarm),
        cmocka_unit_test(test_uring_block_reads),
        cmocka_unit_test(test_pread_block_reads),
        cmocka_unit_test(test_uring_block_damaged),
        cmocka_unit_test(test_pread_block_damaged),
        cmocka_unit_test(test_uring_block_faults),
        cmocka_unit_test(test_pread_block_faults),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
