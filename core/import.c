/*
 * import.c - turn .npy / .safetensors files into partition files and one
 * registered model version (see import.h).
 *
 * Runs in the daemon's importer thread, with that thread's own catalog
 * handle; the input files arrive as descriptors (passed by the client over
 * SCM_RIGHTS) and are only read with pread. An import goes in three steps:
 *
 *   1. parse every file's header (nothing written yet): formats by
 *      extension, tensor names checked and unique across all files;
 *   2. for each tensor, plan its partitions and stream its data from the
 *      input into a new partition file under <data_dir>/parts (byte-swapping
 *      big-endian .npy input); the writer computes the partition and block
 *      checksums as the data goes by (the current format, version 2: see
 *      partfile.h), fsyncs and renames each file;
 *   3. register the version and all its tensors in one catalog transaction.
 *
 * Every partition file carries an origin record in its header page (model,
 * version, tensor, round, params, created time, the version's number of
 * tensors: partfile.h), so that `embcache recover` can rebuild a lost
 * catalog from the files; the created time is chosen before the files are
 * written and registered with the version, so file and catalog agree.
 *
 * Any failure unlinks every partition file this import created and leaves
 * the catalog untouched. A crash in the middle leaves only files the
 * catalog does not reference, which ec_import_sweep() removes at start-up.
 *
 * Error codes for bad input (what `embcache import` turns into its exit
 * status): a file whose content or name cannot become a tensor is
 * EC_EFORMAT (malformed, truncated, a name that is not a valid tensor name,
 * over a format limit such as dimensions or row size, a tensor name that
 * two input files give) or EC_EDTYPE (an unsupported dtype), with a message
 * naming the file; EC_EIO only for a read that failed.
 */
#include "core/import.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "core/partfile.h"
#include "core/tensorfile.h"

#define IMPORT_CHUNK (4u * 1024u * 1024u)

/* The base name of a client-supplied file name. */
static const char *base_name(const char *name)
{
    const char *slash = strrchr(name, '/');
    return slash ? slash + 1 : name;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* mkdir, accepting an existing directory; a new one is made durable by
 * an fsync of its parent. */
static int mkdir_one(const char *path)
{
    struct stat st;

    if (mkdir(path, 0755) == 0) {
        char *parent = strdup(path), *slash;
        int fd;
        if (!parent)
            return ec_seterr(EC_ENOMEM, "out of memory");
        slash = strrchr(parent, '/');
        if (slash && slash != parent)
            *slash = '\0';
        else
            strcpy(parent, slash ? "/" : ".");
        fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
            (void)fsync(fd); /* best effort: the import's files are fsynced anyway */
            close(fd);
        }
        free(parent);
        return 0;
    }
    if (errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return 0;
    return ec_seterr_errno(errno == EACCES || errno == EPERM ? EC_EPERM : EC_EIO, errno,
                           "cannot create directory %s; check the data directory's "
                           "permissions", path);
}

static void swap_elems(unsigned char *p, size_t len, size_t esize)
{
    for (size_t i = 0; i + esize <= len; i += esize)
        for (size_t a = 0, b = esize - 1; a < b; a++, b--) {
            unsigned char t = p[i + a];
            p[i + a] = p[i + b];
            p[i + b] = t;
        }
}

/* Rows and row bytes of a parsed tensor, with overflow checks. */
static int tensor_rows(const ec_tf_tensor *t, uint64_t *rows, uint64_t *row_bytes)
{
    uint64_t rb = ec_dtype_size(t->dtype);

    for (uint32_t i = 1; i < t->ndim; i++)
        if (__builtin_mul_overflow(rb, t->shape[i], &rb))
            return ec_seterr(EC_EFORMAT, "tensor '%s': a row is larger than 2^64 bytes",
                             t->name);
    *rows = t->ndim ? t->shape[0] : 1;
    *row_bytes = rb;
    return 0;
}

/* Stream tensor t from fd into a new partition file in parts_dir, with
 * origin (its tensor name filled in here) and params in its header; fill
 * ct. *params_lost is set when the params did not fit the header page. */
static int write_tensor(int fd, const ec_tf_tensor *t, const char *parts_dir,
                        uint64_t partition_bytes, unsigned char *chunk,
                        ec_partfile_origin *origin, const char *params, bool *params_lost,
                        ec_cat_tensor *ct)
{
    ec_partfile_meta m;
    ec_partfile_writer *w = NULL;
    uint64_t *sums = NULL, hsum, off, left;
    size_t esize = ec_dtype_size(t->dtype);
    char fname[64];
    int rc;

    memset(&m, 0, sizeof(m));
    m.dtype = t->dtype;
    m.ndim = t->ndim;
    memcpy(m.shape, t->shape, sizeof(m.shape));
    rc = tensor_rows(t, &m.rows, &m.row_bytes);
    if (rc < 0)
        goto fail;
    rc = ec_partfile_plan(m.rows, m.row_bytes, partition_bytes, &m.rows_per_partition);
    if (rc == 0)
        rc = ec_partfile_layout(&m);
    if (rc == EC_ETOOBIG) /* the file's tensor is over a limit of the format */
        rc = ec_adderr(EC_EFORMAT, "tensor '%s' cannot be stored", t->name);
    if (rc < 0)
        goto fail;
    if (m.rows * m.row_bytes != t->data_len) {
        rc = ec_seterr(EC_EINTERNAL, "tensor '%s': layout says %" PRIu64 " bytes, the file "
                       "%" PRIu64, t->name, m.rows * m.row_bytes, t->data_len);
        goto fail;
    }
    sums = malloc((m.partitions ? m.partitions : 1) * sizeof(*sums));
    if (!sums) {
        rc = ec_seterr(EC_ENOMEM, "tensor '%s': out of memory for %" PRIu64 " checksums",
                       t->name, m.partitions);
        goto fail;
    }
    rc = ec_partfile_writer_open(parts_dir, &m, &w);
    if (rc < 0)
        goto fail;
    snprintf(origin->tensor, sizeof(origin->tensor), "%s", t->name);
    rc = ec_partfile_writer_set_origin(w, origin, params, params_lost);
    if (rc < 0)
        goto fail;

    off = t->data_off;
    left = t->data_len;
    while (left > 0) {
        size_t want = left < IMPORT_CHUNK ? (size_t)left : IMPORT_CHUNK, got = 0;
        /* Fill the whole chunk so a byte swap never sees half an element. */
        while (got < want) {
            ssize_t r = pread(fd, chunk + got, want - got, (off_t)(off + got));
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0) {
                rc = ec_seterr_errno(EC_EIO, errno, "cannot read tensor '%s' at byte %" PRIu64,
                                     t->name, off + got);
                goto fail;
            }
            if (r == 0) {
                rc = ec_seterr(EC_EFORMAT, "tensor '%s': the file ended at byte %" PRIu64
                               " while its data was read (was it truncated during the "
                               "import?)", t->name, off + got);
                goto fail;
            }
            got += (size_t)r;
        }
        if (t->byteswap && esize > 1)
            swap_elems(chunk, want, esize);
        rc = ec_partfile_writer_append(w, chunk, want);
        if (rc < 0)
            goto fail;
        off += want;
        left -= want;
    }
    rc = ec_partfile_writer_commit(w, fname, sizeof(fname), &hsum, sums);
    if (rc < 0)
        goto fail;
    ec_partfile_writer_close(w);

    memset(ct, 0, sizeof(*ct));
    snprintf(ct->name, sizeof(ct->name), "%s", t->name);
    ct->dtype = t->dtype;
    ct->ndim = t->ndim;
    memcpy(ct->shape, t->shape, sizeof(ct->shape));
    ct->rows = m.rows;
    ct->row_bytes = m.row_bytes;
    ct->rows_per_partition = m.rows_per_partition;
    ct->partitions = m.partitions;
    snprintf(ct->path, sizeof(ct->path), "%s/%s", EC_PARTS_DIR, fname);
    ct->file_size = m.file_size;
    ct->header_checksum = hsum;
    ct->part_checksums = sums;
    return 0;

fail:
    ec_partfile_writer_close(w); /* unlinks its temporary or renamed file */
    free(sums);
    return rc;
}

struct tensor_ref {
    const ec_tf_tensor *t;
    size_t file;
};

static int cmp_ref(const void *a, const void *b)
{
    const struct tensor_ref *x = a, *y = b;
    return strcmp(x->t->name, y->t->name);
}

/* Parse file f into list. */
static int parse_file(const ec_import_file *f, ec_tf_list *list)
{
    const char *base = base_name(f->name);
    char stem[EC_NAME_MAX + 1];
    int rc;

    if (ends_with(base, ".npy")) {
        /* A .npy file's name is its tensor's: a name that cannot be one is
         * this input file's fault, like its content. */
        rc = ec_npy_stem(base, stem, sizeof(stem));
        if (rc < 0)
            return ec_adderr(EC_EFORMAT, "the file's name gives no tensor name");
        return ec_npy_parse_fd(f->fd, stem, list);
    }
    if (ends_with(base, ".safetensors"))
        return ec_safetensors_parse_fd(f->fd, list);
    return ec_seterr(EC_EFORMAT, "unknown file type: the name must end in .npy or "
                                 ".safetensors");
}

/* "1st", "2nd", ... for messages about the files of one import. */
static const char *ordinal(size_t i, char *buf, size_t len)
{
    size_t n = i + 1;
    const char *sfx = n % 100 >= 11 && n % 100 <= 13 ? "th"
                      : n % 10 == 1                 ? "st"
                      : n % 10 == 2                 ? "nd"
                      : n % 10 == 3                 ? "rd"
                                                    : "th";
    snprintf(buf, len, "%zu%s", n, sfx);
    return buf;
}

int ec_import_write(int fd, const void *p, size_t n, const char *what)
{
    const uint8_t *b = p;

    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return ec_seterr_errno(errno == ENOSPC ? EC_ENOSPC : EC_EIO, errno, "writing %s",
                                   what);
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

int ec_import_files(ec_catalog *cat, const char *data_dir, const ec_import_opts *opts,
                    const ec_import_file *files, size_t n, uint32_t *tensors_out)
{
    return ec_import_files_at(cat, data_dir, opts, 0, files, n, tensors_out);
}

int ec_import_files_at(ec_catalog *cat, const char *data_dir, const ec_import_opts *opts,
                       int64_t created_unix, const ec_import_file *files, size_t n,
                       uint32_t *tensors_out)
{
    ec_tf_list *lists = NULL;
    struct tensor_ref *refs = NULL;
    ec_cat_tensor *cts = NULL;
    ec_partfile_origin *origin = NULL;
    unsigned char *chunk = NULL;
    char *parts_dir = NULL, *path = NULL;
    size_t total = 0, done = 0, k;
    const char *fail_file = NULL;
    int64_t existing, vid, created = created_unix > 0 ? created_unix : (int64_t)time(NULL);
    bool params_lost = false;
    char vbuf[32];
    int rc;

    if (!cat || !data_dir || !opts || !files)
        return ec_seterr(EC_EINVAL, "ec_import_files: NULL argument");
    if (!opts->model)
        return ec_seterr(EC_EINVAL, "import: no model name given");
    rc = ec_catalog_check_name("model", opts->model);
    if (rc < 0)
        return rc;
    if (opts->version < 1)
        return ec_seterr(EC_EINVAL, "import of model '%s': version %" PRId64 " is invalid; "
                         "versions are numbered from 1", opts->model, opts->version);
    if (n < 1 || n > EC_IMPORT_MAX_FILES)
        return ec_seterr(EC_EINVAL, "import of model '%s' version %" PRId64 ": %zu files; "
                         "give 1 to %d", opts->model, opts->version, n, EC_IMPORT_MAX_FILES);
    for (size_t i = 0; i < n; i++)
        if (files[i].fd < 0 || !files[i].name)
            return ec_seterr(EC_EINVAL, "import of model '%s' version %" PRId64 ": file %zu "
                             "has no descriptor or name", opts->model, opts->version, i);

    /* Fail fast on a duplicate; the catalog's EC_EEXIST remains the guard. */
    snprintf(vbuf, sizeof(vbuf), "%" PRId64, opts->version);
    rc = ec_catalog_version_of(cat, opts->model, vbuf, &existing);
    if (rc == 0) {
        rc = ec_seterr(EC_EEXIST, "model '%s' version %" PRId64 " already exists; import "
                       "under a new version number", opts->model, opts->version);
        goto fail;
    }
    if (rc != EC_ENOENT)
        goto fail;
    ec_clearerr();

    /* 1. Parse every header. */
    lists = calloc(n, sizeof(*lists));
    if (!lists) {
        rc = ec_seterr(EC_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        rc = parse_file(&files[i], &lists[i]);
        if (rc < 0) {
            fail_file = files[i].name;
            goto fail;
        }
        for (size_t j = 0; j < lists[i].n; j++) {
            rc = ec_catalog_check_name("tensor", lists[i].tensors[j].name);
            if (rc < 0) {
                rc = ec_adderr(EC_EFORMAT, "not a valid tensor name");
                fail_file = files[i].name;
                goto fail;
            }
        }
        total += lists[i].n;
    }
    if (total > UINT32_MAX) {
        rc = ec_seterr(EC_EFORMAT, "%zu tensors in one version", total);
        goto fail;
    }
    refs = calloc(total ? total : 1, sizeof(*refs));
    cts = calloc(total ? total : 1, sizeof(*cts));
    chunk = malloc(IMPORT_CHUNK);
    origin = calloc(1, sizeof(*origin));
    if (!refs || !cts || !chunk || !origin) {
        rc = ec_seterr(EC_ENOMEM, "out of memory for %zu tensors", total);
        goto fail;
    }
    k = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < lists[i].n; j++)
            refs[k++] = (struct tensor_ref){&lists[i].tensors[j], i};
    qsort(refs, total, sizeof(*refs), cmp_ref);
    for (size_t i = 1; i < total; i++) {
        if (!strcmp(refs[i - 1].t->name, refs[i].t->name)) {
            /* Input that cannot be imported as given (EC_EFORMAT), not a
             * clash with what the catalog holds (EC_EEXIST). */
            size_t a = refs[i - 1].file, b = refs[i].file;
            char oa[16], ob[16];
            if (a > b) {
                size_t t = a;
                a = b;
                b = t;
            }
            if (a == b)
                rc = ec_seterr(EC_EFORMAT, "%s: tensor '%s' appears twice in it; tensor "
                               "names must be unique within a version", files[a].name,
                               refs[i].t->name);
            else
                rc = ec_seterr(EC_EFORMAT, "tensor '%s' is in both the %s file (%s) and the "
                               "%s file (%s); tensor names must be unique within a version: "
                               "rename one", refs[i].t->name, ordinal(a, oa, sizeof(oa)),
                               files[a].name, ordinal(b, ob, sizeof(ob)), files[b].name);
            goto fail;
        }
    }

    /* 2. Write the partition files. */
    if (asprintf(&parts_dir, "%s/%s", data_dir, EC_PARTS_DIR) < 0) {
        parts_dir = NULL;
        rc = ec_seterr(EC_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = mkdir_one(data_dir)) < 0 || (rc = mkdir_one(parts_dir)) < 0)
        goto fail;
    /* Params go in as given (the catalog normalizes and checks them when it
     * registers the version; registering them again gives the same). */
    snprintf(origin->model, sizeof(origin->model), "%s", opts->model);
    origin->version = opts->version;
    origin->round = opts->round;
    origin->created_unix = created;
    origin->version_tensors = (uint32_t)total;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < lists[i].n; j++) {
            rc = write_tensor(files[i].fd, &lists[i].tensors[j], parts_dir,
                              opts->partition_bytes, chunk, origin, opts->params_json,
                              &params_lost, &cts[done]);
            if (rc < 0) {
                fail_file = files[i].name;
                goto fail;
            }
            done++;
        }
    }

    /* 3. Register. */
    rc = ec_catalog_add_version_at(cat, opts->model, opts->version, opts->round,
                                   opts->params_json, created, cts, total, &vid);
    if (rc < 0)
        goto fail;
    if (params_lost)
        ec_warn("model '%s' version %" PRId64 ": its params (%zu bytes) are longer than a "
                "partition file's header can hold (%u bytes are sure to fit); they are in "
                "the catalog, but `embcache recover` could not restore them", opts->model,
                opts->version, strlen(opts->params_json),
                (unsigned)EC_PARTFILE_ORIGIN_PARAMS_MIN);
    if (tensors_out)
        *tensors_out = (uint32_t)total;
    rc = 0;
    goto out;

fail:
    for (size_t i = 0; i < done; i++) {
        free(path);
        path = NULL;
        if (asprintf(&path, "%s/%s", data_dir, cts[i].path) >= 0)
            unlink(path);
        else
            path = NULL;
    }
    if (fail_file)
        ec_adderr(rc, "import of model '%s' version %" PRId64 " failed: %s", opts->model,
                  opts->version, fail_file);
    else
        ec_adderr(rc, "import of model '%s' version %" PRId64 " failed", opts->model,
                  opts->version);
out:
    for (size_t i = 0; i < done; i++)
        free(cts[i].part_checksums);
    for (size_t i = 0; lists && i < n; i++)
        ec_tf_list_clear(&lists[i]);
    free(path);
    free(lists);
    free(refs);
    free(cts);
    free(chunk);
    free(origin);
    free(parts_dir);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Start-up sweep                                                      */

struct path_set {
    char **v;
    size_t n, cap;
};

static int collect_path(const char *path, void *arg)
{
    struct path_set *s = arg;

    if (s->n == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 64;
        char **nv = realloc(s->v, ncap * sizeof(*nv));
        if (!nv)
            return ec_seterr(EC_ENOMEM, "sweep: out of memory");
        s->v = nv;
        s->cap = ncap;
    }
    s->v[s->n] = strdup(path);
    if (!s->v[s->n])
        return ec_seterr(EC_ENOMEM, "sweep: out of memory");
    s->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int ec_import_sweep(ec_catalog *cat, const char *data_dir)
{
    struct path_set set = {0};
    char *parts_dir = NULL, *rel = NULL;
    DIR *d = NULL;
    struct dirent *de;
    int rc, removed = 0;

    if (!cat || !data_dir)
        return ec_seterr(EC_EINVAL, "ec_import_sweep: NULL argument");
    if (asprintf(&parts_dir, "%s/%s", data_dir, EC_PARTS_DIR) < 0) {
        parts_dir = NULL;
        rc = ec_seterr(EC_ENOMEM, "sweep: out of memory");
        goto out;
    }
    d = opendir(parts_dir);
    if (!d) {
        if (errno == ENOENT) {
            rc = 0; /* nothing imported yet */
            goto out;
        }
        rc = ec_seterr_errno(EC_EIO, errno, "sweep: cannot open %s", parts_dir);
        goto out;
    }
    rc = ec_catalog_foreach_path(cat, collect_path, &set);
    if (rc < 0) {
        ec_adderr(rc, "sweep of %s: cannot list the catalog's partition files", parts_dir);
        goto out;
    }
    if (set.n)
        qsort(set.v, set.n, sizeof(*set.v), cmp_str);
    if (ec_catalog_created(cat)) {
        /* A catalog created just now next to partition files is a lost
         * catalog (deleted, truncated), not an interrupted import: its word
         * deletes nothing, not even a temporary file. */
        while ((de = readdir(d)) != NULL)
            if (ends_with(de->d_name, EC_PARTFILE_EXT)) {
                rc = ec_seterr(EC_ECORRUPT,
                               "the catalog of %s is new or empty, but %s holds partition "
                               "files (%s among them): the catalog was lost or truncated; "
                               "with embcached stopped, run `embcache recover --data-dir "
                               "%s` to rebuild it from the files, or restore catalog.db from "
                               "a backup, or move %s aside to start afresh; nothing was "
                               "deleted",
                               data_dir, parts_dir, de->d_name, data_dir, parts_dir);
                goto out;
            }
        rewinddir(d);
    }

    while ((errno = 0, de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        int orphan;

        if (ends_with(name, ".tmp")) {
            orphan = 1;
        } else if (ends_with(name, EC_PARTFILE_EXT)) {
            free(rel);
            if (asprintf(&rel, "%s/%s", EC_PARTS_DIR, name) < 0) {
                rel = NULL;
                rc = ec_seterr(EC_ENOMEM, "sweep: out of memory");
                goto out;
            }
            orphan = !set.n || !bsearch(&rel, set.v, set.n, sizeof(*set.v), cmp_str);
        } else {
            continue;
        }
        if (!orphan)
            continue;
        if (unlinkat(dirfd(d), name, 0) == 0)
            removed++;
        else if (errno != ENOENT) {
            rc = ec_seterr_errno(EC_EIO, errno, "sweep: cannot remove %s/%s", parts_dir, name);
            goto out;
        }
    }
    if (errno != 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "sweep: cannot read %s", parts_dir);
        goto out;
    }
    rc = removed;
out:
    if (d)
        closedir(d);
    for (size_t i = 0; i < set.n; i++)
        free(set.v[i]);
    free(set.v);
    free(rel);
    free(parts_dir);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Upgrade of partition files written by older releases                */

struct version_find {
    int64_t version, id, round, created;
    char *params;
};

static int find_version(const ec_cat_version *v, void *arg)
{
    struct version_find *f = arg;

    if (v->version != f->version)
        return 0;
    f->id = v->id;
    f->round = v->round;
    f->created = v->created_unix;
    f->params = strdup(v->params_json ? v->params_json : "{}");
    return f->params ? 1 : ec_seterr(EC_ENOMEM, "upgrade: out of memory");
}

/* The version's tensors: path and name, in pairs. */
static int collect_tensor(const ec_cat_tensor *t, void *arg)
{
    int rc = collect_path(t->path, arg);
    return rc ? rc : collect_path(t->name, arg);
}

int ec_import_upgrade(ec_catalog *cat, const char *data_dir, const char *model,
                      const char *version, uint32_t *upgraded_out)
{
    struct version_find f = {0};
    struct path_set set = {0};
    ec_partfile_origin *origin = NULL, *had = NULL;
    char parts_dir[4200];
    uint32_t upgraded = 0;
    int rc;

    if (!cat || !data_dir || !model || !version || !upgraded_out)
        return ec_seterr(EC_EINVAL, "ec_import_upgrade: NULL argument");
    rc = ec_catalog_version_of(cat, model, version, &f.version);
    if (rc)
        return rc;
    rc = ec_catalog_list_versions(cat, model, find_version, &f);
    if (rc < 0)
        goto out;
    if (!f.id) {
        rc = ec_seterr(EC_ENOENT, "model '%s' has no version %lld", model,
                       (long long)f.version);
        goto out;
    }
    rc = ec_catalog_list_tensors(cat, f.id, collect_tensor, &set);
    if (rc < 0)
        goto out;
    origin = calloc(1, sizeof(*origin));
    had = calloc(1, sizeof(*had));
    if (!origin || !had) {
        rc = ec_seterr(EC_ENOMEM, "upgrade: out of memory");
        goto out;
    }
    /* What the catalog, which was validated when it was opened, says the
     * files belong to: the origin records of the rewritten files. */
    snprintf(origin->model, sizeof(origin->model), "%s", model);
    origin->version = f.version;
    origin->round = f.round;
    origin->created_unix = f.created;
    origin->version_tensors = (uint32_t)(set.n / 2);
    snprintf(parts_dir, sizeof(parts_dir), "%s/%s", data_dir, EC_PARTS_DIR);
    rc = 0;
    for (size_t i = 0; i + 1 < set.n && rc == 0; i += 2) {
        char path[4200], fresh[4400], name[64];
        ec_partfile_meta m;
        int fd;

        snprintf(path, sizeof(path), "%s/%s", data_dir, set.v[i]);
        rc = ec_partfile_open(path, &m, &fd);
        if (rc)
            break;
        rc = ec_partfile_read_origin(fd, &m, had);
        close(fd);
        if (rc)
            break;
        /* Rewritten: format 1 (no block checksums), or no origin record
         * (`embcache recover` could not place the file). */
        if (m.version >= EC_PARTFILE_VERSION && had->present)
            continue;
        snprintf(origin->tensor, sizeof(origin->tensor), "%s", set.v[i + 1]);
        rc = ec_partfile_upgrade(path, parts_dir, had->present ? NULL : origin, f.params,
                                 name, sizeof(name), NULL, NULL);
        if (rc)
            break;
        snprintf(fresh, sizeof(fresh), "%s/%s", parts_dir, name);
        if (rename(fresh, path) < 0) {
            rc = ec_seterr_errno(EC_EIO, errno, "cannot replace %s with its upgraded copy %s",
                                 path, fresh);
            unlink(fresh);
            break;
        }
        upgraded++;
    }
    if (upgraded) {
        int dfd = open(parts_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
    }
out:
    for (size_t i = 0; i < set.n; i++)
        free(set.v[i]);
    free(set.v);
    free(f.params);
    free(origin);
    free(had);
    if (rc == 0)
        *upgraded_out = upgraded;
    return rc;
}
