/* Test harness for the api layer: see harness.h. */
#include "harness.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int harness_random_port(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned seed = (unsigned)ts.tv_nsec ^ (unsigned)getpid();
    return 20000 + (int)(rand_r(&seed) % 10000);
}

static void *loop_main(void *arg) {
    struct harness *h = arg;
    uv_run(&h->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void on_server_closed(void *arg) {
    struct harness *h = arg;
    h->closed = 1;
}

static void on_stop(uv_async_t *a) {
    struct harness *h = a->data;
    api_server_close(h->srv, on_server_closed, h);
    uv_close((uv_handle_t *)&h->stop, NULL);
}

void harness_start(struct harness *h, const struct api_config *cfg,
                   void (*setup)(api_server_t *srv, void *arg), void *arg) {
    assert_int_equal(harness_start_at(h, "127.0.0.1", cfg, setup, arg), 0);
}

int harness_start_at(struct harness *h, const char *host, const struct api_config *cfg,
                     void (*setup)(api_server_t *srv, void *arg), void *arg) {
    struct util_err err;
    memset(h, 0, sizeof(*h));
    assert_int_equal(uv_loop_init(&h->loop), 0);
    assert_int_equal(api_server_new(&h->loop, NULL, cfg, &h->srv, &err), 0);
    if (setup)
        setup(h->srv, arg);
    int rc = -1;
    for (int tries = 0; tries < 50; tries++) {
        char url[64];
        h->port = harness_random_port();
        snprintf(url, sizeof(url), "http://%s:%d", host, h->port);
        rc = api_server_listen(h->srv, url, &err);
        if (rc != UV_EADDRINUSE)
            break;
    }
    if (rc != 0) {
        api_server_close(h->srv, NULL, NULL);
        uv_run(&h->loop, UV_RUN_DEFAULT);
        assert_int_equal(uv_loop_close(&h->loop), 0);
        return rc;
    }
    harness_run(h);
    return 0;
}

void harness_run(struct harness *h) {
    assert_int_equal(uv_async_init(&h->loop, &h->stop, on_stop), 0);
    h->stop.data = h;
    assert_int_equal(pthread_create(&h->thread, NULL, loop_main, h), 0);
}

void harness_stop(struct harness *h) {
    uv_async_send(&h->stop);
    assert_int_equal(pthread_join(h->thread, NULL), 0);
    assert_int_equal(h->closed, 1);
    assert_int_equal(uv_loop_close(&h->loop), 0);
}

int harness_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    int one = 1; /* as gRPC clients do: small frames (WINDOW_UPDATE) go out at once */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

int harness_connect6(int port) {
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    a.sin6_addr = in6addr_loopback;
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    return fd;
}

void harness_send(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        assert_true(w > 0);
        c += w;
        n -= (size_t)w;
    }
}

/* Reads what is available within timeout_ms; returns bytes read, 0 on EOF, -1
 * on timeout or error. */
static ssize_t recv_some(int fd, char *buf, size_t cap, int timeout_ms) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return -1;
    return recv(fd, buf, cap, 0);
}

char *harness_recv_all(int fd, int timeout_ms, size_t *len) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (;;) {
        if (cap - n < 2048) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        ssize_t r = recv_some(fd, buf + n, cap - n - 1, timeout_ms);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

char *harness_recv_response(int fd, int timeout_ms) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    assert_non_null(buf);
    /* One byte at a time: a pipelined next response must stay in the socket. */
    for (;;) {
        if (n == cap)
            goto fail;
        if (recv_some(fd, buf + n, 1, timeout_ms) != 1)
            goto fail;
        n++;
        if (n >= 4 && memcmp(buf + n - 4, "\r\n\r\n", 4) == 0)
            break;
    }
    buf[n] = '\0';
    const char *cl = strcasestr(buf, "\r\nContent-Length: ");
    size_t body = cl ? strtoul(cl + 18, NULL, 10) : 0;
    if (n + body > cap)
        goto fail;
    while (body > 0) {
        ssize_t r = recv_some(fd, buf + n, body, timeout_ms);
        if (r <= 0)
            goto fail;
        n += (size_t)r;
        body -= (size_t)r;
    }
    buf[n] = '\0';
    return buf;
fail:
    free(buf);
    return NULL;
}

int harness_fd_count(void) {
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}
