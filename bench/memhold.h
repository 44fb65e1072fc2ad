/*
 * memhold.h - hold memory away from the page cache, so that a file-backed
 * baseline (an mmap of the table) runs with about as much memory as
 * embcache was given, without touching control groups.
 *
 * A child process of the bench locks anonymous memory (mmap with
 * MAP_POPULATE, then mlock, in chunks) until /proc/meminfo's MemAvailable
 * is down to what the caller asked to leave: what remains is what the page
 * cache (or embcache's segment and daemon) may use. The child
 *
 *  - re-reads MemAvailable after every chunk and stops, giving the chunk
 *    back, when it fell below its floor (MEMHOLD_FLOOR, or half of what it
 *    was asked to leave if that is less: other processes allocate too);
 *  - while idle, checks MemAvailable every 20 ms and gives memory back
 *    (256 MiB at a time) whenever it is below that floor, counting each
 *    such shrink (memhold_status.shrinks);
 *  - when asked to track (memhold_set(..., track = true)), also keeps
 *    MemAvailable near the target while idle: when other processes free
 *    memory it locks more, when they take some it gives back (one chunk per
 *    20 ms step, counted in memhold_status.moves), so that what a page
 *    cache may use stays put on a machine that others use too;
 *  - sets its oom_score_adj to 1000, so that if the machine runs out of
 *    memory anyway the kernel kills the holder first;
 *  - dies with the bench (PR_SET_PDEATHSIG), and is stopped by pid with
 *    SIGKILL (memhold_stop(), and the bench's signal handler through
 *    memhold_pid()).
 *
 * It never creates or changes a cgroup; when the bench runs under a memory
 * cgroup limit below the machine's memory, MemAvailable does not describe
 * what the page cache may use, and memhold_start() refuses.
 *
 * Used by embcache-bench's main thread only. Locking takes time (the
 * kernel zeroes every page): a few seconds for 20 GiB.
 */
#ifndef EC_BENCH_MEMHOLD_H
#define EC_BENCH_MEMHOLD_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Give memory back when MemAvailable falls below this, or below half the
 * MemAvailable asked for when that is less. */
#define MEMHOLD_FLOOR (96ull << 20)
/* How close to the asked-for MemAvailable the holder aims. */
#define MEMHOLD_TOL (8ull << 20)

typedef struct memhold memhold;

typedef struct memhold_status {
    uint64_t leave;        /* the MemAvailable asked for (0: hold nothing) */
    uint64_t locked;       /* bytes locked by the holder now */
    uint64_t avail_before; /* MemAvailable when the request arrived */
    uint64_t avail_after;  /* MemAvailable when the holder was done */
    uint64_t shrinks;      /* emergency give-backs since the holder started */
    uint64_t moves;        /* tracking steps since the holder started */
    int err;               /* errno of a refused mmap/mlock, 0 if none */
} memhold_status;

/*
 * Fork the holder (it locks nothing yet). Fork it early, before the
 * program opens sockets or maps big tables: the child keeps no descriptor.
 * @return 0, or -1 with a one-line note (fork failed, or a memory cgroup
 *         limit applies).
 */
int memhold_start(memhold **out, char *note, size_t note_len);

/*
 * Lock or unlock memory until MemAvailable is within MEMHOLD_TOL of leave
 * (leave 0: unlock everything); with track, keep it there until the next
 * call. Waits for the holder (up to 10 minutes, or until *stop is set).
 * @param[out] st  what the holder did (also on failure, when it answered)
 * @return 0 when MemAvailable ended near leave; -1 with a note otherwise:
 *         mlock or mmap refused (with errno and RLIMIT_MEMLOCK), MemAvailable
 *         below leave with nothing locked, the safety floor reached, or the
 *         holder gone.
 */
int memhold_set(memhold *h, uint64_t leave, bool track, const volatile sig_atomic_t *stop,
                memhold_status *st, char *note, size_t note_len);

/* The holder's current state (locked bytes, shrinks). -1 when it died. */
int memhold_poll(memhold *h, memhold_status *st);

/* The holder's pid, for an async-signal-safe kill(pid, SIGKILL); 0 if none. */
pid_t memhold_pid(const memhold *h);

/* SIGKILL the holder, reap it, free h. NULL is a no-op. */
void memhold_stop(memhold *h);

/* A /proc/meminfo field ("MemAvailable", "MemTotal") in bytes; 0 if unread. */
uint64_t memhold_meminfo(const char *field);

#endif
