/*
 * backend_cpu.c - the CPU device backend: rows land in host memory by
 * memcpy. The reference implementation every other backend is tested
 * against; CI and machines without a GPU run it.
 */
#include <string.h>

#include "common/err.h"
#include "cuda/backend.h"

static int cpu_device_count(void)
{
    return 0;
}

static int cpu_gather(const ec_gather_desc *g)
{
    uint8_t *dst = g->dst;

    if (g->device >= 0)
        return ec_seterr(EC_EINVAL, "output is on GPU %d but the CPU backend is in use: "
                                    "pass a host buffer, or run where CUDA is available",
                         g->device);
    /* A plain memcpy per row, of a size only known at run time: fixed-size
     * copies looked like an optimisation, but gcc turns the 512-byte one into
     * rep movsq, which measured 1.5x slower than the library's memcpy on
     * random rows (embcache-bench, hit scenario). */
    if (g->dst_rows)
        for (size_t i = 0; i < g->n; i++)
            memcpy(dst + g->dst_rows[i] * g->row_bytes, g->src[i], g->row_bytes);
    else
        for (size_t i = 0; i < g->n; i++)
            memcpy(dst + i * g->row_bytes, g->src[i], g->row_bytes);
    return 0;
}

const ec_backend ec_backend_cpu = {
    .name = "cpu",
    .device_count = cpu_device_count,
    .gather = cpu_gather,
};
