/*
 * engine_evict.c - eviction and residency policy: the CLOCK of resident
 * units, allocation that evicts to keep the host tier within its budget,
 * TTL expiry, the resident bytes of each model version, its minimum
 * residency and the sweep of idle versions, and the release of freed
 * extents (held in limbo while GPU gathers may still read them).
 *
 * Called by the other engine files (engine_impl.h) and by the server loop
 * (ec_engine_set_policy). Runs on the server thread only. Keeps invariants
 * 3 and 4 of engine_impl.h.
 */
#include "engine.h"
#include "core/engine_impl.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "shm/index.h"

/* ------------------------------------------------------------------ */
/* Accounting and the clock                                            */

/* Add (sign > 0) or take away a unit's bytes from its version's resident
 * bytes, once each way. */
void eng_account(ec_engine *e, struct unit *u, int sign)
{
    struct vstate *vs = eng_vstate_of_tensor(e, u->tensor);

    if (!vs || (sign > 0) == u->counted)
        return;
    if (sign > 0)
        vs->resident += u->bytes;
    else
        vs->resident -= u->bytes < vs->resident ? u->bytes : vs->resident;
    u->counted = sign > 0;
}

void eng_clock_add(ec_engine *e, struct unit *u)
{
    if (e->nclock == e->capclock) {
        size_t cap = e->capclock ? e->capclock * 2 : 256;
        struct unit **c = realloc(e->clock, cap * sizeof(*c));
        if (!c) {
            /* Without a clock slot the unit is simply never evicted. */
            u->clock_pos = SIZE_MAX;
            return;
        }
        e->clock = c;
        e->capclock = cap;
    }
    u->clock_pos = e->nclock;
    e->clock[e->nclock++] = u;
}

static void clock_del(ec_engine *e, struct unit *u)
{
    size_t i = u->clock_pos;

    if (i == SIZE_MAX)
        return;
    assert(i < e->nclock && e->clock[i] == u);
    e->clock[i] = e->clock[--e->nclock];
    e->clock[i]->clock_pos = i;
    u->clock_pos = SIZE_MAX;
    if (e->hand >= e->nclock)
        e->hand = 0;
}

/* ------------------------------------------------------------------ */
/* Eviction                                                            */

/* Free the extent of entries just removed from the index. With the device
 * tier on, GPU gathers may still be reading it: it waits in limbo until no
 * epoch that could have seen the entries is held. */
void eng_extent_retire(ec_engine *e, uint64_t off, uint64_t bytes)
{
    int rc = 0;

    if (ec_devtier_active(e->dt))
        ec_devtier_retire_host(e->dt, off, bytes, ec_devtier_epoch_bump(e->dt));
    else
        rc = ec_extent_release(e->ext, off, bytes);
    assert(rc == 0);
    (void)rc;
}

/* Remove a unit from the index and the clock and free its extent. `evicted`
 * says whether to count it as an eviction (a failed load or a re-layout is
 * not one). */
void eng_unit_drop(ec_engine *e, struct unit *u, bool evicted)
{
    struct tstate *ts = ec_u64map_get(&e->tensors, u->tensor);
    uint32_t first = u->part, last = u->part;

    assert(u->pins == 0);
    if (u->part == GROUP_PART) {
        first = 0;
        last = ts ? (uint32_t)ts->cat.partitions - 1 : 0;
        if (ts && ts->group == u)
            ts->group = NULL;
    }
    for (uint64_t p = first; p <= last; p++) {
        uint64_t key = EC_INDEX_KEY(u->tensor, p);
        if (ec_u64map_get(&e->resident, key) != u)
            continue;
        ec_u64map_del(&e->resident, key);
        ec_index_remove(&e->seg, u->tensor, (uint32_t)p, NULL, NULL);
        ec_devtier_drop(e->dt, u->tensor, (uint32_t)p);
    }
    clock_del(e, u);
    eng_account(e, u, -1);
    /* Invariant 4: the entries are gone (their seqs bumped); now the extent. */
    eng_extent_retire(e, u->off, u->bytes);
    if (evicted) {
        e->st.evictions++;
        e->st.evicted_bytes += u->bytes;
    }
    free(u);
}

static void free_host_extent(void *arg, uint64_t off, uint64_t bytes)
{
    ec_engine *e = arg;
    int rc = ec_extent_release(e->ext, off, bytes);

    assert(rc == 0);
    (void)rc;
}

/* Free the extents in limbo that no client's gather can still read. */
uint64_t eng_reclaim(ec_engine *e)
{
    uint64_t m;

    if (!ec_devtier_active(e->dt))
        return 0;
    m = e->min_epoch ? e->min_epoch(e->min_epoch_arg) : UINT64_MAX;
    return ec_devtier_reclaim(e->dt, m, free_host_extent, e);
}

/* Will memory come back without evicting: reads in flight (their units
 * become evictable) or extents in limbo? Then an allocation that failed
 * waits (eng_defer_partition) instead of failing. */
bool eng_room_coming(const ec_engine *e)
{
    return e->inflight.len > 0 || ec_devtier_limbo_host_bytes(e->dt) > 0;
}

/* A unit its version's minimum residency keeps in memory. */
static bool protected_unit(const ec_engine *e, const struct unit *u)
{
    const struct vstate *vs = eng_vstate_of_tensor(e, u->tensor);

    return vs && vs->min_resident && vs->resident < vs->min_resident + u->bytes;
}

/* Evict one unevictable-free unit by CLOCK. EC_ENOSPC when none can go. */
int eng_evict_one(ec_engine *e)
{
    for (size_t steps = 0; steps < 2 * e->nclock + 1 && e->nclock; steps++) {
        struct unit *u;
        if (e->hand >= e->nclock)
            e->hand = 0;
        u = e->clock[e->hand];
        if (u->pins == 0 && !u->loading && !protected_unit(e, u)) {
            if (!u->ref) {
                eng_unit_drop(e, u, true);
                return 0;
            }
            u->ref = false;
        }
        e->hand++;
    }
    return EC_ENOSPC;
}

/* Bytes of the budget in use: partitions, groups and item slabs (the
 * staging area of block reads is outside the budget). */
uint64_t eng_used_bytes(const ec_engine *e)
{
    ec_extent_stats s;

    ec_extent_stats_get(e->ext, &s);
    return s.used - (s.used >= e->staging_bytes ? e->staging_bytes : s.used);
}

/* An extent of `bytes`, evicting until both the budget and the segment
 * have room: the budget holds at all times (an allocation never takes the
 * host tier past it), and nothing pinned or loading is evicted. */
int eng_alloc_evicting(ec_engine *e, uint64_t bytes, uint64_t *off)
{
    uint64_t rounded = page_round(bytes);

    if (rounded > e->budget)
        return ec_seterr(EC_ENOSPC, "budget exhausted: %llu bytes asked for, the budget is "
                                    "%llu; start embcached with a larger --budget",
                         (unsigned long long)rounded, (unsigned long long)e->budget);
    for (;;) {
        int rc = EC_ENOSPC;
        if (eng_used_bytes(e) + rounded <= e->budget)
            rc = ec_extent_alloc(e->ext, bytes, off);
        if (rc != EC_ENOSPC)
            return rc;
        if (eng_reclaim(e))
            continue;
        /* What is in limbo comes back as soon as the gathers reading it
         * finish (microseconds): wait for it rather than evict more. The
         * caller defers the read (eng_room_coming). */
        if (ec_devtier_limbo_host_bytes(e->dt) >= rounded)
            return ec_seterr(EC_ENOSPC, "no room for %llu bytes until GPU gathers in flight "
                                        "finish reading freed memory",
                             (unsigned long long)bytes);
        /* No partition can go: the item store gives back a slab (one budget
         * covers both). */
        if (eng_evict_one(e) && !(e->items && ec_items_shrink(e->items))) {
            ec_extent_stats s;
            ec_extent_stats_get(e->ext, &s);
            return ec_seterr(EC_ENOSPC,
                             "budget exhausted: no room for %llu bytes (budget %llu, segment "
                             "%llu): %llu bytes are pinned or being loaded and nothing else "
                             "can be evicted; release views, evict a pinned version, or start "
                             "embcached with a larger --budget",
                             (unsigned long long)bytes, (unsigned long long)e->budget,
                             (unsigned long long)s.capacity, (unsigned long long)s.used);
        }
    }
}

/* When a unit published now expires: the TTL with +-jitter, so partitions
 * filled together do not all expire together. 0: never. */
double eng_expiry_of(const ec_engine *e)
{
    double ttl = e->cfg.ttl_seconds, j = e->cfg.ttl_jitter;

    if (ttl <= 0)
        return 0;
    return mono_now() + ttl * (1.0 + j * (2.0 * drand48() - 1.0));
}

/* Evict expired units, a bounded slice of the clock per call so a large
 * segment costs little per tick. */
void eng_expire_some(ec_engine *e)
{
    double now = mono_now();

    if (e->cfg.ttl_seconds <= 0 || !e->nclock)
        return;
    for (size_t n = 0; n < 4096 && e->nclock; n++) {
        struct unit *u;
        if (e->ttl_hand >= e->nclock)
            e->ttl_hand = 0;
        u = e->clock[e->ttl_hand];
        if (u->expires > 0 && u->expires <= now && u->pins == 0 && !u->loading) {
            eng_unit_drop(e, u, false);
            e->st.expirations++;
            continue; /* the slot now holds another unit */
        }
        e->ttl_hand++;
    }
}

/* ------------------------------------------------------------------ */
/* Residency policy                                                    */

static int cmp_idle(const void *a, const void *b)
{
    const struct vstate *x = *(struct vstate *const *)a, *y = *(struct vstate *const *)b;
    return (x->last_access > y->last_access) - (x->last_access < y->last_access);
}

/* End of a rate window: a version whose request rate stayed under its
 * model's floor is evicted down to its minimum residency, least recently
 * used version first. */
void eng_sweep_idle(ec_engine *e, double elapsed)
{
    struct vstate **idle = calloc(e->versions.len ? e->versions.len : 1, sizeof(*idle));
    size_t n = 0;

    for (size_t i = 0; idle && i < e->versions.cap; i++) {
        struct vstate *vs = e->versions.vals[i];
        if (!e->versions.keys[i])
            continue;
        if (vs->min_rate > 0 && (double)vs->requests / elapsed < vs->min_rate &&
            vs->resident > vs->min_resident)
            idle[n++] = vs;
        vs->requests = 0;
    }
    qsort(idle, n, sizeof(*idle), cmp_idle);
    for (size_t k = 0; k < n; k++) {
        struct vstate *vs = idle[k];
        uint64_t before = vs->resident;
        for (size_t i = 0; i < e->nclock && vs->resident > vs->min_resident;) {
            struct unit *u = e->clock[i];
            if (eng_vstate_of_tensor(e, u->tensor) == vs && !u->pins && !u->loading &&
                !protected_unit(e, u)) {
                eng_unit_drop(e, u, false); /* the clock slot now holds another unit */
                continue;
            }
            i++;
        }
        if (before > vs->resident) {
            e->st.idle_evictions++;
            e->st.idle_evicted_bytes += before - vs->resident;
            ec_info("%s version %lld is idle (under %.3g requests/s): evicted %llu bytes, "
                    "%llu stay resident", vs->model, (long long)vs->version, vs->min_rate,
                    (unsigned long long)(before - vs->resident),
                    (unsigned long long)vs->resident);
        }
    }
    free(idle);
}

int ec_engine_set_policy(ec_engine *e, const char *model, uint64_t min_resident_bytes,
                         double min_request_rate)
{
    int rc = ec_catalog_set_policy(e->cat, model, min_resident_bytes, min_request_rate);

    if (rc)
        return rc;
    for (size_t i = 0; i < e->versions.cap; i++) {
        struct vstate *vs = e->versions.vals[i];
        if (e->versions.keys[i] && !strcmp(vs->model, model)) {
            vs->min_resident = min_resident_bytes;
            vs->min_rate = min_request_rate;
        }
    }
    ec_info("policy of %s: at least %llu bytes per version stay resident; idle under %.3g "
            "requests/s", model, (unsigned long long)min_resident_bytes, min_request_rate);
    return 0;
}
