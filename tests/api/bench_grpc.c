/* bench-api: throughput of the gRPC transport alone, in process. A server
 * with an echo method runs on its loop thread; one nghttp2 client connection
 * keeps a window of unary calls in flight and reports calls per second, then
 * streams a large server-streaming answer and reports MB/s.
 *
 *   make MODE=release bench-api && ./build/tests/api/bench_grpc [calls] [inflight]
 *
 * Numbers only; never part of `make test`. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

struct bench {
    int fd;
    nghttp2_session *s;
    long submitted, completed, target, inflight;
    uint64_t bytes;
    const char *path;
    uint8_t req[32];
    size_t req_len;
};

static void echo(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len, void *arg) {
    (void)msg;
    (void)arg;
    api_call_send_raw(call, d, len);
    api_call_finish(call, API_GRPC_OK, NULL);
}

static void flood_open(api_call_t *call, void *arg) {
    (void)call;
    (void)arg;
}

/* Streams 256 MiB in 64 KiB messages, resuming on on_writable. */
static void flood_more(api_call_t *call, void *arg) {
    static const char block[64 * 1024];
    size_t *left = api_call_data(call);
    (void)arg;
    while (*left > 0) {
        if (api_call_send_raw(call, block, sizeof(block)) != 0)
            return;
        *left -= sizeof(block);
    }
    free(left);
    api_call_finish(call, API_GRPC_OK, NULL);
}

static void flood(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                  void *arg) {
    size_t *left = malloc(sizeof(*left));
    (void)msg;
    (void)d;
    (void)len;
    *left = 256u << 20;
    api_call_set_data(call, left);
    flood_more(call, arg);
}

static void setup(api_server_t *srv, void *arg) {
    struct api_grpc_method e = {.path = "/b.B/Echo", .on_message = echo};
    struct api_grpc_method f = {.path = "/b.B/Flood",
                                .server_streaming = true,
                                .on_open = flood_open,
                                .on_message = flood,
                                .on_writable = flood_more};
    (void)arg;
    api_server_register(srv, &e);
    api_server_register(srv, &f);
}

static ssize_t on_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *u) {
    struct bench *b = u;
    (void)s;
    (void)flags;
    ssize_t n = send(b->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    return n < 0 ? NGHTTP2_ERR_WOULDBLOCK : n;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *u) {
    (void)s;
    (void)flags;
    (void)id;
    (void)data;
    ((struct bench *)u)->bytes += len;
    return 0;
}

static ssize_t body_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *u) {
    struct bench *b = u;
    (void)s;
    (void)id;
    (void)src;
    (void)len;
    memcpy(buf, b->req, b->req_len);
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)b->req_len;
}

static void submit(struct bench *b) {
    nghttp2_nv nv[] = {
#define H(k, v) {(uint8_t *)k, (uint8_t *)v, sizeof(k) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE}
        H(":method", "POST"),
        H(":scheme", "http"),
        H(":path", b->path),
        H(":authority", "x"),
        H("content-type", "application/grpc"),
        H("te", "trailers"),
#undef H
    };
    nghttp2_data_provider dp = {.read_callback = body_read};
    nghttp2_submit_request(b->s, NULL, nv, 6, &dp, NULL);
    b->submitted++;
}

static int on_close(nghttp2_session *s, int32_t id, uint32_t code, void *u) {
    struct bench *b = u;
    (void)s;
    (void)id;
    (void)code;
    b->completed++;
    if (b->submitted < b->target)
        submit(b);
    return 0;
}

static void pump(struct bench *b) {
    while (b->completed < b->target) {
        nghttp2_session_send(b->s);
        struct pollfd p = {.fd = b->fd, .events = POLLIN};
        if (poll(&p, 1, 1000) <= 0)
            continue;
        uint8_t buf[256 * 1024];
        ssize_t n = recv(b->fd, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        nghttp2_session_mem_recv(b->s, buf, (size_t)n);
    }
}

static void run(struct bench *b, int port) {
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
    nghttp2_session_client_new(&b->s, cb, b);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 16 << 20}};
    nghttp2_submit_settings(b->s, NGHTTP2_FLAG_NONE, iv, 1);
    nghttp2_session_set_local_window_size(b->s, NGHTTP2_FLAG_NONE, 0, 64 << 20);
    b->fd = harness_connect(port);
    for (long i = 0; i < b->inflight && i < b->target; i++)
        submit(b);
    pump(b);
    nghttp2_session_del(b->s);
    close(b->fd);
}

int main(int argc, char **argv) {
    struct harness h;
    long calls = argc > 1 ? atol(argv[1]) : 200000;
    long inflight = argc > 2 ? atol(argv[2]) : 64;
    harness_start(&h, NULL, setup, NULL);

    struct bench b = {.target = calls, .inflight = inflight, .path = "/b.B/Echo"};
    memcpy(b.req,
           "\0\0\0\0\x10"
           "0123456789abcdef",
           21);
    b.req_len = 21;
    uint64_t t0 = util_now_mono_ns();
    run(&b, h.port);
    double s = (double)(util_now_mono_ns() - t0) / 1e9;
    printf("unary echo: %ld calls, %ld in flight, %.2f s, %.0f calls/s\n", b.completed, inflight, s,
           (double)b.completed / s);

    struct bench f = {.target = 1, .inflight = 1, .path = "/b.B/Flood"};
    memcpy(f.req, "\0\0\0\0\0", 5);
    f.req_len = 5;
    t0 = util_now_mono_ns();
    run(&f, h.port);
    s = (double)(util_now_mono_ns() - t0) / 1e9;
    printf("server stream: %.0f MiB in %.2f s, %.0f MiB/s\n", (double)f.bytes / (1 << 20), s,
           (double)f.bytes / (1 << 20) / s);
    harness_stop(&h);
    return 0;
}
