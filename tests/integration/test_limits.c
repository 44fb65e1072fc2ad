/*
 * test_limits.c - what one client, or a daemon with many tensors, may cost
 * everyone else, against a real daemon:
 *
 *   - a client stopped while it holds views loses them after --pin-lease
 *     (before: its pins were held for as long as it stayed stopped), while a
 *     running client keeps its views however idle it is;
 *   - tensors past the descriptor limit still resolve and serve (before: two
 *     descriptors per tensor stayed open, and a 128-descriptor daemon failed
 *     at its 54th tensor (EMFILE));
 *   - names that do not exist are refused without a catalog query (before:
 *     every refusal queried the catalog, tens of microseconds of the
 *     daemon's only thread), and the answers kept for that follow every
 *     import, alias move and retire at once.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "itest.h"
#include "testutil.h"

#define ROWS 2048
#define COLS 16

/* A child that takes a view of (a, 1, a), reports on `up`, then waits for a
 * byte on `go` and exits 0 if ec_view_check() says `want` (and the view's
 * first row is still readable). Safe in children: no cmocka. */
static int view_holder(int up, int go, int want)
{
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    ec_view *v = NULL;
    char b = 0;
    int rc;

    if (ec_client_connect(E.sock, &c) || ec_tensor_resolve(c, "a", "1", "a", &t) ||
        ec_tensor_view(t, &v)) {
        fprintf(stderr, "view holder: %s\n", ec_last_error());
        return 2;
    }
    if (write(up, "r", 1) != 1 || read(go, &b, 1) != 1)
        return 3;
    rc = ec_view_check(v);
    if (rc != want) {
        fprintf(stderr, "view holder: ec_view_check returned %d, wanted %d (%s)\n", rc, want,
                ec_last_error());
        return 4;
    }
    if (rc == EC_ESTALE && !strstr(ec_last_error(), "pin-lease")) {
        fprintf(stderr, "view holder: the refusal does not say why: %s\n", ec_last_error());
        return 5;
    }
    ec_view_release(v);
    ec_tensor_release(t);
    ec_client_close(c);
    return 0;
}

static pid_t holder_start(int want, int *go_out)
{
    int up[2], go[2];
    pid_t pid;
    char b;

    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(go), 0);
    pid = spawn();
    if (pid == 0) {
        close(up[0]);
        close(go[1]);
        _exit(view_holder(up[1], go[0], want));
    }
    close(up[1]);
    close(go[0]);
    assert_int_equal(read(up[0], &b, 1), 1);
    close(up[0]);
    *go_out = go[1];
    return pid;
}

/* 1. Pins have a lease that only a stopped holder loses. */
static void test_pin_lease(void **state)
{
    static const char *const opts[] = {"--pin-lease", "1", NULL};
    struct table a;
    ec_client *c;
    pid_t stopped, idle;
    int go_stopped, go_idle;
    uint64_t released;

    (void)state;
    env_start("ec-limits", opts);
    table_make(&a, "a.npy", ROWS, COLS, 1);
    c = connect_ok();
    import_npy(c, "a", 1, a.path, 16 * 1024);

    stopped = holder_start(EC_ESTALE, &go_stopped);
    idle = holder_start(0, &go_idle);
    released = stat_of(c, "pins_released");
    assert_int_equal(stat_of(c, "pin_lease_revocations"), 0);

    assert_int_equal(kill(stopped, SIGSTOP), 0);
    /* The lease is 1 s and the daemon looks once per tick: a few seconds. */
    assert_int_equal(stat_wait(c, "pin_lease_revocations", 1, 15), 1);
    assert_true(stat_of(c, "pins_released") >= released + 1);
    /* The idle holder ran all along and held its view past the lease too. */
    sleep(2);
    assert_int_equal(stat_of(c, "pin_lease_revocations"), 1);

    assert_int_equal(kill(stopped, SIGCONT), 0);
    assert_int_equal(write(go_stopped, "g", 1), 1);
    assert_int_equal(write(go_idle, "g", 1), 1);
    assert_int_equal(reap(stopped), 0);
    assert_int_equal(reap(idle), 0);
    close(go_stopped);
    close(go_idle);

    daemon_alive();
    ec_client_close(c);
    table_free(&a);
}

/* With the lease off, a stopped holder keeps its view. */
static void test_pin_lease_off(void **state)
{
    static const char *const opts[] = {"--pin-lease", "0", NULL};
    struct table a;
    ec_client *c;
    pid_t stopped;
    int go;

    (void)state;
    env_start("ec-limits", opts);
    table_make(&a, "a.npy", ROWS, COLS, 1);
    c = connect_ok();
    import_npy(c, "a", 1, a.path, 16 * 1024);
    stopped = holder_start(0, &go);
    assert_int_equal(kill(stopped, SIGSTOP), 0);
    sleep(3);
    assert_int_equal(stat_of(c, "pin_lease_revocations"), 0);
    assert_int_equal(kill(stopped, SIGCONT), 0);
    assert_int_equal(write(go, "g", 1), 1);
    assert_int_equal(reap(stopped), 0);
    close(go);
    ec_client_close(c);
    table_free(&a);
}

/* 2. Names that do not exist cost no catalog query; answers follow every
 * change of the catalog. */
static void test_unknown_names(void **state)
{
    enum { N = 500 };
    struct table a, b;
    ec_client *c;
    ec_tensor *t;
    ec_tensor_info info;
    uint64_t q0, refused0;
    char name[64];

    (void)state;
    env_start("ec-limits", NULL);
    table_make(&a, "a.npy", ROWS, COLS, 1);
    table_make(&b, "v2/a.npy", ROWS, COLS, 2);
    c = connect_ok();
    import_npy(c, "a", 1, a.path, 16 * 1024);
    assert_int_equal(ec_model_alias(c, "a", "current", 1), 0);
    ec_tensor_release(resolve_ok(c, "a", "current", "a")); /* builds the filter */

    q0 = stat_of(c, "resolve_catalog_queries");
    refused0 = stat_of(c, "resolve_filter_refusals");
    for (int i = 0; i < N; i++) {
        static const char *const want[] = {"no tensor", "unknown model", "no version",
                                           "no alias"};
        char ver[32];
        int rc, k = i % 4;
        t = NULL;
        snprintf(name, sizeof(name), "nope%d", i);
        snprintf(ver, sizeof(ver), "%d", 1000 + i);
        rc = ec_tensor_resolve(c, k == 1 ? name : "a",
                               k == 2 ? ver : k == 3 ? name : "current",
                               k == 0 ? name : "a", &t);
        assert_int_equal(rc, EC_ENOENT);
        assert_null(t);
        if (!strstr(ec_last_error(), want[k]) ||
            (k != 2 && !strstr(ec_last_error(), name)))
            fail_msg("refusal %d says: %s", i, ec_last_error());
    }
    assert_int_equal(stat_of(c, "resolve_filter_refusals") - refused0, N);
    assert_int_equal(stat_of(c, "resolve_catalog_queries"), q0);

    /* Resolving the same known name again needs no query either. */
    for (int i = 0; i < 20; i++)
        ec_tensor_release(resolve_ok(c, "a", "current", "a"));
    assert_true(stat_of(c, "resolve_catalog_queries") <= q0 + 1);

    /* An import adds names at once; an alias move is followed at once. */
    import_npy(c, "a", 2, b.path, 16 * 1024);
    t = resolve_ok(c, "a", "2", "a");
    ec_tensor_release(t);
    t = resolve_ok(c, "a", "current", "a");
    assert_int_equal(ec_tensor_info_get(t, &info), 0);
    assert_int_equal(info.version, 1);
    ec_tensor_release(t);
    assert_int_equal(ec_model_alias(c, "a", "current", 2), 0);
    t = resolve_ok(c, "a", "current", "a");
    assert_int_equal(ec_tensor_info_get(t, &info), 0);
    assert_int_equal(info.version, 2);
    gather_all_ok(t, &b);
    ec_tensor_release(t);

    /* A retired version is gone at once, though it was answered before. */
    assert_int_equal(ec_model_alias(c, "a", "current", 1), 0);
    ec_tensor_release(resolve_ok(c, "a", "2", "a"));
    assert_int_equal(ec_model_retire(c, "a", 2, 0), 0);
    t = NULL;
    assert_int_equal(ec_tensor_resolve(c, "a", "2", "a", &t), EC_ENOENT);
    assert_null(t);
    daemon_alive();
    ec_client_close(c);
    table_free(&a);
    table_free(&b);
}

/* 3. More tensors than descriptors: the daemon keeps a bounded set of
 * partition files open and goes on serving. Runs last: it lowers this
 * process's hard descriptor limit for good (the daemon inherits it). */
static void test_many_tensors_few_fds(void **state)
{
    enum { NT = 150, BATCH = 50, FDS = 128 };
    struct rlimit rl = {FDS, FDS};
    static struct table tb[NT];
    ec_client *c, *more[16];
    ec_tensor *t;

    (void)state;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
    env_start("ec-limits", NULL);
    c = connect_ok();
    for (int i = 0; i < NT; i++) {
        char rel[32];
        snprintf(rel, sizeof(rel), "t/t%03d.npy", i);
        table_make(&tb[i], rel, 64, 4, (uint64_t)i + 7);
    }
    for (int i = 0; i < NT; i += BATCH) {
        const char *paths[BATCH];
        ec_import_opts o = {.model = "many", .version = 1 + i / BATCH, .round = -1};
        uint32_t n = 0;
        for (int k = 0; k < BATCH; k++)
            paths[k] = tb[i + k].path;
        if (ec_model_import(c, &o, paths, BATCH, &n))
            fail_msg("import of batch %d: %s", i / BATCH, ec_last_error());
        assert_int_equal(n, BATCH);
    }
    /* Two rounds over every tensor, everything evicted in between: the
     * second reopens what was closed for room, and reads it again. */
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < NT; i++) {
            char ver[16], name[16];
            snprintf(ver, sizeof(ver), "%d", 1 + i / BATCH);
            snprintf(name, sizeof(name), "t%03d", i);
            t = resolve_ok(c, "many", ver, name);
            gather_all_ok(t, &tb[i]);
            ec_tensor_release(t);
        }
        for (int v = 1; v <= NT / BATCH; v++) {
            char ver[16];
            snprintf(ver, sizeof(ver), "%d", v);
            assert_int_equal(ec_model_evict(c, "many", ver, NULL), 0);
        }
    }
    assert_true(stat_of(c, "files_closed_for_room") > 0);
    assert_true(stat_of(c, "files_open") <= FDS / 4);
    /* And the descriptors left over still take connections. */
    for (int i = 0; i < 16; i++)
        more[i] = connect_ok();
    for (int i = 0; i < 16; i++)
        ec_client_close(more[i]);
    daemon_alive();
    ec_client_close(c);
    for (int i = 0; i < NT; i++)
        table_free(&tb[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_pin_lease, env_teardown),
        cmocka_unit_test_teardown(test_pin_lease_off, env_teardown),
        cmocka_unit_test_teardown(test_unknown_names, env_teardown),
        cmocka_unit_test_teardown(test_many_tensors_few_fds, env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
