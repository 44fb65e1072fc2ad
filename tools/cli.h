/*
 * cli.h - what the files of the embcache command-line tool share: its exit
 * codes and the mapping of EC_E* codes to them, the one-line failure
 * message, the option loop of commands that take only --json and --help,
 * number parsing, output helpers (JSON strings, human sizes), the type of a
 * subcommand table, and the entry points of the subcommand families that
 * live in files of their own.
 *
 * Implemented by tools/cli_util.c; called by tools/embcache.c (main and the
 * model commands) and tools/cli_results.c (`embcache results`). One
 * process, one thread: the tool's. Nothing here is part of libembcache.
 */
#ifndef EC_TOOLS_CLI_H
#define EC_TOOLS_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "embcache.h"

/* The tool's exit status (tools/embcache.c's usage() documents them). */
enum {
    EXIT_OK = 0,
    EXIT_FAIL = 1,
    EXIT_USAGE = 2,
    EXIT_NODAEMON = 3,
    EXIT_NOTFOUND = 4,
    EXIT_BADINPUT = 5,
    EXIT_EXISTS = 6,
    EXIT_RANGE = 7,
    EXIT_INTEGRITY = 8,
};

/* A subcommand: its name and the function that runs it on its own argv
 * (argv[0] the name to print in messages). */
struct cli_cmd {
    const char *name;
    int (*fn)(int argc, char **argv);
};

/* The exit status for an EC_E* code (0: EXIT_OK). */
int cli_exit_for(int rc);

/* A failure, as one line on standard error: "PROG: MESSAGE" with the
 * library's last error message (else ec_strerror(rc)), then "; HINT" when
 * hint is not NULL. Returns cli_exit_for(rc). */
int cli_fail(const char *prog, int rc, const char *hint);

/* The option loop of a command whose only options are --json (when json is
 * not NULL: -j, sets *json) and --help (-h: prints help to standard
 * output). Runs getopt_long from optind over argv. Returns -1 when the
 * command goes on with its arguments at optind; else the exit status to
 * return: EXIT_OK after --help, EXIT_USAGE for another option (getopt has
 * said which on standard error). */
int cli_simple_opts(int argc, char **argv, const char *help, bool *json);

/* A signed decimal integer, the whole of s. 0, or -1 (nothing printed). */
int cli_parse_i64(const char *s, int64_t *out);

/* Option opt's value s as an unsigned decimal integer in [min, max]: 0,
 * or -1 after a line on standard error ("PROG: OPT 'S' must be ..."). */
int cli_parse_u64(const char *prog, const char *opt, const char *s, uint64_t min,
                  uint64_t max, uint64_t *out);

/* Option opt's value s as a finite number >= lo (> lo when lo_open) and
 * < hi (hi may be INFINITY): 0, or -1 after a line on standard error. */
int cli_parse_double(const char *prog, const char *opt, const char *s, double lo,
                     bool lo_open, double hi, double *out);

/* b bytes for people: "512 B", "1.5 KiB", ... "2.0 TiB", into out. */
void cli_human_bytes(uint64_t b, char *out, size_t len);

/* s as a JSON string on standard output, quotes included (NULL: ""). */
void cli_json_str(const char *s);

/* tools/cli_results.c: `embcache results ...` (argv from "results" on,
 * socket_path the --socket given, or NULL), and the namespace section of
 * `embcache stats` on an open client. */
int cli_results_main(int argc, char **argv, const char *socket_path);
int cli_results_stats(ec_client *c, bool json);
/* tools/cli_search.c: `embcache search`, `embcache index build|info`. */
int cli_search_main(int argc, char **argv, const char *socket_path);
int cli_index_main(int argc, char **argv, const char *socket_path);
/* One line (after indent) on how stale a dynamic table's index is: `index
 * info` and the dynamic tables' section of `embcache stats`. */
void cli_index_staleness_line(const ec_index_staleness *sn, const char *indent);

/* tools/cli_dynamic.c: `embcache dynamic|put|del|update|snapshot` (cmd the
 * command's name, argv from it on), and the dynamic tables' section of
 * `embcache stats`. */
int cli_dynamic_main(const char *cmd, int argc, char **argv, const char *socket_path);
int cli_dynamic_stats(ec_client *c, bool json);

/* tools/cli_top.c: `embcache top` (argv from "top" on), a live view of the
 * daemon's statistics. */
int cli_top_main(int argc, char **argv, const char *socket_path);

/* tools/cli_remote.c: `embcache publish|pull|unpublish MODEL VERSION
 * [--cluster URL]` (cmd "publish", "pull" or "unpublish", argv from it on). */
int cli_remote_main(const char *cmd, int argc, char **argv, const char *socket_path);

/* tools/cli_recover.c: `embcache recover` (argv from "recover" on): the
 * catalog rebuilt from the partition files, without a daemon. */
int cli_recover_main(int argc, char **argv);

/* tools/cli_daemon.c: `embcache reload [--config FILE]` (argv from "reload"
 * on; socket_path: --socket, or NULL), and embcached's configuration file
 * read as embcached reads it into *d (errors on stderr, each prefixed with
 * prog): EXIT_OK, EXIT_USAGE (invalid) or EXIT_FAIL. */
struct ec_dconf;
int cli_reload_main(int argc, char **argv, const char *socket_path);
int cli_daemon_config(const char *prog, const char *file, struct ec_dconf *d);

#endif /* EC_TOOLS_CLI_H */
