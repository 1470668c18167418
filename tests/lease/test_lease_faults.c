/* Out of memory at every allocation the lease layer attempts, one at a time
 * (SQLite style): each run of a small scenario fails the next allocation
 * point, until a run gets through without reaching it. Every failure must
 * come back as -ENOMEM with nothing half-done: the batch is aborted and
 * leaves no trace, the leader state either follows the store or is dropped,
 * and the sanitizers see no leak. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>

#include "helpers.h"

static const struct lease_options OPT = {
    .min_ttl = 1, .grace_ns = SEC / 2, .checkpoint_interval_ns = 5 * SEC};

static const char *const KEYS[] = {"", "k1", "k2", "k3"};

typedef int (*batch_fn)(lease_batch_t *lb, mvcc_batch_t *b, const void *arg);

/* One batch: fn, then commit, or abort if it failed. */
static int batch(struct fx *f, batch_fn fn, const void *arg, uint64_t now) {
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(f->db, &b), 0);
    lease_batch_t *lb = lease_batch_begin(f->ls, b);
    int rc = fn(lb, b, arg);
    assert_true(rc == 0 || rc == -ENOMEM);
    if (rc == 0)
        assert_int_equal(mvcc_batch_commit(b), 0);
    else
        mvcc_batch_abort(b);
    lease_batch_end(lb, rc == 0, now);
    return rc;
}

/* Grants leases 1-3 (the third long enough for periodic checkpoints) and
 * attaches one key to each, as the apply thread would. */
static int grant_and_put(lease_batch_t *lb, mvcc_batch_t *b, const void *arg) {
    (void)arg;
    for (int64_t id = 1; id <= 3; id++) {
        int rc = lease_grant(lb, id, id == 3 ? 60 : 10, WALL0, NULL);
        if (rc == 0)
            rc = lease_exists(lb, id);
        if (rc != 0)
            return rc;
        struct mvcc_op op = {.type = MVCC_OP_PUT};
        op.u.put.key = (const uint8_t *)KEYS[id];
        op.u.put.key_len = 2;
        op.u.put.lease = id;
        mvcc_result_t *res;
        assert_int_equal(mvcc_apply(b, &op, &res), 0);
        mvcc_result_free(res);
    }
    return 0;
}

/* Revokes lease 2 (if the grant got through) and applies checkpoint arg. */
static int revoke_and_checkpoint(lease_batch_t *lb, mvcc_batch_t *b, const void *arg) {
    (void)b;
    mvcc_result_t *res;
    int rc = lease_revoke(lb, 2, &res);
    if (rc == LEASE_ENOTFOUND)
        rc = 0;
    else if (rc == 0)
        assert_int_equal(res->n_events, 1);
    mvcc_result_free(res);
    return rc != 0 ? rc : lease_checkpoint(lb, arg, 1);
}

/* The store and the leader state agree: a lease is listed exactly when its
 * key lives, and the leader knows exactly the listed leases. */
static void check_consistent(struct fx *f) {
    int64_t *ids;
    size_t n;
    assert_int_equal(lease_list(f->ls, &ids, &n), 0);
    for (int64_t id = 1; id <= 3; id++) {
        bool listed = false;
        for (size_t i = 0; i < n; i++)
            listed = listed || ids[i] == id;
        assert_int_equal(listed, fx_has_key(f, KEYS[id]));
        struct lease_ttl t;
        int rc = lease_time_to_live(f->ls, id, true, MONO0, &t);
        assert_int_equal(rc, listed ? 0 : LEASE_ENOTFOUND);
        assert_int_equal(t.n_keys, listed ? 1 : 0);
        lease_ttl_free(&t);
    }
    free(ids);
}

/* The scenario; returns whether any call reported -ENOMEM. */
static bool scenario(struct fx *f) {
    bool failed = false;
    int rc = lease_promote(f->ls, MONO0, WALL0);
    assert_true(rc == 0 || rc == -ENOMEM);
    failed |= rc != 0;
    failed |= batch(f, grant_and_put, NULL, MONO0) != 0;
    const struct lease_checkpoint late = {.id = 1, .remaining_ttl = 8, .deadline_wall_ns = WALL0};
    failed |= batch(f, revoke_and_checkpoint, &late, MONO0) != 0;
    int64_t ttl;
    struct lease_checkpoint cps[4];
    bool propose;
    rc = lease_renew(f->ls, 1, MONO0 + SEC, WALL0 + SEC, &ttl, &cps[0], &propose);
    assert_true(rc == 0 || rc == LEASE_ENOTFOUND || rc == LEASE_ENOTPRIMARY);
    if (lease_due_checkpoints(f->ls, MONO0 + 5 * SEC, WALL0 + 5 * SEC, cps, 4) > 0)
        failed |= batch(f, revoke_and_checkpoint, &cps[0], MONO0 + 5 * SEC) != 0;
    struct lease_ttl t;
    rc = lease_time_to_live(f->ls, 3, true, MONO0, &t);
    assert_true(rc == 0 || rc == -ENOMEM || rc == LEASE_ENOTFOUND || rc == LEASE_ENOTPRIMARY);
    failed |= rc == -ENOMEM;
    lease_ttl_free(&t);
    int64_t *ids;
    size_t n;
    rc = lease_list(f->ls, &ids, &n);
    assert_true(rc == 0 || rc == -ENOMEM);
    failed |= rc != 0;
    free(ids);
    return failed;
}

static void test_every_allocation_fails_cleanly(void **state) {
    (void)state;
    long i;
    for (i = 1;; i++) {
        struct fx f;
        fx_open(&f, &OPT);
        lease_test_fail_alloc(f.ls, i);
        bool failed = scenario(&f);
        long attempted = lease_test_fail_alloc(f.ls, 0);
        /* A leader that kept its state agrees with the store; whatever
         * failed, a fresh promotion does too. */
        if (lease_is_primary(f.ls))
            check_consistent(&f);
        assert_int_equal(lease_promote(f.ls, MONO0, WALL0), 0);
        check_consistent(&f);
        fx_close(&f);
        if (attempted < i) {
            assert_false(failed);
            break;
        }
        assert_true(failed || i <= attempted);
    }
    print_message("failed each of %ld allocation points\n", i - 1);
    assert_true(i > 10);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_allocation_fails_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
