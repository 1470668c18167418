/* api internals shared by the files of the transport: the server, its
 * connections, and the queue that carries answers from other threads back to
 * the loop. Not for use outside src/api/. */
#ifndef QUOIN_API_INTERNAL_H
#define QUOIN_API_INTERNAL_H

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdbool.h>

#include "api/api.h"

/* Something a handler answers from any thread. Posting it (api_wake_post)
 * queues it on the server and wakes the loop, which then calls run(). An item is
 * queued at most once at a time; posting a queued item only wakes the loop. */
struct api_wake {
    struct api_wake *next;
    bool queued; /* guarded by the server's wake_mu */
    void (*run)(struct api_wake *w);
};

/* While a request is being answered, at most this much of the next (pipelined)
 * requests is read ahead. */
#define API_PIPELINE_READAHEAD (64 * 1024)

enum api_proto { API_PROTO_SNIFF, API_PROTO_HTTP1, API_PROTO_H2 };

struct api_route {
    char *method; /* NULL = any */
    char *path;
    api_http_handler handler;
    void *arg;
};

/* A stream handle: TCP, or a unix socket (unix:// URLs). */
union api_handle {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
};

struct api_listener {
    union api_handle h;
    api_server_t *srv;
    struct api_listener *next;
    bool tls;
    bool unix_socket;
    char addr[256]; /* "127.0.0.1:2379" (or a socket path) as the logs show it */
};

struct api_conn {
    union api_handle h;
    api_server_t *srv;
    struct api_conn *prev, *next; /* the server's connection list */
    enum api_proto proto;
    struct util_buf in; /* received, not yet consumed by the protocol */
    bool reading;
    bool closing;
    bool close_after_write;      /* no more requests: linger once every write completed */
    bool lingering;              /* half-closed, dropping input until the client closes */
    size_t drained;              /* bytes dropped while lingering */
    size_t out_pending;          /* bytes handed to uv_write and not yet written */
    api_http_req_t *busy;        /* HTTP/1.1: the request a handler is answering */
    bool continue_sent;          /* HTTP/1.1: "100 Continue" went out for the request in parse */
    nghttp2_session *h2;         /* HTTP/2: the session, freed when the handle is closed */
    api_call_t *calls;           /* HTTP/2: calls whose stream is open */
    struct api_conn *flush_next; /* HTTP/2: in the server's list of connections to flush */
    bool flush_queued;
    struct util_buf *sink; /* HTTP/2: the output being gathered during api_h2_flush */
    /* HTTP/2 input framing, followed to drop RST_STREAM for idle streams. */
    size_t h2_preface_left;
    size_t h2_payload_left;
    uint8_t h2_hdr[9];
    size_t h2_hdr_len;
    bool h2_dropping;
    uint32_t h2_max_stream;
    SSL *ssl;      /* https: the TLS session (NULL for http) */
    char *peer_cn; /* https: common name of the verified client certificate, or NULL */
};

struct api_server {
    uv_loop_t *loop;
    log_t *lg;
    struct api_config cfg;
    struct api_listener *listeners;
    struct api_conn *conns;
    struct api_route *routes;
    size_t nroutes;
    struct api_grpc_method *methods;
    size_t nmethods;
    api_health_check health_check; /* NULL: always healthy */
    api_call_observer observer;    /* told of every finished gRPC call; may be NULL */
    void *observer_arg;
    api_call_gate gate; /* may a call run; NULL: every call may */
    void *gate_arg;
    SSL_CTX *tls_ctx; /* for https:// listeners; NULL until api_server_set_tls */
    void *health_arg;
    unsigned open_handles;       /* listeners, connections and the wake handle */
    unsigned outstanding;        /* handler requests not yet answered and run */
    size_t partial_bytes;        /* gRPC request bytes held in incomplete messages */
    struct api_conn *flush_head; /* connections with answers to flush after a wake */
    char *scratch; /* every socket read lands here first (one read at a time per loop) */
    bool closing;
    api_close_cb close_cb;
    void *close_arg;
    uv_async_t wake_async;
    pthread_mutex_t wake_mu;
    struct api_wake *wake_head, **wake_tail;
    bool draining_soon; /* the loop drains the queue when its callback ends (wake_mu) */
};

/* Any thread: queues w (unless queued already) and wakes the loop. */
void api_wake_post(api_server_t *srv, struct api_wake *w);

/* Whether w waits in the queue (it may have been posted again while running). */
bool api_wake_queued(api_server_t *srv, struct api_wake *w);

/* Loop thread: a handler request was answered and run; lets a closing server finish. */
void api_server_release(api_server_t *srv);

/* Queues bytes for the client (copied). Returns 0 or a negative code; on failure
 * the connection is being closed. */
int api_conn_write(struct api_conn *c, const void *data, size_t len);

/* As api_conn_write, taking ownership of the malloc'd data (freed even on failure). */
int api_conn_write_take(struct api_conn *c, char *data, size_t len);

/* As api_conn_write_take, bypassing TLS: the bytes go to the socket as they are. */
int api_conn_write_raw(struct api_conn *c, char *data, size_t len);

/* Takes no more requests: once the request in hand is answered and every
 * answer written, half-closes and closes when the client does. */
void api_conn_end(struct api_conn *c);

/* Closes the connection (idempotent). */
void api_conn_close(struct api_conn *c);

/* Drops n bytes from the front of a buffer. */
void api_buf_consume(struct util_buf *b, size_t n);

/* Loop thread: a handle the server counted (open_handles) has closed. */
void api_server_handle_closed(api_server_t *srv);

/* Whether the connection may take new requests: not closing and the client is
 * reading its answers. */
bool api_conn_can_take(const struct api_conn *c);

/* Starts or stops reading from the socket to bound what is buffered. */
void api_conn_set_reading(struct api_conn *c, bool on);

/* The value of a hex digit, or -1. */
int api_hexval(char c);

/* HTTP/1.1 (http1.c). */
int api_http1_add_builtin_routes(api_server_t *srv);
void api_http1_free_routes(api_server_t *srv);
/* Parses and dispatches whatever complete requests the input buffer holds. */
void api_http1_process(struct api_conn *c);
/* The connection is going away: detaches a request a handler still holds. */
void api_http1_detach(struct api_conn *c);
/* Streamed answers (loop thread only): the head, then chunks, then the end,
 * which releases req as api_http_respond does. Writes after the client has
 * gone return -EPIPE and are dropped. */
int api_http1_stream_begin(api_http_req_t *req, int status, const char *content_type);
int api_http1_stream_write(api_http_req_t *req, const void *data, size_t len);
void api_http1_stream_end(api_http_req_t *req);
/* Calls gone(arg) on the loop thread if the client goes before the end. */
void api_http1_on_gone(api_http_req_t *req, void (*gone)(void *arg), void *arg);

/* gRPC over HTTP/2 (grpc.c). */
/* The connection sent the HTTP/2 preface: creates its session. */
int api_h2_start(struct api_conn *c);
/* Feeds bytes (the input buffer, or a read straight from the socket) to the
 * session and sends what it produced. */
void api_h2_process(struct api_conn *c, const char *data, size_t len);
/* Moves what the session has to send into socket writes, up to the
 * connection's output bound. */
void api_h2_flush(struct api_conn *c);
/* Flushes the connection once the current batch of wakeups has run, so many
 * answers leave in one write. */
void api_h2_flush_later(struct api_conn *c);
/* The connection is closing: ends its calls (cancelling handlers). */
void api_h2_detach(struct api_conn *c);
void api_h2_free(struct api_conn *c);
void api_grpc_free_methods(api_server_t *srv);

/* The v3 JSON gateway (gateway.c). */
int api_gateway_add_routes(api_server_t *srv);
/* A unary gateway call finished: answers req with the message (JSON) or the error. */
void api_gateway_answer(api_http_req_t *req, const struct api_grpc_method *m, int code,
                        const char *message, const uint8_t *data, size_t len);
/* A streaming gateway call sent a message: one {"result":...} line; the
 * first begins the streamed answer and sets *started. Returns 0 or a
 * negative code. */
int api_gateway_stream_message(api_http_req_t *req, const struct api_grpc_method *m,
                               const uint8_t *data, size_t len, bool *started);
/* A streaming gateway call finished: an error line if it failed, then the end. */
void api_gateway_stream_end(api_http_req_t *req, bool started, int code, const char *message);
/* Runs a method for the gateway with the encoded request messages (a unary
 * method takes the first); answers come back through the functions above.
 * Returns 0, -EINVAL (a message does not decode) or -ENOMEM. */
int api_grpc_gateway_call(api_server_t *srv, const struct api_grpc_method *m, api_http_req_t *req,
                          const struct util_buf *msgs, size_t n);
/* The registered method for a path, or NULL. */
const struct api_grpc_method *api_grpc_find(const api_server_t *srv, const char *path);

/* TLS (tls.c). */
void api_tls_free_ctx(api_server_t *srv);
/* Gives an accepted connection its TLS session. Returns 0 or -ENOMEM. */
int api_tls_conn_start(struct api_conn *c);
void api_tls_conn_free(struct api_conn *c);
/* n bytes of ciphertext arrived: handshakes, and appends the plaintext to
 * c->in. Returns 0, -ECONNRESET (the client closed the TLS session) or another
 * negative code (the connection must close). */
int api_tls_read(struct api_conn *c, const char *data, size_t n);
/* Encrypts plaintext and queues it for the socket. */
int api_tls_write(struct api_conn *c, const char *data, size_t len);
/* Queues TLS close_notify. */
int api_tls_shutdown(struct api_conn *c);

#endif
