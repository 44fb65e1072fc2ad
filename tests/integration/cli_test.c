/*
 * cli_test.c - the helpers of the command-line tools' end-to-end tests
 * (declared in cli_test.h): the group's daemon, runs of the real binaries,
 * the checks of a run's exit code and output, and a strict JSON parser.
 *
 * Linked into test_cli and test_cli_results (tests/CMakeLists.txt, the
 * ec_clitest library). Runs in the test process, its only thread.
 */
#include "cli_test.h"

#include <ctype.h>
#include <errno.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cli_env CE;

void cli_env_start(const char *prefix)
{
    if (asprintf(&CE.dir, "/tmp/%s-XXXXXX", prefix) < 0 || !mkdtemp(CE.dir))
        fail_msg("mkdtemp: %s", strerror(errno));
    if (asprintf(&CE.data_dir, "%s/data", CE.dir) < 0 || asprintf(&CE.sock, "%s/s", CE.dir) < 0)
        fail_msg("asprintf");
    CE.daemon = ect_daemon_start(CE.data_dir, CE.sock, (const char *const[]){"--quiet", NULL});
}

void cli_env_stop(void)
{
    if (CE.daemon > 0)
        ect_daemon_stop(CE.daemon);
    CE.daemon = 0;
    ect_rmtree(CE.dir);
    free(CE.dir);
    free(CE.data_dir);
    free(CE.sock);
    memset(&CE, 0, sizeof(CE));
}

/* ------------------------------------------------------------------ */
/* Runs and their checks                                               */

void res_free(run_res *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof(*r));
}

void run_argv(run_res *r, const char *const *argv)
{
    memset(r, 0, sizeof(*r));
    r->rc = ect_run(argv, &r->out, &r->out_len, &r->err);
}

void run_cliv(run_res *r, const char *sock, const char *const *args)
{
    const char *argv[64];
    int n = 0;

    argv[n++] = EC_TEST_CLI;
    if (sock) {
        argv[n++] = "--socket";
        argv[n++] = sock;
    }
    for (int i = 0; args[i]; i++) {
        assert_true(n < 63);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    run_argv(r, argv);
}

static void check_fail_as(const run_res *r, int code, bool quiet, const char *what)
{
    size_t len = strlen(r->err);

    if (r->rc != code)
        fail_msg("%s: exit %d, expected %d; stdout '%s' stderr '%s'", what, r->rc, code,
                 r->out, r->err);
    if (quiet && r->out_len)
        fail_msg("%s: failed but printed '%s' on stdout", what, r->out);
    if (len < 2 || r->err[len - 1] != '\n' || memchr(r->err, '\n', len - 1))
        fail_msg("%s: stderr is not exactly one line: '%s'", what, r->err);
}

void check_fail(const run_res *r, int code, const char *what)
{
    check_fail_as(r, code, false, what);
}

void check_fail_quiet(const run_res *r, int code, const char *what)
{
    check_fail_as(r, code, true, what);
}

void check_ok(const run_res *r, const char *what)
{
    if (r->rc != 0 || r->err[0])
        fail_msg("%s: exit %d, expected 0; stdout '%.500s' stderr '%s'", what, r->rc, r->out,
                 r->err);
}

void check_contains(const char *hay, const char *needle, const char *what)
{
    if (!strstr(hay, needle))
        fail_msg("%s: '%s' not found in '%.2000s'", what, needle, hay);
}

/* ------------------------------------------------------------------ */
/* A small strict JSON parser (RFC 8259), enough to check the output    */

/* A parse: where it is, and where a syntax error jumps to (with what it
 * had allocated but not yet linked into the tree). */
typedef struct jparser {
    const char *s, *p;
    jmp_buf fail;
    const char *why;
    char *pending;
} jparser;

static void jfail(jparser *j, const char *why)
{
    j->why = why;
    longjmp(j->fail, 1);
}

static void jws(jparser *j)
{
    while (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')
        j->p++;
}

static char *jstring(jparser *j)
{
    size_t cap = 16, n = 0;
    char *out;

    if (*j->p != '"')
        jfail(j, "expected a string");
    out = j->pending = malloc(cap);
    assert_non_null(out);
    j->p++;
    for (;;) {
        unsigned char ch = (unsigned char)*j->p++;
        if (n + 2 > cap) {
            out = j->pending = realloc(out, cap *= 2);
            assert_non_null(out);
        }
        if (ch == '"')
            break;
        if (ch < 0x20)
            jfail(j, "an unescaped control character (or the end) in a string");
        if (ch == '\\') {
            ch = (unsigned char)*j->p++;
            switch (ch) {
            case '"': case '\\': case '/': break;
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            case 'u':
                for (int i = 0; i < 4; i++)
                    if (!isxdigit((unsigned char)j->p[i]))
                        jfail(j, "a bad \\u escape");
                ch = (unsigned char)strtoul((char[]){j->p[0], j->p[1], j->p[2], j->p[3], 0},
                                            NULL, 16);
                j->p += 4;
                break;
            default: jfail(j, "a bad escape");
            }
        }
        out[n++] = (char)ch;
    }
    out[n] = '\0';
    j->pending = NULL;
    return out;
}

static void jvalue(jparser *j, jval *v);

static void jnumber(jparser *j, jval *v)
{
    const char *q = j->p;

    if (*q == '-')
        q++;
    if (*q == '0')
        q++;
    else if (*q >= '1' && *q <= '9')
        while (isdigit((unsigned char)*q))
            q++;
    else
        jfail(j, "expected a value");
    if (*q == '.') {
        if (!isdigit((unsigned char)*++q))
            jfail(j, "a number without digits after '.'");
        while (isdigit((unsigned char)*q))
            q++;
    }
    if (*q == 'e' || *q == 'E') {
        q++;
        if (*q == '+' || *q == '-')
            q++;
        if (!isdigit((unsigned char)*q))
            jfail(j, "a number without exponent digits");
        while (isdigit((unsigned char)*q))
            q++;
    }
    v->t = J_NUM;
    v->num = strtod(j->p, NULL);
    j->p = q;
}

/* Every element is counted (and zeroed) before it is parsed, so that the
 * tree can be freed whole wherever a syntax error stops it. */
static void jcontainer(jparser *j, jval *v, bool obj)
{
    char close = obj ? '}' : ']';

    v->t = obj ? J_OBJ : J_ARR;
    j->p++;
    jws(j);
    if (*j->p == close) {
        j->p++;
        return;
    }
    for (;;) {
        jval *item;
        v->items = realloc(v->items, (v->n + 1) * sizeof(*v->items));
        assert_non_null(v->items);
        item = &v->items[v->n];
        memset(item, 0, sizeof(*item));
        if (obj) {
            v->keys = realloc(v->keys, (v->n + 1) * sizeof(*v->keys));
            assert_non_null(v->keys);
            v->keys[v->n] = NULL;
        }
        v->n++;
        if (obj) {
            jws(j);
            v->keys[v->n - 1] = jstring(j);
            jws(j);
            if (*j->p++ != ':')
                jfail(j, "expected ':'");
        }
        jvalue(j, item);
        jws(j);
        if (*j->p == ',') {
            j->p++;
            continue;
        }
        if (*j->p++ != close)
            jfail(j, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        return;
    }
}

static void jvalue(jparser *j, jval *v)
{
    jws(j);
    switch (*j->p) {
    case '{': jcontainer(j, v, true); break;
    case '[': jcontainer(j, v, false); break;
    case '"': v->str = jstring(j); v->t = J_STR; break;
    case 't':
    case 'f':
    case 'n':
        if (!strncmp(j->p, "true", 4)) {
            v->t = J_BOOL, v->b = true, j->p += 4;
        } else if (!strncmp(j->p, "false", 5)) {
            v->t = J_BOOL, j->p += 5;
        } else if (!strncmp(j->p, "null", 4)) {
            v->t = J_NULL, j->p += 4;
        } else {
            jfail(j, "expected a value");
        }
        break;
    default: jnumber(j, v); break;
    }
}

static void jfree_in(jval *v)
{
    for (size_t i = 0; i < v->n; i++) {
        jfree_in(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
}

void jfree(jval *v)
{
    if (v) {
        jfree_in(v);
        free(v);
    }
}

jval *jparse_try(const char *s, const char **why)
{
    jparser j = {.s = s, .p = s};
    jval *volatile v = calloc(1, sizeof(jval));

    assert_non_null(v);
    if (setjmp(j.fail)) {
        free(j.pending);
        jfree(v);
        *why = j.why;
        return NULL;
    }
    jvalue(&j, v);
    jws(&j);
    if (*j.p)
        jfail(&j, "text after the value");
    return v;
}

jval *jparse(const char *s)
{
    const char *why = NULL;
    jval *v = jparse_try(s, &why);

    if (!v)
        fail_msg("not JSON (%s): '%.2000s'", why, s);
    return v;
}

jval *jget(const jval *o, const char *key)
{
    assert_int_equal(o->t, J_OBJ);
    for (size_t i = 0; i < o->n; i++)
        if (!strcmp(o->keys[i], key))
            return &o->items[i];
    return NULL;
}

double jnum(const jval *o, const char *key)
{
    const jval *v = jget(o, key);

    if (!v || v->t != J_NUM)
        fail_msg("JSON member '%s' is %s, not a number", key, v ? "another type" : "missing");
    return v->num;
}

const char *jstr(const jval *o, const char *key)
{
    const jval *v = jget(o, key);

    if (!v || v->t != J_STR)
        fail_msg("JSON member '%s' is %s, not a string", key, v ? "another type" : "missing");
    return v->str;
}

const jval *jnamed(const jval *a, const char *name)
{
    assert_int_equal(a->t, J_ARR);
    for (size_t i = 0; i < a->n; i++)
        if (!strcmp(jstr(&a->items[i], "name"), name))
            return &a->items[i];
    return NULL;
}
