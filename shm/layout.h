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
 *   item_off          item index: item_buckets buckets of 64 bytes (may be 0)
 *   data_off          data area: partition extents and item slabs, 4 KiB
 *                     granular
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
 *   5. item_off == the end of the last device table; item_off +
 *      item_buckets * 64 <= data_off.
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
 * Item store (shm/items.h): a general store of (key -> bytes) in the data
 * area, for the rows of tensors cached by rows (and, later, results). An
 * item is an 8-byte key followed by its value, 8-byte aligned, inside a
 * slab: a 1 MiB-aligned extent of the data area holding items of one size
 * after a 64-byte slab header (the daemon's; clients never read it). The
 * item index is a table of 64-byte buckets, each a seqlock and 7 slots; a
 * key may sit in one of two buckets (b1, b2 from its hash). A slot is 0 or
 * (tag << 40 | item offset / 8): a 24-bit tag from the key's hash, so a
 * reader reads the item's key only where the tag matches, and compares the
 * whole key there - a tag collision is never a false hit.
 *   writer: the bucket's seq moves as the index entry's does (odd while
 *           written); an item's bytes are written before its slot is
 *           published, and its slot is cleared (seq bumped) before the item's
 *           bytes are reused.
 *   reader: s1 = seq (acquire), odd -> retry; find the slot by tag; acquire
 *           fence; seq == s1 or retry; compare the key at the item; copy the
 *           value; acquire fence; seq == s1, or the copy may be torn: retry.
 *
 * Results (shm/results.h): items whose key has EC_ITEM_KIND_RESULT, each a
 * record of a namespace's slot and generation, the key in full and the
 * value. The header's ns[slot] says the namespace's current generation: a
 * reader treats a record of another generation as a miss, so an
 * invalidation (gen bumped) takes effect at once, before its items are
 * dropped. ns[slot].wake is a futex word: waiters for a result sleep on it
 * (FUTEX_WAIT only reads), the daemon bumps it and wakes them. A private
 * namespace's records live in its owner's arena: a segment of the same
 * layout that only that uid maps; its generation stays here.
 *
 * Device tier: the daemon copies hot partitions of the host tier into a
 * slab per GPU (cuMemCreate memory shared with clients as a file descriptor) (inclusive: a partition on a GPU is also in the
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
 *           the copy; clear the slot when the copy has completed (the
 *           GPU does, by a stream memory write queued after the kernel,
 *           or a host function the driver runs then).
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

#include "embcache.h"

#define EC_SHM_MAGIC 0x31454843424d4545ULL /* "EEMBCHE1" little-endian */
#define EC_SHM_LAYOUT_VERSION 4u
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

/* One namespace of results, in the header (layout.h "Results"). */
typedef struct ec_shm_ns {
    _Atomic uint32_t gen;             /* 0: no namespace in this slot */
    _Atomic uint32_t wake;            /* bumped (and futex-woken) when a result is
                                       * stored or a lease ends */
} ec_shm_ns;

#define EC_SHM_NS_OFF 1024u

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
    uint64_t item_off;                /* item index (items.h); 0 buckets: none */
    uint64_t item_buckets;
    uint32_t arena_uid1;              /* a private result arena's owner uid + 1;
                                       * 0 in the main segment */
    uint8_t reserved0[44];

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
    uint8_t reserved4[EC_SHM_NS_OFF - 320 - EC_SHM_MAX_DEVICES * sizeof(ec_shm_device)];

    /* Namespaces of results (layout.h "Results"), by slot. */
    ec_shm_ns ns[EC_NS_MAX];
} ec_shm_header;

static_assert(offsetof(ec_shm_header, item_off) == 64, "header layout");
static_assert(offsetof(ec_shm_header, generation) == 128, "header layout");
static_assert(offsetof(ec_shm_header, used_bytes) == 192, "header layout");
static_assert(offsetof(ec_shm_header, epoch) == 256, "header layout");
static_assert(offsetof(ec_shm_header, dev) == 320, "header layout");
static_assert(offsetof(ec_shm_header, ns) == EC_SHM_NS_OFF, "header layout");
static_assert(sizeof(ec_shm_header) <= EC_SHM_HEADER_SIZE, "header fits its page");

typedef struct ec_index_entry {
    _Atomic uint64_t seq;    /* even: stable; odd: being written */
    _Atomic uint64_t key;    /* EC_INDEX_KEY(tensor, partition); 0 = empty */
    _Atomic uint64_t offset; /* byte offset of the partition from data_off */
    _Atomic uint32_t length; /* bytes of partition data at offset */
    _Atomic uint32_t flags;  /* EC_ENTRY_* */
} ec_index_entry;

static_assert(sizeof(ec_index_entry) == 32, "index entry is 32 bytes");

/* One bucket of the item index (see "Item store" above). */
#define EC_ITEM_WAYS 7u
#define EC_ITEM_OFF_BITS 40u
#define EC_ITEM_OFF_MASK ((1ull << EC_ITEM_OFF_BITS) - 1)
#define EC_ITEM_TAG_MASK 0xffffffull

typedef struct ec_item_bucket {
    _Atomic uint64_t seq;                 /* even: stable; odd: being written */
    _Atomic uint64_t slot[EC_ITEM_WAYS];  /* 0, or tag << 40 | item offset / 8 */
} ec_item_bucket;

static_assert(sizeof(ec_item_bucket) == 64, "an item bucket is one cache line");

/* Item keys: the top two bits say what the item is. A row of a tensor
 * cached by rows: kind 1, tensor id < 2^22, row < 2^40. */
#define EC_ITEM_KIND_SHIFT 62u
#define EC_ITEM_KIND_ROW 1ull
#define EC_ITEM_ROW_TENSOR_MAX ((1u << 22) - 1)
#define EC_ITEM_ROW_MAX ((1ull << 40) - 1)
#define EC_ITEM_ROW_KEY(tensor, row)                                                      \
    ((EC_ITEM_KIND_ROW << EC_ITEM_KIND_SHIFT) | ((uint64_t)(tensor) << 40) | (uint64_t)(row))
#define EC_ITEM_KEY_KIND(key) ((key) >> EC_ITEM_KIND_SHIFT)
#define EC_ITEM_KEY_TENSOR(key) ((uint32_t)(((key) >> 40) & EC_ITEM_ROW_TENSOR_MAX))
#define EC_ITEM_KEY_ROW(key) ((key) & EC_ITEM_ROW_MAX)

/* Slab header, at the start of every 1 MiB slab of items. Written by the
 * daemon only; a restarted daemon checks it before adopting items. */
#define EC_SLAB_BYTES (1u << 20)
#define EC_SLAB_MAGIC 0x31424c534d454545ULL /* "EEEMSLB1" */
#define EC_SLAB_HEADER 64u

typedef struct ec_slab_header {
    uint64_t magic;
    uint32_t item_bytes;     /* one item: its 8-byte key and the value, padded to 8 */
    uint32_t nitems;         /* (EC_SLAB_BYTES - EC_SLAB_HEADER) / item_bytes */
    uint64_t value_bytes;    /* bytes of each value */
    uint64_t sum;            /* XOR of the checksums of the items in the index */
    uint8_t reserved[32];
} ec_slab_header;

static_assert(sizeof(ec_slab_header) == EC_SLAB_HEADER, "slab header size");

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
#define EC_SESSION_VERSION 5u /* 5: host_reads */
#define EC_SESSION_SIZE 262144u
#define EC_SESSION_RING 32000u
#define EC_SESSION_EPOCH_SLOTS 64u

#define EC_SESSION_TENSORS 32u
#define EC_SESSION_NS 32u

/* A namespace's counts in a session page (slot + 1; 0: free). */
typedef struct ec_session_ns {
    _Atomic uint32_t slot1;
    uint32_t pad;
    _Atomic uint64_t hits, misses, negative_hits, stale;
} ec_session_ns;

typedef struct ec_session_tensor {
    _Atomic uint32_t tensor;   /* 0: free */
    uint32_t pad;
    _Atomic uint64_t rows, hits;
} ec_session_tensor;

typedef struct ec_session_page {
    /* Written by the daemon before the page is handed over. */
    uint64_t magic;
    uint32_t version;
    uint32_t ring_slots;
    uint64_t generation;
    uint64_t client_id;
    /* Written by the daemon when it drops the client for good: why
     * (EC_SESSION_REVOKED_*), read by the client's ec_view_check(). */
    _Atomic uint32_t revoked;
    uint32_t revoked_after;    /* the lease it outlived, seconds */
    uint8_t reserved0[24];

    /* Written by the client (relaxed); untrusted. */
    _Atomic uint64_t gathers;
    _Atomic uint64_t rows;
    _Atomic uint64_t hits;     /* rows found resident at their first lookup */
    _Atomic uint64_t misses;   /* rows that were not (and needed a fault) */
    _Atomic uint64_t retries;  /* seqlock re-reads */
    _Atomic uint64_t faults;   /* fault requests sent */
    _Atomic uint64_t device_rows; /* rows GPU gathers read from the device tier */
    _Atomic uint64_t mapped_rows; /* rows GPU gathers read from mapped host memory */
    _Atomic uint64_t staged_rows; /* rows GPU gathers copied through host memory */

    /* Access ring: a client thread claims slot head % ring_slots by bumping
     * head, then stores what it touched there: EC_INDEX_KEY(tensor, part) of
     * a partition, or EC_RING_ITEM_HINT(tag, off8) of an item. The daemon
     * keeps its own tail and treats entries as hints (a slot may be read
     * before it is filled; a lie costs the liar its own hit ratio). */
    _Atomic uint64_t ring_head;
    /* How GPU gathers of this client read rows of the host tier, per GPU
     * ordinal of the client (EC_HOST_READS_*; 0: GPU not used yet). Set
     * once per GPU by the client; untrusted, for stats. */
    _Atomic uint32_t host_reads[EC_SHM_MAX_DEVICES];
    /* How its GPU gathers give their epoch back, per GPU ordinal
     * (EC_EPOCH_RELEASE_*; 0: GPU not used yet). Untrusted, for stats. */
    _Atomic uint8_t epoch_release[EC_SHM_MAX_DEVICES];
    _Atomic uint64_t gpu_resolved_rows; /* rows of ids on a GPU found by the GPU */
    _Atomic uint64_t ring[EC_SESSION_RING];

    /* Epochs of the client's device gathers in flight (layout.h "Device
     * reads"); 0 is a free slot. A thread claims a free slot by CAS. */
    _Atomic uint64_t epoch_slot[EC_SESSION_EPOCH_SLOTS];

    /* Rows gathered and found resident, per tensor, for `embcache stats`:
     * a tensor handle claims a slot (tensor 0 -> its id, by CAS) when it is
     * resolved, or shares the slot of its tensor; tensors past the last slot
     * are counted in the totals above only. Untrusted, like the rest. */
    ec_session_tensor tstat[EC_SESSION_TENSORS];

    /* Result lookups per namespace, claimed like tstat. Untrusted. */
    ec_session_ns nsstat[EC_SESSION_NS];
} ec_session_page;

/* ec_session_page.host_reads: how a client's kernels reach host rows. */
#define EC_HOST_READS_NONE 0u
#define EC_HOST_READS_MAPPED 1u      /* the segment registered read-only, mapped */
#define EC_HOST_READS_STAGED 2u      /* cudaDevAttrHostRegisterReadOnlySupported
                                      * is 0: copied through a pinned buffer */
#define EC_HOST_READS_STAGED_FAILED 3u /* registration failed: copied through a
                                        * pinned buffer, not retried */

/* ec_session_page.epoch_release: who clears a device gather's epoch slot. */
#define EC_EPOCH_RELEASE_NONE 0u
#define EC_EPOCH_RELEASE_STREAM 1u   /* the GPU, by a stream memory write after
                                      * the kernel */
#define EC_EPOCH_RELEASE_HOST 2u     /* a host function the driver runs after
                                      * the kernel (no stream writes, or the
                                      * session page could not be registered) */

/* Why the daemon revoked a session (ec_session_page.revoked). */
#define EC_SESSION_REVOKED_NONE 0u
#define EC_SESSION_REVOKED_STOPPED 1u /* stopped longer than --pin-lease with views */

/* An item hint in the access ring: bit 63, 23 bits of the item's tag, and
 * its offset / 8 (the slot word of the item index, re-packed). */
#define EC_RING_ITEM (1ull << 63)
#define EC_RING_ITEM_HINT(tag, off8)                                                      \
    (EC_RING_ITEM | ((uint64_t)((tag) & 0x7fffffu) << 40) | ((off8) & EC_ITEM_OFF_MASK))

static_assert(offsetof(ec_session_page, gathers) == 64, "session layout");
static_assert(offsetof(ec_session_page, host_reads) == 144, "session layout");
static_assert(offsetof(ec_session_page, epoch_release) == 176, "session layout");
static_assert(offsetof(ec_session_page, gpu_resolved_rows) == 184, "session layout");
static_assert(offsetof(ec_session_page, ring) == 192, "session layout");
static_assert(sizeof(ec_session_page) <= EC_SESSION_SIZE, "session fits");

#endif
