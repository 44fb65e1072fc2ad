/*
 * backend.h - the device backend interface.
 *
 * A backend moves rows from where embcache keeps them to where a caller
 * wants them, and (for the daemon) manages the device tier's memory. Three
 * implementations sit behind one table of function pointers:
 *  - cpu:  memcpy into host memory; always built; what CI runs. Has no
 *          device tier (the slab functions are NULL).
 *  - cuda: built when the toolkit is found, used when a driver and a GPU are
 *          present: pinned/mapped host memory, cudaMalloc slabs exported by
 *          CUDA IPC handle, and the gather kernel (cuda/gather.cu).
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
} ec_gather_desc;

/* GPUs embcache can use per process: ordinals 0..7 (layout.h's
 * EC_SHM_MAX_DEVICES is the same number). */
#define EC_BACKEND_MAX_DEVICES 8

/* A device-tier slab: the daemon creates it; clients open it by handle. */
#define EC_SLAB_HANDLE_BYTES 64 /* sizeof(cudaIpcMemHandle_t) */
typedef struct ec_slab {
    int device;
    uint64_t bytes;
    void *base;       /* daemon: the device address (emu: host mapping) */
    uint8_t handle[EC_SLAB_HANDLE_BYTES]; /* what a client opens */
    int fd;           /* emu: the memfd to pass to clients; -1 for CUDA */
} ec_slab;

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
    /* Register host memory [base, base+len) with every device: the daemon
     * (readonly false) for DMA copies into slabs; a client (readonly true,
     * mapped) so kernels read it over PCIe. *dev_base_out (may be NULL)
     * receives base's address on `device`. */
    int (*host_register)(void *base, size_t len, bool readonly, int device, void **dev_base_out);
    void (*host_unregister)(void *base);
    /* Daemon: allocate and export a slab of `bytes` on `device`. */
    int (*slab_create)(int device, uint64_t bytes, ec_slab *out);
    void (*slab_destroy)(ec_slab *s);
    /* Daemon: copy bytes from (registered) host memory into the slab; returns
     * when the copy is complete. */
    int (*slab_write)(ec_slab *s, uint64_t off, const void *src, size_t bytes);
    /* Client: open a slab the daemon exported (handle, or fd for emu); the
     * base is readable by this backend's gather on `device`. */
    int (*slab_open)(int device, const uint8_t *handle, int fd, uint64_t bytes, void **base_out);
    void (*slab_close)(int device, void *base, uint64_t bytes);
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

/* The CUDA backend's probe: the backend when CUDA is built in and a device is
 * usable, else NULL with a message (defined in backend_cuda.c when built,
 * in backend.c otherwise). */
const ec_backend *ec_backend_cuda_probe(void);

/* The CPU implementation of a host-output gather, conversion included; the
 * other backends call it for host outputs. */
int ec_cpu_gather(const ec_gather_desc *g);

#endif
