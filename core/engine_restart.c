/*
 * engine_restart.c - start-up state: the data directory's lock, the
 * segment (re-attached for a warm restart or created, and its generation
 * bumped), and adoption of what the previous daemon left resident, each
 * entry checked again against the catalog and its checksum.
 *
 * Called by ec_engine_open (engine.c) on the server thread, before
 * anything is served.
 */
#include "engine.h"
#include "core/engine_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "common/log.h"
#include "core/keeper.h"
#include "cuda/backend.h"
#include "shm/index.h"

/* ------------------------------------------------------------------ */
/* Start-up: lock, segment, warm restart                               */

int eng_lock_data_dir(ec_engine *e)
{
    char buf[32];
    int fd, rc;

    if (e->cfg.keeper && e->cfg.keeper->lock_fd >= 0) {
        /* The keeper locked it for us and every worker after us. */
        fd = e->cfg.keeper->lock_fd;
        e->cfg.keeper->lock_fd = -1;
    } else if ((rc = ec_keeper_lock_dir(e->data_dir, &fd)) < 0) {
        return rc;
    }
    /* The worker's pid: what `kill -9` of "the daemon" means for a warm
     * restart (the keeper is its parent). */
    snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) == 0)
        (void)!pwrite(fd, buf, strlen(buf), 0);
    e->lock_fd = fd;
    return 0;
}

struct restart_ctx {
    ec_engine *e;
    uint64_t *keys;
    size_t n, cap;
};

static int collect_entry(uint32_t tensor, uint32_t part, uint64_t off, uint32_t len, void *arg)
{
    struct restart_ctx *c = arg;

    (void)off;
    (void)len;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 1024;
        uint64_t *k = realloc(c->keys, cap * sizeof(*k));
        if (!k)
            return EC_ENOMEM;
        c->keys = k;
        c->cap = cap;
    }
    c->keys[c->n++] = EC_INDEX_KEY(tensor, part);
    return 0;
}

/* Keep what a previous daemon left resident, if it still checks out. */
static int adopt_resident(ec_engine *e)
{
    struct restart_ctx c = {.e = e};
    int rc = ec_index_foreach(&e->seg, collect_entry, &c);

    if (rc) {
        free(c.keys);
        return ec_seterr(rc, "out of memory scanning the index");
    }
    for (size_t i = 0; i < c.n; i++) {
        uint32_t tensor = EC_INDEX_KEY_TENSOR(c.keys[i]), part = EC_INDEX_KEY_PART(c.keys[i]);
        ec_index_ref ref;
        struct tstate *ts = NULL;
        struct unit *u = NULL;
        const char *why = NULL;

        if (!ec_index_lookup(&e->seg, tensor, part, &ref))
            why = "entry out of bounds";
        else if (eng_tensor_get(e, tensor, &ts))
            why = "tensor no longer in the catalog";
        else if (part >= ts->cat.partitions ||
                 ref.length != ec_partfile_part_length(&ts->meta, part))
            why = "partition does not match the catalog";
        else if (ref.offset % EC_SHM_PAGE)
            why = "part of a view placement";
        else if (ec_checksum(e->seg.data + ref.offset, ref.length) !=
                 ts->cat.part_checksums[part])
            why = "checksum mismatch";
        else if (!(u = calloc(1, sizeof(*u))))
            why = "out of memory";
        else if (ec_extent_reserve(e->ext, ref.offset, page_round(ref.length)))
            why = "overlaps another entry";
        if (why) {
            free(u);
            ec_debug("dropping resident partition %u of tensor %u: %s", part, tensor, why);
            ec_index_remove(&e->seg, tensor, part, NULL, NULL);
            e->st.restart_dropped++;
            continue;
        }
        u->tensor = tensor;
        u->part = part;
        u->off = ref.offset;
        u->bytes = page_round(ref.length);
        u->clock_pos = SIZE_MAX;
        u->expires = eng_expiry_of(e);
        if (ec_u64map_put(&e->resident, c.keys[i], u)) {
            ec_extent_release(e->ext, u->off, u->bytes);
            ec_index_remove(&e->seg, tensor, part, NULL, NULL);
            free(u);
            continue;
        }
        eng_clock_add(e, u);
        eng_account(e, u, +1);
        e->st.restart_kept++;
    }
    free(c.keys);
    return 0;
}

/* Create a segment, have the keeper hold it, and seal it. */
static int new_segment(ec_engine *e)
{
    /* A device table per GPU this machine has, even with the tier off
     * now: a restart with --gpu-slab then finds room for it. */
    const ec_backend *b = ec_backend_get(EC_BACKEND_AUTO);
    int gpus = b && b->slab_create ? b->device_count() : 0;
    uint64_t ib = e->cfg.item_bytes == UINT64_MAX ? 0
                  : e->cfg.item_bytes           ? e->cfg.item_bytes
                                                : EC_ITEM_BYTES_DEFAULT;
    int rc = ec_segment_create_geometry(e->cfg.shm_size,
                                        gpus < 0 ? 0
                                        : (unsigned)gpus > EC_SHM_MAX_DEVICES
                                            ? EC_SHM_MAX_DEVICES
                                            : (unsigned)gpus,
                                        ib, &e->seg);

    if (rc)
        return rc;
    if (e->cfg.keeper && (rc = ec_keeper_keep(e->cfg.keeper, e->seg.fd)) < 0)
        ec_warn("%s: a crash of this daemon will lose the segment", ec_last_error());
    if ((rc = ec_segment_seal(&e->seg)) < 0) {
        ec_segment_close(&e->seg);
        return rc;
    }
    return 0;
}

/* Take over the segment the keeper kept, or create one, and bump the
 * generation. */
int eng_open_segment(ec_engine *e)
{
    struct ec_keeper *k = e->cfg.keeper;
    bool warm = false;
    int rc;

    /* Earlier versions left a named segment in /dev/shm: it can never be
     * re-attached now, so it is only memory lost. */
    ec_segment_remove_legacy(e->data_dir);
    if (k && k->seg_base) {
        rc = ec_segment_attach(k->seg_fd, k->seg_base, k->seg_size, &e->seg);
        if (rc == 0 && e->seg.size != e->cfg.shm_size)
            rc = ec_seterr(EC_EINVAL, "it has %zu bytes, %llu were asked for", e->seg.size,
                           (unsigned long long)e->cfg.shm_size);
        if (rc == 0) {
            k->seg_fd = -1; /* the engine's now; the keeper holds its own */
            k->seg_base = NULL;
            warm = true;
        } else {
            ec_warn("the kept segment cannot be used (%s): starting cold", ec_last_error());
            if (e->seg.base) {
                /* attached, then refused: the mapping is the keeper's copy */
                e->seg.base = NULL;
                e->seg.fd = -1;
            }
            ec_keeper_drop(k); /* the keeper lets go; so do we */
        }
    }
    if (!warm) {
        if ((rc = new_segment(e)) < 0)
            return rc;
        eng_views_reset(e); /* the journal was about another segment */
        e->generation = atomic_load(&e->seg.hdr->generation);
    } else {
        e->generation = atomic_load(&e->seg.hdr->generation) + 1;
        ec_info("took over the kept segment of %zu bytes (warm restart, generation %llu)",
                e->seg.size, (unsigned long long)e->generation);
    }
    rc = ec_extents_new(e->seg.data_size, &e->ext);
    if (rc)
        return rc;
    /* Bump the generation before anything is served: clients of the previous
     * daemon see it change and reconnect. */
    atomic_store_explicit(&e->seg.hdr->daemon_pid, (uint32_t)getpid(), memory_order_relaxed);
    atomic_store_explicit(&e->seg.hdr->generation, e->generation, memory_order_release);
    return 0;
}

/* Keep what the previous daemon left resident (needs the pager: it opens
 * the tensors' files). */
int eng_adopt_segment(ec_engine *e)
{
    int rc;

    /* Views of the previous worker's clients first: their memory is not
     * anyone else's to take. */
    eng_views_adopt(e);
    rc = adopt_resident(e);

    if (rc == 0 && (e->st.restart_kept || e->st.restart_dropped))
        ec_info("warm restart: kept %llu resident partitions, dropped %llu",
                (unsigned long long)e->st.restart_kept,
                (unsigned long long)e->st.restart_dropped);
    eng_gauges(e);
    return rc;
}
