/*
 * scen_miss.c - embcache-bench's scenarios of reads from disk (bench.h),
 * each next to fio on the same partition file in the same run:
 *
 *   miss     the version evicted, one row of each partition in file order:
 *            every call is one cold partition fault (read O_DIRECT by the
 *            pager), at depth 1 and with 32 client threads at once; fio
 *            reads the same bytes sequentially at the partition stride
 *            (io_uring, direct, qd 1 and 32).
 *   rowmiss  the missed-row read path: a daemon whose budget is 1/16 of the
 *            table, cold (the version evicted before each run); 32 client
 *            threads (one connection each) gathering one uniform random row
 *            per call, and one client gathering batches of 32 distinct
 *            random rows; fio 4 KiB randread at qd 32 over the partition
 *            file's data region. rows/s over fio's IOPS is the ratio.
 *
 * Cold by design: no warm-up. Client threads are the scenario's own; each
 * has its own connection and histogram, merged under a mutex.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "core/partfile.h"

static bool have_fio(void)
{
    char *argv[] = {(char *)"fio", (char *)"--version", NULL};
    int st;
    char *v = bu_run_capture(argv, &st);
    bool ok = v && WIFEXITED(st) && WEXITSTATUS(st) == 0 && !strncmp(v, "fio", 3);
    free(v);
    return ok;
}

/* ---- miss ---- */

struct fault_shared {
    struct ctx *x;
    atomic_uint_fast64_t next;
    pthread_mutex_t mu;
    bu_hist *h;
    uint64_t mismatches, errors;
};

static void *fault_thread(void *arg)
{
    struct fault_shared *fs = arg;
    struct ctx *x = fs->x;
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    unsigned char *out = malloc(x->row_bytes);
    bu_hist h;

    bu_hist_reset(&h);
    if (!out || ec_client_connect(x->sock, &c) ||
        ec_tensor_resolve(c, x->main.model, "1", TENSOR, &t)) {
        pthread_mutex_lock(&fs->mu);
        fs->errors++;
        pthread_mutex_unlock(&fs->mu);
        goto out;
    }
    for (;;) {
        uint64_t p = atomic_fetch_add(&fs->next, 1);
        if (p >= x->main.info.partitions || g_stop)
            break;
        int64_t id = (int64_t)(p * x->main.info.rows_per_partition);
        uint64_t a = bu_now_ns();
        int rc = ec_tensor_gather(t, &id, 1, out, x->row_bytes);
        bu_hist_add(&h, bu_now_ns() - a);
        pthread_mutex_lock(&fs->mu);
        if (rc)
            fs->errors++;
        else
            fs->mismatches += verify_rows(x, &x->main, &id, 1, out);
        pthread_mutex_unlock(&fs->mu);
    }
out:
    pthread_mutex_lock(&fs->mu);
    bu_hist_merge(fs->h, &h);
    pthread_mutex_unlock(&fs->mu);
    ec_tensor_release(t);
    ec_client_close(c);
    free(out);
    return NULL;
}

/* One cold pass over every partition at depth qd, folded into r. */
static void miss_once(struct ctx *x, unsigned qd, struct result *r)
{
    unsigned char *out = malloc(x->row_bytes);
    bu_hist *h = malloc(sizeof(*h));
    uint64_t part_bytes = x->main.info.rows_per_partition * x->row_bytes, bad = 0;
    bu_progress pg;

    if (!out || !h) {
        res_fail(r, "out of memory");
        goto out;
    }
    if (ec_model_evict(x->c, x->main.model, "1", NULL)) {
        res_fail(r, "evict failed: %s", ec_last_error());
        goto out;
    }
    bu_hist_reset(h);
    uint64_t t0 = bu_now_ns();
    if (qd == 1) {
        bu_progress_start(&pg, "miss: cold faults, one client", (double)x->main.info.partitions);
        for (uint64_t p = 0; p < x->main.info.partitions && !g_stop; p++) {
            int64_t id = (int64_t)(p * x->main.info.rows_per_partition);
            uint64_t a = bu_now_ns();
            int rc = ec_tensor_gather(x->t, &id, 1, out, x->row_bytes);
            bu_hist_add(h, bu_now_ns() - a);
            if (rc) {
                res_fail(r, "gather failed: %s", ec_last_error());
                break;
            }
            r->mismatches += verify_rows(x, &x->main, &id, 1, out);
            r->verified++;
            bu_progress_update(&pg, (double)p);
        }
        bu_progress_end(&pg);
    } else {
        struct fault_shared fs = {.x = x, .h = h};
        pthread_t th[32];
        unsigned nt = 0;
        pthread_mutex_init(&fs.mu, NULL);
        atomic_init(&fs.next, 0);
        for (unsigned i = 0; i < qd && i < 32; i++)
            if (pthread_create(&th[nt], NULL, fault_thread, &fs) == 0)
                nt++;
        for (unsigned i = 0; i < nt; i++)
            pthread_join(th[i], NULL);
        pthread_mutex_destroy(&fs.mu);
        r->mismatches += fs.mismatches;
        r->verified += h->count - fs.errors;
        bad = fs.errors;
        if (fs.errors)
            res_fail(r, "%" PRIu64 " faults failed", fs.errors);
    }
    double secs = (double)(bu_now_ns() - t0) / 1e9;
    res_add_hist(r, h, h->count, h->count - bad, secs, -1);
    if (secs > 0) /* GB/s of partition bytes */
        r->rep[r->nrep - 1].gbps = (double)h->count * (double)part_bytes / secs / 1e9;
out:
    free(out);
    free(h);
}

static void fio_once(struct ctx *x, const ec_partfile_meta *m, const char *rw, uint64_t bs,
                     unsigned qd, struct result *r)
{
    bu_fio_res f;
    struct rep v = rep_none();

    if (bu_file_drop_cache(x->main.part_file) != 0)
        res_note(r, "(could not drop the file's cached pages)");
    if (!bu_fio_run("fio", x->main.part_file, rw, bs, qd, m->partitions * m->stride,
                    m->data_off, x->o.seconds, &f)) {
        res_fail(r, "fio failed (status %d) or printed no usable JSON", f.status);
        return;
    }
    v.gbps = f.gbps;
    v.p50 = f.p50_us;
    v.p99 = f.p99_us;
    v.iops = f.iops;
    res_add_rep(r, &v);
    r->secs += x->o.seconds < 1 ? 1 : ceil(x->o.seconds); /* bu_fio_run's --runtime */
}

int scen_miss(struct ctx *x)
{
    ec_partfile_meta m;
    int fd = -1;
    bool fio = have_fio();
    struct result *r[2], *fr[2] = {NULL, NULL};

    /* partition faults, by definition: the table cached by partitions */
    if (ensure_daemon(x, 0, 0) || set_cache_mode(x, EC_CACHE_PARTITIONS))
        return -1;
    if (!fio)
        note(x, "miss: fio not installed (apt-get install fio): no device baseline");
    else if (!x->main.part_file[0] || ec_partfile_open(x->main.part_file, &m, &fd)) {
        note(x, "miss: the partition file is unknown here (attach mode without --data-dir?): "
                "no fio baseline");
        fio = false;
    } else {
        close(fd);
    }
    for (int v = 0; v < 2; v++) {
        unsigned qd = v ? 32 : 1;
        r[v] = new_result(x, "miss", "embcache", "seq", 1, qd, qd);
        res_kv(r[v], "partition_bytes", "%" PRIu64,
               x->main.info.rows_per_partition * x->row_bytes);
        res_kv(r[v], "partitions", "%" PRIu64, x->main.info.partitions);
        res_note(r[v], "gbps counts partition bytes; cold by design, no warm-up");
        if (fio) {
            fr[v] = new_result(x, "miss", "fio", "seq", 1, qd, qd);
            res_note(fr[v], "fio ioengine=io_uring direct=1 rw=read bs=%" PRIu64, m.stride);
        }
    }
    for (unsigned rep = 0; rep < x->o.repeat && !g_stop; rep++)
        for (int v = 0; v < 2 && !g_stop; v++) {
            if (!r[v]->err)
                miss_once(x, v ? 32 : 1, r[v]);
            if (fr[v] && !fr[v]->err)
                fio_once(x, &m, "read", m.stride, v ? 32 : 1, fr[v]);
        }
    for (int v = 0; v < 2; v++) {
        res_finish(x, r[v]);
        if (fr[v])
            res_finish(x, fr[v]);
    }
    return 0;
}

/* ---- rowmiss ---- */

struct rowmiss_shared {
    struct ctx *x;
    atomic_uint ready, go;
    uint64_t secs_ns;
    pthread_mutex_t mu;
    bu_hist *h;
    uint64_t rows, mismatches, errors, max_ns;
    unsigned rep, batch;        /* distinct uniform rows per call, <= 32 */
};

struct rowmiss_thread {
    struct rowmiss_shared *sh;
    unsigned i;
};

/* One client: sh->batch distinct uniform random rows per call until the
 * time is up. */
static void *rowmiss_thread(void *arg)
{
    struct rowmiss_thread *me = arg;
    struct rowmiss_shared *sh = me->sh;
    struct ctx *x = sh->x;
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    unsigned char *out = malloc(32 * x->row_bytes);
    int64_t ids[32];
    uint64_t rng = x->o.seed * 7919 + me->i * 104729 + sh->rep * 1299709, rows = 0, bad = 0,
             err = 0, t0 = 0, now = 0;
    bu_hist h;

    bu_hist_reset(&h);
    if (!out || ec_client_connect(x->sock, &c) ||
        ec_tensor_resolve(c, x->main.model, "1", TENSOR, &t))
        err = 1;
    atomic_fetch_add(&sh->ready, 1);
    while (!atomic_load(&sh->go) && !g_stop)
        usleep(100);
    t0 = now = bu_now_ns();
    while (!err && !g_stop && now - t0 < sh->secs_ns) {
        uint64_t a;
        int rc;
        for (unsigned k = 0; k < sh->batch; k++) {
            bool dup;
            do {
                ids[k] = (int64_t)(bu_splitmix(&rng) % x->o.rows);
                dup = false;
                for (unsigned j = 0; j < k; j++)
                    dup |= ids[j] == ids[k];
            } while (dup);
        }
        a = bu_now_ns();
        rc = ec_tensor_gather(t, ids, sh->batch, out, sh->batch * x->row_bytes);
        now = bu_now_ns();
        bu_hist_add(&h, now - a);
        if (rc) {
            err++;
            break;
        }
        rows += sh->batch;
        /* every row: cheap next to a miss */
        bad += verify_rows(x, &x->main, ids, sh->batch, out);
        now = bu_now_ns();
    }
    pthread_mutex_lock(&sh->mu);
    bu_hist_merge(sh->h, &h);
    sh->rows += rows;
    sh->mismatches += bad;
    sh->errors += err;
    if (now - t0 > sh->max_ns)
        sh->max_ns = now - t0;
    pthread_mutex_unlock(&sh->mu);
    ec_tensor_release(t);
    ec_client_close(c);
    free(out);
    return NULL;
}

static void rowmiss_threads(struct ctx *x, unsigned n, unsigned batch, unsigned rep,
                            struct result *r)
{
    struct rowmiss_shared sh = {.x = x, .secs_ns = (uint64_t)(x->o.seconds * 1e9), .rep = rep,
                                .batch = batch};
    struct rowmiss_thread me[32];
    pthread_t th[32];
    unsigned nt = 0;
    struct ecstats a, b;

    sh.h = malloc(sizeof(*sh.h));
    if (!sh.h) {
        res_fail(r, "out of memory");
        return;
    }
    bu_hist_reset(sh.h);
    pthread_mutex_init(&sh.mu, NULL);
    read_stats(x->c, &a);
    for (unsigned i = 0; i < n && i < 32; i++) {
        me[i].sh = &sh;
        me[i].i = i;
        if (pthread_create(&th[nt], NULL, rowmiss_thread, &me[i]) == 0)
            nt++;
    }
    for (int w = 0; w < 3000 && atomic_load(&sh.ready) < nt && !g_stop; w++)
        usleep(1000);
    atomic_store(&sh.go, 1);
    for (unsigned i = 0; i < nt; i++)
        pthread_join(th[i], NULL);
    pthread_mutex_destroy(&sh.mu);
    read_stats(x->c, &b);
    r->verified += sh.rows;
    r->mismatches += sh.mismatches;
    if (sh.errors || nt < n)
        res_fail(r, "%" PRIu64 " client threads failed (%u of %u started): %s", sh.errors, nt,
                 n, ec_last_error());
    res_add_hist(r, sh.h, sh.h->count, sh.rows, (double)sh.max_ns / 1e9,
                 b.rows > a.rows ? (double)(b.hits - a.hits) / (double)(b.rows - a.rows) : -1);
    free(sh.h);
}

/* Windows of `batch` distinct uniform ids, back to back. */
static int64_t *distinct_ring(uint64_t rows, uint64_t seed, size_t len, uint64_t batch)
{
    int64_t *ring = malloc(len * sizeof(*ring));
    uint64_t rng = seed * 0x9e3779b97f4a7c15ULL + 17;

    if (!ring)
        return NULL;
    for (size_t w = 0; w + batch <= len; w += batch)
        for (size_t k = 0; k < batch; k++) {
            bool dup;
            do { /* rows >= batch is checked by the caller */
                ring[w + k] = (int64_t)(bu_splitmix(&rng) % rows);
                dup = false;
                for (size_t j = 0; j < k; j++)
                    dup |= ring[w + j] == ring[w + k];
            } while (dup);
        }
    return ring;
}

int scen_rowmiss(struct ctx *x)
{
    uint64_t budget = x->table_bytes / 16 < (4u << 20) ? 4u << 20 : x->table_bytes / 16;
    const uint64_t batch = 32;
    ec_partfile_meta m;
    int fd = -1;
    bool fio = have_fio();
    struct result *ra, *rb, *rc4, *rf = NULL;
    int64_t *ring;

    if (!x->o.start_daemon) {
        note(x, "rowmiss: skipped: it needs its own daemon for its budget (run without --socket)");
        return 0;
    }
    if (!batch_fits(x, "rowmiss", "uniform", batch))
        return 0;
    if (ensure_daemon(x, budget, shm_size_for_budget(budget)) || set_cache_mode(x, EC_CACHE_AUTO))
        return -1;
    if (!fio)
        note(x, "rowmiss: fio not installed (apt-get install fio): no device baseline");
    else if (!x->main.part_file[0] || ec_partfile_open(x->main.part_file, &m, &fd)) {
        note(x, "rowmiss: the partition file is unknown: no fio baseline");
        fio = false;
    } else {
        close(fd);
    }
    ring = distinct_ring(x->o.rows, x->o.seed + 11, RING_IDS, batch);
    if (!ring)
        return -1;
    ra = new_result(x, "rowmiss", "embcache", "uniform", 1, 32, 32);
    rc4 = new_result(x, "rowmiss", "embcache", "uniform", 8, 4, 32);
    rb = new_result(x, "rowmiss", "embcache", "uniform", batch, 1, 32);
    if (fio) {
        rf = new_result(x, "rowmiss", "fio", "uniform", 1, 1, 32);
        res_note(rf, "fio ioengine=io_uring direct=1 rw=randread bs=4096 iodepth=32 over the "
                     "partition file's data region");
    }
    for (unsigned rep = 0; rep < x->o.repeat && !g_stop; rep++) {
        if (!ra->err) {
            if (ec_model_evict(x->c, x->main.model, "1", NULL))
                res_fail(ra, "evict failed: %s", ec_last_error());
            else
                rowmiss_threads(x, 32, 1, rep, ra);
        }
        if (!rc4->err) {
            if (ec_model_evict(x->c, x->main.model, "1", NULL))
                res_fail(rc4, "evict failed: %s", ec_last_error());
            else
                rowmiss_threads(x, 4, 8, rep, rc4);
        }
        if (!rb->err) {
            struct ec_arg ea = {x->t, x->row_bytes};
            struct ecstats a, b;
            if (ec_model_evict(x->c, x->main.model, "1", NULL)) {
                res_fail(rb, "evict failed: %s", ec_last_error());
            } else {
                read_stats(x->c, &a);
                /* a fresh stretch of the ring each repeat: cold ids */
                size_t off = (size_t)rep * (RING_IDS / MAX_REP) / batch * batch;
                if (timed_run(x, &x->main, "embcache", ec_gather_fn, &ea, ring + off,
                              RING_IDS - off, batch, x->o.seconds, UINT64_MAX, rb, NULL,
                              0) >= 0 &&
                    read_stats(x->c, &b) == 0 && b.rows > a.rows)
                    rb->rep[rb->nrep - 1].hit =
                        (double)(b.hits - a.hits) / (double)(b.rows - a.rows);
            }
        }
        if (rf && !rf->err)
            fio_once(x, &m, "randread", 4096, 32, rf);
    }
    free(ring);
    res_kv(ra, "budget_bytes", "%" PRIu64, budget);
    res_kv(rc4, "budget_bytes", "%" PRIu64, budget);
    res_kv(rb, "budget_bytes", "%" PRIu64, budget);
    res_kv(ra, "cache_mode", "%s", cache_mode_name(ec_tensor_cache_mode(x->t)));
    res_kv(rc4, "cache_mode", "%s", cache_mode_name(ec_tensor_cache_mode(x->t)));
    res_kv(rb, "cache_mode", "%s", cache_mode_name(ec_tensor_cache_mode(x->t)));
    res_note(ra, "cold (version evicted before each repeat), 32 threads x 1 uniform row per "
                 "call, one connection each");
    res_note(rc4, "cold (version evicted before each repeat), 4 threads x 8 distinct uniform "
                  "rows per call, one connection each");
    res_note(rb, "cold (version evicted before each repeat), one client, 32 distinct uniform "
                 "rows per call");
    if (rf) {
        res_finish(x, rf);
        if (rf->ok) {
            /* the ratio of medians */
            struct result *rs[3] = {ra, rc4, rb};
            for (int k = 0; k < 3; k++) {
                double t[MAX_REP];
                for (unsigned i = 0; i < rs[k]->nrep; i++)
                    t[i] = rs[k]->rep[i].rows_s;
                double med = median_of(t, rs[k]->nrep);
                if (med > 0 && rf->iops > 0)
                    res_kv(rs[k], "rows_per_s_over_fio_iops", "%.3f", med / rf->iops);
                res_kv(rs[k], "fio_iops", "%.0f", rf->iops);
            }
        }
    }
    res_finish(x, ra);
    res_finish(x, rc4);
    res_finish(x, rb);
    return 0;
}
