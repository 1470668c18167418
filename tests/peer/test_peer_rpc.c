/* Requests between members: a call answered by the peer's handler, from any
 * thread; a call nobody answers times out; unknown or unconnected peers are
 * refused at once; calls still waiting when the transport closes fail with
 * -ESHUTDOWN; every callback runs exactly once. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "helpers.h"

#define CLUSTER 0x5151

/* What the answering side does with requests: answer at once (status =
 * method + 1, body reversed) unless `silent`. */
struct server_side {
    struct tnode *node;
    bool silent;
    pthread_mutex_t mu; /* guards what the transport thread records: */
    int requests;
    uint64_t last_deadline;
};

static void on_request(void *arg, uint64_t from, uint64_t id, uint8_t method,
                       uint64_t deadline_mono, const uint8_t *body, size_t len) {
    struct server_side *sv = arg;
    pthread_mutex_lock(&sv->mu);
    sv->requests++;
    sv->last_deadline = deadline_mono;
    pthread_mutex_unlock(&sv->mu);
    if (sv->silent)
        return;
    uint8_t rev[64];
    for (size_t i = 0; i < len && i < sizeof(rev); i++)
        rev[i] = body[len - 1 - i];
    assert_int_equal(peer_transport_reply(sv->node->pt, from, id, (uint8_t)(method + 1), rev, len),
                     0);
}

/* What the calling side saw. */
struct answers {
    pthread_mutex_t mu;
    int n, last_rc;
    uint8_t last_status;
    char last_body[64];
};

static void on_answer(void *arg, int rc, uint8_t status, const uint8_t *body, size_t len) {
    struct answers *a = arg;
    pthread_mutex_lock(&a->mu);
    a->n++;
    a->last_rc = rc;
    a->last_status = status;
    memset(a->last_body, 0, sizeof(a->last_body));
    if (len)
        memcpy(a->last_body, body, len < sizeof(a->last_body) ? len : sizeof(a->last_body) - 1);
    pthread_mutex_unlock(&a->mu);
}

static int answers_wait(struct answers *a, int want, int timeout_ms) {
    for (int t = 0; t < timeout_ms; t += 5) {
        pthread_mutex_lock(&a->mu);
        int n = a->n;
        pthread_mutex_unlock(&a->mu);
        if (n >= want)
            return n;
        msleep(5);
    }
    pthread_mutex_lock(&a->mu);
    int n = a->n;
    pthread_mutex_unlock(&a->mu);
    return n;
}

static void pair(struct tnode *a, struct tnode *b, struct server_side *sv) {
    struct peer_config cfg = {.backoff_min_ms = 20, .backoff_max_ms = 200};
    tnode_start(a, CLUSTER, 1, tport(0), &cfg);
    cfg.on_request = on_request;
    cfg.request_arg = sv;
    tnode_start(b, CLUSTER, 2, tport(1), &cfg);
    sv->node = b;
    tnode_know(a, 2, tport(1));
    tnode_know(b, 1, tport(0));
    assert_true(tnode_connected(a, 2, 5000));
    assert_true(tnode_connected(b, 1, 5000));
}

static void test_call_answered(void **state) {
    (void)state;
    struct tnode a = {0}, b = {0};
    struct server_side sv = {.mu = PTHREAD_MUTEX_INITIALIZER};
    struct answers ans = {.mu = PTHREAD_MUTEX_INITIALIZER};
    pair(&a, &b, &sv);
    uint64_t before = util_now_mono_ns();
    assert_int_equal(peer_transport_call(a.pt, 2, 4, "abc", 3, 2000, on_answer, &ans), 0);
    assert_int_equal(answers_wait(&ans, 1, 5000), 1);
    assert_int_equal(ans.last_rc, 0);
    assert_int_equal(ans.last_status, 5);
    assert_string_equal(ans.last_body, "cba");
    /* The deadline travels as a timeout and lands on the receiver's clock. */
    pthread_mutex_lock(&sv.mu);
    uint64_t deadline = sv.last_deadline;
    pthread_mutex_unlock(&sv.mu);
    assert_true(deadline >= before + 1900000000ull);
    assert_true(deadline <= util_now_mono_ns() + 2000000000ull);
    /* Many calls at once: each answered once, in any order. */
    for (int i = 0; i < 200; i++)
        assert_int_equal(peer_transport_call(a.pt, 2, 1, "x", 1, 5000, on_answer, &ans), 0);
    assert_int_equal(answers_wait(&ans, 201, 5000), 201);
    msleep(100);
    assert_int_equal(answers_wait(&ans, 202, 0), 201);
    tnode_stop(&a, false);
    tnode_stop(&b, false);
}

static void test_call_refused_or_timed_out(void **state) {
    (void)state;
    struct tnode a = {0}, b = {0};
    struct server_side sv = {.silent = true, .mu = PTHREAD_MUTEX_INITIALIZER};
    struct answers ans = {.mu = PTHREAD_MUTEX_INITIALIZER};
    pair(&a, &b, &sv);
    assert_int_equal(peer_transport_call(a.pt, 9, 1, "", 0, 100, on_answer, &ans), -ENOENT);
    assert_int_equal(peer_transport_call(a.pt, 2, 1, "", 0, 100, on_answer, &ans), 0);
    assert_int_equal(answers_wait(&ans, 1, 3000), 1);
    assert_int_equal(ans.last_rc, -ETIMEDOUT);
    pthread_mutex_lock(&sv.mu);
    assert_int_equal(sv.requests, 1);
    pthread_mutex_unlock(&sv.mu);
    /* An answer after the deadline finds no call and is dropped. */
    assert_int_equal(peer_transport_reply(b.pt, 1, 1, 0, "late", 4), 0);
    msleep(100);
    assert_int_equal(answers_wait(&ans, 2, 0), 1);
    /* The peer gone: refused at once once the stream is down. */
    tnode_stop(&b, false);
    int rc = 0;
    for (int i = 0; i < 200 && rc != -ENOTCONN; i++, msleep(10))
        rc = peer_transport_call(a.pt, 2, 1, "", 0, 100, on_answer, &ans);
    assert_int_equal(rc, -ENOTCONN);
    tnode_stop(&a, false);
}

static void test_close_fails_waiting_calls(void **state) {
    (void)state;
    struct tnode a = {0}, b = {0};
    struct server_side sv = {.silent = true, .mu = PTHREAD_MUTEX_INITIALIZER};
    struct answers ans = {.mu = PTHREAD_MUTEX_INITIALIZER};
    pair(&a, &b, &sv);
    for (int i = 0; i < 3; i++)
        assert_int_equal(peer_transport_call(a.pt, 2, 1, "q", 1, 60000, on_answer, &ans), 0);
    tnode_stop(&a, false);
    assert_int_equal(ans.n, 3);
    assert_int_equal(ans.last_rc, -ESHUTDOWN);
    tnode_stop(&b, false);
}

int main(void) {
    tmain_setup();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_call_answered),
        cmocka_unit_test(test_call_refused_or_timed_out),
        cmocka_unit_test(test_close_fails_waiting_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
