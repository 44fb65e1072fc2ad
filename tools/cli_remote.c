/*
 * cli_remote.c - `embcache publish MODEL VERSION [--cluster URL]`,
 * `embcache pull MODEL VERSION [--lazy] [--cluster URL]` and `embcache
 * unpublish MODEL VERSION [--cluster URL]`: a model version to a Redis
 * Cluster, from there into this host's daemon, and off the cluster again
 * (ec_model_publish, ec_model_pull, ec_model_unpublish; the daemon does the
 * work, core/publish.c, core/unpublish.c). The cluster is
 * --cluster, else $EMBCACHE_CLUSTER, else the daemon's --remote. Prints what was done: version,
 * tensors, bytes, seconds (or one JSON object with --json).
 *
 * Called by tools/embcache.c's main; one process, one thread.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tools/cli.h"

static double mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int cli_remote_main(const char *cmd, int argc, char **argv, const char *socket_path)
{
    static const struct option o[] = {
        {"cluster", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},
        {"lazy", no_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool pub = !strcmp(cmd, "publish"), unpub = !strcmp(cmd, "unpublish"), json = false,
         lazy = false;
    const char *url = getenv("EMBCACHE_CLUSTER");
    const char *prog = pub ? "embcache publish" : unpub ? "embcache unpublish" : "embcache pull";
    ec_publish_result res;
    char hb[32];
    double t0;
    ec_client *c;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "c:jlh", o, NULL)) != -1) {
        switch (ch) {
        case 'c': url = optarg; break;
        case 'j': json = true; break;
        case 'l':
            if (pub || unpub) {
                fprintf(stderr, "%s: --lazy is an option of pull\n", prog);
                return EXIT_USAGE;
            }
            lazy = true;
            break;
        case 'h':
            if (pub)
                printf("usage: embcache publish MODEL VERSION [--cluster URL] [--json]\n\n"
                       "Copy MODEL VERSION (a number or an alias) to a Redis Cluster: every\n"
                       "partition, checked against the catalog first, in chunks with their\n"
                       "checksums, then its catalog entry. Another host's daemon can then\n"
                       "`embcache pull` it. Publishing again replaces it (and deletes what\n"
                       "of the earlier publish the new one does not write over).\n");
            else if (unpub)
                printf("usage: embcache unpublish MODEL VERSION [--cluster URL] [--json]\n\n"
                       "Remove MODEL VERSION (a number) from a Redis Cluster: every chunk\n"
                       "and file head its manifest names, then the manifest. Hosts that\n"
                       "pulled it whole keep it; hosts that pulled it lazily can no longer\n"
                       "read what they had not kept. Interrupted, it leaves the manifest:\n"
                       "run it again.\n");
            else
                printf("usage: embcache pull MODEL VERSION [--lazy] [--cluster URL] [--json]\n\n"
                       "Register MODEL VERSION (a number) from a Redis Cluster where another\n"
                       "host published it, without its source files. Every partition is\n"
                       "checked against the published checksums; nothing is registered\n"
                       "unless all of it matched.\n\n"
                       "--lazy: register it at once from its manifest and file heads, and\n"
                       "read each partition from the cluster when it is first needed (the\n"
                       "daemon must run with --remote naming that cluster); what is read is\n"
                       "kept on local disk unless the daemon runs with remote-keep false.\n");
            printf("\nURL: redis-cluster://host:port[,host:port...] (default: "
                   "$EMBCACHE_CLUSTER, else the daemon's --remote), as the daemon reaches "
                   "it.\n");
            return EXIT_OK;
        default:
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "%s: needs MODEL VERSION (see '%s --help')\n", prog, prog);
        return EXIT_USAGE;
    }
    if (!url)
        url = ""; /* the daemon's --remote, or its message saying there is none */
    if ((rc = ec_client_connect(socket_path, &c)))
        return cli_fail(prog, rc, NULL);
    t0 = mono_s();
    rc = pub     ? ec_model_publish(c, argv[optind], argv[optind + 1], url, &res)
         : unpub ? ec_model_unpublish(c, argv[optind], argv[optind + 1], url, &res)
                 : ec_model_pull_flags(c, argv[optind], argv[optind + 1], url,
                                       lazy ? EC_PULL_LAZY : 0, &res);
    ec_client_close(c);
    if (rc)
        return cli_fail(prog, rc, NULL);
    if (json) {
        printf("{\"model\":");
        cli_json_str(argv[optind]);
        printf(",\"version\":%" PRId64 ",\"tensors\":%u,\"bytes\":%" PRIu64
               ",\"seconds\":%.3f}\n", res.version, res.tensors, res.bytes, mono_s() - t0);
    } else {
        cli_human_bytes(res.bytes, hb, sizeof(hb));
        printf("%s %s version %" PRId64 ": %u tensor(s), %s%s in %.2f s\n",
               pub ? "published" : unpub ? "unpublished" : lazy ? "pulled lazily" : "pulled",
               argv[optind],
               res.version, res.tensors, hb, lazy ? " of file heads" : "", mono_s() - t0);
    }
    return EXIT_OK;
}
