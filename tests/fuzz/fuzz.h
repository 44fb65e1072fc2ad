/*
 * fuzz.h - shared by the fuzz targets (fuzz_npy.c, fuzz_safetensors.c,
 * fuzz_proto.c, fuzz_origin.c, fuzz_rcluster.c) and their standalone driver
 * (driver.c).
 *
 * Each target defines LLVMFuzzerTestOneInput, the libFuzzer entry point, so
 * the same file links either with -fsanitize=fuzzer (EMBCACHE_FUZZ=ON, clang)
 * or with driver.c, a deterministic mutation loop that ctest runs as a smoke
 * test. FUZZ_CHECK is an assert that stays on under NDEBUG (release builds
 * define it) and aborts, which both libFuzzer and ctest report as a crash.
 * The driver is single-threaded (fuzz_rcluster runs a fake Redis node on a
 * thread of its own); test code only.
 */
#ifndef EC_FUZZ_H
#define EC_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Feed one input to the parser under test and check what it returns.
 * Returns 0 (libFuzzer reserves other values); aborts on a broken invariant. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* fuzz_rcluster's input (see fuzz_rcluster.c): a mode byte, then parts
 * separated by FUZZ_RCLUSTER_SEP, in which FUZZ_RCLUSTER_PORT stands for the
 * fake node's port (replaced by it as five digits, so lengths stay put). */
#define FUZZ_RCLUSTER_SEP "\n--8<--\n"
#define FUZZ_RCLUSTER_PORT "@port"

#define FUZZ_CHECK(cond)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                           \
            abort();                                                                  \
        }                                                                             \
    } while (0)

#endif
