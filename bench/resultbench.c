/*
 * resultbench.c - embcache-resultbench: the cache manager side by side with
 * Redis, in one run on one machine.
 *
 *   hit       a 4 KiB result read by a process other than its writer:
 *             ec_results_get from shared memory vs GET of the same bytes
 *             from a private redis-server on a Unix socket (hiredis), per
 *             operation, 1 thread each; p50 and p99 of each repeat, then the
 *             median and range over the repeats.
 *   storm     1,000 concurrent misses of one key from 8 processes: how many
 *             computations.
 *   negative  1,000,000 lookups of keys without an answer: computations per
 *             key, and real results evicted.
 *   avalanche 100,000 keys expire at once while 8 readers ask for them:
 *             the most recomputations at once (limit max_computing) and the
 *             backend's peak rate per 100 ms.
 *
 * Usage: embcache-resultbench --embcached PATH [--repeats N] [--ops N]
 * Starts its own embcached and redis-server in a temporary directory; the
 * machine's facts and the commit go in the header it prints.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "embcache.h"

#define VAL 4096
#define KEYS 1000

static char dir[256], sock[300], rsock[300];
static pid_t daemon_pid, redis_pid;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "resultbench: %s: %s\n", what, ec_last_error());
    if (daemon_pid > 0)
        kill(daemon_pid, SIGTERM);
    if (redis_pid > 0)
        kill(redis_pid, SIGTERM);
    exit(1);
}

static pid_t start(char *const argv[], const char *wait_for)
{
    pid_t pid = fork();

    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        setenv("EMBCACHE_CONFIG", "", 1); /* embcached: not /etc's configuration file */
        execvp(argv[0], argv);
        _exit(127);
    }
    for (int i = 0; i < 1000; i++) {
        struct stat st;
        if (stat(wait_for, &st) == 0)
            return pid;
        usleep(10000);
    }
    fprintf(stderr, "resultbench: %s did not start\n", argv[0]);
    exit(1);
}

static void value_of(int k, uint8_t *v, size_t n)
{
    uint64_t s = (uint64_t)k * 0x9e3779b97f4a7c15ull + 1;

    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v[i] = (uint8_t)s;
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

static ec_results *open_ns(ec_client **c, const char *name, const ec_ns_opts *o)
{
    ec_ns_opts d = {.flags = EC_NS_CREATE | EC_NS_SHARED, .ttl = 3600};
    ec_results *r = NULL;

    if (ec_client_connect(sock, c) || ec_results_open(*c, name, o ? o : &d, &r))
        die("open");
    return r;
}

/* ------------------------------------------------------------------ */

/* p50 and p99 (ns) of ops reads: embcache (which 0) or Redis (1), in a
 * child process: a reader other than the writer. */
static void hit_run(int which, int ops, uint64_t *p50, uint64_t *p99)
{
    uint64_t *lat = mmap(NULL, sizeof(uint64_t) * (size_t)ops, PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pid_t kid = fork();

    if (kid == 0) {
        static uint8_t buf[VAL], want[VAL];
        uint64_t x = 88172645463325252ull;
        ec_client *c = NULL;
        ec_results *r = NULL;
        redisContext *rc = NULL;
        if (which == 0)
            r = open_ns(&c, "bench", NULL);
        else if (!(rc = redisConnectUnix(rsock)) || rc->err)
            _exit(2);
        for (int i = 0; i < ops; i++) {
            int k;
            char key[32];
            int n;
            uint64_t t0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            k = (int)(x % KEYS);
            n = snprintf(key, sizeof(key), "key-%d", k);
            t0 = now_ns();
            if (which == 0) {
                if (ec_results_get(r, key, (size_t)n, 0, buf, sizeof(buf), NULL) != 1)
                    _exit(3);
            } else {
                redisReply *rep = redisCommand(rc, "GET %b", key, (size_t)n);
                if (!rep || rep->type != REDIS_REPLY_STRING || rep->len != VAL)
                    _exit(4);
                memcpy(buf, rep->str, VAL);
                freeReplyObject(rep);
            }
            lat[i] = now_ns() - t0;
            if (i % 997 == 0) { /* every value checked now and then, byte for byte */
                value_of(k, want, VAL);
                if (memcmp(buf, want, VAL))
                    _exit(5);
            }
        }
        _exit(0);
    }
    {
        int st;
        waitpid(kid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st))
            die(which ? "redis reader" : "embcache reader");
    }
    qsort(lat, (size_t)ops, sizeof(*lat), cmp_u64);
    *p50 = lat[ops / 2];
    *p99 = lat[(size_t)ops * 99 / 100];
    munmap(lat, sizeof(uint64_t) * (size_t)ops);
}

static void report(const char *what, uint64_t *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_u64);
    printf("  %-28s median %8.2f us  range %.2f..%.2f us\n", what, (double)v[n / 2] / 1e3,
           (double)v[0] / 1e3, (double)v[n - 1] / 1e3);
}

static void bench_hit(int repeats, int ops)
{
    ec_client *c;
    ec_results *r = open_ns(&c, "bench", NULL);
    redisContext *rc = redisConnectUnix(rsock);
    uint64_t e50[32], e99[32], r50[32], r99[32];
    static uint8_t v[VAL];

    if (!rc || rc->err)
        die("redis connect");
    for (int k = 0; k < KEYS; k++) {
        char key[32];
        int n = snprintf(key, sizeof(key), "key-%d", k);
        redisReply *rep;
        value_of(k, v, VAL);
        if (ec_results_put(r, key, (size_t)n, &(ec_result_value){.data = v, .len = VAL}))
            die("put");
        rep = redisCommand(rc, "SET %b %b", key, (size_t)n, v, (size_t)VAL);
        freeReplyObject(rep);
    }
    for (int i = 0; i < repeats; i++) {
        hit_run(0, ops, &e50[i], &e99[i]);
        hit_run(1, ops, &r50[i], &r99[i]);
    }
    printf("hit: 4 KiB value, %d keys, %d reads per repeat, %d repeats, another process\n",
           KEYS, ops, repeats);
    report("embcache p50", e50, repeats);
    report("embcache p99", e99, repeats);
    report("redis GET (unix) p50", r50, repeats);
    report("redis GET (unix) p99", r99, repeats);
    printf("  ratio (median p50, p99): %.1fx, %.1fx lower\n",
           (double)r50[repeats / 2] / (double)e50[repeats / 2],
           (double)r99[repeats / 2] / (double)e99[repeats / 2]);
    redisFree(rc);
    ec_results_close(r);
    ec_client_close(c);
}

/* ------------------------------------------------------------------ */

struct shared {
    _Atomic uint64_t computations;
    _Atomic int64_t computing, peak;
    _Atomic uint64_t window[4096]; /* computations per 100 ms since start */
    double t0;
    _Atomic int go;
};
static struct shared *S;

struct comp {
    unsigned sleep_us;
    bool negative;
    uint8_t buf[256];
};

static int compute_fn(void *arg, const void *key, size_t key_len, ec_result_value *out)
{
    struct comp *c = arg;
    int64_t n = atomic_fetch_add(&S->computing, 1) + 1, p;
    size_t w = (size_t)((now_s() - S->t0) * 10);

    (void)key;
    (void)key_len;
    atomic_fetch_add(&S->computations, 1);
    if (w < 4096)
        atomic_fetch_add(&S->window[w], 1);
    while ((p = atomic_load(&S->peak)) < n && !atomic_compare_exchange_weak(&S->peak, &p, n))
        ;
    if (c->sleep_us)
        usleep(c->sleep_us);
    atomic_fetch_sub(&S->computing, 1);
    if (c->negative)
        out->flags = EC_RES_NEGATIVE;
    else {
        out->data = c->buf;
        out->len = sizeof(c->buf);
    }
    return 0;
}

static void *storm_thread(void *arg)
{
    ec_results *r = arg;
    struct comp cp = {.sleep_us = 200000};
    ec_compute_opts o = {.flags = EC_RES_NO_EARLY};
    uint8_t out[256];

    while (!atomic_load(&S->go))
        usleep(50);
    for (int i = 0; i < 5; i++)
        if (ec_results_get_or_compute(r, "hot", 3, &o, compute_fn, &cp, out, sizeof(out),
                                      NULL) != 1)
            _exit(3);
    return NULL;
}

static void bench_storm(void)
{
    pid_t kids[8];
    double t;

    atomic_store(&S->computations, 0);
    atomic_store(&S->go, 0);
    for (int p = 0; p < 8; p++)
        if ((kids[p] = fork()) == 0) {
            ec_client *c;
            ec_results *r = open_ns(&c, "storm", NULL);
            pthread_t th[25];
            for (int i = 0; i < 25; i++)
                pthread_create(&th[i], NULL, storm_thread, r);
            for (int i = 0; i < 25; i++)
                pthread_join(th[i], NULL);
            _exit(0);
        }
    usleep(300000);
    t = now_s();
    atomic_store(&S->go, 1);
    for (int p = 0; p < 8; p++)
        waitpid(kids[p], NULL, 0);
    printf("storm: 1,000 concurrent misses of one key from 8 processes x 25 threads: "
           "%llu computation(s), %.3f s\n",
           (unsigned long long)atomic_load(&S->computations), now_s() - t);
}

struct field {
    const char *name;
    size_t off;
    uint64_t v;
};

static int field_cb(const ec_ns_info *ns, void *arg)
{
    struct field *x = arg;

    if (!strcmp(ns->name, x->name))
        x->v = *(const uint64_t *)(const void *)((const char *)ns + x->off);
    return 0;
}

static uint64_t ns_field(ec_client *c, const char *name, size_t off)
{
    struct field f = {name, off, 0};

    ec_results_list(c, field_cb, &f);
    return f.v;
}

static void bench_negative(void)
{
    ec_ns_opts o = {.flags = EC_NS_CREATE | EC_NS_SHARED, .negative_ttl = 60};
    ec_client *c;
    ec_results *r = open_ns(&c, "neg", &o);
    struct comp neg = {.negative = true}, pos = {0};
    ec_compute_opts co = {.flags = EC_RES_NO_EARLY};
    uint8_t out[256];
    char key[32];
    double t;

    for (int i = 0; i < 1000; i++) {
        int n = snprintf(key, sizeof(key), "real-%d", i);
        ec_results_get_or_compute(r, key, (size_t)n, &co, compute_fn, &pos, out, sizeof(out),
                                  NULL);
    }
    atomic_store(&S->computations, 0);
    t = now_s();
    for (int i = 0; i < 1000000; i++) {
        int n = snprintf(key, sizeof(key), "none-%d", i % 10000);
        if (ec_results_get_or_compute(r, key, (size_t)n, &co, compute_fn, &neg, out,
                                      sizeof(out), NULL) != 1)
            die("negative lookup");
    }
    printf("negative: 1,000,000 lookups of 10,000 keys without an answer: %llu computations "
           "(%.2f per key per negative TTL), %.2f s; real results evicted: %llu\n",
           (unsigned long long)atomic_load(&S->computations),
           (double)atomic_load(&S->computations) / 10000, now_s() - t,
           (unsigned long long)ns_field(c, "neg", offsetof(ec_ns_info, evictions)));
    ec_results_close(r);
    ec_client_close(c);
}

#define AV_KEYS 100000

static ec_results *av_r;

static void *av_reader(void *arg)
{
    struct comp cp = {.sleep_us = 1000};
    ec_compute_opts co = {.flags = EC_RES_NO_EARLY, .wait = 600};
    uint8_t out[256];
    char k[32];
    size_t id = (size_t)arg;

    while (now_s() - S->t0 < 12) {
        for (int i = 0; i < AV_KEYS; i += 97) {
            int n = snprintf(k, sizeof(k), "av-%d", (int)(((size_t)i * 7 + id * 31337) % AV_KEYS));
            if (ec_results_get_or_compute(av_r, k, (size_t)n, &co, compute_fn, &cp, out,
                                          sizeof(out), NULL) != 1)
                _exit(3);
        }
    }
    return NULL;
}

static void bench_avalanche(void)
{
    ec_ns_opts o = {.flags = EC_NS_CREATE | EC_NS_SHARED, .ttl = 3.0, .jitter = 0.1,
                    .stale_ttl = -1, .max_computing = 8};
    ec_client *c;
    ec_results *r = open_ns(&c, "av", &o);
    static uint8_t v[256];
    uint64_t peak_rate = 0;
    char key[32];
    pid_t kids[4];
    double t;

    for (int i = 0; i < AV_KEYS; i++) {
        int n = snprintf(key, sizeof(key), "av-%d", i);
        if (ec_results_put(r, key, (size_t)n, &(ec_result_value){.data = v, .len = sizeof(v)}))
            die("put");
    }
    memset(S->window, 0, sizeof(S->window));
    atomic_store(&S->computations, 0);
    atomic_store(&S->peak, 0);
    S->t0 = now_s();
    t = now_s();
    /* 4 processes x 2 threads read all keys over and over while they expire. */
    for (int p = 0; p < 4; p++)
        if ((kids[p] = fork()) == 0) {
            ec_client *c2;
            av_r = open_ns(&c2, "av", NULL);
            pthread_t th[2];
            for (size_t i = 0; i < 2; i++)
                pthread_create(&th[i], NULL, av_reader, (void *)(i + (size_t)p * 2));
            for (int i = 0; i < 2; i++)
                pthread_join(th[i], NULL);
            _exit(0);
        }
    for (int p = 0; p < 4; p++) {
        int st;
        waitpid(kids[p], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st))
            die("avalanche reader");
    }
    for (int i = 0; i < 4096; i++)
        if (S->window[i] > peak_rate)
            peak_rate = S->window[i];
    printf("avalanche: %d keys (TTL 3 s +-10%%) read by 8 readers for %.1f s: %llu "
           "recomputations, at most %lld at once (limit 8), backend peak %llu per 100 ms\n",
           AV_KEYS, now_s() - t, (unsigned long long)atomic_load(&S->computations),
           (long long)atomic_load(&S->peak), (unsigned long long)peak_rate);
    ec_results_close(r);
    ec_client_close(c);
}

int main(int argc, char **argv)
{
    const char *embcached = NULL;
    int repeats = 5, ops = 200000;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--embcached") && i + 1 < argc)
            embcached = argv[++i];
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc)
            repeats = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ops") && i + 1 < argc)
            ops = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s --embcached PATH [--repeats N (1-31)] [--ops N]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!embcached || repeats < 1 || repeats > 31 || ops < 100) {
        fprintf(stderr, "resultbench: --embcached PATH is required; repeats 1-31, ops >= 100\n");
        return 2;
    }
    snprintf(dir, sizeof(dir), "/tmp/ec-resultbench-XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    snprintf(sock, sizeof(sock), "%s/s.sock", dir);
    snprintf(rsock, sizeof(rsock), "%s/redis.sock", dir);
    S = mmap(NULL, sizeof(*S), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    {
        char data[300];
        snprintf(data, sizeof(data), "%s/data", dir);
        char *dargv[] = {(char *)embcached, "--data-dir", data, "--socket", sock,
                         "--shm-size", "1073741824", NULL};
        char *rargv[] = {"redis-server", "--port", "0", "--unixsocket", rsock, "--save", "",
                         "--appendonly", "no", NULL};
        daemon_pid = start(dargv, sock);
        redis_pid = start(rargv, rsock);
    }
    usleep(200000);
    bench_hit(repeats, ops);
    bench_storm();
    bench_negative();
    bench_avalanche();
    kill(daemon_pid, SIGTERM);
    kill(redis_pid, SIGTERM);
    waitpid(daemon_pid, NULL, 0);
    waitpid(redis_pid, NULL, 0);
    {
        char cmd[400];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        if (system(cmd)) {
        }
    }
    return 0;
}
