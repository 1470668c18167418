/* gRPC over HTTP/2 (h2c), server side: an nghttp2 session per connection,
 * the gRPC message framing (a 5-byte prefix: compressed flag, big-endian
 * length), statuses in trailers, deadlines from grpc-timeout, the method
 * registry, and calls that handlers answer from any thread.
 *
 * A call is shared by two owners: the stream (loop thread, until nghttp2 closes
 * the stream or the connection goes) and the handler (until its finish has been
 * processed on the loop). It is freed when neither holds it. What crosses
 * threads — queued response bytes, the finish, the "over" flag — sits under the
 * call's mutex; everything else is touched on the loop thread only.
 *
 * Errors are answered as grpc-go (the gRPC library etcd 3.4 serves with)
 * answers them, codes and messages alike, so clients see the same thing. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/internal.h"

#define GRPC_PREFIX_LEN API_GRPC_PREFIX_LEN
#define H2_STREAM_WINDOW (1 << 20)
#define H2_CONN_WINDOW (16 << 20)
/* Output of the session gathered into one socket write. */
#define H2_WRITE_CHUNK (256 * 1024)

/* A stream's output buffers larger than this are freed once drained. */
#define STREAM_BUF_KEEP (64 * 1024)

/* A header for nghttp2: k is a string literal. */
#define NV(k, v, vl)                                                                               \
    (nghttp2_nv) {                                                                                 \
        (uint8_t *)(k), (uint8_t *)(v), sizeof(k) - 1, (vl), NGHTTP2_NV_FLAG_NONE                  \
    }

struct api_call {
    struct api_wake wake; /* first: the wake queue hands back this pointer */
    api_server_t *srv;
    const struct api_grpc_method *method; /* NULL until the path is known and served */

    /* Loop thread only. */
    struct api_conn *conn; /* NULL once the stream is gone */
    api_http_req_t *http;  /* a call made through the JSON gateway: its HTTP request */
    bool http_streamed;    /* the gateway has begun a streamed answer */
    api_call_t *prev, *next;
    int32_t stream_id;
    char *path;
    char *peer_cn;
    char *encoding;
    char *timeout;
    bool is_post;
    bool is_grpc;
    struct util_buf md; /* request metadata: "name\0value\0" pairs */
    struct util_buf in; /* request bytes not yet a whole message */
    bool got_message;
    bool handler_owns;
    bool zombie; /* over, but a queued wakeup still points here: it frees the call */
    bool cancel_fired;
    bool status_set; /* the status the client will get is decided */
    int status_code;
    char *status_msg;
    bool headers_sent;
    bool trailers_done;
    bool deferred; /* the data provider is waiting for bytes */
    struct util_buf out;
    size_t out_off;
    uv_timer_t *timer;
    uint64_t deadline_ns;
    uint64_t started_ns; /* when the request headers were complete */
    void *user;

    /* Shared with the handler's threads, under mu. */
    pthread_mutex_t mu;
    struct util_buf pending; /* framed messages the loop has not taken yet */
    int pending_err;         /* an append to pending failed */
    size_t queued;           /* bytes sent by the handler and not yet given to nghttp2 */
    bool want_writable;
    bool over; /* the client has its status or is gone: sends are refused */
    bool finish_posted;
    bool finish_taken;
    int fin_code;
    char *fin_msg;
};

/* ---- small helpers ---- */

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* grpc-message is percent-encoded: bytes outside printable ASCII, and '%'. */
static int percent_encode(struct util_buf *b, const char *s) {
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        int rc;
        if (*p < 0x20 || *p > 0x7e || *p == '%') {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            rc = util_buf_append(b, e, 3);
        } else {
            rc = util_buf_append(b, p, 1);
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Parses a grpc-timeout value ("100m", "5S": up to 8 digits and a unit) into
 * nanoseconds. Returns 0 or -EINVAL. */
static int parse_timeout(const char *v, uint64_t *ns) {
    size_t n = strlen(v);
    uint64_t x = 0, unit;
    if (n < 2 || n > 9)
        return -EINVAL;
    for (size_t i = 0; i + 1 < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -EINVAL;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    switch (v[n - 1]) {
    case 'H':
        unit = 3600000000000ull;
        break;
    case 'M':
        unit = 60000000000ull;
        break;
    case 'S':
        unit = 1000000000ull;
        break;
    case 'm':
        unit = 1000000ull;
        break;
    case 'u':
        unit = 1000ull;
        break;
    case 'n':
        unit = 1;
        break;
    default:
        return -EINVAL;
    }
    *ns = x > UINT64_MAX / unit ? UINT64_MAX : x * unit;
    return 0;
}

static size_t max_recv_bytes(const api_server_t *srv) {
    return srv->cfg.max_request_bytes + API_GRPC_OVERHEAD_BYTES;
}

/* ---- method registry ---- */

static const struct api_grpc_method *method_find(const api_server_t *srv, const char *path) {
    for (size_t i = 0; i < srv->nmethods; i++)
        if (strcmp(srv->methods[i].path, path) == 0)
            return &srv->methods[i];
    return NULL;
}

const struct api_grpc_method *api_grpc_find(const api_server_t *srv, const char *path) {
    return method_find(srv, path);
}

/* Whether some registered method belongs to `service` (n bytes, no slashes). */
static bool service_known(const api_server_t *srv, const char *service, size_t n) {
    for (size_t i = 0; i < srv->nmethods; i++) {
        const char *p = srv->methods[i].path + 1;
        if (strncmp(p, service, n) == 0 && p[n] == '/')
            return true;
    }
    return false;
}

void api_server_set_call_observer(api_server_t *srv, api_call_observer observer, void *arg) {
    srv->observer = observer;
    srv->observer_arg = arg;
}

void api_server_set_call_gate(api_server_t *srv, api_call_gate gate, void *arg) {
    srv->gate = gate;
    srv->gate_arg = arg;
}

/* The server's word on a call of m about to run (see api_call_gate). */
static enum api_grpc_code gate_check(const api_server_t *srv, const struct api_grpc_method *m,
                                     const ProtobufCMessage *msg, const char **message) {
    *message = NULL;
    return srv->gate ? srv->gate(m->path, msg, message, srv->gate_arg) : API_GRPC_OK;
}

int api_server_register(api_server_t *srv, const struct api_grpc_method *m) {
    const char *slash = m->path ? strchr(m->path + 1, '/') : NULL;
    if (!m->path || m->path[0] != '/' || !slash || slash == m->path + 1 || !slash[1] ||
        !m->on_message || ((m->client_streaming || m->server_streaming) && !m->on_open))
        return -EINVAL;
    if (method_find(srv, m->path))
        return -EEXIST;
    struct api_grpc_method *ms = realloc(srv->methods, (srv->nmethods + 1) * sizeof(*ms));
    if (!ms)
        return -ENOMEM;
    srv->methods = ms;
    char *path = strdup(m->path);
    if (!path)
        return -ENOMEM;
    ms[srv->nmethods] = *m;
    ms[srv->nmethods].path = path;
    srv->nmethods++;
    return 0;
}

void api_grpc_free_methods(api_server_t *srv) {
    for (size_t i = 0; i < srv->nmethods; i++)
        free((char *)srv->methods[i].path);
    free(srv->methods);
    srv->methods = NULL;
    srv->nmethods = 0;
}

/* ---- call lifetime (loop thread) ---- */

static void on_timer_closed(uv_handle_t *h) {
    api_server_t *srv = h->data;
    free(h);
    api_server_handle_closed(srv);
}

/* Frees the call once neither the stream nor the handler holds it. */
static void call_maybe_free(api_call_t *call) {
    if (call->conn || call->handler_owns)
        return;
    /* A handler's finish can be queued again while an earlier wakeup is
     * already processing it; that queued wakeup frees the call instead. */
    if (api_wake_queued(call->srv, &call->wake)) {
        call->zombie = true;
        return;
    }
    api_server_t *srv = call->srv;
    if (srv->observer && call->path && call->started_ns) {
        /* A gateway call's status is in fin_code; a stream's in status_code;
         * a call the client left before any status was cancelled. */
        int code = call->status_set     ? call->status_code
                   : call->finish_taken ? call->fin_code
                                        : API_GRPC_CANCELLED;
        srv->observer(call->path, code, util_now_mono_ns() - call->started_ns, call->user,
                      srv->observer_arg);
    }
    if (call->timer) {
        uv_timer_stop(call->timer);
        call->timer->data = call->srv;
        uv_close((uv_handle_t *)call->timer, on_timer_closed);
    }
    free(call->path);
    free(call->peer_cn);
    free(call->encoding);
    free(call->timeout);
    free(call->status_msg);
    free(call->fin_msg);
    util_buf_free(&call->md);
    util_buf_free(&call->in);
    util_buf_free(&call->out);
    util_buf_free(&call->pending);
    pthread_mutex_destroy(&call->mu);
    free(call);
}

static void call_take(api_call_t *call) {
    assert(!call->handler_owns);
    call->handler_owns = true;
    call->srv->outstanding++;
}

/* The stream is gone: takes the call off its connection. */
static void call_unlink(api_call_t *call) {
    struct api_conn *c = call->conn;
    if (!c)
        return;
    call->srv->partial_bytes -= call->in.len;
    call->in.len = 0;
    if (call->prev)
        call->prev->next = call->next;
    else
        c->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    call->prev = call->next = NULL;
    call->conn = NULL;
}

static void call_mark_over(api_call_t *call) {
    pthread_mutex_lock(&call->mu);
    call->over = true;
    pthread_mutex_unlock(&call->mu);
}

/* A handler that already posted its finish is not cancelled: on the loop
 * thread that makes on_cancel and a finish exclusive. */
static void call_fire_cancel(api_call_t *call) {
    if (call->handler_owns && !call->cancel_fired) {
        pthread_mutex_lock(&call->mu);
        bool finished = call->finish_posted;
        pthread_mutex_unlock(&call->mu);
        call->cancel_fired = true;
        if (finished)
            return;
        if (call->method->on_cancel)
            call->method->on_cancel(call, call->method->arg);
    }
}

/* ---- sending (loop thread) ---- */

static int submit_trailers(api_call_t *call, bool trailers_only) {
    char code[16];
    struct util_buf msg = {0};
    nghttp2_nv nv[5];
    size_t n = 0;
    snprintf(code, sizeof(code), "%d", call->status_code);
    if (trailers_only) {
        nv[n++] = NV(":status", "200", 3);
        nv[n++] = NV("content-type", "application/grpc", 16);
    }
    nv[n++] = NV("grpc-status", code, strlen(code));
    if (call->status_msg && call->status_msg[0] && percent_encode(&msg, call->status_msg) == 0)
        nv[n++] = NV("grpc-message", msg.data, msg.len);
    int rc = trailers_only ? nghttp2_submit_response(call->conn->h2, call->stream_id, nv, n, NULL)
                           : nghttp2_submit_trailer(call->conn->h2, call->stream_id, nv, n);
    util_buf_free(&msg);
    call->trailers_done = true;
    return rc;
}

/* Gives the handler back the right to send once its buffer has drained. */
static void note_drained(api_call_t *call, size_t n) {
    bool wake;
    pthread_mutex_lock(&call->mu);
    call->queued -= n;
    wake = call->want_writable && !call->over &&
           call->queued <= call->srv->cfg.max_stream_output_bytes / 2;
    if (wake)
        call->want_writable = false;
    pthread_mutex_unlock(&call->mu);
    if (wake && call->handler_owns && call->method->on_writable)
        call->method->on_writable(call, call->method->arg);
}

/* nghttp2 wants the next DATA frame of a call: says how much, and leaves the
 * copying to send_data (NO_COPY), which puts the bytes straight into the
 * connection's output, saving nghttp2's own copy. */
static ssize_t data_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *user) {
    api_call_t *call = src->ptr;
    size_t avail = call->out.len - call->out_off;
    size_t n = avail < length ? avail : length;
    (void)s;
    (void)sid;
    (void)buf;
    (void)user;
    if (n == 0 && !call->status_set) {
        call->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n == avail && call->status_set) {
        *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (submit_trailers(call, false) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (n > 0)
        *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    return (ssize_t)n;
}

/* Writes a DATA frame data_read sized: its header, then the call's bytes. */
static int send_data(nghttp2_session *s, nghttp2_frame *f, const uint8_t *framehd, size_t length,
                     nghttp2_data_source *src, void *user) {
    struct api_conn *c = user;
    api_call_t *call = src->ptr;
    (void)s;
    assert(c->sink && f->data.padlen == 0 && length <= call->out.len - call->out_off);
    if (util_buf_append(c->sink, framehd, 9) != 0 ||
        util_buf_append(c->sink, call->out.data + call->out_off, length) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    call->out_off += length;
    if (call->out_off == call->out.len) {
        /* Drained: a long-lived stream does not keep a big burst's buffer. */
        if (call->out.cap > STREAM_BUF_KEEP)
            util_buf_free(&call->out);
        call->out.len = call->out_off = 0;
    } else if (call->out_off > (1 << 20) && call->out_off > call->out.len / 2) {
        memmove(call->out.data, call->out.data + call->out_off, call->out.len - call->out_off);
        call->out.len -= call->out_off;
        call->out_off = 0;
    }
    note_drained(call, length);
    return 0;
}

/* Hands what the call has (response headers, messages, status) to nghttp2. */
static void call_emit(api_call_t *call) {
    if (!call->conn || call->conn->closing || call->trailers_done)
        return;
    nghttp2_session *s = call->conn->h2;
    size_t avail = call->out.len - call->out_off;
    if (!call->headers_sent) {
        if (call->status_set && avail == 0) {
            call->headers_sent = true;
            if (submit_trailers(call, true) != 0)
                nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, call->stream_id,
                                          NGHTTP2_INTERNAL_ERROR);
            return;
        }
        if (avail == 0)
            return;
        nghttp2_nv nv[] = {NV(":status", "200", 3), NV("content-type", "application/grpc", 16)};
        nghttp2_data_provider dp = {.source.ptr = call, .read_callback = data_read};
        call->headers_sent = true;
        if (nghttp2_submit_response(s, call->stream_id, nv, 2, &dp) != 0)
            nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, call->stream_id,
                                      NGHTTP2_INTERNAL_ERROR);
    } else if (call->deferred && (avail > 0 || call->status_set)) {
        call->deferred = false;
        nghttp2_session_resume_data(s, call->stream_id);
    }
}

/* The transport decides the call's status (an error, the deadline): the
 * handler, if it holds the call, is cancelled. */
static void call_end(api_call_t *call, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void call_end(api_call_t *call, int code, const char *fmt, ...) {
    if (!call->status_set) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        call->status_set = true;
        call->status_code = code;
        call->status_msg = strdup(msg); /* NULL: the status goes without its text */
        /* Nothing sent yet: the queued answers go with the call. Once sending
         * has begun a message may be half out, so the queue drains first. */
        if (!call->headers_sent)
            call->out.len = call->out_off = 0;
    }
    call_mark_over(call);
    call_fire_cancel(call);
    call_emit(call);
}

/* ---- the handler's side (any thread) ---- */

/* A ProtobufCBuffer appending to a util_buf, so messages pack in place. */
struct buf_sink {
    ProtobufCBuffer base;
    struct util_buf *b;
    int err;
};

static void sink_append(ProtobufCBuffer *pb, size_t len, const uint8_t *data) {
    struct buf_sink *s = (struct buf_sink *)pb;
    if (s->err == 0)
        s->err = util_buf_append(s->b, data, len);
}

/* Checks that a message of `len` bytes may be queued; call->mu held. */
static int send_check(api_call_t *call, size_t len) {
    if (call->finish_posted)
        return -EINVAL;
    if (call->over)
        return -ECANCELED;
    if (call->queued > 0 && call->queued + len > call->srv->cfg.max_stream_output_bytes) {
        call->want_writable = true;
        return -EAGAIN;
    }
    return 0;
}

/* Frames and queues a message whose bytes come from `pack` (or data). */
static int call_queue(api_call_t *call, const ProtobufCMessage *msg, const void *data, size_t len) {
    uint8_t prefix[GRPC_PREFIX_LEN] = {0};
    if (msg)
        len = protobuf_c_message_get_packed_size(msg);
    if (len > UINT32_MAX)
        return -EINVAL;
    put_be32(prefix + 1, (uint32_t)len);
    pthread_mutex_lock(&call->mu);
    size_t before = call->pending.len;
    int rc = send_check(call, GRPC_PREFIX_LEN + len);
    if (rc == 0)
        rc = util_buf_append(&call->pending, prefix, sizeof(prefix));
    if (rc == 0 && msg) {
        struct buf_sink sink = {.base = {.append = sink_append}, .b = &call->pending};
        protobuf_c_message_pack_to_buffer(msg, &sink.base);
        rc = sink.err;
    } else if (rc == 0) {
        rc = util_buf_append(&call->pending, data, len);
    }
    if (rc == 0) {
        call->queued += GRPC_PREFIX_LEN + len;
        /* Posted under the lock: see api_call_finish. */
        api_wake_post(call->srv, &call->wake);
    } else if (call->pending.len != before) {
        call->pending.len = before; /* a half-appended frame is taken back */
    }
    pthread_mutex_unlock(&call->mu);
    return rc;
}

int api_call_send(api_call_t *call, const ProtobufCMessage *msg) {
    return call_queue(call, msg, NULL, 0);
}

int api_call_send_raw(api_call_t *call, const void *data, size_t len) {
    return call_queue(call, NULL, data, len);
}

int api_call_send_owned(api_call_t *call, struct util_buf *b) {
    if (b->len < API_GRPC_PREFIX_LEN || b->len - API_GRPC_PREFIX_LEN > UINT32_MAX)
        return -EINVAL;
    size_t total = b->len;
    b->data[0] = 0;
    put_be32((uint8_t *)b->data + 1, (uint32_t)(total - API_GRPC_PREFIX_LEN));
    pthread_mutex_lock(&call->mu);
    int rc = send_check(call, total);
    if (rc == 0 && call->pending.len == 0) {
        /* Nothing waits before it: the caller's buffer becomes the queue. */
        struct util_buf empty = call->pending;
        call->pending = *b;
        *b = empty;
    } else if (rc == 0) {
        rc = util_buf_append(&call->pending, b->data, total);
    }
    if (rc == 0) {
        call->queued += total;
        api_wake_post(call->srv, &call->wake);
    }
    pthread_mutex_unlock(&call->mu);
    return rc;
}

int api_call_finish(api_call_t *call, enum api_grpc_code code, const char *message) {
    char *msg = message && message[0] ? strdup(message) : NULL;
    int rc = message && message[0] && !msg ? -ENOMEM : 0;
    pthread_mutex_lock(&call->mu);
    assert(!call->finish_posted);
    call->finish_posted = true;
    call->fin_code = (int)code;
    call->fin_msg = msg;
    /* Posted while holding the call's lock: the loop frees the call (and may
     * free the server) only after taking this lock, so both outlive the post. */
    api_wake_post(call->srv, &call->wake);
    pthread_mutex_unlock(&call->mu);
    return rc;
}

int api_call_reply(api_call_t *call, const ProtobufCMessage *msg) {
    int rc = api_call_send(call, msg);
    api_call_finish(call, API_GRPC_OK, NULL);
    return rc;
}

const char *api_call_metadata(const api_call_t *call, const char *key) {
    const char *p = call->md.data, *end = p + call->md.len;
    while (p && p < end) {
        const char *v = p + strlen(p) + 1;
        if (strcasecmp(p, key) == 0)
            return v;
        p = v + strlen(v) + 1;
    }
    return NULL;
}

const char *api_call_peer_cn(const api_call_t *call) {
    return call->peer_cn;
}

const char *api_call_path(const api_call_t *call) {
    return call->path;
}

uint64_t api_call_deadline_ns(const api_call_t *call) {
    return call->deadline_ns;
}

bool api_call_is_cancelled(api_call_t *call) {
    pthread_mutex_lock(&call->mu);
    bool over = call->over;
    pthread_mutex_unlock(&call->mu);
    return over;
}

void api_call_set_data(api_call_t *call, void *data) {
    call->user = data;
}

void *api_call_data(const api_call_t *call) {
    return call->user;
}

/* Loop thread: takes what the handler queued or decided and passes it on. */
static void call_run(struct api_wake *w);

/* Loop thread: a gateway call passes its answers on. A unary call's answer is
 * its first message, given with the status; a streaming call's messages go
 * out as they come. */
static void gateway_call_run(api_call_t *call) {
    api_server_t *srv = call->srv;
    const struct api_grpc_method *m = call->method;
    pthread_mutex_lock(&call->mu);
    if (call->pending.len &&
        util_buf_append(&call->out, call->pending.data, call->pending.len) != 0)
        call->pending_err = -ENOMEM;
    call->pending.len = 0;
    call->queued = 0; /* the gateway writes at once: nothing waits on a window */
    bool fin = call->finish_posted && !call->finish_taken;
    if (fin) {
        call->finish_taken = true;
        call->over = true;
    }
    pthread_mutex_unlock(&call->mu);

    size_t off = 0;
    while (call->out.len - off >= GRPC_PREFIX_LEN) {
        const uint8_t *f = (const uint8_t *)call->out.data + off;
        size_t n = get_be32(f + 1);
        if (call->out.len - off - GRPC_PREFIX_LEN < n || !m->server_streaming)
            break;
        api_gateway_stream_message(call->http, m, f + GRPC_PREFIX_LEN, n, &call->http_streamed);
        off += GRPC_PREFIX_LEN + n;
    }
    api_buf_consume(&call->out, off);
    if (!fin)
        return;
    int code = call->pending_err ? API_GRPC_RESOURCE_EXHAUSTED : call->fin_code;
    const char *msg = call->pending_err ? "out of memory" : call->fin_msg;
    api_http1_on_gone(call->http, NULL, NULL); /* the request outlives the call */
    if (m->server_streaming) {
        api_gateway_stream_end(call->http, call->http_streamed, code, msg);
    } else {
        const uint8_t *first = NULL;
        size_t flen = 0;
        if (call->out.len >= GRPC_PREFIX_LEN) {
            flen = get_be32((const uint8_t *)call->out.data + 1);
            first = (const uint8_t *)call->out.data + GRPC_PREFIX_LEN;
            if (flen > call->out.len - GRPC_PREFIX_LEN)
                flen = 0;
        }
        api_gateway_answer(call->http, m, code, msg, first, flen);
    }
    call->http = NULL;
    call->handler_owns = false;
    call_maybe_free(call);
    api_server_release(srv);
}

/* The HTTP client of a streaming gateway call went away: cancel the handler.
 * The request stays with the call until the handler's finish ends it. */
static void gateway_gone(void *arg) {
    api_call_t *call = arg;
    call_mark_over(call);
    call_fire_cancel(call);
}

int api_grpc_gateway_call(api_server_t *srv, const struct api_grpc_method *m, api_http_req_t *req,
                          const struct util_buf *msgs, size_t n) {
    ProtobufCMessage **decoded = calloc(n ? n : 1, sizeof(*decoded));
    api_call_t *call = NULL;
    int rc = -ENOMEM;
    size_t i;
    if (!decoded)
        return -ENOMEM;
    for (i = 0; i < n; i++) {
        decoded[i] =
            protobuf_c_message_unpack(m->request, NULL, msgs[i].len, (const uint8_t *)msgs[i].data);
        if (!decoded[i]) {
            rc = -EINVAL;
            goto err;
        }
    }
    bool streaming = m->client_streaming || m->server_streaming;
    const char *why;
    enum api_grpc_code g = gate_check(srv, m, streaming || !n ? NULL : decoded[0], &why);
    if (g != API_GRPC_OK) {
        if (streaming)
            api_gateway_stream_end(req, false, g, why);
        else
            api_gateway_answer(req, m, g, why, NULL, 0);
        rc = 0;
        goto err;
    }
    call = calloc(1, sizeof(*call));
    if (!call || pthread_mutex_init(&call->mu, NULL) != 0) {
        free(call);
        call = NULL;
        goto err;
    }
    call->srv = srv;
    call->method = m;
    call->http = req;
    call->wake.run = call_run;
    call->got_message = true;
    call->started_ns = util_now_mono_ns();
    call->path = strdup(m->path);
    const char *auth = api_http_header(req, "Authorization");
    if (!call->path || (auth && (util_buf_append(&call->md, "authorization", 14) != 0 ||
                                 util_buf_append(&call->md, auth, strlen(auth) + 1) != 0)))
        goto err;
    call_take(call);
    if (m->client_streaming || m->server_streaming) {
        api_http1_on_gone(req, gateway_gone, call);
        m->on_open(call, m->arg);
    }
    /* The handler owns the messages from here, even if it finishes early. */
    for (i = 0; i < n; i++)
        m->on_message(call, decoded[i], (const uint8_t *)msgs[i].data, msgs[i].len, m->arg);
    if (m->client_streaming && m->on_half_close && !call->cancel_fired)
        m->on_half_close(call, m->arg);
    free(decoded);
    return 0;
err:
    for (i = 0; i < n; i++)
        if (decoded[i])
            protobuf_c_message_free_unpacked(decoded[i], NULL);
    free(decoded);
    if (call)
        call_maybe_free(call);
    return rc;
}

static void call_run(struct api_wake *w) {
    api_call_t *call = (api_call_t *)w;
    api_server_t *srv = call->srv;
    struct api_conn *conn = call->conn;
    bool fin = false;
    int code = 0;
    char *msg = NULL;

    if (call->zombie) {
        call->zombie = false;
        call_maybe_free(call);
        return;
    }
    if (call->http) {
        gateway_call_run(call);
        return;
    }

    pthread_mutex_lock(&call->mu);
    if (call->pending.len && conn && !call->status_set) {
        if (call->out.len == call->out_off) {
            struct util_buf t = call->out;
            call->out = call->pending;
            call->pending = t;
            call->out_off = 0;
            call->pending.len = 0;
            if (call->pending.cap > STREAM_BUF_KEEP)
                util_buf_free(&call->pending);
        } else if (util_buf_append(&call->out, call->pending.data, call->pending.len) != 0) {
            call->pending_err = -ENOMEM;
        }
    }
    call->pending.len = 0;
    if (call->finish_posted && !call->finish_taken) {
        fin = true;
        call->finish_taken = true;
        code = call->fin_code;
        msg = call->fin_msg;
        call->fin_msg = NULL;
        call->over = true;
    }
    int lost = call->pending_err;
    pthread_mutex_unlock(&call->mu);

    if (lost && !call->status_set)
        call_end(call, API_GRPC_RESOURCE_EXHAUSTED, "out of memory queueing a response");
    if (fin) {
        if (!call->status_set) {
            call->status_set = true;
            call->status_code = code;
            call->status_msg = msg;
            msg = NULL;
        }
        free(msg);
        call->handler_owns = false;
    }
    call_emit(call);
    call_maybe_free(call);
    if (conn)
        api_h2_flush_later(conn);
    if (fin)
        api_server_release(srv);
}

/* ---- requests (nghttp2 callbacks, loop thread) ---- */

static api_call_t *stream_call(nghttp2_session *s, int32_t sid) {
    return nghttp2_session_get_stream_user_data(s, sid);
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *user) {
    struct api_conn *c = user;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    api_call_t *call = calloc(1, sizeof(*call));
    if (!call || pthread_mutex_init(&call->mu, NULL) != 0) {
        free(call);
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    call->srv = c->srv;
    call->conn = c;
    call->stream_id = f->hd.stream_id;
    call->wake.run = call_run;
    call->next = c->calls;
    if (c->calls)
        c->calls->prev = call;
    c->calls = call;
    nghttp2_session_set_stream_user_data(s, f->hd.stream_id, call);
    return 0;
}

static int set_str(char **dst, const uint8_t *v, size_t n) {
    free(*dst);
    *dst = strndup((const char *)v, n);
    return *dst ? 0 : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *user) {
    api_call_t *call = stream_call(s, f->hd.stream_id);
    (void)flags;
    (void)user;
    if (!call || f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers from the client carry nothing we use */
#define IS(lit) (nlen == sizeof(lit) - 1 && memcmp(name, lit, nlen) == 0)
    if (IS(":method")) {
        call->is_post = vlen == 4 && memcmp(value, "POST", 4) == 0;
    } else if (IS(":path")) {
        return set_str(&call->path, value, vlen);
    } else if (IS("content-type")) {
        call->is_grpc = vlen >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
                        (vlen == 16 || value[16] == '+' || value[16] == ';');
    } else if (IS("grpc-encoding")) {
        return set_str(&call->encoding, value, vlen);
    } else if (IS("grpc-timeout")) {
        return set_str(&call->timeout, value, vlen);
    } else if (nlen > 0 && name[0] != ':') {
        if (call->md.len + nlen + vlen + 2 > call->srv->cfg.max_header_bytes)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
        if (util_buf_append(&call->md, name, nlen) != 0 || util_buf_append(&call->md, "", 1) != 0 ||
            util_buf_append(&call->md, value, vlen) != 0 || util_buf_append(&call->md, "", 1) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
#undef IS
    return 0;
}

static void on_deadline(uv_timer_t *t) {
    api_call_t *call = t->data;
    struct api_conn *c = call->conn;
    call_end(call, API_GRPC_DEADLINE_EXCEEDED, "context deadline exceeded");
    if (c)
        api_h2_flush(c);
}

/* Plain HTTP/2 requests that are not gRPC get an HTTP status, as grpc-go gives. */
static void reject_http(api_call_t *call, const char *status) {
    nghttp2_nv nv[] = {NV(":status", status, 3)};
    call->started_ns = 0; /* not a gRPC call: not observed */
    call->status_set = call->headers_sent = call->trailers_done = true;
    nghttp2_submit_response(call->conn->h2, call->stream_id, nv, 1, NULL);
}

/* The request headers are complete: route the call. */
static void call_start(api_call_t *call) {
    api_server_t *srv = call->srv;
    call->started_ns = util_now_mono_ns();
    if (call->conn->peer_cn && !(call->peer_cn = strdup(call->conn->peer_cn))) {
        call_end(call, API_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    if (!call->is_post) {
        reject_http(call, "405");
        return;
    }
    if (!call->is_grpc) {
        reject_http(call, "415");
        return;
    }
    const char *path = call->path ? call->path : "";
    const char *slash = path[0] == '/' ? strchr(path + 1, '/') : NULL;
    if (!slash) {
        call_end(call, API_GRPC_RESOURCE_EXHAUSTED, "malformed method name: \"%s\"", path);
        return;
    }
    call->method = method_find(srv, path);
    if (!call->method) {
        int n = (int)(slash - path - 1);
        if (service_known(srv, path + 1, (size_t)n))
            call_end(call, API_GRPC_UNIMPLEMENTED, "unknown method %s for service %.*s", slash + 1,
                     n, path + 1);
        else
            call_end(call, API_GRPC_UNIMPLEMENTED, "unknown service %.*s", n, path + 1);
        return;
    }
    if (call->encoding && strcmp(call->encoding, "identity") != 0) {
        call_end(call, API_GRPC_UNIMPLEMENTED,
                 "grpc: Decompressor is not installed for grpc-encoding \"%s\"", call->encoding);
        return;
    }
    if (call->timeout) {
        uint64_t ns;
        if (parse_timeout(call->timeout, &ns) != 0) {
            call_end(call, API_GRPC_INTERNAL, "transport: malformed grpc-timeout: %s",
                     call->timeout);
            return;
        }
        call->deadline_ns = util_now_mono_ns() + ns;
        call->timer = malloc(sizeof(*call->timer));
        if (!call->timer || uv_timer_init(srv->loop, call->timer) != 0) {
            free(call->timer);
            call->timer = NULL;
            call_end(call, API_GRPC_RESOURCE_EXHAUSTED, "out of memory");
            return;
        }
        srv->open_handles++;
        call->timer->data = call;
        uint64_t ms = ns / 1000000 + (ns % 1000000 != 0);
        uv_timer_start(call->timer, on_deadline, ms, 0);
    }
    if (call->method->client_streaming || call->method->server_streaming) {
        const char *why;
        enum api_grpc_code g = gate_check(srv, call->method, NULL, &why);
        if (g != API_GRPC_OK) {
            call_end(call, g, "%s", why ? why : "");
            return;
        }
        call_take(call);
        call->method->on_open(call, call->method->arg);
    }
}

/* One whole request message. */
static void deliver(api_call_t *call, const uint8_t *data, size_t len) {
    const struct api_grpc_method *m = call->method;
    ProtobufCMessage *msg = NULL;
    if (!m->client_streaming && call->got_message)
        return; /* a unary call reads one message; grpc-go ignores the rest too */
    if (m->request) {
        msg = protobuf_c_message_unpack(m->request, NULL, len, data);
        if (!msg) {
            call_end(call, API_GRPC_INTERNAL,
                     "grpc: error unmarshalling request: proto: cannot parse invalid wire-format "
                     "data");
            return;
        }
    }
    if (!m->client_streaming && !m->server_streaming) {
        const char *why;
        enum api_grpc_code g = gate_check(call->srv, m, msg, &why);
        if (g != API_GRPC_OK) {
            if (msg)
                protobuf_c_message_free_unpacked(msg, NULL);
            call->got_message = true;
            call_end(call, g, "%s", why ? why : "");
            return;
        }
        call->got_message = true;
        call_take(call);
    }
    call->got_message = true;
    m->on_message(call, msg, data, len, m->arg);
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *user) {
    struct api_conn *c = user;
    api_call_t *call = stream_call(s, sid);
    (void)flags;
    if (!call || call->status_set || !call->method)
        return 0;
    api_server_t *srv = c->srv;
    size_t before = call->in.len;
    /* Messages in part, over every connection, are what a client can make the
     * server hold without its handlers seeing anything: bounded, with etcd's
     * answer for a server that is full. */
    if (srv->partial_bytes + len > srv->cfg.max_partial_request_bytes) {
        call_end(call, API_GRPC_RESOURCE_EXHAUSTED, "etcdserver: too many requests");
        srv->partial_bytes -= call->in.len;
        call->in.len = 0;
        return 0;
    }
    if (util_buf_append(&call->in, data, len) != 0) {
        call_end(call, API_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return 0;
    }
    size_t off = 0, limit = max_recv_bytes(srv);
    while (!call->status_set && call->in.len - off >= GRPC_PREFIX_LEN) {
        const uint8_t *p = (const uint8_t *)call->in.data + off;
        uint32_t n = get_be32(p + 1);
        if (n > limit) {
            call_end(call, API_GRPC_RESOURCE_EXHAUSTED,
                     "grpc: received message larger than max (%" PRIu32 " vs. %zu)", n, limit);
            break;
        }
        if (p[0] != 0) {
            call_end(call, API_GRPC_INTERNAL,
                     "grpc: compressed flag set with identity or empty encoding");
            break;
        }
        if (call->in.len - off < GRPC_PREFIX_LEN + (size_t)n)
            break;
        deliver(call, p + GRPC_PREFIX_LEN, n);
        off += GRPC_PREFIX_LEN + n;
    }
    if (call->status_set)
        off = call->in.len; /* nothing more of this request is read */
    api_buf_consume(&call->in, off);
    srv->partial_bytes = srv->partial_bytes - before + call->in.len;
    return 0;
}

static void on_end_stream(api_call_t *call) {
    if (call->status_set || !call->method)
        return;
    const struct api_grpc_method *m = call->method;
    if (!m->client_streaming) {
        if (!call->got_message)
            call_end(call, API_GRPC_INTERNAL, "grpc: the client sent no request message");
        return;
    }
    if (call->handler_owns && m->on_half_close)
        m->on_half_close(call, m->arg);
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *user) {
    api_call_t *call = stream_call(s, f->hd.stream_id);
    struct api_conn *c = user;
    if (f->hd.type == NGHTTP2_GOAWAY && f->goaway.error_code != NGHTTP2_NO_ERROR)
        LOG_DEBUG(c->srv->lg, "client sent GOAWAY", LOG_UINT("code", f->goaway.error_code));
    if (!call)
        return 0;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST)
        call_start(call);
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        on_end_stream(call);
    return 0;
}

/* After the status went out, a client still sending is told to stop (RST_STREAM
 * NO_ERROR), as grpc-go does. */
static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *user) {
    (void)user;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
        !nghttp2_session_get_stream_remote_close(s, f->hd.stream_id))
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_NO_ERROR);
    return 0;
}

/* A frame nghttp2 refused: a protocol error from the client. */
static int on_invalid_frame(nghttp2_session *s, const nghttp2_frame *f, int error, void *user) {
    struct api_conn *c = user;
    LOG_DEBUG(c->srv->lg, "invalid HTTP/2 frame from a client", LOG_INT("type", f->hd.type),
              LOG_INT("stream", f->hd.stream_id),
              LOG_INT("last_stream", nghttp2_session_get_last_proc_stream_id(s)),
              LOG_STR("error", nghttp2_strerror(error)));
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t sid, uint32_t error_code, void *user) {
    api_call_t *call = stream_call(s, sid);
    (void)error_code;
    (void)user;
    if (!call)
        return 0;
    nghttp2_session_set_stream_user_data(s, sid, NULL);
    call_unlink(call);
    call_mark_over(call);
    call_fire_cancel(call);
    call_maybe_free(call);
    return 0;
}

/* ---- the connection ---- */

int api_h2_start(struct api_conn *c) {
    nghttp2_session_callbacks *cb = NULL;
    nghttp2_option *opt = NULL;
    int rc = nghttp2_session_callbacks_new(&cb);
    if (rc == 0)
        rc = nghttp2_option_new(&opt);
    if (rc != 0)
        goto err;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_send_data_callback(cb, send_data);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
    /* grpc-go validates requests loosely and its clients rely on it: over a
     * unix socket the :authority is the socket's path, which nghttp2's strict
     * HTTP checks refuse. The gRPC checks that matter are made in call_start. */
    nghttp2_option_set_no_http_messaging(opt, 1);
    c->h2_preface_left = 24; /* the client preface goes to nghttp2 unparsed */
    rc = nghttp2_session_server_new2(&c->h2, cb, c, opt);
    if (rc != 0)
        goto err;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, c->srv->cfg.max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
    };
    rc = nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 2);
    if (rc == 0)
        rc = nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW);
err:
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    return rc == 0 ? 0 : -ENOMEM;
}

/* Hands bytes to nghttp2; returns 0 or nghttp2's error. */
static int h2_feed(struct api_conn *c, const uint8_t *p, size_t n) {
    if (n == 0 || c->closing)
        return 0;
    ssize_t r = nghttp2_session_mem_recv(c->h2, p, n);
    return r < 0 ? (int)r : 0;
}

/* Reads a frame header: RST_STREAM for a stream the client never opened is
 * dropped here. grpc-go ignores those, and grpc's C core sends them when it
 * cancels a call whose headers it had not sent yet; nghttp2 would take them
 * as a connection error (RFC 9113 6.4) and end every call on the connection. */
static bool h2_frame_dropped(struct api_conn *c, const uint8_t *hd) {
    uint32_t sid = get_be32(hd + 5) & 0x7fffffff;
    c->h2_payload_left = (size_t)hd[0] << 16 | (size_t)hd[1] << 8 | hd[2];
    if (hd[3] == NGHTTP2_HEADERS && (sid & 1) && sid > c->h2_max_stream)
        c->h2_max_stream = sid;
    c->h2_dropping = hd[3] == NGHTTP2_RST_STREAM && (sid & 1) && sid > c->h2_max_stream;
    return c->h2_dropping;
}

void api_h2_process(struct api_conn *c, const char *data, size_t len) {
    const uint8_t *p = (const uint8_t *)data;
    size_t i = 0, run = 0; /* bytes [run, i) are fed to nghttp2 as they are */
    int rc = 0;
    while (rc == 0 && i < len) {
        if (c->h2_preface_left) {
            size_t k = len - i < c->h2_preface_left ? len - i : c->h2_preface_left;
            c->h2_preface_left -= k;
            i += k;
        } else if (c->h2_payload_left) {
            size_t k = len - i < c->h2_payload_left ? len - i : c->h2_payload_left;
            if (c->h2_dropping) {
                rc = h2_feed(c, p + run, i - run);
                run = i + k;
            }
            c->h2_payload_left -= k;
            i += k;
        } else if (c->h2_hdr_len == 0 && len - i >= 9) {
            if (h2_frame_dropped(c, p + i)) {
                rc = h2_feed(c, p + run, i - run);
                run = i + 9;
            }
            i += 9;
        } else {
            /* A header split across reads: kept aside until whole. */
            size_t k = 9 - c->h2_hdr_len < len - i ? 9 - c->h2_hdr_len : len - i;
            rc = h2_feed(c, p + run, i - run);
            memcpy(c->h2_hdr + c->h2_hdr_len, p + i, k);
            c->h2_hdr_len += k;
            i += k;
            run = i;
            if (rc == 0 && c->h2_hdr_len == 9) {
                c->h2_hdr_len = 0;
                if (!h2_frame_dropped(c, c->h2_hdr))
                    rc = h2_feed(c, c->h2_hdr, 9);
            }
        }
    }
    if (rc == 0)
        rc = h2_feed(c, p + run, len - run);
    if (c->closing)
        return;
    if (rc < 0) {
        LOG_DEBUG(c->srv->lg, "closing an HTTP/2 connection",
                  LOG_STR("error", nghttp2_strerror(rc)));
        nghttp2_session_terminate_session(c->h2, NGHTTP2_PROTOCOL_ERROR);
    }
    api_h2_flush(c);
}

void api_h2_flush(struct api_conn *c) {
    struct util_buf b = {0};
    if (c->closing)
        return;
    c->sink = &b; /* where send_data puts DATA frames, in order with the rest */
    while (c->out_pending + b.len < c->srv->cfg.max_conn_output_bytes) {
        const uint8_t *d;
        size_t before = b.len;
        ssize_t n = nghttp2_session_mem_send(c->h2, &d);
        if (n == 0 && b.len > before)
            continue; /* a DATA frame went through send_data: there may be more */
        if (n < 0 || (n > 0 && util_buf_append(&b, d, (size_t)n) != 0)) {
            LOG_DEBUG(c->srv->lg, "closing an HTTP/2 connection",
                      LOG_STR("error", n < 0 ? nghttp2_strerror((int)n) : "out of memory"));
            c->sink = NULL;
            util_buf_free(&b);
            api_conn_close(c);
            return;
        }
        if (n == 0 || b.len >= H2_WRITE_CHUNK) {
            if (b.len && api_conn_write_take(c, b.data, b.len) != 0) {
                c->sink = NULL;
                return;
            }
            b = (struct util_buf){0};
            if (n == 0)
                break;
        }
    }
    c->sink = NULL;
    if (b.len && api_conn_write_take(c, b.data, b.len) != 0)
        return;
    if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2)) {
        LOG_DEBUG(c->srv->lg, "HTTP/2 session over (GOAWAY sent or received)");
        api_conn_end(c);
        return;
    }
    api_conn_set_reading(c, api_conn_can_take(c));
}

void api_h2_detach(struct api_conn *c) {
    while (c->calls) {
        api_call_t *call = c->calls;
        if (c->h2)
            nghttp2_session_set_stream_user_data(c->h2, call->stream_id, NULL);
        call_unlink(call);
        call_mark_over(call);
        call_fire_cancel(call);
        call_maybe_free(call);
    }
}

void api_h2_free(struct api_conn *c) {
    nghttp2_session_del(c->h2);
    c->h2 = NULL;
}
