/*
 * catalog.h - the model catalog, kept in SQLite (<data_dir>/catalog.db).
 *
 * Holds model versions (name, version, training round, params JSON), aliases
 * such as "current", tensors (dtype, shape, partitioning, partition file
 * and per-partition checksums), and the policies the engine applies to a
 * model: residency and per-tensor cache mode; and the cache manager's
 * namespaces of cached results (core/results.h). Owned by the daemon: the
 * server thread (the engine's handle) and the importer thread each open
 * their own ec_catalog (one sqlite3 connection each, WAL mode, busy
 * timeout), so each handle is used by one thread at a time. Every change is
 * one transaction: a failure leaves the catalog as it was. Implemented in
 * core/catalog*.c (map in catalog_impl.h).
 */
#ifndef EC_CORE_CATALOG_H
#define EC_CORE_CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "embcache.h"

#define EC_CATALOG_FILE "catalog.db"
#define EC_CAT_PATH_MAX 256

typedef struct ec_catalog ec_catalog;

typedef struct ec_cat_version {
    int64_t id;                  /* catalog row id */
    char model[EC_NAME_MAX + 1];
    int64_t version;             /* >= 1 */
    int64_t round;               /* training round; -1 when not given */
    char *params_json;           /* normalized (json()); malloc'd; "{}" default */
    char *aliases;               /* comma-separated, sorted; malloc'd; "" when none */
    int64_t created_unix;
} ec_cat_version;

typedef struct ec_cat_tensor {
    int64_t id;                  /* >= 1 and < 2^32: the index's tensor id */
    int64_t version_id;
    char model[EC_NAME_MAX + 1];
    int64_t version;
    char name[EC_NAME_MAX + 1];
    ec_dtype dtype;
    uint32_t ndim;
    uint64_t shape[EC_MAX_DIMS];
    uint64_t rows;               /* shape[0], or 1 when ndim == 0 */
    uint64_t row_bytes;
    uint64_t rows_per_partition;
    uint64_t partitions;
    char path[EC_CAT_PATH_MAX];  /* partition file, relative to the data dir */
    uint64_t file_size;
    uint64_t header_checksum;    /* the partition file's header checksum */
    uint64_t *part_checksums;    /* `partitions` XXH3-64 values; malloc'd */
    /* The remote tier (schema 6): a version pulled lazily (`embcache pull
     * --lazy`) keeps its data on the Redis Cluster until it is read. false
     * (what a zeroed struct says): all of it is in the local file. */
    bool remote;
    uint32_t remote_index;       /* remote: the tensor's index t in the manifest */
    uint32_t remote_chunk;       /* remote: the manifest's chunk size (64 KiB..64 MiB) */
} ec_cat_tensor;

/* Open (creating if needed) the catalog at path; creates the schema or
 * upgrades an older one (schema 1, 2 or 3 to 4, in one transaction), sets
 * WAL and a busy timeout, and validates it (quick_check, foreign keys, every
 * version has tensors, every namespace row valid). EC_EIO / EC_ECORRUPT
 * with SQLite's message or the broken rule and how to recover, EC_EVERSION
 * for a catalog written by a newer embcached. */
int ec_catalog_open(const char *path, ec_catalog **out);
void ec_catalog_close(ec_catalog *cat);
/* Did this open create the schema (the file was new, or empty)? */
bool ec_catalog_created(const ec_catalog *cat);

/* Free the malloc'd members of a version / tensor filled by this module
 * (the structs themselves are the caller's). */
void ec_cat_version_clear(ec_cat_version *v);
void ec_cat_tensor_clear(ec_cat_tensor *t);

/* Validate a name; what is "model", "tensor" or "alias" (anything else is
 * checked as a model). 1..EC_NAME_MAX bytes. Models and aliases: letters,
 * digits, '.', '-', '_', not starting with '-' or '.'; an alias must not be
 * all digits. Tensors: also ':' and '/', with no empty, "." or ".." '/'
 * components. Returns 0 or EC_EINVAL with a message. */
int ec_catalog_check_name(const char *what, const char *name);

/* Register a version and its tensors in one transaction. v->id, tensors'
 * id/version_id/model/version are ignored on input. params_json NULL means
 * "{}"; otherwise it must be a JSON object (EC_EINVAL). Returns EC_EEXIST
 * for a duplicate (model, version) or duplicate tensor names. On success
 * writes the new version id and fills tensors[i].id. */
int ec_catalog_add_version(ec_catalog *cat, const char *model, int64_t version,
                           int64_t round, const char *params_json,
                           ec_cat_tensor *tensors, size_t n, int64_t *version_id_out);

/* The same, with the version's created time given (Unix seconds, >= 0;
 * ec_catalog_add_version records the time of the call): the importer
 * writes that time into the partition files' origin records first, and
 * `embcache recover` registers a version again with the time it had.
 * EC_EINVAL for a negative time; otherwise as ec_catalog_add_version. */
int ec_catalog_add_version_at(ec_catalog *cat, const char *model, int64_t version,
                              int64_t round, const char *params_json, int64_t created_unix,
                              ec_cat_tensor *tensors, size_t n, int64_t *version_id_out);

/* Resolve (model, "3" | alias, tensor name). EC_ENOENT with a message that
 * says which part is unknown (model, version, alias or tensor). */
int ec_catalog_resolve(ec_catalog *cat, const char *model, const char *version_or_alias,
                       const char *tensor, ec_cat_tensor *out);

/* Fetch a tensor by id. EC_ENOENT if it does not exist (any more). */
int ec_catalog_get_tensor(ec_catalog *cat, int64_t tensor_id, ec_cat_tensor *out);

/* Resolve a version number or alias to the version number. */
int ec_catalog_version_of(ec_catalog *cat, const char *model, const char *version_or_alias,
                          int64_t *version_out);

/* Point alias at (model, version), creating or moving it. EC_ENOENT when the
 * version does not exist, EC_EINVAL for a bad alias name. */
int ec_catalog_set_alias(ec_catalog *cat, const char *model, const char *alias,
                         int64_t version);

/* The newest version of model trained at `round` whose params equal
 * params_json (compared after json() normalization; NULL matches any).
 * EC_ENOENT when none. */
int ec_catalog_find(ec_catalog *cat, const char *model, int64_t round,
                    const char *params_json, int64_t *version_out);

/* Call cb for every version (of model, or of all models if NULL) in
 * (model, version) order; stop and return cb's value when non-zero. The
 * version struct is valid during the call only. */
int ec_catalog_list_versions(ec_catalog *cat, const char *model,
                             int (*cb)(const ec_cat_version *v, void *arg), void *arg);

/* Call cb for every tensor of a version, in name order. */
int ec_catalog_list_tensors(ec_catalog *cat, int64_t version_id,
                            int (*cb)(const ec_cat_tensor *t, void *arg), void *arg);

/* Remove a version, its tensors and the aliases that point at it, in one
 * transaction. Calls on_path for each removed tensor's file (the caller
 * unlinks after the commit succeeded). EC_ENOENT if absent. */
int ec_catalog_drop_version(ec_catalog *cat, const char *model, int64_t version,
                            int (*on_path)(const char *path, void *arg), void *arg);

/* Record that a tensor's partition file changed in place (refresh): its
 * new size, header checksum and partition checksums (t->partitions of
 * them; the layout itself may not change). One transaction. EC_ENOENT if
 * the tensor is gone. */
int ec_catalog_update_file(ec_catalog *cat, int64_t tensor_id, uint64_t file_size,
                           uint64_t header_checksum, const uint64_t *part_checksums,
                           uint64_t partitions);

/* Set a model's residency policy: the bytes of each of its versions that
 * eviction leaves resident, and the request rate (requests per second over
 * the daemon's window) under which a version counts as idle and is evicted
 * down to that minimum. EC_ENOENT for an unknown model. */
int ec_catalog_set_policy(ec_catalog *cat, const char *model, uint64_t min_resident_bytes,
                          double min_request_rate);

/* The policy of the model a version belongs to (0, 0 when none is set). */
int ec_catalog_get_policy(ec_catalog *cat, int64_t version_id, uint64_t *min_resident_bytes,
                          double *min_request_rate);

/*
 * Set how the daemon caches a tensor of a model, or all of them.
 *   model   an existing model (EC_ENOENT, naming it, when there is none).
 *   tensor  a tensor name (checked as ec_catalog_check_name("tensor")), or
 *           NULL or "" for every tensor of the model. It need not exist in
 *           any version yet: the mode applies to the tensor by that name in
 *           every version of the model, those imported later included.
 *   mode    EC_CACHE_PARTITIONS or EC_CACHE_ROWS record the mode;
 *           EC_CACHE_AUTO removes the record (back to the daemon's choice;
 *           removing one that does not exist is not an error).
 * A tensor's own mode wins over the model-wide one (get_tensor_mode). The
 * modes go with the model when its last version is dropped.
 * Returns 0, EC_EINVAL (bad mode, bad model or tensor name, or called from
 * inside a catalog callback), EC_ENOENT, or a storage error (EC_EIO,
 * EC_EBUSY, EC_ENOSPC, ...: the list is in catalog_sql.c).
 */
int ec_catalog_set_tensor_mode(ec_catalog *cat, const char *model, const char *tensor,
                               ec_cache_mode mode);

/*
 * The cache mode of tensor `tensor` (NULL or "": the model-wide mode) of
 * the model that version version_id belongs to: that tensor's record if
 * there is one, else the model-wide record, else EC_CACHE_AUTO. Writes
 * *mode_out only on success. Returns 0, EC_ENOENT for an unknown version
 * id, EC_EINVAL for a bad tensor name, EC_ECORRUPT for a stored mode out of
 * range, or a storage error. One statement: no transaction is left open.
 */
int ec_catalog_get_tensor_mode(ec_catalog *cat, int64_t version_id, const char *tensor,
                               ec_cache_mode *mode_out);

/*
 * Call cb for every cache-mode record, of model (EC_ENOENT when it does not
 * exist) or of all models when model is NULL, in (model, tensor) order; the
 * model-wide record comes first, with tensor "". mode is never
 * EC_CACHE_AUTO. The strings are valid during the call only. Stops and
 * returns cb's value when it is non-zero; 0 when every record was shown
 * (none is not an error). cb runs inside a read transaction: it may read
 * through the same handle but not change the catalog (EC_EINVAL).
 */
int ec_catalog_list_tensor_modes(ec_catalog *cat, const char *model,
                                 int (*cb)(const char *model, const char *tensor,
                                           ec_cache_mode mode, void *arg),
                                 void *arg);

/* A namespace of cached results as the catalog keeps it (core/results.h). */
typedef struct ec_catalog_ns {
    uint32_t slot;                       /* 0..EC_NS_MAX-1, unique */
    char name[EC_NS_NAME_MAX + 1];       /* unique */
    uint32_t owner_uid;
    uint32_t flags;                      /* EC_NS_SHARED, EC_NS_REMOTE (column remote) */
    char bind_model[EC_NAME_MAX + 1];    /* "" unbound */
    char bind_version[EC_NAME_MAX + 1];
    int64_t bound_version;               /* 0 unbound */
    uint32_t generation;
    uint64_t salt;
    uint64_t ttl_us;
    int64_t stale_us;
    uint64_t negative_ttl_us;
    int64_t jitter_ppm;
    uint64_t lease_us;
    uint32_t max_computing;
    uint64_t negative_max;
} ec_catalog_ns;

/*
 * Namespaces (core/catalog_ns.c), for the cache manager on the daemon's
 * server thread. A valid ec_catalog_ns: slot < EC_NS_MAX; name passes
 * ec_ns_name_ok(); flags only EC_NS_SHARED and EC_NS_REMOTE; bind_model "" with
 * bind_version "" and bound_version 0 (unbound), or a model name
 * (ec_catalog_check_name) with a version number or alias and
 * bound_version >= 0 (0: the binding leads nowhere now); ttl_us,
 * negative_ttl_us, lease_us and negative_max at most INT64_MAX. salt is
 * kept bit for bit; stale_us and jitter_ppm may be negative. Bindings are
 * not checked against the models: a bound model may come and go.
 */

/* Insert or replace the namespace of ns->slot (a name taken by another
 * slot: EC_EEXIST). One transaction. Returns 0, EC_EINVAL (NULL, an
 * invalid ns, or called from inside a catalog callback), EC_EEXIST naming
 * the slot that has the name, or a storage error (catalog_sql.c). */
int ec_catalog_ns_put(ec_catalog *cat, const ec_catalog_ns *ns);

/* Delete it by name: EC_ENOENT when there is none. One transaction; also
 * EC_EINVAL (NULL, or from inside a catalog callback) or a storage error. */
int ec_catalog_ns_delete(ec_catalog *cat, const char *name);

/* Call fn for every namespace in slot order; a row that fails validation
 * (slot out of range, bad name, unknown flags, negative ints where
 * unsigned) stops with EC_ECORRUPT and a message naming the row; fn's
 * non-zero return stops and is returned. Rows are checked as they come, so
 * fn has seen the rows before a bad one. ns is valid during the call only.
 * fn runs inside a read transaction: it may read through the same handle
 * but not change the catalog (EC_EINVAL). Returns 0 when every row was
 * shown (none is not an error), EC_EINVAL for NULL arguments, or a storage
 * error. */
int ec_catalog_ns_each(ec_catalog *cat, int (*fn)(const ec_catalog_ns *ns, void *arg), void *arg);

/* A dynamic table (core/dyntable.h): tensor_id takes row updates; its
 * content at start is base_tensor_id's rows (0: its own) and the log's
 * records after base_lsn. */
typedef struct ec_catalog_dyn {
    int64_t tensor_id;
    uint64_t capacity;
    uint32_t policy;             /* EC_DYN_REFUSE or EC_DYN_EVICT_LRU */
    int64_t base_tensor_id;      /* 0: the tensor itself */
    uint64_t base_lsn;
    int64_t created_unix;        /* 0 in a put: now */
} ec_catalog_dyn;

/* Insert or replace tensor_id's record. One transaction. 0, EC_EINVAL, or
 * a storage error (a tensor_id or base that does not exist: a constraint
 * error). */
int ec_catalog_dyn_put(ec_catalog *cat, const ec_catalog_dyn *d);

/* Call fn for every dynamic table, by tensor id; a row that fails
 * validation stops with EC_ECORRUPT naming it. Inside a read transaction,
 * like ec_catalog_ns_each. */
int ec_catalog_dyn_each(ec_catalog *cat, int (*fn)(const ec_catalog_dyn *d, void *arg), void *arg);

/* Call cb with every partition file path the catalog references (for the
 * start-up sweep that removes orphans). */
int ec_catalog_foreach_path(ec_catalog *cat, int (*cb)(const char *path, void *arg),
                            void *arg);

/* The number of commits made through any catalog handle of this process
 * so far (any thread). Whoever caches what the catalog says drops the
 * cache when this changes: while the daemon runs, it holds the data
 * directory's lock and is the catalog's only writer. */
uint64_t ec_catalog_changes(void);

/* The names the catalog knows, for a filter that refuses unknown ones
 * without a query. ec_catalog_each_name() calls cb once per name, a model's
 * names together: kind 'M' (name NULL: the model itself), 'V' (name: a
 * version number in decimal), 'A' (an alias), 'T' (a tensor name of any of
 * its versions, each once), and last 'L' (name NULL) with the model's
 * versions, aliases and tensor names listed as refusals word them ("1, 2",
 * cut with ", ..."; "none"). Strings live for the call. Stops at, and
 * returns, cb's first non-zero result. */
typedef struct ec_cat_name {
    const char *model;
    char kind;
    const char *name;
    const char *versions, *aliases, *tensors; /* 'L' only */
} ec_cat_name;
int ec_catalog_each_name(ec_catalog *cat, int (*cb)(const ec_cat_name *n, void *arg),
                         void *arg);

/* The ids of the tensors pulled lazily (catalog_remote.c), ascending;
 * *ids is malloc'd (NULL when there are none). */
int ec_catalog_remote_tensors(ec_catalog *cat, uint32_t **ids, size_t *n);

/* Counts for stats. */
int ec_catalog_counts(ec_catalog *cat, uint64_t *models, uint64_t *versions,
                      uint64_t *tensors);

#endif
