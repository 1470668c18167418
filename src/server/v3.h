/* v3: internal to src/server — the member's shared state and etcd's v3
 * services over it (KV, Maintenance, Cluster, ...). Like etcd's etcdserver, the
 * services speak etcd's protobuf types; src/api carries them.
 *
 * Threads: service handlers run on the io loop (the thread of server_run). A
 * write is proposed to the raft loop with a waiter registered under its
 * request id; the apply thread applies it and, once its LMDB batch has
 * committed, fires the waiter, which answers the client (api calls are
 * thread-safe). A linearizable read gets a read index from the raft loop,
 * waits for the apply thread to reach it, and then runs back on the io loop
 * (server_post), never on the raft or apply thread. */
#ifndef QUOIN_SERVER_V3_H
#define QUOIN_SERVER_V3_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "api/api.h"
#include "api/proto/rpc.pb-c.h"
#include "config/config.h"
#include "lease/lease.h"
#include "mvcc/mvcc.h"
#include "peer/peer.h"
#include "server/apply.h"
#include "server/members.h"
#include "server/node.h"
#include "server/pbw.h"
#include "server/server.h"
#include "server/wait.h"
#include "watch/watch.h"

/* Work handed to the io loop from another thread. */
struct server_post {
    void (*fn)(void *ctx);
    void *ctx;
    struct server_post *next;
};

struct server {
    uv_loop_t loop;
    log_t *lg;
    const struct config *cfg;
    server_datadir_t *dd;
    mvcc_t *db;
    server_node_t *node;
    server_apply_t *apply;
    server_wait_t *writes; /* request id -> waiting write */
    server_wait_t *reads;  /* read id -> waiting linearizable read */
    api_server_t *api;
    peer_transport_t *peer;
    uv_signal_t sigterm, sigint;
    uv_async_t post_wake;
    pthread_mutex_t post_mu;
    struct server_post *posts, *posts_tail;
    int stopping;
    _Atomic uint64_t next_id;
    uint64_t member_id, cluster_id;
    MDB_dbi alarm_dbi;
    atomic_bool nospace_proposed; /* raising NOSPACE is on its way */
    atomic_bool nospace_active;   /* NOSPACE is raised (as applied) */
    lease_t *leases;
    lease_batch_t *lease_batch; /* apply thread: the batch being applied */
    /* Leadership won, leases not yet taken over (v3_lease_role_changed). */
    pthread_mutex_t role_mu;
    bool promote_pending;  /* under role_mu */
    uv_timer_t tick_timer; /* leases every tick, watch progress less often */
    /* Auto-compaction (io loop): revisions sampled on the tick, newest last. */
    struct {
        uint64_t at_ns;
        int64_t revision;
    } compact_samples[64];
    size_t n_compact_samples;
    uint64_t next_compact_check_ns;
    int64_t last_auto_compact;
    unsigned ticks;
    watch_hub_t *watch;
    struct watch_conn *watch_conns; /* io loop */
    bool watch_syncing, watch_sync_again;
    uv_work_t watch_sync_req;
    /* Apply thread: the writes of the batch being applied, whose events are
     * published to watchers once it commits. */
    struct v3_applied **batch_applied;
    size_t n_batch_applied, cap_batch_applied;
    uint64_t last_checkpoint; /* apply thread: index of the last key-space sync */
    int big_ranges;           /* io loop: big range answers not yet sent */
    /* Membership (v3_cluster.c): the store, the raft thread's copy of the
     * member set (conf changes are checked on both threads alike), when this
     * member applied its own removal, and publishing its attributes. */
    MDB_dbi members_dbi;
    struct member_set raft_members;
    _Atomic uint64_t removed_ns;
    atomic_int publish_state; /* 0 to do, 1 in flight, 2 done */
    uint64_t publish_id, publish_at_ns;
    /* io loop: membership changes waiting to be applied, with the time
     * after which they are answered "request timed out" (raft drops a
     * change forwarded while another is pending, as etcd's does). */
    struct {
        uint64_t id, deadline_ns;
    } cluster_waits[32];
    size_t n_cluster_waits;
};

/* Runs fn(ctx) on the io loop soon. Any thread. Returns 0 or -ENOMEM. */
int server_post(struct server *s, void (*fn)(void *ctx), void *ctx);

/* A fresh request id: unique for this member's lifetime. Any thread. */
uint64_t server_next_id(struct server *s);

/* Fills an etcd response header with the member's ids, the current raft term
 * and `revision`. Any thread. */
void v3_header(struct server *s, int64_t revision, struct pbw_header *h);

/* The same, into a protobuf-c header (for replies built as messages). */
void v3_header_msg(struct server *s, int64_t revision, Etcdserverpb__ResponseHeader *h);

/* The kinds of request a raft entry carries; the entry is
 * [format 1][kind][request id, 8 bytes big-endian][the request's protobuf]. */
enum v3_entry_kind {
    V3_ENTRY_PUT = 1,
    V3_ENTRY_DELETE_RANGE = 2,
    V3_ENTRY_TXN = 3,
    V3_ENTRY_COMPACT = 4,
    /* Lease kinds from here on (v3_lease_apply). */
    V3_ENTRY_LEASE_GRANT = 5,      /* [wall clock ns, 8 bytes][LeaseGrantRequest, ID set] */
    V3_ENTRY_LEASE_REVOKE = 6,     /* LeaseRevokeRequest */
    V3_ENTRY_LEASE_CHECKPOINT = 7, /* n x [id][remaining ttl][deadline], 8 bytes each */
    V3_ENTRY_ALARM = 8,            /* AlarmRequest (activate / deactivate) */
    /* Membership (v3_cluster.c). MEMBER is the context of a raft conf
     * change: [op, 1 byte][member record, for add and update]. */
    V3_ENTRY_MEMBER = 9,
    V3_ENTRY_MEMBER_ATTR = 10, /* a member publishes: [member id, 8][member record] */
};

/* etcd's request errors that are not mvcc's or the lease layer's. */
#define V3_EEMPTYKEY (-30001)
#define V3_EVALUEPROVIDED (-30002)
#define V3_ELEASEPROVIDED (-30003)
#define V3_ETOOMANYOPS (-30004)
#define V3_ETOOLARGE (-30005)
#define V3_ELEASENOTFOUND (-30006)
#define V3_ESORT (-30007)
#define V3_ETOOMANYRANGES (-30008)   /* answered as "etcdserver: too many requests" */
#define V3_ETIMEOUT (-30009)         /* "etcdserver: request timed out" */
#define V3_ENOTLEADER (-30010)       /* "etcdserver: not leader" */
#define V3_EBADTRANSFEREE (-30011)   /* "etcdserver: bad leader transferee" */
#define V3_ETRANSFERTIMEOUT (-30012) /* "...request timed out, leader transfer took too long" */

/* Ranges whose answer passes V3_BIG_RANGE_BYTES hold one of V3_MAX_BIG_RANGES
 * slots until the answer has left (v3_call_over). */
#define V3_BIG_RANGE_BYTES (8u << 20)
#define V3_MAX_BIG_RANGES 4

/* What the apply thread hands to a waiting write, after its batch committed. */
struct v3_applied {
    struct server *s;
    uint64_t id;
    enum v3_entry_kind kind;
    int code;           /* 0, or the request's error */
    mvcc_result_t *res; /* put, delete range, txn, lease revoke (may be NULL) */
    bool physical;      /* compaction: answer once the history is removed */
    int64_t lease_id, ttl;
    struct v3_compaction *compaction; /* compaction: its history removal */
    bool alarm_changed;               /* alarm: whether the store changed */
    uint64_t alarm_member;
    int alarm_type;
    uint64_t member_id; /* membership change: the member it was about */
};

void v3_applied_free(struct v3_applied *a);

/* The apply_done function of an applied entry: wakes its waiter or frees it. */
void v3_applied_done(void *ctx);

/* Encodes and sends the answer of an applied write (code 0). Any thread. */
typedef void (*v3_answer_fn)(struct server *s, api_call_t *call, struct v3_applied *a);

/* Proposes a write [format][kind][id][payload] with a waiter that answers the
 * call through `answer` (NULL: the KV answers) once applied, or with the
 * error that stopped it. io loop. */
void v3_propose(struct server *s, api_call_t *call, enum v3_entry_kind kind, const uint8_t *data,
                size_t len, v3_answer_fn answer);

/* As v3_propose, for a membership change cc whose context becomes the entry
 * [format][V3_ENTRY_MEMBER][id][data]. Returns the id its waiter is
 * registered under, or 0 when the call was answered already. io loop. */
uint64_t v3_propose_conf(struct server *s, api_call_t *call, const struct raft_conf_change *cc,
                         const uint8_t *data, size_t len, v3_answer_fn answer);

/* The on_cancel of a proposed write: its waiter answers CANCELLED (the entry
 * may still be applied). io loop. */
void v3_write_cancel(api_call_t *call, void *arg);

/* Membership: the member store at start-up (identity, a new cluster's
 * members, joining an existing cluster, a restart: fills cs with the
 * configuration as of the applied index and gives the transport its peers),
 * the Cluster service, the apply of conf changes and of published
 * attributes (apply thread), the raft thread's check of a conf change
 * (node_callbacks.conf_change), the answers to other members' questions on
 * the peer port (peer_config.answer: the members, for a member joining; a
 * learner's progress, asked of the leader by a follower promoting it), and
 * the 500 ms tick (publishing; returns true once this member, removed, must
 * stop). */
int v3_cluster_open(struct server *s, struct raft_conf_state *cs, struct util_err *err);
int v3_cluster_register(struct server *s, struct util_err *err);
int v3_cluster_apply(struct server *s, mvcc_batch_t *b, const struct raft_entry *e,
                     struct apply_done *done);
bool v3_cluster_conf_change(void *arg, const struct raft_conf_change *cc, uint64_t index);
int v3_cluster_answer(void *arg, enum peer_question q, uint64_t about, struct util_buf *out);
bool v3_cluster_tick(struct server *s);

/* After a snapshot replaced the key space (and with it the member store):
 * the raft thread's member set is read again from the store, the transport
 * is given the members it holds and forgets the others, and cs (may be NULL)
 * gets the store's configuration — the one as of the snapshot's applied
 * index. Raft thread, outside a Ready. Returns 0, an error reading the
 * store (the old set is kept), or the transport's error for a peer. */
int v3_cluster_reload(struct server *s, struct raft_conf_state *cs);

/* Applies a lease entry inside the current batch. Apply thread. */
int v3_lease_apply(struct server *s, enum v3_entry_kind kind, uint64_t id, const uint8_t *p,
                   size_t len, struct apply_done *done);

int v3_lease_register(struct server *s, struct util_err *err);

/* Proposes one LeaseCheckpoint entry of n checkpoints. With fn, a waiter
 * fn(ctx, struct v3_applied * or NULL) is registered under *wait_id first and
 * owns the outcome from then on (a refused proposal fires it with NULL).
 * Returns 0, or -ENOMEM / a proposal error (fn not registered). Any thread. */
int v3_lease_propose_checkpoints(struct server *s, const struct lease_checkpoint *cps, size_t n,
                                 wait_fn fn, void *ctx, uint64_t *wait_id);

/* Lease renewals and TimeToLive on any member (v3_lease_fwd.c): run on the
 * leader's lease layer, forwarded there from other members over the peer
 * transport, retried across leader changes up to etcd's request timeout. */
enum v3_lease_op { V3_LEASE_RENEW = 1, V3_LEASE_TTL = 2 };

/* done(ctx, code, body, len), once, on the io loop: code 0 with the leader's
 * answer without header (a packed LeaseKeepAliveResponse or
 * LeaseTimeToLiveResponse), LEASE_ENOTFOUND, or the request's error
 * (RAFT_ENOLEADER, V3_ETIMEOUT, -ESHUTDOWN, -ENOMEM). */
typedef void (*v3_lease_done_fn)(void *ctx, int code, const uint8_t *body, size_t len);

/* req: the packed LeaseKeepAliveRequest or LeaseTimeToLiveRequest (copied).
 * io loop. */
void v3_lease_call(struct server *s, enum v3_lease_op op, const uint8_t *req, size_t len,
                   v3_lease_done_fn done, void *ctx);

/* The peer transport's on_request: another member forwards a renewal or a
 * TimeToLive to this one (transport thread; served on the io loop). */
void v3_lease_on_request(void *arg, uint64_t from, uint64_t id, uint8_t method,
                         uint64_t deadline_mono, const uint8_t *body, size_t len);

/* Compaction: an applied compaction's history is removed in short LMDB
 * transactions on a libuv worker (v3_compaction_new on the apply thread, then
 * v3_compaction_start, any thread); a client that asked for `physical` is
 * answered once that is done. A compaction left unfinished by a restart is
 * resumed at start-up. Auto-compaction (--auto-compaction-mode/-retention)
 * is proposed by the leader from the 500 ms tick. */
struct v3_compaction *v3_compaction_new(struct server *s);
void v3_compaction_start(struct server *s, struct v3_compaction *c);
void v3_compaction_answer_when_done(struct v3_compaction *c, api_call_t *call);
void v3_compaction_resume(struct server *s);
void v3_autocompact_tick(struct server *s);

/* Answers OK with a response that is only a header at `revision` (0: the
 * current one). Any thread. */
void v3_answer_header_only(struct server *s, api_call_t *call, int64_t revision);

/* Alarms: the "alarm" LMDB database (opened at start-up, capped mode restored),
 * the Alarm method, the apply of an alarm entry, and raising NOSPACE when a
 * write would pass the quota (once until it is disarmed). */
int v3_alarm_open(struct server *s, struct util_err *err);
/* Reads the stored alarms again (start-up, and after a raft snapshot replaced
 * the store): capped mode and the NOSPACE flag follow them. Returns 0 or a
 * store error. */
int v3_alarm_reload(struct server *s);
int v3_alarm_register(struct server *s, struct util_err *err);
int v3_alarm_apply(struct server *s, mvcc_batch_t *b, uint64_t id, const uint8_t *p, size_t len,
                   struct apply_done *done);
void v3_alarm_raise_nospace(struct server *s);

/* The stored alarms matching member and type (0 / NONE: any), from the
 * latest committed batch, into a malloc'ed array (*out, free() it; NULL when
 * *n is 0). Returns 0, -ENOMEM or a store error. Any thread. */
int v3_alarm_list(struct server *s, uint64_t member, uint32_t type, Etcdserverpb__AlarmMember **out,
                  size_t *n);

/* The leader's lease timer (every 500 ms): takes leases over if due (below),
 * proposes revokes of expired leases and due checkpoints. io loop. */
void v3_lease_tick(struct server *s);

/* Leadership changed (node_callbacks.role_changed, raft thread). Losing it
 * demotes the lease layer at once; winning it only marks the takeover due:
 * v3_lease_maybe_promote promotes once this member has applied an entry of
 * its own term, as etcd promotes its lessor on applying the new leader's
 * first (empty) entry — before that, the previous leader's last checkpoints
 * may not be applied here, and their deadlines would be missed. */
void v3_lease_role_changed(struct server *s, bool leader);

/* Promotes if due (apply thread after a batch, or the io loop's tick). */
void v3_lease_maybe_promote(struct server *s);

/* Records an applied entry of the current batch, for v3_watch_publish.
 * Apply thread. Returns 0 or -ENOMEM (which breaks the batch). */
int v3_batch_track(struct server *s, struct v3_applied *a);

/* Ends applying an entry: with rc 0, tracks a for the batch and makes it the
 * entry's apply_done; otherwise (or if tracking fails) frees a. Returns the
 * batch-breaking error, or 0. Apply thread. */
int v3_applied_hand_over(struct server *s, struct v3_applied *a, int rc, struct apply_done *done);

/* Watch: the hub over the store, the gRPC service, publishing a committed
 * batch's events (apply thread, after the commit), catch-up from history on
 * a worker thread (io loop schedules it), and the periodic tick (safety-net
 * catch-up; progress notifications when `progress`). */
int v3_watch_open(struct server *s, struct util_err *err);
int v3_watch_register(struct server *s, struct util_err *err);
void v3_watch_publish(struct server *s);
void v3_watch_sync(void *arg);
void v3_watch_tick(struct server *s, bool progress);
#define V3_ENTRY_FORMAT 1
#define V3_ENTRY_HEADER 10

/* Raft snapshots (v3_snapshot.c). v3_snapshot_write is the node's
 * snapshot_write callback: the key space's consistent copy into fd (a worker
 * thread). v3_snapshot_restored is the apply thread's restored hook: the
 * store was replaced, so everything derived from it is reloaded — THE place
 * where a layer keeping state derived from the store (alarms, watchers,
 * compaction, members, ...) plugs in its reload. v3_snapshot_install is the
 * node's snapshot_install callback: queues the installation behind the
 * entries already handed to the apply thread, waits for it, then reloads the
 * raft thread's member set and the transport's peers from the new store
 * (v3_cluster_reload). */
int v3_snapshot_write(void *arg, int fd, uint64_t *index, uint64_t *term);
void v3_snapshot_restored(void *arg, uint64_t index);
void v3_snapshot_install(void *arg, const char *file, uint64_t index, uint64_t term,
                         struct raft_conf_state *cs);

#ifdef QUOIN_TESTING
/* Test builds: with QUOIN_TEST_DB_SYNCED=<file>, keeps in <file> a copy of the
 * key space as of its last sync (a checkpoint, an installed snapshot), so the
 * chaos harness's power cut can leave LMDB as a real one would: what was
 * synced and nothing after (commits are not synced; the WAL is). Apply
 * thread, right after the sync: no commit comes between. */
void server_test_keep_synced(struct server *s);
#endif

/* The api's call observer: frees the big-range slot of a finished call. io loop. */
void v3_call_over(const char *path, int code, uint64_t duration_ns, void *call_data, void *arg);

/* Registers n gRPC methods on the member's client server. */
int v3_register(struct server *s, const struct api_grpc_method *m, size_t n, struct util_err *err);

/* Registers the KV, Maintenance and Cluster services. */
int v3_kv_register(struct server *s, struct util_err *err);
int v3_maintenance_register(struct server *s, struct util_err *err);

/* Maintenance.MoveLeader's handler (v3_move_leader.c). io loop. */
void v3_move_leader(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                    void *arg);

/* The apply thread's entry function (apply_entry_fn). */
int v3_apply_entry(void *arg, mvcc_batch_t *b, const struct raft_entry *e, struct apply_done *done);

/* What a waiter of the reads table receives: how its read index ended, 0 once
 * the state machine applied it, else why it failed. */
struct read_outcome {
    int code;
};

/* GET /health, as etcd 3.4 answers it: {"health":"true"} once a
 * linearizable read goes through and no alarm is raised, else 503 with
 * {"health":"false"}. */
void v3_health_register(struct server *s);

/* node_callbacks (raft thread). */
void v3_propose_failed(void *arg, const uint8_t *data, size_t len, int code);
void v3_read_ready(void *arg, uint64_t context, uint64_t index);
void v3_read_failed(void *arg, uint64_t context, int code);

/* Ends a call with the gRPC status and etcd message for a quoin error code
 * (MVCC_E*, RAFT_E*, negative errno). Any thread. */
void v3_fail(api_call_t *call, int code);

#endif
