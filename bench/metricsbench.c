/*
 * metricsbench.c - embcache-metricsbench: what Prometheus scrapes of
 * embcached's /metrics (core/metrics.c) cost, in one run on one machine.
 *
 *   set-up   its own embcached (--metrics-listen on a free loopback port)
 *            with --models models of --tensors tensors each (small f32
 *            tables), every tensor opened and gathered from by this process
 *            (so each has its per-tensor series with non-zero counts), and
 *            --namespaces shared result namespaces with --keys results each,
 *            read with hits and misses.
 *   scrape   --scrapes sequential GET /metrics, each a new TCP connection
 *            (HTTP/1.0, as Prometheus's scraper sees it: connect to the last
 *            byte of the body): median, p99, min and max in ms, the
 *            response's bytes and samples, and the daemon's CPU time per
 *            scrape (its worker's user + system time from /proc, all
 *            threads, over all the scrapes).
 *   hit      the hit path: ec_tensor_gather of resident rows (batches of
 *            --batch rows, hot ids cycled) in this process's main thread,
 *            timed in blocks of G consecutive calls (G, up to 1024, chosen
 *            so a block takes about 20 us: this machine's clock counts in
 *            steps of about 10 ns, a fifth of a one-row gather and 2% of a
 *            64-row one); the p50 of the blocks' time per call (a 1 ns-wide
 *            histogram of block times: 10/G ns resolution per call) per
 *            phase. Phases of
 *            --phase-seconds: A (no scraping) and B (a scraper process,
 *            forked once before, doing GET /metrics every second), in the
 *            order A B A B ... B A, --repeats B phases. Printed: the median
 *            and range of the A and of the B p50s, and of the change of
 *            each B against the mean of the A before and the A after it
 *            (which cancels a drift of the machine's speed).
 *
 * Output: one result per line with its parameters (bench/README.md's rule);
 * `#` lines are notes. Main thread plus one forked scraper process, idle
 * (blocked on a pipe) outside the B phases; the daemon is a child stopped
 * with SIGTERM at the end.
 *
 * Usage: embcache-metricsbench --embcached PATH [--models N] [--tensors N]
 *        [--namespaces N] [--keys N] [--scrapes N] [--batch N[,N...]]
 *        [--phase-seconds S] [--repeats N]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "embcache.h"

#define ROWS 2048u           /* rows of each tensor */
#define DIM 32u              /* f32 columns */
#define ROW_BYTES (DIM * 4u)
#define HOT 1024u            /* hot ids cycled by the hit path */
#define LAT_NS 200000u       /* the p50 histogram: 1 ns buckets below this */
#define MAX_BATCHES 8
#define MAX_REPEATS 31

static char dir[256], sock[300];
static pid_t daemon_pid;
static unsigned port;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void cleanup(void)
{
    char cmd[400];

    if (daemon_pid > 0) {
        kill(daemon_pid, SIGTERM);
        waitpid(daemon_pid, NULL, 0);
        daemon_pid = 0;
    }
    if (dir[0]) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd)) {
        }
        dir[0] = 0;
    }
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "metricsbench: %s: %s\n", what, why);
    cleanup();
    exit(1);
}

static void die_ec(const char *what) { die(what, ec_last_error()); }

/* ------------------------------------------------------------------ */
/* HTTP                                                                */

/* A loopback port nobody listens on now (bind port 0, give it back). */
static unsigned free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) ||
        getsockname(fd, (struct sockaddr *)&sa, &len))
        die("free port", strerror(errno));
    close(fd);
    return ntohs(sa.sin_port);
}

/* GET path over a new connection: the HTTP status (-1: no connection or no
 * reply), the body in *body (malloc'd, *cap grown as needed) and its
 * length. */
static int http_get(const char *path, char **body, size_t *cap, size_t *len)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char req[128], *hdr_end;
    size_t n = 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), status = -1, rl;

    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
        close(fd);
        return -1;
    }
    rl = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, (size_t)rl) != rl) {
        close(fd);
        return -1;
    }
    for (;;) {
        ssize_t r;
        if (*cap - n < 65536) {
            char *b = realloc(*body, *cap ? *cap * 2 : 1 << 20);
            if (!b)
                die("http", "out of memory");
            *body = b;
            *cap = *cap ? *cap * 2 : 1 << 20;
        }
        r = read(fd, *body + n, *cap - n - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    (*body)[n] = 0;
    if (sscanf(*body, "HTTP/1.%*d %d", &status) != 1)
        return -1;
    hdr_end = strstr(*body, "\r\n\r\n");
    if (!hdr_end)
        return -1;
    *len = n - (size_t)(hdr_end + 4 - *body);
    memmove(*body, hdr_end + 4, *len + 1);
    return status;
}

/* ------------------------------------------------------------------ */
/* The daemon                                                          */

/* CPU seconds of the daemon's worker (bench_util.c). */
static double daemon_cpu(void)
{
    char d[320];

    snprintf(d, sizeof(d), "%s/data", dir);
    return bu_daemon_cpu_seconds(d);
}

static void start_daemon(const char *embcached)
{
    char data[300], listen[32];

    snprintf(data, sizeof(data), "%s/data", dir);
    for (int attempt = 0; attempt < 3; attempt++) {
        char *body = NULL;
        size_t cap = 0, len;
        port = free_port();
        snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
        char *argv[] = {(char *)embcached, "--data-dir", data, "--socket", sock,
                        "--shm-size", "256M", "--quiet", "--metrics-listen", listen, NULL};
        daemon_pid = fork();
        if (daemon_pid < 0)
            die("fork", strerror(errno));
        if (daemon_pid == 0) {
            setenv("EMBCACHE_CONFIG", "", 1); /* not /etc/embcache/embcached.conf */
            execv(argv[0], argv);
            fprintf(stderr, "metricsbench: cannot run %s: %s\n", argv[0], strerror(errno));
            _exit(127);
        }
        for (int i = 0; i < 1000; i++) {
            struct stat st;
            if (waitpid(daemon_pid, NULL, WNOHANG) == daemon_pid) {
                daemon_pid = 0;
                break;
            }
            if (stat(sock, &st) == 0 && http_get("/healthz", &body, &cap, &len) == 200) {
                free(body);
                return;
            }
            usleep(10000);
        }
        free(body);
        if (daemon_pid > 0) {
            kill(daemon_pid, SIGTERM);
            waitpid(daemon_pid, NULL, 0);
            daemon_pid = 0;
        }
        fprintf(stderr, "metricsbench: embcached did not come up on %s (attempt %d)\n", listen,
                attempt + 1);
    }
    die("start embcached", "it did not start with --metrics-listen (is --embcached right?)");
}

/* An f32 [ROWS, DIM] .npy; row r, column c holds seed + r + c/100. */
static void make_npy(const char *path, unsigned seed)
{
    char hdr[128];
    float *buf = malloc((size_t)ROWS * ROW_BYTES);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), n;

    if (!buf || fd < 0)
        die(path, strerror(errno));
    n = snprintf(hdr + 10, sizeof(hdr) - 10,
                 "{'descr': '<f4', 'fortran_order': False, 'shape': (%u, %u), }", ROWS, DIM);
    while ((10 + n + 1) % 64)
        hdr[10 + n++] = ' ';
    hdr[10 + n++] = '\n';
    memcpy(hdr, "\x93NUMPY\x01\x00", 8);
    hdr[8] = (char)(n & 0xff);
    hdr[9] = (char)(n >> 8);
    for (unsigned r = 0; r < ROWS; r++)
        for (unsigned c = 0; c < DIM; c++)
            buf[r * DIM + c] = (float)seed + (float)r + (float)c / 100.0f;
    if (write(fd, hdr, (size_t)(10 + n)) != 10 + n ||
        write(fd, buf, (size_t)ROWS * ROW_BYTES) != (ssize_t)((size_t)ROWS * ROW_BYTES))
        die(path, "short write");
    close(fd);
    free(buf);
}

/* ------------------------------------------------------------------ */
/* Statistics                                                          */

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_d);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The scraper process: told by a byte on cmd ('1' scrape, '0' idle, EOF
 * exit), it does GET /metrics at once and then every second while told to
 * scrape, and blocks on cmd otherwise; scrapes and failures are counted in
 * *done, *failed. */
static void scraper(int cmd, _Atomic uint64_t *done, _Atomic uint64_t *failed)
{
    char *body = NULL, c;
    size_t cap = 0, len;
    bool on = false;
    double next = 0;

    for (;;) {
        struct pollfd p = {.fd = cmd, .events = POLLIN};
        int wait_ms = -1;
        if (on) {
            double w = next - now_s();
            wait_ms = w > 0 ? (int)(w * 1000) + 1 : 0;
        }
        if (poll(&p, 1, wait_ms) > 0) {
            if (read(cmd, &c, 1) != 1)
                _exit(0);
            on = c == '1';
            next = now_s();
            continue;
        }
        if (!on || now_s() < next)
            continue;
        if (http_get("/metrics", &body, &cap, &len) == 200)
            atomic_fetch_add(done, 1);
        else
            atomic_fetch_add(failed, 1);
        next += 1.0;
    }
}

/* One phase of the hit path: gathers of batch hot rows for secs, timed in
 * blocks of g calls; the p50 of the blocks' ns per call (-1 when a block
 * took LAT_NS or more) and the calls made. */
static double hit_phase(ec_tensor *t, const int64_t *hot, unsigned batch, unsigned g,
                        double secs, uint32_t *hist, uint64_t *calls_out)
{
    static float out[HOT * DIM];
    uint64_t blocks = 0, end = now_ns() + (uint64_t)(secs * 1e9), pos = 0, a = 0;

    memset(hist, 0, LAT_NS * sizeof(*hist));
    while (a < end) {
        uint64_t d;
        a = now_ns();
        for (unsigned i = 0; i < g; i++) {
            if (ec_tensor_gather(t, hot + pos, batch, out, (size_t)batch * ROW_BYTES))
                die_ec("gather (hit path)");
            pos += batch;
            if (pos + batch > HOT)
                pos = 0;
        }
        d = now_ns() - a;
        if (d < LAT_NS)
            hist[d]++;
        blocks++;
    }
    *calls_out = blocks * g;
    {
        uint64_t half = (blocks + 1) / 2, seen = 0;
        for (uint32_t ns = 0; ns < LAT_NS; ns++)
            if ((seen += hist[ns]) >= half)
                return (double)ns / g;
    }
    return -1;
}

/* Calls per block: about 20 us of them, 1 to 1024. */
static unsigned block_calls(ec_tensor *t, const int64_t *hot, unsigned batch)
{
    static float out[HOT * DIM];
    uint64_t a = now_ns(), pos = 0, per;

    for (unsigned i = 0; i < 2000; i++) {
        if (ec_tensor_gather(t, hot + pos, batch, out, (size_t)batch * ROW_BYTES))
            die_ec("gather (calibration)");
        pos += batch;
        if (pos + batch > HOT)
            pos = 0;
    }
    per = (now_ns() - a) / 2000;
    per = per ? per : 1;
    return 20000 / per < 1 ? 1 : 20000 / per > 1024 ? 1024 : (unsigned)(20000 / per);
}

/* ------------------------------------------------------------------ */

static void usage(const char *prog)
{
    fprintf(stderr,
            "usage: %s --embcached PATH [--models N] [--tensors N] [--namespaces N]\n"
            "       [--keys N] [--scrapes N] [--batch N[,N...]] [--phase-seconds S]\n"
            "       [--repeats N]\n",
            prog);
}

int main(int argc, char **argv)
{
    const char *embcached = NULL;
    unsigned models = 10, tensors = 10, nss = 50, keys = 20, scrapes = 200, repeats = 5;
    unsigned batches[MAX_BATCHES] = {1, 64}, nbatch = 2;
    double phase_s = 3.0;
    ec_client *c;
    ec_tensor **ts;
    int64_t hot[HOT];

    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--embcached") && v)
            embcached = argv[++i];
        else if (!strcmp(argv[i], "--models") && v)
            models = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tensors") && v)
            tensors = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--namespaces") && v)
            nss = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keys") && v)
            keys = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--scrapes") && v)
            scrapes = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeats") && v)
            repeats = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--phase-seconds") && v)
            phase_s = atof(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && v) {
            char *s = argv[++i], *end;
            nbatch = 0;
            do {
                unsigned long b = strtoul(s, &end, 10);
                if (end == s || b < 1 || b > HOT || nbatch == MAX_BATCHES) {
                    fprintf(stderr, "metricsbench: --batch takes 1 to %d sizes of 1..%u\n",
                            MAX_BATCHES, HOT);
                    return 2;
                }
                batches[nbatch++] = (unsigned)b;
                s = end + 1;
            } while (*end == ',');
        } else {
            usage(argv[0]);
            return 2;
        }
    }
    if (!embcached || models < 1 || models > 100 || tensors < 1 || tensors > 50 ||
        nss > EC_NS_MAX || keys < 1 || keys > 100000 || scrapes < 1 || scrapes > 100000 ||
        repeats < 1 || repeats > MAX_REPEATS || !(phase_s > 0)) {
        usage(argv[0]);
        fprintf(stderr, "metricsbench: --embcached is required; models 1..100, tensors "
                        "1..50, namespaces 0..%u, keys 1..100000, scrapes 1..100000, repeats "
                        "1..%d, phase-seconds > 0\n", EC_NS_MAX, MAX_REPEATS);
        return 2;
    }
    snprintf(dir, sizeof(dir), "/tmp/ec-metricsbench-XXXXXX");
    if (!mkdtemp(dir))
        die("mkdtemp", strerror(errno));
    snprintf(sock, sizeof(sock), "%s/s", dir);
    start_daemon(embcached);
    if (ec_client_connect(sock, &c))
        die_ec("connect");

    /* Models and tensors: every tensor resolved and gathered from. */
    ts = calloc((size_t)models * tensors, sizeof(*ts));
    if (!ts)
        die("set-up", "out of memory");
    for (unsigned m = 0; m < models; m++) {
        char model[32], (*paths)[320] = calloc(tensors, 320);
        const char **pp = calloc(tensors, sizeof(*pp));
        ec_import_opts o = {.version = 1, .round = -1};
        if (!paths || !pp)
            die("set-up", "out of memory");
        snprintf(model, sizeof(model), "model%02u", m);
        o.model = model;
        for (unsigned k = 0; k < tensors; k++) {
            snprintf(paths[k], 320, "%s/embedding_%02u.npy", dir, k);
            make_npy(paths[k], m * 100 + k);
            pp[k] = paths[k];
        }
        if (ec_model_import(c, &o, pp, tensors, NULL))
            die_ec("import");
        for (unsigned k = 0; k < tensors; k++) {
            char tn[32];
            int64_t ids[64];
            static float out[64 * DIM];
            ec_tensor **t = &ts[m * tensors + k];
            snprintf(tn, sizeof(tn), "embedding_%02u", k);
            if (ec_tensor_resolve(c, model, "1", tn, t))
                die_ec("resolve");
            for (unsigned r = 0; r < 64; r++)
                ids[r] = (int64_t)((r * 37u + k) % ROWS);
            for (int rep = 0; rep < 4; rep++)
                if (ec_tensor_gather(*t, ids, 64, out, sizeof(out)))
                    die_ec("gather");
            unlink(paths[k]);
        }
        free(paths);
        free(pp);
    }
    /* Namespaces: keys results each, read back (hits) plus misses. */
    for (unsigned n = 0; n < nss; n++) {
        ec_ns_opts no = {.flags = EC_NS_CREATE | EC_NS_SHARED};
        ec_results *r;
        char name[32], key[32], buf[64];
        ec_result_meta meta;
        snprintf(name, sizeof(name), "namespace-%02u", n);
        if (ec_results_open(c, name, &no, &r))
            die_ec("results open");
        for (unsigned k = 0; k < keys; k++) {
            ec_result_value val = {.data = buf, .len = 32};
            int kl = snprintf(key, sizeof(key), "key-%u", k);
            memset(buf, (int)k, sizeof(buf));
            if (ec_results_put(r, key, (size_t)kl, &val))
                die_ec("results put");
            if (ec_results_get(r, key, (size_t)kl, 0, buf, sizeof(buf), &meta) != 1)
                die_ec("results get");
        }
        for (unsigned k = 0; k < 3; k++) {
            int kl = snprintf(key, sizeof(key), "absent-%u", k);
            if (ec_results_get(r, key, (size_t)kl, 0, buf, sizeof(buf), &meta) != 0)
                die_ec("results get (absent)");
        }
        ec_results_close(r);
    }

    printf("# embcache-metricsbench: %u models x %u tensors (%u x %u f32 each), %u namespaces "
           "x %u keys, %u scrapes; hit path: batches %u", models, tensors, ROWS, DIM, nss, keys,
           scrapes, batches[0]);
    for (unsigned b = 1; b < nbatch; b++)
        printf(",%u", batches[b]);
    printf(", %.1f s phases, %u A/B repeats\n", phase_s, repeats);

    /* Scrapes. */
    {
        double *ms = calloc(scrapes, sizeof(*ms)), cpu0, cpu1, min, max, p99;
        char *body = NULL;
        size_t cap = 0, len = 0, samples = 0;
        int st;
        if (!ms)
            die("scrape", "out of memory");
        /* One untimed scrape first: the buffers' first growth. */
        if ((st = http_get("/metrics", &body, &cap, &len)) != 200)
            die("GET /metrics", "no 200 reply");
        for (char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
            if (*p != '#' && *p != '\n' && *p)
                samples++;
        if (!strstr(body, "embcache_tensor_series_omitted 0\n"))
            fprintf(stderr, "metricsbench: warning: some tensors' series were left out\n");
        cpu0 = daemon_cpu();
        for (unsigned i = 0; i < scrapes; i++) {
            double t0 = now_s();
            if ((st = http_get("/metrics", &body, &cap, &len)) != 200)
                die("GET /metrics", "no 200 reply");
            ms[i] = (now_s() - t0) * 1e3;
        }
        cpu1 = daemon_cpu();
        qsort(ms, scrapes, sizeof(*ms), cmp_d);
        min = ms[0];
        max = ms[scrapes - 1];
        p99 = ms[(size_t)((scrapes - 1) * 0.99 + 0.5)];
        printf("scrape GET /metrics (new connection each)   median %8.3f ms  p99 %8.3f ms  "
               "range %.3f .. %.3f ms  (%u scrapes)\n",
               median(ms, (int)scrapes), p99, min, max, scrapes);
        printf("scrape response                             %zu bytes, %zu samples, %u "
               "tensors, %u namespaces\n", len, samples, models * tensors, nss);
        if (cpu0 >= 0 && cpu1 >= 0)
            printf("scrape daemon CPU (worker, all threads)     %.3f ms per scrape  "
                   "(%.2f s over %u scrapes; clock tick %ld Hz)\n",
                   (cpu1 - cpu0) * 1e3 / scrapes, cpu1 - cpu0, scrapes, sysconf(_SC_CLK_TCK));
        free(ms);
        free(body);
    }

    /* The hit path with and without a 1 Hz scraper: A B A ... B A. */
    {
        ec_tensor *t = ts[0];
        uint32_t *hist = malloc(LAT_NS * sizeof(*hist));
        struct shared {
            _Atomic uint64_t done, failed;
        } *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                     -1, 0);
        uint64_t s = 12345;
        static float out[HOT * DIM];
        int cmd[2];
        pid_t kid;
        if (!hist || sh == MAP_FAILED || pipe2(cmd, O_CLOEXEC))
            die("hit path", "out of memory or descriptors");
        for (unsigned i = 0; i < HOT; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            hot[i] = (int64_t)((s >> 33) % ROWS);
        }
        /* Every hot row resident and warm in this process's caches; the
         * histogram's pages touched before the scraper is forked. */
        for (int w = 0; w < 100; w++)
            if (ec_tensor_gather(t, hot, HOT, out, sizeof(out)))
                die_ec("gather (warm-up)");
        memset(hist, 0, LAT_NS * sizeof(*hist));
        kid = fork();
        if (kid < 0)
            die("fork", strerror(errno));
        if (kid == 0) {
            close(cmd[1]);
            scraper(cmd[0], &sh->done, &sh->failed);
        }
        close(cmd[0]);
        for (unsigned b = 0; b < nbatch; b++) {
            double a[MAX_REPEATS + 1], bb[MAX_REPEATS], ch[MAX_REPEATS], as[MAX_REPEATS + 1];
            uint64_t calls_a = 0, calls_b = 0, calls;
            uint64_t scr0 = atomic_load(&sh->done), fail0 = atomic_load(&sh->failed);
            unsigned g = block_calls(t, hot, batches[b]);
            for (unsigned r = 0; r <= repeats; r++) {
                a[r] = hit_phase(t, hot, batches[b], g, phase_s, hist, &calls);
                calls_a += calls;
                if (r == repeats)
                    break;
                if (write(cmd[1], "1", 1) != 1)
                    die("scraper", "cannot start it");
                bb[r] = hit_phase(t, hot, batches[b], g, phase_s, hist, &calls);
                calls_b += calls;
                if (write(cmd[1], "0", 1) != 1)
                    die("scraper", "cannot stop it");
            }
            for (unsigned r = 0; r <= repeats; r++)
                if (a[r] < 0 || (r < repeats && bb[r] < 0))
                    die("hit path", "a block of calls took over 200 us: not a hit path");
            for (unsigned r = 0; r < repeats; r++)
                ch[r] = 100.0 * (bb[r] - (a[r] + a[r + 1]) / 2) / ((a[r] + a[r + 1]) / 2);
            memcpy(as, a, sizeof(a));
            {
                double ma = median(as, (int)repeats + 1), mb = median(bb, (int)repeats);
                double mc = median(ch, (int)repeats);
                printf("hit p50, batch %4u, no scraping (A)        median %8.1f ns  range %.1f "
                       ".. %.1f ns  (%u phases, %" PRIu64 " calls, blocks of %u)\n",
                       batches[b], ma, as[0], as[repeats], repeats + 1, calls_a, g);
                printf("hit p50, batch %4u, scrape every 1 s (B)   median %8.1f ns  range %.1f "
                       ".. %.1f ns  (%u phases, %" PRIu64 " calls, %" PRIu64 " scrapes, %" PRIu64
                       " failed)\n",
                       batches[b], mb, bb[0], bb[repeats - 1], repeats, calls_b,
                       atomic_load(&sh->done) - scr0, atomic_load(&sh->failed) - fail0);
                printf("hit p50, batch %4u, change B vs A           median %+8.2f %%   range "
                       "%+.2f .. %+.2f %%  (each B against the mean of its two A)\n",
                       batches[b], mc, ch[0], ch[repeats - 1]);
                fflush(stdout);
            }
        }
        close(cmd[1]); /* EOF: the scraper exits */
        waitpid(kid, NULL, 0);
        free(hist);
    }

    for (unsigned i = 0; i < models * tensors; i++)
        ec_tensor_release(ts[i]);
    free(ts);
    ec_client_close(c);
    cleanup();
    return 0;
}
