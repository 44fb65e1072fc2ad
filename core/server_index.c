/*
 * server_index.c - the daemon's side of approximate (IVF) indexes: it keeps
 * the index files clients build and hands them out read-only.
 *
 *   INDEX_PUT  (administrators) a client sends the file it built
 *              (client/client_index.c) as a descriptor. srv_h_index_put,
 *              on the server thread, reads the request and queues it to the
 *              importer thread, which runs srv_index_store: the file is
 *              copied into <data_dir>/indexes/.<id>.ivf.tmp (never read in
 *              place: the sender could change or truncate its own file
 *              meanwhile), the copy is validated COMPLETELY
 *              (common/ivffile.h: layout, offsets, ids, every checksum) and
 *              against the catalog (the tensor exists, and it is the one the
 *              file names, with its rows, dim and dtype), then fsynced and
 *              renamed to <id>.ivf, and the directory fsynced. A bad file is
 *              refused with EC_EFORMAT and a message naming the fault; the
 *              daemon keeps serving either way.
 *   INDEX_OPEN (any admitted client) on the server thread: resolves (model,
 *              version or alias, tensor) and replies with an O_RDONLY
 *              descriptor of its index file, or EC_ENOENT.
 *
 * A dynamic table (core/dyntable.h) takes only a KEYED index (format 2:
 * ids are its keys, built_lsn the table's lsn when the build began): of at
 * most its capacity keys, built at an lsn the table has reached (the
 * importer reads the table's header in the segment, as any reader); a
 * tensor that is not dynamic takes only an index of its rows. An index a
 * tensor got before it was made dynamic stays on disk and searches refuse
 * it, saying to build it again (client_ivf.c). At start, the daemon removes
 * the KEYED index of a table whose log came back shorter than the lsn the
 * index was built at (a machine crash under --wal-sync interval or none):
 * its rows above the table's new lsn would be mistaken for indexed ones
 * (core/dyntable.c).
 *
 * The file's name is the catalog's tensor id, which is never reused
 * (AUTOINCREMENT): an index can only ever be found for the tensor it was
 * built for. Retiring a version removes its tensors' index files
 * (retire_finish, core/engine_life.c). A store that races a retire removes
 * its own file when the tensor is gone once the rename is done, so no index
 * outlives its tensor: either the retire's unlink comes after the rename,
 * or the store sees the tensor gone.
 */
#include "core/server_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/ivffile.h"
#include "common/log.h"
#include "shm/dyntable.h"
#include "shm/index.h"

#define COPY_BUF ((size_t)4 << 20)

/* ------------------------------------------------------------------ */
/* INDEX_PUT                                                           */

int srv_h_index_put(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, int *fds,
                    int *nfds)
{
    struct import_job *j;

    if (*nfds != 1)
        return ec_seterr(EC_EPROTO, "INDEX_PUT carries %d descriptors (one: the index file)",
                         *nfds);
    if (!(j = calloc(1, sizeof(*j))))
        return ec_seterr(EC_ENOMEM, "index job");
    ec_get_str(r, j->model, sizeof(j->model));
    j->opts.version = ec_get_i64(r);
    ec_get_str(r, j->tensor, sizeof(j->tensor));
    j->isize = ec_get_u64(r);
    if (!ec_rbuf_done(r) || !j->model[0] || !j->tensor[0]) {
        free(j);
        return srv_bad_body(EC_OP_INDEX_PUT);
    }
    if (srv_outstanding_take(c)) {
        free(j);
        return EC_EBUSY;
    }
    j->index = true;
    j->owner = c->id;
    j->req_id = req_id;
    j->n = 1;
    j->fds[0] = fds[0];
    *nfds = 0; /* the job owns it now */
    srv_import_enqueue(s, j);
    return 0;
}

/* Copy size bytes of src into dst from offset 0; EC_EFORMAT when src ends
 * early (its sender truncated it). */
static int copy_all(int src, int dst, uint64_t size)
{
    uint8_t *buf = malloc(COPY_BUF);
    uint64_t off = 0;
    int rc = 0;

    if (!buf)
        return ec_seterr(EC_ENOMEM, "index copy buffer");
    while (off < size && rc == 0) {
        size_t want = size - off < COPY_BUF ? (size_t)(size - off) : COPY_BUF;
        ssize_t n = pread(src, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = ec_seterr_errno(EC_EIO, errno, "reading the index file sent");
            break;
        }
        if (n == 0) {
            rc = ec_seterr(EC_EFORMAT, "index file: it ended at byte %llu of the %llu it "
                                       "had (changed while it was read)",
                           (unsigned long long)off, (unsigned long long)size);
            break;
        }
        for (ssize_t done = 0; done < n;) {
            ssize_t w = pwrite(dst, buf + done, (size_t)(n - done), (off_t)(off + (uint64_t)done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                rc = ec_seterr_errno(EC_EIO, errno, "writing an index file in the data "
                                                    "directory");
                break;
            }
            done += w;
        }
        off += (uint64_t)n;
    }
    free(buf);
    return rc;
}

/* The dynamic-table record of a tensor, if it has one. */
struct dyn_find {
    int64_t id;
    bool found;
    ec_catalog_dyn rec;
};

static int dyn_find_one(const ec_catalog_dyn *d, void *arg)
{
    struct dyn_find *f = arg;

    if (d->tensor_id == f->id) {
        f->found = true;
        f->rec = *d;
    }
    return 0;
}

/* A KEYED index of dynamic table ct: built at an lsn the table reached. */
static int check_built_lsn(server *s, const ec_cat_tensor *ct, uint64_t built_lsn)
{
    const ec_segment *seg = ec_engine_segment(s->engine);
    ec_index_ref ref;
    ec_dyn_view v;
    uint64_t lsn;
    int rc;

    if (!ec_index_lookup(seg, (uint32_t)ct->id, EC_DYN_PART, &ref))
        return ec_seterr(EC_ENOENT, "dynamic table '%s' of model '%s' version %lld is not "
                                    "served now (see the daemon's log): build its index "
                                    "when it is", ct->name, ct->model, (long long)ct->version);
    if ((rc = ec_dyn_view_open(seg, ref.offset, (uint32_t)ct->id, 0, &v)))
        return rc;
    lsn = atomic_load_explicit(&v.hdr->lsn, memory_order_acquire);
    if (!ec_index_still_valid(&ref))
        return ec_seterr(EC_ESTALE, "dynamic table '%s' was dropped while its index was "
                                    "checked", ct->name);
    if (built_lsn > lsn)
        return ec_seterr(EC_EFORMAT, "index file: built at lsn %llu, and the table is at lsn "
                                     "%llu: it is not of this table's present; build it again",
                         (unsigned long long)built_lsn, (unsigned long long)lsn);
    return 0;
}

/* The file at fd (size bytes, ours) is an index of tensor ct (dyn: its
 * dynamic-table record, or NULL) that j asked to store. */
static int check_copy(server *s, int fd, uint64_t size, const ec_cat_tensor *ct,
                      const ec_catalog_dyn *dyn, const struct import_job *j)
{
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
    const ec_ivf_header *h;
    ec_ivf_view v;
    int rc;

    if (map == MAP_FAILED)
        return ec_seterr_errno(EC_EIO, errno, "mapping a %llu-byte index file",
                               (unsigned long long)size);
    rc = ec_ivf_check(map, size, true, &v);
    h = v.h;
    if (rc == 0 && (h->tensor_id != (uint64_t)ct->id || h->version != ct->version ||
                    strcmp(h->model, j->model) || strcmp(h->tensor, j->tensor)))
        rc = ec_seterr(EC_EFORMAT, "index file: it is the index of tensor id %llu ('%.64s' "
                                   "of '%.64s' version %lld), not of tensor id %lld "
                                   "('%.64s' of '%.64s' version %lld) that the request names",
                       (unsigned long long)h->tensor_id, h->tensor, h->model,
                       (long long)h->version, (long long)ct->id, j->tensor, j->model,
                       (long long)ct->version);
    if (rc == 0 && !dyn != !(h->flags & EC_IVF_KEYED))
        rc = ec_seterr(EC_EFORMAT, dyn ? "index file: tensor '%s' is a dynamic table, and this "
                                         "index is of its rows, not of its keys: build it "
                                         "with a libembcache that indexes dynamic tables"
                                       : "index file: it is the index of a dynamic table's "
                                         "keys, and tensor '%s' is not a dynamic table",
                       j->tensor);
    if (rc == 0 && (dyn ? v.rows > dyn->capacity : v.rows != ct->rows))
        rc = ec_seterr(EC_EFORMAT, "index file: %llu rows, and the tensor has %s%llu",
                       (unsigned long long)v.rows, dyn ? "a capacity of " : "",
                       (unsigned long long)(dyn ? dyn->capacity : ct->rows));
    if (rc == 0 && (v.dim != ct->shape[1] || h->src_dtype != ct->dtype))
        rc = ec_seterr(EC_EFORMAT, "index file: rows of %llu (dtype %u), and the tensor's "
                                   "have %llu (dtype %u)", (unsigned long long)v.dim,
                       h->src_dtype, (unsigned long long)ct->shape[1], (unsigned)ct->dtype);
    if (rc == 0 && dyn)
        rc = check_built_lsn(s, ct, h->built_lsn);
    munmap(map, (size_t)size);
    return rc;
}

int srv_index_store(server *s, struct import_job *j)
{
    const char *dd = s->cfg->data_dir;
    char dir[4200], tmp[4300], path[4300], vs[32];
    ec_ivf_section sec[EC_IVF_NSEC];
    ec_cat_tensor ct = {0}, again = {0};
    struct dyn_find df = {0};
    uint64_t most, rows;
    struct stat st;
    int out = -1, dfd = -1, rc;

    snprintf(vs, sizeof(vs), "%lld", (long long)j->opts.version);
    if ((rc = ec_catalog_resolve(s->icat, j->model, vs, j->tensor, &ct)))
        return rc;
    if (ct.ndim != 2 || (ct.dtype != EC_DTYPE_F32 && ct.dtype != EC_DTYPE_F16 &&
                         ct.dtype != EC_DTYPE_BF16)) {
        rc = ec_seterr(EC_EINVAL, "tensor '%s' of model '%s' version %lld cannot have an "
                                  "index: it is not a 2-D f32, f16 or bf16 table", j->tensor,
                       j->model, (long long)j->opts.version);
        goto out;
    }
    df.id = ct.id;
    if ((rc = ec_catalog_dyn_each(s->icat, dyn_find_one, &df)))
        goto out;
    /* The largest file this tensor's index can be: one list per row (a
     * dynamic table: per key of its capacity). */
    rows = df.found ? df.rec.capacity : ct.rows;
    most = ec_ivf_layout(rows, ct.shape[1], rows > UINT32_MAX ? UINT32_MAX : (uint32_t)rows,
                         sec);
    if (fstat(j->fds[0], &st) < 0 || !S_ISREG(st.st_mode)) {
        rc = ec_seterr(EC_EFORMAT, "index file: the descriptor sent is not a regular file");
        goto out;
    }
    if ((uint64_t)st.st_size != j->isize || j->isize < EC_IVF_HEADER_SIZE || most == 0 ||
        j->isize > most) {
        rc = ec_seterr(EC_EFORMAT, "index file: %llu bytes (the request says %llu); an index "
                                   "of this tensor has %u to %llu",
                       (unsigned long long)st.st_size, (unsigned long long)j->isize,
                       EC_IVF_HEADER_SIZE, (unsigned long long)most);
        goto out;
    }
    snprintf(dir, sizeof(dir), "%s/indexes", dd);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot create the data directory's indexes/");
        goto out;
    }
    snprintf(tmp, sizeof(tmp), "%s/.%lld.ivf.tmp", dir, (long long)ct.id);
    snprintf(path, sizeof(path), "%s/%lld.ivf", dir, (long long)ct.id);
    out = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (out < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot create an index file in indexes/");
        goto out;
    }
    if ((rc = copy_all(j->fds[0], out, j->isize)) ||
        (rc = check_copy(s, out, j->isize, &ct, df.found ? &df.rec : NULL, j)))
        goto fail;
    if (fsync(out) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "fsync of an index file");
        goto fail;
    }
    close(out);
    out = -1;
    if (rename(tmp, path) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot put an index file in place");
        goto fail;
    }
    if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    /* Retired meanwhile? Then this file must not stay (see the top). */
    if (ec_catalog_get_tensor(s->icat, ct.id, &again) == EC_ENOENT) {
        unlink(path);
        rc = ec_seterr(EC_ENOENT, "tensor '%s' of model '%s' version %lld was retired while "
                                  "its index was stored", j->tensor, j->model,
                       (long long)j->opts.version);
        goto out;
    }
    ec_cat_tensor_clear(&again);
    ec_info("stored the index of %s version %lld tensor %s: %llu bytes", j->model,
            (long long)j->opts.version, j->tensor, (unsigned long long)j->isize);
    goto out;
fail:
    if (out >= 0)
        close(out);
    out = -1;
    unlink(tmp);
out:
    ec_cat_tensor_clear(&again);
    ec_cat_tensor_clear(&ct);
    return rc;
}

/* ------------------------------------------------------------------ */
/* INDEX_OPEN                                                          */

int srv_h_index_open(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char model[EC_NAME_MAX + 1], version[EC_NAME_MAX + 1], tensor[EC_NAME_MAX + 1];
    char path[4300];
    ec_proto_tensor t;
    struct stat st;
    ec_wbuf w;
    int fd, rc;

    ec_get_str(r, model, sizeof(model));
    ec_get_str(r, version, sizeof(version));
    ec_get_str(r, tensor, sizeof(tensor));
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_INDEX_OPEN);
    if ((rc = ec_engine_resolve(s->engine, model, version, tensor, &t)))
        return rc;
    snprintf(path, sizeof(path), "%s/indexes/%u.ivf", s->cfg->data_dir, t.id);
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && errno == ENOENT)
        return ec_seterr(EC_ENOENT, "no index: build one with `embcache index build %s %lld "
                                    "%s` (tensor '%s' of model '%s' version %lld has none)",
                         t.model, (long long)t.version, t.name, t.name, t.model,
                         (long long)t.version);
    if (fd < 0)
        return ec_seterr_errno(EC_EIO, errno, "cannot open the index of tensor '%s' of model "
                                              "'%s' version %lld", t.name, t.model,
                               (long long)t.version);
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ec_seterr(EC_EIO, "the index of tensor '%s' is not a regular file", t.name);
    }
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_INDEX_OPEN | EC_OP_REPLY, req_id, 0);
    ec_put_u64(&w, (uint64_t)st.st_size);
    srv_reply_send(s, c, ec_msg_end(&w), &fd, 1);
    close(fd);
    return 0;
}
