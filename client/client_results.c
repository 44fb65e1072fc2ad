/*
 * client_results.c - cached results (include/embcache_results.h): open a
 * namespace, read a result from shared memory (no system call), write one
 * through the daemon, and compute a missing one once for every process:
 * leases, waiting on the namespace's wake word, early refresh.
 *
 * Runs in inference processes, on any of their threads: reads take no
 * lock; requests to the daemon hold the client's lock, and waiting for
 * another process's computation holds none.
 */
#include "client/client_impl.h"

#include <linux/futex.h>
#include <math.h>
#include <sys/syscall.h>
#include <time.h>

#include "shm/results.h"

#define WAIT_SLICE_NS 50000000ll   /* a waiter asks the daemon again at least this often */
#define INLINE_MAX (EC_MSG_MAX - EC_MSG_HDR - 256 - EC_RES_KEY_MAX)

static int64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static int key_ok(const ec_results *r, const void *key, size_t key_len)
{
    if (!r)
        return ec_seterr(EC_EINVAL, "no namespace handle");
    if ((!key && key_len) || key_len > EC_RES_KEY_MAX)
        return ec_seterr(EC_EINVAL, "a result key of %zu bytes (at most %u)", key_len,
                         EC_RES_KEY_MAX);
    return 0;
}

static uint64_t us_of(double seconds)
{
    return seconds > 0 ? (uint64_t)(seconds * 1e6 + 0.5) : 0;
}

static int64_t sus_of(double seconds)
{
    return seconds < 0 ? -1 : (int64_t)us_of(seconds);
}

/* ------------------------------------------------------------------ */
/* Namespaces                                                          */

/* Map the arena the daemon sent, unless this client has it already. */
static int arena_of(ec_client *c, int fd, const ec_segment **out)
{
    struct carena *a;
    struct stat st;
    int rc;

    if (fstat(fd, &st) < 0)
        return ec_seterr_errno(EC_EIO, errno, "fstat of the result arena");
    for (a = c->arenas; a; a = a->next)
        if (a->dev == st.st_dev && a->ino == st.st_ino) {
            close(fd);
            *out = &a->seg;
            return 0;
        }
    a = calloc(1, sizeof(*a));
    if (!a)
        return ec_seterr(EC_ENOMEM, "result arena");
    if ((rc = ec_segment_map_fd(fd, &a->seg))) {
        free(a);
        return rc;
    }
    a->dev = st.st_dev;
    a->ino = st.st_ino;
    a->next = c->arenas;
    c->arenas = a;
    *out = &a->seg;
    return 0;
}

int ec_results_open(ec_client *c, const char *name, const ec_ns_opts *opts, ec_results **out)
{
    ec_ns_opts none = {0};
    const ec_ns_opts *o = opts ? opts : &none;
    ec_proto_ns_opts po;
    const ec_segment *seg;
    int fds[1], nfds = 0, rc;
    uint32_t slot = 0, gen = 0, priv = 0;
    ec_results *r;
    uint64_t salt = 0;
    ec_rbuf body;
    ec_wbuf w;
    uint32_t id;

    if (!c || !out)
        return ec_seterr(EC_EINVAL, "ec_results_open: no client or no output");
    if (!ec_ns_name_ok(name))
        return ec_seterr(EC_EINVAL, "bad namespace name \"%s\": 1 to %u of letters, digits, "
                                    "'.', '_', '-', ':'",
                         name ? name : "(null)", EC_NS_NAME_MAX);
    if ((o->bind_version && !o->bind_model) || (o->bind_model && !o->bind_version))
        return ec_seterr(EC_EINVAL, "namespace %s: bind_model and bind_version go together",
                         name);
    po = (ec_proto_ns_opts){.ttl_us = us_of(o->ttl), .stale_us = sus_of(o->stale_ttl),
                            .negative_ttl_us = us_of(o->negative_ttl),
                            .jitter_ppm = o->jitter < 0 ? -1 : (int64_t)(o->jitter * 1e6 + 0.5),
                            .lease_us = us_of(o->lease_time), .max_computing = o->max_computing,
                            .negative_max = o->negative_max};
    if (o->ttl < 0 || o->negative_ttl < 0 || o->lease_time < 0)
        return ec_seterr(EC_EINVAL, "namespace %s: ttl, negative_ttl and lease_time are >= 0",
                         name);
    pthread_mutex_lock(&c->lock);
    id = cl_begin(c, &w, EC_OP_NS_OPEN);
    ec_put_str(&w, name);
    ec_put_u32(&w, o->flags);
    ec_put_str(&w, o->bind_model);
    ec_put_str(&w, o->bind_version);
    ec_put_ns_opts(&w, &po);
    rc = cl_rpc(c, &w, id, NULL, 0, &body, fds, &nfds, 1);
    if (rc == 0) {
        slot = ec_get_u32(&body);
        salt = ec_get_u64(&body);
        gen = ec_get_u32(&body);
        priv = ec_get_u32(&body);
        if (!ec_rbuf_done(&body) || slot >= EC_NS_MAX || priv > 1 || (int)priv != nfds)
            rc = ec_seterr(EC_EPROTO, "malformed NS_OPEN reply");
    }
    (void)gen;
    seg = &c->seg;
    if (rc == 0 && nfds == 1) {
        rc = arena_of(c, fds[0], &seg);
        nfds = rc ? 1 : 0; /* arena_of keeps or closes it on success */
    }
    pthread_mutex_unlock(&c->lock);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    if (rc)
        return rc;
    r = calloc(1, sizeof(*r));
    if (!r)
        return ec_seterr(EC_ENOMEM, "namespace handle");
    r->c = c;
    r->slot = slot;
    r->salt = salt;
    r->seg = seg;
    r->private_ns = seg != &c->seg;
    snprintf(r->name, sizeof(r->name), "%s", name);
    for (unsigned k = 0; k < EC_SESSION_NS && !r->stat; k++) {
        ec_session_ns *st = &c->session->nsstat[k];
        uint32_t cur = atomic_load_explicit(&st->slot1, memory_order_relaxed), zero = 0;
        if (cur == slot + 1 ||
            (cur == 0 && atomic_compare_exchange_strong(&st->slot1, &zero, slot + 1)) ||
            zero == slot + 1)
            r->stat = st;
    }
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    *out = r;
    return 0;
}

void ec_results_close(ec_results *r)
{
    if (!r)
        return;
    cl_client_unref(r->c);
    free(r);
}

/* ------------------------------------------------------------------ */
/* Reads                                                               */

static void count(_Atomic uint64_t *ctr)
{
    atomic_fetch_add_explicit(ctr, 1, memory_order_relaxed);
}

/* Tell the daemon's eviction that a shared result was used (once per item
 * per thread while it stays the last one seen in its hash slot). */
static void hint(ec_results *r, uint64_t item_key, uint64_t off)
{
    static __thread uint32_t seen[256];
    ec_session_page *sp = r->c->session;
    uint64_t off8 = off / 8, h;
    uint32_t s = (uint32_t)((off8 * 0x9e3779b97f4a7c15ull) >> 56);
    ec_item_hash ih;

    if (r->private_ns || seen[s] == (uint32_t)off8)
        return;
    seen[s] = (uint32_t)off8;
    ec_item_hash_of(r->seg->item_buckets, item_key, &ih);
    h = atomic_fetch_add_explicit(&sp->ring_head, 1, memory_order_relaxed);
    atomic_store_explicit(&sp->ring[h % EC_SESSION_RING], EC_RING_ITEM_HINT(ih.tag, off8),
                          memory_order_relaxed);
}

static void meta_of(const ec_result_hdr *h, int state, int64_t now, ec_result_meta *m)
{
    memset(m, 0, sizeof(*m));
    m->state = state == EC_RESULT_FRESH ? EC_RES_FRESH : EC_RES_STALE;
    m->flags = h->flags & (EC_RES_NEGATIVE | EC_RES_TENSOR);
    m->len = h->value_len;
    m->ttl_left = (double)(h->fresh_until_ns - now) / 1e9;
    m->compute_us = h->compute_us;
    if (h->flags & EC_RESULT_TENSOR) {
        m->dtype = (ec_dtype)h->dtype;
        m->ndim = h->ndim <= EC_MAX_DIMS ? h->ndim : 0;
        for (uint32_t i = 0; i < m->ndim; i++)
            m->shape[i] = (int64_t)h->shape[i];
    }
}

/* One lookup: EC_RESULT_MISS/FRESH/STALE (stale ones whatever flags say),
 * EC_ETOOBIG (with *meta, when given, saying how large), or an error.
 * Counts nothing. */
static int lookup(ec_results *r, const void *key, size_t key_len, void *out, size_t cap,
                  ec_result_hdr *h, int64_t *now, ec_result_meta *meta)
{
    uint32_t gen;
    ec_result_key k;
    uint64_t off = 0;
    int rc, st;

    if ((rc = cl_stale(r->c)))
        return rc;
    gen = atomic_load_explicit(&r->c->seg.hdr->ns[r->slot].gen, memory_order_acquire);
    if (gen == 0)
        return ec_seterr(EC_ENOENT, "namespace %s was dropped; open it again", r->name);
    ec_result_key_of(r->salt, r->slot, key, key_len, &k);
    *now = mono_ns();
    st = ec_result_read_at(r->seg, &k, r->slot, gen, key, key_len, *now, out, cap, h, &off);
    if (st == EC_RESULT_FRESH || st == EC_RESULT_STALE)
        hint(r, k.item_key, off);
    if (st == EC_ETOOBIG && meta)
        meta_of(h, EC_RESULT_FRESH, *now, meta);
    return st;
}

/* Count a lookup's outcome and turn it into ec_results_get's answer. */
static int answer(ec_results *r, int st, uint32_t flags, const ec_result_hdr *h, int64_t now,
                  ec_result_meta *meta)
{
    ec_session_ns *c = r->stat;

    if (st == EC_RESULT_STALE && !(flags & EC_RES_ALLOW_STALE))
        st = EC_RESULT_MISS;
    if (st == EC_RESULT_MISS) {
        if (c)
            count(&c->misses);
        return 0;
    }
    if (c)
        count(st == EC_RESULT_STALE ? &c->stale
                                    : (h->flags & EC_RESULT_NEGATIVE) ? &c->negative_hits
                                                                      : &c->hits);
    if (meta)
        meta_of(h, st, now, meta);
    return 1;
}

int ec_results_get(ec_results *r, const void *key, size_t key_len, uint32_t flags, void *out,
                   size_t cap, ec_result_meta *meta)
{
    ec_result_hdr h;
    int64_t now = 0;
    int st, rc;

    if ((rc = key_ok(r, key, key_len)))
        return rc;
    if (!out && cap)
        return ec_seterr(EC_EINVAL, "ec_results_get: no output buffer for %zu bytes", cap);
    st = lookup(r, key, key_len, out, out ? cap : 0, &h, &now, meta);
    if (st < 0)
        return st;
    return answer(r, st, flags, &h, now, meta);
}

/* ------------------------------------------------------------------ */
/* Writes and leases                                                   */

static int put_value(ec_results *r, const void *key, size_t key_len, const ec_result_value *v,
                     uint32_t compute_us)
{
    ec_client *c = r->c;
    bool inl = v->len <= INLINE_MAX;
    int fd = -1, rc;
    ec_rbuf body;
    ec_wbuf w;
    uint32_t id;

    if (!inl) {
        /* Larger than a message: the value goes in a file of its own. */
        size_t done = 0;
        fd = memfd_create("embcache-result", MFD_CLOEXEC);
        if (fd < 0)
            return ec_seterr_errno(EC_EIO, errno, "memfd_create for a %zu-byte result", v->len);
        while (done < v->len) {
            ssize_t n = write(fd, (const uint8_t *)v->data + done, v->len - done);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                rc = ec_seterr_errno(EC_EIO, errno, "writing a %zu-byte result", v->len);
                close(fd);
                return rc;
            }
            done += (size_t)n;
        }
    }
    pthread_mutex_lock(&c->lock);
    id = cl_begin(c, &w, EC_OP_RES_PUT);
    ec_put_u32(&w, r->slot);
    ec_put_u32(&w, v->flags);
    ec_put_u64(&w, us_of(v->ttl));
    ec_put_u32(&w, compute_us);
    ec_put_u32(&w, (uint32_t)v->dtype);
    ec_put_u32(&w, (v->flags & EC_RES_TENSOR) ? v->ndim : 0);
    for (uint32_t i = 0; (v->flags & EC_RES_TENSOR) && i < v->ndim; i++)
        ec_put_u64(&w, (uint64_t)v->shape[i]);
    ec_put_bytes(&w, key, key_len);
    ec_put_u64(&w, v->len);
    ec_put_u32(&w, inl);
    if (inl && v->len) {
        if (ec_wbuf_room(&w) < v->len)
            w.overflow = true;
        else {
            memcpy(w.buf + w.len, v->data, v->len);
            w.len += v->len;
        }
    }
    rc = cl_rpc(c, &w, id, inl ? NULL : &fd, inl ? 0 : 1, &body, NULL, NULL, 0);
    pthread_mutex_unlock(&c->lock);
    if (fd >= 0)
        close(fd);
    return rc;
}

static int value_ok(const ec_result_value *v)
{
    if (!v)
        return ec_seterr(EC_EINVAL, "no value");
    if (v->flags & ~(uint32_t)(EC_RES_NEGATIVE | EC_RES_TENSOR))
        return ec_seterr(EC_EINVAL, "unknown value flags 0x%x", v->flags);
    if (!(v->flags & EC_RES_NEGATIVE) && v->len && !v->data)
        return ec_seterr(EC_EINVAL, "a value of %zu bytes without data", v->len);
    if ((v->flags & EC_RES_TENSOR) && v->ndim > EC_MAX_DIMS)
        return ec_seterr(EC_EINVAL, "a tensor value of %u dimensions (at most %d)", v->ndim,
                         EC_MAX_DIMS);
    if (v->ttl < 0)
        return ec_seterr(EC_EINVAL, "a negative TTL");
    return 0;
}

static int size_ok(size_t key_len, size_t len)
{
    if (!ec_result_record_bytes(key_len, len))
        return ec_seterr(EC_ETOOBIG, "a result of %zu key bytes and %zu value bytes does not "
                                     "fit in one item (about 1 MiB with its header)",
                         key_len, len);
    return 0;
}

int ec_results_put(ec_results *r, const void *key, size_t key_len, const ec_result_value *v)
{
    ec_result_value neg;
    int rc;

    if ((rc = key_ok(r, key, key_len)) || (rc = value_ok(v)) ||
        (rc = size_ok(key_len, (v->flags & EC_RES_NEGATIVE) ? 0 : v->len)))
        return rc;
    if (v->flags & EC_RES_NEGATIVE) {
        neg = *v;
        neg.len = 0;
        neg.data = NULL;
        v = &neg;
    }
    return put_value(r, key, key_len, v, v->compute_us);
}

static int key_request(ec_results *r, uint16_t op, uint32_t flags, bool with_flags,
                       const void *key, size_t key_len, int64_t seen, uint64_t *u)
{
    ec_client *c = r->c;
    ec_rbuf body;
    ec_wbuf w;
    uint32_t id;
    int rc;

    pthread_mutex_lock(&c->lock);
    id = cl_begin(c, &w, op);
    ec_put_u32(&w, r->slot);
    if (with_flags)
        ec_put_u32(&w, flags);
    ec_put_bytes(&w, key, key_len);
    if (op == EC_OP_RES_LEASE)
        ec_put_i64(&w, seen);
    rc = cl_rpc(c, &w, id, NULL, 0, &body, NULL, NULL, 0);
    if (rc == 0 && op == EC_OP_RES_LEASE) {
        *u = ec_get_u32(&body);
        if (!ec_rbuf_done(&body) || *u < EC_LEASE_GRANTED || *u > EC_LEASE_STALE)
            rc = ec_seterr(EC_EPROTO, "malformed RES_LEASE reply");
    } else if (rc == 0 && op == EC_OP_RES_PURGE) {
        *u = ec_get_u64(&body);
        if (!ec_rbuf_done(&body))
            rc = ec_seterr(EC_EPROTO, "malformed RES_PURGE reply");
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int lease(ec_results *r, const void *key, size_t key_len, uint32_t flags, int64_t seen)
{
    uint64_t ans = 0;
    int rc;

    if ((rc = key_ok(r, key, key_len)))
        return rc;
    if (flags & ~(uint32_t)(EC_RES_ALLOW_STALE | EC_RES_EARLY))
        return ec_seterr(EC_EINVAL, "unknown lease flags 0x%x", flags);
    rc = key_request(r, EC_OP_RES_LEASE, flags, true, key, key_len, seen, &ans);
    return rc ? rc : (int)ans;
}

int ec_results_lease(ec_results *r, const void *key, size_t key_len, uint32_t flags)
{
    return lease(r, key, key_len, flags, 0);
}

int ec_results_release(ec_results *r, const void *key, size_t key_len)
{
    int rc;

    if ((rc = key_ok(r, key, key_len)))
        return rc;
    return key_request(r, EC_OP_RES_RELEASE, 0, false, key, key_len, 0, NULL);
}

int ec_results_purge(ec_results *r, const void *key, size_t key_len, uint64_t *removed)
{
    uint64_t n = 0;
    int rc;

    if ((rc = key_ok(r, key, key_len)))
        return rc;
    rc = key_request(r, EC_OP_RES_PURGE, key ? 0 : 1, true, key, key_len, 0, &n);
    if (rc == 0 && removed)
        *removed = n;
    return rc;
}

/* Sleep on the namespace's wake word while it still holds `seen`. */
static int wait_word(ec_results *r, uint32_t seen, int64_t ns)
{
    _Atomic uint32_t *word = &r->c->seg.hdr->ns[r->slot].wake;
    struct timespec ts = {.tv_sec = ns / 1000000000ll, .tv_nsec = ns % 1000000000ll};

    if (ns <= 0)
        return EC_ETIMEOUT;
    if (syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, seen, &ts, NULL, 0) < 0 &&
        errno == ETIMEDOUT)
        return EC_ETIMEOUT;
    return 0;
}

int ec_results_wait(ec_results *r, double timeout)
{
    uint32_t seen;

    if (!r || timeout < 0)
        return ec_seterr(EC_EINVAL, "ec_results_wait: no handle or a negative timeout");
    seen = atomic_load_explicit(&r->c->seg.hdr->ns[r->slot].wake, memory_order_acquire);
    if (wait_word(r, seen, (int64_t)(timeout * 1e9)) == EC_ETIMEOUT)
        return ec_seterr(EC_ETIMEOUT, "nothing stored in namespace %s for %.3f s", r->name,
                         timeout);
    return 0;
}

int ec_results_drop(ec_client *c, const char *name)
{
    ec_rbuf body;
    ec_wbuf w;
    uint32_t id;
    int rc;

    if (!c || !ec_ns_name_ok(name))
        return ec_seterr(EC_EINVAL, "ec_results_drop: no client or a bad namespace name");
    pthread_mutex_lock(&c->lock);
    id = cl_begin(c, &w, EC_OP_NS_DROP);
    ec_put_str(&w, name);
    rc = cl_rpc(c, &w, id, NULL, 0, &body, NULL, NULL, 0);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Compute once                                                        */

/* Run fn under the caller's lease, store its value, and copy it out. */
static int compute(ec_results *r, const void *key, size_t key_len, ec_compute_fn fn, void *arg,
                   void *out, size_t cap, ec_result_meta *meta)
{
    ec_result_value v;
    int64_t t0 = mono_ns(), took;
    int rc;

    memset(&v, 0, sizeof(v));
    rc = fn(arg, key, key_len, &v);
    took = mono_ns() - t0;
    if (rc == 0)
        rc = value_ok(&v);
    if (rc == 0)
        rc = size_ok(key_len, (v.flags & EC_RES_NEGATIVE) ? 0 : v.len);
    if (rc) {
        int saved = rc;
        char msg[EC_ERRMSG_MAX];
        snprintf(msg, sizeof(msg), "%s", ec_last_error());
        (void)ec_results_release(r, key, key_len);
        ec_seterr(saved < 0 ? saved : EC_EINVAL, "%s", msg[0] ? msg : "the computation failed");
        return saved;
    }
    if (v.flags & EC_RES_NEGATIVE) {
        v.len = 0;
        v.data = NULL;
    }
    rc = put_value(r, key, key_len, &v,
                   v.compute_us ? v.compute_us
                                : (uint32_t)(took / 1000 > UINT32_MAX ? UINT32_MAX
                                                                       : took / 1000 + 1));
    if (rc) {
        (void)ec_results_release(r, key, key_len);
        return rc;
    }
    if (meta) {
        memset(meta, 0, sizeof(*meta));
        meta->state = EC_RES_FRESH;
        meta->flags = v.flags & (EC_RES_NEGATIVE | EC_RES_TENSOR);
        meta->len = v.len;
        meta->dtype = v.dtype;
        meta->ndim = (v.flags & EC_RES_TENSOR) ? v.ndim : 0;
        memcpy(meta->shape, v.shape, sizeof(meta->shape));
        meta->compute_us = (uint32_t)(took / 1000);
    }
    if (v.len > cap)
        return ec_seterr(EC_ETOOBIG, "the computed result of %zu bytes does not fit in %zu "
                                     "(it is stored: read it with ec_results_get)",
                         v.len, cap);
    if (v.len)
        memcpy(out, v.data, v.len);
    if (r->stat)
        count(&r->stat->misses);
    return 1;
}

/* XFetch (Vattani et al., VLDB 2015): recompute early with probability
 * rising as expiry nears, the sooner the longer a computation takes. */
static bool refresh_early(const ec_result_hdr *h, int64_t now, double beta)
{
    static __thread uint64_t x;
    double u, gap;

    if (!h->compute_us || (h->flags & EC_RESULT_NEGATIVE))
        return false;
    if (!x)
        x = (uint64_t)now ^ ((uint64_t)(uintptr_t)&x << 16) ^ 0x9e3779b97f4a7c15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    u = ((double)(x >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    gap = (double)h->compute_us * 1e3 * beta * -log(u);
    return (double)now + gap >= (double)h->fresh_until_ns;
}

int ec_results_get_or_compute(ec_results *r, const void *key, size_t key_len,
                              const ec_compute_opts *opts, ec_compute_fn fn, void *arg,
                              void *out, size_t cap, ec_result_meta *meta)
{
    ec_compute_opts none = {0};
    const ec_compute_opts *o = opts ? opts : &none;
    double beta = o->beta > 0 ? o->beta : 1.0;
    bool stale_ok = o->flags & EC_RES_ALLOW_STALE;
    int64_t deadline, now = mono_ns();
    ec_result_hdr h;
    int rc, st, found = 0;

    if ((rc = key_ok(r, key, key_len)))
        return rc;
    if (!fn || (!out && cap))
        return ec_seterr(EC_EINVAL, "ec_results_get_or_compute: no function or no output");
    if (o->flags & ~(uint32_t)(EC_RES_ALLOW_STALE | EC_RES_NO_EARLY) || o->wait < 0)
        return ec_seterr(EC_EINVAL, "ec_results_get_or_compute: bad options");
    /* 0: 60 s, twice the default lease time (the daemon passes overrun leases on). */
    deadline = now + (int64_t)((o->wait > 0 ? o->wait : 60.0) * 1e9);
    for (;;) {
        uint32_t seen = atomic_load_explicit(&r->c->seg.hdr->ns[r->slot].wake,
                                             memory_order_acquire);
        int ans;

        st = lookup(r, key, key_len, out, out ? cap : 0, &h, &now, meta);
        if (st < 0)
            return st;
        if (st == EC_RESULT_FRESH) {
            if (!(o->flags & EC_RES_NO_EARLY) && refresh_early(&h, now, beta) &&
                lease(r, key, key_len, EC_RES_EARLY, h.fresh_until_ns) == EC_LEASE_GRANTED) {
                rc = compute(r, key, key_len, fn, arg, out, cap, meta);
                if (rc != EC_ETOOBIG && rc < 0) {
                    /* The refresh failed: the value read is still fresh. */
                    st = lookup(r, key, key_len, out, cap, &h, &now, NULL);
                    return st == EC_RESULT_FRESH ? answer(r, st, 0, &h, now, meta) : rc;
                }
                return rc;
            }
            return answer(r, st, 0, &h, now, meta);
        }
        if (st == EC_RESULT_STALE && stale_ok && found) {
            /* Told to read the stale value while another refreshes it. */
            return answer(r, st, EC_RES_ALLOW_STALE, &h, now, meta);
        }
        ans = ec_results_lease(r, key, key_len, stale_ok ? EC_RES_ALLOW_STALE : 0);
        if (ans < 0)
            return ans;
        if (ans == EC_LEASE_GRANTED)
            return compute(r, key, key_len, fn, arg, out, cap, meta);
        if (ans == EC_LEASE_STALE) {
            found = 1;
            continue;
        }
        if (ans == EC_LEASE_FOUND)
            continue; /* stored meanwhile: read it */
        /* WAIT: another process computes it. */
        now = mono_ns();
        if (now >= deadline)
            return ec_seterr(EC_ETIMEOUT, "waited %.3f s for another caller's computation of "
                                          "a key of namespace %s",
                             o->wait > 0 ? o->wait : 60.0, r->name);
        (void)wait_word(r, seen,
                        deadline - now < WAIT_SLICE_NS ? deadline - now : WAIT_SLICE_NS);
    }
}

/* ------------------------------------------------------------------ */
/* Listing                                                             */

int ec_results_list(ec_client *c, ec_ns_cb cb, void *arg)
{
    uint32_t cursor = 0;

    if (!c || !cb)
        return ec_seterr(EC_EINVAL, "ec_results_list: no client or callback");
    do {
        ec_proto_ns *recs = NULL;
        uint32_t n = 0, next = 0;
        ec_rbuf body;
        ec_wbuf w;
        uint32_t id;
        int rc;

        pthread_mutex_lock(&c->lock);
        id = cl_begin(c, &w, EC_OP_NS_LIST);
        ec_put_u32(&w, cursor);
        rc = cl_rpc(c, &w, id, NULL, 0, &body, NULL, NULL, 0);
        if (rc == 0) {
            next = ec_get_u32(&body);
            n = ec_get_u32(&body);
            if (body.bad || n > EC_NS_MAX || (next && next <= cursor))
                rc = ec_seterr(EC_EPROTO, "malformed NS_LIST reply");
            else if (n && !(recs = calloc(n, sizeof(*recs))))
                rc = ec_seterr(EC_ENOMEM, "namespace listing");
            for (uint32_t i = 0; rc == 0 && i < n; i++)
                rc = ec_get_ns(&body, &recs[i]);
            if (rc == 0 && !ec_rbuf_done(&body))
                rc = ec_seterr(EC_EPROTO, "malformed NS_LIST reply");
        }
        pthread_mutex_unlock(&c->lock);
        for (uint32_t i = 0; rc == 0 && i < n; i++) {
            const ec_proto_ns *p = &recs[i];
            const uint64_t *k = p->counters;
            ec_ns_info info = {
                .name = p->name, .owner_uid = p->owner_uid, .flags = p->flags,
                .bind_model = p->bind_model, .bind_version = p->bind_version,
                .bound_version = p->bound_version, .generation = p->generation,
                .ttl = (double)p->opts.ttl_us / 1e6,
                .stale_ttl = p->opts.stale_us < 0 ? -1 : (double)p->opts.stale_us / 1e6,
                .negative_ttl = (double)p->opts.negative_ttl_us / 1e6,
                .jitter = p->opts.jitter_ppm < 0 ? 0 : (double)p->opts.jitter_ppm / 1e6,
                .lease_time = (double)p->opts.lease_us / 1e6,
                .max_computing = p->opts.max_computing, .negative_max = p->opts.negative_max,
                .items = k[0], .negative_items = k[1], .bytes = k[2], .hits = k[3],
                .misses = k[4], .negative_hits = k[5], .stale_served = k[6],
                .leases_granted = k[7], .leases_waited = k[8], .leases_passed = k[9],
                .early_refreshes = k[10], .computing = k[11], .computing_peak = k[12],
                .limited = k[13], .puts = k[14], .negative_puts = k[15], .evictions = k[16],
                .purged = k[17], .invalidations = k[18]};
            rc = cb(&info, arg);
        }
        free(recs);
        if (rc)
            return rc;
        cursor = next;
    } while (cursor);
    return 0;
}
