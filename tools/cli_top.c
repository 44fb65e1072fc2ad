/*
 * cli_top.c - `embcache top`: a live terminal view of the daemon, refreshed
 * every -d seconds: request and hit rates, memory and tiers, the pager and
 * faults in flight, and the busiest tensors and result namespaces.
 *
 * Every figure comes from the requests `embcache stats` makes through the
 * client library (ec_client_stats, ec_client_tensor_stats,
 * ec_results_list); a rate is the difference of a counter between two
 * samples divided by the seconds between them. Tensors are sorted by rows
 * requested per second (their hits and misses: rows_served), namespaces by
 * lookups per second (hits, misses, negative hits and stale reads).
 *
 * Two modes. Interactive (standard input and output are terminals, no -b):
 * the alternate screen, redrawn with ANSI escapes in one write per frame,
 * input without echo or line buffering; `q` quits, space refreshes now;
 * SIGWINCH redraws at the new size, SIGTSTP/SIGCONT leave and re-enter the
 * screen; SIGINT, SIGTERM and SIGHUP end the loop and the terminal is put
 * back as it was (exit 0). Batch (-b, or output that is not a terminal):
 * plain text frames one after another, each with rates (the first after
 * one interval), like `top -b`; -n N stops after N refreshes in both modes.
 * A daemon that is not reachable at the start is a one-line failure (exit
 * 3: the message names the socket and says to start embcached); one that
 * goes away later ends batch mode the same way and is retried every
 * interval in interactive mode.
 *
 * Called by tools/embcache.c's main (cli_top_main, tools/cli.h). One
 * process, one thread: the tool's; the signal handlers only set atomic
 * flags that the loop reads.
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PROG "embcache top"
#define KEY_MAX (2 * (EC_NAME_MAX + 1) + 24) /* "model/version/tensor" */
#define BATCH_ROWS 10                        /* table rows in batch mode, by default */

/* ------------------------------------------------------------------ */
/* Samples                                                             */

struct kv {
    char name[64];
    uint64_t v;
};

struct tsamp {
    char key[KEY_MAX];
    ec_cache_mode mode;
    uint64_t bytes, resident_bytes, rows_served, hits, row_faults, bytes_read;
};

struct nssamp {
    char name[EC_NS_NAME_MAX + 1];
    uint32_t uid;
    uint64_t gets, hits, misses, items, bytes;
};

/* One look at the daemon: its statistics, tensors (sorted by key) and
 * namespaces (sorted by name, uid), at monotonic time t. */
struct sample {
    double t;
    uint64_t generation;
    struct kv *kv;
    size_t nkv, kvcap;
    struct tsamp *ts;
    size_t nts, tscap;
    struct nssamp *ns;
    size_t nns, nscap;
};

static double mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Room for one more element of an array of elements of size sz. */
static int grow(void **arr, size_t *cap, size_t n, size_t sz)
{
    void *p;
    size_t c;

    if (n < *cap)
        return 0;
    c = *cap ? *cap * 2 : 64;
    if (!(p = realloc(*arr, c * sz)))
        return EC_ENOMEM;
    *arr = p;
    *cap = c;
    return 0;
}

static int kv_cb(const char *name, uint64_t v, void *arg)
{
    struct sample *s = arg;

    if (grow((void **)&s->kv, &s->kvcap, s->nkv, sizeof(*s->kv)))
        return EC_ENOMEM;
    snprintf(s->kv[s->nkv].name, sizeof(s->kv[0].name), "%s", name);
    s->kv[s->nkv++].v = v;
    return 0;
}

static int tensor_cb(const ec_tensor_stats *t, void *arg)
{
    struct sample *s = arg;
    struct tsamp *x;

    if (grow((void **)&s->ts, &s->tscap, s->nts, sizeof(*s->ts)))
        return EC_ENOMEM;
    x = &s->ts[s->nts++];
    snprintf(x->key, sizeof(x->key), "%s/%" PRId64 "/%s", t->model, t->version, t->tensor);
    x->mode = t->mode;
    x->bytes = t->bytes;
    x->resident_bytes = t->resident_bytes;
    x->rows_served = t->rows_served;
    x->hits = t->hits;
    x->row_faults = t->row_faults;
    x->bytes_read = t->bytes_read;
    return 0;
}

static int ns_cb(const ec_ns_info *n, void *arg)
{
    struct sample *s = arg;
    struct nssamp *x;

    if (grow((void **)&s->ns, &s->nscap, s->nns, sizeof(*s->ns)))
        return EC_ENOMEM;
    x = &s->ns[s->nns++];
    snprintf(x->name, sizeof(x->name), "%s", n->name);
    x->uid = n->owner_uid;
    x->hits = n->hits;
    x->misses = n->misses;
    x->gets = n->hits + n->misses + n->negative_hits + n->stale_served;
    x->items = n->items;
    x->bytes = n->bytes;
    return 0;
}

static int cmp_ts_key(const void *a, const void *b)
{
    return strcmp(((const struct tsamp *)a)->key, ((const struct tsamp *)b)->key);
}

static int cmp_ns_key(const void *a, const void *b)
{
    const struct nssamp *x = a, *y = b;
    int c = strcmp(x->name, y->name);

    return c ? c : (x->uid > y->uid) - (x->uid < y->uid);
}

/* Fill s from the daemon. 0, or the library's error. */
static int take_sample(ec_client *c, struct sample *s)
{
    int rc;

    s->nkv = s->nts = s->nns = 0;
    s->generation = ec_client_generation(c);
    if ((rc = ec_client_stats(c, kv_cb, s)) || (rc = ec_client_tensor_stats(c, tensor_cb, s)))
        return rc;
    rc = ec_results_list(c, ns_cb, s);
    if (rc == EC_EPROTO && s->nns == 0)
        rc = 0; /* a daemon without result namespaces */
    if (rc)
        return rc;
    s->t = mono_s();
    qsort(s->ts, s->nts, sizeof(*s->ts), cmp_ts_key);
    qsort(s->ns, s->nns, sizeof(*s->ns), cmp_ns_key);
    return 0;
}

static void sample_free(struct sample *s)
{
    free(s->kv);
    free(s->ts);
    free(s->ns);
    memset(s, 0, sizeof(*s));
}

/* A statistic's value; 0 when the daemon does not report it. */
static uint64_t st(const struct sample *s, const char *name)
{
    for (size_t i = 0; i < s->nkv; i++)
        if (!strcmp(s->kv[i].name, name))
            return s->kv[i].v;
    return 0;
}

/* Per second between two values of a counter; NAN without a previous
 * sample, 0 when the counter went back (a restarted daemon). */
static double per_s(uint64_t now, uint64_t before, double dt, bool have_prev)
{
    if (!have_prev || dt <= 0)
        return NAN;
    return now >= before ? (double)(now - before) / dt : 0;
}

static double stat_rate(const struct sample *cur, const struct sample *prev, const char *name)
{
    return per_s(st(cur, name), prev ? st(prev, name) : 0, prev ? cur->t - prev->t : 0,
                 prev != NULL);
}

/* ------------------------------------------------------------------ */
/* Output: a frame built in a buffer, written at once                  */

struct screen {
    char *buf;
    size_t len, cap;
    bool tty;          /* interactive: escapes, lines cut to width */
    unsigned width;    /* columns (tty) */
    unsigned height;   /* rows (tty) */
    unsigned rows;     /* lines in the frame so far */
    bool oom;
};

static void put(struct screen *o, const char *p, size_t n)
{
    if (o->oom)
        return;
    if (o->len + n + 1 > o->cap) {
        size_t c = o->cap ? o->cap : 8192;
        char *b;
        while (c < o->len + n + 1)
            c *= 2;
        if (!(b = realloc(o->buf, c))) {
            o->oom = true;
            return;
        }
        o->buf = b;
        o->cap = c;
    }
    memcpy(o->buf + o->len, p, n);
    o->len += n;
    o->buf[o->len] = 0;
}

static void line(struct screen *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line of the frame; on a terminal cut to its width, the rest of the
 * row cleared, and nothing past its last row. */
static void line(struct screen *o, const char *fmt, ...)
{
    char l[1024];
    va_list ap;
    size_t n;

    if (o->tty && o->rows >= o->height)
        return;
    va_start(ap, fmt);
    vsnprintf(l, sizeof(l), fmt, ap);
    va_end(ap);
    n = strlen(l);
    if (o->tty && n > o->width)
        n = o->width;
    put(o, l, n);
    if (o->tty)
        put(o, "\033[K", 3);
    /* The last row of the screen gets no newline: it would scroll. */
    if (!o->tty || o->rows + 1 < o->height)
        put(o, o->tty ? "\r\n" : "\n", o->tty ? 2 : 1);
    o->rows++;
}

/* A rate for people: "-", "0", "12.5", "1.23k", "45.6M". */
static const char *fmt_rate(double r, char *b, size_t n)
{
    if (isnan(r))
        snprintf(b, n, "-");
    else if (r < 0.05)
        snprintf(b, n, "0");
    else if (r < 1000)
        snprintf(b, n, "%.1f", r);
    else if (r < 1e6)
        snprintf(b, n, "%.2fk", r / 1e3);
    else if (r < 1e9)
        snprintf(b, n, "%.2fM", r / 1e6);
    else
        snprintf(b, n, "%.2fG", r / 1e9);
    return b;
}

/* Bytes per second for people: "-", "0 B/s", "1.5 MiB/s". */
static const char *fmt_bps(double r, char *b, size_t n)
{
    char h[24];

    if (isnan(r)) {
        snprintf(b, n, "-");
        return b;
    }
    cli_human_bytes((uint64_t)llround(r), h, sizeof(h));
    snprintf(b, n, "%s/s", h);
    return b;
}

static const char *fmt_bytes(uint64_t v, char *b, size_t n)
{
    cli_human_bytes(v, b, n);
    return b;
}

/* A share as a percentage ("-" when there was nothing). */
static const char *fmt_pct(double part, double whole, char *b, size_t n)
{
    if (isnan(part) || isnan(whole) || whole <= 0)
        snprintf(b, n, "-");
    else
        snprintf(b, n, "%.1f%%", 100.0 * part / whole);
    return b;
}

/* s cut to w columns from the left ("..." and its tail) when longer. */
static const char *fit(const char *s, size_t w, char *b, size_t n)
{
    size_t l = strlen(s);

    if (l <= w || w < 4)
        snprintf(b, n, "%s", s);
    else
        snprintf(b, n, "...%s", s + l - (w - 3));
    return b;
}

/* ------------------------------------------------------------------ */
/* A frame                                                             */

struct view {
    const char *socket;   /* for the header; NULL: the default */
    double delay;
    unsigned top;         /* rows of each table; 0: fit the screen */
    char status[512];     /* a problem to show (interactive), or "" */
};

struct trate {
    const struct tsamp *t;
    double req, hit, faults, read;
};

struct nsrate {
    const struct nssamp *n;
    double gets, hits, misses;
};

static int cmp_trate(const void *a, const void *b)
{
    const struct trate *x = a, *y = b;
    double u = isnan(x->req) ? -1 : x->req, v = isnan(y->req) ? -1 : y->req;

    if (u != v)
        return u < v ? 1 : -1;
    if (x->t->resident_bytes != y->t->resident_bytes)
        return x->t->resident_bytes < y->t->resident_bytes ? 1 : -1;
    return strcmp(x->t->key, y->t->key);
}

static int cmp_nsrate(const void *a, const void *b)
{
    const struct nsrate *x = a, *y = b;
    double u = isnan(x->gets) ? -1 : x->gets, v = isnan(y->gets) ? -1 : y->gets;

    if (u != v)
        return u < v ? 1 : -1;
    if (x->n->items != y->n->items)
        return x->n->items < y->n->items ? 1 : -1;
    return cmp_ns_key(x->n, y->n);
}

static const char *mode_str(ec_cache_mode m)
{
    switch (m) {
    case EC_CACHE_ROWS: return "rows";
    case EC_CACHE_PARTITIONS: return "partitions";
    case EC_CACHE_DYNAMIC: return "dynamic";
    default: return "auto";
    }
}

static void render_header(struct screen *o, const struct view *v, const struct sample *c,
                          const struct sample *p)
{
    char a[32], b[32], d[32], e[32], f[32], g[32], h[32];
    uint64_t up = st(c, "uptime_seconds");
    time_t now = time(NULL);
    struct tm tm;
    double rows = stat_rate(c, p, "client_rows"), hitr = stat_rate(c, p, "client_hit_rows");
    double gets = NAN, nhits = NAN, nmiss = NAN;

    localtime_r(&now, &tm);
    line(o, "embcache top - %s - up %" PRIu64 "d %02" PRIu64 ":%02" PRIu64 ":%02" PRIu64
            " - generation %" PRIu64 " - %" PRIu64 " client(s) - every %.1f s - %02d:%02d:%02d%s",
         v->socket ? v->socket : "default socket", up / 86400, up / 3600 % 24, up / 60 % 60,
         up % 60, c->generation, st(c, "clients"), v->delay, tm.tm_hour, tm.tm_min, tm.tm_sec,
         o->tty ? " - q quits" : "");
    line(o, "Requests:  gathers %s/s  rows %s/s  hit %s (hit rows %s/s, miss rows %s/s)  "
            "retries %s/s",
         fmt_rate(stat_rate(c, p, "client_gathers"), a, sizeof(a)), fmt_rate(rows, b, sizeof(b)),
         fmt_pct(hitr, rows, d, sizeof(d)), fmt_rate(hitr, e, sizeof(e)),
         fmt_rate(stat_rate(c, p, "client_miss_rows"), f, sizeof(f)),
         fmt_rate(stat_rate(c, p, "client_retries"), g, sizeof(g)));
    if (p) {
        /* Per namespace: what ec_results_list says (the lookups' own counts). */
        double dt = c->t - p->t;
        gets = nhits = nmiss = 0;
        for (size_t i = 0; i < c->nns; i++) {
            const struct nssamp *q = bsearch(&c->ns[i], p->ns, p->nns, sizeof(*p->ns),
                                             cmp_ns_key);
            gets += per_s(c->ns[i].gets, q ? q->gets : 0, dt, true);
            nhits += per_s(c->ns[i].hits, q ? q->hits : 0, dt, true);
            nmiss += per_s(c->ns[i].misses, q ? q->misses : 0, dt, true);
        }
    }
    line(o, "Results:   gets %s/s  hit %s (hits %s/s, misses %s/s)  namespaces %" PRIu64
            "  items %" PRIu64 "  %s  leases %" PRIu64,
         fmt_rate(gets, a, sizeof(a)), fmt_pct(nhits, gets, b, sizeof(b)),
         fmt_rate(nhits, d, sizeof(d)), fmt_rate(nmiss, e, sizeof(e)),
         st(c, "result_namespaces"), st(c, "result_items"),
         fmt_bytes(st(c, "result_bytes"), f, sizeof(f)), st(c, "result_leases"));
    line(o, "Memory:    used %s of budget %s (%s)  segment %s  pinned %s  dynamic tables %s "
            "(%" PRIu64 ")  largest free %s",
         fmt_bytes(st(c, "used_bytes"), a, sizeof(a)),
         fmt_bytes(st(c, "budget_bytes"), b, sizeof(b)),
         fmt_pct((double)st(c, "used_bytes"), (double)st(c, "budget_bytes"), d, sizeof(d)),
         fmt_bytes(st(c, "segment_bytes"), e, sizeof(e)),
         fmt_bytes(st(c, "pinned_bytes"), f, sizeof(f)),
         fmt_bytes(st(c, "dynamic_table_bytes"), g, sizeof(g)), st(c, "dyn_tables"),
         fmt_bytes(st(c, "largest_free_bytes"), h, sizeof(h)));
    line(o, "Host tier: %" PRIu64 " partitions resident, %" PRIu64 " rows cached (%s)  "
            "page-ins %s/s %s  evictions %s/s %s  rows evicted %s/s",
         st(c, "resident_partitions"), st(c, "row_items"),
         fmt_bytes(st(c, "row_value_bytes"), a, sizeof(a)),
         fmt_rate(stat_rate(c, p, "page_ins"), b, sizeof(b)),
         fmt_bps(stat_rate(c, p, "page_in_bytes"), d, sizeof(d)),
         fmt_rate(stat_rate(c, p, "evictions"), e, sizeof(e)),
         fmt_bps(stat_rate(c, p, "evicted_bytes"), f, sizeof(f)),
         fmt_rate(stat_rate(c, p, "row_evicted"), g, sizeof(g)));
    {
        uint64_t gpus = st(c, "device_tier_gpus"), used = 0, slab = 0, parts = 0;
        double prom = p ? 0 : NAN, ev = p ? 0 : NAN;
        for (uint64_t i = 0; i < gpus && i < 64; i++) {
            char n[64];
            snprintf(n, sizeof(n), "device%" PRIu64 "_used_bytes", i);
            used += st(c, n);
            snprintf(n, sizeof(n), "device%" PRIu64 "_slab_bytes", i);
            slab += st(c, n);
            snprintf(n, sizeof(n), "device%" PRIu64 "_resident_partitions", i);
            parts += st(c, n);
            snprintf(n, sizeof(n), "device%" PRIu64 "_promotions", i);
            if (p)
                prom += stat_rate(c, p, n);
            snprintf(n, sizeof(n), "device%" PRIu64 "_evictions", i);
            if (p)
                ev += stat_rate(c, p, n);
        }
        if (!gpus)
            line(o, "Device:    no device tier");
        else
            line(o, "Device:    %" PRIu64 " GPU(s)  used %s of %s  %" PRIu64
                    " partitions  promotions %s/s  evictions %s/s  rows read there %s/s",
                 gpus, fmt_bytes(used, a, sizeof(a)), fmt_bytes(slab, b, sizeof(b)), parts,
                 fmt_rate(prom, d, sizeof(d)), fmt_rate(ev, e, sizeof(e)),
                 fmt_rate(stat_rate(c, p, "client_rows_device_tier"), f, sizeof(f)));
    }
    line(o, "Pager:     %s  reads %s/s %s  faults in flight %" PRIu64 " (pager %" PRIu64
            ", queued %" PRIu64 ")  fault requests %s/s  row faults %s/s  coalesced %s/s",
         st(c, "pager_io_uring") ? "io_uring" : "pread",
         fmt_rate(stat_rate(c, p, "pager_reads"), a, sizeof(a)),
         fmt_bps(stat_rate(c, p, "pager_read_bytes"), b, sizeof(b)), st(c, "inflight_reads"),
         st(c, "pager_inflight"), st(c, "pager_queued"),
         fmt_rate(stat_rate(c, p, "fault_requests"), d, sizeof(d)),
         fmt_rate(stat_rate(c, p, "row_faults"), e, sizeof(e)),
         fmt_rate(stat_rate(c, p, "fault_coalesced"), f, sizeof(f)));
    line(o, "Errors:    checksum %" PRIu64 "  read %" PRIu64 "  pager %" PRIu64
            "  protocol %" PRIu64 "  denied %" PRIu64 "  dynamic log %s  (since start)",
         st(c, "checksum_failures"), st(c, "read_errors"), st(c, "pager_errors"),
         st(c, "protocol_errors"), st(c, "requests_denied"),
         st(c, "dyn_broken") ? "BROKEN" : "ok");
}

/* The whole frame into o. p: the previous sample of the same daemon, or
 * NULL (rates shown as "-"). */
static int render(struct screen *o, const struct view *v, const struct sample *c,
                  const struct sample *p)
{
    struct trate *tr = calloc(c->nts ? c->nts : 1, sizeof(*tr));
    struct nsrate *nr = calloc(c->nns ? c->nns : 1, sizeof(*nr));
    double dt = p ? c->t - p->t : 0;
    unsigned ntop, nnstop;
    size_t namew = 27; /* the heading's width */
    char a[32], b[32], d[32], e[32], f[32], g[32], nm[KEY_MAX + 8];

    if (!tr || !nr) {
        free(tr);
        free(nr);
        return EC_ENOMEM;
    }
    o->len = 0;
    o->rows = 0;
    if (o->tty)
        put(o, "\033[H", 3);
    render_header(o, v, c, p);
    if (v->status[0])
        line(o, "!! %s", v->status);
    line(o, "%s", "");

    for (size_t i = 0; i < c->nts; i++) {
        const struct tsamp *q = p ? bsearch(&c->ts[i], p->ts, p->nts, sizeof(*p->ts),
                                            cmp_ts_key)
                                  : NULL;
        tr[i].t = &c->ts[i];
        tr[i].req = per_s(c->ts[i].rows_served, q ? q->rows_served : 0, dt, p != NULL);
        tr[i].hit = per_s(c->ts[i].hits, q ? q->hits : 0, dt, p != NULL);
        tr[i].faults = per_s(c->ts[i].row_faults, q ? q->row_faults : 0, dt, p != NULL);
        tr[i].read = per_s(c->ts[i].bytes_read, q ? q->bytes_read : 0, dt, p != NULL);
    }
    qsort(tr, c->nts, sizeof(*tr), cmp_trate);
    for (size_t i = 0; i < c->nns; i++) {
        const struct nssamp *q = p ? bsearch(&c->ns[i], p->ns, p->nns, sizeof(*p->ns),
                                             cmp_ns_key)
                                   : NULL;
        nr[i].n = &c->ns[i];
        nr[i].gets = per_s(c->ns[i].gets, q ? q->gets : 0, dt, p != NULL);
        nr[i].hits = per_s(c->ns[i].hits, q ? q->hits : 0, dt, p != NULL);
        nr[i].misses = per_s(c->ns[i].misses, q ? q->misses : 0, dt, p != NULL);
    }
    qsort(nr, c->nns, sizeof(*nr), cmp_nsrate);

    /* Rows for each table: -t, else in batch mode BATCH_ROWS, else what the
     * screen has left (two thirds to tensors when there are namespaces). */
    if (v->top) {
        ntop = nnstop = v->top;
    } else if (!o->tty) {
        ntop = nnstop = BATCH_ROWS;
    } else {
        unsigned left = o->height > o->rows + 4 ? o->height - o->rows - 4 : 1;
        nnstop = c->nns ? (unsigned)(left / 3) : 0;
        if (nnstop > c->nns)
            nnstop = (unsigned)c->nns;
        ntop = left - nnstop;
    }
    /* The name column: the longest name shown, within what the screen has. */
    for (size_t i = 0; i < c->nts && i < ntop; i++)
        if (strlen(tr[i].t->key) > namew)
            namew = strlen(tr[i].t->key);
    if (o->tty && namew + 76 > o->width)
        namew = o->width > 103 ? o->width - 76 : 27;
    if (namew > KEY_MAX)
        namew = KEY_MAX;

    line(o, "%-*s %-10s %9s %9s %6s %9s %10s %10s %10s", (int)namew,
         "TENSOR (model/version/name)", "MODE", "REQ/s", "HIT/s", "HIT%", "FAULT/s", "RESIDENT",
         "SIZE", "READ/s");
    for (size_t i = 0; i < c->nts && i < ntop; i++) {
        const struct trate *t = &tr[i];
        char h[16];
        line(o, "%-*s %-10s %9s %9s %6s %9s %10s %10s %10s", (int)namew,
             fit(t->t->key, namew, nm, sizeof(nm)), mode_str(t->t->mode),
             fmt_rate(t->req, a, sizeof(a)), fmt_rate(t->hit, b, sizeof(b)),
             fmt_pct(t->hit, t->req, h, sizeof(h)), fmt_rate(t->faults, d, sizeof(d)),
             fmt_bytes(t->t->resident_bytes, e, sizeof(e)),
             fmt_bytes(t->t->bytes, f, sizeof(f)), fmt_bps(t->read, g, sizeof(g)));
    }
    if (c->nts > ntop)
        line(o, "(%zu more tensors)", c->nts - ntop);
    if (c->nts == 0)
        line(o, "(no tensors open)");
    if (c->nns && nnstop) {
        line(o, "%s", "");
        line(o, "%-32s %10s %9s %9s %9s %6s %10s %10s", "NAMESPACE", "UID", "GETS/s", "HITS/s",
             "MISS/s", "HIT%", "ITEMS", "BYTES");
        for (size_t i = 0; i < c->nns && i < nnstop; i++) {
            const struct nsrate *n = &nr[i];
            char h[16];
            line(o, "%-32s %10" PRIu32 " %9s %9s %9s %6s %10" PRIu64 " %10s", n->n->name,
                 n->n->uid, fmt_rate(n->gets, a, sizeof(a)), fmt_rate(n->hits, b, sizeof(b)),
                 fmt_rate(n->misses, d, sizeof(d)), fmt_pct(n->hits, n->gets, h, sizeof(h)),
                 n->n->items, fmt_bytes(n->n->bytes, e, sizeof(e)));
        }
        if (c->nns > nnstop)
            line(o, "(%zu more namespaces)", c->nns - nnstop);
    }
    if (o->tty)
        put(o, "\033[J", 3); /* clear what an earlier, longer frame left */
    else
        put(o, "\n", 1);
    free(tr);
    free(nr);
    return o->oom ? EC_ENOMEM : 0;
}

/* ------------------------------------------------------------------ */
/* The terminal                                                        */

static atomic_int g_stop, g_winch, g_tstp, g_cont;
static struct termios g_saved;
static bool g_raw;

static void on_signal(int sig)
{
    switch (sig) {
    case SIGWINCH: atomic_store_explicit(&g_winch, 1, memory_order_relaxed); break;
    case SIGTSTP: atomic_store_explicit(&g_tstp, 1, memory_order_relaxed); break;
    case SIGCONT: atomic_store_explicit(&g_cont, 1, memory_order_relaxed); break;
    default: atomic_store_explicit(&g_stop, sig, memory_order_relaxed); break;
    }
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void write_str(const char *s)
{
    write_all(STDOUT_FILENO, s, strlen(s));
}

/* No echo, no line buffering (signals from keys kept); the alternate
 * screen, the cursor hidden. */
static int term_enter(void)
{
    struct termios t;

    if (tcgetattr(STDIN_FILENO, &g_saved))
        return -1;
    t = g_saved;
    t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    t.c_cc[VMIN] = 0;
    t.c_cc[VTIME] = 0;
    if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &t))
        return -1;
    g_raw = true;
    write_str("\033[?1049h\033[?25l\033[H\033[2J");
    return 0;
}

static void term_leave(void)
{
    if (!g_raw)
        return;
    write_str("\033[?25h\033[?1049l");
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &g_saved);
    g_raw = false;
}

static void term_size(struct screen *o)
{
    struct winsize ws;

    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col && ws.ws_row) {
        o->width = ws.ws_col;
        o->height = ws.ws_row;
    } else {
        o->width = 80;
        o->height = 24;
    }
}

static void handle_signals(bool tty)
{
    struct sigaction sa;
    int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGWINCH, SIGTSTP, SIGCONT};

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        if (tty || i < 3)
            sigaction(sigs[i], &sa, NULL);
}

/* Ctrl-Z: put the terminal back, stop, and on SIGCONT take it again. */
static void suspend(void)
{
    struct sigaction sa, old;

    term_leave();
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTSTP, &sa, &old);
    raise(SIGTSTP);
    sigaction(SIGTSTP, &old, NULL);
    atomic_store(&g_tstp, 0);
}

/* ------------------------------------------------------------------ */
/* The loop                                                            */

static const char help[] =
    "usage: embcache top [-d SECONDS] [-n N] [-b] [-t ROWS]\n"
    "A live view of the daemon, refreshed every -d seconds (default 1): requests\n"
    "and hit rates (what clients report), result lookups, memory (used, budget,\n"
    "segment, pinned, dynamic tables), the host and device tiers, the pager's\n"
    "reads and faults in flight, errors; then the open tensors by rows requested\n"
    "per second (hits and misses) and the result namespaces by lookups per second.\n"
    "Rates are the change of the daemon's counters between two samples over the\n"
    "seconds between them (`embcache stats` shows the counters).\n"
    "\n"
    "  -d, --delay SECONDS   seconds between refreshes, 0.1 to 3600 (default 1)\n"
    "  -n, --iterations N    stop after N refreshes (default: until q)\n"
    "  -b, --batch           plain text frames one after another, the first after\n"
    "                        one interval, for scripts (also when standard input or\n"
    "                        output is not a terminal)\n"
    "  -t, --top ROWS        rows of each table (default: what the screen has; 10\n"
    "                        in batch mode)\n"
    "\n"
    "Keys: q quits, space refreshes now. SIGINT and SIGTERM quit too (exit 0).\n"
    "Exit status: 0, 2 bad usage, 3 no daemon (at the start; in batch mode also\n"
    "later), 1 other failures.\n";

static int redraw(struct screen *o, const struct view *v, const struct sample *c,
                  const struct sample *p)
{
    int rc = render(o, v, c, p);

    if (rc == 0)
        write_all(STDOUT_FILENO, o->buf, o->len);
    return rc;
}

int cli_top_main(int argc, char **argv, const char *socket_path)
{
    static const struct option opts[] = {
        {"delay", required_argument, NULL, 'd'},
        {"iterations", required_argument, NULL, 'n'},
        {"batch", no_argument, NULL, 'b'},
        {"top", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct view v = {.socket = socket_path, .delay = 1.0};
    struct sample s[2] = {{0}};
    struct sample *cur = &s[0], *prev = &s[1];
    struct screen o = {0};
    bool batch = false, have_prev = false;
    bool have_older = false; /* cur holds the sample before prev (for redraws) */
    const char *hint = NULL;
    uint64_t iters = 0, done = 0, top = 0;
    ec_client *c = NULL;
    double next;
    int ch, rc = 0, ret = EXIT_OK;

    while ((ch = getopt_long(argc, argv, "d:n:bt:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'd':
            if (cli_parse_double(PROG, "-d", optarg, 0.1, false, 3600.0 + 1e-9, &v.delay))
                return EXIT_USAGE;
            break;
        case 'n':
            if (cli_parse_u64(PROG, "-n", optarg, 1, UINT32_MAX, &iters))
                return EXIT_USAGE;
            break;
        case 'b': batch = true; break;
        case 't':
            if (cli_parse_u64(PROG, "-t", optarg, 1, 10000, &top))
                return EXIT_USAGE;
            v.top = (unsigned)top;
            break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument '%s' (see 'embcache top --help')\n",
                argv[optind]);
        return EXIT_USAGE;
    }
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO))
        batch = true;
    if ((rc = ec_client_connect(socket_path, &c)))
        return cli_fail(PROG, rc, NULL);
    if ((rc = take_sample(c, prev))) {
        ret = cli_fail(PROG, rc, NULL);
        goto out;
    }
    have_prev = true;
    o.tty = !batch;
    handle_signals(o.tty);
    if (o.tty) {
        if (term_enter()) {
            fprintf(stderr, PROG ": cannot set up the terminal (%s); try -b\n",
                    strerror(errno));
            ret = EXIT_FAIL;
            goto out;
        }
        term_size(&o);
        if ((rc = redraw(&o, &v, prev, NULL)))
            goto fail;
    }
    next = mono_s() + v.delay;
    while (!atomic_load(&g_stop)) {
        double now = mono_s();
        bool refresh = now >= next;

        if (!refresh) {
            struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
            int wait_ms = (int)ceil((next - now) * 1000);
            int n = poll(&pfd, o.tty ? 1 : 0, wait_ms);
            if (n > 0 && (pfd.revents & POLLIN)) {
                char k[64];
                ssize_t got = read(STDIN_FILENO, k, sizeof(k));
                for (ssize_t i = 0; i < got; i++) {
                    if (k[i] == 'q' || k[i] == 'Q')
                        atomic_store(&g_stop, -1);
                    else if (k[i] == ' ')
                        refresh = true;
                }
            } else if (n > 0 && (pfd.revents & (POLLHUP | POLLERR))) {
                atomic_store(&g_stop, -1); /* the terminal went away */
            }
            if (atomic_load(&g_stop))
                break;
            if (atomic_exchange(&g_tstp, 0))
                suspend();
            if (atomic_exchange(&g_cont, 0) && o.tty) {
                if (!g_raw && term_enter()) {
                    atomic_store(&g_stop, -1);
                    break;
                }
                atomic_store(&g_winch, 1);
            }
            if (atomic_exchange(&g_winch, 0) && o.tty) {
                term_size(&o);
                write_str("\033[2J");
                if (have_prev &&
                    (rc = redraw(&o, &v, prev,
                                 have_older && cur->generation == prev->generation ? cur
                                                                                   : NULL)))
                    goto fail;
            }
            if (!refresh && mono_s() < next)
                continue;
        }
        /* A refresh: a new sample, rates against the last one. */
        next = mono_s() + v.delay;
        if (!c && (rc = ec_client_connect(socket_path, &c))) {
            c = NULL;
            if (!o.tty)
                goto fail;
            snprintf(v.status, sizeof(v.status), "%s; retrying every %.1f s", ec_last_error(),
                     v.delay);
            if (have_prev && (rc = redraw(&o, &v, prev, NULL)))
                goto fail;
            continue;
        }
        have_older = false;
        rc = take_sample(c, cur);
        if (rc && atomic_load(&g_stop))
            break; /* a signal cut the request short: we are stopping anyway */
        if (rc == EC_ECONN || rc == EC_ESTALE) {
            /* The daemon stopped or restarted: connect again next time. */
            ec_client_close(c);
            c = NULL;
            hint = "the daemon stopped or restarted while embcache top ran";
            if (!o.tty)
                goto fail;
            snprintf(v.status, sizeof(v.status), "lost the daemon: %s; retrying every %.1f s",
                     ec_last_error(), v.delay);
            if (have_prev && (rc = redraw(&o, &v, prev, NULL)))
                goto fail;
            prev->generation = 0; /* no rates across the gap */
            continue;
        }
        if (rc)
            goto fail;
        v.status[0] = 0;
        if ((rc = redraw(&o, &v, cur,
                         have_prev && prev->generation == cur->generation ? prev : NULL)))
            goto fail;
        {
            struct sample *t = prev;
            prev = cur;
            cur = t;
        }
        have_prev = have_older = true;
        if (iters && ++done >= iters)
            break;
    }
    goto out;
fail:
    term_leave();
    ret = cli_fail(PROG, rc, hint);
out:
    term_leave();
    ec_client_close(c);
    sample_free(&s[0]);
    sample_free(&s[1]);
    free(o.buf);
    return ret;
}
