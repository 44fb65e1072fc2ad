/*
 * server_remote.c - the daemon's side of `embcache publish`, `embcache
 * pull` and `embcache unpublish` (core/publish.h): a model version's
 * partitions to a Redis Cluster, from there into this daemon's data
 * directory and catalog, and off the cluster again.
 *
 *   PUBLISH / PULL  (administrators) body: model, version (PUBLISH: a
 *                   number or an alias; PULL: a number), the cluster URL
 *                   ("redis-cluster://host:port[,host:port...]"; "": the
 *                   daemon's --remote), and for PULL an optional u32 of
 *                   flags (EC_PULL_LAZY: register the version with its data
 *                   left on the cluster, ec_pull_lazy). srv_h_publish_pull,
 *                   on the server thread, checks the body and queues the
 *                   request to the importer thread, which runs
 *                   srv_remote_run (it reads and writes the data directory,
 *                   which belongs to the daemon's uid, and talks to the
 *                   cluster for as long as that takes); srv_remote_done,
 *                   back on the server thread, counts it, logs it and
 *                   answers: i64 version, u32 tensors, u64 bytes.
 *   UNPUBLISH       (administrators) body: model, version (a number), the
 *                   cluster URL as above. The same path; the importer
 *                   thread runs ec_unpublish_version (no data directory,
 *                   but the daemon's credentials for its --remote).
 *
 * The statistics: published_versions, published_bytes, pulled_versions,
 * pulled_bytes, pull_failures, unpublished_versions (server_admin.c lists
 * them).
 */
#include "core/server_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "core/publish.h"

struct srv_remote_job {
    uint16_t op;
    uint32_t flags;             /* PULL: EC_PULL_LAZY */
    char url[EC_PUB_URL_MAX + 1];
    ec_pub_stats res;
};

int srv_h_publish_pull(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, uint16_t op)
{
    struct import_job *j = calloc(1, sizeof(*j));
    struct srv_remote_job *x = calloc(1, sizeof(*x));

    if (!j || !x) {
        free(j);
        free(x);
        return ec_seterr(EC_ENOMEM, "publish/pull job");
    }
    ec_get_str(r, j->model, sizeof(j->model));
    ec_get_str(r, j->version, sizeof(j->version));
    ec_get_str(r, x->url, sizeof(x->url));
    if (op == EC_OP_PULL && !r->bad && r->pos < r->len)
        x->flags = ec_get_u32(r); /* absent from older clients: 0 */
    if (!ec_rbuf_done(r) || !j->model[0] || !j->version[0] || (x->flags & ~EC_PULL_LAZY)) {
        free(j);
        free(x);
        return srv_bad_body(op);
    }
    if (!x->url[0]) { /* no cluster named: the daemon's --remote */
        if (!s->cfg->remote[0]) {
            int rc = ec_seterr(EC_EINVAL, "no cluster to %s %s version %s: name one "
                               "(--cluster redis-cluster://host:port) or start embcached "
                               "with --remote", op == EC_OP_PUBLISH ? "publish"
                                                : op == EC_OP_PULL  ? "pull"
                                                                    : "unpublish",
                               j->model, j->version);
            free(j);
            free(x);
            return rc;
        }
        snprintf(x->url, sizeof(x->url), "%s", s->cfg->remote);
    }
    if (srv_outstanding_take(c)) {
        free(j);
        free(x);
        return EC_EBUSY;
    }
    x->op = op;
    j->remote = x;
    j->owner = c->id;
    j->req_id = req_id;
    srv_import_enqueue(s, j);
    return 0;
}

/* Importer thread. */
int srv_remote_run(server *s, struct import_job *j)
{
    struct srv_remote_job *x = j->remote;

    if (x->op == EC_OP_PUBLISH)
        return ec_publish_version(s->icat, s->cfg->data_dir, j->model, j->version, x->url,
                                  &x->res);
    if (x->op == EC_OP_UNPUBLISH)
        return ec_unpublish_version(x->url, j->model, j->version, &x->res);
    if (x->flags & EC_PULL_LAZY)
        return ec_pull_lazy(s->icat, s->cfg->data_dir, j->model, j->version, x->url, &x->res);
    return ec_pull_version(s->icat, s->cfg->data_dir, j->model, j->version, x->url, &x->res);
}

/* Server thread. */
void srv_remote_done(server *s, struct conn *c, struct import_job *j)
{
    struct srv_remote_job *x = j->remote;
    bool pub = x->op == EC_OP_PUBLISH;

    if (j->rc) {
        if (x->op == EC_OP_PULL)
            s->st.pull_failures++;
        ec_warn("%s", j->msg);
    } else if (x->op == EC_OP_UNPUBLISH) {
        s->st.unpublished_versions++;
    } else if (pub) {
        s->st.published_versions++;
        s->st.published_bytes += x->res.bytes;
    } else {
        s->st.pulled_versions++;
        s->st.pulled_bytes += x->res.bytes;
    }
    if (c) {
        c->outstanding--;
        if (j->rc) {
            srv_reply_error(s, c, x->op, j->req_id, j->rc, j->msg);
        } else {
            ec_wbuf w;
            ec_msg_begin(&w, s->out, sizeof(s->out), (uint16_t)(x->op | EC_OP_REPLY),
                         j->req_id, 0);
            ec_put_i64(&w, x->res.version);
            ec_put_u32(&w, x->res.tensors);
            ec_put_u64(&w, x->res.bytes);
            srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
        }
    }
    free(x);
    j->remote = NULL;
}
