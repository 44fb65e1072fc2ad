/*
 * err.c - error names and the per-thread error message (see err.h).
 */
#include "err.h"

#include <stdio.h>
#include <string.h>

static _Thread_local char tls_msg[EC_ERRMSG_MAX];

static const char *const names[] = {
    [0] = "EC_OK: success",
    [1] = "EC_EINVAL: invalid argument",
    [2] = "EC_ENOMEM: out of memory",
    [3] = "EC_EIO: I/O error",
    [4] = "EC_ENOENT: not found",
    [5] = "EC_ERANGE: row id out of range",
    [6] = "EC_ECHECKSUM: checksum mismatch",
    [7] = "EC_EPROTO: protocol error",
    [8] = "EC_ECONN: daemon unreachable",
    [9] = "EC_EEXIST: already exists",
    [10] = "EC_EFORMAT: malformed input file",
    [11] = "EC_EDTYPE: unsupported dtype",
    [12] = "EC_ENOSPC: no space",
    [13] = "EC_EPERM: permission denied",
    [14] = "EC_EBUSY: in use",
    [15] = "EC_ESTALE: daemon restarted",
    [16] = "EC_EVERSION: version mismatch",
    [17] = "EC_ETOOBIG: too big",
    [18] = "EC_EINTERNAL: internal error",
    [19] = "EC_ECORRUPT: failed validation",
    [20] = "EC_EDEVICE: GPU error",
    [21] = "EC_ETIMEOUT: timed out",
};

const char *ec_strerror(int err)
{
    if (err > 0 || err < EC_E_LAST)
        return "EC_E?: unknown error code";
    return names[-err];
}

const char *ec_last_error(void)
{
    return tls_msg;
}

static void vset(const char *fmt, va_list ap)
{
    vsnprintf(tls_msg, sizeof(tls_msg), fmt, ap);
}

int ec_seterr(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vset(fmt, ap);
    va_end(ap);
    return code;
}

int ec_seterr_errno(int code, int errnum, const char *fmt, ...)
{
    va_list ap;
    size_t len;

    va_start(ap, fmt);
    vset(fmt, ap);
    va_end(ap);
    len = strlen(tls_msg);
    if (len < sizeof(tls_msg))
        snprintf(tls_msg + len, sizeof(tls_msg) - len, ": %s", strerror(errnum));
    return code;
}

int ec_adderr(int code, const char *fmt, ...)
{
    char old[EC_ERRMSG_MAX];
    va_list ap;
    size_t len;

    memcpy(old, tls_msg, sizeof(old));
    va_start(ap, fmt);
    vset(fmt, ap);
    va_end(ap);
    len = strlen(tls_msg);
    if (old[0] && len + 2 < sizeof(tls_msg)) {
        memcpy(tls_msg + len, ": ", 2);
        len += 2;
        size_t rest = strlen(old);
        if (rest > sizeof(tls_msg) - 1 - len)
            rest = sizeof(tls_msg) - 1 - len;
        memcpy(tls_msg + len, old, rest);
        tls_msg[len + rest] = '\0';
    }
    return code;
}

const char *ec_printable(const char *s, size_t len, char *out, size_t out_len)
{
    size_t i, n = len < out_len - 4 ? len : out_len - 4;

    for (i = 0; i < n; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    if (n < len) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
    return out;
}

void ec_clearerr(void)
{
    tls_msg[0] = '\0';
}
