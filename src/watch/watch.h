/* watch: quoin's watch engine — etcd v3 watch semantics over the mvcc key
 * space, independent of any transport. docs/watch.md has the design and the
 * arguments behind each guarantee.
 *
 * Handles:
 *   watch_hub_t     one per server, created over the mvcc store. The apply
 *                   thread publishes every committed batch's events into it.
 *   watch_stream_t  one per client Watch stream (a gRPC bidi stream). It
 *                   holds many watchers (etcd's watch ids) and one bounded
 *                   FIFO of responses that the transport drains.
 *   struct watch_response
 *                   one response taken off a stream's queue; the caller owns
 *                   it until watch_response_free.
 *
 * The life of a server:
 *   1. watch_hub_create() after mvcc_open(), before the apply thread starts.
 *   2. apply thread: after each mvcc_batch_commit(), watch_hub_publish() with
 *      the events of every request of the batch in order and the batch's
 *      revision. Cheap: matches events to watchers through an interval index
 *      and never waits for a client.
 *   3. a worker thread or an io loop (never the apply thread): calls
 *      watch_hub_sync_step() while it returns 1, and again whenever the hub's
 *      sync_wanted callback fires (and, as a safety net, every ~100 ms while
 *      watch_hub_stats() reports unsynced watchers).
 *   4. per client stream, on its io loop: watch_stream_open(), then
 *      watch_stream_create/cancel/request_progress as requests arrive,
 *      watch_stream_progress_tick() on etcd's progress interval, and whenever
 *      the stream's ready callback fires, watch_stream_pop() until -EAGAIN,
 *      encoding and sending each response. watch_stream_close() at the end.
 *
 * Guarantees, per watcher (each tested in tests/watch):
 *   - events in revision order, without gap or duplicate, starting exactly at
 *     the start revision (0 = the hub's revision + 1);
 *   - every event of one revision in one response (a response can carry
 *     several revisions); only a watcher created with `fragment` may see a
 *     revision split, across fragments of one logical response;
 *   - resumable from any revision above the compaction revision: a watcher
 *     that needs a revision at or below it gets one compacted response and is
 *     removed (see the compaction rule below);
 *   - a response's header revision R never runs ahead: the watcher (for a
 *     stream-wide progress notification, every watcher of the stream) has
 *     been sent every event with revision <= R before or in that response;
 *   - a slow client cannot grow server memory without bound: past its
 *     stream's byte budget, a watcher stops receiving live events and
 *     catches up from mvcc history when the client reads again.
 *
 * Compaction rule: quoin cancels a watcher whose next revision is <= the
 * compaction revision C, one revision stricter than etcd (which accepts
 * next == C): the compaction sweep removes the tombstones of C itself, so
 * reading C from history would silently lose its deletes. The compacted response carries
 * compact_revision = C + 1, the smallest revision a new watch can start at
 * (clientv3 documents the field as "the minimum revision the watcher may
 * receive"), so a client that resumes there does not loop.
 *
 * Threading: every function may be called from any thread, concurrently,
 * except that watch_stream_close must not race with other calls on the same
 * stream, and watch_hub_destroy with any call. One mutex guards the hub and
 * its watchers, each stream has one mutex for its queue; lock order is hub
 * then stream. watch_stream_pop takes the stream's mutex only, so draining
 * never waits for publish. Callbacks (ready, sync_wanted) may run with the
 * hub's mutex held, on any thread: they must only schedule work (uv_async_send,
 * an eventfd write) and never call into this module.
 *
 * Errors: 0 or a negative errno, or one of the WATCH_E* codes below whose
 * watch_strerror() text is etcd's. */
#ifndef QUOIN_WATCH_H
#define QUOIN_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log/log.h"
#include "mvcc/mvcc.h"

/* Create rejections, answered on the stream as etcd does: a response with
 * created and canceled set, watch_id -1 and the error text as cancel_reason. */
#define WATCH_EDUPID (-22001)      /* "mvcc: duplicate watch ID provided on the WatchStream" */
#define WATCH_EEMPTYRANGE (-22002) /* "mvcc: watcher range is empty" */

/* etcd's text for WATCH_E* codes, strerror() text for errno codes. */
const char *watch_strerror(int code);

typedef struct watch_hub watch_hub_t;
typedef struct watch_stream watch_stream_t;

/* etcd's default response limit: --max-request-bytes (1.5 MiB) plus the
 * 512 KiB gRPC overhead etcd allows on top. */
#define WATCH_DEFAULT_MAX_RESPONSE (1536u * 1024u + 512u * 1024u)
/* Default per-stream queue budget. */
#define WATCH_DEFAULT_STREAM_BUDGET (4u * 1024u * 1024u)

struct watch_hub_options {
    /* Responses are kept at or below this encoded size where possible (0:
     * WATCH_DEFAULT_MAX_RESPONSE); pass etcd's max-request-bytes + 512 KiB.
     * Larger revisions go whole, or in fragments for `fragment` watchers. */
    size_t max_response_bytes;
    /* Queue budget of streams opened with budget 0 (0: the default above). */
    size_t stream_budget;
    /* Called when watchers need watch_hub_sync_step (see threading above).
     * May be NULL if the server polls. */
    void (*sync_wanted)(void *arg);
    void *sync_arg;
};

/* Creates the hub over an open store; its revision starts at the store's
 * current revision. opt may be NULL. Returns 0, -ENOMEM or an mvcc error. */
int watch_hub_create(mvcc_t *db, const struct watch_hub_options *opt, log_t *lg, watch_hub_t **out);

/* Frees the hub. Every stream must be closed first. NULL is a no-op. */
void watch_hub_destroy(watch_hub_t *hub);

/* Delivers a committed batch: `evs` are the events of every request of the
 * batch in order (so in revision order, as mvcc_result lists them), `revision`
 * the store's revision after the batch. Events at or below the hub's revision
 * are ignored (a re-published batch is harmless). Copies what it keeps: the
 * caller may free the results right after. Never blocks on a client and never
 * fails: a watcher whose stream is over budget, or whose events cannot be
 * allocated, falls back to history. Apply thread, after the commit. */
void watch_hub_publish(watch_hub_t *hub, const struct mvcc_event *evs, size_t n, int64_t revision);

/* After the store was replaced by a raft snapshot whose revision is
 * `revision`: every watcher re-reads from history from where it stood (as
 * etcd's Restore). Apply thread, before any further publish. */
void watch_hub_restore(watch_hub_t *hub, int64_t revision);

/* Catches unsynced watchers up from mvcc history: reads about `budget`
 * history records (0: 4096) on one read snapshot, queues what it found
 * (whole revisions, within each stream's budget), sends compacted responses,
 * and moves watchers that reached the hub's revision back to live delivery.
 * Steps run one at a time (concurrent calls wait). Returns 1 if more work is
 * ready now (call again), 0 if none (the sync_wanted callback announces new
 * work), or a negative error (-EAGAIN: no free reader slot; -ENOMEM; mvcc
 * errors) after which every watcher is as before. Any thread but the apply
 * thread (it reads LMDB for up to `budget` records). */
int watch_hub_sync_step(watch_hub_t *hub, size_t budget);

/* The revision of the last published batch. Any thread. */
int64_t watch_hub_revision(watch_hub_t *hub);

struct watch_hub_stats {
    size_t streams;
    size_t synced;   /* watchers on live delivery */
    size_t unsynced; /* watchers catching up from history */
    size_t queued_bytes;
};

void watch_hub_stats(watch_hub_t *hub, struct watch_hub_stats *out);

/* ---- Streams ----------------------------------------------------------- */

/* Opens a stream. budget_bytes bounds the encoded size of its queued event
 * responses (0: the hub's default); past it, live events stop and the
 * watchers catch up from history later. Control responses (created,
 * canceled, compacted, progress) always queue. `ready` (may be NULL) is called
 * whenever the queue goes from empty to non-empty. Returns 0 or -ENOMEM. */
int watch_stream_open(watch_hub_t *hub, size_t budget_bytes, void (*ready)(void *arg), void *arg,
                      watch_stream_t **out);

/* Cancels every watcher, drops the queue and frees the stream. No callback of
 * it runs after this returns. NULL is a no-op. */
void watch_stream_close(watch_stream_t *st);

#define WATCH_FILTER_NOPUT 0x1u    /* etcd's WatchCreateRequest.NOPUT */
#define WATCH_FILTER_NODELETE 0x2u /* etcd's WatchCreateRequest.NODELETE */

/* etcd's WatchCreateRequest. range_end as in mvcc_range_req: empty for the
 * single key, "\0" for every key >= key, else [key, range_end); an empty key
 * means "\0" (the smallest key), as in etcd. start_revision 0 watches from the
 * hub's revision + 1. watch_id 0 allocates the smallest id >= the stream's
 * counter that is free (0, 1, 2, ... as etcd 3.4); any other id is used as
 * given unless taken. */
struct watch_create_req {
    const uint8_t *key;
    size_t key_len;
    const uint8_t *range_end;
    size_t range_end_len;
    int64_t start_revision;
    int64_t watch_id;
    unsigned filters; /* WATCH_FILTER_* */
    bool prev_kv;
    bool progress_notify;
    bool fragment;
};

/* Creates a watcher and queues its created response (header revision: the
 * hub's revision). Returns 0 with *id set; WATCH_EDUPID or WATCH_EEMPTYRANGE
 * after queueing etcd's rejection (created + canceled, watch_id -1); -ENOMEM
 * with nothing queued. Authorisation is the caller's, before this call. */
int watch_stream_create(watch_stream_t *st, const struct watch_create_req *req, int64_t *id);

/* Queues a create rejection decided by the caller (auth: etcd's
 * "etcdserver: permission denied", ...): created + canceled, watch_id -1,
 * `reason` (a static string) as cancel_reason, in order with the stream's
 * other responses. Returns 0 or -ENOMEM. */
int watch_stream_reject(watch_stream_t *st, const char *reason);

/* Cancels a watcher: no event of it is queued after its canceled response
 * (those queued before stay, in order). Returns 0; -ENOENT for an unknown id
 * (etcd sends nothing then); -ENOMEM with nothing changed. */
int watch_stream_cancel(watch_stream_t *st, int64_t id);

/* A client's progress request (stream-wide). quoin queues a progress
 * notification (watch_id -1, no events, header revision = the hub's revision)
 * once every watcher of the stream is on live delivery, which is the moment
 * that revision cannot be ahead of an undelivered event: at once if they all
 * are, else when the last one catches up or goes away. Requests made while
 * one is pending, or while an answer is queued and not yet popped, are
 * answered by that one (so a client asking without reading cannot grow the
 * queue). Returns 0 or -ENOMEM. */
int watch_stream_request_progress(watch_stream_t *st);

/* etcd's periodic progress (call on the progress-notify interval): every
 * watcher created with progress_notify that is on live delivery and got no
 * events since the last tick gets a progress notification with its watch id
 * and the hub's revision. Watchers catching up are skipped, as in etcd, and
 * so is a stream whose queue is over its budget (its client is not reading). */
void watch_stream_progress_tick(watch_stream_t *st);

/* One response, etcd's WatchResponse without its header's cluster fields
 * (the transport fills cluster_id, member_id and raft_term). */
struct watch_response {
    int64_t watch_id;
    int64_t revision; /* header revision */
    bool created;
    bool canceled;
    bool fragment;
    int64_t compact_revision;
    const char *cancel_reason; /* NULL, or etcd's text (static) */
    /* Encode each event's prev_kv (when it has one): the watcher asked for
     * prev_kv. Events are shared between watchers and must not be changed. */
    bool prev_kv;
    size_t n_events;
    const struct mvcc_event *const *events;
};

/* Takes the oldest queued response: 0 with *out set (free it with
 * watch_response_free), or -EAGAIN when the queue is empty. Pair each
 * `ready` callback with popping until -EAGAIN. Any thread, but one at a time
 * per stream. */
int watch_stream_pop(watch_stream_t *st, struct watch_response **out);

/* Bytes currently queued on the stream (etcd-encoded size estimate). */
size_t watch_stream_queued_bytes(watch_stream_t *st);

/* Frees a popped response. NULL is a no-op. Any thread. */
void watch_response_free(struct watch_response *r);

/* Upper bound of the protobuf size of a WatchResponse as etcd encodes it
 * (header fields the transport adds counted at their maximum): what the
 * budgets and the fragment limit measure. */
size_t watch_response_size(const struct watch_response *r);

#ifdef QUOIN_TESTING
/* Test builds only: makes about one in `one_in` allocations of live delivery
 * and catch-up fail (0 stops), to show that a shortage never loses, repeats
 * or reorders an event. */
void watch_hub_inject_faults(watch_hub_t *hub, unsigned one_in, uint64_t seed);
#endif

#endif
