/* watch catch-up: unsynced watchers read their events from mvcc history
 * (etcd's syncWatchers), a group at a time over one scan of the revision
 * log, and go back to live delivery once they reach the hub's revision.
 *
 * A step has three phases: choose watchers under the hub's mutex; read
 * history on a read snapshot with no lock held (publish goes on meanwhile,
 * skipping these watchers); hand over under the mutex again. A watcher's
 * next_rev is written only by the step while it holds the watcher, so the
 * scan needs no lock; cancel and stream close mark held watchers dead and
 * the step frees them. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "watch/watch_int.h"

#define STEP_MAX_WATCHERS 512
#define STEP_PAGE 256
#define STEP_DEFAULT_BUDGET 4096

/* One watcher in a step. */
struct entry {
    struct watcher *w;
    size_t room; /* index in step.rooms */
    int64_t from;
    int64_t stop; /* revision it stopped at for want of room, or 0 */
    bool compacted, scanning, touched;
    bool skipped;     /* behind the step's lead: waits for its own turn */
    bool unchanged;   /* not reached, or its responses could not be built */
    int64_t next;     /* its next revision after the step */
    struct rlist out; /* its responses, built before the hand-over */
    struct wev **evs;
    size_t n, cap, committed; /* evs[0, committed) are whole revisions */
};

/* Queue room of one stream for this step. */
struct room {
    size_t left;
    bool fresh; /* nothing kept yet: one revision may go even if larger */
};

struct step {
    watch_hub_t *hub;
    struct entry *e;
    size_t n;
    struct room *rooms;
    size_t n_rooms;
    struct watcher *tree; /* scanning watchers, by range */
    size_t *touched;      /* entries with events in the current revision */
    size_t n_touched, active;
    const struct mvcc_event *ev;
    struct wev *copy;
    int err;
};

static void entry_drop(struct entry *e, size_t from) {
    for (size_t i = from; i < e->n; i++)
        wev_unref(e->evs[i]);
    e->n = from;
}

static void step_free(struct step *s) {
    for (size_t i = 0; i < s->n; i++) {
        entry_drop(&s->e[i], 0);
        free(s->e[i].evs);
        rlist_free(&s->e[i].out);
    }
    free(s->e);
    free(s->rooms);
    free(s->touched);
}

/* Picks up to STEP_MAX_WATCHERS unsynced watchers whose stream has room.
 * Returns whether eligible watchers were left out. Hub mutex held. */
static bool choose(watch_hub_t *hub, struct step *s) {
    uint64_t epoch = ++hub->step_epoch;
    struct watcher *w = hub->uhead;
    for (; w != NULL && s->n < STEP_MAX_WATCHERS; w = w->unext) {
        watch_stream_t *st = w->st;
        assert(st != NULL && !w->in_step);
        if (st->step_epoch != epoch) {
            if (s->n_rooms == STEP_MAX_WATCHERS)
                break;
            st->step_epoch = epoch;
            st->step_room = s->n_rooms;
            struct room *r = &s->rooms[s->n_rooms++];
            r->left = stream_room(st);
            r->fresh = true;
        }
        if (s->rooms[st->step_room].left == 0)
            continue;
        w->in_step = true;
        w->step_idx = s->n;
        w->prio = index_prio(hub);
        s->e[s->n++] = (struct entry){.w = w, .room = st->step_room, .from = w->next_rev};
    }
    return w != NULL;
}

static void step_match(struct watcher *w, void *arg) {
    struct step *s = arg;
    struct entry *e = &s->e[w->step_idx];
    int64_t rev = s->ev->kv.mod_revision;
    if (s->err != 0 || e->stop != 0 || rev < e->from || !watcher_wants(w, s->ev))
        return;
    if (s->copy == NULL && (HUB_FAULT(s->hub) || (s->copy = wev_new(s->ev)) == NULL)) {
        s->err = -ENOMEM;
        return;
    }
    if (e->n == e->cap) {
        if (HUB_FAULT(s->hub)) {
            s->err = -ENOMEM;
            return;
        }
        size_t cap = e->cap ? 2 * e->cap : 16;
        struct wev **p = realloc(e->evs, cap * sizeof(*p));
        if (p == NULL) {
            s->err = -ENOMEM;
            return;
        }
        e->evs = p;
        e->cap = cap;
    }
    wev_ref(s->copy);
    e->evs[e->n++] = s->copy;
    if (!e->touched) {
        e->touched = true;
        s->touched[s->n_touched++] = w->step_idx;
    }
}

/* Revision `rev` is read whole: each watcher that got events in it keeps
 * them if its stream has room, else stops before it. */
static void revision_done(struct step *s, int64_t rev) {
    for (size_t t = 0; t < s->n_touched; t++) {
        struct entry *e = &s->e[s->touched[t]];
        struct room *r = &s->rooms[e->room];
        e->touched = false;
        size_t size = 0;
        for (size_t i = e->committed; i < e->n; i++)
            size += wev_wire_size(e->evs[i], e->w->prev_kv);
        if (size <= r->left || r->fresh) {
            r->left = size < r->left ? r->left - size : 0;
            r->fresh = false;
            e->committed = e->n;
        } else {
            entry_drop(e, e->committed);
            e->stop = rev;
            s->active--;
        }
    }
    s->n_touched = 0;
}

/* Reads history from `from` (the smallest of the scanning watchers), matching
 * every event, until about `budget` events were read (finishing the revision
 * in progress) or the snapshot's end. Returns the last revision read whole,
 * or a negative error. */
static int64_t scan(struct step *s, mvcc_read_t *rd, int64_t from, bool with_prev, size_t budget) {
    static const uint8_t all = 0;
    struct mvcc_event *page = malloc(STEP_PAGE * sizeof(*page));
    if (page == NULL)
        return -ENOMEM;
    struct mvcc_history_pos pos = {.main = from, .sub = 0};
    int64_t cur = 0, end = mvcc_read_revision(rd);
    size_t read = 0;
    for (;;) {
        bool done;
        int n = mvcc_history_read(rd, &all, 1, &all, 1, with_prev, &pos, page, STEP_PAGE, &done);
        if (n < 0) {
            end = n;
            goto out;
        }
        for (int i = 0; i < n; i++) {
            int64_t rev = page[i].kv.mod_revision;
            if (rev != cur) {
                if (cur != 0) {
                    revision_done(s, cur);
                    if (read >= budget || s->active == 0) {
                        end = rev - 1;
                        goto out;
                    }
                }
                cur = rev;
            }
            read++;
            s->ev = &page[i];
            s->copy = NULL;
            index_stab(s->tree, page[i].kv.key, page[i].kv.key_len, step_match, s);
            wev_unref(s->copy);
            if (s->err != 0) {
                end = s->err;
                goto out;
            }
        }
        if (done) {
            if (cur != 0)
                revision_done(s, cur);
            goto out;
        }
    }
out:
    free(page);
    return end;
}

/* Works out where a watcher ends up and builds its responses, with no lock
 * held: the step alone writes a held watcher, and the rest of it is fixed. */
static void prepare(watch_hub_t *hub, struct entry *e, int64_t scanned, int64_t compact) {
    struct watcher *w = e->w;
    if (e->compacted) {
        struct wresp *r = HUB_FAULT(hub) ? NULL : resp_control(w->id, w->next_rev - 1);
        if (r == NULL) {
            e->unchanged = true;
            return;
        }
        r->pub.canceled = true;
        r->pub.compact_revision = compact + 1;
        rlist_append(&e->out, r);
        return;
    }
    /* Not reached by the scan: it keeps its place in the list and leads a
     * coming step. */
    if (e->skipped || (e->scanning && scanned < e->from)) {
        e->unchanged = true;
        return;
    }
    e->next = e->stop != 0 ? e->stop : e->scanning ? scanned + 1 : e->from;
    if (e->n > 0 && (HUB_FAULT(hub) || resp_build_events(&e->out, w, e->evs, e->n, e->next - 1,
                                                         hub->opt.max_response_bytes) != 0))
        e->unchanged = true;
    entry_drop(e, 0);
}

/* Queues the outcome for one watcher and files it as synced or unsynced.
 * Returns whether it still has history to read now. Hub mutex held, so this
 * is kept to list operations. */
static bool hand_over(watch_hub_t *hub, struct entry *e, int64_t compact) {
    struct watcher *w = e->w;
    watch_stream_t *st = w->st;
    if (e->unchanged)
        return true;
    if (e->compacted) {
        LOG_DEBUG(hub->lg, "watcher needs compacted history", LOG_INT("watch-id", w->id),
                  LOG_INT("next-revision", w->next_rev), LOG_INT("compact-revision", compact));
        stream_push(st, &e->out, true);
        hub_unlist(hub, w);
        hub_forget_id(w);
        watcher_free(w);
        stream_answer_progress(st);
        return false;
    }
    if (e->out.head != NULL) {
        stream_push(st, &e->out, true);
        w->sent_since_tick = true;
    }
    w->next_rev = e->next;
    hub_unlist(hub, w);
    if (e->stop == 0 && e->next > hub->rev) {
        w->synced = true;
        index_insert(&hub->synced, w);
        hub->n_synced++;
        stream_answer_progress(st);
        return false;
    }
    /* Back at the tail: the next step serves the others first. */
    hub_list_unsynced(hub, w, e->next);
    return e->stop == 0;
}

int watch_hub_sync_step(watch_hub_t *hub, size_t budget) {
    if (budget == 0)
        budget = STEP_DEFAULT_BUDGET;
    struct step s = {.hub = hub};
    s.e = malloc(STEP_MAX_WATCHERS * sizeof(*s.e));
    s.rooms = malloc(STEP_MAX_WATCHERS * sizeof(*s.rooms));
    s.touched = malloc(STEP_MAX_WATCHERS * sizeof(*s.touched));
    if (s.e == NULL || s.rooms == NULL || s.touched == NULL) {
        step_free(&s);
        return -ENOMEM;
    }
    pthread_mutex_lock(&hub->step_mu);
    pthread_mutex_lock(&hub->mu);
    bool more = choose(hub, &s);
    pthread_mutex_unlock(&hub->mu);
    int rc = 0;
    mvcc_read_t *rd = NULL;
    int64_t scanned = 0, compact = 0;
    if (s.n == 0)
        goto done;
    if ((rc = mvcc_read_begin(hub->db, &rd)) != 0)
        goto done;
    int64_t snap = mvcc_read_revision(rd), lead = 0;
    compact = mvcc_read_compact_revision(rd);
    bool with_prev = false;
    for (size_t i = 0; i < s.n; i++) {
        struct entry *e = &s.e[i];
        /* Strict: the sweep drops tombstones at the compaction revision. */
        if (e->from <= compact) {
            e->compacted = true;
        } else if (e->from <= snap) {
            /* The scan starts where the first watcher in list order needs
             * it; those further behind wait for their turn at the head of
             * the list, so one watcher far back does not hold up the rest. */
            if (lead == 0)
                lead = e->from;
            if (e->from < lead) {
                e->skipped = true;
                continue;
            }
            e->scanning = true;
            s.active++;
            index_insert(&s.tree, e->w);
            with_prev |= e->w->prev_kv;
        }
    }
    scanned = snap;
    if (s.tree != NULL)
        scanned = scan(&s, rd, lead, with_prev, budget);
    mvcc_read_end(rd);
    if (scanned < 0)
        rc = (int)scanned;
    for (size_t i = 0; rc == 0 && i < s.n; i++)
        prepare(hub, &s.e[i], scanned, compact);
done:
    pthread_mutex_lock(&hub->mu);
    for (size_t i = 0; i < s.n; i++) {
        struct entry *e = &s.e[i];
        e->w->in_step = false;
        if (e->w->dead)
            watcher_free(e->w);
        else if (rc == 0)
            more |= hand_over(hub, e, compact);
    }
    pthread_mutex_unlock(&hub->mu);
    pthread_mutex_unlock(&hub->step_mu);
    step_free(&s);
    if (rc != 0)
        return rc;
    return more ? 1 : 0;
}
