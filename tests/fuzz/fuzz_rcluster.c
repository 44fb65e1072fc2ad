/*
 * fuzz_rcluster.c - fuzz target for the Redis Cluster client's reply reader
 * (core/rcluster*.c): hiredis's RESP parser with our reply objects and
 * limits, the CLUSTER SLOTS map, MOVED/ASK/TRYAGAIN and the other refusals,
 * WATCH/EXEC replies, and the header-first direct receive of long GET
 * values into the caller's buffers (ec_rcluster_mget_into).
 *
 * The peer is a fake node in this process: a thread, started by the first
 * input, that listens on 127.0.0.1 (an ephemeral port) and serves any number
 * of connections at once with poll(), so that two names the client holds
 * for it never wait on each other. It reads whole commands (RESP arrays of
 * bulk strings) and answers them from the current input:
 *
 *     input = MODE PART1 [SEP PART2 [SEP PART3 ...]]
 *
 * SEP is FUZZ_RCLUSTER_SEP; every FUZZ_RCLUSTER_PORT ("@port") in the parts
 * is first replaced by the node's port (five digits: node_listen), so that a map or a
 * redirect can name the node itself, under any name: the client's every
 * name with that port leads to the node (see "Names" below), and each
 * name is a node of its own to the client, with a connection of its own.
 * MODE is one byte: odd (e.g. 'A') for mode A, even ('B') for mode B.
 *  - CLUSTER (SLOTS is all the client asks): mode A answers with PART1.
 *    Mode B answers the input's first one with a valid map of all 16384
 *    slots to the node itself (127.0.0.1 and its port), later ones with
 *    PART1 when it is not empty, else with that map again.
 *  - Any other command (GET, ASKING, WATCH, MULTI, ...): the input's n-th
 *    one (n = 0, 1, ...; pipelined commands each count) is answered with
 *    PART(n+2), or the last part when there are fewer; nothing when there
 *    is no PART2.
 * A connection stays open after an answer from the input only when the
 * answer is whole: one or more complete replies (exactly one to CLUSTER)
 * as hiredis 0.14 reads them. After anything else (empty, cut short,
 * malformed) the node shuts it down for writing, so the client sees EOF at
 * once instead of waiting for a timeout, and discards what else arrives
 * until the client closes it. The client never waits on the node: each
 * command it sends gets an answer that is whole or followed by EOF.
 *
 * The client, on the calling thread, opens a handle on
 * "redis-cluster://127.0.0.1:PORT" with short timeouts, 2 attempts per key
 * and 1-2 ms backoffs; when that worked it runs ec_rcluster_mget_into on five keys, whose
 * destinations are 100000, 16, 65536, none and 70000 bytes long (values of
 * exactly a destination's length of 64 KiB or more are received into it
 * header first), ec_rcluster_get and ec_rcluster_del_if_equal, and closes
 * the handle. Invariants (FUZZ_CHECK):
 *  1. Every call returns 0 or a negative EC_E* code (>= EC_E_LAST) of those
 *     its documentation lists; a failed open or get leaves its outputs alone.
 *     In mode B open fails only to reach the node (EC_ECONN), and its map
 *     names the node.
 *  2. The callback runs once per key: with a value, no message; with
 *     EC_ENOENT, no value and no message; with an error, no value and a
 *     message. mget_into returns 0 exactly when no key failed, else the
 *     status of one that did.
 *  3. A value's bytes appear verbatim in one part served to a non-CLUSTER
 *     command (PART2 and after: never the map, nor PART1, which answer only
 *     CLUSTER); a value delivered into a destination is exactly as long as
 *     it; no value is longer than max_value_bytes.
 *  4. No memory error or leak (AddressSanitizer, LeakSanitizer at exit).
 *
 * Names: the client resolves node names with getaddrinfo(), which this file
 * replaces for the whole program: a name with the node's port resolves to
 * 127.0.0.1, anything else fails (EAI_NONAME). So an input can neither make
 * the client connect to another program (a Redis on this machine, a host on
 * the network) nor send a name to DNS, and no input waits on a resolver.
 *
 * Threads: the input passes to the node under fz.mu. The fuzz thread writes
 * the parts only while the node is idle; node_end() returns once the node
 * has closed every connection of the input, so the parts outlive their use.
 * The node sends with MSG_NOSIGNAL (as the client does): a peer that went
 * away never raises SIGPIPE.
 * Built with driver.c (ctest smoke run) or with libFuzzer (EMBCACHE_FUZZ=ON).
 */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/rcluster.h"
#include "fuzz.h"

#define FZ_MAX_CONN 64        /* connections the node serves at once */
#define FZ_MAX_PARTS 64       /* parts of an input; the last holds the rest */
#define FZ_IN_MAX (1u << 20)  /* unparsed command bytes of a connection */
#define FZ_NKEYS 5
#define FZ_MAX_ELEMENTS (1 << 17) /* RC_MAX_ELEMENTS: a longer array is refused */

/* One connection of the fake node. */
typedef struct fz_conn {
    int fd;
    char *in; /* received, not yet parsed */
    size_t in_len, in_cap;
    const char *out; /* the answer under way: map or a part */
    size_t out_len, out_off;
    bool last;     /* shut down for writing once out is sent */
    bool draining; /* shut down: discard what arrives until EOF */
    bool dead;     /* to be closed at the end of this poll round */
} fz_conn;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* Set once by node_start(), before the thread runs. */
    int lfd, wake[2];
    unsigned port;
    char map[256];
    size_t map_len;
    int (*real_getaddrinfo)(const char *, const char *, const struct addrinfo *,
                            struct addrinfo **);
    /* Under mu: busy while an input is served; idle once the node has closed
     * the connections of the last one. */
    bool busy, idle;
    /* Written by the fuzz thread while idle, read by both while busy. */
    bool mode_b;
    const char *part[FZ_MAX_PARTS];
    size_t part_len[FZ_MAX_PARTS];
    size_t part_replies[FZ_MAX_PARTS]; /* whole replies; 0: not all whole */
    size_t nparts;
    /* The node thread's own. */
    fz_conn conn[FZ_MAX_CONN];
    size_t nconn;
    unsigned answered, clusters; /* this input's answers from the input, CLUSTERs */
} fz = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .lfd = -1};

/* ------------------------------------------------------------------------
 * Name resolution: the fake node only */

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    struct addrinfo h = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM,
                         .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    char *end;
    unsigned long port;

    (void)node;
    if (!service || !fz.real_getaddrinfo)
        return EAI_NONAME;
    port = strtoul(service, &end, 10);
    if (*end || port != fz.port)
        return EAI_NONAME;
    if (hints)
        h.ai_protocol = hints->ai_protocol;
    return fz.real_getaddrinfo("127.0.0.1", service, &h, res);
}

/* ------------------------------------------------------------------------
 * The fake node (its own thread) */

static void conn_close(size_t k)
{
    close(fz.conn[k].fd);
    free(fz.conn[k].in);
    fz.conn[k] = fz.conn[--fz.nconn];
}

/* Send what the answer has left; -1 when the connection is gone. */
static int conn_flush(fz_conn *cn)
{
    while (cn->out_off < cn->out_len) {
        ssize_t w = send(cn->fd, cn->out + cn->out_off, cn->out_len - cn->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        cn->out_off += (size_t)w;
    }
    if (cn->last && !cn->draining) {
        (void)shutdown(cn->fd, SHUT_WR);
        cn->draining = true;
    }
    return 0;
}

/* "<type><digits>\r\n" at *off: 1 (value in *out, *off past it), 0
 * (incomplete), -1 (not that). */
static int parse_len(const char *p, size_t n, size_t *off, char type, size_t *out)
{
    size_t i = *off, v = 0;

    if (i >= n)
        return 0;
    if (p[i++] != type)
        return -1;
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
        if (v > FZ_IN_MAX)
            return -1;
        v = v * 10 + (size_t)(p[i] - '0');
    }
    if (i == n)
        return 0;
    if (i == *off + 1 || p[i] != '\r')
        return -1;
    if (i + 1 == n)
        return 0;
    if (p[i + 1] != '\n')
        return -1;
    *off = i + 2;
    *out = v;
    return 1;
}

/* The length of the whole command at p (an array of bulk strings), with its
 * first argument in name/nlen; 0: incomplete; -1: not a command. */
static long cmd_parse(const char *p, size_t n, const char **name, size_t *nlen)
{
    size_t off = 0, argc, len;
    int r = parse_len(p, n, &off, '*', &argc);

    if (r <= 0)
        return r;
    if (argc == 0 || argc > 64)
        return -1;
    for (size_t a = 0; a < argc; a++) {
        if ((r = parse_len(p, n, &off, '$', &len)) <= 0)
            return r;
        if (n - off < len + 2)
            return 0;
        if (p[off + len] != '\r' || p[off + len + 1] != '\n')
            return -1;
        if (a == 0) {
            *name = p + off;
            *nlen = len;
        }
        off += len + 2;
    }
    return (long)off;
}

/* A number as hiredis 0.14's string2ll takes it: "0", or an optional '-'
 * and digits without a leading zero (at most 18: enough here). */
static bool resp_num(const char *s, size_t len, long long *v)
{
    size_t i = len && s[0] == '-';
    long long x = 0;

    if (len == 1 && s[0] == '0') {
        *v = 0;
        return true;
    }
    if (i == len || len - i > 18 || s[i] < '1' || s[i] > '9')
        return false;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        x = x * 10 + (s[i] - '0');
    }
    *v = s[0] == '-' ? -x : x;
    return true;
}

/* One whole reply at *off (moved past it), at array depth `depth`, that
 * hiredis 0.14 and the client's object functions accept. */
static bool resp_one(const char *p, size_t n, size_t *off, int depth)
{
    const char *s, *crlf;
    size_t len;
    long long v;
    char type;

    if (*off >= n)
        return false;
    type = p[(*off)++];
    crlf = memmem(p + *off, n - *off, "\r\n", 2);
    if (!crlf)
        return false;
    s = p + *off;
    len = (size_t)(crlf - s);
    *off += len + 2;
    switch (type) {
    case '+':
    case '-':
        return true;
    case ':':
        return resp_num(s, len, &v);
    case '$':
        if (!resp_num(s, len, &v) || v < -1)
            return false;
        if (v == -1)
            return true;
        if (n - *off < (size_t)v + 2)
            return false;
        *off += (size_t)v + 2; /* hiredis skips the CRLF unchecked */
        return true;
    case '*':
        if (depth >= 8 || !resp_num(s, len, &v) || v < -1 || v > FZ_MAX_ELEMENTS)
            return false;
        for (long long e = 0; e < v; e++)
            if (!resp_one(p, n, off, depth + 1))
                return false;
        return true;
    default:
        return false;
    }
}

/* The number of replies in p[0..n) when it is whole replies only, else 0. */
static size_t resp_whole(const char *p, size_t n)
{
    size_t off = 0, count = 0;

    while (off < n) {
        if (!resp_one(p, n, &off, 0))
            return 0;
        count++;
    }
    return count;
}

/* Pick the answer to a command named name (see the comment on top). */
static void conn_answer(fz_conn *cn, const char *name, size_t nlen)
{
    bool cluster = nlen == 7 && strncasecmp(name, "CLUSTER", 7) == 0;
    size_t k;

    cn->out_off = 0;
    if (cluster && fz.mode_b && (fz.clusters++ == 0 || fz.part_len[0] == 0)) {
        cn->out = fz.map;
        cn->out_len = fz.map_len;
        cn->last = false;
        return;
    }
    if (cluster) {
        k = 0;
    } else if (fz.nparts < 2) {
        cn->out = NULL;
        cn->out_len = 0;
        cn->last = true;
        return;
    } else {
        k = 1 + (size_t)fz.answered++;
        if (k >= fz.nparts)
            k = fz.nparts - 1;
    }
    cn->out = fz.part[k];
    cn->out_len = fz.part_len[k];
    cn->last = cluster ? fz.part_replies[k] != 1 : fz.part_replies[k] == 0;
}

/* Answer the whole commands received, one at a time. -1: close it. */
static int conn_serve(fz_conn *cn)
{
    size_t used = 0;

    while (!cn->last && cn->out_off == cn->out_len && !cn->draining) {
        const char *name = NULL;
        size_t nlen = 0;
        long k = cmd_parse(cn->in + used, cn->in_len - used, &name, &nlen);
        if (k < 0)
            return -1;
        if (k == 0)
            break;
        used += (size_t)k;
        conn_answer(cn, name, nlen);
        if (conn_flush(cn) != 0)
            return -1;
    }
    memmove(cn->in, cn->in + used, cn->in_len - used);
    cn->in_len -= used;
    return 0;
}

/* One read; -1 at EOF or an error. */
static int conn_read(fz_conn *cn)
{
    char scratch[4096], *to = scratch;
    size_t room = sizeof(scratch);
    ssize_t r;

    if (!cn->draining) {
        if (cn->in_len >= FZ_IN_MAX)
            return -1;
        if (cn->in_cap - cn->in_len < 4096) {
            size_t cap = cn->in_cap ? 2 * cn->in_cap : 16384;
            char *p = realloc(cn->in, cap);
            FUZZ_CHECK(p != NULL);
            cn->in = p;
            cn->in_cap = cap;
        }
        to = cn->in + cn->in_len;
        room = cn->in_cap - cn->in_len;
    }
    r = read(cn->fd, to, room);
    if (r < 0)
        return errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    if (r == 0)
        return -1;
    if (cn->draining)
        return 0;
    cn->in_len += (size_t)r;
    return conn_serve(cn);
}

/* Between inputs: close every connection, the unaccepted ones too. */
static void node_quiesce(void)
{
    int fd;

    while (fz.nconn)
        conn_close(fz.nconn - 1);
    while ((fd = accept4(fz.lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0)
        close(fd);
    fz.answered = fz.clusters = 0;
}

static void *node_main(void *arg)
{
    struct pollfd pf[FZ_MAX_CONN + 2];
    size_t who[FZ_MAX_CONN + 2];

    (void)arg;
    for (;;) {
        size_t np = 0, nc;
        bool busy;
        char drain[64];
        int pr;

        pthread_mutex_lock(&fz.mu);
        busy = fz.busy;
        if (!busy && !fz.idle) {
            node_quiesce();
            fz.idle = true;
            pthread_cond_broadcast(&fz.cv);
        }
        pthread_mutex_unlock(&fz.mu);

        pf[np++] = (struct pollfd){.fd = fz.wake[0], .events = POLLIN};
        if (busy && fz.nconn < FZ_MAX_CONN)
            pf[np++] = (struct pollfd){.fd = fz.lfd, .events = POLLIN};
        nc = busy ? fz.nconn : 0;
        for (size_t k = 0; k < nc; k++) {
            fz_conn *cn = &fz.conn[k];
            who[np] = k;
            pf[np++] = (struct pollfd){
                .fd = cn->fd,
                .events = (short)(POLLIN | (cn->out_off < cn->out_len ? POLLOUT : 0))};
        }
        pr = poll(pf, np, -1);
        if (pr < 0) {
            FUZZ_CHECK(errno == EINTR);
            continue;
        }
        if (pf[0].revents)
            while (read(fz.wake[0], drain, sizeof(drain)) > 0) {
            }
        if (!busy)
            continue;
        for (size_t j = 1; j < np; j++) {
            fz_conn *cn;
            if (!pf[j].revents)
                continue;
            if (pf[j].fd == fz.lfd) {
                int fd = accept4(fz.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd >= 0) {
                    /* Answers go out at once, not after the client's
                     * delayed ACK of the last one (Nagle). */
                    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){1}, sizeof(int));
                    fz.conn[fz.nconn++] = (fz_conn){.fd = fd};
                }
                continue;
            }
            cn = &fz.conn[who[j]];
            if (pf[j].revents & POLLOUT) {
                if (conn_flush(cn) != 0)
                    cn->dead = true;
                else if (!cn->last && cn->out_off == cn->out_len)
                    cn->dead = conn_serve(cn) != 0; /* commands that waited for it */
            }
            if (!cn->dead && (pf[j].revents & (POLLIN | POLLHUP | POLLERR)))
                cn->dead = conn_read(cn) != 0;
        }
        for (size_t k = fz.nconn; k-- > 0;)
            if (fz.conn[k].dead)
                conn_close(k);
    }
    return NULL;
}

/* Listen on 127.0.0.1, on a port of five digits: "@port" becomes it
 * without a leading zero, which hiredis would refuse in an integer. The
 * kernel picks one (10000 and up unless ip_local_port_range says
 * otherwise); else one of a few tried. */
static void node_listen(void)
{
    for (unsigned i = 0; i <= 64; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof(a);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

        if (fd < 0)
            break;
        if (i > 0)
            a.sin_port = htons((uint16_t)(10000 + ((unsigned)getpid() * 7919u + i * 104729u) %
                                                      55000u));
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fd, 64) == 0 &&
            getsockname(fd, (struct sockaddr *)&a, &al) == 0 &&
            (ntohs(a.sin_port) >= 10000 || i == 64)) {
            fz.lfd = fd;
            fz.port = ntohs(a.sin_port);
            return;
        }
        close(fd);
    }
    fprintf(stderr, "fuzz_rcluster: cannot listen on 127.0.0.1: %s; skipped\n",
            strerror(errno));
    exit(77);
}

static void node_start(void)
{
    pthread_t th;
    int n;

    node_listen();
    FUZZ_CHECK(pipe2(fz.wake, O_NONBLOCK | O_CLOEXEC) == 0);
    n = snprintf(fz.map, sizeof(fz.map),
                 "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:%u\r\n"
                 "$40\r\n0123456789abcdef0123456789abcdef01234567\r\n", fz.port);
    FUZZ_CHECK(n > 0 && (size_t)n < sizeof(fz.map));
    fz.map_len = (size_t)n;
    *(void **)&fz.real_getaddrinfo = dlsym(RTLD_NEXT, "getaddrinfo");
    FUZZ_CHECK(fz.real_getaddrinfo != NULL);
    fz.idle = true;
    FUZZ_CHECK(pthread_create(&th, NULL, node_main, NULL) == 0);
    FUZZ_CHECK(pthread_detach(th) == 0);
}

static void node_wake(void)
{
    ssize_t w = write(fz.wake[1], "", 1); /* a full pipe wakes it as well */

    (void)w;
}

/* Serve p[0..len), the input after its mode byte, split into parts. */
static void node_begin(bool mode_b, const char *p, size_t len)
{
    const size_t sl = strlen(FUZZ_RCLUSTER_SEP);

    pthread_mutex_lock(&fz.mu);
    FUZZ_CHECK(fz.idle && !fz.busy);
    fz.mode_b = mode_b;
    fz.nparts = 0;
    for (;;) {
        const char *sep = fz.nparts + 1 < FZ_MAX_PARTS && len >= sl
                              ? memmem(p, len, FUZZ_RCLUSTER_SEP, sl)
                              : NULL;
        size_t n = sep ? (size_t)(sep - p) : len;
        fz.part[fz.nparts] = p;
        fz.part_replies[fz.nparts] = resp_whole(p, n);
        fz.part_len[fz.nparts++] = n;
        if (!sep)
            break;
        p += n + sl;
        len -= n + sl;
    }
    fz.busy = true;
    fz.idle = false;
    pthread_mutex_unlock(&fz.mu);
    node_wake();
}

/* The input is over: wait until the node has closed its connections. */
static void node_end(void)
{
    pthread_mutex_lock(&fz.mu);
    fz.busy = false;
    pthread_mutex_unlock(&fz.mu);
    node_wake();
    pthread_mutex_lock(&fz.mu);
    while (!fz.idle)
        pthread_cond_wait(&fz.cv, &fz.mu);
    pthread_mutex_unlock(&fz.mu);
}

/* ------------------------------------------------------------------------
 * The client (the fuzz thread) */

static const ec_rcluster_opts fz_opts = {
    .connect_timeout_ms = 100, /* nothing waits on these but a stuck client */
    .io_timeout_ms = 250,
    .op_timeout_ms = 500,
    .max_attempts = 2,
    .refresh_interval_ms = 1,
    .backoff_min_ms = 1,
    .backoff_max_ms = 2,
    .max_value_bytes = 256 << 10,
};

static const char *const fz_keys[FZ_NKEYS] = {"k0", "k1", "k2", "k3", "k4"};
static const size_t fz_klens[FZ_NKEYS] = {2, 2, 2, 2, 2};
static const size_t fz_dlens[FZ_NKEYS] = {100000, 16, 65536, 0, 70000};

typedef struct fz_get {
    void *const *dests;
    unsigned calls[FZ_NKEYS];
    int status[FZ_NKEYS];
} fz_get;

/* Did val come, whole, from one answer to a non-CLUSTER command? */
static bool served(const void *val, size_t len)
{
    if (len == 0)
        return true;
    for (size_t k = 1; k < fz.nparts; k++)
        if (fz.part_len[k] >= len && memmem(fz.part[k], fz.part_len[k], val, len))
            return true;
    return false;
}

/* The statuses ec_rcluster_fn documents, and EC_EPERM (NOAUTH) and
 * EC_ENOMEM, which the client's code gives as well. */
static bool key_status_ok(int s)
{
    switch (s) {
    case 0:
    case EC_ENOENT:
    case EC_ECONN:
    case EC_ETIMEOUT:
    case EC_EBUSY:
    case EC_EPROTO:
    case EC_ETOOBIG:
    case EC_EIO:
    case EC_EPERM:
    case EC_ENOMEM:
        return true;
    default:
        return false;
    }
}

static void fz_fn(void *arg, size_t i, int status, const void *val, size_t len,
                  const char *msg)
{
    fz_get *g = arg;
    void *dest;

    FUZZ_CHECK(i < FZ_NKEYS);
    FUZZ_CHECK(++g->calls[i] == 1);
    FUZZ_CHECK(status <= 0 && status >= EC_E_LAST);
    FUZZ_CHECK(key_status_ok(status));
    g->status[i] = status;
    if (status != 0) {
        FUZZ_CHECK(val == NULL && len == 0);
        FUZZ_CHECK(status == EC_ENOENT ? msg == NULL : msg != NULL);
        return;
    }
    FUZZ_CHECK(msg == NULL);
    FUZZ_CHECK(val != NULL || len == 0);
    FUZZ_CHECK(len <= fz_opts.max_value_bytes);
    dest = g->dests[i];
    if (dest && val == dest)
        FUZZ_CHECK(len == fz_dlens[i]);
    FUZZ_CHECK(served(val, len));
    if (dest && val != dest && len && len <= fz_dlens[i])
        memcpy(dest, val, len); /* as a caller would */
}

static void run_mget_into(ec_rcluster *c)
{
    static void *dests[FZ_NKEYS];
    fz_get g = {.dests = dests};
    bool seen = false;
    size_t nfail = 0;
    int rc;

    if (!dests[0])
        for (size_t i = 0; i < FZ_NKEYS; i++)
            if (fz_dlens[i])
                FUZZ_CHECK((dests[i] = malloc(fz_dlens[i])) != NULL);
    rc = ec_rcluster_mget_into(c, fz_keys, fz_klens, FZ_NKEYS, dests, fz_dlens, fz_fn, &g);
    FUZZ_CHECK(rc <= 0 && rc >= EC_E_LAST);
    for (size_t i = 0; i < FZ_NKEYS; i++) {
        FUZZ_CHECK(g.calls[i] == 1);
        if (g.status[i] != 0 && g.status[i] != EC_ENOENT) {
            nfail++;
            seen |= g.status[i] == rc;
        }
    }
    FUZZ_CHECK(rc == 0 ? nfail == 0 : seen);
}

static void run_get(ec_rcluster *c)
{
    void *val = NULL;
    size_t len = SIZE_MAX;
    int rc = ec_rcluster_get(c, "k0", 2, &val, &len);

    FUZZ_CHECK(rc <= 0 && rc >= EC_E_LAST);
    FUZZ_CHECK(key_status_ok(rc));
    if (rc != 0) {
        FUZZ_CHECK(val == NULL && len == SIZE_MAX);
        return;
    }
    FUZZ_CHECK(val != NULL && len <= fz_opts.max_value_bytes);
    FUZZ_CHECK(((const char *)val)[len] == '\0');
    FUZZ_CHECK(served(val, len));
    free(val);
}

static void run_client(bool mode_b)
{
    ec_rcluster *c = NULL;
    char url[64], node[64], want[64];
    int rc;

    snprintf(url, sizeof(url), "%s127.0.0.1:%u", EC_RCLUSTER_URL_SCHEME, fz.port);
    rc = ec_rcluster_open(url, &fz_opts, &c);
    FUZZ_CHECK(rc <= 0 && rc >= EC_E_LAST);
    FUZZ_CHECK(rc == 0 ? c != NULL : c == NULL);
    /* Documented: EC_ECONN, EC_EPROTO (and EC_EINVAL, not for this url);
     * EC_EPERM comes from a node that answers NOAUTH. */
    FUZZ_CHECK(rc == 0 || rc == EC_ECONN || rc == EC_EPROTO || rc == EC_EPERM ||
               rc == EC_ENOMEM);
    if (mode_b)
        FUZZ_CHECK(rc == 0 || rc == EC_ECONN);
    if (rc != 0)
        return;
    if (mode_b) {
        snprintf(want, sizeof(want), "127.0.0.1:%u", fz.port);
        FUZZ_CHECK(ec_rcluster_slot_node(c, ec_rcluster_keyslot("k0", 2), node,
                                         sizeof(node)) == 0);
        FUZZ_CHECK(strcmp(node, want) == 0);
    }
    run_mget_into(c);
    run_get(c);
    rc = ec_rcluster_del_if_equal(c, "k1", 2, "v", 1);
    FUZZ_CHECK(rc <= 0 && rc >= EC_E_LAST);
    FUZZ_CHECK(key_status_ok(rc));
    ec_rcluster_close(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    const size_t tl = strlen(FUZZ_RCLUSTER_PORT);
    char *sub, *q, port[8];

    if (size == 0)
        return 0;
    FUZZ_CHECK(pthread_once(&once, node_start) == 0);
    /* The parts with the node's port in place of each "@port": exactly the
     * input's size, so AddressSanitizer sees a read past the end. */
    sub = malloc(size - 1 ? size - 1 : 1);
    FUZZ_CHECK(sub != NULL);
    memcpy(sub, data + 1, size - 1);
    snprintf(port, sizeof(port), "%05u", fz.port);
    for (q = sub; (size_t)(q - sub) + tl <= size - 1 &&
                  (q = memmem(q, size - 1 - (size_t)(q - sub), FUZZ_RCLUSTER_PORT, tl));
         q += tl)
        memcpy(q, port, tl);
    node_begin((data[0] & 1) == 0, sub, size - 1);
    run_client((data[0] & 1) == 0);
    node_end();
    free(sub);
    return 0;
}
