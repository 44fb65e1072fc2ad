/*
 * test_rpool.c - the remote tier's worker threads (core/rpool.c) against a
 * local Redis Cluster (tests/redis/cluster.sh): every job comes back once,
 * with its own result; a cluster nobody serves fails jobs at once with a
 * message that names it, and retries no sooner than the reopen interval;
 * closing with jobs queued hands each back. Skipped (77) without
 * redis-server.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "core/rpool.h"
#include "testutil.h"

static ect_cluster cl;
static char *dir;
static char url[128];

struct tjob {
    ec_rjob j;
    unsigned i;
    int done;
    char got[64];
};

static void set_get(ec_rjob *j, ec_rcluster *rc)
{
    struct tjob *t = (struct tjob *)j;
    char key[32], val[32];
    void *v = NULL;
    size_t len = 0;

    snprintf(key, sizeof(key), "rpool:%u", t->i);
    snprintf(val, sizeof(val), "value %u", t->i * 7u);
    j->rc = ec_rcluster_set(rc, key, strlen(key), val, strlen(val), NULL);
    if (j->rc == 0)
        j->rc = ec_rcluster_get(rc, key, strlen(key), &v, &len);
    if (j->rc) {
        snprintf(j->msg, sizeof(j->msg), "%s", ec_last_error());
        return;
    }
    snprintf(t->got, sizeof(t->got), "%.*s", (int)len, (char *)v);
    free(v);
}

static void count_done(ec_rjob *j) { ((struct tjob *)j)->done++; }

/* Reap until nothing is pending (or 30 s). */
static void drain(ec_rpool *p)
{
    time_t end = time(NULL) + 30;
    while (ec_rpool_pending(p) && time(NULL) < end) {
        struct pollfd pfd = {.fd = ec_rpool_event_fd(p), .events = POLLIN};
        poll(&pfd, 1, 100);
        ec_rpool_reap(p);
    }
    assert_int_equal(ec_rpool_pending(p), 0);
}

static void test_jobs_round_trip(void **state)
{
    enum { N = 200 };
    struct tjob *t = calloc(N, sizeof(*t));
    ec_rpool_config cfg = {.url = url, .threads = 3, .name = "test"};
    ec_rpool *p = NULL;
    ec_rcluster_stats st;
    uint64_t of = 1;

    (void)state;
    assert_non_null(t);
    assert_int_equal(ec_rpool_open(&cfg, &p), 0);
    for (unsigned i = 0; i < N; i++) {
        t[i].i = i;
        t[i].j.run = set_get;
        t[i].j.done = count_done;
        ec_rpool_submit(p, &t[i].j);
    }
    drain(p);
    for (unsigned i = 0; i < N; i++) {
        char want[32];
        snprintf(want, sizeof(want), "value %u", i * 7u);
        if (t[i].j.rc)
            fail_msg("job %u: %d %s", i, t[i].j.rc, t[i].j.msg);
        assert_int_equal(t[i].done, 1);
        assert_string_equal(t[i].got, want);
    }
    ec_rpool_stats(p, &st, &of);
    assert_true(st.commands >= 2 * N);
    assert_true(st.connects >= 1);
    assert_int_equal(of, 0);
    ec_rpool_close(p);
    free(t);
}

static void test_unreachable_fails_fast(void **state)
{
    enum { N = 20 };
    struct tjob t[N];
    char dead[64];
    ec_rpool_config cfg = {.url = dead, .threads = 2, .reopen_ms = 60000, .name = "test"};
    ec_rpool *p = NULL;
    uint64_t of = 0;
    ec_rcluster_stats st;
    struct timespec a, b;

    (void)state;
    snprintf(dead, sizeof(dead), "redis-cluster://127.0.0.1:%u", ect_free_port());
    memset(t, 0, sizeof(t));
    assert_int_equal(ec_rpool_open(&cfg, &p), 0);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (unsigned i = 0; i < N; i++) {
        t[i].i = i;
        t[i].j.run = set_get;
        t[i].j.done = count_done;
        ec_rpool_submit(p, &t[i].j);
    }
    drain(p);
    clock_gettime(CLOCK_MONOTONIC, &b);
    for (unsigned i = 0; i < N; i++) {
        assert_int_equal(t[i].done, 1);
        assert_int_equal(t[i].j.rc, EC_ECONN);
        if (!strstr(t[i].j.msg, dead + strlen("redis-cluster://")) ||
            !strstr(t[i].j.msg, "cannot be reached"))
            fail_msg("job %u: message does not name the cluster: %s", i, t[i].j.msg);
    }
    /* one failed open per worker within the reopen interval, not one per job */
    ec_rpool_stats(p, &st, &of);
    assert_true(of >= 1 && of <= 2);
    assert_true((b.tv_sec - a.tv_sec) < 20);
    ec_rpool_close(p);
}

static void never(ec_rjob *j, ec_rcluster *rc)
{
    (void)rc;
    usleep(200000);
    j->rc = 0;
}

static void test_close_hands_back_queued(void **state)
{
    enum { N = 50 };
    struct tjob t[N];
    ec_rpool_config cfg = {.url = url, .threads = 1, .name = "test"};
    ec_rpool *p = NULL;
    unsigned failed = 0;

    (void)state;
    memset(t, 0, sizeof(t));
    assert_int_equal(ec_rpool_open(&cfg, &p), 0);
    for (unsigned i = 0; i < N; i++) {
        t[i].j.run = never;
        t[i].j.done = count_done;
        ec_rpool_submit(p, &t[i].j);
    }
    ec_rpool_close(p); /* one runs (200 ms) at most; the rest fail */
    for (unsigned i = 0; i < N; i++) {
        assert_int_equal(t[i].done, 1);
        if (t[i].j.rc) {
            assert_int_equal(t[i].j.rc, EC_ECONN);
            assert_non_null(strstr(t[i].j.msg, "shutting down"));
            failed++;
        }
    }
    assert_true(failed >= N - 2);
}

static void test_bad_url(void **state)
{
    ec_rpool_config cfg = {.url = "redis-cluster://nohostport", .name = "test"};
    ec_rpool *p = (ec_rpool *)0x1;

    (void)state;
    assert_int_equal(ec_rpool_open(&cfg, &p), EC_EINVAL);
    assert_ptr_equal(p, (ec_rpool *)0x1);
    cfg.url = NULL;
    assert_int_equal(ec_rpool_open(&cfg, &p), EC_EINVAL);
}

static int group_setup(void **state)
{
    (void)state;
    dir = ect_tmpdir("ec-rpool");
    if (ect_cluster_start_in(&cl, EC_TEST_CLUSTER_SH, dir, 3, 1, url, sizeof(url)) < 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    ect_cluster_stop(&cl);
    if (dir)
        ect_rmtree(dir);
    free(dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_url),
        cmocka_unit_test(test_jobs_round_trip),
        cmocka_unit_test(test_unreachable_fails_fast),
        cmocka_unit_test(test_close_hands_back_queued),
    };
    signal(SIGPIPE, SIG_IGN);
    if (!ect_redis_installed()) {
        printf("test_rpool: redis-server or redis-cli not installed: skipped "
               "(apt-get install redis-server redis-tools)\n");
        return EC_TEST_SKIP;
    }
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
