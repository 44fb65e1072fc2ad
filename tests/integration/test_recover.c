/*
 * test_recover.c - `embcache recover`: a catalog rebuilt from the partition
 * files alone (core/recover.c), end to end with the real embcached and CLI.
 *
 * Each test imports three versions of two models (.npy tables and a
 * .safetensors file of three dtypes, with rounds and params) into a real
 * daemon, stops it, damages the catalog (truncated to 0 bytes; garbage),
 * checks that embcached refuses to start and names the command, runs
 * `embcache recover` (a fork+exec of the real binary) and starts the
 * daemon again: every row of every tensor must read back identical, and
 * the versions with their rounds, params and created times must be what
 * they were. Also: recover refuses while a daemon holds the data
 * directory, --dry-run changes nothing, a partition file with a flipped
 * data byte is reported, left out with its whole version, and kept on disk
 * (renamed NAME.ecp.skipped, bytes unchanged), and the damaged catalog is
 * kept aside, bytes unchanged; a version missing a file, a tensor claimed
 * by two files and a file without an origin record are left out the same
 * way. Single-threaded test process; the daemon
 * and the CLI are its children.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/partfile.h"
#include "itest.h"
#include "testutil.h"

#define ROWS 3000
#define COLS 16
#define PART (16 * 1024)

/* The .safetensors tensors of model st version 5. */
static const ect_st_tensor st_tensors[] = {
    {.name = "ids", .dtype = EC_DTYPE_I64, .ndim = 2, .shape = {1500, 3}, .seed = 201},
    {.name = "w/half", .dtype = EC_DTYPE_F16, .ndim = 2, .shape = {777, 8}, .seed = 202},
    {.name = "bytes", .dtype = EC_DTYPE_U8, .ndim = 1, .shape = {9000}, .seed = 203},
};
#define N_ST (sizeof(st_tensors) / sizeof(st_tensors[0]))

/* What the tests import. */
static struct {
    struct table a1, b1, a2; /* emb/1: a, b; emb/2: a */
    char st[600];            /* st/5 */
} T;

static void import_ok(ec_client *c, const char *model, int64_t version, int64_t round,
                      const char *params, const char *const *paths, size_t n)
{
    ec_import_opts o = {.model = model, .version = version, .round = round,
                        .params_json = params, .partition_bytes = PART};
    uint32_t got = 0;

    if (ec_model_import(c, &o, paths, n, &got))
        fail_msg("import %s/%lld: %s", model, (long long)version, ec_last_error());
}

/* A daemon with three versions: emb/1 (a, b; round 3, params), emb/2 (a;
 * round 4), st/5 (three tensors; no round, no params); alias emb/current. */
static void setup_versions(void)
{
    ec_client *c;

    env_start("ec-recover", NULL);
    table_make(&T.a1, "v1/a.npy", ROWS, COLS, 11);
    table_make(&T.b1, "v1/b.npy", 500, 8, 12);
    table_make(&T.a2, "v2/a.npy", ROWS, COLS, 21);
    snprintf(T.st, sizeof(T.st), "%s/st.safetensors", E.dir);
    assert_int_equal(ect_write_safetensors(T.st, st_tensors, N_ST), 0);
    c = connect_ok();
    import_ok(c, "emb", 1, 3, "{\"lr\": 0.1, \"tags\": [\"x\", \"y\"]}",
              (const char *const[]){T.a1.path, T.b1.path}, 2);
    import_ok(c, "emb", 2, 4, "{\"lr\": 0.2}", (const char *const[]){T.a2.path}, 1);
    import_ok(c, "st", 5, -1, NULL, (const char *const[]){T.st}, 1);
    assert_int_equal(ec_model_alias(c, "emb", "current", 2), 0);
    ec_client_close(c);
}

static void free_versions(void)
{
    table_free(&T.a1);
    table_free(&T.b1);
    table_free(&T.a2);
}

/* ------------------------------------------------------------------ */
/* What the catalog says, as text                                      */

struct listing {
    char *text;
    size_t len, cap;
    bool aliases; /* include them */
};

static void lput(struct listing *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void lput(struct listing *l, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (l->cap - l->len < 1024) {
        l->cap = l->cap ? l->cap * 2 : 8192;
        l->text = realloc(l->text, l->cap);
        assert_non_null(l->text);
    }
    va_start(ap, fmt);
    n = vsnprintf(l->text + l->len, l->cap - l->len, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < l->cap - l->len);
    l->len += (size_t)n;
}

static int list_cb(const ec_version_info *v, const ec_tensor_listing *t, void *arg)
{
    struct listing *l = arg;

    if (!t) {
        lput(l, "%s/%lld round %lld params %s created %lld tensors %u", v->model,
             (long long)v->version, (long long)v->round, v->params_json,
             (long long)v->created_unix, v->tensors);
        if (l->aliases)
            lput(l, " aliases '%s'", v->aliases);
        lput(l, "\n");
    } else {
        lput(l, "  %s %s", t->name, ec_dtype_name(t->dtype));
        for (uint32_t d = 0; d < t->ndim; d++)
            lput(l, "%s%" PRIu64, d ? "x" : " ", t->shape[d]);
        lput(l, " partitions %" PRIu64 " bytes %" PRIu64 "\n", t->partitions, t->bytes);
    }
    return 0;
}

/* The daemon's catalog listing (malloc'd), aliases or not. */
static char *listing(bool aliases)
{
    struct listing l = {.aliases = aliases};
    ec_client *c = connect_ok();

    assert_int_equal(ec_catalog_list(c, NULL, list_cb, &l), 0);
    ec_client_close(c);
    lput(&l, "%s", "");
    return l.text;
}

/* ------------------------------------------------------------------ */
/* Reading everything back                                             */

static void st_tensor_ok(ec_client *c, const ect_st_tensor *s)
{
    uint64_t rows = s->shape[0], re = 1, rb;
    int64_t *ids = malloc(rows * sizeof(*ids));
    uint8_t *got, *want;
    ec_tensor *t = resolve_ok(c, "st", "5", s->name);

    for (uint32_t d = 1; d < s->ndim; d++)
        re *= s->shape[d];
    rb = re * ec_dtype_size(s->dtype);
    got = malloc(rows * rb);
    want = malloc(rows * rb);
    assert_true(ids && got && want);
    for (uint64_t r = 0; r < rows; r++)
        ids[r] = (int64_t)(rows - 1 - r); /* order matters */
    if (ec_tensor_gather(t, ids, rows, got, rows * rb))
        fail_msg("gather st/5/%s: %s", s->name, ec_last_error());
    for (uint64_t r = 0; r < rows; r++)
        ect_fill(s->dtype, s->seed, (rows - 1 - r) * re, re, want + r * rb);
    if (memcmp(got, want, rows * rb))
        fail_msg("st/5/%s: rows differ from the source", s->name);
    ec_tensor_release(t);
    free(ids);
    free(got);
    free(want);
}

static void table_ok(ec_client *c, const char *model, const char *version, const char *name,
                     const struct table *tb)
{
    ec_tensor *t = resolve_ok(c, model, version, name);

    gather_all_ok(t, tb);
    ec_tensor_release(t);
}

/* ------------------------------------------------------------------ */
/* Files and the CLI                                                   */

/* `embcache recover --data-dir E.data [extra]`: exit status, output. */
static int recover(const char *extra, char **out, char **err)
{
    const char *argv[] = {EC_TEST_CLI, "recover", "--data-dir", E.data, extra, NULL};
    int rc = ect_run(argv, out, NULL, err);

    print_message("embcache recover%s%s: exit %d\n%s%s", extra ? " " : "", extra ? extra : "",
                  rc, *out ? *out : "", *err ? *err : "");
    return rc;
}

static void contains(const char *hay, const char *needle, const char *what)
{
    if (!hay || !strstr(hay, needle))
        fail_msg("%s: '%s' not found in:\n%s", what, needle, hay ? hay : "(nothing)");
}

/* Start a daemon on E.data that must refuse: exit 1, naming the command. */
static void start_refused(void)
{
    const char *argv[] = {EC_TEST_EMBCACHED, "--data-dir", E.data, "--socket", E.sock,
                          "--shm-size", "64M", NULL};
    char *err = NULL;
    int rc = ect_run(argv, NULL, NULL, &err);

    if (rc != 1 || !err || !strstr(err, "embcache recover --data-dir"))
        fail_msg("embcached exited %d; expected 1 and how to recover in:\n%s", rc,
                 err ? err : "");
    free(err);
}

/* "name size" of every entry of dir and of dir/parts, sorted, with the
 * checksum of each file's bytes: what a dry run must leave as it was. */
static char *dir_state(void)
{
    struct listing l = {0};
    const char *sub[] = {"", "/parts"};

    for (int k = 0; k < 2; k++) {
        char path[700], cmd[1200];
        FILE *p;
        char line[1024];
        snprintf(path, sizeof(path), "%s%s", E.data, sub[k]);
        snprintf(cmd, sizeof(cmd), "cd '%s' && for f in $(ls -A | sort); do "
                 "if [ -f \"$f\" ]; then echo \"$f $(cksum < \"$f\")\"; else echo \"$f/\"; fi; "
                 "done", path);
        p = popen(cmd, "r");
        assert_non_null(p);
        while (fgets(line, sizeof(line), p))
            lput(&l, "%s: %s", sub[k], line);
        pclose(p);
    }
    lput(&l, "%s", "");
    return l.text;
}

/* The partition file (name in parts/) of tensor `tensor` of model/version,
 * found by its origin record. */
static void file_of(const char *model, int64_t version, const char *tensor, char *name,
                    size_t len)
{
    char parts[700];
    DIR *d;
    struct dirent *de;

    snprintf(parts, sizeof(parts), "%s/parts", E.data);
    d = opendir(parts);
    assert_non_null(d);
    name[0] = '\0';
    while ((de = readdir(d))) {
        char path[1000];
        ec_partfile_meta m;
        ec_partfile_origin o;
        int fd;
        size_t l = strlen(de->d_name);

        if (l < 5 || strcmp(de->d_name + l - 4, ".ecp"))
            continue;
        snprintf(path, sizeof(path), "%s/%s", parts, de->d_name);
        assert_int_equal(ec_partfile_open(path, &m, &fd), 0);
        assert_int_equal(ec_partfile_read_origin(fd, &m, &o), 0);
        close(fd);
        assert_true(o.present); /* every file this release imports says where it belongs */
        if (!strcmp(o.model, model) && o.version == version && !strcmp(o.tensor, tensor))
            snprintf(name, len, "%s", de->d_name);
    }
    closedir(d);
    if (!name[0])
        fail_msg("no partition file says it is %s/%lld/%s", model, (long long)version, tensor);
}

/* The name of the damaged catalog kept in E.data ("" if none). */
static void kept_catalog(char *name, size_t len)
{
    DIR *d = opendir(E.data);
    struct dirent *de;

    assert_non_null(d);
    name[0] = '\0';
    while ((de = readdir(d)))
        if (!strncmp(de->d_name, "catalog.db.damaged-", 19) && !strchr(de->d_name + 19, '-'))
            snprintf(name, len, "%s", de->d_name);
    closedir(d);
}

static void stop_daemon(void)
{
    ect_daemon_stop(E.daemon);
    E.daemon = 0;
}

/* ------------------------------------------------------------------ */

/* The catalog truncated to 0 bytes: refused, recovered whole. Recover
 * refuses while a daemon runs; a dry run changes nothing. */
static void test_recover_truncated_catalog(void **state)
{
    char *before, *before_all, *after, *s0, *s1, *out = NULL, *err = NULL, cat[700];
    char kept[256], path[900];
    ec_client *c;
    ec_tensor *t;
    struct stat st;

    (void)state;
    setup_versions();
    before = listing(false);
    before_all = listing(true);
    contains(before_all, "aliases 'current'", "the alias is set before");
    snprintf(cat, sizeof(cat), "%s/catalog.db", E.data);

    /* A daemon holds the directory: refused, nothing touched. */
    s0 = dir_state();
    assert_int_equal(recover(NULL, &out, &err), 1);
    contains(err, "stopped", "recover while embcached runs");
    assert_string_equal(out, "");
    s1 = dir_state();
    assert_string_equal(s0, s1);
    free(s0);
    free(s1);
    free(out);
    free(err);
    out = err = NULL;
    {
        char *o = NULL, *e = NULL;
        assert_int_equal(recover("--dry-run", &o, &e), 1); /* even a dry run */
        free(o);
        free(e);
    }

    stop_daemon();
    assert_int_equal(truncate(cat, 0), 0);
    start_refused();

    /* A dry run: says what it would do, changes nothing. */
    s0 = dir_state();
    assert_int_equal(recover("--dry-run", &out, &err), 0);
    contains(out, "dry run", "dry run");
    contains(out, "emb version 1: 2 tensor(s)", "dry run lists emb/1");
    contains(out, "st version 5: 3 tensor(s)", "dry run lists st/5");
    assert_string_equal(err, "");
    s1 = dir_state();
    assert_string_equal(s0, s1);
    free(s0);
    free(s1);
    free(out);
    free(err);
    out = err = NULL;

    /* Recover. */
    assert_int_equal(recover(NULL, &out, &err), 0);
    assert_string_equal(err, "");
    contains(out, "recovered 3 version(s) with 6 tensor(s) from 6 partition file(s)",
             "the summary");
    contains(out, "aliases and policies", "says aliases and policies are lost");
    kept_catalog(kept, sizeof(kept));
    if (!kept[0])
        fail_msg("no catalog.db.damaged-* kept in %s", E.data);
    contains(out, kept, "names where the damaged catalog went");
    snprintf(path, sizeof(path), "%s/%s", E.data, kept);
    assert_int_equal(stat(path, &st), 0);

    /* The daemon starts and serves all of it, as it was. */
    E.daemon = ect_daemon_start(E.data, E.sock, NULL);
    after = listing(false);
    assert_string_equal(after, before);
    free(after);
    after = listing(true);
    contains(after, "aliases ''", "aliases are gone");
    c = connect_ok();
    table_ok(c, "emb", "1", "a", &T.a1);
    table_ok(c, "emb", "1", "b", &T.b1);
    table_ok(c, "emb", "2", "a", &T.a2);
    for (size_t i = 0; i < N_ST; i++)
        st_tensor_ok(c, &st_tensors[i]);
    assert_int_equal(ec_tensor_resolve(c, "emb", "current", "a", &t), EC_ENOENT);
    {
        int64_t v = 0;
        assert_int_equal(ec_model_find(c, "emb", 3, "{\"tags\": [\"x\", \"y\"], \"lr\": 0.1}",
                                       &v), 0);
        assert_int_equal(v, 1);
    }
    /* and takes imports and aliases again */
    assert_int_equal(ec_model_alias(c, "emb", "current", 2), 0);
    ec_client_close(c);
    free(after);
    free(before);
    free(before_all);
    free(out);
    free(err);
    free_versions();
}

/* Garbage in the catalog and a flipped data byte in one partition file:
 * the file is reported and left out with its version, kept on disk; the
 * other versions come back. */
static void test_recover_garbage_and_damaged_file(void **state)
{
    char cat[700], name[256], path[900], skipped[1000], kept[256];
    char *out = NULL, *err = NULL, *s0, *s1, *after;
    uint8_t *junk, *damaged, *again;
    size_t len, dlen, alen;
    uint64_t seed = 7, data_off;
    ec_client *c;
    ec_tensor *t;
    int fd;

    (void)state;
    setup_versions();
    stop_daemon();
    snprintf(cat, sizeof(cat), "%s/catalog.db", E.data);

    /* One data byte of emb/2's tensor flipped. */
    file_of("emb", 2, "a", name, sizeof(name));
    snprintf(path, sizeof(path), "%s/parts/%s", E.data, name);
    fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &data_off, 8, 136), 8);
    {
        uint8_t b;
        assert_int_equal(pread(fd, &b, 1, (off_t)data_off + 100), 1);
        b ^= 0x21;
        assert_int_equal(pwrite(fd, &b, 1, (off_t)data_off + 100), 1);
    }
    close(fd);
    damaged = ect_read_file(path, &dlen);
    assert_non_null(damaged);

    /* The catalog overwritten with garbage of its own size. */
    {
        char side[720];
        struct stat st;
        assert_int_equal(stat(cat, &st), 0);
        len = (size_t)st.st_size;
        junk = malloc(len);
        for (size_t i = 0; i < len; i++)
            junk[i] = (uint8_t)(splitmix(&seed) >> 17);
        assert_int_equal(ect_write_file(cat, junk, len), 0);
        snprintf(side, sizeof(side), "%s-wal", cat);
        unlink(side);
        snprintf(side, sizeof(side), "%s-shm", cat);
        unlink(side);
    }
    start_refused();

    /* A dry run: the same verdict, nothing changed. */
    s0 = dir_state();
    assert_int_equal(recover("--dry-run", &out, &err), 8);
    contains(out, name, "dry run names the damaged file");
    s1 = dir_state();
    assert_string_equal(s0, s1);
    free(s0);
    free(s1);
    free(out);
    free(err);
    out = err = NULL;

    /* Recover: 8 (files left out), the file named with what to do. */
    assert_int_equal(recover(NULL, &out, &err), 8);
    contains(out, name, "names the damaged file");
    contains(out, "FAILED VALIDATION", "says it failed validation");
    contains(out, "checksum", "says what failed");
    contains(out, "import", "says what to do");
    contains(out, "recovered 2 version(s) with 5 tensor(s)", "the summary");
    /* kept on disk, bytes unchanged, out of the start-up sweep's way */
    snprintf(skipped, sizeof(skipped), "%s.skipped", path);
    again = ect_read_file(skipped, &alen);
    if (!again)
        fail_msg("the damaged file is gone: no %s", skipped);
    assert_int_equal(alen, dlen);
    assert_memory_equal(again, damaged, dlen);
    free(again);
    /* the damaged catalog kept aside, unread and unchanged */
    kept_catalog(kept, sizeof(kept));
    assert_true(kept[0]);
    {
        char kp[900];
        snprintf(kp, sizeof(kp), "%s/%s", E.data, kept);
        again = ect_read_file(kp, &alen);
        assert_non_null(again);
        assert_int_equal(alen, len);
        assert_memory_equal(again, junk, len);
        free(again);
    }

    /* The daemon serves what was recovered; emb/2 is gone, its file kept. */
    E.daemon = ect_daemon_start(E.data, E.sock, NULL);
    after = listing(false);
    contains(after, "emb/1 round 3 params {\"lr\":0.1,\"tags\":[\"x\",\"y\"]}", "emb/1 back");
    contains(after, "st/5 round -1 params {}", "st/5 back");
    if (strstr(after, "emb/2"))
        fail_msg("emb/2 was registered with a damaged file:\n%s", after);
    c = connect_ok();
    table_ok(c, "emb", "1", "a", &T.a1);
    table_ok(c, "emb", "1", "b", &T.b1);
    for (size_t i = 0; i < N_ST; i++)
        st_tensor_ok(c, &st_tensors[i]);
    assert_int_equal(ec_tensor_resolve(c, "emb", "2", "a", &t), EC_ENOENT);
    ec_client_close(c);
    again = ect_read_file(skipped, &alen);
    if (!again)
        fail_msg("embcached deleted the file recover left out: %s", skipped);
    free(again);

    free(after);
    free(out);
    free(err);
    free(junk);
    free(damaged);
    free_versions();
}

/* Copy parts/<from> to parts/<to>, with the origin record removed when
 * strip (a file as releases before origins wrote it: zeros after the
 * header struct, the header checksum taken again). */
static void copy_part(const char *from, const char *to, bool strip)
{
    char a[900], b[900];
    size_t len;
    uint8_t *f;

    snprintf(a, sizeof(a), "%s/parts/%s", E.data, from);
    snprintf(b, sizeof(b), "%s/parts/%s", E.data, to);
    f = ect_read_file(a, &len);
    assert_non_null(f);
    if (strip) {
        uint64_t zero = 0, sum;
        memset(f + EC_PARTFILE_ORIGIN_OFF, 0, EC_PARTFILE_ALIGN - EC_PARTFILE_ORIGIN_OFF);
        memcpy(f + 160, &zero, 8);
        sum = ec_checksum(f, EC_PARTFILE_ALIGN);
        memcpy(f + 160, &sum, 8);
    }
    assert_int_equal(ect_write_file(b, f, len), 0);
    free(f);
}

/* No catalog at all, a version missing one of its files, a tensor claimed
 * by two files, a file without an origin record: each version that cannot
 * be proven whole is left out, each file named, none deleted. */
static void test_recover_incomplete_and_conflicting(void **state)
{
    char name[256], path[900], away[900], cat[700];
    char *out = NULL, *err = NULL, *after;
    struct stat st;
    ec_client *c;

    (void)state;
    setup_versions();
    stop_daemon();
    snprintf(cat, sizeof(cat), "%s/catalog.db", E.data);
    assert_int_equal(unlink(cat), 0);
    /* emb/1 loses its tensor b */
    file_of("emb", 1, "b", name, sizeof(name));
    snprintf(path, sizeof(path), "%s/parts/%s", E.data, name);
    snprintf(away, sizeof(away), "%s/%s", E.dir, name);
    assert_int_equal(rename(path, away), 0);
    /* st/5's tensor "bytes" is claimed twice */
    file_of("st", 5, "bytes", name, sizeof(name));
    copy_part(name, "00000000000000aa.ecp", false);
    /* a file from before origin records (a copy of emb/2's, stripped) */
    file_of("emb", 2, "a", name, sizeof(name));
    copy_part(name, "00000000000000bb.ecp", true);

    assert_int_equal(recover(NULL, &out, &err), 8);
    contains(out, "emb version 2: 1 tensor(s)", "emb/2 recovered");
    contains(out, "recovered 1 version(s) with 1 tensor(s) from 7 partition file(s)",
             "the summary");
    contains(out, "1 of its 2 tensor files were found", "emb/1 is incomplete");
    contains(out, "both claim tensor 'bytes'", "st/5 has a conflict");
    contains(out, "00000000000000aa.ecp", "the conflicting copy is named");
    contains(out, "00000000000000bb.ecp.skipped: no origin", "the file without an origin");
    contains(out, "there was no catalog.db to keep", "no catalog to keep");
    /* every file left out is still there, under its .skipped name */
    assert_int_equal(stat(away, &st), 0);
    snprintf(path, sizeof(path), "%s/parts/00000000000000aa.ecp.skipped", E.data);
    assert_int_equal(stat(path, &st), 0);
    snprintf(path, sizeof(path), "%s/parts/00000000000000bb.ecp.skipped", E.data);
    assert_int_equal(stat(path, &st), 0);
    file_of("emb", 2, "a", name, sizeof(name)); /* the recovered one keeps its name */

    E.daemon = ect_daemon_start(E.data, E.sock, NULL);
    after = listing(false);
    contains(after, "emb/2 round 4 params {\"lr\":0.2}", "emb/2 back");
    if (strstr(after, "emb/1") || strstr(after, "st/5"))
        fail_msg("a version that cannot be proven whole was registered:\n%s", after);
    c = connect_ok();
    table_ok(c, "emb", "2", "a", &T.a2);
    ec_client_close(c);
    free(after);
    free(out);
    free(err);
    free_versions();
}

/* Usage: --data-dir is required; a directory that is not there is 4. */
static void test_recover_usage(void **state)
{
    char *out = NULL, *err = NULL;
    int rc;

    (void)state;
    rc = ect_run((const char *const[]){EC_TEST_CLI, "recover", NULL}, &out, NULL, &err);
    assert_int_equal(rc, 2);
    contains(err, "--data-dir", "recover without --data-dir");
    free(out);
    free(err);
    rc = ect_run((const char *const[]){EC_TEST_CLI, "recover", "--data-dir",
                                       "/nonexistent/ec-recover", NULL},
                 &out, NULL, &err);
    assert_int_equal(rc, 4);
    contains(err, "/nonexistent/ec-recover", "recover of a missing directory");
    free(out);
    free(err);
    rc = ect_run((const char *const[]){EC_TEST_CLI, "recover", "--help", NULL}, &out, NULL,
                 &err);
    assert_int_equal(rc, 0);
    contains(out, "usage: embcache recover", "recover --help");
    free(out);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recover_usage),
        cmocka_unit_test_teardown(test_recover_truncated_catalog, env_teardown),
        cmocka_unit_test_teardown(test_recover_garbage_and_damaged_file, env_teardown),
        cmocka_unit_test_teardown(test_recover_incomplete_and_conflicting, env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
