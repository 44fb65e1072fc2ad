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
 * results must not evict another's. Arenas do not survive the daemon
 * (their namespaces do, empty).
 *
 * Runs on the server thread (results.c calls it).
 */
#include "core/results_impl.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
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

static bool arena_valid(void *arg, uint64_t key, uint64_t value_bytes)
{
    (void)arg;
    (void)key;
    (void)value_bytes;
    return false; /* a new arena has nothing to adopt */
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
    int rc;

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
    rc = ec_segment_create_geometry(m->arena_bytes, 0, ARENA_ITEM_BYTES, &a->st.own);
    if (rc == 0)
        rc = ec_segment_seal(&a->st.own);
    if (rc == 0 && !a->st.own.item_buckets)
        rc = ec_seterr(EC_EINVAL, "a result arena of %llu bytes has no room for an item index",
                       (unsigned long long)m->arena_bytes);
    if (rc == 0)
        rc = ec_extents_new(a->st.own.data_size / EC_SLAB_BYTES * EC_SLAB_BYTES, &a->st.ext);
    if (rc == 0 && a->st.own.data_size < EC_SLAB_BYTES)
        rc = ec_seterr(EC_EINVAL, "a result arena of %llu bytes holds no 1 MiB slab; give "
                                  "--result-arena at least 4 MiB",
                       (unsigned long long)m->arena_bytes);
    a->st.seg = &a->st.own;
    env = (ec_itemstore_env){.slab_alloc = arena_slab_alloc, .slab_free = arena_slab_free,
                             .valid = arena_valid, .evicted = arena_unpublished, .arg = a};
    if (rc == 0) {
        /* The store's allocator callbacks take the rstore: it is a's first
         * member, and env.arg serves both. */
        rc = ec_items_open(&a->st.own, &env, &a->st.items);
    }
    if (rc == 0)
        rc = ec_u64map_put(&m->arenas, (uint64_t)uid + 1, a);
    if (rc) {
        arena_free(a);
        return rc;
    }
    m->st.arenas_created++;
    ec_info("result arena for uid %u: %llu bytes", (unsigned)uid,
            (unsigned long long)m->arena_bytes);
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
