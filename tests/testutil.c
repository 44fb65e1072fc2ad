/*
 * testutil.c - helpers shared by the test programs (see testutil.h).
 */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm/segment.h"

/* Every daemon a test starts runs with the options the test gives it: an
 * installed /etc/embcache/embcached.conf (or a developer's EMBCACHE_CONFIG)
 * must not change what a test runs. Set (and empty) means "no file"
 * (core/daemon_config.h); children inherit it. Tests of the file pass
 * --config or set it themselves. */
__attribute__((constructor)) static void ect_no_daemon_config(void)
{
    setenv("EMBCACHE_CONFIG", "", 1);
}

char *ect_tmpdir(const char *prefix)
{
    const char *base = getenv("TMPDIR");
    char *path;

    if (!base || !*base)
        base = "/tmp";
    if (asprintf(&path, "%s/%s-XXXXXX", base, prefix) < 0)
        fail_msg("asprintf");
    if (!mkdtemp(path))
        fail_msg("mkdtemp %s: %s", path, strerror(errno));
    return path;
}

void ect_rmtree(const char *path)
{
    ec_segment_rmtree(path);
}

int ect_write_file(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const char *p = buf;

    if (fd < 0)
        return -errno;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            close(fd);
            return -e;
        }
        p += w;
        len -= (size_t)w;
    }
    return close(fd) ? -errno : 0;
}

void *ect_read_file(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long len;

    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)len + 1);
        if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
            free(buf);
            buf = NULL;
        }
        if (buf && len_out)
            *len_out = (size_t)len;
    }
    fclose(f);
    return buf;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

void ect_fill(ec_dtype dtype, uint64_t seed, uint64_t first, uint64_t n, void *out)
{
    uint8_t *o = out;

    for (uint64_t i = 0; i < n; i++) {
        uint64_t h = splitmix64(seed * 0x100000001b3ULL ^ (first + i));
        switch (dtype) {
        case EC_DTYPE_F32: {
            float v = (float)((int64_t)(h % 2000001) - 1000000) / 1024.0f;
            memcpy(o + 4 * i, &v, 4);
            break;
        }
        case EC_DTYPE_F64: {
            double v = (double)((int64_t)(h % 20000001) - 10000000) / 4096.0;
            memcpy(o + 8 * i, &v, 8);
            break;
        }
        case EC_DTYPE_F16: {
            /* An integer in [-1024, 1024] is exact in binary16. */
            int v = (int)(h % 2049) - 1024;
            uint16_t bits = 0;
            if (v != 0) {
                unsigned a = (unsigned)(v < 0 ? -v : v), e = 0;
                while ((a >> e) > 1)
                    e++;
                bits = (uint16_t)(((v < 0) << 15) | ((e + 15) << 10) |
                                  (((a << 10) >> e) & 0x3ff));
            }
            memcpy(o + 2 * i, &bits, 2);
            break;
        }
        case EC_DTYPE_BF16: {
            float f = (float)((int)(h % 257) - 128);
            uint32_t b;
            memcpy(&b, &f, 4);
            uint16_t bits = (uint16_t)(b >> 16);
            memcpy(o + 2 * i, &bits, 2);
            break;
        }
        case EC_DTYPE_I8:
        case EC_DTYPE_U8:
            o[i] = (uint8_t)h;
            break;
        case EC_DTYPE_I32: {
            int32_t v = (int32_t)h;
            memcpy(o + 4 * i, &v, 4);
            break;
        }
        case EC_DTYPE_I64: {
            int64_t v = (int64_t)h;
            memcpy(o + 8 * i, &v, 8);
            break;
        }
        default:
            break;
        }
    }
}

static const char *npy_descr(ec_dtype d)
{
    switch (d) {
    case EC_DTYPE_F32: return "<f4";
    case EC_DTYPE_F16: return "<f2";
    case EC_DTYPE_F64: return "<f8";
    case EC_DTYPE_I8: return "|i1";
    case EC_DTYPE_U8: return "|u1";
    case EC_DTYPE_I32: return "<i4";
    case EC_DTYPE_I64: return "<i8";
    default: return NULL; /* bf16 has no .npy form */
    }
}

static uint64_t elems_of(uint32_t ndim, const uint64_t *shape)
{
    uint64_t n = 1;
    for (uint32_t i = 0; i < ndim; i++)
        n *= shape[i];
    return n;
}

int ect_write_npy_data(const char *path, ec_dtype dtype, uint32_t ndim, const uint64_t *shape,
                       const void *data)
{
    const char *descr = npy_descr(dtype);
    char dict[512], shp[256] = "";
    size_t hl, total, dl;
    uint8_t *buf;
    int rc;

    if (!descr)
        return -EINVAL;
    for (uint32_t i = 0; i < ndim; i++) {
        size_t l = strlen(shp);
        snprintf(shp + l, sizeof(shp) - l, "%llu,%s", (unsigned long long)shape[i],
                 (ndim > 1 && i + 1 < ndim) ? " " : "");
    }
    if (ndim > 1)
        shp[strlen(shp) - 1] = '\0'; /* "(3, 4)" not "(3, 4,)" */
    snprintf(dict, sizeof(dict), "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
             descr, shp);
    hl = strlen(dict) + 1; /* + '\n' */
    total = 10 + hl;
    total = (total + 63) / 64 * 64;
    hl = total - 10;
    dl = elems_of(ndim, shape) * ec_dtype_size(dtype);
    buf = calloc(1, total + dl);
    if (!buf)
        return -ENOMEM;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (uint8_t)(hl & 0xff);
    buf[9] = (uint8_t)(hl >> 8);
    memset(buf + 10, ' ', hl);
    memcpy(buf + 10, dict, strlen(dict));
    buf[total - 1] = '\n';
    if (dl)
        memcpy(buf + total, data, dl);
    rc = ect_write_file(path, buf, total + dl);
    free(buf);
    return rc;
}

int ect_write_npy(const char *path, ec_dtype dtype, uint32_t ndim, const uint64_t *shape,
                  uint64_t seed)
{
    uint64_t n = elems_of(ndim, shape);
    void *data = calloc(1, n * ec_dtype_size(dtype) + 1);
    int rc;

    if (!data)
        return -ENOMEM;
    ect_fill(dtype, seed, 0, n, data);
    rc = ect_write_npy_data(path, dtype, ndim, shape, data);
    free(data);
    return rc;
}

static const char *st_dtype(ec_dtype d)
{
    switch (d) {
    case EC_DTYPE_F32: return "F32";
    case EC_DTYPE_F16: return "F16";
    case EC_DTYPE_BF16: return "BF16";
    case EC_DTYPE_F64: return "F64";
    case EC_DTYPE_I8: return "I8";
    case EC_DTYPE_U8: return "U8";
    case EC_DTYPE_I32: return "I32";
    case EC_DTYPE_I64: return "I64";
    default: return NULL;
    }
}

int ect_write_safetensors(const char *path, const ect_st_tensor *t, size_t n)
{
    size_t cap = 4096 + n * 512, hl = 0, data = 0, total;
    char *hdr = malloc(cap);
    uint8_t *buf;
    int rc;

    if (!hdr)
        return -ENOMEM;
    hl += (size_t)snprintf(hdr + hl, cap - hl, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n; i++) {
        size_t bytes = elems_of(t[i].ndim, t[i].shape) * ec_dtype_size(t[i].dtype);
        hl += (size_t)snprintf(hdr + hl, cap - hl, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                               t[i].name, st_dtype(t[i].dtype));
        for (uint32_t d = 0; d < t[i].ndim; d++)
            hl += (size_t)snprintf(hdr + hl, cap - hl, "%s%llu", d ? "," : "",
                                   (unsigned long long)t[i].shape[d]);
        hl += (size_t)snprintf(hdr + hl, cap - hl, "],\"data_offsets\":[%zu,%zu]}", data,
                               data + bytes);
        data += bytes;
    }
    hl += (size_t)snprintf(hdr + hl, cap - hl, "}");
    while (hl % 8)
        hdr[hl++] = ' ';
    total = 8 + hl + data;
    buf = calloc(1, total);
    if (!buf) {
        free(hdr);
        return -ENOMEM;
    }
    for (int b = 0; b < 8; b++)
        buf[b] = (uint8_t)((uint64_t)hl >> (8 * b));
    memcpy(buf + 8, hdr, hl);
    data = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t ne = elems_of(t[i].ndim, t[i].shape);
        ect_fill(t[i].dtype, t[i].seed, 0, ne, buf + 8 + hl + data);
        data += ne * ec_dtype_size(t[i].dtype);
    }
    rc = ect_write_file(path, buf, total);
    free(buf);
    free(hdr);
    return rc;
}

static int socket_ready(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), ok;

    if (fd < 0)
        return 0;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

pid_t ect_daemon_start(const char *data_dir, const char *socket, const char *const *extra)
{
    const char *argv[32];
    int n = 0, status;
    pid_t pid;

    argv[n++] = EC_TEST_EMBCACHED;
    argv[n++] = "--data-dir";
    argv[n++] = data_dir;
    argv[n++] = "--socket";
    argv[n++] = socket;
    argv[n++] = "--shm-size";
    argv[n++] = "67108864";
    for (int i = 0; extra && extra[i] && n < 31; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;

    pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        /* A test that dies (an assertion that aborts, a sanitizer report)
         * takes its daemon with it instead of leaving it to hold the test
         * runner's output pipe open. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 2000; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            fail_msg("embcached exited early with status %d", status);
        if (socket_ready(socket))
            return pid;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fail_msg("embcached did not start listening on %s within 20 s", socket);
    return -1;
}

int ect_daemon_stop(pid_t pid)
{
    int status = 0;

    if (pid <= 0)
        return -1;
    kill(pid, SIGTERM);
    for (int i = 0; i < 1000; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return status;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return status;
}

static pid_t worker_pid(const char *data_dir)
{
    char path[4200], buf[32] = "";
    ssize_t n;
    long pid;
    int fd;

    snprintf(path, sizeof(path), "%s/embcached.lock", data_dir);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    pid = strtol(buf, NULL, 10);
    return pid > 0 && kill((pid_t)pid, 0) == 0 ? (pid_t)pid : -1;
}

bool ect_gpu_required(void)
{
    const char *req = getenv("EMBCACHE_REQUIRE_GPU");

    return req && !strcmp(req, "1");
}

bool ect_gpu_present(void)
{
    const char *force = getenv("EMBCACHE_TEST_GPU_PRESENT");
    DIR *d;
    bool any = false;

    if (force && (!strcmp(force, "0") || !strcmp(force, "1")))
        return force[0] == '1';
    if (access("/dev/nvidiactl", F_OK) == 0 || access("/dev/nvidia0", F_OK) == 0)
        return true;
    /* The driver lists its GPUs here even where /dev is a container's own. */
    if ((d = opendir("/proc/driver/nvidia/gpus"))) {
        struct dirent *e;
        while (!any && (e = readdir(d)))
            any = e->d_name[0] != '.';
        closedir(d);
    }
    return any;
}

int ect_gpu_unavailable(const char *why, bool missing_feature)
{
    if (ect_gpu_required()) {
        printf("FAILED: EMBCACHE_REQUIRE_GPU=1, but %s\n", why);
        return 1;
    }
    if (!ect_gpu_present()) {
        printf("skipped: this machine has no NVIDIA GPU (%s)\n", why);
        return EC_TEST_SKIP;
    }
    if (missing_feature) {
        printf("skipped: %s\n", why);
        return EC_TEST_SKIP;
    }
    printf("FAILED: this machine has an NVIDIA GPU, but %s\n", why);
    return 1;
}

bool ect_pid_alive(pid_t pid)
{
    char path[64], buf[256];
    FILE *f;
    bool a = false;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if ((f = fopen(path, "r"))) {
        const char *p;
        a = fgets(buf, sizeof(buf), f) && (p = strrchr(buf, ')')) && p[1] && p[2] != 'Z';
        fclose(f);
    }
    return a;
}

pid_t ect_daemon_worker(const char *data_dir)
{
    for (int i = 0; i < 2000; i++) {
        pid_t pid = worker_pid(data_dir);
        if (pid > 0)
            return pid;
        usleep(10000);
    }
    fail_msg("no embcached worker for %s within 20 s", data_dir);
    return -1;
}

pid_t ect_daemon_crash(const char *data_dir, const char *socket)
{
    pid_t old = ect_daemon_worker(data_dir);

    if (kill(old, SIGKILL) < 0)
        fail_msg("kill -9 of worker %d: %s", (int)old, strerror(errno));
    return ect_daemon_wait_worker(data_dir, socket, old);
}

pid_t ect_daemon_wait_worker(const char *data_dir, const char *socket, pid_t old)
{
    for (int i = 0; i < 2000; i++) {
        pid_t now = worker_pid(data_dir);
        if (now > 0 && now != old && socket_ready(socket))
            return now;
        usleep(10000);
    }
    fail_msg("no new embcached worker served %s within 20 s", socket);
    return -1;
}

static char *slurp_fd(int fd, size_t *len_out)
{
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);

    for (;;) {
        ssize_t r;
        if (len + 1 >= cap)
            buf = realloc(buf, cap *= 2);
        r = read(fd, buf + len, cap - len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    buf[len] = '\0';
    if (len_out)
        *len_out = len;
    return buf;
}

int ect_run(const char *const *argv, char **out, size_t *out_len, char **err)
{
    char tmpl_o[] = "/tmp/ect-out-XXXXXX", tmpl_e[] = "/tmp/ect-err-XXXXXX";
    int fo = mkstemp(tmpl_o), fe = mkstemp(tmpl_e), status = 0;
    pid_t pid;

    if (fo < 0 || fe < 0)
        fail_msg("mkstemp: %s", strerror(errno));
    unlink(tmpl_o);
    unlink(tmpl_e);
    pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    waitpid(pid, &status, 0);
    lseek(fo, 0, SEEK_SET);
    lseek(fe, 0, SEEK_SET);
    if (out)
        *out = slurp_fd(fo, out_len);
    if (err)
        *err = slurp_fd(fe, NULL);
    close(fo);
    close(fe);
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

bool ect_redis_installed(void)
{
    return system("command -v redis-server >/dev/null 2>&1 && "
                  "command -v redis-cli >/dev/null 2>&1") == 0;
}

uint64_t ect_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool ect_port_free(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    bool ok;

    if (fd < 0)
        return false;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

int ect_port_base(unsigned *seed, int n, int span)
{
    int lo = 32768, hi = 60999, top;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");

    if (f) {
        if (fscanf(f, "%d %d", &lo, &hi) != 2)
            lo = 32768;
        fclose(f);
    }
    /* Below the ephemeral range: the outgoing connections of other tests
     * (thousands in TIME_WAIT after a failover test) cannot be on them. */
    top = lo - span - n;
    if (top < 10000 + 1000)
        top = 10000 + 1000; /* a range that low: take our chances */
    for (int t = 0; t < 200; t++) {
        int b = 10000 + (int)(rand_r(seed) % (unsigned)(top - 10000)), ok = 1;
        for (int i = 0; i < n && ok; i++)
            ok = ect_port_free(b + i) && (!span || ect_port_free(b + span + i));
        if (ok)
            return b;
    }
    return -1;
}

int ect_cluster_sh(const ect_cluster *c, const char *cmd, const char *arg2, char **out)
{
    const char *argv[] = {"/bin/bash", c->script, cmd, c->dir, arg2, NULL};
    char *o = NULL, *e = NULL;
    int rc = ect_run(argv, &o, NULL, &e);

    if (rc != 0)
        printf("cluster.sh %s: exit %d\n%s%s", cmd, rc, o ? o : "", e ? e : "");
    if (out)
        *out = o;
    else
        free(o);
    free(e);
    return rc;
}

int ect_cluster_start(ect_cluster *c, int nodes)
{
    unsigned seed = (unsigned)time(NULL) ^ ((unsigned)getpid() << 8);
    char base[16];
    int fds[2];

    c->base = 0;
    c->pipe = -1;
    c->watchdog = 0;
    for (int attempt = 0; attempt < 5 && !c->base; attempt++) {
        int b = ect_port_base(&seed, nodes, 10000);
        if (b < 0)
            break;
        snprintf(base, sizeof(base), "%d", b);
        if (ect_cluster_sh(c, "start", base, NULL) == 0)
            c->base = b;
        else
            ect_cluster_sh(c, "stop", NULL, NULL);
    }
    if (!c->base) {
        fprintf(stderr, "could not start a Redis cluster with %s (see above)\n", c->script);
        return -1;
    }
    /* The watchdog stops the cluster when this process ends, however: its read
     * returns when our end of the pipe closes. */
    if (pipe(fds) != 0) {
        ect_cluster_stop(c);
        return -1;
    }
    c->watchdog = fork();
    if (c->watchdog == 0) {
        char ch;
        close(fds[1]);
        setpgid(0, 0);
        while (read(fds[0], &ch, 1) < 0 && errno == EINTR) {
        }
        execl("/bin/bash", "bash", c->script, "stop", c->dir, (char *)NULL);
        _exit(127);
    }
    close(fds[0]);
    c->pipe = fds[1];
    return 0;
}

int ect_cluster_start_in(ect_cluster *c, const char *script, const char *parent, int nodes,
                         int seeds, char *url, size_t cap)
{
    snprintf(c->dir_buf, sizeof(c->dir_buf), "%s/cluster", parent);
    c->dir = c->dir_buf;
    c->script = script;
    if (ect_cluster_start(c, nodes) < 0)
        return -1;
    if (seeds > 1)
        snprintf(url, cap, "redis-cluster://127.0.0.1:%d,127.0.0.1:%d", c->base, c->base + 1);
    else
        snprintf(url, cap, "redis-cluster://127.0.0.1:%d", c->base);
    return 0;
}

void ect_cluster_stop(ect_cluster *c)
{
    if (c->base)
        ect_cluster_sh(c, "stop", NULL, NULL);
    c->base = 0;
    if (c->pipe >= 0) {
        close(c->pipe);
        c->pipe = -1;
        if (c->watchdog > 0)
            waitpid(c->watchdog, NULL, 0);
    }
    c->watchdog = 0;
}

unsigned ect_free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}
