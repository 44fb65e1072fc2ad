/*
 * daemon_config.h - embcached's options: one table for the command line
 * and the configuration file, the file's parser, `embcached --check`, and
 * the re-reading of both on SIGHUP.
 *
 * The file (--config FILE; else $EMBCACHE_CONFIG, where set and empty means
 * none; else /etc/embcache/embcached.conf when it exists) has one
 * `key = value` a line, the keys the long options without "--"; `#` starts
 * a comment (at the start of a line, or after white space); options without
 * an argument take true/false/yes/no/1/0; allow-uid and admin-uid may
 * appear on several lines; log-level replaces -v/-q. Each key is checked by
 * the same code, with the same message, as its flag. Precedence: built-in
 * default < file < command line (a repeatable option given on the command
 * line replaces the file's list; -v/-q move the level the file set).
 *
 * Called by tools/embcached.c at start-up (keeper process, before it forks)
 * and, through ec_server_config.reload, by the worker's server thread on
 * SIGHUP (core/server_reload.c). Not thread-safe: one caller at a time.
 */
#ifndef EC_CORE_DAEMON_CONFIG_H
#define EC_CORE_DAEMON_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "core/server.h"

#define EC_DCONF_DEFAULT_FILE "/etc/embcache/embcached.conf"
#define EC_DCONF_DEFAULT_SHM_SIZE (1ULL << 30)
#define EC_DCONF_MAX_ERRORS 16   /* messages kept per parse */
#define EC_DCONF_MSG 600         /* bytes per message */

/* What the command line asks for. */
enum ec_dconf_action { EC_DCONF_RUN, EC_DCONF_CHECK, EC_DCONF_HELP, EC_DCONF_VERSION };

/* One option of the command line, as given (val points into argv). */
typedef struct ec_dconf_arg {
    int opt;          /* index in the option table */
    const char *val;  /* NULL for options without an argument */
} ec_dconf_arg;

/* The command line, parsed once and kept for every reload. */
typedef struct ec_dconf_args {
    ec_dconf_arg *v;  /* malloc'ed; ec_dconf_args_free() */
    size_t n;
    enum ec_dconf_action action;
    char file[PATH_MAX];  /* the configuration file; "" none */
    bool file_named;      /* by --config or $EMBCACHE_CONFIG: it must exist. Else
                           * the default, read when (and whenever) it exists */
} ec_dconf_args;

/* Errors of one parse, each "FILE:LINE: key 'K': ..." or "--K 'V' ...". */
typedef struct ec_dconf_errs {
    char msg[EC_DCONF_MAX_ERRORS][EC_DCONF_MSG];
    int n;         /* messages kept */
    int total;     /* errors found (more may have been found than kept) */
    int cmdline;   /* of them, in values on the command line (bad usage) */
} ec_dconf_errs;

/* Options in the table (static_assert'ed in daemon_config.c). */
#define EC_DCONF_NOPTS 38

/* A configuration: the server's, plus what only embcached itself uses. */
typedef struct ec_dconf {
    ec_server_config srv;     /* data_dir and socket_path NULL here: see below */
    char data_dir[PATH_MAX];  /* as configured; "": $EMBCACHE_DATA_DIR, else
                               * ./embcache-data */
    char socket[108];         /* as configured; "": ec_default_socket() */
    int log_level;            /* enum ec_log_level */
    bool no_keeper;
    char file[PATH_MAX];      /* the configuration file read; "" none */
    unsigned keys;            /* keys the file set */
    int from[EC_DCONF_NOPTS]; /* per option: 0 default, > 0 the file's line (the
                               * last one), -1 the command line */
} ec_dconf;

/* Parse argv (kept: values point into it) into *a. Prints to err and
 * returns 2 for bad usage (an unknown option, a stray argument); else 0
 * with a->action set. Option values are checked by ec_dconf_build(). */
int ec_dconf_parse_args(int argc, char **argv, ec_dconf_args *a, FILE *err);
void ec_dconf_args_free(ec_dconf_args *a);

/* Defaults, then the file (a->file when it exists or is named), then the
 * command line, into *out. Returns 0, or -1 with every error found in *errs (the file's
 * errors first; a file that cannot be read, or is writable by others than
 * its owner and root, is one). On error *out is partly filled. */
int ec_dconf_build(const ec_dconf_args *a, ec_dconf *out, ec_dconf_errs *errs);

/* buf: "key = value (line N | command line), ..." for every option not at
 * its default. */
void ec_dconf_describe(const ec_dconf *c, char *buf, size_t cap);

/* The usage text of embcached, from the table. */
void ec_dconf_usage(FILE *f);

/* The state a running daemon keeps for ec_dconf_reload: the command line
 * and the configuration in effect. */
typedef struct ec_dconf_ctx {
    ec_dconf_args args;
    ec_dconf live;
} ec_dconf_ctx;

/* ec_server_config.reload (arg: an ec_dconf_ctx): read the file and the
 * command line again. An invalid one is logged (each error with its line
 * and key) and changes nothing: returns EC_EINVAL. Else the options that
 * may change at run time take their new values (the log level at once,
 * the others through *next), each changed option that cannot is logged
 * ("X changed in FILE but cannot change at run time; restart embcached to
 * apply") and keeps its value, one summary line says what changed, and it
 * returns 0. *next: *cur with the run-time fields replaced; summary (cap
 * bytes, may be NULL): that line. A refusal also sets the thread's error
 * to the first error and what to do. */
int ec_dconf_reload(void *ctx, const ec_server_config *cur, ec_server_config *next,
                    char *summary, size_t cap);

/* Is path a directory of ours that nobody else may write (a data
 * directory, sub: one of its subdirectories, judged by lstat)? 0 yes; 1 it
 * does not exist; -1 no, with why (naming the fix) in why. */
int ec_dconf_dir_is_ours(const char *path, bool sub, char *why, size_t cap);

/* The data directory's subdirectories the daemon opens files in. */
extern const char *const ec_dconf_subdirs[2];

/* `embcached --check`: build the configuration, check the environment,
 * print one line per check ("ok", "warn" or "FAIL", what, what to do) to
 * out. Returns the exit status: 0 no FAIL, 1 a FAIL. Creates nothing. */
int ec_dconf_check(const ec_dconf_args *a, FILE *out);

#endif
