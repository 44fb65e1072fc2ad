/*
 * test_baselines.c - the Redis and memcached baselines of embcache-bench
 * (hiredis MGET and pipeline, libmemcached, and our own ASCII multi-get and
 * meta clients) against real servers started by the baselines themselves,
 * on Unix sockets (and once each over TCP loopback): byte-exact gathers of
 * 1, 16, 256 and 4096 rows (random ids with duplicates) after loading 5000
 * rows of 512 bytes, a bad id, rows larger than memcached's default item
 * limit, the "program missing / could not run / exited early / never
 * listened" paths of bench/baseline_server.c, that the socket lives in the
 * server's private directory and goes with it, and that no server process
 * outlives close(), exit() or SIGINT. Prints a rough per-call latency of a
 * 256 x 512 B gather for each baseline and transport.
 *
 * A baseline whose program is not installed is skipped with its note; the
 * program exits 77 when nothing could run at all. Single process, except
 * the exit/SIGINT cases, which fork a client that dies with a server up.
 */
#include "baseline.h"
#include "baseline_server.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#ifdef EC_HAVE_REDIS
extern const ec_baseline_ops ec_baseline_redis_mget_ops;
extern const ec_baseline_ops ec_baseline_redis_pipeline_ops;
#endif
#ifdef EC_HAVE_MEMCACHED
extern const ec_baseline_ops ec_baseline_memcached_ops;
#endif
extern const ec_baseline_ops ec_baseline_memcached_get_ops;
extern const ec_baseline_ops ec_baseline_memcached_meta_ops;

#define ROWS 5000u
#define ROW_BYTES 512u
#define LAT_ITERS 300

typedef struct bl_case {
    const ec_baseline_ops *ops;
    const char *env;     /* the program override variable */
    const char *program; /* the program's name on PATH */
    ec_bl_transport transport;
} bl_case;

static unsigned char *source_rows;
static int cases_run;
/* The open handle of the running case, closed by the teardown when an
 * assertion ends the case early, so no server outlives it. */
static const ec_baseline_ops *open_ops;
static ec_baseline *open_handle;

static int close_open_handle(void **state)
{
    (void)state;
    if (open_handle != NULL)
        open_ops->close(open_handle);
    open_handle = NULL;
    return 0;
}

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static uint64_t rng_next(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Gone: no such process, or a zombie waiting for an init that does not
 * reap (containers). Polls up to 2 s for the kernel to finish the kill. */
static int process_gone(pid_t pid)
{
    for (int i = 0; i < 400; i++) {
        if (kill(pid, 0) != 0 && errno == ESRCH)
            return 1;
        char path[64], buf[256];
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) {
                buf[n] = '\0';
                const char *rp = strrchr(buf, ')');
                if (rp != NULL && rp[1] == ' ' && rp[2] == 'Z')
                    return 1;
            }
        }
        usleep(5000);
    }
    return 0;
}

static void clear_overrides(void)
{
    unsetenv("EC_BENCH_REDIS_SERVER");
    unsetenv("EC_BENCH_MEMCACHED");
    unsetenv("EC_BENCH_SERVER_START_TIMEOUT_MS");
    ec_bl_set_transport(EC_BL_UNIX);
}

/* Open, or skip the case when the program is missing. */
static ec_baseline *open_or_skip(const bl_case *c)
{
    char note[512] = "";
    ec_baseline *b = NULL;
    clear_overrides();
    ec_bl_set_transport(c->transport);
    if (c->ops->open(&b, note, sizeof note) != 0) {
        if (strstr(note, "not installed") != NULL) {
            printf("[ SKIP ] %s: %s\n", c->ops->name, note);
            return NULL;
        }
        fail_msg("%s: open failed: %s", c->ops->name, note);
    }
    return b;
}

static void random_ids(int64_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ids[i] = (int64_t)(rng_next() % ROWS);
    /* Duplicates at every size above 1: adjacent, far apart, and a run. */
    if (n >= 2)
        ids[n - 1] = ids[0];
    for (size_t i = 3; i < n; i += 7)
        ids[i] = ids[i / 3];
    if (n >= 16)
        ids[5] = ids[6] = ids[7] = ids[4];
}

static void check_rows(const char *name, const int64_t *ids, size_t n, const unsigned char *out)
{
    for (size_t i = 0; i < n; i++) {
        const unsigned char *want = source_rows + (size_t)ids[i] * ROW_BYTES;
        if (memcmp(out + i * ROW_BYTES, want, ROW_BYTES) != 0)
            fail_msg("%s: batch of %zu: position %zu (row %lld) differs from the source", name,
                     n, i, (long long)ids[i]);
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_roundtrip(void **state)
{
    const bl_case *c = *state;
    ec_baseline *b = open_or_skip(c);
    if (b == NULL) {
        skip();
        return;
    }
    cases_run++;
    open_ops = c->ops;
    open_handle = b;
    pid_t pid = ec_bl_server_last_pid();
    assert_true(pid > 0);
    assert_int_equal(kill(pid, 0), 0);

    assert_int_equal(c->ops->load(b, source_rows, ROWS, ROW_BYTES), 0);
    /* memcached may have restarted for its limits: follow the pid. */
    pid = ec_bl_server_last_pid();
    char desc[256] = "", sock[256] = "";
    c->ops->describe(b, desc, sizeof desc);
    printf("%s: %s\n", c->ops->name, desc);
    if (c->transport == EC_BL_UNIX) {
        /* the socket is in the server's private directory */
        const char *p = strstr(desc, "transport=unix:");
        assert_non_null(p);
        sscanf(p + 15, "%255s", sock);
        assert_non_null(strstr(sock, "/embcache-baseline-"));
        assert_int_equal(access(sock, F_OK), 0);
    } else {
        assert_non_null(strstr(desc, "transport=tcp:127.0.0.1:"));
    }

    static const size_t sizes[] = {1, 16, 256, 4096};
    int64_t *ids = malloc(4096 * sizeof *ids);
    unsigned char *out = malloc(4096 * (size_t)ROW_BYTES);
    assert_non_null(ids);
    assert_non_null(out);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        for (int rep = 0; rep < 3; rep++) {
            size_t n = sizes[s];
            random_ids(ids, n);
            memset(out, 0xA5, n * ROW_BYTES);
            assert_int_equal(c->ops->gather(b, ids, n, out), 0);
            check_rows(c->ops->name, ids, n, out);
        }
    }
    /* The first and last rows, and one id repeated through a whole batch. */
    ids[0] = 0;
    ids[1] = ROWS - 1;
    for (size_t i = 2; i < 64; i++)
        ids[i] = 7;
    assert_int_equal(c->ops->gather(b, ids, 64, out), 0);
    check_rows(c->ops->name, ids, 64, out);

    /* A bad id fails the call and leaves the handle usable. */
    fprintf(stderr, "(%s: an out-of-range id is expected to be reported next)\n", c->ops->name);
    ids[0] = 1;
    ids[1] = ROWS;
    assert_int_equal(c->ops->gather(b, ids, 2, out), -1);
    ids[1] = 2;
    assert_int_equal(c->ops->gather(b, ids, 2, out), 0);
    check_rows(c->ops->name, ids, 2, out);

    /* Rough latency of a 256 x 512 B gather. */
    uint64_t *lat = malloc(LAT_ITERS * sizeof *lat);
    assert_non_null(lat);
    uint64_t total = 0;
    for (int it = 0; it < LAT_ITERS; it++) {
        for (size_t i = 0; i < 256; i++)
            ids[i] = (int64_t)(rng_next() % ROWS);
        uint64_t t0 = now_ns();
        int rc = c->ops->gather(b, ids, 256, out);
        lat[it] = now_ns() - t0;
        assert_int_equal(rc, 0);
        total += lat[it];
    }
    qsort(lat, LAT_ITERS, sizeof *lat, cmp_u64);
    printf("latency baseline=%s transport=%s batch=256 row_bytes=%u rows=%u iters=%d "
           "mean_us=%.1f p50_us=%.1f p99_us=%.1f\n",
           c->ops->name, c->transport == EC_BL_UNIX ? "unix" : "tcp", ROW_BYTES, ROWS,
           LAT_ITERS, (double)total / LAT_ITERS / 1000.0,
           (double)lat[LAT_ITERS / 2] / 1000.0, (double)lat[LAT_ITERS * 99 / 100] / 1000.0);
    free(lat);
    free(ids);
    free(out);

    open_handle = NULL;
    c->ops->close(b);
    assert_int_equal(ec_bl_server_live_count(), 0);
    errno = 0;
    assert_int_equal(kill(pid, 0), -1);
    assert_int_equal(errno, ESRCH);
    if (sock[0] != '\0') /* gone with the server's directory */
        assert_int_equal(access(sock, F_OK), -1);
    ec_bl_set_transport(EC_BL_UNIX);
}

/* open() with the program override set to value fails with a note
 * containing want, and leaves no process behind. */
static void expect_open_fails(const bl_case *c, const char *value, const char *want)
{
    char note[512] = "";
    ec_baseline *b = NULL;
    pid_t before = ec_bl_server_last_pid();
    setenv(c->env, value, 1);
    int rc = c->ops->open(&b, note, sizeof note);
    unsetenv(c->env);
    printf("note (%s, %s=%s): %s\n", c->ops->name, c->env, value, note);
    assert_int_equal(rc, -1);
    assert_null(b);
    if (strstr(note, want) == NULL)
        fail_msg("note \"%s\" does not contain \"%s\"", note, want);
    assert_int_equal(ec_bl_server_live_count(), 0);
    pid_t pid = ec_bl_server_last_pid();
    if (pid != before)
        assert_true(process_gone(pid));
}

static void test_bogus_program(void **state)
{
    const bl_case *c = *state;
    clear_overrides();
    expect_open_fails(c, "/nonexistent/ec-bogus-server", "/nonexistent/ec-bogus-server");
    expect_open_fails(c, "ec-bogus-server-not-on-path", "ec-bogus-server-not-on-path");
}

/* An executable file the kernel cannot run: exec fails in the child and
 * the note says so, naming the path. */
static void test_exec_fails(void **state)
{
    const bl_case *c = *state;
    char dir[] = "/tmp/ec-test-baselines-XXXXXX";
    char script[64];
    clear_overrides();
    assert_non_null(mkdtemp(dir));
    snprintf(script, sizeof script, "%s/bad-interpreter", dir);
    FILE *f = fopen(script, "w");
    assert_non_null(f);
    fputs("#!/nonexistent/ec-no-such-interpreter\n", f);
    fclose(f);
    assert_int_equal(chmod(script, 0755), 0);
    char want[96];
    snprintf(want, sizeof want, "could not run %s (%s): ", c->program, script);
    expect_open_fails(c, script, want);
    unlink(script);
    rmdir(dir);
}

/* The program is not on PATH: the note says how to install it. */
static void test_not_installed(void **state)
{
    const bl_case *c = *state;
    char note[512] = "", want[128];
    ec_baseline *b = NULL;
    clear_overrides();
    const char *path = getenv("PATH");
    char *saved = path != NULL ? strdup(path) : NULL;
    setenv("PATH", "/nonexistent/ec-empty-path", 1);
    int rc = c->ops->open(&b, note, sizeof note);
    if (saved != NULL) {
        setenv("PATH", saved, 1);
        free(saved);
    }
    printf("note (%s, empty PATH): %s\n", c->ops->name, note);
    assert_int_equal(rc, -1);
    snprintf(want, sizeof want, "%s not installed: apt-get install %s", c->program, c->program);
    assert_string_equal(note, want);
}

/* Rows larger than the 1 MiB item limit memcached starts with: load
 * restarts it with a larger -I and every row still round-trips. */
static void test_memcached_large_rows(void **state)
{
    const bl_case *c = *state;
    ec_baseline *b = open_or_skip(c);
    if (b == NULL) {
        skip();
        return;
    }
    open_ops = c->ops;
    open_handle = b;
    pid_t first = ec_bl_server_last_pid();
    const size_t rows = 6, row_bytes = 1536 * 1024;
    unsigned char *data = malloc(rows * row_bytes);
    unsigned char *out = malloc(4 * row_bytes);
    assert_non_null(data);
    assert_non_null(out);
    for (size_t i = 0; i < rows * row_bytes; i += 8) {
        uint64_t v = rng_next();
        memcpy(data + i, &v, 8);
    }
    assert_int_equal(c->ops->load(b, data, rows, row_bytes), 0);
    pid_t second = ec_bl_server_last_pid();
    assert_true(second != first);
    assert_true(process_gone(first));
    const int64_t ids[4] = {5, 0, 5, 3};
    assert_int_equal(c->ops->gather(b, ids, 4, out), 0);
    for (size_t i = 0; i < 4; i++)
        assert_memory_equal(out + i * row_bytes, data + (size_t)ids[i] * row_bytes, row_bytes);
    free(data);
    free(out);
    open_handle = NULL;
    c->ops->close(b);
    assert_true(process_gone(second));
    assert_int_equal(ec_bl_server_live_count(), 0);
}

static void test_program_exits_early(void **state)
{
    const bl_case *c = *state;
    clear_overrides();
    if (access("/bin/false", X_OK) != 0)
        skip();
    expect_open_fails(c, "/bin/false", "exited with status 1 before listening on ");
}

/* A "server" that never listens and ignores SIGTERM: the start times out
 * and the stop has to escalate to SIGKILL. */
static void test_never_listens(void **state)
{
    const bl_case *c = *state;
    char dir[] = "/tmp/ec-test-baselines-XXXXXX";
    char script[64];
    clear_overrides();
    assert_non_null(mkdtemp(dir));
    snprintf(script, sizeof script, "%s/fake-server", dir);
    FILE *f = fopen(script, "w");
    assert_non_null(f);
    fputs("#!/bin/sh\ntrap '' TERM\nexec sleep 30\n", f);
    fclose(f);
    assert_int_equal(chmod(script, 0755), 0);

    setenv("EC_BENCH_SERVER_START_TIMEOUT_MS", "300", 1);
    uint64_t t0 = now_ns();
    char want[64];
    snprintf(want, sizeof want, "%s did not start listening on ",
             strcmp(c->env, "EC_BENCH_MEMCACHED") == 0 ? "memcached" : "redis-server");
    expect_open_fails(c, script, want);
    double s = (double)(now_ns() - t0) / 1e9;
    unsetenv("EC_BENCH_SERVER_START_TIMEOUT_MS");
    printf("never-listening server: open failed and the process was gone after %.2f s\n", s);
    assert_true(s >= 3.0); /* SIGTERM was ignored: SIGKILL after the 3 s grace */
    unlink(script);
    rmdir(dir);
}

/* A client process that dies with its server up (exit() without close, or
 * SIGINT) takes the server with it. */
static void die_with_server_up(const bl_case *c, int how)
{
    int pfd[2];
    clear_overrides();
    assert_int_equal(pipe(pfd), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        char note[512];
        ec_baseline *b = NULL;
        close(pfd[0]);
        pid_t server = 0;
        if (c->ops->open(&b, note, sizeof note) == 0)
            server = ec_bl_server_last_pid();
        if (write(pfd[1], &server, sizeof server) != (ssize_t)sizeof server)
            _exit(3);
        if (server == 0)
            _exit(2);
        if (how == SIGINT)
            raise(SIGINT);
        exit(0); /* atexit cleanup, no close() */
    }
    close(pfd[1]);
    pid_t server = 0;
    ssize_t n = read(pfd[0], &server, sizeof server);
    close(pfd[0]);
    int status;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_int_equal(n, (ssize_t)sizeof server);
    if (server == 0) {
        skip(); /* not installed: the roundtrip case said so */
        return;
    }
    if (how == SIGINT)
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT);
    else
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(process_gone(server));
}

static void test_exit_kills_server(void **state)
{
    die_with_server_up(*state, 0);
}

static void test_sigint_kills_server(void **state)
{
    die_with_server_up(*state, SIGINT);
}

static void test_free_port(void **state)
{
    (void)state;
    int a = 0;
    assert_int_equal(ec_bl_free_port(&a), 0);
    assert_true(a > 0 && a < 65536);
    char key[EC_BL_KEY_MAX];
    assert_int_equal(ec_bl_format_key(key, 0), 3);
    assert_memory_equal(key, "r:0", 3);
    assert_int_equal(ec_bl_format_key(key, UINT64_MAX), 22);
    assert_memory_equal(key, "r:18446744073709551615", 22);
}

#ifdef EC_HAVE_REDIS
static bl_case redis_mget = {NULL, "EC_BENCH_REDIS_SERVER", "redis-server", EC_BL_UNIX};
static bl_case redis_pipeline = {NULL, "EC_BENCH_REDIS_SERVER", "redis-server", EC_BL_UNIX};
static bl_case redis_mget_tcp = {NULL, "EC_BENCH_REDIS_SERVER", "redis-server", EC_BL_TCP};
#endif
#ifdef EC_HAVE_MEMCACHED
static bl_case memcached_case = {NULL, "EC_BENCH_MEMCACHED", "memcached", EC_BL_UNIX};
static bl_case memcached_tcp = {NULL, "EC_BENCH_MEMCACHED", "memcached", EC_BL_TCP};
#endif
static bl_case mc_get = {NULL, "EC_BENCH_MEMCACHED", "memcached", EC_BL_UNIX};
static bl_case mc_meta = {NULL, "EC_BENCH_MEMCACHED", "memcached", EC_BL_UNIX};
static bl_case mc_meta_tcp = {NULL, "EC_BENCH_MEMCACHED", "memcached", EC_BL_TCP};

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    source_rows = malloc((size_t)ROWS * ROW_BYTES);
    if (source_rows == NULL)
        return 1;
    for (size_t i = 0; i < (size_t)ROWS * ROW_BYTES; i += 8) {
        uint64_t v = rng_next();
        memcpy(source_rows + i, &v, 8);
    }
#ifdef EC_HAVE_REDIS
    redis_mget.ops = &ec_baseline_redis_mget_ops;
    redis_pipeline.ops = &ec_baseline_redis_pipeline_ops;
#endif
#ifdef EC_HAVE_REDIS
    redis_mget_tcp.ops = &ec_baseline_redis_mget_ops;
#endif
#ifdef EC_HAVE_MEMCACHED
    memcached_case.ops = &ec_baseline_memcached_ops;
    memcached_tcp.ops = &ec_baseline_memcached_ops;
#endif
    mc_get.ops = &ec_baseline_memcached_get_ops;
    mc_meta.ops = &ec_baseline_memcached_meta_ops;
    mc_meta_tcp.ops = &ec_baseline_memcached_meta_ops;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_free_port),
#ifdef EC_HAVE_REDIS
        cmocka_unit_test_prestate_setup_teardown(test_roundtrip, NULL, close_open_handle, &redis_mget),
        cmocka_unit_test_prestate_setup_teardown(test_roundtrip, NULL, close_open_handle, &redis_pipeline),
        cmocka_unit_test_prestate_setup_teardown(test_roundtrip, NULL, close_open_handle, &redis_mget_tcp),
        cmocka_unit_test_prestate(test_bogus_program, &redis_mget),
        cmocka_unit_test_prestate(test_exec_fails, &redis_mget),
        cmocka_unit_test_prestate(test_not_installed, &redis_mget),
        cmocka_unit_test_prestate(test_program_exits_early, &redis_mget),
        cmocka_unit_test_prestate(test_never_listens, &redis_mget),
        cmocka_unit_test_prestate(test_exit_kills_server, &redis_mget),
        cmocka_unit_test_prestate(test_sigint_kills_server, &redis_pipeline),
#endif
#ifdef EC_HAVE_MEMCACHED
        cmocka_unit_test_prestate_setup_teardown(test_roundtrip, NULL, close_open_handle, &memcached_case),
        cmocka_unit_test_prestate_setup_teardown(test_roundtrip, NULL, close_open_handle, &memcached_tcp),
        cmocka_unit_test_prestate(test_bogus_program, &memcached_case),
        cmocka_unit_test_prestate(test_exec_fails, &memcached_case),
        cmocka_unit_test_prestate(test_not_installed, &memcached_case),
        cmocka_unit_test_prestate(test_program_exits_early, &memcached_case),
        cmocka_unit_test_prestate_setup_teardown(test_memcached_large_rows, NULL,
                                                 close_open_handle, &memcached_case),
        cmocka_unit_test_prestate(test_exit_kills_server, &memcached_case),
        cmocka_unit_test_prestate(test_sigint_kills_server, &memcached_case),
#endif
        cmocka_unit_test_prestate_setup_teardown(test_roundtrip, NULL, close_open_handle, &mc_get),
        cmocka_unit_test_prestate_setup_teardown(test_roundtrip, NULL, close_open_handle, &mc_meta),
        cmocka_unit_test_prestate_setup_teardown(test_roundtrip, NULL, close_open_handle, &mc_meta_tcp),
        cmocka_unit_test_prestate_setup_teardown(test_memcached_large_rows, NULL,
                                                 close_open_handle, &mc_get),
        cmocka_unit_test_prestate_setup_teardown(test_memcached_large_rows, NULL,
                                                 close_open_handle, &mc_meta),
        cmocka_unit_test_prestate(test_program_exits_early, &mc_meta),
        cmocka_unit_test_prestate(test_exit_kills_server, &mc_get),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    free(source_rows);
    if (failed == 0 && cases_run == 0) {
        printf("test_baselines: no server program installed: skipped\n");
        return 77;
    }
    return failed == 0 ? 0 : 1;
}
