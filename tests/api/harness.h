/* Test harness for the api layer: an api server on its own loop thread, and raw
 * client sockets to talk to it byte by byte. */
#ifndef QUOIN_TESTS_API_HARNESS_H
#define QUOIN_TESTS_API_HARNESS_H

#include <pthread.h>
#include <stddef.h>
#include <uv.h>

#include "api/api.h"

struct harness {
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t thread;
    api_server_t *srv;
    int port;
    const char *host; /* listen host: "127.0.0.1" unless set before harness_start_at */
    int closed;       /* set by the server's close callback */
};

/* Creates the server (cfg may be NULL), lets setup(srv, arg) register routes,
 * listens on 127.0.0.1 at a free port in 20000-29999 and runs the loop in a
 * thread. Fails the test on error. */
void harness_start(struct harness *h, const struct api_config *cfg,
                   void (*setup)(api_server_t *srv, void *arg), void *arg);

/* As harness_start, listening on `host` ("[::1]" for IPv6). Returns 0, or the
 * listen error when the host cannot be bound at all (e.g. no IPv6). */
int harness_start_at(struct harness *h, const char *host, const struct api_config *cfg,
                     void (*setup)(api_server_t *srv, void *arg), void *arg);

/* Runs the loop of a server set up by hand (h->loop and h->srv filled in). */
void harness_run(struct harness *h);

/* Closes the server from its loop, joins the thread, and checks that every
 * handle was closed. */
void harness_stop(struct harness *h);

/* A random port in 20000-29999. */
int harness_random_port(void);

/* Connects to 127.0.0.1:port (or ::1 with harness_connect6); returns the descriptor. */
int harness_connect(int port);
int harness_connect6(int port);

/* Sends all n bytes. */
void harness_send(int fd, const void *p, size_t n);

/* Reads until the peer closes or `timeout_ms` passes without data; returns a
 * NUL-terminated malloc'd buffer and its length in *len. */
char *harness_recv_all(int fd, int timeout_ms, size_t *len);

/* Reads exactly one HTTP/1.1 response (head + Content-Length body); returns it
 * NUL-terminated (caller frees), or NULL on EOF/timeout. */
char *harness_recv_response(int fd, int timeout_ms);

/* Number of open file descriptors of this process. */
int harness_fd_count(void);

#endif
