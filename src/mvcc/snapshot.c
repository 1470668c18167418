/* snapshot: a consistent copy of the whole store for Maintenance.Snapshot and
 * raft snapshots. LMDB's copy runs on one read transaction, so writers go on
 * while it runs, and MDB_CP_COMPACT leaves free pages out. */
#include <stdio.h>

#include "mvcc/mvcc_int.h"

int mvcc_snapshot_to_fd(mvcc_t *db, int fd) {
    struct mvcc_env *e = mv_env_get(db);
    int rc = mv_lmdb_err(mdb_env_copyfd2(e->env, fd, MDB_CP_COMPACT));
    mv_env_put(db, e);
    return rc;
}

int mvcc_snapshot_fd_state(int fd, uint64_t *applied_index, uint64_t *applied_term) {
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi meta;
    int64_t index = 0, term = 0;
    int rc = mdb_env_create(&env);
    if (rc != 0)
        return mv_lmdb_err(rc);
    /* No lock file: nobody else opens the copy, and it is never written. */
    if ((rc = mdb_env_set_maxdbs(env, 8 + EXTRA_DBI_MAX)) != 0 ||
        (rc = mdb_env_open(env, path, MDB_NOSUBDIR | MDB_RDONLY | MDB_NOLOCK, 0600)) != 0 ||
        (rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn)) != 0 ||
        (rc = mdb_dbi_open(txn, "mvcc.meta", 0, &meta)) != 0) {
        rc = rc == MDB_NOTFOUND ? MVCC_ECORRUPT : mv_lmdb_err(rc);
        goto out;
    }
    rc = mv_meta_get_i64(txn, meta, META_APPLIED_INDEX, &index, 0);
    if (rc == 0)
        rc = mv_meta_get_i64(txn, meta, META_APPLIED_TERM, &term, 0);
    *applied_index = (uint64_t)index;
    *applied_term = (uint64_t)term;
out:
    if (txn)
        mdb_txn_abort(txn);
    mdb_env_close(env);
    return rc;
}
