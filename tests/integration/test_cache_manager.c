/*
 * test_cache_manager.c - cached results against a real daemon, many
 * processes, every value checked byte for byte against what was computed:
 *
 *   - round trips: bytes, tensors, values larger than a message, a miss,
 *     a key that does not fit, read by another process;
 *   - 击穿 breakdown: 1,000 concurrent misses of one key from 8 processes
 *     compute it once; a lease whose holder dies or overruns passes on; a
 *     hot key is refreshed early, once;
 *   - 穿透 penetration: keys without an answer reach the backend once per
 *     key per negative TTL, and a flood of them evicts no real result;
 *   - 雪崩 avalanche: TTLs are spread by jitter, at most max_computing
 *     recomputations run at once after a mass expiry, results survive a
 *     restart of the daemon;
 *   - 失效 invalidation: after an alias moves (and moves back) no result of
 *     the old version is served; purges by key and namespace;
 *   - isolation: another uid can neither open a private namespace nor find
 *     its values anywhere in what it maps.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "client/client_impl.h"
#include "itest.h"
#include "testutil.h"

/* What the computations did, in memory every process of a test shares. */
struct shared {
    _Atomic uint64_t computations;
    _Atomic int64_t computing, computing_peak;
    _Atomic uint64_t wrong, errors, go;
};
static struct shared *S;

static void value_of(const void *key, size_t key_len, uint8_t *out, size_t n)
{
    uint64_t s = 1469598103934665603ull;

    for (size_t i = 0; i < key_len; i++)
        s = (s ^ ((const uint8_t *)key)[i]) * 1099511628211ull;
    for (size_t i = 0; i < n; i++)
        out[i] = (uint8_t)(splitmix(&s) >> 32);
}

struct comp {
    size_t len;
    unsigned sleep_us;
    bool negative;
    uint8_t buf[8192];
};

/* The backend: counts itself, tracks how many run at once, sleeps. */
static int compute_fn(void *arg, const void *key, size_t key_len, ec_result_value *out)
{
    struct comp *c = arg;
    int64_t now = atomic_fetch_add(&S->computing, 1) + 1, peak;

    atomic_fetch_add(&S->computations, 1);
    while ((peak = atomic_load(&S->computing_peak)) < now &&
           !atomic_compare_exchange_weak(&S->computing_peak, &peak, now))
        ;
    if (c->sleep_us)
        usleep(c->sleep_us);
    atomic_fetch_sub(&S->computing, 1);
    if (c->negative) {
        out->flags = EC_RES_NEGATIVE;
        return 0;
    }
    value_of(key, key_len, c->buf, c->len);
    out->data = c->buf;
    out->len = c->len;
    return 0;
}

static ec_results *ns_open(ec_client *c, const char *name, const ec_ns_opts *o)
{
    ec_ns_opts d = {.flags = EC_NS_CREATE | EC_NS_SHARED};
    ec_results *r = NULL;

    if (ec_results_open(c, name, o ? o : &d, &r))
        fail_msg("open %s: %s", name, ec_last_error());
    return r;
}

static int setup(void **state)
{
    static const char *const args[] = {"--allow-uid", "65534", NULL};

    (void)state;
    env_start("ec-cm", args);
    S = shared_map(sizeof(*S));
    memset(S, 0, sizeof(*S));
    return 0;
}

/* ------------------------------------------------------------------ */

static void test_roundtrip(void **state)
{
    ec_client *c = connect_ok();
    ec_results *r = ns_open(c, "rt", NULL);
    static uint8_t big[300000], got[300000];
    float t[2][3] = {{1, 2, 3}, {4, 5, 6}}, tg[2][3];
    ec_result_value v = {.data = "hello", .len = 5};
    ec_result_meta m;
    char buf[64];
    pid_t kid;

    (void)state;
    assert_int_equal(ec_results_get(r, "k", 1, 0, buf, sizeof(buf), &m), 0);
    assert_int_equal(ec_results_put(r, "k", 1, &v), 0);
    assert_int_equal(ec_results_get(r, "k", 1, 0, buf, sizeof(buf), &m), 1);
    assert_int_equal(m.len, 5);
    assert_memory_equal(buf, "hello", 5);
    assert_int_equal(m.state, EC_RES_FRESH);
    /* A key that differs in one byte is another key. */
    assert_int_equal(ec_results_get(r, "K", 1, 0, buf, sizeof(buf), &m), 0);
    /* Too small a buffer: the size is said. */
    assert_int_equal(ec_results_get(r, "k", 1, 0, buf, 2, &m), EC_ETOOBIG);
    assert_int_equal(m.len, 5);
    /* A tensor keeps its dtype and shape. */
    v = (ec_result_value){.data = t, .len = sizeof(t), .flags = EC_RES_TENSOR,
                          .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {2, 3}};
    assert_int_equal(ec_results_put(r, "t", 1, &v), 0);
    assert_int_equal(ec_results_get(r, "t", 1, 0, tg, sizeof(tg), &m), 1);
    assert_true(m.flags & EC_RES_TENSOR);
    assert_int_equal(m.dtype, EC_DTYPE_F32);
    assert_int_equal(m.ndim, 2);
    assert_int_equal(m.shape[1], 3);
    assert_memory_equal(tg, t, sizeof(t));
    v.shape[1] = 4; /* a shape that does not match the bytes */
    assert_int_equal(ec_results_put(r, "t2", 2, &v), EC_EINVAL);
    /* Larger than a message: through a file. */
    value_of("big", 3, big, sizeof(big));
    v = (ec_result_value){.data = big, .len = sizeof(big)};
    assert_int_equal(ec_results_put(r, "big", 3, &v), 0);
    /* Another process reads both, byte for byte. */
    kid = spawn();
    if (kid == 0) {
        ec_client *c2 = NULL;
        ec_results *r2 = NULL;
        int ok = ec_client_connect(E.sock, &c2) == 0 && ec_results_open(c2, "rt", NULL, &r2) == 0 &&
                 ec_results_get(r2, "big", 3, 0, got, sizeof(got), &m) == 1 &&
                 m.len == sizeof(big) && memcmp(got, big, sizeof(big)) == 0 &&
                 ec_results_get(r2, "k", 1, 0, buf, sizeof(buf), &m) == 1 &&
                 memcmp(buf, "hello", 5) == 0;
        _exit(ok ? 0 : 1);
    }
    assert_int_equal(reap(kid), 0);
    /* Too large for an item: refused, nothing else harmed. */
    {
        static uint8_t huge[2u << 20];
        v = (ec_result_value){.data = huge, .len = sizeof(huge)};
        assert_int_equal(ec_results_put(r, "huge", 4, &v), EC_ETOOBIG);
    }
    assert_int_equal(ec_results_get(r, "k", 1, 0, buf, sizeof(buf), &m), 1);
    /* Bad names and unknown namespaces are clear errors. */
    assert_int_equal(ec_results_open(c, "bad name", NULL, &(ec_results *){NULL}), EC_EINVAL);
    assert_int_equal(ec_results_open(c, "nosuch", NULL, &(ec_results *){NULL}), EC_ENOENT);
    assert_non_null(strstr(ec_last_error(), "create"));
    /* An exclusive create of one that exists is refused, not an open. */
    assert_int_equal(ec_results_open(c, "rt", &(ec_ns_opts){.flags = EC_NS_CREATE | EC_NS_EXCL},
                                     &(ec_results *){NULL}),
                     EC_EEXIST);
    ec_results_close(r);
    ec_client_close(c);
}

/* ------------------------------------------------------------------ */
/* 击穿: breakdown                                                    */

#define PROCS 8
#define THREADS 25
#define CALLS 5 /* 8 x 25 x 5 = 1,000 */

struct worker {
    ec_results *r;
    const char *key;
    size_t len;
};

static void *miss_thread(void *arg)
{
    struct worker *w = arg;
    struct comp *cp = calloc(1, sizeof(*cp));
    uint8_t out[8192], want[8192];
    ec_compute_opts o = {.flags = EC_RES_NO_EARLY};
    ec_result_meta m;

    cp->len = w->len;
    cp->sleep_us = 300000;
    value_of(w->key, strlen(w->key), want, w->len);
    while (!atomic_load(&S->go))
        usleep(100);
    for (int i = 0; i < CALLS; i++) {
        int rc = ec_results_get_or_compute(w->r, w->key, strlen(w->key), &o, compute_fn, cp,
                                           out, sizeof(out), &m);
        if (rc != 1)
            atomic_fetch_add(&S->errors, 1);
        else if (m.len != w->len || memcmp(out, want, w->len))
            atomic_fetch_add(&S->wrong, 1);
    }
    free(cp);
    return NULL;
}

static void miss_storm(const char *ns, const char *key)
{
    pid_t kids[PROCS];

    atomic_store(&S->go, 0);
    for (int p = 0; p < PROCS; p++) {
        kids[p] = spawn();
        if (kids[p] == 0) {
            ec_client *c = NULL;
            ec_results *r = NULL;
            pthread_t th[THREADS];
            struct worker w;
            if (ec_client_connect(E.sock, &c) || ec_results_open(c, ns, NULL, &r))
                _exit(2);
            w = (struct worker){.r = r, .key = key, .len = 4096};
            for (int i = 0; i < THREADS; i++)
                pthread_create(&th[i], NULL, miss_thread, &w);
            for (int i = 0; i < THREADS; i++)
                pthread_join(th[i], NULL);
            _exit(0);
        }
    }
    usleep(300000); /* every thread waits at the line */
    atomic_store(&S->go, 1);
    for (int p = 0; p < PROCS; p++)
        assert_int_equal(reap(kids[p]), 0);
}

static void test_breakdown_computes_once(void **state)
{
    ec_client *c = connect_ok();
    ec_results *r = ns_open(c, "hot", NULL);

    (void)state;
    atomic_store(&S->computations, 0);
    miss_storm("hot", "the-hot-key");
    assert_int_equal(atomic_load(&S->errors), 0);
    assert_int_equal(atomic_load(&S->wrong), 0);
    /* 1,000 concurrent misses from 8 processes: one computation. */
    assert_int_equal(atomic_load(&S->computations), 1);
    ec_results_close(r);
    ec_client_close(c);
}

static void test_breakdown_lease_passes_on(void **state)
{
    ec_client *c = connect_ok();
    ec_ns_opts o = {.flags = EC_NS_CREATE | EC_NS_SHARED, .lease_time = 1.0};
    ec_results *r = ns_open(c, "lease", &o);
    struct comp cp = {.len = 64};
    ec_compute_opts co = {.flags = EC_RES_NO_EARLY, .wait = 10};
    uint8_t out[64], want[64];
    int up[2];
    char b;
    double t0;
    pid_t kid;

    (void)state;
    value_of("dies", 4, want, 64);
    /* A holder that dies: its lease passes when its connection closes. */
    assert_int_equal(pipe(up), 0);
    kid = spawn();
    if (kid == 0) {
        ec_client *c2 = NULL;
        ec_results *r2 = NULL;
        if (ec_client_connect(E.sock, &c2) || ec_results_open(c2, "lease", NULL, &r2) ||
            ec_results_lease(r2, "dies", 4, 0) != EC_LEASE_GRANTED)
            _exit(2);
        if (write(up[1], "l", 1) != 1)
            _exit(3);
        pause();
        _exit(0);
    }
    assert_int_equal(read(up[0], &b, 1), 1);
    assert_int_equal(ec_results_lease(r, "dies", 4, 0), EC_LEASE_WAIT);
    atomic_store(&S->computations, 0);
    t0 = now_s();
    kill(kid, SIGKILL);
    reap(kid);
    assert_int_equal(ec_results_get_or_compute(r, "dies", 4, &co, compute_fn, &cp, out,
                                               sizeof(out), NULL), 1);
    assert_memory_equal(out, want, 64);
    assert_int_equal(atomic_load(&S->computations), 1);
    assert_true(now_s() - t0 < 0.9); /* not by the lease's end: by the close */
    /* A holder that overruns: the lease passes after lease_time. */
    assert_int_equal(ec_results_lease(r, "slow", 4, 0), EC_LEASE_GRANTED);
    kid = spawn();
    if (kid == 0) {
        ec_client *c2 = NULL;
        ec_results *r2 = NULL;
        struct comp cp2 = {.len = 64};
        uint8_t o2[64];
        if (ec_client_connect(E.sock, &c2) || ec_results_open(c2, "lease", NULL, &r2))
            _exit(2);
        _exit(ec_results_get_or_compute(r2, "slow", 4, &co, compute_fn, &cp2, o2, sizeof(o2),
                                        NULL) == 1 ? 0 : 1);
    }
    t0 = now_s();
    assert_int_equal(reap(kid), 0);
    assert_true(now_s() - t0 > 0.5);
    assert_int_equal(atomic_load(&S->computations), 2);
    /* A failed computation gives the lease up at once. */
    assert_int_equal(ec_results_release(r, "slow", 4), 0);
    ec_results_close(r);
    ec_client_close(c);
}

static void *early_thread(void *arg)
{
    struct worker *w = arg;
    struct comp cp = {.len = 256};
    uint8_t out[256];
    ec_compute_opts o = {.beta = 1.0};

    for (int i = 0; i < 200; i++) {
        if (ec_results_get_or_compute(w->r, "warm", 4, &o, compute_fn, &cp, out, sizeof(out),
                                      NULL) != 1)
            atomic_fetch_add(&S->errors, 1);
        usleep(1000);
    }
    return NULL;
}

static void test_breakdown_early_refresh(void **state)
{
    ec_client *c = connect_ok();
    ec_ns_opts o = {.flags = EC_NS_CREATE | EC_NS_SHARED, .ttl = 1.0, .jitter = -1,
                    .stale_ttl = -1};
    ec_results *r = ns_open(c, "early", &o);
    uint8_t val[256];
    ec_result_value v = {.data = val, .len = sizeof(val), .compute_us = 2000000};
    struct worker w = {.r = r};
    pthread_t th[8];
    ec_result_meta m;

    (void)state;
    /* A value said to take 2 s to compute, fresh for 1 s: XFetch refreshes
     * it before it expires, once, and no reader sees a miss. */
    value_of("warm", 4, val, sizeof(val));
    assert_int_equal(ec_results_put(r, "warm", 4, &v), 0);
    atomic_store(&S->computations, 0);
    atomic_store(&S->errors, 0);
    for (int i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, early_thread, &w);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&S->errors), 0);
    /* ~0.25 s of calls: refreshed once (its computation takes a moment). */
    assert_int_equal(atomic_load(&S->computations), 1);
    assert_int_equal(ec_results_get(r, "warm", 4, 0, val, sizeof(val), &m), 1);
    assert_true(m.ttl_left > 0.5);
    ec_results_close(r);
    ec_client_close(c);
}

/* ------------------------------------------------------------------ */
/* 穿透: penetration                                                  */

static uint64_t ns_counter(ec_client *c, const char *name, size_t off);

struct nsfind {
    const char *name;
    ec_ns_info info;
    int found;
};

static int ns_cb(const ec_ns_info *ns, void *arg)
{
    struct nsfind *f = arg;

    if (strcmp(ns->name, f->name) == 0) {
        f->info = *ns;
        f->found = 1;
    }
    return 0;
}

static ec_ns_info ns_info(ec_client *c, const char *name)
{
    struct nsfind f = {.name = name};

    assert_int_equal(ec_results_list(c, ns_cb, &f), 0);
    assert_true(f.found);
    return f.info;
}

static uint64_t ns_counter(ec_client *c, const char *name, size_t off)
{
    ec_ns_info i = ns_info(c, name);

    return *(const uint64_t *)(const void *)((const char *)&i + off);
}

static void test_penetration_negative_cached(void **state)
{
    ec_client *c = connect_ok();
    ec_ns_opts o = {.flags = EC_NS_CREATE | EC_NS_SHARED, .negative_ttl = 30,
                    .negative_max = 1000};
    ec_results *r = ns_open(c, "pen", &o);
    struct comp neg = {.negative = true}, pos = {.len = 512};
    ec_compute_opts co = {.flags = EC_RES_NO_EARLY};
    ec_result_meta m;
    uint8_t out[512], want[512];
    char key[32];
    uint64_t lookups = 0;

    (void)state;
    /* 100 real results. */
    for (int i = 0; i < 100; i++) {
        int n = snprintf(key, sizeof(key), "real-%d", i);
        assert_int_equal(ec_results_get_or_compute(r, key, (size_t)n, &co, compute_fn, &pos,
                                                   out, sizeof(out), NULL), 1);
    }
    /* 1,000,000 lookups of 500 keys without an answer: one computation per key. */
    atomic_store(&S->computations, 0);
    for (int round = 0; round < 2000; round++)
        for (int i = 0; i < 500; i++) {
            int n = snprintf(key, sizeof(key), "none-%d", i);
            int rc = ec_results_get_or_compute(r, key, (size_t)n, &co, compute_fn, &neg, out,
                                               sizeof(out), &m);
            assert_int_equal(rc, 1);
            assert_true(m.flags & EC_RES_NEGATIVE);
            lookups++;
        }
    assert_int_equal(lookups, 1000000);
    assert_int_equal(atomic_load(&S->computations), 500);
    /* A flood of 20,000 more such keys stays within negative_max and evicts
     * no real result. */
    for (int i = 0; i < 20000; i++) {
        int n = snprintf(key, sizeof(key), "flood-%d", i);
        assert_int_equal(ec_results_get_or_compute(r, key, (size_t)n, &co, compute_fn, &neg,
                                                   out, sizeof(out), NULL), 1);
    }
    assert_true(ns_counter(c, "pen", offsetof(ec_ns_info, negative_items)) <= 1000);
    assert_int_equal(ns_counter(c, "pen", offsetof(ec_ns_info, evictions)), 0);
    for (int i = 0; i < 100; i++) {
        int n = snprintf(key, sizeof(key), "real-%d", i);
        value_of(key, (size_t)n, want, sizeof(want));
        assert_int_equal(ec_results_get(r, key, (size_t)n, 0, out, sizeof(out), &m), 1);
        assert_memory_equal(out, want, sizeof(want));
    }
    ec_results_close(r);
    ec_client_close(c);
}

/* ------------------------------------------------------------------ */
/* 雪崩: avalanche                                                    */

#define AV_KEYS 2000

static void *avalanche_thread(void *arg)
{
    struct worker *w = arg;
    struct comp *cp = calloc(1, sizeof(*cp));
    ec_compute_opts o = {.flags = EC_RES_NO_EARLY};
    uint8_t out[128], want[128];
    char key[32];

    cp->len = 128;
    cp->sleep_us = 2000;
    for (int i = 0; i < AV_KEYS; i++) {
        int n = snprintf(key, sizeof(key), "av-%d", (i * 7919 + (int)w->len * 131) % AV_KEYS);
        value_of(key, (size_t)n, want, sizeof(want));
        if (ec_results_get_or_compute(w->r, key, (size_t)n, &o, compute_fn, cp, out,
                                      sizeof(out), NULL) != 1)
            atomic_fetch_add(&S->errors, 1);
        else if (memcmp(out, want, sizeof(want)))
            atomic_fetch_add(&S->wrong, 1);
    }
    free(cp);
    return NULL;
}

static void test_avalanche_limits_recomputation(void **state)
{
    ec_client *c = connect_ok();
    ec_ns_opts o = {.flags = EC_NS_CREATE | EC_NS_SHARED, .ttl = 1.0, .jitter = 0.2,
                    .stale_ttl = -1, .max_computing = 4};
    ec_results *r = ns_open(c, "av", &o);
    uint8_t val[128];
    ec_result_value v = {.data = val, .len = sizeof(val)};
    double lo = 1e9, hi = -1e9;
    ec_result_meta m;
    char key[32];
    pid_t kids[4];

    (void)state;
    /* Written together, they do not expire together: jitter. */
    for (int i = 0; i < AV_KEYS; i++) {
        int n = snprintf(key, sizeof(key), "av-%d", i);
        value_of(key, (size_t)n, val, sizeof(val));
        assert_int_equal(ec_results_put(r, key, (size_t)n, &v), 0);
    }
    for (int i = 0; i < AV_KEYS; i++) {
        int n = snprintf(key, sizeof(key), "av-%d", i);
        assert_int_equal(ec_results_get(r, key, (size_t)n, 0, val, sizeof(val), &m), 1);
        lo = m.ttl_left < lo ? m.ttl_left : lo;
        hi = m.ttl_left > hi ? m.ttl_left : hi;
    }
    assert_true(hi - lo > 0.2); /* spread over +-20% of 1 s */
    assert_true(lo > 0.6 && hi < 1.25);
    /* All expired: 4 processes x 4 threads ask for all of them at once;
     * never more than 4 computations run at once. */
    usleep(1300000);
    atomic_store(&S->computations, 0);
    atomic_store(&S->computing_peak, 0);
    atomic_store(&S->errors, 0);
    atomic_store(&S->wrong, 0);
    for (int p = 0; p < 4; p++) {
        kids[p] = spawn();
        if (kids[p] == 0) {
            ec_client *c2 = NULL;
            ec_results *r2 = NULL;
            pthread_t th[4];
            struct worker w[4];
            if (ec_client_connect(E.sock, &c2) || ec_results_open(c2, "av", NULL, &r2))
                _exit(2);
            for (int i = 0; i < 4; i++) {
                w[i] = (struct worker){.r = r2, .len = (size_t)(p * 4 + i)};
                pthread_create(&th[i], NULL, avalanche_thread, &w[i]);
            }
            for (int i = 0; i < 4; i++)
                pthread_join(th[i], NULL);
            _exit(0);
        }
    }
    for (int p = 0; p < 4; p++)
        assert_int_equal(reap(kids[p]), 0);
    assert_int_equal(atomic_load(&S->errors), 0);
    assert_int_equal(atomic_load(&S->wrong), 0);
    assert_true(atomic_load(&S->computations) >= AV_KEYS);
    printf("avalanche: %llu computations, at most %lld at once (limit 4)\n",
           (unsigned long long)atomic_load(&S->computations),
           (long long)atomic_load(&S->computing_peak));
    assert_true(atomic_load(&S->computing_peak) <= 4);
    assert_true(ns_counter(c, "av", offsetof(ec_ns_info, computing_peak)) <= 4);
    assert_true(ns_counter(c, "av", offsetof(ec_ns_info, limited)) > 0);
    ec_results_close(r);
    ec_client_close(c);
}

static void test_avalanche_warm_restart(void **state)
{
    ec_client *c = connect_ok();
    ec_ns_opts o = {.flags = EC_NS_CREATE | EC_NS_SHARED, .ttl = 3600};
    ec_ns_opts po = {.flags = EC_NS_CREATE, .ttl = 3600}; /* private: in root's arena */
    ec_results *r = ns_open(c, "keep", &o), *p = ns_open(c, "keep-mine", &po);
    uint8_t val[1000], out[1000];
    ec_result_value v = {.data = val, .len = sizeof(val)};
    char key[32];
    pid_t w;

    (void)state;
    for (int i = 0; i < 500; i++) {
        int n = snprintf(key, sizeof(key), "k-%d", i);
        value_of(key, (size_t)n, val, sizeof(val));
        assert_int_equal(ec_results_put(r, key, (size_t)n, &v), 0);
        val[0] ^= 0x5a; /* the private namespace holds other bytes */
        assert_int_equal(ec_results_put(p, key, (size_t)n, &v), 0);
    }
    ec_results_close(r);
    ec_results_close(p);
    ec_client_close(c);
    w = ect_daemon_worker(E.data);
    assert_int_equal(kill(w, SIGKILL), 0);
    ect_daemon_wait_worker(E.data, E.sock, w);
    c = connect_ok();
    r = ns_open(c, "keep", NULL);
    p = ns_open(c, "keep-mine", &po);
    /* Shared and private results alike survive the worker. */
    for (int i = 0; i < 500; i++) {
        int n = snprintf(key, sizeof(key), "k-%d", i);
        value_of(key, (size_t)n, val, sizeof(val));
        assert_int_equal(ec_results_get(r, key, (size_t)n, 0, out, sizeof(out), NULL), 1);
        assert_memory_equal(out, val, sizeof(val));
        val[0] ^= 0x5a;
        assert_int_equal(ec_results_get(p, key, (size_t)n, 0, out, sizeof(out), NULL), 1);
        assert_memory_equal(out, val, sizeof(val));
    }
    assert_int_equal(ns_counter(c, "keep", offsetof(ec_ns_info, items)), 500);
    assert_int_equal(ns_counter(c, "keep-mine", offsetof(ec_ns_info, items)), 500);
    /* New results go on into the kept arena. */
    assert_int_equal(ec_results_put(p, "new", 3, &v), 0);
    assert_int_equal(ec_results_get(p, "new", 3, 0, out, sizeof(out), NULL), 1);
    ec_results_close(r);
    ec_results_close(p);
    ec_client_close(c);
}

/* ------------------------------------------------------------------ */
/* 失效: invalidation                                                 */

static void test_invalidation_alias_switch(void **state)
{
    ec_client *c = connect_ok();
    struct table tb;
    ec_ns_opts o = {.flags = EC_NS_CREATE | EC_NS_SHARED, .bind_model = "m",
                    .bind_version = "current"};
    ec_results *r;
    ec_result_value v = {.data = "v1", .len = 2};
    char buf[8];
    char key[32];
    uint64_t removed;
    pid_t kid;

    (void)state;
    table_make(&tb, "t.npy", 64, 4, 1);
    import_npy(c, "m", 1, tb.path, 0);
    import_npy(c, "m", 2, tb.path, 0);
    assert_int_equal(ec_model_alias(c, "m", "current", 1), 0);
    r = ns_open(c, "inv", &o);
    for (int i = 0; i < 100; i++) {
        int n = snprintf(key, sizeof(key), "q-%d", i);
        assert_int_equal(ec_results_put(r, key, (size_t)n, &v), 0);
    }
    assert_int_equal(ec_results_get(r, "q-0", 3, 0, buf, sizeof(buf), NULL), 1);
    /* The alias moves: not one result of version 1 is served, here or in
     * another process, from the moment the move is acknowledged. */
    assert_int_equal(ec_model_alias(c, "m", "current", 2), 0);
    for (int i = 0; i < 100; i++) {
        int n = snprintf(key, sizeof(key), "q-%d", i);
        assert_int_equal(ec_results_get(r, key, (size_t)n, EC_RES_ALLOW_STALE, buf, sizeof(buf),
                                        NULL), 0);
    }
    kid = spawn();
    if (kid == 0) {
        ec_client *c2 = NULL;
        ec_results *r2 = NULL;
        if (ec_client_connect(E.sock, &c2) || ec_results_open(c2, "inv", NULL, &r2))
            _exit(2);
        _exit(ec_results_get(r2, "q-1", 3, EC_RES_ALLOW_STALE, buf, sizeof(buf), NULL) == 0
                  ? 0 : 1);
    }
    assert_int_equal(reap(kid), 0);
    assert_int_equal(ns_counter(c, "inv", offsetof(ec_ns_info, items)), 0);
    assert_int_equal(ns_info(c, "inv").bound_version, 2);
    /* Results of version 2, then the alias returns to 1: none of 2's. */
    v.data = "v2";
    assert_int_equal(ec_results_put(r, "q-0", 3, &v), 0);
    assert_int_equal(ec_model_alias(c, "m", "current", 1), 0);
    assert_int_equal(ec_results_get(r, "q-0", 3, EC_RES_ALLOW_STALE, buf, sizeof(buf), NULL), 0);
    assert_int_equal(ns_info(c, "inv").invalidations, 2);
    /* Purge by key and by namespace. */
    v.data = "v1";
    assert_int_equal(ec_results_put(r, "a", 1, &v), 0);
    assert_int_equal(ec_results_put(r, "b", 1, &v), 0);
    assert_int_equal(ec_results_purge(r, "a", 1, &removed), 0);
    assert_int_equal(removed, 1);
    assert_int_equal(ec_results_get(r, "a", 1, 0, buf, sizeof(buf), NULL), 0);
    assert_int_equal(ec_results_get(r, "b", 1, 0, buf, sizeof(buf), NULL), 1);
    assert_int_equal(ec_results_purge(r, NULL, 0, &removed), 0);
    assert_int_equal(removed, 1);
    assert_int_equal(ec_results_get(r, "b", 1, 0, buf, sizeof(buf), NULL), 0);
    /* A retired version's results are gone, and none can be stored for it. */
    {
        ec_ns_opts o2 = {.flags = EC_NS_CREATE | EC_NS_SHARED, .bind_model = "m",
                         .bind_version = "2"};
        ec_results *r2 = ns_open(c, "ret", &o2);
        int gone = 0;
        assert_int_equal(ec_results_put(r2, "a", 1, &v), 0);
        assert_int_equal(ec_results_get(r2, "a", 1, 0, buf, sizeof(buf), NULL), 1);
        assert_int_equal(ec_model_retire(c, "m", 2, 0), 0);
        for (int i = 0; i < 300 && !gone; i++) {
            gone = ec_results_get(r2, "a", 1, EC_RES_ALLOW_STALE, buf, sizeof(buf), NULL) == 0;
            if (!gone)
                usleep(10000);
        }
        assert_true(gone);
        assert_int_equal(ec_results_put(r2, "a", 1, &v), EC_ENOENT);
        assert_non_null(strstr(ec_last_error(), "does not exist"));
        assert_int_equal(ns_info(c, "ret").bound_version, 0);
        ec_results_close(r2);
    }
    /* A binding to nothing is refused. */
    o.bind_version = "nosuch";
    assert_int_equal(ec_results_open(c, "inv2", &o, &(ec_results *){NULL}), EC_ENOENT);
    ec_results_close(r);
    table_free(&tb);
    ec_client_close(c);
}

/* ------------------------------------------------------------------ */
/* Isolation                                                           */

static const uint8_t SECRET[32] = "private-value-of-root-0123456789";

static bool seg_has(const ec_segment *seg, const void *p, size_t n)
{
    return memmem(seg->base, seg->size, p, n) != NULL;
}

static void test_isolation_other_uid(void **state)
{
    ec_client *c = connect_ok();
    ec_ns_opts priv = {.flags = EC_NS_CREATE};
    ec_results *r = ns_open(c, "mine", &priv), *sh = ns_open(c, "ours", NULL);
    ec_result_value v = {.data = SECRET, .len = sizeof(SECRET)};
    uint8_t buf[64];
    pid_t kid;

    (void)state;
    if (geteuid() != 0) {
        printf("not root: the other-uid part needs setuid; it did not run\n");
        skip();
    }
    assert_int_equal(ec_results_put(r, "s", 1, &v), 0);
    assert_int_equal(ec_results_get(r, "s", 1, 0, buf, sizeof(buf), NULL), 1);
    /* The private value is in root's arena, not in the segment everyone maps. */
    assert_false(seg_has(&c->seg, SECRET, sizeof(SECRET)));
    assert_true(seg_has(r->seg, SECRET, sizeof(SECRET)));
    v.data = "shared";
    v.len = 6;
    assert_int_equal(ec_results_put(sh, "x", 1, &v), 0);
    assert_int_equal(chmod(E.dir, 0755), 0);
    kid = spawn();
    if (kid == 0) {
        ec_client *c2 = NULL;
        ec_results *r2 = NULL, *s2 = NULL;
        uint64_t n;
        if (setgid(65534) || setuid(65534))
            _exit(10);
        if (ec_client_connect(E.sock, &c2))
            _exit(11);
        if (ec_results_open(c2, "mine", NULL, &r2) != EC_EPERM)
            _exit(12); /* cannot open it */
        if (seg_has(&c2->seg, SECRET, sizeof(SECRET)))
            _exit(13); /* nor find its value in what it maps */
        if (ec_results_open(c2, "ours", NULL, &s2) ||
            ec_results_get(s2, "x", 1, 0, buf, sizeof(buf), NULL) != 1 ||
            memcmp(buf, "shared", 6))
            _exit(14); /* a shared one it reads */
        if (ec_results_purge(s2, NULL, 0, &n) != EC_EPERM)
            _exit(15); /* but may not purge all of it */
        if (ec_results_drop(c2, "mine") != EC_EPERM)
            _exit(16);
        /* One uid (not an administrator) owns at most a quarter of the slots. */
        for (int i = 0;; i++) {
            char nm[32];
            ec_results *t = NULL;
            int rc;
            snprintf(nm, sizeof(nm), "many-%d", i);
            rc = ec_results_open(c2, nm, &(ec_ns_opts){.flags = EC_NS_CREATE | EC_NS_SHARED},
                                 &t);
            if (rc == EC_ENOSPC && i == (int)EC_NS_MAX / 4 && strstr(ec_last_error(), "owns"))
                break;
            if (rc || i >= (int)EC_NS_MAX / 4)
                _exit(18);
            ec_results_close(t);
        }
        for (int i = 0; i < (int)EC_NS_MAX / 4; i++) {
            char nm[32];
            snprintf(nm, sizeof(nm), "many-%d", i);
            if (ec_results_drop(c2, nm))
                _exit(19);
        }
        /* Its own private namespace is its own. */
        if (ec_results_open(c2, "theirs", &priv, &r2) ||
            ec_results_put(r2, "s", 1, &(ec_result_value){.data = "t", .len = 1}) ||
            ec_results_get(r2, "s", 1, 0, buf, sizeof(buf), NULL) != 1)
            _exit(17);
        _exit(0);
    }
    assert_int_equal(reap(kid), 0);
    /* Root administers it, but cannot read it as if it were its own. */
    assert_int_equal(ec_results_open(c, "theirs", NULL, &(ec_results *){NULL}), EC_EPERM);
    assert_int_equal(ec_results_drop(c, "theirs"), 0);
    ec_results_close(r);
    ec_results_close(sh);
    ec_client_close(c);
}

/* A value must come inline or in a memfd: another file (a pipe here,
 * which could block the daemon's thread) is refused, and the daemon
 * serves on. */
static void test_put_refuses_other_files(void **state)
{
    ec_client *c = connect_ok();
    ec_results *r = ns_open(c, "fd", NULL);
    int p[2], rc;
    ec_rbuf body;
    ec_wbuf w;
    uint32_t id;
    char buf[8];

    (void)state;
    assert_int_equal(pipe(p), 0);
    pthread_mutex_lock(&c->lock);
    id = cl_begin(c, &w, EC_OP_RES_PUT);
    ec_put_u32(&w, r->slot);
    ec_put_u32(&w, 0);
    ec_put_u64(&w, 0);
    ec_put_u32(&w, 0);
    ec_put_u32(&w, 0);
    ec_put_u32(&w, 0);
    ec_put_bytes(&w, "k", 1);
    ec_put_u64(&w, 4);
    ec_put_u32(&w, 0);
    rc = cl_rpc(c, &w, id, &p[0], 1, &body, NULL, NULL, 0);
    pthread_mutex_unlock(&c->lock);
    assert_int_equal(rc, EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "memfd"));
    close(p[0]);
    close(p[1]);
    assert_int_equal(ec_results_put(r, "k", 1, &(ec_result_value){.data = "okay", .len = 4}), 0);
    assert_int_equal(ec_results_get(r, "k", 1, 0, buf, sizeof(buf), NULL), 1);
    ec_results_close(r);
    ec_client_close(c);
}

/* ------------------------------------------------------------------ */
/* Context windows                                                     */

static void test_context_prefix(void **state)
{
    ec_client *c = connect_ok();
    ec_results *r = ns_open(c, "ctx", NULL), *other = ns_open(c, "ctx2", NULL);
    int32_t tokens[64];
    static uint16_t blocks[4][256], out[4][256];
    ec_result_value vals[4];
    size_t n = 0, got = 0;

    (void)state;
    for (int i = 0; i < 64; i++)
        tokens[i] = 1000 + i;
    for (int b = 0; b < 4; b++) {
        for (int i = 0; i < 256; i++)
            blocks[b][i] = (uint16_t)(b * 1000 + i);
        vals[b] = (ec_result_value){.data = blocks[b], .len = sizeof(blocks[b]),
                                    .flags = EC_RES_TENSOR, .dtype = EC_DTYPE_F16, .ndim = 2,
                                    .shape = {16, 16}};
    }
    assert_int_equal(ec_context_lookup_prefix(r, tokens, 64, 16, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(ec_context_put(r, tokens, 64, 16, 0, 3, vals), 0);
    assert_int_equal(ec_context_lookup_prefix(r, tokens, 64, 16, &n), 0);
    assert_int_equal(n, 3);
    /* Another sequence sharing the first 20 tokens shares one block. */
    tokens[20] = 7;
    assert_int_equal(ec_context_lookup_prefix(r, tokens, 64, 16, &n), 0);
    assert_int_equal(n, 1);
    tokens[20] = 1020;
    /* The same tokens in another namespace are another chain. */
    assert_int_equal(ec_context_lookup_prefix(other, tokens, 64, 16, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(ec_context_gather(r, tokens, 64, 16, 3, out, sizeof(out[0]), -1, &got), 0);
    assert_int_equal(got, 3);
    assert_memory_equal(out, blocks, 3 * sizeof(blocks[0]));
    assert_int_equal(ec_context_gather(r, tokens, 64, 16, 4, out, sizeof(out[0]), -1, &got),
                     EC_ENOENT);
    assert_int_equal(got, 3);
    assert_int_equal(ec_context_gather(r, tokens, 64, 16, 2, out, 100, -1, &got), EC_ERANGE);
    ec_results_close(r);
    ec_results_close(other);
    ec_client_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_breakdown_computes_once, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_breakdown_lease_passes_on, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_breakdown_early_refresh, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_penetration_negative_cached, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_avalanche_limits_recomputation, setup,
                                        env_teardown),
        cmocka_unit_test_setup_teardown(test_avalanche_warm_restart, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_invalidation_alias_switch, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_isolation_other_uid, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_put_refuses_other_files, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_context_prefix, setup, env_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
