/*
 * remotebench.c - how fast the remote tier can read a published model
 * version from a Redis Cluster, next to the cluster's own limit, in the same
 * run (issue 16: remote-tier reads at least 0.8x of pipelined GETs of the
 * same bytes against the same cluster).
 *
 * The keys are the chunks `embcache publish` wrote (core/publish.h:
 * ec:c:MODEL:VERSION:T:P:K), found with SCAN on every master of CLUSTER
 * SLOTS, so the bench needs nothing but the cluster. Systems, each reading
 * every key once per pass:
 *
 *   rcluster_mget      our client (core/rcluster.h): T threads, each with
 *                      its own handle, taking batches of K keys (in publish
 *                      order: tensor, partition, chunk) from a shared
 *                      counter, one ec_rcluster_mget per batch, each value
 *                      copied into the thread's buffer. The remote tier
 *                      (core/pager_remote.c, core/rpool.c) does that with
 *                      T = --remote-threads (default 4) and K = the chunks
 *                      of one partition (1 with the default partitions of
 *                      1 MiB): --tier-threads and --tier-batch (4 and 1),
 *                      measured first; then every --threads (1,4) x
 *                      --batch (1,8,64), for the shape of it. (The daemon
 *                      also caps its jobs in flight at twice its workers;
 *                      only the daemon_tier hook will see that.)
 *   hiredis_pipelined  the baseline, not our client: one thread per master,
 *                      each with a hiredis connection to its master, GETs of
 *                      the keys that master owns pipelined --depth deep
 *                      (redisAppendCommand ahead, redisGetReply), replies
 *                      freed unread; at each --depth (default 1,2,8,64):
 *                      the best depth of a run is the cluster's own limit
 *                      in that run (the depth matters: with 1 MiB values on
 *                      loopback, one GET at a time per master is fastest and
 *                      64 in flight the slowest, on a 2-vCPU VM).
 *   daemon_tier        with --daemon SOCKET: rows of --tensor read through
 *                      a daemon whose version was pulled lazily and which
 *                      keeps nothing on disk, the version evicted before
 *                      each pass, --daemon-threads client threads (4)
 *                      gathering (ec_tensor_gather) into buffers of their
 *                      own: the remote tier plus the client's copy.
 *   daemon_view        the same daemon, the same eviction, the whole tensor
 *                      taken as one view (ec_tensor_view): the remote tier
 *                      alone, its bytes delivered into the segment the
 *                      client reads, as the baseline's land in hiredis's
 *                      reply buffers. Per-run ratios of both to the cluster
 *                      limit are printed: issue 16's goal is about them.
 *
 * Before timing, one untimed pass of each system computes every value's
 * XXH3-64: both must agree key for key (else exit 1). Then --runs runs,
 * systems interleaved within a run (so drift hits both alike); a run is
 * P passes, P fixed for the whole bench so that every run of every
 * system reads the same bytes, chosen from an untimed warm-up pass of
 * each (the slower one) to last about --seconds. A run's rate is bytes /
 * wall time (first request to last reply), MB = 10^6 bytes. Prints each
 * run, then per configuration the median and range, the cluster limit
 * (per run, the best baseline depth) and the per-run ratio of
 * rcluster_mget at --tier-batch to it: issue 16's figure.
 *
 * Run by bench/run-remotebench.sh (a loopback cluster of cluster.sh, a
 * daemon, a published model) or by hand against any published version:
 *   embcache-remotebench --url redis-cluster://H:P[,H:P] --model M --version V
 *       [--runs N] [--seconds S] [--batch K,K..] [--tier-batch K] [--depth D,D..]
 *       [--daemon SOCKET [--tensor NAME] [--daemon-threads T]]
 * One process; the baseline's threads each own their connection.
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "core/rcluster.h"
#include "embcache.h"

uint64_t ec_checksum(const void *buf, size_t len); /* core/partfile.c: XXH3-64 */

#define MAX_MASTERS 64
#define MAX_THREADS 16

struct master {
    char host[EC_RCLUSTER_HOST_MAX];
    int port;
    uint16_t lo[64], hi[64]; /* slot ranges */
    int nranges;
    size_t *idx; /* its keys */
    size_t n;
};

struct bench {
    const char *url, *model, *version, *daemon;
    unsigned runs;
    double seconds;
    size_t batch, depth, max_batch; /* of the configuration being run */
    unsigned threads;
    struct master m[MAX_MASTERS];
    int nm;
    char **keys;
    size_t *klen, nkeys;
    uint64_t *vlen, *sum; /* per key, from the untimed baseline pass */
    uint64_t pass_bytes, max_val;
    unsigned passes; /* per run */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "embcache-remotebench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* ---- discovery ------------------------------------------------------- */

static redisContext *connect_node(const char *host, int port)
{
    struct timeval tv = {.tv_sec = 2};
    redisContext *c = redisConnectWithTimeout(host, port, tv);

    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    tv.tv_sec = 30;
    redisSetTimeout(c, tv);
    return c;
}

/* The masters and their slots, from CLUSTER SLOTS of the first seed that answers. */
static void load_masters(struct bench *b)
{
    ec_rcluster_addr seeds[EC_RCLUSTER_MAX_SEEDS];
    size_t ns = 0;
    redisReply *r = NULL;

    if (ec_rcluster_parse_seeds(b->url, seeds, EC_RCLUSTER_MAX_SEEDS, &ns))
        die("--url: %s", ec_last_error());
    for (size_t i = 0; i < ns && !r; i++) {
        redisContext *c = connect_node(seeds[i].host, seeds[i].port);
        if (!c)
            continue;
        r = redisCommand(c, "CLUSTER SLOTS");
        if (r && r->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(r);
            r = NULL;
        }
        redisFree(c);
    }
    if (!r)
        die("no seed of %s answered CLUSTER SLOTS", b->url);
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i], *node;
        int k;
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2)
            die("%s", "a CLUSTER SLOTS entry of an unexpected form");
        node = e->element[2];
        for (k = 0; k < b->nm; k++)
            if (!strcmp(b->m[k].host, node->element[0]->str) &&
                b->m[k].port == (int)node->element[1]->integer)
                break;
        if (k == b->nm) {
            if (b->nm == MAX_MASTERS)
                die("%s", "more than 64 masters");
            snprintf(b->m[k].host, sizeof(b->m[k].host), "%s", node->element[0]->str);
            b->m[k].port = (int)node->element[1]->integer;
            b->nm++;
        }
        if (b->m[k].nranges == 64)
            die("%s", "a master with more than 64 slot ranges");
        b->m[k].lo[b->m[k].nranges] = (uint16_t)e->element[0]->integer;
        b->m[k].hi[b->m[k].nranges++] = (uint16_t)e->element[1]->integer;
    }
    freeReplyObject(r);
}

static int owner(const struct bench *b, uint16_t slot)
{
    for (int k = 0; k < b->nm; k++)
        for (int j = 0; j < b->m[k].nranges; j++)
            if (slot >= b->m[k].lo[j] && slot <= b->m[k].hi[j])
                return k;
    return -1;
}

/* "ec:c:M:V:T:P:K" -> its (T, P, K) for the publish order. */
static void tpk(const char *key, uint64_t out[3])
{
    const char *s = key + strlen(key);
    for (int i = 2; i >= 0; i--) {
        while (s > key && s[-1] != ':')
            s--;
        out[i] = strtoull(s, NULL, 10);
        if (s > key)
            s--;
    }
}

static int cmp_keys(const void *a, const void *b)
{
    uint64_t x[3], y[3];
    tpk(*(char *const *)a, x);
    tpk(*(char *const *)b, y);
    for (int i = 0; i < 3; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    return 0;
}

/* Every chunk key of the version, from SCAN on each master. */
static void load_keys(struct bench *b)
{
    char pattern[600];
    size_t cap = 1024;

    snprintf(pattern, sizeof(pattern), "ec:c:%s:%s:*", b->model, b->version);
    b->keys = malloc(cap * sizeof(*b->keys));
    for (int k = 0; k < b->nm; k++) {
        redisContext *c = connect_node(b->m[k].host, b->m[k].port);
        char cursor[32] = "0";
        if (!c)
            die("cannot connect to master %s", b->m[k].host);
        do {
            redisReply *r = redisCommand(c, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
            if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2)
                die("SCAN on %s failed", b->m[k].host);
            snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
            for (size_t i = 0; i < r->element[1]->elements; i++) {
                if (b->nkeys == cap)
                    b->keys = realloc(b->keys, (cap *= 2) * sizeof(*b->keys));
                b->keys[b->nkeys++] = strdup(r->element[1]->element[i]->str);
            }
            freeReplyObject(r);
        } while (strcmp(cursor, "0") != 0);
        redisFree(c);
    }
    if (!b->nkeys)
        die("no key matches %s: publish the version first", pattern);
    qsort(b->keys, b->nkeys, sizeof(*b->keys), cmp_keys);
    b->klen = malloc(b->nkeys * sizeof(*b->klen));
    b->vlen = calloc(b->nkeys, sizeof(*b->vlen));
    b->sum = calloc(b->nkeys, sizeof(*b->sum));
    for (int k = 0; k < b->nm; k++)
        b->m[k].idx = malloc(b->nkeys * sizeof(size_t));
    for (size_t i = 0; i < b->nkeys; i++) {
        int k;
        b->klen[i] = strlen(b->keys[i]);
        k = owner(b, ec_rcluster_keyslot(b->keys[i], b->klen[i]));
        if (k < 0)
            die("key %s is in a slot no master serves", b->keys[i]);
        b->m[k].idx[b->m[k].n++] = i;
    }
}

static void free_keys(struct bench *b)
{
    for (size_t i = 0; i < b->nkeys; i++)
        free(b->keys[i]);
    free(b->keys);
    free(b->klen);
    free(b->vlen);
    free(b->sum);
    for (int k = 0; k < b->nm; k++)
        free(b->m[k].idx);
}

/* ---- hiredis_pipelined ------------------------------------------------ */

struct hw {
    struct bench *b;
    struct master *m;
    redisContext *c;
    unsigned passes;
    bool verify;
    uint64_t bytes;
    int failed;
};

static void *hw_main(void *arg)
{
    struct hw *w = arg;
    struct bench *b = w->b;
    size_t n = w->m->n;

    for (unsigned p = 0; p < w->passes; p++) {
        size_t sent = 0, got = 0;
        while (got < n) {
            redisReply *r;
            while (sent < n && sent - got < b->depth) {
                size_t i = w->m->idx[sent++];
                redisAppendCommand(w->c, "GET %b", b->keys[i], b->klen[i]);
            }
            if (redisGetReply(w->c, (void **)&r) != REDIS_OK || !r) {
                w->failed = 1;
                return NULL;
            }
            if (r->type != REDIS_REPLY_STRING) {
                w->failed = 2;
                freeReplyObject(r);
                return NULL;
            }
            w->bytes += r->len;
            if (w->verify) {
                size_t i = w->m->idx[got];
                b->vlen[i] = r->len;
                b->sum[i] = ec_checksum(r->str, r->len);
            }
            freeReplyObject(r);
            got++;
        }
    }
    return NULL;
}

static uint64_t run_hiredis(struct bench *b, unsigned passes, bool verify)
{
    static struct hw w[MAX_MASTERS];
    static pthread_t th[MAX_MASTERS];
    static bool connected;
    uint64_t bytes = 0;

    if (!connected) {
        for (int k = 0; k < b->nm; k++) {
            w[k] = (struct hw){.b = b, .m = &b->m[k]};
            if (!(w[k].c = connect_node(b->m[k].host, b->m[k].port)))
                die("baseline: cannot connect to %s", b->m[k].host);
        }
        connected = true;
    }
    for (int k = 0; k < b->nm; k++) {
        w[k].passes = passes;
        w[k].verify = verify;
        w[k].bytes = 0;
        pthread_create(&th[k], NULL, hw_main, &w[k]);
    }
    for (int k = 0; k < b->nm; k++) {
        pthread_join(th[k], NULL);
        if (w[k].failed)
            die("baseline: a GET on %s failed or was not a string", b->m[k].host);
        bytes += w[k].bytes;
    }
    return bytes;
}

/* ---- rcluster_mget ---------------------------------------------------- */

/* One thread of ours: its own handle (handles are single-threaded, as in
 * the daemon's core/rpool.c) and its own batch buffer. */
struct rworker {
    struct bench *b;
    ec_rcluster *rc;
    uint8_t *arena;
    size_t first;      /* the key index of the current batch */
    uint64_t bytes;
    unsigned passes;
    bool verify;
    int failed;
    char msg[EC_ERRMSG_MAX];
};

static _Atomic uint64_t next_item; /* pass * batches + batch, shared by the threads */

static void on_value(void *arg, size_t i, int status, const void *val, size_t len,
                     const char *msg)
{
    struct rworker *x = arg;
    struct bench *b = x->b;
    size_t k = x->first + i;

    if (status != 0 || len > b->max_val) {
        x->failed = status ? status : EC_ETOOBIG;
        snprintf(x->msg, sizeof(x->msg), "%s", msg ? msg : "value too long");
        return;
    }
    /* The copy the tier makes: into its destination, here the batch buffer. */
    memcpy(x->arena + i * b->max_val, val, len);
    x->bytes += len;
    if (x->verify && (len != b->vlen[k] || ec_checksum(val, len) != b->sum[k])) {
        x->failed = EC_ECHECKSUM;
        snprintf(x->msg, sizeof(x->msg), "key %s: other bytes than the baseline read",
                 b->keys[k]);
    }
}

static void *rw_main(void *arg)
{
    struct rworker *x = arg;
    struct bench *b = x->b;
    uint64_t nb = (b->nkeys + b->batch - 1) / b->batch;

    for (;;) {
        uint64_t item = atomic_fetch_add_explicit(&next_item, 1, memory_order_relaxed);
        size_t i, n;
        if (item >= nb * x->passes)
            break;
        i = (size_t)(item % nb) * b->batch;
        n = b->nkeys - i < b->batch ? b->nkeys - i : b->batch;
        x->first = i;
        if (ec_rcluster_mget(x->rc, (const char *const *)b->keys + i, b->klen + i, n, on_value,
                             x) && !x->failed) {
            x->failed = EC_EIO;
            snprintf(x->msg, sizeof(x->msg), "%s", ec_last_error());
        }
        if (x->failed)
            break;
    }
    return NULL;
}

static uint64_t run_rcluster(struct bench *b, unsigned passes, bool verify)
{
    static struct rworker w[MAX_THREADS];
    static pthread_t th[MAX_THREADS];
    uint64_t bytes = 0;

    atomic_store_explicit(&next_item, 0, memory_order_relaxed);
    for (unsigned t = 0; t < b->threads; t++) {
        if (!w[t].rc) {
            if (ec_rcluster_open(b->url, NULL, &w[t].rc))
                die("ec_rcluster_open: %s", ec_last_error());
            if (!(w[t].arena = malloc(b->max_batch * (b->max_val ? b->max_val : 1))))
                die("%s", "no memory for a batch buffer");
        }
        w[t].b = b;
        w[t].bytes = 0;
        w[t].passes = passes;
        w[t].verify = verify;
        w[t].failed = 0;
    }
    if (b->threads == 1) {
        rw_main(&w[0]);
    } else {
        for (unsigned t = 0; t < b->threads; t++)
            pthread_create(&th[t], NULL, rw_main, &w[t]);
        for (unsigned t = 0; t < b->threads; t++)
            pthread_join(th[t], NULL);
    }
    for (unsigned t = 0; t < b->threads; t++) {
        if (w[t].failed)
            die("rcluster_mget: %s (%s)", ec_strerror(w[t].failed), w[t].msg);
        bytes += w[t].bytes;
    }
    return bytes;
}

/* ---- daemon_tier: reads through the daemon ------------------------------ */

/*
 * The remote tier as a client sees it: a daemon (--daemon SOCKET) whose
 * version was pulled with `embcache pull --lazy` and runs with remote-keep
 * false, so that its partition files stay holes. A pass evicts the version
 * (ec_model_evict), then `threads` client threads gather every row of the
 * tensor, each a contiguous share in gathers of DT_GATHER_BYTES: every
 * partition is a miss the daemon reads from the cluster (pager_remote.c),
 * verifies and serves. The daemon's remote_bytes must grow by the table's
 * bytes each pass, or the pass did not measure the remote tier (checked).
 */
#define DT_GATHER_BYTES ((size_t)8 << 20)

typedef uint64_t (*pass_fn)(struct bench *b, unsigned passes, bool verify);

static ec_client *dt_client;
static ec_tensor *dt_tensor;
static ec_tensor_info dt_info;

struct dt_worker {
    uint64_t first, last; /* rows [first, last) */
    int failed;
    char msg[EC_ERRMSG_MAX];
};

static void *dt_main(void *arg)
{
    struct dt_worker *w = arg;
    size_t per = DT_GATHER_BYTES / dt_info.row_bytes ? DT_GATHER_BYTES / dt_info.row_bytes : 1;
    int64_t *ids = malloc(per * sizeof(*ids));
    void *out = malloc(per * dt_info.row_bytes);

    if (!ids || !out) {
        w->failed = EC_ENOMEM;
        snprintf(w->msg, sizeof(w->msg), "out of memory");
    }
    for (uint64_t r = w->first; !w->failed && r < w->last; r += per) {
        size_t n = (size_t)(w->last - r < per ? w->last - r : per);
        for (size_t i = 0; i < n; i++)
            ids[i] = (int64_t)(r + i);
        w->failed = ec_tensor_gather(dt_tensor, ids, n, out, n * dt_info.row_bytes);
        if (w->failed)
            snprintf(w->msg, sizeof(w->msg), "%s", ec_last_error());
    }
    free(ids);
    free(out);
    return NULL;
}

static int dt_stat(const char *name, uint64_t value, void *arg)
{
    if (!strcmp(name, "remote_bytes"))
        *(uint64_t *)arg = value;
    return 0;
}

static uint64_t dt_remote_bytes(void)
{
    uint64_t v = UINT64_MAX;
    if (ec_client_stats(dt_client, dt_stat, &v) || v == UINT64_MAX)
        die("daemon stats: %s (no remote_bytes: is this daemon built with the remote tier?)",
            ec_last_error());
    return v;
}

/* Every row of the tensor, read by `threads` gathering threads. */
static void dt_gather_all(const struct bench *b)
{
    struct dt_worker w[MAX_THREADS];
    pthread_t th[MAX_THREADS];

    for (unsigned t = 0; t < b->threads; t++) {
        w[t] = (struct dt_worker){.first = dt_info.rows * t / b->threads,
                                  .last = dt_info.rows * (t + 1) / b->threads};
        if (pthread_create(&th[t], NULL, dt_main, &w[t]))
            die("%s", "pthread_create");
    }
    for (unsigned t = 0; t < b->threads; t++)
        pthread_join(th[t], NULL);
    for (unsigned t = 0; t < b->threads; t++)
        if (w[t].failed)
            die("daemon_tier: gather: %s (%s)", ec_strerror(w[t].failed), w[t].msg);
}

/* The whole tensor as one view (the zero-copy read): the daemon reads every
 * partition into the segment; the client's pointer is the delivery. */
static void dt_view_all(const struct bench *b)
{
    ec_view *v;

    (void)b;
    if (ec_tensor_view(dt_tensor, &v))
        die("daemon_view: view: %s", ec_last_error());
    if (ec_view_size(v) != dt_info.rows * dt_info.row_bytes)
        die("daemon_view: a view of %zu bytes, not the table's", ec_view_size(v));
    ec_view_release(v);
}

/* Passes of read(b), each after evicting the version, each checked to have
 * read the whole table from the cluster. */
static uint64_t dt_passes(struct bench *b, unsigned passes, void (*read)(const struct bench *))
{
    uint64_t table = dt_info.rows * dt_info.row_bytes, bytes = 0;

    for (unsigned p = 0; p < passes; p++) {
        uint64_t before;
        if (ec_model_evict(dt_client, b->model, b->version, NULL))
            die("evict %s %s: %s", b->model, b->version, ec_last_error());
        before = dt_remote_bytes();
        read(b);
        if (dt_remote_bytes() - before < table)
            die("daemon_tier: the daemon read %" PRIu64 " bytes from the cluster in a pass, "
                "fewer than the table's %" PRIu64 ": partitions were served from memory or "
                "disk (pull --lazy, run it with --remote-keep false)",
                dt_remote_bytes() - before, table);
        bytes += table;
    }
    return bytes;
}

static uint64_t daemon_tier_pass(struct bench *b, unsigned passes, bool verify)
{
    (void)verify; /* the daemon verifies every partition against its checksum */
    return dt_passes(b, passes, dt_gather_all);
}

static uint64_t daemon_view_pass(struct bench *b, unsigned passes, bool verify)
{
    (void)verify;
    return dt_passes(b, passes, dt_view_all);
}

/* Connect to --daemon and resolve the tensor; false without --daemon. */
static bool daemon_tier_ready(const struct bench *b, const char *tensor)
{
    if (!b->daemon)
        return false;
    if (ec_client_connect(b->daemon, &dt_client))
        die("--daemon %s: %s", b->daemon, ec_last_error());
    if (ec_tensor_resolve(dt_client, b->model, b->version, tensor, &dt_tensor) ||
        ec_tensor_info_get(dt_tensor, &dt_info))
        die("--daemon %s: tensor %s of %s %s: %s", b->daemon, tensor, b->model, b->version,
            ec_last_error());
    return true;
}

/* ---- main ------------------------------------------------------------- */

#define MAX_LIST 8
#define MAX_CONF (MAX_LIST * MAX_LIST + MAX_LIST + 1)
#define MAX_RUNS 64

/* One measured configuration: a system and its parameters. */
struct conf {
    const char *name;
    pass_fn fn;
    size_t batch, depth;
    unsigned threads;
    double mbps[MAX_RUNS], cpu[MAX_RUNS];
};

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, unsigned n)
{
    double s[MAX_RUNS];
    memcpy(s, v, n * sizeof(double));
    qsort(s, n, sizeof(double), cmp_d);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static void range(const double *v, unsigned n, double *lo, double *hi)
{
    *lo = *hi = v[0];
    for (unsigned i = 1; i < n; i++) {
        *lo = v[i] < *lo ? v[i] : *lo;
        *hi = v[i] > *hi ? v[i] : *hi;
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: embcache-remotebench --url redis-cluster://H:P[,H:P] --model M "
                    "--version V [--runs N] [--seconds S] [--threads T[,T...]] "
                    "[--batch K[,K...]] [--tier-threads T] [--tier-batch K] "
                    "[--depth D[,D...]] [--daemon SOCKET]\n");
    exit(2);
}

/* "8,16,64" -> values (each 1..max), at most MAX_LIST. */
static size_t parse_list(const char *s, size_t *out, size_t max)
{
    size_t n = 0;
    char *end;

    while (*s && n < MAX_LIST) {
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || (size_t)v > max || (*end && *end != ','))
            usage();
        out[n++] = (size_t)v;
        s = *end ? end + 1 : end;
    }
    if (!n || *s)
        usage();
    return n;
}

static void conf_name(const struct conf *c, char *buf, size_t len)
{
    if (c->fn == run_hiredis)
        snprintf(buf, len, "%s depth=%zu", c->name, c->depth);
    else if (c->fn == run_rcluster)
        snprintf(buf, len, "%s threads=%u batch=%zu", c->name, c->threads, c->batch);
    else
        snprintf(buf, len, "%s", c->name);
}

static void set_conf(struct bench *b, const struct conf *c)
{
    b->batch = c->batch ? c->batch : 1;
    b->depth = c->depth ? c->depth : 1;
    b->threads = c->threads ? c->threads : 1;
}

int main(int argc, char **argv)
{
    struct bench b = {.runs = 7, .seconds = 2.0};
    size_t batches[MAX_LIST] = {1, 8, 64}, depths[MAX_LIST] = {1, 2, 8, 64};
    size_t threads[MAX_LIST] = {1, 4}, nbatch = 3, ndepth = 4, nthreads = 2;
    size_t tier_batch = 1, tier_threads = 4;
    static struct conf cf[MAX_CONF];
    int ncf = 0, tier = -1;
    bool daemon_on;
    double ratio[MAX_RUNS], dratio[MAX_RUNS], vratio[MAX_RUNS], limit[MAX_RUNS], t, lo, hi;
    const char *dt_name = "emb";
    size_t dt_threads = 4;
    int dtc = -1;
    char nm[80];

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        if (!strcmp(a, "--url"))
            b.url = v;
        else if (!strcmp(a, "--model"))
            b.model = v;
        else if (!strcmp(a, "--version"))
            b.version = v;
        else if (!strcmp(a, "--daemon"))
            b.daemon = v;
        else if (!strcmp(a, "--tensor"))
            dt_name = v;
        else if (!strcmp(a, "--daemon-threads"))
            parse_list(v, &dt_threads, MAX_THREADS);
        else if (!strcmp(a, "--runs"))
            b.runs = (unsigned)atoi(v);
        else if (!strcmp(a, "--seconds"))
            b.seconds = atof(v);
        else if (!strcmp(a, "--threads"))
            nthreads = parse_list(v, threads, MAX_THREADS);
        else if (!strcmp(a, "--batch"))
            nbatch = parse_list(v, batches, EC_RCLUSTER_MAX_KEYS);
        else if (!strcmp(a, "--tier-threads"))
            parse_list(v, &tier_threads, MAX_THREADS);
        else if (!strcmp(a, "--tier-batch"))
            parse_list(v, &tier_batch, EC_RCLUSTER_MAX_KEYS);
        else if (!strcmp(a, "--depth"))
            ndepth = parse_list(v, depths, 1u << 20);
        else
            usage();
        i++;
    }
    if (!b.url || !b.model || !b.version || b.runs < 1 || b.runs > MAX_RUNS || b.seconds <= 0)
        usage();

    /* The configurations: ours at each threads x batch (the tier's first),
     * the baseline at each depth, the daemon hook when it can run. */
    cf[ncf++] = (struct conf){.name = "rcluster_mget", .fn = run_rcluster,
                              .threads = (unsigned)tier_threads, .batch = tier_batch};
    tier = 0;
    b.max_batch = tier_batch;
    for (size_t i = 0; i < nthreads; i++)
        for (size_t j = 0; j < nbatch; j++) {
            b.max_batch = batches[j] > b.max_batch ? batches[j] : b.max_batch;
            if (threads[i] == tier_threads && batches[j] == tier_batch)
                continue;
            cf[ncf++] = (struct conf){.name = "rcluster_mget", .fn = run_rcluster,
                                      .threads = (unsigned)threads[i], .batch = batches[j]};
        }
    for (size_t i = 0; i < ndepth; i++)
        cf[ncf++] = (struct conf){.name = "hiredis_pipelined", .fn = run_hiredis,
                                  .depth = depths[i]};
    if ((daemon_on = daemon_tier_ready(&b, dt_name))) {
        dtc = ncf;
        cf[ncf++] = (struct conf){.name = "daemon_tier", .fn = daemon_tier_pass,
                                  .threads = (unsigned)dt_threads};
        cf[ncf++] = (struct conf){.name = "daemon_view", .fn = daemon_view_pass};
    }

    load_masters(&b);
    load_keys(&b);

    /* Untimed: the baseline records every value's length and XXH3-64, our
     * client (one thread) must read the same. */
    b.depth = depths[0];
    b.pass_bytes = run_hiredis(&b, 1, true);
    for (size_t i = 0; i < b.nkeys; i++)
        b.max_val = b.vlen[i] > b.max_val ? b.vlen[i] : b.max_val;
    b.threads = 1;
    b.batch = b.max_batch;
    if (run_rcluster(&b, 1, true) != b.pass_bytes)
        die("%s", "rcluster_mget read a different number of bytes than the baseline");
    /* One unverified pass of each configuration (a warm-up): the slowest
     * sets the passes per run. */
    t = 0;
    for (int c = 0; c < ncf; c++) {
        double t1 = now_s();
        set_conf(&b, &cf[c]);
        cf[c].fn(&b, 1, false);
        t1 = now_s() - t1;
        t = t1 > t ? t1 : t;
    }
    b.passes = (unsigned)(b.seconds / (t > 1e-3 ? t : 1e-3));
    b.passes = b.passes < 1 ? 1 : b.passes;

    printf("# embcache-remotebench: url=%s model=%s version=%s keys=%zu masters=%d "
           "bytes_per_pass=%" PRIu64 " largest_value=%" PRIu64 " runs=%u passes_per_run=%u "
           "seconds_target=%.1f tier=threads %zu batch %zu configurations=%d\n",
           b.url, b.model, b.version, b.nkeys, b.nm, b.pass_bytes, b.max_val, b.runs, b.passes,
           b.seconds, tier_threads, tier_batch, ncf);
    for (int k = 0; k < b.nm; k++)
        printf("# master %s:%d: %zu keys\n", b.m[k].host, b.m[k].port, b.m[k].n);
    printf("# verified: both systems read the same %zu values (length and XXH3-64)\n",
           b.nkeys);
    if (!daemon_on)
        printf("# daemon_tier: not measured (no --daemon)\n");
    fflush(stdout);

    for (unsigned r = 0; r < b.runs; r++) {
        limit[r] = 0;
        for (int c = 0; c < ncf; c++) {
            uint64_t bytes;
            double c0, w;
            set_conf(&b, &cf[c]);
            c0 = cpu_s();
            t = now_s();
            bytes = cf[c].fn(&b, b.passes, false);
            w = now_s() - t;
            cf[c].cpu[r] = cpu_s() - c0;
            conf_name(&cf[c], nm, sizeof(nm));
            if (bytes != b.pass_bytes * b.passes)
                die("%s read a different number of bytes", nm);
            cf[c].mbps[r] = (double)bytes / w / 1e6;
            printf("run %u %-36s MBps=%8.1f seconds=%.3f bytes=%" PRIu64 " cpu_s=%.3f\n", r + 1,
                   nm, cf[c].mbps[r], w, bytes, cf[c].cpu[r]);
            if (cf[c].fn == run_hiredis && cf[c].mbps[r] > limit[r])
                limit[r] = cf[c].mbps[r];
        }
        ratio[r] = cf[tier].mbps[r] / limit[r];
        if (daemon_on) {
            dratio[r] = cf[dtc].mbps[r] / limit[r];
            vratio[r] = cf[dtc + 1].mbps[r] / limit[r];
        }
        fflush(stdout);
    }
    for (int c = 0; c < ncf; c++) {
        conf_name(&cf[c], nm, sizeof(nm));
        range(cf[c].mbps, b.runs, &lo, &hi);
        printf("%-36s median_MBps=%8.1f min=%8.1f max=%8.1f  cpu_s_per_GB median=%.3f%s\n", nm,
               median(cf[c].mbps, b.runs), lo, hi,
               median(cf[c].cpu, b.runs) / ((double)b.pass_bytes * b.passes / 1e9),
               c == tier ? "  (the tier's)" : "");
    }
    range(limit, b.runs, &lo, &hi);
    printf("cluster limit (best hiredis_pipelined depth of each run) median_MBps=%.1f min=%.1f "
           "max=%.1f\n",
           median(limit, b.runs), lo, hi);
    range(ratio, b.runs, &lo, &hi);
    printf("ratio rcluster_mget threads=%zu batch=%zu / cluster limit: median=%.3f min=%.3f "
           "max=%.3f  (per run, %u runs; goal >= 0.8)\n",
           tier_threads, tier_batch, median(ratio, b.runs), lo, hi, b.runs);
    if (daemon_on) {
        range(dratio, b.runs, &lo, &hi);
        printf("ratio daemon_tier threads=%zu / cluster limit: median=%.3f min=%.3f max=%.3f  "
               "(per run, %u runs; goal >= 0.8)\n",
               dt_threads, median(dratio, b.runs), lo, hi, b.runs);
        range(vratio, b.runs, &lo, &hi);
        printf("ratio daemon_view / cluster limit: median=%.3f min=%.3f max=%.3f  "
               "(per run, %u runs; goal >= 0.8)\n",
               median(vratio, b.runs), lo, hi, b.runs);
    }
    ec_tensor_release(dt_tensor);
    ec_client_close(dt_client);
    free_keys(&b);
    return 0;
}
