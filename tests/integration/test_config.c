/*
 * test_config.c - embcached's configuration file, `embcached --check` and
 * SIGHUP (core/daemon_config.c, core/daemon_check.c,
 * core/server_reload.c) against the real binary and real daemons.
 *
 * Parse errors name the file, the line and the key, with the flag's own
 * message; flags override the file; --config none and EMBCACHE_CONFIG;
 * --check's report and its exit status; SIGHUP applies budget and TTL to a
 * daemon whose client stays connected on the same connection, refuses an
 * invalid file without changing anything (a file that is half valid
 * included), says which options need a restart, and counts reloads (STATS
 * and /metrics); a RELOAD request (ec_daemon_reload, `embcache reload`,
 * the unit's ExecReload, finding the socket in the file) is answered once
 * applied, with the summary line,
 * or with the first error of an invalid file; a worker the keeper restarts runs with the reloaded
 * configuration; the shipped deploy/systemd/embcached.conf parses.
 *
 * One daemon per case (itest.h's E, started here with its log in a file),
 * in the test process; cmocka only in the test process.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "itest.h"
#include "testutil.h"

#define ROWS 4096u     /* 128-byte rows: 512 KiB, 32 partitions of 16 KiB */
#define BIG_ROWS 98304u /* 12 MiB; two of them are more than a 16M budget, and
                         * each is cached by partitions under a 32M one */
#define COLS 32u
#define PART_BYTES 16384u
#define MiB (1ull << 20)

static char conf[600], logp[600];
static unsigned mport;

#define assert_has(hay, needle)                                                           \
    do {                                                                                  \
        const char *h_ = (hay);                                                           \
        if (!h_ || !strstr(h_, (needle)))                                                 \
            fail_msg("expected \"%s\" in:\n%s", (needle), h_ ? h_ : "(null)");            \
    } while (0)
#define assert_hasnt(hay, needle)                                                         \
    do {                                                                                  \
        const char *h_ = (hay);                                                           \
        if (h_ && strstr(h_, (needle)))                                                   \
            fail_msg("did not expect \"%s\" in:\n%s", (needle), h_);                      \
    } while (0)

static void write_conf(const char *path, const char *text)
{
    assert_int_equal(ect_write_file(path, text, strlen(text)), 0);
    assert_int_equal(chmod(path, 0644), 0);
}

/* A file as a C string (malloc'ed; "" when it cannot be read). */
static char *slurp(const char *path)
{
    size_t len = 0;
    char *s = ect_read_file(path, &len), *t;

    if (!s)
        return strdup("");
    t = realloc(s, len + 1);
    assert_non_null(t);
    t[len] = '\0';
    return t;
}

/* Poll the daemon's log until it holds needle (5 s); the log. */
static char *log_wait(const char *needle)
{
    char *s = NULL;

    for (int i = 0; i < 500; i++) {
        free(s);
        s = slurp(logp);
        if (strstr(s, needle))
            return s;
        usleep(10000);
    }
    fail_msg("the daemon's log has no \"%s\":\n%s", needle, s);
    return s;
}

/* GET /metrics from the daemon's endpoint: the body (malloc'd). */
static char *scrape(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)mport),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    const char req[] = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    size_t len = 0, cap = 1 << 16;
    char *buf = malloc(cap);
    int fd = -1;

    assert_non_null(buf);
    for (int i = 0; i < 200; i++) {
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            break;
        close(fd);
        fd = -1;
        usleep(10000);
    }
    if (fd < 0)
        fail_msg("cannot connect to the metrics endpoint on port %u", mport);
    assert_int_equal(write(fd, req, sizeof(req) - 1), (ssize_t)(sizeof(req) - 1));
    for (;;) {
        ssize_t n;
        if (cap - len < 4096)
            assert_non_null(buf = realloc(buf, cap *= 2));
        n = read(fd, buf + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n >= 0);
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return buf;
}

/* The value of a sample line "series value", or -1. */
static double sample(const char *body, const char *series)
{
    size_t n = strlen(series);

    for (const char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, series, n) && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

/* E's directory, a configuration file path and the log path; no daemon. */
static void env_dirs(const char *prefix)
{
    memset(&E, 0, sizeof(E));
    E.dir = ect_tmpdir(prefix);
    snprintf(E.sock, sizeof(E.sock), "%s/s.sock", E.dir);
    snprintf(E.data, sizeof(E.data), "%s/data", E.dir);
    snprintf(conf, sizeof(conf), "%s/embcached.conf", E.dir);
    snprintf(logp, sizeof(logp), "%s/embcached.log", E.dir);
}

/* Start embcached --config conf (plus extra) on E, its stderr in logp, with
 * a metrics endpoint on a free port; return once it serves. */
static void daemon_up(const char *const *extra)
{
    static char mlisten[32];
    const char *argv[24];
    int n = 0;
    pid_t pid;

    mport = ect_free_port();
    snprintf(mlisten, sizeof(mlisten), "127.0.0.1:%u", mport);
    argv[n++] = EC_TEST_EMBCACHED;
    argv[n++] = "--config";
    argv[n++] = conf;
    argv[n++] = "--data-dir";
    argv[n++] = E.data;
    argv[n++] = "--socket";
    argv[n++] = E.sock;
    argv[n++] = "--metrics-listen";
    argv[n++] = mlisten;
    for (int i = 0; extra && extra[i] && n < 23; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    E.daemon = pid;
    for (int i = 0; i < 2000; i++) {
        ec_client *c = NULL;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            E.daemon = 0;
            fail_msg("embcached exited with status 0x%x; its log:\n%s", st, slurp(logp));
        }
        if (ec_client_connect(E.sock, &c) == 0) {
            ec_client_close(c);
            return;
        }
        usleep(10000);
    }
    fail_msg("embcached did not serve %s within 20 s; its log:\n%s", E.sock, slurp(logp));
}

/* Run embcached with args; its exit status, stdout and stderr. */
static int run_daemon(const char *const *args, char **out, char **err)
{
    const char *argv[24];
    int n = 0;

    argv[n++] = EC_TEST_EMBCACHED;
    for (int i = 0; args[i] && n < 23; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return ect_run(argv, out, NULL, err);
}

/* SIGHUP to the keeper (which passes it on) and wait until the worker
 * counts it in `stat` (config_reloads or config_reload_failures). */
static void hup_and_wait(ec_client *c, const char *stat, uint64_t want)
{
    assert_int_equal(kill(E.daemon, SIGHUP), 0);
    if (stat_wait(c, stat, want, 10) < want)
        fail_msg("%s did not reach %llu after SIGHUP; the log:\n%s", stat,
                 (unsigned long long)want, slurp(logp));
}

/* ------------------------------------------------------------------ */
/* Parsing (no daemon)                                                 */

/* One bad file: exit 2, and stderr has want (the line and the key). */
static void bad_file(const char *text, const char *want)
{
    const char *args[] = {"--config", conf, "--data-dir", E.data, "--socket", E.sock, NULL};
    char *err = NULL;
    int rc;

    write_conf(conf, text);
    rc = run_daemon(args, NULL, &err);
    if (rc != 2)
        fail_msg("a bad file (%s) exited %d, not 2: %s", want, rc, err);
    assert_has(err, want);
    free(err);
    /* Nothing was started: no data directory, no socket. */
    assert_int_equal(access(E.data, F_OK), -1);
    assert_int_equal(access(E.sock, F_OK), -1);
}

static void test_parse_errors(void **state)
{
    char want[800], *err = NULL;

    (void)state;
    env_dirs("ec-conf-parse");
    snprintf(want, sizeof(want), "%s:3: unknown key 'budgt' (did you mean 'budget'?)", conf);
    bad_file("# a comment\n\nbudgt = 1G\n", want);
    assert_has(want, conf);
    snprintf(want, sizeof(want), "%s:2: key 'budget': '12X' is not a size (e.g. 512M, 8G)", conf);
    bad_file("ttl = 5   # trailing comment\nbudget = 12X\n", want);
    snprintf(want, sizeof(want), "%s:4: key 'ttl' is set twice, on lines 1 and 4", conf);
    bad_file("ttl = 5\nallow-uid = 1\nallow-uid = 2\nttl=6\n", want);
    snprintf(want, sizeof(want), "%s:2: key 'budget': no '='", conf);
    bad_file("ttl = 5\nbudget 2G\n", want);
    snprintf(want, sizeof(want), "%s:1: key 'allow-any': 'maybe' is not true/false", conf);
    bad_file("allow-any = maybe\n", want);
    snprintf(want, sizeof(want), "%s:1: key 'verbose' is for the command line only", conf);
    bad_file("verbose = true\n", want);
    /* The flag's message is the key's. */
    {
        const char *args[] = {"--config", "none", "--budget", "12X", NULL};
        assert_int_equal(run_daemon(args, NULL, &err), 2);
        assert_has(err, "--budget '12X' is not a size (e.g. 512M, 8G)");
        free(err);
    }
    /* A file others may write could open the daemon to every user. */
    write_conf(conf, "budget = 8M\n");
    assert_int_equal(chmod(conf, 0666), 0);
    {
        const char *args[] = {"--config", conf, NULL};
        assert_int_equal(run_daemon(args, NULL, &err), 2);
        assert_has(err, "not be writable by group or others");
        free(err);
    }
    /* A named file that is missing is an error, not "no file". */
    {
        const char *args[] = {"--config", "/nonexistent/embcached.conf", NULL};
        assert_int_equal(run_daemon(args, NULL, &err), 2);
        assert_has(err, "cannot read the configuration file /nonexistent/embcached.conf");
        free(err);
    }
}

/* Precedence and the choice of file, as --check reports them. */
static void test_precedence_and_choice(void **state)
{
    char *out = NULL, want[700];
    char *bad = NULL;

    (void)state;
    env_dirs("ec-conf-prec");
    write_conf(conf, "budget = 32M\nttl = 7\n");
    {
        const char *args[] = {"--check", "--config", conf, "--budget", "16M", "--data-dir",
                              E.data, "--socket", E.sock, "--shm-size", "64M", NULL};
        run_daemon(args, &out, NULL);
        assert_has(out, "budget = 16M (command line)");
        assert_has(out, "ttl = 7 (line 2)");
        free(out);
    }
    /* EMBCACHE_CONFIG names a file; --config none beats it; set and empty
     * is no file. */
    assert_true(asprintf(&bad, "%s/bad.conf", E.dir) > 0);
    write_conf(bad, "no such key = 1\n");
    setenv("EMBCACHE_CONFIG", conf, 1);
    {
        const char *args[] = {"--check", "--data-dir", E.data, "--socket", E.sock,
                              "--shm-size", "64M", NULL};
        run_daemon(args, &out, NULL);
        snprintf(want, sizeof(want), "ok    config       %s parsed: 2 key(s)", conf);
        assert_has(out, want);
        free(out);
    }
    setenv("EMBCACHE_CONFIG", bad, 1);
    {
        const char *args[] = {"--check", "--config", "none", "--data-dir", E.data,
                              "--socket", E.sock, "--shm-size", "64M", NULL};
        run_daemon(args, &out, NULL);
        assert_has(out, "ok    config       no configuration file");
        assert_hasnt(out, "no such key");
        free(out);
    }
    {
        const char *args[] = {"--check", "--data-dir", E.data, "--socket", E.sock, NULL};
        assert_int_equal(run_daemon(args, &out, NULL), 1);
        assert_has(out, "unknown key 'no such key'");
        free(out);
    }
    setenv("EMBCACHE_CONFIG", "", 1);
    {
        const char *args[] = {"--check", "--data-dir", E.data, "--socket", E.sock,
                              "--shm-size", "64M", NULL};
        run_daemon(args, &out, NULL);
        assert_has(out, "ok    config       no configuration file");
        free(out);
    }
    free(bad);
}

/* ------------------------------------------------------------------ */
/* --check                                                             */

static void test_check_report(void **state)
{
    static const char *const names[] = {"config", "data-dir", "socket", "shm", "io_uring",
                                        "huge-pages", "gpu", "descriptors", "memlock",
                                        "metrics"};
    char *out = NULL, *err = NULL;
    int rc;

    (void)state;
    env_dirs("ec-conf-check");
    write_conf(conf, "# good\nshm-size = 64M\nbudget = 32M\nwal-sync = interval\n");
    {
        const char *args[] = {"--check", "--config", conf, "--data-dir", E.data, "--socket",
                              E.sock, NULL};
        rc = run_daemon(args, &out, &err);
        if (rc != 0)
            fail_msg("--check of a good configuration exited %d:\n%s%s", rc, out, err);
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            char tag[40];
            snprintf(tag, sizeof(tag), "  %-12s ", names[i]);
            assert_has(out, tag);
        }
        assert_has(out, "0 FAIL");
        assert_hasnt(out, "FAIL ");
        free(out);
        free(err);
    }
    /* A segment larger than this machine could reserve: larger than
     * /dev/shm's free space and than memory and swap. */
    {
        struct statvfs sv;
        unsigned long long most = 0, kb;
        char l[256], size[32];
        FILE *f = fopen("/proc/meminfo", "r");
        assert_non_null(f);
        while (fgets(l, sizeof(l), f))
            if ((sscanf(l, "MemTotal: %llu kB", &kb) == 1 ||
                 sscanf(l, "SwapTotal: %llu kB", &kb) == 1))
                most += kb * 1024;
        fclose(f);
        if (statvfs("/dev/shm", &sv) == 0 && (unsigned long long)sv.f_bavail * sv.f_frsize > most)
            most = (unsigned long long)sv.f_bavail * sv.f_frsize;
        snprintf(size, sizeof(size), "%lluG", most / (1ull << 30) * 2 + 1);
        const char *args[] = {"--check", "--config", conf, "--shm-size", size, "--data-dir",
                              E.data, "--socket", E.sock, NULL};
        rc = run_daemon(args, &out, &err);
        if (rc != 1)
            fail_msg("--check --shm-size %s exited %d, not 1:\n%s", size, rc, out);
        assert_has(out, "FAIL  shm");
        assert_has(out, "pass a smaller --shm-size");
        free(out);
        free(err);
    }
    /* Bad usage stays 2 under --check. */
    {
        const char *args[] = {"--check", "--config", conf, "--ttl", "-1", NULL};
        assert_int_equal(run_daemon(args, &out, &err), 2);
        assert_has(err, "--ttl '-1' must be a number >= 0");
        free(out);
        free(err);
    }
    /* --check creates nothing. */
    assert_int_equal(access(E.data, F_OK), -1);
    assert_int_equal(access(E.sock, F_OK), -1);
}

/* The example shipped for the service must parse (its environment checks,
 * /var/lib and /run, may fail on a test machine; a parse error may not). */
static void test_check_deploy_example(void **state)
{
    const char *path = EC_SOURCE_DIR "/deploy/systemd/embcached.conf";
    char *out = NULL, *err = NULL;

    (void)state;
    env_dirs("ec-conf-deploy");
    if (access(path, F_OK) != 0) {
        print_message("no %s in this checkout\n", path);
        skip();
    }
    {
        const char *args[] = {"--check", "--config", path, "--data-dir", E.data, "--socket",
                              E.sock, NULL};
        int rc = run_daemon(args, &out, &err);
        if (rc != 0 && rc != 1)
            fail_msg("--check --config %s exited %d:\n%s%s", path, rc, out, err);
        assert_has(out, "ok    config       ");
        assert_has(out, "deploy/systemd/embcached.conf parsed");
        assert_hasnt(out, "FAIL  config");
        free(out);
        free(err);
    }
}

/* ------------------------------------------------------------------ */
/* SIGHUP                                                              */

static void serve_table(ec_client **c, ec_tensor **t, struct table *tb, uint64_t rows)
{
    *c = connect_ok();
    table_make(tb, "src/emb.npy", rows, COLS, 11);
    import_npy(*c, "m", 1, tb->path, rows > ROWS ? 4 * PART_BYTES : PART_BYTES);
    *t = resolve_ok(*c, "m", "1", "emb");
    gather_all_ok(*t, tb);
}

/* Budget and TTL change under a connected client, which keeps its
 * connection; the counters move in STATS and /metrics. */
static void test_reload_applies(void **state)
{
    ec_client *c, *c2;
    ec_tensor *t, *t2;
    struct table tb, tb2;
    uint64_t accepted, evictions;
    char *log, *m, want[800];

    (void)state;
    env_dirs("ec-conf-hup");
    write_conf(conf, "shm-size = 64M\nbudget = 32M\nttl = 0\n");
    daemon_up(NULL);
    serve_table(&c, &t, &tb, BIG_ROWS);
    table_make(&tb2, "src/emb2.npy", BIG_ROWS, COLS, 12);
    import_npy(c, "m2", 1, tb2.path, 4 * PART_BYTES);
    t2 = resolve_ok(c, "m2", "1", "emb2");
    gather_all_ok(t2, &tb2);
    assert_int_equal(stat_of(c, "budget_bytes"), 32 * MiB);
    assert_int_equal(stat_of(c, "row_tensors"), 0);
    assert_true(stat_of(c, "used_bytes") > 16 * MiB); /* all 24M resident */
    evictions = stat_of(c, "evictions");
    assert_int_equal(stat_of(c, "config_reloads"), 0);
    assert_int_equal(stat_of(c, "config_last_reload_ok"), 1);
    accepted = stat_of(c, "connections_accepted");

    write_conf(conf, "# reloaded\nshm-size = 64M\nbudget = 16M   # half\nttl = 1\n");
    hup_and_wait(c, "config_reloads", 1);
    /* Lowered: evicted down to it at once. */
    assert_int_equal(stat_of(c, "budget_bytes"), 16 * MiB);
    assert_true(stat_of(c, "used_bytes") <= 16 * MiB);
    assert_true(stat_of(c, "evictions") > evictions);
    snprintf(want, sizeof(want), "config reloaded from %s: budget 32M -> 16M, ttl 0 -> 1", conf);
    log = log_wait(want);
    free(log);
    /* The same connection serves, before and after: no reconnection. */
    gather_all_ok(t, &tb);
    assert_int_equal(stat_of(c, "connections_accepted"), accepted);
    /* The TTL is in effect: what is resident expires. */
    if (stat_wait(c, "expirations", 1, 10) < 1)
        fail_msg("nothing expired 10 s after ttl became 1 s");
    gather_all_ok(t, &tb);
    assert_int_equal(stat_of(c, "config_reload_failures"), 0);
    m = scrape();
    assert_true(sample(m, "embcache_config_reloads_total") == 1);
    assert_true(sample(m, "embcache_config_reload_failures_total") == 0);
    assert_true(sample(m, "embcache_config_last_reload_ok") == 1);
    assert_has(m, "# TYPE embcache_config_reloads_total counter");
    free(m);
    /* A new client is served too. */
    c2 = connect_ok();
    assert_int_equal(stat_of(c2, "budget_bytes"), 16 * MiB);
    ec_client_close(c2);
    ec_tensor_release(t2);
    ec_tensor_release(t);
    ec_client_close(c);
    table_free(&tb2);
    table_free(&tb);
}

/* An invalid file changes nothing at all, even the valid lines in it; the
 * daemon keeps serving, and a fixed file then applies. */
static void test_reload_invalid_changes_nothing(void **state)
{
    ec_client *c, *c2;
    ec_tensor *t;
    struct table tb;
    char *log, *m, want[800];

    (void)state;
    env_dirs("ec-conf-bad");
    write_conf(conf, "shm-size = 64M\nbudget = 32M\n");
    daemon_up(NULL);
    serve_table(&c, &t, &tb, ROWS);
    /* Valid changes (a 1 s TTL, one client at most, a 24M budget) around
     * an invalid line. */
    write_conf(conf, "shm-size = 64M\nttl = 1\nmax-clients = 1\nbudget = 12X\n");
    hup_and_wait(c, "config_reload_failures", 1);
    snprintf(want, sizeof(want), "%s:4: key 'budget': '12X' is not a size", conf);
    log = log_wait(want);
    assert_has(log, "nothing changed");
    free(log);
    assert_int_equal(stat_of(c, "config_reloads"), 0);
    assert_int_equal(stat_of(c, "config_last_reload_ok"), 0);
    assert_int_equal(stat_of(c, "budget_bytes"), 32 * MiB);
    /* max-clients stayed 1024: a second client gets in. */
    if (ec_client_connect(E.sock, &c2))
        fail_msg("a second client was refused after an invalid reload: %s", ec_last_error());
    /* ttl stayed 0: nothing expires. */
    usleep(1500 * 1000);
    gather_all_ok(t, &tb);
    assert_int_equal(stat_of(c, "expirations"), 0);
    m = scrape();
    assert_true(sample(m, "embcache_config_reload_failures_total") == 1);
    assert_true(sample(m, "embcache_config_last_reload_ok") == 0);
    free(m);
    /* Fixed: it applies, and the gauge says so. */
    write_conf(conf, "shm-size = 64M\nbudget = 24M\n");
    hup_and_wait(c, "config_reloads", 1);
    assert_int_equal(stat_of(c, "budget_bytes"), 24 * MiB);
    assert_int_equal(stat_of(c, "config_last_reload_ok"), 1);
    assert_int_equal(stat_of(c2, "config_reload_failures"), 1);
    gather_all_ok(t, &tb);
    ec_client_close(c2);
    ec_tensor_release(t);
    ec_client_close(c);
    table_free(&tb);
}

/* A RELOAD request: applied when it is answered (no waiting for a
 * counter), the answer is the summary line; an invalid file is refused
 * with its first error and changes nothing; the CLI says the same. */
static void test_reload_request(void **state)
{
    const char *cli[] = {EC_TEST_CLI, "--socket", E.sock, "reload", NULL};
    const char *cli_conf[] = {EC_TEST_CLI, "reload", "--config", conf, NULL};
    char summary[2048], want[800], *out = NULL, *err = NULL;
    ec_client *c;
    int rc;

    (void)state;
    env_dirs("ec-conf-req");
    write_conf(conf, "shm-size = 64M\nbudget = 32M\n");
    daemon_up(NULL);
    c = connect_ok();
    write_conf(conf, "shm-size = 64M\nbudget = 16M\n");
    if ((rc = ec_daemon_reload(c, summary, sizeof(summary))) != 0)
        fail_msg("ec_daemon_reload: %s", ec_last_error());
    snprintf(want, sizeof(want), "config reloaded from %s: budget 32M -> 16M", conf);
    assert_string_equal(summary, want);
    assert_int_equal(stat_of(c, "budget_bytes"), 16 * MiB);
    assert_int_equal(stat_of(c, "config_reloads"), 1);

    write_conf(conf, "shm-size = 64M\nbudget = 12X\nttl = 1\n");
    rc = ec_daemon_reload(c, summary, sizeof(summary));
    if (rc != EC_EINVAL || !strstr(ec_last_error(), "'12X' is not a size") ||
        !strstr(ec_last_error(), "nothing changed"))
        fail_msg("reload of an invalid file: %s: %s", ec_strerror(rc), ec_last_error());
    assert_int_equal(stat_of(c, "budget_bytes"), 16 * MiB);
    assert_int_equal(stat_of(c, "config_reload_failures"), 1);
    assert_int_equal(stat_of(c, "config_last_reload_ok"), 0);
    /* The CLI: exit 1 with the error, then 0 with the summary. */
    assert_int_equal(ect_run(cli, &out, NULL, &err), 1);
    if (!err || !strstr(err, "'12X' is not a size"))
        fail_msg("embcache reload of an invalid file said: %s", err ? err : "");
    free(out);
    free(err);
    /* The socket from the daemon's configuration file (reload --config, as
     * the unit's ExecReload does), not from --socket. */
    snprintf(want, sizeof(want), "shm-size = 64M\nbudget = 24M\nsocket = %s\n", E.sock);
    write_conf(conf, want);
    assert_int_equal(ect_run(cli_conf, &out, NULL, &err), 0);
    snprintf(want, sizeof(want), "config reloaded from %s: budget 16M -> 24M\n", conf);
    assert_string_equal(out, want);
    free(out);
    free(err);
    assert_int_equal(stat_of(c, "budget_bytes"), 24 * MiB);
    assert_int_equal(stat_of(c, "config_last_reload_ok"), 1);
    ec_client_close(c);
}

/* What cannot change at run time is named, kept, and the rest applies. */
static void test_reload_restart_needed(void **state)
{
    ec_client *c;
    ec_tensor *t;
    struct table tb;
    char *log, want[800], mark[600];
    uint64_t seg;

    (void)state;
    env_dirs("ec-conf-fixed");
    write_conf(conf, "shm-size = 64M\n");
    daemon_up(NULL);
    serve_table(&c, &t, &tb, ROWS);
    seg = stat_of(c, "segment_bytes");
    write_conf(conf, "shm-size = 128M\nbudget = 16M\n");
    hup_and_wait(c, "config_reloads", 1);
    snprintf(want, sizeof(want), "shm-size changed in %s but cannot change at run time; "
             "restart embcached to apply", conf);
    log = log_wait(want);
    assert_has(log, "not applied (restart needed): shm-size");
    free(log);
    assert_int_equal(stat_of(c, "segment_bytes"), seg);
    assert_int_equal(stat_of(c, "budget_bytes"), 16 * MiB);
    assert_int_equal(stat_of(c, "config_last_reload_ok"), 1);
    gather_all_ok(t, &tb);
    /* The log's sync mode changes too: interval keeps the mark of what is
     * synced (core/wal.h, rule 2b), batch none. */
    snprintf(mark, sizeof(mark), "%s/wal/synced", E.data);
    assert_int_equal(access(mark, F_OK), -1);
    write_conf(conf, "shm-size = 64M\nbudget = 16M\nwal-sync = interval\n");
    hup_and_wait(c, "config_reloads", 2);
    free(log_wait("wal-sync batch -> interval"));
    assert_int_equal(access(mark, F_OK), 0);
    write_conf(conf, "shm-size = 64M\nbudget = 16M\nwal-sync = batch\n");
    hup_and_wait(c, "config_reloads", 3);
    free(log_wait("wal-sync interval -> batch"));
    assert_int_equal(access(mark, F_OK), -1);
    gather_all_ok(t, &tb);
    ec_tensor_release(t);
    ec_client_close(c);
    table_free(&tb);
}

/* The command line still wins after a reload; a worker the keeper restarts
 * (SIGUSR2, warm) runs with the reloaded configuration, not the start-up
 * one. */
static void test_reload_flags_and_restart(void **state)
{
    static const char *const extra[] = {"--ttl", "0", NULL};
    ec_client *c;
    ec_tensor *t;
    struct table tb;
    pid_t w;

    (void)state;
    env_dirs("ec-conf-restart");
    write_conf(conf, "shm-size = 64M\nbudget = 32M\nttl = 1\n");
    daemon_up(extra);
    serve_table(&c, &t, &tb, ROWS);
    assert_int_equal(stat_of(c, "budget_bytes"), 32 * MiB);
    write_conf(conf, "shm-size = 64M\nbudget = 16M\nttl = 1\n");
    hup_and_wait(c, "config_reloads", 1);
    assert_int_equal(stat_of(c, "budget_bytes"), 16 * MiB);
    /* --ttl 0 beats the file's ttl = 1, then and now. */
    usleep(1500 * 1000);
    gather_all_ok(t, &tb);
    assert_int_equal(stat_of(c, "expirations"), 0);
    ec_tensor_release(t);
    ec_client_close(c);

    w = ect_daemon_worker(E.data);
    assert_int_equal(kill(E.daemon, SIGUSR2), 0);
    ect_daemon_wait_worker(E.data, E.sock, w);
    c = connect_ok();
    if (stat_of(c, "budget_bytes") != 16 * MiB)
        fail_msg("the restarted worker's budget is %llu, not the reloaded 16M; log:\n%s",
                 (unsigned long long)stat_of(c, "budget_bytes"), slurp(logp));
    t = resolve_ok(c, "m", "1", "emb");
    gather_all_ok(t, &tb);
    ec_tensor_release(t);
    ec_client_close(c);
    table_free(&tb);
}

/* Stop the case's daemon (it must exit 0 with a log free of sanitizer
 * reports), then remove what the case made. */
static int teardown(void **state)
{
    int rc = 0, st;

    setenv("EMBCACHE_CONFIG", "", 1);
    if (E.daemon > 0) {
        st = ect_daemon_stop(E.daemon);
        E.daemon = 0;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "embcached exited with status 0x%x after SIGTERM\n", st);
            rc = -1;
        }
    }
    if (*logp) {
        char *l = slurp(logp);
        if (strstr(l, "Sanitizer") || strstr(l, "runtime error:")) {
            fprintf(stderr, "a sanitizer report in %s\n", logp);
            rc = -1;
        }
        if (rc || getenv("ECT_VERBOSE"))
            fprintf(stderr, "--- %s\n%s", logp, l);
        free(l);
        *logp = '\0';
    }
    if (E.dir)
        env_teardown(state);
    return rc;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_parse_errors, teardown),
        cmocka_unit_test_teardown(test_precedence_and_choice, teardown),
        cmocka_unit_test_teardown(test_check_report, teardown),
        cmocka_unit_test_teardown(test_check_deploy_example, teardown),
        cmocka_unit_test_teardown(test_reload_applies, teardown),
        cmocka_unit_test_teardown(test_reload_invalid_changes_nothing, teardown),
        cmocka_unit_test_teardown(test_reload_request, teardown),
        cmocka_unit_test_teardown(test_reload_restart_needed, teardown),
        cmocka_unit_test_teardown(test_reload_flags_and_restart, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
