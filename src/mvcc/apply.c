/* mvcc writes on the apply thread: put, delete range and txn with etcd 3.4's
 * exact revision rules, each producing its response and its watch events.
 *
 * A write request takes main revision rev+1 only if it changes something;
 * its changes take sub-revisions 0, 1, 2, ... Every change appends the kv
 * record (key ‖ revision → record) and a log record (revision → key) that
 * history reads, hashing and compaction walk in revision order. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mvcc/mvcc_int.h"

/* One request being applied. */
struct actx {
    mvcc_batch_t *b;
    MDB_txn *txn;
    mvcc_result_t *res;
    int64_t begin_rev;
    int64_t changes; /* also the next sub-revision */
};

/* The state reads inside the request see: its own writes included. */
static struct view cur_view(const struct actx *c) {
    struct view v = {.db = c->b->db,
                     .txn = c->txn,
                     .rev = c->begin_rev + (c->changes > 0),
                     .compact_rev = c->b->compact_rev};
    return v;
}

static int check_key(const mvcc_t *db, const uint8_t *key, size_t len) {
    if (len == 0 || key == NULL)
        return -EINVAL;
    return len > db->max_key ? MVCC_EKEYTOOLONG : 0;
}

static int put_lease_index(struct actx *c, int64_t lease, const uint8_t *key, size_t len,
                           bool add) {
    uint8_t buf[SEEK_MAX];
    assert(len + 8 <= sizeof(buf));
    mv_enc_u64(buf, (uint64_t)lease);
    memcpy(buf + 8, key, len);
    MDB_val k = {.mv_size = len + 8, .mv_data = buf}, d = {.mv_size = 0, .mv_data = buf};
    int rc = add ? mdb_put(c->txn, c->b->db->lease, &k, &d, 0)
                 : mdb_del(c->txn, c->b->db->lease, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : mv_lmdb_err(rc);
}

/* Writes the kv and log records of one change at (begin_rev+1, changes). */
static int write_change(struct actx *c, const uint8_t *key, size_t len, const struct rec *r) {
    mvcc_t *db = c->b->db;
    int64_t main = c->begin_rev + 1, sub = c->changes;
    uint8_t kbuf[SEEK_MAX];
    memcpy(kbuf, key, len);
    mv_enc_rev(kbuf + len, main, sub);
    MDB_val k = {.mv_size = len + REV_LEN, .mv_data = kbuf};
    MDB_val d = {.mv_size = r->tomb ? 1 : REC_HDR + r->value_len, .mv_data = NULL};
    int rc = mdb_put(c->txn, db->kv, &k, &d, MDB_RESERVE);
    if (rc != 0)
        return mv_lmdb_err(rc);
    uint8_t *p = d.mv_data;
    p[0] = r->tomb ? REC_TOMB : 0;
    if (!r->tomb) {
        mv_enc_u64(p + 1, (uint64_t)r->create);
        mv_enc_u64(p + 9, (uint64_t)r->version);
        mv_enc_u64(p + 17, (uint64_t)r->lease);
        if (r->value_len > 0)
            memcpy(p + REC_HDR, r->value, r->value_len);
    }
    MDB_val lk = {.mv_size = REV_LEN, .mv_data = kbuf + len};
    MDB_val ld = {.mv_size = 1 + len, .mv_data = NULL};
    rc = mdb_put(c->txn, db->log, &lk, &ld, MDB_RESERVE | MDB_APPEND);
    if (rc == MDB_KEYEXIST)
        return MVCC_ECORRUPT;
    if (rc != 0)
        return mv_lmdb_err(rc);
    p = ld.mv_data;
    p[0] = r->tomb ? REC_TOMB : 0;
    memcpy(p + 1, key, len);
    c->changes++;
    return 0;
}

static int do_put(struct actx *c, const struct mvcc_put_req *q, struct mvcc_op_resp *resp) {
    mvcc_t *db = c->b->db;
    struct mvcc_arena *a = c->res->arena;
    MDB_cursor *cur = NULL;
    int rc = mdb_cursor_open(c->txn, db->kv, &cur);
    if (rc != 0)
        return mv_lmdb_err(rc);
    struct rec old;
    rc = mv_latest_rec(cur, q->key, q->key_len, &old);
    mdb_cursor_close(cur);
    if (rc < 0)
        return rc;
    bool exists = rc == 1 && !old.tomb;
    if ((q->ignore_value || q->ignore_lease) && !exists)
        return MVCC_EKEYNOTFOUND;
    struct mvcc_event ev = {.type = MVCC_EVENT_PUT, .has_prev = exists};
    if (exists && (rc = mv_kv_from_rec(a, &old, false, &ev.prev_kv)) != 0)
        return rc;
    int64_t main = c->begin_rev + 1;
    struct rec nr = {.tomb = false,
                     .main = main,
                     .create = exists ? ev.prev_kv.create_revision : main,
                     .version = exists ? ev.prev_kv.version + 1 : 1,
                     .lease = q->ignore_lease ? ev.prev_kv.lease : q->lease,
                     .value = q->ignore_value ? ev.prev_kv.value : q->value,
                     .value_len = q->ignore_value ? ev.prev_kv.value_len : q->value_len,
                     .key = q->key,
                     .key_len = q->key_len};
    if ((rc = write_change(c, q->key, q->key_len, &nr)) != 0)
        return rc;
    int64_t old_lease = exists ? ev.prev_kv.lease : 0;
    if (old_lease != nr.lease) {
        if (old_lease != 0 && (rc = put_lease_index(c, old_lease, q->key, q->key_len, false)))
            return rc;
        if (nr.lease != 0 && (rc = put_lease_index(c, nr.lease, q->key, q->key_len, true)))
            return rc;
    }
    if ((rc = mv_kv_from_rec(a, &nr, false, &ev.kv)) != 0)
        return rc;
    if ((rc = mv_result_add_event(c->res, &ev)) != 0)
        return rc;
    resp->type = MVCC_OP_PUT;
    resp->revision = main;
    resp->u.put.has_prev = q->prev_kv && exists;
    if (resp->u.put.has_prev)
        resp->u.put.prev_kv = ev.prev_kv;
    return 0;
}

static int do_delete(struct actx *c, const struct mvcc_delete_req *q, struct mvcc_op_resp *resp) {
    struct mvcc_arena *a = c->res->arena;
    struct view v = cur_view(c);
    struct bounds b;
    mv_bounds_init(&b, q->key, q->key_len, q->range_end, q->range_end_len);
    struct kscan s;
    int rc = mv_kscan_open(&s, &v, &b, v.rev);
    if (rc != 0)
        return rc;
    /* Copy the keys out first: writing moves LMDB pages under the scan. */
    struct mvcc_kv *dels = NULL;
    size_t n = 0, cap = 0;
    struct rec r;
    while ((rc = mv_kscan_next(&s, &r)) == 1) {
        if ((rc = mv_arena_grow(a, &dels, &cap, n, sizeof(*dels))) != 0 ||
            (rc = mv_kv_from_rec(a, &r, false, &dels[n])) != 0)
            break;
        n++;
    }
    mv_kscan_close(&s);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        const struct mvcc_kv *p = &dels[i];
        struct rec tomb = {.tomb = true};
        if ((rc = write_change(c, p->key, p->key_len, &tomb)) != 0)
            return rc;
        if (p->lease != 0 && (rc = put_lease_index(c, p->lease, p->key, p->key_len, false)))
            return rc;
        struct mvcc_event ev = {.type = MVCC_EVENT_DELETE, .has_prev = true, .prev_kv = *p};
        ev.kv.key = p->key;
        ev.kv.key_len = p->key_len;
        ev.kv.mod_revision = c->begin_rev + 1;
        if ((rc = mv_result_add_event(c->res, &ev)) != 0)
            return rc;
    }
    resp->type = MVCC_OP_DELETE;
    resp->revision = c->begin_rev + (c->changes > 0);
    resp->u.del.deleted = (int64_t)n;
    if (q->prev_kv) {
        resp->u.del.prev_kvs = dels;
        resp->u.del.n_prev_kvs = n;
    }
    return 0;
}

/* ---- txn ---- */

static int cmp_i64(int64_t a, int64_t b) {
    return a < b ? -1 : a > b;
}

static bool compare_kv(const struct mvcc_compare *cmp, const struct rec *r) {
    int res = 0;
    switch (cmp->target) {
    case MVCC_CMP_VALUE: {
        size_t la = r->value_len, lb = cmp->value_len;
        int m = la && lb ? memcmp(r->value, cmp->value, la < lb ? la : lb) : 0;
        res = m != 0 ? m : cmp_i64((int64_t)la, (int64_t)lb);
        break;
    }
    case MVCC_CMP_CREATE:
        res = cmp_i64(r->create, cmp->number);
        break;
    case MVCC_CMP_MOD:
        res = cmp_i64(r->main, cmp->number);
        break;
    case MVCC_CMP_VERSION:
        res = cmp_i64(r->version, cmp->number);
        break;
    case MVCC_CMP_LEASE:
        res = cmp_i64(r->lease, cmp->number);
        break;
    }
    switch (cmp->result) {
    case MVCC_CMP_EQUAL:
        return res == 0;
    case MVCC_CMP_NOT_EQUAL:
        return res != 0;
    case MVCC_CMP_GREATER:
        return res > 0;
    case MVCC_CMP_LESS:
        return res < 0;
    }
    return true;
}

/* etcd's applyCompare: every key of the range must pass; an empty range is one
 * zero-valued kv, except that a VALUE compare on it fails. Returns 1/0/error. */
static int eval_compare(const struct view *v, const struct mvcc_compare *cmp) {
    struct bounds b;
    mv_bounds_init(&b, cmp->key, cmp->key_len, cmp->range_end, cmp->range_end_len);
    struct kscan s;
    int rc = mv_kscan_open(&s, v, &b, v->rev);
    if (rc != 0)
        return rc;
    struct rec r;
    bool any = false, ok = true;
    while (ok && (rc = mv_kscan_next(&s, &r)) == 1) {
        any = true;
        ok = compare_kv(cmp, &r);
    }
    mv_kscan_close(&s);
    if (rc < 0)
        return rc;
    if (!any) {
        if (cmp->target == MVCC_CMP_VALUE)
            return 0;
        struct rec zero = {.key = NULL};
        return compare_kv(cmp, &zero);
    }
    return ok;
}

/* The branch taken by every txn of a request, in the order they are met
 * (etcd's txnPath): a txn, then the txns nested in its chosen branch. */
struct path {
    bool *v;
    size_t n, cap, pos;
};

static int path_push(struct path *p, bool x) {
    int rc = mv_vec_grow(&p->v, &p->cap, p->n, sizeof(*p->v));
    if (rc == 0)
        p->v[p->n++] = x;
    return rc;
}

static void branch(const struct mvcc_txn_req *t, bool ok, const struct mvcc_op **ops, size_t *n) {
    *ops = ok ? t->success : t->failure;
    *n = ok ? t->n_success : t->n_failure;
}

static int build_path(const struct view *v, const struct mvcc_txn_req *t, struct path *p) {
    int ok = 1;
    for (size_t i = 0; i < t->n_compares && ok == 1; i++)
        ok = eval_compare(v, &t->compares[i]);
    if (ok < 0)
        return ok;
    int rc = path_push(p, ok == 1);
    if (rc != 0)
        return rc;
    const struct mvcc_op *ops;
    size_t n;
    branch(t, ok == 1, &ops, &n);
    for (size_t i = 0; i < n; i++)
        if (ops[i].type == MVCC_OP_TXN && (rc = build_path(v, ops[i].u.txn, p)) != 0)
            return rc;
    return 0;
}

/* Checks every request of the whole tree (both branches), as etcd's gRPC layer
 * does, so nothing fails half-way for a malformed request. */
static int validate_op(const mvcc_t *db, const struct mvcc_op *op, int depth) {
    switch (op->type) {
    case MVCC_OP_RANGE:
        return op->u.range.key_len == 0 ? -EINVAL : 0;
    case MVCC_OP_PUT:
        return check_key(db, op->u.put.key, op->u.put.key_len);
    case MVCC_OP_DELETE:
        return op->u.del.key_len == 0 ? -EINVAL : 0;
    case MVCC_OP_TXN: {
        const struct mvcc_txn_req *t = op->u.txn;
        if (t == NULL || depth > 64)
            return -EINVAL;
        for (size_t i = 0; i < t->n_compares; i++)
            if (t->compares[i].key_len == 0 || (unsigned)t->compares[i].target > MVCC_CMP_LEASE ||
                (unsigned)t->compares[i].result > MVCC_CMP_NOT_EQUAL)
                return -EINVAL;
        for (int br = 0; br < 2; br++) {
            const struct mvcc_op *ops;
            size_t n;
            branch(t, br == 0, &ops, &n);
            for (size_t i = 0; i < n; i++) {
                int rc = validate_op(db, &ops[i], depth + 1);
                if (rc != 0)
                    return rc;
            }
        }
        return 0;
    }
    }
    return -EINVAL;
}

/* The puts and deletes met so far while checking a txn in execution order,
 * to know whether a key exists when a put keeping its value runs. */
struct effects {
    const struct mvcc_op **v;
    size_t n, cap;
};

/* Whether `key` exists after the effects so far: the last put or delete
 * touching it decides, else the state before the txn. 1/0/error. */
static int exists_now(const struct view *v, const struct effects *e, const uint8_t *key,
                      size_t len) {
    for (size_t i = e->n; i-- > 0;) {
        const struct mvcc_op *op = e->v[i];
        if (op->type == MVCC_OP_PUT) {
            if (op->u.put.key_len == len && memcmp(op->u.put.key, key, len) == 0)
                return 1;
            continue;
        }
        struct bounds b;
        mv_bounds_init(&b, op->u.del.key, op->u.del.key_len, op->u.del.range_end,
                       op->u.del.range_end_len);
        if (mv_bounds_contains(&b, key, len))
            return 0;
    }
    MDB_cursor *cur;
    struct rec r;
    int rc = mdb_cursor_open(v->txn, v->db->kv, &cur);
    if (rc != 0)
        return mv_lmdb_err(rc);
    rc = mv_latest_rec(cur, key, len, &r);
    mdb_cursor_close(cur);
    return rc < 0 ? rc : rc == 1 && !r.tomb;
}

/* etcd's checkRequests on the state before the txn, one kind per pass as
 * etcd runs them (puts first): a put keeping the value or lease needs the
 * key before the txn (etcd's rule), range revisions must be readable. The
 * put pass also follows the txn's own puts and deletes: where etcd panics on
 * a kept-value put whose key the txn itself deleted, the txn is refused with
 * the same error before it writes anything. */
static int check_path(const struct view *v, const struct mvcc_txn_req *t, struct path *p,
                      enum mvcc_op_type kind, struct effects *e) {
    const struct mvcc_op *ops;
    size_t n;
    branch(t, p->v[p->pos++], &ops, &n);
    for (size_t i = 0; i < n; i++) {
        const struct mvcc_op *op = &ops[i];
        int rc = 0;
        if (op->type == MVCC_OP_TXN) {
            rc = check_path(v, op->u.txn, p, kind, e);
        } else if (kind == MVCC_OP_RANGE) {
            int64_t rev;
            if (op->type == MVCC_OP_RANGE)
                rc = mv_range_check_rev(v, op->u.range.revision, &rev);
        } else if (op->type != MVCC_OP_RANGE) {
            if (op->type == MVCC_OP_PUT && (op->u.put.ignore_value || op->u.put.ignore_lease)) {
                struct effects before = {0};
                rc = exists_now(v, &before, op->u.put.key, op->u.put.key_len);
                if (rc == 1)
                    rc = exists_now(v, e, op->u.put.key, op->u.put.key_len);
                rc = rc == 1 ? 0 : rc == 0 ? MVCC_EKEYNOTFOUND : rc;
            }
            if (rc == 0 && (rc = mv_vec_grow(&e->v, &e->cap, e->n, sizeof(*e->v))) == 0)
                e->v[e->n++] = op;
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int exec_op(struct actx *c, const struct mvcc_op *op, struct path *p,
                   struct mvcc_op_resp *resp);

static int exec_txn(struct actx *c, const struct mvcc_txn_req *t, struct path *p,
                    struct mvcc_op_resp *resp) {
    bool ok = p->v[p->pos++];
    const struct mvcc_op *ops;
    size_t n;
    branch(t, ok, &ops, &n);
    resp->type = MVCC_OP_TXN;
    resp->u.txn.succeeded = ok;
    resp->u.txn.n_responses = n;
    resp->u.txn.responses =
        mv_arena_alloc(c->res->arena, (n ? n : 1) * sizeof(struct mvcc_op_resp));
    if (resp->u.txn.responses == NULL)
        return -ENOMEM;
    memset(resp->u.txn.responses, 0, (n ? n : 1) * sizeof(struct mvcc_op_resp));
    for (size_t i = 0; i < n; i++) {
        int rc = exec_op(c, &ops[i], p, &resp->u.txn.responses[i]);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int exec_op(struct actx *c, const struct mvcc_op *op, struct path *p,
                   struct mvcc_op_resp *resp) {
    switch (op->type) {
    case MVCC_OP_PUT:
        return do_put(c, &op->u.put, resp);
    case MVCC_OP_DELETE:
        return do_delete(c, &op->u.del, resp);
    case MVCC_OP_RANGE: {
        struct view v = cur_view(c);
        return mv_range_materialize(&v, &op->u.range, c->res->arena, resp);
    }
    case MVCC_OP_TXN:
        /* Nested txn responses carry no header revision in etcd. */
        return exec_txn(c, op->u.txn, p, resp);
    }
    return -EINVAL;
}

static int do_txn(struct actx *c, const struct mvcc_txn_req *t, struct mvcc_op_resp *resp) {
    struct view v = cur_view(c);
    struct path p = {0};
    struct effects e = {0};
    int rc = build_path(&v, t, &p);
    if (rc == 0)
        rc = check_path(&v, t, &p, MVCC_OP_PUT, &e);
    p.pos = 0;
    if (rc == 0)
        rc = check_path(&v, t, &p, MVCC_OP_RANGE, &e);
    free(e.v);
    p.pos = 0;
    if (rc == 0)
        rc = exec_txn(c, t, &p, resp);
    if (rc == 0)
        resp->revision = c->begin_rev + (c->changes > 0);
    free(p.v);
    return rc;
}

uint64_t mvcc_request_cost(const struct mvcc_op *op) {
    const uint64_t overhead = 256; /* etcd's kvOverhead */
    if (op->type == MVCC_OP_PUT)
        return overhead + op->u.put.key_len + op->u.put.value_len;
    if (op->type != MVCC_OP_TXN)
        return 0;
    uint64_t best = 0;
    for (int br = 0; br < 2; br++) {
        const struct mvcc_op *ops;
        size_t n;
        branch(op->u.txn, br == 0, &ops, &n);
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++)
            if (ops[i].type == MVCC_OP_PUT)
                sum += mvcc_request_cost(&ops[i]);
        if (sum > best)
            best = sum;
    }
    return best;
}

int mvcc_apply(mvcc_batch_t *b, const struct mvcc_op *op, mvcc_result_t **out) {
    *out = NULL;
    int rc = validate_op(b->db, op, 0);
    if (rc != 0)
        return rc;
    if (atomic_load(&b->db->capped) && mvcc_request_cost(op) > 0)
        return MVCC_ENOSPACE;
    mvcc_result_t *res = mv_result_new();
    if (res == NULL)
        return -ENOMEM;
    struct actx c = {.b = b, .txn = b->txn, .res = res, .begin_rev = b->rev, .changes = 0};
    struct mvcc_op_resp *resp = &res->resp;
    switch (op->type) {
    case MVCC_OP_PUT:
        rc = do_put(&c, &op->u.put, resp);
        break;
    case MVCC_OP_DELETE:
        rc = do_delete(&c, &op->u.del, resp);
        break;
    case MVCC_OP_RANGE: {
        struct view v = cur_view(&c);
        rc = mv_range_materialize(&v, &op->u.range, res->arena, resp);
        break;
    }
    case MVCC_OP_TXN:
        rc = do_txn(&c, op->u.txn, resp);
        break;
    }
    if (rc != 0) {
        mvcc_result_free(res);
        return rc;
    }
    if (c.changes > 0)
        b->rev++;
    *out = res;
    return 0;
}

/* ---- etcd's duplicate-key check (its gRPC layer's checkIntervals) ---- */

/* A put key, or a delete's interval [b, e) (a single key when point). */
struct span {
    const uint8_t *b, *e;
    size_t bl, el;
    bool point;
};

struct spans {
    struct span *v;
    size_t n, cap;
};

static int spans_add(struct spans *s, struct span x) {
    int rc = mv_vec_grow(&s->v, &s->cap, s->n, sizeof(*s->v));
    if (rc == 0)
        s->v[s->n++] = x;
    return rc;
}

static int bcmp_len(const uint8_t *a, size_t la, const uint8_t *b, size_t lb) {
    int c = memcmp(a, b, la < lb ? la : lb);
    return c != 0 ? c : cmp_i64((int64_t)la, (int64_t)lb);
}

/* Whether a put of k falls in a delete interval [b, e). */
static bool spans_hit(const struct spans *d, const uint8_t *k, size_t kl) {
    for (size_t i = 0; i < d->n; i++) {
        const struct span *s = &d->v[i];
        if (s->point ? bcmp_len(s->b, s->bl, k, kl) == 0
                     : bcmp_len(s->b, s->bl, k, kl) <= 0 && bcmp_len(k, kl, s->e, s->el) < 0)
            return true;
    }
    return false;
}

static bool puts_has(const struct spans *p, const uint8_t *k, size_t kl) {
    for (size_t i = 0; i < p->n; i++)
        if (bcmp_len(p->v[i].b, p->v[i].bl, k, kl) == 0)
            return true;
    return false;
}

static int check_level(const struct mvcc_op *ops, size_t n, struct spans *puts,
                       struct spans *dels) {
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const struct mvcc_delete_req *d = &ops[i].u.del;
        if (ops[i].type != MVCC_OP_DELETE)
            continue;
        /* A range_end of "\0" makes etcd's interval [key, "\0"), which holds
         * no key: kept as is for compatibility. */
        struct span s = {.b = d->key,
                         .bl = d->key_len,
                         .e = d->range_end,
                         .el = d->range_end_len,
                         .point = d->range_end_len == 0};
        rc = spans_add(dels, s);
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (ops[i].type != MVCC_OP_TXN)
            continue;
        const struct mvcc_txn_req *t = ops[i].u.txn;
        struct spans pt = {0}, dt = {0}, pe = {0}, de = {0};
        rc = check_level(t->success, t->n_success, &pt, &dt);
        if (rc == 0)
            rc = check_level(t->failure, t->n_failure, &pe, &de);
        for (size_t j = 0; rc == 0 && j < pt.n; j++) {
            if (puts_has(puts, pt.v[j].b, pt.v[j].bl) || spans_hit(dels, pt.v[j].b, pt.v[j].bl))
                rc = MVCC_EDUPKEY;
            else
                rc = spans_add(puts, pt.v[j]);
        }
        for (size_t j = 0; rc == 0 && j < pe.n; j++) {
            const struct span *k = &pe.v[j];
            if ((puts_has(puts, k->b, k->bl) && !puts_has(&pt, k->b, k->bl)) ||
                spans_hit(dels, k->b, k->bl))
                rc = MVCC_EDUPKEY;
            else
                rc = spans_add(puts, *k);
        }
        for (size_t j = 0; rc == 0 && j < dt.n; j++)
            rc = spans_add(dels, dt.v[j]);
        for (size_t j = 0; rc == 0 && j < de.n; j++)
            rc = spans_add(dels, de.v[j]);
        free(pt.v);
        free(dt.v);
        free(pe.v);
        free(de.v);
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (ops[i].type != MVCC_OP_PUT)
            continue;
        const struct mvcc_put_req *p = &ops[i].u.put;
        if (puts_has(puts, p->key, p->key_len) || spans_hit(dels, p->key, p->key_len))
            return MVCC_EDUPKEY;
        struct span s = {.b = p->key, .bl = p->key_len};
        rc = spans_add(puts, s);
    }
    return rc;
}

int mvcc_txn_check_duplicates(const struct mvcc_txn_req *txn) {
    int rc = 0;
    for (int br = 0; br < 2 && rc == 0; br++) {
        const struct mvcc_op *ops;
        size_t n;
        branch(txn, br == 0, &ops, &n);
        struct spans puts = {0}, dels = {0};
        rc = check_level(ops, n, &puts, &dels);
        free(puts.v);
        free(dels.v);
    }
    return rc;
}
