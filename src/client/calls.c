/* client calls: etcd v3 unary requests built from quoin_op_t / quoin_cmp_t,
 * answers decoded into quoin_resp_t, and the public blocking and asynchronous
 * entry points (each a thin pair over one builder). */
#include <errno.h>
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"

#define P_KV "/etcdserverpb.KV/"
#define P_LEASE "/etcdserverpb.Lease/"

/* Everything a response owns: the unpacked message it points into and the
 * arrays made for it, freed together. */
struct resp_block {
    struct resp_block *next;
    alignas(max_align_t) unsigned char data[];
};

struct resp_priv {
    ProtobufCMessage *msg;
    struct resp_block *blocks;
};

static void *priv_alloc(struct resp_priv *pv, size_t n) {
    struct resp_block *b = calloc(1, sizeof *b + n);
    if (!b)
        return NULL;
    b->next = pv->blocks;
    pv->blocks = b;
    return b->data;
}

void quoin_resp_free(quoin_resp_t *r) {
    struct resp_priv *pv;
    if (!r)
        return;
    pv = r->priv_;
    if (pv) {
        while (pv->blocks) {
            struct resp_block *b = pv->blocks;
            pv->blocks = b->next;
            free(b);
        }
        if (pv->msg)
            protobuf_c_message_free_unpacked(pv->msg, NULL);
        free(pv);
    }
    free(r);
}

void cl_fill_header(quoin_header_t *h, const Etcdserverpb__ResponseHeader *p) {
    if (!p)
        return;
    h->cluster_id = p->cluster_id;
    h->member_id = p->member_id;
    h->revision = p->revision;
    h->raft_term = p->raft_term;
}

void cl_fill_kv(quoin_kv_t *out, const Mvccpb__KeyValue *kv) {
    if (!kv)
        return;
    out->key = (const char *)kv->key.data;
    out->key_len = kv->key.len;
    out->value = (const char *)kv->value.data;
    out->value_len = kv->value.len;
    out->create_revision = kv->create_revision;
    out->mod_revision = kv->mod_revision;
    out->version = kv->version;
    out->lease = kv->lease;
}

static int fill_kvs(struct resp_priv *pv, quoin_resp_t *r, Mvccpb__KeyValue **kvs, size_t n) {
    if (!n)
        return 0;
    r->kvs = priv_alloc(pv, n * sizeof *r->kvs);
    if (!r->kvs)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        cl_fill_kv(&r->kvs[i], kvs[i]);
    r->n_kvs = n;
    return 0;
}

static int fill_range(struct resp_priv *pv, quoin_resp_t *r, const Etcdserverpb__RangeResponse *m) {
    r->op = QUOIN_OP_RANGE;
    cl_fill_header(&r->header, m->header);
    r->more = m->more;
    r->count = m->count;
    return fill_kvs(pv, r, m->kvs, m->n_kvs);
}

static int fill_put(struct resp_priv *pv, quoin_resp_t *r, const Etcdserverpb__PutResponse *m) {
    r->op = QUOIN_OP_PUT;
    cl_fill_header(&r->header, m->header);
    return m->prev_kv ? fill_kvs(pv, r, (Mvccpb__KeyValue **)&m->prev_kv, 1) : 0;
}

static int fill_delete(struct resp_priv *pv, quoin_resp_t *r,
                       const Etcdserverpb__DeleteRangeResponse *m) {
    r->op = QUOIN_OP_DELETE;
    cl_fill_header(&r->header, m->header);
    r->deleted = m->deleted;
    return fill_kvs(pv, r, m->prev_kvs, m->n_prev_kvs);
}

static int fill_txn(struct resp_priv *pv, quoin_resp_t *r, const Etcdserverpb__TxnResponse *m) {
    int rc = 0;
    cl_fill_header(&r->header, m->header);
    r->succeeded = m->succeeded;
    if (!m->n_responses)
        return 0;
    r->ops = priv_alloc(pv, m->n_responses * sizeof *r->ops);
    if (!r->ops)
        return -ENOMEM;
    r->n_ops = m->n_responses;
    for (size_t i = 0; i < m->n_responses && rc == 0; i++) {
        const Etcdserverpb__ResponseOp *o = m->responses[i];
        switch (o->response_case) {
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE:
            rc = fill_range(pv, &r->ops[i], o->response_range);
            break;
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT:
            rc = fill_put(pv, &r->ops[i], o->response_put);
            break;
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE:
            rc = fill_delete(pv, &r->ops[i], o->response_delete_range);
            break;
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_TXN:
            rc = fill_txn(pv, &r->ops[i], o->response_txn);
            break;
        default:
            break;
        }
    }
    return rc;
}

static int fill_members(struct resp_priv *pv, quoin_resp_t *r,
                        const Etcdserverpb__MemberListResponse *m) {
    cl_fill_header(&r->header, m->header);
    if (!m->n_members)
        return 0;
    r->members = priv_alloc(pv, m->n_members * sizeof *r->members);
    if (!r->members)
        return -ENOMEM;
    r->n_members = m->n_members;
    for (size_t i = 0; i < m->n_members; i++) {
        const Etcdserverpb__Member *p = m->members[i];
        quoin_member_t *q = &r->members[i];
        q->id = p->id;
        q->name = p->name;
        q->peer_urls = (const char *const *)p->peerurls;
        q->n_peer_urls = p->n_peerurls;
        q->client_urls = (const char *const *)p->clienturls;
        q->n_client_urls = p->n_clienturls;
        q->is_learner = p->islearner;
    }
    return 0;
}

static int fill_lease_ttl(struct resp_priv *pv, quoin_resp_t *r,
                          const Etcdserverpb__LeaseTimeToLiveResponse *m) {
    const char **keys;
    size_t *lens;
    cl_fill_header(&r->header, m->header);
    r->lease_id = m->id;
    r->ttl = m->ttl;
    r->granted_ttl = m->grantedttl;
    if (!m->n_keys)
        return 0;
    keys = priv_alloc(pv, m->n_keys * sizeof *keys);
    lens = priv_alloc(pv, m->n_keys * sizeof *lens);
    if (!keys || !lens)
        return -ENOMEM;
    for (size_t i = 0; i < m->n_keys; i++) {
        keys[i] = (const char *)m->keys[i].data;
        lens[i] = m->keys[i].len;
    }
    r->lease_keys = keys;
    r->lease_key_lens = lens;
    r->n_lease_keys = m->n_keys;
    return 0;
}

static const ProtobufCMessageDescriptor *answer_type(enum cl_kind kind) {
    switch (kind) {
    case CL_RANGE:
        return &etcdserverpb__range_response__descriptor;
    case CL_PUT:
        return &etcdserverpb__put_response__descriptor;
    case CL_DELETE:
        return &etcdserverpb__delete_range_response__descriptor;
    case CL_TXN:
        return &etcdserverpb__txn_response__descriptor;
    case CL_COMPACT:
        return &etcdserverpb__compaction_response__descriptor;
    case CL_LEASE_GRANT:
        return &etcdserverpb__lease_grant_response__descriptor;
    case CL_LEASE_REVOKE:
        return &etcdserverpb__lease_revoke_response__descriptor;
    case CL_LEASE_TTL:
        return &etcdserverpb__lease_time_to_live_response__descriptor;
    case CL_LEASE_KEEPALIVE_ONCE:
        return &etcdserverpb__lease_keep_alive_response__descriptor;
    case CL_STATUS:
        return &etcdserverpb__status_response__descriptor;
    case CL_MEMBERS:
        return &etcdserverpb__member_list_response__descriptor;
    case CL_STREAM:
        break;
    }
    return NULL;
}

int cl_decode(enum cl_kind kind, const uint8_t *p, size_t n, quoin_resp_t **out) {
    quoin_resp_t *r = calloc(1, sizeof *r);
    struct resp_priv *pv = calloc(1, sizeof *pv);
    ProtobufCMessage *m;
    int rc = 0;
    if (!r || !pv)
        goto nomem;
    r->priv_ = pv;
    m = protobuf_c_message_unpack(answer_type(kind), NULL, n, p);
    if (!m) {
        rc = -EPROTO;
        goto err;
    }
    pv->msg = m;
    switch (kind) {
    case CL_RANGE:
        rc = fill_range(pv, r, (void *)m);
        break;
    case CL_PUT:
        rc = fill_put(pv, r, (void *)m);
        break;
    case CL_DELETE:
        rc = fill_delete(pv, r, (void *)m);
        break;
    case CL_TXN:
        rc = fill_txn(pv, r, (void *)m);
        break;
    case CL_COMPACT:
        cl_fill_header(&r->header, ((Etcdserverpb__CompactionResponse *)m)->header);
        break;
    case CL_LEASE_GRANT: {
        Etcdserverpb__LeaseGrantResponse *g = (void *)m;
        cl_fill_header(&r->header, g->header);
        r->lease_id = g->id;
        r->ttl = g->ttl;
        break;
    }
    case CL_LEASE_REVOKE:
        cl_fill_header(&r->header, ((Etcdserverpb__LeaseRevokeResponse *)m)->header);
        break;
    case CL_LEASE_TTL:
        rc = fill_lease_ttl(pv, r, (void *)m);
        break;
    case CL_LEASE_KEEPALIVE_ONCE: {
        Etcdserverpb__LeaseKeepAliveResponse *ka = (void *)m;
        cl_fill_header(&r->header, ka->header);
        r->lease_id = ka->id;
        r->ttl = ka->ttl;
        break;
    }
    case CL_STATUS: {
        Etcdserverpb__StatusResponse *s = (void *)m;
        cl_fill_header(&r->header, s->header);
        r->version = s->version;
        r->db_size = s->dbsize;
        r->leader = s->leader;
        r->raft_index = s->raftindex;
        r->raft_term = s->raftterm;
        break;
    }
    case CL_MEMBERS:
        rc = fill_members(pv, r, (void *)m);
        break;
    case CL_STREAM:
        break;
    }
    if (rc < 0)
        goto err;
    *out = r;
    return 0;
nomem:
    free(pv);
    free(r);
    return -ENOMEM;
err:
    quoin_resp_free(r);
    return rc;
}

/* ---- request builders ---- */

static ProtobufCBinaryData bin(const void *p, size_t n) {
    ProtobufCBinaryData b = {n, (uint8_t *)p};
    return b;
}

static int check_bytes(const void *p, size_t n) {
    return (n && !p) ? -EINVAL : 0;
}

/* The three KV requests an op can be; which is used depends on op->type. */
struct op_msgs {
    Etcdserverpb__RangeRequest range;
    Etcdserverpb__PutRequest put;
    Etcdserverpb__DeleteRangeRequest del;
};

static ProtobufCMessage *build_op(const quoin_op_t *op, struct op_msgs *m) {
    if (check_bytes(op->key, op->key_len) || check_bytes(op->range_end, op->range_end_len) ||
        check_bytes(op->value, op->value_len))
        return NULL;
    switch (op->type) {
    case QUOIN_OP_RANGE:
        etcdserverpb__range_request__init(&m->range);
        m->range.key = bin(op->key, op->key_len);
        m->range.range_end = bin(op->range_end, op->range_end_len);
        m->range.limit = op->limit;
        m->range.revision = op->revision;
        m->range.serializable = op->serializable != 0;
        m->range.keys_only = op->keys_only != 0;
        m->range.count_only = op->count_only != 0;
        m->range.sort_order = (Etcdserverpb__RangeRequest__SortOrder)op->sort_order;
        m->range.sort_target = (Etcdserverpb__RangeRequest__SortTarget)op->sort_target;
        return &m->range.base;
    case QUOIN_OP_PUT:
        etcdserverpb__put_request__init(&m->put);
        m->put.key = bin(op->key, op->key_len);
        m->put.value = bin(op->value, op->value_len);
        m->put.lease = op->lease;
        m->put.prev_kv = op->prev_kv != 0;
        return &m->put.base;
    case QUOIN_OP_DELETE:
        etcdserverpb__delete_range_request__init(&m->del);
        m->del.key = bin(op->key, op->key_len);
        m->del.range_end = bin(op->range_end, op->range_end_len);
        m->del.prev_kv = op->prev_kv != 0;
        return &m->del.base;
    }
    return NULL;
}

/* A call carrying one message, or NULL with *rc set. */
static struct cl_call *call_with(quoin_client_t *c, enum cl_kind kind, const char *path,
                                 int deadline_ms, const ProtobufCMessage *m, int *rc) {
    struct cl_call *k;
    if (!c || !m) {
        *rc = -EINVAL;
        return NULL;
    }
    k = cl_call_new(c, kind, path, deadline_ms);
    if (!k || cl_call_set_msg(k, m) < 0) {
        cl_call_free(k);
        *rc = -ENOMEM;
        return NULL;
    }
    return k;
}

static struct cl_call *make_op(quoin_client_t *c, const quoin_op_t *op, int deadline_ms, int *rc) {
    static const char *const paths[] = {P_KV "Range", P_KV "Put", P_KV "DeleteRange"};
    static const enum cl_kind kinds[] = {CL_RANGE, CL_PUT, CL_DELETE};
    struct op_msgs m;
    ProtobufCMessage *pm;
    if (!op || (unsigned)op->type > QUOIN_OP_DELETE) {
        *rc = -EINVAL;
        return NULL;
    }
    pm = build_op(op, &m);
    return call_with(c, kinds[op->type], paths[op->type], deadline_ms, pm, rc);
}

static int fill_cmp(Etcdserverpb__Compare *p, const quoin_cmp_t *q) {
    etcdserverpb__compare__init(p);
    if (check_bytes(q->key, q->key_len) || check_bytes(q->range_end, q->range_end_len) ||
        check_bytes(q->value, q->value_len) || (unsigned)q->target > QUOIN_CMP_LEASE ||
        (unsigned)q->result > QUOIN_CMP_NOT_EQUAL)
        return -EINVAL;
    p->key = bin(q->key, q->key_len);
    p->range_end = bin(q->range_end, q->range_end_len);
    p->target = (Etcdserverpb__Compare__CompareTarget)q->target;
    p->result = (Etcdserverpb__Compare__CompareResult)q->result;
    switch (q->target) {
    case QUOIN_CMP_VERSION:
        p->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION;
        p->version = q->number;
        break;
    case QUOIN_CMP_CREATE:
        p->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
        p->create_revision = q->number;
        break;
    case QUOIN_CMP_MOD:
        p->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
        p->mod_revision = q->number;
        break;
    case QUOIN_CMP_VALUE:
        p->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE;
        p->value = bin(q->value, q->value_len);
        break;
    case QUOIN_CMP_LEASE:
        p->target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE;
        p->lease = q->number;
        break;
    }
    return 0;
}

/* Fills a branch of request ops; the storage comes from the caller. */
static int fill_branch(Etcdserverpb__RequestOp *ro, Etcdserverpb__RequestOp **ptrs,
                       struct op_msgs *msgs, const quoin_op_t *ops, size_t n) {
    for (size_t i = 0; i < n; i++) {
        ProtobufCMessage *pm = build_op(&ops[i], &msgs[i]);
        etcdserverpb__request_op__init(&ro[i]);
        ptrs[i] = &ro[i];
        if (!pm)
            return -EINVAL;
        switch (ops[i].type) {
        case QUOIN_OP_RANGE:
            ro[i].request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
            ro[i].request_range = &msgs[i].range;
            break;
        case QUOIN_OP_PUT:
            ro[i].request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
            ro[i].request_put = &msgs[i].put;
            break;
        case QUOIN_OP_DELETE:
            ro[i].request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
            ro[i].request_delete_range = &msgs[i].del;
            break;
        }
    }
    return 0;
}

static struct cl_call *make_txn(quoin_client_t *c, const quoin_cmp_t *cmps, size_t n_cmps,
                                const quoin_op_t *then_ops, size_t n_then,
                                const quoin_op_t *else_ops, size_t n_else, int deadline_ms,
                                int *rc) {
    Etcdserverpb__TxnRequest t = ETCDSERVERPB__TXN_REQUEST__INIT;
    size_t nops = n_then + n_else;
    Etcdserverpb__Compare *cv = calloc(n_cmps + 1, sizeof *cv);
    Etcdserverpb__Compare **cp = calloc(n_cmps + 1, sizeof *cp);
    Etcdserverpb__RequestOp *ro = calloc(nops + 1, sizeof *ro);
    Etcdserverpb__RequestOp **rp = calloc(nops + 1, sizeof *rp);
    struct op_msgs *msgs = calloc(nops + 1, sizeof *msgs);
    struct cl_call *k = NULL;
    *rc = -ENOMEM;
    if (!cv || !cp || !ro || !rp || !msgs)
        goto out;
    *rc = -EINVAL;
    if ((n_cmps && !cmps) || (n_then && !then_ops) || (n_else && !else_ops))
        goto out;
    for (size_t i = 0; i < n_cmps; i++) {
        if (fill_cmp(&cv[i], &cmps[i]) < 0)
            goto out;
        cp[i] = &cv[i];
    }
    if (fill_branch(ro, rp, msgs, then_ops, n_then) < 0 ||
        fill_branch(ro + n_then, rp + n_then, msgs + n_then, else_ops, n_else) < 0)
        goto out;
    t.n_compare = n_cmps;
    t.compare = cp;
    t.n_success = n_then;
    t.success = rp;
    t.n_failure = n_else;
    t.failure = rp + n_then;
    k = call_with(c, CL_TXN, P_KV "Txn", deadline_ms, &t.base, rc);
out:
    free(cv);
    free(cp);
    free(ro);
    free(rp);
    free(msgs);
    return k;
}

/* ---- public pairs ---- */

static int go_async(struct cl_call *k, int rc, quoin_cb cb, void *arg) {
    if (!k)
        return rc;
    k->cb = cb;
    k->arg = arg;
    return cl_submit(k);
}

static int go_sync(quoin_client_t *c, struct cl_call *k, int rc, quoin_resp_t **resp,
                   quoin_error_t *err) {
    if (resp)
        *resp = NULL;
    if (!k) {
        cl_error(err, QUOIN_INVALID_ARGUMENT, "%s",
                 rc == -ENOMEM ? "out of memory" : "invalid argument");
        return rc;
    }
    return cl_run_sync(c, k, resp, err);
}

int quoin_do_async(quoin_client_t *c, const quoin_op_t *op, int deadline_ms, quoin_cb cb,
                   void *arg) {
    int rc;
    struct cl_call *k = make_op(c, op, deadline_ms, &rc);
    return go_async(k, rc, cb, arg);
}

int quoin_do(quoin_client_t *c, const quoin_op_t *op, int deadline_ms, quoin_resp_t **resp,
             quoin_error_t *err) {
    int rc;
    struct cl_call *k = make_op(c, op, deadline_ms, &rc);
    return go_sync(c, k, rc, resp, err);
}

int quoin_put(quoin_client_t *c, const char *key, const char *value, int64_t lease, int deadline_ms,
              quoin_error_t *err) {
    quoin_op_t op = {.type = QUOIN_OP_PUT};
    if (!key || !value)
        return -EINVAL;
    op.key = key;
    op.key_len = strlen(key);
    op.value = value;
    op.value_len = strlen(value);
    op.lease = lease;
    return quoin_do(c, &op, deadline_ms, NULL, err);
}

int quoin_get(quoin_client_t *c, const char *key, int deadline_ms, quoin_resp_t **resp,
              quoin_error_t *err) {
    quoin_op_t op = {.type = QUOIN_OP_RANGE};
    if (!key)
        return -EINVAL;
    op.key = key;
    op.key_len = strlen(key);
    return quoin_do(c, &op, deadline_ms, resp, err);
}

int quoin_delete(quoin_client_t *c, const char *key, int64_t *deleted, int deadline_ms,
                 quoin_error_t *err) {
    quoin_op_t op = {.type = QUOIN_OP_DELETE};
    quoin_resp_t *r = NULL;
    int rc;
    if (!key)
        return -EINVAL;
    op.key = key;
    op.key_len = strlen(key);
    rc = quoin_do(c, &op, deadline_ms, &r, err);
    if (rc == 0 && deleted)
        *deleted = r->deleted;
    quoin_resp_free(r);
    return rc;
}

int quoin_txn_async(quoin_client_t *c, const quoin_cmp_t *cmps, size_t n_cmps,
                    const quoin_op_t *then_ops, size_t n_then, const quoin_op_t *else_ops,
                    size_t n_else, int deadline_ms, quoin_cb cb, void *arg) {
    int rc;
    struct cl_call *k =
        make_txn(c, cmps, n_cmps, then_ops, n_then, else_ops, n_else, deadline_ms, &rc);
    return go_async(k, rc, cb, arg);
}

int quoin_txn(quoin_client_t *c, const quoin_cmp_t *cmps, size_t n_cmps, const quoin_op_t *then_ops,
              size_t n_then, const quoin_op_t *else_ops, size_t n_else, int deadline_ms,
              quoin_resp_t **resp, quoin_error_t *err) {
    int rc;
    struct cl_call *k =
        make_txn(c, cmps, n_cmps, then_ops, n_then, else_ops, n_else, deadline_ms, &rc);
    return go_sync(c, k, rc, resp, err);
}

static struct cl_call *make_compact(quoin_client_t *c, int64_t revision, int physical,
                                    int deadline_ms, int *rc) {
    Etcdserverpb__CompactionRequest m = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
    m.revision = revision;
    m.physical = physical != 0;
    return call_with(c, CL_COMPACT, P_KV "Compact", deadline_ms, &m.base, rc);
}

int quoin_compact_async(quoin_client_t *c, int64_t revision, int physical, int deadline_ms,
                        quoin_cb cb, void *arg) {
    int rc = 0;
    struct cl_call *k = make_compact(c, revision, physical, deadline_ms, &rc);
    return go_async(k, rc, cb, arg);
}

int quoin_compact(quoin_client_t *c, int64_t revision, int physical, int deadline_ms,
                  quoin_error_t *err) {
    int rc = 0;
    struct cl_call *k = make_compact(c, revision, physical, deadline_ms, &rc);
    return go_sync(c, k, rc, NULL, err);
}

static struct cl_call *make_grant(quoin_client_t *c, int64_t ttl, int64_t id, int deadline_ms,
                                  int *rc) {
    Etcdserverpb__LeaseGrantRequest m = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
    m.ttl = ttl;
    m.id = id;
    return call_with(c, CL_LEASE_GRANT, P_LEASE "LeaseGrant", deadline_ms, &m.base, rc);
}

int quoin_lease_grant_async(quoin_client_t *c, int64_t ttl, int64_t id, int deadline_ms,
                            quoin_cb cb, void *arg) {
    int rc = 0;
    struct cl_call *k = make_grant(c, ttl, id, deadline_ms, &rc);
    return go_async(k, rc, cb, arg);
}

int quoin_lease_grant(quoin_client_t *c, int64_t ttl, int64_t id, int deadline_ms,
                      quoin_resp_t **resp, quoin_error_t *err) {
    int rc = 0;
    struct cl_call *k = make_grant(c, ttl, id, deadline_ms, &rc);
    return go_sync(c, k, rc, resp, err);
}

static struct cl_call *make_revoke(quoin_client_t *c, int64_t id, int deadline_ms, int *rc) {
    Etcdserverpb__LeaseRevokeRequest m = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
    m.id = id;
    return call_with(c, CL_LEASE_REVOKE, P_LEASE "LeaseRevoke", deadline_ms, &m.base, rc);
}

int quoin_lease_revoke_async(quoin_client_t *c, int64_t id, int deadline_ms, quoin_cb cb,
                             void *arg) {
    int rc = 0;
    struct cl_call *k = make_revoke(c, id, deadline_ms, &rc);
    return go_async(k, rc, cb, arg);
}

int quoin_lease_revoke(quoin_client_t *c, int64_t id, int deadline_ms, quoin_error_t *err) {
    int rc = 0;
    struct cl_call *k = make_revoke(c, id, deadline_ms, &rc);
    return go_sync(c, k, rc, NULL, err);
}

static struct cl_call *make_ttl(quoin_client_t *c, int64_t id, int keys, int deadline_ms, int *rc) {
    Etcdserverpb__LeaseTimeToLiveRequest m = ETCDSERVERPB__LEASE_TIME_TO_LIVE_REQUEST__INIT;
    m.id = id;
    m.keys = keys != 0;
    return call_with(c, CL_LEASE_TTL, P_LEASE "LeaseTimeToLive", deadline_ms, &m.base, rc);
}

int quoin_lease_ttl_async(quoin_client_t *c, int64_t id, int keys, int deadline_ms, quoin_cb cb,
                          void *arg) {
    int rc = 0;
    struct cl_call *k = make_ttl(c, id, keys, deadline_ms, &rc);
    return go_async(k, rc, cb, arg);
}

int quoin_lease_ttl(quoin_client_t *c, int64_t id, int keys, int deadline_ms, quoin_resp_t **resp,
                    quoin_error_t *err) {
    int rc = 0;
    struct cl_call *k = make_ttl(c, id, keys, deadline_ms, &rc);
    return go_sync(c, k, rc, resp, err);
}

/* One refresh on a stream of its own: the request, then end of stream. */
static struct cl_call *make_ka_once(quoin_client_t *c, int64_t id, int deadline_ms, int *rc) {
    Etcdserverpb__LeaseKeepAliveRequest m = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    m.id = id;
    return call_with(c, CL_LEASE_KEEPALIVE_ONCE, P_LEASE "LeaseKeepAlive", deadline_ms, &m.base,
                     rc);
}

int quoin_lease_keepalive_once_async(quoin_client_t *c, int64_t id, int deadline_ms, quoin_cb cb,
                                     void *arg) {
    int rc = 0;
    struct cl_call *k = make_ka_once(c, id, deadline_ms, &rc);
    return go_async(k, rc, cb, arg);
}

int quoin_lease_keepalive_once(quoin_client_t *c, int64_t id, int deadline_ms, quoin_resp_t **resp,
                               quoin_error_t *err) {
    int rc = 0;
    struct cl_call *k = make_ka_once(c, id, deadline_ms, &rc);
    return go_sync(c, k, rc, resp, err);
}

static struct cl_call *make_status(quoin_client_t *c, int deadline_ms, int *rc) {
    Etcdserverpb__StatusRequest m = ETCDSERVERPB__STATUS_REQUEST__INIT;
    return call_with(c, CL_STATUS, "/etcdserverpb.Maintenance/Status", deadline_ms, &m.base, rc);
}

int quoin_status_async(quoin_client_t *c, int deadline_ms, quoin_cb cb, void *arg) {
    int rc = 0;
    struct cl_call *k = make_status(c, deadline_ms, &rc);
    return go_async(k, rc, cb, arg);
}

int quoin_status(quoin_client_t *c, int deadline_ms, quoin_resp_t **resp, quoin_error_t *err) {
    int rc = 0;
    struct cl_call *k = make_status(c, deadline_ms, &rc);
    return go_sync(c, k, rc, resp, err);
}

static struct cl_call *make_members(quoin_client_t *c, int deadline_ms, int *rc) {
    Etcdserverpb__MemberListRequest m = ETCDSERVERPB__MEMBER_LIST_REQUEST__INIT;
    return call_with(c, CL_MEMBERS, "/etcdserverpb.Cluster/MemberList", deadline_ms, &m.base, rc);
}

int quoin_member_list_async(quoin_client_t *c, int deadline_ms, quoin_cb cb, void *arg) {
    int rc = 0;
    struct cl_call *k = make_members(c, deadline_ms, &rc);
    return go_async(k, rc, cb, arg);
}

int quoin_member_list(quoin_client_t *c, int deadline_ms, quoin_resp_t **resp, quoin_error_t *err) {
    int rc = 0;
    struct cl_call *k = make_members(c, deadline_ms, &rc);
    return go_sync(c, k, rc, resp, err);
}
