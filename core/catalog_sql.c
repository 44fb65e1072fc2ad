/*
 * catalog_sql.c - the SQLite plumbing every catalog file uses (declared in
 * catalog_impl.h): preparing, binding and stepping statements,
 * transactions, turning SQLite's result codes into EC_E* codes, reading a
 * text column into a fixed buffer, a growable string, and the lists of
 * names in messages.
 *
 * Called only by core/catalog*.c, on the thread that owns the handle it is
 * given (the daemon's server thread or its importer thread; see
 * catalog_impl.h). Its one piece of state is the count of commits made
 * through any handle of the process (ec_catalog_changes), an atomic.
 *
 * Transactions: every mutating function is one BEGIN IMMEDIATE ... COMMIT
 * (cat_tx_begin_write / cat_tx_commit); any failure rolls back
 * (cat_tx_rollback), so the catalog is left as it was. Writers on two
 * handles serialize on BEGIN IMMEDIATE, and the busy timeout set at open
 * absorbs the wait instead of surfacing SQLITE_BUSY. Multi-statement reads
 * run in one read transaction (cat_tx_begin_read / cat_tx_end_read) so they
 * see one snapshot; a read from inside a listing callback joins the
 * listing's transaction, and a write from there is refused with EC_EINVAL.
 *
 * Errors: SQLite failures become EC_ECORRUPT (SQLITE_CORRUPT, SQLITE_NOTADB),
 * EC_ENOMEM, EC_ENOSPC (SQLITE_FULL), EC_EBUSY (SQLITE_BUSY/LOCKED after the
 * busy timeout), EC_EPERM (SQLITE_READONLY/PERM/AUTH), EC_ETOOBIG, else
 * EC_EIO, with sqlite3_errmsg() and the step that failed in the message.
 */
#include "core/catalog_impl.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static int map_sqlite(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return EC_ECORRUPT;
    case SQLITE_NOMEM:
        return EC_ENOMEM;
    case SQLITE_FULL:
        return EC_ENOSPC;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return EC_EBUSY;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return EC_EPERM;
    case SQLITE_TOOBIG:
        return EC_ETOOBIG;
    default:
        return EC_EIO;
    }
}

/* Record SQLite's failure rc while doing `what`; returns the EC_ code. */
int cat_sql_err(sqlite3 *db, int rc, const char *what)
{
    return ec_seterr(map_sqlite(rc), "catalog: %s: %s (sqlite error %d)", what,
                     db ? sqlite3_errmsg(db) : sqlite3_errstr(rc), rc);
}

int cat_prep(ec_catalog *cat, const char *sql, sqlite3_stmt **st)
{
    int rc = sqlite3_prepare_v2(cat->db, sql, -1, st, NULL);

    if (rc != SQLITE_OK) {
        *st = NULL;
        return cat_sql_err(cat->db, rc, "prepare");
    }
    return 0;
}

/* Parameters 1.. from fmt; see catalog_impl.h for the letters. */
int cat_bindf(ec_catalog *cat, sqlite3_stmt *st, const char *fmt, ...)
{
    va_list ap;
    int rc = SQLITE_OK;
    int idx = 1;

    va_start(ap, fmt);
    for (const char *f = fmt; *f && rc == SQLITE_OK; f++, idx++) {
        switch (*f) {
        case 'i':
            rc = sqlite3_bind_int64(st, idx, (sqlite3_int64)va_arg(ap, int64_t));
            break;
        case 'u':
            rc = sqlite3_bind_int64(st, idx, (sqlite3_int64)va_arg(ap, uint64_t));
            break;
        case 't': {
            const char *s = va_arg(ap, const char *);
            rc = s ? sqlite3_bind_text(st, idx, s, -1, SQLITE_TRANSIENT)
                   : sqlite3_bind_null(st, idx);
            break;
        }
        case 'b': {
            const void *p = va_arg(ap, const void *);
            size_t n = va_arg(ap, size_t);
            rc = sqlite3_bind_blob64(st, idx, n ? p : "", (sqlite3_uint64)n, SQLITE_TRANSIENT);
            break;
        }
        default:
            rc = SQLITE_MISUSE;
            break;
        }
    }
    va_end(ap);
    if (rc != SQLITE_OK)
        return cat_sql_err(cat->db, rc, "bind");
    return 0;
}

/* Step: 1 for a row, 0 when done, < 0 on failure. */
int cat_step(ec_catalog *cat, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);

    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE)
        return 0;
    return cat_sql_err(cat->db, rc, what);
}

int cat_exec(ec_catalog *cat, const char *sql, const char *what)
{
    int rc = sqlite3_exec(cat->db, sql, NULL, NULL, NULL);

    return rc == SQLITE_OK ? 0 : cat_sql_err(cat->db, rc, what);
}

int cat_tx_begin_write(ec_catalog *cat)
{
    if (!sqlite3_get_autocommit(cat->db))
        return ec_seterr(EC_EINVAL, "catalog: a change was requested from inside a catalog "
                                    "callback; make it after the listing returns");
    return cat_exec(cat, "BEGIN IMMEDIATE", "begin write transaction");
}

/* Commits through any catalog handle of this process (see
 * ec_catalog_changes): bumped after every COMMIT, whether it succeeded. */
static _Atomic uint64_t cat_commits;

uint64_t ec_catalog_changes(void)
{
    return atomic_load_explicit(&cat_commits, memory_order_acquire);
}

/* Commit; on failure the transaction is rolled back (if still open). */
int cat_tx_commit(ec_catalog *cat)
{
    int err = cat_exec(cat, "COMMIT", "commit");

    if (err < 0 && !sqlite3_get_autocommit(cat->db))
        sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
    atomic_fetch_add_explicit(&cat_commits, 1, memory_order_acq_rel);
    return err;
}

/* Roll back without touching the thread's error message. */
void cat_tx_rollback(ec_catalog *cat)
{
    if (!sqlite3_get_autocommit(cat->db))
        sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
}

int cat_tx_finish(ec_catalog *cat, sqlite3_stmt *st, int err)
{
    sqlite3_finalize(st);
    if (err < 0) {
        cat_tx_rollback(cat);
        return err;
    }
    return cat_tx_commit(cat);
}

/* Start a read transaction unless one is open already (nested call from a
 * callback); *owned says whether cat_tx_end_read must end it. */
int cat_tx_begin_read(ec_catalog *cat, bool *owned)
{
    *owned = false;
    if (!sqlite3_get_autocommit(cat->db))
        return 0;
    int err = cat_exec(cat, "BEGIN", "begin read transaction");
    if (err == 0)
        *owned = true;
    return err;
}

void cat_tx_end_read(ec_catalog *cat, bool owned)
{
    if (owned && !sqlite3_get_autocommit(cat->db))
        sqlite3_exec(cat->db, "COMMIT", NULL, NULL, NULL);
}

/* Copy a text column into a fixed buffer; false if NULL or too long. */
bool cat_col_text(sqlite3_stmt *st, int col, char *dst, size_t cap)
{
    const unsigned char *s = sqlite3_column_text(st, col);
    int n = sqlite3_column_bytes(st, col);

    if (!s || n < 0 || (size_t)n >= cap || strlen((const char *)s) != (size_t)n)
        return false;
    memcpy(dst, s, (size_t)n + 1);
    return true;
}

int cat_sb_put(cat_sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return ec_seterr(EC_ENOMEM, "catalog: out of memory normalizing params JSON");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* Append to a fixed message buffer; once full, end it with ", ..." and
 * refuse more. Returns false when the list was cut. */
bool cat_list_append(char *buf, size_t cap, size_t *len, const char *item)
{
    const char *sep = *len ? ", " : "";
    size_t need = strlen(sep) + strlen(item);

    if (*len + need + 6 > cap) {
        const char *more = *len ? ", ..." : "...";
        if (*len + strlen(more) < cap) {
            memcpy(buf + *len, more, strlen(more) + 1);
            *len += strlen(more);
        }
        return false;
    }
    *len += (size_t)snprintf(buf + *len, cap - *len, "%s%s", sep, item);
    return true;
}
