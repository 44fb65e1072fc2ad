/*
 * err.h - error codes and the per-thread error message.
 *
 * Every module returns a negative EC_E* code and, on the way out, records a
 * message saying what failed, with what input and what to do next. The
 * message lives in thread-local storage, so concurrent callers never see
 * each other's text. Used by every module in every process.
 */
#ifndef EC_COMMON_ERR_H
#define EC_COMMON_ERR_H

#include "embcache.h"

#include <errno.h>
#include <stdarg.h>

#define EC_ERRMSG_MAX 512

/* Record a message for code and return code, so callers can write
 * `return ec_seterr(EC_ENOENT, "unknown model '%s'", name);`. */
int ec_seterr(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Like ec_seterr, with ": strerror(errnum)" appended. */
int ec_seterr_errno(int code, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefix the current message with more context: "ctx: old message". */
int ec_adderr(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Copy untrusted text into out for an error message: at most out_len - 4
 * bytes, anything but printable ASCII replaced by '?', "..." when cut.
 * Returns out. */
const char *ec_printable(const char *s, size_t len, char *out, size_t out_len);

/* Forget the current message. */
void ec_clearerr(void);

#endif
