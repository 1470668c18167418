/* client internals shared by the transport (client.c), the unary calls
 * (calls.c) and the long-lived streams (stream.c). Not installed. */
#ifndef QUOIN_CLIENT_INT_H
#define QUOIN_CLIENT_INT_H

#include <pthread.h>
#include <stdint.h>
#include <uv.h>

#include "api/proto/rpc.pb-c.h"
#include "client/quoin.h"
#include "util/util.h"

struct cl_conn;

/* Work handed to the loop thread from another thread. */
struct cl_job {
    void (*fn)(struct cl_job *j);
    struct cl_job *next;
};

/* How a unary answer is decoded into a quoin_resp_t. */
enum cl_kind {
    CL_RANGE,
    CL_PUT,
    CL_DELETE,
    CL_TXN,
    CL_COMPACT,
    CL_LEASE_GRANT,
    CL_LEASE_REVOKE,
    CL_LEASE_TTL,
    CL_LEASE_KEEPALIVE_ONCE,
    CL_STATUS,
    CL_MEMBERS,
    CL_STREAM, /* a watch or keep-alive stream: messages go to on_msg */
};

/* One gRPC call: a short-lived unary request, or the current stream of a
 * watch or keep-alive. It sits on the client's waiting list until a connection
 * is ready, then on that connection's list until its stream closes. */
struct cl_call {
    struct cl_job job; /* posting from another thread */
    quoin_client_t *c;
    struct cl_conn *conn; /* NULL while waiting */
    struct cl_call *prev, *next;
    int32_t stream_id;
    enum cl_kind kind;
    const char *path;
    int retry_after_send; /* a read: safe to send again after a lost connection */
    int done;             /* the caller was answered; freed when the stream closes */
    int sent;             /* the request left completely (END_STREAM) */
    struct util_buf out;  /* framed outgoing messages */
    size_t out_off;
    int half_close;      /* end the stream once `out` drains */
    struct util_buf in;  /* incoming bytes not yet a whole message */
    struct util_buf msg; /* unary: the answer message */
    int grpc_status;     /* -1 until the trailers come */
    char grpc_message[256];
    uint64_t deadline_ns; /* 0: none (streams) */
    quoin_cb cb;
    void *arg;
    /* streams: a message arrived / the stream ended (status, message) */
    void (*on_msg)(struct cl_call *k, const uint8_t *p, size_t n);
    void (*on_end)(struct cl_call *k, const quoin_error_t *err);
    void *owner;
};

struct cl_endpoint {
    char *text; /* as given */
    char host[256];
    int port;
};

struct quoin_client {
    uv_loop_t *loop;
    uv_loop_t own_loop;
    int threaded;
    uv_thread_t thread;
    uv_async_t async;
    uv_timer_t tick;
    int handles_open; /* async + tick: freed when both closed */
    int closing;
    pthread_mutex_t mu; /* guards inbox */
    struct cl_job *inbox, *inbox_tail;
    struct cl_endpoint *eps;
    size_t n_eps;
    size_t cur;        /* endpoint in use or being dialed */
    size_t failed_row; /* endpoints failed in a row; a full round waits before the next */
    uint64_t reconnect_at_ns;
    quoin_options_t opts;
    struct cl_conn *conn;
    struct cl_conn *draining;  /* sent GOAWAY: old calls finish there, new ones go elsewhere */
    struct cl_call *waiting;   /* calls waiting for a connection */
    struct cl_stream *streams; /* watches and keep-alives */
};

/* A long-lived stream (watch or keep-alive) that re-opens its call after a
 * reconnect. */
struct cl_stream {
    struct cl_job job_add; /* each hand-off has its own job: both may be queued */
    struct cl_job job_stop;
    quoin_client_t *c;
    struct cl_stream *prev, *next;
    struct cl_call *call; /* the open stream, or NULL while waiting to re-open */
    uint64_t reopen_at_ns;
    int stopped;                          /* no more callbacks, no re-open */
    int released;                         /* the user let go of the handle: the tick frees it */
    void (*open)(struct cl_stream *s);    /* makes and starts a new call */
    void (*tick)(struct cl_stream *s);    /* runs on each tick */
    void (*destroy)(struct cl_stream *s); /* on client free or stop */
};

/* client.c */
struct cl_call *cl_call_new(quoin_client_t *c, enum cl_kind kind, const char *path,
                            int deadline_ms);
int cl_call_set_msg(struct cl_call *k, const ProtobufCMessage *m);
int cl_call_append_msg(struct cl_call *k, const ProtobufCMessage *m);
void cl_call_free(struct cl_call *k);
int cl_submit(struct cl_call *k);
void cl_start(struct cl_call *k);
void cl_call_cancel(struct cl_call *k);
int cl_stream_write(struct cl_call *k, const ProtobufCMessage *m);
int cl_run_sync(quoin_client_t *c, struct cl_call *k, quoin_resp_t **resp, quoin_error_t *err);
void cl_post(quoin_client_t *c, struct cl_job *j);
int cl_on_loop_thread(const quoin_client_t *c);
void cl_error(quoin_error_t *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int cl_errno_of(const quoin_error_t *e);
void cl_finish(struct cl_call *k, quoin_resp_t *resp, const quoin_error_t *err);

/* calls.c */
int cl_decode(enum cl_kind kind, const uint8_t *p, size_t n, quoin_resp_t **out);
void cl_fill_kv(quoin_kv_t *out, const Mvccpb__KeyValue *kv);
void cl_fill_header(quoin_header_t *h, const Etcdserverpb__ResponseHeader *p);

/* stream.c */
void cl_stream_add(quoin_client_t *c, struct cl_stream *s);
void cl_streams_tick(quoin_client_t *c);
void cl_streams_destroy(quoin_client_t *c);

#endif
