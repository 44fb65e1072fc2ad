/*
 * safetensors.c - the .safetensors reader (see tensorfile.h).
 *
 * A .safetensors file is a u64 little-endian header length N, N bytes of a
 * UTF-8 JSON object, then the data section. Each key of the object but
 * "__metadata__" names a tensor:
 *     "w": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}
 * with offsets relative to the data section (which starts at 8 + N);
 * "__metadata__" maps strings to strings and is ignored.
 *
 * The JSON is parsed by SQLite's JSON1 functions in a private in-memory
 * connection (json_valid, json_type, json_each) instead of a hand-written
 * parser: each object is walked with json_each and every field is checked
 * for presence, uniqueness and JSON type before it is used, shape entries
 * and offsets are checked for range and overflow, and the data ranges are
 * checked against the data section and against each other. The parsing
 * core (parse_header) sees only bytes and lengths, so
 * ec_safetensors_parse_buf can be driven by a fuzzer. Called by the
 * importer thread of the daemon, by tests and fuzz targets; no shared state
 * (each call opens and closes its own connection).
 */
#include "core/tensorfile.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "common/err.h"

#define ST_PREFIX 8u

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
static int utf8_valid(const unsigned char *s, size_t len, size_t *bad)
{
    size_t i = 0;

    while (i < len) {
        unsigned c = s[i], n, cp, min;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) {
            n = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            goto bad;
        }
        if (len - i <= n)
            goto bad;
        for (unsigned k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                goto bad;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            goto bad;
        i += n + 1;
    }
    return 1;
bad:
    *bad = i;
    return 0;
}

/* "\u0000" as an escape (SQLite would cut a string short at it). JSON
 * has backslashes only inside strings, each starting a two-character
 * escape, so a scan that skips escape pairs finds exactly the real ones. */
static int has_escaped_nul(const char *s, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] != '\\')
            continue;
        if (s[i + 1] == 'u' && len - i >= 6 && !memcmp(s + i + 2, "0000", 4))
            return 1;
        i++; /* skip the escaped character */
    }
    return 0;
}

static const struct {
    const char *name;
    ec_dtype dtype;
} st_dtypes[] = {
    {"F32", EC_DTYPE_F32}, {"F16", EC_DTYPE_F16}, {"BF16", EC_DTYPE_BF16},
    {"F64", EC_DTYPE_F64}, {"I8", EC_DTYPE_I8},   {"U8", EC_DTYPE_U8},
    {"I32", EC_DTYPE_I32}, {"I64", EC_DTYPE_I64},
};

const char *ec_safetensors_dtype_name(ec_dtype dtype)
{
    for (size_t i = 0; i < sizeof(st_dtypes) / sizeof(st_dtypes[0]); i++)
        if (st_dtypes[i].dtype == dtype)
            return st_dtypes[i].name;
    return NULL;
}

/* The parse state: one connection and its statements. */
struct st_parser {
    sqlite3 *db;
    sqlite3_stmt *top;    /* json_each over the header */
    sqlite3_stmt *fields; /* json_each over one object */
    sqlite3_stmt *items;  /* json_each over one array, in order */
    uint64_t data_len;    /* bytes in the data section */
    uint64_t data_start;  /* 8 + N */
};

static int sql_err(struct st_parser *ps, const char *what)
{
    return ec_seterr(EC_EINTERNAL, "safetensors: SQLite JSON parsing failed (%s): %s", what,
                     ps->db ? sqlite3_errmsg(ps->db) : "no connection");
}

/* A json_each row's text column, rejecting embedded NULs. */
static const char *col_text(sqlite3_stmt *st, int col, size_t *len)
{
    const char *s = (const char *)sqlite3_column_text(st, col);
    int n = sqlite3_column_bytes(st, col);

    if (!s || n < 0 || strlen(s) != (size_t)n)
        return NULL;
    *len = (size_t)n;
    return s;
}

/* Read a JSON array of non-negative integers (json text in `json`).
 * Returns the count in *n, or an error naming `what` of tensor `tname`. */
static int read_uint_array(struct st_parser *ps, const char *json, int json_len,
                           const char *tname, const char *what, uint64_t *vals,
                           uint32_t max, uint32_t *n)
{
    uint32_t count = 0;
    int rc, step;

    sqlite3_reset(ps->items);
    if (sqlite3_bind_text(ps->items, 1, json, json_len, SQLITE_STATIC) != SQLITE_OK)
        return sql_err(ps, "bind");
    while ((step = sqlite3_step(ps->items)) == SQLITE_ROW) {
        size_t tl = 0;
        const char *type = col_text(ps->items, 0, &tl);
        sqlite3_int64 v;

        if (!type || strcmp(type, "integer") != 0 ||
            sqlite3_column_type(ps->items, 1) != SQLITE_INTEGER) {
            rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s': every '%s' entry must be "
                           "a non-negative integer below 2^63 (found a %s)", tname, what,
                           type ? type : "?");
            goto out;
        }
        v = sqlite3_column_int64(ps->items, 1);
        if (v < 0) {
            rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s': '%s' entry %lld is "
                           "negative", tname, what, (long long)v);
            goto out;
        }
        if (count >= max) {
            rc = ec_seterr(EC_EFORMAT,
                           "safetensors: tensor '%s': '%s' has more than %u entries%s", tname,
                           what, max, max == EC_MAX_DIMS ? "; reshape to at most 8 dims" : "");
            goto out;
        }
        vals[count++] = (uint64_t)v;
    }
    if (step != SQLITE_DONE) {
        rc = sql_err(ps, "array");
        goto out;
    }
    *n = count;
    rc = 0;
out:
    sqlite3_reset(ps->items);
    sqlite3_clear_bindings(ps->items);
    return rc;
}

/* Parse one tensor object (JSON text) into t. */
static int parse_tensor(struct st_parser *ps, const char *name, const char *json, int json_len,
                        ec_tf_tensor *t)
{
    const char *dtype_s = NULL;
    char *dtype_copy = NULL, *shape_json = NULL, *offs_json = NULL;
    int shape_len = 0, offs_len = 0, step, rc;
    uint64_t offs[2], bytes;
    uint32_t noffs = 0;
    size_t dl = 0;

    sqlite3_reset(ps->fields);
    if (sqlite3_bind_text(ps->fields, 1, json, json_len, SQLITE_STATIC) != SQLITE_OK)
        return sql_err(ps, "bind");
    while ((step = sqlite3_step(ps->fields)) == SQLITE_ROW) {
        size_t kl = 0, tl = 0;
        const char *key = col_text(ps->fields, 0, &kl);
        const char *type = col_text(ps->fields, 1, &tl);
        char kbuf[48];

        if (!key || !type) {
            rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s' has a malformed key", name);
            goto out;
        }
        if (!strcmp(key, "dtype")) {
            if (dtype_copy) {
                rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s' has two 'dtype' fields",
                               name);
                goto out;
            }
            if (strcmp(type, "text") != 0 || !(dtype_s = col_text(ps->fields, 2, &dl))) {
                rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s': 'dtype' must be a "
                               "string, found %s", name, type);
                goto out;
            }
            dtype_copy = strndup(dtype_s, dl);
            if (!dtype_copy)
                goto nomem;
        } else if (!strcmp(key, "shape") || !strcmp(key, "data_offsets")) {
            int is_shape = key[0] == 's';
            char **dst = is_shape ? &shape_json : &offs_json;
            int *dst_len = is_shape ? &shape_len : &offs_len;
            if (*dst) {
                rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s' has two '%s' fields",
                               name, key);
                goto out;
            }
            if (strcmp(type, "array") != 0) {
                rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s': '%s' must be an array, "
                               "found %s", name, key, type);
                goto out;
            }
            *dst_len = sqlite3_column_bytes(ps->fields, 2);
            *dst = strndup((const char *)sqlite3_column_text(ps->fields, 2),
                           (size_t)*dst_len);
            if (!*dst)
                goto nomem;
        } else {
            rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s' has an unexpected field "
                           "'%s' (expected dtype, shape, data_offsets)", name,
                           ec_printable(key, kl, kbuf, sizeof(kbuf)));
            goto out;
        }
    }
    if (step != SQLITE_DONE) {
        rc = sql_err(ps, "tensor object");
        goto out;
    }
    if (!dtype_copy || !shape_json || !offs_json) {
        rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s' lacks its '%s' field", name,
                       !dtype_copy ? "dtype" : !shape_json ? "shape" : "data_offsets");
        goto out;
    }
    t->dtype = EC_DTYPE_INVALID;
    for (size_t i = 0; i < sizeof(st_dtypes) / sizeof(st_dtypes[0]); i++)
        if (!strcmp(dtype_copy, st_dtypes[i].name))
            t->dtype = st_dtypes[i].dtype;
    if (t->dtype == EC_DTYPE_INVALID) {
        char dbuf[48];
        rc = ec_seterr(EC_EDTYPE, "safetensors: tensor '%s' has dtype '%s', which embcache "
                       "does not support (F32 F16 BF16 F64 I8 U8 I32 I64); convert it "
                       "before saving", name,
                       ec_printable(dtype_copy, strlen(dtype_copy), dbuf, sizeof(dbuf)));
        goto out;
    }
    rc = read_uint_array(ps, shape_json, shape_len, name, "shape", t->shape, EC_MAX_DIMS,
                         &t->ndim);
    if (rc < 0)
        goto out;
    rc = read_uint_array(ps, offs_json, offs_len, name, "data_offsets", offs, 2, &noffs);
    if (rc < 0)
        goto out;
    if (noffs != 2) {
        rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s': 'data_offsets' must be "
                       "[begin, end]", name);
        goto out;
    }
    bytes = ec_dtype_size(t->dtype);
    for (uint32_t i = 0; i < t->ndim; i++) {
        if (__builtin_mul_overflow(bytes, t->shape[i], &bytes)) {
            rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s': shape overflows 64-bit "
                           "byte counts", name);
            goto out;
        }
    }
    if (offs[1] < offs[0] || offs[1] > ps->data_len) {
        rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s': data_offsets [%llu, %llu] lie "
                       "outside the %llu-byte data section (truncated file?)", name,
                       (unsigned long long)offs[0], (unsigned long long)offs[1],
                       (unsigned long long)ps->data_len);
        goto out;
    }
    if (offs[1] - offs[0] != bytes) {
        rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s': data_offsets [%llu, %llu] hold "
                       "%llu bytes, but shape and dtype need %llu", name,
                       (unsigned long long)offs[0], (unsigned long long)offs[1],
                       (unsigned long long)(offs[1] - offs[0]), (unsigned long long)bytes);
        goto out;
    }
    t->data_off = ps->data_start + offs[0];
    t->data_len = bytes;
    t->byteswap = false;
    rc = 0;
    goto out;
nomem:
    rc = ec_seterr(EC_ENOMEM, "safetensors: out of memory");
out:
    sqlite3_reset(ps->fields);
    sqlite3_clear_bindings(ps->fields);
    free(dtype_copy);
    free(shape_json);
    free(offs_json);
    return rc;
}

/* Every key of the __metadata__ object must map to a string. */
static int check_metadata(struct st_parser *ps, const char *json, int json_len)
{
    int step, rc = 0;

    sqlite3_reset(ps->fields);
    if (sqlite3_bind_text(ps->fields, 1, json, json_len, SQLITE_STATIC) != SQLITE_OK)
        return sql_err(ps, "bind");
    while ((step = sqlite3_step(ps->fields)) == SQLITE_ROW) {
        size_t tl = 0;
        const char *type = col_text(ps->fields, 1, &tl);
        if (!type || strcmp(type, "text") != 0) {
            rc = ec_seterr(EC_EFORMAT, "safetensors: '__metadata__' values must be strings, "
                           "found %s", type ? type : "?");
            break;
        }
    }
    if (rc == 0 && step != SQLITE_DONE)
        rc = sql_err(ps, "metadata");
    sqlite3_reset(ps->fields);
    sqlite3_clear_bindings(ps->fields);
    return rc;
}

static int cmp_begin(const void *a, const void *b)
{
    const ec_tf_tensor *x = a, *y = b;

    if (x->data_off != y->data_off)
        return x->data_off < y->data_off ? -1 : 1;
    if (x->data_len != y->data_len)
        return x->data_len < y->data_len ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name_ptr(const void *a, const void *b)
{
    const ec_tf_tensor *const *x = a, *const *y = b;

    return strcmp((*x)->name, (*y)->name);
}

/* Names must be unique; ranges must not overlap (empty tensors overlap
 * nothing). t is sorted by begin. */
static int check_ranges(ec_tf_tensor *t, size_t n)
{
    const ec_tf_tensor **byname = NULL;
    uint64_t max_end = 0;
    const char *max_name = NULL;
    int rc = 0;

    if (n > 1)
        qsort(t, n, sizeof(*t), cmp_begin);
    for (size_t i = 0; i < n; i++) {
        if (t[i].data_len == 0)
            continue;
        if (max_name && t[i].data_off < max_end)
            return ec_seterr(EC_EFORMAT, "safetensors: the data of tensors '%s' and '%s' "
                             "overlap; the file is malformed", max_name, t[i].name);
        max_end = t[i].data_off + t[i].data_len;
        max_name = t[i].name;
    }
    byname = malloc((n ? n : 1) * sizeof(*byname));
    if (!byname)
        return ec_seterr(EC_ENOMEM, "safetensors: out of memory");
    for (size_t i = 0; i < n; i++)
        byname[i] = &t[i];
    if (n > 1)
        qsort(byname, n, sizeof(*byname), cmp_name_ptr);
    for (size_t i = 1; i < n; i++) {
        if (!strcmp(byname[i - 1]->name, byname[i]->name)) {
            rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s' appears twice in the header",
                           byname[i]->name);
            break;
        }
    }
    free(byname);
    return rc;
}

/* Parse the JSON header hdr[0..hl) of a file of file_len bytes. */
static int parse_header(const char *hdr, size_t hl, uint64_t file_len, ec_tf_list *out)
{
    struct st_parser ps = {0};
    ec_tf_tensor *tensors = NULL;
    size_t n = 0, cap = 0, bad = 0;
    int step, rc;

    ps.data_start = ST_PREFIX + hl;
    ps.data_len = file_len - ps.data_start;
    if (memchr(hdr, '\0', hl))
        return ec_seterr(EC_EFORMAT, "safetensors: the JSON header contains a NUL byte");
    if (has_escaped_nul(hdr, hl))
        return ec_seterr(EC_EFORMAT, "safetensors: the JSON header contains an escaped NUL "
                                     "(\\u0000), which no tensor name may hold");
    if (!utf8_valid((const unsigned char *)hdr, hl, &bad))
        return ec_seterr(EC_EFORMAT, "safetensors: the JSON header is not valid UTF-8 "
                                     "(byte %zu)", bad);
    if (hl > INT32_MAX)
        return ec_seterr(EC_EFORMAT, "safetensors: header of %zu bytes is too large", hl);

    if (sqlite3_open_v2(":memory:", &ps.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_MEMORY |
                                                 SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        rc = sql_err(&ps, "open");
        goto out;
    }
    if (sqlite3_limit(ps.db, SQLITE_LIMIT_LENGTH, -1) < (int)hl + 16) {
        rc = ec_seterr(EC_EFORMAT, "safetensors: header of %zu bytes exceeds SQLite's "
                                   "length limit", hl);
        goto out;
    }
    /* Top level: must be a valid JSON object. */
    {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(ps.db, "SELECT json_valid(?1), json_type(?1)", -1, &st,
                               NULL) != SQLITE_OK) {
            rc = sql_err(&ps, "prepare");
            goto out;
        }
        sqlite3_bind_text(st, 1, hdr, (int)hl, SQLITE_STATIC);
        step = sqlite3_step(st);
        if (step != SQLITE_ROW || sqlite3_column_int(st, 0) != 1) {
            sqlite3_finalize(st);
            rc = ec_seterr(EC_EFORMAT, "safetensors: the header is not valid JSON; the file "
                                       "is damaged or not a .safetensors file");
            goto out;
        }
        if (!sqlite3_column_text(st, 1) ||
            strcmp((const char *)sqlite3_column_text(st, 1), "object") != 0) {
            sqlite3_finalize(st);
            rc = ec_seterr(EC_EFORMAT, "safetensors: the header must be a JSON object");
            goto out;
        }
        sqlite3_finalize(st);
    }
    if (sqlite3_prepare_v2(ps.db, "SELECT key, type, value FROM json_each(?1)", -1, &ps.top,
                           NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(ps.db, "SELECT key, type, value FROM json_each(?1)", -1,
                           &ps.fields, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(ps.db, "SELECT type, value FROM json_each(?1) ORDER BY key", -1,
                           &ps.items, NULL) != SQLITE_OK) {
        rc = sql_err(&ps, "prepare");
        goto out;
    }
    if (sqlite3_bind_text(ps.top, 1, hdr, (int)hl, SQLITE_STATIC) != SQLITE_OK) {
        rc = sql_err(&ps, "bind");
        goto out;
    }
    while ((step = sqlite3_step(ps.top)) == SQLITE_ROW) {
        size_t kl = 0, tl = 0;
        const char *key = col_text(ps.top, 0, &kl);
        const char *type = col_text(ps.top, 1, &tl);
        const char *val = (const char *)sqlite3_column_text(ps.top, 2);
        int vlen = sqlite3_column_bytes(ps.top, 2);
        char kbuf[48];

        if (!key || !type) {
            rc = ec_seterr(EC_EFORMAT, "safetensors: a header key is not a valid name "
                                       "(embedded NUL)");
            goto out;
        }
        if (!strcmp(key, "__metadata__")) {
            if (strcmp(type, "object") != 0) {
                rc = ec_seterr(EC_EFORMAT, "safetensors: '__metadata__' must be an object, "
                                           "found %s", type);
                goto out;
            }
            rc = check_metadata(&ps, val, vlen);
            if (rc < 0)
                goto out;
            continue;
        }
        if (kl == 0 || kl > EC_NAME_MAX) {
            rc = ec_seterr(EC_EFORMAT, "safetensors: tensor name '%s' is %zu bytes; names are "
                           "1..%d bytes", ec_printable(key, kl, kbuf, sizeof(kbuf)), kl,
                           EC_NAME_MAX);
            goto out;
        }
        if (strcmp(type, "object") != 0) {
            rc = ec_seterr(EC_EFORMAT, "safetensors: tensor '%s' must be an object, found %s",
                           ec_printable(key, kl, kbuf, sizeof(kbuf)), type);
            goto out;
        }
        if (n >= EC_TF_MAX_TENSORS) {
            rc = ec_seterr(EC_EFORMAT, "safetensors: more than %d tensors in one file; split "
                                       "the file", EC_TF_MAX_TENSORS);
            goto out;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            ec_tf_tensor *nt = realloc(tensors, ncap * sizeof(*nt));
            if (!nt) {
                rc = ec_seterr(EC_ENOMEM, "safetensors: out of memory");
                goto out;
            }
            tensors = nt;
            cap = ncap;
        }
        memset(&tensors[n], 0, sizeof(tensors[n]));
        memcpy(tensors[n].name, key, kl + 1);
        rc = parse_tensor(&ps, tensors[n].name, val, vlen, &tensors[n]);
        if (rc < 0)
            goto out;
        n++;
    }
    if (step != SQLITE_DONE) {
        rc = sql_err(&ps, "header object");
        goto out;
    }
    rc = check_ranges(tensors, n);
    if (rc < 0)
        goto out;
    out->tensors = tensors;
    out->n = n;
    tensors = NULL;
    rc = 0;
out:
    free(tensors);
    sqlite3_finalize(ps.top);
    sqlite3_finalize(ps.fields);
    sqlite3_finalize(ps.items);
    sqlite3_close(ps.db);
    return rc;
}

/* Read the 8-byte length prefix and check it against the file. */
static int parse_prefix(const unsigned char *p, size_t have, uint64_t file_len, size_t *hl)
{
    uint64_t n = 0;

    if (have < ST_PREFIX)
        return ec_seterr(EC_EFORMAT, "safetensors: the file is %llu bytes, too short for "
                                     "the 8-byte header length",
                         (unsigned long long)file_len);
    for (int i = 7; i >= 0; i--)
        n = n << 8 | p[i];
    if (n > EC_TF_MAX_HEADER)
        return ec_seterr(EC_EFORMAT, "safetensors: header length %llu exceeds the %u-byte "
                                     "limit (not a .safetensors file?)",
                         (unsigned long long)n, EC_TF_MAX_HEADER);
    if (n > file_len - ST_PREFIX)
        return ec_seterr(EC_EFORMAT, "safetensors: header length %llu is larger than the "
                                     "rest of the %llu-byte file (truncated?)",
                         (unsigned long long)n, (unsigned long long)file_len);
    if (n < 2)
        return ec_seterr(EC_EFORMAT, "safetensors: header length %llu is too short for a "
                                     "JSON object", (unsigned long long)n);
    *hl = (size_t)n;
    return 0;
}

int ec_safetensors_parse_buf(const void *buf, size_t len, ec_tf_list *out)
{
    const unsigned char *p = buf;
    size_t hl = 0;
    int rc;

    if ((!buf && len) || !out)
        return ec_seterr(EC_EINVAL, "ec_safetensors_parse_buf: NULL argument");
    rc = parse_prefix(p, len, len, &hl);
    if (rc < 0)
        return rc;
    return parse_header((const char *)p + ST_PREFIX, hl, len, out);
}

int ec_safetensors_parse_fd(int fd, ec_tf_list *out)
{
    unsigned char pre[ST_PREFIX];
    char *hdr = NULL;
    struct stat st;
    size_t hl = 0, got = 0;
    ssize_t r;
    int rc;

    if (fd < 0 || !out)
        return ec_seterr(EC_EINVAL, "ec_safetensors_parse_fd: bad argument");
    if (fstat(fd, &st) != 0)
        return ec_seterr_errno(EC_EIO, errno, "safetensors: cannot stat the file");
    if (!S_ISREG(st.st_mode))
        return ec_seterr(EC_EFORMAT, "safetensors: not a regular file; pass the "
                                    ".safetensors file itself");
    while (got < ST_PREFIX && got < (uint64_t)st.st_size) {
        r = pread(fd, pre + got, ST_PREFIX - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return ec_seterr_errno(EC_EIO, errno, "safetensors: cannot read the header");
        if (r == 0)
            break;
        got += (size_t)r;
    }
    rc = parse_prefix(pre, got, (uint64_t)st.st_size, &hl);
    if (rc < 0)
        return rc;
    hdr = malloc(hl);
    if (!hdr)
        return ec_seterr(EC_ENOMEM, "safetensors: out of memory for a %zu-byte header", hl);
    for (got = 0; got < hl;) {
        r = pread(fd, hdr + got, hl - got, (off_t)(ST_PREFIX + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = ec_seterr_errno(EC_EIO, errno, "safetensors: cannot read the header");
            goto out;
        }
        if (r == 0) {
            rc = ec_seterr(EC_EFORMAT, "safetensors: the file shrank while its header was "
                                       "read");
            goto out;
        }
        got += (size_t)r;
    }
    rc = parse_header(hdr, hl, (uint64_t)st.st_size, out);
out:
    free(hdr);
    return rc;
}
