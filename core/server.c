/*
 * server.c - embcached's server loop (see server.h).
 *
 * Sessions: a client connects to the SEQPACKET socket; its credentials are
 * read with SO_PEERCRED when it connects. Its first message must be HELLO;
 * the reply carries two descriptors: the segment opened O_RDONLY (so the
 * client can only map it PROT_READ) and a sealed memfd of its own session
 * page. Every later message is validated field by field; a malformed one is
 * answered with EC_EPROTO and, when it is not even an embcache message, the
 * connection is closed. The daemon keeps serving everyone else whatever one
 * client sends, and a client that stops reading its replies is disconnected
 * rather than allowed to block the loop.
 *
 * FAULT and PIN are answered when the engine finishes them; IMPORT when the
 * importer thread does. Replies to a connection that has gone are dropped;
 * its pins are released by ec_engine_owner_close().
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/paths.h"
#include "common/proc.h"
#include "common/u64map.h"
#include "core/devtier.h"
#include "core/engine.h"
#include "core/topology.h"
#include "cuda/backend.h"
#include "core/import.h"
#include "core/keeper.h"
#include "core/notify.h"
#include "core/proto.h"
#include "core/rcluster.h"

#include "core/server_impl.h"

/* ------------------------------------------------------------------ */
/* Replies                                                             */

void srv_reply_send(server *s, struct conn *c, size_t len, const int *fds, int nfds)
{
    int rc;

    if (len == 0) {
        ec_error("reply to client %llu did not fit in a message", (unsigned long long)c->id);
        ec_msg_send_error(c->fd, 0, 0, EC_EINTERNAL, "reply too large");
        return;
    }
    rc = ec_msg_send(c->fd, s->out, len, fds, nfds, true);
    if (rc == EC_ECONN) {
        srv_conn_close(s, c); /* it hung up before its answer came */
    } else if (rc) {
        ec_warn("client %llu (pid %d) is not reading its replies (%s); disconnecting it",
                (unsigned long long)c->id, (int)c->pid, ec_last_error());
        s->st.disconnected_slow++;
        srv_conn_close(s, c);
    }
}

void srv_reply_error(server *s, struct conn *c, uint16_t op, uint32_t req_id, int code,
                        const char *msg)
{
    int rc = ec_msg_send_error(c->fd, op, req_id, code, msg);

    if (code < 0 && code >= EC_E_LAST)
        s->st.errors[-code]++;
    if (rc) {
        if (rc != EC_ECONN)
            s->st.disconnected_slow++;
        srv_conn_close(s, c);
    }
}

/* Engine callback: a FAULT or PIN has finished. token = op << 32 | req_id. */
static void engine_notify(void *arg, uint64_t owner, uint64_t token, const ec_engine_result *r)
{
    server *s = arg;
    struct conn *c = ec_u64map_get(&s->conns, owner);
    uint16_t op = (uint16_t)(token >> 32);
    uint32_t req_id = (uint32_t)token;
    ec_wbuf w;

    if (!c)
        return; /* it hung up; its pins were dropped with it */
    c->outstanding--;
    if (r->status) {
        srv_reply_error(s, c, op, req_id, r->status, r->msg);
        return;
    }
    ec_msg_begin(&w, s->out, sizeof(s->out), (uint16_t)(op | EC_OP_REPLY), req_id, 0);
    if (op == EC_OP_PIN) {
        ec_put_u64(&w, r->pin_id);
        ec_put_u64(&w, r->offset);
        ec_put_u64(&w, r->length);
    } else if (op == EC_OP_FAULT || op == EC_OP_FAULT_ROWS) {
        ec_put_u32(&w, r->mode);
    }
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
}

/* ------------------------------------------------------------------ */
/* Connections                                                         */

static void fold_session(server *s, struct conn *c)
{
    ec_session_page *p = c->session;

    if (!p)
        return;
    s->st.gathers += atomic_load_explicit(&p->gathers, memory_order_relaxed);
    s->st.rows += atomic_load_explicit(&p->rows, memory_order_relaxed);
    s->st.hits += atomic_load_explicit(&p->hits, memory_order_relaxed);
    s->st.misses += atomic_load_explicit(&p->misses, memory_order_relaxed);
    s->st.retries += atomic_load_explicit(&p->retries, memory_order_relaxed);
    s->st.faults += atomic_load_explicit(&p->faults, memory_order_relaxed);
    s->st.device_rows += atomic_load_explicit(&p->device_rows, memory_order_relaxed);
    s->st.mapped_rows += atomic_load_explicit(&p->mapped_rows, memory_order_relaxed);
    s->st.staged_rows += atomic_load_explicit(&p->staged_rows, memory_order_relaxed);
    s->st.gpu_resolved_rows += atomic_load_explicit(&p->gpu_resolved_rows, memory_order_relaxed);
    for (unsigned k = 0; k < EC_SESSION_TENSORS; k++) {
        uint32_t t = atomic_load_explicit(&p->tstat[k].tensor, memory_order_relaxed);
        struct tcount *tc;
        if (!t)
            continue;
        tc = ec_u64map_get(&s->tfold, t);
        if (!tc && (!(tc = calloc(1, sizeof(*tc))) || ec_u64map_put(&s->tfold, t, tc))) {
            free(tc);
            continue; /* out of memory: these counts are lost, nothing else */
        }
        tc->rows += atomic_load_explicit(&p->tstat[k].rows, memory_order_relaxed);
        tc->hits += atomic_load_explicit(&p->tstat[k].hits, memory_order_relaxed);
    }
    srv_results_fold(s, p);
}

/* Connections of a uid: adjust by delta, return the count after. */
static uintptr_t uid_count(server *s, uid_t uid, int delta)
{
    uint64_t key = (uint64_t)uid + 1;
    uintptr_t n = (uintptr_t)ec_u64map_get(&s->per_uid, key);

    if (delta > 0)
        n++;
    else if (delta < 0 && n > 0)
        n--;
    if (delta) {
        if (n == 0)
            ec_u64map_del(&s->per_uid, key);
        else if (ec_u64map_put(&s->per_uid, key, (void *)n))
            return UINTPTR_MAX; /* out of memory: count it as full */
    }
    return n;
}

static void ghost_add(server *s, const struct conn *c);

void srv_conn_close(server *s, struct conn *c)
{
    ec_debug("client %llu (pid %d) disconnected", (unsigned long long)c->id, (int)c->pid);
    epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    fold_session(s, c);
    ghost_add(s, c);
    if (c->session)
        munmap(c->session, EC_SESSION_SIZE);
    ec_engine_owner_close(s->engine, c->id);
    if (s->results)
        ec_resmgr_owner_close(s->results, c->id);
    ec_u64map_del(&s->conns, c->id);
    uid_count(s, c->uid, -1);
    free(c);
}

static time_t mono_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

/* A connection that has not said HELLO within HELLO_TIMEOUT seconds holds a
 * client slot for nothing: close it, so idle peers cannot lock others out. */
/* The least epoch a session's device gathers hold; UINT64_MAX when none.
 * The page is the client's: any value is possible, and the worst a lie
 * does is hold memory back (see reap_held). */
static uint64_t session_min_epoch(const ec_session_page *p)
{
    uint64_t m = UINT64_MAX;

    for (unsigned k = 0; k < EC_SESSION_EPOCH_SLOTS; k++) {
        uint64_t v = atomic_load_explicit(&p->epoch_slot[k], memory_order_seq_cst);
        if (v && v < m)
            m = v;
    }
    return m;
}

/* ------------------------------------------------------------------ */
/* Ghost epochs                                                        */

/* A GPU gather holds its epoch until its kernel has run, and a kernel can
 * stay queued behind other work (a collective, a long step) for far longer
 * than any timeout. When a connection goes (closed, or dropped for holding
 * memory back too long) while its session still shows an epoch, its
 * process may still have kernels queued that read memory under that epoch:
 * the epoch is kept as a ghost, and counts as held, until the process is
 * gone (its CUDA context, and every kernel queued in it, goes with it).
 * The process is known by pid and start time, so a reused pid is not it.
 * Memory held back so is counted (epoch_ghosts) and logged. */
static void ghost_add(server *s, const struct conn *c)
{
    uint64_t v = c->session ? session_min_epoch(c->session) : UINT64_MAX;
    uint64_t start = 0;
    char state;

    if (v == UINT64_MAX || v > ec_engine_epoch_now(s->engine) || c->pid <= 0 ||
        ec_proc_stat(c->pid, &state, &start) || state == 'Z' || state == 'X')
        return; /* nothing held, a value never issued (a lie), or the process is gone */
    if (s->nghosts == s->capghosts) {
        size_t ncap = s->capghosts ? s->capghosts * 2 : 16;
        struct ghost *g = realloc(s->ghosts, ncap * sizeof(*g));
        if (!g) {
            ec_error("out of memory keeping the epoch of pid %d: memory it may still read "
                     "could be reused", (int)c->pid);
            return;
        }
        s->ghosts = g;
        s->capghosts = ncap;
    }
    s->ghosts[s->nghosts++] = (struct ghost){.pid = c->pid, .start = start, .epoch = v};
    s->ghost_holds++;
    ec_warn("client %llu (pid %d) went with device gathers possibly queued (epoch %llu): "
            "the memory they read is kept until the process exits",
            (unsigned long long)c->id, (int)c->pid, (unsigned long long)v);
}

/* Forget the ghosts whose process is gone. Once a tick. */
static void ghosts_prune(server *s)
{
    for (size_t i = 0; i < s->nghosts;) {
        struct ghost *g = &s->ghosts[i];
        uint64_t start = 0;
        char state;
        if (ec_proc_stat(g->pid, &state, &start) == 0 && start == g->start && state != 'Z' &&
            state != 'X') {
            i++;
            continue;
        }
        ec_info("pid %d is gone: the memory its last device gathers held is released",
                (int)g->pid);
        s->ghosts[i] = s->ghosts[--s->nghosts];
    }
}

/* The engine's epoch source: the least epoch any client holds. */
static uint64_t min_epoch(void *arg)
{
    server *s = arg;
    uint64_t m = UINT64_MAX;

    atomic_thread_fence(memory_order_seq_cst);
    for (size_t i = 0; i < s->nghosts; i++)
        if (s->ghosts[i].epoch < m)
            m = s->ghosts[i].epoch;
    for (size_t i = 0; i < s->conns.cap; i++) {
        struct conn *c = s->conns.vals[i];
        if (s->conns.keys[i] && c->session) {
            uint64_t v = session_min_epoch(c->session);
            if (v < m)
                m = v;
        }
    }
    return m;
}

/* A device gather holds its epoch for as long as its kernel runs. What
 * counts is not which value a session shows (the page is the client's: it
 * can change it at will) but for how long it has kept the oldest memory in
 * limbo from being freed, without a break: a session whose least epoch
 * stays below the oldest limbo tag for --epoch-hold seconds is stuck or
 * lying and is disconnected (its pins and epochs go with it), however its
 * values change meanwhile. An epoch the daemon never issued is a lie at
 * once. */
static void reap_held(server *s)
{
    time_t now = mono_seconds();
    uint64_t blocking = ec_engine_epoch_blocking(s->engine);
    uint64_t issued = ec_engine_epoch_now(s->engine);

    for (size_t i = 0; i < s->conns.cap; i++) {
        struct conn *c = s->conns.vals[i];
        const char *why = NULL;
        uint64_t v;
        if (!s->conns.keys[i] || !c->session)
            continue;
        v = session_min_epoch(c->session);
        c->held_epoch = v;
        if (v != UINT64_MAX && v > issued) {
            why = "holds an epoch the daemon never issued";
        } else if (v == UINT64_MAX || v >= blocking) {
            c->held_since = 0; /* holds nothing back */
            continue;
        } else if (!c->held_since) {
            c->held_since = now;
            continue;
        } else if (now - c->held_since >=
                   (s->cfg->epoch_hold_max > 0 ? s->cfg->epoch_hold_max : 30)) {
            why = "has kept memory from being freed";
        }
        if (!why)
            continue;
        ec_warn("client %llu (pid %d) %s (epoch %llu, for %ld s): disconnecting it",
                (unsigned long long)c->id, (int)c->pid, why, (unsigned long long)v,
                c->held_since ? (long)(now - c->held_since) : 0L);
        s->st.epoch_disconnects++;
        srv_conn_close(s, c);
        i = (size_t)-1; /* the map moved entries: rescan */
    }
}

/* A view pins memory for as long as its client holds it, and a client may
 * hold one for its whole life. What it may not do is hold memory while it
 * cannot run: a client that has been stopped (SIGSTOP, or a debugger) for
 * --pin-lease seconds while it holds views loses them, as a client that
 * holds an epoch too long does: it is disconnected, its pins go, and its
 * session page says why, so its ec_view_check() reports the views stale
 * when it runs again. A running client is never judged, however idle. Only
 * clients that hold views are looked at: one read of /proc/PID/stat each per
 * tick. The pid is the one SO_PEERCRED gave at connect; a process that has
 * passed its socket on and exited has no state to judge and keeps its pins
 * until the socket closes. */
static void reap_stopped(server *s)
{
    time_t now = mono_seconds();

    if (s->cfg->pin_lease <= 0)
        return;
    for (size_t i = 0; i < s->conns.cap; i++) {
        struct conn *c = s->conns.vals[i];
        char state = 0;
        uint32_t pins;
        if (!s->conns.keys[i])
            continue;
        if (c->pid <= 0 || (pins = ec_engine_owner_pins(s->engine, c->id)) == 0 ||
            ec_proc_stat(c->pid, &state, NULL) < 0 || (state != 'T' && state != 't')) {
            c->stopped_since = 0;
            continue;
        }
        if (!c->stopped_since) {
            c->stopped_since = now;
            continue;
        }
        if (now - c->stopped_since < s->cfg->pin_lease)
            continue;
        ec_warn("client %llu (pid %d) holds %u view(s) and has been stopped for %ld s "
                "(--pin-lease %ld): revoking its views and disconnecting it",
                (unsigned long long)c->id, (int)c->pid, pins,
                (long)(now - c->stopped_since), s->cfg->pin_lease);
        if (c->session) {
            c->session->revoked_after = (uint32_t)s->cfg->pin_lease;
            atomic_store_explicit(&c->session->revoked, EC_SESSION_REVOKED_STOPPED,
                                  memory_order_release);
        }
        s->st.pin_revocations++;
        srv_conn_close(s, c);
        i = (size_t)-1; /* the map moved entries: rescan */
    }
}

static void reap_silent(server *s)
{
    time_t now = mono_seconds();

    for (size_t i = 0; i < s->conns.cap; i++) {
        struct conn *c = s->conns.vals[i];
        if (s->conns.keys[i] && !c->hello && now - c->accepted >= HELLO_TIMEOUT) {
            ec_debug("client %llu (pid %d) sent no HELLO in %d s: closing",
                     (unsigned long long)c->id, (int)c->pid, HELLO_TIMEOUT);
            srv_conn_close(s, c);
            i = (size_t)-1; /* the map moved entries: rescan */
        }
    }
}

static bool peer_allowed(const server *s, uid_t uid)
{
    if (s->cfg->allow_any || uid == 0 || uid == geteuid())
        return true;
    for (size_t i = 0; i < s->cfg->n_allow_uids; i++)
        if (s->cfg->allow_uids[i] == uid)
            return true;
    for (size_t i = 0; i < s->cfg->n_admin_uids; i++)
        if (s->cfg->admin_uids[i] == uid)
            return true;
    return false;
}

/* Requests that change what is stored or served: only for administrators
 * (root, the daemon's uid, --admin-uid). Reading needs only admission. */
static bool op_is_admin(uint16_t op)
{
    switch (op) {
    case EC_OP_ALIAS:
    case EC_OP_IMPORT:
    case EC_OP_PREWARM:
    case EC_OP_EVICT:
    case EC_OP_RETIRE:
    case EC_OP_REFRESH:
    case EC_OP_POLICY:
    case EC_OP_MODE:
    case EC_OP_UPGRADE:
    case EC_OP_INDEX_PUT:
    case EC_OP_DYN_SET:
    case EC_OP_ROWS_PUT:
    case EC_OP_ROWS_DEL:
    case EC_OP_SNAPSHOT:
    case EC_OP_PUBLISH:
    case EC_OP_PULL:
    case EC_OP_UNPUBLISH:
    case EC_OP_RELOAD:
        return true;
    default:
        return false;
    }
}

bool srv_peer_admin(const server *s, uid_t uid)
{
    if (uid == 0 || uid == geteuid())
        return true;
    for (size_t i = 0; i < s->cfg->n_admin_uids; i++)
        if (s->cfg->admin_uids[i] == uid)
            return true;
    return false;
}

/* Refuse a connection just accepted: say why and hang up. What the client
 * already sent is read first: closing a socket with unread messages resets
 * the peer's, which would then lose the reason. */
static void refuse(int fd, int code, const char *msg)
{
    char sink[EC_MSG_MAX];

    for (int i = 0; i < 4 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; i++)
        ;
    ec_msg_send_error(fd, EC_OP_HELLO, 0, code, msg);
    close(fd);
}

static void do_accept(server *s)
{
    for (;;) {
        struct ucred cred;
        socklen_t cl = sizeof(cred);
        struct epoll_event ev = {.events = EPOLLIN};
        struct conn *c;
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

        if (fd < 0) {
            if ((errno == EMFILE || errno == ENFILE) && s->reserve_fd >= 0) {
                /* Out of descriptors: the pending connection would keep the
                 * listening socket readable and spin the loop. Spend the
                 * reserve descriptor to accept it and hang up at once. */
                int shed;
                close(s->reserve_fd);
                shed = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
                if (shed >= 0)
                    close(shed);
                s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (!s->warned_emfile) {
                    ec_warn("out of file descriptors (%u clients): refusing new "
                            "connections until some close; raise the limit (ulimit -n)",
                            (unsigned)s->conns.len);
                    s->warned_emfile = true;
                }
                /* EMFILE comes before the queue is looked at: stop when the
                 * shed found nobody waiting. */
                if (shed < 0)
                    return;
                s->st.rejected++;
                continue;
            }
            if (errno != EAGAIN && errno != EINTR)
                ec_warn("accept: %s", strerror(errno));
            return;
        }
        s->warned_emfile = false;
        /* Credentials first: a uid that may not connect never holds a slot,
         * and no uid holds more than its share of them. */
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
            close(fd);
            s->st.rejected++;
            continue;
        }
        if (!peer_allowed(s, cred.uid)) {
            char msg[200];
            snprintf(msg, sizeof(msg),
                     "uid %u may not use this embcached (it runs as uid %u); start it with "
                     "--allow-uid %u or --allow-any",
                     (unsigned)cred.uid, (unsigned)geteuid(), (unsigned)cred.uid);
            refuse(fd, EC_EPERM, msg);
            s->st.rejected++;
            s->st.rejected_uid++;
            continue;
        }
        {
            unsigned max = s->cfg->max_clients ? s->cfg->max_clients : 1024;
            unsigned per = s->cfg->max_clients_per_uid ? s->cfg->max_clients_per_uid
                                                       : (max / 4 ? max / 4 : 1);
            bool full = s->conns.len >= max;
            if (full || uid_count(s, cred.uid, 0) >= per) {
                char msg[200];
                snprintf(msg, sizeof(msg),
                         full ? "embcached serves %u clients, its limit (--max-clients)"
                              : "uid %u holds %u connections, the limit per uid "
                                "(--max-clients-per-uid); close some",
                         full ? max : (unsigned)cred.uid, full ? 0 : per);
                refuse(fd, EC_EBUSY, msg);
                s->st.rejected++;
                s->st.rejected_uid_limit += !full;
                continue;
            }
        }
        c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->id = s->next_id++;
        c->fd = fd;
        c->accepted = mono_seconds();
        c->pid = cred.pid;
        c->uid = cred.uid;
        ev.data.u64 = c->id;
        if (ec_u64map_put(&s->conns, c->id, c) || epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) ||
            ec_engine_owner_open(s->engine, c->id, c->pid) || uid_count(s, c->uid, +1) == UINTPTR_MAX) {
            ec_u64map_del(&s->conns, c->id);
            close(fd);
            free(c);
            continue;
        }
        s->st.accepted++;
    }
}

/* ------------------------------------------------------------------ */
/* Handlers. Each reads its whole body, checks ec_rbuf_done, then acts.  */

int srv_bad_body(uint16_t op)
{
    return ec_seterr(EC_EPROTO, "malformed body for op %u: a field is missing, too long or "
                                "there are trailing bytes", op);
}

static int make_session(server *s, struct conn *c, int *fd_out)
{
    int fd = memfd_create("embcache-session", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    ec_session_page *p;

    if (fd < 0)
        return ec_seterr_errno(EC_EIO, errno, "memfd_create for a session page");
    /* Sealed so the client cannot shrink it under the daemon's mapping. */
    if (ftruncate(fd, EC_SESSION_SIZE) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        int err = errno;
        close(fd);
        return ec_seterr_errno(EC_EIO, err, "sizing a session page");
    }
    p = mmap(NULL, EC_SESSION_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int err = errno;
        close(fd);
        return ec_seterr_errno(EC_EIO, err, "mapping a session page");
    }
    p->magic = EC_SESSION_MAGIC;
    p->version = EC_SESSION_VERSION;
    p->ring_slots = EC_SESSION_RING;
    p->generation = ec_engine_generation(s->engine);
    p->client_id = c->id;
    c->session = p;
    *fd_out = fd;
    return 0;
}

static int h_hello(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char client[EC_NAME_MAX + 1];
    int fds[2] = {-1, -1}, rc;
    ec_wbuf w;
    ec_segment *seg = ec_engine_segment(s->engine);

    c->features = ec_get_u32(r); /* unknown bits: a newer client, read as not asked */
    ec_get_str(r, client, sizeof(client));
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_HELLO);
    if (c->hello)
        return ec_seterr(EC_EPROTO, "HELLO sent twice on one connection");
    if (!peer_allowed(s, c->uid))
        return ec_seterr(EC_EPERM, "uid %u may not use this embcached (it runs as uid %u); "
                                   "start it with --allow-uid %u or --allow-any",
                         (unsigned)c->uid, (unsigned)geteuid(), (unsigned)c->uid);
    rc = ec_segment_open_readonly(seg, &fds[0]);
    if (rc)
        return rc;
    rc = make_session(s, c, &fds[1]);
    if (rc) {
        close(fds[0]);
        return rc;
    }
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_HELLO | EC_OP_REPLY, req_id, 0);
    ec_put_u64(&w, ec_engine_generation(s->engine));
    ec_put_u64(&w, seg->size);
    ec_put_u32(&w, EC_SHM_LAYOUT_VERSION);
    ec_put_u32(&w, EC_SESSION_SIZE);
    ec_put_u32(&w, (uint32_t)getpid());
    ec_put_u64(&w, c->id);
    ec_put_str(&w, EC_VERSION_STRING);
    c->hello = true;
    ec_debug("client %llu: pid %d uid %u (%s)", (unsigned long long)c->id, (int)c->pid,
             (unsigned)c->uid, client);
    srv_reply_send(s, c, ec_msg_end(&w), fds, 2);
    close(fds[0]);
    close(fds[1]);
    return 0;
}

static int h_resolve(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char model[EC_NAME_MAX + 1], version[EC_NAME_MAX + 1], tensor[EC_NAME_MAX + 1];
    ec_proto_tensor t;
    ec_wbuf w;
    int rc;

    ec_get_str(r, model, sizeof(model));
    ec_get_str(r, version, sizeof(version));
    ec_get_str(r, tensor, sizeof(tensor));
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_RESOLVE);
    rc = ec_engine_resolve(s->engine, model, version, tensor, &t);
    if (rc)
        return rc;
    if (ec_dyn_has(s->dyn, t.id))
        t.mode = EC_CACHE_DYNAMIC;
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_RESOLVE | EC_OP_REPLY, req_id, 0);
    ec_put_tensor(&w, &t);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

/* Count a request that is answered later, refusing one past the limit: a
 * client cannot pile up work in the daemon. The caller gives it back
 * (outstanding--) when the request fails to start. */
int srv_outstanding_take(struct conn *c)
{
    if (c->outstanding >= MAX_OUTSTANDING)
        return ec_seterr(EC_EBUSY, "more than %d requests outstanding on one connection",
                         MAX_OUTSTANDING);
    c->outstanding++;
    return 0;
}

static int h_fault(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    uint32_t tensor = ec_get_u32(r), n = ec_get_u32(r);
    uint32_t parts[EC_FAULT_MAX_PARTS];
    int rc;

    if (r->bad || n == 0 || n > EC_FAULT_MAX_PARTS)
        return ec_seterr(EC_EPROTO, "FAULT asks for %u partitions (1..%u allowed)", n,
                         (unsigned)EC_FAULT_MAX_PARTS);
    for (uint32_t i = 0; i < n; i++)
        parts[i] = ec_get_u32(r);
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_FAULT);
    if ((rc = srv_outstanding_take(c)))
        return rc;
    rc = ec_engine_fault(s->engine, c->id, (uint64_t)EC_OP_FAULT << 32 | req_id, tensor, parts,
                         n);
    if (rc)
        c->outstanding--;
    return rc;
}

static int h_fault_rows(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    uint32_t tensor = ec_get_u32(r), n = ec_get_u32(r);
    uint64_t *ids;
    int rc;

    if (r->bad || n == 0 || n > EC_FAULT_MAX_ROWS)
        return ec_seterr(EC_EPROTO, "FAULT_ROWS asks for %u rows (1..%u allowed)", n,
                         (unsigned)EC_FAULT_MAX_ROWS);
    ids = malloc(n * sizeof(*ids));
    if (!ids)
        return ec_seterr(EC_ENOMEM, "fault of %u rows", n);
    for (uint32_t i = 0; i < n; i++)
        ids[i] = ec_get_u64(r);
    rc = ec_rbuf_done(r) ? srv_outstanding_take(c) : srv_bad_body(EC_OP_FAULT_ROWS);
    if (rc == 0) {
        rc = ec_engine_fault_rows(s->engine, c->id, (uint64_t)EC_OP_FAULT_ROWS << 32 | req_id,
                                  tensor, ids, n);
        if (rc)
            c->outstanding--;
    }
    free(ids);
    return rc;
}

static int h_pin(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    uint32_t tensor = ec_get_u32(r);
    int rc;

    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_PIN);
    if ((rc = srv_outstanding_take(c)))
        return rc;
    rc = ec_engine_pin(s->engine, c->id, (uint64_t)EC_OP_PIN << 32 | req_id, tensor);
    if (rc)
        c->outstanding--;
    return rc;
}

static int h_unpin(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    uint64_t pin = ec_get_u64(r);
    ec_wbuf w;
    int rc;

    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_UNPIN);
    rc = ec_engine_unpin(s->engine, c->id, pin);
    if (rc)
        return rc;
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_UNPIN | EC_OP_REPLY, req_id, 0);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

/* Queue a job for the importer thread (the job is its from now on). */
void srv_import_enqueue(server *s, struct import_job *j)
{
    struct import_job **t;

    j->next = NULL;
    pthread_mutex_lock(&s->ilock);
    for (t = &s->iq; *t; t = &(*t)->next)
        ;
    *t = j;
    pthread_cond_signal(&s->icond);
    pthread_mutex_unlock(&s->ilock);
}

static int h_import(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, int *fds,
                    int *nfds)
{
    struct import_job *j = calloc(1, sizeof(*j));
    uint32_t n;

    if (!j)
        return ec_seterr(EC_ENOMEM, "import job");
    ec_get_str(r, j->model, sizeof(j->model));
    j->opts.version = ec_get_i64(r);
    j->opts.round = ec_get_i64(r);
    ec_get_str(r, j->params, sizeof(j->params));
    j->opts.partition_bytes = ec_get_u64(r);
    n = ec_get_u32(r);
    if (r->bad || n == 0 || n > EC_IMPORT_MAX_FILES || (int)n != *nfds) {
        free(j);
        return ec_seterr(EC_EPROTO, "IMPORT names %u files and carries %d descriptors "
                                    "(1..%d, one per file)", n, *nfds, EC_IMPORT_MAX_FILES);
    }
    for (uint32_t i = 0; i < n; i++)
        ec_get_str(r, j->names[i], sizeof(j->names[i]));
    if (!ec_rbuf_done(r)) {
        free(j);
        return srv_bad_body(EC_OP_IMPORT);
    }
    if (srv_outstanding_take(c)) {
        free(j);
        return EC_EBUSY;
    }
    j->opts.model = j->model;
    j->opts.params_json = j->params[0] ? j->params : NULL;
    j->owner = c->id;
    j->req_id = req_id;
    j->n = n;
    memcpy(j->fds, fds, sizeof(int) * n);
    *nfds = 0; /* the job owns them now */
    srv_import_enqueue(s, j);
    return 0;
}

/* UPGRADE: the version's version-1 partition files are rewritten by the
 * importer thread (it takes time, and the loop must go on serving), then
 * the version is refreshed here to take them. */
static int h_upgrade(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    struct import_job *j = calloc(1, sizeof(*j));

    if (!j)
        return ec_seterr(EC_ENOMEM, "upgrade job");
    ec_get_str(r, j->model, sizeof(j->model));
    ec_get_str(r, j->version, sizeof(j->version));
    if (!ec_rbuf_done(r)) {
        free(j);
        return srv_bad_body(EC_OP_UPGRADE);
    }
    if (srv_outstanding_take(c)) {
        free(j);
        return EC_EBUSY;
    }
    j->upgrade = true;
    j->owner = c->id;
    j->req_id = req_id;
    srv_import_enqueue(s, j);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Importer thread                                                     */

static void *importer_main(void *arg)
{
    server *s = arg;

    for (;;) {
        struct import_job *j;
        ec_import_file files[EC_IMPORT_MAX_FILES];
        uint64_t one = 1;

        pthread_mutex_lock(&s->ilock);
        while (!s->iq && !s->istop)
            pthread_cond_wait(&s->icond, &s->ilock);
        if (!s->iq) {
            pthread_mutex_unlock(&s->ilock);
            return NULL;
        }
        j = s->iq;
        s->iq = j->next;
        pthread_mutex_unlock(&s->ilock);

        for (size_t i = 0; i < j->n; i++) {
            files[i].fd = j->fds[i];
            files[i].name = j->names[i];
        }
        if (j->remote)
            j->rc = srv_remote_run(s, j);
        else if (j->index)
            j->rc = srv_index_store(s, j);
        else if (j->upgrade)
            j->rc = ec_import_upgrade(s->icat, s->cfg->data_dir, j->model, j->version,
                                      &j->tensors);
        else
            j->rc = ec_import_files(s->icat, s->cfg->data_dir, &j->opts, files, j->n,
                                    &j->tensors);
        if (j->rc)
            snprintf(j->msg, sizeof(j->msg), "%s", ec_last_error());
        for (size_t i = 0; i < j->n; i++)
            close(j->fds[i]);

        pthread_mutex_lock(&s->ilock);
        j->next = s->idone;
        s->idone = j;
        pthread_mutex_unlock(&s->ilock);
        (void)!write(s->ifd, &one, sizeof(one));
    }
}

static void imports_done(server *s)
{
    struct import_job *j, *next;
    uint64_t v;

    (void)!read(s->ifd, &v, sizeof(v));
    pthread_mutex_lock(&s->ilock);
    j = s->idone;
    s->idone = NULL;
    pthread_mutex_unlock(&s->ilock);
    for (; j; j = next) {
        struct conn *c = ec_u64map_get(&s->conns, j->owner);
        uint16_t op = j->index ? EC_OP_INDEX_PUT : j->upgrade ? EC_OP_UPGRADE : EC_OP_IMPORT;
        next = j->next;
        if (j->remote) {
            srv_remote_done(s, c, j);
            free(j);
            continue;
        }
        if (j->upgrade && j->rc == 0 && j->tensors) {
            /* The files changed under the catalog: take them. */
            uint64_t changed = 0;
            j->rc = ec_engine_refresh(s->engine, j->model, j->version, &changed);
            if (j->rc)
                snprintf(j->msg, sizeof(j->msg), "upgraded files of %.64s version %.64s could "
                         "not be taken: %.300s; run `embcache refresh` on it", j->model,
                         j->version, ec_last_error());
        }
        if (j->index) {
            if (j->rc)
                ec_warn("index of %s version %lld tensor %s refused: %s", j->model,
                        (long long)j->opts.version, j->tensor, j->msg);
        } else if (j->upgrade) {
            if (j->rc)
                ec_warn("%s", j->msg);
            else
                ec_info("upgraded %s version %s: %u partition file(s) rewritten with block "
                        "checksums", j->model, j->version, j->tensors);
        } else if (j->rc) {
            s->st.import_failures++;
            ec_warn("%s", j->msg);
        } else {
            s->st.imports++;
            ec_info("imported %s version %lld: %u tensor(s)", j->model,
                    (long long)j->opts.version, j->tensors);
        }
        if (c) {
            c->outstanding--;
            if (j->rc) {
                srv_reply_error(s, c, op, j->req_id, j->rc, j->msg);
            } else {
                ec_wbuf w;
                ec_msg_begin(&w, s->out, sizeof(s->out), (uint16_t)(op | EC_OP_REPLY),
                             j->req_id, 0);
                if (j->index)
                    ec_put_u64(&w, j->isize);
                else
                    ec_put_u32(&w, j->tensors);
                srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
            }
        }
        free(j);
    }
}

/* ------------------------------------------------------------------ */
/* Dispatch                                                            */

static void conn_readable(server *s, struct conn *c)
{
    int fds[EC_MSG_MAX_FDS], nfds = 0, rc;
    ec_msg_hdr h;
    ec_rbuf body;
    ssize_t n;

    /* s->buf is shared by all connections: clear the header so a truncated
     * message can never be answered with another request's op and id. */
    memset(s->buf, 0, EC_MSG_HDR);
    n = ec_msg_recv(c->fd, s->buf, sizeof(s->buf), fds, &nfds, EC_MSG_MAX_FDS);
    if (n == 0) {
        srv_conn_close(s, c);
        return;
    }
    if (n == EC_ETOOBIG) {
        /* The excess was discarded. An embcache header gets an answer and
         * the connection stays; anything else is hung up on. */
        memcpy(&h, s->buf, sizeof(h));
        s->st.protocol_errors++;
        if (h.magic == EC_PROTO_MAGIC && h.version == EC_PROTO_VERSION && c->hello) {
            srv_reply_error(s, c, h.op, h.req_id, EC_ETOOBIG, ec_last_error());
        } else {
            ec_msg_send_error(c->fd, 0, 0, EC_EPROTO, "oversized message that is not an "
                                                      "embcache request");
            srv_conn_close(s, c);
        }
        return;
    }
    if (n < 0) {
        if (n != EC_EIO || (errno != EAGAIN && errno != EWOULDBLOCK))
            srv_conn_close(s, c);
        return;
    }
    rc = ec_msg_parse(s->buf, (size_t)n, &h, &body);
    if (rc) {
        /* Not an embcache message (or another version): say why, hang up. */
        s->st.protocol_errors++;
        ec_msg_send_error(c->fd, 0, 0, rc, NULL);
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        srv_conn_close(s, c);
        return;
    }
    if (nfds && h.op != EC_OP_IMPORT && !(h.op == EC_OP_RES_PUT && nfds == 1) &&
        !(h.op == EC_OP_INDEX_PUT && nfds == 1) &&
        !((h.op == EC_OP_ROWS_PUT || h.op == EC_OP_ROWS_DEL) && nfds == 1)) {
        rc = ec_seterr(EC_EPROTO, "op %u does not take file descriptors", h.op);
    } else if (!c->hello && h.op != EC_OP_HELLO) {
        rc = ec_seterr(EC_EPROTO, "the first message must be HELLO (got op %u)", h.op);
    } else if (h.op & EC_OP_REPLY || h.status != 0) {
        rc = ec_seterr(EC_EPROTO, "a request must not carry a reply flag or a status");
    } else if (op_is_admin(h.op) && !srv_peer_admin(s, c->uid)) {
        rc = ec_seterr(EC_EPERM,
                       "uid %u may read from this embcached but not administer it (import, "
                       "alias, prewarm, evict, retire, refresh, policy, mode, upgrade, "
                       "index build); "
                       "start it with --admin-uid %u to allow that",
                       (unsigned)c->uid, (unsigned)c->uid);
        s->st.denied++;
    } else {
        switch (h.op) {
        case EC_OP_HELLO: rc = h_hello(s, c, &body, h.req_id); break;
        case EC_OP_RESOLVE: rc = h_resolve(s, c, &body, h.req_id); break;
        case EC_OP_FAULT: rc = h_fault(s, c, &body, h.req_id); break;
        case EC_OP_FAULT_ROWS: rc = h_fault_rows(s, c, &body, h.req_id); break;
        case EC_OP_TENSORS: rc = srv_h_tensors(s, c, &body, h.req_id); break;
        case EC_OP_MODE: rc = srv_h_mode(s, c, &body, h.req_id); break;
        case EC_OP_UPGRADE: rc = h_upgrade(s, c, &body, h.req_id); break;
        case EC_OP_PIN: rc = h_pin(s, c, &body, h.req_id); break;
        case EC_OP_UNPIN: rc = h_unpin(s, c, &body, h.req_id); break;
        case EC_OP_STATS: rc = srv_h_stats(s, c, &body, h.req_id); break;
        case EC_OP_LIST: rc = srv_h_list(s, c, &body, h.req_id); break;
        case EC_OP_ALIAS: rc = srv_h_alias(s, c, &body, h.req_id); break;
        case EC_OP_FIND: rc = srv_h_find(s, c, &body, h.req_id); break;
        case EC_OP_PREWARM: rc = srv_h_prewarm(s, c, &body, h.req_id); break;
        case EC_OP_EVICT:
        case EC_OP_REFRESH: rc = srv_h_version_u64(s, c, &body, h.req_id, h.op); break;
        case EC_OP_RETIRE: rc = srv_h_retire(s, c, &body, h.req_id); break;
        case EC_OP_POLICY: rc = srv_h_policy(s, c, &body, h.req_id); break;
        case EC_OP_DEVICES: rc = srv_h_devices(s, c, &body, h.req_id); break;
        case EC_OP_IMPORT: rc = h_import(s, c, &body, h.req_id, fds, &nfds); break;
        case EC_OP_NS_OPEN: rc = srv_h_ns_open(s, c, &body, h.req_id); break;
        case EC_OP_RES_LEASE: rc = srv_h_res_lease(s, c, &body, h.req_id); break;
        case EC_OP_RES_PUT: rc = srv_h_res_put(s, c, &body, h.req_id, fds, nfds); break;
        case EC_OP_RES_RELEASE: rc = srv_h_res_release(s, c, &body, h.req_id); break;
        case EC_OP_RES_PURGE: rc = srv_h_res_purge(s, c, &body, h.req_id); break;
        case EC_OP_NS_LIST: rc = srv_h_ns_list(s, c, &body, h.req_id); break;
        case EC_OP_NS_DROP: rc = srv_h_ns_drop(s, c, &body, h.req_id); break;
        case EC_OP_INDEX_PUT: rc = srv_h_index_put(s, c, &body, h.req_id, fds, &nfds); break;
        case EC_OP_INDEX_OPEN: rc = srv_h_index_open(s, c, &body, h.req_id); break;
        case EC_OP_PUBLISH:
        case EC_OP_PULL:
        case EC_OP_UNPUBLISH: rc = srv_h_publish_pull(s, c, &body, h.req_id, h.op); break;
        case EC_OP_DYN_SET: rc = srv_h_dyn_set(s, c, &body, h.req_id); break;
        case EC_OP_ROWS_PUT: rc = srv_h_rows_put(s, c, &body, h.req_id, fds, nfds); break;
        case EC_OP_ROWS_DEL: rc = srv_h_rows_del(s, c, &body, h.req_id, fds, nfds); break;
        case EC_OP_SNAPSHOT: rc = srv_h_snapshot(s, c, &body, h.req_id); break;
        case EC_OP_DYN_STATS: rc = srv_h_dyn_stats(s, c, &body, h.req_id); break;
        case EC_OP_RELOAD: rc = srv_h_reload(s, c, &body, h.req_id); break;
        default:
            rc = ec_seterr(EC_EPROTO, "unknown op %u: this embcached speaks ops 1..%d",
                           h.op, EC_OP_MAX_ - 1);
        }
    }
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    if (rc) {
        if (rc == EC_EPROTO)
            s->st.protocol_errors++;
        /* The handler may have closed c (a failed send); look it up again. */
        c = ec_u64map_get(&s->conns, c->id) == c ? c : NULL;
        if (c) {
            /* A refused HELLO (credentials) or a request before HELLO ends
             * the connection; any other error is an answer. */
            bool fatal = (rc == EC_EPERM && h.op == EC_OP_HELLO) ||
                         (!c->hello && h.op != EC_OP_HELLO);
            srv_reply_error(s, c, h.op, h.req_id, rc, ec_last_error());
            if (fatal && ec_u64map_get(&s->conns, c->id) == c)
                srv_conn_close(s, c);
        }
    }
}

/* Feed the clients' access hints to the engine. Returns whether there were
 * any (then the loop comes back in RING_MS rather than TICK_MS: a busy
 * client fills its ring in well under a tick). */
static bool drain_rings(server *s)
{
    bool any = false;

    for (size_t i = 0; i < s->conns.cap; i++) {
        struct conn *c = s->conns.vals[i];
        uint64_t head;

        if (!s->conns.keys[i] || !c->session)
            continue;
        head = atomic_load_explicit(&c->session->ring_head, memory_order_acquire);
        if (head < c->ring_tail || head - c->ring_tail > EC_SESSION_RING)
            c->ring_tail = head > EC_SESSION_RING ? head - EC_SESSION_RING : 0;
        any |= c->ring_tail < head;
        for (; c->ring_tail < head; c->ring_tail++)
            ec_engine_touch(s->engine,
                            atomic_load_explicit(&c->session->ring[c->ring_tail % EC_SESSION_RING],
                                                 memory_order_relaxed));
    }
    return any;
}

/* ------------------------------------------------------------------ */
/* Start-up and shutdown                                               */

/* Is another daemon listening on the socket path? A stale socket (its
 * daemon died) is removed. */
static int probe_socket(const server *s)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    const char *path = s->cfg->socket_path;
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path))
        return ec_seterr(EC_EINVAL, "socket path %s is longer than %zu bytes; pick a shorter "
                                    "--socket", path, sizeof(sa.sun_path) - 1);
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return ec_seterr_errno(EC_EIO, errno, "socket");
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        close(fd);
        return ec_seterr(EC_EBUSY, "another embcached is already listening on %s; stop it "
                                   "or pass another --socket", path);
    }
    if (errno == ECONNREFUSED)
        unlink(path);
    close(fd);
    return 0;
}

/* Bind and listen; called once the engine is ready, so a client that
 * connects sees this daemon's generation. */
static int listen_socket(server *s)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    const char *path = s->cfg->socket_path;
    int fd;

    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return ec_seterr_errno(EC_EIO, errno, "socket");
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int err = errno;
        close(fd);
        return ec_seterr_errno(EC_EIO, err, "cannot bind %s", path);
    }
    chmod(path, s->cfg->allow_any || s->cfg->n_allow_uids || s->cfg->n_admin_uids ? 0666 : 0600);
    stat(path, &s->sock_st);
    if (listen(fd, 128) < 0) {
        int err = errno;
        close(fd);
        unlink(path);
        return ec_seterr_errno(EC_EIO, err, "listen on %s", path);
    }
    s->lfd = fd;
    return 0;
}

/* Clients cost a descriptor each: take the hard limit, not the soft one. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int watch(server *s, int fd, uint64_t id)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = id};

    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        return ec_seterr_errno(EC_EIO, errno, "epoll_ctl");
    return 0;
}

/* Create the socket's directory if it is missing (0700 when it is the
 * default one of a non-root user), and refuse a directory that someone else
 * controls: who can write it can put their own socket in our place. */
static int socket_dir(const char *path)
{
    char dir[4096], def[256];
    struct stat st;

    ec_socket_dir_of(path, dir, sizeof(dir));
    snprintf(def, sizeof(def), "/tmp/embcache-%u", (unsigned)geteuid());
    if (mkdir(dir, strcmp(dir, def) ? 0755 : 0700) < 0 && errno != EEXIST)
        return ec_seterr_errno(EC_EIO, errno, "cannot create the socket directory %s", dir);
    if (lstat(dir, &st) < 0)
        return ec_seterr_errno(EC_EIO, errno, "cannot stat the socket directory %s", dir);
    if (!ec_socket_dir_safe(dir, &st))
        return ec_seterr(EC_EPERM,
                         "the socket directory %s is %s owned by uid %u with mode %04o: "
                         "another user could put a socket of theirs in this daemon's place; "
                         "remove it (it is recreated), or pass --socket in a directory of "
                         "your own",
                         dir, S_ISDIR(st.st_mode) ? "a directory" : "not a directory",
                         (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
    return 0;
}

int ec_server_run(const ec_server_config *cfg)
{
    server *s = calloc(1, sizeof(*s));
    ec_engine_config ecfg = {.data_dir = cfg->data_dir, .shm_size = cfg->shm_size,
                             .io_threads = cfg->io_threads,
                             .keeper = cfg->keeper,
                             .budget = cfg->budget,
                             .ttl_seconds = cfg->ttl_seconds,
                             .ttl_jitter = cfg->ttl_jitter,
                             .gpu_slab = cfg->gpu_slab, /* UINT64_MAX: devtier sizes it */
                             .pager = (enum ec_pager_kind)cfg->pager,
                             .queue_depth = cfg->queue_depth,
                             .rate_window = cfg->rate_window,
                             .item_bytes = cfg->item_bytes,
                             .remote = cfg->remote,
                             .remote_threads = cfg->remote_threads,
                             .remote_keep = !cfg->remote_no_keep,
                             .remote_keep_reserve = cfg->remote_keep_reserve,
                             .remote_keep_max = cfg->remote_keep_max};
    sigset_t mask;
    char catpath[4200];
    int rc;
    bool running = true;
    struct timespec last_tick = {0}, last_ring = {0};

    if (!s)
        return ec_seterr(EC_ENOMEM, "server");
    if (cfg->remote_auth_file[0]) {
        /* Before anything opens the cluster: every handle takes them. */
        ec_rcluster_auth a;
        if ((rc = ec_rcluster_auth_load(cfg->remote_auth_file, &a)) < 0) {
            free(s);
            return rc;
        }
        ec_rcluster_set_default_auth(cfg->remote, &a);
        explicit_bzero(&a, sizeof(a));
        if (!cfg->remote[0])
            ec_warn("remote-auth-file %s is not used: no remote cluster is configured "
                    "(--remote)", cfg->remote_auth_file);
    }
    s->live = *cfg;
    s->cfg = &s->live;
    s->conf.last_ok = !cfg->reload_failed;
    s->conf.failures = cfg->reload_failed;
    s->ep = s->lfd = s->sfd = s->ifd = -1;
    s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    raise_fd_limit();
    s->next_id = ID_FIRST_CONN;
    pthread_mutex_init(&s->ilock, NULL);
    pthread_cond_init(&s->icond, NULL);

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP); /* reload (server_reload.c) */
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    /* Every other signal that would end the process is ignored on purpose:
     * only SIGTERM and SIGINT stop the daemon, and they stop it cleanly.
     * SIGHUP is blocked and read from the signalfd (a blocked signal is
     * queued whatever its disposition; setting SIG_IGN now would discard
     * one already pending). */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    signal(SIGALRM, SIG_IGN);

    /* The socket first: a daemon refused because another one listens there
     * must not have created a segment or touched a data dir. */
    rc = socket_dir(cfg->socket_path);
    if (rc)
        goto out;
    rc = probe_socket(s);
    if (rc)
        goto out;
    rc = ec_engine_open(&ecfg, engine_notify, s, &s->engine);
    if (rc)
        goto out;
    ec_engine_set_epoch_source(s->engine, min_epoch, s);
    rc = ec_resmgr_open(s->engine,
                        &(ec_resmgr_config){.arena_bytes = cfg->result_arena,
                                            .keeper = cfg->keeper,
                                            .remote = cfg->remote},
                        &s->results);
    if (rc)
        goto out;
    ec_resmgr_set_answer(s->results, srv_results_answer, s);
    rc = ec_dyn_open(s->engine,
                     &(ec_dyn_config){.data_dir = cfg->data_dir,
                                      .sync = (ec_wal_sync_mode)cfg->wal_sync,
                                      .sync_ms = cfg->wal_sync_ms},
                     &s->dyn);
    if (rc)
        goto out;
    snprintf(catpath, sizeof(catpath), "%s/%s", cfg->data_dir, EC_CATALOG_FILE);
    rc = ec_catalog_open(catpath, &s->icat);
    if (rc)
        goto out;
    rc = listen_socket(s);
    if (rc)
        goto out;
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    s->sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    s->ifd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->ep < 0 || s->sfd < 0 || s->ifd < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "epoll/signalfd/eventfd");
        goto out;
    }
    if ((rc = watch(s, s->lfd, ID_LISTEN)) || (rc = watch(s, s->sfd, ID_SIGNAL)) ||
        (rc = watch(s, s->ifd, ID_IMPORT)) ||
        (rc = watch(s, ec_engine_event_fd(s->engine), ID_ENGINE)) ||
        (ec_resmgr_remote_fd(s->results) >= 0 &&
         (rc = watch(s, ec_resmgr_remote_fd(s->results), ID_RESULTS))))
        goto out;
    if (cfg->metrics_port &&
        ((rc = ec_metrics_start(cfg->metrics_addr, cfg->metrics_port, &s->metrics)) ||
         (rc = watch(s, ec_metrics_event_fd(s->metrics), ID_METRICS))))
        goto out;
    if (pthread_create(&s->importer, NULL, importer_main, s)) {
        rc = ec_seterr(EC_ENOMEM, "cannot start the importer thread");
        goto out;
    }
    s->importer_started = true;
    ec_keeper_ready(cfg->keeper);
    if (!cfg->keeper) /* --no-keeper: this process is the one systemd watches */
        ec_notify_ready("serving on %s", cfg->socket_path);
    {
        uint64_t versions = 0, models = 0, tensors = 0;
        ec_catalog_counts(ec_engine_catalog(s->engine), &models, &versions, &tensors);
        ec_info("embcached %s ready: socket %s, data dir %s, segment %llu MiB, generation "
                "%llu, %llu model(s), %llu version(s)",
                EC_VERSION_STRING, cfg->socket_path, cfg->data_dir,
                (unsigned long long)(ec_engine_segment(s->engine)->size >> 20),
                (unsigned long long)ec_engine_generation(s->engine),
                (unsigned long long)models, (unsigned long long)versions);
    }

    while (running) {
        struct epoll_event evs[64];
        struct timespec now;
        int n = epoll_wait(s->ep, evs, 64,
                           ec_engine_waiting(s->engine) ? 1 : s->rings_busy ? RING_MS : TICK_MS);

        if (n < 0 && errno != EINTR) {
            rc = ec_seterr_errno(EC_EIO, errno, "epoll_wait");
            break;
        }
        for (int i = 0; i < n; i++) {
            uint64_t id = evs[i].data.u64;
            if (id == ID_LISTEN) {
                do_accept(s);
            } else if (id == ID_ENGINE) {
                ec_engine_complete(s->engine);
            } else if (id == ID_IMPORT) {
                imports_done(s);
            } else if (id == ID_METRICS) {
                ec_metrics_serve(s->metrics, srv_metrics_render, s);
            } else if (id == ID_RESULTS) {
                ec_resmgr_remote_events(s->results);
            } else if (id == ID_SIGNAL) {
                struct signalfd_siginfo si;
                if (read(s->sfd, &si, sizeof(si)) != sizeof(si)) {
                    /* taken already */
                } else if (si.ssi_signo == SIGHUP) {
                    srv_reload(s); /* server_reload.c */
                } else {
                    ec_info("signal %u: shutting down", si.ssi_signo);
                    if (!cfg->keeper) /* else the keeper said it */
                        ec_notify_stopping("stopping on signal %u", si.ssi_signo);
                    running = false;
                }
            } else {
                struct conn *c = ec_u64map_get(&s->conns, id);
                if (c)
                    conn_readable(s, c);
            }
        }
        /* Reads the requests of this turn queued go to the kernel together. */
        ec_engine_flush(s->engine);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - last_ring.tv_sec) * 1000 + (now.tv_nsec - last_ring.tv_nsec) / 1000000 >=
            RING_MS) {
            s->rings_busy = drain_rings(s);
            last_ring = now;
        }
        if ((now.tv_sec - last_tick.tv_sec) * 1000 + (now.tv_nsec - last_tick.tv_nsec) / 1000000 >=
            TICK_MS) {
            reap_silent(s);
            ghosts_prune(s);
            reap_held(s);
            reap_stopped(s);
            ec_engine_tick(s->engine);
            ec_resmgr_tick(s->results);
            ec_dyn_tick(s->dyn);
            ec_metrics_alive(s->metrics);
            last_tick = now;
        }
    }
    rc = 0;
out:
    ec_metrics_stop(s->metrics);
    s->metrics = NULL;
    if (s->importer_started) {
        pthread_mutex_lock(&s->ilock);
        s->istop = true;
        pthread_cond_broadcast(&s->icond);
        pthread_mutex_unlock(&s->ilock);
        pthread_join(s->importer, NULL);
        imports_done(s);
    }
    for (struct import_job *j = s->iq, *nx; j; j = nx) {
        nx = j->next;
        for (size_t i = 0; i < j->n; i++)
            close(j->fds[i]);
        free(j->remote);
        free(j);
    }
    while (s->conns.len) {
        size_t i = 0;
        while (!s->conns.keys[i])
            i++;
        srv_conn_close(s, s->conns.vals[i]);
    }
    ec_u64map_free(&s->conns);
    ec_u64map_free(&s->per_uid);
    for (size_t i = 0; i < s->tfold.cap; i++)
        if (s->tfold.keys[i])
            free(s->tfold.vals[i]);
    ec_u64map_free(&s->tfold);
    free(s->ghosts);
    if (s->lfd >= 0) {
        struct stat st;
        close(s->lfd);
        /* Remove the socket only if it is still ours. */
        if (stat(cfg->socket_path, &st) == 0 && st.st_ino == s->sock_st.st_ino &&
            st.st_dev == s->sock_st.st_dev)
            unlink(cfg->socket_path);
    }
    {
        char msg[EC_ERRMSG_MAX];
        snprintf(msg, sizeof(msg), "%s", ec_last_error());
        ec_catalog_close(s->icat);
        ec_resmgr_close(s->results);
        s->results = NULL;
        ec_dyn_close(s->dyn);
        s->dyn = NULL;
        free(s->batch);
        s->batch = NULL;
        ec_engine_close(s->engine);
        if (rc)
            ec_seterr(rc, "%s", msg);
    }
    if (s->ep >= 0)
        close(s->ep);
    if (s->sfd >= 0)
        close(s->sfd);
    if (s->ifd >= 0)
        close(s->ifd);
    if (s->reserve_fd >= 0)
        close(s->reserve_fd);
    pthread_mutex_destroy(&s->ilock);
    pthread_cond_destroy(&s->icond);
    free(s);
    return rc;
}
