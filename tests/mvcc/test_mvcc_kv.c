/* Unit tests of mvcc requests: put, delete range, range with every option,
 * txn, revisions and events, as etcd 3.4 answers them. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

static void fresh_store_is_at_revision_1(void **state) {
    int64_t rev, crev;
    uint64_t idx, term;
    assert_int_equal(mvcc_state(tdb_db(state), &idx, &term, &rev, &crev), 0);
    assert_int_equal(rev, 1);
    assert_int_equal(crev, 0);
    assert_int_equal(idx, 0);
    struct mvcc_range_req r = t_rreq("a", T_ALL);
    mvcc_result_t *res;
    assert_int_equal(t_range(tdb_db(state), &r, &res), 0);
    assert_int_equal(res->resp.revision, 1);
    assert_int_equal(res->resp.u.range.count, 0);
    mvcc_result_free(res);
}

static void put_sets_revisions_and_versions(void **state) {
    mvcc_t *db = tdb_db(state);
    assert_int_equal(t_put(db, "foo", "bar"), 2);
    assert_int_equal(t_put(db, "foo", "baz"), 3);
    assert_int_equal(t_put(db, "other", "x"), 4);
    struct mvcc_range_req r = t_rreq("foo", NULL);
    mvcc_result_t *res;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.revision, 4);
    assert_int_equal(res->resp.u.range.n_kvs, 1);
    struct mvcc_kv *kv = &res->resp.u.range.kvs[0];
    assert_true(kv_is(kv, "foo", "baz"));
    assert_int_equal(kv->create_revision, 2);
    assert_int_equal(kv->mod_revision, 3);
    assert_int_equal(kv->version, 2);
    mvcc_result_free(res);
}

static void put_returns_prev_kv_and_events(void **state) {
    mvcc_t *db = tdb_db(state);
    t_put_lease(db, "k", "v1", 7);
    struct mvcc_op op = {.type = MVCC_OP_PUT};
    op.u.put = (struct mvcc_put_req){
        .key = (const uint8_t *)"k", .key_len = 1, .value = (const uint8_t *)"v2", .value_len = 2};
    op.u.put.prev_kv = true;
    mvcc_result_t *res;
    assert_int_equal(t_apply(db, &op, &res), 0);
    assert_int_equal(res->resp.revision, 3);
    assert_true(res->resp.u.put.has_prev);
    assert_true(kv_is(&res->resp.u.put.prev_kv, "k", "v1"));
    assert_int_equal(res->resp.u.put.prev_kv.lease, 7);
    assert_int_equal(res->n_events, 1);
    assert_int_equal(res->events[0].type, MVCC_EVENT_PUT);
    assert_true(kv_is(&res->events[0].kv, "k", "v2"));
    assert_int_equal(res->events[0].kv.mod_revision, 3);
    assert_int_equal(res->events[0].kv.version, 2);
    assert_int_equal(res->events[0].kv.lease, 0);
    assert_true(res->events[0].has_prev);
    mvcc_result_free(res);
    /* A put on a new key has no prev. */
    op.u.put.key = (const uint8_t *)"new";
    op.u.put.key_len = 3;
    assert_int_equal(t_apply(db, &op, &res), 0);
    assert_false(res->resp.u.put.has_prev);
    assert_false(res->events[0].has_prev);
    mvcc_result_free(res);
}

static void put_ignore_value_and_lease(void **state) {
    mvcc_t *db = tdb_db(state);
    struct mvcc_op op = {.type = MVCC_OP_PUT};
    op.u.put = (struct mvcc_put_req){.key = (const uint8_t *)"k", .key_len = 1};
    op.u.put.ignore_value = true;
    assert_int_equal(t_apply(db, &op, NULL), MVCC_EKEYNOTFOUND);
    assert_string_equal(mvcc_strerror(MVCC_EKEYNOTFOUND), "etcdserver: key not found");
    op.u.put.ignore_value = false;
    op.u.put.ignore_lease = true;
    assert_int_equal(t_apply(db, &op, NULL), MVCC_EKEYNOTFOUND);
    /* Nothing was written: the revision did not move. */
    int64_t rev;
    assert_int_equal(mvcc_state(db, NULL, NULL, &rev, NULL), 0);
    assert_int_equal(rev, 1);

    t_put_lease(db, "k", "orig", 42);
    op.u.put.ignore_lease = false;
    op.u.put.ignore_value = true;
    op.u.put.lease = 9;
    mvcc_result_t *res;
    assert_int_equal(t_apply(db, &op, &res), 0);
    assert_true(kv_is(&res->events[0].kv, "k", "orig"));
    assert_int_equal(res->events[0].kv.lease, 9);
    mvcc_result_free(res);
    op.u.put.ignore_value = false;
    op.u.put.ignore_lease = true;
    op.u.put.lease = 0;
    op.u.put.value = (const uint8_t *)"new";
    op.u.put.value_len = 3;
    assert_int_equal(t_apply(db, &op, &res), 0);
    assert_true(kv_is(&res->events[0].kv, "k", "new"));
    assert_int_equal(res->events[0].kv.lease, 9);
    assert_int_equal(res->events[0].kv.version, 3);
    mvcc_result_free(res);
    /* After a delete the key is gone again. */
    t_del(db, "k", NULL);
    assert_int_equal(t_apply(db, &op, NULL), MVCC_EKEYNOTFOUND);
}

static void delete_tombstones_and_recreate(void **state) {
    mvcc_t *db = tdb_db(state);
    t_put(db, "a", "1"); /* 2 */
    t_put(db, "a", "2"); /* 3 */
    t_put(db, "b", "1"); /* 4 */
    t_put(db, "c", "1"); /* 5 */
    struct mvcc_op op = {.type = MVCC_OP_DELETE};
    op.u.del = (struct mvcc_delete_req){.key = (const uint8_t *)"a",
                                        .key_len = 1,
                                        .range_end = (const uint8_t *)"c",
                                        .range_end_len = 1,
                                        .prev_kv = true};
    mvcc_result_t *res;
    assert_int_equal(t_apply(db, &op, &res), 0);
    assert_int_equal(res->resp.revision, 6);
    assert_int_equal(res->resp.u.del.deleted, 2);
    assert_int_equal(res->resp.u.del.n_prev_kvs, 2);
    assert_true(kv_is(&res->resp.u.del.prev_kvs[0], "a", "2"));
    assert_true(kv_is(&res->resp.u.del.prev_kvs[1], "b", "1"));
    assert_int_equal(res->n_events, 2);
    assert_int_equal(res->events[1].type, MVCC_EVENT_DELETE);
    assert_true(kv_is(&res->events[1].kv, "b", NULL));
    assert_int_equal(res->events[1].kv.mod_revision, 6);
    assert_int_equal(res->events[1].kv.version, 0);
    assert_true(res->events[1].has_prev);
    mvcc_result_free(res);
    /* Deleting nothing does not bump the revision. */
    assert_int_equal(t_apply(db, &op, &res), 0);
    assert_int_equal(res->resp.revision, 6);
    assert_int_equal(res->resp.u.del.deleted, 0);
    assert_int_equal(res->n_events, 0);
    mvcc_result_free(res);
    /* Re-created: version 1, new create revision. */
    assert_int_equal(t_put(db, "a", "3"), 7);
    struct mvcc_range_req r = t_rreq("a", NULL);
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.kvs[0].version, 1);
    assert_int_equal(res->resp.u.range.kvs[0].create_revision, 7);
    mvcc_result_free(res);
    /* The old generation is still readable at its revisions. */
    r.revision = 5;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_true(kv_is(&res->resp.u.range.kvs[0], "a", "2"));
    assert_int_equal(res->resp.u.range.kvs[0].version, 2);
    assert_int_equal(res->resp.revision, 7);
    mvcc_result_free(res);
    r.revision = 6;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 0);
    mvcc_result_free(res);
    /* Delete with "\0" as end: every key from "b" on. */
    t_put(db, "d", "1");
    assert_int_equal(t_del(db, "b", T_ALL), 2);
}

/* Puts keys k0..k9 with values and versions chosen to make sorting visible. */
static void fill_sort_data(mvcc_t *db) {
    static const char *vals[] = {"j", "c", "h", "a", "e", "b", "i", "d", "g", "f"};
    char key[16];
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        t_put(db, key, vals[i]);
    }
    /* Extra versions for k3 (3 versions) and k7 (2 versions). */
    t_put(db, "k3", "a");
    t_put(db, "k3", "a");
    t_put(db, "k7", "d");
}

static void range_keys(mvcc_t *db, struct mvcc_range_req *r, const char *expect) {
    mvcc_result_t *res;
    assert_int_equal(t_range(db, r, &res), 0);
    char got[128] = "";
    for (size_t i = 0; i < res->resp.u.range.n_kvs; i++) {
        const struct mvcc_kv *kv = &res->resp.u.range.kvs[i];
        strncat(got, (const char *)kv->key, kv->key_len);
        strcat(got, " ");
    }
    mvcc_result_free(res);
    assert_string_equal(got, expect);
}

static void range_options(void **state) {
    mvcc_t *db = tdb_db(state);
    fill_sort_data(db);
    struct mvcc_range_req r = t_rreq("k", "l");
    range_keys(db, &r, "k0 k1 k2 k3 k4 k5 k6 k7 k8 k9 ");
    r = t_rreq("k2", "k5");
    range_keys(db, &r, "k2 k3 k4 ");
    r = t_rreq("k8", T_ALL);
    range_keys(db, &r, "k8 k9 ");
    r = t_rreq("k5", "k1"); /* end before start: empty */
    range_keys(db, &r, "");
    r = t_rreq("k", NULL); /* single key that does not exist */
    range_keys(db, &r, "");

    /* limit, more, count */
    r = t_rreq("k", "l");
    r.limit = 3;
    mvcc_result_t *res;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 3);
    assert_true(res->resp.u.range.more);
    assert_int_equal(res->resp.u.range.count, 10);
    mvcc_result_free(res);
    r.limit = 10;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_false(res->resp.u.range.more);
    mvcc_result_free(res);

    /* count_only, keys_only */
    r.limit = 0;
    r.count_only = true;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 0);
    assert_int_equal(res->resp.u.range.count, 10);
    mvcc_result_free(res);
    r.count_only = false;
    r.keys_only = true;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 10);
    assert_int_equal(res->resp.u.range.kvs[0].value_len, 0);
    assert_int_equal(res->resp.u.range.kvs[3].version, 3);
    mvcc_result_free(res);

    /* sorting: values j c h a e b i d g f, k3=a(v3), k7=d(v2) */
    r = t_rreq("k", "l");
    r.sort_order = MVCC_SORT_DESCEND;
    range_keys(db, &r, "k9 k8 k7 k6 k5 k4 k3 k2 k1 k0 ");
    r.sort_target = MVCC_SORT_VALUE;
    r.sort_order = MVCC_SORT_ASCEND;
    range_keys(db, &r, "k3 k5 k1 k7 k4 k9 k8 k2 k6 k0 ");
    r.sort_order = MVCC_SORT_NONE; /* not KEY + NONE sorts ascending */
    range_keys(db, &r, "k3 k5 k1 k7 k4 k9 k8 k2 k6 k0 ");
    r.sort_order = MVCC_SORT_DESCEND;
    range_keys(db, &r, "k0 k6 k2 k8 k9 k4 k7 k1 k5 k3 ");
    r.sort_target = MVCC_SORT_VERSION; /* ties stay in key order */
    range_keys(db, &r, "k3 k7 k0 k1 k2 k4 k5 k6 k8 k9 ");
    r.sort_order = MVCC_SORT_ASCEND;
    range_keys(db, &r, "k0 k1 k2 k4 k5 k6 k8 k9 k7 k3 ");
    r.sort_target = MVCC_SORT_MOD;
    range_keys(db, &r, "k0 k1 k2 k4 k5 k6 k8 k9 k3 k7 ");
    r.sort_target = MVCC_SORT_CREATE;
    r.sort_order = MVCC_SORT_DESCEND;
    range_keys(db, &r, "k9 k8 k7 k6 k5 k4 k3 k2 k1 k0 ");
    /* Sorting happens before the limit. */
    r.sort_target = MVCC_SORT_MOD;
    r.limit = 2;
    range_keys(db, &r, "k7 k3 ");
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_true(res->resp.u.range.more);
    assert_int_equal(res->resp.u.range.count, 10);
    mvcc_result_free(res);

    /* min/max mod and create filters: count stays the whole range. Revisions:
     * k0..k9 created at 2..11, k3 modified at 13, k7 at 14. */
    r = t_rreq("k", "l");
    r.min_mod_revision = 10;
    range_keys(db, &r, "k3 k7 k8 k9 ");
    r.max_mod_revision = 11;
    range_keys(db, &r, "k8 k9 ");
    r = t_rreq("k", "l");
    r.max_create_revision = 4;
    range_keys(db, &r, "k0 k1 k2 ");
    r.min_create_revision = 3;
    range_keys(db, &r, "k1 k2 ");
    r.limit = 1;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 1);
    assert_true(res->resp.u.range.more);
    assert_int_equal(res->resp.u.range.count, 10);
    mvcc_result_free(res);
}

static void range_at_revisions_and_errors(void **state) {
    mvcc_t *db = tdb_db(state);
    t_put(db, "a", "1"); /* 2 */
    t_put(db, "b", "1"); /* 3 */
    t_put(db, "a", "2"); /* 4 */
    struct mvcc_range_req r = t_rreq("a", "c");
    r.revision = 2;
    range_keys(db, &r, "a ");
    r.revision = 3;
    mvcc_result_t *res;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_true(kv_is(&res->resp.u.range.kvs[0], "a", "1"));
    assert_int_equal(res->resp.revision, 4);
    mvcc_result_free(res);
    r.revision = 5;
    assert_int_equal(t_range(db, &r, &res), MVCC_EFUTURE);
    assert_string_equal(mvcc_strerror(MVCC_EFUTURE),
                        "etcdserver: mvcc: required revision is a future revision");
    assert_int_equal(t_compact(db, 3), 0);
    r.revision = 2;
    assert_int_equal(t_range(db, &r, &res), MVCC_ECOMPACTED);
    assert_string_equal(mvcc_strerror(MVCC_ECOMPACTED),
                        "etcdserver: mvcc: required revision has been compacted");
    r.revision = 3; /* the compaction revision itself stays readable */
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 2);
    assert_true(kv_is(&res->resp.u.range.kvs[0], "a", "1"));
    mvcc_result_free(res);
}

static void keys_with_nul_bytes_and_limits(void **state) {
    mvcc_t *db = tdb_db(state);
    static const uint8_t k1[] = {'a', 0, 'b'}, k2[] = {'a'}, k3[] = {'a', 0};
    const uint8_t *keys[] = {k1, k2, k3};
    size_t lens[] = {3, 1, 2};
    for (int i = 0; i < 3; i++) {
        struct mvcc_op op = {.type = MVCC_OP_PUT};
        op.u.put =
            (struct mvcc_put_req){.key = keys[i], .key_len = lens[i], .value = k1, .value_len = 3};
        assert_int_equal(t_apply(db, &op, NULL), 0);
    }
    struct mvcc_range_req r = t_rreq("a", "b");
    mvcc_result_t *res;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 3);
    assert_int_equal(res->resp.u.range.kvs[0].key_len, 1);
    assert_int_equal(res->resp.u.range.kvs[1].key_len, 2);
    assert_int_equal(res->resp.u.range.kvs[2].key_len, 3);
    assert_memory_equal(res->resp.u.range.kvs[2].value, k1, 3);
    mvcc_result_free(res);
    /* single key "a\0" only */
    r.key = k3;
    r.key_len = 2;
    r.range_end = NULL;
    r.range_end_len = 0;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 1);
    assert_int_equal(res->resp.u.range.kvs[0].key_len, 2);
    mvcc_result_free(res);

    size_t max = mvcc_max_key_len(db);
    assert_true(max >= 256);
    uint8_t *big = calloc(1, max + 1);
    memset(big, 'z', max + 1);
    struct mvcc_op op = {.type = MVCC_OP_PUT};
    op.u.put = (struct mvcc_put_req){.key = big, .key_len = max};
    assert_int_equal(t_apply(db, &op, NULL), 0);
    op.u.put.key_len = max + 1;
    assert_int_equal(t_apply(db, &op, NULL), MVCC_EKEYTOOLONG);
    op.u.put.key_len = 0;
    assert_int_equal(t_apply(db, &op, NULL), -EINVAL);
    /* Ranges may start at keys longer than any stored one. */
    uint8_t *start = malloc(2000);
    memset(start, 'y', 2000);
    struct mvcc_range_req lr = {.key = start, .key_len = 2000};
    lr.range_end = (const uint8_t *)"";
    lr.range_end_len = 1;
    assert_int_equal(t_range(db, &lr, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 1);
    assert_int_equal(res->resp.u.range.kvs[0].key_len, max);
    mvcc_result_free(res);
    memset(start, 'z', 2000);
    assert_int_equal(t_range(db, &lr, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 0);
    mvcc_result_free(res);
    free(start);
    free(big);
    /* A 1.5 MiB value (etcd's request limit) with NUL bytes, kept whole. */
    size_t vl = 3 * 512 * 1024;
    uint8_t *val = malloc(vl);
    for (size_t i = 0; i < vl; i++)
        val[i] = (uint8_t)(i * 7);
    op.u.put = (struct mvcc_put_req){.key = (const uint8_t *)"huge", .key_len = 4};
    op.u.put.value = val;
    op.u.put.value_len = vl;
    assert_int_equal(t_apply(db, &op, NULL), 0);
    struct mvcc_range_req hr = t_rreq("huge", NULL);
    assert_int_equal(t_range(db, &hr, &res), 0);
    assert_int_equal(res->resp.u.range.kvs[0].value_len, vl);
    assert_memory_equal(res->resp.u.range.kvs[0].value, val, vl);
    mvcc_result_free(res);
    free(val);
}

/* ---- txn ---- */

static struct mvcc_compare cmp_num(const char *key, enum mvcc_cmp_target t, enum mvcc_cmp_result r,
                                   int64_t n) {
    struct mvcc_compare c = {.result = r, .target = t, .key = (const uint8_t *)key};
    c.key_len = strlen(key);
    c.number = n;
    return c;
}

/* Runs a txn with one compare; returns succeeded. */
static bool txn_cmp(mvcc_t *db, struct mvcc_compare c) {
    struct mvcc_txn_req t = {.compares = &c, .n_compares = 1};
    struct mvcc_op op = {.type = MVCC_OP_TXN, .u.txn = &t};
    mvcc_result_t *res;
    assert_int_equal(t_apply(db, &op, &res), 0);
    bool ok = res->resp.u.txn.succeeded;
    mvcc_result_free(res);
    return ok;
}

static void txn_compares(void **state) {
    mvcc_t *db = tdb_db(state);
    t_put_lease(db, "a", "m", 5); /* 2 */
    t_put(db, "a", "m");          /* 3: version 2, lease 0 */
    t_put(db, "b", "z");          /* 4 */
    assert_true(txn_cmp(db, cmp_num("a", MVCC_CMP_VERSION, MVCC_CMP_EQUAL, 2)));
    assert_false(txn_cmp(db, cmp_num("a", MVCC_CMP_VERSION, MVCC_CMP_EQUAL, 1)));
    assert_true(txn_cmp(db, cmp_num("a", MVCC_CMP_VERSION, MVCC_CMP_GREATER, 1)));
    assert_true(txn_cmp(db, cmp_num("a", MVCC_CMP_VERSION, MVCC_CMP_LESS, 3)));
    assert_true(txn_cmp(db, cmp_num("a", MVCC_CMP_VERSION, MVCC_CMP_NOT_EQUAL, 3)));
    assert_true(txn_cmp(db, cmp_num("a", MVCC_CMP_CREATE, MVCC_CMP_EQUAL, 2)));
    assert_true(txn_cmp(db, cmp_num("a", MVCC_CMP_MOD, MVCC_CMP_EQUAL, 3)));
    assert_true(txn_cmp(db, cmp_num("a", MVCC_CMP_LEASE, MVCC_CMP_EQUAL, 0)));
    /* Missing keys compare as zeros; a value compare on them fails. */
    assert_true(txn_cmp(db, cmp_num("zz", MVCC_CMP_CREATE, MVCC_CMP_EQUAL, 0)));
    assert_true(txn_cmp(db, cmp_num("zz", MVCC_CMP_VERSION, MVCC_CMP_LESS, 1)));
    struct mvcc_compare v = cmp_num("zz", MVCC_CMP_VALUE, MVCC_CMP_NOT_EQUAL, 0);
    v.value = (const uint8_t *)"x";
    v.value_len = 1;
    assert_false(txn_cmp(db, v));
    v.key = (const uint8_t *)"a";
    v.key_len = 1;
    assert_true(txn_cmp(db, v));
    v.result = MVCC_CMP_LESS;
    v.value = (const uint8_t *)"n";
    assert_true(txn_cmp(db, v));
    v.value = (const uint8_t *)"m";
    v.result = MVCC_CMP_EQUAL;
    assert_true(txn_cmp(db, v));
    v.value_len = 0;
    v.result = MVCC_CMP_GREATER;
    assert_true(txn_cmp(db, v));
    /* Range compares: every key must pass. */
    struct mvcc_compare rc = cmp_num("a", MVCC_CMP_MOD, MVCC_CMP_GREATER, 2);
    rc.range_end = (const uint8_t *)"c";
    rc.range_end_len = 1;
    assert_true(txn_cmp(db, rc));
    rc.number = 3;
    assert_false(txn_cmp(db, rc));
    rc.range_end = (const uint8_t *)"";
    rc.range_end_len = 1;
    rc.key = (const uint8_t *)"b";
    assert_true(txn_cmp(db, rc));
    /* Nothing changed: the revision stays. */
    int64_t rev;
    assert_int_equal(mvcc_state(db, NULL, NULL, &rev, NULL), 0);
    assert_int_equal(rev, 4);
}

static void txn_branches_share_one_revision(void **state) {
    mvcc_t *db = tdb_db(state);
    t_put(db, "x", "0"); /* 2 */
    struct mvcc_compare c = cmp_num("x", MVCC_CMP_VERSION, MVCC_CMP_EQUAL, 1);
    struct mvcc_op succ[] = {t_op_put("x", "1"), t_op_put("y", "1"), t_op_range("x", "z"),
                             t_op_del("x"), t_op_range("x", "z")};
    struct mvcc_op fail[] = {t_op_range("x", NULL)};
    struct mvcc_txn_req t = {.compares = &c,
                             .n_compares = 1,
                             .success = succ,
                             .n_success = 5,
                             .failure = fail,
                             .n_failure = 1};
    struct mvcc_op op = {.type = MVCC_OP_TXN, .u.txn = &t};
    mvcc_result_t *res;
    assert_int_equal(t_apply(db, &op, &res), 0);
    assert_true(res->resp.u.txn.succeeded);
    assert_int_equal(res->resp.revision, 3);
    assert_int_equal(res->resp.u.txn.n_responses, 5);
    struct mvcc_op_resp *rs = res->resp.u.txn.responses;
    assert_int_equal(rs[0].revision, 3);
    assert_int_equal(rs[2].revision, 3);
    assert_int_equal(rs[2].u.range.n_kvs, 2); /* sees its own writes */
    assert_int_equal(rs[2].u.range.kvs[0].mod_revision, 3);
    assert_int_equal(rs[3].u.del.deleted, 1);
    assert_int_equal(rs[4].u.range.n_kvs, 1);
    assert_int_equal(res->n_events, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(res->events[i].kv.mod_revision, 3);
    mvcc_result_free(res);
    /* Failure branch: read only, no bump; its range reports the revision. */
    assert_int_equal(t_apply(db, &op, &res), 0);
    assert_false(res->resp.u.txn.succeeded);
    assert_int_equal(res->resp.revision, 3);
    assert_int_equal(res->resp.u.txn.responses[0].revision, 3);
    assert_int_equal(res->n_events, 0);
    mvcc_result_free(res);
}

static void txn_nested_compares_see_state_before(void **state) {
    mvcc_t *db = tdb_db(state);
    t_put(db, "n", "0"); /* 2, version 1 */
    /* outer: put n; inner txn compares version(n)==1: true on the state
     * before the outer txn, although the outer put came first. */
    struct mvcc_compare ic = cmp_num("n", MVCC_CMP_VERSION, MVCC_CMP_EQUAL, 1);
    struct mvcc_op isucc[] = {t_op_put("inner", "yes")};
    struct mvcc_op ifail[] = {t_op_put("inner", "no")};
    struct mvcc_txn_req inner = {.compares = &ic,
                                 .n_compares = 1,
                                 .success = isucc,
                                 .n_success = 1,
                                 .failure = ifail,
                                 .n_failure = 1};
    struct mvcc_op osucc[] = {t_op_put("n", "1"), {.type = MVCC_OP_TXN, .u.txn = &inner}};
    struct mvcc_txn_req outer = {.success = osucc, .n_success = 2};
    struct mvcc_op op = {.type = MVCC_OP_TXN, .u.txn = &outer};
    mvcc_result_t *res;
    assert_int_equal(t_apply(db, &op, &res), 0);
    assert_true(res->resp.u.txn.succeeded); /* no compares: success */
    struct mvcc_op_resp *in = &res->resp.u.txn.responses[1];
    assert_int_equal(in->type, MVCC_OP_TXN);
    assert_true(in->u.txn.succeeded);
    assert_int_equal(in->u.txn.responses[0].revision, 3);
    assert_int_equal(res->n_events, 2);
    assert_true(kv_is(&res->events[1].kv, "inner", "yes"));
    assert_int_equal(res->events[1].kv.mod_revision, 3);
    mvcc_result_free(res);
}

static void txn_errors_change_nothing(void **state) {
    mvcc_t *db = tdb_db(state);
    t_put(db, "k", "v"); /* 2 */
    /* A range at a future revision fails the whole txn before any write. */
    struct mvcc_op succ[] = {t_op_put("a", "1"), t_op_range("k", NULL)};
    succ[1].u.range.revision = 99;
    struct mvcc_txn_req t = {.success = succ, .n_success = 2};
    struct mvcc_op op = {.type = MVCC_OP_TXN, .u.txn = &t};
    assert_int_equal(t_apply(db, &op, NULL), MVCC_EFUTURE);
    /* ignore_value on a key missing before the txn. */
    struct mvcc_op s2[] = {t_op_put("a", "1"), t_op_put("missing", "")};
    s2[1].u.put.ignore_value = true;
    t.success = s2;
    assert_int_equal(t_apply(db, &op, NULL), MVCC_EKEYNOTFOUND);
    /* ignore_value on a key the same txn deleted (etcd would panic): the txn
     * is undone whole. */
    struct mvcc_op s3[] = {t_op_put("a", "1"), t_op_del("k"), t_op_put("k", "")};
    s3[2].u.put.ignore_value = true;
    t.success = s3;
    t.n_success = 3;
    assert_int_equal(t_apply(db, &op, NULL), MVCC_EKEYNOTFOUND);
    int64_t rev;
    assert_int_equal(mvcc_state(db, NULL, NULL, &rev, NULL), 0);
    assert_int_equal(rev, 2);
    struct mvcc_range_req r = t_rreq("a", "z");
    range_keys(db, &r, "k ");
    /* A risky txn that works commits normally. */
    struct mvcc_op s4[] = {t_op_put("b", "1"), t_op_put("k", "")};
    s4[1].u.put.ignore_value = true;
    t.success = s4;
    t.n_success = 2;
    mvcc_result_t *res;
    assert_int_equal(t_apply(db, &op, &res), 0);
    assert_int_equal(res->resp.revision, 3);
    assert_true(kv_is(&res->events[1].kv, "k", "v"));
    mvcc_result_free(res);
}

static void duplicate_key_check(void **state) {
    (void)state;
    struct mvcc_op two_puts[] = {t_op_put("a", "1"), t_op_put("a", "2")};
    struct mvcc_txn_req t = {.success = two_puts, .n_success = 2};
    assert_int_equal(mvcc_txn_check_duplicates(&t), MVCC_EDUPKEY);
    assert_string_equal(mvcc_strerror(MVCC_EDUPKEY),
                        "etcdserver: duplicate key given in txn request");
    struct mvcc_op put_del[] = {t_op_del("a"), t_op_put("a", "2")};
    t.success = put_del;
    assert_int_equal(mvcc_txn_check_duplicates(&t), MVCC_EDUPKEY);
    struct mvcc_op range_del[] = {t_op_del("a"), t_op_put("b", "2")};
    range_del[0].u.del.range_end = (const uint8_t *)"c";
    range_del[0].u.del.range_end_len = 1;
    t.success = range_del;
    assert_int_equal(mvcc_txn_check_duplicates(&t), MVCC_EDUPKEY);
    range_del[1] = t_op_put("c", "2");
    assert_int_equal(mvcc_txn_check_duplicates(&t), 0);
    /* etcd 3.4 lets "\0" deletes through. */
    range_del[0].u.del.range_end = (const uint8_t *)"";
    range_del[1] = t_op_put("b", "2");
    assert_int_equal(mvcc_txn_check_duplicates(&t), 0);
    /* Nested: the same key in then and else is fine, in parent and child not. */
    struct mvcc_op th[] = {t_op_put("x", "1")}, el[] = {t_op_put("x", "2")};
    struct mvcc_txn_req inner = {.success = th, .n_success = 1, .failure = el, .n_failure = 1};
    struct mvcc_op outer_ops[] = {{.type = MVCC_OP_TXN, .u.txn = &inner}, t_op_put("y", "1")};
    t.success = outer_ops;
    assert_int_equal(mvcc_txn_check_duplicates(&t), 0);
    outer_ops[1] = t_op_put("x", "3");
    assert_int_equal(mvcc_txn_check_duplicates(&t), MVCC_EDUPKEY);
    /* Failure branch checked too. */
    t.success = NULL;
    t.n_success = 0;
    t.failure = two_puts;
    t.n_failure = 2;
    assert_int_equal(mvcc_txn_check_duplicates(&t), MVCC_EDUPKEY);
}

/* ---- batches, streaming, persistence ---- */

static void batch_persists_applied_index_and_is_atomic(void **state) {
    struct tdb *t = *state;
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(t->db, &b), 0);
    for (int i = 0; i < 50; i++) {
        char k[16];
        snprintf(k, sizeof(k), "key%02d", i);
        struct mvcc_op op = t_op_put(k, "v");
        mvcc_result_t *res;
        assert_int_equal(mvcc_apply(b, &op, &res), 0);
        assert_int_equal(res->resp.revision, 2 + i);
        mvcc_result_free(res);
    }
    assert_int_equal(mvcc_batch_revision(b), 51);
    mvcc_batch_set_applied(b, 1234, 7);
    /* A reader does not see the uncommitted batch. */
    mvcc_read_t *rd;
    assert_int_equal(mvcc_read_begin(t->db, &rd), 0);
    assert_int_equal(mvcc_read_revision(rd), 1);
    mvcc_read_end(rd);
    assert_int_equal(mvcc_batch_commit(b), 0);
    /* An aborted batch leaves nothing. */
    assert_int_equal(mvcc_batch_begin(t->db, &b), 0);
    struct mvcc_op op = t_op_put("gone", "v");
    mvcc_result_t *res;
    assert_int_equal(mvcc_apply(b, &op, &res), 0);
    mvcc_result_free(res);
    mvcc_batch_set_applied(b, 1235, 7);
    mvcc_batch_abort(b);

    tdb_reopen(t, NULL);
    uint64_t idx, term;
    int64_t rev;
    assert_int_equal(mvcc_state(t->db, &idx, &term, &rev, NULL), 0);
    assert_int_equal(idx, 1234);
    assert_int_equal(term, 7);
    assert_int_equal(rev, 51);
    struct mvcc_range_req r = t_rreq("gone", NULL);
    range_keys(t->db, &r, "");
    assert_int_equal(t_put(t->db, "after", "x"), 52);
}

static void streaming_iterator(void **state) {
    mvcc_t *db = tdb_db(state);
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(db, &b), 0);
    for (int i = 0; i < 2000; i++) {
        char k[16];
        snprintf(k, sizeof(k), "s%05d", i);
        struct mvcc_op op = t_op_put(k, k);
        mvcc_result_t *res;
        assert_int_equal(mvcc_apply(b, &op, &res), 0);
        mvcc_result_free(res);
    }
    assert_int_equal(mvcc_batch_commit(b), 0);
    t_del(db, "s00010", "s00020");
    mvcc_read_t *rd;
    assert_int_equal(mvcc_read_begin(db, &rd), 0);
    /* A write after the snapshot is not seen by it. */
    t_put(db, "s99999", "late");
    struct mvcc_range_req r = t_rreq("s", "t");
    r.limit = 100;
    mvcc_range_it_t *it;
    assert_int_equal(mvcc_range_open(rd, &r, &it), 0);
    struct mvcc_kv kv;
    int n = 0, rc;
    while ((rc = mvcc_range_next(it, &kv)) == 1) {
        char want[16];
        snprintf(want, sizeof(want), "s%05d", n < 10 ? n : n + 10);
        assert_true(kv_is(&kv, want, want));
        n++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(n, 100);
    int64_t count, hrev;
    bool more;
    mvcc_range_summary(it, &count, &more, &hrev);
    assert_int_equal(count, 1990);
    assert_true(more);
    assert_int_equal(hrev, 2002);
    mvcc_range_close(it);
    r.revision = 2003;
    assert_int_equal(mvcc_range_open(rd, &r, &it), MVCC_EFUTURE);
    mvcc_read_end(rd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        TDB_TEST(fresh_store_is_at_revision_1),
        TDB_TEST(put_sets_revisions_and_versions),
        TDB_TEST(put_returns_prev_kv_and_events),
        TDB_TEST(put_ignore_value_and_lease),
        TDB_TEST(delete_tombstones_and_recreate),
        TDB_TEST(range_options),
        TDB_TEST(range_at_revisions_and_errors),
        TDB_TEST(keys_with_nul_bytes_and_limits),
        TDB_TEST(txn_compares),
        TDB_TEST(txn_branches_share_one_revision),
        TDB_TEST(txn_nested_compares_see_state_before),
        TDB_TEST(txn_errors_change_nothing),
        cmocka_unit_test(duplicate_key_check),
        TDB_TEST(batch_persists_applied_index_and_is_atomic),
        TDB_TEST(streaming_iterator),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
