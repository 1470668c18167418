/* api: quoin's client-facing transport — everything between a client socket and
 * a decoded request handed to a handler.
 *
 * One api_server_t lives on one libuv loop (an "io loop") and serves any number
 * of listening URLs. Each accepted connection is sniffed by its first bytes:
 * the 24-byte HTTP/2 client preface ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", sent by
 * gRPC clients speaking h2c with prior knowledge) selects HTTP/2, anything else
 * is parsed as HTTP/1.1. Other layers plug in by registering HTTP/1.1 routes
 * (api_server_route). Built in: GET /version.
 *
 * Threads. Every function below runs on the server's loop thread, except those
 * marked "any thread". A handler is called on the loop thread; it may answer at
 * once or later, from any thread (a write answers on the apply thread): the
 * answer is queued and the loop is woken with uv_async_send.
 *
 * Lifetimes (libuv's split): api_server_t is a long-lived handle; an
 * api_http_req_t is a short-lived request owned by the handler from the moment
 * the handler is called until it calls api_http_respond, exactly once.
 *
 * Errors: 0 or a negative errno-style code; user-facing failures also fill a
 * struct util_err with etcd's wording where etcd has one. */
#ifndef QUOIN_API_H
#define QUOIN_API_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "log/log.h"
#include "util/util.h"

typedef struct api_server api_server_t;
typedef struct api_http_req api_http_req_t;

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
};

/* Fills cfg with the defaults above. */
void api_config_default(struct api_config *cfg);

/* Creates a server on `loop` (which the caller runs). lg may be NULL (silent);
 * cfg may be NULL (defaults). Nothing listens until api_server_listen.
 * Returns 0, -ENOMEM, or the libuv error initialising the wakeup handle. */
int api_server_new(uv_loop_t *loop, log_t *lg, const struct api_config *cfg, api_server_t **out,
                   struct util_err *err);

/* Starts accepting on an etcd-style client URL: "http://127.0.0.1:2379",
 * "http://localhost:2379" (the first address the name resolves to, IPv4 first,
 * as Go's net.Listen), "http://[::1]:2379", "http://:2379" (every interface).
 * Returns 0;
 *   -EINVAL        the URL is malformed (err says how);
 *   -ENOTSUP       https:// and unix:// URLs ("... not supported yet");
 *   -EADDRINUSE, -EACCES, -EADDRNOTAVAIL, ...  the bind or listen failed, with
 *                  err worded as etcd reports it:
 *                  "listen tcp 127.0.0.1:2379: bind: address already in use". */
int api_server_listen(api_server_t *srv, const char *url, struct util_err *err);

/* Called once the server is closed and freed. */
typedef void (*api_close_cb)(void *arg);

/* Stops listening, closes every connection and, once every handle is closed and
 * every outstanding handler request has been answered (api_http_respond), frees
 * the server and calls cb(arg) on the loop thread. The caller must not use srv
 * afterwards; requests still held by handlers stay valid until answered, and
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

#endif
