/*
 * test_catalog_ns.c - unit tests for core/catalog_ns.c: the cache manager's
 * namespaces in the catalog (schema 4).
 *
 * Each test gets a fresh catalog in its own temporary directory (the
 * fixture of catalog_fixture.c, shared by both catalog tests). Covers a
 * round trip of every field (extreme values included: a salt with the top
 * bit set, negative stale and jitter, u32 and u63 maxima) across a reopen,
 * replace by slot, a name taken by another slot, delete, slot order and a
 * callback that stops the listing, invalid definitions refused, rows
 * tampered with through a connection of the test's own (refused by each
 * and by open), a write from inside the listing, and a schema-3 catalog
 * upgraded to 4 (and an upgrade that fails leaving it at 3).
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog_fixture.h"
#include "common/err.h"
#include "core/catalog.h"
#include "testutil.h"

static int setup(void **state)
{
    return fx_setup(state, "ec-catns");
}

/* A plain unbound namespace at slot with name. */
static ec_catalog_ns plain(uint32_t slot, const char *name)
{
    ec_catalog_ns ns;

    memset(&ns, 0, sizeof(ns));
    ns.slot = slot;
    snprintf(ns.name, sizeof(ns.name), "%s", name);
    ns.owner_uid = 1000;
    ns.generation = 1;
    ns.salt = 0x1234;
    ns.ttl_us = 300000000;
    ns.stale_us = 60000000;
    ns.negative_ttl_us = 30000000;
    ns.jitter_ppm = 100000;
    ns.lease_us = 30000000;
    ns.max_computing = 64;
    ns.negative_max = 65536;
    return ns;
}

/* Every field at a value that catches truncation and sign trouble. */
static ec_catalog_ns extreme(void)
{
    ec_catalog_ns ns;

    memset(&ns, 0, sizeof(ns));
    ns.slot = EC_NS_MAX - 1;
    memset(ns.name, 'n', EC_NS_NAME_MAX); /* the longest name */
    memcpy(ns.name, "Team-a:emb.v1_", 14);
    ns.owner_uid = UINT32_MAX;
    ns.flags = EC_NS_SHARED;
    snprintf(ns.bind_model, sizeof(ns.bind_model), "bert-base");
    snprintf(ns.bind_version, sizeof(ns.bind_version), "current");
    ns.bound_version = INT64_MAX;
    ns.generation = UINT32_MAX - 1;
    ns.salt = UINT64_C(0x8000000000000001) | UINT64_C(0x00f0f0f0f0f0f000);
    ns.ttl_us = (uint64_t)INT64_MAX;
    ns.stale_us = -1;
    ns.negative_ttl_us = (UINT64_C(1) << 40) + 3;
    ns.jitter_ppm = INT64_MIN;
    ns.lease_us = 30000001;
    ns.max_computing = UINT32_MAX;
    ns.negative_max = (uint64_t)INT64_MAX - 7;
    return ns;
}

static void assert_ns_equal(const ec_catalog_ns *a, const ec_catalog_ns *b)
{
    assert_int_equal(a->slot, b->slot);
    assert_string_equal(a->name, b->name);
    assert_int_equal(a->owner_uid, b->owner_uid);
    assert_int_equal(a->flags, b->flags);
    assert_string_equal(a->bind_model, b->bind_model);
    assert_string_equal(a->bind_version, b->bind_version);
    assert_true(a->bound_version == b->bound_version);
    assert_int_equal(a->generation, b->generation);
    assert_true(a->salt == b->salt);
    assert_true(a->ttl_us == b->ttl_us);
    assert_true(a->stale_us == b->stale_us);
    assert_true(a->negative_ttl_us == b->negative_ttl_us);
    assert_true(a->jitter_ppm == b->jitter_ppm);
    assert_true(a->lease_us == b->lease_us);
    assert_int_equal(a->max_computing, b->max_computing);
    assert_true(a->negative_max == b->negative_max);
}

/* What ec_catalog_ns_each showed, in order; stop_after > 0 returns 7 from
 * that call on. */
typedef struct seen {
    ec_catalog_ns ns[EC_NS_MAX];
    size_t n;
    size_t stop_after;
} seen;

static int collect(const ec_catalog_ns *ns, void *arg)
{
    seen *s = arg;

    assert_true(s->n < EC_NS_MAX);
    s->ns[s->n++] = *ns;
    return s->stop_after && s->n >= s->stop_after ? 7 : 0;
}

/* List every namespace into s; fails the test unless each returns 0. */
static void each_ok(ec_catalog *cat, seen *s)
{
    memset(s, 0, sizeof(*s));
    if (ec_catalog_ns_each(cat, collect, s) != 0)
        fail_msg("ns_each: %s", ec_last_error());
}

static void put_ok(ec_catalog *cat, const ec_catalog_ns *ns)
{
    if (ec_catalog_ns_put(cat, ns) != 0)
        fail_msg("ns_put %s: %s", ns->name, ec_last_error());
}

/* ------------------------------------------------------------------ */

static void test_roundtrip_every_field(void **state)
{
    fx *f = *state;
    ec_catalog_ns a = plain(0, "a"), b = extreme();
    seen *s = malloc(sizeof(*s));
    uint64_t before = ec_catalog_changes();

    assert_non_null(s);
    assert_int_equal(strlen(b.name), EC_NS_NAME_MAX);
    put_ok(f->cat, &b);
    put_ok(f->cat, &a);
    assert_true(ec_catalog_changes() >= before + 2);
    each_ok(f->cat, s);
    assert_int_equal(s->n, 2);
    assert_ns_equal(&s->ns[0], &a);
    assert_ns_equal(&s->ns[1], &b);
    /* The salt is kept as its bit pattern: a negative int64 in the file. */
    assert_true(raw_int(f->path, "SELECT salt FROM namespaces WHERE slot = 383") ==
                (int64_t)b.salt);
    assert_true(raw_int(f->path, "SELECT salt FROM namespaces WHERE slot = 383") < 0);
    /* And it all survives a reopen. */
    reopen(f);
    each_ok(f->cat, s);
    assert_int_equal(s->n, 2);
    assert_ns_equal(&s->ns[0], &a);
    assert_ns_equal(&s->ns[1], &b);
    free(s);
}

static void test_replace_by_slot(void **state)
{
    fx *f = *state;
    ec_catalog_ns a = plain(3, "first"), b = plain(3, "second");
    seen *s = malloc(sizeof(*s));

    assert_non_null(s);
    put_ok(f->cat, &a);
    b.ttl_us = 5;
    b.generation = 9;
    b.flags = EC_NS_SHARED;
    snprintf(b.bind_model, sizeof(b.bind_model), "m");
    snprintf(b.bind_version, sizeof(b.bind_version), "12");
    b.bound_version = 12;
    put_ok(f->cat, &b);
    each_ok(f->cat, s);
    assert_int_equal(s->n, 1);
    assert_ns_equal(&s->ns[0], &b);
    /* The old name is free again, and the same slot may keep its name. */
    put_ok(f->cat, &b);
    a.slot = 4;
    put_ok(f->cat, &a);
    each_ok(f->cat, s);
    assert_int_equal(s->n, 2);
    assert_string_equal(s->ns[0].name, "second");
    assert_string_equal(s->ns[1].name, "first");
    free(s);
}

static void test_name_taken_by_another_slot(void **state)
{
    fx *f = *state;
    ec_catalog_ns a = plain(1, "x"), b = plain(2, "x");
    seen *s = malloc(sizeof(*s));
    uint64_t before;

    assert_non_null(s);
    put_ok(f->cat, &a);
    before = ec_catalog_changes();
    assert_int_equal(ec_catalog_ns_put(f->cat, &b), EC_EEXIST);
    assert_msg("'x' is taken by slot 1");
    assert_int_equal(ec_catalog_changes(), before); /* nothing committed */
    each_ok(f->cat, s);
    assert_int_equal(s->n, 1);
    assert_ns_equal(&s->ns[0], &a);
    /* Renamed, slot 1 lets go of the name. */
    snprintf(a.name, sizeof(a.name), "y");
    put_ok(f->cat, &a);
    put_ok(f->cat, &b);
    each_ok(f->cat, s);
    assert_int_equal(s->n, 2);
    assert_ns_equal(&s->ns[0], &a);
    assert_ns_equal(&s->ns[1], &b);
    free(s);
}

static void test_delete(void **state)
{
    fx *f = *state;
    ec_catalog_ns a = plain(5, "gone"), b = plain(6, "kept");
    seen *s = malloc(sizeof(*s));
    uint64_t before;

    assert_non_null(s);
    put_ok(f->cat, &a);
    put_ok(f->cat, &b);
    before = ec_catalog_changes();
    assert_int_equal(ec_catalog_ns_delete(f->cat, "gone"), 0);
    assert_true(ec_catalog_changes() > before);
    each_ok(f->cat, s);
    assert_int_equal(s->n, 1);
    assert_ns_equal(&s->ns[0], &b);
    assert_int_equal(ec_catalog_ns_delete(f->cat, "gone"), EC_ENOENT);
    assert_msg("no namespace 'gone'");
    assert_int_equal(ec_catalog_ns_delete(f->cat, "never"), EC_ENOENT);
    assert_int_equal(ec_catalog_ns_delete(f->cat, NULL), EC_EINVAL);
    assert_int_equal(ec_catalog_ns_delete(NULL, "kept"), EC_EINVAL);
    /* The slot is free for another namespace. */
    a = plain(5, "again");
    put_ok(f->cat, &a);
    reopen(f);
    each_ok(f->cat, s);
    assert_int_equal(s->n, 2);
    assert_string_equal(s->ns[0].name, "again");
    assert_string_equal(s->ns[1].name, "kept");
    free(s);
}

static void test_each_in_slot_order_and_stops(void **state)
{
    fx *f = *state;
    static const uint32_t slots[] = {300, 5, 0, 383, 17};
    static const char *const names[] = {"a", "b", "c", "d", "e"};
    static const uint32_t order[] = {0, 5, 17, 300, 383};
    seen *s = malloc(sizeof(*s));

    assert_non_null(s);
    /* Nothing yet: no call, no error. */
    each_ok(f->cat, s);
    assert_int_equal(s->n, 0);
    for (size_t i = 0; i < 5; i++) {
        ec_catalog_ns ns = plain(slots[i], names[i]);
        put_ok(f->cat, &ns);
    }
    each_ok(f->cat, s);
    assert_int_equal(s->n, 5);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(s->ns[i].slot, order[i]);
    assert_string_equal(s->ns[0].name, "c");
    assert_string_equal(s->ns[4].name, "d");
    /* fn's non-zero return stops the listing and is returned. */
    memset(s, 0, sizeof(*s));
    s->stop_after = 2;
    assert_int_equal(ec_catalog_ns_each(f->cat, collect, s), 7);
    assert_int_equal(s->n, 2);
    assert_int_equal(ec_catalog_ns_each(f->cat, NULL, s), EC_EINVAL);
    assert_int_equal(ec_catalog_ns_each(NULL, collect, s), EC_EINVAL);
    free(s);
}

static void test_invalid_put_refused(void **state)
{
    fx *f = *state;
    seen *s = malloc(sizeof(*s));
    uint64_t before = ec_catalog_changes();
    ec_catalog_ns ns;

    assert_non_null(s);
#define REFUSED(change, sub)                                                              \
    do {                                                                                  \
        ns = plain(2, "ok");                                                              \
        change;                                                                           \
        assert_int_equal(ec_catalog_ns_put(f->cat, &ns), EC_EINVAL);                      \
        assert_msg(sub);                                                                  \
    } while (0)
    REFUSED(ns.slot = EC_NS_MAX, "slot out of range");
    REFUSED(snprintf(ns.name, sizeof(ns.name), "a b"), "bad name");
    REFUSED(ns.name[0] = '\0', "bad name");
    REFUSED(snprintf(ns.name, sizeof(ns.name), "x/y"), "bad name");
    REFUSED(memset(ns.name, 'a', sizeof(ns.name)), "bad name"); /* no NUL */
    REFUSED(ns.flags = 0x1, "unknown flags");
    REFUSED(ns.flags = EC_NS_SHARED | 0x4, "unknown flags");
    REFUSED(ns.ttl_us = (uint64_t)INT64_MAX + 1, "over 2^63-1");
    REFUSED(ns.negative_ttl_us = UINT64_MAX, "over 2^63-1");
    REFUSED(ns.lease_us = UINT64_MAX, "over 2^63-1");
    REFUSED(ns.negative_max = UINT64_MAX, "over 2^63-1");
    REFUSED(snprintf(ns.bind_version, sizeof(ns.bind_version), "3"), "without a model");
    REFUSED(ns.bound_version = 3, "without a model");
    REFUSED(snprintf(ns.bind_model, sizeof(ns.bind_model), "m"), "version or alias");
    REFUSED((snprintf(ns.bind_model, sizeof(ns.bind_model), "-m"),
             snprintf(ns.bind_version, sizeof(ns.bind_version), "1")),
            "bad bound model");
    REFUSED((snprintf(ns.bind_model, sizeof(ns.bind_model), "m"),
             snprintf(ns.bind_version, sizeof(ns.bind_version), "1"), ns.bound_version = -1),
            "negative bound version");
#undef REFUSED
    assert_int_equal(ec_catalog_ns_put(f->cat, NULL), EC_EINVAL);
    ns = plain(2, "ok");
    assert_int_equal(ec_catalog_ns_put(NULL, &ns), EC_EINVAL);
    assert_int_equal(ec_catalog_changes(), before);
    each_ok(f->cat, s);
    assert_int_equal(s->n, 0);
    free(s);
}

/* A row changed behind the catalog's back is reported, naming the row, by
 * each and by open; each shows the rows before it. */
static void test_tampered_row_is_corrupt(void **state)
{
    fx *f = *state;
    static const struct {
        const char *sql, *msg;
    } cases[] = {
        {"UPDATE namespaces SET slot = 999 WHERE slot = 9", "slot 999 (name 'bad'): slot out"},
        {"UPDATE namespaces SET name = 'a b' WHERE slot = 9", "slot 9 (name 'a b'): bad name"},
        {"UPDATE namespaces SET name = '' WHERE slot = 9", "slot 9 (name ''): bad name"},
        {"UPDATE namespaces SET name = x'41' WHERE slot = 9", "slot 9 (name 'A'): bad name"},
        {"UPDATE namespaces SET flags = 1 WHERE slot = 9", "unknown flags"},
        {"UPDATE namespaces SET flags = 6 WHERE slot = 9", "unknown flags"},
        {"UPDATE namespaces SET ttl_us = -5 WHERE slot = 9", "unsigned value out of range"},
        {"UPDATE namespaces SET negative_max = -1 WHERE slot = 9", "unsigned value"},
        {"UPDATE namespaces SET owner_uid = 4294967296 WHERE slot = 9", "unsigned value"},
        {"UPDATE namespaces SET generation = -1 WHERE slot = 9", "unsigned value"},
        {"UPDATE namespaces SET max_computing = 4294967296 WHERE slot = 9", "unsigned value"},
        {"UPDATE namespaces SET bound_version = -2 WHERE slot = 9", "unsigned value"},
        {"UPDATE namespaces SET lease_us = 'soon' WHERE slot = 9", "holds no integer"},
        {"UPDATE namespaces SET salt = 1.5 WHERE slot = 9", "holds no integer"},
        {"UPDATE namespaces SET bind_version = '3' WHERE slot = 9", "without a model"},
        {"UPDATE namespaces SET bind_model = '../x', bind_version = '1' WHERE slot = 9",
         "bad bound model"},
        {"UPDATE namespaces SET bind_model = x'6d', bind_version = '1' WHERE slot = 9",
         "binding not a string"},
    };
    ec_catalog_ns good = plain(2, "good"), bad = plain(9, "bad");
    ec_catalog *cat = (ec_catalog *)0x1;
    seen *s = malloc(sizeof(*s));

    assert_non_null(s);
    put_ok(f->cat, &good);
    put_ok(f->cat, &bad);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char sql[256];

        snprintf(sql, sizeof(sql), "PRAGMA ignore_check_constraints = 1; %s", cases[i].sql);
        raw_sql(f->path, sql);
        memset(s, 0, sizeof(*s));
        if (ec_catalog_ns_each(f->cat, collect, s) != EC_ECORRUPT)
            fail_msg("case %zu (%s) not reported: %s", i, cases[i].sql, ec_last_error());
        assert_msg(cases[i].msg);
        assert_msg("DELETE FROM namespaces WHERE slot =");
        assert_int_equal(s->n, 1); /* slot 2, before the bad row */
        assert_ns_equal(&s->ns[0], &good);
        /* Put the row back as it was. */
        raw_sql(f->path, "DELETE FROM namespaces WHERE slot != 2");
        put_ok(f->cat, &bad);
        each_ok(f->cat, s);
        assert_int_equal(s->n, 2);
    }
    /* Open refuses such a catalog, saying which file and which row. */
    ec_catalog_close(f->cat);
    f->cat = NULL;
    raw_sql(f->path, "UPDATE namespaces SET ttl_us = -5 WHERE slot = 9");
    assert_int_equal(ec_catalog_open(f->path, &cat), EC_ECORRUPT);
    assert_ptr_equal(cat, (ec_catalog *)0x1);
    assert_msg("catalog.db is inconsistent");
    assert_msg("namespace row slot 9 (name 'bad')");
    raw_sql(f->path, "UPDATE namespaces SET ttl_us = 5 WHERE slot = 9");
    /* A row against the table's CHECKs fails SQLite's quick_check first. */
    raw_sql(f->path, "PRAGMA ignore_check_constraints = 1; "
                     "UPDATE namespaces SET slot = 999 WHERE slot = 9");
    assert_int_equal(ec_catalog_open(f->path, &cat), EC_ECORRUPT);
    assert_ptr_equal(cat, (ec_catalog *)0x1);
    assert_msg("CHECK constraint failed in namespaces");
    /* Deleting the row, as the message says, makes it open again. */
    raw_sql(f->path, "DELETE FROM namespaces WHERE slot = 999");
    reopen(f);
    each_ok(f->cat, s);
    assert_int_equal(s->n, 1);
    assert_ns_equal(&s->ns[0], &good);
    free(s);
}

/* The schema's CHECKs refuse the same rows without the pragma. */
static void test_schema_checks(void **state)
{
    fx *f = *state;
    ec_catalog_ns a = plain(1, "a");
    sqlite3 *db = NULL;

    put_ok(f->cat, &a);
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE namespaces SET slot = 384", NULL, NULL, NULL) &
                         0xff,
                     SQLITE_CONSTRAINT);
    assert_int_equal(sqlite3_exec(db, "UPDATE namespaces SET flags = 1", NULL, NULL, NULL) &
                         0xff,
                     SQLITE_CONSTRAINT);
    assert_int_equal(sqlite3_exec(db, "UPDATE namespaces SET name = NULL", NULL, NULL, NULL) &
                         0xff,
                     SQLITE_CONSTRAINT);
    sqlite3_close(db);
}

/* each's callback runs in a read transaction: a change from there is refused. */
struct nested {
    ec_catalog *cat;
    int put_rc, del_rc;
};

static int write_from_callback(const ec_catalog_ns *ns, void *arg)
{
    struct nested *n = arg;
    ec_catalog_ns copy = *ns;

    copy.generation++;
    n->put_rc = ec_catalog_ns_put(n->cat, &copy);
    n->del_rc = ec_catalog_ns_delete(n->cat, ns->name);
    return 0;
}

static void test_write_from_callback_refused(void **state)
{
    fx *f = *state;
    ec_catalog_ns a = plain(1, "a");
    struct nested n = {f->cat, 1, 1};
    seen *s = malloc(sizeof(*s));

    assert_non_null(s);
    put_ok(f->cat, &a);
    assert_int_equal(ec_catalog_ns_each(f->cat, write_from_callback, &n), 0);
    assert_int_equal(n.put_rc, EC_EINVAL);
    assert_int_equal(n.del_rc, EC_EINVAL);
    each_ok(f->cat, s);
    assert_int_equal(s->n, 1);
    assert_ns_equal(&s->ns[0], &a);
    free(s);
}

/*
 * A schema-3 catalog, as embcached wrote it before namespaces: a frozen
 * copy of schema 3's DDL (catalog_fixture.h; not derived from catalog.c,
 * which moves on), with one model, version, alias, tensor and tensor mode.
 */
static const char schema3_sql[] =
    CATFX_SCHEMA3_DDL
    "INSERT INTO models(id, name) VALUES(1, 'bert');"
    "INSERT INTO versions(id, model_id, version, round, params_json, created_unix) "
    " VALUES(1, 1, 1, 7, '{}', 1700000000);"
    "INSERT INTO aliases(model_id, alias, version_id) VALUES(1, 'current', 1);"
    "INSERT INTO tensors(id, version_id, name, dtype, ndim, shape, rows, row_bytes, "
    " rows_per_partition, partitions, path, file_size, header_checksum, part_checksums) "
    " VALUES(5, 1, 'word_embeddings', 1, 2, x'0a000000000000000400000000000000', 10, 16, 5, 2,"
    " 'parts/w.ecp', 4256, -1, x'0100000000000000ffffffffffffff7f');"
    "INSERT INTO tensor_policy VALUES(1, 'word_embeddings', 2);"
    "PRAGMA user_version = 3;";

static void test_schema_3_upgraded(void **state)
{
    fx *f = *state;
    ec_catalog *cat = NULL;
    ec_catalog_ns ns = extreme();
    ec_cat_tensor t;
    ec_cache_mode mode = EC_CACHE_AUTO;
    seen *s = malloc(sizeof(*s));
    char *path;

    assert_non_null(s);
    assert_true(asprintf(&path, "%s/schema3.db", f->dir) > 0);
    raw_sql(path, schema3_sql);
    assert_int_equal(raw_int(path, "SELECT count(*) FROM sqlite_master WHERE name = "
                                   "'namespaces'"),
                     0);
    if (ec_catalog_open(path, &cat) != 0)
        fail_msg("open schema 3: %s", ec_last_error());
    assert_false(ec_catalog_created(cat));
    assert_int_equal(raw_int(path, "PRAGMA user_version"), 6);
    assert_int_equal(raw_int(path, "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                                   "AND name = 'namespaces'"),
                     1);
    /* What it held is still there. */
    memset(&t, 0, sizeof(t));
    assert_int_equal(ec_catalog_resolve(cat, "bert", "current", "word_embeddings", &t), 0);
    assert_int_equal(t.id, 5);
    assert_int_equal(ec_catalog_get_tensor_mode(cat, t.version_id, "word_embeddings", &mode), 0);
    assert_int_equal(mode, EC_CACHE_ROWS);
    ec_cat_tensor_clear(&t);
    /* The new table is empty and works, and keeps its rows across a reopen
     * that has nothing left to upgrade. */
    each_ok(cat, s);
    assert_int_equal(s->n, 0);
    put_ok(cat, &ns);
    ec_catalog_close(cat);
    cat = NULL;
    if (ec_catalog_open(path, &cat) != 0)
        fail_msg("reopen upgraded: %s", ec_last_error());
    assert_int_equal(raw_int(path, "PRAGMA user_version"), 6);
    each_ok(cat, s);
    assert_int_equal(s->n, 1);
    assert_ns_equal(&s->ns[0], &ns);
    ec_catalog_close(cat);
    free(path);
    free(s);
}

/* A schema-3 file that already has a table named namespaces: the upgrade
 * fails, says so, and leaves the file at 3. */
static void test_failed_upgrade_to_4_changes_nothing(void **state)
{
    fx *f = *state;
    ec_catalog *cat = (ec_catalog *)0x1;
    char *path;

    assert_true(asprintf(&path, "%s/schema3.db", f->dir) > 0);
    raw_sql(path, schema3_sql);
    raw_sql(path, "CREATE TABLE namespaces(x)");
    assert_int_equal(ec_catalog_open(path, &cat), EC_EIO);
    assert_ptr_equal(cat, (ec_catalog *)0x1);
    assert_msg("catalog left at schema version 3");
    assert_msg("upgrade schema 3 to 4: table namespaces already exists");
    assert_int_equal(raw_int(path, "PRAGMA user_version"), 3);
    raw_sql(path, "DROP TABLE namespaces");
    if (ec_catalog_open(path, &cat) != 0)
        fail_msg("open after the cause is gone: %s", ec_last_error());
    assert_int_equal(raw_int(path, "PRAGMA user_version"), 6);
    ec_catalog_close(cat);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_every_field, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_replace_by_slot, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_name_taken_by_another_slot, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_delete, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_each_in_slot_order_and_stops, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_invalid_put_refused, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_tampered_row_is_corrupt, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_schema_checks, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_write_from_callback_refused, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_schema_3_upgraded, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_failed_upgrade_to_4_changes_nothing, setup,
                                        fx_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
