/*
 * rcluster_impl.h - private to core/rcluster*.c, the Redis Cluster client.
 * The interface is core/rcluster.h; the design (rounds, invariants) is the
 * comment on top of core/rcluster.c.
 *
 *   rcluster.c      multi-key and single-key calls, redirects, the handle
 *   rcluster_map.c  hashing, seed lists, the slot map (CLUSTER SLOTS), refresh
 *   rcluster_net.c  nodes: connections, send queues, the poll loop, the
 *                   RESP parser's reply objects (zero-copy GET values)
 *
 * Everything runs on the one thread that uses the handle.
 */
#ifndef EC_CORE_RCLUSTER_IMPL_H
#define EC_CORE_RCLUSTER_IMPL_H

#include <hiredis/hiredis.h>

#include <poll.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "core/rcluster.h"

struct addrinfo;

#define RC_NONE 0xFFFFu
#define RC_READ_CHUNK (256 * 1024)      /* one read() */
#define RC_FEED_SLICE (16 * 1024)       /* bytes fed to the parser at a time */
#define RC_MAX_ELEMENTS (1 << 17)       /* elements of one array reply */
#define RC_MAX_OBJECTS (1 << 20)        /* objects in one reply */
#define RC_REPLY_SLACK (16u << 20)      /* a reply's strings beyond max_value_bytes: a
                                         * slot map's names and ids (16384 ranges of
                                         * three nodes: about 3 MB) */
#define RC_MAX_VALUE_LIMIT (512ull << 20)
#define RC_READER_KEEP (2u << 20)       /* reader buffer kept between replies */
#define RC_IOV 64
#define RC_SYNC_MAX 4
#define RC_REPLY_DELIVERED 100          /* type of the sentinel below */
#define RC_DIRECT_MIN (64u << 10)       /* GET values this long skip the parser */
#define RC_LOWAT (256u << 10)            /* SO_RCVLOWAT while a long value arrives */
#define RC_DIRECT_KEEP (16u << 20)      /* direct buffer kept between values */

enum { RC_GET = 1, RC_SET, RC_DEL };
enum { OP_READY, OP_INFLIGHT, OP_WAIT, OP_DONE };
enum { TAG_MAIN = 0, TAG_ASKING = 1, TAG_SYNC = 2, TAG_AUTH = 3 };
typedef enum { NODE_IDLE, NODE_CONNECTING, NODE_UP } rc_state;

/* A piece of a node's send queue: bytes of nd->hdr at off, or caller bytes. */
typedef struct rc_seg {
    const char *ext;
    size_t off, len;
} rc_seg;

/* One master (or a seed) and its connection. */
typedef struct rc_node {
    char host[EC_RCLUSTER_HOST_MAX];
    uint16_t port;
    ec_rcluster *c; /* for the parser's callbacks */
    rc_state state;
    int fd;
    redisReader *rd;
    struct addrinfo *ai, *ai_next;
    int connect_errno;
    uint64_t io_deadline; /* CLOCK_MONOTONIC ns: connect or next progress */
    char *hdr;
    size_t hdr_len, hdr_cap;
    rc_seg *seg;
    size_t nseg, seg_cap, seg_cur, seg_off;
    uint32_t *pend;
    size_t pend_head, pend_n, pend_cap;
    redisReply *sync_rep[RC_SYNC_MAX];
    unsigned sync_got;
    size_t reply_objs;
    uint64_t reply_bytes;   /* string bytes of the reply under way (limit:
                             * max_value_bytes + RC_REPLY_SLACK) */
    /* A long GET value read past the parser (rcluster_net.c, rc_direct_*):
     * value (to bulk_dst) and CRLF (to crlf), bulk_want bytes, bulk_got of
     * them in so far. */
    char *bulk;                /* our buffer for such values */
    size_t bulk_cap, bulk_want, bulk_got;
    char *bulk_dst;            /* the value's bytes go here: bulk or the caller's */
    char crlf[2];
    bool bulk_on;
    bool auth_queued;  /* this connection's AUTH is queued (or answered) */
    unsigned lowat;    /* the socket's SO_RCVLOWAT; 0 or 1: the default */
    char refused[128]; /* why the parser refused the reply under way */
    char err[EC_RCLUSTER_HOST_MAX + 256]; /* the last failure */
    int err_code;                         /* and its EC_E* code */
} rc_node;

/* The state of key i of a call (see the diagram in rcluster.c). */
typedef struct rc_op {
    uint32_t why; /* offset + 1 into call->why: the last reason to retry */
    uint16_t slot;
    uint16_t ask_node;
    uint16_t attempts;
    uint8_t state;
    int8_t code; /* the status if the key runs out of attempts */
} rc_op;

/* One multi-key call under way. */
typedef struct rc_call {
    int kind;
    const char *name;
    const char *const *keys;
    const size_t *klens;
    const void *const *vals;
    const size_t *vlens;
    void *const *dests;        /* GET: where values may land (mget_into) */
    const size_t *dest_lens;
    char px[24];
    size_t px_len;
    bool nx;
    ec_rcluster_fn fn;
    void *arg;
    size_t n, nleft, nfail;
    rc_op *ops;
    char *why;
    size_t why_len, why_cap;
    int first_err;
    char first_msg[EC_ERRMSG_MAX];
} rc_call;

struct ec_rcluster {
    ec_rcluster_opts o;
    char *url;             /* as opened: the process default's credentials are
                            * for the one cluster spelled this way */
    bool auth_default;     /* o.auth follows the process default */
    uint64_t auth_gen;     /* the default's generation o.auth holds */
    ec_rcluster_addr seeds[EC_RCLUSTER_MAX_SEEDS];
    size_t nseeds;
    rc_node **nodes;
    size_t nnodes, nodes_cap;
    uint16_t slot[EC_RCLUSTER_SLOTS];
    bool gc_due; /* slot[] or nodes[] changed since rc_gc last ran */
    uint64_t last_refresh;
    bool want_refresh;
    unsigned refresh_rr;
    rc_call *call;
    char *rbuf;
    struct pollfd *pfd;
    rc_node **pnode;
    size_t pfd_cap;
    ec_rcluster_stats st;
};

/* One argument of a command. */
typedef struct rc_arg {
    const void *p;
    size_t len;
} rc_arg;


static inline bool rc_is(const redisReply *r, int type)
{
    return r && r->type == type;
}

/* rcluster.c: before a connection's first command, take the process
 * default's credentials when they changed (a reload) and this handle
 * follows them. */
void rc_auth_refresh(ec_rcluster *c);

/* rcluster_map.c */
uint64_t rc_now(void); /* CLOCK_MONOTONIC, ns */
void rc_sleep_ns(uint64_t ns);
bool rc_host_ok(const char *h, size_t len);
bool rc_port_parse(const char *s, size_t len, uint16_t *out);
/* Load the map from any node that answers; rate-limited unless force. */
int rc_refresh(ec_rcluster *c, bool force, uint64_t deadline);
/* Free the nodes no slot names; only between calls (invariant 4). */
void rc_gc(ec_rcluster *c);
/* MOVED/ASK's "<slot> <host>:<port>" -> slot and node index; 0 or -1. */
int rc_parse_redirect(ec_rcluster *c, const rc_node *nd, const char *s, size_t len,
                      unsigned *slot, uint16_t *idx);

/* rcluster_net.c */
void rc_free_obj(void *obj);
/* The index of node host:port, added when new; 0 or EC_EPROTO/EC_ENOMEM. */
int rc_node_index(ec_rcluster *c, const char *host, size_t hlen, uint16_t port,
                  uint16_t *out);
void rc_node_free(rc_node *nd);
uint32_t rc_why(rc_call *call, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void rc_node_fail(ec_rcluster *c, rc_node *nd, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int rc_queue(ec_rcluster *c, rc_node *nd, int argc, const rc_arg *argv, uint32_t entry);
bool rc_node_busy(const rc_node *nd);
void rc_pump(ec_rcluster *c, uint64_t deadline);
int rc_sync(ec_rcluster *c, rc_node *nd, unsigned ncmd, const int *argn,
            const rc_arg *const *argv, uint64_t deadline, redisReply **out);

/* rcluster.c */
/* Key i of the call is finished: count it and call fn. */
void rc_done(ec_rcluster *c, rc_call *call, size_t i, int status, const void *val, size_t len,
             const char *msg);
/* Key i fails with status: rc_done with a message naming the key. */
void rc_fail_key(ec_rcluster *c, rc_call *call, size_t i, int status, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* A complete reply for FIFO entry `entry` of nd; takes r. */
void rc_on_reply(ec_rcluster *c, rc_node *nd, uint32_t entry, redisReply *r);

#endif
