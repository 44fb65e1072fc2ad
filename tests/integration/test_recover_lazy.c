/*
 * test_recover_lazy.c - `embcache recover` of a version pulled lazily
 * (core/recover.c with ec_partfile_verify_present and ec_pull_lazy_match),
 * end to end: real daemons, the real CLI, a real local Redis Cluster (3
 * masters, 3 replicas, tests/redis/cluster.sh on free loopback ports).
 *
 * Daemon A imports a model version and publishes it; daemon B (--remote)
 * pulls it with --lazy and reads two partitions of one tensor (kept on its
 * disk), so its files are partly holes and partly data. B stops and its
 * catalog is destroyed. Then, in order:
 *   - recover without --remote leaves the version out, saying it was
 *     pulled lazily and to give --remote, and keeps its files (.skipped);
 *   - with a cluster that does not answer it stops and changes nothing;
 *   - a byte flipped in a partition that is on disk still fails validation
 *     (holes are not checked; data is);
 *   - a dry run with --remote reports the version as recoverable, pulled
 *     lazily, and changes nothing;
 *   - recover with the daemon's configuration file (--config: data-dir and
 *     remote from it) registers it as lazily pulled: B, restarted,
 *     serves every row equal to A's, reading from the cluster what its
 *     files do not hold;
 *   - once A publishes other data under the same number, recover with
 *     --remote leaves the version out, naming the partition whose checksum
 *     differs: rows of another version never fill the holes.
 *
 * The tests run in order and share the cluster and the daemons. Exits 77
 * (skipped) only when redis-server or redis-cli is not installed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/partfile.h"
#include "itest.h"
#include "testutil.h"

#define NODES 6

static char *dir;
static ect_cluster cl = {.pipe = -1};
static char url[128];
static struct itest_daemon A, B;

/* "emb": 4096 x 64 f32 in 64 KiB partitions (16), "small": 1000 x 8 f16. */
static const ect_st_tensor v1[] = {
    {.name = "emb", .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {4096, 64}, .seed = 41},
    {.name = "small", .dtype = EC_DTYPE_F16, .ndim = 2, .shape = {1000, 8}, .seed = 42},
};
/* The same shapes, other bytes: published later under the same number. */
static const ect_st_tensor v1_other[] = {
    {.name = "emb", .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {4096, 64}, .seed = 43},
    {.name = "small", .dtype = EC_DTYPE_F16, .ndim = 2, .shape = {1000, 8}, .seed = 44},
};

static const char *remote_opts[] = {"--remote", url, NULL};

static int group_setup(void **state)
{
    (void)state;
    dir = ect_tmpdir("ec-reclazy");
    if (ect_cluster_start_in(&cl, EC_TEST_CLUSTER_SH, dir, NODES, 2, url, sizeof(url)) < 0)
        return -1;
    itest_daemon_up(&A, dir, "a", NULL, true);
    itest_daemon_up(&B, dir, "b", remote_opts, true);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    itest_daemon_down(&A);
    itest_daemon_down(&B);
    ect_cluster_stop(&cl);
    if (dir)
        ect_rmtree(dir);
    free(dir);
    return 0;
}

/* ------------------------------------------------------------------ */

static void import_st(const char *name, const ect_st_tensor *t)
{
    char path[700];
    const char *paths[1] = {path};
    ec_import_opts o = {.model = "m", .version = 1, .round = 7, .partition_bytes = 64u << 10};
    uint32_t tensors = 0;

    snprintf(path, sizeof(path), "%s/%s.safetensors", dir, name);
    assert_int_equal(ect_write_safetensors(path, t, 2), 0);
    if (ec_model_import(A.c, &o, paths, 1, &tensors) != 0)
        fail_msg("import: %s", ec_last_error());
    assert_int_equal(tensors, 2);
}

/* Rows [first, first + n) of m/1/tensor from A and from B, last first:
 * equal bytes. */
static void same_rows(const char *tensor, uint64_t first, uint64_t n)
{
    int64_t *ids = malloc(n * sizeof(*ids));

    assert_non_null(ids);
    for (uint64_t i = 0; i < n; i++)
        ids[i] = (int64_t)(first + n - 1 - i);
    itest_same_ids(A.c, B.c, "m", "1", tensor, ids, n);
    free(ids);
}

/* `embcache recover --data-dir B [a1 [a2 [a3]]]`: exit status; the output
 * (stdout then stderr) in *out, malloc'd. */
static int recover(char **out, const char *a1, const char *a2, const char *a3)
{
    const char *argv[] = {EC_TEST_CLI, "recover", "--data-dir", B.data, a1, a2, a3, NULL};
    char *o = NULL, *e = NULL;
    int rc = ect_run(argv, &o, NULL, &e);

    print_message("embcache recover %s %s %s: exit %d\n%s%s", a1 ? a1 : "", a2 ? a2 : "",
                  a3 ? a3 : "", rc, o ? o : "", e ? e : "");
    assert_true(asprintf(out, "%s%s", o ? o : "", e ? e : "") >= 0);
    free(o);
    free(e);
    return rc;
}

static void contains(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("'%s' not found in:\n%s", needle, hay);
}

/* Files in B's parts/ whose names end in suffix. */
static int count_files(const char *suffix)
{
    char parts[700];
    struct dirent *de;
    DIR *d;
    int n = 0;

    snprintf(parts, sizeof(parts), "%s/parts", B.data);
    assert_non_null(d = opendir(parts));
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name), s = strlen(suffix);
        n += l > s && !strcmp(de->d_name + l - s, suffix);
    }
    closedir(d);
    return n;
}

/* Rename B's NAME.ecp.skipped back to NAME.ecp, as the report says to. */
static void unskip(void)
{
    char parts[700], from[1000], to[1000];
    struct dirent *de;
    DIR *d;

    snprintf(parts, sizeof(parts), "%s/parts", B.data);
    assert_non_null(d = opendir(parts));
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 9 || strcmp(de->d_name + l - 8, ".skipped"))
            continue;
        snprintf(from, sizeof(from), "%s/%s", parts, de->d_name);
        snprintf(to, sizeof(to), "%s/%.*s", parts, (int)(l - 8), de->d_name);
        assert_int_equal(rename(from, to), 0);
    }
    closedir(d);
    assert_int_equal(count_files(".skipped"), 0);
}

/* The path of B's file of m/1/tensor (by its origin record). */
static void file_of(const char *tensor, char *out, size_t cap, ec_partfile_meta *meta)
{
    itest_partfile_of(B.data, "m", 1, tensor, out, cap, meta);
}

/* B stopped, its catalog destroyed (truncated: SQLite cannot read it). */
static void lose_catalog(void)
{
    char path[700];

    itest_daemon_down(&B);
    snprintf(path, sizeof(path), "%s/catalog.db", B.data);
    assert_int_equal(truncate(path, 0), 0);
}

static off_t size_of(const char *name)
{
    char path[700];
    struct stat st;

    snprintf(path, sizeof(path), "%s/%s", B.data, name);
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

/* Catalogs recover moved aside in B's data directory. */
static int count_kept(void)
{
    struct dirent *de;
    DIR *d;
    int n = 0;

    assert_non_null(d = opendir(B.data));
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        n += !strncmp(de->d_name, "catalog.db.damaged-", 19) &&
             strcmp(de->d_name + l - 4, "-wal") && strcmp(de->d_name + l - 4, "-shm");
    }
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------ */

static void test_lazy_version_without_remote_is_kept_aside(void **state)
{
    ec_publish_result r;
    ec_partfile_meta meta;
    char path[1000], *out;
    struct stat st;

    (void)state;
    import_st("v1", v1);
    assert_int_equal(ec_model_publish(A.c, "m", "1", url, &r), 0);
    assert_int_equal(ec_model_pull_flags(B.c, "m", "1", NULL, EC_PULL_LAZY, &r), 0);
    /* Partitions 0 and 4 of emb are read, and kept on B's disk. */
    same_rows("emb", 0, 256);
    same_rows("emb", 1024, 256);
    assert_int_equal(stat_of(B.c, "remote_kept_bytes"), 2u * (64u << 10));
    lose_catalog();
    file_of("emb", path, sizeof(path), &meta);
    assert_int_equal(stat(path, &st), 0);
    if ((uint64_t)st.st_blocks * 512 >= meta.file_size)
        fail_msg("emb's file is not sparse (%llu of %llu bytes on disk)",
                 (unsigned long long)st.st_blocks * 512, (unsigned long long)meta.file_size);

    assert_int_equal(recover(&out, NULL, NULL, NULL), 8);
    contains(out, "pulled lazily (`embcache pull --lazy`)");
    contains(out, "run recover with --remote URL");
    contains(out, "recovered 0 version(s)");
    free(out);
    assert_int_equal(count_kept(), 1);
    assert_int_equal(count_files(".ecp.skipped"), 2);
    unskip();
}

static void test_unreachable_cluster_changes_nothing(void **state)
{
    char bad[64], *out;
    off_t cat = size_of("catalog.db");
    int kept = count_kept();

    (void)state;
    snprintf(bad, sizeof(bad), "redis-cluster://127.0.0.1:%u", ect_free_port());
    assert_int_equal(recover(&out, "--remote", bad, NULL), 3); /* not reachable */
    contains(out, "recover stopped and changed nothing");
    free(out);
    assert_int_equal(count_files(".skipped"), 0);
    assert_int_equal(count_files(".ecp"), 2);
    /* The catalog the run before made: not moved aside, not replaced. */
    assert_int_equal(size_of("catalog.db"), cat);
    assert_int_equal(count_kept(), kept);
}

static void test_damaged_local_partition_still_fails(void **state)
{
    ec_partfile_meta meta;
    char path[1000], *out;
    unsigned char b;
    int fd;

    (void)state;
    file_of("emb", path, sizeof(path), &meta);
    /* A byte of partition 4, which is on disk. */
    assert_true((fd = open(path, O_RDWR)) >= 0);
    assert_int_equal(pread(fd, &b, 1, (off_t)(meta.data_off + 4 * meta.stride + 100)), 1);
    b ^= 0x40;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)(meta.data_off + 4 * meta.stride + 100)), 1);
    assert_int_equal(recover(&out, "--remote", url, NULL), 8);
    contains(out, "FAILED VALIDATION");
    contains(out, "(partition 4)");
    free(out);
    b ^= 0x40;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)(meta.data_off + 4 * meta.stride + 100)), 1);
    close(fd);
    unskip();
}

static void test_dry_run_reports_lazy_version(void **state)
{
    char *out;
    off_t cat = size_of("catalog.db");

    (void)state;
    assert_int_equal(recover(&out, "--dry-run", "--remote", url), 0);
    contains(out, "m version 1: 2 tensor(s), round 7");
    /* emb: 14 partitions not read; small: its one. */
    contains(out, "pulled lazily: 15 partition(s) still only on the cluster");
    contains(out, "nothing was changed");
    free(out);
    assert_int_equal(count_files(".skipped"), 0);
    assert_int_equal(size_of("catalog.db"), cat);
}

static void test_recovered_lazy_version_serves_every_row(void **state)
{
    char conf[700], *out = NULL, *err = NULL;
    const char *argv[] = {EC_TEST_CLI, "recover", "--config", conf, NULL};
    uint64_t reads;
    FILE *f;
    int rc;

    (void)state;
    /* The data directory and the cluster from the daemon's configuration
     * file, as for the system service. */
    snprintf(conf, sizeof(conf), "%s/b.conf", dir);
    assert_non_null(f = fopen(conf, "w"));
    fprintf(f, "data-dir = %s\nremote = %s\n", B.data, url);
    assert_int_equal(fclose(f), 0);
    rc = ect_run(argv, &out, NULL, &err);
    print_message("embcache recover --config: exit %d\n%s%s", rc, out ? out : "",
                  err ? err : "");
    assert_int_equal(rc, 0);
    free(err);
    contains(out, "recovered 1 version(s) with 2 tensor(s)");
    contains(out, "1 of them pulled lazily: start embcached with --remote");
    free(out);
    assert_int_equal(count_files(".ecp"), 2);
    itest_daemon_up(&B, dir, "b", remote_opts, true);
    same_rows("emb", 0, 4096);
    same_rows("small", 0, 1000);
    reads = stat_of(B.c, "remote_reads");
    if (reads < 15)
        fail_msg("%llu remote reads: the holes were not filled from the cluster",
                 (unsigned long long)reads);
    assert_int_equal(stat_of(B.c, "remote_errors"), 0);
    assert_int_equal(stat_of(B.c, "remote_checksum_failures"), 0);
    assert_int_equal(stat_of(B.c, "remote_local_refetches"), 0);
}

static void test_version_published_again_is_refused(void **state)
{
    ec_publish_result r;
    char *out;

    (void)state;
    /* Fresh holes: the version pulled lazily again, one partition read. */
    assert_int_equal(ec_model_retire(B.c, "m", 1, 0), 0);
    assert_int_equal(ec_model_pull_flags(B.c, "m", "1", NULL, EC_PULL_LAZY, &r), 0);
    same_rows("emb", 0, 16);
    lose_catalog();
    /* Other bytes under the same number, same shapes. */
    assert_int_equal(ec_model_retire(A.c, "m", 1, 0), 0);
    import_st("v1-other", v1_other);
    assert_int_equal(ec_model_publish(A.c, "m", "1", url, &r), 0);
    assert_int_equal(recover(&out, "--remote", url, NULL), 8);
    contains(out, "is not the one these files were pulled from");
    contains(out, "has checksum");
    free(out);
    assert_int_equal(count_files(".ecp.skipped"), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lazy_version_without_remote_is_kept_aside),
        cmocka_unit_test(test_unreachable_cluster_changes_nothing),
        cmocka_unit_test(test_damaged_local_partition_still_fails),
        cmocka_unit_test(test_dry_run_reports_lazy_version),
        cmocka_unit_test(test_recovered_lazy_version_serves_every_row),
        cmocka_unit_test(test_version_published_again_is_refused),
    };

    if (!ect_redis_installed()) {
        fprintf(stderr, "test_recover_lazy: redis-server or redis-cli is not installed; "
                        "skipped\n");
        return EC_TEST_SKIP;
    }
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
