/*
 * embcached.c - the embcache host daemon: its configuration (the command
 * line and the configuration file, core/daemon_config.h) around
 * ec_keeper_start() and ec_server_run(), or `embcached --check`. Runs in
 * the foreground as two processes: the keeper (this one) and the worker it
 * forks, which serves and is restarted warm when it crashes
 * (core/keeper.h). SIGTERM or SIGINT stops both cleanly; SIGHUP, which the
 * keeper passes on, makes the worker read the configuration again
 * (ec_dconf_reload); a restarted worker reads it too, so that it runs with
 * what the last reload applied, not with what the keeper started with.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/paths.h"
#include "core/daemon_config.h"
#include "core/keeper.h"
#include "core/server.h"

/* Connections and partition files each take a descriptor, and the default
 * soft limit (1024 under systemd) is below --max-clients plus files. Raise
 * it to the hard limit, as the kernel's and systemd's documentation advise
 * for a program that needs many (this one uses epoll, never select). The
 * engine then keeps a quarter of what it has for partition files. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            ec_warn("cannot raise the descriptor limit to %llu: %s",
                    (unsigned long long)want, strerror(errno));
    }
}

/* Whoever can write the data directory, or its parts/ and hot/, decides
 * what the daemon serves (and, through links, what it writes): only its
 * owner may. Subdirectories are judged by lstat: a link there is refused,
 * so every path the daemon opens below the checked directory has no link
 * in it but the last component, which is opened O_NOFOLLOW. */
static bool data_dir_ok(const char *dir)
{
    char why[1200], sub[PATH_MAX + 16];

    if (ec_dconf_dir_is_ours(dir, false, why, sizeof(why)) < 0) {
        fprintf(stderr, "embcached: %s\n", why);
        return false;
    }
    for (size_t i = 0; i < 2; i++) {
        snprintf(sub, sizeof(sub), "%s/%s", dir, ec_dconf_subdirs[i]);
        if (ec_dconf_dir_is_ours(sub, true, why, sizeof(why)) < 0) {
            fprintf(stderr, "embcached: %s\n", why);
            return false;
        }
    }
    return true;
}

int main(int argc, char **argv)
{
    /* Static: the worker's reloads use it for as long as it runs. */
    static ec_dconf_ctx ctx;
    static ec_dconf_errs errs;
    static char dir[PATH_MAX], sock[108];
    ec_server_config *cfg = &ctx.live.srv;
    const char *data_dir;
    ec_keeper k = {.sock = -1, .lock_fd = -1, .seg_fd = -1};
    int rc;

    if ((rc = ec_dconf_parse_args(argc, argv, &ctx.args, stderr)) != 0)
        return rc;
    switch (ctx.args.action) {
    case EC_DCONF_HELP: ec_dconf_usage(stdout); return 0;
    case EC_DCONF_VERSION: printf("embcached %s\n", EC_VERSION_STRING); return 0;
    case EC_DCONF_CHECK: return ec_dconf_check(&ctx.args, stdout);
    case EC_DCONF_RUN: break;
    }
    if (ec_dconf_build(&ctx.args, &ctx.live, &errs) < 0) {
        for (int i = 0; i < errs.n; i++)
            fprintf(stderr, "embcached: %s\n", errs.msg[i]);
        if (errs.total > errs.n)
            fprintf(stderr, "embcached: and %d more errors\n", errs.total - errs.n);
        if (errs.total > errs.cmdline)
            fprintf(stderr, "embcached: `embcached --check` reports on the configuration "
                            "file and this machine\n");
        return 2;
    }
    data_dir = *ctx.live.data_dir ? ctx.live.data_dir : getenv("EMBCACHE_DATA_DIR");
    if (!data_dir || !*data_dir)
        data_dir = "embcache-data";
    if (mkdir(data_dir, 0700) < 0 && errno != EEXIST) {
        fprintf(stderr, "embcached: cannot create data directory %s: %s\n", data_dir,
                strerror(errno));
        return 1;
    }
    if (!realpath(data_dir, dir)) {
        /* Not there yet: the engine creates it; keep the path as given. */
        snprintf(dir, sizeof(dir), "%s", data_dir);
    }
    cfg->data_dir = dir;
    if (!data_dir_ok(dir))
        return 1;
    cfg->socket_path = *ctx.live.socket ? ctx.live.socket : ec_default_socket(sock, sizeof(sock));
    cfg->reload = ec_dconf_reload;
    cfg->reload_arg = &ctx;

    ec_log_init("embcached", (enum ec_log_level)ctx.live.log_level);
    if (*ctx.live.file)
        ec_info("configuration: %s (%u key(s))", ctx.live.file, ctx.live.keys);
    raise_fd_limit();
    if (!ctx.live.no_keeper) {
        if ((rc = ec_keeper_start(dir, &k)) < 0) {
            fprintf(stderr, "embcached: %s\n", ec_last_error());
            return 1;
        }
        cfg->keeper = &k; /* from here on, this is a worker */
        if (k.starts > 1) {
            /* The keeper holds the start-up configuration; SIGHUPs changed
             * the worker that died. Read the file as a reload does: the
             * options that can change at run time take its values. */
            ec_server_config next;
            ec_info("restarted worker: reading the configuration again");
            if (ec_dconf_reload(&ctx, cfg, &next, NULL, 0) < 0)
                cfg->reload_failed = true;
            else
                *cfg = next;
        }
    } else {
        prctl(PR_SET_DUMPABLE, 0);
    }
    rc = ec_server_run(cfg);
    ec_keeper_close(&k);
    ec_dconf_args_free(&ctx.args);
    if (rc) {
        fprintf(stderr, "embcached: %s\n", ec_last_error());
        return 1;
    }
    return 0;
}
