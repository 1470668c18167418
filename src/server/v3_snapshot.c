/* v3_snapshot: the server's side of raft snapshots. The raft loop (node.c,
 * snapshot.c) moves files and messages; this file says what a snapshot's
 * data is — a consistent copy of the whole LMDB store: key space, leases,
 * alarms and every other layer's databases, with the applied index — and
 * reloads what the member derives from the store once a copy replaced it.
 * docs/cluster.md ("Snapshots to lagging members") tells the whole story. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/v3.h"

int v3_snapshot_write(void *arg, int fd, uint64_t *index, uint64_t *term) {
    struct server *s = arg;
    int rc = mvcc_snapshot_to_fd(s->db, fd);
    return rc != 0 ? rc : mvcc_snapshot_fd_state(fd, index, term);
}

/* The raft thread waiting for the apply thread to install a snapshot. */
struct install_wait {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool done;
};

static void install_done(void *ctx) {
    struct install_wait *w = ctx;
    pthread_mutex_lock(&w->mu);
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mu);
}

void v3_snapshot_install(void *arg, const char *file, uint64_t index, uint64_t term,
                         struct raft_conf_state *cs) {
    struct server *s = arg;
    LOG_INFO(s->lg, "installing a raft snapshot", LOG_STR("file", file), LOG_UINT("index", index),
             LOG_UINT("term", term));
#ifdef QUOIN_TESTING
    /* Test builds: die as a crash would between the WAL's marker (durable
     * now) and the installation; the next start must install the file. */
    if (getenv("QUOIN_TEST_EXIT_BEFORE_INSTALL"))
        _exit(3);
#endif
    /* The raft thread waits (a snapshot is rare, and this member lags
     * anyway): conf changes after the snapshot are checked against the
     * member set the copy holds, which must be loaded first. */
    struct install_wait w = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    if (server_apply_install(s->apply, file, index) != 0 ||
        server_apply_when_applied(s->apply, index, install_done, &w) != 0) {
        LOG_ERROR(s->lg, "out of memory queueing a raft snapshot; stopping the member");
        abort();
    }
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cond, &w.mu);
    pthread_mutex_unlock(&w.mu);
    pthread_cond_destroy(&w.cond);
    pthread_mutex_destroy(&w.mu);
    int rc = v3_cluster_reload(s, cs);
    if (rc != 0) {
        LOG_ERROR(s->lg,
                  "cannot read the member set of the installed snapshot; stopping the member",
                  LOG_INT("code", rc));
        abort();
    }
}

/* The copy was renamed into the data directory: make that rename durable
 * before entries after the snapshot are applied on top of it. */
static void sync_datadir(struct server *s) {
    int rc = server_sync_dir(server_datadir_path(s->dd));
    if (rc != 0)
        LOG_WARN(s->lg, "cannot sync the data directory after installing a snapshot",
                 LOG_STR("error", strerror(-rc)));
}

/* Everything derived from the store, reloaded after a snapshot replaced it.
 * Apply thread, before any entry after the snapshot is applied. Layers that
 * keep state derived from the store add their reload here (the member list
 * of the member store, auth caches, ...). */
void v3_snapshot_restored(void *arg, uint64_t index) {
    struct server *s = arg;
    sync_datadir(s);
#ifdef QUOIN_TESTING
    server_test_keep_synced(s);
#endif
    s->last_checkpoint = index;
    int rc = v3_alarm_reload(s);
    if (rc != 0)
        LOG_ERROR(s->lg, "cannot read the alarms of the installed snapshot",
                  LOG_STR("error", mvcc_strerror(rc)));
    /* Leases live in the store and are read through it; only a leader keeps
     * expiry timers, which must follow the new lease table (a member that
     * was sent a snapshot may have won an election before installing it). */
    if ((rc = lease_reload(s->leases, util_now_mono_ns(), util_now_wall_ns())) != 0)
        LOG_ERROR(s->lg, "cannot reload lease expiry after a snapshot",
                  LOG_STR("error", lease_strerror(rc)));
    /* Watchers re-read from history from where each stood: the events
     * between its position and the new revision come from the copy's
     * history, and one whose position was compacted away is cancelled with
     * the compacted revision, as etcd does. */
    uint64_t idx, term;
    int64_t rev = 0, compacted = 0;
    mvcc_state(s->db, &idx, &term, &rev, &compacted);
    watch_hub_restore(s->watch, rev);
    /* A compaction the leader had not finished sweeping comes along. */
    v3_compaction_resume(s);
    LOG_INFO(s->lg, "reloaded the member's state from a raft snapshot", LOG_UINT("applied", index),
             LOG_INT("revision", rev), LOG_INT("compact-revision", compacted));
}
