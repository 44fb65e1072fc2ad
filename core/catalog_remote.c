/*
 * catalog_remote.c - which tensors were pulled lazily (remote_index >= 0):
 * the engine's inventory of the partitions it kept from the remote tier
 * (core/engine_keep.c) starts from this list at start-up.
 *
 * Runs on the thread that owns the handle (the daemon's server thread).
 */
#include "core/catalog_impl.h"

#include "common/err.h"

#include <stdlib.h>

int ec_catalog_remote_tensors(ec_catalog *cat, uint32_t **ids, size_t *n)
{
    sqlite3_stmt *st = NULL;
    uint32_t *v = NULL;
    size_t len = 0, cap = 0;
    int err;

    if (!cat || !ids || !n)
        return ec_seterr(EC_EINVAL, "ec_catalog_remote_tensors: NULL argument");
    *ids = NULL;
    *n = 0;
    err = cat_prep(cat, "SELECT id FROM tensors WHERE remote_index >= 0 ORDER BY id", &st);
    if (err < 0)
        return err;
    while ((err = cat_step(cat, st, "list lazily pulled tensors")) == 1) {
        int64_t id = sqlite3_column_int64(st, 0);
        if (id < 0 || id > UINT32_MAX) {
            err = ec_seterr(EC_ECORRUPT, "catalog: tensor id %lld out of range; restore the "
                                         "catalog", (long long)id);
            break;
        }
        if (len == cap) {
            size_t c = cap ? cap * 2 : 64;
            uint32_t *w = realloc(v, c * sizeof(*v));
            if (!w) {
                err = ec_seterr(EC_ENOMEM, "list of lazily pulled tensors");
                break;
            }
            v = w;
            cap = c;
        }
        v[len++] = (uint32_t)id;
    }
    sqlite3_finalize(st);
    if (err < 0) {
        free(v);
        return err;
    }
    *ids = v;
    *n = len;
    return 0;
}
