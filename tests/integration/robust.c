/*
 * robust.c - the daemon-robustness tests' shared harness (see robust.h):
 * the group's embcached and its log, raw-protocol helpers, statistics and
 * daemon_still_serves(). Linked into test_daemon_robust and
 * test_daemon_peers; runs in their test process only.
 */
#include "robust.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

#include "shm/segment.h"

char root[64];
char data_dir[128], sock_path[108], log_path[128];
char small_npy[128], big_npy[128];
pid_t dpid = -1;  /* the keeper */
pid_t wpid = -1;  /* its worker, which serves */
ec_client *good;
ec_tensor *good_small;
uint32_t small_id, small_parts, big_id, big_parts;
uint8_t rbuf[EC_MSG_MAX];
static unsigned rng = 12345;

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

bool contains(const char *hay, const char *needle)
{
    return hay && strstr(hay, needle) != NULL;
}

/* A whole file as a C string (ect_read_file's buffer has room for the NUL
 * but does not write it). */
char *read_text(const char *path)
{
    size_t len = 0;
    char *t = ect_read_file(path, &len);

    if (t)
        t[len] = '\0';
    return t;
}

bool has_sanitizer_report(const char *text)
{
    return contains(text, "AddressSanitizer") || contains(text, "LeakSanitizer") ||
           contains(text, "runtime error:") || contains(text, "UndefinedBehaviorSanitizer");
}

int count_fds(pid_t pid)
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

bool socket_accepts(const char *path)
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
pid_t daemon_spawn(const char *dd, const char *sp, const char *log,
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

void check_log_clean(const char *log)
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

int raw_connect_to(const char *path)
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

int raw_connect(void)
{
    return raw_connect_to(sock_path);
}

void set_rcvtimeo_ms(int fd, unsigned ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (long)(ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* Send msg with nfds copies of fd attached, past ec_msg_send's own limit. */
void send_with_fds(int sock, const void *msg, size_t len, int fd, int nfds)
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
size_t build(uint8_t *buf, size_t cap, uint16_t op, uint32_t req, int32_t status,
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

void raw_send(int fd, const void *msg, size_t len)
{
    ssize_t n = send(fd, msg, len, MSG_NOSIGNAL);
    if (n < 0 || (size_t)n != len)
        fail_msg("send of %zu bytes: %zd (%s)", len, n, strerror(errno));
}

void send_req(int fd, uint16_t op, uint32_t req, const void *body, size_t blen)
{
    static uint8_t m[EC_MSG_MAX];
    raw_send(fd, m, build(m, sizeof(m), op, req, 0, body, blen));
}

/* Receive one reply (closing any descriptors it carries) and parse it. */
void recv_reply(int fd, reply *r)
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
void expect_error(int fd, uint16_t op, uint32_t req, int code, const char *text)
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
void expect_closed(int fd)
{
    char b[64];
    ssize_t n = recv(fd, b, sizeof(b), 0);

    if (n < 0 && errno == ECONNRESET)
        return;
    if (n != 0)
        fail_msg("expected the daemon to close the connection; recv gave %zd (%s)", n,
                 n < 0 ? strerror(errno) : "data");
}

void raw_hello(int fd, uint32_t req)
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

int raw_open(void)
{
    int fd = raw_connect();
    raw_hello(fd, 1);
    return fd;
}

/* A STATS request on fd gets a well-formed, successful reply. */
void expect_stats_ok(int fd, uint32_t req)
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
void raw_resolve(int fd, const char *model, const char *tensor, ec_proto_tensor *t)
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

void send_fault(int fd, uint32_t req, uint32_t tensor, uint32_t part)
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

uint64_t get_stat(const char *name)
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
void wait_clients(uint64_t want)
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

void robust_gather_check(ec_tensor *t, uint32_t dim, uint64_t seed, uint64_t rows_max,
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
void daemon_still_serves(void)
{
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    int rc;

    assert_int_equal(waitpid(dpid, NULL, WNOHANG), 0);
    robust_gather_check(good_small, SMALL_DIM, SMALL_SEED, SERVE_ROWS, 32);
    rc = ec_client_connect(sock_path, &c);
    if (rc)
        fail_msg("ec_client_connect: %s", ec_last_error());
    rc = ec_tensor_resolve(c, "robust", "current", "emb", &t);
    if (rc)
        fail_msg("ec_tensor_resolve: %s", ec_last_error());
    robust_gather_check(t, SMALL_DIM, SMALL_SEED, SERVE_ROWS, 16);
    ec_tensor_release(t);
    ec_client_close(c);
}

/* ------------------------------------------------------------------ */
/* Set-up                                                              */

int group_setup(void **state)
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

int group_teardown(void **state)
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
