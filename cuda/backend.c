/*
 * backend.c - choosing a device backend at run time (see backend.h).
 *
 * A CUDA build on a machine with no driver or no GPU runs the CPU backend
 * and says so once. The choice is made once per process and cached.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "cuda/backend.h"

#ifndef EC_HAVE_CUDA
const ec_backend *ec_backend_cuda_probe(void)
{
    ec_seterr(EC_EINVAL, "this libembcache was built without CUDA "
                         "(configure with -DEMBCACHE_CUDA=ON where the toolkit is installed)");
    return NULL;
}
#endif

const void *ec_host_map_addr(const ec_host_map *m, uint64_t off, uint64_t bytes)
{
    uint64_t k, in;

    if (!m->n || !m->chunk || off > m->len || bytes > m->len - off)
        return NULL;
    k = off / m->chunk;
    in = off % m->chunk;
    if (k >= m->n)
        return NULL;
    /* Within one chunk, or across chunks whose device addresses happen to
     * be contiguous (the usual case with UVA; not assumed). */
    for (uint64_t end = in + bytes, j = k; end > m->chunk; end -= m->chunk, j++)
        if (j + 1 >= m->n || m->dev[j + 1] != m->dev[j] + m->chunk)
            return NULL;
    return m->dev[k] + in;
}

uint64_t ec_host_register_max(void)
{
    const char *env = getenv("EMBCACHE_REGISTER_MAX");
    unsigned long long v = env ? strtoull(env, NULL, 0) : 0;

    v = v / 4096 * 4096;
    return v ? (uint64_t)v : EC_HOST_REGISTER_MAX;
}

static pthread_once_t auto_once = PTHREAD_ONCE_INIT;
static const ec_backend *auto_choice;

static void choose_auto(void)
{
    const char *env = getenv("EMBCACHE_BACKEND");
    const ec_backend *cuda;

    if (env && !strcmp(env, "cpu")) {
        auto_choice = &ec_backend_cpu;
        return;
    }
    if (env && !strcmp(env, "emu")) {
        auto_choice = &ec_backend_emu;
        ec_info("device backend: emu (%d emulated GPU(s); for tests)",
                ec_backend_emu.device_count());
        return;
    }
    cuda = ec_backend_cuda_probe();
    if (cuda) {
        auto_choice = cuda;
        ec_info("device backend: cuda (%d GPU(s))", cuda->device_count());
        return;
    }
    auto_choice = &ec_backend_cpu;
    ec_info("device backend: cpu (%s)", ec_last_error());
}

const ec_backend *ec_backend_get(enum ec_backend_kind kind)
{
    switch (kind) {
    case EC_BACKEND_CPU:
        return &ec_backend_cpu;
    case EC_BACKEND_CUDA:
        return ec_backend_cuda_probe();
    case EC_BACKEND_EMU:
        return &ec_backend_emu;
    case EC_BACKEND_AUTO:
    default:
        pthread_once(&auto_once, choose_auto);
        return auto_choice;
    }
}
