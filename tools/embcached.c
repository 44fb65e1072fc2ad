/*
 * embcached.c - the embcache host daemon: option parsing around
 * ec_keeper_start() and ec_server_run(). Runs in the foreground as two
 * processes: the keeper (this one) and the worker it forks, which serves
 * and is restarted warm when it crashes (core/keeper.h). SIGTERM or SIGINT
 * stops both cleanly.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/paths.h"
#include "common/units.h"
#include "core/keeper.h"
#include "core/server.h"

#define DEFAULT_SHM_SIZE (1ULL << 30)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: embcached [OPTION]...\n"
            "Keep embedding tables and model weights in shared memory for the inference\n"
            "processes of this host. Runs in the foreground as two processes: a keeper\n"
            "that holds the shared segment and a worker that serves; a worker that\n"
            "crashes is restarted and serves the segment warm. SIGTERM/SIGINT stop both\n"
            "(the segment goes with them); SIGUSR2 restarts the worker, warm; the\n"
            "worker's pid is in DATA_DIR/embcached.lock.\n"
            "\n"
            "  -d, --data-dir DIR     catalog and partition files; must not be writable\n"
            "                         by other users\n"
            "                         (default: $EMBCACHE_DATA_DIR, else ./embcache-data)\n"
            "  -s, --socket PATH      control socket (default: $EMBCACHE_SOCKET, else\n"
            "                         /run/embcache/embcached.sock as root,\n"
            "                         $XDG_RUNTIME_DIR/embcache.sock or\n"
            "                         /tmp/embcache-UID/embcached.sock)\n"
            "  -m, --shm-size BYTES   shared segment size; suffixes K, M, G (default 1G)\n"
            "  -b, --budget BYTES     memory budget of the host tier: evict past it\n"
            "                         (default: the whole segment)\n"
            "      --ttl SECONDS      evict a partition this long after it was loaded\n"
            "                         (default 0: never)\n"
            "      --ttl-jitter PCT   spread TTLs by +-PCT%% (default 10)\n"
            "      --rate-window SECONDS  window over which models' request rates are\n"
            "                         measured for their idle policy (default 60)\n"
            "      --pager KIND       auto, io_uring or pread (default auto: io_uring\n"
            "                         when the kernel allows it)\n"
            "      --queue-depth N    io_uring reads in flight (default 64)\n"
            "      --gpu-slab BYTES   device tier: a slab on each GPU holds copies of hot\n"
            "                         partitions (default: 1/16 of the GPU's memory; 0\n"
            "                         turns the tier off). Never more than the segment's\n"
            "                         data area, nor than the GPU's free memory less\n"
            "                         max(1G, 1/16 of the GPU), kept for the framework;\n"
            "                         the log says what each GPU got and why\n"
            "      --item-bytes BYTES  size the item index of a new segment for rows of\n"
            "                         this many bytes on average (default 512; rows\n"
            "                         cached by rows cost about 20 bytes of index each);\n"
            "                         0: no item index, every tensor cached by partitions\n"
            "      --result-arena BYTES  memory of each uid's private result namespaces\n"
            "                         (default 64M; shared namespaces use the budget)\n"
            "      --wal-sync MODE       when dynamic tables' updates are made durable:\n"
            "                            batch (default: fdatasync before each update is\n"
            "                            acknowledged), interval (every --wal-sync-ms; a\n"
            "                            machine crash may lose that much), none\n"
            "      --wal-sync-ms MS      the interval's period (default 100)\n"
            "      --metrics-listen [ADDR:]PORT  serve Prometheus metrics (GET /metrics)\n"
            "                            and GET /healthz over HTTP on this IPv4 address\n"
            "                            (default 127.0.0.1) and port; unauthenticated:\n"
            "                            keep it on loopback or a trusted network\n"
            "                            (default: off)\n"
            "      --epoch-hold SECONDS  disconnect a client whose GPU gather holds freed\n"
            "                         memory back longer than this (default 30)\n"
            "      --pin-lease SECONDS  a client stopped (SIGSTOP, a debugger) this long\n"
            "                         while it holds views loses them and is disconnected;\n"
            "                         its ec_view_check() then says so (default 60;\n"
            "                         0: views are kept however long the client is stopped)\n"
            "  -j, --io-threads N     pread reader threads (default 2)\n"
            "      --allow-uid UID    also accept clients of this uid, to read (repeatable)\n"
            "      --allow-any        accept clients of every local user (to read)\n"
            "      --admin-uid UID    also let this uid administer: import, alias, prewarm,\n"
            "                         evict, retire, refresh, policy, mode, upgrade\n"
            "                         (repeatable; root and the daemon's uid always may)\n"
            "      --max-clients N    connections at once (default 1024)\n"
            "      --max-clients-per-uid N  connections of one uid at once (default: a\n"
            "                         quarter of --max-clients)\n"
            "      --no-keeper        one process, no keeper: a crash loses the segment\n"
            "      --drop-segment     no effect (the segment always goes when the daemon\n"
            "                         stops); accepted for old scripts\n"
            "  -v, --verbose          log more (repeat for debug)\n"
            "  -q, --quiet            log errors only\n"
            "  -h, --help             show this help\n"
            "  -V, --version          show the version\n"
            "\n"
            "Exit status: 0 after a clean shutdown, 1 when start-up failed (or the worker\n"
            "crashed 5 times within 60 s), 2 for bad usage.\n");
}


/* Connections and partition files each take a descriptor, and the default
 * soft limit (1024 under systemd) is below --max-clients plus files. Raise
 * it to the hard limit, as the kernel's and systemd's documentation advise
 * for a program that needs many (this one uses epoll, never select). The
 * engine then keeps a quarter of what it has for partition files. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            ec_warn("cannot raise the descriptor limit to %llu: %s",
                    (unsigned long long)want, strerror(errno));
    }
}

/* The subdirectories of the data directory the daemon opens files in. */
static const char *const subdirs[] = {"parts", "hot"};

/* Is path a directory of ours that nobody else may write? A subdirectory
 * (sub) may be missing (the daemon creates it) but must not be a link.
 * Prints why not. */
static bool dir_is_ours(const char *path, bool sub)
{
    struct stat st;

    if ((sub ? lstat(path, &st) : stat(path, &st)) < 0) {
        if (sub && errno == ENOENT)
            return true;
        fprintf(stderr, "embcached: cannot inspect %s: %s\n", path, strerror(errno));
        return false;
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "embcached: %s is not a directory%s; %s\n", path,
                S_ISLNK(st.st_mode) ? " (a symbolic link)" : "",
                sub ? "remove it, or start with a new data directory" : "pick another");
        return false;
    }
    if (st.st_uid != geteuid() || (st.st_mode & 022)) {
        fprintf(stderr,
                "embcached: %s directory %s is owned by uid %u with mode %04o: it must "
                "belong to uid %u and not be writable by group or others (chown %u %s; "
                "chmod go-w %s)\n",
                sub ? "data subdirectory" : "data", path, (unsigned)st.st_uid,
                (unsigned)(st.st_mode & 07777), (unsigned)geteuid(), (unsigned)geteuid(), path,
                path);
        return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data-dir", required_argument, NULL, 'd'},
        {"socket", required_argument, NULL, 's'},
        {"shm-size", required_argument, NULL, 'm'},
        {"io-threads", required_argument, NULL, 'j'},
        {"budget", required_argument, NULL, 'b'},
        {"ttl", required_argument, NULL, 'T'},
        {"ttl-jitter", required_argument, NULL, 'J'},
        {"rate-window", required_argument, NULL, 'W'},
        {"pager", required_argument, NULL, 'P'},
        {"queue-depth", required_argument, NULL, 'Q'},
        {"gpu-slab", required_argument, NULL, 'G'},
        {"epoch-hold", required_argument, NULL, 'E'},
        {"pin-lease", required_argument, NULL, 'L'},
        {"item-bytes", required_argument, NULL, 'I'},
        {"result-arena", required_argument, NULL, 'R'},
        {"wal-sync", required_argument, NULL, 0x101},
        {"wal-sync-ms", required_argument, NULL, 0x102},
        {"metrics-listen", required_argument, NULL, 0x103},
        {"allow-uid", required_argument, NULL, 'U'},
        {"allow-any", no_argument, NULL, 'A'},
        {"drop-segment", no_argument, NULL, 'D'},
        {"no-keeper", no_argument, NULL, 'K'},
        {"max-clients", required_argument, NULL, 'C'},
        {"admin-uid", required_argument, NULL, 'a'},
        {"max-clients-per-uid", required_argument, NULL, 'u'},
        {"verbose", no_argument, NULL, 'v'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    ec_server_config cfg = {.shm_size = DEFAULT_SHM_SIZE, .ttl_jitter = 0.1,
                            .gpu_slab = UINT64_MAX, .epoch_hold_max = 30,
                            .pin_lease = 60};
    char sock[108], dir[PATH_MAX];
    const char *data_dir = getenv("EMBCACHE_DATA_DIR");
    int level = EC_LOG_INFO, c, rc;
    bool keeper = true;
    ec_keeper k = {.sock = -1, .lock_fd = -1, .seg_fd = -1};

    while ((c = getopt_long(argc, argv, "d:s:m:j:b:vqhV", opts, NULL)) != -1) {
        switch (c) {
        case 'b':
            if (ec_parse_size(optarg, &cfg.budget) || cfg.budget == 0) {
                fprintf(stderr, "embcached: --budget '%s' is not a size (e.g. 512M, 8G)\n",
                        optarg);
                return 2;
            }
            break;
        case 'G':
            if (ec_parse_size(optarg, &cfg.gpu_slab)) {
                fprintf(stderr, "embcached: --gpu-slab '%s' is not a size (e.g. 0, 512M, 8G)\n",
                        optarg);
                return 2;
            }
            break;
        case 'I': {
            uint64_t v;
            if (ec_parse_size(optarg, &v) || v > (1u << 20)) {
                fprintf(stderr, "embcached: --item-bytes '%s' must be 0..1M bytes (e.g. 512)\n",
                        optarg);
                return 2;
            }
            cfg.item_bytes = v ? v : UINT64_MAX;
            break;
        }
        case 'R':
            if (ec_parse_size(optarg, &cfg.result_arena) || cfg.result_arena < (4u << 20) ||
                cfg.result_arena > (1ull << 40)) {
                fprintf(stderr, "embcached: --result-arena '%s' must be a size of 4M..1T (e.g. "
                                "64M)\n",
                        optarg);
                return 2;
            }
            break;
        case 0x101:
            if (!strcmp(optarg, "batch"))
                cfg.wal_sync = 0;
            else if (!strcmp(optarg, "interval"))
                cfg.wal_sync = 1;
            else if (!strcmp(optarg, "none"))
                cfg.wal_sync = 2;
            else {
                fprintf(stderr, "embcached: --wal-sync '%s' must be batch, interval or none\n",
                        optarg);
                return 2;
            }
            break;
        case 0x102: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 1 || v > 60000) {
                fprintf(stderr, "embcached: --wal-sync-ms '%s' must be 1..60000\n", optarg);
                return 2;
            }
            cfg.wal_sync_ms = (unsigned)v;
            break;
        }
        case 0x103: {
            /* [ADDR:]PORT; a bare PORT listens on loopback only. */
            const char *colon = strrchr(optarg, ':'), *port = colon ? colon + 1 : optarg;
            struct in_addr ia;
            char *end;
            long v = strtol(port, &end, 10);
            size_t alen = colon ? (size_t)(colon - optarg) : 0;
            if (*end || end == port || v < 1 || v > 65535 ||
                alen >= sizeof(cfg.metrics_addr) || (colon && alen == 0)) {
                fprintf(stderr, "embcached: --metrics-listen '%s' must be [ADDR:]PORT, PORT "
                                "1..65535, ADDR an IPv4 address (e.g. 9464 or "
                                "0.0.0.0:9464)\n",
                        optarg);
                return 2;
            }
            snprintf(cfg.metrics_addr, sizeof(cfg.metrics_addr), "%.*s",
                     colon ? (int)alen : 9, colon ? optarg : "127.0.0.1");
            if (inet_pton(AF_INET, cfg.metrics_addr, &ia) != 1) {
                fprintf(stderr, "embcached: --metrics-listen '%s': '%s' is not an IPv4 "
                                "address (e.g. 127.0.0.1)\n",
                        optarg, cfg.metrics_addr);
                return 2;
            }
            cfg.metrics_port = (unsigned)v;
            break;
        }
        case 'E': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 1 || v > 86400) {
                fprintf(stderr, "embcached: --epoch-hold '%s' must be 1..86400 seconds\n",
                        optarg);
                return 2;
            }
            cfg.epoch_hold_max = v;
            break;
        }
        case 'L': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 0 || v > 86400 * 365) {
                fprintf(stderr, "embcached: --pin-lease '%s' must be 0..31536000 seconds "
                                "(0: never)\n", optarg);
                return 2;
            }
            cfg.pin_lease = v;
            break;
        }
        case 'W': {
            char *end;
            double v = strtod(optarg, &end);
            if (*end || end == optarg || !(v >= 0.1 && v <= 86400)) {
                fprintf(stderr, "embcached: --rate-window '%s' must be 0.1..86400 seconds\n",
                        optarg);
                return 2;
            }
            cfg.rate_window = v;
            break;
        }
        case 'T':
        case 'J': {
            char *end;
            double v = strtod(optarg, &end);
            if (*end || end == optarg || v < 0 || (c == 'J' && v > 100)) {
                fprintf(stderr, "embcached: --%s '%s' must be a number %s\n",
                        c == 'T' ? "ttl" : "ttl-jitter", optarg,
                        c == 'T' ? ">= 0 (seconds)" : "from 0 to 100 (percent)");
                return 2;
            }
            if (c == 'T')
                cfg.ttl_seconds = v;
            else
                cfg.ttl_jitter = v / 100.0;
            break;
        }
        case 'P':
            if (!strcmp(optarg, "auto"))
                cfg.pager = 0;
            else if (!strcmp(optarg, "io_uring"))
                cfg.pager = 1;
            else if (!strcmp(optarg, "pread"))
                cfg.pager = 2;
            else {
                fprintf(stderr, "embcached: --pager '%s': use auto, io_uring or pread\n",
                        optarg);
                return 2;
            }
            break;
        case 'Q': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 4096) {
                fprintf(stderr, "embcached: --queue-depth '%s' must be 1..4096\n", optarg);
                return 2;
            }
            cfg.queue_depth = (unsigned)n;
            break;
        }
        case 'd': data_dir = optarg; break;
        case 's': cfg.socket_path = optarg; break;
        case 'm':
            if (ec_parse_size(optarg, &cfg.shm_size)) {
                fprintf(stderr, "embcached: --shm-size '%s' is not a size (e.g. 268435456, "
                                "256M, 4G)\n", optarg);
                return 2;
            }
            break;
        case 'j': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 64) {
                fprintf(stderr, "embcached: --io-threads '%s' must be 1..64\n", optarg);
                return 2;
            }
            cfg.io_threads = (unsigned)n;
            break;
        }
        case 'U': {
            char *end;
            long uid = strtol(optarg, &end, 10);
            if (*end || uid < 0 || cfg.n_allow_uids == EC_SERVER_MAX_ALLOW) {
                fprintf(stderr, "embcached: --allow-uid '%s' must be a uid (at most %d)\n",
                        optarg, EC_SERVER_MAX_ALLOW);
                return 2;
            }
            cfg.allow_uids[cfg.n_allow_uids++] = (uid_t)uid;
            break;
        }
        case 'A': cfg.allow_any = true; break;
        case 'a': {
            char *end;
            long uid = strtol(optarg, &end, 10);
            if (*end || end == optarg || uid < 0 || cfg.n_admin_uids == EC_SERVER_MAX_ALLOW) {
                fprintf(stderr, "embcached: --admin-uid '%s' must be a uid (at most %d)\n",
                        optarg, EC_SERVER_MAX_ALLOW);
                return 2;
            }
            cfg.admin_uids[cfg.n_admin_uids++] = (uid_t)uid;
            break;
        }
        case 'C':
        case 'u': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || end == optarg || n < 1 || n > 65536) {
                fprintf(stderr, "embcached: --%s '%s' must be 1..65536\n",
                        c == 'C' ? "max-clients" : "max-clients-per-uid", optarg);
                return 2;
            }
            if (c == 'C')
                cfg.max_clients = (unsigned)n;
            else
                cfg.max_clients_per_uid = (unsigned)n;
            break;
        }
        case 'D': break;
        case 'K': keeper = false; break;
        case 'v': level = level < EC_LOG_DEBUG ? level + 1 : level; break;
        case 'q': level = EC_LOG_ERROR; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("embcached %s\n", EC_VERSION_STRING); return 0;
        default:
            fprintf(stderr, "Try 'embcached --help'.\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "embcached: unexpected argument '%s'\nTry 'embcached --help'.\n",
                argv[optind]);
        return 2;
    }
    if (cfg.shm_size < (4u << 20)) {
        fprintf(stderr, "embcached: --shm-size must be at least 4M\n");
        return 2;
    }
    cfg.shm_size = (cfg.shm_size + 4095) / 4096 * 4096;
    if (!data_dir || !*data_dir)
        data_dir = "embcache-data";
    if (mkdir(data_dir, 0700) < 0 && errno != EEXIST) {
        fprintf(stderr, "embcached: cannot create data directory %s: %s\n", data_dir,
                strerror(errno));
        return 1;
    }
    if (!realpath(data_dir, dir)) {
        /* Not there yet: the engine creates it; keep the path as given. */
        snprintf(dir, sizeof(dir), "%s", data_dir);
    }
    cfg.data_dir = dir;
    /* Whoever can write the data directory, or its parts/ and hot/, decides
     * what the daemon serves (and, through links, what it writes): only its
     * owner may. Subdirectories are judged by lstat: a link there is refused,
     * so every path the daemon opens below the checked directory has no link
     * in it but the last component, which is opened O_NOFOLLOW. */
    if (!dir_is_ours(dir, false))
        return 1;
    for (size_t i = 0; i < sizeof(subdirs) / sizeof(subdirs[0]); i++) {
        char sub[PATH_MAX + 16];
        snprintf(sub, sizeof(sub), "%s/%s", dir, subdirs[i]);
        if (!dir_is_ours(sub, true))
            return 1;
    }
    if (!cfg.socket_path)
        cfg.socket_path = ec_default_socket(sock, sizeof(sock));

    ec_log_init("embcached", (enum ec_log_level)level);
    raise_fd_limit();
    if (keeper) {
        if ((rc = ec_keeper_start(dir, &k)) < 0) {
            fprintf(stderr, "embcached: %s\n", ec_last_error());
            return 1;
        }
        cfg.keeper = &k; /* from here on, this is a worker */
    } else {
        prctl(PR_SET_DUMPABLE, 0);
    }
    rc = ec_server_run(&cfg);
    ec_keeper_close(&k);
    if (rc) {
        fprintf(stderr, "embcached: %s\n", ec_last_error());
        return 1;
    }
    return 0;
}
