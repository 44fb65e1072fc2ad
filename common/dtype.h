/*
 * dtype.h - dtype names and sizes shared by the importers, the catalog,
 * the protocol and the tools.
 */
#ifndef EC_COMMON_DTYPE_H
#define EC_COMMON_DTYPE_H

#include "embcache.h"

/* Parse "f32", "float32", "bf16", ... Returns EC_DTYPE_INVALID if unknown. */
ec_dtype ec_dtype_from_name(const char *name);

/* 1 if d is one of the supported dtypes. */
int ec_dtype_valid(uint32_t d);

#endif
