/* lease: etcd 3.4's TTL leases (its "lessor") for quoin.
 *
 * A lease has an id and a TTL in seconds; keys put with the lease are deleted
 * when it is revoked, by a client or because nobody renewed it in time. The
 * state comes in two halves (docs/lease.md has the whole story):
 *
 *   Replicated state: which leases exist, their granted TTL, and the last
 *   checkpoint (a remaining TTL and an absolute wall-clock deadline). It lives
 *   in the LMDB database "lease" of the mvcc store and changes only on the
 *   apply thread, inside an mvcc batch, from committed raft entries: grant,
 *   revoke, checkpoint. Every input comes from the entry (the server stamps
 *   wall-clock times into the proposal), so every member stores the same bytes.
 *
 *   Leader state: when each lease expires on a monotonic clock (a min-heap),
 *   and when each is due for a checkpoint. It exists only between
 *   lease_promote and lease_demote. The leader renews (KeepAlive), answers
 *   TimeToLive, and reports expired leases; the server then proposes
 *   LeaseRevoke through raft like any other write.
 *
 * Restarts and leader changes: a new leader starts every lease at its
 * persisted deadline plus a grace (at most the election timeout), so a lease
 * is neither revoked before the deadline its last checkpoint recorded nor kept
 * more than the grace beyond it; a lease whose deadline passed while the
 * cluster was down is reported expired at deadline + grace, at once if that
 * is already past. A
 * renewal that takes a lease past its persisted deadline asks the server to
 * propose a checkpoint (lease_renew's *propose), so the deadline on disk
 * always covers what a client was told.
 *
 * Clocks: every function that needs the time takes it as a parameter
 * (`now_mono`: CLOCK_MONOTONIC nanoseconds, util_now_mono_ns(); `now_wall`:
 * Unix-epoch nanoseconds, util_now_wall_ns()). Wall-clock deadlines are
 * compared across members, so their clocks must agree to within the grace.
 *
 * Threading: one mutex guards the leader state. The apply thread holds it
 * only at lease_batch_end; io loops (lease_renew, lease_time_to_live), the
 * raft loop or a timer (lease_expired, lease_due_checkpoints, lease_promote,
 * lease_demote) hold it for the call. The replicated state is read through
 * LMDB (a batch on the apply thread, a read snapshot elsewhere) and needs no
 * lock. No call waits on raft, a disk sync or a client.
 *
 * Errors: 0 (or a count) on success, else a negative code: a negative errno,
 * an MVCC_E* code from the store, or one of the LEASE_E* codes below whose
 * lease_strerror() text is etcd's. Inside a batch, LEASE_E* codes reject that
 * one request and leave the batch usable; any other error leaves the batch
 * unusable (abort it; see mvcc.h). */
#ifndef QUOIN_LEASE_H
#define QUOIN_LEASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log/log.h"
#include "mvcc/mvcc.h"
#include "util/util.h"

#define LEASE_ENOTFOUND (-21001)    /* "etcdserver: requested lease not found" */
#define LEASE_EEXISTS (-21002)      /* "etcdserver: lease already exists" */
#define LEASE_ETTLTOOLARGE (-21003) /* "etcdserver: too large lease TTL" */
#define LEASE_ENOTPRIMARY (-21004)  /* this member is not the leader: forward */
#define LEASE_EEXPIRED (-21005)     /* renew of an expired lease awaiting revoke */

/* etcd's MaxLeaseTTL, in seconds. */
#define LEASE_MAX_TTL 9000000000LL
/* etcd revokes at most this many leases per 500 ms tick (leaseRevokeRate/2):
 * the `max` a server passes to lease_expired every 500 ms. */
#define LEASE_REVOKE_BATCH 500
/* etcd's maxLeaseCheckpointBatchSize: checkpoints per proposed entry. */
#define LEASE_CHECKPOINT_BATCH 1000

/* etcd's error string for LEASE_E* ("not a primary lessor" for
 * LEASE_ENOTPRIMARY, which clients never see; LEASE_EEXPIRED reads as not
 * found, which is what the client ends up being told), mvcc_strerror() for
 * anything else. Any thread. */
const char *lease_strerror(int code);

typedef struct lease_mgr lease_t;
typedef struct lease_batch lease_batch_t;

struct lease_options {
    /* Shortest TTL granted, in seconds; shorter requests are raised to it.
     * etcd's minLeaseTTL: ceil(1.5 * election timeout in seconds). */
    int64_t min_ttl;
    /* Added to every persisted deadline when this member becomes leader (the
     * allowance for clock skew between members and for the time between a
     * proposal's stamp and its apply). Must not exceed the election timeout;
     * etcd extends by exactly the election timeout. */
    uint64_t grace_ns;
    /* etcd's lease checkpoint interval: a lease with more time left than this
     * gets its remaining TTL checkpointed once per interval. 0 = 5 minutes. */
    uint64_t checkpoint_interval_ns;
    /* An expired lease is reported again by lease_expired after this long if
     * it was not revoked meanwhile (a lost proposal). 0 = 3 s, as etcd. */
    uint64_t retry_ns;
};

/* Opens the lease layer on an open store: opens the "lease" database (so call
 * it at start-up, before any batch or read, as mvcc_dbi_open requires). The
 * member starts as a follower. Returns 0, -ENOMEM, -EINVAL (min_ttl < 1 or
 * above LEASE_MAX_TTL) or an LMDB-derived errno, with err filled. */
int lease_open(mvcc_t *db, const struct lease_options *opt, log_t *lg, lease_t **out,
               struct util_err *err);

/* Frees the lease layer (not the store). No batch may be open. NULL: no-op. */
void lease_close(lease_t *ls);

/* ---- Replicated state: the apply thread, inside an mvcc batch ------------ */

/* Starts lease work in mvcc batch b. Exactly one lease batch at a time; it
 * must end (lease_batch_end) before b's successor begins. Never fails. */
lease_batch_t *lease_batch_begin(lease_t *ls, mvcc_batch_t *b);

/* etcd's LeaseGrant, applied: `id` (non-zero, chosen by the server before
 * proposing) with `ttl` seconds, raised to min_ttl if below it (negative
 * included). wall_ns is the wall clock the proposer stamped into the entry
 * (0 if none): the lease's first deadline is wall_ns + ttl. *granted_ttl (may
 * be NULL) gets the TTL stored. Returns 0, LEASE_ETTLTOOLARGE (ttl above
 * LEASE_MAX_TTL), LEASE_EEXISTS, LEASE_ENOTFOUND (id 0, as etcd), or a
 * batch-breaking error. */
int lease_grant(lease_batch_t *lb, int64_t id, int64_t ttl, uint64_t wall_ns, int64_t *granted_ttl);

/* etcd's LeaseRevoke, applied: deletes every key attached to the lease, in
 * key order, as one mvcc write (one revision, one sub-revision per key; no
 * revision at all when there is no key), then the lease. *out gets that
 * delete's result: resp.revision is the header revision, events the DELETE
 * events for watchers (free with mvcc_result_free). Returns 0,
 * LEASE_ENOTFOUND (nothing changed, *out NULL), or a batch-breaking error. */
int lease_revoke(lease_batch_t *lb, int64_t id, mvcc_result_t **out);

/* One lease's checkpoint (etcd's LeaseCheckpoint plus quoin's deadline). */
struct lease_checkpoint {
    int64_t id;
    int64_t remaining_ttl;     /* seconds left; 0 = the full TTL (etcd's "unset") */
    uint64_t deadline_wall_ns; /* absolute wall-clock deadline; 0 = unknown */
};

/* etcd's LeaseCheckpoint, applied: records each lease's remaining TTL and
 * deadline. Leases that no longer exist are skipped (as etcd). Returns 0 or a
 * batch-breaking error. */
int lease_checkpoint(lease_batch_t *lb, const struct lease_checkpoint *cps, size_t n);

/* Whether lease `id` exists as the batch sees it: the check etcd makes before
 * applying a put with a lease. Returns 0, LEASE_ENOTFOUND (also for id 0) or
 * a batch-breaking error. */
int lease_exists(lease_batch_t *lb, int64_t id);

/* Ends the lease batch. Call it after mvcc_batch_commit (committed = whether
 * it returned 0) or mvcc_batch_abort (committed = false). On a committed
 * batch the leader state follows what was applied: a granted lease starts to
 * expire at now_mono + TTL, a revoked one is forgotten, a checkpoint that
 * left a lease's persisted deadline short of what a client was promised
 * makes the lease due for a new checkpoint at once. Out of memory there
 * drops the leader state (logged; lease_is_primary turns false) rather than
 * leave it half-updated: the server may promote again. */
void lease_batch_end(lease_batch_t *lb, bool committed, uint64_t now_mono);

/* ---- Leader state --------------------------------------------------------- */

/* This member became leader (etcd's Promote): every lease starts to expire
 * at its persisted deadline plus the grace (at once if that is past), or, for a lease with no known
 * deadline, at now + its checkpointed remaining TTL (else its TTL) + grace, as etcd. Reads the
 * "lease" database on a snapshot: cost and memory grow with the number of leases. Returns 0, or
 * -ENOMEM / an LMDB error leaving the member a follower. Raft loop. */
int lease_promote(lease_t *ls, uint64_t now_mono, uint64_t now_wall);

/* The store was replaced (a raft snapshot installed): on the leader, the
 * leader state is rebuilt from the new lease table as lease_promote does;
 * on a follower nothing happens. Atomic with respect to lease_demote, so a
 * concurrent demotion is never undone. Returns 0 or lease_promote's errors.
 * Any thread. */
int lease_reload(lease_t *ls, uint64_t now_mono, uint64_t now_wall);

/* This member stopped being leader: leader state is dropped, nothing expires
 * here any more. Raft loop. */
void lease_demote(lease_t *ls);

/* Whether lease_promote holds. Any thread. */
bool lease_is_primary(lease_t *ls);

/* etcd's LeaseKeepAlive (Renew): the lease expires at now_mono + TTL;
 * *ttl gets the TTL. If that is later than the lease's persisted deadline,
 * *propose is set and *cp filled: the server proposes it as a LeaseCheckpoint
 * and, for a restart not to revoke the lease before the time just promised,
 * answers the client once it applied (as etcd answers a renewal after its
 * checkpoint-clearing proposal). The checkpoint's deadline reaches half a TTL
 * (at most a checkpoint interval) further, so a steadily renewed lease needs
 * one every few renewals. Returns 0, LEASE_ENOTPRIMARY, LEASE_ENOTFOUND, or
 * LEASE_EEXPIRED (expired, a revoke is on its way: etcd waits for it and then
 * answers not found). io loops. */
int lease_renew(lease_t *ls, int64_t id, uint64_t now_mono, uint64_t now_wall, int64_t *ttl,
                struct lease_checkpoint *cp, bool *propose);

/* Up to `max` leases whose expiry is at or before now_mono, earliest first,
 * into ids; each is reported again after retry_ns if still not revoked.
 * Returns the count (0 on a follower). Raft loop or a timer. */
size_t lease_expired(lease_t *ls, uint64_t now_mono, int64_t *ids, size_t max);

/* Up to `max` checkpoints due at now_mono, into out, for the server to propose
 * as one LeaseCheckpoint entry: remaining_ttl rounds the time left up to a
 * second, deadline_wall_ns is the exact expiry on the wall clock. Returns the
 * count (0 on a follower). Raft loop or a timer. */
size_t lease_due_checkpoints(lease_t *ls, uint64_t now_mono, uint64_t now_wall,
                             struct lease_checkpoint *out, size_t max);

/* One key of a lease (TimeToLive with keys). */
struct lease_key {
    const uint8_t *key;
    size_t len;
};

/* etcd's LeaseTimeToLiveResponse; owns its keys (lease_ttl_free). */
struct lease_ttl {
    int64_t id;
    int64_t ttl;         /* seconds left, truncated toward zero as etcd */
    int64_t granted_ttl; /* the TTL stored at grant */
    struct lease_key *keys;
    size_t n_keys;
    uint8_t *data; /* private: the key bytes */
};

/* etcd's LeaseTimeToLive on the leader: remaining and granted TTL, and with
 * with_keys the attached keys in key order (from the latest committed batch).
 * Returns 0, LEASE_ENOTPRIMARY, LEASE_ENOTFOUND, -ENOMEM or a store error;
 * *out is zeroed on error. io loops. */
int lease_time_to_live(lease_t *ls, int64_t id, bool with_keys, uint64_t now_mono,
                       struct lease_ttl *out);

/* Frees what lease_time_to_live put in t. */
void lease_ttl_free(struct lease_ttl *t);

/* etcd's LeaseLeases: the ids of every lease (ascending by their 8-byte
 * big-endian encoding), from the latest committed batch, on any member. *ids
 * is malloc'ed (free() it; NULL when *n is 0). Returns 0, -ENOMEM or a store
 * error. Any thread. */
int lease_list(lease_t *ls, int64_t **ids, size_t *n);

#ifdef QUOIN_TESTING
/* Test builds only: the n-th allocation the layer attempts from now on
 * (counting from 1) fails as if memory ran out; n <= 0 disarms. Returns how
 * many allocations were attempted since the previous call, so a test can fail
 * each one in turn until a run attempts fewer than n. */
long lease_test_fail_alloc(lease_t *ls, long n);
#endif

#endif
