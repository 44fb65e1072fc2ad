/*
 * rcluster.h - a small Redis Cluster client: the remote tier's transport.
 *
 * Owns, per handle, the cluster's slot map (slot -> master "host:port",
 * from CLUSTER SLOTS), one TCP connection per master (opened lazily, closed
 * when the node leaves the map) and the redirect rules of the Redis Cluster
 * specification: MOVED (the map changed: update it, retry at the new owner,
 * refresh the whole map soon), ASK (a slot half-way through a migration:
 * ASKING + the command at the target, no map update), TRYAGAIN, CLUSTERDOWN
 * and lost connections (refresh the map, back off, retry within the call's
 * time and attempt budget). hiredis (0.14) provides the RESP parser; the
 * sockets, the pipelining and the cluster logic are ours, because hiredis
 * 0.14 has no cluster client and its blocking context can neither interleave
 * several nodes nor send a value without copying it into its buffer.
 *
 * Callers: `embcache publish/pull` and the daemon's remote reads and result
 * leases (later work), bench/rclusterbench.c, tests/unit/test_rcluster.c.
 *
 * Threads: a handle is NOT thread-safe. One thread uses it at a time (the
 * daemon opens one per thread); different handles are independent. Every
 * call is synchronous and bounded by the handle's op_timeout_ms. Errors are
 * recorded in the calling thread's message (common/err.h).
 *
 * Keys may hold any bytes. Values up to opts.max_value_bytes (512 MiB, the
 * Redis limit, at most). Reads go to masters only (no READONLY replica
 * reads). With a password (opts.auth, or the process's default for its
 * cluster, ec_rcluster_set_default_auth), every connection starts with AUTH; a
 * refusal fails the keys under way with EC_EPERM, not retried. No TLS: the
 * traffic, credentials included, is in clear; keep the cluster on a trusted
 * network.
 * Node names (not addresses) are resolved with getaddrinfo(), which blocks,
 * once per node: give addresses where a stalled resolver would matter.
 */
#ifndef EC_CORE_RCLUSTER_H
#define EC_CORE_RCLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "embcache.h"

#define EC_RCLUSTER_SLOTS 16384
/* A host name or address, without brackets, plus its NUL. */
#define EC_RCLUSTER_HOST_MAX 256
/* Seeds in one address list. */
#define EC_RCLUSTER_MAX_SEEDS 64
/* Distinct nodes a handle will track (a reply naming more is refused). */
#define EC_RCLUSTER_MAX_NODES 1024
/* Longest key; longer keys are refused (EC_EINVAL). */
#define EC_RCLUSTER_MAX_KEY (64 * 1024)
/* Most keys in one multi-key call. */
#define EC_RCLUSTER_MAX_KEYS (1u << 24)
/* The URL scheme of the daemon's flag. */
#define EC_RCLUSTER_URL_SCHEME "redis-cluster://"

typedef struct ec_rcluster ec_rcluster;

/* A user name or password, plus its NUL. */
#define EC_RCLUSTER_AUTH_MAX 256

/** Credentials for AUTH: password "" means none; user "" means the
 *  password alone (AUTH password: Redis's requirepass, or the default user). */
typedef struct ec_rcluster_auth {
    char user[EC_RCLUSTER_AUTH_MAX];
    char password[EC_RCLUSTER_AUTH_MAX];
} ec_rcluster_auth;

/** Tuning; every field 0 means its default. */
typedef struct ec_rcluster_opts {
    uint32_t connect_timeout_ms;  /**< per TCP connect (default 1000) */
    uint32_t io_timeout_ms;       /**< a node that owes replies and sends nothing for this
                                       long is dropped (default 2000) */
    uint32_t op_timeout_ms;       /**< the most one call takes, retries included
                                       (default 5000) */
    uint32_t max_attempts;        /**< sends of one key in one call, redirects included
                                       (default 16) */
    uint32_t refresh_interval_ms; /**< at most one map refresh per interval (default 100) */
    uint32_t backoff_min_ms;      /**< first wait before a retry (default 5), doubling */
    uint32_t backoff_max_ms;      /**< longest wait (default 200) */
    uint64_t max_value_bytes;     /**< longest value sent or accepted (default 64 MiB,
                                       at most 512 MiB); a longer reply is refused before
                                       it is buffered */
    ec_rcluster_auth auth;        /**< none: the process default, if any */
} ec_rcluster_opts;

/** Counters since open; never reset. */
typedef struct ec_rcluster_stats {
    uint64_t commands;          /**< commands sent (ASKING included) */
    uint64_t bytes_out;         /**< bytes written to nodes */
    uint64_t bytes_in;          /**< bytes read from nodes */
    uint64_t moved;             /**< MOVED redirects followed */
    uint64_t ask;               /**< ASK redirects followed */
    uint64_t retries;           /**< sends of a key after its first */
    uint64_t refreshes;         /**< slot maps installed (open's included) */
    uint64_t refresh_failures;  /**< refreshes that found no node able to answer */
    uint64_t connects;          /**< TCP connections established */
    uint64_t connect_failures;  /**< connects that failed or timed out */
    uint64_t errors;            /**< keys finished with an error status */
} ec_rcluster_stats;

/** One "host:port" of a seed list. */
typedef struct ec_rcluster_addr {
    char host[EC_RCLUSTER_HOST_MAX]; /**< no brackets, even for IPv6 */
    uint16_t port;
} ec_rcluster_addr;

/** Options of a SET. */
typedef struct ec_rcluster_set_opts {
    uint64_t ttl_ms; /**< PX ttl_ms; 0: no expiry. At most 2^53. */
    bool nx;         /**< NX: only when the key does not exist */
} ec_rcluster_set_opts;

/**
 * The outcome of key i of a multi-key call; called exactly once per key, in
 * no particular order, from inside the call (it must not use the handle).
 *
 * @param arg     the call's arg.
 * @param i       index of the key in the call's arrays.
 * @param status  0: done (GET: val/len hold the value; SET: stored; DEL:
 *                deleted). EC_ENOENT: GET or DEL of a key that does not
 *                exist. EC_EEXIST: SET NX of a key that exists. Otherwise an
 *                error: EC_ECONN (the node serving the key cannot be
 *                reached), EC_ETIMEOUT (op_timeout_ms ran out), EC_EBUSY (the
 *                cluster kept answering CLUSTERDOWN/TRYAGAIN/LOADING),
 *                EC_EPROTO (a malformed reply, or redirects that never
 *                settle), EC_ETOOBIG (a value over max_value_bytes), EC_EIO
 *                (the node refused the command: its message is quoted),
 *                EC_EPERM (the node wants credentials we lack, or refused
 *                ours: NOAUTH, WRONGPASS), EC_ENOMEM.
 * @param val     GET's value (may be NULL when len is 0); valid only during
 *                the call, so copy it to where it belongs: that copy is the
 *                only one after the socket's.
 * @param len     its length.
 * @param msg     NULL when status is 0, EC_ENOENT or EC_EEXIST; otherwise a
 *                message naming the key, the node and what to do; valid only
 *                during the call.
 */
typedef void (*ec_rcluster_fn)(void *arg, size_t i, int status, const void *val, size_t len,
                               const char *msg);

/**
 * CRC16 of the Redis Cluster specification (XMODEM: polynomial 0x1021,
 * initial value 0, no reflection): "123456789" gives 0x31C3.
 */
uint16_t ec_rcluster_crc16(const void *buf, size_t len);

/**
 * The hash slot of a key: CRC16 mod 16384 of the key, or of its hash tag:
 * the bytes between the first '{' and the first '}' after it, when there
 * are any ("{user1}.a" and "{user1}.b" share a slot; "a{}{b}" hashes whole).
 */
uint16_t ec_rcluster_keyslot(const void *key, size_t len);

/**
 * Parse a seed list, "host:port[,host:port...]", or the same after
 * "redis-cluster://" (with an optional trailing '/'). An IPv6 host is
 * bracketed: "[::1]:7000". No spaces, no user or password.
 *
 * @param[in]  spec  the text.
 * @param[out] out   room for cap addresses.
 * @param[in]  cap   its size (1 .. EC_RCLUSTER_MAX_SEEDS).
 * @param[out] n     the number parsed (>= 1), written only on success.
 * @return 0, or EC_EINVAL (the message names the bad entry and the form).
 */
int ec_rcluster_parse_seeds(const char *spec, ec_rcluster_addr *out, size_t cap, size_t *n);

/**
 * Open a handle: parse the seeds and load the slot map from the first seed
 * that answers CLUSTER SLOTS with a valid map.
 *
 * @param[in]  url_or_seeds  see ec_rcluster_parse_seeds().
 * @param[in]  o             options, or NULL for the defaults.
 * @param[out] out           the handle, written only on success; release it
 *                           with ec_rcluster_close().
 * @return 0, or EC_EINVAL (bad seeds or options), EC_ENOMEM, EC_ECONN (no
 *         seed answered: the message lists each seed's failure), EC_EPROTO
 *         (a seed answered with something that is not a valid slot map),
 *         EC_EPERM (the seeds want credentials we lack, or refused ours).
 */
int ec_rcluster_open(const char *url_or_seeds, const ec_rcluster_opts *o, ec_rcluster **out);

/**
 * Read credentials from a file: its first line is "PASSWORD" or "USER
 * PASSWORD" (no spaces inside either; a trailing CR is ignored). The file
 * must be a regular file of at most 4 KiB, owned by this process's user or
 * root, and neither readable nor writable by group or others.
 *
 * @return 0, or EC_EINVAL (not that form: the message says what is wrong,
 *         never the password), EC_EPERM (mode or owner), EC_EIO.
 */
int ec_rcluster_auth_load(const char *path, ec_rcluster_auth *out);

/**
 * The credentials of every ec_rcluster_open of exactly this url (the
 * daemon's --remote and --remote-auth-file) whose opts carry none. Another
 * url gets none: a client that names another cluster to publish to or pull
 * from cannot have the daemon's password sent there. May be called again
 * at any time, from any thread (a reload with a rotated password): handles
 * that took the default, open ones included, use the new credentials for
 * every connection they make from then on; connections already
 * authenticated stay. NULL clears them.
 */
void ec_rcluster_set_default_auth(const char *url, const ec_rcluster_auth *a);

/** Close every connection and free the handle. NULL is a no-op. */
void ec_rcluster_close(ec_rcluster *c);

/**
 * GET n keys: grouped by node, each node's GETs pipelined, every node sent
 * its share before any reply is read, so that the nodes work concurrently.
 * Redirects and failures are retried as the file comment says, bounded by
 * op_timeout_ms and max_attempts.
 *
 * @param c         the handle.
 * @param keys      n keys.
 * @param key_lens  their lengths, or NULL for strlen(keys[i]).
 * @param n         number of keys (0 .. EC_RCLUSTER_MAX_KEYS; 0 does nothing).
 * @param fn        called once per key with its outcome (see ec_rcluster_fn).
 * @param arg       passed to fn.
 * @return 0 when every key ended as a value or absent; EC_EINVAL or
 *         EC_ENOMEM before any work (fn never called); otherwise the status
 *         of the first key that failed, with a message counting the
 *         failures and quoting the first (fn was called for every key).
 */
int ec_rcluster_mget(ec_rcluster *c, const char *const *keys, const size_t *key_lens, size_t n,
                     ec_rcluster_fn fn, void *arg);

/**
 * ec_rcluster_mget() that may land values straight in the caller's memory:
 * a value of key i exactly dest_lens[i] bytes long is written to dests[i]
 * (when it is long enough to bypass the RESP parser: 64 KiB or more)
 * instead of being copied there by fn; fn is then called with val ==
 * dests[i]. Either way fn is called as for ec_rcluster_mget() and decides
 * (dests[i] may hold bytes of a failed attempt when fn reports an error).
 *
 * @param dests      n destinations (an entry may be NULL), or NULL.
 * @param dest_lens  their sizes.
 * @return as ec_rcluster_mget().
 */
int ec_rcluster_mget_into(ec_rcluster *c, const char *const *keys, const size_t *key_lens,
                          size_t n, void *const *dests, const size_t *dest_lens,
                          ec_rcluster_fn fn, void *arg);

/**
 * SET n keys to n values (SET key value [PX ttl] [NX]), pipelined and
 * redirected as ec_rcluster_mget(). The values are sent from the caller's
 * buffers, not copied. A SET retried after a lost connection may have been
 * applied the first time: with NX it then reports EC_EEXIST for our own
 * write (a caller writing a unique token should GET to tell).
 *
 * @param vals      n values; vals[i] may be NULL when val_lens[i] is 0.
 * @param val_lens  their lengths (each at most max_value_bytes, else that
 *                  key fails with EC_ETOOBIG).
 * @param so        options for every key, or NULL (no expiry, no NX).
 * @param fn        may be NULL when the return code is all the caller needs.
 * @return as ec_rcluster_mget(); EC_EEXIST from NX is not a failure.
 */
int ec_rcluster_mset(ec_rcluster *c, const char *const *keys, const size_t *key_lens,
                     const void *const *vals, const size_t *val_lens, size_t n,
                     const ec_rcluster_set_opts *so, ec_rcluster_fn fn, void *arg);

/**
 * DEL n keys, one DEL per key (keys of one call may live on different
 * nodes). fn gets 0 (deleted) or EC_ENOENT (there was no such key; also
 * after a retry of a DEL whose first reply was lost) or an error.
 * @return as ec_rcluster_mget().
 */
int ec_rcluster_mdel(ec_rcluster *c, const char *const *keys, const size_t *key_lens, size_t n,
                     ec_rcluster_fn fn, void *arg);

/**
 * GET one key into a malloc'd buffer.
 * @param[out] val  the value (free() it; NUL-terminated, for convenience,
 *                  at val[len]), written only when 0 is returned.
 * @param[out] len  its length.
 * @return 0, EC_ENOENT (no such key), or an error of ec_rcluster_fn, or
 *         EC_EINVAL, EC_ENOMEM.
 */
int ec_rcluster_get(ec_rcluster *c, const void *key, size_t key_len, void **val, size_t *len);

/**
 * SET one key.
 * @return 0 (stored), EC_EEXIST (so->nx and the key exists), or an error of
 *         ec_rcluster_fn, or EC_EINVAL, EC_ENOMEM.
 */
int ec_rcluster_set(ec_rcluster *c, const void *key, size_t key_len, const void *val,
                    size_t val_len, const ec_rcluster_set_opts *so);

/** DEL one key. @return 0 (deleted), EC_ENOENT, or an error as ec_rcluster_get(). */
int ec_rcluster_del(ec_rcluster *c, const void *key, size_t key_len);

/**
 * Delete a key only while it holds `expect` (a lease release), without EVAL:
 * WATCH key, GET key, compare, then MULTI DEL EXEC on the key's master
 * (one connection, so the WATCH holds). Redirects are followed; during a
 * migration of the key's slot (ASK) it waits and retries.
 *
 * @return 0 (deleted), EC_ENOENT (no such key; also when a connection
 *         lost during EXEC had in fact deleted it), EC_EBUSY (the key holds
 *         another value, or changed between GET and EXEC), or an error as
 *         ec_rcluster_get().
 */
int ec_rcluster_del_if_equal(ec_rcluster *c, const void *key, size_t key_len,
                             const void *expect, size_t expect_len);

/**
 * Reload the slot map now, ignoring refresh_interval_ms.
 * @return 0, or EC_ECONN / EC_EPROTO as ec_rcluster_open().
 */
int ec_rcluster_refresh(ec_rcluster *c);

/**
 * Which master the handle's map names for slot: "host:port" into buf.
 * @return 0, EC_ENOENT (no node serves it), EC_EINVAL (slot >= 16384, or buf
 *         too small).
 */
int ec_rcluster_slot_node(const ec_rcluster *c, unsigned slot, char *buf, size_t len);

/** Copy the handle's counters. */
void ec_rcluster_stats_get(const ec_rcluster *c, ec_rcluster_stats *out);

#endif
