/*
 * catalog_dyn.c - dynamic tables in the catalog (table `dynamic`, schema 5;
 * the contract is in catalog.h).
 *
 * What it owns: which tensors take row updates (core/dyntable.h), with
 * their capacity and policy, and what their content is rebuilt from at
 * start: a base tensor's rows (the tensor's own, or a snapshot's) and the
 * write-ahead log's records after base_lsn. The rows themselves live in
 * shared memory and in the log, never here.
 *
 * Who calls it: the daemon's dynamic tables (core/dyntable.c) on the
 * server thread with the engine's handle. Each function is one transaction
 * (conventions in catalog_impl.h). Every row read is checked again: the
 * file is outside this process's control.
 */
#include "catalog.h"
#include "core/catalog_impl.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/err.h"

int ec_catalog_dyn_put(ec_catalog *cat, const ec_catalog_dyn *d)
{
    sqlite3_stmt *st = NULL;
    int err;

    if (!cat || !d)
        return ec_seterr(EC_EINVAL, "ec_catalog_dyn_put: NULL argument");
    if (d->tensor_id < 1 || d->capacity < 1 || d->capacity > INT64_MAX ||
        (d->policy != 1 && d->policy != 2) || d->base_tensor_id < 0 || d->base_lsn > INT64_MAX)
        return ec_seterr(EC_EINVAL, "ec_catalog_dyn_put: invalid record for tensor %" PRId64,
                         d->tensor_id);
    err = cat_tx_begin_write(cat);
    if (err < 0)
        return err;
    err = cat_prep(cat, "INSERT OR REPLACE INTO dynamic(tensor_id, capacity, policy, "
                        "base_tensor_id, base_lsn, created_unix) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                   &st);
    if (err < 0)
        goto out;
    err = cat_bindf(cat, st, "iii", d->tensor_id, (int64_t)d->capacity, (int64_t)d->policy);
    if (err < 0)
        goto out;
    if ((d->base_tensor_id ? sqlite3_bind_int64(st, 4, d->base_tensor_id)
                           : sqlite3_bind_null(st, 4)) != SQLITE_OK ||
        sqlite3_bind_int64(st, 5, (int64_t)d->base_lsn) != SQLITE_OK ||
        sqlite3_bind_int64(st, 6, d->created_unix ? d->created_unix : (int64_t)time(NULL)) !=
            SQLITE_OK) {
        err = cat_sql_err(cat->db, SQLITE_ERROR, "bind a dynamic table");
        goto out;
    }
    err = cat_step(cat, st, "record a dynamic table");
out:
    return cat_tx_finish(cat, st, err);
}

int ec_catalog_dyn_each(ec_catalog *cat, int (*fn)(const ec_catalog_dyn *d, void *arg), void *arg)
{
    sqlite3_stmt *st = NULL;
    bool owned = false;
    int err;

    if (!cat || !fn)
        return ec_seterr(EC_EINVAL, "ec_catalog_dyn_each: NULL argument");
    err = cat_tx_begin_read(cat, &owned);
    if (err < 0)
        return err;
    err = cat_prep(cat, "SELECT tensor_id, capacity, policy, base_tensor_id, base_lsn, "
                        "created_unix FROM dynamic ORDER BY tensor_id", &st);
    if (err < 0)
        goto out;
    while ((err = cat_step(cat, st, "list dynamic tables")) == 1) {
        ec_catalog_dyn d = {0};
        bool ok = true;
        for (int c = 0; c < 6; c++)
            if (c != 3 && sqlite3_column_type(st, c) != SQLITE_INTEGER)
                ok = false;
        if (ok) {
            d.tensor_id = sqlite3_column_int64(st, 0);
            d.capacity = (uint64_t)sqlite3_column_int64(st, 1);
            d.policy = (uint32_t)sqlite3_column_int64(st, 2);
            d.base_tensor_id = sqlite3_column_type(st, 3) == SQLITE_NULL
                                   ? 0 : sqlite3_column_int64(st, 3);
            d.base_lsn = (uint64_t)sqlite3_column_int64(st, 4);
            d.created_unix = sqlite3_column_int64(st, 5);
            ok = d.tensor_id >= 1 && sqlite3_column_int64(st, 1) >= 1 &&
                 (d.policy == 1 || d.policy == 2) && d.base_tensor_id >= 0 &&
                 sqlite3_column_int64(st, 4) >= 0;
        }
        if (!ok) {
            err = ec_seterr(EC_ECORRUPT, "catalog: dynamic table row of tensor %lld is "
                                         "invalid; with embcached stopped, delete the row "
                                         "(DELETE FROM dynamic WHERE tensor_id = %lld) or "
                                         "restore catalog.db from a backup",
                            (long long)sqlite3_column_int64(st, 0),
                            (long long)sqlite3_column_int64(st, 0));
            goto out;
        }
        if ((err = fn(&d, arg)) != 0)
            goto out;
    }
out:
    sqlite3_finalize(st);
    cat_tx_end_read(cat, owned);
    return err;
}
