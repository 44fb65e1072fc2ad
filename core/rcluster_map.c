/*
 * rcluster_map.c - where keys live in a Redis Cluster: CRC16 hash slots,
 * seed lists, the slot map read from CLUSTER SLOTS (every field validated)
 * and its refresh, MOVED/ASK addresses. Part of the Redis Cluster client
 * (core/rcluster.h; the design is on top of core/rcluster.c). Runs on the
 * handle's one thread.
 *
 * The map: slot -> index of its master in c->nodes, RC_NONE for a slot no
 * node serves. A refresh builds a new map aside and installs it only when the
 * whole reply is valid. Replicas are validated but not used (masters only).
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/rcluster_impl.h"

/* ------------------------------------------------------------------------
 * Hashing */

static const uint16_t crc16tab[256] = {
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50a5, 0x60c6, 0x70e7,
    0x8108, 0x9129, 0xa14a, 0xb16b, 0xc18c, 0xd1ad, 0xe1ce, 0xf1ef,
    0x1231, 0x0210, 0x3273, 0x2252, 0x52b5, 0x4294, 0x72f7, 0x62d6,
    0x9339, 0x8318, 0xb37b, 0xa35a, 0xd3bd, 0xc39c, 0xf3ff, 0xe3de,
    0x2462, 0x3443, 0x0420, 0x1401, 0x64e6, 0x74c7, 0x44a4, 0x5485,
    0xa56a, 0xb54b, 0x8528, 0x9509, 0xe5ee, 0xf5cf, 0xc5ac, 0xd58d,
    0x3653, 0x2672, 0x1611, 0x0630, 0x76d7, 0x66f6, 0x5695, 0x46b4,
    0xb75b, 0xa77a, 0x9719, 0x8738, 0xf7df, 0xe7fe, 0xd79d, 0xc7bc,
    0x48c4, 0x58e5, 0x6886, 0x78a7, 0x0840, 0x1861, 0x2802, 0x3823,
    0xc9cc, 0xd9ed, 0xe98e, 0xf9af, 0x8948, 0x9969, 0xa90a, 0xb92b,
    0x5af5, 0x4ad4, 0x7ab7, 0x6a96, 0x1a71, 0x0a50, 0x3a33, 0x2a12,
    0xdbfd, 0xcbdc, 0xfbbf, 0xeb9e, 0x9b79, 0x8b58, 0xbb3b, 0xab1a,
    0x6ca6, 0x7c87, 0x4ce4, 0x5cc5, 0x2c22, 0x3c03, 0x0c60, 0x1c41,
    0xedae, 0xfd8f, 0xcdec, 0xddcd, 0xad2a, 0xbd0b, 0x8d68, 0x9d49,
    0x7e97, 0x6eb6, 0x5ed5, 0x4ef4, 0x3e13, 0x2e32, 0x1e51, 0x0e70,
    0xff9f, 0xefbe, 0xdfdd, 0xcffc, 0xbf1b, 0xaf3a, 0x9f59, 0x8f78,
    0x9188, 0x81a9, 0xb1ca, 0xa1eb, 0xd10c, 0xc12d, 0xf14e, 0xe16f,
    0x1080, 0x00a1, 0x30c2, 0x20e3, 0x5004, 0x4025, 0x7046, 0x6067,
    0x83b9, 0x9398, 0xa3fb, 0xb3da, 0xc33d, 0xd31c, 0xe37f, 0xf35e,
    0x02b1, 0x1290, 0x22f3, 0x32d2, 0x4235, 0x5214, 0x6277, 0x7256,
    0xb5ea, 0xa5cb, 0x95a8, 0x8589, 0xf56e, 0xe54f, 0xd52c, 0xc50d,
    0x34e2, 0x24c3, 0x14a0, 0x0481, 0x7466, 0x6447, 0x5424, 0x4405,
    0xa7db, 0xb7fa, 0x8799, 0x97b8, 0xe75f, 0xf77e, 0xc71d, 0xd73c,
    0x26d3, 0x36f2, 0x0691, 0x16b0, 0x6657, 0x7676, 0x4615, 0x5634,
    0xd94c, 0xc96d, 0xf90e, 0xe92f, 0x99c8, 0x89e9, 0xb98a, 0xa9ab,
    0x5844, 0x4865, 0x7806, 0x6827, 0x18c0, 0x08e1, 0x3882, 0x28a3,
    0xcb7d, 0xdb5c, 0xeb3f, 0xfb1e, 0x8bf9, 0x9bd8, 0xabbb, 0xbb9a,
    0x4a75, 0x5a54, 0x6a37, 0x7a16, 0x0af1, 0x1ad0, 0x2ab3, 0x3a92,
    0xfd2e, 0xed0f, 0xdd6c, 0xcd4d, 0xbdaa, 0xad8b, 0x9de8, 0x8dc9,
    0x7c26, 0x6c07, 0x5c64, 0x4c45, 0x3ca2, 0x2c83, 0x1ce0, 0x0cc1,
    0xef1f, 0xff3e, 0xcf5d, 0xdf7c, 0xaf9b, 0xbfba, 0x8fd9, 0x9ff8,
    0x6e17, 0x7e36, 0x4e55, 0x5e74, 0x2e93, 0x3eb2, 0x0ed1, 0x1ef0,
};

uint16_t ec_rcluster_crc16(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint16_t crc = 0;

    for (size_t i = 0; i < len; i++)
        crc = (uint16_t)((crc << 8) ^ crc16tab[((crc >> 8) ^ p[i]) & 0xff]);
    return crc;
}

uint16_t ec_rcluster_keyslot(const void *key, size_t len)
{
    const char *k = key;
    const char *open = len ? memchr(k, '{', len) : NULL;

    if (open) {
        size_t start = (size_t)(open - k) + 1;
        const char *close = memchr(k + start, '}', len - start);
        if (close && close > k + start)
            return ec_rcluster_crc16(k + start, (size_t)(close - (k + start))) & 16383;
    }
    return ec_rcluster_crc16(k, len) & 16383;
}

/* ------------------------------------------------------------------------
 * Addresses */

uint64_t rc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void rc_sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull),
                          .tv_nsec = (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* A host as a node reports it or a seed names it: a name, IPv4 or IPv6. */
bool rc_host_ok(const char *h, size_t len)
{
    if (len == 0 || len >= EC_RCLUSTER_HOST_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = h[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == '_' || ch == ':' || ch == '%'))
            return false;
    }
    return true;
}

/* Decimal 1..65535, nothing else. */
bool rc_port_parse(const char *s, size_t len, uint16_t *out)
{
    unsigned v = 0;

    if (len == 0 || len > 5)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v == 0 || v > 65535)
        return false;
    *out = (uint16_t)v;
    return true;
}

/* "host:port", "[v6]:port": host into out (unbracketed). */
static int rc_addr_parse(const char *s, size_t len, ec_rcluster_addr *out)
{
    const char *colon, *host = s;
    size_t hlen;

    if (len && s[0] == '[') {
        const char *rb = memchr(s, ']', len);
        if (!rb || rb + 1 >= s + len || rb[1] != ':')
            return -1;
        host = s + 1;
        hlen = (size_t)(rb - host);
        colon = rb + 1;
        if (!memchr(host, ':', hlen))
            return -1; /* brackets are for IPv6 only */
    } else {
        colon = len ? memchr(s, ':', len) : NULL;
        if (!colon || memchr(colon + 1, ':', len - (size_t)(colon + 1 - s)))
            return -1; /* none, or an unbracketed IPv6 address */
        hlen = (size_t)(colon - s);
    }
    if (!rc_host_ok(host, hlen) || !rc_port_parse(colon + 1, len - (size_t)(colon + 1 - s),
                                                  &out->port))
        return -1;
    memcpy(out->host, host, hlen);
    out->host[hlen] = '\0';
    return 0;
}

int ec_rcluster_parse_seeds(const char *spec, ec_rcluster_addr *out, size_t cap, size_t *n)
{
    char pbuf[80];
    const char *p, *end;
    size_t count = 0, slen, scheme = strlen(EC_RCLUSTER_URL_SCHEME);

    if (!spec || !out || !n || cap == 0 || cap > EC_RCLUSTER_MAX_SEEDS)
        return ec_seterr(EC_EINVAL, "ec_rcluster_parse_seeds: spec, out and n must be set and "
                                    "cap in 1..%d", EC_RCLUSTER_MAX_SEEDS);
    slen = strlen(spec);
    p = spec;
    end = spec + slen;
    if (slen >= scheme && strncmp(spec, EC_RCLUSTER_URL_SCHEME, scheme) == 0) {
        p += scheme;
        if (end > p && end[-1] == '/')
            end--;
        if (memchr(p, '@', (size_t)(end - p)))
            return ec_seterr(EC_EINVAL, "Redis Cluster URL '%s': user and password are not "
                                        "supported; use redis-cluster://host:port[,host:port]",
                             ec_printable(spec, slen, pbuf, sizeof(pbuf)));
        if (memchr(p, '/', (size_t)(end - p)) || memchr(p, '?', (size_t)(end - p)))
            return ec_seterr(EC_EINVAL, "Redis Cluster URL '%s': no path or query allowed; use "
                                        "redis-cluster://host:port[,host:port]",
                             ec_printable(spec, slen, pbuf, sizeof(pbuf)));
    } else if (strstr(spec, "://")) {
        return ec_seterr(EC_EINVAL, "'%s': the only URL scheme is %s (a cluster's seed "
                                    "nodes: redis-cluster://host:port[,host:port])",
                         ec_printable(spec, slen, pbuf, sizeof(pbuf)), EC_RCLUSTER_URL_SCHEME);
    }
    if (p >= end)
        return ec_seterr(EC_EINVAL, "Redis Cluster seeds '%s': no address; give host:port"
                                    "[,host:port...]", ec_printable(spec, slen, pbuf, sizeof(pbuf)));
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;
        if (count == cap)
            return ec_seterr(EC_EINVAL, "Redis Cluster seeds: more than %zu addresses", cap);
        if (rc_addr_parse(p, (size_t)(e - p), &out[count]) != 0)
            return ec_seterr(EC_EINVAL, "Redis Cluster seed %zu '%s' is not host:port (a name "
                                        "or IPv4 address, or [IPv6], and a port 1..65535)",
                             count + 1, ec_printable(p, (size_t)(e - p), pbuf, sizeof(pbuf)));
        count++;
        p = e;
        if (comma) {
            p++;
            if (p == end)
                return ec_seterr(EC_EINVAL, "Redis Cluster seeds '%s' end with a comma: give "
                                            "host:port[,host:port...]",
                                 ec_printable(spec, slen, pbuf, sizeof(pbuf)));
        }
    }
    *n = count;
    return 0;
}

/* ------------------------------------------------------------------------
 * The slot map */

/* One [host, port, id?, ...] of CLUSTER SLOTS. host "" or nil: the node we
 * asked; "?": unknown (the range is left unassigned: *idx = RC_NONE). */
static int rc_parse_endpoint(ec_rcluster *c, const rc_node *from, const redisReply *e,
                             bool master, uint16_t *idx)
{
    const char *host;
    size_t hlen;
    uint16_t port;

    if (!rc_is(e, REDIS_REPLY_ARRAY) || e->elements < 2 ||
        !(rc_is(e->element[0], REDIS_REPLY_STRING) || rc_is(e->element[0], REDIS_REPLY_NIL)) ||
        !rc_is(e->element[1], REDIS_REPLY_INTEGER))
        return ec_seterr(EC_EPROTO, "a node entry is not [host, port, ...]");
    if (e->element[1]->integer < 1 || e->element[1]->integer > 65535)
        return ec_seterr(EC_EPROTO, "a node entry has port %lld", e->element[1]->integer);
    port = (uint16_t)e->element[1]->integer;
    if (e->elements >= 3 && !rc_is(e->element[2], REDIS_REPLY_STRING))
        return ec_seterr(EC_EPROTO, "a node entry's id is not a string");
    host = e->element[0]->str;
    hlen = e->element[0]->len;
    if (!host || hlen == 0) {
        host = from->host;
        hlen = strlen(host);
    } else if (hlen == 1 && host[0] == '?') {
        *idx = RC_NONE;
        return 0;
    }
    if (!rc_host_ok(host, hlen)) {
        char pbuf[48];
        return ec_seterr(EC_EPROTO, "a node entry has host '%s'",
                         ec_printable(host, hlen, pbuf, sizeof(pbuf)));
    }
    if (!master) {
        *idx = RC_NONE; /* replicas are validated, not used: reads go to masters */
        return 0;
    }
    return rc_node_index(c, host, hlen, port, idx);
}

static int rc_parse_slots(ec_rcluster *c, const rc_node *from, const redisReply *r,
                          uint16_t *map)
{
    size_t covered = 0;
    int rc;

    for (size_t s = 0; s < EC_RCLUSTER_SLOTS; s++)
        map[s] = RC_NONE;
    if (rc_is(r, REDIS_REPLY_ERROR)) {
        char pbuf[96];
        if (r->len >= 6 && memcmp(r->str, "NOAUTH", 6) == 0)
            return ec_seterr(EC_EPERM, "CLUSTER SLOTS refused: '%s': the cluster wants a "
                             "password (--remote-auth-file)",
                             ec_printable(r->str, r->len, pbuf, sizeof(pbuf)));
        return ec_seterr(EC_EPROTO, "CLUSTER SLOTS refused: '%s' (is cluster-enabled on?)",
                         ec_printable(r->str, r->len, pbuf, sizeof(pbuf)));
    }
    if (!rc_is(r, REDIS_REPLY_ARRAY))
        return ec_seterr(EC_EPROTO, "CLUSTER SLOTS answered with reply type %d, not an array",
                         r ? r->type : -1);
    if (r->elements > EC_RCLUSTER_SLOTS)
        return ec_seterr(EC_EPROTO, "CLUSTER SLOTS lists %zu ranges (over 16384)", r->elements);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        long long lo, hi;
        uint16_t idx;
        if (!rc_is(e, REDIS_REPLY_ARRAY) || e->elements < 3 ||
            !rc_is(e->element[0], REDIS_REPLY_INTEGER) ||
            !rc_is(e->element[1], REDIS_REPLY_INTEGER))
            return ec_seterr(EC_EPROTO, "CLUSTER SLOTS range %zu is not [start, end, master, "
                                        "replicas...]", i);
        lo = e->element[0]->integer;
        hi = e->element[1]->integer;
        if (lo < 0 || hi >= EC_RCLUSTER_SLOTS || lo > hi)
            return ec_seterr(EC_EPROTO, "CLUSTER SLOTS range %zu is [%lld, %lld], outside "
                                        "0..16383 or reversed", i, lo, hi);
        if ((rc = rc_parse_endpoint(c, from, e->element[2], true, &idx)) != 0)
            return ec_adderr(rc, "CLUSTER SLOTS range %zu master", i);
        for (size_t k = 3; k < e->elements; k++) {
            uint16_t unused;
            if ((rc = rc_parse_endpoint(c, from, e->element[k], false, &unused)) != 0)
                return ec_adderr(rc, "CLUSTER SLOTS range %zu replica %zu", i, k - 2);
        }
        for (long long s = lo; s <= hi; s++) {
            if (map[s] != RC_NONE)
                return ec_seterr(EC_EPROTO, "CLUSTER SLOTS names slot %lld twice", s);
            map[s] = idx;
            covered += idx != RC_NONE;
        }
    }
    if (covered == 0)
        return ec_seterr(EC_EPROTO, "CLUSTER SLOTS assigns no slot: was the cluster created "
                                    "(redis-cli --cluster create)?");
    return 0;
}

/* Load the map from any node that answers (nodes we are connected to
 * first, then the other masters, then the seeds). Rate-limited unless force.
 * Returns 0 (loaded, or skipped by the rate limit), or an error. */
int rc_refresh(ec_rcluster *c, bool force, uint64_t deadline)
{
    uint64_t now = rc_now();
    uint16_t *map = NULL;
    rc_node **cand = NULL;
    size_t ncand = 0, ntried = 0;
    bool garbage = false, denied = false;
    char errs[EC_ERRMSG_MAX] = "";
    size_t elen = 0;
    int rc = EC_ECONN;
    static const rc_arg slots_argv[] = {{"CLUSTER", 7}, {"SLOTS", 5}};
    const rc_arg *argvs[1] = {slots_argv};
    const int argn[1] = {2};

    if (!force && c->last_refresh &&
        now - c->last_refresh < (uint64_t)c->o.refresh_interval_ms * 1000000ull)
        return 0;
    c->last_refresh = now;
    c->want_refresh = false;
    map = malloc(EC_RCLUSTER_SLOTS * sizeof(*map));
    cand = malloc((c->nnodes + c->nseeds) * sizeof(*cand) + 1);
    if (!map || !cand) {
        rc = ec_seterr(EC_ENOMEM, "out of memory refreshing the cluster map");
        goto out;
    }
    for (int pass = 0; pass < 2; pass++) {
        size_t n0 = c->nnodes;
        for (size_t k = 0; k < n0; k++) {
            rc_node *nd = c->nodes[(k + c->refresh_rr) % n0];
            if ((nd->state == NODE_UP) == (pass == 0))
                cand[ncand++] = nd;
        }
    }
    c->refresh_rr++;
    for (size_t k = 0; k < c->nseeds; k++) {
        uint16_t idx;
        bool dup = false;
        if (rc_node_index(c, c->seeds[k].host, strlen(c->seeds[k].host), c->seeds[k].port,
                          &idx) != 0)
            break;
        for (size_t j = 0; j < ncand; j++)
            dup |= cand[j] == c->nodes[idx];
        if (!dup)
            cand[ncand++] = c->nodes[idx];
    }
    for (size_t k = 0; k < ncand; k++) {
        rc_node *nd = cand[k];
        redisReply *r = NULL;
        uint64_t t = rc_now();
        uint64_t dl = t + ((uint64_t)c->o.connect_timeout_ms + c->o.io_timeout_ms) * 1000000ull;
        int n;
        if (t >= deadline && ntried > 0)
            break;
        if (dl > deadline)
            dl = deadline > t ? deadline : t + 1000000ull;
        ntried++;
        nd->err[0] = '\0';
        rc = rc_sync(c, nd, 1, argn, argvs, dl, &r);
        if (rc == 0) {
            rc = rc_parse_slots(c, nd, r, map);
            rc_free_obj(r);
            if (rc == 0) {
                memcpy(c->slot, map, sizeof(c->slot));
                c->gc_due = true;
                c->st.refreshes++;
                goto out;
            }
            rc_node_fail(c, nd, rc, "%s", ec_last_error()); /* don't trust its stream */
        }
        garbage |= rc == EC_EPROTO || rc == EC_ETOOBIG;
        denied |= rc == EC_EPERM;
        if (elen < sizeof(errs) - 1) {
            n = snprintf(errs + elen, sizeof(errs) - elen, "%s%s", elen ? "; " : "",
                         nd->err[0] ? nd->err : ec_last_error());
            if (n > 0)
                elen += (size_t)n;
        }
        if (rc == EC_ENOMEM)
            break;
    }
    c->st.refresh_failures++;
    /* A node that refused our credentials, or answered nonsense, says more
     * than one that did not answer. */
    rc = ec_seterr(denied ? EC_EPERM : garbage ? EC_EPROTO : rc == EC_ENOMEM ? rc : EC_ECONN,
                   "no node of the cluster answered CLUSTER SLOTS with a valid map (%zu tried): "
                   "%s", ntried, errs[0] ? errs : "no node or seed to ask");
out:
    free(map);
    free(cand);
    return rc;
}

/* Free the nodes that no slot names (invariant 4: only between calls).
 * Nothing to do unless the map or the nodes changed: the scan of every
 * slot would otherwise cost a few per cent of a reader's CPU. */
void rc_gc(ec_rcluster *c)
{
    uint16_t remap[EC_RCLUSTER_MAX_NODES];
    bool used[EC_RCLUSTER_MAX_NODES] = {false};
    size_t kept = 0;

    if (!c->gc_due)
        return;
    c->gc_due = false;
    for (size_t s = 0; s < EC_RCLUSTER_SLOTS; s++)
        if (c->slot[s] != RC_NONE)
            used[c->slot[s]] = true;
    for (size_t i = 0; i < c->nnodes; i++) {
        if (used[i]) {
            remap[i] = (uint16_t)kept;
            c->nodes[kept++] = c->nodes[i];
        } else {
            remap[i] = RC_NONE;
            rc_node_free(c->nodes[i]);
        }
    }
    if (kept == c->nnodes)
        return;
    c->nnodes = kept;
    for (size_t s = 0; s < EC_RCLUSTER_SLOTS; s++)
        if (c->slot[s] != RC_NONE)
            c->slot[s] = remap[c->slot[s]];
}

/* MOVED/ASK "<slot> <host>:<port>"; an empty host is the replying node's. */
int rc_parse_redirect(ec_rcluster *c, const rc_node *nd, const char *s, size_t len,
                             unsigned *slot, uint16_t *idx)
{
    const char *end = s + len, *sp = memchr(s, ' ', len), *colon = NULL, *a;
    ec_rcluster_addr addr;
    unsigned v = 0;

    if (!sp || sp == s || sp - s > 5)
        return -1;
    for (const char *d = s; d < sp; d++) {
        if (*d < '0' || *d > '9')
            return -1;
        v = v * 10 + (unsigned)(*d - '0');
    }
    if (v >= EC_RCLUSTER_SLOTS)
        return -1;
    a = sp + 1;
    for (const char *q = end; q > a; q--)
        if (q[-1] == ':') {
            colon = q - 1;
            break;
        }
    if (!colon || !rc_port_parse(colon + 1, (size_t)(end - colon - 1), &addr.port))
        return -1;
    if (colon == a) {
        snprintf(addr.host, sizeof(addr.host), "%s", nd->host);
    } else {
        size_t hl = (size_t)(colon - a);
        if (!rc_host_ok(a, hl))
            return -1;
        memcpy(addr.host, a, hl);
        addr.host[hl] = '\0';
    }
    *slot = v;
    return rc_node_index(c, addr.host, strlen(addr.host), addr.port, idx) == 0 ? 0 : -1;
}
