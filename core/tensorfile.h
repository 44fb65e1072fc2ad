/*
 * tensorfile.h - parsers for the input formats: NumPy .npy and .safetensors.
 *
 * Both parse from a file descriptor (the importer gets fds from clients over
 * SCM_RIGHTS) and describe tensors as (name, dtype, shape, byte offset and
 * length of the data in the file, byte order). They validate everything
 * before it is used: header lengths against the file size, dtypes against
 * what embcache supports, shapes against overflow, data ranges against the
 * file and against each other. Called by the importer thread of the daemon,
 * and by tests and fuzz targets.
 *
 * Error codes: anything wrong with the file itself is EC_EFORMAT (malformed,
 * truncated, not a regular file, or over a limit embcache sets: dimensions,
 * tensors per file, header size, name length) or EC_EDTYPE (a dtype
 * embcache does not take), so that `embcache import` exits 5 for every one
 * of them; EC_EIO is a read that failed, EC_EINVAL a bad argument from the
 * caller (a NULL pointer, a negative fd, the name given to the .npy parser).
 */
#ifndef EC_CORE_TENSORFILE_H
#define EC_CORE_TENSORFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "embcache.h"

#define EC_TF_MAX_TENSORS 4096
#define EC_TF_MAX_HEADER (100u * 1024 * 1024) /* safetensors header cap */

typedef struct ec_tf_tensor {
    char name[EC_NAME_MAX + 1];
    ec_dtype dtype;
    uint32_t ndim;
    uint64_t shape[EC_MAX_DIMS];
    uint64_t data_off;     /* absolute offset in the file */
    uint64_t data_len;     /* == product(shape) * dtype size */
    bool byteswap;         /* data is big-endian; convert while importing */
} ec_tf_tensor;

typedef struct ec_tf_list {
    ec_tf_tensor *tensors; /* malloc'd */
    size_t n;
} ec_tf_list;

void ec_tf_list_clear(ec_tf_list *l);

/* Parse a .npy file (format versions 1.0, 2.0 and 3.0; C order only; dtypes
 * <f4 <f2 <f8 |i1 |u1 <i4 <i8 and their big-endian forms, plus bool as u8 is
 * refused). `name` becomes the tensor's name. EC_EFORMAT for a malformed,
 * truncated or non-regular file or more than EC_MAX_DIMS dimensions (the
 * message says which), EC_EDTYPE for an unsupported dtype (named in the
 * message), EC_EIO for a read error, EC_EINVAL for a bad argument (a name
 * of 0 or more than EC_NAME_MAX bytes included). */
int ec_npy_parse_fd(int fd, const char *name, ec_tf_list *out);

/* Same, from a buffer holding the whole file (tests, fuzzing). */
int ec_npy_parse_buf(const void *buf, size_t len, const char *name, ec_tf_list *out);

/* Parse a .safetensors file: u64 header length, JSON header mapping tensor
 * names to {dtype, shape, data_offsets}, optional "__metadata__". Dtypes
 * F32 F16 BF16 F64 I8 U8 I32 I64; others are EC_EDTYPE naming the tensor.
 * Data ranges must lie inside the data section and not overlap. Anything
 * else wrong with the file (EC_MAX_DIMS, EC_TF_MAX_TENSORS and name lengths
 * included) is EC_EFORMAT. */
int ec_safetensors_parse_fd(int fd, ec_tf_list *out);
int ec_safetensors_parse_buf(const void *buf, size_t len, ec_tf_list *out);
/* The safetensors name of a dtype ("F32", ...), or NULL for one the format
 * has no name for here (what a writer of such a file puts in its header). */
const char *ec_safetensors_dtype_name(ec_dtype dtype);

/* The tensor name for a .npy path: its basename without ".npy". */
int ec_npy_stem(const char *path, char *out, size_t out_len);

#endif
