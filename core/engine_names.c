/*
 * engine_names.c - resolving (model, version or alias, tensor) without a
 * catalog query where the answer is already known.
 *
 * A resolve costs the daemon's one server thread a few SQLite statements,
 * tens of microseconds, and the refusal of a name that does not exist costs
 * more (its message lists the names that do). Clients resolve once per
 * tensor, but a typo in a fleet's configuration, or a hostile peer, sends
 * the same miss again and again, or a new one each time. Two structures
 * answer those without the catalog:
 *
 *   the filter   a set of hashes of every (model), (model, version),
 *                (model, alias) and (model, tensor name) the catalog holds,
 *                built by one listing query (ec_catalog_each_name). A name
 *                absent from it is refused at once; one present may still
 *                be unknown (a hash collision, or a tensor of another
 *                version) and goes on.
 *   the answers  the last answers of the catalog, direct-mapped by a hash
 *                of the full request and compared in full: a tensor id, or
 *                the refusal and its message.
 *
 * Both are dropped when the catalog changes: ec_catalog_changes() counts
 * every commit in the process (imports on the importer thread, aliases,
 * retires, policies on this one) and is read on every resolve. While the
 * daemon runs it holds the data directory's lock and is the catalog's only
 * writer. An import committed but not yet acknowledged may be refused for
 * that instant, which its client cannot tell from before the commit.
 *
 * Called by the engine on the server thread (ec_engine_resolve).
 */
#include "engine.h"
#include "core/engine_impl.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/err.h"
#include "common/log.h"

#define ANSWERS 1024u /* a power of two */

struct answer {
    uint64_t h;
    int rc;          /* 0: tensor is the answer; else the refusal */
    uint32_t tensor;
    char *key;       /* model \0 version \0 tensor \0 */
    size_t klen;
    char *msg;       /* the refusal's message, or NULL */
};

/* A model's names as its refusals list them. */
struct lists {
    char *versions, *aliases, *tensors;
};

struct ec_names {
    uint64_t changes;         /* ec_catalog_changes() when built */
    bool built;               /* the filter holds every name */
    ec_u64map filter;         /* hash of a (model, version|alias|tensor) -> (void *)1 */
    ec_u64map lists;          /* hash of a model -> struct lists: the known models */
    struct answer *answers[ANSWERS];
};

static uint64_t name_hash(const char *model, char kind, const char *name)
{
    char buf[2 * (EC_NAME_MAX + 1) + 2];
    size_t a = strlen(model), b = name ? strlen(name) : 0;
    uint64_t h;

    /* NUL-terminated names (the callers' buffers, or literals): at most
     * EC_NAME_MAX of each is hashed. */
    a = a > EC_NAME_MAX ? EC_NAME_MAX : a;
    b = b > EC_NAME_MAX ? EC_NAME_MAX : b;
    memcpy(buf, model, a);
    buf[a] = 0;
    buf[a + 1] = kind;
    memcpy(buf + a + 2, name ? name : "", b);
    h = XXH3_64bits(buf, a + 2 + b);
    return h ? h : 1;
}

static void lists_clear(ec_u64map *m)
{
    for (size_t i = 0; i < m->cap; i++) {
        struct lists *l = m->vals[i];
        if (m->keys[i] && l) {
            free(l->versions);
            free(l->aliases);
            free(l->tensors);
            free(l);
        }
    }
    ec_u64map_free(m);
}

static void answer_free(struct answer *a)
{
    if (a) {
        free(a->key);
        free(a->msg);
        free(a);
    }
}

static void answers_clear(struct ec_names *n)
{
    for (unsigned i = 0; i < ANSWERS; i++) {
        answer_free(n->answers[i]);
        n->answers[i] = NULL;
    }
}

void eng_names_close(ec_engine *e)
{
    if (!e->names)
        return;
    answers_clear(e->names);
    ec_u64map_free(&e->names->filter);
    lists_clear(&e->names->lists);
    free(e->names);
    e->names = NULL;
}

static int add_name(const ec_cat_name *c, void *arg)
{
    struct ec_names *n = arg;
    struct lists *l;

    if (c->kind == 'M')
        return 0; /* a model is known by its lists, below */
    if (c->kind != 'L')
        return ec_u64map_put(&n->filter, name_hash(c->model, c->kind, c->name), (void *)1);
    l = calloc(1, sizeof(*l));
    if (!l || !(l->versions = strdup(c->versions)) || !(l->aliases = strdup(c->aliases)) ||
        !(l->tensors = strdup(c->tensors)) ||
        ec_u64map_put(&n->lists, name_hash(c->model, 'M', NULL), l)) {
        if (l) {
            free(l->versions);
            free(l->aliases);
            free(l->tensors);
        }
        free(l);
        return ec_seterr(EC_ENOMEM, "name filter");
    }
    return 0;
}

/* Drop what the catalog said before its last change; rebuild the filter. */
static void refresh(ec_engine *e, struct ec_names *n)
{
    uint64_t changes = ec_catalog_changes();

    if (n->built && n->changes == changes)
        return;
    answers_clear(n);
    ec_u64map_free(&n->filter);
    lists_clear(&n->lists);
    n->built = false;
    n->changes = changes;
    if (ec_catalog_each_name(e->cat, add_name, n)) {
        /* Without a whole filter every name goes to the catalog. */
        ec_warn("name filter not built (resolves query the catalog): %s", ec_last_error());
        ec_u64map_free(&n->filter);
        lists_clear(&n->lists);
        return;
    }
    n->built = true;
    e->st.name_filter_builds++;
}

/* The key of a request: model \0 version \0 tensor \0. */
static char *request_key(const char *model, const char *voa, const char *tensor, size_t *len)
{
    size_t a = strlen(model) + 1, b = strlen(voa) + 1, c = strlen(tensor) + 1;
    char *k = malloc(a + b + c);

    if (k) {
        memcpy(k, model, a);
        memcpy(k + a, voa, b);
        memcpy(k + a + b, tensor, c);
        *len = a + b + c;
    }
    return k;
}

/* Is the request surely unknown? Only well-formed names are judged (the
 * catalog words the refusal of a malformed one); 0 when it may be known. */
static int filter_refuses(const struct ec_names *n, const char *model, const char *voa,
                          const char *tensor)
{
    const struct lists *l;
    char ver[24];
    const char *p;
    uint64_t v = 0;

    if (!n->built || ec_catalog_check_name("model", model) < 0 ||
        ec_catalog_check_name("tensor", tensor) < 0 || !*voa)
        return 0;
    for (p = voa; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10 / 2)
            return 0; /* out of range: the catalog says so */
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (*p && (p != voa || ec_catalog_check_name("alias", voa) < 0))
        return 0;
    if (!(l = ec_u64map_get(&n->lists, name_hash(model, 'M', NULL))))
        return ec_seterr(EC_ENOENT, "unknown model '%s'; 'embcache ls' lists models", model);
    if (p != voa && !*p) {
        snprintf(ver, sizeof(ver), "%" PRIu64, v);
        if (!ec_u64map_get(&n->filter, name_hash(model, 'V', ver)))
            return ec_seterr(EC_ENOENT, "model '%s' has no version %s (versions: %s)", model,
                             ver, l->versions);
    } else if (!ec_u64map_get(&n->filter, name_hash(model, 'A', voa))) {
        return ec_seterr(EC_ENOENT, "model '%s' has no alias '%s' (aliases: %s); use a version "
                                    "number or set the alias first",
                         model, voa, l->aliases);
    }
    if (!ec_u64map_get(&n->filter, name_hash(model, 'T', tensor)))
        return ec_seterr(EC_ENOENT, "model '%s' has no tensor '%s' in any version (tensors: %s)",
                         model, tensor, l->tensors);
    return 0;
}

int eng_names_resolve(ec_engine *e, const char *model, const char *voa, const char *tensor,
                      uint32_t *id)
{
    struct ec_names *n = e->names;
    struct answer *a;
    ec_cat_tensor t = {0};
    size_t klen = 0;
    char *key;
    uint64_t h;
    int rc;

    if (!model || !voa || !tensor)
        return ec_seterr(EC_EINVAL, "resolve: NULL name");
    if (!n && !(n = e->names = calloc(1, sizeof(*n))))
        return ec_seterr(EC_ENOMEM, "name filter");
    refresh(e, n);
    key = request_key(model, voa, tensor, &klen);
    if (!key)
        return ec_seterr(EC_ENOMEM, "resolve");
    h = XXH3_64bits(key, klen);
    a = n->answers[h & (ANSWERS - 1)];
    if (a && a->h == h && a->klen == klen && memcmp(a->key, key, klen) == 0) {
        free(key);
        e->st.name_answers_reused++;
        if (a->rc == 0) {
            *id = a->tensor;
            return 0;
        }
        return ec_seterr(a->rc, "%s", a->msg ? a->msg : ec_strerror(a->rc));
    }
    if ((rc = filter_refuses(n, model, voa, tensor)) != 0) {
        free(key);
        e->st.name_filter_refusals++;
        return rc;
    }
    rc = ec_catalog_resolve(e->cat, model, voa, tensor, &t);
    e->st.name_catalog_queries++;
    if (rc == 0 && (t.id <= 0 || t.id > UINT32_MAX))
        rc = ec_seterr(EC_EINTERNAL, "tensor id %lld out of range", (long long)t.id);
    if (rc == 0)
        *id = (uint32_t)t.id;
    ec_cat_tensor_clear(&t);
    /* Remember the answer, or a refusal for a name that does not exist (not
     * a failure of the catalog itself, which may pass). */
    if (ec_catalog_changes() == n->changes && (rc == 0 || rc == EC_ENOENT) &&
        (a = calloc(1, sizeof(*a)))) {
        a->h = h;
        a->rc = rc;
        a->tensor = rc == 0 ? *id : 0;
        a->key = key;
        a->klen = klen;
        key = NULL;
        if (rc && !(a->msg = strdup(ec_last_error()))) {
            answer_free(a);
        } else {
            answer_free(n->answers[h & (ANSWERS - 1)]);
            n->answers[h & (ANSWERS - 1)] = a;
        }
    }
    free(key);
    return rc;
}
