/*
 * catalog_json.c - a model version's params JSON (declared in
 * catalog_impl.h): checking that params are one JSON object, storing them
 * in SQLite's json() form, and the canonical form ec_catalog_find compares.
 *
 * Called by catalog.c (ec_catalog_add_version, ec_catalog_find) on the
 * thread that owns the handle: the importer thread for add_version, the
 * server thread for find. The JSON is parsed by SQLite's JSON functions on
 * that handle's connection; nothing here keeps state.
 */
#include "core/catalog_impl.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#define CAT_JSON_DEPTH_MAX 256

/* Validate params (a JSON object) and return its json() form, malloc'd. */
int cat_params_normalize(ec_catalog *cat, const char *params, char **out)
{
    sqlite3_stmt *st = NULL;
    const unsigned char *t;
    char *s;
    int err;

    err = cat_prep(cat,
                   "SELECT json_valid(?1), CASE WHEN json_valid(?1) THEN "
                   "CASE WHEN json_type(?1) = 'object' THEN json(?1) END END",
                   &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "t", params);
    if (err < 0)
        goto fail;
    err = cat_step(cat, st, "check params JSON");
    if (err < 0)
        goto fail;
    if (err == 0 || !sqlite3_column_int(st, 0)) {
        err = ec_seterr(EC_EINVAL, "params are not valid JSON; give a JSON object such as "
                                   "'{\"lr\": 0.01}'");
        goto fail;
    }
    t = sqlite3_column_text(st, 1);
    if (!t) {
        err = sqlite3_errcode(cat->db) == SQLITE_NOMEM
                  ? ec_seterr(EC_ENOMEM, "catalog: out of memory checking params JSON")
                  : ec_seterr(EC_EINVAL, "params must be a JSON object ({...}), not an array "
                                         "or a single value");
        goto fail;
    }
    s = strdup((const char *)t);
    if (!s) {
        err = ec_seterr(EC_ENOMEM, "catalog: out of memory");
        goto fail;
    }
    *out = s;
    err = 0;
fail:
    sqlite3_finalize(st);
    return err;
}

/*
 * Canonical JSON for comparing params: objects with their members sorted by
 * key (byte order, duplicates kept in document order), arrays in order,
 * no whitespace. {"b":1,"a":2} and { "a": 2, "b": 1 } compare equal.
 */
int cat_json_canon(ec_catalog *cat, const char *json, bool is_object, int depth, cat_sbuf *out)
{
    sqlite3_stmt *st = NULL;
    int err, i = 0;

    if (depth > CAT_JSON_DEPTH_MAX)
        return ec_seterr(EC_EINVAL, "params JSON is nested deeper than %d levels",
                         CAT_JSON_DEPTH_MAX);
    err = cat_prep(cat,
                   "SELECT json_quote(key), type, CASE type WHEN 'true' THEN 'true' "
                   "WHEN 'false' THEN 'false' WHEN 'null' THEN 'null' WHEN 'object' THEN value "
                   "WHEN 'array' THEN value ELSE json_quote(value) END "
                   "FROM json_each(?1) ORDER BY key, id",
                   &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "t", json);
    if (err < 0)
        goto fail;
    err = cat_sb_put(out, is_object ? "{" : "[", 1);
    while (err == 0 && (err = cat_step(cat, st, "normalize params JSON")) == 1) {
        const char *key = (const char *)sqlite3_column_text(st, 0);
        const char *type = (const char *)sqlite3_column_text(st, 1);
        const char *val = (const char *)sqlite3_column_text(st, 2);
        if (!type || !val || (is_object && !key)) {
            err = ec_seterr(EC_ENOMEM, "catalog: out of memory normalizing params JSON");
            break;
        }
        err = i++ ? cat_sb_put(out, ",", 1) : 0;
        if (err == 0 && is_object) {
            err = cat_sb_put(out, key, strlen(key));
            if (err == 0)
                err = cat_sb_put(out, ":", 1);
        }
        if (err < 0)
            break;
        if (!strcmp(type, "object") || !strcmp(type, "array")) {
            /* val points into st's row; recursion uses its own statement. */
            err = cat_json_canon(cat, val, type[0] == 'o', depth + 1, out);
        } else {
            err = cat_sb_put(out, val, strlen(val));
        }
    }
    if (err < 0)
        goto fail;
    err = cat_sb_put(out, is_object ? "}" : "]", 1);
fail:
    sqlite3_finalize(st);
    return err;
}
