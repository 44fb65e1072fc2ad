/*
 * dtype.c - dtype names and sizes (see dtype.h and embcache.h).
 */
#include "dtype.h"

#include <string.h>

static const struct {
    const char *name;
    const char *alt;
    size_t size;
} dtypes[] = {
    [EC_DTYPE_INVALID] = {NULL, NULL, 0},
    [EC_DTYPE_F32] = {"f32", "float32", 4},
    [EC_DTYPE_F16] = {"f16", "float16", 2},
    [EC_DTYPE_BF16] = {"bf16", "bfloat16", 2},
    [EC_DTYPE_F64] = {"f64", "float64", 8},
    [EC_DTYPE_I8] = {"i8", "int8", 1},
    [EC_DTYPE_U8] = {"u8", "uint8", 1},
    [EC_DTYPE_I32] = {"i32", "int32", 4},
    [EC_DTYPE_I64] = {"i64", "int64", 8},
};

int ec_dtype_valid(uint32_t d)
{
    return d >= EC_DTYPE_F32 && d <= EC_DTYPE_I64;
}

const char *ec_dtype_name(ec_dtype d)
{
    return ec_dtype_valid((uint32_t)d) ? dtypes[d].name : NULL;
}

size_t ec_dtype_size(ec_dtype d)
{
    return ec_dtype_valid((uint32_t)d) ? dtypes[d].size : 0;
}

ec_dtype ec_dtype_from_name(const char *name)
{
    if (!name)
        return EC_DTYPE_INVALID;
    for (uint32_t d = EC_DTYPE_F32; d <= EC_DTYPE_I64; d++)
        if (!strcmp(name, dtypes[d].name) || !strcmp(name, dtypes[d].alt))
            return (ec_dtype)d;
    return EC_DTYPE_INVALID;
}

const char *ec_version(void)
{
    return EC_VERSION_STRING;
}
