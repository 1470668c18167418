/* The replicated half of the lease layer: the "lease" database, changed by
 * grant, revoke and checkpoint inside an mvcc batch on the apply thread, and
 * read (existence, listing, attached keys) through LMDB transactions. What a
 * committed batch changed is then replayed on the leader state (primary.c). */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lease/lease_int.h"

const char *lease_strerror(int code) {
    switch (code) {
    case LEASE_ENOTFOUND:
    case LEASE_EEXPIRED:
        return "etcdserver: requested lease not found";
    case LEASE_EEXISTS:
        return "etcdserver: lease already exists";
    case LEASE_ETTLTOOLARGE:
        return "etcdserver: too large lease TTL";
    case LEASE_ENOTPRIMARY:
        return "not a primary lessor";
    default:
        return mvcc_strerror(code);
    }
}

/* An LMDB result in the layer's convention: a missing record is a missing
 * lease; other failures become negative errno codes, as mvcc reports them. */
static int lmdb_rc(int rc) {
    switch (rc) {
    case 0:
        return 0;
    case MDB_NOTFOUND:
        return LEASE_ENOTFOUND;
    case MDB_MAP_FULL:
        return -ENOSPC;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
        return MVCC_ECORRUPT;
    default:
        return rc > 0 ? -rc : -EIO;
    }
}

int lease_open(mvcc_t *db, const struct lease_options *opt, log_t *lg, lease_t **out,
               struct util_err *err) {
    *out = NULL;
    if (opt->min_ttl < 1 || opt->min_ttl > LEASE_MAX_TTL)
        return util_errorf(err, -EINVAL, "lease: minimum TTL %lld s is out of range [1, %lld]",
                           (long long)opt->min_ttl, LEASE_MAX_TTL);
    lease_t *ls = calloc(1, sizeof(*ls));
    if (ls == NULL)
        return util_errorf(err, -ENOMEM, "lease: out of memory");
    ls->db = db;
    ls->lg = lg;
    ls->opt = *opt;
    if (ls->opt.checkpoint_interval_ns == 0)
        ls->opt.checkpoint_interval_ns = DEFAULT_CHECKPOINT_INTERVAL;
    if (ls->opt.retry_ns == 0)
        ls->opt.retry_ns = DEFAULT_RETRY;
    ls->batch.ls = ls;
    for (int i = 0; i < H_COUNT; i++)
        ls->heaps[i].which = i;
    int rc = mvcc_dbi_open(db, "lease", &ls->dbi);
    if (rc != 0) {
        free(ls);
        return util_errorf(err, rc, "lease: cannot open the lease database: %s", mvcc_strerror(rc));
    }
    pthread_mutex_init(&ls->mu, NULL);
    *out = ls;
    return 0;
}

void lease_close(lease_t *ls) {
    if (ls == NULL)
        return;
    assert(!ls->batch.open);
    lprimary_clear(ls);
    util_buf_free(&ls->batch.pend);
    pthread_mutex_destroy(&ls->mu);
    free(ls);
}

/* ---- batches ---- */

lease_batch_t *lease_batch_begin(lease_t *ls, mvcc_batch_t *b) {
    struct lease_batch *lb = &ls->batch;
    assert(!lb->open);
    lb->b = b;
    lb->pend.len = 0;
    lb->open = true;
    return lb;
}

static int pend_add(struct lease_batch *lb, struct pend p) {
    if (lfault(lb->ls))
        return -ENOMEM;
    return util_buf_append(&lb->pend, &p, sizeof(p));
}

/* Reads lease id's record as txn sees it: 0, LEASE_ENOTFOUND or an error. */
static int rec_get(const lease_t *ls, MDB_txn *txn, int64_t id, struct lrec *r) {
    uint8_t k[8];
    lrec_key(k, id);
    MDB_val key = {.mv_size = 8, .mv_data = k}, val;
    int rc = lmdb_rc(mdb_get(txn, ls->dbi, &key, &val));
    return rc != 0 ? rc : lrec_decode(val.mv_data, val.mv_size, r);
}

static int rec_put(const lease_t *ls, MDB_txn *txn, int64_t id, const struct lrec *r) {
    uint8_t k[8], v[REC_LEN];
    lrec_key(k, id);
    lrec_encode(v, r);
    MDB_val key = {.mv_size = 8, .mv_data = k}, val = {.mv_size = REC_LEN, .mv_data = v};
    return lmdb_rc(mdb_put(txn, ls->dbi, &key, &val, 0));
}

int lease_exists(lease_batch_t *lb, int64_t id) {
    assert(lb->open);
    if (id == 0)
        return LEASE_ENOTFOUND;
    struct lrec r;
    return rec_get(lb->ls, mvcc_batch_txn(lb->b), id, &r);
}

int lease_grant(lease_batch_t *lb, int64_t id, int64_t ttl, uint64_t wall_ns,
                int64_t *granted_ttl) {
    assert(lb->open);
    lease_t *ls = lb->ls;
    if (id == 0)
        return LEASE_ENOTFOUND;
    if (ttl > LEASE_MAX_TTL)
        return LEASE_ETTLTOOLARGE;
    MDB_txn *txn = mvcc_batch_txn(lb->b);
    struct lrec r;
    int rc = rec_get(ls, txn, id, &r);
    if (rc == 0)
        return LEASE_EEXISTS;
    if (rc != LEASE_ENOTFOUND)
        return rc;
    r.ttl = ttl < ls->opt.min_ttl ? ls->opt.min_ttl : ttl;
    r.remaining = 0;
    r.deadline = wall_ns != 0 ? lsat_add(wall_ns, lttl_ns(r.ttl)) : 0;
    if ((rc = rec_put(ls, txn, id, &r)) != 0)
        return rc;
    struct pend p = {.op = P_GRANT, .id = id, .ttl = r.ttl, .deadline = r.deadline};
    if ((rc = pend_add(lb, p)) != 0)
        return rc;
    if (granted_ttl != NULL)
        *granted_ttl = r.ttl;
    return 0;
}

/* Keys copied out of the lease index: their bytes, then their lengths. */
struct keyset {
    lease_t *ls;
    struct util_buf bytes;
    struct util_buf lens; /* size_t[] */
};

static int keyset_add(void *arg, const uint8_t *key, size_t len) {
    struct keyset *ks = arg;
    if (lfault(ks->ls) || util_buf_append(&ks->bytes, key, len) != 0 ||
        util_buf_append(&ks->lens, &len, sizeof(len)) != 0)
        return -ENOMEM;
    return 0;
}

static size_t keyset_count(const struct keyset *ks) {
    return ks->lens.len / sizeof(size_t);
}

static size_t keyset_len(const struct keyset *ks, size_t i) {
    size_t len;
    memcpy(&len, ks->lens.data + i * sizeof(len), sizeof(len));
    return len;
}

static void keyset_free(struct keyset *ks) {
    util_buf_free(&ks->bytes);
    util_buf_free(&ks->lens);
}

int lease_revoke(lease_batch_t *lb, int64_t id, mvcc_result_t **out) {
    assert(lb->open);
    *out = NULL;
    lease_t *ls = lb->ls;
    MDB_txn *txn = mvcc_batch_txn(lb->b);
    struct mvcc_op *dels = NULL;
    struct keyset ks = {.ls = ls};
    struct lrec r;
    int rc = id == 0 ? LEASE_ENOTFOUND : rec_get(ls, txn, id, &r);
    if (rc != 0)
        return rc;
    /* Copied first: the deletes rewrite the index the walk reads. */
    if ((rc = mvcc_lease_keys(ls->db, txn, id, keyset_add, &ks)) != 0)
        goto err;
    size_t n = keyset_count(&ks);
    if (n > 0 && (lfault(ls) || (dels = calloc(n, sizeof(*dels))) == NULL)) {
        rc = -ENOMEM;
        goto err;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        dels[i].type = MVCC_OP_DELETE;
        dels[i].u.del.key = (const uint8_t *)ks.bytes.data + off;
        dels[i].u.del.key_len = keyset_len(&ks, i);
        off += dels[i].u.del.key_len;
    }
    /* One txn of single-key deletes: one revision for the whole revoke, as
     * etcd deletes a lease's keys in one write transaction. */
    struct mvcc_txn_req t = {.success = dels, .n_success = n};
    struct mvcc_op op = {.type = MVCC_OP_TXN, .u.txn = &t};
    if ((rc = mvcc_apply(lb->b, &op, out)) != 0)
        goto err;
    uint8_t k[8];
    lrec_key(k, id);
    MDB_val key = {.mv_size = 8, .mv_data = k};
    if ((rc = lmdb_rc(mdb_del(txn, ls->dbi, &key, NULL))) != 0)
        goto err;
    struct pend p = {.op = P_REVOKE, .id = id};
    if ((rc = pend_add(lb, p)) != 0)
        goto err;
    free(dels);
    keyset_free(&ks);
    return 0;
err:
    /* A failure past the lookup breaks the batch: never report not-found. */
    if (rc == LEASE_ENOTFOUND)
        rc = MVCC_ECORRUPT;
    mvcc_result_free(*out);
    *out = NULL;
    free(dels);
    keyset_free(&ks);
    return rc;
}

int lease_checkpoint(lease_batch_t *lb, const struct lease_checkpoint *cps, size_t n) {
    assert(lb->open);
    lease_t *ls = lb->ls;
    MDB_txn *txn = mvcc_batch_txn(lb->b);
    for (size_t i = 0; i < n; i++) {
        struct lrec r;
        int rc = rec_get(ls, txn, cps[i].id, &r);
        if (rc == LEASE_ENOTFOUND)
            continue;
        if (rc != 0)
            return rc;
        r.remaining = cps[i].remaining_ttl > 0 ? cps[i].remaining_ttl : 0;
        r.deadline = cps[i].deadline_wall_ns;
        if ((rc = rec_put(ls, txn, cps[i].id, &r)) != 0)
            return rc;
        struct pend p = {.op = P_CHECKPOINT, .id = cps[i].id, .deadline = r.deadline};
        if ((rc = pend_add(lb, p)) != 0)
            return rc;
    }
    return 0;
}

void lease_batch_end(lease_batch_t *lb, bool committed, uint64_t now_mono) {
    assert(lb->open);
    lease_t *ls = lb->ls;
    size_t n = lb->pend.len / sizeof(struct pend);
    if (committed && n > 0) {
        const struct pend *v = (const struct pend *)(const void *)lb->pend.data;
        pthread_mutex_lock(&ls->mu);
        for (size_t i = 0; i < n && ls->primary; i++)
            lprimary_apply(ls, &v[i], now_mono);
        pthread_mutex_unlock(&ls->mu);
    }
    lb->pend.len = 0;
    lb->b = NULL;
    lb->open = false;
}

/* ---- reads ---- */

int lrec_walk(lease_t *ls, MDB_txn *txn, lrec_fn fn, void *arg) {
    MDB_cursor *cur;
    int rc = lmdb_rc(mdb_cursor_open(txn, ls->dbi, &cur));
    if (rc != 0)
        return rc;
    MDB_val k, v;
    int g;
    for (g = mdb_cursor_get(cur, &k, &v, MDB_FIRST); g == 0 && rc == 0;
         g = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        struct lrec r;
        if (k.mv_size != 8 || lrec_decode(v.mv_data, v.mv_size, &r) != 0)
            rc = MVCC_ECORRUPT;
        else
            rc = fn(arg, lrec_id(k.mv_data), &r);
    }
    mdb_cursor_close(cur);
    if (rc != 0)
        return rc;
    return g == 0 || g == MDB_NOTFOUND ? 0 : lmdb_rc(g);
}

struct idlist {
    lease_t *ls;
    struct util_buf ids; /* int64_t[] */
};

static int id_add(void *arg, int64_t id, const struct lrec *r) {
    (void)r;
    struct idlist *l = arg;
    if (lfault(l->ls) || util_buf_append(&l->ids, &id, sizeof(id)) != 0)
        return -ENOMEM;
    return 0;
}

int lease_list(lease_t *ls, int64_t **ids, size_t *n) {
    *ids = NULL;
    *n = 0;
    mvcc_read_t *rd;
    int rc = mvcc_read_begin(ls->db, &rd);
    if (rc != 0)
        return rc;
    struct idlist l = {.ls = ls};
    rc = lrec_walk(ls, mvcc_read_txn(rd), id_add, &l);
    mvcc_read_end(rd);
    if (rc != 0) {
        util_buf_free(&l.ids);
        return rc;
    }
    *ids = (int64_t *)(void *)l.ids.data;
    *n = l.ids.len / sizeof(int64_t);
    return 0;
}

int lkeys_read(lease_t *ls, int64_t id, struct lease_ttl *out) {
    mvcc_read_t *rd;
    int rc = mvcc_read_begin(ls->db, &rd);
    if (rc != 0)
        return rc;
    struct keyset ks = {.ls = ls};
    rc = mvcc_lease_keys(ls->db, mvcc_read_txn(rd), id, keyset_add, &ks);
    mvcc_read_end(rd);
    size_t n = keyset_count(&ks);
    if (rc == 0 && n > 0 && (lfault(ls) || (out->keys = calloc(n, sizeof(*out->keys))) == NULL))
        rc = -ENOMEM;
    if (rc != 0) {
        keyset_free(&ks);
        return rc;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        out->keys[i].key = (const uint8_t *)ks.bytes.data + off;
        out->keys[i].len = keyset_len(&ks, i);
        off += out->keys[i].len;
    }
    out->n_keys = n;
    out->data = (uint8_t *)ks.bytes.data;
    util_buf_free(&ks.lens);
    return 0;
}

#ifdef QUOIN_TESTING
bool lfault(lease_t *ls) {
    atomic_fetch_add(&ls->fault_seen, 1);
    return atomic_load(&ls->fault_left) > 0 && atomic_fetch_sub(&ls->fault_left, 1) == 1;
}

long lease_test_fail_alloc(lease_t *ls, long n) {
    atomic_store(&ls->fault_left, n > 0 ? n : 0);
    return atomic_exchange(&ls->fault_seen, 0);
}
#endif
