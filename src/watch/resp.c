/* watch responses: events copied once out of mvcc and shared by reference,
 * the protobuf sizes the budgets and the fragment limit measure, and the
 * packing of a watcher's events into responses (whole revisions, or
 * fragments of one revision). */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "watch/watch_int.h"

/* A length-delimited field of `n` bytes with a one-byte tag. */
static size_t field_len(size_t n) {
    return 1 + util_varint_len(n) + n;
}

static size_t int_field(int64_t v) {
    return v == 0 ? 0 : 1 + util_varint_len((uint64_t)v);
}

static size_t kv_size(const struct mvcc_kv *kv) {
    size_t n = int_field(kv->create_revision) + int_field(kv->mod_revision) +
               int_field(kv->version) + int_field(kv->lease);
    if (kv->key_len > 0)
        n += field_len(kv->key_len);
    if (kv->value_len > 0)
        n += field_len(kv->value_len);
    return n;
}

static size_t event_size(const struct mvcc_event *ev, bool with_prev) {
    size_t n = (ev->type == MVCC_EVENT_DELETE ? 2 : 0) + field_len(kv_size(&ev->kv));
    if (with_prev && ev->has_prev)
        n += field_len(kv_size(&ev->prev_kv));
    return n;
}

static uint8_t *copy_bytes(uint8_t *dst, const uint8_t **p, size_t n) {
    if (n > 0)
        memcpy(dst, *p, n);
    *p = dst;
    return dst + n;
}

struct wev *wev_new(const struct mvcc_event *ev) {
    size_t extra = ev->kv.key_len + ev->kv.value_len;
    if (ev->has_prev)
        extra += ev->prev_kv.key_len + ev->prev_kv.value_len;
    struct wev *e = malloc(sizeof(*e) + extra);
    if (e == NULL)
        return NULL;
    atomic_init(&e->refs, 1);
    e->ev = *ev;
    if (!ev->has_prev)
        memset(&e->ev.prev_kv, 0, sizeof(e->ev.prev_kv));
    uint8_t *p = e->data;
    p = copy_bytes(p, &e->ev.kv.key, ev->kv.key_len);
    p = copy_bytes(p, &e->ev.kv.value, ev->kv.value_len);
    if (ev->has_prev) {
        p = copy_bytes(p, &e->ev.prev_kv.key, ev->prev_kv.key_len);
        copy_bytes(p, &e->ev.prev_kv.value, ev->prev_kv.value_len);
    }
    e->size = (uint32_t)field_len(event_size(&e->ev, false));
    e->size_prev = (uint32_t)field_len(event_size(&e->ev, true));
    return e;
}

void wev_ref(struct wev *e) {
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
}

void wev_unref(struct wev *e) {
    if (e != NULL && atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
        free(e);
}

size_t wev_wire_size(const struct wev *e, bool prev_kv) {
    return prev_kv ? e->size_prev : e->size;
}

static struct wev *wev_of(const struct mvcc_event *ev) {
    return (struct wev *)((char *)ev - offsetof(struct wev, ev));
}

/* The response without its events. The header counts cluster_id, member_id
 * and raft_term at their largest (the transport fills them in). */
static size_t base_size(const struct watch_response *r) {
    size_t hdr = 3 * 11 + int_field(r->revision);
    size_t n = field_len(hdr) + int_field(r->watch_id) + int_field(r->compact_revision);
    n += (r->created ? 2 : 0) + (r->canceled ? 2 : 0) + (r->fragment ? 2 : 0);
    if (r->cancel_reason != NULL)
        n += field_len(strlen(r->cancel_reason));
    return n;
}

size_t watch_response_size(const struct watch_response *r) {
    size_t n = base_size(r);
    for (size_t i = 0; i < r->n_events; i++)
        n += wev_wire_size(wev_of(r->events[i]), r->prev_kv);
    return n;
}

static struct wresp *resp_alloc(size_t n_events) {
    struct wresp *r = calloc(1, sizeof(*r) + n_events * sizeof(r->evp[0]));
    if (r != NULL)
        r->pub.events = r->evp;
    return r;
}

struct wresp *resp_control(int64_t watch_id, int64_t revision) {
    struct wresp *r = resp_alloc(0);
    if (r == NULL)
        return NULL;
    r->pub.watch_id = watch_id;
    r->pub.revision = revision;
    return r;
}

void wresp_free(struct wresp *r) {
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->pub.n_events; i++)
        wev_unref(wev_of(r->evp[i]));
    free(r);
}

void watch_response_free(struct watch_response *r) {
    if (r != NULL)
        wresp_free((struct wresp *)((char *)r - offsetof(struct wresp, pub)));
}

void rlist_append(struct rlist *l, struct wresp *r) {
    r->next = NULL;
    r->bytes = watch_response_size(&r->pub);
    if (l->tail != NULL)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->bytes += r->bytes;
}

void rlist_free(struct rlist *l) {
    while (l->head != NULL) {
        struct wresp *r = l->head;
        l->head = r->next;
        wresp_free(r);
    }
    l->tail = NULL;
    l->bytes = 0;
}

static int64_t ev_rev(const struct wev *e) {
    return e->ev.kv.mod_revision;
}

/* One response's slice of the events. */
struct chunk {
    size_t from, to;
    bool fragment;
};

/* Cuts evs into chunks: whole revisions packed while they fit the limit; a
 * revision above the limit alone, or split into fragments (each at least one
 * event, below the limit when it can be, as etcd's sendFragments). */
static size_t cut(const struct watcher *w, struct wev *const *evs, size_t n, size_t base,
                  size_t limit, struct chunk *out) {
    size_t nc = 0, i = 0, cur_size = 0;
    bool open = false; /* the last chunk may take more whole revisions */
    while (i < n) {
        size_t j = i, rsize = 0;
        while (j < n && ev_rev(evs[j]) == ev_rev(evs[i]))
            rsize += wev_wire_size(evs[j++], w->prev_kv);
        if (open && cur_size + rsize <= limit) {
            out[nc - 1].to = j;
            cur_size += rsize;
        } else if (base + rsize > limit && w->fragment && j - i > 1) {
            for (size_t k = i; k < j;) {
                size_t f = k, fsize = base + 2;
                while (k < j && (k == f || fsize + wev_wire_size(evs[k], w->prev_kv) < limit))
                    fsize += wev_wire_size(evs[k++], w->prev_kv);
                out[nc++] = (struct chunk){.from = f, .to = k, .fragment = k < j};
            }
            open = false;
        } else {
            out[nc++] = (struct chunk){.from = i, .to = j};
            cur_size = base + rsize;
            open = true;
        }
        i = j;
    }
    return nc;
}

int resp_build_events(struct rlist *l, const struct watcher *w, struct wev *const *evs, size_t n,
                      int64_t revision, size_t limit) {
    if (n == 0)
        return 0;
    struct chunk *ch = malloc(n * sizeof(*ch));
    if (ch == NULL)
        return -ENOMEM;
    struct watch_response probe = {.watch_id = w->id, .revision = revision};
    size_t nc = cut(w, evs, n, base_size(&probe), limit, ch);
    struct rlist built = {0};
    for (size_t c = 0; c < nc; c++) {
        size_t cnt = ch[c].to - ch[c].from;
        struct wresp *r = resp_alloc(cnt);
        if (r == NULL) {
            rlist_free(&built);
            free(ch);
            return -ENOMEM;
        }
        r->pub.watch_id = w->id;
        /* Complete through the revision before the next response's events;
         * fragments of a revision all carry the revision of the whole. */
        size_t nxt = c + 1;
        while (nxt < nc && ch[nxt - 1].fragment)
            nxt++;
        r->pub.revision = nxt < nc ? ev_rev(evs[ch[nxt].from]) - 1 : revision;
        r->pub.fragment = ch[c].fragment;
        r->pub.prev_kv = w->prev_kv;
        r->pub.n_events = cnt;
        for (size_t k = 0; k < cnt; k++) {
            struct wev *e = evs[ch[c].from + k];
            wev_ref(e);
            r->evp[k] = &e->ev;
        }
        rlist_append(&built, r);
    }
    free(ch);
    if (l->tail != NULL)
        l->tail->next = built.head;
    else
        l->head = built.head;
    l->tail = built.tail;
    l->bytes += built.bytes;
    return 0;
}
