/* The watch test model: a random workload (writes, watchers, cancels,
 * compactions) over a real store and hub, the list of every event in
 * revision order, and the checker every popped response goes through (see
 * test_watch_prop.c for the properties). With `lock` set, the model may be
 * driven from one thread while others pop and check responses. */
#ifndef QUOIN_TESTS_WATCH_MODEL_H
#define QUOIN_TESTS_WATCH_MODEL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "wt.h"

#define MODEL_STREAMS 4
#define MODEL_WATCHERS 256
#define MODEL_COMPACTIONS 64

/* One model event, copied out of the mvcc result. */
struct mev {
    enum mvcc_event_type type;
    char key[8];
    size_t key_len;
    char *value;
    size_t value_len;
    int64_t create, mod, version, lease;
    bool has_prev;
    char *prev_value;
    size_t prev_len;
    int64_t prev_mod;
};

enum wstate { W_ACTIVE, W_CANCELING, W_DONE };

struct mw {
    int stream;
    int64_t id;
    const char *key, *end; /* end: NULL single key, "" from key */
    int64_t start;
    unsigned filters;
    bool prev_kv, fragment;
    bool start_compacted; /* start <= compaction when created */
    enum wstate state;
    bool created_seen;
    size_t pos;    /* model index after the last event received */
    bool mid_frag; /* inside a fragmented response */
    int64_t frag_rev;
};

struct model {
    uint64_t rng;
    pthread_mutex_t *lock; /* NULL: one thread */
    struct wt t;
    int n_streams;
    watch_stream_t *st[MODEL_STREAMS];
    size_t ctrl[MODEL_STREAMS]; /* control responses a stream may hold at most */
    struct mev *log;
    size_t n_log, cap_log;
    struct mw w[MODEL_WATCHERS];
    size_t n_w;
    int64_t compactions[MODEL_COMPACTIONS];
    size_t n_comp;
    int64_t next_client_id;
    bool sweeping;
    /* statistics for the summary line */
    size_t events_checked, compacted, progress_checked, fragments;
};

/* Totals over runs, for the summary line. */
struct totals {
    size_t events, compacted, progress, fragments, watchers, complete, revisions;
};

/* Opens the store and hub (opt may be NULL); streams are the caller's. */
void model_init(struct model *m, uint64_t seed, const struct watch_hub_options *opt);
/* Adds the run's figures to tot and frees everything but the streams,
 * which must be closed already. */
void model_finish(struct model *m, struct totals *tot);
int model_rn(struct model *m, int n);

/* Workload steps (on the one driving thread). */
void model_random_write(struct model *m);
void model_create_watcher(struct model *m);
void model_cancel_watcher(struct model *m);
void model_random_compaction(struct model *m);
void model_sweep_some(struct model *m);

/* Checks one popped response of stream k. */
void model_on_response(struct model *m, int k, const struct watch_response *r);
/* After quiescence: every watcher is done or has received its whole list. */
void model_check_end(struct model *m, struct totals *tot);
void model_print_totals(const struct totals *tot, long runs, long ops);

#endif
