/*
 * catalog_fixture.h - what the unit tests of the model catalog share
 * (test_catalog.c for core/catalog.c, test_catalog_ns.c for
 * core/catalog_ns.c): the cmocka fixture, a fresh catalog in a temporary
 * directory of its own per test; reopening it; SQL on the catalog file
 * through a connection of the test's own (to tamper with rows, read what
 * the catalog hides, or build an old catalog); the check of the last error
 * message; and frozen copies of older schemas' tables for the upgrade
 * tests. The tests run it in their one thread (bar test_catalog's
 * concurrency tests, which use none of it from their threads).
 */
#ifndef EC_TESTS_CATALOG_FIXTURE_H
#define EC_TESTS_CATALOG_FIXTURE_H

#include <stdint.h>
#include <string.h>

#include "core/catalog.h"
#include "testutil.h"

/* A test's catalog: the temporary directory, the file, the open handle. */
typedef struct fx {
    char *dir;
    char *path;
    ec_catalog *cat;
} fx;

/* The last error message (ec_last_error) contains sub. */
#define assert_msg(sub)                                                                 \
    do {                                                                                \
        if (!strstr(ec_last_error(), (sub)))                                            \
            fail_msg("error message \"%s\" lacks \"%s\"", ec_last_error(), (sub));      \
    } while (0)

/* cmocka setup: a new fx in *state, its catalog created and open in a new
 * temporary directory named after prefix. Fails the test otherwise. */
int fx_setup(void **state, const char *prefix);
/* cmocka teardown: close the catalog, remove the directory, free the fx. */
int fx_teardown(void **state);
/* Close f's catalog and open its file again. */
void reopen(fx *f);

/* Run sql on the catalog file at path with a connection of our own. */
void raw_sql(const char *path, const char *sql);
/* The first column of the first row of sql, on a connection of its own. */
int64_t raw_int(const char *path, const char *sql);

/* Frozen copies of older schemas' tables (not derived from catalog.c,
 * which moves on): schema 2, before per-tensor cache modes, and schema 3,
 * before namespaces. The tests add their rows and PRAGMA user_version. */
#define CATFX_SCHEMA2_DDL                                                                     \
    "CREATE TABLE models(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);"                 \
    "CREATE TABLE versions(id INTEGER PRIMARY KEY AUTOINCREMENT, model_id INTEGER NOT NULL "  \
    " REFERENCES models(id) ON DELETE CASCADE, version INTEGER NOT NULL CHECK(version >= 1)," \
    " round INTEGER NOT NULL DEFAULT -1 CHECK(round >= -1), params_json TEXT NOT NULL "       \
    " DEFAULT '{}', created_unix INTEGER NOT NULL, UNIQUE(model_id, version));"               \
    "CREATE TABLE aliases(model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE," \
    " alias TEXT NOT NULL, version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE "    \
    " CASCADE, PRIMARY KEY(model_id, alias)) WITHOUT ROWID;"                                  \
    "CREATE INDEX aliases_version ON aliases(version_id);"                                    \
    "CREATE TABLE tensors(id INTEGER PRIMARY KEY AUTOINCREMENT, version_id INTEGER NOT NULL " \
    " REFERENCES versions(id) ON DELETE CASCADE, name TEXT NOT NULL, dtype INTEGER NOT NULL," \
    " ndim INTEGER NOT NULL CHECK(ndim BETWEEN 0 AND 8), shape BLOB NOT NULL, rows INTEGER "  \
    " NOT NULL, row_bytes INTEGER NOT NULL, rows_per_partition INTEGER NOT NULL, partitions " \
    " INTEGER NOT NULL, path TEXT NOT NULL, file_size INTEGER NOT NULL, header_checksum "     \
    " INTEGER NOT NULL, part_checksums BLOB NOT NULL, UNIQUE(version_id, name));"             \
    "CREATE TABLE model_policy(model_id INTEGER PRIMARY KEY REFERENCES models(id) ON DELETE " \
    " CASCADE, min_resident_bytes INTEGER NOT NULL DEFAULT 0 CHECK(min_resident_bytes >= 0)," \
    " min_request_rate REAL NOT NULL DEFAULT 0 CHECK(min_request_rate >= 0));"

#define CATFX_SCHEMA3_DDL                                                                   \
    CATFX_SCHEMA2_DDL                                                                       \
    "CREATE TABLE tensor_policy(model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE " \
    " CASCADE, tensor TEXT NOT NULL, mode INTEGER NOT NULL CHECK(mode BETWEEN 1 AND 2),"    \
    " PRIMARY KEY(model_id, tensor)) WITHOUT ROWID;"

#endif /* EC_TESTS_CATALOG_FIXTURE_H */
