/*
 * backend_emu.c - a GPU emulator for tests: EMBCACHE_BACKEND=emu, with
 * EMBCACHE_EMU_GPUS=N "GPUs" (default 1).
 *
 * Everything a GPU backend does, done with host memory, so the device tier
 * (promotion, eviction, device indexes, slab generations, epoch-protected
 * reads, the DEVICES exchange) runs and is tested on machines without a
 * GPU, CI included. A slab is a memfd the daemon maps read-write and hands
 * to clients as a descriptor (where CUDA hands an IPC handle); clients map
 * it read-only. A "device pointer" is a host pointer, so outputs on an
 * emulated GPU are host buffers, and check_ptr cannot tell devices apart.
 * It is never chosen by AUTO.
 *
 * Like a GPU, it can complete gathers asynchronously: with
 * EMBCACHE_EMU_ASYNC_US=N a gather to a "GPU" returns at once and a thread
 * copies the rows N microseconds later, then runs the completion, so the
 * epoch protection of device reads is exercised by reads that really
 * happen after the call returned. A "stream" is then an _Atomic int that
 * counts the gathers queued on it and not yet complete (NULL: none):
 * synchronizing it is waiting for 0.
 * EMBCACHE_EMU_FAIL_WRITES=N makes every slab write after the first N fail
 * with EC_EDEVICE, as a GPU that fell off the bus does.
 *
 * Conditions of real GPUs and drivers, for the decisions made on them:
 *  - EMBCACHE_EMU_NO_READONLY_REGISTER=1: cudaDevAttrHostRegisterReadOnly-
 *    Supported is 0, and a read-only registration fails as CUDA's does
 *    (clients must check the attribute and stage host rows instead);
 *  - EMBCACHE_EMU_REGISTER_FAIL=1: a read-only registration fails although
 *    the attribute says it is supported;
 *  - EMBCACHE_REGISTER_MAX=bytes (backend.h): registrations go in chunks,
 *    and each chunk of a client's mapping gets its own "device address": an
 *    alias of its pages (mremap of size 0) in a slot of its own, with a
 *    guard page between slots, so code that assumed the chunks contiguous
 *    on the device would read the guard page;
 *  - EMBCACHE_EMU_CAPTURING=1: every stream is being captured into a graph;
 *  - EMBCACHE_EMU_EXCLUSIVE=1: every GPU is in EXCLUSIVE_PROCESS compute
 *    mode;
 *  - EMBCACHE_EMU_NO_STREAM_WRITE=1: the GPU cannot write host memory from
 *    a stream (CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS is 0).
 * A gather's release word (ec_gather_desc.release_dev) is written through
 * its "device address", which must lie in a registration of the caller's:
 * writable registrations always get an alias of their own (as chunked ones
 * do), so a host address passed for a device one is refused, not
 * silently right.
 * The staging buffer (stage_get) is a per-thread host buffer that waits,
 * like CUDA's event, for the thread's asynchronous gathers to complete.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/units.h"
#include "cuda/backend.h"

static bool env_on(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

/* Per thread: gathers queued asynchronously and not complete (what CUDA's
 * event after the launch tells), and the staging buffers they may read.
 * Heap-allocated and reference-counted: an asynchronous gather may finish
 * after its thread exited. */
struct emu_thread {
    _Atomic int refs;
    _Atomic int inflight;
    void *stage[EC_BACKEND_MAX_DEVICES];
    size_t stage_cap[EC_BACKEND_MAX_DEVICES];
    uint8_t *status;       /* resolve_gather: statuses, partitions, and the */
    size_t status_cap;     /* rows to copy; grown as needed */
};

static pthread_key_t et_key;
static pthread_once_t et_once = PTHREAD_ONCE_INIT;

static void et_unref(struct emu_thread *t)
{
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (unsigned i = 0; i < EC_BACKEND_MAX_DEVICES; i++)
        free(t->stage[i]);
    free(t->status);
    free(t);
}

static void et_destroy(void *p)
{
    struct emu_thread *t = p;

    /* The staging buffers may still be read: wait, as CUDA would. */
    while (atomic_load_explicit(&t->inflight, memory_order_acquire) > 0)
        usleep(10);
    et_unref(t);
}

static void et_make(void)
{
    (void)pthread_key_create(&et_key, et_destroy);
}

static struct emu_thread *et_get(void)
{
    struct emu_thread *t;

    pthread_once(&et_once, et_make);
    t = pthread_getspecific(et_key);
    if (!t && (t = calloc(1, sizeof(*t)))) {
        atomic_init(&t->refs, 1);
        if (pthread_setspecific(et_key, t)) {
            free(t);
            t = NULL;
        }
    }
    return t;
}

static int emu_device_count(void)
{
    const char *env = getenv("EMBCACHE_EMU_GPUS");
    long n = env ? strtol(env, NULL, 10) : 1;

    return n < 0 ? 0 : n > 8 ? 8 : (int)n;
}

struct async_gather {
    ec_gather_desc g;
    struct emu_thread *thr; /* the launching thread's, referenced */
    unsigned delay_us;
    size_t *rows;      /* copies: the caller's arrays are its scratch */
    const void *src[];
};

static void stream_done(void *stream)
{
    if (stream)
        atomic_fetch_sub_explicit((_Atomic int *)stream, 1, memory_order_release);
}

static _Atomic long stream_writes;

long ec_backend_emu_stream_writes(void)
{
    return atomic_load(&stream_writes);
}

/* The emulated stream write of a gather's release word: through its
 * "device address" (an alias of the registered page). */
static void release_write(uint64_t release_dev)
{
    atomic_store_explicit((_Atomic uint64_t *)(uintptr_t)release_dev, 0, memory_order_release);
    atomic_fetch_add(&stream_writes, 1);
}

static void *async_main(void *arg)
{
    struct async_gather *a = arg;
    void (*done)(void *) = a->g.done;
    void *done_arg = a->g.done_arg;

    usleep(a->delay_us);
    a->g.done = NULL;
    if (ec_cpu_gather(&a->g))
        fprintf(stderr, "emulated GPU gather failed: %s\n", ec_last_error());
    if (a->g.release_dev)
        release_write(a->g.release_dev);
    else if (done)
        done(done_arg);
    stream_done(a->g.stream);
    if (a->thr) {
        atomic_fetch_sub_explicit(&a->thr->inflight, 1, memory_order_release);
        et_unref(a->thr);
    }
    free(a);
    return NULL;
}

static bool release_dev_ok(uint64_t dev);

static int emu_gather(const ec_gather_desc *g)
{
    const char *env = getenv("EMBCACHE_EMU_ASYNC_US");
    ec_gather_desc h = *g;
    int rc;

    if (g->device < 0)
        return ec_cpu_gather(g);
    if (g->device >= emu_device_count())
        return ec_seterr(EC_EINVAL, "output device %d does not exist (%d emulated GPU(s))",
                         g->device, emu_device_count());
    h.device = -1;
    if (g->release_dev && !release_dev_ok(g->release_dev))
        return ec_seterr(EC_EINVAL, "emulated GPU %d: the release word's device address "
                                    "0x%llx is in no registration of this process", g->device,
                         (unsigned long long)g->release_dev);
    if (env) {
        struct async_gather *a =
            malloc(sizeof(*a) + g->n * (sizeof(a->src[0]) + sizeof(size_t)));
        pthread_attr_t at;
        pthread_t t;
        if (!a)
            return ec_seterr(EC_ENOMEM, "emulated asynchronous gather");
        memcpy(a->src, g->src, g->n * sizeof(a->src[0]));
        a->g = h;
        a->g.src = a->src;
        a->rows = (size_t *)(a->src + g->n);
        if (g->dst_rows) {
            memcpy(a->rows, g->dst_rows, g->n * sizeof(size_t));
            a->g.dst_rows = a->rows;
        }
        a->delay_us = (unsigned)strtoul(env, NULL, 10);
        a->thr = et_get();
        if (a->thr) {
            atomic_fetch_add_explicit(&a->thr->refs, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&a->thr->inflight, 1, memory_order_relaxed);
        }
        if (g->stream)
            atomic_fetch_add_explicit((_Atomic int *)g->stream, 1, memory_order_relaxed);
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&t, &at, async_main, a);
        pthread_attr_destroy(&at);
        if (rc) {
            stream_done(g->stream);
            if (a->thr) {
                atomic_fetch_sub_explicit(&a->thr->inflight, 1, memory_order_release);
                et_unref(a->thr);
            }
            free(a);
            return ec_seterr(EC_ENOMEM, "emulated asynchronous gather: no thread");
        }
        return 0;
    }
    if (!h.release_dev)
        return ec_cpu_gather(&h); /* calls done */
    h.done = NULL;
    if ((rc = ec_cpu_gather(&h)))
        return rc;
    release_write(h.release_dev);
    return 0;
}

/* The resolve kernel, run on the host with the code the GPU runs
 * (cuda/resolve.h), through the registrations' "device addresses". In
 * order on the stream: after the gathers queued on it. */
static int emu_resolve_gather(const ec_resolve_args *a, ec_dtype src_dtype, ec_dtype dst_dtype,
                              int device, void *stream, const uint8_t **status,
                              const uint32_t **parts)
{
    struct emu_thread *t = et_get();
    _Atomic int *queued = stream;
    size_t per = 1 + sizeof(uint32_t) + sizeof(void *) + sizeof(size_t), m = 0;
    uint32_t *pt;
    const void **src;
    size_t *rows;
    int rc;

    if (device < 0 || device >= emu_device_count())
        return ec_seterr(EC_EINVAL, "output device %d does not exist (%d emulated GPU(s))",
                         device, emu_device_count());
    if (!t)
        return ec_seterr(EC_ENOMEM, "emulated resolve");
    if (a->n > t->status_cap) {
        uint8_t *p = malloc(a->n * per + 16);
        if (!p)
            return ec_seterr(EC_ENOMEM, "emulated resolve of %llu rows",
                             (unsigned long long)a->n);
        free(t->status);
        t->status = p;
        t->status_cap = a->n;
    }
    /* Statuses, then (8-byte aligned) row addresses, output rows, parts. */
    src = (const void **)(t->status + (t->status_cap + 7) / 8 * 8);
    rows = (size_t *)(src + t->status_cap);
    pt = (uint32_t *)(rows + t->status_cap);
    while (queued && atomic_load(queued) > 0)
        usleep(10);
    for (uint64_t i = 0; i < a->n; i++) {
        uint64_t at = 0;
        uint32_t part = 0;
        unsigned st = ec_rs_find(a, a->ids[i], &at, &part);
        t->status[i] = (uint8_t)st;
        pt[i] = part;
        if (st == EC_RS_DEVICE || st == EC_RS_HOST) {
            src[m] = (const void *)(uintptr_t)at;
            rows[m++] = (size_t)i;
        }
    }
    {
        ec_gather_desc g = {.src = src, .n = m, .row_bytes = a->row_bytes,
                            .src_dtype = src_dtype, .dst_dtype = dst_dtype, .dst = a->dst,
                            .dst_rows = rows, .device = -1};
        if ((rc = ec_cpu_gather(&g)))
            return rc;
    }
    *status = t->status;
    *parts = pt;
    return 0;
}

static int emu_copy_to_host(void *dst, const void *src, size_t n, int device, void *stream)
{
    (void)device;
    (void)stream;
    memcpy(dst, src, n);
    return 0;
}

static int emu_copy_to_device(void *dst, const void *src, size_t n, int device, void *stream)
{
    _Atomic int *queued = stream;

    (void)device;
    /* In order on the stream: after the gathers queued on it. */
    while (queued && atomic_load(queued) > 0)
        usleep(10);
    memcpy(dst, src, n);
    return 0;
}

static int emu_busid(int device, char *buf, size_t len)
{
    (void)buf;
    (void)len;
    return ec_seterr(EC_EINVAL, "emulated GPU %d has no PCI bus id", device);
}

static int emu_device_caps(int device, ec_device_caps *out)
{
    if (device < 0 || device >= emu_device_count())
        return ec_seterr(EC_EINVAL, "emulated GPU %d does not exist", device);
    memset(out, 0, sizeof(*out));
    out->readonly_register = !env_on("EMBCACHE_EMU_NO_READONLY_REGISTER");
    out->exclusive_process = env_on("EMBCACHE_EMU_EXCLUSIVE");
    out->stream_write = !env_on("EMBCACHE_EMU_NO_STREAM_WRITE");
    return 0;
}

static int emu_stream_capturing(int device, void *stream)
{
    (void)device;
    (void)stream;
    return env_on("EMBCACHE_EMU_CAPTURING") ? 1 : 0;
}

/* Registrations, as CUDA keeps them: by base address. A client's mapping
 * in more than one chunk gets per-chunk aliases (see the top). */
struct emu_reg {
    void *base;
    size_t len;
    ec_host_map map;
    void *region;          /* the aliases' reservation, or NULL */
    size_t region_len;
    struct emu_reg *next;
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct emu_reg *regs;
static _Atomic long ro_registrations;

long ec_backend_emu_readonly_registrations(void)
{
    return atomic_load(&ro_registrations);
}

/* Bytes of chunk k of a registration (the last may be shorter). */
static size_t chunk_len(const struct emu_reg *r, uint32_t k)
{
    uint64_t off = (uint64_t)k * r->map.chunk;

    return r->len - off < r->map.chunk ? r->len - off : r->map.chunk;
}

static int reg_aliases(struct emu_reg *r)
{
    size_t slot = r->map.chunk + 4096; /* a guard page after each */

    r->region_len = slot * r->map.n;
    r->region = mmap(NULL, r->region_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r->region == MAP_FAILED) {
        r->region = NULL;
        return ec_seterr_errno(EC_EDEVICE, errno, "emulated registration: reserving aliases");
    }
    /* In reverse order: chunk k+1's alias is below chunk k's. */
    for (uint32_t k = 0; k < r->map.n; k++) {
        void *want = (uint8_t *)r->region + (size_t)(r->map.n - 1 - k) * slot;
        void *p = mremap((uint8_t *)r->base + (uint64_t)k * r->map.chunk, 0, chunk_len(r, k),
                         MREMAP_MAYMOVE | MREMAP_FIXED, want);
        if (p == MAP_FAILED) {
            munmap(r->region, r->region_len);
            r->region = NULL;
            return ec_seterr_errno(EC_EDEVICE, errno, "emulated registration: aliasing "
                                                      "chunk %u", k);
        }
        r->map.dev[k] = p;
    }
    return 0;
}

static int emu_host_register(void *base, size_t len, bool readonly, int device,
                             ec_host_map *map_out)
{
    uint64_t chunk = ec_host_register_max();
    struct emu_reg *r;
    int rc = 0;

    if (readonly)
        atomic_fetch_add(&ro_registrations, 1);
    if (readonly && env_on("EMBCACHE_EMU_NO_READONLY_REGISTER"))
        return ec_seterr(EC_EDEVICE, "registering the shared segment on GPU %d failed: "
                                     "operation not supported (cudaErrorNotSupported; "
                                     "emulated: EMBCACHE_EMU_NO_READONLY_REGISTER)", device);
    if (readonly && env_on("EMBCACHE_EMU_REGISTER_FAIL"))
        return ec_seterr(EC_EDEVICE, "registering the shared segment on GPU %d failed: "
                                     "out of memory (cudaErrorMemoryAllocation; emulated: "
                                     "EMBCACHE_EMU_REGISTER_FAIL)", device);
    if ((len + chunk - 1) / chunk > EC_HOST_MAP_MAX)
        return ec_seterr(EC_EDEVICE, "registering %zu bytes in chunks of %llu needs more than "
                                     "%u registrations", len, (unsigned long long)chunk,
                         EC_HOST_MAP_MAX);
    pthread_mutex_lock(&reg_mu);
    for (r = regs; r && r->base != base; r = r->next)
        ;
    if (!r) {
        if (!(r = calloc(1, sizeof(*r)))) {
            pthread_mutex_unlock(&reg_mu);
            return ec_seterr(EC_ENOMEM, "emulated registration");
        }
        r->base = base;
        r->len = len;
        r->map.chunk = chunk;
        r->map.len = len;
        r->map.n = (uint32_t)((len + chunk - 1) / chunk);
        for (uint32_t k = 0; k < r->map.n; k++)
            r->map.dev[k] = (uint8_t *)base + (uint64_t)k * chunk;
        if ((r->map.n > 1 || !readonly) && map_out && (rc = reg_aliases(r))) {
            pthread_mutex_unlock(&reg_mu);
            free(r);
            return rc;
        }
        r->next = regs;
        regs = r;
    }
    if (map_out)
        *map_out = r->map;
    pthread_mutex_unlock(&reg_mu);
    return 0;
}

/* Does [dev, dev + 8) lie in one chunk's device address range of a
 * registration? */
static bool release_dev_ok(uint64_t dev)
{
    bool ok = false;

    pthread_mutex_lock(&reg_mu);
    for (struct emu_reg *r = regs; r && !ok; r = r->next)
        for (uint32_t k = 0; k < r->map.n && !ok; k++) {
            uint64_t lo = (uint64_t)(uintptr_t)r->map.dev[k];
            ok = dev >= lo && dev + 8 <= lo + chunk_len(r, k) && dev % 8 == 0;
        }
    pthread_mutex_unlock(&reg_mu);
    return ok;
}

static void emu_host_unregister(void *base)
{
    struct emu_reg **pp, *r;

    pthread_mutex_lock(&reg_mu);
    for (pp = &regs; *pp && (*pp)->base != base; pp = &(*pp)->next)
        ;
    r = *pp;
    if (r)
        *pp = r->next;
    pthread_mutex_unlock(&reg_mu);
    if (!r)
        return;
    if (r->region)
        munmap(r->region, r->region_len);
    free(r);
}

static int emu_stage_get(int device, size_t bytes, void **host, const void **dev)
{
    struct emu_thread *t = et_get();

    if (device < 0 || device >= EC_BACKEND_MAX_DEVICES)
        return ec_seterr(EC_EINVAL, "staging buffer for GPU %d", device);
    if (!t)
        return ec_seterr(EC_ENOMEM, "staging buffer for GPU %d", device);
    /* Like waiting for the previous launch's event. */
    while (atomic_load_explicit(&t->inflight, memory_order_acquire) > 0)
        usleep(10);
    if (bytes > t->stage_cap[device]) {
        size_t cap = bytes < (1u << 20) ? (1u << 20) : bytes;
        void *p = malloc(cap);
        if (!p)
            return ec_seterr(EC_ENOMEM, "a staging buffer of %zu bytes for GPU %d", cap,
                             device);
        free(t->stage[device]);
        t->stage[device] = p;
        t->stage_cap[device] = cap;
    }
    *host = t->stage[device];
    *dev = t->stage[device];
    return 0;
}

static int emu_slab_create(int device, uint64_t bytes, ec_slab *out)
{
    char name[32];
    void *p;
    int fd;

    snprintf(name, sizeof(name), "embcache-emu-gpu%d", device);
    fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0)
        return ec_seterr_errno(EC_EDEVICE, errno, "emulated GPU %d: memfd_create", device);
    if (ftruncate(fd, (off_t)bytes) < 0) {
        close(fd);
        return ec_seterr_errno(EC_EDEVICE, errno, "emulated GPU %d: slab of %llu bytes", device,
                               (unsigned long long)bytes);
    }
    p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        close(fd);
        return ec_seterr_errno(EC_EDEVICE, errno, "emulated GPU %d: mapping its slab", device);
    }
    memset(out, 0, sizeof(*out));
    out->device = device;
    out->bytes = bytes;
    out->mapped = bytes;
    out->base = p;
    out->fd = fd;
    return 0;
}

static void emu_slab_destroy(ec_slab *s)
{
    if (s->base)
        munmap(s->base, s->bytes);
    if (s->fd >= 0)
        close(s->fd);
    s->base = NULL;
    s->fd = -1;
}

static _Atomic long writes;

static int emu_slab_write(ec_slab *s, uint64_t off, const void *src, size_t bytes)
{
    const char *fail = getenv("EMBCACHE_EMU_FAIL_WRITES");

    if (fail && atomic_fetch_add(&writes, 1) >= strtol(fail, NULL, 10))
        return ec_seterr(EC_EDEVICE, "emulated GPU %d fell off the bus "
                                     "(EMBCACHE_EMU_FAIL_WRITES=%s)", s->device, fail);
    if (off > s->bytes || bytes > s->bytes - off)
        return ec_seterr(EC_EINVAL, "slab write of %zu bytes at %llu is outside the slab",
                         bytes, (unsigned long long)off);
    memcpy((uint8_t *)s->base + off, src, bytes);
    return 0;
}

static int emu_slab_open(int device, const uint8_t *handle, int fd, uint64_t bytes,
                         void **base_out)
{
    struct stat st;
    void *p;

    (void)handle;
    if (fd < 0 || fstat(fd, &st) < 0 || (uint64_t)st.st_size < bytes)
        return ec_seterr(EC_EPROTO, "emulated GPU %d: the slab descriptor is missing or "
                                    "smaller than %llu bytes", device,
                         (unsigned long long)bytes);
    p = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return ec_seterr_errno(EC_EDEVICE, errno, "emulated GPU %d: mapping its slab", device);
    *base_out = p;
    return 0;
}

static void emu_slab_close(int device, void *base, uint64_t bytes)
{
    (void)device;
    if (base)
        munmap(base, bytes);
}

/* The emulated GPU's memory: EMBCACHE_EMU_GPU_MEM bytes (default 16G) in
 * all, EMBCACHE_EMU_GPU_USED bytes of it taken by "other processes"
 * (default 0); sizes as --shm-size takes them. Slabs are not counted. */
static int emu_device_memory(int device, uint64_t *total, uint64_t *free_bytes)
{
    const char *t = getenv("EMBCACHE_EMU_GPU_MEM"), *u = getenv("EMBCACHE_EMU_GPU_USED");
    uint64_t tot = 16ull << 30, used = 0;

    if (device < 0 || device >= emu_device_count())
        return ec_seterr(EC_EDEVICE, "emulated GPU %d does not exist", device);
    if ((t && ec_parse_size(t, &tot)) || (u && ec_parse_size(u, &used)))
        return ec_seterr(EC_EDEVICE, "EMBCACHE_EMU_GPU_MEM='%s' / EMBCACHE_EMU_GPU_USED='%s' "
                                     "are not sizes", t ? t : "", u ? u : "");
    *total = tot;
    *free_bytes = used < tot ? tot - used : 0;
    return 0;
}

const ec_backend ec_backend_emu = {
    .name = "emu",
    .device_count = emu_device_count,
    .gather = emu_gather,
    .copy_to_host = emu_copy_to_host,
    .copy_to_device = emu_copy_to_device,
    .device_busid = emu_busid,
    .device_caps = emu_device_caps,
    .stream_capturing = emu_stream_capturing,
    .host_register = emu_host_register,
    .host_unregister = emu_host_unregister,
    .stage_get = emu_stage_get,
    .resolve_gather = emu_resolve_gather,
    .slab_create = emu_slab_create,
    .slab_destroy = emu_slab_destroy,
    .slab_write = emu_slab_write,
    .slab_open = emu_slab_open,
    .slab_close = emu_slab_close,
    .device_memory = emu_device_memory,
};
