/*
 * daemon_check.c - `embcached --check`: the configuration (file and
 * command line) checked as a start would check it, then the machine it
 * would run on, one report line per check: "ok", "warn" (it runs, slower
 * or with less) or "FAIL" (it would not start, or not serve), what was
 * found and what to do. Also the data directory rule the daemon applies at
 * start (ec_dconf_dir_is_ours).
 *
 * Called by tools/embcached.c (--check, and dir_is_ours at every start), in
 * that one process and thread. Reads only: it creates, binds for good and
 * starts nothing (the metrics port is bound and closed at once; io_uring is
 * probed with a ring it tears down).
 */
#include "core/daemon_config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/paths.h"
#include "cuda/backend.h"

int ec_dconf_dir_is_ours(const char *path, bool sub, char *why, size_t cap)
{
    struct stat st;

    if ((sub ? lstat(path, &st) : stat(path, &st)) < 0) {
        if (errno == ENOENT)
            return 1;
        snprintf(why, cap, "cannot inspect %s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(why, cap, "%s is not a directory%s; %s", path,
                 S_ISLNK(st.st_mode) ? " (a symbolic link)" : "",
                 sub ? "remove it, or start with a new data directory" : "pick another");
        return -1;
    }
    if (st.st_uid != geteuid() || (st.st_mode & 022)) {
        snprintf(why, cap,
                 "%s directory %s is owned by uid %u with mode %04o: it must belong to uid %u "
                 "and not be writable by group or others (chown %u %s; chmod go-w %s)",
                 sub ? "data subdirectory" : "data", path, (unsigned)st.st_uid,
                 (unsigned)(st.st_mode & 07777), (unsigned)geteuid(), (unsigned)geteuid(), path,
                 path);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* The report                                                          */

struct report {
    FILE *out;
    unsigned ok, warn, fail;
};

enum { OK, WARN, FAIL };

__attribute__((format(printf, 4, 5))) static void line(struct report *r, int level,
                                                       const char *what, const char *fmt, ...)
{
    static const char *const tag[] = {"ok", "warn", "FAIL"};
    va_list ap;

    fprintf(r->out, "%-4s  %-12s ", tag[level], what);
    va_start(ap, fmt);
    vfprintf(r->out, fmt, ap);
    va_end(ap);
    fputc('\n', r->out);
    *(level == OK ? &r->ok : level == WARN ? &r->warn : &r->fail) += 1;
}

static void fmt_bytes(uint64_t v, char *b, size_t cap)
{
    if (v >= (1ull << 30))
        snprintf(b, cap, "%.1fG", (double)v / (1ull << 30));
    else
        snprintf(b, cap, "%.0fM", (double)v / (1ull << 20));
}

/* A "Key:   N kB" line of /proc/meminfo, in bytes (pages for HugePages_*);
 * -1 when absent. */
static long long meminfo(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "re");
    char l[256];
    size_t kl = strlen(key);
    long long v = -1;

    if (!f)
        return -1;
    while (fgets(l, sizeof(l), f))
        if (!strncmp(l, key, kl) && l[kl] == ':') {
            v = strtoll(l + kl + 1, NULL, 10);
            if (strstr(l, "kB"))
                v *= 1024;
            break;
        }
    fclose(f);
    return v;
}

/* The bracketed choice of a /sys/kernel/mm/transparent_hugepage file. */
static bool thp_mode(const char *file, char *mode, size_t cap)
{
    char path[128], l[256], *a, *b;
    FILE *f;

    snprintf(path, sizeof(path), "/sys/kernel/mm/transparent_hugepage/%s", file);
    if (!(f = fopen(path, "re")))
        return false;
    a = fgets(l, sizeof(l), f) ? strchr(l, '[') : NULL;
    fclose(f);
    if (!a || !(b = strchr(a, ']')))
        return false;
    snprintf(mode, cap, "%.*s", (int)(b - a - 1), a + 1);
    return true;
}

/* This process's cgroup v2 memory limit less what it uses; UINT64_MAX when
 * there is none (or no cgroup v2). */
static uint64_t cgroup_room(uint64_t *limit)
{
    char rel[512] = "", path[700], l[64];
    char buf[1024];
    unsigned long long max = 0, cur = 0;
    FILE *f = fopen("/proc/self/cgroup", "re");

    *limit = UINT64_MAX;
    if (f) {
        while (fgets(buf, sizeof(buf), f))
            if (!strncmp(buf, "0::", 3)) {
                snprintf(rel, sizeof(rel), "%.500s", buf + 3);
                rel[strcspn(rel, "\n")] = '\0';
            }
        fclose(f);
    }
    if (!*rel)
        return UINT64_MAX;
    snprintf(path, sizeof(path), "/sys/fs/cgroup%s/memory.max", rel);
    if (!(f = fopen(path, "re")))
        return UINT64_MAX;
    if (!fgets(l, sizeof(l), f) || sscanf(l, "%llu", &max) != 1) { /* "max" */
        fclose(f);
        return UINT64_MAX;
    }
    fclose(f);
    snprintf(path, sizeof(path), "/sys/fs/cgroup%s/memory.current", rel);
    if ((f = fopen(path, "re"))) {
        if (!fgets(l, sizeof(l), f) || sscanf(l, "%llu", &cur) != 1)
            cur = 0;
        fclose(f);
    }
    *limit = max;
    return max > cur ? max - cur : 0;
}

/* ------------------------------------------------------------------ */
/* The checks                                                          */

static void check_data_dir(struct report *r, const ec_dconf *c)
{
    const char *dir = *c->data_dir ? c->data_dir : getenv("EMBCACHE_DATA_DIR");
    char why[1200], sub[PATH_MAX + 16], parent[PATH_MAX];
    int rc;

    if (!dir || !*dir)
        dir = "embcache-data";
    rc = ec_dconf_dir_is_ours(dir, false, why, sizeof(why));
    if (rc < 0) {
        line(r, FAIL, "data-dir", "%s", why);
        return;
    }
    if (rc == 1) {
        char *slash;
        snprintf(parent, sizeof(parent), "%s", dir);
        slash = strrchr(parent, '/');
        if (!slash)
            snprintf(parent, sizeof(parent), ".");
        else if (slash == parent)
            parent[1] = '\0';
        else
            *slash = '\0';
        if (access(parent, W_OK | X_OK) < 0)
            line(r, FAIL, "data-dir", "%s does not exist and cannot be created in %s (%s); "
                 "create it (owned by uid %u, mode 0700) or pass another --data-dir",
                 dir, parent, strerror(errno), (unsigned)geteuid());
        else
            line(r, WARN, "data-dir", "%s does not exist: it will be created (mode 0700)", dir);
        return;
    }
    for (size_t i = 0; i < 2; i++) {
        snprintf(sub, sizeof(sub), "%s/%s", dir, ec_dconf_subdirs[i]);
        if (ec_dconf_dir_is_ours(sub, true, why, sizeof(why)) < 0) {
            line(r, FAIL, "data-dir", "%s", why);
            return;
        }
    }
    if (access(dir, W_OK | X_OK) < 0) {
        line(r, FAIL, "data-dir", "%s is not writable by uid %u: %s", dir, (unsigned)geteuid(),
             strerror(errno));
        return;
    }
    line(r, OK, "data-dir", "%s: a directory of uid %u that others cannot write", dir,
         (unsigned)geteuid());
}

/* The rules of the socket's directory are server.c's socket_dir(). */
static void check_socket(struct report *r, const ec_dconf *c)
{
    char buf[108], dir[PATH_MAX], *slash;
    const char *path = *c->socket ? c->socket : ec_default_socket(buf, sizeof(buf));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        line(r, FAIL, "socket", "%s is longer than %zu bytes; pick a shorter --socket", path,
             sizeof(sa.sun_path) - 1);
        return;
    }
    ec_socket_dir_of(path, dir, sizeof(dir));
    if (lstat(dir, &st) < 0) {
        char parent[PATH_MAX];
        snprintf(parent, sizeof(parent), "%s", dir);
        slash = strrchr(parent, '/');
        if (slash && slash != parent)
            *slash = '\0';
        else
            snprintf(parent, sizeof(parent), "%s", slash ? "/" : ".");
        if (errno == ENOENT && access(parent, W_OK | X_OK) == 0)
            line(r, WARN, "socket", "%s: its directory %s does not exist: it will be created",
                 path, dir);
        else
            line(r, FAIL, "socket", "%s: its directory %s cannot be created (%s); create it or "
                 "pass another --socket", path, dir, strerror(errno == ENOENT ? EACCES : errno));
        return;
    }
    if (!ec_socket_dir_safe(dir, &st)) {
        line(r, FAIL, "socket", "the socket directory %s is %s owned by uid %u with mode %04o: "
             "another user could put a socket of theirs in this daemon's place; remove it, or "
             "pass --socket in a directory of your own", dir,
             S_ISDIR(st.st_mode) ? "a directory" : "not a directory", (unsigned)st.st_uid,
             (unsigned)(st.st_mode & 07777));
        return;
    }
    if (access(dir, W_OK | X_OK) < 0) {
        line(r, FAIL, "socket", "the socket directory %s is not writable by uid %u: %s", dir,
             (unsigned)geteuid(), strerror(errno));
        return;
    }
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        close(fd);
        line(r, FAIL, "socket", "another embcached is already listening on %s; stop it or "
             "pass another --socket", path);
        return;
    }
    if (fd >= 0)
        close(fd);
    line(r, OK, "socket", "%s (directory %s is writable and safe)", path, dir);
}

/* The segment is an anonymous memfd, reserved whole at start
 * (posix_fallocate): what bounds it is memory (and swap) and the memory
 * cgroup, not /dev/shm's size, which is reported for reference. */
static void check_shm(struct report *r, const ec_dconf *c)
{
    uint64_t need = c->srv.shm_size, limit, room = cgroup_room(&limit);
    long long avail = meminfo("MemAvailable"), swap = meminfo("SwapFree");
    char n[32], a[32], shm[64] = "unknown", lim[48] = "none";
    struct statvfs sv;

    fmt_bytes(need, n, sizeof(n));
    if (statvfs("/dev/shm", &sv) == 0) {
        fmt_bytes((uint64_t)sv.f_bavail * sv.f_frsize, shm, sizeof(shm));
        strcat(shm, " free");
    }
    if (limit != UINT64_MAX)
        fmt_bytes(limit, lim, sizeof(lim));
    if (avail < 0) {
        line(r, WARN, "shm", "segment %s: cannot read MemAvailable in /proc/meminfo to tell "
             "whether it fits", n);
        return;
    }
    avail += swap > 0 ? swap : 0;
    fmt_bytes((uint64_t)avail, a, sizeof(a));
    if (need > (uint64_t)avail)
        line(r, FAIL, "shm", "segment %s (--shm-size) is more than the %s of memory and swap "
             "available: the daemon could not reserve it; pass a smaller --shm-size or free "
             "memory (/dev/shm: %s)", n, a, shm);
    else if (need > room)
        line(r, FAIL, "shm", "segment %s (--shm-size) is more than this memory cgroup has left "
             "(limit %s): pass a smaller --shm-size or raise MemoryMax=", n, lim);
    else if (need > (uint64_t)avail / 10 * 9)
        line(r, WARN, "shm", "segment %s takes most of the %s available (memory and swap); "
             "other processes may be pushed to swap", n, a);
    else
        line(r, OK, "shm", "segment %s fits: %s available (memory and swap), cgroup limit "
             "%s; an anonymous memfd, not /dev/shm (%s)", n, a, lim, shm);
}

static void check_uring(struct report *r, const ec_dconf *c)
{
    struct io_uring ring;
    int rc;

    if (c->srv.pager == 2) {
        line(r, OK, "io_uring", "not used (--pager pread)");
        return;
    }
    rc = io_uring_queue_init(8, &ring, 0);
    if (rc == 0) {
        io_uring_queue_exit(&ring);
        line(r, OK, "io_uring", "available: the pager reads with io_uring");
    } else if (c->srv.pager == 1) {
        line(r, FAIL, "io_uring", "unavailable (%s) but --pager io_uring asks for it: pass "
             "--pager auto or pread, or allow io_uring (sysctl kernel.io_uring_disabled=0; a "
             "container's seccomp profile)", strerror(-rc));
    } else {
        line(r, WARN, "io_uring", "unavailable (%s): the pager will use pread threads "
             "(--io-threads); allow io_uring for fewer threads and faster misses",
             strerror(-rc));
    }
}

static void check_hugepages(struct report *r)
{
    char thp[32] = "?", shmem[32] = "?";
    long long total = meminfo("HugePages_Total"), freep = meminfo("HugePages_Free");
    bool have_thp = thp_mode("enabled", thp, sizeof(thp));
    bool have_shmem = thp_mode("shmem_enabled", shmem, sizeof(shmem));

    if (!have_thp && !have_shmem) {
        line(r, WARN, "huge-pages", "cannot read /sys/kernel/mm/transparent_hugepage: the "
             "segment is mapped with 4 KiB pages as far as can be told");
        return;
    }
    if (!strcmp(shmem, "always") || !strcmp(shmem, "within_size") || !strcmp(shmem, "force"))
        line(r, OK, "huge-pages", "THP %s, shmem THP %s: the segment gets 2 MiB pages; "
             "hugetlbfs pages %lld (%lld free, not used)", thp, shmem, total, freep);
    else
        line(r, WARN, "huge-pages", "shmem THP is '%s' (THP %s): the segment is mapped with "
             "4 KiB pages (more TLB misses on large tables); echo within_size > "
             "/sys/kernel/mm/transparent_hugepage/shmem_enabled to use 2 MiB pages", shmem, thp);
}

static void check_gpu(struct report *r, const ec_dconf *c)
{
    const ec_backend *b = ec_backend_get(EC_BACKEND_AUTO);
    int n = b && b->slab_create ? b->device_count() : 0;
    char why[256] = "", slab[48];

    if (!b || strcmp(b->name, "cuda")) {
        const ec_backend *cuda = ec_backend_cuda_probe();
        if (!cuda)
            snprintf(why, sizeof(why), " (%s)", ec_last_error());
    }
    if (c->srv.gpu_slab == 0)
        snprintf(slab, sizeof(slab), "off (--gpu-slab 0)");
    else if (c->srv.gpu_slab == UINT64_MAX)
        snprintf(slab, sizeof(slab), "1/16 of each GPU");
    else
        fmt_bytes(c->srv.gpu_slab, slab, sizeof(slab));
    if (n > 0)
        line(r, OK, "gpu", "%s backend, %d GPU(s); device tier: %s", b->name, n, slab);
    else
        line(r, OK, "gpu", "none: %s backend%s; clients gather from host memory",
             b ? b->name : "no", why);
}

static void check_fds(struct report *r, const ec_dconf *c)
{
    struct rlimit rl;
    unsigned want = c->srv.max_clients ? c->srv.max_clients : 1024;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
        line(r, WARN, "descriptors", "getrlimit: %s", strerror(errno));
        return;
    }
    /* The daemon raises its soft limit to the hard one and keeps a quarter
     * for partition files. */
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max / 4 * 3 < (rlim_t)want + 64)
        line(r, WARN, "descriptors", "hard limit %llu leaves about %llu for clients, fewer "
             "than --max-clients %u: raise it (LimitNOFILE= in the unit, ulimit -Hn) or lower "
             "--max-clients", (unsigned long long)rl.rlim_max,
             (unsigned long long)(rl.rlim_max / 4 * 3 > 64 ? rl.rlim_max / 4 * 3 - 64 : 0),
             want);
    else
        line(r, OK, "descriptors", "hard limit %s%llu, enough for --max-clients %u",
             rl.rlim_max == RLIM_INFINITY ? "unlimited " : "",
             rl.rlim_max == RLIM_INFINITY ? 0ULL : (unsigned long long)rl.rlim_max, want);
}

static void check_memlock(struct report *r, const ec_dconf *c)
{
    struct rlimit rl;
    char have[32], need[32];

    if (c->srv.pager == 2) {
        line(r, OK, "memlock", "not needed (--pager pread)");
        return;
    }
    if (getrlimit(RLIMIT_MEMLOCK, &rl) < 0) {
        line(r, WARN, "memlock", "getrlimit: %s", strerror(errno));
        return;
    }
    fmt_bytes(c->srv.shm_size, need, sizeof(need));
    if (rl.rlim_cur == RLIM_INFINITY || geteuid() == 0) {
        line(r, OK, "memlock", "%s: io_uring can register the segment as fixed buffers",
             rl.rlim_cur == RLIM_INFINITY ? "unlimited" : "root");
        return;
    }
    fmt_bytes(rl.rlim_cur, have, sizeof(have));
    if (rl.rlim_cur < c->srv.shm_size)
        line(r, WARN, "memlock", "RLIMIT_MEMLOCK %s is below the segment's %s: io_uring reads "
             "into plain buffers, not fixed ones; raise it (LimitMEMLOCK=infinity, ulimit -l)",
             have, need);
    else
        line(r, OK, "memlock", "RLIMIT_MEMLOCK %s covers the segment (%s)", have, need);
}

static void check_metrics(struct report *r, const ec_dconf *c)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    int fd, one = 1;

    if (!c->srv.metrics_port) {
        line(r, OK, "metrics", "off (no --metrics-listen)");
        return;
    }
    sa.sin_port = htons((uint16_t)c->srv.metrics_port);
    inet_pton(AF_INET, c->srv.metrics_addr, &sa.sin_addr);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        line(r, FAIL, "metrics", "cannot bind %s:%u: %s; pick another --metrics-listen or stop "
             "what listens there", c->srv.metrics_addr, c->srv.metrics_port, strerror(errno));
    } else {
        line(r, OK, "metrics", "%s:%u can be bound", c->srv.metrics_addr, c->srv.metrics_port);
    }
    if (fd >= 0)
        close(fd);
}

int ec_dconf_check(const ec_dconf_args *a, FILE *out)
{
    struct report r = {.out = out};
    ec_dconf *c = malloc(sizeof(*c));
    ec_dconf_errs *e = malloc(sizeof(*e));
    char *desc = malloc(4096);
    int rc;

    if (!c || !e || !desc) {
        fprintf(stderr, "embcached: out of memory\n");
        free(c);
        free(e);
        free(desc);
        return 1;
    }
    /* The checks report; the library's own log lines (the GPU probe's)
     * would only repeat them. */
    ec_log_init("embcached", EC_LOG_ERROR);
    if (ec_dconf_build(a, c, e) < 0) {
        for (int i = 0; i < e->n; i++)
            if (!strncmp(e->msg[i], "--", 2))
                fprintf(stderr, "embcached: %s\n", e->msg[i]);
        if (e->cmdline) {
            rc = 2; /* bad usage, as without --check */
            goto out;
        }
        for (int i = 0; i < e->n; i++)
            line(&r, FAIL, "config", "%s", e->msg[i]);
        if (e->total > e->n)
            line(&r, FAIL, "config", "and %d more errors", e->total - e->n);
        fprintf(out, "skipped: the other checks (fix the configuration first)\n");
    } else {
        ec_dconf_describe(c, desc, 4096);
        if (*c->file)
            line(&r, OK, "config", "%s parsed: %u key(s)%s%s", c->file, c->keys,
                 *desc ? "; set: " : "", desc);
        else
            line(&r, OK, "config", "no configuration file (%s)%s%s",
                 a->file_named ? "--config none or EMBCACHE_CONFIG empty"
                               : EC_DCONF_DEFAULT_FILE " does not exist",
                 *desc ? "; set: " : "", desc);
        check_data_dir(&r, c);
        check_socket(&r, c);
        check_shm(&r, c);
        check_uring(&r, c);
        check_hugepages(&r);
        check_gpu(&r, c);
        check_fds(&r, c);
        check_memlock(&r, c);
        check_metrics(&r, c);
    }
    fprintf(out, "embcached --check: %u ok, %u warn, %u FAIL\n", r.ok, r.warn, r.fail);
    rc = r.fail ? 1 : 0;
out:
    free(c);
    free(e);
    free(desc);
    return rc;
}
