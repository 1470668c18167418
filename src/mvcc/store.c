/* mvcc store handle: the LMDB environment and its databases, write batches,
 * read snapshots, sizes and quota.
 *
 * One LMDB file holds the named databases "mvcc.kv", "mvcc.log",
 * "mvcc.lease" and "mvcc.meta" (layout in docs/mvcc.md) plus those other
 * layers open with mvcc_dbi_open. The environment sits behind a small
 * reference-counted holder so defragmentation can swap in a new file while
 * snapshots on the old one finish. */
#include <assert.h>
#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mvcc/mvcc_int.h"

#define DEFAULT_QUOTA (2ull * 1024 * 1024 * 1024)
#define MIN_HEADROOM (64ull * 1024 * 1024)

const char *mvcc_strerror(int code) {
    switch (code) {
    case MVCC_ECOMPACTED:
        return "etcdserver: mvcc: required revision has been compacted";
    case MVCC_EFUTURE:
        return "etcdserver: mvcc: required revision is a future revision";
    case MVCC_EKEYNOTFOUND:
        return "etcdserver: key not found";
    case MVCC_ENOSPACE:
        return "etcdserver: mvcc: database space exceeded";
    case MVCC_EDUPKEY:
        return "etcdserver: duplicate key given in txn request";
    case MVCC_EKEYTOOLONG:
        return "etcdserver: key is too long";
    case MVCC_ECORRUPT:
        return "mvcc: database is corrupt";
    default:
        return strerror(code < 0 ? -code : code);
    }
}

int mv_meta_get_i64(MDB_txn *txn, MDB_dbi dbi, const char *name, int64_t *out, int64_t dflt) {
    MDB_val k = {.mv_size = strlen(name), .mv_data = (void *)name}, d;
    int rc = mdb_get(txn, dbi, &k, &d);
    if (rc == MDB_NOTFOUND) {
        *out = dflt;
        return 0;
    }
    if (rc != 0)
        return mv_lmdb_err(rc);
    if (d.mv_size != 8)
        return MVCC_ECORRUPT;
    *out = (int64_t)mv_dec_u64(d.mv_data);
    return 0;
}

/* The revision counter and the compaction revision a transaction sees. */
int mv_meta_revs(MDB_txn *txn, const mvcc_t *db, int64_t *rev, int64_t *compact_rev) {
    int rc = mv_meta_get_i64(txn, db->meta, META_REV, rev, 1);
    return rc != 0 ? rc : mv_meta_get_i64(txn, db->meta, META_COMPACT, compact_rev, 0);
}

int mv_meta_put_i64(MDB_txn *txn, MDB_dbi dbi, const char *name, int64_t val) {
    uint8_t buf[8];
    mv_enc_u64(buf, (uint64_t)val);
    MDB_val k = {.mv_size = strlen(name), .mv_data = (void *)name};
    MDB_val d = {.mv_size = 8, .mv_data = buf};
    return mv_lmdb_err(mdb_put(txn, dbi, &k, &d, 0));
}

/* Opens an LMDB environment on `path` with the store's flags and map size. */
int mv_env_open(mvcc_t *db, const char *path, MDB_env **out) {
    MDB_env *env = NULL;
    int rc = mdb_env_create(&env);
    if (rc != 0)
        return mv_lmdb_err(rc);
    unsigned flags = MDB_NOSUBDIR | MDB_NOTLS | MDB_NORDAHEAD;
    if (db->opt.write_map)
        flags |= MDB_WRITEMAP;
    if (db->opt.no_sync)
        flags |= MDB_NOSYNC;
    if (db->opt.no_meta_sync)
        flags |= MDB_NOMETASYNC;
    if ((rc = mdb_env_set_mapsize(env, db->map_size)) != 0 ||
        (rc = mdb_env_set_maxdbs(env, 8 + EXTRA_DBI_MAX)) != 0 ||
        (rc = mdb_env_set_maxreaders(env, db->opt.max_readers)) != 0 ||
        (rc = mdb_env_open(env, path, flags, 0600)) != 0) {
        mdb_env_close(env);
        return mv_lmdb_err(rc);
    }
    *out = env;
    return 0;
}

/* Opens the store's databases (and other layers', in the same order, so the
 * handles are the same numbers in every environment of this store). */
int mv_dbis_open(mvcc_t *db, MDB_env *env) {
    MDB_txn *txn;
    int rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (rc != 0)
        return mv_lmdb_err(rc);
    MDB_dbi kv, log, lease, meta;
    if ((rc = mdb_dbi_open(txn, "mvcc.kv", MDB_CREATE, &kv)) != 0 ||
        (rc = mdb_set_compare(txn, kv, mv_kv_key_cmp)) != 0 ||
        (rc = mdb_dbi_open(txn, "mvcc.log", MDB_CREATE, &log)) != 0 ||
        (rc = mdb_dbi_open(txn, "mvcc.lease", MDB_CREATE, &lease)) != 0 ||
        (rc = mdb_dbi_open(txn, "mvcc.meta", MDB_CREATE, &meta)) != 0)
        goto err;
    for (size_t i = 0; i < db->n_extra; i++) {
        MDB_dbi d;
        if ((rc = mdb_dbi_open(txn, db->extra_names[i], MDB_CREATE, &d)) != 0)
            goto err;
        assert(d == db->extra_dbis[i]);
    }
    if ((rc = mdb_txn_commit(txn)) != 0)
        return mv_lmdb_err(rc);
    if (db->cur != NULL && db->cur->env != NULL && db->cur->env != env) {
        /* A later environment of the store (defrag, snapshot): the handles
         * other threads use must not even be rewritten. */
        assert(kv == db->kv && log == db->log && lease == db->lease && meta == db->meta);
        return 0;
    }
    db->kv = kv;
    db->log = log;
    db->lease = lease;
    db->meta = meta;
    return 0;
err:
    mdb_txn_abort(txn);
    return mv_lmdb_err(rc);
}

/* Removes the files of a defragmentation a crash interrupted (`path`.defragN
 * and its lock file): only this process uses the store. */
static void remove_defrag_leftovers(const char *path) {
    char pattern[4200];
    if ((size_t)snprintf(pattern, sizeof(pattern), "%s.defrag*", path) >= sizeof(pattern))
        return;
    glob_t g;
    if (glob(pattern, GLOB_NOSORT, NULL, &g) != 0)
        return;
    for (size_t i = 0; i < g.gl_pathc; i++)
        unlink(g.gl_pathv[i]);
    globfree(&g);
}

int mvcc_open(const char *path, const struct mvcc_options *opt, log_t *lg, mvcc_t **out,
              struct util_err *err) {
    *out = NULL;
    int rc = -ENOMEM;
    mvcc_t *db = calloc(1, sizeof(*db));
    if (db == NULL)
        return util_errorf(err, -ENOMEM, "mvcc: out of memory opening %s", path);
    if (opt != NULL)
        db->opt = *opt;
    if (db->opt.quota_bytes == 0)
        db->opt.quota_bytes = DEFAULT_QUOTA;
    if (db->opt.max_readers == 0)
        db->opt.max_readers = 1024;
    uint64_t headroom = db->opt.quota_bytes / 4;
    db->map_size = db->opt.quota_bytes + (headroom < MIN_HEADROOM ? MIN_HEADROOM : headroom);
    db->lg = lg;
    atomic_init(&db->capped, false);
    atomic_init(&db->defragging, false);
    pthread_mutex_init(&db->envmu, NULL);
    pthread_mutex_init(&db->wmu, NULL);
    pthread_cond_init(&db->wcv, NULL);
    if ((db->path = strdup(path)) == NULL || (db->cur = calloc(1, sizeof(*db->cur))) == NULL)
        goto err;
    db->cur->refs = 1;
    remove_defrag_leftovers(path);
    if ((rc = mv_env_open(db, path, &db->cur->env)) != 0)
        goto err;
    if ((rc = mv_dbis_open(db, db->cur->env)) != 0)
        goto err;
    size_t mk = (size_t)mdb_env_get_maxkeysize(db->cur->env);
    if (mk > SEEK_MAX)
        mk = SEEK_MAX;
    db->max_key = mk - REV_LEN;
    *out = db;
    LOG_INFO(lg, "opened mvcc store", LOG_STR("path", path));
    return 0;
err:
    mvcc_close(db);
    return util_errorf(err, rc, "mvcc: cannot open %s: %s", path, mvcc_strerror(rc));
}

static void env_release(struct mvcc_env *e) {
    if (e == NULL || --e->refs > 0)
        return;
    if (e->env != NULL)
        mdb_env_close(e->env);
    if (e->unlink != NULL) {
        unlink(e->unlink);
        free(e->unlink);
    }
    free(e);
}

void mvcc_close(mvcc_t *db) {
    if (db == NULL)
        return;
    if (db->cur != NULL) {
        assert(db->cur->refs == 1);
        env_release(db->cur);
    }
    for (size_t i = 0; i < db->n_extra; i++)
        free(db->extra_names[i]);
    pthread_mutex_destroy(&db->envmu);
    pthread_mutex_destroy(&db->wmu);
    pthread_cond_destroy(&db->wcv);
    free(db->path);
    free(db);
}

size_t mvcc_max_key_len(const mvcc_t *db) {
    return db->max_key;
}

int mvcc_dbi_open(mvcc_t *db, const char *name, MDB_dbi *out) {
    if (strncmp(name, "mvcc.", 5) == 0 || db->n_extra == EXTRA_DBI_MAX)
        return -EINVAL;
    char *copy = strdup(name);
    if (copy == NULL)
        return -ENOMEM;
    MDB_txn *txn;
    int rc = mdb_txn_begin(db->cur->env, NULL, 0, &txn);
    if (rc == 0 && (rc = mdb_dbi_open(txn, name, MDB_CREATE, out)) == 0)
        rc = mdb_txn_commit(txn);
    else if (rc == 0)
        mdb_txn_abort(txn);
    if (rc != 0) {
        free(copy);
        return mv_lmdb_err(rc);
    }
    db->extra_names[db->n_extra] = copy;
    db->extra_dbis[db->n_extra++] = *out;
    return 0;
}

/* ---- the writer ---- */

/* A ticket lock: batches, compaction steps and the defrag hold get the
 * writer in arrival order. A plain mutex let a compaction loop take it again
 * and again before a waiting batch woke up (seconds of starvation). */
void mv_writer_lock(mvcc_t *db) {
    pthread_mutex_lock(&db->wmu);
    uint64_t ticket = db->w_next++;
    while (ticket != db->w_serving)
        pthread_cond_wait(&db->wcv, &db->wmu);
    pthread_mutex_unlock(&db->wmu);
}

void mv_writer_unlock(mvcc_t *db) {
    pthread_mutex_lock(&db->wmu);
    db->w_serving++;
    pthread_cond_broadcast(&db->wcv);
    pthread_mutex_unlock(&db->wmu);
}

/* ---- batches ---- */

int mvcc_batch_begin(mvcc_t *db, mvcc_batch_t **out) {
    *out = NULL;
    mvcc_batch_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return -ENOMEM;
    b->db = db;
    mv_writer_lock(db);
    int rc = mv_lmdb_err(mdb_txn_begin(db->cur->env, NULL, 0, &b->txn));
    if (rc == 0)
        rc = mv_meta_revs(b->txn, db, &b->rev, &b->compact_rev);
    if (rc != 0) {
        mvcc_batch_abort(b);
        return rc;
    }
    b->committed_rev = b->rev;
    *out = b;
    return 0;
}

void mvcc_batch_set_applied(mvcc_batch_t *b, uint64_t index, uint64_t term) {
    b->applied_index = index;
    b->applied_term = term;
    b->applied_set = true;
}

int64_t mvcc_batch_revision(const mvcc_batch_t *b) {
    return b->rev;
}

MDB_txn *mvcc_batch_txn(mvcc_batch_t *b) {
    return b->txn;
}

int mvcc_batch_commit(mvcc_batch_t *b) {
    mvcc_t *db = b->db;
    int rc = 0;
    if (b->rev != b->committed_rev)
        rc = mv_meta_put_i64(b->txn, db->meta, META_REV, b->rev);
    if (rc == 0 && b->applied_set) {
        rc = mv_meta_put_i64(b->txn, db->meta, META_APPLIED_INDEX, (int64_t)b->applied_index);
        if (rc == 0)
            rc = mv_meta_put_i64(b->txn, db->meta, META_APPLIED_TERM, (int64_t)b->applied_term);
    }
    if (rc == 0) {
        rc = mv_lmdb_err(mdb_txn_commit(b->txn));
    } else {
        mdb_txn_abort(b->txn);
    }
    b->txn = NULL;
    mv_writer_unlock(db);
    free(b);
    return rc;
}

void mvcc_batch_abort(mvcc_batch_t *b) {
    if (b == NULL)
        return;
    if (b->txn != NULL)
        mdb_txn_abort(b->txn);
    mv_writer_unlock(b->db);
    free(b);
}

int mvcc_compact(mvcc_batch_t *b, int64_t revision) {
    if (revision <= b->compact_rev)
        return MVCC_ECOMPACTED;
    if (revision > b->rev)
        return MVCC_EFUTURE;
    mvcc_t *db = b->db;
    int rc = mv_meta_put_i64(b->txn, db->meta, META_COMPACT, revision);
    /* Restart the sweep from the oldest record: what the last compaction kept
     * may be history now. */
    if (rc == 0)
        rc = mv_meta_put_i64(b->txn, db->meta, META_COMPACT_POS, 0);
    if (rc == 0)
        rc = mv_meta_put_i64(b->txn, db->meta, META_COMPACT_POS_SUB, 0);
    if (rc == 0)
        b->compact_rev = revision;
    LOG_INFO(db->lg, "scheduled compaction", LOG_INT("compact-revision", revision));
    return rc;
}

/* ---- snapshots ---- */

/* Takes a reference on the current environment. */
struct mvcc_env *mv_env_get(mvcc_t *db) {
    pthread_mutex_lock(&db->envmu);
    struct mvcc_env *e = db->cur;
    e->refs++;
    pthread_mutex_unlock(&db->envmu);
    return e;
}

void mv_env_put(mvcc_t *db, struct mvcc_env *e) {
    pthread_mutex_lock(&db->envmu);
    env_release(e);
    pthread_mutex_unlock(&db->envmu);
}

int mvcc_read_begin(mvcc_t *db, mvcc_read_t **out) {
    *out = NULL;
    mvcc_read_t *rd = calloc(1, sizeof(*rd));
    if (rd == NULL)
        return -ENOMEM;
    rd->db = db;
    rd->e = mv_env_get(db);
    int rc = mv_lmdb_err(mdb_txn_begin(rd->e->env, NULL, MDB_RDONLY, &rd->txn));
    if (rc == 0)
        rc = mv_meta_revs(rd->txn, db, &rd->rev, &rd->compact_rev);
    if (rc != 0) {
        mvcc_read_end(rd);
        return rc;
    }
    *out = rd;
    return 0;
}

int64_t mvcc_read_revision(const mvcc_read_t *rd) {
    return rd->rev;
}

int64_t mvcc_read_compact_revision(const mvcc_read_t *rd) {
    return rd->compact_rev;
}

MDB_txn *mvcc_read_txn(mvcc_read_t *rd) {
    return rd->txn;
}

void mvcc_read_end(mvcc_read_t *rd) {
    if (rd == NULL)
        return;
    if (rd->txn != NULL)
        mdb_txn_abort(rd->txn);
    mv_env_put(rd->db, rd->e);
    free(rd);
}

int mvcc_state(mvcc_t *db, uint64_t *applied_index, uint64_t *applied_term, int64_t *revision,
               int64_t *compact_revision) {
    mvcc_read_t *rd;
    int rc = mvcc_read_begin(db, &rd);
    if (rc != 0)
        return rc;
    int64_t idx = 0, term = 0;
    rc = mv_meta_get_i64(rd->txn, db->meta, META_APPLIED_INDEX, &idx, 0);
    if (rc == 0)
        rc = mv_meta_get_i64(rd->txn, db->meta, META_APPLIED_TERM, &term, 0);
    if (applied_index != NULL)
        *applied_index = (uint64_t)idx;
    if (applied_term != NULL)
        *applied_term = (uint64_t)term;
    if (revision != NULL)
        *revision = rd->rev;
    if (compact_revision != NULL)
        *compact_revision = rd->compact_rev;
    mvcc_read_end(rd);
    return rc;
}

int mvcc_sync(mvcc_t *db) {
    struct mvcc_env *e = mv_env_get(db);
    int rc = mv_lmdb_err(mdb_env_sync(e->env, 1));
    mv_env_put(db, e);
    return rc;
}

/* ---- sizes and quota ---- */

int mvcc_size(mvcc_t *db, uint64_t *size, uint64_t *in_use) {
    struct mvcc_env *e = mv_env_get(db);
    MDB_envinfo info;
    MDB_stat st;
    int rc = mv_lmdb_err(mdb_env_info(e->env, &info));
    if (rc == 0)
        rc = mv_lmdb_err(mdb_env_stat(e->env, &st));
    uint64_t pages = (uint64_t)info.me_last_pgno + 1, nfree = 0;
    if (rc == 0 && in_use != NULL) {
        /* Free pages: the free-list database (0) holds page-number lists
         * whose first word is their length. */
        MDB_txn *txn;
        MDB_cursor *cur;
        if ((rc = mv_lmdb_err(mdb_txn_begin(e->env, NULL, MDB_RDONLY, &txn))) == 0) {
            if ((rc = mv_lmdb_err(mdb_cursor_open(txn, 0, &cur))) == 0) {
                MDB_val k, d;
                while (mdb_cursor_get(cur, &k, &d, MDB_NEXT) == 0)
                    nfree += *(const size_t *)d.mv_data;
                mdb_cursor_close(cur);
            }
            mdb_txn_abort(txn);
        }
    }
    mv_env_put(db, e);
    if (rc != 0)
        return rc;
    if (size != NULL)
        *size = pages * st.ms_psize;
    if (in_use != NULL)
        *in_use = (pages - (nfree < pages ? nfree : pages)) * st.ms_psize;
    return 0;
}

int mvcc_quota_check(mvcc_t *db, uint64_t cost) {
    if (cost == 0)
        return 0;
    uint64_t size;
    int rc = mvcc_size(db, &size, NULL);
    if (rc != 0)
        return rc;
    return size + cost < db->opt.quota_bytes ? 0 : MVCC_ENOSPACE;
}

void mvcc_set_capped(mvcc_t *db, bool capped) {
    atomic_store(&db->capped, capped);
}
