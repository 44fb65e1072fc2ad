/*
 * paths.c - the default control socket path, shared by the daemon, the CLI
 * and libembcache so that all three agree without configuration (a client
 * falls back to the system service's socket), and who a client trusts to be
 * the daemon behind it.
 *
 * Called from any thread of the daemon, the CLI or a client process; keeps
 * no state.
 */
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/paths.h"

const char *ec_default_socket(char *buf, size_t len)
{
    const char *env = getenv("EMBCACHE_SOCKET");
    const char *xdg = getenv("XDG_RUNTIME_DIR");

    if (env && *env)
        snprintf(buf, len, "%s", env);
    else if (geteuid() == 0)
        snprintf(buf, len, "%s", EC_SYSTEM_SOCKET);
    else if (xdg && *xdg)
        snprintf(buf, len, "%s/embcache.sock", xdg);
    else
        /* A directory of the user's own, checked by the daemon before it
         * binds (another user could create /tmp/embcache-UID first; a
         * socket directly in /tmp could be taken by anyone). */
        snprintf(buf, len, "/tmp/embcache-%u/embcached.sock", (unsigned)geteuid());
    return buf;
}

const char *ec_client_socket(char *buf, size_t len, const char *system_socket)
{
    const char *env = getenv("EMBCACHE_SOCKET");
    struct stat st;

    ec_default_socket(buf, len);
    if ((env && *env) || geteuid() == 0 || !system_socket)
        return buf;
    /* Only when the user's own socket is not there at all: a stale one, or
     * one we may not look at, is theirs to sort out (the connect says why). */
    if (lstat(buf, &st) == 0 || (errno != ENOENT && errno != ENOTDIR))
        return buf;
    if (stat(system_socket, &st) == 0 && S_ISSOCK(st.st_mode))
        snprintf(buf, len, "%s", system_socket);
    return buf;
}

bool ec_daemon_uid_trusted(uid_t uid)
{
    const char *env = getenv("EMBCACHE_DAEMON_UID");
    char buf[1024];
    struct passwd pw, *res = NULL;

    if (uid == 0 || uid == geteuid())
        return true;
    if (env && *env) {
        char *end;
        unsigned long v = strtoul(env, &end, 10);
        if (!*end && end != env && v == (unsigned long)uid)
            return true;
    }
    /* The service's own user, which only root can have created. */
    return getpwnam_r(EC_DAEMON_USER, &pw, buf, sizeof(buf), &res) == 0 && res &&
           pw.pw_uid == uid;
}

void ec_socket_dir_of(const char *path, char *dir, size_t len)
{
    char *slash;

    snprintf(dir, len, "%s", path);
    slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, len, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
}

bool ec_socket_dir_safe(const char *dir, const struct stat *st)
{
    char def[64];

    snprintf(def, sizeof(def), "/tmp/embcache-%u", (unsigned)geteuid());
    return S_ISDIR(st->st_mode) && (st->st_uid == geteuid() || st->st_uid == 0) &&
           (!(st->st_mode & 022) || (st->st_mode & S_ISVTX)) &&
           (strcmp(dir, def) || (st->st_uid == geteuid() && !(st->st_mode & 077)));
}
