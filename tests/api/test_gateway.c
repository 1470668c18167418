/* Tests of the v3 JSON gateway's JSON <-> protobuf mapping, through real
 * HTTP requests: strings and escapes, repeated fields, oneofs in requests and
 * answers, enums, 64-bit integers as strings. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/proto/rpc.pb-c.h"
#include "harness.h"

/* UserGet answers with the asked name, and the name with "!" appended, as roles. */
static void user_get(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                     void *arg) {
    Etcdserverpb__AuthUserGetRequest *req = (Etcdserverpb__AuthUserGetRequest *)msg;
    Etcdserverpb__AuthUserGetResponse resp = ETCDSERVERPB__AUTH_USER_GET_RESPONSE__INIT;
    char bang[256];
    (void)d;
    (void)len;
    (void)arg;
    snprintf(bang, sizeof(bang), "%s!", req->name);
    char *roles[] = {req->name, bang};
    resp.roles = roles;
    resp.n_roles = 2;
    api_call_reply(call, &resp.base);
    protobuf_c_message_free_unpacked(msg, NULL);
}

/* Txn answers each success op with an answer of the same kind; a range's
 * count is the limit it asked for. succeeded = there were compares. */
static void txn(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len, void *arg) {
    Etcdserverpb__TxnRequest *req = (Etcdserverpb__TxnRequest *)msg;
    Etcdserverpb__TxnResponse resp = ETCDSERVERPB__TXN_RESPONSE__INIT;
    Etcdserverpb__ResponseOp ops[8], *opp[8];
    Etcdserverpb__RangeResponse ranges[8];
    Etcdserverpb__PutResponse puts[8];
    (void)d;
    (void)len;
    (void)arg;
    assert_true(req->n_success <= 8);
    for (size_t i = 0; i < req->n_success; i++) {
        etcdserverpb__response_op__init(&ops[i]);
        if (req->success[i]->request_case == ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE) {
            etcdserverpb__range_response__init(&ranges[i]);
            ranges[i].count = req->success[i]->request_range->limit;
            ops[i].response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE;
            ops[i].response_range = &ranges[i];
        } else {
            etcdserverpb__put_response__init(&puts[i]);
            ops[i].response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT;
            ops[i].response_put = &puts[i];
        }
        opp[i] = &ops[i];
    }
    resp.succeeded = req->n_compare > 0 &&
                     req->compare[0]->result == ETCDSERVERPB__COMPARE__COMPARE_RESULT__NOT_EQUAL;
    resp.responses = opp;
    resp.n_responses = req->n_success;
    api_call_reply(call, &resp.base);
    protobuf_c_message_free_unpacked(msg, NULL);
}

/* Snapshot streams one piece, then fails. */
static void snapshot_open(api_call_t *call, void *arg) {
    (void)call;
    (void)arg;
}

static void snapshot(api_call_t *call, ProtobufCMessage *msg, const uint8_t *d, size_t len,
                     void *arg) {
    Etcdserverpb__SnapshotResponse piece = ETCDSERVERPB__SNAPSHOT_RESPONSE__INIT;
    (void)d;
    (void)len;
    (void)arg;
    piece.remaining_bytes = 5;
    piece.blob.data = (uint8_t *)"abc";
    piece.blob.len = 3;
    api_call_send(call, &piece.base);
    api_call_finish(call, API_GRPC_UNAVAILABLE, "etcdserver: not capable");
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void setup(api_server_t *srv, void *arg) {
    struct api_grpc_method snap = {.path = "/etcdserverpb.Maintenance/Snapshot",
                                   .server_streaming = true,
                                   .request = &etcdserverpb__snapshot_request__descriptor,
                                   .response = &etcdserverpb__snapshot_response__descriptor,
                                   .on_open = snapshot_open,
                                   .on_message = snapshot};
    assert_int_equal(api_server_register(srv, &snap), 0);
    struct api_grpc_method u = {.path = "/etcdserverpb.Auth/UserGet",
                                .request = &etcdserverpb__auth_user_get_request__descriptor,
                                .response = &etcdserverpb__auth_user_get_response__descriptor,
                                .on_message = user_get};
    struct api_grpc_method t = {.path = "/etcdserverpb.KV/Txn",
                                .request = &etcdserverpb__txn_request__descriptor,
                                .response = &etcdserverpb__txn_response__descriptor,
                                .on_message = txn};
    (void)arg;
    assert_int_equal(api_server_register(srv, &u), 0);
    assert_int_equal(api_server_register(srv, &t), 0);
}

/* Refuses UserGet of the name "refused", and every Snapshot. */
static enum api_grpc_code gate(const char *path, const ProtobufCMessage *msg, const char **message,
                               void *arg) {
    (void)arg;
    *message = "not served here";
    if (strcmp(path, "/etcdserverpb.Maintenance/Snapshot") == 0)
        return msg ? API_GRPC_INTERNAL : API_GRPC_UNAVAILABLE; /* a stream: no message */
    if (strcmp(path, "/etcdserverpb.Auth/UserGet") == 0 &&
        strcmp(((const Etcdserverpb__AuthUserGetRequest *)msg)->name, "refused") == 0)
        return API_GRPC_UNAVAILABLE;
    return API_GRPC_OK;
}

static void setup_gated(api_server_t *srv, void *arg) {
    setup(srv, arg);
    api_server_set_call_gate(srv, gate, arg);
}

/* POSTs body to path with HTTP/1.<minor>; returns the whole response (caller frees). */
static char *post_raw(int port, int minor, const char *path, const char *body) {
    char head[256];
    int fd = harness_connect(port);
    int n = snprintf(head, sizeof(head),
                     "POST %s HTTP/1.%d\r\nHost: x\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     path, minor, strlen(body));
    harness_send(fd, head, (size_t)n);
    harness_send(fd, body, strlen(body));
    size_t len;
    char *r = harness_recv_all(fd, 5000, &len);
    close(fd);
    return r;
}

/* POSTs body to path; returns the response body (caller frees). */
static char *post(int port, const char *path, const char *body) {
    char *r = post_raw(port, 1, path, body);
    char *b = strstr(r, "\r\n\r\n");
    assert_non_null(b);
    char *out = strdup(b + 4);
    free(r);
    return out;
}

/* A streamed answer: result lines in chunks, then grpc-gateway's error line. */
static void streams_end_with_error_line(void **state) {
    (void)state;
    struct harness h;
    harness_start(&h, NULL, setup, NULL);
    static const char result[] = "{\"result\":{\"remaining_bytes\":\"5\",\"blob\":\"YWJj\"}}\n";
    static const char error[] = "{\"error\":{\"grpc_code\":14,\"http_code\":503,"
                                "\"message\":\"etcdserver: not capable\"}}\n";
    char want[512];
    char *r = post_raw(h.port, 1, "/v3/maintenance/snapshot", "");
    assert_non_null(strstr(r, "\r\nTransfer-Encoding: chunked\r\n"));
    snprintf(want, sizeof(want), "\r\n\r\n%zx\r\n%s\r\n%zx\r\n%s\r\n0\r\n\r\n", sizeof(result) - 1,
             result, sizeof(error) - 1, error);
    assert_non_null(strstr(r, want));
    free(r);
    /* HTTP/1.0 has no chunks: the lines as they are, and the close ends them. */
    r = post_raw(h.port, 0, "/v3/maintenance/snapshot", "");
    assert_null(strstr(r, "Transfer-Encoding"));
    snprintf(want, sizeof(want), "\r\n\r\n%s%s", result, error);
    assert_non_null(strstr(r, want));
    free(r);
    harness_stop(&h);
}

static void strings_and_repeated_fields(void **state) {
    (void)state;
    struct harness h;
    harness_start(&h, NULL, setup, NULL);
    char *r =
        post(h.port, "/v3/auth/user/get", "{\"name\": \"a\\u00e9\\ud83d\\ude00\\\"\\\\\\n\\/\"}");
    assert_string_equal(r, "{\"roles\":[\"a\xc3\xa9\xf0\x9f\x98\x80\\\"\\\\\\n/\","
                           "\"a\xc3\xa9\xf0\x9f\x98\x80\\\"\\\\\\n/!\"]}");
    free(r);
    /* Bytes that are not UTF-8 come back as U+FFFD, so the JSON stays valid. */
    r = post(h.port, "/v3/auth/user/get",
             "{\"name\": \"a\xff\xc3"
             "b\"}");
    assert_string_equal(r, "{\"roles\":[\"a\\ufffd\\ufffdb\",\"a\\ufffd\\ufffdb!\"]}");
    free(r);
    r = post(h.port, "/v3/auth/user/get", "{\"name\": \"bad \\x\"}");
    assert_non_null(strstr(r, "\"code\":3}"));
    free(r);
    harness_stop(&h);
}

static void oneofs_enums_and_int64(void **state) {
    (void)state;
    struct harness h;
    harness_start(&h, NULL, setup, NULL);
    char *r =
        post(h.port, "/v3/kv/txn",
             "{\"compare\":[{\"result\":\"NOT_EQUAL\",\"target\":\"VALUE\","
             "\"key\":\"Zm9v\",\"value\":\"YmFy\"}],"
             "\"success\":[{\"request_range\":{\"key\":\"Zm9v\",\"limit\":\"9007199254740993\"}},"
             "{\"requestPut\":{\"key\":\"Zm9v\",\"value\":\"\"}}]}");
    assert_string_equal(r, "{\"succeeded\":true,\"responses\":["
                           "{\"response_range\":{\"count\":\"9007199254740993\"}},"
                           "{\"response_put\":{}}]}");
    free(r);
    /* Enums by number too; an unknown enum name is an error. */
    r = post(h.port, "/v3/kv/txn", "{\"compare\":[{\"result\":3}]}");
    assert_string_equal(r, "{\"succeeded\":true}");
    free(r);
    r = post(h.port, "/v3/kv/txn", "{\"compare\":[{\"result\":\"SOMETIMES\"}]}");
    assert_non_null(strstr(r, "unknown value \\\"SOMETIMES\\\""));
    free(r);
    harness_stop(&h);
}

/* The server's gate sees a unary call's decoded request and refuses it, or
 * a streaming call at its start, before any handler runs. */
static void gate_refuses_gateway_calls(void **state) {
    (void)state;
    struct harness h;
    harness_start(&h, NULL, setup_gated, NULL);
    char *r = post(h.port, "/v3/auth/user/get", "{\"name\": \"fine\"}");
    assert_string_equal(r, "{\"roles\":[\"fine\",\"fine!\"]}");
    free(r);
    r = post(h.port, "/v3/auth/user/get", "{\"name\": \"refused\"}");
    assert_non_null(strstr(r, "\"not served here\""));
    assert_non_null(strstr(r, "\"code\":14}"));
    free(r);
    /* Nothing streamed yet: a plain error answer, as for a unary call. */
    r = post(h.port, "/v3/maintenance/snapshot", "");
    assert_non_null(strstr(r, "\"not served here\""));
    assert_non_null(strstr(r, "\"code\":14}"));
    assert_null(strstr(r, "result"));
    free(r);
    harness_stop(&h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(strings_and_repeated_fields),
        cmocka_unit_test(oneofs_enums_and_int64),
        cmocka_unit_test(streams_end_with_error_line),
        cmocka_unit_test(gate_refuses_gateway_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
