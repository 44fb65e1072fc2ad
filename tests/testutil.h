/*
 * testutil.h - helpers shared by the test programs: temporary directories,
 * writing small .npy / .safetensors files, deterministic row contents, and
 * starting/stopping a real embcached. Used by tests only.
 */
#ifndef EC_TESTUTIL_H
#define EC_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cmocka.h>

#include "embcache.h"

#define EC_TEST_SKIP 77

/* mkdtemp under $TMPDIR (or /tmp) with a prefix; aborts the test on failure.
 * Returns a malloc'd path. */
char *ect_tmpdir(const char *prefix);

/* rm -rf path, with the segments its data directories record
 * (ec_segment_rmtree). */
void ect_rmtree(const char *path);

/* Write a whole file. Returns 0 or -errno. */
int ect_write_file(const char *path, const void *buf, size_t len);

/* Read a whole file into a malloc'd buffer. */
void *ect_read_file(const char *path, size_t *len_out);

/* Deterministic contents for element i of a test tensor, as bytes of dtype:
 * fills `out` (n elements of dtype) with values derived from (seed, first
 * element index). Values are distinct per position for every dtype wide
 * enough, so misplaced rows are caught. */
void ect_fill(ec_dtype dtype, uint64_t seed, uint64_t first, uint64_t n, void *out);

/* Write a C-order little-endian .npy file of the given dtype and shape filled
 * by ect_fill(dtype, seed, 0, ...). Returns 0 or -errno. */
int ect_write_npy(const char *path, ec_dtype dtype, uint32_t ndim, const uint64_t *shape,
                  uint64_t seed);
/* The same holding the shape's elements of data (C order, little-endian). */
int ect_write_npy_data(const char *path, ec_dtype dtype, uint32_t ndim, const uint64_t *shape,
                       const void *data);

/* One tensor for ect_write_safetensors. */
typedef struct ect_st_tensor {
    const char *name;
    ec_dtype dtype;
    uint32_t ndim;
    uint64_t shape[EC_MAX_DIMS];
    uint64_t seed;
} ect_st_tensor;

/* Write a .safetensors file holding the tensors, each filled by ect_fill. */
int ect_write_safetensors(const char *path, const ect_st_tensor *t, size_t n);

/* Start embcached in the foreground as a child: data_dir, socket, extra
 * NULL-terminated args; waits until the socket accepts connections (or
 * fails the test after 20 s). Returns its pid. */
pid_t ect_daemon_start(const char *data_dir, const char *socket, const char *const *extra);

/* SIGTERM the daemon and wait; returns its exit status (as from waitpid). */
int ect_daemon_stop(pid_t pid);

/* The daemon's worker, the process that serves (embcached forks it and
 * keeps the segment for it; its pid is in DATA_DIR/embcached.lock). Fails
 * the test when there is none within 20 s. */
pid_t ect_daemon_worker(const char *data_dir);

/* Where every GPU test decides to skip. A GPU test (test_backend cuda,
 * test_gather_kernel, test_devtier cuda; bench_gpu_smoke and python_gpu
 * through tests/gpu/gpu_skip.c, the Python tests through conftest.py's
 * gpu_unavailable, which follows the same rule) that cannot run (why)
 * returns what this returns as its exit status:
 *  - 1 (failed) under EMBCACHE_REQUIRE_GPU=1, always: a GPU machine's run
 *    must run them;
 *  - 77 (skipped) when this machine has no NVIDIA GPU (ect_gpu_present);
 *  - 77 when the GPU lacks a feature the test needs (missing_feature);
 *  - 1 otherwise: a machine with a GPU that cannot run the test (a build
 *    without CUDA, a driver that fails) is a failure, not a missing GPU.
 * A CUDA probe that crashes must not get here: it is a failure (run it in
 * a child and fail on a signal, as test_devtier does, or let the crash end
 * the test). Prints which, with why. */
int ect_gpu_unavailable(const char *why, bool missing_feature);

/* EMBCACHE_REQUIRE_GPU=1 is set. */
bool ect_gpu_required(void);

/* Does this machine have an NVIDIA GPU: /dev/nvidiactl or /dev/nvidia0, or
 * a GPU under /proc/driver/nvidia/gpus? EMBCACHE_TEST_GPU_PRESENT=1 or 0
 * overrides the answer (to test this logic on machines without one). */
bool ect_gpu_present(void);

/* Is pid a running process (not gone, not a zombie)? */
bool ect_pid_alive(pid_t pid);

/* Crash the daemon: SIGKILL its worker and wait until the keeper's next
 * worker accepts connections on socket (a warm restart). Returns the new
 * worker's pid. */
pid_t ect_daemon_crash(const char *data_dir, const char *socket);

/* Wait until a worker other than `old` accepts connections on socket;
 * returns its pid (fails the test after 20 s). */
pid_t ect_daemon_wait_worker(const char *data_dir, const char *socket, pid_t old);

/* Run a program with args (NULL-terminated), capturing stdout and stderr
 * into malloc'd buffers (may be NULL). Returns the exit status (0..255), or
 * 128+signal. */
int ect_run(const char *const *argv, char **out, size_t *out_len, char **err);

/* Are redis-server and redis-cli on PATH (what the cluster tests need)? */
bool ect_redis_installed(void);

/* CLOCK_MONOTONIC in milliseconds. */
uint64_t ect_now_ms(void);
/* Can a TCP socket bind this loopback port now? */
bool ect_port_free(int port);
/* A random base port below the kernel's ephemeral range such that base..
 * base+n-1 (and, with span, base+span..base+span+n-1) are free now; -1 after
 * 200 tries. */
int ect_port_base(unsigned *seed, int n, int span);
/* A loopback TCP port nobody listens on now (the kernel's pick, given back). */
unsigned ect_free_port(void);

/* A local Redis Cluster (tests/redis/cluster.sh) for the tests that need one. */
typedef struct ect_cluster {
    const char *script; /* cluster.sh; set by the caller */
    const char *dir;    /* its directory (the caller's); set by the caller */
    int base;           /* first node's port once started (bus ports +10000); 0: none */
    int pipe;           /* our end of the watchdog's pipe; -1: none */
    pid_t watchdog;
    char dir_buf[600];  /* dir, when ect_cluster_start_in chose it */
} ect_cluster;

/* Run `cluster.sh CMD DIR [ARG2]`, its output in *out (malloc'd; NULL: dropped, and
 * printed when it fails). Returns its exit status. */
int ect_cluster_sh(const ect_cluster *c, const char *cmd, const char *arg2, char **out);
/* Start `nodes` nodes (cluster.sh's masters and replicas) on loopback ports from a
 * random base whose node and bus ports are free, trying up to 5 bases; a watchdog
 * child stops the cluster when this process ends, however it ends. 0, or -1 having
 * said why. */
int ect_cluster_start(ect_cluster *c, int nodes);
/* ect_cluster_start with script, in parent/cluster, and url (cap bytes) set to
 * "redis-cluster://" and the first `seeds` nodes (1 or 2). 0, or -1. */
int ect_cluster_start_in(ect_cluster *c, const char *script, const char *parent, int nodes,
                         int seeds, char *url, size_t cap);
/* Stop it (when started) and its watchdog. */
void ect_cluster_stop(ect_cluster *c);

#endif
