/*
 * test_cli_results.c - end-to-end tests of `embcache results` (tools/
 * cli_results.c) and the namespace section of `embcache stats`, as scripts
 * use them: exit codes, what goes to standard output and what to standard
 * error (exactly one line on failure, nothing on success), and --json that
 * parses as JSON with the counts the puts and gets before it imply.
 *
 * One real embcached runs for the whole group, in a temporary directory
 * under /tmp with a short socket path (cli_test.c, shared with test_cli.c,
 * as are the checks of a run and the JSON parser); model "m" version 1
 * (alias "current") is imported for the namespaces bound to it. Every CLI
 * run is a fork+exec of the real binary (ect_run); each test works in
 * namespaces of its own. The test process itself is the only thread.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_test.h"
#include "testutil.h"

/* `embcache results ls --json`, parsed: an array. */
static jval *ls_json(void)
{
    run_res r;
    jval *v;

    CLI(&r, "results", "ls", "--json");
    check_ok(&r, "results ls --json");
    v = jparse(r.out);
    if (v->t != J_ARR)
        fail_msg("results ls --json is not an array: '%s'", r.out);
    res_free(&r);
    return v;
}

/* The parser itself: what it must refuse, so that passing means parsing. */
static void test_json_parser_refuses(void **state)
{
    static const char *const good[] = {"[]", " {\"a\": [1, -2.5e3, true, null, \"x\\n\"]} "};
    static const char *const bad[] = {"", "[", "[1,]", "{\"a\" 1}", "[01]", "\"a", "[1] x",
                                      "{a: 1}", "[nan]", "{\"a\": 1,}", "[\"\\x\"]", "[1.]"};
    const char *why;

    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        jfree(jparse(good[i]));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        jval *v = jparse_try(bad[i], &why);
        if (v)
            fail_msg("the test's JSON parser accepted '%s'", bad[i]);
    }
}

/* ------------------------------------------------------------------ */
/* Group setup: a daemon, model m version 1 with alias current          */

static int group_setup(void **state)
{
    char *npy;
    run_res r;

    (void)state;
    cli_env_start("ecr");
    if (asprintf(&npy, "%s/emb.npy", CE.dir) < 0)
        fail_msg("asprintf");
    assert_int_equal(ect_write_npy(npy, EC_DTYPE_F32, 2, (const uint64_t[]){64, 4}, 9), 0);
    CLI(&r, "import", "--model", "m", "--version", "1", npy);
    check_ok(&r, "import m 1");
    res_free(&r);
    CLI(&r, "import", "--model", "m", "--version", "2", npy);
    check_ok(&r, "import m 2");
    res_free(&r);
    CLI(&r, "alias", "m", "current", "1");
    check_ok(&r, "alias m current 1");
    res_free(&r);
    free(npy);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    cli_env_stop();
    return 0;
}

/* ------------------------------------------------------------------ */
/* --help and usage errors                                             */

static void test_help(void **state)
{
    static const char *const subs[] = {"ls", "get", "put", "purge", "create", "drop"};
    run_res r;

    (void)state;
    /* No daemon needed: a dead socket. */
    CLI_SOCK(&r, "/tmp/ecr-no-such.sock", "results", "--help");
    check_ok(&r, "results --help");
    check_contains(r.out, "usage: embcache results", "results --help");
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        char want[32];
        snprintf(want, sizeof(want), "\n  %s ", subs[i]);
        check_contains(r.out, want, "results --help lists the subcommands");
    }
    res_free(&r);
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        char want[64];
        CLI_SOCK(&r, "/tmp/ecr-no-such.sock", "results", subs[i], "--help");
        check_ok(&r, subs[i]);
        snprintf(want, sizeof(want), "usage: embcache results %s", subs[i]);
        check_contains(r.out, want, "results SUB --help");
        res_free(&r);
    }
    CLI_SOCK(&r, "/tmp/ecr-no-such.sock", "--help");
    check_ok(&r, "embcache --help");
    check_contains(r.out, "results", "embcache --help mentions results");
    res_free(&r);

    CLI(&r, "results");
    check_fail_quiet(&r, 2, "results without a command");
    check_contains(r.err, "missing command", "results without a command");
    res_free(&r);
    CLI(&r, "results", "frobnicate");
    check_fail_quiet(&r, 2, "results frobnicate");
    check_contains(r.err, "'frobnicate'", "unknown results command named");
    res_free(&r);
    CLI(&r, "results", "get", "onlyns");
    check_fail_quiet(&r, 2, "get without KEY");
    check_contains(r.err, "--help", "get without KEY says where help is");
    res_free(&r);
    CLI(&r, "results", "ls", "extra");
    check_fail_quiet(&r, 2, "ls with an argument");
    res_free(&r);
}

static void test_no_daemon(void **state)
{
    run_res r;

    (void)state;
    CLI_SOCK(&r, "/tmp/ecr-no-such.sock", "results", "ls");
    check_fail_quiet(&r, 3, "results ls without a daemon");
    check_contains(r.err, "/tmp/ecr-no-such.sock", "no-daemon message names the socket");
    res_free(&r);
    CLI_SOCK(&r, "/tmp/ecr-no-such.sock", "results", "get", "ns", "k");
    check_fail_quiet(&r, 3, "results get without a daemon");
    res_free(&r);
}

/* ------------------------------------------------------------------ */
/* create, --configure, bad names and options                          */

static void test_create(void **state)
{
    static const char long_name[] =
        "a234567890123456789012345678901234567890123456789012345678901234"; /* 64 */
    const jval *ns;
    jval *ls;
    run_res r;

    (void)state;
    CLI(&r, "results", "create", "cr.one", "--ttl", "120", "--stale-ttl", "30",
        "--max-computing", "5");
    check_ok(&r, "create cr.one");
    check_contains(r.out, "created namespace 'cr.one'", "create output");
    check_contains(r.out, "ttl 120 s", "create output shows the ttl");
    check_contains(r.out, "stale 30 s", "create output shows the stale time");
    check_contains(r.out, "private", "create output: private by default");
    res_free(&r);

    CLI(&r, "results", "create", "cr.one");
    check_fail_quiet(&r, 6, "create of an existing namespace");
    check_contains(r.err, "'cr.one'", "exists message names it");
    check_contains(r.err, "--configure", "exists message says what to do");
    res_free(&r);

    CLI(&r, "results", "create", "bad name!");
    check_fail_quiet(&r, 2, "create with a bad name");
    check_contains(r.err, "'bad name!'", "bad name message names it");
    check_contains(r.err, "letters", "bad name message says what a name may hold");
    res_free(&r);
    CLI(&r, "results", "create", long_name);
    check_fail_quiet(&r, 2, "create with a 64-byte name");
    check_contains(r.err, long_name, "long name message names it");
    res_free(&r);
    CLI(&r, "results", "put", "sp ace", "k", "--value", "v");
    check_fail_quiet(&r, 2, "put into a bad name");
    check_contains(r.err, "'sp ace'", "put bad name message names it");
    res_free(&r);

    CLI(&r, "results", "create", "cr.two", "--ttl", "abc");
    check_fail_quiet(&r, 2, "create --ttl abc");
    check_contains(r.err, "--ttl 'abc'", "bad --ttl named");
    res_free(&r);
    CLI(&r, "results", "create", "cr.two", "--ttl", "0");
    check_fail_quiet(&r, 2, "create --ttl 0");
    res_free(&r);
    CLI(&r, "results", "create", "cr.two", "--jitter", "1.5");
    check_fail_quiet(&r, 2, "create --jitter 1.5");
    check_contains(r.err, "--jitter", "bad --jitter named");
    res_free(&r);
    CLI(&r, "results", "create", "cr.two", "--max-computing", "0");
    check_fail_quiet(&r, 2, "create --max-computing 0");
    res_free(&r);
    /* None of those created it. */
    CLI(&r, "results", "get", "cr.two", "k");
    check_fail_quiet(&r, 4, "get from a namespace whose creation failed");
    res_free(&r);

    CLI(&r, "results", "create", "cr.nope", "--configure", "--ttl", "5");
    check_fail_quiet(&r, 4, "configure a namespace that does not exist");
    check_contains(r.err, "'cr.nope'", "configure message names it");
    res_free(&r);
    CLI(&r, "results", "create", "cr.one", "--configure", "--shared");
    check_fail_quiet(&r, 2, "configure --shared");
    res_free(&r);

    /* Configure one option: the others stay as they were. */
    CLI(&r, "results", "create", "cr.one", "--configure", "--ttl", "200");
    check_ok(&r, "configure cr.one --ttl 200");
    check_contains(r.out, "configured namespace 'cr.one'", "configure output");
    res_free(&r);
    CLI(&r, "results", "create", "cr.sh", "--shared", "--negative-ttl", "7", "--jitter", "0",
        "--lease-time", "9", "--negative-max", "11");
    check_ok(&r, "create cr.sh --shared");
    check_contains(r.out, "shared", "create --shared output");
    res_free(&r);

    ls = ls_json();
    ns = jnamed(ls, "cr.one");
    assert_non_null(ns);
    assert_true(jnum(ns, "ttl") == 200);
    assert_true(jnum(ns, "stale_ttl") == 30);
    assert_true(jnum(ns, "max_computing") == 5);
    assert_true(jnum(ns, "owner_uid") == (double)getuid());
    assert_int_equal(jget(ns, "shared")->t, J_BOOL);
    assert_false(jget(ns, "shared")->b);
    ns = jnamed(ls, "cr.sh");
    assert_non_null(ns);
    assert_true(jget(ns, "shared")->b);
    assert_true(jnum(ns, "negative_ttl") == 7);
    assert_true(jnum(ns, "jitter") == 0);
    assert_true(jnum(ns, "lease_time") == 9);
    assert_true(jnum(ns, "negative_max") == 11);
    assert_null(jnamed(ls, "cr.two"));
    jfree(ls);

    CLI(&r, "results", "ls");
    check_ok(&r, "results ls");
    check_contains(r.out, "NAMESPACE", "results ls header");
    {
        const char *line = strstr(r.out, "\ncr.sh ");
        assert_non_null(line);
        check_contains(line, "shared", "results ls says shared");
    }
    res_free(&r);
}

/* ------------------------------------------------------------------ */
/* put and get                                                         */

static void test_put_get(void **state)
{
    char *path, *data;
    size_t len;
    run_res r;

    (void)state;
    CLI(&r, "results", "create", "pg");
    check_ok(&r, "create pg");
    res_free(&r);

    CLI(&r, "results", "put", "pg", "k1", "--value", "hello");
    check_ok(&r, "put pg k1");
    check_contains(r.out, "stored 'k1'", "put output");
    check_contains(r.out, "5 byte(s)", "put output");
    res_free(&r);

    /* Not a terminal: the value's bytes and nothing else. */
    CLI(&r, "results", "get", "pg", "k1");
    check_ok(&r, "get pg k1");
    assert_int_equal(r.out_len, 5);
    assert_memory_equal(r.out, "hello", 5);
    res_free(&r);

    CLI(&r, "results", "get", "pg", "k1", "--hex");
    check_ok(&r, "get --hex");
    check_contains(r.out, "68 65 6c 6c 6f", "hex dump");
    check_contains(r.out, "|hello|", "hex dump text column");
    check_contains(r.out, "fresh", "state line");
    check_contains(r.out, "5 byte(s)", "state line size");
    res_free(&r);

    assert_true(asprintf(&path, "%s/out.bin", CE.dir) > 0);
    CLI(&r, "results", "get", "pg", "k1", "--out", path);
    check_ok(&r, "get --out");
    check_contains(r.out, "wrote 5 byte(s)", "get --out says what it wrote");
    res_free(&r);
    data = ect_read_file(path, &len);
    assert_non_null(data);
    assert_int_equal(len, 5);
    assert_memory_equal(data, "hello", 5);
    free(data);

    /* Not found: 4, one line naming the key and the namespace. */
    CLI(&r, "results", "get", "pg", "missing");
    check_fail_quiet(&r, 4, "get of a missing key");
    check_contains(r.err, "'missing'", "not-found message names the key");
    check_contains(r.err, "'pg'", "not-found message names the namespace");
    res_free(&r);
    CLI(&r, "results", "get", "nosuchns", "k1");
    check_fail_quiet(&r, 4, "get from a missing namespace");
    check_contains(r.err, "'nosuchns'", "missing namespace named");
    check_contains(r.err, "does not exist", "missing namespace message");
    res_free(&r);

    /* Keys in hex are bytes: not the same key as the hex text. */
    CLI(&r, "results", "put", "pg", "00ff0a", "--key-hex", "--value", "bin");
    check_ok(&r, "put --key-hex");
    check_contains(r.out, "0x00ff0a", "a binary key is shown in hex");
    res_free(&r);
    CLI(&r, "results", "get", "pg", "--key-hex", "00FF0A");
    check_ok(&r, "get --key-hex");
    assert_int_equal(r.out_len, 3);
    assert_memory_equal(r.out, "bin", 3);
    res_free(&r);
    CLI(&r, "results", "get", "pg", "00ff0a");
    check_fail_quiet(&r, 4, "hex text as a plain key");
    res_free(&r);
    CLI(&r, "results", "get", "pg", "0g", "--key-hex");
    check_fail_quiet(&r, 2, "--key-hex with a non-hex digit");
    check_contains(r.err, "'0g'", "bad hex key named");
    res_free(&r);
    CLI(&r, "results", "get", "pg", "abc", "--key-hex");
    check_fail_quiet(&r, 2, "--key-hex with an odd length");
    res_free(&r);

    /* A value from a file, replacing the first. */
    assert_int_equal(ect_write_file(path, "from a file\n", 12), 0);
    CLI(&r, "results", "put", "pg", "k1", "--file", path);
    check_ok(&r, "put --file");
    res_free(&r);
    CLI(&r, "results", "get", "pg", "k1");
    check_ok(&r, "get after put --file");
    assert_int_equal(r.out_len, 12);
    assert_memory_equal(r.out, "from a file\n", 12);
    res_free(&r);

    /* A value larger than get's first buffer (64 KiB), read back whole; one
     * larger than a result holds is refused with what the limit is. */
    {
        size_t big = 300 * 1024;
        char *img = malloc(big);
        assert_non_null(img);
        for (size_t i = 0; i < big; i++)
            img[i] = (char)(i * 131 + 7);
        assert_int_equal(ect_write_file(path, img, big), 0);
        CLI(&r, "results", "put", "pg", "big", "--file", path);
        check_ok(&r, "put a 300 KiB value");
        check_contains(r.out, "307200 byte(s)", "put of a 300 KiB value");
        res_free(&r);
        CLI(&r, "results", "get", "pg", "big");
        check_ok(&r, "get a 300 KiB value");
        assert_int_equal(r.out_len, big);
        assert_memory_equal(r.out, img, big);
        res_free(&r);
        free(img);
        img = calloc(1, 3u << 20);
        assert_non_null(img);
        assert_int_equal(ect_write_file(path, img, 3u << 20), 0);
        free(img);
        CLI(&r, "results", "put", "pg", "huge", "--file", path);
        check_fail_quiet(&r, 1, "put of a 3 MiB value");
        check_contains(r.err, "1 MiB", "too-big message says the limit");
        res_free(&r);
    }

    /* put's usage errors. */
    CLI(&r, "results", "put", "pg", "k2");
    check_fail_quiet(&r, 2, "put without a value");
    check_contains(r.err, "--value", "put without a value says which options");
    res_free(&r);
    CLI(&r, "results", "put", "pg", "k2", "--value", "a", "--negative");
    check_fail_quiet(&r, 2, "put with two values");
    res_free(&r);
    CLI(&r, "results", "put", "pg", "k2", "--file", "/tmp/ecr-no-such-file");
    check_fail_quiet(&r, 4, "put --file of a missing file");
    check_contains(r.err, "/tmp/ecr-no-such-file", "missing file named");
    res_free(&r);
    CLI(&r, "results", "put", "pg", "k2", "--value", "a", "--ttl", "-3");
    check_fail_quiet(&r, 2, "put --ttl -3");
    res_free(&r);
    CLI(&r, "results", "put", "nosuchns", "k2", "--value", "a");
    check_fail_quiet(&r, 4, "put into a missing namespace");
    check_contains(r.err, "'nosuchns'", "missing namespace named");
    res_free(&r);
    CLI(&r, "results", "get", "pg", "k2");
    check_fail_quiet(&r, 4, "none of the failed puts stored k2");
    res_free(&r);

    /* A cached "no result": found (0), empty, and said to be negative. */
    CLI(&r, "results", "put", "pg", "neg", "--negative");
    check_ok(&r, "put --negative");
    check_contains(r.out, "negative", "put --negative output");
    res_free(&r);
    CLI(&r, "results", "get", "pg", "neg");
    check_ok(&r, "get of a negative result");
    assert_int_equal(r.out_len, 0);
    res_free(&r);
    CLI(&r, "results", "get", "pg", "neg", "--hex");
    check_ok(&r, "get --hex of a negative result");
    check_contains(r.out, "negative", "negative shown");
    res_free(&r);

    /* A tensor (stored through the library: the CLI puts bytes): its dtype
     * and shape are shown. */
    {
        ec_client *c;
        ec_results *res;
        ec_result_value v = {.data = "0123456789abcdef", .len = 16, .flags = EC_RES_TENSOR,
                             .dtype = EC_DTYPE_F32, .ndim = 2, .shape = {2, 2}};
        assert_int_equal(ec_client_connect(CE.sock, &c), 0);
        assert_int_equal(ec_results_open(c, "pg", NULL, &res), 0);
        assert_int_equal(ec_results_put(res, "tens", 4, &v), 0);
        ec_results_close(res);
        ec_client_close(c);
    }
    CLI(&r, "results", "get", "pg", "tens", "--hex");
    check_ok(&r, "get a tensor");
    check_contains(r.out, "tensor f32 [2, 2]", "tensor dtype and shape");
    check_contains(r.out, "16 byte(s)", "tensor size");
    res_free(&r);
    free(path);
}

/* A result past its TTL: not found, unless --stale. */
static void test_stale(void **state)
{
    struct timespec t0, t;
    run_res r;

    (void)state;
    CLI(&r, "results", "create", "st", "--ttl", "60", "--stale-ttl", "60", "--jitter", "0");
    check_ok(&r, "create st");
    res_free(&r);
    CLI(&r, "results", "put", "st", "a", "--value", "old", "--ttl", "0.5");
    check_ok(&r, "put st a --ttl 0.5");
    res_free(&r);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        CLI(&r, "results", "get", "st", "a");
        if (r.rc == 4)
            break;
        check_ok(&r, "get st a while fresh");
        assert_memory_equal(r.out, "old", 3);
        res_free(&r);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > 10)
            fail_msg("a result put with --ttl 0.5 was still fresh after 10 s");
        usleep(100000);
    }
    check_fail_quiet(&r, 4, "get of a stale result without --stale");
    check_contains(r.err, "--stale", "the message says --stale reads it");
    res_free(&r);
    CLI(&r, "results", "get", "st", "a", "--stale");
    check_ok(&r, "get --stale");
    assert_int_equal(r.out_len, 3);
    assert_memory_equal(r.out, "old", 3);
    res_free(&r);
    CLI(&r, "results", "get", "st", "a", "--stale", "--hex");
    check_ok(&r, "get --stale --hex");
    check_contains(r.out, "stale", "state is stale");
    res_free(&r);
}

/* ------------------------------------------------------------------ */
/* Counts in ls --json and stats; purge; drop                          */

static void check_ls_fields(const jval *ns)
{
    static const char *const fields[] = {
        "name", "owner_uid", "flags", "shared", "bind_model", "bind_version", "bound_version",
        "generation", "ttl", "stale_ttl", "negative_ttl", "jitter", "lease_time",
        "max_computing", "negative_max", "items", "negative_items", "bytes", "hits", "misses",
        "negative_hits", "stale_served", "hit_ratio", "leases_granted", "leases_waited",
        "leases_passed", "early_refreshes", "computing", "computing_peak", "limited", "puts",
        "negative_puts", "evictions", "purged", "invalidations",
    };

    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (!jget(ns, fields[i]))
            fail_msg("results ls --json: field '%s' missing", fields[i]);
}

static void get_n(const char *ns, const char *key, int n, int code)
{
    run_res r;

    for (int i = 0; i < n; i++) {
        CLI(&r, "results", "get", ns, key);
        if (code)
            check_fail_quiet(&r, code, key);
        else
            check_ok(&r, key);
        res_free(&r);
    }
}

static void test_counts(void **state)
{
    const jval *ns, *arr;
    jval *v;
    run_res r;

    (void)state;
    CLI(&r, "results", "create", "cnt");
    check_ok(&r, "create cnt");
    res_free(&r);
    /* a twice: the second replaces the first (4 puts, 3 items). */
    CLI(&r, "results", "put", "cnt", "a", "--value", "first");
    check_ok(&r, "put a");
    res_free(&r);
    CLI(&r, "results", "put", "cnt", "a", "--value", "aaaa");
    check_ok(&r, "put a again");
    res_free(&r);
    CLI(&r, "results", "put", "cnt", "b", "--value", "bb");
    check_ok(&r, "put b");
    res_free(&r);
    CLI(&r, "results", "put", "cnt", "n", "--negative");
    check_ok(&r, "put n");
    res_free(&r);
    get_n("cnt", "a", 3, 0);
    get_n("cnt", "b", 1, 0);
    get_n("cnt", "zz", 2, 4);
    get_n("cnt", "n", 1, 0);

    v = ls_json();
    ns = jnamed(v, "cnt");
    assert_non_null(ns);
    check_ls_fields(ns);
    /* items: every entry stored, "no result" ones too. */
    assert_true(jnum(ns, "items") == 3);
    assert_true(jnum(ns, "negative_items") == 1);
    assert_true(jnum(ns, "bytes") >= 4 + 2);
    assert_true(jnum(ns, "hits") == 4);
    assert_true(jnum(ns, "misses") == 2);
    assert_true(jnum(ns, "negative_hits") == 1);
    assert_true(jnum(ns, "stale_served") == 0);
    assert_true(fabs(jnum(ns, "hit_ratio") - 4.0 / 6.0) < 1e-6);
    /* puts: every store, the "no result" ones too. */
    assert_true(jnum(ns, "puts") == 4);
    assert_true(jnum(ns, "negative_puts") == 1);
    assert_true(jnum(ns, "evictions") == 0);
    assert_string_equal(jstr(ns, "bind_model"), "");
    jfree(v);

    /* The human line: items, negative items and the hit ratio. */
    CLI(&r, "results", "ls");
    check_ok(&r, "results ls");
    {
        const char *line = strstr(r.out, "\ncnt ");
        char name[80], sharing[16], bind[80];
        unsigned long long owner, gen, items, neg;
        assert_non_null(line);
        assert_int_equal(sscanf(line + 1, "%79s %llu %15s %79s %llu %llu %llu", name, &owner,
                                sharing, bind, &gen, &items, &neg),
                         7);
        assert_string_equal(sharing, "private");
        assert_string_equal(bind, "-");
        assert_int_equal(items, 3);
        assert_int_equal(neg, 1);
        check_contains(line, " 0.667 ", "results ls hit ratio");
    }
    res_free(&r);

    /* embcache stats: a namespace table after the tensors. */
    CLI(&r, "stats");
    check_ok(&r, "stats");
    {
        const char *hdr = strstr(r.out, "\nnamespace "), *line;
        unsigned long long items, bytes, hits, misses, nh;
        char name[80];
        assert_non_null(hdr);
        line = strstr(hdr, "\ncnt ");
        assert_non_null(line);
        assert_int_equal(sscanf(line + 1, "%79s %llu %llu %llu %llu %llu", name, &items, &bytes,
                                &hits, &misses, &nh),
                         6);
        assert_int_equal(items, 3);
        assert_int_equal(hits, 4);
        assert_int_equal(misses, 2);
        assert_int_equal(nh, 1);
    }
    res_free(&r);
    CLI(&r, "stats", "--json");
    check_ok(&r, "stats --json");
    v = jparse(r.out);
    assert_int_equal(v->t, J_OBJ);
    arr = jget(v, "namespaces");
    assert_non_null(arr);
    ns = jnamed(arr, "cnt");
    assert_non_null(ns);
    assert_true(jnum(ns, "items") == 3);
    assert_true(jnum(ns, "hits") == 4);
    assert_true(jnum(ns, "misses") == 2);
    assert_true(jnum(ns, "negative_hits") == 1);
    assert_non_null(jget(ns, "leases_passed"));
    assert_non_null(jget(ns, "early_refreshes"));
    assert_non_null(jget(v, "tensors"));
    jfree(v);
    res_free(&r);

    /* purge one key, then the rest. */
    CLI(&r, "results", "purge", "cnt", "a");
    check_ok(&r, "purge cnt a");
    check_contains(r.out, ": 1 result(s) removed", "purge of one key");
    res_free(&r);
    get_n("cnt", "a", 1, 4);
    get_n("cnt", "b", 1, 0);
    CLI(&r, "results", "purge", "cnt");
    check_ok(&r, "purge cnt");
    check_contains(r.out, "purged namespace 'cnt': 2 result(s) removed", "purge of all");
    res_free(&r);
    get_n("cnt", "b", 1, 4);
    get_n("cnt", "n", 1, 4);
    v = ls_json();
    ns = jnamed(v, "cnt");
    assert_non_null(ns);
    assert_true(jnum(ns, "items") == 0);
    assert_true(jnum(ns, "negative_items") == 0);
    jfree(v);
    CLI(&r, "results", "purge", "nosuchns");
    check_fail_quiet(&r, 4, "purge of a missing namespace");
    check_contains(r.err, "'nosuchns'", "missing namespace named");
    res_free(&r);

    /* drop: gone from ls, gets say so, a second drop is not found. */
    CLI(&r, "results", "drop", "cnt");
    check_ok(&r, "drop cnt");
    check_contains(r.out, "dropped namespace 'cnt'", "drop output");
    res_free(&r);
    CLI(&r, "results", "get", "cnt", "b");
    check_fail_quiet(&r, 4, "get from a dropped namespace");
    check_contains(r.err, "does not exist", "dropped namespace message");
    res_free(&r);
    CLI(&r, "results", "drop", "cnt");
    check_fail_quiet(&r, 4, "drop twice");
    check_contains(r.err, "'cnt'", "drop twice names it");
    res_free(&r);
    v = ls_json();
    assert_null(jnamed(v, "cnt"));
    jfree(v);
}

/* ------------------------------------------------------------------ */
/* A namespace bound to an alias                                        */

static void test_bind(void **state)
{
    const jval *ns;
    double gen;
    jval *v;
    run_res r;

    (void)state;
    CLI(&r, "results", "create", "bnd", "--bind", "m/current");
    check_ok(&r, "create --bind m/current");
    check_contains(r.out, "bound to m/current (version 1)", "create --bind output");
    res_free(&r);
    CLI(&r, "results", "put", "bnd", "k", "--value", "v1");
    check_ok(&r, "put bnd k");
    res_free(&r);
    v = ls_json();
    ns = jnamed(v, "bnd");
    assert_non_null(ns);
    assert_string_equal(jstr(ns, "bind_model"), "m");
    assert_string_equal(jstr(ns, "bind_version"), "current");
    assert_true(jnum(ns, "bound_version") == 1);
    assert_true(jnum(ns, "items") == 1);
    gen = jnum(ns, "generation");
    jfree(v);
    CLI(&r, "results", "ls");
    check_ok(&r, "results ls");
    check_contains(r.out, "m/current->1", "results ls binding");
    res_free(&r);

    /* The alias moves: a new generation, the old results gone. */
    CLI(&r, "alias", "m", "current", "2");
    check_ok(&r, "alias m current 2");
    res_free(&r);
    for (int i = 0;; i++) {
        v = ls_json();
        ns = jnamed(v, "bnd");
        assert_non_null(ns);
        if (jnum(ns, "bound_version") == 2)
            break;
        if (i == 100)
            fail_msg("bnd still bound to version 1 five seconds after the alias moved");
        jfree(v);
        usleep(50000);
    }
    assert_true(jnum(ns, "generation") > gen);
    assert_true(jnum(ns, "items") == 0);
    jfree(v);
    get_n("bnd", "k", 1, 4);

    CLI(&r, "results", "create", "bnd2", "--bind", "nosuchmodel/1");
    check_fail_quiet(&r, 4, "bind to an unknown model");
    check_contains(r.err, "nosuchmodel", "unknown model named");
    res_free(&r);
    CLI(&r, "results", "create", "bnd2", "--bind", "m");
    check_fail_quiet(&r, 2, "--bind without a version");
    check_contains(r.err, "MODEL/VERSION", "--bind message says the form");
    res_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_parser_refuses),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_no_daemon),
        cmocka_unit_test(test_create),
        cmocka_unit_test(test_put_get),
        cmocka_unit_test(test_stale),
        cmocka_unit_test(test_counts),
        cmocka_unit_test(test_bind),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
