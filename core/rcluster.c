/*
 * rcluster.c - a Redis Cluster client: multi-key calls, redirects, the handle
 * (see rcluster.h for the API, its callers and its thread rules; the slot map
 * is in rcluster_map.c, the connections in rcluster_net.c).
 *
 * Owns, per handle: the slot map (slot -> index into nodes[]), the nodes
 * (address, non-blocking TCP socket, hiredis RESP reader, a send queue and
 * the FIFO of replies it owes), the seed list, and the counters. Called by
 * one thread at a time per handle; nothing here is shared between handles
 * but hiredis's code.
 *
 * A multi-key call runs in rounds:
 *
 *   READY --send--> INFLIGHT --value/nil/OK/refusal--> DONE (fn called)
 *     ^                |  MOVED (map updated) / ASK (target noted)  -> READY
 *     |                |  TRYAGAIN/CLUSTERDOWN/lost connection      -> WAIT
 *     +-- backoff -- WAIT       (attempts or op_timeout_ms exhausted  -> DONE, error)
 *
 * Each round queues every READY key on its node (ASKING first for an ASK
 * target), then rc_pump() polls all nodes at once: it writes queued
 * commands while a node accepts them and reads replies as they come, so the
 * nodes work concurrently and no node's full socket can stall another.
 * Between rounds the map is refreshed when something asked for it (MOVED,
 * CLUSTERDOWN, a lost node, a slot no node serves), at most once per
 * refresh_interval_ms, and WAIT keys are retried after an exponential
 * backoff. A refresh asked for by a call whose keys all finished anyway
 * (a MOVED followed at once) is done at the start of the next call.
 *
 * Invariants:
 *  1. nd->pend[pend_head .. pend_n) holds, in send order, one entry per
 *     command queued on nd whose reply has not been read: (op << 2) | tag.
 *     Replies are matched to entries in order (RESP has no ids).
 *  2. A key is INFLIGHT on exactly one node, and its main entry is there.
 *  3. A node that fails (connect, I/O, timeout, malformed reply) is closed
 *     at once with its queue and FIFO: its keys go to WAIT. A connection is
 *     never reused after an unread or half-read reply.
 *  4. Nodes are freed only by rc_gc() at the end of a public call, so node
 *     indices held by keys (ASK targets) and pointers held by rc_pump() stay
 *     valid during a call.
 *  5. Every reply is validated before use: types, lengths (a bulk header
 *     over max_value_bytes fails the node before its bytes are buffered;
 *     a reply's strings together may not pass max_value_bytes plus 16 MiB),
 *     element counts, slots, addresses.
 *
 * Copies: GET values are handed to the caller's fn from inside the RESP
 * parser (rc_create_string), pointing into the parser's buffer, not copied
 * into a reply object: a value travels socket -> 256 KiB read buffer ->
 * parser buffer (hiredis's redisReaderFeed) -> the caller's destination.
 * SET values are sent from the caller's buffers with sendmsg(), never
 * copied.
 */
#include "core/rcluster.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "core/rcluster_impl.h"

static const char *rc_why_str(const rc_call *call, uint32_t h)
{
    return h ? call->why + h - 1 : "no reason recorded";
}

/* ------------------------------------------------------------------------
 * Multi-key calls */

static size_t rc_klen(const rc_call *call, size_t i)
{
    return call->klens[i];
}

void rc_done(ec_rcluster *c, rc_call *call, size_t i, int status, const void *val, size_t len,
             const char *msg)
{
    rc_op *op = &call->ops[i];

    assert(op->state != OP_DONE);
    op->state = OP_DONE;
    call->nleft--;
    if (status != 0 && status != EC_ENOENT && status != EC_EEXIST) {
        c->st.errors++;
        if (call->nfail++ == 0) {
            call->first_err = status;
            snprintf(call->first_msg, sizeof(call->first_msg), "%s", msg ? msg : "");
        }
    }
    if (call->fn)
        call->fn(call->arg, i, status, val, len, msg);
}

void rc_fail_key(ec_rcluster *c, rc_call *call, size_t i, int status, const char *fmt, ...)
{
    char what[EC_ERRMSG_MAX - 96], msg[EC_ERRMSG_MAX], pbuf[52];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof(msg), "%s of key '%s' (slot %u): %s", call->name,
             ec_printable(call->keys[i], rc_klen(call, i), pbuf, sizeof(pbuf)),
             call->ops[i].slot, what);
    rc_done(c, call, i, status, NULL, 0, msg);
}

static void rc_on_error(ec_rcluster *c, rc_node *nd, rc_call *call, size_t i, const redisReply *r)
{
    rc_op *op = &call->ops[i];
    char text[160];
    const char *s = r->str ? r->str : "";
    size_t len = r->str ? r->len : 0;
    unsigned slot;
    uint16_t idx;
    bool moved = len > 6 && memcmp(s, "MOVED ", 6) == 0;
    bool ask = len > 4 && memcmp(s, "ASK ", 4) == 0;

    ec_printable(s, len, text, sizeof(text));
    if (moved || ask) {
        size_t skip = moved ? 6 : 4;
        if (rc_parse_redirect(c, nd, s + skip, len - skip, &slot, &idx) != 0 || slot != op->slot) {
            rc_fail_key(c, call, i, EC_EPROTO, "node %s:%u answered '%s', not a redirect for "
                        "this slot", nd->host, nd->port, text);
            return;
        }
        if (moved) {
            c->slot[slot] = idx;
            c->gc_due = true;
            c->st.moved++;
            c->want_refresh = true;
        } else {
            op->ask_node = idx;
            c->st.ask++;
        }
        op->state = OP_READY;
        op->code = EC_EPROTO;
        op->why = rc_why(call, "node %s:%u redirected it (%s) and the redirects did not settle",
                         nd->host, nd->port, text);
        return;
    }
    if ((len >= 8 && memcmp(s, "TRYAGAIN", 8) == 0) ||
        (len >= 11 && memcmp(s, "CLUSTERDOWN", 11) == 0) ||
        (len >= 7 && memcmp(s, "LOADING", 7) == 0) ||
        (len >= 10 && memcmp(s, "MASTERDOWN", 10) == 0) ||
        (len >= 8 && memcmp(s, "READONLY", 8) == 0)) {
        op->state = OP_WAIT;
        op->code = EC_EBUSY;
        op->why = rc_why(call, "node %s:%u kept answering '%s'; is the cluster healthy "
                         "(redis-cli --cluster check)?", nd->host, nd->port, text);
        if (s[0] != 'T')
            c->want_refresh = true;
        return;
    }
    if (len >= 6 && memcmp(s, "NOAUTH", 6) == 0) {
        rc_fail_key(c, call, i, EC_EPERM, "node %s:%u refused it: '%s': the cluster wants a "
                    "password (--remote-auth-file)", nd->host, nd->port, text);
        return;
    }
    rc_fail_key(c, call, i, EC_EIO, "node %s:%u refused it: '%s'", nd->host, nd->port, text);
}

static const char *rc_type_name(int type)
{
    static const char *const names[] = {"?",   "a bulk string", "an array", "an integer",
                                        "nil", "a status",      "an error"};
    return type >= 1 && type <= 6 ? names[type] : "an unknown type";
}

static void rc_on_main(ec_rcluster *c, rc_node *nd, size_t i, redisReply *r)
{
    rc_call *call = c->call;
    const char *want = "";

    if (!call || i >= call->n || call->ops[i].state != OP_INFLIGHT)
        return; /* delivered in place (rc_deliver) */
    if (r->type == REDIS_REPLY_ERROR) {
        rc_on_error(c, nd, call, i, r);
        return;
    }
    switch (call->kind) {
    case RC_GET:
        if (r->type == REDIS_REPLY_NIL) {
            rc_done(c, call, i, EC_ENOENT, NULL, 0, NULL);
        } else if (r->type == REDIS_REPLY_STRING && r->len > c->o.max_value_bytes) {
            rc_fail_key(c, call, i, EC_ETOOBIG, "node %s:%u sent a %zu-byte value, over "
                        "max_value_bytes (%llu)", nd->host, nd->port, r->len,
                        (unsigned long long)c->o.max_value_bytes);
        } else if (r->type == REDIS_REPLY_STRING) {
            rc_done(c, call, i, 0, r->str, r->len, NULL);
        }
        want = "a bulk string or nil";
        break;
    case RC_SET:
        if (r->type == REDIS_REPLY_STATUS && r->len == 2 && memcmp(r->str, "OK", 2) == 0)
            rc_done(c, call, i, 0, NULL, 0, NULL);
        else if (r->type == REDIS_REPLY_NIL && call->nx)
            rc_done(c, call, i, EC_EEXIST, NULL, 0, NULL);
        want = call->nx ? "+OK or nil" : "+OK";
        break;
    case RC_DEL:
        if (r->type == REDIS_REPLY_INTEGER && (r->integer == 0 || r->integer == 1))
            rc_done(c, call, i, r->integer ? 0 : EC_ENOENT, NULL, 0, NULL);
        want = "the integer 0 or 1";
        break;
    }
    if (call->ops[i].state == OP_INFLIGHT)
        rc_fail_key(c, call, i, EC_EPROTO, "node %s:%u answered with %s, not %s", nd->host,
                    nd->port, rc_type_name(r->type), want);
}

/* The node refused our AUTH: the keys under way on it fail now, not retried
 * (the same credentials would be refused again), and the connection goes. */
static void rc_auth_refused(ec_rcluster *c, rc_node *nd, const redisReply *r)
{
    char text[160];
    rc_call *call = c->call;

    if (rc_is(r, REDIS_REPLY_ERROR) || rc_is(r, REDIS_REPLY_STATUS))
        ec_printable(r->str, r->len, text, sizeof(text));
    else
        snprintf(text, sizeof(text), "%s", rc_type_name(r ? r->type : 0));
    for (size_t k = nd->pend_head; call && k < nd->pend_n; k++) {
        uint32_t e = nd->pend[k];
        if ((e & 3) == TAG_MAIN && call->ops[e >> 2].state == OP_INFLIGHT)
            rc_fail_key(c, call, e >> 2, EC_EPERM, "node %s:%u refused our credentials "
                        "('%s'): check the user and password (--remote-auth-file)",
                        nd->host, nd->port, text);
    }
    rc_node_fail(c, nd, EC_EPERM, "refused our credentials ('%s'): check the user and "
                 "password (--remote-auth-file)", text);
}

void rc_on_reply(ec_rcluster *c, rc_node *nd, uint32_t entry, redisReply *r)
{
    switch (entry & 3) {
    case TAG_AUTH:
        if (!rc_is(r, REDIS_REPLY_STATUS) || r->len != 2 || memcmp(r->str, "OK", 2) != 0)
            rc_auth_refused(c, nd, r);
        break;
    case TAG_SYNC:
        if (nd->sync_got < RC_SYNC_MAX) {
            nd->sync_rep[nd->sync_got++] = r;
            return;
        }
        break;
    case TAG_ASKING: /* +OK; anything else shows in the command's own reply */
        break;
    default:
        rc_on_main(c, nd, entry >> 2, r);
        break;
    }
    rc_free_obj(r);
}

/* Queue key i on the node its slot (or its ASK) names. */
static int rc_send_key(ec_rcluster *c, rc_call *call, size_t i)
{
    rc_op *op = &call->ops[i];
    uint16_t idx = op->ask_node != RC_NONE ? op->ask_node : c->slot[op->slot];
    rc_arg argv[6];
    int argc = 0, rc;
    rc_node *nd;

    if (op->attempts >= c->o.max_attempts) {
        rc_fail_key(c, call, i, op->code, "gave up after %u attempts: %s", op->attempts,
                    rc_why_str(call, op->why));
        return 0;
    }
    if (idx == RC_NONE) {
        op->state = OP_WAIT;
        op->code = EC_ECONN;
        op->why = rc_why(call, "no master serves slot %u in the cluster map (a master failed "
                         "and no replica has taken over yet?)", op->slot);
        op->attempts++;
        c->want_refresh = true;
        return 0;
    }
    nd = c->nodes[idx];
    if (op->attempts > 0)
        c->st.retries++;
    op->attempts++;
    if (op->ask_node != RC_NONE) {
        static const rc_arg asking = {"ASKING", 6};
        op->ask_node = RC_NONE;
        if ((rc = rc_queue(c, nd, 1, &asking, (uint32_t)i << 2 | TAG_ASKING)) != 0)
            return rc;
    }
    argv[argc++] = call->kind == RC_GET   ? (rc_arg){"GET", 3}
                   : call->kind == RC_SET ? (rc_arg){"SET", 3}
                                          : (rc_arg){"DEL", 3};
    argv[argc++] = (rc_arg){call->keys[i], rc_klen(call, i)};
    if (call->kind == RC_SET) {
        argv[argc++] = (rc_arg){call->vals[i] ? call->vals[i] : "", call->vlens[i]};
        if (call->px_len) {
            argv[argc++] = (rc_arg){"PX", 2};
            argv[argc++] = (rc_arg){call->px, call->px_len};
        }
        if (call->nx)
            argv[argc++] = (rc_arg){"NX", 2};
    }
    op->state = OP_INFLIGHT;
    return rc_queue(c, nd, argc, argv, (uint32_t)i << 2 | TAG_MAIN);
}

static int rc_run(ec_rcluster *c, rc_call *call)
{
    uint64_t deadline = rc_now() + (uint64_t)c->o.op_timeout_ms * 1000000ull;
    uint64_t backoff = (uint64_t)c->o.backoff_min_ms * 1000000ull;
    int rc = 0;

    call->ops = calloc(call->n, sizeof(*call->ops));
    if (!call->ops)
        return ec_seterr(EC_ENOMEM, "%s: out of memory for %zu keys", call->name, call->n);
    call->nleft = call->n;
    c->call = call;
    /* A refresh a past call asked for (MOVED, a lost node) and did not need
     * to finish its keys: now, before the map sends keys astray. */
    if (c->want_refresh)
        (void)rc_refresh(c, false, deadline);
    for (size_t i = 0; i < call->n; i++) {
        rc_op *op = &call->ops[i];
        op->slot = ec_rcluster_keyslot(call->keys[i], rc_klen(call, i));
        op->ask_node = RC_NONE;
        op->code = EC_ECONN;
        if (call->kind == RC_SET && call->vlens[i] > c->o.max_value_bytes)
            rc_fail_key(c, call, i, EC_ETOOBIG, "a %zu-byte value is over max_value_bytes (%llu)",
                        call->vlens[i], (unsigned long long)c->o.max_value_bytes);
    }
    while (call->nleft > 0) {
        bool waiting = false;
        uint64_t now;
        for (size_t i = 0; i < call->n; i++)
            if (call->ops[i].state == OP_READY && (rc = rc_send_key(c, call, i)) == EC_ENOMEM)
                goto out;
        rc_pump(c, deadline);
        now = rc_now();
        for (size_t i = 0; i < call->n; i++) {
            rc_op *op = &call->ops[i];
            if (op->state == OP_DONE)
                continue;
            if (now >= deadline) {
                rc_fail_key(c, call, i, EC_ETIMEOUT, "no result within op_timeout_ms (%u ms) "
                            "after %u attempts; last: %s", c->o.op_timeout_ms, op->attempts,
                            rc_why_str(call, op->why));
                continue;
            }
            assert(op->state != OP_INFLIGHT);
            waiting |= op->state == OP_WAIT;
        }
        if (call->nleft == 0)
            break;
        if (c->want_refresh)
            (void)rc_refresh(c, false, deadline); /* failures show in the keys' reasons */
        if (waiting) {
            now = rc_now();
            if (now < deadline)
                rc_sleep_ns(backoff < deadline - now ? backoff : deadline - now);
            backoff *= 2;
            if (backoff > (uint64_t)c->o.backoff_max_ms * 1000000ull)
                backoff = (uint64_t)c->o.backoff_max_ms * 1000000ull;
            for (size_t i = 0; i < call->n; i++)
                if (call->ops[i].state == OP_WAIT)
                    call->ops[i].state = OP_READY;
        }
    }
    rc = 0;
out:
    /* Only an allocation failure leaves keys undone: they fail now. */
    for (size_t i = 0; i < call->n && call->nleft > 0; i++)
        if (call->ops[i].state != OP_DONE)
            rc_fail_key(c, call, i, EC_ENOMEM, "out of memory");
    for (size_t i = 0; i < c->nnodes; i++)
        if (rc_node_busy(c->nodes[i]))
            rc_node_fail(c, c->nodes[i], EC_ENOMEM, "abandoned");
    c->call = NULL;
    rc_gc(c);
    if (call->nfail)
        rc = ec_seterr(call->first_err, "%s: %zu of %zu keys failed; first: %s", call->name,
                       call->nfail, call->n, call->first_msg);
    free(call->ops);
    free(call->why);
    return rc;
}

static int rc_multi(ec_rcluster *c, rc_call *call, const size_t *key_lens)
{
    size_t *lens = NULL;
    int rc;

    if (!c || (call->n && !call->keys))
        return ec_seterr(EC_EINVAL, "%s: the handle and the keys must be set", call->name);
    if (call->n > EC_RCLUSTER_MAX_KEYS)
        return ec_seterr(EC_EINVAL, "%s: %zu keys in one call (at most %u)", call->name,
                         call->n, EC_RCLUSTER_MAX_KEYS);
    if (c->call)
        return ec_seterr(EC_EINVAL, "%s: called from a callback of the same handle",
                         call->name);
    if (call->n == 0)
        return 0;
    if (!key_lens) {
        lens = malloc(call->n * sizeof(*lens));
        if (!lens)
            return ec_seterr(EC_ENOMEM, "%s: out of memory for %zu keys", call->name, call->n);
    }
    for (size_t i = 0; i < call->n; i++) {
        size_t kl;
        if (!call->keys[i]) {
            free(lens);
            return ec_seterr(EC_EINVAL, "%s: key %zu is NULL", call->name, i);
        }
        kl = key_lens ? key_lens[i] : strlen(call->keys[i]);
        if (kl > EC_RCLUSTER_MAX_KEY) {
            free(lens);
            return ec_seterr(EC_EINVAL, "%s: key %zu is %zu bytes (at most %d)", call->name, i,
                             kl, EC_RCLUSTER_MAX_KEY);
        }
        if (lens)
            lens[i] = kl;
        if (call->kind == RC_SET && !call->vals[i] && call->vlens[i]) {
            free(lens);
            return ec_seterr(EC_EINVAL, "%s: value %zu is NULL with length %zu", call->name, i,
                             call->vlens[i]);
        }
    }
    call->klens = key_lens ? key_lens : lens;
    rc = rc_run(c, call);
    free(lens);
    return rc;
}

int ec_rcluster_mget(ec_rcluster *c, const char *const *keys, const size_t *key_lens, size_t n,
                     ec_rcluster_fn fn, void *arg)
{
    rc_call call = {.kind = RC_GET, .name = "GET", .keys = keys, .n = n, .fn = fn, .arg = arg};

    if (!fn)
        return ec_seterr(EC_EINVAL, "ec_rcluster_mget: fn must be set: it receives the values");
    return rc_multi(c, &call, key_lens);
}

int ec_rcluster_mget_into(ec_rcluster *c, const char *const *keys, const size_t *key_lens,
                          size_t n, void *const *dests, const size_t *dest_lens,
                          ec_rcluster_fn fn, void *arg)
{
    rc_call call = {.kind = RC_GET, .name = "GET", .keys = keys, .n = n, .fn = fn, .arg = arg,
                    .dests = dest_lens ? dests : NULL, .dest_lens = dest_lens};

    if (!fn)
        return ec_seterr(EC_EINVAL, "ec_rcluster_mget_into: fn must be set");
    return rc_multi(c, &call, key_lens);
}

int ec_rcluster_mset(ec_rcluster *c, const char *const *keys, const size_t *key_lens,
                     const void *const *vals, const size_t *val_lens, size_t n,
                     const ec_rcluster_set_opts *so, ec_rcluster_fn fn, void *arg)
{
    rc_call call = {.kind = RC_SET, .name = "SET", .keys = keys, .vals = vals,
                    .vlens = val_lens, .n = n, .fn = fn, .arg = arg};

    if (n && (!vals || !val_lens))
        return ec_seterr(EC_EINVAL, "ec_rcluster_mset: vals and val_lens must be set");
    if (so) {
        if (so->ttl_ms > (1ull << 53))
            return ec_seterr(EC_EINVAL, "ec_rcluster_mset: ttl_ms %llu is over 2^53",
                             (unsigned long long)so->ttl_ms);
        if (so->ttl_ms)
            call.px_len = (size_t)snprintf(call.px, sizeof(call.px), "%llu",
                                           (unsigned long long)so->ttl_ms);
        call.nx = so->nx;
    }
    return rc_multi(c, &call, key_lens);
}

int ec_rcluster_mdel(ec_rcluster *c, const char *const *keys, const size_t *key_lens, size_t n,
                     ec_rcluster_fn fn, void *arg)
{
    rc_call call = {.kind = RC_DEL, .name = "DEL", .keys = keys, .n = n, .fn = fn, .arg = arg};
    return rc_multi(c, &call, key_lens);
}

/* ------------------------------------------------------------------------
 * Single keys */

typedef struct rc_one {
    int status;
    void *val;
    size_t len;
} rc_one;

static void rc_one_fn(void *arg, size_t i, int status, const void *val, size_t len,
                      const char *msg)
{
    rc_one *o = arg;

    (void)i;
    (void)msg;
    o->status = status;
    if (status == 0 && val) {
        o->val = malloc(len + 1);
        if (!o->val) {
            o->status = EC_ENOMEM;
            return;
        }
        memcpy(o->val, val, len);
        ((char *)o->val)[len] = '\0';
        o->len = len;
    }
}

int ec_rcluster_get(ec_rcluster *c, const void *key, size_t key_len, void **val, size_t *len)
{
    rc_one o = {0};
    const char *keys[1] = {key};
    int rc;

    if (!key || !val || !len)
        return ec_seterr(EC_EINVAL, "ec_rcluster_get: key, val and len must be set");
    rc = ec_rcluster_mget(c, keys, &key_len, 1, rc_one_fn, &o);
    if (rc == 0 && o.status == EC_ENOMEM)
        rc = ec_seterr(EC_ENOMEM, "ec_rcluster_get: out of memory for a %zu-byte value", o.len);
    if (rc != 0 || o.status != 0) {
        free(o.val);
        return rc ? rc : o.status;
    }
    if (!o.val && !(o.val = calloc(1, 1)))
        return ec_seterr(EC_ENOMEM, "ec_rcluster_get: out of memory");
    *val = o.val;
    *len = o.len;
    return 0;
}

int ec_rcluster_set(ec_rcluster *c, const void *key, size_t key_len, const void *val,
                    size_t val_len, const ec_rcluster_set_opts *so)
{
    rc_one o = {0};
    const char *keys[1] = {key};
    const void *vals[1] = {val};
    int rc;

    if (!key)
        return ec_seterr(EC_EINVAL, "ec_rcluster_set: key must be set");
    rc = ec_rcluster_mset(c, keys, &key_len, vals, &val_len, 1, so, rc_one_fn, &o);
    return rc ? rc : o.status;
}

int ec_rcluster_del(ec_rcluster *c, const void *key, size_t key_len)
{
    rc_one o = {0};
    const char *keys[1] = {key};
    int rc;

    if (!key)
        return ec_seterr(EC_EINVAL, "ec_rcluster_del: key must be set");
    rc = ec_rcluster_mdel(c, keys, &key_len, 1, rc_one_fn, &o);
    return rc ? rc : o.status;
}

static void rc_free_replies(redisReply **r, unsigned n)
{
    for (unsigned k = 0; k < n; k++)
        rc_free_obj(r[k]);
}

/* The error a WATCH/GET/EXEC of del_if_equal got, classified as rc_on_error
 * does: 1 retry now (map updated), 2 back off and retry, <0 final. */
static int rc_cad_error(ec_rcluster *c, rc_node *nd, const redisReply *r, uint16_t slot)
{
    char text[160];
    unsigned s;
    uint16_t idx;

    ec_printable(r->str, r->len, text, sizeof(text));
    if (r->len > 6 && memcmp(r->str, "MOVED ", 6) == 0) {
        if (rc_parse_redirect(c, nd, r->str + 6, r->len - 6, &s, &idx) != 0 || s != slot)
            return ec_seterr(EC_EPROTO, "node %s:%u answered '%s'", nd->host, nd->port, text);
        c->slot[s] = idx;
        c->gc_due = true;
        c->st.moved++;
        c->want_refresh = true;
        return 1;
    }
    if ((r->len > 4 && memcmp(r->str, "ASK ", 4) == 0) || strncmp(r->str, "TRYAGAIN", 8) == 0 ||
        strncmp(r->str, "CLUSTERDOWN", 11) == 0 || strncmp(r->str, "LOADING", 7) == 0) {
        if (r->str[0] == 'A')
            c->st.ask++;
        ec_seterr(EC_EBUSY, "node %s:%u kept answering '%s'", nd->host, nd->port, text);
        return 2;
    }
    return ec_seterr(EC_EIO, "node %s:%u refused it: '%s'", nd->host, nd->port, text);
}

int ec_rcluster_del_if_equal(ec_rcluster *c, const void *key, size_t key_len,
                             const void *expect, size_t expect_len)
{
    uint64_t deadline, backoff;
    uint16_t slot;
    char pbuf[52];
    int rc = EC_ECONN;

    if (!c || !key || (!expect && expect_len) || key_len > EC_RCLUSTER_MAX_KEY || c->call)
        return ec_seterr(EC_EINVAL, "ec_rcluster_del_if_equal: handle, key (at most %d bytes) "
                                    "and expect must be set, outside a callback",
                         EC_RCLUSTER_MAX_KEY);
    deadline = rc_now() + (uint64_t)c->o.op_timeout_ms * 1000000ull;
    backoff = (uint64_t)c->o.backoff_min_ms * 1000000ull;
    slot = ec_rcluster_keyslot(key, key_len);
    for (uint32_t attempt = 0; attempt < c->o.max_attempts && rc_now() < deadline; attempt++) {
        const rc_arg watch[2] = {{"WATCH", 5}, {key, key_len}};
        const rc_arg get[2] = {{"GET", 3}, {key, key_len}};
        const rc_arg multi[1] = {{"MULTI", 5}}, exec[1] = {{"EXEC", 4}};
        const rc_arg del[2] = {{"DEL", 3}, {key, key_len}};
        static const rc_arg unwatch[1] = {{"UNWATCH", 7}};
        const rc_arg *a1[2] = {watch, get}, *a2[3] = {multi, del, exec}, *a3[1] = {unwatch};
        const int n1[2] = {2, 2}, n2[3] = {1, 2, 1}, n3[1] = {1};
        redisReply *r[3] = {NULL, NULL, NULL};
        uint16_t idx = c->slot[slot];
        rc_node *nd;
        int e = 0;

        if (attempt > 0)
            c->st.retries++;
        if (idx == RC_NONE) {
            rc = ec_seterr(EC_ECONN, "no master serves slot %u", slot);
            goto wait;
        }
        nd = c->nodes[idx];
        if ((rc = rc_sync(c, nd, 2, n1, a1, deadline, r)) != 0) {
            if (rc == EC_ENOMEM)
                break;
            goto wait;
        }
        for (int k = 0; k < 2 && !e; k++)
            if (r[k]->type == REDIS_REPLY_ERROR)
                e = rc_cad_error(c, nd, r[k], slot);
        if (!e && (r[0]->type != REDIS_REPLY_STATUS ||
                   !(r[1]->type == REDIS_REPLY_STRING || r[1]->type == REDIS_REPLY_NIL)))
            e = ec_seterr(EC_EPROTO, "node %s:%u answered WATCH/GET with reply types %d/%d",
                          nd->host, nd->port, r[0]->type, r[1]->type);
        if (!e && (r[1]->type == REDIS_REPLY_NIL || r[1]->len != expect_len ||
                   (expect_len && memcmp(r[1]->str, expect, expect_len) != 0)))
            e = r[1]->type == REDIS_REPLY_NIL ? EC_ENOENT : EC_EBUSY;
        rc_free_replies(r, 2);
        if (e) {
            redisReply *u = NULL;
            if (rc_sync(c, nd, 1, n3, a3, deadline, &u) == 0)
                rc_free_obj(u);
            else
                rc_node_fail(c, nd, EC_ECONN, "UNWATCH failed");
            if (e == 1)
                continue;
            rc = e == 2 ? EC_EBUSY : e;
            if (e == 2)
                goto wait;
            if (e == EC_EBUSY)
                ec_seterr(EC_EBUSY, "key '%s' holds another value: not deleted",
                          ec_printable(key, key_len, pbuf, sizeof(pbuf)));
            goto out;
        }
        if ((rc = rc_sync(c, nd, 3, n2, a2, deadline, r)) != 0) {
            if (rc == EC_ENOMEM)
                break;
            goto wait; /* EXEC's outcome unknown: the next attempt reads again */
        }
        if (r[2]->type == REDIS_REPLY_NIL) {
            rc = ec_seterr(EC_EBUSY, "key '%s' changed between GET and EXEC: not deleted",
                           ec_printable(key, key_len, pbuf, sizeof(pbuf)));
        } else if (r[2]->type == REDIS_REPLY_ARRAY && r[2]->elements == 1 &&
                   rc_is(r[2]->element[0], REDIS_REPLY_INTEGER)) {
            rc = r[2]->element[0]->integer == 1 ? 0 : EC_ENOENT;
        } else if (r[2]->type == REDIS_REPLY_ERROR) {
            rc = rc_cad_error(c, nd, r[2], slot);
            rc = rc > 0 ? ec_seterr(EC_EBUSY, "EXEC was refused; retry") : rc;
        } else {
            rc = ec_seterr(EC_EPROTO, "node %s:%u answered EXEC with reply type %d", nd->host,
                           nd->port, r[2]->type);
        }
        rc_free_replies(r, 3);
        goto out;
    wait:
        if (c->want_refresh || idx == RC_NONE)
            (void)rc_refresh(c, false, deadline);
        {
            uint64_t now = rc_now();
            if (now < deadline)
                rc_sleep_ns(backoff < deadline - now ? backoff : deadline - now);
        }
        backoff = backoff * 2 > (uint64_t)c->o.backoff_max_ms * 1000000ull
                      ? (uint64_t)c->o.backoff_max_ms * 1000000ull
                      : backoff * 2;
    }
    if (rc != 0 && rc != EC_ENOENT)
        rc = ec_adderr(rc == EC_EBUSY ? EC_EBUSY : rc, "delete-if-equal of key '%s' gave up",
                       ec_printable(key, key_len, pbuf, sizeof(pbuf)));
out:
    rc_gc(c);
    if (rc != 0 && rc != EC_ENOENT && rc != EC_EBUSY)
        c->st.errors++;
    return rc;
}

/* ------------------------------------------------------------------------
 * The handle */

int ec_rcluster_refresh(ec_rcluster *c)
{
    int rc;

    if (!c || c->call)
        return ec_seterr(EC_EINVAL, "ec_rcluster_refresh: no handle, or inside a callback");
    rc = rc_refresh(c, true, rc_now() + (uint64_t)c->o.op_timeout_ms * 1000000ull);
    rc_gc(c);
    return rc;
}

/* The daemon's credentials (--remote-auth-file) and the cluster they are
 * for: set at start, and again at each reload (SIGHUP), while handles on
 * other threads read them; default_gen counts the changes, so a handle
 * copies them only when they changed. */
static pthread_mutex_t default_mu = PTHREAD_MUTEX_INITIALIZER;
static ec_rcluster_auth default_auth;
static char default_url[1024];
static uint64_t default_gen = 1; /* a handle's auth_gen starts at 0 */

void ec_rcluster_set_default_auth(const char *url, const ec_rcluster_auth *a)
{
    pthread_mutex_lock(&default_mu);
    explicit_bzero(&default_auth, sizeof(default_auth));
    default_url[0] = '\0';
    if (url && a && strlen(url) < sizeof(default_url)) {
        default_auth = *a;
        snprintf(default_url, sizeof(default_url), "%s", url);
    }
    default_gen++;
    pthread_mutex_unlock(&default_mu);
}

void rc_auth_refresh(ec_rcluster *c)
{
    if (!c->auth_default)
        return;
    pthread_mutex_lock(&default_mu);
    if (c->auth_gen != default_gen) {
        explicit_bzero(&c->o.auth, sizeof(c->o.auth));
        if (default_url[0] && !strcmp(c->url, default_url))
            c->o.auth = default_auth;
        c->auth_gen = default_gen;
    }
    pthread_mutex_unlock(&default_mu);
}

int ec_rcluster_auth_load(const char *path, ec_rcluster_auth *out)
{
    char buf[4097], *tok[3] = {NULL, NULL, NULL}, *save = NULL, *nl;
    struct stat st;
    ssize_t n;
    size_t got = 0;
    int fd, ntok = 0;

    if (!path || !out)
        return ec_seterr(EC_EINVAL, "ec_rcluster_auth_load: path and out must be set");
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return ec_seterr_errno(errno == EACCES ? EC_EPERM : EC_EIO, errno,
                               "Redis Cluster credentials %s", path);
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ec_seterr(EC_EINVAL, "Redis Cluster credentials %s: not a regular file", path);
    }
    if (st.st_mode & 077) {
        close(fd);
        return ec_seterr(EC_EPERM, "Redis Cluster credentials %s: mode %04o lets group or "
                         "others at it; chmod 600 it", path, (unsigned)(st.st_mode & 07777));
    }
    if (st.st_uid != geteuid() && st.st_uid != 0) {
        close(fd);
        return ec_seterr(EC_EPERM, "Redis Cluster credentials %s: owned by uid %u, not by "
                         "this process's user (%u) or root", path, (unsigned)st.st_uid,
                         (unsigned)geteuid());
    }
    while (got < sizeof(buf) - 1 && (n = read(fd, buf + got, sizeof(buf) - 1 - got)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            return ec_seterr_errno(EC_EIO, e, "Redis Cluster credentials %s", path);
        }
        got += (size_t)n;
    }
    close(fd);
    if (got == sizeof(buf) - 1)
        return ec_seterr(EC_EINVAL, "Redis Cluster credentials %s: over 4 KiB; it holds "
                         "one line, \"PASSWORD\" or \"USER PASSWORD\"", path);
    buf[got] = '\0';
    if ((nl = strchr(buf, '\n')) != NULL)
        *nl = '\0';
    if (nl != buf && (nl = strchr(buf, '\r')) != NULL && nl[1] == '\0')
        *nl = '\0';
    for (char *t = strtok_r(buf, " \t", &save); t && ntok < 3; t = strtok_r(NULL, " \t", &save))
        tok[ntok++] = t;
    if (ntok < 1 || ntok > 2) {
        explicit_bzero(buf, sizeof(buf));
        return ec_seterr(EC_EINVAL, "Redis Cluster credentials %s: its first line holds %s; "
                         "write \"PASSWORD\" or \"USER PASSWORD\"", path,
                         ntok < 1 ? "nothing" : "more than two words");
    }
    if (strlen(tok[0]) >= EC_RCLUSTER_AUTH_MAX ||
        (ntok == 2 && strlen(tok[1]) >= EC_RCLUSTER_AUTH_MAX)) {
        explicit_bzero(buf, sizeof(buf));
        return ec_seterr(EC_EINVAL, "Redis Cluster credentials %s: a user name or password "
                         "over %d bytes", path, EC_RCLUSTER_AUTH_MAX - 1);
    }
    memset(out, 0, sizeof(*out));
    snprintf(out->user, sizeof(out->user), "%s", ntok == 2 ? tok[0] : "");
    snprintf(out->password, sizeof(out->password), "%s", tok[ntok - 1]);
    explicit_bzero(buf, sizeof(buf));
    return 0;
}

int ec_rcluster_open(const char *url_or_seeds, const ec_rcluster_opts *o, ec_rcluster **out)
{
    ec_rcluster *c = NULL;
    int rc;

    if (!url_or_seeds || !out)
        return ec_seterr(EC_EINVAL, "ec_rcluster_open: seeds and out must be set");
    c = calloc(1, sizeof(*c));
    if (!c)
        return ec_seterr(EC_ENOMEM, "out of memory for a Redis Cluster handle");
    if ((rc = ec_rcluster_parse_seeds(url_or_seeds, c->seeds, EC_RCLUSTER_MAX_SEEDS,
                                      &c->nseeds)) != 0)
        goto fail;
    if (o)
        c->o = *o;
    if (!(c->url = strdup(url_or_seeds))) {
        rc = ec_seterr(EC_ENOMEM, "out of memory for a Redis Cluster handle");
        goto fail;
    }
    /* No credentials of the caller's: the process default's for this very
     * cluster, now and after they change. */
    c->auth_default = !c->o.auth.password[0];
    rc_auth_refresh(c);
#define RC_DEFAULT(f, v) if (c->o.f == 0) c->o.f = (v)
    RC_DEFAULT(connect_timeout_ms, 1000);
    RC_DEFAULT(io_timeout_ms, 2000);
    RC_DEFAULT(op_timeout_ms, 5000);
    RC_DEFAULT(max_attempts, 16);
    RC_DEFAULT(refresh_interval_ms, 100);
    RC_DEFAULT(backoff_min_ms, 5);
    RC_DEFAULT(backoff_max_ms, 200);
    RC_DEFAULT(max_value_bytes, 64ull << 20);
#undef RC_DEFAULT
    if (c->o.max_value_bytes > RC_MAX_VALUE_LIMIT || c->o.backoff_min_ms > c->o.backoff_max_ms ||
        c->o.max_attempts > 65535 || c->o.op_timeout_ms > 3600000 ||
        c->o.connect_timeout_ms > 3600000 || c->o.io_timeout_ms > 3600000) {
        rc = ec_seterr(EC_EINVAL, "Redis Cluster options: max_value_bytes at most 512 MiB, "
                                  "backoff_min_ms <= backoff_max_ms, max_attempts <= 65535, "
                                  "timeouts at most an hour");
        goto fail;
    }
    c->rbuf = malloc(RC_READ_CHUNK);
    if (!c->rbuf) {
        rc = ec_seterr(EC_ENOMEM, "out of memory for a Redis Cluster handle");
        goto fail;
    }
    for (size_t s = 0; s < EC_RCLUSTER_SLOTS; s++)
        c->slot[s] = RC_NONE;
    c->gc_due = true;
    rc = rc_refresh(c, true, rc_now() + (uint64_t)c->o.op_timeout_ms * 1000000ull);
    rc_gc(c);
    if (rc != 0) {
        char pbuf[128];
        ec_adderr(rc, "cannot open Redis Cluster '%s'",
                  ec_printable(url_or_seeds, strlen(url_or_seeds), pbuf, sizeof(pbuf)));
        goto fail;
    }
    *out = c;
    return 0;
fail:
    ec_rcluster_close(c);
    return rc;
}

void ec_rcluster_close(ec_rcluster *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nnodes; i++)
        rc_node_free(c->nodes[i]);
    free(c->nodes);
    free(c->pfd);
    free(c->pnode);
    free(c->rbuf);
    free(c->url);
    explicit_bzero(&c->o.auth, sizeof(c->o.auth));
    free(c);
}

int ec_rcluster_slot_node(const ec_rcluster *c, unsigned slot, char *buf, size_t len)
{
    const rc_node *nd;
    int n;

    if (!c || slot >= EC_RCLUSTER_SLOTS || !buf)
        return ec_seterr(EC_EINVAL, "ec_rcluster_slot_node: a handle, a slot < 16384 and a "
                                    "buffer are needed");
    if (c->slot[slot] == RC_NONE)
        return ec_seterr(EC_ENOENT, "no master serves slot %u in the map", slot);
    nd = c->nodes[c->slot[slot]];
    if (strchr(nd->host, ':'))
        n = snprintf(buf, len, "[%s]:%u", nd->host, nd->port);
    else
        n = snprintf(buf, len, "%s:%u", nd->host, nd->port);
    if (n < 0 || (size_t)n >= len)
        return ec_seterr(EC_EINVAL, "ec_rcluster_slot_node: %zu bytes is too small", len);
    return 0;
}

void ec_rcluster_stats_get(const ec_rcluster *c, ec_rcluster_stats *out)
{
    if (c && out)
        *out = c->st;
}

