/* mvcc defragmentation without stopping the world.
 *
 * LMDB never shrinks its file: pages freed by compaction are reused but the
 * high-water mark stays, and pages half emptied stay half empty. The store is
 * rewritten in key order into a new file from a read snapshot, so it runs
 * beside readers and writers. What the writer committed meanwhile is in the
 * log database (every change has a revision), so it is replayed into the
 * copy; small databases (meta and other layers') are copied whole. Writers
 * are held only for the last replay and the file swap. */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mvcc/mvcc_int.h"

/* Replays into `to` every change of `from` after the revision `to` holds.
 * Returns the number of changes replayed, or an error. */
static int64_t replay(mvcc_t *db, MDB_txn *from, MDB_txn *to) {
    int64_t have, want;
    int rc = mv_meta_get_i64(to, db->meta, META_REV, &have, 1);
    if (rc == 0)
        rc = mv_meta_get_i64(from, db->meta, META_REV, &want, 1);
    if (rc != 0)
        return rc;
    MDB_cursor *lc = NULL, *fkv = NULL, *tkv = NULL;
    int64_t n = 0;
    if ((rc = mv_lmdb_err(mdb_cursor_open(from, db->log, &lc))) != 0 ||
        (rc = mv_lmdb_err(mdb_cursor_open(from, db->kv, &fkv))) != 0 ||
        (rc = mv_lmdb_err(mdb_cursor_open(to, db->kv, &tkv))) != 0)
        goto out;
    uint8_t start[REV_LEN];
    mv_enc_rev(start, have + 1, 0);
    MDB_val lk = {.mv_size = REV_LEN, .mv_data = start}, ld;
    int g = mdb_cursor_get(lc, &lk, &ld, MDB_SET_RANGE);
    for (; g == 0; g = mdb_cursor_get(lc, &lk, &ld, MDB_NEXT), n++) {
        size_t klen = ld.mv_size - 1;
        const uint8_t *key = (const uint8_t *)ld.mv_data + 1;
        uint8_t buf[SEEK_MAX];
        memcpy(buf, key, klen);
        memcpy(buf + klen, lk.mv_data, REV_LEN);
        MDB_val k = {.mv_size = klen + REV_LEN, .mv_data = buf}, d;
        if ((rc = mv_lmdb_err(mdb_cursor_get(fkv, &k, &d, MDB_SET_KEY))) != 0)
            goto out;
        struct rec nr, old;
        if ((rc = mv_rec_decode(&k, &d, &nr)) != 0)
            goto out;
        int found = mv_latest_rec(tkv, key, klen, &old);
        if (found < 0) {
            rc = found;
            goto out;
        }
        int64_t old_lease = found == 1 && !old.tomb ? old.lease : 0;
        int64_t new_lease = nr.tomb ? 0 : nr.lease;
        if ((rc = mv_lmdb_err(mdb_put(to, db->kv, &k, &d, 0))) != 0 ||
            (rc = mv_lmdb_err(mdb_put(to, db->log, &lk, &ld, MDB_APPEND))) != 0)
            goto out;
        if (old_lease != new_lease) {
            uint8_t lb[SEEK_MAX];
            memcpy(lb + 8, key, klen);
            MDB_val lkey = {.mv_size = klen + 8, .mv_data = lb}, empty = {0, lb};
            if (old_lease != 0) {
                mv_enc_u64(lb, (uint64_t)old_lease);
                int r = mdb_del(to, db->lease, &lkey, NULL);
                if (r != 0 && r != MDB_NOTFOUND) {
                    rc = mv_lmdb_err(r);
                    goto out;
                }
            }
            if (new_lease != 0) {
                mv_enc_u64(lb, (uint64_t)new_lease);
                if ((rc = mv_lmdb_err(mdb_put(to, db->lease, &lkey, &empty, 0))) != 0)
                    goto out;
            }
        }
    }
    if (g != MDB_NOTFOUND) {
        rc = mv_lmdb_err(g);
        goto out;
    }
    rc = mv_meta_put_i64(to, db->meta, META_REV, want);
out:
    mv_cursors_close(lc, fkv);
    mv_cursors_close(tkv, NULL);
    return rc != 0 ? rc : n;
}

/* Replaces the content of a small database of `to` by that of `from`. */
static int copy_dbi(MDB_txn *from, MDB_txn *to, MDB_dbi dbi) {
    int rc = mv_lmdb_err(mdb_drop(to, dbi, 0));
    if (rc != 0)
        return rc;
    MDB_cursor *c;
    if ((rc = mv_lmdb_err(mdb_cursor_open(from, dbi, &c))) != 0)
        return rc;
    MDB_val k, d;
    int g;
    while ((g = mdb_cursor_get(c, &k, &d, MDB_NEXT)) == 0)
        if ((rc = mv_lmdb_err(mdb_put(to, dbi, &k, &d, 0))) != 0)
            break;
    mdb_cursor_close(c);
    if (rc == 0 && g != MDB_NOTFOUND)
        rc = mv_lmdb_err(g);
    return rc;
}

/* Copies every database of one snapshot of `from` into the empty `to` in key
 * order with MDB_APPEND, so the B-tree pages come out full: LMDB's own
 * compacting copy only leaves free pages out, and pages half emptied by a
 * compaction would stay half empty. Commits every few thousand records to
 * keep each transaction small. */
static int copy_packed(mvcc_t *db, MDB_env *from_env, MDB_env *to_env) {
    MDB_dbi dbis[4 + EXTRA_DBI_MAX] = {db->kv, db->log, db->lease, db->meta};
    size_t nd = 4;
    for (size_t i = 0; i < db->n_extra; i++)
        dbis[nd++] = db->extra_dbis[i];
    MDB_txn *from = NULL, *to = NULL;
    MDB_cursor *c = NULL;
    int rc = mv_lmdb_err(mdb_txn_begin(from_env, NULL, MDB_RDONLY, &from));
    for (size_t i = 0; rc == 0 && i < nd; i++) {
        if ((rc = mv_lmdb_err(mdb_cursor_open(from, dbis[i], &c))) != 0)
            break;
        MDB_val k, d;
        long n = 0;
        int g;
        while (rc == 0 && (g = mdb_cursor_get(c, &k, &d, MDB_NEXT)) == 0) {
            if (to == NULL && (rc = mv_lmdb_err(mdb_txn_begin(to_env, NULL, 0, &to))) != 0)
                break;
            rc = mv_lmdb_err(mdb_put(to, dbis[i], &k, &d, MDB_APPEND));
            if (rc == 0 && ++n % 20000 == 0) {
                rc = mv_lmdb_err(mdb_txn_commit(to));
                to = NULL;
            }
        }
        if (rc == 0 && g != MDB_NOTFOUND)
            rc = mv_lmdb_err(g);
        mdb_cursor_close(c);
        if (rc == 0 && to != NULL)
            rc = mv_lmdb_err(mdb_txn_commit(to));
        else if (to != NULL)
            mdb_txn_abort(to);
        to = NULL;
    }
    if (from != NULL)
        mdb_txn_abort(from);
    return rc;
}

/* One catch-up round from a fresh snapshot of `old` into `nenv`. */
static int64_t catch_up(mvcc_t *db, MDB_env *old, MDB_env *nenv, bool final) {
    MDB_txn *from = NULL, *to = NULL;
    int rc = mv_lmdb_err(mdb_txn_begin(old, NULL, MDB_RDONLY, &from));
    if (rc == 0)
        rc = mv_lmdb_err(mdb_txn_begin(nenv, NULL, 0, &to));
    int64_t n = rc;
    if (rc == 0)
        n = replay(db, from, to);
    if (n >= 0 && final) {
        rc = copy_dbi(from, to, db->meta);
        for (size_t i = 0; rc == 0 && i < db->n_extra; i++)
            rc = copy_dbi(from, to, db->extra_dbis[i]);
        if (rc != 0)
            n = rc;
    }
    if (from != NULL)
        mdb_txn_abort(from);
    if (to != NULL) {
        if (n >= 0 && (rc = mv_lmdb_err(mdb_txn_commit(to))) != 0)
            n = rc;
        else if (n < 0)
            mdb_txn_abort(to);
    }
    return n;
}

/* With the writer held: moves `file`, open as nenv, over the store's path
 * and makes it current. `holder` (the caller's allocation) takes nenv and
 * lock_file (removed when the environment closes). The previous environment
 * closes when its last snapshot ends. */
static int env_swap(mvcc_t *db, struct mvcc_env *holder, MDB_env *nenv, const char *file,
                    char *lock_file) {
    if (rename(file, db->path) != 0)
        return -errno;
    holder->env = nenv;
    holder->refs = 1;
    holder->unlink = lock_file;
    pthread_mutex_lock(&db->envmu);
    struct mvcc_env *old = db->cur;
    db->cur = holder;
    pthread_mutex_unlock(&db->envmu);
    mv_env_put(db, old); /* its reference as the current environment */
    return 0;
}

int mvcc_snapshot_install(mvcc_t *db, const char *file, struct util_err *err) {
    bool expect = false;
    if (!atomic_compare_exchange_strong(&db->defragging, &expect, true))
        return util_errorf(err, -EBUSY, "mvcc: a defragmentation is running");
    size_t flen = strlen(file);
    char *lock = malloc(flen + 6);
    struct mvcc_env *holder = calloc(1, sizeof(*holder));
    MDB_env *nenv = NULL;
    int rc = -ENOMEM;
    if (lock == NULL || holder == NULL)
        goto err;
    snprintf(lock, flen + 6, "%s-lock", file);
    if ((rc = mv_env_open(db, file, &nenv)) != 0 || (rc = mv_dbis_open(db, nenv)) != 0)
        goto err;
    mv_writer_lock(db);
    rc = env_swap(db, holder, nenv, file, lock);
    mv_writer_unlock(db);
    if (rc != 0)
        goto err;
    atomic_store(&db->defragging, false);
    LOG_INFO(db->lg, "installed snapshot", LOG_STR("file", file));
    return 0;
err:
    if (nenv != NULL)
        mdb_env_close(nenv);
    if (lock != NULL)
        unlink(lock);
    free(lock);
    free(holder);
    atomic_store(&db->defragging, false);
    return util_errorf(err, rc, "mvcc: cannot install snapshot %s: %s", file, mvcc_strerror(rc));
}

int mvcc_defrag(mvcc_t *db, uint64_t *writes_held_ns, struct util_err *err) {
    if (writes_held_ns != NULL)
        *writes_held_ns = 0;
    bool pending;
    int rc = mvcc_compact_pending(db, &pending);
    if (rc != 0)
        return util_errorf(err, rc, "mvcc: defragmentation: %s", mvcc_strerror(rc));
    if (pending)
        return util_errorf(err, -EBUSY, "mvcc: defragment after the compaction finishes");
    bool expect = false;
    if (!atomic_compare_exchange_strong(&db->defragging, &expect, true))
        return util_errorf(err, -EBUSY, "mvcc: a defragmentation is already running");
    size_t plen = strlen(db->path);
    char *tmp = malloc(plen + 16), *tmp_lock = malloc(plen + 24);
    struct mvcc_env *old = mv_env_get(db), *ne = NULL;
    MDB_env *nenv = NULL;
    rc = -ENOMEM;
    bool held = false;
    uint64_t t0 = 0, size_before = 0, size_after = 0;
    if (tmp == NULL || tmp_lock == NULL)
        goto err;
    /* A new name each time: the current environment may still use the lock
     * file of the previous defragmentation's name. */
    unsigned gen = ++db->defrag_gen;
    snprintf(tmp, plen + 16, "%s.defrag%u", db->path, gen % 100000u);
    snprintf(tmp_lock, plen + 24, "%s.defrag%u-lock", db->path, gen % 100000u);
    unlink(tmp);
    unlink(tmp_lock);
    mvcc_size(db, &size_before, NULL);
    if ((rc = mv_env_open(db, tmp, &nenv)) != 0 || (rc = mv_dbis_open(db, nenv)) != 0 ||
        (rc = copy_packed(db, old->env, nenv)) != 0)
        goto err;
    /* Catch up while writers run, until a round has little left to do (or
     * writers outpace the replay: then the hold replays what is left). */
    for (int round = 0; round < 16; round++) {
        int64_t n = catch_up(db, old->env, nenv, false);
        if (n < 0) {
            rc = (int)n;
            goto err;
        }
        if (n < 100)
            break;
    }
    /* Flush the bulk of the new file now, so the sync under the hold only
     * has the last round to write. */
    if ((rc = mv_lmdb_err(mdb_env_sync(nenv, 1))) != 0)
        goto err;
    if ((ne = calloc(1, sizeof(*ne))) == NULL) {
        rc = -ENOMEM;
        goto err;
    }
    mv_writer_lock(db);
    held = true;
    t0 = util_now_mono_ns();
    int64_t n = catch_up(db, old->env, nenv, true);
    if (n < 0) {
        rc = (int)n;
        goto err;
    }
    if ((rc = mv_lmdb_err(mdb_env_sync(nenv, 1))) != 0)
        goto err;
    if ((rc = env_swap(db, ne, nenv, tmp, tmp_lock)) != 0)
        goto err;
    uint64_t held_ns = util_now_mono_ns() - t0;
    mv_writer_unlock(db);
    mv_env_put(db, old);
    free(tmp);
    atomic_store(&db->defragging, false);
    mvcc_size(db, &size_after, NULL);
    if (writes_held_ns != NULL)
        *writes_held_ns = held_ns;
    LOG_INFO(db->lg, "defragmented", LOG_UINT("size-before", size_before),
             LOG_UINT("size-after", size_after), LOG_UINT("writes-held-ns", held_ns));
    return 0;
err:
    if (held)
        mv_writer_unlock(db);
    if (nenv != NULL)
        mdb_env_close(nenv);
    free(ne);
    if (tmp != NULL)
        unlink(tmp);
    if (tmp_lock != NULL)
        unlink(tmp_lock);
    free(tmp);
    free(tmp_lock);
    mv_env_put(db, old);
    atomic_store(&db->defragging, false);
    return util_errorf(err, rc, "mvcc: defragmentation failed: %s", mvcc_strerror(rc));
}
