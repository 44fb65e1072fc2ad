/*
 * client.c - libembcache: requests to the daemon, connect and close,
 * tensors, views and DLPack (see client_impl.h for the other files).
 *
 * Runs inside inference processes, on any of their threads. A client holds
 * one SEQPACKET connection to embcached, the segment mapped PROT_READ (from
 * the read-only descriptor the daemon sent) and its own session page.
 *
 * Hit path (ec_tensor_gather): for each id, look up its partition in the
 * shared index (lock-free), note where the row is, copy all rows through the
 * device backend, then check each entry's seqlock again; rows whose entry
 * moved are looked up and copied again. No system call, no lock. Rows whose
 * partition is not resident are collected, their partitions sent to the
 * daemon in one FAULT message, and copied once it answers.
 *
 * Requests to the daemon are serialized by the client's mutex (one in
 * flight per connection); the hit path never takes it. This file never
 * writes the segment: it has no writable mapping of it.
 */
#include "client/client_impl.h"

/* The device backend, chosen on first use rather than at connect: probing
 * CUDA initializes it in this process, and a process that forks workers
 * after connecting (and never gathers to a GPU itself) must not have done
 * that - CUDA does not survive fork(). Host gathers never need it. */
const ec_backend *cl_be(void)
{
    return ec_backend_get(EC_BACKEND_AUTO);
}

/* ------------------------------------------------------------------ */
/* fork                                                                */

/* A connection belongs to the process that made it: a child of fork()
 * shares its socket, and a request from both would cross their replies.
 * A fork handler counts forks, so the check on every request is a load. */
static _Atomic uint64_t forks;
static pthread_once_t forks_once = PTHREAD_ONCE_INIT;

static void forked_child(void)
{
    atomic_fetch_add_explicit(&forks, 1, memory_order_relaxed);
}

static void forks_init(void)
{
    pthread_atfork(NULL, NULL, forked_child);
}

uint64_t cl_forks(void)
{
    pthread_once(&forks_once, forks_init);
    return atomic_load_explicit(&forks, memory_order_relaxed);
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */

int cl_stale(const ec_client *c)
{
    uint64_t g = atomic_load_explicit(&c->seg.hdr->generation, memory_order_acquire);

    if (c->session && atomic_load_explicit(&c->session->revoked, memory_order_acquire))
        return ec_seterr(EC_ESTALE, "embcached revoked this client's views and disconnected "
                                    "it: the process was stopped for longer than the daemon's "
                                    "--pin-lease (%u s) while it held them, and their memory "
                                    "may have been reused; close the client and connect again",
                         c->session->revoked_after);
    if (g != c->generation)
        return ec_seterr(EC_ESTALE, "embcached restarted (generation %llu, this client "
                                    "connected to %llu): close the client and connect again",
                         (unsigned long long)g, (unsigned long long)c->generation);
    return 0;
}

uint32_t cl_begin(ec_client *c, ec_wbuf *w, uint16_t op)
{
    uint32_t id = ++c->next_req;

    ec_msg_begin(w, c->sbuf, sizeof(c->sbuf), op, id, 0);
    return id;
}

/* Send the request in c->sbuf and wait for its reply. Caller holds c->lock.
 * On success *body reads the reply body (in c->rbuf). */
int cl_rpc(ec_client *c, ec_wbuf *w, uint32_t req_id, const int *fds, int nfds,
               ec_rbuf *body, int *rfds, int *nrfds, int maxrfds)
{
    uint16_t op;
    size_t len = ec_msg_end(w);
    ec_msg_hdr h;
    ssize_t n;
    int rc;

    memcpy(&op, c->sbuf + offsetof(ec_msg_hdr, op), sizeof(op));
    if (cl_forks() != c->forks)
        return ec_seterr(EC_EINVAL,
                         "this client was connected by process %d, and this process (%d) is "
                         "a fork() of it: the connection is the parent's; connect a client "
                         "of this process's own (ec_client_connect)",
                         c->pid, (int)getpid());
    if (c->broken)
        return ec_seterr(EC_ECONN, "the connection to embcached at %s was lost; close the "
                                   "client and connect again", c->socket_path);
    if (len == 0)
        return ec_seterr(EC_ETOOBIG, "request does not fit in one %u-byte message",
                         EC_MSG_MAX);
    rc = ec_msg_send(c->sock, c->sbuf, len, fds, nfds, false);
    if (rc)
        goto lost;
    n = ec_msg_recv(c->sock, c->rbuf, sizeof(c->rbuf), rfds, nrfds, maxrfds);
    if (n <= 0) {
        rc = n == 0 ? EC_ECONN : (int)n;
        goto lost;
    }
    rc = ec_msg_parse(c->rbuf, (size_t)n, &h, body);
    if (rc == 0 && (h.op != (op | EC_OP_REPLY) || h.req_id != req_id))
        rc = ec_seterr(EC_EPROTO, "reply for op %u request %u answered op %u request %u",
                       op, req_id, h.op & ~EC_OP_REPLY, h.req_id);
    if (rc) {
        c->broken = true;
        goto close_fds;
    }
    if (h.status < 0) {
        char msg[EC_ERRMSG_MAX];
        ec_get_str(body, msg, sizeof(msg));
        rc = h.status < EC_E_LAST ? EC_EPROTO : h.status;
        ec_seterr(rc, "%s", msg[0] ? msg : ec_strerror(rc));
        goto close_fds;
    }
    return 0;
close_fds:
    for (int i = 0; nrfds && i < *nrfds; i++)
        close(rfds[i]);
    if (nrfds)
        *nrfds = 0;
    return rc;
lost:
    c->broken = true;
    if (cl_stale(c))
        return EC_ESTALE;
    return ec_seterr(EC_ECONN, "embcached at %s closed the connection (it stopped or "
                               "restarted): close the client and connect again",
                     c->socket_path);
}

/* ------------------------------------------------------------------ */
/* Connect / close                                                     */

/* Is the process that listens on fd's other end one we trust to be the
 * daemon? Anyone could have bound the path first. */
static int check_daemon_peer(int fd, const char *path)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return ec_seterr_errno(EC_ECONN, errno, "cannot read the credentials of %s", path);
    if (!ec_daemon_uid_trusted(cred.uid))
        return ec_seterr(EC_EPERM,
                         "the process listening on %s (pid %d) runs as uid %u, not as root, "
                         "this process's uid %u or the %s user: refusing to trust it with "
                         "requests or its data; if it is the daemon you meant, set "
                         "EMBCACHE_DAEMON_UID=%u",
                         path, (int)cred.pid, (unsigned)cred.uid, (unsigned)geteuid(),
                         EC_DAEMON_USER, (unsigned)cred.uid);
    return 0;
}

int ec_client_connect(const char *socket_path, ec_client **out)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char def[sizeof(sa.sun_path) + 64];
    ec_client *c;
    ec_wbuf w;
    ec_rbuf r;
    int fds[2] = {-1, -1}, nfds = 0, rc;
    uint32_t req, layout, session_size;
    uint64_t seg_size;
    char dver[64];
    struct stat st;

    if (!out)
        return ec_seterr(EC_EINVAL, "ec_client_connect: out is NULL");
    if (!socket_path)
        socket_path = ec_client_socket(def, sizeof(def), EC_SYSTEM_SOCKET);
    if (strlen(socket_path) >= sizeof(sa.sun_path))
        return ec_seterr(EC_EINVAL, "socket path %s is too long (at most %zu bytes)",
                         socket_path, sizeof(sa.sun_path) - 1);
    c = calloc(1, sizeof(*c));
    if (!c)
        return ec_seterr(EC_ENOMEM, "client");
    c->forks = cl_forks();
    c->pid = (int)getpid();
    c->seg.fd = -1;
    c->batch_fd = -1;
    atomic_init(&c->refs, 1);
    pthread_mutex_init(&c->lock, NULL);
    snprintf(c->socket_path, sizeof(c->socket_path), "%s", socket_path);
    strcpy(sa.sun_path, socket_path);
    c->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (c->sock < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "socket");
        goto fail;
    }
    if (connect(c->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int err = errno;
        if (err == EACCES)
            rc = ec_seterr(EC_EPERM, "not allowed to connect to embcached at %s (permission "
                                     "denied): the daemon must accept uid %u (embcached "
                                     "--allow-uid %u, or --allow-any)",
                           socket_path, (unsigned)geteuid(), (unsigned)geteuid());
        else
            rc = ec_seterr(EC_ECONN, "no embcached is listening on %s (%s): start one with "
                                     "'embcached --socket %s', or set EMBCACHE_SOCKET to "
                                     "the socket of a running one", socket_path,
                           strerror(err), socket_path);
        goto fail;
    }
    if ((rc = check_daemon_peer(c->sock, socket_path)) < 0)
        goto fail;
    req = cl_begin(c, &w, EC_OP_HELLO);
    ec_put_u32(&w, EC_HELLO_FEATURES);
    ec_put_str(&w, "libembcache " EC_VERSION_STRING);
    {
        size_t len = ec_msg_end(&w);
        ssize_t n;
        ec_msg_hdr h;
        rc = ec_msg_send(c->sock, c->sbuf, len, NULL, 0, false);
        /* A daemon that refuses the connection (credentials, limits) says
         * why and hangs up at once, maybe before our HELLO arrived: read
         * what it said before reporting a failed send. */
        n = ec_msg_recv(c->sock, c->rbuf, sizeof(c->rbuf), fds, &nfds, 2);
        if (rc && n <= 0)
            goto fail;
        if (n <= 0) {
            rc = n ? (int)n : ec_seterr(EC_ECONN, "embcached at %s hung up during the "
                                                  "handshake", socket_path);
            goto fail;
        }
        rc = ec_msg_parse(c->rbuf, (size_t)n, &h, &r);
        if (rc)
            goto fail;
        /* request 0: the daemon refused the connection before reading it */
        if (h.op != (EC_OP_HELLO | EC_OP_REPLY) ||
            (h.req_id != req && !(h.req_id == 0 && h.status < 0))) {
            rc = ec_seterr(EC_EPROTO, "unexpected reply to HELLO (op %u)", h.op);
            goto fail;
        }
        if (h.status < 0) {
            char msg[EC_ERRMSG_MAX];
            ec_get_str(&r, msg, sizeof(msg));
            rc = h.status < EC_E_LAST ? EC_EPROTO : h.status;
            ec_seterr(rc, "embcached refused the connection: %s", msg);
            goto fail;
        }
    }
    c->generation = ec_get_u64(&r);
    seg_size = ec_get_u64(&r);
    layout = ec_get_u32(&r);
    session_size = ec_get_u32(&r);
    (void)ec_get_u32(&r);
    c->client_id = ec_get_u64(&r);
    ec_get_str(&r, dver, sizeof(dver));
    if (!ec_rbuf_done(&r) || nfds != 2) {
        rc = ec_seterr(EC_EPROTO, "malformed HELLO reply (%d descriptors)", nfds);
        goto fail;
    }
    if (layout != EC_SHM_LAYOUT_VERSION) {
        rc = ec_seterr(EC_EVERSION, "embcached %s uses segment layout %u, this libembcache "
                                    "%s reads layout %u: use matching versions",
                       dver, layout, EC_VERSION_STRING, EC_SHM_LAYOUT_VERSION);
        goto fail;
    }
    rc = cl_segmap_acquire(fds[0], &c->seg, &c->segmap);
    if (rc)
        goto fail;
    if (c->seg.size != seg_size) {
        rc = ec_seterr(EC_ECORRUPT, "segment is %zu bytes, embcached said %llu", c->seg.size,
                       (unsigned long long)seg_size);
        goto fail;
    }
    if (session_size != EC_SESSION_SIZE || fstat(fds[1], &st) < 0 ||
        (uint64_t)st.st_size < EC_SESSION_SIZE) {
        rc = ec_seterr(EC_EPROTO, "session page has the wrong size");
        goto fail;
    }
    c->session = mmap(NULL, EC_SESSION_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0);
    if (c->session == MAP_FAILED) {
        c->session = NULL;
        rc = ec_seterr_errno(EC_EIO, errno, "mapping the session page");
        goto fail;
    }
    if (c->session->magic != EC_SESSION_MAGIC || c->session->ring_slots != EC_SESSION_RING) {
        rc = ec_seterr(EC_EPROTO, "session page has a bad header");
        goto fail;
    }
    close(fds[0]);
    close(fds[1]);
    rc = cl_stale(c);
    if (rc)
        goto fail_mapped;
    *out = c;
    return 0;
fail:
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
fail_mapped:
    ec_client_close(c);
    return rc;
}

static void client_teardown(ec_client *c)
{
    if (c->session && !cl_epochs_drained(c)) {
        /* A GPU gather never completed: leave the mappings it may still
         * touch rather than fault it. */
        ec_seterr(EC_EDEVICE, "device gathers still running at close; leaking the mappings");
        c->session = NULL;
        c->segmap = NULL; /* its reference is never dropped */
        for (unsigned i = 0; i < EC_SHM_MAX_DEVICES; i++)
            c->dev[i].all = NULL; /* the slabs too */
    }
    for (unsigned i = 0; i < EC_SHM_MAX_DEVICES; i++)
        for (struct cslab *k = c->dev[i].all, *next; k; k = next) {
            next = k->next;
            cl_be()->slab_close((int)i, k->base, k->bytes);
            free(k);
        }
    for (struct carena *a = c->arenas, *next; a; a = next) {
        next = a->next;
        ec_segment_close(&a->seg);
        free(a);
    }
    if (c->session && c->session_registered && cl_be()->host_unregister)
        cl_be()->host_unregister(c->session);
    if (c->session)
        munmap(c->session, EC_SESSION_SIZE);
    cl_segmap_release(c->segmap);
    if (c->sock >= 0)
        close(c->sock);
    if (c->batch_fd >= 0)
        close(c->batch_fd);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

void cl_client_unref(ec_client *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        client_teardown(c);
}

void ec_client_close(ec_client *c)
{
    if (c)
        cl_client_unref(c);
}

const char *ec_client_backend(const ec_client *c)
{
    return c ? cl_be()->name : "cpu";
}

int ec_client_device_count(const ec_client *c)
{
    if (!c || !cl_be()->host_register)
        return 0;
    return cl_be()->device_count();
}

uint64_t ec_client_generation(const ec_client *c)
{
    return c ? c->generation : 0;
}

/* ------------------------------------------------------------------ */
/* Tensors                                                             */

int ec_tensor_resolve(ec_client *c, const char *model, const char *version, const char *tensor,
                      ec_tensor **out)
{
    ec_tensor *t;
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model || !version || !tensor || !out)
        return ec_seterr(EC_EINVAL, "ec_tensor_resolve: NULL argument");
    if (strlen(model) > EC_NAME_MAX || strlen(version) > EC_NAME_MAX ||
        strlen(tensor) > EC_NAME_MAX)
        return ec_seterr(EC_EINVAL, "a name is longer than %d bytes", EC_NAME_MAX);
    if ((rc = cl_stale(c)))
        return rc;
    t = calloc(1, sizeof(*t));
    if (!t)
        return ec_seterr(EC_ENOMEM, "tensor");
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_RESOLVE);
    ec_put_str(&w, model);
    ec_put_str(&w, version);
    ec_put_str(&w, tensor);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        rc = ec_get_tensor(&r, &t->t);
        if (rc == 0 && !ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "RESOLVE reply has trailing bytes");
    }
    pthread_mutex_unlock(&c->lock);
    if (rc) {
        free(t);
        return rc;
    }
    if (t->t.partitions > UINT32_MAX) {
        free(t);
        return ec_seterr(EC_EPROTO, "tensor has too many partitions");
    }
    t->c = c;
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    t->info.model = t->t.model;
    t->info.tensor = t->t.name;
    t->info.version = t->t.version;
    t->info.dtype = (ec_dtype)t->t.dtype;
    t->info.ndim = t->t.ndim;
    memcpy(t->info.shape, t->t.shape, sizeof(t->info.shape));
    t->info.rows = t->t.rows;
    t->info.row_bytes = t->t.row_bytes;
    t->info.rows_per_partition = t->t.rows_per_partition;
    t->info.partitions = t->t.partitions;
    atomic_init(&t->mode, t->t.mode);
    /* Our per-tensor counters: the slot of this tensor if another handle
     * has one, else a free one (none left: the totals count it). */
    for (unsigned k = 0; k < EC_SESSION_TENSORS && !t->tstat; k++) {
        ec_session_tensor *st = &c->session->tstat[k];
        uint32_t cur = atomic_load_explicit(&st->tensor, memory_order_relaxed), zero = 0;
        if (cur == t->t.id ||
            (cur == 0 && atomic_compare_exchange_strong(&st->tensor, &zero, t->t.id)) ||
            zero == t->t.id)
            t->tstat = st;
    }
    *out = t;
    return 0;
}

ec_cache_mode ec_tensor_cache_mode(const ec_tensor *t)
{
    return t ? (ec_cache_mode)atomic_load_explicit(&t->mode, memory_order_relaxed)
             : EC_CACHE_AUTO;
}

void ec_tensor_release(ec_tensor *t)
{
    if (!t)
        return;
    cl_ivf_release(atomic_load_explicit(&t->ivf, memory_order_acquire));
    cl_client_unref(t->c);
    free(t);
}

int ec_tensor_info_get(const ec_tensor *t, ec_tensor_info *out)
{
    if (!t || !out)
        return ec_seterr(EC_EINVAL, "ec_tensor_info_get: NULL argument");
    *out = t->info;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Views                                                               */

int ec_tensor_view(ec_tensor *t, ec_view **out)
{
    ec_client *c;
    ec_view *v;
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    uint64_t pin, off, len;
    int rc;

    if (!t || !out)
        return ec_seterr(EC_EINVAL, "ec_tensor_view: NULL argument");
    if (atomic_load_explicit(&t->mode, memory_order_relaxed) == EC_CACHE_DYNAMIC)
        return ec_seterr(EC_EINVAL, "tensor '%s' is a dynamic table: its rows change and are "
                                    "read by key (ec_tensor_gather, ec_rows_find), not as a "
                                    "view", t->t.name);
    c = t->c;
    if ((rc = cl_stale(c)))
        return rc;
    v = calloc(1, sizeof(*v));
    if (!v)
        return ec_seterr(EC_ENOMEM, "view");
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_PIN);
    ec_put_u32(&w, t->t.id);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        pin = ec_get_u64(&r);
        off = ec_get_u64(&r);
        len = ec_get_u64(&r);
        if (!ec_rbuf_done(&r) || len != t->t.rows * t->t.row_bytes ||
            off > c->seg.data_size || len > c->seg.data_size - off)
            rc = ec_seterr(EC_EPROTO, "PIN reply describes a region outside the segment");
    }
    pthread_mutex_unlock(&c->lock);
    if (rc) {
        free(v);
        return rc;
    }
    atomic_init(&v->refs, 1);
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    v->c = c;
    v->pin = pin;
    v->data = c->seg.data + off;
    v->size = (size_t)len;
    v->dtype = (ec_dtype)t->t.dtype;
    v->ndim = t->t.ndim;
    for (uint32_t i = 0; i < t->t.ndim && i < EC_MAX_DIMS; i++)
        v->shape[i] = (int64_t)t->t.shape[i];
    *out = v;
    return 0;
}

int ec_view_check(const ec_view *v)
{
    if (!v)
        return ec_seterr(EC_EINVAL, "ec_view_check: NULL view");
    return cl_stale(v->c);
}

const void *ec_view_data(const ec_view *v)
{
    return v ? v->data : NULL;
}

size_t ec_view_size(const ec_view *v)
{
    return v ? v->size : 0;
}

static void view_unref(ec_view *v)
{
    ec_client *c;
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;

    if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) != 1)
        return;
    c = v->c;
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_UNPIN);
    ec_put_u64(&w, v->pin);
    /* If the daemon is gone, so is the pin: nothing to report. */
    (void)cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    pthread_mutex_unlock(&c->lock);
    free(v);
    cl_client_unref(c);
}

void ec_view_release(ec_view *v)
{
    if (v)
        view_unref(v);
}

/* A DLPack export: the managed tensor, its shape, and the view it keeps. */
struct dlexport {
    DLManagedTensor m;
    int64_t shape[EC_MAX_DIMS];
    ec_view *v;
};

static void dl_delete(DLManagedTensor *m)
{
    struct dlexport *x = m ? m->manager_ctx : NULL;

    if (!x)
        return;
    view_unref(x->v);
    free(x);
}

int ec_view_dlpack(ec_view *v, struct DLManagedTensor **out)
{
    struct dlexport *x;
    DLDataType dt;

    if (!v || !out)
        return ec_seterr(EC_EINVAL, "ec_view_dlpack: NULL argument");
    switch (v->dtype) {
    case EC_DTYPE_F32: dt = (DLDataType){kDLFloat, 32, 1}; break;
    case EC_DTYPE_F16: dt = (DLDataType){kDLFloat, 16, 1}; break;
    case EC_DTYPE_BF16: dt = (DLDataType){kDLBfloat, 16, 1}; break;
    case EC_DTYPE_F64: dt = (DLDataType){kDLFloat, 64, 1}; break;
    case EC_DTYPE_I8: dt = (DLDataType){kDLInt, 8, 1}; break;
    case EC_DTYPE_U8: dt = (DLDataType){kDLUInt, 8, 1}; break;
    case EC_DTYPE_I32: dt = (DLDataType){kDLInt, 32, 1}; break;
    case EC_DTYPE_I64: dt = (DLDataType){kDLInt, 64, 1}; break;
    default:
        return ec_seterr(EC_EDTYPE, "dtype %d has no DLPack type", (int)v->dtype);
    }
    x = calloc(1, sizeof(*x));
    if (!x)
        return ec_seterr(EC_ENOMEM, "DLPack tensor");
    memcpy(x->shape, v->shape, sizeof(x->shape));
    x->v = v;
    atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
    /* DLPack has no const: consumers must treat it as read-only (the pages
     * are mapped PROT_READ, so a write faults rather than corrupts). */
    x->m.dl_tensor.data = (void *)v->data;
    x->m.dl_tensor.device = (DLDevice){kDLCPU, 0};
    x->m.dl_tensor.ndim = (int32_t)v->ndim;
    x->m.dl_tensor.dtype = dt;
    x->m.dl_tensor.shape = x->shape;
    x->m.dl_tensor.strides = NULL;
    x->m.dl_tensor.byte_offset = 0;
    x->m.manager_ctx = x;
    x->m.deleter = dl_delete;
    *out = &x->m;
    return 0;
}
