/*
 * backend.h - the device backend interface.
 *
 * A backend moves rows from the shared segment to where a caller wants them.
 * Two implementations sit behind one table of function pointers: the CPU
 * backend (memcpy; always built, what CI runs) and the CUDA backend (built
 * when the toolkit is found; used only when a driver and a GPU are present).
 * Callers never #ifdef: they ask ec_backend_get() and call through the table.
 * core/ and shm/ never include a CUDA header; vendor errors become EC_E*
 * codes inside the backend. Thread-safe: backends hold no per-call state.
 */
#ifndef EC_CUDA_BACKEND_H
#define EC_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

/* One batched gather: row src[i] (row_bytes bytes) lands at output row
 * dst_rows[i] (or i when dst_rows is NULL) of dst. */
typedef struct ec_gather_desc {
    const void *const *src; /* n source rows (host addresses in the segment) */
    size_t n;
    size_t row_bytes;
    void *dst;              /* the output array */
    const size_t *dst_rows; /* output row of each source row, or NULL */
    int device;             /* -1: host memory; >= 0: that GPU */
    void *stream;           /* the caller's CUDA stream, or NULL */
} ec_gather_desc;

typedef struct ec_backend {
    const char *name;                          /* "cpu", "cuda" */
    int (*device_count)(void);                 /* GPUs this backend can reach */
    int (*gather)(const ec_gather_desc *g);    /* 0 or EC_E* */
} ec_backend;

enum ec_backend_kind { EC_BACKEND_AUTO = 0, EC_BACKEND_CPU = 1, EC_BACKEND_CUDA = 2 };

/* The backend for `kind`. AUTO picks CUDA when it was built and finds a GPU,
 * else CPU, and logs the choice once per process. CUDA when unavailable
 * returns NULL with a message saying why. EMBCACHE_BACKEND=cpu|cuda in the
 * environment overrides AUTO. */
const ec_backend *ec_backend_get(enum ec_backend_kind kind);

/* The CPU backend; always available. */
extern const ec_backend ec_backend_cpu;

/* The CUDA backend's probe: the backend when CUDA is built in and a device is
 * usable, else NULL with a message (defined in backend_cuda.c when built,
 * in backend.c otherwise). */
const ec_backend *ec_backend_cuda_probe(void);

#endif
