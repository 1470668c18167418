/* Property test: thousands of random requests (puts, deletes, ranges with
 * every option, nested txns, compactions, history reads) applied both to the
 * store and to a plain in-memory model of etcd's revision rules written
 * here, compared result by result: errors, header revisions, kvs, count,
 * more, prev kvs, events. QUOIN_SEED=<n> replays one seed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

/* The key universe (sorted, with NUL bytes) and values. */
static const struct {
    const char *p;
    size_t n;
} KEYS[] = {{"a", 1}, {"b", 1}, {"b\0", 2}, {"b\0x", 3}, {"ba", 2},
            {"c", 1}, {"d", 1}, {"dd", 2},  {"e", 1}};
#define NKEYS (int)(sizeof(KEYS) / sizeof(KEYS[0]))
static const char *VALS[] = {"", "v1", "v2", "x", "yy", "abc", "b"};
#define NVALS (int)(sizeof(VALS) / sizeof(VALS[0]))
static const int64_t LEASES[] = {0, 1, 7};

struct mrec {
    int key;
    int64_t main, sub;
    bool tomb;
    int64_t create, version, lease;
    int val;
};

struct model {
    struct mrec *r;
    size_t n, cap;
    int64_t rev, compact;
};

struct rng {
    uint64_t s;
};

static uint64_t rnd(struct rng *g) {
    g->s ^= g->s << 13;
    g->s ^= g->s >> 7;
    g->s ^= g->s << 17;
    return g->s;
}

static int pick(struct rng *g, int n) {
    return (int)(rnd(g) % (uint64_t)n);
}

static int key_cmp(const uint8_t *a, size_t la, const uint8_t *b, size_t lb) {
    int c = memcmp(a, b, la < lb ? la : lb);
    return c != 0 ? c : (la > lb) - (la < lb);
}

/* ---- model ---- */

static const struct mrec *m_latest(const struct model *m, int key, int64_t at) {
    for (size_t i = m->n; i-- > 0;)
        if (m->r[i].key == key && m->r[i].main <= at)
            return &m->r[i];
    return NULL;
}

static const struct mrec *m_live(const struct model *m, int key, int64_t at) {
    const struct mrec *r = m_latest(m, key, at);
    return r != NULL && !r->tomb ? r : NULL;
}

/* Whether universe key k is in [key, end) as a request gives it. */
static bool in_range(int k, const uint8_t *key, size_t kl, const uint8_t *end, size_t el) {
    const uint8_t *p = (const uint8_t *)KEYS[k].p;
    size_t n = KEYS[k].n;
    if (el == 0)
        return key_cmp(p, n, key, kl) == 0;
    if (key_cmp(p, n, key, kl) < 0)
        return false;
    return (el == 1 && end[0] == 0) || key_cmp(p, n, end, el) < 0;
}

static void m_push(struct model *m, struct mrec r) {
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 256;
        m->r = realloc(m->r, m->cap * sizeof(*m->r));
        assert_non_null(m->r);
    }
    m->r[m->n++] = r;
}

static void expect_kv(const struct mvcc_kv *kv, const struct mrec *r, bool keys_only) {
    assert_int_equal(kv->key_len, KEYS[r->key].n);
    assert_memory_equal(kv->key, KEYS[r->key].p, kv->key_len);
    size_t vl = keys_only || r->tomb ? 0 : strlen(VALS[r->val]);
    assert_int_equal(kv->value_len, vl);
    if (vl > 0)
        assert_memory_equal(kv->value, VALS[r->val], vl);
    assert_int_equal(kv->mod_revision, r->main);
    assert_int_equal(kv->create_revision, r->tomb ? 0 : r->create);
    assert_int_equal(kv->version, r->tomb ? 0 : r->version);
    assert_int_equal(kv->lease, r->tomb ? 0 : r->lease);
}

/* One request being replayed on the model, compared against `got` events. */
struct mctx {
    struct model *m;
    int64_t begin, changes;
    const mvcc_result_t *got; /* NULL: the store failed, only compute */
    size_t ev;
};

static int64_t view_rev(const struct mctx *c) {
    return c->begin + (c->changes > 0);
}

static void expect_event(struct mctx *c, const struct mrec *r, const struct mrec *prev) {
    if (c->got == NULL)
        return;
    assert_true(c->ev < c->got->n_events);
    const struct mvcc_event *e = &c->got->events[c->ev++];
    assert_int_equal(e->type, r->tomb ? MVCC_EVENT_DELETE : MVCC_EVENT_PUT);
    expect_kv(&e->kv, r, false);
    assert_int_equal(e->has_prev, prev != NULL);
    if (prev != NULL)
        expect_kv(&e->prev_kv, prev, false);
}

static int sort_val(const struct mrec *a, const struct mrec *b, enum mvcc_sort_target t) {
    int64_t x = 0, y = 0;
    switch (t) {
    case MVCC_SORT_KEY:
        return 0;
    case MVCC_SORT_VALUE:
        return strcmp(VALS[a->val], VALS[b->val]);
    case MVCC_SORT_VERSION:
        x = a->version, y = b->version;
        break;
    case MVCC_SORT_CREATE:
        x = a->create, y = b->create;
        break;
    case MVCC_SORT_MOD:
        x = a->main, y = b->main;
        break;
    }
    return (x > y) - (x < y);
}

/* etcd 3.4's Range on the model; compares with resp when given. */
static int m_range(const struct model *m, int64_t cur, const struct mvcc_range_req *q,
                   const struct mvcc_op_resp *resp) {
    if (q->revision > cur)
        return MVCC_EFUTURE;
    int64_t rev = q->revision > 0 ? q->revision : cur;
    if (rev < m->compact)
        return MVCC_ECOMPACTED;
    const struct mrec *kvs[NKEYS];
    int n = 0, count = 0;
    for (int k = 0; k < NKEYS; k++) {
        if (!in_range(k, q->key, q->key_len, q->range_end, q->range_end_len))
            continue;
        const struct mrec *r = m_live(m, k, rev);
        if (r == NULL)
            continue;
        count++;
        if ((q->max_mod_revision && r->main > q->max_mod_revision) ||
            (q->min_mod_revision && r->main < q->min_mod_revision) ||
            (q->max_create_revision && r->create > q->max_create_revision) ||
            (q->min_create_revision && r->create < q->min_create_revision))
            continue;
        kvs[n++] = r;
    }
    if (q->count_only)
        n = 0;
    enum mvcc_sort_order o = q->sort_order;
    if (q->sort_target != MVCC_SORT_KEY && o == MVCC_SORT_NONE)
        o = MVCC_SORT_ASCEND;
    if (o == MVCC_SORT_DESCEND && q->sort_target == MVCC_SORT_KEY) {
        for (int i = 0; i < n / 2; i++) {
            const struct mrec *t = kvs[i];
            kvs[i] = kvs[n - 1 - i];
            kvs[n - 1 - i] = t;
        }
    } else if (o != MVCC_SORT_NONE) {
        for (int i = 1; i < n; i++) /* insertion sort: stable */
            for (int j = i; j > 0; j--) {
                int c = sort_val(kvs[j], kvs[j - 1], q->sort_target);
                if (!(o == MVCC_SORT_ASCEND ? c < 0 : c > 0))
                    break;
                const struct mrec *t = kvs[j];
                kvs[j] = kvs[j - 1];
                kvs[j - 1] = t;
            }
    }
    bool more = false;
    if (q->limit > 0 && n > q->limit) {
        n = (int)q->limit;
        more = true;
    }
    if (resp != NULL) {
        assert_int_equal(resp->type, MVCC_OP_RANGE);
        assert_int_equal(resp->revision, cur);
        assert_int_equal(resp->u.range.count, count);
        assert_int_equal(resp->u.range.more, more);
        assert_int_equal(resp->u.range.n_kvs, n);
        for (int i = 0; i < n; i++)
            expect_kv(&resp->u.range.kvs[i], kvs[i], q->keys_only);
    }
    return 0;
}

static int m_put(struct mctx *c, const struct mvcc_put_req *q, int key, int val,
                 const struct mvcc_op_resp *resp) {
    struct model *m = c->m;
    int64_t main = c->begin + 1;
    const struct mrec *old = m_live(m, key, main);
    if ((q->ignore_value || q->ignore_lease) && old == NULL)
        return MVCC_EKEYNOTFOUND;
    struct mrec prev = old ? *old : (struct mrec){0};
    struct mrec r = {.key = key,
                     .main = main,
                     .sub = c->changes++,
                     .create = old ? old->create : main,
                     .version = old ? old->version + 1 : 1,
                     .lease = q->ignore_lease ? prev.lease : q->lease,
                     .val = q->ignore_value ? prev.val : val};
    m_push(m, r);
    expect_event(c, &r, old ? &prev : NULL);
    if (resp != NULL) {
        assert_int_equal(resp->type, MVCC_OP_PUT);
        assert_int_equal(resp->revision, main);
        assert_int_equal(resp->u.put.has_prev, q->prev_kv && old != NULL);
        if (resp->u.put.has_prev)
            expect_kv(&resp->u.put.prev_kv, &prev, false);
    }
    return 0;
}

static void m_delete(struct mctx *c, const struct mvcc_delete_req *q,
                     const struct mvcc_op_resp *resp) {
    struct model *m = c->m;
    int64_t rev = view_rev(c);
    struct mrec prevs[NKEYS];
    int n = 0;
    for (int k = 0; k < NKEYS; k++) {
        const struct mrec *r;
        if (in_range(k, q->key, q->key_len, q->range_end, q->range_end_len) &&
            (r = m_live(m, k, rev)) != NULL)
            prevs[n++] = *r;
    }
    for (int i = 0; i < n; i++) {
        struct mrec t = {.key = prevs[i].key, .main = c->begin + 1, .sub = c->changes++};
        t.tomb = true;
        m_push(m, t);
        expect_event(c, &t, &prevs[i]);
    }
    if (resp != NULL) {
        assert_int_equal(resp->type, MVCC_OP_DELETE);
        assert_int_equal(resp->revision, view_rev(c));
        assert_int_equal(resp->u.del.deleted, n);
        assert_int_equal(resp->u.del.n_prev_kvs, q->prev_kv ? n : 0);
        for (size_t i = 0; i < resp->u.del.n_prev_kvs; i++)
            expect_kv(&resp->u.del.prev_kvs[i], &prevs[i], false);
    }
}

static bool m_compare(const struct model *m, int64_t rev, const struct mvcc_compare *cmp) {
    bool any = false;
    for (int k = 0; k < NKEYS; k++) {
        if (!in_range(k, cmp->key, cmp->key_len, cmp->range_end, cmp->range_end_len))
            continue;
        const struct mrec *r = m_live(m, k, rev);
        if (r == NULL)
            continue;
        any = true;
        int res;
        int64_t x = 0;
        if (cmp->target == MVCC_CMP_VALUE) {
            const char *v = VALS[r->val];
            res = key_cmp((const uint8_t *)v, strlen(v), cmp->value, cmp->value_len);
        } else {
            x = cmp->target == MVCC_CMP_VERSION  ? r->version
                : cmp->target == MVCC_CMP_CREATE ? r->create
                : cmp->target == MVCC_CMP_MOD    ? r->main
                                                 : r->lease;
            res = (x > cmp->number) - (x < cmp->number);
        }
        bool ok = cmp->result == MVCC_CMP_EQUAL     ? res == 0
                  : cmp->result == MVCC_CMP_GREATER ? res > 0
                  : cmp->result == MVCC_CMP_LESS    ? res < 0
                                                    : res != 0;
        if (!ok)
            return false;
    }
    if (any)
        return true;
    if (cmp->target == MVCC_CMP_VALUE)
        return false;
    int res = (0 > cmp->number) - (0 < cmp->number);
    return cmp->result == MVCC_CMP_EQUAL     ? res == 0
           : cmp->result == MVCC_CMP_GREATER ? res > 0
           : cmp->result == MVCC_CMP_LESS    ? res < 0
                                             : res != 0;
}

/* ---- random requests (owning their storage in a pool) ---- */

struct pool {
    struct mvcc_op ops[64];
    struct mvcc_txn_req txns[16];
    struct mvcc_compare cmps[32];
    int nops, ntxns, ncmps;
    int key_of[64], val_of[64]; /* universe indexes of put ops */
};

static void rnd_bounds(struct rng *g, const uint8_t **key, size_t *kl, const uint8_t **end,
                       size_t *el) {
    int k = pick(g, NKEYS);
    *key = (const uint8_t *)KEYS[k].p;
    *kl = KEYS[k].n;
    int e = pick(g, 4);
    if (e == 0) {
        *end = NULL;
        *el = 0;
    } else if (e == 1) {
        *end = (const uint8_t *)"";
        *el = 1;
    } else {
        int j = pick(g, NKEYS);
        *end = (const uint8_t *)KEYS[j].p;
        *el = KEYS[j].n;
    }
}

static void rnd_range(struct rng *g, const struct model *m, struct mvcc_range_req *q) {
    memset(q, 0, sizeof(*q));
    rnd_bounds(g, &q->key, &q->key_len, &q->range_end, &q->range_end_len);
    if (pick(g, 3) == 0)
        q->revision = m->compact - 1 + pick(g, (int)(m->rev - m->compact + 3));
    q->limit = pick(g, 3) == 0 ? pick(g, 4) : 0;
    q->sort_order = pick(g, 3);
    q->sort_target = pick(g, 5);
    q->keys_only = pick(g, 5) == 0;
    q->count_only = pick(g, 8) == 0;
    if (pick(g, 4) == 0)
        q->min_mod_revision = pick(g, (int)m->rev + 1);
    if (pick(g, 4) == 0)
        q->max_mod_revision = pick(g, (int)m->rev + 1);
    if (pick(g, 4) == 0)
        q->min_create_revision = pick(g, (int)m->rev + 1);
    if (pick(g, 4) == 0)
        q->max_create_revision = pick(g, (int)m->rev + 1);
}

static struct mvcc_op *rnd_op(struct rng *g, const struct model *m, struct pool *p, int depth);

static struct mvcc_txn_req *rnd_txn(struct rng *g, const struct model *m, struct pool *p,
                                    int depth) {
    struct mvcc_txn_req *t = &p->txns[p->ntxns++];
    memset(t, 0, sizeof(*t));
    int nc = pick(g, 3);
    t->compares = &p->cmps[p->ncmps];
    for (int i = 0; i < nc && p->ncmps < 32; i++) {
        struct mvcc_compare *c = &p->cmps[p->ncmps++];
        memset(c, 0, sizeof(*c));
        c->result = pick(g, 4);
        c->target = pick(g, 5);
        rnd_bounds(g, &c->key, &c->key_len, &c->range_end, &c->range_end_len);
        if (pick(g, 2))
            c->range_end = NULL, c->range_end_len = 0;
        const char *v = VALS[pick(g, NVALS)];
        c->value = (const uint8_t *)v;
        c->value_len = strlen(v);
        c->number = c->target == MVCC_CMP_LEASE     ? LEASES[pick(g, 3)]
                    : c->target == MVCC_CMP_VERSION ? pick(g, 4)
                                                    : pick(g, (int)m->rev + 2);
        t->n_compares++;
    }
    for (int br = 0; br < 2; br++) {
        int n = pick(g, 4);
        /* Ops of one branch must be contiguous: reserve them first. */
        if (p->nops + n > 40)
            n = 0;
        struct mvcc_op *first = &p->ops[p->nops];
        int base = p->nops;
        p->nops += n;
        for (int i = 0; i < n; i++) {
            struct mvcc_op *o = rnd_op(g, m, p, depth + 1);
            p->ops[base + i] = *o;
            p->key_of[base + i] = p->key_of[o - p->ops];
            p->val_of[base + i] = p->val_of[o - p->ops];
        }
        if (br == 0) {
            t->success = first;
            t->n_success = (size_t)n;
        } else {
            t->failure = first;
            t->n_failure = (size_t)n;
        }
    }
    return t;
}

static struct mvcc_op *rnd_op(struct rng *g, const struct model *m, struct pool *p, int depth) {
    int idx = p->nops++;
    assert_true(idx < 64);
    struct mvcc_op *o = &p->ops[idx];
    memset(o, 0, sizeof(*o));
    int kind = pick(g, depth > 1 || p->ntxns >= 14 ? 3 : 4);
    if (kind == 0) {
        o->type = MVCC_OP_PUT;
        int k = pick(g, NKEYS), v = pick(g, NVALS);
        p->key_of[idx] = k;
        p->val_of[idx] = v;
        o->u.put.key = (const uint8_t *)KEYS[k].p;
        o->u.put.key_len = KEYS[k].n;
        o->u.put.value = (const uint8_t *)VALS[v];
        o->u.put.value_len = strlen(VALS[v]);
        o->u.put.lease = LEASES[pick(g, 3)];
        o->u.put.prev_kv = pick(g, 2);
        o->u.put.ignore_value = pick(g, 8) == 0;
        o->u.put.ignore_lease = pick(g, 8) == 0;
    } else if (kind == 1) {
        o->type = MVCC_OP_DELETE;
        rnd_bounds(g, &o->u.del.key, &o->u.del.key_len, &o->u.del.range_end,
                   &o->u.del.range_end_len);
        o->u.del.prev_kv = pick(g, 2);
    } else if (kind == 2) {
        o->type = MVCC_OP_RANGE;
        rnd_range(g, m, &o->u.range);
    } else {
        o->type = MVCC_OP_TXN;
        o->u.txn = rnd_txn(g, m, p, depth);
    }
    return o;
}

/* ---- replaying a request on the model ---- */

static int m_op(struct mctx *c, const struct pool *p, const struct mvcc_op *op,
                const struct mvcc_op_resp *resp, const bool **path);

static void m_path(const struct model *m, int64_t rev, const struct mvcc_txn_req *t, bool *out,
                   int *n) {
    bool ok = true;
    for (size_t i = 0; i < t->n_compares && ok; i++)
        ok = m_compare(m, rev, &t->compares[i]);
    out[(*n)++] = ok;
    const struct mvcc_op *ops = ok ? t->success : t->failure;
    size_t k = ok ? t->n_success : t->n_failure;
    for (size_t i = 0; i < k; i++)
        if (ops[i].type == MVCC_OP_TXN)
            m_path(m, rev, ops[i].u.txn, out, n);
}

static int m_check(const struct model *m, int64_t rev, const struct mvcc_txn_req *t,
                   const bool **path, enum mvcc_op_type kind) {
    bool ok = *(*path)++;
    const struct mvcc_op *ops = ok ? t->success : t->failure;
    size_t k = ok ? t->n_success : t->n_failure;
    for (size_t i = 0; i < k; i++) {
        const struct mvcc_op *o = &ops[i];
        int rc = 0;
        if (o->type == MVCC_OP_TXN) {
            rc = m_check(m, rev, o->u.txn, path, kind);
        } else if (o->type != kind) {
            continue;
        } else if (kind == MVCC_OP_RANGE) {
            int64_t r = o->u.range.revision;
            rc = r > rev ? MVCC_EFUTURE : r > 0 && r < m->compact ? MVCC_ECOMPACTED : 0;
        } else if (o->u.put.ignore_value || o->u.put.ignore_lease) {
            int key = -1;
            for (int j = 0; j < NKEYS; j++)
                if (KEYS[j].n == o->u.put.key_len &&
                    memcmp(KEYS[j].p, o->u.put.key, KEYS[j].n) == 0)
                    key = j;
            rc = m_live(m, key, rev) ? 0 : MVCC_EKEYNOTFOUND;
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int m_txn(struct mctx *c, const struct pool *p, const struct mvcc_txn_req *t,
                 const struct mvcc_op_resp *resp, const bool **path) {
    bool ok = *(*path)++;
    const struct mvcc_op *ops = ok ? t->success : t->failure;
    size_t n = ok ? t->n_success : t->n_failure;
    if (resp != NULL) {
        assert_int_equal(resp->type, MVCC_OP_TXN);
        assert_int_equal(resp->u.txn.succeeded, ok);
        assert_int_equal(resp->u.txn.n_responses, n);
    }
    for (size_t i = 0; i < n; i++) {
        int rc = m_op(c, p, &ops[i], resp ? &resp->u.txn.responses[i] : NULL, path);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int m_op(struct mctx *c, const struct pool *p, const struct mvcc_op *op,
                const struct mvcc_op_resp *resp, const bool **path) {
    switch (op->type) {
    case MVCC_OP_PUT: {
        int i = (int)(op - p->ops);
        return m_put(c, &op->u.put, p->key_of[i], p->val_of[i], resp);
    }
    case MVCC_OP_DELETE:
        m_delete(c, &op->u.del, resp);
        return 0;
    case MVCC_OP_RANGE:
        return m_range(c->m, view_rev(c), &op->u.range, resp);
    case MVCC_OP_TXN:
        return m_txn(c, p, op->u.txn, resp, path);
    }
    return -1;
}

/* Replays a top-level request; returns the model's error code. */
static int m_apply(struct model *m, const struct pool *p, const struct mvcc_op *op,
                   const mvcc_result_t *got) {
    struct mctx c = {.m = m, .begin = m->rev, .got = got};
    size_t saved = m->n;
    bool path[32];
    const bool *pp = path;
    int rc = 0;
    if (op->type == MVCC_OP_TXN) {
        int np = 0;
        m_path(m, m->rev, op->u.txn, path, &np);
        rc = m_check(m, m->rev, op->u.txn, &pp, MVCC_OP_PUT);
        pp = path;
        if (rc == 0)
            rc = m_check(m, m->rev, op->u.txn, &pp, MVCC_OP_RANGE);
        pp = path;
    }
    if (rc == 0)
        rc = m_op(&c, p, op, got ? &got->resp : NULL, &pp);
    if (rc != 0) {
        m->n = saved;
        return rc;
    }
    if (c.changes > 0)
        m->rev++;
    if (got != NULL) {
        assert_int_equal(c.ev, got->n_events);
        if (op->type == MVCC_OP_TXN)
            assert_int_equal(got->resp.revision, m->rev);
    }
    return 0;
}

/* Physically drops what a finished compaction sweep drops. */
static void m_compact(struct model *m, int64_t rev) {
    size_t j = 0;
    for (size_t i = 0; i < m->n; i++) {
        const struct mrec *r = &m->r[i];
        bool drop = false;
        if (r->main <= rev) {
            drop = r->tomb;
            for (size_t k = i + 1; k < m->n && !drop; k++)
                if (m->r[k].key == r->key && m->r[k].main <= rev)
                    drop = true;
        }
        if (!drop)
            m->r[j++] = *r;
    }
    m->n = j;
    m->compact = rev;
}

/* Reads the history of a random range from a random revision in pages and
 * compares it with the model's records. */
static void check_history(struct rng *g, mvcc_t *db, const struct model *m) {
    const uint8_t *key, *end;
    size_t kl, el;
    rnd_bounds(g, &key, &kl, &end, &el);
    int64_t from = m->compact + pick(g, (int)(m->rev - m->compact + 1));
    bool with_prev = pick(g, 2);
    mvcc_read_t *rd;
    assert_int_equal(mvcc_read_begin(db, &rd), 0);
    struct mvcc_history_pos pos = {.main = from};
    struct mvcc_event ev[3];
    size_t next = 0;
    bool done = false;
    while (!done) {
        int n = mvcc_history_read(rd, key, kl, end, el, with_prev, &pos, ev, 3, &done);
        assert_true(n >= 0);
        for (int i = 0; i < n; i++) {
            while (next < m->n &&
                   (m->r[next].main < from || !in_range(m->r[next].key, key, kl, end, el)))
                next++;
            assert_true(next < m->n);
            const struct mrec *r = &m->r[next];
            assert_int_equal(ev[i].type, r->tomb ? MVCC_EVENT_DELETE : MVCC_EVENT_PUT);
            expect_kv(&ev[i].kv, r, false);
            const struct mrec *prev = NULL;
            for (size_t k = next; k-- > 0;)
                if (m->r[k].key == r->key) {
                    prev = m->r[k].tomb ? NULL : &m->r[k];
                    break;
                }
            if (with_prev) {
                assert_int_equal(ev[i].has_prev, prev != NULL);
                if (prev != NULL)
                    expect_kv(&ev[i].prev_kv, prev, false);
            }
            next++;
        }
    }
    while (next < m->n && (m->r[next].main < from || !in_range(m->r[next].key, key, kl, end, el)))
        next++;
    assert_int_equal(next, m->n);
    mvcc_read_end(rd);
}

/* HashKV of both stores at the current revision and at one older revision
 * must agree. */
static void same_hash(struct rng *g, mvcc_t *a, mvcc_t *b, const struct model *m) {
    int64_t span = m->rev - m->compact;
    int64_t revs[2] = {0, span > 0 ? m->compact + 1 + pick(g, (int)span) : 0};
    for (int i = 0; i < 2; i++) {
        uint32_t ha, hb;
        int64_t ca, cb, xa, xb;
        int ra = mvcc_hash_kv(a, revs[i], &ha, &ca, &xa);
        int rb = mvcc_hash_kv(b, revs[i], &hb, &cb, &xb);
        assert_int_equal(ra, rb);
        if (ra == 0)
            assert_int_equal(ha, hb);
    }
}

static void run_seed(uint64_t seed, int steps) {
    struct tdb t, twin;
    struct mvcc_options opt = {.no_sync = true, .write_map = seed % 3 == 0};
    tdb_open(&t, &opt);
    /* The twin gets every request in a batch of its own and sweeps its
     * compactions only at the end: bytes and hashes must not depend on
     * either. */
    struct mvcc_options twin_opt = {.no_sync = true, .write_map = seed % 3 != 0};
    tdb_open(&twin, &twin_opt);
    struct model m = {.rev = 1, .compact = 0};
    struct rng g = {.s = seed * 2654435761u + 1};
    int ops = 0;
    /* Rare compactions let keys grow long histories (the scan's seek path). */
    int compact_odds = seed % 2 ? 40 : 400;
    while (ops < steps) {
        mvcc_batch_t *b;
        assert_int_equal(mvcc_batch_begin(t.db, &b), 0);
        int nb = 1 + pick(&g, 6);
        int64_t compact_to = 0;
        for (int i = 0; i < nb; i++, ops++) {
            if (pick(&g, compact_odds) == 0) {
                int64_t rev = m.compact - 1 + pick(&g, (int)(m.rev - m.compact + 3));
                int rc = mvcc_compact(b, rev);
                int want = rev <= m.compact ? MVCC_ECOMPACTED : rev > m.rev ? MVCC_EFUTURE : 0;
                assert_int_equal(rc, want);
                if (rc == 0) {
                    m.compact = rev;
                    compact_to = rev;
                    mvcc_batch_t *tb;
                    assert_int_equal(mvcc_batch_begin(twin.db, &tb), 0);
                    assert_int_equal(mvcc_compact(tb, rev), 0);
                    assert_int_equal(mvcc_batch_commit(tb), 0);
                }
                continue;
            }
            struct pool p;
            p.nops = p.ntxns = p.ncmps = 0;
            struct mvcc_op *op = rnd_op(&g, &m, &p, 0);
            mvcc_result_t *res = NULL;
            int rc = mvcc_apply(b, op, &res);
            int mrc = m_apply(&m, &p, op, rc == 0 ? res : NULL);
            if (rc != mrc)
                fail_msg("seed %llu op %d: store %d, model %d", (unsigned long long)seed, ops, rc,
                         mrc);
            assert_int_equal(mvcc_batch_revision(b), m.rev);
            mvcc_result_free(res);
            assert_int_equal(t_apply(twin.db, op, NULL), rc);
        }
        assert_int_equal(mvcc_batch_commit(b), 0);
        if (compact_to > 0) {
            bool done = false;
            while (!done)
                assert_int_equal(mvcc_compact_step(t.db, 1 + (size_t)pick(&g, 20), &done), 0);
            m_compact(&m, m.compact);
        }
        /* Reads on a snapshot agree with the model too. */
        struct pool p;
        p.nops = p.ntxns = p.ncmps = 0;
        struct mvcc_range_req q;
        rnd_range(&g, &m, &q);
        mvcc_result_t *res = NULL;
        int rc = t_range(t.db, &q, &res);
        assert_int_equal(rc, m_range(&m, m.rev, &q, rc == 0 ? &res->resp : NULL));
        mvcc_result_free(res);
        if (pick(&g, 10) == 0)
            check_history(&g, t.db, &m);
        if (pick(&g, 200) == 0)
            tdb_reopen(&t, &opt);
        if (pick(&g, 50) == 0)
            same_hash(&g, t.db, twin.db, &m);
    }
    same_hash(&g, t.db, twin.db, &m);
    bool done = false;
    while (!done)
        assert_int_equal(mvcc_compact_step(twin.db, 1000, &done), 0);
    same_hash(&g, t.db, twin.db, &m);
    tdb_close(&twin);
    print_message("seed %llu: %d requests, revision %lld, compacted at %lld, %zu records\n",
                  (unsigned long long)seed, ops, (long long)m.rev, (long long)m.compact, m.n);
    free(m.r);
    tdb_close(&t);
}

static void random_ops_match_model(void **state) {
    (void)state;
    const char *s = getenv("QUOIN_SEED");
    if (s != NULL) {
        run_seed(strtoull(s, NULL, 10), 4000);
        return;
    }
    for (uint64_t seed = 1; seed <= 16; seed++)
        run_seed(seed, 5000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(random_ops_match_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
