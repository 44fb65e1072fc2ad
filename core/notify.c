/*
 * notify.c - readiness, status and shutdown messages to the service manager
 * (see notify.h), sent with libsystemd's sd_notify().
 *
 * A message is a few "KEY=value" lines in one datagram to $NOTIFY_SOCKET;
 * the STATUS= text is formatted here and has its newlines replaced, so that
 * a path in it can never add a line (a "READY=1" of its own) to the message.
 * Run by the keeper's loop or the server thread of a --no-keeper daemon.
 */
#include "core/notify.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "common/log.h"

#define STATUS_MAX 256

static void send_with_status(const char *head, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void send_with_status(const char *head, const char *fmt, va_list ap)
{
    char status[STATUS_MAX], msg[STATUS_MAX + 64];
    int rc;

    if (!getenv("NOTIFY_SOCKET"))
        return; /* not under a service manager that listens: nothing to do */
    vsnprintf(status, sizeof(status), fmt, ap);
    for (char *p = status; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    snprintf(msg, sizeof(msg), "%sSTATUS=%s", head, status);
    rc = sd_notify(0, msg);
    if (rc < 0)
        ec_debug("cannot notify the service manager (%s): %s", msg, strerror(-rc));
}

void ec_notify_ready(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    send_with_status("READY=1\n", fmt, ap);
    va_end(ap);
}

void ec_notify_status(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    send_with_status("", fmt, ap);
    va_end(ap);
}

void ec_notify_stopping(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    send_with_status("STOPPING=1\n", fmt, ap);
    va_end(ap);
}

void ec_notify_forget(void)
{
    unsetenv("NOTIFY_SOCKET");
}
