/*
 * baseline_redis.c - the Redis baselines of embcache-bench, through hiredis:
 * "redis-mget" fetches a batch with one MGET, "redis-pipeline" with n GETs
 * written back to back and n replies read after. Both share open, load and
 * close: open starts a private redis-server listening on a Unix socket in
 * its own directory (--port 0 --unixsocket, or on a free loopback port with
 * TCP_NODELAY when the bench asks for TCP; persistence off;
 * bench/baseline_server.c) and connects to it;
 * load stores row r under "r:<r>" with SETs pipelined 1000 at a time; close
 * disconnects and stops the server.
 *
 * The command arrays (argv, argvlen and the key bytes they point at) are
 * kept in the handle and grown only when a larger batch comes, so a gather
 * does no allocation of its own (hiredis still formats each command into
 * its output buffer and allocates the reply objects). Called from the
 * bench's one thread; one handle per client process.
 */
#include "baseline.h"
#include "baseline_server.h"

#include <hiredis/hiredis.h>

#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#define REDIS_LOAD_CHUNK 1000

struct ec_baseline {
    const char *name; /* the ops name, for messages */
    ec_bl_server *srv;
    redisContext *c;
    bool broken;      /* an I/O error left the connection out of step */
    uint64_t rows;
    size_t row_bytes;
    size_t cap;       /* keys the arrays below hold */
    const char **argv; /* [cap + 1]: the command word, then keys */
    size_t *argvlen;   /* [cap + 1] */
    char *keys;        /* [cap * EC_BL_KEY_MAX] */
};

static const char *const redis_args[] = {
    "--port", EC_BL_ARG_PORT, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
    "--protected-mode", "yes", "--daemonize", "no", "--dir", EC_BL_ARG_DIR, NULL};

static const char *const redis_unix_args[] = {
    "--port", "0", "--unixsocket", EC_BL_ARG_SOCK, "--unixsocketperm", "700", "--save", "",
    "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no", "--dir",
    EC_BL_ARG_DIR, NULL};

static const ec_bl_server_spec redis_spec = {
    .name = "redis-server",
    .env_override = "EC_BENCH_REDIS_SERVER",
    .install_hint = "apt-get install redis-server",
    .args = redis_args,
    .unix_args = redis_unix_args,
};

static void redis_close(ec_baseline *b)
{
    if (b == NULL)
        return;
    if (b->c != NULL)
        redisFree(b->c);
    ec_bl_server_stop(b->srv);
    free(b->argv);
    free(b->argvlen);
    free(b->keys);
    free(b);
}

static int redis_open_named(const char *name, ec_baseline **out, char *note, size_t note_len)
{
    ec_baseline *b = calloc(1, sizeof *b);
    if (b == NULL) {
        ec_bl_note(note, note_len, "%s: out of memory", name);
        return -1;
    }
    b->name = name;
    if (ec_bl_server_start(&redis_spec, &b->srv, note, note_len) != 0)
        goto fail;
    int port = ec_bl_server_port(b->srv);
    const char *sock = ec_bl_server_socket(b->srv);
    char where[160];
    ec_bl_server_describe(b->srv, where, sizeof where);
    struct timeval connect_tv = {.tv_sec = 5, .tv_usec = 0};
    b->c = sock != NULL ? redisConnectUnixWithTimeout(sock, connect_tv)
                        : redisConnectWithTimeout("127.0.0.1", port, connect_tv);
    if (b->c == NULL || b->c->err != 0) {
        ec_bl_note(note, note_len, "cannot connect to redis-server on %s: %s", where,
                   b->c != NULL ? b->c->errstr : "out of memory");
        goto fail;
    }
    int one = 1;
    struct timeval io_tv = {.tv_sec = 60, .tv_usec = 0};
    if ((sock == NULL && setsockopt(b->c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) ||
        redisSetTimeout(b->c, io_tv) != REDIS_OK) {
        ec_bl_note(note, note_len, "cannot set TCP_NODELAY/timeouts on the redis connection");
        goto fail;
    }
    redisReply *r = redisCommand(b->c, "PING");
    bool pong = r != NULL && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
    if (r != NULL)
        freeReplyObject(r);
    if (!pong) {
        ec_bl_note(note, note_len, "redis-server on %s did not answer PING%s%s", where,
                   b->c->err != 0 ? ": " : "", b->c->err != 0 ? b->c->errstr : "");
        goto fail;
    }
    *out = b;
    return 0;
fail:
    redis_close(b);
    return -1;
}

static int redis_mget_open(ec_baseline **out, char *note, size_t note_len)
{
    return redis_open_named("redis-mget", out, note, note_len);
}

static int redis_pipeline_open(ec_baseline **out, char *note, size_t note_len)
{
    return redis_open_named("redis-pipeline", out, note, note_len);
}

/* An I/O or protocol error leaves replies unread: no later call can trust
 * the stream, so the handle refuses further work. */
static int redis_io_failed(ec_baseline *b, const char *what)
{
    fprintf(stderr, "%s: %s failed: %s\n", b->name, what,
            b->c->err != 0 ? b->c->errstr : "no reply");
    b->broken = true;
    return -1;
}

static int redis_load(ec_baseline *b, const void *data, uint64_t rows, size_t row_bytes)
{
    const unsigned char *p = data;
    char key[EC_BL_KEY_MAX];
    if (b->broken) {
        fprintf(stderr, "%s: load: the connection failed earlier\n", b->name);
        return -1;
    }
    if (row_bytes == 0 || (rows != 0 && data == NULL)) {
        fprintf(stderr, "%s: load: bad arguments (rows %llu, row_bytes %zu)\n", b->name,
                (unsigned long long)rows, row_bytes);
        return -1;
    }
    for (uint64_t base = 0; base < rows; base += REDIS_LOAD_CHUNK) {
        uint64_t end = rows - base > REDIS_LOAD_CHUNK ? base + REDIS_LOAD_CHUNK : rows;
        for (uint64_t r = base; r < end; r++) {
            size_t klen = ec_bl_format_key(key, r);
            if (redisAppendCommand(b->c, "SET %b %b", key, klen, p + r * row_bytes,
                                   row_bytes) != REDIS_OK)
                return redis_io_failed(b, "SET (append)");
        }
        int fail = 0;
        for (uint64_t r = base; r < end; r++) {
            void *v;
            if (redisGetReply(b->c, &v) != REDIS_OK)
                return redis_io_failed(b, "SET");
            redisReply *rep = v;
            if (fail == 0 && (rep->type != REDIS_REPLY_STATUS || strcmp(rep->str, "OK") != 0)) {
                fprintf(stderr, "%s: load: SET of row %llu failed: %s\n", b->name,
                        (unsigned long long)r,
                        rep->type == REDIS_REPLY_ERROR ? rep->str : "unexpected reply");
                fail = -1;
            }
            freeReplyObject(rep);
        }
        if (fail != 0)
            return -1;
    }
    b->rows = rows;
    b->row_bytes = row_bytes;
    return 0;
}

/* Grow the command arrays to n keys. */
static int redis_reserve(ec_baseline *b, size_t n)
{
    if (n <= b->cap)
        return 0;
    size_t cap = b->cap != 0 ? b->cap : 256;
    while (cap < n)
        cap *= 2;
    const char **argv = realloc(b->argv, (cap + 1) * sizeof *argv);
    if (argv != NULL)
        b->argv = argv;
    size_t *argvlen = realloc(b->argvlen, (cap + 1) * sizeof *argvlen);
    if (argvlen != NULL)
        b->argvlen = argvlen;
    char *keys = realloc(b->keys, cap * EC_BL_KEY_MAX);
    if (keys != NULL)
        b->keys = keys;
    if (argv == NULL || argvlen == NULL || keys == NULL) {
        fprintf(stderr, "%s: out of memory for a batch of %zu\n", b->name, n);
        return -1;
    }
    b->cap = cap;
    return 0;
}

/* Check the batch and write its keys into argv[1..n] / argvlen[1..n]. */
static int redis_prepare(ec_baseline *b, const int64_t *ids, size_t n)
{
    if (b->broken) {
        fprintf(stderr, "%s: gather: the connection failed earlier\n", b->name);
        return -1;
    }
    if (n >= (size_t)INT_MAX || redis_reserve(b, n) != 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint64_t)ids[i] >= b->rows) {
            fprintf(stderr, "%s: gather: id %lld at position %zu is outside [0, %llu)\n",
                    b->name, (long long)ids[i], i, (unsigned long long)b->rows);
            return -1;
        }
        char *k = b->keys + i * EC_BL_KEY_MAX;
        b->argv[i + 1] = k;
        b->argvlen[i + 1] = ec_bl_format_key(k, (uint64_t)ids[i]);
    }
    return 0;
}

/* One reply element: a string of exactly row_bytes, copied to dst. */
static int redis_take_row(ec_baseline *b, const redisReply *e, int64_t id, size_t pos, void *dst)
{
    if (e->type != REDIS_REPLY_STRING || (size_t)e->len != b->row_bytes) {
        if (e->type == REDIS_REPLY_STRING)
            fprintf(stderr, "%s: row %lld (position %zu): %zu bytes, expected %zu\n", b->name,
                    (long long)id, pos, (size_t)e->len, b->row_bytes);
        else
            fprintf(stderr, "%s: row %lld (position %zu): %s\n", b->name, (long long)id, pos,
                    e->type == REDIS_REPLY_NIL     ? "missing"
                    : e->type == REDIS_REPLY_ERROR ? e->str
                                                   : "not a string");
        return -1;
    }
    memcpy(dst, e->str, b->row_bytes);
    return 0;
}

static int redis_mget_gather(ec_baseline *b, const int64_t *ids, size_t n, void *out)
{
    unsigned char *o = out;
    if (n == 0)
        return 0;
    if (redis_prepare(b, ids, n) != 0)
        return -1;
    b->argv[0] = "MGET";
    b->argvlen[0] = 4;
    redisReply *r = redisCommandArgv(b->c, (int)(n + 1), b->argv, b->argvlen);
    if (r == NULL)
        return redis_io_failed(b, "MGET");
    int rc = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != n) {
        fprintf(stderr, "%s: MGET of %zu keys: %s\n", b->name, n,
                r->type == REDIS_REPLY_ERROR ? r->str : "reply is not an array of n elements");
        rc = -1;
    }
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = redis_take_row(b, r->element[i], ids[i], i, o + i * b->row_bytes);
    freeReplyObject(r);
    return rc;
}

static int redis_pipeline_gather(ec_baseline *b, const int64_t *ids, size_t n, void *out)
{
    unsigned char *o = out;
    if (n == 0)
        return 0;
    if (redis_prepare(b, ids, n) != 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const char *argv[2] = {"GET", b->argv[i + 1]};
        const size_t argvlen[2] = {3, b->argvlen[i + 1]};
        if (redisAppendCommandArgv(b->c, 2, argv, argvlen) != REDIS_OK)
            return redis_io_failed(b, "GET (append)");
    }
    /* Read all n replies even after a bad one, so the stream stays in step. */
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        void *v;
        if (redisGetReply(b->c, &v) != REDIS_OK)
            return redis_io_failed(b, "GET");
        redisReply *r = v;
        if (rc == 0)
            rc = redis_take_row(b, r, ids[i], i, o + i * b->row_bytes);
        freeReplyObject(r);
    }
    return rc;
}

static void redis_describe(ec_baseline *b, char *buf, size_t len)
{
    char where[160];
    ec_bl_server_describe(b->srv, where, sizeof where);
    snprintf(buf, len, "transport=%s hiredis %s", where,
             strcmp(b->name, "redis-mget") == 0 ? "MGET" : "pipelined GETs");
}

const ec_baseline_ops ec_baseline_redis_mget_ops = {
    .name = "redis-mget",
    .open = redis_mget_open,
    .load = redis_load,
    .gather = redis_mget_gather,
    .close = redis_close,
    .describe = redis_describe,
};

const ec_baseline_ops ec_baseline_redis_pipeline_ops = {
    .name = "redis-pipeline",
    .open = redis_pipeline_open,
    .load = redis_load,
    .gather = redis_pipeline_gather,
    .close = redis_close,
    .describe = redis_describe,
};
