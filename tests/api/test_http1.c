/* Tests of the HTTP/1.1 side of the client listener, over real sockets: the
 * built-in /version, routing, malformed input, limits, keep-alive and
 * pipelining, answers from other threads, and listen errors. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"

static char *exchange(int port, const char *request) {
    int fd = harness_connect(port);
    harness_send(fd, request, strlen(request));
    size_t n;
    char *out = harness_recv_all(fd, 5000, &n);
    close(fd);
    return out;
}

static bool starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Reads one response from fd and checks that it starts with `prefix`. */
static void expect_response(int fd, const char *prefix) {
    char *r = harness_recv_response(fd, 5000);
    assert_non_null(r);
    if (!starts_with(r, prefix))
        fail_msg("expected %s, got: %s", prefix, r);
    free(r);
}

static const char *body_of(const char *resp) {
    const char *b = strstr(resp, "\r\n\r\n");
    assert_non_null(b);
    return b + 4;
}

static void version_is_etcd_json(void **state) {
    (void)state;
    struct harness h;
    harness_start(&h, NULL, NULL, NULL);
    char *r = exchange(h.port, "GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_true(starts_with(r, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(r, "\r\nContent-Type: application/json\r\n"));
    assert_string_equal(body_of(r), "{\"etcdserver\":\"" UTIL_ETCD_VERSION
                                    "\",\"etcdcluster\":\"" UTIL_ETCD_CLUSTER_VERSION
                                    "\",\"quoin\":\"" UTIL_QUOIN_VERSION "\"}");
    free(r);
    harness_stop(&h);
}

static void report_unhealthy_later(api_http_req_t *req, void *arg) {
    int *calls = arg;
    (*calls)++;
    api_health_report(req, *calls == 1);
}

static void set_health(api_server_t *srv, void *arg) {
    api_server_set_health_check(srv, report_unhealthy_later, arg);
}

static void health_reports_the_check(void **state) {
    (void)state;
    struct harness h;
    harness_start(&h, NULL, NULL, NULL);
    char *r = exchange(h.port, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_true(starts_with(r, "HTTP/1.1 200 OK\r\n"));
    assert_string_equal(body_of(r), "{\"health\":\"true\"}");
    free(r);
    harness_stop(&h);

    int calls = 0;
    harness_start(&h, NULL, set_health, &calls);
    r = exchange(h.port, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_true(starts_with(r, "HTTP/1.1 200 OK\r\n"));
    free(r);
    r = exchange(h.port, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_true(starts_with(r, "HTTP/1.1 503 Service Unavailable\r\n"));
    assert_string_equal(body_of(r), "{\"health\":\"false\"}");
    free(r);
    harness_stop(&h);
    assert_int_equal(calls, 2);
}

static void unknown_path_is_404_and_wrong_method_405(void **state) {
    (void)state;
    struct harness h;
    harness_start(&h, NULL, NULL, NULL);
    char *r = exchange(h.port, "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_true(starts_with(r, "HTTP/1.1 404 Not Found\r\n"));
    assert_string_equal(body_of(r), "404 page not found\n");
    assert_non_null(strstr(r, "\r\nAccess-Control-Allow-Origin: *\r\n"));
    free(r);
    r = exchange(h.port, "OPTIONS /v3/kv/range HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_true(starts_with(r, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(
        strstr(r, "\r\nAccess-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE\r\n"));
    assert_non_null(strstr(r, "\r\nContent-Length: 0\r\n"));
    free(r);
    r = exchange(h.port, "POST /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_true(starts_with(r, "HTTP/1.1 405 Method Not Allowed\r\n"));
    assert_non_null(strstr(r, "\r\nAllow: GET\r\n"));
    free(r);
    harness_stop(&h);
}

/* Each malformed request gets a 400 and the connection is closed (recv_all
 * returns at EOF, long before its timeout). */
static void malformed_requests_get_400_and_close(void **state) {
    (void)state;
    static const char *bad[] = {
        "garbage\r\n\r\n",
        "GET /version HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
        "GET /version HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        "GET /version HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "GET /version HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        "GET /ver%zzsion HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET version HTTP/1.1\r\nHost: x\r\n\r\n",
        "G(T /version HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /version HTTP/1.1\r\n\r\n",
    };
    struct harness h;
    harness_start(&h, NULL, NULL, NULL);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *r = exchange(h.port, bad[i]);
        if (!starts_with(r, "HTTP/1.1 400 Bad Request"))
            fail_msg("request %zu: %s", i, r);
        assert_non_null(strstr(r, "\r\nConnection: close\r\n"));
        free(r);
    }
    char *r = exchange(h.port, "GET /version HTTP/1.1\r\n\r\n");
    assert_string_equal(body_of(r), "400 Bad Request: missing required Host header");
    free(r);
    r = exchange(h.port, "GET /version HTTP/3.0\r\nHost: x\r\n\r\n");
    assert_true(starts_with(r, "HTTP/1.1 505 "));
    free(r);
    harness_stop(&h);
}

static void pipelined_requests_answer_in_order(void **state) {
    (void)state;
    struct harness h;
    harness_start(&h, NULL, NULL, NULL);
    int fd = harness_connect(h.port);
    const char req[] = "GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /version HTTP/1.1\r\nHost: x\r\n\r\n";
    harness_send(fd, req, sizeof(req) - 1);
    int codes[] = {200, 404, 200};
    for (int i = 0; i < 3; i++) {
        char *r = harness_recv_response(fd, 5000);
        assert_non_null(r);
        char want[32];
        snprintf(want, sizeof(want), "HTTP/1.1 %d ", codes[i]);
        assert_true(starts_with(r, want));
        assert_null(strstr(r, "Connection: close"));
        free(r);
    }
    /* A token list naming close ends the connection too. */
    const char lst[] = "GET /version HTTP/1.1\r\nHost: x\r\nConnection: TE, close\r\n\r\n";
    harness_send(fd, lst, sizeof(lst) - 1);
    char *lr = harness_recv_response(fd, 5000);
    assert_non_null(lr);
    assert_non_null(strstr(lr, "\r\nConnection: close\r\n"));
    free(lr);
    close(fd);
    fd = harness_connect(h.port);

    /* A new connection serves an HTTP/1.0 request, closed after it. */
    const char last[] = "GET /version HTTP/1.0\r\n\r\n";
    harness_send(fd, last, sizeof(last) - 1);
    size_t n;
    char *r = harness_recv_all(fd, 5000, &n);
    assert_true(starts_with(r, "HTTP/1.0 200 OK\r\n"));
    assert_non_null(strstr(r, "\r\nConnection: close\r\n"));
    free(r);
    close(fd);
    harness_stop(&h);
}

/* A request trickling in one byte per send still parses. */
static void request_split_into_single_bytes(void **state) {
    (void)state;
    struct harness h;
    harness_start(&h, NULL, NULL, NULL);
    int fd = harness_connect(h.port);
    const char req[] = "GET /version HTTP/1.1\r\nHost: x\r\n\r\n";
    for (size_t i = 0; i < sizeof(req) - 1; i++)
        harness_send(fd, &req[i], 1);
    expect_response(fd, "HTTP/1.1 200 OK\r\n");
    close(fd);
    harness_stop(&h);
}

static void echo(api_http_req_t *req, void *arg) {
    (void)arg;
    size_t n;
    const void *b = api_http_body(req, &n);
    api_http_add_header(req, "X-Query", api_http_query(req));
    api_http_respond(req, 200, "application/octet-stream", b, n);
}

static void add_echo(api_server_t *srv, void *arg) {
    (void)arg;
    assert_int_equal(api_server_route(srv, "POST", "/echo/", echo, NULL), 0);
    assert_int_equal(api_server_route(srv, "POST", "/echo/", echo, NULL), -EEXIST);
}

static void bodies_and_limits(void **state) {
    (void)state;
    struct api_config cfg;
    api_config_default(&cfg);
    cfg.max_request_bytes = 1000;
    cfg.max_header_bytes = 4096;
    struct harness h;
    harness_start(&h, &cfg, add_echo, NULL);

    char *r = exchange(h.port, "POST /echo/a/b?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                               "Connection: close\r\n\r\nhello");
    assert_true(starts_with(r, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(r, "\r\nX-Query: x=1\r\n"));
    assert_string_equal(body_of(r), "hello");
    free(r);

    r = exchange(h.port,
                 "POST /echo/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 "Connection: close\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nT: v\r\n\r\n");
    assert_true(starts_with(r, "HTTP/1.1 200 OK\r\n"));
    assert_string_equal(body_of(r), "abcdefg");
    free(r);

    /* Expect: 100-continue gets its interim answer before the body is sent. */
    int efd = harness_connect(h.port);
    const char ehead[] = "POST /echo/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                         "Expect: 100-continue\r\nConnection: close\r\n\r\n";
    harness_send(efd, ehead, sizeof(ehead) - 1);
    expect_response(efd, "HTTP/1.1 100 Continue\r\n\r\n");
    harness_send(efd, "abc", 3);
    size_t elen;
    r = harness_recv_all(efd, 5000, &elen);
    assert_true(starts_with(r, "HTTP/1.1 200 OK\r\n"));
    assert_string_equal(body_of(r), "abc");
    free(r);
    close(efd);

    r = exchange(h.port, "POST /echo/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n");
    assert_true(starts_with(r, "HTTP/1.1 413 "));
    free(r);

    r = exchange(h.port, "POST /echo/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "3e9\r\n");
    assert_true(starts_with(r, "HTTP/1.1 413 "));
    free(r);

    r = exchange(h.port, "POST /echo/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert_true(starts_with(r, "HTTP/1.1 501 "));
    free(r);

    /* A head over the limit, sent in full: 431, and the answer is readable (the
     * server drains rather than resetting the connection). */
    size_t big = 64 * 1024;
    char *req = malloc(big + 64);
    assert_non_null(req);
    int n = snprintf(req, 64, "GET /version HTTP/1.1\r\nHost: x\r\nX: ");
    memset(req + n, 'a', big);
    memcpy(req + n + big, "\r\n\r\n", 5);
    int fd = harness_connect(h.port);
    harness_send(fd, req, strlen(req));
    shutdown(fd, SHUT_WR);
    size_t len;
    r = harness_recv_all(fd, 5000, &len);
    assert_true(starts_with(r, "HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    free(r);
    free(req);
    close(fd);
    harness_stop(&h);
}

/* ---- answers from another thread ---- */

struct later {
    api_http_req_t *req;
    int delay_ms;
};

static void *answer_later(void *arg) {
    struct later *l = arg;
    usleep((useconds_t)l->delay_ms * 1000);
    static const char body[] = "late";
    api_http_respond(l->req, 200, "text/plain", body, 4);
    free(l);
    return NULL;
}

static void slow(api_http_req_t *req, void *arg) {
    pthread_t t;
    struct later *l = malloc(sizeof(*l));
    assert_non_null(l);
    l->req = req;
    l->delay_ms = *(int *)arg;
    assert_int_equal(pthread_create(&t, NULL, answer_later, l), 0);
    pthread_detach(t);
}

static void add_slow(api_server_t *srv, void *arg) {
    assert_int_equal(api_server_route(srv, "GET", "/slow", slow, arg), 0);
}

static void answer_from_another_thread(void **state) {
    (void)state;
    int delay = 20;
    struct harness h;
    harness_start(&h, NULL, add_slow, &delay);
    int fd = harness_connect(h.port);
    const char req[] =
        "GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /version HTTP/1.1\r\nHost: x\r\n\r\n";
    harness_send(fd, req, sizeof(req) - 1);
    char *r = harness_recv_response(fd, 5000);
    assert_non_null(r);
    assert_string_equal(body_of(r), "late");
    free(r);
    expect_response(fd, "HTTP/1.1 200 OK\r\n");
    close(fd);
    harness_stop(&h);
}

/* A client that half-closes right after its request still gets the answer. */
static void half_closed_client_gets_answer(void **state) {
    (void)state;
    int delay = 50;
    struct harness h;
    harness_start(&h, NULL, add_slow, &delay);
    int fd = harness_connect(h.port);
    const char req[] = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
    harness_send(fd, req, sizeof(req) - 1);
    shutdown(fd, SHUT_WR);
    size_t n;
    char *r = harness_recv_all(fd, 5000, &n);
    assert_true(starts_with(r, "HTTP/1.1 200 OK\r\n"));
    assert_string_equal(body_of(r), "late");
    free(r);
    close(fd);
    harness_stop(&h);
}

/* The client leaves while a handler holds its request; closing the server
 * waits for the answer, which is dropped. Nothing leaks (ASan checks). */
static void client_gone_before_answer(void **state) {
    (void)state;
    int delay = 300;
    struct harness h;
    harness_start(&h, NULL, add_slow, &delay);
    int fd = harness_connect(h.port);
    const char req[] = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
    harness_send(fd, req, sizeof(req) - 1);
    usleep(50 * 1000);
    close(fd);
    harness_stop(&h);
}

/* ---- listening ---- */

static void port_in_use_is_reported_like_etcd(void **state) {
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    int port = 0;
    for (int tries = 0; tries < 50; tries++) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        port = harness_random_port();
        a.sin_port = htons((uint16_t)port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
            break;
    }
    assert_int_equal(listen(fd, 1), 0);

    uv_loop_t loop;
    api_server_t *srv;
    struct util_err err;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(api_server_new(&loop, NULL, NULL, &srv, &err), 0);
    char url[64], want[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    assert_int_equal(api_server_listen(srv, url, &err), -EADDRINUSE);
    snprintf(want, sizeof(want), "listen tcp 127.0.0.1:%d: bind: address already in use", port);
    assert_string_equal(err.msg, want);
    /* A name resolves to its address, as Go reports it. */
    snprintf(url, sizeof(url), "http://localhost:%d", port);
    assert_int_equal(api_server_listen(srv, url, &err), -EADDRINUSE);
    assert_string_equal(err.msg, want);

    assert_int_equal(api_server_listen(srv, "https://127.0.0.1:2379", &err), -EINVAL);
    assert_string_equal(err.msg, "TLS key/cert (--cert-file, --key-file) must be provided for "
                                 "client url https://127.0.0.1:2379 with HTTPS scheme");
    assert_int_equal(api_server_listen(srv, "unixs://x:1", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "TLS key/cert (--cert-file, --key-file) must be provided"));
    assert_int_equal(api_server_listen(srv, "http://127.0.0.1", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "missing port in address"));
    assert_int_equal(api_server_listen(srv, "ftp://127.0.0.1:1", &err), -EINVAL);
    assert_int_equal(api_server_listen(srv, "http://[::1:2379", &err), -EINVAL);
    assert_int_equal(api_server_listen(srv, "http://127.0.0.1:99999", &err), -EINVAL);

    api_server_close(srv, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    close(fd);
}

static void ipv6_loopback_serves(void **state) {
    (void)state;
    struct harness h;
    int rc = harness_start_at(&h, "[::1]", NULL, NULL, NULL);
    if (rc == -EADDRNOTAVAIL || rc == -EAFNOSUPPORT)
        skip(); /* no IPv6 loopback on this machine */
    assert_int_equal(rc, 0);
    int fd = harness_connect6(h.port);
    const char req[] = "GET /version HTTP/1.1\r\nHost: [::1]\r\n\r\n";
    harness_send(fd, req, sizeof(req) - 1);
    expect_response(fd, "HTTP/1.1 200 OK\r\n");
    close(fd);
    harness_stop(&h);
}

/* unix:// URLs: the socket file (a stale one from an earlier run is
 * replaced) serves like a TCP port. */
static void unix_socket_serves(void **state) {
    (void)state;
    char dir[] = "/tmp/quoin-api-test-XXXXXX", path[64], url[96];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/client.sock", dir);
    FILE *stale = fopen(path, "w");
    assert_non_null(stale);
    fclose(stale);
    struct harness h;
    struct util_err err;
    memset(&h, 0, sizeof(h));
    assert_int_equal(uv_loop_init(&h.loop), 0);
    assert_int_equal(api_server_new(&h.loop, NULL, NULL, &h.srv, &err), 0);
    snprintf(url, sizeof(url), "unix://%s", path);
    assert_int_equal(api_server_listen(h.srv, url, &err), 0);
    harness_run(&h);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    const char req[] = "GET /version HTTP/1.1\r\nHost: x\r\n\r\n";
    harness_send(fd, req, sizeof(req) - 1);
    expect_response(fd, "HTTP/1.1 200 OK\r\n");
    close(fd);
    harness_stop(&h);
    unlink(path);
    rmdir(dir);
}

/* Closing the server with clients connected, mid-request, closes everything. */
static void close_with_clients_connected(void **state) {
    (void)state;
    struct harness h;
    harness_start(&h, NULL, NULL, NULL);
    int fds[8];
    for (int i = 0; i < 8; i++) {
        fds[i] = harness_connect(h.port);
        harness_send(fds[i], "GET /vers", 9);
    }
    usleep(50 * 1000);
    harness_stop(&h);
    for (int i = 0; i < 8; i++) {
        size_t n;
        char *r = harness_recv_all(fds[i], 5000, &n);
        assert_int_equal(n, 0); /* closed without an answer */
        free(r);
        close(fds[i]);
    }
}

/* Two servers, each on its own loop, share one port with reuse_port; every
 * connection is served by one of them. */
static void two_loops_share_a_port(void **state) {
    (void)state;
    struct api_config cfg;
    api_config_default(&cfg);
    cfg.reuse_port = true;
    struct harness a, b;
    harness_start(&a, &cfg, NULL, NULL);
    /* b listens on a's port: start it by hand on the same URL. */
    struct util_err err;
    memset(&b, 0, sizeof(b));
    assert_int_equal(uv_loop_init(&b.loop), 0);
    assert_int_equal(api_server_new(&b.loop, NULL, &cfg, &b.srv, &err), 0);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", a.port);
    assert_int_equal(api_server_listen(b.srv, url, &err), 0);
    b.port = a.port;
    harness_run(&b);
    for (int i = 0; i < 20; i++) {
        int fd = harness_connect(a.port);
        const char req[] = "GET /version HTTP/1.1\r\nHost: x\r\n\r\n";
        harness_send(fd, req, sizeof(req) - 1);
        expect_response(fd, "HTTP/1.1 200 OK\r\n");
        close(fd);
    }
    harness_stop(&b);
    harness_stop(&a);
}

static void connect_and_drop_leaves_no_descriptors(void **state) {
    (void)state;
    struct harness h;
    harness_start(&h, NULL, NULL, NULL);
    /* Warm up: the first connection may open lazily-created descriptors. */
    close(harness_connect(h.port));
    usleep(50 * 1000);
    int before = harness_fd_count();
    for (int i = 0; i < 1000; i++) {
        int fd = harness_connect(h.port);
        if (i % 2)
            harness_send(fd, "GET /vers", 9);
        close(fd);
    }
    /* The server closes its ends asynchronously; it must get there. */
    int after = 0;
    for (int i = 0; i < 100; i++) {
        after = harness_fd_count();
        if (after == before)
            break;
        usleep(20 * 1000);
    }
    assert_int_equal(after, before);
    harness_stop(&h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(version_is_etcd_json),
        cmocka_unit_test(health_reports_the_check),
        cmocka_unit_test(unknown_path_is_404_and_wrong_method_405),
        cmocka_unit_test(malformed_requests_get_400_and_close),
        cmocka_unit_test(pipelined_requests_answer_in_order),
        cmocka_unit_test(request_split_into_single_bytes),
        cmocka_unit_test(bodies_and_limits),
        cmocka_unit_test(answer_from_another_thread),
        cmocka_unit_test(half_closed_client_gets_answer),
        cmocka_unit_test(client_gone_before_answer),
        cmocka_unit_test(port_in_use_is_reported_like_etcd),
        cmocka_unit_test(ipv6_loopback_serves),
        cmocka_unit_test(unix_socket_serves),
        cmocka_unit_test(close_with_clients_connected),
        cmocka_unit_test(two_loops_share_a_port),
        cmocka_unit_test(connect_and_drop_leaves_no_descriptors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
