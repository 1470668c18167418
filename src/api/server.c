/* api server: listening sockets, accepted connections, the protocol sniffer
 * that tells HTTP/2 from HTTP/1.1, and the wakeup queue that lets handlers on
 * other threads answer on the loop thread. */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/internal.h"

#define API_READ_CHUNK (64 * 1024)
/* After a final answer, what a client may still send is read and dropped up to
 * this much before the socket is closed (closing with unread input makes the
 * kernel send a reset, which can destroy the answer before the client reads it). */
#define API_LINGER_MAX (1024 * 1024)

static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define H2_PREFACE_LEN (sizeof(h2_preface) - 1)

void api_config_default(struct api_config *cfg) {
    cfg->max_request_bytes = 1536 * 1024;
    cfg->max_header_bytes = 1 << 20;
    cfg->max_conn_output_bytes = 4 << 20;
    cfg->max_stream_output_bytes = 4 << 20;
    cfg->max_concurrent_streams = 4096;
    cfg->max_partial_request_bytes = 256u << 20;
    cfg->reuse_port = false;
}

/* ---- wakeups from other threads ---- */

void api_wake_post(api_server_t *srv, struct api_wake *w) {
    pthread_mutex_lock(&srv->wake_mu);
    if (!w->queued) {
        w->queued = true;
        w->next = NULL;
        *srv->wake_tail = w;
        srv->wake_tail = &w->next;
    }
    /* Sent under the lock: once the lock is released the loop may run the item
     * and free the server, so nothing after the unlock may touch srv. While the
     * loop is reading input it drains the queue itself when done, so answers
     * given inline by handlers cost no wakeup. */
    if (!srv->draining_soon)
        uv_async_send(&srv->wake_async);
    pthread_mutex_unlock(&srv->wake_mu);
}

bool api_wake_queued(api_server_t *srv, struct api_wake *w) {
    pthread_mutex_lock(&srv->wake_mu);
    bool queued = w->queued;
    pthread_mutex_unlock(&srv->wake_mu);
    return queued;
}

static void server_maybe_finish(api_server_t *srv);

/* Runs what handlers posted, then flushes the connections they answered on. */
static void wake_drain(api_server_t *srv) {
    pthread_mutex_lock(&srv->wake_mu);
    struct api_wake *w = srv->wake_head;
    srv->wake_head = NULL;
    srv->wake_tail = &srv->wake_head;
    srv->draining_soon = false;
    pthread_mutex_unlock(&srv->wake_mu);
    while (w) {
        /* An item stays marked queued until its turn: posted again meanwhile,
         * it is not relinked (which would cut this list), and its run sees
         * what the new post added. */
        pthread_mutex_lock(&srv->wake_mu);
        struct api_wake *next = w->next;
        w->queued = false;
        pthread_mutex_unlock(&srv->wake_mu);
        w->run(w);
        w = next;
    }
    /* Connections are only freed by close callbacks, after this returns. */
    while (srv->flush_head) {
        struct api_conn *c = srv->flush_head;
        srv->flush_head = c->flush_next;
        c->flush_queued = false;
        api_h2_flush(c);
    }
}

static void on_wake(uv_async_t *a) {
    wake_drain(a->data);
}

void api_h2_flush_later(struct api_conn *c) {
    if (!c->flush_queued) {
        c->flush_queued = true;
        c->flush_next = c->srv->flush_head;
        c->srv->flush_head = c;
    }
}

void api_server_release(api_server_t *srv) {
    assert(srv->outstanding > 0);
    srv->outstanding--;
    server_maybe_finish(srv);
}

/* ---- connections ---- */

void api_buf_consume(struct util_buf *b, size_t n) {
    assert(n <= b->len);
    if (n == 0)
        return;
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

bool api_conn_can_take(const struct api_conn *c) {
    return !c->closing && c->out_pending <= c->srv->cfg.max_conn_output_bytes;
}

/* Reads go to the server's scratch buffer: an idle connection holds no read
 * buffer, and HTTP/2 input is handed to nghttp2 without a copy. */
static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
    struct api_conn *c = h->data;
    (void)hint;
    *buf = uv_buf_init(c->srv->scratch, API_READ_CHUNK);
}

/* Decides the protocol once enough bytes are in: the HTTP/2 preface, or HTTP/1.1. */
static void conn_sniff(struct api_conn *c) {
    size_t n = c->in.len < H2_PREFACE_LEN ? c->in.len : H2_PREFACE_LEN;
    if (memcmp(c->in.data, h2_preface, n) != 0)
        c->proto = API_PROTO_HTTP1;
    else if (n == H2_PREFACE_LEN)
        c->proto = API_PROTO_H2;
}

static void conn_process(struct api_conn *c) {
    if (c->proto == API_PROTO_SNIFF)
        conn_sniff(c);
    switch (c->proto) {
    case API_PROTO_SNIFF:
        return;
    case API_PROTO_HTTP1:
        api_http1_process(c);
        return;
    case API_PROTO_H2:
        if (!c->h2 && api_h2_start(c) != 0) {
            api_conn_close(c);
            return;
        }
        api_h2_process(c, c->in.data, c->in.len);
        c->in.len = 0;
        return;
    }
}

static void conn_read(struct api_conn *c, ssize_t nread);

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    struct api_conn *c = s->data;
    api_server_t *srv = c->srv;
    (void)buf;
    pthread_mutex_lock(&srv->wake_mu);
    srv->draining_soon = true;
    pthread_mutex_unlock(&srv->wake_mu);
    conn_read(c, nread);
    wake_drain(srv);
}

static void conn_read(struct api_conn *c, ssize_t nread) {
    if (nread < 0) {
        /* A client that half-closes after its request still gets the answer. */
        if (nread == UV_EOF && c->proto == API_PROTO_HTTP1 && !c->lingering &&
            (c->busy || c->out_pending)) {
            api_conn_set_reading(c, false);
            api_conn_end(c);
            return;
        }
        if (nread != UV_EOF)
            LOG_DEBUG(c->srv->lg, "client connection read failed",
                      LOG_STR("error", uv_strerror((int)nread)));
        api_conn_close(c);
        return;
    }
    if (c->lingering) {
        c->drained += (size_t)nread;
        if (c->drained > API_LINGER_MAX)
            api_conn_close(c);
        return;
    }
    const char *data = c->srv->scratch;
    if (c->ssl) {
        size_t before = c->in.len;
        int rc = api_tls_read(c, data, (size_t)nread);
        if (rc == -ECONNRESET) {
            conn_read(c, UV_EOF); /* close_notify is the client's EOF */
            return;
        }
        if (rc != 0) {
            api_conn_close(c);
            return;
        }
        if (c->in.len == before)
            return; /* handshake, or a record not complete yet */
        conn_process(c);
    } else if (c->proto == API_PROTO_H2 && c->in.len == 0) {
        api_h2_process(c, data, (size_t)nread);
    } else if (util_buf_append(&c->in, data, (size_t)nread) == 0) {
        conn_process(c);
    } else {
        api_conn_close(c);
        return;
    }
    /* Nothing left over: give the buffer back rather than keep it per connection. */
    if (c->in.len == 0) {
        util_buf_free(&c->in);
    }
}

void api_conn_set_reading(struct api_conn *c, bool on) {
    if (c->closing || c->reading == on)
        return;
    if (on) {
        if (uv_read_start(&c->h.stream, on_alloc, on_read) != 0) {
            api_conn_close(c);
            return;
        }
    } else {
        uv_read_stop(&c->h.stream);
    }
    c->reading = on;
}

void api_server_handle_closed(api_server_t *srv) {
    assert(srv->open_handles > 1);
    srv->open_handles--;
    server_maybe_finish(srv);
}

static void on_conn_closed(uv_handle_t *h) {
    struct api_conn *c = h->data;
    api_server_t *srv = c->srv;
    if (c->h2)
        api_h2_free(c);
    if (c->ssl)
        api_tls_conn_free(c);
    free(c->in.data);
    free(c);
    api_server_handle_closed(srv);
}

void api_conn_close(struct api_conn *c) {
    if (c->closing)
        return;
    c->closing = true;
    c->reading = false;
    api_http1_detach(c);
    api_h2_detach(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        c->srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    uv_close(&c->h.handle, on_conn_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    (void)status;
    free(req);
}

/* Output is flushed: half-close, then drop input until the client closes. */
static void conn_linger(struct api_conn *c) {
    if (c->ssl && api_tls_shutdown(c) != 0)
        return; /* the connection is closing */
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (!req || uv_shutdown(req, &c->h.stream, on_shutdown) != 0) {
        free(req);
        api_conn_close(c);
        return;
    }
    c->lingering = true;
    c->in.len = 0;
    api_conn_set_reading(c, true);
}

void api_conn_end(struct api_conn *c) {
    c->close_after_write = true;
    if (c->out_pending == 0 && !c->busy && !c->closing && !c->lingering)
        conn_linger(c);
}

struct conn_write {
    uv_write_t req;
    struct api_conn *conn;
    size_t len;
    char *data;
};

static void on_written(uv_write_t *req, int status) {
    struct conn_write *w = (struct conn_write *)req;
    struct api_conn *c = w->conn;
    c->out_pending -= w->len;
    free(w->data);
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        LOG_DEBUG(c->srv->lg, "client connection write failed",
                  LOG_STR("error", uv_strerror(status)));
        api_conn_close(c);
        return;
    }
    if (c->close_after_write) {
        api_conn_end(c);
        return;
    }
    /* Room again for answers: pick up requests and output that waited for it. */
    if (c->h2)
        api_h2_flush(c);
    else if (c->proto == API_PROTO_HTTP1 && api_conn_can_take(c))
        api_http1_process(c);
}

int api_conn_write_take(struct api_conn *c, char *data, size_t len) {
    if (!c->ssl)
        return api_conn_write_raw(c, data, len);
    int rc = c->closing ? -EPIPE : api_tls_write(c, data, len);
    free(data);
    if (rc != 0)
        api_conn_close(c);
    return rc;
}

int api_conn_write_raw(struct api_conn *c, char *data, size_t len) {
    struct conn_write *w = NULL;
    int rc = -EPIPE;
    if (c->closing)
        goto err;
    rc = -ENOMEM;
    w = malloc(sizeof(*w));
    if (!w)
        goto err;
    w->conn = c;
    w->len = len;
    w->data = data;
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    rc = uv_write(&w->req, &c->h.stream, &b, 1, on_written);
    if (rc != 0)
        goto err;
    c->out_pending += len;
    return 0;
err:
    free(w);
    free(data);
    api_conn_close(c);
    return rc;
}

int api_conn_write(struct api_conn *c, const void *data, size_t len) {
    char *copy = malloc(len ? len : 1);
    if (!copy) {
        api_conn_close(c);
        return -ENOMEM;
    }
    memcpy(copy, data, len);
    return api_conn_write_take(c, copy, len);
}

static void on_connection(uv_stream_t *ls, int status) {
    struct api_listener *l = ls->data;
    api_server_t *srv = l->srv;
    if (status < 0) {
        LOG_WARN(srv->lg, "accept failed", LOG_STR("address", l->addr),
                 LOG_STR("error", uv_strerror(status)));
        return;
    }
    struct api_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return; /* the pending connection stays in the backlog until memory frees */
    c->srv = srv;
    int rc =
        l->unix_socket ? uv_pipe_init(srv->loop, &c->h.pipe, 0) : uv_tcp_init(srv->loop, &c->h.tcp);
    if (rc != 0) {
        free(c);
        return;
    }
    c->h.handle.data = c;
    srv->open_handles++;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    if (uv_accept(ls, &c->h.stream) != 0) {
        api_conn_close(c);
        return;
    }
    if (!l->unix_socket) {
        uv_tcp_nodelay(&c->h.tcp, 1);
        /* As Go's listeners do (15 s): a client that vanished without a FIN
         * (power loss, a dropped NAT entry) is found and its watches freed. */
        uv_tcp_keepalive(&c->h.tcp, 1, 15);
    }
    if (l->tls && api_tls_conn_start(c) != 0) {
        api_conn_close(c);
        return;
    }
    api_conn_set_reading(c, true);
}

/* ---- listening ---- */

/* Go's spelling of a system error: strerror's text with a lower-case first letter. */
static void go_errstr(int uverr, char *out, size_t n) {
    snprintf(out, n, "%s", strerror(-uverr));
    out[0] = (char)tolower((unsigned char)out[0]);
}

/* A socket with SO_REUSEPORT for the handle, so the servers of several io
 * loops can listen on one address and the kernel spreads connections. */
static int open_reuseport(uv_tcp_t *tcp, int family) {
    int one = 1;
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    int rc = uv_tcp_open(tcp, fd);
    if (rc != 0)
        close(fd);
    return rc;
}

static void on_listener_closed(uv_handle_t *h) {
    struct api_listener *l = h->data;
    api_server_t *srv = l->srv;
    free(l);
    api_server_handle_closed(srv);
}

/* Ends a listen: on failure the error as Go words it ("listen tcp
 * 127.0.0.1:2379: bind: address already in use") and the handle closed; on
 * success the listener kept and the address logged. */
static int listen_done(api_server_t *srv, struct api_listener *l, int rc, struct util_err *err) {
    if (rc != 0) {
        char why[128];
        go_errstr(rc, why, sizeof(why));
        util_errorf(err, rc, "listen %s %s: bind: %s", l->unix_socket ? "unix" : "tcp", l->addr,
                    why);
        uv_close(&l->h.handle, on_listener_closed);
        return rc;
    }
    l->next = srv->listeners;
    srv->listeners = l;
    if (l->tls)
        LOG_INFO(srv->lg, "serving client traffic securely", LOG_STR("address", l->addr));
    else
        LOG_INFO(srv->lg, "serving client traffic insecurely; this is strongly discouraged!",
                 LOG_STR("address", l->addr));
    return 0;
}

/* Listens on a unix socket: unix://path (etcd takes what follows the scheme
 * as the path, "localhost:2379" included). A stale socket file from an earlier
 * run is removed first, as etcd does. */
static int listen_unix(api_server_t *srv, const char *url, const char *path, bool tls,
                       struct util_err *err) {
    struct api_listener *l;
    int rc;
    if (!*path || strlen(path) >= sizeof(l->addr))
        return util_errorf(err, -EINVAL, "client URL %s: bad socket path", url);
    l = calloc(1, sizeof(*l));
    if (!l)
        return util_errorf(err, -ENOMEM, "out of memory");
    l->srv = srv;
    l->tls = tls;
    l->unix_socket = true;
    snprintf(l->addr, sizeof(l->addr), "%s", path);
    rc = uv_pipe_init(srv->loop, &l->h.pipe, 0);
    if (rc != 0) {
        util_errorf(err, rc, "listen unix %s: %s", path, uv_strerror(rc));
        free(l);
        return rc;
    }
    l->h.handle.data = l;
    srv->open_handles++;
    unlink(path);
    rc = uv_pipe_bind(&l->h.pipe, path);
    if (rc == 0)
        rc = uv_listen(&l->h.stream, 511, on_connection);
    return listen_done(srv, l, rc, err);
}

int api_server_listen(api_server_t *srv, const char *url, struct util_err *err) {
    bool unix_socket = strncmp(url, "unix://", 7) == 0 || strncmp(url, "unixs://", 8) == 0;
    bool tls = strncmp(url, "https://", 8) == 0 || strncmp(url, "unixs://", 8) == 0;
    if (tls && !srv->tls_ctx)
        return util_errorf(err, -EINVAL,
                           "TLS key/cert (--cert-file, --key-file) must be provided for client "
                           "url %s with HTTPS scheme",
                           url);
    if (unix_socket)
        return listen_unix(srv, url, url + (tls ? 8 : 7), tls, err);
    struct sockaddr_storage ss;
    char addr[UTIL_ADDR_MAX];
    int rc = util_listen_addr(url, &ss, addr, sizeof(addr), err);
    if (rc != 0)
        return rc;
    struct api_listener *l = calloc(1, sizeof(*l));
    if (!l)
        return util_errorf(err, -ENOMEM, "out of memory");
    l->srv = srv;
    l->tls = tls;
    snprintf(l->addr, sizeof(l->addr), "%s", addr);
    rc = uv_tcp_init(srv->loop, &l->h.tcp);
    if (rc != 0) {
        util_errorf(err, rc, "listen tcp %s: %s", l->addr, uv_strerror(rc));
        free(l);
        return rc;
    }
    l->h.handle.data = l;
    srv->open_handles++;
    rc = srv->cfg.reuse_port ? open_reuseport(&l->h.tcp, ss.ss_family) : 0;
    if (rc != 0)
        util_errorf(err, rc, "listen tcp %s: %s", l->addr, uv_strerror(rc));
    else
        rc = util_tcp_listen(&l->h.tcp, &ss, l->addr, on_connection, err);
    if (rc != 0) {
        uv_close(&l->h.handle, on_listener_closed);
        return rc;
    }
    return listen_done(srv, l, 0, err);
}

/* ---- lifetime ---- */

int api_server_new(uv_loop_t *loop, log_t *lg, const struct api_config *cfg, api_server_t **out,
                   struct util_err *err) {
    api_server_t *srv = calloc(1, sizeof(*srv));
    int rc;
    if (!srv)
        return util_errorf(err, -ENOMEM, "out of memory");
    srv->loop = loop;
    srv->lg = lg;
    if (cfg)
        srv->cfg = *cfg;
    else
        api_config_default(&srv->cfg);
    srv->wake_tail = &srv->wake_head;
    srv->scratch = malloc(API_READ_CHUNK);
    if (!srv->scratch) {
        free(srv);
        return util_errorf(err, -ENOMEM, "out of memory");
    }
    rc = pthread_mutex_init(&srv->wake_mu, NULL);
    if (rc != 0) {
        free(srv->scratch);
        free(srv);
        return util_errorf(err, -rc, "cannot create a mutex: %s", strerror(rc));
    }
    rc = api_http1_add_builtin_routes(srv);
    if (rc == 0)
        rc = api_gateway_add_routes(srv);
    if (rc != 0) {
        util_errorf(err, rc, "out of memory");
        goto err;
    }
    rc = uv_async_init(loop, &srv->wake_async, on_wake);
    if (rc != 0) {
        util_errorf(err, rc, "cannot create the wakeup handle: %s", uv_strerror(rc));
        goto err;
    }
    srv->wake_async.data = srv;
    srv->open_handles = 1;
    *out = srv;
    return 0;
err:
    api_http1_free_routes(srv);
    pthread_mutex_destroy(&srv->wake_mu);
    free(srv->scratch);
    free(srv);
    return rc;
}

static void on_wake_closed(uv_handle_t *h) {
    api_server_t *srv = h->data;
    api_close_cb cb = srv->close_cb;
    void *arg = srv->close_arg;
    api_http1_free_routes(srv);
    api_grpc_free_methods(srv);
    api_tls_free_ctx(srv);
    free(srv->scratch);
    pthread_mutex_destroy(&srv->wake_mu);
    free(srv);
    if (cb)
        cb(arg);
}

/* The wake handle closes last: answers may still arrive for outstanding requests
 * after every socket is gone. */
static void server_maybe_finish(api_server_t *srv) {
    if (srv->closing && srv->open_handles == 1 && srv->outstanding == 0) {
        srv->open_handles = 0;
        uv_close((uv_handle_t *)&srv->wake_async, on_wake_closed);
    }
}

void api_server_close(api_server_t *srv, api_close_cb cb, void *arg) {
    assert(!srv->closing);
    srv->closing = true;
    srv->close_cb = cb;
    srv->close_arg = arg;
    while (srv->listeners) {
        struct api_listener *l = srv->listeners;
        srv->listeners = l->next;
        uv_close(&l->h.handle, on_listener_closed);
    }
    while (srv->conns)
        api_conn_close(srv->conns);
    server_maybe_finish(srv);
}
