/*
 * cli_util.c - the helpers of the embcache command-line tool that more than
 * one of its files uses (declared in tools/cli.h): exit codes for EC_E*
 * codes, the one-line failure message, the option loop of --json/--help
 * commands, number parsing, and output helpers.
 *
 * Called by tools/embcache.c and tools/cli_results.c, in the tool's one
 * process and thread. Writes only to standard output and standard error.
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* The codes carry the meaning, set where the failure is found, not here:
 * for `import`, the client library says EC_ENOENT for an input file that
 * does not exist, and the client and the daemon's parsers and importer say
 * EC_EFORMAT or EC_EDTYPE for every input file that exists but cannot be
 * imported (unreadable, not a regular file, malformed, over a limit, a bad
 * or duplicate tensor name), so that a script tells "the file is not
 * there" (4) from "the file is bad" (5) from a failure of the system (1:
 * EC_EIO, EC_ENOSPC, ...). */
int cli_exit_for(int rc)
{
    switch (rc) {
    case 0: return EXIT_OK;
    case EC_EINVAL: return EXIT_USAGE;
    case EC_ECONN:
    case EC_ESTALE: return EXIT_NODAEMON;
    case EC_ENOENT: return EXIT_NOTFOUND;
    case EC_EFORMAT:
    case EC_EDTYPE: return EXIT_BADINPUT;
    case EC_EEXIST: return EXIT_EXISTS;
    case EC_ERANGE: return EXIT_RANGE;
    case EC_ECHECKSUM:
    case EC_ECORRUPT: return EXIT_INTEGRITY;
    default: return EXIT_FAIL;
    }
}

int cli_fail(const char *prog, int rc, const char *hint)
{
    const char *msg = ec_last_error()[0] ? ec_last_error() : ec_strerror(rc);

    fprintf(stderr, "%s: %s%s%s\n", prog, msg, hint ? "; " : "", hint ? hint : "");
    return cli_exit_for(rc);
}

int cli_simple_opts(int argc, char **argv, const char *help, bool *json)
{
    /* Without json, the table starts at --help: --json is unknown. */
    static const struct option o[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;

    while ((ch = getopt_long(argc, argv, json ? "jh" : "h", json ? o : o + 1, NULL)) != -1) {
        switch (ch) {
        case 'j': *json = true; break;
        case 'h': fputs(help, stdout); return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    return -1;
}

/* ------------------------------------------------------------------ */
/* Numbers                                                             */

int cli_parse_i64(const char *s, int64_t *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

int cli_parse_u64(const char *prog, const char *opt, const char *s, uint64_t min,
                  uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
        fprintf(stderr, "%s: %s '%s' must be an integer from %" PRIu64 " to %" PRIu64 "\n",
                prog, opt, s, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_double(const char *prog, const char *opt, const char *s, double lo,
                     bool lo_open, double hi, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || (lo_open && v == lo) ||
        v >= hi) {
        if (isfinite(hi))
            fprintf(stderr, "%s: %s '%s' must be a number from %g to below %g\n", prog, opt, s,
                    lo, hi);
        else
            fprintf(stderr, "%s: %s '%s' must be a number %s %g\n", prog, opt, s,
                    lo_open ? ">" : ">=", lo);
        return -1;
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Output                                                              */

void cli_human_bytes(uint64_t b, char *out, size_t len)
{
    static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int i = 0;

    while (v >= 1024 && i < 4) {
        v /= 1024;
        i++;
    }
    if (i)
        snprintf(out, len, "%.1f %s", v, u[i]);
    else
        snprintf(out, len, "%.0f %s", v, u[i]);
}

/* Control characters and DEL as \u escapes (the model, alias and tensor
 * names `embcache ls` prints are validated by the catalog and hold neither:
 * escaping DEL changes nothing there). */
void cli_json_str(const char *s)
{
    putchar('"');
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}
