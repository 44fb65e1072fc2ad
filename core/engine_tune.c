/*
 * engine_tune.c - the engine's limits changed while it runs: the host
 * tier's budget, the partition TTL and its jitter, the request-rate window
 * (ec_engine_set_limits).
 *
 * Called by the server loop when embcached reloads its configuration
 * (SIGHUP, core/server_reload.c). Runs on the server thread only, like
 * every engine function; keeps invariant 3 of engine_impl.h (the budget
 * holds): a lowered budget evicts down to it at once, as ec_engine_open
 * does for a restart with a smaller budget, except for what is pinned or
 * being loaded, which goes as soon as it is released (every allocation
 * evicts to keep under the new budget).
 */
#include "engine.h"
#include "core/engine_impl.h"

#include "common/log.h"
#include "core/itemstore.h"

int ec_engine_set_limits(ec_engine *e, const ec_engine_limits *l)
{
    uint64_t room, budget;

    if (!e || !l || l->ttl_seconds < 0 || l->ttl_jitter < 0 || l->ttl_jitter > 1 ||
        l->rate_window < 0)
        return ec_seterr(EC_EINVAL, "ec_engine_set_limits: NULL engine or limits, or a "
                                    "negative TTL, jitter or window");
    room = e->seg.data_size - e->staging_bytes;
    budget = l->budget && l->budget < room ? l->budget : room;
    if (l->budget > room)
        ec_warn("budget %llu is more than the segment's data area (%llu bytes): the budget is "
                "the data area; a larger one needs a larger --shm-size (and a restart)",
                (unsigned long long)l->budget, (unsigned long long)room);
    if (budget != e->budget) {
        uint64_t before = eng_used_bytes(e);
        e->budget = budget;
        while (eng_used_bytes(e) > e->budget &&
               (eng_evict_one(e) == 0 || (e->items && ec_items_shrink(e->items))))
            ;
        if (eng_used_bytes(e) > e->budget)
            ec_warn("budget lowered to %llu bytes, but %llu are pinned or being loaded: "
                    "they go as clients release them",
                    (unsigned long long)e->budget, (unsigned long long)eng_used_bytes(e));
        else if (before > e->budget)
            ec_info("budget lowered to %llu bytes: evicted %llu bytes",
                    (unsigned long long)e->budget,
                    (unsigned long long)(before - eng_used_bytes(e)));
    }
    if (l->ttl_seconds != e->cfg.ttl_seconds || l->ttl_jitter != e->cfg.ttl_jitter) {
        e->cfg.ttl_seconds = l->ttl_seconds;
        e->cfg.ttl_jitter = l->ttl_jitter;
        /* A changed TTL counts from now for what is resident, as it does
         * for what a restarted daemon adopts (engine_restart.c): nothing
         * expires en masse because the TTL shrank. */
        for (size_t i = 0; i < e->nclock; i++)
            e->clock[i]->expires = eng_expiry_of(e);
    }
    e->cfg.rate_window = l->rate_window;
    return 0;
}
