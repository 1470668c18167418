/* fake_api_server: a TEST DOUBLE, not quoin's server. It puts an in-memory
 * key/value map behind the real api transport so the transport can be driven
 * by real clients (etcdctl, Python's etcd3 and grpc) in the pytest files of tests/api.
 *
 * Served: KV.Range (answered on the loop), KV.Put and KV.DeleteRange (answered
 * from a separate "apply" thread, as quoin's writes are), Watch.Watch (events
 * sent from the apply thread), Maintenance.Status (its errors echo the
 * "authorization" metadata), GET /version, the JSON gateway for those unary
 * methods, and test-only methods of a "quointest.Test" service:
 *   Hang   unary, never answers; finishes CANCELLED when cancelled (deadlines)
 *   Echo   bidi, sends every message back; finishes OK on half-close
 *   Flood  server streaming; request = 8-byte total and 4-byte message size;
 *          sends that many bytes, pausing on -EAGAIN until on_writable
 *   Stats  unary; answers "cancels=N" (handler cancellations seen)
 *   Whoami unary; answers the client certificate's common name, or "-"
 *   Watchers unary; answers "watchers=N" (open Watch streams with a watch)
 *
 *   fake_api_server --listen http(s)://127.0.0.1:PORT [--max-request-bytes N]
 *                   [--lifetime SECONDS] [--cert-file F --key-file F
 *                   [--trusted-ca-file F] [--client-cert-auth]] [--log-level L]
 *
 * Prints "listening" on stdout when ready; exits 3 when the port is taken,
 * 0 after SIGTERM/SIGINT or when its lifetime (default 600 s) ends. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/proto/rpc.pb-c.h"

#define CLUSTER_ID 0x1000
#define MEMBER_ID 0x2000
#define RAFT_TERM 2

struct entry {
    ProtobufCBinaryData key, value;
    int64_t create, mod, version;
};

/* One watch of a Watch stream. */
struct watch {
    int64_t id;
    ProtobufCBinaryData key, end;
};

/* A Watch stream and its watches; on the fake's list under its mutex, so the
 * apply thread never sends on a stream after it is finished. */
struct watcher {
    struct watcher *next;
    api_call_t *call;
    struct watch *ws;
    size_t n;
    int64_t next_id;
};

/* A write handed to the apply thread. */
struct write {
    struct write *next;
    api_call_t *call;
    ProtobufCMessage *req;
};

struct fake {
    uv_loop_t loop;
    api_server_t *srv;
    uv_signal_t sigterm, sigint;
    uv_timer_t lifetime;
    size_t max_request_bytes;
    int cancels; /* loop thread */

    pthread_mutex_t mu; /* the map, revision and write queue */
    pthread_cond_t cond;
    struct entry *kv;
    size_t n, cap;
    int64_t revision;
    struct write *head, **tail;
    struct watcher *watchers;
    int stopping;
    pthread_t apply;
};

/* Flood state for one call. */
struct flood {
    uint64_t left;
    uint32_t size;
};

static int cmp_key(const ProtobufCBinaryData *a, const ProtobufCBinaryData *b) {
    size_t n = a->len < b->len ? a->len : b->len;
    int c = n ? memcmp(a->data, b->data, n) : 0;
    if (c)
        return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

/* Index of the first entry >= key. */
static size_t lower_bound(struct fake *f, const ProtobufCBinaryData *key) {
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cmp_key(&f->kv[mid].key, key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Whether k is in a request's range: key alone, [key, end), or everything
 * from key when end is "\0". */
static int key_in(const ProtobufCBinaryData *k, const ProtobufCBinaryData *key,
                  const ProtobufCBinaryData *end) {
    if (end->len == 0)
        return cmp_key(k, key) == 0;
    if (cmp_key(k, key) < 0)
        return 0;
    return (end->len == 1 && end->data[0] == 0) || cmp_key(k, end) < 0;
}

/* Whether entry i (at or after the range's first key) is in the range. */
static int in_range(struct fake *f, size_t i, const ProtobufCBinaryData *key,
                    const ProtobufCBinaryData *end) {
    return key_in(&f->kv[i].key, key, end);
}

static ProtobufCBinaryData dup_bytes(ProtobufCBinaryData b) {
    ProtobufCBinaryData d = {b.len, malloc(b.len ? b.len : 1)};
    if (!d.data)
        abort(); /* a test double: out of memory ends the test */
    if (b.len)
        memcpy(d.data, b.data, b.len);
    return d;
}

static void header(Etcdserverpb__ResponseHeader *h, int64_t rev) {
    etcdserverpb__response_header__init(h);
    h->cluster_id = CLUSTER_ID;
    h->member_id = MEMBER_ID;
    h->revision = rev;
    h->raft_term = RAFT_TERM;
}

static void kv_msg(Mvccpb__KeyValue *m, const struct entry *e, int keys_only) {
    mvccpb__key_value__init(m);
    m->key = e->key;
    if (!keys_only)
        m->value = e->value;
    m->create_revision = e->create;
    m->mod_revision = e->mod;
    m->version = e->version;
}

/* ---- KV.Range, on the loop thread ---- */

static void on_range(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                     void *arg) {
    struct fake *f = arg;
    Etcdserverpb__RangeRequest *req = (Etcdserverpb__RangeRequest *)msg;
    Etcdserverpb__RangeResponse resp = ETCDSERVERPB__RANGE_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    (void)d;
    (void)len;
    pthread_mutex_lock(&f->mu);
    size_t first = lower_bound(f, &req->key), last = first;
    while (last < f->n && in_range(f, last, &req->key, &req->range_end))
        last++;
    size_t count = last - first, shown = count;
    if (req->limit > 0 && (size_t)req->limit < shown)
        shown = (size_t)req->limit;
    if (req->count_only)
        shown = 0;
    Mvccpb__KeyValue *kvs = calloc(shown ? shown : 1, sizeof(*kvs));
    Mvccpb__KeyValue **ptrs = calloc(shown ? shown : 1, sizeof(*ptrs));
    if (!kvs || !ptrs)
        abort();
    for (size_t i = 0; i < shown; i++) {
        kv_msg(&kvs[i], &f->kv[first + i], req->keys_only);
        ptrs[i] = &kvs[i];
    }
    header(&h, f->revision);
    resp.header = &h;
    resp.kvs = ptrs;
    resp.n_kvs = shown;
    resp.count = (int64_t)count;
    resp.more = shown < count && !req->count_only;
    api_call_reply(call, &resp.base); /* packed under the lock: the map may change after */
    pthread_mutex_unlock(&f->mu);
    free(kvs);
    free(ptrs);
    protobuf_c_message_free_unpacked(msg, NULL);
}

/* ---- writes, on the apply thread ---- */

/* Sends one event to every watch of every stream that covers its key; mu held. */
static void notify(struct fake *f, Mvccpb__Event__EventType type, const Mvccpb__KeyValue *kv) {
    Mvccpb__Event ev = MVCCPB__EVENT__INIT;
    Mvccpb__Event *evs[1] = {&ev};
    Etcdserverpb__ResponseHeader h;
    ev.type = type;
    ev.kv = (Mvccpb__KeyValue *)kv;
    header(&h, f->revision);
    for (struct watcher *w = f->watchers; w; w = w->next) {
        for (size_t i = 0; i < w->n; i++) {
            if (!key_in(&kv->key, &w->ws[i].key, &w->ws[i].end))
                continue;
            Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
            resp.header = &h;
            resp.watch_id = w->ws[i].id;
            resp.events = evs;
            resp.n_events = 1;
            api_call_send(w->call, &resp.base); /* a slow watcher loses events here */
        }
    }
}

static void apply_put(struct fake *f, api_call_t *call, Etcdserverpb__PutRequest *req) {
    Etcdserverpb__PutResponse resp = ETCDSERVERPB__PUT_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    Mvccpb__KeyValue prev;
    size_t i = lower_bound(f, &req->key);
    f->revision++;
    if (i < f->n && cmp_key(&f->kv[i].key, &req->key) == 0) {
        if (req->prev_kv) {
            kv_msg(&prev, &f->kv[i], 0);
            prev.value = dup_bytes(prev.value);
            resp.prev_kv = &prev;
        }
        free(f->kv[i].value.data);
        f->kv[i].value = dup_bytes(req->value);
        f->kv[i].mod = f->revision;
        f->kv[i].version++;
    } else {
        if (f->n == f->cap) {
            f->cap = f->cap ? 2 * f->cap : 16;
            f->kv = realloc(f->kv, f->cap * sizeof(*f->kv));
            if (!f->kv)
                abort();
        }
        memmove(&f->kv[i + 1], &f->kv[i], (f->n - i) * sizeof(*f->kv));
        f->kv[i] =
            (struct entry){dup_bytes(req->key), dup_bytes(req->value), f->revision, f->revision, 1};
        f->n++;
    }
    Mvccpb__KeyValue now;
    kv_msg(&now, &f->kv[i], 0);
    notify(f, MVCCPB__EVENT__EVENT_TYPE__PUT, &now);
    header(&h, f->revision);
    resp.header = &h;
    api_call_reply(call, &resp.base);
    if (resp.prev_kv)
        free(prev.value.data);
}

static void apply_delete(struct fake *f, api_call_t *call, Etcdserverpb__DeleteRangeRequest *req) {
    Etcdserverpb__DeleteRangeResponse resp = ETCDSERVERPB__DELETE_RANGE_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    size_t first = lower_bound(f, &req->key), last = first;
    while (last < f->n && in_range(f, last, &req->key, &req->range_end))
        last++;
    if (last > first)
        f->revision++;
    for (size_t i = first; i < last; i++) {
        Mvccpb__KeyValue gone = MVCCPB__KEY_VALUE__INIT;
        gone.key = f->kv[i].key;
        gone.mod_revision = f->revision;
        notify(f, MVCCPB__EVENT__EVENT_TYPE__DELETE, &gone);
        free(f->kv[i].key.data);
        free(f->kv[i].value.data);
    }
    if (last > first)
        memmove(&f->kv[first], &f->kv[last], (f->n - last) * sizeof(*f->kv));
    f->n -= last - first;
    header(&h, f->revision);
    resp.header = &h;
    resp.deleted = (int64_t)(last - first);
    api_call_reply(call, &resp.base);
}

static void *apply_main(void *arg) {
    struct fake *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->head && !f->stopping)
            pthread_cond_wait(&f->cond, &f->mu);
        if (!f->head)
            break;
        struct write *w = f->head;
        f->head = w->next;
        if (!f->head)
            f->tail = &f->head;
        if (w->req->descriptor == &etcdserverpb__put_request__descriptor)
            apply_put(f, w->call, (Etcdserverpb__PutRequest *)w->req);
        else
            apply_delete(f, w->call, (Etcdserverpb__DeleteRangeRequest *)w->req);
        protobuf_c_message_free_unpacked(w->req, NULL);
        free(w);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static void on_write(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                     void *arg) {
    struct fake *f = arg;
    (void)d;
    if (len > f->max_request_bytes) {
        protobuf_c_message_free_unpacked(msg, NULL);
        api_call_finish(call, API_GRPC_INVALID_ARGUMENT, "etcdserver: request is too large");
        return;
    }
    struct write *w = calloc(1, sizeof(*w));
    if (!w)
        abort();
    w->call = call;
    w->req = msg;
    pthread_mutex_lock(&f->mu);
    *f->tail = w;
    f->tail = &w->next;
    pthread_cond_signal(&f->cond);
    pthread_mutex_unlock(&f->mu);
}

/* ---- Maintenance.Status ---- */

static void on_status(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                      void *arg) {
    struct fake *f = arg;
    Etcdserverpb__StatusResponse resp = ETCDSERVERPB__STATUS_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    (void)d;
    (void)len;
    protobuf_c_message_free_unpacked(msg, NULL);
    pthread_mutex_lock(&f->mu);
    header(&h, f->revision);
    resp.version = UTIL_ETCD_VERSION;
    resp.dbsize = 20480;
    resp.dbsizeinuse = 16384;
    resp.leader = MEMBER_ID;
    resp.raftindex = (uint64_t)f->revision + 4;
    resp.raftappliedindex = (uint64_t)f->revision + 4;
    resp.raftterm = RAFT_TERM;
    pthread_mutex_unlock(&f->mu);
    /* Echoes the caller's credentials, so tests see metadata arrive. */
    char *auth = (char *)api_call_metadata(call, "authorization");
    if (auth) {
        resp.errors = &auth;
        resp.n_errors = 1;
    }
    resp.header = &h;
    api_call_reply(call, &resp.base);
}

/* ---- Watch.Watch ---- */

static void on_watch_open(api_call_t *call, void *arg) {
    struct fake *f = arg;
    struct watcher *w = calloc(1, sizeof(*w));
    if (!w)
        abort();
    w->call = call;
    w->next_id = 1;
    api_call_set_data(call, w);
    pthread_mutex_lock(&f->mu);
    w->next = f->watchers;
    f->watchers = w;
    pthread_mutex_unlock(&f->mu);
}

static void on_watch_msg(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                         void *arg) {
    struct fake *f = arg;
    struct watcher *w = api_call_data(call);
    Etcdserverpb__WatchRequest *req = (Etcdserverpb__WatchRequest *)msg;
    Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    (void)d;
    (void)len;
    pthread_mutex_lock(&f->mu);
    header(&h, f->revision);
    resp.header = &h;
    if (req->request_union_case == ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST) {
        Etcdserverpb__WatchCreateRequest *cr = req->create_request;
        struct watch *ws = realloc(w->ws, (w->n + 1) * sizeof(*ws));
        if (!ws)
            abort();
        w->ws = ws;
        int64_t id = cr->watch_id ? cr->watch_id : w->next_id++;
        ws[w->n++] = (struct watch){id, dup_bytes(cr->key), dup_bytes(cr->range_end)};
        resp.watch_id = id;
        resp.created = 1;
    } else if (req->request_union_case ==
               ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST) {
        resp.watch_id = req->cancel_request->watch_id;
        resp.canceled = 1;
        for (size_t i = 0; i < w->n; i++) {
            if (w->ws[i].id == resp.watch_id) {
                free(w->ws[i].key.data);
                free(w->ws[i].end.data);
                w->ws[i] = w->ws[--w->n];
                break;
            }
        }
    } else {
        resp.watch_id = -1; /* a progress report: the header says where we are */
    }
    api_call_send(call, &resp.base); /* under the lock: events of a watch follow its creation */
    pthread_mutex_unlock(&f->mu);
    protobuf_c_message_free_unpacked(msg, NULL);
}

/* The stream ends (the client cancelled it or went): off the list, then finished. */
static void watch_end(api_call_t *call, struct fake *f) {
    struct watcher *w = api_call_data(call);
    pthread_mutex_lock(&f->mu);
    for (struct watcher **p = &f->watchers; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    pthread_mutex_unlock(&f->mu);
    for (size_t i = 0; i < w->n; i++) {
        free(w->ws[i].key.data);
        free(w->ws[i].end.data);
    }
    free(w->ws);
    free(w);
    api_call_finish(call, API_GRPC_OK, NULL);
}

static void on_watch_cancel(api_call_t *call, void *arg) {
    watch_end(call, arg);
}

/* ---- quointest.Test ---- */

static void on_hang(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                    void *arg) {
    (void)call;
    (void)msg;
    (void)d;
    (void)len;
    (void)arg; /* answered only by on_cancel */
}

static void on_cancel(api_call_t *call, void *arg) {
    struct fake *f = arg;
    f->cancels++;
    free(api_call_data(call));
    api_call_set_data(call, NULL);
    api_call_finish(call, API_GRPC_CANCELLED, "cancelled");
}

static void on_stats(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                     void *arg) {
    struct fake *f = arg;
    char buf[64];
    (void)msg;
    (void)d;
    (void)len;
    int n = snprintf(buf, sizeof(buf), "cancels=%d", f->cancels);
    api_call_send_raw(call, buf, (size_t)n);
    api_call_finish(call, API_GRPC_OK, NULL);
}

static void on_watchers(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                        void *arg) {
    struct fake *f = arg;
    char buf[64];
    int n = 0;
    (void)msg;
    (void)d;
    (void)len;
    pthread_mutex_lock(&f->mu);
    for (struct watcher *w = f->watchers; w; w = w->next)
        n += w->n > 0;
    pthread_mutex_unlock(&f->mu);
    n = snprintf(buf, sizeof(buf), "watchers=%d", n);
    api_call_send_raw(call, buf, (size_t)n);
    api_call_finish(call, API_GRPC_OK, NULL);
}

static void on_whoami(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                      void *arg) {
    const char *cn = api_call_peer_cn(call);
    (void)msg;
    (void)d;
    (void)len;
    (void)arg;
    if (!cn)
        cn = "-";
    api_call_send_raw(call, cn, strlen(cn));
    api_call_finish(call, API_GRPC_OK, NULL);
}

static void on_stream_open(api_call_t *call, void *arg) {
    (void)call;
    (void)arg;
}

static void on_echo(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                    void *arg) {
    (void)msg;
    (void)arg;
    api_call_send_raw(call, d, len);
}

static void on_echo_end(api_call_t *call, void *arg) {
    (void)arg;
    api_call_finish(call, API_GRPC_OK, NULL);
}

/* Sends flood messages until done or the stream's buffer is full. */
static void flood_more(api_call_t *call, void *arg) {
    struct flood *fl = api_call_data(call);
    static const char zeros[64 * 1024];
    (void)arg;
    if (!fl)
        return;
    while (fl->left > 0) {
        uint32_t n = fl->left < fl->size ? (uint32_t)fl->left : fl->size;
        int rc = api_call_send_raw(call, zeros, n);
        if (rc == -EAGAIN)
            return; /* on_writable calls again */
        if (rc != 0)
            return; /* cancelled: on_cancel finishes */
        fl->left -= n;
    }
    free(fl);
    api_call_set_data(call, NULL);
    api_call_finish(call, API_GRPC_OK, NULL);
}

static void on_flood(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                     void *arg) {
    (void)msg;
    struct flood *fl = calloc(1, sizeof(*fl));
    if (!fl || len != 12) {
        free(fl);
        api_call_finish(call, API_GRPC_INVALID_ARGUMENT, "flood wants 12 bytes");
        return;
    }
    for (int i = 0; i < 8; i++)
        fl->left = fl->left << 8 | d[i];
    for (int i = 8; i < 12; i++)
        fl->size = fl->size << 8 | d[i];
    if (fl->size == 0 || fl->size > 64 * 1024) {
        free(fl);
        api_call_finish(call, API_GRPC_INVALID_ARGUMENT, "flood message size out of range");
        return;
    }
    api_call_set_data(call, fl);
    flood_more(call, arg);
}

/* ---- process ---- */

static void on_closed(void *arg) {
    struct fake *f = arg;
    uv_close((uv_handle_t *)&f->sigterm, NULL);
    uv_close((uv_handle_t *)&f->sigint, NULL);
    uv_close((uv_handle_t *)&f->lifetime, NULL);
}

static void stop(struct fake *f) {
    if (f->srv) {
        api_server_close(f->srv, on_closed, f);
        f->srv = NULL;
    }
}

static void on_signal(uv_signal_t *s, int signum) {
    (void)signum;
    stop(s->data);
}

static void on_lifetime(uv_timer_t *t) {
    stop(t->data);
}

static int register_all(struct fake *f) {
    const struct api_grpc_method ms[] = {
        {.path = "/etcdserverpb.KV/Range",
         .request = &etcdserverpb__range_request__descriptor,
         .response = &etcdserverpb__range_response__descriptor,
         .on_message = on_range},
        {.path = "/etcdserverpb.KV/Put",
         .request = &etcdserverpb__put_request__descriptor,
         .response = &etcdserverpb__put_response__descriptor,
         .on_message = on_write},
        {.path = "/etcdserverpb.KV/DeleteRange",
         .request = &etcdserverpb__delete_range_request__descriptor,
         .response = &etcdserverpb__delete_range_response__descriptor,
         .on_message = on_write},
        {.path = "/etcdserverpb.Watch/Watch",
         .client_streaming = true,
         .server_streaming = true,
         .request = &etcdserverpb__watch_request__descriptor,
         .response = &etcdserverpb__watch_response__descriptor,
         .on_open = on_watch_open,
         .on_message = on_watch_msg, /* etcd keeps a half-closed Watch stream open too */
         .on_cancel = on_watch_cancel},
        {.path = "/etcdserverpb.Maintenance/Status",
         .request = &etcdserverpb__status_request__descriptor,
         .response = &etcdserverpb__status_response__descriptor,
         .on_message = on_status},
        {.path = "/quointest.Test/Hang", .on_message = on_hang, .on_cancel = on_cancel},
        {.path = "/quointest.Test/Stats", .on_message = on_stats},
        {.path = "/quointest.Test/Whoami", .on_message = on_whoami},
        {.path = "/quointest.Test/Watchers", .on_message = on_watchers},
        {.path = "/quointest.Test/Echo",
         .client_streaming = true,
         .server_streaming = true,
         .on_open = on_stream_open,
         .on_message = on_echo,
         .on_half_close = on_echo_end,
         .on_cancel = on_cancel},
        {.path = "/quointest.Test/Flood",
         .server_streaming = true,
         .on_open = on_stream_open,
         .on_message = on_flood,
         .on_cancel = on_cancel,
         .on_writable = flood_more},
    };
    for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
        struct api_grpc_method m = ms[i];
        m.arg = f;
        if (api_server_register(f->srv, &m) != 0)
            return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    struct fake f = {.tail = &f.head};
    struct api_config cfg;
    struct util_err err;
    const char *url = NULL;
    long lifetime = 600;
    struct api_tls_config tls = {0};
    log_t *lg = NULL;
    api_config_default(&cfg);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--client-cert-auth") == 0) {
            tls.client_cert_auth = true;
            continue;
        }
        if (i + 1 == argc)
            break;
        if (strcmp(argv[i], "--log-level") == 0) {
            enum log_level level;
            if (log_parse_level(argv[++i], &level) != 0 ||
                log_open(level, "stderr", &lg, &err) != 0)
                return 2;
        } else if (strcmp(argv[i], "--cert-file") == 0)
            tls.cert_file = argv[++i];
        else if (strcmp(argv[i], "--key-file") == 0)
            tls.key_file = argv[++i];
        else if (strcmp(argv[i], "--trusted-ca-file") == 0)
            tls.trusted_ca_file = argv[++i];
        else if (strcmp(argv[i], "--listen") == 0)
            url = argv[++i];
        else if (strcmp(argv[i], "--max-request-bytes") == 0)
            cfg.max_request_bytes = strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--lifetime") == 0)
            lifetime = strtol(argv[++i], NULL, 10);
    }
    if (!url) {
        fprintf(stderr, "usage: fake_api_server --listen URL [--max-request-bytes N]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    f.max_request_bytes = cfg.max_request_bytes;
    pthread_mutex_init(&f.mu, NULL);
    pthread_cond_init(&f.cond, NULL);
    uv_loop_init(&f.loop);
    if (api_server_new(&f.loop, lg, &cfg, &f.srv, &err) != 0 || register_all(&f) != 0) {
        fprintf(stderr, "fake_api_server: setup failed\n");
        return 1;
    }
    if (tls.cert_file && api_server_set_tls(f.srv, &tls, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        api_server_close(f.srv, NULL, NULL);
        uv_run(&f.loop, UV_RUN_DEFAULT);
        uv_loop_close(&f.loop);
        return 1;
    }
    int rc = api_server_listen(f.srv, url, &err);
    if (rc != 0) {
        fprintf(stderr, "%s\n", err.msg);
        api_server_close(f.srv, NULL, NULL);
        uv_run(&f.loop, UV_RUN_DEFAULT);
        uv_loop_close(&f.loop);
        return rc == -EADDRINUSE ? 3 : 1;
    }
    pthread_create(&f.apply, NULL, apply_main, &f);
    uv_signal_init(&f.loop, &f.sigterm);
    uv_signal_init(&f.loop, &f.sigint);
    uv_timer_init(&f.loop, &f.lifetime);
    f.sigterm.data = f.sigint.data = f.lifetime.data = &f;
    uv_signal_start(&f.sigterm, on_signal, SIGTERM);
    uv_signal_start(&f.sigint, on_signal, SIGINT);
    uv_timer_start(&f.lifetime, on_lifetime, (uint64_t)lifetime * 1000, 0);
    printf("listening\n");
    fflush(stdout);

    /* The apply thread must keep answering while the server closes: closing
     * waits for every call it holds. */
    uv_run(&f.loop, UV_RUN_DEFAULT);
    pthread_mutex_lock(&f.mu);
    f.stopping = 1;
    pthread_cond_signal(&f.cond);
    pthread_mutex_unlock(&f.mu);
    pthread_join(f.apply, NULL);
    rc = uv_loop_close(&f.loop);
    for (size_t i = 0; i < f.n; i++) {
        free(f.kv[i].key.data);
        free(f.kv[i].value.data);
    }
    free(f.kv);
    log_close(lg);
    return rc == 0 ? 0 : 1;
}
