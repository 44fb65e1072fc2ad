/*
 * wal.h - the write-ahead log of dynamic tables' row updates.
 *
 * What it owns: one directory of log files, wal-<first lsn, 16 hex>.log,
 * and the file being appended to. Every update of a dynamic table (a PUT
 * of n rows, a DEL of n keys) becomes one record with a log sequence number
 * (lsn) one above the previous record's, across files. Who calls it:
 * core/dyntable.c (append, sync, replay at start-up) and
 * core/dyntable_snap.c (gc after a snapshot), on the daemon's server
 * thread. One thread; nothing here is thread-safe.
 *
 * On-disk format (integers little-endian, native stores; see wal.c):
 *
 *   file header, 32 bytes: magic "ECWALF01" (u64), version u32 (1),
 *     reserved u32 (0), first_lsn u64, XXH3-64 of these 24 bytes (u64)
 *   records, back to back from offset 32, each:
 *     header, 48 bytes: magic u32 ("ECWR"), op u8 (1 PUT, 2 DEL),
 *       pad u8[3] (0), table u32, n u32, row_bytes u32 (0 for DEL),
 *       reserved u32 (0), lsn u64, payload bytes u64,
 *       checksum u64 = XXH3-64 of the header with this field 0, then the
 *       payload
 *     payload: keys int64[n], then rows n * row_bytes (PUT only)
 *
 * The first record of a file has the file's first_lsn; a file holds no
 * record past the first one to take it beyond file_bytes (a record larger
 * than file_bytes gets a file of its own).
 *
 * After its last record a file may end with zeros up to the next 4 KiB
 * boundary (fewer than 4,096 bytes, the file's length a multiple of 4,096):
 * direct appends (ec_wal_config.direct) write whole blocks. Open takes
 * such zeros as the end of the records, neither a torn tail nor
 * corruption.
 *
 * Crash semantics:
 *  1. ec_wal_open() reads and checks every record of every file, in lsn
 *     order: magic, op, sizes (inside the file), checksum, and
 *     lsn = previous + 1, across files too.
 *  2. A bad record at the tail of the last file with no valid record after
 *     it (a partial header, a short payload, a bad checksum, zeros: a crash
 *     during an append, which was not acknowledged) is cut off (ftruncate +
 *     fsync), logged and counted in ec_wal_stats.truncated_bytes. A last
 *     file too short for its header (a crash while it was being created)
 *     is removed the same way.
 *  2b. INTERVAL and NONE modes keep a mark, the file `synced`: the lsn
 *     through which the log was fdatasynced (written after the sync). A
 *     machine that stops may leave garbage in what it had not synced,
 *     with valid records after it: a bad record of the last file past the
 *     mark is cut off with everything after it (those updates had been
 *     acknowledged, not synced: the modes' stated loss), logged and counted
 *     as in rule 2. A bad record at or before the mark, torn tail or not,
 *     is corruption (rule 3). BATCH mode keeps no mark. A damaged mark is
 *     ignored (rules 2 and 3 alone).
 *  3. Any other bad record (in an older file, or followed by a valid record
 *     in the last file, or an lsn out of sequence) is corruption: open
 *     fails with EC_ECORRUPT naming the file, the byte offset and what is
 *     wrong, and changes nothing on disk.
 *  4. A new file is created O_EXCL, its header fsynced and the directory
 *     fsynced before a record goes in; the file it follows is fdatasynced
 *     first (in every sync mode), so files never have holes between them.
 *  5. An append that fails part-way leaves the file as it was (ftruncate
 *     back). A failed fdatasync leaves the log unusable (EC_EIO from every
 *     append and sync) until it is closed and opened again: what the
 *     kernel kept of unsynced records is unknown, so they may or may not
 *     be replayed.
 *
 * Sync modes, by what survives a crash of the daemon / of the machine:
 *  BATCH     every acknowledged append / every acknowledged append
 *  INTERVAL  every acknowledged append / appends up to the last
 *            ec_wal_sync() (the caller calls it on a timer)
 *  NONE      every acknowledged append / appends up to the last sync of a
 *            file (at rotation); what a machine crash left damaged past it
 *            is cut (rule 2b).
 */
#ifndef EC_CORE_WAL_H
#define EC_CORE_WAL_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ec_wal ec_wal;

typedef enum ec_wal_sync_mode {
    EC_WAL_SYNC_BATCH = 0,    /* fdatasync before an append returns */
    EC_WAL_SYNC_INTERVAL = 1, /* appends only write; the caller calls ec_wal_sync() */
    EC_WAL_SYNC_NONE = 2,     /* never fdatasync an append; ec_wal_sync() does nothing */
} ec_wal_sync_mode;

/* Record kinds. */
#define EC_WAL_PUT 1
#define EC_WAL_DEL 2

/* Limits of one record; larger appends fail with EC_ETOOBIG. */
#define EC_WAL_MAX_KEYS (1u << 24)
#define EC_WAL_MAX_ROW_BYTES (1u << 24)
#define EC_WAL_MAX_PAYLOAD (1ull << 30)
#define EC_WAL_DEFAULT_FILE_BYTES (64ull << 20)

typedef struct ec_wal_config {
    const char *dir;       /* created 0700 if missing (its parent must exist) */
    ec_wal_sync_mode sync;
    uint64_t file_bytes;   /* start a new file before an append passes this; 0: 64 MiB */
    bool direct;           /* append with O_DIRECT where the file system allows it
                              (wal.c, invariant 6); else through the page cache */
} ec_wal_config;

/* One record, as ec_wal_replay() passes it. keys and rows point into the
 * log's buffer and are valid only during the callback. */
typedef struct ec_wal_record {
    uint64_t lsn;
    uint32_t table;
    uint8_t op;            /* EC_WAL_PUT or EC_WAL_DEL */
    uint32_t n;            /* keys (and rows) */
    uint32_t row_bytes;    /* 0 for DEL */
    const int64_t *keys;   /* n keys */
    const void *rows;      /* n * row_bytes bytes; NULL for DEL */
} ec_wal_record;

typedef struct ec_wal_stats {
    uint64_t files;           /* log files now */
    uint64_t bytes;           /* their total size */
    uint64_t appends;         /* records appended since open */
    uint64_t syncs;           /* fdatasyncs of appended records since open */
    uint64_t first_lsn;       /* the oldest record's lsn on disk; last_lsn + 1 if none */
    uint64_t last_lsn;        /* the newest record's lsn; 0 before the first */
    uint64_t replayed;        /* records passed to ec_wal_replay() callbacks */
    uint64_t truncated_bytes; /* torn tail cut off by open */
    uint64_t removed_files;   /* files deleted by ec_wal_gc() since open */
    uint64_t direct_appends;  /* appends written with O_DIRECT since open */
    uint64_t direct;          /* 1 while appends go O_DIRECT */
} ec_wal_stats;

/* Open the log in cfg->dir (creating it, and its first file, if needed),
 * check every record, cut a torn tail (rule 2 above).
 * @param[in]  cfg  dir must be set; sync and file_bytes as documented.
 * @param[out] out  the handle, written on success only; free it with
 *                  ec_wal_close().
 * @return 0, or EC_EINVAL (cfg, dir or out NULL, an unknown sync mode),
 *         EC_ENOMEM, EC_EIO (a system call failed: the message carries
 *         errno), EC_ENOSPC (no room for a new file), EC_ECORRUPT (rule 3:
 *         the message names the file, the offset and the fault; nothing was
 *         changed on disk). */
int ec_wal_open(const ec_wal_config *cfg, ec_wal **out);

/* Call fn for every record on disk, in lsn order, re-checking each one.
 * fn returns 0 to go on; anything else stops the replay. fn must not call
 * this log's other functions.
 * @return 0, fn's non-zero value as it is, or EC_ENOMEM, EC_EIO,
 *         EC_ECORRUPT (a file changed since open). */
int ec_wal_replay(ec_wal *w, int (*fn)(void *arg, const ec_wal_record *r), void *arg);

/* Append one record with lsn ec_wal_last_lsn(w) + 1, in one write at the
 * end of the current file (a new file first when this one would pass
 * file_bytes); in BATCH mode fdatasync it before returning.
 * @param[in]  op         EC_WAL_PUT or EC_WAL_DEL
 * @param[in]  keys       n keys, 1 <= n <= EC_WAL_MAX_KEYS
 * @param[in]  rows       PUT: n * row_bytes bytes; DEL: ignored (NULL)
 * @param[in]  row_bytes  PUT: 1..EC_WAL_MAX_ROW_BYTES; DEL: ignored (0 stored)
 * @param[out] lsn_out    the record's lsn, on success only; may be NULL
 * @return 0, or EC_EINVAL (NULL, n 0, an unknown op, row_bytes 0),
 *         EC_ETOOBIG (n, row_bytes or the payload above its limit),
 *         EC_ENOSPC, EC_EIO (the message carries errno; the file is as it
 *         was, except after a failed fdatasync: see rule 5). */
int ec_wal_append(ec_wal *w, uint32_t table, uint8_t op, const int64_t *keys, uint32_t n,
                  const void *rows, uint32_t row_bytes, uint64_t *lsn_out);

/* fdatasync what was appended since the last sync: INTERVAL mode's timer.
 * No-op when nothing is pending, and always in NONE mode (and BATCH, where
 * nothing is ever pending).
 * @return 0 or EC_EIO (the log is unusable until reopened: rule 5). */
int ec_wal_sync(ec_wal *w);

/* Change the sync mode of an open log (embcached's SIGHUP): what is pending
 * is synced first, and the mark (rule 2b) is written or removed as the new
 * mode needs, so the crash semantics of the new mode hold from the return.
 * @return 0, EC_EINVAL (NULL log, unknown mode) or EC_EIO (the pending sync
 *         failed: rule 5; the mode is unchanged). */
int ec_wal_set_sync(ec_wal *w, ec_wal_sync_mode mode);

/* The lsn of the newest record (0 when the log never had one). */
uint64_t ec_wal_last_lsn(const ec_wal *w);

/* Delete the oldest closed files none of whose records is needed:
 * needed(arg, table, lsn) is asked for their records, oldest first, and the
 * first file with a needed record stops the collection (so the files left
 * are contiguous in lsn). Never deletes the file being appended to.
 * @param[out] removed_files  how many were deleted; may be NULL
 * @return 0, or EC_EIO (a read or unlink failed; the files before it are
 *         gone), EC_ECORRUPT (a file changed since open; it is kept). */
int ec_wal_gc(ec_wal *w, bool (*needed)(void *arg, uint32_t table, uint64_t lsn), void *arg,
              uint32_t *removed_files);

void ec_wal_stats_get(const ec_wal *w, ec_wal_stats *out);

/* Close the files (no sync: call ec_wal_sync() first in INTERVAL mode) and
 * free w. NULL is allowed. */
void ec_wal_close(ec_wal *w);

/* Fault hook for tests: make every nth write or sync (counting from the
 * next one) of appends, and of file creation, fail as `kind`; n = 0 turns
 * it off. EC_WAL_FAULT_EIO and EC_WAL_FAULT_ENOSPC write half of the
 * record's (or file's) header and then fail with that errno;
 * EC_WAL_FAULT_SYNC fails an fdatasync or fsync with EIO. Tests only. */
enum ec_wal_fault { EC_WAL_FAULT_NONE = 0, EC_WAL_FAULT_EIO, EC_WAL_FAULT_ENOSPC,
                    EC_WAL_FAULT_SYNC };
void ec_wal_inject(ec_wal *w, enum ec_wal_fault kind, unsigned every_nth);

#endif
