/*
 * bench_util.c - see bench_util.h.
 */
#include "bench/bench_util.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

uint64_t bu_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- histogram ---- */

static unsigned bucket_of(uint64_t v)
{
    unsigned e;

    if (v < BU_SUB)
        return (unsigned)v;
    e = 63u - (unsigned)__builtin_clzll(v); /* v in [2^e, 2^(e+1)) */
    if (e > BU_MAX_EXP)
        return BU_BUCKETS - 1;
    return (e - BU_SUB_BITS + 1) * BU_SUB + (unsigned)((v >> (e - BU_SUB_BITS)) & (BU_SUB - 1));
}

/* [lo, hi) of bucket i. */
static void bucket_range(unsigned i, double *lo, double *hi)
{
    unsigned blk = i / BU_SUB, sub = i % BU_SUB, e;

    if (blk == 0) {
        *lo = i;
        *hi = i + 1;
        return;
    }
    e = blk + BU_SUB_BITS - 1;
    *lo = ldexp(1.0, (int)e) + (double)sub * ldexp(1.0, (int)(e - BU_SUB_BITS));
    *hi = *lo + ldexp(1.0, (int)(e - BU_SUB_BITS));
}

void bu_hist_reset(bu_hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

void bu_hist_add(bu_hist *h, uint64_t ns)
{
    h->b[bucket_of(ns)]++;
    h->count++;
    h->sum += (double)ns;
    if (ns > h->max)
        h->max = ns;
    if (ns < h->min)
        h->min = ns;
}

void bu_hist_merge(bu_hist *into, const bu_hist *from)
{
    for (unsigned i = 0; i < BU_BUCKETS; i++)
        into->b[i] += from->b[i];
    into->count += from->count;
    into->sum += from->sum;
    if (from->max > into->max)
        into->max = from->max;
    if (from->min < into->min)
        into->min = from->min;
}

uint64_t bu_hist_quantile(const bu_hist *h, double q)
{
    uint64_t want, seen = 0;
    double lo, hi;

    if (h->count == 0)
        return 0;
    if (q >= 1.0)
        return h->max;
    want = (uint64_t)ceil(q * (double)h->count);
    if (want == 0)
        want = 1;
    for (unsigned i = 0; i < BU_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) {
            bucket_range(i, &lo, &hi);
            double mid = i < BU_SUB ? lo : (lo + hi) / 2;
            if (mid > (double)h->max)
                mid = (double)h->max;
            if (mid < (double)h->min)
                mid = (double)h->min;
            return (uint64_t)mid;
        }
    }
    return h->max;
}

void bu_hist_cdf(const bu_hist *h, void (*cb)(double ns, double frac, void *arg), void *arg)
{
    uint64_t seen = 0;
    double lo, hi;

    for (unsigned i = 0; i < BU_BUCKETS && h->count; i++) {
        if (!h->b[i])
            continue;
        seen += h->b[i];
        bucket_range(i, &lo, &hi);
        if (hi > (double)h->max)
            hi = (double)h->max;
        cb(hi, (double)seen / (double)h->count, arg);
    }
}

/* ---- Zipf: rejection-inversion (Hörmann and Derflinger 1996), as in
 * Apache Commons RejectionInversionZipfSampler; O(1) memory. ---- */

struct bu_zipf {
    uint64_t n, a, b, rng;
    double s, hx1, hn, sparam;
};

uint64_t bu_splitmix(uint64_t *state)
{
    uint64_t x = (*state += 0x9e3779b97f4a7c15ULL);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static double rnd01(uint64_t *st) { return (double)(bu_splitmix(st) >> 11) * 0x1.0p-53; }
static double helper1(double x) { return fabs(x) > 1e-8 ? log1p(x) / x : 1 - x * (0.5 - x / 3); }
static double helper2(double x) { return fabs(x) > 1e-8 ? expm1(x) / x : 1 + x * 0.5 * (1 + x / 3); }
static double zh(const bu_zipf *z, double x) { return exp(-z->s * log(x)); }
static double zhi(const bu_zipf *z, double x)
{
    double lx = log(x);
    return helper2((1 - z->s) * lx) * lx;
}
static double zhinv(const bu_zipf *z, double x)
{
    double t = x * (1 - z->s);
    if (t < -1)
        t = -1;
    return exp(helper1(t) * x);
}

static uint64_t gcd64(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

bu_zipf *bu_zipf_new(uint64_t n, double s, uint64_t seed)
{
    bu_zipf *z = calloc(1, sizeof(*z));

    if (!z || n == 0) {
        free(z);
        return NULL;
    }
    z->n = n;
    z->s = s;
    z->rng = seed * 0x2545f4914f6cdd1dULL + 1;
    /* the permutation id = (a * rank + b) mod n, a coprime to n */
    uint64_t ps = seed ^ 0x5bd1e995u;
    z->a = (bu_splitmix(&ps) % n) | 1;
    while (n > 1 && gcd64(z->a, n) != 1)
        z->a = (z->a + 2) % n;
    if (z->a == 0)
        z->a = 1;
    z->b = bu_splitmix(&ps) % n;
    if (s > 0) {
        z->hx1 = zhi(z, 1.5) - 1;
        z->hn = zhi(z, (double)n + 0.5);
        z->sparam = 2 - zhinv(z, zhi(z, 2.5) - zh(z, 2));
    }
    return z;
}

uint64_t bu_zipf_next(bu_zipf *z)
{
    uint64_t k;

    if (z->s <= 0) {
        k = bu_splitmix(&z->rng) % z->n;
    } else {
        for (;;) {
            double u = z->hn + rnd01(&z->rng) * (z->hx1 - z->hn);
            double x = zhinv(z, u);
            double kd = floor(x + 0.5);
            if (kd < 1)
                kd = 1;
            else if (kd > (double)z->n)
                kd = (double)z->n;
            if (kd - x <= z->sparam || u >= zhi(z, kd + 0.5) - zh(z, kd)) {
                k = (uint64_t)kd - 1;
                break;
            }
        }
    }
    return (uint64_t)(((unsigned __int128)z->a * k + z->b) % z->n);
}

void bu_zipf_free(bu_zipf *z) { free(z); }

/* ---- progress ---- */

void bu_progress_start(bu_progress *p, const char *what, double total)
{
    p->what = what;
    p->total = total > 0 ? total : 1;
    p->last_ns = 0;
    p->on = isatty(STDERR_FILENO) == 1;
}

void bu_progress_update(bu_progress *p, double done)
{
    uint64_t now;
    int w = 30, fill;

    if (!p->on)
        return;
    now = bu_now_ns();
    if (now - p->last_ns < 100000000u)
        return;
    p->last_ns = now;
    if (done > p->total)
        done = p->total;
    fill = (int)(done / p->total * w);
    fprintf(stderr, "\r%-40.40s [%.*s%*s] %3.0f%%", p->what, fill,
            "##############################", w - fill, "", 100.0 * done / p->total);
    fflush(stderr);
}

void bu_progress_end(bu_progress *p)
{
    if (p->on)
        fprintf(stderr, "\r%*s\r", 80, "");
}

/* ---- child programs ---- */

char *bu_run_capture(char *const argv[], int *status)
{
    int pfd[2];
    pid_t pid;
    size_t len = 0, cap = 1 << 16;
    char *out = malloc(cap);

    *status = -1;
    if (!out || pipe2(pfd, O_CLOEXEC) != 0) {
        free(out);
        return NULL;
    }
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        free(out);
        return NULL;
    }
    if (pid == 0) {
        int dn = open("/dev/null", O_WRONLY);
        dup2(pfd[1], STDOUT_FILENO);
        if (dn >= 0)
            dup2(dn, STDERR_FILENO);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(pfd[1]);
    for (;;) {
        ssize_t n;
        if (len + 1 >= cap) {
            char *bigger = realloc(out, cap * 2);
            if (!bigger)
                break;
            out = bigger;
            cap *= 2;
        }
        n = read(pfd[0], out + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    out[len] = '\0';
    close(pfd[0]);
    while (waitpid(pid, status, 0) < 0 && errno == EINTR)
        ;
    return out;
}

bool bu_json_num(const char *from, const char *to, const char *key, double *out)
{
    char pat[64];
    const char *p;
    char *end;
    size_t plen;

    snprintf(pat, sizeof(pat), "\"%s\"", key);
    plen = strlen(pat);
    for (p = from; p && p < to; p++) {
        p = strstr(p, pat);
        if (!p || p >= to)
            return false;
        const char *q = p + plen;
        while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
            q++;
        if (*q != ':')
            continue;
        q++;
        *out = strtod(q, &end);
        return end != q;
    }
    return false;
}

bool bu_json_obj(const char *from, const char *to, const char *key, const char **ofrom,
                 const char **oto)
{
    char pat[64];
    const char *p, *q;
    int depth = 0;

    snprintf(pat, sizeof(pat), "\"%s\"", key);
    p = strstr(from, pat);
    if (!p || p >= to)
        return false;
    q = strchr(p, '{');
    if (!q || q >= to)
        return false;
    *ofrom = q;
    for (p = q; p < to && *p; p++) {
        if (*p == '"') {
            for (p++; p < to && *p && *p != '"'; p++)
                if (*p == '\\' && p[1])
                    p++;
            continue;
        }
        if (*p == '{')
            depth++;
        else if (*p == '}' && --depth == 0) {
            *oto = p + 1;
            return true;
        }
    }
    return false;
}

void bu_json_str(FILE *out, const char *s)
{
    fputc('"', out);
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(out, "\\u%04x", ch);
        else
            fputc(ch, out);
    }
    fputc('"', out);
}


bool bu_fio_run(const char *fio, const char *path, const char *rw, uint64_t bs, unsigned qd,
                uint64_t size, uint64_t offset, double runtime_s, bu_fio_res *out)
{
    char a[7][PATH_MAX + 32];
    char *argv[20];
    int n = 0, st = -1;
    char *js;
    const char *end, *jf, *jt, *rf, *rt, *lf, *lt, *pf, *pt;
    double bw;

    memset(out, 0, sizeof(*out));
    snprintf(a[0], sizeof(a[0]), "--filename=%s", path);
    snprintf(a[1], sizeof(a[1]), "--rw=%s", rw);
    snprintf(a[2], sizeof(a[2]), "--bs=%" PRIu64, bs);
    snprintf(a[3], sizeof(a[3]), "--iodepth=%u", qd);
    snprintf(a[4], sizeof(a[4]), "--size=%" PRIu64, size);
    snprintf(a[5], sizeof(a[5]), "--offset=%" PRIu64, offset);
    snprintf(a[6], sizeof(a[6]), "--runtime=%.0f", runtime_s < 1 ? 1 : ceil(runtime_s));
    argv[n++] = (char *)fio;
    argv[n++] = (char *)"--name=embcache";
    for (int i = 0; i < 7; i++)
        argv[n++] = a[i];
    argv[n++] = (char *)"--ioengine=io_uring";
    argv[n++] = (char *)"--direct=1";
    argv[n++] = (char *)"--readonly";
    argv[n++] = (char *)"--lat_percentiles=1";
    argv[n++] = (char *)"--output-format=json";
    argv[n] = NULL;
    js = bu_run_capture(argv, &st);
    out->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    if (!js || out->status != 0)
        goto done;
    end = js + strlen(js);
    jf = strchr(js, '{'); /* anything fio printed before the document */
    if (!jf || !bu_json_obj(jf, end, "jobs", &jf, &jt) || !bu_json_obj(jf, jt, "read", &rf, &rt) ||
        !bu_json_num(rf, rt, "bw_bytes", &bw))
        goto done;
    if (!(bu_json_obj(rf, rt, "lat_ns", &lf, &lt) && bu_json_obj(lf, lt, "percentile", &pf, &pt)) &&
        !(bu_json_obj(rf, rt, "clat_ns", &lf, &lt) && bu_json_obj(lf, lt, "percentile", &pf, &pt)))
        goto done;
    if (!bu_json_num(pf, pt, "50.000000", &out->p50_us) ||
        !bu_json_num(pf, pt, "99.000000", &out->p99_us))
        goto done;
    out->gbps = bw / 1e9;
    if (!bu_json_num(rf, rt, "iops", &out->iops) || out->iops <= 0)
        out->iops = bs ? bw / (double)bs : 0;
    out->p50_us /= 1e3;
    out->p99_us /= 1e3;
    out->ok = true;
done:
    free(js);
    return out->ok;
}

/* ---- files and processes ---- */

int bu_file_drop_cache(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc;

    if (fd < 0)
        return -errno;
    rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return -rc;
}

int64_t bu_file_resident(const char *path)
{
    const size_t chunk = (size_t)1 << 30; /* 256 Ki pages of mincore vector at a time */
    long ps = sysconf(_SC_PAGESIZE);
    struct stat st;
    unsigned char *vec;
    int64_t pages = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || ps <= 0)
        goto fail_fd;
    if (fstat(fd, &st) != 0)
        goto fail_fd;
    if (st.st_size == 0) {
        close(fd);
        return 0;
    }
    vec = malloc(chunk / (size_t)ps);
    if (!vec)
        goto fail_fd;
    for (off_t off = 0; off < st.st_size; off += (off_t)chunk) {
        size_t len = (size_t)(st.st_size - off) < chunk ? (size_t)(st.st_size - off) : chunk;
        void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, off);
        if (m == MAP_FAILED || mincore(m, len, vec) != 0) {
            if (m != MAP_FAILED)
                munmap(m, len);
            free(vec);
            goto fail_fd;
        }
        for (size_t i = 0; i < (len + (size_t)ps - 1) / (size_t)ps; i++)
            pages += vec[i] & 1;
        munmap(m, len);
    }
    free(vec);
    close(fd);
    return pages * ps;
fail_fd:
    if (fd >= 0)
        close(fd);
    return -1;
}

double bu_daemon_cpu_seconds(const char *data_dir)
{
    char p[4200], buf[1024];
    long pid = 0;
    unsigned long ut = 0, st = 0;
    FILE *f;

    snprintf(p, sizeof(p), "%s/embcached.lock", data_dir);
    if (!(f = fopen(p, "r")) || fscanf(f, "%ld", &pid) != 1) {
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    snprintf(p, sizeof(p), "/proc/%ld/stat", pid);
    if (!(f = fopen(p, "r")) || !fgets(buf, sizeof(buf), f)) {
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    {
        const char *q = strrchr(buf, ')'); /* fields after the command name */
        if (!q || sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut,
                         &st) != 2)
            return -1;
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

int64_t bu_proc_status_bytes(pid_t pid, const char *field)
{
    char path[64], buf[8192];
    size_t fl = strlen(field);
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    for (char *p = buf; p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, field, fl) && p[fl] == ':')
            return (int64_t)strtoll(p + fl + 1, NULL, 10) * 1024;
    return -1;
}
