/*
 * fuzz_npy.c - fuzz target for the .npy reader (ec_npy_parse_buf in
 * core/npy.c), which the daemon's importer runs on files handed over by
 * clients.
 *
 * Every input is parsed; a failure must leave the output list untouched and
 * return an EC_E* code, and a success must describe exactly one tensor whose
 * data fills the rest of the buffer: data_off + data_len == size, and
 * data_len == product(shape) * dtype size without overflow. Built with
 * driver.c (ctest smoke run) or with libFuzzer (EMBCACHE_FUZZ=ON).
 */
#include <string.h>

#include "core/tensorfile.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ec_tf_list l = {0};
    int rc = ec_npy_parse_buf(data, size, "t", &l);

    if (rc == 0) {
        const ec_tf_tensor *t;
        uint64_t bytes;

        FUZZ_CHECK(l.n == 1 && l.tensors != NULL);
        t = &l.tensors[0];
        FUZZ_CHECK(strcmp(t->name, "t") == 0);
        FUZZ_CHECK(ec_dtype_size(t->dtype) != 0 && t->dtype != EC_DTYPE_BF16);
        FUZZ_CHECK(t->ndim <= EC_MAX_DIMS);
        /* Magic, version, length field (10 or 12 bytes), then the header. */
        FUZZ_CHECK(t->data_off >= 10 && t->data_off <= size);
        FUZZ_CHECK(t->data_len <= size - t->data_off);
        FUZZ_CHECK(t->data_off + t->data_len == size);
        bytes = ec_dtype_size(t->dtype);
        for (uint32_t i = 0; i < t->ndim; i++)
            FUZZ_CHECK(!__builtin_mul_overflow(bytes, t->shape[i], &bytes));
        FUZZ_CHECK(bytes == t->data_len);
        FUZZ_CHECK(!t->byteswap || ec_dtype_size(t->dtype) > 1);
    } else {
        /* Output parameters are written only on success. */
        FUZZ_CHECK(rc < 0 && rc >= EC_E_LAST);
        FUZZ_CHECK(l.n == 0 && l.tensors == NULL);
    }
    ec_tf_list_clear(&l);
    return 0;
}
