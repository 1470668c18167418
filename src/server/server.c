/* server: starts a member — data directory, client and peer listeners — and
 * runs its io loop until SIGTERM or SIGINT. The raft loop, the WAL and apply
 * threads join here as their layers land (docs/architecture.md). */
#include "server/server.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "api/api.h"
#include "peer/peer.h"

struct server {
    uv_loop_t loop;
    log_t *lg;
    const struct config *cfg;
    api_server_t *api;
    peer_transport_t *peer;
    uv_signal_t sigterm, sigint;
    int stopping;
};

static void on_signal_closed(uv_handle_t *h) {
    (void)h;
}

/* Stops accepting, lets the listeners close their connections, and drops the
 * signal handles so the loop runs out once the last handle is closed. */
static void server_stop(struct server *s) {
    if (s->stopping)
        return;
    s->stopping = 1;
    if (s->api)
        api_server_close(s->api, NULL, NULL);
    if (s->peer)
        peer_transport_close(s->peer, NULL, NULL);
    s->api = NULL;
    s->peer = NULL;
    uv_close((uv_handle_t *)&s->sigterm, on_signal_closed);
    uv_close((uv_handle_t *)&s->sigint, on_signal_closed);
}

static void on_signal(uv_signal_t *h, int signum) {
    struct server *s = h->data;
    LOG_INFO(s->lg, "received signal; shutting down", LOG_STR("signal", strsignal(signum)));
    server_stop(s);
}

/* Binds every listen URL; the first failure stops the start-up. */
static int listen_all(struct server *s, struct util_err *err) {
    const struct config *cfg = s->cfg;
    struct api_config acfg;
    api_config_default(&acfg);
    acfg.max_request_bytes = (size_t)cfg->max_request_bytes;
    int rc = api_server_new(&s->loop, s->lg, &acfg, &s->api, err);
    if (rc == 0)
        rc = peer_transport_new(&s->loop, s->lg, &s->peer, err);
    for (size_t i = 0; rc == 0 && i < cfg->listen_peer_urls.n; i++)
        rc = peer_transport_listen(s->peer, cfg->listen_peer_urls.v[i].text, err);
    for (size_t i = 0; rc == 0 && i < cfg->listen_client_urls.n; i++)
        rc = api_server_listen(s->api, cfg->listen_client_urls.v[i].text, err);
    return rc;
}

int server_run(const struct config *cfg, log_t *lg, struct util_err *err) {
    char member_id[17], cluster_id[17];
    snprintf(member_id, sizeof(member_id), "%016" PRIx64, cfg->member_id);
    snprintf(cluster_id, sizeof(cluster_id), "%016" PRIx64, cfg->cluster_id);
    LOG_INFO(lg, "starting quoin", LOG_STR("quoin-version", UTIL_QUOIN_VERSION),
             LOG_STR("etcd-api-version", UTIL_ETCD_CLUSTER_VERSION), LOG_STR("name", cfg->name),
             LOG_STR("data-dir", cfg->data_dir), LOG_STR("member-id", member_id),
             LOG_STR("cluster-id", cluster_id),
             LOG_STR("initial-cluster-token", cfg->initial_cluster_token));

    server_datadir_t *dd = NULL;
    int rc = server_datadir_open(cfg->data_dir, lg, &dd, err);
    if (rc != 0)
        return rc;

    struct server s = {.lg = lg, .cfg = cfg};
    if ((rc = uv_loop_init(&s.loop)) != 0) {
        server_datadir_close(dd);
        return util_errorf(err, rc, "cannot create the event loop: %s", uv_strerror(rc));
    }
    uv_signal_init(&s.loop, &s.sigterm);
    uv_signal_init(&s.loop, &s.sigint);
    s.sigterm.data = s.sigint.data = &s;
    uv_signal_start(&s.sigterm, on_signal, SIGTERM);
    uv_signal_start(&s.sigint, on_signal, SIGINT);

    rc = listen_all(&s, err);
    if (rc == 0)
        LOG_INFO(lg, "ready to serve client requests", LOG_STR("name", cfg->name));
    else
        server_stop(&s);
    uv_run(&s.loop, UV_RUN_DEFAULT);
    int closed = uv_loop_close(&s.loop);
    if (closed != 0)
        LOG_WARN(lg, "event loop closed with handles still open", LOG_INT("code", closed));
    server_datadir_close(dd);
    if (rc == 0)
        LOG_INFO(lg, "stopped serving", LOG_STR("name", cfg->name));
    return rc;
}
