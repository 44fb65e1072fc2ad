/*
 * proc.h - what /proc says about another process: its state and start time.
 *
 * Used by the daemon's server thread (is a client that holds views stopped?)
 * and its engine (is the process behind a journaled view still the one that
 * took it?). No state; any thread.
 */
#ifndef EC_COMMON_PROC_H
#define EC_COMMON_PROC_H

#include <stdint.h>
#include <sys/types.h>

/* The state letter of /proc/PID/stat (R, S, D, T, t, Z, X, ...) and the
 * start time (field 22, clock ticks since boot) of process pid.
 * @return 0, or -1 when the process is gone or /proc cannot be read (then
 *         *state is 0 and *start 0). Either out pointer may be NULL. */
int ec_proc_stat(pid_t pid, char *state, uint64_t *start);

#endif
