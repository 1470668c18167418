/* snapshot: a consistent copy of the whole store for Maintenance.Snapshot and
 * raft snapshots. LMDB's copy runs on one read transaction, so writers go on
 * while it runs, and MDB_CP_COMPACT leaves free pages out. */
#include "mvcc/mvcc_int.h"

int mvcc_snapshot_to_fd(mvcc_t *db, int fd) {
    struct mvcc_env *e = mv_env_get(db);
    int rc = mv_lmdb_err(mdb_env_copyfd2(e->env, fd, MDB_CP_COMPACT));
    mv_env_put(db, e);
    return rc;
}
