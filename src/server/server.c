/* server: starts a member — data directory, key space, apply thread, raft
 * loop, client and peer listeners — runs its io loop until SIGTERM or SIGINT,
 * then stops them in the order that loses nothing (docs/architecture.md). */
#include "server/server.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "server/v3.h"

int server_post(struct server *s, void (*fn)(void *ctx), void *ctx) {
    struct server_post *p = malloc(sizeof(*p));
    if (!p)
        return -ENOMEM;
    *p = (struct server_post){.fn = fn, .ctx = ctx};
    pthread_mutex_lock(&s->post_mu);
    if (s->posts_tail)
        s->posts_tail->next = p;
    else
        s->posts = p;
    s->posts_tail = p;
    pthread_mutex_unlock(&s->post_mu);
    uv_async_send(&s->post_wake);
    return 0;
}

static void run_posts(struct server *s) {
    pthread_mutex_lock(&s->post_mu);
    struct server_post *p = s->posts;
    s->posts = s->posts_tail = NULL;
    pthread_mutex_unlock(&s->post_mu);
    while (p) {
        struct server_post *next = p->next;
        p->fn(p->ctx);
        free(p);
        p = next;
    }
}

static void on_post(uv_async_t *a) {
    run_posts(a->data);
}

uint64_t server_next_id(struct server *s) {
    return atomic_fetch_add(&s->next_id, 1);
}

void v3_header(struct server *s, int64_t revision, struct pbw_header *h) {
    if (revision == 0) {
        uint64_t idx, term;
        int64_t compact;
        mvcc_state(s->db, &idx, &term, &revision, &compact);
    }
    struct node_status st;
    server_node_status(s->node, &st);
    *h = (struct pbw_header){.cluster_id = s->cluster_id,
                             .member_id = s->member_id,
                             .revision = revision,
                             .raft_term = st.term};
}

int v3_register(struct server *s, const struct api_grpc_method *m, size_t n, struct util_err *err) {
    for (size_t i = 0; i < n; i++) {
        int rc = api_server_register(s->api, &m[i]);
        if (rc != 0)
            return util_errorf(err, rc, "cannot register %s", m[i].path);
    }
    return 0;
}

void v3_header_msg(struct server *s, int64_t revision, Etcdserverpb__ResponseHeader *h) {
    struct pbw_header ph;
    v3_header(s, revision, &ph);
    h->cluster_id = ph.cluster_id;
    h->member_id = ph.member_id;
    h->revision = ph.revision;
    h->raft_term = ph.raft_term;
}

static void on_handle_closed(uv_handle_t *h) {
    (void)h;
}

/* A leader of other members passes leadership on before it stops, so the
 * cluster does not wait an election timeout for a new one (as etcd does on
 * SIGTERM). Waits at most one election timeout. io loop, at shutdown. */
static void hand_over_leadership(struct server *s) {
    struct node_status st;
    if (!s->node)
        return;
    server_node_status(s->node, &st);
    if (!st.is_leader || st.n_voters < 2)
        return;
    server_node_transfer_leadership(s->node, 0);
    uint64_t deadline = util_now_mono_ns() + (uint64_t)s->cfg->election_ms * 1000000u;
    struct timespec nap = {.tv_sec = 0, .tv_nsec = 10000000};
    while (util_now_mono_ns() < deadline) {
        server_node_status(s->node, &st);
        if (st.leader && !st.is_leader) {
            LOG_INFO(s->lg, "leadership handed over", LOG_UINT("leader", st.leader));
            return;
        }
        nanosleep(&nap, NULL);
    }
    LOG_WARN(s->lg, "no member took over leadership in time; stopping anyway");
}

/* Stops in the order that loses nothing: no new clients; the raft loop stops
 * taking proposals (queued ones are answered "server stopped"); the apply
 * thread applies what was committed; waiters still pending are answered; the
 * last posted work runs; then the loop runs out. io loop thread. */
static void server_stop(struct server *s) {
    if (s->stopping)
        return;
    s->stopping = 1;
    if (s->api)
        api_server_close(s->api, NULL, NULL);
    s->api = NULL;
    hand_over_leadership(s);
    server_node_stop(s->node);
    /* The raft loop is gone: nothing calls into the transport any more. */
    if (s->peer)
        peer_transport_close(s->peer, NULL, NULL);
    s->peer = NULL;
    server_apply_stop(s->apply);
    s->apply = NULL;
    server_wait_free(s->writes);
    server_wait_free(s->reads);
    s->writes = s->reads = NULL;
    run_posts(s);
    uv_close((uv_handle_t *)&s->tick_timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->sigterm, on_handle_closed);
    uv_close((uv_handle_t *)&s->sigint, on_handle_closed);
    uv_close((uv_handle_t *)&s->post_wake, on_handle_closed);
}

static void on_signal(uv_signal_t *h, int signum) {
    struct server *s = h->data;
    LOG_INFO(s->lg, "received signal; shutting down", LOG_STR("signal", strsignal(signum)));
    server_stop(s);
}

/* etcd 3.4's learner serves only Maintenance.Status and serializable
 * ranges; every other call, streams included, is refused with its words.
 * io loop, before the call reaches its method. */
static enum api_grpc_code learner_gate(const char *path, const ProtobufCMessage *msg,
                                       const char **message, void *arg) {
    struct server *s = arg;
    struct node_status st;
    server_node_status(s->node, &st);
    if (!st.is_learner || strcmp(path, "/etcdserverpb.Maintenance/Status") == 0)
        return API_GRPC_OK;
    if (strcmp(path, "/etcdserverpb.KV/Range") == 0 && msg &&
        ((const Etcdserverpb__RangeRequest *)msg)->serializable)
        return API_GRPC_OK;
    *message = "etcdserver: rpc not supported for learner";
    return API_GRPC_UNAVAILABLE;
}

/* Binds every listen URL; the first failure stops the start-up. */
static int listen_all(struct server *s, struct util_err *err) {
    const struct config *cfg = s->cfg;
    struct api_config acfg;
    api_config_default(&acfg);
    acfg.max_request_bytes = (size_t)cfg->max_request_bytes;
    int rc = api_server_new(&s->loop, s->lg, &acfg, &s->api, err);
    if (rc == 0) {
        api_server_set_call_observer(s->api, v3_call_over, s);
        api_server_set_call_gate(s->api, learner_gate, s);
    }
    if (rc == 0)
        rc = v3_kv_register(s, err);
    if (rc == 0)
        rc = v3_maintenance_register(s, err);
    if (rc == 0)
        rc = v3_cluster_register(s, err);
    if (rc == 0)
        rc = v3_lease_register(s, err);
    if (rc == 0)
        rc = v3_alarm_register(s, err);
    if (rc == 0)
        v3_health_register(s);
    if (rc == 0)
        rc = v3_watch_register(s, err);
    for (size_t i = 0; rc == 0 && i < cfg->listen_client_urls.n; i++)
        rc = api_server_listen(s->api, cfg->listen_client_urls.v[i].text, err);
    return rc;
}

/* Hands committed entries to the apply thread. Raft thread. Out of memory here
 * would lose committed entries: the member stops instead. */
static void on_committed(void *arg, const struct raft_entry *ents, size_t n) {
    struct server *s = arg;
    if (server_apply_push(s->apply, ents, n) != 0) {
        LOG_ERROR(s->lg, "out of memory handing committed entries to the apply thread");
        abort();
    }
}

static void role_changed(void *arg, bool leader) {
    v3_lease_role_changed(arg, leader);
}

static void lease_batch_begin_hook(void *arg, mvcc_batch_t *b) {
    struct server *s = arg;
    s->lease_batch = lease_batch_begin(s->leases, b);
}

int v3_batch_track(struct server *s, struct v3_applied *a) {
    if (s->n_batch_applied == s->cap_batch_applied) {
        size_t cap = s->cap_batch_applied ? s->cap_batch_applied * 2 : 256;
        struct v3_applied **p = realloc(s->batch_applied, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        s->batch_applied = p;
        s->cap_batch_applied = cap;
    }
    s->batch_applied[s->n_batch_applied++] = a;
    return 0;
}

int v3_applied_hand_over(struct server *s, struct v3_applied *a, int rc, struct apply_done *done) {
    if (rc == 0)
        rc = v3_batch_track(s, a);
    if (rc != 0) {
        v3_applied_free(a);
        return rc;
    }
    *done = (struct apply_done){.fn = v3_applied_done, .ctx = a};
    return 0;
}

/* After a batch: leases follow what was applied, watchers get its events.
 * Apply thread, before the batch's waiters are answered. */
static void batch_end_hook(void *arg, bool committed, uint64_t index) {
    struct server *s = arg;
    lease_batch_end(s->lease_batch, committed, util_now_mono_ns());
    s->lease_batch = NULL;
    if (committed)
        v3_lease_maybe_promote(s);
    if (committed)
        v3_watch_publish(s);
    s->n_batch_applied = 0;
    /* Every --snapshot-count applied entries, the key space is synced (it
     * commits without syncing: the WAL is the durability source) so that the
     * raft log and the WAL before it can go. */
    uint64_t every = s->cfg->snapshot_count ? s->cfg->snapshot_count : 100000;
    if (committed && index >= s->last_checkpoint + every) {
        int rc = mvcc_sync(s->db);
#ifdef QUOIN_TESTING
        if (rc == 0)
            server_test_keep_synced(s);
#endif
        if (rc == 0) {
            server_node_checkpoint(s->node, index);
            s->last_checkpoint = index;
        } else {
            LOG_WARN(s->lg, "cannot sync the key space; the log is kept",
                     LOG_STR("error", mvcc_strerror(rc)));
        }
    }
}

#ifdef QUOIN_TESTING
void server_test_keep_synced(struct server *s) {
    const char *path = getenv("QUOIN_TEST_DB_SYNCED");
    if (!path)
        return;
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = fd < 0 ? -errno : mvcc_snapshot_to_fd(s->db, fd);
    if (fd >= 0 && close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc != 0)
        LOG_ERROR(s->lg, "cannot keep the synced copy of the key space", LOG_STR("file", path),
                  LOG_STR("error", mvcc_strerror(rc)));
}
#endif

/* etcd's default --experimental-watch-progress-notify-interval (10 minutes),
 * in 500 ms ticks. */
#define PROGRESS_TICKS 1200

/* Every 5 s: give freed heap memory back to the system. Bursts of clients
 * (thousands of connections, each with its buffers) leave free memory in the
 * middle of the heap that malloc would otherwise keep for good. */
#define TRIM_TICKS 10

static void on_tick(uv_timer_t *t) {
    struct server *s = t->data;
    v3_lease_tick(s);
    v3_autocompact_tick(s);
    v3_watch_tick(s, ++s->ticks % PROGRESS_TICKS == 0);
    if (s->ticks % TRIM_TICKS == 0)
        malloc_trim(0);
    if (!s->stopping && v3_cluster_tick(s))
        server_stop(s);
}

static uint64_t applied_index(void *arg) {
    struct server *s = arg;
    return server_apply_applied(s->apply);
}

/* Opens the key space and starts the apply thread and the raft loop. */
static int start_core(struct server *s, struct util_err *err) {
    const struct config *cfg = s->cfg;
    char path[4096];
    snprintf(path, sizeof(path), "%s/db", server_datadir_path(s->dd));
    struct mvcc_options mopts = {
        .quota_bytes = cfg->quota_backend_bytes > 0 ? (uint64_t)cfg->quota_backend_bytes : 0,
        /* The WAL is the durability source: LMDB need not sync each commit, as
         * the applied index commits with the data and the WAL replays the rest. */
        .no_sync = true,
    };
    int rc = mvcc_open(path, &mopts, s->lg, &s->db, err);
    if (rc != 0)
        return rc;
    uint64_t applied, applied_term;
    int64_t rev, compact;
    mvcc_state(s->db, &applied, &applied_term, &rev, &compact);
    if (server_wait_new(&s->writes) != 0 || server_wait_new(&s->reads) != 0)
        return util_errorf(err, -ENOMEM, "out of memory");
    /* etcd's minimum lease TTL: 1.5 election timeouts, rounded up to seconds. */
    struct lease_options lopts = {
        .min_ttl = (int64_t)((3ull * cfg->election_ms / 2 + 999) / 1000),
        .grace_ns = (uint64_t)cfg->election_ms * 1000000u,
    };
    if ((rc = lease_open(s->db, &lopts, s->lg, &s->leases, err)) != 0 ||
        (rc = v3_alarm_open(s, err)) != 0 || (rc = v3_watch_open(s, err)) != 0)
        return rc;
    struct apply_hooks hooks = {.arg = s,
                                .entry = v3_apply_entry,
                                .batch_begin = lease_batch_begin_hook,
                                .batch_end = batch_end_hook,
                                .restored = v3_snapshot_restored};
    s->last_checkpoint = applied;
    if ((rc = server_apply_start(s->db, applied, &hooks, s->lg, &s->apply, err)) != 0)
        return rc;
    /* The other members: the peer transport runs on a thread of its own and
     * delivers to the raft loop; a member alone has no peers but still binds
     * its peer URLs (a taken port is reported at start, as etcd does). */
    if ((rc = peer_transport_new(NULL, s->lg, &s->peer, err)) != 0)
        return rc;
    for (size_t i = 0; i < cfg->listen_peer_urls.n; i++)
        if ((rc = peer_transport_listen(s->peer, cfg->listen_peer_urls.v[i].text, err)) != 0)
            return rc;
    /* Who this member is and who the others are: the member store (set up
     * from the flags at the first start only). */
    struct raft_conf_state cs;
    if ((rc = v3_cluster_open(s, &cs, err)) != 0)
        return rc;
    char snap_dir[4096];
    snprintf(snap_dir, sizeof(snap_dir), "%s/snap", server_datadir_path(s->dd));
    mkdir(snap_dir, 0700);
    struct peer_config pcfg = {.cluster_id = s->cluster_id,
                               .member_id = s->member_id,
                               .snap_dir = snap_dir,
                               .answer = v3_cluster_answer,
                               .answer_arg = s,
                               .on_request = v3_lease_on_request,
                               .request_arg = s};
    snprintf(path, sizeof(path), "%s/wal", server_datadir_path(s->dd));
    struct node_config ncfg = {.id = s->member_id,
                               .conf = &cs,
                               .peer = s->peer,
                               .peer_cfg = &pcfg,
                               .heartbeat_ms = cfg->heartbeat_ms,
                               .election_ms = cfg->election_ms,
                               .wal_dir = path,
                               .snap_dir = snap_dir,
                               .applied = applied};
    struct node_callbacks cb = {.arg = s,
                                .committed = on_committed,
                                .applied = applied_index,
                                .role_changed = role_changed,
                                .read_ready = v3_read_ready,
                                .read_failed = v3_read_failed,
                                .propose_failed = v3_propose_failed,
                                .conf_change = v3_cluster_conf_change,
                                .snapshot_write = v3_snapshot_write,
                                .snapshot_install = v3_snapshot_install};
#ifdef QUOIN_TESTING
    /* Test builds: the first snapshot this member sends has one byte
     * flipped at that offset (the transfer must fail and be retried). */
    const char *corrupt = getenv("QUOIN_TEST_CORRUPT_SNAPSHOT_AT");
    if (corrupt)
        peer_transport_test_corrupt_snapshot(s->peer, strtoull(corrupt, NULL, 10));
#endif
    return server_node_start(&ncfg, &cb, s->lg, &s->node, err);
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

    struct server *s = calloc(1, sizeof(*s));
    if (!s)
        return util_errorf(err, -ENOMEM, "out of memory");
    s->lg = lg;
    s->cfg = cfg;
    s->member_id = cfg->member_id;
    s->cluster_id = cfg->cluster_id;
    /* Request ids start at the wall clock, so ids of a restarted member do not
     * meet entries of its previous life still in the log. */
    atomic_store(&s->next_id, util_now_wall_ns());
    pthread_mutex_init(&s->post_mu, NULL);
    pthread_mutex_init(&s->role_mu, NULL);
    int rc = server_datadir_open(cfg->data_dir, lg, &s->dd, err);
    if (rc == 0 && (rc = uv_loop_init(&s->loop)) != 0)
        util_errorf(err, rc, "cannot create the event loop: %s", uv_strerror(rc));
    if (rc != 0)
        goto out;
    uv_signal_init(&s->loop, &s->sigterm);
    uv_signal_init(&s->loop, &s->sigint);
    uv_async_init(&s->loop, &s->post_wake, on_post);
    uv_timer_init(&s->loop, &s->tick_timer);
    s->tick_timer.data = s;
    uv_timer_start(&s->tick_timer, on_tick, 500, 500);
    s->sigterm.data = s->sigint.data = s->post_wake.data = s;
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sigint, on_signal, SIGINT);

    rc = start_core(s, err);
    if (rc == 0)
        rc = listen_all(s, err);
    if (rc == 0) {
        v3_compaction_resume(s);
        LOG_INFO(lg, "ready to serve client requests", LOG_STR("name", cfg->name));
    } else
        server_stop(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    int closed = uv_loop_close(&s->loop);
    if (closed != 0)
        LOG_WARN(lg, "event loop closed with handles still open", LOG_INT("code", closed));
out:
    server_node_free(s->node);
    watch_hub_destroy(s->watch);
    lease_close(s->leases);
    mvcc_close(s->db);
    free(s->batch_applied);
    members_free(&s->raft_members);
    server_datadir_close(s->dd);
    pthread_mutex_destroy(&s->post_mu);
    pthread_mutex_destroy(&s->role_mu);
    free(s);
    if (rc == 0)
        LOG_INFO(lg, "stopped serving", LOG_STR("name", cfg->name));
    return rc;
}
