/*
 * results_store.c - where the cache manager keeps a namespace's records.
 *
 * Shared namespaces: the engine's item store, so that results, rows and
 * partitions share one budget and one eviction policy.
 *
 * Private namespaces: an arena per owner uid, a segment of the standard
 * layout (header, item index, data area of 1 MiB slabs) in a sealed memfd
 * of its own, with an item store of its own, handed (read-only) to that
 * uid's connections only. Every client maps the engine's segment, so a
 * private namespace's values cannot be there: this is what keeps another
 * uid from reading them. An arena's memory is a per-uid quota
 * (--result-arena) beside the budget, not a part of it: a sealed memfd
 * cannot give pages back piecemeal to a shared budget, and one uid's
 * results must not evict another's. The keeper holds each arena as it
 * holds the segment (mapped before the seal), so a restarted worker adopts
 * it: its header names the owner uid, and only records of that uid's
 * private namespaces at their current generation are kept.
 *
 * Runs on the server thread (results.c calls it).
 */
#include "core/results_impl.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "core/keeper.h"
#include "shm/results.h"

/* The average record the arena's item index is sized for. */
#define ARENA_ITEM_BYTES 1024u

int rs_main_init(ec_resmgr *m)
{
    m->main.seg = m->seg;
    m->main.items = ec_engine_items(m->e);
    m->main.arena = false;
    return 0;
}

void rs_unpublished(void *arg, uint64_t key, uint64_t bytes)
{
    ec_resmgr *m = arg;
    uint32_t slot = EC_RESULT_KEY_NS(key);
    struct rns *ns;

    if (EC_ITEM_KEY_KIND(key) != EC_ITEM_KIND_RESULT || slot >= EC_NS_MAX)
        return;
    ns = &m->ns[slot];
    if (ec_u64map_del(&m->negative, key) && ns->negative_items)
        ns->negative_items--;
    if (!ns->live)
        return;
    if (ns->items)
        ns->items--;
    ns->bytes = ns->bytes >= bytes ? ns->bytes - bytes : 0;
    if (!m->removing)
        ns->evictions++;
}

static int arena_slab_alloc(void *arg, bool may_evict, uint64_t *off)
{
    struct rstore *st = arg;

    (void)may_evict;
    if (ec_extent_alloc_aligned(st->ext, EC_SLAB_BYTES, EC_SLAB_BYTES, off) == 0)
        return 0;
    return EC_ENOSPC;
}

static void arena_slab_free(void *arg, uint64_t off)
{
    struct rstore *st = arg;

    (void)ec_extent_release(st->ext, off, EC_SLAB_BYTES);
}

/* The arena's unpublish call goes to the manager, whose pointer the store
 * keeps beside it: struct arena wraps both. */
struct arena {
    struct rstore st;
    ec_resmgr *m;
};

static void arena_unpublished(void *arg, uint64_t key, uint64_t bytes)
{
    struct arena *a = arg;

    rs_unpublished(a->m, key, bytes);
}

/* May a kept arena's item stay? A result of a private namespace of the
 * arena's owner (its generation is checked after, from the record). */
static bool arena_valid(void *arg, uint64_t key, uint64_t value_bytes)
{
    struct arena *a = arg;
    uint32_t slot = EC_RESULT_KEY_NS(key);
    const struct rns *ns = slot < EC_NS_MAX ? &a->m->ns[slot] : NULL;

    return EC_ITEM_KEY_KIND(key) == EC_ITEM_KIND_RESULT && ns && ns->live &&
           !(ns->cat.flags & EC_NS_SHARED) && ns->cat.owner_uid == (uint32_t)a->st.uid &&
           value_bytes >= sizeof(ec_result_hdr);
}

static int arena_reserve_slab(void *arg, uint64_t off)
{
    struct arena *a = arg;

    return ec_extent_reserve(a->st.ext, off, EC_SLAB_BYTES);
}

/* The arena of uid the keeper kept, attached to a->st.own; 0 when none. */
static int arena_kept(ec_resmgr *m, uid_t uid, struct arena *a)
{
    ec_keeper *k = m->keeper;

    for (unsigned i = 0; k && i < k->narenas; i++) {
        ec_keeper_arena *ka = &k->arenas[i];
        const ec_shm_header *h = ka->base;
        if (ka->fd < 0 || ka->size < EC_SHM_HEADER_SIZE || h->magic != EC_SHM_MAGIC ||
            h->arena_uid1 != (uint32_t)uid + 1)
            continue;
        if (ec_segment_attach(ka->fd, ka->base, ka->size, &a->st.own)) {
            ec_warn("the kept result arena of uid %u: %s; a new one is made", (unsigned)uid,
                    ec_last_error());
            continue;
        }
        ka->fd = -1; /* the segment owns the descriptor and the mapping now */
        ka->base = NULL;
        return 1;
    }
    return 0;
}

static void arena_free(struct arena *a)
{
    if (a->st.items)
        ec_items_close(a->st.items);
    if (a->st.ext)
        ec_extents_free(a->st.ext);
    if (a->st.own.base)
        ec_segment_close(&a->st.own);
    free(a);
}

int rs_arena_get(ec_resmgr *m, uid_t uid, struct rstore **out)
{
    struct arena *a = ec_u64map_get(&m->arenas, (uint64_t)uid + 1);
    ec_itemstore_env env;
    int rc, kept;

    if (a) {
        *out = &a->st;
        return 0;
    }
    a = calloc(1, sizeof(*a));
    if (!a)
        return ec_seterr(EC_ENOMEM, "result arena");
    a->m = m;
    a->st.arena = true;
    a->st.uid = uid;
    kept = arena_kept(m, uid, a);
    rc = 0;
    if (!kept) {
        rc = ec_segment_create_geometry(m->arena_bytes, 0, ARENA_ITEM_BYTES, &a->st.own);
        if (rc == 0) {
            a->st.own.hdr->arena_uid1 = (uint32_t)uid + 1;
            if (m->keeper && ec_keeper_keep_arena(m->keeper, a->st.own.fd))
                ec_warn("the keeper cannot hold the result arena of uid %u (%s): its "
                        "results will not survive a restart",
                        (unsigned)uid, ec_last_error());
            rc = ec_segment_seal(&a->st.own);
        }
    }
    if (rc == 0 && !a->st.own.item_buckets)
        rc = ec_seterr(EC_EINVAL, "a result arena of %llu bytes has no room for an item index",
                       (unsigned long long)a->st.own.size);
    if (rc == 0 && a->st.own.data_size < EC_SLAB_BYTES)
        rc = ec_seterr(EC_EINVAL, "a result arena of %llu bytes holds no 1 MiB slab; give "
                                  "--result-arena at least 4 MiB",
                       (unsigned long long)a->st.own.size);
    if (rc == 0)
        rc = ec_extents_new(a->st.own.data_size / EC_SLAB_BYTES * EC_SLAB_BYTES, &a->st.ext);
    a->st.seg = &a->st.own;
    env = (ec_itemstore_env){.slab_alloc = arena_slab_alloc, .slab_free = arena_slab_free,
                             .valid = arena_valid, .evicted = arena_unpublished, .arg = a};
    /* The allocator callbacks take the rstore: it is a's first member, and
     * env.arg serves both. */
    if (rc == 0)
        rc = ec_items_open(&a->st.own, &env, &a->st.items);
    if (rc == 0 && kept)
        rc = ec_items_adopt(a->st.items, arena_reserve_slab, a);
    if (rc == 0)
        rc = ec_u64map_put(&m->arenas, (uint64_t)uid + 1, a);
    if (rc) {
        arena_free(a);
        return rc;
    }
    m->st.arenas_created++;
    ec_info("result arena for uid %u: %llu bytes%s", (unsigned)uid,
            (unsigned long long)a->st.own.size, kept ? ", kept from the last worker" : "");
    *out = &a->st;
    return 0;
}

int rs_arena_fd(struct rstore *st, int *fd)
{
    return ec_segment_open_readonly(&st->own, fd);
}

void rs_arena_unref(ec_resmgr *m, struct rstore *st)
{
    struct arena *a = (struct arena *)st;

    if (!st->arena || --st->users)
        return;
    if (m->keeper)
        (void)ec_keeper_drop_arena(m->keeper, st->own.fd);
    ec_u64map_del(&m->arenas, (uint64_t)st->uid + 1);
    arena_free(a);
}

void rs_free_all(ec_resmgr *m)
{
    for (size_t i = 0; i < m->arenas.cap; i++)
        if (m->arenas.keys[i])
            arena_free(m->arenas.vals[i]);
    ec_u64map_free(&m->arenas);
}

void rs_keeper_leftovers(ec_resmgr *m)
{
    ec_keeper *k = m->keeper;

    for (unsigned i = 0; k && i < k->narenas; i++) {
        ec_keeper_arena *ka = &k->arenas[i];
        if (ka->fd < 0)
            continue;
        (void)ec_keeper_drop_arena(k, ka->fd);
        if (ka->base)
            munmap(ka->base, ka->size);
        close(ka->fd);
        ka->fd = -1;
        ka->base = NULL;
    }
}
