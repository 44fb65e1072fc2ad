/*
 * test_daemon_robust.c - embcached against peers that misbehave.
 *
 * Starts a real embcached (its stderr goes to a log file that is checked for
 * sanitizer reports at the end), imports two small .npy tensors through
 * libembcache, then talks to the daemon over raw SEQPACKET sockets the way a
 * broken or hostile client would: bytes that are not an embcache message,
 * requests before HELLO, unknown ops, oversized messages, malformed bodies,
 * descriptors where none belong, clients that vanish mid-request or are
 * SIGKILLed mid-gather, a client that never reads its replies, a second
 * daemon on the same data directory or socket, a peer of another uid, and
 * bad command lines. Each case asserts the exact status code (and a part of
 * the message) the spec promises, and after each one daemon_still_serves()
 * proves that a well-behaved client still resolves and gathers correct bytes.
 *
 * The last four cases reproduce bugs this program found; each is named for
 * its bug and fails until it is fixed (see the comment above each).
 *
 * Runs as one process plus forked children (gathering clients that are
 * killed, setuid peers, extra daemons); every wait is bounded, and a daemon
 * dies with this program (PR_SET_PDEATHSIG) should it abort. Takes ~3 s.
 * ECT_VERBOSE=1 prints the daemon's log at the end.
 */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "core/proto.h"
#include "shm/segment.h"

/* The small tensor: 8192 rows of 32 f32 (128 B), 4 KiB partitions -> 256. */
#define SMALL_ROWS 8192u
#define SMALL_DIM 32u
#define SMALL_SEED 7u
#define SMALL_PART_BYTES 4096u
/* The big one: 4096 rows of 4 KiB, 64 KiB partitions, 16 MiB in all: more
 * than the 8 MiB segment holds, so gathers over it keep faulting. */
#define BIG_ROWS 4096u
#define BIG_DIM 1024u
#define BIG_SEED 9u
#define BIG_PART_BYTES 65536u
#define SHM_SIZE "8M"
/* still_serves reads rows of partitions 0..63 only; cases that fault
 * "non-resident" partitions use 100 and up. */
#define SERVE_ROWS 2048u

static char root[64];
static char data_dir[128], sock_path[108], log_path[128];
static char small_npy[128], big_npy[128];
static pid_t dpid = -1;  /* the keeper */
static pid_t wpid = -1;  /* its worker, which serves */
static ec_client *good;
static ec_tensor *good_small;
static uint32_t small_id, small_parts, big_id, big_parts;
static uint8_t rbuf[EC_MSG_MAX];
static unsigned rng = 12345;

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static bool contains(const char *hay, const char *needle)
{
    return hay && strstr(hay, needle) != NULL;
}

#define assert_contains(hay, needle)                                                     \
    do {                                                                                 \
        const char *h_ = (hay);                                                          \
        if (!contains(h_, (needle)))                                                     \
            fail_msg("expected \"%s\" in: %s", (needle), h_ ? h_ : "(null)");            \
    } while (0)

/* A whole file as a C string (ect_read_file's buffer has room for the NUL
 * but does not write it). */
static char *read_text(const char *path)
{
    size_t len = 0;
    char *t = ect_read_file(path, &len);

    if (t)
        t[len] = '\0';
    return t;
}

static bool has_sanitizer_report(const char *text)
{
    return contains(text, "AddressSanitizer") || contains(text, "LeakSanitizer") ||
           contains(text, "runtime error:") || contains(text, "UndefinedBehaviorSanitizer");
}

static int count_fds(pid_t pid)
{
    char path[64];
    DIR *d;
    struct dirent *de;
    int n = 0;

    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    d = opendir(path);
    if (!d)
        fail_msg("opendir %s: %s", path, strerror(errno));
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------ */
/* The daemon                                                          */

static bool socket_accepts(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    bool ok;

    if (fd < 0)
        return false;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/* ect_daemon_start, but with the daemon's stdout/stderr appended to log so
 * that sanitizer reports can be checked. */
static pid_t daemon_spawn(const char *dd, const char *sp, const char *log,
                          const char *const *extra, rlim_t nofile)
{
    const char *argv[32];
    int n = 0, status;
    pid_t pid, parent;

    argv[n++] = EC_TEST_EMBCACHED;
    argv[n++] = "--data-dir";
    argv[n++] = dd;
    argv[n++] = "--socket";
    argv[n++] = sp;
    argv[n++] = "--shm-size";
    argv[n++] = SHM_SIZE;
    for (int i = 0; extra && extra[i] && n < 31; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    parent = getpid();
    pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd, nul;
        /* Should this program die without its teardown (a sanitizer abort),
         * the daemon goes with it instead of lingering. */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
            _exit(125);
        fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        nul = open("/dev/null", O_RDONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (nul >= 0)
            dup2(nul, 0);
        if (nofile) {
            struct rlimit rl = {.rlim_cur = nofile, .rlim_max = nofile};
            if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                _exit(126);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 2000; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            fail_msg("embcached exited early with status 0x%x (log %s)", status, log);
        if (socket_accepts(sp))
            return pid;
        sleep_ms(10);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fail_msg("embcached did not listen on %s within 20 s", sp);
    return -1;
}

static void check_log_clean(const char *log)
{
    char *text = read_text(log);

    if (text && has_sanitizer_report(text)) {
        print_error("---- %s ----\n%s\n----\n", log, text);
        free(text);
        fail_msg("sanitizer report in the daemon's log %s", log);
    }
    free(text);
}

/* ------------------------------------------------------------------ */
/* Raw protocol                                                        */

static int raw_connect_to(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct timeval tv = {.tv_sec = 5};
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        fail_msg("connect %s: %s", path, strerror(errno));
    /* No receive may hang the test: a missing reply fails it in 5 s. */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    return fd;
}

static int raw_connect(void)
{
    return raw_connect_to(sock_path);
}

static void set_rcvtimeo_ms(int fd, unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (long)(ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* Send msg with nfds copies of fd attached, past ec_msg_send's own limit. */
static void send_with_fds(int sock, const void *msg, size_t len, int fd, int nfds)
{
    int fds[200];
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(fds))];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                        .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds)};
    struct cmsghdr *cm;

    assert_true(nfds > 0 && nfds <= 200);
    memset(&ctl, 0, sizeof(ctl));
    cm = CMSG_FIRSTHDR(&mh);
    for (int i = 0; i < nfds; i++)
        fds[i] = fd;
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    if (sendmsg(sock, &mh, MSG_NOSIGNAL) != (ssize_t)len)
        fail_msg("sendmsg with %d descriptors: %s", nfds, strerror(errno));
}

/* A message with a correct header around body. Returns its length. */
static size_t build(uint8_t *buf, size_t cap, uint16_t op, uint32_t req, int32_t status,
                    const void *body, size_t blen)
{
    ec_msg_hdr h = {.magic = EC_PROTO_MAGIC,
                    .version = EC_PROTO_VERSION,
                    .op = op,
                    .req_id = req,
                    .status = status,
                    .body_len = (uint32_t)blen};

    assert_true(EC_MSG_HDR + blen <= cap);
    memcpy(buf, &h, sizeof(h));
    if (blen)
        memcpy(buf + EC_MSG_HDR, body, blen);
    return EC_MSG_HDR + blen;
}

static void raw_send(int fd, const void *msg, size_t len)
{
    ssize_t n = send(fd, msg, len, MSG_NOSIGNAL);
    if (n < 0 || (size_t)n != len)
        fail_msg("send of %zu bytes: %zd (%s)", len, n, strerror(errno));
}

static void send_req(int fd, uint16_t op, uint32_t req, const void *body, size_t blen)
{
    static uint8_t m[EC_MSG_MAX];
    raw_send(fd, m, build(m, sizeof(m), op, req, 0, body, blen));
}

typedef struct reply {
    ec_msg_hdr h;
    ec_rbuf body;
    char msg[EC_ERRMSG_MAX + 1];
    int nfds;
} reply;

/* Receive one reply (closing any descriptors it carries) and parse it. */
static void recv_reply(int fd, reply *r)
{
    int fds[8], rc;
    ssize_t n = ec_msg_recv(fd, rbuf, sizeof(rbuf), fds, &r->nfds, 8);

    if (n <= 0)
        fail_msg("expected a reply, got %zd (%s; errno %s)", n,
                 n < 0 ? ec_last_error() : "orderly close", strerror(errno));
    for (int i = 0; i < r->nfds; i++)
        close(fds[i]);
    rc = ec_msg_parse(rbuf, (size_t)n, &r->h, &r->body);
    if (rc)
        fail_msg("the daemon's reply does not parse: %s", ec_last_error());
    r->msg[0] = '\0';
    if (r->h.status < 0) {
        ec_get_str(&r->body, r->msg, sizeof(r->msg));
        assert_true(ec_rbuf_done(&r->body));
    }
}

/* The next reply must be an error for (op, req) with code and text. */
static void expect_error(int fd, uint16_t op, uint32_t req, int code, const char *text)
{
    reply r;

    recv_reply(fd, &r);
    if (r.h.status != code)
        fail_msg("op %u: expected status %d (%s), got %d: %s", op, code, ec_strerror(code),
                 r.h.status, r.msg);
    assert_int_equal(r.h.op, (uint16_t)(op | EC_OP_REPLY));
    assert_int_equal(r.h.req_id, req);
    assert_int_equal(r.nfds, 0);
    if (text)
        assert_contains(r.msg, text);
}

/* The daemon must close the connection: after any replies already read,
 * the next receive sees end of file (or a reset), not a timeout. */
static void expect_closed(int fd)
{
    char b[64];
    ssize_t n = recv(fd, b, sizeof(b), 0);

    if (n < 0 && errno == ECONNRESET)
        return;
    if (n != 0)
        fail_msg("expected the daemon to close the connection; recv gave %zd (%s)", n,
                 n < 0 ? strerror(errno) : "data");
}

static void raw_hello(int fd, uint32_t req)
{
    uint8_t body[64];
    ec_wbuf w;
    reply r;
    size_t len;

    ec_msg_begin(&w, body, sizeof(body), EC_OP_HELLO, req, 0);
    ec_put_u32(&w, 0);
    ec_put_str(&w, "test_daemon_robust");
    len = ec_msg_end(&w);
    assert_true(len > 0);
    raw_send(fd, body, len);
    recv_reply(fd, &r);
    if (r.h.status != 0)
        fail_msg("HELLO refused: %d %s", r.h.status, r.msg);
    assert_int_equal(r.h.op, EC_OP_HELLO | EC_OP_REPLY);
    assert_int_equal(r.h.req_id, req);
    assert_int_equal(r.nfds, 2); /* the segment and the session page (closed) */
    (void)ec_get_u64(&r.body); /* generation */
    (void)ec_get_u64(&r.body); /* segment size */
    (void)ec_get_u32(&r.body); /* layout */
    assert_int_equal(ec_get_u32(&r.body), EC_SESSION_SIZE);
    assert_int_equal(ec_get_u32(&r.body), (uint32_t)wpid);
}

static int raw_open(void)
{
    int fd = raw_connect();
    raw_hello(fd, 1);
    return fd;
}

/* A STATS request on fd gets a well-formed, successful reply. */
static void expect_stats_ok(int fd, uint32_t req)
{
    reply r;
    uint32_t n;

    send_req(fd, EC_OP_STATS, req, NULL, 0);
    recv_reply(fd, &r);
    if (r.h.status != 0)
        fail_msg("STATS failed: %d %s", r.h.status, r.msg);
    assert_int_equal(r.h.op, EC_OP_STATS | EC_OP_REPLY);
    assert_int_equal(r.h.req_id, req);
    n = ec_get_u32(&r.body);
    assert_true(n > 10);
    for (uint32_t i = 0; i < n; i++) {
        char name[128];
        ec_get_str(&r.body, name, sizeof(name));
        (void)ec_get_u64(&r.body);
    }
    assert_true(ec_rbuf_done(&r.body));
}

/* RESOLVE over a raw connection; returns the record. */
static void raw_resolve(int fd, const char *model, const char *tensor, ec_proto_tensor *t)
{
    uint8_t m[1024];
    ec_wbuf w;
    reply r;

    ec_msg_begin(&w, m, sizeof(m), EC_OP_RESOLVE, 77, 0);
    ec_put_str(&w, model);
    ec_put_str(&w, "1");
    ec_put_str(&w, tensor);
    raw_send(fd, m, ec_msg_end(&w));
    recv_reply(fd, &r);
    if (r.h.status != 0)
        fail_msg("RESOLVE %s/%s: %d %s", model, tensor, r.h.status, r.msg);
    assert_int_equal(ec_get_tensor(&r.body, t), 0);
    assert_true(ec_rbuf_done(&r.body));
}

static void send_fault(int fd, uint32_t req, uint32_t tensor, uint32_t part)
{
    uint32_t b[3] = {tensor, 1, part};
    send_req(fd, EC_OP_FAULT, req, b, sizeof(b));
}

/* ------------------------------------------------------------------ */
/* Stats and the well-behaved client                                   */

struct stat_q {
    const char *name;
    uint64_t v;
    bool found;
};

static int stat_cb(const char *name, uint64_t v, void *arg)
{
    struct stat_q *q = arg;
    if (strcmp(name, q->name) == 0) {
        q->v = v;
        q->found = true;
    }
    return 0;
}

static uint64_t get_stat(const char *name)
{
    struct stat_q q = {.name = name};
    int rc = ec_client_stats(good, stat_cb, &q);

    if (rc)
        fail_msg("ec_client_stats: %s", ec_last_error());
    if (!q.found)
        fail_msg("no statistic named %s", name);
    return q.v;
}

/* Wait (up to 5 s) until the daemon counts `want` connected clients. */
static void wait_clients(uint64_t want)
{
    uint64_t v = 0;

    for (int i = 0; i < 500; i++) {
        v = get_stat("clients");
        if (v == want)
            return;
        sleep_ms(10);
    }
    fail_msg("the daemon still counts %llu clients, expected %llu",
             (unsigned long long)v, (unsigned long long)want);
}

static void gather_check(ec_tensor *t, uint32_t dim, uint64_t seed, uint64_t rows_max,
                         size_t n)
{
    int64_t ids[64];
    size_t row_bytes = dim * sizeof(float);
    float *out = malloc(n * row_bytes), *want = malloc(row_bytes);
    int rc;

    assert_non_null(out);
    assert_non_null(want);
    assert_true(n <= 64);
    for (size_t i = 0; i < n; i++)
        ids[i] = (int64_t)(rand_r(&rng) % rows_max);
    ids[0] = 0;
    if (n > 1)
        ids[n - 1] = (int64_t)rows_max - 1;
    rc = ec_tensor_gather(t, ids, n, out, n * row_bytes);
    if (rc)
        fail_msg("ec_tensor_gather: %s", ec_last_error());
    for (size_t i = 0; i < n; i++) {
        ect_fill(EC_DTYPE_F32, seed, (uint64_t)ids[i] * dim, dim, want);
        if (memcmp(out + i * dim, want, row_bytes) != 0)
            fail_msg("row %lld came back wrong", (long long)ids[i]);
    }
    free(out);
    free(want);
}

/* The daemon is alive, the long-lived client still gathers correct bytes,
 * and a brand-new client can connect, resolve and gather. */
static void daemon_still_serves(void)
{
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    int rc;

    assert_int_equal(waitpid(dpid, NULL, WNOHANG), 0);
    gather_check(good_small, SMALL_DIM, SMALL_SEED, SERVE_ROWS, 32);
    rc = ec_client_connect(sock_path, &c);
    if (rc)
        fail_msg("ec_client_connect: %s", ec_last_error());
    rc = ec_tensor_resolve(c, "robust", "current", "emb", &t);
    if (rc)
        fail_msg("ec_tensor_resolve: %s", ec_last_error());
    gather_check(t, SMALL_DIM, SMALL_SEED, SERVE_ROWS, 16);
    ec_tensor_release(t);
    ec_client_close(c);
}

/* ------------------------------------------------------------------ */
/* Set-up                                                              */

static int group_setup(void **state)
{
    uint64_t sshape[2] = {SMALL_ROWS, SMALL_DIM}, bshape[2] = {BIG_ROWS, BIG_DIM};
    /* params_json is given: NULL trips test_put_str_null_is_empty's bug under
     * UBSan, which would abort set-up and with it every other case. */
    ec_import_opts o = {.model = "robust", .version = 1, .round = -1,
                        .params_json = "{\"test\": \"robust\"}",
                        .partition_bytes = SMALL_PART_BYTES};
    const char *paths[1];
    uint32_t nt = 0;
    ec_proto_tensor t;
    int rc, fd;

    (void)state;
    /* Under /tmp whatever $TMPDIR says: sun_path holds 107 bytes. */
    snprintf(root, sizeof(root), "/tmp/ecrob-XXXXXX");
    if (!mkdtemp(root))
        fail_msg("mkdtemp: %s", strerror(errno));
    snprintf(data_dir, sizeof(data_dir), "%s/data", root);
    snprintf(sock_path, sizeof(sock_path), "%s/d.sock", root);
    snprintf(log_path, sizeof(log_path), "%s/daemon.log", root);
    snprintf(small_npy, sizeof(small_npy), "%s/emb.npy", root);
    snprintf(big_npy, sizeof(big_npy), "%s/big.npy", root);
    assert_int_equal(ect_write_npy(small_npy, EC_DTYPE_F32, 2, sshape, SMALL_SEED), 0);
    assert_int_equal(ect_write_npy(big_npy, EC_DTYPE_F32, 2, bshape, BIG_SEED), 0);

    dpid = daemon_spawn(data_dir, sock_path, log_path, NULL, 0);
    wpid = ect_daemon_worker(data_dir);
    rc = ec_client_connect(sock_path, &good);
    if (rc)
        fail_msg("ec_client_connect: %s", ec_last_error());
    paths[0] = small_npy;
    rc = ec_model_import(good, &o, paths, 1, &nt);
    if (rc)
        fail_msg("import: %s", ec_last_error());
    assert_int_equal(nt, 1);
    o.model = "big";
    o.partition_bytes = BIG_PART_BYTES;
    paths[0] = big_npy;
    rc = ec_model_import(good, &o, paths, 1, &nt);
    if (rc)
        fail_msg("import: %s", ec_last_error());
    rc = ec_model_alias(good, "robust", "current", 1);
    if (rc)
        fail_msg("alias: %s", ec_last_error());
    rc = ec_tensor_resolve(good, "robust", "current", "emb", &good_small);
    if (rc)
        fail_msg("resolve: %s", ec_last_error());

    fd = raw_open();
    raw_resolve(fd, "robust", "emb", &t);
    small_id = t.id;
    small_parts = (uint32_t)t.partitions;
    assert_int_equal(t.rows_per_partition, 32);
    assert_int_equal(small_parts, SMALL_ROWS / 32);
    raw_resolve(fd, "big", "big", &t);
    big_id = t.id;
    big_parts = (uint32_t)t.partitions;
    assert_int_equal(big_parts, BIG_ROWS / 16);
    close(fd);
    daemon_still_serves();
    return 0;
}

static int group_teardown(void **state)
{
    int status;

    (void)state;
    ec_tensor_release(good_small);
    ec_client_close(good);
    if (dpid > 0) {
        status = ect_daemon_stop(dpid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            char *text = read_text(log_path);
            print_error("---- daemon log ----\n%s\n----\n", text ? text : "");
            free(text);
            fail_msg("embcached exited with status 0x%x after SIGTERM", status);
        }
    }
    if (getenv("ECT_VERBOSE")) {
        char *text = read_text(log_path);
        fprintf(stderr, "---- daemon log ----\n%s----\n", text ? text : "");
        free(text);
    }
    check_log_clean(log_path);
    ect_rmtree(root);
    return 0;
}

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
    gather_check(good_small, SMALL_DIM, SMALL_SEED, SMALL_ROWS, 64);
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
        gather_check(big, BIG_DIM, BIG_SEED, BIG_ROWS, 16);
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
            gather_check(good_small, SMALL_DIM, SMALL_SEED, SERVE_ROWS, 8);
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
    gather_check(good_small, SMALL_DIM, SMALL_SEED, SMALL_ROWS, 32);
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
        cmocka_unit_test(test_garbage_bytes),
        cmocka_unit_test(test_first_message_not_hello),
        cmocka_unit_test(test_unknown_op),
        cmocka_unit_test(test_oversized_message),
        cmocka_unit_test(test_malformed_bodies),
        cmocka_unit_test(test_fds_on_wrong_op),
        cmocka_unit_test(test_disconnect_mid_request),
        cmocka_unit_test(test_client_killed_mid_gather),
        cmocka_unit_test(test_client_never_reads),
        cmocka_unit_test(test_second_daemon),
        cmocka_unit_test(test_other_uid),
        cmocka_unit_test(test_bad_command_lines),
        cmocka_unit_test(test_put_str_null_is_empty),
        cmocka_unit_test(test_toobig_reply_echoes_stale_header),
        cmocka_unit_test(test_oversized_garbage_closes),
        cmocka_unit_test(test_accept_emfile_busy_loop),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
