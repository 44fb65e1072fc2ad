/*
 * backend.h - the device backend interface.
 *
 * A backend moves rows from where embcache keeps them to where a caller
 * wants them, and (for the daemon) manages the device tier's memory. Three
 * implementations sit behind one table of function pointers:
 *  - cpu:  memcpy into host memory; always built; what CI runs. Has no
 *          device tier (the slab functions are NULL).
 *  - cuda: built when the toolkit is found, used when a driver and a GPU are
 *          present: pinned/mapped host memory, slabs from the driver's
 *          virtual memory API (cuMemCreate) exported as file descriptors,
 *          and the gather kernel (cuda/gather.cu).
 *  - emu:  a test backend (EMBCACHE_BACKEND=emu, EMBCACHE_EMU_GPUS=N) that
 *          emulates N GPUs with host memory: a "slab" is a memfd shared
 *          with clients, a "device pointer" is a host pointer. It lets the
 *          daemon's device tier (promotion, eviction, the device index,
 *          stale slabs, epoch-protected reads) run on machines without a
 *          GPU, in CI, against the same tests.
 * Callers never #ifdef: they ask ec_backend_get() and call through the table.
 * core/ and shm/ never include a CUDA header; vendor errors become EC_E*
 * codes inside the backend, with the vendor's message. Nothing here exits.
 * Thread-safe: backends hold no per-call state outside per-thread scratch.
 */
#ifndef EC_CUDA_BACKEND_H
#define EC_CUDA_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cuda/resolve.h"
#include "embcache.h"

/* One batched gather: source row src[i] (row_bytes bytes of src_dtype)
 * lands at output row dst_rows[i] (or i when dst_rows is NULL) of dst,
 * converted to dst_dtype (equal dtypes: a byte copy; F32 to F16/BF16: round
 * to nearest even, NaN stays NaN). Output rows are
 * row_bytes / size(src_dtype) * size(dst_dtype) bytes apart. */
typedef struct ec_gather_desc {
    const void *const *src; /* n row addresses the backend can read on `device`
                             * (host addresses when device < 0) */
    size_t n;
    size_t row_bytes;       /* bytes of one source row */
    ec_dtype src_dtype;
    ec_dtype dst_dtype;
    void *dst;              /* the output array */
    const size_t *dst_rows; /* output row of each source row, or NULL */
    int device;             /* -1: host memory; >= 0: that GPU */
    void *stream;           /* the caller's CUDA stream, or NULL */
    /* Called once when the copy has completed and the sources may be
     * reused (from another thread for an asynchronous backend; before
     * gather() returns for a synchronous one). Only on success. */
    void (*done)(void *arg);
    void *done_arg;
    /* Where not 0, in place of done: the device address on `device` of an
     * 8-byte host word (its page registered with host_register) that the
     * GPU itself sets to 0 once the copy has completed, in order on the
     * stream (a stream memory operation, cuStreamWriteValue64: no host
     * thread wakes, and the word stays set for as long as the kernel waits
     * behind other work). The caller sets it only where device_caps said
     * stream_write. A backend that cannot queue the write calls done
     * instead. */
    uint64_t release_dev;
} ec_gather_desc;

/* GPUs embcache can use per process: ordinals 0..7 (layout.h's
 * EC_SHM_MAX_DEVICES is the same number). */
#define EC_BACKEND_MAX_DEVICES 8

/* A device-tier slab: the daemon creates it; clients open it by the file
 * descriptor it exports, passed over the Unix socket (SCM_RIGHTS). CUDA:
 * physical memory from cuMemCreate exported as a POSIX file descriptor; a
 * client that imported and mapped it keeps the memory alive until it
 * unmaps it, whatever the daemon does (frees the slab, exits, dies). Emu: a
 * memfd, with the same lifetime. The handle bytes are kept in the DEVICES
 * reply for compatibility and are all zero. */
#define EC_SLAB_HANDLE_BYTES 64
typedef struct ec_slab {
    int device;
    uint64_t bytes;   /* what the tier uses */
    uint64_t mapped;  /* CUDA: bytes allocated and mapped (bytes rounded up to
                       * the allocation granularity); emu: bytes */
    void *base;       /* daemon: the device address (emu: host mapping) */
    uint64_t mem;     /* CUDA: the CUmemGenericAllocationHandle; emu: 0 */
    uint8_t handle[EC_SLAB_HANDLE_BYTES]; /* zero (see above) */
    int fd;           /* the descriptor to pass to clients; owned by the slab */
} ec_slab;

/* What one GPU allows, for decisions the client and the daemon take before
 * they touch it (cudaDeviceGetAttribute: creates no context). */
typedef struct ec_device_caps {
    bool readonly_register;  /* cudaDevAttrHostRegisterReadOnlySupported: a
                              * read-only mapping of the segment can be
                              * registered; false: clients stage host rows */
    bool exclusive_process;  /* compute mode EXCLUSIVE_PROCESS: one process
                              * per GPU, so a daemon context locks clients out */
    bool prohibited;         /* compute mode PROHIBITED: no context at all */
    bool stream_write;       /* the GPU can write host memory from a stream
                              * (CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS):
                              * gathers release their epoch without a host
                              * function (ec_gather_desc.release_dev) */
} ec_device_caps;

/* The device addresses of a registered range of host memory. Registration
 * goes in chunks of at most `chunk` bytes (one cudaHostRegister of 512 GiB
 * or more fails on current drivers), and each chunk has its own device
 * address: consecutive chunks are not assumed to be contiguous on the
 * device. ec_host_map_addr() turns an offset into a device address. */
#define EC_HOST_MAP_MAX 256 /* chunks: 64 TiB at 256 GiB a chunk */
typedef struct ec_host_map {
    uint64_t chunk;                  /* bytes per chunk (the last may be shorter) */
    uint64_t len;                    /* bytes registered */
    uint32_t n;                      /* chunks */
    uint8_t *dev[EC_HOST_MAP_MAX];   /* device address of each chunk's start */
} ec_host_map;

/* The most bytes one host registration covers, unless a backend says less. */
#define EC_HOST_REGISTER_MAX (256ull << 30)

/* The device address of bytes [off, off + bytes) of a registered range, or
 * NULL when they straddle two chunks whose device addresses are not
 * contiguous (the caller then stages them) or lie outside the range. */
const void *ec_host_map_addr(const ec_host_map *m, uint64_t off, uint64_t bytes);

/* Bytes per host registration chunk: EC_HOST_REGISTER_MAX, or
 * EMBCACHE_REGISTER_MAX=bytes from the environment (rounded down to whole
 * 4 KiB pages; for tests of the chunked path). */
uint64_t ec_host_register_max(void);

typedef struct ec_backend {
    const char *name;                          /* "cpu", "cuda", "emu" */
    int (*device_count)(void);                 /* GPUs this backend can reach */
    int (*gather)(const ec_gather_desc *g);    /* 0 or EC_E* */

    /* Is ptr memory of `device` (-1: host memory)? 0 or EC_EINVAL with a
     * message naming where ptr is. NULL: anything is accepted. */
    int (*check_ptr)(const void *ptr, int device);
    /* Copy n bytes from device memory to host (ids on a GPU), waiting for
     * the stream. */
    int (*copy_to_host)(void *dst, const void *src, size_t n, int device, void *stream);
    /* Copy n bytes of host memory to device memory, in order on the stream
     * (after what is queued there), waiting for it: the staged path of rows
     * of tensors cached by rows. NULL in the CPU backend. */
    int (*copy_to_device)(void *dst, const void *src, size_t n, int device, void *stream);

    /* Device tier; all NULL in the CPU backend. */
    /* PCI bus id of a device ("0000:3b:00.0"), for topology. */
    int (*device_busid)(int device, char *buf, size_t len);
    /* What `device` allows (see ec_device_caps). 0 or EC_EDEVICE. */
    int (*device_caps)(int device, ec_device_caps *out);
    /* Is `stream` being captured into a CUDA graph (cudaStreamIsCapturing)?
     * 0: no; 1: yes (or the legacy stream while another stream captures);
     * < 0: an EC_E* error. Legal to call during a capture. */
    int (*stream_capturing)(int device, void *stream);
    /* Register host memory [base, base+len) with every device: the daemon
     * (readonly false) for DMA copies into slabs; a client (readonly true,
     * mapped) so kernels read it over PCIe. Registers in chunks of at most
     * the backend's maximum; *map_out (may be NULL) receives each chunk's
     * address on `device`. A failure leaves nothing registered. */
    int (*host_register)(void *base, size_t len, bool readonly, int device,
                         ec_host_map *map_out);
    /* Undo host_register of base (every chunk). */
    void (*host_unregister)(void *base);
    /* A pinned host buffer of at least `bytes` bytes that the gather on
     * `device` can read (mapped): *host for the CPU to fill, *dev the
     * address to give the gather. One per thread and device; free to write
     * when this returns (the thread's previous gather on the device, which
     * may read it, has completed: this waits for it). Valid until the
     * thread's next stage_get on the device; must not be called while a
     * stream is captured. The staged path of host rows when the segment
     * cannot be registered read-only. */
    int (*stage_get)(int device, size_t bytes, void **host, const void **dev);
    /* Ids on the GPU: find each row on the GPU itself (cuda/resolve.h),
     * copy the resident ones to a->dst (converted from src_dtype to
     * dst_dtype) in order on `stream`, and return when that has completed.
     * The backend supplies a->status and a->parts (the caller leaves them
     * NULL); *status and *parts receive their host addresses: n EC_RS_*
     * bytes and n partitions, valid until the thread's next gather on the
     * device. Must not be called while a stream is captured. NULL where
     * the backend cannot (CPU). */
    int (*resolve_gather)(const ec_resolve_args *a, ec_dtype src_dtype, ec_dtype dst_dtype,
                          int device, void *stream, const uint8_t **status,
                          const uint32_t **parts);
    /* Daemon: allocate a slab of `bytes` on `device` and export it as a file
     * descriptor (out->fd). */
    int (*slab_create)(int device, uint64_t bytes, ec_slab *out);
    /* Daemon: unmap and release the slab and close its descriptor. Memory a
     * client imported stays valid for that client until it closes it. */
    void (*slab_destroy)(ec_slab *s);
    /* Daemon: copy bytes from (registered) host memory into the slab; returns
     * when the copy is complete. */
    int (*slab_write)(ec_slab *s, uint64_t off, const void *src, size_t bytes);
    /* Client: import and map a slab the daemon exported, from its file
     * descriptor (the caller keeps and closes fd); the base is readable by
     * this backend's gather on `device`. handle is unused (zeros). */
    int (*slab_open)(int device, const uint8_t *handle, int fd, uint64_t bytes, void **base_out);
    void (*slab_close)(int device, void *base, uint64_t bytes);
    /* Daemon: the memory of `device` (cudaMemGetInfo): *total bytes, and
     * *free_bytes not allocated by anyone now, for sizing the device-tier
     * slab (core/devtier.c). 0, or EC_EDEVICE with a message. NULL in the
     * CPU backend. Emu: EMBCACHE_EMU_GPU_MEM=bytes (default 16G) in all,
     * EMBCACHE_EMU_GPU_USED=bytes of it taken (default 0); its own slabs
     * are not counted. */
    int (*device_memory)(int device, uint64_t *total, uint64_t *free_bytes);
} ec_backend;

enum ec_backend_kind {
    EC_BACKEND_AUTO = 0,
    EC_BACKEND_CPU = 1,
    EC_BACKEND_CUDA = 2,
    EC_BACKEND_EMU = 3,
};

/* The backend for `kind`. AUTO picks CUDA when it was built and finds a GPU,
 * else CPU, and logs the choice once per process. CUDA when unavailable
 * returns NULL with a message saying why. EMBCACHE_BACKEND=cpu|cuda|emu in
 * the environment overrides AUTO. */
const ec_backend *ec_backend_get(enum ec_backend_kind kind);

/* The CPU backend; always available. */
extern const ec_backend ec_backend_cpu;
/* The GPU emulator (see above); always built, never chosen by AUTO. */
extern const ec_backend ec_backend_emu;
/* Emulator, for tests: read-only host registrations asked of it so far in
 * this process (each a real cudaHostRegister on a GPU). */
long ec_backend_emu_readonly_registrations(void);
/* Emulator, for tests: epochs released by an emulated stream write
 * (ec_gather_desc.release_dev) so far in this process. */
long ec_backend_emu_stream_writes(void);

/* The CUDA backend's probe: the backend when CUDA is built in and a device is
 * usable, else NULL with a message (defined in backend_cuda.c when built,
 * in backend.c otherwise). */
const ec_backend *ec_backend_cuda_probe(void);

/* The CPU implementation of a host-output gather, conversion included; the
 * other backends call it for host outputs. */
int ec_cpu_gather(const ec_gather_desc *g);

#endif
