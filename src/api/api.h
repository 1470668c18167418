/* api: quoin's client-facing transport — everything between a client socket and
 * a decoded request handed to a handler.
 *
 * One api_server_t lives on one libuv loop (an "io loop") and serves any number
 * of listening URLs. Each accepted connection is sniffed by its first bytes:
 * the 24-byte HTTP/2 client preface ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", sent by
 * gRPC clients speaking h2c with prior knowledge) selects HTTP/2 and gRPC,
 * anything else is parsed as HTTP/1.1. Other layers plug in by registering
 * gRPC methods (api_server_register) and HTTP/1.1 routes (api_server_route).
 * Built in: GET /version, GET /health, and etcd's v3 JSON gateway (POST
 * /v3/kv/range, ...), which reaches the registered gRPC methods. https://
 * URLs add TLS under all of it.
 *
 * Threads. Every function below runs on the server's loop thread, except those
 * marked "any thread". Handlers are called on the loop thread; they may answer
 * at once or later, from any thread (a write answers on the apply thread): the
 * answer is queued on the call and the loop is woken with uv_async_send.
 * Handlers must not block the loop: hand slow work to another thread.
 *
 * Lifetimes (libuv's split): api_server_t is a long-lived handle; an
 * api_http_req_t or api_call_t is a short-lived request, owned by the handler
 * from the callback that hands it over until the handler gives it back
 * (api_http_respond, api_call_finish), exactly once. The server cannot finish
 * closing while a handler holds one.
 *
 * Errors: 0 or a negative errno-style code; user-facing failures also fill a
 * struct util_err with etcd's wording where etcd has one. docs/api.md has the
 * design: buffers, flow control, limits and the error mapping. */
#ifndef QUOIN_API_H
#define QUOIN_API_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "log/log.h"
#include "util/util.h"

typedef struct api_server api_server_t;
typedef struct api_http_req api_http_req_t;
typedef struct api_call api_call_t;

/* Limits. Every buffer the transport keeps for a peer is bounded by one of these. */
struct api_config {
    /* etcd's --max-request-bytes: the largest request body (HTTP/1.1) or request
     * message (gRPC) accepted. Default 1.5 MiB, as etcd. */
    size_t max_request_bytes;
    /* The largest HTTP/1.1 request line plus headers; larger gets 431. Default
     * 1 MiB, Go's http.DefaultMaxHeaderBytes, which etcd uses. */
    size_t max_header_bytes;
    /* Bytes of responses a connection may have queued for a client that does not
     * read them; past it the connection stops reading requests. Default 4 MiB. */
    size_t max_conn_output_bytes;
    /* gRPC: bytes of answers a stream may have queued before api_call_send
     * refuses more with -EAGAIN (a slow watcher). Default 4 MiB. */
    size_t max_stream_output_bytes;
    /* gRPC: HTTP/2 streams (calls) a client may have open at once. Default 4096. */
    uint32_t max_concurrent_streams;
    /* gRPC: bytes of request messages received in part, over all connections
     * of the server; a stream that would go past it fails with
     * RESOURCE_EXHAUSTED "etcdserver: too many requests". Default 256 MiB. */
    size_t max_partial_request_bytes;
    /* Listen with SO_REUSEPORT, so that one server per io loop can listen on
     * the same URL and the kernel spreads the connections. Default off. */
    bool reuse_port;
};

/* What etcd adds to --max-request-bytes for gRPC's own framing: a gRPC message
 * up to max_request_bytes + this is read (larger fails with RESOURCE_EXHAUSTED
 * "grpc: received message larger than max (N vs. M)"); whether the request
 * itself is too large ("etcdserver: request is too large") is the server's
 * check, on the request it proposes. */
#define API_GRPC_OVERHEAD_BYTES (512 * 1024)

/* Fills cfg with the defaults above. */
void api_config_default(struct api_config *cfg);

/* Creates a server on `loop` (which the caller runs). lg may be NULL (silent);
 * cfg may be NULL (defaults). Nothing listens until api_server_listen.
 * Returns 0, -ENOMEM, or the libuv error initialising the wakeup handle. */
int api_server_new(uv_loop_t *loop, log_t *lg, const struct api_config *cfg, api_server_t **out,
                   struct util_err *err);

/* Starts accepting on an etcd-style client URL: "http://127.0.0.1:2379",
 * "https://127.0.0.1:2379" (TLS, after api_server_set_tls),
 * "http://localhost:2379" (the first address the name resolves to, IPv4 first,
 * as Go's net.Listen), "http://[::1]:2379", "http://:2379" (every interface),
 * "unix:///run/quoin.sock" or "unixs://..." (a unix socket, as etcd takes what
 * follows the scheme as the path; a stale socket file is replaced).
 * Returns 0;
 *   -EINVAL        the URL is malformed (err says how);
 *   -EINVAL        an https:// or unixs:// URL before api_server_set_tls, with
 *                  etcd's words;
 *   -EADDRINUSE, -EACCES, -EADDRNOTAVAIL, ...  the bind or listen failed, with
 *                  err worded as etcd reports it:
 *                  "listen tcp 127.0.0.1:2379: bind: address already in use". */
int api_server_listen(api_server_t *srv, const char *url, struct util_err *err);

/* TLS for https:// URLs, as etcd's --cert-file, --key-file,
 * --trusted-ca-file and --client-cert-auth set it. */
struct api_tls_config {
    const char *cert_file;       /* PEM certificate chain */
    const char *key_file;        /* PEM private key */
    const char *trusted_ca_file; /* PEM CAs client certificates must chain to; may be NULL */
    bool client_cert_auth;       /* require a client certificate signed by those CAs */
};

/* Loads the certificate and key (now; the files are not read again) for the
 * https:// URLs listened on afterwards. Returns 0, -ENOMEM, or -EINVAL with
 * err saying which file failed and why. */
int api_server_set_tls(api_server_t *srv, const struct api_tls_config *tls, struct util_err *err);

/* Called once the server is closed and freed. */
typedef void (*api_close_cb)(void *arg);

/* Stops listening, closes every connection (cancelling the gRPC calls
 * handlers hold) and, once every handle is closed and every request held by a
 * handler has been given back (api_http_respond, api_call_finish), frees the
 * server and calls cb(arg) on the loop thread. The caller must not use srv
 * afterwards; requests still held by handlers stay valid until given back, and
 * their answers are dropped. cb may be NULL. */
void api_server_close(api_server_t *srv, api_close_cb cb, void *arg);

/* ---- HTTP/1.1 routes ---- */

/* Handles one request. Called on the loop thread; owns req until it calls
 * api_http_respond (now or later, from any thread). */
typedef void (*api_http_handler)(api_http_req_t *req, void *arg);

/* Registers a handler for `method` ("GET", ...; NULL = any method) on `path`.
 * A path ending in '/' also matches everything below it ("/v2/keys/"); the
 * longest matching path wins, as in Go's ServeMux. A path that matches with no
 * handler for the request's method answers 405. Register before listening.
 * Returns 0, -ENOMEM, or -EEXIST when the same method and path are taken. */
int api_server_route(api_server_t *srv, const char *method, const char *path,
                     api_http_handler handler, void *arg);

/* Accessors, valid until api_http_respond; any thread (the request is owned by
 * one thread at a time). path excludes the query; query excludes '?' and is ""
 * when absent. api_http_header matches the name case-insensitively and returns
 * the first value or NULL. The body is not NUL-terminated. */
const char *api_http_method(const api_http_req_t *req);
const char *api_http_path(const api_http_req_t *req);
const char *api_http_query(const api_http_req_t *req);
const char *api_http_header(const api_http_req_t *req, const char *name);
const void *api_http_body(const api_http_req_t *req, size_t *len);

/* Adds a response header (e.g. "X-Etcd-Index") to the coming response. Call
 * before api_http_respond, from the thread that owns req. Returns 0 or -ENOMEM. */
int api_http_add_header(api_http_req_t *req, const char *name, const char *value);

/* Answers req with `status`, a Content-Type and a body (copied), and releases
 * it. Any thread. If the client has gone meanwhile the answer is dropped.
 * Returns 0, or -ENOMEM (the request is answered with 500 instead). */
int api_http_respond(api_http_req_t *req, int status, const char *content_type, const void *body,
                     size_t len);

/* GET /health answers as etcd 3.4 does: 200 {"health":"true"}, or 503
 * {"health":"false"}. For each request the check (loop thread) decides, now
 * or later from any thread, by calling api_health_report exactly once; it
 * owns req until then. Without a check the server is reported healthy. */
typedef void (*api_health_check)(api_http_req_t *req, void *arg);
void api_server_set_health_check(api_server_t *srv, api_health_check check, void *arg);

/* Answers a /health request (any thread). Returns as api_http_respond. */
int api_health_report(api_http_req_t *req, bool healthy);

/* ---- gRPC (HTTP/2: h2c, or h2 over TLS) ---- */

/* gRPC status codes. */
enum api_grpc_code {
    API_GRPC_OK = 0,
    API_GRPC_CANCELLED = 1,
    API_GRPC_UNKNOWN = 2,
    API_GRPC_INVALID_ARGUMENT = 3,
    API_GRPC_DEADLINE_EXCEEDED = 4,
    API_GRPC_NOT_FOUND = 5,
    API_GRPC_ALREADY_EXISTS = 6,
    API_GRPC_PERMISSION_DENIED = 7,
    API_GRPC_RESOURCE_EXHAUSTED = 8,
    API_GRPC_FAILED_PRECONDITION = 9,
    API_GRPC_ABORTED = 10,
    API_GRPC_OUT_OF_RANGE = 11,
    API_GRPC_UNIMPLEMENTED = 12,
    API_GRPC_INTERNAL = 13,
    API_GRPC_UNAVAILABLE = 14,
    API_GRPC_DATA_LOSS = 15,
    API_GRPC_UNAUTHENTICATED = 16,
};

/* One gRPC method and its handler. Callbacks run on the loop thread.
 *
 * Ownership of a call: the handler owns it from on_message (unary) or on_open
 * (streaming) until it calls api_call_finish, exactly once, from any thread;
 * after that it must not touch the call. A call whose client never completes
 * a request is cleaned up by the transport without the handler.
 *
 * Cancellation: when the client resets the stream or disconnects, the
 * grpc-timeout deadline passes, or the server closes, on_cancel runs once if
 * the handler owns the call and has not posted its finish yet (so for
 * handlers on the loop thread on_cancel and finish exclude each other; one
 * finishing from another thread may race with it). From then on
 * api_call_send returns -ECANCELED; the handler must still call
 * api_call_finish. */
struct api_grpc_method {
    const char *path; /* "/etcdserverpb.KV/Range" */
    bool client_streaming;
    bool server_streaming;
    /* Decodes each request message (malformed: the call ends with INTERNAL
     * "grpc: error unmarshalling request: ...", as grpc-go). NULL: the handler
     * gets the bytes only. */
    const ProtobufCMessageDescriptor *request;
    /* The response message, for the v3 JSON gateway (POST /v3/kv/range, ...),
     * which serves the methods that have both descriptors. May be NULL. */
    const ProtobufCMessageDescriptor *response;
    /* A request message. msg (NULL without a descriptor) belongs to the handler:
     * free it with protobuf_c_message_free_unpacked(msg, NULL). data/len (the
     * raw message) are valid during the call only. Unary: called once, and the
     * handler owns the call from here. */
    void (*on_message)(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                       void *arg);
    /* Streaming only (required there): the call has started; the handler owns it. */
    void (*on_open)(api_call_t *call, void *arg);
    /* Streaming: the client has sent its last message. May be NULL. */
    void (*on_half_close)(api_call_t *call, void *arg);
    /* See above. May be NULL. */
    void (*on_cancel)(api_call_t *call, void *arg);
    /* After api_call_send returned -EAGAIN: the stream's buffer has drained to
     * half its limit. May be NULL. */
    void (*on_writable)(api_call_t *call, void *arg);
    void *arg;
};

/* Registers a method (the struct is copied; path is copied). Register before
 * listening. A call to a path not registered ends with UNIMPLEMENTED ("unknown
 * service etcdserverpb.Foo", "unknown method Foo for service etcdserverpb.KV").
 * Returns 0, -ENOMEM, -EEXIST, or -EINVAL (bad path or missing callbacks). */
int api_server_register(api_server_t *srv, const struct api_grpc_method *m);

/* Told on the loop thread of every gRPC call (gateway calls included) once
 * it is over: its path as the client sent it (unknown methods too), its gRPC
 * status (CANCELLED when the client left first) and how long it took from its
 * request headers, and what the handler kept with api_call_set_data (its
 * answer has left by then: handlers count what they still hold in flight).
 * What a /metrics layer counts (etcd's grpc_server_handled_total). */
typedef void (*api_call_observer)(const char *path, int code, uint64_t duration_ns, void *call_data,
                                  void *arg);
void api_server_set_call_observer(api_server_t *srv, api_call_observer observer, void *arg);

/* Whether a call may run, asked on the loop thread before the call reaches
 * its method (gateway calls included): a unary call once its request is
 * decoded (msg: the request, NULL without a descriptor), a streaming call at
 * its start (msg NULL). Returns API_GRPC_OK to let it run; any other code
 * ends the call with it and *message (static text), its handler never told.
 * What a server uses to refuse methods in some state (etcd 3.4: a learner
 * serves only a few). */
typedef enum api_grpc_code (*api_call_gate)(const char *path, const ProtobufCMessage *msg,
                                            const char **message, void *arg);
void api_server_set_call_gate(api_server_t *srv, api_call_gate gate, void *arg);

/* Queues one response message (packed now, so msg may be freed on return).
 * Any thread. Returns 0; -EAGAIN when the stream already holds
 * max_stream_output_bytes of unsent answers (nothing queued: wait for
 * on_writable; a message is always accepted into an empty buffer, whatever its
 * size); -ECANCELED when the call is over (client gone, deadline); -EINVAL after
 * api_call_finish; -ENOMEM. */
int api_call_send(api_call_t *call, const ProtobufCMessage *msg);

/* The bytes of gRPC's message prefix (compressed flag, 4-byte length). */
#define API_GRPC_PREFIX_LEN 5

/* As api_call_send_raw, without a copy: b holds API_GRPC_PREFIX_LEN bytes of
 * room, then the encoded message. When nothing is queued before it, the
 * buffer itself is queued and b is left with an empty buffer (free it as
 * usual); otherwise it is copied. Any thread. Returns as api_call_send. */
int api_call_send_owned(api_call_t *call, struct util_buf *b);

/* As api_call_send, with an already-encoded message. */
int api_call_send_raw(api_call_t *call, const void *data, size_t len);

/* Ends the call with a gRPC status (message may be NULL; it is copied and
 * percent-encoded on the wire) and gives the call back. Any thread; exactly
 * once. Messages queued before are sent before the status. Returns 0, or
 * -ENOMEM (the status goes out without its message). */
int api_call_finish(api_call_t *call, enum api_grpc_code code, const char *message);

/* Unary convenience: api_call_send(msg) then api_call_finish(OK). Any thread.
 * Returns what api_call_send returned (the call is finished either way). */
int api_call_reply(api_call_t *call, const ProtobufCMessage *msg);

/* The value of request metadata `key` (lower-case, e.g. "token"), or NULL.
 * Valid while the handler owns the call; any thread. */
const char *api_call_metadata(const api_call_t *call, const char *key);

/* The common name of the client's certificate when the connection is TLS
 * with a verified client certificate (client_cert_auth), else NULL. etcd takes
 * it as the user name when a call carries no token. Valid while the handler
 * owns the call; any thread. */
const char *api_call_peer_cn(const api_call_t *call);

/* The method's path ("/etcdserverpb.KV/Range"). */
const char *api_call_path(const api_call_t *call);

/* Monotonic time (util_now_mono_ns) at which the client's grpc-timeout
 * expires, or 0 without one. */
uint64_t api_call_deadline_ns(const api_call_t *call);

/* Whether the call is over for the client (cancelled, deadline, gone). Any thread. */
bool api_call_is_cancelled(api_call_t *call);

/* A pointer the handler keeps with the call. */
void api_call_set_data(api_call_t *call, void *data);
void *api_call_data(const api_call_t *call);

#endif
