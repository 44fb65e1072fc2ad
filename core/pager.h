/*
 * pager.h - reading partitions from their files into extents of the segment.
 *
 * Two backends behind one interface (core/pager.c picks one):
 *
 *   io_uring  O_DIRECT reads straight into the extent (no bounce buffer), the
 *             segment registered as fixed buffers and partition files as fixed
 *             files where the kernel allows, a bounded queue depth, batched
 *             submission. Driven from the daemon's server thread; completions
 *             wake it through an eventfd registered with the ring.
 *   pread     a pool of reader threads, for kernels without io_uring, with
 *             io_uring disabled, or under a seccomp filter that forbids it.
 *
 * Beside either, the remote tier (core/pager_remote.c, opened with
 * ec_pager_remote_open when the daemon has --remote): a request with
 * `remote` set is fetched from the Redis Cluster by the remote tier's own
 * worker threads, verified the same way, and comes back through the same
 * event fd and ec_pager_reap.
 *
 * A request reads either one partition (verified against its XXH3 checksum
 * from the partition table) or, with block_sums set, a run of whole 4 KiB
 * blocks of a version-2 file (each verified against its block checksum), so
 * that a few rows cost a few blocks instead of a whole partition.
 *
 * Both backends serve demand reads before prewarm reads, retry short reads,
 * EAGAIN and EINTR, verify the checksums before reporting success, and
 * report every other failure on the request (rc, msg). A fault hook
 * (ec_pager_inject) makes reads fail on purpose, for tests.
 *
 * Threads: every function is called from the server thread only; the pread
 * backend's readers are internal.
 */
#ifndef EC_CORE_PAGER_H
#define EC_CORE_PAGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hist.h"
#include "common/err.h"
#include "core/partfile.h"

enum ec_page_prio { EC_PAGE_DEMAND = 0, EC_PAGE_PREWARM = 1 };

/* Where a tensor pulled lazily (`embcache pull --lazy`) keeps the bytes
 * that are not yet in its local file: chunks of the Redis Cluster of the
 * remote tier, ec:c:<model>:<version>:<index>:<p>:<k> (core/publish.h).
 * Filled and owned by the engine (one per such tensor); a request points
 * at it, and it lives until the requests that do have come back. */
typedef struct ec_remote_src {
    char model[EC_NAME_MAX + 1];
    int64_t version;
    char tensor[EC_NAME_MAX + 1];   /* for messages */
    uint32_t index;                 /* the tensor's t in the manifest */
    uint32_t chunk;                 /* the manifest's chunk size */
    ec_partfile_meta meta;          /* the local file's layout (its head is local) */
    const uint64_t *part_checksums; /* the catalog's, meta.partitions of them */
    const char *path;               /* the partition file, where kept bytes go */
} ec_remote_src;

typedef struct ec_page_req {
    /* Filled by the caller. */
    int fd;                 /* the partition file, buffered */
    int dfd;                /* the same file opened O_DIRECT, or -1 */
    int file_slot;          /* ec_pager_file_add() handle, or -1 */
    const char *path;       /* for messages */
    uint64_t file_off;      /* where the partition (or first block) starts */
    uint32_t length;        /* bytes of partition data (or of the blocks) */
    uint32_t io_len;        /* bytes a direct read may transfer (>= length,
                             * 4 KiB multiple, within the extent and file) */
    bool direct_ok;         /* dest, file_off and io_len suit O_DIRECT */
    uint8_t *dest;          /* in the segment */
    uint64_t checksum;      /* expected XXH3-64 of the length bytes
                             * (partition reads) */
    uint32_t part;          /* for messages (partition reads) */
    /* Block reads: non-NULL makes this a read of length / 4096 whole blocks
     * of the data region; then length == io_len, a non-zero multiple of
     * 4096, file_off is 4096-aligned, and block i of dest must hash to
     * block_sums[i] (the caller keeps the array alive until the request
     * comes back). A request breaking these rules fails with EC_EINVAL. */
    const uint64_t *block_sums;
    uint64_t block;         /* index of the first block, for messages */
    enum ec_page_prio prio;
    void *user;
    /* Remote reads: non-NULL sends this request to the remote tier
     * (core/pager_remote.c) instead of reading fd: the chunks that cover
     * the bytes are fetched (one pipelined MGET), copied into dest (zero
     * for the stride's padding) and verified as a read from the file is.
     * keep: then write each partition fetched whole and verified into the
     * partition file (fdatasync'd) before the request comes back. */
    const ec_remote_src *remote;
    bool keep;
    uint64_t keep_reserve;  /* keep only while the file system keeps this many
                             * bytes free */

    /* Results, valid in the completion callback. */
    int rc;
    char msg[EC_ERRMSG_MAX];
    uint64_t kept_first;    /* remote: partitions [kept_first, +kept_n) are now */
    uint32_t kept_n;        /* in the file, verified; kept_n 0: none */
    bool keep_no_space;     /* remote: not (all) kept: the file system is at
                             * its reserve */

    /* Private to the pager. */
    uint64_t submit_ns;     /* when ec_pager_submit took it (ec_hist_now_ns) */
    uint32_t done;          /* bytes read so far */
    unsigned retries;
    bool direct;            /* this read goes through dfd */
    int fault;              /* injected fault still to apply (ec_fault_kind) */
    bool fake_eof;          /* an injected short read: the file "ends" here */
    struct ec_page_req *next;
} ec_page_req;

enum ec_pager_kind { EC_PAGER_AUTO = 0, EC_PAGER_URING = 1, EC_PAGER_PREAD = 2 };

typedef struct ec_pager_config {
    enum ec_pager_kind kind;  /* AUTO: io_uring when it works, else pread */
    unsigned queue_depth;     /* reads in flight (io_uring); 0 for 64 */
    unsigned threads;         /* reader threads (pread); 0 for 2 */
    void *region;             /* the segment's data area, to register */
    size_t region_len;
} ec_pager_config;

typedef struct ec_pager_stats {
    uint64_t reads;           /* requests read and verified (partitions and
                               * block runs) */
    uint64_t bytes;           /* their bytes (length) */
    uint64_t retries;         /* short reads, EAGAIN, EINTR resubmitted */
    uint64_t errors;          /* reads that failed (I/O) */
    uint64_t checksum_failures;
    uint64_t inflight;        /* submitted to the kernel or a reader */
    uint64_t queued;          /* waiting for a slot */
    uint64_t direct_reads;    /* of reads, those done with O_DIRECT */
    uint64_t fixed_buffer_reads;
    uint64_t block_reads;     /* of reads, the block runs */
    ec_hist read_seconds;     /* submit to completion of each read, failed ones too */
} ec_pager_stats;

typedef struct ec_pager ec_pager;

/* Open a pager. AUTO tries io_uring and falls back to pread, logging why
 * once. URING fails (EC_EIO with the reason) where io_uring cannot be used.
 * EMBCACHE_PAGER=pread|io_uring in the environment overrides AUTO. */
int ec_pager_open(const ec_pager_config *cfg, ec_pager **out);

/* Wait for reads in flight, then free. Requests still queued are returned
 * through done() with EC_ECONN so their owner can free them. */
void ec_pager_close(ec_pager *p, void (*done)(ec_page_req *r, void *arg), void *arg);

/* "io_uring" or "pread", and a line of what was set up (fixed buffers...). */
const char *ec_pager_name(const ec_pager *p);
const char *ec_pager_describe(const ec_pager *p);

/* Register a partition file for fixed-file reads; returns a slot or -1
 * (not supported, table full). ec_pager_file_del when the fd is closed. */
int ec_pager_file_add(ec_pager *p, int fd);
void ec_pager_file_del(ec_pager *p, int slot);

/* Queue a read. It goes to the kernel at the next ec_pager_flush (or
 * ec_pager_reap), so a burst of requests costs one system call; the result
 * comes back through ec_pager_reap. */
void ec_pager_submit(ec_pager *p, ec_page_req *r);

/* Hand what was queued to the kernel (io_uring) in one call. */
void ec_pager_flush(ec_pager *p);

/* The descriptor the server polls; readable when reads have finished. */
int ec_pager_event_fd(const ec_pager *p);

/* Call done(r, arg) for every finished read (rc == 0: data in place and
 * verified; else EC_EIO, EC_ECHECKSUM naming the partition or block, or
 * EC_EINVAL for a malformed block request), and start queued ones. */
void ec_pager_reap(ec_pager *p, void (*done)(ec_page_req *r, void *arg), void *arg);

void ec_pager_stats_get(const ec_pager *p, ec_pager_stats *out);

/* The remote tier's reads (core/pager_remote.c). */
typedef struct ec_pager_remote_stats {
    uint64_t reads;             /* remote requests fetched and verified */
    uint64_t bytes;             /* their bytes (length) */
    uint64_t errors;            /* failed: cluster unreachable, timeouts, no --remote */
    uint64_t checksum_failures; /* a chunk missing, of the wrong size, or failing
                                 * its checksum */
    uint64_t kept_bytes;        /* partition bytes written into local files */
    uint64_t keep_failures;     /* writes into the local file that failed */
    uint64_t keep_skipped_space; /* reads not kept: the file system at its reserve */
    uint64_t inflight;          /* requests at the workers */
    uint64_t redirects;         /* MOVED + ASK the workers' handles followed */
    uint64_t retries;           /* their keys sent again */
    uint64_t connect_failures;  /* failed connects and failed opens */
    ec_hist read_seconds;       /* submit to completion, failed ones too */
} ec_pager_remote_stats;

/* Start the remote tier's workers (threads, 0: 4) for the cluster at url
 * (checked seeds; nothing is connected yet). Without this, a request with
 * `remote` set fails (EC_ECONN, saying to start embcached with --remote).
 * EC_EINVAL (bad URL), EC_ENOMEM. */
int ec_pager_remote_open(ec_pager *p, const char *url, unsigned threads);
/* The cluster's URL, or NULL when there is no remote tier. */
const char *ec_pager_remote_url(const ec_pager *p);
void ec_pager_remote_stats_get(ec_pager *p, ec_pager_remote_stats *out);

/* Fault hook: make every nth read (counting from the next one) fail as
 * `kind`; n = 0 turns it off. Kinds: EC_FAULT_EIO (the read fails with EIO),
 * EC_FAULT_SHORT (the read stops short and the file seems to end there),
 * EC_FAULT_SHORT_ONCE (one short read, then the rest is read: must succeed). */
enum ec_fault_kind { EC_FAULT_NONE = 0, EC_FAULT_EIO, EC_FAULT_SHORT, EC_FAULT_SHORT_ONCE };
void ec_pager_inject(ec_pager *p, enum ec_fault_kind kind, unsigned every_nth);

#endif
