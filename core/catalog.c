/*
 * catalog.c - the model catalog in SQLite (<data_dir>/catalog.db); see
 * catalog.h for the contract.
 *
 * What it owns: the record of which model versions exist (name, version,
 * training round, params JSON), the aliases that point at them, and for each
 * tensor its dtype, shape, partitioning, partition file and per-partition
 * checksums; and the schema of the whole file, with its upgrades. The
 * partition files themselves belong to the importer; this module only
 * records their paths (relative to the data dir) and hands them back so the
 * caller can unlink them. Policies (catalog_policy.c), the cache manager's
 * namespaces (catalog_ns.c), params JSON
 * (catalog_json.c) and the SQLite plumbing (catalog_sql.c) are in their own
 * files; catalog_impl.h lists what they share.
 *
 * Who calls it: the daemon only, from two threads with one handle each on
 * the same file. The server thread's handle is the engine's (opened by
 * ec_engine_open): the start-up sweep (foreach_path), resolve, list, alias,
 * find, drop, update_file, stats. The importer thread's handle is the
 * server's second one: add_version and the lookups an import makes. One
 * more caller runs outside the daemon, while no daemon runs: `embcache
 * recover` (core/recover.c) opens a new catalog and registers the versions
 * it finds in the partition files (add_version_at), on its only thread.
 *
 * Thread rules: one ec_catalog per thread. A handle is one sqlite3
 * connection; it must be used by one thread at a time (it is opened
 * FULLMUTEX, so misuse cannot corrupt the connection, but error messages are
 * per thread and statements would interleave). Two handles in two threads
 * or processes are safe: the database runs in WAL mode so readers never
 * block the writer, writers serialize on BEGIN IMMEDIATE, and a busy
 * timeout of 5 s absorbs the wait instead of surfacing SQLITE_BUSY.
 * Callbacks (list_versions, list_tensors, foreach_path, list_tensor_modes)
 * run inside a read transaction of the handle: they may call the read
 * functions on the same handle (list_tensors from a list_versions
 * callback), but not the mutating ones (those return EC_EINVAL there).
 * drop_version's on_path runs inside the write transaction and must not
 * call back into the catalog. Transactions and error codes: catalog_sql.c.
 *
 * Durability: synchronous=FULL. With WAL, NORMAL can lose the last commits
 * on power failure. That is not acceptable here: drop_version's caller
 * unlinks partition files right after the commit, and a rolled-back drop
 * would leave the catalog pointing at deleted files; an import or alias
 * switch acknowledged to an operator must also survive. Catalog writes are
 * rare (imports, aliases, drops), so one fsync per commit costs nothing
 * that matters.
 *
 * Schema (PRAGMA user_version = 6; a newer version is refused with
 * EC_EVERSION; 1 to 5 are upgraded on open, in one transaction):
 *
 *   models(id INTEGER PRIMARY KEY, name TEXT UNIQUE)
 *   versions(id INTEGER PRIMARY KEY AUTOINCREMENT,
 *            model_id -> models ON DELETE CASCADE, version >= 1,
 *            round >= -1, params_json TEXT (json()-normalized object),
 *            created_unix, UNIQUE(model_id, version))
 *   aliases(model_id -> models ON DELETE CASCADE, alias,
 *           version_id -> versions ON DELETE CASCADE,
 *           PRIMARY KEY(model_id, alias))
 *   tensors(id INTEGER PRIMARY KEY AUTOINCREMENT,
 *           version_id -> versions ON DELETE CASCADE, name, dtype, ndim,
 *           shape BLOB (ndim little-endian u64), rows, row_bytes,
 *           rows_per_partition, partitions, path, file_size,
 *           header_checksum, part_checksums BLOB (partitions
 *           little-endian u64), UNIQUE(version_id, name))
 *   model_policy(model_id PRIMARY KEY -> models ON DELETE CASCADE,
 *           min_resident_bytes >= 0, min_request_rate >= 0)     [schema 2]
 *   tensor_policy(model_id -> models ON DELETE CASCADE, tensor TEXT
 *           ('' = every tensor of the model), mode 1..2 (ec_cache_mode),
 *           PRIMARY KEY(model_id, tensor)) WITHOUT ROWID        [schema 3]
 *   namespaces(slot INTEGER PRIMARY KEY 0..EC_NS_MAX-1, name UNIQUE,
 *           owner_uid, flags (EC_NS_SHARED), bind_model, bind_version
 *           ('' unbound), bound_version, generation, salt (u64 bits),
 *           ttl_us, stale_us, negative_ttl_us, jitter_ppm, lease_us,
 *           max_computing, negative_max): the cache manager's namespaces,
 *           read and written by catalog_ns.c; no foreign keys (a binding
 *           names a model that may come and go)              [schema 4]
 *   dynamic(tensor_id PRIMARY KEY -> tensors ON DELETE CASCADE,
 *           capacity >= 1, policy 1..2 (EC_DYN_*), base_tensor_id ->
 *           tensors (NULL: the tensor itself; a snapshot's, which then
 *           cannot be dropped while the table uses it), base_lsn >= 0,
 *           created_unix): tables that take row updates, read and
 *           written by catalog_dyn.c                          [schema 5]
 *   tensors.remote_index >= -1, tensors.remote_chunk >= 0,
 *   namespaces.remote 0..1: the shared tier (see REMOTE_SQL) [schema 6]
 *
 * Invariants:
 *  1. Tensor ids come from AUTOINCREMENT, so a committed id is never handed
 *     out again, even after its version is dropped: ids key shared-memory
 *     index entries, and a reused id could make a stale entry look live.
 *  2. Tensor ids stay below 2^32 (the index stores 32-bit ids); an
 *     add_version that would cross it fails with EC_ENOSPC and adds nothing.
 *  3. An alias points at a version of its own model (set_alias looks the
 *     version up by (model, version)).
 *  4. A model row exists only while it has at least one version:
 *     add_version creates it, drop_version of its last version removes it.
 *  5. u64 columns (rows, sizes, checksums) are stored as their two's
 *     complement int64 bit pattern and read back the same way; every value
 *     read from the file is validated before it is returned (EC_ECORRUPT).
 *  6. Policy rows go with their model (ON DELETE CASCADE; open checks that
 *     foreign keys are enforced): model ids are not AUTOINCREMENT, and a
 *     model registered again under a reused id must not inherit them.
 *
 * list_versions of an unknown model calls nothing and returns 0 (an empty
 * listing, as ec_catalog_list() documents); resolve, version_of, find,
 * set_alias and drop_version say which part is unknown with EC_ENOENT.
 */
#include "catalog.h"
#include "core/catalog_impl.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dtype.h"
#include "common/err.h"

#define CAT_SCHEMA_VERSION 6
#define CAT_BUSY_TIMEOUT_MS 5000
#define CAT_TENSOR_ID_LIMIT (INT64_C(1) << 32)
#define CAT_PARTITIONS_MAX (UINT64_C(1) << 26) /* 512 MiB of checksums, < SQLite's 1e9 */

/* ------------------------------------------------------------------ */
/* Little helpers                                                      */

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ------------------------------------------------------------------ */
/* Open and schema                                                     */

/* Schema 2 adds per-model residency policy (ec_catalog_set_policy). */
#define MODEL_POLICY_SQL                                                               \
    "CREATE TABLE model_policy("                                                       \
    "  model_id INTEGER PRIMARY KEY REFERENCES models(id) ON DELETE CASCADE,"          \
    "  min_resident_bytes INTEGER NOT NULL DEFAULT 0 CHECK(min_resident_bytes >= 0),"  \
    "  min_request_rate REAL NOT NULL DEFAULT 0 CHECK(min_request_rate >= 0));"

/* Schema 3 adds per-tensor cache modes (ec_catalog_set_tensor_mode); the
 * row with tensor '' holds the mode of every tensor of the model. */
#define TENSOR_POLICY_SQL                                                              \
    "CREATE TABLE tensor_policy("                                                      \
    "  model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,"             \
    "  tensor TEXT NOT NULL,"                                                          \
    "  mode INTEGER NOT NULL CHECK(mode BETWEEN 1 AND 2),"                             \
    "  PRIMARY KEY(model_id, tensor)) WITHOUT ROWID;"

/* Schema 4 adds the cache manager's namespaces (catalog_ns.c checks every
 * value it reads; the CHECKs are a second line). */
#define NAMESPACES_SQL                                                                 \
    "CREATE TABLE namespaces("                                                         \
    "  slot INTEGER PRIMARY KEY CHECK(slot BETWEEN 0 AND 383),"                        \
    "  name TEXT NOT NULL UNIQUE, owner_uid INTEGER NOT NULL,"                         \
    "  flags INTEGER NOT NULL CHECK(flags IN (0, 2)),"                                 \
    "  bind_model TEXT NOT NULL DEFAULT '', bind_version TEXT NOT NULL DEFAULT '',"    \
    "  bound_version INTEGER NOT NULL DEFAULT 0, generation INTEGER NOT NULL,"         \
    "  salt INTEGER NOT NULL, ttl_us INTEGER NOT NULL, stale_us INTEGER NOT NULL,"     \
    "  negative_ttl_us INTEGER NOT NULL, jitter_ppm INTEGER NOT NULL,"                 \
    "  lease_us INTEGER NOT NULL, max_computing INTEGER NOT NULL,"                     \
    "  negative_max INTEGER NOT NULL);"
static_assert(EC_NS_MAX == 384 && EC_NS_SHARED == 2, "NAMESPACES_SQL's CHECKs");

/* Schema 5 adds dynamic tables (catalog_dyn.c). */
#define DYNAMIC_SQL                                                                    \
    "CREATE TABLE dynamic("                                                            \
    "  tensor_id INTEGER PRIMARY KEY REFERENCES tensors(id) ON DELETE CASCADE,"        \
    "  capacity INTEGER NOT NULL CHECK(capacity >= 1),"                                \
    "  policy INTEGER NOT NULL CHECK(policy IN (1, 2)),"                               \
    "  base_tensor_id INTEGER REFERENCES tensors(id) ON DELETE RESTRICT,"              \
    "  base_lsn INTEGER NOT NULL DEFAULT 0 CHECK(base_lsn >= 0),"                      \
    "  created_unix INTEGER NOT NULL);"                                                \
    "CREATE INDEX dynamic_base ON dynamic(base_tensor_id);"

/* Schema 6 adds the shared tier across hosts: a tensor of a version pulled
 * lazily (`embcache pull --lazy`) reads what is not on local disk from the
 * cluster (remote_index: its index in the published manifest, -1: all of
 * it is local; remote_chunk: the manifest's chunk size), and a namespace
 * may keep its results in the cluster too (remote 1), with leases that hold
 * across hosts. */
#define REMOTE_SQL                                                                     \
    "ALTER TABLE tensors ADD COLUMN remote_index INTEGER NOT NULL DEFAULT -1"          \
    "  CHECK(remote_index >= -1);"                                                     \
    "ALTER TABLE tensors ADD COLUMN remote_chunk INTEGER NOT NULL DEFAULT 0"           \
    "  CHECK(remote_chunk >= 0);"                                                      \
    "ALTER TABLE namespaces ADD COLUMN remote INTEGER NOT NULL DEFAULT 0"              \
    "  CHECK(remote IN (0, 1));"

#define CAT_STR_(x) #x
#define CAT_STR(x) CAT_STR_(x)

static const char schema_sql[] =
    "CREATE TABLE models("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT NOT NULL UNIQUE);"
    "CREATE TABLE versions("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,"
    "  version INTEGER NOT NULL CHECK(version >= 1),"
    "  round INTEGER NOT NULL DEFAULT -1 CHECK(round >= -1),"
    "  params_json TEXT NOT NULL DEFAULT '{}',"
    "  created_unix INTEGER NOT NULL,"
    "  UNIQUE(model_id, version));"
    "CREATE TABLE aliases("
    "  model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,"
    "  alias TEXT NOT NULL,"
    "  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,"
    "  PRIMARY KEY(model_id, alias)) WITHOUT ROWID;"
    "CREATE INDEX aliases_version ON aliases(version_id);"
    "CREATE TABLE tensors("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,"
    "  name TEXT NOT NULL,"
    "  dtype INTEGER NOT NULL,"
    "  ndim INTEGER NOT NULL CHECK(ndim BETWEEN 0 AND 8),"
    "  shape BLOB NOT NULL,"
    "  rows INTEGER NOT NULL,"
    "  row_bytes INTEGER NOT NULL,"
    "  rows_per_partition INTEGER NOT NULL,"
    "  partitions INTEGER NOT NULL,"
    "  path TEXT NOT NULL,"
    "  file_size INTEGER NOT NULL,"
    "  header_checksum INTEGER NOT NULL,"
    "  part_checksums BLOB NOT NULL,"
    "  UNIQUE(version_id, name));"
    MODEL_POLICY_SQL
    TENSOR_POLICY_SQL
    NAMESPACES_SQL
    DYNAMIC_SQL
    REMOTE_SQL
    "PRAGMA user_version = " CAT_STR(CAT_SCHEMA_VERSION) ";";

/* upgrades[i] takes schema i + 1 to i + 2. create_schema runs every one a
 * catalog needs in its one transaction: a failed upgrade leaves the
 * catalog at the version it had. */
static const struct {
    const char *sql, *what;
} upgrades[] = {
    {MODEL_POLICY_SQL "PRAGMA user_version = 2;", "upgrade schema 1 to 2"},
    {TENSOR_POLICY_SQL "PRAGMA user_version = 3;", "upgrade schema 2 to 3"},
    {NAMESPACES_SQL "PRAGMA user_version = 4;", "upgrade schema 3 to 4"},
    {DYNAMIC_SQL "PRAGMA user_version = 5;", "upgrade schema 4 to 5"},
    {REMOTE_SQL "PRAGMA user_version = 6;", "upgrade schema 5 to 6"},
};
static_assert(sizeof(upgrades) / sizeof(upgrades[0]) == CAT_SCHEMA_VERSION - 1,
               "one upgrade per schema version after 1");

/* Run a pragma that returns one row and read its first column as text
 * (copied into buf) or integer. */
static int pragma_row(ec_catalog *cat, const char *sql, char *buf, size_t cap, int64_t *ival)
{
    sqlite3_stmt *st = NULL;
    int err = cat_prep(cat, sql, &st);

    if (err < 0)
        goto fail;
    err = cat_step(cat, st, sql);
    if (err < 0)
        goto fail;
    if (err == 0) {
        err = ec_seterr(EC_EIO, "catalog: '%s' returned nothing; this SQLite lacks a needed "
                                "feature", sql);
        goto fail;
    }
    if (buf) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(buf, cap, "%s", t ? (const char *)t : "");
    }
    if (ival)
        *ival = sqlite3_column_int64(st, 0);
    err = 0;
fail:
    sqlite3_finalize(st);
    return err;
}

static int create_schema(ec_catalog *cat)
{
    int64_t uv = 0;
    int err = cat_tx_begin_write(cat);

    if (err < 0)
        return err;
    err = pragma_row(cat, "PRAGMA user_version", NULL, 0, &uv);
    if (err < 0)
        goto fail;
    if (uv > CAT_SCHEMA_VERSION) {
        err = ec_seterr(EC_EVERSION,
                        "catalog schema version %" PRId64 " is newer than this embcached "
                        "understands (%d); run a newer embcached",
                        uv, CAT_SCHEMA_VERSION);
        goto fail;
    }
    if (uv < 0) {
        err = ec_seterr(EC_ECORRUPT, "catalog schema version %" PRId64 " is invalid", uv);
        goto fail;
    }
    if (uv == 0) {
        err = cat_exec(cat, schema_sql, "create schema");
        if (err < 0)
            goto fail;
        cat->created = true;
    }
    for (int64_t v = uv; v >= 1 && v < CAT_SCHEMA_VERSION; v++) {
        err = cat_exec(cat, upgrades[v - 1].sql, upgrades[v - 1].what);
        if (err < 0) {
            ec_adderr(err, "catalog left at schema version %" PRId64 "; fix what follows and "
                           "start embcached again to upgrade it", uv);
            goto fail;
        }
    }
    return cat_tx_commit(cat);
fail:
    cat_tx_rollback(cat);
    return err;
}

int ec_catalog_open(const char *path, ec_catalog **out)
{
    ec_catalog *cat = NULL;
    char mode[16];
    int64_t fk = 0;
    int rc, err;

    if (!path || !*path || !out)
        return ec_seterr(EC_EINVAL, "ec_catalog_open: no catalog path given");
    cat = calloc(1, sizeof(*cat));
    if (!cat)
        return ec_seterr(EC_ENOMEM, "catalog: out of memory");
    rc = sqlite3_open_v2(path, &cat->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX |
                             SQLITE_OPEN_NOFOLLOW,
                         NULL);
    if (rc != SQLITE_OK) {
        err = cat_sql_err(cat->db, rc, "open");
        goto fail;
    }
    sqlite3_extended_result_codes(cat->db, 1);
    rc = sqlite3_busy_timeout(cat->db, CAT_BUSY_TIMEOUT_MS);
    if (rc != SQLITE_OK) {
        err = cat_sql_err(cat->db, rc, "set busy timeout");
        goto fail;
    }
    rc = sqlite3_db_config(cat->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    if (rc != SQLITE_OK) {
        err = cat_sql_err(cat->db, rc, "enable defensive mode");
        goto fail;
    }
    /* The first statement that reads the file: a non-database fails here.
     * Switching a fresh file to WAL while another connection opens it can
     * fail with SQLITE_BUSY without consulting the busy handler, so retry
     * for as long as the busy timeout would have waited. */
    for (int waited = 0;; waited += 10) {
        err = pragma_row(cat, "PRAGMA journal_mode = WAL", mode, sizeof(mode), NULL);
        if (err != EC_EBUSY || waited >= CAT_BUSY_TIMEOUT_MS)
            break;
        sqlite3_sleep(10);
    }
    if (err < 0)
        goto fail;
    if (strcmp(mode, "wal") != 0) {
        err = ec_seterr(EC_EIO, "catalog: cannot switch to WAL mode (journal mode is '%s'); "
                                "put the data dir on a local filesystem", mode);
        goto fail;
    }
    err = cat_exec(cat, "PRAGMA synchronous = FULL", "set synchronous");
    if (err < 0)
        goto fail;
    err = cat_exec(cat, "PRAGMA foreign_keys = ON", "enable foreign keys");
    if (err < 0)
        goto fail;
    err = pragma_row(cat, "PRAGMA foreign_keys", NULL, 0, &fk);
    if (err < 0)
        goto fail;
    if (fk != 1) {
        err = ec_seterr(EC_EIO, "catalog: this SQLite cannot enforce foreign keys");
        goto fail;
    }
    err = create_schema(cat);
    if (err < 0)
        goto fail;
    err = cat_validate(cat, path);
    if (err < 0)
        goto fail;
    *out = cat;
    return 0;
fail:
    if (err == EC_ECORRUPT && !strstr(ec_last_error(), "embcache recover")) {
        /* SQLite cannot read it at all (not a database, a damaged header):
         * say what to do, as cat_validate does for the rest. */
        char why[160];
        snprintf(why, sizeof(why), "%s", ec_last_error());
        ec_seterr(err, "catalog %s is damaged (%s); " CAT_RECOVER_HINT, path, why);
    } else {
        ec_adderr(err, "cannot open catalog %s", path);
    }
    sqlite3_close(cat->db);
    free(cat);
    return err;
}

bool ec_catalog_created(const ec_catalog *cat)
{
    return cat && cat->created;
}

void ec_catalog_close(ec_catalog *cat)
{
    if (!cat)
        return;
    sqlite3_close(cat->db); /* every statement is finalized by its function */
    free(cat);
}

void ec_cat_version_clear(ec_cat_version *v)
{
    if (!v)
        return;
    free(v->params_json);
    v->params_json = NULL;
    free(v->aliases);
    v->aliases = NULL;
}

void ec_cat_tensor_clear(ec_cat_tensor *t)
{
    if (!t)
        return;
    free(t->part_checksums);
    t->part_checksums = NULL;
}

/* ------------------------------------------------------------------ */
/* Lookups shared by the functions below                               */

/* The model's row id; EC_ENOENT "unknown model" when absent. */
int cat_model_id_of(ec_catalog *cat, const char *model, int64_t *id_out)
{
    sqlite3_stmt *st = NULL;
    int err = cat_prep(cat, "SELECT id FROM models WHERE name = ?1", &st);

    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "t", model);
    if (err < 0)
        goto fail;
    err = cat_step(cat, st, "look up model");
    if (err < 0)
        goto fail;
    if (err == 0) {
        err = ec_seterr(EC_ENOENT, "unknown model '%s'; 'embcache ls' lists models", model);
        goto fail;
    }
    *id_out = sqlite3_column_int64(st, 0);
    err = 0;
fail:
    sqlite3_finalize(st);
    return err;
}

/* "a, b, c" (or "none") from a one-column query bound to one integer, for
 * messages (an integer column reads as its decimal text); best effort. */
static void names_list(ec_catalog *cat, const char *sql, int64_t key, char *buf, size_t cap)
{
    sqlite3_stmt *st = NULL;
    size_t len = 0;

    buf[0] = '\0';
    if (sqlite3_prepare_v2(cat->db, sql, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_bind_int64(st, 1, key) == SQLITE_OK) {
        while (sqlite3_step(st) == SQLITE_ROW) {
            const unsigned char *t = sqlite3_column_text(st, 0);
            if (t && !cat_list_append(buf, cap, &len, (const char *)t))
                break;
        }
    }
    sqlite3_finalize(st);
    if (len == 0)
        snprintf(buf, cap, "none");
}

/* The version row id of (model_id, version); EC_ENOENT naming the versions
 * that do exist. */
static int version_id_of(ec_catalog *cat, const char *model, int64_t model_id, int64_t version,
                         int64_t *vid_out)
{
    sqlite3_stmt *st = NULL;
    char list[CAT_LIST_MAX];
    int err = cat_prep(cat, "SELECT id FROM versions WHERE model_id = ?1 AND version = ?2", &st);

    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "ii", model_id, version);
    if (err < 0)
        goto fail;
    err = cat_step(cat, st, "look up version");
    if (err < 0)
        goto fail;
    if (err == 0) {
        names_list(cat, "SELECT version FROM versions WHERE model_id = ?1 ORDER BY version",
                   model_id, list, sizeof(list));
        err = ec_seterr(EC_ENOENT, "model '%s' has no version %" PRId64 " (versions: %s)", model,
                        version, list);
        goto fail;
    }
    *vid_out = sqlite3_column_int64(st, 0);
    err = 0;
fail:
    sqlite3_finalize(st);
    return err;
}

/*
 * Parse "3" or an alias and find the version: the model must exist, a
 * number must be all digits (no sign) and fit int64, anything else must be
 * a valid alias that exists.
 */
static int resolve_version(ec_catalog *cat, const char *model, const char *voa,
                           int64_t *vid_out, int64_t *version_out)
{
    sqlite3_stmt *st = NULL;
    char list[CAT_LIST_MAX];
    char pbuf[72];
    int64_t model_id = 0, vid = 0, version = 0;
    int err = ec_catalog_check_name("model", model);

    if (err < 0)
        return err;
    if (!voa || !*voa)
        return ec_seterr(EC_EINVAL, "no version or alias given for model '%s'", model);
    if ((voa[0] == '+' || voa[0] == '-') && cat_all_digits(voa + 1))
        return ec_seterr(EC_EINVAL, "version '%s' of model '%s' is not valid; versions are "
                                    "numbers >= 1 written without a sign",
                         ec_printable(voa, strlen(voa), pbuf, 68), model);
    if (!cat_all_digits(voa)) {
        err = ec_catalog_check_name("alias", voa);
        if (err < 0)
            return err;
    }
    err = cat_model_id_of(cat, model, &model_id);
    if (err < 0)
        return err;
    if (cat_all_digits(voa)) {
        uint64_t v = 0;
        for (const char *p = voa; *p; p++) {
            if (v > (uint64_t)(INT64_MAX - (*p - '0')) / 10)
                return ec_seterr(EC_EINVAL, "version '%s' of model '%s' is out of range",
                                 ec_printable(voa, strlen(voa), pbuf, 68), model);
            v = v * 10 + (uint64_t)(*p - '0');
        }
        version = (int64_t)v;
        err = version_id_of(cat, model, model_id, version, &vid);
        if (err < 0)
            return err;
        *vid_out = vid;
        *version_out = version;
        return 0;
    }
    err = cat_prep(cat,
                   "SELECT v.id, v.version FROM aliases a JOIN versions v ON v.id = a.version_id "
                   "WHERE a.model_id = ?1 AND a.alias = ?2",
                   &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "it", model_id, voa);
    if (err < 0)
        goto fail;
    err = cat_step(cat, st, "look up alias");
    if (err < 0)
        goto fail;
    if (err == 0) {
        names_list(cat, "SELECT alias FROM aliases WHERE model_id = ?1 ORDER BY alias", model_id,
                   list, sizeof(list));
        err = ec_seterr(EC_ENOENT,
                        "model '%s' has no alias '%s' (aliases: %s); use a version number "
                        "or set the alias first",
                        model, voa, list);
        goto fail;
    }
    vid = sqlite3_column_int64(st, 0);
    version = sqlite3_column_int64(st, 1);
    *vid_out = vid;
    *version_out = version;
    err = 0;
fail:
    sqlite3_finalize(st);
    return err;
}

/* ------------------------------------------------------------------ */
/* Tensors: validation, encoding, reading rows                         */

/* Check a caller's tensor description; 0 or EC_EINVAL / EC_EDTYPE. */
static int check_tensor(const ec_cat_tensor *t, size_t i)
{
    uint64_t inner = 1, rows, size, parts, total;
    int err = ec_catalog_check_name("tensor", t->name);

    if (err < 0)
        return ec_adderr(err, "tensor %zu", i);
    if (!ec_dtype_valid((uint32_t)t->dtype))
        return ec_seterr(EC_EDTYPE, "tensor '%s': dtype %u is not supported", t->name,
                         (unsigned)t->dtype);
    if (t->ndim > EC_MAX_DIMS)
        return ec_seterr(EC_EINVAL, "tensor '%s': %u dimensions; at most %d are supported",
                         t->name, t->ndim, EC_MAX_DIMS);
    for (uint32_t d = 0; d < t->ndim; d++)
        if (t->shape[d] > (uint64_t)INT64_MAX)
            return ec_seterr(EC_EINVAL, "tensor '%s': dimension %u is too large", t->name, d);
    rows = t->ndim == 0 ? 1 : t->shape[0];
    if (t->rows != rows)
        return ec_seterr(EC_EINVAL, "tensor '%s': rows is %" PRIu64 ", shape says %" PRIu64,
                         t->name, t->rows, rows);
    size = ec_dtype_size(t->dtype);
    for (uint32_t d = 1; d < t->ndim; d++)
        if (__builtin_mul_overflow(inner, t->shape[d], &inner))
            return ec_seterr(EC_EINVAL, "tensor '%s': shape is too large", t->name);
    if (__builtin_mul_overflow(inner, size, &inner) ||
        __builtin_mul_overflow(inner, rows, &total) || total > (uint64_t)INT64_MAX)
        return ec_seterr(EC_EINVAL, "tensor '%s': shape is too large", t->name);
    if (t->row_bytes != inner)
        return ec_seterr(EC_EINVAL,
                         "tensor '%s': row_bytes is %" PRIu64 ", dtype and shape say %" PRIu64,
                         t->name, t->row_bytes, inner);
    if (t->rows_per_partition == 0)
        return ec_seterr(EC_EINVAL, "tensor '%s': rows_per_partition is 0", t->name);
    parts = rows / t->rows_per_partition + (rows % t->rows_per_partition != 0);
    if (t->partitions != parts)
        return ec_seterr(EC_EINVAL,
                         "tensor '%s': %" PRIu64 " partitions, but %" PRIu64 " rows of %" PRIu64
                         " per partition make %" PRIu64,
                         t->name, t->partitions, rows, t->rows_per_partition, parts);
    if (parts > CAT_PARTITIONS_MAX)
        return ec_seterr(EC_ETOOBIG,
                         "tensor '%s': %" PRIu64 " partitions; at most %" PRIu64 " are "
                         "supported; use larger partitions",
                         t->name, parts, (uint64_t)CAT_PARTITIONS_MAX);
    if (!t->part_checksums && parts > 0)
        return ec_seterr(EC_EINVAL, "tensor '%s': no partition checksums", t->name);
    if (!cat_path_ok(t->path, EC_CAT_PATH_MAX - 1))
        return ec_seterr(EC_EINVAL,
                         "tensor '%s': partition file path is empty, too long, absolute or "
                         "has '.'/'..' components; give a path relative to the data dir",
                         t->name);
    return 0;
}

#define TENSOR_COLS                                                                          \
    "SELECT t.id, t.version_id, m.name, v.version, t.name, t.dtype, t.ndim, t.shape, t.rows, " \
    "t.row_bytes, t.rows_per_partition, t.partitions, t.path, t.file_size, "                 \
    "t.header_checksum, t.part_checksums, t.remote_index, t.remote_chunk "                   \
    "FROM tensors t JOIN versions v ON v.id = t.version_id JOIN models m ON m.id = v.model_id "


/* Read and validate one TENSOR_COLS row into *out (written on success). */
static int row_to_tensor(ec_catalog *cat, sqlite3_stmt *st, ec_cat_tensor *out)
{
    ec_cat_tensor t;
    const unsigned char *blob;
    uint64_t rows, inner = 1, parts;
    int n;

    (void)cat;
    memset(&t, 0, sizeof(t));
    t.id = sqlite3_column_int64(st, 0);
    t.version_id = sqlite3_column_int64(st, 1);
    if (!cat_col_text(st, 2, t.model, sizeof(t.model)))
        goto corrupt;
    t.version = sqlite3_column_int64(st, 3);
    if (!cat_col_text(st, 4, t.name, sizeof(t.name)))
        goto corrupt;
    int64_t dtype = sqlite3_column_int64(st, 5);
    int64_t ndim = sqlite3_column_int64(st, 6);
    if (!ec_dtype_valid((uint32_t)dtype) || dtype != (uint32_t)dtype || ndim < 0 ||
        ndim > EC_MAX_DIMS)
        goto corrupt;
    t.dtype = (ec_dtype)dtype;
    t.ndim = (uint32_t)ndim;
    blob = sqlite3_column_blob(st, 7);
    n = sqlite3_column_bytes(st, 7);
    if (n != (int)(8 * t.ndim) || (n > 0 && !blob))
        goto corrupt;
    for (uint32_t d = 0; d < t.ndim; d++)
        t.shape[d] = get_le64(blob + 8 * d);
    t.rows = (uint64_t)sqlite3_column_int64(st, 8);
    t.row_bytes = (uint64_t)sqlite3_column_int64(st, 9);
    t.rows_per_partition = (uint64_t)sqlite3_column_int64(st, 10);
    t.partitions = (uint64_t)sqlite3_column_int64(st, 11);
    if (!cat_col_text(st, 12, t.path, sizeof(t.path)) || !cat_path_ok(t.path, EC_CAT_PATH_MAX - 1))
        goto corrupt;
    t.file_size = (uint64_t)sqlite3_column_int64(st, 13);
    t.header_checksum = (uint64_t)sqlite3_column_int64(st, 14);
    /* The arithmetic must hold as it did when the row was written. */
    rows = t.ndim == 0 ? 1 : t.shape[0];
    for (uint32_t d = 1; d < t.ndim; d++)
        if (__builtin_mul_overflow(inner, t.shape[d], &inner))
            goto corrupt;
    if (__builtin_mul_overflow(inner, ec_dtype_size(t.dtype), &inner))
        goto corrupt;
    if (t.rows != rows || t.row_bytes != inner || t.rows_per_partition == 0)
        goto corrupt;
    parts = rows / t.rows_per_partition + (rows % t.rows_per_partition != 0);
    if (t.partitions != parts)
        goto corrupt;
    blob = sqlite3_column_blob(st, 15);
    n = sqlite3_column_bytes(st, 15);
    if (n < 0 || (uint64_t)n != 8 * parts || (n > 0 && !blob))
        goto corrupt;
    /* Never NULL on success, even for zero partitions. */
    t.part_checksums = malloc(parts ? (size_t)parts * 8 : 8);
    if (!t.part_checksums)
        return ec_seterr(EC_ENOMEM, "catalog: out of memory reading tensor '%s'", t.name);
    for (uint64_t p = 0; p < parts; p++)
        t.part_checksums[p] = get_le64(blob + 8 * p);
    {
        int64_t ri = sqlite3_column_int64(st, 16), rch = sqlite3_column_int64(st, 17);
        /* -1: local; else an index of a manifest (< 65536 tensors) with
         * its chunk size (publish.h: 64 KiB .. 64 MiB). */
        if (ri < -1 || ri >= 65536 || (ri >= 0 && (rch < (64 << 10) || rch > (64 << 20)))) {
            free(t.part_checksums);
            goto corrupt;
        }
        t.remote = ri >= 0;
        t.remote_index = t.remote ? (uint32_t)ri : 0;
        t.remote_chunk = t.remote ? (uint32_t)rch : 0;
    }
    *out = t;
    return 0;
corrupt:
    return ec_seterr(EC_ECORRUPT,
                     "catalog: tensor row %lld is inconsistent (dtype, shape, partitioning, "
                     "path or checksums); restore the catalog or re-import the model",
                     (long long)sqlite3_column_int64(st, 0));
}

/* Insert one validated tensor into version vid; the new id in *id_out. */
static int insert_tensor(ec_catalog *cat, sqlite3_stmt *st, const char *model, int64_t version,
                         int64_t vid, const ec_cat_tensor *t, int64_t *id_out)
{
    unsigned char shape[8 * EC_MAX_DIMS];
    unsigned char *sums = NULL;
    size_t nsums = (size_t)t->partitions * 8;
    int64_t id;
    int rc, err;

    for (uint32_t d = 0; d < t->ndim; d++)
        put_le64(shape + 8 * d, t->shape[d]);
    if (nsums && !(sums = malloc(nsums))) {
        err = ec_seterr(EC_ENOMEM, "catalog: out of memory storing tensor '%s'", t->name);
        goto fail;
    }
    for (uint64_t p = 0; p < t->partitions; p++)
        put_le64(sums + 8 * p, t->part_checksums[p]);
    if (t->remote && (t->remote_index >= 65536 || t->remote_chunk < (64u << 10) ||
                      t->remote_chunk > (64u << 20))) {
        err = ec_seterr(EC_EINVAL, "tensor '%s': remote index %u or chunk size %u out of range",
                        t->name, t->remote_index, t->remote_chunk);
        goto fail;
    }
    err = cat_bindf(cat, st, "itiibuuuutuubii", vid, t->name, (int64_t)t->dtype,
                    (int64_t)t->ndim, (const void *)shape, (size_t)(8 * t->ndim), t->rows,
                    t->row_bytes, t->rows_per_partition, t->partitions, t->path, t->file_size,
                    t->header_checksum, (const void *)sums, nsums,
                    t->remote ? (int64_t)t->remote_index : (int64_t)-1,
                    t->remote ? (int64_t)t->remote_chunk : (int64_t)0);
    if (err < 0)
        goto fail;
    rc = sqlite3_step(st);
    if (rc == SQLITE_CONSTRAINT_UNIQUE) {
        err = ec_seterr(EC_EEXIST,
                        "model '%s' version %" PRId64 ": tensor name '%s' appears twice; "
                        "tensor names must be unique within a version",
                        model, version, t->name);
        goto fail;
    }
    if (rc != SQLITE_DONE) {
        err = cat_sql_err(cat->db, rc, "insert tensor");
        goto fail;
    }
    id = sqlite3_last_insert_rowid(cat->db);
    if (id <= 0 || id >= CAT_TENSOR_ID_LIMIT) {
        err = ec_seterr(EC_ENOSPC,
                        "catalog: tensor id %" PRId64 " is outside the 32-bit id space of the "
                        "index; re-create the catalog (re-import the models) to start ids over",
                        id);
        goto fail;
    }
    *id_out = id;
    err = 0;
fail:
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    free(sums);
    return err;
}

/* ------------------------------------------------------------------ */
/* Mutations                                                           */

int ec_catalog_add_version(ec_catalog *cat, const char *model, int64_t version,
                           int64_t round, const char *params_json,
                           ec_cat_tensor *tensors, size_t n, int64_t *version_id_out)
{
    return ec_catalog_add_version_at(cat, model, version, round, params_json,
                                     (int64_t)time(NULL), tensors, n, version_id_out);
}

int ec_catalog_add_version_at(ec_catalog *cat, const char *model, int64_t version,
                              int64_t round, const char *params_json, int64_t created_unix,
                              ec_cat_tensor *tensors, size_t n, int64_t *version_id_out)
{
    sqlite3_stmt *st = NULL;
    char *params = NULL;
    int64_t *ids = NULL;
    int64_t model_id, vid = 0;
    int err, rc;

    if (!cat || (n && !tensors))
        return ec_seterr(EC_EINVAL, "ec_catalog_add_version: NULL argument");
    err = ec_catalog_check_name("model", model);
    if (err < 0)
        return err;
    if (version < 1)
        return ec_seterr(EC_EINVAL, "model '%s': version %" PRId64 " is not valid; versions "
                                    "are numbers >= 1", model, version);
    if (round < -1)
        return ec_seterr(EC_EINVAL, "model '%s' version %" PRId64 ": round %" PRId64 " is not "
                                    "valid; give a round >= 0 or -1 for none",
                         model, version, round);
    if (created_unix < 0)
        return ec_seterr(EC_EINVAL, "model '%s' version %" PRId64 ": created time %" PRId64
                         " is before 1970", model, version, created_unix);
    for (size_t i = 0; i < n; i++) {
        err = check_tensor(&tensors[i], i);
        if (err < 0)
            return ec_adderr(err, "model '%s' version %" PRId64, model, version);
    }
    if (n && !(ids = calloc(n, sizeof(*ids))))
        return ec_seterr(EC_ENOMEM, "catalog: out of memory");
    if (params_json)
        err = cat_params_normalize(cat, params_json, &params);
    else
        err = (params = strdup("{}")) ? 0 : ec_seterr(EC_ENOMEM, "catalog: out of memory");
    if (err < 0) {
        free(ids);
        return params_json ? ec_adderr(err, "model '%s' version %" PRId64, model, version) : err;
    }

    err = cat_tx_begin_write(cat);
    if (err < 0)
        goto out;
    err = cat_prep(cat, "INSERT INTO models(name) VALUES(?1) ON CONFLICT(name) DO NOTHING", &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "t", model);
    if (err < 0)
        goto fail;
    err = cat_step(cat, st, "insert model");
    if (err < 0)
        goto fail;
    sqlite3_finalize(st);
    st = NULL;
    err = cat_model_id_of(cat, model, &model_id);
    if (err < 0)
        goto fail;

    err = cat_prep(cat,
                   "INSERT INTO versions(model_id, version, round, params_json, created_unix) "
                   "VALUES(?1, ?2, ?3, ?4, ?5)",
                   &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "iiiti", model_id, version, round, params, created_unix);
    if (err < 0)
        goto fail;
    rc = sqlite3_step(st);
    if (rc == SQLITE_CONSTRAINT_UNIQUE) {
        err = ec_seterr(EC_EEXIST, "model '%s' version %" PRId64 " already exists; pick another "
                                   "--version", model, version);
        goto fail;
    }
    if (rc != SQLITE_DONE) {
        err = cat_sql_err(cat->db, rc, "insert version");
        goto fail;
    }
    vid = sqlite3_last_insert_rowid(cat->db);
    sqlite3_finalize(st);
    st = NULL;

    err = cat_prep(cat,
                   "INSERT INTO tensors(version_id, name, dtype, ndim, shape, rows, row_bytes, "
                   "rows_per_partition, partitions, path, file_size, header_checksum, "
                   "part_checksums, remote_index, remote_chunk) VALUES(?1, ?2, ?3, ?4, ?5, ?6, "
                   "?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                   &st);
    if (err < 0)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        err = insert_tensor(cat, st, model, version, vid, &tensors[i], &ids[i]);
        if (err < 0)
            goto fail;
    }
    sqlite3_finalize(st);
    st = NULL;
    err = cat_tx_commit(cat);
    if (err < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        tensors[i].id = ids[i];
        tensors[i].version_id = vid;
        snprintf(tensors[i].model, sizeof(tensors[i].model), "%s", model);
        tensors[i].version = version;
    }
    if (version_id_out)
        *version_id_out = vid;
    goto out;
fail:
    sqlite3_finalize(st);
    cat_tx_rollback(cat);
out:
    free(params);
    free(ids);
    return err;
}

int ec_catalog_set_alias(ec_catalog *cat, const char *model, const char *alias,
                         int64_t version)
{
    sqlite3_stmt *st = NULL;
    int64_t model_id, vid;
    int err;

    if (!cat)
        return ec_seterr(EC_EINVAL, "ec_catalog_set_alias: NULL catalog");
    err = ec_catalog_check_name("model", model);
    if (err < 0)
        return err;
    err = ec_catalog_check_name("alias", alias);
    if (err < 0)
        return err;
    err = cat_tx_begin_write(cat);
    if (err < 0)
        return err;
    err = cat_model_id_of(cat, model, &model_id);
    if (err < 0)
        goto out;
    err = version_id_of(cat, model, model_id, version, &vid);
    if (err < 0)
        goto out;
    err = cat_prep(cat,
                   "INSERT INTO aliases(model_id, alias, version_id) VALUES(?1, ?2, ?3) "
                   "ON CONFLICT(model_id, alias) DO UPDATE SET version_id = excluded.version_id",
                   &st);
    if (err < 0)
        goto out;
    err = cat_bindf(cat, st, "iti", model_id, alias, vid);
    if (err < 0)
        goto out;
    err = cat_step(cat, st, "set alias");
out:
    return cat_tx_finish(cat, st, err);
}

int ec_catalog_drop_version(ec_catalog *cat, const char *model, int64_t version,
                            int (*on_path)(const char *path, void *arg), void *arg)
{
    sqlite3_stmt *st = NULL;
    int64_t model_id, vid;
    int err;

    if (!cat)
        return ec_seterr(EC_EINVAL, "ec_catalog_drop_version: NULL catalog");
    err = ec_catalog_check_name("model", model);
    if (err < 0)
        return err;
    err = cat_tx_begin_write(cat);
    if (err < 0)
        return err;
    err = cat_model_id_of(cat, model, &model_id);
    if (err < 0)
        goto fail;
    err = version_id_of(cat, model, model_id, version, &vid);
    if (err < 0)
        goto fail;

    /* Collect the paths before the rows go; the caller unlinks after commit. */
    err = cat_prep(cat, "SELECT path FROM tensors WHERE version_id = ?1 ORDER BY name", &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "i", vid);
    if (err < 0)
        goto fail;
    while ((err = cat_step(cat, st, "list tensor paths")) == 1) {
        char path[EC_CAT_PATH_MAX];
        if (!cat_col_text(st, 0, path, sizeof(path)) || !cat_path_ok(path, EC_CAT_PATH_MAX - 1)) {
            err = ec_seterr(EC_ECORRUPT, "catalog: model '%s' version %" PRId64 " has an invalid "
                                         "partition file path; restore the catalog",
                            model, version);
            goto fail;
        }
        if (on_path && (err = on_path(path, arg)) != 0)
            goto fail;
    }
    if (err < 0)
        goto fail;
    sqlite3_finalize(st);
    st = NULL;

    /* Tensors and aliases of the version go with it (ON DELETE CASCADE). */
    err = cat_prep(cat, "DELETE FROM versions WHERE id = ?1", &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "i", vid);
    if (err < 0)
        goto fail;
    err = cat_step(cat, st, "delete version");
    if (err < 0)
        goto fail;
    sqlite3_finalize(st);
    st = NULL;

    /* Invariant 4: a model without versions goes too. */
    err = cat_prep(cat,
                   "DELETE FROM models WHERE id = ?1 AND "
                   "NOT EXISTS (SELECT 1 FROM versions WHERE model_id = ?1)",
                   &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "i", model_id);
    if (err < 0)
        goto fail;
    err = cat_step(cat, st, "delete empty model");
    if (err < 0)
        goto fail;
    sqlite3_finalize(st);
    return cat_tx_commit(cat);
fail:
    sqlite3_finalize(st);
    cat_tx_rollback(cat);
    return err;
}

/* ------------------------------------------------------------------ */
/* Reads                                                               */

int ec_catalog_resolve(ec_catalog *cat, const char *model, const char *version_or_alias,
                       const char *tensor, ec_cat_tensor *out)
{
    sqlite3_stmt *st = NULL;
    char list[CAT_LIST_MAX];
    int64_t vid, version;
    bool owned = false;
    int err;

    if (!cat || !out)
        return ec_seterr(EC_EINVAL, "ec_catalog_resolve: NULL argument");
    err = ec_catalog_check_name("tensor", tensor);
    if (err < 0)
        return err;
    err = cat_tx_begin_read(cat, &owned);
    if (err < 0)
        return err;
    err = resolve_version(cat, model, version_or_alias, &vid, &version);
    if (err < 0)
        goto fail;
    err = cat_prep(cat, TENSOR_COLS "WHERE t.version_id = ?1 AND t.name = ?2", &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "it", vid, tensor);
    if (err < 0)
        goto fail;
    err = cat_step(cat, st, "look up tensor");
    if (err < 0)
        goto fail;
    if (err == 0) {
        names_list(cat, "SELECT name FROM tensors WHERE version_id = ?1 ORDER BY name", vid,
                   list, sizeof(list));
        err = ec_seterr(EC_ENOENT, "model '%s' version %" PRId64 " has no tensor '%s' "
                                   "(tensors: %s)",
                        model, version, tensor, list);
        goto fail;
    }
    err = row_to_tensor(cat, st, out);
fail:
    sqlite3_finalize(st);
    cat_tx_end_read(cat, owned);
    return err;
}

int ec_catalog_get_tensor(ec_catalog *cat, int64_t tensor_id, ec_cat_tensor *out)
{
    sqlite3_stmt *st = NULL;
    int err;

    if (!cat || !out)
        return ec_seterr(EC_EINVAL, "ec_catalog_get_tensor: NULL argument");
    err = cat_prep(cat, TENSOR_COLS "WHERE t.id = ?1", &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "i", tensor_id);
    if (err < 0)
        goto fail;
    err = cat_step(cat, st, "look up tensor");
    if (err < 0)
        goto fail;
    if (err == 0) {
        err = ec_seterr(EC_ENOENT, "no tensor with id %" PRId64 " (its version was dropped?); "
                                   "resolve it again by name",
                        tensor_id);
        goto fail;
    }
    err = row_to_tensor(cat, st, out);
fail:
    sqlite3_finalize(st);
    return err;
}

int ec_catalog_version_of(ec_catalog *cat, const char *model, const char *version_or_alias,
                          int64_t *version_out)
{
    int64_t vid, version;
    bool owned = false;
    int err;

    if (!cat || !version_out)
        return ec_seterr(EC_EINVAL, "ec_catalog_version_of: NULL argument");
    err = cat_tx_begin_read(cat, &owned);
    if (err < 0)
        return err;
    err = resolve_version(cat, model, version_or_alias, &vid, &version);
    cat_tx_end_read(cat, owned);
    if (err < 0)
        return err;
    *version_out = version;
    return 0;
}

int ec_catalog_find(ec_catalog *cat, const char *model, int64_t round,
                    const char *params_json, int64_t *version_out)
{
    sqlite3_stmt *st = NULL;
    cat_sbuf want = {0}, have = {0};
    char *norm = NULL;
    int64_t model_id, found = 0;
    bool owned = false;
    int err;

    if (!cat || !version_out)
        return ec_seterr(EC_EINVAL, "ec_catalog_find: NULL argument");
    err = ec_catalog_check_name("model", model);
    if (err < 0)
        return err;
    if (params_json) {
        err = cat_params_normalize(cat, params_json, &norm);
        if (err < 0)
            return err;
        err = cat_json_canon(cat, norm, true, 0, &want);
        if (err < 0)
            goto out;
    }
    err = cat_tx_begin_read(cat, &owned);
    if (err < 0)
        goto out;
    err = cat_model_id_of(cat, model, &model_id);
    if (err < 0)
        goto out;
    err = cat_prep(cat,
                   "SELECT version, params_json FROM versions WHERE model_id = ?1 AND round = ?2 "
                   "ORDER BY version DESC",
                   &st);
    if (err < 0)
        goto out;
    err = cat_bindf(cat, st, "ii", model_id, round);
    if (err < 0)
        goto out;
    while ((err = cat_step(cat, st, "find version")) == 1) {
        const char *p = (const char *)sqlite3_column_text(st, 1);
        if (!params_json) {
            found = sqlite3_column_int64(st, 0);
            break;
        }
        if (!p) {
            err = ec_seterr(EC_ECORRUPT, "catalog: model '%s' has a version without params",
                            model);
            goto out;
        }
        have.len = 0;
        err = cat_json_canon(cat, p, true, 0, &have);
        if (err < 0)
            goto out;
        if (have.len == want.len && !memcmp(have.p, want.p, want.len)) {
            found = sqlite3_column_int64(st, 0);
            break;
        }
    }
    if (err < 0)
        goto out;
    if (!found) {
        err = ec_seterr(EC_ENOENT, "model '%s' has no version of round %" PRId64 "%s%s",
                        model, round, params_json ? " with params " : "", norm ? norm : "");
        goto out;
    }
    *version_out = found;
    err = 0;
out:
    sqlite3_finalize(st);
    cat_tx_end_read(cat, owned);
    free(want.p);
    free(have.p);
    free(norm);
    return err;
}

/* "a,b,c" for the version's aliases, sorted by byte order; malloc'd. */
static int aliases_of(ec_catalog *cat, sqlite3_stmt *st, int64_t vid, char **out)
{
    cat_sbuf b = {0};
    int err = cat_bindf(cat, st, "i", vid);

    if (err == 0)
        err = cat_sb_put(&b, "", 0);
    while (err == 0 && (err = cat_step(cat, st, "list aliases")) == 1) {
        const char *a = (const char *)sqlite3_column_text(st, 0);
        err = 0;
        if (!a) {
            err = ec_seterr(EC_ENOMEM, "catalog: out of memory listing aliases");
            break;
        }
        if (b.len)
            err = cat_sb_put(&b, ",", 1);
        if (err == 0)
            err = cat_sb_put(&b, a, strlen(a));
    }
    sqlite3_reset(st);
    if (err < 0) {
        free(b.p);
        return err;
    }
    *out = b.p;
    return 0;
}

int ec_catalog_list_versions(ec_catalog *cat, const char *model,
                             int (*cb)(const ec_cat_version *v, void *arg), void *arg)
{
    sqlite3_stmt *st = NULL, *ast = NULL;
    bool owned = false;
    int err;

    if (!cat || !cb)
        return ec_seterr(EC_EINVAL, "ec_catalog_list_versions: NULL argument");
    if (model) {
        err = ec_catalog_check_name("model", model);
        if (err < 0)
            return err;
    }
    err = cat_tx_begin_read(cat, &owned);
    if (err < 0)
        return err;
    err = cat_prep(cat,
                   "SELECT v.id, m.name, v.version, v.round, v.params_json, v.created_unix "
                   "FROM versions v JOIN models m ON m.id = v.model_id "
                   "WHERE ?1 IS NULL OR m.name = ?1 ORDER BY m.name, v.version",
                   &st);
    if (err < 0)
        goto fail;
    err = cat_prep(cat, "SELECT alias FROM aliases WHERE version_id = ?1 ORDER BY alias", &ast);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "t", model);
    if (err < 0)
        goto fail;
    while ((err = cat_step(cat, st, "list versions")) == 1) {
        ec_cat_version v;
        const char *p;

        memset(&v, 0, sizeof(v));
        v.id = sqlite3_column_int64(st, 0);
        v.version = sqlite3_column_int64(st, 2);
        v.round = sqlite3_column_int64(st, 3);
        v.created_unix = sqlite3_column_int64(st, 5);
        p = (const char *)sqlite3_column_text(st, 4);
        if (!cat_col_text(st, 1, v.model, sizeof(v.model)) || !p) {
            err = ec_seterr(EC_ECORRUPT, "catalog: version row %lld is inconsistent; restore "
                                         "the catalog",
                            (long long)v.id);
            goto fail;
        }
        if (!(v.params_json = strdup(p))) {
            err = ec_seterr(EC_ENOMEM, "catalog: out of memory listing versions");
            goto fail;
        }
        err = aliases_of(cat, ast, v.id, &v.aliases);
        if (err == 0)
            err = cb(&v, arg);
        ec_cat_version_clear(&v);
        if (err != 0)
            goto fail;
    }
fail:
    sqlite3_finalize(ast);
    sqlite3_finalize(st);
    cat_tx_end_read(cat, owned);
    return err;
}

int ec_catalog_list_tensors(ec_catalog *cat, int64_t version_id,
                            int (*cb)(const ec_cat_tensor *t, void *arg), void *arg)
{
    sqlite3_stmt *st = NULL;
    bool owned = false;
    int err;

    if (!cat || !cb)
        return ec_seterr(EC_EINVAL, "ec_catalog_list_tensors: NULL argument");
    err = cat_tx_begin_read(cat, &owned);
    if (err < 0)
        return err;
    err = cat_prep(cat, "SELECT 1 FROM versions WHERE id = ?1", &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "i", version_id);
    if (err < 0)
        goto fail;
    err = cat_step(cat, st, "look up version");
    if (err < 0)
        goto fail;
    if (err == 0) {
        err = ec_seterr(EC_ENOENT, "no model version with catalog id %" PRId64
                                   " (dropped?); list the versions again",
                        version_id);
        goto fail;
    }
    sqlite3_finalize(st);
    st = NULL;
    err = cat_prep(cat, TENSOR_COLS "WHERE t.version_id = ?1 ORDER BY t.name", &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "i", version_id);
    if (err < 0)
        goto fail;
    while ((err = cat_step(cat, st, "list tensors")) == 1) {
        ec_cat_tensor t;
        err = row_to_tensor(cat, st, &t);
        if (err < 0)
            goto fail;
        err = cb(&t, arg);
        ec_cat_tensor_clear(&t);
        if (err != 0)
            goto fail;
    }
fail:
    sqlite3_finalize(st);
    cat_tx_end_read(cat, owned);
    return err;
}

int ec_catalog_update_file(ec_catalog *cat, int64_t tensor_id, uint64_t file_size,
                           uint64_t header_checksum, const uint64_t *part_checksums,
                           uint64_t partitions)
{
    sqlite3_stmt *st = NULL;
    unsigned char *sums = NULL;
    size_t nsums = (size_t)partitions * 8;
    int err;

    if (!cat || (partitions && !part_checksums))
        return ec_seterr(EC_EINVAL, "ec_catalog_update_file: NULL argument");
    if (nsums && !(sums = malloc(nsums)))
        return ec_seterr(EC_ENOMEM, "catalog: out of memory updating tensor %" PRId64,
                         tensor_id);
    for (uint64_t p = 0; p < partitions; p++)
        put_le64(sums + 8 * p, part_checksums[p]);
    err = cat_tx_begin_write(cat);
    if (err < 0)
        goto out;
    err = cat_prep(cat, "UPDATE tensors SET file_size = ?1, header_checksum = ?2, "
                        "part_checksums = ?3 WHERE id = ?4 AND partitions = ?5", &st);
    if (err < 0)
        goto fail;
    err = cat_bindf(cat, st, "uubiu", file_size, header_checksum, (const void *)sums, nsums,
                    tensor_id, partitions);
    if (err < 0)
        goto fail;
    err = cat_step(cat, st, "update tensor file");
    if (err < 0)
        goto fail;
    if (sqlite3_changes(cat->db) != 1) {
        err = ec_seterr(EC_ENOENT, "tensor %" PRId64 " with %" PRIu64 " partitions is not in "
                                   "the catalog", tensor_id, partitions);
        goto fail;
    }
    sqlite3_finalize(st);
    err = cat_tx_commit(cat);
    goto out;
fail:
    sqlite3_finalize(st);
    cat_tx_rollback(cat);
out:
    free(sums);
    return err;
}

int ec_catalog_foreach_path(ec_catalog *cat, int (*cb)(const char *path, void *arg),
                            void *arg)
{
    sqlite3_stmt *st = NULL;
    bool owned = false;
    int err;

    if (!cat || !cb)
        return ec_seterr(EC_EINVAL, "ec_catalog_foreach_path: NULL argument");
    err = cat_tx_begin_read(cat, &owned);
    if (err < 0)
        return err;
    err = cat_prep(cat, "SELECT DISTINCT path FROM tensors ORDER BY path", &st);
    if (err < 0)
        goto fail;
    while ((err = cat_step(cat, st, "list paths")) == 1) {
        char path[EC_CAT_PATH_MAX];
        if (!cat_col_text(st, 0, path, sizeof(path)) || !cat_path_ok(path, EC_CAT_PATH_MAX - 1)) {
            err = ec_seterr(EC_ECORRUPT, "catalog: a tensor has an invalid partition file "
                                         "path; restore the catalog");
            goto fail;
        }
        err = cb(path, arg);
        if (err != 0)
            goto fail;
    }
fail:
    sqlite3_finalize(st);
    cat_tx_end_read(cat, owned);
    return err;
}

int ec_catalog_counts(ec_catalog *cat, uint64_t *models, uint64_t *versions,
                      uint64_t *tensors)
{
    sqlite3_stmt *st = NULL;
    int err;

    if (!cat)
        return ec_seterr(EC_EINVAL, "ec_catalog_counts: NULL catalog");
    err = cat_prep(cat,
                   "SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM versions), "
                   "(SELECT count(*) FROM tensors)",
                   &st);
    if (err < 0)
        goto fail;
    err = cat_step(cat, st, "count");
    if (err < 0)
        goto fail;
    if (err == 0) {
        err = ec_seterr(EC_EINTERNAL, "catalog: count returned no row");
        goto fail;
    }
    if (models)
        *models = (uint64_t)sqlite3_column_int64(st, 0);
    if (versions)
        *versions = (uint64_t)sqlite3_column_int64(st, 1);
    if (tensors)
        *tensors = (uint64_t)sqlite3_column_int64(st, 2);
    err = 0;
fail:
    sqlite3_finalize(st);
    return err;
}
