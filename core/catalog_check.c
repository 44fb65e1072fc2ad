/*
 * catalog_check.c - is the catalog whole? Run by ec_catalog_open on every
 * open, before anything trusts it: SQLite's quick_check, the foreign keys,
 * and the invariants the schema cannot state (every version has a tensor,
 * every tensor a partition), and every namespace row (slot, name, flags and
 * ranges, by catalog_ns.c's own reader). A catalog that fails is refused
 * with a message that says how to recover; nothing is deleted on its word.
 *
 * Runs on whichever thread opens the handle (the daemon's server thread or
 * its importer thread, at start-up).
 */
#include "core/catalog_impl.h"

#include "common/err.h"

#include <stdio.h>
#include <string.h>

/* The first column of the first row of sql as text ("" when none). */
static int first_text(ec_catalog *cat, const char *sql, char *buf, size_t cap, bool *any)
{
    sqlite3_stmt *st = NULL;
    int err = cat_prep(cat, sql, &st);

    *any = false;
    buf[0] = '\0';
    if (err < 0)
        return err;
    err = cat_step(cat, st, sql);
    if (err > 0) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(buf, cap, "%s", t ? (const char *)t : "");
        *any = true;
        err = 0;
    }
    sqlite3_finalize(st);
    return err;
}

int cat_validate(ec_catalog *cat, const char *path)
{
    static const struct {
        const char *sql, *what;
    } rules[] = {
        {"SELECT 'version id ' || v.id FROM versions v WHERE NOT EXISTS "
         "(SELECT 1 FROM tensors t WHERE t.version_id = v.id) LIMIT 1",
         "has no tensors"},
        {"SELECT 'tensor ' || name FROM tensors WHERE partitions < 1 OR rows < 0 OR "
         "row_bytes < 0 OR length(part_checksums) != 8 * partitions LIMIT 1",
         "has impossible sizes"},
        {"SELECT 'alias ' || alias FROM aliases a WHERE NOT EXISTS "
         "(SELECT 1 FROM versions v WHERE v.id = a.version_id AND v.model_id = a.model_id) "
         "LIMIT 1",
         "points at a version of another model"},
    };
    char buf[512];
    bool any;
    int err;

    err = first_text(cat, "PRAGMA quick_check(1)", buf, sizeof(buf), &any);
    if (err < 0)
        return ec_adderr(EC_ECORRUPT, "catalog %s is damaged; " CAT_RECOVER_HINT, path);
    if (!any || strcmp(buf, "ok") != 0)
        return ec_seterr(EC_ECORRUPT, "catalog %s failed SQLite's quick_check (%s); " CAT_RECOVER_HINT,
                         path, buf);
    err = first_text(cat, "PRAGMA foreign_key_check", buf, sizeof(buf), &any);
    if (err < 0)
        return ec_adderr(EC_ECORRUPT, "catalog %s is damaged; " CAT_RECOVER_HINT, path);
    if (any)
        return ec_seterr(EC_ECORRUPT,
                         "catalog %s has a row in table %s whose parent is missing; " CAT_RECOVER_HINT,
                         path, buf);
    for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
        err = first_text(cat, rules[i].sql, buf, sizeof(buf), &any);
        if (err < 0)
            return ec_adderr(EC_ECORRUPT, "catalog %s is damaged; " CAT_RECOVER_HINT, path);
        if (any)
            return ec_seterr(EC_ECORRUPT, "catalog %s is inconsistent: %s %s; " CAT_RECOVER_HINT,
                             path, buf, rules[i].what);
    }
    /* Namespace rows, checked value by value as the cache manager reads them. */
    err = cat_ns_check(cat);
    if (err == EC_ECORRUPT)
        return ec_adderr(err, "catalog %s is inconsistent", path);
    if (err < 0)
        return ec_adderr(EC_ECORRUPT, "catalog %s is damaged; " CAT_RECOVER_HINT, path);
    return 0;
}
