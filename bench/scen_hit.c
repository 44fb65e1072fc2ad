/*
 * scen_hit.c - embcache-bench's hit and scale scenarios (bench.h).
 *
 *   hit    the whole table resident (prewarmed), batched gathers for each
 *          batch size and id distribution, next to every baseline of
 *          baseline.h on the same ids: the floors (flat, hashmap, and the
 *          mmap baselines with every page of the .npy touched first),
 *          Redis and memcached. Every configuration runs --repeat times,
 *          the systems taking turns within each repeat, each after a short
 *          untimed warm-up on the same ids.
 *   scale  1, 2, 4, 8 (--clients) forked client processes, each with its
 *          own connection, gathering uniform batches of 256 at once, each
 *          warmed up before the common start.
 *
 * Main thread; scale's clients are processes of their own.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"

struct bl {
    const ec_baseline_ops *ops;
    ec_baseline *b;
    char desc[256];
};

/* Open and load the baselines of --baselines for the hit scenario. */
static unsigned open_baselines(struct ctx *x, struct bl *bls, unsigned max)
{
    unsigned nbl = 0;
    char nb[256];

    for (unsigned i = 0; i < x->o.nbase && !g_stop && nbl < max; i++) {
        const ec_baseline_ops *ops = find_baseline(x->o.base[i]);
        if (!ops) {
            note(x, "baseline %s is not compiled in (hiredis/libmemcached not found at build "
                    "time: apt-get install libhiredis-dev libmemcached-dev, then rebuild)",
                 x->o.base[i]);
            continue;
        }
        nb[0] = '\0';
        ec_baseline *b = NULL;
        if (ops->open(&b, nb, sizeof(nb))) {
            note(x, "baseline %s unavailable: %s", ops->name, nb[0] ? nb : "open failed");
            continue;
        }
        int rc;
        if (ops->load_file) {
            rc = ops->load_file(b, x->main.npy, x->main.npy_data_off, x->o.rows, x->row_bytes);
        } else {
            fprintf(stderr, "embcache-bench: loading %" PRIu64 " rows into %s\n", x->o.rows,
                    ops->name);
            rc = ops->load(b, x->main.src, x->o.rows, x->row_bytes);
        }
        if (rc == 0 && ops->prefault) /* a floor: the whole file resident */
            rc = ops->prefault(b);
        if (rc) {
            note(x, "baseline %s: loading the rows failed; skipped", ops->name);
            ops->close(b);
            continue;
        }
        bls[nbl].ops = ops;
        bls[nbl].b = b;
        bls[nbl].desc[0] = '\0';
        if (ops->describe)
            ops->describe(b, bls[nbl].desc, sizeof(bls[nbl].desc));
        nbl++;
    }
    return nbl;
}

int scen_hit(struct ctx *x)
{
    struct bl bls[12];
    unsigned nbl;

    if (ensure_daemon(x, 0, 0) || make_resident(x))
        return -1;
    nbl = open_baselines(x, bls, 12);
    for (unsigned d = 0; d < x->o.ndist && !g_stop; d++) {
        int64_t *ring = make_ring(x->o.rows, x->o.dist[d], x->o.seed + d, RING_IDS);
        if (!ring)
            break;
        for (unsigned bi = 0; bi < x->o.nbatch && !g_stop; bi++) {
            uint64_t batch = x->o.batch[bi];
            struct result *r[13];
            if (!batch_fits(x, "hit", x->o.dist[d], batch))
                continue;
            r[0] = new_result(x, "hit", "embcache", x->o.dist[d], batch, 1, 1);
            for (unsigned k = 0; k < nbl; k++) {
                r[k + 1] = new_result(x, "hit", bls[k].ops->name, x->o.dist[d], batch, 1, 1);
                if (bls[k].desc[0])
                    res_note(r[k + 1], "%s", bls[k].desc);
            }
            for (unsigned rep = 0; rep < x->o.repeat && !g_stop; rep++) {
                struct ec_arg ea = {x->t, x->row_bytes};
                if (!r[0]->err) {
                    struct ecstats a, b;
                    if (warmup(x, ec_gather_fn, &ea, ring, RING_IDS, batch)) {
                        res_fail(r[0], "warm-up failed: %s", ec_last_error());
                    } else if (read_stats(x->c, &a) == 0 &&
                               timed_run(x, &x->main, "embcache", ec_gather_fn, &ea, ring,
                                         RING_IDS, batch, x->o.seconds, VERIFY_CALLS, r[0],
                                         NULL, 0) >= 0 &&
                               read_stats(x->c, &b) == 0 && b.rows > a.rows) {
                        /* resident means all hits: the daemon's counters say */
                        r[0]->rep[r[0]->nrep - 1].hit =
                            (double)(b.hits - a.hits) / (double)(b.rows - a.rows);
                    }
                }
                for (unsigned k = 0; k < nbl && !g_stop; k++) {
                    struct bl_arg ba = {bls[k].ops, bls[k].b};
                    if (r[k + 1]->err)
                        continue;
                    if (warmup(x, bl_gather_fn, &ba, ring, RING_IDS, batch))
                        res_fail(r[k + 1], "warm-up failed");
                    else
                        timed_run(x, &x->main, bls[k].ops->name, bl_gather_fn, &ba, ring,
                                  RING_IDS, batch, x->o.seconds, VERIFY_CALLS, r[k + 1], NULL,
                                  0);
                }
            }
            res_kv(r[0], "cache_mode", "%s", cache_mode_name(ec_tensor_cache_mode(x->t)));
            for (unsigned k = 0; k <= nbl; k++)
                res_finish(x, r[k]);
        }
        free(ring);
    }
    for (unsigned k = 0; k < nbl; k++)
        bls[k].ops->close(bls[k].b);
    return 0;
}

/* ---- scale ---- */

struct scale_shared {
    atomic_uint ready;
    atomic_uint go;
    struct {
        uint64_t rows, calls, verified, mismatches, ns;
        int rc;
        bu_hist h;
    } p[64];
};

static void scale_child(struct ctx *x, struct scale_shared *sh, unsigned i, uint64_t batch,
                        unsigned rep)
{
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    int64_t *ring = NULL;
    unsigned char *out = malloc(batch * x->row_bytes);
    size_t len = 1u << 18, pos = 0;
    uint64_t t0, end, now, vt = 0;

    sh->p[i].rc = 1;
    bu_hist_reset(&sh->p[i].h);
    if (ec_client_connect(x->sock, &c) || ec_tensor_resolve(c, x->main.model, "1", TENSOR, &t)) {
        fprintf(stderr, "embcache-bench: scale client %u: %s\n", i, ec_last_error());
        atomic_fetch_add(&sh->ready, 1);
        _exit(1);
    }
    ring = make_ring(x->o.rows, "uniform", x->o.seed * 131 + i + 977 * rep, len);
    if (ring) { /* warm up on the same ids, untimed */
        struct ec_arg ea = {t, x->row_bytes};
        if (warmup(x, ec_gather_fn, &ea, ring, len, batch))
            _exit(1);
    }
    atomic_fetch_add(&sh->ready, 1);
    while (!atomic_load(&sh->go) && !g_stop)
        usleep(200);
    if (!ring || !out)
        _exit(1);
    t0 = bu_now_ns();
    end = t0 + (uint64_t)(x->o.seconds * 1e9);
    now = t0;
    while (!g_stop && now < end) {
        if (pos + batch > len)
            pos = 0;
        uint64_t a = bu_now_ns();
        if (ec_tensor_gather(t, ring + pos, batch, out, batch * x->row_bytes)) {
            fprintf(stderr, "embcache-bench: scale client %u: %s\n", i, ec_last_error());
            _exit(1);
        }
        now = bu_now_ns();
        bu_hist_add(&sh->p[i].h, now - a);
        sh->p[i].calls++;
        sh->p[i].rows += batch;
        if (sh->p[i].calls <= 100) {
            sh->p[i].mismatches += verify_rows(x, &x->main, ring + pos, batch, out);
            sh->p[i].verified += batch;
            uint64_t v = bu_now_ns();
            vt += v - now;
            now = v;
        }
        pos += batch;
    }
    sh->p[i].ns = now - t0 - vt;
    sh->p[i].rc = 0;
    _exit(0); /* not ec_client_close: the parent's connection is not ours to touch */
}

/* One repeat with n client processes, folded into r. */
static void scale_once(struct ctx *x, struct scale_shared *sh, unsigned n, uint64_t batch,
                       unsigned rep, struct result *r)
{
    pid_t pids[64];
    unsigned started = 0;
    bu_hist *h = malloc(sizeof(*h));
    double maxs = 0;
    uint64_t calls = 0, rows = 0;
    char pp[512] = "";
    size_t nl = 0;

    if (!h) {
        res_fail(r, "out of memory");
        return;
    }
    memset(sh, 0, sizeof(*sh));
    fflush(NULL);
    for (unsigned i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0)
            scale_child(x, sh, i, batch, rep);
        if (p < 0)
            break;
        pids[started++] = p;
    }
    for (int w = 0; w < 3000 && atomic_load(&sh->ready) < started && !g_stop; w++)
        usleep(10000);
    atomic_store(&sh->go, 1);
    for (unsigned i = 0; i < started; i++) {
        int st;
        while (waitpid(pids[i], &st, 0) < 0 && errno == EINTR)
            if (g_stop)
                kill(pids[i], SIGKILL);
    }
    bu_hist_reset(h);
    for (unsigned i = 0; i < started; i++) {
        if (sh->p[i].rc) {
            res_fail(r, "client process %u failed", i);
            continue;
        }
        bu_hist_merge(h, &sh->p[i].h);
        calls += sh->p[i].calls;
        rows += sh->p[i].rows;
        r->verified += sh->p[i].verified;
        r->mismatches += sh->p[i].mismatches;
        if ((double)sh->p[i].ns / 1e9 > maxs)
            maxs = (double)sh->p[i].ns / 1e9;
        if (nl < sizeof(pp) - 16)
            nl += (size_t)snprintf(pp + nl, sizeof(pp) - nl, "%s%.2f", i ? "/" : "",
                                   (double)bu_hist_quantile(&sh->p[i].h, 0.99) / 1e3);
    }
    if (started < n)
        res_fail(r, "only %u of %u client processes started", started, n);
    res_add_hist(r, h, calls, rows, maxs, -1);
    if (rep + 1 == x->o.repeat || g_stop)
        res_kv(r, "per_process_p99_us", "%s", pp);
    free(h);
}

int scen_scale(struct ctx *x)
{
    const uint64_t batch = x->o.rows >= 256 ? 256 : x->o.rows;
    struct scale_shared *sh;

    if (ensure_daemon(x, 0, 0) || make_resident(x))
        return -1;
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return -1;
    for (unsigned ci = 0; ci < x->o.nclients && !g_stop; ci++) {
        unsigned n = (unsigned)x->o.clients[ci];
        struct result *r = new_result(x, "scale", "embcache", "uniform", batch, n, 1);
        for (unsigned rep = 0; rep < x->o.repeat && !g_stop && !r->err; rep++)
            scale_once(x, sh, n, batch, rep, r);
        res_kv(r, "cache_mode", "%s", cache_mode_name(ec_tensor_cache_mode(x->t)));
        res_finish(x, r);
    }
    munmap(sh, sizeof(*sh));
    return 0;
}
