/*
 * dynbench.c - embcache-dynbench: dynamic tables under updates, in one run
 * on one machine.
 *
 *   writer    one writer process updates random keys of a table of --keys
 *             rows of 512 B in batches of --batch rows, alone: rows/s, and
 *             rows per second of the daemon's CPU time (all its threads,
 *             from /proc): its rate on one core of its own, which the
 *             wall-clock rate understates where cores are shared.
 *   readers   R reader processes gather batches of 256 random keys, alone
 *             (phase A) and while the writer runs (phase B): the writer's
 *             rows/s, each phase's reader rows/s, and the readers' loss
 *             (1 - B/A). On a machine with fewer cores than readers +
 *             writer + daemon the loss is mostly the CPU they share, so
 *             the loss is also given per second of the readers' own CPU
 *             time: what updates cost a reader that has its core (cache
 *             traffic, retried copies).
 *   hot       one writer updates one key nonstop (batches of 1 row) while a
 *             reader reads that key in a loop: the reader's reads/s, and its
 *             retries per read (a slot reused under a copy); the writer's
 *             updates/s.
 *
 * Each phase runs --seconds; --repeats times; the median and range over
 * the repeats are printed. The daemon's log policy is --wal-sync (batch:
 * fdatasync per acknowledged batch, the default; none).
 *
 * Usage: embcache-dynbench --embcached PATH [--wal-sync batch|none]
 *        [--keys N] [--batch N] [--readers R] [--seconds S] [--repeats N] [--pin]
 * --pin puts the readers on CPUs 0..n-2 and the writer and the daemon on the
 * last CPU, in every phase: then the readers' loss is what the updates cost
 * them (caches, memory, retries), not CPU time taken from them.
 * Starts its own embcached in a temporary directory.
 */
#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "embcache.h"

#define ROW 512u
#define DIM (ROW / 4)
#define MAXR 8

static char dir[256], sock[300];
static pid_t daemon_pid;
static bool pin;      /* --pin: readers on CPUs 0..n-2, writer and daemon on CPU n-1 */
static long ncpu;

/* Pin thread tid (0: the caller) to the readers' CPUs or to the last one. */
static void pin_to(pid_t tid, bool last)
{
    cpu_set_t set;

    if (!pin)
        return;
    CPU_ZERO(&set);
    if (last)
        CPU_SET((int)ncpu - 1, &set);
    else
        for (long c = 0; c < ncpu - 1; c++)
            CPU_SET((int)c, &set);
    (void)sched_setaffinity(tid, sizeof(set), &set);
}

/* Every thread of process pid onto the last CPU. */
static void pin_process_last(pid_t pid)
{
    char p[64];
    DIR *d;
    struct dirent *e;

    snprintf(p, sizeof(p), "/proc/%d/task", (int)pid);
    if (!(d = opendir(p)))
        return;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            pin_to((pid_t)atoi(e->d_name), true);
    closedir(d);
}

struct shared {
    _Atomic int go, stop;
    _Atomic uint64_t rows[MAXR + 1];
    _Atomic uint64_t retries;
    double secs[MAXR + 1];
    double cpu[MAXR + 1]; /* CPU seconds each used in the phase */
};
static struct shared *S;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* This thread's CPU seconds (user + system). */
static double cpu_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void die(const char *what)
{
    fprintf(stderr, "dynbench: %s: %s\n", what, ec_last_error());
    if (daemon_pid > 0)
        kill(daemon_pid, SIGTERM);
    exit(1);
}

static ec_tensor *open_table(ec_client **c)
{
    ec_tensor *t;

    if (ec_client_connect(sock, c) || ec_tensor_resolve(*c, "dyn", "1", "t", &t))
        die("connect");
    return t;
}

/* A process that gathers 256 random keys (or the hot key) per call until
 * stop; its rows in S->rows[me]. */
static void reader(int me, uint64_t keys, int64_t hot)
{
    ec_client *c;

    pin_to(0, false);
    ec_tensor *t = open_table(&c);
    float *out = malloc(256 * ROW);
    int64_t ids[256];
    uint64_t s = 99 + (uint64_t)me, n = 0;
    double t0, c0;

    while (!atomic_load(&S->go))
        usleep(100);
    t0 = now_s();
    c0 = cpu_now();
    while (!atomic_load_explicit(&S->stop, memory_order_relaxed)) {
        if (hot >= 0) {
            for (int i = 0; i < 64; i++)
                if (ec_tensor_gather(t, &hot, 1, out, ROW))
                    die("gather hot");
            n += 64;
            continue;
        }
        for (int i = 0; i < 256; i++)
            ids[i] = (int64_t)(rnd(&s) % keys);
        if (ec_tensor_gather(t, ids, 256, out, 256 * ROW))
            die("gather");
        n += 256;
    }
    S->secs[me] = now_s() - t0;
    S->cpu[me] = cpu_now() - c0;
    atomic_store(&S->rows[me], n);
    _exit(0);
}

/* A process that updates random keys (or only the hot key) until stop. */
static void writer(uint64_t keys, uint32_t batch, int64_t hot)
{
    ec_client *c;

    pin_to(0, true);
    ec_tensor *t = open_table(&c);
    float *rows = malloc((size_t)batch * ROW);
    int64_t *ids = malloc((size_t)batch * 8);
    uint64_t s = 7, n = 0;
    double t0;

    for (size_t i = 0; i < (size_t)batch * DIM; i++)
        rows[i] = (float)i;
    while (!atomic_load(&S->go))
        usleep(100);
    t0 = now_s();
    while (!atomic_load_explicit(&S->stop, memory_order_relaxed)) {
        uint32_t b = hot >= 0 ? 1 : batch;
        for (uint32_t i = 0; i < b; i++)
            ids[i] = hot >= 0 ? hot : (int64_t)(rnd(&s) % keys);
        rows[0] += 1;
        if (ec_rows_put(t, ids, b, rows, (size_t)b * ROW, NULL))
            die("put");
        n += b;
    }
    S->secs[MAXR] = now_s() - t0;
    atomic_store(&S->rows[MAXR], n);
    _exit(0);
}

/* CPU seconds of the daemon's worker (bench_util.c). */
static double daemon_cpu(void)
{
    char d[320];

    snprintf(d, sizeof(d), "%s/data", dir);
    return bu_daemon_cpu_seconds(d);
}

static double phase_daemon_cpu; /* the daemon's CPU seconds in the last phase */

/* One phase: nreaders readers, a writer or not, for secs. Rows/s of each
 * reader (summed) and of the writer. */
static double phase_reader_cpu_rate; /* the readers' rows per CPU-second, last phase */

static void phase(int nreaders, bool write, int64_t hot, uint64_t keys, uint32_t batch,
                  double secs, double *reader_rate, double *writer_rate)
{
    pid_t kids[MAXR + 1];
    int nk = 0;

    memset(S, 0, sizeof(*S));
    for (int i = 0; i < nreaders; i++)
        if ((kids[nk++] = fork()) == 0)
            reader(i, keys, hot);
    if (write && (kids[nk++] = fork()) == 0)
        writer(keys, batch, hot);
    usleep(300000);
    phase_daemon_cpu = daemon_cpu();
    atomic_store(&S->go, 1);
    usleep((useconds_t)(secs * 1e6));
    atomic_store(&S->stop, 1);
    for (int i = 0; i < nk; i++) {
        int st;
        waitpid(kids[i], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st))
            die("a bench process failed");
    }
    phase_daemon_cpu = phase_daemon_cpu < 0 ? -1 : daemon_cpu() - phase_daemon_cpu;
    *reader_rate = 0;
    {
        double rows = 0, cpu = 0;
        for (int i = 0; i < nreaders; i++) {
            *reader_rate += (double)S->rows[i] / S->secs[i];
            rows += (double)S->rows[i];
            cpu += S->cpu[i];
        }
        phase_reader_cpu_rate = cpu > 0 ? rows / cpu : 0;
    }
    *writer_rate = write ? (double)S->rows[MAXR] / S->secs[MAXR] : 0;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const char *what, double *v, int n, const char *unit)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_d);
    printf("%-44s median %12.0f %s  range %.0f .. %.0f  (%d repeats)\n", what, v[n / 2], unit,
           v[0], v[n - 1], n);
}

/* A [keys, 128] f32 .npy of the table's first content. */
static void make_npy(const char *path, uint64_t keys)
{
    char hdr[128];
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644), n;
    float *row = calloc(DIM, 4);

    n = snprintf(hdr + 10, sizeof(hdr) - 10,
                 "{'descr': '<f4', 'fortran_order': False, 'shape': (%llu, %u), }",
                 (unsigned long long)keys, DIM);
    while ((10 + n + 1) % 64)
        hdr[10 + n++] = ' ';
    hdr[10 + n++] = '\n';
    memcpy(hdr, "\x93NUMPY\x01\x00", 8);
    hdr[8] = (char)(n & 0xff);
    hdr[9] = (char)(n >> 8);
    if (fd < 0 || write(fd, hdr, (size_t)(10 + n)) != 10 + n)
        die("write npy");
    for (uint64_t k = 0; k < keys; k++) {
        row[0] = (float)k;
        if (write(fd, row, ROW) != ROW)
            die("write npy");
    }
    close(fd);
    free(row);
}

int main(int argc, char **argv)
{
    const char *embcached = NULL, *sync = "batch";
    uint64_t keys = 262144;
    unsigned batch = 4096, readers = 2, repeats = 3;
    double secs = 2.0;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--embcached") && i + 1 < argc)
            embcached = argv[++i];
        else if (!strcmp(argv[i], "--wal-sync") && i + 1 < argc)
            sync = argv[++i];
        else if (!strcmp(argv[i], "--keys") && i + 1 < argc)
            keys = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--readers") && i + 1 < argc)
            readers = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            secs = atof(argv[++i]);
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc)
            repeats = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pin"))
            pin = true;
        else {
            fprintf(stderr, "usage: %s --embcached PATH [--wal-sync batch|none] [--keys N] "
                            "[--batch N] [--readers R] [--seconds S] [--repeats N] [--pin]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!embcached || keys < 1024 || batch < 1 || batch > EC_ROWS_BATCH_MAX || readers < 1 ||
        readers > MAXR || repeats < 1 || repeats > 31 || secs <= 0) {
        fprintf(stderr, "dynbench: --embcached PATH is required; keys >= 1024, batch "
                        "1..2^20, readers 1..8, repeats 1..31\n");
        return 2;
    }
    ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (pin && ncpu < 2) {
        fprintf(stderr, "dynbench: --pin needs 2 CPUs or more\n");
        return 2;
    }
    snprintf(dir, sizeof(dir), "/tmp/ec-dynbench-XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    snprintf(sock, sizeof(sock), "%s/s.sock", dir);
    S = mmap(NULL, sizeof(*S), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    {
        char data[300], shm[32];
        snprintf(data, sizeof(data), "%s/data", dir);
        snprintf(shm, sizeof(shm), "%llu", (unsigned long long)(keys * ROW * 4 + (512u << 20)));
        char *dargv[] = {(char *)embcached, "--data-dir", data, "--socket", sock,
                         "--shm-size", shm, "--wal-sync", (char *)sync, NULL};
        daemon_pid = fork();
        if (daemon_pid == 0) {
            int fd = open("/dev/null", O_WRONLY);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
            }
            setenv("EMBCACHE_CONFIG", "", 1); /* not /etc/embcache/embcached.conf */
            execvp(dargv[0], dargv);
            _exit(127);
        }
        for (int i = 0; i < 1000; i++) {
            struct stat st;
            if (stat(sock, &st) == 0)
                break;
            usleep(10000);
        }
    }
    {
        ec_client *c;
        char npy[320];
        const char *paths[1] = {npy};
        ec_import_opts o = {.model = "dyn", .version = 1, .round = -1};
        snprintf(npy, sizeof(npy), "%s/t.npy", dir);
        make_npy(npy, keys);
        if (ec_client_connect(sock, &c) || ec_model_import(c, &o, paths, 1, NULL) ||
            ec_model_dynamic(c, "dyn", "1", "t", keys * 2, EC_DYN_REFUSE))
            die("set-up");
        ec_client_close(c);
    }
    if (pin) {
        /* The daemon's keeper and worker, every thread, onto the last CPU (threads
         * it makes later inherit it). */
        char p[320];
        long wpid = 0;
        FILE *f;
        snprintf(p, sizeof(p), "%s/data/embcached.lock", dir);
        if ((f = fopen(p, "r"))) {
            if (fscanf(f, "%ld", &wpid) != 1)
                wpid = 0;
            fclose(f);
        }
        pin_process_last(daemon_pid);
        if (wpid > 0)
            pin_process_last((pid_t)wpid);
    }
    printf("# embcache-dynbench: %llu keys of %u B, batches of %u, %u readers, %.1f s per "
           "phase, --wal-sync %s%s\n", (unsigned long long)keys, ROW, batch, readers, secs, sync,
           pin ? ", pinned: readers on CPUs 0..n-2, writer and daemon on the last" : "");
    {
        double ra[31], rb[31], w[31], w0[31], loss[31], hr[31], hw[31], core[31], x;
        double ca[31], cb[31], closs[31];
        for (unsigned r = 0; r < repeats; r++) {
            phase(0, true, -1, keys, batch, secs, &x, &w0[r]);
            /* rows the daemon applies per second of its own CPU: its rate
             * on one core, whatever else the machine's cores were doing */
            core[r] = phase_daemon_cpu > 0 ? w0[r] * S->secs[MAXR] / phase_daemon_cpu : 0;
            phase((int)readers, false, -1, keys, batch, secs, &ra[r], &x);
            ca[r] = phase_reader_cpu_rate;
            phase((int)readers, true, -1, keys, batch, secs, &rb[r], &w[r]);
            cb[r] = phase_reader_cpu_rate;
            loss[r] = 100.0 * (1.0 - rb[r] / ra[r]);
            /* The same per second of the readers' own CPU: what the
             * updates cost them beyond sharing cores (cache, retries). */
            closs[r] = ca[r] > 0 ? 100.0 * (1.0 - cb[r] / ca[r]) : 0;
            phase(1, true, (int64_t)(keys / 2), keys, batch, secs, &hr[r], &hw[r]);
        }
        report("readers alone: rows/s (all readers)", ra, (int)repeats, "rows/s");
        report("readers while updated: rows/s", rb, (int)repeats, "rows/s");
        report("readers' loss while updated", loss, (int)repeats, "%");
        report("readers alone: rows per reader CPU-second", ca, (int)repeats, "rows/s");
        report("readers updated: rows per reader CPU-second", cb, (int)repeats, "rows/s");
        report("readers' loss per CPU-second (not cores)", closs, (int)repeats, "%");
        report("writer alone: rows/s of 512 B", w0, (int)repeats, "rows/s");
        report("writer alone: rows per daemon CPU-second", core, (int)repeats, "rows/s");
        report("writer under readers: rows/s of 512 B", w, (int)repeats, "rows/s");
        report("hot key: reads/s of the key written nonstop", hr, (int)repeats, "reads/s");
        report("hot key: its updates/s", hw, (int)repeats, "updates/s");
    }
    {
        ec_client *c;
        ec_tensor *t;
        uint64_t retries = 0, rows = 0;
        if (ec_client_connect(sock, &c) == 0 && ec_tensor_resolve(c, "dyn", "1", "t", &t) == 0) {
            ec_dyn_info info;
            if (ec_rows_info(t, &info) == 0)
                printf("table: %llu keys, %llu puts applied\n",
                       (unsigned long long)info.keys, (unsigned long long)info.puts);
            ec_tensor_release(t);
        }
        (void)retries;
        (void)rows;
    }
    kill(daemon_pid, SIGTERM);
    waitpid(daemon_pid, NULL, 0);
    {
        char cmd[400];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        if (system(cmd)) {
        }
    }
    return 0;
}
