/*
 * metrics.c - embcached's Prometheus endpoint (see metrics.h for who owns
 * what and which thread runs what).
 *
 * Naming: the statistics of `embcache stats` do not say which are counters
 * and which are gauges, so known names are looked up in stat_table (type,
 * help); a counter's series is embcache_<name>_total, a gauge's
 * embcache_<name> (the stat names already end in _bytes or _seconds where
 * they are such). A name not in the table (a new statistic, or one with a
 * device number in it) is exported as the gauge embcache_<name> with a
 * generic help line. Per-tensor series carry the labels model, version and
 * tensor, for the first EC_METRICS_MAX_TENSORS tensors by id (bounded
 * cardinality); embcache_tensor_series_omitted says how many were left out.
 * Per-namespace series carry namespace and uid (its owner).
 */
#include "core/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "common/err.h"
#include "common/log.h"

#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define MAX_FAMILIES 1024 /* distinct statistic names rendered, at most */

/* Known statistics: c(ounter) or g(auge), and what they mean. */
static const struct stat_desc {
    const char *stat;
    char type;
    const char *help;
} stat_table[] = {
    {"generation", 'g', "Generation of the shared segment"},
    {"numa_nodes", 'g', "NUMA nodes of the host"},
    {"uptime_seconds", 'g', "Seconds since the engine started"},
    {"segment_bytes", 'g', "Size of the shared segment"},
    {"data_bytes", 'g', "Size of the segment's data area"},
    {"used_bytes", 'g', "Bytes of the data area in use (under the budget)"},
    {"pinned_bytes", 'g', "Bytes of resident units pinned by clients"},
    {"dynamic_table_bytes", 'g', "Bytes of the data area held by dynamic tables"},
    {"largest_free_bytes", 'g', "Largest free run of the data area"},
    {"free_runs", 'g', "Free runs of the data area"},
    {"resident_partitions", 'g', "Partitions resident in the host tier"},
    {"resident_units", 'g', "Resident units on the eviction clock"},
    {"inflight_reads", 'g', "Partition reads in flight"},
    {"fault_requests", 'c', "Fault requests clients sent"},
    {"fault_partitions", 'c', "Partitions faulted in"},
    {"fault_coalesced", 'c', "Faults coalesced with a read in flight"},
    {"fault_deferred", 'c', "Faults deferred for room"},
    {"pager_io_uring", 'g', "1 when the pager uses io_uring"},
    {"pager_reads", 'c', "Reads the pager issued"},
    {"pager_read_bytes", 'c', "Bytes the pager read"},
    {"pager_direct_reads", 'c', "Pager reads with O_DIRECT"},
    {"pager_fixed_buffer_reads", 'c', "Pager reads into registered buffers"},
    {"pager_retries", 'c', "Pager reads retried"},
    {"pager_errors", 'c', "Pager reads that failed"},
    {"pager_inflight", 'g', "Pager reads in flight"},
    {"pager_queued", 'g', "Pager reads queued"},
    {"page_ins", 'c', "Partitions paged in"},
    {"page_in_bytes", 'c', "Bytes paged in"},
    {"checksum_failures", 'c', "Partition reads whose checksum failed"},
    {"read_errors", 'c', "Partition reads that failed"},
    {"budget_bytes", 'g', "Memory budget of the host tier"},
    {"evictions", 'c', "Partitions evicted"},
    {"expirations", 'c', "Partitions evicted by their TTL"},
    {"prewarm_active", 'g', "Prewarms running"},
    {"prewarm_partitions_done", 'c', "Partitions prewarmed"},
    {"prewarm_partitions_failed", 'c', "Partitions whose prewarm failed"},
    {"retired_versions", 'c', "Versions retired"},
    {"idle_version_evictions", 'c', "Versions evicted by their idle policy"},
    {"idle_evicted_bytes", 'c', "Bytes evicted by idle policies"},
    {"refreshed_partitions", 'c', "Partitions refreshed"},
    {"evicted_bytes", 'c', "Bytes evicted"},
    {"pins_taken", 'c', "Pins taken"},
    {"pins_released", 'c', "Pins released"},
    {"files_open", 'g', "Partition files open"},
    {"files_opened", 'c', "Partition files opened"},
    {"files_closed_for_room", 'c', "Partition files closed to make room"},
    {"resolves", 'c', "Names resolved"},
    {"resolve_filter_builds", 'c', "Name filters built"},
    {"resolve_filter_refusals", 'c', "Resolves refused by the name filter"},
    {"resolve_answers_reused", 'c', "Resolve answers reused"},
    {"resolve_catalog_queries", 'c', "Resolves that queried the catalog"},
    {"restart_kept_partitions", 'g', "Partitions kept at the last warm restart"},
    {"restart_dropped_partitions", 'g', "Partitions dropped at the last warm restart"},
    {"view_quarantined_bytes", 'g', "Bytes of views held back from reuse"},
    {"failed_read_replays", 'c', "Failed reads replayed"},
    {"view_released_bytes", 'c', "Bytes of views released after quarantine"},
    {"models", 'g', "Models in the catalog"},
    {"versions", 'g', "Versions in the catalog"},
    {"tensors", 'g', "Tensors in the catalog"},
    {"row_tensors", 'g', "Tensors cached by rows"},
    {"row_items", 'g', "Rows cached as items"},
    {"row_item_bytes", 'g', "Bytes of cached row items"},
    {"row_slabs", 'g', "Slabs of the item store"},
    {"row_item_index_bytes", 'g', "Bytes of the item index"},
    {"row_faults", 'c', "Rows clients asked the daemon for"},
    {"row_fault_coalesced", 'c', "Row faults coalesced"},
    {"row_block_reads", 'c', "Block reads for rows"},
    {"row_block_bytes", 'c', "Bytes of block reads for rows"},
    {"row_admitted", 'c', "Rows admitted to the item store"},
    {"row_evicted", 'c', "Rows evicted from the item store"},
    {"row_ghost_hits", 'c', "Row admissions that hit the ghost queue"},
    {"row_promoted", 'c', "Rows promoted to the main queue"},
    {"row_neighbour_evictions", 'c', "Rows evicted to make room for a neighbour"},
    {"row_hints", 'c', "Access hints clients reported"},
    {"row_hints_stale", 'c', "Access hints that were stale"},
    {"row_value_bytes", 'g', "Bytes of cached row values"},
    {"row_heap_bytes", 'g', "Bytes of the daemon's row bookkeeping"},
    {"row_staging_bytes", 'g', "Bytes of the row staging area"},
    {"row_staging_waits", 'c', "Row faults that waited for staging room"},
    {"mode_switches", 'c', "Tensors that changed cache mode"},
    {"device_tier_gpus", 'g', "GPUs of the device tier"},
    {"limbo_host_bytes", 'g', "Host bytes freed but still readable by GPU gathers"},
    {"limbo_device_bytes", 'g', "Device bytes freed but still readable by GPU gathers"},
    {"reclaimed_bytes", 'c', "Bytes reclaimed from limbo"},
    {"result_namespaces", 'g', "Result namespaces"},
    {"result_items", 'g', "Cached results"},
    {"result_bytes", 'g', "Bytes of cached results"},
    {"result_negative_items", 'g', "Cached negative results"},
    {"result_leases", 'g', "Result leases outstanding"},
    {"result_lease_timeouts", 'c', "Result leases that timed out"},
    {"result_leases_passed_on_close", 'c', "Result leases passed on when their owner left"},
    {"result_rebinds", 'c', "Namespace bindings re-checked"},
    {"result_put_errors", 'c', "Result puts that failed"},
    {"result_arenas", 'g', "Private result arenas"},
    {"result_arena_bytes", 'g', "Bytes of private result arenas"},
    {"remote_result_gets", 'c', "Values of remote result namespaces asked of the cluster"},
    {"remote_result_hits", 'c', "Values of remote result namespaces found in the cluster"},
    {"remote_result_sets", 'c', "Values of remote result namespaces stored in the cluster"},
    {"remote_result_leases_won", 'c', "Cluster leases won: computed on this host"},
    {"remote_result_leases_lost", 'c', "Cluster leases lost: computed on another host"},
    {"remote_result_errors", 'c', "Failed cluster requests and refused values of remote "
                                  "result namespaces"},
    {"remote_result_refused", 'c', "Values in the cluster that failed validation"},
    {"remote_result_local_fallbacks", 'c', "Misses of remote namespaces computed here "
                                           "because the cluster failed"},
    {"remote_result_pending", 'g', "Cluster requests of remote result namespaces under way"},
    {"dyn_broken", 'g', "1 when the dynamic tables' log is broken"},
    {"dyn_tables", 'g', "Dynamic tables"},
    {"dyn_load_failures", 'c', "Dynamic tables that failed to load"},
    {"wal_files", 'g', "Write-ahead log files"},
    {"wal_bytes", 'g', "Bytes of the write-ahead log"},
    {"wal_appends", 'c', "Write-ahead log appends"},
    {"wal_syncs", 'c', "Write-ahead log syncs"},
    {"wal_direct", 'g', "1 while write-ahead log appends bypass the page cache (O_DIRECT)"},
    {"wal_direct_appends", 'c', "Write-ahead log appends written with O_DIRECT"},
    {"clients", 'g', "Clients connected"},
    {"alias_switches", 'c', "Aliases moved to another version"},
    {"alias_switches_cold", 'c', "Aliases moved to a version under 90% resident (not prewarmed)"},
    {"requests_failed", 'c', "Requests answered with an error (by code: request_errors)"},
    {"connections_accepted", 'c', "Connections accepted"},
    {"connections_rejected", 'c', "Connections rejected"},
    {"connections_rejected_uid", 'c', "Connections rejected for their uid"},
    {"connections_rejected_uid_limit", 'c', "Connections rejected by the per-uid limit"},
    {"epoch_hold_disconnects", 'c', "Clients disconnected for holding an epoch too long"},
    {"pin_lease_revocations", 'c', "Views revoked from stopped clients"},
    {"epoch_ghosts", 'g', "Epochs held for clients gone"},
    {"epoch_ghost_holds", 'c', "Times ghost epochs held back memory"},
    {"requests_denied", 'c', "Requests denied for lack of permission"},
    {"protocol_errors", 'c', "Malformed requests"},
    {"clients_disconnected_slow", 'c', "Clients disconnected for not reading replies"},
    {"imports", 'c', "Imports done"},
    {"import_failures", 'c', "Imports that failed"},
    {"published_versions", 'c', "Versions published to a Redis Cluster"},
    {"published_bytes", 'c', "Tensor bytes published to a Redis Cluster"},
    {"pulled_versions", 'c', "Versions pulled from a Redis Cluster"},
    {"pulled_bytes", 'c', "Tensor bytes pulled from a Redis Cluster"},
    {"pull_failures", 'c', "Pulls that failed (nothing was registered)"},
    {"unpublished_versions", 'c', "Versions removed from a Redis Cluster"},
    {"remote_tier", 'g', "1 when the daemon reads lazily pulled versions from a cluster"},
    {"remote_reads", 'c', "Reads from the remote tier's cluster, fetched and verified"},
    {"remote_bytes", 'c', "Bytes read from the remote tier's cluster"},
    {"remote_errors", 'c', "Remote tier reads that failed (cluster unreachable, no --remote)"},
    {"remote_checksum_failures", 'c',
     "Remote tier reads refused: a chunk missing, of the wrong size or failing its checksum"},
    {"remote_kept_bytes", 'c', "Partition bytes read from the remote tier and kept on local disk"},
    {"remote_keep_failures", 'c', "Partitions read from the remote tier that could not be kept"},
    {"remote_keep_skipped_space", 'c',
     "Remote reads not kept: the data directory's file system at remote-keep-reserve"},
    {"remote_inflight", 'g', "Remote tier reads in flight"},
    {"remote_redirects", 'c', "MOVED and ASK redirects the remote tier's reads followed"},
    {"remote_retries", 'c', "Keys the remote tier's reads sent again (redirects, failovers)"},
    {"remote_connect_failures", 'c', "Failed connects and opens of the remote tier's cluster"},
    {"remote_local_refetches", 'c',
     "Kept partitions that failed their checksum on disk and were read from the cluster again"},
    {"remote_partitions_local", 'g', "Partitions of lazily pulled tensors on local disk"},
    {"remote_disk_bytes", 'g', "Bytes of lazily pulled tensors kept on local disk now"},
    {"remote_disk_evictions", 'c',
     "Kept partitions removed from local disk again (remote-keep-reserve, remote-keep-max)"},
    {"remote_disk_evicted_bytes", 'c', "Bytes of kept partitions removed from local disk again"},
    {"remote_partitions_remote", 'g', "Partitions of lazily pulled tensors only on the cluster"},
    {"config_reloads", 'c', "Configuration reloads (SIGHUP) applied"},
    {"config_reload_failures", 'c',
     "Configuration reloads refused (an invalid file: nothing changed; the log says why)"},
    {"config_last_reload_ok", 'g',
     "1 when the last configuration reload (or a restarted worker's re-read) succeeded"},
    {"client_gathers", 'c', "Gathers clients reported (untrusted)"},
    {"client_rows", 'c', "Rows clients reported gathering (untrusted)"},
    {"client_hit_rows", 'c', "Rows clients found resident (untrusted)"},
    {"client_miss_rows", 'c', "Rows clients had to fault in (untrusted)"},
    {"client_retries", 'c', "Gather retries clients reported (untrusted)"},
    {"client_faults", 'c', "Faults clients reported (untrusted)"},
    {"client_rows_device_tier", 'c', "Rows clients read from the device tier (untrusted)"},
    {"client_rows_mapped_host", 'c', "Rows GPU gathers read through the mapped segment"},
    {"client_rows_staged_host", 'c', "Rows GPU gathers read through a staging buffer"},
    {"client_rows_gpu_resolved", 'c', "Rows of ids on a GPU that the GPU found and copied"},
};

/* Per-tensor families: the label set (model, version, tensor) each. */
static const struct tensor_family {
    const char *name;
    char type;
    const char *help;
    size_t off; /* of a uint64_t in ec_proto_tensor_stat */
} tensor_families[] = {
    {"embcache_tensor_bytes", 'g', "Size of the tensor",
     offsetof(ec_proto_tensor_stat, bytes)},
    {"embcache_tensor_resident_bytes", 'g', "Bytes of the tensor resident in the host tier",
     offsetof(ec_proto_tensor_stat, resident_bytes)},
    {"embcache_tensor_resident_rows", 'g', "Rows of the tensor cached as items",
     offsetof(ec_proto_tensor_stat, resident_rows)},
    {"embcache_tensor_rows_served_total", 'c', "Rows of the tensor clients gathered (untrusted)",
     offsetof(ec_proto_tensor_stat, rows_served)},
    {"embcache_tensor_hits_total", 'c', "Rows of the tensor clients found resident (untrusted)",
     offsetof(ec_proto_tensor_stat, hits)},
    {"embcache_tensor_row_faults_total", 'c', "Rows of the tensor clients asked the daemon for",
     offsetof(ec_proto_tensor_stat, row_faults)},
    {"embcache_tensor_read_bytes_total", 'c', "Bytes read from the tensor's file",
     offsetof(ec_proto_tensor_stat, bytes_read)},
};

/* Per-namespace families: index into ec_proto_ns.counters (proto.h). */
static const struct ns_family {
    const char *name;
    char type;
    const char *help;
    unsigned counter;
} ns_families[] = {
    {"embcache_namespace_items", 'g', "Results cached in the namespace", 0},
    {"embcache_namespace_bytes", 'g', "Bytes of results cached in the namespace", 2},
    {"embcache_namespace_hits_total", 'c', "Lookups in the namespace that found a result", 3},
    {"embcache_namespace_misses_total", 'c', "Lookups in the namespace that found none", 4},
};

struct ns_rec {
    char name[EC_NS_NAME_MAX + 1];
    uint32_t uid;
    uint64_t counters[4];
};

struct ec_metrics_sink {
    ec_metrics *m;
    bool failed;                       /* out of memory: the scrape gets 503 */
    char (*names)[64];                 /* statistics rendered, to skip a repeated one */
    size_t nnames;
    ec_proto_tensor_stat *tensors;     /* EC_METRICS_MAX_TENSORS */
    size_t ntensors;
    uint64_t tensors_omitted;
    struct ns_rec *ns;                 /* EC_NS_MAX */
    size_t nns;
};

struct ec_metrics {
    struct MHD_Daemon *d;
    int efd;
    pthread_mutex_t lock;
    pthread_cond_t cond;               /* served moved, or stopping */
    uint64_t asked, served;            /* under lock */
    bool stopping;                     /* under lock */
    bool ok;                           /* under lock: the last rendering succeeded */
    char *text;                        /* under lock: the last rendering */
    size_t len, cap;
    _Atomic int64_t alive_ms;          /* server thread writes; HTTP thread reads */
    ec_metrics_sink sink;              /* server thread only */
};

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ */
/* Rendering (server thread, m->lock held)                             */

static void do_append_locked(ec_metrics_sink *k, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void do_append_locked(ec_metrics_sink *k, const char *fmt, ...)
{
    ec_metrics *m = k->m;
    va_list ap;
    int n;

    if (k->failed)
        return;
    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(m->text + m->len, m->cap - m->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            k->failed = true;
            return;
        }
        if ((size_t)n < m->cap - m->len)
            break;
        {
            size_t cap = (m->cap * 2 > m->len + (size_t)n + 1) ? m->cap * 2
                                                              : m->len + (size_t)n + 4096;
            char *t = realloc(m->text, cap);
            if (!t) {
                k->failed = true;
                return;
            }
            m->text = t;
            m->cap = cap;
        }
    }
    m->len += (size_t)n;
}

/* A label value per the exposition format: \\, \" and \n escaped. */
static void put_label_locked(ec_metrics_sink *k, const char *key, const char *v, bool last)
{
    char buf[2 * (EC_NAME_MAX + 1) + 1];
    size_t j = 0;

    for (const char *p = v; *p && j + 2 < sizeof(buf); p++) {
        if (*p == '\\' || *p == '"') {
            buf[j++] = '\\';
            buf[j++] = *p;
        } else if (*p == '\n') {
            buf[j++] = '\\';
            buf[j++] = 'n';
        } else {
            buf[j++] = *p;
        }
    }
    buf[j] = 0;
    do_append_locked(k, "%s=\"%s\"%s", key, buf, last ? "" : ",");
}

static void family_locked(ec_metrics_sink *k, const char *name, char type, const char *help)
{
    do_append_locked(k, "# HELP %s %s\n# TYPE %s %s\n", name, help, name,
                     type == 'c' ? "counter" : "gauge");
}

int ec_metrics_put_stat(const char *stat, uint64_t v, void *sink)
{
    ec_metrics_sink *k = sink;
    const struct stat_desc *d = NULL;
    char name[96], help[128];
    size_t i, j;

    for (i = 0; i < k->nnames; i++)
        if (!strcmp(k->names[i], stat))
            return 0;  /* rendered already: one family per name */
    if (k->nnames == MAX_FAMILIES || strlen(stat) >= sizeof(k->names[0]))
        return 0;
    snprintf(k->names[k->nnames++], sizeof(k->names[0]), "%s", stat);
    for (i = 0; i < sizeof(stat_table) / sizeof(stat_table[0]); i++)
        if (!strcmp(stat_table[i].stat, stat)) {
            d = &stat_table[i];
            break;
        }
    /* A metric name is [a-zA-Z_:][a-zA-Z0-9_:]*: anything else becomes _. */
    j = (size_t)snprintf(name, sizeof(name), "embcache_");
    for (const char *p = stat; *p && j + 7 < sizeof(name); p++)
        name[j++] = ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                     (*p >= '0' && *p <= '9') || *p == '_')
                        ? *p
                        : '_';
    name[j] = 0;
    if (d && d->type == 'c')
        strcat(name, "_total");
    if (!d)
        snprintf(help, sizeof(help), "embcache statistic %s (see embcache stats)", name + 9);
    family_locked(k, name, d ? d->type : 'g', d ? d->help : help);
    do_append_locked(k, "%s %" PRIu64 "\n", name, v);
    return 0;
}

void ec_metrics_put_tensor(ec_metrics_sink *k, const ec_proto_tensor_stat *t)
{
    if (k->ntensors == EC_METRICS_MAX_TENSORS) {
        k->tensors_omitted++;
        return;
    }
    k->tensors[k->ntensors++] = *t;
}

void ec_metrics_put_ns(ec_metrics_sink *k, const ec_proto_ns *ns)
{
    struct ns_rec *r;

    if (k->nns == EC_NS_MAX)
        return;
    r = &k->ns[k->nns++];
    snprintf(r->name, sizeof(r->name), "%s", ns->name);
    r->uid = ns->owner_uid;
    for (unsigned i = 0; i < 4; i++)
        r->counters[i] = ns->counters[ns_families[i].counter];
}

void ec_metrics_put_hist(ec_metrics_sink *k, const char *name, const char *help,
                         const ec_hist *h)
{
    char fam[96];
    uint64_t cum = 0;

    snprintf(fam, sizeof(fam), "embcache_%s_seconds", name);
    do_append_locked(k, "# HELP %s %s\n# TYPE %s histogram\n", fam, help, fam);
    for (unsigned b = 0; b < EC_HIST_BUCKETS; b++) {
        cum += h->bucket[b];
        do_append_locked(k, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", fam, ec_hist_le_seconds(b),
                         cum);
    }
    do_append_locked(k, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum %.9f\n%s_count %" PRIu64
                        "\n",
                     fam, h->count, fam, (double)h->sum_ns / 1e9, fam, h->count);
}

/* Labels of the error codes, by -code (include/embcache.h). */
static const char *const error_names[] = {
    NULL,       "EINVAL",  "ENOMEM",  "EIO",     "ENOENT",    "ERANGE",   "ECHECKSUM",
    "EPROTO",   "ECONN",   "EEXIST",  "EFORMAT", "EDTYPE",    "ENOSPC",   "EPERM",
    "EBUSY",    "ESTALE",  "EVERSION", "ETOOBIG", "EINTERNAL", "ECORRUPT", "EDEVICE",
    "ETIMEOUT",
};
_Static_assert(sizeof(error_names) / sizeof(error_names[0]) == 1 - EC_E_LAST,
               "a label for every error code");

void ec_metrics_put_errors(ec_metrics_sink *k, const uint64_t *by_code)
{
    family_locked(k, "embcache_request_errors_total", 'c',
                  "Requests answered with an error, by its code (include/embcache.h)");
    for (int i = 1; i <= -EC_E_LAST; i++)
        do_append_locked(k, "embcache_request_errors_total{code=\"%s\"} %" PRIu64 "\n",
                         error_names[i], by_code[i]);
}

/* The families gathered by the put_tensor and put_ns calls. */
static void render_labelled_locked(ec_metrics_sink *k)
{
    for (size_t f = 0; f < sizeof(tensor_families) / sizeof(tensor_families[0]); f++) {
        const struct tensor_family *tf = &tensor_families[f];
        family_locked(k, tf->name, tf->type, tf->help);
        for (size_t i = 0; i < k->ntensors; i++) {
            const ec_proto_tensor_stat *t = &k->tensors[i];
            char ver[24];
            uint64_t v;
            memcpy(&v, (const char *)t + tf->off, sizeof(v));
            snprintf(ver, sizeof(ver), "%" PRId64, t->version);
            do_append_locked(k, "%s{", tf->name);
            put_label_locked(k, "model", t->model, false);
            put_label_locked(k, "version", ver, false);
            put_label_locked(k, "tensor", t->name, true);
            do_append_locked(k, "} %" PRIu64 "\n", v);
        }
    }
    family_locked(k, "embcache_tensor_series_omitted", 'g',
                  "Open tensors left out of the per-tensor series (at most 200 are shown)");
    do_append_locked(k, "embcache_tensor_series_omitted %" PRIu64 "\n", k->tensors_omitted);
    for (size_t f = 0; f < sizeof(ns_families) / sizeof(ns_families[0]); f++) {
        const struct ns_family *nf = &ns_families[f];
        family_locked(k, nf->name, nf->type, nf->help);
        for (size_t i = 0; i < k->nns; i++) {
            char uid[16];
            snprintf(uid, sizeof(uid), "%" PRIu32, k->ns[i].uid);
            do_append_locked(k, "%s{", nf->name);
            put_label_locked(k, "namespace", k->ns[i].name, false);
            put_label_locked(k, "uid", uid, true);
            do_append_locked(k, "} %" PRIu64 "\n", k->ns[i].counters[f]);
        }
    }
}

void ec_metrics_serve(ec_metrics *m, ec_metrics_render_fn fn, void *arg)
{
    ec_metrics_sink *k = &m->sink;
    uint64_t v;
    int64_t t0;

    (void)!read(m->efd, &v, sizeof(v));
    pthread_mutex_lock(&m->lock);
    if (m->served == m->asked) {
        pthread_mutex_unlock(&m->lock);
        return;
    }
    t0 = mono_ms();
    m->len = 0;
    if (m->cap)
        m->text[0] = 0;
    k->failed = false;
    k->nnames = k->ntensors = k->nns = 0;
    k->tensors_omitted = 0;
    fn(arg, k);
    render_labelled_locked(k);
    family_locked(k, "embcache_metrics_render_seconds", 'g',
                  "Time the server thread took to render this scrape");
    do_append_locked(k, "embcache_metrics_render_seconds %.6f\n",
                     (double)(mono_ms() - t0) / 1000.0);
    m->ok = !k->failed;
    m->served = m->asked;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

void ec_metrics_alive(ec_metrics *m)
{
    if (m)
        atomic_store_explicit(&m->alive_ms, mono_ms(), memory_order_relaxed);
}

/* ------------------------------------------------------------------ */
/* The HTTP thread                                                     */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
                             char *body, size_t len, bool must_free)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, body, must_free ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret;

    if (!r) {
        if (must_free)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Ask the server thread for a rendering and wait for it: a copy of the
 * text, or NULL (it did not answer in time, rendering failed, stopping). */
static char *scrape(ec_metrics *m, size_t *len)
{
    struct timespec until;
    uint64_t mine, one = 1;
    char *out = NULL;
    int rc = 0;

    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += EC_METRICS_WAIT_MS / 1000;
    until.tv_nsec += (long)(EC_METRICS_WAIT_MS % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&m->lock);
    mine = ++m->asked;
    (void)!write(m->efd, &one, sizeof(one));
    while (m->served < mine && !m->stopping && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&m->cond, &m->lock, &until);
    if (m->served >= mine && m->ok && !m->stopping && (out = malloc(m->len + 1))) {
        memcpy(out, m->text, m->len);
        *len = m->len;
    }
    pthread_mutex_unlock(&m->lock);
    return out;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    static char ok[] = "ok\n", stale[] = "the server loop has not ticked for 5 s\n",
                busy[] = "the server loop did not answer within 2 s\n",
                notfound[] = "not found: try /metrics or /healthz\n",
                notallowed[] = "method not allowed: GET only\n";
    ec_metrics *m = cls;
    bool get = !strcmp(method, MHD_HTTP_METHOD_GET), head = !strcmp(method, "HEAD");

    (void)version;
    (void)upload_data;
    /* A body is neither wanted nor read: answer at the first call. */
    if (upload_data_size)
        *upload_data_size = 0;
    (void)con_cls;
    if (!get && !head)
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", notallowed,
                     sizeof(notallowed) - 1, false);
    if (!strcmp(url, "/healthz")) {
        int64_t age = mono_ms() - atomic_load_explicit(&m->alive_ms, memory_order_relaxed);
        if (age <= EC_METRICS_HEALTH_MS)
            return reply(conn, MHD_HTTP_OK, "text/plain", ok, sizeof(ok) - 1, false);
        return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain", stale,
                     sizeof(stale) - 1, false);
    }
    if (!strcmp(url, "/metrics")) {
        size_t len = 0;
        char *text = scrape(m, &len);
        if (!text)
            return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain", busy,
                         sizeof(busy) - 1, false);
        return reply(conn, MHD_HTTP_OK, CONTENT_TYPE, text, len, true);
    }
    return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain", notfound, sizeof(notfound) - 1,
                 false);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[256];

    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = 0;
    ec_warn("metrics listener: %s", msg);
}

/* ------------------------------------------------------------------ */
/* Start and stop (server thread)                                      */

int ec_metrics_start(const char *addr, unsigned port, ec_metrics **out)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    pthread_condattr_t ca;
    ec_metrics *m;
    int rc;

    if (port == 0 || port > 65535 || inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        return ec_seterr(EC_EINVAL, "--metrics-listen %s:%u is not an IPv4 address and port",
                         addr, port);
    m = calloc(1, sizeof(*m));
    if (!m)
        return ec_seterr(EC_ENOMEM, "metrics listener");
    m->efd = -1;
    m->sink.m = m;
    m->sink.names = calloc(MAX_FAMILIES, sizeof(*m->sink.names));
    m->sink.tensors = calloc(EC_METRICS_MAX_TENSORS, sizeof(*m->sink.tensors));
    m->sink.ns = calloc(EC_NS_MAX, sizeof(*m->sink.ns));
    if (!m->sink.names || !m->sink.tensors || !m->sink.ns) {
        rc = ec_seterr(EC_ENOMEM, "metrics listener");
        goto fail_mem;
    }
    pthread_mutex_init(&m->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->cond, &ca);
    pthread_condattr_destroy(&ca);
    atomic_store_explicit(&m->alive_ms, mono_ms(), memory_order_relaxed);
    m->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (m->efd < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "metrics listener: eventfd");
        goto fail;
    }
    /* One thread answers every connection in turn: a scrape is small and a
     * waiting one holds at most EC_METRICS_WAIT_MS. */
    m->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                            on_request, m, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)EC_METRICS_MAX_CONNS,
                            MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    if (!m->d) {
        rc = ec_seterr(EC_EIO,
                       "cannot serve metrics on %s:%u (is the port taken? pick another with "
                       "--metrics-listen)",
                       addr, port);
        goto fail;
    }
    ec_info("metrics: http://%s:%u/metrics and /healthz", addr, port);
    *out = m;
    return 0;
fail:
    if (m->efd >= 0)
        close(m->efd);
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
fail_mem:
    free(m->sink.ns);
    free(m->sink.tensors);
    free(m->sink.names);
    free(m);
    return rc;
}

int ec_metrics_event_fd(const ec_metrics *m) { return m->efd; }

void ec_metrics_stop(ec_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->stopping = true;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    MHD_stop_daemon(m->d);
    close(m->efd);
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
    free(m->text);
    free(m->sink.ns);
    free(m->sink.tensors);
    free(m->sink.names);
    free(m);
}
