/*
 * cli_recover.c - `embcache recover`: rebuild a lost or damaged catalog
 * from the partition files (core/recover.c, linked in from the daemon's
 * core), on the data directory itself, while embcached is stopped. The one
 * command that needs no daemon.
 *
 * Where the data directory and the cluster are: --data-dir, --remote and
 * --remote-auth-file, else what the daemon's configuration file says
 * (--config FILE, read as embcached reads it: core/daemon_config.c), so
 * `embcache recover --config /etc/embcache/embcached.conf` recovers the
 * service's data directory with the service's cluster and credentials.
 *
 * Called by tools/embcache.c's main; one process, one thread.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/daemon_config.h"
#include "core/rcluster.h"
#include "core/recover.h"
#include "tools/cli.h"

static const char help[] =
    "usage: embcache recover [--config FILE] [--data-dir DIR] [--dry-run]\n"
    "                        [--remote URL [--remote-auth-file PATH]]\n"
    "Rebuild DIR/catalog.db from the partition files in DIR/parts, while\n"
    "embcached is stopped (it refuses while a daemon holds DIR). Every file is\n"
    "read whole and checked against its checksums; each file's origin record\n"
    "says which model version and tensor it is. A version is registered when\n"
    "all its files are found and valid. The damaged catalog is moved aside\n"
    "to DIR/catalog.db.damaged-<time>, never deleted and never read; files\n"
    "that cannot be registered (damaged, without an origin record, in an\n"
    "incomplete or conflicting version) are renamed NAME.skipped in place and\n"
    "reported with what to do. Aliases and policies live only in the catalog:\n"
    "set them again afterwards. --dry-run checks and reports, changes nothing.\n"
    "A version pulled lazily (pull --lazy) has the partitions not read yet as\n"
    "holes in its files: it is registered again only with --remote, the cluster\n"
    "embcached reads it from (and its --remote-auth-file), when that cluster\n"
    "still holds it with the checksums of the files (its manifest is read).\n"
    "--config FILE: take data-dir, remote and remote-auth-file from embcached's\n"
    "configuration file where they are not given here.\n"
    "Exit status: 0 everything recovered, 8 files were left out, 1 a daemon\n"
    "holds DIR or recovery failed (nothing half done: the message says), 3 the\n"
    "cluster given with --remote did not answer (nothing was changed), 2 bad\n"
    "usage or an invalid configuration file.\n";

/* What the daemon's configuration file says: data-dir, remote,
 * remote-auth-file into the arguments not given (pointing into d). */
static int from_config(const char *file, ec_dconf *d, const char **data_dir,
                       const char **remote, const char **auth)
{
    int rc = cli_daemon_config("embcache recover", file, d);

    if (rc != EXIT_OK)
        return rc;
    if (!*data_dir && d->data_dir[0])
        *data_dir = d->data_dir;
    if (!*remote && d->srv.remote[0])
        *remote = d->srv.remote;
    if (!*auth && d->srv.remote_auth_file[0] && *remote == d->srv.remote)
        *auth = d->srv.remote_auth_file;
    return EXIT_OK;
}

int cli_recover_main(int argc, char **argv)
{
    static const struct option o[] = {
        {"config", required_argument, NULL, 'c'},
        {"data-dir", required_argument, NULL, 'd'},
        {"dry-run", no_argument, NULL, 'n'},
        {"remote", required_argument, NULL, 'r'},
        {"remote-auth-file", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    ec_recover_opts ro = {.out = stdout};
    ec_recover_result res;
    const char *auth = NULL, *conf = NULL;
    ec_dconf *d = NULL;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "c:d:nr:a:h", o, NULL)) != -1) {
        switch (ch) {
        case 'c': conf = optarg; break;
        case 'd': ro.data_dir = optarg; break;
        case 'n': ro.dry_run = true; break;
        case 'r': ro.remote = optarg; break;
        case 'a': auth = optarg; break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "embcache recover: unexpected argument '%s' (see 'embcache recover "
                        "--help')\n", argv[optind]);
        return EXIT_USAGE;
    }
    if (conf) {
        if (!(d = calloc(1, sizeof(*d)))) {
            fprintf(stderr, "embcache recover: out of memory\n");
            return EXIT_FAIL;
        }
        if ((rc = from_config(conf, d, &ro.data_dir, &ro.remote, &auth)) != EXIT_OK)
            goto out;
    }
    if (auth && !ro.remote) {
        fprintf(stderr, "embcache recover: --remote-auth-file only with --remote (see "
                        "'embcache recover --help')\n");
        rc = EXIT_USAGE;
        goto out;
    }
    if (!ro.data_dir) {
        fprintf(stderr, "embcache recover: needs --data-dir DIR, or --config FILE of a "
                        "daemon whose data-dir is set (see 'embcache recover --help')\n");
        rc = EXIT_USAGE;
        goto out;
    }
    if (auth) {
        ec_rcluster_auth a;
        if ((rc = ec_rcluster_auth_load(auth, &a)) < 0) {
            rc = cli_fail("embcache recover", rc, NULL);
            goto out;
        }
        ec_rcluster_set_default_auth(ro.remote, &a);
        explicit_bzero(&a, sizeof(a));
    }
    fflush(stdout);
    rc = ec_recover(&ro, &res);
    fflush(stdout);
    if (rc == EC_ETIMEOUT) /* the cluster did not answer, as for EC_ECONN */
        rc = (cli_fail("embcache recover", rc, NULL), EXIT_NODAEMON);
    else if (rc)
        rc = cli_fail("embcache recover", rc, NULL);
    else
        rc = res.skipped ? EXIT_INTEGRITY : EXIT_OK;
out:
    free(d);
    return rc;
}
