/* Allocation failures injected at every point of a scenario that exercises
 * the whole mvcc API (SQLite's habit): each failure must come back as an
 * error, leak nothing (ASan), leave the store consistent and usable.
 *
 * malloc, calloc and realloc of the code linked statically (libquoin-core
 * and this test) are wrapped (-Wl,--wrap, set in tests/mvcc/module.mk); the
 * N-th call fails. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);

/* Calls left before the failing one; negative: no injection. Test-only
 * state: the wrapped allocator has nowhere else to find it. */
static _Atomic long countdown = -1;

static bool fail_now(void) {
    long c = atomic_load(&countdown);
    if (c < 0)
        return false;
    atomic_store(&countdown, c - 1);
    return c == 0;
}

void *__wrap_malloc(size_t n) {
    return fail_now() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size) {
    return fail_now() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n) {
    return fail_now() ? NULL : __real_realloc(p, n);
}

/* A put asking for its previous kv. */
static struct mvcc_op put_op(const char *k, const char *v) {
    struct mvcc_op op = t_op_put(k, v);
    op.u.put.prev_kv = true;
    return op;
}

/* Applies ops in one batch; returns the first error (batch aborted). */
static int batch(mvcc_t *db, const struct mvcc_op *ops, int n, int *committed) {
    mvcc_batch_t *b;
    int rc = mvcc_batch_begin(db, &b);
    if (rc != 0)
        return rc;
    int writes = 0;
    for (int i = 0; i < n; i++) {
        mvcc_result_t *res = NULL;
        if ((rc = mvcc_apply(b, &ops[i], &res)) != 0) {
            mvcc_batch_abort(b);
            return rc;
        }
        writes += res->n_events > 0;
        mvcc_result_free(res);
    }
    mvcc_batch_set_applied(b, 10, 1);
    if ((rc = mvcc_batch_commit(b)) == 0)
        *committed += writes;
    return rc;
}

static int reads(mvcc_t *db) {
    mvcc_read_t *rd;
    int rc = mvcc_read_begin(db, &rd);
    if (rc != 0)
        return rc;
    struct mvcc_range_req q = t_rreq("a", T_ALL);
    q.sort_target = MVCC_SORT_VALUE;
    q.sort_order = MVCC_SORT_DESCEND;
    mvcc_result_t *res = NULL;
    if ((rc = mvcc_range(rd, &q, &res)) == 0) {
        mvcc_result_free(res);
        mvcc_range_it_t *it;
        q.sort_order = MVCC_SORT_NONE;
        q.sort_target = MVCC_SORT_KEY;
        if ((rc = mvcc_range_open(rd, &q, &it)) == 0) {
            struct mvcc_kv kv;
            while ((rc = mvcc_range_next(it, &kv)) == 1)
                ;
            mvcc_range_close(it);
        }
    }
    if (rc == 0) {
        struct mvcc_history_pos pos = {.main = 1};
        struct mvcc_event ev[4];
        bool done = false;
        while (!done && rc >= 0)
            rc = mvcc_history_read(rd, (const uint8_t *)"a", 1, (const uint8_t *)"", 1, true, &pos,
                                   ev, 4, &done);
        rc = rc > 0 ? 0 : rc;
    }
    mvcc_read_end(rd);
    return rc;
}

/* The whole scenario; returns the first error. */
static int scenario(mvcc_t *db, const char *dir, int *committed) {
    struct mvcc_op ops[] = {put_op("a", "1"), put_op("b", "2"), put_op("c", "3"), put_op("a", "4")};
    int rc = batch(db, ops, 4, committed);
    if (rc != 0)
        return rc;
    struct mvcc_compare cmp = {.result = MVCC_CMP_GREATER,
                               .target = MVCC_CMP_VERSION,
                               .key = (const uint8_t *)"a",
                               .key_len = 1,
                               .range_end = (const uint8_t *)"z",
                               .range_end_len = 1};
    struct mvcc_op inner_ops[] = {put_op("d", "5"), {.type = MVCC_OP_RANGE}};
    inner_ops[1].u.range = t_rreq("a", "c");
    struct mvcc_txn_req inner = {.success = inner_ops, .n_success = 2};
    struct mvcc_op succ[] = {{.type = MVCC_OP_DELETE}, {.type = MVCC_OP_TXN, .u.txn = &inner}};
    succ[0].u.del.key = (const uint8_t *)"b";
    succ[0].u.del.key_len = 1;
    succ[0].u.del.range_end = (const uint8_t *)"c";
    succ[0].u.del.range_end_len = 1;
    succ[0].u.del.prev_kv = true;
    struct mvcc_txn_req txn = {.compares = &cmp, .n_compares = 1, .success = succ, .n_success = 2};
    struct mvcc_op top = {.type = MVCC_OP_TXN, .u.txn = &txn};
    if ((rc = batch(db, &top, 1, committed)) != 0 || (rc = reads(db)) != 0)
        return rc;
    uint32_t h;
    int64_t cur, comp;
    if ((rc = mvcc_hash_kv(db, 0, &h, &cur, &comp)) != 0)
        return rc;
    mvcc_batch_t *b;
    if ((rc = mvcc_batch_begin(db, &b)) != 0)
        return rc;
    if ((rc = mvcc_compact(b, cur - 1)) != 0 && rc != MVCC_ECOMPACTED) {
        mvcc_batch_abort(b);
        return rc;
    }
    if ((rc = mvcc_batch_commit(b)) != 0)
        return rc;
    bool done = false;
    while (!done)
        if ((rc = mvcc_compact_step(db, 2, &done)) != 0)
            return rc;
    if ((rc = mvcc_txn_check_duplicates(&txn)) != 0)
        return rc;
    uint64_t held;
    struct util_err err;
    if ((rc = mvcc_defrag(db, &held, &err)) != 0)
        return rc;
    /* A raft snapshot of itself, installed over itself. */
    char file[128];
    snprintf(file, sizeof(file), "%s/snap", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    rc = mvcc_snapshot_to_fd(db, fileno(f));
    fclose(f);
    if (rc == 0)
        rc = mvcc_snapshot_install(db, file, &err);
    unlink(file);
    return rc;
}

static void every_allocation_failure_is_clean(void **state) {
    (void)state;
    int injected = 0;
    for (long n = 0;; n++) {
        struct tdb t;
        struct mvcc_options opt = {.no_sync = true};
        tdb_open(&t, &opt);
        int committed = 0;
        atomic_store(&countdown, n);
        int rc = scenario(t.db, t.dir, &committed);
        bool hit = atomic_load(&countdown) < 0;
        atomic_store(&countdown, -1);
        if (!hit) {
            assert_int_equal(rc, 0);
            tdb_close(&t);
            break;
        }
        injected++;
        if (rc >= 0)
            fail_msg("allocation %ld failed silently", n);
        /* Usable afterwards, its revision counting exactly the committed
         * writes, also after a reopen. */
        int64_t rev;
        assert_int_equal(mvcc_state(t.db, NULL, NULL, &rev, NULL), 0);
        assert_int_equal(rev, 1 + committed);
        assert_int_equal(t_put(t.db, "after", "x"), rev + 1);
        tdb_reopen(&t, &opt);
        assert_int_equal(mvcc_state(t.db, NULL, NULL, &rev, NULL), 0);
        assert_int_equal(rev, 2 + committed);
        struct mvcc_range_req q = t_rreq("a", T_ALL);
        assert_int_equal(t_range(t.db, &q, NULL), 0);
        tdb_close(&t);
    }
    print_message("%d allocation failures injected\n", injected);
    assert_true(injected > 30);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(every_allocation_failure_is_clean),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
