/* The lease layer under its real threading: an apply thread granting,
 * attaching keys, checkpointing and revoking in batches, an io thread
 * renewing and asking TimeToLive with keys, and a timer thread expiring,
 * checkpointing, and losing and regaining leadership, all at once on one
 * shared hand-driven clock. Under the sanitizers this catches an entry used
 * after another thread freed it; the assertions check that every call returns
 * one of its documented codes (a failed one in a worker thread ends the
 * program, which cmocka cannot unwind, and so still fails the run). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

enum { ROUNDS = 1500 };

struct shared {
    struct fx *f;
    atomic_ullong now; /* seconds past the clock origins, times SEC */
    atomic_bool done;
    atomic_long renewed, expired;
};

static uint64_t mono(struct shared *s) {
    return MONO0 + atomic_load(&s->now);
}

static uint64_t wall(struct shared *s) {
    return WALL0 + atomic_load(&s->now);
}

static void *apply_thread(void *arg) {
    struct shared *s = arg;
    struct fx *f = s->f;
    for (int64_t i = 1; i <= ROUNDS; i++) {
        atomic_fetch_add(&s->now, SEC / 10);
        assert_int_equal(fx_grant(f, i, 2 + i % 4, wall(s), mono(s), NULL), 0);
        char key[32];
        snprintf(key, sizeof(key), "k%05lld", (long long)i);
        fx_put(f, key, i);
        struct lease_checkpoint cp = {.id = i - 1, .remaining_ttl = 1, .deadline_wall_ns = wall(s)};
        assert_int_equal(fx_checkpoint(f, &cp, 1, mono(s)), 0);
        if (i > 5) {
            int rc = fx_revoke(f, i - 5, mono(s), NULL);
            assert_true(rc == 0 || rc == LEASE_ENOTFOUND);
        }
    }
    atomic_store(&s->done, true);
    return NULL;
}

static void *io_thread(void *arg) {
    struct shared *s = arg;
    lease_t *ls = s->f->ls;
    for (uint64_t n = 0; !atomic_load(&s->done); n++) {
        int64_t id = (int64_t)(atomic_load(&s->now) / (SEC / 10)) - (int64_t)(n % 4);
        int64_t ttl;
        struct lease_checkpoint cp;
        bool propose;
        int rc = lease_renew(ls, id, mono(s), wall(s), &ttl, &cp, &propose);
        assert_true(rc == 0 || rc == LEASE_ENOTFOUND || rc == LEASE_EEXPIRED ||
                    rc == LEASE_ENOTPRIMARY);
        if (rc == 0)
            atomic_fetch_add(&s->renewed, 1);
        struct lease_ttl t;
        rc = lease_time_to_live(ls, id, true, mono(s), &t);
        assert_true(rc == 0 || rc == LEASE_ENOTFOUND || rc == LEASE_ENOTPRIMARY);
        assert_true(rc != 0 || t.n_keys <= 1);
        lease_ttl_free(&t);
    }
    return NULL;
}

static void *timer_thread(void *arg) {
    struct shared *s = arg;
    lease_t *ls = s->f->ls;
    for (uint64_t n = 0; !atomic_load(&s->done); n++) {
        int64_t ids[LEASE_REVOKE_BATCH];
        atomic_fetch_add(&s->expired, (long)lease_expired(ls, mono(s), ids, LEASE_REVOKE_BATCH));
        struct lease_checkpoint cps[16];
        lease_due_checkpoints(ls, mono(s), wall(s), cps, 16);
        if (n % 64 == 0)
            lease_demote(ls);
        if (n % 64 == 1)
            assert_int_equal(lease_promote(ls, mono(s), wall(s)), 0);
    }
    return NULL;
}

static void test_threads(void **state) {
    struct shared s = {.f = *state};
    atomic_init(&s.now, 0);
    atomic_init(&s.done, false);
    atomic_init(&s.renewed, 0);
    atomic_init(&s.expired, 0);
    assert_int_equal(lease_promote(s.f->ls, MONO0, WALL0), 0);
    pthread_t a, io, tm;
    assert_int_equal(pthread_create(&io, NULL, io_thread, &s), 0);
    assert_int_equal(pthread_create(&tm, NULL, timer_thread, &s), 0);
    assert_int_equal(pthread_create(&a, NULL, apply_thread, &s), 0);
    pthread_join(a, NULL);
    pthread_join(io, NULL);
    pthread_join(tm, NULL);
    /* The last five leases are left, with their keys. */
    int64_t *ids;
    size_t n;
    assert_int_equal(lease_list(s.f->ls, &ids, &n), 0);
    assert_int_equal(n, 5);
    free(ids);
    assert_true(fx_has_key(s.f, "k01500"));
    assert_false(fx_has_key(s.f, "k01495"));
    print_message("renewed %ld, reported expired %ld\n", atomic_load(&s.renewed),
                  atomic_load(&s.expired));
}

static const struct lease_options OPT = {.min_ttl = 1, .grace_ns = SEC / 10};

int main(void) {
    const struct CMUnitTest tests[] = {
        FX_TEST(test_threads, &OPT),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
