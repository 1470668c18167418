/* The keys attached to a lease, read from mvcc's lease index ("mvcc.lease":
 * lease id, 8 bytes big-endian, then the key), for the lease layer's revoke
 * and TimeToLive. */
#include <string.h>

#include "mvcc/mvcc_int.h"

int mvcc_lease_keys(mvcc_t *db, MDB_txn *txn, int64_t lease, mvcc_lease_key_fn fn, void *arg) {
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, db->lease, &cur);
    if (rc != 0)
        return mv_lmdb_err(rc);
    uint8_t prefix[8];
    mv_enc_u64(prefix, (uint64_t)lease);
    MDB_val k = {.mv_size = sizeof(prefix), .mv_data = prefix}, d;
    int g = mdb_cursor_get(cur, &k, &d, MDB_SET_RANGE);
    rc = 0;
    for (; g == 0 && rc == 0; g = mdb_cursor_get(cur, &k, &d, MDB_NEXT)) {
        if (k.mv_size <= 8 || memcmp(k.mv_data, prefix, 8) != 0)
            break;
        rc = fn(arg, (const uint8_t *)k.mv_data + 8, k.mv_size - 8);
    }
    mdb_cursor_close(cur);
    if (rc != 0)
        return rc;
    return g == 0 || g == MDB_NOTFOUND ? 0 : mv_lmdb_err(g);
}
