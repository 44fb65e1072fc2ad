// gpu-probe.cu - standalone checks of the CUDA facts the GPU path relies on (no embcache code).
// Run by tools/gpu-check.sh (its "probe" step). NOT YET RUN ON A GPU: written and compiled
// (nvcc 13.0) on a machine without one; expect to fix it on first contact.
// Build: nvcc -O2 -arch=sm_90 -o gpu-probe gpu-probe.cu
// Run:   ./gpu-probe attrs | shm [GiB]
//   attrs  device attributes embcache depends on (read-only host registration, IPC, VMM, compute mode)
//   shm    a POSIX shm segment registered RW by this process (the daemon's role) and, at the same
//          time, PROT_READ by two child processes (clients): flags that work, time and GPU memory
//          per registration, and a kernel reading every byte through the read-only mapping
// (The device slab is shared as a cuMemCreate file descriptor, not by CUDA IPC handles: that
// path is checked across processes by test_devtier_cuda and tests/gpu/gpu-xproc.py.)
// Every line of output starts with "probe:"; a verdict line starts with "probe: RESULT".
#include <cuda_runtime.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_ != cudaSuccess) {                                                                \
            printf("probe: %s failed: %s (%s)\n", #x, cudaGetErrorName(e_), cudaGetErrorString(e_)); \
            fflush(stdout);                                                                     \
            exit(3);                                                                            \
        }                                                                                       \
    } while (0)

__global__ void fill(unsigned long long *p, size_t n, unsigned long long salt)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = (i * 0x9e3779b97f4a7c15ull) ^ salt;
}

__global__ void xsum(const unsigned long long *p, size_t n, unsigned long long *out)
{
    unsigned long long s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        s ^= p[i] + i;
    atomicXor(out, s);
}

static unsigned long long want_xsum(size_t n, unsigned long long salt)
{
    unsigned long long s = 0;
    for (size_t i = 0; i < n; i++)
        s ^= ((i * 0x9e3779b97f4a7c15ull) ^ salt) + i;
    return s;
}

// XOR-sum of n words at device address p; returns the CUDA error of the launch/sync.
static cudaError_t dev_xsum(const void *p, size_t n, unsigned long long *res, double *secs)
{
    unsigned long long *d = NULL;
    cudaError_t e = cudaMalloc(&d, 8);
    double t0;
    if (e) return e;
    cudaMemset(d, 0, 8);
    t0 = now();
    xsum<<<132 * 8, 256>>>((const unsigned long long *)p, n, d);
    e = cudaDeviceSynchronize();
    if (secs) *secs = now() - t0;
    if (!e) e = cudaMemcpy(res, d, 8, cudaMemcpyDeviceToHost);
    cudaFree(d);
    return e;
}

static void attrs(void)
{
    static const struct { int a; const char *n; } A[] = {
        {cudaDevAttrHostRegisterSupported, "HostRegisterSupported(99)"},
        {cudaDevAttrHostRegisterReadOnlySupported, "HostRegisterReadOnlySupported(113)"},
        {cudaDevAttrCanUseHostPointerForRegisteredMem, "CanUseHostPointerForRegisteredMem(91)"},
        {cudaDevAttrPageableMemoryAccess, "PageableMemoryAccess(88)"},
        {cudaDevAttrPageableMemoryAccessUsesHostPageTables, "PageableMemoryAccessUsesHostPageTables(100)"},
        {cudaDevAttrCanMapHostMemory, "CanMapHostMemory"},
        {cudaDevAttrUnifiedAddressing, "UnifiedAddressing"},
        {cudaDevAttrComputeMode, "ComputeMode(0=default,2=prohibited,3=exclusive-process)"},
        {cudaDevAttrIpcEventSupport, "IpcEventSupport"},
        {cudaDevAttrMemoryPoolsSupported, "MemoryPoolsSupported"},
        {cudaDevAttrMemoryPoolSupportedHandleTypes, "MemoryPoolSupportedHandleTypes(1=posix-fd)"},
        {cudaDevAttrGPUDirectRDMASupported, "GPUDirectRDMASupported"},
        {cudaDevAttrMultiProcessorCount, "SMs"},
    };
    int n = 0, drv = 0, rt = 0;
    CK(cudaGetDeviceCount(&n));
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    printf("probe: driver %d runtime %d, %d GPU(s); CUDA_VISIBLE_DEVICES=%s\n", drv, rt, n,
           getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "(unset)");
    for (int d = 0; d < n; d++) {
        cudaDeviceProp p;
        char bus[32];
        CK(cudaGetDeviceProperties(&p, d));
        CK(cudaDeviceGetPCIBusId(bus, sizeof(bus), d));
        printf("probe: GPU %d: %s sm_%d%d, %.1f GiB, bus id '%s' (%zu chars)\n", d, p.name, p.major,
               p.minor, p.totalGlobalMem / 1073741824.0, bus, strlen(bus));
        for (size_t i = 0; i < sizeof(A) / sizeof(A[0]); i++) {
            int v = -1;
            cudaError_t e = cudaDeviceGetAttribute(&v, (cudaDeviceAttr)A[i].a, d);
            printf("probe:   %-52s %d%s\n", A[i].n, v, e ? " (query failed)" : "");
        }
    }
}

/* ---- shared segment: daemon registers RW, clients register the PROT_READ mapping ---- */

static int shm_client(const char *name, size_t bytes)
{
    int fd = shm_open(name, O_RDONLY, 0);
    size_t n = bytes / 8, fr0, fr1, tot;
    unsigned long long got = 0;
    double t0, treg = -1, tk = 0;
    void *p, *dp = NULL;
    cudaError_t e;
    int ro = 0;

    if (fd < 0) { printf("probe: client shm_open: %s\n", strerror(errno)); return 2; }
    p = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { printf("probe: client mmap: %s\n", strerror(errno)); return 2; }
    CK(cudaSetDevice(0));
    CK(cudaFree(0));
    cudaDeviceGetAttribute(&ro, cudaDevAttrHostRegisterReadOnlySupported, 0);
    CK(cudaMemGetInfo(&fr0, &tot));
    e = cudaHostRegister(p, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped);
    printf("probe: [client %d] PROT_READ mapping, Portable|Mapped (no ReadOnly): %s\n", getpid(),
           cudaGetErrorName(e));
    if (e == cudaSuccess) cudaHostUnregister(p);
    cudaGetLastError();
    t0 = now();
    e = cudaHostRegister(p, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped | cudaHostRegisterReadOnly);
    treg = now() - t0;
    printf("probe: [client %d] PROT_READ mapping, Portable|Mapped|ReadOnly (attr 113 = %d): %s in %.3f s "
           "(%.3f s/GiB)\n", getpid(), ro, cudaGetErrorName(e), treg, treg / (bytes / 1073741824.0));
    if (e != cudaSuccess) {
        /* Not a failure of embcache: its clients then stage host rows through a pinned
         * buffer of their own (issue 13, item 1). What the machine does is the finding. */
        printf("probe: RESULT shm-ro UNSUPPORTED: a read-only mapping cannot be registered here "
               "(embcache clients must stage host rows)\n");
        return 0;
    }
    CK(cudaMemGetInfo(&fr1, &tot));
    printf("probe: [client %d] GPU memory used by this registration: %.1f MiB for %.2f GiB\n", getpid(),
           ((double)fr0 - (double)fr1) / 1048576.0, bytes / 1073741824.0);
    CK(cudaHostGetDevicePointer(&dp, p, 0));
    e = dev_xsum(dp, n, &got, &tk);
    printf("probe: [client %d] kernel read of the whole mapping: %s, %.2f GB/s zero-copy, %s\n",
           getpid(), cudaGetErrorName(e), bytes / tk / 1e9,
           e ? "-" : got == want_xsum(n, 0x5eedull) ? "bytes exact" : "MISMATCH");
    t0 = now();
    cudaHostUnregister(p);
    printf("probe: [client %d] unregister %.3f s\n", getpid(), now() - t0);
    printf("probe: RESULT shm-ro %s\n", !e && got == want_xsum(n, 0x5eedull) ? "OK" : "FAIL");
    return !e && got == want_xsum(n, 0x5eedull) ? 0 : 1;
}

static int shm_owner(const char *self, double gib)
{
    size_t bytes = (size_t)(gib * 1073741824.0) / 4096 * 4096, n = bytes / 8;
    char name[64], sz[32];
    unsigned long long *p;
    double t0;
    pid_t kid[2];
    int fd, st, bad = 0;

    snprintf(name, sizeof(name), "/ec-gpu-probe-%d", getpid());
    snprintf(sz, sizeof(sz), "%zu", bytes);
    fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 || posix_fallocate(fd, 0, bytes)) {
        printf("probe: cannot create a %.2f GiB shm segment (df /dev/shm?)\n", gib);
        if (fd >= 0) shm_unlink(name);
        return 2;
    }
    p = (unsigned long long *)mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    for (size_t i = 0; i < n; i++)
        p[i] = (i * 0x9e3779b97f4a7c15ull) ^ 0x5eedull;
    CK(cudaSetDevice(0));
    CK(cudaFree(0));
    t0 = now();
    cudaError_t e = cudaHostRegister(p, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped);
    printf("probe: [owner] RW MAP_SHARED shm, Portable|Mapped: %s in %.3f s (%.3f s/GiB)\n",
           cudaGetErrorName(e), now() - t0, (now() - t0) / gib);
    fflush(stdout);
    for (int k = 0; k < 2; k++) { // two clients at once, while the owner holds its RW registration
        if ((kid[k] = fork()) == 0) {
            execl(self, self, "shm-client", name, sz, (char *)NULL);
            _exit(127);
        }
    }
    for (int k = 0; k < 2; k++) {
        waitpid(kid[k], &st, 0);
        bad |= !WIFEXITED(st) || WEXITSTATUS(st);
    }
    if (e == cudaSuccess) cudaHostUnregister(p);
    munmap(p, bytes);
    shm_unlink(name);
    return bad;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && !strcmp(argv[1], "attrs")) { attrs(); return 0; }
    if (argc > 1 && !strcmp(argv[1], "shm")) return shm_owner(argv[0], argc > 2 ? atof(argv[2]) : 4.0);
    if (argc > 3 && !strcmp(argv[1], "shm-client")) return shm_client(argv[2], strtoull(argv[3], 0, 10));
    fprintf(stderr, "usage: %s attrs | shm [GiB]\n", argv[0]);
    return 2;
}
