/*
 * test_publish.c - `embcache publish` and `embcache pull` (core/publish.c,
 * core/server_remote.c) between real daemons through a real local Redis
 * Cluster (3 masters, 3 replicas, tests/redis/cluster.sh on free loopback
 * ports).
 *
 * Daemon A imports a model and publishes it; daemon B pulls it, and every
 * row B serves equals A's byte for byte, with the same round, params and
 * partitions. Then what must fail does, registering nothing: a second pull
 * (EC_EEXIST), an unpublished version (EC_ENOENT), a corrupted or missing
 * chunk (EC_ECHECKSUM naming tensor, partition and chunk, pulled into a
 * third daemon C), a garbage, truncated or inconsistent manifest
 * (EC_EFORMAT), a manifest of format 1 (pulled whole as before, refused
 * for a lazy pull with EC_EVERSION), and a stopped cluster (EC_ECONN or EC_ETIMEOUT) while both
 * daemons go on serving their local data. A version published again with
 * fewer tensors and partitions leaves none of the earlier publish's other
 * keys behind; `embcache unpublish` (ec_model_unpublish) removes every key
 * of a version, after which a pull finds nothing, and deletes nothing on
 * the word of a manifest that fails validation.
 *
 * The tests run in order and share the cluster and the daemons (group
 * setup and teardown). Every process is stopped by its pid. Exits 77
 * (skipped) only when redis-server or redis-cli is not installed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "core/rcluster.h"
#include "itest.h"
#include "testutil.h"

#define NODES 6

uint64_t ec_checksum(const void *buf, size_t len); /* core/partfile.c: XXH3-64 */

static char *dir;          /* everything of this test */
static int cl_base;
static ect_cluster cl = {.pipe = -1}; /* the cluster (tests/testutil.h) */
static bool cl_running;
static char url[128];

static struct itest_daemon A, B, C;

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int cluster_sh(const char *cmd, const char *arg2)
{
    return ect_cluster_sh(&cl, cmd, arg2, NULL);
}

static int group_setup(void **state)
{
    (void)state;
    rng ^= (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
    dir = ect_tmpdir("ec-publish");
    if (ect_cluster_start_in(&cl, EC_TEST_CLUSTER_SH, dir, NODES, 2, url, sizeof(url)) < 0)
        return -1;
    cl_base = cl.base;
    cl_running = true;
    itest_daemon_up(&A, dir, "a", NULL, true);
    itest_daemon_up(&B, dir, "b", NULL, true);
    itest_daemon_up(&C, dir, "c", NULL, true);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    itest_daemon_down(&A);
    itest_daemon_down(&B);
    itest_daemon_down(&C);
    if (!cl_running)
        cl.base = 0; /* stopped by the test already */
    ect_cluster_stop(&cl);
    if (dir)
        ect_rmtree(dir);
    free(dir);
    return 0;
}

/* ------------------------------------------------------------------ */

static ec_rcluster *rc_open(void)
{
    ec_rcluster *rc = NULL;
    assert_int_equal(ec_rcluster_open(url, NULL, &rc), 0);
    return rc;
}

static void import_st(ec_client *c, const char *name, int64_t v, const ect_st_tensor *t,
                      size_t n, uint64_t part, int64_t round, const char *params)
{
    char path[700];
    const char *paths[1] = {path};
    ec_import_opts o = {.model = "m", .version = v, .round = round, .params_json = params,
                        .partition_bytes = part};
    uint32_t tensors = 0;

    snprintf(path, sizeof(path), "%s/%s.safetensors", dir, name);
    assert_int_equal(ect_write_safetensors(path, t, n), 0);
    assert_int_equal(ec_model_import(c, &o, paths, 1, &tensors), 0);
    assert_int_equal(tensors, n);
}

/* Every row of (m, version, tensor) in x and y: the same bytes, the same
 * partitions. */
static void same_rows(ec_client *x, ec_client *y, const char *version, const char *tensor)
{
    ec_tensor *tx, *ty;
    ec_tensor_info ix, iy;
    uint8_t *bx, *by;
    int64_t ids[256];

    assert_int_equal(ec_tensor_resolve(x, "m", version, tensor, &tx), 0);
    assert_int_equal(ec_tensor_resolve(y, "m", version, tensor, &ty), 0);
    assert_int_equal(ec_tensor_info_get(tx, &ix), 0);
    assert_int_equal(ec_tensor_info_get(ty, &iy), 0);
    assert_int_equal(ix.dtype, iy.dtype);
    assert_int_equal(ix.ndim, iy.ndim);
    assert_memory_equal(ix.shape, iy.shape, sizeof(ix.shape));
    assert_int_equal(ix.rows_per_partition, iy.rows_per_partition);
    assert_int_equal(ix.partitions, iy.partitions);
    bx = malloc(256 * ix.row_bytes);
    by = malloc(256 * ix.row_bytes);
    assert_non_null(bx);
    assert_non_null(by);
    for (uint64_t r = 0; r < ix.rows; r += 256) {
        size_t n = ix.rows - r < 256 ? (size_t)(ix.rows - r) : 256;
        for (size_t i = 0; i < n; i++)
            ids[i] = (int64_t)(r + i);
        assert_int_equal(ec_tensor_gather(tx, ids, n, bx, 256 * ix.row_bytes), 0);
        assert_int_equal(ec_tensor_gather(ty, ids, n, by, 256 * ix.row_bytes), 0);
        assert_memory_equal(bx, by, n * ix.row_bytes);
    }
    free(bx);
    free(by);
    ec_tensor_release(tx);
    ec_tensor_release(ty);
}

struct vinfo {
    int64_t version, round, created;
    char params[256];
    uint32_t tensors;
    uint64_t bytes;
    bool found;
};

static int list_cb(const ec_version_info *v, const ec_tensor_listing *t, void *arg)
{
    struct vinfo *vi = arg;

    if (!t && v->version == vi->version) {
        vi->found = true;
        vi->round = v->round;
        vi->created = v->created_unix;
        snprintf(vi->params, sizeof(vi->params), "%s", v->params_json);
        vi->tensors = v->tensors;
        vi->bytes = v->bytes;
    }
    return 0;
}

static struct vinfo version_info(ec_client *c, int64_t v)
{
    struct vinfo vi = {.version = v};
    int rc = ec_catalog_list(c, "m", list_cb, &vi);

    if (rc != 0 && rc != EC_ENOENT) /* ENOENT: the model has no version here */
        fail_msg("listing model 'm': %s: %s", ec_strerror(rc), ec_last_error());
    return vi;
}

static void expect_fail(int rc, int want, const char *needle)
{
    if (rc != want || (needle && !strstr(ec_last_error(), needle)))
        fail_msg("expected %s with \"%s\", got %s: %s", ec_strerror(want),
                 needle ? needle : "", ec_strerror(rc), ec_last_error());
}

/* ------------------------------------------------------------------ */

static void test_publish_then_pull(void **state)
{
    const ect_st_tensor v1[] = {
        {.name = "emb", .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {4096, 64}, .seed = 11},
        {.name = "small", .dtype = EC_DTYPE_F16, .ndim = 2, .shape = {1000, 8}, .seed = 12},
    };
    /* 4 MiB partitions: 4 chunks each. */
    const ect_st_tensor v2[] = {
        {.name = "big", .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {8192, 256}, .seed = 13},
    };
    ec_publish_result r;
    struct vinfo a, b;

    (void)state;
    import_st(A.c, "v1", 1, v1, 2, 4096, 7, "{\"lr\":0.5}");
    import_st(A.c, "v2", 2, v2, 1, 4u << 20, -1, NULL);
    assert_int_equal(ec_model_alias(A.c, "m", "current", 2), 0);

    assert_int_equal(ec_model_publish(A.c, "m", "1", url, &r), 0);
    assert_int_equal(r.version, 1);
    assert_int_equal(r.tensors, 2);
    assert_int_equal(r.bytes, 4096 * 256 + 1000 * 16);
    /* An alias publishes its version; publishing again replaces it. */
    assert_int_equal(ec_model_publish(A.c, "m", "current", url, &r), 0);
    assert_int_equal(r.version, 2);
    assert_int_equal(ec_model_publish(A.c, "m", "current", url, &r), 0);
    assert_int_equal(r.bytes, 8192 * 1024);

    usleep(1100 * 1000); /* a pull that took the time of the pull would differ */
    assert_int_equal(ec_model_pull(B.c, "m", "1", url, &r), 0);
    assert_int_equal(r.tensors, 2);
    assert_int_equal(r.bytes, 4096 * 256 + 1000 * 16);
    assert_int_equal(ec_model_pull(B.c, "m", "2", url, &r), 0);
    assert_int_equal(r.bytes, 8192 * 1024);

    same_rows(A.c, B.c, "1", "emb");
    same_rows(A.c, B.c, "1", "small");
    same_rows(A.c, B.c, "2", "big");
    a = version_info(A.c, 1);
    b = version_info(B.c, 1);
    assert_true(a.found && b.found);
    assert_int_equal(b.round, 7);
    assert_int_equal(b.created, a.created); /* kept, not the time of the pull */
    assert_string_equal(a.params, b.params);
    assert_int_equal(a.tensors, b.tensors);
    assert_int_equal(a.bytes, b.bytes);
    b = version_info(B.c, 2);
    assert_int_equal(b.round, -1);

    assert_int_equal(stat_of(A.c, "published_versions"), 3);
    assert_int_equal(stat_of(A.c, "published_bytes"), 2 * 8192 * 1024 + 4096 * 256 + 1000 * 16);
    assert_int_equal(stat_of(B.c, "pulled_versions"), 2);
    assert_int_equal(stat_of(B.c, "pull_failures"), 0);
}

static void test_pull_again_is_eexist(void **state)
{
    (void)state;
    expect_fail(ec_model_pull(B.c, "m", "1", url, NULL), EC_EEXIST, "exists here");
}

static void test_pull_unpublished_is_enoent(void **state)
{
    (void)state;
    expect_fail(ec_model_pull(B.c, "m", "9", url, NULL), EC_ENOENT, "not published");
    expect_fail(ec_model_pull(B.c, "m", "current", url, NULL), EC_EINVAL, "number");
    /* Publishing what does not exist. */
    expect_fail(ec_model_publish(A.c, "m", "9", url, NULL), EC_ENOENT, NULL);
}

static void not_registered(ec_client *c, const char *version)
{
    ec_tensor *t = NULL;
    int rc = ec_tensor_resolve(c, "m", version, "emb", &t);
    if (rc == 0)
        ec_tensor_release(t);
    assert_int_equal(rc, EC_ENOENT);
    assert_false(version_info(c, atoi(version)).found);
}

static void test_corrupt_chunk_refused(void **state)
{
    static const char key[] = "ec:c:m:1:0:3:0"; /* emb (tensor 0), partition 3, chunk 0 */
    ec_rcluster *rc = rc_open();
    void *orig = NULL;
    uint8_t *bad;
    size_t len = 0;

    (void)state;
    assert_int_equal(ec_rcluster_get(rc, key, strlen(key), &orig, &len), 0);
    assert_int_equal(len, 4096);
    bad = malloc(len);
    memcpy(bad, orig, len);
    bad[100] ^= 0x40;
    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), bad, len, NULL), 0);
    expect_fail(ec_model_pull(C.c, "m", "1", url, NULL), EC_ECHECKSUM,
                "tensor 'emb' partition 3");
    not_registered(C.c, "1");

    /* Of another length. */
    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), bad, len - 1, NULL), 0);
    expect_fail(ec_model_pull(C.c, "m", "1", url, NULL), EC_ECHECKSUM, "chunk 0");
    not_registered(C.c, "1");

    /* Missing. */
    assert_int_equal(ec_rcluster_del(rc, key, strlen(key)), 0);
    expect_fail(ec_model_pull(C.c, "m", "1", url, NULL), EC_ECHECKSUM, "missing");
    not_registered(C.c, "1");
    assert_true(stat_of(C.c, "pull_failures") >= 3);

    /* Put back: the pull works. */
    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), orig, len, NULL), 0);
    assert_int_equal(ec_model_pull(C.c, "m", "1", url, NULL), 0);
    same_rows(A.c, C.c, "1", "emb");
    free(bad);
    free(orig);
    ec_rcluster_close(rc);
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void test_bad_manifest_refused(void **state)
{
    static const char key[] = "ec:m:m:2";
    ec_rcluster *rc = rc_open();
    void *orig = NULL;
    uint8_t *m;
    size_t len = 0, off;

    (void)state;
    assert_int_equal(ec_rcluster_get(rc, key, strlen(key), &orig, &len), 0);
    m = malloc(len);
    /* Garbage. */
    for (size_t i = 0; i < len; i++)
        m[i] = (uint8_t)rnd();
    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), m, len, NULL), 0);
    expect_fail(ec_model_pull(C.c, "m", "2", url, NULL), EC_EFORMAT, "manifest");
    not_registered(C.c, "2");
    /* Truncated. */
    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), orig, len - 24, NULL), 0);
    expect_fail(ec_model_pull(C.c, "m", "2", url, NULL), EC_EFORMAT, "manifest");
    /* Its own checksum right, a partition's length wrong: the length of
     * the last partition of "big" is the 16 bytes before the last
     * partition's checksum, before its file head's length and checksum
     * (manifest format 2) and the trailer. */
    memcpy(m, orig, len);
    off = len - 8 - 16 - 16;
    put_le64(m + off, 12345);
    put_le64(m + len - 8, ec_checksum(m, len - 8));
    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), m, len, NULL), 0);
    expect_fail(ec_model_pull(C.c, "m", "2", url, NULL), EC_EFORMAT, "partition 1");
    not_registered(C.c, "2");
    /* An absurd tensor count. */
    memcpy(m, orig, len);
    put_le64(m + 12, 0xFFFFFFFFu); /* n (u32) and the model name's length */
    put_le64(m + len - 8, ec_checksum(m, len - 8));
    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), m, len, NULL), 0);
    expect_fail(ec_model_pull(C.c, "m", "2", url, NULL), EC_EFORMAT, "tensors");
    not_registered(C.c, "2");

    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), orig, len, NULL), 0);
    assert_int_equal(ec_model_pull(C.c, "m", "2", url, NULL), 0);
    same_rows(A.c, C.c, "2", "big");
    free(m);
    free(orig);
    ec_rcluster_close(rc);
}

/* A version published in manifest format 1 (before file heads): a pull
 * reads it as before; a lazy pull asks to publish it again. */
static void test_format1_manifest(void **state)
{
    static const char key[] = "ec:m:m:2"; /* one tensor, "big" */
    ec_rcluster *rc = rc_open();
    void *orig = NULL;
    uint8_t *m;
    size_t len = 0, n;

    (void)state;
    assert_int_equal(ec_model_retire(C.c, "m", 2, 1), 0);
    assert_int_equal(ec_rcluster_get(rc, key, strlen(key), &orig, &len), 0);
    /* Format 2 ends: ..., head length, head checksum, trailer. */
    n = len - 16;
    m = malloc(len);
    memcpy(m, orig, n - 8);
    m[8] = 1; /* the format, u32 little-endian after the magic */
    put_le64(m + n - 8, ec_checksum(m, n - 8));
    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), m, n, NULL), 0);
    expect_fail(ec_model_pull_flags(C.c, "m", "2", url, EC_PULL_LAZY, NULL), EC_EVERSION,
                "publish it again");
    not_registered(C.c, "2");
    assert_int_equal(ec_model_pull(C.c, "m", "2", url, NULL), 0);
    same_rows(A.c, C.c, "2", "big");
    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), orig, len, NULL), 0);
    free(m);
    free(orig);
    ec_rcluster_close(rc);
}

/* Of the keys of a publish of version v with tensors of these partition
 * counts (each partition and file head one chunk), how many exist. */
static size_t keys_present(ec_rcluster *rc, int64_t v, const uint64_t *parts, uint32_t n)
{
    char key[128];
    size_t have = 0;

    for (uint32_t t = 0; t < n; t++) {
        void *val = NULL;
        size_t len;
        int r;
        snprintf(key, sizeof(key), "ec:h:m:%lld:%u:0", (long long)v, t);
        r = ec_rcluster_get(rc, key, strlen(key), &val, &len);
        assert_true(r == 0 || r == EC_ENOENT);
        have += r == 0;
        free(val);
        for (uint64_t p = 0; p < parts[t]; p++) {
            val = NULL;
            snprintf(key, sizeof(key), "ec:c:m:%lld:%u:%llu:0", (long long)v, t,
                     (unsigned long long)p);
            r = ec_rcluster_get(rc, key, strlen(key), &val, &len);
            assert_true(r == 0 || r == EC_ENOENT);
            have += r == 0;
            free(val);
        }
    }
    return have;
}

static void test_publish_again_drops_unused_keys(void **state)
{
    /* 4 KiB partitions: emb 256, small 4 (16,000 bytes). */
    const ect_st_tensor big[] = {
        {.name = "emb", .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {4096, 64}, .seed = 31},
        {.name = "small", .dtype = EC_DTYPE_F16, .ndim = 2, .shape = {1000, 8}, .seed = 32},
    };
    const ect_st_tensor less[] = {
        {.name = "emb", .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {1024, 64}, .seed = 33},
    };
    const uint64_t before[2] = {256, 4}, after[1] = {64};
    ec_rcluster *rc = rc_open();
    ec_publish_result r;

    (void)state;
    import_st(A.c, "v5", 5, big, 2, 4096, 1, NULL);
    assert_int_equal(ec_model_publish(A.c, "m", "5", url, &r), 0);
    assert_int_equal(keys_present(rc, 5, before, 2), 2 + 256 + 4);
    /* Published again under the same number, smaller. */
    assert_int_equal(ec_model_retire(A.c, "m", 5, 0), 0);
    import_st(A.c, "v5-less", 5, less, 1, 4096, 2, NULL);
    assert_int_equal(ec_model_publish(A.c, "m", "5", url, &r), 0);
    assert_int_equal(r.tensors, 1);
    /* Only the new publish's keys are left: its head and 64 chunks. */
    assert_int_equal(keys_present(rc, 5, before, 2), 1 + 64);
    assert_int_equal(keys_present(rc, 5, after, 1), 1 + 64);
    assert_int_equal(ec_model_pull(B.c, "m", "5", url, &r), 0);
    same_rows(A.c, B.c, "5", "emb");
    ec_rcluster_close(rc);
}

static void test_unpublish(void **state)
{
    static const char bad_key[] = "ec:m:m:7", chunk7[] = "ec:c:m:7:0:0:0";
    const uint64_t parts[1] = {64};
    const ect_st_tensor seven[] = {
        {.name = "emb", .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {512, 64}, .seed = 34},
    };
    const char *argv[] = {EC_TEST_CLI, "--socket", A.sock, "unpublish", "m", "1", "--cluster",
                          url, NULL};
    ec_rcluster *rc = rc_open();
    ec_publish_result r;
    char *out = NULL, *err = NULL;
    void *val = NULL;
    size_t len;

    (void)state;
    assert_int_equal(ec_model_unpublish(A.c, "m", "5", url, &r), 0);
    assert_int_equal(r.version, 5);
    assert_int_equal(r.tensors, 1);
    assert_int_equal(r.bytes, 1024 * 256);
    assert_int_equal(keys_present(rc, 5, parts, 1), 0);
    assert_int_equal(ec_rcluster_get(rc, "ec:m:m:5", 8, &val, &len), EC_ENOENT);
    assert_int_equal(stat_of(A.c, "unpublished_versions"), 1);
    /* Gone: a pull, and unpublishing again, find nothing. B keeps its copy. */
    expect_fail(ec_model_pull(C.c, "m", "5", url, NULL), EC_ENOENT, "not published");
    expect_fail(ec_model_unpublish(A.c, "m", "5", url, NULL), EC_ENOENT, "not published");
    expect_fail(ec_model_unpublish(A.c, "m", "current", url, NULL), EC_EINVAL, "number");
    same_rows(A.c, B.c, "5", "emb");

    /* A manifest that fails validation names nothing to delete. */
    assert_int_equal(ec_rcluster_set(rc, bad_key, strlen(bad_key), "garbage!garbage!", 16, NULL),
                     0);
    assert_int_equal(ec_rcluster_set(rc, chunk7, strlen(chunk7), "data", 4, NULL), 0);
    expect_fail(ec_model_unpublish(A.c, "m", "7", url, NULL), EC_EFORMAT,
                "nothing was deleted");
    assert_int_equal(ec_rcluster_get(rc, chunk7, strlen(chunk7), &val, &len), 0);
    free(val);
    val = NULL;
    assert_int_equal(ec_rcluster_get(rc, bad_key, strlen(bad_key), &val, &len), 0);
    free(val);
    /* A publish over it replaces it (and deletes nothing on its word). */
    import_st(A.c, "v7", 7, seven, 1, 4096, 1, NULL);
    assert_int_equal(ec_model_publish(A.c, "m", "7", url, &r), 0);
    assert_int_equal(ec_model_pull(C.c, "m", "7", url, &r), 0);
    same_rows(A.c, C.c, "7", "emb");
    assert_int_equal(ec_model_unpublish(A.c, "m", "7", url, &r), 0);

    /* The CLI. */
    assert_int_equal(ect_run(argv, &out, NULL, &err), 0);
    if (!out || !strstr(out, "unpublished m version 1: 2 tensor(s)"))
        fail_msg("embcache unpublish printed: %s%s", out ? out : "", err ? err : "");
    free(out);
    free(err);
    expect_fail(ec_model_pull(C.c, "m", "1", url, NULL), EC_EEXIST, NULL);
    expect_fail(ec_model_unpublish(A.c, "m", "1", url, NULL), EC_ENOENT, "not published");
    ec_rcluster_close(rc);
}

static void test_cluster_down(void **state)
{
    int rc;

    (void)state;
    assert_int_equal(cluster_sh("stop", NULL), 0);
    cl_running = false;
    rc = ec_model_publish(A.c, "m", "1", url, NULL);
    if (rc != EC_ECONN && rc != EC_ETIMEOUT)
        fail_msg("publish to a stopped cluster: %s: %s", ec_strerror(rc), ec_last_error());
    assert_non_null(strstr(ec_last_error(), "cluster"));
    assert_int_equal(ec_model_retire(C.c, "m", 2, 1), 0);
    rc = ec_model_pull(C.c, "m", "2", url, NULL);
    if (rc != EC_ECONN && rc != EC_ETIMEOUT)
        fail_msg("pull from a stopped cluster: %s: %s", ec_strerror(rc), ec_last_error());
    not_registered(C.c, "2");
    /* Both keep serving their local data. */
    same_rows(A.c, B.c, "1", "emb");
    same_rows(A.c, B.c, "2", "big");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_publish_then_pull),
        cmocka_unit_test(test_pull_again_is_eexist),
        cmocka_unit_test(test_pull_unpublished_is_enoent),
        cmocka_unit_test(test_corrupt_chunk_refused),
        cmocka_unit_test(test_bad_manifest_refused),
        cmocka_unit_test(test_format1_manifest),
        cmocka_unit_test(test_publish_again_drops_unused_keys),
        cmocka_unit_test(test_unpublish),
        cmocka_unit_test(test_cluster_down),
    };

    if (!ect_redis_installed()) {
        fprintf(stderr, "test_publish: redis-server or redis-cli is not installed; skipped\n");
        return EC_TEST_SKIP;
    }
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
