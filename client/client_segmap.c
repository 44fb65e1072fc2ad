/*
 * client_segmap.c - one mapping of each daemon segment per process, and one
 * host registration of it per process for GPU reads.
 *
 * Every ec_client receives the daemon's segment as a descriptor. Mapping it
 * once per client, and registering each mapping with the GPU
 * (cudaHostRegister, which pins and maps every page of it), made a process
 * with several clients (a Python process with several CachedEmbedding
 * modules, each with its own connection) pin and map the whole segment
 * again for each: time at start, page-table and IOMMU entries, and
 * registrations per GPU that the driver limits. Here the mapping is shared
 * by every client of the process connected to the same segment (the same
 * memfd: st_dev and st_ino), reference-counted, and the decision how GPU
 * `dev` reads host rows (mapped, or staged through a pinned buffer when
 * the GPU cannot map it read-only or the registration failed) is taken
 * once per process and GPU: a failed registration is not tried again by
 * the next client either.
 *
 * A child process (fork) does not inherit CUDA state: entries made before
 * the fork are never handed out in the child, and the child does not
 * unregister them.
 *
 * Called by client.c (connect, teardown) and client_device.c (first GPU
 * gather), on any thread of the process; one mutex guards the list.
 */
#include "client/client_impl.h"
#include "common/log.h"

struct segmap_dev {
    bool decided;
    uint32_t host_reads;     /* EC_HOST_READS_* */
    ec_host_map map;         /* the chunks' device addresses when mapped */
};

struct segmap {
    dev_t dev;
    ino_t ino;
    uint64_t forks;          /* cl_forks() of the process that mapped it */
    int refs;
    bool registered;         /* host_register succeeded on some GPU */
    ec_segment seg;          /* the mapping (owns the descriptor) */
    struct segmap_dev gpu[EC_SHM_MAX_DEVICES];
    struct segmap *next;
};

static pthread_mutex_t sm_mu = PTHREAD_MUTEX_INITIALIZER;
static struct segmap *sm_list;

int cl_segmap_acquire(int fd, ec_segment *out, struct segmap **handle)
{
    struct segmap *m;
    struct stat st;
    int rc;

    if (fstat(fd, &st) < 0)
        return ec_seterr_errno(EC_EIO, errno, "cannot fstat the segment descriptor %d", fd);
    pthread_mutex_lock(&sm_mu);
    for (m = sm_list; m; m = m->next)
        if (m->dev == st.st_dev && m->ino == st.st_ino && m->forks == cl_forks() &&
            (off_t)m->seg.size == st.st_size)
            break;
    if (!m) {
        if (!(m = calloc(1, sizeof(*m)))) {
            pthread_mutex_unlock(&sm_mu);
            return ec_seterr(EC_ENOMEM, "segment mapping record");
        }
        if ((rc = ec_segment_map_fd(fd, &m->seg))) {
            pthread_mutex_unlock(&sm_mu);
            free(m);
            return rc;
        }
        m->dev = st.st_dev;
        m->ino = st.st_ino;
        m->forks = cl_forks();
        m->next = sm_list;
        sm_list = m;
    }
    m->refs++;
    *out = m->seg;
    out->fd = -1; /* the record owns the descriptor */
    *handle = m;
    pthread_mutex_unlock(&sm_mu);
    return 0;
}

void cl_segmap_release(struct segmap *m)
{
    struct segmap **pp;

    if (!m)
        return;
    pthread_mutex_lock(&sm_mu);
    if (--m->refs > 0) {
        pthread_mutex_unlock(&sm_mu);
        return;
    }
    for (pp = &sm_list; *pp && *pp != m; pp = &(*pp)->next)
        ;
    if (*pp)
        *pp = m->next;
    pthread_mutex_unlock(&sm_mu);
    /* The last client is gone and has drained its GPU gathers. A child of
     * a fork has no CUDA registration to undo. */
    if (m->registered && m->forks == cl_forks() && cl_be()->host_unregister)
        cl_be()->host_unregister(m->seg.base);
    ec_segment_close(&m->seg);
    free(m);
}

uint32_t cl_segmap_host_reads(struct segmap *m, int dev, bool readonly_ok, ec_host_map *map)
{
    struct segmap_dev *g = &m->gpu[dev];
    uint32_t mode;

    pthread_mutex_lock(&sm_mu);
    if (!g->decided) {
        g->host_reads = EC_HOST_READS_MAPPED;
        if (!readonly_ok) {
            g->host_reads = EC_HOST_READS_STAGED;
            ec_warn("GPU %d cannot map host memory read-only "
                    "(cudaDevAttrHostRegisterReadOnlySupported is 0): rows from host memory "
                    "are copied through a pinned buffer (slower; rows from the device tier "
                    "are not affected)", dev);
        } else if (cl_be()->host_register(m->seg.base, m->seg.size, true, dev, &g->map)) {
            g->host_reads = EC_HOST_READS_STAGED_FAILED;
            memset(&g->map, 0, sizeof(g->map));
            ec_warn("%s; rows from host memory are copied through a pinned buffer instead "
                    "(the registration is not tried again in this process; rows from the "
                    "device tier are not affected)", ec_last_error());
        } else {
            m->registered = true;
        }
        g->decided = true;
    }
    mode = g->host_reads;
    *map = g->map;
    pthread_mutex_unlock(&sm_mu);
    return mode;
}
