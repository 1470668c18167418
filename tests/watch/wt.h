/* Shared helpers of the watch tests: a real mvcc store in a temporary
 * directory with a hub over it, writes applied in mvcc batches and published
 * as the apply thread will, and response checks. */
#ifndef QUOIN_TESTS_WATCH_WT_H
#define QUOIN_TESTS_WATCH_WT_H

#include <stdbool.h>
#include <stdint.h>

#include "mvcc/mvcc.h"
#include "watch/watch.h"

struct wt {
    char dir[64];
    char path[96];
    mvcc_t *db;
    watch_hub_t *hub;
    int sync_wakeups; /* sync_wanted calls */
};

/* Opens a store and a hub (opt may be NULL; without a sync_wanted callback,
 * sync_wakeups counts the calls). Fails the test on error. */
void wt_open(struct wt *t, const struct watch_hub_options *opt);
/* Destroys the hub, closes the store and removes its files. */
void wt_close(struct wt *t);

/* Applies the ops in one mvcc batch (each must succeed), commits, then
 * publishes every event; `seen` (may be NULL) gets each event before the
 * commit.
 * Returns the revision after the batch. */
int64_t wt_apply(struct wt *t, const struct mvcc_op *ops, size_t n,
                 void (*seen)(const struct mvcc_event *ev, void *arg), void *arg);
/* Applies the ops in one batch without publishing (what a raft snapshot
 * brings), scheduling a compaction at compact_at if not 0. Returns the
 * revision after the batch. */
int64_t wt_apply_unpublished(struct wt *t, const struct mvcc_op *ops, size_t n, int64_t compact_at);
/* One put / delete of NUL-terminated strings in its own batch; end NULL
 * deletes the key, WT_FROM_KEY every key >= key. Returns the revision. */
int64_t wt_put(struct wt *t, const char *key, const char *value);
int64_t wt_del(struct wt *t, const char *key, const char *end);
extern const char WT_FROM_KEY[];
/* Schedules a compaction at rev; with sweep, removes the history at once. */
void wt_compact(struct wt *t, int64_t rev, bool sweep);
/* Runs sync steps until none has work left. */
void wt_sync(struct wt *t);

struct mvcc_op wt_op_put(const char *key, const char *value);
struct mvcc_op wt_op_del(const char *key, const char *end);

/* Opens a stream without callbacks (budget 0: the hub's default). */
watch_stream_t *wt_stream(struct wt *t, size_t budget);
/* Closes the stream, then the hub and store. */
void wt_finish(struct wt *t, watch_stream_t *st);

/* Creates a watcher; returns its id (asserts success). */
int64_t wt_watch(watch_stream_t *st, const char *key, const char *end, int64_t start);
/* wt_watch, then pops and checks its created response. */
int64_t wt_watch_created(watch_stream_t *st, const char *key, const char *end, int64_t start);
/* Pops a response (asserts there is one); free it with watch_response_free. */
struct watch_response *wt_pop(watch_stream_t *st);
void wt_assert_empty(watch_stream_t *st);
/* Pops a response and checks it is the created response of id. */
void wt_expect_created(watch_stream_t *st, int64_t id);
/* Whether ev is a put of key=value / a delete of key, at revision rev. */
bool wt_is_put(const struct mvcc_event *ev, const char *key, const char *value, int64_t rev);
bool wt_is_del(const struct mvcc_event *ev, const char *key, int64_t rev);

/* An integer from the environment, or def. */
long wt_env_long(const char *name, long def);

#endif
