/*
 * backend_cuda.c - the CUDA device backend's host side: probing, pinned and
 * mapped host memory, device-tier slabs shared as file descriptors, and the
 * launch of the gather kernel (cuda/gather.cu).
 *
 * Slabs use the driver's virtual memory API: cuMemCreate with
 * CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, mapped with cuMemAddressReserve,
 * cuMemMap and cuMemSetAccess, and exported with
 * cuMemExportToShareableHandle as a descriptor the daemon passes over its
 * socket. A client imports it (cuMemImportFromShareableHandle), maps it and
 * releases its handle at once: the physical memory then lives until the
 * last mapping goes, so a daemon that frees its slab or dies never pulls
 * memory from under a client's queued kernels, and only a process the
 * daemon handed the descriptor to can map it (a cudaIpcMemHandle was a
 * 64-byte bearer token). The driver functions come through
 * cudaGetDriverEntryPointByVersion, so libembcache does not link libcuda
 * and still loads where no driver is installed.
 *
 * Host registration (cudaHostRegister) goes in chunks of at most
 * ec_host_register_max() bytes, each with its own device address.
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
 * and no allocation per call. Each thread has a small ring of them per
 * device; an event recorded after the launch says when one may be written
 * again, so back-to-back gathers do not wait for each other. Once the
 * kernel is done the GPU clears the gather's epoch slot itself
 * (cuStreamWriteValue64 to the registered session page) where the device
 * supports stream memory operations; elsewhere the caller's completion
 * runs as a host function on the stream.
 */
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* The driver's view of a thread's current context, looked up at run time
 * (the backend does not link libcuda): whether a thread had a context at
 * all is not something the runtime API tells. */
static struct {
    PFN_cuCtxGetCurrent_v4000 get;
    PFN_cuCtxSetCurrent_v4000 set;
} ctxfn;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;

static void ctx_load(void)
{
    enum cudaDriverEntryPointQueryResult q1 = cudaDriverEntryPointSymbolNotFound, q2 = q1;
    void *get = NULL, *set = NULL;

    if (cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &get, 4000, cudaEnableDefault,
                                         &q1) != cudaSuccess ||
        cudaGetDriverEntryPointByVersion("cuCtxSetCurrent", &set, 4000, cudaEnableDefault,
                                         &q2) != cudaSuccess ||
        q1 != cudaDriverEntryPointSuccess || q2 != cudaDriverEntryPointSuccess || !get ||
        !set) {
        (void)cudaGetLastError();
        return; /* enter/leave then restore the device only */
    }
    ctxfn.get = (PFN_cuCtxGetCurrent_v4000)get;
    ctxfn.set = (PFN_cuCtxSetCurrent_v4000)set;
}

/* The caller's stream-capture mode while this thread is inside the
 * backend (enter .. leave; depth counts nested enters). */
static __thread enum cudaStreamCaptureMode capture_mode;
static __thread int capture_depth;

/* Make `device` current, remembering the caller's: its device, or -1 when
 * the thread had no current context. Restoring "device 0" there would
 * create a context on GPU 0 in a thread that never used it (cudaSetDevice
 * initializes the primary context since CUDA 12).
 *
 * Then the thread's capture mode becomes relaxed until leave. Another
 * thread of the application may be capturing a CUDA graph in global mode
 * (torch.cuda.graph's default); in that mode every thread's "unsafe" calls
 * (cudaHostAlloc, cudaEventSynchronize, cudaStreamSynchronize, ...) fail
 * with cudaErrorStreamCaptureUnsupported and invalidate that capture. The
 * backend's own stream is checked for capture separately
 * (cuda_stream_capturing) and never captured. */
static cudaError_t enter(int device, int *prev)
{
    CUcontext cur = NULL;
    cudaError_t e;

    pthread_once(&ctx_once, ctx_load);
    if (ctxfn.get && ctxfn.get(&cur) == CUDA_SUCCESS && cur == NULL) {
        *prev = -1;
        e = cudaSetDevice(device);
    } else {
        e = cudaGetDevice(prev);
        if (e == cudaSuccess && *prev != device)
            e = cudaSetDevice(device);
    }
    if (e == cudaSuccess && capture_depth++ == 0) {
        enum cudaStreamCaptureMode m = cudaStreamCaptureModeRelaxed;
        if (cudaThreadExchangeStreamCaptureMode(&m) == cudaSuccess) {
            capture_mode = m;
        } else {
            capture_mode = cudaStreamCaptureModeRelaxed;
            (void)cudaGetLastError();
        }
    }
    return e;
}

/* Stream memory operations (a gather's epoch slot cleared by the GPU) and
 * the driver's device attributes they are asked by, looked up at run time
 * like the rest of the driver API. */
static struct {
    PFN_cuStreamWriteValue64_v11070 write64;
    PFN_cuDeviceGetAttribute_v2000 attr;
    PFN_cuDeviceGet_v2000 get;
} memop;
static pthread_once_t memop_once = PTHREAD_ONCE_INIT;

static void memop_load(void)
{
    static const struct {
        const char *name;
        int version;
        void **fn;
    } syms[] = {
        {"cuStreamWriteValue64", 11070, (void **)&memop.write64},
        {"cuDeviceGetAttribute", 2000, (void **)&memop.attr},
        {"cuDeviceGet", 2000, (void **)&memop.get},
    };

    for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
        enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion(syms[i].name, syms[i].fn, syms[i].version,
                                             cudaEnableDefault, &q) != cudaSuccess ||
            q != cudaDriverEntryPointSuccess || !*syms[i].fn) {
            (void)cudaGetLastError();
            memset(&memop, 0, sizeof(memop)); /* all or nothing: host functions */
            return;
        }
    }
}

/* Can `device` write host memory from a stream with 64-bit values? */
static bool stream_write_ok(int device)
{
    CUdevice dev;
    int v = 0;

    pthread_once(&memop_once, memop_load);
    return memop.write64 && memop.get(&dev, device) == CUDA_SUCCESS &&
           memop.attr(&v, CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS, dev) ==
               CUDA_SUCCESS &&
           v != 0;
}

static void leave(int device, int prev)
{
    if (capture_depth > 0 && --capture_depth == 0) {
        enum cudaStreamCaptureMode m = capture_mode;
        if (cudaThreadExchangeStreamCaptureMode(&m) != cudaSuccess)
            (void)cudaGetLastError();
    }
    if (prev < 0) {
        if (ctxfn.set)
            (void)ctxfn.set(NULL); /* as it was: no context */
    } else if (prev != device) {
        (void)cudaSetDevice(prev);
    }
}

static int cuda_check_ptr(const void *ptr, int device)
{
    struct cudaPointerAttributes a;
    int prev;
    cudaError_t e = enter(device, &prev); /* not a context on GPU 0 in a bare thread */

    if (e == cudaSuccess) {
        e = cudaPointerGetAttributes(&a, ptr);
        leave(device, prev);
    }
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

static int cuda_device_caps(int device, ec_device_caps *out)
{
    int ro = 0, mode = 0;
    cudaError_t e;

    /* Attributes are read without creating a context on the device. */
    e = cudaDeviceGetAttribute(&ro, cudaDevAttrHostRegisterReadOnlySupported, device);
    if (e == cudaSuccess)
        e = cudaDeviceGetAttribute(&mode, cudaDevAttrComputeMode, device);
    if (e != cudaSuccess)
        return cerr(e, "reading the device's attributes", device);
    memset(out, 0, sizeof(*out));
    out->readonly_register = ro != 0;
    out->exclusive_process = mode == cudaComputeModeExclusiveProcess;
    out->prohibited = mode == cudaComputeModeProhibited;
    out->stream_write = stream_write_ok(device);
    return 0;
}

static int cuda_stream_capturing(int device, void *stream)
{
    enum cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    int prev;
    cudaError_t e = enter(device, &prev);

    if (e == cudaSuccess) {
        e = cudaStreamIsCapturing((cudaStream_t)stream, &st);
        leave(device, prev);
    }

    /* The legacy stream while a blocking stream captures: using it would
     * join that capture. */
    if (e == cudaErrorStreamCaptureImplicit) {
        (void)cudaGetLastError();
        return 1;
    }
    if (e != cudaSuccess)
        return cerr(e, "asking whether the stream is being captured (cudaStreamIsCapturing)",
                    device);
    return st != cudaStreamCaptureStatusNone;
}

/* ------------------------------------------------------------------ */
/* Gather                                                              */

/* A pinned host buffer mapped into the GPU's address space. */
struct pinned {
    uint8_t *host;
    uint8_t *dev;                /* its device address */
    size_t cap;                  /* bytes */
};

/* Room for `bytes` (at least `min`) in p, which nothing reads now: the
 * old contents are not kept. */
static int pinned_reserve(struct pinned *p, size_t bytes, size_t min, const char *what,
                          int device)
{
    size_t cap = bytes < min ? min : bytes;
    cudaError_t e;

    if (bytes <= p->cap)
        return 0;
    if (p->host)
        (void)cudaFreeHost(p->host);
    p->host = NULL;
    p->cap = 0;
    e = cudaHostAlloc((void **)&p->host, cap, cudaHostAllocMapped | cudaHostAllocPortable);
    if (e == cudaSuccess)
        e = cudaHostGetDevicePointer((void **)&p->dev, p->host, 0);
    if (e != cudaSuccess) {
        if (p->host)
            (void)cudaFreeHost(p->host);
        p->host = NULL;
        return cerr(e, what, device);
    }
    p->cap = cap;
    return 0;
}

struct tscratch {
    struct pinned src;           /* row addresses (and output rows) */
    struct pinned stage;         /* staged host rows (stage_get) */
    struct pinned status;        /* resolve_gather: statuses, then partitions */
    cudaEvent_t ev;              /* recorded after the last launch using them */
    bool pending;
};

/* A ring of buffers per thread and device: a gather takes the next one
 * whose last launch has completed (cudaEventQuery: no wait), so a thread
 * that queues gathers back to back does not wait for the previous one;
 * only when all TS_RING are still read by queued kernels does it wait for
 * one. stage_get takes a buffer for the gather that follows it ("open"),
 * which then uses the same one. */
#define TS_RING 4

struct tsdev {
    struct tscratch ring[TS_RING];
    unsigned next;               /* where the search for a free one starts */
    unsigned open1;              /* the open buffer + 1; 0: none */
};

struct tscratch_set {
    struct tsdev dev[EC_BACKEND_MAX_DEVICES];
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
        int prev;
        bool used = false;
        for (unsigned k = 0; k < TS_RING; k++)
            used |= set->dev[i].ring[k].ev || set->dev[i].ring[k].src.host ||
                    set->dev[i].ring[k].stage.host || set->dev[i].ring[k].status.host;
        /* On the ring's own device: never a context on GPU 0 at exit. */
        if (!used || enter((int)i, &prev) != cudaSuccess)
            continue;
        for (unsigned k = 0; k < TS_RING; k++) {
            struct tscratch *s = &set->dev[i].ring[k];
            if (s->pending)
                (void)cudaEventSynchronize(s->ev);
            if (s->ev)
                (void)cudaEventDestroy(s->ev);
            if (s->src.host)
                (void)cudaFreeHost(s->src.host);
            if (s->stage.host)
                (void)cudaFreeHost(s->stage.host);
            if (s->status.host)
                (void)cudaFreeHost(s->status.host);
        }
        leave((int)i, prev);
    }
    free(set);
}

static void ts_make(void)
{
    ts_ok = pthread_key_create(&ts_key, ts_destroy) == 0;
}

/* This thread's open buffer on the current device `device`, free to be
 * written (the last launch that read it has completed): the one already
 * open, or the next free one of the ring. */
static int ts_open(int device, struct tscratch **out)
{
    struct tscratch_set *set;
    struct tsdev *td;
    unsigned pick = TS_RING;
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
    td = &set->dev[device];
    if (td->open1) {
        *out = &td->ring[td->open1 - 1];
        return 0;
    }
    for (unsigned k = 0; k < TS_RING && pick == TS_RING; k++) {
        unsigned i = (td->next + k) % TS_RING;
        struct tscratch *s = &td->ring[i];
        if (!s->ev && (e = cudaEventCreateWithFlags(&s->ev, cudaEventDisableTiming)) !=
                          cudaSuccess)
            return cerr(e, "creating an event", device);
        if (s->pending) {
            e = cudaEventQuery(s->ev);
            if (e == cudaErrorNotReady)
                continue; /* still read by a queued kernel */
            if (e != cudaSuccess)
                return cerr(e, "an earlier gather", device);
            s->pending = false;
        }
        pick = i;
    }
    if (pick == TS_RING) {
        /* All read by queued kernels: wait for the oldest. */
        pick = td->next;
        if ((e = cudaEventSynchronize(td->ring[pick].ev)) != cudaSuccess)
            return cerr(e, "waiting for an earlier gather", device);
        td->ring[pick].pending = false;
    }
    td->open1 = pick + 1;
    td->next = (pick + 1) % TS_RING;
    *out = &td->ring[pick];
    return 0;
}

/* The open buffer s of `device` has its launch queued: it is busy until
 * its event completes, and the next gather opens another. */
static void ts_close(int device, struct tscratch *s)
{
    struct tscratch_set *set = pthread_getspecific(ts_key);

    s->pending = true;
    set->dev[device].open1 = 0; /* ts_open made set */
}

/* This thread's open row-address buffer on the current device `device`,
 * with room for n entries, free to be written. */
static int ts_get(int device, size_t n, struct tscratch **out)
{
    struct tscratch *s = NULL;
    int rc;

    if ((rc = ts_open(device, &s)) ||
        (rc = pinned_reserve(&s->src, n * sizeof(uint64_t), 4096 * sizeof(uint64_t),
                             "allocating the gather's row-address buffer", device)))
        return rc;
    *out = s;
    return 0;
}

static int cuda_stage_get(int device, size_t bytes, void **host, const void **dev)
{
    struct tscratch *s = NULL;
    cudaError_t e;
    int prev, rc;

    if (device < 0 || device >= cuda_device_count() || device >= EC_BACKEND_MAX_DEVICES)
        return ec_seterr(EC_EINVAL, "staging buffer for GPU %d, which does not exist", device);
    if ((e = enter(device, &prev)) != cudaSuccess)
        return cerr(e, "selecting the device", device);
    rc = ts_open(device, &s);
    if (rc == 0)
        rc = pinned_reserve(&s->stage, bytes, 1u << 20,
                            "allocating a pinned staging buffer for host rows", device);
    leave(device, prev);
    if (rc == 0) {
        *host = s->stage.host;
        *dev = s->stage.dev;
    }
    return rc;
}

/* Statuses in a status buffer: its first fifth (a multiple of 4); the
 * partitions (4 bytes each) fill the rest. */
static size_t status_room(const struct pinned *p)
{
    return p->cap / 5 / 4 * 4;
}

static int cuda_resolve_gather(const ec_resolve_args *a, ec_dtype src_dtype, ec_dtype dst_dtype,
                               int device, void *stream, const uint8_t **status,
                               const uint32_t **parts)
{
    struct tscratch *s = NULL;
    ec_resolve_args k = *a;
    cudaError_t e;
    int prev, rc;

    if (device < 0 || device >= cuda_device_count() || device >= EC_BACKEND_MAX_DEVICES)
        return ec_seterr(EC_EINVAL, "output device %d does not exist (%d GPU(s))", device,
                         cuda_device_count());
    if ((e = enter(device, &prev)) != cudaSuccess)
        return cerr(e, "selecting the device", device);
    rc = ts_open(device, &s);
    if (rc == 0)
        rc = pinned_reserve(&s->status, (a->n + 3) / 4 * 4 * 5, 4096 * 5,
                            "allocating the row status buffer", device);
    if (rc == 0) {
        k.status = s->status.dev;
        k.parts = (uint32_t *)(s->status.dev + status_room(&s->status));
        e = (cudaError_t)ec_cuda_resolve_launch(&k, (int)src_dtype, (int)dst_dtype, stream);
        if (e == cudaSuccess)
            e = cudaEventRecord(s->ev, (cudaStream_t)stream);
        if (e == cudaSuccess) {
            ts_close(device, s);
            /* The caller reads the statuses now and releases its epoch:
             * the kernel must have run. Only this event is waited for. */
            e = cudaEventSynchronize(s->ev);
            if (e == cudaSuccess)
                s->pending = false;
        } else {
            (void)cudaStreamSynchronize((cudaStream_t)stream);
        }
        if (e != cudaSuccess)
            rc = cerr(e, "the gather kernel that finds rows on the GPU", device);
    }
    leave(device, prev);
    if (rc == 0) {
        *status = s->status.host;
        *parts = (const uint32_t *)(s->status.host + status_room(&s->status));
    }
    return rc;
}

/* After the launch, in order on the stream: the epoch slot cleared by the
 * GPU itself (a stream memory write), or the caller's completion as a
 * host function; when neither can be queued, wait here and complete. */
static cudaError_t queue_completion(const ec_gather_desc *g)
{
    cudaError_t e;

    if (g->release_dev) {
        pthread_once(&memop_once, memop_load);
        if (memop.write64 &&
            memop.write64((CUstream)g->stream, (CUdeviceptr)g->release_dev, 0,
                          CU_STREAM_WRITE_VALUE_DEFAULT) == CUDA_SUCCESS)
            return cudaSuccess;
    }
    if (!g->done)
        return cudaSuccess;
    if (cudaLaunchHostFunc((cudaStream_t)g->stream, g->done, g->done_arg) == cudaSuccess)
        return cudaSuccess;
    (void)cudaGetLastError();
    e = cudaStreamSynchronize((cudaStream_t)g->stream);
    if (e == cudaSuccess)
        g->done(g->done_arg);
    return e;
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
        uint64_t *src = (uint64_t *)s->src.host;
        const uint64_t *src_dev = (const uint64_t *)s->src.dev;
        for (size_t i = 0; i < g->n; i++)
            src[i] = (uint64_t)(uintptr_t)g->src[i];
        if (g->dst_rows)
            for (size_t i = 0; i < g->n; i++)
                src[g->n + i] = (uint64_t)g->dst_rows[i];
        e = (cudaError_t)ec_cuda_gather_launch(src_dev,
                                               g->dst_rows ? (const size_t *)(src_dev + g->n)
                                                           : NULL,
                                               g->n, g->row_bytes / esz,
                                               (int)g->src_dtype, (int)g->dst_dtype, g->dst,
                                               g->stream);
        if (e == cudaSuccess)
            e = cudaEventRecord(s->ev, (cudaStream_t)g->stream);
        if (e == cudaSuccess)
            ts_close(g->device, s);
        if (e == cudaSuccess)
            e = queue_completion(g);
        if (e != cudaSuccess) {
            /* Do not let the caller release memory a queued kernel reads:
             * whatever was queued has run when this returns. */
            (void)cudaStreamSynchronize((cudaStream_t)g->stream);
            rc = cerr(e, "the gather kernel", g->device);
        }
    }
    leave(g->device, prev);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Host memory and slabs                                               */

/* The bus id in one spelling, "dddd:bb:dd.f" in lower case, whatever the
 * runtime gives (nvidia-smi writes an 8-digit domain): the daemon
 * publishes it in 16 bytes and clients compare it with their own. */
static int cuda_busid(int device, char *buf, size_t len)
{
    char raw[64];
    unsigned dom, bus, dev, fn;
    cudaError_t e = cudaDeviceGetPCIBusId(raw, (int)sizeof(raw), device);

    if (e != cudaSuccess)
        return cerr(e, "reading the PCI bus id", device);
    if (sscanf(raw, "%x:%x:%x.%x", &dom, &bus, &dev, &fn) == 4)
        snprintf(buf, len, "%04x:%02x:%02x.%x", dom, bus, dev, fn);
    else
        snprintf(buf, len, "%s", raw);
    return 0;
}

/* Registrations by base address, so host_unregister finds every chunk.
 * owned[k]: chunk k was registered by this call (not found registered). */
struct creg {
    void *base;
    size_t len;
    uint64_t chunk;
    uint32_t n;
    bool owned[EC_HOST_MAP_MAX];
    struct creg *next;
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct creg *regs;

static void creg_undo(struct creg *r)
{
    for (uint32_t k = 0; k < r->n; k++)
        if (r->owned[k] && cudaHostUnregister((uint8_t *)r->base + (uint64_t)k * r->chunk) !=
                               cudaSuccess)
            (void)cudaGetLastError();
}

static int cuda_host_register(void *base, size_t len, bool readonly, int device,
                              ec_host_map *map)
{
    unsigned flags = cudaHostRegisterPortable | cudaHostRegisterMapped;
    uint64_t chunk = ec_host_register_max();
    struct creg *r, *old;
    ec_host_map m = {.chunk = chunk, .len = len};
    ec_device_caps caps = {0};
    cudaError_t e = cudaSuccess;
    int prev, rc;

    if (readonly) {
        /* Without the attribute a read-only registration fails (and on
         * some x86 systems it is 0): say so instead of trying. */
        if ((rc = cuda_device_caps(device, &caps)))
            return rc;
        if (!caps.readonly_register)
            return ec_seterr(EC_EDEVICE, "GPU %d cannot map read-only host memory "
                                         "(cudaDevAttrHostRegisterReadOnlySupported is 0)",
                             device);
        flags |= cudaHostRegisterReadOnly;
    }
    if ((len + chunk - 1) / chunk > EC_HOST_MAP_MAX)
        return ec_seterr(EC_EDEVICE, "registering %zu bytes in chunks of %llu bytes needs more "
                                     "than %u registrations", len,
                         (unsigned long long)chunk, EC_HOST_MAP_MAX);
    if (!(r = calloc(1, sizeof(*r))))
        return ec_seterr(EC_ENOMEM, "host registration record");
    r->base = base;
    r->len = len;
    r->chunk = chunk;
    if ((e = enter(device, &prev)) != cudaSuccess) {
        free(r);
        return cerr(e, "selecting the device", device);
    }
    m.n = (uint32_t)((len + chunk - 1) / chunk);
    /* One cudaHostRegister per chunk: one of 512 GiB or more fails on
     * current drivers. Each chunk's device address is its own. */
    for (uint32_t k = 0; k < m.n && e == cudaSuccess; k++) {
        uint8_t *p = (uint8_t *)base + (uint64_t)k * chunk;
        size_t n = len - (uint64_t)k * chunk < chunk ? len - (uint64_t)k * chunk : chunk;
        e = cudaHostRegister(p, n, flags);
        if (e == cudaErrorHostMemoryAlreadyRegistered) {
            (void)cudaGetLastError();
            e = cudaSuccess;
        } else if (e == cudaSuccess) {
            r->owned[k] = true;
        }
        r->n = k + 1;
        if (e == cudaSuccess && map)
            e = cudaHostGetDevicePointer((void **)&m.dev[k], p, 0);
    }
    if (e != cudaSuccess)
        creg_undo(r);
    leave(device, prev);
    if (e != cudaSuccess) {
        rc = cerr(e, "registering the shared segment", device);
        free(r);
        return ec_adderr(rc, "%s%zu bytes at %p in %u chunk(s) of at most %llu bytes; the "
                             "kernel reads host rows through this mapping",
                         readonly ? "read-only, " : "", len, base, m.n,
                         (unsigned long long)chunk);
    }
    pthread_mutex_lock(&reg_mu);
    for (old = regs; old && old->base != base; old = old->next)
        ;
    if (old) {
        /* Registered before (another device of this process): the first
         * record owns the chunks. */
        free(r);
    } else {
        r->next = regs;
        regs = r;
    }
    pthread_mutex_unlock(&reg_mu);
    if (map)
        *map = m;
    return 0;
}

static void cuda_host_unregister(void *base)
{
    struct creg **pp, *r;

    pthread_mutex_lock(&reg_mu);
    for (pp = &regs; *pp && (*pp)->base != base; pp = &(*pp)->next)
        ;
    r = *pp;
    if (r)
        *pp = r->next;
    pthread_mutex_unlock(&reg_mu);
    if (!r)
        return;
    creg_undo(r);
    free(r);
}

/* The driver's virtual memory API, through the runtime's entry points. */
static struct {
    PFN_cuMemCreate_v10020 create;
    PFN_cuMemRelease_v10020 release;
    PFN_cuMemAddressReserve_v10020 reserve;
    PFN_cuMemAddressFree_v10020 addr_free;
    PFN_cuMemMap_v10020 map;
    PFN_cuMemUnmap_v10020 unmap;
    PFN_cuMemSetAccess_v10020 set_access;
    PFN_cuMemGetAllocationGranularity_v10020 granularity;
    PFN_cuMemExportToShareableHandle_v10020 export_fd;
    PFN_cuMemImportFromShareableHandle_v10020 import_fd;
    PFN_cuGetErrorName_v6000 err_name;
    bool ok;
    char why[160];
} vmm;
static pthread_once_t vmm_once = PTHREAD_ONCE_INIT;

static void vmm_load(void)
{
    static const struct {
        const char *name;
        void **fn;
    } syms[] = {
        {"cuMemCreate", (void **)&vmm.create},
        {"cuMemRelease", (void **)&vmm.release},
        {"cuMemAddressReserve", (void **)&vmm.reserve},
        {"cuMemAddressFree", (void **)&vmm.addr_free},
        {"cuMemMap", (void **)&vmm.map},
        {"cuMemUnmap", (void **)&vmm.unmap},
        {"cuMemSetAccess", (void **)&vmm.set_access},
        {"cuMemGetAllocationGranularity", (void **)&vmm.granularity},
        {"cuMemExportToShareableHandle", (void **)&vmm.export_fd},
        {"cuMemImportFromShareableHandle", (void **)&vmm.import_fd},
        {"cuGetErrorName", (void **)&vmm.err_name},
    };

    for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
        enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        cudaError_t e = cudaGetDriverEntryPointByVersion(syms[i].name, syms[i].fn, 12000,
                                                         cudaEnableDefault, &q);
        if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || !*syms[i].fn) {
            (void)cudaGetLastError();
            snprintf(vmm.why, sizeof(vmm.why), "the CUDA driver has no %s (%s)", syms[i].name,
                     e != cudaSuccess ? cudaGetErrorString(e) : "symbol not found");
            return;
        }
    }
    vmm.ok = true;
}

/* A driver failure as an embcache error. */
static int drverr(CUresult r, const char *what, int device)
{
    const char *name = NULL;

    if (vmm.err_name)
        (void)vmm.err_name(r, &name);
    return ec_seterr(EC_EDEVICE, "%s on GPU %d failed: %s (CUresult %d)%s", what, device,
                     name ? name : "unknown error", (int)r,
                     r == CUDA_ERROR_OUT_OF_MEMORY ? ": out of device memory" : "");
}

static void slab_prop(int device, CUmemAllocationProp *p)
{
    memset(p, 0, sizeof(*p));
    p->type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p->location.id = device;
    p->requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
}

/* Bytes a slab of `bytes` maps on `device`: rounded up to the allocation
 * granularity, which the daemon and its clients compute alike. */
static int slab_span(int device, uint64_t bytes, uint64_t *out)
{
    CUmemAllocationProp prop;
    size_t gran = 0;
    CUresult r;

    pthread_once(&vmm_once, vmm_load);
    if (!vmm.ok)
        return ec_seterr(EC_EDEVICE, "GPU %d: no device tier: %s (the device tier needs the "
                                     "driver's virtual memory API, CUDA 12 or later)",
                         device, vmm.why);
    slab_prop(device, &prop);
    r = vmm.granularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
    if (r != CUDA_SUCCESS || gran == 0)
        return drverr(r, "reading the allocation granularity", device);
    *out = (bytes + gran - 1) / gran * gran;
    return 0;
}

/* Map `handle` (span bytes) at a fresh address with `flags` access for
 * `device`. */
static CUresult slab_map(int device, CUmemGenericAllocationHandle handle, uint64_t span,
                         CUmemAccess_flags flags, CUdeviceptr *out)
{
    CUmemAccessDesc acc = {.location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device},
                           .flags = flags};
    CUdeviceptr p = 0;
    CUresult r = vmm.reserve(&p, span, 0, 0, 0);

    if (r != CUDA_SUCCESS)
        return r;
    if ((r = vmm.map(p, span, 0, handle, 0)) != CUDA_SUCCESS) {
        (void)vmm.addr_free(p, span);
        return r;
    }
    r = vmm.set_access(p, span, &acc, 1);
    if (r != CUDA_SUCCESS && flags == CU_MEM_ACCESS_FLAGS_PROT_READ) {
        /* Read-only device mappings are not supported everywhere. */
        acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        r = vmm.set_access(p, span, &acc, 1);
    }
    if (r != CUDA_SUCCESS) {
        (void)vmm.unmap(p, span);
        (void)vmm.addr_free(p, span);
        return r;
    }
    *out = p;
    return CUDA_SUCCESS;
}

static int cuda_slab_create(int device, uint64_t bytes, ec_slab *out)
{
    CUmemGenericAllocationHandle h = 0;
    CUmemAllocationProp prop;
    CUdeviceptr p = 0;
    uint64_t span;
    cudaError_t e;
    CUresult r;
    int prev, fd = -1, rc;

    if ((rc = slab_span(device, bytes, &span)))
        return rc;
    if ((e = enter(device, &prev)) != cudaSuccess)
        return cerr(e, "selecting the device", device);
    slab_prop(device, &prop);
    r = vmm.create(&h, span, &prop, 0);
    if (r == CUDA_SUCCESS && (r = slab_map(device, h, span, CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
                                           &p)) != CUDA_SUCCESS) {
        (void)vmm.release(h);
        h = 0;
    }
    if (r == CUDA_SUCCESS &&
        (r = vmm.export_fd(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0)) !=
            CUDA_SUCCESS) {
        (void)vmm.unmap(p, span);
        (void)vmm.addr_free(p, span);
        (void)vmm.release(h);
    }
    leave(device, prev);
    if (r != CUDA_SUCCESS)
        return ec_adderr(drverr(r, "allocating the device-tier slab (cuMemCreate, POSIX file "
                                   "descriptor)", device),
                         "%llu bytes", (unsigned long long)span);
    memset(out, 0, sizeof(*out));
    out->device = device;
    out->bytes = bytes;
    out->mapped = span;
    out->base = (void *)(uintptr_t)p;
    out->mem = (uint64_t)h;
    out->fd = fd;
    return 0;
}

static void cuda_slab_destroy(ec_slab *s)
{
    int prev;

    if (!s->base || enter(s->device, &prev) != cudaSuccess)
        return;
    /* Work queued on the daemon's side (promotion copies) is done: the
     * copies are synchronous. Clients' mappings keep the memory alive. */
    (void)vmm.unmap((CUdeviceptr)(uintptr_t)s->base, s->mapped);
    (void)vmm.addr_free((CUdeviceptr)(uintptr_t)s->base, s->mapped);
    (void)vmm.release((CUmemGenericAllocationHandle)s->mem);
    leave(s->device, prev);
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
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
    CUmemGenericAllocationHandle h = 0;
    CUdeviceptr p = 0;
    uint64_t span;
    cudaError_t e;
    CUresult r;
    int prev, rc;

    (void)handle;
    if (fd < 0)
        return ec_seterr(EC_EPROTO, "the daemon sent no descriptor for GPU %d's slab (an "
                                    "embcached older than this libembcache?)", device);
    if ((rc = slab_span(device, bytes, &span)))
        return rc;
    if ((e = enter(device, &prev)) != cudaSuccess)
        return cerr(e, "selecting the device", device);
    r = vmm.import_fd(&h, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    if (r == CUDA_SUCCESS) {
        r = slab_map(device, h, span, CU_MEM_ACCESS_FLAGS_PROT_READ, &p);
        /* The mapping holds the memory from now on: released at unmap. */
        (void)vmm.release(h);
    }
    leave(device, prev);
    if (r != CUDA_SUCCESS)
        return ec_adderr(drverr(r, "importing the daemon's slab (cuMemImportFromShareable"
                                   "Handle)", device),
                         "%llu bytes", (unsigned long long)span);
    *base_out = (void *)(uintptr_t)p;
    return 0;
}

static void cuda_slab_close(int device, void *base, uint64_t bytes)
{
    uint64_t span;
    int prev;

    if (!base || slab_span(device, bytes, &span) || enter(device, &prev) != cudaSuccess)
        return;
    (void)vmm.unmap((CUdeviceptr)(uintptr_t)base, span);
    (void)vmm.addr_free((CUdeviceptr)(uintptr_t)base, span);
    leave(device, prev);
}

static int cuda_device_memory(int device, uint64_t *total, uint64_t *free_bytes)
{
    size_t f = 0, t = 0;
    cudaError_t e;
    int prev;

    if ((e = enter(device, &prev)) != cudaSuccess)
        return cerr(e, "selecting the device", device);
    e = cudaMemGetInfo(&f, &t);
    leave(device, prev);
    if (e != cudaSuccess)
        return cerr(e, "reading the device's free memory (cudaMemGetInfo)", device);
    *total = t;
    *free_bytes = f;
    return 0;
}

static const ec_backend backend_cuda = {
    .name = "cuda",
    .device_count = cuda_device_count,
    .gather = cuda_gather,
    .check_ptr = cuda_check_ptr,
    .copy_to_host = cuda_copy_to_host,
    .copy_to_device = cuda_copy_to_device,
    .device_busid = cuda_busid,
    .device_caps = cuda_device_caps,
    .stream_capturing = cuda_stream_capturing,
    .host_register = cuda_host_register,
    .host_unregister = cuda_host_unregister,
    .stage_get = cuda_stage_get,
    .resolve_gather = cuda_resolve_gather,
    .slab_create = cuda_slab_create,
    .slab_destroy = cuda_slab_destroy,
    .slab_write = cuda_slab_write,
    .slab_open = cuda_slab_open,
    .slab_close = cuda_slab_close,
    .device_memory = cuda_device_memory,
};

const ec_backend *ec_backend_cuda_probe(void)
{
    if (cuda_device_count() <= 0) {
        ec_seterr(EC_EINVAL, "%s", probe_msg);
        return NULL;
    }
    return &backend_cuda;
}
