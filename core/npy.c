/*
 * npy.c - the NumPy .npy reader (see tensorfile.h).
 *
 * A .npy file is "\x93NUMPY", a major and minor version byte, a header
 * length (u16 LE for version 1, u32 LE for versions 2 and 3), then that many
 * bytes of a Python dict literal such as
 *     {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
 * padded with spaces and ending in '\n', then the raw C-order data, which
 * must fill the rest of the file exactly.
 *
 * The dict is parsed by a small strict tokenizer and recursive-descent
 * parser (strings in single or double quotes, True/False, tuples of
 * non-negative integers): nothing is evaluated and every byte is checked.
 * The parsing core (parse_preamble, parse_header, finish) is pure: it sees
 * only bytes and lengths, so ec_npy_parse_buf can be driven by a fuzzer.
 * ec_npy_parse_fd reads the preamble and header with pread and takes the
 * file length from fstat; it never reads the data. Called by the importer
 * thread of the daemon, by tests and by fuzz targets; no shared state.
 */
#include "core/tensorfile.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_MAX_HEADER (1024u * 1024u) /* numpy allows 4 GiB; no sane file needs this */

void ec_tf_list_clear(ec_tf_list *l)
{
    if (!l)
        return;
    free(l->tensors);
    l->tensors = NULL;
    l->n = 0;
}


/* ------------------------------------------------------------------ */
/* Tokenizer over the header dict                                      */

enum tok_kind { T_END, T_LBRACE, T_RBRACE, T_LPAREN, T_RPAREN, T_LBRACKET, T_COLON, T_COMMA,
                T_STRING, T_INT, T_TRUE, T_FALSE, T_NEG };

struct lexer {
    const char *s;
    size_t len, pos;
};

struct token {
    enum tok_kind kind;
    const char *text; /* T_STRING: contents without quotes */
    size_t text_len;
    uint64_t value;   /* T_INT */
    int overflow;     /* T_INT did not fit 64 bits */
};

static int lex_err(const struct lexer *lx, const char *what)
{
    char buf[48];
    size_t rest = lx->len - lx->pos;

    return ec_seterr(EC_EFORMAT,
                     "npy header: %s at byte %zu of the header dict (near \"%s\"); the "
                     "file is not a valid .npy: save it again with numpy.save",
                     what, lx->pos, ec_printable(lx->s + lx->pos, rest, buf, sizeof(buf)));
}

static void skip_ws(struct lexer *lx)
{
    while (lx->pos < lx->len &&
           (lx->s[lx->pos] == ' ' || lx->s[lx->pos] == '\t' || lx->s[lx->pos] == '\n' ||
            lx->s[lx->pos] == '\r'))
        lx->pos++;
}

/* Next token. Returns 0 or EC_EFORMAT. */
static int lex_next(struct lexer *lx, struct token *t)
{
    char c;

    memset(t, 0, sizeof(*t));
    skip_ws(lx);
    if (lx->pos >= lx->len) {
        t->kind = T_END;
        return 0;
    }
    c = lx->s[lx->pos];
    switch (c) {
    case '{': t->kind = T_LBRACE; lx->pos++; return 0;
    case '}': t->kind = T_RBRACE; lx->pos++; return 0;
    case '(': t->kind = T_LPAREN; lx->pos++; return 0;
    case ')': t->kind = T_RPAREN; lx->pos++; return 0;
    case '[': t->kind = T_LBRACKET; lx->pos++; return 0;
    case ':': t->kind = T_COLON; lx->pos++; return 0;
    case ',': t->kind = T_COMMA; lx->pos++; return 0;
    case '\'':
    case '"': {
        size_t start = lx->pos + 1, i;
        for (i = start; i < lx->len && lx->s[i] != c && lx->s[i] != '\n'; i++)
            if (lx->s[i] == '\\' || (unsigned char)lx->s[i] < 0x20 ||
                (unsigned char)lx->s[i] >= 0x7f)
                return lex_err(lx, "unsupported character in a string");
        if (i >= lx->len || lx->s[i] == '\n')
            return lex_err(lx, "unterminated string");
        t->kind = T_STRING;
        t->text = lx->s + start;
        t->text_len = i - start;
        lx->pos = i + 1;
        return 0;
    }
    case '-':
        lx->pos++;
        if (lx->pos >= lx->len || !isdigit((unsigned char)lx->s[lx->pos]))
            return lex_err(lx, "stray '-'");
        while (lx->pos < lx->len && isdigit((unsigned char)lx->s[lx->pos]))
            lx->pos++;
        t->kind = T_NEG;
        return 0;
    default:
        break;
    }
    if (isdigit((unsigned char)c)) {
        uint64_t v = 0;
        while (lx->pos < lx->len && isdigit((unsigned char)lx->s[lx->pos])) {
            unsigned d = (unsigned)(lx->s[lx->pos] - '0');
            if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, d, &v))
                t->overflow = 1;
            lx->pos++;
        }
        /* Python 2 wrote long integers as "3L". */
        if (lx->pos < lx->len && lx->s[lx->pos] == 'L')
            lx->pos++;
        if (lx->pos < lx->len && (isalnum((unsigned char)lx->s[lx->pos]) ||
                                  lx->s[lx->pos] == '.' || lx->s[lx->pos] == '_'))
            return lex_err(lx, "malformed integer");
        t->kind = T_INT;
        t->value = v;
        return 0;
    }
    if (isalpha((unsigned char)c)) {
        size_t start = lx->pos;
        while (lx->pos < lx->len &&
               (isalnum((unsigned char)lx->s[lx->pos]) || lx->s[lx->pos] == '_'))
            lx->pos++;
        if (lx->pos - start == 4 && !memcmp(lx->s + start, "True", 4)) {
            t->kind = T_TRUE;
            return 0;
        }
        if (lx->pos - start == 5 && !memcmp(lx->s + start, "False", 5)) {
            t->kind = T_FALSE;
            return 0;
        }
        lx->pos = start;
        return lex_err(lx, "unexpected name");
    }
    return lex_err(lx, "unexpected character");
}

static int expect(struct lexer *lx, enum tok_kind kind, const char *what)
{
    struct token t;
    int rc = lex_next(lx, &t);

    if (rc < 0)
        return rc;
    if (t.kind != kind)
        return lex_err(lx, what);
    return 0;
}

/* ------------------------------------------------------------------ */
/* The header dict                                                     */

struct npy_header {
    int have_descr, have_fortran, have_shape;
    ec_dtype dtype;
    int byteswap;
    int fortran;
    uint32_t ndim;
    uint64_t shape[EC_MAX_DIMS];
};

/* Map a descr string such as "<f4" to a dtype. */
static int parse_descr(const char *s, size_t len, struct npy_header *h)
{
    static const struct {
        char kind;
        char size;
        ec_dtype dtype;
    } map[] = {
        {'f', '2', EC_DTYPE_F16}, {'f', '4', EC_DTYPE_F32}, {'f', '8', EC_DTYPE_F64},
        {'i', '1', EC_DTYPE_I8},  {'u', '1', EC_DTYPE_U8},  {'i', '4', EC_DTYPE_I32},
        {'i', '8', EC_DTYPE_I64},
    };
    char buf[48];
    char order;

    if (len == 3) {
        order = s[0];
        for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
            if (s[1] != map[i].kind || s[2] != map[i].size)
                continue;
            if (order != '<' && order != '>' && order != '=' && order != '|')
                break;
            if (order == '|' && map[i].size != '1')
                return ec_seterr(EC_EFORMAT, "npy header: descr '%s' gives no byte order "
                                 "for a multi-byte type",
                                 ec_printable(s, len, buf, sizeof(buf)));
            h->dtype = map[i].dtype;
            /* '=' is native order, and this build only runs little-endian. */
            h->byteswap = order == '>' && map[i].size != '1';
            return 0;
        }
    }
    if (len == 3 && s[1] == 'b' && s[2] == '1')
        return ec_seterr(EC_EDTYPE, "npy dtype '%s' (bool) is not supported; convert the "
                         "array with .astype(numpy.uint8) before saving",
                         ec_printable(s, len, buf, sizeof(buf)));
    return ec_seterr(EC_EDTYPE, "npy dtype '%s' is not supported; embcache takes float16, "
                     "float32, float64, int8, uint8, int32 and int64 (convert with .astype)",
                     ec_printable(s, len, buf, sizeof(buf)));
}

static int parse_shape(struct lexer *lx, struct npy_header *h)
{
    struct token t;
    int rc;

    rc = lex_next(lx, &t);
    if (rc < 0)
        return rc;
    if (t.kind != T_LPAREN)
        return lex_err(lx, "'shape' must be a tuple");
    h->ndim = 0;
    for (;;) {
        rc = lex_next(lx, &t);
        if (rc < 0)
            return rc;
        if (t.kind == T_RPAREN)
            break;
        if (t.kind == T_NEG)
            return ec_seterr(EC_EFORMAT, "npy header: a 'shape' dimension is negative");
        if (t.kind != T_INT)
            return lex_err(lx, "'shape' must hold integers");
        if (t.overflow)
            return ec_seterr(EC_EFORMAT, "npy header: a 'shape' dimension does not fit "
                                         "64 bits");
        if (h->ndim >= EC_MAX_DIMS)
            return ec_seterr(EC_EFORMAT, "npy header: more than %d dimensions; reshape the "
                             "array to at most %d", EC_MAX_DIMS, EC_MAX_DIMS);
        h->shape[h->ndim++] = t.value;
        rc = lex_next(lx, &t);
        if (rc < 0)
            return rc;
        if (t.kind == T_RPAREN) {
            /* Python: "(3)" is an int, not a tuple. */
            if (h->ndim == 1)
                return lex_err(lx, "a one-element 'shape' needs a trailing comma");
            break;
        }
        if (t.kind != T_COMMA)
            return lex_err(lx, "expected ',' or ')' in 'shape'");
    }
    return 0;
}

/* Parse the dict literal in s[0..len). */
static int parse_header(const char *s, size_t len, struct npy_header *h)
{
    struct lexer lx = {.s = s, .len = len, .pos = 0};
    struct token t;
    int rc;

    memset(h, 0, sizeof(*h));
    if ((rc = expect(&lx, T_LBRACE, "the header must start with '{'")) < 0)
        return rc;
    for (;;) {
        rc = lex_next(&lx, &t);
        if (rc < 0)
            return rc;
        if (t.kind == T_RBRACE)
            break;
        if (t.kind != T_STRING)
            return lex_err(&lx, "expected a quoted key");
        if ((rc = expect(&lx, T_COLON, "expected ':' after a key")) < 0)
            return rc;
        if (t.text_len == 5 && !memcmp(t.text, "descr", 5)) {
            struct token v;
            if (h->have_descr)
                return lex_err(&lx, "duplicate key 'descr'");
            h->have_descr = 1;
            if ((rc = lex_next(&lx, &v)) < 0)
                return rc;
            if (v.kind == T_LBRACKET)
                return ec_seterr(EC_EDTYPE, "npy dtype is a structured (record) dtype; "
                                            "save each field as its own array");
            if (v.kind != T_STRING)
                return lex_err(&lx, "'descr' must be a string");
            if ((rc = parse_descr(v.text, v.text_len, h)) < 0)
                return rc;
        } else if (t.text_len == 13 && !memcmp(t.text, "fortran_order", 13)) {
            struct token v;
            if (h->have_fortran)
                return lex_err(&lx, "duplicate key 'fortran_order'");
            h->have_fortran = 1;
            if ((rc = lex_next(&lx, &v)) < 0)
                return rc;
            if (v.kind != T_TRUE && v.kind != T_FALSE)
                return lex_err(&lx, "'fortran_order' must be True or False");
            h->fortran = v.kind == T_TRUE;
        } else if (t.text_len == 5 && !memcmp(t.text, "shape", 5)) {
            if (h->have_shape)
                return lex_err(&lx, "duplicate key 'shape'");
            h->have_shape = 1;
            if ((rc = parse_shape(&lx, h)) < 0)
                return rc;
        } else {
            char buf[48];
            return ec_seterr(EC_EFORMAT, "npy header: unexpected key '%s'; a .npy header "
                             "holds only 'descr', 'fortran_order' and 'shape'",
                             ec_printable(t.text, t.text_len, buf, sizeof(buf)));
        }
        rc = lex_next(&lx, &t);
        if (rc < 0)
            return rc;
        if (t.kind == T_RBRACE)
            break;
        if (t.kind != T_COMMA)
            return lex_err(&lx, "expected ',' or '}' after a value");
    }
    /* Only padding may follow the dict. */
    skip_ws(&lx);
    if (lx.pos != lx.len)
        return lex_err(&lx, "unexpected text after the header dict");
    if (!h->have_descr || !h->have_fortran || !h->have_shape)
        return ec_seterr(EC_EFORMAT, "npy header: missing key '%s'; the file is not a "
                                     "valid .npy: save it again with numpy.save",
                         !h->have_descr ? "descr" : !h->have_fortran ? "fortran_order"
                                                                      : "shape");
    if (h->fortran)
        return ec_seterr(EC_EFORMAT, "Fortran-order arrays are not supported; save with "
                                     "np.ascontiguousarray");
    return 0;
}

/* ------------------------------------------------------------------ */
/* The whole file                                                      */

/* Check magic and version in the first bytes of the file; on success set
 * *prefix_len (10 or 12) and *header_len. have is how many bytes of the
 * file p holds (at least 12 or the whole file). */
static int parse_preamble(const unsigned char *p, size_t have, uint64_t file_len,
                          size_t *prefix_len, size_t *header_len)
{
    size_t pre = 0, hl = 0;

    if (have < 8 || memcmp(p, NPY_MAGIC, NPY_MAGIC_LEN) != 0)
        return ec_seterr(EC_EFORMAT, "not a .npy file (no \\x93NUMPY magic at the start); "
                                     "save arrays with numpy.save");
    if (p[6] == 1 && p[7] == 0) {
        pre = 10;
    } else if ((p[6] == 2 || p[6] == 3) && p[7] == 0) {
        pre = 12;
    } else {
        return ec_seterr(EC_EFORMAT, ".npy format version %u.%u is not supported "
                                     "(1.0, 2.0 and 3.0 are)", p[6], p[7]);
    }
    if (have < pre)
        return ec_seterr(EC_EFORMAT, "npy: the file ends inside its header length field "
                                     "(%llu bytes)", (unsigned long long)file_len);
    hl = pre == 10 ? (size_t)p[8] | (size_t)p[9] << 8
                   : (size_t)p[8] | (size_t)p[9] << 8 | (size_t)p[10] << 16 |
                         (size_t)p[11] << 24;
    if (hl > NPY_MAX_HEADER)
        return ec_seterr(EC_EFORMAT, "npy: header length %zu exceeds the %u-byte limit",
                         hl, NPY_MAX_HEADER);
    if (hl > file_len - pre)
        return ec_seterr(EC_EFORMAT, "npy: header is truncated: it says %zu bytes but the "
                         "file has only %llu after the preamble", hl,
                         (unsigned long long)(file_len - pre));
    *prefix_len = pre;
    *header_len = hl;
    return 0;
}

/* Header parsed: check the data length and fill out. */
static int finish(const struct npy_header *h, uint64_t data_off, uint64_t file_len,
                  const char *name, ec_tf_list *out)
{
    ec_tf_tensor *t;
    uint64_t n = ec_dtype_size(h->dtype), found = file_len - data_off;
    size_t nlen = strlen(name);

    for (uint32_t i = 0; i < h->ndim; i++)
        if (__builtin_mul_overflow(n, h->shape[i], &n))
            return ec_seterr(EC_EFORMAT, "npy: shape overflows 64-bit byte counts");
    if (n > found)
        return ec_seterr(EC_EFORMAT, "npy: data is truncated: expected %llu bytes after the "
                         "header, found %llu", (unsigned long long)n,
                         (unsigned long long)found);
    if (n < found)
        return ec_seterr(EC_EFORMAT, "npy: %llu unexpected bytes after the data (expected "
                         "%llu bytes after the header, found %llu)",
                         (unsigned long long)(found - n), (unsigned long long)n,
                         (unsigned long long)found);
    if (nlen == 0 || nlen > EC_NAME_MAX)
        return ec_seterr(EC_EINVAL, "npy: tensor name of %zu bytes; names are 1..%d bytes",
                         nlen, EC_NAME_MAX);
    t = calloc(1, sizeof(*t));
    if (!t)
        return ec_seterr(EC_ENOMEM, "npy: out of memory");
    memcpy(t->name, name, nlen + 1);
    t->dtype = h->dtype;
    t->ndim = h->ndim;
    memcpy(t->shape, h->shape, sizeof(t->shape));
    t->data_off = data_off;
    t->data_len = n;
    t->byteswap = h->byteswap != 0;
    out->tensors = t;
    out->n = 1;
    return 0;
}

int ec_npy_parse_buf(const void *buf, size_t len, const char *name, ec_tf_list *out)
{
    const unsigned char *p = buf;
    struct npy_header h;
    size_t pre = 0, hl = 0;
    int rc;

    if ((!buf && len) || !name || !out)
        return ec_seterr(EC_EINVAL, "ec_npy_parse_buf: NULL argument");
    rc = parse_preamble(p, len, len, &pre, &hl);
    if (rc < 0)
        return rc;
    rc = parse_header((const char *)p + pre, hl, &h);
    if (rc < 0)
        return rc;
    return finish(&h, pre + hl, len, name, out);
}

/* pread exactly len bytes at off; EC_EFORMAT if the file ends first. */
static int pread_exact(int fd, void *buf, size_t len, off_t off)
{
    size_t got = 0;

    while (got < len) {
        ssize_t r = pread(fd, (char *)buf + got, len - got, off + (off_t)got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return ec_seterr_errno(EC_EIO, errno, "npy: cannot read the header");
        }
        if (r == 0)
            return ec_seterr(EC_EFORMAT, "npy: the file shrank while its header was read");
        got += (size_t)r;
    }
    return 0;
}

int ec_npy_parse_fd(int fd, const char *name, ec_tf_list *out)
{
    unsigned char pre_buf[12];
    char *hdr = NULL;
    struct npy_header h;
    struct stat st;
    size_t pre = 0, hl = 0, have;
    int rc;

    if (fd < 0 || !name || !out)
        return ec_seterr(EC_EINVAL, "ec_npy_parse_fd: bad argument");
    if (fstat(fd, &st) != 0)
        return ec_seterr_errno(EC_EIO, errno, "npy: cannot stat the file");
    if (!S_ISREG(st.st_mode))
        return ec_seterr(EC_EFORMAT, "npy: not a regular file; pass the .npy file itself");
    have = (uint64_t)st.st_size < sizeof(pre_buf) ? (size_t)st.st_size : sizeof(pre_buf);
    rc = pread_exact(fd, pre_buf, have, 0);
    if (rc < 0)
        return rc;
    rc = parse_preamble(pre_buf, have, (uint64_t)st.st_size, &pre, &hl);
    if (rc < 0)
        return rc;
    hdr = malloc(hl ? hl : 1);
    if (!hdr)
        return ec_seterr(EC_ENOMEM, "npy: out of memory for a %zu-byte header", hl);
    rc = pread_exact(fd, hdr, hl, (off_t)pre);
    if (rc < 0)
        goto out;
    rc = parse_header(hdr, hl, &h);
    if (rc < 0)
        goto out;
    rc = finish(&h, pre + hl, (uint64_t)st.st_size, name, out);
out:
    free(hdr);
    return rc;
}

int ec_npy_stem(const char *path, char *out, size_t out_len)
{
    const char *base, *slash;
    size_t len;

    if (!path || !out || out_len == 0)
        return ec_seterr(EC_EINVAL, "ec_npy_stem: bad argument");
    slash = strrchr(path, '/');
    base = slash ? slash + 1 : path;
    len = strlen(base);
    if (len > 4 && !strcmp(base + len - 4, ".npy"))
        len -= 4;
    else if (len >= 4 && !strcmp(base + len - 4, ".npy"))
        return ec_seterr(EC_EINVAL, "'%s' has no name before .npy; rename the file to "
                         "the tensor's name", path);
    if (len == 0)
        return ec_seterr(EC_EINVAL, "'%s' has no file name to make a tensor name from",
                         path);
    if (len >= out_len)
        return ec_seterr(EC_EINVAL, "the tensor name from '%s' is %zu bytes; the limit "
                         "is %zu", path, len, out_len - 1);
    memcpy(out, base, len);
    out[len] = '\0';
    return 0;
}
