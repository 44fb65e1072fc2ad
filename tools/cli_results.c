/*
 * cli_results.c - `embcache results`: the namespaces of cached results
 * (include/embcache_results.h) from the command line: ls, get, put, purge,
 * create (and --configure), drop; and the per-namespace section of
 * `embcache stats`.
 *
 * Called by tools/embcache.c's main (one process, one thread), which has
 * already taken the global options (--socket) and hands over the words from
 * "results" on. Every subcommand is a few library calls; the exit codes are
 * the tool's (tools/cli.h, documented by tools/embcache.c's usage()): 0
 * success, 1 other failure, 2 bad usage or a bad name or option, 3 daemon
 * not reachable, 4 not found (a namespace, a key, a file, a model of a
 * binding), 5 bad input file, 6 already exists. What the tool's files share
 * (exit codes, failure lines, number parsing, JSON strings, sizes) is in
 * tools/cli_util.c.
 * Failures print exactly one line on standard error; successes print
 * nothing there (bar `get`'s state line when its value goes raw to standard
 * output and standard error is a terminal).
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "embcache.h"

/* Values read by --file: more than a result holds (about 1 MiB), so the
 * daemon's own limit is the one reported, but bounded. */
#define VALUE_FILE_MAX (16u << 20)

static const char *rsock;
static char prog[48]; /* "embcache results get": prefix of every message */

/* One line: the library's message (else the code's name), then what to do
 * (hint, may be NULL; for EC_EPROTO, a daemon too old, one by default). */
static int rfail(int rc, const char *hint)
{
    if (rc == EC_EPROTO && !hint)
        hint = "the daemon may be older than this embcache and not know namespaces of "
               "results: restart embcached from this release";
    return cli_fail(prog, rc, hint);
}

static int usage_err(const char *what)
{
    fprintf(stderr, "%s: %s (see '%s --help')\n", prog, what, prog);
    return EXIT_USAGE;
}

/* ------------------------------------------------------------------ */
/* Parsing                                                             */

/* A namespace name from the command line, checked here so that the message
 * names it and says what a name may hold. */
static int check_ns(const char *name)
{
    size_t n = strlen(name), i = 0;

    while (i < n && (isalnum((unsigned char)name[i]) || strchr("._-:", name[i])))
        i++;
    if (n && n <= EC_NS_NAME_MAX && i == n)
        return 0;
    fprintf(stderr, "%s: '%s' is not a valid namespace name: 1 to %d letters, digits, '.', "
                    "'_', '-' or ':'\n", prog, name, EC_NS_NAME_MAX);
    return EXIT_USAGE;
}

/* A KEY argument: the key, how messages show it, and what to free. */
struct key_arg {
    const void *key;
    size_t len;
    uint8_t *buf;   /* malloc'd for --key-hex, else NULL: the caller frees it */
    char desc[160]; /* key_desc() */
};

/* A key for a message: quoted when printable, else hex; cut at 64 bytes. */
static void key_desc(const void *key, size_t len, char *out, size_t cap)
{
    const uint8_t *k = key;
    size_t shown = len > 64 ? 64 : len, o = 0;
    bool text = true;

    for (size_t i = 0; i < shown; i++)
        if (k[i] < 0x20 || k[i] == 0x7f || k[i] == '\'')
            text = false;
    if (text) {
        o = (size_t)snprintf(out, cap, "'%.*s'", (int)shown, (const char *)k);
    } else {
        o = (size_t)snprintf(out, cap, "0x");
        for (size_t i = 0; i < shown && o + 3 < cap; i++)
            o += (size_t)snprintf(out + o, cap - o, "%02x", k[i]);
    }
    if (shown < len && o + 4 < cap)
        snprintf(out + o, cap - o, "...");
}

/* A key: the argument's bytes, or (hex) pairs of hex digits, into *k. */
static int parse_key(const char *arg, bool hex, struct key_arg *k)
{
    size_t n = strlen(arg);

    k->buf = NULL;
    if (!hex) {
        if (n == 0 || n > EC_RES_KEY_MAX) {
            fprintf(stderr, "%s: KEY must be 1 to %u bytes (this one is %zu)\n", prog,
                    EC_RES_KEY_MAX, n);
            return EXIT_USAGE;
        }
        k->key = arg;
        k->len = n;
    } else {
        for (size_t i = 0; i < n; i++) {
            if (!isxdigit((unsigned char)arg[i])) {
                fprintf(stderr, "%s: --key-hex KEY '%.80s' has a character that is not a "
                                "hex digit at offset %zu\n", prog, arg, i);
                return EXIT_USAGE;
            }
        }
        if (n == 0 || n % 2 || n / 2 > EC_RES_KEY_MAX) {
            fprintf(stderr, "%s: --key-hex KEY '%.80s' must be an even number of hex digits, "
                            "1 to %u bytes\n", prog, arg, EC_RES_KEY_MAX);
            return EXIT_USAGE;
        }
        if (!(k->buf = malloc(n / 2)))
            return rfail(EC_ENOMEM, NULL);
        for (size_t i = 0; i < n / 2; i++)
            k->buf[i] = (uint8_t)strtoul((char[]){arg[2 * i], arg[2 * i + 1], 0}, NULL, 16);
        k->key = k->buf;
        k->len = n / 2;
    }
    key_desc(k->key, k->len, k->desc, sizeof(k->desc));
    return 0;
}

static void json_num(const char *name, double v)
{
    if (isfinite(v))
        printf(", \"%s\": %.9g", name, v);
    else
        printf(", \"%s\": null", name);
}

/* ------------------------------------------------------------------ */
/* Connecting and opening                                              */

static int connect_c(ec_client **c)
{
    int rc = ec_client_connect(rsock, c);

    return rc ? rfail(rc, NULL) : 0;
}

/* Connect, then open an existing namespace, with messages that say which
 * and what next. *c and *r are the caller's to close, also on failure. */
static int open_ns(const char *name, ec_client **c, ec_results **r)
{
    int rc = connect_c(c);

    if (rc)
        return rc;
    rc = ec_results_open(*c, name, NULL, r);
    if (rc == EC_ENOENT) {
        fprintf(stderr, "%s: namespace '%s' does not exist ('embcache results ls' lists those "
                        "you may open; 'embcache results create %s' makes it)\n", prog, name,
                name);
        return EXIT_NOTFOUND;
    }
    if (rc == EC_EPERM)
        return rfail(rc, "a namespace not created --shared is open to its owner's uid alone");
    return rc ? rfail(rc, NULL) : 0;
}

/* The namespace `name` as ec_results_list() reports it, copied out. */
struct ns_copy {
    const char *want;
    bool found;
    ec_ns_info info;
    char name[EC_NS_NAME_MAX + 1];
    char model[256], version[256];
};

static int find_cb(const ec_ns_info *ns, void *arg)
{
    struct ns_copy *x = arg;

    if (!ns->name || strcmp(ns->name, x->want))
        return 0;
    x->info = *ns;
    snprintf(x->name, sizeof(x->name), "%s", ns->name);
    snprintf(x->model, sizeof(x->model), "%s", ns->bind_model ? ns->bind_model : "");
    snprintf(x->version, sizeof(x->version), "%s", ns->bind_version ? ns->bind_version : "");
    x->info.name = x->name;
    x->info.bind_model = x->model;
    x->info.bind_version = x->version;
    x->found = true;
    return 1;
}

static int find_ns(ec_client *c, const char *name, struct ns_copy *x)
{
    int rc;

    memset(x, 0, sizeof(*x));
    x->want = name;
    rc = ec_results_list(c, find_cb, x);
    return rc == 1 ? 0 : rc;
}

/* ------------------------------------------------------------------ */
/* ls                                                                  */

struct ls_ctx {
    bool json;
    unsigned n;
};

static double hit_ratio(const ec_ns_info *ns)
{
    uint64_t all = ns->hits + ns->misses;

    return all ? (double)ns->hits / (double)all : NAN;
}

static void binding_desc(const ec_ns_info *ns, char *out, size_t cap)
{
    if (!ns->bind_model || !ns->bind_model[0])
        snprintf(out, cap, "-");
    else
        snprintf(out, cap, "%s/%s->%" PRId64, ns->bind_model,
                 ns->bind_version ? ns->bind_version : "", ns->bound_version);
}

static int ls_cb(const ec_ns_info *ns, void *arg)
{
    struct ls_ctx *x = arg;

    if (x->json) {
        printf("%s\n  {\"name\": ", x->n ? "," : "[");
        cli_json_str(ns->name);
        printf(", \"owner_uid\": %" PRIu32 ", \"flags\": %" PRIu32 ", \"shared\": %s"
               ", \"remote\": %s",
               ns->owner_uid, ns->flags, ns->flags & EC_NS_SHARED ? "true" : "false",
               ns->flags & EC_NS_REMOTE ? "true" : "false");
        printf(", \"bind_model\": ");
        cli_json_str(ns->bind_model ? ns->bind_model : "");
        printf(", \"bind_version\": ");
        cli_json_str(ns->bind_version ? ns->bind_version : "");
        printf(", \"bound_version\": %" PRId64 ", \"generation\": %" PRIu32, ns->bound_version,
               ns->generation);
        json_num("ttl", ns->ttl);
        json_num("stale_ttl", ns->stale_ttl);
        json_num("negative_ttl", ns->negative_ttl);
        json_num("jitter", ns->jitter);
        json_num("lease_time", ns->lease_time);
        printf(", \"max_computing\": %" PRIu32 ", \"negative_max\": %" PRIu64
               ", \"items\": %" PRIu64 ", \"negative_items\": %" PRIu64 ", \"bytes\": %" PRIu64
               ", \"hits\": %" PRIu64 ", \"misses\": %" PRIu64 ", \"negative_hits\": %" PRIu64
               ", \"stale_served\": %" PRIu64,
               ns->max_computing, ns->negative_max, ns->items, ns->negative_items, ns->bytes,
               ns->hits, ns->misses, ns->negative_hits, ns->stale_served);
        json_num("hit_ratio", hit_ratio(ns));
        printf(", \"leases_granted\": %" PRIu64 ", \"leases_waited\": %" PRIu64
               ", \"leases_passed\": %" PRIu64 ", \"early_refreshes\": %" PRIu64
               ", \"computing\": %" PRIu64 ", \"computing_peak\": %" PRIu64
               ", \"limited\": %" PRIu64 ", \"puts\": %" PRIu64 ", \"negative_puts\": %" PRIu64
               ", \"evictions\": %" PRIu64 ", \"purged\": %" PRIu64
               ", \"invalidations\": %" PRIu64 "}",
               ns->leases_granted, ns->leases_waited, ns->leases_passed, ns->early_refreshes,
               ns->computing, ns->computing_peak, ns->limited, ns->puts, ns->negative_puts,
               ns->evictions, ns->purged, ns->invalidations);
    } else {
        char bind[160], size[32], hit[16], leases[48], comp[48];
        double h = hit_ratio(ns);

        if (x->n == 0)
            printf("%-24s %6s %-7s %-20s %5s %9s %8s %10s %6s %13s %11s %9s\n", "NAMESPACE",
                   "OWNER", "SHARING", "BINDING", "GEN", "ITEMS", "NEGATIVE", "SIZE", "HIT",
                   "LEASES(G/W)", "COMPUTING", "EVICTED");
        binding_desc(ns, bind, sizeof(bind));
        cli_human_bytes(ns->bytes, size, sizeof(size));
        if (isnan(h))
            snprintf(hit, sizeof(hit), "-");
        else
            snprintf(hit, sizeof(hit), "%.3f", h);
        snprintf(leases, sizeof(leases), "%" PRIu64 "/%" PRIu64, ns->leases_granted,
                 ns->leases_waited);
        snprintf(comp, sizeof(comp), "%" PRIu64 "/%" PRIu64, ns->computing,
                 ns->computing_peak);
        printf("%-24s %6" PRIu32 " %-7s %-20s %5" PRIu32 " %9" PRIu64 " %8" PRIu64
               " %10s %6s %13s %11s %9" PRIu64 "\n",
               ns->name, ns->owner_uid, ns->flags & EC_NS_SHARED ? "shared" : "private", bind,
               ns->generation, ns->items, ns->negative_items, size, hit, leases, comp,
               ns->evictions);
    }
    x->n++;
    return 0;
}

static int cmd_ls(int argc, char **argv)
{
    static const char help[] =
        "usage: embcache results ls [--json]\n"
        "List the namespaces of cached results you may open (an administrator:\n"
        "all), one a line: owner uid, shared or private, binding (MODEL/VERSION->\n"
        "the version it leads to now), generation (bumped by each invalidation),\n"
        "results and \"no result\" entries stored, their size, the hit ratio\n"
        "(hits / (hits + misses)), leases granted/waited, computations running\n"
        "now/at most, and evictions. --json prints an array of objects with\n"
        "every field the daemon reports (hits, misses, ttl, puts, ...).\n";
    struct ls_ctx x = {0};
    ec_client *c;
    int rc;

    if ((rc = cli_simple_opts(argc, argv, help, &x.json)) >= 0)
        return rc;
    if (optind < argc)
        return usage_err("takes no arguments");
    if ((rc = connect_c(&c)))
        return rc;
    /* JSON opens its bracket with the first namespace: a failure before it
     * prints nothing that looks like an empty listing. */
    rc = ec_results_list(c, ls_cb, &x);
    ec_client_close(c);
    if (rc)
        return rfail(rc, NULL);
    if (x.json)
        printf("%s\n", x.n ? "\n]" : "[]");
    else if (x.n == 0)
        printf("no namespaces yet: 'embcache results create --help' shows how to make one\n");
    return EXIT_OK;
}

/* ------------------------------------------------------------------ */
/* get                                                                 */

static void meta_desc(const ec_result_meta *m, char *out, size_t cap)
{
    size_t o;

    if (m->state == EC_RES_STALE)
        o = (size_t)snprintf(out, cap, "stale for %.1f s", -m->ttl_left);
    else
        o = (size_t)snprintf(out, cap, "fresh, ttl left %.1f s", m->ttl_left);
    if (o < cap)
        o += (size_t)snprintf(out + o, cap - o, ", %zu byte(s)", m->len);
    if (o < cap && (m->flags & EC_RES_NEGATIVE))
        o += (size_t)snprintf(out + o, cap - o, ", negative (\"no result\")");
    if (o < cap && (m->flags & EC_RES_TENSOR)) {
        o += (size_t)snprintf(out + o, cap - o, ", tensor %s [", ec_dtype_name(m->dtype));
        for (uint32_t d = 0; d < m->ndim && d < EC_MAX_DIMS && o < cap; d++)
            o += (size_t)snprintf(out + o, cap - o, "%s%" PRId64, d ? ", " : "", m->shape[d]);
        if (o < cap)
            o += (size_t)snprintf(out + o, cap - o, "]");
    }
    if (o < cap && m->compute_us)
        snprintf(out + o, cap - o, ", computed in %" PRIu32 " us", m->compute_us);
}

static void hex_dump(const uint8_t *p, size_t n)
{
    for (size_t off = 0; off < n; off += 16) {
        printf("%08zx ", off);
        for (size_t i = 0; i < 16; i++) {
            if (off + i < n)
                printf(" %02x", p[off + i]);
            else
                printf("   ");
        }
        printf("  |");
        for (size_t i = 0; i < 16 && off + i < n; i++)
            putchar(p[off + i] >= 0x20 && p[off + i] < 0x7f ? p[off + i] : '.');
        printf("|\n");
    }
}

/* Printable as text on a terminal: no control bytes but tab and newline
 * (bytes >= 0x80 pass: UTF-8). */
static bool is_text(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((p[i] < 0x20 && p[i] != '\n' && p[i] != '\t') || p[i] == 0x7f)
            return false;
    return true;
}

/* Read key into *buf (grown to what the value needs). Returns 1, 0 or an
 * EC_E* code as ec_results_get does. */
static int get_value(ec_results *r, const void *key, size_t klen, uint32_t flags,
                     uint8_t **buf, size_t *cap, ec_result_meta *m)
{
    int rc = EC_ETOOBIG;

    /* A value may be replaced by a longer one between two reads: retry a
     * few times with what the last read said it needs. */
    for (int tries = 0; tries < 4 && rc == EC_ETOOBIG; tries++) {
        rc = ec_results_get(r, key, klen, flags, *buf, *cap, m);
        if (rc == EC_ETOOBIG) {
            uint8_t *nb = realloc(*buf, m->len + 1);
            if (!nb)
                return EC_ENOMEM;
            *buf = nb;
            *cap = m->len + 1;
        }
    }
    return rc;
}

static int cmd_get(int argc, char **argv)
{
    static const struct option o[] = {
        {"hex", no_argument, NULL, 'x'},
        {"out", required_argument, NULL, 'o'},
        {"stale", no_argument, NULL, 's'},
        {"key-hex", no_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool hex = false, stale = false, key_hex = false;
    const char *out_path = NULL, *ns;
    uint8_t *buf = NULL;
    size_t cap = 64 * 1024;
    struct key_arg k = {0};
    ec_results *r = NULL;
    ec_client *c = NULL;
    ec_result_meta m;
    char mdesc[256];
    int ch, rc, ret;

    while ((ch = getopt_long(argc, argv, "xo:skh", o, NULL)) != -1) {
        switch (ch) {
        case 'x': hex = true; break;
        case 'o': out_path = optarg; break;
        case 's': stale = true; break;
        case 'k': key_hex = true; break;
        case 'h':
            printf("usage: embcache results get NS KEY [--key-hex] [--hex | --out FILE] "
                   "[--stale]\n"
                   "Print the result cached under KEY in namespace NS. KEY is the bytes of\n"
                   "the argument (UTF-8), or with --key-hex pairs of hex digits; a KEY that\n"
                   "starts with '-' goes after '--'. The value goes to standard output as it\n"
                   "is when that is not a terminal, or to FILE with --out (and a line saying\n"
                   "what was written); --hex prints a line with its state (fresh or stale,\n"
                   "TTL left, size, negative, tensor dtype and shape) and a hex dump; on a\n"
                   "terminal that line comes first, then the value as text (hex when it is\n"
                   "not text). --stale also reads a value past its TTL that may still be\n"
                   "served stale. A cached \"no result\" is found: its value is empty.\n"
                   "Exit status: 0 found, 4 not found (or no such namespace), 1 other errors.\n");
            return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (argc - optind != 2)
        return usage_err("needs NS and KEY");
    if (hex && out_path)
        return usage_err("--hex and --out go to different places: give one");
    ns = argv[optind];
    if ((ret = check_ns(ns)) || (ret = parse_key(argv[optind + 1], key_hex, &k)))
        return ret;
    if (!(buf = malloc(cap))) {
        ret = rfail(EC_ENOMEM, NULL);
        goto out;
    }
    if ((ret = open_ns(ns, &c, &r)))
        goto out;
    rc = get_value(r, k.key, k.len, stale ? EC_RES_ALLOW_STALE : 0, &buf, &cap, &m);
    if (rc < 0) {
        ret = rfail(rc, NULL);
        goto out;
    }
    if (rc == 0) {
        fprintf(stderr, "%s: no %sresult for key %s in namespace '%s'%s\n", prog,
                stale ? "" : "fresh ", k.desc, ns,
                stale ? "" : " (--stale also reads one past its TTL)");
        ret = EXIT_NOTFOUND;
        goto out;
    }
    if (m.flags & EC_RES_NEGATIVE)
        m.len = 0;
    meta_desc(&m, mdesc, sizeof(mdesc));
    ret = EXIT_OK;
    if (out_path) {
        FILE *f = fopen(out_path, "wb");
        bool wrote = f && fwrite(buf, 1, m.len, f) == m.len;
        if (f && fclose(f))
            wrote = false;
        if (!wrote) {
            fprintf(stderr, "%s: cannot write --out '%s': %s\n", prog, out_path,
                    strerror(errno));
            ret = EXIT_FAIL;
            goto out;
        }
        printf("wrote %zu byte(s) to %s: %s\n", m.len, out_path, mdesc);
    } else if (hex || isatty(STDOUT_FILENO)) {
        printf("# %s %s: %s\n", ns, k.desc, mdesc);
        if (hex || !is_text(buf, m.len)) {
            hex_dump(buf, m.len);
        } else {
            fwrite(buf, 1, m.len, stdout);
            if (m.len && buf[m.len - 1] != '\n')
                putchar('\n');
        }
    } else {
        if (isatty(STDERR_FILENO))
            fprintf(stderr, "# %s %s: %s\n", ns, k.desc, mdesc);
        if (m.len && fwrite(buf, 1, m.len, stdout) != m.len)
            ret = EXIT_FAIL;
    }
    if (fflush(stdout) || ret) {
        fprintf(stderr, "%s: writing to standard output failed: %s\n", prog, strerror(errno));
        ret = EXIT_FAIL;
    }
out:
    ec_results_close(r);
    ec_client_close(c);
    free(buf);
    free(k.buf);
    return ret;
}

/* ------------------------------------------------------------------ */
/* put                                                                 */

/* FILE ("-": standard input) whole into *out. */
static int read_value_file(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    size_t cap = 64 * 1024, n = 0;
    uint8_t *b = NULL, *nb;
    int ret = EXIT_BADINPUT;

    if (!f) {
        int e = errno;
        fprintf(stderr, "%s: cannot open --file '%s': %s\n", prog, path, strerror(e));
        return e == ENOENT ? EXIT_NOTFOUND : EXIT_BADINPUT;
    }
    for (;; cap *= 2) {
        if (!(nb = realloc(b, cap))) {
            ret = rfail(EC_ENOMEM, NULL);
            goto fail;
        }
        b = nb;
        n += fread(b + n, 1, cap - n, f);
        if (n < cap)
            break;
        if (cap >= VALUE_FILE_MAX) {
            fprintf(stderr, "%s: --file '%s' is over %u MiB; a result holds about 1 MiB\n",
                    prog, path, VALUE_FILE_MAX >> 20);
            goto fail;
        }
    }
    if (ferror(f)) {
        fprintf(stderr, "%s: cannot read --file '%s': %s\n", prog, path, strerror(errno));
        goto fail;
    }
    if (f != stdin)
        fclose(f);
    *out = b;
    *len = n;
    return 0;
fail:
    free(b);
    if (f != stdin)
        fclose(f);
    return ret;
}

static int cmd_put(int argc, char **argv)
{
    static const struct option o[] = {
        {"value", required_argument, NULL, 'v'},
        {"file", required_argument, NULL, 'f'},
        {"negative", no_argument, NULL, 'n'},
        {"ttl", required_argument, NULL, 't'},
        {"key-hex", no_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *value = NULL, *file = NULL, *ns;
    bool negative = false, key_hex = false;
    ec_result_value v = {0};
    uint8_t *fbuf = NULL;
    struct key_arg k = {0};
    ec_results *r = NULL;
    ec_client *c = NULL;
    int ch, rc, ret, sources = 0;

    while ((ch = getopt_long(argc, argv, "v:f:nt:kh", o, NULL)) != -1) {
        switch (ch) {
        case 'v': value = optarg; sources++; break;
        case 'f': file = optarg; sources++; break;
        case 'n': negative = true; sources++; break;
        case 't':
            if (cli_parse_double(prog, "--ttl", optarg, 0, true, INFINITY, &v.ttl))
                return EXIT_USAGE;
            break;
        case 'k': key_hex = true; break;
        case 'h':
            printf("usage: embcache results put NS KEY (--value STR | --file FILE | --negative)\n"
                   "                            [--ttl S] [--key-hex]\n"
                   "Store a result under KEY in namespace NS, replacing what is there (and\n"
                   "ending a lease on KEY: the processes waiting for it wake). The value is\n"
                   "STR's bytes, FILE's (\"-\": standard input), or --negative: a cached \"no\n"
                   "result\". --ttl: seconds it stays fresh (default: the namespace's,\n"
                   "jittered). KEY as for 'embcache results get'.\n");
            return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (argc - optind != 2)
        return usage_err("needs NS and KEY");
    if (sources != 1)
        return usage_err("needs exactly one of --value, --file and --negative");
    ns = argv[optind];
    if ((ret = check_ns(ns)) || (ret = parse_key(argv[optind + 1], key_hex, &k)))
        return ret;
    if (negative) {
        v.flags |= EC_RES_NEGATIVE;
    } else if (value) {
        v.data = value;
        v.len = strlen(value);
    } else {
        if ((ret = read_value_file(file, &fbuf, &v.len)))
            goto out;
        v.data = fbuf;
    }
    if ((ret = open_ns(ns, &c, &r)))
        goto out;
    rc = ec_results_put(r, k.key, k.len, &v);
    if (rc) {
        ret = rfail(rc, rc == EC_ETOOBIG ? "a result with its key holds about 1 MiB" : NULL);
        goto out;
    }
    if (negative)
        printf("stored %s in namespace '%s': negative (\"no result\")\n", k.desc, ns);
    else
        printf("stored %s in namespace '%s': %zu byte(s)\n", k.desc, ns, v.len);
out:
    ec_results_close(r);
    ec_client_close(c);
    free(fbuf);
    free(k.buf);
    return ret;
}

/* ------------------------------------------------------------------ */
/* purge, drop                                                         */

static int cmd_purge(int argc, char **argv)
{
    static const struct option o[] = {
        {"key-hex", no_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool key_hex = false;
    struct key_arg k = {0};
    ec_results *r = NULL;
    ec_client *c = NULL;
    uint64_t removed = 0;
    const char *ns;
    int ch, rc, ret;

    while ((ch = getopt_long(argc, argv, "kh", o, NULL)) != -1) {
        switch (ch) {
        case 'k': key_hex = true; break;
        case 'h':
            printf("usage: embcache results purge NS [KEY] [--key-hex]\n"
                   "Drop KEY's result from namespace NS, or every result of NS (its owner or\n"
                   "an administrator), and print how many went. The namespace and its\n"
                   "options stay ('embcache results drop' deletes it). KEY as for\n"
                   "'embcache results get'.\n");
            return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (argc - optind < 1 || argc - optind > 2)
        return usage_err("needs NS and at most one KEY");
    if (key_hex && argc - optind != 2)
        return usage_err("--key-hex needs a KEY");
    ns = argv[optind];
    if ((ret = check_ns(ns)))
        return ret;
    if (argc - optind == 2 && (ret = parse_key(argv[optind + 1], key_hex, &k)))
        return ret;
    if ((ret = open_ns(ns, &c, &r)))
        goto out;
    rc = ec_results_purge(r, k.key, k.len, &removed);
    if (rc) {
        ret = rfail(rc, !k.key && rc == EC_EPERM
                            ? "purging all of a namespace is for its owner and administrators"
                            : NULL);
        goto out;
    }
    if (k.key)
        printf("purged key %s from namespace '%s': %" PRIu64 " result(s) removed\n", k.desc, ns,
               removed);
    else
        printf("purged namespace '%s': %" PRIu64 " result(s) removed\n", ns, removed);
out:
    ec_results_close(r);
    ec_client_close(c);
    free(k.buf);
    return ret;
}

static int cmd_drop(int argc, char **argv)
{
    static const char help[] =
        "usage: embcache results drop NS\n"
        "Delete namespace NS and every result in it (its owner or an\n"
        "administrator). Clients that have it open get errors from then on.\n";
    ec_client *c;
    int rc;

    if ((rc = cli_simple_opts(argc, argv, help, NULL)) >= 0)
        return rc;
    if (argc - optind != 1)
        return usage_err("needs NS");
    if ((rc = check_ns(argv[optind])))
        return rc;
    if ((rc = connect_c(&c)))
        return rc;
    rc = ec_results_drop(c, argv[optind]);
    ec_client_close(c);
    if (rc == EC_ENOENT) {
        fprintf(stderr, "%s: namespace '%s' does not exist ('embcache results ls' lists "
                        "them)\n", prog, argv[optind]);
        return EXIT_NOTFOUND;
    }
    if (rc)
        return rfail(rc, rc == EC_EPERM ? "dropping a namespace is for its owner and "
                                          "administrators" : NULL);
    printf("dropped namespace '%s'\n", argv[optind]);
    return EXIT_OK;
}

/* ------------------------------------------------------------------ */
/* create, create --configure                                          */

/* "private, ttl 300 s, stale 60 s, ..." of a namespace as the daemon
 * reports it (a stale time or jitter <= 0: none). */
static void opts_desc(const ec_ns_info *ns, char *out, size_t cap)
{
    char stale[32], jitter[32];
    size_t o;

    if (ns->stale_ttl > 0)
        snprintf(stale, sizeof(stale), "%g s", ns->stale_ttl);
    else
        snprintf(stale, sizeof(stale), "never");
    if (ns->jitter > 0)
        snprintf(jitter, sizeof(jitter), "%g", ns->jitter);
    else
        snprintf(jitter, sizeof(jitter), "none");
    o = (size_t)snprintf(out, cap, "%s%s, ttl %g s, stale %s, negative %g s, jitter %s, "
                                   "lease %g s, max computing %" PRIu32 ", negative max %" PRIu64,
                         ns->flags & EC_NS_SHARED ? "shared" : "private",
                         ns->flags & EC_NS_REMOTE ? ", across hosts" : "", ns->ttl, stale,
                         ns->negative_ttl, jitter, ns->lease_time, ns->max_computing,
                         ns->negative_max);
    if (o < cap && ns->bind_model && ns->bind_model[0])
        snprintf(out + o, cap - o, ", bound to %s/%s (version %" PRId64 ")", ns->bind_model,
                 ns->bind_version, ns->bound_version);
}

/* ec_ns_opts says 0 for "the default" in every field, so configuring one
 * option would put the others back to their defaults: fill what the
 * command line did not give (NAN, 0) from the namespace as it is. A stale
 * time or jitter the daemon reports as <= 0 is "none" (-1 in ec_ns_opts). */
static void merge_current(ec_ns_opts *o, const ec_ns_info *cur)
{
    o->ttl = isnan(o->ttl) ? cur->ttl : o->ttl;
    o->stale_ttl = isnan(o->stale_ttl) ? (cur->stale_ttl > 0 ? cur->stale_ttl : -1)
                                       : o->stale_ttl;
    o->negative_ttl = isnan(o->negative_ttl) ? cur->negative_ttl : o->negative_ttl;
    o->jitter = isnan(o->jitter) ? (cur->jitter > 0 ? cur->jitter : -1) : o->jitter;
    o->lease_time = isnan(o->lease_time) ? cur->lease_time : o->lease_time;
    o->max_computing = o->max_computing ? o->max_computing : cur->max_computing;
    o->negative_max = o->negative_max ? o->negative_max : cur->negative_max;
    if (!o->bind_model && cur->bind_model[0]) {
        o->bind_model = cur->bind_model;
        o->bind_version = cur->bind_version;
    }
}

/* Options not given: the API's defaults (0). */
static void zero_unset(ec_ns_opts *o)
{
    double *d[] = {&o->ttl, &o->stale_ttl, &o->negative_ttl, &o->jitter, &o->lease_time};

    for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++)
        if (isnan(*d[i]))
            *d[i] = 0;
}

static int cmd_create(int argc, char **argv)
{
    static const struct option o[] = {
        {"shared", no_argument, NULL, 'S'},
        {"remote", no_argument, NULL, 'R'},
        {"bind", required_argument, NULL, 'b'},
        {"ttl", required_argument, NULL, 't'},
        {"stale-ttl", required_argument, NULL, 's'},
        {"negative-ttl", required_argument, NULL, 'n'},
        {"jitter", required_argument, NULL, 'j'},
        {"lease-time", required_argument, NULL, 'l'},
        {"max-computing", required_argument, NULL, 'm'},
        {"negative-max", required_argument, NULL, 'N'},
        {"configure", no_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    ec_ns_opts no = {.ttl = NAN, .stale_ttl = NAN, .negative_ttl = NAN, .jitter = NAN,
                     .lease_time = NAN};
    bool configure = false, shared = false, remote = false;
    char bind[512], desc[512];
    struct ns_copy cur;
    ec_results *r = NULL;
    ec_client *c = NULL;
    const char *ns;
    uint64_t u = 0;
    int ch, rc, ret;

    while ((ch = getopt_long(argc, argv, "SRb:t:s:n:j:l:m:N:ch", o, NULL)) != -1) {
        rc = 0;
        switch (ch) {
        case 'S': shared = true; break;
        case 'R': remote = true; break;
        case 'c': configure = true; break;
        case 'b': {
            char *slash;
            snprintf(bind, sizeof(bind), "%s", optarg);
            slash = strchr(bind, '/');
            if (!slash || slash == bind || !slash[1] || strlen(optarg) >= sizeof(bind)) {
                fprintf(stderr, "%s: --bind '%s' must be MODEL/VERSION, the version a number "
                                "or an alias (e.g. bert/current)\n", prog, optarg);
                return EXIT_USAGE;
            }
            *slash = '\0';
            no.bind_model = bind;
            no.bind_version = slash + 1;
            break;
        }
        case 't': rc = cli_parse_double(prog, "--ttl", optarg, 0, true, INFINITY, &no.ttl); break;
        case 's':
            rc = cli_parse_double(prog, "--stale-ttl", optarg, 0, false, INFINITY,
                                  &no.stale_ttl);
            no.stale_ttl = no.stale_ttl == 0 ? -1 : no.stale_ttl; /* the API's "never" */
            break;
        case 'n':
            rc = cli_parse_double(prog, "--negative-ttl", optarg, 0, true, INFINITY,
                                  &no.negative_ttl);
            break;
        case 'j':
            rc = cli_parse_double(prog, "--jitter", optarg, 0, false, 1, &no.jitter);
            no.jitter = no.jitter == 0 ? -1 : no.jitter; /* the API's "none" */
            break;
        case 'l':
            rc = cli_parse_double(prog, "--lease-time", optarg, 0, true, INFINITY,
                                  &no.lease_time);
            break;
        case 'm':
            rc = cli_parse_u64(prog, "--max-computing", optarg, 1, UINT32_MAX, &u);
            no.max_computing = (uint32_t)u;
            break;
        case 'N':
            rc = cli_parse_u64(prog, "--negative-max", optarg, 1, UINT64_MAX, &no.negative_max);
            break;
        case 'h':
            printf("usage: embcache results create NS [--shared] [--remote] "
                   "[--bind MODEL/VERSION] [--ttl S]\n"
                   "         [--stale-ttl S] [--negative-ttl S] [--jitter F] [--lease-time S]\n"
                   "         [--max-computing N] [--negative-max N] [--configure]\n"
                   "Create namespace NS of cached results, owned by your uid and open to it\n"
                   "alone unless --shared (every client of the daemon may then read and\n"
                   "write it). --remote shares it across hosts through the daemon's remote\n"
                   "tier (embcached --remote): a result computed on one host is a hit on\n"
                   "the others, and a key missed on several at once is computed once.\n"
                   "--bind ties it to a model version or alias: when the alias\n"
                   "moves or the version is retired its results are dropped. --ttl: seconds\n"
                   "a result is fresh (300); --stale-ttl: seconds past that it may still be\n"
                   "served stale (60; 0: never); --negative-ttl: seconds a \"no result\" is\n"
                   "kept (30); --jitter: each TTL spread by +- this fraction (0.1; 0: none);\n"
                   "--lease-time: seconds a computation may take before a waiter takes over\n"
                   "(30); --max-computing: computations at once (64); --negative-max: most\n"
                   "\"no result\" entries kept (65536).\n"
                   "--configure changes the given options of an existing NS (its owner or an\n"
                   "administrator) and keeps the others. Exit status: 6 when NS exists\n"
                   "(without --configure), 4 when it does not (with --configure) or the\n"
                   "model of --bind is unknown, 2 a bad name or option.\n");
            return EXIT_OK;
        default: return EXIT_USAGE;
        }
        if (rc)
            return EXIT_USAGE;
    }
    if (argc - optind != 1)
        return usage_err("needs NS");
    ns = argv[optind];
    if ((ret = check_ns(ns)))
        return ret;
    if (configure && (shared || remote))
        return usage_err("--shared and --remote are chosen at creation; they cannot be "
                         "configured");
    if ((ret = connect_c(&c)))
        return ret;
    if (configure) {
        rc = find_ns(c, ns, &cur);
        if (rc) {
            ret = rfail(rc, NULL);
            goto out;
        }
        if (!cur.found) {
            fprintf(stderr, "%s: namespace '%s' does not exist or is not yours to see (create "
                            "it without --configure)\n", prog, ns);
            ret = EXIT_NOTFOUND;
            goto out;
        }
        merge_current(&no, &cur.info);
        no.flags = EC_NS_CONFIGURE;
    } else {
        zero_unset(&no);
        /* EXCL: a namespace that exists is not opened as it is, with
         * these options silently ignored. */
        no.flags = EC_NS_CREATE | EC_NS_EXCL | (shared ? EC_NS_SHARED : 0) |
                   (remote ? EC_NS_REMOTE : 0);
    }
    rc = ec_results_open(c, ns, &no, &r);
    if (rc == EC_EEXIST) {
        fprintf(stderr, "%s: namespace '%s' already exists (--configure changes its options; "
                        "'embcache results drop %s' deletes it)\n", prog, ns, ns);
        ret = EXIT_EXISTS;
        goto out;
    }
    if (rc) {
        const char *hint = NULL;
        if (rc == EC_ENOENT && no.bind_model)
            hint = "'embcache ls' lists the models, versions and aliases to --bind to";
        else if (rc == EC_EPERM && configure)
            hint = "configuring a namespace is for its owner and administrators";
        else if (rc == EC_ENOSPC)
            hint = "drop a namespace that is no longer used ('embcache results ls')";
        ret = rfail(rc, hint);
        goto out;
    }
    ret = EXIT_OK;
    if (find_ns(c, ns, &cur) == 0 && cur.found)
        opts_desc(&cur.info, desc, sizeof(desc));
    else
        snprintf(desc, sizeof(desc), "%s", shared ? "shared" : "private");
    printf("%s namespace '%s': %s\n", configure ? "configured" : "created", ns, desc);
out:
    ec_results_close(r);
    ec_client_close(c);
    return ret;
}

/* ------------------------------------------------------------------ */
/* `embcache stats`: one line (or JSON object) per namespace           */

struct stats_ctx {
    bool json;
    unsigned n;
};

static int stats_cb(const ec_ns_info *ns, void *arg)
{
    struct stats_ctx *x = arg;

    if (x->json) {
        printf("%s\n    {\"name\": ", x->n ? "," : "");
        cli_json_str(ns->name);
        printf(", \"items\": %" PRIu64 ", \"negative_items\": %" PRIu64 ", \"bytes\": %" PRIu64
               ", \"hits\": %" PRIu64 ", \"misses\": %" PRIu64 ", \"negative_hits\": %" PRIu64
               ", \"stale_served\": %" PRIu64 ", \"leases_granted\": %" PRIu64
               ", \"leases_waited\": %" PRIu64 ", \"leases_passed\": %" PRIu64
               ", \"early_refreshes\": %" PRIu64 ", \"evictions\": %" PRIu64 "}",
               ns->items, ns->negative_items, ns->bytes, ns->hits, ns->misses,
               ns->negative_hits, ns->stale_served, ns->leases_granted, ns->leases_waited,
               ns->leases_passed, ns->early_refreshes, ns->evictions);
    } else {
        if (x->n == 0)
            printf("\n%-40s %9s %12s %10s %10s %9s %9s %9s %9s %9s %9s %9s\n",
                   "namespace", "items", "bytes", "hits", "misses", "neg_hits", "stale",
                   "granted", "waited", "passed", "early", "evicted");
        printf("%-40s %9" PRIu64 " %12" PRIu64 " %10" PRIu64 " %10" PRIu64 " %9" PRIu64
               " %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %9" PRIu64
               "\n",
               ns->name, ns->items, ns->bytes, ns->hits, ns->misses, ns->negative_hits,
               ns->stale_served, ns->leases_granted, ns->leases_waited, ns->leases_passed,
               ns->early_refreshes, ns->evictions);
    }
    x->n++;
    return 0;
}

/* The namespace section of `embcache stats`: in JSON, `,"namespaces": [...]`
 * inside the open object; in text, a blank line, a header and a line per
 * namespace, printed only when there is one. A daemon that does not know
 * namespaces (EC_EPROTO: an older release) leaves the section out. */
int cli_results_stats(ec_client *c, bool json)
{
    struct stats_ctx x = {.json = json};
    int rc;

    if (json)
        printf(",\n  \"namespaces\": [");
    rc = ec_results_list(c, stats_cb, &x);
    if (json)
        printf("%s]", x.n ? "\n  " : "");
    if (rc == EC_EPROTO && x.n == 0)
        return 0;
    return rc;
}

/* ------------------------------------------------------------------ */

static void results_usage(FILE *f)
{
    fprintf(f,
            "usage: embcache results COMMAND [ARG]...\n"
            "Namespaces of cached results (include/embcache_results.h).\n"
            "\n"
            "  ls [--json]                              list namespaces and their counts\n"
            "  get NS KEY [--hex | --out FILE] [--stale] [--key-hex]  print a result\n"
            "  put NS KEY (--value STR | --file FILE | --negative) [--ttl S]  store one\n"
            "  purge NS [KEY]                           drop one result, or all of NS\n"
            "  create NS [--shared] [--remote] [--bind MODEL/VERSION] [--ttl S] [--stale-ttl S]\n"
            "         [--negative-ttl S] [--jitter F] [--lease-time S]\n"
            "         [--max-computing N] [--negative-max N] [--configure]\n"
            "  drop NS                                  delete a namespace and its results\n"
            "\n"
            "Each takes --help. Exit status as embcache's: 0 success, 2 bad usage or name,\n"
            "3 daemon not reachable, 4 not found (namespace, key, file, bound model),\n"
            "6 already exists, 1 other failures.\n");
}

int cli_results_main(int argc, char **argv, const char *socket_path)
{
    static const struct cli_cmd cmds[] = {
        {"ls", cmd_ls},       {"get", cmd_get},         {"put", cmd_put},
        {"purge", cmd_purge}, {"create", cmd_create},   {"drop", cmd_drop},
    };

    rsock = socket_path;
    snprintf(prog, sizeof(prog), "embcache results");
    if (argc < 2) {
        fprintf(stderr, "embcache results: missing command (ls, get, put, purge, create, "
                        "drop); try 'embcache results --help'\n");
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        results_usage(stdout);
        return EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        if (strcmp(argv[1], cmds[i].name))
            continue;
        snprintf(prog, sizeof(prog), "embcache results %s", cmds[i].name);
        argv[1] = prog; /* getopt's own messages name the subcommand */
        optind = 0;     /* as tools/embcache.c's main: options may follow arguments */
        return cmds[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "embcache results: unknown command '%s' (commands: ls, get, put, purge, "
                    "create, drop); try 'embcache results --help'\n", argv[1]);
    return EXIT_USAGE;
}
