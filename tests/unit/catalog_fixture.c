/*
 * catalog_fixture.c - the fixture and helpers that the model catalog's unit
 * tests share (declared in catalog_fixture.h): a fresh catalog per test,
 * reopening it, and SQL on its file through connections of the test's own.
 *
 * Compiled into test_catalog and test_catalog_ns (tests/CMakeLists.txt);
 * runs in the test's thread and fails the running cmocka test on error.
 */
#include "catalog_fixture.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/err.h"

int fx_setup(void **state, const char *prefix)
{
    fx *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    f->dir = ect_tmpdir(prefix);
    assert_true(asprintf(&f->path, "%s/%s", f->dir, EC_CATALOG_FILE) > 0);
    if (ec_catalog_open(f->path, &f->cat) != 0)
        fail_msg("open: %s", ec_last_error());
    *state = f;
    return 0;
}

int fx_teardown(void **state)
{
    fx *f = *state;

    ec_catalog_close(f->cat);
    ect_rmtree(f->dir);
    free(f->path);
    free(f->dir);
    free(f);
    return 0;
}

void reopen(fx *f)
{
    ec_catalog_close(f->cat);
    f->cat = NULL;
    if (ec_catalog_open(f->path, &f->cat) != 0)
        fail_msg("reopen: %s", ec_last_error());
}

void raw_sql(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    char *msg = NULL;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
    sqlite3_close(db);
}

int64_t raw_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v;

    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}
