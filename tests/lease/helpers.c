/* Fixture of the lease tests (see helpers.h). */
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

static void open_both(struct fx *f) {
    /* No fsync: a clean close keeps everything, and tests stay fast. */
    const struct mvcc_options mo = {.no_sync = true};
    struct util_err err;
    if (mvcc_open(f->path, &mo, NULL, &f->db, &err) != 0)
        fail_msg("mvcc_open: %s", err.msg);
    if (lease_open(f->db, &f->opt, NULL, &f->ls, &err) != 0)
        fail_msg("lease_open: %s", err.msg);
}

static void close_both(struct fx *f) {
    lease_close(f->ls);
    mvcc_close(f->db);
    f->ls = NULL;
    f->db = NULL;
}

void fx_open(struct fx *f, const struct lease_options *opt) {
    memset(f, 0, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/quoin-lease-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/db", f->dir);
    f->opt = *opt;
    open_both(f);
}

void fx_restart(struct fx *f) {
    close_both(f);
    open_both(f);
}

void fx_close(struct fx *f) {
    close_both(f);
    char lock[128];
    snprintf(lock, sizeof(lock), "%s-lock", f->path);
    unlink(f->path);
    unlink(lock);
    rmdir(f->dir);
}

int fx_setup(void **state) {
    struct fx *f = malloc(sizeof(*f));
    assert_non_null(f);
    fx_open(f, *state);
    *state = f;
    return 0;
}

int fx_teardown(void **state) {
    fx_close(*state);
    free(*state);
    return 0;
}

/* One committed batch around a lease request. */
struct req {
    enum { R_GRANT, R_REVOKE, R_CHECKPOINT, R_EXISTS } kind;
    int64_t id, ttl;
    uint64_t wall;
    int64_t *granted;
    mvcc_result_t **res;
    const struct lease_checkpoint *cps;
    size_t n;
};

static int run(struct fx *f, const struct req *r, uint64_t now_mono) {
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(f->db, &b), 0);
    lease_batch_t *lb = lease_batch_begin(f->ls, b);
    int rc = 0;
    switch (r->kind) {
    case R_GRANT:
        rc = lease_grant(lb, r->id, r->ttl, r->wall, r->granted);
        break;
    case R_REVOKE:
        rc = lease_revoke(lb, r->id, r->res);
        break;
    case R_CHECKPOINT:
        rc = lease_checkpoint(lb, r->cps, r->n);
        break;
    case R_EXISTS:
        rc = lease_exists(lb, r->id);
        break;
    }
    /* Request errors leave the batch usable: it still commits. */
    assert_true(rc == 0 || (rc <= LEASE_ENOTFOUND && rc >= LEASE_EEXPIRED));
    int crc = mvcc_batch_commit(b);
    assert_int_equal(crc, 0);
    lease_batch_end(lb, true, now_mono);
    return rc;
}

int fx_grant(struct fx *f, int64_t id, int64_t ttl, uint64_t wall, uint64_t now_mono,
             int64_t *granted) {
    struct req r = {.kind = R_GRANT, .id = id, .ttl = ttl, .wall = wall, .granted = granted};
    return run(f, &r, now_mono);
}

int fx_revoke(struct fx *f, int64_t id, uint64_t now_mono, mvcc_result_t **out) {
    mvcc_result_t *res = NULL;
    struct req r = {.kind = R_REVOKE, .id = id, .res = &res};
    int rc = run(f, &r, now_mono);
    if (out != NULL)
        *out = res;
    else
        mvcc_result_free(res);
    return rc;
}

int fx_checkpoint(struct fx *f, const struct lease_checkpoint *cps, size_t n, uint64_t now_mono) {
    struct req r = {.kind = R_CHECKPOINT, .cps = cps, .n = n};
    return run(f, &r, now_mono);
}

int fx_exists(struct fx *f, int64_t id) {
    struct req r = {.kind = R_EXISTS, .id = id};
    return run(f, &r, MONO0);
}

int64_t fx_put(struct fx *f, const char *key, int64_t lease) {
    struct mvcc_op op = {.type = MVCC_OP_PUT};
    op.u.put.key = (const uint8_t *)key;
    op.u.put.key_len = strlen(key);
    op.u.put.value = (const uint8_t *)"v";
    op.u.put.value_len = 1;
    op.u.put.lease = lease;
    mvcc_batch_t *b;
    assert_int_equal(mvcc_batch_begin(f->db, &b), 0);
    mvcc_result_t *res;
    assert_int_equal(mvcc_apply(b, &op, &res), 0);
    assert_int_equal(mvcc_batch_commit(b), 0);
    int64_t rev = res->resp.revision;
    mvcc_result_free(res);
    return rev;
}

bool fx_has_key(struct fx *f, const char *key) {
    struct mvcc_range_req q = {.key = (const uint8_t *)key, .key_len = strlen(key)};
    mvcc_read_t *rd;
    assert_int_equal(mvcc_read_begin(f->db, &rd), 0);
    mvcc_result_t *res;
    assert_int_equal(mvcc_range(rd, &q, &res), 0);
    mvcc_read_end(rd);
    bool found = res->resp.u.range.n_kvs == 1;
    mvcc_result_free(res);
    return found;
}

int64_t fx_revision(struct fx *f) {
    int64_t rev;
    assert_int_equal(mvcc_state(f->db, NULL, NULL, &rev, NULL), 0);
    return rev;
}

bool fx_listed(struct fx *f, int64_t id) {
    int64_t *ids;
    size_t n;
    assert_int_equal(lease_list(f->ls, &ids, &n), 0);
    bool found = false;
    for (size_t i = 0; i < n; i++)
        found = found || ids[i] == id;
    free(ids);
    return found;
}
