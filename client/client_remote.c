/*
 * client_remote.c - libembcache's calls of the shared tier: ec_model_publish,
 * ec_model_pull and ec_model_unpublish (include/embcache.h). Each is one
 * PUBLISH, PULL or UNPUBLISH
 * request, answered when the daemon's importer thread has finished it
 * (core/server_remote.c), under the client's mutex.
 */
#include "client/client_impl.h"

#include <string.h>

#include "core/publish.h"

static int remote_call(ec_client *c, uint16_t op, const char *what, const char *model,
                       const char *version, const char *url, uint32_t flags,
                       ec_publish_result *out)
{
    ec_publish_result res = {0};
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model || !version)
        return ec_seterr(EC_EINVAL, "%s: NULL argument", what);
    if (!url)
        url = ""; /* the daemon's --remote */
    if (flags & ~EC_PULL_LAZY)
        return ec_seterr(EC_EINVAL, "%s: unknown flags 0x%x", what, flags);
    if (!model[0] || strlen(model) > EC_NAME_MAX || !version[0] ||
        strlen(version) > EC_NAME_MAX)
        return ec_seterr(EC_EINVAL, "%s: model and version are 1..%d bytes", what,
                         EC_NAME_MAX);
    if (strlen(url) > EC_PUB_URL_MAX)
        return ec_seterr(EC_EINVAL, "%s: the cluster URL is at most %d bytes "
                         "(redis-cluster://host:port[,host:port...])", what, EC_PUB_URL_MAX);
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, op);
    ec_put_str(&w, model);
    ec_put_str(&w, version);
    ec_put_str(&w, url);
    if (flags) /* an older daemon rejects the field: only sent when used */
        ec_put_u32(&w, flags);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        res.version = ec_get_i64(&r);
        res.tensors = ec_get_u32(&r);
        res.bytes = ec_get_u64(&r);
        if (!ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed %s reply", what);
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0 && out)
        *out = res;
    return rc;
}

int ec_model_publish(ec_client *c, const char *model, const char *version,
                     const char *cluster_url, ec_publish_result *out)
{
    return remote_call(c, EC_OP_PUBLISH, "ec_model_publish", model, version, cluster_url, 0,
                       out);
}

int ec_model_pull(ec_client *c, const char *model, const char *version,
                  const char *cluster_url, ec_publish_result *out)
{
    return remote_call(c, EC_OP_PULL, "ec_model_pull", model, version, cluster_url, 0, out);
}

int ec_model_unpublish(ec_client *c, const char *model, const char *version,
                       const char *cluster_url, ec_publish_result *out)
{
    return remote_call(c, EC_OP_UNPUBLISH, "ec_model_unpublish", model, version, cluster_url,
                       0, out);
}

int ec_model_pull_flags(ec_client *c, const char *model, const char *version,
                        const char *cluster_url, uint32_t flags, ec_publish_result *out)
{
    return remote_call(c, EC_OP_PULL, "ec_model_pull_flags", model, version, cluster_url,
                       flags, out);
}
