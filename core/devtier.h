/*
 * devtier.h - the daemon's device tier: a slab per GPU holding copies of hot
 * partitions, published in the segment's device indexes.
 *
 * Owns, per GPU the backend reaches (up to the segment's device tables):
 * the slab (backend->slab_create, exported as a file descriptor that the
 * DEVICES reply passes to clients), a daemon-private
 * extent allocator over it, the device's CLOCK, and a promotion thread
 * bound to the NUMA node nearest the GPU that copies partitions from the
 * host tier into the slab. The tier is inclusive: a partition is promoted
 * only while it is resident in the host tier, and ec_devtier_drop() must be
 * called whenever the host tier drops one, so a device entry never outlives
 * its host copy (a refresh or a retire reaches the device tier too).
 *
 * GPUs in EXCLUSIVE_PROCESS (or PROHIBITED) compute mode get no tier and no
 * context of the daemon's: one would lock every client out of the GPU.
 *
 * Freeing a slab: extents inside a live slab are reused only through limbo
 * (epochs drained, below). The slab itself is freed only at close, without
 * a drain: by then the server has dropped its clients, and a client that
 * mapped the slab keeps the memory (and its last contents) until it unmaps
 * it, since the slab is shared as a descriptor, not an IPC handle.
 *
 * Reclamation: clients read slab and host extents asynchronously (a GPU
 * gather), so extents are not freed when their entry is removed but put in
 * limbo with an epoch tag and freed once no reader can still use them (the
 * protocol is in shm/layout.h, "Device reads"). Host extents go through the
 * same limbo (ec_devtier_retire_host) when the tier is on; the engine frees
 * them in the callback it passes to ec_devtier_reclaim().
 *
 * Sizing, per GPU, from what the backend says of its memory (device_memory):
 * the slab is the smallest of
 *  - what was asked (--gpu-slab), or by default (EC_DEVTIER_SLAB_AUTO)
 *    1/16 of the GPU's total memory;
 *  - the segment's data area: the tier is inclusive, so a larger slab could
 *    never be filled;
 *  - the GPU's free memory less a reserve of max(1 GiB, 1/16 of the GPU)
 *    kept for the processes that use it (their CUDA contexts, the
 *    framework's weights, KV cache and activations).
 * 1/16 because the frameworks that start after the daemon take a fraction
 * of the whole GPU and check it is free (vLLM 0.9 of it by default, SGLang
 * about 0.88): a sixteenth (8.8 of an H200's 141 GB, 5 of an H100's 80)
 * plus the daemon's context fits in the tenth they leave. The choice and
 * why are logged. Where the backend cannot tell, the default is the smaller
 * of 1 GiB and the data area. A cap that leaves less than 64 MiB (or less
 * than was asked, when that was under 64 MiB) leaves the GPU's tier off.
 *
 * Failures: a slab that cannot be allocated is retried at half the size
 * down to 64 MiB, then that GPU's tier stays off; a copy that fails with a
 * device error turns the GPU's tier off (entries removed, slab generation
 * 0). The host path keeps serving either way.
 *
 * Threads: every function is called from the server thread, except that
 * promotion copies run on the per-GPU threads this module starts.
 */
#ifndef EC_CORE_DEVTIER_H
#define EC_CORE_DEVTIER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/topology.h"
#include "cuda/backend.h"
#include "shm/segment.h"

typedef struct ec_devtier ec_devtier;

/* ec_devtier_config.slab_bytes: size each GPU's slab by the rule above. */
#define EC_DEVTIER_SLAB_AUTO UINT64_MAX

typedef struct ec_devtier_config {
    uint64_t slab_bytes;       /* per GPU, at most (see Sizing); 0 turns the tier
                                * off; EC_DEVTIER_SLAB_AUTO: the default */
    unsigned promote_touches;  /* touches within a tick that make a partition hot; 0: 2 */
    uint64_t promote_bytes;    /* most bytes promoted per tick and GPU; 0: 256 MiB */
} ec_devtier_config;

/* One GPU, as stats and the DEVICES reply describe it. */
typedef struct ec_devtier_info {
    int device;
    bool on;                   /* the tier is on for it */
    uint64_t slab_gen, slab_bytes, used_bytes, partitions;
    int numa_node;
    char busid[16];
    uint8_t handle[EC_SLAB_HANDLE_BYTES];
    int fd;                    /* emu: the slab's memfd; -1 otherwise */
} ec_devtier_info;

/* Start the tier on every GPU of `b` up to the segment's device tables,
 * registering the segment with the GPUs for DMA. Device indexes left by a
 * previous daemon are cleared first (their slabs died with it). With no
 * GPU, a backend without a device tier, or slab_bytes 0, the tier is off
 * and every other call is a cheap no-op. generation is the daemon's; slab
 * generations derive from it, so a handle never survives a restart.
 * topo may be NULL. Never fails: what cannot start is logged and stays off. */
ec_devtier *ec_devtier_open(ec_segment *seg, const ec_backend *b, const ec_devtier_config *cfg,
                            uint64_t generation, const ec_topology *topo);
/* Stop the threads, remove every device entry, free the slabs. */
void ec_devtier_close(ec_devtier *d);

/* True when at least one GPU's tier is on (reclamation is then deferred). */
bool ec_devtier_active(const ec_devtier *d);
/* GPUs described by ec_devtier_info (on or off). */
unsigned ec_devtier_devices(const ec_devtier *d);
int ec_devtier_info_get(const ec_devtier *d, unsigned dev, ec_devtier_info *out);

/* A client read a partition (from its access ring). */
void ec_devtier_touch(ec_devtier *d, uint64_t key);
/* Promote every host-resident partition of these tensors to every GPU, as
 * room allows, ahead of the hot ones (EC_PREWARM_DEVICE). */
void ec_devtier_want(ec_devtier *d, const uint32_t *tensors, uint32_t n, const uint64_t *parts);
/* The host tier dropped (tensor, part): drop its device copies. */
void ec_devtier_drop(ec_devtier *d, uint32_t tensor, uint32_t part);

/* Start an epoch for a removal: returns the tag of what was removed before
 * this call (layout.h "Device reads"). */
uint64_t ec_devtier_epoch_bump(ec_devtier *d);
/* Put a host extent in limbo with tag `tag`. */
void ec_devtier_retire_host(ec_devtier *d, uint64_t off, uint64_t bytes, uint64_t tag);

/* Free what no reader can use any more: min_active is the least epoch held
 * by any client (UINT64_MAX when none). Host extents are handed to
 * free_host. Returns the bytes freed. */
uint64_t ec_devtier_reclaim(ec_devtier *d, uint64_t min_active,
                            void (*free_host)(void *arg, uint64_t off, uint64_t bytes),
                            void *arg);
/* Bytes of host extents in limbo. */
uint64_t ec_devtier_limbo_host_bytes(const ec_devtier *d);
/* The tag of the oldest extent waiting in limbo (a reader holding an epoch
 * below it keeps it there), or UINT64_MAX when limbo is empty. */
uint64_t ec_devtier_limbo_oldest(const ec_devtier *d);

/* Per tick: publish finished promotions, start new ones (hot partitions,
 * then wanted ones), update the gauges in the header. */
void ec_devtier_tick(ec_devtier *d, uint64_t min_active);

/* Statistics, as name/value pairs (device<i>_*). */
int ec_devtier_stats(const ec_devtier *d, int (*cb)(const char *name, uint64_t v, void *arg),
                     void *arg);

#endif
