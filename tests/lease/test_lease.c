/* Lease layer: grant, revoke (with the attached keys and their events),
 * renew, TimeToLive, list, expiry order and rate limit, on a real store with
 * hand-driven clocks. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "helpers.h"

static const struct lease_options OPT = {.min_ttl = 3, .grace_ns = SEC / 2};

static void test_errors_have_etcd_strings(void **state) {
    (void)state;
    assert_string_equal(lease_strerror(LEASE_ENOTFOUND), "etcdserver: requested lease not found");
    assert_string_equal(lease_strerror(LEASE_EEXISTS), "etcdserver: lease already exists");
    assert_string_equal(lease_strerror(LEASE_ETTLTOOLARGE), "etcdserver: too large lease TTL");
    assert_string_equal(lease_strerror(LEASE_EEXPIRED), "etcdserver: requested lease not found");
    assert_string_equal(lease_strerror(MVCC_ECOMPACTED),
                        "etcdserver: mvcc: required revision has been compacted");
}

static void test_grant_list_exists(void **state) {
    struct fx *f = *state;
    int64_t granted = 0;
    assert_int_equal(fx_grant(f, 7, 10, WALL0, MONO0, &granted), 0);
    assert_int_equal(granted, 10);
    assert_true(fx_listed(f, 7));
    assert_false(fx_listed(f, 8));
    assert_int_equal(fx_exists(f, 7), 0);
    assert_int_equal(fx_exists(f, 8), LEASE_ENOTFOUND);
    assert_int_equal(fx_exists(f, 0), LEASE_ENOTFOUND);
    /* A lease grant is not a key-space write: the revision stays. */
    assert_int_equal(fx_revision(f), 1);
}

static void test_grant_duplicate_and_zero_id(void **state) {
    struct fx *f = *state;
    int64_t granted = 0;
    assert_int_equal(fx_grant(f, 7, 10, WALL0, MONO0, NULL), 0);
    assert_int_equal(fx_grant(f, 7, 20, WALL0, MONO0, &granted), LEASE_EEXISTS);
    assert_int_equal(granted, 0);
    assert_int_equal(fx_grant(f, 0, 20, WALL0, MONO0, NULL), LEASE_ENOTFOUND);
    /* The first grant is untouched. */
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    struct lease_ttl t;
    assert_int_equal(lease_time_to_live(f->ls, 7, false, MONO0, &t), 0);
    assert_int_equal(t.granted_ttl, 10);
    lease_ttl_free(&t);
}

static void test_grant_ttl_bounds(void **state) {
    struct fx *f = *state;
    int64_t granted = 0;
    assert_int_equal(fx_grant(f, 1, LEASE_MAX_TTL + 1, WALL0, MONO0, &granted), LEASE_ETTLTOOLARGE);
    assert_false(fx_listed(f, 1));
    assert_int_equal(fx_grant(f, 1, LEASE_MAX_TTL, WALL0, MONO0, &granted), 0);
    assert_int_equal(granted, LEASE_MAX_TTL);
    /* Below the minimum, zero and negative TTLs are raised to it. */
    assert_int_equal(fx_grant(f, 2, 1, WALL0, MONO0, &granted), 0);
    assert_int_equal(granted, 3);
    assert_int_equal(fx_grant(f, 3, 0, WALL0, MONO0, &granted), 0);
    assert_int_equal(granted, 3);
    assert_int_equal(fx_grant(f, 4, -5, WALL0, MONO0, &granted), 0);
    assert_int_equal(granted, 3);
    /* The huge TTL neither overflows nor expires. */
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    int64_t ids[8];
    assert_int_equal(lease_expired(f->ls, MONO0 + 100 * SEC, ids, 8), 3);
    struct lease_ttl t;
    assert_int_equal(lease_time_to_live(f->ls, 1, false, MONO0 + 100 * SEC, &t), 0);
    assert_true(t.ttl > LEASE_MAX_TTL - 200);
    lease_ttl_free(&t);
}

static bool key_is(const struct mvcc_kv *kv, const char *key) {
    return kv->key_len == strlen(key) && memcmp(kv->key, key, kv->key_len) == 0;
}

static void test_revoke_deletes_attached_keys_only(void **state) {
    struct fx *f = *state;
    assert_int_equal(fx_grant(f, 1, 10, WALL0, MONO0, NULL), 0);
    assert_int_equal(fx_grant(f, 2, 10, WALL0, MONO0, NULL), 0);
    fx_put(f, "b", 1);
    fx_put(f, "a", 1);
    fx_put(f, "c", 2);
    fx_put(f, "d", 0);
    fx_put(f, "e", 1);
    fx_put(f, "e", 2); /* moved to lease 2 */
    fx_put(f, "f", 1);
    fx_put(f, "f", 0); /* detached */
    int64_t rev = fx_revision(f);
    mvcc_result_t *res;
    assert_int_equal(fx_revoke(f, 1, MONO0, &res), 0);
    /* One revision, one delete event per key in key order. */
    assert_int_equal(res->resp.revision, rev + 1);
    assert_int_equal(fx_revision(f), rev + 1);
    assert_int_equal(res->n_events, 2);
    assert_int_equal(res->events[0].type, MVCC_EVENT_DELETE);
    assert_true(key_is(&res->events[0].kv, "a"));
    assert_true(key_is(&res->events[1].kv, "b"));
    assert_int_equal(res->events[0].kv.mod_revision, rev + 1);
    assert_int_equal(res->events[1].kv.mod_revision, rev + 1);
    assert_true(res->events[0].has_prev);
    assert_int_equal(res->events[0].prev_kv.lease, 1);
    mvcc_result_free(res);
    assert_false(fx_has_key(f, "a"));
    assert_false(fx_has_key(f, "b"));
    assert_true(fx_has_key(f, "c"));
    assert_true(fx_has_key(f, "d"));
    assert_true(fx_has_key(f, "e"));
    assert_true(fx_has_key(f, "f"));
    assert_false(fx_listed(f, 1));
    assert_true(fx_listed(f, 2));
    assert_int_equal(fx_revoke(f, 1, MONO0, &res), LEASE_ENOTFOUND);
    assert_null(res);
    /* Lease 2 now holds c and e. */
    assert_int_equal(fx_revoke(f, 2, MONO0, &res), 0);
    assert_int_equal(res->n_events, 2);
    assert_true(key_is(&res->events[0].kv, "c"));
    assert_true(key_is(&res->events[1].kv, "e"));
    mvcc_result_free(res);
    assert_false(fx_has_key(f, "e"));
    assert_true(fx_has_key(f, "f"));
}

static void test_revoke_without_keys_keeps_revision(void **state) {
    struct fx *f = *state;
    assert_int_equal(fx_grant(f, 5, 10, WALL0, MONO0, NULL), 0);
    fx_put(f, "x", 0);
    int64_t rev = fx_revision(f);
    mvcc_result_t *res;
    assert_int_equal(fx_revoke(f, 5, MONO0, &res), 0);
    assert_int_equal(res->n_events, 0);
    assert_int_equal(res->resp.revision, rev);
    assert_int_equal(fx_revision(f), rev);
    mvcc_result_free(res);
    assert_int_equal(fx_exists(f, 5), LEASE_ENOTFOUND);
}

static void test_abort_leaves_nothing(void **state) {
    struct fx *f = *state;
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(f->db, &b), 0);
    lease_batch_t *lb = lease_batch_begin(f->ls, b);
    assert_int_equal(lease_grant(lb, 9, 10, WALL0, NULL), 0);
    assert_int_equal(lease_exists(lb, 9), 0); /* the batch sees its own grant */
    mvcc_batch_abort(b);
    lease_batch_end(lb, false, MONO0);
    assert_false(fx_listed(f, 9));
    struct lease_ttl t;
    assert_int_equal(lease_time_to_live(f->ls, 9, false, MONO0, &t), LEASE_ENOTFOUND);
    int64_t ttl;
    struct lease_checkpoint cp;
    bool propose;
    assert_int_equal(lease_renew(f->ls, 9, MONO0, WALL0, &ttl, &cp, &propose), LEASE_ENOTFOUND);
}

static void test_follower_refuses_leader_calls(void **state) {
    struct fx *f = *state;
    assert_int_equal(fx_grant(f, 1, 5, WALL0, MONO0, NULL), 0);
    assert_false(lease_is_primary(f->ls));
    int64_t ttl, ids[4];
    struct lease_checkpoint cp;
    bool propose;
    struct lease_ttl t;
    assert_int_equal(lease_renew(f->ls, 1, MONO0, WALL0, &ttl, &cp, &propose), LEASE_ENOTPRIMARY);
    assert_int_equal(lease_time_to_live(f->ls, 1, true, MONO0, &t), LEASE_ENOTPRIMARY);
    /* A follower never expires anything, however late it is. */
    assert_int_equal(lease_expired(f->ls, MONO0 + 1000 * SEC, ids, 4), 0);
    /* Listing is replicated state: every member answers. */
    assert_true(fx_listed(f, 1));
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    assert_true(lease_is_primary(f->ls));
    lease_demote(f->ls);
    assert_false(lease_is_primary(f->ls));
    assert_int_equal(lease_expired(f->ls, MONO0 + 1000 * SEC, ids, 4), 0);
}

/* A raft snapshot replaces the store under the leader state: lease_reload
 * rebuilds it on a leader and leaves a follower alone. The replacement is
 * played here by a committed grant the leader state is not told about. */
static void test_reload_follows_a_replaced_store(void **state) {
    struct fx *f = *state;
    assert_int_equal(fx_grant(f, 1, 10, WALL0, MONO0, NULL), 0);
    assert_int_equal(lease_reload(f->ls, MONO0, WALL0), 0);
    assert_false(lease_is_primary(f->ls));
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(f->db, &b), 0);
    lease_batch_t *lb = lease_batch_begin(f->ls, b);
    assert_int_equal(lease_grant(lb, 2, 20, WALL0, NULL), 0);
    assert_int_equal(mvcc_batch_commit(b), 0);
    lease_batch_end(lb, false, MONO0);
    struct lease_ttl t;
    assert_int_equal(lease_time_to_live(f->ls, 2, false, MONO0, &t), LEASE_ENOTFOUND);
    assert_int_equal(lease_reload(f->ls, MONO0, WALL0), 0);
    assert_true(lease_is_primary(f->ls));
    assert_int_equal(lease_time_to_live(f->ls, 2, false, MONO0, &t), 0);
    assert_int_equal(t.granted_ttl, 20);
    lease_ttl_free(&t);
    assert_int_equal(lease_time_to_live(f->ls, 1, false, MONO0, &t), 0);
    lease_ttl_free(&t);
    lease_demote(f->ls);
    assert_int_equal(lease_reload(f->ls, MONO0, WALL0), 0);
    assert_false(lease_is_primary(f->ls));
}

static void test_renew_and_ttl(void **state) {
    struct fx *f = *state;
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    assert_int_equal(fx_grant(f, 1, 10, WALL0, MONO0, NULL), 0);
    struct lease_ttl t;
    assert_int_equal(lease_time_to_live(f->ls, 1, false, MONO0 + 3500 * SEC / 1000, &t), 0);
    assert_int_equal(t.id, 1);
    assert_int_equal(t.granted_ttl, 10);
    assert_int_equal(t.ttl, 6); /* 6.5 s left, truncated */
    assert_int_equal(t.n_keys, 0);
    lease_ttl_free(&t);
    int64_t ttl = 0, ids[4];
    struct lease_checkpoint cp;
    bool propose;
    assert_int_equal(lease_renew(f->ls, 1, MONO0 + 8 * SEC, WALL0 + 8 * SEC, &ttl, &cp, &propose),
                     0);
    assert_int_equal(ttl, 10);
    assert_int_equal(lease_time_to_live(f->ls, 1, false, MONO0 + 8 * SEC, &t), 0);
    assert_int_equal(t.ttl, 10);
    lease_ttl_free(&t);
    /* The renewal moved the expiry from 10 s to 18 s. */
    assert_int_equal(lease_expired(f->ls, MONO0 + 17 * SEC, ids, 4), 0);
    assert_int_equal(lease_expired(f->ls, MONO0 + 18 * SEC, ids, 4), 1);
    assert_int_equal(ids[0], 1);
    /* Expired, revoke pending: no renewal brings it back. */
    assert_int_equal(lease_renew(f->ls, 1, MONO0 + 19 * SEC, WALL0 + 19 * SEC, &ttl, &cp, &propose),
                     LEASE_EEXPIRED);
    assert_int_equal(lease_renew(f->ls, 2, MONO0, WALL0, &ttl, &cp, &propose), LEASE_ENOTFOUND);
    assert_int_equal(fx_revoke(f, 1, MONO0 + 19 * SEC, NULL), 0);
    assert_int_equal(lease_time_to_live(f->ls, 1, false, MONO0 + 19 * SEC, &t), LEASE_ENOTFOUND);
    assert_int_equal(lease_renew(f->ls, 1, MONO0 + 19 * SEC, WALL0 + 19 * SEC, &ttl, &cp, &propose),
                     LEASE_ENOTFOUND);
}

static void test_ttl_keys(void **state) {
    struct fx *f = *state;
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    assert_int_equal(fx_grant(f, 3, 10, WALL0, MONO0, NULL), 0);
    assert_int_equal(fx_grant(f, 4, 10, WALL0, MONO0, NULL), 0);
    fx_put(f, "zeta", 3);
    fx_put(f, "alpha", 3);
    fx_put(f, "other", 4);
    struct lease_ttl t;
    assert_int_equal(lease_time_to_live(f->ls, 3, true, MONO0, &t), 0);
    assert_int_equal(t.n_keys, 2);
    assert_int_equal(t.keys[0].len, 5);
    assert_memory_equal(t.keys[0].key, "alpha", 5);
    assert_int_equal(t.keys[1].len, 4);
    assert_memory_equal(t.keys[1].key, "zeta", 4);
    lease_ttl_free(&t);
    assert_int_equal(lease_time_to_live(f->ls, 3, false, MONO0, &t), 0);
    assert_int_equal(t.n_keys, 0);
    assert_null(t.keys);
    lease_ttl_free(&t);
}

static void test_expiry_order_and_rate_limit(void **state) {
    struct fx *f = *state;
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    /* Granted at different times: expiries at 9, 4, 7 and 5 s. */
    assert_int_equal(fx_grant(f, 10, 9, WALL0, MONO0, NULL), 0);
    assert_int_equal(fx_grant(f, 11, 3, WALL0, MONO0 + 1 * SEC, NULL), 0);
    assert_int_equal(fx_grant(f, 12, 5, WALL0, MONO0 + 2 * SEC, NULL), 0);
    assert_int_equal(fx_grant(f, 13, 3, WALL0, MONO0 + 2 * SEC, NULL), 0);
    int64_t ids[8];
    assert_int_equal(lease_expired(f->ls, MONO0 + 4 * SEC - 1, ids, 8), 0);
    assert_int_equal(lease_expired(f->ls, MONO0 + 5 * SEC, ids, 8), 2);
    assert_int_equal(ids[0], 11);
    assert_int_equal(ids[1], 13);
    assert_int_equal(lease_expired(f->ls, MONO0 + 7 * SEC, ids, 8), 1);
    assert_int_equal(ids[0], 12);
    /* Not revoked: 11 and 13 are reported again once the retry interval
     * (3 s) passed, at most `max` per call. */
    assert_int_equal(lease_expired(f->ls, MONO0 + 8 * SEC - 1, ids, 8), 0);
    assert_int_equal(lease_expired(f->ls, MONO0 + 8 * SEC, ids, 1), 1);
    int64_t first = ids[0];
    assert_true(first == 11 || first == 13);
    assert_int_equal(lease_expired(f->ls, MONO0 + 8 * SEC, ids, 1), 1);
    assert_int_equal(ids[0], first == 11 ? 13 : 11);
    assert_int_equal(lease_expired(f->ls, MONO0 + 8 * SEC, ids, 8), 0);
    assert_int_equal(lease_expired(f->ls, MONO0 + 9 * SEC, ids, 8), 1);
    assert_int_equal(ids[0], 10);
    /* Revoked ones are gone for good. */
    for (int64_t id = 10; id <= 13; id++)
        assert_int_equal(fx_revoke(f, id, MONO0 + 9 * SEC, NULL), 0);
    assert_int_equal(lease_expired(f->ls, MONO0 + 100 * SEC, ids, 8), 0);
}

static void test_many_leases(void **state) {
    struct fx *f = *state;
    assert_int_equal(lease_promote(f->ls, MONO0, WALL0), 0);
    enum { N = 600 };
    /* Lease i expires at i ms past 10 s, granted in a scrambled order so the
     * heap and table see inserts out of order. */
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(f->db, &b), 0);
    lease_batch_t *lb = lease_batch_begin(f->ls, b);
    for (int64_t j = 0; j < N; j++) {
        int64_t i = (j * 7919) % N;
        assert_int_equal(lease_grant(lb, i + 1, 10, WALL0, NULL), 0);
    }
    assert_int_equal(mvcc_batch_commit(b), 0);
    lease_batch_end(lb, true, MONO0);
    int64_t ttl;
    struct lease_checkpoint cp;
    bool propose;
    for (int64_t i = 0; i < N; i++)
        assert_int_equal(lease_renew(f->ls, i + 1, MONO0 + (uint64_t)i * SEC / 1000,
                                     WALL0 + (uint64_t)i * SEC / 1000, &ttl, &cp, &propose),
                         0);
    /* Revoke every third one; the rest must come out in expiry order. */
    for (int64_t i = 0; i < N; i += 3)
        assert_int_equal(fx_revoke(f, i + 1, MONO0, NULL), 0);
    int64_t ids[N];
    size_t n = lease_expired(f->ls, MONO0 + 20 * SEC, ids, N);
    assert_int_equal(n, N - N / 3);
    for (size_t k = 1; k < n; k++)
        assert_true(ids[k] > ids[k - 1]);
    assert_int_equal(ids[0] % 3, 2);
    /* The id table still finds exactly the survivors after the deletions. */
    for (int64_t i = 0; i < N; i++) {
        struct lease_ttl t;
        int rc = lease_time_to_live(f->ls, i + 1, false, MONO0, &t);
        assert_int_equal(rc, i % 3 == 0 ? LEASE_ENOTFOUND : 0);
        lease_ttl_free(&t);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors_have_etcd_strings),
        FX_TEST(test_grant_list_exists, &OPT),
        FX_TEST(test_grant_duplicate_and_zero_id, &OPT),
        FX_TEST(test_grant_ttl_bounds, &OPT),
        FX_TEST(test_revoke_deletes_attached_keys_only, &OPT),
        FX_TEST(test_revoke_without_keys_keeps_revision, &OPT),
        FX_TEST(test_abort_leaves_nothing, &OPT),
        FX_TEST(test_follower_refuses_leader_calls, &OPT),
        FX_TEST(test_reload_follows_a_replaced_store, &OPT),
        FX_TEST(test_renew_and_ttl, &OPT),
        FX_TEST(test_ttl_keys, &OPT),
        FX_TEST(test_expiry_order_and_rate_limit, &OPT),
        FX_TEST(test_many_leases, &OPT),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
