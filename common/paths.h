/*
 * paths.h - default locations shared by the daemon, the CLI and the library.
 */
#ifndef EC_COMMON_PATHS_H
#define EC_COMMON_PATHS_H

#include <stddef.h>

/* $EMBCACHE_SOCKET, else /run/embcache/embcached.sock for root, else
 * $XDG_RUNTIME_DIR/embcache.sock, else /tmp/embcache-<uid>.sock. */
const char *ec_default_socket(char *buf, size_t len);

#endif
