/*
 * devtier.c - the daemon's device tier (see devtier.h).
 *
 * Per GPU: a slab from the backend, an extent allocator over it, a map of
 * what is resident with a CLOCK over it, and one promotion thread. The
 * server thread decides what to promote (ec_devtier_tick), allocates the
 * slab extent, and queues a job; the GPU's thread copies the partition from
 * the host segment into the slab (a DMA from registered memory with the
 * CUDA backend) and hands the job back; the next tick publishes it in the
 * device index if the host copy it was made from is still the published
 * one. A job holds the epoch it started in, so the host extent it reads
 * cannot be reclaimed under it (same rule as a client's gather).
 *
 * Limbo is one FIFO for host and device extents: tags only grow, so the
 * head is always the oldest and reclaim pops from the front.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/u64map.h"
#include "core/devtier.h"
#include "shm/extent.h"
#include "shm/index.h"

#define MIN_SLAB (64ull << 20)

struct djob {
    uint32_t tensor, part;
    uint64_t host_off;           /* from the data area */
    uint32_t length;
    uint64_t dev_off, dev_bytes;
    uint64_t epoch;              /* held while the copy runs */
    int rc;
    char msg[EC_ERRMSG_MAX];
    struct djob *next;
};

struct dres {
    uint64_t key, off, bytes;
    bool ref;
    size_t clock_pos;
};

struct dev {
    int ordinal;
    bool on;
    ec_slab slab;
    ec_extents *ext;
    ec_segment view;             /* this GPU's device index */
    uint64_t gen;
    int node;
    ec_u64map resident;          /* key -> struct dres */
    ec_u64map pending;           /* key -> struct djob, queued or copying */
    struct dres **clock;
    size_t nclock, capclock, hand;
    uint64_t used;

    pthread_t thr;
    bool thr_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct djob *q_head, *q_tail, *done; /* guarded by mu */
    bool stop;                   /* guarded by mu */
    const ec_backend *b;
    ec_segment *seg;
    const ec_topology *topo;

    struct {
        uint64_t promotions, promoted_bytes, evictions, evicted_bytes, failures, dropped;
    } st;
};

struct limbo {
    int dev;                     /* -1: host */
    uint64_t off, bytes, tag;
};

struct want {
    uint32_t tensor;
    uint64_t parts;
    uint64_t cursor[EC_SHM_MAX_DEVICES]; /* next partition, per GPU */
};

struct ec_devtier {
    ec_segment *seg;
    const ec_backend *b;
    ec_devtier_config cfg;
    unsigned ndev;
    struct dev dev[EC_SHM_MAX_DEVICES];
    bool active;
    ec_u64map heat;              /* key -> touches this tick (as a pointer) */
    struct want *want;
    size_t nwant, capwant;
    struct limbo *limbo;
    size_t lhead, ltail, lcap;   /* FIFO in [lhead, ltail) */
    uint64_t limbo_host, limbo_dev;
    uint64_t reclaimed;
};

/* ------------------------------------------------------------------ */
/* Promotion threads                                                   */

static void *promote_main(void *arg)
{
    struct dev *dv = arg;

    if (dv->topo && dv->node >= 0 && ec_topology_bind_thread(dv->topo, dv->node))
        ec_warn("GPU %d promotion thread not bound to NUMA node %d: %s", dv->ordinal, dv->node,
                ec_last_error());
    pthread_mutex_lock(&dv->mu);
    for (;;) {
        struct djob *j;
        while (!dv->q_head && !dv->stop)
            pthread_cond_wait(&dv->cv, &dv->mu);
        if (dv->stop)
            break;
        j = dv->q_head;
        dv->q_head = j->next;
        if (!dv->q_head)
            dv->q_tail = NULL;
        pthread_mutex_unlock(&dv->mu);
        j->rc = dv->b->slab_write(&dv->slab, j->dev_off, dv->seg->data + j->host_off, j->length);
        if (j->rc)
            snprintf(j->msg, sizeof(j->msg), "%s", ec_last_error());
        pthread_mutex_lock(&dv->mu);
        j->next = dv->done;
        dv->done = j;
    }
    pthread_mutex_unlock(&dv->mu);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Open / close                                                        */

static void publish_dev(ec_devtier *d, struct dev *dv)
{
    ec_shm_device *h = &d->seg->hdr->dev[dv->ordinal];

    atomic_store_explicit(&h->used_bytes, dv->used, memory_order_relaxed);
    atomic_store_explicit(&h->resident_partitions, dv->resident.len, memory_order_relaxed);
}

/* The slab for GPU `dev` by the rule in devtier.h ("Sizing"), logged with
 * why; 0: none fits, the GPU's tier stays off (logged too). */
static uint64_t slab_size(const ec_devtier *d, int dev)
{
    const uint64_t MiB = 1ull << 20, host = d->seg->data_size;
    bool deflt = d->cfg.slab_bytes == EC_DEVTIER_SLAB_AUTO;
    uint64_t total = 0, avail = 0, reserve, want, cap, bytes;
    char why[256];

    if (!d->b->device_memory || d->b->device_memory(dev, &total, &avail)) {
        const char *err = d->b->device_memory ? ec_last_error() : "the backend cannot tell";
        want = deflt ? (1ull << 30) : d->cfg.slab_bytes;
        bytes = (want < host ? want : host) / EC_SHM_PAGE * EC_SHM_PAGE;
        ec_warn("GPU %d: its free memory is unknown (%s): device-tier slab of %" PRIu64
                " MiB, %s", dev, err, bytes >> 20,
                deflt ? "the default without it (the smaller of 1 GiB and the segment's data "
                        "area); set --gpu-slab to choose"
                      : "as --gpu-slab asked (at most the segment's data area)");
        return bytes;
    }
    reserve = total / 16 > (1ull << 30) ? total / 16 : (1ull << 30);
    cap = avail > reserve ? avail - reserve : 0;
    want = deflt ? total / 16 : d->cfg.slab_bytes;
    if (deflt)
        snprintf(why, sizeof(why), "the default: 1/16 of the GPU's %" PRIu64 " MiB", total / MiB);
    else
        snprintf(why, sizeof(why), "as --gpu-slab asked");
    bytes = want;
    if (host < bytes) {
        bytes = host;
        snprintf(why + strlen(why), sizeof(why) - strlen(why),
                 ", cut to the segment's data area (%" PRIu64 " MiB: the tier holds only "
                 "partitions of the host tier)", host / MiB);
    }
    if (cap < bytes) {
        if (cap < MIN_SLAB && cap < want) {
            ec_warn("GPU %d: no device tier: %" PRIu64 " MiB of its %" PRIu64 " MiB are free "
                    "and %" PRIu64 " MiB stay free for the processes that use it (start "
                    "embcached before the framework, or free the GPU)",
                    dev, avail / MiB, total / MiB, reserve / MiB);
            return 0;
        }
        bytes = cap;
        snprintf(why + strlen(why), sizeof(why) - strlen(why),
                 ", cut to the GPU's free %" PRIu64 " MiB less %" PRIu64 " MiB kept free for "
                 "the processes that use it", avail / MiB, reserve / MiB);
    }
    bytes = bytes / EC_SHM_PAGE * EC_SHM_PAGE;
    ec_info("GPU %d: device-tier slab of %" PRIu64 " MiB: %s (%" PRIu64 " of %" PRIu64
            " MiB free)", dev, bytes / MiB, why, avail / MiB, total / MiB);
    return bytes;
}

static int dev_start(ec_devtier *d, struct dev *dv, uint64_t generation)
{
    ec_shm_device *h = &d->seg->hdr->dev[dv->ordinal];
    uint64_t bytes = slab_size(d, dv->ordinal);
    char busid[32] = "";
    int rc;

    if (d->b->device_busid && d->b->device_busid(dv->ordinal, busid, sizeof(busid)) == 0) {
        size_t n = strnlen(busid, sizeof(busid));
        if (n < sizeof(h->busid)) /* "0000:17:00.0"; a longer one is not published */
            memcpy(h->busid, busid, n + 1);
    }
    dv->node = -1;
    if (dv->topo && busid[0])
        dv->node = ec_topology_node_of_pci(dv->topo, busid);
    atomic_store_explicit(&h->numa_node, dv->node, memory_order_relaxed);
    if (!bytes)
        return EC_EDEVICE; /* slab_size said why */
    for (;;) {
        rc = d->b->slab_create(dv->ordinal, bytes, &dv->slab);
        if (rc == 0)
            break;
        if (bytes / 2 < MIN_SLAB) {
            ec_warn("GPU %d: no device tier: %s", dv->ordinal, ec_last_error());
            return rc;
        }
        ec_warn("GPU %d: a %" PRIu64 " MiB slab failed (%s); trying %" PRIu64 " MiB",
                dv->ordinal, bytes >> 20, ec_last_error(), bytes >> 21);
        bytes = bytes / 2 / EC_SHM_PAGE * EC_SHM_PAGE;
    }
    if ((rc = ec_extents_new(bytes, &dv->ext)) ||
        (rc = ec_segment_device_view(d->seg, (unsigned)dv->ordinal, bytes, &dv->view))) {
        d->b->slab_destroy(&dv->slab);
        return rc;
    }
    dv->view.index_used = 0; /* cleared at open */
    pthread_mutex_init(&dv->mu, NULL);
    pthread_cond_init(&dv->cv, NULL);
    if (pthread_create(&dv->thr, NULL, promote_main, dv)) {
        ec_warn("GPU %d: no device tier: cannot start its promotion thread", dv->ordinal);
        ec_extents_free(dv->ext);
        dv->ext = NULL;
        d->b->slab_destroy(&dv->slab);
        return EC_ENOMEM;
    }
    dv->thr_started = true;
    /* Slab generations: the daemon's generation in the high bits, so a
     * client holding a handle from an earlier daemon never matches. */
    dv->gen = generation << 8 | (uint64_t)(dv->ordinal + 1);
    atomic_store_explicit(&h->slab_size, bytes, memory_order_relaxed);
    atomic_store_explicit(&h->slab_gen, dv->gen, memory_order_release);
    dv->on = true;
    ec_info("GPU %d (%s, NUMA node %d): device tier of %" PRIu64 " MiB", dv->ordinal,
            busid[0] ? busid : "bus id unknown", dv->node, bytes >> 20);
    return 0;
}

/* May the daemon put a tier (and so a context of its own) on GPU `dev`?
 * Not in EXCLUSIVE_PROCESS compute mode, where that context would lock
 * every client out of the GPU, nor in PROHIBITED mode. Says why once. */
static bool gpu_usable(const ec_backend *b, int dev)
{
    ec_device_caps caps;

    if (!b->device_caps)
        return true;
    if (b->device_caps(dev, &caps)) {
        ec_warn("GPU %d: no device tier: %s", dev, ec_last_error());
        return false;
    }
    if (caps.exclusive_process) {
        ec_error("GPU %d is in EXCLUSIVE_PROCESS compute mode: the daemon's own context "
                 "would lock clients out, so it gets no device tier (clients read host "
                 "memory); run `nvidia-smi -i %d -c DEFAULT` as root and restart embcached "
                 "for a device tier, or start embcached with --gpu-slab 0 to silence this",
                 dev, dev);
        return false;
    }
    if (caps.prohibited) {
        ec_warn("GPU %d is in PROHIBITED compute mode: no device tier", dev);
        return false;
    }
    return true;
}

ec_devtier *ec_devtier_open(ec_segment *seg, const ec_backend *b, const ec_devtier_config *cfg,
                            uint64_t generation, const ec_topology *topo)
{
    ec_devtier *d = calloc(1, sizeof(*d));
    bool usable[EC_SHM_MAX_DEVICES] = {false};
    int ngpu, reg_dev;

    if (!d) {
        ec_warn("no device tier: out of memory");
        return NULL;
    }
    d->seg = seg;
    d->b = b;
    d->cfg = *cfg;
    if (!d->cfg.promote_touches)
        d->cfg.promote_touches = 2;
    if (!d->cfg.promote_bytes)
        d->cfg.promote_bytes = 256ull << 20;
    /* Whatever a previous daemon published points into slabs that died
     * with it. */
    for (unsigned i = 0; i < seg->hdr->device_tables; i++) {
        ec_segment v;
        atomic_store_explicit(&seg->hdr->dev[i].slab_gen, 0, memory_order_release);
        if (ec_segment_device_view(seg, i, 0, &v) == 0)
            ec_index_clear(&v);
        atomic_store_explicit(&seg->hdr->dev[i].used_bytes, 0, memory_order_relaxed);
        atomic_store_explicit(&seg->hdr->dev[i].resident_partitions, 0, memory_order_relaxed);
    }
    if (atomic_load_explicit(&seg->hdr->epoch, memory_order_relaxed) == 0)
        atomic_store_explicit(&seg->hdr->epoch, 1, memory_order_relaxed);
    ngpu = b && b->slab_create ? b->device_count() : 0;
    if (ngpu > 0 && cfg->slab_bytes == 0)
        ec_info("no device tier (--gpu-slab 0): the %d GPU(s) read rows from host memory", ngpu);
    if (ngpu <= 0 || cfg->slab_bytes == 0)
        return d;
    if ((unsigned)ngpu > seg->hdr->device_tables) {
        ec_warn("%d GPU(s) but the segment has device tables for %u: the others get no "
                "device tier (stop and start embcached once to re-create the segment)",
                ngpu, seg->hdr->device_tables);
        ngpu = (int)seg->hdr->device_tables;
    }
    /* GPUs where a context of the daemon would lock clients out get no
     * tier, and no context: nothing below touches them. */
    reg_dev = -1;
    for (int i = 0; i < ngpu; i++) {
        usable[i] = gpu_usable(b, i);
        if (usable[i] && reg_dev < 0)
            reg_dev = i;
    }
    if (reg_dev < 0)
        return d;
    if (b->host_register(seg->base, seg->size, false, reg_dev, NULL)) {
        ec_warn("no device tier: the segment cannot be registered with the GPUs: %s",
                ec_last_error());
        return d;
    }
    d->ndev = (unsigned)ngpu;
    for (int i = 0; i < ngpu; i++) {
        struct dev *dv = &d->dev[i];
        dv->ordinal = i;
        dv->b = b;
        dv->seg = seg;
        dv->topo = topo;
        dv->node = -1;
        if (usable[i] && dev_start(d, dv, generation) == 0)
            d->active = true;
    }
    if (!d->active) {
        b->host_unregister(seg->base);
        d->ndev = 0;
    }
    return d;
}

static void dev_free_maps(struct dev *dv)
{
    for (size_t i = 0; i < dv->nclock; i++)
        free(dv->clock[i]);
    free(dv->clock);
    dv->clock = NULL;
    dv->nclock = dv->capclock = 0;
    ec_u64map_free(&dv->resident);
}

static void dev_stop_thread(struct dev *dv)
{
    if (!dv->thr_started)
        return;
    pthread_mutex_lock(&dv->mu);
    dv->stop = true;
    pthread_cond_signal(&dv->cv);
    pthread_mutex_unlock(&dv->mu);
    pthread_join(dv->thr, NULL);
    dv->thr_started = false;
    for (struct djob *j = dv->q_head, *n; j; j = n) {
        n = j->next;
        free(j);
    }
    for (struct djob *j = dv->done, *n; j; j = n) {
        n = j->next;
        free(j);
    }
    dv->q_head = dv->q_tail = dv->done = NULL;
    ec_u64map_free(&dv->pending);
    pthread_mutex_destroy(&dv->mu);
    pthread_cond_destroy(&dv->cv);
}

void ec_devtier_close(ec_devtier *d)
{
    if (!d)
        return;
    for (unsigned i = 0; i < d->ndev; i++) {
        struct dev *dv = &d->dev[i];
        dev_stop_thread(dv);
        if (dv->ext) {
            atomic_store_explicit(&d->seg->hdr->dev[i].slab_gen, 0, memory_order_release);
            ec_index_clear(&dv->view);
            d->b->slab_destroy(&dv->slab);
            ec_extents_free(dv->ext);
        }
        dev_free_maps(dv);
    }
    if (d->active)
        d->b->host_unregister(d->seg->base);
    ec_u64map_free(&d->heat);
    free(d->want);
    free(d->limbo);
    free(d);
}

bool ec_devtier_active(const ec_devtier *d)
{
    return d && d->active;
}

unsigned ec_devtier_devices(const ec_devtier *d)
{
    return d ? d->ndev : 0;
}

int ec_devtier_info_get(const ec_devtier *d, unsigned dev, ec_devtier_info *out)
{
    const struct dev *dv;

    if (!d || dev >= d->ndev || !out)
        return ec_seterr(EC_EINVAL, "no GPU %u in the device tier", dev);
    dv = &d->dev[dev];
    memset(out, 0, sizeof(*out));
    out->device = dv->ordinal;
    out->on = dv->on;
    out->slab_gen = dv->on ? dv->gen : 0;
    out->slab_bytes = dv->on ? dv->slab.bytes : 0;
    out->used_bytes = dv->used;
    out->partitions = dv->resident.len;
    out->numa_node = dv->node;
    memcpy(out->busid, d->seg->hdr->dev[dev].busid, sizeof(out->busid));
    out->busid[sizeof(out->busid) - 1] = '\0';
    memcpy(out->handle, dv->slab.handle, sizeof(out->handle));
    out->fd = dv->on ? dv->slab.fd : -1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Limbo and epochs                                                    */

uint64_t ec_devtier_epoch_bump(ec_devtier *d)
{
    uint64_t e = atomic_fetch_add_explicit(&d->seg->hdr->epoch, 1, memory_order_seq_cst) + 1;

    atomic_thread_fence(memory_order_seq_cst);
    return e;
}

static void limbo_push(ec_devtier *d, int dev, uint64_t off, uint64_t bytes, uint64_t tag)
{
    if (d->ltail == d->lcap) {
        if (d->lhead > 0) {
            memmove(d->limbo, d->limbo + d->lhead, (d->ltail - d->lhead) * sizeof(*d->limbo));
            d->ltail -= d->lhead;
            d->lhead = 0;
        }
        if (d->ltail == d->lcap) {
            size_t cap = d->lcap ? d->lcap * 2 : 256;
            struct limbo *l = realloc(d->limbo, cap * sizeof(*l));
            if (!l) {
                /* Cannot defer: leak the extent rather than free it under a
                 * reader. It comes back with the next daemon. */
                ec_error("out of memory for the reclamation list: %" PRIu64 " bytes are "
                         "lost until embcached restarts", bytes);
                return;
            }
            d->limbo = l;
            d->lcap = cap;
        }
    }
    d->limbo[d->ltail++] = (struct limbo){.dev = dev, .off = off, .bytes = bytes, .tag = tag};
    if (dev < 0)
        d->limbo_host += bytes;
    else
        d->limbo_dev += bytes;
}

void ec_devtier_retire_host(ec_devtier *d, uint64_t off, uint64_t bytes, uint64_t tag)
{
    limbo_push(d, -1, off, bytes, tag);
}

uint64_t ec_devtier_limbo_host_bytes(const ec_devtier *d)
{
    return d ? d->limbo_host : 0;
}

uint64_t ec_devtier_limbo_oldest(const ec_devtier *d)
{
    return d && d->lhead < d->ltail ? d->limbo[d->lhead].tag : UINT64_MAX;
}

/* The least epoch a promotion copy holds. */
static uint64_t jobs_min_epoch(ec_devtier *d)
{
    uint64_t m = UINT64_MAX;

    for (unsigned i = 0; i < d->ndev; i++) {
        ec_u64map *p = &d->dev[i].pending;
        for (size_t k = 0; k < p->cap; k++)
            if (p->keys[k]) {
                const struct djob *j = p->vals[k];
                if (j->epoch < m)
                    m = j->epoch;
            }
    }
    return m;
}

uint64_t ec_devtier_reclaim(ec_devtier *d, uint64_t min_active,
                            void (*free_host)(void *arg, uint64_t off, uint64_t bytes),
                            void *arg)
{
    uint64_t freed = 0, jm;

    if (!d || d->lhead == d->ltail)
        return 0;
    jm = jobs_min_epoch(d);
    if (jm < min_active)
        min_active = jm;
    while (d->lhead < d->ltail && d->limbo[d->lhead].tag <= min_active) {
        struct limbo *l = &d->limbo[d->lhead++];
        if (l->dev < 0) {
            free_host(arg, l->off, l->bytes);
            d->limbo_host -= l->bytes;
        } else {
            struct dev *dv = &d->dev[l->dev];
            if (dv->ext && ec_extent_release(dv->ext, l->off, l->bytes) == 0)
                dv->used -= l->bytes;
            d->limbo_dev -= l->bytes;
        }
        freed += l->bytes;
    }
    if (d->lhead == d->ltail)
        d->lhead = d->ltail = 0;
    d->reclaimed += freed;
    return freed;
}

/* ------------------------------------------------------------------ */
/* Residency on one GPU                                                */

static void clock_remove(struct dev *dv, struct dres *r)
{
    size_t i = r->clock_pos;

    dv->clock[i] = dv->clock[--dv->nclock];
    dv->clock[i]->clock_pos = i;
    if (dv->hand > dv->nclock)
        dv->hand = 0;
}

/* Remove a device entry; its extent goes to limbo. */
static void dres_drop(ec_devtier *d, struct dev *dv, struct dres *r)
{
    ec_index_remove(&dv->view, EC_INDEX_KEY_TENSOR(r->key), EC_INDEX_KEY_PART(r->key), NULL,
                    NULL);
    ec_u64map_del(&dv->resident, r->key);
    clock_remove(dv, r);
    limbo_push(d, dv->ordinal, r->off, r->bytes, ec_devtier_epoch_bump(d));
    free(r);
}

static int evict_dev(ec_devtier *d, struct dev *dv)
{
    for (size_t steps = 0; steps < 2 * dv->nclock + 1 && dv->nclock; steps++) {
        struct dres *r;
        if (dv->hand >= dv->nclock)
            dv->hand = 0;
        r = dv->clock[dv->hand];
        if (!r->ref) {
            dv->st.evictions++;
            dv->st.evicted_bytes += r->bytes;
            dres_drop(d, dv, r); /* frees r */
            return 0;
        }
        r->ref = false;
        dv->hand++;
    }
    return EC_ENOSPC;
}

/* Turn a GPU's tier off after a device error: clients see slab_gen 0 and
 * read the host tier; extents stay allocated until close. */
static void dev_off(ec_devtier *d, struct dev *dv, const char *why)
{
    ec_error("GPU %d: device tier turned off: %s; rows are served from host memory",
             dv->ordinal, why);
    dv->on = false;
    atomic_store_explicit(&d->seg->hdr->dev[dv->ordinal].slab_gen, 0, memory_order_release);
    ec_index_clear(&dv->view);
    while (dv->nclock) {
        struct dres *r = dv->clock[dv->nclock - 1];
        ec_u64map_del(&dv->resident, r->key);
        dv->nclock--;
        free(r);
    }
    publish_dev(d, dv);
}

void ec_devtier_drop(ec_devtier *d, uint32_t tensor, uint32_t part)
{
    uint64_t key = EC_INDEX_KEY(tensor, part);

    if (!d || !d->active)
        return;
    for (unsigned i = 0; i < d->ndev; i++) {
        struct dev *dv = &d->dev[i];
        struct dres *r = dv->on ? ec_u64map_get(&dv->resident, key) : NULL;
        if (r) {
            dres_drop(d, dv, r);
            dv->st.dropped++;
        }
    }
    ec_u64map_del(&d->heat, key);
}

void ec_devtier_touch(ec_devtier *d, uint64_t key)
{
    uintptr_t n;

    if (!d || !d->active)
        return;
    for (unsigned i = 0; i < d->ndev; i++) {
        struct dres *r = ec_u64map_get(&d->dev[i].resident, key);
        if (r)
            r->ref = true;
    }
    n = (uintptr_t)ec_u64map_get(&d->heat, key);
    ec_u64map_put(&d->heat, key, (void *)(n + 1));
}

void ec_devtier_want(ec_devtier *d, const uint32_t *tensors, uint32_t n, const uint64_t *parts)
{
    if (!d || !d->active)
        return;
    for (uint32_t i = 0; i < n; i++) {
        if (d->nwant == d->capwant) {
            size_t cap = d->capwant ? d->capwant * 2 : 16;
            struct want *w = realloc(d->want, cap * sizeof(*w));
            if (!w)
                return;
            d->want = w;
            d->capwant = cap;
        }
        memset(&d->want[d->nwant], 0, sizeof(d->want[0]));
        d->want[d->nwant].tensor = tensors[i];
        d->want[d->nwant++].parts = parts[i];
    }
}

/* Queue a copy of (tensor, part) to one GPU. 1: queued; 0: nothing to do
 * (already there or not in the host tier); < 0: no room. */
static int promote(ec_devtier *d, struct dev *dv, uint32_t tensor, uint32_t part,
                   uint64_t *budget)
{
    uint64_t key = EC_INDEX_KEY(tensor, part), off;
    ec_index_ref ref;
    struct djob *j;
    int rc;

    if (ec_u64map_get(&dv->resident, key) || ec_u64map_get(&dv->pending, key))
        return 0;
    if (!ec_index_lookup(d->seg, tensor, part, &ref))
        return 0;
    if (ref.length > *budget)
        return EC_ENOSPC;
    while ((rc = ec_extent_alloc(dv->ext, ref.length, &off)) == EC_ENOSPC)
        if (evict_dev(d, dv))
            return EC_ENOSPC;
    if (rc)
        return rc;
    j = calloc(1, sizeof(*j));
    if (!j) {
        ec_extent_release(dv->ext, off, ref.length);
        return EC_ENOMEM;
    }
    *j = (struct djob){.tensor = tensor, .part = part, .host_off = ref.offset,
                       .length = ref.length, .dev_off = off,
                       .dev_bytes = (ref.length + EC_SHM_PAGE - 1) / EC_SHM_PAGE * EC_SHM_PAGE,
                       .epoch = atomic_load_explicit(&d->seg->hdr->epoch, memory_order_seq_cst)};
    /* Announce before re-checking, as a client does: the entry we copy
     * must still be the published one after the epoch is held. */
    atomic_thread_fence(memory_order_seq_cst);
    if (!ec_index_still_valid(&ref) || ec_u64map_put(&dv->pending, key, j)) {
        ec_extent_release(dv->ext, off, ref.length);
        free(j);
        return 0;
    }
    dv->used += j->dev_bytes;
    *budget -= ref.length;
    pthread_mutex_lock(&dv->mu);
    if (dv->q_tail)
        dv->q_tail->next = j;
    else
        dv->q_head = j;
    dv->q_tail = j;
    pthread_cond_signal(&dv->cv);
    pthread_mutex_unlock(&dv->mu);
    return 1;
}

/* Publish the copies the GPU's thread finished. */
static void collect(ec_devtier *d, struct dev *dv)
{
    struct djob *done;

    pthread_mutex_lock(&dv->mu);
    done = dv->done;
    dv->done = NULL;
    pthread_mutex_unlock(&dv->mu);
    while (done) {
        struct djob *j = done;
        uint64_t key = EC_INDEX_KEY(j->tensor, j->part);
        ec_index_ref ref;
        struct dres *r = NULL;
        bool ok;

        done = j->next;
        ec_u64map_del(&dv->pending, key);
        /* The copy is good if the host entry it was made from is still the
         * published one: its extent could not have been reused while this
         * job held its epoch. */
        ok = j->rc == 0 && dv->on && ec_index_lookup(d->seg, j->tensor, j->part, &ref) &&
             ref.offset == j->host_off && ref.length == j->length;
        if (ok && (r = calloc(1, sizeof(*r))) &&
            ec_index_insert(&dv->view, j->tensor, j->part, j->dev_off, j->length) == 0) {
            *r = (struct dres){.key = key, .off = j->dev_off, .bytes = j->dev_bytes,
                               .ref = true};
            if (ec_u64map_put(&dv->resident, key, r) == 0) {
                if (dv->nclock == dv->capclock) {
                    size_t cap = dv->capclock ? dv->capclock * 2 : 256;
                    struct dres **c = realloc(dv->clock, cap * sizeof(*c));
                    if (c) {
                        dv->clock = c;
                        dv->capclock = cap;
                    }
                }
                if (dv->nclock < dv->capclock) {
                    r->clock_pos = dv->nclock;
                    dv->clock[dv->nclock++] = r;
                    dv->st.promotions++;
                    dv->st.promoted_bytes += j->length;
                    free(j);
                    continue;
                }
                ec_u64map_del(&dv->resident, key);
            }
            ec_index_remove(&dv->view, j->tensor, j->part, NULL, NULL);
            /* Published for an instant: a reader may hold it. */
            limbo_push(d, dv->ordinal, j->dev_off, j->dev_bytes, ec_devtier_epoch_bump(d));
            free(r);
            free(j);
            continue;
        }
        free(r);
        if (j->rc) {
            dv->st.failures++;
            if (j->rc == EC_EDEVICE && dv->on)
                dev_off(d, dv, j->msg);
            else if (dv->st.failures == 1)
                ec_warn("GPU %d: promotion failed: %s", dv->ordinal, j->msg);
        }
        /* Never published: no reader can hold it. */
        if (ec_extent_release(dv->ext, j->dev_off, j->dev_bytes) == 0)
            dv->used -= j->dev_bytes;
        free(j);
    }
}

void ec_devtier_tick(ec_devtier *d, uint64_t min_active)
{
    (void)min_active;
    if (!d || !d->active)
        return;
    for (unsigned i = 0; i < d->ndev; i++) {
        struct dev *dv = &d->dev[i];
        uint64_t budget = d->cfg.promote_bytes;

        collect(d, dv);
        if (!dv->on)
            continue;
        /* Wanted tensors first (an explicit prewarm), in order. */
        for (size_t w = 0; w < d->nwant && budget; w++) {
            struct want *wt = &d->want[w];
            while (wt->cursor[i] < wt->parts) {
                int rc = promote(d, dv, wt->tensor, (uint32_t)wt->cursor[i], &budget);
                if (rc < 0)
                    break;
                wt->cursor[i]++;
            }
        }
        /* Then partitions clients touched often in the last tick. */
        for (size_t k = 0; k < d->heat.cap && budget; k++) {
            uint64_t key = d->heat.keys[k];
            if (key && (uintptr_t)d->heat.vals[k] >= d->cfg.promote_touches)
                if (promote(d, dv, EC_INDEX_KEY_TENSOR(key), EC_INDEX_KEY_PART(key),
                            &budget) < 0)
                    break;
        }
        publish_dev(d, dv);
    }
    /* A want is one pass over a tensor per GPU: done once every GPU that
     * is on has been through it (a partition not in the host tier then is
     * skipped, not paged in for the GPU). */
    {
        size_t k = 0;
        for (size_t w = 0; w < d->nwant; w++) {
            bool left = false;
            for (unsigned i = 0; i < d->ndev; i++)
                left |= d->dev[i].on && d->want[w].cursor[i] < d->want[w].parts;
            if (left)
                d->want[k++] = d->want[w];
        }
        d->nwant = k;
    }
    ec_u64map_free(&d->heat);
}

int ec_devtier_stats(const ec_devtier *d, int (*cb)(const char *name, uint64_t v, void *arg),
                     void *arg)
{
    char name[64];
    int rc;

#define S(fmt, i, v)                                                                          \
    do {                                                                                      \
        snprintf(name, sizeof(name), fmt, i);                                                 \
        if ((rc = cb(name, (v), arg)))                                                        \
            return rc;                                                                        \
    } while (0)
    if (!d)
        return 0;
    if ((rc = cb("device_tier_gpus", d->ndev, arg)) ||
        (rc = cb("limbo_host_bytes", d->limbo_host, arg)) ||
        (rc = cb("limbo_device_bytes", d->limbo_dev, arg)) ||
        (rc = cb("reclaimed_bytes", d->reclaimed, arg)) ||
        (rc = cb("epoch", atomic_load_explicit(&d->seg->hdr->epoch, memory_order_relaxed),
                 arg)))
        return rc;
    for (unsigned i = 0; i < d->ndev; i++) {
        const struct dev *dv = &d->dev[i];
        S("device%u_on", i, dv->on);
        S("device%u_slab_bytes", i, dv->on ? dv->slab.bytes : 0);
        S("device%u_used_bytes", i, dv->used);
        S("device%u_resident_partitions", i, dv->resident.len);
        S("device%u_promotions", i, dv->st.promotions);
        S("device%u_promoted_bytes", i, dv->st.promoted_bytes);
        S("device%u_evictions", i, dv->st.evictions);
        S("device%u_evicted_bytes", i, dv->st.evicted_bytes);
        S("device%u_dropped", i, dv->st.dropped);
        S("device%u_copy_failures", i, dv->st.failures);
        S("device%u_numa_node_plus1", i, (uint64_t)(dv->node + 1));
    }
#undef S
    return 0;
}
