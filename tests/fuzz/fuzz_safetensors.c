/*
 * fuzz_safetensors.c - fuzz target for the .safetensors reader
 * (ec_safetensors_parse_buf in core/safetensors.c), which the daemon's
 * importer runs on files handed over by clients.
 *
 * Every input is parsed; a failure must leave the output list untouched, and
 * a success must satisfy what the importer relies on: at most
 * EC_TF_MAX_TENSORS tensors with valid, unique names, ndim <= 8, data_len ==
 * product(shape) * dtype size, every data range inside the data section
 * (which starts after the 8-byte length and the JSON header) and inside the
 * buffer, ranges sorted by data_off, and no two non-empty ranges
 * overlapping. Built with driver.c (ctest smoke run) or with libFuzzer
 * (EMBCACHE_FUZZ=ON).
 */
#include <string.h>

#include "core/tensorfile.h"
#include "fuzz.h"

static int cmp_name(const void *a, const void *b)
{
    const ec_tf_tensor *const *x = a, *const *y = b;

    return strcmp((*x)->name, (*y)->name);
}

static void check_list(const ec_tf_list *l, const uint8_t *data, size_t size)
{
    const ec_tf_tensor **byname;
    uint64_t hl = 0, data_start, max_end;

    FUZZ_CHECK(size >= 8);
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | data[i];
    FUZZ_CHECK(hl <= size - 8);
    data_start = 8 + hl;
    max_end = data_start;
    FUZZ_CHECK(l->n <= EC_TF_MAX_TENSORS);
    FUZZ_CHECK(l->n == 0 || l->tensors != NULL);
    for (size_t i = 0; i < l->n; i++) {
        const ec_tf_tensor *t = &l->tensors[i];
        size_t nl = strnlen(t->name, sizeof(t->name));
        uint64_t bytes;

        FUZZ_CHECK(nl >= 1 && nl <= EC_NAME_MAX);
        FUZZ_CHECK(ec_dtype_size(t->dtype) != 0);
        FUZZ_CHECK(t->ndim <= EC_MAX_DIMS);
        FUZZ_CHECK(!t->byteswap);
        bytes = ec_dtype_size(t->dtype);
        for (uint32_t d = 0; d < t->ndim; d++)
            FUZZ_CHECK(!__builtin_mul_overflow(bytes, t->shape[d], &bytes));
        FUZZ_CHECK(bytes == t->data_len);
        FUZZ_CHECK(t->data_off >= data_start && t->data_off <= size);
        FUZZ_CHECK(t->data_len <= size - t->data_off);
        if (i > 0)
            FUZZ_CHECK(t->data_off >= l->tensors[i - 1].data_off);
        if (t->data_len > 0) {
            FUZZ_CHECK(t->data_off >= max_end);
            max_end = t->data_off + t->data_len;
        }
    }
    if (l->n < 2)
        return;
    byname = malloc(l->n * sizeof(*byname));
    FUZZ_CHECK(byname != NULL);
    for (size_t i = 0; i < l->n; i++)
        byname[i] = &l->tensors[i];
    qsort(byname, l->n, sizeof(*byname), cmp_name);
    for (size_t i = 1; i < l->n; i++)
        FUZZ_CHECK(strcmp(byname[i - 1]->name, byname[i]->name) != 0);
    free(byname);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ec_tf_list l = {0};
    int rc = ec_safetensors_parse_buf(data, size, &l);

    if (rc == 0) {
        check_list(&l, data, size);
    } else {
        /* Output parameters are written only on success. */
        FUZZ_CHECK(rc < 0 && rc >= EC_E_LAST);
        FUZZ_CHECK(l.n == 0 && l.tensors == NULL);
    }
    ec_tf_list_clear(&l);
    return 0;
}
