/* raft: the Raft consensus algorithm as a pure state machine — no I/O, no clock,
 * no threads, no global state. The caller owns time (raft_tick), the network
 * (messages in through raft_step, out through a Ready batch) and the disk (a
 * storage it provides and writes to). Because nothing inside waits or reads a
 * clock, the same code runs under the deterministic simulator in tests/raft/.
 *
 * THE LOOP CONTRACT
 * =================
 * A node is driven by one thread (the "raft loop"). The handle is not thread
 * safe; no two calls on one handle may overlap. The loop:
 *
 *   1. Feed inputs: raft_tick() once per tick interval; raft_step() for every
 *      message received from a peer; raft_propose(), raft_read_index(),
 *      raft_propose_conf_change(), raft_transfer_leadership() for local requests.
 *
 *   2. When raft_has_ready() is true, take a batch: raft_ready(r, &rd). From that
 *      moment until raft_advance() NO other call may be made on the handle (the
 *      batch points into memory that those calls would change). Then, in order:
 *
 *      a. Install rd.snapshot if not NULL (storage and state machine), before
 *         anything below.
 *      b. Persist rd.entries (append to storage; an entry whose index already
 *         exists replaces it and every entry after it), THEN rd.hard_state if
 *         rd.hard_state_changed. This order matters: a crash between the two
 *         must never leave a persisted commit index above the persisted log.
 *         If rd.must_sync, both must be durable (fdatasync) before step c for
 *         a non-leader; a leader's entries only need to be durable before
 *         step e. A crash in the middle of this step is allowed: what reached
 *         the disk is a prefix of the entries, then possibly the hard state.
 *      c. Send rd.msgs. If rd.soft.role is RAFT_LEADER, the messages MAY be sent
 *         before or while b runs (a leader replicates in parallel with its own
 *         fsync: its term and vote were made durable when it was a candidate,
 *         and it counts its own copy only in this Ready). For any other role
 *         they MUST leave only after b is durable (they carry votes and
 *         acknowledgements that promise durability). Messages may be lost,
 *         duplicated or reordered by the network: Raft tolerates it.
 *      d. Apply rd.committed (in index order) to the state machine. Every entry
 *         in rd.committed was durable before this Ready was produced, so d may
 *         run before, after or in parallel with b. A RAFT_ENTRY_CONF_CHANGE
 *         entry must be decoded (raft_conf_change_decode) and handed to
 *         raft_apply_conf_change() when applied — after raft_advance().
 *         rd.reads: each read state says "a read with this context is
 *         linearizable once the state machine has applied `index`".
 *      e. raft_advance(r, &rd).
 *
 *   3. Storage may be compacted (raft_memstore_compact or the WAL's equivalent)
 *      at any point outside a Ready, up to the applied index. Raft re-reads
 *      entries when it builds each Ready and drops messages whose entries were
 *      compacted meanwhile (the follower is then caught up by a snapshot).
 *
 * DESIGN DECISIONS AND THEIR CONSEQUENCES
 * =======================================
 * - Committed entries are only handed out once durable locally. A follower
 *   that receives entries together with a commit index covering them applies
 *   them in the Ready after the one that persists them (one extra loop turn);
 *   in exchange the apply thread never waits for the WAL.
 * - A leader only advances the commit index by counting replicas of an entry
 *   of its current term (Raft §5.4.2, Figure 8). A new leader appends an empty
 *   entry at once so that earlier entries commit without waiting for a client.
 * - Membership changes are single-server changes, one at a time, taking
 *   effect when the entry is APPLIED (raft_apply_conf_change). A leader refuses
 *   a new change while one is unapplied, and a new leader refuses changes
 *   until it has applied the first entry of its own term (this closes the
 *   known single-server-change bug of the Raft dissertation). Any two
 *   majorities of configurations one change apart intersect, so two leaders
 *   cannot be elected for a term. Consequences: replacing a member is a remove
 *   then an add; adding a member to a 1- or 2-member cluster while the new one
 *   is unreachable stops progress until it comes up — add it as a learner
 *   first and promote it when it has caught up; removing one of two voters can
 *   wedge the survivor if the removed one stops before the survivor learns that
 *   the removal committed (it then waits for that vote forever) — keep the
 *   removed member running until the survivor has applied the change.
 * - A leader that applies its own removal keeps leading, without counting
 *   itself and refusing proposals, until the voter with the longest log is
 *   caught up; it then sends it TimeoutNow and is deposed by its election
 *   (retried with a new choice after each election timeout). A removed node
 *   never campaigns.
 * - PreVote: a node whose election timer fires first asks whether it could win
 *   (without raising its term); a partitioned node rejoining therefore does not
 *   depose a healthy leader. CheckQuorum: a leader that has not heard from a
 *   quorum within an election timeout steps down; with it on, a follower that
 *   heard from a leader within the timeout ignores vote requests (leader lease),
 *   except for a leadership transfer.
 * - ReadIndex is batched by heartbeat rounds: every read queued while no round
 *   is in flight starts one; reads queued while a round is in flight all ride on
 *   the next round, started when the current one completes. A new leader serves
 *   no read until it has committed an entry of its term; reads wait for that.
 *
 * ERRORS: functions return 0 or a negative code: -ENOMEM, -EINVAL, or one of
 * the RAFT_E* codes below; raft_strerror() names each.
 */
#ifndef QUOIN_RAFT_H
#define QUOIN_RAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log/log.h"

/* Error codes (negative, outside the errno range). */
#define RAFT_ENOLEADER (-10001)        /* no known leader: retry after an election */
#define RAFT_EDROPPED (-10002)         /* proposal refused: leadership transfer in progress */
#define RAFT_ECONFPENDING (-10003)     /* a membership change is still unapplied */
#define RAFT_ECOMPACTED (-10004)       /* storage: index is behind the compaction point */
#define RAFT_EUNAVAILABLE (-10005)     /* storage: index is beyond the last entry */
#define RAFT_ESNAPTEMP (-10006)        /* storage: snapshot temporarily unavailable */
#define RAFT_ETRANSFERTARGET (-10007)  /* transfer target is a learner, self, or no member */
#define RAFT_ETRANSFERLAGGING (-10008) /* transfer target cannot catch up in time */

/* A static string naming any code raft functions return (negative errno too). */
const char *raft_strerror(int code);

/* Upper bound on voters + learners; keeps configurations plain fixed structs. */
#define RAFT_MAX_MEMBERS 32

enum raft_role { RAFT_FOLLOWER, RAFT_CANDIDATE, RAFT_LEADER, RAFT_PRE_CANDIDATE };

/* Message types, numbered as etcd's raftpb.MessageType so that the peer
 * transport maps them one to one. Types marked local never cross the network
 * and are refused by raft_step. */
enum raft_msg_type {
    RAFT_MSG_HUP = 0,  /* local */
    RAFT_MSG_BEAT = 1, /* local */
    RAFT_MSG_PROP = 2,
    RAFT_MSG_APP = 3,
    RAFT_MSG_APP_RESP = 4,
    RAFT_MSG_VOTE = 5,
    RAFT_MSG_VOTE_RESP = 6,
    RAFT_MSG_SNAP = 7,
    RAFT_MSG_HEARTBEAT = 8,
    RAFT_MSG_HEARTBEAT_RESP = 9,
    RAFT_MSG_UNREACHABLE = 10,  /* local: use raft_report_unreachable */
    RAFT_MSG_SNAP_STATUS = 11,  /* local: use raft_report_snapshot */
    RAFT_MSG_CHECK_QUORUM = 12, /* local */
    RAFT_MSG_TRANSFER_LEADER = 13,
    RAFT_MSG_TIMEOUT_NOW = 14,
    RAFT_MSG_READ_INDEX = 15,
    RAFT_MSG_READ_INDEX_RESP = 16,
    RAFT_MSG_PRE_VOTE = 17,
    RAFT_MSG_PRE_VOTE_RESP = 18,
};

/* Entry types, numbered as etcd's raftpb.EntryType. */
enum raft_entry_type { RAFT_ENTRY_NORMAL = 0, RAFT_ENTRY_CONF_CHANGE = 1 };

/* One log entry. Whoever hands an entry over keeps owning `data`; the
 * receiver copies what it keeps. */
struct raft_entry {
    uint64_t term;
    uint64_t index;
    uint32_t type; /* enum raft_entry_type */
    uint32_t len;
    uint8_t *data;
};

/* Persistent state that must survive a crash with the log. */
struct raft_hard_state {
    uint64_t term;
    uint64_t vote; /* 0 = none */
    uint64_t commit;
};

struct raft_conf_state {
    uint32_t n_voters;
    uint32_t n_learners;
    uint64_t voters[RAFT_MAX_MEMBERS];
    uint64_t learners[RAFT_MAX_MEMBERS];
};

struct raft_snapshot_meta {
    uint64_t index;
    uint64_t term;
    struct raft_conf_state conf;
};

/* A snapshot: the state machine as of meta.index. `data` belongs to whoever
 * produced the struct (storage, or raft for a received one until advance). */
struct raft_snapshot {
    struct raft_snapshot_meta meta;
    const uint8_t *data;
    size_t len;
};

/* A message between peers — the fields of etcd's raftpb.Message. `context`
 * replaces etcd's bytes field: for READ_INDEX(_RESP) it is the caller's read
 * context (etcd's server uses 8 bytes: encode big-endian); for HEARTBEAT(_RESP)
 * it is the read-index round being confirmed; for (PRE_)VOTE(_RESP) it is 1 for
 * a campaign started by a leadership transfer ("CampaignTransfer"), else 0.
 * Entries and snapshot are owned by the sender until the send completes: a
 * transport serialises them before raft_advance(). */
struct raft_msg {
    uint32_t type; /* enum raft_msg_type */
    uint64_t to;
    uint64_t from;
    uint64_t term;
    uint64_t log_term;
    uint64_t index;
    const struct raft_entry *entries;
    size_t n_entries;
    uint64_t commit;
    const struct raft_snapshot *snapshot; /* RAFT_MSG_SNAP only */
    bool reject;
    uint64_t reject_hint;
    uint64_t context;
};

/* Volatile state worth reporting; changes of it appear in a Ready. */
struct raft_soft_state {
    uint64_t leader; /* 0 = unknown */
    enum raft_role role;
};

/* "A read with this context is linearizable at this index." */
struct raft_read_state {
    uint64_t index;
    uint64_t context;
};

/* One batch of work for the caller; see THE LOOP CONTRACT. Every pointer is
 * valid until raft_advance(). */
struct raft_ready {
    struct raft_soft_state soft;
    bool soft_changed;
    struct raft_hard_state hard_state;
    bool hard_state_changed;
    const struct raft_snapshot *snapshot; /* NULL: none to install */
    const struct raft_entry *entries;     /* to persist */
    size_t n_entries;
    const struct raft_entry *committed; /* to apply */
    size_t n_committed;
    const struct raft_msg *msgs; /* to send */
    size_t n_msgs;
    const struct raft_read_state *reads;
    size_t n_reads;
    bool must_sync; /* entries or term/vote changed: fdatasync before acking */
};

/* The log storage the caller provides (the WAL in the server, the memory store
 * in tests). Raft only reads through it; the caller writes to it when it
 * persists a Ready. Lifetimes raft relies on (messages of a Ready point into
 * storage until raft_advance): the data of an entry returned by `entries`
 * stays valid until that entry is removed (compacted, or replaced by a
 * conflicting append); snapshot data stays valid until another snapshot is
 * created or applied. Appending entries must not move either. */
struct raft_storage_ops {
    /* Hard state and the configuration of the last snapshot. */
    int (*initial_state)(void *ctx, struct raft_hard_state *hs, struct raft_conf_state *cs);
    /* Copies entries [lo, hi) into out (room for hi - lo), stopping before the
     * total data size would exceed max_bytes but always giving at least one.
     * Returns 0, RAFT_ECOMPACTED or RAFT_EUNAVAILABLE. */
    int (*entries)(void *ctx, uint64_t lo, uint64_t hi, uint64_t max_bytes, struct raft_entry *out,
                   size_t *n);
    /* Term of entry i; i may be first_index - 1 (the snapshot point).
     * Returns 0, RAFT_ECOMPACTED or RAFT_EUNAVAILABLE. */
    int (*term)(void *ctx, uint64_t i, uint64_t *term);
    uint64_t (*first_index)(void *ctx);
    uint64_t (*last_index)(void *ctx);
    /* The latest snapshot. Returns 0 or RAFT_ESNAPTEMP. */
    int (*snapshot)(void *ctx, struct raft_snapshot *out);
};

struct raft_storage {
    const struct raft_storage_ops *ops;
    void *ctx;
};

struct raft_config {
    uint64_t id;             /* this node, nonzero */
    unsigned election_tick;  /* ticks without a leader before campaigning; > heartbeat */
    unsigned heartbeat_tick; /* ticks between leader heartbeats */
    struct raft_storage storage;
    uint64_t applied;                      /* last index the state machine applied (restart) */
    uint64_t max_size_per_msg;             /* entry bytes per APP message (0: one entry) */
    uint64_t max_committed_size_per_ready; /* entry bytes per Ready (0: unlimited) */
    unsigned max_inflight_msgs;            /* APP messages in flight per follower, >= 1 */
    bool check_quorum;
    bool pre_vote;
    uint64_t seed; /* randomises the election timeout; give each node its own */
    log_t *log;    /* may be NULL */
};

typedef struct raft raft_t;

/* Creates a node from cfg and the state in cfg->storage (a new cluster: a
 * storage whose snapshot configuration lists the initial voters). Returns 0,
 * -EINVAL (bad config, inconsistent storage) or -ENOMEM. */
int raft_new(const struct raft_config *cfg, raft_t **out);
void raft_free(raft_t *r);

/* Advances the logical clock by one tick. Returns 0 or -ENOMEM. */
int raft_tick(raft_t *r);

/* Feeds one message from a peer (copied as needed; m stays the caller's).
 * Returns 0, -EINVAL for a local-only type, or -ENOMEM. */
int raft_step(raft_t *r, const struct raft_msg *m);

/* Proposes n normal entries (data copied). On the leader they are appended;
 * on a follower they are forwarded to the leader (and may be lost like any
 * message: the caller times out and retries). Returns 0, RAFT_ENOLEADER (no
 * leader known — fails at once rather than waiting), RAFT_EDROPPED, or
 * -ENOMEM. */
int raft_propose(raft_t *r, const uint8_t *const *data, const uint32_t *len, size_t n);

/* Membership change. Types are numbered as etcd's raftpb.ConfChangeType. */
enum raft_conf_change_type {
    RAFT_CC_ADD_NODE = 0, /* add a voter, or promote a learner */
    RAFT_CC_REMOVE_NODE = 1,
    RAFT_CC_UPDATE_NODE = 2, /* no change to raft; carries the caller's data in order */
    RAFT_CC_ADD_LEARNER = 3,
};
struct raft_conf_change {
    uint32_t type;
    uint64_t node_id;
    const uint8_t *context; /* opaque to raft (etcd: the member's attributes) */
    uint32_t context_len;
};

/* Proposes a change; only the leader accepts one. Returns 0, RAFT_ENOLEADER,
 * RAFT_ECONFPENDING (a change is unapplied, or this leader has not applied its
 * first entry), -EINVAL (nothing would change, or no voter would remain) or
 * -ENOMEM. Forwarded from a follower it may be silently dropped by the leader
 * for the same reasons. */
int raft_propose_conf_change(raft_t *r, const struct raft_conf_change *cc);

/* Encoding of a conf change entry's data: type (1 byte), node id (8 bytes,
 * big-endian), context. encode returns the size written (buf NULL: needed
 * size); decode returns 0 or -EINVAL; cc->context then points into data. */
size_t raft_conf_change_encode(const struct raft_conf_change *cc, uint8_t *buf);
int raft_conf_change_decode(const uint8_t *data, size_t len, struct raft_conf_change *cc);

/* Applies a committed conf change (call it when the entry is applied, outside a
 * Ready). Fills *cs (may be NULL) with the new configuration. Returns 0 or
 * -ENOMEM. */
int raft_apply_conf_change(raft_t *r, const struct raft_conf_change *cc,
                           struct raft_conf_state *cs);

/* Asks for a read index; the answer arrives as a raft_read_state with the same
 * context in a later Ready. Returns 0, RAFT_ENOLEADER or -ENOMEM. A request can
 * be lost (leader change): the caller times out and retries. */
int raft_read_index(raft_t *r, uint64_t context);

/* Asks the leader to hand leadership to `to`. Returns 0 (on a follower:
 * forwarded), RAFT_ENOLEADER, RAFT_ETRANSFERTARGET (learner, self or unknown
 * node), RAFT_ETRANSFERLAGGING (the target is being sent a snapshot or has not
 * been heard from recently) or -ENOMEM. An accepted transfer that does not
 * finish within an election timeout is abandoned. */
int raft_transfer_leadership(raft_t *r, uint64_t to);

/* Starts an election now (tests, or an operator). Returns 0 or -ENOMEM. */
int raft_campaign(raft_t *r);

/* The transport failed to reach `id`; the leader then probes it gently. */
void raft_report_unreachable(raft_t *r, uint64_t id);
/* Outcome of sending a snapshot to `id`. */
void raft_report_snapshot(raft_t *r, uint64_t id, bool failed);

bool raft_has_ready(const raft_t *r);
/* Fills rd with the next batch; see THE LOOP CONTRACT. Returns 0 or -ENOMEM
 * (then nothing was taken and the call may be retried). */
int raft_ready(raft_t *r, struct raft_ready *rd);
/* Acknowledges that rd has been handled. Returns 0 or -ENOMEM. */
int raft_advance(raft_t *r, const struct raft_ready *rd);

struct raft_status {
    uint64_t id;
    uint64_t term;
    uint64_t vote;
    uint64_t commit;
    uint64_t applied;
    uint64_t last_index;
    uint64_t leader;
    enum raft_role role;
    uint64_t lead_transferee;
    bool is_learner;
};
void raft_status(const raft_t *r, struct raft_status *st);

/* Term of entry i of this node's log (stable or not). Returns 0,
 * RAFT_ECOMPACTED or RAFT_EUNAVAILABLE. */
int raft_log_term(const raft_t *r, uint64_t i, uint64_t *term);

/* Current configuration as this node has applied it. */
void raft_conf_state(const raft_t *r, struct raft_conf_state *cs);

/* On the leader: the highest index known replicated on member id (the
 * leader's own: its last stable index). Returns 0, RAFT_ENOLEADER (this node
 * does not lead) or -ENOENT (no such member). */
int raft_progress_match(const raft_t *r, uint64_t id, uint64_t *match);

#ifdef QUOIN_TESTING
/* Fault switches that each break one rule, so tests can prove the simulator's
 * checker notices. They exist only in test builds. */
enum raft_fault {
    RAFT_FAULT_NONE = 0,
    RAFT_FAULT_DOUBLE_VOTE = 1,       /* grant a second vote in the same term */
    RAFT_FAULT_COMMIT_OLD_TERM = 2,   /* commit by counting entries of any term */
    RAFT_FAULT_READ_NO_HEARTBEAT = 4, /* answer ReadIndex without a heartbeat round */
    RAFT_FAULT_APPLY_UNPERSISTED = 8, /* hand out committed entries not yet durable */
};
void raft_set_faults(raft_t *r, unsigned faults);
#endif

/* ---- In-memory storage: the reference implementation of raft_storage_ops,
 * used by tests, the simulator and the benchmark. It stands for durable state:
 * writing to it is "persisting". Not thread safe. ---- */
typedef struct raft_memstore raft_memstore_t;

/* Returns 0 or -ENOMEM. A new store is empty at index 0 with no voters. */
int raft_memstore_new(raft_memstore_t **out);
void raft_memstore_free(raft_memstore_t *ms);
struct raft_storage raft_memstore_storage(raft_memstore_t *ms);
/* Sets the configuration of the index-0 snapshot (bootstrapping a cluster). */
void raft_memstore_bootstrap(raft_memstore_t *ms, const struct raft_conf_state *cs);
void raft_memstore_set_hard_state(raft_memstore_t *ms, const struct raft_hard_state *hs);
/* Appends entries (data copied), replacing any entry at or after ents[0].index.
 * ents[0].index must be <= last_index + 1 and > the snapshot index. Returns 0,
 * -EINVAL or -ENOMEM (store unchanged). */
int raft_memstore_append(raft_memstore_t *ms, const struct raft_entry *ents, size_t n);
/* Replaces the store's content with a snapshot (data copied): every entry is
 * dropped and the log restarts after it. Returns 0, -EINVAL (not newer than the
 * current snapshot) or -ENOMEM. */
int raft_memstore_apply_snapshot(raft_memstore_t *ms, const struct raft_snapshot *snap);
/* Records a snapshot of the state machine at index (<= last index) with the
 * given configuration and data (copied). Returns 0, -EINVAL or -ENOMEM. */
int raft_memstore_create_snapshot(raft_memstore_t *ms, uint64_t index,
                                  const struct raft_conf_state *cs, const uint8_t *data,
                                  size_t len);
/* Discards entries up to and including index (<= the snapshot index).
 * Returns 0 or -EINVAL. */
int raft_memstore_compact(raft_memstore_t *ms, uint64_t index);
void raft_memstore_hard_state(const raft_memstore_t *ms, struct raft_hard_state *hs);
uint64_t raft_memstore_last_index(const raft_memstore_t *ms);

#endif
