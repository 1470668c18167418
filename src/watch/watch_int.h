/* watch internals shared by the files of src/watch: the hub, stream and
 * watcher structures, shared events, response lists and the interval index. */
#ifndef QUOIN_WATCH_INT_H
#define QUOIN_WATCH_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "watch/watch.h"

/* One event copied out of mvcc, shared by every response that carries it;
 * freed when the last reference goes (possibly on the transport's thread). */
struct wev {
    atomic_uint refs;
    uint32_t size;      /* encoded mvccpb.Event without prev_kv */
    uint32_t size_prev; /* ... with prev_kv (== size when it has none) */
    struct mvcc_event ev;
    uint8_t data[];
};

/* A queued response. `pub.events` points into `evp`. */
struct wresp {
    struct watch_response pub;
    struct wresp *next;
    size_t bytes;
    const struct mvcc_event *evp[];
};

/* A list of built responses, spliced into a queue in one step. */
struct rlist {
    struct wresp *head, *tail;
    size_t bytes;
};

struct watcher {
    int64_t id;
    watch_stream_t *st; /* NULL once the stream is gone (dead watcher) */
    uint8_t *key, *end; /* [key, end); end == NULL: no upper bound */
    size_t key_len, end_len;
    /* Next revision to deliver. Synced: live delivery takes events >= it
     * (the effective value is max(next_rev, hub revision + 1)). Unsynced:
     * history is read from it. */
    int64_t next_rev;
    unsigned filters;
    bool prev_kv, progress_notify, fragment;
    bool synced;
    bool in_step; /* held by a running sync step (which frees it if dead) */
    bool dead;    /* canceled while in a step */
    bool sent_since_tick;
    /* interval index node (the hub's synced index, or a step's own) */
    struct watcher *left, *right, *maxw;
    uint32_t prio;
    /* unsynced list */
    struct watcher *uprev, *unext;
    /* publish scratch: events matched in this batch */
    struct wev **pend;
    size_t npend, pcap;
    int64_t fail_rev; /* 0, or first revision that could not be kept */
    struct watcher *touched_next;
    bool touched;
    size_t step_idx;
};

struct watch_stream {
    watch_hub_t *hub;
    void (*ready)(void *arg);
    void *ready_arg;
    pthread_mutex_t mu; /* guards the queue fields below */
    struct wresp *head, *tail;
    size_t bytes, budget;
    bool blocked;         /* a catch-up waits for room: pop wakes sync at half budget */
    bool progress_queued; /* a stream-wide progress answer is not popped yet */
    /* guarded by the hub's mutex */
    struct watcher **ids; /* sorted by id */
    size_t n_ids, cap_ids;
    int64_t next_id;
    size_t n_unsynced;
    bool progress_pending;
    struct watch_stream *prev, *next;
    uint64_t step_epoch;
    size_t step_room;
};

struct watch_hub {
    mvcc_t *db;
    log_t *lg;
    struct watch_hub_options opt;
    pthread_mutex_t mu;
    pthread_mutex_t step_mu; /* one sync step at a time */
    int64_t rev;
    struct watcher *synced; /* interval index root */
    size_t n_synced, n_unsynced;
    struct watcher *uhead, *utail;
    struct watch_stream *streams;
    size_t n_streams;
    uint64_t rng;
    uint64_t step_epoch;
#ifdef QUOIN_TESTING
    atomic_uint fault_one_in;
    atomic_uint_fast64_t fault_seed;
    atomic_uint_fast64_t fault_n; /* draws so far */
#endif
};

/* Whether an allocation on the delivery paths should fail (fault injection
 * of test builds; any thread). */
#ifdef QUOIN_TESTING
bool hub_fault(watch_hub_t *hub);
#define HUB_FAULT(hub) hub_fault(hub)
#else
#define HUB_FAULT(hub) false
#endif

/* ---- events and responses (resp.c) ---- */

/* Copies an mvcc event into a shared event with one reference; NULL on
 * allocation failure. */
struct wev *wev_new(const struct mvcc_event *ev);
void wev_ref(struct wev *e);
void wev_unref(struct wev *e);
/* Encoded size of the event in a response for a watcher (with or without
 * prev_kv), including its field tag and length. */
size_t wev_wire_size(const struct wev *e, bool prev_kv);

/* Builds a control response (no events). NULL on allocation failure. */
struct wresp *resp_control(int64_t watch_id, int64_t revision);
/* Appends responses carrying the events `evs` (whole revisions, in order)
 * for watcher w: packed up to the hub's size limit at revision boundaries,
 * a larger revision whole or, for a fragment watcher, in fragments. The last
 * response's header revision is `revision`; an earlier one's is the revision
 * before the next response's first event. Takes a reference of each event.
 * Returns 0 or -ENOMEM (list unchanged). */
int resp_build_events(struct rlist *l, const struct watcher *w, struct wev *const *evs, size_t n,
                      int64_t revision, size_t limit);
void rlist_append(struct rlist *l, struct wresp *r);
void rlist_free(struct rlist *l);
void wresp_free(struct wresp *r);

/* ---- streams (stream.c) ---- */

/* Moves the list onto the stream's queue unless `force` is false and the
 * queue is non-empty and would pass its budget (then returns -ENOBUFS and
 * leaves the list, marking the stream blocked). Calls `ready` if the queue
 * was empty. Hub mutex held. */
int stream_push(watch_stream_t *st, struct rlist *l, bool force);
/* Bytes queued (takes the stream mutex). */
size_t stream_bytes(watch_stream_t *st);
/* Queues the stream-wide progress answer if one is pending and every
 * watcher is synced. Hub mutex held. */
int stream_answer_progress(watch_stream_t *st);
/* Room a catch-up may fill: what is left of the budget when the queue is
 * empty or at most half full, else 0 and the stream is marked blocked. */
size_t stream_room(watch_stream_t *st);

/* ---- watchers (hub.c) ---- */

/* Appends w to the unsynced list, to read history from `from` (hub mutex
 * held; w in no index). */
void hub_list_unsynced(watch_hub_t *hub, struct watcher *w, int64_t from);
/* Moves a synced watcher to the unsynced list, reading from `from`. Hub
 * mutex held; w must not be in the index any more. */
void hub_unsync(watch_hub_t *hub, struct watcher *w, int64_t from);
/* Takes an unsynced watcher off the list (hub mutex held). */
void hub_unlist(watch_hub_t *hub, struct watcher *w);
/* Removes a watcher from its stream's id table (hub mutex held). */
void hub_forget_id(struct watcher *w);
void watcher_free(struct watcher *w);
bool watcher_wants(const struct watcher *w, const struct mvcc_event *ev);
void hub_wake_sync(watch_hub_t *hub);

/* ---- interval index (index.c) ---- */

/* Byte-string order (memcmp, then the shorter first). */
int index_bytes_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);
uint32_t index_prio(watch_hub_t *hub);
/* Inserts / removes w in the treap rooted at *root (ordered by key, then
 * address; each node knows the largest end below it). */
void index_insert(struct watcher **root, struct watcher *w);
void index_remove(struct watcher **root, struct watcher *w);
/* Calls fn for every watcher of the index whose range holds the key. */
void index_stab(struct watcher *root, const uint8_t *key, size_t len,
                void (*fn)(struct watcher *w, void *arg), void *arg);
/* Calls fn for every watcher (fn may not change the index). */
void index_walk(struct watcher *root, void (*fn)(struct watcher *w, void *arg), void *arg);

#endif
