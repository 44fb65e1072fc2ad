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
#include "cuda/backend.h"

static int emu_device_count(void)
{
    const char *env = getenv("EMBCACHE_EMU_GPUS");
    long n = env ? strtol(env, NULL, 10) : 1;

    return n < 0 ? 0 : n > 8 ? 8 : (int)n;
}

struct async_gather {
    ec_gather_desc g;
    unsigned delay_us;
    size_t *rows;      /* copies: the caller's arrays are its scratch */
    const void *src[];
};

static void stream_done(void *stream)
{
    if (stream)
        atomic_fetch_sub_explicit((_Atomic int *)stream, 1, memory_order_release);
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
    if (done)
        done(done_arg);
    stream_done(a->g.stream);
    free(a);
    return NULL;
}

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
        if (g->stream)
            atomic_fetch_add_explicit((_Atomic int *)g->stream, 1, memory_order_relaxed);
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&t, &at, async_main, a);
        pthread_attr_destroy(&at);
        if (rc) {
            stream_done(g->stream);
            free(a);
            return ec_seterr(EC_ENOMEM, "emulated asynchronous gather: no thread");
        }
        return 0;
    }
    return ec_cpu_gather(&h); /* calls done */
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

static int emu_host_register(void *base, size_t len, bool readonly, int device, void **dev_base)
{
    (void)len;
    (void)readonly;
    (void)device;
    if (dev_base)
        *dev_base = base;
    return 0;
}

static void emu_host_unregister(void *base)
{
    (void)base;
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

const ec_backend ec_backend_emu = {
    .name = "emu",
    .device_count = emu_device_count,
    .gather = emu_gather,
    .copy_to_host = emu_copy_to_host,
    .copy_to_device = emu_copy_to_device,
    .device_busid = emu_busid,
    .host_register = emu_host_register,
    .host_unregister = emu_host_unregister,
    .slab_create = emu_slab_create,
    .slab_destroy = emu_slab_destroy,
    .slab_write = emu_slab_write,
    .slab_open = emu_slab_open,
    .slab_close = emu_slab_close,
};
