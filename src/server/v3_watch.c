/* v3_watch: etcd's Watch service over src/watch. The apply thread publishes
 * each committed batch's events to the hub; catch-up from history runs on a
 * libuv worker thread; each gRPC Watch stream drains its watch stream on the io
 * loop, encoding responses straight into protobuf. A client that stops
 * reading fills its gRPC stream buffer, then its watch stream's budget, after
 * which its watchers fall back to history: memory stays bounded. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "server/v3.h"

/* One gRPC Watch stream. Freed once the call is over and no drain is posted. */
struct watch_conn {
    struct server *s;
    api_call_t *call;
    watch_stream_t *ws;
    pthread_mutex_t mu;
    bool posted;                    /* a drain is queued on the io loop */
    bool closing;                   /* the call is over */
    struct watch_response *held;    /* popped but refused by a full gRPC buffer */
    struct watch_conn *next, *prev; /* the server's list, for progress ticks */
};

/* ---- encoding ---------------------------------------------------------------- */

static int encode_event(struct util_buf *b, const struct mvcc_event *ev, bool prev_kv) {
    struct util_buf e = {0};
    int rc = pbw_uint(&e, 1, ev->type == MVCC_EVENT_DELETE ? 1 : 0);
    if (rc == 0)
        rc = pbw_kv(&e, 2, &ev->kv, false);
    if (rc == 0 && prev_kv && ev->has_prev)
        rc = pbw_kv(&e, 3, &ev->prev_kv, false);
    if (rc == 0)
        rc = pbw_message(b, 11, e.data, e.len);
    util_buf_free(&e);
    return rc;
}

static int encode_response(struct server *s, const struct watch_response *r, struct util_buf *b) {
    struct pbw_header h;
    v3_header(s, r->revision, &h);
    int rc = pbw_header(b, 1, &h);
    if (rc == 0)
        rc = pbw_int(b, 2, r->watch_id);
    if (rc == 0)
        rc = pbw_bool(b, 3, r->created);
    if (rc == 0)
        rc = pbw_bool(b, 4, r->canceled);
    if (rc == 0)
        rc = pbw_int(b, 5, r->compact_revision);
    if (rc == 0 && r->cancel_reason)
        rc = pbw_bytes(b, 6, r->cancel_reason, strlen(r->cancel_reason));
    if (rc == 0)
        rc = pbw_bool(b, 7, r->fragment);
    for (size_t i = 0; rc == 0 && i < r->n_events; i++)
        rc = encode_event(b, r->events[i], r->prev_kv);
    return rc;
}

/* ---- draining a stream (io loop) ---------------------------------------------- */

static void conn_free(struct watch_conn *c) {
    watch_response_free(c->held);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Sends queued responses until the queue is empty or the gRPC buffer is full
 * (then on_writable resumes). */
static void conn_drain(struct watch_conn *c) {
    struct util_buf b = {0};
    for (;;) {
        struct watch_response *r = c->held;
        c->held = NULL;
        if (!r && watch_stream_pop(c->ws, &r) != 0)
            break;
        b.len = 0;
        if (encode_response(c->s, r, &b) != 0) {
            watch_response_free(r);
            break;
        }
        int rc = api_call_send_raw(c->call, b.data, b.len);
        if (rc == -EAGAIN) {
            c->held = r;
            break;
        }
        watch_response_free(r);
        if (rc != 0)
            break;
    }
    util_buf_free(&b);
}

static void conn_posted(void *ctx) {
    struct watch_conn *c = ctx;
    pthread_mutex_lock(&c->mu);
    c->posted = false;
    bool closing = c->closing;
    pthread_mutex_unlock(&c->mu);
    if (closing)
        conn_free(c);
    else
        conn_drain(c);
}

/* The watch stream has something to send: schedule a drain. Any thread, with
 * the hub's lock held: only schedules. */
static void conn_ready(void *arg) {
    struct watch_conn *c = arg;
    pthread_mutex_lock(&c->mu);
    bool post = !c->posted && !c->closing;
    c->posted = c->posted || post;
    pthread_mutex_unlock(&c->mu);
    if (post && server_post(c->s, conn_posted, c) != 0) {
        pthread_mutex_lock(&c->mu);
        c->posted = false;
        pthread_mutex_unlock(&c->mu);
    }
}

/* ---- the gRPC Watch method ------------------------------------------------------ */

static void on_watch_open(api_call_t *call, void *arg) {
    struct server *s = arg;
    struct watch_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        v3_fail(call, -ENOMEM);
        return;
    }
    c->s = s;
    c->call = call;
    pthread_mutex_init(&c->mu, NULL);
    if (watch_stream_open(s->watch, 0, conn_ready, c, &c->ws) != 0) {
        conn_free(c);
        v3_fail(call, -ENOMEM);
        return;
    }
    c->next = s->watch_conns;
    if (c->next)
        c->next->prev = c;
    s->watch_conns = c;
    api_call_set_data(call, c);
}

static void watch_create(struct watch_conn *c, const Etcdserverpb__WatchCreateRequest *q) {
    struct watch_create_req req = {.key = q->key.data,
                                   .key_len = q->key.len,
                                   .range_end = q->range_end.data,
                                   .range_end_len = q->range_end.len,
                                   .start_revision = q->start_revision,
                                   .watch_id = q->watch_id,
                                   .prev_kv = q->prev_kv,
                                   .progress_notify = q->progress_notify,
                                   .fragment = q->fragment};
    for (size_t i = 0; i < q->n_filters; i++)
        req.filters |= q->filters[i] == ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NOPUT
                           ? WATCH_FILTER_NOPUT
                           : WATCH_FILTER_NODELETE;
    int64_t id;
    if (watch_stream_create(c->ws, &req, &id) == -ENOMEM)
        LOG_WARN(c->s->lg, "out of memory creating a watcher");
}

static void on_watch_message(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data,
                             size_t len, void *arg) {
    (void)data;
    (void)len;
    (void)arg;
    struct watch_conn *c = api_call_data(call);
    Etcdserverpb__WatchRequest *q = (Etcdserverpb__WatchRequest *)msg;
    if (c) {
        switch (q->request_union_case) {
        case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST:
            watch_create(c, q->create_request);
            break;
        case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST:
            watch_stream_cancel(c->ws, q->cancel_request->watch_id);
            break;
        case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_PROGRESS_REQUEST:
            watch_stream_request_progress(c->ws);
            break;
        default:
            break;
        }
    }
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void on_watch_writable(api_call_t *call, void *arg) {
    (void)arg;
    struct watch_conn *c = api_call_data(call);
    if (c)
        conn_drain(c);
}

/* The client half-closed or went away: close the watch stream and end the
 * call. A drain already posted frees the connection when it runs. */
static void on_watch_end(api_call_t *call, void *arg) {
    struct server *s = arg;
    struct watch_conn *c = api_call_data(call);
    if (!c)
        return;
    api_call_set_data(call, NULL);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->watch_conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    watch_stream_close(c->ws); /* no ready callback after this */
    api_call_finish(call, API_GRPC_OK, NULL);
    pthread_mutex_lock(&c->mu);
    c->closing = true;
    bool posted = c->posted;
    pthread_mutex_unlock(&c->mu);
    if (!posted)
        conn_free(c);
}

/* ---- catch-up, progress, publishing ------------------------------------------------ */

static void sync_work(uv_work_t *req) {
    struct server *s = req->data;
    while (watch_hub_sync_step(s->watch, 0) == 1)
        ;
}

static void sync_after(uv_work_t *req, int status) {
    (void)status;
    struct server *s = req->data;
    s->watch_syncing = false;
    if (s->watch_sync_again && !s->stopping) {
        s->watch_sync_again = false;
        v3_watch_sync(s);
    }
}

void v3_watch_sync(void *arg) {
    struct server *s = arg;
    if (s->stopping)
        return;
    if (s->watch_syncing) {
        s->watch_sync_again = true;
        return;
    }
    s->watch_syncing = true;
    s->watch_sync_req.data = s;
    if (uv_queue_work(&s->loop, &s->watch_sync_req, sync_work, sync_after) != 0)
        s->watch_syncing = false;
}

/* The hub wants a sync step: schedule one on the io loop. Any thread. */
static void sync_wanted(void *arg) {
    server_post(arg, v3_watch_sync, arg);
}

void v3_watch_tick(struct server *s, bool progress) {
    struct watch_hub_stats st;
    watch_hub_stats(s->watch, &st);
    if (st.unsynced)
        v3_watch_sync(s);
    if (progress)
        for (struct watch_conn *c = s->watch_conns; c; c = c->next)
            watch_stream_progress_tick(c->ws);
}

int v3_watch_open(struct server *s, struct util_err *err) {
    struct watch_hub_options opt = {
        .max_response_bytes = (size_t)s->cfg->max_request_bytes + API_GRPC_OVERHEAD_BYTES,
        .sync_wanted = sync_wanted,
        .sync_arg = s,
    };
    int rc = watch_hub_create(s->db, &opt, s->lg, &s->watch);
    return rc ? util_errorf(err, rc, "cannot start the watch hub: %s", watch_strerror(rc)) : 0;
}

void v3_watch_publish(struct server *s) {
    /* Result by result: each one's events are one revision, in order, so no
     * copy into one array is needed (and none can fail). */
    for (size_t i = 0; i < s->n_batch_applied; i++) {
        const mvcc_result_t *res = s->batch_applied[i]->res;
        if (res && res->n_events)
            watch_hub_publish(s->watch, res->events, res->n_events, res->resp.revision);
    }
}

int v3_watch_register(struct server *s, struct util_err *err) {
    const struct api_grpc_method methods[] = {
        {.path = "/etcdserverpb.Watch/Watch",
         .client_streaming = true,
         .server_streaming = true,
         .request = &etcdserverpb__watch_request__descriptor,
         .response = &etcdserverpb__watch_response__descriptor,
         .on_open = on_watch_open,
         .on_message = on_watch_message,
         .on_half_close = on_watch_end,
         .on_cancel = on_watch_end,
         .on_writable = on_watch_writable,
         .arg = s},
    };
    return v3_register(s, methods, sizeof(methods) / sizeof(methods[0]), err);
}
