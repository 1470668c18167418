/* apply: internal to src/server — the apply thread. It takes committed raft
 * entries from the raft loop, applies many of them per LMDB write transaction
 * (mvcc batch) with the last applied index and term stored in the same
 * transaction, and only after the commit runs what each entry left to do
 * (answer the client, publish watch events). It also gates linearizable reads:
 * a read waits here until the applied index reaches its read index.
 *
 * Threads: server_apply_push runs on the raft thread; server_apply_when_applied
 * and server_apply_applied on any thread; the entry and done callbacks run on
 * the apply thread. */
#ifndef QUOIN_SERVER_APPLY_H
#define QUOIN_SERVER_APPLY_H

#include <stdbool.h>
#include <stdint.h>

#include "log/log.h"
#include "mvcc/mvcc.h"
#include "raft/raft.h"
#include "util/util.h"

typedef struct server_apply server_apply_t;

/* Work an entry leaves for after its batch is durable in LMDB (reads of the
 * new state then see it). fn may be NULL. */
struct apply_done {
    void (*fn)(void *ctx);
    void *ctx;
};

/* Applies one committed entry (normal or conf change) inside batch b. Returns 0 (the entry's
 * own failures — a compare, a missing key — are answers, not errors), or a
 * negative code that breaks the batch: the member stops (LMDB cannot take the
 * write, so continuing would diverge from the other members). */
typedef int (*apply_entry_fn)(void *arg, mvcc_batch_t *b, const struct raft_entry *e,
                              struct apply_done *done);

/* What the apply thread calls. entry is required; the batch hooks, which
 * other layers use to join the batch (leases), may be NULL. */
struct apply_hooks {
    void *arg;
    apply_entry_fn entry;
    void (*batch_begin)(void *arg, mvcc_batch_t *b);
    /* After the commit (committed true, `index` now applied) or the abort of
     * the batch. */
    void (*batch_end)(void *arg, bool committed, uint64_t index);
    /* The store was replaced by a raft snapshot and now holds everything up
     * to `index`: reload what other layers derive from it. May be NULL. */
    void (*restored)(void *arg, uint64_t index);
};

/* Starts the apply thread over db. applied is the index already in db. */
int server_apply_start(mvcc_t *db, uint64_t applied, const struct apply_hooks *hooks, log_t *lg,
                       server_apply_t **out, struct util_err *err);

/* Queues committed entries (copied). Raft thread. Returns 0 or -ENOMEM. */
int server_apply_push(server_apply_t *a, const struct raft_entry *ents, size_t n);

/* Queues the installation of a raft snapshot: once the entries queued
 * before it are applied, the store is replaced by `file` (a copy written by
 * mvcc_snapshot_to_fd, holding at least every entry up to `index`; it is
 * renamed away), the applied index becomes the copy's, committed entries the
 * copy already holds are skipped (etcd's consistent index), and
 * hooks->restored runs. A copy that cannot be installed stops the member:
 * raft has already moved past the log it replaces. Raft thread (or before
 * it starts). Returns 0 or -ENOMEM. */
int server_apply_install(server_apply_t *a, const char *file, uint64_t index);

/* The last index whose batch has committed. Any thread. */
uint64_t server_apply_applied(server_apply_t *a);

/* Calls fn(ctx) once the applied index reaches index: at once on the calling
 * thread when it already has, else on the apply thread. Returns 0 or -ENOMEM. */
int server_apply_when_applied(server_apply_t *a, uint64_t index, void (*fn)(void *ctx), void *ctx);

/* Applies what is queued, stops the thread and frees a. Read waiters still
 * pending are called (their index will not be reached any more: they must
 * check). */
void server_apply_stop(server_apply_t *a);

#endif
