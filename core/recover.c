/*
 * recover.c - rebuild a catalog from self-describing partition files
 * (`embcache recover`; the contract is in recover.h).
 *
 * Runs in the embcache CLI's process, single-threaded, with the data
 * directory's lock held, so no daemon reads or writes anything while it
 * works. In order:
 *
 *   1. take the lock (ec_keeper_lock_dir; EC_EBUSY while a daemon runs);
 *   2. list parts/\*.ecp and check each file whole: ec_partfile_open (no
 *      links followed), its origin record, ec_partfile_verify (every byte
 *      against its checksums: the per-partition checksums the new catalog
 *      records come from the file's table, so reading all the data is the
 *      only proof they are right);
 *   3. group the valid files with an origin by (model, version); a version
 *      is kept when its files agree (round, params, created time, number
 *      of tensors), name distinct tensors, are as many as the record says,
 *      and no damaged file claims the version; a version pulled lazily
 *      (`embcache pull --lazy`), whose files hold the partitions not read
 *      yet as holes (those are not checked: ec_partfile_verify_present),
 *      is kept only when the cluster named by --remote holds it with every
 *      partition's checksum as the files' tables say (ec_pull_lazy_match),
 *      and is registered as lazily pulled again;
 *   4. unless a dry run: register the kept versions in a new catalog
 *      (catalog.db.recovering, removed first if an interrupted run left
 *      it), rename each file left out to NAME.ecp.skipped so that the
 *      daemon's start-up sweep does not delete it, move catalog.db-wal,
 *      -shm and catalog.db aside (in that order: a stale WAL must never
 *      meet a new database) to catalog.db.damaged-<UTC time>, rename the
 *      new catalog into place and fsync the directory;
 *   5. report: versions and tensors recovered, every file left out with
 *      why and what to do, where the old catalog went, and that aliases
 *      and policies were lost with it.
 *
 * Nothing is deleted but this run's own temporary catalog; nothing is read
 * from the damaged catalog.
 */
#include "core/recover.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "core/catalog.h"
#include "core/import.h"
#include "core/keeper.h"
#include "core/partfile.h"
#include "core/publish.h"

#define TMP_CATALOG EC_CATALOG_FILE ".recovering"

enum fstate { FS_GOOD, FS_DAMAGED, FS_NO_ORIGIN, FS_UNPLACED };

/* One parts/\*.ecp file. */
struct rfile {
    char name[256];
    bool renamed;            /* to name + EC_RECOVER_SKIPPED_SUFFIX */
    enum fstate state;
    char *why;               /* malloc'd: why it was left out */
    ec_partfile_origin *o;   /* malloc'd; NULL when none could be read */
    ec_cat_tensor t;         /* filled for FS_GOOD; t.part_checksums malloc'd */
    uint64_t absent;         /* FS_GOOD: partitions that are holes (pulled lazily) */
};

struct rctx {
    const ec_recover_opts *opts;
    const char *dir;         /* opts->data_dir */
    int dfd, pfd, lock_fd;
    struct stat dst;         /* the data directory */
    struct rfile *f;
    size_t n, cap;
    struct rfile **order;    /* the files with an origin, by model, version, tensor */
    size_t norder;
};

static void say(struct rctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(struct rctx *x, const char *fmt, ...)
{
    va_list ap;

    if (!x->opts->out)
        return;
    va_start(ap, fmt);
    vfprintf(x->opts->out, fmt, ap);
    va_end(ap);
}

static void leave_out(struct rfile *f, enum fstate st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void leave_out(struct rfile *f, enum fstate st, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    free(f->why);
    f->why = s;
    f->state = st;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* A name the catalog can record as "parts/NAME": what the writer makes
 * ("<16 hex>.ecp") and anything as tame. */
static bool name_ok(const char *name)
{
    if (strlen(name) + sizeof(EC_PARTS_DIR) + 1 > EC_CAT_PATH_MAX || name[0] == '.')
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == '_'))
            return false;
    return true;
}

/* ------------------------------------------------------------------ */
/* 1-2. Lock, list, check every file                                   */

static int cmp_file(const void *a, const void *b)
{
    return strcmp(((const struct rfile *)a)->name, ((const struct rfile *)b)->name);
}

static int list_parts(struct rctx *x)
{
    DIR *d;
    struct dirent *de;
    int fd, rc = 0;

    x->pfd = openat(x->dfd, EC_PARTS_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (x->pfd < 0) {
        if (errno == ENOENT)
            return 0; /* nothing was ever imported */
        return ec_seterr_errno(errno == ELOOP || errno == ENOTDIR ? EC_EPERM : EC_EIO, errno,
                               "cannot open %s/%s (it must be a directory, not a link)",
                               x->dir, EC_PARTS_DIR);
    }
    fd = dup(x->pfd);
    d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return ec_seterr_errno(EC_EIO, errno, "cannot read %s/%s", x->dir, EC_PARTS_DIR);
    }
    while ((errno = 0, de = readdir(d)) != NULL) {
        if (!ends_with(de->d_name, EC_PARTFILE_EXT))
            continue;
        if (x->n == x->cap) {
            size_t ncap = x->cap ? x->cap * 2 : 64;
            struct rfile *nf = realloc(x->f, ncap * sizeof(*nf));
            if (!nf) {
                rc = ec_seterr(EC_ENOMEM, "recover: out of memory listing %s/%s", x->dir,
                               EC_PARTS_DIR);
                goto out;
            }
            x->f = nf;
            x->cap = ncap;
        }
        memset(&x->f[x->n], 0, sizeof(x->f[x->n]));
        snprintf(x->f[x->n].name, sizeof(x->f[x->n].name), "%s", de->d_name);
        x->n++;
    }
    if (errno != 0)
        rc = ec_seterr_errno(EC_EIO, errno, "cannot read %s/%s", x->dir, EC_PARTS_DIR);
    else if (x->n)
        qsort(x->f, x->n, sizeof(*x->f), cmp_file);
out:
    closedir(d);
    return rc;
}

/* Check one file; leaves it FS_GOOD with t filled, or left out with why. Only
 * running out of memory is an error of the whole run. */
static int check_file(struct rctx *x, struct rfile *f)
{
    ec_partfile_meta m;
    struct stat st;
    char *path = NULL;
    int fd = -1, rc;

    if (fstatat(x->pfd, f->name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        leave_out(f, FS_DAMAGED, "cannot stat it: %s", strerror(errno));
        return 0;
    }
    if (!S_ISREG(st.st_mode)) {
        leave_out(f, FS_DAMAGED, "not a regular file (%s)",
                  S_ISLNK(st.st_mode) ? "a symbolic link" : "a directory or device");
        return 0;
    }
    if (asprintf(&path, "%s/%s/%s", x->dir, EC_PARTS_DIR, f->name) < 0)
        return ec_seterr(EC_ENOMEM, "recover: out of memory");
    f->o = calloc(1, sizeof(*f->o));
    if (!f->o) {
        free(path);
        return ec_seterr(EC_ENOMEM, "recover: out of memory");
    }
    ec_clearerr();
    rc = ec_partfile_open(path, &m, &fd); /* O_NOFOLLOW */
    if (rc < 0) {
        leave_out(f, FS_DAMAGED, "%s", ec_last_error());
        goto out;
    }
    /* The origin first: a file whose data is damaged still says which
     * version it belongs to, and that version is then incomplete. */
    if (ec_partfile_read_origin(fd, &m, f->o) < 0) {
        leave_out(f, FS_DAMAGED, "%s", ec_last_error());
        goto out;
    }
    f->t.part_checksums = calloc(m.partitions ? m.partitions : 1, sizeof(uint64_t));
    if (!f->t.part_checksums) {
        rc = ec_seterr(EC_ENOMEM, "recover: out of memory for %" PRIu64 " checksums of %s",
                       m.partitions, path);
        goto fail;
    }
    /* A lazily pulled file's partitions not read yet are holes: not
     * checked here, and the version is registered only when the cluster
     * holds those partitions with the file's checksums (register_versions). */
    if (ec_partfile_verify_present(fd, &m, f->t.part_checksums, &f->absent) < 0) {
        leave_out(f, FS_DAMAGED, "%s", ec_last_error());
        goto out;
    }
    if (!f->o->present) {
        leave_out(f, FS_NO_ORIGIN, "valid, but it has no origin record (written before "
                                  "partition files said where they belong), so it cannot "
                                  "be placed");
        goto out;
    }
    if (!name_ok(f->name)) {
        leave_out(f, FS_UNPLACED, "valid, but its file name cannot be recorded in the "
                                 "catalog; rename it to letters, digits and '.-_' ending "
                                 "in %s and run recover again", EC_PARTFILE_EXT);
        goto out;
    }
    if (ec_catalog_check_name("model", f->o->model) < 0 ||
        ec_catalog_check_name("tensor", f->o->tensor) < 0) {
        leave_out(f, FS_UNPLACED, "valid, but its origin record holds a name the catalog "
                                 "refuses: %s", ec_last_error());
        goto out;
    }
    snprintf(f->t.name, sizeof(f->t.name), "%s", f->o->tensor);
    f->t.dtype = m.dtype;
    f->t.ndim = m.ndim;
    memcpy(f->t.shape, m.shape, sizeof(f->t.shape));
    f->t.rows = m.rows;
    f->t.row_bytes = m.row_bytes;
    f->t.rows_per_partition = m.rows_per_partition;
    f->t.partitions = m.partitions;
    if ((size_t)snprintf(f->t.path, sizeof(f->t.path), "%s/%s", EC_PARTS_DIR, f->name) >=
        sizeof(f->t.path)) { /* name_ok() keeps this from happening */
        leave_out(f, FS_UNPLACED, "valid, but its file name is too long for the catalog");
        goto out;
    }
    f->t.file_size = m.file_size;
    f->t.header_checksum = m.header_checksum;
    f->state = FS_GOOD;
out:
    rc = f->why || f->state == FS_GOOD ? 0 : ec_seterr(EC_ENOMEM, "recover: out of memory");
fail:
    if (f->state != FS_GOOD) {
        free(f->t.part_checksums);
        f->t.part_checksums = NULL;
    }
    if (fd >= 0)
        close(fd);
    free(path);
    return rc;
}

/* ------------------------------------------------------------------ */
/* 3. Versions                                                          */

static int cmp_origin(const void *a, const void *b)
{
    const struct rfile *x = *(struct rfile *const *)a, *y = *(struct rfile *const *)b;
    int c = strcmp(x->o->model, y->o->model);

    if (c)
        return c;
    if (x->o->version != y->o->version)
        return x->o->version < y->o->version ? -1 : 1;
    c = strcmp(x->o->tensor, y->o->tensor);
    return c ? c : strcmp(x->name, y->name);
}

static bool same_version(const struct rfile *a, const struct rfile *b)
{
    return !strcmp(a->o->model, b->o->model) && a->o->version == b->o->version;
}

/* Why the version of files order[a, b) cannot be registered, or NULL. The
 * string is static or in buf. */
static const char *version_problem(struct rctx *x, size_t a, size_t b, char *buf, size_t len)
{
    const ec_partfile_origin *first = x->order[a]->o;
    size_t ok = 0;

    for (size_t i = a; i < b; i++) {
        const struct rfile *f = x->order[i];
        const ec_partfile_origin *o = f->o;

        if (f->state == FS_DAMAGED) {
            snprintf(buf, len, "its file %s is damaged", f->name);
            return buf;
        }
        if (f->state != FS_GOOD) {
            snprintf(buf, len, "its file %s cannot be placed", f->name);
            return buf;
        }
        ok++;
        if (o->round != first->round || o->created_unix != first->created_unix ||
            o->version_tensors != first->version_tensors ||
            o->params_lost != first->params_lost ||
            o->params_full_len != first->params_full_len ||
            strcmp(o->params_json, first->params_json)) {
            snprintf(buf, len, "its files %s and %s disagree on the version's round, params, "
                     "created time or number of tensors (two imports under one number?)",
                     x->order[a]->name, f->name);
            return buf;
        }
        if (i > a && !strcmp(x->order[i - 1]->o->tensor, o->tensor)) {
            snprintf(buf, len, "files %s and %s both claim tensor '%s'", x->order[i - 1]->name,
                     f->name, o->tensor);
            return buf;
        }
    }
    if (ok != first->version_tensors) {
        snprintf(buf, len, "%zu of its %u tensor files were found", ok,
                 first->version_tensors);
        return buf;
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* 4. The new catalog                                                   */

/* unlinkat that treats "not there" as done. */
static int remove_own(struct rctx *x, const char *name)
{
    if (unlinkat(x->dfd, name, 0) == 0 || errno == ENOENT)
        return 0;
    return ec_seterr_errno(EC_EIO, errno, "cannot remove %s/%s (left by an interrupted "
                           "recover)", x->dir, name);
}

/* A version whose files hold `absent` partitions as holes: pulled lazily
 * (`embcache pull --lazy`), the rest of its data on the cluster. It is
 * registered as lazily pulled again (ts[] get remote, index and chunk)
 * only when the cluster named by --remote holds that version with every
 * partition's checksum as the files' tables say; otherwise *bad says why
 * it is left out. Returns < 0 only when the cluster cannot be asked (the
 * whole run stops, changing nothing: a cluster that is down for a moment
 * must not set a version aside). */
static int lazy_version(struct rctx *x, const ec_partfile_origin *o, ec_cat_tensor *ts,
                        size_t n, uint64_t absent, char *why, size_t len, const char **bad)
{
    int rc;

    if (!x->opts->remote) {
        snprintf(why, len, "%" PRIu64 " of its partitions are holes in its files: it was "
                 "pulled lazily (`embcache pull --lazy`) and those partitions are only on "
                 "the cluster; run recover with --remote URL (and --remote-auth-file, as "
                 "embcached is given them) to register it again", absent);
        *bad = why;
        return 0;
    }
    rc = ec_pull_lazy_match(x->opts->remote, o->model, o->version, o->round, o->created_unix,
                            ts, n);
    if (rc == 0)
        return 0;
    if (rc == EC_ENOENT || rc == EC_EFORMAT || rc == EC_EVERSION) {
        snprintf(why, len, "%" PRIu64 " of its partitions are holes in its files (pulled "
                 "lazily), and the cluster cannot fill them: %s", absent, ec_last_error());
        *bad = why;
        return 0;
    }
    return ec_adderr(rc, "recover stopped and changed nothing: %s version %" PRId64 " was "
                     "pulled lazily and the cluster must confirm its partitions; run recover "
                     "again when %s answers", o->model, o->version, x->opts->remote);
}

static int register_versions(struct rctx *x, ec_catalog *cat, ec_recover_result *res)
{
    for (size_t a = 0; a < x->norder;) {
        size_t b = a + 1;
        const ec_partfile_origin *o = x->order[a]->o;
        char why[2048];
        const char *bad;
        uint64_t absent = 0;

        while (b < x->norder && same_version(x->order[a], x->order[b]))
            b++;
        bad = version_problem(x, a, b, why, sizeof(why));
        for (size_t i = a; i < b && !bad; i++)
            absent += x->order[i]->absent;
        if (!bad) {
            ec_cat_tensor *ts = calloc(b - a, sizeof(*ts));
            int rc = 0;

            if (!ts)
                return ec_seterr(EC_ENOMEM, "recover: out of memory");
            for (size_t i = a; i < b; i++)
                ts[i - a] = x->order[i]->t;
            ec_clearerr();
            if (absent && (rc = lazy_version(x, o, ts, b - a, absent, why, sizeof(why),
                                              &bad)) < 0) {
                free(ts);
                return rc; /* the cluster did not answer: nothing is changed */
            }
            if (!bad && cat)
                rc = ec_catalog_add_version_at(cat, o->model, o->version, o->round,
                                               o->params_lost || !o->params_json[0]
                                                   ? NULL
                                                   : o->params_json,
                                               o->created_unix, ts, b - a, NULL);
            free(ts);
            if (rc == EC_ENOMEM || rc == EC_EIO || rc == EC_ENOSPC || rc == EC_EBUSY)
                return ec_adderr(rc, "cannot register %s version %" PRId64 " in the new "
                                 "catalog", o->model, o->version);
            if (rc < 0) {
                snprintf(why, sizeof(why), "the catalog refused it: %s", ec_last_error());
                bad = why;
            }
        }
        if (bad) {
            for (size_t i = a; i < b; i++)
                if (x->order[i]->state == FS_GOOD)
                    leave_out(x->order[i], FS_UNPLACED, "valid, but %s version %" PRId64
                              " cannot be recovered: %s", o->model, o->version, bad);
        } else {
            char round[24], when[32], lz[96] = "";
            time_t ct = (time_t)o->created_unix;
            struct tm tm;

            res->versions++;
            res->tensors += (uint32_t)(b - a);
            res->lazy += absent != 0;
            if (o->params_lost)
                res->params_lost++;
            if (o->round < 0)
                snprintf(round, sizeof(round), "none");
            else
                snprintf(round, sizeof(round), "%" PRId64, o->round);
            if (!gmtime_r(&ct, &tm) || !strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC",
                                                 &tm))
                snprintf(when, sizeof(when), "%" PRId64, o->created_unix);
            if (absent)
                snprintf(lz, sizeof(lz), "; pulled lazily: %" PRIu64 " partition(s) still "
                         "only on the cluster", absent);
            say(x, "  %s version %" PRId64 ": %zu tensor(s), round %s, created %s%s%s\n",
                o->model, o->version, b - a, round, when, lz,
                o->params_lost ? "; its params were too long to be kept in the files and "
                                 "are LOST: it is registered with params {}"
                               : "");
        }
        a = b;
    }
    return 0;
}

/* A name for the damaged catalog that none of catalog.db's three files
 * would collide with: catalog.db.damaged-<UTC time>[-N]. */
static int pick_kept_name(struct rctx *x, char *out, size_t len)
{
    char ts[32], name[128];
    time_t now = time(NULL);
    struct tm tm;
    struct stat st;

    strftime(ts, sizeof(ts), "%Y%m%dT%H%M%SZ", gmtime_r(&now, &tm));
    for (int i = 0; i < 100; i++) {
        bool taken = false;
        snprintf(out, len, "%s.damaged-%s%s%.0d", EC_CATALOG_FILE, ts, i ? "-" : "", i);
        for (int k = 0; k < 3 && !taken; k++) {
            snprintf(name, sizeof(name), "%s%s", out, k == 0 ? "" : k == 1 ? "-wal" : "-shm");
            taken = fstatat(x->dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
        }
        if (!taken)
            return 0;
    }
    return ec_seterr(EC_EIO, "cannot find a free name to keep %s/%s under", x->dir,
                     EC_CATALOG_FILE);
}

/* Move catalog.db's -wal, -shm and itself to kept (same suffixes).
 * *moved says whether there was anything. */
static int move_aside(struct rctx *x, const char *kept, bool *moved)
{
    static const char *const sfx[] = {"-wal", "-shm", ""}; /* the database last */
    char from[128], to[128];

    *moved = false;
    for (int k = 0; k < 3; k++) {
        snprintf(from, sizeof(from), "%s%s", EC_CATALOG_FILE, sfx[k]);
        snprintf(to, sizeof(to), "%s%s", kept, sfx[k]);
        if (renameat2(x->dfd, from, x->dfd, to, RENAME_NOREPLACE) == 0) {
            *moved = true;
            continue;
        }
        if (errno == ENOENT)
            continue;
        return ec_seterr_errno(EC_EIO, errno, "cannot move %s/%s aside to %s%s", x->dir,
                               from, to,
                               k ? "; the catalog's other files were moved already: move "
                                   "them back by hand before starting embcached"
                                 : "");
    }
    return 0;
}

/* The new catalog, owned like the data directory when we are root (so a
 * daemon running as its own user can write it). */
static void give_to_owner(struct rctx *x, const char *name)
{
    if (geteuid() == 0 && x->dst.st_uid != 0)
        (void)!fchownat(x->dfd, name, x->dst.st_uid, x->dst.st_gid, AT_SYMLINK_NOFOLLOW);
}

/* Rename each file left out to NAME.ecp.skipped (never over another), out
 * of the way of the daemon's start-up sweep, which deletes the *.ecp files
 * its catalog does not reference. Done before the new catalog is put in
 * place, so that no daemon ever sees both. */
static void keep_skipped(struct rctx *x)
{
    bool any = false;

    for (size_t i = 0; i < x->n; i++) {
        struct rfile *f = &x->f[i];
        char to[sizeof(f->name) + sizeof(EC_RECOVER_SKIPPED_SUFFIX)];

        if (f->state == FS_GOOD)
            continue;
        snprintf(to, sizeof(to), "%s%s", f->name, EC_RECOVER_SKIPPED_SUFFIX);
        if (renameat2(x->pfd, f->name, x->pfd, to, RENAME_NOREPLACE) == 0) {
            f->renamed = true;
            any = true;
        }
    }
    if (any)
        (void)fsync(x->pfd);
}

static int build_catalog(struct rctx *x, ec_recover_result *res)
{
    static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};
    ec_catalog *cat = NULL;
    char *tmp = NULL, name[64], kept[64];
    bool moved;
    int rc;

    for (int k = 0; k < 4; k++) {
        snprintf(name, sizeof(name), "%s%s", TMP_CATALOG, sfx[k]);
        if ((rc = remove_own(x, name)) < 0)
            return rc;
    }
    if (asprintf(&tmp, "%s/%s", x->dir, TMP_CATALOG) < 0)
        return ec_seterr(EC_ENOMEM, "recover: out of memory");
    rc = ec_catalog_open(tmp, &cat);
    if (rc < 0) {
        rc = ec_adderr(rc, "cannot create the new catalog");
        goto out;
    }
    rc = register_versions(x, cat, res);
    ec_catalog_close(cat); /* checkpoints and removes its -wal and -shm */
    if (rc < 0)
        goto out;
    if (faccessat(x->dfd, TMP_CATALOG "-wal", F_OK, AT_SYMLINK_NOFOLLOW) == 0) {
        rc = ec_seterr(EC_EIO, "the new catalog %s kept its write-ahead log after it was "
                               "closed; nothing was changed: run recover again", tmp);
        goto out;
    }
    give_to_owner(x, TMP_CATALOG);
    keep_skipped(x);

    rc = pick_kept_name(x, kept, sizeof(kept));
    if (rc < 0)
        goto out;
    rc = move_aside(x, kept, &moved);
    if (rc < 0)
        goto out;
    if (renameat2(x->dfd, TMP_CATALOG, x->dfd, EC_CATALOG_FILE, RENAME_NOREPLACE) != 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "the damaged catalog was moved to %s/%s, but the "
                             "new one could not be put in place (rename %s to %s)", x->dir,
                             kept, TMP_CATALOG, EC_CATALOG_FILE);
        goto out;
    }
    if (fsync(x->dfd) != 0 && errno != EINVAL) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot fsync %s", x->dir);
        goto out;
    }
    if (moved)
        snprintf(res->kept_catalog, sizeof(res->kept_catalog), "%s", kept);
out:
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------ */
/* 5. The report                                                        */

static const char *advice(enum fstate st)
{
    switch (st) {
    case FS_DAMAGED:
        return "its data cannot be trusted: import the model version again from its source "
               "files (embcache import), then delete this file";
    case FS_NO_ORIGIN:
        return "import its model version again (embcache import), then delete this file; "
               "`embcache upgrade` adds origin records to the files of versions that are "
               "still in a catalog";
    default:
        return "fix what is named, rename it back to its .ecp name and run recover again, "
               "or import the model version again";
    }
}

static void report(struct rctx *x, const ec_recover_result *res)
{
    const bool dry = x->opts->dry_run;

    if (res->skipped) {
        say(x, "%s %u of %u partition file(s) in %s/%s:\n",
            dry ? "would leave out" : "left out", res->skipped, res->files, x->dir,
            EC_PARTS_DIR);
        for (size_t i = 0; i < x->n; i++) {
            const struct rfile *f = &x->f[i];
            if (f->state == FS_GOOD)
                continue;
            say(x, "  %s%s: %s: %s\n      what to do: %s\n", f->name,
                f->renamed ? EC_RECOVER_SKIPPED_SUFFIX : "",
                f->state == FS_DAMAGED ? "FAILED VALIDATION" : f->state == FS_NO_ORIGIN
                                                                 ? "no origin"
                                                                 : "not placed",
                f->why ? f->why : "(no detail)", advice(f->state));
        }
        say(x, "  %s renamed to NAME%s, in place, and not deleted: embcached deletes "
               "partition files its catalog does not reference when it starts.\n",
            dry ? "they would be" : "they were", EC_RECOVER_SKIPPED_SUFFIX);
    }
    if (dry) {
        say(x, "dry run: nothing was changed; recover would register %u version(s) with %u "
               "tensor(s) and move %s aside\n", res->versions, res->tensors, EC_CATALOG_FILE);
    } else {
        say(x, "recovered %u version(s) with %u tensor(s) from %u partition file(s) into a "
               "new %s/%s\n", res->versions, res->tensors, res->files, x->dir,
            EC_CATALOG_FILE);
        if (res->lazy)
            say(x, "%u of them pulled lazily: start embcached with --remote %s to read what "
                   "is still on the cluster\n", res->lazy, x->opts->remote);
        if (res->kept_catalog[0])
            say(x, "the damaged catalog was kept, unread, as %s/%s (with its -wal and -shm "
                   "if it had them); delete it once the recovered catalog serves\n",
                x->dir, res->kept_catalog);
        else
            say(x, "there was no %s to keep\n", EC_CATALOG_FILE);
    }
    say(x, "aliases and policies are kept only in the catalog and were lost with it: set "
           "them again (embcache alias MODEL ALIAS VERSION, embcache policy MODEL ...)\n");
    if (res->params_lost)
        say(x, "warning: %u version(s) lost their params (too long for a partition file's "
               "header): `embcache find --params` will not match them\n", res->params_lost);
}

/* ------------------------------------------------------------------ */

int ec_recover(const ec_recover_opts *opts, ec_recover_result *out)
{
    struct rctx x = {.opts = opts, .dfd = -1, .pfd = -1, .lock_fd = -1};
    ec_recover_result res;
    int rc;

    if (!opts || !opts->data_dir || !opts->data_dir[0] || !out)
        return ec_seterr(EC_EINVAL, "ec_recover: no data directory given");
    memset(&res, 0, sizeof(res));
    x.dir = opts->data_dir;
    x.dfd = open(x.dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (x.dfd < 0) {
        int e = errno;
        return ec_seterr_errno(e == ENOENT ? EC_ENOENT : e == ELOOP || e == ENOTDIR ? EC_EPERM
                                                                                    : EC_EIO,
                               e, "cannot open data directory %s", x.dir);
    }
    if (fstat(x.dfd, &x.dst) != 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot stat data directory %s", x.dir);
        goto out;
    }
    /* 1. No daemon may use the directory while we work. */
    rc = ec_keeper_lock_dir(x.dir, &x.lock_fd);
    if (rc < 0) {
        if (rc == EC_EBUSY)
            ec_adderr(rc, "embcache recover runs only while embcached is stopped");
        goto out;
    }
    give_to_owner(&x, EC_LOCK_FILE); /* in case it was created just now */

    /* 2. Every file, whole. */
    rc = list_parts(&x);
    if (rc < 0)
        goto out;
    res.files = (uint32_t)x.n;
    say(&x, "recover%s: %zu partition file(s) in %s/%s; checking every byte of each\n",
        opts->dry_run ? " (dry run)" : "", x.n, x.dir, EC_PARTS_DIR);
    x.order = calloc(x.n ? x.n : 1, sizeof(*x.order));
    if (!x.order) {
        rc = ec_seterr(EC_ENOMEM, "recover: out of memory");
        goto out;
    }
    for (size_t i = 0; i < x.n; i++) {
        rc = check_file(&x, &x.f[i]);
        if (rc < 0)
            goto out;
        if (x.f[i].o && x.f[i].o->present)
            x.order[x.norder++] = &x.f[i];
    }
    if (x.norder)
        qsort(x.order, x.norder, sizeof(*x.order), cmp_origin);

    /* 3-4. Versions, and the new catalog. */
    say(&x, "%s:\n", opts->dry_run ? "versions that would be recovered" : "versions recovered");
    if (opts->dry_run)
        rc = register_versions(&x, NULL, &res);
    else
        rc = build_catalog(&x, &res);
    if (rc < 0)
        goto out;
    if (res.versions == 0)
        say(&x, "  (none)\n");
    for (size_t i = 0; i < x.n; i++) {
        res.skipped += x.f[i].state != FS_GOOD;
        res.damaged += x.f[i].state == FS_DAMAGED;
        res.no_origin += x.f[i].state == FS_NO_ORIGIN;
        res.unplaced += x.f[i].state == FS_UNPLACED;
    }
    /* 5. */
    report(&x, &res);
    *out = res;
    rc = 0;
out:
    for (size_t i = 0; i < x.n; i++) {
        free(x.f[i].why);
        free(x.f[i].o);
        free(x.f[i].t.part_checksums);
    }
    free(x.f);
    free(x.order);
    if (x.pfd >= 0)
        close(x.pfd);
    if (x.lock_fd >= 0)
        close(x.lock_fd);
    close(x.dfd);
    return rc;
}
