/*
 * driver.c - standalone main for the fuzz targets when they are not built
 * with libFuzzer: a deterministic mutation loop that ctest runs as a smoke
 * test (fuzz_npy_smoke, fuzz_safetensors_smoke, fuzz_proto_smoke,
 * fuzz_origin_smoke, fuzz_rcluster_smoke).
 *
 *     fuzz_X [-n ITER] [-s SEED] [-o DIR] [CORPUS...]
 *
 * The seeds are valid inputs built in memory: .npy and .safetensors files
 * written by the test helpers (ect_write_npy, ect_write_safetensors) into a
 * temporary directory and read back, plus variants the helpers cannot write
 * (.npy format 2.0/3.0, big-endian); for the protocol, one message of each
 * op built with ec_msg_begin/ec_put_*; for partition files' origin records,
 * records made by ec_partfile_origin_encode; for the Redis Cluster client,
 * fake node scripts (fuzz_rcluster.c: slot maps, values short and long,
 * redirects, refusals, truncated replies). CORPUS arguments (files, or
 * directories of files such as a libFuzzer corpus) join the seeds. Every
 * seed runs unmutated, then ITER inputs (default 20000) each made from a
 * seed, or from the previous input, by one to four mutations: bit flips,
 * byte sets, truncation, extension with random bytes, integers of 1/2/4/8
 * bytes overwritten at random offsets with boundary values (0, 1, all ones,
 * 2^31, 2^63 and neighbours), splices of two seeds, format tokens and
 * boundary numbers written over the text headers, and range deletion and
 * duplication. A mutation that changes the length usually also patches the
 * format's length field (npy header length, safetensors header length,
 * message body length, the length of the RESP bulk string the edit is in)
 * so the input gets past the first check. -o DIR
 * writes the seeds to DIR as files, to start a libFuzzer corpus.
 *
 * The input sequence depends only on SEED and the corpus, so a failure
 * reproduces with the same command line (for rcluster the same inputs run,
 * but what they do hangs on TCP and timers as well: nearly always the same).
 * EC_FUZZ_KIND ("npy", "safetensors", "proto", "origin", "rcluster") picks
 * the seeds and is set by CMake per target.
 * Exit 0 when every input ran, 2 on a usage or I/O error; a broken
 * invariant aborts. Single-threaded (the rcluster target runs a thread of
 * its own).
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/partfile.h"
#include "core/proto.h"
#include "core/rcluster.h"
#include "fuzz.h"
#include "tests/testutil.h"

#ifndef EC_FUZZ_KIND
#error "EC_FUZZ_KIND must name the target, a string: npy, safetensors, proto, origin or rcluster"
#endif

#define FUZZ_MAX_LEN (1u << 20) /* inputs never grow past this */

/* ------------------------------------------------------------------ */
/* Buffers and the seed pool                                           */

struct buf {
    uint8_t *p;
    size_t n, cap;
};

struct pool {
    struct buf *v;
    size_t n, cap;
};

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);

    if (!q) {
        fprintf(stderr, "fuzz_%s: out of memory (%zu bytes)\n", EC_FUZZ_KIND, n);
        exit(2);
    }
    return q;
}

static void buf_reserve(struct buf *b, size_t n)
{
    if (n <= b->cap)
        return;
    b->cap = n < 256 ? 256 : n + n / 2;
    b->p = xrealloc(b->p, b->cap);
}

static void buf_set(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->p, p, n);
    b->n = n;
}

/* Insert n bytes of p (or uninitialised room when p is NULL) at off. */
static void buf_insert(struct buf *b, size_t off, const void *p, size_t n)
{
    buf_reserve(b, b->n + n);
    memmove(b->p + off + n, b->p + off, b->n - off);
    if (p)
        memcpy(b->p + off, p, n);
    b->n += n;
}

static void buf_erase(struct buf *b, size_t off, size_t n)
{
    memmove(b->p + off, b->p + off + n, b->n - off - n);
    b->n -= n;
}

/* Add a copy of p[0..n) to the pool. */
static void pool_add(struct pool *pl, const void *p, size_t n)
{
    struct buf b = {0};

    if (pl->n == pl->cap) {
        pl->cap = pl->cap ? 2 * pl->cap : 16;
        pl->v = xrealloc(pl->v, pl->cap * sizeof(*pl->v));
    }
    buf_set(&b, p, n);
    pl->v[pl->n++] = b;
}

static void pool_free(struct pool *pl)
{
    for (size_t i = 0; i < pl->n; i++)
        free(pl->v[i].p);
    free(pl->v);
}

/* Read a whole file into the pool. Returns 0 or -1 (message printed). */
static int pool_add_file(struct pool *pl, const char *path)
{
    size_t len = 0;
    void *p = ect_read_file(path, &len);

    if (!p) {
        fprintf(stderr, "fuzz_%s: cannot read corpus file %s: %s\n", EC_FUZZ_KIND, path,
                strerror(errno));
        return -1;
    }
    if (len > FUZZ_MAX_LEN)
        len = FUZZ_MAX_LEN;
    pool_add(pl, p, len);
    free(p);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A corpus argument: a file, or a directory whose regular files are read
 * in name order (so the run stays deterministic). */
static int pool_add_path(struct pool *pl, const char *path)
{
    struct stat st;
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0;
    DIR *dir;
    int rc = 0;

    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return pool_add_file(pl, path);
    dir = opendir(path);
    if (!dir) {
        fprintf(stderr, "fuzz_%s: cannot open corpus directory %s: %s\n", EC_FUZZ_KIND,
                path, strerror(errno));
        return -1;
    }
    while ((e = readdir(dir)) != NULL) {
        char *full;
        if (e->d_name[0] == '.')
            continue;
        if (asprintf(&full, "%s/%s", path, e->d_name) < 0) {
            rc = -1;
            break;
        }
        if (stat(full, &st) != 0 || !S_ISREG(st.st_mode)) {
            free(full);
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            names = xrealloc(names, cap * sizeof(*names));
        }
        names[n++] = full;
    }
    closedir(dir);
    if (n > 1)
        qsort(names, n, sizeof(*names), cmp_str);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0)
            rc = pool_add_file(pl, names[i]);
        free(names[i]);
    }
    free(names);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Seeds                                                               */

/* Write a file with the helpers into dir, read it back into the pool. */
static int seed_file_done(struct pool *pl, const char *path, int wrc)
{
    if (wrc != 0) {
        fprintf(stderr, "fuzz_%s: cannot write seed %s: %s\n", EC_FUZZ_KIND, path,
                strerror(-wrc));
        return -1;
    }
    return pool_add_file(pl, path);
}

/* .npy format 2.0/3.0 copy of a 1.0 file: a 4-byte header length. */
static void seed_npy_v2(struct pool *pl, const struct buf *v1, uint8_t major)
{
    struct buf b = {0};
    uint8_t len4[4];
    size_t hl;

    if (v1->n < 10)
        return;
    hl = (size_t)v1->p[8] | (size_t)v1->p[9] << 8;
    buf_set(&b, v1->p, v1->n);
    b.p[6] = major;
    for (int i = 0; i < 4; i++)
        len4[i] = (uint8_t)(hl >> (8 * i));
    buf_erase(&b, 8, 2);
    buf_insert(&b, 8, len4, 4);
    pool_add(pl, b.p, b.n);
    free(b.p);
}

/* Big-endian copy: "'<" becomes "'>" in the descr. */
static void seed_npy_be(struct pool *pl, const struct buf *le)
{
    struct buf b = {0};
    uint8_t *q;

    buf_set(&b, le->p, le->n);
    q = b.n > 10 ? memmem(b.p, b.n, "'<", 2) : NULL;
    if (q) {
        q[1] = '>';
        pool_add(pl, b.p, b.n);
    }
    free(b.p);
}

static int seeds_npy(struct pool *pl, const char *dir)
{
    static const struct {
        ec_dtype dtype;
        uint32_t ndim;
        uint64_t shape[EC_MAX_DIMS];
    } files[] = {
        {EC_DTYPE_F32, 2, {3, 4}},
        {EC_DTYPE_F16, 1, {5}},
        {EC_DTYPE_F64, 0, {0}},
        {EC_DTYPE_I8, 3, {2, 3, 4}},
        {EC_DTYPE_U8, 1, {0}},
        {EC_DTYPE_I32, 8, {1, 2, 1, 2, 1, 1, 2, 1}},
        {EC_DTYPE_I64, 2, {7, 2}},
        {EC_DTYPE_F32, 2, {0, 16}},
    };
    size_t first = pl->n;
    int rc = 0;

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]) && rc == 0; i++) {
        char *path;
        if (asprintf(&path, "%s/seed%zu.npy", dir, i) < 0)
            return -1;
        rc = seed_file_done(pl, path, ect_write_npy(path, files[i].dtype, files[i].ndim,
                                                    files[i].shape, i + 1));
        free(path);
    }
    if (rc == 0) {
        size_t last = pl->n;
        for (size_t i = first; i < last; i++) {
            struct buf b = {0};
            /* Copy: pool_add may move pl->v. */
            buf_set(&b, pl->v[i].p, pl->v[i].n);
            if (i == first)
                seed_npy_v2(pl, &b, 2);
            if (i == first + 1)
                seed_npy_v2(pl, &b, 3);
            seed_npy_be(pl, &b);
            free(b.p);
        }
    }
    return rc;
}

static int seeds_safetensors(struct pool *pl, const char *dir)
{
    static const ect_st_tensor one[] = {{"w", EC_DTYPE_F32, 2, {3, 4}, 1}};
    static const ect_st_tensor mixed[] = {
        {"emb", EC_DTYPE_F16, 2, {4, 2}, 2},   {"bias", EC_DTYPE_BF16, 1, {3}, 3},
        {"scale", EC_DTYPE_F64, 0, {0}, 4},    {"ids", EC_DTYPE_I64, 1, {2}, 5},
        {"empty", EC_DTYPE_I32, 2, {0, 7}, 6}, {"mask", EC_DTYPE_U8, 1, {5}, 7},
        {"q", EC_DTYPE_I8, 3, {1, 2, 3}, 8},
    };
    static const ect_st_tensor deep[] = {
        {"deep", EC_DTYPE_I32, 8, {1, 2, 1, 2, 1, 1, 2, 1}, 9},
        {"layer.0.weight", EC_DTYPE_F32, 2, {2, 2}, 10},
    };
    static const struct {
        const ect_st_tensor *t;
        size_t n;
    } files[] = {{one, 1}, {mixed, 7}, {deep, 2}, {NULL, 0}};
    int rc = 0;

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]) && rc == 0; i++) {
        char *path;
        if (asprintf(&path, "%s/seed%zu.safetensors", dir, i) < 0)
            return -1;
        rc = seed_file_done(pl, path, ect_write_safetensors(path, files[i].t, files[i].n));
        free(path);
    }
    return rc;
}

/* Finish a message and add it to the pool. */
static void seed_msg(struct pool *pl, ec_wbuf *w)
{
    size_t len = ec_msg_end(w);

    if (len == 0) {
        fprintf(stderr, "fuzz_%s: a seed message overflowed\n", EC_FUZZ_KIND);
        exit(2);
    }
    pool_add(pl, w->buf, len);
}

static int seeds_proto(struct pool *pl)
{
    static uint8_t m[EC_MSG_MAX];
    const uint16_t R = EC_OP_REPLY;
    ec_proto_tensor t = {.id = 7, .model = "bert-base", .version = 3, .name = "emb",
                         .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {1000, 64},
                         .rows = 1000, .row_bytes = 256, .rows_per_partition = 128,
                         .partitions = 8};
    ec_wbuf w;

    ec_msg_begin(&w, m, sizeof(m), EC_OP_HELLO, 1, 0);
    ec_put_u32(&w, 0);
    ec_put_str(&w, "fuzz-client");
    seed_msg(pl, &w);
    ec_msg_begin(&w, m, sizeof(m), EC_OP_HELLO | R, 1, 0);
    ec_put_u64(&w, 5);
    ec_put_u64(&w, 64u << 20);
    ec_put_u32(&w, 1);
    ec_put_u32(&w, 4096);
    ec_put_u32(&w, 1234);
    ec_put_u64(&w, 99);
    ec_put_str(&w, "0.1.0");
    seed_msg(pl, &w);

    ec_msg_begin(&w, m, sizeof(m), EC_OP_RESOLVE, 2, 0);
    ec_put_str(&w, "bert-base");
    ec_put_str(&w, "latest");
    ec_put_str(&w, "emb");
    seed_msg(pl, &w);
    ec_msg_begin(&w, m, sizeof(m), EC_OP_RESOLVE | R, 2, 0);
    ec_put_tensor(&w, &t);
    seed_msg(pl, &w);

    ec_msg_begin(&w, m, sizeof(m), EC_OP_FAULT, 3, 0);
    ec_put_u32(&w, 7);
    ec_put_u32(&w, 3);
    for (uint32_t i = 0; i < 3; i++)
        ec_put_u32(&w, i * 2);
    seed_msg(pl, &w);

    ec_msg_begin(&w, m, sizeof(m), EC_OP_PIN, 4, 0);
    ec_put_u32(&w, 7);
    seed_msg(pl, &w);
    ec_msg_begin(&w, m, sizeof(m), EC_OP_PIN | R, 4, 0);
    ec_put_u64(&w, 11);
    ec_put_u64(&w, 4096);
    ec_put_u64(&w, 256000);
    seed_msg(pl, &w);
    ec_msg_begin(&w, m, sizeof(m), EC_OP_UNPIN, 5, 0);
    ec_put_u64(&w, 11);
    seed_msg(pl, &w);

    ec_msg_begin(&w, m, sizeof(m), EC_OP_STATS, 6, 0);
    seed_msg(pl, &w);
    ec_msg_begin(&w, m, sizeof(m), EC_OP_STATS | R, 6, 0);
    ec_put_u32(&w, 2);
    ec_put_str(&w, "hits");
    ec_put_u64(&w, 12345);
    ec_put_str(&w, "faults");
    ec_put_u64(&w, 6);
    seed_msg(pl, &w);

    ec_msg_begin(&w, m, sizeof(m), EC_OP_LIST, 7, 0);
    ec_put_str(&w, "bert-base");
    ec_put_u32(&w, 0);
    ec_put_u32(&w, 0);
    seed_msg(pl, &w);
    ec_msg_begin(&w, m, sizeof(m), EC_OP_LIST | R, 7, 0);
    ec_put_u32(&w, 0);
    ec_put_u32(&w, 0);
    ec_put_u32(&w, 2);
    ec_put_u8(&w, EC_LIST_VERSION);
    ec_put_str(&w, "bert-base");
    ec_put_i64(&w, 3);
    ec_put_i64(&w, 12);
    ec_put_str(&w, "{\"lr\":0.01}");
    ec_put_str(&w, "latest,prod");
    ec_put_i64(&w, 1700000000);
    ec_put_u32(&w, 1);
    ec_put_u64(&w, 256000);
    ec_put_u8(&w, EC_LIST_TENSOR);
    ec_put_str(&w, "emb");
    ec_put_u32(&w, EC_DTYPE_F32);
    ec_put_u32(&w, 2);
    ec_put_u64(&w, 1000);
    ec_put_u64(&w, 64);
    ec_put_u64(&w, 8);
    ec_put_u64(&w, 256000);
    seed_msg(pl, &w);

    ec_msg_begin(&w, m, sizeof(m), EC_OP_ALIAS, 8, 0);
    ec_put_str(&w, "bert-base");
    ec_put_str(&w, "prod");
    ec_put_i64(&w, 3);
    seed_msg(pl, &w);

    ec_msg_begin(&w, m, sizeof(m), EC_OP_FIND, 9, 0);
    ec_put_str(&w, "bert-base");
    ec_put_i64(&w, 12);
    ec_put_str(&w, "{\"lr\":0.01}");
    seed_msg(pl, &w);
    ec_msg_begin(&w, m, sizeof(m), EC_OP_FIND | R, 9, 0);
    ec_put_i64(&w, 3);
    seed_msg(pl, &w);

    ec_msg_begin(&w, m, sizeof(m), EC_OP_IMPORT, 10, 0);
    ec_put_str(&w, "bert-base");
    ec_put_i64(&w, 4);
    ec_put_i64(&w, 13);
    ec_put_str(&w, "{\"lr\":0.01}");
    ec_put_u64(&w, 1u << 20);
    ec_put_u32(&w, 2);
    ec_put_str(&w, "emb.npy");
    ec_put_str(&w, "model.safetensors");
    seed_msg(pl, &w);
    ec_msg_begin(&w, m, sizeof(m), EC_OP_IMPORT | R, 10, 0);
    ec_put_u32(&w, 2);
    seed_msg(pl, &w);

    ec_msg_begin(&w, m, sizeof(m), EC_OP_RESOLVE | R, 11, EC_ENOENT);
    ec_put_str(&w, "no such model 'bert-large'");
    seed_msg(pl, &w);

    /* The cache manager's requests and replies. */
    {
        ec_proto_ns_opts o = {.ttl_us = 300000000, .stale_us = -1, .negative_ttl_us = 30000000,
                              .jitter_ppm = 100000, .lease_us = 30000000, .max_computing = 64,
                              .negative_max = 65536};
        ec_proto_ns ns = {.name = "answers", .owner_uid = 1000, .flags = EC_NS_SHARED,
                          .generation = 3, .bind_model = "bert-base",
                          .bind_version = "current", .bound_version = 4, .opts = o};
        ec_msg_begin(&w, m, sizeof(m), EC_OP_NS_OPEN, 12, 0);
        ec_put_str(&w, "answers");
        ec_put_u32(&w, EC_NS_CREATE | EC_NS_SHARED);
        ec_put_str(&w, "bert-base");
        ec_put_str(&w, "current");
        ec_put_ns_opts(&w, &o);
        seed_msg(pl, &w);
        ec_msg_begin(&w, m, sizeof(m), EC_OP_NS_OPEN | R, 12, 0);
        ec_put_u32(&w, 5);
        ec_put_u64(&w, 0x8000000000000001ull);
        ec_put_u32(&w, 3);
        ec_put_u32(&w, 0);
        seed_msg(pl, &w);
        ec_msg_begin(&w, m, sizeof(m), EC_OP_RES_LEASE, 13, 0);
        ec_put_u32(&w, 5);
        ec_put_u32(&w, EC_RES_ALLOW_STALE);
        ec_put_bytes(&w, "what is 2+2", 11);
        ec_put_i64(&w, 0);
        seed_msg(pl, &w);
        ec_msg_begin(&w, m, sizeof(m), EC_OP_RES_PUT, 14, 0);
        ec_put_u32(&w, 5);
        ec_put_u32(&w, EC_RES_TENSOR);
        ec_put_u64(&w, 0);
        ec_put_u32(&w, 1200);
        ec_put_u32(&w, EC_DTYPE_F32);
        ec_put_u32(&w, 2);
        ec_put_u64(&w, 1);
        ec_put_u64(&w, 2);
        ec_put_bytes(&w, "what is 2+2", 11);
        ec_put_u64(&w, 8);
        ec_put_u32(&w, 1);
        ec_put_u64(&w, 0x4080000040800000ull);
        seed_msg(pl, &w);
        ec_msg_begin(&w, m, sizeof(m), EC_OP_RES_PURGE, 15, 0);
        ec_put_u32(&w, 5);
        ec_put_u32(&w, 0);
        ec_put_bytes(&w, "k", 1);
        seed_msg(pl, &w);
        ec_msg_begin(&w, m, sizeof(m), EC_OP_NS_LIST | R, 16, 0);
        ec_put_u32(&w, 0);
        ec_put_u32(&w, 2);
        ec_put_ns(&w, &ns);
        ns.flags = 0;
        ns.bind_model[0] = ns.bind_version[0] = 0;
        ec_put_ns(&w, &ns);
        seed_msg(pl, &w);
    }
    return 0;
}

/* Origin records (partition file header pages): with params, with params
 * too long to keep, with names of the longest length. */
static int seeds_origin(struct pool *pl)
{
    static unsigned char rec[EC_PARTFILE_ALIGN - EC_PARTFILE_ORIGIN_OFF];
    static ec_partfile_origin o;
    static char longp[EC_PARTFILE_ORIGIN_ROOM + 64];
    const char *params[] = {"{}", "{\"lr\":0.0001,\"layers\":[1,2,3]}", longp};

    memset(longp, 'x', sizeof(longp) - 1);
    longp[0] = '"';
    longp[sizeof(longp) - 2] = '"';
    for (size_t i = 0; i < sizeof(params) / sizeof(params[0]); i++) {
        memset(&o, 0, sizeof(o));
        o.present = true;
        if (i == 2) {
            memset(o.model, 'm', EC_NAME_MAX);
            memset(o.tensor, 't', EC_NAME_MAX);
        } else {
            snprintf(o.model, sizeof(o.model), "bert-base");
            snprintf(o.tensor, sizeof(o.tensor), "encoder.layer.%zu.weight", i);
        }
        o.version = 3 + (int64_t)i;
        o.round = (int64_t)i - 1;
        o.created_unix = 1764806400 + (int64_t)i;
        o.version_tensors = 2 + (uint32_t)i;
        if (ec_partfile_origin_encode(&o, params[i], rec, sizeof(rec), NULL)) {
            fprintf(stderr, "fuzz_%s: a seed record did not encode\n", EC_FUZZ_KIND);
            return -1;
        }
        pool_add(pl, rec, sizeof(rec));
    }
    return 0;
}

/* Fake node scripts for fuzz_rcluster (its comment has the format): mode A
 * answers CLUSTER SLOTS with the first part, mode B with a map of every
 * slot to the node; the later parts answer the other commands one each, in
 * the order the client sends them: GET k0..k4 (into destinations of 100000,
 * 16, 65536, none and 70000 bytes), GET k0, WATCH k1 and GET k1, MULTI, DEL
 * k1 and EXEC (delete k1 if it holds "v"); redirects and retries insert
 * theirs. A part that is not whole replies ends its connection. */

static void buf_add(struct buf *b, const char *s)
{
    buf_insert(b, b->n, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void buf_addf(struct buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        fprintf(stderr, "fuzz_%s: a seed line is too long\n", EC_FUZZ_KIND);
        exit(2);
    }
    buf_insert(b, b->n, tmp, (size_t)n);
}

/* The next part: a separator, then s. */
static void rc_part(struct buf *b, const char *s)
{
    buf_add(b, FUZZ_RCLUSTER_SEP);
    buf_add(b, s);
}

/* A bulk string of n bytes whose pattern tag sets apart from the others. */
static void rc_bulk(struct buf *b, size_t n, unsigned tag)
{
    size_t at;

    buf_addf(b, "$%zu\r\n", n);
    at = b->n;
    buf_insert(b, at, NULL, n);
    for (size_t i = 0; i < n; i++)
        b->p[at + i] = (uint8_t)('a' + (i * 7 + tag * 13 + i / 251) % 26);
    buf_add(b, "\r\n");
}

/* One CLUSTER SLOTS range: [lo, hi, master, replicas...]; host NULL is nil,
 * port "@port" the fake node's. */
static void rc_range(struct buf *b, unsigned lo, unsigned hi, const char *host,
                     const char *port, unsigned replicas)
{
    static const char id[] = "0123456789abcdef0123456789abcdef01234567";

    buf_addf(b, "*%u\r\n:%u\r\n:%u\r\n*3\r\n", 3 + replicas, lo, hi);
    if (host)
        buf_addf(b, "$%zu\r\n%s\r\n", strlen(host), host);
    else
        buf_add(b, "$-1\r\n");
    buf_addf(b, ":%s\r\n$40\r\n%s\r\n", port, id);
    for (unsigned r = 0; r < replicas; r++)
        buf_addf(b, "*3\r\n$9\r\n127.0.0.1\r\n:%u\r\n$40\r\n%s\r\n", 7100 + r, id);
}

/* The answers to delete-if-equal when all goes well: WATCH/GET k1 ("v"),
 * MULTI/DEL/EXEC (deleted). */
static void rc_del_ok(struct buf *b)
{
    static const char *const del[] = {"+OK\r\n", "$1\r\nv\r\n", "+OK\r\n", "+QUEUED\r\n",
                                      "*1\r\n:1\r\n"};

    for (size_t i = 0; i < sizeof(del) / sizeof(del[0]); i++)
        rc_part(b, del[i]);
}

/* The answers after the five keys' when all goes well: GET k0, then
 * delete-if-equal's. */
static void rc_tail(struct buf *b)
{
    rc_part(b, "$3\r\nbar\r\n");
    rc_del_ok(b);
}

/* The seed is done: into the pool, and b emptied for the next. */
static void rc_seed(struct pool *pl, struct buf *b)
{
    pool_add(pl, b->p, b->n);
    b->n = 0;
}

static int seeds_rcluster(struct pool *pl)
{
    const char *port = FUZZ_RCLUSTER_PORT;
    unsigned s0 = ec_rcluster_keyslot("k0", 2), s1 = ec_rcluster_keyslot("k1", 2);
    static const char *const shorts[] = {"$5\r\nhello\r\n", "$-1\r\n", "$3\r\nabc\r\n",
                                         "$0\r\n\r\n", "$5\r\nworld\r\n"};
    static const char *const refusals[] = {
        "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
        "-CLUSTERDOWN The cluster is down\r\n",
        "-LOADING Redis is loading the dataset in memory\r\n",
        "-MASTERDOWN Link with MASTER is down\r\n",
        "-READONLY You can't write against a read only replica.\r\n",
        "-NOAUTH Authentication required.\r\n",
        "-ERR unknown command\r\n",
        "-MOVED 99999 127.0.0.1:7000\r\n",
        "-ASK x\r\n",
    };
    static const char *const nots[] = {
        "-ERR This instance has cluster support disabled\r\n",
        "-NOAUTH Authentication required.\r\n", "*0\r\n", ":1\r\n", "$-1\r\n", "+OK\r\n",
        "*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n",
        "*2\r\n*3\r\n:0\r\n:100\r\n*2\r\n$0\r\n\r\n:7000\r\n"
        "*3\r\n:100\r\n:200\r\n*2\r\n$0\r\n\r\n:7000\r\n",
        "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:0\r\n",
        "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$3\r\na b\r\n:7000\r\n",
        "*131073\r\n:1\r\n", "*131072\r\n:1\r\n:2\r\n",
        "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", "!!!\r\n",
    };
    struct buf b = {0}, t = {0};

    /* Mode A: maps. One range, to the node under a name of its own; then
     * the same map cut short. */
    buf_add(&b, "A*1\r\n");
    rc_range(&b, 0, 16383, "n1", port, 0);
    for (size_t i = 0; i < 5; i++)
        rc_part(&b, shorts[i]);
    rc_tail(&b);
    buf_set(&t, b.p, b.n);
    rc_seed(pl, &b);
    buf_insert(&b, 0, t.p, 40);
    rc_seed(pl, &b);
    /* Several ranges: the node under names of its own, with replicas, under
     * an empty and a nil host (the node asked: the seed), a node of unknown
     * address ("?"), one on a port nobody serves, with Redis 7's metadata
     * after the id. */
    buf_add(&b, "A*6\r\n");
    rc_range(&b, 0, 5460, "n1", port, 2);
    rc_range(&b, 5461, 9000, "", port, 1);
    rc_range(&b, 9001, 10000, NULL, port, 0);
    rc_range(&b, 10001, 11000, "?", "7000", 0);
    rc_range(&b, 11001, 12000, "n2.example", port, 0);
    buf_add(&b, "*3\r\n:12001\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n"
                "0123456789abcdef0123456789abcdef01234567\r\n*2\r\n$8\r\nhostname\r\n"
                "$5\r\nnode3\r\n");
    for (size_t i = 0; i < 5; i++)
        rc_part(&b, shorts[4 - i]);
    rc_tail(&b);
    rc_seed(pl, &b);
    /* Many small ranges: every other one to the node, the rest to [::1]. */
    buf_add(&b, "A*128\r\n");
    for (unsigned r = 0; r < 128; r++)
        rc_range(&b, r * 128, r * 128 + 127, r % 2 ? "::1" : "127.0.0.1",
                 r % 2 ? "7002" : port, r % 3 == 0);
    rc_part(&b, "$-1\r\n");
    rc_seed(pl, &b);
    /* The longest host a node may have, and one over it. */
    for (size_t len = 255; len <= 256; len++) {
        char host[257];
        memset(host, 'h', len);
        host[len] = '\0';
        buf_add(&b, "A*1\r\n");
        rc_range(&b, 0, 16383, host, port, 0);
        rc_part(&b, "$1\r\nh\r\n");
        rc_seed(pl, &b);
    }
    /* More ranges than slots; more nodes than a handle tracks (1024). */
    buf_add(&b, "A*16385\r\n");
    for (unsigned r = 0; r < 16385; r++)
        buf_add(&b, "$-1\r\n");
    rc_seed(pl, &b);
    buf_add(&b, "A*1100\r\n");
    for (unsigned r = 0; r < 1100; r++) {
        char p[8];
        snprintf(p, sizeof(p), "%u", 10000 + r);
        rc_range(&b, r, r, "127.0.0.1", p, 0);
    }
    rc_seed(pl, &b);
    /* Not maps. */
    for (size_t i = 0; i < sizeof(nots) / sizeof(nots[0]); i++) {
        buf_addf(&b, "A%s", nots[i]);
        rc_seed(pl, &b);
    }

    /* Mode B: the map is the node's own. All goes well: k0 and k2 straight
     * into their destinations, k1 longer than its 16 bytes, k3 nil, k4
     * 100000 bytes for a destination of 70000, GET k0 a long value with no
     * destination. */
    buf_add(&b, "B");
    rc_part(&b, "");
    rc_bulk(&b, 100000, 0);
    rc_part(&b, "");
    rc_bulk(&b, 40, 1);
    rc_part(&b, "");
    rc_bulk(&b, 65536, 2);
    rc_part(&b, "$-1\r\n");
    rc_part(&b, "");
    rc_bulk(&b, 100000, 4);
    rc_part(&b, "");
    rc_bulk(&b, 100000, 5);
    rc_del_ok(&b);
    rc_seed(pl, &b);
    /* Long values of another length than k0's destination (100000 bytes),
     * whose headers the header-first read takes in whole: one byte longer,
     * and 65536 bytes. (The direct path is open to a reply that starts a
     * read: here the round's first.) */
    for (size_t len = 100001; len >= 65536; len -= 100001 - 65536) {
        buf_add(&b, "B");
        rc_part(&b, "");
        rc_bulk(&b, len, 11);
        for (size_t i = 1; i < 5; i++)
            rc_part(&b, shorts[i]);
        rc_tail(&b);
        rc_seed(pl, &b);
    }
    /* Short values; k2 one byte short of the direct path, k4 exactly its
     * destination's 70000; GET k0 nil; k1 holds another value (then
     * UNWATCH); a second seed where EXEC fails (nil). */
    buf_add(&b, "B");
    rc_part(&b, "$5\r\nhello\r\n");
    rc_part(&b, "$0\r\n\r\n");
    rc_part(&b, "");
    rc_bulk(&b, 65535, 3);
    rc_part(&b, "$3\r\nbar\r\n");
    rc_part(&b, "");
    rc_bulk(&b, 70000, 6);
    rc_part(&b, "$-1\r\n");
    buf_set(&t, b.p, b.n);
    rc_part(&b, "+OK\r\n");
    rc_part(&b, "$1\r\nw\r\n");
    rc_part(&b, "+OK\r\n");
    rc_seed(pl, &b);
    buf_set(&b, t.p, t.n);
    rc_part(&b, "+OK\r\n");
    rc_part(&b, "$1\r\nv\r\n");
    rc_part(&b, "+OK\r\n");
    rc_part(&b, "+QUEUED\r\n");
    rc_part(&b, "*-1\r\n");
    rc_seed(pl, &b);
    /* Several replies in one answer (one more than asked for), then the
     * rest, one each. */
    buf_add(&b, "B");
    rc_part(&b, "$1\r\na\r\n$1\r\nb\r\n");
    rc_part(&b, "$1\r\nc\r\n");
    rc_part(&b, "$1\r\nd\r\n");
    rc_part(&b, "$1\r\ne\r\n");
    rc_tail(&b);
    rc_seed(pl, &b);
    /* Redirects of k0 to the node itself: MOVED to its address, and to a
     * name of its own; ASK, under its address and with an empty host. Then
     * the other keys' values, ASKING's +OK after an ASK, and k0's long
     * value, into its destination. */
    for (int kind = 0; kind < 4; kind++) {
        buf_add(&b, "B");
        buf_add(&b, FUZZ_RCLUSTER_SEP);
        if (kind == 0)
            buf_addf(&b, "-MOVED %u 127.0.0.1:%s\r\n", s0, port);
        else if (kind == 1)
            buf_addf(&b, "-MOVED %u other-name:%s\r\n", s0, port);
        else if (kind == 2)
            buf_addf(&b, "-ASK %u 127.0.0.1:%s\r\n", s0, port);
        else
            buf_addf(&b, "-ASK %u :%s\r\n", s0, port);
        for (size_t i = 1; i < 5; i++)
            rc_part(&b, shorts[i]);
        if (kind >= 2)
            rc_part(&b, "+OK\r\n");
        rc_part(&b, "");
        rc_bulk(&b, 100000, 7);
        rc_tail(&b);
        rc_seed(pl, &b);
    }
    /* Redirects that never settle, and one for another slot. */
    buf_add(&b, "B");
    buf_add(&b, FUZZ_RCLUSTER_SEP);
    buf_addf(&b, "-MOVED %u 127.0.0.1:%s\r\n", s1, port);
    buf_add(&b, FUZZ_RCLUSTER_SEP);
    buf_addf(&b, "-MOVED %u 127.0.0.1:%s\r\n", s0, port);
    rc_seed(pl, &b);
    /* A redirect to a node nobody serves, whose map (the first part: what a
     * refresh during the call gets) moves every slot there; a map that is
     * garbage, with CLUSTERDOWN. */
    buf_add(&b, "B*1\r\n");
    rc_range(&b, 0, 16383, "127.0.0.1", "7000", 0);
    buf_add(&b, FUZZ_RCLUSTER_SEP);
    buf_addf(&b, "-MOVED %u 127.0.0.1:7000\r\n", s0);
    rc_part(&b, "$1\r\nv\r\n");
    rc_seed(pl, &b);
    buf_add(&b, "B!!!\r\n");
    rc_part(&b, "-CLUSTERDOWN The cluster is down\r\n");
    rc_part(&b, "$1\r\nv\r\n");
    rc_seed(pl, &b);
    /* Refusals of k0, then values. */
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++) {
        buf_add(&b, "B");
        rc_part(&b, refusals[i]);
        for (size_t k = 1; k < 5; k++)
            rc_part(&b, shorts[k]);
        rc_tail(&b);
        rc_seed(pl, &b);
    }
    /* Not values: an integer, a status, arrays (MGET's answer), nested. */
    buf_add(&b, "B");
    rc_part(&b, ":5\r\n");
    rc_part(&b, "+OK\r\n");
    rc_part(&b, "*2\r\n$1\r\na\r\n$1\r\nb\r\n");
    rc_part(&b, "*-1\r\n");
    rc_part(&b, "*5\r\n$1\r\na\r\n$-1\r\n$1\r\nc\r\n:4\r\n*1\r\n$1\r\ne\r\n");
    rc_part(&b, "*0\r\n");
    rc_part(&b, "*2\r\n+OK\r\n-ERR x\r\n");
    rc_seed(pl, &b);
    /* Over max_value_bytes (256 KiB): declared only, and whole. */
    buf_add(&b, "B");
    rc_part(&b, "$300000\r\nxxxxxxxx");
    rc_part(&b, "$26214400");
    rc_part(&b, "");
    rc_bulk(&b, (256 << 10) + 1, 10);
    rc_seed(pl, &b);
    /* A status line longer than any value, without its end. */
    buf_add(&b, "B");
    rc_part(&b, "+");
    buf_insert(&b, b.n, NULL, 300000);
    memset(b.p + b.n - 300000, 's', 300000);
    rc_seed(pl, &b);
    /* Cut short: a long value, a short one, a header, an array. */
    buf_add(&b, "B");
    rc_part(&b, "$100000\r\n");
    buf_insert(&b, b.n, NULL, 50000);
    memset(b.p + b.n - 50000, 'q', 50000);
    rc_part(&b, "$5\r\nhel");
    rc_part(&b, "$10");
    rc_part(&b, "*3\r\n:1\r\n");
    rc_seed(pl, &b);
    /* Long values not followed by CRLF. */
    buf_add(&b, "B");
    rc_part(&b, "");
    rc_bulk(&b, 100000, 8);
    b.p[b.n - 2] = 'Z';
    b.p[b.n - 1] = 'Z';
    rc_part(&b, "$1\r\nv\r\n");
    rc_part(&b, "");
    rc_bulk(&b, 65536, 9);
    b.n--;
    rc_seed(pl, &b);
    free(b.p);
    free(t.p);
    return 0;
}

static int make_seeds(struct pool *pl)
{
    char *dir;
    int rc;

    if (!strcmp(EC_FUZZ_KIND, "proto"))
        return seeds_proto(pl);
    if (!strcmp(EC_FUZZ_KIND, "origin"))
        return seeds_origin(pl);
    if (!strcmp(EC_FUZZ_KIND, "rcluster"))
        return seeds_rcluster(pl);
    dir = ect_tmpdir("ec-fuzz");
    rc = !strcmp(EC_FUZZ_KIND, "npy") ? seeds_npy(pl, dir) : seeds_safetensors(pl, dir);
    ect_rmtree(dir);
    free(dir);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Mutations                                                           */

static uint64_t rng_state;

static uint64_t rnd64(void)
{
    uint64_t x = (rng_state += 0x9e3779b97f4a7c15ULL);

    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Uniform-enough in [0, n); 0 when n is 0. */
static size_t rnd(size_t n)
{
    return n ? (size_t)(rnd64() % n) : 0;
}

/* Tokens of each format, written over or into the input. */
static const char *const npy_tokens[] = {
    "'descr'", "'shape'", "'fortran_order'", "True", "False", "<f4", ">f8", "|u1", "|b1",
    "<f2", "=i8", "<c8", "(", ")", ",", "{", "}", "[", ":", "'", "\"", "L", "-", "\n", " ",
    "\\", "True ", "\x93NUMPY", "\x01", "\x02", "\x03",
};
static const char *const st_tokens[] = {
    "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"__metadata__\"", "\"F32\"", "\"BF16\"",
    "\"BOOL\"", "[", "]", "{", "}", ",", ":", "\"", "null", "true", "[]", "{}", "\\u0000",
    "\\u00e9", "\\\"", "\\", "\xc3\xa9", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\x80",
    "\xff",
};
static const char *const rc_tokens[] = {
    "\r\n", "\r", "\n", "$", "*", ":", "+", "-", "$-1\r\n", "*-1\r\n", "$0\r\n\r\n", "*0\r\n",
    "+OK\r\n", "+QUEUED\r\n", "-MOVED ", "-ASK ", "-TRYAGAIN\r\n", "-CLUSTERDOWN\r\n",
    "-NOAUTH\r\n", "-ERR\r\n", ":0\r\n", ":16383\r\n", ":16384\r\n", ":65536\r\n",
    "127.0.0.1", "::1", "?", " ", FUZZ_RCLUSTER_PORT, ":" FUZZ_RCLUSTER_PORT "\r\n",
    "$65536\r\n", "$100000\r\n", "*3\r\n", "%", "~", "_\r\n", ",1.5\r\n", "#t\r\n",
    FUZZ_RCLUSTER_SEP,
};
static const char *const numbers[] = {
    "0", "1", "2", "7", "8", "255", "256", "65535", "2147483647", "2147483648",
    "4294967295", "4294967296", "9223372036854775807", "9223372036854775808",
    "18446744073709551615", "18446744073709551616", "99999999999999999999999", "-1", "-0",
    "1.0", "1e2", "0x10",
};
static const uint64_t boundary[] = {
    0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000,
    0x7fffffffu, 0x80000000u, 0xffffffffu, 0x100000000ull, 0x7fffffffffffffffull,
    0x8000000000000000ull, 0xffffffffffffffffull,
};

static void put_le(uint8_t *p, unsigned width, uint64_t v, bool big_endian)
{
    for (unsigned i = 0; i < width; i++)
        p[big_endian ? width - 1 - i : i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, unsigned width)
{
    uint64_t v = 0;

    for (unsigned i = width; i-- > 0;)
        v = v << 8 | p[i];
    return v;
}

/* RESP: an edit at off inside a bulk string ("$<len>\r\n" and len bytes)
 * gets <len> patched. The nearest '$' before off that starts such a header
 * is taken for the string's (a '$' inside a value may fool it: a mutation
 * like any other). */
static void fixup_resp(struct buf *b, size_t off, long delta)
{
    size_t end = off < b->n ? off : b->n;
    const uint8_t *d;

    while (end > 0 && (d = memrchr(b->p, '$', end)) != NULL) {
        size_t s = (size_t)(d - b->p), e = s + 1;
        uint64_t len = 0;
        char num[24];
        int nl;

        for (; e < b->n && e - s <= 18 && b->p[e] >= '0' && b->p[e] <= '9'; e++)
            len = len * 10 + (uint64_t)(b->p[e] - '0');
        if (e == s + 1 || e + 1 >= b->n || b->p[e] != '\r' || b->p[e + 1] != '\n') {
            end = s;
            continue;
        }
        if (off < e + 2 || off > e + 2 + len || (delta < 0 && len < (uint64_t)-delta))
            return; /* in the header, or after the string */
        nl = snprintf(num, sizeof(num), "%llu", (unsigned long long)(len + (uint64_t)delta));
        if (b->n - (e - s - 1) + (size_t)nl > FUZZ_MAX_LEN)
            return;
        buf_erase(b, s + 1, e - s - 1);
        buf_insert(b, s + 1, num, (size_t)nl);
        return;
    }
}

/* After an edit that moved the bytes at and after off by delta, patch the
 * format's length field so the input stays self-consistent (most of the
 * time: the caller skips this now and then). */
static void fixup(struct buf *b, size_t off, long delta)
{
    if (!strcmp(EC_FUZZ_KIND, "origin"))
        return; /* fixed size: the target cuts or pads the input */
    if (!strcmp(EC_FUZZ_KIND, "rcluster")) {
        fixup_resp(b, off, delta);
        return;
    }
    if (!strcmp(EC_FUZZ_KIND, "proto")) {
        if (b->n >= EC_MSG_HDR)
            put_le(b->p + offsetof(ec_msg_hdr, body_len), 4,
                   (uint64_t)(b->n - EC_MSG_HDR), false);
    } else if (!strcmp(EC_FUZZ_KIND, "npy")) {
        unsigned width = b->n >= 12 && (b->p[6] == 2 || b->p[6] == 3) ? 4 : 2;
        uint64_t hl, pre = 8 + width;
        if (b->n < pre || b->p[6] < 1 || b->p[6] > 3 || off < pre)
            return;
        hl = get_le(b->p + 8, width);
        if (off <= pre + hl && (delta >= 0 || hl >= (uint64_t)-delta))
            put_le(b->p + 8, width, hl + (uint64_t)delta, false);
    } else {
        uint64_t hl;
        if (b->n < 8 || off < 8)
            return;
        hl = get_le(b->p, 8);
        if (off <= 8 + hl && (delta >= 0 || hl >= (uint64_t)-delta))
            put_le(b->p, 8, hl + (uint64_t)delta, false);
    }
}

/* Replace the run of digits around off (or the next one) with a number. */
static bool mutate_number(struct buf *b, size_t off, size_t *at, long *delta)
{
    const char *num = numbers[rnd(sizeof(numbers) / sizeof(numbers[0]))];
    size_t s = off, e, nl = strlen(num);

    while (s < b->n && (b->p[s] < '0' || b->p[s] > '9'))
        s++;
    if (s >= b->n)
        return false;
    while (s > 0 && b->p[s - 1] >= '0' && b->p[s - 1] <= '9')
        s--;
    for (e = s; e < b->n && b->p[e] >= '0' && b->p[e] <= '9'; e++)
        ;
    if (b->n - (e - s) + nl > FUZZ_MAX_LEN)
        return false;
    buf_erase(b, s, e - s);
    buf_insert(b, s, num, nl);
    *at = s;
    *delta = (long)nl - (long)(e - s);
    return true;
}

/* One mutation of b, drawing splice partners from the pool. */
static void mutate_once(struct buf *b, const struct pool *pl)
{
    size_t at = 0;
    long delta = 0;
    bool moved = false;

    switch (rnd(11)) {
    case 0: /* flip a bit */
        if (b->n)
            b->p[rnd(b->n)] ^= (uint8_t)(1u << rnd(8));
        break;
    case 1: { /* set a byte: random or a boundary value */
        static const uint8_t bytes[] = {0, 1, 0x7f, 0x80, 0xff, ' ', '0', '9', '\n'};
        if (b->n)
            b->p[rnd(b->n)] = rnd(2) ? (uint8_t)rnd64()
                                     : bytes[rnd(sizeof(bytes))];
        break;
    }
    case 2: /* truncate */
        if (b->n) {
            at = rnd(b->n);
            delta = -(long)(b->n - at);
            b->n = at;
            moved = true;
        }
        break;
    case 3: { /* extend with random bytes */
        size_t k = 1 + rnd(64);
        if (b->n + k > FUZZ_MAX_LEN)
            break;
        at = b->n;
        buf_insert(b, b->n, NULL, k);
        for (size_t i = 0; i < k; i++)
            b->p[at + i] = (uint8_t)rnd64();
        delta = (long)k;
        moved = true;
        break;
    }
    case 4:
    case 5: { /* overwrite an integer with a boundary value */
        static const unsigned widths[] = {1, 2, 4, 8};
        unsigned w = widths[rnd(4)];
        uint64_t v = boundary[rnd(sizeof(boundary) / sizeof(boundary[0]))];
        if (b->n < w)
            break;
        if (rnd(4) == 0)
            v += rnd(2) ? 1 : (uint64_t)-1;
        put_le(b->p + rnd(b->n - w + 1), w, v, rnd(4) == 0);
        break;
    }
    case 6: { /* splice: a prefix of b and a suffix of a seed */
        const struct buf *o = &pl->v[rnd(pl->n)];
        size_t cut = rnd(b->n + 1), from = rnd(o->n + 1);
        if (cut + (o->n - from) > FUZZ_MAX_LEN)
            break;
        delta = (long)(cut + (o->n - from)) - (long)b->n;
        b->n = cut;
        buf_insert(b, cut, o->p + from, o->n - from);
        at = cut;
        moved = true;
        break;
    }
    case 7: { /* a format token, over or into the bytes */
        const char *tok;
        size_t tl;
        if (!strcmp(EC_FUZZ_KIND, "npy"))
            tok = npy_tokens[rnd(sizeof(npy_tokens) / sizeof(npy_tokens[0]))];
        else if (!strcmp(EC_FUZZ_KIND, "safetensors"))
            tok = st_tokens[rnd(sizeof(st_tokens) / sizeof(st_tokens[0]))];
        else if (!strcmp(EC_FUZZ_KIND, "rcluster"))
            tok = rc_tokens[rnd(sizeof(rc_tokens) / sizeof(rc_tokens[0]))];
        else
            tok = rnd(2) ? "\xff\xff" : "\x00";
        tl = strlen(tok) ? strlen(tok) : 1;
        at = rnd(b->n + 1);
        if (rnd(2) && at + tl <= b->n) {
            memcpy(b->p + at, tok, tl);
        } else if (b->n + tl <= FUZZ_MAX_LEN) {
            buf_insert(b, at, tok, tl);
            delta = (long)tl;
            moved = true;
        }
        break;
    }
    case 8: /* a boundary number over a number in the text */
        moved = mutate_number(b, rnd(b->n + 1), &at, &delta);
        break;
    case 9: /* delete a range */
        if (b->n) {
            size_t k = 1 + rnd(b->n < 16 ? b->n : 16);
            at = rnd(b->n - k + 1);
            buf_erase(b, at, k);
            delta = -(long)k;
            moved = true;
        }
        break;
    default: { /* duplicate a range of b elsewhere in b */
        size_t k, from;
        if (!b->n)
            break;
        k = 1 + rnd(b->n < 32 ? b->n : 32);
        from = rnd(b->n - k + 1);
        at = rnd(b->n + 1);
        if (b->n + k > FUZZ_MAX_LEN)
            break;
        {
            uint8_t tmp[32];
            memcpy(tmp, b->p + from, k);
            buf_insert(b, at, tmp, k);
        }
        delta = (long)k;
        moved = true;
        break;
    }
    }
    if (moved && rnd(4) != 0)
        fixup(b, at, delta);
}

/* ------------------------------------------------------------------ */
/* main                                                                */

/* Run one input from a heap copy of exactly its size, so AddressSanitizer
 * catches a read one byte past the end. Returns 0, or -1 out of memory. */
static int run_one(const uint8_t *p, size_t n)
{
    uint8_t *copy = malloc(n ? n : 1);

    if (!copy) {
        fprintf(stderr, "fuzz_%s: out of memory\n", EC_FUZZ_KIND);
        return -1;
    }
    if (n)
        memcpy(copy, p, n);
    LLVMFuzzerTestOneInput(copy, n);
    free(copy);
    return 0;
}

static int write_seeds(const struct pool *pl, const char *dir)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "fuzz_%s: cannot create %s: %s\n", EC_FUZZ_KIND, dir,
                strerror(errno));
        return -1;
    }
    for (size_t i = 0; i < pl->n; i++) {
        char *path;
        int rc;
        if (asprintf(&path, "%s/seed-%03zu", dir, i) < 0)
            return -1;
        rc = ect_write_file(path, pl->v[i].p, pl->v[i].n);
        if (rc != 0)
            fprintf(stderr, "fuzz_%s: cannot write %s: %s\n", EC_FUZZ_KIND, path,
                    strerror(-rc));
        free(path);
        if (rc != 0)
            return -1;
    }
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || end == s || *end || *s == '-')
        return -1;
    *out = v;
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: fuzz_%s [-n ITER] [-s SEED] [-o DIR] [CORPUS...]\n"
                    "  -n ITER  mutated inputs to run (default 20000)\n"
                    "  -s SEED  random seed (default 1); the same seed runs the same inputs\n"
                    "  -o DIR   also write the built-in seeds to DIR (a libFuzzer corpus)\n"
                    "  CORPUS   extra seed files, or directories of them\n",
            EC_FUZZ_KIND);
}

int main(int argc, char **argv)
{
    uint64_t iters = 20000, seed = 1, count = 0;
    const char *out_dir = NULL;
    struct pool pl = {0};
    struct buf cur = {0};
    int opt, rc = 2;

    while ((opt = getopt(argc, argv, "n:s:o:h")) != -1) {
        switch (opt) {
        case 'n':
            if (parse_u64(optarg, &iters) != 0) {
                fprintf(stderr, "fuzz_%s: -n wants a count, got '%s'\n", EC_FUZZ_KIND,
                        optarg);
                return 2;
            }
            break;
        case 's':
            if (parse_u64(optarg, &seed) != 0) {
                fprintf(stderr, "fuzz_%s: -s wants an unsigned integer, got '%s'\n",
                        EC_FUZZ_KIND, optarg);
                return 2;
            }
            break;
        case 'o':
            out_dir = optarg;
            break;
        case 'h':
            usage();
            return 0;
        default:
            usage();
            return 2;
        }
    }
    if (make_seeds(&pl) != 0)
        goto out;
    if (out_dir && write_seeds(&pl, out_dir) != 0)
        goto out;
    for (int i = optind; i < argc; i++)
        if (pool_add_path(&pl, argv[i]) != 0)
            goto out;
    if (pl.n == 0) {
        fprintf(stderr, "fuzz_%s: no seeds\n", EC_FUZZ_KIND);
        goto out;
    }

    for (size_t i = 0; i < pl.n; i++, count++)
        if (run_one(pl.v[i].p, pl.v[i].n) != 0)
            goto out;

    rng_state = seed;
    for (uint64_t it = 0; it < iters; it++, count++) {
        /* Mostly a fresh seed; sometimes keep mutating the last input. */
        if (cur.n == 0 || rnd(4) != 0) {
            const struct buf *s = &pl.v[rnd(pl.n)];
            buf_set(&cur, s->p, s->n);
        }
        for (size_t k = 1 + (rnd(4) == 0 ? rnd(4) : 0); k > 0; k--)
            mutate_once(&cur, &pl);
        if (run_one(cur.p, cur.n) != 0)
            goto out;
    }
    printf("fuzz_%s: %llu inputs, seed %llu\n", EC_FUZZ_KIND, (unsigned long long)count,
           (unsigned long long)seed);
    rc = 0;
out:
    free(cur.p);
    pool_free(&pl);
    return rc;
}
