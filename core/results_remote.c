/*
 * results_remote.c - namespaces shared across hosts (EC_NS_REMOTE): the
 * cache manager's side in the remote tier's Redis Cluster.
 *
 * What it owns: a pool of cluster workers of its own (core/rpool.h), the
 * requests to the cluster under way (one per key at most: `ops`, by item
 * key), the poll timer, the format of a result in the cluster, and the
 * remote_result_* counters and latency histogram.
 *
 * Who calls it: core/results.c, on the server thread: rr_ask when a miss
 * of a remote namespace would be given the lease, rr_publish when a value
 * is put, rr_lease_ended whenever a lease ends, rr_owner_close, rr_purge.
 * The server loop watches ec_resmgr_remote_fd() and calls
 * ec_resmgr_remote_events(). The cluster calls (job_run_*) run on the
 * pool's workers and touch nothing but their job; everything else runs on
 * the server thread.
 *
 * The protocol, per key (keys of namespace ns bound to model@version, or
 * "-" unbound; h the XXH3 of the key bytes, the hash tag that puts both in
 * one slot):
 *   value  ec:r:<ns>/<binding>/{<h>}/v/<key>  a header (struct rr_hdr:
 *          magic, flags, dtype, shape, compute time, expiry in Unix ms,
 *          the key's hash and length, a checksum of it all) then the value
 *          bytes; SET with PX = its freshness left
 *   lease  ec:r:<ns>/<binding>/{<h>}/l/<key>  a random token, SET NX PX
 *          lease time; released with ec_rcluster_del_if_equal
 *
 *   1. A local miss goes through the local single flight first: the first
 *      asker gets a local lease marked RL_PENDING and no answer yet; later
 *      local askers wait as for any lease. A worker GETs the value: valid ->
 *      stored here as a put would, the asker told FOUND. Absent (or
 *      invalid: refused, counted) -> SET lease NX PX: won -> GET the value
 *      once more (a host may have stored it and let its lease go between
 *      our GET and our SET: without this second look it would be computed
 *      twice), then the asker is GRANTED (RL_HELD); lost -> the daemon
 *      holds the local lease (RL_WAIT, owner 0), the asker is told WAIT
 *      (or STALE), and the key is polled.
 *   2. A put by a client stores here, then a worker SETs the value and,
 *      when the lease was held, releases the cluster lease after it (in
 *      that order, so whoever wins the lease next sees the value).
 *   3. Polling, every RR_POLL_MS, all RL_WAIT keys in one job (GET value,
 *      GET lease): a valid value is stored and the waiters wake; no value
 *      and no lease (the holder gave up or its lease expired) ends the
 *      local lease and the waiters ask again (step 1); a failure too.
 *   4. An RL_HELD lease that ends without a value (release, the holder's
 *      connection closed, overrun) releases the cluster lease.
 *   5. Whenever the cluster fails (unreachable: the pool fails at once),
 *      the asker gets the plain local lease and computes here; local hits
 *      never wait for the cluster. Every failure is counted and logged at
 *      most once per RR_LOG_NS.
 *
 * Invariants:
 *  - at most one op per item key; an op exists exactly while its ASK job
 *    is out or its key is polled (RL_WAIT); a local lease RL_PENDING or
 *    RL_WAIT has its op (until it ends; then its op is stale and goes at
 *    its job's completion);
 *  - a job names its op and lease by serial, so a lease that ended and was
 *    granted anew meanwhile is not mistaken for the one the job served;
 *  - nothing read from the cluster is used before rr_validate accepted it.
 */
#include "core/results_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/err.h"
#include "common/log.h"
#include "core/rpool.h"
#include "shm/items.h"
#include "shm/results.h"

#define RR_POLL_MS 10
#define RR_THREADS 4
#define RR_LOG_NS (10ll * 1000000000ll)
#define RR_MAGIC 0x56524345u /* "ECRV" */
#define RR_VERSION 1
#define RR_TOKEN_LEN 32

/* A result in the cluster: this header, then value_len bytes. Little-endian
 * (the hosts of one cluster are). */
struct rr_hdr {
    uint32_t magic;
    uint16_t version;
    uint16_t hdr_bytes;
    uint32_t flags;              /* EC_RES_NEGATIVE, EC_RES_TENSOR */
    uint32_t dtype, ndim;
    uint32_t compute_us;
    uint64_t shape[EC_MAX_DIMS];
    int64_t expires_unix_ms;     /* fresh until (CLOCK_REALTIME) */
    uint64_t key_hash;           /* XXH3 of the key bytes */
    uint32_t key_len;
    uint32_t pad;
    uint64_t value_len;
    uint64_t checksum;           /* XXH3 of header (this field 0) and value */
};
static_assert(sizeof(struct rr_hdr) == 128, "rr_hdr is 128 bytes");
static_assert(EC_MAX_DIMS == 8, "rr_hdr keeps 8 dimensions");

enum { J_ASK, J_POLL, J_PUBLISH, J_RELEASE, J_DEL };
enum { OUT_NONE, OUT_FOUND, OUT_WON, OUT_LOST, OUT_GONE, OUT_WAITING, OUT_ERROR };

/* A request for one key under way. */
struct op {
    uint64_t item_key, serial, lease_serial;
    uint32_t slot, gen;
    uint32_t flags;              /* the asker's lease flags */
    bool early;                  /* a refresh of a fresh value */
    bool polling, polled;        /* RL_WAIT; in the poll job out */
    uint64_t owner, token;       /* the asker to answer; owner 0: none */
    void *key;
    uint32_t key_len;
    uint64_t key_hash;
    char *vkey, *lkey;
    size_t vkey_len, lkey_len;
};

/* One key of a poll job (copies: the op may go meanwhile). */
struct pent {
    uint64_t item_key, op_serial, key_hash;
    uint32_t key_len;
    char *vkey, *lkey;
    size_t vkey_len, lkey_len;
    int vst, lst;                /* GET statuses */
    void *val;
    size_t val_len;
    int out;
    uint32_t bad;
};

struct rjob {
    ec_rjob j;                   /* first */
    struct rremote *r;
    int kind;
    uint64_t submitted_ns;
    uint64_t item_key, op_serial;
    char *vkey, *lkey;
    size_t vkey_len, lkey_len;
    uint64_t key_hash;
    uint32_t key_len;
    char token[RR_TOKEN_LEN + 1]; /* "": no lease to take or release */
    uint64_t lease_ms, px_ms;
    int64_t seen_expiry_ms;      /* ASK of an early refresh: a value expiring then
                                  * (+- 5 ms: clocks read twice, rounded) is the one
                                  * here already; another is another host's refresh
                                  * (0: any value counts) */
    void *blob;                  /* PUBLISH: header and value */
    size_t blob_len;
    int out;
    void *val;                   /* FOUND: a validated value (header first) */
    size_t val_len;
    uint32_t gets, bad;
    struct pent *ents;           /* POLL */
    size_t n;
};

struct rremote {
    ec_resmgr *m;
    ec_rpool *pool;
    int ep, tfd;
    ec_u64map ops;               /* item key -> struct op * */
    uint64_t next_serial;
    bool poll_out, timer_armed, closing;
    struct {
        uint64_t gets, hits, sets, won, lost, errors, refused, fallbacks;
    } st;
    ec_hist hist;
    int64_t last_log_ns;
    uint64_t unlogged;
};

static int64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static int64_t unix_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000ll + ts.tv_nsec / 1000000;
}

/* Count a failure; say it at most once per RR_LOG_NS. */
static void rr_error(struct rremote *r, const char *what, const char *msg)
{
    int64_t now = mono_ns();

    r->st.errors++;
    if (r->last_log_ns && now - r->last_log_ns < RR_LOG_NS) {
        r->unlogged++;
        return;
    }
    ec_warn("remote result namespaces: %s: %s (%" PRIu64 " more since the last such message)",
            what, msg && msg[0] ? msg : "failed", r->unlogged);
    r->unlogged = 0;
    r->last_log_ns = now;
}

/* A cluster key for a log line: up to its hash tag, never the key's own
 * bytes (a client's data, perhaps not printable). */
static const char *key_label(const char *ckey, char *buf, size_t cap)
{
    const char *end = ckey ? strchr(ckey, '}') : NULL;
    size_t n = end ? (size_t)(end - ckey) + 1 : 0;

    snprintf(buf, cap, "%.*s", (int)(n < cap ? n : cap - 1), ckey ? ckey : "");
    return buf;
}

/* ------------------------------------------------------------------ */
/* The format (worker threads and server thread)                       */

/* 1: a valid value, fresh; 0: valid but expired (as if absent); -1: not a
 * value of this key (refused). */
static int rr_validate(void *buf, size_t len, uint64_t key_hash, uint32_t key_len)
{
    struct rr_hdr h;
    uint64_t sum;

    if (len < sizeof(h))
        return -1;
    memcpy(&h, buf, sizeof(h));
    if (h.magic != RR_MAGIC || h.version != RR_VERSION || h.hdr_bytes != sizeof(h) ||
        h.value_len != len - sizeof(h) || h.value_len > EC_SLAB_BYTES ||
        h.key_hash != key_hash || h.key_len != key_len || h.pad ||
        (h.flags & ~(uint32_t)(EC_RES_NEGATIVE | EC_RES_TENSOR)) || h.ndim > EC_MAX_DIMS)
        return -1;
    memset((char *)buf + offsetof(struct rr_hdr, checksum), 0, sizeof(h.checksum));
    sum = XXH3_64bits(buf, len);
    memcpy((char *)buf + offsetof(struct rr_hdr, checksum), &h.checksum, sizeof(h.checksum));
    if (sum != h.checksum)
        return -1;
    return h.expires_unix_ms > unix_ms() ? 1 : 0;
}

/* ------------------------------------------------------------------ */
/* Jobs (worker threads: the job and the cluster handle only)          */

static void job_msg(ec_rjob *j, int rc)
{
    j->rc = rc;
    snprintf(j->msg, sizeof(j->msg), "%s", ec_last_error());
}

/* GET the value: OUT_FOUND (j->val), OUT_NONE (absent, expired or
 * refused) or OUT_ERROR. */
static int get_value(struct rjob *x, ec_rcluster *rc)
{
    void *v = NULL;
    size_t n = 0;
    int st, ok;

    x->gets++;
    st = ec_rcluster_get(rc, x->vkey, x->vkey_len, &v, &n);
    if (st == EC_ENOENT)
        return OUT_NONE;
    if (st) {
        job_msg(&x->j, st);
        return OUT_ERROR;
    }
    ok = rr_validate(v, n, x->key_hash, x->key_len);
    if (ok > 0 && x->seen_expiry_ms &&
        llabs((long long)(((const struct rr_hdr *)v)->expires_unix_ms - x->seen_expiry_ms)) <= 5)
        ok = 0; /* the value this host has: refresh it (or let another) */
    if (ok > 0) {
        x->val = v;
        x->val_len = n;
        return OUT_FOUND;
    }
    x->bad += ok < 0;
    free(v);
    return OUT_NONE;
}

static void job_run_ask(ec_rjob *j, ec_rcluster *rc)
{
    struct rjob *x = (struct rjob *)j;
    ec_rcluster_set_opts so = {.ttl_ms = x->lease_ms, .nx = true};
    int st;

    if ((x->out = get_value(x, rc)) != OUT_NONE)
        return;
    st = ec_rcluster_set(rc, x->lkey, x->lkey_len, x->token, RR_TOKEN_LEN, &so);
    if (st == EC_EEXIST) {
        /* Ours, when a lost connection made the client send it twice? */
        void *v = NULL;
        size_t n = 0;
        if (ec_rcluster_get(rc, x->lkey, x->lkey_len, &v, &n) == 0 && n == RR_TOKEN_LEN &&
            memcmp(v, x->token, n) == 0)
            st = 0;
        free(v);
    }
    if (st == EC_EEXIST) {
        x->out = OUT_LOST;
        return;
    }
    if (st) {
        job_msg(j, st);
        x->out = OUT_ERROR;
        return;
    }
    /* Won: look again (see the file comment, step 1). */
    if (get_value(x, rc) == OUT_FOUND) {
        (void)ec_rcluster_del_if_equal(rc, x->lkey, x->lkey_len, x->token, RR_TOKEN_LEN);
        x->out = OUT_FOUND;
        return;
    }
    j->rc = 0; /* a failed second look leaves the lease ours: compute */
    x->out = OUT_WON;
}

static void poll_fn(void *arg, size_t i, int status, const void *val, size_t len,
                    const char *msg)
{
    struct rjob *x = arg;
    struct pent *e = &x->ents[i / 2];

    (void)msg;
    if (i % 2) {
        e->lst = status;
        return;
    }
    e->vst = status;
    if (status == 0 && (e->val = malloc(len ? len : 1))) {
        if (len)
            memcpy(e->val, val, len);
        e->val_len = len;
    } else if (status == 0) {
        e->vst = EC_ENOMEM;
    }
}

static void job_run_poll(ec_rjob *j, ec_rcluster *rc)
{
    struct rjob *x = (struct rjob *)j;
    const char **keys = malloc(2 * x->n * sizeof(*keys));
    size_t *lens = malloc(2 * x->n * sizeof(*lens));
    int st;

    if (!keys || !lens) {
        free(keys);
        free(lens);
        j->rc = EC_ENOMEM;
        snprintf(j->msg, sizeof(j->msg), "out of memory polling the cluster");
        return;
    }
    for (size_t i = 0; i < x->n; i++) {
        keys[2 * i] = x->ents[i].vkey;
        lens[2 * i] = x->ents[i].vkey_len;
        keys[2 * i + 1] = x->ents[i].lkey;
        lens[2 * i + 1] = x->ents[i].lkey_len;
        x->ents[i].vst = x->ents[i].lst = EC_EINTERNAL;
    }
    x->gets += (uint32_t)x->n;
    st = ec_rcluster_mget(rc, keys, lens, 2 * x->n, poll_fn, x);
    if (st)
        job_msg(j, st);
    for (size_t i = 0; i < x->n; i++) {
        struct pent *e = &x->ents[i];
        int ok = e->vst == 0 ? rr_validate(e->val, e->val_len, e->key_hash, e->key_len) : 0;
        e->bad = ok < 0;
        if (ok > 0)
            e->out = OUT_FOUND;
        else if ((e->vst && e->vst != EC_ENOENT) || (e->lst && e->lst != EC_ENOENT))
            e->out = OUT_ERROR;
        else
            e->out = e->lst == EC_ENOENT ? OUT_GONE : OUT_WAITING;
        if (e->out != OUT_FOUND) {
            free(e->val);
            e->val = NULL;
        }
    }
    free(keys);
    free(lens);
}

static void job_run_publish(ec_rjob *j, ec_rcluster *rc)
{
    struct rjob *x = (struct rjob *)j;
    ec_rcluster_set_opts so = {.ttl_ms = x->px_ms};
    uint64_t sum = XXH3_64bits(x->blob, x->blob_len); /* its checksum field is 0 */
    int st;

    memcpy((char *)x->blob + offsetof(struct rr_hdr, checksum), &sum, sizeof(sum));
    st = ec_rcluster_set(rc, x->vkey, x->vkey_len, x->blob, x->blob_len, &so);
    if (st)
        job_msg(j, st);
    x->out = st ? OUT_ERROR : OUT_FOUND;
    /* The lease goes after the value, so its next winner finds the value. */
    if (x->token[0])
        (void)ec_rcluster_del_if_equal(rc, x->lkey, x->lkey_len, x->token, RR_TOKEN_LEN);
}

static void job_run_release(ec_rjob *j, ec_rcluster *rc)
{
    struct rjob *x = (struct rjob *)j;
    int st = ec_rcluster_del_if_equal(rc, x->lkey, x->lkey_len, x->token, RR_TOKEN_LEN);

    if (st && st != EC_ENOENT && st != EC_EBUSY)
        job_msg(j, st);
}

static void job_run_del(ec_rjob *j, ec_rcluster *rc)
{
    struct rjob *x = (struct rjob *)j;
    int st = ec_rcluster_del(rc, x->vkey, x->vkey_len);

    if (st && st != EC_ENOENT)
        job_msg(j, st);
}

/* ------------------------------------------------------------------ */
/* Server thread                                                       */

static void job_done(ec_rjob *j);

static void job_free(struct rjob *x)
{
    free(x->vkey);
    free(x->lkey);
    free(x->blob);
    free(x->val);
    for (size_t i = 0; i < x->n; i++) {
        free(x->ents[i].vkey);
        free(x->ents[i].lkey);
        free(x->ents[i].val);
    }
    free(x->ents);
    free(x);
}

static void op_free(struct op *o)
{
    if (!o)
        return;
    free(o->key);
    free(o->vkey);
    free(o->lkey);
    free(o);
}

static struct rjob *job_new(struct rremote *r, int kind)
{
    static void (*const run[])(ec_rjob *, ec_rcluster *) = {
        [J_ASK] = job_run_ask, [J_POLL] = job_run_poll, [J_PUBLISH] = job_run_publish,
        [J_RELEASE] = job_run_release, [J_DEL] = job_run_del};
    struct rjob *x = calloc(1, sizeof(*x));

    if (!x)
        return NULL;
    x->r = r;
    x->kind = kind;
    x->j.run = run[kind];
    x->j.done = job_done;
    return x;
}

static void job_submit(struct rremote *r, struct rjob *x)
{
    x->submitted_ns = ec_hist_now_ns();
    ec_rpool_submit(r->pool, &x->j);
}

static char *dup_bytes(const void *p, size_t n)
{
    char *d = malloc(n + 1);

    if (d) {
        memcpy(d, p, n);
        d[n] = '\0';
    }
    return d;
}

/* The cluster keys of key in ns: *vkey, *lkey (malloc'd), *hash. */
static int cluster_keys(const struct rns *ns, const void *key, size_t key_len, char **vkey,
                        size_t *vlen, char **lkey, size_t *llen, uint64_t *hash)
{
    char pre[EC_NS_NAME_MAX + 2 * EC_NAME_MAX + 96];
    uint64_t h = XXH3_64bits(key, key_len);
    int n;

    if (ns->cat.bind_model[0])
        n = snprintf(pre, sizeof(pre), "ec:r:%s/%s@%" PRId64 "/{%016" PRIx64 "}/", ns->cat.name,
                     ns->cat.bind_model, ns->cat.bound_version, h);
    else
        n = snprintf(pre, sizeof(pre), "ec:r:%s/-/{%016" PRIx64 "}/", ns->cat.name, h);
    if (n < 0 || (size_t)n >= sizeof(pre))
        return ec_seterr(EC_EINTERNAL, "a cluster key prefix too long");
    *vkey = malloc((size_t)n + 2 + key_len + 1);
    *lkey = malloc((size_t)n + 2 + key_len + 1);
    if (!*vkey || !*lkey) {
        free(*vkey);
        free(*lkey);
        *vkey = *lkey = NULL;
        return ec_seterr(EC_ENOMEM, "cluster keys");
    }
    memcpy(*vkey, pre, (size_t)n);
    memcpy(*lkey, pre, (size_t)n);
    memcpy(*vkey + n, "v/", 2);
    memcpy(*lkey + n, "l/", 2);
    if (key_len) {
        memcpy(*vkey + n + 2, key, key_len);
        memcpy(*lkey + n + 2, key, key_len);
    }
    (*vkey)[n + 2 + key_len] = (*lkey)[n + 2 + key_len] = '\0';
    *vlen = *llen = (size_t)n + 2 + key_len;
    *hash = h;
    return 0;
}

static void new_token(char out[RR_TOKEN_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[RR_TOKEN_LEN / 2];

    if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b)) {
        uint64_t t = (uint64_t)mono_ns() ^ ((uint64_t)getpid() << 32);
        for (size_t i = 0; i < sizeof(b); i++)
            b[i] = (uint8_t)(t >> (8 * (i % 8))) ^ (uint8_t)(i * 131);
    }
    for (size_t i = 0; i < sizeof(b); i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[RR_TOKEN_LEN] = '\0';
}

static void arm_poll(struct rremote *r)
{
    struct itimerspec it = {.it_value = {.tv_nsec = RR_POLL_MS * 1000000l}};

    if (r->timer_armed || r->poll_out || r->closing)
        return;
    if (timerfd_settime(r->tfd, 0, &it, NULL) == 0)
        r->timer_armed = true;
}

/* Store a value read from the cluster (validated) as a put would. */
static int store_found(ec_resmgr *m, struct rns *ns, const void *key, uint32_t key_len,
                       const void *val, size_t len)
{
    ec_res_peer p = {.owner = UINT64_MAX, .uid = (uid_t)ns->cat.owner_uid, .admin = true};
    struct rr_hdr h;
    ec_res_put v;
    int64_t left;

    memcpy(&h, val, sizeof(h));
    left = h.expires_unix_ms - unix_ms();
    if (left <= 0 || len != sizeof(h) + h.value_len)
        return EC_ENOENT;
    memset(&v, 0, sizeof(v));
    v.flags = h.flags;
    v.compute_us = h.compute_us;
    v.dtype = h.dtype;
    v.ndim = (h.flags & EC_RES_TENSOR) ? h.ndim : 0;
    memcpy(v.shape, h.shape, sizeof(v.shape));
    v.value = (const char *)val + sizeof(h);
    v.value_len = h.value_len;
    v.fd = -1;
    v.fresh_ns = left * 1000000ll;
    v.from_remote = true;
    return ec_resmgr_put(m, &p, ns->cat.slot, key, key_len, &v);
}

/* The local lease the op serves, if it is still that one in that state. */
static struct lease *op_lease(ec_resmgr *m, const struct op *o, uint8_t state)
{
    struct lease *l = ec_u64map_get(&m->leases, o->item_key);

    return l && l->serial == o->lease_serial && l->remote == state ? l : NULL;
}

static struct rns *op_ns(ec_resmgr *m, const struct op *o)
{
    struct rns *ns = rm_ns_at(m, o->slot);

    return ns && ns->cat.generation == o->gen ? ns : NULL;
}

static void release_later(struct rremote *r, char *lkey, size_t lkey_len, const char *token)
{
    struct rjob *x = job_new(r, J_RELEASE);

    if (!x) {
        free(lkey);
        return; /* it expires */
    }
    x->lkey = lkey;
    x->lkey_len = lkey_len;
    snprintf(x->token, sizeof(x->token), "%s", token);
    job_submit(r, x);
}

static void ask_done(struct rremote *r, struct rjob *x)
{
    ec_resmgr *m = r->m;
    struct op *o = ec_u64map_get(&r->ops, x->item_key);
    uint64_t owner, token;
    bool kept = false;
    struct rns *ns;
    struct lease *l;
    int ans = EC_LEASE_WAIT;
    uint32_t slot;

    if (!o || o->serial != x->op_serial) { /* cannot be: an ASK op stays until now */
        if (x->out == OUT_WON) {
            release_later(r, x->lkey, x->lkey_len, x->token);
            x->lkey = NULL;
        }
        return;
    }
    ec_u64map_del(&r->ops, o->item_key);
    owner = o->owner;
    token = o->token;
    slot = o->slot;
    ns = op_ns(m, o);
    l = ns ? op_lease(m, o, RL_PENDING) : NULL;
    switch (x->out) {
    case OUT_FOUND:
        r->st.hits++;
        if (ns && store_found(m, ns, o->key, o->key_len, x->val, x->val_len) == 0) {
            ans = EC_LEASE_FOUND; /* the put ended l and woke the waiters */
        } else if (ns && (l = op_lease(m, o, RL_PENDING))) {
            l->remote = RL_LOCAL; /* not storable here: computed here */
            ns->leases_granted++;
            ans = EC_LEASE_GRANTED;
        }
        break;
    case OUT_WON:
        r->st.won++;
        if (l) {
            l->remote = RL_HELD;
            l->lkey = x->lkey;
            l->lkey_len = x->lkey_len;
            x->lkey = NULL;
            memcpy(l->token, x->token, sizeof(l->token));
            ns->leases_granted++;
            ans = EC_LEASE_GRANTED;
        } else {
            release_later(r, x->lkey, x->lkey_len, x->token);
            x->lkey = NULL;
        }
        break;
    case OUT_LOST:
        r->st.lost++;
        if (l && o->early) {
            rm_lease_end(m, l);
            ans = EC_LEASE_FOUND; /* its fresh value is still there */
            break;
        }
        if (!l)
            break;
        /* Another host computes it: the daemon holds the local lease, its
         * waiters (the asker too) wait, and the key is polled. */
        l->remote = RL_WAIT;
        l->owner = 0;
        if (!l->uncounted && ns->computing)
            ns->computing--;
        l->uncounted = true;
        ns->leases_waited++;
        if ((o->flags & EC_RES_ALLOW_STALE) &&
            rm_peek(m, ns, o->key, o->key_len) == EC_RESULT_STALE) {
            ns->stale++;
            ans = EC_LEASE_STALE;
        }
        o->polling = true;
        o->owner = 0;
        if (ec_u64map_put(&r->ops, o->item_key, o) == 0) {
            kept = true;
            arm_poll(r);
        } else {
            rm_lease_end(m, l); /* cannot poll it: its waiters ask again */
        }
        break;
    default: /* OUT_ERROR */
        r->st.fallbacks++;
        rr_error(r, "a lease request failed; computing here", x->j.msg);
        if (l) {
            l->remote = RL_LOCAL;
            ns->leases_granted++;
            ans = EC_LEASE_GRANTED;
        }
        break;
    }
    if (!kept) {
        op_free(o);
        rm_wake(m, slot); /* whoever waited on this request asks again */
    }
    if (owner && m->answer)
        m->answer(m->answer_arg, owner, token, ans); /* last: it may close the owner */
}

static void poll_done(struct rremote *r, struct rjob *x)
{
    ec_resmgr *m = r->m;
    char lbl[EC_NS_NAME_MAX + 2 * EC_NAME_MAX + 96];

    r->poll_out = false;
    if (x->j.rc)
        rr_error(r, "polling for values computed on other hosts failed", x->j.msg);
    for (size_t i = 0; i < x->n; i++) {
        struct pent *e = &x->ents[i];
        struct op *o = ec_u64map_get(&r->ops, e->item_key);
        struct lease *l;
        struct rns *ns;
        if (!o || o->serial != e->op_serial)
            continue;
        o->polled = false;
        r->st.refused += e->bad;
        if (e->bad)
            rr_error(r, "a value in the cluster failed validation; refused",
                     key_label(o->vkey, lbl, sizeof(lbl)));
        ns = op_ns(m, o);
        l = ns ? op_lease(m, o, RL_WAIT) : NULL;
        if (!l) { /* its lease ended meanwhile */
            ec_u64map_del(&r->ops, o->item_key);
            rm_wake(m, o->slot);
            op_free(o);
            continue;
        }
        if (e->out == OUT_WAITING)
            continue;
        ec_u64map_del(&r->ops, o->item_key);
        if (e->out == OUT_FOUND) {
            r->st.hits++;
            if (store_found(m, ns, o->key, o->key_len, e->val, e->val_len) != 0 &&
                (l = op_lease(m, o, RL_WAIT)))
                rm_lease_end(m, l); /* not storable: its waiters ask again */
        } else {
            if (e->out == OUT_ERROR && !x->j.rc)
                rr_error(r, "polling a key failed", key_label(o->vkey, lbl, sizeof(lbl)));
            /* Nobody computes it now (or the cluster failed): the waiters
             * ask again, and the first one asks the cluster. */
            rm_lease_end(m, l);
        }
        rm_wake(m, o->slot);
        op_free(o);
    }
    arm_poll(r);
}

static void job_done(ec_rjob *j)
{
    struct rjob *x = (struct rjob *)j;
    struct rremote *r = x->r;
    char lbl[EC_NS_NAME_MAX + 2 * EC_NAME_MAX + 96];

    ec_hist_since(&r->hist, x->submitted_ns);
    r->st.gets += x->gets;
    if (x->bad) {
        r->st.refused += x->bad;
        if (!r->closing)
            rr_error(r, "a value in the cluster failed validation; refused",
                     key_label(x->vkey, lbl, sizeof(lbl)));
        else
            r->st.errors++;
    }
    if (r->closing) {
        if (x->kind == J_ASK) {
            struct op *o = ec_u64map_get(&r->ops, x->item_key);
            if (o && o->serial == x->op_serial) {
                ec_u64map_del(&r->ops, x->item_key);
                op_free(o);
            }
        }
        job_free(x);
        return;
    }
    switch (x->kind) {
    case J_ASK:
        ask_done(r, x);
        break;
    case J_POLL:
        poll_done(r, x);
        break;
    case J_PUBLISH:
        if (x->out == OUT_FOUND)
            r->st.sets++;
        else
            rr_error(r, "storing a value in the cluster failed", j->msg);
        break;
    default:
        if (j->rc)
            rr_error(r, x->kind == J_DEL ? "deleting a purged value in the cluster failed"
                                         : "releasing a lease in the cluster failed",
                     j->msg);
        break;
    }
    job_free(x);
}

static void poll_start(struct rremote *r)
{
    struct rjob *x;
    size_t n = 0, k = 0;

    if (r->poll_out)
        return;
    for (size_t i = 0; i < r->ops.cap; i++)
        n += r->ops.keys[i] && ((struct op *)r->ops.vals[i])->polling;
    if (!n)
        return;
    if (!(x = job_new(r, J_POLL)) || !(x->ents = calloc(n, sizeof(*x->ents)))) {
        free(x);
        arm_poll(r);
        return;
    }
    for (size_t i = 0; i < r->ops.cap && k < n; i++) {
        struct op *o = r->ops.vals[i];
        struct pent *e;
        if (!r->ops.keys[i] || !o->polling)
            continue;
        e = &x->ents[k];
        e->vkey = dup_bytes(o->vkey, o->vkey_len);
        e->lkey = dup_bytes(o->lkey, o->lkey_len);
        if (!e->vkey || !e->lkey) {
            free(e->vkey);
            free(e->lkey);
            e->vkey = e->lkey = NULL;
            continue;
        }
        e->vkey_len = o->vkey_len;
        e->lkey_len = o->lkey_len;
        e->item_key = o->item_key;
        e->op_serial = o->serial;
        e->key_hash = o->key_hash;
        e->key_len = o->key_len;
        o->polled = true;
        k++;
    }
    x->n = k;
    if (!k) {
        job_free(x);
        arm_poll(r);
        return;
    }
    r->poll_out = true;
    job_submit(r, x);
}

/* ------------------------------------------------------------------ */
/* The cache manager's calls                                           */

int rr_ask(ec_resmgr *m, struct rns *ns, struct lease *l, const void *key, size_t key_len,
           uint32_t flags, int64_t fresh_left_ns, uint64_t owner, uint64_t token)
{
    struct rremote *r = m->rr;
    struct op *o = calloc(1, sizeof(*o));
    struct rjob *x = job_new(r, J_ASK);
    int rc = EC_ENOMEM;

    if (!o || !x || !(o->key = dup_bytes(key, key_len)))
        goto fail;
    if ((rc = cluster_keys(ns, key, key_len, &o->vkey, &o->vkey_len, &o->lkey, &o->lkey_len,
                           &o->key_hash)))
        goto fail;
    o->item_key = l->item_key;
    o->serial = ++r->next_serial;
    o->lease_serial = l->serial;
    o->slot = ns->cat.slot;
    o->gen = ns->cat.generation;
    o->flags = flags;
    o->early = flags & EC_RES_EARLY;
    o->owner = owner;
    o->token = token;
    o->key_len = (uint32_t)key_len;
    x->item_key = o->item_key;
    x->op_serial = o->serial;
    x->key_hash = o->key_hash;
    x->key_len = o->key_len;
    x->lease_ms = ns->cat.lease_us / 1000 ? ns->cat.lease_us / 1000 : 1;
    if (o->early) /* the expiry of the value here, as the cluster would say it */
        x->seen_expiry_ms = unix_ms() + fresh_left_ns / 1000000;
    new_token(x->token);
    if (!(x->vkey = dup_bytes(o->vkey, o->vkey_len)) ||
        !(x->lkey = dup_bytes(o->lkey, o->lkey_len))) {
        rc = EC_ENOMEM;
        goto fail;
    }
    x->vkey_len = o->vkey_len;
    x->lkey_len = o->lkey_len;
    if (ec_u64map_put(&r->ops, o->item_key, o)) {
        rc = EC_ENOMEM;
        goto fail;
    }
    job_submit(r, x);
    return 0;
fail:
    op_free(o);
    if (x)
        job_free(x);
    r->st.fallbacks++;
    rr_error(r, "cannot ask the cluster; computing here", ec_last_error());
    return rc;
}

bool rr_busy(ec_resmgr *m, uint64_t item_key)
{
    return m->rr && ec_u64map_get(&m->rr->ops, item_key) != NULL;
}

void rr_publish(ec_resmgr *m, struct rns *ns, const void *key, size_t key_len,
                const ec_res_put *v, const void *value, int64_t fresh_ns, struct lease *l)
{
    struct rremote *r = m->rr;
    struct rjob *x = job_new(r, J_PUBLISH);
    struct rr_hdr h;
    char *lkey = NULL;
    size_t lkey_len = 0;

    if (!x || cluster_keys(ns, key, key_len, &x->vkey, &x->vkey_len, &lkey, &lkey_len,
                           &x->key_hash))
        goto fail;
    free(lkey);
    lkey = NULL;
    memset(&h, 0, sizeof(h));
    h.magic = RR_MAGIC;
    h.version = RR_VERSION;
    h.hdr_bytes = sizeof(h);
    h.flags = v->flags & (EC_RES_NEGATIVE | EC_RES_TENSOR);
    if (h.flags & EC_RES_TENSOR) {
        h.dtype = v->dtype;
        h.ndim = v->ndim;
        memcpy(h.shape, v->shape, sizeof(h.shape));
    }
    h.compute_us = v->compute_us;
    h.expires_unix_ms = unix_ms() + fresh_ns / 1000000;
    h.key_hash = x->key_hash;
    h.key_len = (uint32_t)key_len;
    h.value_len = v->value_len;
    x->px_ms = fresh_ns / 1000000 > 0 ? (uint64_t)(fresh_ns / 1000000) : 1;
    x->blob_len = sizeof(h) + v->value_len;
    if (!(x->blob = malloc(x->blob_len)))
        goto fail;
    memcpy(x->blob, &h, sizeof(h));
    if (v->value_len)
        memcpy((char *)x->blob + sizeof(h), value, v->value_len);
    if (l && l->remote == RL_HELD) { /* its lease goes after the value */
        x->lkey = l->lkey;
        x->lkey_len = l->lkey_len;
        l->lkey = NULL;
        memcpy(x->token, l->token, sizeof(x->token));
        l->remote = RL_LOCAL;
    }
    job_submit(r, x);
    return;
fail:
    if (x)
        job_free(x);
    rr_error(r, "cannot send a value to the cluster", ec_last_error());
}

void rr_purge(ec_resmgr *m, struct rns *ns, const void *key, size_t key_len)
{
    struct rremote *r = m->rr;
    struct rjob *x = job_new(r, J_DEL);
    char *lkey = NULL;
    size_t lkey_len;

    if (!x || cluster_keys(ns, key, key_len, &x->vkey, &x->vkey_len, &lkey, &lkey_len,
                           &x->key_hash)) {
        if (x)
            job_free(x);
        rr_error(r, "cannot delete a purged value in the cluster", ec_last_error());
        return;
    }
    free(lkey);
    job_submit(r, x);
}

void rr_lease_ended(ec_resmgr *m, struct lease *l)
{
    struct rremote *r = m->rr;
    struct op *o;

    if (l->remote == RL_HELD && l->lkey) {
        release_later(r, l->lkey, l->lkey_len, l->token);
        l->lkey = NULL;
    } else if (l->remote == RL_WAIT && (o = ec_u64map_get(&r->ops, l->item_key)) &&
               o->lease_serial == l->serial && !o->polled) {
        ec_u64map_del(&r->ops, l->item_key);
        op_free(o);
    }
    /* RL_PENDING: its op stays until its job is back, and finds it gone. */
}

void rr_owner_close(ec_resmgr *m, uint64_t owner)
{
    struct rremote *r = m->rr;

    for (size_t i = 0; i < r->ops.cap; i++) {
        struct op *o = r->ops.vals[i];
        if (r->ops.keys[i] && o->owner == owner)
            o->owner = 0;
    }
}

int rr_stats(ec_resmgr *m, int (*cb)(const char *name, uint64_t v, void *arg), void *arg)
{
    struct rremote *r = m->rr;
    int rc;

#define S(name, v)                                                                        \
    if ((rc = cb(name, r ? (v) : 0, arg)))                                                \
    return rc
    S("remote_result_gets", r->st.gets);
    S("remote_result_hits", r->st.hits);
    S("remote_result_sets", r->st.sets);
    S("remote_result_leases_won", r->st.won);
    S("remote_result_leases_lost", r->st.lost);
    S("remote_result_errors", r->st.errors);
    S("remote_result_refused", r->st.refused);
    S("remote_result_local_fallbacks", r->st.fallbacks);
    S("remote_result_pending", r->ops.len);
#undef S
    return 0;
}

void ec_resmgr_set_answer(ec_resmgr *m, ec_resmgr_answer_fn fn, void *arg)
{
    m->answer = fn;
    m->answer_arg = arg;
}

int ec_resmgr_remote_fd(const ec_resmgr *m)
{
    return m->rr ? m->rr->ep : -1;
}

void ec_resmgr_remote_events(ec_resmgr *m)
{
    struct rremote *r = m->rr;
    uint64_t ticks;

    if (!r)
        return;
    ec_rpool_reap(r->pool);
    if (read(r->tfd, &ticks, sizeof(ticks)) == (ssize_t)sizeof(ticks)) {
        r->timer_armed = false;
        poll_start(r);
    }
}

void ec_resmgr_remote_hist(const ec_resmgr *m, ec_hist *out)
{
    if (m->rr)
        *out = m->rr->hist;
    else
        memset(out, 0, sizeof(*out));
}

int rr_open(ec_resmgr *m, const char *url)
{
    struct rremote *r = calloc(1, sizeof(*r));
    ec_rpool_config pc = {.url = url, .threads = RR_THREADS, .name = "result",
                          .opts = {.op_timeout_ms = 2000, .max_value_bytes = 2u << 20}};
    struct epoll_event ev = {.events = EPOLLIN};
    int rc;

    if (!r)
        return ec_seterr(EC_ENOMEM, "remote result namespaces");
    r->m = m;
    r->ep = r->tfd = -1;
    if ((rc = ec_rpool_open(&pc, &r->pool))) {
        free(r);
        return rc;
    }
    r->ep = epoll_create1(EPOLL_CLOEXEC);
    r->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    ev.data.u32 = 1;
    if (r->ep < 0 || r->tfd < 0 ||
        epoll_ctl(r->ep, EPOLL_CTL_ADD, ec_rpool_event_fd(r->pool), &ev) < 0 ||
        (ev.data.u32 = 2, epoll_ctl(r->ep, EPOLL_CTL_ADD, r->tfd, &ev)) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "remote result namespaces: epoll/timerfd");
        m->rr = r;
        rr_close(m);
        return rc;
    }
    m->rr = r;
    ec_info("remote result namespaces: through %s", url);
    return 0;
}

void rr_close(ec_resmgr *m)
{
    struct rremote *r = m->rr;

    if (!r)
        return;
    r->closing = true;
    ec_rpool_close(r->pool); /* every job's done() runs: they free themselves */
    for (size_t i = 0; i < r->ops.cap; i++)
        if (r->ops.keys[i])
            op_free(r->ops.vals[i]);
    ec_u64map_free(&r->ops);
    if (r->ep >= 0)
        close(r->ep);
    if (r->tfd >= 0)
        close(r->tfd);
    free(r);
    m->rr = NULL;
}
