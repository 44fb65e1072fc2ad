/*
 * robust.h - what test_daemon_robust.c and test_daemon_peers.c share: one
 * real embcached for the whole program (the cmocka group set-up starts it
 * with its stderr in a log that the teardown checks for sanitizer reports,
 * and imports two small .npy tensors), raw SEQPACKET helpers that speak the
 * control protocol byte by byte the way a broken or hostile client would,
 * the daemon's statistics, and daemon_still_serves(), the check each case
 * ends with: a well-behaved client still resolves and gathers correct bytes.
 *
 * Each test program runs group_setup()/group_teardown() itself, so each has
 * its own daemon in its own /tmp/ecrob-* directory. Helpers call cmocka and
 * belong to the test process: forked children must not call them. Every
 * receive on a raw connection times out (5 s), so a missing reply fails the
 * case instead of hanging it. Not for linking with ec_itest (itest.h): the
 * two are separate harnesses, and this one names its row check
 * robust_gather_check() to keep the symbols apart.
 */
#ifndef EC_TESTS_ROBUST_H
#define EC_TESTS_ROBUST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

#include "testutil.h"

#include "common/err.h"
#include "core/proto.h"

/* The small tensor: 8192 rows of 32 f32 (128 B), 4 KiB partitions -> 256. */
#define SMALL_ROWS 8192u
#define SMALL_DIM 32u
#define SMALL_SEED 7u
#define SMALL_PART_BYTES 4096u
/* The big one: 4096 rows of 4 KiB, 64 KiB partitions, 16 MiB in all: more
 * than the 8 MiB segment holds, so gathers over it keep faulting. */
#define BIG_ROWS 4096u
#define BIG_DIM 1024u
#define BIG_SEED 9u
#define BIG_PART_BYTES 65536u
#define SHM_SIZE "8M"
/* still_serves reads rows of partitions 0..63 only; cases that fault
 * "non-resident" partitions use 100 and up. */
#define SERVE_ROWS 2048u

/* The group's daemon and what group_setup() imported into it; written by
 * group_setup() only. */
extern char root[64];  /* the temporary directory: data, socket, log */
extern char data_dir[128], sock_path[108], log_path[128];
extern char small_npy[128], big_npy[128];
extern pid_t dpid;  /* the keeper */
extern pid_t wpid;  /* its worker, which serves */
extern ec_client *good;          /* a well-behaved client, connected throughout */
extern ec_tensor *good_small;    /* its handle on robust/current/emb */
extern uint32_t small_id, small_parts, big_id, big_parts;
/* recv_reply()'s receive buffer; a case may drain a connection into it. */
extern uint8_t rbuf[EC_MSG_MAX];

#define assert_contains(hay, needle)                                                     \
    do {                                                                                 \
        const char *h_ = (hay);                                                          \
        if (!contains(h_, (needle)))                                                     \
            fail_msg("expected \"%s\" in: %s", (needle), h_ ? h_ : "(null)");            \
    } while (0)

/* A reply as recv_reply() parsed it: msg is the error text when status < 0;
 * nfds counts the descriptors it carried (already closed). */
typedef struct reply {
    ec_msg_hdr h;
    ec_rbuf body;
    char msg[EC_ERRMSG_MAX + 1];
    int nfds;
} reply;

/* ---- small helpers ---- */
void sleep_ms(unsigned ms);
bool contains(const char *hay, const char *needle);
/* A whole file as a C string (malloc'ed; the caller frees), or NULL. */
char *read_text(const char *path);
bool has_sanitizer_report(const char *text);
/* How many descriptors pid has open (/proc/pid/fd). */
int count_fds(pid_t pid);

/* ---- daemons ---- */
bool socket_accepts(const char *path);
/* Start embcached on dd and sp (--shm-size SHM_SIZE plus extra), its
 * stdout/stderr appended to log, RLIMIT_NOFILE set to nofile unless 0; it
 * dies with this process. Returns once it listens (20 s at most). */
pid_t daemon_spawn(const char *dd, const char *sp, const char *log,
                   const char *const *extra, rlim_t nofile);
/* Fails the case if log holds a sanitizer report. */
void check_log_clean(const char *log);

/* ---- the raw protocol ---- */
int raw_connect_to(const char *path);
/* A raw connection to the group's daemon, no HELLO sent. */
int raw_connect(void);
void set_rcvtimeo_ms(int fd, unsigned ms);
/* Send msg with nfds (at most 200) copies of fd attached, past
 * ec_msg_send's own limit. */
void send_with_fds(int sock, const void *msg, size_t len, int fd, int nfds);
/* A message with a correct header around body. Returns its length. */
size_t build(uint8_t *buf, size_t cap, uint16_t op, uint32_t req, int32_t status,
             const void *body, size_t blen);
void raw_send(int fd, const void *msg, size_t len);
void send_req(int fd, uint16_t op, uint32_t req, const void *body, size_t blen);
/* Receive one reply (closing any descriptors it carries) and parse it. */
void recv_reply(int fd, reply *r);
/* The next reply must be an error for (op, req) with code and, unless text
 * is NULL, a message containing text. */
void expect_error(int fd, uint16_t op, uint32_t req, int code, const char *text);
/* The daemon must close the connection: after any replies already read,
 * the next receive sees end of file (or a reset), not a timeout. */
void expect_closed(int fd);
/* HELLO on fd; the reply must be a success naming the worker wpid. */
void raw_hello(int fd, uint32_t req);
/* raw_connect() and HELLO. */
int raw_open(void);
/* A STATS request on fd gets a well-formed, successful reply. */
void expect_stats_ok(int fd, uint32_t req);
/* RESOLVE <model>/1/<tensor> over a raw connection; returns the record. */
void raw_resolve(int fd, const char *model, const char *tensor, ec_proto_tensor *t);
/* FAULT of one partition (no reply read). */
void send_fault(int fd, uint32_t req, uint32_t tensor, uint32_t part);

/* ---- statistics and the well-behaved client ---- */
/* One of the daemon's statistics, through `good`. */
uint64_t get_stat(const char *name);
/* Wait (up to 5 s) until the daemon counts `want` connected clients. */
void wait_clients(uint64_t want);
/* Gather n (<= 64) random rows below rows_max, among them the first and the
 * last, and compare them with ect_fill(seed). */
void robust_gather_check(ec_tensor *t, uint32_t dim, uint64_t seed, uint64_t rows_max,
                         size_t n);
/* The daemon is alive, the long-lived client still gathers correct bytes,
 * and a brand-new client can connect, resolve and gather. */
void daemon_still_serves(void);

/* ---- cmocka group set-up ---- */
/* Start the daemon, import robust/1/emb (small, alias "current") and
 * big/1/big, resolve both, and check the daemon serves. */
int group_setup(void **state);
/* Stop the daemon (it must exit 0), check its log, remove root.
 * ECT_VERBOSE=1 prints the log. */
int group_teardown(void **state);

#endif
