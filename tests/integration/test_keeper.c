/*
 * test_keeper.c - the read-only promise and the keeper (core/keeper.c,
 * shm/segment.c): a client cannot change a byte of the segment through the
 * descriptor it is given, however it reopens it; the keeper restarts a
 * crashed worker warm, restarts it on SIGUSR2, ignores the signals that
 * used to kill the daemon, stops after a crash loop, takes its worker with
 * it when it is killed, and leaves nothing in /dev/shm; the data directory
 * is refused when others can write it or its lock file is a link.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "itest.h"
#include "testutil.h"

#define ROWS 4096
#define COLS 32
#define PART (64 * 1024)

static int count_dev_shm(void)
{
    DIR *d = opendir("/dev/shm");
    struct dirent *de;
    int n = 0;

    if (!d)
        return 0;
    while ((de = readdir(d)))
        n += !strncmp(de->d_name, "embcache-", 9);
    closedir(d);
    return n;
}

/* The descriptor of the segment this process was handed: the one whose
 * link names an embcache segment (a memfd, or a /dev/shm file). */
static int segment_fd(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    int found = -1;

    assert_non_null(d);
    while ((de = readdir(d))) {
        char path[300], link[512];
        ssize_t n;
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
        n = readlink(path, link, sizeof(link) - 1);
        if (n <= 0)
            continue;
        link[n] = '\0';
        if (strstr(link, "embcache-segment") || strstr(link, "/dev/shm/embcache-"))
            found = atoi(de->d_name);
    }
    closedir(d);
    if (found < 0)
        fail_msg("no segment descriptor in /proc/self/fd");
    return found;
}

/* 1. Whatever a client does with its descriptor, it cannot write the
 * segment: not through a read-write reopen (/proc/self/fd/N), not with
 * mmap, write, hole punching, truncation or mprotect; and the segment has
 * no name in /dev/shm to open. Rows read right afterwards. */
static void test_segment_is_sealed(void **state)
{
    struct table tb;
    ec_client *c;
    ec_tensor *t;
    struct stat st;
    void *ro;
    int fd, rw;

    (void)state;
    env_start("ec-keeper", NULL);
    table_make(&tb, "t.npy", ROWS, COLS, 5);
    c = connect_ok();
    import_npy(c, "m", 1, tb.path, PART);
    t = resolve_ok(c, "m", "1", "t");
    gather_all_ok(t, &tb);

    fd = segment_fd();
    assert_int_equal(fstat(fd, &st), 0);
    /* A read-write reopen of the same file: the open may work (a memfd's
     * mode allows it), but nothing written through it may land. */
    {
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        rw = open(path, O_RDWR | O_CLOEXEC);
    }
    if (rw >= 0) {
        char byte = 0x5a;
        void *w = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0);
        if (w != MAP_FAILED)
            fail_msg("a client mapped the segment writable through a reopened descriptor");
        assert_int_equal(errno, EPERM);
        assert_int_equal(pwrite(rw, &byte, 1, 4096), -1);
        assert_int_equal(fallocate(rw, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                                   st.st_size),
                         -1);
        assert_int_equal(ftruncate(rw, 4096), -1);
        assert_int_equal(ftruncate(rw, st.st_size * 2), -1);
        close(rw);
    }
    /* The descriptor itself is read-only; a read-only mapping of it cannot
     * be made writable. */
    {
        char byte = 0x5a;
        assert_int_equal(pwrite(fd, &byte, 1, 4096), -1);
    }
    ro = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    assert_true(ro != MAP_FAILED);
    assert_int_equal(mprotect(ro, 4096, PROT_READ | PROT_WRITE), -1);
    munmap(ro, (size_t)st.st_size);
    /* No name to open it by. */
    {
        DIR *d = opendir("/dev/shm");
        struct dirent *de;
        while (d && (de = readdir(d))) {
            char p[300];
            struct stat s2;
            snprintf(p, sizeof(p), "/dev/shm/%s", de->d_name);
            if (stat(p, &s2) == 0 && s2.st_ino == st.st_ino && s2.st_dev == st.st_dev)
                fail_msg("the segment can be opened by its name %s", p);
        }
        if (d)
            closedir(d);
    }
    gather_all_ok(t, &tb);
    ec_tensor_release(t);
    ec_client_close(c);
    table_free(&tb);
}

/* 2. Signals: SIGHUP, SIGUSR1, SIGALRM and SIGPIPE stop neither process;
 * SIGUSR2 restarts the worker warm; SIGTERM stops both and leaves nothing
 * behind (no process, no socket, no /dev/shm entry, the lock free). */
static void test_signals(void **state)
{
    static const int ignored[] = {SIGHUP, SIGUSR1, SIGALRM, SIGPIPE};
    struct table tb;
    ec_client *c;
    ec_tensor *t;
    pid_t w, w2;
    uint64_t gen;
    int shm0 = count_dev_shm(), status;
    char lock[600];

    (void)state;
    env_start("ec-keeper", NULL);
    snprintf(lock, sizeof(lock), "%s/embcached.lock", E.data);
    table_make(&tb, "t.npy", ROWS, COLS, 6);
    c = connect_ok();
    import_npy(c, "m", 1, tb.path, PART);
    t = resolve_ok(c, "m", "1", "t");
    gather_all_ok(t, &tb);
    ec_tensor_release(t);
    gen = ec_client_generation(c);
    ec_client_close(c);
    w = ect_daemon_worker(E.data);
    assert_int_not_equal(w, E.daemon);
    for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++) {
        assert_int_equal(kill(E.daemon, ignored[i]), 0);
        assert_int_equal(kill(w, ignored[i]), 0);
    }
    usleep(200000);
    assert_true(ect_pid_alive(E.daemon));
    assert_true(ect_pid_alive(w));
    assert_int_equal(ect_daemon_worker(E.data), w);
    c = connect_ok();
    assert_int_equal(ec_client_generation(c), gen);
    ec_client_close(c);

    /* SIGUSR2: a new worker, serving the same segment warm. */
    assert_int_equal(kill(E.daemon, SIGUSR2), 0);
    w2 = ect_daemon_wait_worker(E.data, E.sock, w);
    c = connect_ok();
    assert_true(ec_client_generation(c) > gen);
    assert_true(stat_of(c, "restart_kept_partitions") > 0);
    t = resolve_ok(c, "m", "1", "t");
    gather_all_ok(t, &tb);
    assert_int_equal(stat_of(c, "page_ins"), 0);
    ec_tensor_release(t);
    ec_client_close(c);

    /* SIGTERM: both go, and take everything with them. */
    status = ect_daemon_stop(E.daemon);
    E.daemon = 0;
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    for (int i = 0; i < 200 && ect_pid_alive(w2); i++)
        usleep(10000);
    assert_false(ect_pid_alive(w2));
    assert_int_equal(access(E.sock, F_OK), -1);
    assert_int_equal(count_dev_shm(), shm0);
    {
        int fd = open(lock, O_RDWR);
        assert_true(fd >= 0);
        assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), 0);
        close(fd);
    }
    table_free(&tb);
}

/* 3. A worker that keeps crashing is not restarted for ever: the keeper
 * stops with status 1 after 5 crashes within a minute. */
static void test_crash_loop_stops(void **state)
{
    int status = 0;
    pid_t w = 0;

    (void)state;
    env_start("ec-keeper", NULL);
    for (int i = 0; i < 4; i++)
        w = ect_daemon_crash(E.data, E.sock);
    assert_true(ect_pid_alive(E.daemon));
    assert_int_equal(kill(w, SIGKILL), 0);
    for (int i = 0; i < 2000; i++) {
        if (waitpid(E.daemon, &status, WNOHANG) == E.daemon)
            break;
        usleep(10000);
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
    E.daemon = 0;
}

/* 4. kill -9 of the keeper takes the worker with it (it stops cleanly), so
 * the data directory is free for the next daemon. */
static void test_keeper_killed(void **state)
{
    pid_t w;
    ec_client *c;

    (void)state;
    env_start("ec-keeper", NULL);
    w = ect_daemon_worker(E.data);
    assert_int_equal(kill(E.daemon, SIGKILL), 0);
    waitpid(E.daemon, NULL, 0);
    for (int i = 0; i < 500 && ect_pid_alive(w); i++)
        usleep(10000);
    assert_false(ect_pid_alive(w));
    E.daemon = ect_daemon_start(E.data, E.sock, NULL);
    c = connect_ok();
    assert_int_equal(ec_client_generation(c), 1);
    ec_client_close(c);
}

/* 5. A data directory others can write, or whose lock file, catalog or
 * parts/ is a link, or whose hot/ others can write, is refused before
 * anything in it is opened. */
static void test_data_dir_refused(void **state)
{
    char *dir = ect_tmpdir("ec-keeper"), data[600], sock[600], lock[700], target[700];
    char *err = NULL;
    int rc;

    (void)state;
    snprintf(data, sizeof(data), "%s/data", dir);
    snprintf(sock, sizeof(sock), "%s/s.sock", dir);
    assert_int_equal(mkdir(data, 0700), 0);
    assert_int_equal(chmod(data, 0777), 0);
    {
        const char *argv[] = {EC_TEST_EMBCACHED, "--data-dir", data, "--socket", sock, NULL};
        rc = ect_run(argv, NULL, NULL, &err);
        assert_int_equal(rc, 1);
        assert_non_null(strstr(err, "not be writable by group or others"));
        free(err);
        err = NULL;
        assert_int_equal(chmod(data, 0700), 0);
        snprintf(lock, sizeof(lock), "%s/embcached.lock", data);
        snprintf(target, sizeof(target), "%s/victim", dir);
        assert_int_equal(ect_write_file(target, "keep", 4), 0);
        assert_int_equal(symlink(target, lock), 0);
        rc = ect_run(argv, NULL, NULL, &err);
        assert_int_equal(rc, 1);
        assert_non_null(strstr(err, "symbolic link"));
        free(err);
        /* the catalog, linked to someone's (empty) file, is not opened
         * either: SQLite would have written a database into it */
        {
            char cat[720], empty[720];
            size_t len = 1;
            char *e;
            assert_int_equal(unlink(lock), 0);
            snprintf(cat, sizeof(cat), "%s/catalog.db", data);
            snprintf(empty, sizeof(empty), "%s/victim2", dir);
            assert_int_equal(ect_write_file(empty, "", 0), 0);
            assert_int_equal(symlink(empty, cat), 0);
            rc = ect_run(argv, NULL, NULL, &err);
            assert_int_equal(rc, 1);
            assert_non_null(strstr(err, "catalog"));
            free(err);
            err = NULL;
            e = ect_read_file(empty, &len);
            assert_int_equal(len, 0);
            free(e);
        }
        /* parts/ as a link to a directory elsewhere, or hot/ writable by
         * others: every file below them would be someone else's to place */
        {
            char cat[720], parts[720], elsewhere[720], hot[720];
            snprintf(cat, sizeof(cat), "%s/catalog.db", data);
            assert_int_equal(unlink(cat), 0);
            snprintf(parts, sizeof(parts), "%s/parts", data);
            snprintf(elsewhere, sizeof(elsewhere), "%s/elsewhere", dir);
            assert_int_equal(mkdir(elsewhere, 0700), 0);
            assert_int_equal(symlink(elsewhere, parts), 0);
            rc = ect_run(argv, NULL, NULL, &err);
            assert_int_equal(rc, 1);
            assert_non_null(strstr(err, "symbolic link"));
            free(err);
            err = NULL;
            assert_int_equal(unlink(parts), 0);
            snprintf(hot, sizeof(hot), "%s/hot", data);
            assert_int_equal(mkdir(hot, 0700), 0);
            assert_int_equal(chmod(hot, 0777), 0);
            rc = ect_run(argv, NULL, NULL, &err);
            assert_int_equal(rc, 1);
            assert_non_null(strstr(err, "not be writable by group or others"));
            free(err);
            err = NULL;
        }
        {
            size_t len = 0;
            char *keep = ect_read_file(target, &len);
            assert_int_equal(len, 4);
            assert_memory_equal(keep, "keep", 4);
            free(keep);
        }
    }
    ect_rmtree(dir);
    free(dir);
}

/* 6. A view outlives a crash of the worker that granted it: the next
 * worker keeps its memory out of use while the viewing process runs,
 * however much else it loads, and frees it when that process exits. */
static void test_view_survives_crash(void **state)
{
    struct table a, b;
    ec_client *c;
    ec_tensor *t;
    int go[2], done[2];
    pid_t holder;
    char ok = 0;

    (void)state;
    env_start("ec-keeper", NULL); /* a 64 MiB segment */
    table_make(&a, "a.npy", ROWS, COLS, 8);
    table_make(&b, "b.npy", 50000, 512, 9); /* 100 MB: more than the segment */
    c = connect_ok();
    import_npy(c, "a", 1, a.path, PART);
    import_npy(c, "b", 1, b.path, 1 << 20);
    ec_client_close(c);
    assert_int_equal(pipe(go), 0);
    assert_int_equal(pipe(done), 0);
    if ((holder = spawn()) == 0) {
        ec_client *hc;
        ec_tensor *ht;
        ec_view *v;
        char r = 0;
        if (ec_client_connect(E.sock, &hc) || ec_tensor_resolve(hc, "a", "1", "a", &ht) ||
            ec_tensor_view(ht, &v))
            _exit(2);
        if (write(done[1], &r, 1) != 1 || read(go[0], &r, 1) != 1)
            _exit(3);
        /* after the crash and the churn: still the table's bytes */
        r = memcmp(ec_view_data(v), a.data, ROWS * COLS * 4) == 0;
        if (write(done[1], &r, 1) != 1 || read(go[0], &r, 1) != 1)
            _exit(4);
        _exit(0); /* exits holding the view: the daemon may free it now */
    }
    assert_int_equal(read(done[0], &ok, 1), 1);
    ect_daemon_crash(E.data, E.sock);
    c = connect_ok();
    assert_true(stat_of(c, "view_quarantined_bytes") >= ROWS * COLS * 4);
    /* every row of b, twice: the whole segment is reused meanwhile */
    t = resolve_ok(c, "b", "1", "b");
    gather_all_ok(t, &b);
    gather_all_ok(t, &b);
    ec_tensor_release(t);
    assert_int_equal(write(go[1], &ok, 1), 1);
    assert_int_equal(read(done[0], &ok, 1), 1);
    assert_int_equal(ok, 1);
    assert_int_equal(write(go[1], &ok, 1), 1);
    assert_int_equal(reap(holder), 0);
    for (int i = 0; i < 50 && stat_of(c, "view_quarantined_bytes"); i++)
        usleep(100000);
    assert_int_equal(stat_of(c, "view_quarantined_bytes"), 0);
    assert_true(stat_of(c, "view_released_bytes") >= ROWS * COLS * 4);
    ec_client_close(c);
    table_free(&a);
    table_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_segment_is_sealed, env_teardown),
        cmocka_unit_test_teardown(test_signals, env_teardown),
        cmocka_unit_test_teardown(test_crash_loop_stops, env_teardown),
        cmocka_unit_test_teardown(test_keeper_killed, env_teardown),
        cmocka_unit_test(test_data_dir_refused),
        cmocka_unit_test_teardown(test_view_survives_crash, env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
