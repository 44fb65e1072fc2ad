/*
 * server_reload.c - SIGHUP, or a RELOAD request (`embcache reload`, an
 * administrator's): embcached reads its configuration again and applies,
 * while it serves, what may change at run time (server.h lists the
 * fields). Clients stay connected; nothing is re-created.
 *
 * The server loop (server.c) reads SIGHUP from its signalfd and calls
 * srv_reload(), and a RELOAD request srv_h_reload(), which answers with
 * the summary line or the reload's error once it is applied (so
 * `systemctl reload`, whose ExecReload is `embcache reload`, returns when
 * the reload is done and fails when it was refused). Both run on the
 * server thread, the only thread that reads the server's configuration
 * (s->live), the engine and the dynamic tables, so nothing here takes a
 * lock. Reading and checking the file, and saying
 * what changed and what needs a restart, is cfg->reload's job
 * (core/daemon_config.c); a reload it refuses changes nothing. Counted in
 * config_reloads, config_reload_failures and config_last_reload_ok.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "core/dyntable.h"
#include "core/engine.h"
#include "core/rcluster.h"

#include "core/server_impl.h"

/* May users other than ours and root connect? Then the socket is 0666. */
static bool socket_open_to_others(const ec_server_config *c)
{
    return c->allow_any || c->n_allow_uids || c->n_admin_uids;
}

/* The cluster's credentials, read again on every reload (a rotated
 * password keeps its file's name): connections made from now on start
 * with them; those already authenticated stay. The reload has checked the
 * file (daemon_config.c); one that changed since and fails now keeps the
 * old credentials. */
static void reload_credentials(const ec_server_config *cur, const ec_server_config *next)
{
    ec_rcluster_auth a;

    if (!next->remote_auth_file[0]) {
        if (cur->remote_auth_file[0]) {
            ec_rcluster_set_default_auth(NULL, NULL);
            ec_info("reload: no remote-auth-file any more: new connections to the cluster "
                    "send no AUTH");
        }
        return;
    }
    if (ec_rcluster_auth_load(next->remote_auth_file, &a) < 0) {
        ec_error("reload: %s; the cluster's credentials stay as they were", ec_last_error());
        return;
    }
    ec_rcluster_set_default_auth(cur->remote, &a);
    explicit_bzero(&a, sizeof(a));
    ec_info("reload: the cluster's credentials read again from %s; new connections use them",
            next->remote_auth_file);
}

/* Apply the fields of next that may change at run time, then take next
 * (whose other fields are the running ones) as the configuration. */
static void apply(server *s, const ec_server_config *next)
{
    const ec_server_config *cur = &s->live;

    if (next->budget != cur->budget || next->ttl_seconds != cur->ttl_seconds ||
        next->ttl_jitter != cur->ttl_jitter || next->rate_window != cur->rate_window) {
        ec_engine_limits l = {.budget = next->budget,
                              .ttl_seconds = next->ttl_seconds,
                              .ttl_jitter = next->ttl_jitter,
                              .rate_window = next->rate_window};
        if (ec_engine_set_limits(s->engine, &l) < 0)
            ec_error("reload: the engine's limits: %s", ec_last_error());
    }
    if (next->remote_no_keep != cur->remote_no_keep ||
        next->remote_keep_reserve != cur->remote_keep_reserve ||
        next->remote_keep_max != cur->remote_keep_max)
        ec_engine_set_remote_keep(s->engine, !next->remote_no_keep, next->remote_keep_reserve,
                                  next->remote_keep_max);
    reload_credentials(cur, next);
    if ((next->wal_sync != cur->wal_sync || next->wal_sync_ms != cur->wal_sync_ms) &&
        ec_dyn_set_sync(s->dyn, (ec_wal_sync_mode)next->wal_sync, next->wal_sync_ms) < 0)
        ec_error("reload: the write-ahead log's sync mode: %s (it keeps the old one)",
                 ec_last_error());
    /* The socket's mode follows who may connect; the path is chmod'ed only
     * while it is still the socket this daemon bound. */
    if (socket_open_to_others(next) != socket_open_to_others(cur)) {
        struct stat st;
        mode_t mode = socket_open_to_others(next) ? 0666 : 0600;
        if (stat(cur->socket_path, &st) == 0 && st.st_ino == s->sock_st.st_ino &&
            st.st_dev == s->sock_st.st_dev) {
            if (chmod(cur->socket_path, mode) < 0)
                ec_warn("reload: cannot chmod %04o %s: %s; connect rights of other uids "
                        "are as before", (unsigned)mode, cur->socket_path, strerror(errno));
        }
    }
    /* epoch_hold_max, pin_lease, max_clients, max_clients_per_uid and the
     * uid lists are read where they are used: taking next is applying
     * them. Connections already accepted are kept, even past a lowered
     * limit or of a uid no longer allowed. */
    s->live = *next;
}

/* Read the configuration again and apply it; summary (cap bytes, may be
 * NULL): what changed. 0, or the reload's error (nothing changed). */
static int reload(server *s, char *summary, size_t cap)
{
    ec_server_config next;
    int rc;

    memset(&next, 0, sizeof(next));
    if ((rc = s->live.reload(s->live.reload_arg, &s->live, &next, summary, cap)) < 0) {
        s->conf.failures++;
        s->conf.last_ok = false;
        return rc;
    }
    apply(s, &next);
    s->conf.reloads++;
    s->conf.last_ok = true;
    return 0;
}

void srv_reload(server *s)
{
    if (!s->live.reload) {
        ec_warn("SIGHUP: this daemon has no configuration to read again; ignored");
        return;
    }
    (void)reload(s, NULL, 0);
}

int srv_h_reload(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char summary[2048] = "";
    ec_wbuf w;
    int rc;

    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_RELOAD);
    if (!s->live.reload)
        return ec_seterr(EC_EINVAL, "this daemon has no configuration to read again");
    ec_info("reload requested by uid %u", (unsigned)c->uid);
    if ((rc = reload(s, summary, sizeof(summary))) < 0)
        return rc;
    ec_msg_begin(&w, s->out, sizeof(s->out), (uint16_t)(EC_OP_RELOAD | EC_OP_REPLY), req_id, 0);
    ec_put_str(&w, summary);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}
