/*
 * itest.h - what the end-to-end tests share: a real embcached per test in
 * its own temporary directory, fork()ed client processes, .npy source
 * tables and byte-for-byte checks of gathered rows against them, and the
 * daemon's statistics. Used by most integration tests (the cluster ones for
 * their statistics).
 *
 * Children never call cmocka (its state belongs to the parent): functions
 * marked "safe in children" report through return values. env_teardown()
 * kills what a test started, so a failed assertion leaves nothing behind.
 */
#ifndef EC_TESTS_ITEST_H
#define EC_TESTS_ITEST_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/partfile.h"
#include "embcache.h"

#define MAX_KIDS 80

/* The running test's daemon and children. */
struct itest_env {
    char *dir;          /* the test's temporary directory */
    char sock[160];
    char data[512];     /* the daemon's data directory */
    pid_t daemon;
    pid_t kids[MAX_KIDS];
    int nkids;
};
extern struct itest_env E;

/* An f32 [rows, cols] table in a .npy file and its bytes, read back from it. */
struct table {
    char path[512];
    uint8_t *file;
    const uint8_t *data;  /* inside file: the .npy's tail */
    uint64_t rows, row_bytes;
};

struct statv {
    const char *name;
    uint64_t v;
    int found;
};

/* Another daemon of a test, beside E's or in a directory of the test's own. */
struct itest_daemon {
    char data[600], sock[600]; /* dir/NAME-data, dir/NAME.sock */
    pid_t pid;
    ec_client *c;              /* connected when itest_daemon_up was asked to */
};

/* Start a daemon in a new directory named after prefix, with extra options. */
void env_start(const char *prefix, const char *const *extra);
/* Start d (asserts it started) with extra options; connect d->c when connect. */
void itest_daemon_up(struct itest_daemon *d, const char *dir, const char *name,
                     const char *const *extra, bool connect);
/* Close d's client and stop it; a daemon never started is fine. */
void itest_daemon_down(struct itest_daemon *d);
/* cmocka teardown: kill children, stop the daemon, remove the directory. */
int env_teardown(void **state);
/* fork(), remembering the child for the teardown. 0 in the child. */
pid_t spawn(void);
/* Wait for a child: its exit status, or 128 + signal. */
int reap(pid_t pid);
ec_client *connect_ok(void);
void daemon_alive(void);

/* Write <dir>/<rel> as an f32 [rows, cols] .npy filled from seed. */
void table_make(struct table *tb, const char *rel, uint64_t rows, uint64_t cols, uint64_t seed);
void table_free(struct table *tb);
void import_npy(ec_client *c, const char *model, int64_t version, const char *path,
                uint64_t partition_bytes);
ec_tensor *resolve_ok(ec_client *c, const char *model, const char *version,
                      const char *tensor);
/* Gather and compare with the source: the gather's error, 1 for a wrong
 * row (on stderr), or 0. Safe in children. */
int gather_check(ec_tensor *t, const int64_t *ids, size_t n, const struct table *tb,
                 uint8_t *buf, size_t cap);
/* Every row, in batches of 64; asserts. */
void gather_all_ok(ec_tensor *t, const struct table *tb);

/* Several statistics in one request; a missing one fails the test. */
void stats_get(ec_client *c, struct statv *s, size_t n);
uint64_t stat_of(ec_client *c, const char *name);
/* Poll a statistic every 10 ms until it is at least want or secs passed;
 * its last value. */
uint64_t stat_wait(ec_client *c, const char *name, uint64_t want, double secs);

uint64_t splitmix(uint64_t *s);
double now_s(void);
/* A shared anonymous mapping, zeroed: how children report counts. */
void *shared_map(size_t len);
/* The partition file under <data_dir>/parts whose origin record says it is
 * (model, version, tensor): its path and layout (asserts one is found). */
void itest_partfile_of(const char *data_dir, const char *model, int64_t version,
                       const char *tensor, char *path, size_t cap, ec_partfile_meta *meta);

/* Rows ids[0..n) of (model, version, tensor) gathered through two daemons'
 * clients x and y: the same bytes (asserts). */
void itest_same_ids(ec_client *x, ec_client *y, const char *model, const char *version,
                    const char *tensor, const int64_t *ids, size_t n);

/* Prewarm and poll until finished (~20 s at most). */
int prewarm_wait(ec_client *c, const char *model, const char *version, unsigned flags,
                 ec_prewarm_progress *out);

#endif
