/*
 * backend_cuda.c - the CUDA device backend's host side: probing, pinned and
 * mapped host memory, device-tier slabs behind CUDA IPC handles, and the
 * launch of the gather kernel (cuda/gather.cu).
 *
 * Built only when the CUDA toolkit is found. Every cudart error becomes an
 * EC_E* code here, at the boundary, with cudaGetErrorString in the message;
 * nothing here exits. Calls that need a device set it and put the caller's
 * current device back, so a client library never changes its host
 * application's CUDA state.
 *
 * A gather's row addresses (device addresses: the slab or the mapped
 * segment) go to the kernel through a per-thread, per-device buffer of
 * pinned, mapped host memory that the kernel reads directly: no extra copy
 * and no allocation per call. An event recorded after the launch says when
 * the buffer may be written again; the next gather of that thread on that
 * device waits for it (normally long done). The caller's completion
 * callback runs as a host function on the stream once the kernel is done.
 */
#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/err.h"
#include "cuda/backend.h"
#include "cuda/gather_kernel.h"

static int cuda_devices = -1;
static char probe_msg[256];
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;

static void probe(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);

    if (e != cudaSuccess) {
        snprintf(probe_msg, sizeof(probe_msg), "CUDA is built in but unusable: %s",
                 cudaGetErrorString(e));
        (void)cudaGetLastError();
        cuda_devices = 0;
        return;
    }
    if (n == 0)
        snprintf(probe_msg, sizeof(probe_msg), "CUDA is built in but no GPU was found");
    cuda_devices = n;
}

static int cuda_device_count(void)
{
    pthread_once(&probe_once, probe);
    return cuda_devices;
}

/* A CUDA failure as an embcache error. Clears CUDA's last error so a
 * non-sticky failure does not resurface in the application's next call. */
static int cerr(cudaError_t e, const char *what, int device)
{
    (void)cudaGetLastError();
    if (e == cudaErrorMemoryAllocation)
        return ec_seterr(EC_EDEVICE, "%s on GPU %d: out of device memory (%s)", what, device,
                         cudaGetErrorString(e));
    return ec_seterr(EC_EDEVICE, "%s on GPU %d failed: %s (%s)", what, device,
                     cudaGetErrorString(e), cudaGetErrorName(e));
}

/* Make `device` current, remembering the caller's. */
static cudaError_t enter(int device, int *prev)
{
    cudaError_t e = cudaGetDevice(prev);

    if (e != cudaSuccess)
        return e;
    return *prev == device ? cudaSuccess : cudaSetDevice(device);
}

static void leave(int device, int prev)
{
    if (prev != device)
        (void)cudaSetDevice(prev);
}

static int cuda_check_ptr(const void *ptr, int device)
{
    struct cudaPointerAttributes a;
    cudaError_t e = cudaPointerGetAttributes(&a, ptr);

    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return ec_seterr(EC_EINVAL, "%p is not memory CUDA knows (%s): pass device memory of "
                                    "GPU %d", ptr, cudaGetErrorString(e), device);
    }
    switch (a.type) {
    case cudaMemoryTypeDevice:
    case cudaMemoryTypeManaged:
        if (a.device != device)
            return ec_seterr(EC_EINVAL, "output %p is on GPU %d, not GPU %d as the gather "
                                        "options say", ptr, a.device, device);
        return 0;
    case cudaMemoryTypeHost:
        return ec_seterr(EC_EINVAL, "%p is pinned host memory, not device memory of GPU %d: "
                                    "gather to the host without EC_GATHER_OUT_DEVICE, or pass "
                                    "a device buffer", ptr, device);
    default:
        return ec_seterr(EC_EINVAL, "%p is host memory, not device memory of GPU %d: gather "
                                    "to the host without EC_GATHER_OUT_DEVICE, or pass a "
                                    "device buffer", ptr, device);
    }
}

static int cuda_copy_to_host(void *dst, const void *src, size_t n, int device, void *stream)
{
    int prev;
    cudaError_t e = enter(device, &prev);

    if (e == cudaSuccess)
        e = cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, (cudaStream_t)stream);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize((cudaStream_t)stream);
    leave(device, prev);
    return e == cudaSuccess ? 0 : cerr(e, "copying ids to the host", device);
}

static int cuda_copy_to_device(void *dst, const void *src, size_t n, int device, void *stream)
{
    int prev;
    cudaError_t e = enter(device, &prev);

    if (e == cudaSuccess)
        e = cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, (cudaStream_t)stream);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize((cudaStream_t)stream);
    leave(device, prev);
    return e == cudaSuccess ? 0 : cerr(e, "copying rows to the GPU", device);
}

/* ------------------------------------------------------------------ */
/* Gather                                                              */

struct tscratch {
    uint64_t *src;               /* pinned, mapped */
    uint64_t *src_dev;           /* its device address */
    size_t cap;
    cudaEvent_t ev;              /* recorded after the last launch using src */
    bool pending;
};

struct tscratch_set {
    struct tscratch dev[EC_BACKEND_MAX_DEVICES];
};

static pthread_key_t ts_key;
static pthread_once_t ts_once = PTHREAD_ONCE_INIT;
static int ts_ok;

/* Runs at thread exit: the buffers may still be read by a kernel queued
 * before, so wait for its event first. */
static void ts_destroy(void *p)
{
    struct tscratch_set *set = p;

    for (unsigned i = 0; i < EC_BACKEND_MAX_DEVICES; i++) {
        struct tscratch *s = &set->dev[i];
        if (s->pending)
            (void)cudaEventSynchronize(s->ev);
        if (s->ev)
            (void)cudaEventDestroy(s->ev);
        if (s->src)
            (void)cudaFreeHost(s->src);
    }
    free(set);
}

static void ts_make(void)
{
    ts_ok = pthread_key_create(&ts_key, ts_destroy) == 0;
}

/* This thread's row-address buffer on the current device `device`, with
 * room for n entries, free to be written. */
static int ts_get(int device, size_t n, struct tscratch **out)
{
    struct tscratch_set *set;
    struct tscratch *s;
    cudaError_t e;

    pthread_once(&ts_once, ts_make);
    if (!ts_ok)
        return ec_seterr(EC_ENOMEM, "no thread-specific key left for the GPU gather buffer");
    set = pthread_getspecific(ts_key);
    if (!set) {
        set = calloc(1, sizeof(*set));
        if (!set || pthread_setspecific(ts_key, set)) {
            free(set);
            return ec_seterr(EC_ENOMEM, "GPU gather buffer");
        }
    }
    s = &set->dev[device];
    if (!s->ev && (e = cudaEventCreateWithFlags(&s->ev, cudaEventDisableTiming)) != cudaSuccess)
        return cerr(e, "creating an event", device);
    if (s->pending) {
        if ((e = cudaEventSynchronize(s->ev)) != cudaSuccess)
            return cerr(e, "waiting for the previous gather", device);
        s->pending = false;
    }
    if (n > s->cap) {
        size_t cap = n < 4096 ? 4096 : n;
        if (s->src)
            (void)cudaFreeHost(s->src);
        s->src = NULL;
        s->cap = 0;
        e = cudaHostAlloc((void **)&s->src, cap * sizeof(*s->src),
                          cudaHostAllocMapped | cudaHostAllocPortable);
        if (e == cudaSuccess)
            e = cudaHostGetDevicePointer((void **)&s->src_dev, s->src, 0);
        if (e != cudaSuccess) {
            if (s->src)
                (void)cudaFreeHost(s->src);
            s->src = NULL;
            return cerr(e, "allocating the gather's row-address buffer", device);
        }
        s->cap = cap;
    }
    *out = s;
    return 0;
}

static int cuda_gather(const ec_gather_desc *g)
{
    size_t esz = ec_dtype_size(g->src_dtype);
    struct tscratch *s = NULL;
    cudaError_t e;
    int prev, rc;

    if (g->device < 0)
        return ec_cpu_gather(g);
    if (g->device >= cuda_device_count() || g->device >= EC_BACKEND_MAX_DEVICES)
        return ec_seterr(EC_EINVAL, "output device %d does not exist or is past GPU %d "
                                    "(%d GPU(s))", g->device, EC_BACKEND_MAX_DEVICES - 1,
                         cuda_device_count());
    if (!esz || g->row_bytes % esz)
        return ec_seterr(EC_EDTYPE, "rows of %zu bytes are not whole %s elements", g->row_bytes,
                         ec_dtype_name(g->src_dtype) ? ec_dtype_name(g->src_dtype) : "?");
    if (g->n == 0) {
        if (g->done)
            g->done(g->done_arg);
        return 0;
    }
    if ((e = enter(g->device, &prev)) != cudaSuccess)
        return cerr(e, "selecting the device", g->device);
    /* Row addresses, then (scattered outputs) the output rows. */
    rc = ts_get(g->device, g->dst_rows ? 2 * g->n : g->n, &s);
    if (rc == 0) {
        for (size_t i = 0; i < g->n; i++)
            s->src[i] = (uint64_t)(uintptr_t)g->src[i];
        if (g->dst_rows)
            for (size_t i = 0; i < g->n; i++)
                s->src[g->n + i] = (uint64_t)g->dst_rows[i];
        e = (cudaError_t)ec_cuda_gather_launch(s->src_dev,
                                               g->dst_rows ? (const size_t *)(s->src_dev + g->n)
                                                           : NULL,
                                               g->n, g->row_bytes / esz,
                                               (int)g->src_dtype, (int)g->dst_dtype, g->dst,
                                               g->stream);
        if (e == cudaSuccess)
            e = cudaEventRecord(s->ev, (cudaStream_t)g->stream);
        if (e == cudaSuccess)
            s->pending = true;
        /* The completion runs after the kernel; if it cannot be queued,
         * wait here so the caller may release what the kernel reads. */
        if (e == cudaSuccess && g->done &&
            cudaLaunchHostFunc((cudaStream_t)g->stream, g->done, g->done_arg) != cudaSuccess) {
            (void)cudaGetLastError();
            e = cudaStreamSynchronize((cudaStream_t)g->stream);
            if (e == cudaSuccess)
                g->done(g->done_arg);
        }
        if (e != cudaSuccess) {
            /* Do not let the caller release memory a queued kernel reads. */
            (void)cudaStreamSynchronize((cudaStream_t)g->stream);
            rc = cerr(e, "the gather kernel", g->device);
        }
    }
    leave(g->device, prev);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Host memory and slabs                                               */

static int cuda_busid(int device, char *buf, size_t len)
{
    cudaError_t e = cudaDeviceGetPCIBusId(buf, (int)len, device);

    return e == cudaSuccess ? 0 : cerr(e, "reading the PCI bus id", device);
}

static int cuda_host_register(void *base, size_t len, bool readonly, int device, void **dev_base)
{
    unsigned flags = cudaHostRegisterPortable | cudaHostRegisterMapped;
    cudaError_t e;
    int prev;

    if (readonly)
        flags |= cudaHostRegisterReadOnly;
    if ((e = enter(device, &prev)) != cudaSuccess)
        return cerr(e, "selecting the device", device);
    e = cudaHostRegister(base, len, flags);
    if (e == cudaErrorHostMemoryAlreadyRegistered) {
        (void)cudaGetLastError();
        e = cudaSuccess;
    }
    if (e == cudaSuccess && dev_base)
        e = cudaHostGetDevicePointer(dev_base, base, 0);
    leave(device, prev);
    if (e != cudaSuccess)
        return ec_adderr(cerr(e, "registering the shared segment", device),
                         "%s%zu bytes at %p; the kernel reads host rows through this mapping",
                         readonly ? "read-only, " : "", len, base);
    return 0;
}

static void cuda_host_unregister(void *base)
{
    if (cudaHostUnregister(base) != cudaSuccess)
        (void)cudaGetLastError();
}

static int cuda_slab_create(int device, uint64_t bytes, ec_slab *out)
{
    cudaIpcMemHandle_t h;
    void *p = NULL;
    cudaError_t e;
    int prev;

    if ((e = enter(device, &prev)) != cudaSuccess)
        return cerr(e, "selecting the device", device);
    e = cudaMalloc(&p, bytes);
    if (e == cudaSuccess)
        e = cudaIpcGetMemHandle(&h, p);
    if (e != cudaSuccess && p)
        (void)cudaFree(p);
    leave(device, prev);
    if (e != cudaSuccess)
        return cerr(e, "allocating the device-tier slab", device);
    memset(out, 0, sizeof(*out));
    out->device = device;
    out->bytes = bytes;
    out->base = p;
    out->fd = -1;
    _Static_assert(sizeof(h) <= EC_SLAB_HANDLE_BYTES, "IPC handle fits");
    memcpy(out->handle, &h, sizeof(h));
    return 0;
}

static void cuda_slab_destroy(ec_slab *s)
{
    int prev;

    if (!s->base || enter(s->device, &prev) != cudaSuccess)
        return;
    (void)cudaFree(s->base);
    (void)cudaGetLastError();
    leave(s->device, prev);
    s->base = NULL;
}

static int cuda_slab_write(ec_slab *s, uint64_t off, const void *src, size_t bytes)
{
    cudaError_t e;
    int prev;

    if (off > s->bytes || bytes > s->bytes - off)
        return ec_seterr(EC_EINVAL, "slab write of %zu bytes at %llu is outside the slab",
                         bytes, (unsigned long long)off);
    if ((e = enter(s->device, &prev)) != cudaSuccess)
        return cerr(e, "selecting the device", s->device);
    e = cudaMemcpy((uint8_t *)s->base + off, src, bytes, cudaMemcpyHostToDevice);
    leave(s->device, prev);
    return e == cudaSuccess ? 0 : cerr(e, "copying a partition into the slab", s->device);
}

static int cuda_slab_open(int device, const uint8_t *handle, int fd, uint64_t bytes,
                          void **base_out)
{
    cudaIpcMemHandle_t h;
    cudaError_t e;
    int prev;

    (void)fd;
    (void)bytes;
    memcpy(&h, handle, sizeof(h));
    if ((e = enter(device, &prev)) != cudaSuccess)
        return cerr(e, "selecting the device", device);
    e = cudaIpcOpenMemHandle(base_out, h, cudaIpcMemLazyEnablePeerAccess);
    leave(device, prev);
    return e == cudaSuccess ? 0 : cerr(e, "opening the daemon's slab (CUDA IPC)", device);
}

static void cuda_slab_close(int device, void *base, uint64_t bytes)
{
    int prev;

    (void)bytes;
    if (enter(device, &prev) != cudaSuccess)
        return;
    if (cudaIpcCloseMemHandle(base) != cudaSuccess)
        (void)cudaGetLastError();
    leave(device, prev);
}

static const ec_backend backend_cuda = {
    .name = "cuda",
    .device_count = cuda_device_count,
    .gather = cuda_gather,
    .check_ptr = cuda_check_ptr,
    .copy_to_host = cuda_copy_to_host,
    .copy_to_device = cuda_copy_to_device,
    .device_busid = cuda_busid,
    .host_register = cuda_host_register,
    .host_unregister = cuda_host_unregister,
    .slab_create = cuda_slab_create,
    .slab_destroy = cuda_slab_destroy,
    .slab_write = cuda_slab_write,
    .slab_open = cuda_slab_open,
    .slab_close = cuda_slab_close,
};

const ec_backend *ec_backend_cuda_probe(void)
{
    if (cuda_device_count() <= 0) {
        ec_seterr(EC_EINVAL, "%s", probe_msg);
        return NULL;
    }
    return &backend_cuda;
}
