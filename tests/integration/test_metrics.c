/*
 * test_metrics.c - embcached's Prometheus endpoint (core/metrics.c,
 * --metrics-listen) against a real daemon: raw HTTP/1.0 over TCP (no curl),
 * the text exposition format 0.0.4 checked line by line, series that move
 * with gathers, per-tensor labels, /healthz, 404 and 405, a listener bound
 * to loopback only, and bad values of the option; the latency histograms
 * (faults, pager reads, recomputations), errors by code and aliases moved
 * to versions not prewarmed. Prints the median time of 20 scrapes (not
 * asserted).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "itest.h"
#include "testutil.h"

#define ROWS 512u
#define COLS 16u

static unsigned port;

static int setup(void **state)
{
    static char arg[32];
    static const char *args[] = {"--metrics-listen", arg, NULL};

    (void)state;
    port = ect_free_port();
    snprintf(arg, sizeof(arg), "127.0.0.1:%u", port);
    env_start("ec-metrics", args);
    return 0;
}

static int tcp_connect(const char *addr, unsigned p)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

struct http {
    int status;
    char ctype[128];
    char *body;   /* malloc'd, NUL-terminated */
};

/* One HTTP/1.0 request: the status, Content-Type and body. */
static void http(const char *method, const char *path, struct http *h)
{
    char req[256], *raw = NULL, *hdr_end, *ct;
    size_t len = 0, cap = 0;
    int fd = -1;

    /* The listener starts just after the control socket: allow it a moment. */
    for (int i = 0; i < 200 && (fd = tcp_connect("127.0.0.1", port)) < 0; i++)
        usleep(10000);
    if (fd < 0)
        fail_msg("connect 127.0.0.1:%u: %s", port, strerror(errno));
    snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: localhost\r\n%s\r\n", method, path,
             strcmp(method, "POST") ? "" : "Content-Length: 0\r\n");
    assert_int_equal(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    for (;;) {
        ssize_t n;
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 65536;
            raw = realloc(raw, cap);
            assert_non_null(raw);
        }
        n = read(fd, raw + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n >= 0);
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    raw[len] = 0;
    memset(h, 0, sizeof(*h));
    if (sscanf(raw, "HTTP/1.%*d %d", &h->status) != 1)
        fail_msg("not an HTTP reply: %.80s", raw);
    hdr_end = strstr(raw, "\r\n\r\n");
    assert_non_null(hdr_end);
    *hdr_end = 0;
    ct = strcasestr(raw, "\r\nContent-Type: ");
    if (ct)
        sscanf(ct + 16, "%127[^\r]", h->ctype);
    h->body = strdup(hdr_end + 4);
    assert_non_null(h->body);
    free(raw);
}

/* The value of the sample whose name and labels are exactly `series`
 * ("name" or "name{a=\"b\"}"); -1 when there is none. */
static double sample(const char *body, const char *series)
{
    size_t n = strlen(series);

    for (const char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, series, n) && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

static bool name_char(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           (!first && c >= '0' && c <= '9');
}

/* Every line of the exposition format 0.0.4: HELP and TYPE once per name
 * and before its samples, samples `name{labels} value`, counters named
 * *_total. Returns the number of samples. */
static size_t check_format(char *body)
{
    char (*help)[128] = calloc(4096, sizeof(*help)), (*type)[128] = calloc(4096, 128);
    char (*hist)[128] = calloc(64, 128);
    size_t nhelp = 0, ntype = 0, nhist = 0, samples = 0;
    char *save = NULL;

    assert_non_null(help);
    assert_non_null(type);
    body = strdup(body);
    assert_non_null(body);
    for (char *line = strtok_r(body, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char name[128], *p = line, *end;
        size_t k = 0, i;
        if (!strncmp(line, "# HELP ", 7) || !strncmp(line, "# TYPE ", 7)) {
            bool is_help = line[2] == 'H';
            if (sscanf(line + 7, "%127s", name) != 1)
                fail_msg("bad comment line: %s", line);
            for (i = 0; i < (is_help ? nhelp : ntype); i++)
                if (!strcmp(is_help ? help[i] : type[i], name))
                    fail_msg("second %s line for %s", is_help ? "HELP" : "TYPE", name);
            assert_true(nhelp < 4096 && ntype < 4096);
            if (is_help) {
                snprintf(help[nhelp++], 128, "%s", name);
            } else {
                char t[16] = "";
                sscanf(line + 7 + strlen(name), " %15s", t);
                if (strcmp(t, "counter") && strcmp(t, "gauge") && strcmp(t, "histogram"))
                    fail_msg("TYPE of %s is '%s'", name, t);
                snprintf(type[ntype++], 128, "%s", name);
                if (!strcmp(t, "histogram")) {
                    assert_true(nhist < 64);
                    snprintf(hist[nhist++], 128, "%s", name);
                }
                if (!strcmp(t, "counter")) {
                    size_t l = strlen(name);
                    if (l < 6 || strcmp(name + l - 6, "_total"))
                        fail_msg("counter %s does not end in _total", name);
                }
            }
            continue;
        }
        if (line[0] == '#')
            continue;
        if (!name_char(*p, true))
            fail_msg("bad sample line: %s", line);
        while (name_char(*p, false) && k < sizeof(name) - 1)
            name[k++] = *p++;
        name[k] = 0;
        if (*p == '{') {
            p++;
            while (*p != '}') {
                if (!name_char(*p, true))
                    fail_msg("bad label in: %s", line);
                while (name_char(*p, false))
                    p++;
                if (p[0] != '=' || p[1] != '"')
                    fail_msg("bad label in: %s", line);
                for (p += 2; *p != '"'; p++) {
                    if (!*p)
                        fail_msg("unterminated label value in: %s", line);
                    if (*p == '\\') {
                        p++;
                        if (*p != '\\' && *p != '"' && *p != 'n')
                            fail_msg("bad escape in: %s", line);
                    }
                }
                p++;
                if (*p == ',')
                    p++;
                else if (*p != '}')
                    fail_msg("bad label list in: %s", line);
            }
            p++;
        }
        if (*p != ' ')
            fail_msg("no value in: %s", line);
        strtod(p + 1, &end);
        if (end == p + 1 || *end)
            fail_msg("bad value in: %s", line);
        /* A histogram's samples are its name with _bucket, _sum, _count. */
        for (i = 0; i < nhist; i++) {
            size_t l = strlen(hist[i]);
            if (!strncmp(name, hist[i], l) &&
                (!strcmp(name + l, "_bucket") || !strcmp(name + l, "_sum") ||
                 !strcmp(name + l, "_count")))
                name[l] = 0;
        }
        for (i = 0; i < nhelp && strcmp(help[i], name); i++)
            ;
        if (i == nhelp)
            fail_msg("no HELP before %s", name);
        for (i = 0; i < ntype && strcmp(type[i], name); i++)
            ;
        if (i == ntype)
            fail_msg("no TYPE before %s", name);
        samples++;
    }
    /* Every family has both lines. */
    assert_int_equal(nhelp, ntype);
    free(body);
    free(help);
    free(type);
    free(hist);
    return samples;
}

static double scrape_value(const char *series)
{
    struct http h;
    double v;

    http("GET", "/metrics", &h);
    assert_int_equal(h.status, 200);
    v = sample(h.body, series);
    free(h.body);
    return v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void test_metrics_endpoint(void **state)
{
    static const char tseries[] = "{model=\"mm\",version=\"1\",tensor=\"emb\"}";
    char series[256];
    struct table tb;
    struct http h;
    ec_client *c = connect_ok();
    ec_tensor *t;
    double rows0, rows1 = 0, served0, served1 = 0, times[20];
    size_t n;

    (void)state;
    table_make(&tb, "emb.npy", ROWS, COLS, 7);
    import_npy(c, "mm", 1, tb.path, 4096);
    t = resolve_ok(c, "mm", "1", "emb");
    gather_all_ok(t, &tb);

    http("GET", "/metrics", &h);
    assert_int_equal(h.status, 200);
    assert_string_equal(h.ctype, "text/plain; version=0.0.4; charset=utf-8");
    n = check_format(h.body);
    printf("# /metrics: %zu samples, %zu bytes\n", n, strlen(h.body));
    assert_true(n > 50);
    assert_true(sample(h.body, "embcache_used_bytes") > 0);
    assert_true(sample(h.body, "embcache_segment_bytes") > 0);
    assert_true(sample(h.body, "embcache_clients") >= 1);
    assert_true(sample(h.body, "embcache_imports_total") >= 1);
    assert_true(sample(h.body, "embcache_tensor_series_omitted") == 0);
    assert_non_null(strstr(h.body, "# TYPE embcache_namespace_hits_total counter\n"));
    snprintf(series, sizeof(series), "embcache_tensor_resident_bytes%s", tseries);
    assert_true(sample(h.body, series) > 0);
    snprintf(series, sizeof(series), "embcache_tensor_bytes%s", tseries);
    assert_true(sample(h.body, series) == (double)ROWS * COLS * 4);
    free(h.body);

    /* Counters move with more gathers (clients' counts reach the daemon
     * through their session pages: poll a little). */
    snprintf(series, sizeof(series), "embcache_tensor_rows_served_total%s", tseries);
    rows0 = scrape_value("embcache_client_rows_total");
    served0 = scrape_value(series);
    assert_true(rows0 >= ROWS);
    gather_all_ok(t, &tb);
    gather_all_ok(t, &tb);
    for (int i = 0; i < 200; i++) {
        rows1 = scrape_value("embcache_client_rows_total");
        served1 = scrape_value(series);
        if (rows1 >= rows0 + 2 * ROWS && served1 >= served0 + 2 * ROWS)
            break;
        usleep(10000);
    }
    assert_true(rows1 >= rows0 + 2 * ROWS);
    assert_true(served1 >= served0 + 2 * ROWS);
    snprintf(series, sizeof(series), "embcache_tensor_hits_total%s", tseries);
    assert_true(scrape_value(series) > 0);

    /* Per-namespace series: a hit and a miss in a shared namespace. */
    {
        ec_ns_opts o = {.flags = EC_NS_CREATE | EC_NS_SHARED};
        ec_result_value v = {.data = "val", .len = 3};
        ec_result_meta meta;
        ec_results *r;
        char buf[16];
        double hits = 0, misses = 0;
        assert_int_equal(ec_results_open(c, "ns-m", &o, &r), 0);
        assert_int_equal(ec_results_put(r, "a", 1, &v), 0);
        assert_int_equal(ec_results_get(r, "a", 1, 0, buf, sizeof(buf), &meta), 1);
        assert_int_equal(ec_results_get(r, "b", 1, 0, buf, sizeof(buf), &meta), 0);
        for (int i = 0; i < 200 && !(hits >= 1 && misses >= 1); i++) {
            snprintf(series, sizeof(series),
                     "embcache_namespace_hits_total{namespace=\"ns-m\",uid=\"%u\"}",
                     (unsigned)getuid());
            hits = scrape_value(series);
            snprintf(series, sizeof(series),
                     "embcache_namespace_misses_total{namespace=\"ns-m\",uid=\"%u\"}",
                     (unsigned)getuid());
            misses = scrape_value(series);
            if (!(hits >= 1 && misses >= 1))
                usleep(10000);
        }
        assert_true(hits >= 1);
        assert_true(misses >= 1);
        ec_results_close(r);
    }

    http("GET", "/healthz", &h);
    assert_int_equal(h.status, 200);
    assert_string_equal(h.body, "ok\n");
    free(h.body);
    http("GET", "/nope", &h);
    assert_int_equal(h.status, 404);
    free(h.body);
    http("POST", "/metrics", &h);
    assert_int_equal(h.status, 405);
    free(h.body);

    /* The median of 20 scrapes, for the record. */
    for (int i = 0; i < 20; i++) {
        double t0 = now_s();
        http("GET", "/metrics", &h);
        times[i] = now_s() - t0;
        assert_int_equal(h.status, 200);
        free(h.body);
    }
    qsort(times, 20, sizeof(times[0]), cmp_double);
    printf("# scrape time: median %.3f ms, max %.3f ms (20 scrapes)\n",
           (times[9] + times[10]) / 2 * 1e3, times[19] * 1e3);

    ec_tensor_release(t);
    table_free(&tb);
    ec_client_close(c);
}

/* Bound to 127.0.0.1 only: the kernel lists the listener on that address,
 * and another loopback address of the same port refuses. */
/* A histogram family in body: buckets cumulative (never decreasing),
 * +Inf equal to _count. Returns _count. */
static double check_hist(const char *body, const char *fam)
{
    char key[160], inf[160], cnt[160];
    double prev = 0, v;
    size_t n = 0, l;

    snprintf(key, sizeof(key), "%s_bucket{le=\"", fam);
    l = strlen(key);
    for (const char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, key, l)) {
            const char *sp = strchr(p, ' ');
            assert_non_null(sp);
            v = strtod(sp + 1, NULL);
            if (v < prev)
                fail_msg("%s: bucket %.40s below the one before it", fam, p);
            prev = v;
            n++;
        }
    assert_true(n >= 10);
    snprintf(inf, sizeof(inf), "%s_bucket{le=\"+Inf\"}", fam);
    snprintf(cnt, sizeof(cnt), "%s_count", fam);
    assert_true(sample(body, inf) == sample(body, cnt));
    assert_true(sample(body, inf) == prev);
    return sample(body, cnt);
}

static void test_metrics_histograms_errors_alias(void **state)
{
    struct table tb, tb2;
    struct http h;
    ec_client *c = connect_ok();
    ec_tensor *t;
    double faults = 0, reads = 0;

    (void)state;
    table_make(&tb, "emb.npy", ROWS, COLS, 7);
    table_make(&tb2, "emb2.npy", ROWS, COLS, 8);
    import_npy(c, "mm", 1, tb.path, 4096);
    t = resolve_ok(c, "mm", "1", "emb");
    gather_all_ok(t, &tb);
    for (int i = 0; i < 200 && !(faults >= 1 && reads >= 1); i++) {
        faults = scrape_value("embcache_fault_seconds_count");
        reads = scrape_value("embcache_pager_read_seconds_count");
        if (!(faults >= 1 && reads >= 1))
            usleep(10000);
    }
    assert_true(faults >= 1 && reads >= 1);
    http("GET", "/metrics", &h);
    assert_int_equal(h.status, 200);
    check_format(h.body);
    assert_true(check_hist(h.body, "embcache_fault_seconds") >= 1);
    assert_true(check_hist(h.body, "embcache_pager_read_seconds") >= 1);
    assert_true(check_hist(h.body, "embcache_recompute_seconds") == 0);
    assert_true(sample(h.body, "embcache_fault_seconds_sum") > 0);
    assert_true(sample(h.body, "embcache_request_errors_total{code=\"ENOENT\"}") == 0);
    free(h.body);

    /* Errors by code: an unknown tensor is ENOENT, counted once per answer. */
    {
        ec_tensor *x = NULL;
        assert_int_equal(ec_tensor_resolve(c, "mm", "1", "nope", &x), EC_ENOENT);
        assert_int_equal(ec_tensor_resolve(c, "mm", "7", "emb", &x), EC_ENOENT);
        assert_true(scrape_value("embcache_request_errors_total{code=\"ENOENT\"}") >= 2);
        assert_true(scrape_value("embcache_requests_failed_total") >= 2);
        assert_true(scrape_value("embcache_request_errors_total{code=\"EINTERNAL\"}") == 0);
    }

    /* An alias moved to a version never loaded is cold; one prewarmed first
     * is not. */
    import_npy(c, "mm", 2, tb2.path, 4096);
    assert_int_equal(ec_model_alias(c, "mm", "current", 2), 0);
    assert_true(scrape_value("embcache_alias_switches_total") == 1);
    assert_true(scrape_value("embcache_alias_switches_cold_total") == 1);
    {
        ec_prewarm_progress pw;
        assert_int_equal(prewarm_wait(c, "mm", "2", 0, &pw), 0);
        assert_int_equal(pw.failed, 0);
    }
    assert_int_equal(ec_model_alias(c, "mm", "stable", 2), 0);
    assert_true(scrape_value("embcache_alias_switches_total") == 2);
    assert_true(scrape_value("embcache_alias_switches_cold_total") == 1);

    /* A recomputation: a lease granted, the value put 50 ms later. */
    {
        ec_ns_opts o = {.flags = EC_NS_CREATE | EC_NS_SHARED};
        ec_result_value v = {.data = "val", .len = 3};
        ec_results *r;
        double n = 0, sum = 0;
        assert_int_equal(ec_results_open(c, "ns-h", &o, &r), 0);
        assert_int_equal(ec_results_lease(r, "k", 1, 0), EC_LEASE_GRANTED);
        usleep(50000);
        assert_int_equal(ec_results_put(r, "k", 1, &v), 0);
        n = scrape_value("embcache_recompute_seconds_count");
        sum = scrape_value("embcache_recompute_seconds_sum");
        assert_true(n == 1);
        assert_true(sum >= 0.05 && sum < 10);
        ec_results_close(r);
    }
    ec_tensor_release(t);
    ec_client_close(c);
    table_free(&tb);
    table_free(&tb2);
}

static void test_metrics_loopback_only(void **state)
{
    char want[64], line[512];
    bool found = false;
    struct http h;
    FILE *f;
    int fd;

    (void)state;
    http("GET", "/healthz", &h);  /* listening by now */
    assert_int_equal(h.status, 200);
    free(h.body);
    f = fopen("/proc/net/tcp", "r");
    if (f) {
        snprintf(want, sizeof(want), ":%04X", port);
        while (fgets(line, sizeof(line), f)) {
            char local[64];
            unsigned st;
            if (sscanf(line, " %*d: %63s %*s %X", local, &st) != 2 || st != 0x0A)
                continue;
            if (strlen(local) == 13 && !strcmp(local + 8, want)) {
                assert_string_equal(local, strcat((char[64]){"0100007F"}, want));
                found = true;
            }
        }
        fclose(f);
        assert_true(found);
    }
    fd = tcp_connect("127.0.0.2", port);
    assert_true(fd < 0);
    assert_int_equal(errno, ECONNREFUSED);
}

/* Bad values exit 2 with a message naming the option. */
static void test_metrics_bad_option(void **state)
{
    static const char *const bad[] = {"x", "0", "70000", "1.2.3:9464", ":9464",
                                      "127.0.0.1:", "localhost:9464", "::1:9464"};

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *argv[] = {EC_TEST_EMBCACHED, "--metrics-listen", bad[i], NULL};
        char *err = NULL;
        int rc = ect_run(argv, NULL, NULL, &err);
        if (rc != 2 || !err || !strstr(err, "--metrics-listen"))
            fail_msg("--metrics-listen %s: exit %d, stderr %s", bad[i], rc, err ? err : "");
        free(err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_metrics_endpoint, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_metrics_loopback_only, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_metrics_histograms_errors_alias, setup,
                                        env_teardown),
        cmocka_unit_test(test_metrics_bad_option),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
