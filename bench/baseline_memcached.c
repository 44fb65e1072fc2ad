/*
 * baseline_memcached.c - the memcached baseline of embcache-bench, through
 * libmemcached with the binary protocol: a batch is one memcached_mget and a
 * memcached_fetch_result loop. open starts a private memcached on a Unix
 * socket in its own directory (-s; or a free loopback port with
 * TCP_NODELAY when the bench asks for TCP; bench/baseline_server.c: UDP
 * off, 2 threads, evictions off so a full cache fails a store instead of
 * silently losing rows) and connects with memcached_server_add_unix_socket
 * (or memcached_server_add). load sizes the server for the data (-m, -I)
 * and restarts it when the open-time limits are too small (open cannot
 * know the rows), then stores row r under "r:<r>" with quiet, buffered sets
 * and checks the server's item count. close disconnects and stops the
 * server.
 *
 * Replies come back in any order and duplicate ids must each get their row,
 * so a gather asks for each distinct key once and maps a returned key back
 * to every position that wants it: an open-addressing table id -> distinct
 * index, and per position a link to the next position with the same id.
 * All of that scratch lives in the handle and only grows. Called from the
 * bench's one thread; one handle per client process.
 */
#include "baseline.h"
#include "baseline_server.h"

#include <libmemcached/memcached.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MC_OPEN_MEM_MIB 1024u  /* until load knows the data */
#define MC_OPEN_ITEM_MIB 1u
#define MC_NONE UINT32_MAX

struct ec_baseline {
    ec_bl_server *srv;
    memcached_st *mc;
    memcached_result_st result; /* reused by every fetch */
    bool result_ok;
    uint64_t rows;
    size_t row_bytes;
    unsigned mem_mib, item_mib; /* the running server's -m and -I */
    /* gather scratch, for cap positions */
    size_t cap;
    const char **keys;   /* [cap]: distinct keys of the batch */
    size_t *key_lens;    /* [cap] */
    char *keybuf;        /* [cap * EC_BL_KEY_MAX] */
    int64_t *uniq_id;    /* [cap]: id of distinct key u */
    uint32_t *uniq_head; /* [cap]: first position wanting u */
    bool *uniq_done;     /* [cap] */
    uint32_t *next;      /* [cap]: next position with the same id, or MC_NONE */
    uint32_t *table;     /* [tcap]: distinct index + 1, 0 for empty */
    size_t tcap;
};

static void mc_disconnect(ec_baseline *b)
{
    if (b->result_ok)
        memcached_result_free(&b->result);
    b->result_ok = false;
    if (b->mc != NULL)
        memcached_free(b->mc);
    b->mc = NULL;
    ec_bl_server_stop(b->srv);
    b->srv = NULL;
}

static void mc_close(ec_baseline *b)
{
    if (b == NULL)
        return;
    mc_disconnect(b);
    free(b->keys);
    free(b->key_lens);
    free(b->keybuf);
    free(b->uniq_id);
    free(b->uniq_head);
    free(b->uniq_done);
    free(b->next);
    free(b->table);
    free(b);
}

/* Start memcached with -m mem_mib -I item_mib and connect to it. */
static int mc_start(ec_baseline *b, unsigned mem_mib, unsigned item_mib, char *note,
                    size_t note_len)
{
    if (ec_bl_memcached_start(mem_mib, item_mib, &b->srv, note, note_len) != 0)
        return -1;
    int port = ec_bl_server_port(b->srv);
    const char *sock = ec_bl_server_socket(b->srv);
    char where[160];
    ec_bl_server_describe(b->srv, where, sizeof where);
    b->mem_mib = mem_mib;
    b->item_mib = item_mib;

    b->mc = memcached_create(NULL);
    if (b->mc == NULL) {
        ec_bl_note(note, note_len, "memcached: out of memory");
        return -1;
    }
    memcached_return_t rc = memcached_behavior_set(b->mc, MEMCACHED_BEHAVIOR_BINARY_PROTOCOL, 1);
    if (rc == MEMCACHED_SUCCESS && sock == NULL)
        rc = memcached_behavior_set(b->mc, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1);
    if (rc == MEMCACHED_SUCCESS)
        rc = memcached_behavior_set(b->mc, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, 60000);
    if (rc == MEMCACHED_SUCCESS)
        rc = sock != NULL ? memcached_server_add_unix_socket(b->mc, sock)
                          : memcached_server_add(b->mc, "127.0.0.1", (in_port_t)port);
    if (rc == MEMCACHED_SUCCESS)
        rc = memcached_version(b->mc); /* connects, and proves the server answers */
    if (rc != MEMCACHED_SUCCESS) {
        ec_bl_note(note, note_len, "cannot talk to memcached on %s: %s", where,
                   memcached_last_error_message(b->mc));
        return -1;
    }
    if (memcached_result_create(b->mc, &b->result) == NULL) {
        ec_bl_note(note, note_len, "memcached: out of memory");
        return -1;
    }
    b->result_ok = true;
    return 0;
}

static int mc_open(ec_baseline **out, char *note, size_t note_len)
{
    ec_baseline *b = calloc(1, sizeof *b);
    if (b == NULL) {
        ec_bl_note(note, note_len, "memcached: out of memory");
        return -1;
    }
    if (mc_start(b, MC_OPEN_MEM_MIB, MC_OPEN_ITEM_MIB, note, note_len) != 0) {
        mc_close(b);
        return -1;
    }
    *out = b;
    return 0;
}

static int mc_load(ec_baseline *b, const void *data, uint64_t rows, size_t row_bytes)
{
    const unsigned char *p = data;
    char key[EC_BL_KEY_MAX];
    char note[256];
    unsigned mem_mib, item_mib;

    if (row_bytes == 0 || (rows != 0 && data == NULL) ||
        ec_bl_memcached_limits(rows, row_bytes, &mem_mib, &item_mib) != 0) {
        fprintf(stderr, "memcached: load: %llu rows of %zu bytes is more than this baseline "
                        "handles\n", (unsigned long long)rows, row_bytes);
        return -1;
    }
    if (b->mc == NULL) {
        fprintf(stderr, "memcached: load: no server (a restart failed earlier)\n");
        return -1;
    }
    if (mem_mib > b->mem_mib || item_mib > b->item_mib) {
        /* Bigger limits need a fresh server; nothing is lost, load replaces
         * everything anyway. */
        mc_disconnect(b);
        if (mem_mib < b->mem_mib)
            mem_mib = b->mem_mib;
        if (mc_start(b, mem_mib, item_mib, note, sizeof note) != 0) {
            fprintf(stderr, "memcached: load: restarting with -m %u -I %um: %s\n", mem_mib,
                    item_mib, note);
            mc_disconnect(b);
            return -1;
        }
    }
    memcached_return_t rc = memcached_flush(b->mc, 0);
    if (rc != MEMCACHED_SUCCESS) {
        fprintf(stderr, "memcached: load: flush_all: %s\n", memcached_last_error_message(b->mc));
        return -1;
    }

    /* Quiet sets (binary SETQ): the server answers only errors and
     * libmemcached writes them back to back without waiting; the item count
     * below catches a lost one. (BUFFER_REQUESTS on top of NOREPLY loses
     * sets with libmemcached 1.1.4, so it stays off.) */
    memcached_behavior_set(b->mc, MEMCACHED_BEHAVIOR_NOREPLY, 1);
    int ret = 0;
    for (uint64_t r = 0; r < rows; r++) {
        size_t klen = ec_bl_format_key(key, r);
        rc = memcached_set(b->mc, key, klen, (const char *)p + r * row_bytes, row_bytes, 0, 0);
        if (rc != MEMCACHED_SUCCESS && rc != MEMCACHED_BUFFERED) {
            fprintf(stderr, "memcached: load: set of row %llu: %s\n", (unsigned long long)r,
                    memcached_last_error_message(b->mc));
            ret = -1;
            break;
        }
    }
    if (ret == 0 && (rc = memcached_flush_buffers(b->mc)) != MEMCACHED_SUCCESS) {
        fprintf(stderr, "memcached: load: flush_buffers: %s\n",
                memcached_last_error_message(b->mc));
        ret = -1;
    }
    memcached_behavior_set(b->mc, MEMCACHED_BEHAVIOR_NOREPLY, 0);
    if (ret != 0)
        return -1;

    /* Every row must be there. The stat follows the sets on the same
     * connection; a few retries cover a server still settling its counts. */
    unsigned long items = 0;
    for (int attempt = 0; attempt < 50; attempt++) {
        memcached_stat_st *st = memcached_stat(b->mc, NULL, &rc);
        items = st != NULL && rc == MEMCACHED_SUCCESS ? st[0].curr_items : 0;
        memcached_stat_free(b->mc, st);
        if (rc != MEMCACHED_SUCCESS) {
            fprintf(stderr, "memcached: load: stats: %s\n", memcached_last_error_message(b->mc));
            return -1;
        }
        if (items == rows)
            break;
        usleep(20000);
    }
    if (items != rows) {
        fprintf(stderr, "memcached: load: the server holds %lu items after storing %llu rows "
                        "(-m %u -I %um)\n", items, (unsigned long long)rows, b->mem_mib,
                b->item_mib);
        return -1;
    }
    b->rows = rows;
    b->row_bytes = row_bytes;
    return 0;
}

static int mc_reserve(ec_baseline *b, size_t n)
{
    if (n <= b->cap)
        return 0;
    if (n > (size_t)UINT32_MAX / 4) {
        fprintf(stderr, "memcached: a batch of %zu is too large\n", n);
        return -1;
    }
    size_t cap = b->cap != 0 ? b->cap : 256;
    while (cap < n)
        cap *= 2;
    size_t tcap = cap * 2;
#define MC_GROW(field, count)                                        \
    do {                                                             \
        void *np_ = realloc((void *)b->field, (count) * sizeof *b->field); \
        if (np_ == NULL)                                             \
            goto oom;                                                \
        b->field = np_;                                              \
    } while (0)
    MC_GROW(keys, cap);
    MC_GROW(key_lens, cap);
    MC_GROW(keybuf, cap * EC_BL_KEY_MAX);
    MC_GROW(uniq_id, cap);
    MC_GROW(uniq_head, cap);
    MC_GROW(uniq_done, cap);
    MC_GROW(next, cap);
    MC_GROW(table, tcap);
#undef MC_GROW
    b->cap = cap;
    b->tcap = tcap;
    return 0;
oom:
    fprintf(stderr, "memcached: out of memory for a batch of %zu\n", n);
    return -1;
}

static inline size_t mc_hash(int64_t id, size_t mask)
{
    return (size_t)(((uint64_t)id * 0x9E3779B97F4A7C15ull) >> 17) & mask;
}

/* The distinct index of id, or MC_NONE. */
static uint32_t mc_find(const ec_baseline *b, int64_t id, size_t mask)
{
    for (size_t h = mc_hash(id, mask);; h = (h + 1) & mask) {
        uint32_t t = b->table[h];
        if (t == 0)
            return MC_NONE;
        if (b->uniq_id[t - 1] == id)
            return t - 1;
    }
}

/* "r:<digits>" -> id, or -1. */
static int64_t mc_parse_key(const char *k, size_t len)
{
    if (len < 3 || len > EC_BL_KEY_MAX || k[0] != 'r' || k[1] != ':')
        return -1;
    uint64_t v = 0;
    for (size_t i = 2; i < len; i++) {
        if (k[i] < '0' || k[i] > '9' || v > (uint64_t)INT64_MAX / 10)
            return -1;
        v = v * 10 + (uint64_t)(k[i] - '0');
    }
    return v > (uint64_t)INT64_MAX ? -1 : (int64_t)v;
}

static int mc_gather(ec_baseline *b, const int64_t *ids, size_t n, void *out)
{
    unsigned char *o = out;
    if (n == 0)
        return 0;
    if (b->mc == NULL) {
        fprintf(stderr, "memcached: gather: no server (a restart failed earlier)\n");
        return -1;
    }
    if (mc_reserve(b, n) != 0)
        return -1;

    /* Distinct ids, each with the chain of positions that want it. */
    size_t tsize = 16;
    while (tsize < 2 * n)
        tsize *= 2;
    size_t mask = tsize - 1;
    memset(b->table, 0, tsize * sizeof *b->table);
    size_t nu = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t id = ids[i];
        if (id < 0 || (uint64_t)id >= b->rows) {
            fprintf(stderr, "memcached: gather: id %lld at position %zu is outside [0, %llu)\n",
                    (long long)id, i, (unsigned long long)b->rows);
            return -1;
        }
        size_t h = mc_hash(id, mask);
        for (;; h = (h + 1) & mask) {
            uint32_t t = b->table[h];
            if (t == 0) {
                b->table[h] = (uint32_t)nu + 1;
                b->uniq_id[nu] = id;
                b->uniq_head[nu] = (uint32_t)i;
                b->uniq_done[nu] = false;
                char *k = b->keybuf + nu * EC_BL_KEY_MAX;
                b->keys[nu] = k;
                b->key_lens[nu] = ec_bl_format_key(k, (uint64_t)id);
                nu++;
                b->next[i] = MC_NONE;
                break;
            }
            if (b->uniq_id[t - 1] == id) { /* a duplicate: push on its chain */
                b->next[i] = b->uniq_head[t - 1];
                b->uniq_head[t - 1] = (uint32_t)i;
                break;
            }
        }
    }

    memcached_return_t rc = memcached_mget(b->mc, b->keys, b->key_lens, nu);
    if (rc != MEMCACHED_SUCCESS) {
        fprintf(stderr, "memcached: mget of %zu keys: %s\n", nu,
                memcached_last_error_message(b->mc));
        return -1;
    }
    /* Drain every result even after a bad one, so the stream stays in step. */
    int ret = 0;
    size_t done = 0;
    while (memcached_fetch_result(b->mc, &b->result, &rc) != NULL) {
        const char *k = memcached_result_key_value(&b->result);
        size_t klen = memcached_result_key_length(&b->result);
        size_t vlen = memcached_result_length(&b->result);
        int64_t id = mc_parse_key(k, klen);
        uint32_t u = id >= 0 ? mc_find(b, id, mask) : MC_NONE;
        if (ret != 0)
            continue;
        if (u == MC_NONE || vlen != b->row_bytes) {
            fprintf(stderr, "memcached: gather: unexpected reply: key '%.*s', %zu bytes\n",
                    (int)(klen < EC_BL_KEY_MAX ? klen : EC_BL_KEY_MAX), k, vlen);
            ret = -1;
            continue;
        }
        const char *v = memcached_result_value(&b->result);
        for (uint32_t pos = b->uniq_head[u]; pos != MC_NONE; pos = b->next[pos])
            memcpy(o + (size_t)pos * b->row_bytes, v, b->row_bytes);
        if (!b->uniq_done[u]) {
            b->uniq_done[u] = true;
            done++;
        }
    }
    if (rc != MEMCACHED_END && rc != MEMCACHED_SUCCESS && rc != MEMCACHED_NOTFOUND) {
        fprintf(stderr, "memcached: gather: fetch: %s\n", memcached_last_error_message(b->mc));
        return -1;
    }
    if (ret == 0 && done != nu) {
        for (size_t u = 0; u < nu; u++)
            if (!b->uniq_done[u]) {
                fprintf(stderr, "memcached: gather: row %lld (position %u) missing; %zu of %zu "
                                "distinct keys missing\n", (long long)b->uniq_id[u],
                        b->uniq_head[u], nu - done, nu);
                break;
            }
        ret = -1;
    }
    return ret;
}

static void mc_describe(ec_baseline *b, char *buf, size_t len)
{
    char where[160] = "none";
    if (b->srv != NULL)
        ec_bl_server_describe(b->srv, where, sizeof where);
    snprintf(buf, len, "transport=%s libmemcached binary multi-get", where);
}

const ec_baseline_ops ec_baseline_memcached_ops = {
    .name = "memcached",
    .open = mc_open,
    .load = mc_load,
    .gather = mc_gather,
    .close = mc_close,
    .describe = mc_describe,
};
