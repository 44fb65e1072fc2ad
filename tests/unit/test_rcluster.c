/*
 * test_rcluster.c - core/rcluster*.c, the Redis Cluster client.
 *
 * Two groups. Offline: CRC16 and hash-tag vectors, seed and URL parsing,
 * an unreachable seed (fake servers' bad answers: test_rcluster_fake.c).
 * Live: a real 3-master, 3-replica cluster started in a temporary directory
 * on free ports by tests/redis/cluster.sh (group setup) and stopped by the
 * group teardown, or, should this process die, by a watchdog child that
 * stops it when our end of a pipe closes. Against it: slots against CLUSTER
 * KEYSLOT, 10,000 keys from 0 bytes to 1 MiB written and read back byte for
 * byte, absent keys, SET NX/PX, delete-if-equal, MOVED after a slot is
 * migrated behind the handle's back, ASK while a slot is half migrated, and
 * kill -9 of a master (errors within the time limit or right values, never
 * wrong ones, and all right again after its replica takes over). The failover
 * case runs last: it leaves the cluster one master short of replicas.
 *
 * Exits 77 (skipped) when redis-server or redis-cli is not installed, after
 * the offline group passed. Single-threaded but for the fake servers.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "core/rcluster.h"
#include "testutil.h"

#define MASTERS 3
#define NODES 6
#define NKEYS 10000
#define MIB (1024 * 1024)

static char *cl_dir;      /* the cluster's directory */
static int cl_base;       /* its first port */
static ect_cluster cl = {.pipe = -1}; /* the cluster (tests/testutil.h) */
static char cl_seeds[128];

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The value of key i at length len: bytes that depend on both. */
static void fill_value(size_t i, size_t len, unsigned char *out)
{
    uint64_t x = 0x243F6A8885A308D3ull ^ ((uint64_t)i * 0x9E3779B97F4A7C15ull) ^ len;
    for (size_t k = 0; k < len; k++) {
        if ((k & 7) == 0) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        out[k] = (unsigned char)(x >> ((k & 7) * 8));
    }
}

/* ------------------------------------------------------------------------
 * The cluster: cluster.sh, ports, admin commands through hiredis */

static int free_port(void)
{
    unsigned seed = (unsigned)rnd();
    int p = ect_port_base(&seed, 1, 0);

    if (p < 0)
        fail_msg("no free port below the ephemeral range");
    return p;
}


static int cluster_setup(void **state)
{
    (void)state;
    cl_dir = ect_tmpdir("ec-rcluster");
    cl.script = EC_TEST_CLUSTER_SH;
    cl.dir = cl_dir;
    if (ect_cluster_start(&cl, NODES) < 0)
        return -1;
    cl_base = cl.base;
    snprintf(cl_seeds, sizeof(cl_seeds), "redis-cluster://127.0.0.1:%d,127.0.0.1:%d/",
             cl_base + 1, cl_base);
    return 0;
}

static int cluster_teardown(void **state)
{
    (void)state;
    ect_cluster_stop(&cl);
    if (cl_dir) {
        char *cmd;
        if (asprintf(&cmd, "rm -rf '%s'", cl_dir) > 0) {
            (void)!system(cmd);
            free(cmd);
        }
        free(cl_dir);
    }
    return 0;
}

static redisContext *admin(int port)
{
    struct timeval tv = {.tv_sec = 10};
    redisContext *r = redisConnectWithTimeout("127.0.0.1", port, tv);
    assert_non_null(r);
    if (r->err)
        fail_msg("connect to 127.0.0.1:%d: %s", port, r->errstr);
    redisSetTimeout(r, tv);
    return r;
}

/* Run a command (hiredis format) on port; fail the test on an error reply. */
static redisReply *adm(int port, const char *fmt, ...)
{
    redisContext *ctx = admin(port);
    redisReply *r;
    va_list ap;

    va_start(ap, fmt);
    r = redisvCommand(ctx, fmt, ap);
    va_end(ap);
    if (!r)
        fail_msg("127.0.0.1:%d: %s: %s", port, fmt, ctx->errstr);
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("127.0.0.1:%d: %s: %s", port, fmt, r->str);
    redisFree(ctx);
    return r;
}

static void node_id(int port, char out[64])
{
    redisReply *r = adm(port, "CLUSTER MYID");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    snprintf(out, 64, "%s", r->str);
    freeReplyObject(r);
}

/* The port of the master serving slot, as node `ask_port` sees it. */
static int slot_master(int ask_port, unsigned slot)
{
    redisReply *r = adm(ask_port, "CLUSTER SLOTS");
    int port = -1;

    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if ((unsigned)e->element[0]->integer <= slot && slot <= (unsigned)e->element[1]->integer)
            port = (int)e->element[2]->element[1]->integer;
    }
    freeReplyObject(r);
    return port;
}

static bool is_master(int port)
{
    redisReply *r = adm(port, "ROLE");
    bool m = r->type == REDIS_REPLY_ARRAY && r->element[0]->type == REDIS_REPLY_STRING &&
             strcmp(r->element[0]->str, "master") == 0;
    freeReplyObject(r);
    return m;
}

static int other_master(int not_port)
{
    for (int i = 0; i < NODES; i++) {
        int p = cl_base + i;
        if (p != not_port && is_master(p))
            return p;
    }
    fail_msg("no master but %d", not_port);
    return -1;
}

/* Move `count` keys of slot from one master to another (MIGRATE ... KEYS). */
static size_t migrate_keys(unsigned slot, int from, int to, size_t count)
{
    redisReply *r = adm(from, "CLUSTER GETKEYSINSLOT %u %u", slot, (unsigned)count);
    size_t n = r->elements;

    for (size_t i = 0; i < n; i++) {
        redisReply *m = adm(from, "MIGRATE 127.0.0.1 %d %b 0 10000", to, r->element[i]->str,
                            r->element[i]->len);
        freeReplyObject(m);
    }
    freeReplyObject(r);
    return n;
}

/* Does key exist on the node at port (with ASKING first: an importing
 * node)? A migrating node answers ASK for a key it no longer has: false. */
static bool exists_at(int port, const char *key, bool asking)
{
    redisContext *ctx = admin(port);
    redisReply *r;
    bool yes = false;

    if (asking) {
        r = redisCommand(ctx, "ASKING");
        assert_non_null(r);
        freeReplyObject(r);
    }
    r = redisCommand(ctx, "EXISTS %s", key);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "ASK ", 4) == 0)
        yes = false;
    else if (r->type == REDIS_REPLY_INTEGER)
        yes = r->integer == 1;
    else
        fail_msg("EXISTS %s at %d: %s", key, port, r->str ? r->str : "?");
    freeReplyObject(r);
    redisFree(ctx);
    return yes;
}

static void slot_begin_migration(unsigned slot, int from, int to)
{
    char from_id[64], to_id[64];
    node_id(from, from_id);
    node_id(to, to_id);
    freeReplyObject(adm(to, "CLUSTER SETSLOT %u IMPORTING %s", slot, from_id));
    freeReplyObject(adm(from, "CLUSTER SETSLOT %u MIGRATING %s", slot, to_id));
}

/* Migrate what is left and give the slot to `to` on every master. */
static void slot_finish_migration(unsigned slot, int from, int to)
{
    char to_id[64];

    while (migrate_keys(slot, from, to, 100) > 0) {
    }
    node_id(to, to_id);
    freeReplyObject(adm(to, "CLUSTER SETSLOT %u NODE %s", slot, to_id));
    freeReplyObject(adm(from, "CLUSTER SETSLOT %u NODE %s", slot, to_id));
    for (int i = 0; i < NODES; i++) {
        int p = cl_base + i;
        if (p != from && p != to && is_master(p))
            freeReplyObject(adm(p, "CLUSTER SETSLOT %u NODE %s", slot, to_id));
    }
}

/* A fresh hash tag "{stem-N}" and its slot. */
static void tag_for(char *tag, size_t len, const char *stem, unsigned *slot)
{
    snprintf(tag, len, "{%s-%llu}", stem, (unsigned long long)(rnd() % 1000000));
    *slot = ec_rcluster_keyslot(tag, strlen(tag));
}

static ec_rcluster *open_live(uint32_t op_timeout_ms)
{
    ec_rcluster_opts o = {.op_timeout_ms = op_timeout_ms, .connect_timeout_ms = 500,
                          .io_timeout_ms = 2000, .max_value_bytes = 2 * MIB};
    ec_rcluster *c = NULL;
    int rc = ec_rcluster_open(cl_seeds, &o, &c);
    if (rc != 0)
        fail_msg("ec_rcluster_open(%s): %s", cl_seeds, ec_last_error());
    return c;
}

/* ------------------------------------------------------------------------
 * Checking multi-key results */

typedef struct check {
    size_t n;
    const size_t *lens;      /* expected value lengths; SIZE_MAX: absent */
    size_t index_base;       /* key i is key index_base + i of fill_value */
    unsigned *calls;         /* fn calls per key */
    int *status;
    size_t wrong;            /* values with wrong bytes or length */
    size_t bytes;
    unsigned char *scratch;  /* 2 MiB */
    char first_msg[EC_ERRMSG_MAX];
} check;

static void check_fn(void *arg, size_t i, int status, const void *val, size_t len,
                     const char *msg)
{
    check *k = arg;

    if (i >= k->n) {
        k->wrong++;
        return;
    }
    k->calls[i]++;
    k->status[i] = status;
    if (status == 0 && k->lens) {
        if (k->lens[i] == SIZE_MAX || len != k->lens[i]) {
            k->wrong++;
        } else if (len) {
            fill_value(k->index_base + i, len, k->scratch);
            if (memcmp(val, k->scratch, len) != 0)
                k->wrong++;
        }
        k->bytes += len;
    }
    if (status < 0 && status != EC_ENOENT && status != EC_EEXIST) {
        if (!msg || !*msg)
            k->wrong++; /* an error must say why */
        else if (!k->first_msg[0])
            snprintf(k->first_msg, sizeof(k->first_msg), "%s", msg);
    }
}

static void check_init(check *k, size_t n, const size_t *lens)
{
    memset(k, 0, sizeof(*k));
    k->n = n;
    k->lens = lens;
    k->calls = calloc(n, sizeof(*k->calls));
    k->status = calloc(n, sizeof(*k->status));
    k->scratch = malloc(2 * MIB);
    assert_non_null(k->calls);
    assert_non_null(k->status);
    assert_non_null(k->scratch);
}

static void check_free(check *k)
{
    free(k->calls);
    free(k->status);
    free(k->scratch);
}

/* Keys "prefix:i" (i < n) and their lengths. */
static char **make_keys(const char *prefix, size_t n)
{
    char **keys = calloc(n, sizeof(*keys));
    assert_non_null(keys);
    for (size_t i = 0; i < n; i++)
        assert_true(asprintf(&keys[i], "%s:%zu", prefix, i) > 0);
    return keys;
}

static void free_keys(char **keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
}

/* SET keys[i] = fill_value(i, lens[i]) for all i, in batches; asserts all
 * stored. */
static void put_all(ec_rcluster *c, char **keys, const size_t *lens, size_t n, size_t batch)
{
    const void **vals = calloc(batch, sizeof(*vals));
    assert_non_null(vals);
    for (size_t b = 0; b < n; b += batch) {
        size_t m = n - b < batch ? n - b : batch;
        check k;
        check_init(&k, m, NULL);
        for (size_t i = 0; i < m; i++) {
            unsigned char *v = malloc(lens[b + i] ? lens[b + i] : 1);
            assert_non_null(v);
            fill_value(b + i, lens[b + i], v);
            vals[i] = v;
        }
        int rc = ec_rcluster_mset(c, (const char *const *)keys + b, NULL, vals, lens + b, m,
                                  NULL, check_fn, &k);
        if (rc != 0)
            fail_msg("mset: %s", ec_last_error());
        for (size_t i = 0; i < m; i++) {
            assert_int_equal(k.calls[i], 1);
            assert_int_equal(k.status[i], 0);
            free((void *)vals[i]);
        }
        check_free(&k);
    }
    free(vals);
}

/* GET all keys; returns the number of keys that did not read back right
 * (errors counted in *errors, wrong bytes fail the test). */
static size_t get_all(ec_rcluster *c, char **keys, const size_t *lens, size_t n, size_t batch,
                      size_t *errors, char *first_msg, size_t first_len)
{
    size_t bad = 0;

    *errors = 0;
    if (first_msg)
        first_msg[0] = '\0';
    for (size_t b = 0; b < n; b += batch) {
        size_t m = n - b < batch ? n - b : batch;
        check k;
        check_init(&k, m, lens + b);
        k.index_base = b;
        (void)ec_rcluster_mget(c, (const char *const *)keys + b, NULL, m, check_fn, &k);
        if (k.wrong)
            fail_msg("mget: %zu keys read WRONG bytes (keys %zu..%zu)", k.wrong, b, b + m);
        for (size_t i = 0; i < m; i++) {
            assert_int_equal(k.calls[i], 1);
            if (k.status[i] == EC_ENOENT && lens[b + i] != SIZE_MAX)
                fail_msg("key %s is absent but was written", keys[b + i]);
            if (k.status[i] == 0 && lens[b + i] == SIZE_MAX)
                fail_msg("key %s has a value but was never written", keys[b + i]);
            if (k.status[i] < 0 && k.status[i] != EC_ENOENT) {
                (*errors)++;
                bad++;
            }
        }
        if (first_msg && !first_msg[0] && k.first_msg[0])
            snprintf(first_msg, first_len, "%s", k.first_msg);
        check_free(&k);
    }
    return bad;
}

/* ------------------------------------------------------------------------
 * Offline */

static void test_crc16_and_slots(void **state)
{
    (void)state;
    assert_int_equal(ec_rcluster_crc16("123456789", 9), 0x31C3);
    assert_int_equal(ec_rcluster_crc16("", 0), 0);
    assert_int_equal(ec_rcluster_keyslot("123456789", 9), 0x31C3 & 16383);
    assert_int_equal(ec_rcluster_keyslot("foo", 3), 12182); /* CLUSTER KEYSLOT foo */
    assert_int_equal(ec_rcluster_keyslot("", 0), 0);
    /* The specification's hash-tag examples. */
    uint16_t u = ec_rcluster_keyslot("user1000", 8);
    assert_int_equal(ec_rcluster_keyslot("{user1000}.following", 20), u);
    assert_int_equal(ec_rcluster_keyslot("{user1000}.followers", 20), u);
    assert_int_equal(ec_rcluster_keyslot("foo{}{bar}", 10),
                     ec_rcluster_crc16("foo{}{bar}", 10) & 16383);
    assert_int_equal(ec_rcluster_keyslot("foo{{bar}}zap", 13), ec_rcluster_keyslot("{bar", 4));
    assert_int_equal(ec_rcluster_keyslot("foo{bar}{zap}", 13), ec_rcluster_keyslot("bar", 3));
    assert_int_equal(ec_rcluster_keyslot("{", 1), ec_rcluster_crc16("{", 1) & 16383);
    assert_int_equal(ec_rcluster_keyslot("}{", 2), ec_rcluster_crc16("}{", 2) & 16383);
    assert_int_equal(ec_rcluster_keyslot("a{b", 3), ec_rcluster_crc16("a{b", 3) & 16383);
    /* Binary keys: a NUL inside a tag. */
    assert_int_equal(ec_rcluster_keyslot("x{a\0b}y", 7), ec_rcluster_keyslot("a\0b", 3));
}

static void test_parse_seeds(void **state)
{
    ec_rcluster_addr a[EC_RCLUSTER_MAX_SEEDS];
    size_t n = 0;
    (void)state;

    assert_int_equal(ec_rcluster_parse_seeds("127.0.0.1:7000", a, 8, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(a[0].host, "127.0.0.1");
    assert_int_equal(a[0].port, 7000);
    assert_int_equal(ec_rcluster_parse_seeds("redis-cluster://h1:1,[::1]:65535,node-2.example:"
                                             "7001/", a, 8, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(a[0].host, "h1");
    assert_string_equal(a[1].host, "::1");
    assert_int_equal(a[1].port, 65535);
    assert_string_equal(a[2].host, "node-2.example");
    assert_int_equal(ec_rcluster_parse_seeds("[fe80::1%eth0]:7", a, 8, &n), 0);
    assert_string_equal(a[0].host, "fe80::1%eth0");

    static const char *bad[] = {
        "", "h", "h:", ":7000", "h:0", "h:65536", "h:700000", "h:7x", "h:-1", "h:+7",
        "::1:7000", "[::1]7000", "[::1]:", "[1.2.3.4]:5", "a:1,", ",a:1", "a:1,,b:2",
        "h :1", "h:1 ", "redis://h:1", "redis-cluster://", "redis-cluster:///",
        "redis-cluster://u:p@h:1", "redis-cluster://h:1/db", "redis-cluster://h:1?x=1",
        "h\x01:1", "a.b/c:1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = ec_rcluster_parse_seeds(bad[i], a, 8, &n);
        if (rc != EC_EINVAL)
            fail_msg("seeds '%s' accepted (rc %d)", bad[i], rc);
        if (!strstr(ec_last_error(), "host:port"))
            fail_msg("seeds '%s': the message does not show the form: %s", bad[i],
                     ec_last_error());
    }
    /* A 256-byte host; more addresses than room. */
    char longhost[300];
    memset(longhost, 'a', 256);
    snprintf(longhost + 256, sizeof(longhost) - 256, ":1");
    assert_int_equal(ec_rcluster_parse_seeds(longhost, a, 8, &n), EC_EINVAL);
    assert_int_equal(ec_rcluster_parse_seeds("a:1,b:2,c:3", a, 2, &n), EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "more than 2"));
    assert_int_equal(ec_rcluster_parse_seeds("a:1", a, 0, &n), EC_EINVAL);
    assert_int_equal(ec_rcluster_parse_seeds(NULL, a, 8, &n), EC_EINVAL);
}

static void test_open_bad_arguments(void **state)
{
    ec_rcluster *c = NULL;
    ec_rcluster_opts o = {.max_value_bytes = (512ull << 20) + 1};
    (void)state;

    assert_int_equal(ec_rcluster_open(NULL, NULL, &c), EC_EINVAL);
    assert_int_equal(ec_rcluster_open("h:1", NULL, NULL), EC_EINVAL);
    assert_int_equal(ec_rcluster_open("nonsense", NULL, &c), EC_EINVAL);
    assert_int_equal(ec_rcluster_open("127.0.0.1:1", &o, &c), EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "max_value_bytes"));
    o = (ec_rcluster_opts){.backoff_min_ms = 50, .backoff_max_ms = 10};
    assert_int_equal(ec_rcluster_open("127.0.0.1:1", &o, &c), EC_EINVAL);
    assert_null(c);
    ec_rcluster_close(NULL);
}

static void test_unreachable_seed(void **state)
{
    ec_rcluster_opts o = {.connect_timeout_ms = 300, .op_timeout_ms = 2000};
    ec_rcluster *c = NULL;
    char seeds[64], want[32];
    uint64_t t0;
    int p1 = free_port(), p2 = free_port();
    (void)state;

    snprintf(seeds, sizeof(seeds), "127.0.0.1:%d,127.0.0.1:%d", p1, p2);
    t0 = ect_now_ms();
    assert_int_equal(ec_rcluster_open(seeds, &o, &c), EC_ECONN);
    assert_true(ect_now_ms() - t0 < 3000);
    assert_null(c);
    printf("  unreachable: %s\n", ec_last_error());
    snprintf(want, sizeof(want), "127.0.0.1:%d", p1);
    assert_non_null(strstr(ec_last_error(), want));
    snprintf(want, sizeof(want), "127.0.0.1:%d", p2);
    assert_non_null(strstr(ec_last_error(), want));
    assert_non_null(strstr(ec_last_error(), "refused"));
    assert_non_null(strstr(ec_last_error(), "cannot open Redis Cluster"));
    /* A name that does not resolve. */
    assert_int_equal(ec_rcluster_open("no-such-host.invalid:7000", &o, &c), EC_ECONN);
    assert_non_null(strstr(ec_last_error(), "resolve"));
    /* A black-holed address: bounded by connect_timeout_ms (or refused at
     * once where this machine has no route). */
    t0 = ect_now_ms();
    assert_int_equal(ec_rcluster_open("192.0.2.1:7000", &o, &c), EC_ECONN);
    assert_true(ect_now_ms() - t0 < 3000);
    printf("  black hole: %s\n", ec_last_error());
}

/* ------------------------------------------------------------------------
 * Live */

static void test_keyslot_matches_server(void **state)
{
    redisContext *ctx = admin(cl_base);
    enum { N = 3000 };
    static char keys[N][48];
    static size_t lens[N];
    (void)state;

    for (int i = 0; i < N; i++) {
        size_t len = (size_t)(rnd() % 40);
        for (size_t k = 0; k < len; k++) {
            uint64_t r = rnd() % 10;
            keys[i][k] = r == 0 ? '{' : r == 1 ? '}' : (char)(rnd() & 0xff);
        }
        lens[i] = len;
        const char *argv[3] = {"CLUSTER", "KEYSLOT", keys[i]};
        size_t argl[3] = {7, 7, len};
        assert_int_equal(redisAppendCommandArgv(ctx, 3, argv, argl), REDIS_OK);
    }
    for (int i = 0; i < N; i++) {
        redisReply *r = NULL;
        assert_int_equal(redisGetReply(ctx, (void **)&r), REDIS_OK);
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        if (r->integer != ec_rcluster_keyslot(keys[i], lens[i]))
            fail_msg("key %d (%zu bytes): server slot %lld, ours %u", i, lens[i], r->integer,
                     ec_rcluster_keyslot(keys[i], lens[i]));
        freeReplyObject(r);
    }
    redisFree(ctx);
}

static void test_open_and_map(void **state)
{
    ec_rcluster *c = open_live(5000);
    ec_rcluster_stats st;
    char addr[64], want[64];
    (void)state;

    for (unsigned s = 0; s < EC_RCLUSTER_SLOTS; s += 1111) {
        assert_int_equal(ec_rcluster_slot_node(c, s, addr, sizeof(addr)), 0);
        snprintf(want, sizeof(want), "127.0.0.1:%d", slot_master(cl_base, s));
        assert_string_equal(addr, want);
    }
    ec_rcluster_stats_get(c, &st);
    assert_int_equal(st.refreshes, 1);
    assert_int_equal(ec_rcluster_refresh(c), 0);
    ec_rcluster_stats_get(c, &st);
    assert_true(st.refreshes >= 2);
    ec_rcluster_close(c);
}

static void test_mset_mget_10k(void **state)
{
    ec_rcluster *c = open_live(30000);
    char **keys = make_keys("v", NKEYS);
    size_t *lens = malloc(NKEYS * sizeof(*lens)), errors, total = 0;
    unsigned per_master[NODES] = {0};
    ec_rcluster_stats st;
    char addr[64], msg[EC_ERRMSG_MAX];
    uint64_t t0, t1, t2;
    (void)state;

    assert_non_null(lens);
    for (size_t i = 0; i < NKEYS; i++) {
        lens[i] = i % 1000 == 0   ? MIB                            /* exactly 1 MiB */
                  : i % 97 == 0   ? (size_t)(rnd() % MIB)          /* up to 1 MiB */
                  : i % 7 == 0    ? 0                              /* empty */
                                  : 1 + (size_t)(rnd() % 2048);
        total += lens[i];
        assert_int_equal(ec_rcluster_slot_node(c, ec_rcluster_keyslot(keys[i], strlen(keys[i])),
                                               addr, sizeof(addr)), 0);
        per_master[(atoi(strrchr(addr, ':') + 1) - cl_base) % NODES]++;
    }
    t0 = ect_now_ms();
    put_all(c, keys, lens, NKEYS, 1000);
    t1 = ect_now_ms();
    assert_int_equal(get_all(c, keys, lens, NKEYS, 2500, &errors, msg, sizeof(msg)), 0);
    t2 = ect_now_ms();
    printf("  %d keys, %.1f MiB: mset %.1f MiB/s, mget %.1f MiB/s\n", NKEYS,
           (double)total / MIB, (double)total / MIB / ((double)(t1 - t0 + 1) / 1000),
           (double)total / MIB / ((double)(t2 - t1 + 1) / 1000));
    /* Every master holds some of them. */
    unsigned masters = 0;
    for (int i = 0; i < NODES; i++)
        masters += per_master[i] > 0;
    assert_int_equal(masters, MASTERS);
    ec_rcluster_stats_get(c, &st);
    assert_true(st.bytes_out > total);
    assert_true(st.bytes_in > total);
    assert_int_equal(st.moved, 0);
    assert_int_equal(st.errors, 0);
    assert_true(st.connects >= MASTERS && st.connects <= MASTERS + 1); /* + a replica seed */
    ec_rcluster_close(c);
    free_keys(keys, NKEYS);
    free(lens);
}

static void test_absent_and_del(void **state)
{
    ec_rcluster *c = open_live(5000);
    char **keys = make_keys("absent", 200);
    size_t lens[200], errors;
    void *val = (void *)1;
    size_t len;
    (void)state;

    for (size_t i = 0; i < 200; i++)
        lens[i] = SIZE_MAX;
    assert_int_equal(get_all(c, keys, lens, 200, 200, &errors, NULL, 0), 0);
    /* Half of them written, then read with the others. */
    for (size_t i = 0; i < 200; i += 2)
        lens[i] = i * 3;
    for (size_t i = 0; i < 200; i += 2) {
        unsigned char buf[600];
        fill_value(i, lens[i], buf);
        assert_int_equal(ec_rcluster_set(c, keys[i], strlen(keys[i]), buf, lens[i], NULL), 0);
    }
    assert_int_equal(get_all(c, keys, lens, 200, 200, &errors, NULL, 0), 0);
    /* DEL: deleted once, then absent. */
    check k;
    check_init(&k, 200, NULL);
    assert_int_equal(ec_rcluster_mdel(c, (const char *const *)keys, NULL, 200, check_fn, &k), 0);
    for (size_t i = 0; i < 200; i++) {
        assert_int_equal(k.calls[i], 1);
        assert_int_equal(k.status[i], i % 2 == 0 ? 0 : EC_ENOENT);
    }
    check_free(&k);
    assert_int_equal(ec_rcluster_get(c, keys[0], strlen(keys[0]), &val, &len), EC_ENOENT);
    assert_ptr_equal(val, (void *)1); /* untouched */
    assert_int_equal(ec_rcluster_del(c, keys[0], strlen(keys[0])), EC_ENOENT);
    ec_rcluster_close(c);
    free_keys(keys, 200);
}

static void test_set_nx_px_and_del_if_equal(void **state)
{
    ec_rcluster *c = open_live(5000);
    ec_rcluster_set_opts nx = {.nx = true, .ttl_ms = 60000}, px = {.ttl_ms = 150};
    void *val;
    size_t len;
    (void)state;

    (void)ec_rcluster_del(c, "lease:a", 7);
    assert_int_equal(ec_rcluster_set(c, "lease:a", 7, "owner-1", 7, &nx), 0);
    assert_int_equal(ec_rcluster_set(c, "lease:a", 7, "owner-2", 7, &nx), EC_EEXIST);
    assert_int_equal(ec_rcluster_get(c, "lease:a", 7, &val, &len), 0);
    assert_int_equal(len, 7);
    assert_memory_equal(val, "owner-1", 7);
    free(val);
    assert_int_equal(ec_rcluster_del_if_equal(c, "lease:a", 7, "owner-2", 7), EC_EBUSY);
    assert_non_null(strstr(ec_last_error(), "another value"));
    assert_int_equal(ec_rcluster_del_if_equal(c, "lease:a", 7, "owner-1", 7), 0);
    assert_int_equal(ec_rcluster_del_if_equal(c, "lease:a", 7, "owner-1", 7), EC_ENOENT);
    /* The connection is usable after the WATCHes. */
    assert_int_equal(ec_rcluster_set(c, "lease:a", 7, "", 0, &px), 0);
    assert_int_equal(ec_rcluster_get(c, "lease:a", 7, &val, &len), 0);
    assert_int_equal(len, 0);
    free(val);
    usleep(400 * 1000);
    assert_int_equal(ec_rcluster_get(c, "lease:a", 7, &val, &len), EC_ENOENT);
    ec_rcluster_close(c);
}

static void test_value_over_limit(void **state)
{
    ec_rcluster *big = open_live(10000), *small;
    ec_rcluster_opts o = {.max_value_bytes = MIB, .max_attempts = 2};
    unsigned char *buf = malloc(MIB + 1);
    const char *keys[2] = {"big:over", "big:under"};
    void *val;
    size_t len;
    (void)state;

    assert_non_null(buf);
    assert_int_equal(ec_rcluster_open(cl_seeds, &o, &small), 0);
    fill_value(0, MIB + 1, buf);
    assert_int_equal(ec_rcluster_set(big, keys[0], 8, buf, MIB + 1, NULL), 0);
    assert_int_equal(ec_rcluster_set(small, keys[0], 8, buf, MIB + 1, NULL), EC_ETOOBIG);
    assert_non_null(strstr(ec_last_error(), "max_value_bytes"));
    assert_int_equal(ec_rcluster_set(small, keys[1], 9, buf, MIB, NULL), 0);
    /* A stored value over this handle's limit fails that key alone. */
    check k;
    check_init(&k, 2, NULL);
    assert_int_equal(ec_rcluster_mget(small, keys, NULL, 2, check_fn, &k), EC_ETOOBIG);
    printf("  %s\n", ec_last_error());
    assert_non_null(strstr(ec_last_error(), "1 of 2 keys failed"));
    assert_int_equal(k.status[0], EC_ETOOBIG);
    assert_int_equal(k.status[1], 0);
    assert_non_null(strstr(k.first_msg, "big:over"));
    check_free(&k);
    /* The handle reconnected and reads on. */
    assert_int_equal(ec_rcluster_get(small, keys[1], 9, &val, &len), 0);
    assert_int_equal(len, MIB);
    assert_int_equal(memcmp(val, buf, MIB), 0);
    free(val);
    assert_int_equal(ec_rcluster_get(big, keys[0], 8, &val, &len), 0);
    assert_int_equal(len, MIB + 1);
    assert_int_equal(memcmp(val, buf, MIB + 1), 0);
    free(val);
    ec_rcluster_close(small);
    ec_rcluster_close(big);
    free(buf);
}

static void test_moved_after_migration(void **state)
{
    ec_rcluster *c = open_live(10000);
    enum { N = 60 };
    char tag[32], *keys[N], addr[64], want[64];
    size_t lens[N], errors;
    unsigned slot;
    ec_rcluster_stats st;
    (void)state;

    tag_for(tag, sizeof(tag), "mv", &slot);
    for (size_t i = 0; i < N; i++) {
        assert_true(asprintf(&keys[i], "%s:%zu", tag, i) > 0);
        lens[i] = 100 + i * 1000;
    }
    put_all(c, keys, lens, N, N);
    int from = slot_master(cl_base, slot), to = other_master(from);
    /* Behind the handle's back: the slot and its keys move to another master. */
    slot_begin_migration(slot, from, to);
    slot_finish_migration(slot, from, to);
    snprintf(want, sizeof(want), "127.0.0.1:%d", from);
    assert_int_equal(ec_rcluster_slot_node(c, slot, addr, sizeof(addr)), 0);
    assert_string_equal(addr, want); /* still the old map */
    assert_int_equal(get_all(c, keys, lens, N, N, &errors, NULL, 0), 0);
    ec_rcluster_stats_get(c, &st);
    printf("  slot %u %d -> %d: moved %llu, refreshes %llu\n", slot, from, to,
           (unsigned long long)st.moved, (unsigned long long)st.refreshes);
    assert_true(st.moved > 0);
    snprintf(want, sizeof(want), "127.0.0.1:%d", to);
    assert_int_equal(ec_rcluster_slot_node(c, slot, addr, sizeof(addr)), 0);
    assert_string_equal(addr, want);
    /* Writes follow too; the refresh MOVED asked for happens first, once
     * refresh_interval_ms (100) has passed since the last. */
    usleep(150 * 1000);
    put_all(c, keys, lens, N, N);
    ec_rcluster_stats_get(c, &st);
    assert_true(st.refreshes >= 2);
    for (size_t i = 0; i < N; i++)
        free(keys[i]);
    ec_rcluster_close(c);
}

static void test_ask_during_migration(void **state)
{
    ec_rcluster *c = open_live(10000);
    enum { N = 40 };
    char tag[32], *keys[N + 1];
    size_t lens[N + 1], errors, moved_keys;
    unsigned slot;
    ec_rcluster_stats st;
    void *val;
    size_t len;
    (void)state;

    tag_for(tag, sizeof(tag), "ask", &slot);
    for (size_t i = 0; i <= N; i++) {
        assert_true(asprintf(&keys[i], "%s:%zu", tag, i) > 0);
        lens[i] = 10 + i;
    }
    put_all(c, keys, lens, N, N);
    int from = slot_master(cl_base, slot), to = other_master(from);
    slot_begin_migration(slot, from, to);
    moved_keys = migrate_keys(slot, from, to, N / 2);
    assert_int_equal(moved_keys, N / 2);
    /* Half on each side: every key reads right, the moved ones through ASK. */
    assert_int_equal(get_all(c, keys, lens, N, N, &errors, NULL, 0), 0);
    ec_rcluster_stats_get(c, &st);
    printf("  slot %u %d -> %d half migrated: ask %llu, moved %llu\n", slot, from, to,
           (unsigned long long)st.ask, (unsigned long long)st.moved);
    assert_int_equal(st.ask, N / 2);
    assert_int_equal(st.moved, 0);
    /* A new key of that slot is written at the importing node (ASK). */
    unsigned char buf[64];
    fill_value(N, lens[N], buf);
    assert_int_equal(ec_rcluster_set(c, keys[N], strlen(keys[N]), buf, lens[N], NULL), 0);
    assert_true(exists_at(to, keys[N], true));
    assert_int_equal(ec_rcluster_get(c, keys[N], strlen(keys[N]), &val, &len), 0);
    assert_int_equal(len, lens[N]);
    assert_memory_equal(val, buf, len);
    free(val);
    /* Leases on the source side still work while it migrates. */
    if (exists_at(from, keys[N - 1], false)) {
        assert_int_equal(ec_rcluster_del_if_equal(c, keys[N - 1], strlen(keys[N - 1]), "no", 2),
                         EC_EBUSY);
    }
    /* Finish: the map is then stale, and MOVED takes over. */
    slot_finish_migration(slot, from, to);
    assert_int_equal(get_all(c, keys, lens, N + 1, N + 1, &errors, NULL, 0), 0);
    ec_rcluster_stats_get(c, &st);
    assert_true(st.moved > 0);
    for (size_t i = 0; i <= N; i++)
        free(keys[i]);
    ec_rcluster_close(c);
}

static void test_failover_kill9(void **state)
{
    enum { N = 3000 };
    const uint32_t op_timeout = 5000;
    ec_rcluster *c = open_live(op_timeout);
    char **keys = make_keys("fo", N), addr[64], victim_addr[64], pidfile[512], msg[EC_ERRMSG_MAX];
    size_t lens[N], errors, on_victim = 0;
    bool *victim_key = calloc(N, sizeof(bool));
    ec_rcluster_stats st;
    (void)state;

    assert_non_null(victim_key);
    for (size_t i = 0; i < N; i++)
        lens[i] = 1 + (i * 37) % 3000;
    put_all(c, keys, lens, N, 1000);
    /* Make the writes durable on the replicas before the master dies. */
    for (int i = 0; i < NODES; i++)
        if (is_master(cl_base + i)) {
            redisReply *r = adm(cl_base + i, "WAIT 1 5000");
            assert_int_equal(r->integer, 1);
            freeReplyObject(r);
        }
    int victim = slot_master(cl_base, ec_rcluster_keyslot(keys[0], strlen(keys[0])));
    snprintf(victim_addr, sizeof(victim_addr), "127.0.0.1:%d", victim);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(ec_rcluster_slot_node(c, ec_rcluster_keyslot(keys[i], strlen(keys[i])),
                                               addr, sizeof(addr)), 0);
        victim_key[i] = strcmp(addr, victim_addr) == 0;
        on_victim += victim_key[i];
    }
    snprintf(pidfile, sizeof(pidfile), "%s/redis-%d.pid", cl_dir, victim);
    size_t plen = 0;
    char *pidtxt = ect_read_file(pidfile, &plen);
    assert_non_null(pidtxt);
    pid_t pid = (pid_t)atoi(pidtxt);
    free(pidtxt);
    assert_true(pid > 1);
    printf("  kill -9 master %d (pid %d), %zu of %d keys on it\n", victim, (int)pid, on_victim, N);
    assert_int_equal(kill(pid, SIGKILL), 0);

    uint64_t t0 = ect_now_ms(), healed = 0;
    unsigned rounds = 0, failed_rounds = 0;
    bool saw_errors = false;
    while (ect_now_ms() - t0 < 60000) {
        uint64_t r0 = ect_now_ms();
        check k;
        check_init(&k, N, lens);
        (void)ec_rcluster_mget(c, (const char *const *)keys, NULL, N, check_fn, &k);
        uint64_t took = ect_now_ms() - r0;
        rounds++;
        if (k.wrong)
            fail_msg("round %u: %zu keys read WRONG bytes", rounds, k.wrong);
        errors = 0;
        for (size_t i = 0; i < N; i++) {
            assert_int_equal(k.calls[i], 1);
            if (k.status[i] == EC_ENOENT)
                fail_msg("round %u: key %s absent after failover", rounds, keys[i]);
            if (k.status[i] != 0) {
                errors++;
                if (!victim_key[i])
                    fail_msg("round %u: key %s on a live master failed: %s", rounds, keys[i],
                             k.first_msg);
            }
        }
        if (took > op_timeout + 3000)
            fail_msg("round %u took %llu ms (op_timeout_ms %u)", rounds,
                     (unsigned long long)took, op_timeout);
        if (errors) {
            saw_errors = true;
            failed_rounds++;
            snprintf(msg, sizeof(msg), "%s", k.first_msg);
        }
        check_free(&k);
        if (!errors) {
            healed = ect_now_ms() - t0;
            break;
        }
    }
    ec_rcluster_stats_get(c, &st);
    printf("  healed after %llu ms, %u rounds (%u with errors); refreshes %llu, "
           "connect failures %llu, retries %llu\n  last error: %s\n",
           (unsigned long long)healed, rounds, failed_rounds, (unsigned long long)st.refreshes,
           (unsigned long long)st.connect_failures, (unsigned long long)st.retries,
           saw_errors ? msg : "(none)");
    assert_true(healed > 0);
    if (saw_errors)
        assert_true(strstr(msg, "slot") && (strstr(msg, victim_addr) || strstr(msg, "serves")));
    /* The handle no longer names the dead master. */
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(ec_rcluster_slot_node(c, ec_rcluster_keyslot(keys[i], strlen(keys[i])),
                                               addr, sizeof(addr)), 0);
        assert_string_not_equal(addr, victim_addr);
    }
    /* A fresh handle reads everything too. */
    ec_rcluster_close(c);
    c = open_live(op_timeout);
    assert_int_equal(get_all(c, keys, lens, N, N, &errors, NULL, 0), 0);
    ec_rcluster_close(c);
    free_keys(keys, N);
    free(victim_key);
}

int main(void)
{
    const struct CMUnitTest offline[] = {
        cmocka_unit_test(test_crc16_and_slots),
        cmocka_unit_test(test_parse_seeds),
        cmocka_unit_test(test_open_bad_arguments),
        cmocka_unit_test(test_unreachable_seed),
    };
    const struct CMUnitTest live[] = {
        cmocka_unit_test(test_keyslot_matches_server),
        cmocka_unit_test(test_open_and_map),
        cmocka_unit_test(test_mset_mget_10k),
        cmocka_unit_test(test_absent_and_del),
        cmocka_unit_test(test_set_nx_px_and_del_if_equal),
        cmocka_unit_test(test_value_over_limit),
        cmocka_unit_test(test_moved_after_migration),
        cmocka_unit_test(test_ask_during_migration),
        cmocka_unit_test(test_failover_kill9), /* last: it leaves a master without replica */
    };
    int failed;

    signal(SIGPIPE, SIG_IGN);
    rng_state ^= (uint64_t)getpid() << 20 ^ (uint64_t)time(NULL);
    printf("test_rcluster: seed %llu\n", (unsigned long long)rng_state);
    failed = cmocka_run_group_tests_name("rcluster_offline", offline, NULL, NULL);
    if (!ect_redis_installed()) {
        printf("test_rcluster: redis-server or redis-cli not installed: the live cluster "
               "tests are skipped (apt-get install redis-server redis-tools)\n");
        return failed ? failed : EC_TEST_SKIP;
    }
    return failed + cmocka_run_group_tests_name("rcluster_live", live, cluster_setup,
                                                cluster_teardown);
}
