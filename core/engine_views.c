/*
 * engine_views.c - views that outlive the worker that granted them.
 *
 * A view hands a client a pointer into the segment (a pinned, contiguous
 * copy of a tensor) that it may keep, and turn into DLPack or torch
 * tensors, for as long as it likes. The pin lives in the worker's memory; a
 * worker that crashes loses it, and the next worker, which takes the
 * segment over, would hand that memory to other rows while the client still
 * reads it. So every pin is also written to the view journal: (client pid,
 * its start time, offset, length). The journal is memory the keeper maps
 * (MAP_SHARED | MAP_ANONYMOUS, never handed to a client), so it survives
 * the worker. A worker that takes a segment over reserves every journaled
 * range whose process still runs (the same pid and start time) before it
 * adopts anything else, and frees it once that process is gone: it checks
 * on every tick. Without a keeper the journal is the engine's own and a
 * restart is cold anyway.
 *
 * Called by the engine on the server thread (pin, unpin, connection close,
 * warm start, tick); the keeper only holds the memory.
 */
#include "engine.h"
#include "core/engine_impl.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/log.h"
#include "common/proc.h"
#include "core/keeper.h"

#define VJ_MAGIC 0x31564a4345ull /* "ECJV1" */
#define VJ_FREE 0u
#define VJ_LIVE 1u  /* a pin of this worker */
#define VJ_QUAR 2u  /* a pin of a worker before: held until its process is gone */

struct vj_entry {
    _Atomic uint32_t state;
    uint32_t pid;
    uint64_t start; /* the process's start time (/proc/PID/stat field 22) */
    uint64_t off, bytes;
};

struct ec_view_journal {
    uint64_t magic;
    uint64_t slots;
    struct vj_entry e[];
};

/* A range reserved for views of processes of a previous worker. */
struct vq {
    uint64_t off, bytes;
};

size_t eng_views_journal_bytes(void)
{
    return sizeof(struct ec_view_journal) + EC_VIEW_JOURNAL_SLOTS * sizeof(struct vj_entry);
}

/* The process's start time, or 0 when it is gone (or a zombie, which maps
 * nothing). */
uint64_t eng_proc_start(pid_t pid)
{
    char state;
    uint64_t start;

    if (ec_proc_stat(pid, &state, &start) < 0 || state == 'Z' || state == 'X')
        return 0;
    return start;
}

int eng_views_open(ec_engine *e)
{
    struct ec_keeper *k = e->cfg.keeper;
    size_t bytes = eng_views_journal_bytes();

    if (k && k->journal && k->journal_bytes >= bytes) {
        e->vj = k->journal;
        e->vj_own = false;
    } else {
        e->vj = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (e->vj == MAP_FAILED) {
            e->vj = NULL;
            return ec_seterr(EC_ENOMEM, "view journal (%zu bytes)", bytes);
        }
        e->vj_own = true;
    }
    return 0;
}

void eng_views_close(ec_engine *e)
{
    if (e->vj && e->vj_own)
        munmap(e->vj, eng_views_journal_bytes());
    e->vj = NULL;
    free(e->vq);
    e->vq = NULL;
    e->nvq = e->capvq = 0;
}

/* A new segment: whatever the journal said was about another one. */
void eng_views_reset(ec_engine *e)
{
    if (!e->vj)
        return;
    memset(e->vj, 0, eng_views_journal_bytes());
    e->vj->magic = VJ_MAGIC;
    e->vj->slots = EC_VIEW_JOURNAL_SLOTS;
}

static int vq_add(ec_engine *e, uint64_t off, uint64_t bytes)
{
    if (e->nvq == e->capvq) {
        size_t cap = e->capvq ? e->capvq * 2 : 16;
        struct vq *q = realloc(e->vq, cap * sizeof(*q));
        if (!q)
            return EC_ENOMEM;
        e->vq = q;
        e->capvq = cap;
    }
    e->vq[e->nvq++] = (struct vq){.off = off, .bytes = bytes};
    return 0;
}

static bool vq_has(const ec_engine *e, uint64_t off, uint64_t bytes)
{
    for (size_t i = 0; i < e->nvq; i++)
        if (e->vq[i].off == off && e->vq[i].bytes == bytes)
            return true;
    return false;
}

/* Warm start, before anything else takes an extent: keep every journaled
 * range whose process still runs. */
void eng_views_adopt(ec_engine *e)
{
    struct ec_view_journal *j = e->vj;

    if (!j)
        return;
    if (j->magic != VJ_MAGIC || j->slots != EC_VIEW_JOURNAL_SLOTS) {
        eng_views_reset(e);
        return;
    }
    for (uint64_t i = 0; i < j->slots; i++) {
        struct vj_entry *v = &j->e[i];
        uint32_t st = atomic_load_explicit(&v->state, memory_order_acquire);
        const char *why = NULL;

        if (st == VJ_FREE)
            continue;
        if (st != VJ_LIVE && st != VJ_QUAR)
            why = "a damaged entry";
        else if (v->bytes == 0 || v->off % EC_SHM_PAGE || v->bytes % EC_SHM_PAGE ||
                 v->off > e->seg.data_size || v->bytes > e->seg.data_size - v->off)
            why = "a range outside the data area";
        else if (eng_proc_start((pid_t)v->pid) != v->start) {
            /* its process is gone: nothing to keep */
            atomic_store_explicit(&v->state, VJ_FREE, memory_order_release);
            continue;
        } else if (!vq_has(e, v->off, v->bytes)) {
            if (ec_extent_reserve(e->ext, v->off, v->bytes))
                why = "a range that overlaps another";
            else if (vq_add(e, v->off, v->bytes)) {
                ec_extent_release(e->ext, v->off, v->bytes);
                why = "out of memory";
            } else {
                e->st.view_quarantined += v->bytes;
            }
        }
        if (why) {
            ec_warn("view journal slot %" PRIu64 ": %s; a view of pid %u may read reused "
                    "memory",
                    i, why, v->pid);
            atomic_store_explicit(&v->state, VJ_FREE, memory_order_release);
            continue;
        }
        atomic_store_explicit(&v->state, VJ_QUAR, memory_order_release);
    }
    if (e->nvq)
        ec_info("warm restart: keeping %zu view range(s) of running clients until they exit",
                e->nvq);
}

/* Tick: free the ranges whose processes are all gone. */
void eng_views_tick(ec_engine *e, double now)
{
    struct ec_view_journal *j = e->vj;

    if (!j || !e->nvq || now - e->vj_checked < 1.0)
        return;
    e->vj_checked = now;
    for (uint64_t i = 0; i < j->slots; i++) {
        struct vj_entry *v = &j->e[i];
        if (atomic_load_explicit(&v->state, memory_order_relaxed) == VJ_QUAR &&
            eng_proc_start((pid_t)v->pid) != v->start)
            atomic_store_explicit(&v->state, VJ_FREE, memory_order_release);
    }
    for (size_t q = 0; q < e->nvq;) {
        bool held = false;
        for (uint64_t i = 0; i < j->slots && !held; i++) {
            struct vj_entry *v = &j->e[i];
            held = atomic_load_explicit(&v->state, memory_order_relaxed) == VJ_QUAR &&
                   v->off == e->vq[q].off && v->bytes == e->vq[q].bytes;
        }
        if (held) {
            q++;
            continue;
        }
        ec_extent_release(e->ext, e->vq[q].off, e->vq[q].bytes);
        e->st.view_quarantined -= e->vq[q].bytes;
        e->st.view_released += e->vq[q].bytes;
        e->vq[q] = e->vq[--e->nvq];
    }
}

int eng_views_record(ec_engine *e, pid_t pid, uint64_t start, uint64_t off, uint64_t bytes)
{
    struct ec_view_journal *j = e->vj;

    if (!j || pid <= 0 || !start)
        return -1; /* the daemon's own pins, or no journal: nothing to outlive */
    for (uint64_t n = 0; n < j->slots; n++) {
        uint64_t i = (e->vj_hint + n) % j->slots;
        struct vj_entry *v = &j->e[i];
        if (atomic_load_explicit(&v->state, memory_order_relaxed) != VJ_FREE)
            continue;
        v->pid = (uint32_t)pid;
        v->start = start;
        v->off = off;
        v->bytes = bytes;
        atomic_store_explicit(&v->state, VJ_LIVE, memory_order_release);
        e->vj_hint = i + 1;
        return (int)i;
    }
    ec_warn("view journal full (%u views): a view of pid %d is not protected across a "
            "crash of this daemon",
            EC_VIEW_JOURNAL_SLOTS, (int)pid);
    return -1;
}

void eng_views_forget(ec_engine *e, int slot)
{
    if (e->vj && slot >= 0 && (uint64_t)slot < e->vj->slots)
        atomic_store_explicit(&e->vj->e[slot].state, VJ_FREE, memory_order_release);
}
