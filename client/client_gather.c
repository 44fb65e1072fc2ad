/*
 * client_gather.c - the hit path of libembcache: gathers of rows into host
 * memory. A tensor cached by partitions is read through the partition index
 * (one lookup per run of rows in a partition); a tensor cached by rows
 * through the item index (one lookup per row). Either way the rows are
 * copied straight out of the read-only segment, every copy is checked
 * against its entry's seqlock afterwards, and the misses go to the daemon
 * in one request per call. No system call and no lock on a hit.
 *
 * Runs on any thread of the calling process; per-thread scratch keeps the
 * hit path free of allocations. Never writes the segment.
 */
#include "client/client_impl.h"


/* The scratch hangs off a pthread key whose destructor frees it when the
 * thread exits: a thread pool that recycles threads must not leak a scratch
 * per thread (found by LeakSanitizer in embcache-bench's fault threads). */
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;

static void scratch_arrays_free(struct scratch *s)
{
    free(s->src);
    free(s->dst_rows);
    free(s->row_ref);
    free(s->todo);
    free(s->next);
    free(s->refs);
    free(s->parts);
    free(s->hash);
    free(s->irefs);
    free(s->keys);
    free(s->fids);
    memset(s, 0, sizeof(*s));
}

static void scratch_destroy(void *p)
{
    scratch_arrays_free(p);
    free(p);
}

static void scratch_key_make(void)
{
    scratch_key_ok = pthread_key_create(&scratch_key, scratch_destroy) == 0;
}

/* This thread's scratch with room for n rows, or NULL (message set). */
struct scratch *cl_scratch_get(size_t n)
{
    struct scratch *s;
    size_t cap;

    pthread_once(&scratch_once, scratch_key_make);
    if (!scratch_key_ok) {
        ec_seterr(EC_ENOMEM, "no thread-specific key left for the gather scratch");
        return NULL;
    }
    s = pthread_getspecific(scratch_key);
    if (s && n <= s->cap)
        return s;
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s || pthread_setspecific(scratch_key, s)) {
            free(s);
            ec_seterr(EC_ENOMEM, "gather scratch");
            return NULL;
        }
    }
    cap = n < 256 ? 256 : n;
    scratch_arrays_free(s);
    s->src = malloc(cap * sizeof(*s->src));
    s->dst_rows = malloc(cap * sizeof(*s->dst_rows));
    s->row_ref = malloc(cap * sizeof(*s->row_ref));
    s->todo = malloc(cap * sizeof(*s->todo));
    s->next = malloc(cap * sizeof(*s->next));
    s->refs = malloc(cap * sizeof(*s->refs));
    s->parts = malloc(cap * sizeof(*s->parts));
    s->hash = malloc(cap * sizeof(*s->hash));
    s->irefs = malloc(cap * sizeof(*s->irefs));
    s->keys = malloc(cap * sizeof(*s->keys));
    s->fids = malloc(cap * sizeof(*s->fids));
    if (!s->src || !s->dst_rows || !s->row_ref || !s->todo || !s->next || !s->refs ||
        !s->parts || !s->hash || !s->irefs || !s->keys || !s->fids) {
        scratch_arrays_free(s);
        ec_seterr(EC_ENOMEM, "gather scratch for %zu rows", n);
        return NULL;
    }
    s->cap = cap;
    return s;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* How the daemon caches t, as the last answer said. */
static ec_cache_mode mode_of(const ec_tensor *t)
{
    return (ec_cache_mode)atomic_load_explicit(&t->mode, memory_order_relaxed);
}

/* Take the mode a FAULT or FAULT_ROWS reply carries. */
static int take_mode(ec_tensor *t, ec_rbuf *r, const char *op)
{
    uint32_t m = ec_get_u32(r);

    if (!ec_rbuf_done(r) || (m != EC_CACHE_PARTITIONS && m != EC_CACHE_ROWS))
        return ec_seterr(EC_EPROTO, "malformed %s reply", op);
    atomic_store_explicit(&t->mode, m, memory_order_relaxed);
    return 0;
}

/* Ask the daemon for the partitions in parts[0..n), which this sorts and
 * dedupes in place (a gather notes a partition once per run of its rows). */
int cl_fault(ec_tensor *t, uint32_t *parts, size_t n)
{
    ec_client *c = t->c;
    size_t u = 0;
    int rc = 0;

    qsort(parts, n, sizeof(*parts), cmp_u32);
    for (size_t k = 0; k < n; k++)
        if (u == 0 || parts[u - 1] != parts[k])
            parts[u++] = parts[k];
    n = u;
    pthread_mutex_lock(&c->lock);
    for (size_t done = 0; done < n && rc == 0;) {
        size_t k = n - done < EC_FAULT_MAX_PARTS ? n - done : EC_FAULT_MAX_PARTS;
        ec_wbuf w;
        ec_rbuf r;
        uint32_t req = cl_begin(c, &w, EC_OP_FAULT);
        ec_put_u32(&w, t->t.id);
        ec_put_u32(&w, (uint32_t)k);
        for (size_t i = 0; i < k; i++)
            ec_put_u32(&w, parts[done + i]);
        rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
        if (rc == 0)
            rc = take_mode(t, &r, "FAULT");
        done += k;
    }
    pthread_mutex_unlock(&c->lock);
    atomic_fetch_add_explicit(&c->session->faults, 1, memory_order_relaxed);
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Ask the daemon for the rows ids[0..n) of a tensor cached by rows (sorted
 * and deduped here, in place): it reads the blocks that hold them and puts
 * them in the item store. */
static int fault_rows(ec_tensor *t, uint64_t *ids, size_t n)
{
    ec_client *c = t->c;
    size_t u = 0;
    int rc = 0;

    qsort(ids, n, sizeof(*ids), cmp_u64);
    for (size_t k = 0; k < n; k++)
        if (u == 0 || ids[u - 1] != ids[k])
            ids[u++] = ids[k];
    n = u;
    pthread_mutex_lock(&c->lock);
    for (size_t done = 0; done < n && rc == 0;) {
        size_t k = n - done < EC_FAULT_MAX_ROWS ? n - done : EC_FAULT_MAX_ROWS;
        ec_wbuf w;
        ec_rbuf r;
        uint32_t req = cl_begin(c, &w, EC_OP_FAULT_ROWS);
        ec_put_u32(&w, t->t.id);
        ec_put_u32(&w, (uint32_t)k);
        for (size_t i = 0; i < k; i++)
            ec_put_u64(&w, ids[done + i]);
        rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
        if (rc == 0)
            rc = take_mode(t, &r, "FAULT_ROWS");
        done += k;
    }
    pthread_mutex_unlock(&c->lock);
    atomic_fetch_add_explicit(&c->session->faults, 1, memory_order_relaxed);
    return rc;
}

/* Claim n slots of the access ring (at most a quarter of it): the first
 * one's number, and *n trimmed. */
static uint64_t ring_claim(ec_client *c, size_t *n)
{
    if (*n > EC_SESSION_RING / 4)
        *n = EC_SESSION_RING / 4;
    return *n ? atomic_fetch_add_explicit(&c->session->ring_head, *n, memory_order_relaxed) : 0;
}

/* Record the partitions a gather read in our session ring, for the
 * daemon's eviction policy: one atomic claim of all the slots, then plain
 * stores. The daemon treats entries as hints, so a slot it reads before
 * this thread filled it costs nothing but a missed touch. At most a quarter
 * of the ring per gather: enough for the policy, and a huge gather does not
 * wipe out what other threads recorded. */
void cl_note_accesses(ec_client *c, const ec_index_ref *refs, size_t n)
{
    uint64_t h = ring_claim(c, &n);

    for (size_t i = 0; i < n; i++) {
        uint64_t key = atomic_load_explicit(&refs[i].entry->key, memory_order_relaxed);
        atomic_store_explicit(&c->session->ring[(h + i) % EC_SESSION_RING], key,
                              memory_order_relaxed);
    }
}

void cl_note_keys(ec_client *c, const uint64_t *keys, size_t n)
{
    uint64_t h = ring_claim(c, &n);

    for (size_t i = 0; i < n; i++)
        atomic_store_explicit(&c->session->ring[(h + i) % EC_SESSION_RING], keys[i],
                              memory_order_relaxed);
}

/* Add to a session counter; a zero add skips the locked instruction. */
void cl_count(_Atomic uint64_t *ctr, uint64_t v)
{
    if (v)
        atomic_fetch_add_explicit(ctr, v, memory_order_relaxed);
}

/* Check a gather's arguments: the output dtype, the output size and every
 * id. 0 or an error naming what is wrong. */
int cl_gather_check(const ec_tensor *t, const int64_t *ids, size_t n, size_t out_size,
                        ec_dtype dst)
{
    uint64_t rows = t->t.rows, esz = ec_dtype_size((ec_dtype)t->t.dtype);
    uint64_t out_row = esz ? t->t.row_bytes / esz * ec_dtype_size(dst) : 0;

    if (dst != (ec_dtype)t->t.dtype &&
        !(t->t.dtype == EC_DTYPE_F32 && (dst == EC_DTYPE_F16 || dst == EC_DTYPE_BF16)))
        return ec_seterr(EC_EDTYPE, "cannot gather tensor '%s' (%s) as %s: the only "
                                    "conversions are f32 to f16 and f32 to bf16",
                         t->t.name, ec_dtype_name((ec_dtype)t->t.dtype),
                         ec_dtype_name(dst) ? ec_dtype_name(dst) : "an unknown dtype");
    if (n > SIZE_MAX / (out_row ? out_row : 1) || out_size < n * out_row)
        return ec_seterr(EC_EINVAL, "output buffer of %zu bytes is too small for %zu rows of "
                                    "%llu bytes", out_size, n, (unsigned long long)out_row);
    if (mode_of(t) == EC_CACHE_DYNAMIC || !ids)
        return 0; /* ids are keys (any int64), or on a GPU (checked there) */
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (uint64_t)ids[i] >= rows)
            return cl_id_range_error(t, i, ids[i]);
    return 0;
}

int cl_id_range_error(const ec_tensor *t, size_t i, int64_t id)
{
    return ec_seterr(EC_ERANGE, "ids[%zu] = %lld is outside tensor '%s' of model '%s' (rows "
                                "0..%llu)", i, (long long)id, t->t.name, t->t.model,
                     (unsigned long long)(t->t.rows ? t->t.rows - 1 : 0));
}


int ec_tensor_gather(ec_tensor *t, const int64_t *ids, size_t n, void *out, size_t out_size)
{
    int rc;

    if (!t || (n && (!ids || !out)))
        return ec_seterr(EC_EINVAL, "ec_tensor_gather: NULL argument");
    if (n == 0)
        return 0;
    if ((rc = cl_gather_check(t, ids, n, out_size, (ec_dtype)t->t.dtype)))
        return rc;
    return cl_gather_host(t, ids, n, out, (ec_dtype)t->t.dtype);
}

/* A gather found the tensor's mode changed under it: start again. */
#define MODE_CHANGED 1


static struct counts {
    size_t hits, misses, retries;
} zero_counts;

/* Rows of a tensor cached by partitions: look up each run of rows'
 * partition (the index entries prefetched a batch ahead), copy, then check
 * each entry's seqlock. */
static int gather_parts(ec_tensor *t, struct scratch *s, const int64_t *ids, size_t n,
                        void *out, ec_dtype dst, struct counts *ct)
{
    ec_client *c = t->c;
    uint64_t rpp = t->t.rows_per_partition, row_bytes = t->t.row_bytes;
    size_t ntodo;
    int rc;

    for (size_t i = 0; i < n; i++)
        s->todo[i] = i;
    ntodo = n;
    for (int round = 0; ntodo > 0; round++) {
        size_t nsrc = 0, nrefs = 0, nnext = 0, nparts = 0;
        uint64_t lastp = UINT64_MAX;
        bool lasthit = false;
        ec_gather_desc g;

        if (round == GATHER_MAX_ROUNDS)
            return ec_seterr(EC_ENOSPC, "rows of tensor '%s' kept being evicted before they "
                                        "could be copied (%zu rows left after %d rounds): the "
                                        "segment is too small for this working set",
                             t->t.name, ntodo, round);
        /* 0. Prefetch the index entries of the partitions to look up. */
        for (size_t k = 0; k < ntodo; k++) {
            uint64_t p = (uint64_t)ids[s->todo[k]] / rpp;
            if (p != lastp)
                ec_index_prefetch(&c->seg, t->t.id, (uint32_t)p);
            lastp = p;
        }
        lastp = UINT64_MAX;
        /* 1. Look up each row's partition; note where resident rows are. */
        for (size_t k = 0; k < ntodo; k++) {
            size_t i = s->todo[k];
            uint64_t id = (uint64_t)ids[i], p = id / rpp;

            if (p != lastp) {
                lastp = p;
                lasthit = ec_index_lookup(&c->seg, t->t.id, (uint32_t)p, &s->refs[nrefs]) &&
                          (id % rpp + 1) * row_bytes <= s->refs[nrefs].length;
                if (lasthit) {
                    nrefs++;
                } else {
                    s->parts[nparts++] = (uint32_t)p;
                }
            }
            if (!lasthit) {
                s->next[nnext++] = i;
                ct->misses += round == 0;
                continue;
            }
            s->src[nsrc] = c->seg.data + s->refs[nrefs - 1].offset + (id % rpp) * row_bytes;
            s->dst_rows[nsrc] = i;
            s->row_ref[nsrc] = (uint32_t)(nrefs - 1);
            nsrc++;
        }
        if (round == 0)
            cl_note_accesses(c, s->refs, nrefs);
        /* 2. Copy them. */
        if (nsrc) {
            g = (ec_gather_desc){.src = s->src, .n = nsrc, .row_bytes = row_bytes,
                                 .src_dtype = (ec_dtype)t->t.dtype, .dst_dtype = dst,
                                 .dst = out, .dst_rows = s->dst_rows, .device = -1};
            rc = ec_cpu_gather(&g);
            if (rc)
                return rc;
        }
        /* 3. Check every entry again: a moved entry means a possibly torn copy.
         * A hit is a row served from memory at its first lookup. */
        {
            uint32_t bad = UINT32_MAX;
            for (size_t k = 0; k < nsrc; k++) {
                uint32_t ref = s->row_ref[k];
                if (ref != bad && ec_index_still_valid(&s->refs[ref])) {
                    ct->hits += round == 0;
                    continue;
                }
                bad = ref;
                s->next[nnext++] = s->dst_rows[k];
                ct->retries++;
            }
        }
        /* 4. Fault what missed, in one request. */
        if (nparts) {
            rc = cl_fault(t, s->parts, nparts);
            if (rc)
                return rc;
            if (mode_of(t) == EC_CACHE_ROWS)
                return MODE_CHANGED;
        }
        memcpy(s->todo, s->next, nnext * sizeof(*s->next));
        ntodo = nnext;
    }
    return 0;
}

/* Record the items a gather read in our session ring (see
 * cl_note_accesses): their tags and offsets, which the daemon checks. An
 * item this thread reported lately is not reported again (a per-thread
 * table of the last hint per hash slot): its use counter saturates at 3
 * anyway, and a hot set would otherwise send the daemon millions of hints a
 * second to no effect. Uses s->keys as its buffer: call it after the
 * copies. */
static void note_items(ec_client *c, struct scratch *s, size_t n)
{
    ec_session_page *sp = c->session;
    size_t m = 0;
    uint64_t h;

    for (size_t i = 0; i < n; i++) {
        uint64_t off8 = s->irefs[s->row_ref[i]].off / 8;
        uint32_t slot = (uint32_t)((off8 * 0x9e3779b97f4a7c15ull) >> 54); /* 10 bits */
        uint32_t tag = s->hash[s->row_ref[i]].tag;

        if (s->hint_seen[slot] == (uint32_t)off8)
            continue;
        s->hint_seen[slot] = (uint32_t)off8;
        s->keys[m++] = EC_RING_ITEM_HINT(tag, off8);
    }
    if (m > EC_SESSION_RING / 4)
        m = EC_SESSION_RING / 4;
    if (m == 0)
        return;
    h = atomic_fetch_add_explicit(&sp->ring_head, m, memory_order_relaxed);
    for (size_t i = 0; i < m; i++)
        atomic_store_explicit(&sp->ring[(h + i) % EC_SESSION_RING], s->keys[i],
                              memory_order_relaxed);
}

/* Rows of a tensor cached by rows: per row, hash its key and prefetch its
 * first bucket (a whole batch ahead), probe the buckets and prefetch the
 * items found, compare each item's key, copy the values, then check each
 * bucket's seqlock. Misses go to the daemon in one FAULT_ROWS. */
static int gather_rows(ec_tensor *t, struct scratch *s, const int64_t *ids, size_t n,
                       void *out, ec_dtype dst, struct counts *ct)
{
    ec_client *c = t->c;
    const ec_segment *seg = &c->seg;
    uint64_t row_bytes = t->t.row_bytes;
    size_t ntodo;
    int rc;

    for (size_t i = 0; i < n; i++)
        s->todo[i] = i;
    ntodo = n;
    for (int round = 0; ntodo > 0; round++) {
        size_t nsrc = 0, nnext = 0, nmiss = 0;
        ec_gather_desc g;

        if (round == GATHER_MAX_ROUNDS)
            return ec_seterr(EC_ENOSPC, "rows of tensor '%s' kept being evicted before they "
                                        "could be copied (%zu rows left after %d rounds): the "
                                        "budget is too small for this working set",
                             t->t.name, ntodo, round);
        /* 1. Keys, buckets, prefetch. */
        for (size_t k = 0; k < ntodo; k++) {
            s->keys[k] = EC_ITEM_ROW_KEY(t->t.id, (uint64_t)ids[s->todo[k]]);
            ec_item_hash_of(seg->item_buckets, s->keys[k], &s->hash[k]);
            ec_item_prefetch(seg, &s->hash[k]);
        }
        /* 2. Probe; prefetch the items found. */
        for (size_t k = 0; k < ntodo; k++) {
            if (!ec_item_probe(seg, &s->hash[k], row_bytes, &s->irefs[k]))
                s->irefs[k].off = UINT64_MAX;
            else
                __builtin_prefetch(seg->data + s->irefs[k].off);
        }
        /* 3. The whole key must match (a tag is 24 bits): else a full lookup,
         * and a miss when that finds nothing either. */
        for (size_t k = 0; k < ntodo; k++) {
            if (s->irefs[k].off == UINT64_MAX ||
                (ec_item_key_at(seg, s->irefs[k].off) != s->keys[k] &&
                 !ec_item_lookup(seg, s->keys[k], row_bytes, &s->irefs[k]))) {
                s->fids[nmiss++] = (uint64_t)ids[s->todo[k]];
                s->next[nnext++] = s->todo[k];
                ct->misses += round == 0;
                continue;
            }
            s->src[nsrc] = ec_item_value(seg, s->irefs[k].off);
            s->dst_rows[nsrc] = s->todo[k];
            s->row_ref[nsrc] = (uint32_t)k;
            nsrc++;
        }
        /* 4. Copy. */
        if (nsrc) {
            g = (ec_gather_desc){.src = s->src, .n = nsrc, .row_bytes = row_bytes,
                                 .src_dtype = (ec_dtype)t->t.dtype, .dst_dtype = dst,
                                 .dst = out, .dst_rows = s->dst_rows, .device = -1};
            rc = ec_cpu_gather(&g);
            if (rc)
                return rc;
        }
        /* 5. A bucket that moved may mean a torn or replaced row: again. */
        for (size_t j = 0; j < nsrc; j++) {
            if (ec_item_still_valid(&s->irefs[s->row_ref[j]])) {
                ct->hits += round == 0;
                continue;
            }
            s->next[nnext++] = s->dst_rows[j];
            ct->retries++;
        }
        if (round == 0)
            note_items(c, s, nsrc);
        /* 6. Misses, in one request. */
        if (nmiss) {
            rc = fault_rows(t, s->fids, nmiss);
            if (rc)
                return rc;
            if (mode_of(t) != EC_CACHE_ROWS)
                return MODE_CHANGED;
        }
        memcpy(s->todo, s->next, nnext * sizeof(*s->next));
        ntodo = nnext;
    }
    return 0;
}

/* Rows to host memory, by the tensor's mode; a mode that changes under a
 * gather (an operator's policy) restarts it in the new one. */
int cl_gather_host(ec_tensor *t, const int64_t *ids, size_t n, void *out, ec_dtype dst)
{
    ec_client *c = t->c;
    struct counts ct = zero_counts;
    struct scratch *s;
    int rc;

    if ((rc = cl_stale(c)))
        return rc;
    if (mode_of(t) == EC_CACHE_DYNAMIC)
        return cl_gather_dyn(t, ids, n, out, dst);
    if (!(s = cl_scratch_get(n)))
        return EC_ENOMEM;
    for (int tries = 0;; tries++) {
        rc = mode_of(t) == EC_CACHE_ROWS && c->seg.item_buckets
                 ? gather_rows(t, s, ids, n, out, dst, &ct)
                 : gather_parts(t, s, ids, n, out, dst, &ct);
        if (rc != MODE_CHANGED)
            break;
        if (tries == 8) {
            rc = ec_seterr(EC_EBUSY, "tensor '%s' keeps changing how it is cached (rows, "
                                     "partitions): is a policy being changed in a loop?",
                           t->t.name);
            break;
        }
    }
    cl_count(&c->session->gathers, 1);
    cl_count(&c->session->rows, n);
    cl_count(&c->session->hits, ct.hits);
    cl_count(&c->session->misses, ct.misses);
    cl_count(&c->session->retries, ct.retries);
    if (t->tstat) {
        cl_count(&t->tstat->rows, n);
        cl_count(&t->tstat->hits, ct.hits);
    }
    return rc;
}

int ec_tensor_gather_ex(ec_tensor *t, const int64_t *ids, size_t n, void *out,
                        size_t out_size, const ec_gather_opts *opts)
{
    ec_gather_opts o = opts ? *opts : (ec_gather_opts){0};
    ec_dtype dst;
    int64_t *hids = NULL;
    int rc;

    if (!t || (n && (!ids || !out)))
        return ec_seterr(EC_EINVAL, "ec_tensor_gather_ex: NULL argument");
    if (o.flags & ~(EC_GATHER_OUT_DEVICE | EC_GATHER_IDS_DEVICE))
        return ec_seterr(EC_EINVAL, "unknown gather flags 0x%x", o.flags);
    if ((o.flags & EC_GATHER_IDS_DEVICE) && !(o.flags & EC_GATHER_OUT_DEVICE))
        return ec_seterr(EC_EINVAL, "ids on a GPU need the output on that GPU "
                                    "(EC_GATHER_OUT_DEVICE)");
    dst = o.out_dtype == EC_DTYPE_INVALID ? (ec_dtype)t->t.dtype : o.out_dtype;
    if (n == 0)
        return 0;
    if (o.flags & EC_GATHER_IDS_DEVICE) {
        const ec_backend *b = cl_be();
        /* Before anything a graph capture forbids (the copy synchronizes). */
        if ((rc = cl_device_stream_check(o.device, o.stream)) ||
            (rc = cl_device_ready(t->c, o.device)))
            return rc;
        if (b->check_ptr && (rc = b->check_ptr(ids, o.device)))
            return ec_adderr(rc, "ids");
        rc = cl_gather_device_ids(t, ids, n, out, out_size, dst, &o);
        if (rc != CL_NOT_HERE)
            return rc;
        if (n > SIZE_MAX / sizeof(*hids) || !(hids = malloc(n * sizeof(*hids))))
            return ec_seterr(EC_ENOMEM, "host copy of %zu ids", n);
        if ((rc = b->copy_to_host(hids, ids, n * sizeof(*hids), o.device, o.stream))) {
            free(hids);
            return rc;
        }
        ids = hids;
    }
    rc = cl_gather_check(t, ids, n, out_size, dst);
    if (rc == 0)
        rc = o.flags & EC_GATHER_OUT_DEVICE ? cl_gather_device(t, ids, n, out, dst, &o)
                                            : cl_gather_host(t, ids, n, out, dst);
    free(hids);
    return rc;
}
