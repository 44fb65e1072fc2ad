/*
 * paths.h - default locations shared by the daemon, the CLI and the library,
 * and which uids a client trusts to run the daemon.
 */
#ifndef EC_COMMON_PATHS_H
#define EC_COMMON_PATHS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

/* The system user the shipped service runs embcached as. */
#define EC_DAEMON_USER "embcache"

/* The socket of the system service (deploy/systemd/embcached.service). */
#define EC_SYSTEM_SOCKET "/run/embcache/embcached.sock"

/* $EMBCACHE_SOCKET, else EC_SYSTEM_SOCKET for root, else
 * $XDG_RUNTIME_DIR/embcache.sock, else /tmp/embcache-<uid>/embcached.sock.
 * Where the daemon listens when not told (tools/embcached.c). */
const char *ec_default_socket(char *buf, size_t len);

/* Where a client connects when not told (libembcache, so the CLI and the
 * Python package): ec_default_socket(), except that a non-root client
 * without $EMBCACHE_SOCKET whose own default socket does not exist uses
 * system_socket (EC_SYSTEM_SOCKET; a parameter for the tests) when that is a
 * socket: users find the system service without setup, and one who runs a
 * daemon of their own still reaches theirs. Never for where a daemon
 * listens. */
const char *ec_client_socket(char *buf, size_t len, const char *system_socket);

/* The directory of a socket path into dir (len bytes): "." for a bare name. */
void ec_socket_dir_of(const char *path, char *dir, size_t len);

/* May the daemon put its socket in directory dir, whose lstat is st? Not when
 * someone else could replace the socket: it must be a directory owned by the
 * daemon's euid or root, not writable by group or others unless sticky, and
 * the per-user default (/tmp/embcache-<uid>) the euid's own with no group or
 * other access. Called by the server before it listens and by --check. */
bool ec_socket_dir_safe(const char *dir, const struct stat *st);

/* May a process of this uid be the daemon a client talks to? root, the
 * client's own euid, $EMBCACHE_DAEMON_UID, and the EC_DAEMON_USER user. */
bool ec_daemon_uid_trusted(uid_t uid);

#endif
