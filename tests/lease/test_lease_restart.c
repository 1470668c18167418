/* Lease checkpoints, restarts and leader changes: the persisted deadline
 * keeps a restart or a new leader from revoking a lease before the time a
 * client was promised, and from keeping it more than the grace beyond it. A
 * restart is a close and reopen of the store; the restarted member's
 * monotonic clock starts over (MONO1). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "helpers.h"

#define GRACE (SEC / 2)
#define MONO1 (5 * SEC)

static const struct lease_options OPT = {
    .min_ttl = 2, .grace_ns = GRACE, .checkpoint_interval_ns = 20 * SEC};

/* The exact monotonic time lease id expires on this leader: the last moment
 * it is not reported is one nanosecond before. */
static void assert_expires_at(struct fx *f, int64_t id, uint64_t at) {
    int64_t ids[16];
    size_t n = lease_expired(f->ls, at - 1, ids, 16);
    for (size_t i = 0; i < n; i++)
        assert_int_not_equal(ids[i], id);
    n = lease_expired(f->ls, at, ids, 16);
    bool found = false;
    for (size_t i = 0; i < n; i++)
        found = found || ids[i] == id;
    assert_true(found);
}

static void renew(struct fx *f, int64_t id, uint64_t mono, uint64_t wall,
                  struct lease_checkpoint *cp, bool *propose) {
    int64_t ttl;
    assert_int_equal(lease_renew(f->ls, id, mono, wall, &ttl, cp, propose), 0);
}

/* A leader, lease 1 granted at W with TTL 10, renewed at W+at: the renewal
 * asks for a checkpoint, returned in cp. */
static void leader_renewed_at(struct fx *f, uint64_t at, struct lease_checkpoint *cp) {
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    assert_int_equal(fx_grant(f, 1, 10, WALL0, MONO0, NULL), 0);
    bool propose;
    renew(f, 1, MONO0 + at, WALL0 + at, cp, &propose);
    assert_true(propose);
}

static void test_periodic_checkpoints(void **state) {
    struct fx *f = *state;
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    assert_int_equal(fx_grant(f, 1, 100, WALL0, MONO0, NULL), 0);
    assert_int_equal(fx_grant(f, 2, 15, WALL0, MONO0, NULL), 0); /* shorter than an interval */
    struct lease_checkpoint cps[4];
    assert_int_equal(lease_due_checkpoints(f->ls, MONO0 + 20 * SEC - 1, WALL0, cps, 4), 0);
    assert_int_equal(lease_due_checkpoints(f->ls, MONO0 + 20 * SEC, WALL0 + 20 * SEC + 7, cps, 4),
                     1);
    assert_int_equal(cps[0].id, 1);
    assert_int_equal(cps[0].remaining_ttl, 80);
    assert_int_equal(cps[0].deadline_wall_ns, WALL0 + 100 * SEC + 7);
    /* Taken off the schedule until it applies. */
    assert_int_equal(lease_due_checkpoints(f->ls, MONO0 + 30 * SEC, WALL0, cps, 4), 0);
    assert_int_equal(fx_checkpoint(f, cps, 1, MONO0 + 21 * SEC), 0);
    /* Remaining rounds up to a second. */
    assert_int_equal(lease_due_checkpoints(f->ls, MONO0 + 41 * SEC + SEC / 2,
                                           WALL0 + 41 * SEC + SEC / 2, cps, 4),
                     1);
    assert_int_equal(cps[0].remaining_ttl, 59);
    assert_int_equal(cps[0].deadline_wall_ns, WALL0 + 100 * SEC);
    /* A checkpoint of a revoked lease is skipped, as etcd. */
    assert_int_equal(fx_revoke(f, 1, MONO0 + 42 * SEC, NULL), 0);
    assert_int_equal(fx_checkpoint(f, cps, 1, MONO0 + 42 * SEC), 0);
    assert_false(fx_listed(f, 1));
    assert_int_equal(lease_due_checkpoints(f->ls, MONO0 + 1000 * SEC, WALL0, cps, 4), 0);
}

static void test_renewal_past_deadline_asks_for_checkpoint(void **state) {
    struct fx *f = *state;
    struct lease_checkpoint cp;
    bool propose;
    leader_renewed_at(f, 1 * SEC, &cp); /* past the granted deadline W+10 */
    assert_int_equal(cp.id, 1);
    assert_int_equal(cp.remaining_ttl, 0);
    /* Promised W+11; half a TTL more so the next renewals need none. */
    assert_int_equal(cp.deadline_wall_ns, WALL0 + 16 * SEC);
    assert_int_equal(fx_checkpoint(f, &cp, 1, MONO0 + 1 * SEC), 0);
    renew(f, 1, MONO0 + 4 * SEC, WALL0 + 4 * SEC, &cp, &propose);
    assert_false(propose);
    renew(f, 1, MONO0 + 6 * SEC, WALL0 + 6 * SEC, &cp, &propose);
    assert_false(propose);
    renew(f, 1, MONO0 + 7 * SEC, WALL0 + 7 * SEC, &cp, &propose);
    assert_true(propose);
    assert_int_equal(cp.deadline_wall_ns, WALL0 + 22 * SEC);
    /* No checkpoint was due on a schedule: the lease is short. */
    struct lease_checkpoint due[2];
    assert_int_equal(lease_due_checkpoints(f->ls, MONO0 + 7 * SEC, WALL0, due, 2), 0);
}

static void test_late_checkpoint_is_corrected(void **state) {
    struct fx *f = *state;
    struct lease_checkpoint cp;
    leader_renewed_at(f, 3 * SEC, &cp); /* promised W+13 */
    /* An older checkpoint lands first and records less than promised. */
    struct lease_checkpoint old = {
        .id = 1, .remaining_ttl = 8, .deadline_wall_ns = WALL0 + 9 * SEC};
    assert_int_equal(fx_checkpoint(f, &old, 1, MONO0 + 4 * SEC), 0);
    struct lease_checkpoint due[2];
    assert_int_equal(lease_due_checkpoints(f->ls, MONO0 + 4 * SEC, WALL0 + 4 * SEC, due, 2), 1);
    assert_int_equal(due[0].id, 1);
    assert_int_equal(due[0].remaining_ttl, 9);
    assert_int_equal(due[0].deadline_wall_ns, WALL0 + 13 * SEC);
    /* Once a covering one applied, nothing more is due. */
    assert_int_equal(fx_checkpoint(f, &cp, 1, MONO0 + 5 * SEC), 0);
    assert_int_equal(lease_due_checkpoints(f->ls, MONO0 + 5 * SEC, WALL0, due, 2), 0);
}

static void test_restart_neither_early_nor_late(void **state) {
    struct fx *f = *state;
    /* Granted and checkpointed by a leader, then the whole cluster stops. */
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    assert_int_equal(fx_grant(f, 1, 100, WALL0, MONO0, NULL), 0);
    assert_int_equal(fx_grant(f, 2, 50, WALL0 + 10 * SEC, MONO0 + 10 * SEC, NULL), 0);
    /* Lease 1 is checkpointed at W+20 (deadline W+100); lease 2 keeps the
     * deadline of its grant (W+60). */
    struct lease_checkpoint cps[2];
    assert_int_equal(lease_due_checkpoints(f->ls, MONO0 + 20 * SEC, WALL0 + 20 * SEC, cps, 2), 1);
    assert_int_equal(cps[0].deadline_wall_ns, WALL0 + 100 * SEC);
    assert_int_equal(fx_checkpoint(f, cps, 1, MONO0 + 20 * SEC), 0);
    fx_restart(f);
    assert_false(lease_is_primary(f->ls));
    /* Back 40 s after the grant, on a new monotonic clock. */
    assert_int_equal(lease_promote(f->ls, MONO1, WALL0 + 40 * SEC), 0);
    struct lease_ttl t;
    assert_int_equal(lease_time_to_live(f->ls, 1, false, MONO1, &t), 0);
    assert_int_equal(t.granted_ttl, 100);
    assert_int_equal(t.ttl, 60);
    lease_ttl_free(&t);
    /* Deadlines W+100 and W+60 (20 s and 60 s from now) plus the grace. */
    assert_expires_at(f, 2, MONO1 + 20 * SEC + GRACE);
    assert_expires_at(f, 1, MONO1 + 60 * SEC + GRACE);
}

static void test_expired_while_down(void **state) {
    struct fx *f = *state;
    assert_int_equal(fx_grant(f, 1, 10, WALL0, MONO0, NULL), 0);
    assert_int_equal(fx_grant(f, 2, 10, WALL0 + 90 * SEC, MONO0, NULL), 0);
    assert_int_equal(fx_grant(f, 3, 10, WALL0 + 95 * SEC, MONO0, NULL), 0);
    fx_restart(f);
    /* 100.2 s later: lease 1 is long past its deadline (W+10), lease 2 is
     * 0.2 s past it (W+100), lease 3 has 4.8 s left. */
    assert_int_equal(lease_promote(f->ls, MONO1, WALL0 + 100 * SEC + SEC / 5), 0);
    int64_t ids[4];
    assert_int_equal(lease_expired(f->ls, MONO1, ids, 4), 1);
    assert_int_equal(ids[0], 1);
    assert_expires_at(f, 2, MONO1 + GRACE - SEC / 5);
    assert_expires_at(f, 3, MONO1 + 5 * SEC - SEC / 5 + GRACE);
}

static void test_renewed_lease_survives_restart(void **state) {
    struct fx *f = *state;
    struct lease_checkpoint cp;
    leader_renewed_at(f, 8 * SEC, &cp); /* promised W+18; the server proposes it */
    assert_int_equal(fx_checkpoint(f, &cp, 1, MONO0 + 8 * SEC), 0);
    fx_restart(f);
    assert_int_equal(lease_promote(f->ls, MONO1, WALL0 + 17 * SEC), 0);
    /* Alive past the granted deadline (W+10) and at the promised W+18; gone
     * at the persisted deadline W+23 plus the grace. */
    int64_t ids[2];
    assert_int_equal(lease_expired(f->ls, MONO1 + 1 * SEC, ids, 2), 0);
    assert_expires_at(f, 1, MONO1 + 6 * SEC + GRACE);
}

static void test_leader_change_uses_persisted_deadline(void **state) {
    struct fx *f = *state;
    struct lease_checkpoint cp;
    leader_renewed_at(f, 2 * SEC, &cp);
    /* Leadership lost before the checkpoint was proposed: the next leader
     * knows only the granted deadline. */
    lease_demote(f->ls);
    int64_t ids[2];
    assert_int_equal(lease_expired(f->ls, MONO0 + 100 * SEC, ids, 2), 0);
    assert_int_equal(lease_promote(f->ls, MONO0 + 3 * SEC, WALL0 + 3 * SEC), 0);
    assert_expires_at(f, 1, MONO0 + 10 * SEC + GRACE);
}

static void test_no_deadline_falls_back_to_etcd(void **state) {
    struct fx *f = *state;
    /* An unstamped grant and an etcd checkpoint carry no deadline: as etcd,
     * the new leader gives the remaining TTL (else the TTL) plus the grace. */
    assert_int_equal(fx_grant(f, 1, 40, 0, MONO0, NULL), 0);
    assert_int_equal(fx_grant(f, 2, 40, WALL0, MONO0, NULL), 0);
    struct lease_checkpoint cp = {.id = 2, .remaining_ttl = 25};
    assert_int_equal(fx_checkpoint(f, &cp, 1, MONO0), 0);
    fx_restart(f);
    assert_int_equal(lease_promote(f->ls, MONO1, WALL0 + 1000 * SEC), 0);
    assert_expires_at(f, 2, MONO1 + 25 * SEC + GRACE);
    assert_expires_at(f, 1, MONO1 + 40 * SEC + GRACE);
}

static void test_restart_raises_ttl_to_new_minimum(void **state) {
    struct fx *f = *state;
    assert_int_equal(fx_grant(f, 1, 2, WALL0, MONO0, NULL), 0);
    f->opt.min_ttl = 6; /* restarted with a longer election timeout */
    fx_restart(f);
    assert_int_equal(lease_promote(f->ls, MONO1, WALL0), 0);
    int64_t ttl;
    struct lease_checkpoint cp;
    bool propose;
    assert_int_equal(lease_renew(f->ls, 1, MONO1, WALL0, &ttl, &cp, &propose), 0);
    assert_int_equal(ttl, 6);
    assert_expires_at(f, 1, MONO1 + 6 * SEC);
}

static void test_promotion_racing_a_batch(void **state) {
    struct fx *f = *state;
    assert_int_equal(fx_grant(f, 2, 10, WALL0, MONO0, NULL), 0);
    /* The batch commits, promotion reads a snapshot holding it, then the
     * batch's end replays it: the result is as if in either order. */
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(f->db, &b), 0);
    lease_batch_t *lb = lease_batch_begin(f->ls, b);
    assert_int_equal(lease_grant(lb, 1, 10, WALL0, NULL), 0);
    mvcc_result_t *res;
    assert_int_equal(lease_revoke(lb, 2, &res), 0);
    mvcc_result_free(res);
    assert_int_equal(mvcc_batch_commit(b), 0);
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    lease_batch_end(lb, true, MONO0);
    struct lease_ttl t;
    assert_int_equal(lease_time_to_live(f->ls, 2, false, MONO0, &t), LEASE_ENOTFOUND);
    assert_int_equal(lease_time_to_live(f->ls, 1, false, MONO0, &t), 0);
    lease_ttl_free(&t);
    assert_expires_at(f, 1, MONO0 + 10 * SEC);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        FX_TEST(test_periodic_checkpoints, &OPT),
        FX_TEST(test_renewal_past_deadline_asks_for_checkpoint, &OPT),
        FX_TEST(test_late_checkpoint_is_corrected, &OPT),
        FX_TEST(test_restart_neither_early_nor_late, &OPT),
        FX_TEST(test_expired_while_down, &OPT),
        FX_TEST(test_renewed_lease_survives_restart, &OPT),
        FX_TEST(test_leader_change_uses_persisted_deadline, &OPT),
        FX_TEST(test_no_deadline_falls_back_to_etcd, &OPT),
        FX_TEST(test_restart_raises_ttl_to_new_minimum, &OPT),
        FX_TEST(test_promotion_racing_a_batch, &OPT),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
