/*
 * embcache.c - the embcache command-line tool: import, ls, alias, get, stats.
 *
 * A thin client of libembcache: every subcommand is one or a few library
 * calls. Human output by default, --json where scripts need structure, and
 * exit codes that say what kind of failure happened (see usage()). One
 * command works without a daemon, on the data directory itself: `recover`
 * (tools/cli_recover.c, core/recover.c), run while embcached is stopped.
 * The subcommand families of files of their own (`results`:
 * tools/cli_results.c) and the helpers every file uses (exit codes, failure
 * lines, number parsing, JSON strings, sizes: tools/cli_util.c) are declared
 * in tools/cli.h.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "embcache.h"

static const char *socket_path;


static void usage(FILE *f)
{
    fprintf(f,
            "usage: embcache [--socket PATH] COMMAND [ARG]...\n"
            "\n"
            "Commands:\n"
            "  import --model NAME --version N [--round R] [--params JSON]\n"
            "         [--partition-bytes BYTES] FILE...   import .npy/.safetensors files\n"
            "  ls [--json] [MODEL]                         list models, versions, tensors\n"
            "  alias MODEL ALIAS VERSION                   point ALIAS at a version\n"
            "  get MODEL VERSION|ALIAS TENSOR ROW... [--raw]  print rows\n"
            "  stats [--json]                              daemon statistics\n"
            "  top [-d SECONDS] [-n N] [-b] [-t ROWS]      live view: rates, memory, tiers,\n"
            "                                              busiest tensors and namespaces\n"
            "  find MODEL --round R [--params JSON]        version trained at round R\n"
            "  prewarm MODEL VERSION|ALIAS [--pin] [--device] [--no-wait]  load a version ahead\n"
            "  evict MODEL VERSION|ALIAS                   drop a version from memory\n"
            "  retire MODEL VERSION [--force]              remove a version for good\n"
            "  refresh MODEL VERSION|ALIAS                 reload partitions changed on disk\n"
            "  upgrade MODEL VERSION|ALIAS                 rewrite files of older releases\n"
            "  reload [--config FILE]                      read the configuration again\n"
            "  policy MODEL [--min-resident B] [--min-rate R]  residency policy\n"
            "  policy MODEL --mode rows|partitions|auto [--tensor NAME]  how tensors are cached\n"
            "  recover [--config FILE] [--data-dir DIR] [--dry-run] [--remote URL]\n"
            "                                              rebuild a lost or damaged catalog\n"
            "                                              from the files (daemon stopped)\n"
            "  results ls|get|put|purge|create|drop ...    namespaces of cached results\n"
            "                                              ('embcache results --help')\n"
            "  search MODEL TENSOR --query FILE.npy [-k N] [--metric ip|cosine|l2]\n"
            "         [--version V] [--nprobe N]           top-k rows per query: exact, or\n"
            "                                              through the tensor's IVF index\n"
            "  index build MODEL VERSION TENSOR [--nlist N] [--metric ip|cosine|l2]\n"
            "                                              build a tensor's IVF index\n"
            "  index info MODEL VERSION TENSOR [--json]    describe a tensor's IVF index\n"
            "  dynamic MODEL VERSION TENSOR [--capacity N] [--policy refuse|evict-lru]\n"
            "                                              make a tensor take row updates\n"
            "  put MODEL VERSION TENSOR --keys K.npy --rows R.npy  insert or update rows\n"
            "  del MODEL VERSION TENSOR KEY...|--keys K.npy  delete keys\n"
            "  update MODEL VERSION TENSOR [FILE|-]        apply a stream of updates\n"
            "  snapshot MODEL VERSION [--as NEW]           fold updates into a new version\n"
            "  publish MODEL VERSION [--cluster URL]       copy a version to a Redis Cluster\n"
            "  pull MODEL VERSION [--cluster URL]          register a version published there\n"
            "  unpublish MODEL VERSION [--cluster URL]     remove a version from the cluster\n"
            "\n"
            "Every command takes --help. The socket is --socket, else $EMBCACHE_SOCKET,\n"
            "else the daemon's default.\n"
            "\n"
            "Exit status: 0 success, 1 other failure, 2 bad usage, 3 daemon not reachable,\n"
            "4 not found, 5 bad input file or dtype, 6 already exists, 7 row out of range,\n"
            "8 data failed its checksum or validation.\n"
            "import: 4 when an input file does not exist; 5 for every input file that\n"
            "exists but cannot be imported as it is: unreadable, not a regular file,\n"
            "malformed, truncated, an unsupported dtype or layout, over a limit, a name\n"
            "that is not a valid tensor name, a tensor name given by two files.\n"
            "recover: 8 when partition files were left out (damaged, without an origin,\n"
            "or in conflict), 1 when a daemon holds the data directory, 3 when the cluster\n"
            "given with --remote does not answer (nothing was changed).\n");
}

static int fail(int rc)
{
    return cli_fail("embcache", rc, NULL);
}

static int connect_or_fail(ec_client **c)
{
    int rc = ec_client_connect(socket_path, c);
    return rc ? fail(rc) : 0;
}

/* ------------------------------------------------------------------ */

static int cmd_import(int argc, char **argv)
{
    static const struct option o[] = {
        {"model", required_argument, NULL, 'm'},
        {"version", required_argument, NULL, 'v'},
        {"round", required_argument, NULL, 'r'},
        {"params", required_argument, NULL, 'p'},
        {"partition-bytes", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    ec_import_opts io = {.round = -1};
    bool have_version = false;
    ec_client *c;
    uint32_t n = 0;
    int ch, rc;
    int64_t v;

    while ((ch = getopt_long(argc, argv, "m:v:r:p:b:h", o, NULL)) != -1) {
        switch (ch) {
        case 'm': io.model = optarg; break;
        case 'v':
            if (cli_parse_i64(optarg, &io.version) || io.version < 1) {
                fprintf(stderr, "embcache import: --version '%s' must be an integer >= 1\n",
                        optarg);
                return EXIT_USAGE;
            }
            have_version = true;
            break;
        case 'r':
            if (cli_parse_i64(optarg, &io.round) || io.round < 0) {
                fprintf(stderr, "embcache import: --round '%s' must be an integer >= 0\n",
                        optarg);
                return EXIT_USAGE;
            }
            break;
        case 'p': io.params_json = optarg; break;
        case 'b':
            if (cli_parse_i64(optarg, &v) || v < 1) {
                fprintf(stderr, "embcache import: --partition-bytes '%s' must be a positive "
                                "integer\n", optarg);
                return EXIT_USAGE;
            }
            io.partition_bytes = (uint64_t)v;
            break;
        case 'h':
            printf("usage: embcache import --model NAME --version N [--round R] "
                   "[--params JSON]\n"
                   "                       [--partition-bytes BYTES] FILE...\n"
                   "Import .npy and .safetensors files as one new model version. A .npy file\n"
                   "becomes a tensor named after its stem; a .safetensors file keeps its\n"
                   "tensors' names. Nothing is registered unless every file imports.\n");
            return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (!io.model || !have_version || optind >= argc) {
        fprintf(stderr, "embcache import: needs --model, --version and at least one FILE "
                        "(see 'embcache import --help')\n");
        return EXIT_USAGE;
    }
    if ((rc = connect_or_fail(&c)))
        return rc;
    rc = ec_model_import(c, &io, (const char *const *)argv + optind, (size_t)(argc - optind),
                         &n);
    if (rc) {
        rc = fail(rc);
    } else {
        printf("imported %s version %" PRId64 ": %u tensor(s)\n", io.model, io.version, n);
    }
    ec_client_close(c);
    return rc;
}

/* ------------------------------------------------------------------ */

struct ls_ctx {
    bool json;
    bool first_version;
    bool first_tensor;
    unsigned versions;
};

static int ls_cb(const ec_version_info *v, const ec_tensor_listing *t, void *arg)
{
    struct ls_ctx *x = arg;

    if (x->json) {
        if (!t) {
            printf("%s\n  {\"model\": ", x->first_version ? "[" : "]},");
            cli_json_str(v->model);
            printf(", \"version\": %" PRId64 ", \"round\": ", v->version);
            if (v->round < 0)
                printf("null");
            else
                printf("%" PRId64, v->round);
            printf(", \"params\": %s, \"aliases\": [", v->params_json);
            {
                char buf[4096];
                char *save, *tok;
                bool first = true;
                snprintf(buf, sizeof(buf), "%s", v->aliases);
                for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                    printf("%s", first ? "" : ", ");
                    cli_json_str(tok);
                    first = false;
                }
            }
            printf("], \"created\": %" PRId64 ", \"bytes\": %" PRIu64 ", \"tensors\": [",
                   v->created_unix, v->bytes);
            x->first_version = false;
            x->first_tensor = true;
        } else {
            printf("%s\n    {\"name\": ", x->first_tensor ? "" : ",");
            cli_json_str(t->name);
            printf(", \"dtype\": \"%s\", \"shape\": [", ec_dtype_name(t->dtype));
            for (uint32_t d = 0; d < t->ndim; d++)
                printf("%s%" PRIu64, d ? ", " : "", t->shape[d]);
            printf("], \"partitions\": %" PRIu64 ", \"bytes\": %" PRIu64 "}", t->partitions,
                   t->bytes);
            x->first_tensor = false;
        }
        return 0;
    }
    if (!t) {
        char when[32], size[32];
        time_t ct = (time_t)v->created_unix;
        struct tm tm;
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M", gmtime_r(&ct, &tm));
        cli_human_bytes(v->bytes, size, sizeof(size));
        if (x->versions++ == 0)
            printf("%-20s %8s %6s  %-16s %8s %11s  %s\n", "MODEL", "VERSION", "ROUND", "ALIASES",
                   "TENSORS", "SIZE", "CREATED (UTC)");
        printf("%-20s %8" PRId64 " ", v->model, v->version);
        if (v->round < 0)
            printf("%6s", "-");
        else
            printf("%6" PRId64, v->round);
        printf("  %-16s %8u %11s  %s\n", v->aliases[0] ? v->aliases : "-", v->tensors, size,
               when);
        if (strcmp(v->params_json, "{}"))
            printf("    params %s\n", v->params_json);
    } else {
        char shape[256] = "", size[32];
        for (uint32_t d = 0; d < t->ndim; d++) {
            size_t l = strlen(shape);
            snprintf(shape + l, sizeof(shape) - l, "%s%" PRIu64, d ? ", " : "", t->shape[d]);
        }
        cli_human_bytes(t->bytes, size, sizeof(size));
        printf("    %-32s %-5s [%s]  %" PRIu64 " partition(s), %s\n", t->name,
               ec_dtype_name(t->dtype), shape, t->partitions, size);
    }
    return 0;
}

static int cmd_ls(int argc, char **argv)
{
    static const char help[] =
        "usage: embcache ls [--json] [MODEL]\n"
        "List model versions (of MODEL, or all) with their aliases and tensors.\n";
    struct ls_ctx x = {.first_version = true};
    ec_client *c;
    int rc;

    if ((rc = cli_simple_opts(argc, argv, help, &x.json)) >= 0)
        return rc;
    if (argc - optind > 1) {
        fprintf(stderr, "embcache ls: at most one MODEL\n");
        return EXIT_USAGE;
    }
    if ((rc = connect_or_fail(&c)))
        return rc;
    /* JSON opens its bracket with the first record, so a failed listing
     * prints nothing that looks like an empty one. */
    rc = ec_catalog_list(c, optind < argc ? argv[optind] : NULL, ls_cb, &x);
    if (x.json && rc == 0)
        printf("%s]\n", x.first_version ? "[" : "]}\n");
    else if (rc == 0 && x.versions == 0)
        printf("no models imported yet: 'embcache import --help' shows how\n");
    ec_client_close(c);
    return rc ? fail(rc) : EXIT_OK;
}

/* ------------------------------------------------------------------ */

static int cmd_alias(int argc, char **argv)
{
    static const char help[] =
        "usage: embcache alias MODEL ALIAS VERSION\n"
        "Point ALIAS (e.g. current) at VERSION of MODEL. Handles resolved before\n"
        "keep their version; the next resolve sees the new one.\n";
    ec_client *c;
    int64_t version;
    int rc;

    if ((rc = cli_simple_opts(argc, argv, help, NULL)) >= 0)
        return rc;
    if (argc - optind != 3) {
        fprintf(stderr, "embcache alias: needs MODEL ALIAS VERSION\n");
        return EXIT_USAGE;
    }
    if (cli_parse_i64(argv[optind + 2], &version) || version < 1) {
        fprintf(stderr, "embcache alias: VERSION '%s' must be an integer >= 1\n",
                argv[optind + 2]);
        return EXIT_USAGE;
    }
    if ((rc = connect_or_fail(&c)))
        return rc;
    rc = ec_model_alias(c, argv[optind], argv[optind + 1], version);
    ec_client_close(c);
    if (rc)
        return fail(rc);
    printf("%s/%s -> version %" PRId64 "\n", argv[optind], argv[optind + 1], version);
    return EXIT_OK;
}

/* ------------------------------------------------------------------ */

static int cmd_find(int argc, char **argv)
{
    static const struct option o[] = {
        {"round", required_argument, NULL, 'r'},
        {"params", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *params = NULL;
    int64_t round = -1, version;
    bool have_round = false;
    ec_client *c;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "r:p:h", o, NULL)) != -1) {
        switch (ch) {
        case 'r':
            if (cli_parse_i64(optarg, &round) || round < 0) {
                fprintf(stderr, "embcache find: --round '%s' must be an integer >= 0\n",
                        optarg);
                return EXIT_USAGE;
            }
            have_round = true;
            break;
        case 'p': params = optarg; break;
        case 'h':
            printf("usage: embcache find MODEL --round R [--params JSON]\n"
                   "Print the newest version of MODEL trained at round R (and with these\n"
                   "params, compared as JSON), as a model index lookup does.\n");
            return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (argc - optind != 1 || !have_round) {
        fprintf(stderr, "embcache find: needs MODEL and --round R\n");
        return EXIT_USAGE;
    }
    if ((rc = connect_or_fail(&c)))
        return rc;
    rc = ec_model_find(c, argv[optind], round, params, &version);
    ec_client_close(c);
    if (rc)
        return fail(rc);
    printf("%" PRId64 "\n", version);
    return EXIT_OK;
}

/* ------------------------------------------------------------------ */
/* Lifecycle: prewarm, evict, retire, refresh                           */

static void progress_bar(const char *model, const ec_prewarm_progress *p)
{
    unsigned width = 30, fill;
    double frac = p->partitions ? (double)(p->done + p->failed) / (double)p->partitions : 1.0;
    char bytes[32];

    fill = (unsigned)(frac * width + 0.5);
    cli_human_bytes((uint64_t)(frac * (double)p->bytes), bytes, sizeof(bytes));
    fprintf(stderr, "\r%s/%" PRId64 " [", model, p->version);
    for (unsigned i = 0; i < width; i++)
        fputc(i < fill ? '#' : '.', stderr);
    fprintf(stderr, "] %3.0f%% %" PRIu64 "/%" PRIu64 " partitions, %s", frac * 100.0,
            p->done + p->failed, p->partitions, bytes);
    fflush(stderr);
}

static int cmd_prewarm(int argc, char **argv)
{
    static const struct option o[] = {
        {"pin", no_argument, NULL, 'p'},
        {"device", no_argument, NULL, 'g'},
        {"no-wait", no_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool wait = true, json = false, bar = isatty(STDERR_FILENO);
    unsigned flags = 0;
    ec_prewarm_progress p;
    ec_client *c;
    char size[32];
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "pgnjh", o, NULL)) != -1) {
        switch (ch) {
        case 'p': flags |= EC_PREWARM_PIN; break;
        case 'g': flags |= EC_PREWARM_DEVICE; break;
        case 'n': wait = false; break;
        case 'j': json = true; break;
        case 'h':
            printf("usage: embcache prewarm MODEL VERSION|ALIAS [--pin] [--device] [--no-wait] "
                   "[--json]\n"
                   "Load a model version into memory ahead of traffic, behind clients' own\n"
                   "reads, showing progress until it is done (--no-wait: start it and\n"
                   "return). --pin keeps it resident until 'embcache evict' or 'retire'.\n"
                   "--device then copies it into every GPU's device tier as room allows\n"
                   "(embcache stats: deviceN_resident_partitions).\n");
            return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "embcache prewarm: needs MODEL and VERSION|ALIAS\n");
        return EXIT_USAGE;
    }
    if ((rc = connect_or_fail(&c)))
        return rc;
    rc = ec_model_prewarm(c, argv[optind], argv[optind + 1], flags, &p);
    while (rc == 0 && wait && !p.finished) {
        if (bar && !json)
            progress_bar(argv[optind], &p);
        usleep(100000);
        rc = ec_model_prewarm(c, argv[optind], argv[optind + 1], flags, &p);
    }
    if (bar && !json && wait)
        fputc('\n', stderr);
    ec_client_close(c);
    if (rc)
        return fail(rc);
    cli_human_bytes(p.bytes, size, sizeof(size));
    if (json)
        printf("{\"model\": \"%s\", \"version\": %" PRId64 ", \"partitions\": %" PRIu64
               ", \"done\": %" PRIu64 ", \"failed\": %" PRIu64 ", \"bytes\": %" PRIu64
               ", \"finished\": %s, \"pinned\": %s}\n",
               argv[optind], p.version, p.partitions, p.done, p.failed, p.bytes,
               p.finished ? "true" : "false", flags & EC_PREWARM_PIN ? "true" : "false");
    else if (!wait)
        printf("prewarm of %s version %" PRId64 " started: %" PRIu64 " partitions, %s%s\n",
               argv[optind], p.version, p.partitions, size,
               flags & EC_PREWARM_PIN ? ", pinned" : "");
    else
        printf("prewarmed %s version %" PRId64 ": %" PRIu64 "/%" PRIu64 " partitions "
               "(%.0f%%, done), %s%s, %" PRIu64 " failed\n",
               argv[optind], p.version, p.done, p.partitions,
               p.partitions ? 100.0 * (double)p.done / (double)p.partitions : 100.0, size,
               flags & EC_PREWARM_PIN ? ", pinned" : "", p.failed);
    if (p.failed) {
        fprintf(stderr, "embcache prewarm: %" PRIu64 " partition(s) could not be loaded "
                        "(see the daemon's log)\n", p.failed);
        return EXIT_FAIL;
    }
    return EXIT_OK;
}

/* evict, refresh: MODEL VERSION|ALIAS [--json], one number back. */
static int cmd_version_op(int argc, char **argv, bool evict)
{
    static const char evict_help[] =
        "usage: embcache evict MODEL VERSION|ALIAS [--json]\n"
        "Drop a version's partitions from memory (its prewarm pin too); it\n"
        "stays in the catalog and pages in again on demand.\n";
    static const char refresh_help[] =
        "usage: embcache refresh MODEL VERSION|ALIAS [--json]\n"
        "Reload the partitions of a version whose files changed on disk.\n";
    bool json = false;
    ec_client *c;
    uint64_t v = 0;
    int rc;

    if ((rc = cli_simple_opts(argc, argv, evict ? evict_help : refresh_help, &json)) >= 0)
        return rc;
    if (argc - optind != 2) {
        fprintf(stderr, "embcache %s: needs MODEL and VERSION|ALIAS\n",
                evict ? "evict" : "refresh");
        return EXIT_USAGE;
    }
    if ((rc = connect_or_fail(&c)))
        return rc;
    rc = evict ? ec_model_evict(c, argv[optind], argv[optind + 1], &v)
               : ec_model_refresh(c, argv[optind], argv[optind + 1], &v);
    ec_client_close(c);
    if (rc)
        return fail(rc);
    if (json)
        printf("{\"model\": \"%s\", \"version\": \"%s\", \"%s\": %" PRIu64 "}\n", argv[optind],
               argv[optind + 1], evict ? "bytes_freed" : "partitions_changed", v);
    else if (evict)
        printf("evicted %s %s: %" PRIu64 " bytes freed\n", argv[optind], argv[optind + 1], v);
    else
        printf("refreshed %s %s: %" PRIu64 " partition(s) changed\n", argv[optind],
               argv[optind + 1], v);
    return EXIT_OK;
}

static int cmd_evict(int argc, char **argv) { return cmd_version_op(argc, argv, true); }
static int cmd_refresh(int argc, char **argv) { return cmd_version_op(argc, argv, false); }

static int cmd_retire(int argc, char **argv)
{
    static const struct option o[] = {
        {"force", no_argument, NULL, 'f'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool json = false, force = false;
    int64_t version;
    ec_client *c;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "fjh", o, NULL)) != -1) {
        switch (ch) {
        case 'f': force = true; break;
        case 'j': json = true; break;
        case 'h':
            printf("usage: embcache retire MODEL VERSION [--force] [--json]\n"
                   "Stop serving a version, drop its partitions, and remove it from the\n"
                   "catalog and the disk. A version an alias points to needs --force (the\n"
                   "aliases go with it); one with open views is refused.\n");
            return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (argc - optind != 2 || cli_parse_i64(argv[optind + 1], &version) || version < 1) {
        fprintf(stderr, "embcache retire: needs MODEL and a VERSION number >= 1\n");
        return EXIT_USAGE;
    }
    if ((rc = connect_or_fail(&c)))
        return rc;
    rc = ec_model_retire(c, argv[optind], version, force);
    ec_client_close(c);
    if (rc)
        return fail(rc);
    if (json)
        printf("{\"model\": \"%s\", \"version\": %" PRId64 ", \"retired\": true}\n",
               argv[optind], version);
    else
        printf("retired %s version %" PRId64 "\n", argv[optind], version);
    return EXIT_OK;
}

static int cmd_upgrade(int argc, char **argv)
{
    static const char help[] =
        "usage: embcache upgrade MODEL VERSION|ALIAS\n"
        "Rewrite the version's partition files written by older releases of\n"
        "embcache, each verified before it replaces the old one: files without\n"
        "block checksums (format 1) as format 2, so its tensors can be cached by\n"
        "rows, and files without an origin record with one (from the catalog),\n"
        "so `embcache recover` can place them. Current files are left alone. The\n"
        "daemon keeps serving meanwhile.\n";
    uint32_t n = 0;
    ec_client *c;
    int rc;

    if ((rc = cli_simple_opts(argc, argv, help, NULL)) >= 0)
        return rc;
    if (argc - optind != 2) {
        fprintf(stderr, "embcache upgrade: needs MODEL VERSION|ALIAS\n");
        return EXIT_USAGE;
    }
    if ((rc = connect_or_fail(&c)))
        return rc;
    rc = ec_model_upgrade(c, argv[optind], argv[optind + 1], &n);
    ec_client_close(c);
    if (rc)
        return fail(rc);
    printf("upgraded %s version %s: %u partition file(s) rewritten\n", argv[optind],
           argv[optind + 1], n);
    return EXIT_OK;
}

static int cmd_policy(int argc, char **argv)
{
    static const struct option o[] = {
        {"min-resident", required_argument, NULL, 'r'},
        {"min-rate", required_argument, NULL, 'q'},
        {"mode", required_argument, NULL, 'm'},
        {"tensor", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int64_t min_resident = 0;
    double min_rate = 0;
    bool residency = false;
    int mode = -1;
    const char *tensor = NULL;
    ec_client *c;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "r:q:m:t:h", o, NULL)) != -1) {
        if (ch == 'r' || ch == 'q')
            residency = true;
        switch (ch) {
        case 'm':
            mode = !strcmp(optarg, "rows")         ? EC_CACHE_ROWS
                   : !strcmp(optarg, "partitions") ? EC_CACHE_PARTITIONS
                   : !strcmp(optarg, "auto")       ? EC_CACHE_AUTO
                                                   : -2;
            if (mode == -2) {
                fprintf(stderr, "embcache policy: --mode '%s' must be rows, partitions or "
                                "auto\n", optarg);
                return EXIT_USAGE;
            }
            break;
        case 't': tensor = optarg; break;
        case 'r':
            if (cli_parse_i64(optarg, &min_resident) || min_resident < 0) {
                fprintf(stderr, "embcache policy: --min-resident '%s' must be bytes >= 0\n",
                        optarg);
                return EXIT_USAGE;
            }
            break;
        case 'q': {
            char *end;
            min_rate = strtod(optarg, &end);
            if (*end || end == optarg || !(min_rate >= 0)) {
                fprintf(stderr, "embcache policy: --min-rate '%s' must be requests/s >= 0\n",
                        optarg);
                return EXIT_USAGE;
            }
            break;
        }
        case 'h':
            printf("usage: embcache policy MODEL [--min-resident BYTES] [--min-rate RPS]\n"
                   "       embcache policy MODEL --mode rows|partitions|auto [--tensor NAME]\n"
                   "Set a model's residency policy for each of its versions: eviction keeps\n"
                   "at least --min-resident bytes of a version in memory, and a version read\n"
                   "fewer than --min-rate times a second over the daemon's --rate-window is\n"
                   "evicted down to that minimum, least recently used first. Both default\n"
                   "to 0 (off).\n"
                   "--mode sets how the model's tensors (or --tensor NAME alone) are cached,\n"
                   "in every version: by rows (tables larger than memory), by partitions\n"
                   "(the fastest hits, for what fits), or auto (the default: the daemon\n"
                   "picks from each tensor's size and the budget). `embcache stats` shows\n"
                   "each tensor's mode.\n");
            return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "embcache policy: needs MODEL\n");
        return EXIT_USAGE;
    }
    if (tensor && mode < 0) {
        fprintf(stderr, "embcache policy: --tensor goes with --mode\n");
        return EXIT_USAGE;
    }
    if ((rc = connect_or_fail(&c)))
        return rc;
    if (mode >= 0) {
        rc = ec_model_cache_mode(c, argv[optind], tensor, (ec_cache_mode)mode);
        if (rc == 0)
            printf("policy of %s%s%s: cached by %s\n", argv[optind], tensor ? " tensor " : "",
                   tensor ? tensor : "",
                   mode == EC_CACHE_ROWS ? "rows" : mode == EC_CACHE_PARTITIONS ? "partitions"
                                                                                : "auto");
    }
    if (rc == 0 && (residency || mode < 0)) {
        rc = ec_model_policy(c, argv[optind], (uint64_t)min_resident, min_rate);
        if (rc == 0)
            printf("policy of %s: min resident %" PRId64 " bytes per version, idle under %g "
                   "requests/s\n", argv[optind], min_resident, min_rate);
    }
    ec_client_close(c);
    return rc ? fail(rc) : EXIT_OK;
}

/* ------------------------------------------------------------------ */

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    float f;

    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    memcpy(&f, &bits, 4);
    return f;
}

static void print_elem(ec_dtype d, const uint8_t *p)
{
    switch (d) {
    case EC_DTYPE_F32: { float v; memcpy(&v, p, 4); printf("%.9g", v); break; }
    case EC_DTYPE_F64: { double v; memcpy(&v, p, 8); printf("%.17g", v); break; }
    case EC_DTYPE_F16: { uint16_t v; memcpy(&v, p, 2); printf("%.5g", half_to_float(v)); break; }
    case EC_DTYPE_BF16: {
        uint16_t v;
        uint32_t b;
        float f;
        memcpy(&v, p, 2);
        b = (uint32_t)v << 16;
        memcpy(&f, &b, 4);
        printf("%.4g", f);
        break;
    }
    case EC_DTYPE_I8: printf("%d", (int8_t)p[0]); break;
    case EC_DTYPE_U8: printf("%u", p[0]); break;
    case EC_DTYPE_I32: { int32_t v; memcpy(&v, p, 4); printf("%" PRId32, v); break; }
    case EC_DTYPE_I64: { int64_t v; memcpy(&v, p, 8); printf("%" PRId64, v); break; }
    default: printf("?"); break;
    }
}

static int cmd_get(int argc, char **argv)
{
    static const struct option o[] = {
        {"raw", no_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool raw = false;
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    ec_tensor_info info;
    int64_t *ids = NULL;
    uint8_t *buf = NULL;
    size_t n;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "rh", o, NULL)) != -1) {
        switch (ch) {
        case 'r': raw = true; break;
        case 'h':
            printf("usage: embcache get MODEL VERSION|ALIAS TENSOR ROW... [--raw]\n"
                   "Print rows of a tensor. --raw writes exactly the rows' bytes, in order,\n"
                   "to standard output and nothing else.\n");
            return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (argc - optind < 4) {
        fprintf(stderr, "embcache get: needs MODEL VERSION|ALIAS TENSOR and at least one ROW\n");
        return EXIT_USAGE;
    }
    n = (size_t)(argc - optind - 3);
    ids = calloc(n, sizeof(*ids));
    if (!ids)
        return fail(EC_ENOMEM);
    for (size_t i = 0; i < n; i++) {
        if (cli_parse_i64(argv[optind + 3 + i], &ids[i]) || ids[i] < 0) {
            fprintf(stderr, "embcache get: ROW '%s' must be an integer >= 0\n",
                    argv[optind + 3 + i]);
            free(ids);
            return EXIT_USAGE;
        }
    }
    if ((rc = connect_or_fail(&c))) {
        free(ids);
        return rc;
    }
    rc = ec_tensor_resolve(c, argv[optind], argv[optind + 1], argv[optind + 2], &t);
    if (rc == 0)
        rc = ec_tensor_info_get(t, &info);
    if (rc == 0 && !(buf = malloc(n * info.row_bytes + 1)))
        rc = EC_ENOMEM;
    if (rc == 0)
        rc = ec_tensor_gather(t, ids, n, buf, n * info.row_bytes);
    if (rc == 0) {
        if (raw) {
            if (fwrite(buf, info.row_bytes, n, stdout) != n || fflush(stdout))
                rc = EC_EIO;
        } else {
            size_t es = ec_dtype_size(info.dtype), per = es ? info.row_bytes / es : 0;
            for (size_t i = 0; i < n; i++) {
                printf("%s/%" PRId64 "/%s[%" PRId64 "] = [", info.model, info.version,
                       info.tensor, ids[i]);
                for (size_t k = 0; k < per; k++) {
                    if (k)
                        printf(", ");
                    print_elem(info.dtype, buf + i * info.row_bytes + k * es);
                }
                printf("]\n");
            }
        }
    }
    free(buf);
    free(ids);
    ec_tensor_release(t);
    ec_client_close(c);
    if (rc == EC_EIO && !ec_last_error()[0]) {
        fprintf(stderr, "embcache get: writing to standard output failed\n");
        return EXIT_FAIL;
    }
    return rc ? fail(rc) : EXIT_OK;
}

/* ------------------------------------------------------------------ */

struct stats_ctx {
    bool json;
    bool first;
};

static int stat_cb(const char *name, uint64_t v, void *arg)
{
    struct stats_ctx *x = arg;

    if (x->json)
        printf("%s\n  \"%s\": %" PRIu64, x->first ? "" : ",", name, v);
    else
        printf("%-30s %" PRIu64 "\n", name, v);
    x->first = false;
    return 0;
}

static const char *mode_name(ec_cache_mode m)
{
    return m == EC_CACHE_ROWS ? "rows" : m == EC_CACHE_PARTITIONS ? "partitions" : "auto";
}

/* One tensor's line: its mode, what of it is in memory, how many rows were
 * served and found there, and the bytes read from disk per row served. */
static int tensor_stat_cb(const ec_tensor_stats *t, void *arg)
{
    struct stats_ctx *x = arg;
    double hit = t->rows_served ? (double)t->hits / (double)t->rows_served : -1;
    double per = t->rows_served ? (double)t->bytes_read / (double)t->rows_served : -1;

    if (x->json) {
        printf("%s\n    {\"model\": \"%s\", \"version\": %" PRId64 ", \"tensor\": \"%s\", "
               "\"mode\": \"%s\", \"policy\": \"%s\", \"file_version\": %u, \"bytes\": %" PRIu64
               ", \"resident_bytes\": %" PRIu64 ", \"resident_rows\": %" PRIu64
               ", \"rows_served\": %" PRIu64 ", \"hit_rows\": %" PRIu64
               ", \"row_faults\": %" PRIu64 ", \"bytes_read\": %" PRIu64 "}",
               x->first ? "" : ",", t->model, t->version, t->tensor, mode_name(t->mode),
               mode_name(t->policy), t->file_version, t->bytes, t->resident_bytes,
               t->resident_rows, t->rows_served, t->hits, t->row_faults, t->bytes_read);
    } else {
        char name[80], hs[16], ps[24];
        snprintf(name, sizeof(name), "%s/%" PRId64 "/%s", t->model, t->version, t->tensor);
        if (hit < 0)
            snprintf(hs, sizeof(hs), "-");
        else
            snprintf(hs, sizeof(hs), "%.3f", hit);
        if (per < 0)
            snprintf(ps, sizeof(ps), "-");
        else
            snprintf(ps, sizeof(ps), "%.1f B", per);
        printf("%-40s %-10s %7s %12" PRIu64 " %12" PRIu64 " %8s %12s\n", name,
               mode_name(t->mode), mode_name(t->policy), t->resident_bytes, t->rows_served, hs,
               ps);
    }
    x->first = false;
    return 0;
}

static int cmd_reload(int argc, char **argv)
{
    return cli_reload_main(argc, argv, socket_path);
}

static int cmd_stats(int argc, char **argv)
{
    static const char help[] =
        "usage: embcache stats [--json]\n"
        "Print the daemon's statistics, one per line (or one JSON object), then\n"
        "one line per tensor it has open: how it is cached (rows or partitions)\n"
        "and by which policy, its bytes in memory, the rows clients gathered\n"
        "from it, the share of them found in memory, and the bytes read from\n"
        "disk per row served. Then, when there are namespaces of cached results,\n"
        "one line per namespace you may open: results stored, their bytes, hits,\n"
        "misses, \"no result\" hits, stale values served, leases granted, waited\n"
        "for and passed on, early refreshes and evictions (JSON: \"namespaces\").\n";
    struct stats_ctx x = {.first = true};
    ec_client *c;
    int rc;

    if ((rc = cli_simple_opts(argc, argv, help, &x.json)) >= 0)
        return rc;
    if (optind < argc) {
        fprintf(stderr, "embcache stats: unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    if ((rc = connect_or_fail(&c)))
        return rc;
    {
        char topo[1024];
        int trc = ec_client_topology(c, topo, sizeof(topo));
        if (trc == 0 || trc == EC_ETOOBIG) {
            if (x.json) {
                printf("{\n  \"topology\": \"");
                for (const char *p = topo; *p; p++)
                    if (*p == '"' || *p == '\\')
                        printf("\\%c", *p);
                    else if ((unsigned char)*p >= 0x20)
                        putchar(*p);
                printf("\"");
                x.first = false;
            } else {
                printf("%-30s %s\n", "topology", topo);
            }
        } else if (x.json) {
            printf("{");
        }
    }
    rc = ec_client_stats(c, stat_cb, &x);
    if (rc == 0) {
        x.first = true;
        if (x.json)
            printf(",\n  \"tensors\": [");
        else
            printf("\n%-40s %-10s %7s %12s %12s %8s %12s\n", "tensor (model/version/name)",
                   "mode", "policy", "resident", "served", "hit", "read/row");
        rc = ec_client_tensor_stats(c, tensor_stat_cb, &x);
        if (x.json)
            printf("\n  ]");
    }
    if (rc == 0)
        rc = cli_results_stats(c, x.json);
    if (rc == 0)
        rc = cli_dynamic_stats(c, x.json);
    if (x.json)
        printf("\n}\n");
    ec_client_close(c);
    return rc ? fail(rc) : EXIT_OK;
}

/* ------------------------------------------------------------------ */

static int cmd_recover(int argc, char **argv)
{
    return cli_recover_main(argc, argv);
}

static int cmd_results(int argc, char **argv)
{
    return cli_results_main(argc, argv, socket_path);
}

static int cmd_search(int argc, char **argv)
{
    return cli_search_main(argc, argv, socket_path);
}

static int cmd_index(int argc, char **argv)
{
    return cli_index_main(argc, argv, socket_path);
}

static int cmd_top(int argc, char **argv)
{
    return cli_top_main(argc, argv, socket_path);
}

static int cmd_remote(int argc, char **argv)
{
    return cli_remote_main(argv[0] + 9 /* "embcache " */, argc, argv, socket_path);
}

static int cmd_dynamic(int argc, char **argv)
{
    return cli_dynamic_main(argv[0], argc, argv, socket_path);
}

/* ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    static const struct option o[] = {
        {"socket", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    static const struct cli_cmd cmds[] = {
        {"import", cmd_import}, {"ls", cmd_ls}, {"alias", cmd_alias},
        {"get", cmd_get},       {"stats", cmd_stats}, {"find", cmd_find},
        {"reload", cmd_reload},
        {"prewarm", cmd_prewarm}, {"evict", cmd_evict}, {"retire", cmd_retire},
        {"refresh", cmd_refresh}, {"policy", cmd_policy}, {"upgrade", cmd_upgrade},
        {"recover", cmd_recover}, {"results", cmd_results}, {"search", cmd_search},
        {"index", cmd_index},
        {"dynamic", cmd_dynamic}, {"put", cmd_dynamic}, {"del", cmd_dynamic},
        {"update", cmd_dynamic}, {"snapshot", cmd_dynamic}, {"top", cmd_top},
        {"publish", cmd_remote}, {"pull", cmd_remote}, {"unpublish", cmd_remote},
    };
    int ch;

    while ((ch = getopt_long(argc, argv, "+s:hV", o, NULL)) != -1) {
        switch (ch) {
        case 's': socket_path = optarg; break;
        case 'h': usage(stdout); return EXIT_OK;
        case 'V': printf("embcache %s\n", ec_version()); return EXIT_OK;
        default:
            fprintf(stderr, "embcache: try 'embcache --help'\n");
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "embcache: missing command (import, ls, alias, get, stats, find, "
                        "prewarm, evict, retire, refresh, policy, upgrade, reload, recover, "
                        "results, search, index, dynamic, put, del, update, snapshot, top, "
                        "publish, pull, unpublish); try "
                        "'embcache --help'\n");
        return EXIT_USAGE;
    }
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        static char prog[32];
        if (strcmp(argv[optind], cmds[i].name))
            continue;
        argv += optind;
        argc -= optind;
        /* getopt's own messages name the subcommand. */
        snprintf(prog, sizeof(prog), "embcache %s", cmds[i].name);
        argv[0] = prog;
        /* 0, not 1: glibc re-reads the option string only then, so the
         * subcommand's options may follow its arguments ("get ... --raw")
         * instead of inheriting the "+" (stop at the first argument) above. */
        optind = 0;
        return cmds[i].fn(argc, argv);
    }
    fprintf(stderr, "embcache: unknown command '%s' (commands: import, ls, alias, get, "
                    "stats, find, prewarm, evict, retire, refresh, policy, upgrade, reload, "
                    "recover, results, search, index, dynamic, put, del, update, snapshot, "
                    "top, publish, pull, unpublish)\n",
            argv[optind]);
    return EXIT_USAGE;
}
