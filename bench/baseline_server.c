/*
 * baseline_server.c - run a server program (redis-server, memcached) as a
 * child of the bench on a Unix socket in its private directory (or a free
 * loopback port), wait until it listens, and stop it by pid. Called by the
 * Redis and memcached baselines' open() and close(), in the bench's one
 * thread; see baseline_server.h.
 *
 * Invariants:
 *  1. A child is in live[] from fork() until it has been reaped: its slot's
 *     pid is published (release) by the parent right after fork() and
 *     cleared only after waitpid() returned it. The atexit and signal
 *     handlers kill what live[] holds, so no exit path leaves a server.
 *  2. A slot's dir[], log[] and sock[] are written before its pid is
 *     published and not changed while it is; the signal handler reads them
 *     after an acquire load of the pid, and only uses async-signal-safe
 *     calls (kill, unlink, rmdir, sigaction, raise).
 *  3. Each child runs in its own process group (pgid == pid), so killing
 *     -pid reaches anything it forked; it dies with the bench
 *     (PR_SET_PDEATHSIG) even when the bench is SIGKILLed.
 */
#include "baseline_server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/tcp.h>
#include <time.h>
#include <unistd.h>

#define EC_BL_MAX_LIVE 16
#define EC_BL_MAX_ARGS 64
#define EC_BL_PORT_TRIES 5
#define EC_BL_START_TIMEOUT_MS 10000
#define EC_BL_TERM_GRACE_MS 3000
#define EC_BL_LOG_NAME "server.log"
#define EC_BL_SOCK_NAME "server.sock"

typedef struct ec_bl_slot {
    _Atomic pid_t pid; /* 0: free; -1: reserved by the parent before fork() */
    pid_t owner;       /* the process that started it: a forked child of the
                        * bench inherits live[] but must not kill its parent's
                        * servers when it exits */
    char dir[160];
    char log[192];
    char sock[192]; /* the Unix socket, "" for TCP */
} ec_bl_slot;

_Static_assert(sizeof(((ec_bl_slot *)0)->log) >=
                   sizeof(((ec_bl_slot *)0)->dir) + sizeof("/" EC_BL_LOG_NAME),
               "a slot's log path is its dir plus the log name");

struct ec_bl_server {
    pid_t pid;
    int port;     /* 0 on a Unix socket */
    int slot;
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* "" for TCP */
};

static ec_bl_slot live[EC_BL_MAX_LIVE];
static ec_bl_transport transport = EC_BL_UNIX;
static char tmpdir_override[128];

void ec_bl_set_transport(ec_bl_transport t)
{
    transport = t;
}

ec_bl_transport ec_bl_get_transport(void)
{
    return transport;
}

void ec_bl_set_tmpdir(const char *dir)
{
    if (dir == NULL || strlen(dir) >= sizeof tmpdir_override)
        tmpdir_override[0] = '\0';
    else
        snprintf(tmpdir_override, sizeof tmpdir_override, "%s", dir);
}
static _Atomic pid_t last_pid;
static bool handlers_installed;
static const int cleanup_signals[3] = {SIGINT, SIGTERM, SIGHUP};

void ec_bl_note(char *note, size_t note_len, const char *fmt, ...)
{
    if (note == NULL || note_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(note, note_len, fmt, ap);
    va_end(ap);
}

size_t ec_bl_format_key(char *buf, uint64_t row)
{
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + row % 10u);
        row /= 10u;
    } while (row != 0);
    buf[0] = 'r';
    buf[1] = ':';
    for (size_t i = 0; i < n; i++)
        buf[2 + i] = digits[n - 1 - i];
    return 2 + n;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ------------------------------------------------------------------------
 * Cleanup: atexit and signal handlers over live[] (invariants 1 and 2). */

void ec_bl_server_kill_all(void)
{
    for (int i = 0; i < EC_BL_MAX_LIVE; i++) {
        pid_t pid = atomic_load_explicit(&live[i].pid, memory_order_acquire);
        if (pid > 0 && live[i].owner == getpid()) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
        }
    }
}

/* Async-signal-safe: the log, the socket and the (otherwise empty)
 * directory. */
static void remove_dirs_signal_safe(void)
{
    for (int i = 0; i < EC_BL_MAX_LIVE; i++) {
        pid_t pid = atomic_load_explicit(&live[i].pid, memory_order_acquire);
        if (pid > 0 && live[i].owner == getpid()) {
            unlink(live[i].log);
            if (live[i].sock[0] != '\0')
                unlink(live[i].sock);
            rmdir(live[i].dir);
        }
    }
}

static void on_fatal_signal(int sig)
{
    int saved_errno = errno;
    ec_bl_server_kill_all();
    remove_dirs_signal_safe();
    /* Die of the signal as the program would have without us. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    raise(sig);
    errno = saved_errno;
}

static void on_exit_cleanup(void)
{
    ec_bl_server_kill_all();
    for (int i = 0; i < EC_BL_MAX_LIVE; i++) {
        pid_t pid = atomic_load_explicit(&live[i].pid, memory_order_acquire);
        if (pid > 0 && live[i].owner == getpid()) {
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
            }
            unlink(live[i].log);
            if (live[i].sock[0] != '\0')
                unlink(live[i].sock);
            rmdir(live[i].dir);
            atomic_store_explicit(&live[i].pid, 0, memory_order_release);
        }
    }
}

/* Once per process: atexit, and SIGINT/SIGTERM/SIGHUP handlers where the
 * program left the default action (a program with its own handlers calls
 * ec_bl_server_kill_all() from them). */
static void install_cleanup(void)
{
    if (handlers_installed)
        return;
    handlers_installed = true;
    atexit(on_exit_cleanup);
    for (int i = 0; i < 3; i++) {
        struct sigaction old;
        if (sigaction(cleanup_signals[i], NULL, &old) != 0)
            continue;
        if ((old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL)
            continue;
        struct sigaction act;
        memset(&act, 0, sizeof act);
        act.sa_handler = on_fatal_signal;
        sigemptyset(&act.sa_mask);
        act.sa_flags = SA_RESTART;
        sigaction(cleanup_signals[i], &act, NULL);
    }
}

static int slot_reserve(void)
{
    for (int i = 0; i < EC_BL_MAX_LIVE; i++) {
        pid_t expect = 0;
        if (atomic_compare_exchange_strong_explicit(&live[i].pid, &expect, -1,
                                                    memory_order_acq_rel, memory_order_relaxed))
            return i;
    }
    return -1;
}

static void slot_release(int i)
{
    atomic_store_explicit(&live[i].pid, 0, memory_order_release);
}

pid_t ec_bl_server_last_pid(void)
{
    return atomic_load_explicit(&last_pid, memory_order_acquire);
}

size_t ec_bl_server_live_count(void)
{
    size_t n = 0;
    pid_t self = getpid();
    for (int i = 0; i < EC_BL_MAX_LIVE; i++)
        if (atomic_load_explicit(&live[i].pid, memory_order_acquire) > 0 && live[i].owner == self)
            n++;
    return n;
}

/* ------------------------------------------------------------------------
 * Program lookup, ports, directories. */

static bool is_executable_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

static bool search_path(const char *name, char *out, size_t out_len)
{
    const char *path = getenv("PATH");
    if (path == NULL || *path == '\0')
        path = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
    while (*path != '\0') {
        const char *end = strchr(path, ':');
        size_t len = end != NULL ? (size_t)(end - path) : strlen(path);
        int n = len == 0 ? snprintf(out, out_len, "./%s", name)
                         : snprintf(out, out_len, "%.*s/%s", (int)len, path, name);
        if (n > 0 && (size_t)n < out_len && is_executable_file(out))
            return true;
        if (end == NULL)
            break;
        path = end + 1;
    }
    return false;
}

int ec_bl_find_program(const ec_bl_server_spec *spec, char *path, size_t path_len, char *note,
                       size_t note_len)
{
    const char *over = spec->env_override != NULL ? getenv(spec->env_override) : NULL;
    if (over != NULL && *over != '\0') {
        bool ok;
        if (strchr(over, '/') != NULL) {
            ok = strlen(over) < path_len && is_executable_file(over);
            if (ok)
                snprintf(path, path_len, "%s", over);
        } else {
            ok = search_path(over, path, path_len);
        }
        if (!ok) {
            ec_bl_note(note, note_len,
                       "%s=%s: no such executable (unset it to use %s from PATH)",
                       spec->env_override, over, spec->name);
            return -1;
        }
        return 0;
    }
    if (!search_path(spec->name, path, path_len)) {
        ec_bl_note(note, note_len, "%s not installed: %s", spec->name, spec->install_hint);
        return -1;
    }
    return 0;
}

int ec_bl_free_port(int *port_out)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    socklen_t sl = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    close(fd);
    *port_out = ntohs(sa.sin_port);
    return 0;
}

static bool port_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons((uint16_t)port);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

static bool unix_accepts(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

/* Remove the server's directory: its log and whatever it wrote there. */
static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            unlinkat(dirfd(d), e->d_name, 0);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* The last non-empty line of the log, printable, at most out_len - 1 bytes. */
static void log_last_line(const char *log, char *out, size_t out_len)
{
    char buf[2048];
    out[0] = '\0';
    int fd = open(log, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    off_t size = lseek(fd, 0, SEEK_END);
    off_t from = size > (off_t)(sizeof buf - 1) ? size - (off_t)(sizeof buf - 1) : 0;
    ssize_t n = pread(fd, buf, sizeof buf - 1, from);
    close(fd);
    if (n <= 0)
        return;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    buf[n] = '\0';
    char *line = strrchr(buf, '\n');
    line = line != NULL ? line + 1 : buf;
    size_t j = 0;
    for (; *line != '\0' && j + 1 < out_len; line++)
        out[j++] = (*line >= 0x20 && *line < 0x7f) ? *line : '?';
    out[j] = '\0';
}

static bool reap(pid_t pid, int *status, bool block)
{
    for (;;) {
        pid_t r = waitpid(pid, status, block ? 0 : WNOHANG);
        if (r == pid)
            return true;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == ECHILD) { /* reaped elsewhere (SIGCHLD ignored) */
            *status = 0;
            return true;
        }
        return false;
    }
}

/* SIGTERM, up to grace_ms, SIGKILL; reap. */
static void terminate(pid_t pid, unsigned grace_ms)
{
    int status;
    kill(-pid, SIGTERM);
    kill(pid, SIGTERM);
    uint64_t deadline = now_ms() + grace_ms;
    while (now_ms() < deadline) {
        if (reap(pid, &status, false)) {
            kill(-pid, SIGKILL); /* anything it forked */
            return;
        }
        sleep_ms(5);
    }
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    reap(pid, &status, true);
}

static void describe_exit(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "was killed by signal %d", WTERMSIG(status));
    else
        snprintf(buf, len, "stopped");
}

/* ------------------------------------------------------------------------
 * Start and stop. */

static void child_exec(const char *path, char *const argv[], int logfd, int errfd, pid_t parent)
{
    setpgid(0, 0);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(127);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
        goto fail;
    /* Default dispositions and an empty mask: a server must stop on SIGTERM
     * even when the bench ignores or blocks it. */
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* Keep only stdio and the exec-error pipe (close-on-exec) at fd 3. */
    if (errfd != 3) {
        if (dup3(errfd, 3, O_CLOEXEC) < 0)
            goto fail;
        errfd = 3;
    }
    close_range(4, ~0u, 0);
    execv(path, argv);
fail:;
    int e = errno;
    ssize_t w = write(errfd, &e, sizeof e);
    (void)w;
    _exit(127);
}

static int start_once(const ec_bl_server_spec *spec, const char *path, int port,
                      unsigned timeout_ms, ec_bl_server **out, bool *port_taken, char *note,
                      size_t note_len)
{
    char portbuf[16], sock[sizeof(((struct sockaddr_un *)0)->sun_path)], where[sizeof sock + 8];
    const char *argv[EC_BL_MAX_ARGS];
    const bool on_unix = transport == EC_BL_UNIX;
    int logfd = -1, pipefd[2] = {-1, -1};
    int slot = slot_reserve();
    ec_bl_slot *sl = slot >= 0 ? &live[slot] : NULL;
    pid_t pid = -1;
    int status = 0;
    char line[200];

    *port_taken = false;
    if (slot < 0) {
        ec_bl_note(note, note_len, "cannot start %s: %d servers already running in this process",
                   spec->name, EC_BL_MAX_LIVE);
        return -1;
    }
    const char *tmp = tmpdir_override[0] != '\0' ? tmpdir_override : getenv("TMPDIR");
    if (tmp == NULL || *tmp == '\0' || strlen(tmp) > sizeof sl->dir - 32)
        tmp = "/tmp";
    snprintf(sl->dir, sizeof sl->dir, "%s/embcache-baseline-XXXXXX", tmp);
    if (mkdtemp(sl->dir) == NULL) {
        ec_bl_note(note, note_len, "cannot start %s: mkdtemp in %s: %s", spec->name, tmp,
                   strerror(errno));
        goto fail_slot;
    }
    size_t dl = strlen(sl->dir); /* < sizeof dir; log has room for the name */
    memcpy(sl->log, sl->dir, dl);
    memcpy(sl->log + dl, "/" EC_BL_LOG_NAME, sizeof("/" EC_BL_LOG_NAME));
    snprintf(portbuf, sizeof portbuf, "%d", port);
    if (dl + sizeof("/" EC_BL_SOCK_NAME) > sizeof sock) {
        ec_bl_note(note, note_len, "cannot start %s: the socket path under %s is too long for "
                   "a Unix socket; set a shorter TMPDIR", spec->name, sl->dir);
        goto fail_dir;
    }
    memcpy(sock, sl->dir, dl);
    memcpy(sock + dl, "/" EC_BL_SOCK_NAME, sizeof("/" EC_BL_SOCK_NAME));
    sl->sock[0] = '\0';
    if (on_unix) {
        snprintf(where, sizeof where, "%s", sock);
        memcpy(sl->sock, sock, strlen(sock) + 1); /* < sizeof sock <= sizeof sl->sock */
    } else {
        snprintf(where, sizeof where, "127.0.0.1:%d", port);
    }

    size_t argc = 0;
    argv[argc++] = path;
    const char *const *args = on_unix ? spec->unix_args : spec->args;
    if (args == NULL) {
        ec_bl_note(note, note_len, "cannot start %s: no arguments for this transport", spec->name);
        goto fail_dir;
    }
    for (const char *const *a = args; *a != NULL; a++) {
        if (argc + 1 >= EC_BL_MAX_ARGS) {
            ec_bl_note(note, note_len, "cannot start %s: too many arguments", spec->name);
            goto fail_dir;
        }
        argv[argc++] = strcmp(*a, EC_BL_ARG_PORT) == 0   ? portbuf
                       : strcmp(*a, EC_BL_ARG_DIR) == 0  ? sl->dir
                       : strcmp(*a, EC_BL_ARG_SOCK) == 0 ? sock
                                                         : *a;
    }
    argv[argc] = NULL;

    logfd = open(sl->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (logfd < 0 || pipe2(pipefd, O_CLOEXEC) != 0) {
        ec_bl_note(note, note_len, "cannot start %s: %s: %s", spec->name,
                   logfd < 0 ? sl->log : "pipe", strerror(errno));
        goto fail_fds;
    }
    install_cleanup();
    pid_t parent = getpid();
    sl->owner = parent;
    pid = fork();
    if (pid < 0) {
        ec_bl_note(note, note_len, "cannot start %s: fork: %s", spec->name, strerror(errno));
        goto fail_fds;
    }
    if (pid == 0) {
        close(pipefd[0]);
        /* execv's argv is char *const[]; the strings are not modified. */
        child_exec(path, (char *const *)(void *)argv, logfd, pipefd[1], parent);
    }
    setpgid(pid, pid); /* also here, so kill(-pid) works before the child runs */
    atomic_store_explicit(&sl->pid, pid, memory_order_release);
    atomic_store_explicit(&last_pid, pid, memory_order_release);
    close(pipefd[1]);
    pipefd[1] = -1;
    close(logfd);
    logfd = -1;

    /* exec succeeded iff the pipe closes with nothing in it. */
    int child_errno = 0;
    ssize_t r;
    while ((r = read(pipefd[0], &child_errno, sizeof child_errno)) < 0 && errno == EINTR) {
    }
    close(pipefd[0]);
    pipefd[0] = -1;
    if (r == (ssize_t)sizeof child_errno) {
        reap(pid, &status, true);
        ec_bl_note(note, note_len, "could not run %s (%s): %s", spec->name, path,
                   strerror(child_errno));
        goto fail_reaped;
    }

    uint64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        if (reap(pid, &status, false)) {
            char how[48];
            log_last_line(sl->log, line, sizeof line);
            describe_exit(status, how, sizeof how);
            *port_taken = !on_unix && strstr(line, "in use") != NULL;
            ec_bl_note(note, note_len, "%s %s before listening on %s%s%s", spec->name, how,
                       where, line[0] != '\0' ? ": " : "", line);
            goto fail_reaped;
        }
        if (on_unix ? unix_accepts(sock) : port_accepts(port))
            break;
        if (now_ms() >= deadline) {
            terminate(pid, EC_BL_TERM_GRACE_MS);
            ec_bl_note(note, note_len, "%s did not start listening on %s within %g s",
                       spec->name, where, timeout_ms / 1000.0);
            goto fail_reaped;
        }
        sleep_ms(5);
    }

    ec_bl_server *s = calloc(1, sizeof *s);
    if (s == NULL) {
        terminate(pid, EC_BL_TERM_GRACE_MS);
        ec_bl_note(note, note_len, "cannot start %s: out of memory", spec->name);
        goto fail_reaped;
    }
    s->pid = pid;
    s->port = on_unix ? 0 : port;
    s->slot = slot;
    if (on_unix)
        snprintf(s->sock, sizeof s->sock, "%s", sock);
    *out = s;
    return 0;

fail_reaped:
    kill(-pid, SIGKILL); /* anything it forked before dying */
fail_fds:
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    if (logfd >= 0)
        close(logfd);
fail_dir:
    remove_dir(sl->dir);
fail_slot:
    slot_release(slot);
    return -1;
}

int ec_bl_server_start(const ec_bl_server_spec *spec, ec_bl_server **out, char *note,
                       size_t note_len)
{
    char path[PATH_MAX];
    if (ec_bl_find_program(spec, path, sizeof path, note, note_len) != 0)
        return -1;

    unsigned timeout_ms = EC_BL_START_TIMEOUT_MS;
    const char *t = getenv("EC_BENCH_SERVER_START_TIMEOUT_MS");
    if (t != NULL && *t != '\0') {
        char *end;
        unsigned long v = strtoul(t, &end, 10);
        if (*end == '\0' && v > 0 && v <= 600000)
            timeout_ms = (unsigned)v;
    }

    for (int attempt = 0; attempt < EC_BL_PORT_TRIES; attempt++) {
        int port = 0;
        bool port_taken;
        if (transport == EC_BL_UNIX) /* a private directory: no race to lose */
            return start_once(spec, path, 0, timeout_ms, out, &port_taken, note, note_len);
        if (ec_bl_free_port(&port) != 0) {
            ec_bl_note(note, note_len, "cannot start %s: no free port on 127.0.0.1: %s",
                       spec->name, strerror(errno));
            return -1;
        }
        if (start_once(spec, path, port, timeout_ms, out, &port_taken, note, note_len) == 0)
            return 0;
        if (!port_taken) /* only a lost race for the port is worth another try */
            return -1;
    }
    return -1;
}

int ec_bl_server_port(const ec_bl_server *s)
{
    return s->port;
}

pid_t ec_bl_server_pid(const ec_bl_server *s)
{
    return s->pid;
}

const char *ec_bl_server_socket(const ec_bl_server *s)
{
    return s->sock[0] != '\0' ? s->sock : NULL;
}

void ec_bl_server_describe(const ec_bl_server *s, char *buf, size_t len)
{
    if (s->sock[0] != '\0')
        snprintf(buf, len, "unix:%s", s->sock);
    else
        snprintf(buf, len, "tcp:127.0.0.1:%d", s->port);
}

int ec_bl_server_connect(const ec_bl_server *s, char *note, size_t note_len)
{
    int fd;

    if (s->sock[0] != '\0') {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", s->sock);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return fd;
    } else {
        struct sockaddr_in sa;
        int one = 1;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sa.sin_port = htons((uint16_t)s->port);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0)
            return fd;
    }
    char where[sizeof s->sock + 8];
    ec_bl_server_describe(s, where, sizeof where);
    ec_bl_note(note, note_len, "cannot connect to %s: %s", where, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

#define MC_ITEM_OVERHEAD 128u /* item header, CAS, key, suffix: generous */

int ec_bl_memcached_limits(uint64_t rows, size_t row_bytes, unsigned *mem_mib,
                           unsigned *item_mib)
{
    uint64_t item = (uint64_t)row_bytes + MC_ITEM_OVERHEAD;
    unsigned im = 1;
    while ((uint64_t)im << 20 < item) {
        if (im >= 512)
            return -1; /* memcached's -I stops at 1 GiB; keep well below */
        im *= 2;
    }
    long double bytes = (long double)rows * (long double)item * 1.25L;
    long double mm = bytes / (1024.0L * 1024.0L) + 64.0L;
    if (mm < 2.0L * im)
        mm = 2.0L * im;
    if (mm > 4.0e6L) /* 4 TiB: nonsense input */
        return -1;
    *mem_mib = (unsigned)mm + 1u;
    *item_mib = im;
    return 0;
}

int ec_bl_memcached_start(unsigned mem_mib, unsigned item_mib, ec_bl_server **out, char *note,
                          size_t note_len)
{
    char mbuf[16], ibuf[16];
    snprintf(mbuf, sizeof mbuf, "%u", mem_mib);
    snprintf(ibuf, sizeof ibuf, "%um", item_mib);
    /* memcached refuses to run as root without -u; -s turns networking off. */
    const char *args[] = {"-l", "127.0.0.1", "-p", EC_BL_ARG_PORT, "-U", "0", "-m", mbuf,
                          "-t", "2", "-I", ibuf, "-M", "-u", "root", NULL};
    const char *unix_args[] = {"-s", EC_BL_ARG_SOCK, "-a", "0700", "-U", "0", "-m", mbuf,
                               "-t", "2", "-I", ibuf, "-M", "-u", "root", NULL};
    if (geteuid() != 0) {
        args[13] = NULL;
        unix_args[13] = NULL;
    }
    const ec_bl_server_spec spec = {
        .name = "memcached",
        .env_override = "EC_BENCH_MEMCACHED",
        .install_hint = "apt-get install memcached",
        .args = args,
        .unix_args = unix_args,
    };
    return ec_bl_server_start(&spec, out, note, note_len);
}

void ec_bl_server_stop(ec_bl_server *s)
{
    if (s == NULL)
        return;
    terminate(s->pid, EC_BL_TERM_GRACE_MS);
    remove_dir(live[s->slot].dir);
    slot_release(s->slot);
    free(s);
}
