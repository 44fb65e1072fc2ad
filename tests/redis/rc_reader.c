/*
 * rc_reader.c - the reader of tests/redis/test_netns_cluster.sh: it writes
 * the model the test publishes, then reads it back nonstop, from the Redis
 * Cluster through our client (core/rcluster.h) or from a daemon
 * (ec_tensor_gather), checking every byte against the content it wrote and
 * counting what went wrong.
 *
 *   rc_reader gen OUT.npy ROWS DIM SEED
 *       a float32 .npy of ROWS x DIM whose element (r, j) is a function of
 *       (SEED, r * DIM + j) only (expect_rows() below), so a reader can
 *       check any row without the file.
 *   rc_reader cluster URL MODEL VERSION ROWS DIM SEED RPP [OPTION]...
 *       GETs the published chunk keys of tensor 0 of MODEL VERSION
 *       (core/publish.h: ec:c:MODEL:VERSION:0:P:K, partition P of RPP rows,
 *       chunk K of at most --chunk bytes) with ec_rcluster_mget in batches
 *       of --batch keys, pass after pass, and compares every value with the
 *       bytes of those rows.
 *   rc_reader rows SOCKET MODEL VERSION TENSOR ROWS DIM SEED [OPTION]...
 *       ec_tensor_gather of every row, --batch rows at a time, pass after
 *       pass, through the daemon on SOCKET.
 *   rc_reader info SOCKET MODEL VERSION TENSOR
 *       prints rows, row_bytes, rows_per_partition and partitions as the
 *       daemon has them.
 *
 * Options: --seconds S (stop after S seconds; default: until SIGTERM or
 * SIGINT, after the pass under way), --passes N (stop after N passes),
 * --batch N, --chunk BYTES (default 1 MiB), --op-timeout MS (cluster:
 * the handle's op_timeout_ms; 0: its default), --victim HOST:PORT
 * (cluster: the keys that master serves at the start are "victim keys";
 * an error on any other key is counted apart, as errors_elsewhere).
 *
 * While it runs it prints a progress line a second; at the end one summary
 * line of key=value pairs (the test parses it):
 *   reads         values read (cluster: keys; rows: rows)
 *   bytes         bytes checked
 *   wrong_bytes   bytes that differ from the expected content, plus the
 *                 difference in length of values of the wrong length
 *   wrong_reads   reads with at least one wrong byte
 *   missing       cluster: keys that did not exist (EC_ENOENT)
 *   errors        reads that failed (cluster: keys with an error status,
 *                 missing included; rows: the rows of failed gathers)
 *   errors_elsewhere  errors on keys not served by --victim at the start
 *   error_passes  passes with at least one error
 *   first_error_ms / last_error_ms  wall-clock (Unix ms) of the first and
 *                 last failed read; 0 when none
 *   longest_streak_ms  the longest time from a failed read to the end of
 *                 the next pass without errors (or to the end of the run)
 *   clean_passes_after_last_error  passes without errors since the last
 *                 failed one (all passes when there was none)
 *   and the client's counters (cluster: moved, ask, retries, refreshes,
 *   connect_failures).
 * Exit status: 0 when it ran to the end (the counts say what happened), 2
 * for bad usage, 1 when it could not start (open, resolve, memory).
 *
 * One process, one thread; run by the test inside a network namespace.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "core/rcluster.h"
#include "embcache.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Rows [first, first + n) of the model: DIM finite float32 each. */
static void expect_rows(uint64_t seed, uint64_t dim, uint64_t first, uint64_t n, float *out)
{
    for (uint64_t i = 0; i < n * dim; i++) {
        uint64_t h = splitmix64(seed * 0x100000001B3ull ^ (first * dim + i));
        out[i] = (float)((int64_t)(h % 2000001) - 1000000) / 1024.0f;
    }
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (!s || !*s || *s == '-')
        return false;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end)
        return false;
    *out = v;
    return true;
}

/* ------------------------------------------------------------------ */
/* gen                                                                 */

static int cmd_gen(int argc, char **argv)
{
    uint64_t rows, dim, seed;
    char hdr[128];
    size_t hl;
    float *buf;
    FILE *f;

    if (argc != 6 || !parse_u64(argv[3], &rows) || !parse_u64(argv[4], &dim) ||
        !parse_u64(argv[5], &seed) || rows == 0 || dim == 0 || dim > (1u << 20)) {
        fprintf(stderr, "usage: rc_reader gen OUT.npy ROWS DIM SEED\n");
        return 2;
    }
    /* .npy 1.0: magic, version, header length, a dict padded with spaces
     * to a multiple of 64 bytes in all, ending in '\n'. */
    hl = (size_t)snprintf(hdr, sizeof(hdr),
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (%" PRIu64
                          ", %" PRIu64 "), }",
                          rows, dim);
    while ((10 + hl + 1) % 64)
        hdr[hl++] = ' ';
    hdr[hl++] = '\n';
    if (!(f = fopen(argv[2], "wb"))) {
        fprintf(stderr, "rc_reader gen: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc((int)(hl & 0xff), f);
    fputc((int)(hl >> 8), f);
    fwrite(hdr, 1, hl, f);
    if (!(buf = malloc(dim * 1024 * sizeof(float)))) {
        fclose(f);
        return 1;
    }
    for (uint64_t r = 0; r < rows; r += 1024) {
        uint64_t n = rows - r < 1024 ? rows - r : 1024;
        expect_rows(seed, dim, r, n, buf);
        fwrite(buf, sizeof(float), n * dim, f);
    }
    free(buf);
    if (fclose(f) != 0) {
        fprintf(stderr, "rc_reader gen: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* counters                                                            */

struct tally {
    uint64_t passes, reads, bytes, wrong_bytes, wrong_reads, missing, errors;
    uint64_t errors_elsewhere, error_passes, first_error_ms, last_error_ms;
    uint64_t streak_start_ms, longest_streak_ms, clean_after;
    bool in_streak;
    char first_msg[EC_ERRMSG_MAX], last_msg[EC_ERRMSG_MAX];
    char else_msg[EC_ERRMSG_MAX]; /* the first error on a key elsewhere */
};

static void note_error(struct tally *t, const char *msg)
{
    uint64_t now = wall_ms();

    t->errors++;
    if (!t->first_error_ms) {
        t->first_error_ms = now;
        snprintf(t->first_msg, sizeof(t->first_msg), "%s", msg ? msg : "");
    }
    t->last_error_ms = now;
    snprintf(t->last_msg, sizeof(t->last_msg), "%s", msg ? msg : "");
    if (!t->in_streak) {
        t->in_streak = true;
        t->streak_start_ms = now;
    }
}

/* Compare a value with what it should be. */
static void check_bytes(struct tally *t, const uint8_t *got, size_t len, const uint8_t *want,
                        size_t want_len)
{
    size_t n = len < want_len ? len : want_len;
    uint64_t bad = len > want_len ? len - want_len : want_len - len;

    t->reads++;
    t->bytes += len;
    if (len == want_len && memcmp(got, want, n) == 0)
        return;
    for (size_t i = 0; i < n; i++)
        bad += got[i] != want[i];
    t->wrong_bytes += bad;
    t->wrong_reads += bad != 0;
}

static void end_pass(struct tally *t, uint64_t errors_before)
{
    t->passes++;
    if (t->errors != errors_before) {
        t->error_passes++;
        t->clean_after = 0;
        return;
    }
    t->clean_after++;
    if (t->in_streak) {
        uint64_t d = wall_ms() - t->streak_start_ms;
        if (d > t->longest_streak_ms)
            t->longest_streak_ms = d;
        t->in_streak = false;
    }
}

static void print_tally(const char *mode, const struct tally *t, double seconds)
{
    uint64_t streak = t->longest_streak_ms;

    if (t->in_streak && wall_ms() - t->streak_start_ms > streak)
        streak = wall_ms() - t->streak_start_ms;
    printf("rc_reader %s: passes=%" PRIu64 " reads=%" PRIu64 " bytes=%" PRIu64
           " seconds=%.1f MBps=%.1f wrong_bytes=%" PRIu64 " wrong_reads=%" PRIu64
           " missing=%" PRIu64 " errors=%" PRIu64 " errors_elsewhere=%" PRIu64
           " error_passes=%" PRIu64 " first_error_ms=%" PRIu64 " last_error_ms=%" PRIu64
           " longest_streak_ms=%" PRIu64 " clean_passes_after_last_error=%" PRIu64,
           mode, t->passes, t->reads, t->bytes, seconds,
           seconds > 0 ? (double)t->bytes / seconds / 1e6 : 0.0, t->wrong_bytes,
           t->wrong_reads, t->missing, t->errors, t->errors_elsewhere, t->error_passes,
           t->first_error_ms, t->last_error_ms, streak, t->clean_after);
}

struct runopts {
    uint64_t seconds, passes, batch, chunk, op_timeout;
    const char *victim;
};

static int parse_opts(int argc, char **argv, int first, struct runopts *o)
{
    for (int i = first; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t *dst = !strcmp(a, "--seconds")      ? &o->seconds
                        : !strcmp(a, "--passes")     ? &o->passes
                        : !strcmp(a, "--batch")      ? &o->batch
                        : !strcmp(a, "--chunk")      ? &o->chunk
                        : !strcmp(a, "--op-timeout") ? &o->op_timeout
                                                     : NULL;
        if (!strcmp(a, "--victim") && v) {
            o->victim = v;
            i++;
            continue;
        }
        if (!dst || !parse_u64(v, dst)) {
            fprintf(stderr, "rc_reader: bad option '%s %s'\n", a, v ? v : "");
            return -1;
        }
        i++;
    }
    if (o->batch == 0 || o->chunk == 0) {
        fprintf(stderr, "rc_reader: --batch and --chunk must be positive\n");
        return -1;
    }
    return 0;
}

static bool done(const struct runopts *o, uint64_t t0, uint64_t passes)
{
    return stop_flag || (o->seconds && mono_ms() - t0 >= o->seconds * 1000) ||
           (o->passes && passes >= o->passes);
}

static void progress(const char *mode, const struct tally *t, uint64_t *next, uint64_t t0)
{
    uint64_t now = mono_ms();

    if (now < *next)
        return;
    *next = now + 1000;
    printf("rc_reader %s: t=%.1fs passes=%" PRIu64 " reads=%" PRIu64 " errors=%" PRIu64
           " wrong_bytes=%" PRIu64 "%s%s\n",
           mode, (double)(now - t0) / 1000.0, t->passes, t->reads, t->errors, t->wrong_bytes,
           t->errors ? " last: " : "", t->errors ? t->last_msg : "");
    fflush(stdout);
}

/* ------------------------------------------------------------------ */
/* cluster                                                             */

struct key {
    char name[160];
    size_t len;
    uint64_t off, n; /* bytes of the tensor */
    bool victim;
};

struct ctx {
    const struct key *k;
    const uint8_t *want;
    struct tally *t;
    const char *mode;
};

static void on_value(void *arg, size_t i, int status, const void *val, size_t len,
                     const char *msg)
{
    struct ctx *c = arg;
    const struct key *k = &c->k[i];

    if (status == 0) {
        check_bytes(c->t, val, len, c->want + k->off, (size_t)k->n);
        return;
    }
    if (status == EC_ENOENT) {
        c->t->missing++;
        note_error(c->t, "key missing");
    } else {
        note_error(c->t, msg ? msg : ec_strerror(status));
    }
    if (!k->victim && !c->t->errors_elsewhere++)
        snprintf(c->t->else_msg, sizeof(c->t->else_msg), "key '%s': %s", k->name,
                 msg ? msg : ec_strerror(status));
}

static int cmd_cluster(int argc, char **argv)
{
    struct runopts o = {.batch = 64, .chunk = 1u << 20};
    uint64_t rows, dim, seed, version, rpp, total, nkeys = 0, victims = 0;
    struct tally t = {0};
    struct key *keys = NULL;
    const char **names = NULL;
    size_t *lens = NULL;
    uint8_t *want = NULL;
    ec_rcluster *rc = NULL;
    ec_rcluster_stats st;
    int r = 1;

    if (argc < 9 || !parse_u64(argv[4], &version) || !parse_u64(argv[5], &rows) ||
        !parse_u64(argv[6], &dim) || !parse_u64(argv[7], &seed) || !parse_u64(argv[8], &rpp) ||
        !rows || !dim || !rpp || parse_opts(argc, argv, 9, &o) < 0) {
        fprintf(stderr, "usage: rc_reader cluster URL MODEL VERSION ROWS DIM SEED RPP "
                        "[--seconds S] [--passes N] [--batch KEYS] [--chunk BYTES] "
                        "[--op-timeout MS] [--victim HOST:PORT]\n");
        return 2;
    }
    total = rows * dim * sizeof(float);
    if (!(want = malloc(total))) {
        fprintf(stderr, "rc_reader: %" PRIu64 " bytes of expected content\n", total);
        return 1;
    }
    expect_rows(seed, dim, 0, rows, (float *)want);
    for (uint64_t p = 0; p * rpp < rows; p++) {
        uint64_t plen = ((rows - p * rpp < rpp) ? rows - p * rpp : rpp) * dim * sizeof(float);
        nkeys += plen / o.chunk + (plen % o.chunk != 0);
    }
    keys = calloc(nkeys, sizeof(*keys));
    names = calloc(nkeys, sizeof(*names));
    lens = calloc(nkeys, sizeof(*lens));
    if (!keys || !names || !lens)
        goto out;
    nkeys = 0;
    for (uint64_t p = 0; p * rpp < rows; p++) {
        uint64_t poff = p * rpp * dim * sizeof(float);
        uint64_t plen = ((rows - p * rpp < rpp) ? rows - p * rpp : rpp) * dim * sizeof(float);
        for (uint64_t k = 0; k * o.chunk < plen; k++, nkeys++) {
            struct key *x = &keys[nkeys];
            x->len = (size_t)snprintf(x->name, sizeof(x->name), "ec:c:%s:%" PRIu64 ":0:%" PRIu64
                                      ":%" PRIu64, argv[3], version, p, k);
            if (x->len >= sizeof(x->name)) {
                fprintf(stderr, "rc_reader: model name too long\n");
                goto out;
            }
            x->off = poff + k * o.chunk;
            x->n = plen - k * o.chunk < o.chunk ? plen - k * o.chunk : o.chunk;
            names[nkeys] = x->name;
            lens[nkeys] = x->len;
        }
    }
    {
        ec_rcluster_opts ro = {.op_timeout_ms = (uint32_t)o.op_timeout};
        if ((r = ec_rcluster_open(argv[2], &ro, &rc))) {
            fprintf(stderr, "rc_reader: open %s: %s\n", argv[2], ec_last_error());
            r = 1;
            goto out;
        }
    }
    for (uint64_t i = 0; i < nkeys; i++) {
        char node[EC_RCLUSTER_HOST_MAX + 8];
        keys[i].victim = !o.victim; /* no victim: no key is "elsewhere" */
        if (o.victim && ec_rcluster_slot_node(rc, ec_rcluster_keyslot(keys[i].name, keys[i].len),
                                              node, sizeof(node)) == 0)
            keys[i].victim = !strcmp(node, o.victim);
        victims += keys[i].victim && o.victim;
    }
    printf("rc_reader cluster: %" PRIu64 " keys, %" PRIu64 " bytes, batch %" PRIu64
           " keys, op_timeout %" PRIu64 " ms; %" PRIu64 " keys on victim %s\n",
           nkeys, total, o.batch, o.op_timeout, victims, o.victim ? o.victim : "(none)");
    fflush(stdout);
    {
        struct ctx c = {.k = keys, .want = want, .t = &t, .mode = "cluster"};
        uint64_t t0 = mono_ms(), next = t0 + 1000;
        while (!done(&o, t0, t.passes)) {
            uint64_t before = t.errors;
            for (uint64_t i = 0; i < nkeys; i += o.batch) {
                size_t n = (size_t)(nkeys - i < o.batch ? nkeys - i : o.batch);
                c.k = keys + i;
                c.want = want;
                (void)ec_rcluster_mget(rc, names + i, lens + i, n, on_value, &c);
                progress("cluster", &t, &next, t0);
            }
            end_pass(&t, before);
        }
        print_tally("cluster", &t, (double)(mono_ms() - t0) / 1000.0);
    }
    ec_rcluster_stats_get(rc, &st);
    printf(" moved=%" PRIu64 " ask=%" PRIu64 " retries=%" PRIu64 " refreshes=%" PRIu64
           " connect_failures=%" PRIu64 "\n",
           st.moved, st.ask, st.retries, st.refreshes, st.connect_failures);
    if (t.errors)
        printf("rc_reader cluster: first error: %s\nrc_reader cluster: last error: %s\n",
               t.first_msg, t.last_msg);
    if (t.errors_elsewhere)
        printf("rc_reader cluster: first error elsewhere: %s\n", t.else_msg);
    r = 0;
out:
    ec_rcluster_close(rc);
    free(keys);
    free(names);
    free(lens);
    free(want);
    return r;
}

/* ------------------------------------------------------------------ */
/* rows                                                                */

static int cmd_rows(int argc, char **argv)
{
    struct runopts o = {.batch = 256, .chunk = 1};
    uint64_t rows, dim, seed, rb;
    struct tally t = {0};
    ec_client *c = NULL;
    ec_tensor *tn = NULL;
    ec_tensor_info info;
    uint8_t *want = NULL, *got = NULL;
    int64_t *ids = NULL;
    int r;

    if (argc < 9 || !parse_u64(argv[6], &rows) || !parse_u64(argv[7], &dim) ||
        !parse_u64(argv[8], &seed) || !rows || !dim || parse_opts(argc, argv, 9, &o) < 0) {
        fprintf(stderr, "usage: rc_reader rows SOCKET MODEL VERSION TENSOR ROWS DIM SEED "
                        "[--seconds S] [--passes N] [--batch ROWS]\n");
        return 2;
    }
    rb = dim * sizeof(float);
    if ((r = ec_client_connect(argv[2], &c)) ||
        (r = ec_tensor_resolve(c, argv[3], argv[4], argv[5], &tn)) ||
        (r = ec_tensor_info_get(tn, &info))) {
        fprintf(stderr, "rc_reader rows: %s %s/%s/%s: %s\n", argv[2], argv[3], argv[4], argv[5],
                ec_last_error());
        r = 1;
        goto out;
    }
    if (info.rows != rows || info.row_bytes != rb || info.dtype != EC_DTYPE_F32) {
        fprintf(stderr, "rc_reader rows: the daemon's tensor has %" PRIu64 " rows of %" PRIu64
                " bytes, dtype %d; expected %" PRIu64 " x %" PRIu64 " float32\n",
                info.rows, info.row_bytes, (int)info.dtype, rows, rb);
        r = 1;
        goto out;
    }
    want = malloc(rows * rb);
    got = malloc(o.batch * rb);
    ids = malloc(o.batch * sizeof(*ids));
    r = 1;
    if (!want || !got || !ids)
        goto out;
    expect_rows(seed, dim, 0, rows, (float *)want);
    printf("rc_reader rows: %" PRIu64 " rows of %" PRIu64 " bytes, %" PRIu64
           " partitions, batch %" PRIu64 "\n",
           rows, rb, info.partitions, o.batch);
    fflush(stdout);
    {
        uint64_t t0 = mono_ms(), next = t0 + 1000;
        while (!done(&o, t0, t.passes)) {
            uint64_t before = t.errors;
            for (uint64_t row = 0; row < rows; row += o.batch) {
                size_t n = (size_t)(rows - row < o.batch ? rows - row : o.batch);
                for (size_t i = 0; i < n; i++)
                    ids[i] = (int64_t)(row + i);
                int g = ec_tensor_gather(tn, ids, n, got, o.batch * rb);
                if (g) {
                    for (size_t i = 0; i < n; i++)
                        note_error(&t, ec_last_error());
                    continue;
                }
                for (size_t i = 0; i < n; i++)
                    check_bytes(&t, got + i * rb, (size_t)rb, want + (row + i) * rb, (size_t)rb);
                progress("rows", &t, &next, t0);
            }
            end_pass(&t, before);
        }
        print_tally("rows", &t, (double)(mono_ms() - t0) / 1000.0);
        printf("\n");
    }
    if (t.errors)
        printf("rc_reader rows: first error: %s\nrc_reader rows: last error: %s\n", t.first_msg,
               t.last_msg);
    r = 0;
out:
    if (tn)
        ec_tensor_release(tn);
    if (c)
        ec_client_close(c);
    free(want);
    free(got);
    free(ids);
    return r;
}

/* info SOCKET MODEL VERSION TENSOR: how the daemon cut the tensor. */
static int cmd_info(int argc, char **argv)
{
    ec_client *c = NULL;
    ec_tensor *tn = NULL;
    ec_tensor_info info;
    int r = 1;

    if (argc != 6) {
        fprintf(stderr, "usage: rc_reader info SOCKET MODEL VERSION TENSOR\n");
        return 2;
    }
    if (ec_client_connect(argv[2], &c) || ec_tensor_resolve(c, argv[3], argv[4], argv[5], &tn) ||
        ec_tensor_info_get(tn, &info)) {
        fprintf(stderr, "rc_reader info: %s\n", ec_last_error());
        goto out;
    }
    printf("rows=%" PRIu64 " row_bytes=%" PRIu64 " rows_per_partition=%" PRIu64
           " partitions=%" PRIu64 "\n",
           info.rows, info.row_bytes, info.rows_per_partition, info.partitions);
    r = 0;
out:
    if (tn)
        ec_tensor_release(tn);
    if (c)
        ec_client_close(c);
    return r;
}

int main(int argc, char **argv)
{
    struct sigaction sa = {.sa_handler = on_signal};

    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && !strcmp(argv[1], "gen"))
        return cmd_gen(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "cluster"))
        return cmd_cluster(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "rows"))
        return cmd_rows(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "info"))
        return cmd_info(argc, argv);
    fprintf(stderr, "usage: rc_reader gen|cluster|rows|info ... (see tests/redis/rc_reader.c)\n");
    return 2;
}
