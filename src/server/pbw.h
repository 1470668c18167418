/* pbw: internal to src/server — a protobuf writer for the responses quoin
 * encodes itself: straight from LMDB memory into the bytes that go on the wire,
 * with no intermediate message objects (a range of a million keys is encoded
 * key by key). Field numbers are etcd's. Every function returns 0 or -ENOMEM;
 * proto3 defaults (0, false, empty) are skipped as protobuf does. */
#ifndef QUOIN_SERVER_PBW_H
#define QUOIN_SERVER_PBW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mvcc/mvcc.h"
#include "util/util.h"

int pbw_varint(struct util_buf *b, uint64_t v);
int pbw_int(struct util_buf *b, uint32_t field, int64_t v);
int pbw_uint(struct util_buf *b, uint32_t field, uint64_t v);
int pbw_bool(struct util_buf *b, uint32_t field, bool v);
int pbw_bytes(struct util_buf *b, uint32_t field, const void *p, size_t n);
/* Always written, even when empty (a present sub-message). */
int pbw_message(struct util_buf *b, uint32_t field, const void *p, size_t n);

/* etcd's ResponseHeader {cluster_id, member_id, revision, raft_term} as field
 * `field` of the enclosing message. */
struct pbw_header {
    uint64_t cluster_id;
    uint64_t member_id;
    int64_t revision;
    uint64_t raft_term;
};
int pbw_header(struct util_buf *b, uint32_t field, const struct pbw_header *h);

/* mvccpb.KeyValue as field `field`; keys_only leaves the value out. */
int pbw_kv(struct util_buf *b, uint32_t field, const struct mvcc_kv *kv, bool keys_only);

/* etcd's response for one mvcc response (RangeResponse, PutResponse,
 * DeleteRangeResponse, TxnResponse — nested ones with a header holding only
 * the revision, as etcd sends them), as a whole message into b. */
int pbw_op_resp(struct util_buf *b, const struct mvcc_op_resp *r, const struct pbw_header *h,
                bool keys_only);

#endif
