/*
 * client_device.c - gathers into GPU memory: the segment registered with
 * the GPU, the daemon's device-tier slabs opened, the reclamation epoch a
 * gather holds while its kernel reads, and the gather itself.
 *
 * Runs on any thread of the calling process; the device set-up holds the
 * client's mutex, gathers do not.
 */
#include "client/client_impl.h"
#include "common/log.h"

/* Wait (bounded) for this client's device gathers to finish: their
 * completion clears a slot in the session page, which must stay mapped. */
bool cl_epochs_drained(ec_client *c)
{
    for (int spins = 0; spins < 10000; spins++) {
        bool busy = false;
        for (unsigned k = 0; k < EC_SESSION_EPOCH_SLOTS && !busy; k++)
            busy = atomic_load_explicit(&c->session->epoch_slot[k], memory_order_acquire);
        if (!busy)
            return true;
        usleep(1000);
    }
    return false;
}

/* ------------------------------------------------------------------ */
/* GPU outputs                                                         */

/* The daemon's DEVICES reply: its topology line, its backend, and each
 * GPU's device tier with what opens its slab. */
struct devices {
    char line[512];
    char backend[16];
    uint32_t n;
    struct {
        uint32_t table, on;
        uint64_t gen, bytes;
        int32_t node;
        uint8_t handle[EC_SLAB_HANDLE_BYTES];
        int fd;                  /* the emulator's slab descriptor, or -1 */
    } gpu[EC_SHM_MAX_DEVICES];
    int fds[EC_SHM_MAX_DEVICES]; /* received; devices_done() closes them */
    int nfds;
};

/* Ask for and parse the DEVICES reply. Caller holds c->lock, and calls
 * devices_done() after any return. */
static int devices_get(ec_client *c, struct devices *x)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req = cl_begin(c, &w, EC_OP_DEVICES);
    int rc, fdi = 0;

    x->nfds = 0;
    rc = cl_rpc(c, &w, req, NULL, 0, &r, x->fds, &x->nfds, EC_SHM_MAX_DEVICES);
    if (rc)
        return rc;
    ec_get_str(&r, x->line, sizeof(x->line));
    ec_get_str(&r, x->backend, sizeof(x->backend));
    x->n = ec_get_u32(&r);
    if (x->n > EC_SHM_MAX_DEVICES)
        return ec_seterr(EC_EPROTO, "DEVICES reply lists %u GPUs", x->n);
    for (uint32_t i = 0; i < x->n; i++) {
        char busid[32];
        x->gpu[i].table = ec_get_u32(&r);
        x->gpu[i].on = ec_get_u32(&r);
        x->gpu[i].gen = ec_get_u64(&r);
        x->gpu[i].bytes = ec_get_u64(&r);
        (void)ec_get_u64(&r); /* used bytes */
        (void)ec_get_u64(&r); /* partitions */
        x->gpu[i].node = (int32_t)ec_get_u32(&r);
        ec_get_str(&r, busid, sizeof(busid));
        for (unsigned k = 0; k < EC_SLAB_HANDLE_BYTES; k += 8) {
            uint64_t v = ec_get_u64(&r);
            memcpy(x->gpu[i].handle + k, &v, 8);
        }
        x->gpu[i].fd = -1;
        if (ec_get_u32(&r)) {
            if (fdi >= x->nfds)
                return ec_seterr(EC_EPROTO, "DEVICES reply is missing a slab descriptor");
            x->gpu[i].fd = x->fds[fdi++];
        }
    }
    if (!ec_rbuf_done(&r))
        return ec_seterr(EC_EPROTO, "malformed DEVICES reply");
    return 0;
}

static void devices_done(struct devices *x)
{
    for (int i = 0; i < x->nfds; i++)
        close(x->fds[i]);
    x->nfds = 0;
}

/* Open the slab of GPU `dev` when its generation is the one the segment
 * header publishes now (none when it is 0). Caller holds c->lock. */
static int slab_sync(ec_client *c, unsigned dev)
{
    struct cdev *d = &c->dev[dev];
    unsigned tbl = (unsigned)d->table;
    const ec_shm_device *h = &c->seg.hdr->dev[tbl];
    uint64_t gen = atomic_load_explicit(&h->slab_gen, memory_order_acquire);
    struct cslab *cur = atomic_load_explicit(&d->cur, memory_order_relaxed), *k;
    struct devices x;
    int rc;

    if (gen == (cur ? cur->gen : 0))
        return 0;
    /* The old slab stays mapped (on d->all): gathers queued before may
     * still read it. */
    atomic_store_explicit(&d->cur, NULL, memory_order_release);
    if (gen == 0 || !cl_be()->slab_open)
        return 0;
    rc = devices_get(c, &x);
    for (uint32_t i = 0; rc == 0 && i < x.n; i++) {
        if (x.gpu[i].table != tbl || !x.gpu[i].on || x.gpu[i].gen != gen)
            continue;
        /* The slab must be the size the header publishes for this
         * generation: the device index is bounded by it. */
        if (x.gpu[i].bytes == 0 ||
            x.gpu[i].bytes != atomic_load_explicit(&h->slab_size, memory_order_relaxed)) {
            rc = ec_seterr(EC_EPROTO, "DEVICES reply gives GPU %u a %llu-byte slab, the "
                                      "segment says otherwise", dev,
                           (unsigned long long)x.gpu[i].bytes);
            break;
        }
        if (!(k = calloc(1, sizeof(*k)))) {
            rc = ec_seterr(EC_ENOMEM, "slab record");
            break;
        }
        rc = cl_be()->slab_open((int)dev, x.gpu[i].handle, x.gpu[i].fd, x.gpu[i].bytes, &k->base);
        if (rc || (rc = ec_segment_device_view(&c->seg, tbl, x.gpu[i].bytes, &k->view))) {
            if (k->base)
                cl_be()->slab_close((int)dev, k->base, x.gpu[i].bytes);
            free(k);
            break;
        }
        k->bytes = x.gpu[i].bytes;
        k->gen = gen;
        k->next = d->all;
        d->all = k;
        atomic_store_explicit(&d->cur, k, memory_order_release);
    }
    devices_done(&x);
    return rc;
}

/* Which of the daemon's device tables is this process's GPU `dev`? Device
 * ordinals differ between processes (CUDA_VISIBLE_DEVICES: a worker's GPU 0
 * may be the daemon's GPU 3), so GPUs are matched by PCI bus id; a backend
 * without bus ids (the emulator) uses the ordinal. -1: the daemon has no
 * tier for it (host reads only). */
static int device_table(const ec_client *c, int dev)
{
    char busid[32];
    uint32_t n = c->seg.hdr->device_tables;

    if (!cl_be()->device_busid || cl_be()->device_busid(dev, busid, sizeof(busid)))
        return (uint32_t)dev < n ? dev : -1;
    for (uint32_t i = 0; i < n && i < EC_SHM_MAX_DEVICES; i++) {
        char theirs[sizeof(c->seg.hdr->dev[i].busid) + 1];
        memcpy(theirs, c->seg.hdr->dev[i].busid, sizeof(theirs) - 1);
        theirs[sizeof(theirs) - 1] = '\0';
        if (!strcasecmp(theirs, busid))
            return (int)i;
    }
    return -1;
}

/* The device address of the session page's epoch slots on GPU `dev`, so
 * the GPU can clear a gather's slot itself once its kernel has run (a
 * stream memory write: no host function per gather, and the slot stays set
 * however long the kernel waits behind other work). 0 when the page cannot
 * be registered: the slot is then cleared by a host function. Caller holds
 * c->lock. */
static uint64_t session_epoch_dev(ec_client *c, int dev)
{
    ec_host_map map;
    const void *p;

    if (cl_be()->host_register(c->session, EC_SESSION_SIZE, false, dev, &map)) {
        ec_warn("%s; GPU gathers on GPU %d release their epoch through a host function "
                "instead", ec_last_error(), dev);
        return 0;
    }
    c->session_registered = true;
    p = ec_host_map_addr(&map, offsetof(ec_session_page, epoch_slot),
                         sizeof(c->session->epoch_slot));
    return (uint64_t)(uintptr_t)p;
}

/* First use of GPU `dev`: what the GPU allows, how kernels will read host
 * rows, and who clears a gather's epoch slot (session_epoch_dev). A GPU
 * that cannot map the segment read-only
 * (cudaDevAttrHostRegisterReadOnlySupported 0) or whose registration
 * failed gets host rows staged through a pinned buffer: the failure is
 * reported once and never retried, and it never keeps the device tier
 * from being used. Caller holds c->lock. */
static int device_setup_locked(ec_client *c, int dev)
{
    struct cdev *d = &c->dev[dev];
    ec_device_caps caps = {.readonly_register = true};
    uint32_t mode;
    int rc;

    if (cl_be()->device_caps && (rc = cl_be()->device_caps(dev, &caps)))
        return rc;
    if (caps.prohibited)
        return ec_seterr(EC_EDEVICE, "GPU %d is in PROHIBITED compute mode: no process may "
                                     "use it; run `nvidia-smi -i %d -c DEFAULT` as root, or "
                                     "gather to another GPU or the host", dev, dev);
    d->table = device_table(c, dev);
    /* In EXCLUSIVE_PROCESS mode one process owns the GPU. embcached keeps
     * no context on such a GPU; one that does (an older daemon, or the mode
     * was changed under it) locks this process out. */
    if (caps.exclusive_process && d->table >= 0 &&
        atomic_load_explicit(&c->seg.hdr->dev[d->table].slab_gen, memory_order_acquire))
        return ec_seterr(EC_EDEVICE, "GPU %d is in EXCLUSIVE_PROCESS compute mode and "
                                     "embcached holds a context on it for its device tier: "
                                     "no other process can use the GPU; run `nvidia-smi -i "
                                     "%d -c DEFAULT` as root, or restart embcached with "
                                     "--gpu-slab 0", dev, dev);
    mode = cl_segmap_host_reads(c->segmap, dev, caps.readonly_register, &d->host_map);
    d->host_reads = mode;
    atomic_store_explicit(&c->session->host_reads[dev], mode, memory_order_relaxed);
    d->epoch_dev = caps.stream_write ? session_epoch_dev(c, dev) : 0;
    atomic_store_explicit(&c->session->epoch_release[dev],
                          d->epoch_dev ? EC_EPOCH_RELEASE_STREAM : EC_EPOCH_RELEASE_HOST,
                          memory_order_relaxed);
    atomic_store_explicit(&d->ready, true, memory_order_release);
    return 0;
}

/* Make GPU `dev` usable for gathers: set up once (device_setup_locked),
 * and the current slab open. Cheap when nothing changed. */
int cl_device_ready(ec_client *c, int dev)
{
    struct cdev *d;
    uint64_t gen;
    int rc = 0;

    if (!cl_be()->host_register)
        return ec_seterr(EC_EINVAL, "output is on GPU %d, but this process runs the %s "
                                    "backend (%s): gather to a host buffer, or run where "
                                    "libembcache finds CUDA and a GPU", dev, cl_be()->name,
                         getenv("EMBCACHE_BACKEND") ? "EMBCACHE_BACKEND is set"
                                                    : "no usable GPU");
    if (dev < 0 || dev >= cl_be()->device_count() || dev >= (int)EC_SHM_MAX_DEVICES)
        return ec_seterr(EC_EINVAL, "output device %d does not exist (%d GPU(s) visible; "
                                    "embcache uses GPUs 0..%u)", dev,
                         cl_be()->device_count(), EC_SHM_MAX_DEVICES - 1);
    d = &c->dev[dev];
    if (atomic_load_explicit(&d->ready, memory_order_acquire)) {
        const struct cslab *cur = atomic_load_explicit(&d->cur, memory_order_acquire);
        gen = d->table >= 0 ? atomic_load_explicit(&c->seg.hdr->dev[d->table].slab_gen,
                                                   memory_order_acquire)
                            : 0;
        if (gen == (cur ? cur->gen : 0))
            return 0;
    }
    pthread_mutex_lock(&c->lock);
    if (!atomic_load_explicit(&d->ready, memory_order_relaxed))
        rc = device_setup_locked(c, dev);
    if (rc == 0 && d->table >= 0)
        rc = slab_sync(c, (unsigned)dev);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int cl_device_stream_check(int dev, void *stream)
{
    int rc;

    if (!cl_be()->stream_capturing || dev < 0 || dev >= cl_be()->device_count())
        return 0; /* cl_device_ready says what is wrong with dev */
    rc = cl_be()->stream_capturing(dev, stream);
    if (rc < 0)
        return rc;
    if (rc > 0)
        return ec_seterr(EC_EINVAL, "the stream of this GPU gather (GPU %d) is being captured "
                                    "into a CUDA graph (cudaStreamIsCapturing): the gather "
                                    "looks rows up on the CPU, may wait for the daemon and "
                                    "synchronizes, which capture forbids; gather before "
                                    "cudaStreamBeginCapture or after cudaStreamEndCapture "
                                    "into a buffer the graph reads", dev);
    return 0;
}

/* Announce a device gather's epoch (layout.h "Device reads"). Returns the
 * slot; waits while all are taken (64 gathers of this client in flight),
 * and gives up with NULL (message set) after about 5 s of that. */
_Atomic uint64_t *cl_epoch_enter(ec_client *c)
{
    for (int spin = 0;; spin++) {
        for (unsigned k = 0; k < EC_SESSION_EPOCH_SLOTS; k++) {
            _Atomic uint64_t *slot = &c->session->epoch_slot[k];
            uint64_t zero = 0, e;
            if (atomic_load_explicit(slot, memory_order_relaxed))
                continue;
            e = atomic_load_explicit(&c->seg.hdr->epoch, memory_order_acquire);
            if (atomic_compare_exchange_strong_explicit(slot, &zero, e ? e : 1,
                                                        memory_order_seq_cst,
                                                        memory_order_relaxed)) {
                atomic_thread_fence(memory_order_seq_cst);
                return slot;
            }
        }
        if (spin >= 5000) {
            ec_seterr(EC_EBUSY, "%u GPU gathers of this client have been in flight for "
                                "5 s: their streams are not making progress",
                      EC_SESSION_EPOCH_SLOTS);
            return NULL;
        }
        if (spin < 100)
            sched_yield();
        else
            usleep(1000);
    }
}

void cl_epoch_exit(void *slot)
{
    atomic_store_explicit((_Atomic uint64_t *)slot, 0, memory_order_release);
}

const struct cslab *cl_slab_now(const ec_client *c, const struct cdev *d)
{
    const struct cslab *cs = atomic_load_explicit(&d->cur, memory_order_acquire);

    return cs && d->table >= 0 &&
                   atomic_load_explicit(&c->seg.hdr->dev[d->table].slab_gen,
                                        memory_order_acquire) == cs->gen
               ? cs
               : NULL;
}

/* Rounds after which a device gather whose rows do not all fit in memory at
 * once copies what is resident and goes on with the rest (more than one
 * launch; only under memory pressure). */
#define DEVICE_PARTIAL_ROUND 3

/* Rows to GPU memory, normally in one launch. Each round announces an
 * epoch and looks up the rows still to do (the device index first, then the
 * host index). All found: one launch, and the epoch is released when the
 * copy completes. Some missing: the epoch is released, the partitions are
 * faulted in, and the round repeats - no epoch is held across a round trip
 * to the daemon. When the rows of one call do not fit in memory together
 * (rounds keep missing), the resident ones are launched on their own
 * (scattered to their output rows, holding their epoch) and only the rest
 * is retried, as the host path does. */
/* Rows of a tensor cached by rows to GPU memory: gathered into host memory
 * (seqlock-checked, as any host gather), then copied to the GPU on the
 * caller's stream. Items are reused as soon as they are evicted, so a
 * kernel may not read them in place the way it reads partitions. */
static int gather_device_staged(ec_tensor *t, const int64_t *ids, size_t n, void *out,
                                ec_dtype dst, const ec_gather_opts *o)
{
    size_t esz = ec_dtype_size((ec_dtype)t->t.dtype);
    size_t bytes = n * (t->t.row_bytes / (esz ? esz : 1)) * ec_dtype_size(dst);
    void *buf;
    int rc;

    if (!cl_be()->copy_to_device)
        return ec_seterr(EC_EINVAL, "the %s backend cannot copy to GPU %d", cl_be()->name,
                         o->device);
    buf = malloc(bytes ? bytes : 1);
    if (!buf)
        return ec_seterr(EC_ENOMEM, "host staging of %zu bytes for a GPU gather", bytes);
    rc = cl_gather_host(t, ids, n, buf, dst);
    if (rc == 0)
        rc = cl_be()->copy_to_device(out, buf, bytes, o->device, o->stream);
    if (rc == 0)
        cl_count(&t->c->session->staged_rows, n);
    free(buf);
    return rc;
}

/* Copy row r of a host-tier partition (ref) into this round's pinned
 * staging buffer; *src receives its device address. The partition's entry
 * is checked after the copies (staged_valid): the daemon may reuse an
 * extent no kernel reads, epochs or not. */
struct stage {
    uint8_t *host;
    const uint8_t *dev;
    size_t rows, nrefs;
};

static int stage_row(ec_client *c, int dev, struct stage *st, size_t cap_rows,
                     uint64_t row_bytes, const ec_index_ref *ref, uint64_t r, const void **src)
{
    int rc;

    if (!st->host &&
        (rc = cl_be()->stage_get(dev, cap_rows * row_bytes, (void **)&st->host,
                                 (const void **)&st->dev)))
        return rc;
    memcpy(st->host + st->rows * row_bytes, c->seg.data + ref->offset + r * row_bytes,
           row_bytes);
    *src = st->dev + st->rows * row_bytes;
    st->rows++;
    return 0;
}

static bool staged_valid(const ec_index_ref *refs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!ec_index_still_valid(&refs[i]))
            return false;
    return true;
}

int cl_gather_device(ec_tensor *t, const int64_t *ids, size_t n, void *out, ec_dtype dst,
                     const ec_gather_opts *o)
{
    ec_client *c = t->c;
    uint64_t rpp = t->t.rows_per_partition, row_bytes = t->t.row_bytes;
    size_t dev_rows = 0, host_rows = 0, staged_rows = 0, misses = 0, retries = 0, ntodo = n;
    struct scratch *s;
    struct cdev *d;
    int rc;

    if ((rc = cl_stale(c)) || (rc = cl_device_stream_check(o->device, o->stream)) ||
        (rc = cl_device_ready(c, o->device)))
        return rc;
    d = &c->dev[o->device]; /* device_ready checked the ordinal */
    if (cl_be()->check_ptr && (rc = cl_be()->check_ptr(out, o->device)))
        return rc;
    /* Rows of the item store and of dynamic tables are reused as soon as
     * they are replaced: staged through the host, never read in place. */
    if (atomic_load_explicit(&t->mode, memory_order_relaxed) == EC_CACHE_ROWS ||
        atomic_load_explicit(&t->mode, memory_order_relaxed) == EC_CACHE_DYNAMIC)
        return gather_device_staged(t, ids, n, out, dst, o);
    if (d->host_reads != EC_HOST_READS_MAPPED && !cl_be()->stage_get)
        return ec_seterr(EC_EINVAL, "the %s backend cannot stage host rows for GPU %d",
                         cl_be()->name, o->device);
    if (!(s = cl_scratch_get(n)))
        return EC_ENOMEM;
    for (size_t i = 0; i < n; i++)
        s->todo[i] = i;
    for (int round = 0;; round++) {
        _Atomic uint64_t *slot;
        const struct cslab *cs;
        const ec_segment *dv;
        size_t nparts = 0, nsrc = 0, nnext = 0, rdev = 0, rhost = 0;
        uint64_t lastp = UINT64_MAX, hoff = 0;
        const uint8_t *base = NULL;
        bool found = false, on_dev = false, ref_staged = false, partial;
        struct stage st = {0};
        ec_index_ref ref;

        if (round == GATHER_MAX_ROUNDS) {
            rc = ec_seterr(EC_ENOSPC, "rows of tensor '%s' kept being evicted before they "
                                      "could be copied to GPU %d (%zu rows left after %d "
                                      "rounds): the segment is too small for this working "
                                      "set", t->t.name, o->device, ntodo, round);
            break;
        }
        if ((rc = cl_device_ready(c, o->device)))
            break;
        if (!(slot = cl_epoch_enter(c))) {
            rc = EC_EBUSY;
            break;
        }
        cs = cl_slab_now(c, d);
        dv = cs ? &cs->view : NULL;
        for (size_t k = 0; k < ntodo && rc == 0; k++) {
            size_t i = s->todo[k];
            uint64_t id = (uint64_t)ids[i], p = id / rpp, r = id % rpp;
            if (p != lastp) {
                lastp = p;
                found = ref_staged = false;
                if (dv && ec_index_lookup(dv, t->t.id, (uint32_t)p, &ref) &&
                    (r + 1) * row_bytes <= ref.length) {
                    base = (const uint8_t *)cs->base + ref.offset;
                    found = on_dev = true;
                } else if (ec_index_lookup(&c->seg, t->t.id, (uint32_t)p, &ref) &&
                           (r + 1) * row_bytes <= ref.length) {
                    hoff = (uint64_t)(c->seg.data - c->seg.base) + ref.offset;
                    found = true;
                    on_dev = false;
                } else {
                    s->parts[nparts++] = (uint32_t)p;
                }
                if (found)
                    cl_note_accesses(c, &ref, 1);
            }
            if (!found) {
                s->next[nnext++] = i;
                misses += round == 0;
                continue;
            }
            s->dst_rows[nsrc] = i;
            if (on_dev) {
                s->src[nsrc++] = base + r * row_bytes;
                rdev++;
                continue;
            }
            /* A host row: through the mapped segment (chunk by chunk), or
             * staged when the segment is not mapped or the row straddles
             * two chunks whose device addresses are not contiguous. */
            s->src[nsrc] = d->host_reads == EC_HOST_READS_MAPPED
                               ? ec_host_map_addr(&d->host_map, hoff + r * row_bytes,
                                                  row_bytes)
                               : NULL;
            if (s->src[nsrc]) {
                rhost++;
            } else if ((rc = stage_row(c, o->device, &st, ntodo, row_bytes, &ref, r,
                                       &s->src[nsrc])) == 0 &&
                       !ref_staged) {
                s->refs[st.nrefs++] = ref;
                ref_staged = true;
            }
            nsrc++;
        }
        if (rc) {
            cl_epoch_exit((void *)slot);
            break;
        }
        if (st.rows && !staged_valid(s->refs, st.nrefs)) {
            /* A staged row was torn: look everything up again. */
            cl_epoch_exit((void *)slot);
            retries++;
            if (nparts && (rc = cl_fault(t, s->parts, nparts)))
                break;
            continue;
        }
        partial = nparts && nsrc && round >= DEVICE_PARTIAL_ROUND;
        if (nparts == 0 || partial) {
            /* dst_rows is the identity when every row is copied at once. */
            ec_gather_desc g = {.src = s->src, .n = nsrc, .row_bytes = row_bytes,
                                .src_dtype = (ec_dtype)t->t.dtype, .dst_dtype = dst,
                                .dst = out, .dst_rows = nsrc == n ? NULL : s->dst_rows,
                                .device = o->device, .stream = o->stream,
                                .done = cl_epoch_exit, .done_arg = (void *)slot,
                                .release_dev = d->epoch_dev
                                                   ? d->epoch_dev +
                                                         (uint64_t)(slot - c->session->epoch_slot) *
                                                             sizeof(*slot)
                                                   : 0};
            rc = cl_be()->gather(&g);
            if (rc) {
                cl_epoch_exit((void *)slot);
                break;
            }
            dev_rows += rdev;
            host_rows += rhost;
            staged_rows += st.rows;
            if (!partial)
                break;
        } else {
            cl_epoch_exit((void *)slot);
        }
        if (partial) {
            memcpy(s->todo, s->next, nnext * sizeof(*s->next));
            ntodo = nnext;
        }
        if ((rc = cl_fault(t, s->parts, nparts)))
            break;
    }
    cl_count(&c->session->gathers, 1);
    cl_count(&c->session->rows, n);
    cl_count(&c->session->hits, dev_rows + host_rows + staged_rows);
    cl_count(&c->session->device_rows, dev_rows);
    cl_count(&c->session->mapped_rows, host_rows);
    cl_count(&c->session->staged_rows, staged_rows);
    cl_count(&c->session->misses, misses);
    cl_count(&c->session->retries, retries);
    return rc;
}

int ec_client_topology(ec_client *c, char *buf, size_t len)
{
    struct devices x;
    size_t used;
    int rc;

    if (!c || !buf || !len)
        return ec_seterr(EC_EINVAL, "ec_client_topology: NULL argument");
    pthread_mutex_lock(&c->lock);
    rc = devices_get(c, &x);
    devices_done(&x);
    pthread_mutex_unlock(&c->lock);
    if (rc)
        return rc;
    used = (size_t)snprintf(buf, len, "%s; backend %s", x.line[0] ? x.line : "topology unknown",
                            x.backend);
    for (uint32_t i = 0; i < x.n; i++) {
        char tail[128];
        if (x.gpu[i].on)
            snprintf(tail, sizeof(tail), "; GPU %u: %llu MiB slab, NUMA node %d",
                     x.gpu[i].table, (unsigned long long)(x.gpu[i].bytes >> 20),
                     (int)x.gpu[i].node);
        else
            snprintf(tail, sizeof(tail), "; GPU %u: device tier off", x.gpu[i].table);
        if (used < len)
            used += (size_t)snprintf(buf + used, len - used, "%s", tail);
        else
            used += strlen(tail);
    }
    if (used >= len)
        return ec_seterr(EC_ETOOBIG, "the topology line needs %zu bytes", used + 1);
    return 0;
}
