/* Tests of the gRPC transport frame by frame, with an nghttp2 client: status
 * and trailers, metadata, deadlines, cancellation, answers from other
 * threads, backpressure on a slow reader, and closing with calls held. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "h2client.h"
#include "harness.h"

/* What the test handlers saw; touched by the loop thread and worker threads. */
struct seen {
    atomic_int cancels;
    atomic_int messages;
    atomic_int writable;
    atomic_int eagain;
    atomic_int finished;
    atomic_int opens;
    atomic_bool gate_on;        /* the gate refuses every method but Echo */
    _Atomic(api_call_t *) held; /* a call a test finishes itself */
    size_t flood_left;
    size_t flood_size;
    pthread_mutex_t mu; /* guards what the call observer saw */
    char observed[512];
};

/* Notes "path=code;" for every finished call. */
static void observe(const char *path, int code, uint64_t duration_ns, void *call_data, void *arg) {
    (void)call_data;
    struct seen *s = arg;
    char one[128];
    (void)duration_ns;
    snprintf(one, sizeof(one), "%s=%d;", path, code);
    pthread_mutex_lock(&s->mu);
    if (strlen(s->observed) + strlen(one) < sizeof(s->observed))
        strcat(s->observed, one);
    pthread_mutex_unlock(&s->mu);
}

/* Each test: a server with the methods below and one connected client. */
struct fixture {
    struct seen seen;
    struct harness h;
    struct h2c c;
    bool stopped; /* the test stopped the server itself */
};

static void register_all(api_server_t *srv, void *arg);

static int start(void **state, size_t max_stream_output_bytes, size_t max_partial_request_bytes,
                 uint32_t max_concurrent_streams) {
    struct fixture *f = calloc(1, sizeof(*f));
    struct api_config cfg;
    assert_non_null(f);
    pthread_mutex_init(&f->seen.mu, NULL);
    api_config_default(&cfg);
    if (max_stream_output_bytes)
        cfg.max_stream_output_bytes = max_stream_output_bytes;
    if (max_partial_request_bytes)
        cfg.max_partial_request_bytes = max_partial_request_bytes;
    if (max_concurrent_streams)
        cfg.max_concurrent_streams = max_concurrent_streams;
    harness_start(&f->h, &cfg, register_all, &f->seen);
    h2c_open(&f->c, f->h.port);
    *state = f;
    return 0;
}

static int setup(void **state) {
    return start(state, 0, 0, 0);
}

/* Stream buffers far smaller than the messages sent: -EAGAIN all the time. */
static int setup_small_buffers(void **state) {
    return start(state, 1024, 0, 0);
}

/* Four concurrent streams per connection. */
static int setup_four_streams(void **state) {
    return start(state, 0, 0, 4);
}

/* Little room for messages in part. */
static int setup_small_partial(void **state) {
    return start(state, 0, 4096, 0);
}

static int teardown(void **state) {
    struct fixture *f = *state;
    h2c_close(&f->c);
    if (!f->stopped)
        harness_stop(&f->h);
    pthread_mutex_destroy(&f->seen.mu);
    free(f);
    return 0;
}

/* Echo: replies with the request bytes followed by the "token" metadata. */
static void echo(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len, void *arg) {
    struct seen *s = arg;
    struct util_buf b = {0};
    (void)msg;
    s->messages++;
    const char *tok = api_call_metadata(call, "token");
    assert_int_equal(util_buf_append(&b, d, len), 0);
    if (tok)
        assert_int_equal(util_buf_printf(&b, "|%s", tok), 0);
    assert_int_equal(api_call_send_raw(call, b.data, b.len), 0);
    util_buf_free(&b);
    assert_int_equal(api_call_finish(call, API_GRPC_OK, NULL), 0);
}

static void fail_with_text(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                           void *arg) {
    (void)msg;
    (void)d;
    (void)len;
    (void)arg;
    api_call_finish(call, API_GRPC_FAILED_PRECONDITION, "bad\n100%");
}

static void hold(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len, void *arg) {
    struct seen *s = arg;
    (void)msg;
    (void)d;
    (void)len;
    s->held = call;
}

static void cancel_and_finish(api_call_t *call, void *arg) {
    struct seen *s = arg;
    s->cancels++;
    if (s->held == call)
        s->held = NULL;
    api_call_finish(call, API_GRPC_CANCELLED, NULL);
}

static void cancel_only(api_call_t *call, void *arg) {
    struct seen *s = arg;
    (void)call;
    s->cancels++; /* the thread holding the call finishes it */
}

static void stream_open(api_call_t *call, void *arg) {
    struct seen *s = arg;
    (void)call;
    s->opens++;
}

static enum api_grpc_code gate(const char *path, const ProtobufCMessage *msg, const char **message,
                               void *arg) {
    struct seen *s = arg;
    (void)msg;
    if (!s->gate_on || strcmp(path, "/t.S/Echo") == 0)
        return API_GRPC_OK;
    *message = "not served here";
    return API_GRPC_UNAVAILABLE;
}

/* Flood: sends flood_left bytes in flood_size messages, obeying -EAGAIN. */
static void flood_more(api_call_t *call, void *arg) {
    struct seen *s = arg;
    static const char zeros[4096];
    while (s->flood_left > 0) {
        int rc = api_call_send_raw(call, zeros, s->flood_size);
        if (rc == -EAGAIN) {
            s->eagain++;
            return;
        }
        assert_int_equal(rc, 0);
        s->flood_left -= s->flood_size;
    }
    api_call_finish(call, API_GRPC_OK, NULL);
}

static void flood_writable(api_call_t *call, void *arg) {
    struct seen *s = arg;
    s->writable++;
    flood_more(call, arg);
}

static void flood_start(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                        void *arg) {
    (void)msg;
    (void)d;
    (void)len;
    flood_more(call, arg);
}

/* Threaded: a worker thread sends 500 numbered messages, then finishes. */
static void *threaded_worker(void *arg) {
    api_call_t *call = arg;
    for (uint32_t i = 0; i < 500; i++) {
        uint8_t m[4] = {(uint8_t)(i >> 24), (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i};
        int rc;
        while ((rc = api_call_send_raw(call, m, 4)) == -EAGAIN)
            usleep(1000);
        assert_int_equal(rc, 0);
    }
    api_call_finish(call, API_GRPC_OK, NULL);
    return NULL;
}

static void threaded_start(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                           void *arg) {
    pthread_t t;
    (void)msg;
    (void)d;
    (void)len;
    (void)arg;
    assert_int_equal(pthread_create(&t, NULL, threaded_worker, call), 0);
    pthread_detach(t);
}

static void register_all(api_server_t *srv, void *arg) {
    const struct api_grpc_method ms[] = {
        {.path = "/t.S/Echo", .on_message = echo},
        {.path = "/t.S/Fail", .on_message = fail_with_text},
        {.path = "/t.S/Hang", .on_message = hold, .on_cancel = cancel_and_finish},
        {.path = "/t.S/Hold", .on_message = hold, .on_cancel = cancel_only},
        {.path = "/t.S/Flood",
         .server_streaming = true,
         .on_open = stream_open,
         .on_message = flood_start,
         .on_cancel = cancel_and_finish,
         .on_writable = flood_writable},
        {.path = "/t.S/Threaded",
         .server_streaming = true,
         .on_open = stream_open,
         .on_message = threaded_start},
    };
    for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
        struct api_grpc_method m = ms[i];
        m.arg = arg;
        assert_int_equal(api_server_register(srv, &m), 0);
    }
    api_server_set_call_observer(srv, observe, arg);
    api_server_set_call_gate(srv, gate, arg);
}

static struct h2c_stream *call(struct h2c *c, const char *path, const char *const *extra,
                               const char *msg) {
    struct util_buf b = {0};
    h2c_grpc_frame(&b, msg, strlen(msg));
    struct h2c_stream *st = h2c_request(c, "POST", path, extra, b.data, b.len, true);
    assert_true(h2c_run(c, h2c_stream_closed, st, 5000));
    util_buf_free(&b);
    return st;
}

static void unary_reply_status_and_metadata(void **state) {
    struct fixture *f = *state;
    struct seen *s = &f->seen;
    struct h2c *c = &f->c;
    const char *md[] = {"token", "secret", NULL};
    struct h2c_stream *st = call(c, "/t.S/Echo", md, "hello");
    assert_string_equal(st->status, "200");
    assert_string_equal(st->content_type, "application/grpc");
    assert_int_equal(st->grpc_status, 0);
    assert_int_equal(st->header_blocks, 2); /* headers, then trailers */
    assert_int_equal(st->data.len, 5 + 12);
    assert_memory_equal(st->data.data + 5, "hello|secret", 12);

    st = call(c, "/t.S/Fail", NULL, "x");
    assert_int_equal(st->grpc_status, API_GRPC_FAILED_PRECONDITION);
    assert_string_equal(st->grpc_message, "bad%0A100%25");
    assert_int_equal(st->header_blocks, 1); /* trailers-only */
    assert_int_equal(st->data.len, 0);

    st = call(c, "/t.S/Nope", NULL, "x");
    assert_int_equal(st->grpc_status, API_GRPC_UNIMPLEMENTED);
    assert_string_equal(st->grpc_message, "unknown method Nope for service t.S");

    const char *gzip[] = {"grpc-encoding", "gzip", NULL};
    st = call(c, "/t.S/Echo", gzip, "x");
    assert_int_equal(st->grpc_status, API_GRPC_UNIMPLEMENTED);

    const char *badto[] = {"grpc-timeout", "12x", NULL};
    st = call(c, "/t.S/Echo", badto, "x");
    assert_int_equal(st->grpc_status, API_GRPC_INTERNAL);

    /* Plain HTTP/2 that is not gRPC gets HTTP statuses. */
    st = h2c_request(c, "GET", "/t.S/Echo", NULL, NULL, 0, true);
    assert_true(h2c_run(c, h2c_stream_closed, st, 5000));
    assert_string_equal(st->status, "405");
    const char *json[] = {"content-type", "application/json", NULL};
    st = call(c, "/t.S/Echo", json, "x");
    assert_string_equal(st->status, "415");

    /* No message before END_STREAM on a unary call. */
    st = h2c_request(c, "POST", "/t.S/Echo", NULL, NULL, 0, true);
    assert_true(h2c_run(c, h2c_stream_closed, st, 5000));
    assert_int_equal(st->grpc_status, API_GRPC_INTERNAL);

    assert_int_equal(s->messages, 1);
    /* Every gRPC call was observed with its status; the plain HTTP/2 ones not. */
    pthread_mutex_lock(&s->mu);
    assert_string_equal(s->observed, "/t.S/Echo=0;/t.S/Fail=9;/t.S/Nope=12;/t.S/Echo=12;"
                                     "/t.S/Echo=13;/t.S/Echo=13;");
    pthread_mutex_unlock(&s->mu);
}

static void server_enforces_deadline(void **state) {
    struct fixture *f = *state;
    struct seen *s = &f->seen;
    struct h2c *c = &f->c;
    const char *to[] = {"grpc-timeout", "50m", NULL};
    uint64_t t0 = util_now_mono_ns();
    struct h2c_stream *st = call(c, "/t.S/Hang", to, "x");
    uint64_t ms = (util_now_mono_ns() - t0) / 1000000;
    assert_int_equal(st->grpc_status, API_GRPC_DEADLINE_EXCEEDED);
    assert_string_equal(st->grpc_message, "context deadline exceeded");
    assert_true(ms >= 45 && ms < 3000);
    assert_int_equal(s->cancels, 1);
}

/* The client resets its stream: the handler is cancelled; it finishes later
 * from another thread, after the stream is gone; nothing leaks. */
static void *finish_later(void *arg) {
    usleep(100 * 1000);
    assert_int_equal(api_call_send_raw(arg, "late", 4), -ECANCELED);
    api_call_finish(arg, API_GRPC_OK, NULL);
    return NULL;
}

static bool cancelled(struct h2c *c, void *arg) {
    (void)c;
    return ((struct seen *)arg)->cancels > 0;
}

static bool is_held(struct h2c *c, void *arg) {
    (void)c;
    return ((struct seen *)arg)->held != NULL;
}

/* Starts a /t.S/Hold call and waits until its handler holds it. */
static struct h2c_stream *start_held_call(struct fixture *f) {
    struct util_buf b = {0};
    h2c_grpc_frame(&b, "x", 1);
    struct h2c_stream *st = h2c_request(&f->c, "POST", "/t.S/Hold", NULL, b.data, b.len, true);
    assert_true(h2c_run(&f->c, is_held, &f->seen, 5000));
    util_buf_free(&b);
    return st;
}

static void client_reset_cancels_handler(void **state) {
    struct fixture *f = *state;
    struct seen *s = &f->seen;
    struct h2c *c = &f->c;
    struct h2c_stream *st = start_held_call(f);
    api_call_t *held = s->held;
    nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
    assert_true(h2c_run(c, cancelled, s, 5000));
    assert_true(api_call_is_cancelled(held));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, finish_later, held), 0);
    pthread_join(t, NULL);
}

/* Closing the server while a thread holds a call: the handler is cancelled
 * and the close completes once the thread finishes. */
static void close_waits_for_held_calls(void **state) {
    struct fixture *f = *state;
    struct seen *s = &f->seen;
    start_held_call(f);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, finish_later, s->held), 0);
    harness_stop(&f->h); /* returns only after finish_later's finish */
    f->stopped = true;
    pthread_join(t, NULL);
    assert_int_equal(s->cancels, 1);
}

static bool saw_eagain(struct h2c *c, void *arg) {
    (void)c;
    return ((struct seen *)arg)->eagain > 0;
}

/* A client that does not read: the handler gets -EAGAIN, then on_writable
 * once the client reads again, and everything arrives. */
static void slow_reader_gets_backpressure(void **state) {
    struct fixture *f = *state;
    struct seen *s = &f->seen;
    struct h2c *c = &f->c;
    s->flood_left = 8 << 20;
    s->flood_size = 4096;
    struct util_buf b = {0};
    h2c_grpc_frame(&b, "go", 2);
    struct h2c_stream *st = h2c_request(c, "POST", "/t.S/Flood", NULL, b.data, b.len, true);
    c->paused = true; /* sends the request, reads nothing */
    assert_true(h2c_run(c, saw_eagain, s, 10000));
    assert_false(st->closed);
    c->paused = false;
    assert_true(h2c_run(c, h2c_stream_closed, st, 30000));
    assert_int_equal(st->grpc_status, 0);
    assert_int_equal(h2c_count_messages(st), (8 << 20) / 4096);
    assert_true(s->writable > 0);
    util_buf_free(&b);
}

/* Messages sent from another thread arrive complete and in order. */
static void sends_from_another_thread_keep_order(void **state) {
    struct fixture *f = *state;
    struct h2c *c = &f->c;
    struct h2c_stream *st = call(c, "/t.S/Threaded", NULL, "go");
    assert_int_equal(st->grpc_status, 0);
    assert_int_equal(h2c_count_messages(st), 500);
    const uint8_t *d = (const uint8_t *)st->data.data;
    for (uint32_t i = 0; i < 500; i++) {
        const uint8_t *m = d + i * 9 + 5;
        assert_int_equal((uint32_t)m[0] << 24 | m[1] << 16 | m[2] << 8 | m[3], i);
    }
}

/* Past the bound on messages in part, the stream adding more is refused;
 * what it held is given back, so the next request gets through. */
static void partial_requests_are_bounded(void **state) {
    struct fixture *f = *state;
    struct h2c *c = &f->c;
    static char big[3000];
    struct util_buf b = {0};
    h2c_grpc_frame(&b, big, sizeof(big));
    /* Two requests whose first 3,000 bytes each are in, but not their ends. */
    struct h2c_stream *st1 = h2c_request(c, "POST", "/t.S/Echo", NULL, b.data, 2500, false);
    struct h2c_stream *st2 = h2c_request(c, "POST", "/t.S/Echo", NULL, b.data, 2500, false);
    assert_true(h2c_run(c, h2c_stream_closed, st2, 5000));
    assert_false(st1->closed);
    assert_int_equal(st2->grpc_status, API_GRPC_RESOURCE_EXHAUSTED);
    assert_string_equal(st2->grpc_message, "etcdserver: too many requests");
    nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, st1->id, NGHTTP2_CANCEL);
    struct h2c_stream *st3 = h2c_request(c, "POST", "/t.S/Echo", NULL, b.data, b.len, true);
    assert_true(h2c_run(c, h2c_stream_closed, st3, 5000));
    assert_int_equal(st3->grpc_status, 0);
    util_buf_free(&b);
}

static bool two_closed(struct h2c *c, void *arg) {
    struct h2c_stream **st = arg;
    int closed = 0;
    (void)c;
    for (int i = 0; i < 6; i++)
        closed += st[i]->closed;
    return closed == 2;
}

/* Streams past max_concurrent_streams are refused; those admitted are
 * cancelled when the connection goes, and nothing leaks. */
static void streams_past_the_limit_are_refused(void **state) {
    struct fixture *f = *state;
    struct h2c *c = &f->c;
    struct h2c_stream *st[6];
    struct util_buf b = {0};
    /* Sent before the server's SETTINGS arrive, so the client does not hold
     * back the extra streams itself. */
    h2c_grpc_frame(&b, "x", 1);
    for (int i = 0; i < 6; i++)
        st[i] = h2c_request(c, "POST", "/t.S/Hang", NULL, b.data, b.len, true);
    assert_true(h2c_run(c, two_closed, st, 5000));
    h2c_run(c, two_closed, st, 200); /* no more than two */
    int refused = 0;
    for (int i = 0; i < 6; i++)
        if (st[i]->closed) {
            assert_int_equal(st[i]->rst_code, NGHTTP2_REFUSED_STREAM);
            refused++;
        }
    assert_int_equal(refused, 2);
    util_buf_free(&b);
}

/* The server's gate ends the calls it refuses, unary or streaming, with its
 * status before any handler sees them; the calls it lets through run. */
static void gate_refuses_before_the_handler(void **state) {
    struct fixture *f = *state;
    struct seen *s = &f->seen;
    s->gate_on = true;
    struct h2c_stream *st = call(&f->c, "/t.S/Echo", NULL, "hi");
    assert_int_equal(st->grpc_status, API_GRPC_OK);
    st = call(&f->c, "/t.S/Hold", NULL, "x");
    assert_int_equal(st->grpc_status, API_GRPC_UNAVAILABLE);
    assert_string_equal(st->grpc_message, "not served here");
    st = call(&f->c, "/t.S/Flood", NULL, "x");
    assert_int_equal(st->grpc_status, API_GRPC_UNAVAILABLE);
    assert_string_equal(st->grpc_message, "not served here");
    assert_int_equal(s->messages, 1);
    assert_null(s->held);
    assert_int_equal(s->opens, 0);
    pthread_mutex_lock(&s->mu);
    assert_string_equal(s->observed, "/t.S/Echo=0;/t.S/Hold=14;/t.S/Flood=14;");
    pthread_mutex_unlock(&s->mu);
}

static void register_validates(void **state) {
    (void)state;
    uv_loop_t loop;
    api_server_t *srv;
    struct util_err err;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(api_server_new(&loop, NULL, NULL, &srv, &err), 0);
    struct api_grpc_method m = {.path = "/a.B/C", .on_message = echo};
    assert_int_equal(api_server_register(srv, &m), 0);
    assert_int_equal(api_server_register(srv, &m), -EEXIST);
    const char *bad[] = {"a.B/C", "/a.B", "/a.B/", "//C"};
    for (size_t i = 0; i < 4; i++) {
        m.path = bad[i];
        assert_int_equal(api_server_register(srv, &m), -EINVAL);
    }
    m.path = "/a.B/Stream";
    m.server_streaming = true; /* streaming needs on_open */
    assert_int_equal(api_server_register(srv, &m), -EINVAL);
    api_server_close(srv, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(unary_reply_status_and_metadata, setup, teardown),
        cmocka_unit_test_setup_teardown(server_enforces_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(client_reset_cancels_handler, setup, teardown),
        cmocka_unit_test_setup_teardown(close_waits_for_held_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(slow_reader_gets_backpressure, setup_small_buffers,
                                        teardown),
        cmocka_unit_test_setup_teardown(sends_from_another_thread_keep_order, setup_small_buffers,
                                        teardown),
        cmocka_unit_test_setup_teardown(partial_requests_are_bounded, setup_small_partial,
                                        teardown),
        cmocka_unit_test_setup_teardown(streams_past_the_limit_are_refused, setup_four_streams,
                                        teardown),
        cmocka_unit_test_setup_teardown(gate_refuses_before_the_handler, setup, teardown),
        cmocka_unit_test(register_validates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
