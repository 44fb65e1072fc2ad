/*
 * server_dyn.c - the server loop's handlers of dynamic-table requests:
 * DYN_SET, ROWS_PUT, ROWS_DEL, SNAPSHOT and DYN_STATS (bodies in proto.h).
 * Decodes and checks each request, reads a batch that came as a memfd
 * into the daemon's own memory (read once: the bytes logged are the bytes
 * applied), and calls core/dyntable.h. Server thread only. Every op but
 * DYN_STATS is for administrators (server.c's op_is_admin).
 */
#include "core/server_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"

#define DYN_STATS_MAX 160u /* tables per DYN_STATS reply (fits EC_MSG_MAX) */

static void reply_result(server *s, struct conn *c, uint16_t op, uint32_t req_id,
                         const ec_dyn_result *res)
{
    ec_wbuf w;

    ec_msg_begin(&w, s->out, sizeof(s->out), (uint16_t)(op | EC_OP_REPLY), req_id, 0);
    ec_put_u64(&w, res->lsn);
    ec_put_u64(&w, res->inserted);
    ec_put_u64(&w, res->updated);
    ec_put_u64(&w, res->deleted);
    ec_put_u64(&w, res->missing);
    ec_put_u64(&w, res->evicted);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
}

int srv_h_dyn_set(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char model[EC_NAME_MAX + 1], version[EC_NAME_MAX + 1], tensor[EC_NAME_MAX + 1];
    uint64_t capacity;
    uint32_t policy;
    ec_dyn_result none = {0};
    int rc;

    ec_get_str(r, model, sizeof(model));
    ec_get_str(r, version, sizeof(version));
    ec_get_str(r, tensor, sizeof(tensor));
    capacity = ec_get_u64(r);
    policy = ec_get_u32(r);
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_DYN_SET);
    if ((rc = ec_dyn_make(s->dyn, model, version, tensor, capacity, policy)) < 0)
        return rc;
    reply_result(s, c, EC_OP_DYN_SET, req_id, &none);
    return 0;
}

/* A batch buffer up to this size is kept for the next batch: a stream of
 * updates then reads into memory that is already there. */
#define BATCH_KEEP ((uint64_t)64 << 20)

/* The batch's bytes: inline in the message, or the whole of a memfd (read
 * with pread into our memory, so a client changing it later changes
 * nothing here: what is logged is what is applied). A file's bytes go to
 * s->batch, or (larger than BATCH_KEEP) to *buf, which the caller frees. */
static int batch_bytes(server *s, ec_rbuf *r, uint32_t inl, uint64_t need, const int *fds,
                       int nfds, const uint8_t **p, uint8_t **buf)
{
    struct stat st;
    uint64_t got = 0;
    uint8_t *b;

    *buf = NULL;
    if (inl) {
        if (nfds != 0 || need > r->len - r->pos)
            return ec_seterr(EC_EPROTO, "a batch of %llu bytes does not fit its message",
                             (unsigned long long)need);
        *p = r->p + r->pos;
        r->pos += need;
        return 0;
    }
    if (nfds != 1)
        return ec_seterr(EC_EPROTO, "a batch sent out of line needs one file descriptor");
    if (fstat(fds[0], &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < need)
        return ec_seterr(EC_EINVAL, "the batch's file holds fewer than the %llu bytes its "
                                    "message announces",
                         (unsigned long long)need);
    if (need > BATCH_KEEP) {
        if (!(b = *buf = malloc(need)))
            return ec_seterr(EC_ENOMEM, "a batch of %llu bytes", (unsigned long long)need);
    } else {
        if (need > s->batch_cap) {
            size_t cap = need < ((size_t)1 << 20) ? (size_t)1 << 20 : (size_t)need;
            uint8_t *nb = realloc(s->batch, cap);
            if (!nb)
                return ec_seterr(EC_ENOMEM, "a batch of %llu bytes", (unsigned long long)need);
            s->batch = nb;
            s->batch_cap = cap;
        }
        b = s->batch;
    }
    while (got < need) {
        ssize_t n = pread(fds[0], b + got, need - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            free(*buf);
            *buf = NULL;
            return ec_seterr_errno(EC_EIO, n < 0 ? errno : EIO, "reading a batch");
        }
        got += (uint64_t)n;
    }
    *p = b;
    return 0;
}

int srv_h_rows_put(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, const int *fds,
                   int nfds)
{
    uint32_t tensor = ec_get_u32(r), n = ec_get_u32(r), inl;
    uint64_t row_bytes = ec_get_u64(r), need;
    const uint8_t *p = NULL;
    uint8_t *buf = NULL;
    ec_dyn_result res;
    int rc;

    inl = ec_get_u32(r);
    if (r->bad || n > EC_ROWS_BATCH_MAX || row_bytes == 0 || row_bytes > (1u << 24) || inl > 1)
        return srv_bad_body(EC_OP_ROWS_PUT);
    need = (uint64_t)n * (8 + row_bytes);
    if ((rc = batch_bytes(s, r, inl, need, fds, nfds, &p, &buf)) < 0)
        return rc;
    if (!ec_rbuf_done(r)) {
        free(buf);
        return srv_bad_body(EC_OP_ROWS_PUT);
    }
    {
        /* Keys first, then rows; keys are copied out where unaligned. */
        bool aligned = ((uintptr_t)p & 7) == 0;
        int64_t *keys = aligned ? (int64_t *)(uintptr_t)p : malloc((n ? n : 1) * sizeof(*keys));
        if (!keys) {
            free(buf);
            return ec_seterr(EC_ENOMEM, "a batch of %u keys", n);
        }
        if (!aligned)
            memcpy(keys, p, (size_t)n * 8);
        rc = ec_dyn_put(s->dyn, tensor, keys, n, p + (size_t)n * 8, row_bytes, &res);
        if (!aligned)
            free(keys);
    }
    free(buf);
    if (rc < 0)
        return rc;
    reply_result(s, c, EC_OP_ROWS_PUT, req_id, &res);
    return 0;
}

int srv_h_rows_del(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, const int *fds,
                   int nfds)
{
    uint32_t tensor = ec_get_u32(r), n = ec_get_u32(r), inl = ec_get_u32(r);
    const uint8_t *p = NULL;
    uint8_t *buf = NULL;
    int64_t *keys;
    ec_dyn_result res;
    int rc;

    if (r->bad || n > EC_ROWS_BATCH_MAX || inl > 1)
        return srv_bad_body(EC_OP_ROWS_DEL);
    if ((rc = batch_bytes(s, r, inl, (uint64_t)n * 8, fds, nfds, &p, &buf)) < 0)
        return rc;
    if (!ec_rbuf_done(r) || !(keys = malloc((n ? n : 1) * sizeof(*keys)))) {
        free(buf);
        return ec_rbuf_done(r) ? ec_seterr(EC_ENOMEM, "a batch of %u keys", n)
                               : srv_bad_body(EC_OP_ROWS_DEL);
    }
    memcpy(keys, p, (size_t)n * 8);
    free(buf);
    rc = ec_dyn_delete(s->dyn, tensor, keys, n, &res);
    free(keys);
    if (rc < 0)
        return rc;
    reply_result(s, c, EC_OP_ROWS_DEL, req_id, &res);
    return 0;
}

int srv_h_snapshot(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char model[EC_NAME_MAX + 1], version[EC_NAME_MAX + 1];
    int64_t want, got = 0;
    ec_wbuf w;
    int rc;

    ec_get_str(r, model, sizeof(model));
    ec_get_str(r, version, sizeof(version));
    want = (int64_t)ec_get_u64(r);
    if (!ec_rbuf_done(r) || want < 0)
        return srv_bad_body(EC_OP_SNAPSHOT);
    if ((rc = ec_dyn_snapshot(s->dyn, model, version, want, &got)) < 0)
        return rc;
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_SNAPSHOT | EC_OP_REPLY, req_id, 0);
    ec_put_u64(&w, (uint64_t)got);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

struct stats_ctx {
    ec_wbuf *w;
    uint32_t n;
};

static void put_table(const ec_dyn_stat *t, void *arg)
{
    struct stats_ctx *x = arg;

    if (x->n >= DYN_STATS_MAX)
        return;
    x->n++;
    ec_put_u32(x->w, t->tensor);
    ec_put_str(x->w, t->model);
    ec_put_u64(x->w, (uint64_t)t->version);
    ec_put_str(x->w, t->name);
    ec_put_u64(x->w, t->capacity);
    ec_put_u64(x->w, t->keys);
    ec_put_u64(x->w, t->row_bytes);
    ec_put_u64(x->w, t->bytes);
    ec_put_u32(x->w, t->policy);
    ec_put_u64(x->w, t->lsn);
    ec_put_u64(x->w, t->base_lsn);
    ec_put_u64(x->w, t->puts);
    ec_put_u64(x->w, t->inserts);
    ec_put_u64(x->w, t->updates);
    ec_put_u64(x->w, t->deletes);
    ec_put_u64(x->w, t->evictions);
    ec_put_u64(x->w, t->refused);
}

int srv_h_dyn_stats(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    struct stats_ctx x;
    ec_wbuf w;
    size_t at;

    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_DYN_STATS);
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_DYN_STATS | EC_OP_REPLY, req_id, 0);
    at = w.len;
    ec_put_u32(&w, 0);
    x.w = &w;
    x.n = 0;
    ec_dyn_foreach(s->dyn, put_table, &x);
    memcpy(w.buf + at, &x.n, 4); /* the count, little-endian like every u32 */
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}
