/*
 * test_daemon_peers.c - embcached against peers that misbehave or die, and
 * its own process-level robustness.
 *
 * Against the daemon that robust.c's group set-up starts (a real embcached
 * with two small imported tensors, its log checked for sanitizer reports at
 * the end): clients that vanish mid-request or are SIGKILLed mid-gather, a
 * client that never reads its replies, a second daemon on the same data
 * directory or socket, a peer of another uid (as root; skipped otherwise),
 * bad command lines, and a daemon whose descriptor table is full. After each
 * case daemon_still_serves() proves that a well-behaved client still
 * resolves and gathers correct bytes. Malformed protocol input is
 * test_daemon_robust.c's.
 *
 * The last case reproduces a bug this program found; it is named for its
 * bug and fails until it is fixed (see the comment above it).
 *
 * Runs as one process plus forked children (gathering clients that are
 * killed, setuid peers, extra daemons); every wait is bounded, and a daemon
 * dies with this program (PR_SET_PDEATHSIG) should it abort. Takes ~2 s.
 * ECT_VERBOSE=1 prints the daemon's log at the end.
 */
#include "robust.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------ */
/* 7: clients that vanish                                              */

static void test_disconnect_mid_request(void **state)
{
    uint64_t faults0 = get_stat("fault_requests");

    (void)state;
    /* A FAULT for a partition nobody has read, then hang up at once. */
    for (uint32_t i = 0; i < 50; i++) {
        int fd = raw_open();
        send_fault(fd, 100 + i, small_id, 100 + i);
        close(fd);
    }
    /* The same with several partitions of the big tensor per request. */
    for (uint32_t i = 0; i < 10; i++) {
        int fd = raw_open();
        uint32_t f[2 + 8] = {big_id, 8};
        for (uint32_t k = 0; k < 8; k++)
            f[2 + k] = (i * 8 + k) % big_parts;
        send_req(fd, EC_OP_FAULT, 1, f, sizeof(f));
        close(fd);
    }
    /* A PIN of the small tensor, then hang up while it loads. */
    for (uint32_t i = 0; i < 10; i++) {
        int fd = raw_open();
        send_req(fd, EC_OP_PIN, 1, &small_id, sizeof(small_id));
        close(fd);
    }
    wait_clients(1);
    daemon_still_serves();
    /* The daemon got to (at least most of) those requests. */
    assert_true(get_stat("fault_requests") > faults0);
    /* Nothing is in flight and no pin survived its connection. */
    for (int i = 0; i < 300 && get_stat("inflight_reads") != 0; i++)
        sleep_ms(10);
    assert_int_equal(get_stat("inflight_reads"), 0);
    assert_int_equal(get_stat("pinned_bytes"), 0);
    assert_int_equal(get_stat("pins_taken"), get_stat("pins_released"));
    /* The partitions those hung-up clients asked for are served correctly. */
    robust_gather_check(good_small, SMALL_DIM, SMALL_SEED, SMALL_ROWS, 64);
}

/* A child gathers random rows of the big tensor forever (mostly waiting on
 * FAULTs: it does not fit the segment). Returns when it has gathered once. */
static pid_t spawn_gatherer(void)
{
    int p[2];
    pid_t pid;
    struct pollfd pf;
    char ch;

    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ec_client *c;
        ec_tensor *t;
        static float out[32 * BIG_DIM];
        int64_t ids[32];
        unsigned seed = (unsigned)getpid();

        close(p[0]);
        if (ec_client_connect(sock_path, &c) || ec_tensor_resolve(c, "big", "1", "big", &t))
            _exit(3);
        for (unsigned it = 0;; it++) {
            for (int i = 0; i < 32; i++)
                ids[i] = (int64_t)(rand_r(&seed) % BIG_ROWS);
            if (ec_tensor_gather(t, ids, 32, out, sizeof(out))) {
                dprintf(2, "gatherer: %s\n", ec_last_error());
                _exit(4);
            }
            if (it == 0 && write(p[1], "g", 1) != 1)
                _exit(5);
        }
    }
    close(p[1]);
    pf.fd = p[0];
    pf.events = POLLIN;
    if (poll(&pf, 1, 10000) != 1 || read(p[0], &ch, 1) != 1) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("the gathering child did not start");
    }
    close(p[0]);
    return pid;
}

static void test_client_killed_mid_gather(void **state)
{
    static const unsigned delays_ms[] = {0, 40, 150, 300};
    uint64_t page_ins0 = get_stat("page_ins") + get_stat("row_block_reads");
    ec_tensor *big = NULL;

    (void)state;
    for (size_t i = 0; i < sizeof(delays_ms) / sizeof(delays_ms[0]); i++) {
        pid_t pid = spawn_gatherer();
        int status;

        sleep_ms(delays_ms[i]);
        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        /* It must have died of the kill, not failed a gather on its own. */
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
            fail_msg("the gathering child ended with status 0x%x before the kill", status);
    }
    /* Two at once, killed together. */
    {
        pid_t a = spawn_gatherer(), b = spawn_gatherer();
        sleep_ms(100);
        kill(a, SIGKILL);
        kill(b, SIGKILL);
        waitpid(a, NULL, 0);
        waitpid(b, NULL, 0);
    }
    /* The big table may be cached by partitions or by rows: either read. */
    assert_true(get_stat("page_ins") + get_stat("row_block_reads") > page_ins0);
    wait_clients(1);
    daemon_still_serves();
    /* The big tensor itself still reads back right after the churn. */
    if (ec_tensor_resolve(good, "big", "1", "big", &big))
        fail_msg("resolve big: %s", ec_last_error());
    for (int i = 0; i < 4; i++)
        robust_gather_check(big, BIG_DIM, BIG_SEED, BIG_ROWS, 16);
    ec_tensor_release(big);
    for (int i = 0; i < 300 && get_stat("inflight_reads") != 0; i++)
        sleep_ms(10);
    assert_int_equal(get_stat("inflight_reads"), 0);
    assert_int_equal(get_stat("pinned_bytes"), 0);
}

/* ------------------------------------------------------------------ */
/* 8: a client that never reads                                        */

static void test_client_never_reads(void **state)
{
    uint8_t m[64];
    size_t len = build(m, sizeof(m), EC_OP_STATS, 1, 0, NULL, 0);
    uint64_t slow0 = get_stat("clients_disconnected_slow");
    unsigned sent = 0;
    int fd, err = 0, replies = 0;
    double t0 = now_s(), t_end;
    bool closed = false;

    (void)state;
    fd = raw_open();
    while (sent < 10000) {
        ssize_t n = send(fd, m, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            err = errno;
            break;
        }
        sent++;
        /* Everyone else is served meanwhile. */
        if (sent % 100 == 0) {
            robust_gather_check(good_small, SMALL_DIM, SMALL_SEED, SERVE_ROWS, 8);
            (void)get_stat("clients");
        }
        if (now_s() - t0 > 10)
            fail_msg("10 s spent flooding; %u requests sent", sent);
    }
    print_message("never-reading client: %u requests sent, stopped by %s\n", sent,
                  err ? strerror(err) : "the limit");
    assert_true(err == 0 || err == EAGAIN || err == EWOULDBLOCK || err == EPIPE ||
                err == ECONNRESET);
    /* The daemon must give up on it. */
    for (int i = 0; i < 500 && get_stat("clients_disconnected_slow") == slow0; i++)
        sleep_ms(10);
    assert_true(get_stat("clients_disconnected_slow") > slow0);
    daemon_still_serves();
    /* What was queued can still be read, then the end of the connection. */
    t_end = now_s() + 10;
    while (now_s() < t_end) {
        ssize_t n = recv(fd, rbuf, sizeof(rbuf), 0);
        if (n > 0) {
            replies++;
            continue;
        }
        if (n == 0 || errno == ECONNRESET) {
            closed = true;
            break;
        }
        fail_msg("draining the never-reading client: %s after %d replies", strerror(errno),
                 replies);
    }
    print_message("never-reading client: %d replies drained, then closed\n", replies);
    assert_true(closed);
    assert_true((unsigned)replies < sent);
    close(fd);
    wait_clients(1);
    daemon_still_serves();
}

/* ------------------------------------------------------------------ */
/* 9: a second daemon                                                  */

static void test_second_daemon(void **state)
{
    char sock2[108], data2[128];
    char *out = NULL, *err = NULL;
    int rc;
    struct stat st;

    (void)state;
    snprintf(sock2, sizeof(sock2), "%s/d2.sock", root);
    snprintf(data2, sizeof(data2), "%s/data2", root);
    {
        const char *argv[] = {EC_TEST_EMBCACHED, "--data-dir", data_dir, "--socket", sock2,
                              "--shm-size", SHM_SIZE, NULL};
        rc = ect_run(argv, &out, NULL, &err);
        if (rc != 1 || !contains(err, "in use"))
            fail_msg("second daemon on the same data dir: exit %d, stderr: %s", rc, err);
        {
            char rp[4096];
            assert_non_null(realpath(data_dir, rp)); /* the daemon names it so */
            assert_contains(err, rp);
        }
        assert_false(has_sanitizer_report(err));
        assert_true(stat(sock2, &st) < 0 && errno == ENOENT);
        free(out);
        free(err);
    }
    daemon_still_serves();
    {
        const char *argv[] = {EC_TEST_EMBCACHED, "--data-dir", data2, "--socket", sock_path,
                              "--shm-size", SHM_SIZE, NULL};
        rc = ect_run(argv, &out, NULL, &err);
        if (rc != 1 || !contains(err, "already listening"))
            fail_msg("second daemon on the same socket: exit %d, stderr: %s", rc, err);
        assert_contains(err, sock_path);
        assert_false(has_sanitizer_report(err));
        free(out);
        free(err);
    }
    /* The socket is still the first daemon's. */
    assert_int_equal(stat(sock_path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    daemon_still_serves();
    /* And the client that was connected all along is not stale. */
    robust_gather_check(good_small, SMALL_DIM, SMALL_SEED, SMALL_ROWS, 32);
}

/* ------------------------------------------------------------------ */
/* 10: a peer of another uid                                           */

/* Fork a child that becomes uid and connects to path; returns the code
 * ec_client_connect returned (or 100+ for set-up failures) and its message. */
static int connect_as(uid_t uid, const char *path, char *msg, size_t cap)
{
    int p[2], status;
    pid_t pid;
    ssize_t n;

    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ec_client *c = NULL;
        int rc;
        close(p[0]);
        if (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0)
            _exit(101);
        rc = ec_client_connect(path, &c);
        dprintf(p[1], "%s", rc ? ec_last_error() : "");
        ec_client_close(c);
        _exit(rc < 0 ? -rc : 0);
    }
    close(p[1]);
    n = read(p[0], msg, cap - 1);
    msg[n > 0 ? n : 0] = '\0';
    close(p[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 101)
        fail_msg("the child could not switch to uid %u", (unsigned)uid);
    return -WEXITSTATUS(status);
}

static void test_other_uid(void **state)
{
    char msg[EC_ERRMSG_MAX + 1], sock3[108], data3[128], log3[128];
    const char *extra[] = {"--allow-uid", "4242", NULL};
    pid_t pid3;
    int rc, status;

    (void)state;
    if (geteuid() != 0)
        skip();
    /* The main daemon: socket 0600 in a 0700 directory; connect() itself is
     * refused and the library reports EC_EPERM. */
    rc = connect_as(65534, sock_path, msg, sizeof(msg));
    if (rc != EC_EPERM)
        fail_msg("uid 65534 to a private daemon: %d (%s)", rc, msg);
    print_message("uid 65534 to a private daemon: %s\n", msg);
    daemon_still_serves();

    /* A daemon that allows uid 4242 only: its socket is 0666, so uid 65534
     * gets as far as HELLO and is refused there with a message that says how
     * to let it in; uid 4242 gets in. */
    assert_int_equal(chmod(root, 0711), 0);
    snprintf(sock3, sizeof(sock3), "%s/d3.sock", root);
    snprintf(data3, sizeof(data3), "%s/data3", root);
    snprintf(log3, sizeof(log3), "%s/daemon3.log", root);
    pid3 = daemon_spawn(data3, sock3, log3, extra, 0);
    rc = connect_as(65534, sock3, msg, sizeof(msg));
    if (rc != EC_EPERM)
        fail_msg("uid 65534 to a daemon allowing 4242: %d (%s)", rc, msg);
    print_message("uid 65534 to a daemon allowing 4242: %s\n", msg);
    assert_contains(msg, "--allow-uid 65534");
    assert_contains(msg, "uid 65534");
    rc = connect_as(4242, sock3, msg, sizeof(msg));
    if (rc != 0)
        fail_msg("uid 4242 to a daemon allowing it: %d (%s)", rc, msg);
    status = ect_daemon_stop(pid3);
    chmod(root, 0700);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    check_log_clean(log3);
    daemon_still_serves();
}

/* ------------------------------------------------------------------ */
/* 11: bad command lines                                               */

static void test_bad_command_lines(void **state)
{
    char *err = NULL;
    int rc;

    (void)state;
    {
        const char *argv[] = {EC_TEST_EMBCACHED, "--shm-size", "banana", NULL};
        rc = ect_run(argv, NULL, NULL, &err);
        assert_int_equal(rc, 2);
        assert_contains(err, "--shm-size 'banana' is not a size");
        free(err);
    }
    {
        const char *argv[] = {EC_TEST_EMBCACHED, "--bogus", NULL};
        rc = ect_run(argv, NULL, NULL, &err);
        assert_int_equal(rc, 2);
        assert_contains(err, "bogus");
        assert_contains(err, "--help");
        free(err);
    }
    {
        const char *argv[] = {EC_TEST_EMBCACHED, "--shm-size", "1M", NULL};
        rc = ect_run(argv, NULL, NULL, &err);
        assert_int_equal(rc, 2);
        assert_contains(err, "at least 4M");
        free(err);
    }
    {
        const char *argv[] = {EC_TEST_EMBCACHED, "--io-threads", "0", NULL};
        rc = ect_run(argv, NULL, NULL, &err);
        assert_int_equal(rc, 2);
        assert_contains(err, "--io-threads");
        free(err);
    }
    {
        const char *argv[] = {EC_TEST_EMBCACHED, "--allow-uid", "-5", NULL};
        rc = ect_run(argv, NULL, NULL, &err);
        assert_int_equal(rc, 2);
        assert_contains(err, "--allow-uid");
        free(err);
    }
    {
        const char *argv[] = {EC_TEST_EMBCACHED, "stray", NULL};
        rc = ect_run(argv, NULL, NULL, &err);
        assert_int_equal(rc, 2);
        assert_contains(err, "unexpected argument 'stray'");
        free(err);
    }
    daemon_still_serves();
}

/* ------------------------------------------------------------------ */
/* A bug found by this program; the test is named for it.              */

static double cpu_seconds(pid_t pid)
{
    char path[64], text[1024], *p;
    unsigned long long ut = 0, st = 0;
    double secs = -1;
    ssize_t n;
    int fd;

    /* Not ect_read_file: /proc files have no size to seek to. */
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    text[n] = '\0';
    p = strrchr(text, ')');
    /* After "pid (comm)": state ppid pgrp session tty tpgid flags minflt
     * cminflt majflt cmajflt utime stime. */
    if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                    &st) == 2)
        secs = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    return secs;
}

/* With its descriptor table full, embcached's accept() fails EMFILE, the
 * listening socket stays readable, and the level-triggered loop spins at
 * full CPU (logging one warning per turn: ~1 M lines a second without -q)
 * until a client leaves. */
static void test_accept_emfile_busy_loop(void **state)
{
    char sock4[108], data4[128], log4[128];
    const char *extra[] = {"-q", NULL};
    int fds[100], nfd = 0, rc, status;
    double c0, c1;
    pid_t pid4;
    ec_client *c = NULL;

    (void)state;
    snprintf(sock4, sizeof(sock4), "%s/d4.sock", root);
    snprintf(data4, sizeof(data4), "%s/data4", root);
    snprintf(log4, sizeof(log4), "%s/daemon4.log", root);
    pid4 = daemon_spawn(data4, sock4, log4, extra, 64);
    for (nfd = 0; nfd < 100; nfd++)
        fds[nfd] = raw_connect_to(sock4);
    sleep_ms(200);
    c0 = cpu_seconds(pid4);
    sleep_ms(1000);
    c1 = cpu_seconds(pid4);
    for (int i = 0; i < nfd; i++)
        close(fds[i]);
    /* Once they have gone, new clients get in. */
    for (int i = 0; i < 300; i++) {
        rc = ec_client_connect(sock4, &c);
        if (rc == 0)
            break;
        sleep_ms(10);
    }
    if (rc)
        print_error("connect after the flood: %s\n", ec_last_error());
    ec_client_close(c);
    status = ect_daemon_stop(pid4);
    check_log_clean(log4);
    print_message("descriptor table full: embcached used %.2f s of CPU in 1 s\n", c1 - c0);
    assert_int_equal(rc, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(c0 >= 0 && c1 >= 0);
    if (c1 - c0 > 0.3)
        fail_msg("with its descriptor table full embcached spun at %.0f%% CPU: "
                 "core/server.c do_accept returns on EMFILE and the level-triggered "
                 "listening socket wakes epoll_wait again at once",
                 100 * (c1 - c0));
    daemon_still_serves();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_disconnect_mid_request),
        cmocka_unit_test(test_client_killed_mid_gather),
        cmocka_unit_test(test_client_never_reads),
        cmocka_unit_test(test_second_daemon),
        cmocka_unit_test(test_other_uid),
        cmocka_unit_test(test_bad_command_lines),
        cmocka_unit_test(test_accept_emfile_busy_loop),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
