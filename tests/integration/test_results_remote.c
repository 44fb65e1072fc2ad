/*
 * test_results_remote.c - result namespaces shared across hosts
 * (EC_NS_REMOTE, core/results_remote.c): two daemons, "hosts" A and B, with
 * --remote on one local Redis Cluster (3 masters, 3 replicas,
 * tests/redis/cluster.sh on free loopback ports).
 *
 *   - 64 client processes (32 on each daemon, each its own connection)
 *     miss one key at once: it is computed exactly once, and all 64 get
 *     the same bytes;
 *   - a key computed on A is a hit on B without a computation;
 *   - a lease holder whose connection dies lets B compute at once (its
 *     cluster lease is released), and a lease left in the cluster by a
 *     host that vanished holds B's callers until it expires, then one
 *     computes;
 *   - an early refresh is one host's in the cluster, the other takes its
 *     value; a purged key leaves the cluster too;
 *   - garbage and a corrupted value planted in the cluster are refused
 *     (never served) and the key is computed again;
 *   - a daemon without --remote refuses a remote namespace, and the flag
 *     survives a restart (catalog column namespaces.remote); a client from
 *     before remote namespaces (HELLO without EC_HELLO_NS_REMOTE, spoken
 *     here byte by byte) lists it without the flag it would refuse;
 *   - with the cluster stopped, local hits are served, misses are
 *     computed locally, and the failures are counted.
 *
 * The tests run in order and share the cluster and the daemons. Every
 * process is stopped by its pid. Exits 77 (skipped) only when
 * redis-server or redis-cli is not installed.
 */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "core/proto.h"
#include "core/rcluster.h"
#include "itest.h"
#include "testutil.h"

#define NODES 6
#define CLIENTS 64
#define VALUE_LEN 4096
#define NS "rr.shared"

uint64_t ec_checksum(const void *buf, size_t len); /* core/partfile.c: XXH3-64 */

static char *dir;
static ect_cluster cl = {.pipe = -1};
static bool cl_running;
static char url[128];

static struct itest_daemon A, B;

/* What the computations did, in memory every process shares. */
struct shared {
    _Atomic uint64_t computations, wrong, errors, ready, go;
};
static struct shared *S;

static void value_of(const char *key, uint8_t *out, size_t n)
{
    uint64_t s = 1469598103934665603ull;

    for (const char *p = key; *p; p++)
        s = (s ^ (uint8_t)*p) * 1099511628211ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out[i] = (uint8_t)s;
    }
}

struct comp {
    unsigned sleep_us;
    uint8_t buf[VALUE_LEN];
};

static int compute_fn(void *arg, const void *key, size_t key_len, ec_result_value *out)
{
    struct comp *c = arg;
    char k[256];

    atomic_fetch_add(&S->computations, 1);
    snprintf(k, sizeof(k), "%.*s", (int)key_len, (const char *)key);
    if (c->sleep_us)
        usleep(c->sleep_us);
    value_of(k, c->buf, sizeof(c->buf));
    out->data = c->buf;
    out->len = sizeof(c->buf);
    return 0;
}

/* A "host": a daemon in dir, with the cluster or without (no client: the
 * forked clients connect themselves). */
static void daemon_up(struct itest_daemon *d, const char *name, bool remote)
{
    const char *extra[] = {"--remote", url, NULL};

    itest_daemon_up(d, dir, name, remote ? extra : NULL, false);
}

static int open_ns(const char *sock, ec_client **c, ec_results **r)
{
    ec_ns_opts o = {.flags = EC_NS_CREATE | EC_NS_SHARED | EC_NS_REMOTE, .lease_time = 3,
                    .ttl = 600};
    int rc = ec_client_connect(sock, c);

    if (rc)
        return rc;
    rc = ec_results_open(*c, NS, &o, r);
    if (rc)
        ec_client_close(*c);
    return rc;
}

static int group_setup(void **state)
{
    (void)state;
    dir = ect_tmpdir("ec-rremote");
    if (ect_cluster_start_in(&cl, EC_TEST_CLUSTER_SH, dir, NODES, 2, url, sizeof(url)) < 0)
        return -1;
    cl_running = true;
    S = mmap(NULL, sizeof(*S), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (S == MAP_FAILED)
        return -1;
    daemon_up(&A, "a", true);
    daemon_up(&B, "b", true);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    itest_daemon_down(&A);
    itest_daemon_down(&B);
    if (!cl_running)
        cl.base = 0;
    ect_cluster_stop(&cl);
    if (dir)
        ect_rmtree(dir);
    free(dir);
    return 0;
}

static void reset(void)
{
    memset(S, 0, sizeof(*S));
}

/* A statistic of daemon d, over a connection of its own. */
static uint64_t host_stat(const struct itest_daemon *d, const char *name)
{
    ec_client *c = NULL;
    uint64_t v;

    assert_int_equal(ec_client_connect(d->sock, &c), 0);
    v = stat_of(c, name);
    ec_client_close(c);
    return v;
}

/* get_or_compute key on daemon d, check the bytes; the return code. */
static int get_key(const struct itest_daemon *d, const char *key, unsigned sleep_us, double wait)
{
    static struct comp comp;
    uint8_t want[VALUE_LEN], got[VALUE_LEN];
    ec_compute_opts co = {.wait = wait};
    ec_result_meta meta;
    ec_client *c = NULL;
    ec_results *r = NULL;
    int rc;

    if ((rc = open_ns(d->sock, &c, &r)))
        return rc;
    comp.sleep_us = sleep_us;
    rc = ec_results_get_or_compute(r, key, strlen(key), &co, compute_fn, &comp, got, sizeof(got),
                                   &meta);
    value_of(key, want, sizeof(want));
    if (rc == 1 && (meta.len != VALUE_LEN || memcmp(got, want, VALUE_LEN) != 0))
        atomic_fetch_add(&S->wrong, 1);
    ec_results_close(r);
    ec_client_close(c);
    return rc;
}

/* ------------------------------------------------------------------ */

/* One client process: its own connection, waits for go, misses key. */
static void client_main(const struct itest_daemon *d, const char *key)
{
    static struct comp comp = {.sleep_us = 300000};
    uint8_t want[VALUE_LEN], got[VALUE_LEN];
    ec_compute_opts co = {.wait = 30};
    ec_result_meta meta;
    ec_client *c = NULL;
    ec_results *r = NULL;
    int rc;

    if (open_ns(d->sock, &c, &r)) {
        atomic_fetch_add(&S->errors, 1);
        atomic_fetch_add(&S->ready, 1);
        _exit(1);
    }
    atomic_fetch_add(&S->ready, 1);
    while (!atomic_load(&S->go))
        usleep(100);
    rc = ec_results_get_or_compute(r, key, strlen(key), &co, compute_fn, &comp, got, sizeof(got),
                                   &meta);
    value_of(key, want, sizeof(want));
    if (rc != 1)
        atomic_fetch_add(&S->errors, 1);
    else if (meta.len != VALUE_LEN || memcmp(got, want, VALUE_LEN) != 0)
        atomic_fetch_add(&S->wrong, 1);
    ec_results_close(r);
    ec_client_close(c);
    _exit(0);
}

static void test_64_clients_2_hosts_compute_once(void **state)
{
    pid_t pids[CLIENTS];
    char key[64];

    (void)state;
    for (int round = 0; round < 3; round++) {
        reset();
        snprintf(key, sizeof(key), "hot-%d", round);
        for (int i = 0; i < CLIENTS; i++) {
            pids[i] = fork();
            assert_true(pids[i] >= 0);
            if (pids[i] == 0)
                client_main(i % 2 ? &B : &A, key);
        }
        while (atomic_load(&S->ready) < CLIENTS)
            usleep(1000);
        atomic_store(&S->go, 1);
        for (int i = 0; i < CLIENTS; i++) {
            int st;
            assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
            assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        }
        if (atomic_load(&S->computations) != 1 || S->wrong || S->errors)
            fail_msg("round %d: %llu computations (1 expected), %llu wrong, %llu errors", round,
                     (unsigned long long)S->computations, (unsigned long long)S->wrong,
                     (unsigned long long)S->errors);
    }
    assert_true(host_stat(&A, "remote_result_leases_won") + host_stat(&B, "remote_result_leases_won") ==
                3);
    /* Local single flight: one cluster lease request per key per host. */
    assert_true(host_stat(&A, "remote_result_leases_lost") + host_stat(&B, "remote_result_leases_lost") ==
                3);
    assert_int_equal(host_stat(&A, "remote_result_errors"), 0);
    assert_int_equal(host_stat(&B, "remote_result_errors"), 0);
}

static void test_computed_on_a_is_hit_on_b(void **state)
{
    uint64_t hits, sets;

    (void)state;
    reset();
    sets = host_stat(&A, "remote_result_sets");
    assert_int_equal(get_key(&A, "k2", 0, 10), 1);
    assert_int_equal(S->computations, 1);
    /* Its value reaches the cluster after the put's answer: give it a moment. */
    for (int i = 0; i < 200 && host_stat(&A, "remote_result_sets") == sets; i++)
        usleep(10000);
    hits = host_stat(&B, "remote_result_hits");
    assert_int_equal(get_key(&B, "k2", 0, 10), 1);
    assert_int_equal(S->computations, 1);
    assert_int_equal(S->wrong, 0);
    assert_int_equal(host_stat(&B, "remote_result_hits"), hits + 1);
}

/* A holder on A whose process dies: its cluster lease goes with its
 * connection, and B (waiting meanwhile) computes. */
static void test_holder_dies_other_host_computes(void **state)
{
    int p[2];
    pid_t holder;
    char ok;
    struct timespec t0, t1;
    double took;

    (void)state;
    reset();
    assert_int_equal(pipe(p), 0);
    holder = fork();
    assert_true(holder >= 0);
    if (holder == 0) {
        ec_client *c = NULL;
        ec_results *r = NULL;
        char a = 'n';
        if (open_ns(A.sock, &c, &r) == 0 && ec_results_lease(r, "k3", 2, 0) == EC_LEASE_GRANTED)
            a = 'y';
        if (write(p[1], &a, 1) != 1)
            _exit(1);
        pause(); /* killed holding the lease */
        _exit(0);
    }
    close(p[1]);
    assert_int_equal(read(p[0], &ok, 1), 1);
    close(p[0]);
    assert_int_equal(ok, 'y');
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (fork() == 0) {
        usleep(300000);
        kill(holder, SIGKILL);
        _exit(0);
    }
    assert_int_equal(get_key(&B, "k3", 0, 20), 1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    waitpid(holder, NULL, 0);
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_int_equal(S->computations, 1);
    assert_int_equal(S->wrong, 0);
    /* Released at once, not after the 3 s lease time. */
    if (took < 0.25 || took > 2.5)
        fail_msg("B computed k3 %.3f s after the holder took it (0.3 s expected)", took);
}

static ec_rcluster *rc_open(void)
{
    ec_rcluster *rc = NULL;

    assert_int_equal(ec_rcluster_open(url, NULL, &rc), 0);
    return rc;
}

/* The cluster key of key in NS (unbound), as core/results_remote.c names it. */
static size_t ckey(const char *key, char kind, char *out, size_t cap)
{
    return (size_t)snprintf(out, cap, "ec:r:%s/-/{%016llx}/%c/%s", NS,
                            (unsigned long long)ec_checksum(key, strlen(key)), kind, key);
}

/* A host that vanished holding a lease: B's callers wait until it expires. */
static void test_lease_of_a_vanished_host_expires(void **state)
{
    ec_rcluster *rc = rc_open();
    ec_rcluster_set_opts so = {.ttl_ms = 1000, .nx = true};
    struct timespec t0, t1;
    char lk[256];
    double took;

    (void)state;
    reset();
    ckey("k4", 'l', lk, sizeof(lk));
    assert_int_equal(ec_rcluster_set(rc, lk, strlen(lk), "0123456789abcdef0123456789abcdef", 32,
                                     &so),
                     0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(get_key(&B, "k4", 0, 20), 1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_int_equal(S->computations, 1);
    if (took < 0.8 || took > 3)
        fail_msg("B computed k4 %.3f s after a 1 s lease was planted", took);
    ec_rcluster_close(rc);
}

/* An early refresh (EC_RES_EARLY) is one host's in the cluster: the other
 * host is told its fresh value stands, then takes the refreshed one. A
 * purge of one key deletes it in the cluster too. */
static void test_early_refresh_once_and_purge(void **state)
{
    ec_client *ca = NULL, *cb = NULL;
    ec_results *ra = NULL, *rb = NULL;
    uint8_t v2[VALUE_LEN], got[VALUE_LEN];
    ec_result_value val = {.data = v2, .len = VALUE_LEN};
    ec_result_meta meta;
    ec_rcluster *rc;
    char vk[256];
    void *p = NULL;
    size_t n;
    uint64_t sets, removed = 0;

    (void)state;
    reset();
    sets = host_stat(&A, "remote_result_sets");
    assert_int_equal(get_key(&A, "k10", 0, 10), 1);
    for (int i = 0; i < 200 && host_stat(&A, "remote_result_sets") == sets; i++)
        usleep(10000);
    assert_int_equal(get_key(&B, "k10", 0, 10), 1);
    assert_int_equal(S->computations, 1);
    assert_int_equal(open_ns(A.sock, &ca, &ra), 0);
    assert_int_equal(open_ns(B.sock, &cb, &rb), 0);
    assert_int_equal(ec_results_lease(ra, "k10", 3, EC_RES_EARLY), EC_LEASE_GRANTED);
    assert_int_equal(ec_results_lease(rb, "k10", 3, EC_RES_EARLY), EC_LEASE_FOUND);
    memset(v2, 0x5a, sizeof(v2));
    sets = host_stat(&A, "remote_result_sets");
    assert_int_equal(ec_results_put(ra, "k10", 3, &val), 0);
    for (int i = 0; i < 200 && host_stat(&A, "remote_result_sets") == sets; i++)
        usleep(10000);
    /* B still serves its fresh value, and takes A's refresh when it asks. */
    assert_int_equal(ec_results_lease(rb, "k10", 3, EC_RES_EARLY), EC_LEASE_FOUND);
    assert_int_equal(ec_results_get(rb, "k10", 3, 0, got, sizeof(got), &meta), 1);
    assert_memory_equal(got, v2, VALUE_LEN);
    /* Purged on B: gone from the cluster. */
    assert_int_equal(ec_results_purge(rb, "k10", 3, &removed), 0);
    assert_int_equal(removed, 1);
    rc = rc_open();
    ckey("k10", 'v', vk, sizeof(vk));
    for (int i = 0; i < 200 && ec_rcluster_get(rc, vk, strlen(vk), &p, &n) == 0; i++) {
        free(p);
        p = NULL;
        usleep(10000);
    }
    assert_int_equal(ec_rcluster_get(rc, vk, strlen(vk), &p, &n), EC_ENOENT);
    ec_rcluster_close(rc);
    ec_results_close(ra);
    ec_results_close(rb);
    ec_client_close(ca);
    ec_client_close(cb);
}

/* Garbage, and a value of another key, and a corrupted one: refused. */
static void test_bad_values_refused(void **state)
{
    ec_rcluster *rc = rc_open();
    char vk[256], vk2[256];
    void *good = NULL;
    size_t n = 0;
    uint64_t refused;

    (void)state;
    /* Garbage. */
    reset();
    refused = host_stat(&B, "remote_result_refused");
    ckey("k5", 'v', vk, sizeof(vk));
    assert_int_equal(ec_rcluster_set(rc, vk, strlen(vk), "garbage, not a value", 20, NULL), 0);
    assert_int_equal(get_key(&B, "k5", 0, 10), 1);
    assert_int_equal(S->computations, 1);
    assert_int_equal(S->wrong, 0);
    assert_true(host_stat(&B, "remote_result_refused") > refused);

    /* k2's valid value under k6's name: another key's, refused. */
    reset();
    refused = host_stat(&A, "remote_result_refused");
    ckey("k2", 'v', vk, sizeof(vk));
    ckey("k6", 'v', vk2, sizeof(vk2));
    assert_int_equal(ec_rcluster_get(rc, vk, strlen(vk), &good, &n), 0);
    assert_true(n > VALUE_LEN);
    assert_int_equal(ec_rcluster_set(rc, vk2, strlen(vk2), good, n, NULL), 0);
    assert_int_equal(get_key(&A, "k6", 0, 10), 1);
    assert_int_equal(S->computations, 1);
    assert_int_equal(S->wrong, 0);
    assert_true(host_stat(&A, "remote_result_refused") > refused);

    /* k7 stored right, then one value byte flipped in the cluster: a host
     * that never saw it refuses it and computes it again. */
    reset();
    {
        uint64_t sets = host_stat(&A, "remote_result_sets");
        assert_int_equal(get_key(&A, "k7", 0, 10), 1);
        for (int i = 0; i < 200 && host_stat(&A, "remote_result_sets") == sets; i++)
            usleep(10000);
        free(good);
        good = NULL;
        ckey("k7", 'v', vk, sizeof(vk));
        assert_int_equal(ec_rcluster_get(rc, vk, strlen(vk), &good, &n), 0);
        ((uint8_t *)good)[n - 1] ^= 0x40;
        assert_int_equal(ec_rcluster_set(rc, vk, strlen(vk), good, n, NULL), 0);
        refused = host_stat(&B, "remote_result_refused");
        assert_int_equal(get_key(&B, "k7", 0, 10), 1);
        assert_int_equal(S->computations, 2);
        assert_int_equal(S->wrong, 0);
        assert_true(host_stat(&B, "remote_result_refused") > refused);
    }
    free(good);
    ec_rcluster_close(rc);
}

static void test_no_remote_daemon_refuses(void **state)
{
    struct itest_daemon D;
    ec_client *c = NULL;
    ec_results *r = NULL;

    (void)state;
    daemon_up(&D, "d", false);
    assert_int_equal(ec_client_connect(D.sock, &c), 0);
    assert_int_equal(ec_results_open(c, NS, &(ec_ns_opts){.flags = EC_NS_CREATE | EC_NS_REMOTE},
                                     &r),
                     EC_EINVAL);
    if (!strstr(ec_last_error(), "--remote"))
        fail_msg("the error does not say what to do: %s", ec_last_error());
    ec_client_close(c);
    itest_daemon_down(&D);
}

static int list_cb(const ec_ns_info *ns, void *arg)
{
    if (strcmp(ns->name, NS) == 0)
        *(uint32_t *)arg = ns->flags | 0x80000000u;
    return 0;
}

/* One request on a raw connection and its reply (asserts it is one). */
static void raw_rpc(int fd, uint8_t *buf, ec_wbuf *w, ec_msg_hdr *h, ec_rbuf *body)
{
    int fds[2], nfds = 0;
    ssize_t n;

    assert_int_equal(ec_msg_send(fd, buf, ec_msg_end(w), NULL, 0, false), 0);
    n = ec_msg_recv(fd, buf, EC_MSG_MAX, fds, &nfds, 2);
    assert_true(n > 0);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    assert_int_equal(ec_msg_parse(buf, (size_t)n, h, body), 0);
    assert_int_equal(h->status, 0);
}

/* The flags of namespace NS as NS_LIST gives them to a client whose HELLO
 * says it reads the EC_HELLO_* bits `features` (0: a client from before
 * them), or 0 when NS is not listed. */
static uint32_t listed_flags(const char *sock, uint32_t features)
{
    static uint8_t buf[EC_MSG_MAX];
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    uint32_t flags = 0, n;
    ec_msg_hdr h;
    ec_rbuf r;
    ec_wbuf w;

    assert_true(fd >= 0 && strlen(sock) < sizeof(a.sun_path));
    memcpy(a.sun_path, sock, strlen(sock) + 1);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ec_msg_begin(&w, buf, EC_MSG_MAX, EC_OP_HELLO, 1, 0);
    ec_put_u32(&w, features);
    ec_put_str(&w, "a client of an older release");
    raw_rpc(fd, buf, &w, &h, &r);
    ec_msg_begin(&w, buf, EC_MSG_MAX, EC_OP_NS_LIST, 2, 0);
    ec_put_u32(&w, 0);
    raw_rpc(fd, buf, &w, &h, &r);
    (void)ec_get_u32(&r); /* the next cursor: one namespace fits one reply */
    n = ec_get_u32(&r);
    for (uint32_t i = 0; i < n; i++) {
        ec_proto_ns ns;
        assert_int_equal(ec_get_ns(&r, &ns), 0);
        if (!strcmp(ns.name, NS))
            flags = ns.flags | 0x80000000u;
    }
    close(fd);
    return flags;
}

/* namespaces.remote keeps the flag across a restart; the same data
 * directory served without --remote refuses the namespace. */
static void test_remote_flag_persists(void **state)
{
    ec_client *c = NULL;
    ec_results *r = NULL;
    uint32_t flags = 0;

    (void)state;
    itest_daemon_down(&A);
    daemon_up(&A, "a", false);
    assert_int_equal(ec_client_connect(A.sock, &c), 0);
    assert_int_equal(ec_results_list(c, list_cb, &flags), 0);
    assert_int_equal(flags, 0x80000000u | EC_NS_SHARED | EC_NS_REMOTE);
    /* A client from before remote namespaces would refuse the flag. */
    assert_int_equal(listed_flags(A.sock, 0), 0x80000000u | EC_NS_SHARED);
    assert_int_equal(listed_flags(A.sock, EC_HELLO_NS_REMOTE),
                     0x80000000u | EC_NS_SHARED | EC_NS_REMOTE);
    assert_int_equal(ec_results_open(c, NS, NULL, &r), EC_EINVAL);
    ec_client_close(c);
    itest_daemon_down(&A);
    daemon_up(&A, "a", true);
    assert_int_equal(open_ns(A.sock, &c, &r), 0);
    ec_results_close(r);
    ec_client_close(c);
}

static void test_cluster_down(void **state)
{
    uint64_t errors;
    ec_client *c = NULL;
    ec_results *r = NULL;
    uint8_t got[VALUE_LEN], want[VALUE_LEN];
    ec_result_meta meta;

    (void)state;
    /* k2 here (A restarted: from the cluster, or computed). */
    assert_int_equal(get_key(&A, "k2", 0, 10), 1);
    assert_int_equal(ect_cluster_sh(&cl, "stop", NULL, NULL), 0);
    cl_running = false;
    errors = host_stat(&A, "remote_result_errors");
    /* A local hit: served. */
    assert_int_equal(open_ns(A.sock, &c, &r), 0);
    assert_int_equal(ec_results_get(r, "k2", 2, 0, got, sizeof(got), &meta), 1);
    value_of("k2", want, sizeof(want));
    assert_memory_equal(got, want, VALUE_LEN);
    ec_results_close(r);
    ec_client_close(c);
    /* A miss: computed here. */
    reset();
    assert_int_equal(get_key(&A, "k8", 0, 10), 1);
    assert_int_equal(S->computations, 1);
    assert_int_equal(S->wrong, 0);
    assert_true(host_stat(&A, "remote_result_errors") > errors);
    assert_true(host_stat(&A, "remote_result_local_fallbacks") >= 1);
    /* And again: a hit now. */
    assert_int_equal(get_key(&A, "k8", 0, 10), 1);
    assert_int_equal(S->computations, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_64_clients_2_hosts_compute_once),
        cmocka_unit_test(test_computed_on_a_is_hit_on_b),
        cmocka_unit_test(test_holder_dies_other_host_computes),
        cmocka_unit_test(test_lease_of_a_vanished_host_expires),
        cmocka_unit_test(test_early_refresh_once_and_purge),
        cmocka_unit_test(test_bad_values_refused),
        cmocka_unit_test(test_no_remote_daemon_refuses),
        cmocka_unit_test(test_remote_flag_persists),
        cmocka_unit_test(test_cluster_down),
    };

    if (!ect_redis_installed()) {
        fprintf(stderr, "redis-server or redis-cli not installed: skipped\n");
        return EC_TEST_SKIP;
    }
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
