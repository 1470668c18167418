/* watch hub: the server-wide registry of watchers, and live delivery of
 * committed events to synced watchers (etcd's watchableStore.notify).
 *
 * A watcher is either synced (in the interval index; publish hands it every
 * matching event) or unsynced (on a list; watch_hub_sync_step reads its
 * events from mvcc history). docs/watch.md argues why the hand-over between
 * the two loses and repeats nothing. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "watch/watch_int.h"

const char *watch_strerror(int code) {
    switch (code) {
    case WATCH_EDUPID:
        return "mvcc: duplicate watch ID provided on the WatchStream";
    case WATCH_EEMPTYRANGE:
        return "mvcc: watcher range is empty";
    default:
        return mvcc_strerror(code);
    }
}

int watch_hub_create(mvcc_t *db, const struct watch_hub_options *opt, log_t *lg,
                     watch_hub_t **out) {
    *out = NULL;
    uint64_t idx, term;
    int64_t rev, crev;
    int rc = mvcc_state(db, &idx, &term, &rev, &crev);
    if (rc != 0)
        return rc;
    watch_hub_t *hub = calloc(1, sizeof(*hub));
    if (hub == NULL)
        return -ENOMEM;
    if (opt != NULL)
        hub->opt = *opt;
    if (hub->opt.max_response_bytes == 0)
        hub->opt.max_response_bytes = WATCH_DEFAULT_MAX_RESPONSE;
    if (hub->opt.stream_budget == 0)
        hub->opt.stream_budget = WATCH_DEFAULT_STREAM_BUDGET;
    hub->db = db;
    hub->lg = lg;
    hub->rev = rev;
    hub->rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)hub;
    if (pthread_mutex_init(&hub->mu, NULL) != 0)
        goto err;
    if (pthread_mutex_init(&hub->step_mu, NULL) != 0) {
        pthread_mutex_destroy(&hub->mu);
        goto err;
    }
    *out = hub;
    return 0;
err:
    free(hub);
    return -ENOMEM;
}

void watch_hub_destroy(watch_hub_t *hub) {
    if (hub == NULL)
        return;
    assert(hub->streams == NULL && hub->n_synced == 0 && hub->n_unsynced == 0);
    pthread_mutex_destroy(&hub->step_mu);
    pthread_mutex_destroy(&hub->mu);
    free(hub);
}

void hub_wake_sync(watch_hub_t *hub) {
    if (hub->opt.sync_wanted != NULL)
        hub->opt.sync_wanted(hub->opt.sync_arg);
}

bool watcher_wants(const struct watcher *w, const struct mvcc_event *ev) {
    if (ev->type == MVCC_EVENT_PUT)
        return !(w->filters & WATCH_FILTER_NOPUT);
    return !(w->filters & WATCH_FILTER_NODELETE);
}

void watcher_free(struct watcher *w) {
    if (w == NULL)
        return;
    for (size_t i = 0; i < w->npend; i++)
        wev_unref(w->pend[i]);
    free(w->pend);
    free(w->key);
    free(w);
}

/* Appends w to the unsynced list, to read from `from`. */
void hub_list_unsynced(watch_hub_t *hub, struct watcher *w, int64_t from) {
    w->synced = false;
    w->next_rev = from;
    w->unext = NULL;
    w->uprev = hub->utail;
    if (hub->utail != NULL)
        hub->utail->unext = w;
    else
        hub->uhead = w;
    hub->utail = w;
    hub->n_unsynced++;
    if (w->st != NULL)
        w->st->n_unsynced++;
}

void hub_unsync(watch_hub_t *hub, struct watcher *w, int64_t from) {
    assert(w->synced);
    index_remove(&hub->synced, w);
    hub->n_synced--;
    hub_list_unsynced(hub, w, from);
}

void hub_unlist(watch_hub_t *hub, struct watcher *w) {
    assert(!w->synced);
    if (w->uprev != NULL)
        w->uprev->unext = w->unext;
    else
        hub->uhead = w->unext;
    if (w->unext != NULL)
        w->unext->uprev = w->uprev;
    else
        hub->utail = w->uprev;
    w->uprev = w->unext = NULL;
    hub->n_unsynced--;
    if (w->st != NULL)
        w->st->n_unsynced--;
}

#ifdef QUOIN_TESTING
void watch_hub_inject_faults(watch_hub_t *hub, unsigned one_in, uint64_t seed) {
    atomic_store(&hub->fault_seed, seed);
    atomic_store(&hub->fault_one_in, one_in);
}

bool hub_fault(watch_hub_t *hub) {
    unsigned one_in = atomic_load(&hub->fault_one_in);
    if (one_in == 0)
        return false;
    /* splitmix64 of the draw number: reproducible for a seed. */
    uint64_t x = atomic_load(&hub->fault_seed) +
                 0x9e3779b97f4a7c15ull * (atomic_fetch_add(&hub->fault_n, 1) + 1);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return (x ^ (x >> 31)) % one_in == 0;
}
#endif

/* ---- publish ---- */

struct pub {
    watch_hub_t *hub;
    const struct mvcc_event *ev;
    struct wev *copy; /* made on the first match, shared by all */
    bool copy_failed;
    struct watcher *touched;
};

static int pend_grow(struct watcher *w) {
    size_t cap = w->pcap ? 2 * w->pcap : 8;
    struct wev **p = realloc(w->pend, cap * sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    w->pend = p;
    w->pcap = cap;
    return 0;
}

static void pub_match(struct watcher *w, void *arg) {
    struct pub *p = arg;
    int64_t rev = p->ev->kv.mod_revision;
    if (rev < w->next_rev || w->fail_rev != 0 || !watcher_wants(w, p->ev))
        return;
    if (!w->touched) {
        w->touched = true;
        w->touched_next = p->touched;
        p->touched = w;
    }
    if (p->copy == NULL && !p->copy_failed) {
        p->copy = HUB_FAULT(p->hub) ? NULL : wev_new(p->ev);
        p->copy_failed = p->copy == NULL;
    }
    if (p->copy == NULL || (w->npend == w->pcap && (HUB_FAULT(p->hub) || pend_grow(w) != 0))) {
        /* Out of memory: this revision and the rest come from history. */
        w->fail_rev = rev;
        return;
    }
    wev_ref(p->copy);
    w->pend[w->npend++] = p->copy;
}

/* Queues what w matched in the batch, or moves it to history at the first
 * revision it could not keep. Returns whether it went unsynced. */
static bool pub_deliver(watch_hub_t *hub, struct watcher *w, int64_t revision) {
    int64_t fail = w->fail_rev;
    /* Events of the failed revision itself stay out: it is re-read whole. */
    size_t keep = w->npend;
    while (fail != 0 && keep > 0 && w->pend[keep - 1]->ev.kv.mod_revision >= fail)
        keep--;
    if (keep > 0) {
        struct rlist l = {0};
        int rc = HUB_FAULT(hub)
                     ? -ENOMEM
                     : resp_build_events(&l, w, w->pend, keep, fail ? fail - 1 : revision,
                                         hub->opt.max_response_bytes);
        if (rc == 0)
            rc = stream_push(w->st, &l, false);
        if (rc == 0) {
            w->sent_since_tick = true;
        } else {
            rlist_free(&l);
            fail = w->pend[0]->ev.kv.mod_revision;
        }
    }
    if (w->npend > 0) {
        for (size_t i = 0; i < w->npend; i++)
            wev_unref(w->pend[i]);
        w->npend = 0;
        if (w->pcap > 1024) {
            free(w->pend);
            w->pend = NULL;
            w->pcap = 0;
        }
    }
    w->fail_rev = 0;
    w->touched = false;
    if (fail == 0)
        return false;
    LOG_DEBUG(hub->lg, "watcher falls back to history", LOG_INT("watch-id", w->id),
              LOG_INT("from-revision", fail));
    hub_unsync(hub, w, fail);
    return true;
}

void watch_hub_publish(watch_hub_t *hub, const struct mvcc_event *evs, size_t n, int64_t revision) {
    pthread_mutex_lock(&hub->mu);
    if (revision <= hub->rev) {
        pthread_mutex_unlock(&hub->mu);
        return;
    }
    int64_t old = hub->rev;
    struct pub p = {.hub = hub};
    for (size_t i = 0; i < n; i++) {
        const struct mvcc_event *ev = &evs[i];
        assert(ev->kv.mod_revision <= revision);
        assert(i == 0 || ev->kv.mod_revision >= evs[i - 1].kv.mod_revision);
        if (ev->kv.mod_revision <= old)
            continue;
        p.ev = ev;
        p.copy = NULL;
        p.copy_failed = false;
        index_stab(hub->synced, ev->kv.key, ev->kv.key_len, pub_match, &p);
        wev_unref(p.copy);
    }
    hub->rev = revision;
    bool wake = false;
    while (p.touched != NULL) {
        struct watcher *w = p.touched;
        p.touched = w->touched_next;
        wake |= pub_deliver(hub, w, revision);
    }
    if (wake)
        hub_wake_sync(hub);
    pthread_mutex_unlock(&hub->mu);
}

struct restore {
    watch_hub_t *hub;
    int64_t floor;
};

static void restore_one(struct watcher *w, void *arg) {
    struct restore *r = arg;
    hub_list_unsynced(r->hub, w, w->next_rev > r->floor ? w->next_rev : r->floor);
}

void watch_hub_restore(watch_hub_t *hub, int64_t revision) {
    pthread_mutex_lock(&hub->mu);
    struct restore r = {.hub = hub, .floor = hub->rev + 1};
    index_walk(hub->synced, restore_one, &r);
    hub->synced = NULL;
    hub->n_synced = 0;
    hub->rev = revision;
    if (hub->n_unsynced > 0)
        hub_wake_sync(hub);
    pthread_mutex_unlock(&hub->mu);
}

int64_t watch_hub_revision(watch_hub_t *hub) {
    pthread_mutex_lock(&hub->mu);
    int64_t rev = hub->rev;
    pthread_mutex_unlock(&hub->mu);
    return rev;
}

void watch_hub_stats(watch_hub_t *hub, struct watch_hub_stats *out) {
    pthread_mutex_lock(&hub->mu);
    out->streams = hub->n_streams;
    out->synced = hub->n_synced;
    out->unsynced = hub->n_unsynced;
    out->queued_bytes = 0;
    for (watch_stream_t *st = hub->streams; st != NULL; st = st->next)
        out->queued_bytes += stream_bytes(st);
    pthread_mutex_unlock(&hub->mu);
}
