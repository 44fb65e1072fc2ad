/*
 * keeper.h - the process that keeps the shared segment across a crash of
 * the daemon.
 *
 * The segment is a sealed memfd (shm/segment.h): once sealed, nobody can map
 * it writable again, whatever their uid, so a client cannot change a byte
 * another client reads. The price is that a restarted daemon cannot re-open
 * it for writing either. The only way to write it after a crash is to
 * inherit, by fork, a writable mapping made before the seal; the keeper is
 * the process that holds one.
 *
 * embcached's first process becomes the keeper (ec_keeper_start): it takes
 * the data directory's lock, then forks the worker, which runs the server
 * (core/server.c) and returns from ec_keeper_start. The keeper never reads
 * from a client and never touches the segment's contents: it waits for its
 * worker and for signals, maps the segment its worker hands it
 * (ec_keeper_keep, before the worker seals it), and when the worker dies of
 * anything but a clean exit it forks a new one, which inherits that mapping
 * and the lock and serves warm (ec_segment_attach). SIGTERM and SIGINT stop
 * both (the segment goes with the keeper); SIGUSR2 restarts the worker
 * (warm); SIGHUP is passed to the worker; SIGUSR1, SIGALRM and SIGPIPE are
 * ignored. Both processes are made non-dumpable, so that a process of the
 * daemon's uid cannot ptrace them or write their memory through /proc.
 *
 * Without a keeper (embcached --no-keeper, tests that open an engine in
 * their own process) the daemon seals the segment it creates and a restart
 * is cold.
 */
#ifndef EC_CORE_KEEPER_H
#define EC_CORE_KEEPER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Private result arenas the keeper holds (core/results_store.c): segments of
 * their own, one per uid, kept like the segment. */
#define EC_KEEPER_ARENAS 64
typedef struct ec_keeper_arena {
    int fd;
    void *base;
    size_t size;
} ec_keeper_arena;

typedef struct ec_keeper {
    int sock;       /* the worker's end of its socketpair to the keeper; -1: none */
    int lock_fd;    /* the data directory's lock, held by the keeper too; -1: none */
    int seg_fd;     /* the segment the keeper holds (inherited), -1: none */
    void *seg_base; /* its read-write mapping in this process */
    size_t seg_size;
    unsigned starts; /* workers started so far, this one included */
    void *journal;   /* memory the keeper keeps for the workers' own records
                      * (the view journal, core/engine_views.c); never a
                      * client's */
    size_t journal_bytes;
    ec_keeper_arena arenas[EC_KEEPER_ARENAS]; /* inherited; fd -1 once taken or let go */
    unsigned narenas;
} ec_keeper;

#define EC_KEEPER_JOURNAL_BYTES (1u << 20)

/* The file in the data directory that is locked while a daemon uses it; it
 * holds the worker's pid. */
#define EC_LOCK_FILE "embcached.lock"

/* In embcached's main, after option parsing: open and lock
 * <data_dir>/embcached.lock (without following links), become the keeper
 * and fork the first worker. Returns 0 in each worker, with *k filled. The
 * keeper never returns: it exits 0 after a clean stop, 1 when a worker
 * failed at start-up or crashed too often (5 times within 60 s). Returns a
 * negative EC_E* code (with ec_last_error()) when it could not start (the
 * lock is taken: another daemon uses the directory). */
int ec_keeper_start(const char *data_dir, ec_keeper *k);

/* Open <data_dir>/embcached.lock (without following links) and take its
 * lock: EC_EBUSY naming the pid in it when another daemon holds it, EC_EPERM
 * when it is a link. For the keeper, and for an engine without one. */
int ec_keeper_lock_dir(const char *data_dir, int *fd_out);

/* Worker: the keeper maps memfd read-write and holds it from now on (the
 * segment it held before, if any, is let go). Call before sealing it. */
int ec_keeper_keep(ec_keeper *k, int memfd);

/* Worker: the keeper lets go of the segment it held (it failed validation
 * or does not match the configuration); the worker's inherited copy of the
 * mapping is unmapped too. */
int ec_keeper_drop(ec_keeper *k);

/* Worker: the keeper maps a result arena's memfd read-write and holds it
 * too (before the worker seals it), so a new worker inherits it. */
int ec_keeper_keep_arena(ec_keeper *k, int memfd);
/* Worker: the keeper lets go of that arena (found by the file it is). */
int ec_keeper_drop_arena(ec_keeper *k, int memfd);

/* Worker: tell the keeper the server is serving (a worker that exits with
 * status 1 before this failed at start-up and is not restarted). */
void ec_keeper_ready(ec_keeper *k);

/* Worker: close what ec_keeper_start handed over, except what the engine
 * took (the lock, the segment). */
void ec_keeper_close(ec_keeper *k);

#endif
