/* v3_kv: etcd's KV service — Range, Put, DeleteRange, Txn, Compact — and the
 * apply side of the writes it proposes. Requests are checked as etcd checks
 * them before they are proposed (empty key, txn size, duplicate keys, request
 * size), so an entry in the log is always well formed; what can only be known
 * at apply time (a missing key for ignore_value, a compacted revision) is
 * answered by the apply thread, the same way on every member. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/proto/rpc.pb-c.h"
#include "server/v3.h"

/* ---- errors --------------------------------------------------------------- */

void v3_fail(api_call_t *call, int code) {
    enum api_grpc_code g = API_GRPC_UNKNOWN;
    const char *msg = NULL;
    switch (code) {
    case V3_EEMPTYKEY:
        g = API_GRPC_INVALID_ARGUMENT, msg = "etcdserver: key is not provided";
        break;
    case V3_EVALUEPROVIDED:
        g = API_GRPC_INVALID_ARGUMENT, msg = "etcdserver: value is provided";
        break;
    case V3_ELEASEPROVIDED:
        g = API_GRPC_INVALID_ARGUMENT, msg = "etcdserver: lease is provided";
        break;
    case V3_ETOOMANYOPS:
        g = API_GRPC_INVALID_ARGUMENT, msg = "etcdserver: too many operations in txn request";
        break;
    case V3_ETOOLARGE:
        g = API_GRPC_INVALID_ARGUMENT, msg = "etcdserver: request is too large";
        break;
    case V3_ELEASENOTFOUND:
    case LEASE_ENOTFOUND:
    case LEASE_EEXPIRED:
        g = API_GRPC_NOT_FOUND, msg = "etcdserver: requested lease not found";
        break;
    case LEASE_EEXISTS:
        g = API_GRPC_FAILED_PRECONDITION, msg = "etcdserver: lease already exists";
        break;
    case LEASE_ETTLTOOLARGE:
        g = API_GRPC_OUT_OF_RANGE, msg = "etcdserver: too large lease TTL";
        break;
    case V3_ESORT:
        g = API_GRPC_INVALID_ARGUMENT, msg = "etcdserver: invalid sort option";
        break;
    case MVCC_EDUPKEY:
        g = API_GRPC_INVALID_ARGUMENT, msg = "etcdserver: duplicate key given in txn request";
        break;
    case MVCC_EKEYNOTFOUND:
        g = API_GRPC_INVALID_ARGUMENT, msg = "etcdserver: key not found";
        break;
    case MVCC_ECOMPACTED:
    case MVCC_EFUTURE:
        g = API_GRPC_OUT_OF_RANGE, msg = mvcc_strerror(code);
        break;
    case MVCC_ENOSPACE:
        g = API_GRPC_RESOURCE_EXHAUSTED, msg = "etcdserver: mvcc: database space exceeded";
        break;
    case MVCC_EKEYTOOLONG:
        g = API_GRPC_INVALID_ARGUMENT, msg = mvcc_strerror(code);
        break;
    case -EAGAIN:
        g = API_GRPC_RESOURCE_EXHAUSTED, msg = "etcdserver: too many requests";
        break;
    case RAFT_ENOLEADER:
    case RAFT_EDROPPED:
        g = API_GRPC_UNAVAILABLE, msg = "etcdserver: no leader";
        break;
    case -ESHUTDOWN:
        g = API_GRPC_UNAVAILABLE, msg = "etcdserver: server stopped";
        break;
    case V3_ETIMEOUT:
        g = API_GRPC_UNAVAILABLE, msg = "etcdserver: request timed out";
        break;
    case V3_ENOTLEADER:
        g = API_GRPC_FAILED_PRECONDITION, msg = "etcdserver: not leader";
        break;
    case V3_EBADTRANSFEREE:
        g = API_GRPC_FAILED_PRECONDITION, msg = "etcdserver: bad leader transferee";
        break;
    case V3_ETRANSFERTIMEOUT:
        g = API_GRPC_UNKNOWN, msg = "etcdserver: request timed out, leader transfer took too long";
        break;
    case -ECANCELED:
        g = API_GRPC_CANCELLED, msg = "context canceled";
        break;
    case MEMBERS_EEXIST:
        g = API_GRPC_FAILED_PRECONDITION, msg = "etcdserver: member ID already exist";
        break;
    case MEMBERS_EPEEREXIST:
        g = API_GRPC_FAILED_PRECONDITION, msg = "etcdserver: Peer URLs already exists";
        break;
    case MEMBERS_ENOTFOUND:
        g = API_GRPC_NOT_FOUND, msg = "etcdserver: member not found";
        break;
    case MEMBERS_EBADURLS:
        g = API_GRPC_INVALID_ARGUMENT, msg = "etcdserver: given member URLs are invalid";
        break;
    case MEMBERS_ENOTSTARTED:
        g = API_GRPC_FAILED_PRECONDITION,
        msg = "etcdserver: re-configuration failed due to not enough started members";
        break;
    case MEMBERS_ENOTLEARNER:
        g = API_GRPC_FAILED_PRECONDITION, msg = "etcdserver: can only promote a learner member";
        break;
    case NODE_ELEARNERNOTREADY:
        g = API_GRPC_FAILED_PRECONDITION,
        msg = "etcdserver: can only promote a learner member which is in sync with leader";
        break;
    case MEMBERS_ETOOMANYLEARNERS:
        g = API_GRPC_FAILED_PRECONDITION, msg = "etcdserver: too many learner members in cluster";
        break;
    case MEMBERS_EUNHEALTHY:
        g = API_GRPC_UNAVAILABLE, msg = "etcdserver: unhealthy cluster";
        break;
    case NODE_ENOTLEADER:
        g = API_GRPC_FAILED_PRECONDITION, msg = "etcdserver: not leader";
        break;
    case RAFT_ECONFPENDING:
    case -ETIMEDOUT:
        g = API_GRPC_UNAVAILABLE, msg = "etcdserver: request timed out";
        break;
    default:
        g = API_GRPC_UNKNOWN, msg = code < -20000 ? mvcc_strerror(code) : strerror(-code);
        break;
    }
    api_call_finish(call, g, msg);
}

/* ---- protobuf requests to mvcc requests ------------------------------------ */

/* Allocations of one conversion, freed together. */
struct conv {
    void **blocks;
    size_t n, cap;
};

static void *conv_alloc(struct conv *c, size_t size) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        void **b = realloc(c->blocks, cap * sizeof(*b));
        if (!b)
            return NULL;
        c->blocks = b;
        c->cap = cap;
    }
    void *p = calloc(1, size ? size : 1);
    if (p)
        c->blocks[c->n++] = p;
    return p;
}

static void conv_free(struct conv *c) {
    for (size_t i = 0; i < c->n; i++)
        free(c->blocks[i]);
    free(c->blocks);
    c->blocks = NULL;
    c->n = c->cap = 0;
}

static int conv_range(const Etcdserverpb__RangeRequest *q, struct mvcc_range_req *r) {
    if (q->key.len == 0)
        return V3_EEMPTYKEY;
    if ((unsigned)q->sort_order > MVCC_SORT_DESCEND || (unsigned)q->sort_target > MVCC_SORT_VALUE)
        return V3_ESORT;
    *r = (struct mvcc_range_req){
        .key = q->key.data,
        .key_len = q->key.len,
        .range_end = q->range_end.data,
        .range_end_len = q->range_end.len,
        .limit = q->limit,
        .revision = q->revision,
        .sort_order = (enum mvcc_sort_order)q->sort_order,
        .sort_target = (enum mvcc_sort_target)q->sort_target,
        .keys_only = q->keys_only,
        .count_only = q->count_only,
        .min_mod_revision = q->min_mod_revision,
        .max_mod_revision = q->max_mod_revision,
        .min_create_revision = q->min_create_revision,
        .max_create_revision = q->max_create_revision,
    };
    return 0;
}

static int conv_put(const Etcdserverpb__PutRequest *q, struct mvcc_put_req *r) {
    if (q->key.len == 0)
        return V3_EEMPTYKEY;
    if (q->ignore_value && q->value.len != 0)
        return V3_EVALUEPROVIDED;
    if (q->ignore_lease && q->lease != 0)
        return V3_ELEASEPROVIDED;
    *r = (struct mvcc_put_req){.key = q->key.data,
                               .key_len = q->key.len,
                               .value = q->value.data,
                               .value_len = q->value.len,
                               .lease = q->lease,
                               .prev_kv = q->prev_kv,
                               .ignore_value = q->ignore_value,
                               .ignore_lease = q->ignore_lease};
    return 0;
}

static int conv_delete(const Etcdserverpb__DeleteRangeRequest *q, struct mvcc_delete_req *r) {
    if (q->key.len == 0)
        return V3_EEMPTYKEY;
    *r = (struct mvcc_delete_req){.key = q->key.data,
                                  .key_len = q->key.len,
                                  .range_end = q->range_end.data,
                                  .range_end_len = q->range_end.len,
                                  .prev_kv = q->prev_kv};
    return 0;
}

static int conv_txn(struct conv *c, const Etcdserverpb__TxnRequest *q, unsigned max_ops,
                    const struct mvcc_txn_req **out);

static int conv_ops(struct conv *c, Etcdserverpb__RequestOp **ops, size_t n, unsigned max_ops,
                    const struct mvcc_op **out) {
    struct mvcc_op *v = conv_alloc(c, n * sizeof(*v));
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        int rc;
        switch (ops[i]->request_case) {
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
            v[i].type = MVCC_OP_RANGE;
            rc = conv_range(ops[i]->request_range, &v[i].u.range);
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
            v[i].type = MVCC_OP_PUT;
            rc = conv_put(ops[i]->request_put, &v[i].u.put);
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE:
            v[i].type = MVCC_OP_DELETE;
            rc = conv_delete(ops[i]->request_delete_range, &v[i].u.del);
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
            v[i].type = MVCC_OP_TXN;
            rc = conv_txn(c, ops[i]->request_txn, max_ops, &v[i].u.txn);
            break;
        default:
            /* etcd answers an empty RequestOp with an empty range response;
             * quoin refuses it rather than guess. */
            rc = V3_EEMPTYKEY;
            break;
        }
        if (rc != 0)
            return rc;
    }
    *out = v;
    return 0;
}

static int conv_txn(struct conv *c, const Etcdserverpb__TxnRequest *q, unsigned max_ops,
                    const struct mvcc_txn_req **out) {
    if (q->n_compare > max_ops || q->n_success > max_ops || q->n_failure > max_ops)
        return V3_ETOOMANYOPS;
    struct mvcc_txn_req *t = conv_alloc(c, sizeof(*t));
    struct mvcc_compare *cmp = conv_alloc(c, q->n_compare * sizeof(*cmp));
    if (!t || !cmp)
        return -ENOMEM;
    for (size_t i = 0; i < q->n_compare; i++) {
        const Etcdserverpb__Compare *x = q->compare[i];
        if (x->key.len == 0)
            return V3_EEMPTYKEY;
        cmp[i] = (struct mvcc_compare){.result = (enum mvcc_cmp_result)x->result,
                                       .target = (enum mvcc_cmp_target)x->target,
                                       .key = x->key.data,
                                       .key_len = x->key.len,
                                       .range_end = x->range_end.data,
                                       .range_end_len = x->range_end.len};
        switch (x->target) {
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION:
            cmp[i].number = x->target_union_case ? x->version : 0;
            break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE:
            cmp[i].number = x->target_union_case ? x->create_revision : 0;
            break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD:
            cmp[i].number = x->target_union_case ? x->mod_revision : 0;
            break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__LEASE:
            cmp[i].number = x->target_union_case ? x->lease : 0;
            break;
        case ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE:
            if (x->target_union_case) {
                cmp[i].value = x->value.data;
                cmp[i].value_len = x->value.len;
            }
            break;
        default:
            return V3_ESORT;
        }
    }
    t->compares = cmp;
    t->n_compares = q->n_compare;
    int rc = conv_ops(c, q->success, q->n_success, max_ops, &t->success);
    if (rc == 0)
        rc = conv_ops(c, q->failure, q->n_failure, max_ops, &t->failure);
    t->n_success = q->n_success;
    t->n_failure = q->n_failure;
    *out = t;
    return rc;
}

/* Checks that every lease a put in op names (nested txns included) exists,
 * as etcd does before applying. Apply thread, inside the lease batch. */
static int leases_exist(struct server *s, const struct mvcc_op *op) {
    if (op->type == MVCC_OP_PUT && op->u.put.lease != 0) {
        int rc = lease_exists(s->lease_batch, op->u.put.lease);
        return rc == LEASE_ENOTFOUND ? V3_ELEASENOTFOUND : rc;
    }
    if (op->type != MVCC_OP_TXN)
        return 0;
    const struct mvcc_txn_req *t = op->u.txn;
    for (size_t i = 0; i < t->n_success; i++) {
        int rc = leases_exist(s, &t->success[i]);
        if (rc != 0)
            return rc;
    }
    for (size_t i = 0; i < t->n_failure; i++) {
        int rc = leases_exist(s, &t->failure[i]);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Converts a write request of `kind` into an mvcc op. */
static int conv_write(struct conv *c, enum v3_entry_kind kind, const ProtobufCMessage *msg,
                      unsigned max_ops, struct mvcc_op *op) {
    switch (kind) {
    case V3_ENTRY_PUT:
        op->type = MVCC_OP_PUT;
        return conv_put((const Etcdserverpb__PutRequest *)msg, &op->u.put);
    case V3_ENTRY_DELETE_RANGE:
        op->type = MVCC_OP_DELETE;
        return conv_delete((const Etcdserverpb__DeleteRangeRequest *)msg, &op->u.del);
    case V3_ENTRY_TXN: {
        op->type = MVCC_OP_TXN;
        int rc = conv_txn(c, (const Etcdserverpb__TxnRequest *)msg, max_ops, &op->u.txn);
        return rc ? rc : mvcc_txn_check_duplicates(op->u.txn);
    }
    default:
        break;
    }
    return -EINVAL;
}

static const ProtobufCMessageDescriptor *kind_descriptor(enum v3_entry_kind kind) {
    switch (kind) {
    case V3_ENTRY_PUT:
        return &etcdserverpb__put_request__descriptor;
    case V3_ENTRY_DELETE_RANGE:
        return &etcdserverpb__delete_range_request__descriptor;
    case V3_ENTRY_TXN:
        return &etcdserverpb__txn_request__descriptor;
    case V3_ENTRY_COMPACT:
        return &etcdserverpb__compaction_request__descriptor;
    default:
        return NULL;
    }
}

/* ---- writes: propose, apply, answer ----------------------------------------- */

void v3_applied_free(struct v3_applied *a) {
    if (a) {
        mvcc_result_free(a->res);
        free(a);
    }
}

/* A write's context from the handler until the answer. */
struct pending_write {
    struct server *s;
    api_call_t *call;
    uint64_t id;
    int code; /* why it ended before being applied, when it did */
    v3_answer_fn answer;
};

/* Fires on the apply thread after the batch committed (or with NULL when the
 * request was cancelled or failed before being applied). */
static void on_write_done(void *ctx, void *result) {
    struct pending_write *w = ctx;
    struct v3_applied *a = result;
    if (!a) {
        v3_fail(w->call, w->code ? w->code : -ECANCELED);
    } else if (a->code != 0) {
        v3_fail(w->call, a->code);
    } else if (w->answer) {
        w->answer(w->s, w->call, a);
    } else if (a->kind == V3_ENTRY_COMPACT) {
        /* With `physical`, the answer waits for the history to be removed. */
        if (a->physical && a->compaction)
            v3_compaction_answer_when_done(a->compaction, w->call);
        else
            v3_answer_header_only(w->s, w->call, 0);
    } else {
        struct pbw_header h;
        v3_header(w->s, a->res->resp.revision, &h);
        struct util_buf b = {0};
        int rc = pbw_op_resp(&b, &a->res->resp, &h, false);
        if (rc == 0) {
            api_call_send_raw(w->call, b.data, b.len);
            api_call_finish(w->call, API_GRPC_OK, NULL);
        } else {
            v3_fail(w->call, rc);
        }
        util_buf_free(&b);
    }
    v3_applied_free(a);
    free(w);
}

/* Triggers the waiter of an applied write, or frees the result when nobody on
 * this member waits for it. Apply thread, after commit. */
void v3_applied_done(void *ctx) {
    struct v3_applied *a = ctx;
    struct server *s = a->s;
    /* An applied compaction starts removing history whoever proposed it. */
    struct v3_compaction *c = NULL;
    if (a->kind == V3_ENTRY_COMPACT && a->code == 0)
        c = a->compaction = v3_compaction_new(s);
    if (!server_wait_trigger(s->writes, a->id, a))
        v3_applied_free(a);
    if (c)
        v3_compaction_start(s, c);
}

/* A write the client gave up on: the waiter answers with CANCELLED. The entry
 * may still be applied (as in etcd, a cancelled write can have happened). */
void v3_write_cancel(api_call_t *call, void *arg) {
    struct server *s = arg;
    uint64_t id = (uint64_t)(uintptr_t)api_call_data(call);
    if (id)
        server_wait_cancel(s->writes, id);
}

/* v3_propose, or with cc set a membership change whose context is the
 * entry. Returns the waiter's id, 0 when the call was answered already. */
static uint64_t propose(struct server *s, api_call_t *call, enum v3_entry_kind kind,
                        const uint8_t *data, size_t len, v3_answer_fn answer,
                        const struct raft_conf_change *cc) {
    if (len > s->cfg->max_request_bytes) {
        v3_fail(call, V3_ETOOLARGE);
        return 0;
    }
    struct pending_write *w = malloc(sizeof(*w));
    uint8_t *entry = malloc(V3_ENTRY_HEADER + len);
    if (!w || !entry) {
        free(w);
        free(entry);
        v3_fail(call, -ENOMEM);
        return 0;
    }
    *w = (struct pending_write){.s = s, .call = call, .id = server_next_id(s), .answer = answer};
    entry[0] = V3_ENTRY_FORMAT;
    entry[1] = (uint8_t)kind;
    for (int i = 0; i < 8; i++)
        entry[2 + i] = (uint8_t)(w->id >> (56 - 8 * i));
    memcpy(entry + V3_ENTRY_HEADER, data, len);
    /* The call keeps the id, not w: w is freed by whichever thread answers. */
    api_call_set_data(call, (void *)(uintptr_t)w->id);
    int rc = server_wait_register(s->writes, w->id, on_write_done, w);
    if (rc != 0) {
        free(entry);
        free(w);
        api_call_set_data(call, NULL);
        v3_fail(call, rc);
        return 0;
    }
    uint64_t id = w->id;
    if (cc) {
        struct raft_conf_change c = *cc;
        c.context = entry;
        c.context_len = (uint32_t)(V3_ENTRY_HEADER + len);
        rc = server_node_propose_conf_change(s->node, &c);
    } else {
        rc = server_node_propose(s->node, entry, V3_ENTRY_HEADER + len);
    }
    free(entry);
    if (rc != 0) {
        /* Nothing can have triggered it yet: the cancel answers with rc. */
        w->code = rc;
        server_wait_cancel(s->writes, w->id);
        return 0;
    }
    return id;
}

void v3_propose(struct server *s, api_call_t *call, enum v3_entry_kind kind, const uint8_t *data,
                size_t len, v3_answer_fn answer) {
    propose(s, call, kind, data, len, answer, NULL);
}

uint64_t v3_propose_conf(struct server *s, api_call_t *call, const struct raft_conf_change *cc,
                         const uint8_t *data, size_t len, v3_answer_fn answer) {
    return propose(s, call, V3_ENTRY_MEMBER, data, len, answer, cc);
}

static uint64_t entry_id(const uint8_t *data) {
    uint64_t id = 0;
    for (int i = 0; i < 8; i++)
        id = id << 8 | data[2 + i];
    return id;
}

void v3_propose_failed(void *arg, const uint8_t *data, size_t len, int code) {
    struct server *s = arg;
    if (len < V3_ENTRY_HEADER)
        return;
    struct v3_applied *a = calloc(1, sizeof(*a));
    if (!a) {
        server_wait_cancel(s->writes, entry_id(data));
        return;
    }
    *a = (struct v3_applied){.s = s, .id = entry_id(data), .code = code};
    if (!server_wait_trigger(s->writes, a->id, a))
        v3_applied_free(a);
}

int v3_apply_entry(void *arg, mvcc_batch_t *b, const struct raft_entry *e,
                   struct apply_done *done) {
    struct server *s = arg;
    if (e->type == RAFT_ENTRY_CONF_CHANGE)
        return v3_cluster_apply(s, b, e, done);
    if (e->len < V3_ENTRY_HEADER || e->data[0] != V3_ENTRY_FORMAT)
        return 0; /* not a request of this format: nothing to apply */
    enum v3_entry_kind kind = (enum v3_entry_kind)e->data[1];
    if (kind == V3_ENTRY_MEMBER_ATTR)
        return v3_cluster_apply(s, b, e, done);
    if (kind == V3_ENTRY_ALARM)
        return v3_alarm_apply(s, b, entry_id(e->data), e->data + V3_ENTRY_HEADER,
                              e->len - V3_ENTRY_HEADER, done);
    if (kind >= V3_ENTRY_LEASE_GRANT && kind <= V3_ENTRY_LEASE_CHECKPOINT)
        return v3_lease_apply(s, kind, entry_id(e->data), e->data + V3_ENTRY_HEADER,
                              e->len - V3_ENTRY_HEADER, done);
    const ProtobufCMessageDescriptor *desc = kind_descriptor(kind);
    if (!desc)
        return 0;
    struct v3_applied *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    *a = (struct v3_applied){.s = s, .id = entry_id(e->data), .kind = kind};
    ProtobufCMessage *msg =
        protobuf_c_message_unpack(desc, NULL, e->len - V3_ENTRY_HEADER, e->data + V3_ENTRY_HEADER);
    int rc = 0;
    if (!msg) {
        a->code = -EINVAL; /* checked before proposing: only a foreign entry gets here */
    } else if (kind == V3_ENTRY_COMPACT) {
        const Etcdserverpb__CompactionRequest *q = (const Etcdserverpb__CompactionRequest *)msg;
        a->physical = q->physical;
        a->code = mvcc_compact(b, q->revision);
        if (a->code != MVCC_ECOMPACTED && a->code != MVCC_EFUTURE && a->code != 0)
            rc = a->code;
    } else {
        struct conv c = {0};
        struct mvcc_op op;
        a->code = conv_write(&c, kind, msg, s->cfg->max_txn_ops, &op);
        if (a->code == 0)
            a->code = leases_exist(s, &op);
        if (a->code < 0 && a->code > -20000 && a->code != -EINVAL)
            rc = a->code; /* LMDB trouble in the lease check: breaks the batch */
        else if (a->code == 0) {
            a->code = mvcc_apply(b, &op, &a->res);
            if (a->code < 0 && a->code > -20000 && a->code != -EINVAL)
                rc = a->code; /* LMDB trouble: breaks the batch */
        }
        conv_free(&c);
    }
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
    return v3_applied_hand_over(s, a, rc, done);
}

/* Checks a write on the io loop before proposing it, with the checks etcd
 * makes there, so that the log only holds requests that apply cleanly. */
static int check_write(struct server *s, enum v3_entry_kind kind, const ProtobufCMessage *msg) {
    struct conv c = {0};
    struct mvcc_op op;
    int rc = conv_write(&c, kind, msg, s->cfg->max_txn_ops, &op);
    if (rc == 0 && mvcc_quota_check(s->db, mvcc_request_cost(&op)) != 0) {
        v3_alarm_raise_nospace(s);
        rc = MVCC_ENOSPACE;
    }
    conv_free(&c);
    return rc;
}

static void on_write(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                     void *arg, enum v3_entry_kind kind) {
    struct server *s = arg;
    int rc = kind == V3_ENTRY_COMPACT ? 0 : check_write(s, kind, msg);
    protobuf_c_message_free_unpacked(msg, NULL);
    if (rc != 0)
        v3_fail(call, rc);
    else
        v3_propose(s, call, kind, data, len, NULL);
}

static void on_put(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                   void *arg) {
    on_write(call, msg, data, len, arg, V3_ENTRY_PUT);
}

static void on_delete_range(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data,
                            size_t len, void *arg) {
    on_write(call, msg, data, len, arg, V3_ENTRY_DELETE_RANGE);
}

static void on_txn(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                   void *arg) {
    on_write(call, msg, data, len, arg, V3_ENTRY_TXN);
}

static void on_compact(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                       void *arg) {
    on_write(call, msg, data, len, arg, V3_ENTRY_COMPACT);
}

/* ---- reads ----------------------------------------------------------------- */

/* Runs a range on a fresh read snapshot and answers, encoding key by key
 * straight from LMDB's memory. io loop. */
static void do_range(struct server *s, api_call_t *call, const Etcdserverpb__RangeRequest *q) {
    struct mvcc_range_req req;
    int rc = conv_range(q, &req);
    if (rc != 0) {
        v3_fail(call, rc);
        return;
    }
    mvcc_read_t *rd = NULL;
    mvcc_range_it_t *it = NULL;
    /* One buffer, the response itself: room for the gRPC prefix, the header
     * (its revision is the snapshot's), then every key as LMDB hands it out. */
    static const char room[API_GRPC_PREFIX_LEN] = {0};
    struct util_buf b = {0};
    if ((rc = mvcc_read_begin(s->db, &rd)) != 0 || (rc = mvcc_range_open(rd, &req, &it)) != 0 ||
        (rc = util_buf_append(&b, room, sizeof(room))) != 0)
        goto out;
    struct pbw_header h;
    v3_header(s, mvcc_read_revision(rd), &h);
    if ((rc = pbw_header(&b, 1, &h)) != 0)
        goto out;
    struct mvcc_kv kv;
    bool big = false;
    while ((rc = mvcc_range_next(it, &kv)) == 1) {
        if ((rc = pbw_kv(&b, 2, &kv, req.keys_only)) != 0)
            break;
        /* A big answer takes one of a few slots until it has left, so many
         * clients asking for huge ranges at once cannot hold unbounded
         * memory: past the slots, etcd's "too many requests". */
        if (!big && b.len > V3_BIG_RANGE_BYTES) {
            if (s->big_ranges >= V3_MAX_BIG_RANGES) {
                rc = -EAGAIN;
                break;
            }
            big = true;
            s->big_ranges++;
            api_call_set_data(call, &s->big_ranges);
        }
    }
    if (rc != 0) {
        rc = rc == -EAGAIN ? V3_ETOOMANYRANGES : rc;
        goto out;
    }
    int64_t count, revision;
    bool more;
    mvcc_range_summary(it, &count, &more, &revision);
    if ((rc = pbw_bool(&b, 3, more)) == 0 && (rc = pbw_int(&b, 4, count)) == 0)
        rc = api_call_send_owned(call, &b);
out:
    mvcc_range_close(it);
    mvcc_read_end(rd);
    util_buf_free(&b);
    if (rc == 0 || rc == -EAGAIN)
        api_call_finish(call, API_GRPC_OK, NULL);
    else
        v3_fail(call, rc == V3_ETOOMANYRANGES ? -EAGAIN : rc);
}

void v3_call_over(const char *path, int code, uint64_t duration_ns, void *call_data, void *arg) {
    (void)path;
    (void)code;
    (void)duration_ns;
    struct server *s = arg;
    if (call_data == &s->big_ranges)
        s->big_ranges--;
}

struct pending_read {
    struct server *s;
    api_call_t *call;
    Etcdserverpb__RangeRequest *req;
    uint64_t id;
    int code;
};

/* io loop: the read index is applied (or failed): answer. */
static void read_go(void *ctx) {
    struct pending_read *r = ctx;
    if (r->code != 0)
        v3_fail(r->call, r->code);
    else
        do_range(r->s, r->call, r->req);
    protobuf_c_message_free_unpacked(&r->req->base, NULL);
    free(r);
}

/* The waiter of a linearizable read (result: a struct read_outcome, or NULL
 * when cancelled). Runs on whichever thread triggers; the read itself runs on
 * the io loop. */
static void on_read_done(void *ctx, void *result) {
    struct pending_read *r = ctx;
    const struct read_outcome *o = result;
    if (!r->code)
        r->code = o ? o->code : -ECANCELED;
    if (server_post(r->s, read_go, r) != 0) {
        v3_fail(r->call, -ENOMEM);
        protobuf_c_message_free_unpacked(&r->req->base, NULL);
        free(r);
    }
}

struct read_index_hit {
    struct server *s;
    uint64_t id;
};

static void read_index_applied(void *ctx) {
    struct read_index_hit *h = ctx;
    struct read_outcome ok = {0};
    server_wait_trigger(h->s->reads, h->id, &ok);
    free(h);
}

void v3_read_ready(void *arg, uint64_t context, uint64_t index) {
    struct server *s = arg;
    struct read_index_hit *h = malloc(sizeof(*h));
    if (!h) {
        server_wait_cancel(s->reads, context);
        return;
    }
    *h = (struct read_index_hit){.s = s, .id = context};
    if (server_apply_when_applied(s->apply, index, read_index_applied, h) != 0) {
        free(h);
        server_wait_cancel(s->reads, context);
    }
}

void v3_read_failed(void *arg, uint64_t context, int code) {
    struct server *s = arg;
    struct read_outcome failed = {code};
    server_wait_trigger(s->reads, context, &failed);
}

static void on_range(api_call_t *call, ProtobufCMessage *msg, const uint8_t *data, size_t len,
                     void *arg) {
    (void)data;
    (void)len;
    struct server *s = arg;
    Etcdserverpb__RangeRequest *q = (Etcdserverpb__RangeRequest *)msg;
    bool local = q->serializable;
#ifdef QUOIN_TESTING
    /* A deliberate bug the chaos harness must catch: a follower answers
     * linearizable reads from its own, possibly stale, state. */
    if (!local && server_test_bug("follower-local-read")) {
        struct node_status st;
        server_node_status(s->node, &st);
        local = !st.is_leader;
    }
#endif
    if (local) {
        do_range(s, call, q);
        protobuf_c_message_free_unpacked(msg, NULL);
        return;
    }
    struct pending_read *r = malloc(sizeof(*r));
    if (!r) {
        protobuf_c_message_free_unpacked(msg, NULL);
        v3_fail(call, -ENOMEM);
        return;
    }
    *r = (struct pending_read){.s = s, .call = call, .req = q, .id = server_next_id(s)};
    int rc = server_wait_register(s->reads, r->id, on_read_done, r);
    if (rc == 0 && (rc = server_node_read_index(s->node, r->id)) != 0) {
        r->code = rc;
        server_wait_cancel(s->reads, r->id); /* answers through read_go */
        return;
    }
    if (rc != 0) {
        protobuf_c_message_free_unpacked(msg, NULL);
        free(r);
        v3_fail(call, rc);
    }
}

int v3_kv_register(struct server *s, struct util_err *err) {
    const struct api_grpc_method methods[] = {
        {.path = "/etcdserverpb.KV/Range",
         .request = &etcdserverpb__range_request__descriptor,
         .response = &etcdserverpb__range_response__descriptor,
         .on_message = on_range,
         .arg = s},
        {.path = "/etcdserverpb.KV/Put",
         .request = &etcdserverpb__put_request__descriptor,
         .response = &etcdserverpb__put_response__descriptor,
         .on_message = on_put,
         .on_cancel = v3_write_cancel,
         .arg = s},
        {.path = "/etcdserverpb.KV/DeleteRange",
         .request = &etcdserverpb__delete_range_request__descriptor,
         .response = &etcdserverpb__delete_range_response__descriptor,
         .on_message = on_delete_range,
         .on_cancel = v3_write_cancel,
         .arg = s},
        {.path = "/etcdserverpb.KV/Txn",
         .request = &etcdserverpb__txn_request__descriptor,
         .response = &etcdserverpb__txn_response__descriptor,
         .on_message = on_txn,
         .on_cancel = v3_write_cancel,
         .arg = s},
        {.path = "/etcdserverpb.KV/Compact",
         .request = &etcdserverpb__compaction_request__descriptor,
         .response = &etcdserverpb__compaction_response__descriptor,
         .on_message = on_compact,
         .on_cancel = v3_write_cancel,
         .arg = s},
    };
    return v3_register(s, methods, sizeof(methods) / sizeof(methods[0]), err);
}
