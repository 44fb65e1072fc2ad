/*
 * gpu_skip.c - ect-gpu-skip: the skip rule of the GPU tests
 * (ect_gpu_unavailable in tests/testutil.h) for tests that are scripts or
 * commands rather than C programs: bench_gpu_smoke, python_gpu, and the
 * placeholder of test_gather_kernel in a build without CUDA.
 *
 *   ect-gpu-skip [--missing-feature] WHY...
 *
 * Prints the verdict with WHY and exits 77 (skipped) or 1 (failed).
 *   ect-gpu-skip --present   exits 0 when this machine has an NVIDIA GPU, else 1
 */
#include <stdio.h>
#include <string.h>

#include "testutil.h"

int main(int argc, char **argv)
{
    char why[1024] = "";
    bool feature = false;
    int i = 1;

    if (argc == 2 && !strcmp(argv[1], "--present"))
        return ect_gpu_present() ? 0 : 1;
    if (i < argc && !strcmp(argv[i], "--missing-feature")) {
        feature = true;
        i++;
    }
    for (; i < argc; i++)
        snprintf(why + strlen(why), sizeof(why) - strlen(why), "%s%s", why[0] ? " " : "",
                 argv[i]);
    if (!why[0])
        snprintf(why, sizeof(why), "the test cannot run here");
    fflush(stdout);
    return ect_gpu_unavailable(why, feature);
}
