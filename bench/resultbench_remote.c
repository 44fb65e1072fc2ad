/*
 * resultbench_remote.c - embcache-resultbench-remote: issue 16's goal for
 * result namespaces shared across hosts, measured. Two daemons ("hosts" A
 * and B on this machine) on one Redis Cluster; CLIENTS client processes
 * (half on each daemon, each its own connection) miss the same key at
 * once and compute it (a sleep of --compute-ms) through
 * ec_results_get_or_compute; repeated for --keys keys. Reported: the
 * computations (a namespace shared across hosts must make exactly one per
 * key) and each client's miss-to-value time (from its call to its value,
 * whether it computed, waited on its host or waited for the other host):
 * median, p99 and range. The same run on a plain shared namespace (no
 * cluster: each host computes its own) is the baseline.
 *
 * Usage: embcache-resultbench-remote --embcached PATH --remote URL
 *        [--keys N] [--clients N] [--compute-ms MS]
 * URL: a running cluster (tests/redis/cluster.sh start DIR PORT starts a
 * loopback one). Starts its daemons in a temporary directory; runs in the
 * calling process and CLIENTS forked ones.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "embcache.h"

#define VAL 4096
#define MAX_CLIENTS 256
#define MAX_KEYS 10000

static char dir[256], sock[2][300];
static pid_t daemons[2];

struct shared {
    _Atomic uint32_t round;      /* clients run key round - 1; futex word */
    _Atomic uint32_t done;       /* clients finished with the current round */
    _Atomic uint64_t computations, wrong, errors;
    uint64_t lat_ns[];           /* [key][client] */
};
static struct shared *S;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void stop_all(void)
{
    for (int i = 0; i < 2; i++)
        if (daemons[i] > 0) {
            kill(daemons[i], SIGTERM);
            waitpid(daemons[i], NULL, 0);
            daemons[i] = 0;
        }
}

static void die(const char *what)
{
    fprintf(stderr, "resultbench-remote: %s: %s\n", what, ec_last_error());
    stop_all();
    exit(1);
}

static pid_t start_daemon(const char *embcached, const char *data, const char *s,
                          const char *remote)
{
    pid_t pid = fork();

    if (pid == 0) {
        char *argv[] = {(char *)embcached, "--data-dir", (char *)data, "--socket", (char *)s,
                        "--shm-size", "268435456", "--no-keeper", "--remote", (char *)remote,
                        NULL};
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        setenv("EMBCACHE_CONFIG", "", 1);
        execvp(argv[0], argv);
        _exit(127);
    }
    for (int i = 0; i < 2000; i++) {
        struct stat st;
        if (stat(s, &st) == 0)
            return pid;
        usleep(10000);
    }
    fprintf(stderr, "resultbench-remote: %s did not start\n", embcached);
    exit(1);
}

static void value_of(const char *key, uint8_t *v, size_t n)
{
    uint64_t s = 1469598103934665603ull;

    for (const char *p = key; *p; p++)
        s = (s ^ (uint8_t)*p) * 1099511628211ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v[i] = (uint8_t)s;
    }
}

struct comp {
    unsigned sleep_us;
    uint8_t buf[VAL];
};

static int compute_fn(void *arg, const void *key, size_t key_len, ec_result_value *out)
{
    struct comp *c = arg;
    char k[64];

    atomic_fetch_add(&S->computations, 1);
    snprintf(k, sizeof(k), "%.*s", (int)key_len, (const char *)key);
    usleep(c->sleep_us);
    value_of(k, c->buf, VAL);
    out->data = c->buf;
    out->len = VAL;
    return 0;
}

static void futex_wait(_Atomic uint32_t *w, uint32_t seen)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT, seen, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *w)
{
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

static void client_main(int id, int clients, int keys, const char *ns, uint32_t nsflags,
                        unsigned compute_us)
{
    static struct comp comp;
    static uint8_t got[VAL], want[VAL];
    ec_ns_opts o = {.flags = EC_NS_CREATE | EC_NS_SHARED | nsflags, .ttl = 3600,
                    .lease_time = 10};
    ec_compute_opts co = {.wait = 60, .flags = EC_RES_NO_EARLY};
    ec_client *c = NULL;
    ec_results *r = NULL;
    ec_result_meta meta;

    comp.sleep_us = compute_us;
    if (ec_client_connect(sock[id % 2], &c) || ec_results_open(c, ns, &o, &r)) {
        fprintf(stderr, "client %d: %s\n", id, ec_last_error());
        _exit(1);
    }
    for (int k = 0; k < keys; k++) {
        char key[32];
        uint64_t t0;
        int rc;
        while (atomic_load(&S->round) < (uint32_t)k + 1)
            futex_wait(&S->round, (uint32_t)k);
        snprintf(key, sizeof(key), "key-%d", k);
        t0 = now_ns();
        rc = ec_results_get_or_compute(r, key, strlen(key), &co, compute_fn, &comp, got,
                                       sizeof(got), &meta);
        S->lat_ns[(size_t)k * (size_t)clients + (size_t)id] = now_ns() - t0;
        value_of(key, want, VAL);
        if (rc != 1)
            atomic_fetch_add(&S->errors, 1);
        else if (meta.len != VAL || memcmp(got, want, VAL))
            atomic_fetch_add(&S->wrong, 1);
        atomic_fetch_add(&S->done, 1);
        futex_wake(&S->done);
    }
    ec_results_close(r);
    ec_client_close(c);
    _exit(0);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* One scenario; prints its line. */
static void run(const char *label, uint32_t nsflags, int clients, int keys, unsigned compute_ms)
{
    size_t n = (size_t)keys * (size_t)clients;
    pid_t pids[MAX_CLIENTS];
    char ns[64];
    uint64_t *lat, t0, wall;
    double med, p99, lo, hi, loser_med;

    snprintf(ns, sizeof(ns), "bench.%s.%d", label, (int)getpid());
    memset(S, 0, sizeof(*S) + n * sizeof(uint64_t));
    for (int i = 0; i < clients; i++) {
        pids[i] = fork();
        if (pids[i] < 0)
            die("fork");
        if (pids[i] == 0)
            client_main(i, clients, keys, ns, nsflags, compute_ms * 1000u);
    }
    usleep(500000); /* every client connected and opened the namespace */
    t0 = now_ns();
    for (int k = 0; k < keys; k++) {
        uint32_t want = (uint32_t)(k + 1) * (uint32_t)clients, d;
        atomic_store(&S->round, (uint32_t)k + 1);
        futex_wake(&S->round);
        while ((d = atomic_load(&S->done)) < want)
            futex_wait(&S->done, d);
    }
    wall = now_ns() - t0;
    for (int i = 0; i < clients; i++) {
        int st;
        if (waitpid(pids[i], &st, 0) != pids[i] || !WIFEXITED(st) || WEXITSTATUS(st))
            atomic_fetch_add(&S->errors, 1);
    }
    lat = malloc(n * sizeof(*lat));
    if (!lat)
        die("malloc");
    memcpy(lat, S->lat_ns, n * sizeof(*lat));
    qsort(lat, n, sizeof(*lat), cmp_u64);
    med = (double)lat[n / 2] / 1e6;
    p99 = (double)lat[n * 99 / 100] / 1e6;
    lo = (double)lat[0] / 1e6;
    hi = (double)lat[n - 1] / 1e6;
    /* What the cache adds to the computation's own time, at the median. */
    loser_med = med - compute_ms;
    printf("%-6s %d keys x %d clients (2 hosts x %d), compute %u ms: %llu computations "
           "(%.2f per key), %llu wrong, %llu errors; miss-to-value median %.2f ms, p99 %.2f ms, "
           "range %.2f..%.2f ms; median over the computation %.2f ms; wall %.2f s\n",
           label, keys, clients, clients / 2, compute_ms,
           (unsigned long long)S->computations, (double)S->computations / keys,
           (unsigned long long)S->wrong, (unsigned long long)S->errors, med, p99, lo, hi,
           loser_med, (double)wall / 1e9);
    fflush(stdout);
    free(lat);
}

int main(int argc, char **argv)
{
    const char *embcached = NULL, *remote = NULL;
    int keys = 50, clients = 64;
    unsigned compute_ms = 20;
    char data[2][300];

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--embcached") && i + 1 < argc)
            embcached = argv[++i];
        else if (!strcmp(argv[i], "--remote") && i + 1 < argc)
            remote = argv[++i];
        else if (!strcmp(argv[i], "--keys") && i + 1 < argc)
            keys = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--clients") && i + 1 < argc)
            clients = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--compute-ms") && i + 1 < argc)
            compute_ms = (unsigned)atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s --embcached PATH --remote redis-cluster://HOST:PORT "
                            "[--keys N] [--clients N (even)] [--compute-ms MS]\n", argv[0]);
            return 2;
        }
    }
    if (!embcached || !remote || keys < 1 || keys > MAX_KEYS || clients < 2 ||
        clients > MAX_CLIENTS || clients % 2) {
        fprintf(stderr, "resultbench-remote: needs --embcached and --remote; 1..%d keys, an "
                        "even 2..%d clients\n", MAX_KEYS, MAX_CLIENTS);
        return 2;
    }
    S = mmap(NULL, sizeof(*S) + (size_t)keys * (size_t)clients * sizeof(uint64_t),
             PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (S == MAP_FAILED)
        die("mmap");
    snprintf(dir, sizeof(dir), "/tmp/ec-rbremote-XXXXXX");
    if (!mkdtemp(dir))
        die("mkdtemp");
    for (int i = 0; i < 2; i++) {
        snprintf(data[i], sizeof(data[i]), "%s/%c-data", dir, 'a' + i);
        snprintf(sock[i], sizeof(sock[i]), "%s/%c.sock", dir, 'a' + i);
        daemons[i] = start_daemon(embcached, data[i], sock[i], remote);
    }
    printf("# embcache-resultbench-remote: %d clients miss one key at once on 2 daemons "
           "(%d each) sharing a Redis Cluster, %d keys in turn\n", clients, clients / 2, keys);
    printf("# command:");
    for (int i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    printf("\n");
    run("remote", EC_NS_REMOTE, clients, keys, compute_ms);
    run("local", 0, clients, keys, compute_ms);
    stop_all();
    {
        char cmd[400];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "resultbench-remote: could not remove %s\n", dir);
    }
    return 0;
}
