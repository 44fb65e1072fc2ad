/*
 * catalog_ns.c - the cache manager's namespaces in the catalog (table
 * `namespaces`, schema 4, column `remote` schema 6; the contract is in
 * catalog.h).
 *
 * What it owns: the durable definition of each namespace of cached results
 * (core/results.h): its slot in the segment's namespace table, name, owner,
 * sharing flags (EC_NS_SHARED in column flags, EC_NS_REMOTE as column
 * remote 0/1; in memory both are bits of ec_catalog_ns.flags), model binding, generation, key salt and settings. A daemon
 * that restarts reads them back (ec_catalog_ns_each) and serves the same
 * namespaces, generations and salts, so results that survived in shared
 * memory stay valid and none of an older generation comes back. The records
 * themselves live in shared memory and are not kept here.
 *
 * Who calls it: the daemon's results module (core/results*.c), on the
 * server thread with the engine's handle: put when a namespace is created,
 * configured, rebound or starts a generation; delete when it is dropped;
 * each when the cache manager opens. ec_catalog_open calls cat_ns_check
 * (catalog_check.c) on whichever thread opens a handle. Each function is
 * one transaction (conventions in catalog_impl.h).
 *
 * Invariants (the table's CHECKs repeat the first two; every row read is
 * checked again, since the file is outside this process's control):
 *  1. slot is in 0..EC_NS_MAX-1 and unique (the primary key); name is
 *     unique and passes ec_ns_name_ok().
 *  2. flags holds only EC_NS_SHARED and EC_NS_REMOTE (the column flags
 *     only EC_NS_SHARED; remote is 0 or 1).
 *  3. Unsigned fields are stored as int64: u32 ones in 0..UINT32_MAX, u64
 *     ones (ttl_us, negative_ttl_us, lease_us, negative_max) in
 *     0..INT64_MAX; salt alone is a u64 kept as its int64 bit pattern, so
 *     any value is valid.
 *  4. An unbound namespace has bind_model "", bind_version "" and
 *     bound_version 0; a bound one a valid model name, a version number or
 *     alias, and bound_version >= 0. The binding is not a foreign key: the
 *     model may be dropped and imported again, and the cache manager
 *     re-resolves it when the catalog changes.
 */
#include "catalog.h"
#include "core/catalog_impl.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/err.h"
#include "core/proto.h"

/* The columns in the order every statement here uses. */
#define NS_COLUMNS                                                                         \
    "slot, name, owner_uid, flags, bind_model, bind_version, bound_version, generation, "  \
    "salt, ttl_us, stale_us, negative_ttl_us, jitter_ppm, lease_us, max_computing, "       \
    "negative_max, remote"

enum {
    C_SLOT, C_NAME, C_OWNER, C_FLAGS, C_BMODEL, C_BVERSION, C_BOUND, C_GEN, C_SALT, C_TTL,
    C_STALE, C_NEGTTL, C_JITTER, C_LEASE, C_MAXCOMP, C_NEGMAX, C_REMOTE, C_NCOLS
};

/* What makes a namespace invalid, or NULL when it is valid (invariants 1, 2
 * and 4; the range of the other fields is the caller's to check). Sets the
 * thread's message only through ec_catalog_check_name. */
static const char *ns_invalid(const ec_catalog_ns *ns)
{
    if (ns->slot >= EC_NS_MAX)
        return "slot out of range";
    if (!memchr(ns->name, '\0', sizeof(ns->name)) || !ec_ns_name_ok(ns->name))
        return "bad name";
    if (ns->flags & ~(uint32_t)(EC_NS_SHARED | EC_NS_REMOTE))
        return "unknown flags";
    if (!memchr(ns->bind_model, '\0', sizeof(ns->bind_model)) ||
        !memchr(ns->bind_version, '\0', sizeof(ns->bind_version)))
        return "binding not a string";
    if (!ns->bind_model[0]) {
        if (ns->bind_version[0] || ns->bound_version != 0)
            return "a version bound without a model";
        return NULL;
    }
    if (ec_catalog_check_name("model", ns->bind_model) < 0)
        return "bad bound model name";
    if (ec_catalog_check_name("version or alias", ns->bind_version) < 0)
        return "bad bound version or alias";
    if (ns->bound_version < 0)
        return "negative bound version";
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Writing                                                             */

int ec_catalog_ns_put(ec_catalog *cat, const ec_catalog_ns *ns)
{
    sqlite3_stmt *st = NULL;
    const char *why;
    char pbuf[EC_NS_NAME_MAX + 8];
    int err;

    if (!cat || !ns)
        return ec_seterr(EC_EINVAL, "ec_catalog_ns_put: NULL argument");
    why = ns_invalid(ns);
    if (!why && (ns->ttl_us > INT64_MAX || ns->negative_ttl_us > INT64_MAX ||
                 ns->lease_us > INT64_MAX || ns->negative_max > INT64_MAX))
        why = "a time or count over 2^63-1";
    if (why)
        return ec_seterr(EC_EINVAL, "cannot record namespace '%s' (slot %" PRIu32 "): %s; "
                                    "fix the definition (a bug in the caller)",
                         ec_printable(ns->name, strnlen(ns->name, sizeof(ns->name)), pbuf,
                                      sizeof(pbuf)),
                         ns->slot, why);
    err = cat_tx_begin_write(cat);
    if (err < 0)
        return err;
    /* The name may be this slot's already (a replace), not another's. */
    err = cat_prep(cat, "SELECT slot FROM namespaces WHERE name = ?1 AND slot != ?2", &st);
    if (err < 0)
        goto out;
    err = cat_bindf(cat, st, "ti", ns->name, (int64_t)ns->slot);
    if (err < 0)
        goto out;
    err = cat_step(cat, st, "look up namespace name");
    if (err > 0)
        err = ec_seterr(EC_EEXIST, "namespace name '%s' is taken by slot %" PRId64 "; drop that "
                                   "namespace first or choose another name",
                        ns->name, (int64_t)sqlite3_column_int64(st, 0));
    if (err < 0)
        goto out;
    sqlite3_finalize(st);
    st = NULL;
    err = cat_prep(cat, "INSERT OR REPLACE INTO namespaces(" NS_COLUMNS ") VALUES(?1, ?2, ?3, "
                        "?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)", &st);
    if (err < 0)
        goto out;
    err = cat_bindf(cat, st, "itiittiiuuiuiuiui", (int64_t)ns->slot, ns->name,
                    (int64_t)ns->owner_uid, (int64_t)(ns->flags & EC_NS_SHARED), ns->bind_model,
                    ns->bind_version, ns->bound_version, (int64_t)ns->generation, ns->salt,
                    ns->ttl_us, ns->stale_us, ns->negative_ttl_us, ns->jitter_ppm, ns->lease_us,
                    (int64_t)ns->max_computing, ns->negative_max,
                    (int64_t)((ns->flags & EC_NS_REMOTE) != 0));
    if (err < 0)
        goto out;
    err = cat_step(cat, st, "record namespace");
out:
    return cat_tx_finish(cat, st, err);
}

int ec_catalog_ns_delete(ec_catalog *cat, const char *name)
{
    sqlite3_stmt *st = NULL;
    char pbuf[EC_NS_NAME_MAX + 8];
    int err;

    if (!cat || !name)
        return ec_seterr(EC_EINVAL, "ec_catalog_ns_delete: NULL argument");
    err = cat_tx_begin_write(cat);
    if (err < 0)
        return err;
    err = cat_prep(cat, "DELETE FROM namespaces WHERE name = ?1", &st);
    if (err < 0)
        goto out;
    err = cat_bindf(cat, st, "t", name);
    if (err < 0)
        goto out;
    err = cat_step(cat, st, "delete namespace");
    if (err < 0)
        goto out;
    if (sqlite3_changes(cat->db) == 0) {
        err = ec_seterr(EC_ENOENT, "no namespace '%s' in the catalog (dropped already?); list "
                                   "them with `embcache results list`",
                        ec_printable(name, strlen(name), pbuf, sizeof(pbuf)));
        goto out;
    }
out:
    return cat_tx_finish(cat, st, err);
}

/* ------------------------------------------------------------------ */
/* Reading                                                             */

/* The integer columns and the values each may hold (invariant 3). */
static const struct {
    int col;
    int64_t min, max;
} int_cols[] = {
    {C_SLOT, 0, EC_NS_MAX - 1},
    {C_OWNER, 0, UINT32_MAX},
    {C_FLAGS, 0, UINT32_MAX},         /* ns_read_row checks the bits */
    {C_BOUND, 0, INT64_MAX},
    {C_GEN, 0, UINT32_MAX},
    {C_SALT, INT64_MIN, INT64_MAX},   /* u64 bits */
    {C_TTL, 0, INT64_MAX},
    {C_STALE, INT64_MIN, INT64_MAX},
    {C_NEGTTL, 0, INT64_MAX},
    {C_JITTER, INT64_MIN, INT64_MAX},
    {C_LEASE, 0, INT64_MAX},
    {C_MAXCOMP, 0, UINT32_MAX},
    {C_NEGMAX, 0, INT64_MAX},
    {C_REMOTE, 0, 1},
};

/* Read the row st is on into *ns; EC_ECORRUPT naming the row when a value
 * is not what a valid namespace holds. */
static int ns_read_row(sqlite3_stmt *st, ec_catalog_ns *ns)
{
    int64_t v[C_NCOLS] = {0};
    const char *why = NULL;
    char pbuf[EC_NS_NAME_MAX + 8];
    const unsigned char *raw;

    memset(ns, 0, sizeof(*ns));
    for (size_t i = 0; i < sizeof(int_cols) / sizeof(int_cols[0]) && !why; i++) {
        int c = int_cols[i].col;
        if (sqlite3_column_type(st, c) != SQLITE_INTEGER)
            why = "a number column that holds no integer";
        else if ((v[c] = sqlite3_column_int64(st, c)) < int_cols[i].min || v[c] > int_cols[i].max)
            why = c == C_SLOT ? "slot out of range" : "an unsigned value out of range";
    }
    if (!why && (sqlite3_column_type(st, C_NAME) != SQLITE_TEXT ||
                 !cat_col_text(st, C_NAME, ns->name, sizeof(ns->name))))
        why = "bad name";
    if (!why && (sqlite3_column_type(st, C_BMODEL) != SQLITE_TEXT ||
                 sqlite3_column_type(st, C_BVERSION) != SQLITE_TEXT ||
                 !cat_col_text(st, C_BMODEL, ns->bind_model, sizeof(ns->bind_model)) ||
                 !cat_col_text(st, C_BVERSION, ns->bind_version, sizeof(ns->bind_version))))
        why = "binding not a string";
    if (!why && (v[C_FLAGS] & ~(int64_t)EC_NS_SHARED))
        why = "unknown flags"; /* EC_NS_REMOTE is column remote, never a bit here */
    if (!why) {
        ns->slot = (uint32_t)v[C_SLOT];
        ns->owner_uid = (uint32_t)v[C_OWNER];
        ns->flags = (uint32_t)v[C_FLAGS] | (v[C_REMOTE] ? EC_NS_REMOTE : 0);
        ns->bound_version = v[C_BOUND];
        ns->generation = (uint32_t)v[C_GEN];
        ns->salt = (uint64_t)v[C_SALT];
        ns->ttl_us = (uint64_t)v[C_TTL];
        ns->stale_us = v[C_STALE];
        ns->negative_ttl_us = (uint64_t)v[C_NEGTTL];
        ns->jitter_ppm = v[C_JITTER];
        ns->lease_us = (uint64_t)v[C_LEASE];
        ns->max_computing = (uint32_t)v[C_MAXCOMP];
        ns->negative_max = (uint64_t)v[C_NEGMAX];
        why = ns_invalid(ns);
    }
    if (!why)
        return 0;
    /* The slot is the rowid: always an integer, so it names the row. */
    raw = sqlite3_column_text(st, C_NAME);
    return ec_seterr(EC_ECORRUPT, "catalog: namespace row slot %lld (name '%s'): %s; with "
                                  "embcached stopped, delete the row (DELETE FROM namespaces "
                                  "WHERE slot = %lld; its results go with it) or restore "
                                  "catalog.db from a backup",
                     (long long)sqlite3_column_int64(st, C_SLOT),
                     raw ? ec_printable((const char *)raw, strlen((const char *)raw), pbuf,
                                        sizeof(pbuf))
                         : "NULL",
                     why, (long long)sqlite3_column_int64(st, C_SLOT));
}

int ec_catalog_ns_each(ec_catalog *cat, int (*fn)(const ec_catalog_ns *ns, void *arg), void *arg)
{
    sqlite3_stmt *st = NULL;
    bool owned = false;
    ec_catalog_ns ns;
    int err;

    if (!cat || !fn)
        return ec_seterr(EC_EINVAL, "ec_catalog_ns_each: NULL argument");
    err = cat_tx_begin_read(cat, &owned);
    if (err < 0)
        return err;
    err = cat_prep(cat, "SELECT " NS_COLUMNS " FROM namespaces ORDER BY slot", &st);
    if (err < 0)
        goto out;
    while ((err = cat_step(cat, st, "list namespaces")) == 1) {
        err = ns_read_row(st, &ns);
        if (err == 0)
            err = fn(&ns, arg);
        if (err != 0)
            goto out;
    }
out:
    sqlite3_finalize(st);
    cat_tx_end_read(cat, owned);
    return err;
}

static int ns_accept(const ec_catalog_ns *ns, void *arg)
{
    (void)ns;
    (void)arg;
    return 0;
}

int cat_ns_check(ec_catalog *cat)
{
    return ec_catalog_ns_each(cat, ns_accept, NULL);
}
