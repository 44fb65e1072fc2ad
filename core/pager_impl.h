/*
 * pager_impl.h - what the pager's backends share (private to core/pager*.c).
 *
 * A backend is a table of functions; pager.c owns the common state (config,
 * statistics, the fault hook) and the code both backends run at the end of a
 * read: checking it is complete and verifying the checksum(s).
 *
 * A request that ec_pager_prepare() finds malformed comes to the backend
 * with rc already set: the backend does no I/O for it (pread) or a NOP
 * (io_uring), and hands it back through reap like any other.
 */
#ifndef EC_CORE_PAGER_IMPL_H
#define EC_CORE_PAGER_IMPL_H

#include "core/pager.h"

#define EC_PAGER_MAX_RETRIES 16

struct ec_pager_ops {
    const char *name;
    int (*open)(ec_pager *p);                 /* fills p->impl, p->efd */
    void (*close)(ec_pager *p, void (*done)(ec_page_req *, void *), void *arg);
    void (*submit)(ec_pager *p, ec_page_req *r);
    void (*flush)(ec_pager *p);                /* may be NULL */
    void (*reap)(ec_pager *p, void (*done)(ec_page_req *, void *), void *arg);
    int (*file_add)(ec_pager *p, int fd);
    void (*file_del)(ec_pager *p, int slot);
};

struct ec_pager {
    const struct ec_pager_ops *ops;
    ec_pager_config cfg;
    void *impl;
    int efd;
    char desc[256];
    ec_pager_stats st;
    enum ec_fault_kind fault;
    unsigned fault_every, fault_count;
    struct ec_pager_remote *remote; /* pager_remote.c; NULL: no --remote */
    ec_page_req *rfail, **rfail_tail; /* remote requests failed at submit */
    uint64_t remote_refused;        /* remote requests without a remote tier */
};

/* pager_remote.c, on the server thread: a request with r->remote set
 * (failed at once, through reap, without a remote tier); the finished
 * ones through done(); at close, wait for the workers and hand back every
 * request they hold. */
void ec_pager_remote_submit(ec_pager *p, ec_page_req *r);
void ec_pager_remote_reap(ec_pager *p, void (*done)(ec_page_req *, void *), void *arg);
void ec_pager_remote_close(ec_pager *p, void (*done)(ec_page_req *, void *), void *arg);

extern const struct ec_pager_ops ec_pager_uring_ops;
extern const struct ec_pager_ops ec_pager_pread_ops;

/* Server thread, when a request is first handed to a backend: check a block
 * request's shape (else set rc), decide whether the fault hook hits it, and
 * reset its private state. */
void ec_pager_prepare(ec_pager *p, ec_page_req *r);

/* "partition 3 of PATH" or "blocks 10..12 of PATH", for messages. */
const char *ec_pager_what(const ec_page_req *r, char *buf, size_t len);

/* Bytes this read must transfer in total (io_len for O_DIRECT, else length). */
static inline uint32_t ec_pager_want(const ec_page_req *r)
{
    return r->direct ? r->io_len : r->length;
}

/* A read of r returned n bytes (n >= 0) or failed with -errno (n < 0).
 * Updates r->done and says what to do next. Thread-safe (touches r only). */
enum ec_read_next { EC_READ_AGAIN, EC_READ_DONE };
enum ec_read_next ec_pager_account(ec_page_req *r, long n);

/* r is fully read: verify its checksum (partition) or the checksum of each
 * of its blocks, and set r->rc / r->msg. Does nothing when r->rc is set. */
void ec_pager_verify(ec_page_req *r);

/* The length an injected short read transfers out of len: half, in whole
 * pages when there is more than one. */
static inline uint32_t ec_pager_short_len(uint32_t len)
{
    uint32_t half = len / 2;
    if (half >= 4096)
        half -= half % 4096;
    return half ? half : 1;
}

/* Server thread: fold a finished request into the statistics. */
void ec_pager_count(ec_pager *p, const ec_page_req *r);

#endif
