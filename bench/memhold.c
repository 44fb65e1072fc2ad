/*
 * memhold.c - the memory holder of memhold.h: a child process that locks
 * anonymous memory until MemAvailable is down to a target.
 *
 * Parent and child share one page (MAP_SHARED | MAP_ANONYMOUS, made before
 * fork). The parent writes `leave`, then bumps cmd_seq (release); the child
 * sees cmd_seq move (acquire), adjusts, writes the status fields, then sets
 * ack_seq = cmd_seq (release); the parent reads the status after an acquire
 * load of ack_seq. `locked_now` and `shrinks` are written by the child
 * alone at any time (relaxed: counters for reports).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* close_range */
#endif
#include "bench/memhold.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256ull << 20)
#define PAGE 4096ull
#define WAIT_MS (600u * 1000u)

struct mh_shared {
    _Atomic uint64_t cmd_seq, ack_seq;
    uint64_t leave;                   /* parent, before cmd_seq */
    uint64_t floor;                   /* parent, before cmd_seq: give back below this */
    int track;                        /* parent, before cmd_seq: keep leave while idle */
    uint64_t avail_before, avail_after; /* child, before ack_seq */
    int err;                          /* child, before ack_seq */
    int floor_hit;                    /* child, before ack_seq */
    _Atomic uint64_t locked_now;      /* child, any time */
    _Atomic uint64_t shrinks;         /* child, any time */
    _Atomic uint64_t moves;           /* child, any time: tracking adjustments */
};

struct memhold {
    pid_t pid;
    struct mh_shared *sh;
};

struct chunk {
    unsigned char *p;
    uint64_t len;
};

uint64_t memhold_meminfo(const char *field)
{
    char buf[4096];
    int fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
    ssize_t n;
    size_t fl = strlen(field);

    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    for (char *p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, field, fl) && p[fl] == ':')
            return strtoull(p + fl + 1, NULL, 10) * 1024u;
    return 0;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- the child ---- */

static struct chunk *chunks;
static size_t nchunks, capchunks;
static uint64_t locked;

/* Give back up to `bytes` (page-rounded up) from the newest chunk. */
static void release_some(uint64_t bytes)
{
    struct chunk *c;
    uint64_t take;

    if (!nchunks)
        return;
    c = &chunks[nchunks - 1];
    take = bytes >= c->len ? c->len : (bytes + PAGE - 1) / PAGE * PAGE;
    if (take == 0)
        take = PAGE;
    if (take >= c->len) {
        munmap(c->p, c->len);
        locked -= c->len;
        nchunks--;
    } else {
        munmap(c->p + c->len - take, take);
        c->len -= take;
        locked -= take;
    }
}

static void release_all(void)
{
    while (nchunks)
        release_some(UINT64_MAX);
}

struct adjust_res {
    uint64_t avail_before, avail_after;
    int err, floor_hit;
};

/* Lock or unlock until MemAvailable is within MEMHOLD_TOL of leave. With
 * `once`, at most one chunk either way (the tracking step). Reports into
 * *res only: the shared status belongs to the command being answered. */
static void adjust(struct mh_shared *sh, uint64_t leave, bool once, struct adjust_res *res)
{
    uint64_t a = memhold_meminfo("MemAvailable");

    memset(res, 0, sizeof(*res));
    res->avail_before = a;
    if (leave == 0) {
        release_all();
        goto done;
    }
    while (a > leave + MEMHOLD_TOL) {
        uint64_t step = a - leave < CHUNK ? (a - leave) / PAGE * PAGE : CHUNK;
        void *p;
        if (nchunks == capchunks) {
            size_t cap = capchunks ? capchunks * 2 : 64;
            struct chunk *bigger = realloc(chunks, cap * sizeof(*bigger));
            if (!bigger) {
                res->err = ENOMEM;
                break;
            }
            chunks = bigger;
            capchunks = cap;
        }
        p = mmap(NULL, step, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (p == MAP_FAILED) {
            res->err = errno;
            break;
        }
        if (mlock(p, step) != 0) {
            res->err = errno;
            munmap(p, step);
            break;
        }
        chunks[nchunks].p = p;
        chunks[nchunks++].len = step;
        locked += step;
        atomic_store_explicit(&sh->locked_now, locked, memory_order_relaxed);
        a = memhold_meminfo("MemAvailable");
        if (a < sh->floor) { /* someone else needs it: give this chunk back */
            release_some(step);
            res->floor_hit = 1;
            a = memhold_meminfo("MemAvailable");
            break;
        }
        if (once)
            break;
    }
    while (a + MEMHOLD_TOL < leave && nchunks) {
        /* MemAvailable trails a lock or an unmap (per-CPU page lists and
         * counters): read it again once settled before giving memory
         * back, or one lagging reading unlocks everything */
        usleep(20000);
        a = memhold_meminfo("MemAvailable");
        if (a + MEMHOLD_TOL >= leave)
            break;
        release_some(leave - a);
        a = memhold_meminfo("MemAvailable");
        if (once)
            break;
    }
done:
    res->avail_after = a;
    atomic_store_explicit(&sh->locked_now, locked, memory_order_relaxed);
}

static void child_main(struct mh_shared *sh, pid_t parent)
{
    int fd;
    uint64_t seen = 0;

    setpgid(0, 0); /* a terminal's Ctrl-C reaches the bench, which kills us */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(1);
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    close_range(0, ~0u, 0);
    fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) { /* if the machine runs out of memory anyway, we go first */
        ssize_t w = write(fd, "1000", 4);
        (void)w;
        close(fd);
    }
    for (;;) {
        uint64_t cmd = atomic_load_explicit(&sh->cmd_seq, memory_order_acquire);
        if (cmd != seen) {
            struct adjust_res r;
            adjust(sh, sh->leave, false, &r);
            sh->avail_before = r.avail_before;
            sh->avail_after = r.avail_after;
            sh->err = r.err;
            sh->floor_hit = r.floor_hit;
            seen = cmd;
            atomic_store_explicit(&sh->ack_seq, cmd, memory_order_release);
            continue;
        }
        uint64_t a = memhold_meminfo("MemAvailable");
        if (nchunks && a < sh->floor) {
            release_some(CHUNK);
            atomic_store_explicit(&sh->locked_now, locked, memory_order_relaxed);
            atomic_fetch_add_explicit(&sh->shrinks, 1, memory_order_relaxed);
            continue;
        }
        if (sh->track && sh->leave &&
            (a > sh->leave + 2 * MEMHOLD_TOL || (a + 2 * MEMHOLD_TOL < sh->leave && nchunks))) {
            /* other processes freed or took memory: keep what is left where it was */
            struct adjust_res r;
            adjust(sh, sh->leave, true, &r);
            atomic_fetch_add_explicit(&sh->moves, 1, memory_order_relaxed);
        }
        sleep_ms(20);
    }
}

/* ---- the parent ---- */

static uint64_t read_u64_file(const char *path)
{
    char buf[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    return strtoull(buf, NULL, 10); /* "max" reads as 0: no limit */
}

/* The tightest memory cgroup limit on this process that we can read, 0 if
 * none (or none readable). Reading only: we never create or change one. */
static uint64_t cgroup_limit(char *where, size_t len)
{
    char buf[4096], path[4400];
    uint64_t best = 0;
    int fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
    ssize_t n;

    where[0] = '\0';
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        char *p = strrchr(line, ':');
        uint64_t v = 0;
        if (!p)
            continue;
        if (!strncmp(line, "0::", 3)) {
            snprintf(path, sizeof(path), "/sys/fs/cgroup%s/memory.max", p + 1);
            v = read_u64_file(path);
        } else if (strstr(line, ":memory:")) {
            snprintf(path, sizeof(path), "/sys/fs/cgroup/memory%s/memory.limit_in_bytes", p + 1);
            v = read_u64_file(path);
            if (!v) { /* a namespaced mount shows our cgroup as its root */
                snprintf(path, sizeof(path), "/sys/fs/cgroup/memory/memory.limit_in_bytes");
                v = read_u64_file(path);
            }
        }
        if (v && (!best || v < best)) {
            best = v;
            snprintf(where, len, "%.*s", (int)(len > 1 ? len - 1 : 0), path);
        }
    }
    return best;
}

int memhold_start(memhold **out, char *note, size_t note_len)
{
    memhold *h;
    char where[256];
    uint64_t total = memhold_meminfo("MemTotal"), lim = cgroup_limit(where, sizeof(where));
    pid_t parent = getpid();

    if (lim && total && lim < total) {
        snprintf(note, note_len, "a memory cgroup limit of %" PRIu64 " MiB applies (%s): "
                 "MemAvailable does not describe what the page cache may use; run the bench "
                 "outside that cgroup", lim >> 20, where);
        return -1;
    }
    h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(note, note_len, "memory holder: out of memory");
        return -1;
    }
    h->sh = mmap(NULL, sizeof(*h->sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
                 0);
    if (h->sh == MAP_FAILED) {
        snprintf(note, note_len, "memory holder: mmap: %s", strerror(errno));
        free(h);
        return -1;
    }
    memset(h->sh, 0, sizeof(*h->sh));
    fflush(NULL);
    h->pid = fork();
    if (h->pid < 0) {
        snprintf(note, note_len, "memory holder: fork: %s", strerror(errno));
        munmap(h->sh, sizeof(*h->sh));
        free(h);
        return -1;
    }
    if (h->pid == 0)
        child_main(h->sh, parent);
    setpgid(h->pid, h->pid);
    *out = h;
    return 0;
}

static bool holder_alive(memhold *h)
{
    int st;
    if (h->pid <= 0)
        return false;
    if (waitpid(h->pid, &st, WNOHANG) == h->pid) {
        h->pid = 0;
        return false;
    }
    return true;
}

int memhold_poll(memhold *h, memhold_status *st)
{
    memset(st, 0, sizeof(*st));
    if (!h || !holder_alive(h))
        return -1;
    st->leave = h->sh->leave;
    st->locked = atomic_load_explicit(&h->sh->locked_now, memory_order_relaxed);
    st->shrinks = atomic_load_explicit(&h->sh->shrinks, memory_order_relaxed);
    st->moves = atomic_load_explicit(&h->sh->moves, memory_order_relaxed);
    st->avail_after = memhold_meminfo("MemAvailable");
    return 0;
}

int memhold_set(memhold *h, uint64_t leave, bool track, const volatile sig_atomic_t *stop,
                memhold_status *st, char *note, size_t note_len)
{
    uint64_t cmd;
    struct rlimit rl;

    memset(st, 0, sizeof(*st));
    st->leave = leave;
    if (!h || !holder_alive(h)) {
        snprintf(note, note_len, "the memory holder is gone (killed, perhaps by the OOM killer)");
        return -1;
    }
    h->sh->leave = leave;
    h->sh->track = track;
    /* below the floor the holder gives memory back; a small target gets a
     * floor under it, not above it */
    h->sh->floor = leave / 2 < MEMHOLD_FLOOR ? leave / 2 : MEMHOLD_FLOOR;
    cmd = atomic_fetch_add_explicit(&h->sh->cmd_seq, 1, memory_order_release) + 1;
    for (unsigned ms = 0; atomic_load_explicit(&h->sh->ack_seq, memory_order_acquire) != cmd;
         ms += 5) {
        if (!holder_alive(h)) {
            snprintf(note, note_len, "the memory holder died while locking (the OOM killer?)");
            return -1;
        }
        if ((stop && *stop) || ms > WAIT_MS) {
            snprintf(note, note_len, "%s while the memory holder was locking",
                     stop && *stop ? "interrupted" : "timed out");
            return -1;
        }
        sleep_ms(5);
    }
    st->locked = atomic_load_explicit(&h->sh->locked_now, memory_order_relaxed);
    st->avail_before = h->sh->avail_before;
    st->avail_after = h->sh->avail_after;
    st->shrinks = atomic_load_explicit(&h->sh->shrinks, memory_order_relaxed);
    st->moves = atomic_load_explicit(&h->sh->moves, memory_order_relaxed);
    st->err = h->sh->err;
    if (leave == 0)
        return 0;
    if (h->sh->floor_hit) {
        snprintf(note, note_len, "the memory holder stopped at its safety floor (MemAvailable "
                 "fell below %" PRIu64 " MiB while locking): other processes need the memory",
                 h->sh->floor >> 20);
        return -1;
    }
    if (st->avail_after > leave + 2 * MEMHOLD_TOL && st->err) {
        char lim[32] = "unlimited";
        if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
            snprintf(lim, sizeof(lim), "%" PRIu64 " KiB", (uint64_t)rl.rlim_cur >> 10);
        snprintf(note, note_len, "mlock refused after %" PRIu64 " MiB: %s (RLIMIT_MEMLOCK %s; "
                 "run as root or raise ulimit -l)", st->locked >> 20, strerror(st->err), lim);
        return -1;
    }
    if (st->avail_after + 2 * MEMHOLD_TOL < leave) {
        snprintf(note, note_len, "MemAvailable is %" PRIu64 " MiB with nothing locked, below "
                 "the %" PRIu64 " MiB this comparison needs", st->avail_after >> 20, leave >> 20);
        return -1;
    }
    if (st->avail_after > leave + 2 * MEMHOLD_TOL) {
        snprintf(note, note_len, "the memory holder could not bring MemAvailable down to %" PRIu64
                 " MiB (it is %" PRIu64 " MiB)", leave >> 20, st->avail_after >> 20);
        return -1;
    }
    return 0;
}

pid_t memhold_pid(const memhold *h)
{
    return h ? h->pid : 0;
}

void memhold_stop(memhold *h)
{
    int st;

    if (!h)
        return;
    if (h->pid > 0) {
        kill(h->pid, SIGKILL);
        while (waitpid(h->pid, &st, 0) < 0 && errno == EINTR) {
        }
    }
    munmap(h->sh, sizeof(*h->sh));
    free(h);
}
