/*
 * notify.h - what embcached tells its service manager: readiness, status
 * lines, shutdown (systemd's sd_notify protocol, through libsystemd).
 *
 * Only the process the service manager watches may speak: the keeper, or
 * the server itself under --no-keeper. A worker forgets the notification
 * socket as soon as it is forked (ec_notify_forget), so nothing it runs can
 * send a message that a unit with NotifyAccess=main would reject. Where
 * $NOTIFY_SOCKET is unset (not started by systemd with Type=notify) every
 * call does nothing. Calls never fail the caller: a message that cannot be
 * sent is logged at debug level and dropped.
 *
 * Called from the keeper's loop (core/keeper.c) and the server thread
 * (core/server.c); keeps no state of its own.
 */
#ifndef EC_CORE_NOTIFY_H
#define EC_CORE_NOTIFY_H

/* READY=1 with STATUS= set to the formatted line: the control socket
 * accepts connections from now on. Sent again after a worker restarted. */
void ec_notify_ready(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* STATUS= alone: what the daemon is doing (shown by `systemctl status`). */
void ec_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* STOPPING=1 with STATUS=: a clean shutdown has begun. */
void ec_notify_stopping(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* In a freshly forked worker: unset $NOTIFY_SOCKET, so that this process
 * and whatever it starts never notify in the keeper's place. */
void ec_notify_forget(void);

#endif
