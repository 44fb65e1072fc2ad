/*
 * test_slab_size.c - how big the daemon makes each GPU's device-tier slab
 * (core/devtier.h, "Sizing"), against emulated GPUs whose memory the test
 * sets (EMBCACHE_EMU_GPU_MEM, EMBCACHE_EMU_GPU_USED; cuda/backend_emu.c):
 *  - by default 1/16 of the GPU, on every GPU;
 *  - never more than the segment's data area;
 *  - --gpu-slab as asked, cut to the GPU's free memory less the reserve of
 *    max(1 GiB, 1/16 of the GPU), or off when less than 64 MiB would be left;
 *  - --gpu-slab 0: off;
 *  - a backend that cannot say: the smaller of 1 GiB and the data area.
 * Each case reads the daemon's statistics and checks that its log says why.
 * One real embcached per case; runs anywhere (no GPU).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "integration/itest.h"
#include "testutil.h"

#define MiB (1ull << 20)

struct sized {
    uint64_t gpus, slab0, slab1, data;
    char *log; /* what the daemon logged while it started */
};

/* Start a daemon with args on emulated GPUs of `mem` bytes (NULL: the
 * emulator's default), `used` of them taken; read what it chose. */
static void start_sized(struct sized *r, const char *gpus, const char *mem, const char *used,
                        const char *const *args)
{
    char path[600];
    int fd, saved;
    ec_client *c;
    size_t len;

    setenv("EMBCACHE_BACKEND", "emu", 1);
    setenv("EMBCACHE_EMU_GPUS", gpus, 1);
    if (mem)
        setenv("EMBCACHE_EMU_GPU_MEM", mem, 1);
    else
        unsetenv("EMBCACHE_EMU_GPU_MEM");
    if (used)
        setenv("EMBCACHE_EMU_GPU_USED", used, 1);
    else
        unsetenv("EMBCACHE_EMU_GPU_USED");
    /* The daemon logs to stderr: catch what it says while it starts. */
    snprintf(path, sizeof(path), "/tmp/ec-slab-log-%d", (int)getpid());
    fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    fflush(stderr);
    saved = dup(2);
    dup2(fd, 2);
    env_start("ec-slab", args);
    dup2(saved, 2);
    close(saved);
    close(fd);
    c = connect_ok();
    r->gpus = stat_of(c, "device_tier_gpus");
    r->slab0 = r->gpus > 0 ? stat_of(c, "device0_slab_bytes") : 0;
    r->slab1 = r->gpus > 1 ? stat_of(c, "device1_slab_bytes") : 0;
    r->data = stat_of(c, "data_bytes");
    ec_client_close(c);
    {
        char *raw = ect_read_file(path, &len); /* not NUL-terminated */
        unlink(path);
        assert_non_null(raw);
        r->log = realloc(raw, len + 1);
        assert_non_null(r->log);
        r->log[len] = '\0';
    }
    fprintf(stderr, "%s", r->log); /* for the test's own output */
}

static void logged(const struct sized *r, const char *what)
{
    if (!strstr(r->log, what))
        fail_msg("the daemon's log does not say \"%s\":\n%s", what, r->log);
}

static int done(void **state)
{
    unsetenv("EMBCACHE_EMU_GPU_MEM");
    unsetenv("EMBCACHE_EMU_GPU_USED");
    return env_teardown(state);
}

/* 1/16 of each GPU by default. */
static void test_default_is_a_sixteenth(void **state)
{
    static const char *const args[] = {"--shm-size", "256M", NULL};
    struct sized r;

    (void)state;
    start_sized(&r, "2", "2G", NULL, args);
    assert_int_equal(r.gpus, 2);
    assert_int_equal(r.slab0, 128 * MiB);
    assert_int_equal(r.slab1, 128 * MiB);
    logged(&r, "GPU 0: device-tier slab of 128 MiB: the default: 1/16 of the GPU's 2048 MiB");
    logged(&r, "GPU 1: device-tier slab of 128 MiB");
    free(r.log);
}

/* No larger than the host tier's data area: the tier is inclusive. */
static void test_default_capped_by_the_data_area(void **state)
{
    static const char *const args[] = {"--shm-size", "64M", NULL};
    struct sized r;

    (void)state;
    start_sized(&r, "1", "141G", NULL, args);
    assert_int_equal(r.gpus, 1);
    assert_true(r.data > 0 && r.data < 64 * MiB);
    assert_int_equal(r.slab0, r.data / 4096 * 4096);
    logged(&r, "cut to the segment's data area");
    free(r.log);
}

/* A framework already holds most of the GPU: --gpu-slab is cut to what is
 * free less the reserve (1 GiB here: more than 1/16 of 2 GiB). */
static void test_asked_capped_by_free_memory(void **state)
{
    static const char *const args[] = {"--shm-size", "256M", "--gpu-slab", "200M", NULL};
    struct sized r;

    (void)state;
    start_sized(&r, "1", "2G", "900M", args);
    assert_int_equal(r.slab0, (2048 - 900 - 1024) * MiB);
    logged(&r, "as --gpu-slab asked, cut to the GPU's free 1148 MiB less 1024 MiB kept free");
    free(r.log);
}

/* Less than 64 MiB would be left: the GPU gets no tier; rows still come
 * from host memory. A smaller slab that fits is made as asked. */
static void test_no_room_leaves_the_tier_off(void **state)
{
    static const char *const big[] = {"--shm-size", "256M", "--gpu-slab", "200M", NULL};
    static const char *const small[] = {"--shm-size", "256M", "--gpu-slab", "4M", NULL};
    struct sized r;

    start_sized(&r, "1", "2G", "1000M", big);
    assert_int_equal(r.gpus, 0);
    logged(&r, "GPU 0: no device tier: 1048 MiB of its 2048 MiB are free and 1024 MiB stay free");
    free(r.log);
    done(state);

    start_sized(&r, "1", "2G", "1000M", small);
    assert_int_equal(r.slab0, 4 * MiB);
    logged(&r, "GPU 0: device-tier slab of 4 MiB: as --gpu-slab asked");
    free(r.log);
}

/* The larger GPUs: 1/16 of an H200 is 9024 MiB, kept under the data area;
 * the reserve is 1/16 of the GPU there. */
static void test_large_gpu_reserve(void **state)
{
    static const char *const args[] = {"--shm-size", "256M", "--gpu-slab", "1T", NULL};
    struct sized r;

    (void)state;
    /* 141 GiB, of which all but 9024 + 100 MiB are taken: 100 MiB left over
     * the reserve of 9024 MiB, less than the data area. */
    start_sized(&r, "1", "141G", "135260M", args);
    assert_int_equal(r.slab0, 100 * MiB);
    logged(&r, "less 9024 MiB kept free");
    free(r.log);
}

static void test_zero_turns_it_off(void **state)
{
    static const char *const args[] = {"--gpu-slab", "0", NULL};
    struct sized r;

    (void)state;
    start_sized(&r, "2", NULL, NULL, args);
    assert_int_equal(r.gpus, 0);
    logged(&r, "no device tier (--gpu-slab 0)");
    free(r.log);
}

/* The backend cannot tell: 1 GiB at most, and the data area. */
static void test_unknown_memory(void **state)
{
    static const char *const args[] = {"--shm-size", "64M", NULL};
    struct sized r;

    (void)state;
    start_sized(&r, "1", "junk", NULL, args);
    assert_int_equal(r.slab0, r.data / 4096 * 4096);
    logged(&r, "its free memory is unknown");
    free(r.log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_default_is_a_sixteenth, done),
        cmocka_unit_test_teardown(test_default_capped_by_the_data_area, done),
        cmocka_unit_test_teardown(test_asked_capped_by_free_memory, done),
        cmocka_unit_test_teardown(test_no_room_leaves_the_tier_off, done),
        cmocka_unit_test_teardown(test_large_gpu_reserve, done),
        cmocka_unit_test_teardown(test_zero_turns_it_off, done),
        cmocka_unit_test_teardown(test_unknown_memory, done),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
