/*
 * test_daemon_robust.c - embcached against malformed protocol input.
 *
 * Talks to the daemon that robust.c's group set-up starts (a real embcached
 * with two small imported tensors, its log checked for sanitizer reports at
 * the end) over raw SEQPACKET sockets the way a broken or hostile client
 * would: bytes that are not an embcache message, requests before HELLO,
 * unknown ops, oversized messages, malformed bodies and bad requests,
 * descriptors where none belong. Each case asserts the exact status code
 * (and a part of the message) the spec promises, and after each one
 * daemon_still_serves() proves that a well-behaved client still resolves
 * and gathers correct bytes. Peers that die or never read, other daemons,
 * other uids and bad command lines are test_daemon_peers.c's.
 *
 * The last three cases reproduce bugs this program found; each is named for
 * its bug and fails until it is fixed (see the comment above each).
 *
 * Runs as one process plus a forked child (the NULL-strings client); every
 * wait is bounded, and the daemon dies with this program
 * (PR_SET_PDEATHSIG) should it abort. Takes < 1 s. ECT_VERBOSE=1 prints the
 * daemon's log at the end.
 */
#include "robust.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* 1-4: framing                                                        */

static void test_garbage_bytes(void **state)
{
    uint8_t junk[200];
    unsigned seed = 99;
    int fd;

    (void)state;
    /* Random bytes that are not an embcache header. */
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)rand_r(&seed);
    junk[0] = 'G'; /* never the magic */
    fd = raw_connect();
    raw_send(fd, junk, sizeof(junk));
    expect_error(fd, 0, 0, EC_EPROTO, "bad magic");
    expect_closed(fd);
    close(fd);

    /* Shorter than a header. */
    fd = raw_connect();
    raw_send(fd, "abc", 3);
    expect_error(fd, 0, 0, EC_EPROTO, "shorter than");
    expect_closed(fd);
    close(fd);

    /* Garbage after a valid HELLO is just as fatal. */
    fd = raw_open();
    raw_send(fd, junk, sizeof(junk));
    expect_error(fd, 0, 0, EC_EPROTO, "bad magic");
    expect_closed(fd);
    close(fd);

    /* An empty datagram reads as end of file: the daemon hangs up. */
    fd = raw_connect();
    raw_send(fd, junk, 0);
    expect_closed(fd);
    close(fd);
    daemon_still_serves();
}

static void test_first_message_not_hello(void **state)
{
    uint8_t m[256];
    ec_wbuf w;
    int fd;

    (void)state;
    fd = raw_connect();
    ec_msg_begin(&w, m, sizeof(m), EC_OP_RESOLVE, 5, 0);
    ec_put_str(&w, "robust");
    ec_put_str(&w, "1");
    ec_put_str(&w, "emb");
    raw_send(fd, m, ec_msg_end(&w));
    expect_error(fd, EC_OP_RESOLVE, 5, EC_EPROTO, "HELLO");
    expect_closed(fd);
    close(fd);

    /* STATS before HELLO, too. */
    fd = raw_connect();
    send_req(fd, EC_OP_STATS, 6, NULL, 0);
    expect_error(fd, EC_OP_STATS, 6, EC_EPROTO, "must be HELLO");
    expect_closed(fd);
    close(fd);
    daemon_still_serves();
}

static void test_unknown_op(void **state)
{
    int fd;

    (void)state;
    fd = raw_open();
    send_req(fd, 200, 9, NULL, 0);
    expect_error(fd, 200, 9, EC_EPROTO, "unknown op 200");
    expect_stats_ok(fd, 10);
    send_req(fd, 0, 11, NULL, 0);
    expect_error(fd, 0, 11, EC_EPROTO, "unknown op 0");
    send_req(fd, EC_OP_MAX_, 12, NULL, 0);
    expect_error(fd, EC_OP_MAX_, 12, EC_EPROTO, "unknown op");
    expect_stats_ok(fd, 13);
    close(fd);
    daemon_still_serves();
}

static void test_oversized_message(void **state)
{
    size_t len = EC_MSG_MAX + 1000;
    uint8_t *m = calloc(1, len);
    int fd;

    (void)state;
    assert_non_null(m);
    build(m, len, EC_OP_STATS, 21, 0, NULL, 0);
    {
        uint32_t body = (uint32_t)(len - EC_MSG_HDR);
        memcpy(m + offsetof(ec_msg_hdr, body_len), &body, 4);
    }
    fd = raw_open();
    raw_send(fd, m, len);
    expect_error(fd, EC_OP_STATS, 21, EC_ETOOBIG, "larger than");
    expect_stats_ok(fd, 22);
    /* Exactly EC_MSG_MAX is allowed by the framing (STATS then rejects the body). */
    {
        uint32_t body = EC_MSG_MAX - EC_MSG_HDR;
        build(m, len, EC_OP_STATS, 23, 0, NULL, 0);
        memcpy(m + offsetof(ec_msg_hdr, body_len), &body, 4);
        raw_send(fd, m, EC_MSG_MAX);
        expect_error(fd, EC_OP_STATS, 23, EC_EPROTO, "malformed body for op 6");
    }
    expect_stats_ok(fd, 24);
    close(fd);
    free(m);
    daemon_still_serves();
}

/* ------------------------------------------------------------------ */
/* 5: malformed bodies and bad requests                                */

static void test_malformed_bodies(void **state)
{
    static uint32_t big[EC_FAULT_MAX_PARTS + 8];
    uint8_t m[512], b[128];
    ec_wbuf w;
    size_t len;
    int fd;

    (void)state;
    fd = raw_open();

    /* RESOLVE whose first string claims 1000 bytes in a 20-byte body. */
    memset(b, 'a', sizeof(b));
    b[0] = 0xe8; /* 1000, little-endian */
    b[1] = 0x03;
    send_req(fd, EC_OP_RESOLVE, 31, b, 20);
    expect_error(fd, EC_OP_RESOLVE, 31, EC_EPROTO, "malformed body for op 2");

    /* RESOLVE with a NUL inside a name. */
    ec_msg_begin(&w, m, sizeof(m), EC_OP_RESOLVE, 32, 0);
    ec_put_u16(&w, 3);
    ec_put_u8(&w, 'a');
    ec_put_u8(&w, 0);
    ec_put_u8(&w, 'b');
    ec_put_str(&w, "1");
    ec_put_str(&w, "emb");
    raw_send(fd, m, ec_msg_end(&w));
    expect_error(fd, EC_OP_RESOLVE, 32, EC_EPROTO, "malformed body");

    /* RESOLVE with trailing bytes. */
    ec_msg_begin(&w, m, sizeof(m), EC_OP_RESOLVE, 33, 0);
    ec_put_str(&w, "robust");
    ec_put_str(&w, "1");
    ec_put_str(&w, "emb");
    ec_put_u8(&w, 0);
    raw_send(fd, m, ec_msg_end(&w));
    expect_error(fd, EC_OP_RESOLVE, 33, EC_EPROTO, "trailing");

    /* RESOLVE of an unknown model. */
    ec_msg_begin(&w, m, sizeof(m), EC_OP_RESOLVE, 34, 0);
    ec_put_str(&w, "no-such-model");
    ec_put_str(&w, "1");
    ec_put_str(&w, "emb");
    raw_send(fd, m, ec_msg_end(&w));
    expect_error(fd, EC_OP_RESOLVE, 34, EC_ENOENT, NULL);

    /* FAULT with n = 0. */
    {
        uint32_t f[2] = {small_id, 0};
        send_req(fd, EC_OP_FAULT, 41, f, sizeof(f));
        expect_error(fd, EC_OP_FAULT, 41, EC_EPROTO, "asks for 0 partitions");
    }
    /* FAULT with n one past the limit (and the parts to match). */
    {
        uint32_t n = EC_FAULT_MAX_PARTS + 1;
        char want[64];
        big[0] = small_id;
        big[1] = n;
        for (uint32_t i = 0; i < n && 2 + i < EC_FAULT_MAX_PARTS + 8; i++)
            big[2 + i] = 0;
        /* The whole thing does not fit in one message; send what fits. */
        send_req(fd, EC_OP_FAULT, 42, big, EC_MSG_MAX - EC_MSG_HDR);
        snprintf(want, sizeof(want), "asks for %u partitions", n);
        expect_error(fd, EC_OP_FAULT, 42, EC_EPROTO, want);
        big[1] = 0xffffffffu;
        send_req(fd, EC_OP_FAULT, 43, big, 8);
        expect_error(fd, EC_OP_FAULT, 43, EC_EPROTO, "asks for 4294967295 partitions");
    }
    /* The largest FAULT there is: accepted (partitions of still_serves' range). */
    {
        reply r;
        big[0] = small_id;
        big[1] = EC_FAULT_MAX_PARTS;
        for (uint32_t i = 0; i < EC_FAULT_MAX_PARTS; i++)
            big[2 + i] = i % (SERVE_ROWS / 32);
        send_req(fd, EC_OP_FAULT, 40, big, 8 + 4 * (size_t)EC_FAULT_MAX_PARTS);
        recv_reply(fd, &r);
        if (r.h.status != 0)
            fail_msg("FAULT of %u partitions: %d %s", (unsigned)EC_FAULT_MAX_PARTS,
                     r.h.status, r.msg);
        assert_int_equal(r.h.req_id, 40);
    }
    /* FAULT with n = 3 and two parts. */
    {
        uint32_t f[4] = {small_id, 3, 0, 1};
        send_req(fd, EC_OP_FAULT, 44, f, sizeof(f));
        expect_error(fd, EC_OP_FAULT, 44, EC_EPROTO, "malformed body for op 3");
    }
    /* FAULT with n = 1, one part and trailing bytes. */
    {
        uint8_t f[15] = {0};
        uint32_t v[3] = {small_id, 1, 0};
        memcpy(f, v, sizeof(v));
        send_req(fd, EC_OP_FAULT, 45, f, sizeof(f));
        expect_error(fd, EC_OP_FAULT, 45, EC_EPROTO, "malformed body for op 3");
    }
    /* FAULT with a truncated header field. */
    send_req(fd, EC_OP_FAULT, 46, b, 3);
    expect_error(fd, EC_OP_FAULT, 46, EC_EPROTO, "FAULT");
    /* FAULT of a tensor id that does not exist. */
    send_fault(fd, 47, 999999u, 0);
    expect_error(fd, EC_OP_FAULT, 47, EC_ENOENT, NULL);
    send_fault(fd, 48, 0, 0);
    expect_error(fd, EC_OP_FAULT, 48, EC_ENOENT, NULL);
    /* FAULT of a partition past the end. */
    send_fault(fd, 49, small_id, small_parts);
    expect_error(fd, EC_OP_FAULT, 49, EC_ERANGE, "partitions");
    send_fault(fd, 50, small_id, 0xffffffffu);
    expect_error(fd, EC_OP_FAULT, 50, EC_ERANGE, "partitions");
    /* A good FAULT still works on this connection. */
    {
        reply r;
        send_fault(fd, 51, small_id, 1);
        recv_reply(fd, &r);
        assert_int_equal(r.h.status, 0);
        assert_int_equal(r.h.op, EC_OP_FAULT | EC_OP_REPLY);
        assert_int_equal(r.h.req_id, 51);
    }
    /* PIN: bad body, unknown tensor. */
    send_req(fd, EC_OP_PIN, 52, b, 3);
    expect_error(fd, EC_OP_PIN, 52, EC_EPROTO, "malformed body for op 4");
    {
        uint32_t id = 999999u;
        send_req(fd, EC_OP_PIN, 53, &id, sizeof(id));
        expect_error(fd, EC_OP_PIN, 53, EC_ENOENT, NULL);
    }
    /* UNPIN of a pin never taken; and a short body. */
    {
        uint64_t pin = 123456789u;
        send_req(fd, EC_OP_UNPIN, 61, &pin, sizeof(pin));
        expect_error(fd, EC_OP_UNPIN, 61, EC_ENOENT, "no pin 123456789");
        send_req(fd, EC_OP_UNPIN, 62, &pin, 4);
        expect_error(fd, EC_OP_UNPIN, 62, EC_EPROTO, "malformed body for op 5");
    }
    /* STATS with a body. */
    send_req(fd, EC_OP_STATS, 63, b, 1);
    expect_error(fd, EC_OP_STATS, 63, EC_EPROTO, "malformed body for op 6");
    /* LIST and ALIAS with short bodies. */
    send_req(fd, EC_OP_LIST, 64, b, 1);
    expect_error(fd, EC_OP_LIST, 64, EC_EPROTO, "malformed body for op 7");
    send_req(fd, EC_OP_ALIAS, 65, b, 1);
    expect_error(fd, EC_OP_ALIAS, 65, EC_EPROTO, "malformed body for op 8");
    /* IMPORT that names one file and carries no descriptor. */
    ec_msg_begin(&w, m, sizeof(m), EC_OP_IMPORT, 66, 0);
    ec_put_str(&w, "robust");
    ec_put_i64(&w, 2);
    ec_put_i64(&w, -1);
    ec_put_str(&w, "");
    ec_put_u64(&w, 0);
    ec_put_u32(&w, 1);
    ec_put_str(&w, "x.npy");
    raw_send(fd, m, ec_msg_end(&w));
    expect_error(fd, EC_OP_IMPORT, 66, EC_EPROTO, "descriptors");
    /* A second HELLO. */
    ec_msg_begin(&w, m, sizeof(m), EC_OP_HELLO, 67, 0);
    ec_put_u32(&w, 0);
    ec_put_str(&w, "again");
    raw_send(fd, m, ec_msg_end(&w));
    expect_error(fd, EC_OP_HELLO, 67, EC_EPROTO, "HELLO sent twice");
    /* A request with the reply flag set, and one with a status. */
    send_req(fd, EC_OP_STATS | EC_OP_REPLY, 68, NULL, 0);
    expect_error(fd, EC_OP_STATS | EC_OP_REPLY, 68, EC_EPROTO, "reply flag");
    len = build(m, sizeof(m), EC_OP_STATS, 69, EC_EIO, NULL, 0);
    raw_send(fd, m, len);
    expect_error(fd, EC_OP_STATS, 69, EC_EPROTO, "status");
    /* After all that, the connection still works. */
    expect_stats_ok(fd, 70);
    close(fd);

    /* Header errors are fatal: wrong version, reserved bits, length. */
    {
        ec_msg_hdr *h = (ec_msg_hdr *)(void *)m;

        fd = raw_open();
        len = build(m, sizeof(m), EC_OP_STATS, 71, 0, NULL, 0);
        h->version = EC_PROTO_VERSION + 1;
        raw_send(fd, m, len);
        {
            char want[64];
            snprintf(want, sizeof(want), "protocol version %u", EC_PROTO_VERSION + 1);
            expect_error(fd, 0, 0, EC_EVERSION, want);
        }
        expect_closed(fd);
        close(fd);

        fd = raw_connect(); /* before HELLO as well */
        len = build(m, sizeof(m), EC_OP_HELLO, 72, 0, NULL, 0);
        h->version = 0;
        raw_send(fd, m, len);
        expect_error(fd, 0, 0, EC_EVERSION, "protocol version 0");
        expect_closed(fd);
        close(fd);

        fd = raw_open();
        len = build(m, sizeof(m), EC_OP_STATS, 73, 0, NULL, 0);
        h->reserved = 1;
        raw_send(fd, m, len);
        expect_error(fd, 0, 0, EC_EPROTO, NULL);
        expect_closed(fd);
        close(fd);

        fd = raw_open();
        len = build(m, sizeof(m), EC_OP_STATS, 74, 0, b, 8);
        h->body_len = 4;
        raw_send(fd, m, len);
        expect_error(fd, 0, 0, EC_EPROTO, "claims a 4-byte body, 8 bytes arrived");
        expect_closed(fd);
        close(fd);
    }
    daemon_still_serves();
}

/* ------------------------------------------------------------------ */
/* 6: descriptors where none belong                                    */

static void wait_fd_count(int want)
{
    int n = -1;

    for (int i = 0; i < 200; i++) {
        n = count_fds(wpid);
        if (n == want)
            return;
        sleep_ms(10);
    }
    fail_msg("embcached has %d descriptors open, %d before: it leaked %d", n, want,
             n - want);
}

static void test_fds_on_wrong_op(void **state)
{
    uint8_t m[64];
    int p[2], fd, before, fds[EC_MSG_MAX_FDS];
    size_t len;

    (void)state;
    wait_clients(1);
    before = count_fds(wpid);
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);

    fd = raw_open();
    len = build(m, sizeof(m), EC_OP_STATS, 81, 0, NULL, 0);
    assert_int_equal(ec_msg_send(fd, m, len, &p[0], 1, false), 0);
    expect_error(fd, EC_OP_STATS, 81, EC_EPROTO, "does not take file descriptors");
    /* Both ends of the pipe at once, with FAULT. */
    {
        uint32_t f[3] = {small_id, 1, 0};
        len = build(m, sizeof(m), EC_OP_FAULT, 82, 0, f, sizeof(f));
        assert_int_equal(ec_msg_send(fd, m, len, p, 2, false), 0);
        expect_error(fd, EC_OP_FAULT, 82, EC_EPROTO, "op 3 does not take");
    }
    /* The most descriptors one message may carry. */
    for (int i = 0; i < EC_MSG_MAX_FDS; i++)
        fds[i] = p[i % 2];
    len = build(m, sizeof(m), EC_OP_STATS, 83, 0, NULL, 0);
    assert_int_equal(ec_msg_send(fd, m, len, fds, EC_MSG_MAX_FDS, false), 0);
    expect_error(fd, EC_OP_STATS, 83, EC_EPROTO, "does not take file descriptors");
    expect_stats_ok(fd, 84);
    /* More descriptors than the daemon takes: the message is refused whole. */
    len = build(m, sizeof(m), EC_OP_STATS, 85, 0, NULL, 0);
    send_with_fds(fd, m, len, p[0], 100);
    expect_error(fd, EC_OP_STATS, 85, EC_ETOOBIG, "descriptors");
    expect_stats_ok(fd, 86);
    close(fd);

    /* Descriptors with a message that is not embcache's, before HELLO. */
    fd = raw_connect();
    memset(m, 'x', sizeof(m));
    assert_int_equal(ec_msg_send(fd, m, 40, p, 2, false), 0);
    expect_error(fd, 0, 0, EC_EPROTO, "bad magic");
    expect_closed(fd);
    close(fd);

    /* Descriptors on a well-formed request before HELLO. */
    fd = raw_connect();
    len = build(m, sizeof(m), EC_OP_STATS, 87, 0, NULL, 0);
    assert_int_equal(ec_msg_send(fd, m, len, p, 2, false), 0);
    expect_error(fd, EC_OP_STATS, 87, EC_EPROTO, NULL);
    expect_closed(fd);
    close(fd);

    close(p[0]);
    close(p[1]);
    wait_clients(1);
    wait_fd_count(before);
    daemon_still_serves();
    wait_fd_count(before);
}

/* ------------------------------------------------------------------ */
/* Bugs found by this program; each test is named for its bug.          */

/* ec_put_str() documents "NULL is \"\"" but passed NULL on to memcpy (UB:
 * UBSan aborts), so ec_model_import() with the default params_json = NULL
 * and ec_catalog_list() of every model (model = NULL) crashed sanitized
 * builds. Run in a child so that an abort fails this case only. */
static int count_cb(const ec_version_info *v, const ec_tensor_listing *t, void *arg)
{
    (void)v;
    (void)t;
    (*(int *)arg)++;
    return 0;
}

/* Row updates whose bodies lie about their sizes, or name a tensor that is
 * not a dynamic table: refused with a message, nothing else changes. */
static void test_malformed_row_batches(void **state)
{
    uint8_t m[1024];
    ec_wbuf w;
    int fd;

    (void)state;
    fd = raw_open();
    /* n = 1000 rows of 128 bytes announced inline, 16 bytes sent. */
    ec_msg_begin(&w, m, sizeof(m), EC_OP_ROWS_PUT, 61, 0);
    ec_put_u32(&w, small_id);
    ec_put_u32(&w, 1000);
    ec_put_u64(&w, 128);
    ec_put_u32(&w, 1);
    ec_put_u64(&w, 1);
    ec_put_u64(&w, 2);
    raw_send(fd, m, ec_msg_end(&w));
    expect_error(fd, EC_OP_ROWS_PUT, 61, EC_EPROTO, "does not fit");
    /* More rows than a batch may hold. */
    ec_msg_begin(&w, m, sizeof(m), EC_OP_ROWS_DEL, 62, 0);
    ec_put_u32(&w, small_id);
    ec_put_u32(&w, 0xffffffffu);
    ec_put_u32(&w, 1);
    raw_send(fd, m, ec_msg_end(&w));
    expect_error(fd, EC_OP_ROWS_DEL, 62, EC_EPROTO, "malformed body");
    /* Out of line with no descriptor. */
    ec_msg_begin(&w, m, sizeof(m), EC_OP_ROWS_DEL, 63, 0);
    ec_put_u32(&w, small_id);
    ec_put_u32(&w, 4);
    ec_put_u32(&w, 0);
    raw_send(fd, m, ec_msg_end(&w));
    expect_error(fd, EC_OP_ROWS_DEL, 63, EC_EPROTO, "one file descriptor");
    /* A well-formed batch for a tensor that is not dynamic. */
    ec_msg_begin(&w, m, sizeof(m), EC_OP_ROWS_PUT, 64, 0);
    ec_put_u32(&w, small_id);
    ec_put_u32(&w, 1);
    ec_put_u64(&w, SMALL_DIM * 4);
    ec_put_u32(&w, 1);
    ec_put_u64(&w, 5);
    for (unsigned i = 0; i < SMALL_DIM; i++)
        ec_put_u32(&w, i);
    raw_send(fd, m, ec_msg_end(&w));
    expect_error(fd, EC_OP_ROWS_PUT, 64, EC_ENOENT, "not a dynamic table");
    expect_stats_ok(fd, 65);
    close(fd);
    daemon_still_serves();
}

static void test_put_str_null_is_empty(void **state)
{
    pid_t pid;
    int status;

    (void)state;
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ec_client *c;
        ec_import_opts o = {.model = "nullparams", .version = 1, .round = -1};
        const char *paths[1] = {small_npy};
        int n = 0;

        if (ec_client_connect(sock_path, &c))
            _exit(3);
        if (ec_model_import(c, &o, paths, 1, NULL)) {
            dprintf(2, "import with params_json NULL: %s\n", ec_last_error());
            _exit(4);
        }
        if (ec_catalog_list(c, NULL, count_cb, &n) || n < 3) {
            dprintf(2, "ec_catalog_list(NULL): %s (%d records)\n", ec_last_error(), n);
            _exit(5);
        }
        ec_client_close(c);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("a client passing NULL strings (params_json, the LIST model) ended with "
                 "status 0x%x: core/proto.c ec_put_str(w, NULL) calls memcpy(dst, NULL, 0)",
                 status);
    daemon_still_serves();
}

/* An EC_ETOOBIG receive (a message or descriptor list truncated) was
 * answered with the op and req_id of whatever header the server's shared
 * receive buffer last held -- possibly another connection's request. */
static void test_toobig_reply_echoes_stale_header(void **state)
{
    int a, b, p[2];
    reply r;

    (void)state;
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    a = raw_open();
    expect_stats_ok(a, 4444);
    b = raw_connect();
    send_with_fds(b, "abc", 3, p[0], 100);
    recv_reply(b, &r);
    close(p[0]);
    close(p[1]);
    print_message("3 bytes + 100 descriptors: reply op 0x%x req %u status %d (%s)\n", r.h.op,
                  r.h.req_id, r.h.status, r.msg);
    close(b);
    expect_stats_ok(a, 4445);
    close(a);
    daemon_still_serves();
    assert_true(r.h.status == EC_ETOOBIG || r.h.status == EC_EPROTO);
    if (r.h.req_id == 4444 || r.h.op == (EC_OP_STATS | EC_OP_REPLY))
        fail_msg("the reply to a 3-byte message carries op 0x%x request %u: another "
                 "connection's request header (core/server.c conn_readable, EC_ETOOBIG "
                 "branch, reads the stale s->buf)", r.h.op, r.h.req_id);
    assert_int_equal(r.h.op, EC_OP_REPLY);
    assert_int_equal(r.h.req_id, 0);
}

/* A message too large for the buffer whose header is not even embcache's
 * was answered with its garbage op and req_id and the connection kept open,
 * though "not an embcache message" closes a connection everywhere else. */
static void test_oversized_garbage_closes(void **state)
{
    size_t len = EC_MSG_MAX + 1000;
    uint8_t *m = malloc(len);
    unsigned seed = 5;
    char b[64];
    ssize_t n;
    reply r;
    int fd;

    (void)state;
    assert_non_null(m);
    for (size_t i = 0; i < len; i++)
        m[i] = (uint8_t)rand_r(&seed);
    m[0] = 'G';
    fd = raw_connect();
    raw_send(fd, m, len);
    free(m);
    recv_reply(fd, &r);
    print_message("oversized garbage: reply op 0x%x req %u status %d (%s)\n", r.h.op,
                  r.h.req_id, r.h.status, r.msg);
    assert_true(r.h.status == EC_ETOOBIG || r.h.status == EC_EPROTO);
    set_rcvtimeo_ms(fd, 1000);
    n = recv(fd, b, sizeof(b), 0);
    close(fd);
    if (!(n == 0 || (n < 0 && errno == ECONNRESET)))
        fail_msg("after an oversized message with bad magic the daemon kept the connection "
                 "open (recv: %zd, %s): core/server.c conn_readable's EC_ETOOBIG branch "
                 "never checks the header it did receive", n,
                 n < 0 ? strerror(errno) : "a message");
    daemon_still_serves();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_garbage_bytes),
        cmocka_unit_test(test_first_message_not_hello),
        cmocka_unit_test(test_unknown_op),
        cmocka_unit_test(test_oversized_message),
        cmocka_unit_test(test_malformed_bodies),
        cmocka_unit_test(test_fds_on_wrong_op),
        cmocka_unit_test(test_malformed_row_batches),
        cmocka_unit_test(test_put_str_null_is_empty),
        cmocka_unit_test(test_toobig_reply_echoes_stale_header),
        cmocka_unit_test(test_oversized_garbage_closes),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
