/*
 * test_e2e.c - embcache end to end: a real embcached in a temporary
 * directory, .npy and .safetensors files written here (several dtypes, row
 * counts that are not a multiple of the partition size), client processes
 * gathering random rows at once, every byte compared with the source file,
 * one client killed with SIGKILL mid-read, views, eviction under a small
 * segment, single flight, a warm restart, and corrupted partition files.
 */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <malloc.h>
#ifdef __SANITIZE_ADDRESS__
/* libasan's (sanitizer/allocator_interface.h, not always installed) */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/partfile.h"
#include "testutil.h"

/* A source tensor and where its bytes are in its file. */
struct src {
    const char *name;
    ec_dtype dtype;
    uint32_t ndim;
    uint64_t shape[EC_MAX_DIMS];
    uint64_t seed;
    const char *file;     /* which source file */
    uint8_t *data;        /* the tensor's bytes, read back from the file */
    uint64_t rows, row_bytes;
};

static struct src srcs[] = {
    {"emb", EC_DTYPE_F32, 2, {1001, 24}, 11, "emb.npy", NULL, 0, 0},
    {"ids", EC_DTYPE_I64, 1, {777}, 12, "ids.npy", NULL, 0, 0},
    {"enc.w", EC_DTYPE_F16, 2, {333, 10}, 21, "model.safetensors", NULL, 0, 0},
    {"enc.b", EC_DTYPE_BF16, 2, {50, 3}, 22, "model.safetensors", NULL, 0, 0},
    {"q", EC_DTYPE_I8, 2, {129, 5}, 23, "model.safetensors", NULL, 0, 0},
    {"u", EC_DTYPE_U8, 1, {64}, 24, "model.safetensors", NULL, 0, 0},
    {"i", EC_DTYPE_I32, 3, {300, 2, 2}, 25, "model.safetensors", NULL, 0, 0},
    {"d", EC_DTYPE_F64, 2, {97, 4}, 26, "model.safetensors", NULL, 0, 0},
};
#define NSRC (sizeof(srcs) / sizeof(srcs[0]))

static char *dir;
static char sock[160];
static pid_t daemon_pid;

static void path_of(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", dir, name);
}

static uint64_t elems(const struct src *s)
{
    uint64_t n = 1;
    for (uint32_t i = 0; i < s->ndim; i++)
        n *= s->shape[i];
    return n;
}

/* Write the source files, then read every tensor's bytes back out of them,
 * so comparisons are against the files themselves. */
static void write_sources(void)
{
    char p[512];
    ect_st_tensor st[NSRC];
    size_t nst = 0, len, off;
    uint8_t *file;
    uint64_t hl;

    for (size_t i = 0; i < NSRC; i++) {
        struct src *s = &srcs[i];
        s->rows = s->shape[0];
        s->row_bytes = elems(s) / s->rows * ec_dtype_size(s->dtype);
        if (strstr(s->file, ".npy")) {
            path_of(p, sizeof(p), s->file);
            assert_int_equal(ect_write_npy(p, s->dtype, s->ndim, s->shape, s->seed), 0);
        } else {
            st[nst].name = s->name;
            st[nst].dtype = s->dtype;
            st[nst].ndim = s->ndim;
            memcpy(st[nst].shape, s->shape, sizeof(s->shape));
            st[nst].seed = s->seed;
            nst++;
        }
    }
    path_of(p, sizeof(p), "model.safetensors");
    assert_int_equal(ect_write_safetensors(p, st, nst), 0);

    /* .npy data is the file's tail; safetensors data follows its header in
     * the order written. */
    path_of(p, sizeof(p), "model.safetensors");
    file = ect_read_file(p, &len);
    assert_non_null(file);
    memcpy(&hl, file, 8);
    off = 8 + hl;
    for (size_t i = 0; i < NSRC; i++) {
        struct src *s = &srcs[i];
        size_t bytes = s->rows * s->row_bytes;
        s->data = malloc(bytes);
        if (strstr(s->file, ".npy")) {
            size_t nl;
            uint8_t *nf;
            path_of(p, sizeof(p), s->file);
            nf = ect_read_file(p, &nl);
            assert_non_null(nf);
            memcpy(s->data, nf + nl - bytes, bytes);
            free(nf);
        } else {
            assert_true(off + bytes <= len);
            memcpy(s->data, file + off, bytes);
            off += bytes;
        }
    }
    free(file);
}

static ec_client *connect_ok(void)
{
    ec_client *c = NULL;
    int rc = ec_client_connect(sock, &c);
    if (rc)
        fail_msg("connect: %s", ec_last_error());
    return c;
}

static ec_client *connect_ok_at(const char *path)
{
    ec_client *c = NULL;
    if (ec_client_connect(path, &c))
        fail_msg("connect to %s: %s", path, ec_last_error());
    return c;
}

static void import_all(ec_client *c, const char *model, int64_t version)
{
    char a[512], b[512], d[512];
    const char *paths[] = {a, b, d};
    ec_import_opts o = {.model = model, .version = version, .round = 1,
                        .params_json = "{\"lr\": 0.01}", .partition_bytes = 1024};
    uint32_t n = 0;

    path_of(a, sizeof(a), "emb.npy");
    path_of(b, sizeof(b), "ids.npy");
    path_of(d, sizeof(d), "model.safetensors");
    if (ec_model_import(c, &o, paths, 3, &n))
        fail_msg("import: %s", ec_last_error());
    assert_int_equal(n, NSRC);
}

static uint64_t stat_of(ec_client *c, const char *name);

static int setup(void **state)
{
    ec_client *c;

    (void)state;
    dir = ect_tmpdir("ec-e2e");
    snprintf(sock, sizeof(sock), "%s/s.sock", dir);
    write_sources();
    {
        char dd[512];
        path_of(dd, sizeof(dd), "data");
        daemon_pid = ect_daemon_start(dd, sock, NULL);
    }
    c = connect_ok();
    import_all(c, "m", 1);
    assert_int_equal(ec_model_alias(c, "m", "current", 1), 0);
    ec_client_close(c);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ect_daemon_stop(daemon_pid);
    ect_rmtree(dir);
    for (size_t i = 0; i < NSRC; i++)
        free(srcs[i].data);
    free(dir);
    return 0;
}

/* Gather `rounds` random batches from every tensor and compare; returns the
 * number of rows compared, or -1 on the first wrong byte or failed call. */
static long verify_random(ec_client *c, const char *version, unsigned seed, int rounds,
                          volatile long *progress)
{
    ec_tensor *t[NSRC];
    int64_t ids[64];
    uint8_t *buf = malloc(64 * 128);
    long rows = 0;

    for (size_t i = 0; i < NSRC; i++)
        if (ec_tensor_resolve(c, "m", version, srcs[i].name, &t[i]))
            return -1;
    for (int r = 0; r < rounds || rounds < 0; r++) {
        for (size_t i = 0; i < NSRC; i++) {
            size_t n = 1 + (size_t)rand_r(&seed) % 64;
            for (size_t k = 0; k < n; k++)
                ids[k] = rand_r(&seed) % (int64_t)srcs[i].rows;
            if (ec_tensor_gather(t[i], ids, n, buf, 64 * 128)) {
                fprintf(stderr, "gather %s: %s\n", srcs[i].name, ec_last_error());
                return -1;
            }
            for (size_t k = 0; k < n; k++)
                if (memcmp(buf + k * srcs[i].row_bytes,
                           srcs[i].data + (uint64_t)ids[k] * srcs[i].row_bytes,
                           srcs[i].row_bytes)) {
                    fprintf(stderr, "row %lld of %s differs from the source\n",
                            (long long)ids[k], srcs[i].name);
                    return -1;
                }
            rows += (long)n;
            if (progress)
                *progress = rows;
        }
    }
    for (size_t i = 0; i < NSRC; i++)
        ec_tensor_release(t[i]);
    free(buf);
    return rows;
}

struct stat_q {
    const char *name;
    uint64_t v;
    bool found;
};

static int stat_cb(const char *name, uint64_t v, void *arg)
{
    struct stat_q *x = arg;
    if (!strcmp(name, x->name)) {
        x->v = v;
        x->found = true;
    }
    return 0;
}

static uint64_t stat_of(ec_client *c, const char *name)
{
    struct stat_q x = {name, 0, false};
    assert_int_equal(ec_client_stats(c, stat_cb, &x), 0);
    if (!x.found)
        fail_msg("no statistic named %s", name);
    return x.v;
}

static void test_two_clients_one_killed(void **state)
{
    volatile long *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pid_t a, b;
    int status;
    ec_client *c;

    (void)state;
    a = fork();
    if (a == 0) {
        /* Holds a view (a pin) and reads forever until killed. */
        ec_client *ca = connect_ok();
        ec_tensor *t;
        ec_view *v;
        if (ec_tensor_resolve(ca, "m", "current", "emb", &t) || ec_tensor_view(t, &v))
            _exit(3);
        shared[1] = 1;
        _exit(verify_random(ca, "current", 1, -1, &shared[0]) < 0 ? 1 : 0);
    }
    b = fork();
    if (b == 0) {
        ec_client *cb = connect_ok();
        long n = verify_random(cb, "1", 2, 400, NULL);
        ec_client_close(cb);
        printf("client B compared %ld rows\n", n);
        _exit(n > 0 ? 0 : 1);
    }
    for (int i = 0; i < 2000 && (shared[0] < 20000 || !shared[1]); i++)
        usleep(5000);
    assert_true(shared[0] >= 20000);
    printf("client A compared %ld rows before SIGKILL\n", shared[0]);
    kill(a, SIGKILL);
    assert_int_equal(waitpid(a, &status, 0), a);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(waitpid(b, &status, 0), b);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    /* The daemon is up, serves a full sweep, and dropped A's pin. */
    assert_int_equal(waitpid(daemon_pid, &status, WNOHANG), 0);
    c = connect_ok();
    assert_true(verify_random(c, "current", 3, 50, NULL) > 0);
    for (int i = 0; i < 200 && stat_of(c, "pins_taken") != stat_of(c, "pins_released"); i++)
        usleep(10000);
    assert_true(stat_of(c, "pins_taken") >= 1);
    assert_int_equal(stat_of(c, "pins_taken"), stat_of(c, "pins_released"));
    ec_client_close(c);
    munmap((void *)shared, 4096);
}

static void test_every_row_and_views(void **state)
{
    ec_client *c = connect_ok();

    (void)state;
    for (size_t i = 0; i < NSRC; i++) {
        struct src *s = &srcs[i];
        ec_tensor *t;
        ec_tensor_info info;
        ec_view *v;
        int64_t *ids = malloc(s->rows * sizeof(*ids));
        uint8_t *buf = malloc(s->rows * s->row_bytes);

        assert_int_equal(ec_tensor_resolve(c, "m", "current", s->name, &t), 0);
        assert_int_equal(ec_tensor_info_get(t, &info), 0);
        assert_int_equal(info.dtype, s->dtype);
        assert_int_equal(info.ndim, s->ndim);
        assert_memory_equal(info.shape, s->shape, sizeof(uint64_t) * s->ndim);
        assert_int_equal(info.version, 1);
        /* All rows, last first. */
        for (uint64_t r = 0; r < s->rows; r++)
            ids[r] = (int64_t)(s->rows - 1 - r);
        assert_int_equal(ec_tensor_gather(t, ids, s->rows, buf, s->rows * s->row_bytes), 0);
        for (uint64_t r = 0; r < s->rows; r++)
            assert_memory_equal(buf + r * s->row_bytes,
                                s->data + (s->rows - 1 - r) * s->row_bytes, s->row_bytes);
        /* The view is the whole tensor, row-major, zero-copy. */
        assert_int_equal(ec_tensor_view(t, &v), 0);
        assert_int_equal(ec_view_size(v), s->rows * s->row_bytes);
        assert_memory_equal(ec_view_data(v), s->data, s->rows * s->row_bytes);
        /* Gathers still work while the tensor is laid out for the view. */
        assert_int_equal(ec_tensor_gather(t, ids, 3, buf, s->rows * s->row_bytes), 0);
        assert_memory_equal(buf, s->data + (s->rows - 1) * s->row_bytes, s->row_bytes);
        ec_view_release(v);
        ec_tensor_release(t);
        free(ids);
        free(buf);
    }
    ec_client_close(c);
}

static void test_errors_name_what_is_wrong(void **state)
{
    ec_client *c = connect_ok(), *bad = NULL;
    ec_tensor *t = NULL;
    int64_t ids[2] = {0, 1001};
    uint8_t buf[2 * 96];
    char p[512];

    (void)state;
    assert_int_equal(ec_tensor_resolve(c, "nope", "1", "emb", &t), EC_ENOENT);
    assert_non_null(strstr(ec_last_error(), "nope"));
    assert_int_equal(ec_tensor_resolve(c, "m", "9", "emb", &t), EC_ENOENT);
    assert_int_equal(ec_tensor_resolve(c, "m", "canary", "emb", &t), EC_ENOENT);
    assert_non_null(strstr(ec_last_error(), "canary"));
    assert_int_equal(ec_tensor_resolve(c, "m", "1", "nope", &t), EC_ENOENT);
    assert_non_null(strstr(ec_last_error(), "emb"));
    assert_int_equal(ec_tensor_resolve(c, "m", "1", "emb", &t), 0);
    assert_int_equal(ec_tensor_gather(t, ids, 2, buf, sizeof(buf)), EC_ERANGE);
    assert_non_null(strstr(ec_last_error(), "ids[1] = 1001"));
    ids[1] = -1;
    assert_int_equal(ec_tensor_gather(t, ids, 2, buf, sizeof(buf)), EC_ERANGE);
    ids[1] = 1;
    assert_int_equal(ec_tensor_gather(t, ids, 2, buf, sizeof(buf) - 1), EC_EINVAL);
    assert_int_equal(ec_tensor_gather(t, ids, 0, NULL, 0), 0);
    ec_tensor_release(t);

    /* A duplicate version is refused and the catalog keeps the first. */
    {
        char a[512];
        const char *paths[] = {a};
        ec_import_opts o = {.model = "m", .version = 1, .round = -1};
        path_of(a, sizeof(a), "emb.npy");
        assert_int_equal(ec_model_import(c, &o, paths, 1, NULL), EC_EEXIST);
        o.version = 50;
        path_of(a, sizeof(a), "missing.npy");
        assert_int_equal(ec_model_import(c, &o, paths, 1, NULL), EC_ENOENT);
        assert_non_null(strstr(ec_last_error(), "missing.npy"));
    }
    assert_int_equal(ec_model_alias(c, "m", "current", 42), EC_ENOENT);

    snprintf(p, sizeof(p), "%s/nobody.sock", dir);
    assert_int_equal(ec_client_connect(p, &bad), EC_ECONN);
    assert_non_null(strstr(ec_last_error(), p));
    assert_non_null(strstr(ec_last_error(), "embcached"));
    ec_client_close(c);
}

static void test_alias_switch_is_atomic_for_handles(void **state)
{
    ec_client *c = connect_ok();
    ec_tensor *old_t, *new_t;
    ec_tensor_info i1, i2;

    (void)state;
    import_all(c, "m", 2);
    assert_int_equal(ec_tensor_resolve(c, "m", "current", "emb", &old_t), 0);
    assert_int_equal(ec_model_alias(c, "m", "current", 2), 0);
    assert_int_equal(ec_tensor_resolve(c, "m", "current", "emb", &new_t), 0);
    ec_tensor_info_get(old_t, &i1);
    ec_tensor_info_get(new_t, &i2);
    assert_int_equal(i1.version, 1);
    assert_int_equal(i2.version, 2);
    assert_true(verify_random(c, "2", 9, 20, NULL) > 0);
    assert_int_equal(ec_model_alias(c, "m", "current", 1), 0);
    ec_tensor_release(old_t);
    ec_tensor_release(new_t);
    ec_client_close(c);
}

/* Concurrent misses of the same partitions cause one read each. */
static void test_single_flight(void **state)
{
    ec_client *c = connect_ok();
    ec_tensor *t;
    ec_tensor_info info;
    uint64_t before, after;
    int go[2];
    pid_t kids[4];

    (void)state;
    import_all(c, "sf", 1);
    assert_int_equal(ec_tensor_resolve(c, "sf", "1", "emb", &t), 0);
    ec_tensor_info_get(t, &info);
    before = stat_of(c, "page_ins");
    assert_int_equal(pipe(go), 0);
    for (int k = 0; k < 4; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            ec_client *ck = connect_ok();
            ec_tensor *tk;
            char ch;
            int64_t *ids = malloc(info.rows * sizeof(*ids));
            uint8_t *buf = malloc(info.rows * info.row_bytes);
            if (ec_tensor_resolve(ck, "sf", "1", "emb", &tk))
                _exit(2);
            for (uint64_t r = 0; r < info.rows; r++)
                ids[r] = (int64_t)r;
            close(go[1]);
            (void)!read(go[0], &ch, 1); /* all start together */
            if (ec_tensor_gather(tk, ids, info.rows, buf, info.rows * info.row_bytes))
                _exit(3);
            _exit(memcmp(buf, srcs[0].data, info.rows * info.row_bytes) ? 4 : 0);
        }
    }
    close(go[0]);
    usleep(200000);
    close(go[1]);
    for (int k = 0; k < 4; k++) {
        int status;
        assert_int_equal(waitpid(kids[k], &status, 0), kids[k]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    after = stat_of(c, "page_ins");
    printf("4 clients faulted %llu partitions with %llu reads (%llu coalesced in total)\n",
           (unsigned long long)info.partitions, (unsigned long long)(after - before),
           (unsigned long long)stat_of(c, "fault_coalesced"));
    assert_int_equal(after - before, info.partitions);
    ec_tensor_release(t);
    ec_client_close(c);
}

/* Find the partition files a version added: those not in `before`. */
static void newest_parts(const char *before, char *out, size_t len)
{
    char pat[512];
    glob_t g;

    out[0] = '\0';
    snprintf(pat, sizeof(pat), "%s/data/parts/*.ecp", dir);
    assert_int_equal(glob(pat, 0, NULL, &g), 0);
    for (size_t i = 0; i < g.gl_pathc; i++)
        if (!strstr(before, g.gl_pathv[i]))
            snprintf(out, len, "%s", g.gl_pathv[i]);
    globfree(&g);
}

static void list_parts(char *out, size_t len)
{
    char pat[512];
    glob_t g;

    out[0] = '\0';
    snprintf(pat, sizeof(pat), "%s/data/parts/*.ecp", dir);
    if (glob(pat, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            strncat(out, g.gl_pathv[i], len - strlen(out) - 1);
            strncat(out, "\n", len - strlen(out) - 1);
        }
        globfree(&g);
    }
}

static void test_corrupt_partition_never_served(void **state)
{
    ec_client *c = connect_ok();
    static char before[65536];
    char part[512], a[512];
    const char *paths[] = {a};
    ec_import_opts o = {.model = "bad", .version = 1, .round = -1, .partition_bytes = 1024};
    ec_tensor *t;
    int64_t ids[1] = {0};
    uint8_t buf[96];
    uint64_t data_off;
    int fd;
    uint8_t byte;

    (void)state;
    list_parts(before, sizeof(before));
    path_of(a, sizeof(a), "emb.npy");
    assert_int_equal(ec_model_import(c, &o, paths, 1, NULL), 0);
    newest_parts(before, part, sizeof(part));
    assert_true(part[0] != '\0');
    /* Flip one byte of partition 0's data (where the data starts, the
     * file's header says). */
    {
        ec_partfile_meta m;
        assert_int_equal(ec_partfile_open(part, &m, &fd), 0);
        close(fd);
        data_off = m.data_off;
    }
    fd = open(part, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &byte, 1, (off_t)data_off + 5), 1);
    byte ^= 0x40;
    assert_int_equal(pwrite(fd, &byte, 1, (off_t)data_off + 5), 1);
    close(fd);
    uint64_t failures = stat_of(c, "checksum_failures");
    assert_int_equal(ec_tensor_resolve(c, "bad", "1", "emb", &t), 0);
    {
        /* 2000 requests for the bad partition: each gets the checksum error,
         * and the disk is read about once per 2 s, not 2000 times */
        uint64_t reads0 = stat_of(c, "checksum_failures"); /* one per read of it */
        struct timespec t0, t1;
        double secs;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < 2000; i++) {
            assert_int_equal(ec_tensor_gather(t, ids, 1, buf, sizeof(buf)), EC_ECHECKSUM);
            assert_non_null(strstr(ec_last_error(), "partition 0"));
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        printf("2000 requests for a corrupt partition in %.2f s: %llu reads\n", secs,
               (unsigned long long)(stat_of(c, "checksum_failures") - reads0));
        assert_true(stat_of(c, "checksum_failures") - reads0 >= 1);
        assert_true(stat_of(c, "checksum_failures") - reads0 <= 2 + (uint64_t)(secs / 2.0));
        assert_true(stat_of(c, "failed_read_replays") >= 1990);
    }
    assert_true(stat_of(c, "checksum_failures") >= failures + 1);
    /* Another partition of it and other models are fine. */
    ids[0] = 500;
    assert_int_equal(ec_tensor_gather(t, ids, 1, buf, sizeof(buf)), 0);
    assert_memory_equal(buf, srcs[0].data + 500 * 96, 96);
    ec_tensor_release(t);
    assert_true(verify_random(c, "current", 4, 5, NULL) > 0);

    /* A truncated partition file: a clear error, and the daemon stays. */
    o.model = "trunc";
    list_parts(before, sizeof(before));
    assert_int_equal(ec_model_import(c, &o, paths, 1, NULL), 0);
    newest_parts(before, part, sizeof(part));
    assert_int_equal(truncate(part, 8192 + 4096), 0);
    int rc = ec_tensor_resolve(c, "trunc", "1", "emb", &t);
    if (rc == 0) {
        ids[0] = 900;
        rc = ec_tensor_gather(t, ids, 1, buf, sizeof(buf));
        ec_tensor_release(t);
    }
    assert_true(rc == EC_ECORRUPT || rc == EC_EIO);
    printf("truncated file: %s\n", ec_last_error());
    assert_true(verify_random(c, "current", 5, 5, NULL) > 0);
    ec_client_close(c);
}

/* A table several times the segment: every row still correct, and the
 * engine evicts and reuses extents under two concurrent clients. */
static void test_eviction_under_a_small_segment(void **state)
{
    char dd[512], s2[200], big[512];
    const char *extra[] = {"--shm-size", "4M", NULL};
    uint64_t shape[2] = {12000, 128}; /* 6 MiB of f32 */
    const char *paths[] = {big};
    ec_import_opts o = {.model = "big", .version = 1, .round = -1, .partition_bytes = 65536};
    ec_client *c;
    pid_t d, kids[2];
    uint8_t *src;
    size_t len;

    (void)state;
    path_of(dd, sizeof(dd), "small");
    snprintf(s2, sizeof(s2), "%s/t.sock", dir);
    path_of(big, sizeof(big), "big.npy");
    assert_int_equal(ect_write_npy(big, EC_DTYPE_F32, 2, shape, 77), 0);
    src = ect_read_file(big, &len);
    d = ect_daemon_start(dd, s2, extra);
    assert_int_equal(ec_client_connect(s2, &c), 0);
    assert_int_equal(ec_model_import(c, &o, paths, 1, NULL), 0);
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        if (kids[k] == 0) {
            ec_client *ck;
            ec_tensor *t;
            int64_t ids[256];
            static uint8_t buf[256 * 512];
            unsigned seed = (unsigned)k + 100;
            const uint8_t *data = src + len - 12000 * 512;
            if (ec_client_connect(s2, &ck) || ec_tensor_resolve(ck, "big", "1", "big", &t))
                _exit(2);
            for (int r = 0; r < 300; r++) {
                for (int i = 0; i < 256; i++)
                    ids[i] = rand_r(&seed) % 12000;
                if (ec_tensor_gather(t, ids, 256, buf, sizeof(buf))) {
                    fprintf(stderr, "gather: %s\n", ec_last_error());
                    _exit(3);
                }
                for (int i = 0; i < 256; i++)
                    if (memcmp(buf + i * 512, data + ids[i] * 512, 512))
                        _exit(4);
            }
            ec_tensor_release(t);
            ec_client_close(ck);
            _exit(0);
        }
    }
    for (int k = 0; k < 2; k++) {
        int status;
        assert_int_equal(waitpid(kids[k], &status, 0), kids[k]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    printf("small segment: %llu evictions (%llu rows), %llu page-ins, used %llu of %llu "
           "bytes\n",
           (unsigned long long)stat_of(c, "evictions"),
           (unsigned long long)stat_of(c, "row_evicted"), (unsigned long long)stat_of(c, "page_ins"),
           (unsigned long long)stat_of(c, "used_bytes"),
           (unsigned long long)stat_of(c, "data_bytes"));
    /* The table is four times the segment: it is cached by rows, whose
     * eviction this exercises (test_tiering does partitions). */
    assert_true(stat_of(c, "evictions") + stat_of(c, "row_evicted") > 0);
    assert_true(stat_of(c, "used_bytes") <= stat_of(c, "data_bytes"));
    ec_client_close(c);
    ect_daemon_stop(d);
    free(src);
}

static void test_find_by_round_and_params(void **state)
{
    ec_client *c = connect_ok();
    int64_t v = 0;
    char *out = NULL;
    const char *argv[] = {EC_TEST_CLI, "--socket", sock, "find", "m", "--round", "1",
                          "--params", "{\"lr\":0.01}", NULL};

    (void)state;
    /* Versions 1 and 2 of m were both trained at round 1 with lr 0.01. */
    assert_int_equal(ec_model_find(c, "m", 1, "{ \"lr\" : 0.01 }", &v), 0);
    assert_int_equal(v, 2);
    assert_int_equal(ec_model_find(c, "m", 1, NULL, &v), 0);
    assert_int_equal(v, 2);
    assert_int_equal(ec_model_find(c, "m", 7, NULL, &v), EC_ENOENT);
    assert_int_equal(ec_model_find(c, "m", 1, "{\"lr\": 0.02}", &v), EC_ENOENT);
    assert_int_equal(ec_model_find(c, "nobody", 1, NULL, &v), EC_ENOENT);
    assert_int_equal(ect_run(argv, &out, NULL, NULL), 0);
    assert_string_equal(out, "2\n");
    free(out);
    ec_client_close(c);
}

/* The segment outlives a crash of the daemon's worker: resident rows keep
 * being served while it is down, the keeper's next worker takes the segment
 * over, re-validates and keeps them, and clients of the old worker are told
 * to reconnect instead of reading on. A stopped daemon takes its segment
 * with it: the next one starts cold. */
static void test_warm_restart(void **state)
{
    char dd[512], ws[200], a[512];
    const char *paths[] = {a};
    ec_import_opts o = {.model = "w", .version = 1, .round = -1, .partition_bytes = 1024};
    ec_client *old_c, *c;
    ec_tensor *t;
    int64_t ids[1001];
    static uint8_t buf[1001 * 96];
    uint64_t g1, parts;
    pid_t d, w;
    int status;

    (void)state;
    path_of(dd, sizeof(dd), "warm");
    snprintf(ws, sizeof(ws), "%s/w.sock", dir);
    path_of(a, sizeof(a), "emb.npy");
    for (int i = 0; i < 1001; i++)
        ids[i] = i;
    d = ect_daemon_start(dd, ws, NULL);
    assert_int_equal(ec_client_connect(ws, &old_c), 0);
    assert_int_equal(ec_model_import(old_c, &o, paths, 1, NULL), 0);
    assert_int_equal(ec_tensor_resolve(old_c, "w", "1", "emb", &t), 0);
    assert_int_equal(ec_tensor_gather(t, ids, 1001, buf, sizeof(buf)), 0);
    g1 = ec_client_generation(old_c);
    /* Hold the keeper still, so that no worker serves for a while. */
    w = ect_daemon_worker(dd);
    assert_int_equal(kill(d, SIGSTOP), 0);
    assert_int_equal(kill(w, SIGKILL), 0);
    for (int i = 0; i < 2000 && ect_pid_alive(w); i++)
        usleep(10000);
    assert_false(ect_pid_alive(w));

    /* No daemon: resident rows are still served, from shared memory. */
    memset(buf, 0, sizeof(buf));
    assert_int_equal(ec_tensor_gather(t, ids, 1001, buf, sizeof(buf)), 0);
    assert_memory_equal(buf, srcs[0].data, sizeof(buf));

    assert_int_equal(kill(d, SIGCONT), 0);
    ect_daemon_wait_worker(dd, ws, w);
    assert_int_equal(ec_tensor_gather(t, ids, 1, buf, sizeof(buf)), EC_ESTALE);
    assert_non_null(strstr(ec_last_error(), "connect again"));
    ec_tensor_release(t);
    ec_client_close(old_c);

    c = connect_ok_at(ws);
    assert_int_equal(ec_client_generation(c), g1 + 1);
    assert_int_equal(ec_tensor_resolve(c, "w", "1", "emb", &t), 0);
    {
        ec_tensor_info info;
        ec_tensor_info_get(t, &info);
        parts = info.partitions;
    }
    assert_int_equal(stat_of(c, "restart_kept_partitions"), parts);
    memset(buf, 0, sizeof(buf));
    assert_int_equal(ec_tensor_gather(t, ids, 1001, buf, sizeof(buf)), 0);
    assert_memory_equal(buf, srcs[0].data, sizeof(buf));
    assert_int_equal(stat_of(c, "page_ins"), 0); /* all of it served warm */
    ec_tensor_release(t);
    ec_client_close(c);
    status = ect_daemon_stop(d);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* Stopped: the segment went with it. */
    d = ect_daemon_start(dd, ws, NULL);
    c = connect_ok_at(ws);
    assert_int_equal(ec_client_generation(c), 1);
    assert_int_equal(stat_of(c, "restart_kept_partitions"), 0);
    assert_int_equal(ec_tensor_resolve(c, "w", "1", "emb", &t), 0);
    assert_int_equal(ec_tensor_gather(t, ids, 1001, buf, sizeof(buf)), 0);
    assert_memory_equal(buf, srcs[0].data, sizeof(buf));
    ec_tensor_release(t);
    ec_client_close(c);
    status = ect_daemon_stop(d);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

#ifdef EC_TEST_FAULT_INJECTION
/* Read failures injected in the daemon's pager (a test-build hook) reach
 * the clients waiting for the partition as errors; a short read that the
 * pager retries does not. */
static void test_injected_read_faults_reach_clients(void **state)
{
    static const struct {
        const char *spec;
        int rc;
        const char *msg;
    } cases[] = {
        {"eio:1", EC_EIO, "read failed"},
        {"short:1", EC_EIO, "truncated"},
        {"short_once:1", 0, NULL},
    };
    char a[512];
    const char *paths[] = {a};

    (void)state;
    path_of(a, sizeof(a), "emb.npy");
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        char dd[512], fs[200];
        ec_import_opts o = {.model = "f", .version = 1, .round = -1, .partition_bytes = 1024};
        ec_client *c;
        ec_tensor *t;
        int64_t ids[2] = {0, 700};
        uint8_t buf[2 * 96];
        pid_t d;
        int rc;

        snprintf(dd, sizeof(dd), "%s/fault%zu", dir, k);
        snprintf(fs, sizeof(fs), "%s/f%zu.sock", dir, k);
        setenv("EMBCACHE_INJECT_FAULT", cases[k].spec, 1);
        d = ect_daemon_start(dd, fs, NULL);
        unsetenv("EMBCACHE_INJECT_FAULT");
        c = connect_ok_at(fs);
        assert_int_equal(ec_model_import(c, &o, paths, 1, NULL), 0);
        assert_int_equal(ec_tensor_resolve(c, "f", "1", "emb", &t), 0);
        rc = ec_tensor_gather(t, ids, 2, buf, sizeof(buf));
        printf("%s: %s\n", cases[k].spec, rc ? ec_last_error() : "read after a retry");
        assert_int_equal(rc, cases[k].rc);
        if (cases[k].msg)
            assert_non_null(strstr(ec_last_error(), cases[k].msg));
        else
            assert_memory_equal(buf + 96, srcs[0].data + 700 * 96, 96);
        assert_true(stat_of(c, "pager_errors") + stat_of(c, "pager_retries") > 0);
        ec_tensor_release(t);
        ec_client_close(c);
        assert_int_equal(ect_daemon_stop(d), 0);
    }
}

#endif

static void *gather_once(void *arg)
{
    ec_tensor *t = arg;
    int64_t ids[300];
    static _Thread_local uint8_t buf[300 * 96];

    for (int i = 0; i < 300; i++)
        ids[i] = i;
    return (void *)(intptr_t)ec_tensor_gather(t, ids, 300, buf, sizeof(buf));
}

/* Bytes of heap in use: glibc's count, or AddressSanitizer's, whose
 * allocator glibc's mallinfo2 does not see (it would read 0 and prove
 * nothing). */
static size_t heap_in_use(void)
{
#ifdef __SANITIZE_ADDRESS__
    return __sanitizer_get_current_allocated_bytes();
#else
    return mallinfo2().uordblks;
#endif
}

/* The per-thread gather scratch was freed only with the process: a thread
 * that gathered and exited leaked it (LeakSanitizer, in embcache-bench's
 * fault threads). 200 such threads must not grow the heap. */
static void test_thread_exit_frees_gather_scratch(void **state)
{
    ec_client *c = connect_ok();
    ec_tensor *t;
    size_t before = 0, after;

    (void)state;
    assert_int_equal(ec_tensor_resolve(c, "m", "1", "emb", &t), 0);
    for (int round = 0; round < 2; round++) {
        if (round == 1)
            before = heap_in_use();
        for (int i = 0; i < 200; i++) {
            pthread_t th;
            void *rc;
            assert_int_equal(pthread_create(&th, NULL, gather_once, t), 0);
            assert_int_equal(pthread_join(th, &rc), 0);
            assert_int_equal((intptr_t)rc, 0);
        }
    }
    after = heap_in_use();
    assert_true(before > 0); /* the measure sees this process's heap */
    printf("heap in use before 200 gathering threads %zu bytes, after %zu\n", before, after);
    /* Each leaked scratch was over 20 KiB: 200 of them would be > 4 MB. */
    assert_true(after < before + 256 * 1024);
    ec_tensor_release(t);
    ec_client_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_row_and_views),
        cmocka_unit_test(test_two_clients_one_killed),
        cmocka_unit_test(test_errors_name_what_is_wrong),
        cmocka_unit_test(test_alias_switch_is_atomic_for_handles),
        cmocka_unit_test(test_find_by_round_and_params),
        cmocka_unit_test(test_warm_restart),
        cmocka_unit_test(test_single_flight),
        cmocka_unit_test(test_corrupt_partition_never_served),
        cmocka_unit_test(test_eviction_under_a_small_segment),
#ifdef EC_TEST_FAULT_INJECTION
        cmocka_unit_test(test_injected_read_faults_reach_clients),
#endif
        cmocka_unit_test(test_thread_exit_frees_gather_scratch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
