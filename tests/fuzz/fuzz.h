/*
 * fuzz.h - shared by the fuzz targets (fuzz_npy.c, fuzz_safetensors.c,
 * fuzz_proto.c) and their standalone driver (driver.c).
 *
 * Each target defines LLVMFuzzerTestOneInput, the libFuzzer entry point, so
 * the same file links either with -fsanitize=fuzzer (EMBCACHE_FUZZ=ON, clang)
 * or with driver.c, a deterministic mutation loop that ctest runs as a smoke
 * test. FUZZ_CHECK is an assert that stays on under NDEBUG (release builds
 * define it) and aborts, which both libFuzzer and ctest report as a crash.
 * Single-threaded; test code only.
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

#define FUZZ_CHECK(cond)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                           \
            abort();                                                                  \
        }                                                                             \
    } while (0)

#endif
