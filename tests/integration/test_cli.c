/*
 * test_cli.c - end-to-end tests of the command-line tools, embcache and
 * embcached, as scripts use them: exit codes, what goes to standard output
 * and what to standard error (exactly one line on failure).
 *
 * One real embcached runs for the whole group, in a temporary directory
 * under /tmp with a short socket path. The group imports a .npy table and a
 * .safetensors file with every dtype as model "m" version 1, then drives the
 * CLI through import, ls, alias, get, stats and their failures, corrupts a
 * partition file of a second model on disk to see the checksum failure
 * reported, and finally stops the daemon with SIGTERM. Every CLI run is a
 * fork+exec of the real binary (ect_run; the daemon, the runs and their
 * checks are cli_test.c's, shared with test_cli_results.c); the test
 * process itself is the only thread.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_test.h"
#include "testutil.h"

/* The f32 table: m/1/emb, [EMB_ROWS, EMB_COLS], filled with seed EMB_SEED. */
#define EMB_ROWS 1000
#define EMB_COLS 16
#define EMB_SEED 42
#define EMB_ROW_BYTES (EMB_COLS * 4)
/* 128 rows of 64 bytes per partition: the table makes 8 partitions, the
 * last one short (1000 = 7 * 128 + 104). */
#define PART_BYTES "8192"

/* The .safetensors tensors: every dtype but f32, row counts that are not a
 * multiple of their rows per partition, 1-D and 3-D shapes. */
static const ect_st_tensor st_tensors[] = {
    {.name = "w_f16", .dtype = EC_DTYPE_F16, .ndim = 2, .shape = {777, 8}, .seed = 101},
    {.name = "w_bf16", .dtype = EC_DTYPE_BF16, .ndim = 2, .shape = {300, 12}, .seed = 102},
    {.name = "tok_i8", .dtype = EC_DTYPE_I8, .ndim = 2, .shape = {1001, 3}, .seed = 103},
    {.name = "ids_u8", .dtype = EC_DTYPE_U8, .ndim = 1, .shape = {8200}, .seed = 104},
    {.name = "cnt_i32", .dtype = EC_DTYPE_I32, .ndim = 2, .shape = {123, 5}, .seed = 105},
    {.name = "big_i64", .dtype = EC_DTYPE_I64, .ndim = 2, .shape = {2049, 2}, .seed = 106},
    {.name = "w_f64", .dtype = EC_DTYPE_F64, .ndim = 3, .shape = {65, 7, 3}, .seed = 107},
};
#define N_ST (sizeof(st_tensors) / sizeof(st_tensors[0]))

/* The input files, in CE.dir (cli_test.h: the daemon, its directory). */
static struct {
    char *npy;       /* .../emb.npy */
    char *st;        /* .../weights.safetensors */
    /* The import done in the group setup, checked by test_import. */
    int imp_rc;
    char *imp_out, *imp_err;
} g;

/* Bytes of rows [first, first + n) of a tensor filled by ect_fill. */
static void *rows_of(ec_dtype dt, uint64_t seed, uint64_t row_elems, uint64_t first,
                     uint64_t n)
{
    void *b = malloc(n * row_elems * ec_dtype_size(dt) + 1);

    assert_non_null(b);
    ect_fill(dt, seed, first * row_elems, n * row_elems, b);
    return b;
}

static uint64_t row_elems_of(const ect_st_tensor *t)
{
    uint64_t e = 1;

    for (uint32_t d = 1; d < t->ndim; d++)
        e *= t->shape[d];
    return e;
}

/* ------------------------------------------------------------------ */
/* Group setup: daemon, input files, the import of m/1                 */

static int group_setup(void **state)
{
    run_res r;

    (void)state;
    cli_env_start("ecli");
    if (asprintf(&g.npy, "%s/emb.npy", CE.dir) < 0 ||
        asprintf(&g.st, "%s/weights.safetensors", CE.dir) < 0)
        fail_msg("asprintf");

    assert_int_equal(ect_write_npy(g.npy, EC_DTYPE_F32, 2,
                                   (const uint64_t[]){EMB_ROWS, EMB_COLS}, EMB_SEED),
                     0);
    assert_int_equal(ect_write_safetensors(g.st, st_tensors, N_ST), 0);

    CLI(&r, "import", "--model", "m", "--version", "1", "--round", "3", "--params",
        "{\"lr\": 0.1}", "--partition-bytes", PART_BYTES, g.npy, g.st);
    g.imp_rc = r.rc;
    g.imp_out = r.out;
    g.imp_err = r.err;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    cli_env_stop();
    free(g.imp_out);
    free(g.imp_err);
    free(g.npy);
    free(g.st);
    return 0;
}

/* ------------------------------------------------------------------ */
/* import                                                              */

static void test_import(void **state)
{
    char want[128];
    run_res r = {.rc = g.imp_rc, .out = g.imp_out, .err = g.imp_err};

    (void)state;
    check_ok(&r, "import m 1");
    snprintf(want, sizeof(want), "imported m version 1: %zu tensor(s)\n", N_ST + 1);
    assert_string_equal(g.imp_out, want);
}

static void test_import_errors(void **state)
{
    run_res r;
    char *bad, *txt, *missing;
    uint8_t *buf;
    size_t len;

    (void)state;
    /* The same version again. */
    CLI(&r, "import", "--model", "m", "--version", "1", g.npy);
    check_fail(&r, 6, "duplicate import");
    check_contains(r.err, "m", "duplicate import names the model");
    assert_string_equal(r.out, "");
    res_free(&r);

    /* A truncated .npy: a valid header, half the data. */
    assert_true(asprintf(&bad, "%s/trunc.npy", CE.dir) > 0);
    buf = ect_read_file(g.npy, &len);
    assert_non_null(buf);
    assert_int_equal(ect_write_file(bad, buf, len / 2), 0);
    free(buf);
    CLI(&r, "import", "--model", "bad", "--version", "1", bad);
    check_fail(&r, 5, "truncated npy");
    check_contains(r.err, "trunc.npy", "truncated npy message names the file");
    res_free(&r);

    /* A file whose name ends in neither .npy nor .safetensors. */
    assert_true(asprintf(&txt, "%s/table.csv", CE.dir) > 0);
    assert_int_equal(ect_write_file(txt, "1,2,3\n", 6), 0);
    CLI(&r, "import", "--model", "bad", "--version", "1", txt);
    check_fail(&r, 5, "unsupported extension");
    check_contains(r.err, ".npy", "unsupported extension message says what is supported");
    res_free(&r);

    /* A file that is not there. */
    assert_true(asprintf(&missing, "%s/nosuchfile.npy", CE.dir) > 0);
    CLI(&r, "import", "--model", "bad", "--version", "1", missing);
    if (r.rc == 0)
        fail_msg("import of a missing file exited 0");
    check_fail(&r, r.rc, "missing file");
    check_contains(r.err, missing, "missing file message names the path");
    res_free(&r);

    /* Nothing of the failed imports was registered. */
    CLI(&r, "ls", "bad");
    check_fail(&r, 4, "ls of a model whose imports all failed");
    res_free(&r);

    /* Usage errors: no --model; no file; bad --version. */
    CLI(&r, "import", "--version", "1", g.npy);
    check_fail(&r, 2, "import without --model");
    check_contains(r.err, "--model", "import without --model");
    res_free(&r);
    CLI(&r, "import", "--model", "x", "--version", "1");
    check_fail(&r, 2, "import without a file");
    res_free(&r);
    CLI(&r, "import", "--model", "x", "--version", "zero", g.npy);
    check_fail(&r, 2, "import with a non-numeric version");
    res_free(&r);

    free(bad);
    free(txt);
    free(missing);
}

/* ------------------------------------------------------------------ */
/* import: one exit code per kind of bad input file                    */

/* A .npy file with the given header dict and payload bytes of zeros (or
 * magic replaced). */
static void bad_npy(const char *path, const char *magic8, const char *dict, size_t payload)
{
    size_t dl = strlen(dict), hl = (10 + dl + 1 + 63) / 64 * 64 - 10, len = 10 + hl + payload;
    uint8_t *b = calloc(1, len);

    assert_non_null(b);
    memcpy(b, magic8, 8);
    b[8] = (uint8_t)hl;
    b[9] = (uint8_t)(hl >> 8);
    memset(b + 10, ' ', hl);
    memcpy(b + 10, dict, dl);
    b[10 + hl - 1] = '\n';
    assert_int_equal(ect_write_file(path, b, len), 0);
    free(b);
}

/* A .safetensors file: header length hlen (or the JSON's own when 0),
 * the JSON, then data bytes of zeros. */
static void bad_st(const char *path, const char *json, uint64_t hlen, size_t data)
{
    size_t jl = strlen(json), len = 8 + jl + data;
    uint8_t *b = calloc(1, len);

    assert_non_null(b);
    hlen = hlen ? hlen : jl;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(b + 8, json, jl);
    assert_int_equal(ect_write_file(path, b, len), 0);
    free(b);
}

enum bad_kind {
    BK_MISSING, BK_DIR, BK_FIFO, BK_UNREADABLE, BK_EMPTY, BK_TRUNC_DATA, BK_TRUNC_HDR,
    BK_BAD_MAGIC, BK_NPY, BK_ST, BK_CSV, BK_DUP_ACROSS,
};

struct bad_file {
    const char *what;
    const char *name;    /* in CE.dir/bad */
    enum bad_kind kind;
    const char *content; /* BK_NPY: the header dict; BK_ST: the JSON header */
    size_t extra;        /* BK_NPY: payload bytes; BK_ST: data bytes */
    uint64_t hlen;       /* BK_ST: a header length other than the JSON's */
    int code;            /* the exit status expected */
};

#define NPY(w, n, dict, payload) {w, n, BK_NPY, dict, payload, 0, 5}
#define ST(w, n, json, data, hlen) {w, n, BK_ST, json, data, hlen, 5}

/* The rule (tools/embcache.c usage and exit_for): an input file that does
 * not exist exits 4; one that exists but cannot be imported as it is exits
 * 5, whatever the reason; and the one line on stderr names the file. Bug:
 * an unreadable file exited 1, a tensor of 9 dimensions or with a row over
 * 4 GiB 1, a file whose name is not a valid tensor name 2, and a tensor
 * name given by two files 6. */
static const struct bad_file bad_files[] = {
    {"missing file", "nosuch.npy", BK_MISSING, NULL, 0, 0, 4},
    {"a directory", "adir.npy", BK_DIR, NULL, 0, 0, 5},
    {"a FIFO (must not block)", "fifo.npy", BK_FIFO, NULL, 0, 0, 5},
    {"unreadable (mode 000, as another user)", "locked.npy", BK_UNREADABLE, NULL, 0, 0, 5},
    {"empty .npy", "empty.npy", BK_EMPTY, NULL, 0, 0, 5},
    {"empty .safetensors", "empty.safetensors", BK_EMPTY, NULL, 0, 0, 5},
    {"truncated .npy data", "truncdata.npy", BK_TRUNC_DATA, NULL, 0, 0, 5},
    {"truncated .npy header", "trunchdr.npy", BK_TRUNC_HDR, NULL, 0, 0, 5},
    {".npy with bad magic", "badmagic.npy", BK_BAD_MAGIC, NULL, 0, 0, 5},
    NPY(".npy with a broken header dict", "baddict.npy",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,) garbage}", 8),
    NPY(".npy of object dtype", "obj.npy",
        "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", 16),
    NPY(".npy of unicode dtype", "uni.npy",
        "{'descr': '<U4', 'fortran_order': False, 'shape': (2,), }", 32),
    NPY(".npy of bool dtype", "boolean.npy",
        "{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }", 2),
    NPY(".npy in Fortran order", "fortran.npy",
        "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16),
    NPY(".npy whose shape overflows", "overflow.npy",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", 0),
    NPY(".npy of 9 dimensions", "ninedims.npy",
        "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1), }", 1),
    NPY(".npy with a row over 4 GiB", "hugerow.npy",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 2147483648), }", 0),
    NPY(".npy with bytes after the data", "trailing.npy",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 12),
    NPY(".npy whose name is not a tensor name", "bad name!.npy",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8),
    NPY(".npy named just '.npy'", ".npy",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8),
    ST(".safetensors with a truncated header", "trunchdr.safetensors", "{\"a\": {", 0, 1000),
    ST(".safetensors with a garbage header", "garbage.safetensors", "not json at all!", 0, 0),
    ST(".safetensors with a header length of 0", "zerolen.safetensors", "", 0, 0),
    ST(".safetensors with overlapping data", "overlap.safetensors",
       "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
       "\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", 12, 0),
    ST(".safetensors with data out of range", "outside.safetensors",
       "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 8, 0),
    ST(".safetensors of BOOL dtype", "booldt.safetensors",
       "{\"a\": {\"dtype\": \"BOOL\", \"shape\": [4], \"data_offsets\": [0, 4]}}", 4, 0),
    ST(".safetensors of 9 dimensions", "ninedims.safetensors",
       "{\"a\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}",
       1, 0),
    ST(".safetensors with an invalid tensor name", "badname.safetensors",
       "{\"bad name\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 1, 0),
    ST(".safetensors with a row over 4 GiB", "hugerow.safetensors",
       "{\"a\": {\"dtype\": \"F32\", \"shape\": [0, 2147483648], \"data_offsets\": [0, 0]}}",
       0, 0),
    ST(".safetensors naming a tensor twice", "twice.safetensors",
       "{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}, "
       "\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [1, 2]}}", 2, 0),
    {"an unsupported extension", "table.csv", BK_CSV, NULL, 0, 0, 5},
    {"one tensor name in two files", "emb.npy", BK_DUP_ACROSS, NULL, 0, 0, 5},
};

/* Make the bad file of case b at path (dir: its directory). */
static void bad_make(const struct bad_file *b, const char *dir, const char *path)
{
    uint8_t *img;
    size_t len;

    switch (b->kind) {
    case BK_MISSING: break;
    case BK_DIR: assert_int_equal(mkdir(path, 0755), 0); break;
    case BK_FIFO: assert_int_equal(mkfifo(path, 0644), 0); break;
    case BK_EMPTY: assert_int_equal(ect_write_file(path, "", 0), 0); break;
    case BK_CSV: assert_int_equal(ect_write_file(path, "1,2\n", 4), 0); break;
    case BK_UNREADABLE:
    case BK_TRUNC_DATA:
    case BK_TRUNC_HDR:
    case BK_BAD_MAGIC:
        img = ect_read_file(g.npy, &len);
        assert_non_null(img);
        if (b->kind == BK_BAD_MAGIC)
            img[5] = 'X';
        assert_int_equal(ect_write_file(path, img, b->kind == BK_TRUNC_DATA ? len - 20
                                                   : b->kind == BK_TRUNC_HDR ? 30
                                                                             : len),
                         0);
        free(img);
        if (b->kind == BK_UNREADABLE)
            assert_int_equal(chmod(path, 0), 0);
        break;
    case BK_NPY: bad_npy(path, "\x93NUMPY\x01\x00", b->content, b->extra); break;
    case BK_ST: bad_st(path, b->content, b->hlen, b->extra); break;
    case BK_DUP_ACROSS: {
        /* dir/emb.npy and dir/again/emb.npy: two tensors named emb */
        char other[600];
        snprintf(other, sizeof(other), "%s/again", dir);
        assert_int_equal(mkdir(other, 0755), 0);
        snprintf(other, sizeof(other), "%s/again/emb.npy", dir);
        img = ect_read_file(g.npy, &len);
        assert_non_null(img);
        assert_int_equal(ect_write_file(path, img, len), 0);
        assert_int_equal(ect_write_file(other, img, len), 0);
        free(img);
        break;
    }
    }
}

/* As root a mode-000 file is readable: the CLI runs as uid 65534 (setpriv)
 * against a daemon of its own that lets that uid administer, its socket and
 * the file in a directory 65534 can traverse. Returns 0, or -1 when that
 * cannot be arranged (no setpriv): the case is skipped, said so. */
static int run_unreadable_as_other(run_res *r, const char *dir, const char *path)
{
    char data[600], sock[600];
    pid_t d;

    if (access("/usr/bin/setpriv", X_OK) != 0) {
        print_message("skipping the unreadable-file case: running as root without "
                      "/usr/bin/setpriv\n");
        return -1;
    }
    snprintf(data, sizeof(data), "%s/u-data", dir);
    snprintf(sock, sizeof(sock), "%s/u.sock", dir);
    assert_int_equal(chmod(CE.dir, 0711), 0);
    assert_int_equal(chmod(dir, 0711), 0);
    d = ect_daemon_start(data, sock, (const char *const[]){"--quiet", "--admin-uid", "65534",
                                                           NULL});
    run_argv(r, (const char *const[]){"/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                                      "--clear-groups", EC_TEST_CLI, "--socket", sock,
                                      "import", "--model", "badu", "--version", "1", path,
                                      NULL});
    ect_daemon_stop(d);
    chmod(dir, 0755);
    chmod(CE.dir, 0700);
    return 0;
}

static void test_import_bad_files(void **state)
{
    char dir[512], msg[4096] = "";
    size_t ml = 0;
    int failures = 0;

    (void)state;
    snprintf(dir, sizeof(dir), "%s/bad", CE.dir);
    assert_int_equal(mkdir(dir, 0755), 0);
    for (size_t i = 0; i < sizeof(bad_files) / sizeof(bad_files[0]); i++) {
        const struct bad_file *b = &bad_files[i];
        char path[600], other[600], version[16];
        size_t len;
        run_res r;
        bool ok;

        snprintf(path, sizeof(path), "%s/%s", dir, b->name);
        snprintf(other, sizeof(other), "%s/again/%s", dir, b->name);
        snprintf(version, sizeof(version), "%zu", i + 1);
        bad_make(b, dir, path);
        if (b->kind == BK_UNREADABLE && geteuid() == 0) {
            if (run_unreadable_as_other(&r, dir, path) < 0)
                continue;
        } else if (b->kind == BK_DUP_ACROSS) {
            CLI(&r, "import", "--model", "badf", "--version", version, path, other);
        } else {
            CLI(&r, "import", "--model", "badf", "--version", version, path);
        }
        len = strlen(r.err);
        /* exactly one line on stderr, naming the file (both, for two) */
        ok = r.rc == b->code && len >= 2 && r.err[len - 1] == '\n' &&
             !memchr(r.err, '\n', len - 1) && strstr(r.err, b->name) &&
             (b->kind != BK_DUP_ACROSS || (strstr(r.err, "1st") && strstr(r.err, "2nd")));
        if (!ok) {
            failures++;
            ml += (size_t)snprintf(msg + ml, ml < sizeof(msg) ? sizeof(msg) - ml : 0,
                                   "  %s (%s): exit %d, expected %d; stderr: %s%s",
                                   b->what, b->name, r.rc, b->code, r.err,
                                   len && r.err[len - 1] == '\n' ? "" : "\n");
        }
        print_message("%-45s exit %d  %s", b->what, r.rc, r.err);
        res_free(&r);
    }
    if (failures)
        fail_msg("%d bad input file(s) not reported as the rule says (4 missing, 5 "
                 "anything else, the message naming the file):\n%s", failures, msg);

    /* None of them left a model behind. */
    {
        run_res r;
        CLI(&r, "ls", "badf");
        check_fail(&r, 4, "ls of a model whose imports all failed");
        res_free(&r);
    }
}

/* ------------------------------------------------------------------ */
/* ls                                                                  */

/* The human line of a tensor: "    NAME DTYPE [SHAPE] ...". */
static void check_ls_tensor_line(const char *out, const char *name, const char *dtype,
                                 const char *shape)
{
    const char *p = out;
    size_t nl = strlen(name);

    for (;;) {
        p = strstr(p, name);
        if (!p)
            fail_msg("ls: no line for tensor %s in:\n%s", name, out);
        /* A whole word, at the start of an indented line. */
        if ((p == out || p[-1] == ' ') && p[nl] == ' ')
            break;
        p += nl;
    }
    {
        const char *eol = strchr(p, '\n');
        char line[512];
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        char want_shape[128];

        snprintf(line, sizeof(line), "%.*s", (int)ll, p);
        snprintf(want_shape, sizeof(want_shape), "[%s]", shape);
        if (!strstr(line, dtype) || !strstr(line, want_shape))
            fail_msg("ls: tensor line '%s' lacks dtype %s or shape %s", line, dtype,
                     want_shape);
    }
}

static void check_ls_human(const char *out)
{
    const char *vline;

    check_contains(out, "MODEL", "ls header");
    /* "m   1   3 ..." : model, version, round on one line. */
    vline = strstr(out, "\nm ");
    assert_non_null(vline);
    {
        char model[64];
        long long ver, round;
        assert_int_equal(sscanf(vline + 1, "%63s %lld %lld", model, &ver, &round), 3);
        assert_string_equal(model, "m");
        assert_int_equal(ver, 1);
        assert_int_equal(round, 3);
    }
    check_contains(out, "\"lr\"", "ls shows the params");
    check_ls_tensor_line(out, "emb", "f32", "1000, 16");
    check_ls_tensor_line(out, "w_f16", "f16", "777, 8");
    check_ls_tensor_line(out, "w_bf16", "bf16", "300, 12");
    check_ls_tensor_line(out, "tok_i8", "i8", "1001, 3");
    check_ls_tensor_line(out, "ids_u8", "u8", "8200");
    check_ls_tensor_line(out, "cnt_i32", "i32", "123, 5");
    check_ls_tensor_line(out, "big_i64", "i64", "2049, 2");
    check_ls_tensor_line(out, "w_f64", "f64", "65, 7, 3");
    /* The f32 table was cut into 8 partitions by --partition-bytes. */
    {
        const char *p = strstr(out, "    emb ");
        assert_non_null(p);
        const char *eol = strchr(p, '\n');
        char line[512];
        snprintf(line, sizeof(line), "%.*s", (int)(eol ? eol - p : (long)strlen(p)), p);
        check_contains(line, "8 partition", "emb has 8 partitions");
    }
}

/* Brackets and braces balance outside strings, and strings close. */
static void check_json_balanced(const char *s)
{
    int depth = 0;
    bool in_str = false;

    for (; *s; s++) {
        if (in_str) {
            if (*s == '\\' && s[1])
                s++;
            else if (*s == '"')
                in_str = false;
            continue;
        }
        if (*s == '"')
            in_str = true;
        else if (*s == '[' || *s == '{')
            depth++;
        else if (*s == ']' || *s == '}')
            assert_true(--depth >= 0);
    }
    assert_false(in_str);
    assert_int_equal(depth, 0);
}

static void test_ls(void **state)
{
    run_res r;

    (void)state;
    CLI(&r, "ls");
    check_ok(&r, "ls");
    check_ls_human(r.out);
    res_free(&r);

    CLI(&r, "ls", "m");
    check_ok(&r, "ls m");
    check_ls_human(r.out);
    res_free(&r);

    CLI(&r, "ls", "--json");
    check_ok(&r, "ls --json");
    {
        const char *p = r.out;
        size_t l;
        while (isspace((unsigned char)*p))
            p++;
        assert_int_equal(*p, '[');
        l = strlen(p);
        while (l && isspace((unsigned char)p[l - 1]))
            l--;
        assert_true(l > 0 && p[l - 1] == ']');
    }
    check_json_balanced(r.out);
    check_contains(r.out, "\"model\": \"m\"", "ls --json model");
    check_contains(r.out, "\"version\": 1", "ls --json version");
    check_contains(r.out, "\"round\": 3", "ls --json round");
    check_contains(r.out, "\"lr\"", "ls --json params");
    check_contains(r.out, "\"tensors\": [", "ls --json tensors");
    check_contains(r.out, "\"name\": \"emb\", \"dtype\": \"f32\", \"shape\": [1000, 16]",
                   "ls --json emb");
    for (size_t i = 0; i < N_ST; i++) {
        char want[64];
        snprintf(want, sizeof(want), "\"name\": \"%s\"", st_tensors[i].name);
        check_contains(r.out, want, "ls --json tensor name");
    }
    check_contains(r.out, "\"name\": \"w_f64\", \"dtype\": \"f64\", \"shape\": [65, 7, 3]",
                   "ls --json w_f64");
    res_free(&r);

    CLI(&r, "ls", "--json", "m");
    check_ok(&r, "ls --json m");
    check_json_balanced(r.out);
    check_contains(r.out, "\"name\": \"emb\"", "ls --json m");
    res_free(&r);

    CLI(&r, "ls", "nosuchmodel");
    check_fail(&r, 4, "ls nosuchmodel");
    check_contains(r.err, "nosuchmodel", "ls nosuchmodel names the model");
    res_free(&r);

    CLI(&r, "ls", "a", "b");
    check_fail(&r, 2, "ls with two models");
    res_free(&r);
}

/* ------------------------------------------------------------------ */
/* get                                                                 */

static void test_get_raw_rows(void **state)
{
    run_res r;
    uint8_t *want = malloc(3 * EMB_ROW_BYTES);
    const uint64_t rows[3] = {0, 999, 5};

    (void)state;
    assert_non_null(want);
    for (int i = 0; i < 3; i++)
        ect_fill(EC_DTYPE_F32, EMB_SEED, rows[i] * EMB_COLS, EMB_COLS,
                 want + i * EMB_ROW_BYTES);

    CLI(&r, "get", "--raw", "m", "1", "emb", "0", "999", "5");
    check_ok(&r, "get --raw m 1 emb 0 999 5");
    assert_int_equal(r.out_len, 3 * EMB_ROW_BYTES);
    assert_memory_equal(r.out, want, 3 * EMB_ROW_BYTES);
    res_free(&r);

    /* The same, one row repeated, rows from the short last partition. */
    CLI(&r, "get", "--raw", "m", "1", "emb", "998", "998", "896");
    check_ok(&r, "get --raw rows of the last partition");
    assert_int_equal(r.out_len, 3 * EMB_ROW_BYTES);
    {
        uint8_t *w2 = malloc(3 * EMB_ROW_BYTES);
        assert_non_null(w2);
        ect_fill(EC_DTYPE_F32, EMB_SEED, 998 * EMB_COLS, EMB_COLS, w2);
        ect_fill(EC_DTYPE_F32, EMB_SEED, 998 * EMB_COLS, EMB_COLS, w2 + EMB_ROW_BYTES);
        ect_fill(EC_DTYPE_F32, EMB_SEED, 896 * EMB_COLS, EMB_COLS, w2 + 2 * EMB_ROW_BYTES);
        assert_memory_equal(r.out, w2, 3 * EMB_ROW_BYTES);
        free(w2);
    }
    res_free(&r);
    free(want);
}

/* --raw after the tensor and after the rows (the documented form is
 * "get MODEL VERSION|ALIAS TENSOR ROW... [--raw]"): the subcommand's getopt
 * must permute. Bug: main() restarts getopt with optind = 1, and glibc only
 * re-reads the ordering on optind = 0, so the subcommand inherits the "+"
 * (stop at the first non-option) of the top-level optstring and '--raw'
 * after the rows is taken for a row. */
static void test_get_raw_after_rows(void **state)
{
    run_res r;
    uint8_t want[3 * EMB_ROW_BYTES];
    const uint64_t rows[3] = {0, 999, 5};

    (void)state;
    for (int i = 0; i < 3; i++)
        ect_fill(EC_DTYPE_F32, EMB_SEED, rows[i] * EMB_COLS, EMB_COLS,
                 want + i * EMB_ROW_BYTES);

    CLI(&r, "get", "m", "1", "emb", "--raw", "0", "999", "5");
    check_ok(&r, "get m 1 emb --raw 0 999 5");
    assert_int_equal(r.out_len, sizeof(want));
    assert_memory_equal(r.out, want, sizeof(want));
    res_free(&r);

    CLI(&r, "get", "m", "1", "emb", "0", "999", "5", "--raw");
    check_ok(&r, "get m 1 emb 0 999 5 --raw");
    assert_int_equal(r.out_len, sizeof(want));
    assert_memory_equal(r.out, want, sizeof(want));
    res_free(&r);
}

static void test_get_safetensors_raw(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_ST; i++) {
        const ect_st_tensor *t = &st_tensors[i];
        uint64_t rows = t->shape[0], re = row_elems_of(t);
        size_t rb = re * ec_dtype_size(t->dtype), nargs = 8 + rows + 1;
        const char **argv = calloc(nargs, sizeof(*argv));
        char (*ids)[24] = calloc(rows, sizeof(*ids));
        uint8_t *want;
        run_res r;
        int n = 0;

        assert_non_null(argv);
        assert_non_null(ids);
        argv[n++] = EC_TEST_CLI;
        argv[n++] = "--socket";
        argv[n++] = CE.sock;
        argv[n++] = "get";
        argv[n++] = "--raw";
        argv[n++] = "m";
        argv[n++] = "1";
        argv[n++] = t->name;
        /* Every row, last to first, so order matters. */
        for (uint64_t k = 0; k < rows; k++) {
            snprintf(ids[k], sizeof(ids[k]), "%" PRIu64, rows - 1 - k);
            argv[n++] = ids[k];
        }
        argv[n] = NULL;
        assert_true((size_t)n < nargs);
        run_argv(&r, argv);
        if (r.rc != 0)
            fail_msg("get --raw m 1 %s: exit %d, stderr '%s'", t->name, r.rc, r.err);
        assert_string_equal(r.err, "");
        assert_int_equal(r.out_len, rows * rb);
        want = malloc(rows * rb);
        assert_non_null(want);
        for (uint64_t k = 0; k < rows; k++)
            ect_fill(t->dtype, t->seed, (rows - 1 - k) * re, re, want + k * rb);
        if (memcmp(r.out, want, rows * rb))
            fail_msg("get --raw m 1 %s: bytes differ from the source", t->name);
        free(want);
        res_free(&r);
        free(argv);
        free(ids);
    }
}

static void test_get_human(void **state)
{
    run_res r;
    float want[EMB_COLS];
    const char *p;
    char *end;

    (void)state;
    CLI(&r, "get", "m", "1", "emb", "7", "0");
    check_ok(&r, "get m 1 emb 7 0");
    /* One line per row, in order. */
    {
        size_t lines = 0;
        for (p = r.out; *p; p++)
            lines += *p == '\n';
        assert_int_equal(lines, 2);
    }
    assert_true(strncmp(r.out, "m/1/emb[7] = [", 14) == 0);
    check_contains(r.out, "\nm/1/emb[0] = [", "second row line");
    /* Every element of row 7 reads back to the exact float. */
    ect_fill(EC_DTYPE_F32, EMB_SEED, 7 * EMB_COLS, EMB_COLS, want);
    p = r.out + 14;
    for (int k = 0; k < EMB_COLS; k++) {
        float v = strtof(p, &end);
        assert_true(end != p);
        if (memcmp(&v, &want[k], 4))
            fail_msg("element %d printed as '%.20s', reads back as %.9g, expected %.9g", k, p,
                     (double)v, (double)want[k]);
        p = end;
        if (k + 1 < EMB_COLS) {
            assert_true(p[0] == ',' && p[1] == ' ');
            p += 2;
        }
    }
    assert_true(p[0] == ']' && p[1] == '\n');
    res_free(&r);

    /* Integer dtypes print as integers: the first element of i64 row 3. */
    {
        int64_t v[2];
        char line[128];
        ect_fill(EC_DTYPE_I64, 106, 3 * 2, 2, v);
        CLI(&r, "get", "m", "1", "big_i64", "3");
        check_ok(&r, "get m 1 big_i64 3");
        snprintf(line, sizeof(line), "m/1/big_i64[3] = [%" PRId64 ", %" PRId64 "]\n", v[0],
                 v[1]);
        assert_string_equal(r.out, line);
        res_free(&r);
    }
    /* f16 and bf16 hold small integers exactly; they print as such. */
    {
        CLI(&r, "get", "m", "1", "w_bf16", "0");
        check_ok(&r, "get m 1 w_bf16 0");
        assert_true(strncmp(r.out, "m/1/w_bf16[0] = [", 17) == 0);
        res_free(&r);
        CLI(&r, "get", "m", "1", "w_f16", "776");
        check_ok(&r, "get m 1 w_f16 776");
        {
            uint16_t h[8];
            ect_fill(EC_DTYPE_F16, 101, 776 * 8, 8, h);
            /* Decode the first element: exact integer in [-1024, 1024]. */
            int e = (h[0] >> 10) & 0x1f, s = h[0] >> 15;
            double mag = e ? (1.0 + (h[0] & 0x3ff) / 1024.0) * (double)(1 << e) / 32768.0 : 0;
            char want0[64];
            snprintf(want0, sizeof(want0), "m/1/w_f16[776] = [%.5g,", s ? -mag : mag);
            check_contains(r.out, want0, "f16 element printed");
        }
        res_free(&r);
    }
}

/* ------------------------------------------------------------------ */
/* alias                                                               */

static void test_alias(void **state)
{
    run_res r, a;

    (void)state;
    CLI(&r, "alias", "m", "current", "1");
    check_ok(&r, "alias m current 1");
    check_contains(r.out, "current", "alias output");
    res_free(&r);

    CLI(&r, "get", "--raw", "m", "current", "emb", "0", "999", "5");
    check_ok(&r, "get via alias");
    CLI(&a, "get", "--raw", "m", "1", "emb", "0", "999", "5");
    check_ok(&a, "get via version");
    assert_int_equal(r.out_len, 3 * EMB_ROW_BYTES);
    assert_int_equal(a.out_len, r.out_len);
    assert_memory_equal(r.out, a.out, r.out_len);
    res_free(&r);
    res_free(&a);

    /* The human form names the concrete version the alias led to. */
    CLI(&r, "get", "m", "current", "emb", "1");
    check_ok(&r, "get m current emb 1");
    assert_true(strncmp(r.out, "m/1/emb[1] = [", 14) == 0);
    res_free(&r);

    /* ls shows the alias. */
    CLI(&r, "ls", "m");
    check_ok(&r, "ls m after alias");
    check_contains(r.out, "current", "ls shows the alias");
    res_free(&r);
    CLI(&r, "ls", "--json", "m");
    check_ok(&r, "ls --json m after alias");
    check_contains(r.out, "\"aliases\": [\"current\"]", "ls --json shows the alias");
    res_free(&r);

    /* A version that does not exist; a model that does not exist. */
    CLI(&r, "alias", "m", "next", "2");
    check_fail(&r, 4, "alias to a missing version");
    res_free(&r);
    CLI(&r, "alias", "nosuchmodel", "current", "1");
    check_fail(&r, 4, "alias of a missing model");
    res_free(&r);

    /* An all-digit alias would read as a version number: EC_EINVAL -> 2. */
    CLI(&r, "alias", "m", "7", "1");
    check_fail(&r, 2, "numeric alias");
    check_contains(r.err, "7", "numeric alias message names it");
    res_free(&r);

    /* Usage errors. */
    CLI(&r, "alias", "m", "current");
    check_fail(&r, 2, "alias with two arguments");
    res_free(&r);
    CLI(&r, "alias", "m", "current", "one");
    check_fail(&r, 2, "alias with a non-numeric version");
    res_free(&r);

    /* A missing alias when reading. */
    CLI(&r, "get", "m", "canary", "emb", "0");
    check_fail(&r, 4, "get via a missing alias");
    res_free(&r);
}

/* ------------------------------------------------------------------ */
/* get failures                                                        */

static void test_get_errors(void **state)
{
    run_res r;

    (void)state;
    CLI(&r, "get", "--raw", "m", "1", "emb", "0", "1000");
    check_fail(&r, 7, "row out of range");
    check_contains(r.err, "1000", "out-of-range message names the row");
    assert_int_equal(r.out_len, 0);
    res_free(&r);

    CLI(&r, "get", "nosuchmodel", "1", "emb", "0");
    check_fail(&r, 4, "unknown model");
    check_contains(r.err, "nosuchmodel", "unknown model message");
    res_free(&r);

    CLI(&r, "get", "m", "9", "emb", "0");
    check_fail(&r, 4, "unknown version");
    res_free(&r);

    CLI(&r, "get", "m", "1", "nosuchtensor", "0");
    check_fail(&r, 4, "unknown tensor");
    check_contains(r.err, "nosuchtensor", "unknown tensor message names it");
    check_contains(r.err, "emb", "unknown tensor message lists the tensors");
    check_contains(r.err, "w_f64", "unknown tensor message lists the tensors");
    res_free(&r);

    CLI(&r, "get", "m", "1", "emb", "x1");
    check_fail(&r, 2, "non-numeric row");
    check_contains(r.err, "x1", "non-numeric row message");
    res_free(&r);

    CLI(&r, "get", "m", "1", "emb", "-1");
    check_fail(&r, 2, "negative row");
    res_free(&r);

    CLI(&r, "get", "m", "1", "emb");
    check_fail(&r, 2, "get without rows");
    res_free(&r);

    CLI(&r, "frobnicate");
    check_fail(&r, 2, "unknown subcommand");
    check_contains(r.err, "frobnicate", "unknown subcommand message");
    res_free(&r);

    CLI(&r, "ls", "--bogus-option");
    if (r.rc != 2)
        fail_msg("ls --bogus-option: exit %d, expected 2", r.rc);
    res_free(&r);

    CLI_NOSOCK(&r, "--socket");
    if (r.rc != 2)
        fail_msg("embcache --socket (no argument): exit %d, expected 2", r.rc);
    res_free(&r);
}

static void test_no_daemon(void **state)
{
    run_res r;
    char *dead;

    (void)state;
    assert_true(asprintf(&dead, "%s/nobody.sock", CE.dir) > 0);
    CLI_SOCK(&r, dead, "ls");
    check_fail(&r, 3, "no daemon");
    check_contains(r.err, dead, "no-daemon message names the socket");
    check_contains(r.err, "embcached", "no-daemon message says how to start one");
    res_free(&r);

    CLI_SOCK(&r, dead, "get", "m", "1", "emb", "0");
    check_fail(&r, 3, "get with no daemon");
    res_free(&r);
    free(dead);
}

/* ------------------------------------------------------------------ */
/* --help, --version                                                   */

static void test_help(void **state)
{
    static const char *const cmds[] = {"import", "ls", "alias", "get", "stats"};
    run_res r;

    (void)state;
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        char want[64];
        /* No daemon needed: point at a dead socket. */
        CLI_SOCK(&r, "/tmp/ecli-no-such.sock", cmds[i], "--help");
        if (r.rc != 0 || r.err[0])
            fail_msg("embcache %s --help: exit %d, stderr '%s'", cmds[i], r.rc, r.err);
        snprintf(want, sizeof(want), "usage: embcache %s", cmds[i]);
        check_contains(r.out, want, "subcommand --help");
        res_free(&r);
    }
    CLI_NOSOCK(&r, "--help");
    check_ok(&r, "embcache --help");
    check_contains(r.out, "usage: embcache", "top-level --help");
    check_contains(r.out, "Exit status", "top-level --help documents exit codes");
    res_free(&r);

    CLI_NOSOCK(&r, "--version");
    check_ok(&r, "embcache --version");
    check_contains(r.out, EC_VERSION_STRING, "embcache --version");
    res_free(&r);

    /* No command at all: one line on stderr naming the commands, exit 2. */
    CLI_NOSOCK(&r, "--socket", "/tmp/x");
    assert_int_equal(r.rc, 2);
    check_contains(r.err, "missing command", "no command");
    check_contains(r.err, "--help", "no command");
    assert_non_null(strchr(r.err, '\n'));
    assert_int_equal(strchr(r.err, '\n')[1], '\0');
    res_free(&r);

    run_argv(&r, (const char *const[]){EC_TEST_EMBCACHED, "--help", NULL});
    check_ok(&r, "embcached --help");
    check_contains(r.out, "usage: embcached", "embcached --help");
    res_free(&r);
    run_argv(&r, (const char *const[]){EC_TEST_EMBCACHED, "--version", NULL});
    check_ok(&r, "embcached --version");
    check_contains(r.out, EC_VERSION_STRING, "embcached --version");
    res_free(&r);
    run_argv(&r, (const char *const[]){EC_TEST_EMBCACHED, "--shm-size", "lots", NULL});
    check_fail(&r, 2, "embcached --shm-size lots");
    res_free(&r);
}

/* ------------------------------------------------------------------ */
/* stats                                                               */

/* The value of stat `name` in human output, or -1. */
static long long stat_value(const char *out, const char *name)
{
    size_t nl = strlen(name);

    for (const char *p = out; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (!strncmp(p, name, nl) && p[nl] == ' ')
            return strtoll(p + nl, NULL, 10);
    }
    return -1;
}

static void test_stats(void **state)
{
    run_res r;
    size_t l;

    (void)state;
    CLI(&r, "stats");
    check_ok(&r, "stats");
    assert_true(stat_value(r.out, "resident_partitions") >= 0);
    assert_true(stat_value(r.out, "page_ins") >= 1); /* the gets above paged in */
    assert_true(stat_value(r.out, "checksum_failures") >= 0);
    /* Every line is "name value", up to a blank line; then a table of the
     * tensors the daemon has open: a header, and a line per tensor with its
     * mode, policy, resident bytes, rows served, hit ratio, bytes per row. */
    {
        const char *p = r.out;
        bool table = false;
        int tensors = 0;
        while (*p) {
            const char *eol = strchr(p, '\n');
            char name[128], mode[16], policy[16], hit[16];
            unsigned long long v, res, served;
            assert_non_null(eol);
            if (eol == p) {
                table = true;
                p = eol + 1;
                eol = strchr(p, '\n');
                assert_non_null(eol);
                assert_true(strncmp(p, "tensor", 6) == 0); /* the header */
            } else if (!table) {
                assert_int_equal(sscanf(p, "%127s %llu", name, &v), 2);
            } else {
                assert_int_equal(sscanf(p, "%127s %15s %15s %llu %llu %15s", name, mode, policy,
                                        &res, &served, hit),
                                 6);
                assert_true(!strcmp(mode, "rows") || !strcmp(mode, "partitions"));
                assert_true(!strcmp(policy, "auto") || !strcmp(policy, "rows") ||
                            !strcmp(policy, "partitions"));
                tensors++;
            }
            p = eol + 1;
        }
        assert_true(table && tensors >= 1); /* the gets above opened one */
    }
    res_free(&r);

    CLI(&r, "stats", "--json");
    check_ok(&r, "stats --json");
    assert_int_equal(r.out[0], '{');
    l = strlen(r.out);
    while (l && isspace((unsigned char)r.out[l - 1]))
        l--;
    assert_true(l > 0 && r.out[l - 1] == '}');
    check_contains(r.out, "\"page_ins\":", "stats --json");
    check_contains(r.out, "\"resident_partitions\":", "stats --json");
    check_contains(r.out, "\"tensors\": [", "stats --json");
    check_contains(r.out, "\"mode\": \"", "stats --json");
    check_json_balanced(r.out);
    res_free(&r);

    CLI(&r, "stats", "extra");
    check_fail(&r, 2, "stats with an argument");
    res_free(&r);
}

/* ------------------------------------------------------------------ */
/* EMBCACHE_SOCKET                                                     */

static void test_env_socket(void **state)
{
    run_res r;

    (void)state;
    assert_int_equal(setenv("EMBCACHE_SOCKET", CE.sock, 1), 0);
    CLI_NOSOCK(&r, "ls", "m");
    unsetenv("EMBCACHE_SOCKET");
    check_ok(&r, "ls m with EMBCACHE_SOCKET");
    check_contains(r.out, "emb", "ls m with EMBCACHE_SOCKET");
    res_free(&r);

    /* --socket wins over the environment. */
    assert_int_equal(setenv("EMBCACHE_SOCKET", "/tmp/ecli-no-such.sock", 1), 0);
    CLI(&r, "ls", "m");
    check_ok(&r, "--socket over EMBCACHE_SOCKET");
    res_free(&r);
    /* And the environment is what is used without it. */
    CLI_NOSOCK(&r, "ls", "m");
    unsetenv("EMBCACHE_SOCKET");
    check_fail(&r, 3, "EMBCACHE_SOCKET pointing at nothing");
    check_contains(r.err, "/tmp/ecli-no-such.sock", "EMBCACHE_SOCKET named in the message");
    res_free(&r);
}

/* ------------------------------------------------------------------ */
/* A corrupted partition file                                          */

/* Names of the *.ecp files in dir, in readdir order; returns how many. */
static int list_parts(const char *dir, char names[][256], int cap)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l > 4 && !strcmp(e->d_name + l - 4, ".ecp")) {
            assert_true(n < cap);
            snprintf(names[n++], 256, "%s", e->d_name);
        }
    }
    closedir(d);
    return n;
}

static void test_corrupt_partition(void **state)
{
    static char before[64][256], after[64][256];
    char *parts, *npy, *path = NULL, *want_other;
    int nb, na, fd;
    uint64_t data_off;
    struct stat st;
    uint8_t byte;
    run_res r;

    (void)state;
    assert_true(asprintf(&parts, "%s/parts", CE.data_dir) > 0);
    assert_true(asprintf(&npy, "%s/vec.npy", CE.dir) > 0);
    assert_int_equal(ect_write_npy(npy, EC_DTYPE_F32, 2, (const uint64_t[]){300, 8}, 7), 0);

    nb = list_parts(parts, before, 64);
    CLI(&r, "import", "--model", "corr", "--version", "1", npy);
    check_ok(&r, "import corr 1");
    assert_string_equal(r.out, "imported corr version 1: 1 tensor(s)\n");
    res_free(&r);
    na = list_parts(parts, after, 64);
    assert_int_equal(na, nb + 1);
    for (int i = 0; i < na && !path; i++) {
        bool old = false;
        for (int k = 0; k < nb; k++)
            old = old || !strcmp(after[i], before[k]);
        if (!old)
            assert_true(asprintf(&path, "%s/%s", parts, after[i]) > 0);
    }
    assert_non_null(path);

    /* Flip the first data byte (data_off is at byte 136 of the header). */
    fd = open(path, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(pread(fd, &data_off, 8, 136), 8);
    assert_true(data_off >= 8192 && data_off % 4096 == 0 && data_off < (uint64_t)st.st_size);
    assert_int_equal(pread(fd, &byte, 1, (off_t)data_off), 1);
    byte ^= 0x5a;
    assert_int_equal(pwrite(fd, &byte, 1, (off_t)data_off), 1);
    assert_int_equal(fsync(fd), 0);
    close(fd);

    CLI(&r, "get", "--raw", "corr", "1", "vec", "5");
    check_fail(&r, 8, "get from a corrupted partition");
    check_contains(r.err, "checksum", "corrupted partition message");
    assert_int_equal(r.out_len, 0);
    res_free(&r);
    /* Still failing on a second try: never served. */
    CLI(&r, "get", "corr", "1", "vec", "299");
    check_fail(&r, 8, "get from a corrupted partition, again");
    res_free(&r);

    /* The daemon keeps serving the other model. */
    want_other = rows_of(EC_DTYPE_F32, EMB_SEED, EMB_COLS, 500, 1);
    CLI(&r, "get", "--raw", "m", "1", "emb", "500");
    check_ok(&r, "get from m after the checksum failure");
    assert_int_equal(r.out_len, EMB_ROW_BYTES);
    assert_memory_equal(r.out, want_other, EMB_ROW_BYTES);
    res_free(&r);
    free(want_other);

    CLI(&r, "stats");
    check_ok(&r, "stats after the checksum failure");
    if (stat_value(r.out, "checksum_failures") < 1)
        fail_msg("stats: checksum_failures < 1 after a checksum failure:\n%s", r.out);
    res_free(&r);

    free(path);
    free(npy);
    free(parts);
}

/* ------------------------------------------------------------------ */
/* SIGTERM                                                             */

static void test_sigterm(void **state)
{
    struct stat st;
    int status;

    (void)state;
    assert_int_equal(stat(CE.sock, &st), 0);
    status = ect_daemon_stop(CE.daemon);
    CE.daemon = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("embcached after SIGTERM: wait status 0x%x, expected exit 0", status);
    if (stat(CE.sock, &st) == 0 || errno != ENOENT)
        fail_msg("embcached left its socket %s behind", CE.sock);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_import),
        cmocka_unit_test(test_ls),
        cmocka_unit_test(test_get_raw_rows),
        cmocka_unit_test(test_get_raw_after_rows),
        cmocka_unit_test(test_get_safetensors_raw),
        cmocka_unit_test(test_get_human),
        cmocka_unit_test(test_alias),
        cmocka_unit_test(test_get_errors),
        cmocka_unit_test(test_import_errors),
        cmocka_unit_test(test_import_bad_files),
        cmocka_unit_test(test_no_daemon),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_env_socket),
        cmocka_unit_test(test_corrupt_partition),
        cmocka_unit_test(test_sigterm),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
