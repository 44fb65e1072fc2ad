/*
 * test_hardening.c - hostile or careless peers against a real daemon: a
 * client used in a fork() child, a flood of connections from one uid, and
 * connections from a uid the daemon does not admit. Each case failed before
 * its fix (crossed replies; every slot taken by one client; refused uids
 * holding slots).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <sqlite3.h>

#include "itest.h"
#include "testutil.h"

#define ROWS 2048
#define COLS 16

static int raw_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

    if (strlen(path) >= sizeof(sa.sun_path)) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* 1. A client connected before fork() is the parent's: a child that uses it
 * gets a clear error (never the parent's replies, never a wrong handle),
 * while the parent keeps working; a client the child connects itself
 * works. */
static void test_fork_child_refused(void **state)
{
    enum { KIDS = 20, TRIES = 50 };
    struct table a, b;
    ec_client *c;
    ec_tensor *t;

    (void)state;
    env_start("ec-hard", NULL);
    table_make(&a, "a.npy", ROWS, COLS, 1);
    table_make(&b, "b.npy", ROWS, COLS * 2, 2);
    c = connect_ok();
    import_npy(c, "a", 1, a.path, 64 * 1024);
    import_npy(c, "b", 1, b.path, 64 * 1024);
    t = resolve_ok(c, "a", "1", "a");
    for (int k = 0; k < KIDS; k++) {
        if (spawn() == 0) {
            int bad = 0;
            for (int i = 0; i < TRIES; i++) {
                ec_tensor *u = NULL;
                int rc = ec_tensor_resolve(c, "b", "1", "b", &u);
                if (rc != EC_EINVAL || !strstr(ec_last_error(), "fork")) {
                    fprintf(stderr, "child: resolve returned %d (%s)\n", rc, ec_last_error());
                    bad++;
                }
                if (u)
                    ec_tensor_release(u);
            }
            /* its own client works */
            {
                ec_client *own;
                ec_tensor *u;
                if (ec_client_connect(E.sock, &own) ||
                    ec_tensor_resolve(own, "b", "1", "b", &u))
                    _exit(3);
                {
                    static uint8_t buf[3 * COLS * 2 * 4];
                    if (gather_check(u, (const int64_t[]){0, 7, ROWS - 1}, 3, &b, buf,
                                     sizeof(buf)))
                        _exit(4);
                }
                ec_tensor_release(u);
                ec_client_close(own);
            }
            _exit(bad ? 2 : 0);
        }
    }
    /* The parent resolves and gathers meanwhile, and always gets its own. */
    for (int i = 0; i < 200; i++) {
        ec_tensor *u = resolve_ok(c, "a", "1", "a");
        ec_tensor_info info;
        ec_tensor_info_get(u, &info);
        assert_int_equal(info.shape[1], COLS);
        ec_tensor_release(u);
    }
    gather_all_ok(t, &a);
    for (int k = 0; k < E.nkids; k++)
        assert_int_equal(reap(E.kids[k]), 0);
    ec_tensor_release(t);
    ec_client_close(c);
    table_free(&a);
    table_free(&b);
}

/* 2. One uid cannot take every connection slot: past its share, it is
 * refused with a message, and clients already connected (its own
 * included) and clients of other uids keep being served. */
static void test_connection_slots(void **state)
{
    static const char *const args[] = {"--max-clients", "64", "--max-clients-per-uid", "16",
                                       "--allow-uid", "65534", NULL};
    enum { FLOOD = 200 };
    int fds[FLOOD], held = 0;
    struct table a;
    ec_client *c, *c2;
    ec_tensor *t;

    (void)state;
    env_start("ec-hard", args);
    table_make(&a, "a.npy", ROWS, COLS, 3);
    c = connect_ok();
    import_npy(c, "a", 1, a.path, 64 * 1024);
    t = resolve_ok(c, "a", "1", "a");
    for (int i = 0; i < FLOOD; i++)
        fds[i] = raw_connect(E.sock);
    usleep(300000);
    /* the daemon has closed what it refused: count what it kept */
    for (int i = 0; i < FLOOD; i++) {
        char b;
        if (fds[i] < 0)
            continue;
        if (recv(fds[i], &b, 1, MSG_DONTWAIT | MSG_PEEK) < 0 && errno == EAGAIN)
            held++;
    }
    printf("a flood of %d connections from one uid: %d held (limit 16 per uid, 64 in all)\n",
           FLOOD, held);
    assert_true(held <= 16);
    assert_true(stat_of(c, "connections_rejected_uid_limit") >= FLOOD - 16);
    /* the connected client is still served */
    gather_all_ok(t, &a);
    /* a new client of the flooding uid is refused with a message that says why */
    assert_int_equal(ec_client_connect(E.sock, &c2), EC_EBUSY);
    assert_non_null(strstr(ec_last_error(), "max-clients-per-uid"));
    /* another uid still gets in */
    if (geteuid() == 0) {
        pid_t pid;
        assert_int_equal(chmod(E.dir, 0755), 0);
        if ((pid = spawn()) == 0) {
            ec_client *o;
            if (setgid(65534) || setuid(65534))
                _exit(5);
            if (ec_client_connect(E.sock, &o)) {
                fprintf(stderr, "uid 65534: %s\n", ec_last_error());
                _exit(6);
            }
            ec_client_close(o);
            _exit(0);
        }
        assert_int_equal(reap(pid), 0);
    } else {
        printf("not root: the other-uid part needs setuid; it did not run\n");
    }
    for (int i = 0; i < FLOOD; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    ec_tensor_release(t);
    ec_client_close(c);
    table_free(&a);
}

/* 3. A uid the daemon does not admit (65533) never holds a slot: its connections
 * are refused at once (with a message), so a flood of them does not lock
 * admitted clients out. */
static void test_refused_uid_holds_nothing(void **state)
{
    /* --allow-uid makes the socket reachable for every uid, as in a
     * deployment that admits some */
    static const char *const args[] = {"--max-clients", "32", "--allow-uid", "65534", NULL};
    ec_client *c;
    pid_t pid;
    int p[2];

    (void)state;
    if (geteuid() != 0) {
        printf("not root: cannot act as another uid (setuid); skipped\n");
        skip();
    }
    env_start("ec-hard", args);
    assert_int_equal(chmod(E.dir, 0755), 0);
    assert_int_equal(pipe(p), 0);
    if ((pid = spawn()) == 0) {
        static int fds[500];
        int n = 0, refused = 0;
        char ok = 1;
        if (setgid(65533) || setuid(65533))
            _exit(5);
        for (int i = 0; i < 500; i++)
            if ((fds[n] = raw_connect(E.sock)) >= 0)
                n++;
        usleep(300000);
        for (int i = 0; i < n; i++) {
            char buf[512];
            ssize_t r = recv(fds[i], buf, sizeof(buf), MSG_DONTWAIT);
            refused += r > 0 || r == 0; /* an error message, or closed */
        }
        if (write(p[1], &ok, 1) != 1)
            _exit(7);
        pause(); /* hold them while the parent connects */
        (void)refused;
        _exit(0);
    }
    {
        char ok;
        assert_int_equal(read(p[0], &ok, 1), 1);
    }
    c = connect_ok();
    assert_true(stat_of(c, "connections_rejected_uid") >= 400);
    ec_client_close(c);
    close(p[0]);
    close(p[1]);
}

/* 4. Someone else's socket in the daemon's place: a client refuses a
 * listener that runs as a uid it does not trust (unless told to), and a
 * daemon refuses a default socket directory another user created. */
static void test_socket_squatted(void **state)
{
    char *dir, fake[600], def[64];
    ec_client *c = NULL;
    pid_t pid;
    int p[2];

    (void)state;
    if (geteuid() != 0) {
        printf("not root: cannot act as another uid (setuid); skipped\n");
        skip();
    }
    dir = ect_tmpdir("ec-hard");
    assert_int_equal(chmod(dir, 01777), 0);
    snprintf(fake, sizeof(fake), "%s/embcached.sock", dir);
    assert_int_equal(pipe(p), 0);
    if ((pid = fork()) == 0) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd, cfd;
        char ok = 1;
        if (setgid(65534) || setuid(65534))
            _exit(5);
        fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
        if (strlen(fake) >= sizeof(sa.sun_path))
            _exit(8);
        memcpy(sa.sun_path, fake, strlen(fake) + 1);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 8))
            _exit(6);
        chmod(fake, 0666);
        if (write(p[1], &ok, 1) != 1)
            _exit(7);
        for (int i = 0; i < 2 && (cfd = accept(fd, NULL, NULL)) >= 0; i++)
            close(cfd); /* a squatter that says nothing */
        _exit(0);
    }
    {
        char ok;
        assert_int_equal(read(p[0], &ok, 1), 1);
    }
    unsetenv("EMBCACHE_DAEMON_UID");
    assert_int_equal(ec_client_connect(fake, &c), EC_EPERM);
    assert_non_null(strstr(ec_last_error(), "runs as uid 65534"));
    assert_non_null(strstr(ec_last_error(), "EMBCACHE_DAEMON_UID=65534"));
    /* told to trust that uid, it talks to it (and finds no daemon there) */
    setenv("EMBCACHE_DAEMON_UID", "65534", 1);
    assert_int_not_equal(ec_client_connect(fake, &c), EC_EPERM);
    unsetenv("EMBCACHE_DAEMON_UID");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(p[0]);
    close(p[1]);

    /* uid 65534's default socket directory, made first by uid 65533 */
    snprintf(def, sizeof(def), "/tmp/embcache-65534");
    if (mkdir(def, 0777) == 0) {
        char data[600], *err = NULL;
        int rc;
        assert_int_equal(chown(def, 65533, 65533), 0);
        assert_int_equal(chmod(def, 0777), 0);
        snprintf(data, sizeof(data), "%s/data", dir);
        assert_int_equal(mkdir(data, 0700), 0);
        assert_int_equal(chown(data, 65534, 65534), 0);
        if ((pid = fork()) == 0) {
            const char *argv[] = {EC_TEST_EMBCACHED, "--data-dir", data, "--no-keeper", NULL};
            if (setgid(65534) || setuid(65534))
                _exit(5);
            unsetenv("EMBCACHE_SOCKET");
            unsetenv("XDG_RUNTIME_DIR");
            rc = ect_run(argv, NULL, NULL, &err);
            fprintf(stderr, "%s", err ? err : "");
            _exit(rc == 1 && err && strstr(err, "another user could put a socket") ? 0 : 1);
        }
        {
            int st = 0;
            waitpid(pid, &st, 0);
            rmdir(def);
            assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        }
    } else {
        printf("%s exists already: the squatted-directory case did not run\n", def);
    }
    ect_rmtree(dir);
    free(dir);
}

/* 5. Admitted to read is not admitted to administer: uid 65534, let in
 * with --allow-uid, gathers but cannot retire, alias, evict, import, publish,
 * unpublish or reload the configuration; with --admin-uid it can. */
static void run_as_65534(const struct table *a, int want_admin)
{
    pid_t pid = spawn();

    if (pid == 0) {
        ec_client *o;
        ec_tensor *t;
        uint64_t v;
        int rc;
        static uint8_t buf[4 * COLS * 4];
        if (setgid(65534) || setuid(65534))
            _exit(5);
        if (ec_client_connect(E.sock, &o) || ec_tensor_resolve(o, "a", "1", "a", &t) ||
            gather_check(t, (const int64_t[]){0, 1, 2, 3}, 4, a, buf, sizeof(buf)))
            _exit(6);
        ec_tensor_release(t);
        rc = ec_model_alias(o, "a", "current", 1);
        if (want_admin ? rc != 0 : rc != EC_EPERM || !strstr(ec_last_error(), "--admin-uid"))
            _exit(7);
        rc = ec_model_evict(o, "a", "1", &v);
        if (want_admin ? rc != 0 : rc != EC_EPERM)
            _exit(8);
        rc = ec_model_retire(o, "a", 1, 1);
        if (want_admin ? rc == EC_EPERM : rc != EC_EPERM)
            _exit(9);
        /* The shared tier too (an administrator then meets the cluster
         * that is not there). */
        rc = ec_model_publish(o, "a", "1", "redis-cluster://127.0.0.1:1", NULL);
        if (want_admin ? rc == EC_EPERM : rc != EC_EPERM)
            _exit(10);
        rc = ec_model_unpublish(o, "a", "1", "redis-cluster://127.0.0.1:1", NULL);
        if (want_admin ? rc == EC_EPERM : rc != EC_EPERM)
            _exit(11);
        rc = ec_daemon_reload(o, NULL, 0);
        if (want_admin ? rc != 0 : rc != EC_EPERM)
            _exit(12);
        ec_client_close(o);
        _exit(0);
    }
    assert_int_equal(reap(pid), 0);
}

static void test_read_is_not_admin(void **state)
{
    static const char *const reader[] = {"--allow-uid", "65534", NULL};
    static const char *const admin[] = {"--admin-uid", "65534", NULL};
    struct table a;
    ec_client *c;
    ec_tensor *t;

    (void)state;
    if (geteuid() != 0) {
        printf("not root: cannot act as another uid (setuid); skipped\n");
        skip();
    }
    env_start("ec-hard", reader);
    assert_int_equal(chmod(E.dir, 0755), 0);
    table_make(&a, "a.npy", ROWS, COLS, 4);
    c = connect_ok();
    import_npy(c, "a", 1, a.path, 64 * 1024);
    ec_client_close(c);
    run_as_65534(&a, 0);
    c = connect_ok();
    assert_true(stat_of(c, "requests_denied") >= 3);
    /* the version is still there, unaliased, and reads */
    t = resolve_ok(c, "a", "1", "a");
    gather_all_ok(t, &a);
    ec_tensor_release(t);
    assert_int_equal(ec_tensor_resolve(c, "a", "current", "a", &t), EC_ENOENT);
    ec_client_close(c);
    ect_daemon_stop(E.daemon);
    E.daemon = ect_daemon_start(E.data, E.sock, admin);
    run_as_65534(&a, 1);
    table_free(&a);
}

static int count_parts(const char *data)
{
    char path[700];
    DIR *d;
    struct dirent *de;
    int n = 0;

    snprintf(path, sizeof(path), "%s/parts", data);
    if (!(d = opendir(path)))
        return -1;
    while ((de = readdir(d)))
        n += strstr(de->d_name, ".ecp") != NULL;
    closedir(d);
    return n;
}

/* Start a daemon on E.data that must refuse: exit 1, message containing
 * want. */
static void start_refused(const char *want)
{
    const char *argv[] = {EC_TEST_EMBCACHED, "--data-dir", E.data, "--socket", E.sock,
                          "--shm-size", "64M", NULL};
    char *err = NULL;
    int rc = ect_run(argv, NULL, NULL, &err);

    if (rc != 1 || !err || !strstr(err, want))
        fail_msg("embcached exited %d; expected 1 and '%s' in:\n%s", rc, want,
                 err ? err : "");
    free(err);
}

/* Write the catalog file back (and drop what SQLite kept beside it). */
static void put_catalog(const char *cat, const void *good, size_t len)
{
    char side[720];

    snprintf(side, sizeof(side), "%s-wal", cat);
    unlink(side);
    snprintf(side, sizeof(side), "%s-shm", cat);
    unlink(side);
    assert_int_equal(ect_write_file(cat, good, len), 0);
}

/* 6. A damaged catalog deletes nothing and serves nothing: a truncated one
 * (which SQLite would take for a new, empty one), one with a page
 * overwritten, one with a version whose tensors are gone. Each is refused
 * with what to do, and every partition file is still there. */
static void test_damaged_catalog(void **state)
{
    struct table a;
    ec_client *c;
    char cat[700];
    int parts;
    size_t len;
    void *good;

    (void)state;
    env_start("ec-hard", NULL);
    table_make(&a, "a.npy", ROWS, COLS, 5);
    c = connect_ok();
    import_npy(c, "a", 1, a.path, 16 * 1024);
    import_npy(c, "a", 2, a.path, 16 * 1024);
    ec_client_close(c);
    ect_daemon_stop(E.daemon);
    E.daemon = 0;
    parts = count_parts(E.data);
    assert_true(parts >= 2);
    snprintf(cat, sizeof(cat), "%s/catalog.db", E.data);
    good = ect_read_file(cat, &len);
    assert_non_null(good);
    assert_true(len > 8192);

    /* truncated to nothing */
    assert_int_equal(truncate(cat, 0), 0);
    start_refused("catalog was lost or truncated");
    assert_int_equal(count_parts(E.data), parts);

    /* page 2's header overwritten with 64 random bytes */
    {
        uint8_t junk[64];
        int fd;
        uint64_t s = 99;
        for (size_t i = 0; i < sizeof(junk); i++)
            junk[i] = (uint8_t)(splitmix(&s) >> 24);
        put_catalog(cat, good, len);
        fd = open(cat, O_WRONLY);
        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, junk, sizeof(junk), 4096), (ssize_t)sizeof(junk));
        close(fd);
    }
    start_refused("catalog");
    assert_int_equal(count_parts(E.data), parts);

    /* a version whose tensors were deleted behind the schema's back */
    {
        sqlite3 *db;
        put_catalog(cat, good, len);
        assert_int_equal(sqlite3_open(cat, &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db,
                                      "PRAGMA foreign_keys=OFF; DELETE FROM tensors WHERE "
                                      "version_id = (SELECT max(id) FROM versions);",
                                      NULL, NULL, NULL),
                         SQLITE_OK);
        sqlite3_close(db);
    }
    start_refused("has no tensors");
    assert_int_equal(count_parts(E.data), parts);

    /* put back, it serves again */
    put_catalog(cat, good, len);
    E.daemon = ect_daemon_start(E.data, E.sock, NULL);
    c = connect_ok();
    {
        ec_tensor *t = resolve_ok(c, "a", "2", "a");
        gather_all_ok(t, &a);
        ec_tensor_release(t);
    }
    ec_client_close(c);
    assert_int_equal(count_parts(E.data), parts);
    free(good);
    table_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_fork_child_refused, env_teardown),
        cmocka_unit_test_teardown(test_connection_slots, env_teardown),
        cmocka_unit_test_teardown(test_refused_uid_holds_nothing, env_teardown),
        cmocka_unit_test(test_socket_squatted),
        cmocka_unit_test_teardown(test_read_is_not_admin, env_teardown),
        cmocka_unit_test_teardown(test_damaged_catalog, env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
