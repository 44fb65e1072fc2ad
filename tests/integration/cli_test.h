/*
 * cli_test.h - what the end-to-end tests of the command-line tools share
 * (test_cli.c, test_cli_results.c): the group's real embcached in a
 * temporary directory under /tmp (CE), runs of the real binaries
 * (fork+exec through ect_run) with their exit code, standard output and
 * standard error, the checks every CLI test makes of a run, and a small
 * strict JSON parser (RFC 8259) for what --json prints.
 *
 * The test process is the only thread; failures fail the running cmocka
 * test (fail_msg, assert_*).
 */
#ifndef EC_TESTS_CLI_TEST_H
#define EC_TESTS_CLI_TEST_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "testutil.h"

/* The group's daemon: its temporary directory /tmp/PREFIX-XXXXXX (not
 * $TMPDIR: the socket path must stay well under 108 bytes), the data
 * directory DIR/data and the socket DIR/s. */
struct cli_env {
    char *dir;
    char *data_dir;
    char *sock;
    pid_t daemon; /* 0 once stopped */
};
extern struct cli_env CE;

/* Make CE's directory and start embcached --quiet on it; fails the test
 * when either fails. */
void cli_env_start(const char *prefix);
/* Stop the daemon (when CE.daemon > 0), remove the directory, free CE's
 * strings. */
void cli_env_stop(void);

/* One run of a program: exit code (as ect_run), what it printed. */
typedef struct run_res {
    int rc;
    char *out;
    size_t out_len;
    char *err;
} run_res;

void res_free(run_res *r);

/* Run argv (NULL-terminated, argv[0] the program) into r. */
void run_argv(run_res *r, const char *const *argv);

/* Run "embcache [--socket SOCK] ARGS..." (NULL-terminated) into r. sock
 * NULL: no --socket option. */
void run_cliv(run_res *r, const char *sock, const char *const *args);

/* embcache ARGS... against CE's daemon, another socket, or no --socket. */
#define CLI(r, ...) run_cliv((r), CE.sock, (const char *const[]){__VA_ARGS__, NULL})
#define CLI_SOCK(r, s, ...) run_cliv((r), (s), (const char *const[]){__VA_ARGS__, NULL})
#define CLI_NOSOCK(r, ...) run_cliv((r), NULL, (const char *const[]){__VA_ARGS__, NULL})

/* A failure: exit code `code`, exactly one non-empty line on stderr. */
void check_fail(const run_res *r, int code, const char *what);
/* check_fail, and nothing at all on stdout. */
void check_fail_quiet(const run_res *r, int code, const char *what);
/* A success: exit 0, nothing on stderr. */
void check_ok(const run_res *r, const char *what);
/* needle is somewhere in hay. */
void check_contains(const char *hay, const char *needle, const char *what);

/* ------------------------------------------------------------------ */
/* JSON                                                                */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jval {
    jtype t;
    bool b;
    double num;
    char *str;           /* J_STR */
    size_t n;            /* J_ARR, J_OBJ: elements */
    struct jval *items;  /* J_ARR, J_OBJ */
    char **keys;         /* J_OBJ */
} jval;

/* Parse all of s (one value, white space around it): the tree (jfree it),
 * or NULL and *why. */
jval *jparse_try(const char *s, const char **why);
/* Parse all of s, or fail the test. */
jval *jparse(const char *s);
void jfree(jval *v);

/* Member `key` of object o (o must be an object), or NULL. */
jval *jget(const jval *o, const char *key);
/* Member `key` of object o: a number, a string; else the test fails. */
double jnum(const jval *o, const char *key);
const char *jstr(const jval *o, const char *key);
/* The element of array a whose "name" is name, or NULL. */
const jval *jnamed(const jval *a, const char *name);

#endif /* EC_TESTS_CLI_TEST_H */
