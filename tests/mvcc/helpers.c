/* Shared helpers of the mvcc tests (see helpers.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

const char T_ALL[] = "";

void tdb_open(struct tdb *t, const struct mvcc_options *opt) {
    snprintf(t->dir, sizeof(t->dir), "/tmp/quoin-mvcc-XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->path, sizeof(t->path), "%s/db", t->dir);
    struct util_err err;
    int rc = mvcc_open(t->path, opt, NULL, &t->db, &err);
    if (rc != 0)
        fail_msg("open: %s", err.msg);
}

void tdb_reopen(struct tdb *t, const struct mvcc_options *opt) {
    mvcc_close(t->db);
    struct util_err err;
    int rc = mvcc_open(t->path, opt, NULL, &t->db, &err);
    if (rc != 0)
        fail_msg("reopen: %s", err.msg);
}

void tdb_close(struct tdb *t) {
    mvcc_close(t->db);
    t->db = NULL;
    char buf[160];
    snprintf(buf, sizeof(buf), "%s/db", t->dir);
    unlink(buf);
    snprintf(buf, sizeof(buf), "%s/db-lock", t->dir);
    unlink(buf);
    for (int i = 1; i < 4; i++) {
        snprintf(buf, sizeof(buf), "%s/db.defrag%d-lock", t->dir, i);
        unlink(buf);
    }
    rmdir(t->dir);
}

int tdb_setup(void **state) {
    struct tdb *t = malloc(sizeof(*t));
    assert_non_null(t);
    struct mvcc_options opt = {.no_sync = true};
    tdb_open(t, &opt);
    *state = t;
    return 0;
}

int tdb_teardown(void **state) {
    struct tdb *t = *state;
    tdb_close(t);
    free(t);
    return 0;
}

mvcc_t *tdb_db(void **state) {
    return ((struct tdb *)*state)->db;
}

int t_apply(mvcc_t *db, const struct mvcc_op *op, mvcc_result_t **out) {
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(db, &b), 0);
    mvcc_result_t *res = NULL;
    int rc = mvcc_apply(b, op, &res);
    assert_int_equal(mvcc_batch_commit(b), 0);
    if (out != NULL)
        *out = res;
    else
        mvcc_result_free(res);
    return rc;
}

struct mvcc_op t_op_put(const char *k, const char *v) {
    struct mvcc_op op = {.type = MVCC_OP_PUT};
    op.u.put.key = (const uint8_t *)k;
    op.u.put.key_len = strlen(k);
    op.u.put.value = (const uint8_t *)v;
    op.u.put.value_len = strlen(v);
    return op;
}

struct mvcc_op t_op_range(const char *k, const char *end) {
    struct mvcc_op op = {.type = MVCC_OP_RANGE};
    op.u.range = t_rreq(k, end);
    return op;
}

struct mvcc_op t_op_del(const char *k) {
    struct mvcc_op op = {.type = MVCC_OP_DELETE};
    op.u.del.key = (const uint8_t *)k;
    op.u.del.key_len = strlen(k);
    return op;
}

void t_batch_put(mvcc_batch_t *b, const char *key, const char *value, int64_t lease) {
    struct mvcc_op op = t_op_put(key, value);
    op.u.put.lease = lease;
    mvcc_result_t *res;
    assert_int_equal(mvcc_apply(b, &op, &res), 0);
    mvcc_result_free(res);
}

int64_t t_put_lease(mvcc_t *db, const char *key, const char *value, int64_t lease) {
    struct mvcc_op op = t_op_put(key, value);
    op.u.put.lease = lease;
    mvcc_result_t *res;
    assert_int_equal(t_apply(db, &op, &res), 0);
    int64_t rev = res->resp.revision;
    mvcc_result_free(res);
    return rev;
}

int64_t t_put(mvcc_t *db, const char *key, const char *value) {
    return t_put_lease(db, key, value, 0);
}

int64_t t_del(mvcc_t *db, const char *key, const char *end) {
    struct mvcc_op op = {.type = MVCC_OP_DELETE};
    op.u.del.key = (const uint8_t *)key;
    op.u.del.key_len = strlen(key);
    if (end == T_ALL) {
        op.u.del.range_end = (const uint8_t *)"";
        op.u.del.range_end_len = 1;
    } else if (end != NULL) {
        op.u.del.range_end = (const uint8_t *)end;
        op.u.del.range_end_len = strlen(end);
    }
    mvcc_result_t *res;
    assert_int_equal(t_apply(db, &op, &res), 0);
    int64_t n = res->resp.u.del.deleted;
    mvcc_result_free(res);
    return n;
}

struct mvcc_range_req t_rreq(const char *key, const char *end) {
    struct mvcc_range_req r = {.key = (const uint8_t *)key, .key_len = strlen(key)};
    if (end == T_ALL) {
        r.range_end = (const uint8_t *)"";
        r.range_end_len = 1;
    } else if (end != NULL) {
        r.range_end = (const uint8_t *)end;
        r.range_end_len = strlen(end);
    }
    return r;
}

int t_range(mvcc_t *db, const struct mvcc_range_req *req, mvcc_result_t **out) {
    mvcc_read_t *rd;
    assert_int_equal(mvcc_read_begin(db, &rd), 0);
    mvcc_result_t *res = NULL;
    int rc = mvcc_range(rd, req, &res);
    mvcc_read_end(rd);
    if (out != NULL)
        *out = res;
    else
        mvcc_result_free(res);
    return rc;
}

int t_compact(mvcc_t *db, int64_t rev) {
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(db, &b), 0);
    int rc = mvcc_compact(b, rev);
    assert_int_equal(mvcc_batch_commit(b), 0);
    if (rc != 0)
        return rc;
    bool done = false;
    while (!done)
        assert_int_equal(mvcc_compact_step(db, 3, &done), 0);
    return 0;
}

bool kv_is(const struct mvcc_kv *kv, const char *key, const char *value) {
    size_t kl = strlen(key), vl = value ? strlen(value) : 0;
    return kv->key_len == kl && memcmp(kv->key, key, kl) == 0 && kv->value_len == vl &&
           (vl == 0 || memcmp(kv->value, value, vl) == 0);
}
