/* watch streams: one client Watch stream — its watchers by id, the requests
 * that create and cancel them or ask for progress, and the bounded queue of
 * responses the transport drains (etcd's serverWatchStream + watchStream). */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "watch/watch_int.h"

int watch_stream_open(watch_hub_t *hub, size_t budget_bytes, void (*ready)(void *arg), void *arg,
                      watch_stream_t **out) {
    *out = NULL;
    watch_stream_t *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return -ENOMEM;
    if (pthread_mutex_init(&st->mu, NULL) != 0) {
        free(st);
        return -ENOMEM;
    }
    st->hub = hub;
    st->ready = ready;
    st->ready_arg = arg;
    st->budget = budget_bytes ? budget_bytes : hub->opt.stream_budget;
    pthread_mutex_lock(&hub->mu);
    st->next = hub->streams;
    if (hub->streams != NULL)
        hub->streams->prev = st;
    hub->streams = st;
    hub->n_streams++;
    pthread_mutex_unlock(&hub->mu);
    *out = st;
    return 0;
}

/* Takes w out of the hub. A sync step holding it frees it later. */
static void detach(watch_hub_t *hub, struct watcher *w) {
    if (w->synced) {
        index_remove(&hub->synced, w);
        hub->n_synced--;
    } else {
        hub_unlist(hub, w);
    }
    w->st = NULL;
    if (w->in_step)
        w->dead = true;
    else
        watcher_free(w);
}

void watch_stream_close(watch_stream_t *st) {
    if (st == NULL)
        return;
    watch_hub_t *hub = st->hub;
    pthread_mutex_lock(&hub->mu);
    for (size_t i = 0; i < st->n_ids; i++)
        detach(hub, st->ids[i]);
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        hub->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    hub->n_streams--;
    pthread_mutex_unlock(&hub->mu);
    struct rlist q = {.head = st->head, .tail = st->tail};
    rlist_free(&q);
    free(st->ids);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

int stream_push(watch_stream_t *st, struct rlist *l, bool force) {
    if (l->head == NULL)
        return 0;
    pthread_mutex_lock(&st->mu);
    if (!force && st->head != NULL && st->bytes + l->bytes > st->budget) {
        st->blocked = true;
        pthread_mutex_unlock(&st->mu);
        return -ENOBUFS;
    }
    bool was_empty = st->head == NULL;
    if (st->tail != NULL)
        st->tail->next = l->head;
    else
        st->head = l->head;
    st->tail = l->tail;
    st->bytes += l->bytes;
    pthread_mutex_unlock(&st->mu);
    *l = (struct rlist){0};
    if (was_empty && st->ready != NULL)
        st->ready(st->ready_arg);
    return 0;
}

/* Pushes one control response (always accepted). */
static void push_one(watch_stream_t *st, struct wresp *r) {
    struct rlist l = {0};
    rlist_append(&l, r);
    stream_push(st, &l, true);
}

size_t stream_bytes(watch_stream_t *st) {
    pthread_mutex_lock(&st->mu);
    size_t n = st->bytes;
    pthread_mutex_unlock(&st->mu);
    return n;
}

size_t watch_stream_queued_bytes(watch_stream_t *st) {
    return stream_bytes(st);
}

size_t stream_room(watch_stream_t *st) {
    pthread_mutex_lock(&st->mu);
    size_t room = 0;
    if (st->head == NULL || st->bytes <= st->budget / 2)
        room = st->budget - st->bytes;
    else
        st->blocked = true;
    pthread_mutex_unlock(&st->mu);
    return room;
}

/* Whether r is a stream-wide progress notification. */
static bool is_stream_progress(const struct watch_response *r) {
    return r->watch_id == -1 && !r->created && !r->canceled;
}

int watch_stream_pop(watch_stream_t *st, struct watch_response **out) {
    pthread_mutex_lock(&st->mu);
    struct wresp *r = st->head;
    if (r == NULL) {
        pthread_mutex_unlock(&st->mu);
        return -EAGAIN;
    }
    st->head = r->next;
    if (st->head == NULL)
        st->tail = NULL;
    st->bytes -= r->bytes;
    if (is_stream_progress(&r->pub))
        st->progress_queued = false;
    bool wake = st->blocked && st->bytes <= st->budget / 2;
    if (wake)
        st->blocked = false;
    pthread_mutex_unlock(&st->mu);
    if (wake)
        hub_wake_sync(st->hub);
    r->next = NULL;
    *out = &r->pub;
    return 0;
}

int stream_answer_progress(watch_stream_t *st) {
    if (!st->progress_pending || st->n_unsynced > 0)
        return 0;
    /* An answer the client has not read yet answers this request too, so a
     * client that asks without reading cannot grow the queue. */
    pthread_mutex_lock(&st->mu);
    bool queued = st->progress_queued;
    pthread_mutex_unlock(&st->mu);
    if (!queued) {
        struct wresp *r = resp_control(-1, st->hub->rev);
        if (r == NULL)
            return -ENOMEM;
        push_one(st, r);
        pthread_mutex_lock(&st->mu);
        st->progress_queued = true;
        pthread_mutex_unlock(&st->mu);
    }
    st->progress_pending = false;
    return 0;
}

/* Index of the first id >= id in the sorted table. */
static size_t id_pos(const watch_stream_t *st, int64_t id) {
    size_t lo = 0, hi = st->n_ids;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (st->ids[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct watcher *id_find(const watch_stream_t *st, int64_t id) {
    size_t i = id_pos(st, id);
    return i < st->n_ids && st->ids[i]->id == id ? st->ids[i] : NULL;
}

void hub_forget_id(struct watcher *w) {
    watch_stream_t *st = w->st;
    size_t i = id_pos(st, w->id);
    assert(i < st->n_ids && st->ids[i] == w);
    memmove(&st->ids[i], &st->ids[i + 1], (st->n_ids - i - 1) * sizeof(st->ids[0]));
    st->n_ids--;
}

/* Queues etcd's answer to a rejected create. Hub mutex held. */
static int reject(watch_stream_t *st, const char *reason) {
    struct wresp *r = resp_control(-1, st->hub->rev);
    if (r == NULL)
        return -ENOMEM;
    r->pub.created = true;
    r->pub.canceled = true;
    r->pub.cancel_reason = reason;
    push_one(st, r);
    return 0;
}

int watch_stream_reject(watch_stream_t *st, const char *reason) {
    pthread_mutex_lock(&st->hub->mu);
    int rc = reject(st, reason);
    pthread_mutex_unlock(&st->hub->mu);
    return rc;
}

/* A new watcher for the request, or NULL (out of memory). */
static struct watcher *watcher_new(const struct watch_create_req *req, const uint8_t *key,
                                   size_t key_len, const uint8_t *end, size_t end_len,
                                   bool single) {
    struct watcher *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    size_t elen = single ? key_len + 1 : end_len;
    w->key = malloc(key_len + elen);
    if (w->key == NULL) {
        free(w);
        return NULL;
    }
    memcpy(w->key, key, key_len);
    w->key_len = key_len;
    if (single) {
        /* [key, key "\0") holds exactly the key. */
        w->end = w->key + key_len;
        memcpy(w->end, key, key_len);
        w->end[key_len] = 0;
        w->end_len = key_len + 1;
    } else if (end != NULL) {
        w->end = w->key + key_len;
        memcpy(w->end, end, end_len);
        w->end_len = end_len;
    }
    w->filters = req->filters;
    w->prev_kv = req->prev_kv;
    w->progress_notify = req->progress_notify;
    w->fragment = req->fragment;
    return w;
}

int watch_stream_create(watch_stream_t *st, const struct watch_create_req *req, int64_t *id) {
    static const uint8_t smallest = 0;
    watch_hub_t *hub = st->hub;
    const uint8_t *key = req->key_len ? req->key : &smallest;
    size_t key_len = req->key_len ? req->key_len : 1;
    bool single = req->range_end_len == 0;
    bool from_key = req->range_end_len == 1 && req->range_end[0] == 0;
    const uint8_t *end = single || from_key ? NULL : req->range_end;
    int rc = 0;
    *id = -1;
    pthread_mutex_lock(&hub->mu);
    if (end != NULL && index_bytes_cmp(key, key_len, end, req->range_end_len) >= 0) {
        rc = reject(st, watch_strerror(WATCH_EEMPTYRANGE));
        rc = rc ? rc : WATCH_EEMPTYRANGE;
        goto out;
    }
    int64_t wid = req->watch_id;
    if (wid != 0 && id_find(st, wid) != NULL) {
        rc = reject(st, watch_strerror(WATCH_EDUPID));
        rc = rc ? rc : WATCH_EDUPID;
        goto out;
    }
    if (wid == 0) {
        int64_t next = st->next_id;
        while (id_find(st, next) != NULL)
            next++;
        wid = next;
    }
    struct watcher *w = watcher_new(req, key, key_len, end, req->range_end_len, single);
    struct wresp *r = resp_control(wid, hub->rev);
    if (w == NULL || r == NULL) {
        rc = -ENOMEM;
        goto err;
    }
    if (st->n_ids == st->cap_ids) {
        size_t cap = st->cap_ids ? 2 * st->cap_ids : 8;
        struct watcher **ids = realloc(st->ids, cap * sizeof(*ids));
        if (ids == NULL) {
            rc = -ENOMEM;
            goto err;
        }
        st->ids = ids;
        st->cap_ids = cap;
    }
    if (req->watch_id == 0)
        st->next_id = wid + 1;
    w->id = wid;
    w->st = st;
    w->prio = index_prio(hub);
    size_t pos = id_pos(st, wid);
    memmove(&st->ids[pos + 1], &st->ids[pos], (st->n_ids - pos) * sizeof(st->ids[0]));
    st->ids[pos] = w;
    st->n_ids++;
    r->pub.created = true;
    push_one(st, r);
    int64_t start = req->start_revision;
    if (start == 0 || start > hub->rev) {
        w->synced = true;
        w->next_rev = start > hub->rev ? start : hub->rev + 1;
        index_insert(&hub->synced, w);
        hub->n_synced++;
    } else {
        hub_list_unsynced(hub, w, start > 0 ? start : 1);
        hub_wake_sync(hub);
    }
    *id = wid;
    goto out;
err:
    watcher_free(w);
    wresp_free(r);
out:
    pthread_mutex_unlock(&hub->mu);
    return rc;
}

int watch_stream_cancel(watch_stream_t *st, int64_t id) {
    watch_hub_t *hub = st->hub;
    int rc = 0;
    pthread_mutex_lock(&hub->mu);
    struct watcher *w = id_find(st, id);
    struct wresp *r = w != NULL ? resp_control(id, hub->rev) : NULL;
    if (w == NULL || r == NULL) {
        rc = w == NULL ? -ENOENT : -ENOMEM;
        goto out;
    }
    hub_forget_id(w);
    detach(hub, w);
    r->pub.canceled = true;
    push_one(st, r);
    stream_answer_progress(st);
out:
    pthread_mutex_unlock(&hub->mu);
    return rc;
}

int watch_stream_request_progress(watch_stream_t *st) {
    pthread_mutex_lock(&st->hub->mu);
    st->progress_pending = true;
    int rc = stream_answer_progress(st);
    pthread_mutex_unlock(&st->hub->mu);
    return rc;
}

void watch_stream_progress_tick(watch_stream_t *st) {
    watch_hub_t *hub = st->hub;
    /* A client that is not reading gets none (etcd: its channel is full). */
    if (stream_bytes(st) > st->budget)
        return;
    pthread_mutex_lock(&hub->mu);
    for (size_t i = 0; i < st->n_ids; i++) {
        struct watcher *w = st->ids[i];
        if (!w->progress_notify)
            continue;
        if (w->sent_since_tick) {
            /* etcd elides the notification after events. */
            w->sent_since_tick = false;
            continue;
        }
        if (!w->synced)
            continue;
        struct wresp *r = resp_control(w->id, hub->rev);
        if (r != NULL)
            push_one(st, r);
    }
    pthread_mutex_unlock(&hub->mu);
}
