/*
 * test_wal.c - unit tests of the write-ahead log (core/wal.c): round trips
 * of PUT and DEL records across rotated files, reopening, torn tails cut at
 * every byte of the last record and junk after it, torn new files,
 * corruption anywhere else refused with the files left byte-for-byte as
 * they were, lsn gaps, collection, limits, sync modes, injected write and
 * sync failures, and a writer process killed with SIGKILL at random
 * moments whose acknowledged records must all come back; appends with
 * O_DIRECT (padded blocks) against buffered ones, and killed the same way. Every record's
 * contents derive from its lsn (gen()), so any record can be checked.
 * Works in a temporary directory; the crash test forks.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "core/wal.h"
#include "tests/testutil.h"

#define FHDR 32u  /* file header */
#define RHDR 48u  /* record header */
#define MAXN 512
#define MAXRB 128

struct fixture {
    char *tmp;
    char *dir; /* tmp/wal, created by the log */
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    f->tmp = ect_tmpdir("ec-wal");
    if (asprintf(&f->dir, "%s/wal", f->tmp) < 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    ect_rmtree(f->tmp);
    free(f->tmp);
    free(f->dir);
    free(f);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Records derived from their lsn                                      */

struct grec {
    uint32_t table, n, rb;
    uint8_t op;
    int64_t keys[MAXN];
    unsigned char rows[MAXN * MAXRB];
};

static void gen(uint64_t lsn, struct grec *g)
{
    bool big = lsn % 50 == 7; /* larger than the tests' files */

    g->table = (uint32_t)(lsn % 5);
    g->op = lsn % 4 == 0 ? EC_WAL_DEL : EC_WAL_PUT;
    g->n = big ? 300 : 1 + (uint32_t)(lsn * 7 % 13);
    g->rb = g->op == EC_WAL_DEL ? 0 : big ? 100 : 4 + (uint32_t)(lsn * 3 % 29);
    for (uint32_t i = 0; i < g->n; i++)
        g->keys[i] = (int64_t)(lsn * 1000 + i) * (i % 2 ? -1 : 1);
    for (uint32_t j = 0; j < g->n * g->rb; j++)
        g->rows[j] = (unsigned char)(lsn * 131 + j * 7 + (j >> 8));
}

static uint64_t gen_bytes(uint64_t lsn)
{
    static struct grec g;
    gen(lsn, &g);
    return RHDR + g.n * 8ull + (uint64_t)g.n * g.rb;
}

static void append_gen(ec_wal *w, uint64_t want_lsn)
{
    static struct grec g;
    uint64_t lsn = 0;
    int rc;

    gen(want_lsn, &g);
    rc = ec_wal_append(w, g.table, g.op, g.keys, g.n, g.op == EC_WAL_PUT ? g.rows : NULL, g.rb,
                       &lsn);
    if (rc)
        fail_msg("append of lsn %llu: %s", (unsigned long long)want_lsn, ec_last_error());
    assert_int_equal(lsn, want_lsn);
}

static void append_range(ec_wal *w, uint64_t first, uint64_t last)
{
    for (uint64_t l = first; l <= last; l++)
        append_gen(w, l);
}

struct rctx {
    uint64_t next, count, stop_after;
};

static int check_cb(void *arg, const ec_wal_record *r)
{
    static struct grec g;
    struct rctx *c = arg;

    assert_int_equal(r->lsn, c->next);
    gen(r->lsn, &g);
    assert_int_equal(r->table, g.table);
    assert_int_equal(r->op, g.op);
    assert_int_equal(r->n, g.n);
    assert_int_equal(r->row_bytes, g.rb);
    assert_memory_equal(r->keys, g.keys, g.n * 8);
    if (g.op == EC_WAL_DEL)
        assert_null(r->rows);
    else
        assert_memory_equal(r->rows, g.rows, (size_t)g.n * g.rb);
    c->next++;
    c->count++;
    return c->stop_after && c->count == c->stop_after ? 42 : 0;
}

/* Replay everything and check it is exactly lsns first..last. */
static void replay_expect(ec_wal *w, uint64_t first, uint64_t last)
{
    struct rctx c = {.next = first};
    int rc = ec_wal_replay(w, check_cb, &c);
    if (rc)
        fail_msg("replay: %d %s", rc, ec_last_error());
    assert_int_equal(c.count, last + 1 - first);
    assert_int_equal(c.next, last + 1);
}

static ec_wal *wopen(const char *dir, ec_wal_sync_mode m, uint64_t file_bytes)
{
    ec_wal_config cfg = {.dir = dir, .sync = m, .file_bytes = file_bytes};
    ec_wal *w = NULL;
    int rc = ec_wal_open(&cfg, &w);
    if (rc)
        fail_msg("ec_wal_open %s: %s", dir, ec_last_error());
    assert_non_null(w);
    return w;
}

static int wopen_rc(const char *dir, uint64_t file_bytes)
{
    ec_wal_config cfg = {.dir = dir, .sync = EC_WAL_SYNC_NONE, .file_bytes = file_bytes};
    ec_wal *w = NULL;
    int rc = ec_wal_open(&cfg, &w);
    if (rc == 0)
        ec_wal_close(w);
    else
        assert_null(w);
    return rc;
}

static ec_wal_stats stats(const ec_wal *w)
{
    ec_wal_stats s;
    ec_wal_stats_get(w, &s);
    return s;
}

/* ------------------------------------------------------------------ */
/* Files on disk                                                       */

#define MAXF 256

/* The directory's entries, sorted, with their contents: its log files
 * only, not the sync mark ("synced", checked by test_sync_mark). */
struct snap {
    int n;
    char names[MAXF][256];
    unsigned char *data[MAXF];
    size_t len[MAXF];
};

static int cmp_name(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void snap_take(const char *dir, struct snap *s)
{
    DIR *d = opendir(dir);
    struct dirent *de;

    assert_non_null(d);
    s->n = 0;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.' && strcmp(de->d_name, "synced") != 0) {
            assert_true(s->n < MAXF);
            snprintf(s->names[s->n++], sizeof(s->names[0]), "%s", de->d_name);
        }
    closedir(d);
    qsort(s->names, (size_t)s->n, sizeof(s->names[0]), cmp_name);
    for (int i = 0; i < s->n; i++) {
        char p[4096];
        snprintf(p, sizeof(p), "%s/%s", dir, s->names[i]);
        s->data[i] = ect_read_file(p, &s->len[i]);
    }
}

static void snap_free(struct snap *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->data[i]);
    s->n = 0;
}

/* The directory holds exactly what s recorded, byte for byte. */
static void snap_same(const char *dir, const struct snap *s)
{
    struct snap now;

    snap_take(dir, &now);
    assert_int_equal(now.n, s->n);
    for (int i = 0; i < s->n; i++) {
        assert_string_equal(now.names[i], s->names[i]);
        assert_int_equal(now.len[i], s->len[i]);
        assert_memory_equal(now.data[i], s->data[i], s->len[i]);
    }
    snap_free(&now);
}

static void path_of(const char *dir, const char *name, char *out, size_t len)
{
    if ((size_t)snprintf(out, len, "%s/%s", dir, name) >= len)
        fail_msg("path %s/%s is longer than %zu bytes", dir, name, len);
}

/* Offsets of the records of a file (walking the payload sizes). */
static int rec_offsets(const unsigned char *data, size_t len, uint64_t *offs, int max)
{
    uint64_t off = FHDR;
    int n = 0;

    while (off + RHDR <= len && n < max) {
        uint64_t payload;
        memcpy(&payload, data + off + 32, 8);
        offs[n++] = off;
        off += RHDR + payload;
    }
    return n;
}

static void flip_byte(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    unsigned char b;

    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
    b ^= 0x5a;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
    close(fd);
}

static void truncate_to(const char *path, uint64_t len)
{
    assert_int_equal(truncate(path, (off_t)len), 0);
}

static void append_bytes(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
}

/* ------------------------------------------------------------------ */
/* Round trips                                                         */

static void test_roundtrip_rotation(void **state)
{
    struct fixture *f = *state;
    struct snap s;
    ec_wal *w = wopen(f->dir, EC_WAL_SYNC_NONE, 4096);
    ec_wal_stats st;

    assert_int_equal(ec_wal_last_lsn(w), 0);
    st = stats(w);
    assert_int_equal(st.files, 1);
    assert_int_equal(st.first_lsn, 1);
    append_range(w, 1, 300);
    st = stats(w);
    assert_int_equal(st.appends, 300);
    assert_int_equal(st.last_lsn, 300);
    assert_true(st.files > 10);
    replay_expect(w, 1, 300); /* before a reopen too */
    ec_wal_close(w);

    /* Every file starts with the lsn it is named for; none passes 4096
     * bytes unless it holds one record (the big ones). */
    snap_take(f->dir, &s);
    assert_int_equal(s.n, (int)st.files);
    for (int i = 0; i < s.n; i++) {
        uint64_t first, offs[64];
        int nrec = rec_offsets(s.data[i], s.len[i], offs, 64);
        assert_int_equal(strlen(s.names[i]), 24);
        uint64_t rec_lsn;
        assert_int_equal(sscanf(s.names[i], "wal-%16" SCNx64 ".log", &first), 1);
        assert_true(s.len[i] <= 4096 || nrec == 1);
        assert_true(nrec >= 1);
        memcpy(&rec_lsn, s.data[i] + FHDR + 24, 8);
        assert_int_equal(rec_lsn, first);
        st.bytes -= s.len[i];
    }
    assert_int_equal(st.bytes, 0);
    snap_free(&s);

    w = wopen(f->dir, EC_WAL_SYNC_NONE, 4096);
    st = stats(w);
    assert_int_equal(st.last_lsn, 300);
    assert_int_equal(st.truncated_bytes, 0);
    replay_expect(w, 1, 300);
    assert_int_equal(stats(w).replayed, 300);
    append_range(w, 301, 320);
    ec_wal_close(w);
    w = wopen(f->dir, EC_WAL_SYNC_NONE, 0);
    replay_expect(w, 1, 320);
    ec_wal_close(w);
}

static void test_reopen_continues(void **state)
{
    struct fixture *f = *state;
    ec_wal *w = wopen(f->dir, EC_WAL_SYNC_BATCH, 0);
    struct rctx c = {.next = 1, .stop_after = 3};

    ec_wal_close(w); /* an empty log */
    w = wopen(f->dir, EC_WAL_SYNC_BATCH, 0);
    assert_int_equal(ec_wal_last_lsn(w), 0);
    append_gen(w, 1);
    ec_wal_close(w);
    for (uint64_t l = 2; l <= 6; l++) {
        w = wopen(f->dir, EC_WAL_SYNC_BATCH, 0);
        assert_int_equal(ec_wal_last_lsn(w), l - 1);
        append_gen(w, l);
        ec_wal_close(w);
    }
    w = wopen(f->dir, EC_WAL_SYNC_BATCH, 0);
    assert_int_equal(stats(w).files, 1);
    replay_expect(w, 1, 6);
    /* A callback that stops the replay: its value comes back. */
    assert_int_equal(ec_wal_replay(w, check_cb, &c), 42);
    assert_int_equal(c.count, 3);
    ec_wal_close(w);
}

struct big {
    uint32_t rb, n;
    unsigned char *row;
    int64_t *keys;
    int seen;
};

static int big_cb(void *arg, const ec_wal_record *r)
{
    struct big *b = arg;

    assert_int_equal(r->table, 9);
    if (r->lsn == 1) {
        assert_int_equal(r->op, EC_WAL_PUT);
        assert_int_equal(r->n, 1);
        assert_int_equal(r->keys[0], -7);
        assert_int_equal(r->row_bytes, b->rb);
        assert_memory_equal(r->rows, b->row, b->rb);
    } else {
        assert_int_equal(r->op, EC_WAL_DEL);
        assert_int_equal(r->n, b->n);
        assert_int_equal(r->row_bytes, 0); /* ignored for DEL, stored as 0 */
        assert_null(r->rows);
        assert_memory_equal(r->keys, b->keys, (size_t)b->n * 8);
    }
    b->seen++;
    return 0;
}

/* A row of the largest size, and 1 Mi keys; each larger than a file. */
static void test_big_records(void **state)
{
    struct fixture *f = *state;
    ec_wal *w = wopen(f->dir, EC_WAL_SYNC_NONE, 1 << 20);
    struct big b = {.rb = EC_WAL_MAX_ROW_BYTES, .n = 1 << 20};
    int64_t key = -7;
    uint64_t lsn;

    b.row = malloc(b.rb);
    b.keys = malloc((size_t)b.n * 8);
    for (uint32_t i = 0; i < b.rb; i++)
        b.row[i] = (unsigned char)(i * 13 + (i >> 12));
    for (uint32_t i = 0; i < b.n; i++)
        b.keys[i] = (int64_t)i * 3 - 5;
    assert_int_equal(ec_wal_append(w, 9, EC_WAL_PUT, &key, 1, b.row, b.rb, &lsn), 0);
    assert_int_equal(ec_wal_append(w, 9, EC_WAL_DEL, b.keys, b.n, NULL, 77, &lsn), 0);
    assert_int_equal(lsn, 2);
    assert_int_equal(stats(w).files, 2);
    ec_wal_close(w);
    w = wopen(f->dir, EC_WAL_SYNC_NONE, 1 << 20);
    assert_int_equal(ec_wal_replay(w, big_cb, &b), 0);
    assert_int_equal(b.seen, 2);
    ec_wal_close(w);
    free(b.row);
    free(b.keys);
}

/* ------------------------------------------------------------------ */
/* Torn tails                                                          */

/* The name of the last file, and its path. */
static void last_file(const char *dir, char *path, size_t len)
{
    struct snap s;
    snap_take(dir, &s);
    assert_true(s.n > 0);
    path_of(dir, s.names[s.n - 1], path, len);
    snap_free(&s);
}

/* Cut the last file at every byte inside its last record: each reopen cuts
 * the tail, replays exactly the records before it, and the same append
 * then rewrites the file byte for byte. */
static void tail_every_offset(const char *dir, uint64_t nrec, uint64_t file_bytes)
{
    char path[4096];
    struct stat sb;
    uint64_t before;
    size_t full_len;
    unsigned char *full;
    ec_wal *w = wopen(dir, EC_WAL_SYNC_NONE, file_bytes);

    append_range(w, 1, nrec - 1);
    ec_wal_close(w);
    last_file(dir, path, sizeof(path));
    assert_int_equal(stat(path, &sb), 0);
    w = wopen(dir, EC_WAL_SYNC_NONE, file_bytes);
    append_gen(w, nrec);
    ec_wal_close(w);
    {
        char p2[4096];
        last_file(dir, p2, sizeof(p2));
        /* the last record went into a new file: cut inside that one */
        before = strcmp(p2, path) ? FHDR : (uint64_t)sb.st_size;
        snprintf(path, sizeof(path), "%s", p2);
    }
    full = ect_read_file(path, &full_len);
    assert_int_equal(full_len, before + gen_bytes(nrec));
    for (uint64_t cut = before; cut < full_len;
         cut += cut - before < 400 || full_len - cut <= 400 ? 1 : 53) {
        size_t len;
        unsigned char *now;
        ec_wal_stats st;

        truncate_to(path, cut);
        w = wopen(dir, EC_WAL_SYNC_NONE, file_bytes);
        st = stats(w);
        assert_int_equal(st.truncated_bytes, cut - before);
        assert_int_equal(st.last_lsn, nrec - 1);
        replay_expect(w, 1, nrec - 1);
        append_gen(w, nrec);
        ec_wal_close(w);
        now = ect_read_file(path, &len);
        assert_int_equal(len, full_len);
        assert_memory_equal(now, full, len);
        free(now);
    }
    free(full);
}

static void test_torn_tail_every_offset(void **state)
{
    struct fixture *f = *state;
    tail_every_offset(f->dir, 41, 2048); /* several files; a PUT last */
}

static void test_torn_tail_new_file(void **state)
{
    struct fixture *f = *state;
    /* lsn 57 is big (lsn % 50 == 7): it gets a file of its own. Every
     * offset of its first and last 400 bytes, every 53rd between. */
    tail_every_offset(f->dir, 57, 2048);
}

static void test_torn_tail_del(void **state)
{
    struct fixture *f = *state;
    tail_every_offset(f->dir, 44, 1 << 20); /* one file; a DEL last */
}

/* Junk after the last good record: zeros, random bytes, a copy of a
 * record's first bytes, a whole copy with a bad checksum. */
static void test_torn_tail_junk(void **state)
{
    struct fixture *f = *state;
    char path[4096];
    unsigned char junk[9000], *orig;
    size_t orig_len;
    uint64_t offs[64];
    int nrec;
    static const size_t zero_lens[] = {1, 4, 47, 48, 49, 100, 4096, 9000};
    ec_wal *w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);

    append_range(w, 1, 30);
    ec_wal_close(w);
    last_file(f->dir, path, sizeof(path));
    orig = ect_read_file(path, &orig_len);
    nrec = rec_offsets(orig, orig_len, offs, 64);
    assert_true(nrec >= 2);

    for (int k = 0; k < 12; k++) {
        size_t len;
        ec_wal *v;
        if (k < 8) {
            len = zero_lens[k];
            memset(junk, 0, len);
        } else if (k == 8) {
            len = sizeof(junk);
            srand(7);
            for (size_t i = 0; i < len; i++)
                junk[i] = (unsigned char)rand();
        } else if (k == 9) { /* the start of the last record again */
            len = 60;
            memcpy(junk, orig + offs[nrec - 1], len);
        } else { /* a whole record again: wrong lsn, then a bad checksum */
            len = orig_len - offs[nrec - 1];
            memcpy(junk, orig + offs[nrec - 1], len);
            if (k == 11)
                junk[len - 1] ^= 1;
        }
        append_bytes(path, junk, len);
        if (k == 10) {
            /* a valid record with the wrong lsn is not a torn write */
            assert_int_equal(wopen_rc(f->dir, 2048), EC_ECORRUPT);
            assert_non_null(strstr(ec_last_error(), "lsn"));
            truncate_to(path, orig_len);
            continue;
        }
        v = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
        assert_int_equal(stats(v).truncated_bytes, len);
        replay_expect(v, 1, 30);
        ec_wal_close(v);
        {
            size_t l2;
            unsigned char *now = ect_read_file(path, &l2);
            assert_int_equal(l2, orig_len);
            assert_memory_equal(now, orig, l2);
            free(now);
        }
    }
    /* The last record's checksum does not match (a torn write that kept
     * the length): cut as well, and appends go on. */
    flip_byte(path, orig_len - 1);
    w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
    assert_int_equal(stats(w).truncated_bytes, orig_len - offs[nrec - 1]);
    replay_expect(w, 1, 29);
    append_range(w, 30, 35);
    ec_wal_close(w);
    w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
    replay_expect(w, 1, 35);
    ec_wal_close(w);
    free(orig);
}

/* A crash while a new file was being made: it is shorter than its header
 * (or its header is incomplete). It is removed; nothing else changes. */
static void test_torn_new_file(void **state)
{
    struct fixture *f = *state;
    char path[4096];
    unsigned char *hdr;
    size_t hlen;
    ec_wal *w;

    /* The first file of an empty log, cut at every length below a header. */
    w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
    ec_wal_close(w);
    path_of(f->dir, "wal-0000000000000001.log", path, sizeof(path));
    hdr = ect_read_file(path, &hlen);
    assert_int_equal(hlen, FHDR);
    for (uint64_t cut = 0; cut < FHDR; cut++) {
        truncate_to(path, cut);
        w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
        assert_int_equal(stats(w).truncated_bytes, cut);
        assert_int_equal(ec_wal_last_lsn(w), 0);
        assert_int_equal(stats(w).files, 1);
        ec_wal_close(w);
    }
    /* Behind older files: wal-<next>.log of 0..31 bytes, and of 32 zeros. */
    w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
    append_range(w, 1, 20);
    ec_wal_close(w);
    path_of(f->dir, "wal-0000000000000015.log", path, sizeof(path)); /* 21 */
    for (uint64_t len = 0; len <= FHDR; len++) {
        struct snap s;
        unsigned char z[FHDR] = {0};
        snap_take(f->dir, &s);
        assert_int_equal(ect_write_file(path, len < FHDR ? hdr : z, len), 0);
        w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
        assert_int_equal(stats(w).truncated_bytes, len);
        assert_int_equal(ec_wal_last_lsn(w), 20);
        replay_expect(w, 1, 20);
        ec_wal_close(w);
        snap_same(f->dir, &s);
        snap_free(&s);
    }
    /* Longer than a header, with a bad one: not a crash, corruption. */
    {
        unsigned char z[FHDR + 60] = {0};
        struct snap s;
        assert_int_equal(ect_write_file(path, z, sizeof(z)), 0);
        snap_take(f->dir, &s);
        assert_int_equal(wopen_rc(f->dir, 2048), EC_ECORRUPT);
        assert_non_null(strstr(ec_last_error(), "wal-0000000000000015.log"));
        snap_same(f->dir, &s);
        snap_free(&s);
        unlink(path);
    }
    w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
    append_range(w, 21, 25);
    ec_wal_close(w);
    w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
    replay_expect(w, 1, 25);
    ec_wal_close(w);
    free(hdr);
}

/* ------------------------------------------------------------------ */
/* Corruption                                                          */

/* Open must fail with EC_ECORRUPT naming the file and the offset, and
 * leave the directory as it was. */
static void expect_corrupt(const char *dir, const char *name, long long off)
{
    struct snap s;
    char where[64];

    snap_take(dir, &s);
    assert_int_equal(wopen_rc(dir, 2048), EC_ECORRUPT);
    if (!strstr(ec_last_error(), name))
        fail_msg("message does not name %s: %s", name, ec_last_error());
    if (off >= 0) {
        snprintf(where, sizeof(where), "offset %lld:", off);
        if (!strstr(ec_last_error(), where))
            fail_msg("message does not say '%s': %s", where, ec_last_error());
    }
    snap_same(dir, &s);
    snap_free(&s);
}

static void test_corrupt_older(void **state)
{
    struct fixture *f = *state;
    struct snap s;
    ec_wal *w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);

    append_range(w, 1, 60);
    ec_wal_close(w);
    snap_take(f->dir, &s);
    assert_true(s.n >= 4);

    /* Every byte of the first file (every 7th byte of two more): the
     * header, record headers, keys, rows, the last record of a file. */
    for (int fi = 0; fi < 3; fi++) {
        char path[4096];
        uint64_t offs[64];
        int nrec = rec_offsets(s.data[fi], s.len[fi], offs, 64);
        path_of(f->dir, s.names[fi], path, sizeof(path));
        for (uint64_t b = 0; b < s.len[fi]; b += fi == 0 ? 1 : 7) {
            long long rec_off = b < FHDR ? 0 : -1;
            for (int r = 0; r < nrec; r++)
                if (b >= offs[r])
                    rec_off = (long long)offs[r];
            flip_byte(path, b);
            expect_corrupt(f->dir, s.names[fi], rec_off);
            flip_byte(path, b); /* back */
        }
        /* An older file that lost its tail. */
        truncate_to(path, s.len[fi] - 1);
        expect_corrupt(f->dir, s.names[fi], (long long)offs[nrec - 1]);
        assert_int_equal(ect_write_file(path, s.data[fi], s.len[fi]), 0);
    }
    snap_same(f->dir, &s);
    w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
    replay_expect(w, 1, 60);
    ec_wal_close(w);
    snap_free(&s);
}

/* In the last file, a bad record with a valid one after it. */
static void test_corrupt_last_not_tail(void **state)
{
    struct fixture *f = *state;
    struct snap s;
    char path[4096];
    uint64_t offs[64];
    int nrec, last;
    ec_wal *w = wopen(f->dir, EC_WAL_SYNC_NONE, 1 << 20);

    append_range(w, 1, 12);
    ec_wal_close(w);
    snap_take(f->dir, &s);
    last = s.n - 1;
    nrec = rec_offsets(s.data[last], s.len[last], offs, 64);
    assert_int_equal(nrec, 12);
    path_of(f->dir, s.names[last], path, sizeof(path));
    for (int r = 0; r < nrec - 1; r++) {
        /* its magic, its payload size, a key, its checksum */
        uint64_t at[] = {offs[r], offs[r] + 32, offs[r] + RHDR + 3, offs[r] + 40};
        for (size_t k = 0; k < 4; k++) {
            flip_byte(path, at[k]);
            expect_corrupt(f->dir, s.names[last], (long long)offs[r]);
            assert_non_null(strstr(ec_last_error(), "valid record follows"));
            flip_byte(path, at[k]);
        }
    }
    /* Zeros over the middle of the file: the records after are valid. */
    {
        unsigned char *z = calloc(1, 100);
        int fd = open(path, O_WRONLY);
        assert_int_equal(pwrite(fd, z, 100, (off_t)offs[3] + 10), 100);
        close(fd);
        free(z);
        expect_corrupt(f->dir, s.names[last], (long long)offs[3]);
        assert_int_equal(ect_write_file(path, s.data[last], s.len[last]), 0);
    }
    snap_same(f->dir, &s);
    snap_free(&s);
}

static void test_lsn_gap(void **state)
{
    struct fixture *f = *state;
    struct snap s;
    char path[4096], p2[4096];
    ec_wal *w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);

    append_range(w, 1, 40);
    ec_wal_close(w);
    snap_take(f->dir, &s);
    assert_true(s.n >= 4);

    /* A file missing in the middle. */
    path_of(f->dir, s.names[2], path, sizeof(path));
    assert_int_equal(unlink(path), 0);
    expect_corrupt(f->dir, s.names[3], 0);
    assert_non_null(strstr(ec_last_error(), "lsn gap"));
    assert_int_equal(ect_write_file(path, s.data[2], s.len[2]), 0);
    snap_same(f->dir, &s);

    /* A file renamed: its name and its header disagree. */
    path_of(f->dir, "wal-00000000000000ff.log", p2, sizeof(p2));
    path_of(f->dir, s.names[s.n - 1], path, sizeof(path));
    assert_int_equal(rename(path, p2), 0);
    expect_corrupt(f->dir, "wal-00000000000000ff.log", 0);
    assert_int_equal(rename(p2, path), 0);

    /* The oldest files gone (as ec_wal_gc leaves it): fine. */
    for (int i = 0; i < 2; i++) {
        path_of(f->dir, s.names[i], path, sizeof(path));
        assert_int_equal(unlink(path), 0);
    }
    w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
    {
        uint64_t first;
        assert_int_equal(sscanf(s.names[2], "wal-%16" SCNx64 ".log", &first), 1);
        assert_int_equal(stats(w).first_lsn, first);
        replay_expect(w, first, 40);
    }
    ec_wal_close(w);
    snap_free(&s);

    /* Files that are not the log's are left alone. */
    path_of(f->dir, "notes.txt", path, sizeof(path));
    assert_int_equal(ect_write_file(path, "x", 1), 0);
    path_of(f->dir, "wal-0000000000000000.log", path, sizeof(path));
    assert_int_equal(ect_write_file(path, "x", 1), 0);
    assert_int_equal(wopen_rc(f->dir, 2048), 0);
}

/* ------------------------------------------------------------------ */
/* Collection                                                          */

struct gcctx {
    uint64_t above;     /* needed: lsn > above */
    int only_table;     /* >= 0: only that table's records are needed */
    uint64_t max_seen;
    uint64_t calls;
};

static bool needed_cb(void *arg, uint32_t table, uint64_t lsn)
{
    struct gcctx *g = arg;
    static struct grec r;

    gen(lsn, &r);
    assert_int_equal(table, r.table);
    g->calls++;
    if (lsn > g->max_seen)
        g->max_seen = lsn;
    return lsn > g->above && (g->only_table < 0 || (int)table == g->only_table);
}

static void test_gc(void **state)
{
    struct fixture *f = *state;
    ec_wal *w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
    struct gcctx g = {.only_table = -1};
    struct snap s;
    uint64_t firsts[MAXF];
    uint32_t removed = 99;
    ec_wal_stats st;

    append_range(w, 1, 100);
    snap_take(f->dir, &s);
    for (int i = 0; i < s.n; i++)
        assert_int_equal(sscanf(s.names[i], "wal-%16" SCNx64 ".log", &firsts[i]), 1);

    /* Everything needed: nothing goes; the first record stops it. */
    assert_int_equal(ec_wal_gc(w, needed_cb, &g, &removed), 0);
    assert_int_equal(removed, 0);
    assert_int_equal(g.calls, 1);
    snap_same(f->dir, &s);

    /* Needed from the first record of file 3: files 0..2 go. */
    g = (struct gcctx){.above = firsts[3] - 1, .only_table = -1};
    assert_int_equal(ec_wal_gc(w, needed_cb, &g, &removed), 0);
    assert_int_equal(removed, 3);
    st = stats(w);
    assert_int_equal(st.files, (uint64_t)s.n - 3);
    assert_int_equal(st.first_lsn, firsts[3]);
    assert_int_equal(st.removed_files, 3);
    replay_expect(w, firsts[3], 100);

    /* A needed record in the oldest file keeps every file after it. */
    g = (struct gcctx){.above = 0, .only_table = (int)(firsts[3] % 5)}; /* its table */
    assert_int_equal(ec_wal_gc(w, needed_cb, &g, &removed), 0);
    assert_int_equal(removed, 0);

    /* Nothing needed: all but the current file go; the current file's
     * records are never asked about. */
    g = (struct gcctx){.above = UINT64_MAX, .only_table = -1};
    assert_int_equal(ec_wal_gc(w, needed_cb, &g, &removed), 0);
    assert_int_equal(removed, (uint32_t)s.n - 4);
    assert_int_equal(g.max_seen, firsts[s.n - 1] - 1);
    st = stats(w);
    assert_int_equal(st.files, 1);
    assert_int_equal(st.first_lsn, firsts[s.n - 1]);
    assert_int_equal(st.last_lsn, 100);
    assert_int_equal(ec_wal_gc(w, needed_cb, &g, NULL), 0); /* one file: nothing to do */
    append_range(w, 101, 110);
    ec_wal_close(w);
    w = wopen(f->dir, EC_WAL_SYNC_NONE, 2048);
    assert_int_equal(stats(w).first_lsn, firsts[s.n - 1]);
    replay_expect(w, firsts[s.n - 1], 110);
    assert_int_equal(ec_wal_gc(w, NULL, NULL, NULL), EC_EINVAL);
    ec_wal_close(w);
    snap_free(&s);
}

/* ------------------------------------------------------------------ */
/* Limits, modes, faults                                               */

static void test_limits(void **state)
{
    struct fixture *f = *state;
    ec_wal *w = wopen(f->dir, EC_WAL_SYNC_NONE, 0);
    int64_t key = 1;
    unsigned char row[8] = {0};
    uint64_t lsn = 77, bytes = stats(w).bytes;
    ec_wal_config cfg = {.dir = f->dir, .sync = (ec_wal_sync_mode)3};
    ec_wal *x = NULL;
    char path[4096];

    assert_int_equal(ec_wal_append(w, 0, EC_WAL_PUT, &key, 0, row, 8, &lsn), EC_EINVAL);
    assert_int_equal(ec_wal_append(w, 0, EC_WAL_PUT, NULL, 1, row, 8, &lsn), EC_EINVAL);
    assert_int_equal(ec_wal_append(w, 0, EC_WAL_PUT, &key, 1, NULL, 8, &lsn), EC_EINVAL);
    assert_int_equal(ec_wal_append(w, 0, EC_WAL_PUT, &key, 1, row, 0, &lsn), EC_EINVAL);
    assert_int_equal(ec_wal_append(w, 0, 3, &key, 1, row, 8, &lsn), EC_EINVAL);
    /* Refused before anything is read: the pointers need not be that big. */
    assert_int_equal(ec_wal_append(w, 0, EC_WAL_DEL, &key, EC_WAL_MAX_KEYS + 1, NULL, 0, &lsn),
                     EC_ETOOBIG);
    assert_int_equal(ec_wal_append(w, 0, EC_WAL_PUT, &key, 1, row, EC_WAL_MAX_ROW_BYTES + 1,
                                   &lsn), EC_ETOOBIG);
    assert_int_equal(ec_wal_append(w, 0, EC_WAL_PUT, &key, EC_WAL_MAX_KEYS, row, 64, &lsn),
                     EC_ETOOBIG); /* 16 Mi keys of 72 bytes: more than 1 GiB */
    assert_non_null(strstr(ec_last_error(), "split"));
    assert_int_equal(lsn, 77);
    assert_int_equal(ec_wal_last_lsn(w), 0);
    assert_int_equal(stats(w).bytes, bytes);
    assert_int_equal(stats(w).appends, 0);
    ec_wal_close(w);

    assert_int_equal(ec_wal_open(&cfg, &x), EC_EINVAL);
    assert_null(x);
    cfg.sync = EC_WAL_SYNC_BATCH;
    assert_int_equal(ec_wal_open(&cfg, NULL), EC_EINVAL);
    cfg.dir = NULL;
    assert_int_equal(ec_wal_open(&cfg, &x), EC_EINVAL);
    path_of(f->tmp, "no/such/dir", path, sizeof(path));
    cfg.dir = path;
    assert_int_equal(ec_wal_open(&cfg, &x), EC_EIO);
    assert_non_null(strstr(ec_last_error(), path));
    path_of(f->tmp, "file", path, sizeof(path));
    assert_int_equal(ect_write_file(path, "x", 1), 0);
    assert_int_equal(ec_wal_open(&cfg, &x), EC_EIO);
    assert_null(x);
    ec_wal_close(NULL);
    {
        struct stat sb;
        assert_int_equal(stat(f->dir, &sb), 0);
        assert_int_equal(sb.st_mode & 0777, 0700);
    }
}

static void test_sync_modes(void **state)
{
    struct fixture *f = *state;
    ec_wal *w;
    ec_wal_stats st;

    w = wopen(f->dir, EC_WAL_SYNC_BATCH, 1 << 20);
    append_range(w, 1, 10);
    assert_int_equal(stats(w).syncs, 10);
    assert_int_equal(ec_wal_sync(w), 0); /* nothing pending */
    assert_int_equal(stats(w).syncs, 10);
    ec_wal_close(w);

    w = wopen(f->dir, EC_WAL_SYNC_INTERVAL, 1 << 20);
    assert_int_equal(ec_wal_sync(w), 0);
    assert_int_equal(stats(w).syncs, 0);
    append_range(w, 11, 20);
    assert_int_equal(stats(w).syncs, 0);
    assert_int_equal(ec_wal_sync(w), 0);
    assert_int_equal(stats(w).syncs, 1);
    assert_int_equal(ec_wal_sync(w), 0);
    assert_int_equal(stats(w).syncs, 1);
    append_gen(w, 21);
    assert_int_equal(ec_wal_sync(w), 0);
    assert_int_equal(stats(w).syncs, 2);
    ec_wal_close(w);

    w = wopen(f->dir, EC_WAL_SYNC_NONE, 1 << 20);
    append_range(w, 22, 30);
    assert_int_equal(ec_wal_sync(w), 0);
    assert_int_equal(stats(w).syncs, 0);
    ec_wal_close(w);

    /* A new file syncs the one it follows, in every mode. */
    {
        char dir2[4096];
        path_of(f->tmp, "wal2", dir2, sizeof(dir2));
        w = wopen(dir2, EC_WAL_SYNC_NONE, 2048);
        append_range(w, 1, 60);
        st = stats(w);
        assert_true(st.files > 2);
        assert_int_equal(st.syncs, st.files - 1);
        replay_expect(w, 1, 60);
        ec_wal_close(w);
    }
}

static void test_fault_write(void **state)
{
    struct fixture *f = *state;
    char path[4096];
    struct stat sb;
    ec_wal *w = wopen(f->dir, EC_WAL_SYNC_BATCH, 1 << 20);
    static struct grec g;
    uint64_t lsn;

    append_range(w, 1, 5);
    last_file(f->dir, path, sizeof(path));
    gen(6, &g);
    ec_wal_inject(w, EC_WAL_FAULT_EIO, 1);
    assert_int_equal(ec_wal_append(w, g.table, g.op, g.keys, g.n, g.rows, g.rb, &lsn), EC_EIO);
    assert_non_null(strstr(ec_last_error(), "Input/output error"));
    assert_non_null(strstr(ec_last_error(), "as it was"));
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal((uint64_t)sb.st_size, stats(w).bytes);
    ec_wal_inject(w, EC_WAL_FAULT_ENOSPC, 1);
    assert_int_equal(ec_wal_append(w, g.table, g.op, g.keys, g.n, g.rows, g.rb, &lsn), EC_ENOSPC);
    assert_int_equal(ec_wal_last_lsn(w), 5);
    /* Every 3rd write fails. */
    ec_wal_inject(w, EC_WAL_FAULT_EIO, 3);
    append_range(w, 6, 7);
    assert_int_equal(ec_wal_append(w, 0, EC_WAL_DEL, g.keys, 1, NULL, 0, &lsn), EC_EIO);
    append_range(w, 8, 9);
    ec_wal_inject(w, EC_WAL_FAULT_NONE, 0);
    append_gen(w, 10);
    ec_wal_close(w);
    w = wopen(f->dir, EC_WAL_SYNC_BATCH, 1 << 20);
    assert_int_equal(stats(w).truncated_bytes, 0);
    replay_expect(w, 1, 10);
    ec_wal_close(w);

    /* A failure while a new file is made: no file is left, and the next
     * append makes it. */
    w = wopen(f->dir, EC_WAL_SYNC_BATCH, 256);
    {
        struct snap s;
        snap_take(f->dir, &s);
        gen(11, &g);
        for (enum ec_wal_fault k = EC_WAL_FAULT_EIO; k <= EC_WAL_FAULT_SYNC; k++) {
            ec_wal_inject(w, k, 1);
            assert_true(ec_wal_append(w, g.table, g.op, g.keys, g.n, g.rows, g.rb, &lsn) < 0);
            assert_non_null(strstr(ec_last_error(), "removed again"));
            snap_same(f->dir, &s);
        }
        snap_free(&s);
    }
    ec_wal_inject(w, EC_WAL_FAULT_NONE, 0);
    append_range(w, 11, 12);
    assert_int_equal(stats(w).files, 3);
    ec_wal_close(w);
    w = wopen(f->dir, EC_WAL_SYNC_BATCH, 256);
    replay_expect(w, 1, 12);
    ec_wal_close(w);
}

static void test_fault_sync(void **state)
{
    struct fixture *f = *state;
    ec_wal *w = wopen(f->dir, EC_WAL_SYNC_BATCH, 1 << 20);
    static struct grec g;
    uint64_t lsn;

    append_range(w, 1, 3);
    gen(4, &g);
    ec_wal_inject(w, EC_WAL_FAULT_SYNC, 1);
    assert_int_equal(ec_wal_append(w, g.table, g.op, g.keys, g.n, g.rows, g.rb, &lsn), EC_EIO);
    assert_non_null(strstr(ec_last_error(), "fdatasync"));
    ec_wal_inject(w, EC_WAL_FAULT_NONE, 0);
    /* Broken until reopened. */
    assert_int_equal(ec_wal_append(w, g.table, g.op, g.keys, g.n, g.rows, g.rb, &lsn), EC_EIO);
    assert_non_null(strstr(ec_last_error(), "opened again"));
    assert_int_equal(ec_wal_sync(w), EC_EIO);
    assert_int_equal(ec_wal_last_lsn(w), 3);
    replay_expect(w, 1, 3); /* reads still work */
    ec_wal_close(w);
    w = wopen(f->dir, EC_WAL_SYNC_INTERVAL, 1 << 20);
    replay_expect(w, 1, 3); /* the failed record was cut back */
    append_range(w, 4, 6);
    ec_wal_inject(w, EC_WAL_FAULT_SYNC, 1);
    assert_int_equal(ec_wal_sync(w), EC_EIO);
    ec_wal_inject(w, EC_WAL_FAULT_NONE, 0);
    assert_int_equal(ec_wal_append(w, g.table, g.op, g.keys, g.n, g.rows, g.rb, &lsn), EC_EIO);
    ec_wal_close(w);
    w = wopen(f->dir, EC_WAL_SYNC_INTERVAL, 1 << 20);
    replay_expect(w, 1, 6); /* written, in the page cache: still there */
    ec_wal_close(w);
}

/* ------------------------------------------------------------------ */
/* kill -9                                                             */

static bool crash_direct; /* the crash test's writer appends with O_DIRECT */

/* Append forever, reporting each acknowledged lsn on fd. */
static void crash_child(const char *dir, ec_wal_sync_mode mode, int fd)
{
    ec_wal_config cfg = {.dir = dir, .sync = mode, .file_bytes = 4096, .direct = crash_direct};
    static struct grec g;
    ec_wal *w;

    if (ec_wal_open(&cfg, &w) < 0) {
        fprintf(stderr, "child: ec_wal_open: %s\n", ec_last_error());
        _exit(2);
    }
    for (;;) {
        uint64_t lsn = ec_wal_last_lsn(w) + 1, got;
        gen(lsn, &g);
        if (ec_wal_append(w, g.table, g.op, g.keys, g.n, g.rows, g.rb, &got) < 0 || got != lsn) {
            fprintf(stderr, "child: append %llu: %s\n", (unsigned long long)lsn, ec_last_error());
            _exit(3);
        }
        if (write(fd, &got, sizeof(got)) != (ssize_t)sizeof(got))
            _exit(4);
    }
}

/* A writer killed at random moments, cycles times: every record it was
 * told was appended comes back, byte for byte, at most one more, and the
 * next writer continues the lsns. In every sync mode: a crash of the
 * process (not of the machine) loses nothing that was acknowledged. */
static void crash_cycles(const char *dir, ec_wal_sync_mode mode, int cycles, int max_us)
{
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    uint64_t acked = 0, torn_cuts = 0;

    print_message("crash test (sync mode %d) seed %u\n", (int)mode, seed);
    srand(seed);
    for (int c = 0; c < cycles; c++) {
        int pfd[2], status;
        uint64_t v, max = acked;
        ec_wal_stats st;
        ec_wal *w;
        pid_t pid;

        assert_int_equal(pipe(pfd), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(pfd[0]);
            crash_child(dir, mode, pfd[1]);
        }
        close(pfd[1]);
        /* The random moment is among the appends, not in the fork and the
         * open (a loaded machine, or a sanitizer, can make those outlast
         * max_us): the first acknowledgement comes before it. */
        if (read(pfd[0], &v, sizeof(v)) != (ssize_t)sizeof(v))
            fail_msg("the writer of cycle %d acknowledged nothing before it ended", c);
        assert_int_equal(v, max + 1);
        max = v;
        usleep((useconds_t)(1000 + rand() % max_us));
        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status))
            fail_msg("the writer exited by itself (status %d) in cycle %d", status, c);
        while (read(pfd[0], &v, sizeof(v)) == (ssize_t)sizeof(v)) {
            assert_int_equal(v, max + 1); /* acknowledged in order */
            max = v;
        }
        close(pfd[0]);
        acked = max;

        /* Every acknowledged record, exactly; at most one more (appended,
         * not yet reported). */
        w = wopen(dir, mode, 4096);
        st = stats(w);
        torn_cuts += st.truncated_bytes > 0;
        assert_true(st.last_lsn >= acked);
        assert_true(st.last_lsn <= acked + 1);
        replay_expect(w, 1, st.last_lsn);
        acked = st.last_lsn; /* the next child continues from here */
        ec_wal_close(w);
    }
    print_message("crash test: %llu records in %d kills, %llu torn tails cut\n",
                  (unsigned long long)acked, cycles, (unsigned long long)torn_cuts);
}

static void test_crash_kill9(void **state)
{
    struct fixture *f = *state;
    crash_cycles(f->dir, EC_WAL_SYNC_BATCH, 25, 60000);
}

/* Appends that only write: the writer is fast, the pipe (8192 lsns) stops it. */
static void test_crash_kill9_nosync(void **state)
{
    struct fixture *f = *state;
    crash_cycles(f->dir, EC_WAL_SYNC_NONE, 20, 8000);
}


/* The sync mark (wal.c invariant 7): after a machine crash in INTERVAL or
 * NONE mode, damage past the last sync is cut, valid-looking records after
 * it included; damage at or before it is corruption; BATCH mode keeps no
 * mark; a damaged mark is ignored (corruption stays corruption). */
static void mark_setup(const char *dir, char *path, size_t plen, uint64_t *offs)
{
    struct snap s;
    ec_wal *w = wopen(dir, EC_WAL_SYNC_INTERVAL, 1 << 20);

    append_range(w, 1, 10);
    assert_int_equal(ec_wal_sync(w), 0); /* the mark: lsn 10 */
    append_range(w, 11, 20);             /* written, never synced */
    ec_wal_close(w);
    snap_take(dir, &s);
    assert_int_equal(s.n, 1);
    assert_int_equal(rec_offsets(s.data[0], s.len[0], offs, 64), 20);
    path_of(dir, s.names[0], path, plen);
    snap_free(&s);
}

static void zero_at(const char *path, uint64_t off, size_t len)
{
    unsigned char z[256] = {0};
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0 && len <= sizeof(z));
    assert_int_equal(pwrite(fd, z, len, (off_t)off), (ssize_t)len);
    close(fd);
}

static void test_sync_mark(void **state)
{
    struct fixture *f = *state;
    char path[4096], mark[4096];
    uint64_t offs[64];
    struct stat sb;
    ec_wal *w;

    snprintf(mark, sizeof(mark), "%s/synced", f->dir);
    /* Record 12 lost (zeros), 13..20 intact: cut at 12. */
    mark_setup(f->dir, path, sizeof(path), offs);
    assert_int_equal(stat(mark, &sb), 0);
    zero_at(path, offs[11] + 8, 100);
    w = wopen(f->dir, EC_WAL_SYNC_INTERVAL, 1 << 20);
    assert_int_equal(stats(w).last_lsn, 11);
    assert_true(stats(w).truncated_bytes > 0);
    replay_expect(w, 1, 11);
    append_range(w, 12, 14); /* and it goes on */
    ec_wal_close(w);
    w = wopen(f->dir, EC_WAL_SYNC_NONE, 1 << 20);
    replay_expect(w, 1, 14);
    ec_wal_close(w);
    ect_rmtree(f->dir);

    /* Record 5, synced, damaged: corruption, nothing changed. */
    mark_setup(f->dir, path, sizeof(path), offs);
    zero_at(path, offs[4] + 8, 100);
    expect_corrupt(f->dir, "wal-", (long long)offs[4]);
    assert_non_null(strstr(ec_last_error(), "was synced"));
    /* A torn tail inside a synced record: corruption too. */
    ect_rmtree(f->dir);
    mark_setup(f->dir, path, sizeof(path), offs);
    truncate_to(path, offs[7] + 20);
    expect_corrupt(f->dir, "wal-", (long long)offs[7]);
    assert_non_null(strstr(ec_last_error(), "was synced"));
    ect_rmtree(f->dir);

    /* A damaged mark is no mark: damage past it is corruption again. */
    mark_setup(f->dir, path, sizeof(path), offs);
    flip_byte(mark, 9);
    zero_at(path, offs[11] + 8, 100);
    expect_corrupt(f->dir, "wal-", (long long)offs[11]);
    assert_non_null(strstr(ec_last_error(), "valid record follows"));
    ect_rmtree(f->dir);

    /* BATCH mode removes the mark; its damage in the middle is corruption. */
    mark_setup(f->dir, path, sizeof(path), offs);
    w = wopen(f->dir, EC_WAL_SYNC_BATCH, 1 << 20);
    ec_wal_close(w);
    assert_int_equal(stat(mark, &sb), -1);
    zero_at(path, offs[11] + 8, 100);
    expect_corrupt(f->dir, "wal-", (long long)offs[11]);
    assert_non_null(strstr(ec_last_error(), "valid record follows"));
}

/* ------------------------------------------------------------------ */
/* Direct appends (O_DIRECT, whole blocks padded with zeros)           */

static ec_wal *wopen_direct(const char *dir, ec_wal_sync_mode m, uint64_t file_bytes)
{
    ec_wal_config cfg = {.dir = dir, .sync = m, .file_bytes = file_bytes, .direct = true};
    ec_wal *w = NULL;
    if (ec_wal_open(&cfg, &w))
        fail_msg("ec_wal_open %s: %s", dir, ec_last_error());
    return w;
}

/* Does the file system of dir take O_DIRECT? (tmpfs does not.) */
static bool direct_works(const char *dir)
{
    char p[4096];
    int fd;

    snprintf(p, sizeof(p), "%s/direct-probe", dir);
    fd = open(p, O_RDWR | O_CREAT | O_DIRECT, 0600);
    if (fd >= 0)
        close(fd);
    unlink(p);
    return fd >= 0;
}

/* The same records appended buffered and direct: every direct file is the
 * buffered one plus zeros to a 4 KiB boundary; reopening takes the zeros
 * as the end (no torn tail), appends go on across reopen in either mode,
 * and a torn direct append is cut like a buffered one. */
static void test_direct_appends(void **state)
{
    struct fixture *f = *state;
    char dir2[4096], path[4096];
    struct snap a, b;
    ec_wal *w;
    ec_wal_stats st;
    uint64_t offs[64];

    if (!direct_works(f->tmp))
        skip(); /* proved: this file system refuses O_DIRECT */
    snprintf(dir2, sizeof(dir2), "%s/wal-direct", f->tmp);
    w = wopen(f->dir, EC_WAL_SYNC_BATCH, 8192);
    append_range(w, 1, 200);
    ec_wal_close(w);
    w = wopen_direct(dir2, EC_WAL_SYNC_BATCH, 8192);
    append_range(w, 1, 200);
    st = stats(w);
    assert_int_equal(st.direct, 1);
    assert_int_equal(st.direct_appends, 200);
    ec_wal_close(w);
    snap_take(f->dir, &a);
    snap_take(dir2, &b);
    assert_int_equal(a.n, b.n);
    for (int i = 0; i < a.n; i++) {
        assert_string_equal(a.names[i], b.names[i]);
        assert_int_equal(b.len[i] % 4096, 0);
        assert_true(b.len[i] >= a.len[i] && b.len[i] - a.len[i] < 4096);
        assert_memory_equal(a.data[i], b.data[i], a.len[i]);
        for (size_t k = a.len[i]; k < b.len[i]; k++)
            assert_int_equal(b.data[i][k], 0);
    }
    snap_free(&a);
    snap_free(&b);

    /* Reopen direct, then buffered, then direct: the padding is not a torn
     * tail, and appends continue over it. */
    w = wopen_direct(dir2, EC_WAL_SYNC_BATCH, 8192);
    assert_int_equal(stats(w).truncated_bytes, 0);
    replay_expect(w, 1, 200);
    append_range(w, 201, 220);
    ec_wal_close(w);
    w = wopen(dir2, EC_WAL_SYNC_NONE, 8192);
    assert_int_equal(stats(w).truncated_bytes, 0);
    append_range(w, 221, 230);
    ec_wal_close(w);
    w = wopen_direct(dir2, EC_WAL_SYNC_BATCH, 8192);
    assert_int_equal(stats(w).truncated_bytes, 0);
    append_range(w, 231, 240);
    replay_expect(w, 1, 240);
    ec_wal_close(w);

    /* A direct append torn inside its record: cut, the rest replays, the
     * append is made again. */
    last_file(dir2, path, sizeof(path));
    {
        size_t len;
        unsigned char *data = ect_read_file(path, &len);
        int n = rec_offsets(data, len, offs, 64);
        uint64_t last;
        uint32_t magic = 0;
        /* rec_offsets walks on into the zeros of the padding: stop at the
         * first offset without a record's magic. */
        for (int k = 0; k < n; k++) {
            memcpy(&magic, data + offs[k], sizeof(magic));
            if (magic != 0x52574345u) {
                n = k;
                break;
            }
        }
        last = offs[n - 1];
        free(data);
        assert_true(n >= 2);
        truncate_to(path, last + 50);
        w = wopen_direct(dir2, EC_WAL_SYNC_BATCH, 8192);
        assert_int_equal(stats(w).truncated_bytes, 50);
        replay_expect(w, 1, 239);
        append_gen(w, 240);
        ec_wal_close(w);
    }
    /* An injected write failure leaves the file at its records' end. */
    w = wopen_direct(dir2, EC_WAL_SYNC_BATCH, 1 << 20);
    {
        static struct grec g;
        struct stat sb;
        uint64_t lsn;
        gen(241, &g);
        ec_wal_inject(w, EC_WAL_FAULT_EIO, 1);
        assert_int_equal(ec_wal_append(w, g.table, g.op, g.keys, g.n, g.rows, g.rb, &lsn),
                         EC_EIO);
        ec_wal_inject(w, EC_WAL_FAULT_NONE, 0);
        last_file(dir2, path, sizeof(path));
        assert_int_equal(stat(path, &sb), 0);
        assert_int_equal(ec_wal_last_lsn(w), 240);
        append_range(w, 241, 250);
        assert_int_equal(stats(w).direct, 1);
    }
    ec_wal_close(w);
    w = wopen(dir2, EC_WAL_SYNC_BATCH, 1 << 20);
    assert_int_equal(stats(w).truncated_bytes, 0);
    replay_expect(w, 1, 250);
    ec_wal_close(w);
}

/* kill -9 of a writer appending with O_DIRECT and fdatasync per append. */
static void test_crash_kill9_direct(void **state)
{
    struct fixture *f = *state;
    if (!direct_works(f->tmp))
        skip();
    crash_direct = true;
    crash_cycles(f->dir, EC_WAL_SYNC_BATCH, 20, 60000);
    crash_direct = false;
}

int main(void)
{
    /* Every torn tail cut is a warning; these tests cut hundreds. */
    ec_log_init("test_wal", EC_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_continues, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_every_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_new_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_del, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_junk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_new_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_older, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_last_not_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lsn_gap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fault_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fault_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_kill9, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_kill9_nosync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_mark, setup, teardown),
        cmocka_unit_test_setup_teardown(test_direct_appends, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_kill9_direct, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
