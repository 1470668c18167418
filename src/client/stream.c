/* client streams: watches and lease keep-alives, which outlive connections.
 *
 * Each holds at most one open gRPC stream. When the stream ends (connection
 * lost, server gone), the tick re-opens it shortly after on whatever endpoint
 * the client uses by then. A watch re-creates itself from the revision after
 * the last one it delivered, and drops any event below it, so a reconnect
 * neither loses nor repeats events. Stopped streams are freed by the tick, in a
 * pass that runs no callback, so a callback may stop any stream. */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"

#define REOPEN_NS (50ull * 1000000ull)
#define MS_NS 1000000ull

struct quoin_watch {
    struct cl_stream s;
    quoin_watch_cb cb;
    void *arg;
    uint8_t *key;
    size_t key_len;
    uint8_t *range_end;
    size_t range_end_len;
    int prev_kv;
    int64_t next_rev; /* resume point; 0 until the first creation says "now" */
    int ended;        /* the final callback ran */
};

struct quoin_keepalive {
    struct cl_stream s;
    int64_t id;
    quoin_keepalive_cb cb;
    void *arg;
    int64_t ttl; /* last granted, 0 before the first answer */
    uint64_t next_send_ns;
};

void cl_stream_add(quoin_client_t *c, struct cl_stream *s) {
    s->prev = NULL;
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    s->open(s);
}

static void stream_unlink(quoin_client_t *c, struct cl_stream *s) {
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
}

/* The open call ended (lost connection, or the server closed it). */
static void stream_end(struct cl_call *k, const quoin_error_t *err) {
    struct cl_stream *s = k->owner;
    (void)err;
    s->call = NULL;
    s->reopen_at_ns = util_now_mono_ns() + REOPEN_NS;
}

static void stream_stop(struct cl_stream *s) {
    s->stopped = 1;
    if (s->call) {
        cl_call_cancel(s->call);
        s->call = NULL;
    }
}

void cl_streams_tick(quoin_client_t *c) {
    uint64_t now = util_now_mono_ns();
    struct cl_stream *s, *next;
    for (s = c->streams; s; s = s->next) {
        if (s->stopped)
            continue;
        if (!s->call && now >= s->reopen_at_ns)
            s->open(s);
        if (s->tick && !s->stopped)
            s->tick(s);
    }
    for (s = c->streams; s; s = next) {
        next = s->next;
        if (s->released) {
            stream_unlink(c, s);
            s->destroy(s);
        }
    }
}

void cl_streams_destroy(quoin_client_t *c) {
    struct cl_stream *s;
    while ((s = c->streams)) {
        stream_unlink(c, s);
        if (!s->stopped)
            stream_stop(s);
        s->destroy(s);
    }
}

static struct cl_call *stream_call(struct cl_stream *s, const char *path,
                                   void (*on_msg)(struct cl_call *, const uint8_t *, size_t)) {
    struct cl_call *k = cl_call_new(s->c, CL_STREAM, path, -1);
    if (!k)
        return NULL;
    k->on_msg = on_msg;
    k->on_end = stream_end;
    k->owner = s;
    return k;
}

/* ---- watch ---- */

static void watch_end(struct quoin_watch *w, int64_t compact_rev, const quoin_error_t *err) {
    if (w->ended)
        return;
    w->ended = 1;
    stream_stop(&w->s);
    w->cb(w->arg, NULL, NULL, 0, compact_rev, err);
}

static void watch_msg(struct cl_call *k, const uint8_t *p, size_t n) {
    struct quoin_watch *w = k->owner;
    Etcdserverpb__WatchResponse *m = etcdserverpb__watch_response__unpack(NULL, n, p);
    quoin_header_t h = {0};
    quoin_event_t *ev = NULL;
    size_t nev = 0;
    if (!m || w->s.stopped)
        goto out;
    cl_fill_header(&h, m->header);
    if (m->created && w->next_rev == 0)
        w->next_rev = h.revision + 1;
    if (m->canceled) {
        quoin_error_t e;
        if (m->compact_revision)
            cl_error(&e, QUOIN_OUT_OF_RANGE,
                     "etcdserver: mvcc: required revision has been compacted");
        else
            cl_error(&e, QUOIN_CANCELLED, "%s",
                     m->cancel_reason && *m->cancel_reason ? m->cancel_reason
                                                           : "watch canceled by the server");
        watch_end(w, m->compact_revision, &e);
        goto out;
    }
    if (!m->n_events)
        goto out;
    ev = calloc(m->n_events, sizeof *ev);
    if (!ev) {
        quoin_error_t e;
        cl_error(&e, QUOIN_CANCELLED, "out of memory");
        watch_end(w, 0, &e);
        goto out;
    }
    for (size_t i = 0; i < m->n_events; i++) {
        const Mvccpb__Event *e = m->events[i];
        if (!e->kv || e->kv->mod_revision < w->next_rev)
            continue; /* already delivered before a reconnect */
        ev[nev].type =
            e->type == MVCCPB__EVENT__EVENT_TYPE__DELETE ? QUOIN_EVENT_DELETE : QUOIN_EVENT_PUT;
        cl_fill_kv(&ev[nev].kv, e->kv);
        cl_fill_kv(&ev[nev].prev_kv, e->prev_kv);
        nev++;
    }
    if (nev) {
        w->next_rev = ev[nev - 1].kv.mod_revision + 1;
        w->cb(w->arg, &h, ev, nev, 0, NULL);
    }
out:
    free(ev);
    if (m)
        etcdserverpb__watch_response__free_unpacked(m, NULL);
}

static void watch_open(struct cl_stream *s) {
    struct quoin_watch *w = (struct quoin_watch *)s;
    Etcdserverpb__WatchRequest rq = ETCDSERVERPB__WATCH_REQUEST__INIT;
    Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    struct cl_call *k = stream_call(s, "/etcdserverpb.Watch/Watch", watch_msg);
    cr.key.data = w->key;
    cr.key.len = w->key_len;
    cr.range_end.data = w->range_end;
    cr.range_end.len = w->range_end_len;
    cr.start_revision = w->next_rev;
    cr.prev_kv = w->prev_kv != 0;
    rq.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    rq.create_request = &cr;
    if (!k || cl_call_append_msg(k, &rq.base) < 0) {
        cl_call_free(k);
        s->reopen_at_ns = util_now_mono_ns() + REOPEN_NS;
        return;
    }
    s->call = k;
    cl_start(k);
}

static void watch_destroy(struct cl_stream *s) {
    struct quoin_watch *w = (struct quoin_watch *)s;
    quoin_error_t e;
    cl_error(&e, QUOIN_CANCELLED, "watch canceled");
    watch_end(w, 0, &e);
    free(w->key);
    free(w->range_end);
    free(w);
}

static void add_job(struct cl_job *j) {
    struct cl_stream *s = (struct cl_stream *)((char *)j - offsetof(struct cl_stream, job_add));
    cl_stream_add(s->c, s);
}

static void post_add(quoin_client_t *c, struct cl_stream *s) {
    if (cl_on_loop_thread(c)) {
        cl_stream_add(c, s);
    } else {
        s->job_add.fn = add_job;
        cl_post(c, &s->job_add);
    }
}

static void stop_job(struct cl_job *j) {
    struct cl_stream *s = (struct cl_stream *)((char *)j - offsetof(struct cl_stream, job_stop));
    s->released = 1;
    if (!s->stopped)
        stream_stop(s);
}

/* Stops a stream and releases its handle, from any thread; the tick frees it. */
static void post_stop(struct cl_stream *s) {
    if (cl_on_loop_thread(s->c)) {
        stop_job(&s->job_stop);
    } else {
        s->job_stop.fn = stop_job;
        cl_post(s->c, &s->job_stop);
    }
}

static uint8_t *dup_bytes(const void *p, size_t n) {
    uint8_t *d = malloc(n ? n : 1);
    if (d && n)
        memcpy(d, p, n);
    return d;
}

int quoin_watch(quoin_client_t *c, const void *key, size_t key_len,
                const quoin_watch_options_t *opts, quoin_watch_cb cb, void *arg,
                quoin_watch_t **out) {
    quoin_watch_options_t none = {0};
    struct quoin_watch *w;
    if (!c || !cb || !out || (key_len && !key))
        return -EINVAL;
    if (!opts)
        opts = &none;
    if (opts->range_end_len && !opts->range_end)
        return -EINVAL;
    w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->key = dup_bytes(key, key_len);
    w->range_end = dup_bytes(opts->range_end, opts->range_end_len);
    if (!w->key || !w->range_end) {
        free(w->key);
        free(w->range_end);
        free(w);
        return -ENOMEM;
    }
    w->key_len = key_len;
    w->range_end_len = opts->range_end_len;
    w->next_rev = opts->start_revision;
    w->prev_kv = opts->prev_kv;
    w->cb = cb;
    w->arg = arg;
    w->s.c = c;
    w->s.open = watch_open;
    w->s.destroy = watch_destroy;
    *out = w;
    post_add(c, &w->s);
    return 0;
}

/* The final callback runs on the loop thread when the stop is handled. */
static void watch_cancel_job(struct cl_job *j) {
    struct quoin_watch *w =
        (struct quoin_watch *)((char *)j - offsetof(struct cl_stream, job_stop));
    quoin_error_t e;
    w->s.released = 1;
    cl_error(&e, QUOIN_CANCELLED, "watch canceled");
    watch_end(w, 0, &e);
}

void quoin_watch_cancel(quoin_watch_t *w) {
    if (!w)
        return;
    if (cl_on_loop_thread(w->s.c)) {
        watch_cancel_job(&w->s.job_stop);
    } else {
        w->s.job_stop.fn = watch_cancel_job;
        cl_post(w->s.c, &w->s.job_stop);
    }
}

/* ---- keep-alive ---- */

static uint64_t ka_interval_ns(const struct quoin_keepalive *ka) {
    uint64_t ms = ka->ttl > 0 ? (uint64_t)ka->ttl * 1000 / 3 : 500;
    return (ms < 500 ? 500 : ms) * MS_NS;
}

static int ka_send(struct quoin_keepalive *ka) {
    Etcdserverpb__LeaseKeepAliveRequest rq = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    rq.id = ka->id;
    ka->next_send_ns = util_now_mono_ns() + ka_interval_ns(ka);
    return cl_stream_write(ka->s.call, &rq.base);
}

static void ka_msg(struct cl_call *k, const uint8_t *p, size_t n) {
    struct quoin_keepalive *ka = k->owner;
    Etcdserverpb__LeaseKeepAliveResponse *m =
        etcdserverpb__lease_keep_alive_response__unpack(NULL, n, p);
    if (!m || ka->s.stopped)
        goto out;
    if (m->ttl <= 0)
        stream_stop(&ka->s);
    else
        ka->ttl = m->ttl;
    if (ka->cb)
        ka->cb(ka->arg, ka->id, m->ttl);
out:
    if (m)
        etcdserverpb__lease_keep_alive_response__free_unpacked(m, NULL);
}

static void ka_open(struct cl_stream *s) {
    struct quoin_keepalive *ka = (struct quoin_keepalive *)s;
    struct cl_call *k = stream_call(s, "/etcdserverpb.Lease/LeaseKeepAlive", ka_msg);
    if (!k) {
        s->reopen_at_ns = util_now_mono_ns() + REOPEN_NS;
        return;
    }
    s->call = k;
    if (ka_send(ka) < 0) {
        s->call = NULL;
        cl_call_free(k);
        s->reopen_at_ns = util_now_mono_ns() + REOPEN_NS;
        return;
    }
    cl_start(k);
}

static void ka_tick(struct cl_stream *s) {
    struct quoin_keepalive *ka = (struct quoin_keepalive *)s;
    if (s->call && util_now_mono_ns() >= ka->next_send_ns)
        ka_send(ka);
}

static void ka_destroy(struct cl_stream *s) {
    free(s);
}

int quoin_keepalive(quoin_client_t *c, int64_t id, quoin_keepalive_cb cb, void *arg,
                    quoin_keepalive_t **out) {
    struct quoin_keepalive *ka;
    if (!c || !out || id == 0)
        return -EINVAL;
    ka = calloc(1, sizeof *ka);
    if (!ka)
        return -ENOMEM;
    ka->id = id;
    ka->cb = cb;
    ka->arg = arg;
    ka->s.c = c;
    ka->s.open = ka_open;
    ka->s.tick = ka_tick;
    ka->s.destroy = ka_destroy;
    *out = ka;
    post_add(c, &ka->s);
    return 0;
}

void quoin_keepalive_stop(quoin_keepalive_t *k) {
    if (k)
        post_stop(&k->s);
}
