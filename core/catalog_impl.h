/*
 * catalog_impl.h - private to core/catalog*.c: the handle's definition and
 * the helpers one catalog file defines and another calls. Nothing else
 * includes it; the interface is core/catalog.h.
 *
 * The catalog, by concern:
 *   catalog.c         open, schema and its upgrades, close; versions,
 *                     aliases and tensors: add, resolve, find, list, drop,
 *                     update_file, foreach_path, counts
 *   catalog_policy.c  policies the engine reads: per-model residency and
 *                     per-tensor cache mode
 *   catalog_ns.c      the cache manager's namespaces: put, delete, each
 *   catalog_json.c    params JSON: validate, normalize, canonical form
 *   catalog_sql.c     SQLite plumbing: statements, binding, transactions,
 *                     error mapping, a growable string
 *   catalog_check.c   validation at open: quick_check, foreign keys, invariants
 *   catalog_names.c   names of models, tensors and aliases; partition paths
 *
 * Who runs it: the daemon only, in two threads with one handle each: the
 * server thread (the engine's handle, opened by ec_engine_open) and the
 * importer thread (the server's second handle); and `embcache recover`
 * (core/recover.c), single-threaded while no daemon runs. Every helper here works on
 * the handle it is given and keeps no other state, so it runs on whichever
 * of those threads owns that handle.
 *
 * Conventions every catalog file keeps:
 *  1. A mutating entry point is one cat_tx_begin_write ... cat_tx_commit,
 *     and calls cat_tx_rollback on every failure path, so a failure leaves
 *     the catalog as it was. cat_tx_begin_write refuses (EC_EINVAL) while a
 *     transaction is open: that is a change from inside a listing callback.
 *  2. A read of more than one statement runs between cat_tx_begin_read and
 *     cat_tx_end_read, so it sees one snapshot; inside a callback those
 *     nest (the outer read owns the transaction).
 *  3. Every statement is finalized by the function that prepared it: a
 *     handle has no statement open between calls.
 *  4. Every value read from the file is validated before it is returned
 *     (EC_ECORRUPT names the row and says to restore the catalog).
 */
#ifndef EC_CORE_CATALOG_IMPL_H
#define EC_CORE_CATALOG_IMPL_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/catalog.h"

struct ec_catalog {
    sqlite3 *db;  /* one connection, FULLMUTEX, WAL, foreign keys on */
    bool created; /* this open created the schema: the file was new or empty */
};

/* catalog_names.c: all decimal digits (and not empty); a valid partition
 * file path (relative, printable, no empty, "." or ".." components, at most
 * maxlen bytes). */
bool cat_all_digits(const char *s);
bool cat_path_ok(const char *path, size_t maxlen);

/* What a message about a damaged catalog says to do (catalog_check.c, and
 * ec_catalog_open for a file SQLite cannot read at all). */
#define CAT_RECOVER_HINT                                                                  \
    "with embcached stopped, run `embcache recover --data-dir DIR` (it rebuilds the "    \
    "catalog from the partition files and keeps the damaged catalog aside), or restore "  \
    "catalog.db from a backup; embcached deletes nothing while the catalog is in this "   \
    "state"

/* catalog_check.c: refuse a damaged or inconsistent catalog (EC_ECORRUPT
 * with how to recover); path is for the message. */
int cat_validate(ec_catalog *cat, const char *path);

/* catalog_ns.c: check every namespace row as ec_catalog_ns_each does
 * (EC_ECORRUPT naming the first bad row). */
int cat_ns_check(ec_catalog *cat);

/* ------------------------------------------------------------------ */
/* catalog_sql.c: SQLite plumbing                                      */

/* Record SQLite's failure rc while doing `what` (db may be NULL); returns
 * the EC_ code: EC_ECORRUPT, EC_ENOMEM, EC_ENOSPC, EC_EBUSY, EC_EPERM,
 * EC_ETOOBIG or EC_EIO, with SQLite's message. */
int cat_sql_err(sqlite3 *db, int rc, const char *what);

/* Prepare sql on the handle; *st is NULL on failure. */
int cat_prep(ec_catalog *cat, const char *sql, sqlite3_stmt **st);

/* Bind parameters 1.. from a format: 'i' int64_t, 'u' uint64_t (bit
 * pattern), 't' const char * (NULL binds NULL), 'b' const void *, size_t. */
int cat_bindf(ec_catalog *cat, sqlite3_stmt *st, const char *fmt, ...);

/* Step: 1 for a row, 0 when done, < 0 on failure (while doing `what`). */
int cat_step(ec_catalog *cat, sqlite3_stmt *st, const char *what);

/* Run SQL that returns no rows. */
int cat_exec(ec_catalog *cat, const char *sql, const char *what);

/* BEGIN IMMEDIATE; EC_EINVAL from inside a catalog callback. */
int cat_tx_begin_write(ec_catalog *cat);

/* Commit; on failure the transaction is rolled back (if still open). */
int cat_tx_commit(ec_catalog *cat);

/* Roll back without touching the thread's error message. */
void cat_tx_rollback(ec_catalog *cat);

/* End a write transaction of one statement: finalize st (NULL allowed), then
 * commit when err >= 0, or roll back and return err. */
int cat_tx_finish(ec_catalog *cat, sqlite3_stmt *st, int err);

/* Start a read transaction unless one is open already (nested call from a
 * callback); *owned says whether cat_tx_end_read must end it. */
int cat_tx_begin_read(ec_catalog *cat, bool *owned);
void cat_tx_end_read(ec_catalog *cat, bool owned);

/* Copy a text column into a fixed buffer; false if NULL, too long or
 * holding a NUL byte. */
bool cat_col_text(sqlite3_stmt *st, int col, char *dst, size_t cap);

/* Lists of names in messages ("versions: 1, 2, 3"): at most this many
 * bytes, cut with ", ..." (cat_list_append). */
#define CAT_LIST_MAX 160
bool cat_list_append(char *buf, size_t cap, size_t *len, const char *item);

/* A growable string, NUL-terminated once anything was put. */
typedef struct cat_sbuf {
    char *p;
    size_t len, cap;
} cat_sbuf;

/* Append n bytes of s; EC_ENOMEM when it cannot grow. */
int cat_sb_put(cat_sbuf *b, const char *s, size_t n);

/* ------------------------------------------------------------------ */
/* catalog_json.c: params JSON                                         */

/* Validate params (a JSON object) and return its json() form, malloc'd
 * (the caller frees it). EC_EINVAL saying what is wrong with it. */
int cat_params_normalize(ec_catalog *cat, const char *params, char **out);

/* Append the canonical form of json (an object when is_object, else an
 * array) to out: members sorted by key, no whitespace, so two params
 * compare equal as strings exactly when they are the same JSON. depth is 0
 * for the outermost value. */
int cat_json_canon(ec_catalog *cat, const char *json, bool is_object, int depth,
                   cat_sbuf *out);

/* ------------------------------------------------------------------ */
/* catalog.c: lookups                                                  */

/* The model's row id; EC_ENOENT "unknown model" (naming it) when absent. */
int cat_model_id_of(ec_catalog *cat, const char *model, int64_t *id_out);

#endif
