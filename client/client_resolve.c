/*
 * client_resolve.c - GPU gathers whose ids are already on the GPU: the
 * rows are found by the GPU itself (cuda/resolve.h), not by this process.
 *
 * Before, ids on a GPU were copied to the host, the whole stream was
 * synchronized, every id was looked up here, and the row addresses went
 * back over PCIe for the kernel. Now one kernel reads the ids where they
 * are, looks each row up in the device index and then the host index
 * (through the read-only registration of the segment every GPU gather
 * already uses), copies the resident rows, and writes a status per row;
 * this thread waits for that kernel alone (an event), counts, and hands
 * the daemon its access hints. A batch with rows that are not resident
 * (the daemon must read them) or that the kernel could not use goes the
 * host-resolved way, all of it: that path faults rows in, and a batch
 * that misses costs an NVMe read anyway.
 *
 * The epoch (layout.h "Device reads") is held from before the launch until
 * the kernel has completed, so no extent the kernel can find is reused
 * under it.
 *
 * Runs on the caller's thread, without the client's lock (cl_device_ready
 * takes it for set-up).
 */
#include "client/client_impl.h"

/* The header word of GPU table `table`'s slab generation, as an offset. */
static uint64_t gen_off(int table)
{
    return offsetof(ec_shm_header, dev) + (uint64_t)table * sizeof(ec_shm_device) +
           offsetof(ec_shm_device, slab_gen);
}

/* Tell the daemon which partitions were read: one hint per run of rows of
 * the same partition (the rows are in id order, usually clustered). */
static void note_parts(ec_client *c, uint32_t tensor, const uint8_t *status,
                       const uint32_t *parts, size_t n)
{
    uint64_t keys[256];
    size_t nk = 0;
    uint32_t last = UINT32_MAX;

    for (size_t i = 0; i < n; i++) {
        if (status[i] != EC_RS_DEVICE && status[i] != EC_RS_HOST)
            continue;
        if (parts[i] == last)
            continue;
        last = parts[i];
        keys[nk++] = EC_INDEX_KEY(tensor, last);
        if (nk == sizeof(keys) / sizeof(keys[0])) {
            cl_note_keys(c, keys, nk);
            nk = 0;
        }
    }
    cl_note_keys(c, keys, nk);
}

int cl_gather_device_ids(ec_tensor *t, const int64_t *ids, size_t n, void *out,
                         size_t out_size, ec_dtype dst, const ec_gather_opts *o)
{
    ec_client *c = t->c;
    struct cdev *d = &c->dev[o->device]; /* cl_device_ready checked the ordinal */
    const ec_backend *b = cl_be();
    const struct cslab *cs;
    const uint8_t *status = NULL;
    const uint32_t *parts = NULL;
    _Atomic uint64_t *slot;
    ec_resolve_args args = {0}, *a = &args; /* about 2.3 KiB */
    size_t ndev = 0, nhost = 0, nmiss = 0, bad = SIZE_MAX;
    int rc;

    if (!b->resolve_gather || d->host_reads != EC_HOST_READS_MAPPED ||
        d->host_map.n > EC_RS_MAX_CHUNKS ||
        atomic_load_explicit(&t->mode, memory_order_relaxed) != EC_CACHE_PARTITIONS)
        return CL_NOT_HERE;
    if ((rc = cl_gather_check(t, NULL, n, out_size, dst)))
        return rc;
    if (b->check_ptr && (rc = b->check_ptr(out, o->device)))
        return rc;
    a->ids = ids;
    a->dst = out;
    a->n = n;
    a->rows = t->t.rows;
    a->rpp = t->t.rows_per_partition;
    a->row_bytes = t->t.row_bytes;
    a->out_row_bytes = t->t.row_bytes / ec_dtype_size((ec_dtype)t->t.dtype) * ec_dtype_size(dst);
    a->tensor = t->t.id;
    a->seg_len = d->host_map.len;
    a->chunk = d->host_map.chunk;
    a->nchunks = d->host_map.n;
    for (uint32_t k = 0; k < d->host_map.n; k++)
        a->chunk_dev[k] = (uint64_t)(uintptr_t)d->host_map.dev[k];
    a->index_off = (uint64_t)((const uint8_t *)c->seg.index - c->seg.base);
    a->index_mask = c->seg.index_mask;
    a->data_off = (uint64_t)(c->seg.data - c->seg.base);
    a->data_size = c->seg.data_size;
    if (!(slot = cl_epoch_enter(c)))
        return EC_EBUSY;
    /* The kernel checks the generation again, after each entry it reads. */
    if ((cs = cl_slab_now(c, d))) {
        a->dev_index_off = (uint64_t)((const uint8_t *)cs->view.index - c->seg.base);
        a->gen_off = gen_off(d->table);
        a->gen = cs->gen;
        a->slab = (uint64_t)(uintptr_t)cs->base;
        a->slab_bytes = cs->bytes;
    }
    rc = b->resolve_gather(a, (ec_dtype)t->t.dtype, dst, o->device, o->stream, &status, &parts);
    cl_epoch_exit((void *)slot); /* the kernel has completed */
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        switch (status[i]) {
        case EC_RS_DEVICE: ndev++; break;
        case EC_RS_HOST: nhost++; break;
        case EC_RS_RANGE: bad = bad < i ? bad : i; break;
        default: nmiss++; break;
        }
    }
    if (bad != SIZE_MAX) {
        int64_t id = 0;
        if ((rc = b->copy_to_host(&id, ids + bad, sizeof(id), o->device, o->stream)))
            return rc;
        return cl_id_range_error(t, bad, id);
    }
    note_parts(c, t->t.id, status, parts, n);
    if (nmiss)
        return CL_NOT_HERE; /* the host-resolved path counts and faults */
    cl_count(&c->session->gathers, 1);
    cl_count(&c->session->rows, n);
    cl_count(&c->session->hits, n);
    cl_count(&c->session->device_rows, ndev);
    cl_count(&c->session->mapped_rows, nhost);
    cl_count(&c->session->gpu_resolved_rows, n);
    return 0;
}
