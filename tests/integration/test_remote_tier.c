/*
 * test_remote_tier.c - the remote tier's read path (core/pager_remote.c,
 * core/engine_remote.c, ec_pull_lazy in core/publish.c) between real
 * daemons through a real local Redis Cluster (3 masters, 3 replicas,
 * tests/redis/cluster.sh on free loopback ports).
 *
 * Daemon A imports a model and publishes it. Daemon B (--remote, keeping
 * what it reads) pulls it with --lazy: its partition files are sparse, its
 * rows equal A's byte for byte, read from the cluster (remote_reads,
 * remote_bytes) and kept (the files fill); B's publish of the version is
 * refused while a partition is not on its disk yet (naming it, not
 * calling it damaged) and done once all is kept; a kept partition damaged on
 * B's disk is read from the cluster again and rewritten. A tensor cached
 * by rows is read remotely by block runs. Daemon K (--remote,
 * remote-keep false) sees a chunk overwritten on the cluster as
 * EC_ECHECKSUM naming partition and chunk, never as wrong bytes, and
 * follows a chunk's slot through a migration (ASK, then MOVED), and once
 * a version is unpublished serves what is resident and refuses the rest
 * with EC_ECHECKSUM (missing), never other bytes. Daemon M
 * (remote-keep-max) and daemon P (restarted with a reserve beyond its
 * disk) remove kept partitions again, and nothing else: not a local
 * version's, not a fully pulled one's, not without --remote. Daemon N
 * (no --remote) is told to start embcached with --remote. Then the cluster
 * stops: K fails what only the cluster has with EC_ECONN naming the
 * cluster, quickly, while serving what is resident; B, restarted, serves
 * every row from its files.
 *
 * The tests run in order and share the cluster and the daemons (group
 * setup and teardown). Every process is stopped by its pid. Exits 77
 * (skipped) only when redis-server or redis-cli is not installed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "core/partfile.h"
#include "core/rcluster.h"
#include "itest.h"
#include "testutil.h"

#define NODES 6

static char *dir;
static ect_cluster cl = {.pipe = -1};
static bool cl_running;
static char url[128];

static struct itest_daemon A, B, K, N, R, M, P;

/* v1: "emb" 4096 x 64 f32 in 64 KiB partitions (16 of them, one chunk
 * each), "small" 1000 x 8 f16 (one partition). v2: "wide" 8192 x 64 f32,
 * cached by rows on B. */
static const ect_st_tensor v1[] = {
    {.name = "emb", .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {4096, 64}, .seed = 21},
    {.name = "small", .dtype = EC_DTYPE_F16, .ndim = 2, .shape = {1000, 8}, .seed = 22},
};
static const ect_st_tensor v2[] = {
    {.name = "wide", .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {8192, 64}, .seed = 23},
};
#define V1_BYTES (4096u * 256u + 1000u * 16u)

static int group_setup(void **state)
{
    const char *remote[] = {"--remote", url, NULL};
    const char *nokeep[] = {"--remote", url, "--remote-keep", "false", NULL};

    (void)state;
    dir = ect_tmpdir("ec-remote");
    if (ect_cluster_start_in(&cl, EC_TEST_CLUSTER_SH, dir, NODES, 2, url, sizeof(url)) < 0)
        return -1;
    cl_running = true;
    itest_daemon_up(&A, dir, "a", NULL, true);
    itest_daemon_up(&B, dir, "b", remote, true);
    itest_daemon_up(&K, dir, "k", nokeep, true);
    itest_daemon_up(&N, dir, "n", NULL, true);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    itest_daemon_down(&A);
    itest_daemon_down(&B);
    itest_daemon_down(&K);
    itest_daemon_down(&N);
    itest_daemon_down(&R);
    itest_daemon_down(&M);
    itest_daemon_down(&P);
    if (!cl_running)
        cl.base = 0;
    ect_cluster_stop(&cl);
    if (dir)
        ect_rmtree(dir);
    free(dir);
    return 0;
}

/* ------------------------------------------------------------------ */

static void import_st(ec_client *c, const char *name, int64_t v, const ect_st_tensor *t,
                      size_t n, uint64_t part)
{
    char path[700];
    const char *paths[1] = {path};
    ec_import_opts o = {.model = "m", .version = v, .round = 3, .partition_bytes = part};
    uint32_t tensors = 0;

    snprintf(path, sizeof(path), "%s/%s.safetensors", dir, name);
    assert_int_equal(ect_write_safetensors(path, t, n), 0);
    assert_int_equal(ec_model_import(c, &o, paths, 1, &tensors), 0);
    assert_int_equal(tensors, n);
}

/* Rows ids[0..n) of (m, version, tensor) from x and y: the same bytes. */
static void same_ids(ec_client *x, ec_client *y, const char *version, const char *tensor,
                     const int64_t *ids, size_t n)
{
    itest_same_ids(x, y, "m", version, tensor, ids, n);
}

/* Every row, in batches of 256. */
static void same_rows(ec_client *x, ec_client *y, const char *version, const char *tensor,
                      uint64_t rows)
{
    int64_t ids[256];

    for (uint64_t r = 0; r < rows; r += 256) {
        size_t n = rows - r < 256 ? (size_t)(rows - r) : 256;
        for (size_t i = 0; i < n; i++)
            ids[i] = (int64_t)(r + i);
        same_ids(x, y, version, tensor, ids, n);
    }
}

/* A gather of rows [first, first + n) of m/version/tensor from c. */
static int gather(ec_client *c, const char *version, const char *tensor, int64_t first,
                  size_t n)
{
    ec_tensor *t;
    int64_t ids[64];
    uint8_t buf[64 * 256];
    int rc;

    assert_true(n <= 64);
    assert_int_equal(ec_tensor_resolve(c, "m", version, tensor, &t), 0);
    for (size_t i = 0; i < n; i++)
        ids[i] = first + (int64_t)i;
    rc = ec_tensor_gather(t, ids, n, buf, sizeof(buf));
    ec_tensor_release(t);
    return rc;
}

static void expect_fail(int rc, int want, const char *needle)
{
    if (rc != want || (needle && !strstr(ec_last_error(), needle)))
        fail_msg("expected %s with \"%s\", got %s: %s", ec_strerror(want),
                 needle ? needle : "", ec_strerror(rc), ec_last_error());
}

/* Bytes allocated on disk, and their apparent size, of a daemon's
 * partition files. */
static void disk_use(const struct itest_daemon *d, uint64_t *allocated, uint64_t *apparent)
{
    char parts[700], path[1000];
    struct dirent *de;
    DIR *dd;

    *allocated = *apparent = 0;
    snprintf(parts, sizeof(parts), "%s/parts", d->data);
    assert_non_null(dd = opendir(parts));
    while ((de = readdir(dd))) {
        struct stat st;
        size_t l = strlen(de->d_name);
        if (l < 4 || strcmp(de->d_name + l - 4, ".ecp"))
            continue;
        snprintf(path, sizeof(path), "%s/%s", parts, de->d_name);
        assert_int_equal(stat(path, &st), 0);
        *allocated += (uint64_t)st.st_blocks * 512;
        *apparent += (uint64_t)st.st_size;
    }
    closedir(dd);
}

/* The partition file of (version, tensor) in d's data directory. */
static void file_of(const struct itest_daemon *d, int64_t version, const char *tensor, char *out,
                    size_t cap, ec_partfile_meta *meta)
{
    itest_partfile_of(d->data, "m", version, tensor, out, cap, meta);
}

/* ------------------------------------------------------------------ */

static void test_lazy_pull_reads_remotely(void **state)
{
    ec_publish_result r;
    uint64_t alloc, size;

    (void)state;
    import_st(A.c, "v1", 1, v1, 2, 64u << 10);
    import_st(A.c, "v2", 2, v2, 1, 64u << 10);
    assert_int_equal(ec_model_publish(A.c, "m", "1", url, &r), 0);
    assert_int_equal(ec_model_publish(A.c, "m", "2", url, &r), 0);

    /* B's own --remote: no URL in the request. */
    assert_int_equal(ec_model_pull_flags(B.c, "m", "1", NULL, EC_PULL_LAZY, &r), 0);
    assert_int_equal(r.version, 1);
    assert_int_equal(r.tensors, 2);
    assert_true(r.bytes > 0 && r.bytes < 64u << 10); /* the heads, not the data */
    disk_use(&B, &alloc, &size);
    assert_true(size > V1_BYTES);
    if (alloc >= 256u << 10)
        fail_msg("lazily pulled files hold %llu bytes on disk: not sparse",
                 (unsigned long long)alloc);
    assert_int_equal(stat_of(B.c, "remote_reads"), 0);
    /* Published again from B before its data is here: refused, naming the
     * partition not on disk (not "damaged"), and the cluster's copy kept. */
    expect_fail(ec_model_publish(B.c, "m", "1", url, NULL), EC_EINVAL,
                "pulled lazily here, and partition 0 of tensor");

    same_rows(A.c, B.c, "1", "emb", 4096);
    same_rows(A.c, B.c, "1", "small", 1000);
    assert_true(stat_of(B.c, "remote_reads") >= 17);
    assert_true(stat_of(B.c, "remote_bytes") >= V1_BYTES);
    assert_int_equal(stat_of(B.c, "remote_errors"), 0);
    assert_int_equal(stat_of(B.c, "remote_checksum_failures"), 0);
    assert_int_equal(stat_of(B.c, "remote_kept_bytes"), V1_BYTES);
    assert_int_equal(stat_of(B.c, "remote_partitions_remote"), 0);
    /* Kept: the files hold the data now, and B can publish the version. */
    disk_use(&B, &alloc, &size);
    assert_true(alloc >= V1_BYTES);
    assert_int_equal(ec_model_publish(B.c, "m", "1", url, &r), 0);
    assert_int_equal(r.tensors, 2);
    same_rows(A.c, B.c, "1", "small", 1000);
}

/* remote-keep-reserve: with less free than the reserve, nothing is kept
 * (a full disk would stop the catalog and the logs), and every row is
 * still served, from the cluster. */
static void test_keep_reserve(void **state)
{
    const char *args[] = {"--remote", url, "--remote-keep-reserve", "1000T", NULL};
    uint64_t alloc, size;

    (void)state;
    itest_daemon_up(&R, dir, "r", args, true);
    assert_int_equal(ec_model_pull_flags(R.c, "m", "1", NULL, EC_PULL_LAZY, NULL), 0);
    same_rows(A.c, R.c, "1", "emb", 4096);
    same_rows(A.c, R.c, "1", "small", 1000);
    assert_true(stat_of(R.c, "remote_reads") >= 17);
    assert_int_equal(stat_of(R.c, "remote_errors"), 0);
    assert_int_equal(stat_of(R.c, "remote_kept_bytes"), 0);
    assert_int_equal(stat_of(R.c, "remote_keep_failures"), 0);
    assert_true(stat_of(R.c, "remote_keep_skipped_space") >= 17);
    disk_use(&R, &alloc, &size);
    if (alloc >= 256u << 10)
        fail_msg("a daemon at its disk reserve kept %llu bytes", (unsigned long long)alloc);
    itest_daemon_down(&R);
}

static void test_kept_partition_damaged_is_fetched_again(void **state)
{
    char path[1000];
    ec_partfile_meta meta;
    uint8_t junk[4096];
    uint64_t reads, refetches;
    int fd;

    (void)state;
    file_of(&B, 1, "emb", path, sizeof(path), &meta);
    memset(junk, 0x5a, sizeof(junk));
    assert_true((fd = open(path, O_WRONLY)) >= 0);
    assert_int_equal(pwrite(fd, junk, sizeof(junk), (off_t)(meta.data_off + 3 * meta.stride)),
                     (ssize_t)sizeof(junk));
    assert_int_equal(fsync(fd), 0);
    close(fd);
    assert_int_equal(ec_model_evict(B.c, "m", "1", NULL), 0);
    reads = stat_of(B.c, "remote_reads");
    refetches = stat_of(B.c, "remote_local_refetches");
    same_rows(A.c, B.c, "1", "emb", 4096);
    assert_int_equal(stat_of(B.c, "remote_local_refetches"), refetches + 1);
    assert_int_equal(stat_of(B.c, "remote_reads"), reads + 1);
    /* Rewritten: read locally next time. */
    assert_int_equal(ec_model_evict(B.c, "m", "1", NULL), 0);
    same_rows(A.c, B.c, "1", "emb", 4096);
    assert_int_equal(stat_of(B.c, "remote_reads"), reads + 1);
}

/* Bytes on disk of the partition file of (version, tensor) in d. */
static uint64_t allocated(const struct itest_daemon *d, int64_t version, const char *tensor)
{
    char path[1000];
    ec_partfile_meta meta;
    struct stat st;

    file_of(d, version, tensor, path, sizeof(path), &meta);
    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_blocks * 512;
}

/* Wait (5 s at most) for the daemon's tick to bring stat name to at most
 * max; its value then. */
static uint64_t wait_stat_at_most(ec_client *c, const char *name, uint64_t max)
{
    uint64_t v = stat_of(c, name);

    for (int i = 0; v > max && i < 500; i++) {
        usleep(10000);
        v = stat_of(c, name);
    }
    return v;
}

/* remote-keep-max: the kept bytes of lazily pulled versions stay under it
 * (the coldest partitions are punched out of the files again, even ones
 * resident in memory when nothing else is left), every row is still right
 * and an evicted partition is read from the cluster again. A locally
 * imported version and a fully pulled one lose nothing. */
static void test_keep_max(void **state)
{
    const char *args[] = {"--remote", url, "--remote-keep-max", "256K", NULL};
    uint64_t full, local, reads, kept;

    (void)state;
    itest_daemon_up(&M, dir, "m", args, true);
    import_st(M.c, "m-local", 5, v2, 1, 64u << 10);
    assert_int_equal(ec_model_pull_flags(M.c, "m", "2", NULL, 0, NULL), 0);
    assert_int_equal(ec_model_pull_flags(M.c, "m", "1", NULL, EC_PULL_LAZY, NULL), 0);
    local = allocated(&M, 5, "wide");
    full = allocated(&M, 2, "wide");
    assert_true(local >= 8192u * 256u && full >= 8192u * 256u);

    same_rows(A.c, M.c, "1", "emb", 4096);
    same_rows(A.c, M.c, "1", "small", 1000);
    same_rows(A.c, M.c, "2", "wide", 8192);
    same_rows(M.c, M.c, "5", "wide", 8192);
    kept = wait_stat_at_most(M.c, "remote_disk_bytes", 256u << 10);
    if (kept > 256u << 10)
        fail_msg("%llu bytes kept from the remote tier with remote-keep-max 256K",
                 (unsigned long long)kept);
    assert_true(kept > 0);
    assert_true(stat_of(M.c, "remote_disk_evictions") >= 12);
    assert_true(stat_of(M.c, "remote_disk_evicted_bytes") >= 12u * (64u << 10));
    assert_true(allocated(&M, 1, "emb") <= (256u + 64u) << 10);
    assert_int_equal(allocated(&M, 5, "wide"), local);
    assert_int_equal(allocated(&M, 2, "wide"), full);

    /* Out of memory too: what was removed comes from the cluster again. */
    assert_int_equal(ec_model_evict(M.c, "m", "1", NULL), 0);
    reads = stat_of(M.c, "remote_reads");
    same_rows(A.c, M.c, "1", "emb", 4096);
    assert_true(stat_of(M.c, "remote_reads") >= reads + 12);
    assert_int_equal(stat_of(M.c, "remote_errors"), 0);
    assert_int_equal(stat_of(M.c, "remote_checksum_failures"), 0);
    assert_int_equal(stat_of(M.c, "remote_local_refetches"), 0);
    kept = wait_stat_at_most(M.c, "remote_disk_bytes", 256u << 10);
    assert_true(kept <= 256u << 10);
    itest_daemon_down(&M);
}

/* remote-keep-reserve after a restart: the kept partitions of a version not
 * read since are found (the inventory) and removed when the disk is under
 * the reserve, and every row is still served. Without --remote nothing is
 * removed: the kept bytes are then the only copy the daemon can reach. */
static void test_reserve_removes_kept(void **state)
{
    const char *remote[] = {"--remote", url, NULL};
    const char *no_remote[] = {"--remote-keep-reserve", "1000T", NULL};
    const char *reserve[] = {"--remote", url, "--remote-keep-reserve", "1000T", NULL};
    uint64_t emb, local;

    (void)state;
    itest_daemon_up(&P, dir, "p", remote, true);
    import_st(P.c, "e-local", 7, v1, 2, 64u << 10);
    assert_int_equal(ec_model_pull_flags(P.c, "m", "1", NULL, EC_PULL_LAZY, NULL), 0);
    same_rows(A.c, P.c, "1", "emb", 4096);
    same_rows(A.c, P.c, "1", "small", 1000);
    assert_int_equal(stat_of(P.c, "remote_disk_bytes"), V1_BYTES);
    emb = allocated(&P, 1, "emb");
    local = allocated(&P, 7, "emb");
    assert_true(emb >= 4096u * 256u);
    itest_daemon_down(&P);

    itest_daemon_up(&P, dir, "p", no_remote, true);
    same_rows(P.c, P.c, "1", "emb", 4096);
    usleep(1500 * 1000); /* more than a tick and a look at the disk */
    assert_int_equal(stat_of(P.c, "remote_disk_evictions"), 0);
    assert_int_equal(allocated(&P, 1, "emb"), emb);
    itest_daemon_down(&P);

    itest_daemon_up(&P, dir, "p", reserve, true);
    for (int i = 0; i < 500 && stat_of(P.c, "remote_disk_evictions") < 17; i++)
        usleep(10000);
    assert_int_equal(stat_of(P.c, "remote_disk_evictions"), 17); /* 16 + 1 */
    assert_int_equal(stat_of(P.c, "remote_disk_evicted_bytes"), V1_BYTES);
    assert_int_equal(stat_of(P.c, "remote_disk_bytes"), 0);
    assert_true(allocated(&P, 1, "emb") < 64u << 10);
    assert_int_equal(allocated(&P, 7, "emb"), local);
    same_rows(A.c, P.c, "1", "emb", 4096);
    same_rows(A.c, P.c, "1", "small", 1000);
    same_rows(P.c, P.c, "7", "emb", 4096); /* readable: its checksums hold */
    assert_int_equal(stat_of(P.c, "remote_errors"), 0);
    itest_daemon_down(&P);
}

static void test_rows_tensor_reads_remotely(void **state)
{
    int64_t ids[64];
    uint64_t reads;

    (void)state;
    assert_int_equal(ec_model_cache_mode(B.c, "m", "wide", EC_CACHE_ROWS), 0);
    assert_int_equal(ec_model_pull_flags(B.c, "m", "2", NULL, EC_PULL_LAZY, NULL), 0);
    reads = stat_of(B.c, "remote_reads");
    for (size_t i = 0; i < 64; i++)
        ids[i] = (int64_t)((i * 2654435761u) % 8192);
    same_ids(A.c, B.c, "2", "wide", ids, 64);
    assert_true(stat_of(B.c, "row_block_reads") > 0);
    assert_true(stat_of(B.c, "remote_reads") > reads);
    assert_true(stat_of(B.c, "remote_kept_bytes") > V1_BYTES);
    same_rows(A.c, B.c, "2", "wide", 8192);
    assert_int_equal(stat_of(B.c, "remote_errors"), 0);
}

static void test_no_remote_is_a_clear_error(void **state)
{
    (void)state;
    /* N names the cluster for the pull, but reads have none. */
    assert_int_equal(ec_model_pull_flags(N.c, "m", "1", url, EC_PULL_LAZY, NULL), 0);
    expect_fail(gather(N.c, "1", "emb", 0, 4), EC_ECONN, "start embcached with --remote");
    assert_true(stat_of(N.c, "remote_errors") >= 1);
}

static void test_corrupt_chunk_is_echecksum(void **state)
{
    static const char key[] = "ec:c:m:1:0:5:0"; /* emb, partition 5, chunk 0 */
    ec_rcluster *rc = NULL;
    void *orig = NULL;
    uint8_t *bad;
    size_t len = 0;

    (void)state;
    assert_int_equal(ec_rcluster_open(url, NULL, &rc), 0);
    assert_int_equal(ec_rcluster_get(rc, key, strlen(key), &orig, &len), 0);
    assert_int_equal(len, 64u << 10);
    bad = malloc(len);
    memcpy(bad, orig, len);
    bad[1000] ^= 0x01;
    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), bad, len, NULL), 0);
    assert_int_equal(ec_model_pull_flags(K.c, "m", "1", NULL, EC_PULL_LAZY, NULL), 0);
    expect_fail(gather(K.c, "1", "emb", 5 * 256 + 7, 3), EC_ECHECKSUM, "partition 5");
    assert_non_null(strstr(ec_last_error(), "remote tier"));
    assert_true(stat_of(K.c, "remote_checksum_failures") >= 1);
    /* Its neighbours are fine. */
    assert_int_equal(gather(K.c, "1", "emb", 4 * 256, 8), 0);

    /* Of another length. */
    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), bad, len - 1, NULL), 0);
    sleep(3); /* past the engine's memory of the failed read */
    expect_fail(gather(K.c, "1", "emb", 5 * 256, 1), EC_ECHECKSUM, "chunk 0");

    /* Put back: served. */
    assert_int_equal(ec_rcluster_set(rc, key, strlen(key), orig, len, NULL), 0);
    sleep(3);
    same_rows(A.c, K.c, "1", "emb", 4096);
    free(bad);
    free(orig);
    ec_rcluster_close(rc);
}

/* A view (the whole tensor in one extent, its partitions read into place
 * from the cluster: K keeps nothing on disk) equals A's rows. */
static void test_view_of_remote_tensor(void **state)
{
    ec_tensor *t;
    ec_view *v;
    uint8_t *want = malloc(4096 * 256);
    int64_t ids[256];
    uint64_t reads = stat_of(K.c, "remote_reads");

    (void)state;
    assert_non_null(want);
    assert_int_equal(ec_tensor_resolve(A.c, "m", "1", "emb", &t), 0);
    for (int64_t r = 0; r < 4096; r += 256) {
        for (int i = 0; i < 256; i++)
            ids[i] = r + i;
        assert_int_equal(ec_tensor_gather(t, ids, 256, want + r * 256, 256 * 256), 0);
    }
    ec_tensor_release(t);
    assert_int_equal(ec_tensor_resolve(K.c, "m", "1", "emb", &t), 0);
    if (ec_tensor_view(t, &v) != 0)
        fail_msg("view of a lazily pulled tensor: %s", ec_last_error());
    assert_int_equal(ec_view_size(v), 4096 * 256);
    assert_memory_equal(ec_view_data(v), want, 4096 * 256);
    assert_true(stat_of(K.c, "remote_reads") >= reads + 16);
    ec_view_release(v);
    ec_tensor_release(t);
    free(want);
}

/* redis-cli -p port ARGS..., its first line of output in out (may be NULL). */
static void rcli(int port, const char *args, char *out, size_t cap)
{
    char cmd[1024], line[256] = "";
    FILE *f;

    snprintf(cmd, sizeof(cmd), "redis-cli -h 127.0.0.1 -p %d %s 2>&1", port, args);
    assert_non_null(f = popen(cmd, "r"));
    if (!fgets(line, sizeof(line), f))
        line[0] = '\0';
    while (fgetc(f) != EOF) {
    }
    assert_int_equal(pclose(f), 0);
    line[strcspn(line, "\r\n")] = '\0';
    if (out)
        snprintf(out, cap, "%s", line);
}

static int port_of_slot(ec_rcluster *rc, unsigned slot)
{
    char node[128];
    const char *colon;

    assert_int_equal(ec_rcluster_slot_node(rc, slot, node, sizeof(node)), 0);
    assert_non_null(colon = strrchr(node, ':'));
    return atoi(colon + 1);
}

/* A chunk's slot half-way through a migration (ASK), then moved (MOVED):
 * the remote reads follow both and serve the same bytes. */
static void test_redirects_followed(void **state)
{
    static const char key[] = "ec:c:m:2:0:17:0"; /* wide, partition 17 */
    unsigned slot = ec_rcluster_keyslot(key, strlen(key));
    ec_rcluster *rc = NULL;
    char from_id[128], to_id[128], args[512];
    int from, to = 0;
    uint64_t redirects;

    (void)state;
    assert_int_equal(ec_rcluster_open(url, NULL, &rc), 0);
    from = port_of_slot(rc, slot);
    for (unsigned s = 0; s < EC_RCLUSTER_SLOTS && !to; s += 1000)
        if (port_of_slot(rc, s) != from)
            to = port_of_slot(rc, s);
    assert_true(to > 0);
    rcli(from, "CLUSTER MYID", from_id, sizeof(from_id));
    rcli(to, "CLUSTER MYID", to_id, sizeof(to_id));
    assert_int_equal(ec_model_pull_flags(K.c, "m", "2", NULL, EC_PULL_LAZY, NULL), 0);
    assert_int_equal(gather(K.c, "2", "wide", 0, 4), 0); /* K's workers have their maps */

    snprintf(args, sizeof(args), "CLUSTER SETSLOT %u IMPORTING %s", slot, from_id);
    rcli(to, args, NULL, 0);
    snprintf(args, sizeof(args), "CLUSTER SETSLOT %u MIGRATING %s", slot, to_id);
    rcli(from, args, NULL, 0);
    snprintf(args, sizeof(args), "MIGRATE 127.0.0.1 %d %s 0 10000", to, key);
    rcli(from, args, NULL, 0);
    redirects = stat_of(K.c, "remote_redirects");
    {
        int64_t ids[4] = {17 * 256, 17 * 256 + 1, 17 * 256 + 100, 17 * 256 + 255};
        same_ids(A.c, K.c, "2", "wide", ids, 4); /* ASK */
    }
    assert_true(stat_of(K.c, "remote_redirects") > redirects);

    /* The slot moves for good: MOVED for every handle with the old map. */
    for (int i = 0; i < 3; i++) {
        int port = i == 0 ? to : i == 1 ? from : 0;
        if (i == 2) /* the third master */
            for (unsigned s = 0; s < EC_RCLUSTER_SLOTS && !port; s += 1000)
                if (port_of_slot(rc, s) != from && port_of_slot(rc, s) != to)
                    port = port_of_slot(rc, s);
        snprintf(args, sizeof(args), "CLUSTER SETSLOT %u NODE %s", slot, to_id);
        rcli(port, args, NULL, 0);
    }
    assert_int_equal(ec_model_evict(K.c, "m", "2", NULL), 0);
    same_rows(A.c, K.c, "2", "wide", 8192);
    assert_int_equal(stat_of(K.c, "remote_errors"), 0);
    ec_rcluster_close(rc);
}

/* A version unpublished while a daemon reads it lazily (K keeps nothing):
 * what is resident is still served; what is not fails with EC_ECHECKSUM
 * saying the chunk is missing, never with other bytes. */
static void test_unpublished_version_reads_fail(void **state)
{
    const ect_st_tensor v3[] = {
        {.name = "emb", .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {2048, 64}, .seed = 24},
    };
    ec_publish_result r;

    (void)state;
    import_st(A.c, "v3", 3, v3, 1, 64u << 10);
    assert_int_equal(ec_model_publish(A.c, "m", "3", url, &r), 0);
    assert_int_equal(ec_model_pull_flags(K.c, "m", "3", NULL, EC_PULL_LAZY, &r), 0);
    same_rows(A.c, K.c, "3", "emb", 256); /* partition 0, resident now */
    assert_int_equal(ec_model_unpublish(A.c, "m", "3", url, &r), 0);
    same_rows(A.c, K.c, "3", "emb", 256);
    expect_fail(gather(K.c, "3", "emb", 3 * 256, 4), EC_ECHECKSUM, "unpublished");
    assert_int_equal(ec_model_retire(K.c, "m", 3, 0), 0);
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Prewarm of a lazily pulled version: every partition from the cluster. */
static void prewarm(ec_client *c, const char *version)
{
    ec_prewarm_progress p;
    int rc = ec_model_prewarm(c, "m", version, 0, &p);

    for (int i = 0; rc == 0 && !p.finished && i < 3000; i++) {
        usleep(10000);
        rc = ec_model_prewarm(c, "m", version, 0, &p);
    }
    if (rc || !p.finished || p.failed || p.done != p.partitions)
        fail_msg("prewarm of version %s: rc %d, %llu/%llu done, %llu failed: %s", version, rc,
                 (unsigned long long)p.done, (unsigned long long)p.partitions,
                 (unsigned long long)p.failed, ec_last_error());
}

static void test_cluster_down(void **state)
{
    const char *remote[] = {"--remote", url, NULL};
    uint64_t alloc, size;
    double t0;
    int rc;

    (void)state;
    /* Prewarmed from the cluster: resident, so served while it is down. */
    assert_int_equal(ec_model_evict(K.c, "m", "2", NULL), 0);
    prewarm(K.c, "2");
    /* K keeps nothing: only what is resident survives the cluster. */
    assert_int_equal(ec_model_evict(K.c, "m", "1", NULL), 0);
    assert_int_equal(gather(K.c, "1", "emb", 0, 16), 0);       /* partition 0 */
    assert_int_equal(gather(K.c, "1", "small", 0, 64), 0);
    disk_use(&K, &alloc, &size);
    assert_true(alloc < 256u << 10);

    assert_int_equal(ect_cluster_sh(&cl, "stop", NULL, NULL), 0);
    cl_running = false;

    t0 = mono_s();
    rc = gather(K.c, "1", "emb", 9 * 256, 4);
    if (rc != EC_ECONN || !strstr(ec_last_error(), "127.0.0.1"))
        fail_msg("a remote-only read with the cluster down: %s: %s", ec_strerror(rc),
                 ec_last_error());
    assert_true(mono_s() - t0 < 15.0);
    /* The pool fails fast now, whichever worker (and handle) takes the read. */
    for (int p = 10; p < 16; p++) {
        t0 = mono_s();
        expect_fail(gather(K.c, "1", "emb", p * 256, 4), EC_ECONN, "cluster");
        if (mono_s() - t0 > 1.5)
            fail_msg("partition %d: a read with the cluster known down took %.2f s", p,
                     mono_s() - t0);
    }
    assert_true(stat_of(K.c, "remote_errors") >= 2);
    /* Resident partitions are served. */
    assert_int_equal(gather(K.c, "1", "emb", 0, 16), 0);
    assert_int_equal(gather(K.c, "1", "small", 100, 64), 0);
    same_rows(A.c, K.c, "2", "wide", 8192);

    /* B kept everything: restarted, it serves every row from its files. */
    itest_daemon_down(&B);
    itest_daemon_up(&B, dir, "b", remote, true);
    same_rows(A.c, B.c, "1", "emb", 4096);
    same_rows(A.c, B.c, "1", "small", 1000);
    same_rows(A.c, B.c, "2", "wide", 8192);
    assert_int_equal(stat_of(B.c, "remote_reads"), 0);
    assert_int_equal(stat_of(B.c, "remote_errors"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lazy_pull_reads_remotely),
        cmocka_unit_test(test_keep_reserve),
        cmocka_unit_test(test_kept_partition_damaged_is_fetched_again),
        cmocka_unit_test(test_keep_max),
        cmocka_unit_test(test_reserve_removes_kept),
        cmocka_unit_test(test_rows_tensor_reads_remotely),
        cmocka_unit_test(test_no_remote_is_a_clear_error),
        cmocka_unit_test(test_corrupt_chunk_is_echecksum),
        cmocka_unit_test(test_view_of_remote_tensor),
        cmocka_unit_test(test_redirects_followed),
        cmocka_unit_test(test_unpublished_version_reads_fail),
        cmocka_unit_test(test_cluster_down),
    };

    if (!ect_redis_installed()) {
        fprintf(stderr, "test_remote_tier: redis-server or redis-cli is not installed; "
                        "skipped\n");
        return EC_TEST_SKIP;
    }
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
