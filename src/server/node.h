/* node: internal to src/server — the raft loop of a member: a thread that owns
 * the raft state machine, its in-memory log, the WAL and the tick timer.
 *
 * Other threads talk to it only through bounded queues:
 *   - server_node_propose / server_node_read_index (any thread) queue work and
 *     wake the loop; a full queue answers -EAGAIN at once ("too many requests"),
 *     never blocks, never grows;
 *   - committed entries, read states and failed proposals come back through the
 *     callbacks in struct node_callbacks, called ON THE RAFT THREAD: they must
 *     only copy and hand off (the apply thread does the work).
 *
 * Persistence follows raft.h's loop contract: entries and hard state go to the
 * WAL (one group-committed fdatasync per Ready), messages leave, committed
 * entries are handed to the apply callback, then raft_advance. The loop waits
 * for the WAL's fdatasync before raft_advance, as etcd's does; a Ready batches
 * everything proposed meanwhile, so one fdatasync covers many requests. */
#ifndef QUOIN_SERVER_NODE_H
#define QUOIN_SERVER_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log/log.h"
#include "peer/peer.h"
#include "raft/raft.h"
#include "util/util.h"

typedef struct server_node server_node_t;

struct node_callbacks {
    void *arg;
    /* Committed entries in index order; data is valid only during the call. */
    void (*committed)(void *arg, const struct raft_entry *ents, size_t n);
    /* A read index answered: reads with `context` may be served once the
     * state machine has applied `index`. */
    void (*read_ready)(void *arg, uint64_t context, uint64_t index);
    /* A queued read index or proposal could not be started (no leader, node
     * stopping): code is a RAFT_E* or negative errno. For a proposal, data is
     * the proposal's bytes (valid only during the call). */
    void (*read_failed)(void *arg, uint64_t context, int code);
    void (*propose_failed)(void *arg, const uint8_t *data, size_t len, int code);
    /* The index the state machine has applied (any thread): proposals are
     * refused while the apply backlog is large. */
    uint64_t (*applied)(void *arg);
    /* This member became leader (true) or stopped being it (false). */
    void (*role_changed)(void *arg, bool leader);
    /* A committed conf change at `index`, before raft applies it: returns
     * whether raft applies it (false: the change is refused and raft's
     * configuration stays as it is). The caller checks the change against its
     * member set exactly as its apply thread does, so both agree. Raft
     * thread; cc->context is valid only during the call. May be NULL (every
     * change is applied). */
    bool (*conf_change)(void *arg, const struct raft_conf_change *cc, uint64_t index);
    /* Raft snapshots (docs/cluster.md, "Snapshots to lagging members"); both
     * NULL: a member that needs one is reported as failed.
     * snapshot_write: the state machine's data for a member that lags,
     * written into fd on a thread of libuv's pool; a consistent copy whose
     * applied index is at least the last index passed to
     * server_node_checkpoint. Fills the copy's applied index and its term:
     * the snapshot sent says exactly that index, with the configuration as
     * of it, so data, index and configuration agree. Returns 0 or a
     * negative code.
     * snapshot_install: raft accepted a snapshot at `index`: `file` (durable,
     * written by snapshot_write on the leader) replaces the state machine
     * before the call returns (the raft thread waits: later conf changes are
     * checked against the member set the copy holds), and cs receives the
     * configuration of the installed member set. Raft thread, in order with
     * `committed`; also from server_node_start when a crash came between
     * the WAL's marker and the installation. */
    int (*snapshot_write)(void *arg, int fd, uint64_t *index, uint64_t *term);
    void (*snapshot_install)(void *arg, const char *file, uint64_t index, uint64_t term,
                             struct raft_conf_state *cs);
};

/* Why a conf change proposal failed before reaching raft (propose_failed). */
#define NODE_ENOTLEADER (-10101)       /* server_node_progress on a follower */
#define NODE_ELEARNERNOTREADY (-10102) /* the learner's log is < 90% of the leader's */

struct node_config {
    uint64_t id; /* this member's id, nonzero */
    /* The configuration as of `applied` (the member store's): raft starts
     * from it, whatever the log's snapshot marker says. */
    const struct raft_conf_state *conf;
    unsigned heartbeat_ms; /* one tick */
    unsigned election_ms;  /* election timeout, a multiple of ticks */
    const char *wal_dir;
    const char *snap_dir; /* received snapshots (the peer transport's snap_dir) */
    uint64_t applied;     /* last index the state machine has applied */
    size_t max_queued;    /* proposals + reads waiting for the loop; 0: 8192 */
    /* Other members: a transport with its own thread (peer_transport_new with
     * no loop, listening already), started here so its deliveries wake the
     * raft loop. NULL for a member alone. */
    peer_transport_t *peer;
    const struct peer_config *peer_cfg; /* notify is set here */
};

/* Recovers the WAL in cfg->wal_dir (creating it for a new member), builds the
 * raft state and starts the raft thread. Returns 0 or a negative code with err
 * filled (a corrupt WAL refuses to start: err names file and offset). */
int server_node_start(const struct node_config *cfg, const struct node_callbacks *cb, log_t *lg,
                      server_node_t **out, struct util_err *err);

/* Queues a proposal (data copied). Any thread. Returns 0, -EAGAIN (queue full),
 * -ENOMEM or -ESHUTDOWN (stopping). Failure later (no leader) comes through
 * cb->propose_failed. */
int server_node_propose(server_node_t *n, const void *data, size_t len);

/* Queues a linearizable-read request (context: unique among the requests
 * waiting). Any thread. Returns as propose; the answer comes through exactly
 * one call of cb->read_ready or cb->read_failed: at once failed with
 * RAFT_ENOLEADER when no leader is known; else the raft loop keeps the
 * request and asks raft again whenever another leader or term is known or an
 * election timeout passed unanswered, until etcd's request timeout (5 s + 2
 * election timeouts), when it fails with RAFT_ENOLEADER (no leader known
 * then) or -ETIMEDOUT; -EAGAIN when 65536 requests are waiting already. */
int server_node_read_index(server_node_t *n, uint64_t context);

/* Queues a membership change (cc and its context copied). Any thread.
 * Returns as server_node_propose. Later failures come through
 * cb->propose_failed with the change's context as data: a RAFT_E* code or
 * NODE_ELEARNERNOTREADY (on the leader, a promotion — RAFT_CC_ADD_NODE of a
 * learner — is refused unless the learner has 90% of its log, as etcd's; a
 * follower forwards it, its caller having asked the leader, see
 * server_node_progress). */
int server_node_propose_conf_change(server_node_t *n, const struct raft_conf_change *cc);

/* On the leader, as of its last Ready: the index known replicated on member
 * id, and the leader's own. Any thread. Returns 0, NODE_ENOTLEADER or
 * -ENOENT (no such member). */
int server_node_progress(server_node_t *n, uint64_t id, uint64_t *match, uint64_t *leader_match);

/* etcd's isLearnerReady: a learner may be promoted once its match index is
 * at least 90% of the leader's. */
bool server_node_learner_ready(uint64_t match, uint64_t leader_match);

/* The state machine is durable on disk up to `index` (the key space was
 * synced after applying it): the raft loop records a snapshot there, keeps a
 * margin of entries for lagging members, frees the older ones and releases
 * the WAL segments the snapshot covers. Any thread; returns 0. */
int server_node_checkpoint(server_node_t *n, uint64_t index);

/* Asks the raft loop to hand leadership to member `to` (MoveLeader), or with
 * to 0 to any other voter raft accepts as caught up (etcd does so when a
 * leader is stopped); a no-op unless this member leads. Raft abandons a
 * transfer that does not finish within an election timeout; ask again to
 * retry. Any thread; returns 0. Watch server_node_status for the leader. */
int server_node_transfer_leadership(server_node_t *n, uint64_t to);

/* Raft's view, refreshed after every Ready. Any thread. */
struct node_status {
    uint64_t id;
    uint64_t leader;
    uint64_t term;
    uint64_t commit;
    uint64_t last_index;
    bool is_leader;
    uint32_t n_voters; /* in the configuration this member applied */
    bool is_learner;   /* this member is a learner in raft's configuration */
};
void server_node_status(server_node_t *n, struct node_status *st);

#ifdef QUOIN_TESTING
/* Whether the deliberate bug `name` is switched on: QUOIN_BUG holds a
 * comma-separated list of them (tests/chaos shows the harness catches each;
 * docs/testing.md lists them). Any thread. */
bool server_test_bug(const char *name);
#endif

/* Stops the thread, fails what is queued and closes the WAL. server_node_status
 * still answers (the last state) until server_node_free. */
void server_node_stop(server_node_t *n);
void server_node_free(server_node_t *n);

#endif
