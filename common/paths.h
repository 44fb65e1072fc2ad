/*
 * paths.h - default locations shared by the daemon, the CLI and the library,
 * and which uids a client trusts to run the daemon.
 */
#ifndef EC_COMMON_PATHS_H
#define EC_COMMON_PATHS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The system user the shipped service runs embcached as. */
#define EC_DAEMON_USER "embcache"

/* $EMBCACHE_SOCKET, else /run/embcache/embcached.sock for root, else
 * $XDG_RUNTIME_DIR/embcache.sock, else /tmp/embcache-<uid>/embcached.sock. */
const char *ec_default_socket(char *buf, size_t len);

/* May a process of this uid be the daemon a client talks to? root, the
 * client's own euid, $EMBCACHE_DAEMON_UID, and the EC_DAEMON_USER user. */
bool ec_daemon_uid_trusted(uid_t uid);

#endif
