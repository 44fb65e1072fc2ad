/*
 * client.c - libembcache: connect, resolve, gather, views, admin calls.
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
#include <dlpack/dlpack.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/dtype.h"
#include "common/err.h"
#include "common/paths.h"
#include "core/proto.h"
#include "cuda/backend.h"
#include "embcache.h"
#include "shm/index.h"
#include "shm/segment.h"

#define GATHER_MAX_ROUNDS 64

/* A daemon slab this client opened. Immutable once published: gathers on
 * other threads read it without the lock. */
struct cslab {
    uint64_t gen;                /* the slab generation it was opened at */
    void *base;                  /* the opened slab (device address) */
    uint64_t bytes;
    ec_segment view;             /* its device index, bounded by bytes */
    struct cslab *next;          /* every slab opened: closed at teardown, since
                                  * gathers queued earlier may still read one */
};

/* One GPU as this client sees it (set up on its first device gather, under
 * the client's lock; read by gathers without it). table and host_base are
 * written before ready is stored (release). */
struct cdev {
    _Atomic bool ready;          /* host memory registered for this device */
    int table;                   /* the daemon's device table for this GPU, -1: none */
    void *host_base;             /* the segment's base address on the device */
    struct cslab *_Atomic cur;   /* the slab in use, NULL: none */
    struct cslab *all;           /* guarded by the lock */
};

struct ec_client {
    _Atomic int refs;            /* the caller's, one per tensor and view */
    int sock;
    pthread_mutex_t lock;        /* one request at a time; guards sbuf/rbuf */
    uint32_t next_req;
    ec_segment seg;              /* read-only mapping */
    ec_session_page *session;    /* our own page, read-write */
    uint64_t generation;
    uint64_t client_id;
    bool broken;                 /* the connection failed; only close remains */
    struct cdev dev[EC_SHM_MAX_DEVICES]; /* guarded by lock while set up */
    char socket_path[108];
    uint8_t sbuf[EC_MSG_MAX];
    uint8_t rbuf[EC_MSG_MAX];
};

struct ec_tensor {
    ec_client *c;
    ec_proto_tensor t;
    ec_tensor_info info;
};

struct ec_view {
    _Atomic int refs;            /* the caller's, one per DLPack export */
    ec_client *c;
    uint64_t pin;
    const void *data;
    size_t size;
    ec_dtype dtype;
    uint32_t ndim;
    int64_t shape[EC_MAX_DIMS];
};

static void client_unref(ec_client *c);

/* The device backend, chosen on first use rather than at connect: probing
 * CUDA initializes it in this process, and a process that forks workers
 * after connecting (and never gathers to a GPU itself) must not have done
 * that - CUDA does not survive fork(). Host gathers never need it. */
static const ec_backend *be(void)
{
    return ec_backend_get(EC_BACKEND_AUTO);
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */

static int stale(const ec_client *c)
{
    uint64_t g = atomic_load_explicit(&c->seg.hdr->generation, memory_order_acquire);

    if (g != c->generation)
        return ec_seterr(EC_ESTALE, "embcached restarted (generation %llu, this client "
                                    "connected to %llu): close the client and connect again",
                         (unsigned long long)g, (unsigned long long)c->generation);
    return 0;
}

static uint32_t begin(ec_client *c, ec_wbuf *w, uint16_t op)
{
    uint32_t id = ++c->next_req;

    ec_msg_begin(w, c->sbuf, sizeof(c->sbuf), op, id, 0);
    return id;
}

/* Send the request in c->sbuf and wait for its reply. Caller holds c->lock.
 * On success *body reads the reply body (in c->rbuf). */
static int rpc(ec_client *c, ec_wbuf *w, uint32_t req_id, const int *fds, int nfds,
               ec_rbuf *body, int *rfds, int *nrfds, int maxrfds)
{
    uint16_t op;
    size_t len = ec_msg_end(w);
    ec_msg_hdr h;
    ssize_t n;
    int rc;

    memcpy(&op, c->sbuf + offsetof(ec_msg_hdr, op), sizeof(op));
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
    if (stale(c))
        return EC_ESTALE;
    return ec_seterr(EC_ECONN, "embcached at %s closed the connection (it stopped or "
                               "restarted): close the client and connect again",
                     c->socket_path);
}

/* ------------------------------------------------------------------ */
/* Connect / close                                                     */

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
        socket_path = ec_default_socket(def, sizeof(def));
    if (strlen(socket_path) >= sizeof(sa.sun_path))
        return ec_seterr(EC_EINVAL, "socket path %s is too long (at most %zu bytes)",
                         socket_path, sizeof(sa.sun_path) - 1);
    c = calloc(1, sizeof(*c));
    if (!c)
        return ec_seterr(EC_ENOMEM, "client");
    c->seg.fd = -1;
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
    req = begin(c, &w, EC_OP_HELLO);
    ec_put_u32(&w, 0);
    ec_put_str(&w, "libembcache " EC_VERSION_STRING);
    {
        size_t len = ec_msg_end(&w);
        ssize_t n;
        ec_msg_hdr h;
        rc = ec_msg_send(c->sock, c->sbuf, len, NULL, 0, false);
        if (rc)
            goto fail;
        n = ec_msg_recv(c->sock, c->rbuf, sizeof(c->rbuf), fds, &nfds, 2);
        if (n <= 0) {
            rc = n ? (int)n : ec_seterr(EC_ECONN, "embcached at %s hung up during the "
                                                  "handshake", socket_path);
            goto fail;
        }
        rc = ec_msg_parse(c->rbuf, (size_t)n, &h, &r);
        if (rc)
            goto fail;
        if (h.op != (EC_OP_HELLO | EC_OP_REPLY) || h.req_id != req) {
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
    rc = ec_segment_map_fd(fds[0], &c->seg);
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
    rc = stale(c);
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

/* Wait (bounded) for this client's device gathers to finish: their
 * completion clears a slot in the session page, which must stay mapped. */
static bool epochs_drained(ec_client *c)
{
    for (int spins = 0; spins < 10000; spins++) {
        bool busy = false;
        for (unsigned k = 0; k < EC_SESSION_EPOCH_SLOTS && !busy; k++)
            busy = atomic_load_explicit(&c->session->epoch_slot[k], memory_order_acquire);
        if (!busy)
            return true;
        usleep(1000);
    }
    return false;
}

static void client_teardown(ec_client *c)
{
    if (c->session && !epochs_drained(c)) {
        /* A GPU gather never completed: leave the mappings it may still
         * touch rather than fault it. */
        ec_seterr(EC_EDEVICE, "device gathers still running at close; leaking the mappings");
        c->session = NULL;
        c->seg.base = NULL;
        for (unsigned i = 0; i < EC_SHM_MAX_DEVICES; i++)
            c->dev[i].all = NULL; /* the slabs too */
    }
    for (unsigned i = 0; i < EC_SHM_MAX_DEVICES; i++)
        for (struct cslab *k = c->dev[i].all, *next; k; k = next) {
            next = k->next;
            be()->slab_close((int)i, k->base, k->bytes);
            free(k);
        }
    if (c->seg.base) {
        bool any = false;
        for (unsigned i = 0; i < EC_SHM_MAX_DEVICES; i++)
            any |= atomic_load(&c->dev[i].ready);
        if (any && be()->host_unregister)
            be()->host_unregister(c->seg.base);
    }
    if (c->session)
        munmap(c->session, EC_SESSION_SIZE);
    if (c->seg.base)
        ec_segment_close(&c->seg);
    if (c->sock >= 0)
        close(c->sock);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static void client_unref(ec_client *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        client_teardown(c);
}

void ec_client_close(ec_client *c)
{
    if (c)
        client_unref(c);
}

const char *ec_client_backend(const ec_client *c)
{
    return c ? be()->name : "cpu";
}

int ec_client_device_count(const ec_client *c)
{
    if (!c || !be()->host_register)
        return 0;
    return be()->device_count();
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
    if ((rc = stale(c)))
        return rc;
    t = calloc(1, sizeof(*t));
    if (!t)
        return ec_seterr(EC_ENOMEM, "tensor");
    pthread_mutex_lock(&c->lock);
    req = begin(c, &w, EC_OP_RESOLVE);
    ec_put_str(&w, model);
    ec_put_str(&w, version);
    ec_put_str(&w, tensor);
    rc = rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
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
    *out = t;
    return 0;
}

void ec_tensor_release(ec_tensor *t)
{
    if (!t)
        return;
    client_unref(t->c);
    free(t);
}

int ec_tensor_info_get(const ec_tensor *t, ec_tensor_info *out)
{
    if (!t || !out)
        return ec_seterr(EC_EINVAL, "ec_tensor_info_get: NULL argument");
    *out = t->info;
    return 0;
}

/* Per-thread scratch for gathers, kept between calls so the hit path does
 * not allocate. */
struct scratch {
    size_t cap;
    const void **src;
    size_t *dst_rows;
    uint32_t *row_ref;
    size_t *todo;
    size_t *next;
    ec_index_ref *refs;
    uint32_t *parts;
};

/* The scratch hangs off a pthread key whose destructor frees it when the
 * thread exits: a thread pool that recycles threads must not leak a scratch
 * per thread (found by LeakSanitizer in embcache-bench's fault threads). */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;

static void scratch_arrays_free(struct scratch *s)
{
    free(s->src);
    free(s->dst_rows);
    free(s->row_ref);
    free(s->todo);
    free(s->next);
    free(s->refs);
    free(s->parts);
    memset(s, 0, sizeof(*s));
}

static void scratch_destroy(void *p)
{
    scratch_arrays_free(p);
    free(p);
}

static void scratch_key_make(void)
{
    scratch_key_ok = pthread_key_create(&scratch_key, scratch_destroy) == 0;
}

/* This thread's scratch with room for n rows, or NULL (message set). */
static struct scratch *scratch_get(size_t n)
{
    struct scratch *s;
    size_t cap;

    pthread_once(&scratch_once, scratch_key_make);
    if (!scratch_key_ok) {
        ec_seterr(EC_ENOMEM, "no thread-specific key left for the gather scratch");
        return NULL;
    }
    s = pthread_getspecific(scratch_key);
    if (s && n <= s->cap)
        return s;
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s || pthread_setspecific(scratch_key, s)) {
            free(s);
            ec_seterr(EC_ENOMEM, "gather scratch");
            return NULL;
        }
    }
    cap = n < 256 ? 256 : n;
    scratch_arrays_free(s);
    s->src = malloc(cap * sizeof(*s->src));
    s->dst_rows = malloc(cap * sizeof(*s->dst_rows));
    s->row_ref = malloc(cap * sizeof(*s->row_ref));
    s->todo = malloc(cap * sizeof(*s->todo));
    s->next = malloc(cap * sizeof(*s->next));
    s->refs = malloc(cap * sizeof(*s->refs));
    s->parts = malloc(cap * sizeof(*s->parts));
    if (!s->src || !s->dst_rows || !s->row_ref || !s->todo || !s->next || !s->refs ||
        !s->parts) {
        scratch_arrays_free(s);
        ec_seterr(EC_ENOMEM, "gather scratch for %zu rows", n);
        return NULL;
    }
    s->cap = cap;
    return s;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Ask the daemon for the partitions in parts[0..n), which this sorts and
 * dedupes in place (a gather notes a partition once per run of its rows). */
static int fault(ec_tensor *t, uint32_t *parts, size_t n)
{
    ec_client *c = t->c;
    size_t u = 0;
    int rc = 0;

    qsort(parts, n, sizeof(*parts), cmp_u32);
    for (size_t k = 0; k < n; k++)
        if (u == 0 || parts[u - 1] != parts[k])
            parts[u++] = parts[k];
    n = u;
    pthread_mutex_lock(&c->lock);
    for (size_t done = 0; done < n && rc == 0;) {
        size_t k = n - done < EC_FAULT_MAX_PARTS ? n - done : EC_FAULT_MAX_PARTS;
        ec_wbuf w;
        ec_rbuf r;
        uint32_t req = begin(c, &w, EC_OP_FAULT);
        ec_put_u32(&w, t->t.id);
        ec_put_u32(&w, (uint32_t)k);
        for (size_t i = 0; i < k; i++)
            ec_put_u32(&w, parts[done + i]);
        rc = rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
        if (rc == 0 && !ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "FAULT reply has a body");
        done += k;
    }
    pthread_mutex_unlock(&c->lock);
    atomic_fetch_add_explicit(&c->session->faults, 1, memory_order_relaxed);
    return rc;
}

/* Record the partitions a gather read in our session ring, for the
 * daemon's eviction policy: one atomic claim of all the slots, then plain
 * stores. The daemon treats entries as hints, so a slot it reads before
 * this thread filled it costs nothing but a missed touch. At most a quarter
 * of the ring per gather: enough for the policy, and a huge gather does not
 * wipe out what other threads recorded. */
static void note_accesses(ec_client *c, const ec_index_ref *refs, size_t n)
{
    ec_session_page *s = c->session;
    uint64_t h;

    if (n > EC_SESSION_RING / 4)
        n = EC_SESSION_RING / 4;
    if (n == 0)
        return;
    h = atomic_fetch_add_explicit(&s->ring_head, n, memory_order_relaxed);
    for (size_t i = 0; i < n; i++) {
        uint64_t key = atomic_load_explicit(&refs[i].entry->key, memory_order_relaxed);
        atomic_store_explicit(&s->ring[(h + i) % EC_SESSION_RING], key, memory_order_relaxed);
    }
}

/* Add to a session counter; a zero add skips the locked instruction. */
static void count(_Atomic uint64_t *ctr, uint64_t v)
{
    if (v)
        atomic_fetch_add_explicit(ctr, v, memory_order_relaxed);
}

/* Check a gather's arguments: the output dtype, the output size and every
 * id. 0 or an error naming what is wrong. */
static int gather_check(const ec_tensor *t, const int64_t *ids, size_t n, size_t out_size,
                        ec_dtype dst)
{
    uint64_t rows = t->t.rows, esz = ec_dtype_size((ec_dtype)t->t.dtype);
    uint64_t out_row = esz ? t->t.row_bytes / esz * ec_dtype_size(dst) : 0;

    if (dst != (ec_dtype)t->t.dtype &&
        !(t->t.dtype == EC_DTYPE_F32 && (dst == EC_DTYPE_F16 || dst == EC_DTYPE_BF16)))
        return ec_seterr(EC_EDTYPE, "cannot gather tensor '%s' (%s) as %s: the only "
                                    "conversions are f32 to f16 and f32 to bf16",
                         t->t.name, ec_dtype_name((ec_dtype)t->t.dtype),
                         ec_dtype_name(dst) ? ec_dtype_name(dst) : "an unknown dtype");
    if (n > SIZE_MAX / (out_row ? out_row : 1) || out_size < n * out_row)
        return ec_seterr(EC_EINVAL, "output buffer of %zu bytes is too small for %zu rows of "
                                    "%llu bytes", out_size, n, (unsigned long long)out_row);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint64_t)ids[i] >= rows)
            return ec_seterr(EC_ERANGE, "ids[%zu] = %lld is outside tensor '%s' of model '%s' "
                                        "(rows 0..%llu)", i, (long long)ids[i], t->t.name,
                             t->t.model, (unsigned long long)(rows ? rows - 1 : 0));
    return 0;
}

static int gather_host(ec_tensor *t, const int64_t *ids, size_t n, void *out, ec_dtype dst);

int ec_tensor_gather(ec_tensor *t, const int64_t *ids, size_t n, void *out, size_t out_size)
{
    int rc;

    if (!t || (n && (!ids || !out)))
        return ec_seterr(EC_EINVAL, "ec_tensor_gather: NULL argument");
    if (n == 0)
        return 0;
    if ((rc = gather_check(t, ids, n, out_size, (ec_dtype)t->t.dtype)))
        return rc;
    return gather_host(t, ids, n, out, (ec_dtype)t->t.dtype);
}

/* Rows to host memory: copy, then check each entry's seqlock. */
static int gather_host(ec_tensor *t, const int64_t *ids, size_t n, void *out, ec_dtype dst)
{
    ec_client *c = t->c;
    struct scratch *s;
    uint64_t rpp = t->t.rows_per_partition, row_bytes = t->t.row_bytes;
    size_t ntodo, hits = 0, misses = 0, retries = 0;
    int rc;

    if ((rc = stale(c)))
        return rc;
    if (!(s = scratch_get(n)))
        return EC_ENOMEM;

    for (size_t i = 0; i < n; i++)
        s->todo[i] = i;
    ntodo = n;
    for (int round = 0; ntodo > 0; round++) {
        size_t nsrc = 0, nrefs = 0, nnext = 0, nparts = 0;
        uint64_t lastp = UINT64_MAX;
        bool lasthit = false;
        ec_gather_desc g;

        if (round == GATHER_MAX_ROUNDS) {
            rc = ec_seterr(EC_ENOSPC, "rows of tensor '%s' kept being evicted before they "
                                      "could be copied (%zu rows left after %d rounds): the "
                                      "segment is too small for this working set",
                           t->t.name, ntodo, round);
            goto out;
        }
        /* 1. Look up each row's partition; note where resident rows are. */
        for (size_t k = 0; k < ntodo; k++) {
            size_t i = s->todo[k];
            uint64_t id = (uint64_t)ids[i], p = id / rpp;

            if (p != lastp) {
                lastp = p;
                lasthit = ec_index_lookup(&c->seg, t->t.id, (uint32_t)p, &s->refs[nrefs]) &&
                          (id % rpp + 1) * row_bytes <= s->refs[nrefs].length;
                if (lasthit) {
                    nrefs++;
                } else {
                    s->parts[nparts++] = (uint32_t)p;
                }
            }
            if (!lasthit) {
                s->next[nnext++] = i;
                misses += round == 0;
                continue;
            }
            s->src[nsrc] = c->seg.data + s->refs[nrefs - 1].offset + (id % rpp) * row_bytes;
            s->dst_rows[nsrc] = i;
            s->row_ref[nsrc] = (uint32_t)(nrefs - 1);
            nsrc++;
        }
        if (round == 0)
            note_accesses(c, s->refs, nrefs);
        /* 2. Copy them. */
        if (nsrc) {
            g = (ec_gather_desc){.src = s->src, .n = nsrc, .row_bytes = row_bytes,
                                 .src_dtype = (ec_dtype)t->t.dtype, .dst_dtype = dst,
                                 .dst = out, .dst_rows = s->dst_rows, .device = -1};
            rc = ec_cpu_gather(&g);
            if (rc)
                goto out;
        }
        /* 3. Check every entry again: a moved entry means a possibly torn copy.
         * A hit is a row served from memory at its first lookup. */
        {
            uint32_t bad = UINT32_MAX;
            for (size_t k = 0; k < nsrc; k++) {
                uint32_t ref = s->row_ref[k];
                if (ref != bad && ec_index_still_valid(&s->refs[ref])) {
                    hits += round == 0;
                    continue;
                }
                bad = ref;
                s->next[nnext++] = s->dst_rows[k];
                retries++;
            }
        }
        /* 4. Fault what missed, in one request. */
        if (nparts) {
            rc = fault(t, s->parts, nparts);
            if (rc)
                goto out;
        }
        memcpy(s->todo, s->next, nnext * sizeof(*s->next));
        ntodo = nnext;
    }
    rc = 0;
out:
    count(&c->session->gathers, 1);
    count(&c->session->rows, n);
    count(&c->session->hits, hits);
    count(&c->session->misses, misses);
    count(&c->session->retries, retries);
    return rc;
}

/* ------------------------------------------------------------------ */
/* GPU outputs                                                         */

/* The daemon's DEVICES reply: its topology line, its backend, and each
 * GPU's device tier with what opens its slab. */
struct devices {
    char line[512];
    char backend[16];
    uint32_t n;
    struct {
        uint32_t table, on;
        uint64_t gen, bytes;
        int32_t node;
        uint8_t handle[EC_SLAB_HANDLE_BYTES];
        int fd;                  /* the emulator's slab descriptor, or -1 */
    } gpu[EC_SHM_MAX_DEVICES];
    int fds[EC_SHM_MAX_DEVICES]; /* received; devices_done() closes them */
    int nfds;
};

/* Ask for and parse the DEVICES reply. Caller holds c->lock, and calls
 * devices_done() after any return. */
static int devices_get(ec_client *c, struct devices *x)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req = begin(c, &w, EC_OP_DEVICES);
    int rc, fdi = 0;

    x->nfds = 0;
    rc = rpc(c, &w, req, NULL, 0, &r, x->fds, &x->nfds, EC_SHM_MAX_DEVICES);
    if (rc)
        return rc;
    ec_get_str(&r, x->line, sizeof(x->line));
    ec_get_str(&r, x->backend, sizeof(x->backend));
    x->n = ec_get_u32(&r);
    if (x->n > EC_SHM_MAX_DEVICES)
        return ec_seterr(EC_EPROTO, "DEVICES reply lists %u GPUs", x->n);
    for (uint32_t i = 0; i < x->n; i++) {
        char busid[32];
        x->gpu[i].table = ec_get_u32(&r);
        x->gpu[i].on = ec_get_u32(&r);
        x->gpu[i].gen = ec_get_u64(&r);
        x->gpu[i].bytes = ec_get_u64(&r);
        (void)ec_get_u64(&r); /* used bytes */
        (void)ec_get_u64(&r); /* partitions */
        x->gpu[i].node = (int32_t)ec_get_u32(&r);
        ec_get_str(&r, busid, sizeof(busid));
        for (unsigned k = 0; k < EC_SLAB_HANDLE_BYTES; k += 8) {
            uint64_t v = ec_get_u64(&r);
            memcpy(x->gpu[i].handle + k, &v, 8);
        }
        x->gpu[i].fd = -1;
        if (ec_get_u32(&r)) {
            if (fdi >= x->nfds)
                return ec_seterr(EC_EPROTO, "DEVICES reply is missing a slab descriptor");
            x->gpu[i].fd = x->fds[fdi++];
        }
    }
    if (!ec_rbuf_done(&r))
        return ec_seterr(EC_EPROTO, "malformed DEVICES reply");
    return 0;
}

static void devices_done(struct devices *x)
{
    for (int i = 0; i < x->nfds; i++)
        close(x->fds[i]);
    x->nfds = 0;
}

/* Open the slab of GPU `dev` when its generation is the one the segment
 * header publishes now (none when it is 0). Caller holds c->lock. */
static int slab_sync(ec_client *c, unsigned dev)
{
    struct cdev *d = &c->dev[dev];
    unsigned tbl = (unsigned)d->table;
    const ec_shm_device *h = &c->seg.hdr->dev[tbl];
    uint64_t gen = atomic_load_explicit(&h->slab_gen, memory_order_acquire);
    struct cslab *cur = atomic_load_explicit(&d->cur, memory_order_relaxed), *k;
    struct devices x;
    int rc;

    if (gen == (cur ? cur->gen : 0))
        return 0;
    /* The old slab stays mapped (on d->all): gathers queued before may
     * still read it. */
    atomic_store_explicit(&d->cur, NULL, memory_order_release);
    if (gen == 0 || !be()->slab_open)
        return 0;
    rc = devices_get(c, &x);
    for (uint32_t i = 0; rc == 0 && i < x.n; i++) {
        if (x.gpu[i].table != tbl || !x.gpu[i].on || x.gpu[i].gen != gen)
            continue;
        /* The slab must be the size the header publishes for this
         * generation: the device index is bounded by it. */
        if (x.gpu[i].bytes == 0 ||
            x.gpu[i].bytes != atomic_load_explicit(&h->slab_size, memory_order_relaxed)) {
            rc = ec_seterr(EC_EPROTO, "DEVICES reply gives GPU %u a %llu-byte slab, the "
                                      "segment says otherwise", dev,
                           (unsigned long long)x.gpu[i].bytes);
            break;
        }
        if (!(k = calloc(1, sizeof(*k)))) {
            rc = ec_seterr(EC_ENOMEM, "slab record");
            break;
        }
        rc = be()->slab_open((int)dev, x.gpu[i].handle, x.gpu[i].fd, x.gpu[i].bytes, &k->base);
        if (rc || (rc = ec_segment_device_view(&c->seg, tbl, x.gpu[i].bytes, &k->view))) {
            if (k->base)
                be()->slab_close((int)dev, k->base, x.gpu[i].bytes);
            free(k);
            break;
        }
        k->bytes = x.gpu[i].bytes;
        k->gen = gen;
        k->next = d->all;
        d->all = k;
        atomic_store_explicit(&d->cur, k, memory_order_release);
    }
    devices_done(&x);
    return rc;
}

/* Which of the daemon's device tables is this process's GPU `dev`? Device
 * ordinals differ between processes (CUDA_VISIBLE_DEVICES: a worker's GPU 0
 * may be the daemon's GPU 3), so GPUs are matched by PCI bus id; a backend
 * without bus ids (the emulator) uses the ordinal. -1: the daemon has no
 * tier for it (host reads only). */
static int device_table(const ec_client *c, int dev)
{
    char busid[32];
    uint32_t n = c->seg.hdr->device_tables;

    if (!be()->device_busid || be()->device_busid(dev, busid, sizeof(busid)))
        return (uint32_t)dev < n ? dev : -1;
    for (uint32_t i = 0; i < n && i < EC_SHM_MAX_DEVICES; i++) {
        char theirs[sizeof(c->seg.hdr->dev[i].busid) + 1];
        memcpy(theirs, c->seg.hdr->dev[i].busid, sizeof(theirs) - 1);
        theirs[sizeof(theirs) - 1] = '\0';
        if (!strcasecmp(theirs, busid))
            return (int)i;
    }
    return -1;
}

/* Make GPU `dev` usable for gathers: the segment registered (mapped,
 * read-only) and the current slab open. Cheap when nothing changed. */
static int device_ready(ec_client *c, int dev)
{
    struct cdev *d;
    uint64_t gen;
    int rc = 0;

    if (!be()->host_register)
        return ec_seterr(EC_EINVAL, "output is on GPU %d, but this process runs the %s "
                                    "backend (%s): gather to a host buffer, or run where "
                                    "libembcache finds CUDA and a GPU", dev, be()->name,
                         getenv("EMBCACHE_BACKEND") ? "EMBCACHE_BACKEND is set"
                                                    : "no usable GPU");
    if (dev < 0 || dev >= be()->device_count() || dev >= (int)EC_SHM_MAX_DEVICES)
        return ec_seterr(EC_EINVAL, "output device %d does not exist (%d GPU(s) visible; "
                                    "embcache uses GPUs 0..%u)", dev,
                         be()->device_count(), EC_SHM_MAX_DEVICES - 1);
    d = &c->dev[dev];
    if (atomic_load_explicit(&d->ready, memory_order_acquire)) {
        const struct cslab *cur = atomic_load_explicit(&d->cur, memory_order_acquire);
        gen = d->table >= 0 ? atomic_load_explicit(&c->seg.hdr->dev[d->table].slab_gen,
                                                   memory_order_acquire)
                            : 0;
        if (gen == (cur ? cur->gen : 0))
            return 0;
    }
    pthread_mutex_lock(&c->lock);
    if (!atomic_load_explicit(&d->ready, memory_order_relaxed)) {
        rc = be()->host_register(c->seg.base, c->seg.size, true, dev, &d->host_base);
        if (rc == 0) {
            d->table = device_table(c, dev);
            atomic_store_explicit(&d->ready, true, memory_order_release);
        }
    }
    if (rc == 0 && d->table >= 0)
        rc = slab_sync(c, (unsigned)dev);
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* Announce a device gather's epoch (layout.h "Device reads"). Returns the
 * slot; waits while all are taken (64 gathers of this client in flight),
 * and gives up with NULL (message set) after about 5 s of that. */
static _Atomic uint64_t *epoch_enter(ec_client *c)
{
    for (int spin = 0;; spin++) {
        for (unsigned k = 0; k < EC_SESSION_EPOCH_SLOTS; k++) {
            _Atomic uint64_t *slot = &c->session->epoch_slot[k];
            uint64_t zero = 0, e;
            if (atomic_load_explicit(slot, memory_order_relaxed))
                continue;
            e = atomic_load_explicit(&c->seg.hdr->epoch, memory_order_acquire);
            if (atomic_compare_exchange_strong_explicit(slot, &zero, e ? e : 1,
                                                        memory_order_seq_cst,
                                                        memory_order_relaxed)) {
                atomic_thread_fence(memory_order_seq_cst);
                return slot;
            }
        }
        if (spin >= 5000) {
            ec_seterr(EC_EBUSY, "%u GPU gathers of this client have been in flight for "
                                "5 s: their streams are not making progress",
                      EC_SESSION_EPOCH_SLOTS);
            return NULL;
        }
        if (spin < 100)
            sched_yield();
        else
            usleep(1000);
    }
}

static void epoch_exit(void *slot)
{
    atomic_store_explicit((_Atomic uint64_t *)slot, 0, memory_order_release);
}

/* Rounds after which a device gather whose rows do not all fit in memory at
 * once copies what is resident and goes on with the rest (more than one
 * launch; only under memory pressure). */
#define DEVICE_PARTIAL_ROUND 3

/* Rows to GPU memory, normally in one launch. Each round announces an
 * epoch and looks up the rows still to do (the device index first, then the
 * host index). All found: one launch, and the epoch is released when the
 * copy completes. Some missing: the epoch is released, the partitions are
 * faulted in, and the round repeats - no epoch is held across a round trip
 * to the daemon. When the rows of one call do not fit in memory together
 * (rounds keep missing), the resident ones are launched on their own
 * (scattered to their output rows, holding their epoch) and only the rest
 * is retried, as the host path does. */
static int gather_device(ec_tensor *t, const int64_t *ids, size_t n, void *out, ec_dtype dst,
                         const ec_gather_opts *o)
{
    ec_client *c = t->c;
    uint64_t rpp = t->t.rows_per_partition, row_bytes = t->t.row_bytes;
    size_t dev_rows = 0, host_rows = 0, misses = 0, ntodo = n;
    struct scratch *s;
    struct cdev *d;
    int rc;

    if ((rc = stale(c)) || (rc = device_ready(c, o->device)))
        return rc;
    d = &c->dev[o->device]; /* device_ready checked the ordinal */
    if (be()->check_ptr && (rc = be()->check_ptr(out, o->device)))
        return rc;
    if (!(s = scratch_get(n)))
        return EC_ENOMEM;
    for (size_t i = 0; i < n; i++)
        s->todo[i] = i;
    for (int round = 0;; round++) {
        _Atomic uint64_t *slot;
        const struct cslab *cs;
        const ec_segment *dv;
        size_t nparts = 0, nsrc = 0, nnext = 0, rdev = 0, rhost = 0;
        uint64_t lastp = UINT64_MAX;
        const uint8_t *base = NULL;
        bool found = false, on_dev = false, partial;
        ec_index_ref ref;

        if (round == GATHER_MAX_ROUNDS) {
            rc = ec_seterr(EC_ENOSPC, "rows of tensor '%s' kept being evicted before they "
                                      "could be copied to GPU %d (%zu rows left after %d "
                                      "rounds): the segment is too small for this working "
                                      "set", t->t.name, o->device, ntodo, round);
            break;
        }
        if ((rc = device_ready(c, o->device)))
            break;
        if (!(slot = epoch_enter(c))) {
            rc = EC_EBUSY;
            break;
        }
        /* The slab is usable only while the header still publishes the
         * generation we opened; checked after the epoch is held. */
        cs = atomic_load_explicit(&d->cur, memory_order_acquire);
        dv = cs && atomic_load_explicit(&c->seg.hdr->dev[d->table].slab_gen,
                                        memory_order_acquire) == cs->gen
                 ? &cs->view
                 : NULL;
        for (size_t k = 0; k < ntodo; k++) {
            size_t i = s->todo[k];
            uint64_t id = (uint64_t)ids[i], p = id / rpp, r = id % rpp;
            if (p != lastp) {
                lastp = p;
                found = false;
                if (dv && ec_index_lookup(dv, t->t.id, (uint32_t)p, &ref) &&
                    (r + 1) * row_bytes <= ref.length) {
                    base = (const uint8_t *)cs->base + ref.offset;
                    found = on_dev = true;
                } else if (ec_index_lookup(&c->seg, t->t.id, (uint32_t)p, &ref) &&
                           (r + 1) * row_bytes <= ref.length) {
                    base = (const uint8_t *)d->host_base + (c->seg.data - c->seg.base) +
                           ref.offset;
                    found = true;
                    on_dev = false;
                } else {
                    s->parts[nparts++] = (uint32_t)p;
                }
                if (found)
                    note_accesses(c, &ref, 1);
            }
            if (found) {
                s->src[nsrc] = base + r * row_bytes;
                s->dst_rows[nsrc++] = i;
                rdev += on_dev;
                rhost += !on_dev;
            } else {
                s->next[nnext++] = i;
                misses += round == 0;
            }
        }
        partial = nparts && nsrc && round >= DEVICE_PARTIAL_ROUND;
        if (nparts == 0 || partial) {
            /* dst_rows is the identity when every row is copied at once. */
            ec_gather_desc g = {.src = s->src, .n = nsrc, .row_bytes = row_bytes,
                                .src_dtype = (ec_dtype)t->t.dtype, .dst_dtype = dst,
                                .dst = out, .dst_rows = nsrc == n ? NULL : s->dst_rows,
                                .device = o->device, .stream = o->stream,
                                .done = epoch_exit, .done_arg = (void *)slot};
            rc = be()->gather(&g);
            if (rc) {
                epoch_exit((void *)slot);
                break;
            }
            dev_rows += rdev;
            host_rows += rhost;
            if (!partial)
                break;
        } else {
            epoch_exit((void *)slot);
        }
        if (partial) {
            memcpy(s->todo, s->next, nnext * sizeof(*s->next));
            ntodo = nnext;
        }
        if ((rc = fault(t, s->parts, nparts)))
            break;
    }
    count(&c->session->gathers, 1);
    count(&c->session->rows, n);
    count(&c->session->hits, dev_rows + host_rows);
    count(&c->session->device_rows, dev_rows);
    count(&c->session->mapped_rows, host_rows);
    count(&c->session->misses, misses);
    return rc;
}

int ec_client_topology(ec_client *c, char *buf, size_t len)
{
    struct devices x;
    size_t used;
    int rc;

    if (!c || !buf || !len)
        return ec_seterr(EC_EINVAL, "ec_client_topology: NULL argument");
    pthread_mutex_lock(&c->lock);
    rc = devices_get(c, &x);
    devices_done(&x);
    pthread_mutex_unlock(&c->lock);
    if (rc)
        return rc;
    used = (size_t)snprintf(buf, len, "%s; backend %s", x.line[0] ? x.line : "topology unknown",
                            x.backend);
    for (uint32_t i = 0; i < x.n; i++) {
        char tail[128];
        if (x.gpu[i].on)
            snprintf(tail, sizeof(tail), "; GPU %u: %llu MiB slab, NUMA node %d",
                     x.gpu[i].table, (unsigned long long)(x.gpu[i].bytes >> 20),
                     (int)x.gpu[i].node);
        else
            snprintf(tail, sizeof(tail), "; GPU %u: device tier off", x.gpu[i].table);
        if (used < len)
            used += (size_t)snprintf(buf + used, len - used, "%s", tail);
        else
            used += strlen(tail);
    }
    if (used >= len)
        return ec_seterr(EC_ETOOBIG, "the topology line needs %zu bytes", used + 1);
    return 0;
}

int ec_tensor_gather_ex(ec_tensor *t, const int64_t *ids, size_t n, void *out,
                        size_t out_size, const ec_gather_opts *opts)
{
    ec_gather_opts o = opts ? *opts : (ec_gather_opts){0};
    ec_dtype dst;
    int64_t *hids = NULL;
    int rc;

    if (!t || (n && (!ids || !out)))
        return ec_seterr(EC_EINVAL, "ec_tensor_gather_ex: NULL argument");
    if (o.flags & ~(EC_GATHER_OUT_DEVICE | EC_GATHER_IDS_DEVICE))
        return ec_seterr(EC_EINVAL, "unknown gather flags 0x%x", o.flags);
    if ((o.flags & EC_GATHER_IDS_DEVICE) && !(o.flags & EC_GATHER_OUT_DEVICE))
        return ec_seterr(EC_EINVAL, "ids on a GPU need the output on that GPU "
                                    "(EC_GATHER_OUT_DEVICE)");
    dst = o.out_dtype == EC_DTYPE_INVALID ? (ec_dtype)t->t.dtype : o.out_dtype;
    if (n == 0)
        return 0;
    if (o.flags & EC_GATHER_IDS_DEVICE) {
        const ec_backend *b = be();
        if ((rc = device_ready(t->c, o.device)))
            return rc;
        if (b->check_ptr && (rc = b->check_ptr(ids, o.device)))
            return ec_adderr(rc, "ids");
        if (n > SIZE_MAX / sizeof(*hids) || !(hids = malloc(n * sizeof(*hids))))
            return ec_seterr(EC_ENOMEM, "host copy of %zu ids", n);
        if ((rc = b->copy_to_host(hids, ids, n * sizeof(*hids), o.device, o.stream))) {
            free(hids);
            return rc;
        }
        ids = hids;
    }
    rc = gather_check(t, ids, n, out_size, dst);
    if (rc == 0)
        rc = o.flags & EC_GATHER_OUT_DEVICE ? gather_device(t, ids, n, out, dst, &o)
                                            : gather_host(t, ids, n, out, dst);
    free(hids);
    return rc;
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
    c = t->c;
    if ((rc = stale(c)))
        return rc;
    v = calloc(1, sizeof(*v));
    if (!v)
        return ec_seterr(EC_ENOMEM, "view");
    pthread_mutex_lock(&c->lock);
    req = begin(c, &w, EC_OP_PIN);
    ec_put_u32(&w, t->t.id);
    rc = rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
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
    return stale(v->c);
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
    req = begin(c, &w, EC_OP_UNPIN);
    ec_put_u64(&w, v->pin);
    /* If the daemon is gone, so is the pin: nothing to report. */
    (void)rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    pthread_mutex_unlock(&c->lock);
    free(v);
    client_unref(c);
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

/* ------------------------------------------------------------------ */
/* Administration                                                      */

int ec_model_import(ec_client *c, const ec_import_opts *opts, const char *const *paths,
                    size_t n, uint32_t *tensors_out)
{
    int fds[EC_MSG_MAX_FDS];
    size_t opened = 0;
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req, tensors = 0;
    int rc;

    if (!c || !opts || !opts->model || !paths)
        return ec_seterr(EC_EINVAL, "ec_model_import: NULL argument");
    if (n == 0 || n > 64)
        return ec_seterr(EC_EINVAL, "import takes 1..64 files, %zu given", n);
    if (opts->params_json && strlen(opts->params_json) > EC_PARAMS_MAX)
        return ec_seterr(EC_ETOOBIG, "params JSON is longer than %u bytes", EC_PARAMS_MAX);
    for (; opened < n; opened++) {
        struct stat st;
        fds[opened] = open(paths[opened], O_RDONLY | O_CLOEXEC);
        if (fds[opened] < 0) {
            rc = ec_seterr_errno(errno == ENOENT ? EC_ENOENT : EC_EIO, errno,
                                 "cannot open %s", paths[opened]);
            goto out;
        }
        if (fstat(fds[opened], &st) < 0 || !S_ISREG(st.st_mode)) {
            opened++;
            rc = ec_seterr(EC_EFORMAT, "%s is not a regular file: import takes .npy and "
                                       ".safetensors files", paths[opened - 1]);
            goto out;
        }
    }
    pthread_mutex_lock(&c->lock);
    req = begin(c, &w, EC_OP_IMPORT);
    ec_put_str(&w, opts->model);
    ec_put_i64(&w, opts->version);
    ec_put_i64(&w, opts->round);
    ec_put_str(&w, opts->params_json);
    ec_put_u64(&w, opts->partition_bytes);
    ec_put_u32(&w, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const char *base = strrchr(paths[i], '/');
        ec_put_str(&w, base ? base + 1 : paths[i]);
    }
    rc = rpc(c, &w, req, fds, (int)n, &r, NULL, NULL, 0);
    if (rc == 0) {
        tensors = ec_get_u32(&r);
        if (!ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed IMPORT reply");
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0 && tensors_out)
        *tensors_out = tensors;
out:
    for (size_t i = 0; i < opened; i++)
        close(fds[i]);
    return rc;
}

int ec_model_alias(ec_client *c, const char *model, const char *alias, int64_t version)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model || !alias)
        return ec_seterr(EC_EINVAL, "ec_model_alias: NULL argument");
    pthread_mutex_lock(&c->lock);
    req = begin(c, &w, EC_OP_ALIAS);
    ec_put_str(&w, model);
    ec_put_str(&w, alias);
    ec_put_i64(&w, version);
    rc = rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0 && !ec_rbuf_done(&r))
        rc = ec_seterr(EC_EPROTO, "malformed ALIAS reply");
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ec_model_find(ec_client *c, const char *model, int64_t round, const char *params_json,
                  int64_t *version_out)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int64_t v = 0;
    int rc;

    if (!c || !model || !version_out)
        return ec_seterr(EC_EINVAL, "ec_model_find: NULL argument");
    if (params_json && strlen(params_json) > EC_PARAMS_MAX)
        return ec_seterr(EC_ETOOBIG, "params JSON is longer than %u bytes", EC_PARAMS_MAX);
    pthread_mutex_lock(&c->lock);
    req = begin(c, &w, EC_OP_FIND);
    ec_put_str(&w, model);
    ec_put_i64(&w, round);
    ec_put_str(&w, params_json);
    rc = rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        v = ec_get_i64(&r);
        if (!ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed FIND reply");
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0)
        *version_out = v;
    return rc;
}

/* A request of (model, version string) and an optional u32, answered with
 * one u64. */
static int version_rpc(ec_client *c, uint16_t op, const char *model, const char *version,
                       const uint32_t *flags, uint64_t *u64_out)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    uint64_t v = 0;
    int rc;

    if (!c || !model || !version)
        return ec_seterr(EC_EINVAL, "NULL model or version");
    pthread_mutex_lock(&c->lock);
    req = begin(c, &w, op);
    ec_put_str(&w, model);
    ec_put_str(&w, version);
    if (flags)
        ec_put_u32(&w, *flags);
    rc = rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        v = ec_get_u64(&r);
        if (!ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed reply to op %u", op);
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0 && u64_out)
        *u64_out = v;
    return rc;
}

int ec_model_prewarm(ec_client *c, const char *model, const char *version, unsigned flags,
                     ec_prewarm_progress *out)
{
    ec_prewarm_progress p = {0};
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model || !version || !out)
        return ec_seterr(EC_EINVAL, "ec_model_prewarm: NULL argument");
    pthread_mutex_lock(&c->lock);
    req = begin(c, &w, EC_OP_PREWARM);
    ec_put_str(&w, model);
    ec_put_str(&w, version);
    ec_put_u32(&w, flags);
    rc = rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        p.version = ec_get_i64(&r);
        p.partitions = ec_get_u64(&r);
        p.done = ec_get_u64(&r);
        p.failed = ec_get_u64(&r);
        p.bytes = ec_get_u64(&r);
        p.finished = (int)ec_get_u32(&r);
        if (!ec_rbuf_done(&r) || p.done + p.failed > p.partitions)
            rc = ec_seterr(EC_EPROTO, "malformed PREWARM reply");
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0)
        *out = p;
    return rc;
}

int ec_model_evict(ec_client *c, const char *model, const char *version, uint64_t *bytes_out)
{
    return version_rpc(c, EC_OP_EVICT, model, version, NULL, bytes_out);
}

int ec_model_refresh(ec_client *c, const char *model, const char *version,
                     uint64_t *changed_out)
{
    return version_rpc(c, EC_OP_REFRESH, model, version, NULL, changed_out);
}

int ec_model_policy(ec_client *c, const char *model, uint64_t min_resident_bytes,
                    double min_request_rate)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model)
        return ec_seterr(EC_EINVAL, "ec_model_policy: NULL argument");
    if (!(min_request_rate >= 0 && min_request_rate < 1e15))
        return ec_seterr(EC_EINVAL, "min_request_rate %g must be >= 0", min_request_rate);
    pthread_mutex_lock(&c->lock);
    req = begin(c, &w, EC_OP_POLICY);
    ec_put_str(&w, model);
    ec_put_u64(&w, min_resident_bytes);
    ec_put_u64(&w, (uint64_t)(min_request_rate * 1000.0 + 0.5));
    rc = rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0 && !ec_rbuf_done(&r))
        rc = ec_seterr(EC_EPROTO, "malformed POLICY reply");
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ec_model_retire(ec_client *c, const char *model, int64_t version, int force)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model)
        return ec_seterr(EC_EINVAL, "ec_model_retire: NULL argument");
    pthread_mutex_lock(&c->lock);
    req = begin(c, &w, EC_OP_RETIRE);
    ec_put_str(&w, model);
    ec_put_i64(&w, version);
    ec_put_u32(&w, force ? 1 : 0);
    rc = rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0 && !ec_rbuf_done(&r))
        rc = ec_seterr(EC_EPROTO, "malformed RETIRE reply");
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* Parse one LIST reply page and call cb; returns cb's value, 0, or an error. */
static int list_page(ec_rbuf *r, uint32_t n, ec_list_cb cb, void *arg,
                     ec_version_info *cur, char *model, char *params, char *aliases)
{
    for (uint32_t k = 0; k < n; k++) {
        uint8_t kind = ec_get_u8(r);
        int rc;

        if (kind == EC_LIST_VERSION) {
            ec_get_str(r, model, EC_NAME_MAX + 1);
            cur->version = ec_get_i64(r);
            cur->round = ec_get_i64(r);
            ec_get_str(r, params, EC_PARAMS_MAX + 1);
            ec_get_str(r, aliases, 4096);
            cur->created_unix = ec_get_i64(r);
            cur->tensors = ec_get_u32(r);
            cur->bytes = ec_get_u64(r);
            if (r->bad)
                break;
            rc = cb(cur, NULL, arg);
        } else if (kind == EC_LIST_TENSOR) {
            char name[EC_NAME_MAX + 1];
            ec_tensor_listing tl = {.name = name};
            ec_get_str(r, name, sizeof(name));
            tl.dtype = (ec_dtype)ec_get_u32(r);
            tl.ndim = ec_get_u32(r);
            if (tl.ndim > EC_MAX_DIMS || !ec_dtype_valid(tl.dtype)) {
                r->bad = true;
                break;
            }
            for (uint32_t d = 0; d < tl.ndim; d++)
                tl.shape[d] = ec_get_u64(r);
            tl.partitions = ec_get_u64(r);
            tl.bytes = ec_get_u64(r);
            if (r->bad || !cur->model[0])
                break;
            rc = cb(cur, &tl, arg);
        } else {
            r->bad = true;
            break;
        }
        if (rc)
            return rc;
    }
    if (!ec_rbuf_done(r))
        return ec_seterr(EC_EPROTO, "malformed LIST reply");
    return 0;
}

int ec_catalog_list(ec_client *c, const char *model, ec_list_cb cb, void *arg)
{
    static _Thread_local char mname[EC_NAME_MAX + 1], params[EC_PARAMS_MAX + 1], aliases[4096];
    ec_version_info cur = {.model = mname, .params_json = params, .aliases = aliases};
    uint32_t vcur = 0, tcur = 0;
    int rc;

    if (!c || !cb)
        return ec_seterr(EC_EINVAL, "ec_catalog_list: NULL argument");
    mname[0] = '\0';
    for (;;) {
        ec_wbuf w;
        ec_rbuf r;
        uint32_t req, n;

        pthread_mutex_lock(&c->lock);
        req = begin(c, &w, EC_OP_LIST);
        ec_put_str(&w, model);
        ec_put_u32(&w, vcur);
        ec_put_u32(&w, tcur);
        rc = rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
        if (rc == 0) {
            vcur = ec_get_u32(&r);
            tcur = ec_get_u32(&r);
            n = ec_get_u32(&r);
            /* The page lives in c->rbuf: parse it before unlocking. Copy it
             * out so the callback may call into this client. */
            uint8_t *copy = malloc(r.len);
            if (!copy) {
                rc = ec_seterr(EC_ENOMEM, "list page");
            } else {
                memcpy(copy, r.p, r.len);
                r.p = copy;
                pthread_mutex_unlock(&c->lock);
                rc = list_page(&r, n, cb, arg, &cur, mname, params, aliases);
                free(copy);
                if (rc || (vcur == 0 && tcur == 0))
                    return rc;
                continue;
            }
        }
        pthread_mutex_unlock(&c->lock);
        return rc;
    }
}

int ec_client_stats(ec_client *c, ec_stat_cb cb, void *arg)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req, n;
    int rc;

    if (!c || !cb)
        return ec_seterr(EC_EINVAL, "ec_client_stats: NULL argument");
    pthread_mutex_lock(&c->lock);
    req = begin(c, &w, EC_OP_STATS);
    rc = rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        n = ec_get_u32(&r);
        for (uint32_t i = 0; i < n && rc == 0 && !r.bad; i++) {
            char name[128];
            uint64_t v;
            ec_get_str(&r, name, sizeof(name));
            v = ec_get_u64(&r);
            if (!r.bad)
                rc = cb(name, v, arg);
        }
        if (rc == 0 && !ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed STATS reply");
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}
