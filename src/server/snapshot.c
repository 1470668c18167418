/* snapshot: the raft loop's side of raft snapshots (see snapshot.h). */
#include "server/snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/server.h"

struct node_snap {
    struct node_snap_config cfg;
    char *dir;
    bool stopping;
    uint64_t busy[RAFT_MAX_MEMBERS]; /* members a snapshot is in flight to */
};

/* One outgoing snapshot: its message, and the copy being made. */
struct snap_job {
    uv_work_t work;
    node_snap_t *ns;
    struct raft_msg m;
    struct raft_snapshot snap;
    uint64_t index, term; /* what the copy holds */
    int fd;
    int rc;
};

int node_snap_new(const struct node_snap_config *cfg, node_snap_t **out) {
    node_snap_t *ns = calloc(1, sizeof(*ns));
    if (!ns || !(ns->dir = strdup(cfg->dir))) {
        free(ns);
        return -ENOMEM;
    }
    ns->cfg = *cfg;
    ns->cfg.dir = ns->dir;
    *out = ns;
    return 0;
}

void node_snap_free(node_snap_t *ns) {
    if (!ns)
        return;
    free(ns->dir);
    free(ns);
}

void node_snap_stop(node_snap_t *ns) {
    ns->stopping = true;
}

/* Marks peer busy (true) or free; returns false if it was busy already. */
static bool set_busy(node_snap_t *ns, uint64_t peer, bool busy) {
    size_t free_slot = RAFT_MAX_MEMBERS;
    for (size_t i = 0; i < RAFT_MAX_MEMBERS; i++) {
        if (ns->busy[i] == peer) {
            if (busy)
                return false;
            ns->busy[i] = 0;
            return true;
        }
        if (!ns->busy[i] && free_slot == RAFT_MAX_MEMBERS)
            free_slot = i;
    }
    if (busy) {
        if (free_slot == RAFT_MAX_MEMBERS)
            return false;
        ns->busy[free_slot] = peer;
    }
    return true;
}

void node_snap_done(node_snap_t *ns, uint64_t peer) {
    set_busy(ns, peer, false);
}

/* Thread pool: the state machine's copy into an unnamed file. */
static void copy_work(uv_work_t *w) {
    struct snap_job *j = w->data;
    j->fd = server_open_temp(j->ns->dir);
    if (j->fd < 0) {
        j->rc = -errno;
        return;
    }
    j->rc = j->ns->cfg.write(j->ns->cfg.arg, j->fd, &j->index, &j->term);
    if (j->rc == 0 && lseek(j->fd, 0, SEEK_SET) < 0)
        j->rc = -errno;
    /* A copy older than raft's snapshot could not stand for it. */
    if (j->rc == 0 && j->index < j->snap.meta.index)
        j->rc = -ESTALE;
}

/* Raft loop: the copy is made; the transport takes it (and the descriptor). */
static void copy_done(uv_work_t *w, int status) {
    struct snap_job *j = w->data;
    node_snap_t *ns = j->ns;
    if (status != 0 && j->rc == 0)
        j->rc = status;
    if (ns->stopping) {
        if (j->fd >= 0)
            close(j->fd);
    } else if (j->rc != 0) {
        LOG_WARN(ns->cfg.lg, "cannot make the snapshot for a lagging member",
                 LOG_UINT("to", j->m.to), LOG_STR("error", strerror(-j->rc)));
        if (j->fd >= 0)
            close(j->fd);
        set_busy(ns, j->m.to, false);
        raft_report_snapshot(ns->cfg.raft, j->m.to, true);
    } else {
        uint64_t chosen = j->snap.meta.index; /* raft's snapshot: its last checkpoint */
        if (j->index > j->snap.meta.index) {
            j->snap.meta.index = j->index;
            j->snap.meta.term = j->term;
            ns->cfg.conf_at(ns->cfg.conf_arg, j->index, &j->snap.meta.conf);
        }
        LOG_INFO(ns->cfg.lg, "sending a snapshot to a lagging member", LOG_UINT("to", j->m.to),
                 LOG_UINT("index", j->snap.meta.index), LOG_UINT("raft-index", chosen),
                 LOG_UINT("size", (uint64_t)lseek(j->fd, 0, SEEK_END)));
        lseek(j->fd, 0, SEEK_SET);
        /* On failure the transport closes fd and queues a failed outcome. */
        peer_transport_send_snapshot(ns->cfg.peer, &j->m, j->fd);
    }
    free(j);
}

int node_snap_send(node_snap_t *ns, const struct raft_msg *m) {
    if (!set_busy(ns, m->to, true))
        return -EBUSY;
    struct snap_job *j = calloc(1, sizeof(*j));
    if (!j) {
        set_busy(ns, m->to, false);
        return -ENOMEM;
    }
    j->ns = ns;
    j->fd = -1;
    j->m = *m;
    j->m.entries = NULL;
    j->m.n_entries = 0;
    if (m->snapshot)
        j->snap.meta = m->snapshot->meta;
    j->m.snapshot = &j->snap;
    j->work.data = j;
    int rc = uv_queue_work(ns->cfg.loop, &j->work, copy_work, copy_done);
    if (rc != 0) {
        set_busy(ns, m->to, false);
        free(j);
    }
    return rc;
}

void node_snap_path(const char *dir, uint64_t index, char *out, size_t n) {
    snprintf(out, n, "%s/%016" PRIx64 ".snap.db", dir, index);
}

int node_snap_keep(const char *dir, const char *received, uint64_t index, char *out, size_t n) {
    node_snap_path(dir, index, out, n);
    if (rename(received, out) != 0)
        return -errno;
    return server_sync_dir(dir);
}

/* Whether name is a kept snapshot; fills its index. */
static bool kept_index(const char *name, uint64_t *index) {
    char hex[17];
    if (strlen(name) != 16 + strlen(".snap.db") || strcmp(name + 16, ".snap.db") != 0)
        return false;
    memcpy(hex, name, 16);
    hex[16] = '\0';
    char *end;
    *index = strtoull(hex, &end, 16);
    return *end == '\0';
}

void node_snap_clean(const char *dir, uint64_t keep, log_t *lg) {
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    char path[4096];
    while ((de = readdir(d)) != NULL) {
        uint64_t index;
        const char *name = de->d_name;
        bool kept = kept_index(name, &index);
        bool lock = strstr(name, ".snap.db-lock") != NULL;
        bool delivered = strncmp(name, "snap-", 5) == 0 && !strstr(name, ".partial");
        if ((kept && index == keep) || !(kept || lock || delivered))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        if (unlink(path) != 0)
            LOG_WARN(lg, "cannot remove an old snapshot file", LOG_STR("file", path),
                     LOG_STR("error", strerror(errno)));
        else
            LOG_INFO(lg, "removed an old snapshot file", LOG_STR("file", path));
    }
    closedir(d);
}
