/*
 * test_rcluster_fake.c - core/rcluster*.c against fake servers: threads in
 * this process that listen on loopback and answer garbage, bad slot maps,
 * oversized, truncated or mistyped replies, redirect loops, refusals, a
 * value that trickles in, or nothing. Every bad answer must become a clear
 * error (never a wrong value), a good one survive being cut into pieces,
 * and both again through ec_rcluster_mget_into (values read into a place of
 * the caller's own, header first). The live cluster tests are in
 * test_rcluster.c. Needs nothing installed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "core/rcluster.h"
#include "testutil.h"

#define MIB (1024 * 1024)

/* ------------------------------------------------------------------------
 * Fake servers: a thread that answers each command by mode */

enum fake_mode {
    FAKE_GARBAGE,      /* "!!!" to anything */
    FAKE_SLOT_RANGE,   /* CLUSTER SLOTS with slot 20000 */
    FAKE_OVERLAP,      /* two ranges claim slot 100 */
    FAKE_PORT0,        /* a master on port 0 */
    FAKE_BADHOST,      /* a master named "a b" */
    FAKE_HUGE_ARRAY,   /* *2000000000 */
    FAKE_NOSLOTS,      /* an empty map */
    FAKE_MAP_BIGGET,   /* a valid map to itself; GET -> $999999999 */
    FAKE_MAP_INTGET,   /* a valid map to itself; GET -> :5 */
    FAKE_MAP_STALL,    /* a valid map to itself; GET -> nothing */
    FAKE_MAP_MOVELOOP, /* a valid map to itself; GET -> MOVED to itself */
    FAKE_MAP_OOM,      /* a valid map to itself; SET -> -OOM */
    FAKE_MAP_FLAKY,    /* a valid map; GET -> TRYAGAIN, CLUSTERDOWN, LOADING, "bar" */
    FAKE_MAP_NOCRLF,   /* a valid map to itself; GET -> a 100000-byte value, in two
                        * sends, ending in "ZZ" instead of CRLF */
    FAKE_MAP_LONGOK,   /* the same value ending in CRLF */
    FAKE_MAP_LEADZERO, /* the same value ending in CRLF, its length "0100000" */
    FAKE_MAP_BIGARRAY, /* a valid map to itself; GET -> an array of 48 values of
                        * 512 KiB each (24 MiB in all) */
    FAKE_MAP_TRICKLE,  /* the same value in 4 KiB pieces 25 ms apart (600 ms) */
};

typedef struct fake {
    int lfd, port;
    enum fake_mode mode;
    volatile int stop;
    pthread_t th;
    unsigned gets;
} fake;

static void send_all(int fd, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t w = send(fd, s, len, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        s += w;
        len -= (size_t)w;
    }
}

static void fake_answer(fake *f, int fd, const char *cmd)
{
    char buf[512];

    if (strcasecmp(cmd, "CLUSTER") == 0) {
        switch (f->mode) {
        case FAKE_GARBAGE:
            send_all(fd, "!!!\r\n", 5);
            return;
        case FAKE_SLOT_RANGE:
            snprintf(buf, sizeof(buf), "*1\r\n*3\r\n:0\r\n:20000\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n",
                     f->port);
            break;
        case FAKE_OVERLAP:
            snprintf(buf, sizeof(buf), "*2\r\n*3\r\n:0\r\n:100\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n"
                     "*3\r\n:100\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:%d\r\n", f->port, f->port);
            break;
        case FAKE_PORT0:
            snprintf(buf, sizeof(buf), "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:0\r\n");
            break;
        case FAKE_BADHOST:
            snprintf(buf, sizeof(buf), "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$3\r\na b\r\n:%d\r\n",
                     f->port);
            break;
        case FAKE_HUGE_ARRAY:
            snprintf(buf, sizeof(buf), "*2000000000\r\n:1\r\n:2\r\n");
            break;
        case FAKE_NOSLOTS:
            snprintf(buf, sizeof(buf), "*0\r\n");
            break;
        default: /* one range, empty host: "the node you asked" */
            snprintf(buf, sizeof(buf), "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$0\r\n\r\n:%d\r\n"
                     "$40\r\n0123456789012345678901234567890123456789\r\n", f->port);
            break;
        }
        send_all(fd, buf, strlen(buf));
        return;
    }
    if (strcasecmp(cmd, "GET") == 0) {
        f->gets++;
        switch (f->mode) {
        case FAKE_MAP_BIGGET: {
            static char junk[64 * 1024];
            send_all(fd, "$999999999\r\n", 12);
            memset(junk, 'x', sizeof(junk));
            for (int k = 0; k < 64; k++)
                send_all(fd, junk, sizeof(junk));
            return;
        }
        case FAKE_MAP_INTGET:
            send_all(fd, ":5\r\n", 4);
            return;
        case FAKE_MAP_BIGARRAY: {
            static char val[512 * 1024];
            memset(val, 'a', sizeof(val));
            send_all(fd, "*48\r\n", 5);
            for (int k = 0; k < 48 && !f->stop; k++) {
                send_all(fd, "$524288\r\n", 9);
                send_all(fd, val, sizeof(val));
                send_all(fd, "\r\n", 2);
            }
            return;
        }
        case FAKE_MAP_NOCRLF:
        case FAKE_MAP_LONGOK:
        case FAKE_MAP_LEADZERO: {
            /* Long enough to skip the parser (RC_DIRECT_MIN), sent so that
             * the value arrives over several reads. */
            static char val[100000];
            if (f->mode == FAKE_MAP_LEADZERO)
                send_all(fd, "$0100000\r\n", 10);
            else
                send_all(fd, "$100000\r\n", 9);
            memset(val, 'v', sizeof(val));
            send_all(fd, val, 30000);
            usleep(20000);
            send_all(fd, val + 30000, sizeof(val) - 30000);
            send_all(fd, f->mode == FAKE_MAP_NOCRLF ? "ZZ" : "\r\n", 2);
            return;
        }
        case FAKE_MAP_TRICKLE: {
            /* Slower than io_timeout_ms for the whole value, never silent
             * that long: a reader waiting for SO_RCVLOWAT must not call it
             * a dead node. */
            static char val[100000];
            memset(val, 'v', sizeof(val));
            send_all(fd, "$100000\r\n", 9);
            for (size_t off = 0; off < sizeof(val) && !f->stop; off += 4096) {
                size_t n = sizeof(val) - off < 4096 ? sizeof(val) - off : 4096;
                send_all(fd, val + off, n);
                usleep(25000);
            }
            send_all(fd, "\r\n", 2);
            return;
        }
        case FAKE_MAP_STALL:
            return;
        case FAKE_MAP_FLAKY: {
            static const char *const answers[] = {
                "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
                "-CLUSTERDOWN The cluster is down\r\n",
                "-LOADING Redis is loading the dataset in memory\r\n",
                "$3\r\nbar\r\n",
            };
            const char *a = answers[f->gets <= 4 ? f->gets - 1 : 3];
            send_all(fd, a, strlen(a));
            return;
        }
        case FAKE_MAP_MOVELOOP:
            snprintf(buf, sizeof(buf), "-MOVED 12182 127.0.0.1:%d\r\n", f->port);
            send_all(fd, buf, strlen(buf));
            return;
        default:
            send_all(fd, "$-1\r\n", 5);
            return;
        }
    }
    if (strcasecmp(cmd, "SET") == 0 && f->mode == FAKE_MAP_OOM) {
        const char *e = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";
        send_all(fd, e, strlen(e));
        return;
    }
    send_all(fd, "+OK\r\n", 5);
}

/* Parse whole commands (arrays of bulk strings) out of buf; answer each.
 * Returns the bytes consumed. */
static size_t fake_parse(fake *f, int fd, const char *buf, size_t len)
{
    size_t used = 0;

    for (;;) {
        const char *p = buf + used, *end = buf + len;
        char cmd[32] = "";
        long argc;
        char *e;
        if (p >= end || *p != '*' || !memchr(p, '\n', (size_t)(end - p)))
            return used;
        argc = strtol(p + 1, &e, 10);
        p = strchr(p, '\n') + 1;
        for (long a = 0; a < argc; a++) {
            long l;
            if (p >= end || *p != '$' || !memchr(p, '\n', (size_t)(end - p)))
                return used;
            l = strtol(p + 1, &e, 10);
            p = memchr(p, '\n', (size_t)(end - p)) + 1;
            if (end - p < l + 2)
                return used;
            if (a == 0)
                snprintf(cmd, sizeof(cmd), "%.*s", (int)(l < 31 ? l : 31), p);
            p += l + 2;
        }
        fake_answer(f, fd, cmd);
        used = (size_t)(p - buf);
    }
}

static void *fake_main(void *arg)
{
    fake *f = arg;
    int conns[8];
    size_t nconn = 0;
    static _Thread_local char buf[1 << 20];
    size_t have[8] = {0};
    char *bufs[8] = {0};

    while (!f->stop) {
        struct pollfd pf[9];
        pf[0] = (struct pollfd){.fd = f->lfd, .events = POLLIN};
        for (size_t k = 0; k < nconn; k++)
            pf[k + 1] = (struct pollfd){.fd = conns[k], .events = POLLIN};
        if (poll(pf, nconn + 1, 50) <= 0)
            continue;
        if ((pf[0].revents & POLLIN) && nconn < 8) {
            int fd = accept(f->lfd, NULL, NULL);
            if (fd >= 0) {
                bufs[nconn] = malloc(1 << 16);
                have[nconn] = 0;
                conns[nconn++] = fd;
            }
        }
        for (size_t k = 0; k < nconn; k++) {
            if (!(pf[k + 1].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t r = read(conns[k], buf, sizeof(buf) < (1 << 16) - have[k]
                                                ? sizeof(buf) : (1 << 16) - have[k]);
            if (r <= 0) {
                close(conns[k]);
                free(bufs[k]);
                conns[k] = conns[nconn - 1];
                bufs[k] = bufs[nconn - 1];
                have[k] = have[nconn - 1];
                nconn--;
                break; /* pf[] no longer matches */
            }
            memcpy(bufs[k] + have[k], buf, (size_t)r);
            have[k] += (size_t)r;
            size_t used = fake_parse(f, conns[k], bufs[k], have[k]);
            memmove(bufs[k], bufs[k] + used, have[k] - used);
            have[k] -= used;
        }
    }
    for (size_t k = 0; k < nconn; k++) {
        close(conns[k]);
        free(bufs[k]);
    }
    return NULL;
}

static void fake_start(fake *f, enum fake_mode mode)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);

    memset(f, 0, sizeof(*f));
    f->mode = mode;
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(f->lfd >= 0);
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(f->lfd, 8), 0);
    assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&a, &al), 0);
    f->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&f->th, NULL, fake_main, f), 0);
}

static void fake_stop(fake *f)
{
    f->stop = 1;
    pthread_join(f->th, NULL);
    close(f->lfd);
}

/* open() against a fake answering CLUSTER SLOTS badly: EC_EPROTO with a
 * message containing `want`. */
static void expect_bad_map(enum fake_mode mode, const char *want)
{
    ec_rcluster_opts o = {.op_timeout_ms = 2000, .io_timeout_ms = 1000};
    ec_rcluster *c = NULL;
    char seeds[32];
    fake f;
    int rc;

    fake_start(&f, mode);
    snprintf(seeds, sizeof(seeds), "127.0.0.1:%d", f.port);
    rc = ec_rcluster_open(seeds, &o, &c);
    printf("  mode %d: %s\n", mode, ec_last_error());
    fake_stop(&f);
    assert_null(c);
    assert_int_equal(rc, EC_EPROTO);
    assert_non_null(strstr(ec_last_error(), want));
}

static void test_fake_bad_maps(void **state)
{
    (void)state;
    expect_bad_map(FAKE_GARBAGE, "malformed reply");
    expect_bad_map(FAKE_SLOT_RANGE, "outside 0..16383");
    expect_bad_map(FAKE_OVERLAP, "slot 100 twice");
    expect_bad_map(FAKE_PORT0, "port 0");
    expect_bad_map(FAKE_BADHOST, "host 'a b'");
    expect_bad_map(FAKE_HUGE_ARRAY, "2000000000 elements");
    expect_bad_map(FAKE_NOSLOTS, "assigns no slot");
}

/* One key through a fake that maps every slot to itself. */
static bool fake_into; /* fake_get reads with ec_rcluster_mget_into */

static void ignore_fn(void *arg, size_t i, int status, const void *val, size_t len,
                      const char *msg)
{
    (void)arg, (void)i, (void)status, (void)val, (void)len, (void)msg;
}

static int fake_get(enum fake_mode mode, ec_rcluster_opts *o, unsigned *gets, uint64_t *ms)
{
    ec_rcluster *c = NULL;
    char seeds[32];
    void *val = NULL;
    size_t len;
    uint64_t t0;
    fake f;
    int rc;

    fake_start(&f, mode);
    snprintf(seeds, sizeof(seeds), "127.0.0.1:%d", f.port);
    rc = ec_rcluster_open(seeds, o, &c);
    if (rc != 0)
        fail_msg("open against the fake: %s", ec_last_error());
    t0 = ect_now_ms();
    if (fake_into) {
        /* A place of its own for a long value: the client then reads just
         * the header first (rc_direct_hint), whatever the reply is. */
        static char dest[100000];
        const char *key = "foo";
        size_t klen = 3, dlen = sizeof(dest);
        void *dests[1] = {dest};
        rc = ec_rcluster_mget_into(c, &key, &klen, 1, dests, &dlen, ignore_fn, NULL);
    } else {
        rc = ec_rcluster_get(c, "foo", 3, &val, &len);
    }
    *ms = ect_now_ms() - t0;
    printf("  mode %d: rc %d in %llu ms: %s\n", mode, rc, (unsigned long long)*ms,
           ec_last_error());
    assert_null(val);
    ec_rcluster_close(c);
    fake_stop(&f);
    *gets = f.gets;
    return rc;
}

static const void *into_seen;
static size_t into_len;

static void into_fn(void *arg, size_t i, int status, const void *val, size_t len,
                    const char *msg)
{
    (void)arg;
    (void)i;
    (void)msg;
    if (status == 0) {
        into_seen = val;
        into_len = len;
    }
}

/* Short timeouts and few attempts, for the fake server's bad replies. */
static const ec_rcluster_opts bad_reply_opts = {.op_timeout_ms = 1500, .io_timeout_ms = 300,
                                                .max_attempts = 3, .max_value_bytes = MIB};

/* The bad replies of test_fake_bad_replies again, read into a place of the
 * caller's own: the same refusals, whatever was read ahead of the value. */
static void test_fake_bad_replies_into(void **state)
{
    ec_rcluster_opts o = bad_reply_opts;
    unsigned gets;
    uint64_t ms;
    (void)state;

    fake_into = true;
    /* the header read so far may hold only the first digits: "at least" */
    assert_int_equal(fake_get(FAKE_MAP_BIGGET, &o, &gets, &ms), EC_ETOOBIG);
    assert_non_null(strstr(ec_last_error(), "a value of at least 99999999 bytes"));
    assert_int_equal(gets, 1);
    assert_int_equal(fake_get(FAKE_MAP_NOCRLF, &o, &gets, &ms), EC_EPROTO);
    assert_non_null(strstr(ec_last_error(), "not followed by CRLF"));
    /* A length with a leading zero: refused into the caller's place as
     * the parser refuses it, not taken. */
    assert_int_equal(fake_get(FAKE_MAP_LEADZERO, &o, &gets, &ms), EC_EPROTO);
    assert_int_equal(fake_get(FAKE_MAP_INTGET, &o, &gets, &ms), EC_EPROTO);
    assert_non_null(strstr(ec_last_error(), "answered with an integer, not a bulk string"));
    assert_int_equal(fake_get(FAKE_MAP_MOVELOOP, &o, &gets, &ms), EC_EPROTO);
    assert_non_null(strstr(ec_last_error(), "gave up after 3 attempts"));
    assert_int_equal(gets, 3);
    assert_int_equal(fake_get(FAKE_MAP_STALL, &o, &gets, &ms), EC_ETIMEOUT);
    fake_into = false;
    /* A value that trickles in for twice io_timeout_ms, into its place: read
     * whole, not dropped as silent. */
    {
        static char dest[100000];
        const char *key = "foo";
        size_t klen = 3, dlen = sizeof(dest);
        void *dests[1] = {dest};
        ec_rcluster *lc = NULL;
        char lseeds[32];
        fake lf;
        fake_start(&lf, FAKE_MAP_TRICKLE);
        snprintf(lseeds, sizeof(lseeds), "127.0.0.1:%d", lf.port);
        assert_int_equal(ec_rcluster_open(lseeds, &o, &lc), 0);
        memset(dest, 0, sizeof(dest));
        if (ec_rcluster_mget_into(lc, &key, &klen, 1, dests, &dlen, ignore_fn, NULL) != 0)
            fail_msg("a trickling value: %s", ec_last_error());
        for (size_t k = 0; k < sizeof(dest); k++)
            if (dest[k] != 'v')
                fail_msg("byte %zu of the trickling value is %d", k, dest[k]);
        ec_rcluster_close(lc);
        fake_stop(&lf);
    }
}

static void test_fake_bad_replies(void **state)
{
    ec_rcluster_opts o = bad_reply_opts;
    unsigned gets;
    uint64_t ms;
    (void)state;

    /* A declared 999999999-byte value: refused before it is buffered. */
    assert_int_equal(fake_get(FAKE_MAP_BIGGET, &o, &gets, &ms), EC_ETOOBIG);
    assert_non_null(strstr(ec_last_error(), "999999999"));
    assert_non_null(strstr(ec_last_error(), "max_value_bytes"));
    assert_non_null(strstr(ec_last_error(), "'foo'"));
    assert_int_equal(gets, 1); /* not retried: it would never fit */
    /* A long value not followed by CRLF: refused, not handed over. */
    assert_int_equal(fake_get(FAKE_MAP_NOCRLF, &o, &gets, &ms), EC_EPROTO);
    assert_non_null(strstr(ec_last_error(), "not followed by CRLF"));
    assert_int_equal(fake_get(FAKE_MAP_LEADZERO, &o, &gets, &ms), EC_EPROTO);
    /* The same value well formed, over several reads: whole and intact. */
    {
        ec_rcluster *lc = NULL;
        char lseeds[32];
        void *v = NULL;
        size_t vl = 0;
        fake lf;
        fake_start(&lf, FAKE_MAP_LONGOK);
        snprintf(lseeds, sizeof(lseeds), "127.0.0.1:%d", lf.port);
        assert_int_equal(ec_rcluster_open(lseeds, &o, &lc), 0);
        if (ec_rcluster_get(lc, "foo", 3, &v, &vl) != 0)
            fail_msg("a well-formed long value: %s", ec_last_error());
        assert_int_equal(vl, 100000);
        for (size_t k = 0; k < vl; k++)
            if (((char *)v)[k] != 'v')
                fail_msg("byte %zu of the long value is %d", k, ((char *)v)[k]);
        free(v);
        /* and again on the same connection: the stream stayed in step */
        assert_int_equal(ec_rcluster_get(lc, "foo", 3, &v, &vl), 0);
        assert_int_equal(vl, 100000);
        free(v);
        /* Into the caller's memory: landed there when the size matches,
         * copied by fn otherwise; the bytes right either way. */
        for (int wrong = 0; wrong < 2; wrong++) {
            static char dest[100001];
            const char *key = "foo";
            size_t klen = 3, dlen = wrong ? 99999 : 100000;
            void *dests[1] = {dest};
            into_seen = NULL;
            into_len = 0;
            memset(dest, 0, sizeof(dest));
            assert_int_equal(ec_rcluster_mget_into(lc, &key, &klen, 1, dests, &dlen, into_fn,
                                                   dest), 0);
            assert_int_equal(into_len, 100000);
            if (wrong) {
                assert_true(into_seen != dest);
            } else {
                assert_ptr_equal(into_seen, dest);
                for (size_t k = 0; k < 100000; k++)
                    if (dest[k] != 'v')
                        fail_msg("byte %zu landed as %d", k, dest[k]);
                assert_int_equal(dest[100000], 0); /* nothing past it */
            }
        }
        ec_rcluster_close(lc);
        fake_stop(&lf);
    }
    /* An integer for a GET. */
    assert_int_equal(fake_get(FAKE_MAP_INTGET, &o, &gets, &ms), EC_EPROTO);
    assert_non_null(strstr(ec_last_error(), "answered with an integer, not a bulk string"));
    /* Values each under max_value_bytes, too many of them in one reply:
     * refused before the whole reply is held. */
    assert_int_equal(fake_get(FAKE_MAP_BIGARRAY, &o, &gets, &ms), EC_EPROTO);
    assert_non_null(strstr(ec_last_error(), "bytes of strings"));
    /* No reply at all: io_timeout_ms, retried, then op_timeout_ms. */
    int rc = fake_get(FAKE_MAP_STALL, &o, &gets, &ms);
    assert_true(rc == EC_ETIMEOUT);
    assert_true(ms < 3000);
    assert_non_null(strstr(ec_last_error(), "timeout"));
    /* MOVED to itself forever: bounded by max_attempts. */
    assert_int_equal(fake_get(FAKE_MAP_MOVELOOP, &o, &gets, &ms), EC_EPROTO);
    assert_non_null(strstr(ec_last_error(), "gave up after 3 attempts"));
    assert_non_null(strstr(ec_last_error(), "MOVED"));
    assert_int_equal(gets, 3);

    /* TRYAGAIN, CLUSTERDOWN, LOADING: waited out, the map refreshed. */
    {
        ec_rcluster *fc = NULL;
        ec_rcluster_stats fst;
        char fseeds[32];
        void *v = NULL;
        size_t vl = 0;
        fake ff;
        fake_start(&ff, FAKE_MAP_FLAKY);
        snprintf(fseeds, sizeof(fseeds), "127.0.0.1:%d", ff.port);
        ec_rcluster_opts fo = {.refresh_interval_ms = 1};
        assert_int_equal(ec_rcluster_open(fseeds, &fo, &fc), 0);
        assert_int_equal(ec_rcluster_get(fc, "foo", 3, &v, &vl), 0);
        assert_int_equal(vl, 3);
        assert_memory_equal(v, "bar", 3);
        free(v);
        ec_rcluster_stats_get(fc, &fst);
        assert_int_equal(fst.retries, 3);
        assert_int_equal(fst.refreshes, 3); /* open, CLUSTERDOWN, LOADING */
        assert_int_equal(fst.errors, 0);
        ec_rcluster_close(fc);
        fake_stop(&ff);
        assert_int_equal(ff.gets, 4);
    }
    /* A refusal is final, quoted, and not retried. */
    ec_rcluster *c = NULL;
    char seeds[32];
    fake f;
    fake_start(&f, FAKE_MAP_OOM);
    snprintf(seeds, sizeof(seeds), "127.0.0.1:%d", f.port);
    assert_int_equal(ec_rcluster_open(seeds, &o, &c), 0);
    assert_int_equal(ec_rcluster_set(c, "k", 1, "v", 1, NULL), EC_EIO);
    assert_non_null(strstr(ec_last_error(), "OOM command not allowed"));
    ec_rcluster_stats st;
    ec_rcluster_stats_get(c, &st);
    assert_int_equal(st.retries, 0);
    assert_int_equal(st.errors, 1);
    /* Argument checks. */
    assert_int_equal(ec_rcluster_set(c, "k", 1, "v", 2 * MIB, NULL), EC_ETOOBIG);
    ec_rcluster_set_opts so = {.ttl_ms = (1ull << 53) + 1};
    assert_int_equal(ec_rcluster_set(c, "k", 1, "v", 1, &so), EC_EINVAL);
    assert_int_equal(ec_rcluster_mget(c, NULL, NULL, 1, ignore_fn, NULL), EC_EINVAL);
    assert_int_equal(ec_rcluster_mget(c, NULL, NULL, 0, ignore_fn, NULL), 0);
    char *longkey = calloc(1, EC_RCLUSTER_MAX_KEY + 1);
    void *v = NULL;
    size_t vl;
    assert_non_null(longkey);
    assert_int_equal(ec_rcluster_get(c, longkey, EC_RCLUSTER_MAX_KEY + 1, &v, &vl), EC_EINVAL);
    free(longkey);
    char buf[8];
    assert_int_equal(ec_rcluster_slot_node(c, 16384, buf, sizeof(buf)), EC_EINVAL);
    assert_int_equal(ec_rcluster_slot_node(c, 0, buf, 4), EC_EINVAL);
    ec_rcluster_close(c);
    fake_stop(&f);
}

/* A connection left idle for longer than io_timeout_ms serves the next
 * call: the timeout measures how long a node owes a reply, not how long
 * the connection sat unused, nor how long this process was not scheduled.
 * The next call's commands go out on the same connection, with no retry. */
static void test_fake_idle_connection(void **state)
{
    ec_rcluster_opts o = bad_reply_opts;
    ec_rcluster_stats s0, s1;
    ec_rcluster *c = NULL;
    char seeds[32];
    void *v = NULL;
    size_t vl = 0;
    fake f;
    (void)state;

    fake_start(&f, FAKE_MAP_LONGOK);
    snprintf(seeds, sizeof(seeds), "127.0.0.1:%d", f.port);
    assert_int_equal(ec_rcluster_open(seeds, &o, &c), 0);
    assert_int_equal(ec_rcluster_get(c, "foo", 3, &v, &vl), 0);
    free(v);
    v = NULL;
    ec_rcluster_stats_get(c, &s0);
    usleep((useconds_t)(o.io_timeout_ms * 2) * 1000u);
    if (ec_rcluster_get(c, "foo", 3, &v, &vl) != 0)
        fail_msg("a GET after %u ms idle: %s", o.io_timeout_ms * 2, ec_last_error());
    assert_int_equal(vl, 100000);
    free(v);
    ec_rcluster_stats_get(c, &s1);
    if (s1.connects != s0.connects || s1.retries != s0.retries)
        fail_msg("the idle connection was dropped: %llu connects, %llu retries after it",
                 (unsigned long long)(s1.connects - s0.connects),
                 (unsigned long long)(s1.retries - s0.retries));
    ec_rcluster_close(c);
    fake_stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fake_bad_maps),
        cmocka_unit_test(test_fake_bad_replies),
        cmocka_unit_test(test_fake_bad_replies_into),
        cmocka_unit_test(test_fake_idle_connection),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("rcluster_fake", tests, NULL, NULL);
}
