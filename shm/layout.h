/*
 * layout.h - the on-shm layout of the embcache segment and session pages.
 *
 * This file is the contract between embcached (the only writer of the
 * segment) and every client (read-only mappings). All fields are
 * fixed-width, little-endian on the host, and addressed by offsets from the
 * segment base, never by pointers. A layout change bumps
 * EC_SHM_LAYOUT_VERSION; a daemon or client that finds another version
 * refuses the segment.
 *
 * Segment:
 *
 *   0                 header (one 4 KiB page)
 *   index_off         index: index_slots entries of 32 bytes, open addressing
 *   dev[i].index_off  device index i (i < device_tables): index_slots entries
 *                     each, the same structure; offsets into GPU i's slab
 *   data_off          data area: partition extents, 4 KiB granular
 *   segment_size
 *
 * Invariants (checked by ec_segment_validate()):
 *   1. magic == EC_SHM_MAGIC, layout_version == EC_SHM_LAYOUT_VERSION,
 *      header_size == EC_SHM_HEADER_SIZE.
 *   2. index_off == header_size; index_slots is a power of two >= 64;
 *      index_off + index_slots * sizeof(entry) <= data_off.
 *   3. data_off and data_size are multiples of EC_SHM_PAGE and
 *      data_off + data_size <= segment_size == the mapped size.
 *   4. device_tables <= EC_SHM_MAX_DEVICES and device table i sits at
 *      index_off + (i + 1) * index_slots * sizeof(entry), before data_off.
 *
 * Index entry seqlock protocol (the daemon is the single writer):
 *   writer: seq += 1 (odd, relaxed) ; release fence ; write fields (relaxed)
 *           ; seq += 1 (even, release)
 *   reader: s1 = seq (acquire); odd -> retry ; read fields (relaxed)
 *           ; copy rows from data + offset ; acquire fence
 *           ; s2 = seq (relaxed) ; s1 != s2 -> the copy may be torn: retry
 *   The daemon bumps an entry's seq (removes it) before the extent it
 *   describes is freed, so any copy from a reused extent fails the check.
 *   Sequences only grow, so there is no ABA.
 *
 * Device tier: the daemon copies hot partitions of the host tier into a
 * cudaMalloc slab per GPU (inclusive: a partition on a GPU is also in the
 * data area) and publishes them in that GPU's device index with the same
 * seqlock protocol; offsets are into the slab, whose size and generation
 * are in dev[i]. slab_gen changes whenever the slab is replaced or dropped
 * (0: the tier is off); a client compares it with the generation of the
 * slab it opened before using any device entry.
 *
 * Device reads are epoch-protected (a GPU gather copies asynchronously, so
 * a sequence check after the copy is impossible):
 *   client: a = epoch (acquire); store a in a free epoch_slot of its session
 *           page; seq_cst fence; look up entries (host or device); launch
 *           the copy; clear the slot when the copy has completed.
 *   daemon: remove an entry (bump its seq); E = ++epoch; seq_cst fence; the
 *           extent goes to limbo with tag E and is freed only once every
 *           occupied epoch_slot of every session holds a value >= E.
 *   A client that saw the old entry announced an epoch < E before looking,
 *   so it holds the extent; one that announced >= E looked after the
 *   removal and cannot have seen it. A slot that stays occupied too long
 *   only holds memory back; the daemon logs it and, past a limit, drops the
 *   session (a client can only lie about itself).
 */
#ifndef EC_SHM_LAYOUT_H
#define EC_SHM_LAYOUT_H

#include <assert.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define EC_SHM_MAGIC 0x31454843424d4545ULL /* "EEMBCHE1" little-endian */
#define EC_SHM_LAYOUT_VERSION 2u
#define EC_SHM_PAGE 4096u
#define EC_SHM_HEADER_SIZE 4096u
#define EC_SHM_MIN_SLOTS 64u
#define EC_SHM_MAX_DEVICES 8u

/* One GPU's device tier, in the header. index_off is written at creation;
 * the rest by the daemon. slab_size is stored before slab_gen (release);
 * a reader loads slab_gen (acquire) first. */
typedef struct ec_shm_device {
    uint64_t index_off;               /* this device's index table */
    _Atomic uint64_t slab_gen;        /* 0: no slab; else its generation */
    _Atomic uint64_t slab_size;       /* bytes of the slab */
    _Atomic uint64_t used_bytes;      /* gauge */
    _Atomic uint64_t resident_partitions; /* gauge */
    _Atomic int32_t numa_node;        /* nearest NUMA node, -1 unknown */
    uint32_t pad;
    char busid[16];                   /* PCI bus id, NUL-terminated */
} ec_shm_device;

static_assert(sizeof(ec_shm_device) == 64, "device record is 64 bytes");

/* Index entry flags. */
#define EC_ENTRY_RESIDENT 0x1u /* offset/length describe valid, checked data */

typedef struct ec_shm_header {
    /* Written once when the segment is created; read-only afterwards. */
    uint64_t magic;
    uint32_t layout_version;
    uint32_t header_size;
    uint64_t segment_size;
    uint64_t index_off;
    uint64_t index_slots;
    uint64_t data_off;
    uint64_t data_size;
    uint64_t created_unix;
    uint8_t reserved0[64];

    /* Written by the daemon on attach; clients load with acquire. A client
     * whose connection's generation differs from this one is stale. */
    _Atomic uint64_t generation;
    _Atomic uint32_t daemon_pid;
    uint32_t pad1;
    uint8_t reserved1[48];

    /* Daemon-maintained gauges, relaxed; for monitoring only. */
    _Atomic uint64_t used_bytes;
    _Atomic uint64_t resident_partitions;
    uint8_t reserved2[48];

    /* Device tier (layout.h "Device tier" and "Device reads"). */
    _Atomic uint64_t epoch;           /* reclamation epoch, daemon-bumped */
    uint32_t device_tables;           /* written at creation */
    uint32_t pad3;
    uint8_t reserved3[48];
    ec_shm_device dev[EC_SHM_MAX_DEVICES];
} ec_shm_header;

static_assert(offsetof(ec_shm_header, generation) == 128, "header layout");
static_assert(offsetof(ec_shm_header, used_bytes) == 192, "header layout");
static_assert(offsetof(ec_shm_header, epoch) == 256, "header layout");
static_assert(offsetof(ec_shm_header, dev) == 320, "header layout");
static_assert(sizeof(ec_shm_header) <= EC_SHM_HEADER_SIZE, "header fits its page");

typedef struct ec_index_entry {
    _Atomic uint64_t seq;    /* even: stable; odd: being written */
    _Atomic uint64_t key;    /* EC_INDEX_KEY(tensor, partition); 0 = empty */
    _Atomic uint64_t offset; /* byte offset of the partition from data_off */
    _Atomic uint32_t length; /* bytes of partition data at offset */
    _Atomic uint32_t flags;  /* EC_ENTRY_* */
} ec_index_entry;

static_assert(sizeof(ec_index_entry) == 32, "index entry is 32 bytes");

#define EC_INDEX_KEY(tensor, part) (((uint64_t)(tensor) << 32) | (uint32_t)(part))
#define EC_INDEX_KEY_TENSOR(key) ((uint32_t)((key) >> 32))
#define EC_INDEX_KEY_PART(key) ((uint32_t)(key))

/*
 * Session page: one per client connection, a memfd the daemon creates and
 * hands to that client alone, read-write. The client writes its counters and
 * its access ring; the daemon reads them as untrusted input (a client can
 * only lie about itself) and validates every ring entry before use.
 */
#define EC_SESSION_MAGIC 0x31535345434d4545ULL /* "EEMCESS1" */
#define EC_SESSION_VERSION 2u
#define EC_SESSION_SIZE 65536u
#define EC_SESSION_RING 7680u
#define EC_SESSION_EPOCH_SLOTS 64u

typedef struct ec_session_page {
    /* Written by the daemon before the page is handed over. */
    uint64_t magic;
    uint32_t version;
    uint32_t ring_slots;
    uint64_t generation;
    uint64_t client_id;
    uint8_t reserved0[32];

    /* Written by the client (relaxed); untrusted. */
    _Atomic uint64_t gathers;
    _Atomic uint64_t rows;
    _Atomic uint64_t hits;     /* rows found resident at their first lookup */
    _Atomic uint64_t misses;   /* rows that were not (and needed a fault) */
    _Atomic uint64_t retries;  /* seqlock re-reads */
    _Atomic uint64_t faults;   /* fault requests sent */
    _Atomic uint64_t device_rows; /* rows GPU gathers read from the device tier */
    _Atomic uint64_t mapped_rows; /* rows GPU gathers read from mapped host memory */

    /* Access ring: a client thread claims slot head % ring_slots by bumping
     * head, then stores EC_INDEX_KEY(tensor, part) of the partition it
     * touched there. The daemon keeps its own tail and treats entries as
     * hints (a slot may be read before it is filled). */
    _Atomic uint64_t ring_head;
    uint8_t reserved2[56];
    _Atomic uint64_t ring[EC_SESSION_RING];

    /* Epochs of the client's device gathers in flight (layout.h "Device
     * reads"); 0 is a free slot. A thread claims a free slot by CAS. */
    _Atomic uint64_t epoch_slot[EC_SESSION_EPOCH_SLOTS];
} ec_session_page;

static_assert(offsetof(ec_session_page, gathers) == 64, "session layout");
static_assert(offsetof(ec_session_page, ring) == 192, "session layout");
static_assert(sizeof(ec_session_page) <= EC_SESSION_SIZE, "session fits");

#endif
