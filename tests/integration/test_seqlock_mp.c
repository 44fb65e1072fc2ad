/*
 * test_seqlock_mp.c - readers in other processes never see a torn or
 * misplaced row while the memory they read is rewritten under them.
 *
 * Part 1, the read path users run: a real embcached (itest.h) with a budget
 * of a quarter of the table, reader processes that call ec_tensor_gather
 * (the public API, through libembcache's own seqlock-checked copy) on
 * batches of 4,096 ids from a hot set just larger than the budget, and an
 * evictor process that drops the whole version (ec_model_evict) every 50 ms.
 * Every gather misses in part, so the daemon evicts what readers are reading
 * and pages the misses in, into the extents it has just freed (first fit):
 * the memory a reader looked up is rewritten with other rows between its
 * lookup and its check, tens of thousands of times a second. Run once for a
 * tensor cached by partitions (the partition index) and once for one cached
 * by rows (the item index). With the seqlock check taken out of
 * client_gather.c both fail, with tens to thousands of wrong rows a run.
 *
 * The rows check themselves: row r of the int64 table holds the key
 * (tag << 40 | r) in its first word, pseudo-random words after it, and in its
 * last word a hash of all the others. A reader checks every row it gathers
 * against its id and its hash, so a row of another partition, another row or
 * a half-written one is counted as wrong. The test asserts that a million
 * rows or more were checked, none was wrong, and that the daemon really
 * rewrote memory meanwhile: evictions (by budget and by the evictor) and
 * page-ins by the thousand, and seqlock retries in the readers
 * (client_retries: a copy whose entry moved, which the library threw away).
 *
 * Part 2, the index primitives alone, at a rate no daemon reaches: one
 * synthetic writer process that evicts and refills partitions (and items)
 * in a tight loop, reusing freed memory at once, and readers that look up,
 * copy and check ec_index_still_valid / ec_item_still_valid themselves, the
 * way client_gather.c does. It also counts the copies that failed the check
 * and were indeed inconsistent: what a reader without the seqlock would have
 * returned.
 *
 *   ok       copy passed the check and is consistent
 *   torn     copy passed the check but is inconsistent  -> must be 0
 *   retried  the check failed (the reader would copy again)
 *   wouldbe  the check failed and the copy was indeed inconsistent
 *            (timing-dependent, printed, not asserted)
 *
 * Counters travel back through shared anonymous mappings; each process
 * writes only its own slot and the parent reads them after waitpid().
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "shm/extent.h"
#include "shm/index.h"
#include "shm/items.h"
#include "shm/segment.h"
#include "itest.h"
#include "testutil.h"

#define SEG_BYTES (64ull << 20)
#define NREADERS 2
#define NTENSORS 4
#define PARTS 256                   /* partitions per tensor */
#define NKEYS (NTENSORS * PARTS)
#define ROW_BYTES 64
#define BATCH 8                     /* rows copied per lookup */
#define TARGET_OK 1000000ull        /* successful row reads, all readers together */
#define MIN_SECS 1.0
#define MAX_SECS 25.0

typedef struct reader_stats {
    uint64_t ok, torn, retried, wouldbe, misses, lookups;
    int exit_code;
    char msg[256];
} reader_stats;

typedef struct shared {
    _Atomic int stop;     /* parent -> writer */
    _Atomic int ready;    /* readers that mapped the segment */
    struct {
        uint64_t fills, evicts, max_resident, final_resident;
        char msg[256];
    } w;
    reader_stats r[NREADERS];
} shared;

static uint64_t rows_per_part(uint32_t t)
{
    return 64u * t; /* 4, 8, 12, 16 KiB partitions */
}

static uint64_t mix(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

static uint64_t enc(uint32_t t, uint64_t row, uint64_t gen)
{
    return mix(mix(((uint64_t)t << 40) ^ row) ^ (gen * 0x9e3779b97f4a7c15ull)) | 1u;
}

static bool row_consistent(const uint64_t w[8], uint32_t t, uint64_t row)
{
    uint64_t gen = w[7], h;
    if (gen == 0)
        return false;
    h = enc(t, row, gen);
    for (int i = 0; i < 7; i++)
        if (w[i] != h)
            return false;
    return true;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------------ */
/* Part 1: ec_tensor_gather while the daemon rewrites the rows         */

#define G_ROWS 32768u               /* 8 MiB of int64 rows */
#define G_WORDS 32u                 /* 256-byte rows */
#define G_ROW_BYTES (G_WORDS * 8u)
#define G_PART_BYTES (16u << 10)    /* 64 rows a partition: 512 partitions */
#define G_BUDGET "2M"               /* a quarter of the table: 128 partitions */
#define G_HOT 9216u                 /* 31 ids in 32 are rows 0..G_HOT-1: 2.25 MiB, just */
                                    /* over the budget, so what readers read is evicted */
#define G_READERS 3
#define G_BATCH 4096                /* ids a gather: a long lookup-to-check window */
#define G_TARGET 1000000ull         /* rows checked, all readers together */
#define G_MIN_SECS 2.0
#define G_MAX_SECS 40.0             /* a sanitizer build on a loaded machine needs ~15 s */
#define G_MIN_EVICTIONS 10u         /* times the evictor must drop the version under them */
#define G_MIN_CHURN 10000u          /* page-ins and evictions (rows admitted and evicted) */
#define G_EVICT_US 50000            /* the evictor's pause between evictions */
#define G_TAG_PARTS 0x5eu           /* the tables' tags: a row of one is never */
#define G_TAG_ROWS 0x7au            /* right for the other */

struct gather_reader_report {
    uint64_t rows, wrong, gathers;
    char msg[256];                  /* the first wrong row, or the error */
};

struct gather_report {
    _Atomic int stop;               /* parent -> evictor */
    struct gather_reader_report r[G_READERS];
    struct {
        _Atomic uint64_t evictions; /* times the version was dropped */
        _Atomic int enough;         /* evictor -> readers: G_MIN_EVICTIONS and G_MIN_CHURN */
        uint64_t churn0[2];         /* parent -> evictor: the two churn counters before */
        const char *churn_names[2];
        uint64_t freed_bytes;
        char msg[256];
    } ev;
};

static uint64_t row_key(uint64_t tag, uint64_t row)
{
    return tag << 40 | row;
}

/* The hash in a row's last word, of all its other words. */
static uint64_t row_sum(const uint64_t *w)
{
    uint64_t h = 0x243f6a8885a308d3ull;

    for (unsigned j = 0; j < G_WORDS - 1; j++)
        h = mix(h ^ w[j]) + j;
    return h;
}

static void row_make(uint64_t key, uint64_t *w)
{
    w[0] = key;
    for (unsigned j = 1; j < G_WORDS - 1; j++)
        w[j] = mix(key * G_WORDS + j);
    w[G_WORDS - 1] = row_sum(w);
}

/* Is w row `key`, whole? Needs nothing but the row itself. */
static bool row_ok(const uint64_t *w, uint64_t key)
{
    return w[0] == key && w[G_WORDS - 1] == row_sum(w);
}

/* Write path: an int64 [G_ROWS, G_WORDS] .npy of self-checking rows
 * (ect_write_npy writes the header, the rows replace its data). */
static void table_write(const char *path, uint64_t tag)
{
    uint64_t shape[2] = {G_ROWS, G_WORDS}, w[G_WORDS];
    uint64_t bytes = (uint64_t)G_ROWS * G_ROW_BYTES;
    struct stat st;
    int fd;

    assert_int_equal(ect_write_npy(path, EC_DTYPE_I64, 2, shape, 1), 0);
    fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    assert_true((uint64_t)st.st_size > bytes);
    for (uint64_t r = 0; r < G_ROWS; r++) {
        row_make(row_key(tag, r), w);
        assert_int_equal(pwrite(fd, w, sizeof(w), (off_t)(st.st_size - bytes + r * sizeof(w))),
                         (ssize_t)sizeof(w));
    }
    assert_int_equal(close(fd), 0);
}

#define GFAIL(code, ...)                                                                     \
    do {                                                                                     \
        snprintf(me->msg, sizeof(me->msg), __VA_ARGS__);                                     \
        _exit(code);                                                                         \
    } while (0)

/* A reader: batches of G_BATCH ids, half from a hot set and half anywhere,
 * gathered through ec_tensor_gather and every row checked. Exits 0, 1 (wrong
 * rows; the first is described) or 2 (an error). */
static void __attribute__((noreturn)) gather_reader(int id, uint64_t tag,
                                                    struct gather_report *rep)
{
    struct gather_reader_report *me = &rep->r[id];
    static uint64_t buf[G_BATCH][G_WORDS];
    int64_t ids[G_BATCH];
    uint64_t seed = 0x5eed0000ull + (uint64_t)id * 7919;
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    double t0;

    if (ec_client_connect(E.sock, &c) || ec_tensor_resolve(c, "m", "1", "t", &t))
        GFAIL(2, "reader %d: %s", id, ec_last_error());
    t0 = now();
    while (true) {
        double el = now() - t0;
        int rc;

        /* Enough rows, and the evictor dropped the version under them often
         * enough (on a loaded machine it gets fewer turns than 2 s allow)
         * with enough memory rewritten (a sanitizer build is slower). */
        if ((me->rows >= G_TARGET / G_READERS && el >= G_MIN_SECS &&
             atomic_load(&rep->ev.enough)) ||
            el >= G_MAX_SECS)
            break;
        for (int k = 0; k < G_BATCH; k++) {
            uint64_t r = rnd(&seed);
            ids[k] = (int64_t)((r >> 8) % (r & 31 ? G_HOT : G_ROWS));
        }
        rc = ec_tensor_gather(t, ids, G_BATCH, buf, sizeof(buf));
        if (rc)
            GFAIL(2, "reader %d: gather %" PRIu64 ": %s", id, me->gathers, ec_last_error());
        me->gathers++;
        for (int k = 0; k < G_BATCH; k++) {
            if (row_ok(buf[k], row_key(tag, (uint64_t)ids[k])))
                continue;
            if (me->wrong++ == 0)
                snprintf(me->msg, sizeof(me->msg),
                         "reader %d: row %lld came back as key 0x%" PRIx64 " (row %" PRIu64
                         " of tag 0x%" PRIx64 "), its hash %s",
                         id, (long long)ids[k], buf[k][0], buf[k][0] & (((uint64_t)1 << 40) - 1),
                         buf[k][0] >> 40,
                         buf[k][G_WORDS - 1] == row_sum(buf[k]) ? "right" : "wrong");
        }
        me->rows += G_BATCH;
    }
    ec_tensor_release(t);
    ec_client_close(c);
    _exit(me->wrong ? 1 : 0);
}

struct churn_q {
    const char *const *names;
    uint64_t v[2];
};

static int churn_cb(const char *name, uint64_t v, void *arg)
{
    struct churn_q *q = arg;

    for (int i = 0; i < 2; i++)
        if (!strcmp(name, q->names[i]))
            q->v[i] = v;
    return 0;
}

/* The evictor: drop the whole version, pause, again, until told to stop.
 * It tells the readers when the daemon has rewritten enough under them. */
static void __attribute__((noreturn)) gather_evictor(struct gather_report *rep)
{
    ec_client *c = NULL;
    uint64_t freed;
    struct churn_q q = {rep->ev.churn_names, {0, 0}};

    if (ec_client_connect(E.sock, &c)) {
        snprintf(rep->ev.msg, sizeof(rep->ev.msg), "evictor: %s", ec_last_error());
        _exit(2);
    }
    while (!atomic_load(&rep->stop)) {
        if (ec_model_evict(c, "m", "1", &freed)) {
            snprintf(rep->ev.msg, sizeof(rep->ev.msg), "evictor: evict: %s", ec_last_error());
            _exit(2);
        }
        atomic_fetch_add(&rep->ev.evictions, freed > 0);
        rep->ev.freed_bytes += freed;
        if (ec_client_stats(c, churn_cb, &q)) {
            snprintf(rep->ev.msg, sizeof(rep->ev.msg), "evictor: stats: %s", ec_last_error());
            _exit(2);
        }
        if (atomic_load(&rep->ev.evictions) >= G_MIN_EVICTIONS &&
            q.v[0] - rep->ev.churn0[0] >= G_MIN_CHURN && q.v[1] - rep->ev.churn0[1] >= G_MIN_CHURN)
            atomic_store(&rep->ev.enough, 1);
        usleep(G_EVICT_US);
    }
    ec_client_close(c);
    _exit(0);
}

enum { S_EVICTIONS, S_PAGE_INS, S_ROW_ADMITTED, S_ROW_EVICTED, S_RETRIES, S_GATHERS,
       S_CLIENTS, S_COUNT };

static void gather_stats(ec_client *c, struct statv *s)
{
    static const char *const names[S_COUNT] = {"evictions", "page_ins", "row_admitted",
                                               "row_evicted", "client_retries",
                                               "client_gathers", "clients"};
    for (int i = 0; i < S_COUNT; i++)
        s[i] = (struct statv){names[i], 0, 0};
    stats_get(c, s, S_COUNT);
}

static void gather_under_rewrites(ec_cache_mode mode)
{
    static const char *const args[] = {"--shm-size", "32M", "--budget", G_BUDGET, NULL};
    uint64_t tag = mode == EC_CACHE_ROWS ? G_TAG_ROWS : G_TAG_PARTS;
    struct gather_report *rep = shared_map(sizeof(*rep));
    struct statv before[S_COUNT], after[S_COUNT];
    uint64_t rows = 0, wrong = 0, gathers = 0, d[S_COUNT];
    char path[600];
    pid_t kids[G_READERS], evictor;
    ec_client *c;
    ec_tensor *t;
    double t0;

    env_start("ec-seqlock", args);
    snprintf(path, sizeof(path), "%s/t.npy", E.dir);
    table_write(path, tag);
    c = connect_ok();
    import_npy(c, "m", 1, path, G_PART_BYTES);
    assert_int_equal(ec_model_cache_mode(c, "m", NULL, mode), 0);
    t = resolve_ok(c, "m", "1", "t");
    assert_int_equal(ec_tensor_cache_mode(t), mode);
    ec_tensor_release(t);
    gather_stats(c, before);
    rep->ev.churn_names[0] = mode == EC_CACHE_ROWS ? "row_admitted" : "page_ins";
    rep->ev.churn_names[1] = mode == EC_CACHE_ROWS ? "row_evicted" : "evictions";
    rep->ev.churn0[0] = before[mode == EC_CACHE_ROWS ? S_ROW_ADMITTED : S_PAGE_INS].v;
    rep->ev.churn0[1] = before[mode == EC_CACHE_ROWS ? S_ROW_EVICTED : S_EVICTIONS].v;

    t0 = now();
    if ((evictor = spawn()) == 0)
        gather_evictor(rep);
    for (int i = 0; i < G_READERS; i++)
        if ((kids[i] = spawn()) == 0)
            gather_reader(i, tag, rep);
    for (int i = 0; i < G_READERS; i++) {
        int st = reap(kids[i]);
        if (st == 2)
            fail_msg("%s", rep->r[i].msg);
        assert_true(st == 0 || st == 1);
        rows += rep->r[i].rows;
        wrong += rep->r[i].wrong;
        gathers += rep->r[i].gathers;
    }
    atomic_store(&rep->stop, 1);
    if (reap(evictor) != 0)
        fail_msg("%s", rep->ev.msg);
    /* The readers' sessions are counted once the daemon has seen them go. */
    for (int i = 0; i < 500; i++) {
        gather_stats(c, after);
        if (after[S_CLIENTS].v == 1)
            break;
        usleep(10000);
    }
    for (int i = 0; i < S_COUNT; i++)
        d[i] = after[i].v - before[i].v;
    printf("gather under rewrites, by %s: %d readers, %.1f s: %" PRIu64 " rows checked in %"
           PRIu64 " gathers, %" PRIu64 " wrong; seqlock retries %" PRIu64 "; the daemon: %"
           PRIu64 " evictions by budget, %" PRIu64 " page-ins, %" PRIu64 " rows admitted, %"
           PRIu64 " rows evicted; the evictor dropped the version %" PRIu64 " times (%.1f MiB)\n",
           mode == EC_CACHE_ROWS ? "rows" : "partitions", G_READERS, now() - t0, rows,
           gathers, wrong, d[S_RETRIES], d[S_EVICTIONS], d[S_PAGE_INS], d[S_ROW_ADMITTED],
           d[S_ROW_EVICTED], (uint64_t)atomic_load(&rep->ev.evictions),
           (double)rep->ev.freed_bytes / (1 << 20));
    for (int i = 0; i < G_READERS; i++)
        if (rep->r[i].wrong)
            printf("  %s (%" PRIu64 " wrong rows)\n", rep->r[i].msg, rep->r[i].wrong);
    fflush(stdout);

    assert_int_equal(wrong, 0);
    assert_true(rows >= G_TARGET);
    assert_int_equal(after[S_CLIENTS].v, 1);
    assert_int_equal(d[S_GATHERS], gathers);     /* every gather went through the library */
    /* Memory the readers read was rewritten under them, thousands of times: */
    assert_true(atomic_load(&rep->ev.evictions) >= G_MIN_EVICTIONS);
    if (mode == EC_CACHE_ROWS)
        assert_true(d[S_ROW_ADMITTED] >= G_MIN_CHURN && d[S_ROW_EVICTED] >= G_MIN_CHURN);
    else
        assert_true(d[S_PAGE_INS] >= G_MIN_CHURN && d[S_EVICTIONS] >= G_MIN_CHURN);
    /* ... and the readers' seqlock saw it happen. */
    assert_true(d[S_RETRIES] > 0);
    daemon_alive();
    ec_client_close(c);
    munmap(rep, sizeof(*rep));
}

static void test_gather_by_partitions_under_rewrites(void **state)
{
    (void)state;
    gather_under_rewrites(EC_CACHE_PARTITIONS);
}

static void test_gather_by_rows_under_rewrites(void **state)
{
    (void)state;
    gather_under_rewrites(EC_CACHE_ROWS);
}

/* ------------------------------------------------------------------ */
/* Part 2: the index primitives under a synthetic writer               */

/* ------------------------------------------------------------------ */
/* Writer                                                              */

#define WFAIL(...)                                                                           \
    do {                                                                                     \
        snprintf(sh->w.msg, sizeof(sh->w.msg), __VA_ARGS__);                                 \
        _exit(1);                                                                            \
    } while (0)

static void writer(ec_segment *seg, shared *sh)
{
    static uint64_t gen_of[NKEYS], off_of[NKEYS];
    uint64_t seed = 0x1234, gen = 0, resident = 0;
    ec_extents *ex;
    ec_extent_stats st;
    uint64_t used = 0;

    if (ec_extents_new(seg->data_size, &ex) < 0)
        WFAIL("ec_extents_new: %s", ec_last_error());
    while (!atomic_load_explicit(&sh->stop, memory_order_relaxed)) {
        uint32_t k = (uint32_t)(rnd(&seed) % NKEYS);
        uint32_t t = 1 + k % NTENSORS, p = k / NTENSORS;
        uint64_t bytes = rows_per_part(t) * ROW_BYTES;

        if (gen_of[k]) {
            uint64_t off;
            uint32_t len;
            /* Evict: unpublish first, then free the extent. */
            if (ec_index_remove(seg, t, p, &off, &len) != 0)
                WFAIL("remove %u/%u: %s", t, p, ec_last_error());
            if (off != off_of[k] || len != bytes)
                WFAIL("remove %u/%u returned [%" PRIu64 ", +%u)", t, p, off, len);
            if (ec_extent_release(ex, off, len) != 0)
                WFAIL("release: %s", ec_last_error());
            gen_of[k] = 0;
            resident--;
            used -= bytes;
            sh->w.evicts++;
        } else {
            uint64_t off;
            uint8_t *base;
            if (ec_extent_alloc(ex, bytes, &off) != 0)
                WFAIL("alloc: %s", ec_last_error());
            gen++;
            base = seg->data + off;
            for (uint64_t r = 0; r < rows_per_part(t); r++) {
                uint64_t *w = (uint64_t *)(base + r * ROW_BYTES);
                uint64_t h = enc(t, (uint64_t)p * rows_per_part(t) + r, gen);
                for (int i = 0; i < 7; i++)
                    w[i] = h;
                w[7] = gen;
            }
            if (ec_index_insert(seg, t, p, off, (uint32_t)bytes) != 0)
                WFAIL("insert %u/%u: %s", t, p, ec_last_error());
            gen_of[k] = gen;
            off_of[k] = off;
            resident++;
            used += bytes;
            if (resident > sh->w.max_resident)
                sh->w.max_resident = resident;
            sh->w.fills++;
        }
    }
    /* The writer's own view is consistent at the end. */
    if (ec_index_count(seg) != resident)
        WFAIL("index holds %" PRIu64 " entries, writer has %" PRIu64, ec_index_count(seg),
              resident);
    ec_extent_stats_get(ex, &st);
    if (st.used != used)
        WFAIL("allocator has %" PRIu64 " bytes used, writer %" PRIu64, st.used, used);
    for (uint32_t k = 0; k < NKEYS; k++) {
        ec_index_ref ref;
        int hit = ec_index_lookup(seg, 1 + k % NTENSORS, k / NTENSORS, &ref);
        if (hit != (gen_of[k] != 0) || (hit && ref.offset != off_of[k]))
            WFAIL("key %u: lookup %d, expected %d", k, hit, gen_of[k] != 0);
    }
    sh->w.final_resident = resident;
    ec_extents_free(ex);
    _exit(0);
}

/* ------------------------------------------------------------------ */
/* Readers                                                             */

#define RFAIL(...)                                                                           \
    do {                                                                                     \
        snprintf(me->msg, sizeof(me->msg), __VA_ARGS__);                                     \
        _exit(1);                                                                            \
    } while (0)

static void reader(int id, int rofd, shared *sh)
{
    reader_stats *me = &sh->r[id];
    uint64_t seed = 0xabcdef00ull + (uint64_t)id * 7919;
    uint64_t target = TARGET_OK / NREADERS + 1;
    uint64_t buf[BATCH][8];
    uint64_t rows[BATCH];
    ec_segment ro;
    double t0;

    if (ec_segment_map_fd(rofd, &ro) != 0)
        RFAIL("map_fd: %s", ec_last_error());
    close(rofd);
    if (ro.writable || mprotect(ro.base, EC_SHM_PAGE, PROT_READ | PROT_WRITE) == 0)
        RFAIL("the reader's mapping is writable");
    atomic_fetch_add(&sh->ready, 1);
    t0 = now();
    for (uint64_t iter = 0;; iter++) {
        uint32_t k = (uint32_t)(rnd(&seed) % NKEYS);
        uint32_t t = 1 + k % NTENSORS, p = k / NTENSORS;
        uint64_t rpp = rows_per_part(t);
        ec_index_ref ref;
        bool valid;

        if ((iter & 1023) == 0) {
            double el = now() - t0;
            if ((me->ok >= target && el >= MIN_SECS) || el >= MAX_SECS)
                break;
        }
        if (!ec_index_lookup(&ro, t, p, &ref)) {
            me->misses++;
            continue;
        }
        me->lookups++;
        if (ref.length != rpp * ROW_BYTES) {
            /* Only an entry that changed under us may look like this. */
            if (ec_index_still_valid(&ref))
                me->torn++;
            else
                me->retried++;
            continue;
        }
        for (int i = 0; i < BATCH; i++) {
            rows[i] = rnd(&seed) % rpp;
            memcpy(buf[i], ro.data + ref.offset + rows[i] * ROW_BYTES, ROW_BYTES);
        }
        valid = ec_index_still_valid(&ref);
        for (int i = 0; i < BATCH; i++) {
            bool good = row_consistent(buf[i], t, (uint64_t)p * rpp + rows[i]);
            if (valid && good)
                me->ok++;
            else if (valid)
                me->torn++;
            else {
                me->retried++;
                me->wouldbe += !good;
            }
        }
    }
    ec_segment_close(&ro);
    _exit(0);
}

/* ------------------------------------------------------------------ */

static pid_t fork_child(void)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        alarm(120); /* never outlive a wedged test */
    return pid;
}

static void test_seqlock_multiprocess(void **state)
{
    char *dir = ect_tmpdir("ec-seqlock");
    shared *sh;
    ec_segment seg;
    pid_t wpid, rpid[NREADERS];
    int status, rstatus[NREADERS], rofd;
    uint64_t ok = 0, torn = 0, retried = 0, wouldbe = 0, misses = 0, lookups = 0;
    double t0;
    (void)state;

    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(sh != MAP_FAILED);
    memset(sh, 0, sizeof(*sh));
    assert_int_equal(ec_segment_create(SEG_BYTES, &seg), 0);
    t0 = now();

    wpid = fork_child();
    if (wpid == 0)
        writer(&seg, sh);
    for (int i = 0; i < NREADERS; i++) {
        /* Each reader gets its own read-only descriptor, as a client does,
         * and drops the daemon's read-write mapping it inherited. */
        assert_int_equal(ec_segment_open_readonly(&seg, &rofd), 0);
        rpid[i] = fork_child();
        if (rpid[i] == 0) {
            ec_segment_close(&seg);
            reader(i, rofd, sh);
        }
        close(rofd);
    }
    for (int i = 0; i < NREADERS; i++) {
        assert_int_equal(waitpid(rpid[i], &rstatus[i], 0), rpid[i]);
    }
    atomic_store(&sh->stop, 1);
    assert_int_equal(waitpid(wpid, &status, 0), wpid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("writer failed (status 0x%x): %s", status, sh->w.msg);
    for (int i = 0; i < NREADERS; i++)
        if (!WIFEXITED(rstatus[i]) || WEXITSTATUS(rstatus[i]) != 0)
            fail_msg("reader %d failed (status 0x%x): %s", i, rstatus[i], sh->r[i].msg);

    for (int i = 0; i < NREADERS; i++) {
        reader_stats *r = &sh->r[i];
        printf("reader %d: ok %" PRIu64 " torn %" PRIu64 " retried %" PRIu64
               " would-be-torn %" PRIu64 " misses %" PRIu64 " lookups %" PRIu64 "\n",
               i, r->ok, r->torn, r->retried, r->wouldbe, r->misses, r->lookups);
        ok += r->ok;
        torn += r->torn;
        retried += r->retried;
        wouldbe += r->wouldbe;
        misses += r->misses;
        lookups += r->lookups;
    }
    printf("writer: %" PRIu64 " fills, %" PRIu64 " evictions, up to %" PRIu64
           " partitions resident, %" PRIu64 " at the end\n",
           sh->w.fills, sh->w.evicts, sh->w.max_resident, sh->w.final_resident);
    printf("seqlock: %d readers, %.2f s: ok rows %" PRIu64 ", torn %" PRIu64
           ", retried rows %" PRIu64 ", torn without the check %" PRIu64
           ", missed lookups %" PRIu64 " (hits %" PRIu64 ")\n",
           NREADERS, now() - t0, ok, torn, retried, wouldbe, misses, lookups);
    fflush(stdout);

    assert_int_equal(torn, 0);
    assert_true(ok >= TARGET_OK);
    assert_true(sh->w.fills > 1000);
    assert_true(sh->w.evicts > 1000);

    ec_segment_close(&seg);
    munmap(sh, sizeof(*sh));
    ect_rmtree(dir);
    free(dir);
}

/* ------------------------------------------------------------------ */
/* The item index: the same race, by rows                              */

#define ITEM_KEYS 8192u
#define ITEM_SLOTS 2048u            /* fewer slots than keys: constant reuse */
#define ITEM_BYTES 64u              /* the key and 7 words: 6 copies of h, gen */
#define ITEM_VALUE (ITEM_BYTES - 8)

/* The writer: publish and unpublish random keys; a freed slot is the next
 * one used (LIFO), so a reader that lost the race reads another key's
 * item or one being written. */
static void item_writer(ec_segment *seg, shared *sh)
{
    static uint64_t slot_of[ITEM_KEYS + 1], gen_of[ITEM_KEYS + 1];
    static uint32_t free_slots[ITEM_SLOTS];
    uint32_t nfree = ITEM_SLOTS;
    uint64_t seed = 0x5678, gen = 0, live = 0;

    for (uint32_t i = 0; i < ITEM_SLOTS; i++)
        free_slots[i] = ITEM_SLOTS - 1 - i;
    while (!atomic_load_explicit(&sh->stop, memory_order_relaxed)) {
        uint32_t k = 1 + (uint32_t)(rnd(&seed) % ITEM_KEYS);
        uint64_t key = EC_ITEM_ROW_KEY(3, k);

        if (gen_of[k]) {
            if (ec_item_remove(seg, key, slot_of[k] * ITEM_BYTES) != 0)
                WFAIL("item remove %u: %s", k, ec_last_error());
            free_slots[nfree++] = (uint32_t)slot_of[k];
            gen_of[k] = 0;
            live--;
            sh->w.evicts++;
        } else if (nfree) {
            uint64_t off, *w, h;
            int rc;
            slot_of[k] = free_slots[--nfree];
            off = slot_of[k] * ITEM_BYTES;
            w = (uint64_t *)(void *)(seg->data + off);
            gen++;
            h = enc(3, k, gen);
            w[0] = key;
            for (int i = 1; i < 7; i++)
                w[i] = h;
            w[7] = gen;
            rc = ec_item_insert(seg, key, off);
            if (rc == EC_ENOSPC) { /* both buckets full: not this time */
                free_slots[nfree++] = (uint32_t)slot_of[k];
                continue;
            }
            if (rc != 0)
                WFAIL("item insert %u: %s", k, ec_last_error());
            gen_of[k] = gen;
            live++;
            if (live > sh->w.max_resident)
                sh->w.max_resident = live;
            sh->w.fills++;
        }
    }
    if (ec_item_count(seg) != live)
        WFAIL("item index holds %" PRIu64 " items, writer has %" PRIu64, ec_item_count(seg),
              live);
    sh->w.final_resident = live;
    _exit(0);
}

/* A reader as libembcache's by-rows path reads: look up, copy the value,
 * check the bucket's sequence; every copy that passed is checked. */
static void item_reader(int id, int rofd, shared *sh)
{
    reader_stats *me = &sh->r[id];
    uint64_t seed = 0xfeed00ull + (uint64_t)id * 104729;
    uint64_t target = TARGET_OK / NREADERS + 1;
    ec_segment ro;
    double t0;

    if (ec_segment_map_fd(rofd, &ro) != 0)
        RFAIL("map_fd: %s", ec_last_error());
    close(rofd);
    atomic_fetch_add(&sh->ready, 1);
    t0 = now();
    for (uint64_t iter = 0;; iter++) {
        uint32_t k = 1 + (uint32_t)(rnd(&seed) % ITEM_KEYS);
        uint64_t key = EC_ITEM_ROW_KEY(3, k), v[7], h;
        ec_item_ref ref;
        bool valid, good;

        if ((iter & 1023) == 0) {
            double el = now() - t0;
            if ((me->ok >= target && el >= MIN_SECS) || el >= MAX_SECS)
                break;
        }
        if (!ec_item_lookup(&ro, key, ITEM_VALUE, &ref)) {
            me->misses++;
            continue;
        }
        me->lookups++;
        memcpy(v, ec_item_value(&ro, ref.off), ITEM_VALUE);
        valid = ec_item_still_valid(&ref);
        h = enc(3, k, v[6]);
        good = v[6] != 0;
        for (int i = 0; i < 6; i++)
            good = good && v[i] == h;
        if (valid && good)
            me->ok++;
        else if (valid)
            me->torn++;
        else {
            me->retried++;
            me->wouldbe += !good;
        }
    }
    ec_segment_close(&ro);
    _exit(0);
}

static void test_items_multiprocess(void **state)
{
    char *dir = ect_tmpdir("ec-seqlock");
    shared *sh;
    ec_segment seg;
    pid_t wpid, rpid[NREADERS];
    int status, rstatus[NREADERS], rofd;
    uint64_t ok = 0, torn = 0, retried = 0, wouldbe = 0;
    (void)state;

    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(sh != MAP_FAILED);
    memset(sh, 0, sizeof(*sh));
    /* An item index about as full as a busy daemon's: ~1300 buckets. */
    assert_int_equal(ec_segment_create_geometry(4u << 20, 0, 512, &seg), 0);
    assert_int_equal(ec_segment_seal(&seg), 0);
    assert_true(seg.item_buckets * EC_ITEM_WAYS > ITEM_SLOTS);
    wpid = fork_child();
    if (wpid == 0)
        item_writer(&seg, sh);
    for (int i = 0; i < NREADERS; i++) {
        assert_int_equal(ec_segment_open_readonly(&seg, &rofd), 0);
        rpid[i] = fork_child();
        if (rpid[i] == 0) {
            ec_segment_close(&seg);
            item_reader(i, rofd, sh);
        }
        close(rofd);
    }
    for (int i = 0; i < NREADERS; i++)
        assert_int_equal(waitpid(rpid[i], &rstatus[i], 0), rpid[i]);
    atomic_store(&sh->stop, 1);
    assert_int_equal(waitpid(wpid, &status, 0), wpid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("item writer failed (status 0x%x): %s", status, sh->w.msg);
    for (int i = 0; i < NREADERS; i++) {
        if (!WIFEXITED(rstatus[i]) || WEXITSTATUS(rstatus[i]) != 0)
            fail_msg("item reader %d failed (status 0x%x): %s", i, rstatus[i], sh->r[i].msg);
        ok += sh->r[i].ok;
        torn += sh->r[i].torn;
        retried += sh->r[i].retried;
        wouldbe += sh->r[i].wouldbe;
    }
    printf("item seqlock: %" PRIu64 " publications, %" PRIu64 " removals; ok rows %" PRIu64
           ", torn %" PRIu64 ", retried %" PRIu64 ", torn without the check %" PRIu64 "\n",
           sh->w.fills, sh->w.evicts, ok, torn, retried, wouldbe);
    fflush(stdout);
    assert_int_equal(torn, 0);
    assert_true(ok >= TARGET_OK);
    assert_true(sh->w.fills > 1000 && sh->w.evicts > 1000);
    ec_segment_close(&seg);
    munmap(sh, sizeof(*sh));
    ect_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_gather_by_partitions_under_rewrites, env_teardown),
        cmocka_unit_test_teardown(test_gather_by_rows_under_rewrites, env_teardown),
        cmocka_unit_test(test_seqlock_multiprocess),
        cmocka_unit_test(test_items_multiprocess),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
