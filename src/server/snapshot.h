/* snapshot: internal to src/server — the raft loop's side of raft snapshots:
 * making and sending a snapshot's data to a member that lags (leader), and
 * the files of received snapshots (follower). What the data is belongs to the
 * caller (a write callback); this file only moves descriptors and files.
 *
 * Files in the snapshot directory (the peer transport's snap_dir):
 *   snap-<term>-<index>-<random>   delivered by the transport, verified; the
 *                                  raft loop steps its MsgSnap and either
 *                                  keeps it (below) or removes it;
 *   <index, 16 hex>.snap.db        a snapshot raft accepted, made durable
 *                                  before the WAL records its marker; it
 *                                  stays until the state machine installs it
 *                                  (renamed away), so a crash in between
 *                                  finds it at the next start.
 * A leader's outgoing copies are unnamed temporary files (O_TMPFILE): the
 * transport closes them when sent, and the disk space goes with them. */
#ifndef QUOIN_SERVER_SNAPSHOT_H
#define QUOIN_SERVER_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "log/log.h"
#include "peer/peer.h"
#include "raft/raft.h"

typedef struct node_snap node_snap_t;

struct node_snap_config {
    uv_loop_t *loop; /* the raft loop: copies complete there */
    raft_t *raft;    /* a failed copy is reported to it, on the raft loop */
    peer_transport_t *peer;
    const char *dir; /* where temporary copies are made (same disk as the data) */
    /* Writes the state machine's data into fd and says which index (and its
     * term) the data holds. Runs on libuv's thread pool; returns 0 or a
     * negative code. */
    int (*write)(void *arg, int fd, uint64_t *index, uint64_t *term);
    void *arg;
    /* The configuration as of `index`, for the snapshot's metadata. Raft
     * loop. */
    void (*conf_at)(void *conf_arg, uint64_t index, struct raft_conf_state *cs);
    void *conf_arg;
    log_t *lg;
};

/* Returns 0 or -ENOMEM. cfg->dir is copied. */
int node_snap_new(const struct node_snap_config *cfg, node_snap_t **out);

/* Leader: sends the RAFT_MSG_SNAP m (copied). The data is made on the thread
 * pool into a temporary file, then handed to the transport with m, whose
 * metadata now says the index the copy holds (at or past the one raft
 * chose: the store moved on meanwhile), its term and the configuration as
 * of it — so the member that installs it needs no entry the copy already
 * holds, and its member set and raft's configuration agree; the
 * outcome comes back as a PEER_EV_SNAP_STATUS, or, if the copy failed, as
 * raft_report_snapshot(failed) on the raft loop. At most one snapshot per
 * member is in flight. Returns 0, -EBUSY (one to m->to is in flight) or
 * -ENOMEM: the caller reports the snapshot failed. Raft thread. */
int node_snap_send(node_snap_t *ns, const struct raft_msg *m);

/* The outcome of the snapshot to `peer` arrived: another may be sent. */
void node_snap_done(node_snap_t *ns, uint64_t peer);

/* The loop is stopping: copies that finish from now on are dropped. */
void node_snap_stop(node_snap_t *ns);

/* Frees ns, once the loop has run out (no copy in progress). NULL: no-op. */
void node_snap_free(node_snap_t *ns);

/* The durable name of the received snapshot at `index`, into out (n bytes). */
void node_snap_path(const char *dir, uint64_t index, char *out, size_t n);

/* Follower: gives the received, verified file its durable name for `index`
 * (out), and syncs the directory, so the WAL marker written next never
 * points to a file a crash could lose. Returns 0 or a negative errno. */
int node_snap_keep(const char *dir, const char *received, uint64_t index, char *out, size_t n);

/* Start-up: removes what earlier runs left in dir — delivered files never
 * kept, kept snapshots already installed, lock files — except the kept
 * snapshot of index `keep` (0: none). Failures are logged. */
void node_snap_clean(const char *dir, uint64_t keep, log_t *lg);

#endif
