/*
 * backend_cuda.c - the CUDA device backend's host side: probing for a
 * driver and devices, and gathers into device memory.
 *
 * Built only when the CUDA toolkit is found. Every cudart error is turned
 * into an EC_E* code here, at the boundary, with cudaGetErrorString in the
 * message; nothing here exits. The gather of this version stages rows on the
 * host and copies them with one cudaMemcpyAsync on the caller's stream; the
 * device tier and the gather kernel replace that path.
 */
#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "cuda/backend.h"

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

static int cuda_gather(const ec_gather_desc *g)
{
    uint8_t *stage;
    cudaError_t e;
    int rc;

    if (g->device < 0)
        return ec_backend_cpu.gather(g);
    if (g->device >= cuda_device_count())
        return ec_seterr(EC_EINVAL, "output device %d does not exist (%d GPU(s))", g->device,
                         cuda_device_count());
    if (g->dst_rows)
        return ec_seterr(EC_EINVAL, "scattered output rows on a GPU need the device gather "
                                    "kernel, which this build does not have yet");
    stage = malloc((g->n * g->row_bytes) > 0 ? g->n * g->row_bytes : 1);
    if (!stage)
        return ec_seterr(EC_ENOMEM, "staging buffer of %zu bytes", g->n * g->row_bytes);
    ec_gather_desc host = *g;
    host.dst = stage;
    host.device = -1;
    rc = ec_backend_cpu.gather(&host);
    if (rc == 0) {
        e = cudaSetDevice(g->device);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(g->dst, stage, g->n * g->row_bytes, cudaMemcpyHostToDevice,
                                (cudaStream_t)g->stream);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize((cudaStream_t)g->stream);
        if (e != cudaSuccess)
            rc = ec_seterr(EC_EIO, "copy of %zu rows to GPU %d failed: %s", g->n, g->device,
                           cudaGetErrorString(e));
    }
    free(stage);
    return rc;
}

static const ec_backend backend_cuda = {
    .name = "cuda",
    .device_count = cuda_device_count,
    .gather = cuda_gather,
};

const ec_backend *ec_backend_cuda_probe(void)
{
    if (cuda_device_count() <= 0) {
        ec_seterr(EC_EINVAL, "%s", probe_msg);
        return NULL;
    }
    return &backend_cuda;
}
