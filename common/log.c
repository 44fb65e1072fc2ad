/*
 * log.c - one-line log records on standard error (see log.h).
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char *log_ident = "embcache";
static enum ec_log_level log_level = EC_LOG_WARN;

void ec_log_init(const char *ident, enum ec_log_level level)
{
    log_ident = ident;
    log_level = level;
}

void ec_log(enum ec_log_level level, const char *fmt, ...)
{
    static const char *const lv[] = {"error", "warning", "info", "debug"};
    char line[1024];
    int len;
    va_list ap;

    if (level > log_level)
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
