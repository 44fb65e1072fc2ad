/*
 * server_results.c - the server loop's handlers of the cache manager's
 * requests (NS_OPEN, RES_LEASE, RES_PUT, RES_RELEASE, RES_PURGE, NS_LIST,
 * NS_DROP): decode and validate, ask core/results.c, answer. Also folds the
 * per-namespace counts of client sessions. A RES_LEASE of a namespace
 * shared across hosts may be answered later, when the cluster has answered
 * (srv_results_answer, called by core/results_remote.c).
 *
 * Runs on the server thread (core/server.c dispatches here).
 */
#include "core/server_impl.h"

#include <string.h>
#include <unistd.h>

#include "common/err.h"

static ec_res_peer peer_of(const server *s, const struct conn *c)
{
    return (ec_res_peer){.owner = c->id, .uid = c->uid, .admin = srv_peer_admin(s, c->uid)};
}

static void reply_empty(server *s, struct conn *c, uint16_t op, uint32_t req_id)
{
    ec_wbuf w;

    ec_msg_begin(&w, s->out, sizeof(s->out), (uint16_t)(op | EC_OP_REPLY), req_id, 0);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
}

int srv_h_ns_open(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char name[EC_NS_NAME_MAX + 2], model[EC_NAME_MAX + 1], version[EC_NAME_MAX + 1];
    ec_res_peer p = peer_of(s, c);
    ec_proto_ns_opts o;
    uint32_t flags, slot, gen;
    uint64_t salt;
    int fd = -1, rc;
    ec_wbuf w;

    ec_get_str(r, name, sizeof(name));
    flags = ec_get_u32(r);
    ec_get_str(r, model, sizeof(model));
    ec_get_str(r, version, sizeof(version));
    ec_get_ns_opts(r, &o);
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_NS_OPEN);
    rc = ec_resmgr_ns_open(s->results, &p, name, flags, model, version, &o, &slot, &salt, &gen,
                           &fd);
    if (rc)
        return rc;
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_NS_OPEN | EC_OP_REPLY, req_id, 0);
    ec_put_u32(&w, slot);
    ec_put_u64(&w, salt);
    ec_put_u32(&w, gen);
    ec_put_u32(&w, fd >= 0);
    srv_reply_send(s, c, ec_msg_end(&w), fd >= 0 ? &fd : NULL, fd >= 0);
    if (fd >= 0)
        close(fd);
    return 0;
}

int srv_h_res_lease(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    ec_res_peer p = peer_of(s, c);
    const uint8_t *key;
    uint32_t slot, flags, n;
    int64_t seen;
    ec_wbuf w;
    int rc;

    slot = ec_get_u32(r);
    flags = ec_get_u32(r);
    n = ec_get_bytes(r, &key, EC_RES_KEY_MAX);
    seen = ec_get_i64(r);
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_RES_LEASE);
    /* A remote namespace's miss may be answered later (srv_results_answer);
     * it counts as outstanding until then. The token is req_id + 1 (never 0). */
    if ((rc = srv_outstanding_take(c)))
        return rc;
    rc = ec_resmgr_lease(s->results, &p, slot, flags, key, n, seen, (uint64_t)req_id + 1);
    if (rc == EC_LEASE_DEFERRED)
        return 0;
    c->outstanding--;
    if (rc < 0)
        return rc;
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_RES_LEASE | EC_OP_REPLY, req_id, 0);
    ec_put_u32(&w, (uint32_t)rc);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

void srv_results_answer(void *arg, uint64_t owner, uint64_t token, int answer)
{
    server *s = arg;
    struct conn *c = ec_u64map_get(&s->conns, owner);
    ec_wbuf w;

    if (!c || !token)
        return; /* it hung up: its leases went with it */
    c->outstanding--;
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_RES_LEASE | EC_OP_REPLY,
                 (uint32_t)(token - 1), 0);
    ec_put_u32(&w, (uint32_t)answer);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
}

int srv_h_res_put(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, const int *fds,
                  int nfds)
{
    ec_res_peer p = peer_of(s, c);
    const uint8_t *key, *value = NULL;
    uint32_t slot, n, inl;
    ec_res_put v;
    int rc;

    memset(&v, 0, sizeof(v));
    slot = ec_get_u32(r);
    v.flags = ec_get_u32(r);
    v.ttl_us = ec_get_u64(r);
    v.compute_us = ec_get_u32(r);
    v.dtype = ec_get_u32(r);
    v.ndim = ec_get_u32(r);
    if (v.ndim > EC_MAX_DIMS)
        return srv_bad_body(EC_OP_RES_PUT);
    for (uint32_t i = 0; i < v.ndim; i++)
        v.shape[i] = ec_get_u64(r);
    n = ec_get_bytes(r, &key, EC_RES_KEY_MAX);
    v.value_len = ec_get_u64(r);
    inl = ec_get_u32(r);
    if (inl == 1 && !r->bad) {
        if (v.value_len > r->len - r->pos)
            return srv_bad_body(EC_OP_RES_PUT);
        value = r->p + r->pos;
        r->pos += v.value_len;
    }
    if (!ec_rbuf_done(r) || inl > 1 || (inl == 0) != (nfds == 1))
        return srv_bad_body(EC_OP_RES_PUT);
    if (v.value_len > EC_SLAB_BYTES)
        return ec_seterr(EC_ETOOBIG, "a result value of %llu bytes: an item holds at most "
                                     "about 1 MiB with its key",
                         (unsigned long long)v.value_len);
    v.value = value;
    v.fd = inl ? -1 : fds[0];
    rc = ec_resmgr_put(s->results, &p, slot, key, n, &v);
    if (rc)
        return rc;
    reply_empty(s, c, EC_OP_RES_PUT, req_id);
    return 0;
}

int srv_h_res_release(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    ec_res_peer p = peer_of(s, c);
    const uint8_t *key;
    uint32_t slot, n;
    int rc;

    slot = ec_get_u32(r);
    n = ec_get_bytes(r, &key, EC_RES_KEY_MAX);
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_RES_RELEASE);
    if ((rc = ec_resmgr_release(s->results, &p, slot, key, n)))
        return rc;
    reply_empty(s, c, EC_OP_RES_RELEASE, req_id);
    return 0;
}

int srv_h_res_purge(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    ec_res_peer p = peer_of(s, c);
    const uint8_t *key;
    uint32_t slot, all, n;
    uint64_t removed = 0;
    ec_wbuf w;
    int rc;

    slot = ec_get_u32(r);
    all = ec_get_u32(r);
    n = ec_get_bytes(r, &key, EC_RES_KEY_MAX);
    if (!ec_rbuf_done(r) || all > 1)
        return srv_bad_body(EC_OP_RES_PURGE);
    if ((rc = ec_resmgr_purge(s->results, &p, slot, all, key, n, &removed)))
        return rc;
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_RES_PURGE | EC_OP_REPLY, req_id, 0);
    ec_put_u64(&w, removed);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

/* Add the live sessions' counts for a namespace slot to its record. */
void srv_results_live_counts(server *s, uint32_t slot, ec_proto_ns *rec)
{
    for (size_t i = 0; i < s->conns.cap; i++) {
        struct conn *k = s->conns.vals[i];
        if (!s->conns.keys[i] || !k->session)
            continue;
        for (unsigned j = 0; j < EC_SESSION_NS; j++) {
            ec_session_ns *n = &k->session->nsstat[j];
            if (atomic_load_explicit(&n->slot1, memory_order_relaxed) != slot + 1)
                continue;
            rec->counters[3] += atomic_load_explicit(&n->hits, memory_order_relaxed);
            rec->counters[4] += atomic_load_explicit(&n->misses, memory_order_relaxed);
            rec->counters[5] += atomic_load_explicit(&n->negative_hits, memory_order_relaxed);
            rec->counters[6] += atomic_load_explicit(&n->stale, memory_order_relaxed);
        }
    }
}

int srv_h_ns_list(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    ec_res_peer p = peer_of(s, c);
    uint32_t cursor, next, count = 0;
    size_t count_at, next_at;
    ec_proto_ns rec;
    ec_wbuf w;

    cursor = ec_get_u32(r);
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_NS_LIST);
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_NS_LIST | EC_OP_REPLY, req_id, 0);
    next_at = w.len;
    ec_put_u32(&w, 0);
    count_at = w.len;
    ec_put_u32(&w, 0);
    next = cursor;
    for (;;) {
        uint32_t at = next;
        size_t before = w.len;
        if (!ec_resmgr_list(s->results, &p, &next, &rec))
            break;
        srv_results_live_counts(s, next - 1, &rec);
        /* A client from before remote namespaces refuses a record with the
         * flag (it knows no such bit): it gets the namespace without it. */
        if (!(c->features & EC_HELLO_NS_REMOTE))
            rec.flags &= ~(uint32_t)EC_NS_REMOTE;
        ec_put_ns(&w, &rec);
        if (w.overflow) {
            w.overflow = false;
            w.len = before;
            next = at;
            break;
        }
        count++;
        if (ec_wbuf_room(&w) < 2048) /* a record is well under 2 KiB */
            break;
    }
    /* The cursor of the next request, 0 when nothing is left. */
    {
        uint32_t more = 0, probe = next;
        ec_proto_ns tmp;
        if (count && ec_resmgr_list(s->results, &p, &probe, &tmp))
            more = next;
        memcpy(w.buf + next_at, &more, 4);
    }
    memcpy(w.buf + count_at, &count, 4);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

int srv_h_ns_drop(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char name[EC_NS_NAME_MAX + 2];
    ec_res_peer p = peer_of(s, c);
    int rc;

    ec_get_str(r, name, sizeof(name));
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_NS_DROP);
    if ((rc = ec_resmgr_drop(s->results, &p, name)))
        return rc;
    reply_empty(s, c, EC_OP_NS_DROP, req_id);
    return 0;
}

void srv_results_fold(server *s, const ec_session_page *p)
{
    if (!s->results)
        return;
    for (unsigned j = 0; j < EC_SESSION_NS; j++) {
        const ec_session_ns *n = &p->nsstat[j];
        uint32_t slot1 = atomic_load_explicit(&n->slot1, memory_order_relaxed);
        if (!slot1 || slot1 > EC_NS_MAX)
            continue;
        ec_resmgr_count(s->results, slot1 - 1,
                        atomic_load_explicit(&n->hits, memory_order_relaxed),
                        atomic_load_explicit(&n->misses, memory_order_relaxed),
                        atomic_load_explicit(&n->negative_hits, memory_order_relaxed),
                        atomic_load_explicit(&n->stale, memory_order_relaxed));
    }
}
