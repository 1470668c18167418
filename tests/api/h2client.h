/* A small blocking HTTP/2 client over nghttp2, for driving the gRPC transport
 * frame by frame in tests: what a stream got back (headers, trailers, data,
 * reset) is recorded per stream. */
#ifndef QUOIN_TESTS_API_H2CLIENT_H
#define QUOIN_TESTS_API_H2CLIENT_H

#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/util.h"

#define H2C_MAX_STREAMS 64

struct h2c_stream {
    int32_t id;
    char status[8]; /* :status */
    char content_type[64];
    int grpc_status;        /* -1 until seen */
    char grpc_message[256]; /* raw (percent-encoded) */
    int header_blocks;      /* 1 = trailers-only or no trailers yet */
    struct util_buf data;   /* DATA payload (gRPC-framed messages) */
    bool closed;
    uint32_t rst_code;
    bool reset;
};

struct h2c {
    int fd;
    nghttp2_session *s;
    struct h2c_stream streams[H2C_MAX_STREAMS];
    int nstreams;
    bool goaway;
    bool eof;
    bool paused; /* stop reading: a slow client */
};

/* Connects to 127.0.0.1:port and sends the preface and SETTINGS. */
void h2c_open(struct h2c *c, int port);
void h2c_close(struct h2c *c);

/* Starts a POST to path with gRPC headers; `extra` is a NULL-ended list of
 * name, value pairs. body (may be NULL) is sent as DATA; end_stream closes the
 * client's side. Returns the stream's slot. */
struct h2c_stream *h2c_request(struct h2c *c, const char *method, const char *path,
                               const char *const *extra, const void *body, size_t len,
                               bool end_stream);

/* Pumps I/O until done(c, arg) is true or timeout_ms passes; returns done's value. */
bool h2c_run(struct h2c *c, bool (*done)(struct h2c *c, void *arg), void *arg, int timeout_ms);

/* Common condition: the given stream has closed. */
bool h2c_stream_closed(struct h2c *c, void *stream);

/* Frames a gRPC message (5-byte prefix) into out (caller frees out->data). */
void h2c_grpc_frame(struct util_buf *out, const void *msg, size_t len);

/* Number of whole gRPC messages in a stream's data. */
size_t h2c_count_messages(const struct h2c_stream *st);

#endif
