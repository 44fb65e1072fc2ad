/*
 * test_notify.c - embcached's readiness protocol with systemd (core/notify.c,
 * the unit's Type=notify and NotifyAccess=main), against the real daemon.
 *
 * The test plays systemd: it binds a datagram socket with SO_PASSCRED, starts
 * embcached with NOTIFY_SOCKET pointing at it, and reads every message with
 * the pid that sent it. It checks that
 *  - READY=1 comes, and only once the control socket accepts connections:
 *    a connect made the moment it arrives succeeds, and so does a handshake;
 *  - every message comes from the pid systemd would watch (the keeper; the
 *    daemon itself under --no-keeper), never from the worker;
 *  - a worker killed with SIGKILL, or replaced on SIGUSR2, is reported in
 *    STATUS= and READY=1 comes again when its replacement serves (every
 *    READY=1 is checked: the order is a race the daemon must always win, and
 *    a daemon that loses it is caught by most of them);
 *  - STOPPING=1 comes after SIGTERM, and the daemon then exits 0;
 *  - a worker that cannot start sends no READY=1, and the status says so.
 * Every daemon is started by this test and stopped by its pid.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define WAIT_MS 20000

struct fixture {
    char *dir;
    char data[512], sock[512], notify[512];
    int nfd;   /* our NOTIFY_SOCKET */
    pid_t pid; /* the daemon's main pid: what systemd watches */
};

struct note {
    char text[4096];
    pid_t from;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int one = 1;

    assert_non_null(f);
    f->dir = ect_tmpdir("ec-notify");
    snprintf(f->data, sizeof(f->data), "%s/data", f->dir);
    snprintf(f->sock, sizeof(f->sock), "%s/embcached.sock", f->dir);
    snprintf(f->notify, sizeof(f->notify), "%s/notify.sock", f->dir);
    f->nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(f->nfd >= 0);
    assert_int_equal(setsockopt(f->nfd, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)), 0);
    assert_true(strlen(f->notify) < sizeof(sa.sun_path));
    strcpy(sa.sun_path, f->notify);
    assert_int_equal(bind(f->nfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    if (f->pid > 0) {
        /* A failed test's daemon: SIGTERM, so that the keeper waits for its
         * worker (which would otherwise outlive it and write into the
         * directory being removed); SIGKILL if it has not gone in 10 s. */
        kill(f->pid, SIGTERM);
        for (int i = 0; i < 1000 && waitpid(f->pid, NULL, WNOHANG) == 0; i++)
            usleep(10000);
        if (kill(f->pid, SIGKILL) == 0)
            waitpid(f->pid, NULL, 0);
    }
    close(f->nfd);
    ect_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* embcached with NOTIFY_SOCKET set, not waiting for anything. */
static pid_t start(struct fixture *f, const char *socket, const char *extra)
{
    /* --config none: not the machine's /etc/embcache/embcached.conf. */
    const char *argv[] = {EC_TEST_EMBCACHED, "--config", "none", "--data-dir", f->data,
                          "--socket", socket, "--shm-size", "64M", extra, NULL};
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setenv("NOTIFY_SOCKET", f->notify, 1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    f->pid = pid;
    return pid;
}

/* The next message, with its sender's pid; false when none came in ms. */
static bool next_note(struct fixture *f, int ms, struct note *n)
{
    char cbuf[CMSG_SPACE(sizeof(struct ucred))];
    struct iovec iov = {.iov_base = n->text, .iov_len = sizeof(n->text) - 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof(cbuf)};
    struct pollfd p = {.fd = f->nfd, .events = POLLIN};
    ssize_t len;

    if (poll(&p, 1, ms) != 1)
        return false;
    len = recvmsg(f->nfd, &mh, 0);
    assert_true(len >= 0);
    n->text[len] = '\0';
    n->from = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_CREDENTIALS) {
            struct ucred uc;
            memcpy(&uc, CMSG_DATA(cm), sizeof(uc));
            n->from = uc.pid;
        }
    {
        char line[sizeof(n->text)];
        snprintf(line, sizeof(line), "%s", n->text);
        for (char *nl = line; (nl = strchr(nl, '\n'));)
            *nl = '|';
        printf("  from %d: %s\n", (int)n->from, line);
    }
    /* NotifyAccess=main: systemd drops whatever another pid sends. */
    if (n->from != f->pid)
        fail_msg("notification \"%s\" came from pid %d, not from the main pid %d: systemd "
                 "(NotifyAccess=main) would ignore it",
                 n->text, (int)n->from, (int)f->pid);
    return true;
}

/* Does the message hold this line (KEY=value, or a KEY= prefix)? */
static bool has_line(const char *text, const char *line)
{
    size_t l = strlen(line);

    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, line, l))
            return true;
    return false;
}

/* Read messages until one holds `line`; fail after WAIT_MS or when the
 * daemon exits first. */
static void wait_note(struct fixture *f, const char *line, struct note *n)
{
    for (int waited = 0; waited < WAIT_MS; waited += 100) {
        if (next_note(f, 100, n) && has_line(n->text, line))
            return;
        if (waitpid(f->pid, NULL, WNOHANG) == f->pid) {
            f->pid = 0;
            fail_msg("embcached exited before it sent %s", line);
        }
    }
    fail_msg("no %s from embcached within %d ms", line, WAIT_MS);
}

/* Connect to the control socket once, right now: 0 or errno. */
static int connect_now(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), rc = 0;

    assert_true(fd >= 0);
    strcpy(sa.sun_path, path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        rc = errno;
    close(fd);
    return rc;
}

/* READY=1 has just arrived: the daemon must serve now, not soon. */
static void assert_serving(struct fixture *f, const struct note *ready)
{
    ec_client *c = NULL;
    int err = connect_now(f->sock);

    if (err)
        fail_msg("READY=1 came before the control socket accepted connections: connect to "
                 "%s right after it failed: %s",
                 f->sock, strerror(err));
    assert_true(has_line(ready->text, "STATUS=serving"));
    assert_int_equal(ec_client_connect(f->sock, &c), 0);
    ec_client_close(c);
}

/* SIGTERM: STOPPING=1 from the main pid, then a clean exit. */
static void stop_and_check(struct fixture *f)
{
    struct note n;
    int st = 0;

    assert_int_equal(kill(f->pid, SIGTERM), 0);
    wait_note(f, "STOPPING=1", &n);
    assert_int_equal(waitpid(f->pid, &st, 0), f->pid);
    f->pid = 0;
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    /* Nothing after the main pid is gone, from anyone. */
    assert_false(next_note(f, 100, &n));
}

static void test_keeper(void **state)
{
    struct fixture *f = *state;
    struct note n;
    pid_t worker;

    start(f, f->sock, NULL);
    wait_note(f, "READY=1", &n);
    assert_serving(f, &n);

    /* A worker killed: the status says so, READY=1 again once its
     * replacement serves, and still only from the keeper. */
    worker = ect_daemon_worker(f->data);
    assert_int_not_equal(worker, f->pid);
    assert_int_equal(kill(worker, SIGKILL), 0);
    wait_note(f, "STATUS=restarting the worker: it died of signal 9", &n);
    wait_note(f, "READY=1", &n);
    assert_serving(f, &n);
    assert_non_null(strstr(n.text, "restarted 1 time"));

    /* SIGUSR2: warm restarts, each announced and each READY=1 checked. */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(kill(f->pid, SIGUSR2), 0);
        wait_note(f, "STATUS=SIGUSR2: restarting the worker", &n);
        wait_note(f, "READY=1", &n);
        assert_serving(f, &n);
    }
    assert_non_null(strstr(n.text, "restarted 6 time"));

    stop_and_check(f);
}

static void test_no_keeper(void **state)
{
    struct fixture *f = *state;
    struct note n;

    start(f, f->sock, "--no-keeper");
    wait_note(f, "READY=1", &n);
    assert_serving(f, &n);
    stop_and_check(f);
}

/* A worker that fails at start-up: no READY=1 ever, a status that says it,
 * and a failed exit (systemd then marks the start failed). */
static void test_start_failure(void **state)
{
    struct fixture *f = *state;
    const char *const other_args[] = {"--config", "none", NULL};
    char other_data[600];
    struct note n;
    bool said = false;
    int st = 0;
    pid_t other;

    /* Another daemon (of another data directory) listens on the socket: the
     * worker finds it and refuses to start, after the keeper took the lock. */
    snprintf(other_data, sizeof(other_data), "%s/other", f->dir);
    other = ect_daemon_start(other_data, f->sock, other_args);
    start(f, f->sock, NULL);
    for (int waited = 0; waited < WAIT_MS; waited += 100) {
        if (next_note(f, 100, &n)) {
            if (has_line(n.text, "READY=1"))
                fail_msg("READY=1 from a daemon whose worker could not start: %s", n.text);
            said |= has_line(n.text, "STATUS=stopped: the worker could not start");
        }
        if (waitpid(f->pid, &st, WNOHANG) == f->pid) {
            f->pid = 0;
            break;
        }
    }
    assert_int_equal(f->pid, 0);
    while (next_note(f, 0, &n)) {
        assert_false(has_line(n.text, "READY=1"));
        said |= has_line(n.text, "STATUS=stopped: the worker could not start");
    }
    assert_true(said);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
    /* The other daemon still serves, untouched. */
    assert_int_equal(connect_now(f->sock), 0);
    st = ect_daemon_stop(other);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_keeper, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_keeper, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_failure, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
