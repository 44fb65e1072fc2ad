/*
 * daemon_config.c - embcached's options (see daemon_config.h): the table,
 * the command line, the configuration file, the usage text, and SIGHUP's
 * re-reading of both.
 *
 * Every option is one row of `opts` and one case in each of set_opt()
 * (check a value and store it: the same code and message for a flag and a
 * key), show_opt() (the value as text: what a reload compares and logs)
 * and, for those that may change at run time, take_opt(). Run by
 * embcached's main (the keeper, before it forks) and by the worker's server
 * thread on SIGHUP; keeps no state of its own.
 */
#include "core/daemon_config.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/units.h"
#include "core/rcluster.h"

enum {
    O_DATA_DIR, O_SOCKET, O_SHM_SIZE, O_BUDGET, O_TTL, O_TTL_JITTER, O_RATE_WINDOW, O_PAGER,
    O_QUEUE_DEPTH, O_GPU_SLAB, O_ITEM_BYTES, O_RESULT_ARENA, O_WAL_SYNC, O_WAL_SYNC_MS,
    O_METRICS_LISTEN, O_REMOTE, O_REMOTE_AUTH_FILE, O_REMOTE_THREADS, O_REMOTE_KEEP,
    O_REMOTE_KEEP_RESERVE, O_REMOTE_KEEP_MAX,
    O_EPOCH_HOLD, O_PIN_LEASE, O_IO_THREADS, O_ALLOW_UID, O_ALLOW_ANY,
    O_ADMIN_UID, O_MAX_CLIENTS, O_MAX_CLIENTS_PER_UID, O_NO_KEEPER, O_DROP_SEGMENT,
    O_LOG_LEVEL, O_VERBOSE, O_QUIET, O_CONFIG, O_CHECK, O_HELP, O_VERSION, O_N
};
static_assert(O_N == EC_DCONF_NOPTS, "EC_DCONF_NOPTS must count the options");

#define F_RUNTIME 1u /* SIGHUP applies it */
#define F_REPEAT 2u  /* may be given more than once; values add up */
#define F_CMDLINE 4u /* the command line only, not a key of the file */

static const struct opt {
    const char *name;
    int shortopt;     /* 0: none */
    const char *arg;  /* in the usage text; NULL: no argument (a key takes a boolean) */
    unsigned flags;
    const char *help; /* lines after the first are indented under it */
} opts[O_N] = {
    [O_DATA_DIR] = {"data-dir", 'd', "DIR", 0,
                    "catalog and partition files; must not be writable\n"
                    "by other users\n"
                    "(default: $EMBCACHE_DATA_DIR, else ./embcache-data)"},
    [O_SOCKET] = {"socket", 's', "PATH", 0,
                  "control socket (default: $EMBCACHE_SOCKET, else\n"
                  "/run/embcache/embcached.sock as root,\n"
                  "$XDG_RUNTIME_DIR/embcache.sock or\n"
                  "/tmp/embcache-UID/embcached.sock)"},
    [O_SHM_SIZE] = {"shm-size", 'm', "BYTES", 0,
                    "shared segment size; suffixes K, M, G (default 1G)"},
    [O_BUDGET] = {"budget", 'b', "BYTES", F_RUNTIME,
                  "memory budget of the host tier: evict past it\n"
                  "(default: the whole segment)"},
    [O_TTL] = {"ttl", 0, "SECONDS", F_RUNTIME,
               "evict a partition this long after it was loaded\n"
               "(default 0: never)"},
    [O_TTL_JITTER] = {"ttl-jitter", 0, "PCT", F_RUNTIME, "spread TTLs by +-PCT% (default 10)"},
    [O_RATE_WINDOW] = {"rate-window", 0, "SECONDS", F_RUNTIME,
                       "window over which models' request rates are\n"
                       "measured for their idle policy (default 60)"},
    [O_PAGER] = {"pager", 0, "KIND", 0,
                 "auto, io_uring or pread (default auto: io_uring\n"
                 "when the kernel allows it)"},
    [O_QUEUE_DEPTH] = {"queue-depth", 0, "N", 0, "io_uring reads in flight (default 64)"},
    [O_GPU_SLAB] = {"gpu-slab", 0, "BYTES", 0,
                    "device tier: a slab on each GPU holds copies of hot\n"
                    "partitions (default: 1/16 of the GPU's memory; 0\n"
                    "turns the tier off). Never more than the segment's\n"
                    "data area, nor than the GPU's free memory less\n"
                    "max(1G, 1/16 of the GPU), kept for the framework;\n"
                    "the log says what each GPU got and why"},
    [O_ITEM_BYTES] = {"item-bytes", 0, "BYTES", 0,
                      "size the item index of a new segment for rows of\n"
                      "this many bytes on average (default 512; rows\n"
                      "cached by rows cost about 20 bytes of index each);\n"
                      "0: no item index, every tensor cached by partitions"},
    [O_RESULT_ARENA] = {"result-arena", 0, "BYTES", 0,
                        "memory of each uid's private result namespaces\n"
                        "(default 64M; shared namespaces use the budget)"},
    [O_WAL_SYNC] = {"wal-sync", 0, "MODE", F_RUNTIME,
                    "when dynamic tables' updates are made durable:\n"
                    "batch (default: fdatasync before each update is\n"
                    "acknowledged), interval (every --wal-sync-ms; a\n"
                    "machine crash may lose that much), none"},
    [O_WAL_SYNC_MS] = {"wal-sync-ms", 0, "MS", F_RUNTIME,
                       "the interval's period (default 100)"},
    [O_METRICS_LISTEN] = {"metrics-listen", 0, "[ADDR:]PORT", 0,
                          "serve Prometheus metrics (GET /metrics)\n"
                          "and GET /healthz over HTTP on this IPv4 address\n"
                          "(default 127.0.0.1) and port; unauthenticated:\n"
                          "keep it on loopback or a trusted network\n"
                          "(default: off)"},
    [O_REMOTE] = {"remote", 0, "URL", 0,
                  "the remote tier's Redis Cluster,\n"
                  "redis-cluster://host:port[,host:port...]:\n"
                  "`embcache publish` and `pull` use it when they\n"
                  "name no cluster, and versions pulled with --lazy\n"
                  "are read from it (default: none)"},
    [O_REMOTE_AUTH_FILE] = {"remote-auth-file", 0, "PATH", F_RUNTIME,
                            "the Redis Cluster's credentials: a file whose\n"
                            "first line is PASSWORD or USER PASSWORD, mode 600,\n"
                            "owned by the daemon's user or root; every\n"
                            "connection to the cluster starts with AUTH;\n"
                            "SIGHUP reads it again, for new connections\n"
                            "(default: none)"},
    [O_REMOTE_THREADS] = {"remote-threads", 0, "N", 0,
                          "threads reading from the remote tier, each with\n"
                          "its own connections (default 4)"},
    [O_REMOTE_KEEP] = {"remote-keep", 0, "BOOL", F_RUNTIME,
                       "write what is read from the remote tier into the\n"
                       "partition files, so it is read locally next time\n"
                       "(default true)"},
    [O_REMOTE_KEEP_RESERVE] = {"remote-keep-reserve", 0, "BYTES", F_RUNTIME,
                               "keep nothing more once the data directory's file\n"
                               "system would have less than this free, and remove\n"
                               "the coldest kept partitions (they are still on the\n"
                               "cluster) when it has less than this and a margin\n"
                               "(default 1G)"},
    [O_REMOTE_KEEP_MAX] = {"remote-keep-max", 0, "BYTES", F_RUNTIME,
                           "bytes the partitions kept from the remote tier may\n"
                           "take; past them the coldest are removed again\n"
                           "(default 0: no bound but remote-keep-reserve)"},
    [O_EPOCH_HOLD] = {"epoch-hold", 0, "SECONDS", F_RUNTIME,
                      "disconnect a client whose GPU gather holds freed\n"
                      "memory back longer than this (default 30)"},
    [O_PIN_LEASE] = {"pin-lease", 0, "SECONDS", F_RUNTIME,
                     "a client stopped (SIGSTOP, a debugger) this long\n"
                     "while it holds views loses them and is disconnected;\n"
                     "its ec_view_check() then says so (default 60;\n"
                     "0: views are kept however long the client is stopped)"},
    [O_IO_THREADS] = {"io-threads", 'j', "N", 0, "pread reader threads (default 2)"},
    [O_ALLOW_UID] = {"allow-uid", 0, "UID", F_RUNTIME | F_REPEAT,
                     "also accept clients of this uid, to read (repeatable)"},
    [O_ALLOW_ANY] = {"allow-any", 0, NULL, F_RUNTIME,
                     "accept clients of every local user (to read)"},
    [O_ADMIN_UID] = {"admin-uid", 0, "UID", F_RUNTIME | F_REPEAT,
                     "also let this uid administer: import, alias, prewarm,\n"
                     "evict, retire, refresh, policy, mode, upgrade\n"
                     "(repeatable; root and the daemon's uid always may)"},
    [O_MAX_CLIENTS] = {"max-clients", 0, "N", F_RUNTIME, "connections at once (default 1024)"},
    [O_MAX_CLIENTS_PER_UID] = {"max-clients-per-uid", 0, "N", F_RUNTIME,
                               "connections of one uid at once (default: a\n"
                               "quarter of --max-clients)"},
    [O_NO_KEEPER] = {"no-keeper", 0, NULL, 0,
                     "one process, no keeper: a crash loses the segment"},
    [O_DROP_SEGMENT] = {"drop-segment", 0, NULL, 0,
                        "no effect (the segment always goes when the daemon\n"
                        "stops); accepted for old scripts"},
    [O_LOG_LEVEL] = {"log-level", 0, "LEVEL", F_RUNTIME,
                     "error, warn, info or debug (default info)"},
    [O_VERBOSE] = {"verbose", 'v', NULL, F_CMDLINE,
                   "log more (repeat for debug; in a file: log-level)"},
    [O_QUIET] = {"quiet", 'q', NULL, F_CMDLINE, "log errors only"},
    [O_CONFIG] = {"config", 0, "FILE", F_CMDLINE,
                  "read options from FILE ('none': no file; default:\n"
                  "$EMBCACHE_CONFIG, else " EC_DCONF_DEFAULT_FILE "\n"
                  "when it exists); the command line wins"},
    [O_CHECK] = {"check", 0, NULL, F_CMDLINE,
                 "check the configuration and this machine (memory\n"
                 "for the segment, io_uring, huge pages, GPUs, limits),\n"
                 "print a report and exit: 0 ok, 1 a check failed"},
    [O_HELP] = {"help", 'h', NULL, F_CMDLINE, "show this help"},
    [O_VERSION] = {"version", 'V', NULL, F_CMDLINE, "show the version"},
};

static const char *const log_levels[] = {"error", "warn", "info", "debug"};
const char *const ec_dconf_subdirs[2] = {"parts", "hot"};

/* ------------------------------------------------------------------ */
/* Values                                                              */

__attribute__((format(printf, 3, 4))) static int bad(char *msg, size_t cap, const char *fmt,
                                                     ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
    return -1;
}

/* A whole decimal integer in [lo, hi]. */
static bool long_in(const char *v, long lo, long hi, long *out)
{
    char *end;
    long n;

    errno = 0;
    n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < lo || n > hi)
        return false;
    *out = n;
    return true;
}

static bool num_in(const char *v, double lo, double hi, double *out)
{
    char *end;
    double d = strtod(v, &end);

    if (end == v || *end || !(d >= lo && d <= hi))
        return false;
    *out = d;
    return true;
}

/* true/false/yes/no/1/0; NULL (a flag on the command line) is true. */
static int parse_bool(const char *v, bool *out)
{
    static const char *const t[] = {"true", "yes", "1"}, *const f[] = {"false", "no", "0"};

    if (!v) {
        *out = true;
        return 0;
    }
    for (int i = 0; i < 3; i++) {
        if (!strcasecmp(v, t[i]) || !strcasecmp(v, f[i])) {
            *out = !strcasecmp(v, t[i]);
            return 0;
        }
    }
    return -1;
}

static int add_uid(uid_t *list, size_t *n, const char *v, const char *name, char *msg,
                   size_t cap)
{
    long uid;

    if (!long_in(v, 0, (long)UINT32_MAX - 1, &uid) || *n == EC_SERVER_MAX_ALLOW) {
        snprintf(msg, cap, "'%s' must be a uid (at most %d %s)", v, EC_SERVER_MAX_ALLOW, name);
        return -1;
    }
    for (size_t i = 0; i < *n; i++)
        if (list[i] == (uid_t)uid)
            return 0;
    list[(*n)++] = (uid_t)uid;
    return 0;
}

/* Check v and store it as option id's value. -1 with msg ("'V' is not ...":
 * the caller says where it came from) when it is not a valid value. */
static int set_opt(ec_dconf *c, int id, const char *v, char *msg, size_t cap)
{
    ec_server_config *s = &c->srv;
    uint64_t z;
    long n;
    double d;
    bool b;

    switch (id) {
    case O_DATA_DIR:
    case O_SOCKET: {
        char *dst = id == O_DATA_DIR ? c->data_dir : c->socket;
        size_t max = id == O_DATA_DIR ? sizeof(c->data_dir) : sizeof(c->socket);
        if (!*v || strlen(v) >= max) {
            snprintf(msg, cap, "'%s' must be a path of 1..%zu bytes", v, max - 1);
            return -1;
        }
        memcpy(dst, v, strlen(v) + 1);
        return 0;
    }
    case O_SHM_SIZE:
        if (ec_parse_size(v, &z))
            return bad(msg, cap, "'%s' is not a size (e.g. 268435456, 256M, 4G)", v);
        if (z < (4u << 20))
            return bad(msg, cap, "'%s': the segment must be at least 4M", v);
        s->shm_size = (z + 4095) / 4096 * 4096;
        return 0;
    case O_BUDGET:
        if (ec_parse_size(v, &z) || z == 0)
            return bad(msg, cap, "'%s' is not a size (e.g. 512M, 8G)", v);
        s->budget = z;
        return 0;
    case O_TTL:
        if (!num_in(v, 0, 1e12, &d))
            return bad(msg, cap, "'%s' must be a number >= 0 (seconds)", v);
        s->ttl_seconds = d;
        return 0;
    case O_TTL_JITTER:
        if (!num_in(v, 0, 100, &d))
            return bad(msg, cap, "'%s' must be a number from 0 to 100 (percent)", v);
        s->ttl_jitter = d / 100.0;
        return 0;
    case O_RATE_WINDOW:
        if (!num_in(v, 0.1, 86400, &d))
            return bad(msg, cap, "'%s' must be 0.1..86400 seconds", v);
        s->rate_window = d;
        return 0;
    case O_PAGER:
        for (int i = 0; i < 3; i++)
            if (!strcmp(v, (const char *const[]){"auto", "io_uring", "pread"}[i])) {
                s->pager = i;
                return 0;
            }
        return bad(msg, cap, "'%s': use auto, io_uring or pread", v);
    case O_QUEUE_DEPTH:
        if (!long_in(v, 1, 4096, &n))
            return bad(msg, cap, "'%s' must be 1..4096", v);
        s->queue_depth = (unsigned)n;
        return 0;
    case O_GPU_SLAB:
        if (ec_parse_size(v, &z))
            return bad(msg, cap, "'%s' is not a size (e.g. 0, 512M, 8G)", v);
        s->gpu_slab = z;
        return 0;
    case O_ITEM_BYTES:
        if (ec_parse_size(v, &z) || z > (1u << 20))
            return bad(msg, cap, "'%s' must be 0..1M bytes (e.g. 512)", v);
        s->item_bytes = z ? z : UINT64_MAX;
        return 0;
    case O_RESULT_ARENA:
        if (ec_parse_size(v, &z) || z < (4u << 20) || z > (1ull << 40))
            return bad(msg, cap, "'%s' must be a size of 4M..1T (e.g. 64M)", v);
        s->result_arena = z;
        return 0;
    case O_WAL_SYNC:
        for (int i = 0; i < 3; i++)
            if (!strcmp(v, (const char *const[]){"batch", "interval", "none"}[i])) {
                s->wal_sync = i;
                return 0;
            }
        return bad(msg, cap, "'%s' must be batch, interval or none", v);
    case O_WAL_SYNC_MS:
        if (!long_in(v, 1, 60000, &n))
            return bad(msg, cap, "'%s' must be 1..60000", v);
        s->wal_sync_ms = (unsigned)n;
        return 0;
    case O_METRICS_LISTEN: {
        /* [ADDR:]PORT; a bare PORT listens on loopback only. */
        const char *colon = strrchr(v, ':'), *port = colon ? colon + 1 : v;
        size_t alen = colon ? (size_t)(colon - v) : 0;
        char addr[sizeof(s->metrics_addr)];
        struct in_addr ia;
        if (!long_in(port, 1, 65535, &n) || alen >= sizeof(addr) || (colon && alen == 0))
            return bad(msg, cap, "'%s' must be [ADDR:]PORT, PORT 1..65535, ADDR an IPv4 "
                                 "address (e.g. 9464 or 0.0.0.0:9464)", v);
        snprintf(addr, sizeof(addr), "%.*s", colon ? (int)alen : 9, colon ? v : "127.0.0.1");
        if (inet_pton(AF_INET, addr, &ia) != 1) {
            snprintf(msg, cap, "'%s': '%s' is not an IPv4 address (e.g. 127.0.0.1)", v, addr);
            return -1;
        }
        memcpy(s->metrics_addr, addr, sizeof(addr));
        s->metrics_port = (unsigned)n;
        return 0;
    }
    case O_REMOTE: {
        ec_rcluster_addr seeds[EC_RCLUSTER_MAX_SEEDS];
        size_t ns = 0;
        if (strlen(v) >= sizeof(s->remote) ||
            ec_rcluster_parse_seeds(v, seeds, EC_RCLUSTER_MAX_SEEDS, &ns) < 0)
            return bad(msg, cap, "'%s' is not a cluster address: %s (e.g. "
                                 "redis-cluster://10.0.0.5:7000,10.0.0.6:7000)",
                       v, strlen(v) >= sizeof(s->remote) ? "too long" : ec_last_error());
        snprintf(s->remote, sizeof(s->remote), "%s", v);
        return 0;
    }
    case O_REMOTE_AUTH_FILE: {
        ec_rcluster_auth a;
        if (strlen(v) >= sizeof(s->remote_auth_file))
            return bad(msg, cap, "'%s' is too long", v);
        if (ec_rcluster_auth_load(v, &a) < 0)
            return bad(msg, cap, "%s", ec_last_error());
        explicit_bzero(&a, sizeof(a));
        snprintf(s->remote_auth_file, sizeof(s->remote_auth_file), "%s", v);
        return 0;
    }
    case O_REMOTE_THREADS:
        if (!long_in(v, 1, 64, &n))
            return bad(msg, cap, "'%s' must be 1..64", v);
        s->remote_threads = (unsigned)n;
        return 0;
    case O_REMOTE_KEEP:
        if (parse_bool(v, &b) < 0)
            return bad(msg, cap, "'%s' is not true/false/yes/no/1/0", v);
        s->remote_no_keep = !b;
        return 0;
    case O_REMOTE_KEEP_RESERVE:
        if (ec_parse_size(v, &z))
            return bad(msg, cap, "'%s' is not a size (e.g. 0, 512M, 8G)", v);
        s->remote_keep_reserve = z;
        return 0;
    case O_REMOTE_KEEP_MAX:
        if (ec_parse_size(v, &z))
            return bad(msg, cap, "'%s' is not a size (e.g. 0, 512M, 8G)", v);
        s->remote_keep_max = z;
        return 0;
    case O_EPOCH_HOLD:
        if (!long_in(v, 1, 86400, &n))
            return bad(msg, cap, "'%s' must be 1..86400 seconds", v);
        s->epoch_hold_max = n;
        return 0;
    case O_PIN_LEASE:
        if (!long_in(v, 0, 86400L * 365, &n))
            return bad(msg, cap, "'%s' must be 0..31536000 seconds (0: never)", v);
        s->pin_lease = n;
        return 0;
    case O_IO_THREADS:
        if (!long_in(v, 1, 64, &n))
            return bad(msg, cap, "'%s' must be 1..64", v);
        s->io_threads = (unsigned)n;
        return 0;
    case O_ALLOW_UID:
        return add_uid(s->allow_uids, &s->n_allow_uids, v, "allow-uid", msg, cap);
    case O_ADMIN_UID:
        return add_uid(s->admin_uids, &s->n_admin_uids, v, "admin-uid", msg, cap);
    case O_MAX_CLIENTS:
    case O_MAX_CLIENTS_PER_UID:
        if (!long_in(v, 1, 65536, &n))
            return bad(msg, cap, "'%s' must be 1..65536", v);
        *(id == O_MAX_CLIENTS ? &s->max_clients : &s->max_clients_per_uid) = (unsigned)n;
        return 0;
    case O_ALLOW_ANY:
    case O_NO_KEEPER:
    case O_DROP_SEGMENT:
        if (parse_bool(v, &b) < 0)
            return bad(msg, cap, "'%s' is not true/false/yes/no/1/0", v);
        if (id == O_ALLOW_ANY)
            s->allow_any = b;
        else if (id == O_NO_KEEPER)
            c->no_keeper = b;
        return 0;
    case O_LOG_LEVEL:
        for (int i = 0; i < 4; i++)
            if (!strcmp(v, log_levels[i])) {
                c->log_level = i;
                return 0;
            }
        return bad(msg, cap, "'%s' must be error, warn, info or debug", v);
    default:
        snprintf(msg, cap, "is for the command line only");
        return -1;
    }
}

/* b: a byte count with the largest unit that divides it. */
static void fmt_size(uint64_t v, char *b, size_t cap)
{
    static const char units[] = "KMGT";
    int u = -1;

    while (v && u < 3 && v % 1024 == 0) {
        v /= 1024;
        u++;
    }
    if (u < 0)
        snprintf(b, cap, "%llu", (unsigned long long)v);
    else
        snprintf(b, cap, "%llu%c", (unsigned long long)v, units[u]);
}

static void fmt_uids(const uid_t *l, size_t n, char *b, size_t cap)
{
    size_t at = 0;

    snprintf(b, cap, "none");
    for (size_t i = 0; i < n && at < cap; i++)
        at += (size_t)snprintf(b + at, cap - at, "%s%u", i ? "," : "", (unsigned)l[i]);
}

/* The value of option id as text; an unset value shows the default it
 * stands for, so that "unset" and "set to the default" compare equal. */
static void show_opt(const ec_dconf *c, int id, char *b, size_t cap)
{
    const ec_server_config *s = &c->srv;

    switch (id) {
    case O_DATA_DIR: snprintf(b, cap, "%s", *c->data_dir ? c->data_dir : "(default)"); break;
    case O_SOCKET: snprintf(b, cap, "%s", *c->socket ? c->socket : "(default)"); break;
    case O_SHM_SIZE: fmt_size(s->shm_size, b, cap); break;
    case O_BUDGET:
        if (s->budget)
            fmt_size(s->budget, b, cap);
        else
            snprintf(b, cap, "(the segment)");
        break;
    case O_TTL: snprintf(b, cap, "%g", s->ttl_seconds); break;
    case O_TTL_JITTER: snprintf(b, cap, "%g", s->ttl_jitter * 100); break;
    case O_RATE_WINDOW: snprintf(b, cap, "%g", s->rate_window > 0 ? s->rate_window : 60); break;
    case O_PAGER: snprintf(b, cap, "%s", (const char *const[]){"auto", "io_uring", "pread"}[s->pager]); break;
    case O_QUEUE_DEPTH: snprintf(b, cap, "%u", s->queue_depth ? s->queue_depth : 64); break;
    case O_GPU_SLAB:
        if (s->gpu_slab == UINT64_MAX)
            snprintf(b, cap, "(1/16 of each GPU)");
        else
            fmt_size(s->gpu_slab, b, cap);
        break;
    case O_ITEM_BYTES:
        snprintf(b, cap, "%llu", s->item_bytes == UINT64_MAX ? 0ULL
                                 : s->item_bytes ? (unsigned long long)s->item_bytes : 512ULL);
        break;
    case O_RESULT_ARENA: fmt_size(s->result_arena ? s->result_arena : 64u << 20, b, cap); break;
    case O_WAL_SYNC: snprintf(b, cap, "%s", (const char *const[]){"batch", "interval", "none"}[s->wal_sync]); break;
    case O_WAL_SYNC_MS: snprintf(b, cap, "%u", s->wal_sync_ms ? s->wal_sync_ms : 100); break;
    case O_METRICS_LISTEN:
        if (s->metrics_port)
            snprintf(b, cap, "%s:%u", s->metrics_addr, s->metrics_port);
        else
            snprintf(b, cap, "(off)");
        break;
    case O_REMOTE: snprintf(b, cap, "%s", s->remote[0] ? s->remote : "(none)"); break;
    case O_REMOTE_AUTH_FILE:
        snprintf(b, cap, "%s", s->remote_auth_file[0] ? s->remote_auth_file : "(none)");
        break;
    case O_REMOTE_THREADS: snprintf(b, cap, "%u", s->remote_threads ? s->remote_threads : 4); break;
    case O_REMOTE_KEEP: snprintf(b, cap, "%s", s->remote_no_keep ? "false" : "true"); break;
    case O_REMOTE_KEEP_RESERVE: fmt_size(s->remote_keep_reserve, b, cap); break;
    case O_REMOTE_KEEP_MAX: fmt_size(s->remote_keep_max, b, cap); break;
    case O_EPOCH_HOLD: snprintf(b, cap, "%ld", s->epoch_hold_max > 0 ? s->epoch_hold_max : 30); break;
    case O_PIN_LEASE: snprintf(b, cap, "%ld", s->pin_lease); break;
    case O_IO_THREADS: snprintf(b, cap, "%u", s->io_threads ? s->io_threads : 2); break;
    case O_ALLOW_UID: fmt_uids(s->allow_uids, s->n_allow_uids, b, cap); break;
    case O_ADMIN_UID: fmt_uids(s->admin_uids, s->n_admin_uids, b, cap); break;
    case O_ALLOW_ANY: snprintf(b, cap, "%s", s->allow_any ? "true" : "false"); break;
    case O_NO_KEEPER: snprintf(b, cap, "%s", c->no_keeper ? "true" : "false"); break;
    case O_MAX_CLIENTS: snprintf(b, cap, "%u", s->max_clients ? s->max_clients : 1024); break;
    case O_MAX_CLIENTS_PER_UID:
        if (s->max_clients_per_uid)
            snprintf(b, cap, "%u", s->max_clients_per_uid);
        else
            snprintf(b, cap, "(a quarter of max-clients)");
        break;
    case O_LOG_LEVEL: snprintf(b, cap, "%s", log_levels[c->log_level & 3]); break;
    default: snprintf(b, cap, "-"); break;
    }
}

/* Take the value of a run-time option from src into the running
 * configuration (srv, *level). */
static void take_opt(ec_server_config *srv, int *level, const ec_dconf *src, int id)
{
    const ec_server_config *s = &src->srv;

    switch (id) {
    case O_BUDGET: srv->budget = s->budget; break;
    case O_TTL: srv->ttl_seconds = s->ttl_seconds; break;
    case O_TTL_JITTER: srv->ttl_jitter = s->ttl_jitter; break;
    case O_RATE_WINDOW: srv->rate_window = s->rate_window; break;
    case O_WAL_SYNC: srv->wal_sync = s->wal_sync; break;
    case O_WAL_SYNC_MS: srv->wal_sync_ms = s->wal_sync_ms; break;
    case O_REMOTE_KEEP: srv->remote_no_keep = s->remote_no_keep; break;
    case O_REMOTE_KEEP_RESERVE: srv->remote_keep_reserve = s->remote_keep_reserve; break;
    case O_REMOTE_KEEP_MAX: srv->remote_keep_max = s->remote_keep_max; break;
    case O_REMOTE_AUTH_FILE:
        memcpy(srv->remote_auth_file, s->remote_auth_file, sizeof(srv->remote_auth_file));
        break;
    case O_EPOCH_HOLD: srv->epoch_hold_max = s->epoch_hold_max; break;
    case O_PIN_LEASE: srv->pin_lease = s->pin_lease; break;
    case O_MAX_CLIENTS: srv->max_clients = s->max_clients; break;
    case O_MAX_CLIENTS_PER_UID: srv->max_clients_per_uid = s->max_clients_per_uid; break;
    case O_ALLOW_ANY: srv->allow_any = s->allow_any; break;
    case O_ALLOW_UID:
        memcpy(srv->allow_uids, s->allow_uids, sizeof(srv->allow_uids));
        srv->n_allow_uids = s->n_allow_uids;
        break;
    case O_ADMIN_UID:
        memcpy(srv->admin_uids, s->admin_uids, sizeof(srv->admin_uids));
        srv->n_admin_uids = s->n_admin_uids;
        break;
    case O_LOG_LEVEL: *level = src->log_level; break;
    default: assert(!"take_opt: not a run-time option"); break;
    }
}

static void defaults(ec_dconf *c)
{
    memset(c, 0, sizeof(*c));
    c->srv.shm_size = EC_DCONF_DEFAULT_SHM_SIZE;
    c->srv.ttl_jitter = 0.1;
    c->srv.gpu_slab = UINT64_MAX;
    c->srv.remote_keep_reserve = 1ull << 30;
    c->srv.epoch_hold_max = 30;
    c->srv.pin_lease = 60;
    c->log_level = EC_LOG_INFO;
}

/* ------------------------------------------------------------------ */
/* Errors                                                              */

__attribute__((format(printf, 2, 3))) static void add_err(ec_dconf_errs *e, const char *fmt, ...)
{
    va_list ap;

    e->total++;
    if (e->n == EC_DCONF_MAX_ERRORS)
        return;
    va_start(ap, fmt);
    vsnprintf(e->msg[e->n++], EC_DCONF_MSG, fmt, ap);
    va_end(ap);
}

/* The closest key to a mistyped one (edit distance at most 2), or NULL. */
static const char *suggest(const char *key)
{
    const char *best = NULL;
    size_t kl = strlen(key), bestd = 3;

    if (kl > 40)
        return NULL;
    for (int id = 0; id < O_N; id++) {
        const char *name = opts[id].name;
        size_t nl = strlen(name), row[48];
        if (opts[id].flags & F_CMDLINE || nl > 40)
            continue;
        for (size_t j = 0; j <= nl; j++)
            row[j] = j;
        for (size_t i = 1; i <= kl; i++) {
            size_t diag = row[0];
            row[0] = i;
            for (size_t j = 1; j <= nl; j++) {
                size_t up = row[j], cost = key[i - 1] != name[j - 1];
                size_t v = diag + cost;
                if (up + 1 < v)
                    v = up + 1;
                if (row[j - 1] + 1 < v)
                    v = row[j - 1] + 1;
                diag = up;
                row[j] = v;
            }
        }
        if (row[nl] < bestd) {
            bestd = row[nl];
            best = name;
        }
    }
    return best;
}

/* ------------------------------------------------------------------ */
/* The file                                                            */

static char *trim(char *s)
{
    char *end;

    while (*s == ' ' || *s == '\t')
        s++;
    end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r' ||
                       end[-1] == '\n'))
        *--end = '\0';
    return s;
}

static int find_key(const char *key)
{
    for (int id = 0; id < O_N; id++)
        if (!strcmp(opts[id].name, key))
            return id;
    return -1;
}

/* One line (number no) of the file: a key = value, a comment or blank. */
static void file_line(ec_dconf *c, const char *path, int no, char *line, int *seen,
                      ec_dconf_errs *e)
{
    char msg[EC_DCONF_MSG - 100], *p = trim(line), *eq, *key, *val;
    int id;

    if (!*p || *p == '#')
        return;
    eq = strchr(p, '=');
    if (!eq) {
        key = p;
        p[strcspn(p, " \t")] = '\0';
        add_err(e, "%s:%d: key '%.64s': no '=' (write 'key = value', e.g. 'budget = 8G')",
                path, no, key);
        return;
    }
    *eq = '\0';
    key = trim(p);
    val = eq + 1;
    /* A comment after the value starts at a '#' after white space. */
    for (char *h = strchr(val, '#'); h; h = strchr(h + 1, '#'))
        if (h > val && (h[-1] == ' ' || h[-1] == '\t')) {
            *h = '\0';
            break;
        }
    val = trim(val);
    if (!*key) {
        add_err(e, "%s:%d: '= %.64s' has no key before the '='", path, no, val);
        return;
    }
    id = find_key(key);
    if (id < 0) {
        const char *s = suggest(key);
        add_err(e, "%s:%d: unknown key '%.64s'%s%s%s; the keys are the long options of "
                   "'embcached --help' without the '--'",
                path, no, key, s ? " (did you mean '" : "", s ? s : "", s ? "'?)" : "");
        return;
    }
    if (opts[id].flags & F_CMDLINE) {
        add_err(e, "%s:%d: key '%s' is for the command line only%s", path, no, key,
                id == O_VERBOSE ? "; write 'log-level = debug'"
                : id == O_QUIET ? "; write 'log-level = error'" : "");
        return;
    }
    if (!*val) {
        add_err(e, "%s:%d: key '%s' has no value (e.g. '%s = %s')", path, no, key, key,
                opts[id].arg ? opts[id].arg : "true");
        return;
    }
    if (seen[id] && !(opts[id].flags & F_REPEAT)) {
        add_err(e, "%s:%d: key '%s' is set twice, on lines %d and %d; keep one", path, no,
                key, seen[id], no);
        return;
    }
    if (set_opt(c, id, val, msg, sizeof(msg)) < 0) {
        add_err(e, "%s:%d: key '%s': %s", path, no, key, msg);
        return;
    }
    seen[id] = no;
    c->from[id] = no;
    c->keys++;
}

/* Read path into c. A file that others than its owner (root or us) may
 * write could make this daemon serve anyone (allow-any): refused. */
static void read_file(ec_dconf *c, const char *path, bool named, ec_dconf_errs *e)
{
    int seen[O_N] = {0}, no = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    struct stat st;
    FILE *f = fopen(path, "re");

    if (!f) {
        add_err(e, "cannot read the configuration file %s: %s; %s", path, strerror(errno),
                named ? "pass another --config (or EMBCACHE_CONFIG), or --config none to use "
                        "none"
                      : "fix its permissions, or pass --config none to use none");
        return;
    }
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        add_err(e, "the configuration file %s is not a regular file; pass another --config",
                path);
        goto out;
    }
    if ((st.st_uid != 0 && st.st_uid != geteuid()) || (st.st_mode & 022)) {
        add_err(e, "the configuration file %s is owned by uid %u with mode %04o: it must "
                   "belong to root or uid %u and not be writable by group or others (chown; "
                   "chmod go-w %s)",
                path, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777), (unsigned)geteuid(),
                path);
        goto out;
    }
    snprintf(c->file, sizeof(c->file), "%s", path);
    while ((len = getline(&line, &cap, f)) >= 0) {
        no++;
        if (memchr(line, '\0', (size_t)len) || len > 4096) {
            add_err(e, "%s:%d: not a line of text (a NUL byte, or longer than 4096 bytes)",
                    path, no);
            continue;
        }
        file_line(c, path, no, line, seen, e);
    }
    if (ferror(f))
        add_err(e, "reading the configuration file %s: %s", path, strerror(errno));
out:
    free(line);
    fclose(f);
}

/* ------------------------------------------------------------------ */
/* The command line                                                    */

int ec_dconf_parse_args(int argc, char **argv, ec_dconf_args *a, FILE *err)
{
    struct option lo[O_N + 1];
    char shorts[32];
    size_t ns = 0;
    const char *env = getenv("EMBCACHE_CONFIG"), *cfile = NULL;
    int c;

    memset(a, 0, sizeof(*a));
    a->v = calloc((size_t)argc + 1, sizeof(*a->v));
    if (!a->v) {
        fprintf(err, "embcached: out of memory\n");
        return 2;
    }
    for (int id = 0; id < O_N; id++) {
        lo[id] = (struct option){opts[id].name, opts[id].arg ? required_argument : no_argument,
                                 NULL, 0x200 + id};
        if (opts[id].shortopt) {
            shorts[ns++] = (char)opts[id].shortopt;
            if (opts[id].arg)
                shorts[ns++] = ':';
        }
    }
    lo[O_N] = (struct option){NULL, 0, NULL, 0};
    shorts[ns] = '\0';
    optind = 0; /* GNU: start afresh */
    while ((c = getopt_long(argc, argv, shorts, lo, NULL)) != -1) {
        int id = -1;
        if (c >= 0x200 && c < 0x200 + O_N)
            id = c - 0x200;
        else
            for (int k = 0; k < O_N && id < 0; k++)
                if (opts[k].shortopt == c)
                    id = k;
        if (id < 0) {
            fprintf(err, "Try 'embcached --help'.\n");
            return 2;
        }
        switch (id) {
        case O_HELP: a->action = EC_DCONF_HELP; return 0;
        case O_VERSION: a->action = EC_DCONF_VERSION; return 0;
        case O_CHECK: a->action = EC_DCONF_CHECK; break;
        case O_CONFIG: cfile = optarg; break;
        default: a->v[a->n++] = (ec_dconf_arg){id, opts[id].arg ? optarg : NULL}; break;
        }
    }
    if (optind < argc) {
        fprintf(err, "embcached: unexpected argument '%s'\nTry 'embcached --help'.\n",
                argv[optind]);
        return 2;
    }
    if (cfile && (!*cfile || strlen(cfile) >= sizeof(a->file))) {
        fprintf(err, "embcached: --config '%s' must be a file's path, or none\n", cfile);
        return 2;
    }
    if (cfile) {
        a->file_named = true;
        snprintf(a->file, sizeof(a->file), "%s", strcmp(cfile, "none") ? cfile : "");
    } else if (env) { /* set and empty: none */
        a->file_named = true;
        snprintf(a->file, sizeof(a->file), "%s", env);
    } else {
        snprintf(a->file, sizeof(a->file), "%s", EC_DCONF_DEFAULT_FILE);
    }
    /* Messages name the file absolutely. Links are not resolved: a reload
     * reads what the path names then. */
    if (*a->file && a->file[0] != '/') {
        char cwd[PATH_MAX], rel[PATH_MAX];
        snprintf(rel, sizeof(rel), "%s", a->file);
        if (getcwd(cwd, sizeof(cwd)) &&
            snprintf(a->file, sizeof(a->file), "%s/%s", cwd, rel) >= (int)sizeof(a->file)) {
            fprintf(err, "embcached: --config '%s': the path is too long\n", rel);
            return 2;
        }
    }
    return 0;
}

void ec_dconf_args_free(ec_dconf_args *a)
{
    free(a->v);
    a->v = NULL;
    a->n = 0;
}

int ec_dconf_build(const ec_dconf_args *a, ec_dconf *c, ec_dconf_errs *e)
{
    bool cleared[O_N] = {false};
    char msg[EC_DCONF_MSG - 100];

    defaults(c);
    e->n = e->total = e->cmdline = 0;
    if (*a->file && (a->file_named || access(a->file, F_OK) == 0 || errno != ENOENT))
        read_file(c, a->file, a->file_named, e);
    for (size_t i = 0; i < a->n; i++) {
        int id = a->v[i].opt;
        if (id == O_VERBOSE || id == O_QUIET) {
            c->log_level = id == O_QUIET ? EC_LOG_ERROR
                           : c->log_level < EC_LOG_DEBUG ? c->log_level + 1 : c->log_level;
            c->from[O_LOG_LEVEL] = -1;
            continue;
        }
        if (opts[id].flags & F_REPEAT && !cleared[id]) {
            /* The command line's list replaces the file's. */
            if (id == O_ALLOW_UID)
                c->srv.n_allow_uids = 0;
            else
                c->srv.n_admin_uids = 0;
            cleared[id] = true;
        }
        if (set_opt(c, id, a->v[i].val, msg, sizeof(msg)) < 0) {
            add_err(e, "--%s %s", opts[id].name, msg);
            e->cmdline++;
        }
        c->from[id] = -1;
    }
    return e->total ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* Usage                                                               */

void ec_dconf_usage(FILE *f)
{
    fputs("usage: embcached [OPTION]...\n"
          "       embcached --check [OPTION]...\n"
          "Keep embedding tables and model weights in shared memory for the inference\n"
          "processes of this host. Runs in the foreground as two processes: a keeper\n"
          "that holds the shared segment and a worker that serves; a worker that\n"
          "crashes is restarted and serves the segment warm. SIGTERM/SIGINT stop both\n"
          "(the segment goes with them); SIGUSR2 restarts the worker, warm; SIGHUP\n"
          "reloads the configuration (below); the worker's pid is in\n"
          "DATA_DIR/embcached.lock.\n"
          "\n",
          f);
    for (int id = 0; id < O_N; id++) {
        const struct opt *o = &opts[id];
        char head[64];
        int n = snprintf(head, sizeof(head), "  %c%c%s --%s%s%s",
                         o->shortopt ? '-' : ' ', o->shortopt ? o->shortopt : ' ',
                         o->shortopt ? "," : " ", o->name, o->arg ? " " : "",
                         o->arg ? o->arg : "");
        fputs(head, f);
        fprintf(f, "%*s", n < 25 ? 25 - n : 2, "");
        for (const char *h = o->help; *h;) {
            size_t l = strcspn(h, "\n");
            fprintf(f, "%.*s\n", (int)l, h);
            h += l;
            if (*h == '\n' && *++h)
                fprintf(f, "%25s", "");
        }
    }
    fputs("\n"
          "Configuration file: one 'key = value' a line, the keys the long options\n"
          "above without '--' (not verbose, quiet, config, check, help, version); '#'\n"
          "starts a comment; allow-any and no-keeper take true/false/yes/no/1/0;\n"
          "allow-uid and admin-uid may appear on several lines. Precedence: built-in\n"
          "default < file < command line.\n"
          "SIGHUP reads the file and the command line again and applies, without\n"
          "dropping clients:",
          f);
    for (int id = 0, k = 0; id < O_N; id++)
        if (opts[id].flags & F_RUNTIME)
            fprintf(f, "%s%s", k++ ? ", " : " ", opts[id].name);
    fputs(" (uids for new connections). Other options need a restart; an invalid\n"
          "file changes nothing.\n"
          "\n"
          "Exit status: 0 after a clean shutdown, 1 when start-up failed (or the worker\n"
          "crashed 5 times within 60 s; --check: a check failed), 2 for bad usage or\n"
          "an invalid configuration file.\n",
          f);
}

void ec_dconf_describe(const ec_dconf *c, char *buf, size_t cap)
{
    size_t at = 0;

    buf[0] = '\0';
    for (int id = 0; id < O_N && at + 1 < cap; id++) {
        char v[PATH_MAX + 32], where[32];
        if (!c->from[id] || opts[id].flags & F_CMDLINE)
            continue;
        show_opt(c, id, v, sizeof(v));
        if (c->from[id] < 0)
            snprintf(where, sizeof(where), "command line");
        else
            snprintf(where, sizeof(where), "line %d", c->from[id]);
        at += (size_t)snprintf(buf + at, cap - at, "%s%s = %s (%s)", at ? ", " : "",
                               opts[id].name, v, where);
    }
}

/* ------------------------------------------------------------------ */
/* SIGHUP                                                              */

/* Append to buf (of cap bytes): "sep text". */
__attribute__((format(printf, 4, 5))) static void cat(char *buf, size_t cap, const char *sep,
                                                      const char *fmt, ...)
{
    size_t at = strlen(buf);
    va_list ap;

    if (at + 1 >= cap)
        return;
    if (at)
        at += (size_t)snprintf(buf + at, cap - at, "%s", sep);
    if (at + 1 >= cap)
        return;
    va_start(ap, fmt);
    vsnprintf(buf + at, cap - at, fmt, ap);
    va_end(ap);
}

int ec_dconf_reload(void *arg, const ec_server_config *cur, ec_server_config *next,
                    char *summary, size_t cap)
{
    ec_dconf_ctx *x = arg;
    ec_dconf *fresh = malloc(sizeof(*fresh));
    ec_dconf_errs *e = malloc(sizeof(*e));
    char changed[1024] = "", fixed[512] = "", from[PATH_MAX + 32];
    int level = x->live.log_level, rc = 0;

    if (!fresh || !e) {
        ec_error("config reload: out of memory; nothing changed");
        rc = ec_seterr(EC_ENOMEM, "config reload: out of memory; nothing changed");
        goto out;
    }
    if (ec_dconf_build(&x->args, fresh, e) < 0) {
        for (int i = 0; i < e->n; i++)
            ec_error("config reload: %s", e->msg[i]);
        if (e->total > e->n)
            ec_error("config reload: and %d more errors", e->total - e->n);
        ec_error("config reload refused: nothing changed; fix %s and send SIGHUP again",
                 *x->args.file ? x->args.file : "the configuration");
        rc = ec_seterr(EC_EINVAL, "config reload refused, nothing changed: %s%s; fix %s and "
                       "reload again", e->n ? e->msg[0] : "invalid configuration",
                       e->total > 1 ? " (and more: see the daemon's log)" : "",
                       *x->args.file ? x->args.file : "the configuration");
        goto out;
    }
    snprintf(from, sizeof(from), "%s", *fresh->file ? fresh->file : "(no configuration file)");
    *next = *cur;
    for (int id = 0; id < O_N; id++) {
        char was[PATH_MAX + 32], now[PATH_MAX + 32];
        if (opts[id].flags & F_CMDLINE || id == O_DROP_SEGMENT)
            continue;
        show_opt(&x->live, id, was, sizeof(was));
        show_opt(fresh, id, now, sizeof(now));
        if (!strcmp(was, now))
            continue;
        if (opts[id].flags & F_RUNTIME) {
            take_opt(next, &level, fresh, id);
            take_opt(&x->live.srv, &x->live.log_level, fresh, id);
            cat(changed, sizeof(changed), ", ", "%s %s -> %s", opts[id].name, was, now);
        } else {
            ec_warn("%s changed in %s but cannot change at run time; restart embcached to "
                    "apply", opts[id].name, from);
            cat(fixed, sizeof(fixed), ", ", "%s", opts[id].name);
        }
    }
    memcpy(x->live.from, fresh->from, sizeof(x->live.from));
    memcpy(x->live.file, fresh->file, sizeof(x->live.file));
    x->live.keys = fresh->keys;
    /* The summary shows at whichever of the two levels logs more. */
    if (level >= EC_LOG_INFO)
        ec_log_set_level((enum ec_log_level)level);
    ec_info("config reloaded from %s: %s%s%s", from, *changed ? changed : "nothing changed",
            *fixed ? "; not applied (restart needed): " : "", fixed);
    if (summary && cap)
        snprintf(summary, cap, "config reloaded from %s: %s%s%s", from,
                 *changed ? changed : "nothing changed",
                 *fixed ? "; not applied (restart needed): " : "", fixed);
    ec_log_set_level((enum ec_log_level)level);
out:
    free(fresh);
    free(e);
    return rc;
}
