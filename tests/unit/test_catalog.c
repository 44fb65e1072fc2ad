/*
 * test_catalog.c - unit tests for core/catalog.c: the SQLite model catalog.
 *
 * Each test gets a fresh catalog in its own temporary directory (the
 * fixture of catalog_fixture.c, shared by both catalog tests). Covers
 * registration and resolution by version and alias, the error messages
 * for every unknown part, validation of names, params and tensor structs,
 * atomicity of failed changes, find, drop, id allocation (never reused,
 * capped below 2^32), persistence across reopen, a non-SQLite file, a newer
 * schema, upgrades of schema 1 and 2 catalogs, residency policies and
 * per-tensor cache modes, and two handles writing from two threads at once.
 */
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog_fixture.h"
#include "common/err.h"
#include "core/catalog.h"
#include "testutil.h"

static int setup(void **state)
{
    return fx_setup(state, "ec-catalog");
}

/* Checksum values with the high bit set too, to catch sign trouble. */
static uint64_t sum_of(uint64_t seed, uint64_t p)
{
    return (seed * 0x9e3779b97f4a7c15ULL) ^ (p * 0xff51afd7ed558ccdULL) ^ (1ULL << 63);
}

/* An f32 [rows, dim] tensor with rpp rows per partition. */
static void make_tensor(ec_cat_tensor *t, const char *name, uint64_t rows, uint64_t dim,
                        uint64_t rpp, uint64_t seed)
{
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->dtype = EC_DTYPE_F32;
    t->ndim = 2;
    t->shape[0] = rows;
    t->shape[1] = dim;
    t->rows = rows;
    t->row_bytes = dim * 4;
    t->rows_per_partition = rpp;
    t->partitions = (rows + rpp - 1) / rpp;
    snprintf(t->path, sizeof(t->path), "parts/%016llx.ecp", (unsigned long long)seed);
    t->file_size = 4096 * 3 + rows * dim * 4;
    t->header_checksum = sum_of(seed, 12345);
    t->part_checksums = calloc(t->partitions ? t->partitions : 1, 8);
    assert_non_null(t->part_checksums);
    for (uint64_t p = 0; p < t->partitions; p++)
        t->part_checksums[p] = sum_of(seed, p);
}

static uint64_t seed_counter = 1;

/* Register (model, version) with tensors named names[0..n); returns the
 * catalog's result. Tensor ids, if wanted, land in ids. */
static int add(ec_catalog *cat, const char *model, int64_t version, int64_t round,
               const char *params, const char *const *names, size_t n, int64_t *ids)
{
    ec_cat_tensor t[16];
    int64_t vid = 0;
    int err;

    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++)
        make_tensor(&t[i], names[i], 10 + i, 4, 3, seed_counter++);
    err = ec_catalog_add_version(cat, model, version, round, params, t, n, &vid);
    for (size_t i = 0; i < n; i++) {
        if (err == 0) {
            assert_true(t[i].id >= 1);
            assert_int_equal(t[i].version_id, vid);
            assert_int_equal(t[i].version, version);
            assert_string_equal(t[i].model, model);
            if (ids)
                ids[i] = t[i].id;
        }
        ec_cat_tensor_clear(&t[i]);
    }
    return err;
}

static const char *const two[] = {"word_embeddings", "pos_embeddings"};

static void counts(ec_catalog *cat, uint64_t m, uint64_t v, uint64_t t)
{
    uint64_t cm = 99, cv = 99, ct = 99;

    assert_int_equal(ec_catalog_counts(cat, &cm, &cv, &ct), 0);
    assert_int_equal(cm, m);
    assert_int_equal(cv, v);
    assert_int_equal(ct, t);
}

/* Collect list_versions output as "model:version:round:params:aliases;". */
typedef struct listing {
    char text[4096];
    int64_t last_vid;
} listing;

static int collect_version(const ec_cat_version *v, void *arg)
{
    listing *l = arg;
    size_t len = strlen(l->text);

    snprintf(l->text + len, sizeof(l->text) - len, "%s:%lld:%lld:%s:%s;", v->model,
             (long long)v->version, (long long)v->round, v->params_json, v->aliases);
    l->last_vid = v->id;
    return 0;
}

static void list_all(ec_catalog *cat, const char *model, listing *l)
{
    memset(l, 0, sizeof(*l));
    if (ec_catalog_list_versions(cat, model, collect_version, l) != 0)
        fail_msg("list_versions: %s", ec_last_error());
}

/* ------------------------------------------------------------------ */

static void test_add_resolve_by_version_and_alias(void **state)
{
    fx *f = *state;
    ec_cat_tensor t;
    int64_t ids[2], v = 0;

    assert_int_equal(add(f->cat, "bert", 1, 7, "{\"lr\": 0.01}", two, 2, ids), 0);
    assert_int_equal(ec_catalog_set_alias(f->cat, "bert", "current", 1), 0);

    assert_int_equal(ec_catalog_resolve(f->cat, "bert", "1", "word_embeddings", &t), 0);
    assert_int_equal(t.id, ids[0]);
    assert_string_equal(t.model, "bert");
    assert_int_equal(t.version, 1);
    assert_string_equal(t.name, "word_embeddings");
    assert_int_equal(t.dtype, EC_DTYPE_F32);
    assert_int_equal(t.ndim, 2);
    assert_int_equal(t.shape[0], 10);
    assert_int_equal(t.shape[1], 4);
    assert_int_equal(t.rows, 10);
    assert_int_equal(t.row_bytes, 16);
    assert_int_equal(t.rows_per_partition, 3);
    assert_int_equal(t.partitions, 4);
    ec_cat_tensor_clear(&t);

    assert_int_equal(ec_catalog_resolve(f->cat, "bert", "current", "pos_embeddings", &t), 0);
    assert_int_equal(t.id, ids[1]);
    assert_int_equal(t.version, 1);
    assert_int_equal(t.rows, 11);
    ec_cat_tensor_clear(&t);

    /* Leading zeros are still a version number. */
    assert_int_equal(ec_catalog_resolve(f->cat, "bert", "001", "pos_embeddings", &t), 0);
    ec_cat_tensor_clear(&t);

    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "current", &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(ec_catalog_get_tensor(f->cat, ids[1], &t), 0);
    assert_string_equal(t.name, "pos_embeddings");
    ec_cat_tensor_clear(&t);
    counts(f->cat, 1, 1, 2);
}

static void test_alias_switch_and_listing(void **state)
{
    fx *f = *state;
    ec_cat_tensor t;
    listing l;
    int64_t v = 0, ids1[2], ids2[2];

    assert_int_equal(add(f->cat, "bert", 1, 1, NULL, two, 2, ids1), 0);
    assert_int_equal(add(f->cat, "bert", 2, 2, "{ \"b\" : [1, 2],  \"a\":true }", two, 2, ids2),
                     0);
    assert_int_equal(ec_catalog_set_alias(f->cat, "bert", "current", 1), 0);
    assert_int_equal(ec_catalog_set_alias(f->cat, "bert", "canary", 2), 0);
    assert_int_equal(ec_catalog_set_alias(f->cat, "bert", "b_zz", 1), 0);
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "current", &v), 0);
    assert_int_equal(v, 1);

    list_all(f->cat, NULL, &l);
    assert_string_equal(l.text, "bert:1:1:{}:b_zz,current;bert:2:2:{\"b\":[1,2],\"a\":true}:canary;");

    /* Switch current to 2: resolves follow, the listing moves it. */
    assert_int_equal(ec_catalog_set_alias(f->cat, "bert", "current", 2), 0);
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "current", &v), 0);
    assert_int_equal(v, 2);
    assert_int_equal(ec_catalog_resolve(f->cat, "bert", "current", "word_embeddings", &t), 0);
    assert_int_equal(t.id, ids2[0]);
    ec_cat_tensor_clear(&t);
    list_all(f->cat, "bert", &l);
    assert_string_equal(l.text, "bert:1:1:{}:b_zz;bert:2:2:{\"b\":[1,2],\"a\":true}:canary,current;");

    /* An alias cannot point at a version that does not exist. */
    assert_int_equal(ec_catalog_set_alias(f->cat, "bert", "current", 9), EC_ENOENT);
    assert_msg("model 'bert' has no version 9 (versions: 1, 2)");
    assert_int_equal(ec_catalog_set_alias(f->cat, "nobody", "current", 1), EC_ENOENT);
    assert_msg("unknown model 'nobody'");
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "current", &v), 0);
    assert_int_equal(v, 2);

    /* Listing one model; an unknown model lists nothing. */
    assert_int_equal(add(f->cat, "albert", 5, -1, NULL, two, 1, NULL), 0);
    list_all(f->cat, "albert", &l);
    assert_string_equal(l.text, "albert:5:-1:{}:;");
    list_all(f->cat, "nobody", &l);
    assert_string_equal(l.text, "");
    list_all(f->cat, NULL, &l);
    assert_non_null(strstr(l.text, "albert:5:-1:{}:;bert:1:"));
}

static void test_duplicate_version_refused(void **state)
{
    fx *f = *state;
    listing before, after;
    const char *const other[] = {"x"};

    assert_int_equal(add(f->cat, "bert", 3, 1, "{\"a\":1}", two, 2, NULL), 0);
    list_all(f->cat, NULL, &before);
    assert_int_equal(add(f->cat, "bert", 3, 2, "{\"a\":2}", other, 1, NULL), EC_EEXIST);
    assert_msg("model 'bert' version 3 already exists; pick another --version");
    list_all(f->cat, NULL, &after);
    assert_string_equal(before.text, after.text);
    counts(f->cat, 1, 1, 2);
}

static void test_duplicate_tensor_names_atomic(void **state)
{
    fx *f = *state;
    const char *const dup[] = {"a", "b", "a"};
    ec_cat_tensor t;

    assert_int_equal(add(f->cat, "gpt", 1, -1, NULL, dup, 3, NULL), EC_EEXIST);
    assert_msg("tensor name 'a' appears twice");
    /* Nothing left behind: no version, no tensors, not even the model. */
    counts(f->cat, 0, 0, 0);
    assert_int_equal(ec_catalog_resolve(f->cat, "gpt", "1", "a", &t), EC_ENOENT);
    assert_msg("unknown model 'gpt'");

    /* Same for an existing model. */
    assert_int_equal(add(f->cat, "gpt", 1, -1, NULL, two, 2, NULL), 0);
    assert_int_equal(add(f->cat, "gpt", 2, -1, NULL, dup, 3, NULL), EC_EEXIST);
    counts(f->cat, 1, 1, 2);
    assert_int_equal(ec_catalog_resolve(f->cat, "gpt", "2", "a", &t), EC_ENOENT);
    assert_msg("model 'gpt' has no version 2 (versions: 1)");
}

static void test_bad_params_refused(void **state)
{
    fx *f = *state;
    static const char *const bad[] = {"", "{", "{\"a\":}", "[1,2]", "\"s\"", "3", "null",
                                      "{'a':1}", "{\"a\":1} x"};
    listing l;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (add(f->cat, "m", 1, -1, bad[i], two, 1, NULL) != EC_EINVAL)
            fail_msg("params '%s' accepted: %s", bad[i], ec_last_error());
        assert_msg("params");
    }
    counts(f->cat, 0, 0, 0);
    assert_int_equal(add(f->cat, "m", 1, -1, " {\n \"k\" : { \"x\" : 1 } ,\"e\":\"\\u0041\" } ",
                         two, 1, NULL),
                     0);
    list_all(f->cat, "m", &l);
    assert_string_equal(l.text, "m:1:-1:{\"k\":{\"x\":1},\"e\":\"\\u0041\"}:;");
}

static void test_bad_names_refused(void **state)
{
    fx *f = *state;
    char longname[EC_NAME_MAX + 2];
    ec_cat_tensor t;

    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0'; /* EC_NAME_MAX + 1 bytes */

    assert_int_equal(ec_catalog_check_name("model", "bert-base_v1.2"), 0);
    assert_int_equal(ec_catalog_check_name("model", "123"), 0);
    assert_int_equal(ec_catalog_check_name("tensor", "bert/embeddings/word:0"), 0);
    assert_int_equal(ec_catalog_check_name("tensor", "encoder.layer.0.attn-q_w"), 0);
    assert_int_equal(ec_catalog_check_name("alias", "current"), 0);
    assert_int_equal(ec_catalog_check_name("alias", "v2"), 0);
    longname[EC_NAME_MAX] = '\0';
    assert_int_equal(ec_catalog_check_name("model", longname), 0);
    longname[EC_NAME_MAX] = 'a';

    static const struct {
        const char *what, *name, *sub;
    } bad[] = {
        {"model", "", "empty model name"},
        {"model", "a b", "not allowed"},
        {"model", "a/b", "not allowed"},
        {"model", "a:b", "not allowed"},
        {"model", "caf\xc3\xa9", "byte 0xc3"},
        {"model", "tab\t", "not allowed"},
        {"model", "..", "must not start"},
        {"model", "-rf", "must not start"},
        {"alias", "123", "all digits"},
        {"alias", "cur/rent", "not allowed"},
        {"alias", "-1", "must not start"},
        {"tensor", "a b", "not allowed"},
        {"tensor", "a\nb", "not allowed"},
        {"tensor", "/abs", "component"},
        {"tensor", "a//b", "component"},
        {"tensor", "a/../b", "component"},
        {"tensor", "a/", "component"},
        {"tensor", "x\"y", "not allowed"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (ec_catalog_check_name(bad[i].what, bad[i].name) != EC_EINVAL)
            fail_msg("%s name '%s' accepted", bad[i].what, bad[i].name);
        assert_msg(bad[i].sub);
        assert_null(strchr(ec_last_error(), '\n'));
        assert_null(strchr(ec_last_error(), '\t'));
    }
    assert_int_equal(ec_catalog_check_name("model", longname), EC_EINVAL);
    assert_msg("longer than 255 bytes");
    assert_int_equal(ec_catalog_check_name("model", NULL), EC_EINVAL);

    /* The entry points check too, and change nothing. */
    assert_int_equal(add(f->cat, "bad name", 1, -1, NULL, two, 1, NULL), EC_EINVAL);
    const char *const badt[] = {"ok", "no spaces"};
    assert_int_equal(add(f->cat, "m", 1, -1, NULL, badt, 2, NULL), EC_EINVAL);
    assert_msg("no spaces");
    counts(f->cat, 0, 0, 0);
    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 1, NULL), 0);
    assert_int_equal(ec_catalog_set_alias(f->cat, "m", "42", 1), EC_EINVAL);
    assert_msg("all digits");
    assert_int_equal(ec_catalog_resolve(f->cat, "m", "1", "a b", &t), EC_EINVAL);
    assert_int_equal(add(f->cat, "m", 0, -1, NULL, two, 1, NULL), EC_EINVAL);
    assert_int_equal(add(f->cat, "m", 2, -2, NULL, two, 1, NULL), EC_EINVAL);
    counts(f->cat, 1, 1, 1);
}

static void test_bad_tensor_struct_refused(void **state)
{
    fx *f = *state;
    ec_cat_tensor t;
    uint64_t *sums;

    enum { DTYPE, NDIM, ROWS, ROW_BYTES, RPP0, PARTS, NOSUMS, NOPATH, ABSPATH, DOTPATH, NCASES };
    for (int c = 0; c < NCASES; c++) {
        make_tensor(&t, "w", 10, 4, 3, 99);
        sums = t.part_checksums;
        switch (c) {
        case DTYPE: t.dtype = (ec_dtype)42; break;
        case NDIM: t.ndim = 9; break;
        case ROWS: t.rows = 11; break;
        case ROW_BYTES: t.row_bytes = 12; break;
        case RPP0: t.rows_per_partition = 0; break;
        case PARTS: t.partitions = 3; break;
        case NOSUMS: t.part_checksums = NULL; break;
        case NOPATH: t.path[0] = '\0'; break;
        case ABSPATH: snprintf(t.path, sizeof(t.path), "/etc/passwd"); break;
        case DOTPATH: snprintf(t.path, sizeof(t.path), "parts/../../x.ecp"); break;
        }
        int err = ec_catalog_add_version(f->cat, "m", 1, -1, NULL, &t, 1, NULL);
        if (err != (c == DTYPE ? EC_EDTYPE : EC_EINVAL))
            fail_msg("case %d: got %d (%s)", c, err, ec_last_error());
        assert_msg("tensor 'w'");
        t.part_checksums = sums;
        ec_cat_tensor_clear(&t);
    }
    counts(f->cat, 0, 0, 0);

    /* A scalar (ndim 0) is one row; a 1-d tensor has dtype-sized rows. */
    memset(&t, 0, sizeof(t));
    snprintf(t.name, sizeof(t.name), "scale");
    t.dtype = EC_DTYPE_F64;
    t.ndim = 0;
    t.rows = 1;
    t.row_bytes = 8;
    t.rows_per_partition = 1;
    t.partitions = 1;
    snprintf(t.path, sizeof(t.path), "parts/s.ecp");
    uint64_t one = 77;
    t.part_checksums = &one;
    assert_int_equal(ec_catalog_add_version(f->cat, "m", 1, -1, NULL, &t, 1, NULL), 0);
    memset(&t, 0, sizeof(t));
    assert_int_equal(ec_catalog_resolve(f->cat, "m", "1", "scale", &t), 0);
    assert_int_equal(t.ndim, 0);
    assert_int_equal(t.rows, 1);
    assert_int_equal(t.part_checksums[0], 77);
    ec_cat_tensor_clear(&t);

    /* An empty tensor has no partitions; checksums may be NULL, and what
     * comes back is still a valid pointer. */
    make_tensor(&t, "empty", 0, 4, 8, 5);
    free(t.part_checksums);
    t.part_checksums = NULL;
    assert_int_equal(ec_catalog_add_version(f->cat, "m", 2, -1, NULL, &t, 1, NULL), 0);
    assert_int_equal(ec_catalog_resolve(f->cat, "m", "2", "empty", &t), 0);
    assert_int_equal(t.partitions, 0);
    assert_non_null(t.part_checksums);
    ec_cat_tensor_clear(&t);
}

static void test_unknown_parts_messages(void **state)
{
    fx *f = *state;
    ec_cat_tensor t;
    int64_t v;

    assert_int_equal(add(f->cat, "bert", 1, -1, NULL, two, 2, NULL), 0);
    assert_int_equal(add(f->cat, "bert", 2, -1, NULL, two, 2, NULL), 0);
    assert_int_equal(ec_catalog_set_alias(f->cat, "bert", "current", 2), 0);

    memset(&t, 0xab, sizeof(t));
    assert_int_equal(ec_catalog_resolve(f->cat, "x", "1", "word_embeddings", &t), EC_ENOENT);
    assert_msg("unknown model 'x'; 'embcache ls' lists models");
    assert_int_equal(t.id, (int64_t)0xabababababababab); /* untouched on failure */

    assert_int_equal(ec_catalog_resolve(f->cat, "bert", "7", "word_embeddings", &t), EC_ENOENT);
    assert_msg("model 'bert' has no version 7 (versions: 1, 2)");

    assert_int_equal(ec_catalog_resolve(f->cat, "bert", "canary", "word_embeddings", &t),
                     EC_ENOENT);
    assert_msg("model 'bert' has no alias 'canary' (aliases: current)");

    assert_int_equal(ec_catalog_resolve(f->cat, "bert", "current", "foo", &t), EC_ENOENT);
    assert_msg("model 'bert' version 2 has no tensor 'foo' (tensors: pos_embeddings, "
               "word_embeddings)");

    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "beta", &v), EC_ENOENT);
    assert_msg("no alias 'beta'");
    assert_int_equal(ec_catalog_version_of(f->cat, "ernie", "1", &v), EC_ENOENT);
    assert_msg("unknown model 'ernie'");

    /* Signs, overflow and empty strings are not versions. */
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "-1", &v), EC_EINVAL);
    assert_msg("without a sign");
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "+2", &v), EC_EINVAL);
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "9223372036854775808", &v),
                     EC_EINVAL);
    assert_msg("out of range");
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "9223372036854775807", &v),
                     EC_ENOENT);
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "", &v), EC_EINVAL);
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "0", &v), EC_ENOENT);
    assert_int_equal(ec_catalog_get_tensor(f->cat, 12345, &t), EC_ENOENT);
    assert_int_equal(ec_catalog_drop_version(f->cat, "bert", 9, NULL, NULL), EC_ENOENT);
    assert_msg("model 'bert' has no version 9 (versions: 1, 2)");
}

static void test_unknown_tensor_list_truncated(void **state)
{
    fx *f = *state;
    char names[16][64];
    const char *np[16];
    ec_cat_tensor t;

    for (int i = 0; i < 16; i++) {
        snprintf(names[i], sizeof(names[i]), "encoder.layer.%02d.attention.self.query.weight",
                 i);
        np[i] = names[i];
    }
    assert_int_equal(add(f->cat, "big", 1, -1, NULL, np, 16, NULL), 0);
    assert_int_equal(ec_catalog_resolve(f->cat, "big", "1", "nope", &t), EC_ENOENT);
    assert_msg("model 'big' version 1 has no tensor 'nope' (tensors: encoder.layer.00.");
    assert_msg(", ...)");
    assert_null(strstr(ec_last_error(), "layer.15"));
    assert_true(strlen(ec_last_error()) < 300);
}

static void test_find_by_round_and_params(void **state)
{
    fx *f = *state;
    int64_t v = 0;

    assert_int_equal(add(f->cat, "m", 1, 5, "{\"lr\":0.1,\"opt\":{\"name\":\"adam\",\"b\":[1,2]}}",
                         two, 1, NULL),
                     0);
    assert_int_equal(add(f->cat, "m", 2, 5, "{\"lr\":0.2}", two, 1, NULL), 0);
    assert_int_equal(add(f->cat, "m", 3, 6, "{\"lr\":0.1}", two, 1, NULL), 0);
    assert_int_equal(add(f->cat, "m", 4, 5, "{\"lr\":0.2}", two, 1, NULL), 0);

    /* Newest of the round, params ignored when NULL. */
    assert_int_equal(ec_catalog_find(f->cat, "m", 5, NULL, &v), 0);
    assert_int_equal(v, 4);
    assert_int_equal(ec_catalog_find(f->cat, "m", 6, NULL, &v), 0);
    assert_int_equal(v, 3);
    /* Newest with equal params. */
    assert_int_equal(ec_catalog_find(f->cat, "m", 5, "{ \"lr\" : 0.2 }", &v), 0);
    assert_int_equal(v, 4);
    /* Whitespace and key order (nested too) do not matter; array order does. */
    assert_int_equal(ec_catalog_find(f->cat, "m", 5,
                                     "{ \"opt\": {\"b\": [1, 2], \"name\": \"adam\"},\n"
                                     "  \"lr\": 0.1 }",
                                     &v),
                     0);
    assert_int_equal(v, 1);
    v = -7;
    assert_int_equal(ec_catalog_find(f->cat, "m", 5,
                                     "{\"opt\":{\"b\":[2,1],\"name\":\"adam\"},\"lr\":0.1}", &v),
                     EC_ENOENT);
    assert_int_equal(v, -7);
    assert_msg("model 'm' has no version of round 5 with params");
    assert_int_equal(ec_catalog_find(f->cat, "m", 6, "{\"lr\":0.2}", &v), EC_ENOENT);
    assert_int_equal(ec_catalog_find(f->cat, "m", 7, NULL, &v), EC_ENOENT);
    assert_int_equal(ec_catalog_find(f->cat, "m", 5, "{\"lr\":\"0.2\"}", &v), EC_ENOENT);
    assert_int_equal(ec_catalog_find(f->cat, "m", 5, "[1]", &v), EC_EINVAL);
    assert_int_equal(ec_catalog_find(f->cat, "zz", 5, NULL, &v), EC_ENOENT);
    assert_msg("unknown model 'zz'");
}

typedef struct paths {
    int n;
    char p[16][EC_CAT_PATH_MAX];
    int fail_at; /* return -1234 at this call (1-based); 0 = never */
} paths;

static int collect_path(const char *path, void *arg)
{
    paths *ps = arg;

    assert_true(ps->n < 16);
    snprintf(ps->p[ps->n++], EC_CAT_PATH_MAX, "%s", path);
    return ps->fail_at == ps->n ? -1234 : 0;
}

static void test_drop_version(void **state)
{
    fx *f = *state;
    paths ps;
    ec_cat_tensor t, t2;
    int64_t ids1[2], ids2[2], v;

    assert_int_equal(add(f->cat, "bert", 1, -1, NULL, two, 2, ids1), 0);
    assert_int_equal(add(f->cat, "bert", 2, -1, NULL, two, 2, ids2), 0);
    assert_int_equal(ec_catalog_set_alias(f->cat, "bert", "current", 1), 0);
    assert_int_equal(ec_catalog_set_alias(f->cat, "bert", "old", 1), 0);
    assert_int_equal(ec_catalog_set_alias(f->cat, "bert", "next", 2), 0);
    assert_int_equal(ec_catalog_get_tensor(f->cat, ids1[0], &t), 0);
    assert_int_equal(ec_catalog_get_tensor(f->cat, ids1[1], &t2), 0);

    /* A failing on_path rolls the drop back. */
    memset(&ps, 0, sizeof(ps));
    ps.fail_at = 2;
    assert_int_equal(ec_catalog_drop_version(f->cat, "bert", 1, collect_path, &ps), -1234);
    counts(f->cat, 1, 2, 4);
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "current", &v), 0);

    memset(&ps, 0, sizeof(ps));
    assert_int_equal(ec_catalog_drop_version(f->cat, "bert", 1, collect_path, &ps), 0);
    assert_int_equal(ps.n, 2);
    /* Reported in name order: pos_embeddings (ids1[1]) first. */
    assert_string_equal(ps.p[0], t2.path);
    assert_string_equal(ps.p[1], t.path);
    ec_cat_tensor_clear(&t);
    ec_cat_tensor_clear(&t2);

    counts(f->cat, 1, 1, 2);
    assert_int_equal(ec_catalog_get_tensor(f->cat, ids1[0], &t), EC_ENOENT);
    assert_int_equal(ec_catalog_resolve(f->cat, "bert", "1", "word_embeddings", &t), EC_ENOENT);
    assert_msg("model 'bert' has no version 1 (versions: 2)");
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "current", &v), EC_ENOENT);
    assert_msg("no alias 'current' (aliases: next)");
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "next", &v), 0);
    assert_int_equal(v, 2);
    assert_int_equal(ec_catalog_get_tensor(f->cat, ids2[0], &t), 0);
    ec_cat_tensor_clear(&t);
    assert_int_equal(ec_catalog_drop_version(f->cat, "bert", 1, collect_path, &ps), EC_ENOENT);

    /* Dropping the last version removes the model. */
    memset(&ps, 0, sizeof(ps));
    assert_int_equal(ec_catalog_drop_version(f->cat, "bert", 2, collect_path, &ps), 0);
    assert_int_equal(ps.n, 2);
    counts(f->cat, 0, 0, 0);
    assert_int_equal(ec_catalog_version_of(f->cat, "bert", "2", &v), EC_ENOENT);
    assert_msg("unknown model 'bert'");
    assert_int_equal(ec_catalog_drop_version(f->cat, "bert", 2, NULL, NULL), EC_ENOENT);
}

static int count_path(const char *path, void *arg)
{
    (void)path;
    (*(int *)arg)++;
    return 0;
}

static void test_tensor_ids_never_reused(void **state)
{
    fx *f = *state;
    int64_t a[2], b[2], c[2], d[2];
    int n = 0;

    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 2, a), 0);
    assert_int_equal(add(f->cat, "m", 2, -1, NULL, two, 2, b), 0);
    /* Drop the version holding the highest ids: plain rowids would hand
     * them out again. */
    assert_int_equal(ec_catalog_drop_version(f->cat, "m", 2, NULL, NULL), 0);
    assert_int_equal(add(f->cat, "m", 3, -1, NULL, two, 2, c), 0);
    assert_true(c[0] > b[1] && c[1] > b[1]);
    assert_int_equal(ec_catalog_drop_version(f->cat, "m", 3, NULL, NULL), 0);
    assert_int_equal(ec_catalog_drop_version(f->cat, "m", 1, NULL, NULL), 0);
    counts(f->cat, 0, 0, 0);
    reopen(f);
    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 2, d), 0);
    assert_true(d[0] > c[1] && d[1] > c[1]);
    assert_int_equal(ec_catalog_foreach_path(f->cat, count_path, &n), 0);
    assert_int_equal(n, 2);
}

static void test_tensor_id_space_capped(void **state)
{
    fx *f = *state;
    const char *const one[] = {"only"};
    int64_t ids[2];

    assert_int_equal(add(f->cat, "m", 1, -1, NULL, one, 1, NULL), 0);
    raw_sql(f->path, "UPDATE sqlite_sequence SET seq = 4294967294 WHERE name = 'tensors'");
    /* The second tensor would get id 2^32: the whole version is refused. */
    assert_int_equal(add(f->cat, "m", 2, -1, NULL, two, 2, NULL), EC_ENOSPC);
    assert_msg("32-bit");
    counts(f->cat, 1, 1, 1);
    assert_int_equal(add(f->cat, "m", 2, -1, NULL, one, 1, ids), 0);
    assert_int_equal(ids[0], INT64_C(4294967295));
    assert_int_equal(add(f->cat, "m", 3, -1, NULL, one, 1, NULL), EC_ENOSPC);
    counts(f->cat, 1, 2, 2);
}

static void test_reopen_persists(void **state)
{
    fx *f = *state;
    listing before, after;
    ec_cat_tensor t;
    int64_t ids[2], v;

    assert_int_equal(add(f->cat, "bert", 1, 3, "{\"a\":[1,{\"b\":null}]}", two, 2, ids), 0);
    assert_int_equal(add(f->cat, "gpt", 4, -1, NULL, two, 1, NULL), 0);
    assert_int_equal(ec_catalog_set_alias(f->cat, "bert", "current", 1), 0);
    list_all(f->cat, NULL, &before);
    reopen(f);
    list_all(f->cat, NULL, &after);
    assert_string_equal(before.text, after.text);
    counts(f->cat, 2, 2, 3);
    assert_int_equal(ec_catalog_resolve(f->cat, "bert", "current", "pos_embeddings", &t), 0);
    assert_int_equal(t.id, ids[1]);
    assert_int_equal(t.partitions, 4);
    for (uint64_t p = 0; p < t.partitions; p++)
        assert_true(t.part_checksums[p] == sum_of(seed_counter - 2, p));
    ec_cat_tensor_clear(&t);
    assert_int_equal(ec_catalog_find(f->cat, "bert", 3, "{\"a\":[1,{\"b\":null}]}", &v), 0);
    assert_int_equal(v, 1);
}

/* refresh: new checksums for a file changed in place; the layout is fixed. */
static void test_update_file(void **state)
{
    fx *f = *state;
    ec_cat_tensor t, got;
    uint64_t sums[4] = {1, 2, 3, UINT64_MAX};

    make_tensor(&t, "w", 10, 4, 3, 77);
    assert_int_equal(t.partitions, 4);
    assert_int_equal(ec_catalog_add_version(f->cat, "m", 1, -1, NULL, &t, 1, NULL), 0);
    assert_int_equal(ec_catalog_update_file(f->cat, t.id, 999, 42, sums, 4), 0);
    reopen(f);
    assert_int_equal(ec_catalog_get_tensor(f->cat, t.id, &got), 0);
    assert_memory_equal(got.part_checksums, sums, sizeof(sums));
    assert_true(got.file_size == 999 && got.header_checksum == 42);
    ec_cat_tensor_clear(&got);
    /* Another partition count (a new layout) or a missing tensor: refused,
     * and nothing changes. */
    assert_int_equal(ec_catalog_update_file(f->cat, t.id, 1, 1, sums, 3), EC_ENOENT);
    assert_int_equal(ec_catalog_update_file(f->cat, t.id + 100, 1, 1, sums, 4), EC_ENOENT);
    assert_int_equal(ec_catalog_get_tensor(f->cat, t.id, &got), 0);
    assert_memory_equal(got.part_checksums, sums, sizeof(sums));
    ec_cat_tensor_clear(&got);
    ec_cat_tensor_clear(&t);
}

static void test_part_checksums_roundtrip(void **state)
{
    fx *f = *state;
    ec_cat_tensor t, got;
    uint64_t *want;

    make_tensor(&t, "table", 100000, 8, 7, 4242);
    assert_int_equal(t.partitions, 14286);
    t.part_checksums[0] = 0;
    t.part_checksums[1] = UINT64_MAX;
    t.part_checksums[2] = 1ULL << 63;
    t.part_checksums[3] = 0x0102030405060708ULL;
    t.header_checksum = UINT64_MAX - 1;
    t.file_size = (1ULL << 63) + 5;
    want = t.part_checksums;
    assert_int_equal(ec_catalog_add_version(f->cat, "m", 1, -1, NULL, &t, 1, NULL), 0);
    reopen(f);
    assert_int_equal(ec_catalog_get_tensor(f->cat, t.id, &got), 0);
    assert_int_equal(got.partitions, t.partitions);
    assert_memory_equal(got.part_checksums, want, t.partitions * 8);
    assert_true(got.header_checksum == UINT64_MAX - 1);
    assert_true(got.file_size == (1ULL << 63) + 5);
    assert_string_equal(got.path, t.path);
    ec_cat_tensor_clear(&got);

    /* Stored little-endian, whatever the host. */
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT part_checksums FROM tensors WHERE id = ?1",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_bind_int64(st, 1, t.id), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_bytes(st, 0), (int)(t.partitions * 8));
    const unsigned char *b = sqlite3_column_blob(st, 0);
    static const unsigned char le[8] = {8, 7, 6, 5, 4, 3, 2, 1};
    assert_memory_equal(b + 24, le, 8);
    sqlite3_finalize(st);
    sqlite3_close(db);
    ec_cat_tensor_clear(&t);
}

/* Schema 6's remote tier columns: a lazily pulled tensor keeps its
 * manifest index and chunk size; a local one reads back as local; values
 * out of range are refused on the way in and detected on the way out. */
static void test_remote_fields(void **state)
{
    fx *f = *state;
    ec_cat_tensor t[2], got;
    char sql[160];

    make_tensor(&t[0], "lazy", 100, 4, 10, 777);
    make_tensor(&t[1], "local", 100, 4, 10, 778);
    t[0].remote = true;
    t[0].remote_index = 3;
    t[0].remote_chunk = 1u << 20;
    assert_int_equal(ec_catalog_add_version(f->cat, "m", 1, -1, NULL, t, 2, NULL), 0);
    reopen(f);
    assert_int_equal(ec_catalog_get_tensor(f->cat, t[0].id, &got), 0);
    assert_true(got.remote);
    assert_int_equal(got.remote_index, 3);
    assert_int_equal(got.remote_chunk, 1u << 20);
    ec_cat_tensor_clear(&got);
    assert_int_equal(ec_catalog_get_tensor(f->cat, t[1].id, &got), 0);
    assert_false(got.remote);
    assert_int_equal(got.remote_index, 0);
    ec_cat_tensor_clear(&got);

    /* Refused: a chunk size no manifest has. */
    ec_cat_tensor_clear(&t[1]);
    make_tensor(&t[1], "bad", 100, 4, 10, 779);
    t[1].remote = true;
    t[1].remote_chunk = 100;
    assert_int_equal(ec_catalog_add_version(f->cat, "m", 2, -1, NULL, &t[1], 1, NULL),
                     EC_EINVAL);
    /* Detected: a row changed behind the catalog. */
    snprintf(sql, sizeof(sql), "UPDATE tensors SET remote_chunk = 7 WHERE id = %lld",
             (long long)t[0].id);
    raw_sql(f->path, sql);
    assert_int_equal(ec_catalog_get_tensor(f->cat, t[0].id, &got), EC_ECORRUPT);
    ec_cat_tensor_clear(&t[0]);
    ec_cat_tensor_clear(&t[1]);
}

static void test_corrupt_row_detected(void **state)
{
    fx *f = *state;
    ec_cat_tensor t;
    int64_t ids[2];
    char sql[128];

    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 2, ids), 0);
    snprintf(sql, sizeof(sql), "UPDATE tensors SET part_checksums = x'0102' WHERE id = %lld",
             (long long)ids[0]);
    raw_sql(f->path, sql);
    memset(&t, 0, sizeof(t));
    assert_int_equal(ec_catalog_get_tensor(f->cat, ids[0], &t), EC_ECORRUPT);
    assert_null(t.part_checksums);
    snprintf(sql, sizeof(sql), "UPDATE tensors SET path = '../../etc/passwd' WHERE id = %lld",
             (long long)ids[1]);
    raw_sql(f->path, sql);
    assert_int_equal(ec_catalog_get_tensor(f->cat, ids[1], &t), EC_ECORRUPT);
    assert_int_equal(ec_catalog_drop_version(f->cat, "m", 1, NULL, NULL), EC_ECORRUPT);
    counts(f->cat, 1, 1, 2);
}

static void test_not_sqlite_is_corrupt(void **state)
{
    fx *f = *state;
    char *path, junk[4096];
    ec_catalog *cat = (ec_catalog *)0x1;

    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = "this is not a database\n"[i % 23];
    assert_true(asprintf(&path, "%s/junk.db", f->dir) > 0);
    assert_int_equal(ect_write_file(path, junk, sizeof(junk)), 0);
    assert_int_equal(ec_catalog_open(path, &cat), EC_ECORRUPT);
    assert_msg("not a database");
    assert_msg("junk.db");
    assert_ptr_equal(cat, (ec_catalog *)0x1);
    free(path);
    assert_true(asprintf(&path, "%s/no/such/dir/catalog.db", f->dir) > 0);
    assert_int_equal(ec_catalog_open(path, &cat), EC_EIO);
    free(path);
}

static void test_newer_schema_refused(void **state)
{
    fx *f = *state;
    ec_catalog *cat = NULL;

    ec_catalog_close(f->cat);
    f->cat = NULL;
    raw_sql(f->path, "PRAGMA user_version = 7");
    assert_int_equal(ec_catalog_open(f->path, &cat), EC_EVERSION);
    assert_msg("catalog schema version 7 is newer than this embcached understands (6)");
    raw_sql(f->path, "PRAGMA user_version = 6");
    reopen(f);
}

/* A schema-1 catalog (before residency policies) is upgraded on open and
 * keeps its versions. */
static void test_schema_1_upgraded(void **state)
{
    fx *f = *state;
    uint64_t res = 1;
    double rate = 1;
    int64_t v = 0;

    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 2, NULL), 0);
    ec_catalog_close(f->cat);
    f->cat = NULL;
    raw_sql(f->path, "DROP TABLE dynamic; DROP TABLE namespaces; DROP TABLE tensor_policy; "
                     "DROP TABLE model_policy; " "ALTER TABLE tensors DROP COLUMN remote_index; "
                     "ALTER TABLE tensors DROP COLUMN remote_chunk; "
                     "PRAGMA user_version = 1");
    reopen(f);
    assert_int_equal(raw_int(f->path, "PRAGMA user_version"), 6);
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", NULL, EC_CACHE_ROWS), 0);
    assert_int_equal(ec_catalog_version_of(f->cat, "m", "1", &v), 0);
    assert_int_equal(v, 1);
    assert_int_equal(ec_catalog_set_policy(f->cat, "m", 4096, 2.5), 0);
    {
        ec_cat_tensor t = {0};
        assert_int_equal(ec_catalog_resolve(f->cat, "m", "1", "word_embeddings", &t), 0);
        assert_int_equal(ec_catalog_get_policy(f->cat, t.version_id, &res, &rate), 0);
        ec_cat_tensor_clear(&t);
    }
    assert_int_equal(res, 4096);
    assert_true(rate == 2.5);
}

/* An upgrade that fails part-way (here 2 to 3, after 1 to 2 ran) leaves the
 * catalog at the version it had, and says so. */
static void test_failed_upgrade_changes_nothing(void **state)
{
    fx *f = *state;
    ec_catalog *cat = (ec_catalog *)0x1;
    listing l;

    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 2, NULL), 0);
    ec_catalog_close(f->cat);
    f->cat = NULL;
    /* A schema-1 file that already has a table schema 3 would create. */
    raw_sql(f->path, "DROP TABLE dynamic; DROP TABLE model_policy; "
                     "ALTER TABLE tensors DROP COLUMN remote_index; "
                     "ALTER TABLE tensors DROP COLUMN remote_chunk; "
                     "ALTER TABLE namespaces DROP COLUMN remote; PRAGMA user_version = 1");
    assert_int_equal(ec_catalog_open(f->path, &cat), EC_EIO);
    assert_msg("catalog left at schema version 1");
    assert_msg("upgrade schema 2 to 3: table tensor_policy already exists");
    assert_ptr_equal(cat, (ec_catalog *)0x1);
    assert_int_equal(raw_int(f->path, "PRAGMA user_version"), 1);
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM sqlite_master "
                                      "WHERE name = 'model_policy'"),
                     0);
    /* Once the cause is gone, it upgrades. */
    raw_sql(f->path, "DROP TABLE tensor_policy; DROP TABLE namespaces");
    reopen(f);
    assert_int_equal(raw_int(f->path, "PRAGMA user_version"), 6);
    list_all(f->cat, NULL, &l);
    assert_string_equal(l.text, "m:1:-1:{}:;");
}

static void test_policy(void **state)
{
    fx *f = *state;
    ec_cat_tensor t = {0};
    uint64_t res = 9;
    double rate = 9;

    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 2, NULL), 0);
    assert_int_equal(ec_catalog_resolve(f->cat, "m", "1", "word_embeddings", &t), 0);
    /* None set: zeros. */
    assert_int_equal(ec_catalog_get_policy(f->cat, t.version_id, &res, &rate), 0);
    assert_true(res == 0 && rate == 0);
    assert_int_equal(ec_catalog_set_policy(f->cat, "m", 1 << 20, 0.5), 0);
    assert_int_equal(ec_catalog_set_policy(f->cat, "m", 2 << 20, 0.25), 0);
    reopen(f);
    assert_int_equal(ec_catalog_get_policy(f->cat, t.version_id, &res, &rate), 0);
    assert_true(res == 2 << 20 && rate == 0.25);
    assert_int_equal(ec_catalog_set_policy(f->cat, "nobody", 1, 1), EC_ENOENT);
    assert_int_equal(ec_catalog_set_policy(f->cat, "m", 1, -1), EC_EINVAL);
    assert_int_equal(ec_catalog_get_policy(f->cat, t.version_id + 1000, &res, &rate),
                     EC_ENOENT);
    ec_cat_tensor_clear(&t);
}

/* ------------------------------------------------------------------ */
/* Per-tensor cache modes                                              */

/* The version id of (model, version or alias); its tensors are `two`. */
static int64_t vid_of(ec_catalog *cat, const char *model, const char *voa)
{
    ec_cat_tensor t;
    int64_t vid;

    if (ec_catalog_resolve(cat, model, voa, "word_embeddings", &t) != 0)
        fail_msg("resolve %s@%s: %s", model, voa, ec_last_error());
    vid = t.version_id;
    ec_cat_tensor_clear(&t);
    return vid;
}

static ec_cache_mode mode_of(ec_catalog *cat, int64_t vid, const char *tensor)
{
    ec_cache_mode m = (ec_cache_mode)99;

    if (ec_catalog_get_tensor_mode(cat, vid, tensor, &m) != 0)
        fail_msg("get_tensor_mode %lld '%s': %s", (long long)vid, tensor ? tensor : "(null)",
                 ec_last_error());
    return m;
}

/* Collect list_tensor_modes output as "model:tensor:mode;". */
static int collect_mode(const char *model, const char *tensor, ec_cache_mode mode, void *arg)
{
    listing *l = arg;
    size_t len = strlen(l->text);

    snprintf(l->text + len, sizeof(l->text) - len, "%s:%s:%d;", model, tensor, (int)mode);
    return 0;
}

static void list_modes(ec_catalog *cat, const char *model, listing *l)
{
    memset(l, 0, sizeof(*l));
    if (ec_catalog_list_tensor_modes(cat, model, collect_mode, l) != 0)
        fail_msg("list_tensor_modes: %s", ec_last_error());
}

static void test_tensor_modes_precedence(void **state)
{
    fx *f = *state;
    int64_t v1, v2, n1;
    listing l;

    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 2, NULL), 0);
    assert_int_equal(add(f->cat, "n", 1, -1, NULL, two, 2, NULL), 0);
    v1 = vid_of(f->cat, "m", "1");
    n1 = vid_of(f->cat, "n", "1");
    /* Nothing set: the daemon's choice. */
    assert_int_equal(mode_of(f->cat, v1, "word_embeddings"), EC_CACHE_AUTO);
    assert_int_equal(mode_of(f->cat, v1, NULL), EC_CACHE_AUTO);
    list_modes(f->cat, NULL, &l);
    assert_string_equal(l.text, "");

    /* A model-wide mode covers every tensor, those no version has too. */
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "", EC_CACHE_ROWS), 0);
    assert_int_equal(mode_of(f->cat, v1, "word_embeddings"), EC_CACHE_ROWS);
    assert_int_equal(mode_of(f->cat, v1, "pos_embeddings"), EC_CACHE_ROWS);
    assert_int_equal(mode_of(f->cat, v1, "not/yet:imported"), EC_CACHE_ROWS);
    /* Another model is not touched. */
    assert_int_equal(mode_of(f->cat, n1, "word_embeddings"), EC_CACHE_AUTO);

    /* A tensor's own mode wins over the model-wide one. */
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "word_embeddings",
                                                EC_CACHE_PARTITIONS), 0);
    assert_int_equal(mode_of(f->cat, v1, "word_embeddings"), EC_CACHE_PARTITIONS);
    assert_int_equal(mode_of(f->cat, v1, "pos_embeddings"), EC_CACHE_ROWS);
    assert_int_equal(mode_of(f->cat, v1, NULL), EC_CACHE_ROWS);

    /* Modes are the model's: a version imported later has them. */
    assert_int_equal(add(f->cat, "m", 2, -1, NULL, two, 2, NULL), 0);
    v2 = vid_of(f->cat, "m", "2");
    assert_int_equal(mode_of(f->cat, v2, "word_embeddings"), EC_CACHE_PARTITIONS);
    assert_int_equal(mode_of(f->cat, v2, "pos_embeddings"), EC_CACHE_ROWS);

    /* Setting again replaces; NULL is the model-wide row too. */
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "n", "pos_embeddings", EC_CACHE_ROWS),
                     0);
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "n", "pos_embeddings",
                                                EC_CACHE_PARTITIONS), 0);
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "n", NULL, EC_CACHE_ROWS), 0);
    list_modes(f->cat, NULL, &l);
    assert_string_equal(l.text, "m::2;m:word_embeddings:1;n::2;n:pos_embeddings:1;");
    list_modes(f->cat, "n", &l);
    assert_string_equal(l.text, "n::2;n:pos_embeddings:1;");

    /* AUTO removes the row: the model-wide one, then the tensor's. */
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", NULL, EC_CACHE_AUTO), 0);
    assert_int_equal(mode_of(f->cat, v1, "pos_embeddings"), EC_CACHE_AUTO);
    assert_int_equal(mode_of(f->cat, v1, "word_embeddings"), EC_CACHE_PARTITIONS);
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "word_embeddings",
                                                EC_CACHE_AUTO), 0);
    assert_int_equal(mode_of(f->cat, v2, "word_embeddings"), EC_CACHE_AUTO);
    /* Removing what is not there is not an error. */
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "word_embeddings",
                                                EC_CACHE_AUTO), 0);
    list_modes(f->cat, "m", &l);
    assert_string_equal(l.text, "");
    list_modes(f->cat, NULL, &l);
    assert_string_equal(l.text, "n::2;n:pos_embeddings:1;");
}

/* A listing callback: try a change (refused in there), then stop. */
static int mode_change_inside(const char *model, const char *tensor, ec_cache_mode mode,
                              void *arg)
{
    ec_catalog *cat = arg;

    (void)tensor;
    (void)mode;
    assert_int_equal(ec_catalog_set_tensor_mode(cat, model, NULL, EC_CACHE_AUTO), EC_EINVAL);
    assert_msg("from inside a catalog callback");
    return 7;
}

static void test_tensor_modes_refused(void **state)
{
    fx *f = *state;
    ec_cache_mode m = (ec_cache_mode)99;
    listing l;
    int64_t v1;

    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 2, NULL), 0);
    v1 = vid_of(f->cat, "m", "1");
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "word_embeddings", EC_CACHE_ROWS),
                     0);

    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "nobody", NULL, EC_CACHE_ROWS),
                     EC_ENOENT);
    assert_msg("unknown model 'nobody'");
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "nobody", "x", EC_CACHE_AUTO),
                     EC_ENOENT);
    assert_msg("unknown model 'nobody'");
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "x", (ec_cache_mode)3), EC_EINVAL);
    assert_msg("cache mode 3 for model 'm' is not valid; use 0 (auto), 1 (partitions) or "
               "2 (rows)");
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "x", (ec_cache_mode)-1),
                     EC_EINVAL);
    assert_msg("cache mode -1");
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "a b", EC_CACHE_ROWS), EC_EINVAL);
    assert_msg("model 'm': tensor name 'a b' has a character not allowed");
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "a/../b", EC_CACHE_ROWS),
                     EC_EINVAL);
    assert_msg("component");
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, NULL, NULL, EC_CACHE_ROWS), EC_EINVAL);
    assert_msg("no model name given");
    assert_int_equal(ec_catalog_set_tensor_mode(NULL, "m", NULL, EC_CACHE_ROWS), EC_EINVAL);

    assert_int_equal(ec_catalog_get_tensor_mode(f->cat, v1 + 1000, "word_embeddings", &m),
                     EC_ENOENT);
    assert_msg("is not in the catalog");
    assert_int_equal(ec_catalog_get_tensor_mode(f->cat, v1, "a b", &m), EC_EINVAL);
    assert_int_equal(ec_catalog_get_tensor_mode(f->cat, v1, "x", NULL), EC_EINVAL);
    assert_int_equal(m, (ec_cache_mode)99); /* written only on success */

    assert_int_equal(ec_catalog_list_tensor_modes(f->cat, "nobody", collect_mode, &l),
                     EC_ENOENT);
    assert_msg("unknown model 'nobody'");
    assert_int_equal(ec_catalog_list_tensor_modes(f->cat, "bad name", collect_mode, &l),
                     EC_EINVAL);
    assert_int_equal(ec_catalog_list_tensor_modes(f->cat, NULL, NULL, NULL), EC_EINVAL);
    /* The callback's value stops the listing; a change from inside is refused. */
    assert_int_equal(ec_catalog_list_tensor_modes(f->cat, NULL, mode_change_inside, f->cat), 7);

    /* None of that changed anything. */
    list_modes(f->cat, NULL, &l);
    assert_string_equal(l.text, "m:word_embeddings:2;");
    assert_int_equal(mode_of(f->cat, v1, "word_embeddings"), EC_CACHE_ROWS);
}

static void test_tensor_modes_survive_reopen(void **state)
{
    fx *f = *state;
    listing l;
    int64_t v1;

    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 2, NULL), 0);
    v1 = vid_of(f->cat, "m", "1");
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", NULL, EC_CACHE_PARTITIONS), 0);
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "pos_embeddings", EC_CACHE_ROWS),
                     0);
    reopen(f);
    assert_int_equal(mode_of(f->cat, v1, "word_embeddings"), EC_CACHE_PARTITIONS);
    assert_int_equal(mode_of(f->cat, v1, "pos_embeddings"), EC_CACHE_ROWS);
    list_modes(f->cat, "m", &l);
    assert_string_equal(l.text, "m::1;m:pos_embeddings:2;");
}

/* A model's modes go when its last version is dropped: a model registered
 * again later (possibly under the same row id) starts from AUTO. */
static void test_tensor_modes_go_with_model(void **state)
{
    fx *f = *state;
    listing l;
    int64_t v2;

    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 2, NULL), 0);
    assert_int_equal(add(f->cat, "m", 2, -1, NULL, two, 2, NULL), 0);
    assert_int_equal(add(f->cat, "keep", 1, -1, NULL, two, 2, NULL), 0);
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", NULL, EC_CACHE_ROWS), 0);
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "word_embeddings",
                                                EC_CACHE_PARTITIONS), 0);
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "keep", "x", EC_CACHE_ROWS), 0);

    /* Dropping one version keeps them: they are the model's. */
    assert_int_equal(ec_catalog_drop_version(f->cat, "m", 1, NULL, NULL), 0);
    v2 = vid_of(f->cat, "m", "2");
    assert_int_equal(mode_of(f->cat, v2, "word_embeddings"), EC_CACHE_PARTITIONS);

    /* Dropping the last one removes the model and its rows. */
    assert_int_equal(ec_catalog_drop_version(f->cat, "m", 2, NULL, NULL), 0);
    list_modes(f->cat, NULL, &l);
    assert_string_equal(l.text, "keep:x:2;");
    assert_int_equal(raw_int(f->path, "SELECT count(*) FROM tensor_policy"), 1);
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", NULL, EC_CACHE_ROWS), EC_ENOENT);
    assert_int_equal(add(f->cat, "m", 3, -1, NULL, two, 2, NULL), 0);
    assert_int_equal(mode_of(f->cat, vid_of(f->cat, "m", "3"), "word_embeddings"),
                     EC_CACHE_AUTO);
}

/* A mode the CHECK constraint would refuse, written behind its back, is
 * reported, not handed to the engine. */
static void test_tensor_mode_corrupt_detected(void **state)
{
    fx *f = *state;
    ec_cache_mode m = (ec_cache_mode)99;
    listing l;
    int64_t v1;

    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 2, NULL), 0);
    v1 = vid_of(f->cat, "m", "1");
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "word_embeddings", EC_CACHE_ROWS),
                     0);
    raw_sql(f->path, "PRAGMA ignore_check_constraints = 1; UPDATE tensor_policy SET mode = 7");
    assert_int_equal(ec_catalog_get_tensor_mode(f->cat, v1, "word_embeddings", &m),
                     EC_ECORRUPT);
    assert_msg("cache mode 7");
    assert_int_equal(m, (ec_cache_mode)99);
    assert_int_equal(ec_catalog_list_tensor_modes(f->cat, "m", collect_mode, &l), EC_ECORRUPT);
    assert_msg("restore the catalog");
    /* Setting it again repairs it. */
    assert_int_equal(ec_catalog_set_tensor_mode(f->cat, "m", "word_embeddings",
                                                EC_CACHE_PARTITIONS), 0);
    assert_int_equal(mode_of(f->cat, v1, "word_embeddings"), EC_CACHE_PARTITIONS);
}

/*
 * A schema-2 catalog, as embcached wrote it before cache modes: a frozen
 * copy of schema 2's DDL (catalog_fixture.h; not derived from catalog.c,
 * which moves on), with one model, version, alias, tensor and residency
 * policy.
 * Opening it upgrades it to 5 in place and keeps all of that.
 */
static const char schema2_sql[] =
    CATFX_SCHEMA2_DDL
    "INSERT INTO models(id, name) VALUES(1, 'bert');"
    "INSERT INTO versions(id, model_id, version, round, params_json, created_unix) "
    " VALUES(1, 1, 1, 7, '{\"lr\":0.01}', 1700000000);"
    "INSERT INTO aliases(model_id, alias, version_id) VALUES(1, 'current', 1);"
    /* f32 [10, 4], 5 rows per partition: 2 partitions; ids continue from 5. */
    "INSERT INTO tensors(id, version_id, name, dtype, ndim, shape, rows, row_bytes, "
    " rows_per_partition, partitions, path, file_size, header_checksum, part_checksums) "
    " VALUES(5, 1, 'word_embeddings', 1, 2, x'0a000000000000000400000000000000', 10, 16, 5, 2,"
    " 'parts/w.ecp', 4256, -1, x'0100000000000000ffffffffffffff7f');"
    "INSERT INTO model_policy VALUES(1, 4096, 2.5);"
    "PRAGMA user_version = 2;";

static void test_schema_2_upgraded(void **state)
{
    fx *f = *state;
    ec_catalog *cat = NULL;
    ec_cat_tensor t;
    uint64_t res = 0;
    double rate = 0;
    int64_t ids[2];
    listing l;
    char *path;

    assert_true(asprintf(&path, "%s/schema2.db", f->dir) > 0);
    raw_sql(path, schema2_sql);
    if (ec_catalog_open(path, &cat) != 0)
        fail_msg("open schema 2: %s", ec_last_error());
    assert_int_equal(raw_int(path, "PRAGMA user_version"), 6);

    /* Everything it held is still there. */
    list_all(cat, NULL, &l);
    assert_string_equal(l.text, "bert:1:7:{\"lr\":0.01}:current;");
    assert_int_equal(ec_catalog_resolve(cat, "bert", "current", "word_embeddings", &t), 0);
    assert_int_equal(t.id, 5);
    assert_int_equal(t.partitions, 2);
    assert_true(t.header_checksum == UINT64_MAX);
    assert_true(t.part_checksums[0] == 1 && t.part_checksums[1] == (UINT64_MAX >> 1));
    assert_int_equal(ec_catalog_get_policy(cat, t.version_id, &res, &rate), 0);
    assert_int_equal(res, 4096);
    assert_true(rate == 2.5);

    /* And the new table works. */
    assert_int_equal(mode_of(cat, t.version_id, "word_embeddings"), EC_CACHE_AUTO);
    assert_int_equal(ec_catalog_set_tensor_mode(cat, "bert", "word_embeddings",
                                                EC_CACHE_ROWS), 0);
    ec_catalog_close(cat);
    cat = NULL;

    /* Open again: already 4, nothing to upgrade; the mode is kept and new
     * tensor ids continue after the old ones. */
    if (ec_catalog_open(path, &cat) != 0)
        fail_msg("reopen upgraded: %s", ec_last_error());
    assert_int_equal(mode_of(cat, t.version_id, "word_embeddings"), EC_CACHE_ROWS);
    assert_int_equal(add(cat, "bert", 2, -1, NULL, two, 2, ids), 0);
    assert_int_equal(ids[0], 6);
    ec_cat_tensor_clear(&t);
    ec_catalog_close(cat);
    free(path);
}

static void test_clear_is_idempotent(void **state)
{
    (void)state;
    ec_cat_version v;
    ec_cat_tensor t;

    memset(&v, 0, sizeof(v));
    v.params_json = strdup("{}");
    v.aliases = strdup("current");
    ec_cat_version_clear(&v);
    assert_null(v.params_json);
    assert_null(v.aliases);
    ec_cat_version_clear(&v);
    ec_cat_version_clear(NULL);
    make_tensor(&t, "x", 3, 1, 1, 1);
    ec_cat_tensor_clear(&t);
    assert_null(t.part_checksums);
    ec_cat_tensor_clear(&t);
    ec_cat_tensor_clear(NULL);
}

/* list_tensors from inside list_versions on the same handle (what the
 * engine does for ec_catalog_list); a change from inside is refused. */
typedef struct nested {
    ec_catalog *cat;
    char names[512];
    int alias_err;
} nested;

static int nested_tensor(const ec_cat_tensor *t, void *arg)
{
    nested *n = arg;
    size_t len = strlen(n->names);

    snprintf(n->names + len, sizeof(n->names) - len, "%s@%lld,", t->name,
             (long long)t->version);
    return 0;
}

static int nested_version(const ec_cat_version *v, void *arg)
{
    nested *n = arg;
    int err = ec_catalog_list_tensors(n->cat, v->id, nested_tensor, n);

    if (err)
        return err;
    n->alias_err = ec_catalog_set_alias(n->cat, v->model, "current", v->version);
    return v->version == 2 ? 42 : 0;
}

static void test_nested_listing(void **state)
{
    fx *f = *state;
    nested n;
    int64_t v;

    assert_int_equal(add(f->cat, "m", 1, -1, NULL, two, 2, NULL), 0);
    assert_int_equal(add(f->cat, "m", 2, -1, NULL, two, 1, NULL), 0);
    assert_int_equal(add(f->cat, "m", 3, -1, NULL, two, 1, NULL), 0);
    memset(&n, 0, sizeof(n));
    n.cat = f->cat;
    /* The callback's non-zero value stops the listing and is returned. */
    assert_int_equal(ec_catalog_list_versions(f->cat, NULL, nested_version, &n), 42);
    assert_string_equal(n.names, "pos_embeddings@1,word_embeddings@1,word_embeddings@2,");
    assert_int_equal(n.alias_err, EC_EINVAL);
    assert_int_equal(ec_catalog_version_of(f->cat, "m", "current", &v), EC_ENOENT);
    /* And the handle is usable for changes afterwards. */
    assert_int_equal(ec_catalog_set_alias(f->cat, "m", "current", 3), 0);
    assert_int_equal(ec_catalog_list_tensors(f->cat, 999, nested_tensor, &n), EC_ENOENT);
}

/* Two handles on one file, in two threads, both writing and reading. */
#define CONC_N 40

typedef struct worker {
    const char *path;
    const char *model;
    const char *other;
    int err;
    char msg[EC_ERRMSG_MAX];
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    ec_catalog *cat = NULL;
    const char *const names[] = {"a", "b"};
    int err = ec_catalog_open(w->path, &cat);

    for (int64_t i = 1; err == 0 && i <= CONC_N; i++) {
        ec_cat_tensor t[2], got;
        int64_t v;
        char ver[24];

        for (int k = 0; k < 2; k++)
            make_tensor(&t[k], names[k], 100, 16, 10, (uint64_t)i * 1000 + (uint64_t)k +
                        (w->model[0] == 'x' ? 500000 : 0));
        err = ec_catalog_add_version(cat, w->model, i, i, "{\"i\": 1}", t, 2, NULL);
        ec_cat_tensor_clear(&t[0]);
        ec_cat_tensor_clear(&t[1]);
        if (err == 0)
            err = ec_catalog_set_alias(cat, w->model, "current", i);
        if (err == 0)
            err = ec_catalog_version_of(cat, w->model, "current", &v);
        if (err == 0 && v != i)
            err = ec_seterr(EC_EINTERNAL, "current is %lld, want %lld", (long long)v,
                            (long long)i);
        /* Read what the other thread writes; not there yet is fine. */
        snprintf(ver, sizeof(ver), "%lld", (long long)i);
        if (err == 0) {
            err = ec_catalog_resolve(cat, w->other, ver, "b", &got);
            if (err == 0)
                ec_cat_tensor_clear(&got);
            else if (err == EC_ENOENT)
                err = 0;
        }
        if (err == 0 && i % 10 == 0)
            err = ec_catalog_drop_version(cat, w->model, i - 5, NULL, NULL);
    }
    w->err = err;
    if (err)
        snprintf(w->msg, sizeof(w->msg), "%s", ec_last_error());
    ec_catalog_close(cat);
    return NULL;
}

static void test_two_handles_concurrently(void **state)
{
    fx *f = *state;
    pthread_t th[2];
    worker w[2] = {
        {.path = f->path, .model = "x-model", .other = "y-model"},
        {.path = f->path, .model = "y-model", .other = "x-model"},
    };
    int64_t v;

    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    for (int i = 0; i < 2; i++)
        if (w[i].err)
            fail_msg("worker %s: %d %s", w[i].model, w[i].err, w[i].msg);
    counts(f->cat, 2, 2 * (CONC_N - CONC_N / 10), 2 * 2 * (CONC_N - CONC_N / 10));
    assert_int_equal(ec_catalog_version_of(f->cat, "x-model", "current", &v), 0);
    assert_int_equal(v, CONC_N);
    assert_int_equal(ec_catalog_version_of(f->cat, "y-model", "current", &v), 0);
    assert_int_equal(v, CONC_N);
}

/* Bug: switching a brand-new file to WAL while another handle opens it
 * returned SQLITE_BUSY without waiting (the busy handler is not consulted
 * there), so the engine and importer threads starting together could fail. */
#define OPEN_THREADS 6

typedef struct opener {
    const char *path;
    pthread_barrier_t *bar;
    int err;
    char msg[EC_ERRMSG_MAX];
} opener;

static void *opener_main(void *arg)
{
    opener *o = arg;
    ec_catalog *cat = NULL;

    pthread_barrier_wait(o->bar);
    o->err = ec_catalog_open(o->path, &cat);
    if (o->err)
        snprintf(o->msg, sizeof(o->msg), "%s", ec_last_error());
    ec_catalog_close(cat);
    return NULL;
}

static void test_concurrent_open_of_new_file(void **state)
{
    fx *f = *state;

    for (int it = 0; it < 30; it++) {
        pthread_barrier_t bar;
        pthread_t th[OPEN_THREADS];
        opener o[OPEN_THREADS];
        char *path;

        assert_true(asprintf(&path, "%s/fresh-%d.db", f->dir, it) > 0);
        assert_int_equal(pthread_barrier_init(&bar, NULL, OPEN_THREADS), 0);
        for (int i = 0; i < OPEN_THREADS; i++) {
            o[i] = (opener){.path = path, .bar = &bar};
            assert_int_equal(pthread_create(&th[i], NULL, opener_main, &o[i]), 0);
        }
        for (int i = 0; i < OPEN_THREADS; i++)
            assert_int_equal(pthread_join(th[i], NULL), 0);
        pthread_barrier_destroy(&bar);
        for (int i = 0; i < OPEN_THREADS; i++)
            if (o[i].err)
                fail_msg("iteration %d opener %d: %d %s", it, i, o[i].err, o[i].msg);
        free(path);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_add_resolve_by_version_and_alias, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_update_file, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_schema_1_upgraded, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_policy, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_schema_2_upgraded, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_failed_upgrade_changes_nothing, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tensor_modes_precedence, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tensor_modes_refused, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tensor_modes_survive_reopen, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tensor_modes_go_with_model, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tensor_mode_corrupt_detected, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_alias_switch_and_listing, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_version_refused, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_tensor_names_atomic, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_params_refused, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_names_refused, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_bad_tensor_struct_refused, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_parts_messages, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_tensor_list_truncated, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_find_by_round_and_params, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_drop_version, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tensor_ids_never_reused, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tensor_id_space_capped, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_reopen_persists, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_part_checksums_roundtrip, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_row_detected, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_remote_fields, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_not_sqlite_is_corrupt, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_newer_schema_refused, setup, fx_teardown),
        cmocka_unit_test(test_clear_is_idempotent),
        cmocka_unit_test_setup_teardown(test_nested_listing, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_two_handles_concurrently, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_open_of_new_file, setup, fx_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
