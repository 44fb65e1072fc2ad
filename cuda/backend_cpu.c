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
#define ROWS(rb)                                                                 \
    do {                                                                         \
        if (g->dst_rows)                                                         \
            for (size_t i = 0; i < g->n; i++)                                    \
                memcpy(dst + g->dst_rows[i] * (rb), g->src[i], (rb));            \
        else                                                                     \
            for (size_t i = 0; i < g->n; i++)                                    \
                memcpy(dst + i * (rb), g->src[i], (rb));                         \
    } while (0)
    /* Common row sizes get a fixed-size copy the compiler can inline. */
    switch (g->row_bytes) {
    case 256: ROWS(256); break;
    case 512: ROWS(512); break;
    default: ROWS(g->row_bytes); break;
    }
#undef ROWS
    return 0;
}

const ec_backend ec_backend_cpu = {
    .name = "cpu",
    .device_count = cpu_device_count,
    .gather = cpu_gather,
};
