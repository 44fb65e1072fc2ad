/*
 * baseline_mcproto.c - two memcached baselines of embcache-bench with a
 * client of our own (no libmemcached), over the server's Unix socket (or
 * TCP loopback when the bench asks for it):
 *
 *   memcached-get   one ASCII multi-get per batch: "get k1 k2 ... kn\r\n",
 *                   answered by "VALUE <key> <flags> <bytes>\r\n<data>\r\n"
 *                   per key found, in request order (a repeated key is
 *                   answered again), then "END\r\n";
 *   memcached-meta  the meta protocol (memcached >= 1.6): "mg <key> v\r\n"
 *                   for every position, pipelined, then "mn\r\n"; answered
 *                   by "VA <len>\r\n<data>\r\n" (hit) or "EN\r\n" (miss) per
 *                   request, in order, then "MN\r\n".
 *
 * Both load with pipelined quiet meta sets ("ms <key> <len> q\r\n<data>\r\n"
 * ... "mn\r\n": only errors are answered before "MN") after a flush_all,
 * then check the server's curr_items. The server is the same memcached the
 * libmemcached baseline runs (ec_bl_memcached_start), sized at load time.
 *
 * The request is written and the reply read through one non-blocking
 * socket with poll(), so a batch whose reply is larger than the socket
 * buffers cannot deadlock; the reply is parsed as it arrives, straight out
 * of one growing buffer, and every row is copied once into the caller's
 * output. Called from the bench's one thread; one handle per process.
 */
#include "baseline.h"
#include "baseline_server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MCP_OPEN_MEM_MIB 1024u
#define MCP_OPEN_ITEM_MIB 1u
#define MCP_LOAD_BYTES (4u << 20)
#define MCP_TIMEOUT_MS 60000

struct ec_baseline {
    const char *name;
    bool meta;
    ec_bl_server *srv;
    int fd;
    bool broken; /* an I/O error left the stream out of step */
    uint64_t rows;
    size_t row_bytes;
    unsigned mem_mib, item_mib;
    char *req;
    size_t req_len, req_cap;
    char *resp;
    size_t resp_len, resp_cap;
};

/* A reply parser: consumes complete elements from b->resp[*pos..resp_len).
 * 1 when the reply is complete, 0 for more bytes, -1 on a protocol error
 * (the stream can no longer be trusted). */
struct mcp_parse {
    size_t pos, i;
    const int64_t *ids;
    size_t n;
    unsigned char *out;
    int bad;            /* a row missing or of the wrong size (stream still in step) */
    uint64_t value;     /* stats: curr_items */
};
typedef int (*mcp_parser)(ec_baseline *b, struct mcp_parse *p);

static int mcp_reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 65536;
    while (c < need)
        c *= 2;
    char *nb = realloc(*buf, c);
    if (nb == NULL)
        return -1;
    *buf = nb;
    *cap = c;
    return 0;
}

static int mcp_append(ec_baseline *b, const void *data, size_t len)
{
    if (mcp_reserve(&b->req, &b->req_cap, b->req_len + len) != 0)
        return -1;
    memcpy(b->req + b->req_len, data, len);
    b->req_len += len;
    return 0;
}

static int mcp_fail(ec_baseline *b, const char *what)
{
    fprintf(stderr, "%s: %s\n", b->name, what);
    b->broken = true;
    return -1;
}

/* Write b->req, read and parse the reply until the parser says done. */
static int mcp_xfer(ec_baseline *b, mcp_parser parse, struct mcp_parse *p)
{
    size_t sent = 0;
    int rc = 0;

    b->resp_len = 0;
    p->pos = 0;
    if (b->broken || b->fd < 0)
        return mcp_fail(b, "the connection failed earlier");
    for (;;) {
        struct pollfd pf = {.fd = b->fd, .events = POLLIN | (sent < b->req_len ? POLLOUT : 0)};
        int n = poll(&pf, 1, MCP_TIMEOUT_MS);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return mcp_fail(b, n == 0 ? "no reply within 60 s" : "poll failed");
        if ((pf.revents & POLLOUT) && sent < b->req_len) {
            ssize_t w = write(b->fd, b->req + sent, b->req_len - sent);
            if (w < 0 && errno != EAGAIN && errno != EINTR)
                return mcp_fail(b, "write to the server failed");
            if (w > 0)
                sent += (size_t)w;
        }
        if (pf.revents & (POLLIN | POLLHUP | POLLERR)) {
            if (b->resp_cap - b->resp_len < 65536 &&
                mcp_reserve(&b->resp, &b->resp_cap, b->resp_len + 65536) != 0)
                return mcp_fail(b, "out of memory for a reply");
            ssize_t r = read(b->fd, b->resp + b->resp_len, b->resp_cap - b->resp_len);
            if (r == 0)
                return mcp_fail(b, "the server closed the connection");
            if (r < 0 && errno != EAGAIN && errno != EINTR)
                return mcp_fail(b, "read from the server failed");
            if (r > 0) {
                b->resp_len += (size_t)r;
                rc = parse(b, p);
                if (rc < 0)
                    return mcp_fail(b, "malformed reply from the server");
                if (rc > 0)
                    return sent == b->req_len ? 0 : mcp_fail(b, "reply before the request ended");
            }
        }
    }
}

/* The line at p->pos, without its "\r\n"; NULL when it is not complete. */
static const char *mcp_line(ec_baseline *b, struct mcp_parse *p, size_t *len, size_t *next)
{
    const char *s = b->resp + p->pos;
    const char *e = memchr(s, '\n', b->resp_len - p->pos);
    if (e == NULL)
        return NULL;
    *len = (size_t)(e - s) - (e > s && e[-1] == '\r');
    *next = (size_t)(e - b->resp) + 1;
    return s;
}

static bool line_is(const char *s, size_t len, const char *word)
{
    size_t wl = strlen(word);
    return len == wl && memcmp(s, word, wl) == 0;
}

/* ---- load ---- */

/* Quiet meta sets and flush_all: every line before "MN" is an error. */
static int parse_until_mn(ec_baseline *b, struct mcp_parse *p)
{
    size_t len, next;
    const char *s;

    while ((s = mcp_line(b, p, &len, &next)) != NULL) {
        p->pos = next;
        if (line_is(s, len, "MN"))
            return 1;
        if (!line_is(s, len, "OK")) { /* flush_all's answer is fine */
            if (!p->bad)
                fprintf(stderr, "%s: load: the server said '%.*s'\n", b->name,
                        (int)(len < 120 ? len : 120), s);
            p->bad = 1;
        }
    }
    return 0;
}

static int parse_stats(ec_baseline *b, struct mcp_parse *p)
{
    size_t len, next;
    const char *s;

    while ((s = mcp_line(b, p, &len, &next)) != NULL) {
        p->pos = next;
        if (line_is(s, len, "END"))
            return 1;
        if (len > 16 && memcmp(s, "STAT curr_items ", 16) == 0)
            p->value = strtoull(s + 16, NULL, 10);
        else if (len < 5 || memcmp(s, "STAT ", 5) != 0)
            return -1;
    }
    return 0;
}

static void mcp_disconnect(ec_baseline *b)
{
    if (b->fd >= 0)
        close(b->fd);
    b->fd = -1;
    ec_bl_server_stop(b->srv);
    b->srv = NULL;
}

static int mcp_start(ec_baseline *b, unsigned mem_mib, unsigned item_mib, char *note,
                     size_t note_len)
{
    if (ec_bl_memcached_start(mem_mib, item_mib, &b->srv, note, note_len) != 0)
        return -1;
    b->mem_mib = mem_mib;
    b->item_mib = item_mib;
    b->fd = ec_bl_server_connect(b->srv, note, note_len);
    if (b->fd < 0)
        return -1;
    int fl = fcntl(b->fd, F_GETFL);
    if (fl < 0 || fcntl(b->fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        ec_bl_note(note, note_len, "%s: cannot make the socket non-blocking", b->name);
        return -1;
    }
    b->broken = false;
    struct mcp_parse p = {0};
    b->req_len = 0;
    if (mcp_append(b, "mn\r\n", 4) != 0 || mcp_xfer(b, parse_until_mn, &p) != 0 || p.bad) {
        ec_bl_note(note, note_len, "%s: the server does not answer the meta no-op 'mn' "
                   "(memcached older than 1.6?)", b->name);
        return -1;
    }
    return 0;
}

static void mcp_close(ec_baseline *b)
{
    if (b == NULL)
        return;
    mcp_disconnect(b);
    free(b->req);
    free(b->resp);
    free(b);
}

static int mcp_open_named(const char *name, bool meta, ec_baseline **out, char *note,
                          size_t note_len)
{
    ec_baseline *b = calloc(1, sizeof *b);
    if (b == NULL) {
        ec_bl_note(note, note_len, "%s: out of memory", name);
        return -1;
    }
    b->name = name;
    b->meta = meta;
    b->fd = -1;
    if (mcp_start(b, MCP_OPEN_MEM_MIB, MCP_OPEN_ITEM_MIB, note, note_len) != 0) {
        mcp_close(b);
        return -1;
    }
    *out = b;
    return 0;
}

static int mcp_get_open(ec_baseline **out, char *note, size_t note_len)
{
    return mcp_open_named("memcached-get", false, out, note, note_len);
}

static int mcp_meta_open(ec_baseline **out, char *note, size_t note_len)
{
    return mcp_open_named("memcached-meta", true, out, note, note_len);
}

static int mcp_load(ec_baseline *b, const void *data, uint64_t rows, size_t row_bytes)
{
    const unsigned char *src = data;
    unsigned mem_mib, item_mib;
    char note[256], head[64];
    struct mcp_parse p = {0};

    if (row_bytes == 0 || (rows != 0 && data == NULL) ||
        ec_bl_memcached_limits(rows, row_bytes, &mem_mib, &item_mib) != 0) {
        fprintf(stderr, "%s: load: %" PRIu64 " rows of %zu bytes is more than this baseline "
                        "handles\n", b->name, rows, row_bytes);
        return -1;
    }
    if (b->srv == NULL || mem_mib > b->mem_mib || item_mib > b->item_mib) {
        mcp_disconnect(b); /* bigger limits need a fresh server */
        if (mem_mib < b->mem_mib)
            mem_mib = b->mem_mib;
        if (mcp_start(b, mem_mib, item_mib, note, sizeof note) != 0) {
            fprintf(stderr, "%s: load: restarting with -m %u -I %um: %s\n", b->name, mem_mib,
                    item_mib, note);
            mcp_disconnect(b);
            return -1;
        }
    }
    b->req_len = 0;
    if (mcp_append(b, "flush_all\r\nmn\r\n", 15) != 0 || mcp_xfer(b, parse_until_mn, &p) != 0 ||
        p.bad)
        return -1;
    for (uint64_t r = 0; r < rows;) {
        b->req_len = 0;
        for (; r < rows && b->req_len < MCP_LOAD_BYTES; r++) {
            char key[EC_BL_KEY_MAX];
            size_t kl = ec_bl_format_key(key, r);
            int hl = snprintf(head, sizeof head, "ms %.*s %zu q\r\n", (int)kl, key, row_bytes);
            if (mcp_append(b, head, (size_t)hl) != 0 ||
                mcp_append(b, src + r * row_bytes, row_bytes) != 0 ||
                mcp_append(b, "\r\n", 2) != 0)
                return mcp_fail(b, "load: out of memory");
        }
        memset(&p, 0, sizeof p);
        if (mcp_append(b, "mn\r\n", 4) != 0 || mcp_xfer(b, parse_until_mn, &p) != 0 || p.bad)
            return -1;
    }
    /* Every row must be there (-M: a full cache refuses a set). */
    memset(&p, 0, sizeof p);
    b->req_len = 0;
    if (mcp_append(b, "stats\r\n", 7) != 0 || mcp_xfer(b, parse_stats, &p) != 0)
        return -1;
    if (p.value != rows) {
        fprintf(stderr, "%s: load: the server holds %" PRIu64 " items after storing %" PRIu64
                        " rows (-m %u -I %um)\n", b->name, p.value, rows, b->mem_mib,
                b->item_mib);
        return -1;
    }
    b->rows = rows;
    b->row_bytes = row_bytes;
    return 0;
}

/* ---- gather ---- */

/* "VALUE <key> <flags> <bytes>" lines in request order, then "END". */
static int parse_get(ec_baseline *b, struct mcp_parse *p)
{
    size_t len, next;
    const char *s;

    while ((s = mcp_line(b, p, &len, &next)) != NULL) {
        if (line_is(s, len, "END")) {
            p->pos = next;
            if (p->i < p->n && !p->bad) {
                fprintf(stderr, "%s: row %" PRId64 " (position %zu) missing\n", b->name,
                        p->ids[p->i], p->i);
                p->bad = 1;
            }
            return 1;
        }
        char key[EC_BL_KEY_MAX + 1], want[EC_BL_KEY_MAX];
        unsigned flags;
        size_t bytes;
        char line[EC_BL_KEY_MAX + 64];
        if (len >= sizeof line || len < 6 || memcmp(s, "VALUE ", 6) != 0)
            return -1;
        memcpy(line, s, len);
        line[len] = '\0';
        if (sscanf(line, "VALUE %24s %u %zu", key, &flags, &bytes) != 3)
            return -1;
        if (b->resp_len - next < bytes + 2)
            return 0; /* the data is not all here yet */
        if (p->i >= p->n)
            return -1;
        size_t wl = ec_bl_format_key(want, (uint64_t)p->ids[p->i]);
        if (strlen(key) != wl || memcmp(key, want, wl) != 0 || bytes != b->row_bytes) {
            if (!p->bad)
                fprintf(stderr, "%s: position %zu: expected row %" PRId64 ", got key %s of %zu "
                                "bytes (a row missing?)\n", b->name, p->i, p->ids[p->i], key,
                        bytes);
            p->bad = 1;
        } else if (!p->bad) {
            memcpy(p->out + p->i * b->row_bytes, b->resp + next, bytes);
        }
        p->i++;
        p->pos = next + bytes + 2;
    }
    return 0;
}

/* "VA <len> ..." or "EN" per request, in order, then "MN". */
static int parse_meta(ec_baseline *b, struct mcp_parse *p)
{
    size_t len, next;
    const char *s;

    while ((s = mcp_line(b, p, &len, &next)) != NULL) {
        if (line_is(s, len, "MN")) {
            p->pos = next;
            return p->i == p->n ? 1 : -1;
        }
        if (p->i >= p->n)
            return -1;
        if (line_is(s, len, "EN")) {
            if (!p->bad)
                fprintf(stderr, "%s: row %" PRId64 " (position %zu) missing\n", b->name,
                        p->ids[p->i], p->i);
            p->bad = 1;
            p->i++;
            p->pos = next;
            continue;
        }
        if (len < 4 || memcmp(s, "VA ", 3) != 0)
            return -1;
        size_t bytes = 0, k = 3;
        for (; k < len && s[k] >= '0' && s[k] <= '9'; k++)
            bytes = bytes * 10 + (size_t)(s[k] - '0');
        if (k == 3 || bytes > (1u << 30))
            return -1;
        if (b->resp_len - next < bytes + 2)
            return 0;
        if (bytes != b->row_bytes) {
            if (!p->bad)
                fprintf(stderr, "%s: row %" PRId64 ": %zu bytes, expected %zu\n", b->name,
                        p->ids[p->i], bytes, b->row_bytes);
            p->bad = 1;
        } else if (!p->bad) {
            memcpy(p->out + p->i * b->row_bytes, b->resp + next, bytes);
        }
        p->i++;
        p->pos = next + bytes + 2;
    }
    return 0;
}

static int mcp_gather(ec_baseline *b, const int64_t *ids, size_t n, void *out)
{
    struct mcp_parse p = {.ids = ids, .n = n, .out = out};

    if (n == 0)
        return 0;
    b->req_len = 0;
    if (mcp_reserve(&b->req, &b->req_cap, n * (EC_BL_KEY_MAX + 8) + 16) != 0)
        return mcp_fail(b, "out of memory for a batch");
    if (!b->meta) {
        memcpy(b->req, "get", 3);
        b->req_len = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint64_t)ids[i] >= b->rows) {
            fprintf(stderr, "%s: gather: id %" PRId64 " at position %zu is outside [0, %" PRIu64
                            ")\n", b->name, ids[i], i, b->rows);
            return -1;
        }
        char *d = b->req + b->req_len;
        if (b->meta) {
            memcpy(d, "mg ", 3);
            size_t kl = ec_bl_format_key(d + 3, (uint64_t)ids[i]);
            memcpy(d + 3 + kl, " v\r\n", 4);
            b->req_len += 3 + kl + 4;
        } else {
            d[0] = ' ';
            b->req_len += 1 + ec_bl_format_key(d + 1, (uint64_t)ids[i]);
        }
    }
    memcpy(b->req + b->req_len, b->meta ? "mn\r\n" : "\r\n", b->meta ? 4 : 2);
    b->req_len += b->meta ? 4 : 2;
    if (mcp_xfer(b, b->meta ? parse_meta : parse_get, &p) != 0)
        return -1;
    return p.bad ? -1 : 0;
}

static void mcp_describe(ec_baseline *b, char *buf, size_t len)
{
    char where[160] = "none";
    if (b->srv != NULL)
        ec_bl_server_describe(b->srv, where, sizeof where);
    snprintf(buf, len, "transport=%s own client, %s", where,
             b->meta ? "pipelined meta mg ... v + mn" : "ASCII multi-get get k1..kn");
}

const ec_baseline_ops ec_baseline_memcached_get_ops = {
    .name = "memcached-get",
    .open = mcp_get_open,
    .load = mcp_load,
    .gather = mcp_gather,
    .close = mcp_close,
    .describe = mcp_describe,
};

const ec_baseline_ops ec_baseline_memcached_meta_ops = {
    .name = "memcached-meta",
    .open = mcp_meta_open,
    .load = mcp_load,
    .gather = mcp_gather,
    .close = mcp_close,
    .describe = mcp_describe,
};
