/* A small blocking HTTP/2 client for the api tests: see h2client.h. */
#include "h2client.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

static struct h2c_stream *find(struct h2c *c, int32_t id) {
    for (int i = 0; i < c->nstreams; i++)
        if (c->streams[i].id == id)
            return &c->streams[i];
    return NULL;
}

static ssize_t on_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *u) {
    struct h2c *c = u;
    (void)s;
    (void)flags;
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return NGHTTP2_ERR_WOULDBLOCK;
    return n < 0 ? NGHTTP2_ERR_CALLBACK_FAILURE : n;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *u) {
    struct h2c_stream *st = find(u, f->hd.stream_id);
    (void)s;
    (void)flags;
    if (!st)
        return 0;
#define COPY(dst) snprintf(dst, sizeof(dst), "%.*s", (int)vlen, (const char *)value)
    if (nlen == 7 && memcmp(name, ":status", 7) == 0)
        COPY(st->status);
    else if (nlen == 12 && memcmp(name, "content-type", 12) == 0)
        COPY(st->content_type);
    else if (nlen == 11 && memcmp(name, "grpc-status", 11) == 0)
        st->grpc_status = atoi((const char *)value);
    else if (nlen == 12 && memcmp(name, "grpc-message", 12) == 0)
        COPY(st->grpc_message);
#undef COPY
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *u) {
    struct h2c *c = u;
    struct h2c_stream *st = find(c, f->hd.stream_id);
    (void)s;
    if (f->hd.type == NGHTTP2_GOAWAY)
        c->goaway = true;
    if (st && f->hd.type == NGHTTP2_HEADERS)
        st->header_blocks++;
    if (st && f->hd.type == NGHTTP2_RST_STREAM)
        st->reset = true;
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *u) {
    struct h2c_stream *st = find(u, id);
    (void)s;
    (void)flags;
    if (st)
        assert_int_equal(util_buf_append(&st->data, data, len), 0);
    return 0;
}

static int on_close(nghttp2_session *s, int32_t id, uint32_t code, void *u) {
    struct h2c_stream *st = find(u, id);
    (void)s;
    if (st) {
        st->closed = true;
        st->rst_code = code;
    }
    return 0;
}

void h2c_open(struct h2c *c, int port) {
    nghttp2_session_callbacks *cb;
    memset(c, 0, sizeof(*c));
    c->fd = harness_connect(port);
    assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
    assert_int_equal(nghttp2_session_client_new(&c->s, cb, c), 0);
    nghttp2_session_callbacks_del(cb);
    assert_int_equal(nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, NULL, 0), 0);
}

void h2c_close(struct h2c *c) {
    nghttp2_session_del(c->s);
    close(c->fd);
    for (int i = 0; i < c->nstreams; i++)
        util_buf_free(&c->streams[i].data);
}

struct body {
    const uint8_t *p;
    size_t left;
    bool end;
};

static ssize_t body_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *u) {
    struct body *b = src->ptr;
    (void)s;
    (void)id;
    (void)u;
    size_t n = b->left < len ? b->left : len;
    if (n)
        memcpy(buf, b->p, n);
    b->p += n;
    b->left -= n;
    if (b->left == 0) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (!b->end)
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        free(b);
    }
    return (ssize_t)n;
}

struct h2c_stream *h2c_request(struct h2c *c, const char *method, const char *path,
                               const char *const *extra, const void *body, size_t len,
                               bool end_stream) {
    nghttp2_nv nv[32];
    size_t n = 0;
#define NVS(k, v)                                                                                  \
    (nghttp2_nv){(uint8_t *)(k), (uint8_t *)(v), strlen(k), strlen(v), NGHTTP2_NV_FLAG_NONE}
    nv[n++] = NVS(":method", method);
    nv[n++] = NVS(":scheme", "http");
    nv[n++] = NVS(":path", path);
    nv[n++] = NVS(":authority", "127.0.0.1");
    nv[n++] = NVS("te", "trailers");
    bool has_ct = false;
    for (size_t i = 0; extra && extra[i]; i += 2) {
        has_ct = has_ct || strcmp(extra[i], "content-type") == 0;
        nv[n++] = NVS(extra[i], extra[i + 1]);
    }
    if (!has_ct)
        nv[n++] = NVS("content-type", "application/grpc");
#undef NVS
    assert_true(c->nstreams < H2C_MAX_STREAMS);
    struct h2c_stream *st = &c->streams[c->nstreams++];
    memset(st, 0, sizeof(*st));
    st->grpc_status = -1;
    int32_t id;
    if (body || end_stream) {
        struct body *b = malloc(sizeof(*b));
        assert_non_null(b);
        *b = (struct body){body, len, end_stream};
        nghttp2_data_provider dp = {.source.ptr = b, .read_callback = body_read};
        id = nghttp2_submit_request(c->s, NULL, nv, n, &dp, NULL);
    } else {
        id = nghttp2_submit_request(c->s, NULL, nv, n, NULL, NULL);
    }
    assert_true(id > 0);
    st->id = id;
    return st;
}

bool h2c_run(struct h2c *c, bool (*done)(struct h2c *c, void *arg), void *arg, int timeout_ms) {
    uint64_t end = util_now_mono_ns() + (uint64_t)timeout_ms * 1000000;
    while (!done(c, arg)) {
        int rc = nghttp2_session_send(c->s);
        assert_int_equal(rc, 0);
        uint64_t now = util_now_mono_ns();
        if (now >= end || c->eof)
            return done(c, arg);
        struct pollfd p = {.fd = c->fd, .events = c->paused ? 0 : POLLIN};
        if (nghttp2_session_want_write(c->s))
            p.events |= POLLOUT;
        int left = (int)((end - now) / 1000000) + 1;
        if (poll(&p, 1, left < 20 ? left : 20) <= 0 || !(p.revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        uint8_t buf[65536];
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            c->eof = true;
            continue;
        }
        assert_int_equal(nghttp2_session_mem_recv(c->s, buf, (size_t)n), n);
    }
    return true;
}

bool h2c_stream_closed(struct h2c *c, void *stream) {
    (void)c;
    return ((struct h2c_stream *)stream)->closed;
}

void h2c_grpc_frame(struct util_buf *out, const void *msg, size_t len) {
    uint8_t p[5] = {0, (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                    (uint8_t)len};
    assert_int_equal(util_buf_append(out, p, 5), 0);
    assert_int_equal(util_buf_append(out, msg, len), 0);
}

size_t h2c_count_messages(const struct h2c_stream *st) {
    size_t n = 0, off = 0;
    const uint8_t *d = (const uint8_t *)st->data.data;
    while (off + 5 <= st->data.len) {
        size_t len = (size_t)d[off + 1] << 24 | (size_t)d[off + 2] << 16 | (size_t)d[off + 3] << 8 |
                     d[off + 4];
        if (off + 5 + len > st->data.len)
            break;
        off += 5 + len;
        n++;
    }
    return n;
}
