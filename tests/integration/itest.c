/*
 * itest.c - the end-to-end tests' shared harness (see itest.h).
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"
#include "testutil.h"

struct stats_q {
    struct statv *s;
    size_t n;
};

/* ------------------------------------------------------------------ */
/* One daemon per test, and the children it forks                      */

struct itest_env E;

void env_start(const char *prefix, const char *const *extra)
{
    memset(&E, 0, sizeof(E));
    E.dir = ect_tmpdir(prefix);
    snprintf(E.sock, sizeof(E.sock), "%s/s.sock", E.dir);
    snprintf(E.data, sizeof(E.data), "%s/data", E.dir);
    E.daemon = ect_daemon_start(E.data, E.sock, extra);
}

void itest_daemon_up(struct itest_daemon *d, const char *dir, const char *name,
                     const char *const *extra, bool connect)
{
    snprintf(d->data, sizeof(d->data), "%s/%s-data", dir, name);
    snprintf(d->sock, sizeof(d->sock), "%s/%s.sock", dir, name);
    d->c = NULL;
    d->pid = ect_daemon_start(d->data, d->sock, extra);
    assert_true(d->pid > 0);
    if (connect && ec_client_connect(d->sock, &d->c) != 0)
        fail_msg("connect to daemon %s: %s", name, ec_last_error());
}

void itest_daemon_down(struct itest_daemon *d)
{
    if (d->c)
        ec_client_close(d->c);
    d->c = NULL;
    if (d->pid > 0)
        ect_daemon_stop(d->pid);
    d->pid = 0;
}

/* Teardown of every test: kill children still running, stop the daemon,
 * remove the directory (and the segment it records). */
int env_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < E.nkids; i++)
        if (E.kids[i] > 0) {
            kill(E.kids[i], SIGKILL);
            waitpid(E.kids[i], NULL, 0);
        }
    if (E.daemon > 0)
        ect_daemon_stop(E.daemon);
    ect_rmtree(E.dir);
    free(E.dir);
    memset(&E, 0, sizeof(E));
    return 0;
}

/* fork(), remembering the child for the teardown. 0 in the child. */
pid_t spawn(void)
{
    pid_t pid;
    int slot = 0;

    while (slot < E.nkids && E.kids[slot] > 0)
        slot++;
    if (slot == MAX_KIDS)
        fail_msg("more than %d children at once", MAX_KIDS);
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid > 0) {
        E.kids[slot] = pid;
        if (slot == E.nkids)
            E.nkids++;
    }
    return pid;
}

/* Wait for a child and return its exit status (or 128+signal). */
int reap(pid_t pid)
{
    int status;

    assert_int_equal(waitpid(pid, &status, 0), pid);
    for (int i = 0; i < E.nkids; i++)
        if (E.kids[i] == pid)
            E.kids[i] = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

ec_client *connect_ok(void)
{
    ec_client *c = NULL;

    if (ec_client_connect(E.sock, &c))
        fail_msg("connect to %s: %s", E.sock, ec_last_error());
    return c;
}

void daemon_alive(void)
{
    int status;

    assert_int_equal(waitpid(E.daemon, &status, WNOHANG), 0);
}

/* ------------------------------------------------------------------ */
/* Source tables                                                        */


/* Write <dir>/<rel> (rel may name a subdirectory, created here). */
void table_make(struct table *tb, const char *rel, uint64_t rows, uint64_t cols,
                       uint64_t seed)
{
    uint64_t shape[2] = {rows, cols};
    char *slash;
    size_t len;

    memset(tb, 0, sizeof(*tb));
    snprintf(tb->path, sizeof(tb->path), "%s/%s", E.dir, rel);
    slash = strrchr(tb->path, '/');
    *slash = '\0';
    if (mkdir(tb->path, 0700) < 0 && errno != EEXIST)
        fail_msg("mkdir %s: %s", tb->path, strerror(errno));
    *slash = '/';
    assert_int_equal(ect_write_npy(tb->path, EC_DTYPE_F32, 2, shape, seed), 0);
    tb->file = ect_read_file(tb->path, &len);
    assert_non_null(tb->file);
    tb->rows = rows;
    tb->row_bytes = cols * 4;
    assert_true(len >= rows * tb->row_bytes);
    tb->data = tb->file + len - rows * tb->row_bytes;
}

void table_free(struct table *tb)
{
    free(tb->file);
    memset(tb, 0, sizeof(*tb));
}

void import_npy(ec_client *c, const char *model, int64_t version, const char *path,
                       uint64_t partition_bytes)
{
    const char *paths[] = {path};
    ec_import_opts o = {.model = model, .version = version, .round = -1,
                        .partition_bytes = partition_bytes};
    uint32_t n = 0;

    if (ec_model_import(c, &o, paths, 1, &n))
        fail_msg("import %s as %s/%lld: %s", path, model, (long long)version,
                 ec_last_error());
    assert_int_equal(n, 1);
}

ec_tensor *resolve_ok(ec_client *c, const char *model, const char *version,
                             const char *tensor)
{
    ec_tensor *t = NULL;

    if (ec_tensor_resolve(c, model, version, tensor, &t))
        fail_msg("resolve %s/%s/%s: %s", model, version, tensor, ec_last_error());
    return t;
}

/* Gather ids[0..n) and compare with the source. Returns the gather's error,
 * 1 for a wrong row (reported on stderr), or 0. Safe in children. */
int gather_check(ec_tensor *t, const int64_t *ids, size_t n, const struct table *tb,
                        uint8_t *buf, size_t cap)
{
    int rc = ec_tensor_gather(t, ids, n, buf, cap);

    if (rc) {
        fprintf(stderr, "gather of %zu rows (first id %lld): %s\n", n, (long long)ids[0],
                ec_last_error());
        return rc;
    }
    for (size_t k = 0; k < n; k++)
        if (memcmp(buf + k * tb->row_bytes, tb->data + (uint64_t)ids[k] * tb->row_bytes,
                   tb->row_bytes)) {
            fprintf(stderr, "row %lld (position %zu) differs from %s\n", (long long)ids[k], k,
                    tb->path);
            return 1;
        }
    return 0;
}

/* Every row of the table, in batches of 64; asserts (parent only). */
void gather_all_ok(ec_tensor *t, const struct table *tb)
{
    int64_t ids[64];
    uint8_t *buf = malloc(64 * tb->row_bytes);

    assert_non_null(buf);
    for (uint64_t r = 0; r < tb->rows; r += 64) {
        size_t n = tb->rows - r < 64 ? (size_t)(tb->rows - r) : 64;
        for (size_t k = 0; k < n; k++)
            ids[k] = (int64_t)(r + k);
        if (gather_check(t, ids, n, tb, buf, 64 * tb->row_bytes))
            fail_msg("rows %llu.. of %s: wrong or failed", (unsigned long long)r, tb->path);
    }
    free(buf);
}

/* ------------------------------------------------------------------ */
/* Statistics                                                           */



static int stats_cb(const char *name, uint64_t v, void *arg)
{
    struct stats_q *q = arg;

    for (size_t i = 0; i < q->n; i++)
        if (!strcmp(name, q->s[i].name)) {
            q->s[i].v = v;
            q->s[i].found = 1;
        }
    return 0;
}

/* Read several statistics in one request; a missing one fails the test. */
void stats_get(ec_client *c, struct statv *s, size_t n)
{
    struct stats_q q = {s, n};
    int rc;

    for (size_t i = 0; i < n; i++)
        s[i].found = 0;
    rc = ec_client_stats(c, stats_cb, &q);
    if (rc)
        fail_msg("stats: %s", ec_last_error());
    for (size_t i = 0; i < n; i++)
        if (!s[i].found)
            fail_msg("the daemon reports no statistic named %s", s[i].name);
}

uint64_t stat_of(ec_client *c, const char *name)
{
    struct statv s = {name, 0, 0};

    stats_get(c, &s, 1);
    return s.v;
}

uint64_t stat_wait(ec_client *c, const char *name, uint64_t want, double secs)
{
    double end = now_s() + secs;
    uint64_t v;

    while ((v = stat_of(c, name)) < want && now_s() < end)
        usleep(10000);
    return v;
}

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */

uint64_t splitmix(uint64_t *s)
{
    uint64_t x = (*s += 0x9e3779b97f4a7c15ULL);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void *shared_map(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    assert_true(p != MAP_FAILED);
    memset(p, 0, len);
    return p;
}

/* Start a prewarm and poll its progress until it finishes (at most ~20 s).
 * Returns the first failing call's code, or 0 with *out the final progress. */
int prewarm_wait(ec_client *c, const char *model, const char *version, unsigned flags,
                        ec_prewarm_progress *out)
{
    ec_prewarm_progress p;
    int rc;

    memset(&p, 0, sizeof(p));
    rc = ec_model_prewarm(c, model, version, flags, &p);
    for (int i = 0; rc == 0 && !p.finished && i < 2000; i++) {
        usleep(10000);
        rc = ec_model_prewarm(c, model, version, flags, &p);
    }
    if (rc)
        return rc;
    if (!p.finished)
        fail_msg("prewarm of %s/%s not finished after 20 s: %llu of %llu partitions done",
                 model, version, (unsigned long long)p.done, (unsigned long long)p.partitions);
    *out = p;
    return 0;
}


void itest_partfile_of(const char *data_dir, const char *model, int64_t version,
                       const char *tensor, char *path, size_t cap, ec_partfile_meta *meta)
{
    char parts[700];
    struct dirent *de;
    DIR *d;
    bool found = false;

    snprintf(parts, sizeof(parts), "%s/parts", data_dir);
    assert_non_null(d = opendir(parts));
    while (!found && (de = readdir(d))) {
        ec_partfile_origin o;
        int fd;
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 4, ".ecp"))
            continue;
        snprintf(path, cap, "%s/%s", parts, de->d_name);
        if (ec_partfile_open(path, meta, &fd))
            continue;
        found = ec_partfile_read_origin(fd, meta, &o) == 0 && o.present &&
                !strcmp(o.model, model) && o.version == version && !strcmp(o.tensor, tensor);
        close(fd);
    }
    closedir(d);
    if (!found)
        fail_msg("no partition file in %s says it is %s/%lld/%s", parts, model,
                 (long long)version, tensor);
}

void itest_same_ids(ec_client *x, ec_client *y, const char *model, const char *version,
                    const char *tensor, const int64_t *ids, size_t n)
{
    ec_tensor *tx, *ty;
    ec_tensor_info ix;
    uint8_t *bx, *by;

    assert_int_equal(ec_tensor_resolve(x, model, version, tensor, &tx), 0);
    if (ec_tensor_resolve(y, model, version, tensor, &ty) != 0)
        fail_msg("the second daemon: %s/%s/%s: %s", model, version, tensor, ec_last_error());
    assert_int_equal(ec_tensor_info_get(tx, &ix), 0);
    bx = malloc(n * ix.row_bytes + 1);
    by = malloc(n * ix.row_bytes + 1);
    assert_non_null(bx);
    assert_non_null(by);
    assert_int_equal(ec_tensor_gather(tx, ids, n, bx, n * ix.row_bytes), 0);
    if (ec_tensor_gather(ty, ids, n, by, n * ix.row_bytes) != 0)
        fail_msg("gather of %s from the second daemon: %s", tensor, ec_last_error());
    assert_memory_equal(bx, by, n * ix.row_bytes);
    free(bx);
    free(by);
    ec_tensor_release(tx);
    ec_tensor_release(ty);
}
