/*
 * rcluster_net.c - the nodes of a Redis Cluster client: non-blocking TCP
 * connections (connect timeout, every address of a name), send queues
 * written with sendmsg() (values from the caller's buffers), the poll loop
 * that drives every node at once (rc_pump), and the reply objects hiredis's
 * RESP parser builds, with limits, and with GET values handed to the caller
 * in place. Part of the Redis Cluster client (core/rcluster.h; the design
 * and invariants are on top of core/rcluster.c). Runs on the handle's one
 * thread.
 */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "core/rcluster_impl.h"

/* ------------------------------------------------------------------------
 * Reply objects: hiredis's layout (redisReply), our allocation, so that the
 * parser can refuse oversized replies and hand GET values over in place. */

static redisReply rc_delivered = {.type = RC_REPLY_DELIVERED};

void rc_free_obj(void *obj)
{
    redisReply *r = obj;

    if (!r || r == &rc_delivered)
        return;
    if (r->type == REDIS_REPLY_ARRAY && r->element) {
        for (size_t i = 0; i < r->elements; i++)
            rc_free_obj(r->element[i]);
        free(r->element);
    }
    free(r->str);
    free(r);
}

static redisReply *rc_obj(const redisReadTask *task, int type)
{
    rc_node *nd = task->privdata;
    redisReply *r;

    if (nd && ++nd->reply_objs > RC_MAX_OBJECTS) {
        snprintf(nd->refused, sizeof(nd->refused), "a reply of over %d objects", RC_MAX_OBJECTS);
        return NULL;
    }
    r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->type = type;
    if (task->parent) {
        redisReply *parent = task->parent->obj;
        assert(parent->type == REDIS_REPLY_ARRAY && (size_t)task->idx < parent->elements);
        parent->element[task->idx] = r;
    }
    return r;
}

/* A top-level bulk string answering a GET of the current call: give it to
 * the caller where it lies. */
static bool rc_deliver(rc_node *nd, const char *str, size_t len)
{
    ec_rcluster *c = nd->c;
    rc_call *call = c->call;
    uint32_t e;

    if (!call || call->kind != RC_GET || nd->pend_head >= nd->pend_n ||
        len > c->o.max_value_bytes)
        return false;
    e = nd->pend[nd->pend_head];
    if ((e & 3) != TAG_MAIN || call->ops[e >> 2].state != OP_INFLIGHT)
        return false;
    rc_done(c, call, e >> 2, 0, str, len, NULL);
    return true;
}

static void *rc_create_string(const redisReadTask *task, char *str, size_t len)
{
    rc_node *nd = task->privdata;
    redisReply *r;

    if (!task->parent && task->type == REDIS_REPLY_STRING && nd && rc_deliver(nd, str, len))
        return &rc_delivered;
    /* Each string is under max_value_bytes (its header was checked), but
     * an array of many is buffered whole: bound the reply, not only its
     * parts (a hostile node could otherwise make us hold RC_MAX_OBJECTS
     * values at once). */
    if (nd && (nd->reply_bytes += len) > nd->c->o.max_value_bytes + RC_REPLY_SLACK) {
        snprintf(nd->refused, sizeof(nd->refused), "a reply of over %llu bytes of strings",
                 (unsigned long long)(nd->c->o.max_value_bytes + RC_REPLY_SLACK));
        return NULL;
    }
    r = rc_obj(task, task->type);
    if (!r)
        return NULL;
    r->str = malloc(len + 1);
    if (!r->str) {
        if (task->parent)
            ((redisReply *)task->parent->obj)->element[task->idx] = NULL;
        free(r);
        return NULL;
    }
    memcpy(r->str, str, len);
    r->str[len] = '\0';
    r->len = len;
    return r;
}

static void *rc_create_array(const redisReadTask *task, int elements)
{
    rc_node *nd = task->privdata;
    redisReply *r;

    if (elements > RC_MAX_ELEMENTS) {
        if (nd)
            snprintf(nd->refused, sizeof(nd->refused), "an array of %d elements (limit %d)",
                     elements, RC_MAX_ELEMENTS);
        return NULL;
    }
    r = rc_obj(task, REDIS_REPLY_ARRAY);
    if (!r)
        return NULL;
    if (elements > 0) {
        r->element = calloc((size_t)elements, sizeof(*r->element));
        if (!r->element) {
            if (task->parent)
                ((redisReply *)task->parent->obj)->element[task->idx] = NULL;
            free(r);
            return NULL;
        }
    }
    r->elements = elements > 0 ? (size_t)elements : 0;
    return r;
}

static void *rc_create_integer(const redisReadTask *task, long long v)
{
    redisReply *r = rc_obj(task, REDIS_REPLY_INTEGER);
    if (r)
        r->integer = v;
    return r;
}

static void *rc_create_nil(const redisReadTask *task)
{
    return rc_obj(task, REDIS_REPLY_NIL);
}

static redisReplyObjectFunctions rc_fns = {
    .createString = rc_create_string,
    .createArray = rc_create_array,
    .createInteger = rc_create_integer,
    .createNil = rc_create_nil,
    .freeObject = rc_free_obj,
};

/* ------------------------------------------------------------------------
 * Nodes */

int rc_node_index(ec_rcluster *c, const char *host, size_t hlen, uint16_t port,
                         uint16_t *out)
{
    rc_node *nd;

    for (size_t i = 0; i < c->nnodes; i++) {
        nd = c->nodes[i];
        if (nd->port == port && strlen(nd->host) == hlen && memcmp(nd->host, host, hlen) == 0) {
            *out = (uint16_t)i;
            return 0;
        }
    }
    if (c->nnodes >= EC_RCLUSTER_MAX_NODES)
        return ec_seterr(EC_EPROTO, "the cluster names over %d nodes: refused",
                         EC_RCLUSTER_MAX_NODES);
    if (c->nnodes == c->nodes_cap) {
        size_t cap = c->nodes_cap ? c->nodes_cap * 2 : 16;
        rc_node **nn = realloc(c->nodes, cap * sizeof(*nn));
        if (!nn)
            return ec_seterr(EC_ENOMEM, "out of memory for the cluster's node table");
        c->nodes = nn;
        c->nodes_cap = cap;
    }
    nd = calloc(1, sizeof(*nd));
    if (!nd)
        return ec_seterr(EC_ENOMEM, "out of memory for a cluster node");
    memcpy(nd->host, host, hlen);
    nd->host[hlen] = '\0';
    nd->port = port;
    nd->c = c;
    nd->fd = -1;
    c->nodes[c->nnodes] = nd;
    *out = (uint16_t)c->nnodes++;
    c->gc_due = true;
    return 0;
}

static void rc_node_reset(rc_node *nd)
{
    if (nd->fd >= 0)
        close(nd->fd);
    nd->fd = -1;
    nd->state = NODE_IDLE;
    redisReaderFree(nd->rd);
    nd->rd = NULL;
    nd->hdr_len = nd->nseg = nd->seg_cur = nd->seg_off = 0;
    nd->pend_head = nd->pend_n = 0;
    nd->reply_objs = 0;
    nd->reply_bytes = 0;
    nd->bulk_on = false;
    nd->bulk_want = nd->bulk_got = 0;
    nd->auth_queued = false;
    nd->lowat = 0;
    nd->refused[0] = '\0';
    nd->ai_next = nd->ai;
}

void rc_node_free(rc_node *nd)
{
    if (!nd)
        return;
    rc_node_reset(nd);
    for (unsigned k = 0; k < nd->sync_got && k < RC_SYNC_MAX; k++)
        rc_free_obj(nd->sync_rep[k]);
    if (nd->ai)
        freeaddrinfo(nd->ai);
    free(nd->hdr);
    free(nd->bulk);
    free(nd->seg);
    free(nd->pend);
    free(nd);
}
/* Remember a reason in the call; returns its handle (offset + 1), 0 when
 * there is no call or no memory (the key then reports a generic reason). */
uint32_t rc_why(rc_call *call, const char *fmt, ...)
{
    char buf[EC_ERRMSG_MAX];
    va_list ap;
    int len;

    if (!call)
        return 0;
    va_start(ap, fmt);
    len = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (len < 0)
        return 0;
    if ((size_t)len >= sizeof(buf))
        len = sizeof(buf) - 1;
    if (call->why_len + (size_t)len + 1 > call->why_cap) {
        size_t cap = call->why_cap ? call->why_cap * 2 : 4096;
        char *nw;
        if (cap > (64u << 20) || call->why_len > UINT32_MAX - 2 * EC_ERRMSG_MAX)
            return 0;
        nw = realloc(call->why, cap);
        if (!nw)
            return 0;
        call->why = nw;
        call->why_cap = cap;
    }
    memcpy(call->why + call->why_len, buf, (size_t)len + 1);
    call->why_len += (size_t)len + 1;
    return (uint32_t)(call->why_len - (size_t)len - 1) + 1;
}
/* Close nd after a failure: its keys wait for a retry (invariant 3). */
void rc_node_fail(ec_rcluster *c, rc_node *nd, int code, const char *fmt, ...)
{
    char msg[240];
    rc_call *call = c->call;
    uint32_t why = 0;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(nd->err, sizeof(nd->err), "node %s:%u: %s", nd->host, nd->port, msg);
    nd->err_code = code;
    for (size_t k = nd->pend_head; k < nd->pend_n; k++) {
        uint32_t e = nd->pend[k];
        rc_op *op;
        if ((e & 3) != TAG_MAIN || !call)
            continue;
        op = &call->ops[e >> 2];
        if (op->state != OP_INFLIGHT)
            continue;
        if (!why)
            why = rc_why(call, "%s", nd->err);
        op->state = OP_WAIT;
        op->why = why;
        op->code = (int8_t)code;
    }
    rc_node_reset(nd);
    c->want_refresh = true;
}

/* Append a segment to the node's send list (grown by doubling). 0 or EC_ENOMEM. */
static int seg_push(rc_node *nd, rc_seg sg)
{
    if (nd->nseg == nd->seg_cap) {
        size_t cap = nd->seg_cap ? nd->seg_cap * 2 : 64;
        rc_seg *ns = realloc(nd->seg, cap * sizeof(*ns));
        if (!ns)
            return EC_ENOMEM;
        nd->seg = ns;
        nd->seg_cap = cap;
    }
    nd->seg[nd->nseg++] = sg;
    return 0;
}

static int rc_hdr_put(rc_node *nd, const void *p, size_t len)
{
    if (nd->hdr_len + len > nd->hdr_cap) {
        size_t cap = nd->hdr_cap ? nd->hdr_cap : 4096;
        char *nh;
        while (cap < nd->hdr_len + len)
            cap *= 2;
        nh = realloc(nd->hdr, cap);
        if (!nh)
            return EC_ENOMEM;
        nd->hdr = nh;
        nd->hdr_cap = cap;
    }
    if (nd->nseg && !nd->seg[nd->nseg - 1].ext &&
        nd->seg[nd->nseg - 1].off + nd->seg[nd->nseg - 1].len == nd->hdr_len) {
        nd->seg[nd->nseg - 1].len += len;
    } else {
        if (seg_push(nd, (rc_seg){.ext = NULL, .off = nd->hdr_len, .len = len}) < 0)
            return EC_ENOMEM;
    }
    memcpy(nd->hdr + nd->hdr_len, p, len);
    nd->hdr_len += len;
    return 0;
}

static int rc_ext_put(rc_node *nd, const void *p, size_t len)
{
    if (len == 0)
        return 0;
    return seg_push(nd, (rc_seg){.ext = p, .off = 0, .len = len});
}

/* nd owes a reply (or progress on one) within io_timeout_ms of now. */
static void rc_io_arm(const ec_rcluster *c, rc_node *nd, uint64_t now)
{
    nd->io_deadline = now + (uint64_t)c->o.io_timeout_ms * 1000000ull;
}

/* Queue one command (RESP array of bulk strings) on nd and its FIFO entry.
 * Arguments over 4 KiB are sent from where they lie. */
int rc_queue(ec_rcluster *c, rc_node *nd, int argc, const rc_arg *argv, uint32_t entry)
{
    char num[32];
    int len, rc;

    /* An idle connection's io_deadline is that of its last reply: it owes
     * nothing until now, so its time to answer starts now. */
    if (!rc_node_busy(nd) && nd->state == NODE_UP)
        rc_io_arm(c, nd, rc_now());
    /* A connection's first command is AUTH, when there is a password (the
     * queue of a node is empty until its connection's first command), with
     * the credentials as they are now (a reload may have changed them). */
    if ((entry & 3) != TAG_AUTH && !nd->auth_queued) {
        rc_auth_refresh(c);
        if (c->o.auth.password[0]) {
            const ec_rcluster_auth *a = &c->o.auth;
            rc_arg av[3] = {{"AUTH", 4}};
            int ac = 1;
            if (a->user[0])
                av[ac++] = (rc_arg){a->user, strlen(a->user)};
            av[ac++] = (rc_arg){a->password, strlen(a->password)};
            if ((rc = rc_queue(c, nd, ac, av, TAG_AUTH)) != 0)
                return rc;
            nd->auth_queued = true;
        }
    }
    if (nd->pend_n == nd->pend_cap) {
        size_t cap = nd->pend_cap ? nd->pend_cap * 2 : 64;
        uint32_t *np = realloc(nd->pend, cap * sizeof(*np));
        if (!np)
            goto nomem;
        nd->pend = np;
        nd->pend_cap = cap;
    }
    len = snprintf(num, sizeof(num), "*%d\r\n", argc);
    if ((rc = rc_hdr_put(nd, num, (size_t)len)) != 0)
        goto nomem;
    for (int a = 0; a < argc; a++) {
        len = snprintf(num, sizeof(num), "$%zu\r\n", argv[a].len);
        if (rc_hdr_put(nd, num, (size_t)len) != 0)
            goto nomem;
        rc = argv[a].len > 4096 ? rc_ext_put(nd, argv[a].p, argv[a].len)
                                : (argv[a].len ? rc_hdr_put(nd, argv[a].p, argv[a].len) : 0);
        if (rc != 0 || rc_hdr_put(nd, "\r\n", 2) != 0)
            goto nomem;
    }
    nd->pend[nd->pend_n++] = entry;
    c->st.commands++;
    return 0;
nomem:
    /* The queue may hold half a command: drop the connection and its keys. */
    rc_node_fail(c, nd, EC_ENOMEM, "out of memory queueing a command");
    return ec_seterr(EC_ENOMEM, "out of memory queueing a command for %s:%u", nd->host,
                     nd->port);
}

/* ------------------------------------------------------------------------
 * Connections and I/O */

static void rc_node_up(ec_rcluster *c, rc_node *nd, uint64_t now)
{
    nd->rd = redisReaderCreateWithFunctions(&rc_fns);
    if (!nd->rd) {
        rc_node_fail(c, nd, EC_ENOMEM, "out of memory for a reply parser");
        return;
    }
    nd->rd->privdata = nd;
    nd->rd->maxbuf = RC_READER_KEEP;
    nd->state = NODE_UP;
    rc_io_arm(c, nd, now);
    c->st.connects++;
}

/* Start a connect to nd's next address; all failed: fail nd. */
static void rc_node_connect(ec_rcluster *c, rc_node *nd, uint64_t now)
{
    if (!nd->ai) {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_NUMERICSERV};
        char port[8];
        int g;
        snprintf(port, sizeof(port), "%u", nd->port);
        g = getaddrinfo(nd->host, port, &hints, &nd->ai);
        if (g != 0) {
            nd->ai = NULL;
            c->st.connect_failures++;
            rc_node_fail(c, nd, EC_ECONN, "cannot resolve '%s': %s", nd->host, gai_strerror(g));
            return;
        }
        nd->ai_next = nd->ai;
        nd->connect_errno = 0;
    }
    while (nd->ai_next) {
        struct addrinfo *ai = nd->ai_next;
        int one = 1, fd;
        nd->ai_next = ai->ai_next;
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            nd->connect_errno = errno;
            continue;
        }
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        nd->fd = fd;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            rc_node_up(c, nd, now);
            return;
        }
        if (errno == EINPROGRESS) {
            nd->state = NODE_CONNECTING;
            nd->io_deadline = now + (uint64_t)c->o.connect_timeout_ms * 1000000ull;
            return;
        }
        nd->connect_errno = errno;
        close(fd);
        nd->fd = -1;
    }
    c->st.connect_failures++;
    rc_node_fail(c, nd, EC_ECONN, "cannot connect: %s; is the node running and reachable?",
                 strerror(nd->connect_errno ? nd->connect_errno : ECONNREFUSED));
}

static void rc_node_connected(ec_rcluster *c, rc_node *nd, uint64_t now)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(nd->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err == 0) {
        rc_node_up(c, nd, now);
        return;
    }
    nd->connect_errno = err;
    close(nd->fd);
    nd->fd = -1;
    nd->state = NODE_IDLE;
    rc_node_connect(c, nd, now); /* the next address, or fail */
}

static void rc_node_write(ec_rcluster *c, rc_node *nd, uint64_t now)
{
    while (nd->seg_cur < nd->nseg) {
        struct iovec iov[RC_IOV];
        struct msghdr mh = {.msg_iov = iov};
        size_t k = nd->seg_cur, cnt = 0;
        ssize_t w;

        for (; k < nd->nseg && cnt < RC_IOV; k++, cnt++) {
            const rc_seg *s = &nd->seg[k];
            size_t skip = cnt == 0 ? nd->seg_off : 0;
            iov[cnt].iov_base = (char *)(s->ext ? s->ext : nd->hdr + s->off) + skip;
            iov[cnt].iov_len = s->len - skip;
        }
        mh.msg_iovlen = cnt;
        w = sendmsg(nd->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            rc_node_fail(c, nd, EC_ECONN, "send failed: %s", strerror(errno));
            return;
        }
        c->st.bytes_out += (uint64_t)w;
        rc_io_arm(c, nd, now);
        while (w > 0) {
            size_t left = nd->seg[nd->seg_cur].len - nd->seg_off;
            if ((size_t)w >= left) {
                w -= (ssize_t)left;
                nd->seg_cur++;
                nd->seg_off = 0;
            } else {
                nd->seg_off += (size_t)w;
                w = 0;
            }
        }
    }
    nd->hdr_len = nd->nseg = nd->seg_cur = nd->seg_off = 0;
}

/* The reply at the head of nd's FIFO declares a value over max_value_bytes:
 * its key fails now, alone (retrying cannot help), so that the keys queued
 * behind it, which lose their replies with the connection, are retried
 * without it. */
static void rc_refuse_head(ec_rcluster *c, rc_node *nd, unsigned long long declared,
                           const char *least)
{
    uint32_t e;

    if (!c->call || nd->pend_head >= nd->pend_n)
        return;
    e = nd->pend[nd->pend_head];
    if ((e & 3) != TAG_MAIN || c->call->ops[e >> 2].state != OP_INFLIGHT)
        return;
    nd->pend_head++;
    rc_fail_key(c, c->call, e >> 2, EC_ETOOBIG, "node %s:%u sent a value of %s%llu bytes, "
                "over max_value_bytes (%llu)", nd->host, nd->port,
                declared == ULLONG_MAX ? "over " : least,
                declared == ULLONG_MAX ? 999999999999999999ull : declared,
                (unsigned long long)c->o.max_value_bytes);
}

/* Parse what the reader holds; hand each complete reply to its FIFO entry.
 * Returns 0, or -1 after failing the node. */
static int rc_node_drain(ec_rcluster *c, rc_node *nd)
{
    for (;;) {
        void *rep = NULL;
        redisReader *rd = nd->rd;
        if (redisReaderGetReply(rd, &rep) != REDIS_OK) {
            rc_node_fail(c, nd, EC_EPROTO, "malformed reply (%s); the connection was dropped",
                         nd->refused[0] ? nd->refused : rd->errstr);
            return -1;
        }
        if (!rep) {
            /* Incomplete: refuse what can never be a valid reply before
             * buffering it (invariant 5). */
            size_t unparsed = rd->len - rd->pos, k = rd->len;
            /* A bulk string under way: its length is at pos once hiredis
             * has taken the '$' (its task's type is then set), else after
             * the '$' at pos. */
            if (rd->ridx >= 0 && rd->rstack[rd->ridx].type == REDIS_REPLY_STRING)
                k = rd->pos;
            else if (unparsed > 0 && rd->buf[rd->pos] == '$')
                k = rd->pos + 1;
            if (k < rd->len) {
                unsigned long long declared = 0;
                size_t first = k;
                /* 18 digits cannot overflow; more are over any limit. */
                for (; k < rd->len && rd->buf[k] >= '0' && rd->buf[k] <= '9'; k++)
                    declared = k - first >= 18 ? ULLONG_MAX : declared * 10 +
                               (unsigned long long)(rd->buf[k] - '0');
                if (declared > c->o.max_value_bytes) {
                    /* digits up to the end of what arrived: more may follow */
                    const char *least = k == rd->len ? "at least " : "";
                    rc_refuse_head(c, nd, declared, least);
                    rc_node_fail(c, nd, EC_ETOOBIG, "a reply declares a value of %s%llu bytes, "
                                 "over max_value_bytes (%llu); the connection was dropped",
                                 declared == ULLONG_MAX ? "over " : least,
                                 declared == ULLONG_MAX ? 999999999999999999ull : declared,
                                 (unsigned long long)c->o.max_value_bytes);
                    return -1;
                }
            }
            if (unparsed > c->o.max_value_bytes + 2 * RC_FEED_SLICE + 64) {
                rc_node_fail(c, nd, EC_EPROTO, "%zu bytes without a complete reply element, "
                             "over max_value_bytes (%llu); the connection was dropped", unparsed,
                             (unsigned long long)c->o.max_value_bytes);
                return -1;
            }
            return 0;
        }
        nd->reply_objs = 0;
        nd->reply_bytes = 0;
        if (nd->pend_head >= nd->pend_n) {
            rc_free_obj(rep);
            rc_node_fail(c, nd, EC_EPROTO, "a reply nobody asked for; the connection was dropped");
            return -1;
        }
        rc_on_reply(c, nd, nd->pend[nd->pend_head++], rep);
        if (nd->pend_head == nd->pend_n)
            nd->pend_head = nd->pend_n = 0;
        if (nd->state != NODE_UP)
            return -1;
    }
}

/*
 * Direct values. A GET value of RC_DIRECT_MIN bytes or more that starts a
 * reply while the parser holds nothing is not fed to hiredis: its bytes go
 * from the read buffer, then straight from the socket, into the caller's
 * memory (ec_rcluster_mget_into, when it gave a destination of that
 * length) or into nd->bulk and from there to the caller. Through the
 * parser a value was copied into its buffer (and moved within it as that
 * grew), then to the caller: for the remote tier's 1 MiB chunks that was
 * most of the daemon's CPU. Only
 * a reply the FIFO says is the current call's GET of a key in flight
 * qualifies (what rc_deliver would hand over anyway); the length is
 * checked against max_value_bytes before anything is buffered, and the
 * value must end in CRLF, else the node fails (EC_EPROTO).
 */

/* While a long value arrives, poll need not wake for every segment: ask
 * for what is left of it, up to RC_LOWAT, before the socket is readable
 * (fewer wakeups and reads on the 1 MiB chunks of the remote tier). Back to
 * 1 for anything else, or a short reply would never wake us. */
static void rc_lowat(rc_node *nd, size_t want)
{
    unsigned w = want > RC_LOWAT ? RC_LOWAT : want < 1 ? 1 : (unsigned)want;

    if (w == (nd->lowat ? nd->lowat : 1))
        return;
    if (setsockopt(nd->fd, SOL_SOCKET, SO_RCVLOWAT, &(int){(int)w}, sizeof(int)) == 0)
        nd->lowat = w;
}

/* The value is complete: check its CRLF and hand it over as the reply at
 * the head of the FIFO. 0, or -1 after failing the node. */
static int rc_direct_finish(ec_rcluster *c, rc_node *nd)
{
    size_t n = nd->bulk_want - 2;

    nd->bulk_on = false;
    rc_lowat(nd, 1);
    if (nd->crlf[0] != '\r' || nd->crlf[1] != '\n') {
        rc_node_fail(c, nd, EC_EPROTO, "malformed reply (a value of %zu bytes not followed by "
                     "CRLF); the connection was dropped", n);
        return -1;
    }
    if (!rc_deliver(nd, nd->bulk_dst, n)) { /* cannot happen: rc_direct_start checked */
        rc_node_fail(c, nd, EC_EPROTO, "a value nobody asked for; the connection was dropped");
        return -1;
    }
    nd->reply_objs = 0;
    nd->reply_bytes = 0;
    rc_on_reply(c, nd, nd->pend[nd->pend_head++], &rc_delivered);
    if (nd->pend_head == nd->pend_n)
        nd->pend_head = nd->pend_n = 0;
    if (nd->bulk_cap > RC_DIRECT_KEEP) {
        free(nd->bulk);
        nd->bulk = NULL;
        nd->bulk_cap = 0;
    }
    return nd->state == NODE_UP ? 0 : -1;
}

/* Where the next bytes of a direct value go, and how many may. */
static char *rc_direct_room(rc_node *nd, size_t *cap)
{
    size_t n = nd->bulk_want - 2;

    if (nd->bulk_got < n) {
        *cap = n - nd->bulk_got;
        return nd->bulk_dst + nd->bulk_got;
    }
    *cap = nd->bulk_want - nd->bulk_got;
    return nd->crlf + (nd->bulk_got - n);
}

/* Does buf (len bytes just read, at a reply boundary) start a direct value?
 * Then take its header and what of it buf holds: return the bytes used
 * (the node is then in direct mode, or the value was delivered), else 0
 * (feed the parser as usual). -1: the node failed. */
static long rc_direct_start(ec_rcluster *c, rc_node *nd, const char *buf, size_t len)
{
    const redisReader *rd = nd->rd;
    rc_call *call = c->call;
    unsigned long long n = 0;
    size_t k = 1, used;
    uint32_t e, i;

    /* The parser is idle: all it was fed is parsed, and no reply is under
     * way (hiredis leaves an empty task 0, type -1, after a reply). */
    if (rd->pos != rd->len || rd->ridx > 0 || (rd->ridx == 0 && rd->rstack[0].type >= 0) ||
        len < 2 || buf[0] != '$' || !call || call->kind != RC_GET ||
        nd->pend_head >= nd->pend_n)
        return 0;
    e = nd->pend[nd->pend_head];
    i = e >> 2;
    if ((e & 3) != TAG_MAIN || call->ops[i].state != OP_INFLIGHT)
        return 0;
    for (; k < len && k < 20 && buf[k] >= '0' && buf[k] <= '9'; k++)
        n = n * 10 + (unsigned long long)(buf[k] - '0');
    /* A leading zero ("$0100000") is the parser's too, which refuses it as
     * hiredis does: both paths read the same replies the same way. */
    if (k == 1 || buf[1] == '0' || k + 1 >= len || buf[k] != '\r' || buf[k + 1] != '\n' ||
        n < RC_DIRECT_MIN || n > c->o.max_value_bytes)
        return 0; /* short, nil, incomplete or over the limit: the parser's */
    k += 2;
    if (call->dests && call->dests[i] && call->dest_lens[i] == n) {
        nd->bulk_dst = call->dests[i]; /* the caller's: no copy after the socket's */
    } else {
        if (nd->bulk_cap < n) {
            char *b = realloc(nd->bulk, (size_t)n);
            if (!b)
                return 0;
            nd->bulk = b;
            nd->bulk_cap = (size_t)n;
        }
        nd->bulk_dst = nd->bulk;
    }
    nd->bulk_want = (size_t)n + 2;
    nd->bulk_got = 0;
    nd->bulk_on = true;
    used = k;
    while (used < len && nd->bulk_got < nd->bulk_want) {
        size_t cap, t;
        char *to = rc_direct_room(nd, &cap);
        t = len - used < cap ? len - used : cap;
        memcpy(to, buf + used, t);
        nd->bulk_got += t;
        used += t;
    }
    if (nd->bulk_got == nd->bulk_want && rc_direct_finish(c, nd) != 0)
        return -1;
    return (long)used;
}

/* The length of the header "$<n>\r\n" of the next reply when it should be
 * a value of n bytes that has a place of its own (mget_into), else 0.
 * Reading just that much first lets the value's bytes go from the socket
 * to their place: a full read would bring up to RC_READ_CHUNK of them into
 * rbuf, to be copied again (a quarter of a 1 MiB value, as measured). A
 * reply that turns out to be something else (nil, an error, a redirect, a
 * value of another length) is parsed as usual from what was read. */
static size_t rc_direct_hint(const ec_rcluster *c, const rc_node *nd)
{
    const redisReader *rd = nd->rd;
    const rc_call *call = c->call;
    size_t n, h = 3; /* '$', CR, LF */
    uint32_t e, i;

    if (rd->pos != rd->len || rd->ridx > 0 || (rd->ridx == 0 && rd->rstack[0].type >= 0) ||
        !call || call->kind != RC_GET || !call->dests || nd->pend_head >= nd->pend_n)
        return 0;
    e = nd->pend[nd->pend_head];
    i = e >> 2;
    if ((e & 3) != TAG_MAIN || call->ops[i].state != OP_INFLIGHT || !call->dests[i] ||
        call->dest_lens[i] < RC_DIRECT_MIN || call->dest_lens[i] > c->o.max_value_bytes)
        return 0;
    for (n = call->dest_lens[i]; n; n /= 10)
        h++;
    return h;
}

static void rc_node_read(ec_rcluster *c, rc_node *nd, uint64_t now)
{
    for (int rounds = 0; rounds < 4 && nd->state == NODE_UP; rounds++) {
        size_t cap = RC_READ_CHUNK, hint = nd->bulk_on ? 0 : rc_direct_hint(c, nd);
        char *dst = nd->bulk_on ? rc_direct_room(nd, &cap) : c->rbuf;
        if (hint)
            cap = hint;
        ssize_t r = read(nd->fd, dst, cap);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            rc_node_fail(c, nd, EC_ECONN, "receive failed: %s", strerror(errno));
            return;
        }
        if (r == 0) {
            rc_node_fail(c, nd, EC_ECONN, "the node closed the connection");
            return;
        }
        c->st.bytes_in += (uint64_t)r;
        rc_io_arm(c, nd, now);
        if (nd->bulk_on) {
            nd->bulk_got += (size_t)r;
            if (nd->bulk_got == nd->bulk_want && rc_direct_finish(c, nd) != 0)
                return;
            if ((size_t)r < cap) {
                if (nd->bulk_on)
                    rc_lowat(nd, nd->bulk_want - nd->bulk_got);
                return;
            }
            rounds--; /* a long value is one round, however many reads */
            continue;
        }
        for (size_t off = 0; off < (size_t)r && nd->state == NODE_UP;) {
            long used = rc_direct_start(c, nd, c->rbuf + off, (size_t)r - off);
            size_t sl;
            if (used < 0)
                return;
            if (used > 0) {
                off += (size_t)used;
                continue;
            }
            sl = (size_t)r - off < RC_FEED_SLICE ? (size_t)r - off : RC_FEED_SLICE;
            if (redisReaderFeed(nd->rd, c->rbuf + off, sl) != REDIS_OK) {
                rc_node_fail(c, nd, EC_ENOMEM, "out of memory buffering a reply");
                return;
            }
            if (rc_node_drain(c, nd) != 0)
                return;
            off += sl;
        }
        if ((size_t)r < cap)
            return;
        if (hint)
            rounds--; /* the header of a direct value: its bytes are next */
    }
}

bool rc_node_busy(const rc_node *nd)
{
    return nd->seg_cur < nd->nseg || nd->pend_head < nd->pend_n;
}

/* Connect, write and read every node with work until none has any, or
 * until deadline (then the nodes still owing replies are failed).
 *
 * A node times out only when a poll that began after its io_deadline found
 * nothing from it, and the call ends at deadline only after one more poll
 * (without waiting) was read: a reply that arrived while this process was
 * not running is a reply, not a silence. */
void rc_pump(ec_rcluster *c, uint64_t deadline)
{
    bool last = false;

    for (;;) {
        uint64_t now = rc_now(), wake = deadline, t_poll;
        size_t np = 0;

        if (c->pfd_cap < c->nnodes) {
            struct pollfd *pf = realloc(c->pfd, c->nnodes * sizeof(*pf));
            rc_node **pn;
            if (pf)
                c->pfd = pf;
            pn = pf ? realloc(c->pnode, c->nnodes * sizeof(*pn)) : NULL;
            if (!pf || !pn) {
                for (size_t i = 0; i < c->nnodes; i++)
                    if (rc_node_busy(c->nodes[i]))
                        rc_node_fail(c, c->nodes[i], EC_ENOMEM, "out of memory for poll");
                return;
            }
            c->pnode = pn;
            c->pfd_cap = c->nnodes;
        }
        for (size_t i = 0; i < c->nnodes; i++) {
            rc_node *nd = c->nodes[i];
            short ev;
            if (!rc_node_busy(nd))
                continue;
            if (nd->state == NODE_IDLE)
                rc_node_connect(c, nd, now);
            if (nd->state == NODE_IDLE)
                continue;
            if (nd->state == NODE_CONNECTING)
                ev = POLLOUT;
            else
                ev = (short)((nd->seg_cur < nd->nseg ? POLLOUT : 0) |
                             (nd->pend_head < nd->pend_n ? POLLIN : 0));
            c->pfd[np] = (struct pollfd){.fd = nd->fd, .events = ev};
            c->pnode[np++] = nd;
            if (nd->io_deadline < wake)
                wake = nd->io_deadline;
        }
        if (np == 0)
            return;
        if (last) {
            for (size_t j = 0; j < np; j++)
                rc_node_fail(c, c->pnode[j], EC_ETIMEOUT, "no answer within op_timeout_ms "
                             "(%u ms); the connection was dropped", c->o.op_timeout_ms);
            return;
        }
        uint64_t wait_ms = wake > now ? (wake - now + 999999) / 1000000 : 0;
        t_poll = rc_now();
        int pr = poll(c->pfd, np, (int)(wait_ms > 60000 ? 60000 : wait_ms));
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            for (size_t j = 0; j < np; j++)
                rc_node_fail(c, c->pnode[j], EC_EIO, "poll failed: %s", strerror(e));
            return;
        }
        last = t_poll >= deadline;
        now = rc_now();
        for (size_t j = 0; j < np; j++) {
            rc_node *nd = c->pnode[j];
            short re = c->pfd[j].revents;
            int unread = 0;
            if (!re) {
                if (t_poll < nd->io_deadline)
                    continue;
                if (nd->state == NODE_UP && nd->lowat > 1 &&
                    ioctl(nd->fd, FIONREAD, &unread) == 0 && unread > 0) {
                    /* Bytes arrive, more slowly than SO_RCVLOWAT waits
                     * for: that is progress, not silence. Wake for every
                     * byte from now. */
                    rc_lowat(nd, 1);
                    rc_io_arm(c, nd, now);
                } else if (nd->state == NODE_CONNECTING) {
                    c->st.connect_failures++;
                    rc_node_fail(c, nd, EC_ECONN, "connect timed out after %u ms "
                                 "(connect_timeout_ms)", c->o.connect_timeout_ms);
                } else {
                    rc_node_fail(c, nd, EC_ETIMEOUT, "no reply for %u ms (io_timeout_ms); "
                                 "the connection was dropped", c->o.io_timeout_ms);
                }
                continue;
            }
            if (nd->state == NODE_CONNECTING) {
                rc_node_connected(c, nd, now);
                continue;
            }
            if (nd->state == NODE_UP && (re & POLLOUT))
                rc_node_write(c, nd, now);
            if (nd->state == NODE_UP && (re & (POLLIN | POLLHUP | POLLERR)))
                rc_node_read(c, nd, now);
            if (nd->state == NODE_UP && (re & (POLLHUP | POLLERR | POLLNVAL)) &&
                !(re & POLLIN))
                rc_node_fail(c, nd, EC_ECONN, "the connection broke");
        }
    }
}

/* Send argc commands of argv_list (each argn[i] arguments) to nd and wait
 * for their replies (freed by the caller with rc_sync_free). */
int rc_sync(ec_rcluster *c, rc_node *nd, unsigned ncmd, const int *argn,
                   const rc_arg *const *argv, uint64_t deadline, redisReply **out)
{
    int rc;

    assert(ncmd <= RC_SYNC_MAX);
    nd->sync_got = 0;
    for (unsigned k = 0; k < ncmd; k++)
        if ((rc = rc_queue(c, nd, argn[k], argv[k], TAG_SYNC)) != 0)
            return rc;
    rc_pump(c, deadline);
    if (nd->sync_got < ncmd) {
        for (unsigned k = 0; k < nd->sync_got; k++)
            rc_free_obj(nd->sync_rep[k]);
        nd->sync_got = 0;
        return ec_seterr(nd->err[0] && nd->err_code ? nd->err_code : EC_ECONN, "%s",
                         nd->err[0] ? nd->err : "no reply");
    }
    for (unsigned k = 0; k < ncmd; k++)
        out[k] = nd->sync_rep[k];
    nd->sync_got = 0;
    return 0;
}
