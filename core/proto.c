/*
 * proto.c - the control protocol codec and SEQPACKET transport (proto.h).
 *
 * Stateless: the writer appends little-endian fields into a fixed buffer and
 * remembers an overflow instead of writing past it; the reader checks every
 * field against the bytes left and remembers failure, so a handler reads all
 * fields and then checks ec_rbuf_done() once. Runs in the daemon's server
 * thread and in every client thread that talks to the daemon.
 */
#include "proto.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/dtype.h"
#include "common/err.h"

static void put(ec_wbuf *w, const void *p, size_t n)
{
    if (n == 0)
        return; /* p may be NULL (an empty string) */
    if (w->overflow || n > w->cap - w->len) {
        w->overflow = true;
        return;
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

void ec_msg_begin(ec_wbuf *w, void *buf, size_t cap, uint16_t op, uint32_t req_id,
                  int32_t status)
{
    ec_msg_hdr h = {.magic = EC_PROTO_MAGIC,
                    .version = EC_PROTO_VERSION,
                    .op = op,
                    .req_id = req_id,
                    .status = status};
    w->buf = buf;
    w->cap = cap < EC_MSG_MAX ? cap : EC_MSG_MAX;
    w->len = 0;
    w->overflow = false;
    put(w, &h, sizeof(h));
}

size_t ec_msg_end(ec_wbuf *w)
{
    uint32_t body;

    if (w->overflow || w->len < EC_MSG_HDR)
        return 0;
    body = (uint32_t)(w->len - EC_MSG_HDR);
    memcpy(w->buf + offsetof(ec_msg_hdr, body_len), &body, 4);
    return w->len;
}

size_t ec_wbuf_room(const ec_wbuf *w)
{
    return w->overflow ? 0 : w->cap - w->len;
}

void ec_put_u8(ec_wbuf *w, uint8_t v) { put(w, &v, 1); }
void ec_put_u16(ec_wbuf *w, uint16_t v) { put(w, &v, 2); }
void ec_put_u32(ec_wbuf *w, uint32_t v) { put(w, &v, 4); }
void ec_put_u64(ec_wbuf *w, uint64_t v) { put(w, &v, 8); }
void ec_put_i64(ec_wbuf *w, int64_t v) { put(w, &v, 8); }

void ec_put_str(ec_wbuf *w, const char *s)
{
    size_t n = s ? strlen(s) : 0;

    if (n > UINT16_MAX) {
        w->overflow = true;
        return;
    }
    ec_put_u16(w, (uint16_t)n);
    put(w, s, n);
}

int ec_msg_parse(const void *buf, size_t len, ec_msg_hdr *hdr, ec_rbuf *body)
{
    ec_msg_hdr h;

    if (len < EC_MSG_HDR)
        return ec_seterr(EC_EPROTO, "message of %zu bytes is shorter than its %u-byte header",
                         len, EC_MSG_HDR);
    memcpy(&h, buf, sizeof(h));
    if (h.magic != EC_PROTO_MAGIC)
        return ec_seterr(EC_EPROTO, "message has bad magic 0x%08x: not an embcache peer",
                         h.magic);
    if (h.version != EC_PROTO_VERSION)
        return ec_seterr(EC_EVERSION,
                         "peer speaks protocol version %u, this side speaks %u: "
                         "upgrade the older of embcached and libembcache",
                         h.version, EC_PROTO_VERSION);
    if (h.body_len != len - EC_MSG_HDR || h.reserved != 0)
        return ec_seterr(EC_EPROTO, "message header claims a %u-byte body, %zu bytes arrived",
                         h.body_len, len - EC_MSG_HDR);
    *hdr = h;
    body->p = (const uint8_t *)buf + EC_MSG_HDR;
    body->len = h.body_len;
    body->pos = 0;
    body->bad = false;
    return 0;
}

static bool get(ec_rbuf *r, void *dst, size_t n)
{
    if (r->bad || n > r->len - r->pos) {
        r->bad = true;
        memset(dst, 0, n);
        return false;
    }
    memcpy(dst, r->p + r->pos, n);
    r->pos += n;
    return true;
}

uint8_t ec_get_u8(ec_rbuf *r) { uint8_t v; get(r, &v, 1); return v; }
uint16_t ec_get_u16(ec_rbuf *r) { uint16_t v; get(r, &v, 2); return v; }
uint32_t ec_get_u32(ec_rbuf *r) { uint32_t v; get(r, &v, 4); return v; }
uint64_t ec_get_u64(ec_rbuf *r) { uint64_t v; get(r, &v, 8); return v; }
int64_t ec_get_i64(ec_rbuf *r) { int64_t v; get(r, &v, 8); return v; }

void ec_get_str(ec_rbuf *r, char *dst, size_t cap)
{
    uint16_t n = ec_get_u16(r);

    dst[0] = '\0';
    if (r->bad)
        return;
    if ((size_t)n >= cap || n > r->len - r->pos || memchr(r->p + r->pos, 0, n)) {
        r->bad = true;
        return;
    }
    memcpy(dst, r->p + r->pos, n);
    dst[n] = '\0';
    r->pos += n;
}

void ec_put_raw(ec_wbuf *w, const void *p, size_t n)
{
    put(w, p, n);
}

void ec_put_bytes(ec_wbuf *w, const void *p, size_t n)
{
    if (n > UINT32_MAX) {
        w->overflow = true;
        return;
    }
    ec_put_u32(w, (uint32_t)n);
    put(w, p, n);
}

uint32_t ec_get_bytes(ec_rbuf *r, const uint8_t **p, uint32_t max)
{
    uint32_t n = ec_get_u32(r);

    *p = NULL;
    if (r->bad)
        return 0;
    if (n > max || n > r->len - r->pos) {
        r->bad = true;
        return 0;
    }
    *p = n ? r->p + r->pos : NULL;
    r->pos += n;
    return n;
}

bool ec_rbuf_done(const ec_rbuf *r)
{
    return !r->bad && r->pos == r->len;
}

void ec_put_tensor(ec_wbuf *w, const ec_proto_tensor *t)
{
    ec_put_u32(w, t->id);
    ec_put_str(w, t->model);
    ec_put_i64(w, t->version);
    ec_put_str(w, t->name);
    ec_put_u32(w, t->dtype);
    ec_put_u32(w, t->ndim);
    for (uint32_t i = 0; i < EC_MAX_DIMS; i++)
        ec_put_u64(w, t->shape[i]);
    ec_put_u64(w, t->rows);
    ec_put_u64(w, t->row_bytes);
    ec_put_u64(w, t->rows_per_partition);
    ec_put_u64(w, t->partitions);
    ec_put_u32(w, t->mode);
}

int ec_get_tensor(ec_rbuf *r, ec_proto_tensor *t)
{
    uint64_t elems = 1, row_elems = 1, row_bytes, total;

    t->id = ec_get_u32(r);
    ec_get_str(r, t->model, sizeof(t->model));
    t->version = ec_get_i64(r);
    ec_get_str(r, t->name, sizeof(t->name));
    t->dtype = ec_get_u32(r);
    t->ndim = ec_get_u32(r);
    for (uint32_t i = 0; i < EC_MAX_DIMS; i++)
        t->shape[i] = ec_get_u64(r);
    t->rows = ec_get_u64(r);
    t->row_bytes = ec_get_u64(r);
    t->rows_per_partition = ec_get_u64(r);
    t->partitions = ec_get_u64(r);
    t->mode = ec_get_u32(r);
    if (r->bad)
        return ec_seterr(EC_EPROTO, "tensor record is truncated");
    if (t->id == 0 || !ec_dtype_valid(t->dtype) || t->ndim > EC_MAX_DIMS ||
        t->mode > EC_CACHE_DYNAMIC)
        return ec_seterr(EC_EPROTO, "tensor record has id %u, dtype %u, ndim %u, mode %u",
                         t->id, t->dtype, t->ndim, t->mode);
    /* Every product is checked for overflow: a record whose sizes only agree
     * after wrapping around 64 bits is refused (found by fuzz_proto). */
    for (uint32_t i = 0; i < t->ndim; i++) {
        if (__builtin_mul_overflow(elems, t->shape[i], &elems) ||
            (i > 0 && __builtin_mul_overflow(row_elems, t->shape[i], &row_elems)))
            return ec_seterr(EC_EPROTO, "tensor record's shape overflows");
    }
    if (__builtin_mul_overflow(row_elems, (uint64_t)ec_dtype_size((ec_dtype)t->dtype), &row_bytes) ||
        __builtin_mul_overflow(t->rows, row_bytes, &total))
        return ec_seterr(EC_EPROTO, "tensor record's size overflows");
    if (t->rows != (t->ndim ? t->shape[0] : 1) || t->row_bytes != row_bytes ||
        t->rows_per_partition == 0 ||
        t->partitions != t->rows / t->rows_per_partition + (t->rows % t->rows_per_partition != 0))
        return ec_seterr(EC_EPROTO, "tensor record for '%s' is inconsistent", t->name);
    return 0;
}

void ec_put_tensor_stat(ec_wbuf *w, const ec_proto_tensor_stat *t)
{
    ec_put_u32(w, t->id);
    ec_put_u32(w, t->mode);
    ec_put_u32(w, t->policy);
    ec_put_u32(w, t->file_version);
    ec_put_str(w, t->model);
    ec_put_i64(w, t->version);
    ec_put_str(w, t->name);
    ec_put_u64(w, t->bytes);
    ec_put_u64(w, t->row_bytes);
    ec_put_u64(w, t->resident_bytes);
    ec_put_u64(w, t->resident_rows);
    ec_put_u64(w, t->rows_served);
    ec_put_u64(w, t->hits);
    ec_put_u64(w, t->row_faults);
    ec_put_u64(w, t->bytes_read);
}

int ec_get_tensor_stat(ec_rbuf *r, ec_proto_tensor_stat *t)
{
    t->id = ec_get_u32(r);
    t->mode = ec_get_u32(r);
    t->policy = ec_get_u32(r);
    t->file_version = ec_get_u32(r);
    ec_get_str(r, t->model, sizeof(t->model));
    t->version = ec_get_i64(r);
    ec_get_str(r, t->name, sizeof(t->name));
    t->bytes = ec_get_u64(r);
    t->row_bytes = ec_get_u64(r);
    t->resident_bytes = ec_get_u64(r);
    t->resident_rows = ec_get_u64(r);
    t->rows_served = ec_get_u64(r);
    t->hits = ec_get_u64(r);
    t->row_faults = ec_get_u64(r);
    t->bytes_read = ec_get_u64(r);
    if (r->bad)
        return ec_seterr(EC_EPROTO, "tensor statistics record is truncated");
    if (t->id == 0 || t->mode > EC_CACHE_ROWS || t->policy > EC_CACHE_ROWS)
        return ec_seterr(EC_EPROTO, "tensor statistics record has id %u, mode %u, policy %u",
                         t->id, t->mode, t->policy);
    return 0;
}

int ec_msg_send(int sock, const void *msg, size_t len, const int *fds, int nfds, bool nonblock)
{
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * EC_MSG_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;

    if (nfds > EC_MSG_MAX_FDS)
        return ec_seterr(EC_ETOOBIG, "%d descriptors in one message (at most %d)", nfds,
                         EC_MSG_MAX_FDS);
    if (nfds > 0) {
        struct cmsghdr *cm;
        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    }
    do
        n = sendmsg(sock, &mh, MSG_NOSIGNAL | (nonblock ? MSG_DONTWAIT : 0));
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN)
            return ec_seterr(EC_ECONN, "the peer closed the connection");
        return ec_seterr_errno(EC_EIO, errno, "sendmsg of %zu bytes", len);
    }
    if ((size_t)n != len)
        return ec_seterr(EC_EIO, "short send: %zd of %zu bytes", n, len);
    return 0;
}

ssize_t ec_msg_recv(int sock, void *buf, size_t cap, int *fds, int *nfds, int maxfds)
{
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    union {
        char buf[CMSG_SPACE(sizeof(int) * EC_MSG_MAX_FDS)];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1,
                        .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)};
    int got = 0, dropped = 0;
    ssize_t n;

    if (nfds)
        *nfds = 0;
    do
        n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == ECONNRESET) {
        /* A peer that closes with our messages unread resets the socket,
         * and a seqpacket socket reports that before the messages the peer
         * sent first (a refusal, the error that ended a session). The
         * report is consumed; read what is queued, then report the reset. */
        mh.msg_controllen = sizeof(ctl.buf);
        do
            n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        while (n < 0 && errno == EINTR);
        if (n <= 0)
            return ec_seterr(EC_ECONN, "the peer reset the connection");
    }
    if (n < 0) {
        if (errno == ECONNRESET)
            return ec_seterr(EC_ECONN, "the peer reset the connection");
        return ec_seterr_errno(EC_EIO, errno, "recvmsg");
    }
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *in = (int *)CMSG_DATA(cm);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, &in[i], sizeof(int));
            if (fds && got < maxfds) {
                fds[got++] = fd;
            } else {
                close(fd); /* nobody asked for it */
                dropped++;
            }
        }
    }
    if (nfds)
        *nfds = got;
    if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || dropped) {
        for (int i = 0; i < got; i++)
            close(fds[i]);
        if (nfds)
            *nfds = 0;
        return ec_seterr(EC_ETOOBIG, "message larger than %zu bytes or with too many "
                                     "descriptors", cap);
    }
    return n;
}

int ec_msg_send_error(int sock, uint16_t op, uint32_t req_id, int status, const char *msg)
{
    uint8_t buf[EC_MSG_HDR + 2 + EC_ERRMSG_MAX];
    char text[EC_ERRMSG_MAX];
    ec_wbuf w;
    size_t len;

    snprintf(text, sizeof(text), "%s", msg ? msg : ec_last_error());
    ec_msg_begin(&w, buf, sizeof(buf), (uint16_t)(op | EC_OP_REPLY), req_id, status);
    ec_put_str(&w, text);
    len = ec_msg_end(&w);
    return ec_msg_send(sock, buf, len, NULL, 0, true);
}

/* ------------------------------------------------------------------ */
/* Namespaces of results                                               */

bool ec_ns_name_ok(const char *name)
{
    size_t n = name ? strlen(name) : 0;

    if (n == 0 || n > EC_NS_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == ':'))
            return false;
    }
    return true;
}

void ec_put_ns_opts(ec_wbuf *w, const ec_proto_ns_opts *o)
{
    ec_put_u64(w, o->ttl_us);
    ec_put_i64(w, o->stale_us);
    ec_put_u64(w, o->negative_ttl_us);
    ec_put_i64(w, o->jitter_ppm);
    ec_put_u64(w, o->lease_us);
    ec_put_u32(w, o->max_computing);
    ec_put_u64(w, o->negative_max);
}

void ec_get_ns_opts(ec_rbuf *r, ec_proto_ns_opts *o)
{
    o->ttl_us = ec_get_u64(r);
    o->stale_us = ec_get_i64(r);
    o->negative_ttl_us = ec_get_u64(r);
    o->jitter_ppm = ec_get_i64(r);
    o->lease_us = ec_get_u64(r);
    o->max_computing = ec_get_u32(r);
    o->negative_max = ec_get_u64(r);
}

void ec_put_ns(ec_wbuf *w, const ec_proto_ns *ns)
{
    ec_put_str(w, ns->name);
    ec_put_u32(w, ns->owner_uid);
    ec_put_u32(w, ns->flags);
    ec_put_u32(w, ns->generation);
    ec_put_str(w, ns->bind_model);
    ec_put_str(w, ns->bind_version);
    ec_put_i64(w, ns->bound_version);
    ec_put_ns_opts(w, &ns->opts);
    ec_put_u32(w, EC_PROTO_NS_COUNTERS);
    for (unsigned i = 0; i < EC_PROTO_NS_COUNTERS; i++)
        ec_put_u64(w, ns->counters[i]);
}

int ec_get_ns(ec_rbuf *r, ec_proto_ns *ns)
{
    uint32_t n;

    memset(ns, 0, sizeof(*ns));
    ec_get_str(r, ns->name, sizeof(ns->name));
    ns->owner_uid = ec_get_u32(r);
    ns->flags = ec_get_u32(r);
    ns->generation = ec_get_u32(r);
    ec_get_str(r, ns->bind_model, sizeof(ns->bind_model));
    ec_get_str(r, ns->bind_version, sizeof(ns->bind_version));
    ns->bound_version = ec_get_i64(r);
    ec_get_ns_opts(r, &ns->opts);
    n = ec_get_u32(r);
    if (r->bad || n != EC_PROTO_NS_COUNTERS || !ec_ns_name_ok(ns->name) ||
        (ns->flags & ~(uint32_t)(EC_NS_SHARED | EC_NS_REMOTE)))
        return ec_seterr(EC_EPROTO, "malformed namespace record in a NS_LIST reply");
    for (unsigned i = 0; i < n; i++)
        ns->counters[i] = ec_get_u64(r);
    return r->bad ? ec_seterr(EC_EPROTO, "truncated namespace record in a NS_LIST reply") : 0;
}
