/*
 * baseline_server.h - start and stop the server programs the Redis and
 * memcached baselines compare against (bench/baseline_redis.c,
 * bench/baseline_memcached.c, bench/baseline_mcproto.c). Each baseline runs
 * its own server as a child of the bench process and stops it by pid when
 * the baseline is closed. The server listens on a Unix socket in its own
 * private directory (the default: what a co-located cache would use), or
 * on a free loopback TCP port (ec_bl_set_transport(EC_BL_TCP)); private
 * directories go under ec_bl_set_tmpdir()'s directory, else $TMPDIR or /tmp.
 *
 * No server outlives the bench: every child is recorded in a fixed-size
 * table of live pids that an atexit() handler and (when the program has not
 * installed its own) SIGINT/SIGTERM/SIGHUP handlers kill; each child also
 * asks the kernel for SIGKILL when the bench dies (PR_SET_PDEATHSIG) and runs
 * in its own process group, so a Ctrl-C at the terminal reaches only the
 * bench, which then cleans up. A program with its own signal handlers calls
 * ec_bl_server_kill_all() from them. Each server belongs to the process that
 * started it: a child forked later inherits the table but neither kills nor
 * counts its parent's servers.
 *
 * Used by bench/ only; single-threaded (the caller of ec_bl_server_start()
 * must stay alive as long as the server: PR_SET_PDEATHSIG follows the
 * forking thread).
 */
#ifndef EC_BENCH_BASELINE_SERVER_H
#define EC_BENCH_BASELINE_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct ec_bl_server ec_bl_server;

/* Whole-argument placeholders in ec_bl_server_spec.args, replaced at start:
 * the chosen port in decimal, a private temporary directory (the server's
 * working directory and log; removed when the server stops), and the Unix
 * socket path in that directory. */
#define EC_BL_ARG_PORT "@PORT@"
#define EC_BL_ARG_DIR "@DIR@"
#define EC_BL_ARG_SOCK "@SOCK@"

/* How the bench reaches its servers. */
typedef enum ec_bl_transport {
    EC_BL_UNIX = 0, /* a Unix stream socket in the server's directory (default) */
    EC_BL_TCP = 1,  /* 127.0.0.1 on a free port, TCP_NODELAY */
} ec_bl_transport;

/* Process-wide: the transport of servers started from now on. */
void ec_bl_set_transport(ec_bl_transport t);
ec_bl_transport ec_bl_get_transport(void);

/* Process-wide: where servers' private directories go (copied; NULL:
 * $TMPDIR, else /tmp). The bench passes its own temporary directory. */
void ec_bl_set_tmpdir(const char *dir);

typedef struct ec_bl_server_spec {
    const char *name;         /* program name on PATH, e.g. "redis-server" */
    const char *env_override; /* env var naming another program, e.g. "EC_BENCH_REDIS_SERVER" */
    const char *install_hint; /* e.g. "apt-get install redis-server" */
    const char *const *args;  /* argv[1..] for TCP, NULL-terminated, with placeholders */
    const char *const *unix_args; /* the same for a Unix socket (EC_BL_ARG_SOCK) */
} ec_bl_server_spec;

/*
 * Find spec->name (or the program named by $spec->env_override when set and
 * non-empty: an absolute or relative path with a '/', or a name looked up on
 * PATH). Writes the path into path[path_len].
 * @return 0, or -1 with a note: "<name> not installed: <install_hint>", or
 *         "<ENV>=<value>: no such executable ..." for a bad override.
 */
int ec_bl_find_program(const ec_bl_server_spec *spec, char *path, size_t path_len, char *note,
                       size_t note_len);

/*
 * Pick a free loopback TCP port: bind 127.0.0.1:0, read the port the kernel
 * chose, close. Another process may take it before the server binds it;
 * ec_bl_server_start() retries with a new port when that happens.
 * @return 0 with *port_out set, or -1 (errno set).
 */
int ec_bl_free_port(int *port_out);

/*
 * Find the program, start it as a child with spec->unix_args (Unix socket
 * transport) or, with a free port, spec->args (TCP), and wait until the
 * socket accepts a connection (10 s; $EC_BENCH_SERVER_START_TIMEOUT_MS
 * overrides, for tests). The
 * child's stdout and stderr go to a log in its private directory; the last
 * line of that log is quoted in the note when the program exits early.
 * @param[out] out  the running server, owned by the caller until
 *                  ec_bl_server_stop(); written only on success.
 * @return 0, or -1 with a one-line note (program missing, could not be run,
 *         exited before listening, did not listen in time). On failure no
 *         child is left running.
 */
int ec_bl_server_start(const ec_bl_server_spec *spec, ec_bl_server **out, char *note,
                       size_t note_len);

/* The port the server listens on (127.0.0.1); 0 for a Unix socket. */
int ec_bl_server_port(const ec_bl_server *s);

/* The Unix socket the server listens on; NULL for TCP. */
const char *ec_bl_server_socket(const ec_bl_server *s);

/* "unix:<path>" or "tcp:127.0.0.1:<port>", for result notes. */
void ec_bl_server_describe(const ec_bl_server *s, char *buf, size_t len);

/* A connected, blocking stream socket to the server (TCP_NODELAY for TCP),
 * close-on-exec. @return the descriptor, or -1 with a note. */
int ec_bl_server_connect(const ec_bl_server *s, char *note, size_t note_len);

/* memcached sized for rows of row_bytes: -I, a power of two MiB that holds
 * a row and its item overhead; -m, the rows with 25% for slab rounding plus
 * 64 MiB (at least 2 x -I). -1 for sizes it cannot hold. */
int ec_bl_memcached_limits(uint64_t rows, size_t row_bytes, unsigned *mem_mib,
                           unsigned *item_mib);

/* Start memcached on the current transport with -m mem_mib -I item_mib:
 * UDP off, 2 threads, -M (a full cache fails a store instead of evicting).
 * As ec_bl_server_start(). */
int ec_bl_memcached_start(unsigned mem_mib, unsigned item_mib, ec_bl_server **out, char *note,
                          size_t note_len);

/* The server's pid (its process is the program itself, not a shell). */
pid_t ec_bl_server_pid(const ec_bl_server *s);

/*
 * Stop the server: SIGTERM, wait up to 3 s, then SIGKILL; reap it, remove
 * its directory, free s. NULL is a no-op. When it returns the pid is gone.
 */
void ec_bl_server_stop(ec_bl_server *s);

/* Format a one-line note into note[note_len] (truncated; nothing when
 * note_len is 0). For the baselines' open() notes. */
void ec_bl_note(char *note, size_t note_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Both servers store row r under the key "r:<r>" (decimal, r >= 0). Writes
 * the key, not NUL-terminated, into buf[EC_BL_KEY_MAX]; returns its length. */
#define EC_BL_KEY_MAX 24
size_t ec_bl_format_key(char *buf, uint64_t row);

/* For tests: the pid of the most recently started server in this process
 * (0 when none was ever started), and how many are running now. */
pid_t ec_bl_server_last_pid(void);
size_t ec_bl_server_live_count(void);

/* SIGKILL every running server. Async-signal-safe: for a program's own
 * signal handlers. The servers are reaped by the kernel once the program
 * exits (or by ec_bl_server_stop()). */
void ec_bl_server_kill_all(void);

#endif
