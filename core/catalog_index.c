/*
 * catalog_index.c - every name the catalog knows, in one listing
 * (ec_catalog_each_name), for the engine's filter of unknown names and the
 * messages of its refusals.
 *
 * Called by the engine on the server thread, with the engine's handle, when
 * the catalog changed since the filter was built (ec_catalog_changes).
 */
#include "core/catalog_impl.h"

#include <string.h>

#include "common/err.h"

struct lists {
    char model[EC_NAME_MAX + 1];
    char v[CAT_LIST_MAX], a[CAT_LIST_MAX], t[CAT_LIST_MAX];
    size_t vl, al, tl;
    bool vcut, acut, tcut; /* the list is full and says so */
};

static int lists_end(struct lists *l, int (*cb)(const ec_cat_name *n, void *arg), void *arg)
{
    ec_cat_name n = {.model = l->model, .kind = 'L', .versions = l->vl ? l->v : "none",
                     .aliases = l->al ? l->a : "none", .tensors = l->tl ? l->t : "none"};

    return l->model[0] ? cb(&n, arg) : 0;
}

int ec_catalog_each_name(ec_catalog *cat, int (*cb)(const ec_cat_name *n, void *arg),
                         void *arg)
{
    sqlite3_stmt *st = NULL;
    struct lists l = {0};
    int err;

    if (!cat || !cb)
        return ec_seterr(EC_EINVAL, "ec_catalog_each_name: NULL argument");
    /* A model's rows together, each kind in the order its refusal lists it. */
    err = cat_prep(cat,
                   "SELECT name, 'M', NULL, 0 FROM models "
                   "UNION ALL SELECT m.name, 'V', CAST(v.version AS TEXT), v.version "
                   "  FROM versions v JOIN models m ON m.id = v.model_id "
                   "UNION ALL SELECT m.name, 'A', a.alias, a.alias FROM aliases a "
                   "  JOIN models m ON m.id = a.model_id "
                   "UNION ALL SELECT DISTINCT m.name, 'T', t.name, t.name FROM tensors t "
                   "  JOIN versions v ON v.id = t.version_id JOIN models m ON m.id = v.model_id "
                   "ORDER BY 1, 2, 4",
                   &st);
    if (err < 0)
        return err;
    while ((err = cat_step(cat, st, "list names")) == 1) {
        ec_cat_name n = {0};
        const char *kind = (const char *)sqlite3_column_text(st, 1);
        n.model = (const char *)sqlite3_column_text(st, 0);
        n.name = (const char *)sqlite3_column_text(st, 2);
        if (!n.model || !kind || (kind[0] != 'M' && !n.name) ||
            strlen(n.model) > EC_NAME_MAX) {
            err = ec_seterr(EC_ECORRUPT, "catalog: a name listing row is malformed");
            break;
        }
        n.kind = kind[0];
        if (strcmp(n.model, l.model) != 0) {
            if ((err = lists_end(&l, cb, arg)) != 0)
                break;
            memset(&l, 0, sizeof(l));
            memcpy(l.model, n.model, strlen(n.model) + 1);
        }
        if (n.kind == 'V' && !l.vcut)
            l.vcut = !cat_list_append(l.v, sizeof(l.v), &l.vl, n.name);
        else if (n.kind == 'A' && !l.acut)
            l.acut = !cat_list_append(l.a, sizeof(l.a), &l.al, n.name);
        else if (n.kind == 'T' && !l.tcut)
            l.tcut = !cat_list_append(l.t, sizeof(l.t), &l.tl, n.name);
        if ((err = cb(&n, arg)) != 0)
            break;
    }
    if (err == 0)
        err = lists_end(&l, cb, arg);
    sqlite3_finalize(st);
    return err;
}
