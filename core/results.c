/*
 * results.c - the cache manager's namespaces, bindings, leases and writes
 * (core/results.h says what it owns and who calls it).
 *
 * A lease is the right to compute one key: the first miss gets it, later
 * ones are told to wait (or to read the stale value) until the holder puts
 * the value, releases the lease, closes its connection or overruns the
 * namespace's lease time; then the namespace's wake word in the segment
 * header moves and the waiters, asleep on it, ask again: the first to ask
 * gets the lease. The daemon keeps no queue of waiters, so a waiter that
 * goes away costs nothing.
 *
 * A namespace bound to (model, version or alias) is checked whenever the
 * catalog changes: when the binding leads to another version (or none),
 * the namespace's generation moves in the segment header first (from then
 * on no reader takes an older record), then its records are dropped.
 */
#include "core/results_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/dtype.h"
#include "common/err.h"
#include "common/hash.h"
#include "common/log.h"
#include "shm/items.h"
#include "shm/results.h"

#define DEF_TTL_US 300000000ull
#define DEF_STALE_US 60000000ll
#define DEF_NEG_TTL_US 30000000ull
#define DEF_JITTER_PPM 100000ll
#define DEF_LEASE_US 30000000ull
#define DEF_MAX_COMPUTING 64u
#define DEF_NEGATIVE_MAX 65536ull
#define MAX_TTL_US (10ull * 365 * 86400 * 1000000)
#define MAX_COMPUTING_LIMIT (1u << 20)
#define MAX_NEGATIVE (1ull << 24)
#define DEF_ARENA_BYTES (64ull << 20)
#define NS_PER_UID (EC_NS_MAX / 4)    /* namespaces one uid but an administrator's may own */

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static uint64_t rnd(ec_resmgr *m)
{
    m->rng = m->rng * 6364136223846793005ull + 1442695040888963407ull;
    return ec_mix64(m->rng);
}

static void wake(ec_resmgr *m, uint32_t slot)
{
    _Atomic uint32_t *w = &m->seg->hdr->ns[slot].wake;

    atomic_fetch_add_explicit(w, 1, memory_order_release);
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

static void publish_gen(ec_resmgr *m, uint32_t slot, uint32_t gen)
{
    atomic_store_explicit(&m->seg->hdr->ns[slot].gen, gen, memory_order_release);
}

void rm_wake(ec_resmgr *m, uint32_t slot)
{
    wake(m, slot);
}

/* ------------------------------------------------------------------ */
/* Settings                                                            */

/* The effective settings: a 0 is the default. */
static void fill_defaults(ec_catalog_ns *c, const ec_proto_ns_opts *o)
{
    c->ttl_us = o->ttl_us ? o->ttl_us : DEF_TTL_US;
    c->stale_us = o->stale_us ? (o->stale_us < 0 ? -1 : o->stale_us) : DEF_STALE_US;
    c->negative_ttl_us = o->negative_ttl_us ? o->negative_ttl_us : DEF_NEG_TTL_US;
    c->jitter_ppm = o->jitter_ppm ? (o->jitter_ppm < 0 ? -1 : o->jitter_ppm) : DEF_JITTER_PPM;
    c->lease_us = o->lease_us ? o->lease_us : DEF_LEASE_US;
    c->max_computing = o->max_computing ? o->max_computing : DEF_MAX_COMPUTING;
    c->negative_max = o->negative_max ? o->negative_max : DEF_NEGATIVE_MAX;
}

static int check_opts(const char *name, const ec_proto_ns_opts *o)
{
    if (o->ttl_us > MAX_TTL_US || o->negative_ttl_us > MAX_TTL_US || o->lease_us > MAX_TTL_US ||
        o->stale_us > (int64_t)MAX_TTL_US)
        return ec_seterr(EC_EINVAL, "namespace %s: a TTL or lease time over 10 years", name);
    if (o->jitter_ppm > 500000)
        return ec_seterr(EC_EINVAL, "namespace %s: jitter %.3f is over 0.5 of the TTL", name,
                         (double)o->jitter_ppm / 1e6);
    if (o->max_computing > MAX_COMPUTING_LIMIT || o->negative_max > MAX_NEGATIVE)
        return ec_seterr(EC_EINVAL, "namespace %s: max_computing %u or negative_max %" PRIu64
                                    " over the limit (%u, %llu)",
                         name, o->max_computing, o->negative_max, MAX_COMPUTING_LIMIT,
                         (unsigned long long)MAX_NEGATIVE);
    return 0;
}

/* The version a binding leads to now; 0 when it leads nowhere. */
static int64_t bound_version(ec_resmgr *m, const ec_catalog_ns *c)
{
    int64_t v = 0;

    if (!c->bind_model[0] || ec_catalog_version_of(m->cat, c->bind_model, c->bind_version, &v))
        return 0;
    return v;
}

/* ------------------------------------------------------------------ */
/* Records                                                             */

static struct rns *ns_at(ec_resmgr *m, uint32_t slot)
{
    return slot < EC_NS_MAX && m->ns[slot].live ? &m->ns[slot] : NULL;
}

struct rns *rm_ns_at(ec_resmgr *m, uint32_t slot)
{
    return ns_at(m, slot);
}

static bool key_in_slot(uint64_t key, void *arg)
{
    return EC_ITEM_KEY_KIND(key) == EC_ITEM_KIND_RESULT &&
           EC_RESULT_KEY_NS(key) == *(const uint32_t *)arg;
}

/* Drop every record of the namespace. */
static uint64_t drop_records(ec_resmgr *m, struct rns *ns)
{
    uint32_t slot = ns->cat.slot;
    uint64_t n = 0;

    if (!ns->store || !ns->store->items)
        return 0;
    m->removing = true;
    n = ec_items_drop(ns->store->items, key_in_slot, &slot);
    m->removing = false;
    ns->negq_len = ns->negq_head = 0;
    return n;
}

/* A new generation: readers stop taking the old records at once, then they
 * go. Persisted first, so a restart cannot bring the old one back. */
static int new_generation(ec_resmgr *m, struct rns *ns, const char *why)
{
    uint32_t gen = ns->cat.generation + 1;
    uint64_t n;
    int rc;

    if (gen == 0)
        gen = 1;
    ns->cat.generation = gen;
    rc = ec_catalog_ns_put(m->cat, &ns->cat);
    publish_gen(m, ns->cat.slot, gen);
    n = drop_records(m, ns);
    ns->invalidations++;
    ec_info("namespace %s: generation %u (%s): %" PRIu64 " results dropped", ns->cat.name, gen,
            why, n);
    wake(m, ns->cat.slot);
    return rc;
}

static bool may_use(const struct rns *ns, const ec_res_peer *p)
{
    return (ns->cat.flags & EC_NS_SHARED) || ns->cat.owner_uid == (uint32_t)p->uid;
}

static bool may_manage(const struct rns *ns, const ec_res_peer *p)
{
    return p->admin || ns->cat.owner_uid == (uint32_t)p->uid;
}

static int use_check(ec_resmgr *m, const ec_res_peer *p, uint32_t slot, struct rns **out)
{
    struct rns *ns = ns_at(m, slot);

    if (!ns)
        return ec_seterr(EC_ENOENT, "no namespace in slot %u (it was dropped): open it again",
                         slot);
    if (!may_use(ns, p))
        return ec_seterr(EC_EPERM, "namespace %s belongs to uid %u and is not shared",
                         ns->cat.name, ns->cat.owner_uid);
    *out = ns;
    return 0;
}

static int key_check(const void *key, size_t key_len)
{
    if ((!key && key_len) || key_len > EC_RESULT_KEY_MAX)
        return ec_seterr(EC_EINVAL, "a result key of %zu bytes (at most %u)", key_len,
                         EC_RESULT_KEY_MAX);
    return 0;
}

/* What is stored under key now (EC_RESULT_MISS/FRESH/STALE). */
static int peek(ec_resmgr *m, struct rns *ns, const void *key, size_t key_len, int64_t now,
                ec_result_key *k, ec_result_hdr *h)
{
    ec_result_key_of(ns->cat.salt, ns->cat.slot, key, key_len, k);
    (void)m;
    return ec_result_read(ns->store->seg, k, ns->cat.slot, ns->cat.generation, key, key_len,
                          now, NULL, 0, h);
}

int rm_peek(ec_resmgr *m, struct rns *ns, const void *key, size_t key_len)
{
    ec_result_key k;
    ec_result_hdr h;

    return peek(m, ns, key, key_len, now_ns(), &k, &h);
}

/* ------------------------------------------------------------------ */
/* Leases                                                              */

static void lease_end(ec_resmgr *m, struct lease *l)
{
    struct rns *ns = &m->ns[l->slot];

    ec_u64map_del(&m->leases, l->item_key);
    if (m->rr && l->remote != RL_LOCAL)
        rr_lease_ended(m, l); /* the cluster's side of it */
    if (ns->computing && !l->uncounted)
        ns->computing--;
    free(l->lkey);
    free(l);
}

void rm_lease_end(ec_resmgr *m, struct lease *l)
{
    lease_end(m, l);
}

/* Say and count that a lease was held past its namespace's lease time
 * (it passes on). */
static void count_overrun(ec_resmgr *m, uint32_t slot)
{
    struct rns *ns = &m->ns[slot];

    ec_warn("namespace %s: a lease held past its %.3f s passes on", ns->cat.name,
            (double)ns->cat.lease_us / 1e6);
    m->st.lease_timeouts++;
    ns->leases_passed++;
}

/* End every lease `ends` accepts (it may count why), then wake the
 * namespaces whose leases ended, so their waiters ask again. */
static void leases_end_if(ec_resmgr *m, bool (*ends)(ec_resmgr *m, const struct lease *l,
                                                     const void *arg),
                          const void *arg)
{
    uint32_t woke[EC_NS_MAX / 32 + 1] = {0};

    for (size_t i = 0; i < m->leases.cap;) {
        struct lease *l = m->leases.vals[i];
        if (!m->leases.keys[i] || !ends(m, l, arg)) {
            i++;
            continue;
        }
        /* Backward-shift deletion may move a later entry into slot i: look
         * at i again. */
        woke[l->slot / 32] |= 1u << (l->slot % 32);
        lease_end(m, l);
    }
    for (uint32_t s = 0; s < EC_NS_MAX; s++)
        if (woke[s / 32] & (1u << (s % 32)))
            wake(m, s);
}

/* A namespace bound to a version that no longer exists takes no leases and
 * no results: they would be of no version. */
static int binding_check(const struct rns *ns)
{
    if (ns->cat.bind_model[0] && !ns->cat.bound_version)
        return ec_seterr(EC_ENOENT, "namespace %s is bound to %s/%s, which does not exist (any "
                                    "more): its results would be of no version; bind it again",
                         ns->cat.name, ns->cat.bind_model, ns->cat.bind_version);
    return 0;
}

static int lease_grant(ec_resmgr *m, struct rns *ns, const ec_res_peer *p, uint64_t item_key,
                       int64_t now)
{
    struct lease *l = calloc(1, sizeof(*l));

    if (!l || ec_u64map_put(&m->leases, item_key, l)) {
        free(l);
        return ec_seterr(EC_ENOMEM, "lease");
    }
    l->item_key = item_key;
    l->owner = p->owner;
    l->slot = ns->cat.slot;
    l->deadline_ns = now + (int64_t)ns->cat.lease_us * 1000;
    l->granted_ns = now;
    l->serial = ++m->lease_serial;
    ns->leases_granted++;
    if (++ns->computing > ns->computing_peak)
        ns->computing_peak = ns->computing;
    return EC_LEASE_GRANTED;
}

/* A miss that would get the lease: in a remote namespace (with a way to
 * answer later), the cluster is asked first, once per key at a time. */
static int lease_or_ask(ec_resmgr *m, struct rns *ns, const ec_res_peer *p, uint64_t item_key,
                        int64_t now, const void *key, size_t key_len, uint32_t flags,
                        int64_t fresh_until, uint64_t token)
{
    struct lease *l;
    int rc;

    if (!m->rr || !token || !(ns->cat.flags & EC_NS_REMOTE))
        return lease_grant(m, ns, p, item_key, now);
    if (rr_busy(m, item_key)) {
        /* An earlier request for it is still out (its asker went): its
         * answer wakes the namespace. An early refresh is not needed. */
        if (flags & EC_RES_EARLY)
            return EC_LEASE_FOUND;
        ns->leases_waited++;
        return EC_LEASE_WAIT;
    }
    if ((rc = lease_grant(m, ns, p, item_key, now)) != EC_LEASE_GRANTED)
        return rc;
    l = ec_u64map_get(&m->leases, item_key);
    l->remote = RL_PENDING;
    ns->leases_granted--; /* counted when it is granted indeed */
    if (rr_ask(m, ns, l, key, key_len, flags, fresh_until, p->owner, token)) {
        l->remote = RL_LOCAL;
        ns->leases_granted++;
        return EC_LEASE_GRANTED;
    }
    return EC_LEASE_DEFERRED;
}

int ec_resmgr_lease(ec_resmgr *m, const ec_res_peer *p, uint32_t slot, uint32_t flags,
                    const void *key, size_t key_len, int64_t seen, uint64_t token)
{
    ec_result_hdr h;
    int64_t now = now_ns();
    bool stale_ok = flags & EC_RES_ALLOW_STALE;
    struct lease *l;
    struct rns *ns = NULL;
    ec_result_key k;
    int rc, state;

    if ((rc = use_check(m, p, slot, &ns)) || (rc = key_check(key, key_len)))
        return rc;
    if (flags & ~(uint32_t)(EC_RES_ALLOW_STALE | EC_RES_EARLY))
        return ec_seterr(EC_EINVAL, "unknown lease flags 0x%x", flags);
    if ((rc = binding_check(ns)))
        return rc;
    state = peek(m, ns, key, key_len, now, &k, &h);
    l = ec_u64map_get(&m->leases, k.item_key);
    if (l && l->deadline_ns <= now) {
        count_overrun(m, l->slot); /* the lease passes to this caller */
        lease_end(m, l);
        l = NULL;
    }
    if (state == EC_RESULT_FRESH) {
        /* An early refresh of the value the caller saw, by one caller: a
         * value refreshed since (another fresh_until) is not refreshed again. */
        if (!(flags & EC_RES_EARLY) || l || ns->computing >= ns->cat.max_computing ||
            (seen && seen != h.fresh_until_ns))
            return EC_LEASE_FOUND;
        ns->early_refreshes++;
        return lease_or_ask(m, ns, p, k.item_key, now, key, key_len, flags,
                            h.fresh_until_ns - now, token);
    }
    if (l || ns->computing >= ns->cat.max_computing) {
        if (!l)
            ns->limited++;
        if (state == EC_RESULT_STALE && stale_ok) {
            ns->stale++;
            return EC_LEASE_STALE;
        }
        ns->leases_waited++;
        return EC_LEASE_WAIT;
    }
    return lease_or_ask(m, ns, p, k.item_key, now, key, key_len, flags, 0, token);
}

int ec_resmgr_release(ec_resmgr *m, const ec_res_peer *p, uint32_t slot, const void *key,
                      size_t key_len)
{
    struct rns *ns = NULL;
    struct lease *l;
    ec_result_key k;
    int rc;

    if ((rc = use_check(m, p, slot, &ns)) || (rc = key_check(key, key_len)))
        return rc;
    ec_result_key_of(ns->cat.salt, slot, key, key_len, &k);
    l = ec_u64map_get(&m->leases, k.item_key);
    if (!l || l->owner != p->owner)
        return 0; /* passed on already */
    lease_end(m, l);
    ns->leases_passed++;
    wake(m, slot);
    return 0;
}

static bool held_by(ec_resmgr *m, const struct lease *l, const void *arg)
{
    if (l->owner != *(const uint64_t *)arg)
        return false;
    m->ns[l->slot].leases_passed++;
    m->st.owner_leases_passed++;
    return true;
}

void ec_resmgr_owner_close(ec_resmgr *m, uint64_t owner)
{
    if (m->rr)
        rr_owner_close(m, owner);
    leases_end_if(m, held_by, &owner);
}

/* ------------------------------------------------------------------ */
/* Writes                                                              */

static int read_value_fd(ec_resmgr *m, int fd, uint64_t len)
{
    uint64_t got = 0;
    struct stat st;

    /* Only a memfd: a file that cannot block the server thread (a FIFO, a
     * FUSE file, a device) and holds what the client wrote. */
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || fcntl(fd, F_GET_SEALS) < 0)
        return ec_seterr(EC_EINVAL, "a result value must come in a memfd (memfd_create), "
                                    "not another kind of file");
    if ((uint64_t)st.st_size < len)
        return ec_seterr(EC_EINVAL, "a result value's memfd holds %lld bytes, the request "
                                    "said %" PRIu64,
                         (long long)st.st_size, len);

    while (got < len) {
        ssize_t n = pread(fd, m->scratch + got, len - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return ec_seterr_errno(EC_EIO, errno, "reading a result value from its file");
        if (n == 0)
            return ec_seterr(EC_EINVAL, "a result value's file holds %" PRIu64
                                        " bytes, the request said %" PRIu64,
                             got, len);
        got += (uint64_t)n;
    }
    return 0;
}

static int value_check(const ec_res_put *v)
{
    uint64_t n = 1;
    size_t es;

    if (v->flags & ~(uint32_t)(EC_RES_NEGATIVE | EC_RES_TENSOR))
        return ec_seterr(EC_EINVAL, "unknown result flags 0x%x", v->flags);
    if ((v->flags & EC_RES_NEGATIVE) && (v->value_len || (v->flags & EC_RES_TENSOR)))
        return ec_seterr(EC_EINVAL, "a \"no result\" entry has no value");
    if (v->ttl_us > MAX_TTL_US)
        return ec_seterr(EC_EINVAL, "a TTL over 10 years");
    if (!(v->flags & EC_RES_TENSOR))
        return 0;
    es = ec_dtype_size((ec_dtype)v->dtype);
    if (!es || v->ndim > EC_MAX_DIMS)
        return ec_seterr(EC_EINVAL, "a result tensor of dtype %u and %u dimensions", v->dtype,
                         v->ndim);
    for (uint32_t i = 0; i < v->ndim; i++) {
        if (v->shape[i] && n > UINT64_MAX / v->shape[i])
            return ec_seterr(EC_EINVAL, "a result tensor's shape overflows");
        n *= v->shape[i];
    }
    if (n > UINT64_MAX / es || n * es != v->value_len)
        return ec_seterr(EC_EINVAL, "a result tensor's shape makes %" PRIu64
                                    " elements of %zu bytes, but its value has %" PRIu64 " bytes",
                         n, es, v->value_len);
    return 0;
}

/* Make room for one more "no result" entry: the oldest live ones go. */
static void negative_room(ec_resmgr *m, struct rns *ns)
{
    while (ns->negative_items >= ns->cat.negative_max && ns->negq_len) {
        uint64_t key = ns->negq[ns->negq_head];
        ns->negq_head = (ns->negq_head + 1) % ns->negq_cap;
        ns->negq_len--;
        if (!ec_u64map_get(&m->negative, key))
            continue;
        m->removing = true;
        if (!ec_items_remove_key(ns->store->items, key, NULL)) {
            /* Not in the store (gone without a word): forget it. */
            ec_u64map_del(&m->negative, key);
            if (ns->negative_items)
                ns->negative_items--;
        }
        m->removing = false;
    }
}

static void negative_push(struct rns *ns, uint64_t key)
{
    size_t cap = ns->negq_cap;

    if (ns->negq_len == cap) {
        size_t ncap = cap ? cap * 2 : 1024;
        uint64_t *q;
        if (ncap > 2 * ns->cat.negative_max + 1024) {
            /* Full of entries that went: drop the oldest. */
            ns->negq_head = (ns->negq_head + 1) % cap;
            ns->negq_len--;
        } else if ((q = malloc(ncap * sizeof(*q)))) {
            for (size_t i = 0; i < ns->negq_len; i++)
                q[i] = ns->negq[(ns->negq_head + i) % cap];
            free(ns->negq);
            ns->negq = q;
            ns->negq_cap = ncap;
            ns->negq_head = 0;
        } else {
            return; /* out of memory: the entry is not capped, only counted */
        }
    }
    ns->negq[(ns->negq_head + ns->negq_len) % ns->negq_cap] = key;
    ns->negq_len++;
}

static int64_t jittered(ec_resmgr *m, const struct rns *ns, uint64_t ttl_us)
{
    double j = ns->cat.jitter_ppm > 0 ? (double)ns->cat.jitter_ppm / 1e6 : 0;
    double u = (double)(rnd(m) >> 11) / 9007199254740992.0; /* [0, 1) */

    return (int64_t)((double)ttl_us * 1000.0 * (1.0 + j * (2 * u - 1)));
}

int ec_resmgr_put(ec_resmgr *m, const ec_res_peer *p, uint32_t slot, const void *key,
                  size_t key_len, const ec_res_put *v)
{
    bool negative = v->flags & EC_RES_NEGATIVE;
    int64_t now = now_ns(), fresh;
    const void *value = v->value;
    uint64_t need, cls, off;
    ec_result_hdr h;
    struct lease *l;
    struct rns *ns = NULL;
    ec_result_key k;
    int rc;

    if ((rc = use_check(m, p, slot, &ns)) || (rc = key_check(key, key_len)) ||
        (rc = value_check(v)))
        goto fail;
    if ((rc = binding_check(ns)))
        goto fail;
    need = ec_result_record_bytes(key_len, v->value_len);
    cls = ec_result_class_bytes(need);
    if (!need || !cls) {
        rc = ec_seterr(EC_ETOOBIG, "a result of %zu key bytes and %" PRIu64 " value bytes does "
                                   "not fit in one item (about %u bytes with its header)",
                       key_len, v->value_len, (unsigned)EC_ITEM_VALUE_MAX);
        goto fail;
    }
    if (!ns->store || !ns->store->items) {
        rc = ec_seterr(EC_ENOSPC, "the segment has no item store: start embcached with an "
                                  "item index to cache results");
        goto fail;
    }
    if (v->fd >= 0) {
        if ((rc = read_value_fd(m, v->fd, v->value_len)))
            goto fail;
        value = m->scratch;
    } else if (v->value_len && !value) {
        rc = ec_seterr(EC_EINVAL, "a result value without bytes");
        goto fail;
    }
    ec_result_key_of(ns->cat.salt, slot, key, key_len, &k);
    if (negative)
        negative_room(m, ns);
    /* The old value, if any, goes first: its slot may be of another size. */
    m->removing = true;
    (void)ec_items_remove_key(ns->store->items, k.item_key, NULL);
    m->removing = false;
    if ((rc = ec_items_reserve(ns->store->items, cls, &off)))
        goto fail;
    memset(&h, 0, sizeof(h));
    h.hash_hi = k.hash_hi;
    h.ns = slot;
    h.ns_gen = ns->cat.generation;
    h.key_len = (uint32_t)key_len;
    h.value_len = (uint32_t)v->value_len;
    fresh = v->fresh_ns > 0 ? v->fresh_ns
                            : jittered(m, ns, v->ttl_us ? v->ttl_us
                                                        : (negative ? ns->cat.negative_ttl_us
                                                                    : ns->cat.ttl_us));
    h.fresh_until_ns = now + fresh;
    h.stale_until_ns = h.fresh_until_ns +
                       (negative || ns->cat.stale_us < 0 ? 0 : ns->cat.stale_us * 1000);
    h.flags = v->flags;
    h.compute_us = v->compute_us;
    if (v->flags & EC_RES_TENSOR) {
        h.dtype = v->dtype;
        h.ndim = v->ndim;
        memcpy(h.shape, v->shape, sizeof(h.shape));
    }
    /* The item is the key (8 bytes) then the record. */
    memcpy(ns->store->seg->data + off, &k.item_key, 8);
    ec_result_write(ns->store->seg->data + off + 8, &h, key, value);
    if ((rc = ec_items_publish(ns->store->items, k.item_key, off)))
        goto fail;
    ns->items++;
    ns->bytes += cls;
    ns->puts++;
    if (negative) {
        ns->negative_puts++;
        ns->negative_items++;
        (void)ec_u64map_put(&m->negative, k.item_key, (void *)1);
        negative_push(ns, k.item_key);
    }
    l = ec_u64map_get(&m->leases, k.item_key);
    if (m->rr && (ns->cat.flags & EC_NS_REMOTE) && !v->from_remote)
        rr_publish(m, ns, key, key_len, v, value, fresh, l); /* takes l's cluster lease */
    if (l) {
        /* The holder's put ends its computation: how long it took. */
        if (l->owner == p->owner && now >= l->granted_ns)
            ec_hist_add(&m->recompute_seconds, (uint64_t)(now - l->granted_ns));
        lease_end(m, l);
    }
    wake(m, slot);
    return 0;
fail:
    m->st.put_errors++;
    return rc;
}

int ec_resmgr_purge(ec_resmgr *m, const ec_res_peer *p, uint32_t slot, bool all,
                    const void *key, size_t key_len, uint64_t *removed)
{
    struct rns *ns = NULL;
    ec_result_key k;
    uint64_t n;
    int rc;

    if ((rc = use_check(m, p, slot, &ns)) || (rc = key_check(key, key_len)))
        return rc;
    if (all) {
        if (!may_manage(ns, p))
            return ec_seterr(EC_EPERM, "only uid %u (its owner) or an administrator may purge "
                                       "all of namespace %s",
                             ns->cat.owner_uid, ns->cat.name);
        n = drop_records(m, ns);
    } else {
        ec_result_key_of(ns->cat.salt, slot, key, key_len, &k);
        m->removing = true;
        n = (uint64_t)ec_items_remove_key(ns->store->items, k.item_key, NULL);
        m->removing = false;
        if (m->rr && (ns->cat.flags & EC_NS_REMOTE))
            rr_purge(m, ns, key, key_len);
    }
    ns->purged += n;
    *removed = n;
    wake(m, slot);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Namespaces                                                          */

static struct rns *ns_named(ec_resmgr *m, const char *name)
{
    for (uint32_t i = 0; i < EC_NS_MAX; i++)
        if (m->ns[i].live && strcmp(m->ns[i].cat.name, name) == 0)
            return &m->ns[i];
    return NULL;
}

static int ns_store(ec_resmgr *m, struct rns *ns)
{
    struct rstore *st;
    int rc;

    if (ns->cat.flags & EC_NS_SHARED) {
        ns->store = &m->main;
        return 0;
    }
    if ((rc = rs_arena_get(m, (uid_t)ns->cat.owner_uid, &st)))
        return rc;
    st->users++;
    ns->store = st;
    return 0;
}

static void ns_forget(ec_resmgr *m, struct rns *ns)
{
    if (ns->store)
        rs_arena_unref(m, ns->store);
    free(ns->negq);
    memset(ns, 0, sizeof(*ns));
}

static int ns_create(ec_resmgr *m, const ec_res_peer *p, const char *name, uint32_t flags,
                     const char *bind_model, const char *bind_version,
                     const ec_proto_ns_opts *o, struct rns **out)
{
    struct rns *ns = NULL;
    uint32_t slot;
    int rc;

    if (!p->admin) {
        uint32_t owned = 0;
        for (uint32_t i = 0; i < EC_NS_MAX; i++)
            owned += m->ns[i].live && m->ns[i].cat.owner_uid == (uint32_t)p->uid;
        if (owned >= NS_PER_UID)
            return ec_seterr(EC_ENOSPC, "uid %u owns %u namespaces, the most one uid may: drop "
                                        "one (embcache results drop NAME)",
                             (unsigned)p->uid, owned);
    }
    for (slot = 0; slot < EC_NS_MAX && m->ns[slot].live; slot++)
        ;
    if (slot == EC_NS_MAX)
        return ec_seterr(EC_ENOSPC, "%u namespaces exist, the most a daemon keeps: drop one "
                                    "(embcache results drop NAME)",
                         EC_NS_MAX);
    ns = &m->ns[slot];
    memset(ns, 0, sizeof(*ns));
    ns->cat.slot = slot;
    snprintf(ns->cat.name, sizeof(ns->cat.name), "%s", name);
    ns->cat.owner_uid = (uint32_t)p->uid;
    ns->cat.flags = flags & (EC_NS_SHARED | EC_NS_REMOTE);
    snprintf(ns->cat.bind_model, sizeof(ns->cat.bind_model), "%s", bind_model);
    snprintf(ns->cat.bind_version, sizeof(ns->cat.bind_version), "%s", bind_version);
    fill_defaults(&ns->cat, o);
    if (getrandom(&ns->cat.salt, sizeof(ns->cat.salt), 0) != sizeof(ns->cat.salt))
        ns->cat.salt = rnd(m);
    /* Never a generation the slot had: a record left of an older namespace
     * in this slot is no hit. */
    ns->cat.generation =
        atomic_load_explicit(&m->seg->hdr->ns[slot].gen, memory_order_relaxed) + 1;
    if (ns->cat.generation == 0)
        ns->cat.generation = 1;
    if (bind_model[0] && !(ns->cat.bound_version = bound_version(m, &ns->cat))) {
        rc = ec_seterr(EC_ENOENT, "namespace %s: cannot bind to %s/%s: no such model version "
                                  "or alias",
                       name, bind_model, bind_version);
        memset(ns, 0, sizeof(*ns));
        return rc;
    }
    if ((rc = ns_store(m, ns))) {
        memset(ns, 0, sizeof(*ns));
        return rc;
    }
    if ((rc = ec_catalog_ns_put(m->cat, &ns->cat))) {
        ns_forget(m, ns);
        return rc;
    }
    ns->live = true;
    publish_gen(m, slot, ns->cat.generation);
    ec_info("namespace %s created by uid %u (%s%s%s%s%s%s)", name, (unsigned)p->uid,
            (flags & EC_NS_SHARED) ? "shared" : "private",
            (flags & EC_NS_REMOTE) ? ", across hosts" : "", bind_model[0] ? ", bound to " : "",
            bind_model, bind_model[0] ? "/" : "", bind_version);
    *out = ns;
    return 0;
}

static int ns_configure(ec_resmgr *m, const ec_res_peer *p, struct rns *ns,
                        const char *bind_model, const char *bind_version,
                        const ec_proto_ns_opts *o)
{
    ec_catalog_ns c = ns->cat;
    bool rebind;

    if (!may_manage(ns, p))
        return ec_seterr(EC_EPERM, "only uid %u (its owner) or an administrator may configure "
                                   "namespace %s",
                         ns->cat.owner_uid, ns->cat.name);
    fill_defaults(&c, o);
    snprintf(c.bind_model, sizeof(c.bind_model), "%s", bind_model);
    snprintf(c.bind_version, sizeof(c.bind_version), "%s", bind_version);
    rebind = strcmp(c.bind_model, ns->cat.bind_model) ||
             strcmp(c.bind_version, ns->cat.bind_version);
    if (rebind && c.bind_model[0] && !(c.bound_version = bound_version(m, &c)))
        return ec_seterr(EC_ENOENT, "namespace %s: cannot bind to %s/%s: no such model version "
                                    "or alias",
                         ns->cat.name, bind_model, bind_version);
    if (!c.bind_model[0])
        c.bound_version = 0;
    ns->cat = c;
    if (rebind)
        return new_generation(m, ns, "bound anew");
    return ec_catalog_ns_put(m->cat, &ns->cat);
}

int ec_resmgr_ns_open(ec_resmgr *m, const ec_res_peer *p, const char *name, uint32_t flags,
                      const char *bind_model, const char *bind_version,
                      const ec_proto_ns_opts *opts, uint32_t *slot, uint64_t *salt,
                      uint32_t *gen, int *arena_fd)
{
    struct rns *ns;
    int rc;

    *arena_fd = -1;
    if (!ec_ns_name_ok(name))
        return ec_seterr(EC_EINVAL, "bad namespace name \"%s\": 1 to %u of letters, digits, "
                                    "'.', '_', '-', ':'",
                         name, EC_NS_NAME_MAX);
    if (flags & ~(uint32_t)(EC_NS_CREATE | EC_NS_SHARED | EC_NS_CONFIGURE | EC_NS_EXCL |
                            EC_NS_REMOTE))
        return ec_seterr(EC_EINVAL, "namespace %s: unknown flags 0x%x", name, flags);
    if ((flags & EC_NS_REMOTE) && !m->rr)
        return ec_seterr(EC_EINVAL, "namespace %s: shared across hosts (EC_NS_REMOTE), but "
                                    "this embcached has no remote tier: start it with "
                                    "--remote redis-cluster://HOST:PORT",
                         name);
    if (!bind_model[0] && bind_version[0])
        return ec_seterr(EC_EINVAL, "namespace %s: a bound version without a model", name);
    if (bind_model[0] && (ec_catalog_check_name("model", bind_model) ||
                          ec_catalog_check_name("version or alias",
                                                bind_version[0] ? bind_version : "")))
        return EC_EINVAL;
    if ((rc = check_opts(name, opts)))
        return rc;
    ns = ns_named(m, name);
    if (!ns) {
        if (!(flags & EC_NS_CREATE))
            return ec_seterr(EC_ENOENT, "no namespace %s: create it (EC_NS_CREATE, or "
                                        "embcache results create %s)",
                             name, name);
        if ((rc = ns_create(m, p, name, flags, bind_model, bind_version, opts, &ns)))
            return rc;
    } else {
        if ((flags & (EC_NS_CREATE | EC_NS_EXCL)) == (EC_NS_CREATE | EC_NS_EXCL))
            return ec_seterr(EC_EEXIST, "namespace %s exists already (of uid %u); configure it "
                                        "with EC_NS_CONFIGURE or drop it",
                             name, ns->cat.owner_uid);
        if (!may_use(ns, p))
            return ec_seterr(EC_EPERM, "namespace %s belongs to uid %u and is not shared",
                             name, ns->cat.owner_uid);
        if ((ns->cat.flags & EC_NS_REMOTE) && !m->rr)
            return ec_seterr(EC_EINVAL, "namespace %s is shared across hosts, but this "
                                        "embcached has no remote tier: start it with "
                                        "--remote redis-cluster://HOST:PORT",
                             name);
        if ((flags & EC_NS_REMOTE) && !(ns->cat.flags & EC_NS_REMOTE))
            return ec_seterr(EC_EINVAL, "namespace %s exists and is not shared across hosts; "
                                        "that is chosen at creation: drop it and create it "
                                        "with EC_NS_REMOTE (--remote)",
                             name);
        if ((flags & EC_NS_CONFIGURE) &&
            (rc = ns_configure(m, p, ns, bind_model, bind_version, opts)))
            return rc;
    }
    if (ns->store->arena && (rc = rs_arena_fd(ns->store, arena_fd)))
        return rc;
    *slot = ns->cat.slot;
    *salt = ns->cat.salt;
    *gen = ns->cat.generation;
    return 0;
}

static bool of_slot(ec_resmgr *m, const struct lease *l, const void *arg)
{
    (void)m;
    return l->slot == *(const uint32_t *)arg;
}

int ec_resmgr_drop(ec_resmgr *m, const ec_res_peer *p, const char *name)
{
    struct rns *ns = ec_ns_name_ok(name) ? ns_named(m, name) : NULL;
    uint32_t slot;
    int rc;

    if (!ns)
        return ec_seterr(EC_ENOENT, "no namespace %s", name);
    if (!may_manage(ns, p))
        return ec_seterr(EC_EPERM, "only uid %u (its owner) or an administrator may drop "
                                   "namespace %s",
                         ns->cat.owner_uid, name);
    if ((rc = ec_catalog_ns_delete(m->cat, name)))
        return rc;
    slot = ns->cat.slot;
    /* Readers stop first (generation 0 matches no record), then the records go. */
    publish_gen(m, slot, 0);
    (void)drop_records(m, ns);
    leases_end_if(m, of_slot, &slot);
    ec_info("namespace %s dropped", name);
    ns_forget(m, ns);
    wake(m, slot); /* its waiters, leases or not, find it gone */
    return 0;
}

int ec_resmgr_list(ec_resmgr *m, const ec_res_peer *p, uint32_t *cursor, ec_proto_ns *rec)
{
    for (uint32_t i = *cursor; i < EC_NS_MAX; i++) {
        struct rns *ns = &m->ns[i];
        uint64_t *c = rec->counters;
        if (!ns->live || !(may_use(ns, p) || p->admin))
            continue;
        memset(rec, 0, sizeof(*rec));
        snprintf(rec->name, sizeof(rec->name), "%s", ns->cat.name);
        rec->owner_uid = ns->cat.owner_uid;
        rec->flags = ns->cat.flags;
        rec->generation = ns->cat.generation;
        snprintf(rec->bind_model, sizeof(rec->bind_model), "%s", ns->cat.bind_model);
        snprintf(rec->bind_version, sizeof(rec->bind_version), "%s", ns->cat.bind_version);
        rec->bound_version = ns->cat.bound_version;
        rec->opts = (ec_proto_ns_opts){.ttl_us = ns->cat.ttl_us, .stale_us = ns->cat.stale_us,
                                       .negative_ttl_us = ns->cat.negative_ttl_us,
                                       .jitter_ppm = ns->cat.jitter_ppm,
                                       .lease_us = ns->cat.lease_us,
                                       .max_computing = ns->cat.max_computing,
                                       .negative_max = ns->cat.negative_max};
        c[0] = ns->items;
        c[1] = ns->negative_items;
        c[2] = ns->bytes;
        c[3] = ns->hits;
        c[4] = ns->misses;
        c[5] = ns->negative_hits;
        c[6] = ns->stale;
        c[7] = ns->leases_granted;
        c[8] = ns->leases_waited;
        c[9] = ns->leases_passed;
        c[10] = ns->early_refreshes;
        c[11] = ns->computing;
        c[12] = ns->computing_peak;
        c[13] = ns->limited;
        c[14] = ns->puts;
        c[15] = ns->negative_puts;
        c[16] = ns->evictions;
        c[17] = ns->purged;
        c[18] = ns->invalidations;
        *cursor = i + 1;
        return 1;
    }
    return 0;
}

void ec_resmgr_count(ec_resmgr *m, uint32_t slot, uint64_t hits, uint64_t misses,
                     uint64_t negative_hits, uint64_t stale)
{
    struct rns *ns = ns_at(m, slot);

    if (!ns)
        return;
    ns->hits += hits;
    ns->misses += misses;
    ns->negative_hits += negative_hits;
    ns->stale += stale;
}

void ec_resmgr_rebind(ec_resmgr *m)
{
    m->cat_changes = ec_catalog_changes();
    for (uint32_t i = 0; i < EC_NS_MAX; i++) {
        struct rns *ns = &m->ns[i];
        int64_t v;
        if (!ns->live || !ns->cat.bind_model[0])
            continue;
        v = bound_version(m, &ns->cat);
        if (v == ns->cat.bound_version)
            continue;
        ec_info("namespace %s: %s/%s now leads to version %lld (was %lld)", ns->cat.name,
                ns->cat.bind_model, ns->cat.bind_version, (long long)v,
                (long long)ns->cat.bound_version);
        ns->cat.bound_version = v;
        m->st.rebinds++;
        (void)new_generation(m, ns, v ? "its binding moved" : "its version is gone");
    }
}

static bool overran(ec_resmgr *m, const struct lease *l, const void *arg)
{
    if (l->deadline_ns > *(const int64_t *)arg)
        return false;
    count_overrun(m, l->slot);
    return true;
}

void ec_resmgr_tick(ec_resmgr *m)
{
    int64_t now = now_ns();

    leases_end_if(m, overran, &now);
    if (ec_catalog_changes() != m->cat_changes)
        ec_resmgr_rebind(m);
}

void ec_resmgr_recompute_hist(const ec_resmgr *m, ec_hist *out)
{
    *out = m->recompute_seconds;
}

int ec_resmgr_stats(ec_resmgr *m, int (*cb)(const char *name, uint64_t v, void *arg), void *arg)
{
    uint64_t n = 0, items = 0, bytes = 0, neg = 0;
    int rc;

    for (uint32_t i = 0; i < EC_NS_MAX; i++) {
        if (!m->ns[i].live)
            continue;
        n++;
        items += m->ns[i].items;
        bytes += m->ns[i].bytes;
        neg += m->ns[i].negative_items;
    }
#define S(name, v)                                                                        \
    if ((rc = cb(name, v, arg)))                                                          \
    return rc
    S("result_namespaces", n);
    S("result_items", items);
    S("result_bytes", bytes);
    S("result_negative_items", neg);
    S("result_leases", m->leases.len);
    S("result_lease_timeouts", m->st.lease_timeouts);
    S("result_leases_passed_on_close", m->st.owner_leases_passed);
    S("result_rebinds", m->st.rebinds);
    S("result_put_errors", m->st.put_errors);
    S("result_arenas", m->arenas.len);
    S("result_arena_bytes", m->arenas.len * m->arena_bytes);
    S("result_dropped_at_open", m->st.dropped_at_open);
#undef S
    return rr_stats(m, cb, arg);
}

/* ------------------------------------------------------------------ */
/* Open and close                                                      */

static int load_ns(const ec_catalog_ns *c, void *arg)
{
    ec_resmgr *m = arg;
    struct rns *ns = &m->ns[c->slot];

    memset(ns, 0, sizeof(*ns));
    ns->cat = *c;
    ns->live = true;
    return 0;
}

/* Records a previous daemon left in a store (the main one, or a kept
 * arena): those of a live namespace of that store at its current generation
 * are kept and counted, the rest dropped. */
struct adopt_arg {
    ec_resmgr *m;
    struct rstore *st;
};

static int adopt_one(uint64_t key, uint64_t off, void *arg)
{
    struct adopt_arg *a = arg;
    ec_resmgr *m = a->m;
    const ec_slab_header *sh;
    const ec_result_hdr *h;
    struct rns *ns;

    if (EC_ITEM_KEY_KIND(key) != EC_ITEM_KIND_RESULT ||
        !(ns = ns_at(m, EC_RESULT_KEY_NS(key))) || ns->store != a->st)
        return 0;
    /* stale_record() left only records of a live namespace's generation. */
    h = (const ec_result_hdr *)(const void *)ec_item_value(a->st->seg, off);
    sh = (const ec_slab_header *)(const void *)(a->st->seg->data +
                                                (off & ~((uint64_t)EC_SLAB_BYTES - 1)));
    ns->items++;
    ns->bytes += sh->item_bytes - 8;
    if (h->flags & EC_RESULT_NEGATIVE) {
        ns->negative_items++;
        (void)ec_u64map_put(&m->negative, key, (void *)1);
        negative_push(ns, key);
    }
    return 0;
}

static bool stale_record(uint64_t key, void *arg)
{
    struct adopt_arg *a = arg;
    uint32_t slot = EC_RESULT_KEY_NS(key);
    struct rns *ns = ns_at(a->m, slot);
    ec_item_ref ref;
    const ec_result_hdr *h;

    if (EC_ITEM_KEY_KIND(key) != EC_ITEM_KIND_RESULT)
        return false;
    if (!ns || ns->store != a->st)
        return true;
    if (ec_item_lookup(a->st->seg, key, sizeof(ec_result_hdr), &ref) != 1)
        return true;
    h = (const ec_result_hdr *)(const void *)ec_item_value(a->st->seg, ref.off);
    return h->ns != slot || h->ns_gen != ns->cat.generation;
}

/* Keep what a store holds of the last daemon's records. */
static void adopt_store(ec_resmgr *m, struct rstore *st)
{
    struct adopt_arg a = {.m = m, .st = st};

    if (!st->items)
        return;
    m->removing = true;
    m->st.dropped_at_open += ec_items_drop(st->items, stale_record, &a);
    m->removing = false;
    (void)ec_item_foreach(st->seg, adopt_one, &a);
}

int ec_resmgr_open(ec_engine *e, const ec_resmgr_config *cfg, ec_resmgr **out)
{
    ec_resmgr *m = calloc(1, sizeof(*m));
    int rc;

    if (!m)
        return ec_seterr(EC_ENOMEM, "cache manager");
    m->e = e;
    m->cat = ec_engine_catalog(e);
    m->seg = ec_engine_segment(e);
    m->arena_bytes = cfg && cfg->arena_bytes ? cfg->arena_bytes : DEF_ARENA_BYTES;
    m->keeper = cfg ? cfg->keeper : NULL;
    if (cfg && cfg->remote && cfg->remote[0] && (rc = rr_open(m, cfg->remote))) {
        free(m);
        return rc;
    }
    m->arena_bytes = (m->arena_bytes + EC_SLAB_BYTES - 1) / EC_SLAB_BYTES * EC_SLAB_BYTES;
    m->scratch = malloc(EC_SLAB_BYTES);
    if (getrandom(&m->rng, sizeof(m->rng), 0) != sizeof(m->rng))
        m->rng = (uint64_t)now_ns();
    if (!m->scratch) {
        rr_close(m);
        free(m);
        return ec_seterr(EC_ENOMEM, "cache manager");
    }
    rs_main_init(m);
    if ((rc = ec_catalog_ns_each(m->cat, load_ns, m))) {
        ec_resmgr_close(m);
        return rc;
    }
    /* Bindings that moved while no daemon ran start a new generation. */
    for (uint32_t i = 0; i < EC_NS_MAX; i++) {
        struct rns *ns = &m->ns[i];
        int64_t v;
        if (!ns->live) {
            publish_gen(m, i, 0);
            continue;
        }
        if (ns->cat.bind_model[0] && (v = bound_version(m, &ns->cat)) != ns->cat.bound_version) {
            ns->cat.bound_version = v;
            ns->cat.generation++;
            if (!ns->cat.generation)
                ns->cat.generation = 1;
            (void)ec_catalog_ns_put(m->cat, &ns->cat);
        }
        publish_gen(m, i, ns->cat.generation);
    }
    m->cat_changes = ec_catalog_changes();
    /* Each namespace's store (a private one's arena, kept by the keeper or
     * new), now that every namespace and generation is known: the records
     * a store adopts are checked against them. */
    m->removing = true; /* what adoption lets go is no eviction */
    for (uint32_t i = 0; i < EC_NS_MAX; i++)
        if (m->ns[i].live && (rc = ns_store(m, &m->ns[i]))) {
            ec_warn("namespace %s: no store for its results (%s); it starts empty",
                    m->ns[i].cat.name, ec_last_error());
            m->ns[i].live = false;
            publish_gen(m, i, 0);
        }
    m->removing = false;
    rs_keeper_leftovers(m);
    adopt_store(m, &m->main);
    for (size_t i = 0; i < m->arenas.cap; i++)
        if (m->arenas.keys[i])
            adopt_store(m, m->arenas.vals[i]);
    for (uint32_t i = 0; i < EC_NS_MAX; i++)
        if (m->ns[i].live && m->ns[i].items)
            ec_info("namespace %s: %" PRIu64 " results kept from the last daemon",
                    m->ns[i].cat.name, m->ns[i].items);
    ec_engine_set_result_hook(e, rs_unpublished, m);
    *out = m;
    return 0;
}

void ec_resmgr_close(ec_resmgr *m)
{
    if (!m)
        return;
    ec_engine_set_result_hook(m->e, NULL, NULL);
    rr_close(m); /* its last answers go while every lease is there */
    for (size_t i = 0; i < m->leases.cap; i++)
        if (m->leases.keys[i]) {
            struct lease *l = m->leases.vals[i];
            free(l->lkey);
            free(l);
        }
    ec_u64map_free(&m->leases);
    ec_u64map_free(&m->negative);
    for (uint32_t i = 0; i < EC_NS_MAX; i++)
        free(m->ns[i].negq);
    rs_free_all(m);
    free(m->scratch);
    free(m);
}
