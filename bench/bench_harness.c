/*
 * bench_harness.c - embcache-bench's harness (bench.h): results and their
 * repeats, the generated tables, our own embcached (start, stop, a segment
 * sized for a budget), import, and the timed gather loop every scenario
 * uses. Main thread, except verify_rows(), which client threads call too.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "shm/segment.h"

volatile sig_atomic_t g_stop;
volatile pid_t g_daemon_pid;
FILE *txt;

/* ---- notes and results ---- */

void note(struct ctx *x, const char *fmt, ...)
{
    va_list ap;
    char buf[256];

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "embcache-bench: %s\n", buf);
    if (x->nnotes < sizeof(x->notes) / sizeof(x->notes[0]))
        snprintf(x->notes[x->nnotes++], sizeof(x->notes[0]), "%s", buf);
}

struct rep rep_none(void)
{
    struct rep v = {-1, -1, -1, -1, -1, -1, -1, -1, -1};
    return v;
}

struct result *new_result(struct ctx *x, const char *scen, const char *sys, const char *dist,
                          uint64_t batch, uint64_t clients, uint64_t qd)
{
    struct result *r;

    if (x->nres == x->capres) {
        size_t cap = x->capres ? x->capres * 2 : 64;
        struct result **bigger = realloc(x->res, cap * sizeof(*bigger));
        if (!bigger) {
            fprintf(stderr, "embcache-bench: out of memory\n");
            exit(1);
        }
        x->res = bigger;
        x->capres = cap;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        fprintf(stderr, "embcache-bench: out of memory\n");
        exit(1);
    }
    x->res[x->nres++] = r;
    snprintf(r->scenario, sizeof(r->scenario), "%s", scen);
    snprintf(r->system, sizeof(r->system), "%s", sys);
    snprintf(r->dist, sizeof(r->dist), "%s", dist);
    snprintf(r->dtype, sizeof(r->dtype), "%s", x->o.dtype_name);
    r->table_rows = x->o.rows;
    r->dim = x->o.dim;
    r->row_bytes = x->row_bytes;
    r->batch = batch;
    r->clients = clients;
    r->qd = qd;
    r->p50 = r->p90 = r->p99 = r->p999 = r->max = r->rows_s = r->gbps = r->hit_ratio = -1;
    r->iops = -1;
    r->fair = -1;
    return r;
}

static void vappend(char *buf, size_t len, const char *sep, const char *fmt, va_list ap)
{
    size_t l = strlen(buf);
    if (l && l + 1 < len)
        l += (size_t)snprintf(buf + l, len - l, "%s", sep);
    if (l < len)
        vsnprintf(buf + l, len - l, fmt, ap);
}

void res_kv(struct result *r, const char *key, const char *fmt, ...)
{
    va_list ap;
    size_t l = strlen(r->kv);

    if (l + strlen(key) + 3 >= sizeof(r->kv))
        return;
    l += (size_t)snprintf(r->kv + l, sizeof(r->kv) - l, " %s=", key);
    va_start(ap, fmt);
    vsnprintf(r->kv + l, sizeof(r->kv) - l, fmt, ap);
    va_end(ap);
}

void res_note(struct result *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vappend(r->note, sizeof(r->note), " ", fmt, ap);
    va_end(ap);
}

void res_fail(struct result *r, const char *fmt, ...)
{
    va_list ap;
    r->err = true;
    va_start(ap, fmt);
    vappend(r->note, sizeof(r->note), " ", fmt, ap);
    va_end(ap);
}

void res_add_rep(struct result *r, const struct rep *v)
{
    if (r->nrep < MAX_REP)
        r->rep[r->nrep++] = *v;
}

void res_add_hist(struct result *r, const bu_hist *h, uint64_t calls, uint64_t rows, double secs,
                  double hit)
{
    struct rep v = rep_none();

    if (!r->h) {
        r->h = calloc(1, sizeof(*r->h));
        if (r->h)
            bu_hist_reset(r->h);
    }
    if (r->h)
        bu_hist_merge(r->h, h);
    r->calls += calls;
    r->rows_done += rows;
    r->secs += secs;
    if (secs > 0) {
        v.rows_s = (double)rows / secs;
        v.gbps = v.rows_s * (double)r->row_bytes / 1e9;
    }
    if (h->count) {
        v.p50 = (double)bu_hist_quantile(h, 0.50) / 1e3;
        v.p90 = (double)bu_hist_quantile(h, 0.90) / 1e3;
        v.p99 = (double)bu_hist_quantile(h, 0.99) / 1e3;
        v.p999 = (double)bu_hist_quantile(h, 0.999) / 1e3;
        v.max = (double)h->max / 1e3;
    }
    v.hit = hit;
    res_add_rep(r, &v);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of the non-negative values (the mean of the middle two for an
 * even count); -1 if none. Sorts v. */
double median_of(double *v, unsigned n)
{
    unsigned k = 0;
    for (unsigned i = 0; i < n; i++)
        if (v[i] >= 0 && isfinite(v[i]))
            v[k++] = v[i];
    if (!k)
        return -1;
    qsort(v, k, sizeof(*v), cmp_double);
    return k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
}

#define MEDIAN(field)                                                                    \
    ({                                                                                   \
        double t_[MAX_REP];                                                              \
        for (unsigned i_ = 0; i_ < r->nrep; i_++)                                        \
            t_[i_] = r->rep[i_].field;                                                   \
        median_of(t_, r->nrep);                                                          \
    })

void res_finish(struct ctx *x, struct result *r)
{
    if (r->nrep) {
        r->rows_s = MEDIAN(rows_s);
        r->gbps = MEDIAN(gbps);
        r->p50 = MEDIAN(p50);
        r->p90 = MEDIAN(p90);
        r->p99 = MEDIAN(p99);
        r->p999 = MEDIAN(p999);
        r->hit_ratio = MEDIAN(hit);
        r->iops = MEDIAN(iops);
        r->max = -1;
        for (unsigned i = 0; i < r->nrep; i++)
            if (r->rep[i].max > r->max)
                r->max = r->rep[i].max;
    }
    r->ok = !r->err && r->mismatches == 0 && r->nrep > 0;
    print_line(r);
    if (!r->ok)
        x->failed = 1;
}

/* ---- the table ---- */

static uint64_t mix64(uint64_t v)
{
    v += 0x9e3779b97f4a7c15ULL;
    v = (v ^ (v >> 30)) * 0xbf58476d1ce4e5b9ULL;
    v = (v ^ (v >> 27)) * 0x94d049bb133111ebULL;
    return v ^ (v >> 31);
}

/* Row r: for f32 the demo's values (exact floats in [-0.5, 0.5)), for other
 * dtypes the bytes of a hash of (r, word); compared bytewise. */
void fill_row(const struct ctx *x, uint64_t r, unsigned char *out)
{
    if (x->o.dtype == EC_DTYPE_F32) {
        float *f = (float *)(void *)out;
        for (uint64_t c = 0; c < x->o.dim; c++) {
            uint64_t h = mix64(r * 0x100000001b3ULL + c);
            f[c] = (float)((h >> 44) & 0xfffff) / 1048576.0f - 0.5f;
        }
        return;
    }
    for (uint64_t w = 0; w * 8 < x->row_bytes; w++) {
        uint64_t h = mix64(r * 0x100000001b3ULL + w) & 0x3f3f3f3f3f3f3f3fULL; /* no NaN/Inf */
        size_t n = x->row_bytes - w * 8 < 8 ? x->row_bytes - w * 8 : 8;
        memcpy(out + w * 8, &h, n);
    }
}

const char *npy_descr(ec_dtype d)
{
    switch (d) {
    case EC_DTYPE_F32: return "<f4";
    case EC_DTYPE_F16: return "<f2";
    case EC_DTYPE_F64: return "<f8";
    case EC_DTYPE_I8: return "|i1";
    case EC_DTYPE_U8: return "|u1";
    case EC_DTYPE_I32: return "<i4";
    case EC_DTYPE_I64: return "<i8";
    default: return NULL;
    }
}

int write_npy(struct ctx *x, struct table *t)
{
    char header[160], label[64];
    size_t hl, chunk_rows = (4u << 20) / x->row_bytes ? (4u << 20) / x->row_bytes : 1;
    unsigned char *chunk = NULL;
    FILE *f;
    bu_progress pg;

    snprintf(header, sizeof(header),
             "{'descr': '%s', 'fortran_order': False, 'shape': (%" PRIu64 ", %" PRIu64 "), }",
             npy_descr(x->o.dtype), t->rows, x->o.dim);
    hl = strlen(header);
    while ((10 + hl + 1) % 64)
        header[hl++] = ' ';
    header[hl++] = '\n';
    header[hl] = '\0';
    t->npy_data_off = 10 + hl;
    if (!t->src && !(chunk = malloc(chunk_rows * x->row_bytes))) {
        fprintf(stderr, "embcache-bench: out of memory\n");
        return -1;
    }
    f = fopen(t->npy, "wb");
    if (!f) {
        fprintf(stderr, "embcache-bench: cannot create %s: %s\n", t->npy, strerror(errno));
        free(chunk);
        return -1;
    }
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc((int)(hl & 0xff), f);
    fputc((int)(hl >> 8), f);
    fwrite(header, 1, hl, f);
    snprintf(label, sizeof(label), "generating the %s table", t->what);
    bu_progress_start(&pg, label, (double)t->rows);
    for (uint64_t r = 0; r < t->rows && !g_stop; r += chunk_rows) {
        uint64_t n = t->rows - r < chunk_rows ? t->rows - r : chunk_rows;
        unsigned char *dst = t->src ? t->src + r * x->row_bytes : chunk;
        for (uint64_t k = 0; k < n; k++)
            fill_row(x, r + k, dst + k * x->row_bytes);
        if (fwrite(dst, 1, n * x->row_bytes, f) != n * x->row_bytes)
            break;
        bu_progress_update(&pg, (double)r);
    }
    bu_progress_end(&pg);
    free(chunk);
    if (ferror(f) | fclose(f) || g_stop) {
        fprintf(stderr, "embcache-bench: writing %s failed: %s\n", t->npy,
                g_stop ? "interrupted" : strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- the daemon ---- */

static int socket_ready(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), ok;

    if (fd < 0)
        return 0;
    if (snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path) >= (int)sizeof(sa.sun_path)) {
        close(fd);
        return 0;
    }
    ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

void disconnect(struct ctx *x)
{
    ec_tensor_release(x->t);
    ec_client_close(x->c);
    x->t = NULL;
    x->c = NULL;
}

int connect_resolve(struct ctx *x)
{
    int rc = ec_client_connect(x->sock, &x->c);
    if (rc == 0)
        rc = ec_tensor_resolve(x->c, x->main.model, "1", TENSOR, &x->t);
    if (rc == 0)
        rc = ec_tensor_info_get(x->t, &x->main.info);
    if (rc) {
        fprintf(stderr, "embcache-bench: %s\n", ec_last_error());
        disconnect(x);
    }
    return rc;
}

void daemon_stop(struct ctx *x)
{
    int st;

    if (x->daemon <= 0)
        return;
    disconnect(x);
    kill(x->daemon, SIGTERM);
    for (int i = 0; i < 1000; i++) {
        if (waitpid(x->daemon, &st, WNOHANG) == x->daemon)
            goto done;
        usleep(10000);
    }
    kill(x->daemon, SIGKILL);
    waitpid(x->daemon, &st, 0);
done:
    x->daemon = 0;
    g_daemon_pid = 0;
}

/* The main table's segment when the daemon may hold all of it: room for
 * twice the table (plus a tenth for the daemon's layout), since the daemon
 * caches a tensor larger than half its budget by rows (core/engine_rows.c),
 * and the hit scenario means the whole table resident. Pages of the segment
 * cost memory only once they are used. */
uint64_t shm_size_for(const struct ctx *x)
{
    return shm_size_for_budget(2 * x->table_bytes + x->table_bytes / 5 + (64u << 20));
}

const char *cache_mode_name(ec_cache_mode m)
{
    return m == EC_CACHE_ROWS ? "rows" : m == EC_CACHE_PARTITIONS ? "partitions" : "auto";
}

int set_cache_mode(struct ctx *x, ec_cache_mode mode)
{
    if (ec_model_cache_mode(x->c, x->main.model, TENSOR, mode)) {
        fprintf(stderr, "embcache-bench: cannot set cache mode %s: %s\n", cache_mode_name(mode),
                ec_last_error());
        return -1;
    }
    return 0;
}

/* The smallest segment (in MiB) whose data area holds `budget` bytes: the
 * budget plus the daemon's index and item table, which live in the
 * segment. ensure_daemon() and scen_mixed.c's sm_daemon() check the
 * daemon's own budget_bytes and grow the segment when the daemon's layout
 * leaves less than ec_segment_plan() said (device indexes, item tables). */
uint64_t shm_size_for_budget(uint64_t budget)
{
    const uint64_t mib = 1u << 20;
    uint64_t size = (budget + 2 * mib - 1) / mib * mib;

    for (int i = 0; i < 64; i++) {
        uint64_t slots, off, dsize;
        if (ec_segment_plan(size, &slots, &off, &dsize) == 0 && dsize >= budget)
            return size;
        size += dsize < budget && dsize ? (budget - dsize + mib - 1) / mib * mib : mib;
    }
    return size;
}

int daemon_spawn(struct ctx *x, const char *data, const char *sock, uint64_t shm_bytes,
                 uint64_t budget, uint64_t gpu_slab)
{
    char shm[32], bud[32], slab[32], log[PATH_MAX + 16];
    const char *argv[16];
    int n = 0, st;
    pid_t pid;

    snprintf(shm, sizeof(shm), "%" PRIu64, shm_bytes);
    snprintf(bud, sizeof(bud), "%" PRIu64, budget);
    snprintf(slab, sizeof(slab), "%" PRIu64, gpu_slab);
    snprintf(log, sizeof(log), "%s/embcached.log", x->tmp);
    argv[n++] = x->o.embcached;
    argv[n++] = "--data-dir";
    argv[n++] = data;
    argv[n++] = "--socket";
    argv[n++] = sock;
    argv[n++] = "--shm-size";
    argv[n++] = shm;
    argv[n++] = "--quiet";
    if (budget) {
        argv[n++] = "--budget";
        argv[n++] = bud;
    }
    if (gpu_slab != NO_GPU_SLAB) {
        argv[n++] = "--gpu-slab";
        argv[n++] = slab;
    }
    argv[n] = NULL;
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        setpgid(0, 0); /* a terminal's Ctrl-C reaches only us; we stop it */
        setenv("EMBCACHE_CONFIG", "", 1); /* the options above, not /etc's file */
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    x->daemon = pid;
    snprintf(x->daemon_data, sizeof(x->daemon_data), "%s", data);
    g_daemon_pid = pid;
    x->daemon_budget = budget;
    x->daemon_shm = shm_bytes;
    for (int i = 0; i < 3000; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid) {
            x->daemon = 0;
            g_daemon_pid = 0;
            fprintf(stderr, "embcache-bench: %s exited at start-up (status %d); its log: %s\n",
                    x->o.embcached, WIFEXITED(st) ? WEXITSTATUS(st) : -1, log);
            return -1;
        }
        if (socket_ready(sock))
            return 0;
        usleep(10000);
    }
    fprintf(stderr, "embcache-bench: embcached did not listen on %s within 30 s\n", sock);
    daemon_stop(x);
    return -1;
}

pid_t daemon_worker(const struct ctx *x)
{
    char path[PATH_MAX + 32], buf[32] = "";
    ssize_t n;
    int fd;

    if (x->daemon <= 0)
        return -1;
    snprintf(path, sizeof(path), "%s/embcached.lock", x->daemon_data);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return atoi(buf) > 0 ? (pid_t)atoi(buf) : -1;
}

static int stat_cb(const char *name, uint64_t v, void *arg)
{
    struct ecstats *s = arg;
    if (!strcmp(name, "client_rows"))
        s->rows = v;
    else if (!strcmp(name, "client_hit_rows"))
        s->hits = v;
    else if (!strcmp(name, "budget_bytes"))
        s->budget = v;
    else if (!strcmp(name, "row_value_bytes"))
        s->value_bytes = v;
    else if (!strcmp(name, "row_overhead_ppm"))
        s->overhead_ppm = v;
    else if (!strcmp(name, "row_index_ppm"))
        s->index_ppm = v;
    return 0;
}

int read_stats(ec_client *c, struct ecstats *s)
{
    memset(s, 0, sizeof(*s));
    return ec_client_stats(c, stat_cb, s);
}

int ensure_daemon(struct ctx *x, uint64_t budget, uint64_t shm)
{
    struct ecstats st;

    if (!x->o.start_daemon)
        return x->c ? 0 : connect_resolve(x);
    if (!shm)
        shm = shm_size_for(x);
    if (x->daemon > 0 && x->daemon_budget == budget && x->daemon_shm == shm && x->c)
        return 0;
    /* A budget must be the daemon's own: grow a segment whose layout leaves
     * less data room than ec_segment_plan() said (say, device indexes). */
    for (int attempt = 0; attempt < 4; attempt++) {
        daemon_stop(x);
        if (daemon_spawn(x, x->data, x->sock, shm, budget, NO_GPU_SLAB) || connect_resolve(x))
            return -1;
        if (!budget || read_stats(x->c, &st) || st.budget >= budget)
            break;
        uint64_t more = (budget - st.budget + (2u << 20)) / (1u << 20) * (1u << 20);
        fprintf(stderr, "embcache-bench: the daemon's budget is %" PRIu64 " with a %" PRIu64
                        "-byte segment; growing it by %" PRIu64 "\n", st.budget, shm, more);
        shm += more;
        x->daemon_shm = shm;
    }
    x->daemon_budget = budget;
    return 0;
}

/* The *.ecp files under data/parts, one name a line. */
static void list_parts(const char *data, char *names, size_t len)
{
    char dir[PATH_MAX];
    DIR *d;
    struct dirent *e;
    size_t used = 0;

    names[0] = '\0';
    snprintf(dir, sizeof(dir), "%s/parts", data);
    d = opendir(dir);
    if (!d)
        return;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l > 4 && !strcmp(e->d_name + l - 4, ".ecp") && used + l + 2 < len) {
            memcpy(names + used, e->d_name, l);
            used += l;
            names[used++] = '\n';
            names[used] = '\0';
        }
    }
    closedir(d);
}

/* Import t->npy as version 1 of t->model through c (whose daemon serves
 * data); t->part_file is the partition file the import made. The .npy is
 * kept: the mmap baselines map it. */
int import_table(struct ctx *x, ec_client *c, struct table *t, const char *data)
{
    ec_import_opts io = {.model = t->model, .version = 1, .round = -1};
    const char *paths[1] = {t->npy};
    static char before[1 << 16], after[1 << 16];
    int rc;

    (void)x;
    list_parts(data, before, sizeof(before));
    rc = ec_model_import(c, &io, paths, 1, NULL);
    if (rc) {
        fprintf(stderr, "embcache-bench: import of the %s table failed: %s\n", t->what,
                ec_last_error());
        return rc;
    }
    list_parts(data, after, sizeof(after));
    for (char *p = after, *nl; *p; p = nl + 1) {
        nl = strchr(p, '\n');
        *nl = '\0';
        char key[NAME_MAX + 2];
        if (snprintf(key, sizeof(key), "%s\n", p) >= (int)sizeof(key))
            continue;
        if (!strstr(before, key) &&
            snprintf(t->part_file, sizeof(t->part_file), "%s/parts/%s", data, p) >=
                (int)sizeof(t->part_file))
            t->part_file[0] = '\0';
    }
    return 0;
}

/* ---- the timed loop ---- */

int ec_gather_fn(void *arg, const int64_t *ids, size_t n, void *out)
{
    struct ec_arg *a = arg;
    return ec_tensor_gather(a->t, ids, n, out, n * a->row_bytes);
}

int bl_gather_fn(void *arg, const int64_t *ids, size_t n, void *out)
{
    struct bl_arg *a = arg;
    return a->ops->gather(a->b, ids, n, out);
}

uint64_t verify_rows(const struct ctx *x, const struct table *t, const int64_t *ids, size_t n,
                     const unsigned char *out)
{
    uint64_t bad = 0;
    unsigned char *want = t->src ? NULL : malloc(x->row_bytes);

    if (!t->src && !want)
        return n; /* cannot check: count as wrong rather than pass */
    for (size_t k = 0; k < n; k++) {
        const unsigned char *w;
        if (t->src) {
            w = t->src + (uint64_t)ids[k] * x->row_bytes;
        } else {
            fill_row(x, (uint64_t)ids[k], want);
            w = want;
        }
        if (memcmp(out + k * x->row_bytes, w, x->row_bytes))
            bad++;
    }
    free(want);
    return bad;
}

int64_t timed_run(const struct ctx *x, const struct table *t, const char *what, gather_fn fn,
                  void *arg, const int64_t *ring, size_t ring_len, uint64_t batch, double secs,
                  uint64_t verify_calls, struct result *r, double *series, size_t nseries)
{
    unsigned char *out = malloc(batch * x->row_bytes);
    bu_hist *h = malloc(sizeof(*h));
    uint64_t t0, end, vt = 0, pos = 0, now, calls = 0, rows = 0;
    bu_progress pg;
    char label[96];

    if (!out || !h) {
        res_fail(r, "out of memory");
        free(out);
        free(h);
        return -1;
    }
    bu_hist_reset(h);
    snprintf(label, sizeof(label), "%s %s b=%" PRIu64, r->scenario, what, batch);
    bu_progress_start(&pg, label, secs);
    t0 = bu_now_ns();
    end = t0 + (uint64_t)(secs * 1e9);
    now = t0;
    while (!g_stop && (now < end || calls == 0)) {
        if (pos + batch > ring_len)
            pos = 0;
        const int64_t *ids = ring + pos;
        uint64_t a = bu_now_ns();
        int rc = fn(arg, ids, batch, out);
        now = bu_now_ns();
        if (rc) {
            res_fail(r, "gather failed after %" PRIu64 " calls: %s", calls,
                     fn == ec_gather_fn ? ec_last_error() : "baseline error");
            bu_progress_end(&pg);
            free(out);
            free(h);
            return -1;
        }
        bu_hist_add(h, now - a);
        if (series && nseries) {
            size_t bi = (size_t)((now - t0 - vt) / 500000000u);
            if (bi < nseries)
                series[bi] += (double)batch;
        }
        calls++;
        rows += batch;
        pos += batch;
        if (calls <= verify_calls) {
            r->mismatches += verify_rows(x, t, ids, batch, out);
            r->verified += batch;
            uint64_t v = bu_now_ns();
            vt += v - now;
            now = v;
        }
        if ((calls & 255) == 0)
            bu_progress_update(&pg, (double)(now - t0) / 1e9);
    }
    bu_progress_end(&pg);
    res_add_hist(r, h, calls, rows, (double)(now - t0 - vt) / 1e9, -1);
    free(out);
    free(h);
    return (int64_t)calls;
}

int warmup(const struct ctx *x, gather_fn fn, void *arg, const int64_t *ring, size_t ring_len,
           uint64_t batch)
{
    double secs = x->o.seconds / 4 < 0.25 ? x->o.seconds / 4 : 0.25;
    unsigned char *out = malloc(batch * x->row_bytes);
    uint64_t end = bu_now_ns() + (uint64_t)(secs * 1e9), pos = 0;
    int rc = 0;

    if (!out)
        return -1;
    while (!g_stop && bu_now_ns() < end && rc == 0) {
        if (pos + batch > ring_len)
            pos = 0;
        rc = fn(arg, ring + pos, batch, out);
        pos += batch;
    }
    free(out);
    return rc;
}

int64_t warm_rows(const struct ctx *x, gather_fn fn, void *arg, const int64_t *ring,
                  uint64_t rows, uint64_t batch, double max_secs)
{
    unsigned char *out = malloc(batch * x->row_bytes);
    uint64_t end = bu_now_ns() + (uint64_t)(max_secs * 1e9), pos = 0;
    int rc = 0;

    if (!out)
        return -1;
    for (; pos + batch <= rows && !g_stop && rc == 0; pos += batch) {
        if ((pos / batch) % 64 == 0 && bu_now_ns() > end)
            break;
        rc = fn(arg, ring + pos, batch, out);
    }
    free(out);
    return rc ? -1 : (int64_t)pos;
}

int64_t *make_ring(uint64_t rows, const char *dist, uint64_t seed, size_t len)
{
    int64_t *ring = malloc(len * sizeof(*ring));
    bu_zipf *z = bu_zipf_new(rows, !strcmp(dist, "zipf") ? 0.99 : 0.0, seed);

    if (!ring || !z) {
        free(ring);
        bu_zipf_free(z);
        return NULL;
    }
    for (size_t i = 0; i < len; i++)
        ring[i] = (int64_t)bu_zipf_next(z);
    bu_zipf_free(z);
    return ring;
}

int prewarm(struct ctx *x)
{
    ec_prewarm_progress p;
    bu_progress pg;
    int rc;

    bu_progress_start(&pg, "prewarm", 1);
    for (;;) {
        rc = ec_model_prewarm(x->c, x->main.model, "1", 0, &p);
        if (rc) {
            fprintf(stderr, "embcache-bench: prewarm failed: %s\n", ec_last_error());
            return rc;
        }
        if (p.finished)
            break;
        if (g_stop)
            return -1;
        bu_progress_update(&pg, p.partitions ? (double)p.done / (double)p.partitions : 0);
        usleep(20000);
    }
    bu_progress_end(&pg);
    if (p.failed) {
        fprintf(stderr, "embcache-bench: prewarm: %" PRIu64 " partitions failed: %s\n",
                p.failed, ec_last_error());
        return -1;
    }
    return 0;
}

int make_resident(struct ctx *x)
{
    const uint64_t chunk = 4096;
    int64_t *ids;
    unsigned char *out;
    int rc = 0;

    if (set_cache_mode(x, x->o.hit_mode) || prewarm(x))
        return -1;
    /* the handle learns the mode from the daemon's answers: ask once */
    ids = malloc(chunk * sizeof(*ids));
    out = malloc(chunk * x->row_bytes);
    if (!ids || !out) {
        free(ids);
        free(out);
        return -1;
    }
    ids[0] = 0;
    if (ec_tensor_gather(x->t, ids, 1, out, x->row_bytes)) {
        fprintf(stderr, "embcache-bench: gather: %s\n", ec_last_error());
        rc = -1;
    }
    if (rc || ec_tensor_cache_mode(x->t) != EC_CACHE_ROWS) {
        free(ids);
        free(out);
        return rc;
    }
    /* By rows: prewarm brings back the hot rows it saw; gather the rest,
     * in passes, until a pass is served from the cache (S3-FIFO lets a row
     * seen once leave through its small queue: the second pass keeps it). */
    double hit = 0;
    for (int pass = 0; pass < 4 && hit < 0.99 && rc == 0 && !g_stop; pass++) {
        struct ecstats a, b;
        bu_progress pg;
        read_stats(x->c, &a);
        bu_progress_start(&pg, "every row (cached by rows)", (double)x->o.rows);
        for (uint64_t r = 0; r < x->o.rows && !g_stop && rc == 0; r += chunk) {
            uint64_t n = x->o.rows - r < chunk ? x->o.rows - r : chunk;
            for (uint64_t k = 0; k < n; k++)
                ids[k] = (int64_t)(r + k);
            rc = ec_tensor_gather(x->t, ids, n, out, n * x->row_bytes);
            bu_progress_update(&pg, (double)r);
        }
        bu_progress_end(&pg);
        read_stats(x->c, &b);
        hit = b.rows > a.rows ? (double)(b.hits - a.hits) / (double)(b.rows - a.rows) : 0;
        fprintf(stderr, "embcache-bench: cached by rows: pass %d over every row hit %.4f\n",
                pass + 1, hit);
    }
    if (rc)
        fprintf(stderr, "embcache-bench: gathering every row: %s\n", ec_last_error());
    else if (hit < 0.99)
        fprintf(stderr, "embcache-bench: cached by rows, the table is not all resident after "
                        "4 passes (hit %.4f): the hit scenario measures misses too\n", hit);
    free(ids);
    free(out);
    return rc ? -1 : 0;
}

bool batch_fits(struct ctx *x, const char *scen, const char *dist, uint64_t batch)
{
    if (batch <= x->o.rows)
        return true;
    struct result *r = new_result(x, scen, "embcache", dist, batch, 1, 1);
    res_fail(r, "batch %" PRIu64 " is larger than the table (%" PRIu64 " rows): skipped",
             batch, x->o.rows);
    fprintf(stderr, "embcache-bench: %s: %s\n", scen, r->note);
    res_finish(x, r);
    return false;
}

const ec_baseline_ops *find_baseline(const char *name)
{
    for (const ec_baseline_ops *const *p = ec_baselines; *p; p++)
        if (!strcmp((*p)->name, name))
            return *p;
    return NULL;
}

bool baseline_wanted(const struct ctx *x, const char *name)
{
    for (unsigned i = 0; i < x->o.nbase; i++)
        if (!strcmp(x->o.base[i], name))
            return true;
    return false;
}
