/*
 * cli_daemon.c - the CLI and embcached's own configuration: `embcache
 * reload` (ec_daemon_reload: the daemon reads its configuration again and
 * answers once it is applied), and reading embcached's configuration file
 * the way embcached reads it (core/daemon_config.c), for `reload --config`
 * (which socket) and `recover --config` (which data directory and
 * cluster).
 *
 * Called by tools/embcache.c's main and tools/cli_recover.c; one process,
 * one thread.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/paths.h"
#include "core/daemon_config.h"
#include "tools/cli.h"

/* Read embcached's configuration file into *d as embcached reads it; with
 * report, each error on stderr prefixed with prog. EXIT_OK, EXIT_USAGE (an
 * invalid file: *d partly filled, every valid line taken) or EXIT_FAIL. */
static int read_config(const char *prog, const char *file, ec_dconf *d, bool report)
{
    char *av[] = {"embcached", "--config", (char *)file, NULL};
    ec_dconf_args a = {0};
    ec_dconf_errs *e = calloc(1, sizeof(*e));
    int rc = EXIT_OK;

    if (!e) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return EXIT_FAIL;
    }
    if (ec_dconf_parse_args(3, av, &a, stderr) != 0) {
        rc = EXIT_USAGE;
    } else if (ec_dconf_build(&a, d, e) < 0) {
        for (int i = 0; report && i < e->n; i++)
            fprintf(stderr, "%s: %s\n", prog, e->msg[i]);
        if (report)
            fprintf(stderr, "%s: %s is not a valid embcached configuration; nothing was "
                            "changed\n", prog, file);
        rc = EXIT_USAGE;
    }
    ec_dconf_args_free(&a);
    free(e);
    return rc;
}

int cli_daemon_config(const char *prog, const char *file, ec_dconf *d)
{
    return read_config(prog, file, d, true);
}

int cli_reload_main(int argc, char **argv, const char *socket_path)
{
    static const char help[] =
        "usage: embcache reload [--config FILE]\n"
        "Have the daemon read its configuration file and command line again and\n"
        "apply what may change while it runs (as SIGHUP does), and print what\n"
        "changed once it is applied. An invalid file changes nothing: exit 1 with\n"
        "its first error. --config FILE: the daemon's configuration file, whose\n"
        "`socket =` says where it listens (when --socket is not given). The unit's\n"
        "ExecReload, so `systemctl reload embcached` returns when the reload is\n"
        "done, and fails when it was refused.\n";
    static const struct option o[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char summary[2048], sock[108];
    const char *conf = NULL;
    ec_dconf *d = NULL;
    ec_client *c;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "c:h", o, NULL)) != -1) {
        switch (ch) {
        case 'c': conf = optarg; break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "embcache reload: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (conf && !socket_path) {
        if (!(d = calloc(1, sizeof(*d)))) {
            fprintf(stderr, "embcache reload: out of memory\n");
            return EXIT_FAIL;
        }
        /* Only where that daemon listens: its socket =, else its default.
         * Whether the rest of the file is valid is the daemon's to say (it
         * refuses the reload, logs why and counts it), so a file that fails
         * here is still read for its socket line. */
        if (read_config("embcache reload", conf, d, false) == EXIT_FAIL) {
            free(d);
            return EXIT_FAIL;
        }
        socket_path = d->socket[0] ? d->socket : ec_default_socket(sock, sizeof(sock));
    }
    rc = ec_client_connect(socket_path, &c);
    if (rc == 0) {
        rc = ec_daemon_reload(c, summary, sizeof(summary));
        ec_client_close(c);
    }
    free(d);
    if (rc == EC_EINVAL) /* the file is invalid: not a usage error */
        return (cli_fail("embcache reload", rc, NULL), EXIT_FAIL);
    if (rc)
        return cli_fail("embcache reload", rc, NULL);
    printf("%s\n", summary);
    return EXIT_OK;
}
