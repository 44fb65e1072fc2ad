/*
 * cli_dynamic.c - dynamic tables from the command line
 * (include/embcache_dynamic.h): `embcache dynamic`, `put`, `del`,
 * `update`, `snapshot`, and the dynamic-table section of `embcache stats`
 * (with how stale each table's approximate index is, if it has one).
 *
 * `embcache update` reads a stream of updates from a file or standard
 * input in this framing (all little-endian), one record per batch:
 *
 *   u32 magic "ECU1" (0x31554345) | u8 op (1 put, 2 delete) | 3 zero bytes
 *   | u32 n (1..EC_ROWS_BATCH_MAX) | u32 row_bytes (put: the table's row
 *   size; delete: 0) | n x i64 keys | put: n rows of row_bytes
 *
 * or from a pair of .npy files (--keys K.npy --rows R.npy), or a
 * safetensors file holding both (--safetensors F: tensors "keys" and
 * "rows", or --keys-name/--rows-name), cut into batches of --batch rows. Each batch is one ec_rows_put/ec_rows_delete:
 * logged by the daemon whole or not at all. A record that is malformed is
 * refused whole, and the message names it (its number and byte offset);
 * a record whose header is readable but wrong (row size, count) is skipped
 * and the rest go on; an unreadable header stops the stream. A progress
 * line goes to standard error when it is a terminal, or with --progress.
 *
 * Part of the embcache command-line tool (tools/embcache.c dispatches here;
 * one process, one thread). .npy and safetensors files are parsed by the
 * daemon's own parsers (core/tensorfile.h), as `embcache search` does.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "core/tensorfile.h"
#include "embcache.h"

#define UPDATE_MAGIC 0x31554345u
#define BATCH_DEFAULT 65536u

static const char *dsock;
static char prog[48];

static int dfail(int rc, const char *hint)
{
    return cli_fail(prog, rc, hint);
}

static int usage_err(const char *what)
{
    fprintf(stderr, "%s: %s (see '%s --help')\n", prog, what, prog);
    return EXIT_USAGE;
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int open_table(ec_client **c, ec_tensor **t, char **argv)
{
    int rc = ec_client_connect(dsock, c);

    if (rc)
        return dfail(rc, NULL);
    if ((rc = ec_tensor_resolve(*c, argv[0], argv[1], argv[2], t))) {
        ec_client_close(*c);
        return dfail(rc, NULL);
    }
    if (ec_tensor_cache_mode(*t) != EC_CACHE_DYNAMIC) {
        fprintf(stderr, "%s: tensor '%s' of model '%s' version %s is not a dynamic table; "
                        "make it one with 'embcache dynamic %s %s %s'\n",
                prog, argv[2], argv[0], argv[1], argv[0], argv[1], argv[2]);
        ec_tensor_release(*t);
        ec_client_close(*c);
        return EXIT_NOTFOUND;
    }
    return EXIT_OK;
}

/* A whole array (malloc'd, native byte order) and its header: the .npy
 * file path (name NULL), or the tensor `name` of the safetensors file
 * path. */
static int read_array(const char *path, const char *name, ec_tf_tensor *out, uint8_t **data)
{
    ec_tf_list l = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc = EXIT_BADINPUT;
    uint8_t *raw = NULL;
    size_t i = 0;

    if (fd < 0) {
        fprintf(stderr, "%s: cannot open %s: %s\n", prog, path, strerror(errno));
        return errno == ENOENT ? EXIT_NOTFOUND : EXIT_BADINPUT;
    }
    if (name ? ec_safetensors_parse_fd(fd, &l) : ec_npy_parse_fd(fd, "x", &l)) {
        fprintf(stderr, "%s: %s: %s\n", prog, path, ec_last_error());
        goto out;
    }
    while (name && i < l.n && strcmp(l.tensors[i].name, name))
        i++;
    if (i == l.n) {
        fprintf(stderr, "%s: %s has no tensor '%s' (it has:", prog, path, name);
        for (size_t j = 0; j < l.n && j < 8; j++)
            fprintf(stderr, " '%s'", l.tensors[j].name);
        fprintf(stderr, "%s); name it with --keys-name or --rows-name\n", l.n > 8 ? " ..." : "");
        goto out;
    }
    *out = l.tensors[i];
    if (!(raw = malloc(out->data_len ? out->data_len : 1)) ||
        pread(fd, raw, out->data_len, (off_t)out->data_off) != (ssize_t)out->data_len) {
        fprintf(stderr, "%s: cannot read %s\n", prog, path);
        free(raw);
        goto out;
    }
    if (out->byteswap) {
        size_t esz = ec_dtype_size(out->dtype);
        for (uint64_t e = 0; esz > 1 && e < out->data_len; e += esz)
            for (size_t j = 0; j < esz / 2; j++) {
                uint8_t x = raw[e + j];
                raw[e + j] = raw[e + esz - 1 - j];
                raw[e + esz - 1 - j] = x;
            }
    }
    *data = raw;
    rc = EXIT_OK;
out:
    ec_tf_list_clear(&l);
    close(fd);
    return rc;
}

/* --keys K.npy (name NULL) or the tensor `name` of a safetensors file:
 * int64 (or int32) keys, one dimension. */
static int read_keys(const char *path, const char *name, int64_t **keys, size_t *n)
{
    ec_tf_tensor t;
    uint8_t *raw;
    int rc = read_array(path, name, &t, &raw);

    if (rc)
        return rc;
    if ((t.dtype != EC_DTYPE_I64 && t.dtype != EC_DTYPE_I32) || t.ndim != 1) {
        fprintf(stderr, "%s: %s%s%s must hold a 1-D array of int64 keys\n", prog, path,
                name ? ": tensor " : "", name ? name : "");
        free(raw);
        return EXIT_BADINPUT;
    }
    *n = (size_t)t.shape[0];
    if (t.dtype == EC_DTYPE_I32) {
        int64_t *k = malloc((*n ? *n : 1) * 8);
        for (size_t i = 0; k && i < *n; i++) {
            int32_t v;
            memcpy(&v, raw + i * 4, 4);
            k[i] = v;
        }
        free(raw);
        if (!k)
            return EXIT_FAIL;
        *keys = k;
        return EXIT_OK;
    }
    *keys = (int64_t *)(void *)raw;
    return EXIT_OK;
}

/* ------------------------------------------------------------------ */

static int cmd_dynamic(int argc, char **argv)
{
    static const struct option o[] = {
        {"capacity", required_argument, NULL, 'c'},
        {"policy", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    uint64_t capacity = 0;
    ec_dyn_policy policy = EC_DYN_REFUSE;
    ec_client *c;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "c:p:h", o, NULL)) != -1) {
        switch (ch) {
        case 'c':
            if (cli_parse_u64(prog, "--capacity", optarg, 1, 1ull << 36, &capacity))
                return EXIT_USAGE;
            break;
        case 'p':
            if (!strcmp(optarg, "refuse"))
                policy = EC_DYN_REFUSE;
            else if (!strcmp(optarg, "evict-lru"))
                policy = EC_DYN_EVICT_LRU;
            else
                return usage_err("--policy must be refuse or evict-lru");
            break;
        case 'h':
            printf("usage: embcache dynamic MODEL VERSION TENSOR [--capacity N] "
                   "[--policy refuse|evict-lru]\n\n"
                   "Make TENSOR of MODEL VERSION (a number or an alias) a dynamic table: rows\n"
                   "by int64 key, updated online (embcache put/del/update), logged before\n"
                   "they are acknowledged. Its rows become keys 0..rows-1 (or the keys of a\n"
                   "tensor TENSOR.keys of the version). At most N keys (default twice its\n"
                   "rows); when full, refuse new keys or evict the least recently written.\n");
            return EXIT_OK;
        default:
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 3)
        return usage_err("needs MODEL VERSION TENSOR");
    if ((rc = ec_client_connect(dsock, &c)))
        return dfail(rc, NULL);
    rc = ec_model_dynamic(c, argv[optind], argv[optind + 1], argv[optind + 2], capacity, policy);
    ec_client_close(c);
    return rc ? dfail(rc, NULL) : EXIT_OK;
}

static void progress(bool show, uint64_t records, uint64_t rows, double t0, bool end)
{
    double dt = now_s() - t0;

    if (!show)
        return;
    fprintf(stderr, "\r%s: %" PRIu64 " batches, %" PRIu64 " rows, %.0f rows/s%s", prog, records,
            rows, dt > 0 ? (double)rows / dt : 0.0, end ? "\n" : "");
}

/* Put (or delete) keys[0..n) with rows, in batches. */
static int send_batches(ec_tensor *t, const int64_t *keys, const uint8_t *rows, size_t n,
                        uint64_t row_bytes, size_t batch, bool del, bool show, uint64_t *done)
{
    double t0 = now_s(), last = 0;

    for (size_t i = 0; i < n; i += batch) {
        size_t b = n - i < batch ? n - i : batch;
        ec_rows_result res;
        int rc = del ? ec_rows_delete(t, keys + i, b, &res)
                     : ec_rows_put(t, keys + i, b, rows + i * row_bytes, b * row_bytes, &res);
        if (rc) {
            progress(show, i / batch, i, t0, true);
            fprintf(stderr, "%s: batch %zu (rows %zu..%zu) refused, nothing of it applied; "
                            "the %zu rows before it were\n", prog, i / batch, i, i + b - 1, i);
            return dfail(rc, NULL);
        }
        *done += b;
        if (now_s() - last > 0.25) {
            progress(show, i / batch + 1, i + b, t0, false);
            last = now_s();
        }
    }
    progress(show, (n + batch - 1) / batch, n, t0, true);
    return EXIT_OK;
}

/* The file options put, del and update share. */
struct file_opts {
    const char *kpath, *rpath, *spath, *kname, *rname;
    uint64_t batch;
};

/* Take one of them: 1 taken, 0 not one of them, -1 a bad value (said). */
static int file_opt(int ch, const char *arg, struct file_opts *f)
{
    switch (ch) {
    case 'k': f->kpath = arg; return 1;
    case 'r': f->rpath = arg; return 1;
    case 's': f->spath = arg; return 1;
    case 'K': f->kname = arg; return 1;
    case 'R': f->rname = arg; return 1;
    case 'b':
        return cli_parse_u64(prog, "--batch", arg, 1, EC_ROWS_BATCH_MAX, &f->batch) ? -1 : 1;
    default: return 0;
    }
}

#define FILE_OPTIONS                                              \
    {"keys", required_argument, NULL, 'k'},                       \
    {"rows", required_argument, NULL, 'r'},                       \
    {"safetensors", required_argument, NULL, 's'},                \
    {"keys-name", required_argument, NULL, 'K'},                  \
    {"rows-name", required_argument, NULL, 'R'},                  \
    {"batch", required_argument, NULL, 'b'}

/* put or del with the options parsed: args are MODEL VERSION TENSOR, then
 * (del without a key file) the keys themselves. */
static int put_del_run(char **args, int nargs, struct file_opts *f, bool del)
{
    const char *kpath = f->kpath, *rpath = f->rpath;
    const char *kname = f->kname ? f->kname : "keys", *rname = f->rname ? f->rname : "rows";
    uint64_t done = 0;
    int64_t *keys = NULL;
    uint8_t *rows = NULL;
    size_t n = 0;
    ec_tensor_info info;
    ec_client *c;
    ec_tensor *t;
    int rc;

    if (f->spath && (kpath || rpath))
        return usage_err("--safetensors replaces --keys and --rows; give one or the other");
    if (f->spath) {
        kpath = f->spath;
        rpath = del ? NULL : f->spath;
    } else {
        kname = rname = NULL; /* .npy files */
    }
    if (nargs < 3 || (!del && (nargs != 3 || !kpath || !rpath)) ||
        (del && !kpath && nargs == 3) || (del && kpath && nargs != 3))
        return usage_err(del ? "needs MODEL VERSION TENSOR and KEY..., --keys K.npy or "
                               "--safetensors F"
                             : "needs MODEL VERSION TENSOR and --keys K.npy --rows R.npy, or "
                               "--safetensors F");
    if (kpath && (rc = read_keys(kpath, kname, &keys, &n)))
        return rc;
    if (del && !kpath) {
        n = (size_t)(nargs - 3);
        keys = malloc(n * 8);
        for (size_t i = 0; keys && i < n; i++)
            if (cli_parse_i64(args[3 + i], &keys[i])) {
                fprintf(stderr, "%s: '%s' is not an int64 key\n", prog, args[3 + i]);
                free(keys);
                return EXIT_USAGE;
            }
    }
    if ((rc = open_table(&c, &t, args))) {
        free(keys);
        return rc;
    }
    ec_tensor_info_get(t, &info);
    if (!del) {
        ec_tf_tensor rt;
        uint64_t row_elems = 1;
        if ((rc = read_array(rpath, rname, &rt, &rows)))
            goto out;
        for (uint32_t i = 1; i < info.ndim; i++)
            row_elems *= info.shape[i];
        if (rt.dtype != info.dtype || rt.ndim < 1 || rt.shape[0] != n ||
            rt.data_len != n * row_elems * ec_dtype_size(info.dtype)) {
            fprintf(stderr, "%s: %s%s%s must hold %zu rows of %" PRIu64 " %s values (the "
                            "table's rows) to go with the keys of %s%s%s\n",
                    prog, rpath, rname ? ": tensor " : "", rname ? rname : "", n, row_elems,
                    ec_dtype_name(info.dtype), kpath, kname ? ": tensor " : "",
                    kname ? kname : "");
            rc = EXIT_BADINPUT;
            goto out;
        }
    }
    rc = send_batches(t, keys, rows, n, info.row_bytes, f->batch, del, isatty(2), &done);
    if (rc == EXIT_OK)
        printf("%s %" PRIu64 " rows\n", del ? "deleted or absent:" : "put", done);
out:
    free(keys);
    free(rows);
    ec_tensor_release(t);
    ec_client_close(c);
    return rc;
}


static int cmd_put_del(int argc, char **argv, bool del)
{
    static const struct option o[] = {
        FILE_OPTIONS,
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct file_opts f = {.batch = BATCH_DEFAULT};
    int ch, r;

    while ((ch = getopt_long(argc, argv, "k:r:b:h", o, NULL)) != -1) {
        if (ch == 'h') {
            if (del)
                printf("usage: embcache del MODEL VERSION TENSOR (KEY... | --keys K.npy |\n"
                       "                    --safetensors F [--keys-name NAME])\n\n"
                       "Delete keys of a dynamic table (absent keys are counted, not an error).\n");
            else
                printf("usage: embcache put MODEL VERSION TENSOR --keys K.npy --rows R.npy "
                       "[--batch N]\n"
                       "       embcache put MODEL VERSION TENSOR --safetensors F [--keys-name K]"
                       " [--rows-name R]\n\nInsert or update rows of a dynamic table: K.npy "
                       "holds int64 keys [n], R.npy\nthe rows [n, ...] in the tensor's dtype and "
                       "row shape; or one safetensors file\nholds both, as tensors 'keys' and "
                       "'rows' unless named. Sent in batches of N\n(default 65536); each is "
                       "logged whole before it is acknowledged.\n");
            return EXIT_OK;
        }
        if ((r = file_opt(ch, optarg, &f)) <= 0)
            return EXIT_USAGE;
    }
    return put_del_run(argv + optind, argc - optind, &f, del);
}

static int cmd_put(int argc, char **argv)
{
    return cmd_put_del(argc, argv, false);
}

static int cmd_del(int argc, char **argv)
{
    return cmd_put_del(argc, argv, true);
}

/* Read exactly n bytes; 0 at a clean end (nothing read), 1 done, -1 short. */
static int read_full(FILE *f, void *p, size_t n)
{
    size_t got = fread(p, 1, n, f);

    if (got == n)
        return 1;
    return got == 0 && feof(f) ? 0 : -1;
}

/* The framed stream (see the top of this file). */
static int update_stream(ec_tensor *t, FILE *f, const char *name, uint64_t row_bytes, bool show)
{
    uint64_t off = 0, records = 0, rows_total = 0, bad = 0;
    double t0 = now_s(), last = 0;
    uint8_t *buf = NULL;
    size_t cap = 0;
    int rc = EXIT_OK;

    for (;; records++) {
        uint8_t h[16];
        uint32_t magic, n, rb;
        uint8_t op;
        uint64_t body;
        int r = read_full(f, h, sizeof(h));
        ec_rows_result res;
        if (r == 0)
            break;
        if (r < 0) {
            fprintf(stderr, "%s: %s: record %" PRIu64 " at byte %" PRIu64 ": the stream ends "
                            "inside its header; it was not applied\n", prog, name, records, off);
            rc = EXIT_BADINPUT;
            break;
        }
        memcpy(&magic, h, 4);
        op = h[4];
        memcpy(&n, h + 8, 4);
        memcpy(&rb, h + 12, 4);
        if (magic != UPDATE_MAGIC || (op != 1 && op != 2) || h[5] || h[6] || h[7]) {
            fprintf(stderr, "%s: %s: record %" PRIu64 " at byte %" PRIu64 ": not a record "
                            "header (magic 0x%08x, op %u); stopped here (see 'embcache update "
                            "--help' for the framing)\n", prog, name, records, off, magic, op);
            rc = EXIT_BADINPUT;
            break;
        }
        if (n == 0 || n > EC_ROWS_BATCH_MAX) {
            fprintf(stderr, "%s: %s: record %" PRIu64 " at byte %" PRIu64 ": %u rows (1..%u "
                            "allowed); stopped here\n", prog, name, records, off, n,
                    EC_ROWS_BATCH_MAX);
            rc = EXIT_BADINPUT;
            break;
        }
        body = (uint64_t)n * 8 + (op == 1 ? (uint64_t)n * rb : 0);
        if (body > cap) {
            uint8_t *nb = realloc(buf, body);
            if (!nb) {
                fprintf(stderr, "%s: out of memory for record %" PRIu64 "\n", prog, records);
                rc = EXIT_FAIL;
                break;
            }
            buf = nb;
            cap = body;
        }
        if (read_full(f, buf, body) != 1) {
            fprintf(stderr, "%s: %s: record %" PRIu64 " at byte %" PRIu64 ": the stream ends "
                            "inside its %" PRIu64 " bytes of keys and rows; it was not "
                            "applied\n", prog, name, records, off, body);
            rc = EXIT_BADINPUT;
            break;
        }
        if ((op == 1 && rb != row_bytes) || (op == 2 && rb != 0)) {
            fprintf(stderr, "%s: %s: record %" PRIu64 " at byte %" PRIu64 ": rows of %u bytes, "
                            "the table's have %" PRIu64 "; record refused, going on\n",
                    prog, name, records, off, rb, op == 1 ? row_bytes : 0);
            bad++;
            off += 16 + body;
            continue;
        }
        {
            int64_t *keys = (int64_t *)(void *)buf;
            int e = op == 1 ? ec_rows_put(t, keys, n, buf + (size_t)n * 8, (size_t)n * rb, &res)
                            : ec_rows_delete(t, keys, n, &res);
            if (e) {
                progress(show, records, rows_total, t0, true);
                fprintf(stderr, "%s: %s: record %" PRIu64 " at byte %" PRIu64 " refused, nothing "
                                "of it applied: ", prog, name, records, off);
                rc = dfail(e, NULL);
                break;
            }
        }
        rows_total += n;
        off += 16 + body;
        if (now_s() - last > 0.25) {
            progress(show, records + 1, rows_total, t0, false);
            last = now_s();
        }
    }
    if (rc == EXIT_OK || rc == EXIT_BADINPUT)
        progress(show, records, rows_total, t0, true);
    free(buf);
    if (rc == EXIT_OK && bad) {
        fprintf(stderr, "%s: %" PRIu64 " records refused (above); the others applied\n", prog,
                bad);
        rc = EXIT_BADINPUT;
    }
    if (rc == EXIT_OK)
        printf("applied %" PRIu64 " rows in %" PRIu64 " records\n", rows_total, records);
    return rc;
}

static int cmd_update(int argc, char **argv)
{
    static const struct option o[] = {
        FILE_OPTIONS,
        {"progress", no_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct file_opts f = {.batch = BATCH_DEFAULT};
    bool show = isatty(2);
    ec_tensor_info info;
    ec_client *c;
    ec_tensor *t;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "k:r:b:Ph", o, NULL)) != -1) {
        if ((rc = file_opt(ch, optarg, &f)) < 0)
            return EXIT_USAGE;
        if (rc > 0)
            continue;
        switch (ch) {
        case 'P': show = true; break;
        case 'h':
            printf("usage: embcache update MODEL VERSION TENSOR [FILE | -] [--progress]\n"
                   "       embcache update MODEL VERSION TENSOR --keys K.npy --rows R.npy "
                   "[--batch N]\n"
                   "       embcache update MODEL VERSION TENSOR --safetensors F [--keys-name K]\n"
                   "                       [--rows-name R] [--batch N]\n\n"
                   "Apply a stream of updates to a dynamic table, batch by batch; each batch\n"
                   "is logged whole before it is acknowledged, or refused whole. FILE (or\n"
                   "standard input) holds records, all little-endian:\n"
                   "  u32 magic 0x31554345 (\"ECU1\") | u8 op (1 put, 2 delete) | 3 zero bytes\n"
                   "  | u32 n (1..%u) | u32 row_bytes (put: the table's; delete: 0)\n"
                   "  | n int64 keys | put only: n rows of row_bytes\n"
                   "A record with a wrong row size is refused and named, and the stream goes\n"
                   "on; a header that is not one stops it (exit 5).\n", EC_ROWS_BATCH_MAX);
            return EXIT_OK;
        default:
            return EXIT_USAGE;
        }
    }
    if (argc - optind < 3 || argc - optind > 4 || (!!f.kpath != !!f.rpath) ||
        ((f.kpath || f.spath) && argc - optind != 3) || (f.spath && f.kpath) ||
        ((f.kname || f.rname) && !f.spath))
        return usage_err("needs MODEL VERSION TENSOR and FILE, -, --keys and --rows, or "
                         "--safetensors (with --keys-name/--rows-name)");
    if (f.kpath || f.spath)
        return put_del_run(argv + optind, 3, &f, false);
    if ((rc = open_table(&c, &t, argv + optind)))
        return rc;
    ec_tensor_info_get(t, &info);
    {
        const char *path = argc - optind == 4 ? argv[optind + 3] : "-";
        FILE *in = strcmp(path, "-") ? fopen(path, "rb") : stdin;
        if (!in) {
            fprintf(stderr, "%s: cannot open %s: %s\n", prog, path, strerror(errno));
            rc = errno == ENOENT ? EXIT_NOTFOUND : EXIT_BADINPUT;
        } else {
            rc = update_stream(t, in, strcmp(path, "-") ? path : "standard input", info.row_bytes,
                               show);
            if (in != stdin)
                fclose(in);
        }
    }
    ec_tensor_release(t);
    ec_client_close(c);
    return rc;
}

static int cmd_snapshot(int argc, char **argv)
{
    static const struct option o[] = {
        {"as", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    uint64_t as = 0;
    int64_t v = 0;
    ec_client *c;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "a:h", o, NULL)) != -1) {
        switch (ch) {
        case 'a':
            if (cli_parse_u64(prog, "--as", optarg, 1, INT64_MAX, &as))
                return EXIT_USAGE;
            break;
        case 'h':
            printf("usage: embcache snapshot MODEL VERSION [--as NEW]\n\n"
                   "Fold the updates of every dynamic table of MODEL VERSION into a new,\n"
                   "immutable version NEW (default: the next number): each dynamic tensor T\n"
                   "as its rows and T.keys, the others copied. The tables then rebuild from\n"
                   "it at start, and the log before it is removed. Prints the new version.\n");
            return EXIT_OK;
        default:
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 2)
        return usage_err("needs MODEL VERSION");
    if ((rc = ec_client_connect(dsock, &c)))
        return dfail(rc, NULL);
    rc = ec_model_snapshot(c, argv[optind], argv[optind + 1], (int64_t)as, &v);
    ec_client_close(c);
    if (rc)
        return dfail(rc, NULL);
    printf("%" PRId64 "\n", v);
    return EXIT_OK;
}

int cli_dynamic_main(const char *cmd, int argc, char **argv, const char *socket_path)
{
    static const struct cli_cmd cmds[] = {
        {"dynamic", cmd_dynamic}, {"put", cmd_put}, {"del", cmd_del},
        {"update", cmd_update},   {"snapshot", cmd_snapshot},
    };

    dsock = socket_path;
    if (!strncmp(cmd, "embcache ", 9))
        cmd += 9;
    snprintf(prog, sizeof(prog), "embcache %s", cmd);
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        if (!strcmp(cmds[i].name, cmd))
            return cmds[i].fn(argc, argv);
    return usage_err("unknown command");
}

/* ------------------------------------------------------------------ */
/* `embcache stats`                                                    */

struct stats_ctx {
    ec_client *c;
    bool json, first;
};

/* How stale the table's index is: 1 and *sn, 0 when it has none, -1 when
 * it cannot be read (the message in ec_last_error(): an index built before
 * the table was made dynamic, say). */
static int index_staleness(ec_client *c, const ec_dyn_table_stat *ts, ec_index_staleness *sn)
{
    char v[32];
    ec_tensor *t = NULL;
    int rc;

    snprintf(v, sizeof(v), "%" PRId64, ts->version);
    if ((rc = ec_tensor_resolve(c, ts->model, v, ts->tensor, &t)) == 0)
        rc = ec_index_staleness_get(t, sn);
    ec_tensor_release(t);
    return rc == 0 ? 1 : rc == EC_ENOENT ? 0 : -1;
}

static int stat_line(const ec_dyn_table_stat *t, void *arg)
{
    struct stats_ctx *x = arg;
    ec_index_staleness sn;
    char hb[32];
    int ix = index_staleness(x->c, t, &sn);

    cli_human_bytes(t->bytes, hb, sizeof(hb));
    if (x->json) {
        printf("%s{\"model\":", x->first ? "" : ",");
        cli_json_str(t->model);
        printf(",\"version\":%" PRId64 ",\"tensor\":", t->version);
        cli_json_str(t->tensor);
        printf(",\"capacity\":%" PRIu64 ",\"keys\":%" PRIu64 ",\"bytes\":%" PRIu64
               ",\"policy\":\"%s\",\"lsn\":%" PRIu64 ",\"base_lsn\":%" PRIu64 ",\"puts\":%" PRIu64
               ",\"inserts\":%" PRIu64 ",\"updates\":%" PRIu64 ",\"deletes\":%" PRIu64
               ",\"evictions\":%" PRIu64 ",\"refused\":%" PRIu64,
               t->capacity, t->keys, t->bytes,
               t->policy == EC_DYN_EVICT_LRU ? "evict-lru" : "refuse", t->lsn, t->base_lsn,
               t->puts, t->inserts, t->updates, t->deletes, t->evictions, t->refused);
        /* The approximate index: null when none; stale_rows are the live
         * keys written since its build (ec_index_staleness_get). */
        printf(",\"index\":");
        if (ix == 1) {
            printf("{\"built_lsn\":%" PRIu64 ",\"table_lsn\":%" PRIu64 ",\"live_keys\":%" PRIu64
                   ",\"stale_rows\":%" PRIu64 "}", sn.built_lsn, sn.table_lsn, sn.live_keys,
                   sn.stale_rows);
        } else if (ix < 0) {
            printf("{\"error\":");
            cli_json_str(ec_last_error());
            printf("}");
        } else {
            printf("null");
        }
        printf("}");
    } else {
        if (x->first)
            printf("dynamic tables:\n");
        printf("  %s/%" PRId64 "/%s: %" PRIu64 " of %" PRIu64 " keys (%s, %s), lsn %" PRIu64
               " (base %" PRIu64 "), %" PRIu64 " puts, %" PRIu64 " deletes, %" PRIu64
               " evictions, %" PRIu64 " refused\n",
               t->model, t->version, t->tensor, t->keys, t->capacity, hb,
               t->policy == EC_DYN_EVICT_LRU ? "evict-lru" : "refuse", t->lsn, t->base_lsn,
               t->puts, t->deletes, t->evictions, t->refused);
        if (ix == 1)
            cli_index_staleness_line(&sn, "    index: ");
        else if (ix < 0)
            printf("    index: %s\n", ec_last_error());
    }
    x->first = false;
    return 0;
}

int cli_dynamic_stats(ec_client *c, bool json)
{
    struct stats_ctx x = {.c = c, .json = json, .first = true};
    int rc;

    if (json)
        printf(",\"dynamic\":[");
    rc = ec_client_dyn_tables(c, stat_line, &x);
    if (json)
        printf("]");
    return rc;
}
