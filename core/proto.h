/*
 * proto.h - the binary control protocol between clients and embcached.
 *
 * Transport: a Unix SOCK_SEQPACKET socket, so every message arrives whole or
 * not at all. A message is a 24-byte header followed by a body of at most
 * EC_MSG_MAX - 24 bytes. Integers are little-endian; a string is a u16
 * length and that many bytes, with no NUL inside. File descriptors travel
 * as SCM_RIGHTS ancillary data (HELLO's reply, IMPORT's request, INDEX_PUT's
 * request, INDEX_OPEN's reply).
 *
 * Every field is validated by the reader (ec_rbuf): a read past the end, an
 * over-long string or an embedded NUL marks the buffer bad, and the message
 * is answered with EC_EPROTO, never trusted. Used by the daemon's server
 * loop and by libembcache; the codec itself has no state and no locks.
 *
 *   op        request body                           reply body
 *   HELLO     u32 flags, str client                  u64 generation, u64 seg_size,
 *                                                    u32 layout, u32 session_size,
 *                                                    u32 daemon_pid, u64 client_id,
 *                                                    str daemon_version + fds[seg, session]
 *   RESOLVE   str model, str version, str tensor     tensor record (ec_proto_tensor)
 *   FAULT     u32 tensor, u32 n, u32 part[n]         u32 mode, when all are resident
 *                                                    (mode ROWS: nothing was loaded:
 *                                                    look the rows up as items)
 *   FAULT_ROWS u32 tensor, u32 n, u64 row[n]         u32 mode, when all are resident
 *   PIN       u32 tensor                             u64 pin, u64 offset, u64 length
 *   UNPIN     u64 pin                                (empty)
 *   STATS     (empty)                                u32 n, n x (str name, u64 value)
 *   LIST      str model, u32 vcursor, u32 tcursor    u32 vnext, u32 tnext, u32 n, records
 *   ALIAS     str model, str alias, i64 version      (empty)
 *   FIND      str model, i64 round, str params       i64 version
 *   PREWARM   str model, str version, u32 flags      i64 version, u64 partitions,
 *                                                    u64 done, u64 failed, u64 bytes,
 *                                                    u32 finished
 *   EVICT     str model, str version                 u64 bytes freed
 *   RETIRE    str model, i64 version, u32 force      (empty), once drained
 *   REFRESH   str model, str version                 u64 partitions changed
 *   POLICY    str model, u64 min_resident_bytes,     (empty)
 *             u64 min_request_rate (milli-requests/s)
 *   IMPORT    str model, i64 version, i64 round,     u32 tensors
 *             str params, u64 partition_bytes,
 *             u32 n, n x str filename + fds[n]
 *   TENSORS   u32 cursor                             u32 next, u32 n, n x tensor stat
 *                                                    (ec_put_tensor_stat); next 0: done
 *   MODE      str model, str tensor, u32 mode        (empty)
 *   UPGRADE   str model, str version                 u32 files rewritten, once the
 *                                                    version took them
 *   NS_OPEN   str name, u32 flags, str bind_model,   u32 slot, u64 salt, u32 gen,
 *             str bind_version, ec_proto_ns_opts     u32 private (1: + the fd of the
 *                                                    caller's uid's result arena)
 *   RES_LEASE u32 slot, u32 flags, bytes key,        u32 answer (EC_LEASE_*)
 *             i64 seen (EARLY: the fresh_until
 *             of the value refreshed; 0: any)
 *   RES_PUT   u32 slot, u32 flags, u64 ttl_us,       (empty)
 *             u32 compute_us, u32 dtype, u32 ndim,
 *             ndim x u64 shape, bytes key,
 *             u64 value_len, u32 inline, [bytes
 *             value when inline, else fds[1]: a
 *             file holding value_len bytes]
 *   RES_RELEASE u32 slot, bytes key                  (empty)
 *   RES_PURGE u32 slot, u32 all, bytes key           u64 removed
 *   NS_LIST   u32 cursor                             u32 next, u32 n, n x namespace
 *                                                    record (ec_proto_ns); next 0: done
 *   NS_DROP   str name                               (empty)
 *
 *   DYN_SET   str model, str version, str tensor,     6 x u64 (zero)
 *             u64 capacity, u32 policy
 *   ROWS_PUT  u32 tensor, u32 n, u64 row_bytes,       u64 lsn, inserted, updated,
 *             u32 inline; inline: n x i64 keys then   deleted, missing, evicted
 *             n rows; else one fd (a sealed memfd
 *             holding the same bytes)
 *   ROWS_DEL  u32 tensor, u32 n, u32 inline; keys     as ROWS_PUT
 *             inline or in one fd
 *   SNAPSHOT  str model, str version, u64 new (0:     u64 version
 *             next)
 *   DYN_STATS (empty)                                u32 n, n x table record
 *   INDEX_PUT str model, i64 version, str tensor,    u64 size, once the daemon
 *             u64 size + fds[1]: the IVF index file  checked the whole file
 *             (common/ivffile.h) the client built    (EC_EFORMAT: what is wrong)
 *                                                    and stored it
 *   INDEX_OPEN str model, str version, str tensor    u64 size + fds[1]: the index
 *                                                    file, O_RDONLY (EC_ENOENT: none)
 *
 * "bytes" is a u32 length and that many bytes.
 *
 * The tensor record (RESOLVE) ends with u32 mode: how the daemon caches
 * the tensor (ec_cache_mode); clients probe the partition index or the item
 * index by it, and take the mode a FAULT reply gives.
 *
 * A reply carries the request's op | EC_OP_REPLY and req_id. status < 0 is
 * an EC_E* code and the body is then one str: the message.
 */
#ifndef EC_CORE_PROTO_H
#define EC_CORE_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "embcache.h"

#define EC_PROTO_MAGIC 0x31504345u /* "ECP1" */
#define EC_PROTO_VERSION 2u
#define EC_MSG_MAX 65536u
#define EC_MSG_HDR 24u
#define EC_MSG_MAX_FDS 64
#define EC_FAULT_MAX_PARTS ((EC_MSG_MAX - EC_MSG_HDR - 8) / 4)
#define EC_FAULT_MAX_ROWS ((EC_MSG_MAX - EC_MSG_HDR - 8) / 8)
#define EC_PARAMS_MAX 16384u

/* HELLO's first field: what the client reads beyond what every client of
 * EC_PROTO_VERSION reads (clients before these bits send 0). The daemon
 * leaves out of its replies what a client did not say it reads. */
#define EC_HELLO_NS_REMOTE 0x1u /* EC_NS_REMOTE in NS_LIST records */
#define EC_HELLO_FEATURES EC_HELLO_NS_REMOTE /* what this build's client sends */

enum ec_op {
    EC_OP_HELLO = 1,
    EC_OP_RESOLVE = 2,
    EC_OP_FAULT = 3,
    EC_OP_PIN = 4,
    EC_OP_UNPIN = 5,
    EC_OP_STATS = 6,
    EC_OP_LIST = 7,
    EC_OP_ALIAS = 8,
    EC_OP_IMPORT = 9,
    EC_OP_FIND = 10,
    EC_OP_PREWARM = 11,
    EC_OP_EVICT = 12,
    EC_OP_RETIRE = 13,
    EC_OP_REFRESH = 14,
    EC_OP_POLICY = 15,
    EC_OP_DEVICES = 16,
    EC_OP_FAULT_ROWS = 17,
    EC_OP_TENSORS = 18,
    EC_OP_MODE = 19,
    EC_OP_UPGRADE = 20,
    EC_OP_NS_OPEN = 21,
    EC_OP_RES_LEASE = 22,
    EC_OP_RES_PUT = 23,
    EC_OP_RES_RELEASE = 24,
    EC_OP_RES_PURGE = 25,
    EC_OP_NS_LIST = 26,
    EC_OP_NS_DROP = 27,
    EC_OP_DYN_SET = 28,     /* make a tensor of a version dynamic (admin) */
    EC_OP_ROWS_PUT = 29,    /* insert or update rows of a dynamic table (admin) */
    EC_OP_ROWS_DEL = 30,    /* delete keys of a dynamic table (admin) */
    EC_OP_SNAPSHOT = 31,    /* fold a dynamic version into a new immutable one (admin) */
    EC_OP_DYN_STATS = 32,   /* dynamic tables: keys, capacity, lsn, wal */
    EC_OP_RESERVED_33 = 33,
    EC_OP_INDEX_PUT = 34,   /* store an approximate index built by a client (admin) */
    EC_OP_INDEX_OPEN = 35,  /* a read-only fd of a tensor's approximate index */
    EC_OP_PUBLISH = 36,     /* copy a version to a Redis Cluster (admin; core/server_remote.c) */
    EC_OP_PULL = 37,        /* register a version from a Redis Cluster (admin) */
    EC_OP_UNPUBLISH = 38,   /* remove a version from a Redis Cluster (admin) */
    EC_OP_RELOAD = 39,      /* read the configuration again, answer when applied (admin) */
    EC_OP_MAX_ = 40,
};
#define EC_OP_REPLY 0x8000u

/* LIST record kinds. */
#define EC_LIST_VERSION 1u
#define EC_LIST_TENSOR 2u

typedef struct ec_msg_hdr {
    uint32_t magic;
    uint16_t version;
    uint16_t op;
    uint32_t req_id;
    int32_t status;
    uint32_t body_len;
    uint32_t reserved; /* must be 0 */
} ec_msg_hdr;

/* A message being written into a caller-provided buffer of EC_MSG_MAX. */
typedef struct ec_wbuf {
    uint8_t *buf;
    size_t len;
    size_t cap;
    bool overflow; /* a put did not fit: the message must not be sent */
} ec_wbuf;

/* A received body being read. */
typedef struct ec_rbuf {
    const uint8_t *p;
    size_t len;
    size_t pos;
    bool bad; /* a get failed: the message is malformed */
} ec_rbuf;

void ec_msg_begin(ec_wbuf *w, void *buf, size_t cap, uint16_t op, uint32_t req_id,
                  int32_t status);
/* Patch the header's body length; returns the message length, or 0 when
 * the message overflowed. */
size_t ec_msg_end(ec_wbuf *w);

void ec_put_u8(ec_wbuf *w, uint8_t v);
void ec_put_u16(ec_wbuf *w, uint16_t v);
void ec_put_u32(ec_wbuf *w, uint32_t v);
void ec_put_u64(ec_wbuf *w, uint64_t v);
void ec_put_i64(ec_wbuf *w, int64_t v);
void ec_put_str(ec_wbuf *w, const char *s); /* NULL is "" */
/* Bytes left for puts. */
size_t ec_wbuf_room(const ec_wbuf *w);

/* Validate a received message's header against its length and open its
 * body. Returns 0, EC_EPROTO (bad magic, body length mismatch, reserved
 * bits) or EC_EVERSION, with a message. */
int ec_msg_parse(const void *buf, size_t len, ec_msg_hdr *hdr, ec_rbuf *body);

uint8_t ec_get_u8(ec_rbuf *r);
uint16_t ec_get_u16(ec_rbuf *r);
uint32_t ec_get_u32(ec_rbuf *r);
uint64_t ec_get_u64(ec_rbuf *r);
int64_t ec_get_i64(ec_rbuf *r);
/* Copy a string into dst (cap bytes incl. NUL); too long for dst or holding
 * a NUL marks r bad. */
void ec_get_str(ec_rbuf *r, char *dst, size_t cap);
/* "bytes": a u32 length and the bytes. ec_get_bytes points *p into the
 * body (NULL for none); a length past the body or over max marks r bad. */
void ec_put_bytes(ec_wbuf *w, const void *p, size_t n);
/* n bytes as they are, no length (the body says how many elsewhere). */
void ec_put_raw(ec_wbuf *w, const void *p, size_t n);
uint32_t ec_get_bytes(ec_rbuf *r, const uint8_t **p, uint32_t max);
/* True when the whole body was read and nothing was bad. */
bool ec_rbuf_done(const ec_rbuf *r);

/* The tensor record of RESOLVE's reply. */
typedef struct ec_proto_tensor {
    uint32_t id;
    char model[EC_NAME_MAX + 1];
    int64_t version;
    char name[EC_NAME_MAX + 1];
    uint32_t dtype;
    uint32_t ndim;
    uint64_t shape[EC_MAX_DIMS];
    uint64_t rows, row_bytes, rows_per_partition, partitions;
    uint32_t mode;      /* ec_cache_mode: PARTITIONS or ROWS */
} ec_proto_tensor;

void ec_put_tensor(ec_wbuf *w, const ec_proto_tensor *t);
/* Reads and validates: dtype known, ndim <= 8, rows/row_bytes/partitions
 * consistent with shape and dtype. Returns 0 or EC_EPROTO. */
int ec_get_tensor(ec_rbuf *r, ec_proto_tensor *t);

/* One tensor of the TENSORS reply (embcache stats): what the daemon knows
 * of it and what its clients reported. */
typedef struct ec_proto_tensor_stat {
    uint32_t id, mode, policy, file_version;
    char model[EC_NAME_MAX + 1];
    int64_t version;
    char name[EC_NAME_MAX + 1];
    uint64_t bytes, row_bytes, resident_bytes, resident_rows;
    uint64_t rows_served, hits;   /* clients' counts (hints: they can lie) */
    uint64_t row_faults, bytes_read;
} ec_proto_tensor_stat;

void ec_put_tensor_stat(ec_wbuf *w, const ec_proto_tensor_stat *t);
/* Reads and validates (mode and policy known, names valid). 0 or EC_EPROTO. */
int ec_get_tensor_stat(ec_rbuf *r, ec_proto_tensor_stat *t);

/* A namespace's settings as NS_OPEN sends them (0: the default; stale_us
 * and jitter_ppm < 0: none). */
typedef struct ec_proto_ns_opts {
    uint64_t ttl_us;
    int64_t stale_us;
    uint64_t negative_ttl_us;
    int64_t jitter_ppm;
    uint64_t lease_us;
    uint32_t max_computing;
    uint64_t negative_max;
} ec_proto_ns_opts;

/* A namespace name: 1..EC_NS_NAME_MAX of [A-Za-z0-9._:-]. */
bool ec_ns_name_ok(const char *name);

void ec_put_ns_opts(ec_wbuf *w, const ec_proto_ns_opts *o);
void ec_get_ns_opts(ec_rbuf *r, ec_proto_ns_opts *o);

/* Counters of a namespace in its NS_LIST record, in this order. */
#define EC_PROTO_NS_COUNTERS 20u

/* One namespace of the NS_LIST reply. */
typedef struct ec_proto_ns {
    char name[EC_NS_NAME_MAX + 1];
    uint32_t owner_uid, flags, generation;
    char bind_model[EC_NAME_MAX + 1];
    char bind_version[EC_NAME_MAX + 1];
    int64_t bound_version;
    ec_proto_ns_opts opts;      /* the effective settings: no 0 defaults */
    /* items, negative_items, bytes, hits, misses, negative_hits, stale_served,
     * leases_granted, leases_waited, leases_passed, early_refreshes, computing,
     * computing_peak, limited, puts, negative_puts, evictions, purged,
     * invalidations, reserved */
    uint64_t counters[EC_PROTO_NS_COUNTERS];
} ec_proto_ns;

void ec_put_ns(ec_wbuf *w, const ec_proto_ns *ns);
/* Reads and validates (a valid name, flags known). 0 or EC_EPROTO. */
int ec_get_ns(ec_rbuf *r, ec_proto_ns *ns);

/* Send one message with optional fds. Returns 0, EC_ECONN (peer gone),
 * EC_EIO. nonblock: fail with EC_EIO/EAGAIN instead of waiting. */
int ec_msg_send(int sock, const void *msg, size_t len, const int *fds, int nfds, bool nonblock);

/* Receive one message into buf (cap >= EC_MSG_MAX) and up to maxfds fds.
 * Returns the length, 0 on orderly close, or EC_ECONN / EC_EIO /
 * EC_ETOOBIG (message or fd list truncated; received fds are closed). */
ssize_t ec_msg_recv(int sock, void *buf, size_t cap, int *fds, int *nfds, int maxfds);

/* Send an error reply carrying the thread's last message (or msg). */
int ec_msg_send_error(int sock, uint16_t op, uint32_t req_id, int status, const char *msg);

#endif
