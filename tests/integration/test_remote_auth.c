/*
 * test_remote_auth.c - a Redis Cluster that wants a password (requirepass
 * and masterauth on every node: tests/redis/cluster.sh with EC_RC_PASS) and
 * the remote tier's credentials (core/rcluster.c, --remote-auth-file).
 *
 *  - ec_rcluster_auth_load refuses a file others may read, one owned by
 *    someone else, a symlink, an empty or a three-word line, and never
 *    quotes the password in its messages; it takes "PASSWORD" and
 *    "USER PASSWORD" lines (CRLF too).
 *  - The cluster client: no password is EC_EPERM naming NOAUTH and
 *    --remote-auth-file; a wrong one EC_EPERM "refused our credentials",
 *    without the password in the message; the right one (alone, or with
 *    the user "default") reads and writes, and again after every
 *    connection was killed (AUTH on each new connection).
 *  - Daemons: A (--remote, --remote-auth-file) imports and publishes; B
 *    (the same, keeping nothing) pulls lazily and serves every row byte for
 *    byte from the cluster; C (--remote, no credentials) is refused with a
 *    message naming --remote-auth-file; a publish to the same cluster
 *    spelled another way gets no credentials from A (refused, NOAUTH); and
 *    `embcached --remote-auth-file F --check` refuses a mode-644 file.
 *  - Rotation: the cluster's password changed and every connection
 *    dropped; the old password is refused; a new file and SIGHUP, and the
 *    publisher and the lazy reader (its open handles too) use the new one.
 *
 * Every process is stopped by its pid. Exits 77 only when redis-server or
 * redis-cli is not installed.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "core/rcluster.h"
#include "itest.h"
#include "testutil.h"

#define NODES 6
#define PASS "rc-auth-pw-7"

static char *dir;
static ect_cluster cl = {.pipe = -1};
static char url[128], url_other[128], authf[600];

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd;

    unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

static int group_setup(void **state)
{
    int rc;

    (void)state;
    dir = ect_tmpdir("ec-rauth");
    setenv("EC_RC_PASS", PASS, 1);
    rc = ect_cluster_start_in(&cl, EC_TEST_CLUSTER_SH, dir, NODES, 2, url, sizeof(url));
    if (rc < 0)
        return -1;
    snprintf(url_other, sizeof(url_other), "redis-cluster://127.0.0.1:%d,127.0.0.1:%d",
             cl.base + 1, cl.base);
    snprintf(authf, sizeof(authf), "%s/redis.auth", dir);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    ect_cluster_stop(&cl); /* the watchdog's environment still has EC_RC_PASS */
    unsetenv("EC_RC_PASS");
    if (dir)
        ect_rmtree(dir);
    free(dir);
    return 0;
}

static void expect_fail(int rc, int want, const char *needle)
{
    if (rc != want || (needle && !strstr(ec_last_error(), needle)))
        fail_msg("expected %s with \"%s\", got %s: %s", ec_strerror(want),
                 needle ? needle : "", ec_strerror(rc), ec_last_error());
}

/* ------------------------------------------------------------------ */

static void test_auth_file_checks(void **state)
{
    char path[700], link[700];
    ec_rcluster_auth a;

    (void)state;
    snprintf(path, sizeof(path), "%s/f.auth", dir);
    write_file(path, "hunter2-secret\n", 0600);
    assert_int_equal(ec_rcluster_auth_load(path, &a), 0);
    assert_string_equal(a.user, "");
    assert_string_equal(a.password, "hunter2-secret");
    write_file(path, "svc hunter2-secret\r\nignored line\n", 0400);
    assert_int_equal(ec_rcluster_auth_load(path, &a), 0);
    assert_string_equal(a.user, "svc");
    assert_string_equal(a.password, "hunter2-secret");

    write_file(path, "hunter2-secret\n", 0644);
    expect_fail(ec_rcluster_auth_load(path, &a), EC_EPERM, "chmod 600");
    assert_null(strstr(ec_last_error(), "hunter2"));
    write_file(path, "hunter2-secret\n", 0620);
    expect_fail(ec_rcluster_auth_load(path, &a), EC_EPERM, "mode 0620");
    write_file(path, "\n", 0600);
    expect_fail(ec_rcluster_auth_load(path, &a), EC_EINVAL, "nothing");
    write_file(path, "a hunter2-secret c\n", 0600);
    expect_fail(ec_rcluster_auth_load(path, &a), EC_EINVAL, "more than two words");
    assert_null(strstr(ec_last_error(), "hunter2"));
    if (geteuid() == 0) { /* another owner: only root can make one */
        write_file(path, "hunter2-secret\n", 0600);
        assert_int_equal(chown(path, 12345, 12345), 0);
        expect_fail(ec_rcluster_auth_load(path, &a), EC_EPERM, "owned by uid 12345");
    }
    snprintf(link, sizeof(link), "%s/l.auth", dir);
    write_file(path, "hunter2-secret\n", 0600);
    assert_int_equal(symlink(path, link), 0);
    assert_true(ec_rcluster_auth_load(link, &a) < 0); /* O_NOFOLLOW */
    expect_fail(ec_rcluster_auth_load(dir, &a), EC_EINVAL, "not a regular file");
}

/* GET key k of c: its value, or fail. */
/* redis-cli ARGS... on every node, authenticated with pw; each must
 * succeed when `must`. */
static void on_nodes(bool must, const char *pw, const char *a1, const char *a2,
                     const char *a3, const char *a4)
{
    for (int i = 0; i < NODES; i++) {
        char port[16];
        const char *argv[] = {"/usr/bin/env", "redis-cli", "-p", port, a1, a2, a3, a4, NULL};
        int rc;
        snprintf(port, sizeof(port), "%d", cl.base + i);
        setenv("REDISCLI_AUTH", pw, 1);
        rc = ect_run(argv, NULL, NULL, NULL);
        unsetenv("REDISCLI_AUTH");
        if (must)
            assert_int_equal(rc, 0);
    }
}

static void on_every_node(const char *pw, const char *a1, const char *a2, const char *a3,
                          const char *a4)
{
    on_nodes(true, pw, a1, a2, a3, a4);
}

static void get_is(ec_rcluster *c, const char *key, const char *want)
{
    void *v = NULL;
    size_t vl = 0;

    if (ec_rcluster_get(c, key, strlen(key), &v, &vl) != 0)
        fail_msg("GET %s: %s", key, ec_last_error());
    assert_int_equal(vl, strlen(want));
    assert_memory_equal(v, want, vl);
    free(v);
}

static void test_client_auth(void **state)
{
    ec_rcluster_opts o = {.op_timeout_ms = 3000};
    ec_rcluster_stats st0, st1;
    ec_rcluster *c = NULL;
    char key[32], val[32];

    (void)state;
    /* No password: the cluster's NOAUTH, and what to do. */
    expect_fail(ec_rcluster_open(url, &o, &c), EC_EPERM, "NOAUTH");
    assert_non_null(strstr(ec_last_error(), "--remote-auth-file"));
    /* A wrong one: refused, and not quoted back. */
    snprintf(o.auth.password, sizeof(o.auth.password), "not-the-pw-41");
    expect_fail(ec_rcluster_open(url, &o, &c), EC_EPERM, "refused our credentials");
    assert_null(strstr(ec_last_error(), "not-the-pw-41"));
    /* The user "default" with the password, then the password alone. */
    snprintf(o.auth.user, sizeof(o.auth.user), "default");
    snprintf(o.auth.password, sizeof(o.auth.password), PASS);
    if (ec_rcluster_open(url, &o, &c) != 0)
        fail_msg("open with user and password: %s", ec_last_error());
    assert_int_equal(ec_rcluster_set(c, "auth:u", 6, "1", 1, NULL), 0);
    get_is(c, "auth:u", "1");
    ec_rcluster_close(c);
    o.auth.user[0] = '\0';
    if (ec_rcluster_open(url, &o, &c) != 0)
        fail_msg("open with the password: %s", ec_last_error());
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "auth:%d", i);
        snprintf(val, sizeof(val), "v%d", i);
        assert_int_equal(ec_rcluster_set(c, key, strlen(key), val, strlen(val), NULL), 0);
    }
    ec_rcluster_stats_get(c, &st0);
    /* Every connection killed: the next ones start with AUTH again. */
    on_every_node(PASS, "client", "kill", "type", "normal");
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "auth:%d", i);
        snprintf(val, sizeof(val), "v%d", i);
        get_is(c, key, val);
    }
    ec_rcluster_stats_get(c, &st1);
    assert_true(st1.connects > st0.connects);
    assert_int_equal(st1.errors, 0);
    ec_rcluster_close(c);
}

/* Daemon A (args), started with authf holding PASS, with a 2048 x 32 table
 * (seed) imported as m version 1 and published to its own cluster. */
static ec_client *publisher_up(const char *tmpl, const char *const *args, struct table *tb,
                               uint64_t seed)
{
    ec_client *a;
    ec_publish_result r;

    write_file(authf, PASS "\n", 0600);
    env_start(tmpl, args);
    a = connect_ok();
    table_make(tb, "src/emb.npy", 2048, 32, seed);
    import_npy(a, "m", 1, tb->path, 64u << 10);
    if (ec_model_publish(a, "m", "1", NULL, &r) != 0)
        fail_msg("publish through A's own cluster: %s", ec_last_error());
    return a;
}

/* Daemon `name` (args) up, with m version 1 pulled lazily from its cluster. */
static void reader_up(struct itest_daemon *d, const char *name, const char *const *args)
{
    itest_daemon_up(d, E.dir, name, args, true);
    if (ec_model_pull_flags(d->c, "m", "1", NULL, EC_PULL_LAZY, NULL) != 0)
        fail_msg("lazy pull on %s: %s", name, ec_last_error());
}

static void test_daemons_with_credentials(void **state)
{
    const char *with[] = {"--remote", url, "--remote-auth-file", authf, NULL};
    const char *nokeep[] = {"--remote", url, "--remote-auth-file", authf, "--remote-keep",
                            "false", NULL};
    const char *without[] = {"--remote", url, NULL};
    struct itest_daemon b, c;
    ec_client *a;
    ec_publish_result r;
    struct table tb;
    ec_tensor *t;

    (void)state;
    a = publisher_up("ec-rauth-d", with, &tb, 77);
    /* The same cluster spelled another way is another cluster to A: its
     * password is not sent there. */
    expect_fail(ec_model_publish(a, "m", "1", url_other, &r), EC_EPERM, "NOAUTH");

    reader_up(&b, "b", nokeep);
    t = resolve_ok(b.c, "m", "1", "emb");
    gather_all_ok(t, &tb);
    ec_tensor_release(t);
    assert_true(stat_of(b.c, "remote_bytes") >= 2048u * 128u);
    assert_int_equal(stat_of(b.c, "remote_errors"), 0);

    itest_daemon_up(&c, E.dir, "c", without, true);
    expect_fail(ec_model_pull_flags(c.c, "m", "1", NULL, EC_PULL_LAZY, NULL), EC_EPERM,
                "--remote-auth-file");

    /* A file others may read: the daemon does not start with it. */
    {
        char *out = NULL, *err = NULL;
        const char *argv[] = {EC_TEST_EMBCACHED, "--remote-auth-file", authf, "--check", NULL};
        write_file(authf, PASS "\n", 0644);
        assert_true(ect_run(argv, &out, NULL, &err) != 0);
        if (!err || !strstr(err, "chmod 600"))
            fail_msg("embcached --check with a mode-644 credentials file said: %s %s",
                     out ? out : "", err ? err : "");
        assert_null(strstr(err, PASS));
        free(out);
        free(err);
    }
    ec_client_close(b.c);
    ec_client_close(c.c);
    assert_int_equal(ect_daemon_stop(b.pid), 0); /* its exit status: a clean stop */
    assert_int_equal(ect_daemon_stop(c.pid), 0);
    ec_client_close(a);
    table_free(&tb);
}

/* The cluster's password rotated: every node's requirepass and masterauth
 * set to pw (authenticating with old), every client connection dropped. */
static void rotate(const char *old, const char *pw)
{
    on_every_node(old, "config", "set", "masterauth", pw);
    on_every_node(old, "config", "set", "requirepass", pw);
    on_every_node(pw, "client", "kill", "type", "normal");
}

static void hup_and_wait(pid_t pid, ec_client *c, uint64_t want)
{
    assert_int_equal(kill(pid, SIGHUP), 0);
    if (stat_wait(c, "config_reloads", want, 10) < want)
        fail_msg("config_reloads did not reach %llu after SIGHUP",
                 (unsigned long long)want);
}

/* The process default's credentials changed under an open handle (what a
 * reload does): its next connections use them, without reopening it. */
static void test_default_rotates(void **state)
{
    ec_rcluster_opts o = {.op_timeout_ms = 3000};
    ec_rcluster_auth a = {.password = PASS};
    ec_rcluster *c = NULL;

    (void)state;
    ec_rcluster_set_default_auth(url, &a);
    if (ec_rcluster_open(url, &o, &c) != 0)
        fail_msg("open with the default credentials: %s", ec_last_error());
    assert_int_equal(ec_rcluster_set(c, "rot:1", 5, "x", 1, NULL), 0);
    rotate(PASS, PASS "-new");
    expect_fail(ec_rcluster_set(c, "rot:1", 5, "y", 1, NULL), EC_EPERM,
                "refused our credentials");
    snprintf(a.password, sizeof(a.password), "%s", PASS "-new");
    ec_rcluster_set_default_auth(url, &a);
    on_every_node(PASS "-new", "client", "kill", "type", "normal");
    assert_int_equal(ec_rcluster_set(c, "rot:1", 5, "z", 1, NULL), 0);
    get_is(c, "rot:1", "z");
    ec_rcluster_close(c);
}

/* A password rotated while daemons serve: a new file and SIGHUP, and both
 * the publisher's new handles and the reader's open ones (its pool of
 * remote-tier connections) authenticate with the new password; before the
 * SIGHUP the old one is refused. */
static void test_rotation(void **state)
{
    char authf_b[640];
    const char *with[] = {"--remote", url, "--remote-auth-file", authf, NULL};
    /* One remote reader: the handle that read before the rotation is the
     * one that must read after it. */
    const char *b_args[] = {"--remote", url, "--remote-auth-file", authf_b, "--remote-keep",
                            "false", "--remote-threads", "1", NULL};
    struct itest_daemon b;
    ec_client *a;
    ec_publish_result r;
    struct table tb;
    ec_tensor *t;

    (void)state;
    snprintf(authf_b, sizeof(authf_b), "%s.b", authf);
    write_file(authf_b, PASS "\n", 0600);
    a = publisher_up("ec-rauth-r", with, &tb, 79);
    reader_up(&b, "b", b_args);
    t = resolve_ok(b.c, "m", "1", "emb");
    {
        int64_t ids[4] = {0, 1, 2, 3};
        uint8_t out[4 * 128];
        assert_int_equal(ec_tensor_gather(t, ids, 4, out, sizeof(out)), 0);
    }

    rotate(PASS, PASS "-new");
    /* The old password, on a new connection: refused. */
    expect_fail(ec_model_publish(a, "m", "1", NULL, &r), EC_EPERM, "refused our credentials");
    write_file(authf, PASS "-new\n", 0600);
    write_file(authf_b, "default " PASS "-new\n", 0600);
    hup_and_wait(E.daemon, a, 1);
    hup_and_wait(b.pid, b.c, 1);
    if (ec_model_publish(a, "m", "1", NULL, &r) != 0)
        fail_msg("publish after the rotation and SIGHUP: %s", ec_last_error());
    /* B's remote reads reconnect with the new password, byte for byte, and
     * at once: its open handles take it (not only new ones, after their
     * reads failed). */
    {
        uint64_t errs = stat_of(b.c, "remote_errors"), cf = stat_of(b.c, "remote_connect_failures");
        gather_all_ok(t, &tb);
        printf("after the rotation: remote_reads %llu, remote_errors +%llu, "
               "remote_connect_failures +%llu\n",
               (unsigned long long)stat_of(b.c, "remote_reads"),
               (unsigned long long)(stat_of(b.c, "remote_errors") - errs),
               (unsigned long long)(stat_of(b.c, "remote_connect_failures") - cf));
        assert_int_equal(stat_of(b.c, "remote_errors"), errs);
        assert_int_equal(stat_of(b.c, "remote_connect_failures"), cf);
    }
    assert_true(stat_of(b.c, "remote_bytes") >= 2048u * 128u);
    ec_tensor_release(t);

    ec_client_close(b.c);
    assert_int_equal(ect_daemon_stop(b.pid), 0);
    ec_client_close(a);
    table_free(&tb);
    unlink(authf_b);
}

/* Whatever a test left, the cluster's password is PASS again: the group
 * teardown stops the cluster with it. */
static int password_teardown(void **state)
{
    (void)state;
    on_nodes(false, PASS "-new", "config", "set", "masterauth", PASS);
    on_nodes(false, PASS "-new", "config", "set", "requirepass", PASS);
    ec_rcluster_set_default_auth(NULL, NULL);
    return 0;
}

static int rotation_teardown(void **state)
{
    password_teardown(state);
    return env_teardown(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auth_file_checks),
        cmocka_unit_test(test_client_auth),
        cmocka_unit_test_teardown(test_daemons_with_credentials, env_teardown),
        cmocka_unit_test_teardown(test_default_rotates, password_teardown),
        cmocka_unit_test_teardown(test_rotation, rotation_teardown),
    };

    if (!ect_redis_installed()) {
        fprintf(stderr, "test_remote_auth: redis-server or redis-cli is not installed; "
                        "skipped\n");
        return 77;
    }
    return cmocka_run_group_tests_name("remote_auth", tests, group_setup, group_teardown);
}
