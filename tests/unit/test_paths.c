/*
 * test_paths.c - the default socket paths (common/paths.c): a client that
 * runs no daemon of its own finds the system service's socket, and the
 * daemon's own default never moves there.
 *
 * The fallback is for non-root clients: run as root, the cases that need a
 * non-root euid take uid 65534's with seteuid() and give it back after; run
 * as another user, they run as that user and the root case is skipped. The
 * "system socket" is one this test binds in its temporary directory
 * (ec_client_socket takes it as a parameter), never /run/embcache.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/paths.h"
#include "testutil.h"

#define NOBODY 65534

static char *tmp;
static char sys_sock[512], xdg[512], own[600];

/* Bind (and leave bound) a Unix socket at path; returns its fd. */
static int bind_socket(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_true(strlen(path) < sizeof(sa.sun_path));
    strcpy(sa.sun_path, path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* As a non-root euid from here to as_self(). */
static void as_user(void)
{
    if (getuid() == 0)
        assert_int_equal(seteuid(NOBODY), 0);
    assert_int_not_equal(geteuid(), 0);
}

static void as_self(void)
{
    if (getuid() == 0)
        assert_int_equal(seteuid(0), 0);
}

static int setup(void **state)
{
    (void)state;
    tmp = ect_tmpdir("ec-paths");
    /* Searchable by uid 65534, writable by its owner only. */
    assert_int_equal(chmod(tmp, 0755), 0);
    snprintf(sys_sock, sizeof(sys_sock), "%s/system.sock", tmp);
    snprintf(xdg, sizeof(xdg), "%s/xdg", tmp);
    snprintf(own, sizeof(own), "%s/embcache.sock", xdg);
    unsetenv("EMBCACHE_SOCKET");
    setenv("XDG_RUNTIME_DIR", xdg, 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    as_self();
    ect_rmtree(tmp);
    free(tmp);
    return 0;
}

/* No socket of the user's own, the system's there: the system's. */
static void test_falls_back_to_system(void **state)
{
    char buf[600];
    int fd = bind_socket(sys_sock);

    (void)state;
    as_user();
    assert_string_equal(ec_client_socket(buf, sizeof(buf), sys_sock), sys_sock);
    /* The daemon's default never moves: it would listen in the service's place. */
    assert_string_equal(ec_default_socket(buf, sizeof(buf)), own);
    as_self();
    close(fd);
    unlink(sys_sock);
}

/* Neither there: the user's own default, which the error message names. */
static void test_no_system_socket(void **state)
{
    char buf[600];

    (void)state;
    as_user();
    assert_string_equal(ec_client_socket(buf, sizeof(buf), sys_sock), own);
    assert_string_equal(ec_client_socket(buf, sizeof(buf), NULL), own);
    as_self();
}

/* The system path is not a socket: not followed. */
static void test_system_path_not_a_socket(void **state)
{
    char buf[600];

    (void)state;
    assert_int_equal(ect_write_file(sys_sock, "x", 1), 0);
    as_user();
    assert_string_equal(ec_client_socket(buf, sizeof(buf), sys_sock), own);
    as_self();
    unlink(sys_sock);
}

/* The user's own socket exists (their daemon, or a stale one): theirs. */
static void test_own_socket_wins(void **state)
{
    char buf[600];
    int sfd = bind_socket(sys_sock), ofd;

    (void)state;
    assert_int_equal(mkdir(xdg, 0755), 0);
    ofd = bind_socket(own);
    as_user();
    assert_string_equal(ec_client_socket(buf, sizeof(buf), sys_sock), own);
    as_self();
    close(ofd);
    unlink(own);
    /* A runtime directory the user cannot look into is not "no socket". */
    if (getuid() == 0) {
        assert_int_equal(chmod(xdg, 0700), 0);
        as_user();
        assert_string_equal(ec_client_socket(buf, sizeof(buf), sys_sock), own);
        as_self();
    }
    rmdir(xdg);
    close(sfd);
    unlink(sys_sock);
}

/* $EMBCACHE_SOCKET is obeyed as it is, whatever exists. */
static void test_env_wins(void **state)
{
    char buf[600];
    int fd = bind_socket(sys_sock);

    (void)state;
    setenv("EMBCACHE_SOCKET", "/nonexistent/x.sock", 1);
    as_user();
    assert_string_equal(ec_client_socket(buf, sizeof(buf), sys_sock), "/nonexistent/x.sock");
    as_self();
    unsetenv("EMBCACHE_SOCKET");
    close(fd);
    unlink(sys_sock);
}

/* root's default is the system socket already; the parameter changes nothing. */
static void test_root(void **state)
{
    char buf[600];

    (void)state;
    if (geteuid() != 0) {
        printf("not root: the root case did not run\n");
        skip();
    }
    assert_string_equal(ec_client_socket(buf, sizeof(buf), sys_sock), EC_SYSTEM_SOCKET);
    assert_string_equal(ec_default_socket(buf, sizeof(buf)), EC_SYSTEM_SOCKET);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_falls_back_to_system),
        cmocka_unit_test(test_no_system_socket),
        cmocka_unit_test(test_system_path_not_a_socket),
        cmocka_unit_test(test_own_socket_wins),
        cmocka_unit_test(test_env_wins),
        cmocka_unit_test(test_root),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
