/*
 * units.h - parsing sizes given on command lines ("256M", "4G", "1GiB").
 * Used by embcached and the benchmarks.
 */
#ifndef EC_COMMON_UNITS_H
#define EC_COMMON_UNITS_H

#include <stdint.h>

/* A byte count with an optional K, M, G or T suffix (powers of 1024, with
 * an optional "iB" or "B"). 0, or -1 for anything else (negative numbers,
 * junk, overflow). */
int ec_parse_size(const char *s, uint64_t *out);

#endif
