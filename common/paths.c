/*
 * paths.c - the default control socket path, shared by the daemon, the CLI
 * and libembcache so that all three agree without configuration.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/paths.h"

const char *ec_default_socket(char *buf, size_t len)
{
    const char *env = getenv("EMBCACHE_SOCKET");
    const char *xdg = getenv("XDG_RUNTIME_DIR");

    if (env && *env)
        snprintf(buf, len, "%s", env);
    else if (geteuid() == 0)
        snprintf(buf, len, "/run/embcache/embcached.sock");
    else if (xdg && *xdg)
        snprintf(buf, len, "%s/embcache.sock", xdg);
    else
        snprintf(buf, len, "/tmp/embcache-%u.sock", (unsigned)geteuid());
    return buf;
}
