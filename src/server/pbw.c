/* pbw: protobuf wire encoding of etcd's responses (see pbw.h). */
#include "server/pbw.h"

#include <errno.h>

enum { WIRE_VARINT = 0, WIRE_LEN = 2 };

int pbw_varint(struct util_buf *b, uint64_t v) {
    return util_buf_varint(b, v);
}

static int tag(struct util_buf *b, uint32_t field, int wire) {
    return pbw_varint(b, (uint64_t)field << 3 | (uint64_t)wire);
}

int pbw_uint(struct util_buf *b, uint32_t field, uint64_t v) {
    if (v == 0)
        return 0;
    int rc = tag(b, field, WIRE_VARINT);
    return rc ? rc : pbw_varint(b, v);
}

int pbw_int(struct util_buf *b, uint32_t field, int64_t v) {
    return pbw_uint(b, field, (uint64_t)v); /* int64: two's complement, 10 bytes if negative */
}

int pbw_bool(struct util_buf *b, uint32_t field, bool v) {
    return pbw_uint(b, field, v ? 1 : 0);
}

int pbw_message(struct util_buf *b, uint32_t field, const void *p, size_t n) {
    int rc = tag(b, field, WIRE_LEN);
    if (rc == 0)
        rc = pbw_varint(b, n);
    if (rc == 0)
        rc = util_buf_append(b, p, n);
    return rc;
}

int pbw_bytes(struct util_buf *b, uint32_t field, const void *p, size_t n) {
    return n ? pbw_message(b, field, p, n) : 0;
}

/* Writes a sub-message built in tmp as field `field` of b, and empties tmp. */
static int flush_sub(struct util_buf *b, uint32_t field, struct util_buf *tmp) {
    int rc = pbw_message(b, field, tmp->data, tmp->len);
    tmp->len = 0;
    return rc;
}

int pbw_header(struct util_buf *b, uint32_t field, const struct pbw_header *h) {
    struct util_buf t = {0};
    int rc = pbw_uint(&t, 1, h->cluster_id);
    if (rc == 0)
        rc = pbw_uint(&t, 2, h->member_id);
    if (rc == 0)
        rc = pbw_int(&t, 3, h->revision);
    if (rc == 0)
        rc = pbw_uint(&t, 4, h->raft_term);
    if (rc == 0)
        rc = pbw_message(b, field, t.data, t.len);
    util_buf_free(&t);
    return rc;
}

static size_t field_len(uint32_t field, size_t payload_varint_or_len, bool is_len) {
    size_t t = util_varint_len((uint64_t)field << 3);
    return is_len ? t + util_varint_len(payload_varint_or_len) + payload_varint_or_len
                  : t + util_varint_len(payload_varint_or_len);
}

int pbw_kv(struct util_buf *b, uint32_t field, const struct mvcc_kv *kv, bool keys_only) {
    size_t value_len = keys_only ? 0 : kv->value_len;
    size_t n = 0;
    if (kv->key_len)
        n += field_len(1, kv->key_len, true);
    if (kv->create_revision)
        n += field_len(2, (uint64_t)kv->create_revision, false);
    if (kv->mod_revision)
        n += field_len(3, (uint64_t)kv->mod_revision, false);
    if (kv->version)
        n += field_len(4, (uint64_t)kv->version, false);
    if (value_len)
        n += field_len(5, value_len, true);
    if (kv->lease)
        n += field_len(6, (uint64_t)kv->lease, false);
    int rc = tag(b, field, WIRE_LEN);
    if (rc == 0)
        rc = pbw_varint(b, n);
    if (rc == 0)
        rc = pbw_bytes(b, 1, kv->key, kv->key_len);
    if (rc == 0)
        rc = pbw_int(b, 2, kv->create_revision);
    if (rc == 0)
        rc = pbw_int(b, 3, kv->mod_revision);
    if (rc == 0)
        rc = pbw_int(b, 4, kv->version);
    if (rc == 0)
        rc = pbw_bytes(b, 5, kv->value, value_len);
    if (rc == 0)
        rc = pbw_int(b, 6, kv->lease);
    return rc;
}

int pbw_op_resp(struct util_buf *b, const struct mvcc_op_resp *r, const struct pbw_header *h,
                bool keys_only) {
    int rc = pbw_header(b, 1, h);
    switch (r->type) {
    case MVCC_OP_RANGE:
        for (size_t i = 0; rc == 0 && i < r->u.range.n_kvs; i++)
            rc = pbw_kv(b, 2, &r->u.range.kvs[i], keys_only);
        if (rc == 0)
            rc = pbw_bool(b, 3, r->u.range.more);
        if (rc == 0)
            rc = pbw_int(b, 4, r->u.range.count);
        return rc;
    case MVCC_OP_PUT:
        if (rc == 0 && r->u.put.has_prev)
            rc = pbw_kv(b, 2, &r->u.put.prev_kv, false);
        return rc;
    case MVCC_OP_DELETE:
        if (rc == 0)
            rc = pbw_int(b, 2, r->u.del.deleted);
        for (size_t i = 0; rc == 0 && i < r->u.del.n_prev_kvs; i++)
            rc = pbw_kv(b, 3, &r->u.del.prev_kvs[i], false);
        return rc;
    case MVCC_OP_TXN: {
        if (rc == 0)
            rc = pbw_bool(b, 2, r->u.txn.succeeded);
        struct util_buf op = {0}, inner = {0};
        for (size_t i = 0; rc == 0 && i < r->u.txn.n_responses; i++) {
            const struct mvcc_op_resp *sub = &r->u.txn.responses[i];
            struct pbw_header sh = {.revision = sub->revision};
            /* ResponseOp's oneof: response_range = 1, put = 2, delete = 3, txn = 4. */
            uint32_t which = sub->type == MVCC_OP_RANGE    ? 1
                             : sub->type == MVCC_OP_PUT    ? 2
                             : sub->type == MVCC_OP_DELETE ? 3
                                                           : 4;
            rc = pbw_op_resp(&inner, sub, &sh, false);
            if (rc == 0)
                rc = pbw_message(&op, which, inner.data, inner.len);
            inner.len = 0;
            if (rc == 0)
                rc = flush_sub(b, 3, &op);
        }
        util_buf_free(&op);
        util_buf_free(&inner);
        return rc;
    }
    }
    return -EINVAL;
}
