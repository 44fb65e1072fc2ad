/*
 * catalog_policy.c - the policies the engine reads from the catalog (see
 * catalog.h for the contract):
 *
 *   model_policy   per model: the bytes of each version that eviction leaves
 *                  resident, and the request rate under which a version is
 *                  idle (ec_catalog_set_policy / get_policy);
 *   tensor_policy  per tensor name of a model, or per model (tensor ''):
 *                  how the daemon caches it, by partitions or by rows
 *                  (ec_catalog_set_tensor_mode / get / list).
 *
 * Both tables are keyed by the model, not by a version: a policy applies to
 * every version of the model, those imported later included, and a tensor
 * mode may name a tensor no version has yet. Their rows go with the model
 * (ON DELETE CASCADE) when drop_version removes its last version. The
 * tables themselves are created and upgraded by catalog.c (schema 2 and 3).
 *
 * Who calls it: the engine, on the daemon's server thread with the engine's
 * handle: it sets policies when an operator asks (`embcache policy`) and
 * reads them when it loads a version or a tensor. The importer thread's
 * handle never touches these tables. Each function is one statement or one
 * transaction (conventions in catalog_impl.h).
 *
 * Precedence of tensor modes, for a tensor T of model M: M's row for T,
 * else M's row for '' (the whole model), else EC_CACHE_AUTO (the daemon's
 * choice). A row never holds AUTO: setting AUTO deletes the row.
 */
#include "catalog.h"
#include "core/catalog_impl.h"

#include <inttypes.h>

#include "common/err.h"

/* ------------------------------------------------------------------ */
/* Residency (model_policy)                                            */

int ec_catalog_set_policy(ec_catalog *cat, const char *model, uint64_t min_resident_bytes,
                          double min_request_rate)
{
    sqlite3_stmt *st = NULL;
    int64_t model_id;
    int err;

    if (!cat || !model)
        return ec_seterr(EC_EINVAL, "ec_catalog_set_policy: NULL argument");
    if (!(min_request_rate >= 0) || min_resident_bytes > (uint64_t)INT64_MAX)
        return ec_seterr(EC_EINVAL, "a minimum residency and request rate must be >= 0");
    err = cat_tx_begin_write(cat);
    if (err < 0)
        return err;
    err = cat_model_id_of(cat, model, &model_id);
    if (err < 0)
        goto out;
    err = cat_prep(cat, "INSERT INTO model_policy(model_id, min_resident_bytes, min_request_rate) "
                        "VALUES(?1, ?2, ?3) ON CONFLICT(model_id) DO UPDATE SET "
                        "min_resident_bytes = excluded.min_resident_bytes, "
                        "min_request_rate = excluded.min_request_rate", &st);
    if (err < 0)
        goto out;
    err = cat_bindf(cat, st, "ii", model_id, (int64_t)min_resident_bytes);
    if (err == 0 && sqlite3_bind_double(st, 3, min_request_rate) != SQLITE_OK)
        err = cat_sql_err(cat->db, SQLITE_ERROR, "bind");
    if (err < 0)
        goto out;
    err = cat_step(cat, st, "set policy");
out:
    return cat_tx_finish(cat, st, err);
}

int ec_catalog_get_policy(ec_catalog *cat, int64_t version_id, uint64_t *min_resident_bytes,
                          double *min_request_rate)
{
    sqlite3_stmt *st = NULL;
    int err;

    if (!cat || !min_resident_bytes || !min_request_rate)
        return ec_seterr(EC_EINVAL, "ec_catalog_get_policy: NULL argument");
    err = cat_prep(cat, "SELECT p.min_resident_bytes, p.min_request_rate FROM versions v "
                        "LEFT JOIN model_policy p ON p.model_id = v.model_id WHERE v.id = ?1", &st);
    if (err < 0)
        return err;
    err = cat_bindf(cat, st, "i", version_id);
    if (err < 0)
        goto out;
    err = cat_step(cat, st, "get policy");
    if (err == 0)
        err = ec_seterr(EC_ENOENT, "version id %" PRId64 " is not in the catalog", version_id);
    if (err < 0)
        goto out;
    *min_resident_bytes = (uint64_t)sqlite3_column_int64(st, 0);
    *min_request_rate = sqlite3_column_double(st, 1);
    err = 0;
out:
    sqlite3_finalize(st);
    return err;
}

/* ------------------------------------------------------------------ */
/* Cache modes (tensor_policy)                                         */

static bool mode_stored(int64_t mode)
{
    return mode == EC_CACHE_PARTITIONS || mode == EC_CACHE_ROWS;
}

/* The row key of a tensor argument: "" for NULL or "" (the whole model),
 * else the name, which must be a valid tensor name. */
static int tensor_key(const char *tensor, const char **key_out)
{
    int err;

    if (!tensor || !*tensor) {
        *key_out = "";
        return 0;
    }
    err = ec_catalog_check_name("tensor", tensor);
    if (err < 0)
        return err;
    *key_out = tensor;
    return 0;
}

int ec_catalog_set_tensor_mode(ec_catalog *cat, const char *model, const char *tensor,
                               ec_cache_mode mode)
{
    sqlite3_stmt *st = NULL;
    const char *key = NULL;
    int64_t model_id;
    int err;

    if (!cat)
        return ec_seterr(EC_EINVAL, "ec_catalog_set_tensor_mode: NULL catalog");
    err = ec_catalog_check_name("model", model);
    if (err < 0)
        return err;
    if (mode != EC_CACHE_AUTO && !mode_stored(mode))
        return ec_seterr(EC_EINVAL,
                         "cache mode %d for model '%s' is not valid; use %d (auto), "
                         "%d (partitions) or %d (rows)",
                         (int)mode, model, EC_CACHE_AUTO, EC_CACHE_PARTITIONS, EC_CACHE_ROWS);
    err = tensor_key(tensor, &key);
    if (err < 0)
        return ec_adderr(err, "model '%s'", model);
    err = cat_tx_begin_write(cat);
    if (err < 0)
        return err;
    err = cat_model_id_of(cat, model, &model_id);
    if (err < 0)
        goto out;
    if (mode == EC_CACHE_AUTO)
        err = cat_prep(cat, "DELETE FROM tensor_policy WHERE model_id = ?1 AND tensor = ?2",
                       &st);
    else
        err = cat_prep(cat, "INSERT INTO tensor_policy(model_id, tensor, mode) "
                            "VALUES(?1, ?2, ?3) ON CONFLICT(model_id, tensor) DO UPDATE "
                            "SET mode = excluded.mode", &st);
    if (err < 0)
        goto out;
    err = cat_bindf(cat, st, mode == EC_CACHE_AUTO ? "it" : "iti", model_id, key,
                    (int64_t)mode);
    if (err < 0)
        goto out;
    err = cat_step(cat, st, "set tensor cache mode");
out:
    return cat_tx_finish(cat, st, err);
}

int ec_catalog_get_tensor_mode(ec_catalog *cat, int64_t version_id, const char *tensor,
                               ec_cache_mode *mode_out)
{
    sqlite3_stmt *st = NULL;
    const char *key = NULL;
    int64_t mode;
    int err;

    if (!cat || !mode_out)
        return ec_seterr(EC_EINVAL, "ec_catalog_get_tensor_mode: NULL argument");
    err = tensor_key(tensor, &key);
    if (err < 0)
        return err;
    /* One statement, so one snapshot: the exact row sorts before ''. */
    err = cat_prep(cat,
                   "SELECT (SELECT p.mode FROM tensor_policy p WHERE p.model_id = v.model_id "
                   "AND p.tensor IN (?2, '') ORDER BY p.tensor = '' LIMIT 1) "
                   "FROM versions v WHERE v.id = ?1",
                   &st);
    if (err < 0)
        return err;
    err = cat_bindf(cat, st, "it", version_id, key);
    if (err < 0)
        goto out;
    err = cat_step(cat, st, "get tensor cache mode");
    if (err == 0)
        err = ec_seterr(EC_ENOENT, "version id %" PRId64 " is not in the catalog (dropped?); "
                                   "resolve the tensor again",
                        version_id);
    if (err < 0)
        goto out;
    mode = sqlite3_column_type(st, 0) == SQLITE_NULL ? EC_CACHE_AUTO
                                                      : sqlite3_column_int64(st, 0);
    if (mode != EC_CACHE_AUTO && !mode_stored(mode)) {
        err = ec_seterr(EC_ECORRUPT, "catalog: tensor_policy of version id %" PRId64 " holds "
                                     "cache mode %" PRId64 "; restore the catalog or set the "
                                     "mode again",
                        version_id, mode);
        goto out;
    }
    *mode_out = (ec_cache_mode)mode;
    err = 0;
out:
    sqlite3_finalize(st);
    return err;
}

int ec_catalog_list_tensor_modes(ec_catalog *cat, const char *model,
                                 int (*cb)(const char *model, const char *tensor,
                                           ec_cache_mode mode, void *arg),
                                 void *arg)
{
    sqlite3_stmt *st = NULL;
    bool owned = false;
    int err;

    if (!cat || !cb)
        return ec_seterr(EC_EINVAL, "ec_catalog_list_tensor_modes: NULL argument");
    if (model) {
        err = ec_catalog_check_name("model", model);
        if (err < 0)
            return err;
    }
    err = cat_tx_begin_read(cat, &owned);
    if (err < 0)
        return err;
    if (model) {
        int64_t model_id;
        err = cat_model_id_of(cat, model, &model_id); /* EC_ENOENT naming it */
        if (err < 0)
            goto out;
    }
    err = cat_prep(cat,
                   "SELECT m.name, p.tensor, p.mode FROM tensor_policy p "
                   "JOIN models m ON m.id = p.model_id "
                   "WHERE ?1 IS NULL OR m.name = ?1 ORDER BY m.name, p.tensor",
                   &st);
    if (err < 0)
        goto out;
    err = cat_bindf(cat, st, "t", model);
    if (err < 0)
        goto out;
    while ((err = cat_step(cat, st, "list tensor cache modes")) == 1) {
        char name[EC_NAME_MAX + 1], tname[EC_NAME_MAX + 1];
        int64_t mode = sqlite3_column_int64(st, 2);

        if (!cat_col_text(st, 0, name, sizeof(name)) ||
            !cat_col_text(st, 1, tname, sizeof(tname)) || !mode_stored(mode)) {
            err = ec_seterr(EC_ECORRUPT, "catalog: a tensor_policy row%s%s is inconsistent "
                                         "(name or mode); restore the catalog or set the "
                                         "mode again",
                            model ? " of model " : "", model ? model : "");
            goto out;
        }
        err = cb(name, tname, (ec_cache_mode)mode, arg);
        if (err != 0)
            goto out;
    }
out:
    sqlite3_finalize(st);
    cat_tx_end_read(cat, owned);
    return err;
}
