/*
 * ivffile.h - the file of an approximate (IVF-Flat) index of one tensor
 * version: its layout, and the one validator every reader runs before it
 * trusts a byte of it.
 *
 * Written by the builder in libembcache (client/client_index.c) into a
 * memfd; checked in full, checksums included, by embcached (INDEX_PUT,
 * core/server_index.c) before it stores it as <data_dir>/indexes/<id>.ivf;
 * checked again, structure only, by every client that maps it for a search
 * (client/client_ivf.c). Pure functions over memory the caller maps: any
 * process, any thread.
 *
 * Two formats. Format 1: the index of a tensor; its ids are row numbers.
 * Format 2 adds flags: with EC_IVF_KEYED, the index of a dynamic table
 * (shm/dyntable.h), whose ids are the table's int64 keys and whose
 * built_lsn is the table's lsn when the build began (a row written since
 * is in a slot of a larger lsn: searches score those exactly,
 * client/client_dynivf.c); rows is the number of keys indexed. A tensor's
 * index is still written as format 1, so that an older daemon reads it;
 * both formats are read.
 *
 * Layout (little-endian, offsets from the start of the file, every section
 * 64-byte aligned, in this order, nothing after the last):
 *
 *   header     ec_ivf_header, 1024 bytes, XXH3-64 of its first 1016 bytes
 *              in its last 8
 *   centroids  f32[nlist][dim]      the coarse quantizer
 *   offsets    u64[nlist + 1]       list l is [offsets[l], offsets[l + 1])
 *                                   of the two arrays below; offsets[0] = 0,
 *                                   non-decreasing, offsets[nlist] = rows
 *   ids        i64[rows]            row ids in list order: every id of
 *                                   [0, rows) exactly once; KEYED: the
 *                                   keys, each once, any int64
 *   norms      f32[rows]            |x|^2 of each stored vector
 *   vectors    f32[rows][dim]       the rows in list order (unit length for
 *                                   EC_METRIC_COSINE; a row of norm 0 stays 0)
 *
 * Each section's XXH3-64 is in the header. Invariants the validator
 * enforces (and a reader may rely on after it returned 0):
 *   1. every section lies inside the file, after the header and after the
 *      section before it, and has exactly the size its counts give;
 *   2. 1 <= nlist <= rows, 1 <= dim <= EC_IVF_MAX_DIM, rows < 2^40;
 *   3. the offsets are as above, so every list lies inside ids/vectors;
 *   4. every id is in [0, rows) and appears once; KEYED: no key appears
 *      twice, checked only with checksums (the daemon's full check): a
 *      reader that skips it must bear a repeated key (client_dynivf.c
 *      drops repeats), which no memory access depends on;
 *   5. metric is one of ec_metric, names are NUL-terminated valid strings;
 *   6. format 1 has flags 0, format 2 no flag but EC_IVF_KEYED; built_lsn
 *      is 0 unless KEYED.
 */
#ifndef EC_COMMON_IVFFILE_H
#define EC_COMMON_IVFFILE_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "embcache.h"

#define EC_IVF_MAGIC UINT64_C(0x0000314656494345) /* "ECIVF1\0\0" */
#define EC_IVF_FORMAT 1u          /* a tensor's index */
#define EC_IVF_FORMAT_KEYED 2u    /* format 2: flags, EC_IVF_KEYED */
#define EC_IVF_KEYED 1u           /* flag: ids are a dynamic table's keys */
#define EC_IVF_HEADER_SIZE 1024u
#define EC_IVF_ALIGN 64u
#define EC_IVF_MAX_DIM 65536u
#define EC_IVF_MAX_ROWS (UINT64_C(1) << 40)

enum ec_ivf_sec {
    EC_IVF_CENTROIDS = 0,
    EC_IVF_OFFSETS = 1,
    EC_IVF_IDS = 2,
    EC_IVF_NORMS = 3,
    EC_IVF_VECTORS = 4,
    EC_IVF_NSEC = 5,
};

typedef struct ec_ivf_section {
    uint64_t offset;
    uint64_t size;
    uint64_t checksum;            /* XXH3-64 of the section's bytes */
} ec_ivf_section;

typedef struct ec_ivf_header {
    uint64_t magic;               /* EC_IVF_MAGIC */
    uint32_t format;              /* EC_IVF_FORMAT */
    uint32_t header_size;         /* EC_IVF_HEADER_SIZE */
    char model[EC_NAME_MAX + 1];  /* the tensor it indexes, NUL-terminated */
    char tensor[EC_NAME_MAX + 1];
    int64_t version;              /* the version number (never an alias) */
    uint64_t tensor_id;           /* the daemon's id of that tensor (RESOLVE) */
    uint64_t rows;                /* the tensor's shape[0] */
    uint64_t dim;                 /* its shape[1] */
    uint32_t dtype;               /* of the stored vectors: EC_DTYPE_F32 */
    uint32_t src_dtype;           /* the tensor's dtype (f32, f16, bf16) */
    uint32_t metric;              /* ec_metric the lists were made for */
    uint32_t nlist;
    uint64_t built_lsn;           /* KEYED: the table's lsn when the build began;
                                   * else 0 */
    uint64_t train_rows;          /* rows k-means was trained on */
    uint32_t iters;               /* k-means iterations */
    uint32_t flags;               /* format 1: 0; format 2: EC_IVF_KEYED or 0 */
    ec_ivf_section sec[EC_IVF_NSEC];
    uint8_t reserved[EC_IVF_HEADER_SIZE - 8 - 600 - EC_IVF_NSEC * 24];
    uint64_t header_checksum;     /* XXH3-64 of the bytes before it */
} ec_ivf_header;

static_assert(offsetof(ec_ivf_header, version) == 528, "ivf header layout");
static_assert(offsetof(ec_ivf_header, sec) == 600, "ivf header layout");
static_assert(sizeof(ec_ivf_header) == EC_IVF_HEADER_SIZE, "ivf header is 1024 bytes");
static_assert(offsetof(ec_ivf_header, header_checksum) == EC_IVF_HEADER_SIZE - 8,
              "the header checksum ends the header");

/* A validated index, as pointers into the caller's mapping. */
typedef struct ec_ivf_view {
    const ec_ivf_header *h;
    uint64_t rows, dim;
    uint32_t nlist;
    ec_metric metric;
    const float *centroids;       /* nlist * dim */
    const uint64_t *offsets;      /* nlist + 1 */
    const int64_t *ids;           /* rows */
    const float *norms;           /* rows */
    const float *vectors;         /* rows * dim */
} ec_ivf_view;

/* The size of each section and of the whole file for these counts (0 when
 * they overflow), and the section offsets a writer uses. */
uint64_t ec_ivf_layout(uint64_t rows, uint64_t dim, uint32_t nlist,
                       ec_ivf_section sec[EC_IVF_NSEC]);

/* XXH3-64 of n bytes. */
uint64_t ec_ivf_hash(const void *p, size_t n);

/* Fill the section checksums and the header checksum of a file whose header
 * and sections are written (base: the whole file, size bytes). */
void ec_ivf_seal(void *base, uint64_t size);

/* Read the header of the index file at path and check its magic, format
 * and header checksum (nothing else): 0 and *out, EC_ENOENT when there is
 * no file, EC_EFORMAT, EC_EIO. For the daemon's start (core/dyntable.c). */
int ec_ivf_read_header(const char *path, ec_ivf_header *out);

/*
 * Validate the file mapped at base (size bytes, 8-byte aligned): every rule
 * above; with checksums, the sections' checksums as well (the header's is
 * always checked). Returns 0 and fills out, or EC_EFORMAT with a message
 * that names what is wrong (EC_ENOMEM for the id bitmap).
 */
int ec_ivf_check(const void *base, uint64_t size, bool checksums, ec_ivf_view *out);

#endif /* EC_COMMON_IVFFILE_H */
