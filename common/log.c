/*
 * log.c - one-line log records on standard error (see log.h).
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char *log_ident = "embcache";
/* Written by ec_log_init/ec_log_set_level (the daemon's server thread on
 * SIGHUP), read by every thread that logs: relaxed, a level is a hint. */
static _Atomic int log_level = EC_LOG_WARN;

void ec_log_init(const char *ident, enum ec_log_level level)
{
    log_ident = ident;
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

void ec_log_set_level(enum ec_log_level level)
{
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

enum ec_log_level ec_log_get_level(void)
{
    return (enum ec_log_level)atomic_load_explicit(&log_level, memory_order_relaxed);
}

void ec_log(enum ec_log_level level, const char *fmt, ...)
{
    static const char *const lv[] = {"error", "warning", "info", "debug"};
    char line[1024];
    int len;
    va_list ap;

    if ((int)level > atomic_load_explicit(&log_level, memory_order_relaxed))
        return;
    len = snprintf(line, sizeof(line), "%s[%d]: %s: ", log_ident, (int)getpid(), lv[level]);
    va_start(ap, fmt);
    len += vsnprintf(line + len, sizeof(line) - (size_t)len - 1, fmt, ap);
    va_end(ap);
    if (len > (int)sizeof(line) - 2)
        len = (int)sizeof(line) - 2;
    line[len++] = '\n';
    (void)!write(STDERR_FILENO, line, (size_t)len);
}
