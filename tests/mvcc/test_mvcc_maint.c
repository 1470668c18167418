/* Unit tests of mvcc maintenance: compaction, HashKV (against values taken
 * from etcd 3.4 itself), history reads for watch catch-up, the lease index,
 * the quota and defragmentation under concurrent writes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

/* Number of records in one of the store's own databases. */
static size_t db_entries(mvcc_t *db, const char *name) {
    mvcc_read_t *rd;
    assert_int_equal(mvcc_read_begin(db, &rd), 0);
    MDB_dbi dbi;
    assert_int_equal(mdb_dbi_open(mvcc_read_txn(rd), name, 0, &dbi), 0);
    MDB_stat st;
    assert_int_equal(mdb_stat(mvcc_read_txn(rd), dbi, &st), 0);
    mvcc_read_end(rd);
    return st.ms_entries;
}

static void compaction_keeps_latest_versions(void **state) {
    mvcc_t *db = tdb_db(state);
    t_put(db, "a", "1");  /* 2 */
    t_put(db, "a", "2");  /* 3 */
    t_put(db, "b", "1");  /* 4 */
    t_del(db, "b", NULL); /* 5 */
    t_put(db, "c", "1");  /* 6 */
    t_put(db, "a", "3");  /* 7 */
    assert_int_equal(db_entries(db, "mvcc.log"), 6);
    assert_int_equal(t_compact(db, 9), MVCC_EFUTURE);
    assert_int_equal(t_compact(db, 6), 0);
    /* Left: a@3 (still the newest at 6), c@6, a@7. */
    assert_int_equal(db_entries(db, "mvcc.log"), 3);
    assert_int_equal(db_entries(db, "mvcc.kv"), 3);
    assert_int_equal(t_compact(db, 6), MVCC_ECOMPACTED);
    assert_int_equal(t_compact(db, 5), MVCC_ECOMPACTED);
    struct mvcc_range_req r = t_rreq("a", "z");
    r.revision = 6;
    mvcc_result_t *res;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 2);
    assert_true(kv_is(&res->resp.u.range.kvs[0], "a", "2"));
    assert_int_equal(res->resp.u.range.kvs[0].version, 2);
    assert_int_equal(res->resp.u.range.kvs[0].create_revision, 2);
    mvcc_result_free(res);
    r.revision = 5;
    assert_int_equal(t_range(db, &r, NULL), MVCC_ECOMPACTED);
    /* Versions continue after compaction. */
    t_put(db, "a", "4");
    r.revision = 0;
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.kvs[0].version, 4);
    mvcc_result_free(res);
    /* Compacting at the current revision keeps every live key. */
    assert_int_equal(t_compact(db, 8), 0);
    assert_int_equal(db_entries(db, "mvcc.log"), 2);
}

static bool pending(mvcc_t *db) {
    bool p;
    assert_int_equal(mvcc_compact_pending(db, &p), 0);
    return p;
}

static void compaction_resumes_after_reopen(void **state) {
    struct tdb *t = *state;
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(t->db, &b), 0);
    for (int i = 0; i < 300; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i % 30);
        t_batch_put(b, k, "", 0);
    }
    assert_int_equal(mvcc_compact(b, 301), 0);
    assert_int_equal(mvcc_batch_commit(b), 0);
    assert_true(pending(t->db));
    bool done;
    assert_int_equal(mvcc_compact_step(t->db, 100, &done), 0);
    assert_false(done);
    size_t mid = db_entries(t->db, "mvcc.log");
    assert_true(mid < 300 && mid > 30);
    tdb_reopen(t, NULL);
    assert_true(pending(t->db));
    do
        assert_int_equal(mvcc_compact_step(t->db, 100, &done), 0);
    while (!done);
    assert_false(pending(t->db));
    assert_int_equal(db_entries(t->db, "mvcc.log"), 30);
}

/* Replays the history used to take the reference hashes from etcd 3.4. */
static void hash_matches_etcd(void **state) {
    mvcc_t *db = tdb_db(state);
    uint32_t h;
    int64_t cur, comp;
    assert_int_equal(mvcc_hash_kv(db, 0, &h, &cur, &comp), 0);
    assert_int_equal(h, 1084519789u);
    assert_int_equal(cur, 1);
    assert_int_equal(comp, -1);
    t_put(db, "foo", "bar");
    t_put(db, "foo", "baz");
    t_put(db, "a", "1");
    t_del(db, "foo", NULL);
    t_put(db, "foo", "again");
    assert_int_equal(mvcc_hash_kv(db, 0, &h, &cur, &comp), 0);
    assert_int_equal(h, 3262712074u);
    assert_int_equal(cur, 6);
    assert_int_equal(mvcc_hash_kv(db, 3, &h, &cur, &comp), 0);
    assert_int_equal(h, 2020292994u);
    /* Scheduled but not swept yet: the hash already follows the compaction. */
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(db, &b), 0);
    assert_int_equal(mvcc_compact(b, 4), 0);
    assert_int_equal(mvcc_batch_commit(b), 0);
    assert_int_equal(mvcc_hash_kv(db, 0, &h, &cur, &comp), 0);
    assert_int_equal(h, 740029639u);
    assert_int_equal(comp, 4);
    bool done = false;
    while (!done)
        assert_int_equal(mvcc_compact_step(db, 1, &done), 0);
    assert_int_equal(mvcc_hash_kv(db, 0, &h, &cur, &comp), 0);
    assert_int_equal(h, 740029639u);
    assert_int_equal(mvcc_hash_kv(db, 5, &h, &cur, &comp), 0);
    assert_int_equal(h, 958482003u);
    assert_int_equal(mvcc_hash_kv(db, 4, &h, &cur, &comp), MVCC_ECOMPACTED);
    assert_int_equal(mvcc_hash_kv(db, 7, &h, &cur, &comp), MVCC_EFUTURE);
    t_del(db, "a", NULL);
    t_del(db, "foo", NULL);
    /* No key is live: etcd then hashes the history its compaction at 4 left. */
    assert_int_equal(mvcc_hash_kv(db, 0, &h, &cur, &comp), 0);
    assert_int_equal(h, 3571550836u);
    /* Compacted at 8, nothing is left but the bucket name: the value etcd
     * reports once its compaction has run (a fresh store's). */
    assert_int_equal(t_compact(db, 8), 0);
    assert_int_equal(mvcc_hash_kv(db, 0, &h, &cur, &comp), 0);
    assert_int_equal(h, 1084519789u);
    assert_int_equal(cur, 8);
    assert_int_equal(comp, 8);
}

static void history_pages_in_revision_order(void **state) {
    mvcc_t *db = tdb_db(state);
    t_put(db, "w/a", "1");   /* 2 */
    t_put(db, "other", "1"); /* 3 */
    t_put(db, "w/b", "1");   /* 4 */
    t_put(db, "w/a", "2");   /* 5 */
    t_del(db, "w/", "w0");   /* 6: two deletes, subs 0 and 1 */
    t_put(db, "w/a", "3");   /* 7 */
    mvcc_read_t *rd;
    assert_int_equal(mvcc_read_begin(db, &rd), 0);
    struct mvcc_history_pos pos = {.main = 3, .sub = 0};
    struct mvcc_event ev[2];
    bool done;
    const uint8_t *k = (const uint8_t *)"w/", *e = (const uint8_t *)"w0";
    int n = mvcc_history_read(rd, k, 2, e, 2, true, &pos, ev, 2, &done);
    assert_int_equal(n, 2);
    assert_false(done);
    assert_true(kv_is(&ev[0].kv, "w/b", "1"));
    assert_int_equal(ev[0].kv.mod_revision, 4);
    assert_false(ev[0].has_prev);
    assert_true(kv_is(&ev[1].kv, "w/a", "2"));
    assert_true(ev[1].has_prev);
    assert_true(kv_is(&ev[1].prev_kv, "w/a", "1"));
    n = mvcc_history_read(rd, k, 2, e, 2, true, &pos, ev, 2, &done);
    assert_int_equal(n, 2);
    assert_int_equal(ev[0].type, MVCC_EVENT_DELETE);
    assert_true(kv_is(&ev[0].kv, "w/a", NULL));
    assert_int_equal(ev[0].kv.mod_revision, 6);
    assert_true(kv_is(&ev[0].prev_kv, "w/a", "2"));
    assert_int_equal(ev[1].type, MVCC_EVENT_DELETE);
    assert_true(kv_is(&ev[1].kv, "w/b", NULL));
    n = mvcc_history_read(rd, k, 2, e, 2, true, &pos, ev, 2, &done);
    assert_int_equal(n, 1);
    assert_true(done);
    assert_true(kv_is(&ev[0].kv, "w/a", "3"));
    assert_false(ev[0].has_prev); /* the previous version is a tombstone */
    assert_int_equal(pos.main, 8);
    n = mvcc_history_read(rd, k, 2, e, 2, true, &pos, ev, 2, &done);
    assert_int_equal(n, 0);
    assert_true(done);
    mvcc_read_end(rd);
    assert_int_equal(t_compact(db, 5), 0);
    assert_int_equal(mvcc_read_begin(db, &rd), 0);
    pos = (struct mvcc_history_pos){.main = 4};
    assert_int_equal(mvcc_history_read(rd, k, 2, NULL, 0, false, &pos, ev, 2, &done),
                     MVCC_ECOMPACTED);
    pos = (struct mvcc_history_pos){.main = 5};
    n = mvcc_history_read(rd, (const uint8_t *)"w/a", 3, NULL, 0, false, &pos, ev, 2, &done);
    assert_int_equal(n, 2);
    assert_int_equal(ev[0].kv.mod_revision, 5);
    assert_int_equal(ev[1].kv.mod_revision, 6);
    mvcc_read_end(rd);
}

static int collect_keys(void *arg, const uint8_t *key, size_t len) {
    strncat(arg, (const char *)key, len);
    strcat(arg, " ");
    return 0;
}

static void lease_index_follows_keys(void **state) {
    mvcc_t *db = tdb_db(state);
    t_put_lease(db, "a", "1", 5);
    t_put_lease(db, "b", "1", 5);
    t_put_lease(db, "c", "1", 6);
    t_put_lease(db, "b", "2", 6); /* moves b to lease 6 */
    t_put_lease(db, "c", "2", 0); /* detaches c */
    t_del(db, "a", NULL);
    t_put_lease(db, "d", "1", 5);
    mvcc_read_t *rd;
    assert_int_equal(mvcc_read_begin(db, &rd), 0);
    char got[64] = "";
    assert_int_equal(mvcc_lease_keys(db, mvcc_read_txn(rd), 5, collect_keys, got), 0);
    assert_string_equal(got, "d ");
    got[0] = 0;
    assert_int_equal(mvcc_lease_keys(db, mvcc_read_txn(rd), 6, collect_keys, got), 0);
    assert_string_equal(got, "b ");
    mvcc_read_end(rd);
}

static void quota_caps_writes_until_defrag(void **state) {
    struct tdb *t = *state;
    tdb_close(t);
    struct mvcc_options opt = {.quota_bytes = 2 * 1024 * 1024, .no_sync = true};
    tdb_open(t, &opt);
    char val[1024];
    memset(val, 'v', sizeof(val) - 1);
    val[sizeof(val) - 1] = 0;
    struct mvcc_op put = {.type = MVCC_OP_PUT};
    put.u.put.key = (const uint8_t *)"k";
    put.u.put.key_len = 1;
    put.u.put.value = (const uint8_t *)val;
    put.u.put.value_len = sizeof(val) - 1;
    uint64_t cost = mvcc_request_cost(&put);
    assert_int_equal(cost, 256 + 1 + 1023);
    /* A txn costs its larger branch's top-level puts (etcd's costTxn). */
    struct mvcc_op two[] = {put, put}, del = {.type = MVCC_OP_DELETE};
    struct mvcc_txn_req ct = {.success = &put, .n_success = 1, .failure = two, .n_failure = 2};
    struct mvcc_op cop = {.type = MVCC_OP_TXN, .u.txn = &ct};
    assert_int_equal(mvcc_request_cost(&cop), 2 * cost);
    assert_int_equal(mvcc_request_cost(&del), 0);
    int i = 0;
    while (mvcc_quota_check(t->db, cost) == 0) {
        char k[16];
        snprintf(k, sizeof(k), "key%06d", i++);
        t_put(t->db, k, val);
        assert_true(i < 100000);
    }
    assert_int_equal(mvcc_quota_check(t->db, cost), MVCC_ENOSPACE);
    assert_string_equal(mvcc_strerror(MVCC_ENOSPACE), "etcdserver: mvcc: database space exceeded");
    assert_int_equal(mvcc_quota_check(t->db, 0), 0); /* reads and deletes always pass */
    /* The alarm is applied: puts fail everywhere, deletes work. */
    mvcc_set_capped(t->db, true);
    assert_int_equal(t_apply(t->db, &put, NULL), MVCC_ENOSPACE);
    struct mvcc_txn_req txn = {.failure = &put, .n_failure = 1};
    struct mvcc_op top = {.type = MVCC_OP_TXN, .u.txn = &txn};
    assert_int_equal(t_apply(t->db, &top, NULL), MVCC_ENOSPACE);
    assert_int_equal(t_del(t->db, "key", "kez"), i);
    int64_t rev;
    assert_int_equal(mvcc_state(t->db, NULL, NULL, &rev, NULL), 0);
    assert_int_equal(t_compact(t->db, rev), 0);
    /* Freed pages are reused, but only defragmentation lowers the size. */
    assert_int_equal(mvcc_quota_check(t->db, cost), MVCC_ENOSPACE);
    uint64_t held, size, in_use;
    struct util_err err;
    assert_int_equal(mvcc_defrag(t->db, &held, &err), 0);
    assert_int_equal(mvcc_size(t->db, &size, &in_use), 0);
    assert_true(size < 256 * 1024);
    assert_true(in_use <= size);
    assert_int_equal(mvcc_quota_check(t->db, cost), 0);
    mvcc_set_capped(t->db, false);
    assert_int_equal(t_apply(t->db, &put, NULL), 0);
}

static int count_keys(void *arg, const uint8_t *key, size_t len) {
    (void)key;
    (void)len;
    ++*(int *)arg;
    return 0;
}

struct writer {
    mvcc_t *db;
    int n;
    _Atomic int stop;
};

static void *write_loop(void *arg) {
    struct writer *w = arg;
    while (!w->stop || w->n < 50) {
        char k[32];
        snprintf(k, sizeof(k), "live%06d", w->n);
        mvcc_batch_t *b;
        if (mvcc_batch_begin(w->db, &b) != 0)
            break;
        struct mvcc_op op = t_op_put(k, k);
        op.u.put.lease = w->n % 3;
        mvcc_result_t *res;
        if (mvcc_apply(b, &op, &res) != 0) {
            mvcc_batch_abort(b);
            break;
        }
        mvcc_result_free(res);
        mvcc_batch_set_applied(b, (uint64_t)w->n + 100, 1);
        if (mvcc_batch_commit(b) != 0)
            break;
        w->n++;
    }
    return NULL;
}

static void defrag_runs_beside_readers_and_writers(void **state) {
    struct tdb *t = *state;
    mvcc_t *db = t->db;
    mvcc_batch_t *b2;
    char val[512];
    memset(val, 'x', sizeof(val) - 1);
    val[sizeof(val) - 1] = 0;
    for (int round = 0; round < 3; round++) {
        mvcc_batch_t *b;
        assert_int_equal(mvcc_batch_begin(db, &b), 0);
        for (int i = 0; i < 1000; i++) {
            char k[16];
            snprintf(k, sizeof(k), "old%05d", i);
            t_batch_put(b, k, val, 0);
        }
        assert_int_equal(mvcc_batch_commit(b), 0);
    }
    int64_t rev;
    assert_int_equal(mvcc_state(db, NULL, NULL, &rev, NULL), 0);
    assert_int_equal(t_compact(db, rev - 10), 0);
    uint64_t before, after;
    assert_int_equal(mvcc_size(db, &before, NULL), 0);
    uint32_t h1, h2;
    int64_t cur, comp;
    assert_int_equal(mvcc_hash_kv(db, rev, &h1, &cur, &comp), 0);

    /* Another layer's database, written in the same batches. */
    MDB_dbi other;
    assert_int_equal(mvcc_dbi_open(db, "lease", &other), 0);
    assert_int_equal(mvcc_batch_begin(db, &b2), 0);
    MDB_val ok = {.mv_size = 3, .mv_data = "l42"}, ov = {.mv_size = 2, .mv_data = "ok"};
    assert_int_equal(mdb_put(mvcc_batch_txn(b2), other, &ok, &ov, 0), 0);
    assert_int_equal(mvcc_batch_commit(b2), 0);

    mvcc_read_t *old_rd;
    assert_int_equal(mvcc_read_begin(db, &old_rd), 0);
    struct writer w = {.db = db};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, write_loop, &w), 0);
    uint64_t held = 0;
    struct util_err err;
    int rc = mvcc_defrag(db, &held, &err);
    w.stop = 1;
    pthread_join(th, NULL);
    assert_int_equal(rc, 0);
    assert_true(held > 0);
    print_message("defrag held writes %.3f ms, %d writes during it\n", held / 1e6, w.n);
    assert_int_equal(mvcc_size(db, &after, NULL), 0);
    assert_true(after < before);

    /* The snapshot from before still reads the old file. */
    mvcc_result_t *res;
    struct mvcc_range_req r = t_rreq("old", "old99");
    r.count_only = true;
    assert_int_equal(mvcc_range(old_rd, &r, &res), 0);
    assert_int_equal(res->resp.u.range.count, 1000);
    mvcc_result_free(res);
    mvcc_read_end(old_rd);

    /* Every write made during the defragmentation is there, with its lease. */
    r = t_rreq("live", "livf");
    assert_int_equal(t_range(db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.count, w.n);
    for (int i = 0; i < w.n; i++)
        assert_int_equal(res->resp.u.range.kvs[i].lease, i % 3);
    mvcc_result_free(res);
    uint64_t idx;
    assert_int_equal(mvcc_state(db, &idx, NULL, &cur, NULL), 0);
    assert_int_equal(idx, (uint64_t)w.n - 1 + 100);
    assert_int_equal(cur, rev + w.n);
    assert_int_equal(mvcc_hash_kv(db, rev, &h2, &cur, &comp), 0);
    assert_int_equal(h1, h2);
    mvcc_read_t *rd;
    assert_int_equal(mvcc_read_begin(db, &rd), 0);
    int n2 = 0;
    assert_int_equal(mvcc_lease_keys(db, mvcc_read_txn(rd), 2, count_keys, &n2), 0);
    assert_int_equal(n2, w.n / 3); /* keys i with i % 3 == 2 */
    mvcc_read_end(rd);
    assert_int_equal(mvcc_read_begin(db, &rd), 0);
    MDB_val got;
    assert_int_equal(mdb_get(mvcc_read_txn(rd), other, &ok, &got), 0);
    assert_int_equal(got.mv_size, 2);
    assert_memory_equal(got.mv_data, "ok", 2);
    mvcc_read_end(rd);
    /* A second defragmentation, then a reopen. */
    assert_int_equal(mvcc_defrag(db, &held, &err), 0);
    assert_int_equal(mvcc_hash_kv(db, rev, &h2, &cur, &comp), 0);
    assert_int_equal(h1, h2);
    /* It survives a reopen, which clears what a crashed defrag left. */
    char stale[160];
    snprintf(stale, sizeof(stale), "%s.defrag7", t->path);
    FILE *sf = fopen(stale, "w");
    assert_non_null(sf);
    fclose(sf);
    tdb_reopen(t, NULL);
    assert_int_equal(access(stale, F_OK), -1);
    assert_int_equal(t_range(t->db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.count, w.n);
    mvcc_result_free(res);
}

static void snapshot_save_and_install(void **state) {
    struct tdb *a = *state, b;
    struct mvcc_options opt = {.no_sync = true};
    tdb_open(&b, &opt);
    t_put_lease(a->db, "x", "1", 3);
    t_put(a->db, "y", "2");
    t_del(a->db, "x", NULL);
    t_put_lease(a->db, "z", "3", 3);
    mvcc_batch_t *bt;
    assert_int_equal(mvcc_batch_begin(a->db, &bt), 0);
    mvcc_batch_set_applied(bt, 77, 4);
    assert_int_equal(mvcc_batch_commit(bt), 0);
    t_put(b.db, "old", "content");

    char file[128];
    snprintf(file, sizeof(file), "%s/incoming", b.dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    assert_int_equal(mvcc_snapshot_to_fd(a->db, fileno(f)), 0);
    fclose(f);
    /* A write on the source after the save is not in the snapshot. */
    t_put(a->db, "late", "x");

    /* Something that is not an LMDB file is refused, the store unchanged. */
    char junk[128];
    snprintf(junk, sizeof(junk), "%s/junk", b.dir);
    FILE *jf = fopen(junk, "w");
    assert_non_null(jf);
    for (int i = 0; i < 3000; i++)
        fputs("not lmdb ", jf);
    fclose(jf);
    struct util_err err;
    assert_true(mvcc_snapshot_install(b.db, junk, &err) < 0);
    unlink(junk);
    assert_int_equal(t_put(b.db, "old", "content"), 3);

    mvcc_read_t *before;
    assert_int_equal(mvcc_read_begin(b.db, &before), 0);
    assert_int_equal(mvcc_snapshot_install(b.db, file, &err), 0);
    uint64_t idx, term;
    int64_t rev;
    assert_int_equal(mvcc_state(b.db, &idx, &term, &rev, NULL), 0);
    assert_int_equal(idx, 77);
    assert_int_equal(term, 4);
    assert_int_equal(rev, 5);
    uint32_t ha, hb;
    int64_t cur, comp;
    assert_int_equal(mvcc_hash_kv(a->db, 5, &ha, &cur, &comp), 0);
    assert_int_equal(mvcc_hash_kv(b.db, 5, &hb, &cur, &comp), 0);
    assert_int_equal(ha, hb);
    mvcc_read_t *rd;
    assert_int_equal(mvcc_read_begin(b.db, &rd), 0);
    int n = 0;
    assert_int_equal(mvcc_lease_keys(b.db, mvcc_read_txn(rd), 3, count_keys, &n), 0);
    assert_int_equal(n, 1);
    mvcc_read_end(rd);
    /* The snapshot opened before still reads the old content. */
    struct mvcc_range_req r = t_rreq("old", NULL);
    mvcc_result_t *res;
    assert_int_equal(mvcc_range(before, &r, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 1);
    mvcc_result_free(res);
    mvcc_read_end(before);
    assert_int_equal(t_range(b.db, &r, &res), 0);
    assert_int_equal(res->resp.u.range.n_kvs, 0);
    mvcc_result_free(res);
    /* It goes on from there, also after a reopen. */
    assert_int_equal(t_put(b.db, "next", "v"), 6);
    tdb_reopen(&b, &opt);
    assert_int_equal(t_put(b.db, "next", "v"), 7);
    char lock[160];
    snprintf(lock, sizeof(lock), "%s-lock", file);
    tdb_close(&b);
    assert_int_equal(access(lock, F_OK), -1);
}

/* A process killed in the middle of batches: after reopening, the applied
 * index and the data agree exactly (they commit in one LMDB transaction). */
static void crash_keeps_applied_index_with_data(void **state) {
    (void)state;
    for (int round = 0; round < 4; round++) {
        struct tdb t;
        struct mvcc_options opt = {.no_sync = true, .write_map = round % 2 == 1};
        tdb_open(&t, &opt);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            for (uint64_t i = 1;; i++) {
                mvcc_batch_t *b;
                if (mvcc_batch_begin(t.db, &b) != 0)
                    _exit(1);
                char k[32];
                snprintf(k, sizeof(k), "k%08llu", (unsigned long long)i);
                t_batch_put(b, k, k, 0);
                t_batch_put(b, "last", k, 0);
                mvcc_batch_set_applied(b, i, 1);
                if (mvcc_batch_commit(b) != 0)
                    _exit(1);
            }
        }
        usleep(30000 + 20000 * round);
        kill(pid, SIGKILL);
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFSIGNALED(st));
        tdb_reopen(&t, &opt);
        uint64_t idx;
        int64_t rev;
        assert_int_equal(mvcc_state(t.db, &idx, NULL, &rev, NULL), 0);
        assert_true(idx > 0);
        assert_int_equal(rev, 1 + 2 * (int64_t)idx);
        struct mvcc_range_req r = t_rreq("k", "l");
        r.count_only = true;
        mvcc_result_t *res;
        assert_int_equal(t_range(t.db, &r, &res), 0);
        assert_int_equal(res->resp.u.range.count, (int64_t)idx);
        mvcc_result_free(res);
        char want[32];
        snprintf(want, sizeof(want), "k%08llu", (unsigned long long)idx);
        r = t_rreq("last", NULL);
        assert_int_equal(t_range(t.db, &r, &res), 0);
        assert_true(kv_is(&res->resp.u.range.kvs[0], "last", want));
        mvcc_result_free(res);
        tdb_close(&t);
    }
}

struct reader {
    mvcc_t *db;
    _Atomic int stop;
    _Atomic int checks;
    _Atomic int bad;
};

/* Each snapshot must see exactly the keys written up to its revision: the
 * writer puts key i at revision i + 1 and deletes nothing. */
static void *read_loop(void *arg) {
    struct reader *r = arg;
    while (!r->stop) {
        mvcc_read_t *rd;
        if (mvcc_read_begin(r->db, &rd) != 0) {
            r->bad++;
            break;
        }
        int64_t rev = mvcc_read_revision(rd);
        struct mvcc_range_req q = t_rreq("c", "d");
        q.count_only = true;
        q.revision = rev > 1 ? rev - (rev % 7) : 0;
        if (q.revision < 1)
            q.revision = 0;
        mvcc_range_it_t *it;
        struct mvcc_kv kv;
        int64_t count;
        if (mvcc_range_open(rd, &q, &it) != 0 || mvcc_range_next(it, &kv) != 0) {
            r->bad++;
        } else {
            mvcc_range_summary(it, &count, NULL, NULL);
            int64_t at = q.revision > 0 ? q.revision : rev;
            if (count != at - 1)
                r->bad++;
            mvcc_range_close(it);
        }
        mvcc_read_end(rd);
        r->checks++;
    }
    return NULL;
}

static void readers_see_consistent_snapshots(void **state) {
    mvcc_t *db = tdb_db(state);
    struct reader r = {.db = db};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, read_loop, &r), 0);
    for (int i = 0; i < 400; i++) {
        mvcc_batch_t *b;
        assert_int_equal(mvcc_batch_begin(db, &b), 0);
        for (int j = 0; j < 5; j++) {
            char k[16];
            snprintf(k, sizeof(k), "c%05d", i * 5 + j);
            t_batch_put(b, k, "", 0);
        }
        assert_int_equal(mvcc_batch_commit(b), 0);
    }
    r.stop = 1;
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(r.bad, 0);
    assert_true(r.checks > 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        TDB_TEST(compaction_keeps_latest_versions),
        TDB_TEST(compaction_resumes_after_reopen),
        TDB_TEST(hash_matches_etcd),
        TDB_TEST(history_pages_in_revision_order),
        TDB_TEST(lease_index_follows_keys),
        TDB_TEST(quota_caps_writes_until_defrag),
        TDB_TEST(defrag_runs_beside_readers_and_writers),
        TDB_TEST(readers_see_consistent_snapshots),
        TDB_TEST(snapshot_save_and_install),
        cmocka_unit_test(crash_keeps_applied_index_with_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
