/* Tests of the waiter table: each waiter fires exactly once — triggered,
 * cancelled, or at shutdown — and ids do not collide. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>

#include "server/wait.h"

struct hits {
    int calls;
    void *last;
};

static void record(void *ctx, void *result) {
    struct hits *h = ctx;
    h->calls++;
    h->last = result;
}

static void trigger_fires_once(void **state) {
    (void)state;
    server_wait_t *w;
    assert_int_equal(server_wait_new(&w), 0);
    struct hits h = {0};
    int result = 7;
    assert_int_equal(server_wait_register(w, 42, record, &h), 0);
    assert_int_equal(server_wait_register(w, 42, record, &h), -EEXIST);
    assert_true(server_wait_trigger(w, 42, &result));
    assert_false(server_wait_trigger(w, 42, &result));
    assert_false(server_wait_cancel(w, 42));
    assert_int_equal(h.calls, 1);
    assert_ptr_equal(h.last, &result);
    server_wait_free(w);
    assert_int_equal(h.calls, 1);
}

static void cancel_and_free_pass_null(void **state) {
    (void)state;
    server_wait_t *w;
    assert_int_equal(server_wait_new(&w), 0);
    struct hits a = {0}, b = {0};
    /* Same bucket (ids 4096 apart) must not confuse the two. */
    assert_int_equal(server_wait_register(w, 1, record, &a), 0);
    assert_int_equal(server_wait_register(w, 1 + 4096, record, &b), 0);
    assert_true(server_wait_cancel(w, 1));
    assert_int_equal(a.calls, 1);
    assert_null(a.last);
    assert_int_equal(b.calls, 0);
    server_wait_free(w);
    assert_int_equal(b.calls, 1);
    assert_null(b.last);
}

struct racer {
    server_wait_t *w;
    uint64_t base;
};

static void count(void *ctx, void *result) {
    (void)result;
    __atomic_add_fetch((int *)ctx, 1, __ATOMIC_SEQ_CST);
}

static void *trigger_all(void *arg) {
    struct racer *r = arg;
    for (uint64_t i = 0; i < 10000; i++)
        server_wait_trigger(r->w, r->base + i, NULL);
    return NULL;
}

/* Triggering and cancelling the same ids from two threads fires each once. */
static void concurrent_trigger_and_cancel(void **state) {
    (void)state;
    server_wait_t *w;
    assert_int_equal(server_wait_new(&w), 0);
    int fired = 0;
    for (uint64_t i = 0; i < 10000; i++)
        assert_int_equal(server_wait_register(w, 1000 + i, count, &fired), 0);
    struct racer r = {.w = w, .base = 1000};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, trigger_all, &r), 0);
    for (uint64_t i = 0; i < 10000; i++)
        server_wait_cancel(w, 1000 + i);
    pthread_join(t, NULL);
    assert_int_equal(fired, 10000);
    server_wait_free(w);
    assert_int_equal(fired, 10000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(trigger_fires_once),
        cmocka_unit_test(cancel_and_free_pass_null),
        cmocka_unit_test(concurrent_trigger_and_cancel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
