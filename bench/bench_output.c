/*
 * bench_output.c - what embcache-bench prints and writes (bench.h): one
 * key=value line per result, the table with ratio columns, the goals with
 * met/MISSED, JSON and CSV (with every repeat's values), gnuplot plots, and
 * --check-json, which the ctest smoke test runs on the JSON. Main thread.
 *
 * Every figure of a result is the median over its repeats (max_us: the
 * largest); the line also gives the range (min-max) of rows/s, p50 and p99.
 * A same-memory comparison (mixed, large) whose holder could not be set up
 * or whose file used more page cache than the target allowed carries
 * fair=0: its ratio to embcache is not printed and its goal says why.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "bench/bench.h"

/* min and max of one field over the repeats; -1 if none */
#define RANGE(r, field, lo, hi)                                                          \
    do {                                                                                 \
        (lo) = (hi) = -1;                                                                \
        for (unsigned i_ = 0; i_ < (r)->nrep; i_++) {                                    \
            double v_ = (r)->rep[i_].field;                                              \
            if (v_ < 0 || !isfinite(v_))                                                 \
                continue;                                                                \
            if ((lo) < 0 || v_ < (lo))                                                   \
                (lo) = v_;                                                               \
            if (v_ > (hi))                                                               \
                (hi) = v_;                                                               \
        }                                                                                \
    } while (0)

/* "lo-hi" with dec decimals, or "-" when nothing was measured. */
static const char *range_str(char *buf, size_t len, double lo, double hi, int dec)
{
    if (lo < 0)
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%.*f-%.*f", dec, lo, dec, hi);
    return buf;
}

void print_line(const struct result *r)
{
    double rl, rh, pl, ph, ql, qh;
    char a[64], b[64], c[64];

    RANGE(r, rows_s, rl, rh);
    RANGE(r, p50, pl, ph);
    RANGE(r, p99, ql, qh);
    fprintf(txt,
            "scenario=%s system=%s dtype=%s rows=%" PRIu64 " dim=%" PRIu64
            " row_bytes=%" PRIu64 " batch=%" PRIu64 " dist=%s clients=%" PRIu64
            " qd=%" PRIu64 " repeats=%u seconds=%.2f calls=%" PRIu64 " rows_done=%" PRIu64
            " p50_us=%.3f p90_us=%.3f p99_us=%.3f p999_us=%.3f max_us=%.3f"
            " rows_per_s=%.0f gbps=%.3f hit_ratio=%.4f rows_per_s_range=%s"
            " p50_us_range=%s p99_us_range=%s verified_rows=%" PRIu64
            " mismatches=%" PRIu64 " ok=%d%s%s%s%s\n",
            r->scenario, r->system, r->dtype, r->table_rows, r->dim, r->row_bytes,
            r->batch, r->dist, r->clients, r->qd, r->nrep,
            r->nrep ? r->secs / r->nrep : 0.0, r->calls, r->rows_done, r->p50, r->p90, r->p99,
            r->p999, r->max, r->rows_s, r->gbps, r->hit_ratio,
            range_str(a, sizeof(a), rl, rh, 0), range_str(b, sizeof(b), pl, ph, 3),
            range_str(c, sizeof(c), ql, qh, 3), r->verified, r->mismatches, r->ok,
            r->fair < 0 ? "" : r->fair ? " fair=1" : " fair=0", r->kv,
            r->note[0] ? " note=" : "", r->note);
    fflush(txt);
}

/* A number from r->kv ("key=value"), or -1. */
static double kv_num(const struct result *r, const char *key)
{
    char pat[64];
    const char *p;

    snprintf(pat, sizeof(pat), " %s=", key);
    p = strstr(r->kv, pat);
    if (!p)
        return -1;
    char *end;
    double v = strtod(p + strlen(pat), &end);
    return end == p + strlen(pat) ? -1 : v;
}

/* ---- the table ---- */

static const struct result *find(const struct ctx *x, const struct result *like,
                                 const char *system)
{
    for (size_t i = 0; i < x->nres; i++) {
        const struct result *r = x->res[i];
        if (r->ok && !strcmp(r->system, system) && !strcmp(r->scenario, like->scenario) &&
            !strcmp(r->dist, like->dist) && r->batch == like->batch &&
            r->qd == like->qd && (r->clients == like->clients || !strcmp(system, "fio")))
            return r;
    }
    return NULL;
}

static const struct result *pick(const struct ctx *x, const char *scen, const char *sys,
                                 const char *dist, uint64_t batch, uint64_t clients,
                                 uint64_t qd)
{
    for (size_t i = 0; i < x->nres; i++) {
        const struct result *r = x->res[i];
        if (r->ok && !strcmp(r->scenario, scen) && !strcmp(r->system, sys) &&
            (!dist || !strcmp(r->dist, dist)) && (!batch || r->batch == batch) &&
            (!clients || r->clients == clients) && (!qd || r->qd == qd))
            return r;
    }
    return NULL;
}

static void cell(double v, int dec, int w)
{
    if (v < 0 || !isfinite(v))
        fprintf(txt, " %*s", w, "-");
    else
        fprintf(txt, " %*.*f", w, dec, v);
}

static double ratio(double a, double b) { return a > 0 && b > 0 ? a / b : -1; }

static bool same_memory(const struct result *r)
{
    return !strcmp(r->scenario, "mixed") || !strcmp(r->scenario, "large");
}

void print_table(const struct ctx *x)
{
    bool any = false;
    for (size_t i = 0; i < x->nres; i++)
        any |= strcmp(x->res[i]->scenario, "gpu") != 0;
    if (any) /* the gpu scenario printed its own table */
        fprintf(txt,
                "\n%-7s %-15s %6s %-7s %3s %3s %10s %10s %10s %10s %12s %7s %7s %8s %8s %7s "
                "%7s\n",
                "scen", "system", "batch", "dist", "cl", "qd", "p50_us", "p99_us", "p99.9_us",
                "max_us", "rows/s", "GB/s", "p50/ec", "p50/flat", "p99/flat", "/fio", "ec/x");
    for (size_t i = 0; i < x->nres; i++) {
        const struct result *r = x->res[i];
        if (!strcmp(r->scenario, "gpu")) /* in the gpu scenario's own table */
            continue;
        const struct result *ec = find(x, r, "embcache"), *fl = find(x, r, "flat"),
                            *fi = find(x, r, "fio");
        fprintf(txt, "%-7s %-15s %6" PRIu64 " %-7s %3" PRIu64 " %3" PRIu64, r->scenario,
                r->system, r->batch, r->dist, r->clients, r->qd);
        cell(r->p50, 2, 10);
        cell(r->p99, 2, 10);
        cell(r->p999, 2, 10);
        cell(r->max, 1, 10);
        cell(r->rows_s, 0, 12);
        cell(r->gbps, 2, 7);
        cell(ec && r->ok ? ratio(r->p50, ec->p50) : -1, 2, 7);
        cell(fl && r->ok ? ratio(r->p50, fl->p50) : -1, 2, 8);
        cell(fl && r->ok ? ratio(r->p99, fl->p99) : -1, 2, 8);
        if (!strcmp(r->scenario, "rowmiss")) {
            fi = pick(x, "rowmiss", "fio", NULL, 0, 0, 32);
            cell(fi && r->ok && fi != r ? ratio(r->rows_s, fi->iops) : -1, 2, 7);
        } else {
            cell(fi && r->ok && fi != r ? ratio(r->gbps, fi->gbps) : -1, 2, 7);
        }
        if (same_memory(r) && r->fair == 0)
            fprintf(txt, " %7s", "unfair");
        else
            cell(same_memory(r) && ec && r->ok && ec != r ? ratio(ec->rows_s, r->rows_s) : -1,
                 2, 7);
        fprintf(txt, "%s\n", r->ok ? "" : "  (failed)");
    }
    if (any)
        fprintf(txt, "(medians over the repeats; /fio: GB/s over fio's for miss, rows/s over "
                     "fio's 4 KiB IOPS for rowmiss; ec/x: embcache rows/s over this system's at "
                     "the same memory, printed only where fair=1)\n");
    for (unsigned i = 0; i < x->nnotes; i++)
        fprintf(txt, "note: %s\n", x->notes[i]);
}

/* ---- goals ---- */

static void goal(const char *what, double v, double limit, bool le)
{
    if (v < 0) {
        fprintf(txt, "goal %-68s measured %10s  (not run)\n", what, "-");
        return;
    }
    bool ok = le ? v <= limit : v >= limit;
    fprintf(txt, "goal %-68s measured %10.2f  %s\n", what, v, ok ? "met" : "MISSED");
}

/* A same-memory goal: measured only when the comparison was fair. */
static void goal_fair(const char *what, const struct result *ec, const struct result *other,
                      double limit)
{
    if (ec && other && other->fair == 0) {
        fprintf(txt, "goal %-68s measured %10s  (not fair: see %s's note)\n", what, "-",
                other->system);
        return;
    }
    goal(what, ec && other ? ratio(ec->rows_s, other->rows_s) : -1, limit, false);
}

void print_goals(const struct ctx *x)
{
    bool any = false;
    for (size_t i = 0; i < x->nres; i++)
        any |= strcmp(x->res[i]->scenario, "gpu") != 0;
    if (!any) /* the gpu scenario printed its own */
        return;
    fprintf(txt, "\nissue 4 goals (hit: batch 256, uniform ids, one client; medians):\n");
    const struct result *ec = pick(x, "hit", "embcache", "uniform", 256, 1, 1),
                        *fl = pick(x, "hit", "flat", "uniform", 256, 1, 1),
                        *mm = pick(x, "hit", "mmap", "uniform", 256, 1, 1),
                        *rm = pick(x, "hit", "redis-mget", "uniform", 256, 1, 1),
                        *rp = pick(x, "hit", "redis-pipeline", "uniform", 256, 1, 1),
                        *mc = pick(x, "hit", "memcached", "uniform", 256, 1, 1);
    goal("hit p50 embcache / flat (<= 1.2)", ec && fl ? ratio(ec->p50, fl->p50) : -1, 1.2, true);
    goal("hit p99 embcache / flat (<= 1.5)", ec && fl ? ratio(ec->p99, fl->p99) : -1, 1.5, true);
    goal("hit p50 redis-mget / embcache (>= 15)", ec && rm ? ratio(rm->p50, ec->p50) : -1, 15, false);
    goal("hit p99 redis-mget / embcache (>= 15)", ec && rm ? ratio(rm->p99, ec->p99) : -1, 15, false);
    goal("hit p50 redis-pipeline / embcache (>= 15)", ec && rp ? ratio(rp->p50, ec->p50) : -1, 15, false);
    goal("hit p50 memcached / embcache (>= 15)", ec && mc ? ratio(mc->p50, ec->p50) : -1, 15, false);
    goal("hit p99 memcached / embcache (>= 15)", ec && mc ? ratio(mc->p99, ec->p99) : -1, 15, false);
    goal("hit Mrows/s on one core (>= 8)", ec ? ec->rows_s / 1e6 : -1, 8, false);
    goal("hit p99.9 / p50 (<= 3)", ec ? ratio(ec->p999, ec->p50) : -1, 3, true);
    const struct result *s1 = pick(x, "scale", "embcache", NULL, 0, 1, 0),
                        *s2 = pick(x, "scale", "embcache", NULL, 0, 2, 0);
    goal("scale rows/s 2 clients / 1 client (>= 1.8)", s1 && s2 ? ratio(s2->rows_s, s1->rows_s) : -1,
         1.8, false);
    const struct result *m1 = pick(x, "miss", "embcache", NULL, 0, 1, 1),
                        *f1 = pick(x, "miss", "fio", NULL, 0, 0, 1),
                        *m32 = pick(x, "miss", "embcache", NULL, 0, 32, 32),
                        *f32 = pick(x, "miss", "fio", NULL, 0, 0, 32);
    goal("miss GB/s embcache / fio, depth 1 (>= 0.9)", m1 && f1 ? ratio(m1->gbps, f1->gbps) : -1,
         0.9, false);
    goal("miss p99 embcache / fio, depth 1 (<= 1.2)", m1 && f1 ? ratio(m1->p99, f1->p99) : -1,
         1.2, true);
    goal("miss GB/s embcache / fio, depth 32 (>= 0.9)",
         m32 && f32 ? ratio(m32->gbps, f32->gbps) : -1, 0.9, false);
    goal("miss p99 embcache / fio, depth 32 (<= 1.2)", m32 && f32 ? ratio(m32->p99, f32->p99) : -1,
         1.2, true);

    fprintf(txt, "\nrow-cache goals (mixed: Zipf(0.99), batch 256, budget = table/4, from cold; "
                 "large: the same over --large-rows; medians):\n");
    const struct result *mx = pick(x, "mixed", "embcache", NULL, 0, 0, 0),
                        *mxr = pick(x, "mixed", "mmap-random", NULL, 0, 0, 0),
                        *lg = pick(x, "large", "embcache", NULL, 0, 0, 0),
                        *lgr = pick(x, "large", "mmap-random", NULL, 0, 0, 0),
                        *rw1 = pick(x, "rowmiss", "embcache", NULL, 1, 32, 0),
                        *rw32 = pick(x, "rowmiss", "embcache", NULL, 32, 1, 0),
                        *rw8 = pick(x, "rowmiss", "embcache", NULL, 8, 4, 0),
                        *rwf = pick(x, "rowmiss", "fio", NULL, 0, 0, 32),
                        *ec256 = ec;
    double lru = mx ? kv_num(mx, "lru_row_hit_ratio") : -1;
    goal("mixed hit ratio (>= 0.80)", mx ? mx->hit_ratio : -1, 0.80, false);
    goal("mixed hit ratio / LRU-by-row hit ratio, same stream (>= 0.95)",
         mx ? ratio(mx->hit_ratio, lru) : -1, 0.95, false);
    goal("mixed rows/s (>= 309600 = 100 x 3096)", mx ? mx->rows_s : -1, 309600, false);
    goal_fair("mixed rows/s embcache / mmap-random, same memory (>= 3)", mx, mxr, 3);
    goal_fair("large rows/s embcache / mmap-random, same memory (>= 3)", lg, lgr, 3);
    goal("rowmiss rows/s / fio 4k randread IOPS qd 32, 32 clients (>= 0.8)",
         rw1 && rwf ? ratio(rw1->rows_s, rwf->iops) : -1, 0.8, false);
    goal("rowmiss rows/s / fio 4k randread IOPS qd 32, 4 clients x 8 (>= 0.8)",
         rw8 && rwf ? ratio(rw8->rows_s, rwf->iops) : -1, 0.8, false);
    goal("rowmiss rows/s / fio 4k randread IOPS qd 32, batch 32 (>= 0.8)",
         rw32 && rwf ? ratio(rw32->rows_s, rwf->iops) : -1, 0.8, false);
    goal("hit p50 embcache / flat, batch 256 (<= 1.1)",
         ec256 && fl ? ratio(ec256->p50, fl->p50) : -1, 1.1, true);
    goal("hit p50 embcache / mmap (warm), batch 256 (<= 1.1)",
         ec256 && mm ? ratio(ec256->p50, mm->p50) : -1, 1.1, true);
}

/* ---- JSON and CSV ---- */

static void jnum(FILE *f, const char *k, double v)
{
    if (v < 0 || !isfinite(v))
        fprintf(f, ",\"%s\":null", k);
    else
        fprintf(f, ",\"%s\":%.6g", k, v);
}

#define JREPS(f, r, key, field)                                                          \
    do {                                                                                 \
        fprintf(f, ",\"%s\":[", key);                                                    \
        for (unsigned i_ = 0; i_ < (r)->nrep; i_++) {                                    \
            double v_ = (r)->rep[i_].field;                                              \
            if (v_ < 0 || !isfinite(v_))                                                 \
                fprintf(f, "%snull", i_ ? "," : "");                                     \
            else                                                                         \
                fprintf(f, "%s%.6g", i_ ? "," : "", v_);                                 \
        }                                                                                \
        fprintf(f, "]");                                                                 \
    } while (0)

static bool all_numeric(const char *v, size_t len)
{
    char buf[64], *end;
    if (!len || len >= sizeof(buf))
        return false;
    memcpy(buf, v, len);
    buf[len] = '\0';
    strtod(buf, &end);
    return *end == '\0';
}

/* r->kv as JSON members: numbers, ";"-separated numbers as arrays, the
 * rest as strings. */
static void json_kv(FILE *f, const struct result *r)
{
    const char *p = r->kv;
    while (*p == ' ')
        p++;
    while (*p) {
        const char *eq = strchr(p, '='), *end = strchr(p, ' ');
        if (!end)
            end = p + strlen(p);
        if (!eq || eq > end)
            break;
        char key[64], val[256];
        snprintf(key, sizeof(key), "%.*s", (int)(eq - p), p);
        snprintf(val, sizeof(val), "%.*s", (int)(end - eq - 1), eq + 1);
        fprintf(f, ",");
        bu_json_str(f, key);
        fprintf(f, ":");
        if (all_numeric(val, strlen(val))) {
            fprintf(f, "%s", val);
        } else if (strchr(val, ';')) {
            bool num = true;
            for (char *a = val, *b; num && a; a = b ? b + 1 : NULL) {
                b = strchr(a, ';');
                num = all_numeric(a, b ? (size_t)(b - a) : strlen(a));
            }
            if (num) {
                fprintf(f, "[");
                for (char *c = val; *c; c++)
                    fputc(*c == ';' ? ',' : *c, f);
                fprintf(f, "]");
            } else {
                bu_json_str(f, val);
            }
        } else {
            bu_json_str(f, val);
        }
        p = end;
        while (*p == ' ')
            p++;
    }
}

void write_json(const struct ctx *x, FILE *f)
{
    fprintf(f, "[\n");
    for (size_t i = 0; i < x->nres; i++) {
        const struct result *r = x->res[i];
        fprintf(f, "  {\"bench\":\"embcache-bench\",\"version\":\"%s\",\"scenario\":", ec_version());
        bu_json_str(f, r->scenario);
        fprintf(f, ",\"system\":");
        bu_json_str(f, r->system);
        fprintf(f, ",\"dtype\":\"%s\",\"rows\":%" PRIu64 ",\"dim\":%" PRIu64
                   ",\"row_bytes\":%" PRIu64 ",\"batch\":%" PRIu64 ",\"dist\":\"%s\""
                   ",\"clients\":%" PRIu64 ",\"qd\":%" PRIu64 ",\"seed\":%" PRIu64
                   ",\"repeats\":%u,\"seconds\":%.3f,\"calls\":%" PRIu64 ",\"rows_done\":%" PRIu64,
                r->dtype, r->table_rows, r->dim, r->row_bytes, r->batch, r->dist,
                r->clients, r->qd, x->o.seed, r->nrep, r->nrep ? r->secs / r->nrep : 0.0,
                r->calls, r->rows_done);
        jnum(f, "p50_us", r->p50);
        jnum(f, "p90_us", r->p90);
        jnum(f, "p99_us", r->p99);
        jnum(f, "p999_us", r->p999);
        jnum(f, "max_us", r->max);
        jnum(f, "rows_per_s", r->rows_s);
        jnum(f, "gbps", r->gbps);
        jnum(f, "hit_ratio", r->hit_ratio);
        JREPS(f, r, "rows_per_s_reps", rows_s);
        JREPS(f, r, "p50_us_reps", p50);
        JREPS(f, r, "p99_us_reps", p99);
        JREPS(f, r, "gbps_reps", gbps);
        JREPS(f, r, "hit_ratio_reps", hit);
        if (r->iops >= 0) {
            jnum(f, "iops", r->iops);
            JREPS(f, r, "iops_reps", iops);
        }
        if (r->fair >= 0)
            fprintf(f, ",\"fair\":%s", r->fair ? "true" : "false");
        fprintf(f, ",\"verified_rows\":%" PRIu64 ",\"mismatches\":%" PRIu64 ",\"ok\":%s",
                r->verified, r->mismatches, r->ok ? "true" : "false");
        json_kv(f, r);
        fprintf(f, ",\"note\":");
        bu_json_str(f, r->note);
        fprintf(f, "}%s\n", i + 1 < x->nres ? "," : "");
    }
    fprintf(f, "]\n");
}

static void csvnum(FILE *f, double v)
{
    if (v < 0 || !isfinite(v))
        fprintf(f, ",");
    else
        fprintf(f, ",%.6g", v);
}

#define CREPS(f, r, field)                                                               \
    do {                                                                                 \
        fprintf(f, ",");                                                                 \
        for (unsigned i_ = 0; i_ < (r)->nrep; i_++) {                                    \
            double v_ = (r)->rep[i_].field;                                              \
            fprintf(f, "%s", i_ ? ";" : "");                                             \
            if (v_ >= 0 && isfinite(v_))                                                 \
                fprintf(f, "%.6g", v_);                                                  \
        }                                                                                \
    } while (0)

static void csvstr(FILE *f, const char *s)
{
    fprintf(f, ",\"");
    for (const char *p = s; *p; p++)
        fputs(*p == '"' ? "\"\"" : (char[2]){*p, 0}, f);
    fprintf(f, "\"");
}

void write_csv(const struct ctx *x, FILE *f)
{
    fprintf(f, "scenario,system,dtype,rows,dim,row_bytes,batch,dist,clients,qd,repeats,seconds,"
               "calls,rows_done,p50_us,p90_us,p99_us,p999_us,max_us,rows_per_s,gbps,hit_ratio,"
               "iops,rows_per_s_reps,p50_us_reps,p99_us_reps,hit_ratio_reps,fair,"
               "verified_rows,mismatches,ok,extra,note\n");
    for (size_t i = 0; i < x->nres; i++) {
        const struct result *r = x->res[i];
        fprintf(f, "%s,%s,%s,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%s,%" PRIu64
                   ",%" PRIu64 ",%u,%.3f,%" PRIu64 ",%" PRIu64,
                r->scenario, r->system, r->dtype, r->table_rows, r->dim, r->row_bytes,
                r->batch, r->dist, r->clients, r->qd, r->nrep,
                r->nrep ? r->secs / r->nrep : 0.0, r->calls, r->rows_done);
        csvnum(f, r->p50);
        csvnum(f, r->p90);
        csvnum(f, r->p99);
        csvnum(f, r->p999);
        csvnum(f, r->max);
        csvnum(f, r->rows_s);
        csvnum(f, r->gbps);
        csvnum(f, r->hit_ratio);
        csvnum(f, r->iops);
        CREPS(f, r, rows_s);
        CREPS(f, r, p50);
        CREPS(f, r, p99);
        CREPS(f, r, hit);
        if (r->fair >= 0)
            fprintf(f, ",%d", r->fair);
        else
            fprintf(f, ",");
        fprintf(f, ",%" PRIu64 ",%" PRIu64 ",%d", r->verified, r->mismatches, r->ok);
        csvstr(f, r->kv[0] == ' ' ? r->kv + 1 : r->kv);
        csvstr(f, r->note);
        fprintf(f, "\n");
    }
}

/* ---- plots ---- */

static void cdf_point(double ns, double frac, void *arg)
{
    fprintf(arg, "%.4f %.6f\n", ns / 1e3, frac);
}

static int run_gnuplot(const char *script)
{
    char *argv[] = {(char *)"gnuplot", (char *)script, NULL};
    int st;
    char *o = bu_run_capture(argv, &st);
    free(o);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

void write_plots(struct ctx *x)
{
    char path[PATH_MAX + 64], gp[PATH_MAX + 64];
    int st;
    char *argv[] = {(char *)"gnuplot", (char *)"--version", NULL};
    char *v = bu_run_capture(argv, &st);
    unsigned pngs = 0;
    bool have = v && WIFEXITED(st) && WEXITSTATUS(st) == 0;

    free(v);
    if (!have) {
        note(x, "--plot: gnuplot not installed (apt-get install gnuplot-nox): no plots");
        return;
    }
    mkdir(x->o.plot_dir, 0755);
    /* latency CDFs: one plot per (scenario, batch, dist, clients), one line per system */
    for (size_t i = 0; i < x->nres; i++) {
        const struct result *r = x->res[i];
        bool first = true;
        if (!r->h || !r->h->count)
            continue;
        for (size_t j = 0; j < i; j++) /* drawn with an earlier result of its group */
            if (x->res[j]->h && !strcmp(x->res[j]->scenario, r->scenario) &&
                x->res[j]->batch == r->batch && !strcmp(x->res[j]->dist, r->dist) &&
                x->res[j]->clients == r->clients && x->res[j]->qd == r->qd &&
                x->res[j]->dim == r->dim && !strcmp(x->res[j]->dtype, r->dtype))
                first = false;
        if (!first)
            continue;
        char stem[160];
        if (!strcmp(r->scenario, "gpu")) /* one table per dtype and width */
            snprintf(stem, sizeof(stem), "cdf-gpu-%s-d%" PRIu64 "-b%" PRIu64, r->dtype, r->dim,
                     r->batch);
        else
            snprintf(stem, sizeof(stem), "cdf-%s-b%" PRIu64 "-%s-c%" PRIu64 "-qd%" PRIu64,
                     r->scenario, r->batch, r->dist, r->clients, r->qd);
        snprintf(gp, sizeof(gp), "%s/%s.gp", x->o.plot_dir, stem);
        FILE *g = fopen(gp, "w");
        if (!g)
            continue;
        fprintf(g, "set terminal png size 900,560\nset output '%s/%s.png'\n"
                   "set title 'latency CDF: %s, %s x %" PRIu64 ", batch %" PRIu64
                   ", %s ids, %" PRIu64 " client(s)'\nset logscale x\n"
                   "set xlabel 'latency per call (us)'\n"
                   "set ylabel 'fraction of calls'\nset key bottom right\nset grid\nplot ",
                x->o.plot_dir, stem, r->scenario, r->dtype, r->dim, r->batch, r->dist,
                r->clients);
        bool any = false;
        for (size_t j = i; j < x->nres; j++) {
            const struct result *q = x->res[j];
            if (!q->h || !q->h->count || strcmp(q->scenario, r->scenario) ||
                q->batch != r->batch || strcmp(q->dist, r->dist) || q->clients != r->clients ||
                q->qd != r->qd || q->dim != r->dim || strcmp(q->dtype, r->dtype))
                continue;
            snprintf(path, sizeof(path), "%s/%s-%s.dat", x->o.plot_dir, stem, q->system);
            FILE *d = fopen(path, "w");
            if (!d)
                continue;
            bu_hist_cdf(q->h, cdf_point, d);
            fclose(d);
            fprintf(g, "%s'%s' using 1:2 with lines lw 2 title '%s'", any ? ", " : "", path,
                    q->system);
            any = true;
        }
        fprintf(g, "\n");
        fclose(g);
        if (any && run_gnuplot(gp) == 0)
            pngs++;
    }
    /* throughput vs batch size, hit, per dist */
    for (unsigned d = 0; d < x->o.ndist; d++) {
        char stem[64];
        snprintf(stem, sizeof(stem), "tput-hit-%s", x->o.dist[d]);
        snprintf(gp, sizeof(gp), "%s/%s.gp", x->o.plot_dir, stem);
        FILE *g = fopen(gp, "w");
        bool any = false;
        if (!g)
            continue;
        fprintf(g, "set terminal png size 900,560\nset output '%s/%s.png'\n"
                   "set title 'hit: rows/s vs batch size, %s ids, one client'\n"
                   "set logscale xy\nset xlabel 'batch size (rows)'\nset ylabel 'rows/s'\n"
                   "set key bottom right\nset grid\nplot ",
                x->o.plot_dir, stem, x->o.dist[d]);
        const char *systems[8];
        unsigned ns = 0;
        for (size_t i = 0; i < x->nres; i++) {
            const struct result *r = x->res[i];
            bool seen = false;
            if (strcmp(r->scenario, "hit") || strcmp(r->dist, x->o.dist[d]) || !r->ok)
                continue;
            for (unsigned k = 0; k < ns; k++)
                seen |= !strcmp(systems[k], r->system);
            if (!seen && ns < 8)
                systems[ns++] = r->system;
        }
        for (unsigned k = 0; k < ns; k++) {
            snprintf(path, sizeof(path), "%s/%s-%s.dat", x->o.plot_dir, stem, systems[k]);
            FILE *f = fopen(path, "w");
            if (!f)
                continue;
            for (size_t i = 0; i < x->nres; i++) {
                const struct result *r = x->res[i];
                if (!strcmp(r->scenario, "hit") && !strcmp(r->dist, x->o.dist[d]) && r->ok &&
                    !strcmp(r->system, systems[k]))
                    fprintf(f, "%" PRIu64 " %.0f\n", r->batch, r->rows_s);
            }
            fclose(f);
            fprintf(g, "%s'%s' using 1:2 with linespoints lw 2 title '%s'", any ? ", " : "",
                    path, systems[k]);
            any = true;
        }
        fprintf(g, "\n");
        fclose(g);
        if (any && run_gnuplot(gp) == 0)
            pngs++;
        else if (!any)
            unlink(gp);
    }
    fprintf(stderr, "embcache-bench: %u plots in %s\n", pngs, x->o.plot_dir);
}

/* ---- --check-json ---- */

int check_json(const char *path, const char *const *expect)
{
    static const char *const keys[] = {
        "scenario", "system", "dtype", "rows", "dim", "row_bytes", "batch", "dist", "clients",
        "qd", "repeats", "seconds", "calls", "rows_done", "p50_us", "p90_us", "p99_us",
        "p999_us", "max_us", "rows_per_s", "gbps", "hit_ratio", "rows_per_s_reps",
        "p50_us_reps", "p99_us_reps", "verified_rows", "mismatches", "ok", "note"};
    FILE *f = fopen(path, "r");
    char *buf;
    long len;
    int bad = 0, n = 0;
    bool seen[MAX_LIST] = {false}, any_expected = false, seen_hit = false;
    size_t nexp = 0;

    while (expect[nexp] && nexp < MAX_LIST)
        nexp++;
    if (!f) {
        fprintf(stderr, "embcache-bench: --check-json: cannot open %s: %s\n", path,
                strerror(errno));
        return 1;
    }
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = calloc(1, (size_t)len + 1);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        free(buf);
        return 1;
    }
    fclose(f);
    const char *p = buf;
    while (*p == ' ' || *p == '\n')
        p++;
    if (*p != '[' || !strrchr(p, ']')) {
        fprintf(stderr, "check-json: not a JSON array\n");
        free(buf);
        return 1;
    }
    for (const char *o = strchr(p, '{'); o; o = strchr(o + 1, '{')) {
        const char *e = strchr(o, '}');
        char obj[8192], sys[32] = "", scen[32] = "";
        if (!e || (size_t)(e - o) >= sizeof(obj)) {
            fprintf(stderr, "check-json: object %d is not closed\n", n);
            bad = 1;
            break;
        }
        memcpy(obj, o, (size_t)(e - o + 1));
        obj[e - o + 1] = '\0';
        n++;
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
            char pat[64];
            snprintf(pat, sizeof(pat), "\"%s\":", keys[k]);
            if (!strstr(obj, pat)) {
                fprintf(stderr, "check-json: object %d lacks \"%s\"\n", n, keys[k]);
                bad = 1;
            }
        }
        const char *s = strstr(obj, "\"system\":\"");
        if (s)
            sscanf(s + 10, "%31[^\"]", sys);
        s = strstr(obj, "\"scenario\":\"");
        if (s)
            sscanf(s + 12, "%31[^\"]", scen);
        for (size_t k = 0; k < nexp; k++)
            if (!strcmp(scen, expect[k])) {
                seen[k] = true;
                any_expected = true;
            }
        seen_hit |= !strcmp(scen, "hit");
        double mm = -1, ver = -1;
        bu_json_num(obj, obj + strlen(obj), "mismatches", &mm);
        bu_json_num(obj, obj + strlen(obj), "verified_rows", &ver);
        if (mm != 0) {
            fprintf(stderr, "check-json: %s/%s: %g rows differ from the source\n", scen, sys, mm);
            bad = 1;
        }
        /* fio and the H2D copies move bytes, not rows: nothing to verify */
        if (strcmp(sys, "fio") && strncmp(sys, "h2d-", 4) && ver <= 0 &&
            !strstr(obj, "\"ok\":false")) {
            fprintf(stderr, "check-json: %s/%s verified no rows\n", scen, sys);
            bad = 1;
        }
        if (!strstr(obj, "\"ok\":true")) {
            fprintf(stderr, "check-json: %s/%s did not succeed\n", scen, sys);
            bad = 1;
        }
        o = e;
    }
    /* A file with any scenario of the default set has them all; one of only
     * scenarios outside it (gpu, large) is whole. */
    for (size_t k = 0; k < nexp && any_expected; k++)
        if (!seen[k]) {
            fprintf(stderr, "check-json: no result of scenario %s\n", expect[k]);
            bad = 1;
        }
    if (seen_hit &&
        (!strstr(buf, "\"system\":\"flat\"") || !strstr(buf, "\"system\":\"hashmap\""))) {
        fprintf(stderr, "check-json: the flat and hashmap floors are missing\n");
        bad = 1;
    }
    free(buf);
    fprintf(stderr, "check-json: %s: %d results, %s\n", path, n, bad ? "BAD" : "ok");
    return bad || n == 0;
}
