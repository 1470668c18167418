/* client transport: the client handle, its loop thread, one HTTP/2 (h2c, prior
 * knowledge) connection at a time with nghttp2, gRPC framing, deadlines, and
 * moving to the next endpoint when a connection fails.
 *
 * Every call lives on the loop thread. It waits on the client's `waiting` list
 * until a connection is ready, then sits on that connection's list until its
 * HTTP/2 stream closes. A call whose caller was already answered (deadline,
 * cancel) is a zombie kept until its stream closes, so nghttp2 never holds a
 * pointer to freed memory. Calls are freed in three places only: stream close,
 * connection teardown, and the reaping pass over `waiting`. */
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"

enum { CONN_DIALING, CONN_READY, CONN_DEAD };

struct cl_conn {
    quoin_client_t *c;
    uv_tcp_t tcp;
    uv_connect_t creq;
    nghttp2_session *h2;
    int state;
    int busy;         /* inside nghttp2: no mem_send, no teardown */
    int dead_pending; /* killed while busy */
    int want_flush;
    uint64_t dial_deadline_ns;
    struct cl_call *calls;
    size_t ep;
    int goaway; /* on the client's draining list */
    struct cl_conn *next_drain;
};

struct cl_write {
    uv_write_t req;
    struct cl_conn *conn;
    char *data;
};

#define TICK_MS 10
#define BACKOFF_NS (100ull * 1000000ull)
#define MS_NS 1000000ull

static void conn_kill(struct cl_conn *conn);
static void conn_settle(struct cl_conn *conn);
static void conn_flush(struct cl_conn *conn);
static void client_kick(quoin_client_t *c);

void cl_error(quoin_error_t *e, int code, const char *fmt, ...) {
    va_list ap;
    if (!e)
        return;
    e->code = code;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

int cl_errno_of(const quoin_error_t *e) {
    if (e->code == QUOIN_OK)
        return 0;
    return e->code == QUOIN_DEADLINE_EXCEEDED ? -ETIMEDOUT : -EIO;
}

static void list_add(struct cl_call **head, struct cl_call *k) {
    k->prev = NULL;
    k->next = *head;
    if (*head)
        (*head)->prev = k;
    *head = k;
}

static void list_del(struct cl_call **head, struct cl_call *k) {
    if (k->prev)
        k->prev->next = k->next;
    else
        *head = k->next;
    if (k->next)
        k->next->prev = k->prev;
    k->prev = k->next = NULL;
}

int cl_on_loop_thread(const quoin_client_t *c) {
    uv_thread_t self = uv_thread_self();
    return uv_thread_equal(&self, &c->thread);
}

struct cl_call *cl_call_new(quoin_client_t *c, enum cl_kind kind, const char *path,
                            int deadline_ms) {
    struct cl_call *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    k->c = c;
    k->kind = kind;
    k->path = path;
    k->grpc_status = -1;
    k->retry_after_send = kind == CL_RANGE || kind == CL_LEASE_TTL ||
                          kind == CL_LEASE_KEEPALIVE_ONCE || kind == CL_STATUS ||
                          kind == CL_MEMBERS;
    if (deadline_ms >= 0) {
        int ms = deadline_ms > 0 ? deadline_ms : c->opts.default_deadline_ms;
        k->deadline_ns = util_now_mono_ns() + (uint64_t)ms * MS_NS;
    }
    return k;
}

/* Appends one gRPC length-prefixed message to the call's outgoing bytes. */
int cl_call_append_msg(struct cl_call *k, const ProtobufCMessage *m) {
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *p = malloc(5 + n);
    int rc;
    if (!p)
        return -ENOMEM;
    p[0] = 0;
    p[1] = (uint8_t)(n >> 24);
    p[2] = (uint8_t)(n >> 16);
    p[3] = (uint8_t)(n >> 8);
    p[4] = (uint8_t)n;
    protobuf_c_message_pack(m, p + 5);
    rc = util_buf_append(&k->out, p, 5 + n);
    free(p);
    return rc;
}

/* A unary request: the one message, then the end of the stream. */
int cl_call_set_msg(struct cl_call *k, const ProtobufCMessage *m) {
    k->half_close = 1;
    return cl_call_append_msg(k, m);
}

void cl_call_free(struct cl_call *k) {
    if (!k)
        return;
    util_buf_free(&k->out);
    util_buf_free(&k->in);
    util_buf_free(&k->msg);
    free(k);
}

void cl_finish(struct cl_call *k, quoin_resp_t *resp, const quoin_error_t *err) {
    assert(!k->done);
    k->done = 1;
    if (k->kind == CL_STREAM) {
        if (k->on_end)
            k->on_end(k, err);
        return;
    }
    if (k->cb)
        k->cb(k->arg, resp, err);
    else
        quoin_resp_free(resp);
}

/* ---- cross-thread hand-off ---- */

void cl_post(quoin_client_t *c, struct cl_job *j) {
    j->next = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->inbox_tail)
        c->inbox_tail->next = j;
    else
        c->inbox = j;
    c->inbox_tail = j;
    pthread_mutex_unlock(&c->mu);
    uv_async_send(&c->async);
}

static void on_async(uv_async_t *a) {
    quoin_client_t *c = a->data;
    struct cl_job *j, *next;
    pthread_mutex_lock(&c->mu);
    j = c->inbox;
    c->inbox = c->inbox_tail = NULL;
    pthread_mutex_unlock(&c->mu);
    for (; j; j = next) {
        next = j->next;
        j->fn(j);
    }
}

static void start_job(struct cl_job *j) {
    cl_start((struct cl_call *)j);
}

int cl_submit(struct cl_call *k) {
    if (cl_on_loop_thread(k->c)) {
        cl_start(k);
    } else {
        k->job.fn = start_job;
        cl_post(k->c, &k->job);
    }
    return 0;
}

/* ---- connection ---- */

static void conn_closed(uv_handle_t *h) {
    free(h->data);
}

static void on_write(uv_write_t *req, int status) {
    struct cl_write *w = (struct cl_write *)req;
    if (status < 0 && w->conn->state != CONN_DEAD)
        conn_kill(w->conn);
    free(w->data);
    free(w);
}

/* Sends whatever nghttp2 has queued, in one write. */
static void conn_flush(struct cl_conn *conn) {
    struct util_buf b = {0};
    const uint8_t *p;
    ssize_t n;
    if (conn->state != CONN_READY)
        return;
    if (conn->busy) {
        conn->want_flush = 1;
        return;
    }
    conn->busy++;
    do {
        conn->want_flush = 0;
        while ((n = nghttp2_session_mem_send(conn->h2, &p)) > 0) {
            if (util_buf_append(&b, p, (size_t)n) < 0) {
                conn->dead_pending = 1;
                break;
            }
        }
        if (n < 0)
            conn->dead_pending = 1;
    } while (conn->want_flush && !conn->dead_pending);
    conn->busy--;
    if (b.len && !conn->dead_pending) {
        struct cl_write *w = malloc(sizeof *w);
        uv_buf_t ub = uv_buf_init(b.data, (unsigned)b.len);
        if (!w) {
            util_buf_free(&b);
            conn_kill(conn);
            return;
        }
        w->conn = conn;
        w->data = b.data;
        if (uv_write(&w->req, (uv_stream_t *)&conn->tcp, &ub, 1, on_write) < 0) {
            free(w);
            util_buf_free(&b);
            conn_kill(conn);
        }
        return;
    }
    util_buf_free(&b);
    conn_settle(conn);
}

static ssize_t body_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud) {
    struct cl_call *k = src->ptr;
    size_t left = k->out.len - k->out_off;
    (void)s;
    (void)sid;
    (void)ud;
    if (left == 0) {
        if (k->half_close) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            return 0;
        }
        return NGHTTP2_ERR_DEFERRED;
    }
    if (len > left)
        len = left;
    memcpy(buf, k->out.data + k->out_off, len);
    k->out_off += len;
    if (k->out_off == k->out.len) {
        if (k->half_close)
            *flags |= NGHTTP2_DATA_FLAG_EOF;
        else
            k->out.len = k->out_off = 0;
    }
    return (ssize_t)len;
}

#define NV(n, v)                                                                                   \
    { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE }

static void send_call(struct cl_conn *conn, struct cl_call *k) {
    quoin_client_t *c = conn->c;
    char authority[300], timeout[32] = "";
    nghttp2_data_provider prd;
    int32_t sid;
    snprintf(authority, sizeof authority, "%s:%d", c->eps[conn->ep].host, c->eps[conn->ep].port);
    nghttp2_nv nva[] = {
        NV(":method", "POST"),
        NV(":scheme", "http"),
        NV(":path", k->path),
        NV(":authority", authority),
        NV("content-type", "application/grpc"),
        NV("te", "trailers"),
        NV("grpc-timeout", timeout),
    };
    size_t nn = 6;
    if (k->deadline_ns) {
        uint64_t now = util_now_mono_ns();
        uint64_t ms = k->deadline_ns > now ? (k->deadline_ns - now) / MS_NS : 0;
        /* gRPC allows at most 8 digits: long deadlines go in seconds */
        if (ms > 99999999)
            snprintf(timeout, sizeof timeout, "%lluS", (unsigned long long)(ms / 1000));
        else
            snprintf(timeout, sizeof timeout, "%llum", (unsigned long long)(ms ? ms : 1));
        nva[6].valuelen = strlen(timeout);
        nn = 7;
    }
    prd.source.ptr = k;
    prd.read_callback = body_read;
    k->out_off = 0;
    k->sent = 0;
    k->grpc_status = -1;
    k->grpc_message[0] = 0;
    k->in.len = 0;
    k->msg.len = 0;
    sid = nghttp2_submit_request(conn->h2, NULL, nva, nn, &prd, k);
    if (sid < 0) {
        quoin_error_t e;
        cl_error(&e, 13, "http2: %s", nghttp2_strerror(sid));
        cl_finish(k, NULL, &e);
        cl_call_free(k);
        return;
    }
    k->stream_id = sid;
    k->conn = conn;
    list_add(&conn->calls, k);
}

/* Queues another message on an open stream call (watch / keep-alive). */
int cl_stream_write(struct cl_call *k, const ProtobufCMessage *m) {
    int rc = cl_call_append_msg(k, m);
    if (rc < 0)
        return rc;
    if (k->conn && k->conn->state == CONN_READY) {
        nghttp2_session_resume_data(k->conn->h2, k->stream_id);
        conn_flush(k->conn);
    }
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud) {
    struct cl_call *k = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    (void)flags;
    (void)ud;
    if (!k)
        return 0;
    if (namelen == 11 && !memcmp(name, "grpc-status", 11)) {
        k->grpc_status = atoi((const char *)value);
    } else if (namelen == 12 && !memcmp(name, "grpc-message", 12)) {
        /* percent-decoded, as gRPC encodes it */
        size_t o = 0;
        for (size_t i = 0; i < valuelen && o + 1 < sizeof k->grpc_message; i++) {
            unsigned x;
            if (value[i] == '%' && i + 2 < valuelen &&
                sscanf((const char *)value + i + 1, "%2x", &x) == 1) {
                k->grpc_message[o++] = (char)x;
                i += 2;
            } else {
                k->grpc_message[o++] = (char)value[i];
            }
        }
        k->grpc_message[o] = 0;
    }
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                   void *ud) {
    struct cl_call *k = nghttp2_session_get_stream_user_data(s, sid);
    size_t off = 0;
    (void)flags;
    (void)ud;
    if (!k || k->done)
        return 0;
    if (util_buf_append(&k->in, data, len) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    while (k->in.len - off >= 5) {
        const uint8_t *p = (const uint8_t *)k->in.data + off;
        size_t n = (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
        if (k->in.len - off < 5 + n)
            break;
        if (k->kind == CL_STREAM) {
            if (!k->done && k->on_msg)
                k->on_msg(k, p + 5, n);
        } else {
            k->msg.len = 0;
            if (util_buf_append(&k->msg, p + 5, n) < 0)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        off += 5 + n;
    }
    memmove(k->in.data, k->in.data + off, k->in.len - off);
    k->in.len -= off;
    return 0;
}

/* A GOAWAY: the calls already on this connection finish there; new calls
 * open a new connection. */
static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
    struct cl_conn *conn = ud;
    quoin_client_t *c = conn->c;
    (void)s;
    if (f->hd.type != NGHTTP2_GOAWAY || conn->goaway || conn->state != CONN_READY)
        return 0;
    conn->goaway = 1;
    conn->next_drain = c->draining;
    c->draining = conn;
    if (c->conn == conn)
        c->conn = NULL;
    return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
    (void)ud;
    if ((f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        struct cl_call *k = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        if (k)
            k->sent = 1;
    }
    return 0;
}

static int deadline_passed(const struct cl_call *k, uint64_t now) {
    return k->deadline_ns && now >= k->deadline_ns;
}

static int on_stream_close(nghttp2_session *s, int32_t sid, uint32_t code, void *ud) {
    struct cl_conn *conn = ud;
    quoin_client_t *c = conn->c;
    struct cl_call *k = nghttp2_session_get_stream_user_data(s, sid);
    quoin_error_t e = {0};
    quoin_resp_t *resp = NULL;
    if (!k)
        return 0;
    list_del(&conn->calls, k);
    k->conn = NULL;
    if (k->done) {
        cl_call_free(k);
        return 0;
    }
    if (code == NGHTTP2_REFUSED_STREAM && k->kind != CL_STREAM && !c->closing &&
        !deadline_passed(k, util_now_mono_ns())) {
        /* never processed (the server is going away): send it again */
        list_add(&c->waiting, k);
        client_kick(c);
        return 0;
    }
    if (k->grpc_status < 0)
        cl_error(&e, QUOIN_UNAVAILABLE, "stream closed without a gRPC status (http2 error %u)",
                 code);
    else if (k->grpc_status != 0)
        cl_error(&e, k->grpc_status, "%s", k->grpc_message);
    if (e.code == QUOIN_UNAVAILABLE && k->kind != CL_STREAM && c->n_eps > 1 && !c->closing &&
        !deadline_passed(k, util_now_mono_ns())) {
        /* the member cannot serve (no leader): try the next endpoint, after
         * a pause so that a cluster without a leader is not hammered */
        list_add(&c->waiting, k);
        if (c->conn == conn) {
            c->reconnect_at_ns = util_now_mono_ns() + BACKOFF_NS;
            conn_kill(conn);
        }
        return 0;
    }
    if (e.code == 0 && k->kind != CL_STREAM) {
        int rc = cl_decode(k->kind, (const uint8_t *)k->msg.data, k->msg.len, &resp);
        if (rc < 0)
            cl_error(&e, 13, "cannot decode the answer to %s", k->path);
    }
    cl_finish(k, e.code ? NULL : resp, e.code ? &e : NULL);
    cl_call_free(k);
    return 0;
}

/* Hands every call the connection had to its next step, then closes it. */
static void conn_teardown(struct cl_conn *conn) {
    quoin_client_t *c = conn->c;
    uint64_t now = util_now_mono_ns();
    struct cl_call *k;
    while ((k = conn->calls)) {
        list_del(&conn->calls, k);
        k->conn = NULL;
        if (k->done) {
            cl_call_free(k);
        } else if (!c->closing && k->kind != CL_STREAM && (!k->sent || k->retry_after_send) &&
                   !deadline_passed(k, now)) {
            list_add(&c->waiting, k);
        } else {
            quoin_error_t e;
            if (c->closing)
                cl_error(&e, QUOIN_CANCELLED, "client closed");
            else
                cl_error(&e, QUOIN_UNAVAILABLE, "connection to %s lost", c->eps[conn->ep].text);
            cl_finish(k, NULL, &e);
            cl_call_free(k);
        }
    }
    if (conn->goaway) {
        struct cl_conn **p = &c->draining;
        while (*p != conn)
            p = &(*p)->next_drain;
        *p = conn->next_drain;
    }
    if (conn->h2)
        nghttp2_session_del(conn->h2);
    conn->h2 = NULL;
    uv_close((uv_handle_t *)&conn->tcp, conn_closed);
    client_kick(c);
}

static void conn_kill(struct cl_conn *conn) {
    quoin_client_t *c = conn->c;
    if (conn->state == CONN_DEAD)
        return;
    if (c->conn == conn) {
        c->conn = NULL;
        /* atomic: quoin_client_endpoint reads it from other threads */
        __atomic_store_n(&c->cur, (c->cur + 1) % c->n_eps, __ATOMIC_RELAXED);
        if (conn->state == CONN_DIALING && ++c->failed_row >= c->n_eps) {
            c->failed_row = 0;
            c->reconnect_at_ns = util_now_mono_ns() + BACKOFF_NS;
        }
    }
    conn->state = CONN_DEAD;
    if (conn->busy) {
        conn->dead_pending = 1;
        return;
    }
    conn_teardown(conn);
}

/* Finishes a kill or failure noticed while nghttp2 was busy. */
static void conn_settle(struct cl_conn *conn) {
    if (!conn->dead_pending)
        return;
    conn->dead_pending = 0;
    if (conn->state == CONN_DEAD)
        conn_teardown(conn);
    else
        conn_kill(conn);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
    (void)h;
    if (hint > 65536)
        hint = 65536;
    b->base = malloc(hint);
    b->len = b->base ? hint : 0;
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
    struct cl_conn *conn = st->data;
    if (n < 0) {
        free(b->base);
        conn_kill(conn);
        return;
    }
    if (n > 0 && conn->state == CONN_READY) {
        ssize_t rc;
        conn->busy++;
        rc = nghttp2_session_mem_recv(conn->h2, (const uint8_t *)b->base, (size_t)n);
        conn->busy--;
        if (rc < 0)
            conn->dead_pending = 1;
        free(b->base);
        if (conn->dead_pending)
            conn_settle(conn);
        else
            conn_flush(conn);
        return;
    }
    free(b->base);
}

static void move_waiting(quoin_client_t *c, struct cl_conn *conn) {
    struct cl_call *k;
    while ((k = c->waiting)) {
        list_del(&c->waiting, k);
        if (k->done)
            cl_call_free(k);
        else
            send_call(conn, k);
    }
    conn_flush(conn);
}

static void on_connect(uv_connect_t *req, int status) {
    struct cl_conn *conn = req->data;
    quoin_client_t *c = conn->c;
    nghttp2_session_callbacks *cbs;
    nghttp2_settings_entry set[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 24},
                                    {NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    if (conn->state == CONN_DEAD)
        return;
    if (status < 0)
        goto err;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        goto err;
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    status = nghttp2_session_client_new(&conn->h2, cbs, conn);
    nghttp2_session_callbacks_del(cbs);
    if (status != 0)
        goto err;
    if (nghttp2_submit_settings(conn->h2, NGHTTP2_FLAG_NONE, set, 2) != 0 ||
        nghttp2_session_set_local_window_size(conn->h2, NGHTTP2_FLAG_NONE, 0, 1 << 28) != 0)
        goto err;
    uv_tcp_nodelay(&conn->tcp, 1);
    if (uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read) < 0)
        goto err;
    conn->state = CONN_READY;
    c->failed_row = 0;
    move_waiting(c, conn);
    return;
err:
    conn_kill(conn);
}

static int resolve(const struct cl_endpoint *ep, struct sockaddr_storage *ss) {
    struct addrinfo hints = {0}, *res = NULL;
    char port[16];
    if (uv_ip4_addr(ep->host, ep->port, (struct sockaddr_in *)ss) == 0 ||
        uv_ip6_addr(ep->host, ep->port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    snprintf(port, sizeof port, "%d", ep->port);
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(ep->host, port, &hints, &res) != 0 || !res)
        return -EHOSTUNREACH;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

static void dial(quoin_client_t *c) {
    struct cl_conn *conn = calloc(1, sizeof *conn);
    struct sockaddr_storage ss;
    if (!conn)
        return;
    conn->c = c;
    conn->ep = c->cur;
    conn->state = CONN_DIALING;
    conn->dial_deadline_ns = util_now_mono_ns() + (uint64_t)c->opts.dial_timeout_ms * MS_NS;
    uv_tcp_init(c->loop, &conn->tcp);
    conn->tcp.data = conn;
    conn->creq.data = conn;
    c->conn = conn;
    if (resolve(&c->eps[c->cur], &ss) < 0 ||
        uv_tcp_connect(&conn->creq, &conn->tcp, (struct sockaddr *)&ss, on_connect) < 0)
        conn_kill(conn);
}

static int has_work(const quoin_client_t *c) {
    return c->waiting || c->streams || (c->conn && c->conn->calls);
}

/* Keeps the loop alive (on_loop clients) only while there is work: the tick
 * and the connection are unreferenced when idle. */
static void update_ref(quoin_client_t *c) {
    int busy = has_work(c);
    if (c->closing || c->threaded)
        return;
    if (busy)
        uv_ref((uv_handle_t *)&c->tick);
    else
        uv_unref((uv_handle_t *)&c->tick);
    if (c->conn && busy)
        uv_ref((uv_handle_t *)&c->conn->tcp);
    else if (c->conn)
        uv_unref((uv_handle_t *)&c->conn->tcp);
}

static void client_kick(quoin_client_t *c) {
    if (c->closing)
        return;
    update_ref(c);
    if (!c->waiting)
        return;
    if (!c->conn) {
        if (util_now_mono_ns() < c->reconnect_at_ns)
            return;
        dial(c);
    }
    if (c->conn && c->conn->state == CONN_READY)
        move_waiting(c, c->conn);
}

void cl_start(struct cl_call *k) {
    quoin_client_t *c = k->c;
    if (c->closing) {
        quoin_error_t e;
        cl_error(&e, QUOIN_CANCELLED, "client closed");
        cl_finish(k, NULL, &e);
        cl_call_free(k);
        return;
    }
    list_add(&c->waiting, k);
    client_kick(c);
}

/* Answers the caller now; the stream (if any) is reset and the call freed when
 * it closes. */
void cl_call_cancel(struct cl_call *k) {
    k->done = 1;
    if (k->conn && k->conn->state == CONN_READY) {
        nghttp2_submit_rst_stream(k->conn->h2, NGHTTP2_FLAG_NONE, k->stream_id, NGHTTP2_CANCEL);
        conn_flush(k->conn);
    }
}

static struct cl_call *first_expired(struct cl_call *k, uint64_t now) {
    while (k && (k->done || !deadline_passed(k, now)))
        k = k->next;
    return k;
}

/* Answers every call past its deadline. The lists are scanned afresh after
 * each answer: the caller's callback may add calls or lose the connection. */
static void expire(quoin_client_t *c, uint64_t now) {
    for (;;) {
        struct cl_call *k = first_expired(c->waiting, now);
        if (!k && c->conn)
            k = first_expired(c->conn->calls, now);
        for (struct cl_conn *d = c->draining; !k && d; d = d->next_drain)
            k = first_expired(d->calls, now);
        if (!k)
            return;
        quoin_error_t e;
        cl_error(&e, QUOIN_DEADLINE_EXCEEDED, "context deadline exceeded");
        cl_finish(k, NULL, &e);
        cl_call_cancel(k);
    }
}

static void on_tick(uv_timer_t *t) {
    quoin_client_t *c = t->data;
    uint64_t now = util_now_mono_ns();
    struct cl_call *k, *next;
    if (c->closing)
        return;
    expire(c, now);
    for (k = c->waiting; k; k = next) {
        next = k->next;
        if (k->done) {
            list_del(&c->waiting, k);
            cl_call_free(k);
        }
    }
    if (c->conn && c->conn->state == CONN_DIALING && now > c->conn->dial_deadline_ns)
        conn_kill(c->conn);
    cl_streams_tick(c);
    client_kick(c);
}

/* ---- client ---- */

static int parse_endpoints(quoin_client_t *c, const char *list) {
    const char *p = list;
    if (!list || !*list)
        return -EINVAL;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        struct cl_endpoint *ep, *grown;
        const char *h, *colon;
        char *stop;
        long port;
        grown = realloc(c->eps, (c->n_eps + 1) * sizeof *c->eps);
        if (!grown)
            return -ENOMEM;
        c->eps = grown;
        ep = &c->eps[c->n_eps];
        memset(ep, 0, sizeof *ep);
        ep->text = strndup(p, len);
        if (!ep->text)
            return -ENOMEM;
        c->n_eps++;
        h = ep->text;
        if (!strncmp(h, "http://", 7))
            h += 7;
        colon = strrchr(h, ':');
        if (!colon || colon == h || (size_t)(colon - h) >= sizeof ep->host)
            return -EINVAL;
        port = strtol(colon + 1, &stop, 10);
        if (*stop || port <= 0 || port > 65535)
            return -EINVAL;
        if (*h == '[' && colon[-1] == ']')
            memcpy(ep->host, h + 1, (size_t)(colon - h) - 2);
        else
            memcpy(ep->host, h, (size_t)(colon - h));
        if (!strcmp(ep->host, "localhost"))
            strcpy(ep->host, "127.0.0.1");
        ep->port = (int)port;
        p += len;
        if (*p == ',')
            p++;
    }
    return 0;
}

static void free_struct(quoin_client_t *c) {
    for (size_t i = 0; i < c->n_eps; i++)
        free(c->eps[i].text);
    free(c->eps);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static int client_init(quoin_client_t *c, uv_loop_t *loop, const char *endpoints,
                       const quoin_options_t *opts) {
    int rc;
    c->loop = loop;
    if (opts)
        c->opts = *opts;
    if (c->opts.dial_timeout_ms <= 0)
        c->opts.dial_timeout_ms = 2000;
    if (c->opts.default_deadline_ms <= 0)
        c->opts.default_deadline_ms = 5000;
    if ((rc = parse_endpoints(c, endpoints)) < 0)
        return rc;
    if ((rc = uv_async_init(loop, &c->async, on_async)) < 0)
        return rc;
    c->async.data = c;
    uv_timer_init(loop, &c->tick);
    c->tick.data = c;
    c->handles_open = 2;
    uv_timer_start(&c->tick, on_tick, TICK_MS, TICK_MS);
    return 0;
}

int quoin_client_new_on_loop(uv_loop_t *loop, const char *endpoints, const quoin_options_t *opts,
                             quoin_client_t **out) {
    quoin_client_t *c = calloc(1, sizeof *c);
    int rc;
    if (!c)
        return -ENOMEM;
    pthread_mutex_init(&c->mu, NULL);
    c->thread = uv_thread_self();
    rc = client_init(c, loop, endpoints, opts);
    if (rc < 0)
        goto err;
    uv_unref((uv_handle_t *)&c->async);
    update_ref(c);
    *out = c;
    return 0;
err:
    if (c->handles_open) {
        /* async and timer exist only if every earlier step worked */
        uv_close((uv_handle_t *)&c->async, NULL);
        uv_close((uv_handle_t *)&c->tick, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
    }
    free_struct(c);
    return rc;
}

/* The client's own thread. A write to a connection the server has closed
 * raises SIGPIPE in the writing thread; blocked here, it stays pending on this
 * thread only and the write fails with EPIPE, so the host process lives. */
static void loop_main(void *arg) {
    quoin_client_t *c = arg;
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, NULL);
    uv_run(c->loop, UV_RUN_DEFAULT);
}

int quoin_client_new(const char *endpoints, const quoin_options_t *opts, quoin_client_t **out) {
    quoin_client_t *c = calloc(1, sizeof *c);
    int rc;
    if (!c)
        return -ENOMEM;
    pthread_mutex_init(&c->mu, NULL);
    if ((rc = uv_loop_init(&c->own_loop)) < 0) {
        free_struct(c);
        return rc;
    }
    rc = client_init(c, &c->own_loop, endpoints, opts);
    if (rc < 0)
        goto err;
    c->threaded = 1;
    /* c->thread is written before the loop thread can read it: it only reads
     * it in callbacks of jobs posted after this function returns. */
    if ((rc = uv_thread_create(&c->thread, loop_main, c)) < 0)
        goto err;
    *out = c;
    return 0;
err:
    if (c->handles_open) {
        uv_close((uv_handle_t *)&c->async, NULL);
        uv_close((uv_handle_t *)&c->tick, NULL);
        uv_run(&c->own_loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&c->own_loop);
    free_struct(c);
    return rc;
}

const char *quoin_client_endpoint(const quoin_client_t *c) {
    return c->eps[__atomic_load_n(&c->cur, __ATOMIC_RELAXED)].text;
}

static void handle_closed(uv_handle_t *h) {
    quoin_client_t *c = h->data;
    if (--c->handles_open == 0 && !c->threaded)
        free_struct(c);
}

/* On the loop thread: answers everything with Cancelled and closes. */
static void client_close(quoin_client_t *c) {
    struct cl_call *k;
    quoin_error_t e;
    c->closing = 1;
    on_async(&c->async); /* calls posted before the close run (and are cancelled) */
    cl_error(&e, QUOIN_CANCELLED, "client closed");
    cl_streams_destroy(c);
    while ((k = c->waiting)) {
        list_del(&c->waiting, k);
        if (!k->done)
            cl_finish(k, NULL, &e);
        cl_call_free(k);
    }
    if (c->conn)
        conn_kill(c->conn);
    for (struct cl_conn *d = c->draining, *next; d; d = next) {
        next = d->next_drain;
        conn_kill(d); /* unlinks d, now or once nghttp2 is done with it */
    }
    uv_close((uv_handle_t *)&c->async, handle_closed);
    uv_close((uv_handle_t *)&c->tick, handle_closed);
}

static void close_job(struct cl_job *j) {
    client_close(*(quoin_client_t **)(j + 1));
}

void quoin_client_free(quoin_client_t *c) {
    if (!c)
        return;
    if (!c->threaded) {
        client_close(c);
        return;
    }
    struct {
        struct cl_job job;
        quoin_client_t *c;
    } j = {{close_job, NULL}, c};
    cl_post(c, &j.job);
    uv_thread_join(&c->thread);
    uv_loop_close(&c->own_loop);
    free_struct(c);
}

/* ---- blocking wrapper ---- */

struct cl_sync {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    quoin_resp_t *resp;
    quoin_error_t err;
};

static void sync_cb(void *arg, quoin_resp_t *resp, const quoin_error_t *err) {
    struct cl_sync *s = arg;
    pthread_mutex_lock(&s->mu);
    s->resp = resp;
    if (err)
        s->err = *err;
    s->done = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

int cl_run_sync(quoin_client_t *c, struct cl_call *k, quoin_resp_t **resp, quoin_error_t *err) {
    struct cl_sync s = {.err = {0}};
    int rc;
    if (!c->threaded || cl_on_loop_thread(c)) {
        cl_call_free(k);
        cl_error(err, QUOIN_FAILED_PRECONDITION, "blocking call on the client's loop thread");
        return -EDEADLK;
    }
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    k->cb = sync_cb;
    k->arg = &s;
    cl_submit(k);
    pthread_mutex_lock(&s.mu);
    while (!s.done)
        pthread_cond_wait(&s.cv, &s.mu);
    pthread_mutex_unlock(&s.mu);
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
    rc = cl_errno_of(&s.err);
    if (err)
        *err = s.err;
    if (resp)
        *resp = s.resp;
    else
        quoin_resp_free(s.resp);
    return rc;
}
