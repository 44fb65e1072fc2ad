/*
 * test_proto.c - core/proto: the codec's bounds and validation, and the
 * SEQPACKET transport with descriptors, oversized messages and a
 * mutation fuzz of the header and field readers.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/err.h"
#include "core/proto.h"
#include "testutil.h"

static uint8_t buf[EC_MSG_MAX];

static size_t sample(uint8_t *b, size_t cap)
{
    ec_wbuf w;
    ec_msg_begin(&w, b, cap, EC_OP_RESOLVE, 77, 0);
    ec_put_u8(&w, 0xab);
    ec_put_u16(&w, 0xbeef);
    ec_put_u32(&w, 0xdeadbeef);
    ec_put_u64(&w, 0x0123456789abcdefULL);
    ec_put_i64(&w, -5);
    ec_put_str(&w, "bert-base");
    ec_put_str(&w, NULL);
    return ec_msg_end(&w);
}

static void test_roundtrip(void **state)
{
    ec_msg_hdr h;
    ec_rbuf r;
    char s[64];
    size_t len = sample(buf, sizeof(buf));

    (void)state;
    assert_true(len > EC_MSG_HDR);
    assert_int_equal(ec_msg_parse(buf, len, &h, &r), 0);
    assert_int_equal(h.op, EC_OP_RESOLVE);
    assert_int_equal(h.req_id, 77);
    assert_int_equal(ec_get_u8(&r), 0xab);
    assert_int_equal(ec_get_u16(&r), 0xbeef);
    assert_int_equal(ec_get_u32(&r), 0xdeadbeef);
    assert_true(ec_get_u64(&r) == 0x0123456789abcdefULL);
    assert_true(ec_get_i64(&r) == -5);
    ec_get_str(&r, s, sizeof(s));
    assert_string_equal(s, "bert-base");
    ec_get_str(&r, s, sizeof(s));
    assert_string_equal(s, "");
    assert_true(ec_rbuf_done(&r));
}

static void test_reader_bounds(void **state)
{
    ec_msg_hdr h;
    ec_rbuf r;
    char s[4];
    size_t len = sample(buf, sizeof(buf));

    (void)state;
    /* A string longer than the destination marks the buffer bad. */
    assert_int_equal(ec_msg_parse(buf, len, &h, &r), 0);
    r.pos = 1 + 2 + 4 + 8 + 8;
    ec_get_str(&r, s, sizeof(s));
    assert_true(r.bad);
    assert_string_equal(s, "");
    /* Reading past the end marks it bad and yields zeros. */
    assert_int_equal(ec_msg_parse(buf, len, &h, &r), 0);
    r.pos = r.len - 1;
    assert_int_equal(ec_get_u32(&r), 0);
    assert_true(r.bad);
    assert_false(ec_rbuf_done(&r));
    /* Unread trailing bytes are not "done". */
    assert_int_equal(ec_msg_parse(buf, len, &h, &r), 0);
    (void)ec_get_u8(&r);
    assert_false(ec_rbuf_done(&r));
    /* An embedded NUL in a string is refused. */
    {
        ec_wbuf w;
        uint8_t m[64];
        char d[16];
        ec_msg_begin(&w, m, sizeof(m), EC_OP_ALIAS, 1, 0);
        ec_put_u16(&w, 3);
        ec_put_u8(&w, 'a');
        ec_put_u8(&w, 0);
        ec_put_u8(&w, 'b');
        len = ec_msg_end(&w);
        assert_int_equal(ec_msg_parse(m, len, &h, &r), 0);
        ec_get_str(&r, d, sizeof(d));
        assert_true(r.bad);
    }
}

static void test_header_validation(void **state)
{
    ec_msg_hdr h, *hp = (ec_msg_hdr *)(void *)buf;
    ec_rbuf r;
    size_t len = sample(buf, sizeof(buf));

    (void)state;
    assert_int_equal(ec_msg_parse(buf, 10, &h, &r), EC_EPROTO);
    assert_int_equal(ec_msg_parse(buf, len - 1, &h, &r), EC_EPROTO);
    assert_non_null(strstr(ec_last_error(), "body"));
    hp->version = 9;
    assert_int_equal(ec_msg_parse(buf, len, &h, &r), EC_EVERSION);
    assert_non_null(strstr(ec_last_error(), "version 9"));
    hp->version = EC_PROTO_VERSION;
    hp->reserved = 1;
    assert_int_equal(ec_msg_parse(buf, len, &h, &r), EC_EPROTO);
    hp->reserved = 0;
    hp->magic = 0x47455420; /* "GET " */
    assert_int_equal(ec_msg_parse(buf, len, &h, &r), EC_EPROTO);
    assert_non_null(strstr(ec_last_error(), "magic"));
}

static void test_writer_overflow(void **state)
{
    ec_wbuf w;
    uint8_t small[EC_MSG_HDR + 6];
    char big[70000];

    (void)state;
    ec_msg_begin(&w, small, sizeof(small), EC_OP_STATS, 1, 0);
    ec_put_u32(&w, 1);
    assert_int_equal(ec_wbuf_room(&w), 2);
    ec_put_u32(&w, 2);
    assert_true(w.overflow);
    assert_int_equal(ec_msg_end(&w), 0);
    /* A string longer than u16 cannot be encoded. */
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ec_msg_begin(&w, buf, sizeof(buf), EC_OP_STATS, 1, 0);
    ec_put_str(&w, big);
    assert_int_equal(ec_msg_end(&w), 0);
}

static void test_tensor_record(void **state)
{
    ec_proto_tensor t = {.id = 3, .version = 2, .dtype = EC_DTYPE_F16, .ndim = 3,
                         .shape = {10, 4, 2}, .rows = 10, .row_bytes = 16,
                         .rows_per_partition = 3, .partitions = 4}, u;
    ec_wbuf w;
    ec_msg_hdr h;
    ec_rbuf r;
    size_t len;

    (void)state;
    strcpy(t.model, "m");
    strcpy(t.name, "enc/layer.0:w");
    ec_msg_begin(&w, buf, sizeof(buf), EC_OP_RESOLVE | EC_OP_REPLY, 1, 0);
    ec_put_tensor(&w, &t);
    len = ec_msg_end(&w);
    assert_int_equal(ec_msg_parse(buf, len, &h, &r), 0);
    assert_int_equal(ec_get_tensor(&r, &u), 0);
    assert_true(ec_rbuf_done(&r));
    assert_int_equal(u.id, t.id);
    assert_string_equal(u.model, t.model);
    assert_string_equal(u.name, t.name);
    assert_true(u.version == t.version);
    assert_int_equal(u.dtype, t.dtype);
    assert_int_equal(u.ndim, t.ndim);
    assert_memory_equal(u.shape, t.shape, sizeof(t.shape));
    assert_true(u.rows == t.rows && u.row_bytes == t.row_bytes &&
                u.rows_per_partition == t.rows_per_partition && u.partitions == t.partitions);

    /* Each inconsistency is refused. */
    struct { size_t off; uint64_t v; } bad[] = {
        {offsetof(ec_proto_tensor, row_bytes), 15},
        {offsetof(ec_proto_tensor, partitions), 3},
        {offsetof(ec_proto_tensor, rows), 11},
        {offsetof(ec_proto_tensor, rows_per_partition), 0},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ec_proto_tensor x = t;
        memcpy((uint8_t *)&x + bad[i].off, &bad[i].v, 8);
        ec_msg_begin(&w, buf, sizeof(buf), 0, 1, 0);
        ec_put_tensor(&w, &x);
        len = ec_msg_end(&w);
        assert_int_equal(ec_msg_parse(buf, len, &h, &r), 0);
        assert_int_equal(ec_get_tensor(&r, &u), EC_EPROTO);
    }
    t.dtype = 42;
    ec_msg_begin(&w, buf, sizeof(buf), 0, 1, 0);
    ec_put_tensor(&w, &t);
    len = ec_msg_end(&w);
    assert_int_equal(ec_msg_parse(buf, len, &h, &r), 0);
    assert_int_equal(ec_get_tensor(&r, &u), EC_EPROTO);
}

/* fuzz_proto found records whose sizes agree only after wrapping around
 * 64 bits: an empty first dimension let the row size overflow unchecked,
 * and a row of 2^63 f16 elements is 0 bytes modulo 2^64. Both are refused. */
static void test_tensor_record_wrapping_sizes_refused(void **state)
{
    ec_proto_tensor cases[2] = {
        {.id = 1, .dtype = EC_DTYPE_F32, .ndim = 3, .shape = {0, 1ULL << 40, 1ULL << 40},
         .rows = 0, .row_bytes = 0, .rows_per_partition = 1, .partitions = 0},
        {.id = 1, .dtype = EC_DTYPE_F16, .ndim = 2, .shape = {1, 1ULL << 63}, .rows = 1,
         .row_bytes = 0, .rows_per_partition = 1, .partitions = 1},
    };
    ec_proto_tensor u;
    ec_wbuf w;
    ec_msg_hdr h;
    ec_rbuf r;

    (void)state;
    for (int i = 0; i < 2; i++) {
        ec_msg_begin(&w, buf, sizeof(buf), 0, 1, 0);
        ec_put_tensor(&w, &cases[i]);
        assert_int_equal(ec_msg_parse(buf, ec_msg_end(&w), &h, &r), 0);
        assert_int_equal(ec_get_tensor(&r, &u), EC_EPROTO);
        assert_non_null(strstr(ec_last_error(), "overflows"));
    }
}

static void test_transport_with_fds(void **state)
{
    int sv[2], fds[4], nfds = 0, p[2];
    static uint8_t in[EC_MSG_MAX];
    size_t len = sample(buf, sizeof(buf));
    ssize_t n;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
    assert_int_equal(pipe(p), 0);
    assert_int_equal(ec_msg_send(sv[0], buf, len, p, 2, false), 0);
    n = ec_msg_recv(sv[1], in, sizeof(in), fds, &nfds, 4);
    assert_int_equal(n, (ssize_t)len);
    assert_int_equal(nfds, 2);
    assert_memory_equal(in, buf, len);
    /* The received write end works. */
    assert_int_equal(write(fds[1], "x", 1), 1);
    char ch;
    assert_int_equal(read(p[0], &ch, 1), 1);
    close(fds[0]);
    close(fds[1]);

    /* Descriptors nobody asked for are closed and the message refused. */
    assert_int_equal(ec_msg_send(sv[0], buf, len, p, 1, false), 0);
    n = ec_msg_recv(sv[1], in, sizeof(in), NULL, NULL, 0);
    assert_int_equal(n, EC_ETOOBIG);

    /* An oversized message is truncated and reported. */
    {
        static uint8_t huge[EC_MSG_MAX + 100];
        memcpy(huge, buf, len);
        assert_true(send(sv[0], huge, sizeof(huge), 0) == (ssize_t)sizeof(huge));
        n = ec_msg_recv(sv[1], in, sizeof(in), fds, &nfds, 4);
        assert_int_equal(n, EC_ETOOBIG);
    }
    /* Orderly close reads as 0; sending to a closed peer is EC_ECONN. */
    close(sv[0]);
    assert_int_equal(ec_msg_recv(sv[1], in, sizeof(in), fds, &nfds, 4), 0);
    assert_int_equal(ec_msg_send(sv[1], buf, len, NULL, 0, false), EC_ECONN);
    close(sv[1]);
    close(p[0]);
    close(p[1]);
}

static void test_error_reply(void **state)
{
    int sv[2];
    static uint8_t in[EC_MSG_MAX];
    ec_msg_hdr h;
    ec_rbuf r;
    char msg[EC_ERRMSG_MAX];
    ssize_t n;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
    ec_seterr(EC_ENOENT, "unknown model 'x'");
    assert_int_equal(ec_msg_send_error(sv[0], EC_OP_RESOLVE, 9, EC_ENOENT, NULL), 0);
    n = ec_msg_recv(sv[1], in, sizeof(in), NULL, NULL, 0);
    assert_true(n > 0);
    assert_int_equal(ec_msg_parse(in, (size_t)n, &h, &r), 0);
    assert_int_equal(h.op, EC_OP_RESOLVE | EC_OP_REPLY);
    assert_int_equal(h.req_id, 9);
    assert_int_equal(h.status, EC_ENOENT);
    ec_get_str(&r, msg, sizeof(msg));
    assert_true(ec_rbuf_done(&r));
    assert_string_equal(msg, "unknown model 'x'");
    close(sv[0]);
    close(sv[1]);
}

/* A daemon that refuses a client sends why and closes with the client's
 * HELLO unread. The kernel then resets the client's socket, and a seqpacket
 * socket reports the reset before the queued refusal: the refusal must
 * still be read first, and the reset reported after it. */
static void test_error_before_reset(void **state)
{
    int sv[2];
    static uint8_t in[EC_MSG_MAX];
    ec_msg_hdr h;
    ec_rbuf r;
    char msg[EC_ERRMSG_MAX];
    uint8_t hello[EC_MSG_HDR];
    ec_wbuf w;
    ssize_t n;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
    ec_msg_begin(&w, hello, sizeof(hello), EC_OP_HELLO, 1, 0);
    assert_int_equal(ec_msg_send(sv[1], hello, ec_msg_end(&w), NULL, 0, false), 0);
    assert_int_equal(ec_msg_send_error(sv[0], EC_OP_HELLO, 0, EC_EPERM, "uid 7 may not"), 0);
    close(sv[0]); /* the HELLO unread: sv[1] is reset */
    n = ec_msg_recv(sv[1], in, sizeof(in), NULL, NULL, 0);
    if (n <= 0)
        fail_msg("the refusal was lost to the reset: %s", ec_last_error());
    assert_int_equal(ec_msg_parse(in, (size_t)n, &h, &r), 0);
    assert_int_equal(h.status, EC_EPERM);
    ec_get_str(&r, msg, sizeof(msg));
    assert_string_equal(msg, "uid 7 may not");
    n = ec_msg_recv(sv[1], in, sizeof(in), NULL, NULL, 0);
    assert_true(n <= 0);
    close(sv[1]);
}

/* Random mutations of a valid message never make the reader read out of
 * bounds (ASan builds check that) and are either parsed or refused. */
static void test_mutation_fuzz(void **state)
{
    static uint8_t m[EC_MSG_MAX];
    unsigned seed = 1;
    size_t base = sample(buf, sizeof(buf)), refused = 0;

    (void)state;
    for (int it = 0; it < 100000; it++) {
        size_t len = base;
        ec_msg_hdr h;
        ec_rbuf r;
        ec_proto_tensor t;
        char s[300];

        memcpy(m, buf, base);
        for (int k = rand_r(&seed) % 4; k >= 0; k--)
            m[rand_r(&seed) % base] = (uint8_t)rand_r(&seed);
        if (rand_r(&seed) % 4 == 0)
            len = (size_t)rand_r(&seed) % (base + 1);
        if (ec_msg_parse(m, len, &h, &r)) {
            refused++;
            continue;
        }
        while (!r.bad && r.pos < r.len) {
            switch (rand_r(&seed) % 4) {
            case 0: ec_get_str(&r, s, sizeof(s)); break;
            case 1: (void)ec_get_u64(&r); break;
            case 2: (void)ec_get_tensor(&r, &t); break;
            default: (void)ec_get_u8(&r); break;
            }
        }
        assert_true(r.pos <= r.len);
    }
    assert_true(refused > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_reader_bounds),
        cmocka_unit_test(test_header_validation),
        cmocka_unit_test(test_writer_overflow),
        cmocka_unit_test(test_tensor_record),
        cmocka_unit_test(test_tensor_record_wrapping_sizes_refused),
        cmocka_unit_test(test_transport_with_fds),
        cmocka_unit_test(test_error_reply),
        cmocka_unit_test(test_error_before_reset),
        cmocka_unit_test(test_mutation_fuzz),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
