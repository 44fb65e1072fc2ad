/*
 * keeper.c - the process that keeps the shared segment across a crash of
 * the daemon (see keeper.h).
 *
 * Runs in embcached's first process (the keeper's loop) and in the worker
 * (ec_keeper_keep / _drop / _ready / _close, from the server thread at
 * start-up). The keeper's loop is single-threaded: poll over a signalfd and
 * its worker's end of a SEQPACKET socketpair. It reads only fixed-size
 * messages from its own child, checks each, and never touches the segment's
 * bytes. It alone speaks to systemd (core/notify.h; the unit's main pid):
 * READY=1 when its worker says it serves, STATUS= when a worker is
 * replaced, STOPPING=1 on SIGTERM or SIGINT.
 */
#include "keeper.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "core/notify.h"

#define MSG_KEEP 'K'
#define MSG_DROP 'D'
#define MSG_READY 'R'
#define MSG_ARENA 'A'
#define MSG_ARENA_DROP 'a'

#define CRASH_LIMIT 5
#define CRASH_WINDOW_S 60

struct keeper {
    pid_t worker;
    int wsock;        /* our end of the worker's socketpair; -1 when gone */
    bool ready;       /* the worker said it serves */
    bool stopping;    /* SIGTERM/SIGINT: stop when the worker has */
    bool restarting;  /* SIGUSR2: start another when the worker has stopped */
    int seg_fd;
    void *seg_base;
    size_t seg_size;
    int lock_fd;
    int sfd;
    ec_keeper_arena arenas[EC_KEEPER_ARENAS];
    unsigned narenas;
    void *journal;
    unsigned starts;
    time_t crashes[CRASH_LIMIT];
    unsigned ncrash;
};

/* ------------------------------------------------------------------ */
/* Messages over the socketpair                                        */

static int send_msg(int sock, char op, int fd)
{
    char buf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = &op, .iov_len = 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;

    memset(buf, 0, sizeof(buf));
    if (fd >= 0) {
        struct cmsghdr *cm;
        mh.msg_control = buf;
        mh.msg_controllen = sizeof(buf);
        cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    }
    do
        n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n == 1 ? 0 : -1;
}

/* One message: its op byte (0 at EOF, -1 on error) and at most one fd. */
static int recv_msg(int sock, int *fd_out)
{
    char op = 0, buf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = &op, .iov_len = 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = buf,
                        .msg_controllen = sizeof(buf)};
    ssize_t n;

    *fd_out = -1;
    do
        n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
            cm->cmsg_len == CMSG_LEN(sizeof(int))) {
            if (*fd_out >= 0) {
                int extra;
                memcpy(&extra, CMSG_DATA(cm), sizeof(int));
                close(extra);
            } else {
                memcpy(fd_out, CMSG_DATA(cm), sizeof(int));
            }
        }
    if (n == 0)
        return 0;
    if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || n != 1) {
        if (*fd_out >= 0)
            close(*fd_out);
        *fd_out = -1;
        return -1;
    }
    return (unsigned char)op;
}

/* ------------------------------------------------------------------ */
/* The keeper                                                          */

/* Unmap and close a held segment (the keeper's, or a worker's inherited
 * copy of it) and mark it gone. */
static void unmap_segment(void **base, size_t *size, int *fd)
{
    if (*base)
        munmap(*base, *size);
    if (*fd >= 0)
        close(*fd);
    *base = NULL;
    *size = 0;
    *fd = -1;
}

static void let_go(struct keeper *kp)
{
    unmap_segment(&kp->seg_base, &kp->seg_size, &kp->seg_fd);
}

/* A message from the worker. */
static void from_worker(struct keeper *kp)
{
    int fd, op = recv_msg(kp->wsock, &fd);
    char status = 0;

    if (op <= 0) { /* the worker is gone (SIGCHLD follows) or sent garbage */
        close(kp->wsock);
        kp->wsock = -1;
        return;
    }
    switch (op) {
    case MSG_KEEP: {
        struct stat st;
        void *base;
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
            status = EINVAL;
            break;
        }
        base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
            status = (char)errno;
            break;
        }
        let_go(kp);
        kp->seg_fd = fd;
        kp->seg_base = base;
        kp->seg_size = (size_t)st.st_size;
        fd = -1;
        ec_debug("keeper: holding a segment of %zu bytes", kp->seg_size);
        break;
    }
    case MSG_DROP:
        let_go(kp);
        break;
    case MSG_ARENA: {
        struct stat st;
        void *base;
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
            kp->narenas == EC_KEEPER_ARENAS) {
            status = fd < 0 || kp->narenas < EC_KEEPER_ARENAS ? EINVAL : ENOSPC;
            break;
        }
        base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
            status = (char)errno;
            break;
        }
        kp->arenas[kp->narenas++] = (ec_keeper_arena){.fd = fd, .base = base,
                                                      .size = (size_t)st.st_size};
        fd = -1;
        break;
    }
    case MSG_ARENA_DROP: {
        struct stat st, a;
        status = ENOENT;
        if (fd < 0 || fstat(fd, &st) < 0)
            break;
        for (unsigned i = 0; i < kp->narenas; i++)
            if (fstat(kp->arenas[i].fd, &a) == 0 && a.st_dev == st.st_dev &&
                a.st_ino == st.st_ino) {
                munmap(kp->arenas[i].base, kp->arenas[i].size);
                close(kp->arenas[i].fd);
                kp->arenas[i] = kp->arenas[--kp->narenas];
                status = 0;
                break;
            }
        break;
    }
    case MSG_READY:
        kp->ready = true;
        /* The keeper is the process systemd watches (NotifyAccess=main):
         * readiness is said here, once the worker listens. */
        if (kp->starts > 1)
            ec_notify_ready("serving (worker %d, restarted %u time(s); the log says why)",
                            (int)kp->worker, kp->starts - 1);
        else
            ec_notify_ready("serving (worker %d)", (int)kp->worker);
        return; /* no reply */
    default:
        status = EPROTO;
    }
    if (fd >= 0)
        close(fd);
    if (send_msg(kp->wsock, status, -1) < 0) {
        close(kp->wsock);
        kp->wsock = -1;
    }
}

/* Fork a worker. Returns in the worker (true) or in the keeper (false). */
static bool spawn(struct keeper *kp, const sigset_t *orig, ec_keeper *k)
{
    pid_t keeper_pid = getpid();
    int sv[2];
    pid_t pid;

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        ec_error("keeper: socketpair: %s; stopping", strerror(errno));
        exit(1);
    }
    pid = fork();
    if (pid < 0) {
        ec_error("keeper: cannot fork a worker: %s; stopping", strerror(errno));
        exit(1);
    }
    if (pid == 0) {
        /* The worker: stop with the keeper; handle or ignore every signal
         * deliberately (the server takes SIGTERM and SIGINT). */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != keeper_pid)
            _exit(0);
        close(sv[0]);
        close(kp->sfd);
        ec_notify_forget(); /* only the keeper speaks to systemd */
        signal(SIGHUP, SIG_IGN);
        signal(SIGUSR1, SIG_IGN);
        signal(SIGUSR2, SIG_IGN);
        signal(SIGALRM, SIG_IGN);
        signal(SIGPIPE, SIG_IGN);
        signal(SIGCHLD, SIG_DFL);
        sigprocmask(SIG_SETMASK, orig, NULL);
        *k = (ec_keeper){.sock = sv[1], .lock_fd = kp->lock_fd, .seg_fd = kp->seg_fd,
                         .seg_base = kp->seg_base, .seg_size = kp->seg_size,
                         .starts = kp->starts + 1, .journal = kp->journal,
                         .journal_bytes = kp->journal ? EC_KEEPER_JOURNAL_BYTES : 0};
        memcpy(k->arenas, kp->arenas, sizeof(k->arenas));
        k->narenas = kp->narenas;
        return true;
    }
    close(sv[1]);
    kp->worker = pid;
    kp->wsock = sv[0];
    kp->ready = false;
    kp->starts++;
    if (kp->starts > 1)
        ec_info("keeper: started worker %d (%s)", (int)pid,
                kp->seg_base ? "warm: it inherits the segment" : "cold");
    return false;
}

/* The worker exited with wait status st: stop (exit) or say to restart. */
static void worker_exited(struct keeper *kp, int st)
{
    time_t now = time(NULL);
    unsigned recent = 0;

    kp->worker = 0;
    if (kp->wsock >= 0) {
        /* Take what it still said (a READY just before it exited). */
        struct pollfd p = {.fd = kp->wsock, .events = POLLIN};
        while (kp->wsock >= 0 && poll(&p, 1, 0) == 1)
            from_worker(kp);
        if (kp->wsock >= 0)
            close(kp->wsock);
        kp->wsock = -1;
    }
    if (kp->stopping)
        exit(WIFEXITED(st) ? WEXITSTATUS(st) : 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        if (kp->restarting) {
            kp->restarting = false;
            ec_notify_status("SIGUSR2: restarting the worker (warm)");
            return; /* SIGUSR2: restart */
        }
        ec_info("keeper: the worker stopped cleanly; stopping");
        ec_notify_stopping("the worker stopped on its own; stopping");
        exit(0);
    }
    if (WIFEXITED(st) && !kp->ready) {
        /* It could not start (it said why): starting it again would not help. */
        ec_notify_status("stopped: the worker could not start (the log says why)");
        exit(WEXITSTATUS(st) ? WEXITSTATUS(st) : 1);
    }
    if (WIFSIGNALED(st)) {
        ec_warn("keeper: the worker died of signal %d (%s); restarting it", WTERMSIG(st),
                strsignal(WTERMSIG(st)));
        ec_notify_status("restarting the worker: it died of signal %d (%s)", WTERMSIG(st),
                         strsignal(WTERMSIG(st)));
    } else {
        ec_warn("keeper: the worker exited with status %d; restarting it", WEXITSTATUS(st));
        ec_notify_status("restarting the worker: it exited with status %d", WEXITSTATUS(st));
    }
    kp->crashes[kp->ncrash++ % CRASH_LIMIT] = now;
    for (unsigned i = 0; i < CRASH_LIMIT && i < kp->ncrash; i++)
        recent += now - kp->crashes[i] < CRASH_WINDOW_S;
    if (recent >= CRASH_LIMIT) {
        ec_error("keeper: the worker crashed %u times within %d s; stopping (see the log "
                 "above for why)",
                 recent, CRASH_WINDOW_S);
        ec_notify_status("stopped: the worker crashed %u times within %d s (see the log)",
                         recent, CRASH_WINDOW_S);
        exit(1);
    }
}

static void on_signal(struct keeper *kp, const struct signalfd_siginfo *si)
{
    int st;
    pid_t pid;

    switch (si->ssi_signo) {
    case SIGCHLD:
        while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
            if (pid == kp->worker)
                worker_exited(kp, st);
        break;
    case SIGTERM:
    case SIGINT:
        if (!kp->stopping)
            ec_notify_stopping("stopping on signal %u", si->ssi_signo);
        kp->stopping = true;
        if (kp->worker > 0)
            kill(kp->worker, SIGTERM);
        else
            exit(0);
        break;
    case SIGUSR2:
        if (kp->worker > 0 && !kp->stopping) {
            ec_info("keeper: SIGUSR2: restarting the worker (warm)");
            kp->restarting = true;
            kill(kp->worker, SIGTERM);
        }
        break;
    case SIGHUP:
        if (kp->worker > 0)
            kill(kp->worker, SIGHUP);
        break;
    default: /* SIGUSR1, SIGALRM: ignored */
        ec_debug("keeper: signal %u ignored", si->ssi_signo);
    }
}

int ec_keeper_lock_dir(const char *data_dir, int *fd_out)
{
    char path[4200], buf[32];
    int fd;

    if (snprintf(path, sizeof(path), "%s/%s", data_dir, EC_LOCK_FILE) >= (int)sizeof(path))
        return ec_seterr(EC_EINVAL, "data directory path %s is too long", data_dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
    if (fd < 0)
        return ec_seterr_errno(errno == ELOOP ? EC_EPERM : EC_EIO, errno,
                               "cannot open lock file %s%s", path,
                               errno == ELOOP ? " (it is a symbolic link; remove it)" : "");
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        buf[n > 0 ? n : 0] = '\0';
        close(fd);
        return ec_seterr(EC_EBUSY,
                         "data directory %s is in use by another embcached (pid %s); stop it "
                         "first or use another --data-dir",
                         data_dir, buf[0] ? strtok(buf, "\n") : "unknown");
    }
    *fd_out = fd;
    return 0;
}

int ec_keeper_start(const char *data_dir, ec_keeper *k)
{
    struct keeper kp = {.wsock = -1, .seg_fd = -1, .lock_fd = -1, .sfd = -1};
    sigset_t mask, orig;
    int rc;

    if ((rc = ec_keeper_lock_dir(data_dir, &kp.lock_fd)) < 0)
        return rc;
    /* Shared with every worker by fork, with no one else. */
    kp.journal = mmap(NULL, EC_KEEPER_JOURNAL_BYTES, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (kp.journal == MAP_FAILED)
        kp.journal = NULL; /* views are then not protected across a crash */
    /* Neither the keeper nor its workers can be traced or have their memory
     * written through /proc by a process of the same uid: the writable
     * mappings of the segment are in them. */
    prctl(PR_SET_DUMPABLE, 0);
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGUSR1);
    sigaddset(&mask, SIGUSR2);
    sigaddset(&mask, SIGALRM);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, &orig);
    signal(SIGPIPE, SIG_IGN);
    kp.sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    if (kp.sfd < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "signalfd");
        sigprocmask(SIG_SETMASK, &orig, NULL);
        close(kp.lock_fd);
        return rc;
    }
    if (spawn(&kp, &orig, k))
        return 0;
    for (;;) {
        struct pollfd p[2] = {{.fd = kp.sfd, .events = POLLIN},
                              {.fd = kp.wsock, .events = POLLIN}};
        if (poll(p, kp.wsock >= 0 ? 2 : 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            ec_error("keeper: poll: %s; stopping", strerror(errno));
            if (kp.worker > 0)
                kill(kp.worker, SIGTERM);
            exit(1);
        }
        if (kp.wsock >= 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR)))
            from_worker(&kp);
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            if (read(kp.sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                on_signal(&kp, &si);
                if (kp.worker == 0 && spawn(&kp, &orig, k))
                    return 0;
            }
        }
    }
}

/* ------------------------------------------------------------------ */
/* The worker's side                                                   */

/* Send op (with fd) and wait for the keeper's one-byte status (0 or an
 * errno value). */
static int ask_status(ec_keeper *k, char op, int fd, const char *what)
{
    char status = 1;
    ssize_t n;

    if (k->sock < 0)
        return 0;
    if (send_msg(k->sock, op, fd) < 0)
        return ec_seterr_errno(EC_EIO, errno, "cannot ask the keeper to %s", what);
    do
        n = recv(k->sock, &status, 1, 0);
    while (n < 0 && errno == EINTR);
    if (n != 1)
        return ec_seterr(EC_EIO, "no answer from the keeper to %s", what);
    if (status != 0)
        return ec_seterr_errno(EC_EIO, (unsigned char)status, "the keeper could not %s", what);
    return 0;
}

static void forget_inherited(ec_keeper *k)
{
    unmap_segment(&k->seg_base, &k->seg_size, &k->seg_fd);
}

int ec_keeper_keep(ec_keeper *k, int memfd)
{
    int rc = ask_status(k, MSG_KEEP, memfd, "hold the segment");

    if (rc == 0)
        forget_inherited(k);
    return rc;
}

int ec_keeper_drop(ec_keeper *k)
{
    int rc = ask_status(k, MSG_DROP, -1, "let go of the old segment");

    forget_inherited(k);
    return rc;
}

int ec_keeper_keep_arena(ec_keeper *k, int memfd)
{
    return ask_status(k, MSG_ARENA, memfd, "hold a result arena");
}

int ec_keeper_drop_arena(ec_keeper *k, int memfd)
{
    return ask_status(k, MSG_ARENA_DROP, memfd, "let go of a result arena");
}

void ec_keeper_ready(ec_keeper *k)
{
    if (k && k->sock >= 0)
        (void)send_msg(k->sock, MSG_READY, -1);
}

void ec_keeper_close(ec_keeper *k)
{
    if (!k)
        return;
    forget_inherited(k);
    for (unsigned i = 0; i < k->narenas; i++)
        if (k->arenas[i].fd >= 0) {
            munmap(k->arenas[i].base, k->arenas[i].size);
            close(k->arenas[i].fd);
            k->arenas[i].fd = -1;
        }
    if (k->sock >= 0)
        close(k->sock);
    k->sock = -1;
}
