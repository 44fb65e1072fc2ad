/*
 * test_pager.c - core/pager: both backends (io_uring and pread) read every
 * partition of a partition file byte-exact, many times over (2 GiB of reads
 * per backend by default; EC_TEST_PAGER_MIB changes it); injected EIO and
 * short reads come back as errors, a short read that is retried succeeds, a
 * flipped byte is caught by the checksum, a truncated file is reported, and
 * demand reads go before prewarm reads. Without io_uring the io_uring cases
 * report themselves skipped.
 */
#include <errno.h>
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

    if (rc && kind == EC_PAGER_URING)
        return NULL; /* the caller skips */
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
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
