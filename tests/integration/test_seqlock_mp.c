/*
 * test_seqlock_mp.c - the multi-process seqlock test: one writer process and
 * several reader processes on one real segment, readers mapping it
 * read-only exactly as clients do (ec_segment_open_readonly +
 * ec_segment_map_fd), with no lock anywhere.
 *
 * The writer (the daemon's role) loops: pick a partition; if it is resident,
 * evict it (ec_index_remove, then ec_extent_release); otherwise allocate an
 * extent (first fit, so freed extents are reused at once), fill every 64-byte
 * row with words derived from (tensor, row, fill generation) and publish it
 * (ec_index_insert). Readers look partitions up, copy a few rows, check
 * ec_index_still_valid(), and verify every copied row: seven words equal to
 * enc(tensor, row, gen) and an eighth equal to gen.
 *
 *   ok       copy passed the check and is consistent
 *   torn     copy passed the check but is inconsistent  -> must be 0
 *   retried  the check failed (the reader would copy again)
 *   wouldbe  the check failed and the copy was indeed inconsistent: what a
 *            reader without the seqlock would have returned (timing-dependent,
 *            printed, not asserted)
 *
 * test_items_multiprocess does the same for the item index (shm/items.h):
 * the writer publishes and unpublishes items, reusing freed slots at once;
 * readers look items up, copy their values and check the bucket's sequence.
 *
 * Counters travel back through a shared anonymous mapping; each process
 * writes only its own slot and the parent reads them after waitpid().
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "shm/extent.h"
#include "shm/index.h"
#include "shm/items.h"
#include "shm/segment.h"
#include "tests/testutil.h"

#define SEG_BYTES (64ull << 20)
#define NREADERS 2
#define NTENSORS 4
#define PARTS 256                   /* partitions per tensor */
#define NKEYS (NTENSORS * PARTS)
#define ROW_BYTES 64
#define BATCH 8                     /* rows copied per lookup */
#define TARGET_OK 1000000ull        /* successful row reads, all readers together */
#define MIN_SECS 2.0
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

static pid_t spawn(void)
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

    wpid = spawn();
    if (wpid == 0)
        writer(&seg, sh);
    for (int i = 0; i < NREADERS; i++) {
        /* Each reader gets its own read-only descriptor, as a client does,
         * and drops the daemon's read-write mapping it inherited. */
        assert_int_equal(ec_segment_open_readonly(&seg, &rofd), 0);
        rpid[i] = spawn();
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
    wpid = spawn();
    if (wpid == 0)
        item_writer(&seg, sh);
    for (int i = 0; i < NREADERS; i++) {
        assert_int_equal(ec_segment_open_readonly(&seg, &rofd), 0);
        rpid[i] = spawn();
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
        cmocka_unit_test(test_seqlock_multiprocess),
        cmocka_unit_test(test_items_multiprocess),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
