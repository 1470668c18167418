/* mvcc range reads: etcd 3.4's Range semantics (count before filters and
 * limit, filters and sorting before the limit) as a pull iterator, so the api
 * layer can stream a range of any size straight out of LMDB's memory map. */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "mvcc/mvcc_int.h"

int mv_range_check_rev(const struct view *v, int64_t want, int64_t *rev) {
    if (want > v->rev)
        return MVCC_EFUTURE;
    *rev = want <= 0 ? v->rev : want;
    if (*rev < v->compact_rev)
        return MVCC_ECOMPACTED;
    return 0;
}

static enum mvcc_sort_order effective_order(const struct mvcc_range_req *req) {
    if (req->sort_target != MVCC_SORT_KEY && req->sort_order == MVCC_SORT_NONE)
        return MVCC_SORT_ASCEND;
    return req->sort_order;
}

int mv_range_it_init(struct mvcc_range_it *it, const struct view *v,
                     const struct mvcc_range_req *req) {
    memset(it, 0, sizeof(*it));
    if (req->key_len == 0 || (unsigned)req->sort_order > MVCC_SORT_DESCEND ||
        (unsigned)req->sort_target > MVCC_SORT_VALUE)
        return -EINVAL;
    int64_t rev;
    int rc = mv_range_check_rev(v, req->revision, &rev);
    if (rc != 0)
        return rc;
    it->req = *req;
    it->header_rev = v->rev;
    enum mvcc_sort_order o = effective_order(req);
    it->sorted = !req->count_only && o != MVCC_SORT_NONE &&
                 !(req->sort_target == MVCC_SORT_KEY && o == MVCC_SORT_ASCEND);
    it->descend = o == MVCC_SORT_DESCEND;
    struct bounds b;
    mv_bounds_init(&b, req->key, req->key_len, req->range_end, req->range_end_len);
    return mv_kscan_open(&it->scan, v, &b, rev);
}

static bool filtered_out(const struct mvcc_range_req *q, const struct rec *r) {
    return (q->max_mod_revision != 0 && r->main > q->max_mod_revision) ||
           (q->min_mod_revision != 0 && r->main < q->min_mod_revision) ||
           (q->max_create_revision != 0 && r->create > q->max_create_revision) ||
           (q->min_create_revision != 0 && r->create < q->min_create_revision);
}

static int cmp_i64(int64_t a, int64_t b) {
    return a < b ? -1 : a > b;
}

static int cmp_bytes(const uint8_t *a, size_t la, const uint8_t *b, size_t lb) {
    int c = memcmp(a, b, la < lb ? la : lb);
    return c != 0 ? c : cmp_i64((int64_t)la, (int64_t)lb);
}

static int sort_cmp(const struct mvcc_kv *a, const struct mvcc_kv *b, enum mvcc_sort_target t) {
    switch (t) {
    case MVCC_SORT_VERSION:
        return cmp_i64(a->version, b->version);
    case MVCC_SORT_CREATE:
        return cmp_i64(a->create_revision, b->create_revision);
    case MVCC_SORT_MOD:
        return cmp_i64(a->mod_revision, b->mod_revision);
    case MVCC_SORT_VALUE:
        return cmp_bytes(a->value, a->value_len, b->value, b->value_len);
    case MVCC_SORT_KEY:
        break;
    }
    return cmp_bytes(a->key, a->key_len, b->key, b->key_len);
}

/* The order of a sorted range: by the target, ties in ascending key order
 * (what etcd's sort gives for its input, which comes in key order). Keys are
 * unique, so this is a total order. */
static int order_cmp(const void *pa, const void *pb, void *arg) {
    const struct mvcc_range_it *it = arg;
    const struct mvcc_kv *a = pa, *b = pb;
    int c = sort_cmp(a, b, it->req.sort_target);
    if (it->descend)
        c = -c;
    return c != 0 ? c : cmp_bytes(a->key, a->key_len, b->key, b->key_len);
}

static void kv_swap(struct mvcc_kv *a, struct mvcc_kv *b) {
    struct mvcc_kv t = *a;
    *a = *b;
    *b = t;
}

/* A max-heap by order_cmp: the root is the entry that would come last. */
static void heap_down(struct mvcc_range_it *it, size_t i) {
    struct mvcc_kv *h = it->arr;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < it->n && order_cmp(&h[l], &h[m], it) > 0)
            m = l;
        if (r < it->n && order_cmp(&h[r], &h[m], it) > 0)
            m = r;
        if (m == i)
            return;
        kv_swap(&h[i], &h[m]);
        i = m;
    }
}

static void heap_up(struct mvcc_range_it *it, size_t i) {
    struct mvcc_kv *h = it->arr;
    while (i > 0 && order_cmp(&h[i], &h[(i - 1) / 2], it) > 0) {
        kv_swap(&h[i], &h[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
}

/* Reads the whole range and sorts what it keeps. With a limit only the
 * `limit` first entries are kept (a heap), so memory follows the limit, not
 * the range. */
static int collect_sorted(struct mvcc_range_it *it) {
    size_t keep = it->req.limit > 0 ? (size_t)it->req.limit : SIZE_MAX;
    struct rec r;
    int rc;
    while ((rc = mv_kscan_next(&it->scan, &r)) == 1) {
        it->count++;
        if (filtered_out(&it->req, &r))
            continue;
        it->matched++;
        struct mvcc_kv kv;
        mv_rec_to_kv(&r, false, &kv);
        if (it->n < keep) {
            if (mv_vec_grow(&it->arr, &it->cap, it->n, sizeof(*it->arr)) != 0)
                return -ENOMEM;
            it->arr[it->n++] = kv;
            if (keep != SIZE_MAX)
                heap_up(it, it->n - 1);
        } else if (order_cmp(&kv, &it->arr[0], it) < 0) {
            it->arr[0] = kv;
            heap_down(it, 0);
        }
    }
    if (rc < 0)
        return rc;
    if (it->n > 1)
        qsort_r(it->arr, it->n, sizeof(*it->arr), order_cmp, it);
    it->collected = true;
    return 0;
}

int mv_range_it_next(struct mvcc_range_it *it, struct mvcc_kv *kv) {
    int64_t limit = it->req.limit;
    if (it->sorted) {
        if (!it->collected) {
            int rc = collect_sorted(it);
            if (rc != 0)
                return rc;
        }
        if (it->pos < it->n && (limit <= 0 || (int64_t)it->pos < limit)) {
            *kv = it->arr[it->pos++];
            if (it->req.keys_only) {
                kv->value = NULL;
                kv->value_len = 0;
            }
            it->yielded++;
            return 1;
        }
        it->done = true;
        return 0;
    }
    if (it->done)
        return 0;
    struct rec r;
    int rc;
    while ((rc = mv_kscan_next(&it->scan, &r)) == 1) {
        it->count++;
        if (it->req.count_only || filtered_out(&it->req, &r))
            continue;
        it->matched++;
        if (limit <= 0 || it->yielded < limit) {
            it->yielded++;
            mv_rec_to_kv(&r, it->req.keys_only, kv);
            return 1;
        }
    }
    if (rc < 0)
        return rc;
    it->done = true;
    return 0;
}

void mv_range_it_summary(const struct mvcc_range_it *it, int64_t *count, bool *more, int64_t *rev) {
    assert(it->done);
    if (count != NULL)
        *count = it->count;
    if (more != NULL)
        *more = it->matched > it->yielded;
    if (rev != NULL)
        *rev = it->header_rev;
}

void mv_range_it_fini(struct mvcc_range_it *it) {
    mv_kscan_close(&it->scan);
    free(it->arr);
    it->arr = NULL;
}

int mv_range_materialize(const struct view *v, const struct mvcc_range_req *req,
                         struct mvcc_arena *a, struct mvcc_op_resp *resp) {
    struct mvcc_range_it it;
    int rc = mv_range_it_init(&it, v, req);
    if (rc != 0) {
        mv_range_it_fini(&it);
        return rc;
    }
    struct mvcc_range_resp *rr = &resp->u.range;
    size_t cap = 0;
    struct mvcc_kv kv;
    while ((rc = mv_range_it_next(&it, &kv)) == 1) {
        if ((rc = mv_arena_grow(a, &rr->kvs, &cap, rr->n_kvs, sizeof(*rr->kvs))) != 0)
            break;
        struct rec r = {.key = kv.key,
                        .key_len = kv.key_len,
                        .value = kv.value,
                        .value_len = kv.value_len,
                        .main = kv.mod_revision,
                        .create = kv.create_revision,
                        .version = kv.version,
                        .lease = kv.lease};
        if ((rc = mv_kv_from_rec(a, &r, false, &rr->kvs[rr->n_kvs])) != 0)
            break;
        rr->n_kvs++;
    }
    if (rc == 0) {
        resp->type = MVCC_OP_RANGE;
        mv_range_it_summary(&it, &rr->count, &rr->more, &resp->revision);
    }
    mv_range_it_fini(&it);
    return rc;
}

/* ---- public iterator over a read snapshot ---- */

int mvcc_range_open(mvcc_read_t *rd, const struct mvcc_range_req *req, mvcc_range_it_t **out) {
    *out = NULL;
    struct mvcc_range_it *it = malloc(sizeof(*it));
    if (it == NULL)
        return -ENOMEM;
    struct view v = {.db = rd->db, .txn = rd->txn, .rev = rd->rev, .compact_rev = rd->compact_rev};
    int rc = mv_range_it_init(it, &v, req);
    if (rc != 0) {
        mv_range_it_fini(it);
        free(it);
        return rc;
    }
    *out = it;
    return 0;
}

int mvcc_range_next(mvcc_range_it_t *it, struct mvcc_kv *kv) {
    return mv_range_it_next(it, kv);
}

void mvcc_range_summary(const mvcc_range_it_t *it, int64_t *count, bool *more, int64_t *revision) {
    mv_range_it_summary(it, count, more, revision);
}

void mvcc_range_close(mvcc_range_it_t *it) {
    if (it == NULL)
        return;
    mv_range_it_fini(it);
    free(it);
}

int mvcc_range(mvcc_read_t *rd, const struct mvcc_range_req *req, mvcc_result_t **out) {
    *out = NULL;
    mvcc_result_t *res = mv_result_new();
    if (res == NULL)
        return -ENOMEM;
    struct view v = {.db = rd->db, .txn = rd->txn, .rev = rd->rev, .compact_rev = rd->compact_rev};
    int rc = mv_range_materialize(&v, req, res->arena, &res->resp);
    if (rc != 0) {
        mvcc_result_free(res);
        return rc;
    }
    *out = res;
    return 0;
}
